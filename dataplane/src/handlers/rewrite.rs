//! In-place rewrites shared by the reply handlers: swap the Ethernet addresses, swap IP
//! addresses, set a fresh TTL with an incremental header checksum update.
//!
//! All of them go through smoltcp's checked views and report failure instead of panicking,
//! so a handler given a frame whose layout is stale simply leaves it alone.

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::wire::checksum;
use crate::wire::view::{EthernetFrame, Ipv4Packet, Ipv6Packet};
use crate::wire::Layout;

/// Exchanges the Ethernet source and destination. False (and nothing changed) when the frame
/// is shorter than an Ethernet header.
#[inline]
pub(crate) fn swap_macs(frame: &mut [u8]) -> bool {
    match EthernetFrame::new_checked(frame) {
        Ok(mut eth) => {
            let (src, dst) = (eth.src_addr(), eth.dst_addr());
            eth.set_src_addr(dst);
            eth.set_dst_addr(src);
            true
        }
        Err(_) => false,
    }
}

/// The IP packet (`l3_off..l4_off + l4_len`) of `frame`, when the layout fits the frame
/// and leaves room for an Ethernet header in front (so that [`swap_macs`] cannot fail after
/// the IP header was rewritten).
#[inline]
pub(crate) fn ip_packet<'a>(frame: &'a mut [u8], layout: &Layout) -> Option<&'a mut [u8]> {
    let l3 = usize::from(layout.l3_off);
    if l3 < EthernetFrame::<&[u8]>::header_len() {
        return None;
    }
    frame.get_mut(l3..layout.l4_end())
}

/// Sets the TTL and updates the header checksum (RFC 1624) for the changed word.
#[inline]
pub(crate) fn set_ttl_v4(ip: &mut Ipv4Packet<&mut [u8]>, ttl: u8) {
    let old = ip.hop_limit();
    if old == ttl {
        return;
    }
    let proto = u8::from(ip.next_header());
    let c = checksum::update16(
        ip.checksum(),
        u16::from_be_bytes([old, proto]),
        u16::from_be_bytes([ttl, proto]),
    );
    ip.set_hop_limit(ttl);
    ip.set_checksum(c);
}

/// Exchanges source and destination. No checksum changes: the header checksum and every
/// pseudo-header sum are sums of the same words in another order.
#[inline]
pub(crate) fn swap_ipv4(ip: &mut Ipv4Packet<&mut [u8]>) {
    let (src, dst) = (ip.src_addr(), ip.dst_addr());
    ip.set_src_addr(dst);
    ip.set_dst_addr(src);
}

/// As [`swap_ipv4`] for IPv6.
#[inline]
pub(crate) fn swap_ipv6(ip: &mut Ipv6Packet<&mut [u8]>) {
    let (src, dst) = (ip.src_addr(), ip.dst_addr());
    ip.set_src_addr(dst);
    ip.set_dst_addr(src);
}

/// An address a reply may be sent to or from: not unspecified, multicast or broadcast.
/// Reflecting to such an address would answer a spoofed or group request to many hosts.
#[inline]
pub(crate) fn unicast_v4(a: Ipv4Addr) -> bool {
    !(a.is_unspecified() || a.is_multicast() || a.is_broadcast())
}

/// As [`unicast_v4`] for IPv6.
#[inline]
pub(crate) fn unicast_v6(a: &Ipv6Addr) -> bool {
    !(a.is_unspecified() || a.is_multicast())
}
