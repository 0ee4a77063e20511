//! Micro benches, each next to its baseline in the same run:
//! - `parse/*`: our validating parse (smoltcp views + our checks) vs etherparse's slicer;
//! - `macswap/*`: the macswap handler over a burst of real frames vs a bare 12-byte swap
//!   over plain buffers (the floor);
//! - `ring/*`: a burst through `ring::Burst` (crossbeam-queue) vs crossbeam-channel.
//!
//! `scripts/bench` turns the medians into the README table.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};

use dataplane::handlers::{MacswapSpec, Spec};
use dataplane::mem::{FramePool, Options, PoolId};
use dataplane::ring::Burst;
use dataplane::{Batch, Context, Frame, Verdict, WorkerId};

const BURST: usize = 32;

fn pin_bench_thread() {
    if let Some(core) = dataplane::topology::allowed_cores().iter().next_back() {
        core_affinity::set_for_current(core_affinity::CoreId { id: *core as usize });
    }
}

fn parse(c: &mut Criterion) {
    pin_bench_thread();
    let udp4 = dataplane::wire::build::udp4_request_of_size(64, 1, 7);
    let mut g = c.benchmark_group("parse");
    g.throughput(Throughput::Elements(1));
    g.bench_function("slipstream", |b| {
        b.iter(|| {
            let l = dataplane::wire::parse(black_box(&udp4)).ok();
            black_box(l.map(|l| dataplane::wire::flow_hash(&udp4, &l)))
        })
    });
    g.bench_function("etherparse", |b| {
        b.iter(|| black_box(etherparse::SlicedPacket::from_ethernet(black_box(&udp4)).is_ok()))
    });
    g.finish();
}

fn frames(pool: &FramePool, n: usize, bytes: &[u8]) -> Vec<Frame> {
    (0..n)
        .map(|_| {
            let mut f = pool.alloc().expect("pool sized for the bench");
            assert!(f.try_fill(bytes));
            f.meta.layout = dataplane::wire::parse(bytes).expect("valid template");
            f
        })
        .collect()
}

fn macswap(c: &mut Criterion) {
    let opts = Options {
        hugepages: true,
        numa_node: None,
    };
    let pool = FramePool::new(PoolId(0), "bench", 256, 2048, opts).unwrap();
    let udp4 = dataplane::wire::build::udp4_request_of_size(64, 1, 7);
    let mut fs = frames(&pool, BURST, &udp4);
    let mut verdicts = vec![Verdict::Next; BURST];
    let mut handler = Spec::Macswap(MacswapSpec::default()).build();
    let cx = Context {
        worker: WorkerId(0),
        workers: 1,
        now_ns: 0,
    };
    let mut g = c.benchmark_group("macswap");
    g.throughput(Throughput::Elements(BURST as u64));
    g.bench_function("slipstream", |b| {
        b.iter(|| {
            verdicts.fill(Verdict::Next);
            handler.process(black_box(&mut fs), &mut verdicts, &cx);
            black_box(&verdicts);
        })
    });
    let mut raw: Vec<[u8; 64]> = (0..BURST).map(|_| udp4[..64].try_into().unwrap()).collect();
    g.bench_function("bare-swap", |b| {
        b.iter(|| {
            for p in raw.iter_mut() {
                let mut dst = [0u8; 6];
                dst.copy_from_slice(&p[0..6]);
                p.copy_within(6..12, 0);
                p[6..12].copy_from_slice(&dst);
            }
            black_box(&raw);
        })
    });
    g.finish();
    for f in fs {
        pool.free(f);
    }
    pool.verify().unwrap();
}

fn ring(c: &mut Criterion) {
    let opts = Options {
        hugepages: true,
        numa_node: None,
    };
    let pool = FramePool::new(PoolId(0), "bench", 256, 2048, opts).unwrap();
    let udp4 = dataplane::wire::build::udp4_request_of_size(64, 1, 7);
    let mut g = c.benchmark_group("ring");
    g.throughput(Throughput::Elements(BURST as u64));

    let ring = Burst::new(1024);
    let mut batch = Batch::with_capacity(BURST);
    for f in frames(&pool, BURST, &udp4) {
        batch.try_push(f).unwrap();
    }
    g.bench_function("slipstream", |b| {
        b.iter(|| {
            ring.push_burst(&mut batch, |_| unreachable!("ring has room"));
            ring.pop_burst(&mut batch);
            black_box(batch.len());
        })
    });
    for f in batch.drain() {
        pool.free(f);
    }

    let (tx, rx) = crossbeam_channel::bounded::<Frame>(1024);
    let mut held: Vec<Frame> = frames(&pool, BURST, &udp4);
    g.bench_function("crossbeam-channel", |b| {
        b.iter(|| {
            for f in held.drain(..) {
                tx.try_send(f).expect("channel has room");
            }
            while let Ok(f) = rx.try_recv() {
                held.push(f);
            }
            black_box(held.len());
        })
    });
    g.finish();
    for f in held {
        pool.free(f);
    }
    pool.verify().unwrap();
}

criterion_group!(benches, parse, macswap, ring);
criterion_main!(benches);
