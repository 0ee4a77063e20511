//! The DPDK port on a real kernel interface: DPDK's `net_af_packet` driver on one end of a
//! veth pair, and the kernel's own ping and UDP stack in a network namespace on the other
//! end. The appliance, configured from TOML text like a user's file, answers ARP, ICMP echo
//! and UDP echo for 198.18.0.1.
//!
//! Privileged (netns, veth): skipped with a loud message when not root, and failing instead
//! when `CI=true`. The test makes its own uniquely named namespace and veth pair (the app end
//! stays in this process's namespace, where the driver opens its socket) and removes them
//! even when it fails. Addresses come from 198.18.0.0/15 (RFC 2544) only.
#![cfg(feature = "dpdk")]

use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use dataplane::config::Config;
use dataplane::engine::Engine;

fn skip_or_fail(why: &str) {
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("privileged DPDK test cannot run with CI=true: {why}");
    }
    eprintln!("\n*** SKIPPED dpdk_afpacket: {why} (run as root; with CI=true this fails) ***\n");
}

fn sh(args: &[&str]) -> Result<String, String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A veth pair: `app` in this namespace, `peer` in namespace `ns`. Removed on drop.
struct Lab {
    ns: String,
    app: String,
    peer: String,
}

impl Lab {
    fn up() -> Result<Lab, String> {
        let tag = std::process::id() % 1_000_000;
        let lab = Lab {
            ns: format!("ssdpdk{tag}-peer"),
            app: format!("ssd{tag}a"),
            peer: format!("ssd{tag}p"),
        };
        // Remove leftovers of a crashed run with the same pid first.
        lab.down();
        sh(&["ip", "netns", "add", &lab.ns])?;
        sh(&[
            "ip", "link", "add", &lab.app, "type", "veth", "peer", "name", &lab.peer, "netns",
            &lab.ns,
        ])?;
        let _ = sh(&[
            "sysctl",
            "-qw",
            &format!("net.ipv6.conf.{}.disable_ipv6=1", lab.app),
        ]);
        sh(&["ip", "link", "set", &lab.app, "up"])?;
        let n = |a: &[&str]| {
            let mut v = vec!["ip", "netns", "exec", lab.ns.as_str()];
            v.extend_from_slice(a);
            sh(&v)
        };
        n(&["ip", "link", "set", "lo", "up"])?;
        n(&["ip", "addr", "add", "198.18.0.2/24", "dev", &lab.peer])?;
        n(&["ip", "link", "set", &lab.peer, "up"])?;
        // veth leaves UDP checksums to "hardware": make the kernel compute them, as a wire
        // would carry them (the echo reply reflects the request's checksum field).
        let _ = n(&["ethtool", "-K", &lab.peer, "tx", "off"]);
        Ok(lab)
    }

    fn down(&self) {
        let _ = sh(&["ip", "link", "del", &self.app]);
        let _ = sh(&["ip", "netns", "del", &self.ns]);
    }

    fn mac(&self) -> String {
        std::fs::read_to_string(format!("/sys/class/net/{}/address", self.app))
            .unwrap_or_default()
            .trim()
            .to_string()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.down();
    }
}

/// Sends `payload` to 198.18.0.1:7 from inside namespace `ns` and returns the reply.
fn udp_echo_from(ns: &str, payload: &'static [u8]) -> Result<Vec<u8>, String> {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let f = std::fs::File::open(&path).map_err(|e| format!("{path}: {e}"))?;
        // SAFETY: setns on this (fresh, short-lived) thread only, with a valid netns fd.
        if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(format!("setns: {}", std::io::Error::last_os_error()));
        }
        let s = UdpSocket::bind("198.18.0.2:0").map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(2)))
            .map_err(|e| e.to_string())?;
        let mut buf = [0u8; 256];
        for _ in 0..3 {
            s.send_to(payload, "198.18.0.1:7")
                .map_err(|e| e.to_string())?;
            if let Ok((n, from)) = s.recv_from(&mut buf) {
                if from.to_string() == "198.18.0.1:7" {
                    return Ok(buf[..n].to_vec());
                }
            }
        }
        Err("no UDP echo reply".into())
    })
    .join()
    .map_err(|_| "UDP thread panicked".to_string())?
}

#[test]
fn af_packet_on_a_veth_answers_arp_ping_and_udp_echo() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return skip_or_fail("needs root for a network namespace and a veth pair");
    }
    if sh(&["ip", "-V"]).is_err() {
        return skip_or_fail("`ip` not found (apt-get install iproute2)");
    }
    let lab = Lab::up().unwrap_or_else(|e| panic!("lab setup: {e}"));
    let core = dataplane::topology::allowed_cores()
        .into_iter()
        .next_back()
        .unwrap_or(0);
    let text = format!(
        r#"
[engine]
hugepages = false
idle = "backoff"

[dpdk]
log_level = "warning"
mbufs = 4095

[[ports]]
kind = "dpdk"
device = "net_af_packet_{app},iface={app}"

[[workers]]
core = {core}
queues = ["p0:q0"]

[[handlers]]
kind = "arp"
mac = "{mac}"
addresses = ["198.18.0.1"]

[[handlers]]
kind = "icmp"
addresses = ["198.18.0.1"]

[[handlers]]
kind = "udp-echo"
port = 7
"#,
        app = lab.app,
        mac = lab.mac(),
    );
    let path = Path::new("dpdk-afpacket.toml");
    let cfg = Config::parse(&text, path).unwrap();
    cfg.validate(path, &dataplane::topology::allowed_cores())
        .unwrap();
    let mut engine = Engine::new(&cfg, Path::new(".")).unwrap();
    engine.start().unwrap();

    // ARP resolution, then ICMP echo, through the kernel's ping in the peer namespace.
    let ping = sh(&[
        "ip",
        "netns",
        "exec",
        &lab.ns,
        "ping",
        "-c",
        "3",
        "-i",
        "0.2",
        "-W",
        "2",
        "198.18.0.1",
    ]);
    let echo = udp_echo_from(&lab.ns, b"slipstream over net_af_packet");
    let report = engine.stop();

    let out = ping.unwrap_or_else(|e| panic!("ping through DPDK af_packet failed: {e}"));
    assert!(out.contains("3 received"), "{out}");
    assert_eq!(echo.unwrap(), b"slipstream over net_af_packet");
    let report = report.unwrap();
    report.check_conservation().unwrap();
    let p = &report.ports[0].stats;
    // At least: one ARP request, three pings, one UDP request (the kernel may send more,
    // such as a second ARP).
    assert!(p.rx_packets >= 5, "{p:?}");
    assert!(p.tx_packets >= 5, "{p:?}");
    drop(lab);
}
