//! The receive-side parse: one validating pass over a frame's headers that yields a
//! [`Layout`] (offsets only) or the [`DropReason`] that names what is wrong, plus the
//! symmetric [`flow_hash`] used to spread flows over workers.
//!
//! Shape: the parse runs once per packet in the port's receive path and stores offsets in the
//! frame's metadata, so handlers neither parse again nor re-check lengths the parse already
//! checked (they still use checked views, so a stale layout cannot make them panic). Every
//! header is read through smoltcp's views where one exists; the checks are written out here
//! rather than taken from smoltcp's `check_len` because we need to tell *which* rule failed
//! (each drop reason has its own counter), and smoltcp reports a single error.
//!
//! Rules, in the order they are checked (first failure wins):
//! - Ethernet: fewer than 14 bytes: `Runt`. One 802.1Q tag (TPID 0x8100) is understood; a
//!   tag cut short is `Truncated`. A second tag (QinQ) or an 802.1ad outer tag is not looked
//!   into: the frame is `L3::Other(ethertype)`.
//! - ARP: shorter than its fixed part or than the address lengths it declares (28 bytes for
//!   Ethernet/IPv4): `Truncated`. Other hardware/protocol types are valid layouts; the ARP
//!   handler decides about them.
//! - IPv4: fewer than 20 bytes: `Truncated`; version not 4: `BadVersion`; IHL < 5: `BadIhl`;
//!   IHL*4 beyond the frame: `Truncated`; total length below IHL*4 or beyond the frame:
//!   `BadLength`; header checksum wrong: `BadChecksum`.
//! - IPv6: fewer than 40 bytes: `Truncated`; version not 6: `BadVersion`; payload length
//!   beyond the frame: `BadLength`. Extension headers are not walked: `l4_proto` is the first
//!   next-header value, and a packet behind extension headers is a valid layout of that
//!   "protocol" (it is what the XDP program can afford to do too, and the two must agree).
//! - Transport, only for an IPv4 packet that is not a later fragment (fragment offset 0) and
//!   for IPv6: UDP fewer than 8 bytes: `Truncated`, UDP length < 8 or > `l4_len`:
//!   `BadLength` (except in a first fragment, where the datagram continues in later
//!   fragments and only the header must fit); TCP fewer than 20 bytes: `Truncated`, data
//!   offset < 5: `BadLength`, data offset * 4 beyond `l4_len`: `Truncated`; ICMPv4 (in IPv4)
//!   or ICMPv6 (in IPv6) fewer than 8 bytes: `Truncated`. Later fragments and other protocol
//!   numbers are valid layouts whose `l4_*` fields describe the IP payload.
//!
//! Ethernet padding after the IP packet is allowed and ignored: `l4_len` comes from the IP
//! length fields, never from the frame length.

use smoltcp::wire::{ArpPacket, EthernetFrame, Ipv4Packet, Ipv6Packet, TcpPacket, UdpPacket};

use super::{checksum, ethertype, ip_proto, vlan};
use crate::pipeline::DropReason;

/// Network layer found by [`parse`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum L3 {
    /// Nothing parsed yet (the default; [`parse`] never returns it).
    #[default]
    None,
    Arp,
    Ipv4,
    Ipv6,
    /// Another ethertype, carried through untouched.
    Other(u16),
}

/// Header offsets of one frame, found once on receive and carried in the frame's metadata so
/// that handlers do not parse again.
///
/// For frames that are not IP (ARP, other ethertypes) `l4_proto` and `l4_len` are 0 and
/// `l4_off` equals `l3_off`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Layout {
    /// 802.1Q tag control information (PCP, DEI, VLAN id), when the frame carries one tag.
    pub vlan: Option<u16>,
    /// Offset of the network header (14, or 18 behind one VLAN tag).
    pub l3_off: u16,
    pub l3: L3,
    /// IP protocol number of the transport header (0 when not IP).
    pub l4_proto: u8,
    /// Offset of the transport header.
    pub l4_off: u16,
    /// Bytes of transport header + payload, per the IP length fields (frames may carry
    /// Ethernet padding beyond this).
    pub l4_len: u16,
}

impl Layout {
    /// Offset one past the end of the IP packet (`l4_off + l4_len`); for non-IP frames,
    /// `l3_off`.
    #[inline]
    pub fn l4_end(&self) -> usize {
        usize::from(self.l4_off) + usize::from(self.l4_len)
    }

    /// True for IPv4 and IPv6.
    #[inline]
    pub fn is_ip(&self) -> bool {
        matches!(self.l3, L3::Ipv4 | L3::Ipv6)
    }
}

/// Parses and validates the headers of `frame`; the error names the drop reason. Never
/// panics, whatever the bytes.
pub fn parse(frame: &[u8]) -> Result<Layout, DropReason> {
    let eth = EthernetFrame::new_checked(frame).map_err(|_| DropReason::Runt)?;
    let mut layout = Layout::default();
    let mut ether_type = u16::from(eth.ethertype());
    let mut l3_off = EthernetFrame::<&[u8]>::header_len();
    if ether_type == vlan::TPID {
        let tag = vlan::Tag::new_checked(eth.payload()).map_err(|_| DropReason::Truncated)?;
        layout.vlan = Some(tag.tci());
        ether_type = tag.ethertype();
        l3_off += vlan::HEADER_LEN;
    }
    // In bounds: the Ethernet header and the tag (if any) were checked above.
    let l3 = &frame[l3_off..];
    layout.l3_off = l3_off as u16;
    layout.l4_off = l3_off as u16;
    match ether_type {
        ethertype::ARP => {
            ArpPacket::new_checked(l3).map_err(|_| DropReason::Truncated)?;
            layout.l3 = L3::Arp;
        }
        ethertype::IPV4 => {
            let (hl, total, proto, first_fragment_only) = ipv4(l3)?;
            layout.l3 = L3::Ipv4;
            layout.l4_proto = proto;
            layout.l4_off = (l3_off + hl) as u16;
            layout.l4_len = (total - hl) as u16;
            if let Some(partial) = first_fragment_only {
                transport(false, proto, &l3[hl..total], partial)?;
            }
        }
        ethertype::IPV6 => {
            let (payload, proto) = ipv6(l3)?;
            layout.l3 = L3::Ipv6;
            layout.l4_proto = proto;
            layout.l4_off = (l3_off + IPV6_HEADER_LEN) as u16;
            layout.l4_len = payload as u16;
            transport(
                true,
                proto,
                &l3[IPV6_HEADER_LEN..IPV6_HEADER_LEN + payload],
                false,
            )?;
        }
        other => layout.l3 = L3::Other(other),
    }
    Ok(layout)
}

const IPV4_HEADER_LEN: usize = 20;
const IPV6_HEADER_LEN: usize = 40;

/// Validates an IPv4 header. Returns (header length, total length, protocol, transport
/// check): the last is `None` for a later fragment (no transport header to check), else
/// `Some(more_fragments)`.
fn ipv4(l3: &[u8]) -> Result<(usize, usize, u8, Option<bool>), DropReason> {
    if l3.len() < IPV4_HEADER_LEN {
        return Err(DropReason::Truncated);
    }
    let ip = Ipv4Packet::new_unchecked(l3);
    // The accessors below read only the first 20 bytes, checked above.
    if ip.version() != 4 {
        return Err(DropReason::BadVersion);
    }
    let hl = usize::from(ip.header_len());
    if hl < IPV4_HEADER_LEN {
        return Err(DropReason::BadIhl);
    }
    if hl > l3.len() {
        return Err(DropReason::Truncated);
    }
    let total = usize::from(ip.total_len());
    if total < hl || total > l3.len() {
        return Err(DropReason::BadLength);
    }
    // Now smoltcp's full length check holds: every accessor of the view is safe.
    let ip = Ipv4Packet::new_checked(l3).map_err(|_| DropReason::BadLength)?;
    if !checksum::verify(0, &l3[..hl]) {
        return Err(DropReason::BadChecksum);
    }
    let check = (ip.frag_offset() == 0).then(|| ip.more_frags());
    Ok((hl, total, u8::from(ip.next_header()), check))
}

/// Validates an IPv6 fixed header. Returns (payload length, next header).
fn ipv6(l3: &[u8]) -> Result<(usize, u8), DropReason> {
    if l3.len() < IPV6_HEADER_LEN {
        return Err(DropReason::Truncated);
    }
    let ip = Ipv6Packet::new_unchecked(l3);
    // The accessors below read only the first 40 bytes, checked above.
    if ip.version() != 6 {
        return Err(DropReason::BadVersion);
    }
    let payload = usize::from(ip.payload_len());
    if IPV6_HEADER_LEN + payload > l3.len() {
        return Err(DropReason::BadLength);
    }
    Ok((payload, u8::from(ip.next_header())))
}

/// Validates the transport header in `l4` (exactly the IP payload). `partial`: the payload is
/// the first fragment of a longer datagram.
fn transport(v6: bool, proto: u8, l4: &[u8], partial: bool) -> Result<(), DropReason> {
    let icmp = if v6 { ip_proto::ICMPV6 } else { ip_proto::ICMP };
    match proto {
        ip_proto::UDP => {
            if l4.len() < 8 {
                return Err(DropReason::Truncated);
            }
            let len = usize::from(UdpPacket::new_unchecked(l4).len());
            if len < 8 || (len > l4.len() && !partial) {
                return Err(DropReason::BadLength);
            }
        }
        ip_proto::TCP => {
            if l4.len() < 20 {
                return Err(DropReason::Truncated);
            }
            let hl = usize::from(TcpPacket::new_unchecked(l4).header_len());
            if hl < 20 {
                return Err(DropReason::BadLength);
            }
            if hl > l4.len() {
                return Err(DropReason::Truncated);
            }
        }
        p if p == icmp && l4.len() < 8 => return Err(DropReason::Truncated),
        _ => {}
    }
    Ok(())
}

/// True when `frame` is an IPv4 fragment (more-fragments set or a non-zero offset). Handlers
/// that answer requests skip fragments: the appliance does not reassemble. False for
/// anything that is not IPv4 or whose header `layout` does not describe.
pub fn is_fragment(frame: &[u8], layout: &Layout) -> bool {
    if layout.l3 != L3::Ipv4 {
        return false;
    }
    let off = usize::from(layout.l3_off);
    match frame.get(off + 6..off + 8) {
        // Flags (3 bits: reserved, DF, MF) and the 13-bit offset: MF or offset set.
        Some(b) => u16::from_be_bytes([b[0], b[1]]) & 0x3fff != 0,
        None => false,
    }
}

/// A cheap hash of the flow a frame belongs to, the same in both directions.
///
/// IP: (source address, destination address, protocol) plus, for TCP, UDP and SCTP packets
/// that are not IPv4 fragments, the ports. Fragments hash without ports so that all
/// fragments of a datagram land together. Non-IP frames hash the two MAC addresses.
/// Symmetry comes from ordering the two (address, port) endpoints before mixing. Never
/// panics, even if `layout` does not describe `frame`.
pub fn flow_hash(frame: &[u8], layout: &Layout) -> u32 {
    let l3 = usize::from(layout.l3_off);
    let (a, b, proto) = match layout.l3 {
        L3::Ipv4 => match frame.get(l3 + 12..l3 + 20) {
            Some(ips) => {
                let src = u64::from(u32::from_be_bytes([ips[0], ips[1], ips[2], ips[3]]));
                let dst = u64::from(u32::from_be_bytes([ips[4], ips[5], ips[6], ips[7]]));
                let (sp, dp) = ports(frame, layout);
                (src << 16 | sp, dst << 16 | dp, layout.l4_proto)
            }
            None => return mac_hash(frame),
        },
        L3::Ipv6 => match frame.get(l3 + 8..l3 + 40) {
            Some(ips) => {
                let (sp, dp) = ports(frame, layout);
                (
                    fold_v6(&ips[..16]) ^ sp,
                    fold_v6(&ips[16..]) ^ dp,
                    layout.l4_proto,
                )
            }
            None => return mac_hash(frame),
        },
        _ => return mac_hash(frame),
    };
    mix(a, b, proto)
}

/// Source and destination port (as u64, 0 when the packet has none we may read).
fn ports(frame: &[u8], layout: &Layout) -> (u64, u64) {
    if !matches!(
        layout.l4_proto,
        ip_proto::TCP | ip_proto::UDP | ip_proto::SCTP
    ) || layout.l4_len < 4
        || is_fragment(frame, layout)
    {
        return (0, 0);
    }
    let off = usize::from(layout.l4_off);
    match frame.get(off..off + 4) {
        Some(p) => (
            u64::from(u16::from_be_bytes([p[0], p[1]])),
            u64::from(u16::from_be_bytes([p[2], p[3]])),
        ),
        None => (0, 0),
    }
}

/// Folds a 16-byte address into 64 bits.
fn fold_v6(a: &[u8]) -> u64 {
    let mut hi = [0u8; 8];
    let mut lo = [0u8; 8];
    hi.copy_from_slice(&a[..8]);
    lo.copy_from_slice(&a[8..16]);
    u64::from_be_bytes(hi) ^ u64::from_be_bytes(lo).rotate_left(32)
}

fn mac_hash(frame: &[u8]) -> u32 {
    let mac = |r: std::ops::Range<usize>| {
        frame.get(r).map_or(0, |m| {
            m.iter().fold(0u64, |acc, &x| acc << 8 | u64::from(x))
        })
    };
    mix(mac(0..6), mac(6..12), 0)
}

/// Orders the endpoints (the symmetry), then mixes with the murmur3 64-bit finalizer.
#[inline]
fn mix(a: u64, b: u64, proto: u8) -> u32 {
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    let mut h = lo ^ hi.rotate_left(29).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ u64::from(proto);
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    (h ^ (h >> 32)) as u32
}
