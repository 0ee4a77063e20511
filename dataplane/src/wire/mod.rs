//! Wire formats: the receive-side parse, header views, checksums and packet builders.
//!
//! What lives where:
//! - [`layout`]: [`parse`] (one validating pass per received frame, yielding a [`Layout`] of
//!   offsets or a [`DropReason`](crate::pipeline::DropReason)) and [`flow_hash`].
//! - Header views are smoltcp's (`smoltcp::wire::{EthernetFrame, ArpPacket, Ipv4Packet, ...}`,
//!   re-exported in [`view`]): checked constructors, then accessors that cannot panic. Only
//!   what smoltcp lacks is written here: the 802.1Q tag ([`vlan`]), a MAC address type with
//!   a text form ([`MacAddr`]) and the checksum arithmetic ([`checksum`], because smoltcp's
//!   is private).
//! - [`build`]: packet builders with correct checksums, for tests, replay cases and traffic
//!   generators. Never on the hot path (they allocate).
//!
//! This module depends on nothing else of ours except the drop-reason enum, so that the same
//! rules can be mirrored by the XDP program and used by tools.

pub mod build;
pub mod checksum;
pub mod layout;
pub mod mac;
pub mod vlan;

#[cfg(test)]
pub(crate) mod tests;

pub use layout::{flow_hash, is_fragment, parse, Layout, L3};
pub use mac::{MacAddr, ParseMacError};

/// smoltcp's header views and enums that handlers use, in one place.
pub mod view {
    pub use smoltcp::wire::{
        ArpHardware, ArpOperation, ArpPacket, EthernetAddress, EthernetFrame, EthernetProtocol,
        Icmpv4Message, Icmpv4Packet, Icmpv6Message, Icmpv6Packet, IpProtocol, Ipv4Packet,
        Ipv6Packet, TcpPacket, UdpPacket, IPV4_HEADER_LEN, IPV6_HEADER_LEN,
    };
}

/// Ethertypes the parse understands.
pub mod ethertype {
    pub const IPV4: u16 = 0x0800;
    pub const ARP: u16 = 0x0806;
    pub const IPV6: u16 = 0x86dd;
    /// 802.1Q tag (see [`super::vlan`]).
    pub const VLAN: u16 = super::vlan::TPID;
}

/// IP protocol numbers the parse and handlers look at (IANA "Assigned Internet Protocol
/// Numbers").
pub mod ip_proto {
    pub const ICMP: u8 = 1;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const ICMPV6: u8 = 58;
    pub const SCTP: u8 = 132;
}
