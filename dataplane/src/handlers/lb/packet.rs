//! What the balancer reads from a packet: the spec's drop rules for IP options and
//! fragments, the flow (addresses, ports, protocol, TCP flags), the flow embedded in an ICMP
//! error (addresses and ports swapped back into the client's direction), and the in-place
//! ICMP echo reply.
//!
//! Offsets come from the receive-side [`Layout`], but every read is a checked `get`, so a
//! stale or forged layout makes the packet pass or drop, never panic.

use crate::pipeline::DropReason;
use crate::wire::{checksum, ip_proto, Layout, L3};

/// A flow to balance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Flow {
    /// Client address (IPv4 in the first four bytes).
    pub src: [u8; 16],
    /// VIP address.
    pub dst: [u8; 16],
    pub v6: bool,
    pub sport: u16,
    pub dport: u16,
    /// TCP or UDP.
    pub proto: u8,
    /// Taken from the packet embedded in an ICMP error.
    pub icmp: bool,
    pub syn: bool,
    pub rst: bool,
    /// IPv4 TOS / IPv6 traffic class of the (outer) packet.
    pub tos: u8,
    /// Length of the whole IP packet as its header states it.
    pub ip_len: usize,
    /// Offset and length of the UDP payload (for QUIC), when the flow is plain UDP.
    pub payload: (usize, usize),
}

/// What to do with a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// Not ours: leave it to the rest of the chain.
    Pass,
    Drop(DropReason),
    /// An ICMP / ICMPv6 echo request to `dst` (answer it if `dst` is a VIP address).
    Echo {
        dst: [u8; 16],
        v6: bool,
    },
    Flow(Flow),
}

#[inline]
fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

#[inline]
fn addr4(b: &[u8], at: usize) -> Option<[u8; 16]> {
    let mut a = [0; 16];
    a[..4].copy_from_slice(b.get(at..at + 4)?);
    Some(a)
}

#[inline]
fn addr6(b: &[u8], at: usize) -> Option<[u8; 16]> {
    b.get(at..at + 16)?.try_into().ok()
}

/// Reads the ports (and TCP flags) of the transport header at `l4` of `pkt`. `None`: the
/// header is cut short.
#[inline]
fn ports(pkt: &[u8], l4: usize, proto: u8) -> Option<(u16, u16, u8)> {
    let need = if proto == ip_proto::TCP { 20 } else { 8 };
    let h = pkt.get(l4..l4 + need)?;
    let flags = if proto == ip_proto::TCP { h[13] } else { 0 };
    Some((
        u16::from_be_bytes([h[0], h[1]]),
        u16::from_be_bytes([h[2], h[3]]),
        flags,
    ))
}

/// Classifies the packet of `frame` (whose headers `layout` locates).
pub fn parse(frame: &[u8], layout: &Layout) -> Parsed {
    let l3 = usize::from(layout.l3_off);
    match layout.l3 {
        L3::Ipv4 => parse_v4(frame, l3).unwrap_or(Parsed::Drop(DropReason::Truncated)),
        L3::Ipv6 => parse_v6(frame, l3).unwrap_or(Parsed::Drop(DropReason::Truncated)),
        _ => Parsed::Pass,
    }
}

fn parse_v4(frame: &[u8], l3: usize) -> Option<Parsed> {
    let h = frame.get(l3..l3 + 20)?;
    if h[0] & 0x0f != 5 {
        return Some(Parsed::Drop(DropReason::LbIpOptions));
    }
    if u16::from_be_bytes([h[6], h[7]]) & 0x3fff != 0 {
        return Some(Parsed::Drop(DropReason::LbFragment));
    }
    let total = usize::from(u16::from_be_bytes([h[2], h[3]]));
    // The IP packet, without Ethernet padding.
    let pkt = frame.get(l3..l3 + total)?;
    let mut f = Flow {
        v6: false,
        tos: h[1],
        ip_len: total,
        proto: h[9],
        src: addr4(h, 12)?,
        dst: addr4(h, 16)?,
        ..Flow::default()
    };
    match f.proto {
        ip_proto::TCP | ip_proto::UDP => {
            let (sport, dport, flags) = ports(pkt, 20, f.proto)?;
            f.sport = sport;
            f.dport = dport;
            f.syn = flags & 0x02 != 0;
            f.rst = flags & 0x04 != 0;
            if f.proto == ip_proto::UDP {
                f.payload = (l3 + 28, total.saturating_sub(28));
            }
            Some(Parsed::Flow(f))
        }
        ip_proto::ICMP => {
            let icmp = pkt.get(20..28)?;
            match icmp[0] {
                8 => Some(Parsed::Echo {
                    dst: f.dst,
                    v6: false,
                }),
                3 => {
                    // The datagram that caused the error: from the VIP to the client.
                    let inner = pkt.get(28..48)?;
                    if inner[0] & 0x0f != 5 {
                        return Some(Parsed::Drop(DropReason::LbIpOptions));
                    }
                    let proto = inner[9];
                    if proto != ip_proto::TCP && proto != ip_proto::UDP {
                        return Some(Parsed::Pass);
                    }
                    let (isport, idport, _) = ports(pkt, 48, proto)?;
                    f.proto = proto;
                    f.icmp = true;
                    f.src = addr4(inner, 16)?;
                    f.dst = addr4(inner, 12)?;
                    f.sport = idport;
                    f.dport = isport;
                    Some(Parsed::Flow(f))
                }
                _ => Some(Parsed::Pass),
            }
        }
        _ => Some(Parsed::Pass),
    }
}

fn parse_v6(frame: &[u8], l3: usize) -> Option<Parsed> {
    let h = frame.get(l3..l3 + 40)?;
    let next = h[6];
    if next == 44 {
        return Some(Parsed::Drop(DropReason::LbFragment));
    }
    let payload = usize::from(u16::from_be_bytes([h[4], h[5]]));
    let pkt = frame.get(l3..l3 + 40 + payload)?;
    let mut f = Flow {
        v6: true,
        tos: (h[0] << 4) | (h[1] >> 4),
        ip_len: 40 + payload,
        proto: next,
        src: addr6(h, 8)?,
        dst: addr6(h, 24)?,
        ..Flow::default()
    };
    match next {
        ip_proto::TCP | ip_proto::UDP => {
            let (sport, dport, flags) = ports(pkt, 40, next)?;
            f.sport = sport;
            f.dport = dport;
            f.syn = flags & 0x02 != 0;
            f.rst = flags & 0x04 != 0;
            if next == ip_proto::UDP {
                f.payload = (l3 + 48, payload.saturating_sub(8));
            }
            Some(Parsed::Flow(f))
        }
        ip_proto::ICMPV6 => {
            let icmp = pkt.get(40..48)?;
            match icmp[0] {
                128 => Some(Parsed::Echo {
                    dst: f.dst,
                    v6: true,
                }),
                1 | 2 => {
                    let inner = pkt.get(48..88)?;
                    let proto = inner[6];
                    if proto != ip_proto::TCP && proto != ip_proto::UDP {
                        return Some(Parsed::Pass);
                    }
                    let (isport, idport, _) = ports(pkt, 88, proto)?;
                    f.proto = proto;
                    f.icmp = true;
                    f.src = addr6(inner, 24)?;
                    f.dst = addr6(inner, 8)?;
                    f.sport = idport;
                    f.dport = isport;
                    Some(Parsed::Flow(f))
                }
                _ => Some(Parsed::Pass),
            }
        }
        _ => Some(Parsed::Pass),
    }
}

/// Turns the echo request at `l3` into its reply in place: ICMP type, addresses swapped,
/// TTL / hop limit 64, MACs swapped, checksums updated (RFC 1624). False (nothing changed)
/// when the headers are not all there.
pub fn echo_reply(frame: &mut [u8], l3: usize, v6: bool) -> bool {
    if v6 {
        let Some(h) = frame.get(l3..l3 + 48) else {
            return false;
        };
        let code = h[41];
        let c = match be16(h, 42) {
            Some(c) => checksum::update16(
                c,
                u16::from_be_bytes([128, code]),
                u16::from_be_bytes([129, code]),
            ),
            None => return false,
        };
        let p = &mut frame[l3..l3 + 48];
        p[40] = 129;
        p[42..44].copy_from_slice(&c.to_be_bytes());
        p[7] = 64;
        let (a, b) = p[8..40].split_at_mut(16);
        a.swap_with_slice(b);
    } else {
        let Some(h) = frame.get(l3..l3 + 28) else {
            return false;
        };
        let code = h[21];
        let (Some(ic), Some(hc)) = (be16(h, 22), be16(h, 10)) else {
            return false;
        };
        let ic = checksum::update16(
            ic,
            u16::from_be_bytes([8, code]),
            u16::from_be_bytes([0, code]),
        );
        let hc = checksum::update16(
            hc,
            u16::from_be_bytes([h[8], h[9]]),
            u16::from_be_bytes([64, h[9]]),
        );
        let p = &mut frame[l3..l3 + 28];
        p[20] = 0;
        p[22..24].copy_from_slice(&ic.to_be_bytes());
        p[8] = 64;
        p[10..12].copy_from_slice(&hc.to_be_bytes());
        let (a, b) = p[12..20].split_at_mut(4);
        a.swap_with_slice(b);
    }
    let (a, b) = frame[..12].split_at_mut(6);
    a.swap_with_slice(b);
    true
}
