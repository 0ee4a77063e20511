//! Encapsulation towards a real, in place: the frame grows at the front into its headroom
//! (no copy of the packet), the Ethernet header (and VLAN tag, if any) moves forward, and
//! the outer IPv4 or IPv6 header (plus a UDP header for GUE) is written between it and the
//! original IP packet. Ethernet padding after the inner packet stays where it is, as with
//! Katran's `bpf_xdp_adjust_head`.
//!
//! Field values are the spec's: outer IPv4 `0x45`, TOS copied, id 0, no DF, TTL 64,
//! protocol 4 (or 17 for GUE), full header checksum; outer IPv6 traffic class copied, flow
//! label 0, hop limit 64, next header 4/41 (or 17); GUE UDP checksum 0 (Katran's `GUE_CSUM`).
//! Outer source addresses for IP-in-IP are derived from the client's address and port so
//! that the real's RSS spreads flows: `172.16.(s2^p1).(s3^p0)` and `0100::` with
//! `s0^p0, s1^p1, s2, s3` in bytes 12..15.

use crate::mem::Frame;
use crate::pipeline::DropReason;
use crate::wire::{checksum, ethertype, ip_proto, MacAddr};

use super::config::Encap;

const IPV4: usize = 20;
const IPV6: usize = 40;
const UDP: usize = 8;
const TTL: u8 = 64;

/// Where to send and how to wrap, fixed per configuration version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Params {
    pub router_mac: MacAddr,
    pub encap: Encap,
    pub gue_port: u16,
    pub gue_source_v4: [u8; 4],
    pub gue_source_v6: [u8; 16],
}

/// The inner packet and the values the outer header is derived from.
#[derive(Debug, Clone, Copy)]
pub struct Inner {
    /// Offset of the inner IP header (the L2 header's length).
    pub l3_off: usize,
    pub v6: bool,
    /// The inner IP packet's length (IPv4 total length; IPv6 40 + payload length).
    pub len: usize,
    /// IPv4 TOS / IPv6 traffic class.
    pub tos: u8,
    /// s0..s3: the flow's source IPv4 address, or the last four bytes of its IPv6 one.
    pub s: [u8; 4],
    /// p0 p1: the wire bytes of the flow's source port.
    pub p: [u8; 2],
}

/// The outer IPv4 IP-in-IP source for `s` and `p`.
#[inline]
pub fn ipip_source_v4(s: [u8; 4], p: [u8; 2]) -> [u8; 4] {
    [172, 16, s[2] ^ p[1], s[3] ^ p[0]]
}

/// The outer IPv6 IP-in-IP source for `s` and `p`.
#[inline]
pub fn ipip_source_v6(s: [u8; 4], p: [u8; 2]) -> [u8; 16] {
    let mut a = [0u8; 16];
    a[0] = 0x01;
    a[12] = s[0] ^ p[0];
    a[13] = s[1] ^ p[1];
    a[14] = s[2];
    a[15] = s[3];
    a
}

/// The GUE UDP source port's wire bytes.
#[inline]
pub fn gue_source_port(outer_v6: bool, inner_v6: bool, s: [u8; 4], p: [u8; 2]) -> [u8; 2] {
    match (outer_v6, inner_v6) {
        (false, _) => [p[1] ^ s[2], p[0] ^ s[3]],
        (true, true) => [s[0] ^ p[0], s[1] ^ p[1]],
        (true, false) => [s[2] ^ p[0], s[3] ^ p[1]],
    }
}

/// Outer header bytes for a real of this family.
#[inline]
pub fn outer_len(real_v6: bool, encap: Encap) -> usize {
    (if real_v6 { IPV6 } else { IPV4 }) + if encap == Encap::Gue { UDP } else { 0 }
}

/// Wraps the packet of `frame` towards `real` (4 or 16 bytes). On error nothing changed.
pub fn encapsulate(
    frame: &mut Frame,
    inner: &Inner,
    real: &[u8],
    params: &Params,
) -> Result<(), DropReason> {
    let real_v6 = real.len() == 16;
    let n = outer_len(real_v6, params.encap);
    let l2 = inner.l3_off;
    if l2 < 14 || frame.len() < l2 || frame.headroom() < n {
        return Err(DropReason::LbNoHeadroom);
    }
    let Ok(inner_len) = u16::try_from(inner.len) else {
        return Err(DropReason::LbTooBig);
    };
    if usize::from(inner_len) + n > usize::from(u16::MAX) {
        return Err(DropReason::LbTooBig);
    }
    let mut old_dst = [0u8; 6];
    old_dst.copy_from_slice(&frame.data()[..6]);
    let Some(d) = frame.try_prepend(n) else {
        return Err(DropReason::LbNoHeadroom);
    };
    d.copy_within(n..n + l2, 0);
    d[..6].copy_from_slice(&params.router_mac.0);
    d[6..12].copy_from_slice(&old_dst);
    let et = if real_v6 {
        ethertype::IPV6
    } else {
        ethertype::IPV4
    };
    d[l2 - 2..l2].copy_from_slice(&et.to_be_bytes());
    let gue = params.encap == Encap::Gue;
    let udp_len = inner_len + UDP as u16;
    let out = &mut d[l2..l2 + n];
    if real_v6 {
        let (ip, rest) = out.split_at_mut(IPV6);
        ip[0] = 0x60 | inner.tos >> 4;
        ip[1] = inner.tos << 4;
        ip[2] = 0;
        ip[3] = 0;
        let payload = if gue { udp_len } else { inner_len };
        ip[4..6].copy_from_slice(&payload.to_be_bytes());
        ip[6] = if gue {
            ip_proto::UDP
        } else if inner.v6 {
            41
        } else {
            4
        };
        ip[7] = TTL;
        let src = if gue {
            params.gue_source_v6
        } else {
            ipip_source_v6(inner.s, inner.p)
        };
        ip[8..24].copy_from_slice(&src);
        ip[24..40].copy_from_slice(real);
        if gue {
            write_udp(
                rest,
                gue_source_port(true, inner.v6, inner.s, inner.p),
                params.gue_port,
                udp_len,
            );
        }
    } else {
        let (ip, rest) = out.split_at_mut(IPV4);
        ip[0] = 0x45;
        ip[1] = inner.tos;
        let total = inner_len + n as u16;
        ip[2..4].copy_from_slice(&total.to_be_bytes());
        ip[4..10].copy_from_slice(&[0, 0, 0, 0, TTL, if gue { ip_proto::UDP } else { 4 }]);
        ip[10] = 0;
        ip[11] = 0;
        let src = if gue {
            params.gue_source_v4
        } else {
            ipip_source_v4(inner.s, inner.p)
        };
        ip[12..16].copy_from_slice(&src);
        ip[16..20].copy_from_slice(real);
        let c = checksum::of(ip);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        if gue {
            write_udp(
                rest,
                gue_source_port(false, inner.v6, inner.s, inner.p),
                params.gue_port,
                udp_len,
            );
        }
    }
    Ok(())
}

#[inline]
fn write_udp(u: &mut [u8], sport: [u8; 2], dport: u16, len: u16) {
    u[0..2].copy_from_slice(&sport);
    u[2..4].copy_from_slice(&dport.to_be_bytes());
    u[4..6].copy_from_slice(&len.to_be_bytes());
    u[6..8].copy_from_slice(&[0, 0]);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The spec's example: 192.168.1.1:31337 -> 172.16.104.123.
    #[test]
    fn ipip_v4_source_check_value() {
        let p = 31337u16.to_be_bytes();
        assert_eq!(ipip_source_v4([192, 168, 1, 1], p), [172, 16, 104, 123]);
    }

    #[test]
    fn ipip_v6_source() {
        let p = 31337u16.to_be_bytes(); // 7a 69
        let a = ipip_source_v6([192, 168, 1, 1], p);
        assert_eq!(
            a,
            [
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
                192 ^ 0x7a,
                168 ^ 0x69,
                1,
                1
            ]
        );
    }

    #[test]
    fn gue_ports() {
        let s = [192, 168, 1, 1];
        let p = [0x7a, 0x69];
        assert_eq!(gue_source_port(false, false, s, p), [0x69 ^ 1, 0x7a ^ 1]);
        assert_eq!(gue_source_port(true, true, s, p), [192 ^ 0x7a, 168 ^ 0x69]);
        assert_eq!(gue_source_port(true, false, s, p), [1 ^ 0x7a, 1 ^ 0x69]);
    }
}
