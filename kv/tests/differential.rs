//! Differential test against a real memcached: the scripted sequence (`common/script.rs`)
//! goes to `memcached -U` over kernel UDP on the loopback and to the kv handler in the
//! engine (two partitions on two workers, every request arriving on one queue, so keys
//! are forwarded between cores), and every answer must be the same message by message,
//! with the same datagram counts, except the fields that legitimately differ (version,
//! stats values, CAS uniques). The privileged lab test (`lab.rs`) repeats this over AF_XDP.
//!
//! Needs the `memcached` binary (Debian package `memcached`, installed by scripts/setup):
//! without it the test says SKIP loudly, and fails under CI=true.

mod common;

use std::net::UdpSocket;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::script::{normalize, render, script, Message};
use common::{kv_table, Reply, Rig};

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// A memcached process, killed on drop.
struct Memcached {
    child: Child,
    port: u16,
}

impl Drop for Memcached {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

fn start_memcached() -> Option<Memcached> {
    let port = free_udp_port();
    // SAFETY: geteuid(2) has no preconditions.
    let user = if unsafe { libc::geteuid() } == 0 {
        "nobody"
    } else {
        ""
    };
    let mut cmd = Command::new("memcached");
    cmd.args([
        "-U",
        &port.to_string(),
        "-p",
        "0",
        "-l",
        "127.0.0.1",
        "-t",
        "1",
        "-m",
        "64",
    ]);
    if !user.is_empty() {
        cmd.args(["-u", user]);
    }
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let mc = Memcached { child, port };
    // Ready when it answers `version`.
    let sock = UdpSocket::bind("127.0.0.1:0").ok()?;
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .ok()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = [0u8; 2048];
    while Instant::now() < deadline {
        let _ = sock.send_to(&common::datagram(1, b"version\r\n"), ("127.0.0.1", port));
        if sock.recv_from(&mut buf).is_ok() {
            return Some(mc);
        }
    }
    None
}

fn parse_datagram(d: &[u8]) -> Reply {
    Reply {
        dport: 0,
        id: u16::from_be_bytes([d[0], d[1]]),
        seq: u16::from_be_bytes([d[2], d[3]]),
        count: u16::from_be_bytes([d[4], d[5]]),
        reserved: u16::from_be_bytes([d[6], d[7]]),
        payload: d[8..].to_vec(),
    }
}

/// Sends `payload` as request `id`, then a `version` sentinel; memcached (one thread)
/// answers in order, so everything for `id` has arrived when the sentinel's answer has.
pub fn memcached_exchange(sock: &UdpSocket, port: u16, id: u16, payload: &[u8]) -> Vec<Reply> {
    let sentinel = id ^ 0x8000;
    sock.send_to(&common::datagram(id, payload), ("127.0.0.1", port))
        .unwrap();
    sock.send_to(
        &common::datagram(sentinel, b"version\r\n"),
        ("127.0.0.1", port),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        assert!(
            Instant::now() < deadline,
            "memcached did not answer request {id}"
        );
        let Ok((n, _)) = sock.recv_from(&mut buf) else {
            continue;
        };
        let r = parse_datagram(&buf[..n]);
        if r.id == sentinel {
            return out;
        }
        if r.id == id {
            out.push(r);
        }
    }
}

#[test]
fn answers_match_a_real_memcached() {
    let Some(mc) = start_memcached() else {
        assert!(
            !in_ci(),
            "memcached is required under CI=true (apt-get install memcached)"
        );
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "\n*** SKIP answers_match_a_real_memcached: no memcached binary (apt-get install memcached) ***\n"
        );
        return;
    };
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut rig = Rig::new(2, &kv_table("workers = [0, 1]\nmemory_mb = 16"));
    let (mut cas_mc, mut cas_kv) = (0u64, 0u64);
    let mut diffs = Vec::new();
    let steps = script();
    for (i, step) in steps.iter().enumerate() {
        let id = i as u16 + 1;
        let theirs: Vec<Message> = normalize(
            &memcached_exchange(&sock, mc.port, id, &render(step, cas_mc)),
            step.shape_only,
            &mut cas_mc,
        );
        let ours: Vec<Message> = normalize(
            &rig.exchange(0, id, &render(step, cas_kv)),
            step.shape_only,
            &mut cas_kv,
        );
        if theirs != ours {
            diffs.push(format!(
                "step {i}: {:?}\n  memcached: {:?}\n  slipstream: {:?}",
                String::from_utf8_lossy(&step.payload),
                theirs
                    .iter()
                    .map(|(m, n)| (String::from_utf8_lossy(m).to_string(), n))
                    .collect::<Vec<_>>(),
                ours.iter()
                    .map(|(m, n)| (String::from_utf8_lossy(m).to_string(), n))
                    .collect::<Vec<_>>(),
            ));
        }
    }
    assert!(
        diffs.is_empty(),
        "{} of {} steps differ:\n{}",
        diffs.len(),
        steps.len(),
        diffs.join("\n")
    );
    let report = rig.stop();
    assert!(report.worker_totals().ring_in > 0, "keys crossed cores");
}
