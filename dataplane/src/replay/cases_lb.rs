//! The `lb-*` golden cases: one per path of the Katran-compatible balancer (see
//! `handlers/lb`). Addresses: VIPs in 198.18.1.0/24 and 2001:db8::/64, reals in
//! 198.19.0.0/16 and 2001:db8:ffff::/64, clients in 198.18.100.0/22 and 2001:db8:100::/48
//! (RFC 2544 and RFC 3849 ranges), next hop 02:00:00:00:00:fe.
//!
//! What each output must be is checked independently of `--regen` by
//! `dataplane/tests/lb.rs` (`lb_goldens_decode_as_specified`): every output frame is decoded
//! with smoltcp and its outer header compared with the spec's formulas, its inner packet
//! with the input byte for byte, and its real with the ring.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, Ipv6Addr};

use super::{config, io_port, pcap_input, Case, MACSWAP};
use crate::handlers::lb::quic;
use crate::wire::build::{self, Endpoints4, Endpoints6, TcpFlags};
use crate::wire::checksum;

/// Client ports used by every case.
const SPORTS: [u16; 4] = [1024, 31337, 40000, 65535];

fn c4(i: u16) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 100 + (i / 250) as u8, (i % 250) as u8 + 1)
}

fn c6(i: u16) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0xabcd, i + 1)
}

fn v4(s: &str) -> Ipv4Addr {
    s.parse().expect("case address")
}

fn v6(s: &str) -> Ipv6Addr {
    s.parse().expect("case address")
}

fn ep4(src: Ipv4Addr, sport: u16, dst: &str, dport: u16) -> Endpoints4 {
    Endpoints4 {
        src_ip: src,
        dst_ip: v4(dst),
        src_port: sport,
        dst_port: dport,
        ..Endpoints4::default()
    }
}

fn ep6(src: Ipv6Addr, sport: u16, dst: &str, dport: u16) -> Endpoints6 {
    Endpoints6 {
        src_ip: src,
        dst_ip: v6(dst),
        src_port: sport,
        dst_port: dport,
        ..Endpoints6::default()
    }
}

/// `[[handlers]] kind = "lb"` with `extra` settings and VIP tables.
fn lb(extra: &str, vips: &[(&str, u16, &str, &str, &[&str])]) -> String {
    let mut s = String::from("\n[[handlers]]\nkind = \"lb\"\nrouter_mac = \"02:00:00:00:00:fe\"\n");
    s.push_str(extra);
    for (addr, port, proto, flags, reals) in vips {
        let _ = write!(
            s,
            "\n[[handlers.vips]]\naddress = \"{addr}\"\nport = {port}\nproto = \"{proto}\"\n"
        );
        if !flags.is_empty() {
            let _ = writeln!(s, "flags = [{flags}]");
        }
        let r: Vec<String> = reals
            .iter()
            .map(|r| match r.split_once('*') {
                Some((a, w)) => format!("{{ address = \"{a}\", weight = {w} }}"),
                None => format!("{{ address = \"{r}\" }}"),
            })
            .collect();
        let _ = writeln!(s, "reals = [{}]", r.join(", "));
    }
    s
}

const REALS4: &[&str] = &[
    "198.19.0.1",
    "198.19.0.2",
    "198.19.0.3",
    "198.19.0.4",
    "198.19.0.5",
    "198.19.0.6",
];
const REALS6: &[&str] = &["2001:db8:ffff::1", "2001:db8:ffff::2", "2001:db8:ffff::3"];

pub(super) fn all() -> Vec<Case> {
    vec![
        lb_v4(),
        lb_v6(),
        lb_any_port(),
        lb_dport_only(),
        lb_gue(),
        lb_icmp(),
        lb_quic(),
        lb_conn_table(),
        lb_drops(),
    ]
}

fn lb_v4() -> Case {
    let mut frames = Vec::new();
    for i in 0..12u16 {
        let ep = ep4(c4(i), SPORTS[usize::from(i) % 4], "198.18.1.1", 80);
        frames.push(build::tcp4(&ep, TcpFlags::SYN, 1, 0, b"", None));
        frames.push(build::tcp4(
            &ep,
            TcpFlags::ACK,
            2,
            1,
            b"GET / HTTP/1.1\r\n",
            None,
        ));
    }
    // TOS is copied to the outer header.
    let mut tos = build::udp4(&ep4(c4(20), 5000, "198.18.1.1", 80), b"tos", None);
    tos[15] = 0xb8;
    fix_ipv4(&mut tos, 14);
    frames.push(tos);
    // Not a VIP (address, port, protocol): passed on to macswap, reflected.
    frames.push(build::tcp4(
        &ep4(c4(1), 1024, "198.18.1.9", 80),
        TcpFlags::SYN,
        1,
        0,
        b"",
        None,
    ));
    frames.push(build::tcp4(
        &ep4(c4(1), 1024, "198.18.1.1", 81),
        TcpFlags::SYN,
        1,
        0,
        b"",
        None,
    ));
    frames.push(build::arp_request(
        Endpoints4::default().src_mac,
        c4(1),
        v4("198.18.1.1"),
        None,
    ));
    Case {
        name: "lb-v4",
        config: config(
            "lb-v4",
            "TCP to IPv4 VIP 198.18.1.1:80 with six IPv4 reals: IP-in-IP (protocol 4) to the ring's real, source 172.16.(s2^p1).(s3^p0), TOS copied, to the router MAC; SYN and data of a flow go to the same real; non-VIP traffic continues to macswap.",
            "",
            &[io_port(0)],
            &format!(
                "{}{MACSWAP}",
                lb("", &[("198.18.1.1", 80, "tcp", "", REALS4), ("198.18.1.1", 80, "udp", "", REALS4)])
            ),
        ),
        inputs: vec![pcap_input(0, frames)],
    }
}

fn lb_v6() -> Case {
    let mut frames = Vec::new();
    for i in 0..8u16 {
        let ep = ep6(c6(i), SPORTS[usize::from(i) % 4], "2001:db8::10", 443);
        frames.push(build::tcp6(&ep, TcpFlags::SYN, 1, 0, b"", None));
        frames.push(build::udp6(
            &ep6(c6(i), SPORTS[usize::from(i) % 4], "2001:db8::10", 443),
            b"quic-ish but no flag",
            None,
        ));
        frames.push(build::udp4(
            &ep4(c4(i), SPORTS[usize::from(i) % 4], "198.18.1.2", 53),
            b"v4 in v6",
            None,
        ));
    }
    Case {
        name: "lb-v6",
        config: config(
            "lb-v6",
            "IPv6 VIP [2001:db8::10]:443 (TCP and UDP) and IPv4 VIP 198.18.1.2:53/udp, both with IPv6 reals: IPv6 outer header (next header 41 for IPv6, 4 for IPv4 inside), source 0100::(s0^p0)(s1^p1)s2s3, hop limit 64.",
            "",
            &[io_port(0)],
            &lb(
                "",
                &[
                    ("2001:db8::10", 443, "tcp", "", REALS6),
                    ("2001:db8::10", 443, "udp", "", REALS6),
                    ("198.18.1.2", 53, "udp", "", REALS6),
                ],
            ),
        ),
        inputs: vec![pcap_input(0, frames)],
    }
}

fn lb_any_port() -> Case {
    let mut frames = Vec::new();
    for i in 0..6u16 {
        for dport in [53u16, 8080, 65535] {
            frames.push(build::udp4(
                &ep4(c4(i), 2000 + i, "198.18.1.3", dport),
                b"any",
                None,
            ));
            frames.push(build::udp4(
                &ep4(c4(i), 2000 + i, "198.18.1.4", dport),
                b"keep",
                None,
            ));
        }
        // Port 443 has its own VIP, with other reals.
        frames.push(build::udp4(
            &ep4(c4(i), 2000 + i, "198.18.1.3", 443),
            b"own",
            None,
        ));
    }
    Case {
        name: "lb-any-port",
        config: config(
            "lb-any-port",
            "port-0 VIPs: 198.18.1.3:0/udp hashes with dport 0 (every port of a client on one real); 198.18.1.4:0/udp with src-dst-port keeps the port; 198.18.1.3:443/udp matches exactly first and has its own reals.",
            "",
            &[io_port(0)],
            &lb(
                "",
                &[
                    ("198.18.1.3", 0, "udp", "", REALS4),
                    ("198.18.1.4", 0, "udp", "\"src-dst-port\"", REALS4),
                    ("198.18.1.3", 443, "udp", "", &["198.19.1.1", "198.19.1.2"]),
                ],
            ),
        ),
        inputs: vec![pcap_input(0, frames)],
    }
}

fn lb_dport_only() -> Case {
    let mut frames = Vec::new();
    for i in 0..8u16 {
        frames.push(build::udp4(
            &ep4(c4(i), 3000 + i * 7, "198.18.1.5", 5060),
            b"sip",
            None,
        ));
        frames.push(build::udp4(
            &ep4(c4(i), 3000 + i * 7, "198.18.1.5", 5061),
            b"sip-tls",
            None,
        ));
        frames.push(build::udp4(
            &ep4(c4(i), 3000 + i * 7, "198.18.1.6", 53),
            b"no-src-port",
            None,
        ));
    }
    Case {
        name: "lb-dport-only",
        config: config(
            "lb-dport-only",
            "dport-only (198.18.1.5:0/udp): every client of a port on one real, encap source from a zeroed address and the client's port; no-src-port (198.18.1.6:53/udp): every port of a client on one real.",
            "",
            &[io_port(0)],
            &lb(
                "",
                &[
                    ("198.18.1.5", 0, "udp", "\"dport-only\"", REALS4),
                    ("198.18.1.6", 53, "udp", "\"no-src-port\"", REALS4),
                ],
            ),
        ),
        inputs: vec![pcap_input(0, frames)],
    }
}

fn lb_gue() -> Case {
    let mut frames = Vec::new();
    for i in 0..4u16 {
        let sp = SPORTS[usize::from(i)];
        frames.push(build::udp4(
            &ep4(c4(i), sp, "198.18.1.7", 53),
            b"v4 in gue v4",
            None,
        ));
        frames.push(build::udp6(
            &ep6(c6(i), sp, "2001:db8::11", 53),
            b"v6 in gue v6",
            None,
        ));
        frames.push(build::udp4(
            &ep4(c4(i), sp, "198.18.1.8", 53),
            b"v4 in gue v6",
            None,
        ));
        frames.push(build::tcp6(
            &ep6(c6(i), sp, "2001:db8::12", 80),
            TcpFlags::SYN,
            1,
            0,
            b"",
            None,
        ));
    }
    Case {
        name: "lb-gue",
        config: config(
            "lb-gue",
            "GUE (UDP to port 9886, checksum 0) from the configured sources 198.18.0.1 / 2001:db8::1: IPv4 in IPv4, IPv6 in IPv6, IPv4 in IPv6, IPv6 in IPv4; UDP source ports per the spec's formulas.",
            "",
            &[io_port(0)],
            &lb(
                "encap = \"gue\"\ngue_port = 9886\ngue_source_v4 = \"198.18.0.1\"\ngue_source_v6 = \"2001:db8::1\"\n",
                &[
                    ("198.18.1.7", 53, "udp", "", REALS4),
                    ("2001:db8::11", 53, "udp", "", REALS6),
                    ("198.18.1.8", 53, "udp", "", REALS6),
                    ("2001:db8::12", 80, "tcp", "", REALS4),
                ],
            ),
        ),
        inputs: vec![pcap_input(0, frames)],
    }
}

/// An ICMPv4 error of `kind`/`code` from `from` to `to` quoting `quoted` (a whole frame).
fn icmp4_error(from: Ipv4Addr, to: &str, kind: u8, code: u8, quoted: &[u8]) -> Vec<u8> {
    let q = &quoted[14..];
    let ep = Endpoints4 {
        src_ip: from,
        dst_ip: v4(to),
        ..Endpoints4::default()
    };
    // An echo request's layout is the error's: 8-byte header, then the quoted bytes; the
    // identifier/sequence words become "unused" and the next-hop MTU (1400).
    let mut f = build::icmp4_echo_request(&ep, 0, 1400, q, None);
    f[34] = kind;
    f[35] = code;
    f[36..38].copy_from_slice(&[0, 0]);
    let c = checksum::of(&f[34..]);
    f[36..38].copy_from_slice(&c.to_be_bytes());
    f
}

fn icmp6_error(from: Ipv6Addr, to: &str, kind: u8, quoted: &[u8]) -> Vec<u8> {
    let q = &quoted[14..];
    let ep = Endpoints6 {
        src_ip: from,
        dst_ip: v6(to),
        ..Endpoints6::default()
    };
    let mut f = build::icmp6_echo_request(&ep, 0, 1280, q, None);
    f[54] = kind;
    f[55] = 0;
    f[56..58].copy_from_slice(&[0, 0]);
    let pseudo = checksum::pseudo_v6(&from, &v6(to), 58, (f.len() - 54) as u32);
    let c = checksum::finish(checksum::sum(pseudo, &f[54..]));
    f[56..58].copy_from_slice(&c.to_be_bytes());
    f
}

fn lb_icmp() -> Case {
    let router4 = v4("198.18.0.254");
    let router6 = v6("2001:db8::fe");
    let mut frames = Vec::new();
    for i in 0..4u16 {
        let sp = SPORTS[usize::from(i)];
        // The client's packet, then errors about the server's answer to it.
        let ep = ep4(c4(i), sp, "198.18.1.1", 80);
        frames.push(build::tcp4(&ep, TcpFlags::ACK, 2, 1, b"data", None));
        let answer = build::tcp4(&ep.reversed(), TcpFlags::ACK, 1, 2, &[0x55; 64], None);
        frames.push(icmp4_error(router4, "198.18.1.1", 3, 4, &answer)); // fragmentation needed
        frames.push(icmp4_error(router4, "198.18.1.1", 3, 1, &answer)); // host unreachable
        let e6 = ep6(c6(i), sp, "2001:db8::10", 443);
        frames.push(build::udp6(&e6, b"data", None));
        let answer6 = build::udp6(&e6.reversed(), &[0x66; 64], None);
        frames.push(icmp6_error(router6, "2001:db8::10", 2, &answer6)); // packet too big
        frames.push(icmp6_error(router6, "2001:db8::10", 1, &answer6)); // unreachable
    }
    // Echo requests to VIP addresses are answered; to other addresses they pass.
    frames.push(build::icmp4_echo_request(
        &ep4(c4(9), 0, "198.18.1.1", 0),
        7,
        1,
        b"ping vip",
        None,
    ));
    frames.push(build::icmp6_echo_request(
        &ep6(c6(9), 0, "2001:db8::10", 0),
        7,
        1,
        b"ping vip6",
        None,
    ));
    frames.push(build::icmp4_echo_request(
        &ep4(c4(9), 0, "198.18.1.99", 0),
        7,
        2,
        b"not a vip",
        None,
    ));
    // An error about a flow of no VIP passes; time exceeded (type 11) passes.
    let other = build::tcp4(
        &ep4(v4("198.18.1.99"), 80, "198.18.100.1", 1024),
        TcpFlags::ACK,
        1,
        1,
        b"",
        None,
    );
    frames.push(icmp4_error(router4, "198.18.1.99", 3, 4, &other));
    let answer = build::tcp4(
        &ep4(v4("198.18.1.1"), 80, "198.18.100.1", 1024),
        TcpFlags::ACK,
        1,
        1,
        b"",
        None,
    );
    frames.push(icmp4_error(router4, "198.18.1.1", 11, 0, &answer));
    Case {
        name: "lb-icmp",
        config: config(
            "lb-icmp",
            "ICMP fragmentation-needed and host-unreachable (v4), packet-too-big and unreachable (v6) about a VIP flow go, whole, to that flow's real (the same as its data packets); echo requests to VIP addresses are answered; other ICMP passes (unhandled).",
            "",
            &[io_port(0)],
            &lb(
                "",
                &[("198.18.1.1", 80, "tcp", "", REALS4), ("2001:db8::10", 443, "udp", "", REALS6)],
            ),
        ),
        inputs: vec![pcap_input(0, frames)],
    }
}

fn lb_quic() -> Case {
    let mut frames = Vec::new();
    let ids = [(1u8, 1025u32), (2, 70_000), (3, 0xdead_beef)];
    for (i, (ver, id)) in ids.iter().enumerate() {
        let i = i as u16;
        let cid = quic::cid_for(*ver, *id);
        let ep = ep4(c4(i), 50_000 + i, "198.18.1.10", 443);
        // Initial: no server id, the ring decides.
        frames.push(build::udp4(
            &ep,
            &quic::long_header(0, &cid, b"initial"),
            None,
        ));
        // Handshake (long header) and 1-RTT (short header): routed by the server id.
        frames.push(build::udp4(
            &ep4(c4(i + 10), 50_000 + i, "198.18.1.10", 443),
            &quic::long_header(2, &cid, b"handshake"),
            None,
        ));
        frames.push(build::udp4(
            &ep4(c4(i + 20), 50_000 + i, "198.18.1.10", 443),
            &quic::short_header(&cid, b"1-rtt"),
            None,
        ));
        frames.push(build::udp6(
            &ep6(c6(i), 50_000 + i, "2001:db8::13", 443),
            &quic::short_header(&cid, b"1-rtt v6"),
            None,
        ));
    }
    // An unknown server id and a DCID shorter than 8 bytes: the ring decides.
    frames.push(build::udp4(
        &ep4(c4(30), 50_100, "198.18.1.10", 443),
        &quic::short_header(&quic::cid_for(2, 4242), b"?"),
        None,
    ));
    frames.push(build::udp4(
        &ep4(c4(31), 50_101, "198.18.1.10", 443),
        &quic::long_header(2, &[0xc0, 0xde, 0xad, 0xbe, 0xef], b"short dcid"),
        None,
    ));
    Case {
        name: "lb-quic",
        config: config(
            "lb-quic",
            "QUIC VIPs: Handshake (long header) and 1-RTT (short header) packets go to the real of the server id in their connection id (versions 1, 2, 3); Initial packets, unknown ids and short DCIDs go by the ring.",
            "",
            &[io_port(0)],
            &format!(
                "{}\n[[handlers.quic_servers]]\nid = 1025\nreal = \"198.19.2.1\"\n\n[[handlers.quic_servers]]\nid = 70000\nreal = \"198.19.2.2\"\n\n[[handlers.quic_servers]]\nid = 3735928559\nreal = \"2001:db8:ffff::99\"\n",
                lb(
                    "",
                    &[
                        ("198.18.1.10", 443, "udp", "\"quic\"", REALS4),
                        ("2001:db8::13", 443, "udp", "\"quic\"", REALS6),
                    ],
                )
            ),
        ),
        inputs: vec![pcap_input(0, frames)],
    }
}

fn lb_conn_table() -> Case {
    let mut frames = Vec::new();
    let drained = quic::cid_for(2, 9);
    for i in 0..4u16 {
        let ep = ep4(c4(i), 7000 + i, "198.18.1.11", 443);
        // A 1-RTT packet names server 9, whose real (198.19.3.9) has weight 0: out of the
        // ring, like a real being drained. The flow is written into the connection table...
        frames.push(build::udp4(
            &ep,
            &quic::short_header(&drained, b"1-rtt"),
            None,
        ));
        // ...so its later packets without a server id stay on the drained real, while the
        // same packets from a fresh client go by the ring.
        frames.push(build::udp4(
            &ep,
            &quic::long_header(0, &drained, b"no id"),
            None,
        ));
        frames.push(build::udp4(
            &ep4(c4(i + 50), 7000 + i, "198.18.1.11", 443),
            &quic::long_header(0, &drained, b"no id"),
            None,
        ));
    }
    // TCP: a SYN is balanced by the ring and recorded; its data follows the entry.
    for i in 0..4u16 {
        let ep = ep4(c4(i), 8000 + i, "198.18.1.12", 80);
        frames.push(build::tcp4(&ep, TcpFlags::SYN, 1, 0, b"", None));
        frames.push(build::tcp4(&ep, TcpFlags::ACK, 2, 1, b"x", None));
    }
    Case {
        name: "lb-conn-table",
        config: config(
            "lb-conn-table",
            "connection-table stickiness: flows recorded on a real that is out of the ring (weight 0, reached by its QUIC server id) stay on it for their later packets, while other clients' identical packets go by the ring (removal of a live real is covered by dataplane/tests/lb.rs through the control API).",
            "",
            &[io_port(0)],
            &format!(
                "{}\n[[handlers.quic_servers]]\nid = 9\nreal = \"198.19.3.9\"\n",
                lb(
                    "",
                    &[
                        ("198.18.1.11", 443, "udp", "\"quic\"", &["198.19.3.1", "198.19.3.2", "198.19.3.9*0"]),
                        ("198.18.1.12", 80, "tcp", "", REALS4),
                    ],
                )
            ),
        ),
        inputs: vec![pcap_input(0, frames)],
    }
}

/// Recomputes the IPv4 header checksum of the header at `l3`.
fn fix_ipv4(f: &mut [u8], l3: usize) {
    let hl = usize::from(f[l3] & 0x0f) * 4;
    f[l3 + 10..l3 + 12].copy_from_slice(&[0, 0]);
    let c = checksum::of(&f[l3..l3 + hl]);
    f[l3 + 10..l3 + 12].copy_from_slice(&c.to_be_bytes());
}

fn lb_drops() -> Case {
    let good = || build::udp4(&ep4(c4(0), 1024, "198.18.1.1", 53), b"payload!", None);
    let mut mf = good();
    mf[20] |= 0x20; // more fragments
    fix_ipv4(&mut mf, 14);
    let mut later = good();
    later[21] = 0x10; // offset 128 bytes: no UDP header in it
    fix_ipv4(&mut later, 14);
    let mut options = good()[..34].to_vec();
    options.extend_from_slice(&[1, 1, 1, 1]); // four NOPs
    options.extend_from_slice(&good()[34..]);
    options[14] = 0x46;
    let total = u16::from_be_bytes([options[16], options[17]]) + 4;
    options[16..18].copy_from_slice(&total.to_be_bytes());
    fix_ipv4(&mut options, 14);
    let mut frag6 = build::udp6(&ep6(c6(0), 1024, "2001:db8::10", 53), b"12345678", None);
    frag6[20] = 44; // next header: fragment
    let frames = vec![
        mf,
        later,
        options,
        frag6,
        // 1514 bytes is the largest balanced frame; 1515 is too big.
        build::udp4(&ep4(c4(1), 1024, "198.18.1.1", 53), &[0x11; 1472], None),
        build::udp4(&ep4(c4(1), 1024, "198.18.1.1", 53), &[0x11; 1473], None),
        // A VIP without reals.
        build::udp4(&ep4(c4(2), 1024, "198.18.1.2", 53), b"nobody home", None),
        // A local VIP: continues down the chain (macswap).
        build::udp4(&ep4(c4(3), 1024, "198.18.1.3", 53), b"local", None),
        // Not a VIP: continues (macswap).
        build::udp4(&ep4(c4(4), 1024, "198.18.1.200", 53), b"elsewhere", None),
        good(),
    ];
    Case {
        name: "lb-drops",
        config: config(
            "lb-drops",
            "IPv4 fragments (MF, offset) and IPv6 fragment headers are `lb_fragment`, IPv4 options `lb_ip_options`, a 1515-byte frame to a VIP `lb_too_big` (1514 passes), a VIP without reals `lb_no_real`; a local VIP and non-VIP traffic continue to macswap.",
            "",
            &[io_port(0)],
            &format!(
                "{}{MACSWAP}",
                lb(
                    "",
                    &[
                        ("198.18.1.1", 53, "udp", "", REALS4),
                        ("2001:db8::10", 53, "udp", "", REALS6),
                        ("198.18.1.2", 53, "udp", "", &[]),
                        ("198.18.1.3", 53, "udp", "\"local-vip\"", REALS4),
                    ],
                )
            ),
        ),
        inputs: vec![pcap_input(0, frames)],
    }
}
