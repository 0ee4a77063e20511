//! A generic gRPC client (Python grpcio with reflection, installed by `scripts/test`) lists
//! the services over the Unix socket and calls one with message types it learnt from the
//! server's reflection service alone.

mod common;

use std::process::Command;

use common::Appliance;
use serde_json::Value;

/// The interpreter: `$SLIPSTREAM_PYTHON` (scripts/test points it at a venv with grpcio),
/// else `python3`.
fn python() -> String {
    std::env::var("SLIPSTREAM_PYTHON").unwrap_or_else(|_| "python3".into())
}

fn python_has_grpc() -> bool {
    Command::new(python())
        .args(["-c", "import grpc, grpc_reflection, google.protobuf"])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn python_grpcio_lists_the_services_and_calls_one_through_reflection() {
    if !python_has_grpc() {
        let msg = "python3 with grpcio and grpcio-reflection not found \
                   (scripts/test installs them in target/grpc-venv and sets SLIPSTREAM_PYTHON)";
        assert!(!common::ci(), "{msg}");
        eprintln!("SKIPPED: {msg}");
        return;
    }
    let a = Appliance::start(1_000, |_| {});
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/generic/grpc_client.py");
    let target = format!("unix://{}", a.socket.display());
    let out = Command::new(python())
        .arg(script)
        .arg(&target)
        .output()
        .unwrap();
    let text = common::text(&out);
    assert!(out.status.success(), "{text}");
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}\n{text}")))
        .collect();
    let services: Vec<&str> = lines[0]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for s in [
        "slipstream.v1.System",
        "slipstream.v1.Workers",
        "slipstream.v1.Placement",
        "slipstream.v1.Stats",
        "slipstream.v1.Handlers",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    ] {
        assert!(services.contains(&s), "{s} missing from {services:?}");
    }
    assert_eq!(lines[1]["status"], "SERVING", "{text}");
    assert_eq!(lines[2]["mode"], "run-to-completion", "{text}");
    assert_eq!(lines[2]["workersRunning"], 2, "{text}");
    assert!(a.stop().accounting_ok);
}
