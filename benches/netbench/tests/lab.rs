//! Privileged end-to-end checks of the netbench tools on a throw-away lab veth pair
//! (scripts/lab with a unique prefix, torn down by a drop guard even when a test panics):
//! the generator really delivers the frames it counts, and the kernel echo server, the sink
//! and the latency client agree with it packet for packet.
//!
//! Needs root (BPF, netns, veth). Without it: a loud SKIP, or a failure under `CI=true`.
//! Rates are kept far below what the machine takes, so the counts are exact, not
//! statistical; the one allowance is for the few IPv6 neighbour-discovery / MLD frames a new
//! veth sends, which `xdp-drop` (counting everything by design) sees as well.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

const NB: &str = env!("CARGO_BIN_EXE_netbench");

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Prints straight to stderr: the harness captures `eprintln!` of passing tests.
fn skip(msg: &str) {
    let _ = writeln!(std::io::stderr(), "\n*** SKIP {msg} ***\n");
}

/// Whether a privileged test can run (root); otherwise SKIP, or panic under CI=true.
fn privileged(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    assert!(
        !in_ci(),
        "{test}: needs root (BPF, netns, veth) and CI=true forbids skipping"
    );
    skip(&format!(
        "{test}: needs root (BPF, netns, veth); run as root or under CI=true"
    ));
    false
}

fn lab_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/lab")
}

/// A lab veth pair with GRO on at both ends and static neighbour entries; down on drop.
struct Lab {
    prefix: String,
    app_ns: String,
    peer_ns: String,
    app_if: String,
    peer_if: String,
}

impl Lab {
    fn up(test: &str) -> Option<Lab> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let prefix = format!(
            "nbt{}-{}",
            std::process::id() % 100_000,
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let lab = Lab {
            app_ns: format!("{prefix}-app"),
            peer_ns: format!("{prefix}-peer"),
            app_if: format!("{prefix}-a"),
            peer_if: format!("{prefix}-p"),
            prefix,
        };
        let out = Command::new(lab_script())
            .args(["--prefix", &lab.prefix, "--app-gro", "up"])
            .output();
        match out {
            Ok(o) if o.status.success() => {}
            Ok(o) => {
                setup_failed(
                    test,
                    &format!("scripts/lab up: {}", String::from_utf8_lossy(&o.stderr)),
                );
                return None;
            }
            Err(e) => {
                setup_failed(test, &format!("running scripts/lab: {e}"));
                return None;
            }
        }
        for (ns, ip, mac, dev) in [
            (&lab.app_ns, "198.18.0.2", "02:00:c6:12:00:02", &lab.app_if),
            (
                &lab.peer_ns,
                "198.18.0.1",
                "02:00:c6:12:00:01",
                &lab.peer_if,
            ),
        ] {
            let ok = Command::new("ip")
                .args([
                    "-n",
                    ns,
                    "neigh",
                    "replace",
                    ip,
                    "lladdr",
                    mac,
                    "dev",
                    dev,
                    "nud",
                    "permanent",
                ])
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                setup_failed(test, "ip neigh replace");
                return None;
            }
        }
        Some(lab)
    }

    /// `netbench ARGS` inside `ns`, in the background.
    fn spawn(&self, ns: &str, args: &[&str]) -> Child {
        Command::new("ip")
            .args(["netns", "exec", ns, NB])
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawning netbench")
    }

    /// `netbench ARGS` inside `ns`, to completion; its JSON line.
    fn run(&self, ns: &str, args: &[&str]) -> Value {
        let out = Command::new("ip")
            .args(["netns", "exec", ns, NB])
            .args(args)
            .output()
            .expect("running netbench");
        json_line(&out, args[0])
    }

    /// The `Udp:` counters of a namespace's /proc/net/snmp (absolute since the namespace was
    /// made, so exact for a fresh lab), by name.
    fn udp_counters(&self, ns: &str) -> Vec<(String, u64)> {
        let out = Command::new("ip")
            .args(["netns", "exec", ns, "cat", "/proc/net/snmp"])
            .output()
            .expect("reading /proc/net/snmp");
        let text = String::from_utf8_lossy(&out.stdout);
        let udp: Vec<&str> = text.lines().filter(|l| l.starts_with("Udp: ")).collect();
        assert_eq!(udp.len(), 2, "no Udp lines in /proc/net/snmp: {text}");
        udp[0]
            .split_whitespace()
            .zip(udp[1].split_whitespace())
            .skip(1)
            .map(|(k, v)| (k.to_string(), v.parse().unwrap_or(0)))
            .collect()
    }

    fn gen(&self, count: u64, rate: u64) -> Value {
        let (count, rate) = (count.to_string(), rate.to_string());
        self.run(
            &self.peer_ns,
            &[
                "gen",
                "--ifname",
                &self.peer_if,
                "--dst-mac",
                "02:00:c6:12:00:01",
                "--src-mac",
                "02:00:c6:12:00:02",
                "--dst-ip",
                "198.18.0.1",
                "--src-ip",
                "198.18.0.2",
                "--count",
                &count,
                "--rate-pps",
                &rate,
                "--seconds",
                "10",
            ],
        )
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = Command::new(lab_script())
            .args(["--prefix", &self.prefix, "down"])
            .output();
        for ns in [&self.app_ns, &self.peer_ns] {
            if Path::new("/run/netns").join(ns).exists() {
                let _ = Command::new("ip").args(["netns", "del", ns]).output();
            }
        }
    }
}

fn setup_failed(test: &str, what: &str) {
    assert!(!in_ci(), "{test}: setup failed: {what}");
    skip(&format!("{test}: setup failed: {what}"));
}

fn json_line(out: &Output, what: &str) -> Value {
    assert!(
        out.status.success(),
        "netbench {what} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().unwrap_or_default();
    serde_json::from_str(line).unwrap_or_else(|e| panic!("netbench {what}: bad JSON {line:?}: {e}"))
}

/// Stops a background tool (SIGTERM: it reports and detaches) and returns its JSON line.
fn stop(child: Child, what: &str) -> Value {
    // SAFETY: plain syscall; the pid is our own child, not yet reaped (wait follows).
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    json_line(
        &child.wait_with_output().expect("waiting for netbench"),
        what,
    )
}

fn wait_for(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn ready_file(lab: &Lab, what: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("{}-{what}.ready", lab.prefix));
    let _ = std::fs::remove_file(&p);
    p
}

fn u(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} missing in {v}"))
}

#[test]
fn generator_delivers_every_frame_to_an_xdp_drop_counter() {
    let test = "generator_delivers_every_frame_to_an_xdp_drop_counter";
    if !privileged(test) {
        return;
    }
    let Some(lab) = Lab::up(test) else { return };
    let ready = ready_file(&lab, "drop");
    let drop = lab.spawn(
        &lab.app_ns,
        &[
            "xdp-drop",
            "--ifname",
            &lab.app_if,
            "--seconds",
            "20",
            "--ready-file",
            ready.to_str().unwrap(),
        ],
    );
    wait_for(&ready);
    let gen = lab.gen(100_000, 200_000);
    std::thread::sleep(Duration::from_millis(100));
    let counted = stop(drop, "xdp-drop");
    let _ = std::fs::remove_file(&ready);

    assert_eq!(u(&gen, "sent"), 100_000, "{gen}");
    assert_eq!(gen["stopped"], "count", "{gen}");
    assert_eq!(gen["xdp_xmit_errors"].as_u64(), Some(0), "{gen}");
    let packets = u(&counted, "packets");
    assert!(
        (100_000..100_050).contains(&packets),
        "xdp-drop counted {packets}, the generator sent 100000 (+ a few neighbour-discovery frames allowed): {counted}"
    );
    // 200 kpps asked: pacing never runs ahead of the clock (it may fall behind on a busy
    // machine, so there is no lower bound).
    let pps = gen["pps"].as_f64().unwrap();
    assert!(pps > 0.0 && pps <= 205_000.0, "rate {pps}: {gen}");
    // No program left behind on the interface.
    let link = Command::new("ip")
        .args(["-n", &lab.app_ns, "link", "show", "dev", &lab.app_if])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&link.stdout).contains("xdp"),
        "xdp-drop left its program attached"
    );
}

#[test]
fn kernel_echo_server_answers_every_request_and_the_sink_counts_them() {
    let test = "kernel_echo_server_answers_every_request_and_the_sink_counts_them";
    if !privileged(test) {
        return;
    }
    let Some(lab) = Lab::up(test) else { return };
    let ready = ready_file(&lab, "sink");
    let sink = lab.spawn(
        &lab.peer_ns,
        &[
            "sink",
            "--ifname",
            &lab.peer_if,
            "--sport",
            "7",
            "--seconds",
            "20",
            "--ready-file",
            ready.to_str().unwrap(),
        ],
    );
    let server = lab.spawn(
        &lab.app_ns,
        &["echo-server", "--port", "7", "--seconds", "20"],
    );
    wait_for(&ready);
    std::thread::sleep(Duration::from_millis(300)); // the server's bind
    let gen = lab.gen(20_000, 50_000);
    std::thread::sleep(Duration::from_millis(200));
    let served = stop(server, "echo-server");
    let counted = stop(sink, "sink");
    let _ = std::fs::remove_file(&ready);

    assert_eq!(u(&gen, "sent"), 20_000, "{gen}");
    // Every frame sent reached the app's UDP layer: delivered to the server, or dropped for
    // a full socket buffer (a machine busy with other work can stall the server long enough
    // for that; on a quiet one the drops are 0).
    let udp = lab.udp_counters(&lab.app_ns);
    let get = |k: &str| udp.iter().find(|(n, _)| n == k).map_or(0, |(_, v)| *v);
    let rx = u(&served, "rx");
    assert_eq!(get("InDatagrams"), rx, "{udp:?} {served}");
    assert_eq!(rx + get("RcvbufErrors"), 20_000, "{udp:?} {served}");
    assert!(rx > 0, "{served}");
    // Every datagram the server took was answered, and the sink saw exactly those replies.
    assert_eq!(u(&served, "tx"), rx, "{served}");
    assert_eq!(u(&counted, "packets"), rx, "sink: {counted}");
}

#[test]
fn latency_client_gets_every_reply_from_the_kernel_echo_server() {
    let test = "latency_client_gets_every_reply_from_the_kernel_echo_server";
    if !privileged(test) {
        return;
    }
    let Some(lab) = Lab::up(test) else { return };
    let server = lab.spawn(
        &lab.app_ns,
        &["echo-server", "--port", "7", "--seconds", "20"],
    );
    std::thread::sleep(Duration::from_millis(300));
    let lat = lab.run(
        &lab.peer_ns,
        &[
            "latency",
            "--dst",
            "198.18.0.1:7",
            "--rate-pps",
            "10000",
            "--seconds",
            "0.5",
            "--warmup-ms",
            "0",
        ],
    );
    let served = stop(server, "echo-server");

    // Open loop, bounded in time: a stalled client sends a little less than rate x time.
    let sent = u(&lat, "sent");
    assert!((4_500..=5_000).contains(&sent), "{lat}");
    assert_eq!(u(&lat, "received"), sent, "{lat}");
    assert_eq!(u(&lat, "lost"), 0, "{lat}");
    assert_eq!(u(&served, "tx"), sent, "{served}");
    let (p50, p99) = (
        lat["p50_us"].as_f64().unwrap(),
        lat["p99_us"].as_f64().unwrap(),
    );
    assert!(p50 > 0.0 && p50 <= p99, "{lat}");
}
