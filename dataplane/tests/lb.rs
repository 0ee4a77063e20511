//! The `lb` handler as a whole: Maglev properties on random real sets, the scale-out
//! guarantee (independent instances agree), stickiness across a live real removal through
//! the engine, the `lb-*` golden cases decoded independently, and random or malformed
//! frames through the engine (no panic, conservation).
//!
//! The figures the closing note quotes are printed by `maglev_*` (`cargo test --test lb --
//! --nocapture`).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use smoltcp::wire::{Ipv4Packet, Ipv6Packet, UdpPacket};

use dataplane::config::{Config, EngineConfig};
use dataplane::engine::{Engine, WorkerPlan};
use dataplane::handlers::lb::{quic, Change, Flag, LbSpec, Proto, RealSpec, VipKey, VipSpec};
use dataplane::handlers::Spec;
use dataplane::port::memory::{MemoryOptions, Sink, Source};
use dataplane::port::pcap::read_capture;
use dataplane::port::{Memory, Port};
use dataplane::wire::build::{self, Endpoints4, TcpFlags};
use dataplane::wire::MacAddr;
use dataplane::{DropReason, Pipeline, PortId, QueueId};

const RING: usize = 65_537;

/// xorshift64*: deterministic random real sets.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn addr(&mut self) -> IpAddr {
        if matches!(self.next() % 3, 0) {
            IpAddr::V6(Ipv6Addr::from(
                (0x2001_0db8_u128 << 96) | u128::from(self.next()),
            ))
        } else {
            // 198.18.0.0/15.
            IpAddr::V4(Ipv4Addr::from(
                0xc612_0000 | (self.next() as u32 & 0x1_ffff) | 1,
            ))
        }
    }

    fn reals(&mut self, n: usize) -> Vec<IpAddr> {
        let mut v: Vec<IpAddr> = Vec::new();
        while v.len() < n {
            let a = self.addr();
            if !v.contains(&a) {
                v.push(a);
            }
        }
        v
    }
}

fn key(s: &str) -> VipKey {
    s.parse().unwrap()
}

fn spec_with(vips: Vec<VipSpec>) -> LbSpec {
    let mut s = LbSpec::default();
    s.router_mac = MacAddr([2, 0, 0, 0, 0, 0xfe]);
    s.conn_table_size = 4096;
    s.vips = vips;
    s
}

fn vip(addr: &str, port: u16, proto: Proto, reals: &[(IpAddr, u32)]) -> VipSpec {
    VipSpec {
        address: addr.parse().unwrap(),
        port,
        proto,
        flags: vec![],
        reals: reals
            .iter()
            .map(|(a, w)| RealSpec {
                address: *a,
                weight: *w,
                down: false,
            })
            .collect(),
    }
}

/// The ring of the single VIP `[2001:db8::1]:80/tcp` for `reals`.
fn ring_of(reals: &[(IpAddr, u32)]) -> Vec<Option<IpAddr>> {
    let mut s = spec_with(vec![vip("2001:db8::1", 80, Proto::Tcp, reals)]);
    // GUE carries IPv6 to IPv4 reals too, so random sets may mix families.
    s.encap = dataplane::handlers::lb::Encap::Gue;
    s.gue_source_v4 = Some(Ipv4Addr::new(198, 18, 0, 1));
    s.gue_source_v6 = Some("2001:db8::1".parse().unwrap());
    s.validate().unwrap();
    s.control().ring(&key("[2001:db8::1]:80/tcp")).unwrap()
}

fn shares(ring: &[Option<IpAddr>]) -> HashMap<IpAddr, usize> {
    let mut m = HashMap::new();
    for a in ring.iter().flatten() {
        *m.entry(*a).or_insert(0) += 1;
    }
    m
}

/// Every real's share of slots is within 1% (relative) of its weight share, for 100 equal
/// reals, over several random real sets.
#[test]
fn maglev_equal_weights_share_within_1_percent() {
    let mut rng = Rng(0x5eed_1b01);
    let mut worst: f64 = 0.0;
    for _ in 0..5 {
        let reals: Vec<(IpAddr, u32)> = rng.reals(100).into_iter().map(|a| (a, 1)).collect();
        let ring = ring_of(&reals);
        assert!(ring.iter().all(Option::is_some));
        let s = shares(&ring);
        assert_eq!(s.len(), 100);
        let want = RING as f64 / 100.0;
        for n in s.values() {
            let dev = (*n as f64 - want).abs() / want;
            worst = worst.max(dev);
            assert!(dev <= 0.01, "a real holds {n} slots, {want:.1} expected");
        }
    }
    eprintln!(
        "maglev: 100 equal reals x 5 random sets: worst share deviation {:.3}% of the weight share",
        worst * 100.0
    );
}

/// Removing one of N reals: slots that held another real and now hold a different one
/// (the disruption beyond the removed real's own slots), as a fraction of the ring.
#[test]
fn maglev_removal_remaps_about_1_over_n() {
    let mut rng = Rng(0x5eed_1b02);
    for n in [10usize, 50, 100] {
        let mut worst: f64 = 0.0;
        let mut sum = 0.0;
        let trials = 5;
        for _ in 0..trials {
            let reals: Vec<(IpAddr, u32)> = rng.reals(n).into_iter().map(|a| (a, 1)).collect();
            let before = ring_of(&reals);
            let gone = reals[rng.next() as usize % n].0;
            let rest: Vec<(IpAddr, u32)> =
                reals.iter().copied().filter(|(a, _)| *a != gone).collect();
            let after = ring_of(&rest);
            let own = before.iter().filter(|s| **s == Some(gone)).count();
            let moved = before
                .iter()
                .zip(&after)
                .filter(|(b, a)| **b != Some(gone) && b != a)
                .count();
            assert!(after.iter().all(|s| s.is_some() && *s != Some(gone)));
            let frac = moved as f64 / RING as f64;
            worst = worst.max(frac);
            sum += frac;
            // The removed real's own slots are about 1/N; the rest moves at most about 1/N.
            assert!((own as f64 / RING as f64 - 1.0 / n as f64).abs() < 0.01 / n as f64 + 1e-4);
            assert!(
                frac <= 1.0 / n as f64,
                "N={n}: {moved} slots ({:.3}%) moved beyond the removed real's {own}",
                frac * 100.0
            );
        }
        eprintln!(
            "maglev: remove 1 of N={n}: extra remapped slots mean {:.3}%, worst {:.3}% of the ring (1/N = {:.3}%)",
            sum / trials as f64 * 100.0,
            worst * 100.0,
            100.0 / n as f64
        );
    }
}

/// Two instances built independently from the same configuration (reals listed in other
/// orders, VIPs too) have identical rings.
#[test]
fn independent_instances_build_identical_rings() {
    let mut rng = Rng(0x5eed_1b03);
    for _ in 0..4 {
        let n = 2 + rng.next() as usize % 60;
        let reals: Vec<(IpAddr, u32)> = rng
            .reals(n)
            .into_iter()
            .map(|a| (a, 1 + (rng.next() % 4) as u32))
            .collect();
        let mut shuffled = reals.clone();
        for i in (1..shuffled.len()).rev() {
            let j = rng.next() as usize % (i + 1);
            shuffled.swap(i, j);
        }
        let a = spec_with(vec![
            vip("198.18.1.1", 80, Proto::Tcp, &reals),
            vip("198.18.1.2", 0, Proto::Udp, &reals[..n / 2]),
        ]);
        let b = spec_with(vec![
            vip("198.18.1.2", 0, Proto::Udp, &reals[..n / 2]),
            vip("198.18.1.1", 80, Proto::Tcp, &shuffled),
        ]);
        for k in ["198.18.1.1:80/tcp", "198.18.1.2:0/udp"] {
            assert_eq!(a.control().ring(&key(k)), b.control().ring(&key(k)), "{k}");
        }
    }
}

// ---- through the engine ----

fn memory_port() -> Arc<Memory> {
    Memory::new(
        PortId(0),
        MemoryOptions {
            queues: 1,
            frames: 2048,
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
    .unwrap()
}

fn engine(port: &Arc<Memory>, specs: &[Spec]) -> Engine {
    let cfg = EngineConfig {
        burst: 16,
        ..EngineConfig::default()
    };
    Engine::from_parts(
        &cfg,
        vec![port.clone() as Arc<dyn Port>],
        vec![WorkerPlan {
            core: None,
            queues: vec![QueueId::new(0, 0)],
        }],
        vec![Pipeline::new(specs.iter().map(Spec::build).collect())],
    )
    .unwrap()
}

/// Sends `frames` through the running engine and collects exactly `want` outputs.
fn exchange(port: &Arc<Memory>, frames: &[Vec<u8>], want: usize) -> Vec<Vec<u8>> {
    for f in frames {
        while !port.inject(0, f) {
            std::thread::yield_now();
        }
    }
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while out.len() < want {
        port.drain_tx(0, |b| out.push(b.to_vec()));
        assert!(
            Instant::now() < deadline,
            "only {} of {want} outputs",
            out.len()
        );
        std::thread::yield_now();
    }
    out
}

fn outer_dst(frame: &[u8]) -> IpAddr {
    match u16::from_be_bytes([frame[12], frame[13]]) {
        0x0800 => Ipv4Packet::new_checked(&frame[14..])
            .unwrap()
            .dst_addr()
            .into(),
        _ => Ipv6Packet::new_checked(&frame[14..])
            .unwrap()
            .dst_addr()
            .into(),
    }
}

fn tcp(i: u16, flags: TcpFlags) -> Vec<u8> {
    let ep = Endpoints4 {
        src_ip: Ipv4Addr::new(198, 18, 100 + (i / 250) as u8, (i % 250) as u8 + 1),
        dst_ip: Ipv4Addr::new(198, 18, 1, 1),
        src_port: 10_000 + i,
        dst_port: 80,
        ..Endpoints4::default()
    };
    build::tcp4(&ep, flags, 1, 1, b"", None)
}

/// The stickiness the connection table exists for, live: flows established while real R
/// is in the ring keep going to R after R is removed through the control API while the
/// engine runs; new connections (SYN) of the same clients are balanced over the new ring.
#[test]
fn engine_flows_stay_on_a_real_removed_live() {
    let reals: Vec<(IpAddr, u32)> = (1..=8)
        .map(|i| (IpAddr::V4(Ipv4Addr::new(198, 19, 0, i)), 1))
        .collect();
    let s = spec_with(vec![vip("198.18.1.1", 80, Proto::Tcp, &reals)]);
    s.validate().unwrap();
    let control = s.control();
    let port = memory_port();
    let mut e = engine(&port, &[Spec::Lb(s.clone())]);
    e.start().unwrap();
    let n = 400u16;
    let syns: Vec<Vec<u8>> = (0..n).map(|i| tcp(i, TcpFlags::SYN)).collect();
    let acks: Vec<Vec<u8>> = (0..n).map(|i| tcp(i, TcpFlags::ACK)).collect();
    let first: Vec<IpAddr> = exchange(&port, &syns, n.into())
        .iter()
        .map(|f| outer_dst(f))
        .collect();
    let gone = reals[2].0;
    let on_gone = first.iter().filter(|a| **a == gone).count();
    assert!(on_gone > 20, "{on_gone} flows on the real to remove");
    let v = control
        .apply(
            Some(1),
            &[Change::RemoveReal {
                vip: key("198.18.1.1:80/tcp"),
                real: gone,
            }],
        )
        .unwrap();
    assert_eq!(v, 2);
    let later: Vec<IpAddr> = exchange(&port, &acks, n.into())
        .iter()
        .map(|f| outer_dst(f))
        .collect();
    assert_eq!(later, first, "established flows did not move");
    let fresh: Vec<IpAddr> = exchange(&port, &syns, n.into())
        .iter()
        .map(|f| outer_dst(f))
        .collect();
    assert!(
        fresh.iter().all(|a| *a != gone),
        "no new connection goes to the removed real"
    );
    // New connections follow the new ring: the removed real's flows, plus Maglev's small
    // disruption among the others (about 1/N at most).
    let k = key("198.18.1.1:80/tcp");
    for (i, a) in fresh.iter().enumerate() {
        let src = IpAddr::V4(Ipv4Addr::new(
            198,
            18,
            100 + (i / 250) as u8,
            (i % 250) as u8 + 1,
        ));
        assert_eq!(Some(*a), control.pick(&k, src, 10_000 + i as u16, 80));
    }
    let moved = first.iter().zip(&fresh).filter(|(a, b)| a != b).count();
    assert!(
        moved >= on_gone && moved <= on_gone + usize::from(n) / 8,
        "{moved} moved, {on_gone} on the removed real"
    );
    let stats = control.stats();
    assert_eq!(stats.conn_hits, u64::from(n));
    port.close_input();
    let report = e.stop().unwrap();
    report.check_conservation().unwrap();
    assert_eq!(report.transmitted(), 3 * u64::from(n));
}

// ---- goldens ----

fn replay_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/replay")
}

/// What the spec says must happen to one input (a model written from the spec's text, not
/// from the handler's code).
#[derive(Debug)]
enum Expect {
    Pass,
    Drop,
    Echo,
    Encap { vip: VipSpec, flow: Flow },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Flow {
    src: IpAddr,
    dst: IpAddr,
    sport: u16,
    dport: u16,
    proto: u8,
    icmp: bool,
    syn: bool,
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn model(s: &LbSpec, f: &[u8]) -> Expect {
    let et = be16(f, 12);
    let l3 = &f[14..];
    let (src, dst, proto, l4): (IpAddr, IpAddr, u8, &[u8]) = match et {
        0x0800 => {
            if l3[0] & 0xf != 5 || be16(l3, 6) & 0x3fff != 0 {
                return Expect::Drop;
            }
            let ip = Ipv4Packet::new_checked(l3).unwrap();
            (
                ip.src_addr().into(),
                ip.dst_addr().into(),
                l3[9],
                &l3[20..usize::from(ip.total_len())],
            )
        }
        0x86dd => {
            if l3[6] == 44 {
                return Expect::Drop;
            }
            let ip = Ipv6Packet::new_checked(l3).unwrap();
            (
                ip.src_addr().into(),
                ip.dst_addr().into(),
                l3[6],
                &l3[40..40 + usize::from(ip.payload_len())],
            )
        }
        _ => return Expect::Pass,
    };
    let vip_addr = |a: IpAddr| s.vips.iter().any(|v| v.address == a);
    let flow = match proto {
        6 | 17 => Flow {
            src,
            dst,
            sport: be16(l4, 0),
            dport: be16(l4, 2),
            proto,
            icmp: false,
            syn: proto == 6 && l4[13] & 2 != 0,
        },
        1 | 58 => {
            let echo = if proto == 1 { 8 } else { 128 };
            let errs: &[u8] = if proto == 1 { &[3] } else { &[1, 2] };
            if l4[0] == echo {
                return if vip_addr(dst) {
                    Expect::Echo
                } else {
                    Expect::Pass
                };
            }
            if !errs.contains(&l4[0]) {
                return Expect::Pass;
            }
            let q = &l4[8..];
            let (qs, qd, qp, ql4): (IpAddr, IpAddr, u8, &[u8]) = if proto == 1 {
                let ip = Ipv4Packet::new_unchecked(q);
                (ip.src_addr().into(), ip.dst_addr().into(), q[9], &q[20..])
            } else {
                let ip = Ipv6Packet::new_unchecked(q);
                (ip.src_addr().into(), ip.dst_addr().into(), q[6], &q[40..])
            };
            if qp != 6 && qp != 17 {
                return Expect::Pass;
            }
            Flow {
                src: qd,
                dst: qs,
                sport: be16(ql4, 2),
                dport: be16(ql4, 0),
                proto: qp,
                icmp: true,
                syn: false,
            }
        }
        _ => return Expect::Pass,
    };
    let pn = if flow.proto == 6 {
        Proto::Tcp
    } else {
        Proto::Udp
    };
    let find = |port| {
        s.vips
            .iter()
            .find(|v| v.address == flow.dst && v.port == port && v.proto == pn)
    };
    let Some(v) = find(flow.dport).or_else(|| find(0)) else {
        return Expect::Pass;
    };
    if v.flags.contains(&Flag::LocalVip) {
        return Expect::Pass;
    }
    if f.len() > 1514 || v.reals.iter().all(|r| r.weight == 0) {
        return Expect::Drop;
    }
    Expect::Encap {
        vip: v.clone(),
        flow,
    }
}

/// Checks one encapsulated output against the spec's formulas; returns the real.
fn check_encap(s: &LbSpec, input: &[u8], out: &[u8], flow: &Flow, vip: &VipSpec) -> IpAddr {
    assert_eq!(
        out[..6],
        s.router_mac.0,
        "Ethernet destination is the router"
    );
    assert_eq!(
        out[6..12],
        input[..6],
        "Ethernet source is the input's destination"
    );
    let inner_v6 = be16(input, 12) == 0x86dd;
    let inner_len = if inner_v6 {
        40 + usize::from(be16(input, 18))
    } else {
        usize::from(be16(input, 16))
    };
    let inner_tos = if inner_v6 {
        (input[14] << 4) | (input[15] >> 4)
    } else {
        input[15]
    };
    let gue = s.encap == dataplane::handlers::lb::Encap::Gue;
    // The encap source's inputs: the flow's source (zeroed by dport-only) and port (0 with
    // no-src-port).
    let sport = if vip.flags.contains(&Flag::NoSrcPort) {
        0
    } else {
        flow.sport
    };
    let p = sport.to_be_bytes();
    let sb = if vip.flags.contains(&Flag::DportOnly) {
        [0; 4]
    } else {
        match flow.src {
            IpAddr::V4(a) => a.octets(),
            IpAddr::V6(a) => a.octets()[12..].try_into().unwrap(),
        }
    };
    let (real, payload): (IpAddr, &[u8]) = match be16(out, 12) {
        0x0800 => {
            let ip = Ipv4Packet::new_checked(&out[14..]).unwrap();
            assert!(ip.verify_checksum());
            assert_eq!(
                (out[14], out[15], ip.ident(), ip.hop_limit()),
                (0x45, inner_tos, 0, 64)
            );
            assert!(!ip.dont_frag() && !ip.more_frags() && ip.frag_offset() == 0);
            let extra = if gue { 28 } else { 20 };
            assert_eq!(usize::from(ip.total_len()), inner_len + extra);
            let want_src = if gue {
                IpAddr::V4(s.gue_source_v4.unwrap())
            } else {
                IpAddr::V4(Ipv4Addr::new(172, 16, sb[2] ^ p[1], sb[3] ^ p[0]))
            };
            assert_eq!(IpAddr::from(ip.src_addr()), want_src);
            let want_proto = if gue { 17 } else { 4 };
            assert_eq!(out[23], want_proto);
            let body = &out[34..34 + inner_len + extra - 20];
            if gue {
                let u = UdpPacket::new_checked(body).unwrap();
                assert_eq!(u.src_port().to_be_bytes(), [p[1] ^ sb[2], p[0] ^ sb[3]]);
            }
            (ip.dst_addr().into(), body)
        }
        0x86dd => {
            let ip = Ipv6Packet::new_checked(&out[14..]).unwrap();
            assert_eq!(
                (ip.traffic_class(), ip.flow_label(), ip.hop_limit()),
                (inner_tos, 0, 64)
            );
            let extra = if gue { 8 } else { 0 };
            assert_eq!(usize::from(ip.payload_len()), inner_len + extra);
            let want_nh = if gue {
                17
            } else if inner_v6 {
                41
            } else {
                4
            };
            assert_eq!(out[20], want_nh);
            let want_src = if gue {
                IpAddr::V6(s.gue_source_v6.unwrap())
            } else {
                let mut a = [0u8; 16];
                a[0] = 1;
                a[12..].copy_from_slice(&[sb[0] ^ p[0], sb[1] ^ p[1], sb[2], sb[3]]);
                IpAddr::V6(Ipv6Addr::from(a))
            };
            assert_eq!(IpAddr::from(ip.src_addr()), want_src);
            let body = &out[54..54 + inner_len + extra];
            if gue {
                let u = UdpPacket::new_checked(body).unwrap();
                let want = if inner_v6 {
                    [sb[0] ^ p[0], sb[1] ^ p[1]]
                } else {
                    [sb[2] ^ p[0], sb[3] ^ p[1]]
                };
                assert_eq!(u.src_port().to_be_bytes(), want);
            }
            (ip.dst_addr().into(), body)
        }
        e => panic!("output ethertype {e:#x}"),
    };
    let inner = if gue {
        let u = UdpPacket::new_checked(payload).unwrap();
        assert_eq!(
            (u.dst_port(), u.checksum(), usize::from(u.len())),
            (s.gue_port, 0, inner_len + 8)
        );
        &payload[8..]
    } else {
        payload
    };
    assert_eq!(inner, &input[14..14 + inner_len], "inner packet unchanged");
    real
}

/// Every `lb-*` golden output, decoded with smoltcp and compared with what the spec says:
/// which inputs produce an output, the outer header field by field, the inner packet byte
/// for byte, and the real (QUIC server id, then the connection table as the spec's rules
/// model it, then source routes, then the ring).
#[test]
fn lb_goldens_decode_as_specified() {
    let mut checked = 0;
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(replay_root())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("lb-"))
        .collect();
    dirs.sort();
    assert!(dirs.len() >= 9, "lb goldens missing: {dirs:?}");
    for dir in dirs {
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let cfg = Config::load(&dir.join("config.toml")).unwrap();
        let Spec::Lb(s) = &cfg.handlers[0] else {
            panic!("{name}: first handler is not lb")
        };
        let macswap = cfg.handlers.iter().any(|h| h.kind() == "macswap");
        let c = s.control();
        let inputs = read_capture(&dir.join("in-p0.pcap")).unwrap();
        let outputs = read_capture(&dir.join("out-p0.pcap")).unwrap();
        let mut out = outputs.iter();
        let mut table: HashMap<(IpAddr, IpAddr, u16, u16, u8), IpAddr> = HashMap::new();
        for (i, inp) in inputs.iter().enumerate() {
            let f = &inp.data;
            let what = model(s, f);
            let ctx = format!("{name} input {i}: {what:?}");
            match what {
                Expect::Drop => {}
                Expect::Pass => {
                    if macswap {
                        let o = &out.next().expect(&ctx).data;
                        assert_eq!(&o[..6], &f[6..12], "{ctx}");
                        assert_eq!(&o[12..], &f[12..], "{ctx}");
                    }
                }
                Expect::Echo => {
                    let o = &out.next().expect(&ctx).data;
                    assert_eq!((&o[..6], &o[6..12]), (&f[6..12], &f[..6]), "{ctx}");
                    let v6 = be16(f, 12) == 0x86dd;
                    if v6 {
                        assert_eq!((o[21], o[54]), (64, 129), "{ctx}");
                        assert_eq!((&o[22..38], &o[38..54]), (&f[38..54], &f[22..38]), "{ctx}");
                    } else {
                        let ip = Ipv4Packet::new_checked(&o[14..]).unwrap();
                        assert!(ip.verify_checksum(), "{ctx}");
                        assert_eq!((o[22], o[34]), (64, 0), "{ctx}");
                        assert_eq!((&o[26..30], &o[30..34]), (&f[30..34], &f[26..30]), "{ctx}");
                        assert_eq!(dataplane::wire::checksum::of(&o[34..]), 0, "{ctx}");
                    }
                }
                Expect::Encap { vip, flow } => {
                    let o = &out.next().expect(&ctx).data;
                    let real = check_encap(s, f, o, &flow, &vip);
                    let k = VipKey::new(vip.address, vip.port, vip.proto);
                    let mut dport = flow.dport;
                    if vip.port == 0
                        && !vip.flags.contains(&Flag::DportOnly)
                        && !vip.flags.contains(&Flag::SrcDstPort)
                    {
                        dport = 0;
                    }
                    let sport = if vip.flags.contains(&Flag::NoSrcPort) {
                        0
                    } else {
                        flow.sport
                    };
                    let tk = (flow.src, flow.dst, sport, dport, flow.proto);
                    let quic_real =
                        (vip.flags.contains(&Flag::Quic) && flow.proto == 17 && !flow.icmp)
                            .then(|| {
                                let l4 = if be16(f, 12) == 0x86dd { 54 } else { 34 };
                                quic::server_id(&f[l4 + 8..])
                            })
                            .flatten()
                            .and_then(|id| s.quic_servers.iter().find(|q| q.id == id))
                            .map(|q| q.real);
                    let want = quic_real
                        .or_else(|| (!flow.syn).then(|| table.get(&tk).copied()).flatten())
                        .or_else(|| c.pick(&k, flow.src, flow.sport, flow.dport))
                        .unwrap();
                    assert_eq!(real, want, "{ctx}");
                    table.insert(tk, real);
                    assert!(
                        vip.reals.iter().any(|r| r.address == real)
                            || quic_real == Some(real)
                            || table.values().any(|x| *x == real),
                        "{ctx}"
                    );
                    checked += 1;
                }
            }
        }
        assert!(
            out.next().is_none(),
            "{name}: more outputs than the model expects"
        );
    }
    eprintln!("lb goldens: {checked} encapsulated outputs decoded and checked");
    assert!(checked > 150);
}

// ---- random and malformed frames through the engine ----

fn fuzz_spec() -> LbSpec {
    let r = |a: &str| (a.parse::<IpAddr>().unwrap(), 1);
    let mut v = vec![
        vip(
            "198.18.1.1",
            80,
            Proto::Tcp,
            &[r("198.19.0.1"), r("198.19.0.2")],
        ),
        vip("198.18.1.1", 0, Proto::Udp, &[r("2001:db8:ffff::1")]),
        vip(
            "2001:db8::10",
            443,
            Proto::Udp,
            &[r("2001:db8:ffff::2"), r("198.19.0.3")],
        ),
        vip("0.0.0.1", 0, Proto::Tcp, &[r("198.19.0.4")]),
    ];
    v[1].flags = vec![Flag::Quic, Flag::NoSrcPort];
    v[2].flags = vec![Flag::DportOnly, Flag::SrcRouting];
    let mut s = spec_with(v);
    s.encap = dataplane::handlers::lb::Encap::Gue;
    s.gue_source_v4 = Some(Ipv4Addr::new(198, 18, 0, 1));
    s.gue_source_v6 = Some("2001:db8::1".parse().unwrap());
    s.vips[3].address = "198.18.1.3".parse().unwrap();
    s
}

fn valid_frames() -> Vec<Vec<u8>> {
    let e = |src: &str, dst: &str, sp, dp| Endpoints4 {
        src_ip: src.parse().unwrap(),
        dst_ip: dst.parse().unwrap(),
        src_port: sp,
        dst_port: dp,
        ..Endpoints4::default()
    };
    let e6 = dataplane::wire::build::Endpoints6 {
        dst_ip: "2001:db8::10".parse().unwrap(),
        dst_port: 443,
        ..Default::default()
    };
    let answer = build::tcp4(
        &e("198.18.1.1", "198.18.0.2", 80, 1),
        TcpFlags::ACK,
        1,
        1,
        b"x",
        None,
    );
    let mut icmp = build::icmp4_echo_request(
        &e("198.18.0.254", "198.18.1.1", 0, 0),
        0,
        0,
        &answer[14..],
        None,
    );
    icmp[34] = 3;
    vec![
        build::tcp4(
            &e("198.18.0.2", "198.18.1.1", 1, 80),
            TcpFlags::SYN,
            1,
            0,
            b"",
            None,
        ),
        build::udp4(
            &e("198.18.0.2", "198.18.1.1", 1, 443),
            &quic::short_header(&quic::cid_for(1, 5), b"q"),
            None,
        ),
        build::udp6(&e6, b"six", Some(7)),
        build::icmp4_echo_request(&e("198.18.0.2", "198.18.1.1", 0, 0), 1, 1, b"p", None),
        icmp,
        build::tcp4(
            &e("198.18.0.2", "198.18.1.3", 1, 9),
            TcpFlags::ACK,
            1,
            1,
            b"",
            None,
        ),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Random bytes, and valid balancer traffic with random bytes changed and cut, through
    /// the engine: nothing panics, every packet is accounted for, every frame returns.
    #[test]
    fn random_and_malformed_frames_conserve(
        garbage in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..200), 0..24),
        mutations in prop::collection::vec(
            (0usize..6, prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6), any::<prop::sample::Index>()),
            0..40,
        ),
    ) {
        let s = fuzz_spec();
        s.validate().unwrap();
        let port = memory_port();
        let base = valid_frames();
        let mut n = 0u64;
        for g in &garbage {
            prop_assert!(port.inject(0, g));
            n += 1;
        }
        for (pick, flips, cut) in &mutations {
            let mut f = base[*pick].clone();
            for (at, v) in flips {
                let i = at.index(f.len());
                f[i] = *v;
            }
            f.truncate(cut.index(f.len() + 1).max(f.len() / 2));
            prop_assert!(port.inject(0, &f));
            n += 1;
        }
        port.close_input();
        let e = engine(&port, &[Spec::Lb(s), Spec::Macswap(Default::default())]);
        let report = e.run_to_end(Duration::from_secs(20)).unwrap();
        report.check_conservation().unwrap();
        prop_assert_eq!(report.received(), n);
        prop_assert_eq!(report.transmitted() + report.drops().total() + report.slow_path(), n);
        let _ = port.discard_pending();
        prop_assert!(report.drops().get(DropReason::Unhandled) == 0);
    }
}
