//! The real thing: `slipstream run` serving its control plane, driven by `ctl` as an
//! operator would (topology, add a worker, move a queue, stats under load, shutdown with
//! the conservation figures).

mod common;

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{expect, stderr};

/// `slipstream` is built next to `ctl` by `cargo test --workspace` (the root package's own
/// tests need it).
fn slipstream() -> Option<PathBuf> {
    let p = PathBuf::from(env!("CARGO_BIN_EXE_ctl")).with_file_name("slipstream");
    p.exists().then_some(p)
}

#[test]
fn slipstream_run_serves_ctl() {
    let Some(bin) = slipstream() else {
        let msg = "the slipstream binary is not built next to ctl (run cargo test --workspace)";
        assert!(!common::ci(), "{msg}");
        eprintln!("SKIPPED: {msg}");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("ctl.sock");
    let allowed: Vec<u32> = dataplane::topology::allowed_cores().into_iter().collect();
    let core = *allowed.last().unwrap();
    let config = dir.path().join("appliance.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[engine]
stats_interval_ms = 0
hugepages = false

[[ports]]
kind = "memory"
queues = 2
frames = 2048
source = "generate"
sink = "discard"

[[workers]]
core = {core}
queues = ["p0:q0", "p0:q1"]

[[handlers]]
kind = "udp-echo"
port = 7
"#
        ),
    )
    .unwrap();
    let mut child = Command::new(&bin)
        .args(["run", "--duration", "60", "--config"])
        .arg(&config)
        .arg("--ctl-socket")
        .arg(&socket)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !socket.exists() {
        if let Ok(Some(st)) = child.try_wait() {
            let mut e = String::new();
            child.stderr.take().unwrap().read_to_string(&mut e).unwrap();
            panic!("slipstream exited early ({st}):\n{e}");
        }
        assert!(Instant::now() < deadline, "no control socket after 20 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let sock = socket.to_str().unwrap();
    let ctl = |args: &[&str]| {
        let mut all = vec!["--socket", sock];
        all.extend_from_slice(args);
        common::ctl(&all)
    };

    let t = expect(&ctl(&["topology"]), 0);
    println!("$ ctl topology\n{t}");
    assert!(
        t.contains(&format!("cpu{core}")) && t.contains("q0=w0 q1=w0"),
        "{t}"
    );
    if let Some(other) = allowed.iter().rev().nth(1) {
        let s = expect(&ctl(&["workers", "add", "--core", &other.to_string()]), 0);
        println!("$ ctl workers add --core {other}\n{s}");
        let s = expect(&ctl(&["workers", "assign", "p0:q1", "w1"]), 0);
        println!("$ ctl workers assign p0:q1 w1\n{s}");
        assert!(s.contains("moved p0:q1: w0 -> w1"), "{s}");
    } else {
        eprintln!("only one allowed core: no second worker");
    }
    std::thread::sleep(Duration::from_millis(300));
    let s = expect(&ctl(&["stats"]), 0);
    println!("$ ctl stats\n{s}");
    let j: serde_json::Value =
        serde_json::from_str(&expect(&ctl(&["stats", "--json"]), 0)).unwrap();
    assert!(
        j["totals"]["received"].as_u64().unwrap() > 0,
        "traffic flows"
    );
    assert_eq!(j["totals"]["conserved"], true);
    let o = ctl(&["workers", "add", "--core", &core.to_string()]);
    expect(&o, 1);
    assert!(
        stderr(&o).contains("is already used by w0"),
        "{}",
        stderr(&o)
    );

    let s = expect(&ctl(&["shutdown"]), 0);
    println!("$ ctl shutdown\n{s}");
    assert!(s.contains("accounting ok"), "{s}");
    let status = child.wait().unwrap();
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(status.success(), "slipstream exit {status}\n{out}\n{err}");
    assert!(out.contains("accounting   ok"), "{out}");
    assert!(err.contains("control plane on unix:"), "{err}");
    assert!(!socket.exists(), "socket removed at exit");
}
