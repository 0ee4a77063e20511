//! Field-level comparison of frames and captures, for replay failure messages.
//!
//! A frame is decoded into an ordered list of `(field, value)` pairs (`eth.dst`, `vlan.id`,
//! `ipv4.ttl`, `udp.checksum`, ...) followed by the offset where the undecoded payload
//! starts. Two frames are compared field by field, then payload byte by byte, then by
//! length, and the first difference is named: `ipv4.ttl expected 63, got 64`. Frames that do
//! not decode (runts, garbage) fall back to `byte N expected 0x.., got 0x..`.
//!
//! The decoder has to describe *any* bytes, including the malformed frames the cases feed in
//! on purpose, so it never uses a checked constructor as a gate for the fields it can still
//! read: each header's fixed part is read through a smoltcp view over a slice whose length
//! was checked against that fixed part, and decoding stops (leaving the rest as payload) at
//! the first header that is cut short. It reads only; no accessor can panic. The views are
//! the data plane's own ([`crate::wire::view`], [`crate::wire::vlan`]), so field names and
//! meanings are those the handlers use.

use crate::wire::view::{
    ArpPacket, EthernetFrame, Icmpv4Packet, Icmpv6Packet, Ipv4Packet, Ipv6Packet, TcpPacket,
    UdpPacket,
};
use crate::wire::{vlan, MacAddr};

use crate::port::pcap::Captured;

/// A decoded frame: header fields in wire order and where the payload starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    pub fields: Vec<(&'static str, String)>,
    pub payload_off: usize,
}

fn mac(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn hex16(v: u16) -> String {
    format!("{v:#06x}")
}

fn be16(b: &[u8], at: usize) -> u16 {
    match b.get(at..at + 2) {
        Some(w) => u16::from_be_bytes([w[0], w[1]]),
        None => 0,
    }
}

const ETH_LEN: usize = 14;
/// 802.1ad service tag (outer tag of QinQ); decoded for display only.
const QINQ_TPID: u16 = 0x88a8;
const IPV4_MIN: usize = 20;
const IPV6_LEN: usize = 40;
const UDP_LEN: usize = 8;
const TCP_MIN: usize = 20;
const ICMP_MIN: usize = 8;
const ARP_ETH_IPV4: usize = 28;

/// Decodes as many headers of `frame` as are present.
pub fn decode(frame: &[u8]) -> Decoded {
    let mut f = Vec::new();
    let Some(eth) = frame.get(..ETH_LEN) else {
        return Decoded {
            fields: f,
            payload_off: 0,
        };
    };
    let eth = EthernetFrame::new_unchecked(eth);
    f.push(("eth.dst", MacAddr::from(eth.dst_addr()).to_string()));
    f.push(("eth.src", MacAddr::from(eth.src_addr()).to_string()));
    let mut ethertype = u16::from(eth.ethertype());
    f.push(("eth.type", hex16(ethertype)));
    let mut off = ETH_LEN;
    // Up to two tags (802.1Q, or 802.1ad outer + 802.1Q inner).
    for _ in 0..2 {
        if ethertype != vlan::TPID && ethertype != QINQ_TPID {
            break;
        }
        let Ok(tag) = vlan::Tag::new_checked(&frame[off..]) else {
            return Decoded {
                fields: f,
                payload_off: off,
            };
        };
        f.push(("vlan.pcp", tag.pcp().to_string()));
        f.push(("vlan.dei", u8::from(tag.dei()).to_string()));
        f.push(("vlan.id", tag.vid().to_string()));
        ethertype = tag.ethertype();
        f.push(("vlan.type", hex16(ethertype)));
        off += vlan::HEADER_LEN;
    }
    let rest = &frame[off..];
    let payload_off = match ethertype {
        0x0806 => off + arp(rest, &mut f),
        0x0800 => off + ipv4(rest, &mut f),
        0x86dd => off + ipv6(rest, &mut f),
        _ => off,
    };
    Decoded {
        fields: f,
        payload_off,
    }
}

/// Returns the bytes consumed.
fn arp(b: &[u8], f: &mut Vec<(&'static str, String)>) -> usize {
    // Only Ethernet/IPv4 ARP is decoded field by field; anything else stays payload.
    if b.len() < ARP_ETH_IPV4 || be16(b, 0) != 1 || be16(b, 2) != 0x0800 || b[4] != 6 || b[5] != 4 {
        return 0;
    }
    let p = ArpPacket::new_unchecked(&b[..ARP_ETH_IPV4]);
    f.push(("arp.htype", u16::from(p.hardware_type()).to_string()));
    f.push(("arp.ptype", hex16(u16::from(p.protocol_type()))));
    f.push(("arp.hlen", p.hardware_len().to_string()));
    f.push(("arp.plen", p.protocol_len().to_string()));
    f.push(("arp.oper", u16::from(p.operation()).to_string()));
    f.push(("arp.sha", mac(p.source_hardware_addr())));
    f.push(("arp.spa", ipv4_addr(p.source_protocol_addr())));
    f.push(("arp.tha", mac(p.target_hardware_addr())));
    f.push(("arp.tpa", ipv4_addr(p.target_protocol_addr())));
    ARP_ETH_IPV4
}

fn ipv4_addr(b: &[u8]) -> String {
    match <[u8; 4]>::try_from(b) {
        Ok(a) => std::net::Ipv4Addr::from(a).to_string(),
        Err(_) => mac(b),
    }
}

fn ipv4(b: &[u8], f: &mut Vec<(&'static str, String)>) -> usize {
    let Some(h) = b.get(..IPV4_MIN) else {
        return 0;
    };
    let p = Ipv4Packet::new_unchecked(h);
    f.push(("ipv4.version", p.version().to_string()));
    f.push(("ipv4.ihl", (p.header_len() / 4).to_string()));
    f.push(("ipv4.dscp", p.dscp().to_string()));
    f.push(("ipv4.ecn", p.ecn().to_string()));
    f.push(("ipv4.total_len", p.total_len().to_string()));
    f.push(("ipv4.id", hex16(p.ident())));
    f.push(("ipv4.flags", format!("{:#x}", h[6] >> 5)));
    f.push(("ipv4.frag_off", p.frag_offset().to_string()));
    f.push(("ipv4.ttl", p.hop_limit().to_string()));
    f.push(("ipv4.proto", u8::from(p.next_header()).to_string()));
    f.push(("ipv4.checksum", hex16(p.checksum())));
    f.push(("ipv4.src", p.src_addr().to_string()));
    f.push(("ipv4.dst", p.dst_addr().to_string()));
    let hlen = p.header_len() as usize;
    if hlen < IPV4_MIN || hlen > b.len() {
        return IPV4_MIN;
    }
    if hlen > IPV4_MIN {
        f.push(("ipv4.options", hex(&b[IPV4_MIN..hlen])));
    }
    // A first fragment only: later fragments carry no transport header.
    if p.frag_offset() != 0 {
        return hlen;
    }
    let end = (p.total_len() as usize).clamp(hlen, b.len());
    hlen + l4(u8::from(p.next_header()), false, &b[hlen..end], f)
}

fn ipv6(b: &[u8], f: &mut Vec<(&'static str, String)>) -> usize {
    let Some(h) = b.get(..IPV6_LEN) else {
        return 0;
    };
    let p = Ipv6Packet::new_unchecked(h);
    f.push(("ipv6.version", p.version().to_string()));
    f.push(("ipv6.traffic_class", p.traffic_class().to_string()));
    f.push(("ipv6.flow_label", format!("{:#x}", p.flow_label())));
    f.push(("ipv6.payload_len", p.payload_len().to_string()));
    f.push(("ipv6.next_header", u8::from(p.next_header()).to_string()));
    f.push(("ipv6.hop_limit", p.hop_limit().to_string()));
    f.push(("ipv6.src", p.src_addr().to_string()));
    f.push(("ipv6.dst", p.dst_addr().to_string()));
    let end = (IPV6_LEN + p.payload_len() as usize).min(b.len());
    IPV6_LEN + l4(u8::from(p.next_header()), true, &b[IPV6_LEN..end], f)
}

/// Transport header over `b` (bounded by the IP length); returns the bytes consumed.
fn l4(proto: u8, v6: bool, b: &[u8], f: &mut Vec<(&'static str, String)>) -> usize {
    match (proto, v6) {
        (17, _) => {
            let Some(h) = b.get(..UDP_LEN) else { return 0 };
            let p = UdpPacket::new_unchecked(h);
            f.push(("udp.src_port", p.src_port().to_string()));
            f.push(("udp.dst_port", p.dst_port().to_string()));
            f.push(("udp.len", p.len().to_string()));
            f.push(("udp.checksum", hex16(p.checksum())));
            UDP_LEN
        }
        (6, _) => {
            let Some(h) = b.get(..TCP_MIN) else { return 0 };
            let p = TcpPacket::new_unchecked(h);
            f.push(("tcp.src_port", p.src_port().to_string()));
            f.push(("tcp.dst_port", p.dst_port().to_string()));
            f.push(("tcp.seq", p.seq_number().0.to_string()));
            f.push(("tcp.ack", p.ack_number().0.to_string()));
            f.push(("tcp.data_off", (p.header_len() / 4).to_string()));
            f.push(("tcp.flags", format!("{:#05x}", be16(h, 12) & 0x01ff)));
            f.push(("tcp.window", p.window_len().to_string()));
            f.push(("tcp.checksum", hex16(p.checksum())));
            f.push(("tcp.urgent", p.urgent_at().to_string()));
            let hlen = p.header_len() as usize;
            if hlen > TCP_MIN && hlen <= b.len() {
                f.push(("tcp.options", hex(&b[TCP_MIN..hlen])));
                return hlen;
            }
            TCP_MIN
        }
        (1, false) => {
            let Some(h) = b.get(..ICMP_MIN) else { return 0 };
            let p = Icmpv4Packet::new_unchecked(h);
            let ty = u8::from(p.msg_type());
            f.push(("icmp.type", ty.to_string()));
            f.push(("icmp.code", p.msg_code().to_string()));
            f.push(("icmp.checksum", hex16(p.checksum())));
            if ty == 0 || ty == 8 {
                f.push(("icmp.id", hex16(p.echo_ident())));
                f.push(("icmp.seq", p.echo_seq_no().to_string()));
            } else {
                f.push(("icmp.rest", hex(&h[4..8])));
            }
            ICMP_MIN
        }
        (58, true) => {
            let Some(h) = b.get(..ICMP_MIN) else { return 0 };
            let p = Icmpv6Packet::new_unchecked(h);
            let ty = u8::from(p.msg_type());
            f.push(("icmp6.type", ty.to_string()));
            f.push(("icmp6.code", p.msg_code().to_string()));
            f.push(("icmp6.checksum", hex16(p.checksum())));
            if ty == 128 || ty == 129 {
                f.push(("icmp6.id", hex16(p.echo_ident())));
                f.push(("icmp6.seq", p.echo_seq_no().to_string()));
            } else {
                f.push(("icmp6.rest", hex(&h[4..8])));
            }
            ICMP_MIN
        }
        _ => 0,
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The first difference between two frames, or `None` when they are equal.
pub fn diff_frames(expected: &[u8], got: &[u8]) -> Option<String> {
    if expected == got {
        return None;
    }
    let (e, g) = (decode(expected), decode(got));
    for (ef, gf) in e.fields.iter().zip(&g.fields) {
        if ef.0 != gf.0 {
            return Some(format!(
                "expected {} = {}, got {} = {}",
                ef.0, ef.1, gf.0, gf.1
            ));
        }
        if ef.1 != gf.1 {
            return Some(format!("{} expected {}, got {}", ef.0, ef.1, gf.1));
        }
    }
    if e.fields.len() != g.fields.len() {
        let described = |d: &Decoded| match d.fields.get(e.fields.len().min(g.fields.len())) {
            Some((k, v)) => format!("{k} = {v}"),
            None => "no more headers".to_string(),
        };
        return Some(format!("expected {}, got {}", described(&e), described(&g)));
    }
    // Same headers: compare what follows them.
    let off = e.payload_off.min(g.payload_off);
    let (ep, gp) = (
        &expected[off.min(expected.len())..],
        &got[off.min(got.len())..],
    );
    if let Some(i) = ep.iter().zip(gp).position(|(a, b)| a != b) {
        return Some(if off == 0 {
            format!("byte {i} expected {:#04x}, got {:#04x}", ep[i], gp[i])
        } else {
            format!(
                "payload byte {i} (frame byte {}) expected {:#04x}, got {:#04x}",
                off + i,
                ep[i],
                gp[i]
            )
        });
    }
    Some(format!(
        "frame length expected {}, got {}",
        expected.len(),
        got.len()
    ))
}

fn ts(ns: u64) -> String {
    format!("{}.{:09}", ns / 1_000_000_000, ns % 1_000_000_000)
}

/// Compares two captures: the first differing packet (data, then timestamp) and the packet
/// count. `name` labels the messages (`out-p0`).
pub fn diff_captures(name: &str, expected: &[Captured], got: &[Captured]) -> Vec<String> {
    let mut out = Vec::new();
    for (i, (e, g)) in expected.iter().zip(got).enumerate() {
        if let Some(d) = diff_frames(&e.data, &g.data) {
            out.push(format!("{name} packet {i}: {d}"));
            break;
        }
        if e.ts_ns != g.ts_ns {
            out.push(format!(
                "{name} packet {i}: timestamp expected {}, got {}",
                ts(e.ts_ns),
                ts(g.ts_ns)
            ));
            break;
        }
    }
    if expected.len() != got.len() {
        out.push(format!(
            "{name}: expected {} packets, got {}",
            expected.len(),
            got.len()
        ));
    }
    out
}

/// One line describing a frame, for listings: `eth.dst=.. eth.src=.. ... +N payload bytes`.
pub fn describe(frame: &[u8]) -> String {
    let d = decode(frame);
    let mut s: Vec<String> = d.fields.iter().map(|(k, v)| format!("{k}={v}")).collect();
    s.push(format!(
        "+{} bytes",
        frame.len().saturating_sub(d.payload_off)
    ));
    s.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ethernet + IPv4 + UDP, 42 bytes of headers and 4 of payload, written out by hand.
    fn udp4() -> Vec<u8> {
        let mut f = vec![
            0x02, 0, 0, 0, 0, 0x01, 0x02, 0, 0, 0, 0, 0x02, 0x08, 0x00, // eth
            0x45, 0x00, 0x00, 32, 0x12, 0x34, 0x40, 0x00, 64, 17, 0, 0, 198, 18, 0, 2, 198, 18, 0,
            1, // ipv4
            0x30, 0x39, 0x00, 0x07, 0x00, 12, 0xab, 0xcd, // udp
            b'p', b'i', b'n', b'g',
        ];
        let mut sum: u32 = f[14..34]
            .chunks(2)
            .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
            .sum();
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        f[24..26].copy_from_slice(&(!(sum as u16)).to_be_bytes());
        f
    }

    #[test]
    fn decodes_ethernet_ipv4_udp_in_order() {
        let d = decode(&udp4());
        let names: Vec<&str> = d.fields.iter().map(|x| x.0).collect();
        assert_eq!(&names[..3], &["eth.dst", "eth.src", "eth.type"]);
        assert!(names.contains(&"ipv4.ttl") && names.ends_with(&["udp.checksum"]));
        assert_eq!(d.payload_off, 42);
        assert!(d.fields.contains(&("ipv4.dst", "198.18.0.1".to_string())));
        assert!(d
            .fields
            .contains(&("eth.dst", "02:00:00:00:00:01".to_string())));
    }

    #[test]
    fn names_the_first_differing_field() {
        let e = udp4();
        let mut g = e.clone();
        g[22] = 63;
        assert_eq!(diff_frames(&e, &g).unwrap(), "ipv4.ttl expected 64, got 63");
        let mut g = e.clone();
        g[43] = b'I';
        assert_eq!(
            diff_frames(&e, &g).unwrap(),
            "payload byte 1 (frame byte 43) expected 0x69, got 0x49"
        );
        let mut g = e.clone();
        g.push(0);
        assert_eq!(
            diff_frames(&e, &g).unwrap(),
            "frame length expected 46, got 47"
        );
        assert_eq!(diff_frames(&e, &e), None);
    }

    #[test]
    fn falls_back_to_bytes_for_runts_and_survives_any_input() {
        assert_eq!(
            diff_frames(&[1, 2, 3], &[1, 9, 3]).unwrap(),
            "byte 1 expected 0x02, got 0x09"
        );
        let base = udp4();
        // Every prefix, and every byte set to extremes, decodes without panicking.
        for n in 0..base.len() {
            let _ = decode(&base[..n]);
            for v in [0u8, 0xff] {
                let mut x = base.clone();
                x[n] = v;
                let _ = decode(&x);
                let _ = diff_frames(&base, &x);
            }
        }
    }

    #[test]
    fn vlan_and_capture_level_differences() {
        let mut tagged = udp4();
        tagged.splice(12..12, [0x81, 0x00, 0x00, 100]);
        let d = decode(&tagged);
        assert!(d.fields.contains(&("vlan.id", "100".to_string())));
        assert!(d.fields.contains(&("vlan.type", "0x0800".to_string())));
        let a = Captured {
            ts_ns: 1_000,
            data: udp4(),
        };
        let b = Captured {
            ts_ns: 2_000,
            data: udp4(),
        };
        assert_eq!(
            diff_captures("out-p0", &[a.clone(), a.clone()], std::slice::from_ref(&a)),
            vec!["out-p0: expected 2 packets, got 1".to_string()]
        );
        assert_eq!(
            diff_captures("out-p0", &[a], &[b]),
            vec!["out-p0 packet 0: timestamp expected 0.000001000, got 0.000002000".to_string()]
        );
    }
}
