//! The kv handler in the real engine on one pinned core, next to its baseline in the same
//! run: memcached UDP requests from a memory port, answers transmitted into a discarding
//! sink. This is the user-space share of a kv request (parse, key ownership, index and log,
//! answer datagram with checksums) without the kernel's AF_XDP copy-mode costs that
//! `scripts/bench-kv` includes.
//!
//! - `kv/get90-<N>B`: a 90/10 get/set mix over 4096 keys of 32 bytes with N-byte values
//!   (every get after the first pass is a hit: the store holds them all);
//! - `kv/udp-echo-<N>B`: the baseline: the same frames through the same engine and port,
//!   answered by udp-echo (addresses swapped, bytes untouched).
//!
//! Each sample runs `PACKETS` requests; every request gets exactly one answer (asserted).

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};

use dataplane::handlers::{Spec, UdpEchoSpec};
use dataplane::wire::build::{self, Endpoints4};

mod common;

use common::run_engine;

const PACKETS: u64 = 1_000_000;
const KEYS: usize = 4096;

/// Request frames, one per key and ten per cycle: every tenth a set, the others gets.
fn requests(value: usize) -> Vec<Vec<u8>> {
    let key = |k: usize| format!("key:{k:028}");
    let body = vec![b'v'; value];
    (0..KEYS * 10)
        .map(|t| {
            let mut d = vec![(t >> 8) as u8, t as u8, 0, 0, 0, 1, 0, 0];
            if t % 10 == 0 {
                let k = key((t / 10) % KEYS);
                d.extend_from_slice(format!("set {k} 0 0 {value}\r\n").as_bytes());
                d.extend_from_slice(&body);
                d.extend_from_slice(b"\r\n");
            } else {
                d.extend_from_slice(format!("get {}\r\n", key(t % KEYS)).as_bytes());
            }
            let ep = Endpoints4 {
                src_ip: [198, 18, 0, 2].into(),
                dst_ip: [198, 18, 0, 1].into(),
                src_port: 10_000 + (t % 64) as u16,
                dst_port: 11211,
                ..Endpoints4::default()
            };
            build::udp4(&ep, &d, None)
        })
        .collect()
}

fn kv_spec() -> Spec {
    kv::register();
    #[derive(serde::Deserialize)]
    struct Chain {
        handlers: Vec<Spec>,
    }
    let text = "[[handlers]]\nkind = \"kv\"\nhugepages = false\nname = \"bench\"\nmemory_mb = 64\n";
    toml::from_str::<Chain>(text)
        .expect("kv table")
        .handlers
        .remove(0)
}

fn kv(c: &mut Criterion) {
    let mut g = c.benchmark_group("kv");
    g.throughput(Throughput::Elements(PACKETS));
    g.sampling_mode(SamplingMode::Flat);
    g.sample_size(10);
    g.warm_up_time(Duration::from_secs(1));
    g.measurement_time(Duration::from_secs(4));
    let kv = kv_spec();
    let echo = Spec::UdpEcho(UdpEchoSpec { port: 11211 });
    for value in [100, 1000] {
        let t = requests(value);
        g.bench_function(format!("get90-{value}B"), |b| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| run_engine(&t, kv.build(), PACKETS))
                    .sum()
            })
        });
        g.bench_function(format!("udp-echo-{value}B"), |b| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| run_engine(&t, echo.build(), PACKETS))
                    .sum()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, kv);
criterion_main!(benches);
