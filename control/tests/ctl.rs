//! `ctl` against a running appliance over its Unix socket: every command, human and JSON
//! output, exit codes (0 ok, 1 server error, 2 usage error), refused changes that name the
//! field and change nothing, the socket's permissions, and shutdown with conservation.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};

use common::{expect, stderr, Appliance};
use serde_json::Value;

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}):\n{s}"))
}

#[test]
fn ctl_session_over_the_unix_socket() {
    let mut a = Appliance::start(0, |_| {});
    let core = common::some_core();
    let core_s = core.to_string();

    let s = expect(&a.ctl(&["status"]), 0);
    assert!(
        s.contains("mode run-to-completion") && s.contains("receiving"),
        "{s}"
    );
    assert!(s.contains("workers 2 running"), "{s}");
    let s = json(&expect(&a.ctl(&["status", "--json"]), 0));
    assert_eq!(s["handlers_version"], 1);

    let t = json(&expect(&a.ctl(&["--json", "topology"]), 0));
    assert_eq!(t["ports"][0]["kind"], "memory");
    assert_eq!(t["ports"][0]["queues"][1]["worker"], "w1");
    assert!(!t["cpus"].as_array().unwrap().is_empty());
    let t = expect(&a.ctl(&["topology"]), 0);
    assert!(t.contains("PORT") && t.contains("q0=w0 q1=w1"), "{t}");

    // A new worker on a core, taking p0:q1 from w1.
    let s = expect(
        &a.ctl(&["workers", "add", "--core", &core_s, "--queue", "p0:q1"]),
        0,
    );
    assert!(s.contains(&format!("added w2 on core{core}")), "{s}");
    assert!(s.contains("moved p0:q1: w1 -> w2"), "{s}");
    let w = json(&expect(&a.ctl(&["workers", "--json"]), 0));
    assert_eq!(w[2]["queues"][0], "p0:q1");
    assert_eq!(w[2]["core"], core);
    assert!(w[1]["queues"].as_array().unwrap().is_empty());

    // Refused: busy core, a core that does not exist, unknown queue and worker.
    let o = a.ctl(&["workers", "add", "--core", &core_s]);
    expect(&o, 1);
    assert!(
        stderr(&o).contains(&format!(
            "FAILED_PRECONDITION: core: core{core} is already used by w2"
        )),
        "{}",
        stderr(&o)
    );
    let o = a.ctl(&["workers", "add", "--core", "4000"]);
    expect(&o, 1);
    assert!(
        stderr(&o).contains("INVALID_ARGUMENT: core: core4000 does not exist"),
        "{}",
        stderr(&o)
    );
    let o = a.ctl(&["workers", "assign", "p0:q9", "w0"]);
    expect(&o, 1);
    assert!(
        stderr(&o).contains("NOT_FOUND: queue: p0 has 2 queues, so p0:q9 does not exist"),
        "{}",
        stderr(&o)
    );
    let o = a.ctl(&["workers", "assign", "p0:q0", "w7"]);
    expect(&o, 1);
    assert!(
        stderr(&o).contains("NOT_FOUND: worker: w7"),
        "{}",
        stderr(&o)
    );
    let o = a.ctl(&["workers", "rm", "w9"]);
    expect(&o, 1);
    // Usage errors.
    expect(&a.ctl(&["workers", "assign", "queue0", "w0"]), 2);
    expect(&a.ctl(&["workers", "frobnicate"]), 2);
    expect(&a.ctl(&["workers", "idle", "sometimes"]), 2);
    assert_eq!(
        json(&expect(&a.ctl(&["workers", "--json"]), 0)),
        w,
        "refusals changed nothing"
    );

    // Move the queue back and remove the worker.
    let s = expect(&a.ctl(&["workers", "assign", "p0:q1", "w0"]), 0);
    assert!(s.contains("moved p0:q1: w2 -> w0"), "{s}");
    let s = expect(&a.ctl(&["workers", "rm", "w2"]), 0);
    assert!(s.contains("removed w2"), "{s}");
    let s = expect(&a.ctl(&["workers"]), 0);
    assert!(s.contains("removed") && s.contains("p0:q0,p0:q1"), "{s}");
    let s = expect(
        &a.ctl(&["workers", "idle", "backoff", "--backoff-max-us", "100"]),
        0,
    );
    assert!(s.contains("backoff (max 100 us)"), "{s}");
    let o = a.ctl(&["workers", "idle", "backoff", "--backoff-max-us", "0"]);
    expect(&o, 1);
    assert!(
        stderr(&o).contains("INVALID_ARGUMENT: backoff_max_us"),
        "{}",
        stderr(&o)
    );

    // Handlers: a rejected update changes nothing and is reported; an accepted one bumps
    // the version.
    let s = expect(&a.ctl(&["handlers"]), 0);
    assert!(
        s.contains("version 1") && s.contains("udp-echo") && s.contains("port=7"),
        "{s}"
    );
    let o = a.ctl(&["handlers", "set", "udp-echo port=0"]);
    expect(&o, 1);
    assert!(
        stderr(&o).contains("rejected, nothing changed: INVALID_ARGUMENT: handlers[0].port: 0 is not a valid UDP port"),
        "{}",
        stderr(&o)
    );
    let o = a.ctl(&["handlers", "set", "udp-echo prot=7"]);
    expect(&o, 1);
    assert!(
        stderr(&o).contains("handlers[0]: unknown field `prot`"),
        "{}",
        stderr(&o)
    );
    let o = a.ctl(&["handlers", "set", "--base-version", "9", "macswap"]);
    expect(&o, 1);
    assert!(
        stderr(&o).contains("FAILED_PRECONDITION: base_version"),
        "{}",
        stderr(&o)
    );
    expect(&a.ctl(&["handlers", "set", "udp-echo port"]), 2);
    expect(&a.ctl(&["handlers", "set"]), 2);
    let h = json(&expect(&a.ctl(&["handlers", "--json"]), 0));
    assert_eq!(h["version"], 1);
    assert_eq!(h["handlers"][0]["port"], 7);
    assert!(h["last_rejected"]["reason"]
        .as_str()
        .unwrap()
        .contains("base_version"));
    let s = expect(
        &a.ctl(&[
            "handlers",
            "set",
            "--base-version",
            "1",
            "icmp addresses=[198.18.0.1,2001:db8::1]",
            "udp-echo port=7",
        ]),
        0,
    );
    assert!(s.contains("version 2"), "{s}");
    let chain = a.dir.path().join("chain.toml");
    std::fs::write(&chain, "[[handlers]]\nkind = \"macswap\"\n").unwrap();
    let s = expect(
        &a.ctl(&["handlers", "set", "--file", chain.to_str().unwrap()]),
        0,
    );
    assert!(s.contains("version 3"), "{s}");
    std::fs::write(&chain, "[[handlers]]\nkind = \"macswap\"\nport = 1\n").unwrap();
    expect(
        &a.ctl(&["handlers", "set", "--file", chain.to_str().unwrap()]),
        2,
    );

    // Stats, once and watched.
    let st = json(&expect(&a.ctl(&["stats", "--json"]), 0));
    assert_eq!(st["totals"]["conserved"], true);
    assert!(st["totals"]["received"].as_u64().unwrap() > 0);
    assert_eq!(
        st["workers"].as_array().unwrap().len(),
        3,
        "the removed worker stays in the totals"
    );
    assert!(st["latency"]["p999_ns"].is_u64());
    let s = expect(
        &a.ctl(&["stats", "--watch", "--count", "3", "--interval-ms", "50"]),
        0,
    );
    assert_eq!(s.matches("rates over the last interval").count(), 2, "{s}");
    assert!(
        s.contains("LATENCY p50/p99/p99.9/max") && s.contains("p0:q1"),
        "{s}"
    );
    let lines = expect(
        &a.ctl(&[
            "stats",
            "--watch",
            "--json",
            "--count",
            "2",
            "--interval-ms",
            "50",
        ]),
        0,
    );
    let frames: Vec<Value> = lines.lines().map(json).collect();
    assert_eq!(frames.len(), 2);
    assert!(
        frames[1]["rates"]["rx_pps"].as_f64().unwrap() > 0.0,
        "traffic flows: {}",
        frames[1]
    );
    expect(
        &a.ctl(&["stats", "--watch", "--interval-ms", "5", "--count", "1"]),
        1,
    );

    // Placement.
    let p = json(&expect(&a.ctl(&["placement", "--json"]), 0));
    assert_eq!(p["policy"], "local");
    let o = a.ctl(&["placement", "set", "explicit", "--node", "77"]);
    expect(&o, 1);
    assert!(
        stderr(&o).contains("NOT_FOUND: node: node 77 does not exist"),
        "{}",
        stderr(&o)
    );
    expect(&a.ctl(&["placement", "set", "explicit"]), 1);
    let s = expect(&a.ctl(&["placement", "set", "explicit", "--node", "0"]), 0);
    assert!(s.contains("policy explicit (node 0)"), "{s}");

    // Drain: stops receiving, nothing in flight; resume receives again.
    let d = json(&expect(&a.ctl(&["drain", "--json"]), 0));
    assert_eq!(d["totals"]["in_flight"], 0);
    assert_eq!(d["totals"]["conserved"], true);
    let s = expect(&a.ctl(&["status"]), 0);
    assert!(s.contains("drained"), "{s}");
    expect(&a.ctl(&["resume"]), 0);

    // Shutdown answers with the final counts, and the socket goes away.
    let s = expect(&a.ctl(&["shutdown"]), 0);
    assert!(s.contains("accounting ok"), "{s}");
    let out = a.join();
    assert!(out.accounting_ok, "{:?}", out.problems);
    assert!(!a.socket.exists(), "socket removed at exit");
    let o = a.ctl(&["status"]);
    expect(&o, 1);
    assert!(stderr(&o).contains("cannot connect"), "{}", stderr(&o));
}

#[test]
fn usage_errors_exit_2_and_completions_print() {
    expect(&common::ctl(&[]), 2);
    expect(
        &common::ctl(&["--endpoint", "https://127.0.0.1:1", "status"]),
        2,
    );
    expect(&common::ctl(&["--cert", "x.pem", "status"]), 2);
    let o = common::ctl(&[
        "--endpoint",
        "http://x:1",
        "--cert",
        "a",
        "--key",
        "b",
        "--ca",
        "c",
        "status",
    ]);
    expect(&o, 2);
    expect(
        &common::ctl(&["--socket", "/nonexistent/ctl.sock", "status"]),
        1,
    );
    let s = expect(&common::ctl(&["completions", "bash"]), 0);
    assert!(
        s.contains("_ctl()") && s.contains("workers"),
        "bash completion script"
    );
    expect(&common::ctl(&["completions", "zsh"]), 0);
    let s = expect(&common::ctl(&["--help"]), 0);
    assert!(s.contains("ctl workers add --core 1 --queue p0:q1"), "{s}");
}

#[test]
fn the_socket_is_owner_only_and_single() {
    let a = Appliance::start(1_000, |_| {});
    let m = std::fs::metadata(&a.socket).unwrap();
    assert_eq!(m.permissions().mode() & 0o777, 0o600, "socket mode");
    let me = std::fs::metadata(a.dir.path()).unwrap().uid();
    assert_eq!(m.uid(), me, "owned by the server's user");
    let dir = std::fs::metadata(a.socket.parent().unwrap()).unwrap();
    assert_eq!(
        dir.permissions().mode() & 0o777,
        0o700,
        "created directory mode"
    );
    // A second server on the same path is refused, and the first keeps serving.
    let e = control::Daemon::start(
        std::sync::Arc::new(std::sync::Mutex::new(None)),
        Default::default(),
        common::options(a.dir.path()),
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("another slipstream is serving"),
        "{e}"
    );
    expect(&a.ctl(&["status"]), 0);
    let out = a.stop();
    assert!(out.accounting_ok, "{:?}", out.problems);
    assert_eq!(out.totals.unwrap().in_flight, 0);
}
