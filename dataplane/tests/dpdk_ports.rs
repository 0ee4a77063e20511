//! The DPDK port on virtual devices, through the real engine and worker: forwarding between
//! two `net_null` devices (zero-copy rx -> tx, device counters agree with ours, every mbuf
//! back at close), a round trip through a `net_ring` loopback (bytes intact across the copies
//! into and out of mbufs), device hot-plug and removal, and configuration errors.
//!
//! DPDK allows one EAL per process: every test in this binary shares the one the first test
//! initialises (each brings its own uniquely named devices). Needs DPDK (libdpdk-dev) and
//! runs unprivileged with `--no-huge` when hugepages are short.
#![cfg(feature = "dpdk")]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dataplane::config::{DpdkConfig, DpdkPortConfig, EngineConfig, Idle};
use dataplane::engine::{Engine, Report, WorkerPlan};
use dataplane::port::dpdk::Dpdk;
use dataplane::port::memory::{MemoryOptions, Sink, Source};
use dataplane::port::{Memory, Port, PortError};
use dataplane::{Context, DropReason, Frame, Handler, Pipeline, PortId, QueueId, Verdict};

fn engine_cfg() -> EngineConfig {
    EngineConfig {
        burst: 32,
        ring_size: 1024,
        idle: Idle::Backoff,
        backoff_max_us: 100,
        hugepages: true,
        dpdk: DpdkConfig {
            mbufs: 8191,
            log_level: "warning".into(),
            ..DpdkConfig::default()
        },
        ..EngineConfig::default()
    }
}

fn port_cfg(device: &str) -> DpdkPortConfig {
    DpdkPortConfig {
        device: device.into(),
        queues: 1,
        rx_desc: 512,
        tx_desc: 512,
        socket: None,
        promiscuous: true,
    }
}

fn dpdk(id: u16, device: &str) -> Arc<Dpdk> {
    Dpdk::new(PortId(id), &port_cfg(device), &engine_cfg(), Path::new("."))
        .unwrap_or_else(|e| panic!("{device}: {e}"))
}

fn plan(queues: &[QueueId]) -> WorkerPlan {
    WorkerPlan {
        core: None,
        queues: queues.to_vec(),
    }
}

/// testpmd's `io` mode: every frame leaves through the other port, untouched.
struct Cross;

impl Handler for Cross {
    fn name(&self) -> &str {
        "cross"
    }
    fn process(&mut self, frames: &mut [Frame], verdicts: &mut [Verdict], _cx: &Context) {
        for (f, v) in frames.iter().zip(verdicts.iter_mut()) {
            *v = Verdict::Tx(QueueId::new(1 - f.meta.rx.port.0, 0));
        }
    }
}

/// Sends every frame back out of the port it came from, untouched.
struct Reflect;

impl Handler for Reflect {
    fn name(&self) -> &str {
        "reflect"
    }
    fn process(&mut self, frames: &mut [Frame], verdicts: &mut [Verdict], _cx: &Context) {
        for (f, v) in frames.iter().zip(verdicts.iter_mut()) {
            *v = Verdict::reply(f);
        }
    }
}

/// Runs `handler` over two null devices for a while; returns the ports and the frames the
/// worker copied.
fn run_null_pair(handler: Box<dyn Handler>, names: [&str; 2]) -> (Arc<Dpdk>, Arc<Dpdk>, u64) {
    let p0 = dpdk(0, names[0]);
    let p1 = dpdk(1, names[1]);
    assert_eq!(p0.kind(), "dpdk");
    assert_eq!(p0.driver(), "net_null");
    assert!(
        p0.describe().contains("driver=net_null"),
        "{}",
        p0.describe()
    );
    let ports: Vec<Arc<dyn Port>> = vec![p0.clone(), p1.clone()];
    let mut engine = Engine::from_parts(
        &engine_cfg(),
        ports,
        vec![plan(&[QueueId::new(0, 0), QueueId::new(1, 0)])],
        vec![Pipeline::new(vec![handler])],
    )
    .unwrap();
    engine.start().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let drained = engine.drain(Duration::from_secs(5)).unwrap();
    // Ours and the devices' counters agree (net_null counts what it hands over and takes).
    for (i, p) in [&p0, &p1].into_iter().enumerate() {
        let dev = p.eth_stats().unwrap();
        let ours = &drained.ports[i].stats;
        assert_eq!(dev.ipackets, ours.rx_packets, "p{i} rx");
        assert_eq!(dev.opackets, ours.tx_packets, "p{i} tx");
    }
    let report = engine.stop().unwrap();
    report.check_conservation().unwrap();
    for p in &report.ports {
        assert!(p.stats.rx_packets > 1000, "{p:?}");
        assert_eq!(p.stats.drops.total(), 0, "{p:?}");
    }
    let copies = report.worker_totals().copies;
    (p0, p1, copies)
}

#[test]
fn io_forwarding_between_null_devices_is_zero_copy_and_accounts_for_every_mbuf() {
    let (p0, p1, copies) = run_null_pair(Box::new(Cross), ["net_null_io0", "net_null_io1"]);
    assert!(p0.eth_stats().is_none(), "closed by stop");
    // p0 -> p1 and back: two pools over one mempool, so frames change pools without a copy
    // (`FramePool::shares_memory`), and both pools' accounting still holds at close.
    assert!(Arc::ptr_eq(p0.mempool(), p1.mempool()));
    assert_eq!(copies, 0, "no copy between ports over one mempool");
    // After stop both ports are closed and every frame came back (Port::close checks it,
    // and, when the last port on the mempool closes, that every mbuf is back in it; other
    // tests of this binary share the mempool, so that part is not asserted here).
    p0.pool().verify().unwrap();
}

#[test]
fn reflecting_on_null_devices_needs_no_copy() {
    let (p0, p1, copies) = run_null_pair(Box::new(Reflect), ["net_null_rf0", "net_null_rf1"]);
    // Same mempool for both ports (one per socket).
    assert!(Arc::ptr_eq(p0.mempool(), p1.mempool()));
    assert_eq!(copies, 0);
}

/// Runs one port alone for `time`, every frame reflected, and stops.
fn reflect_alone(p0: Arc<Dpdk>, time: Duration) -> Report {
    let ports: Vec<Arc<dyn Port>> = vec![p0];
    let mut engine = Engine::from_parts(
        &engine_cfg(),
        ports,
        vec![plan(&[QueueId::new(0, 0)])],
        vec![Pipeline::new(vec![Box::new(Reflect)])],
    )
    .unwrap();
    engine.start().unwrap();
    std::thread::sleep(time);
    engine.stop().unwrap()
}

#[test]
fn zero_copy_rx_to_tx_moves_no_bytes() {
    // A reflected frame is the received mbuf itself: the worker made no copy.
    let p0 = dpdk(0, "net_null_zc0");
    let report = reflect_alone(p0, Duration::from_millis(100));
    let w = report.worker_totals();
    assert!(w.tx_packets > 0);
    assert_eq!(w.copies, 0);
}

/// Sends frames from the memory port p0 into the DPDK port p1 and whatever p1 receives back
/// to p0.
struct Loop;

impl Handler for Loop {
    fn name(&self) -> &str {
        "loop"
    }
    fn process(&mut self, frames: &mut [Frame], verdicts: &mut [Verdict], _cx: &Context) {
        for (f, v) in frames.iter().zip(verdicts.iter_mut()) {
            *v = Verdict::Tx(QueueId::new(1 - f.meta.rx.port.0, 0));
        }
    }
}

fn udp_frame(i: u16) -> Vec<u8> {
    // A valid Ethernet frame with an unknown ethertype and a numbered payload.
    let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0x88, 0xb5];
    f.extend_from_slice(&i.to_be_bytes());
    f.extend((0..(40 + i % 200)).map(|b| b as u8));
    f
}

#[test]
fn frames_survive_a_round_trip_through_a_ring_device() {
    // net_ring without arguments is a loopback: what p1 transmits, p1 receives.
    let p0 = Memory::new(
        PortId(0),
        MemoryOptions {
            queues: 1,
            frames: 1024,
            frame_size: 2048,
            memory: dataplane::mem::Options {
                hugepages: false,
                numa_node: None,
            },
            source: Source::Ring,
            sink: Sink::Ring,
            ring_size: 1024,
        },
    )
    .unwrap();
    let p1 = dpdk(1, "net_ring_rt0");
    assert_eq!(p1.driver(), "net_ring");
    let sent: Vec<Vec<u8>> = (0..300).map(udp_frame).collect();
    for f in &sent {
        assert!(p0.inject(0, f));
    }
    let ports: Vec<Arc<dyn Port>> = vec![p0.clone(), p1.clone()];
    let mut engine = Engine::from_parts(
        &engine_cfg(),
        ports,
        vec![plan(&[QueueId::new(0, 0), QueueId::new(1, 0)])],
        vec![Pipeline::new(vec![Box::new(Loop)])],
    )
    .unwrap();
    engine.start().unwrap();
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while got.len() < sent.len() && Instant::now() < deadline {
        p0.drain_tx(0, |b| got.push(b.to_vec()));
        std::thread::sleep(Duration::from_millis(2));
    }
    let report = engine.stop().unwrap();
    assert_eq!(got.len(), sent.len());
    assert_eq!(
        got, sent,
        "bytes and order survive memory -> mbuf -> ring -> mbuf -> memory"
    );
    let w = report.worker_totals();
    assert_eq!(
        w.copies, 600,
        "one copy into an mbuf and one out of it per frame"
    );
    assert_eq!(report.ports[1].stats.rx_packets, 300);
    assert_eq!(report.ports[1].stats.tx_packets, 300);
}

#[test]
fn device_names_are_unique_and_freed_at_close() {
    let a = dpdk(0, "net_null_u0");
    let e = Dpdk::new(
        PortId(1),
        &port_cfg("net_null_u0,size=128"),
        &engine_cfg(),
        Path::new("."),
    )
    .unwrap_err();
    assert!(e.to_string().contains("already exists"), "{e}");
    a.close().unwrap();
    drop(a);
    // Removed at close: the name can be plugged in again.
    let b = dpdk(0, "net_null_u0");
    b.close().unwrap();
}

#[test]
fn unknown_devices_and_bad_queue_counts_are_errors_that_say_why() {
    let e = Dpdk::new(
        PortId(0),
        &port_cfg("net_nosuchdriver0"),
        &engine_cfg(),
        Path::new("."),
    )
    .unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, PortError::Config { .. }), "{msg}");
    assert!(
        msg.contains("net_nosuchdriver0") && msg.contains("probe"),
        "{msg}"
    );
    let e = Dpdk::new(
        PortId(0),
        &port_cfg("net_pcap_q0,rx_pcap=/nonexistent.pcap"),
        &engine_cfg(),
        Path::new("."),
    )
    .unwrap_err();
    assert!(e.to_string().contains("net_pcap_q0"), "{e}");
    // net_ring has at most 16 queue pairs: refused after the device was plugged in, which
    // must then be removed again (the name is free for the next port).
    let mut many = port_cfg("net_ring_q0");
    many.queues = 64;
    let e = Dpdk::new(PortId(0), &many, &engine_cfg(), Path::new(".")).unwrap_err();
    assert!(e.to_string().contains("64 queues asked"), "{e}");
    let again = dpdk(0, "net_ring_q0");
    again.close().unwrap();
}

#[test]
fn oversize_frames_are_dropped_at_the_port() {
    // net_null's frames are `size` bytes: 1900 does not fit a 2048-byte frame after the
    // 256-byte headroom, so every one is received and dropped as `oversize`.
    let p0 = dpdk(0, "net_null_big0,size=1900");
    let report = reflect_alone(p0, Duration::from_millis(50));
    let s = &report.ports[0].stats;
    assert!(s.rx_packets > 0);
    assert_eq!(s.drops.get(DropReason::Oversize), s.rx_packets);
    assert_eq!(s.tx_packets, 0);
}
