//! End-to-end memory-port loop on one pinned core, next to its baseline in the same run.
//!
//! - `e2e/engine-macswap`: the real engine (generator port -> parse -> macswap handler ->
//!   transmit into a discarding sink), one worker pinned to the last allowed core;
//! - `e2e/engine-udp-echo`: the same with the udp-echo handler;
//! - `e2e/bare-port-loop`: the floor: the same port's rx_burst/tx_burst in a tight loop on
//!   the same core with no parse, no handler, no counters beyond the port's.
//!
//! Each sample runs `PACKETS` packets through; the ratio engine/bare is the engine's cost.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};

use dataplane::handlers::{MacswapSpec, Spec, UdpEchoSpec};
use dataplane::port::Port;
use dataplane::Batch;

mod common;

const PACKETS: u64 = 2_000_000;

/// 64-byte UDP requests over 64 flows.
fn templates() -> Vec<Vec<u8>> {
    (0..64)
        .map(|f| dataplane::wire::build::udp4_request_of_size(64, f, 7))
        .collect()
}

fn run_engine(spec: &Spec) -> Duration {
    common::run_engine(&templates(), spec.build(), PACKETS)
}

fn run_bare() -> Duration {
    let p = common::memory_port(&templates(), Some(PACKETS));
    let core = dataplane::topology::default_worker_core();
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
