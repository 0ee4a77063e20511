//! Zero-copy header views and the receive-side parse.
//!
//! PLACEHOLDER until the wire module lands: `parse` below only fills the Ethernet layer.

use crate::pipeline::DropReason;

/// Network layer found by [`parse`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum L3 {
    /// Nothing parsed yet.
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
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Layout {
    /// 802.1Q tag control information, when the frame carries one tag.
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

/// Parses and validates the headers of `frame`; the error names the drop reason.
pub fn parse(frame: &[u8]) -> Result<Layout, DropReason> {
    if frame.len() < 14 {
        return Err(DropReason::Runt);
    }
    Ok(Layout {
        l3_off: 14,
        ..Layout::default()
    })
}
