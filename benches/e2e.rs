//! End-to-end memory-port loop on one pinned core, next to its baseline in the same run.
//!
//! - `e2e/engine-macswap`: the real engine (generator port -> parse -> macswap handler ->
//!   transmit into a discarding sink), one worker pinned to the last allowed core;
//! - `e2e/engine-udp-echo`: the same with the udp-echo handler;
//! - `e2e/bare-port-loop`: the floor: the same port's rx_burst/tx_burst in a tight loop on
//!   the same core with no parse, no handler, no counters beyond the port's.
//!
//! Each sample runs `PACKETS` packets through; the ratio engine/bare is the engine's cost.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};

use dataplane::config::EngineConfig;
use dataplane::engine::{Engine, WorkerPlan};
use dataplane::handlers::{MacswapSpec, Spec, UdpEchoSpec};
use dataplane::port::memory::{MemoryOptions, Sink, Source};
use dataplane::port::{Memory, Port};
use dataplane::{Batch, CoreId, Pipeline, PortId, QueueId};

const PACKETS: u64 = 2_000_000;

fn worker_core() -> u32 {
    dataplane::topology::allowed_cores()
        .iter()
        .next_back()
        .copied()
        .unwrap_or(0)
}

fn port(limit: Option<u64>) -> Arc<Memory> {
    Memory::new(
        PortId(0),
        MemoryOptions {
            queues: 1,
            frames: 4096,
            frame_size: 2048,
            memory: dataplane::mem::Options::default(),
            source: Source::Generate {
                templates: (0..64)
                    .map(|f| dataplane::wire::build::udp4_request_of_size(64, f, 7))
                    .collect(),
                limit,
            },
            sink: Sink::Discard,
            ring_size: 4096,
        },
    )
    .expect("memory port")
}

fn run_engine(spec: &Spec) -> Duration {
    let p = port(Some(PACKETS));
    let engine = Engine::from_parts(
        &EngineConfig::default(),
        vec![p as Arc<dyn Port>],
        vec![WorkerPlan {
            core: Some(CoreId(worker_core())),
            queues: vec![QueueId::new(0, 0)],
        }],
        vec![Pipeline::new(vec![spec.build()])],
    )
    .expect("engine");
    let start = Instant::now();
    let report = engine.run_to_end(Duration::from_secs(60)).expect("run");
    let took = start.elapsed();
    assert_eq!(report.transmitted(), PACKETS, "every packet forwarded");
    took
}

fn run_bare() -> Duration {
    let p = port(Some(PACKETS));
    let core = worker_core();
    std::thread::spawn(move || {
        core_affinity::set_for_current(core_affinity::CoreId { id: core as usize });
        let mut q = p.open_queue(0, 32).expect("queue");
        let mut batch = Batch::with_capacity(32);
        let start = Instant::now();
        let mut done = 0;
        while done < PACKETS {
            q.rx_burst(&mut batch);
            done += q.tx_burst(&mut batch) as u64;
        }
        start.elapsed()
    })
    .join()
    .expect("bare loop thread")
}

fn e2e(c: &mut Criterion) {
    let mut g = c.benchmark_group("e2e");
    g.throughput(Throughput::Elements(PACKETS));
    g.sampling_mode(SamplingMode::Flat);
    g.sample_size(10);
    g.warm_up_time(Duration::from_secs(1));
    g.measurement_time(Duration::from_secs(4));
    let macswap = Spec::Macswap(MacswapSpec::default());
    let echo = Spec::UdpEcho(UdpEchoSpec::default());
    g.bench_function("engine-macswap", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| run_engine(&macswap)).sum())
    });
    g.bench_function("engine-udp-echo", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| run_engine(&echo)).sum())
    });
    g.bench_function("bare-port-loop", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| run_bare()).sum())
    });
    g.finish();
}

criterion_group!(benches, e2e);
criterion_main!(benches);
