//! The appliance on a wire: the real `slipstream` binary runs an AF_XDP port on the app end
//! of a lab veth pair (ARCHITECTURE.md, "Testing topologies" 2; `scripts/lab`), steered by
//! the XDP program, while real kernel programs and raw sockets talk to it from the peer
//! namespace. AF_XDP on veth is copy mode only; that is what runs here.
//!
//! | test | proves |
//! |---|---|
//! | `kernel_udp_client_gets_every_echo_v4_and_v6` | 1000 numbered requests per family from a kernel UDP socket all come back with their payload; the report accounts for them |
//! | `kernel_answers_arp_and_ping_while_udp_goes_to_afxdp` | ARP/ND and ping are answered by the app kernel (XDP_PASS), UDP port 7 by slipstream (no kernel socket on it, kernel UDP counters still, slipstream counts it) |
//! | `two_queues_two_workers_split_many_flows` | `--queues 2` with one worker per queue: 32 flows spread over both RX queues, both workers receive, every reply arrives |
//! | `golden_cases_replay_live_on_the_wire` | the golden replay cases that can cross a veth, injected with AF_PACKET and captured on the peer, give the same frames (and counters) as the in-memory run |
//! | `restart_after_sigkill_replaces_the_stale_program` | a SIGKILLed appliance leaves its XDP program behind; the next one replaces it (no EBUSY) and echoes |
//!
//! Every test makes its own lab (unique prefix, `Drop` removes it even on panic), runs the
//! binary in the app namespace with a generated config, stops it with SIGINT and checks a
//! clean exit (0: frame accounting held) and the report's counters. They need root: not
//! root, or a lab that cannot be made, is a loud `*** SKIP` on stderr, or a failure under
//! `CI=true`.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{
    afxdp_config, echo_exchange, lab_for, peer_link, peer_udp, report_counters, setup_failed,
    wait_for_echo, worker_rx, Appliance, Lab, TempDir, WorkerSpec, APP_V4, APP_V6, LAB_APP_MAC,
    PEER_V4, PEER_V6, START_TIMEOUT, UDP_ECHO,
};
use dataplane::port::pcap::{read_capture, write_capture, Captured};
use dataplane::replay::{self, diff::diff_frames, Counters};
use dataplane::PortId;

/// Requests per family in the echo test.
const REQUESTS: usize = 1000;
/// How long one reply may take. Generous: on a loaded 2-core machine the busy-polling workers
/// of tests running side by side can delay a reply by hundreds of milliseconds; a lost reply
/// still never arrives.
const REPLY_TIMEOUT: Duration = Duration::from_secs(3);
/// Readiness probes before giving up (100 ms each).
const PROBES: u32 = 50;

const ECHO_RULES: &[&str] = &["udp 198.18.0.1 7", "udp 2001:db8::1 7"];

fn echo_port(ip: &str) -> SocketAddr {
    format!("[{ip}]:7")
        .parse()
        .or_else(|_| format!("{ip}:7").parse())
        .expect("an address")
}

fn one_worker() -> [WorkerSpec<'static>; 1] {
    [WorkerSpec {
        core: dataplane::topology::default_worker_core(),
        queues: &["p0:q0"],
    }]
}

/// Starts slipstream on `config` and waits until it runs; a failure here fails the test
/// (starting the port is what is under test).
fn start(test: &str, lab: &Lab, config: &str) -> Appliance {
    let mut app = Appliance::start(lab, config).unwrap_or_else(|e| panic!("{test}: {e}"));
    if let Err(e) = app.wait_running(START_TIMEOUT) {
        panic!("{test}: {e}");
    }
    app
}

/// The report's rx/tx/drop totals, checked to be an echo of everything received: rx ==
/// tx, no drops, and `at_least <= rx <= at_least + probes` (probes lost before the path was
/// up may or may not have reached the appliance).
fn assert_echoed(test: &str, report: &serde_json::Value, at_least: u64, probes: u64) {
    let c = report_counters(report);
    assert!(
        c.total.drops.is_empty() && c.total.slow_path == 0,
        "{test}: unexpected drops: {}",
        c.summary()
    );
    assert_eq!(
        c.total.rx_packets,
        c.total.tx_packets,
        "{test}: every request echoed: {}",
        c.summary()
    );
    let p0 = &c.ports["p0"];
    assert_eq!(
        p0.rx_bytes, p0.tx_bytes,
        "{test}: echo keeps lengths: {p0:?}"
    );
    assert!(
        (at_least..=at_least + probes).contains(&c.total.rx_packets),
        "{test}: slipstream received {} packets, expected {at_least} requests (+ up to {probes} probes)",
        c.total.rx_packets
    );
}

/// After a clean stop, the steering program is gone from the interface.
fn assert_detached(test: &str, lab: &Lab) {
    assert_eq!(
        lab.app_xdp_prog(),
        None,
        "{test}: the XDP program is still attached to {} after a clean stop",
        lab.app_if
    );
}

#[test]
fn kernel_udp_client_gets_every_echo_v4_and_v6() {
    let test = "kernel_udp_client_gets_every_echo_v4_and_v6";
    let Some(lab) = lab_for(test, 'a', 1) else {
        return;
    };
    let app = start(
        test,
        &lab,
        &afxdp_config(&lab, ECHO_RULES, &one_worker(), UDP_ECHO),
    );
    let (dst4, dst6) = (echo_port(APP_V4), echo_port(APP_V6));
    let sock4 = peer_udp(&lab, &format!("{PEER_V4}:0")).expect("peer UDP socket");
    let sock6 = peer_udp(&lab, &format!("[{PEER_V6}]:0")).expect("peer UDP socket");
    let probes = wait_for_echo(&sock4, dst4, PROBES).unwrap_or_else(|e| panic!("{test}: {e}"))
        + wait_for_echo(&sock6, dst6, PROBES).unwrap_or_else(|e| panic!("{test}: {e}"));
    // Fresh sockets, so that no late probe reply can be mistaken for a request's.
    let c4 = peer_udp(&lab, &format!("{PEER_V4}:0")).expect("peer UDP socket");
    let c6 = peer_udp(&lab, &format!("[{PEER_V6}]:0")).expect("peer UDP socket");
    let started = Instant::now();
    let r4 = echo_exchange(&c4, dst4, "v4", REQUESTS, REPLY_TIMEOUT);
    let r6 = echo_exchange(&c6, dst6, "v6", REQUESTS, REPLY_TIMEOUT);
    let took = started.elapsed();
    let done = app.interrupt();
    assert_eq!(r4, Ok(REQUESTS), "{test}: IPv4\n{}", done.tail_of_stderr());
    assert_eq!(r6, Ok(REQUESTS), "{test}: IPv6\n{}", done.tail_of_stderr());
    let report = done.assert_clean(test);
    assert_echoed(test, &report, 2 * REQUESTS as u64, u64::from(probes));
    assert_detached(test, &lab);
    eprintln!(
        "{test}: {} echoes in {took:.2?} ({:.0} us per round trip)",
        2 * REQUESTS,
        took.as_secs_f64() * 1e6 / (2 * REQUESTS) as f64
    );
}

#[test]
fn kernel_answers_arp_and_ping_while_udp_goes_to_afxdp() {
    let test = "kernel_answers_arp_and_ping_while_udp_goes_to_afxdp";
    let Some(lab) = lab_for(test, 'b', 1) else {
        return;
    };
    let app = start(
        test,
        &lab,
        &afxdp_config(&lab, ECHO_RULES, &one_worker(), UDP_ECHO),
    );
    let snmp = |group: &str, field: &str| {
        lab.app_snmp(group, field)
            .unwrap_or_else(|e| panic!("{test}: {e}"))
    };
    let peer = |args: &[&str]| lab.exec(&lab.peer_ns, args);

    // Nothing in the app namespace listens on UDP port 7: an echo can only be slipstream's.
    let listening = lab
        .exec(&lab.app_ns, &["ss", "-Hlnu"])
        .unwrap_or_else(|e| panic!("{test}: {e}"));
    assert!(
        !listening
            .lines()
            .any(|l| l.split_whitespace().any(|w| w.ends_with(":7"))),
        "{test}: a kernel socket listens on UDP 7 in {}:\n{listening}",
        lab.app_ns
    );

    // ARP/ND and ping: answered by the app kernel, through XDP_PASS.
    let (echos4, echos6) = (snmp("Icmp", "InEchos"), snmp("Icmp6", "InEchos"));
    peer(&["ip", "neigh", "flush", "dev", &lab.peer_if]).expect("ip neigh flush");
    for dst in [APP_V4, APP_V6] {
        peer(&["ping", "-q", "-c", "3", "-i", "0.2", "-W", "2", dst])
            .unwrap_or_else(|e| panic!("{test}: ping {dst} from the peer failed: {e}"));
    }
    for ip in [APP_V4, APP_V6] {
        let neigh = peer(&["ip", "neigh", "show", ip, "dev", &lab.peer_if]).expect("ip neigh");
        assert!(
            neigh.contains("lladdr 02:00:c6:12:00:01"),
            "{test}: the peer did not resolve {ip} to the app MAC through the kernel: {neigh:?}"
        );
    }
    assert!(
        snmp("Icmp", "InEchos") >= echos4 + 3 && snmp("Icmp6", "InEchos") >= echos6 + 3,
        "{test}: the app kernel did not see the pings"
    );

    // UDP port 7: slipstream, and the kernel sees none of it.
    let udp_before = (
        snmp("Udp", "InDatagrams") + snmp("Udp", "NoPorts"),
        snmp("Udp6", "InDatagrams") + snmp("Udp6", "NoPorts"),
    );
    let (dst4, dst6) = (echo_port(APP_V4), echo_port(APP_V6));
    let sock4 = peer_udp(&lab, &format!("{PEER_V4}:0")).expect("peer UDP socket");
    let sock6 = peer_udp(&lab, &format!("[{PEER_V6}]:0")).expect("peer UDP socket");
    let probes = wait_for_echo(&sock4, dst4, PROBES).unwrap_or_else(|e| panic!("{test}: {e}"))
        + wait_for_echo(&sock6, dst6, PROBES).unwrap_or_else(|e| panic!("{test}: {e}"));
    let c4 = peer_udp(&lab, &format!("{PEER_V4}:0")).expect("peer UDP socket");
    let c6 = peer_udp(&lab, &format!("[{PEER_V6}]:0")).expect("peer UDP socket");
    let r4 = echo_exchange(&c4, dst4, "v4", 100, REPLY_TIMEOUT);
    let r6 = echo_exchange(&c6, dst6, "v6", 100, REPLY_TIMEOUT);
    let udp_after = (
        snmp("Udp", "InDatagrams") + snmp("Udp", "NoPorts"),
        snmp("Udp6", "InDatagrams") + snmp("Udp6", "NoPorts"),
    );
    // Pings again while UDP is steered: the kernel still answers them.
    peer(&["ping", "-q", "-c", "2", "-i", "0.2", "-W", "2", APP_V4])
        .unwrap_or_else(|e| panic!("{test}: ping while slipstream runs: {e}"));

    let done = app.interrupt();
    assert_eq!(r4, Ok(100), "{test}\n{}", done.tail_of_stderr());
    assert_eq!(r6, Ok(100), "{test}\n{}", done.tail_of_stderr());
    assert_eq!(
        udp_after, udp_before,
        "{test}: the app kernel's UDP counters (InDatagrams + NoPorts, v4 and v6) moved: the \
         echo requests reached the kernel"
    );
    let report = done.assert_clean(test);
    // rx is exactly the UDP requests (+ probes): the 8 pings and the ARP/ND exchanges are
    // not in it, so they did not go to AF_XDP.
    assert_echoed(test, &report, 200, u64::from(probes));
    assert_detached(test, &lab);
}

#[test]
fn two_queues_two_workers_split_many_flows() {
    let test = "two_queues_two_workers_split_many_flows";
    let cores: Vec<u32> = dataplane::topology::allowed_cores()
        .into_iter()
        .take(2)
        .collect();
    if cores.len() < 2 {
        if common::privileged(test) {
            setup_failed(test, "needs two allowed cores, one per worker");
        }
        return;
    }
    let Some(lab) = lab_for(test, 'c', 2) else {
        return;
    };
    let workers = [
        WorkerSpec {
            core: cores[0],
            queues: &["p0:q0"],
        },
        WorkerSpec {
            core: cores[1],
            queues: &["p0:q1"],
        },
    ];
    let app = start(
        test,
        &lab,
        &afxdp_config(&lab, ECHO_RULES, &workers, UDP_ECHO),
    );
    let (dst4, dst6) = (echo_port(APP_V4), echo_port(APP_V6));
    let probe = peer_udp(&lab, &format!("{PEER_V4}:0")).expect("peer UDP socket");
    let mut probes = wait_for_echo(&probe, dst4, PROBES).unwrap_or_else(|e| panic!("{test}: {e}"));
    let probe6 = peer_udp(&lab, &format!("[{PEER_V6}]:0")).expect("peer UDP socket");
    probes += wait_for_echo(&probe6, dst6, PROBES).unwrap_or_else(|e| panic!("{test}: {e}"));

    // How veth picks the RX queue: veth_xmit() hands the skb to the peer's RX queue of the
    // same index as the TX queue the sender's stack chose (skb queue_mapping), and with no
    // XPS configured (veth sets none) the stack picks the TX queue by flow hash
    // (skb_tx_hash over the 5-tuple, remembered per connected socket). So different source
    // ports land on different app RX queues, and 32 flows leave both queues empty with a
    // probability of 2^-31.
    const FLOWS: usize = 32;
    const PER_FLOW: usize = 25;
    let flows: Vec<(std::net::UdpSocket, SocketAddr)> = (0..FLOWS)
        .map(|i| {
            let (bind, dst) = if i % 2 == 1 {
                (format!("[{PEER_V6}]:0"), dst6)
            } else {
                (format!("{PEER_V4}:0"), dst4)
            };
            let s = peer_udp(&lab, &bind).expect("peer UDP socket");
            s.connect(dst).expect("connect");
            (s, dst)
        })
        .collect();
    let mut result = Ok(0);
    'rounds: for round in 0..PER_FLOW {
        for (i, (s, dst)) in flows.iter().enumerate() {
            if let Err(e) = echo_exchange(s, *dst, &format!("flow{i}.{round}"), 1, REPLY_TIMEOUT) {
                result = Err(e);
                break 'rounds;
            }
            result = result.map(|n| n + 1);
        }
    }
    let wire = lab.diagnostics();
    let done = app.interrupt();
    assert_eq!(
        result,
        Ok(FLOWS * PER_FLOW),
        "{test}\n{wire}report: {}\n{}",
        done.stdout,
        done.tail_of_stderr()
    );
    let report = done.assert_clean(test);
    assert_echoed(test, &report, (FLOWS * PER_FLOW) as u64, u64::from(probes));
    let (w0, w1) = (worker_rx(&report, 0), worker_rx(&report, 1));
    assert!(
        w0 > 0 && w1 > 0,
        "{test}: both RX queues should carry flows: w0 (p0:q0) rx {w0}, w1 (p0:q1) rx {w1}"
    );
    assert_eq!(
        w0 + w1,
        report_counters(&report).total.rx_packets,
        "{test}: the workers together received what the port did"
    );
    assert_detached(test, &lab);
    eprintln!("{test}: w0 (p0:q0) rx {w0}, w1 (p0:q1) rx {w1}");
}

/// A golden case replayed on the wire.
struct LiveCase {
    name: &'static str,
    /// Input frames (indices into `in-p0`) not injected, because the XDP program passes
    /// them to the kernel (its rules match IPv4/IPv6 destinations only: ARP, other
    /// ethertypes and IP headers it cannot parse are XDP_PASS) or because they cannot be
    /// put on a veth (shorter than an Ethernet header).
    not_steered: &'static [usize],
    /// The expected output frames (indices into `out-p0`) that answer those inputs.
    their_replies: &'static [usize],
}

/// The cases that make sense on a wire, and what of them does.
///
/// | case | on the wire | not injected (input index: why) |
/// |---|---|---|
/// | udp-echo-v4, udp-echo-v6, udp-echo-many | all | — |
/// | udp-echo-vlan | all (the program parses one tag; the peer's tag is restored from PACKET_AUXDATA) | — |
/// | icmp-v4, icmp-v6 | all (an `any` rule steers ICMP) | — |
/// | macswap, macswap-pcapng | 4 of 6 | 3: ARP; 5: ethertype 0x88b5 |
/// | unhandled | 4 of 6 | 4: LLDP; 5: ARP |
/// | malformed-ipv4 | 6 of 10 | 0: header cut; 1: version 6; 2, 3: IHL < 5 (the program cannot parse them) |
/// | malformed-l4 | 14 of 16 | 0: IPv6 header cut; 1: version 4 in an IPv6 frame |
/// | mixed | 5 of 9 | 0, 6: ARP; 5: IHL 3; 8: a 10-byte runt |
/// | lb-any-port, lb-conn-table, lb-dport-only, lb-drops, lb-gue, lb-icmp, lb-quic, lb-v6 | all (on a 1600-byte MTU wire: see the test) | — |
/// | lb-v4 | 27 of 28 | 27: ARP (reflected by macswap: output 27) |
///
/// Cases with frames left out compare their output with the expected file less the replies
/// to those frames, and their counters with an in-memory run of just the injected frames
/// (which must itself give that output: the table is checked).
const LIVE: &[LiveCase] = &[
    LiveCase {
        name: "udp-echo-v4",
        not_steered: &[],
        their_replies: &[],
    },
    LiveCase {
        name: "udp-echo-v6",
        not_steered: &[],
        their_replies: &[],
    },
    LiveCase {
        name: "udp-echo-vlan",
        not_steered: &[],
        their_replies: &[],
    },
    LiveCase {
        name: "udp-echo-many",
        not_steered: &[],
        their_replies: &[],
    },
    LiveCase {
        name: "icmp-v4",
        not_steered: &[],
        their_replies: &[],
    },
    LiveCase {
        name: "icmp-v6",
        not_steered: &[],
        their_replies: &[],
    },
    LiveCase {
        name: "macswap",
        not_steered: &[3, 5],
        their_replies: &[3, 5],
    },
    LiveCase {
        name: "macswap-pcapng",
        not_steered: &[3, 5],
        their_replies: &[3, 5],
    },
    LiveCase {
        name: "unhandled",
        not_steered: &[4, 5],
        their_replies: &[],
    },
    LiveCase {
        name: "malformed-ipv4",
        not_steered: &[0, 1, 2, 3],
        their_replies: &[],
    },
    LiveCase {
        name: "malformed-l4",
        not_steered: &[0, 1],
        their_replies: &[],
    },
    LiveCase {
        name: "mixed",
        not_steered: &[0, 5, 6, 8],
        their_replies: &[0],
    },
    LiveCase {
        name: "lb-any-port",
        not_steered: &[],
        their_replies: &[],
    },
    LiveCase {
        name: "lb-conn-table",
        not_steered: &[],
        their_replies: &[],
    },
    LiveCase {
        name: "lb-dport-only",
        not_steered: &[],
        their_replies: &[],
    },
    LiveCase {
        name: "lb-drops",
        not_steered: &[],
        their_replies: &[],
    },
    LiveCase {
        name: "lb-gue",
        not_steered: &[],
        their_replies: &[],
    },
    LiveCase {
        name: "lb-icmp",
        not_steered: &[],
        their_replies: &[],
    },
    LiveCase {
        name: "lb-quic",
        not_steered: &[],
        their_replies: &[],
    },
    LiveCase {
        name: "lb-v4",
        not_steered: &[27],
        their_replies: &[27],
    },
    LiveCase {
        name: "lb-v6",
        not_steered: &[],
        their_replies: &[],
    },
];

/// Cases that stay in memory, and why.
const NOT_LIVE: &[(&str, &str)] = &[
    (
        "arp",
        "ARP is not IP: the XDP program passes it to the app kernel, which answers it itself \
         (checked by kernel_answers_arp_and_ping_while_udp_goes_to_afxdp)",
    ),
    (
        "malformed-l2",
        "runts of 0, 1 and 13 bytes cannot be sent on a veth (AF_PACKET needs a whole \
         Ethernet header), and the seeded garbage is not IP the program steers",
    ),
    (
        "oversize",
        "needs engine.frame_size 1024, and an AF_XDP UMEM chunk is 2048 or 4096; the veth \
         MTU (1500) caps frames before any port limit",
    ),
    ("two-port", "two pcap ports; the lab has one wire"),
];

/// Steers everything the cases address (RFC 2544 and RFC 3849 ranges).
const REPLAY_RULES: &[&str] = &["any 198.18.0.0/15", "any 2001:db8::/32"];

/// After the last expected reply, how long to keep listening for unexpected extra frames.
const LINGER: Duration = Duration::from_millis(300);

fn cases_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/replay")
}

/// The case's config with its pcap ports and workers replaced by the lab's AF_XDP port and
/// one worker; engine settings and the handler chain are the case's own.
fn live_config(case_dir: &Path, lab: &Lab) -> Result<String, String> {
    let path = case_dir.join("config.toml");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut cfg: toml::Table = text
        .parse()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let generated: toml::Table = afxdp_config(lab, REPLAY_RULES, &one_worker(), "")
        .parse()
        .map_err(|e| format!("generated config: {e}"))?;
    for key in ["ports", "workers"] {
        cfg.insert(key.into(), generated[key].clone());
    }
    let engine = cfg
        .entry("engine")
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    if let toml::Value::Table(e) = engine {
        e.insert("stats_interval_ms".into(), toml::Value::Integer(100));
    }
    Ok(cfg.to_string())
}

fn input_capture(case_dir: &Path) -> Result<Vec<Captured>, String> {
    for name in ["in-p0.pcap", "in-p0.pcapng"] {
        let p = case_dir.join(name);
        if p.exists() {
            return read_capture(&p).map_err(|e| format!("{}: {e}", p.display()));
        }
    }
    Err(format!(
        "{}: no in-p0.pcap or in-p0.pcapng",
        case_dir.display()
    ))
}

fn without(frames: &[Captured], drop: &[usize]) -> Vec<Captured> {
    frames
        .iter()
        .enumerate()
        .filter(|(i, _)| !drop.contains(i))
        .map(|(_, f)| f.clone())
        .collect()
}

/// The first difference between two frame lists (data and order; timestamps ignored).
fn diff_frame_lists(label: &str, expected: &[Captured], got: &[Vec<u8>]) -> Vec<String> {
    let mut out = Vec::new();
    for (i, (e, g)) in expected.iter().zip(got).enumerate() {
        if let Some(d) = diff_frames(&e.data, g) {
            out.push(format!("{label} packet {i}: {d}"));
            break;
        }
    }
    if expected.len() != got.len() {
        out.push(format!(
            "{label}: expected {} packets, got {}",
            expected.len(),
            got.len()
        ));
    }
    out
}

/// Expected counters of a live case: `counters.toml` when every frame is injected, else
/// an in-memory (pcap) run of the injected frames, whose output must equal `expected`.
fn expected_counters(
    case: &LiveCase,
    dir: &Path,
    injected: &[Captured],
    expected: &[Captured],
) -> Result<Counters, String> {
    if case.not_steered.is_empty() {
        let path = dir.join("counters.toml");
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        return Counters::parse(&text, &path);
    }
    let tmp = TempDir::new(case.name).map_err(|e| e.to_string())?;
    let input = tmp.0.join("in-injected.pcap");
    write_capture(&input, injected).map_err(|e| format!("{}: {e}", input.display()))?;
    let out_dir = tmp.0.join("out");
    let outcome = replay::adhoc(
        &dir.join("config.toml"),
        &[(PortId(0), input)],
        &out_dir,
        replay::DEFAULT_TIMEOUT,
    )
    .map_err(|e| format!("in-memory run of the injected frames: {e}"))?;
    if !outcome.passed() {
        return Err(format!(
            "in-memory run of the injected frames: {}",
            outcome.problems.join("; ")
        ));
    }
    let out = out_dir.join("out-p0.pcap");
    let got: Vec<Vec<u8>> = read_capture(&out)
        .map_err(|e| format!("{}: {e}", out.display()))?
        .into_iter()
        .map(|c| c.data)
        .collect();
    let d = diff_frame_lists("in-memory run of the injected frames", expected, &got);
    if !d.is_empty() {
        return Err(format!(
            "the LIVE table is wrong for this case (its not_steered/their_replies do not match \
             what the engine does): {}",
            d.join("; ")
        ));
    }
    Ok(outcome.counters)
}

/// Replays one case on the lab; the problems found (empty: it passed).
fn replay_live(lab: &Lab, case: &LiveCase) -> Vec<String> {
    let dir = cases_root().join(case.name);
    let setup = || -> Result<_, String> {
        let inputs = input_capture(&dir)?;
        let out = dir.join("out-p0.pcap");
        let expected_all = read_capture(&out).map_err(|e| format!("{}: {e}", out.display()))?;
        let injected = without(&inputs, case.not_steered);
        let expected = without(&expected_all, case.their_replies);
        let counters = expected_counters(case, &dir, &injected, &expected)?;
        Ok((injected, expected, counters, live_config(&dir, lab)?))
    };
    let (injected, expected, expected_counters, config) = match setup() {
        Ok(v) => v,
        Err(e) => return vec![e],
    };
    let link = match peer_link(lab) {
        Ok(l) => l,
        Err(e) => return vec![format!("AF_PACKET socket on {}: {e}", lab.peer_if)],
    };
    let mut app = match Appliance::start(lab, &config) {
        Ok(a) => a,
        Err(e) => return vec![e],
    };
    if let Err(e) = app.wait_running(START_TIMEOUT) {
        return vec![e];
    }
    let mut problems = Vec::new();
    // Whatever the peer received before (the app kernel's ND/MLD) is not ours.
    while let Ok(Some(_)) = link.recv(Duration::ZERO) {}
    for (i, f) in injected.iter().enumerate() {
        if let Err(e) = link.send(&f.data) {
            problems.push(format!("injecting frame {i} ({} bytes): {e}", f.data.len()));
        }
    }
    // Replies: frames from the app end that the app kernel did not send (it uses the lab's
    // MAC; the cases' appliance is 02:00:00:00:00:01). Wait for as many as expected, then
    // a little longer for any extra.
    let mut got: Vec<Vec<u8>> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut linger_until = None;
    loop {
        let now = Instant::now();
        let until = linger_until.unwrap_or(deadline);
        if now >= until {
            break;
        }
        match link.recv(until - now) {
            Ok(Some(f)) => {
                if f.pkttype != libc::PACKET_OUTGOING && f.data.get(6..12) != Some(&LAB_APP_MAC[..])
                {
                    got.push(f.data);
                }
            }
            Ok(None) => {}
            Err(e) => {
                problems.push(format!("capturing on {}: {e}", lab.peer_if));
                break;
            }
        }
        if got.len() >= expected.len() && linger_until.is_none() {
            linger_until = Some(Instant::now() + LINGER);
        }
    }
    let done = app.interrupt();
    if done.status.code() != Some(0) {
        problems.push(format!(
            "slipstream exited {}:\n{}",
            done.status,
            done.tail_of_stderr()
        ));
        return problems;
    }
    problems.extend(diff_frame_lists("out-p0 (live)", &expected, &got));
    match serde_json::from_str::<serde_json::Value>(&done.stdout) {
        Ok(report) => problems.extend(Counters::diff(
            &expected_counters,
            &report_counters(&report),
        )),
        Err(e) => problems.push(format!("the --json report does not parse: {e}")),
    }
    if lab.app_xdp_prog().is_some() {
        problems.push("the XDP program is still attached after a clean stop".into());
    }
    problems
}

#[test]
fn golden_cases_replay_live_on_the_wire() {
    let test = "golden_cases_replay_live_on_the_wire";
    // Every case is either replayed live or has a reason not to be: a new case must decide.
    let mut listed: Vec<&str> = LIVE.iter().map(|c| c.name).collect();
    listed.extend(NOT_LIVE.iter().map(|(n, _)| *n));
    listed.sort_unstable();
    let on_disk: Vec<String> = replay::discover(&cases_root())
        .expect("tests/replay")
        .iter()
        .map(|d| replay::case_name(d))
        .collect();
    assert_eq!(
        listed, on_disk,
        "{test}: every case under tests/replay must be in LIVE or NOT_LIVE"
    );

    let Some(lab) = lab_for(test, 'd', 1) else {
        return;
    };
    // Encapsulation needs room on the wire: lb-drops forwards a 1514-byte frame as a
    // 1534-byte IP-in-IP packet (and feeds a 1515-byte one to check the size limit), more
    // than a 1500-byte MTU carries. An encapsulating deployment's network has that headroom
    // too; 1600 stays well under what native XDP on a veth allows.
    for (ns, dev) in [(&lab.app_ns, &lab.app_if), (&lab.peer_ns, &lab.peer_if)] {
        if let Err(e) = common::run("ip", &["-n", ns, "link", "set", "dev", dev, "mtu", "1600"]) {
            setup_failed(test, &e);
            return;
        }
    }
    let mut failed = Vec::new();
    for case in LIVE {
        let problems = replay_live(&lab, case);
        if problems.is_empty() {
            eprintln!("{test}: {} ok", case.name);
        } else {
            failed.push(format!("FAIL {}:\n  {}", case.name, problems.join("\n  ")));
        }
    }
    assert!(failed.is_empty(), "{test}:\n{}", failed.join("\n"));
}

#[test]
fn restart_after_sigkill_replaces_the_stale_program() {
    let test = "restart_after_sigkill_replaces_the_stale_program";
    let Some(lab) = lab_for(test, 'e', 1) else {
        return;
    };
    let config = afxdp_config(&lab, ECHO_RULES, &one_worker(), UDP_ECHO);
    let (dst4, dst6) = (echo_port(APP_V4), echo_port(APP_V6));

    let first = start(test, &lab, &config);
    let sock = peer_udp(&lab, &format!("{PEER_V4}:0")).expect("peer UDP socket");
    wait_for_echo(&sock, dst4, PROBES).unwrap_or_else(|e| panic!("{test}: first run: {e}"));
    let stale = lab.app_xdp_prog();
    let killed = first.kill();
    assert_eq!(
        killed.status.code(),
        None,
        "{test}: the first run should have died of SIGKILL: {}",
        killed.status
    );
    // The crash leaves the program attached (the xdp crate attaches over netlink, which
    // outlives the process), with no socket behind it: this is the case under test.
    assert!(
        stale.is_some(),
        "{test}: no XDP program while the first run was up"
    );
    assert_eq!(
        lab.app_xdp_prog(),
        stale,
        "{test}: expected the killed run's program to stay attached"
    );

    let second = start(test, &lab, &config);
    let replaced = lab.app_xdp_prog();
    let sock4 = peer_udp(&lab, &format!("{PEER_V4}:0")).expect("peer UDP socket");
    let sock6 = peer_udp(&lab, &format!("[{PEER_V6}]:0")).expect("peer UDP socket");
    let probes = wait_for_echo(&sock4, dst4, PROBES).unwrap_or_else(|e| panic!("{test}: {e}"))
        + wait_for_echo(&sock6, dst6, PROBES).unwrap_or_else(|e| panic!("{test}: {e}"));
    let c4 = peer_udp(&lab, &format!("{PEER_V4}:0")).expect("peer UDP socket");
    let c6 = peer_udp(&lab, &format!("[{PEER_V6}]:0")).expect("peer UDP socket");
    let r4 = echo_exchange(&c4, dst4, "v4", 200, REPLY_TIMEOUT);
    let r6 = echo_exchange(&c6, dst6, "v6", 200, REPLY_TIMEOUT);
    let done = second.interrupt();
    assert_eq!(r4, Ok(200), "{test}: second run\n{}", done.tail_of_stderr());
    assert_eq!(r6, Ok(200), "{test}: second run\n{}", done.tail_of_stderr());
    assert!(
        replaced.is_some() && replaced != stale,
        "{test}: the second run should have replaced program {stale:?}, found {replaced:?}"
    );
    let report = done.assert_clean(test);
    assert_echoed(test, &report, 400, u64::from(probes));
    assert_detached(test, &lab);
}
