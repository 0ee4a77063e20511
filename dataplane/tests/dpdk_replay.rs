//! Every golden replay case through DPDK's `net_pcap` driver instead of our pcap port: the
//! same `in-<port>.pcap` is read by `net_pcap` (`rx_pcap=`), the packets cross the real
//! engine as mbufs, `net_pcap` writes what the ports transmit (`tx_pcap=`), and the result
//! must be the case's expected files: the same packets, byte for byte, in the same order, and
//! the same counters (`counters.toml`). Timestamps are not compared: `net_pcap` stamps
//! transmitted packets with the clock, where the pcap port copies the capture time.
//!
//! Nothing flushes the receive queues before the run (testpmd does, and loses the first
//! packets of a capture that way). One EAL for the whole binary; each case plugs in its own
//! uniquely named devices, which are removed when the case's engine stops.
#![cfg(feature = "dpdk")]

use std::path::{Path, PathBuf};
use std::time::Duration;

use dataplane::config::{Config, DpdkPortConfig, PortConfig};
use dataplane::engine::{Engine, EngineError};
use dataplane::port::pcap::read_capture;
use dataplane::replay::diff::diff_captures;
use dataplane::replay::{counters_of, discover, Counters};

fn cases_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/replay")
}

/// Runs one case on net_pcap devices; returns the problems found and how many output
/// packets were compared.
fn run_case(dir: &Path, out_dir: &Path) -> (Vec<String>, usize) {
    let case = dir.file_name().unwrap().to_string_lossy().into_owned();
    let mut cfg = Config::load(&dir.join("config.toml")).unwrap();
    cfg.engine.dpdk.log_level = "warning".into();
    let mut outputs = Vec::new();
    let tag: String = case
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    for (i, p) in cfg.ports.iter_mut().enumerate() {
        let PortConfig::Pcap(pc) = p else {
            panic!("{case}: ports[{i}] is not a pcap port");
        };
        let input = dir.join(pc.input.as_ref().expect("cases have inputs"));
        let rel = pc.output.clone().expect("cases have outputs");
        let actual = out_dir.join(format!("{tag}-{}", rel.display()));
        outputs.push((
            rel.file_stem().unwrap().to_string_lossy().into_owned(),
            dir.join(&rel),
            actual.clone(),
        ));
        *p = PortConfig::Dpdk(DpdkPortConfig {
            device: format!(
                "net_pcap_{tag}_{i},rx_pcap={},tx_pcap={}",
                input.display(),
                actual.display()
            ),
            queues: 1,
            rx_desc: 1024,
            tx_desc: 1024,
            socket: None,
            promiscuous: true,
        });
    }
    cfg.validate(
        &dir.join("config.toml"),
        &dataplane::topology::allowed_cores(),
    )
    .unwrap();
    let mut problems = Vec::new();
    let engine = match Engine::new(&cfg, dir) {
        Ok(e) => e,
        Err(e) => return (vec![format!("{case}: {e}")], 0),
    };
    let report = match engine.run_to_end(Duration::from_secs(60)) {
        Ok(r) => r,
        Err(EngineError::Accounting {
            problems: p,
            report,
        }) => {
            problems.extend(p.into_iter().map(|p| format!("accounting: {p}")));
            *report
        }
        Err(e) => return (vec![format!("{case}: {e}")], 0),
    };
    if let Err(e) = report.check_conservation() {
        problems.push(format!("conservation: {e}"));
    }
    let expected = Counters::parse(
        &std::fs::read_to_string(dir.join("counters.toml")).unwrap(),
        &dir.join("counters.toml"),
    )
    .unwrap();
    problems.extend(Counters::diff(&expected, &counters_of(&report)));
    let mut compared = 0;
    for (label, expected, actual) in outputs {
        let strip = |mut v: Vec<dataplane::port::pcap::Captured>| {
            for c in &mut v {
                c.ts_ns = 0;
            }
            v
        };
        let e = strip(read_capture(&expected).unwrap());
        let a = match read_capture(&actual) {
            Ok(a) => strip(a),
            Err(err) => {
                problems.push(format!("{}: {err}", actual.display()));
                continue;
            }
        };
        compared += e.len().min(a.len());
        problems.extend(diff_captures(&label, &e, &a));
    }
    let problems = problems
        .into_iter()
        .map(|p| format!("{case}: {p}"))
        .collect();
    (problems, compared)
}

#[test]
fn golden_cases_pass_through_net_pcap_with_the_expected_files() {
    let out_dir =
        std::env::temp_dir().join(format!("slipstream-dpdk-replay-{}", std::process::id()));
    std::fs::create_dir_all(&out_dir).unwrap();
    let cases = discover(&cases_dir()).unwrap();
    assert!(cases.len() >= 16, "found {} cases", cases.len());
    let mut problems = Vec::new();
    let mut compared = 0;
    for dir in &cases {
        let (p, n) = run_case(dir, &out_dir);
        problems.extend(p);
        compared += n;
    }
    let _ = std::fs::remove_dir_all(&out_dir);
    assert!(compared >= 100, "only {compared} packets compared");
    assert!(
        problems.is_empty(),
        "{} problem(s):\n{}",
        problems.len(),
        problems.join("\n")
    );
}
