//! Unit tests of the `lb` handler: the spec's check values end to end, every path of the
//! per-packet algorithm, and the control handle (versioned, all-or-nothing changes picked up
//! by running handlers). Outputs are decoded with smoltcp's views, independently of the
//! encapsulation code.

// Tests pass one-packet bursts as `&[frame.clone()]` on purpose (the frame is reused).
#![allow(clippy::cloned_ref_to_slice_refs)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use smoltcp::wire::{Ipv4Packet, Ipv6Packet, UdpPacket};

use super::*;
use crate::handlers::testutil::{reply, RX};
use crate::mem::{FramePool, Options, PoolId};
use crate::pipeline::{Context, DropReason, Verdict};
use crate::wire::build::{self, Endpoints4, Endpoints6, TcpFlags};
use crate::wire::{self, MacAddr};

const ROUTER: MacAddr = MacAddr([2, 0, 0, 0, 0, 0xfe]);

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn vip(s: &str) -> VipKey {
    s.parse().unwrap()
}

fn real(a: &str, weight: u32) -> RealSpec {
    RealSpec {
        address: ip(a),
        weight,
        down: false,
    }
}

fn vip_spec(addr: &str, port: u16, proto: Proto, flags: &[Flag], reals: &[&str]) -> VipSpec {
    VipSpec {
        address: ip(addr),
        port,
        proto,
        flags: flags.to_vec(),
        reals: reals.iter().map(|r| real(r, 1)).collect(),
    }
}

fn spec(vips: Vec<VipSpec>) -> LbSpec {
    LbSpec {
        router_mac: ROUTER,
        conn_table_size: 1024,
        vips,
        ..LbSpec::default()
    }
}

/// Runs `h` over `inputs` at engine time `now_ns`; returns (bytes, verdict) per input.
fn run_at(h: &mut Lb, inputs: &[Vec<u8>], now_ns: u64) -> Vec<(Vec<u8>, Verdict)> {
    let pool = FramePool::new(
        PoolId(9),
        "lb-test",
        inputs.len().max(1) as u32,
        2048,
        Options {
            hugepages: false,
            numa_node: None,
        },
    )
    .unwrap();
    let mut frames = Vec::new();
    for b in inputs {
        let mut f = pool.alloc().unwrap();
        assert!(f.try_fill(b));
        f.meta.rx = RX;
        f.meta.layout = wire::parse(b).unwrap_or_default();
        frames.push(f);
    }
    let mut verdicts = vec![Verdict::Next; inputs.len()];
    let cx = Context {
        worker: crate::packet::WorkerId(0),
        workers: 1,
        now_ns,
    };
    h.process(&mut frames, &mut verdicts, &cx);
    let out = frames
        .iter()
        .map(|f| f.data().to_vec())
        .zip(verdicts)
        .collect();
    for f in frames {
        pool.free(f);
    }
    pool.verify().unwrap();
    out
}

fn run(h: &mut Lb, inputs: &[Vec<u8>]) -> Vec<(Vec<u8>, Verdict)> {
    run_at(h, inputs, 0)
}

/// An encapsulated packet, decoded with smoltcp.
#[derive(Debug)]
struct Decoded {
    eth_dst: [u8; 6],
    eth_src: [u8; 6],
    outer_src: IpAddr,
    outer_dst: IpAddr,
    /// 4, 41 or 17.
    proto: u8,
    tos: u8,
    /// GUE: (source port, destination port).
    udp: Option<(u16, u16)>,
    inner: Vec<u8>,
}

fn decode(out: &[u8]) -> Decoded {
    let et = u16::from_be_bytes([out[12], out[13]]);
    let l3 = &out[14..];
    let (outer_src, outer_dst, proto, tos, payload): (IpAddr, IpAddr, u8, u8, &[u8]) = match et {
        0x0800 => {
            let p = Ipv4Packet::new_checked(l3).expect("outer IPv4");
            assert!(p.verify_checksum(), "outer IPv4 checksum");
            assert_eq!(p.header_len(), 20);
            assert_eq!(p.hop_limit(), 64);
            assert_eq!(p.ident(), 0);
            assert!(!p.dont_frag() && !p.more_frags() && p.frag_offset() == 0);
            let len = usize::from(p.total_len());
            (
                p.src_addr().into(),
                p.dst_addr().into(),
                u8::from(p.next_header()),
                l3[1],
                &l3[20..len],
            )
        }
        0x86dd => {
            let p = Ipv6Packet::new_checked(l3).expect("outer IPv6");
            assert_eq!(p.hop_limit(), 64);
            assert_eq!(p.flow_label(), 0);
            let len = 40 + usize::from(p.payload_len());
            (
                p.src_addr().into(),
                p.dst_addr().into(),
                u8::from(p.next_header()),
                p.traffic_class(),
                &l3[40..len],
            )
        }
        e => panic!("ethertype {e:#x} is not IP"),
    };
    let (udp, inner) = if proto == 17 {
        let u = UdpPacket::new_checked(payload).expect("GUE UDP");
        assert_eq!(usize::from(u.len()), payload.len());
        assert_eq!(u.checksum(), 0);
        (Some((u.src_port(), u.dst_port())), payload[8..].to_vec())
    } else {
        (None, payload.to_vec())
    };
    Decoded {
        eth_dst: out[..6].try_into().unwrap(),
        eth_src: out[6..12].try_into().unwrap(),
        outer_src,
        outer_dst,
        proto,
        tos,
        udp,
        inner,
    }
}

/// The input's IP packet (without Ethernet header and padding).
fn ip_packet(frame: &[u8]) -> Vec<u8> {
    let l = wire::parse(frame).unwrap();
    frame[usize::from(l.l3_off)..l.l4_end()].to_vec()
}

fn tcp4(src: &str, sport: u16, dst: &str, dport: u16, flags: TcpFlags) -> Vec<u8> {
    let ep = Endpoints4 {
        src_ip: src.parse().unwrap(),
        dst_ip: dst.parse().unwrap(),
        src_port: sport,
        dst_port: dport,
        ..Endpoints4::default()
    };
    build::tcp4(&ep, flags, 1, 1, b"data", None)
}

fn udp4(src: &str, sport: u16, dst: &str, dport: u16, payload: &[u8]) -> Vec<u8> {
    let ep = Endpoints4 {
        src_ip: src.parse().unwrap(),
        dst_ip: dst.parse().unwrap(),
        src_port: sport,
        dst_port: dport,
        ..Endpoints4::default()
    };
    build::udp4(&ep, payload, None)
}

fn udp6(src: &str, sport: u16, dst: &str, dport: u16, payload: &[u8]) -> Vec<u8> {
    let ep = Endpoints6 {
        src_ip: src.parse().unwrap(),
        dst_ip: dst.parse().unwrap(),
        src_port: sport,
        dst_port: dport,
        ..Endpoints6::default()
    };
    build::udp6(&ep, payload, None)
}

fn reals8() -> Vec<String> {
    (1..=8).map(|i| format!("10.1.0.{i}")).collect()
}

fn handler(s: &LbSpec) -> Lb {
    s.validate().unwrap();
    Lb::new(&s.control())
}

/// The spec's packet check end to end: 192.168.1.1:31337 -> 10.200.1.1:80 lands on ring
/// slot 48717, and the IP-in-IP source is 172.16.104.123.
#[test]
fn spec_check_values_end_to_end() {
    let reals = reals8();
    let r: Vec<&str> = reals.iter().map(String::as_str).collect();
    let s = spec(vec![vip_spec("10.200.1.1", 80, Proto::Tcp, &[], &r)]);
    let mut h = handler(&s);
    let ring = s.control().ring(&vip("10.200.1.1:80/tcp")).unwrap();
    let input = tcp4("192.168.1.1", 31337, "10.200.1.1", 80, TcpFlags::ACK);
    let out = run(&mut h, &[input.clone()]);
    assert_eq!(out[0].1, reply());
    let d = decode(&out[0].0);
    assert_eq!(Some(d.outer_dst), ring[48717]);
    assert_eq!(d.outer_src, ip("172.16.104.123"));
    assert_eq!(d.proto, 4);
    assert_eq!(d.eth_dst, ROUTER.0);
    assert_eq!(d.eth_src, input[..6]);
    assert_eq!(d.inner, ip_packet(&input));
    assert_eq!(d.tos, 0);
    assert_eq!(
        s.control()
            .pick(&vip("10.200.1.1:80/tcp"), ip("192.168.1.1"), 31337, 80),
        ring[48717]
    );
}

#[test]
fn non_vip_non_ip_and_other_protocols_pass() {
    let s = spec(vec![vip_spec(
        "198.18.1.1",
        80,
        Proto::Tcp,
        &[],
        &["10.1.0.1"],
    )]);
    let mut h = handler(&s);
    let e4 = Endpoints4::default();
    let mut gre = udp4("198.18.0.2", 1, "198.18.1.1", 80, b"x");
    gre[14 + 9] = 47;
    crate::wire::tests::set_ipv4(&mut gre, |_| {});
    let fix = |mut f: Vec<u8>| {
        f[24] = 0;
        f[25] = 0;
        let c = crate::wire::checksum::of(&f[14..34]);
        f[24..26].copy_from_slice(&c.to_be_bytes());
        f
    };
    let inputs = vec![
        tcp4("198.18.0.2", 1000, "198.18.1.2", 80, TcpFlags::ACK), // other address
        tcp4("198.18.0.2", 1000, "198.18.1.1", 81, TcpFlags::ACK), // other port
        udp4("198.18.0.2", 1000, "198.18.1.1", 80, b"x"),          // other protocol
        build::arp_request(e4.src_mac, e4.src_ip, e4.dst_ip, None),
        fix(gre),
        udp6("2001:db8::2", 1, "2001:db8::1", 80, b""),
        build::icmp4_echo_request(&e4, 1, 1, b"not a vip", None),
    ];
    for (i, (o, input)) in run(&mut h, &inputs).into_iter().zip(&inputs).enumerate() {
        assert_eq!(o, (input.clone(), Verdict::Next), "input {i}");
    }
    assert_eq!(s.control().stats().passed, inputs.len() as u64);
}

#[test]
fn options_and_fragments_are_dropped() {
    let s = spec(vec![vip_spec(
        "198.18.1.1",
        80,
        Proto::Udp,
        &[],
        &["10.1.0.1"],
    )]);
    let mut h = handler(&s);
    let good = udp4("198.18.0.2", 1000, "198.18.1.1", 80, b"payload!");
    let mut mf = good.clone();
    crate::wire::tests::set_ipv4(&mut mf, |ip| ip.set_more_frags(true));
    let mut off = good.clone();
    crate::wire::tests::set_ipv4(&mut off, |ip| ip.set_frag_offset(8));
    // IHL 6: a 4-byte option (NOP x4) inserted after the header.
    let mut opts = good[..34].to_vec();
    opts.extend_from_slice(&[1, 1, 1, 1]);
    opts.extend_from_slice(&good[34..]);
    crate::wire::tests::set_ipv4(&mut opts, |ip| {
        ip.set_header_len(24);
        ip.set_total_len(ip.total_len() + 4);
    });
    // IPv6 with a fragment header (next header 44).
    let mut frag6 = udp6("2001:db8::2", 1, "2001:db8::1", 80, b"12345678");
    frag6[20] = 44;
    let out = run(&mut h, &[mf, off, opts, frag6, good]);
    let v: Vec<Verdict> = out.iter().map(|o| o.1).collect();
    assert_eq!(
        v,
        [
            Verdict::Drop(DropReason::LbFragment),
            Verdict::Drop(DropReason::LbFragment),
            Verdict::Drop(DropReason::LbIpOptions),
            Verdict::Drop(DropReason::LbFragment),
            reply()
        ]
    );
}

#[test]
fn too_big_local_vip_and_no_real() {
    let s = spec(vec![
        vip_spec("198.18.1.1", 80, Proto::Udp, &[], &["10.1.0.1"]),
        vip_spec(
            "198.18.1.2",
            80,
            Proto::Udp,
            &[Flag::LocalVip],
            &["10.1.0.1"],
        ),
        vip_spec("198.18.1.3", 80, Proto::Udp, &[], &[]),
    ]);
    let mut h = handler(&s);
    let max = udp4("198.18.0.2", 1, "198.18.1.1", 80, &[0; 1472]);
    assert_eq!(max.len(), 1514);
    let big = udp4("198.18.0.2", 1, "198.18.1.1", 80, &[0; 1473]);
    let local = udp4("198.18.0.2", 1, "198.18.1.2", 80, b"x");
    let empty = udp4("198.18.0.2", 1, "198.18.1.3", 80, b"x");
    let out = run(&mut h, &[max, big, local.clone(), empty]);
    assert_eq!(out[0].1, reply());
    assert_eq!(out[1].1, Verdict::Drop(DropReason::LbTooBig));
    assert_eq!(out[2], (local, Verdict::Next));
    assert_eq!(out[3].1, Verdict::Drop(DropReason::LbNoReal));
}

/// A port-0 VIP catches every port, and hashes with dport 0 (so all ports of a client go
/// to one real); with `src-dst-port` it keeps the port.
#[test]
fn any_port_vip_and_port_rewrites() {
    let reals = reals8();
    let r: Vec<&str> = reals.iter().map(String::as_str).collect();
    let s = spec(vec![
        vip_spec("198.18.1.1", 0, Proto::Udp, &[], &r),
        vip_spec("198.18.1.2", 0, Proto::Udp, &[Flag::SrcDstPort], &r),
        vip_spec("198.18.1.3", 53, Proto::Udp, &[Flag::NoSrcPort], &r),
        vip_spec(
            "198.18.1.4",
            53,
            Proto::Udp,
            &[Flag::DportOnly, Flag::LruBypass],
            &r,
        ),
    ]);
    let c = s.control();
    let mut h = handler(&s);
    for sport in [1000u16, 2000, 3000, 4000] {
        for dport in [53u16, 80, 443] {
            let cases = [
                ("198.18.1.1", "198.18.1.1:0/udp", dport, 0u16, sport),
                ("198.18.1.2", "198.18.1.2:0/udp", dport, dport, sport),
                ("198.18.1.3", "198.18.1.3:53/udp", 53, 53, 0),
                ("198.18.1.4", "198.18.1.4:53/udp", 53, 53, sport),
            ];
            for (dst, key, dp, hashed_dport, _) in cases {
                let input = udp4("198.18.7.9", sport, dst, dp, b"q");
                let out = run(&mut h, &[input]);
                let d = decode(&out[0].0);
                let want = c.pick(&vip(key), ip("198.18.7.9"), sport, dp);
                assert_eq!(Some(d.outer_dst), want, "{key} {sport}->{dp}");
                let _ = hashed_dport;
            }
        }
    }
    // no-src-port: every source port of a client lands on one real.
    let picks: std::collections::HashSet<_> = (1000..1100)
        .map(|p| c.pick(&vip("198.18.1.3:53/udp"), ip("198.18.7.9"), p, 53))
        .collect();
    assert_eq!(picks.len(), 1);
    // dport-only: every client lands on one real per port, and the IP-in-IP source comes
    // from a zeroed address and the original source port.
    let picks: std::collections::HashSet<_> = (0..50)
        .map(|i| {
            c.pick(
                &vip("198.18.1.4:53/udp"),
                ip(&format!("198.18.9.{i}")),
                1000 + i,
                53,
            )
        })
        .collect();
    assert_eq!(picks.len(), 1);
    let out = run(
        &mut h,
        &[udp4("198.18.9.9", 0x1234, "198.18.1.4", 53, b"q")],
    );
    assert_eq!(decode(&out[0].0).outer_src, ip("172.16.52.18")); // 0^0x34, 0^0x12
}

#[test]
fn ipv6_vip_ipv6_outer_and_v4_inner_in_v6() {
    let s = spec(vec![
        vip_spec(
            "2001:db8::10",
            443,
            Proto::Tcp,
            &[],
            &["fc00::1", "fc00::2", "fc00::3"],
        ),
        vip_spec("198.18.1.1", 443, Proto::Tcp, &[], &["fc00::1", "fc00::2"]),
    ]);
    let c = s.control();
    let mut h = handler(&s);
    let ep = Endpoints6 {
        src_ip: "2001:db8:1::abcd:1234".parse().unwrap(),
        dst_ip: "2001:db8::10".parse().unwrap(),
        src_port: 0x7a69,
        dst_port: 443,
        ..Endpoints6::default()
    };
    let mut v6 = build::tcp6(&ep, TcpFlags::ACK, 1, 1, b"hello", None);
    v6[14] = 0x6b; // traffic class 0xb0
    v6[15] = 0x00;
    let v4 = tcp4("198.18.0.2", 0x7a69, "198.18.1.1", 443, TcpFlags::ACK);
    let out = run(&mut h, &[v6.clone(), v4.clone()]);
    let d = decode(&out[0].0);
    assert_eq!(d.proto, 41);
    assert_eq!(d.tos, 0xb0);
    assert_eq!(
        Some(d.outer_dst),
        c.pick(
            &vip("[2001:db8::10]:443/tcp"),
            ep.src_ip.into(),
            0x7a69,
            443
        )
    );
    // 0100:: with s0^p0, s1^p1, s2, s3 from the client's last four bytes ab cd 12 34.
    let want: Ipv6Addr = Ipv6Addr::from([
        1,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0xab ^ 0x7a,
        0xcd ^ 0x69,
        0x12,
        0x34,
    ]);
    assert_eq!(d.outer_src, IpAddr::V6(want));
    assert_eq!(d.inner, ip_packet(&v6));
    let d = decode(&out[1].0);
    assert_eq!(d.proto, 4);
    let want = Ipv6Addr::from([
        1,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        198 ^ 0x7a,
        18 ^ 0x69,
        0,
        2,
    ]);
    assert_eq!(d.outer_src, IpAddr::V6(want));
    assert_eq!(d.inner, ip_packet(&v4));
}

#[test]
fn gue_encapsulation() {
    let mut s = spec(vec![
        vip_spec("198.18.1.1", 53, Proto::Udp, &[], &["10.1.0.1"]),
        vip_spec("2001:db8::10", 53, Proto::Udp, &[], &["fc00::1"]),
        vip_spec("198.18.1.2", 53, Proto::Udp, &[], &["fc00::2"]),
    ]);
    s.encap = Encap::Gue;
    s.gue_source_v4 = Some(Ipv4Addr::new(198, 18, 0, 1));
    s.gue_source_v6 = Some("2001:db8::1".parse().unwrap());
    let mut h = handler(&s);
    let a = udp4("192.168.1.1", 31337, "198.18.1.1", 53, b"v4 in v4");
    let b = udp6(
        "2001:db8:1::c0a8:0101",
        31337,
        "2001:db8::10",
        53,
        b"v6 in v6",
    );
    let c = udp4("192.168.1.1", 31337, "198.18.1.2", 53, b"v4 in v6");
    let out = run(&mut h, &[a.clone(), b.clone(), c.clone()]);
    let (p0, p1) = (0x7au8, 0x69u8);
    let d = decode(&out[0].0);
    assert_eq!(
        (d.proto, d.outer_src, d.outer_dst),
        (17, ip("198.18.0.1"), ip("10.1.0.1"))
    );
    assert_eq!(d.udp, Some((u16::from_be_bytes([p1 ^ 1, p0 ^ 1]), 9886)));
    assert_eq!(d.inner, ip_packet(&a));
    let d = decode(&out[1].0);
    assert_eq!(
        (d.proto, d.outer_src, d.outer_dst),
        (17, ip("2001:db8::1"), ip("fc00::1"))
    );
    assert_eq!(
        d.udp,
        Some((u16::from_be_bytes([0xc0 ^ p0, 0xa8 ^ p1]), 9886))
    );
    assert_eq!(d.inner, ip_packet(&b));
    let d = decode(&out[2].0);
    assert_eq!(d.outer_dst, ip("fc00::2"));
    assert_eq!(d.udp, Some((u16::from_be_bytes([1 ^ p0, 1 ^ p1]), 9886)));
    assert_eq!(d.inner, ip_packet(&c));
}

fn quic_spec() -> LbSpec {
    let reals = reals8();
    let r: Vec<&str> = reals.iter().map(String::as_str).collect();
    let mut s = spec(vec![vip_spec(
        "198.18.1.1",
        443,
        Proto::Udp,
        &[Flag::Quic],
        &r,
    )]);
    s.quic_servers = vec![QuicServerSpec {
        id: 1025,
        real: ip("10.9.9.9"),
    }];
    s
}

#[test]
fn quic_server_ids_route_and_fall_through() {
    let s = quic_spec();
    let c = s.control();
    let mut h = handler(&s);
    let short = quic::short_header(&quic::cid_for(1, 1025), b"protected");
    let long = quic::long_header(2, &quic::cid_for(3, 1025), b"hs");
    let initial = quic::long_header(0, &quic::cid_for(3, 1025), b"init");
    let unknown = quic::short_header(&quic::cid_for(2, 4242), b"x");
    let inputs = [
        udp4("198.18.0.2", 5000, "198.18.1.1", 443, &short),
        udp4("198.18.0.3", 5000, "198.18.1.1", 443, &long),
        udp4("198.18.0.4", 5000, "198.18.1.1", 443, &initial),
        udp4("198.18.0.5", 5000, "198.18.1.1", 443, &unknown),
    ];
    let out = run(&mut h, &inputs);
    assert_eq!(decode(&out[0].0).outer_dst, ip("10.9.9.9"));
    assert_eq!(decode(&out[1].0).outer_dst, ip("10.9.9.9"));
    for (i, src) in [(2, "198.18.0.4"), (3, "198.18.0.5")] {
        assert_eq!(
            Some(decode(&out[i].0).outer_dst),
            c.pick(&vip("198.18.1.1:443/udp"), ip(src), 5000, 443)
        );
    }
    assert_eq!(c.stats().quic_routed, 2);
    // The QUIC-routed flow is in the connection table: an Initial of the same 5-tuple (no
    // server id) follows it.
    let again = udp4("198.18.0.2", 5000, "198.18.1.1", 443, &initial);
    assert_eq!(
        decode(&run(&mut h, &[again])[0].0).outer_dst,
        ip("10.9.9.9")
    );
}

/// Established flows stay on their real when it leaves the ring; SYNs and new flows move.
#[test]
fn connection_table_keeps_flows_on_a_removed_real() {
    let reals = reals8();
    let r: Vec<&str> = reals.iter().map(String::as_str).collect();
    let s = spec(vec![vip_spec("198.18.1.1", 80, Proto::Tcp, &[], &r)]);
    let c = s.control();
    let mut h = handler(&s);
    let key = vip("198.18.1.1:80/tcp");
    // 200 flows: SYN (ring, table written), then find those on 10.1.0.3.
    let flows: Vec<(String, u16)> = (0..200)
        .map(|i| {
            (
                format!("198.18.{}.{}", i / 250, i % 250 + 1),
                10_000 + i as u16,
            )
        })
        .collect();
    let syns: Vec<Vec<u8>> = flows
        .iter()
        .map(|(a, p)| tcp4(a, *p, "198.18.1.1", 80, TcpFlags::SYN))
        .collect();
    let first: Vec<IpAddr> = run(&mut h, &syns)
        .iter()
        .map(|o| decode(&o.0).outer_dst)
        .collect();
    let victim = ip("10.1.0.3");
    let on_victim: Vec<usize> = (0..flows.len()).filter(|&i| first[i] == victim).collect();
    assert!(!on_victim.is_empty());
    let v = c.remove_real(key, victim).unwrap();
    assert_eq!(v, 2);
    let acks: Vec<Vec<u8>> = flows
        .iter()
        .map(|(a, p)| tcp4(a, *p, "198.18.1.1", 80, TcpFlags::ACK))
        .collect();
    let after: Vec<IpAddr> = run(&mut h, &acks)
        .iter()
        .map(|o| decode(&o.0).outer_dst)
        .collect();
    assert_eq!(h.version(), 2);
    assert_eq!(
        after, first,
        "every established flow stays, the removed real's too"
    );
    // A new SYN of a flow of the removed real is balanced over the new ring.
    let i = on_victim[0];
    let out = run(&mut h, &[syns[i].clone()]);
    let moved = decode(&out[0].0).outer_dst;
    assert_ne!(moved, victim);
    assert_eq!(Some(moved), c.pick(&key, ip(&flows[i].0), flows[i].1, 80));
    // ...and the table now follows the move.
    assert_eq!(
        decode(&run(&mut h, &[acks[i].clone()])[0].0).outer_dst,
        moved
    );
}

#[test]
fn udp_entries_expire_after_30s() {
    let s = spec(vec![vip_spec(
        "198.18.1.1",
        53,
        Proto::Udp,
        &[],
        &["10.1.0.1", "10.1.0.2"],
    )]);
    let c = s.control();
    let key = vip("198.18.1.1:53/udp");
    let mut h = handler(&s);
    // Find a client the ring sends to 10.1.0.1.
    let client = (1..250)
        .map(|i| format!("198.18.0.{i}"))
        .find(|a| c.pick(&key, ip(a), 4000, 53) == Some(ip("10.1.0.1")))
        .unwrap();
    let pkt = udp4(&client, 4000, "198.18.1.1", 53, b"q");
    let sec = 1_000_000_000u64;
    assert_eq!(
        decode(&run_at(&mut h, &[pkt.clone()], sec)[0].0).outer_dst,
        ip("10.1.0.1")
    );
    c.remove_real(key, ip("10.1.0.1")).unwrap();
    // Within 30 s of the last packet: sticky (and refreshed).
    assert_eq!(
        decode(&run_at(&mut h, &[pkt.clone()], 31 * sec)[0].0).outer_dst,
        ip("10.1.0.1")
    );
    assert_eq!(
        decode(&run_at(&mut h, &[pkt.clone()], 61 * sec)[0].0).outer_dst,
        ip("10.1.0.1")
    );
    // More than 30 s later: expired, the ring decides.
    assert_eq!(
        decode(&run_at(&mut h, &[pkt], 91 * sec + 1)[0].0).outer_dst,
        ip("10.1.0.2")
    );
}

#[test]
fn lru_bypass_rst_and_flow_migration() {
    let s = spec(vec![
        vip_spec(
            "198.18.1.1",
            53,
            Proto::Udp,
            &[Flag::LruBypass],
            &["10.1.0.1", "10.1.0.2"],
        ),
        vip_spec(
            "198.18.1.2",
            53,
            Proto::Udp,
            &[Flag::UdpFlowMigration],
            &["10.1.0.1", "10.1.0.2"],
        ),
        vip_spec("198.18.1.3", 80, Proto::Tcp, &[], &["10.1.0.1", "10.1.0.2"]),
    ]);
    let c = s.control();
    let mut h = handler(&s);
    let find = |key: &str, want: &str| {
        (1..250)
            .map(|i| format!("198.18.0.{i}"))
            .find(|a| c.pick(&vip(key), ip(a), 4000, vip(key).port) == Some(ip(want)))
            .unwrap()
    };
    // lru-bypass: nothing is remembered; a removal moves the flow at once.
    let a = find("198.18.1.1:53/udp", "10.1.0.1");
    let p = udp4(&a, 4000, "198.18.1.1", 53, b"q");
    assert_eq!(
        decode(&run(&mut h, &[p.clone()])[0].0).outer_dst,
        ip("10.1.0.1")
    );
    assert_eq!(h.conn_entries(), 0);
    // udp-flow-migration: an entry pointing at a real marked down is ignored.
    let b = find("198.18.1.2:53/udp", "10.1.0.1");
    let q = udp4(&b, 4000, "198.18.1.2", 53, b"q");
    assert_eq!(
        decode(&run(&mut h, &[q.clone()])[0].0).outer_dst,
        ip("10.1.0.1")
    );
    c.set_weight(vip("198.18.1.2:53/udp"), ip("10.1.0.1"), 0)
        .unwrap();
    // Weight 0 alone: the entry still holds.
    assert_eq!(
        decode(&run(&mut h, &[q.clone()])[0].0).outer_dst,
        ip("10.1.0.1")
    );
    c.set_down(vip("198.18.1.2:53/udp"), ip("10.1.0.1"), true)
        .unwrap();
    assert_eq!(decode(&run(&mut h, &[q])[0].0).outer_dst, ip("10.1.0.2"));
    // TCP RST: balanced, but not written into the table.
    let before = h.conn_entries();
    let cl = find("198.18.1.3:80/tcp", "10.1.0.2");
    let rst = tcp4(&cl, 4000, "198.18.1.3", 80, TcpFlags::RST | TcpFlags::ACK);
    assert_eq!(decode(&run(&mut h, &[rst])[0].0).outer_dst, ip("10.1.0.2"));
    assert_eq!(h.conn_entries(), before);
    let _ = c
        .remove_real(vip("198.18.1.1:53/udp"), ip("10.1.0.1"))
        .unwrap();
    assert_eq!(decode(&run(&mut h, &[p])[0].0).outer_dst, ip("10.1.0.2"));
}

#[test]
fn source_routing_longest_prefix() {
    let mut s = spec(vec![
        vip_spec(
            "198.18.1.1",
            80,
            Proto::Tcp,
            &[Flag::SrcRouting],
            &["10.1.0.1"],
        ),
        vip_spec("198.18.1.2", 80, Proto::Tcp, &[], &["10.1.0.1"]),
    ]);
    s.src_routes = vec![
        SrcRouteSpec {
            prefix: "198.18.128.0/17".parse().unwrap(),
            real: ip("10.2.0.1"),
        },
        SrcRouteSpec {
            prefix: "198.18.200.0/24".parse().unwrap(),
            real: ip("10.2.0.2"),
        },
    ];
    let mut h = handler(&s);
    let cases = [
        ("198.18.130.1", "198.18.1.1", "10.2.0.1"),
        ("198.18.200.7", "198.18.1.1", "10.2.0.2"),
        ("198.18.5.5", "198.18.1.1", "10.1.0.1"),
        ("198.18.200.7", "198.18.1.2", "10.1.0.1"), // VIP without the flag
    ];
    for (src, dst, want) in cases {
        let out = run(&mut h, &[tcp4(src, 1, dst, 80, TcpFlags::SYN)]);
        assert_eq!(decode(&out[0].0).outer_dst, ip(want), "{src} -> {dst}");
    }
}

#[test]
fn icmp_echo_to_a_vip_is_answered() {
    let s = spec(vec![
        vip_spec("198.18.1.1", 80, Proto::Tcp, &[], &["10.1.0.1"]),
        vip_spec("2001:db8::10", 80, Proto::Tcp, &[], &["fc00::1"]),
    ]);
    let mut h = handler(&s);
    let e4 = Endpoints4 {
        dst_ip: "198.18.1.1".parse().unwrap(),
        ..Endpoints4::default()
    };
    let e6 = Endpoints6 {
        dst_ip: "2001:db8::10".parse().unwrap(),
        ..Endpoints6::default()
    };
    let mut req4 = build::icmp4_echo_request(&e4, 7, 1, b"ping", None);
    crate::wire::tests::set_ipv4(&mut req4, |ip| ip.set_hop_limit(3));
    let req6 = build::icmp6_echo_request(&e6, 7, 1, b"ping6", None);
    let out = run(&mut h, &[req4, req6]);
    let want4 = build::icmp4_echo_reply(&e4.reversed(), 7, 1, b"ping", None);
    let want6 = build::icmp6_echo_reply(&e6.reversed(), 7, 1, b"ping6", None);
    assert_eq!(out[0], (want4, reply()));
    assert_eq!(out[1], (want6, reply()));
    assert!(crate::wire::tests::checksums_ok(&out[0].0));
    assert!(crate::wire::tests::checksums_ok(&out[1].0));
}

/// An ICMPv4 "fragmentation needed" for a packet the real sent from the VIP to a client;
/// `inner` is that packet (VIP -> client).
fn icmp4_error(from: &str, to_vip: &str, inner: &[u8], code: u8) -> Vec<u8> {
    let inner_ip = ip_packet(inner);
    let ep = Endpoints4 {
        src_ip: from.parse().unwrap(),
        dst_ip: to_vip.parse().unwrap(),
        ..Endpoints4::default()
    };
    let mut f = build::icmp4_echo_request(&ep, 0, 1400, &inner_ip, None);
    f[34] = 3;
    f[35] = code;
    f[36] = 0;
    f[37] = 0;
    let c = crate::wire::checksum::of(&f[34..]);
    f[36..38].copy_from_slice(&c.to_be_bytes());
    f
}

fn icmp6_error(from: &str, to_vip: &str, inner: &[u8], kind: u8) -> Vec<u8> {
    let inner_ip = ip_packet(inner);
    let ep = Endpoints6 {
        src_ip: from.parse().unwrap(),
        dst_ip: to_vip.parse().unwrap(),
        ..Endpoints6::default()
    };
    let mut f = build::icmp6_echo_request(&ep, 0, 1280, &inner_ip, None);
    f[54] = kind;
    f[55] = 0;
    f[56] = 0;
    f[57] = 0;
    let s: Ipv6Addr = from.parse().unwrap();
    let d: Ipv6Addr = to_vip.parse().unwrap();
    let pseudo = crate::wire::checksum::pseudo_v6(&s, &d, 58, (f.len() - 54) as u32);
    let c = crate::wire::checksum::finish(crate::wire::checksum::sum(pseudo, &f[54..]));
    f[56..58].copy_from_slice(&c.to_be_bytes());
    f
}

#[test]
fn icmp_errors_follow_their_flow() {
    let reals = reals8();
    let r: Vec<&str> = reals.iter().map(String::as_str).collect();
    let s = spec(vec![
        vip_spec("198.18.1.1", 80, Proto::Tcp, &[], &r),
        vip_spec(
            "2001:db8::10",
            443,
            Proto::Udp,
            &[],
            &["fc00::1", "fc00::2", "fc00::3"],
        ),
    ]);
    let mut h = handler(&s);
    for i in 1..40u16 {
        let client = format!("198.18.2.{i}");
        let data = tcp4(&client, 20000 + i, "198.18.1.1", 80, TcpFlags::SYN);
        let data_real = decode(&run(&mut h, &[data])[0].0).outer_dst;
        // The server's answer, VIP -> client, and the router's complaint about it.
        let answer = tcp4(
            "198.18.1.1",
            80,
            &client,
            20000 + i,
            TcpFlags::SYN | TcpFlags::ACK,
        );
        let err = icmp4_error("198.18.0.254", "198.18.1.1", &answer, 4);
        let out = run(&mut h, &[err.clone()]);
        assert_eq!(out[0].1, reply());
        let d = decode(&out[0].0);
        assert_eq!(d.outer_dst, data_real, "client {client}");
        assert_eq!(d.inner, ip_packet(&err));
        // Source derived from the flow's client address and port.
        let p = (20000 + i).to_be_bytes();
        assert_eq!(
            d.outer_src,
            IpAddr::V4(Ipv4Addr::new(172, 16, 2 ^ p[1], (i as u8) ^ p[0]))
        );
        // Unreachable (code 1) too.
        let unreach = icmp4_error("198.18.0.254", "198.18.1.1", &answer, 1);
        assert_eq!(decode(&run(&mut h, &[unreach])[0].0).outer_dst, data_real);
    }
    for i in 1..20u16 {
        let client = format!("2001:db8:2::{i}");
        let data = udp6(&client, 30000 + i, "2001:db8::10", 443, b"q");
        let data_real = decode(&run(&mut h, &[data])[0].0).outer_dst;
        let answer = udp6("2001:db8::10", 443, &client, 30000 + i, &[0; 64]);
        for kind in [1u8, 2] {
            let err = icmp6_error("2001:db8::fe", "2001:db8::10", &answer, kind);
            let d = decode(&run(&mut h, &[err.clone()])[0].0);
            assert_eq!(d.outer_dst, data_real);
            assert_eq!(d.inner, ip_packet(&err));
        }
    }
    // An error about a non-VIP flow passes; one with a cut transport header is dropped.
    let other = tcp4("198.18.1.9", 80, "198.18.2.1", 1, TcpFlags::ACK);
    let err = icmp4_error("198.18.0.254", "198.18.1.9", &other, 4);
    assert_eq!(run(&mut h, &[err.clone()])[0].1, Verdict::Next);
    let answer = tcp4("198.18.1.1", 80, "198.18.2.1", 1, TcpFlags::ACK);
    let cut_inner = &ip_packet(&answer)[..28];
    let mut fake = answer[..14].to_vec();
    fake.extend_from_slice(cut_inner);
    let mut fake_ip = fake.clone();
    fake_ip[16..18].copy_from_slice(&28u16.to_be_bytes());
    let ep = Endpoints4 {
        dst_ip: "198.18.1.1".parse().unwrap(),
        ..Endpoints4::default()
    };
    let mut cut = build::icmp4_echo_request(&ep, 0, 0, &fake_ip[14..], None);
    cut[34] = 3;
    cut[35] = 4;
    assert_eq!(
        run(&mut h, &[cut])[0].1,
        Verdict::Drop(DropReason::Truncated)
    );
}

#[test]
fn vlan_tag_is_kept_in_front_of_the_outer_header() {
    let s = spec(vec![vip_spec(
        "198.18.1.1",
        80,
        Proto::Udp,
        &[],
        &["10.1.0.1"],
    )]);
    let mut h = handler(&s);
    let ep = Endpoints4 {
        dst_ip: "198.18.1.1".parse().unwrap(),
        dst_port: 80,
        ..Endpoints4::default()
    };
    let input = build::udp4(&ep, b"tagged", Some(100));
    let out = run(&mut h, &[input.clone()]);
    let o = &out[0].0;
    assert_eq!(&o[12..16], &input[12..16]); // TPID and TCI
    assert_eq!(&o[16..18], &[0x08, 0x00]);
    let untagged: Vec<u8> = o[..12].iter().chain(&o[16..]).copied().collect();
    let d = decode(&untagged);
    assert_eq!(d.outer_dst, ip("10.1.0.1"));
    assert_eq!(d.inner, input[18..].to_vec());
    let l = wire::parse(o).unwrap();
    assert_eq!(l.l4_proto, 4);
}

// ---- control ----

#[test]
fn validation_names_the_field() {
    let ok = spec(vec![vip_spec(
        "198.18.1.1",
        80,
        Proto::Tcp,
        &[],
        &["10.1.0.1"],
    )]);
    ok.validate().unwrap();
    let cases: Vec<(LbSpec, &str)> = vec![
        (
            LbSpec {
                router_mac: MacAddr::BROADCAST,
                ..ok.clone()
            },
            "router_mac: ",
        ),
        (
            LbSpec {
                conn_table_size: 0,
                ..ok.clone()
            },
            "conn_table_size: ",
        ),
        (
            spec(vec![vip_spec("0.0.0.0", 80, Proto::Tcp, &[], &[])]),
            "vips[0]: `0.0.0.0` cannot be a VIP",
        ),
        (
            spec(vec![vip_spec(
                "198.18.1.1",
                80,
                Proto::Tcp,
                &[],
                &["10.1.0.1", "224.0.0.1"],
            )]),
            "vips[0].reals[1].address: `224.0.0.1` cannot be a real",
        ),
        (
            spec(vec![
                vip_spec("198.18.1.1", 80, Proto::Tcp, &[], &[]),
                vip_spec("198.18.1.1", 80, Proto::Tcp, &[], &[]),
            ]),
            "vips[1]: VIP 198.18.1.1:80/tcp is listed twice",
        ),
        (
            spec(vec![vip_spec(
                "198.18.1.1",
                80,
                Proto::Tcp,
                &[],
                &["10.1.0.1", "10.1.0.1"],
            )]),
            "vips[0].reals[1].address: real 10.1.0.1 is already in VIP",
        ),
        (
            spec(vec![vip_spec(
                "2001:db8::1",
                80,
                Proto::Tcp,
                &[],
                &["10.1.0.1"],
            )]),
            "vips[0].reals[0].address: `10.1.0.1` is IPv4 but VIP",
        ),
        (
            LbSpec {
                encap: Encap::Gue,
                ..ok.clone()
            },
            "vips[0].reals[0].address: `10.1.0.1` needs gue_source_v4",
        ),
        (
            spec(
                (0..513)
                    .map(|i| vip_spec("198.18.1.1", i, Proto::Tcp, &[], &[]))
                    .collect(),
            ),
            "vips: 513 VIPs configured; at most 512",
        ),
    ];
    for (s, want) in cases {
        let e = s.validate().unwrap_err();
        assert!(e.starts_with(want), "{e:?} should start with {want:?}");
    }
}

#[test]
fn toml_round_trip() {
    #[derive(serde::Deserialize, serde::Serialize)]
    struct Chain {
        handlers: Vec<crate::handlers::Spec>,
    }
    let text = r#"
[[handlers]]
kind = "lb"
router_mac = "02:00:00:00:00:fe"
encap = "gue"
gue_source_v4 = "198.18.0.1"

[[handlers.vips]]
address = "198.18.1.1"
port = 443
proto = "udp"
flags = ["quic", "no-src-port"]
reals = [{ address = "198.19.0.1", weight = 2 }, { address = "198.19.0.2", down = true }]

[[handlers.quic_servers]]
id = 1025
real = "198.19.0.1"

[[handlers.src_routes]]
prefix = "198.18.128.0/17"
real = "198.19.0.2"
"#;
    let c: Chain = toml::from_str(text).unwrap();
    let crate::handlers::Spec::Lb(s) = &c.handlers[0] else {
        panic!("not lb")
    };
    assert_eq!(s.gue_port, 9886);
    assert_eq!(s.conn_table_size, 65536);
    assert_eq!(s.vips[0].flags, [Flag::Quic, Flag::NoSrcPort]);
    assert_eq!(s.vips[0].reals[1].weight, 1);
    assert!(s.vips[0].reals[1].down);
    c.handlers[0].validate().unwrap();
    let back = toml::to_string(&c).unwrap();
    let again: Chain = toml::from_str(&back).unwrap();
    assert_eq!(again.handlers, c.handlers);
    // The control's view of the state serializes back to the same spec.
    let mut normal = s.clone();
    normal.vips[0].flags.sort();
    assert_eq!(s.control().spec(), normal);
    for bad in [
        "[[handlers]]\nkind = \"lb\"\nrouter_mac = \"02:00:00:00:00:fe\"\nvip = []",
        "[[handlers]]\nkind = \"lb\"\nrouter_mac = \"02:00:00:00:00:fe\"\n[[handlers.vips]]\naddress = \"198.18.1.1\"\nproto = \"sctp\"",
        "[[handlers]]\nkind = \"lb\"\nrouter_mac = \"02:00:00:00:00:fe\"\n[[handlers.vips]]\naddress = \"198.18.1.1\"\nproto = \"tcp\"\nflags = [\"fast\"]",
        "[[handlers]]\nkind = \"lb\"\nrouter_mac = \"02:00:00:00:00:fe\"\n[[handlers.src_routes]]\nprefix = \"198.18.0.1/15\"\nreal = \"198.19.0.1\"",
    ] {
        assert!(toml::from_str::<Chain>(bad).is_err(), "{bad}");
    }
}

/// A refused request changes nothing (version, rings, reals); an accepted one publishes a
/// new version that running handlers pick up at their next burst.
#[test]
fn rejected_changes_change_nothing() {
    let s = spec(vec![vip_spec(
        "198.18.1.1",
        80,
        Proto::Tcp,
        &[],
        &["10.1.0.1", "10.1.0.2"],
    )]);
    let c = s.control();
    let key = vip("198.18.1.1:80/tcp");
    let before = (c.show(), c.ring(&key));
    let refusals: Vec<(Vec<Change>, &str)> = vec![
        (
            vec![Change::AddReal {
                vip: vip("198.18.1.9:80/tcp"),
                real: ip("10.1.0.3"),
                weight: 1,
            }],
            "changes[0].vip: unknown VIP 198.18.1.9:80/tcp",
        ),
        (
            // The first change is fine; the second is refused: neither happens.
            vec![
                Change::AddReal {
                    vip: key,
                    real: ip("10.1.0.3"),
                    weight: 1,
                },
                Change::AddReal {
                    vip: key,
                    real: ip("255.255.255.255"),
                    weight: 1,
                },
            ],
            "changes[1].real: `255.255.255.255` cannot be a real",
        ),
        (
            vec![Change::RemoveReal {
                vip: key,
                real: ip("10.1.0.9"),
            }],
            "changes[0].real: real 10.1.0.9 is not in VIP",
        ),
        (
            vec![Change::AddVip {
                vip: key,
                flags: vec![],
            }],
            "changes[0].vip: VIP 198.18.1.1:80/tcp already exists",
        ),
        (
            (1..=512)
                .map(|p| Change::AddVip {
                    vip: VipKey::new(ip("198.18.2.1"), p, Proto::Udp),
                    flags: vec![],
                })
                .collect(),
            "changes[511].vip: cannot add VIP 198.18.2.1:512/udp: already 512 VIPs",
        ),
        (
            vec![Change::AddQuicServer {
                id: 0,
                real: ip("10.1.0.1"),
            }],
            "changes[0].id: 0 is not a QUIC server id",
        ),
        (vec![], "changes: no change given"),
    ];
    for (changes, want) in refusals {
        let e = c.apply(None, &changes).unwrap_err().to_string();
        assert!(e.starts_with(want), "{e:?} should start with {want:?}");
        assert_eq!((c.show(), c.ring(&key)), before);
    }
    let e = c
        .apply(Some(7), &[Change::RemoveVip { vip: key }])
        .unwrap_err();
    assert!(e.to_string().starts_with("expected_version: stale"), "{e}");
    assert_eq!(c.version(), 1);
    // 511 more VIPs fit exactly.
    let v = c
        .apply(
            Some(1),
            &(1..=511)
                .map(|p| Change::AddVip {
                    vip: VipKey::new(ip("198.18.2.1"), p, Proto::Udp),
                    flags: vec![],
                })
                .collect::<Vec<_>>(),
        )
        .unwrap();
    assert_eq!(v, 2);
    assert_eq!(c.show().vips.len(), 512);
    assert!(c.add_vip(vip("198.18.3.1:1/udp"), &[]).is_err());
}

#[test]
fn handlers_pick_up_new_versions_at_the_next_burst() {
    let s = spec(vec![vip_spec("198.18.1.1", 80, Proto::Udp, &[], &[])]);
    let c = s.control();
    let mut h1 = handler(&s);
    let mut h2 = Lb::new(&c); // a second worker
    let p = udp4("198.18.0.2", 1, "198.18.1.1", 80, b"x");
    assert_eq!(
        run(&mut h1, &[p.clone()])[0].1,
        Verdict::Drop(DropReason::LbNoReal)
    );
    let v = c
        .apply(
            Some(1),
            &[Change::AddReal {
                vip: vip("198.18.1.1:80/udp"),
                real: ip("10.1.0.1"),
                weight: 1,
            }],
        )
        .unwrap();
    assert_eq!(v, 2);
    for h in [&mut h1, &mut h2] {
        let out = run(h, &[p.clone()]);
        assert_eq!(decode(&out[0].0).outer_dst, ip("10.1.0.1"));
        assert_eq!(h.version(), 2);
    }
    // New VIPs too, and removals.
    c.add_vip(vip("198.18.1.2:0/tcp"), &[]).unwrap();
    c.add_real(vip("198.18.1.2:0/tcp"), ip("10.1.0.5"), 3)
        .unwrap();
    let t = tcp4("198.18.0.2", 1, "198.18.1.2", 9999, TcpFlags::SYN);
    assert_eq!(
        decode(&run(&mut h1, &[t.clone()])[0].0).outer_dst,
        ip("10.1.0.5")
    );
    c.remove_vip(vip("198.18.1.2:0/tcp")).unwrap();
    assert_eq!(run(&mut h1, &[t])[0].1, Verdict::Next);
    let st = c.stats();
    assert_eq!(st.workers, 2);
    assert_eq!(st.version, 5);
    assert_eq!(st.vips[0].packets, 3);
    // Show reports ids, weights and slots.
    let show = c.show();
    assert_eq!(show.vips[0].reals[0].slots, 65_537);
    assert_eq!(show.vips[0].reals[0].id, 1);
}

/// Real ids: from 1 in order of first addition, shared between VIPs, released ids reused
/// only after every fresh one (Katran's FIFO).
#[test]
fn real_ids_follow_katran() {
    let s = spec(vec![
        vip_spec("198.18.1.1", 80, Proto::Tcp, &[], &["10.1.0.1", "10.1.0.2"]),
        vip_spec("198.18.1.2", 80, Proto::Tcp, &[], &["10.1.0.2", "10.1.0.3"]),
    ]);
    let c = s.control();
    let ids = |c: &Control| -> Vec<(IpAddr, u32)> {
        c.show()
            .vips
            .iter()
            .flat_map(|v| v.reals.iter().map(|r| (r.address, r.id)))
            .collect()
    };
    assert_eq!(
        ids(&c),
        [
            (ip("10.1.0.1"), 1),
            (ip("10.1.0.2"), 2),
            (ip("10.1.0.2"), 2),
            (ip("10.1.0.3"), 3)
        ]
    );
    c.remove_real(vip("198.18.1.1:80/tcp"), ip("10.1.0.1"))
        .unwrap();
    c.add_real(vip("198.18.1.1:80/tcp"), ip("10.1.0.4"), 1)
        .unwrap();
    assert!(ids(&c).contains(&(ip("10.1.0.4"), 4)));
}

/// Two instances built from the same configuration, in any order of VIPs and reals, have
/// identical rings and send the same packets to the same reals (the scale-out guarantee).
#[test]
fn two_instances_agree() {
    let reals: Vec<String> = (1..=40).map(|i| format!("10.3.{}.{}", i / 7, i)).collect();
    let r: Vec<&str> = reals.iter().map(String::as_str).collect();
    let mut rr = r.clone();
    rr.reverse();
    let a = spec(vec![
        vip_spec("198.18.1.1", 80, Proto::Tcp, &[], &r),
        vip_spec("198.18.1.2", 0, Proto::Udp, &[], &r[..10]),
    ]);
    let b = spec(vec![
        vip_spec("198.18.1.2", 0, Proto::Udp, &[], &rr[30..]),
        vip_spec("198.18.1.1", 80, Proto::Tcp, &[], &rr),
    ]);
    for k in ["198.18.1.1:80/tcp", "198.18.1.2:0/udp"] {
        assert_eq!(a.control().ring(&vip(k)), b.control().ring(&vip(k)), "{k}");
    }
    let (mut ha, mut hb) = (handler(&a), handler(&b));
    let inputs: Vec<Vec<u8>> = (0..300u16)
        .map(|i| {
            let src = format!("198.18.{}.{}", 10 + i / 200, i % 200 + 1);
            if i % 2 == 0 {
                tcp4(&src, 1024 + i, "198.18.1.1", 80, TcpFlags::SYN)
            } else {
                udp4(&src, 1024 + i, "198.18.1.2", 5000 + i, b"u")
            }
        })
        .collect();
    assert_eq!(run(&mut ha, &inputs), run(&mut hb, &inputs));
}

#[test]
fn decided_packets_are_left_alone() {
    let s = spec(vec![vip_spec(
        "198.18.1.1",
        80,
        Proto::Udp,
        &[],
        &["10.1.0.1"],
    )]);
    let mut h = handler(&s);
    let p = udp4("198.18.0.2", 1, "198.18.1.1", 80, b"x");
    let out = crate::handlers::testutil::run_raw(
        &mut h,
        vec![(p.clone(), None, Verdict::Drop(DropReason::Filtered))],
    );
    assert_eq!(out[0], (p, Verdict::Drop(DropReason::Filtered)));
}
