//! The slipstream side of `scripts/bench-dpdk`: forwarding between two `net_null` devices on
//! one pinned worker, measured over a fixed window, printed as one JSON line. The script runs
//! it (one process per run, so one EAL per run, like `dpdk-testpmd`) interleaved with testpmd
//! on the same devices and core.
//!
//! Modes, after testpmd's `--forward-mode`:
//! - `io`: frames leave untouched. The handler only picks the output queue.
//! - `macswap`: the real `macswap` handler (source and destination MAC swapped).
//!
//! Streams: by default each port's frames leave through the port they arrived on
//! (`SS_DPDK_BENCH_STREAMS=reflect`). testpmd forwards p0 -> p1 and p1 -> p0; with `net_null`
//! both are the same work per frame (an RX burst from one null device, a TX burst into one).
//! `cross` sends p0 -> p1 and p1 -> p0: both ports' pools front the one mempool, so frames
//! change pools without a copy (`copies` stays 0).
//!
//! Every frame runs through the whole engine, the same path as `slipstream run`: RX burst,
//! the handler chain, verdicts, TX burst. Neither chain needs the receive-side parse (the
//! `io` handler reads no header, `macswap` checks the length itself:
//! `Handler::needs_layout`), so the worker skips it, as testpmd does; a chain with any
//! handler that reads headers (arp, icmp, udp-echo, lb, kv) parses every frame. With `SS_DPDK_BENCH_ENGINE=bare` the engine is left out: one pinned thread calls
//! the port's `rx_burst` and `tx_burst` (through the `Queue` trait, mbufs turned into frames
//! and back) and, in `macswap` mode, swaps the addresses itself; this isolates the port's own
//! cost. `#[ignore]`d: it only runs when the script asks for it.
#![cfg(feature = "dpdk")]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dataplane::batch::Batch;
use dataplane::config::{DpdkConfig, DpdkPortConfig, EngineConfig, Idle};
use dataplane::engine::{Engine, WorkerPlan};
use dataplane::handlers::Macswap;
use dataplane::mem::Cache;
use dataplane::port::dpdk::Dpdk;
use dataplane::port::Port;
use dataplane::{Context, CoreId, Frame, Handler, Pipeline, PortId, QueueId, Verdict};

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Chooses the output queue of every undecided frame; leaves the bytes alone.
struct Out {
    cross: bool,
}

impl Handler for Out {
    fn name(&self) -> &str {
        "io"
    }
    /// Reads no header, like testpmd's `io` mode: the worker may skip its parse.
    fn needs_layout(&self) -> bool {
        false
    }
    fn process(&mut self, frames: &mut [Frame], verdicts: &mut [Verdict], _cx: &Context) {
        for (f, v) in frames.iter().zip(verdicts.iter_mut()) {
            match *v {
                Verdict::Next if !self.cross => *v = Verdict::reply(f),
                // Cross: also redirects what an earlier handler (macswap) sent back.
                Verdict::Next | Verdict::Tx(_) if self.cross => {
                    *v = Verdict::Tx(QueueId::new(1 - f.meta.rx.port.0, 0));
                }
                _ => {}
            }
        }
    }
}

#[test]
#[ignore = "benchmark driver for scripts/bench-dpdk"]
fn bench() {
    let mode = std::env::var("SS_DPDK_BENCH_MODE").unwrap_or_else(|_| "io".into());
    let cross = std::env::var("SS_DPDK_BENCH_STREAMS").as_deref() == Ok("cross");
    let core: u32 = env("SS_DPDK_BENCH_CORE", 1);
    let main_core: u32 = env("SS_DPDK_BENCH_MAIN_CORE", 0);
    let seconds: f64 = env("SS_DPDK_BENCH_SECONDS", 3.0);
    let warmup: f64 = env("SS_DPDK_BENCH_WARMUP", 1.0);
    let mbufs: u32 = env("SS_DPDK_BENCH_MBUFS", 16383);
    let burst: usize = env("SS_DPDK_BENCH_BURST", 32);
    let size: u32 = env("SS_DPDK_BENCH_SIZE", 64);
    let hugepages = std::env::var("SS_DPDK_BENCH_NO_HUGE").is_err();
    let tag = std::process::id();

    let cfg = EngineConfig {
        burst,
        idle: Idle::BusyPoll,
        hugepages,
        stats_interval_ms: 0,
        dpdk: DpdkConfig {
            file_prefix: Some(format!("ssbench{tag}")),
            main_core: Some(main_core),
            mbufs,
            log_level: "warning".into(),
            ..DpdkConfig::default()
        },
        ..EngineConfig::default()
    };
    let port = |i: u16| -> Arc<dyn Port> {
        let pc = DpdkPortConfig {
            device: format!("net_null{i},size={size}"),
            queues: 1,
            rx_desc: 1024,
            tx_desc: 1024,
            socket: None,
            promiscuous: false,
        };
        Dpdk::new(PortId(i), &pc, &cfg, Path::new(".")).unwrap_or_else(|e| panic!("{e}"))
    };
    let ports = vec![port(0), port(1)];
    if std::env::var("SS_DPDK_BENCH_ENGINE").as_deref() == Ok("bare") {
        return bare(&mode, cross, ports, core, burst, warmup, seconds);
    }
    let chain: Pipeline = match mode.as_str() {
        "io" => Pipeline::new(vec![Box::new(Out { cross })]),
        "macswap" if cross => Pipeline::new(vec![Box::new(Macswap), Box::new(Out { cross })]),
        "macswap" => Pipeline::new(vec![Box::new(Macswap)]),
        m => panic!("SS_DPDK_BENCH_MODE={m}: use io or macswap"),
    };
    let mut engine = Engine::from_parts(
        &cfg,
        ports,
        vec![WorkerPlan {
            core: Some(CoreId(core)),
            queues: vec![QueueId::new(0, 0), QueueId::new(1, 0)],
        }],
        vec![chain],
    )
    .unwrap();
    engine.start().unwrap();
    std::thread::sleep(Duration::from_secs_f64(warmup));
    let a = engine.snapshot();
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(seconds));
    let b = engine.snapshot();
    let dt = t0.elapsed().as_secs_f64();
    let report = engine.stop().unwrap();
    report.check_conservation().unwrap();
    let rx = |r: &dataplane::engine::Report, i: usize| r.ports[i].stats.rx_packets;
    let tx = |r: &dataplane::engine::Report, i: usize| r.ports[i].stats.tx_packets;
    let rx_mpps: Vec<f64> = (0..2)
        .map(|i| (rx(&b, i) - rx(&a, i)) as f64 / dt / 1e6)
        .collect();
    let tx_mpps: Vec<f64> = (0..2)
        .map(|i| (tx(&b, i) - tx(&a, i)) as f64 / dt / 1e6)
        .collect();
    let w = report.worker_totals();
    println!(
        "{{\"tool\":\"slipstream\",\"mode\":\"{mode}\",\"streams\":\"{}\",\"seconds\":{dt:.3},\
         \"rx_mpps\":[{:.3},{:.3}],\"tx_mpps\":[{:.3},{:.3}],\"total_mpps\":{:.3},\
         \"copies\":{},\"drops\":{}}}",
        if cross { "cross" } else { "reflect" },
        rx_mpps[0],
        rx_mpps[1],
        tx_mpps[0],
        tx_mpps[1],
        rx_mpps.iter().sum::<f64>(),
        w.copies,
        report.drops().total()
    );
}

/// The port alone: RX burst, optional MAC swap, TX burst, on one pinned thread.
fn bare(
    mode: &str,
    cross: bool,
    ports: Vec<Arc<dyn Port>>,
    core: u32,
    burst: usize,
    warmup: f64,
    seconds: f64,
) {
    let swap = match mode {
        "io" => false,
        "macswap" => true,
        m => panic!("SS_DPDK_BENCH_MODE={m}: use io or macswap"),
    };
    let (rx, dt) = {
        let ports = ports.clone();
        std::thread::spawn(move || {
            assert!(core_affinity::set_for_current(core_affinity::CoreId {
                id: core as usize
            }));
            let mut queues: Vec<_> = ports
                .iter()
                .map(|p| p.open_queue(0, burst).unwrap())
                .collect();
            let mut caches: Vec<Cache> = ports
                .iter()
                .map(|p| Cache::new(p.pool().clone(), burst))
                .collect();
            let mut batch = Batch::with_capacity(burst);
            let warm_until = Instant::now() + Duration::from_secs_f64(warmup);
            let mut start = None;
            let mut counted = 0u64;
            let mut turns = 0u32;
            loop {
                for i in 0..2 {
                    let n = queues[i].rx_burst(&mut batch);
                    if start.is_some() {
                        counted += n as u64;
                    }
                    if swap {
                        for f in batch.as_mut_slice() {
                            let d = f.data_mut();
                            if d.len() >= 12 {
                                let (a, b) = d.split_at_mut(6);
                                a.swap_with_slice(&mut b[..6]);
                            }
                        }
                    }
                    let out = if cross { 1 - i } else { i };
                    queues[out].tx_burst(&mut batch);
                    for f in batch.drain() {
                        caches[i].free(f);
                    }
                }
                // Read the clock every 1024 turns only: it costs as much as a burst.
                turns = turns.wrapping_add(1);
                if turns & 1023 != 0 {
                    continue;
                }
                match start {
                    None if Instant::now() >= warm_until => start = Some(Instant::now()),
                    Some(t) if t.elapsed().as_secs_f64() >= seconds => {
                        break (counted, t.elapsed().as_secs_f64());
                    }
                    _ => {}
                }
            }
        })
        .join()
        .unwrap()
    };
    for p in &ports {
        p.close().unwrap();
    }
    let mpps = rx as f64 / dt / 1e6;
    println!(
        "{{\"tool\":\"slipstream-bare\",\"mode\":\"{mode}\",\"streams\":\"{}\",\"seconds\":{dt:.3},\
         \"rx_mpps\":[{:.3},{:.3}],\"total_mpps\":{mpps:.3}}}",
        if cross { "cross" } else { "reflect" },
        mpps / 2.0,
        mpps / 2.0
    );
}
