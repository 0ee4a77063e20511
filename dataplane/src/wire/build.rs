//! Packet builders: whole Ethernet frames with correct lengths and checksums, for tests, the
//! replay-case generator and the traffic generators. They allocate, so they are never used
//! on the hot path.
//!
//! Every header is written through smoltcp's views (plus [`vlan::Tag`]) and every field is
//! set explicitly; in this crate's unit tests the buffers start poisoned with `0xa5` so that
//! a field left unset shows up in the byte-exact tests. Fixed choices, so that outputs are
//! reproducible byte for byte: IPv4 identification 0 with DF set, TTL / hop limit 64, DSCP,
//! ECN and flow label 0, TCP window 65535 with no options. Frames are not padded to the
//! 60-byte Ethernet minimum (the kernel does not pad what it hands to a capture either); use
//! [`pad`] where a test needs padding.
//!
//! # Panics
//! Builders panic when asked for a packet that cannot exist (a payload longer than the IP
//! length fields can describe). [`udp4_request_of_size`] clamps instead, since it serves a
//! traffic generator configured from outside.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::ops::BitOr;

use smoltcp::wire::{
    ArpHardware, ArpOperation, ArpPacket, EthernetFrame, EthernetProtocol, Icmpv4Message,
    Icmpv4Packet, Icmpv6Message, Icmpv6Packet, IpProtocol, Ipv4Packet, Ipv6Packet, TcpPacket,
    TcpSeqNumber, UdpPacket,
};

use super::{checksum, ethertype, ip_proto, vlan, MacAddr};

/// TTL and hop limit of built packets, and of replies the handlers make (Linux's default,
/// `net.ipv4.ip_default_ttl`).
pub const DEFAULT_TTL: u8 = 64;

/// Ethernet minimum frame length without the FCS.
pub const MIN_FRAME_LEN: usize = 60;
/// Largest standard (non-jumbo) Ethernet frame without the FCS and without a VLAN tag.
pub const MAX_FRAME_LEN: usize = 1514;

const ETH_LEN: usize = 14;
const IPV4_LEN: usize = 20;
const IPV6_LEN: usize = 40;
const UDP_LEN: usize = 8;
const TCP_LEN: usize = 20;
const ICMP_LEN: usize = 8;
const ARP_LEN: usize = 28;

/// Addresses and ports of an IPv4 packet. ICMP builders ignore the ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoints4 {
    pub src_mac: MacAddr,
    pub dst_mac: MacAddr,
    pub src_ip: Ipv4Addr,
    pub dst_ip: Ipv4Addr,
    pub src_port: u16,
    pub dst_port: u16,
}

impl Default for Endpoints4 {
    /// A client 02:00:00:00:00:02 / 198.18.0.2:1024 talking to the appliance
    /// 02:00:00:00:00:01 / 198.18.0.1:7 (RFC 2544 benchmarking range; echo port).
    fn default() -> Self {
        Endpoints4 {
            src_mac: MacAddr([2, 0, 0, 0, 0, 2]),
            dst_mac: MacAddr([2, 0, 0, 0, 0, 1]),
            src_ip: Ipv4Addr::new(198, 18, 0, 2),
            dst_ip: Ipv4Addr::new(198, 18, 0, 1),
            src_port: 1024,
            dst_port: 7,
        }
    }
}

impl Endpoints4 {
    /// The other direction: sources and destinations exchanged.
    pub fn reversed(&self) -> Endpoints4 {
        Endpoints4 {
            src_mac: self.dst_mac,
            dst_mac: self.src_mac,
            src_ip: self.dst_ip,
            dst_ip: self.src_ip,
            src_port: self.dst_port,
            dst_port: self.src_port,
        }
    }
}

/// Addresses and ports of an IPv6 packet. ICMPv6 builders ignore the ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoints6 {
    pub src_mac: MacAddr,
    pub dst_mac: MacAddr,
    pub src_ip: Ipv6Addr,
    pub dst_ip: Ipv6Addr,
    pub src_port: u16,
    pub dst_port: u16,
}

impl Default for Endpoints6 {
    /// As [`Endpoints4::default`], with 2001:db8::2 -> 2001:db8::1 (RFC 3849 documentation
    /// prefix).
    fn default() -> Self {
        Endpoints6 {
            src_mac: MacAddr([2, 0, 0, 0, 0, 2]),
            dst_mac: MacAddr([2, 0, 0, 0, 0, 1]),
            src_ip: Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2),
            dst_ip: Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1),
            src_port: 1024,
            dst_port: 7,
        }
    }
}

impl Endpoints6 {
    /// The other direction: sources and destinations exchanged.
    pub fn reversed(&self) -> Endpoints6 {
        Endpoints6 {
            src_mac: self.dst_mac,
            dst_mac: self.src_mac,
            src_ip: self.dst_ip,
            dst_ip: self.src_ip,
            src_port: self.dst_port,
            dst_port: self.src_port,
        }
    }
}

/// TCP control flags, combined with `|`: `TcpFlags::SYN | TcpFlags::ACK`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TcpFlags(pub u8);

impl TcpFlags {
    pub const FIN: TcpFlags = TcpFlags(0x01);
    pub const SYN: TcpFlags = TcpFlags(0x02);
    pub const RST: TcpFlags = TcpFlags(0x04);
    pub const PSH: TcpFlags = TcpFlags(0x08);
    pub const ACK: TcpFlags = TcpFlags(0x10);
    pub const URG: TcpFlags = TcpFlags(0x20);

    /// True when every flag of `other` is set.
    pub const fn contains(self, other: TcpFlags) -> bool {
        self.0 & other.0 == other.0
    }
}

impl BitOr for TcpFlags {
    type Output = TcpFlags;
    fn bitor(self, rhs: TcpFlags) -> TcpFlags {
        TcpFlags(self.0 | rhs.0)
    }
}

/// A zeroed buffer; poisoned with 0xa5 in unit tests so that unset bytes show.
fn alloc(len: usize) -> Vec<u8> {
    vec![if cfg!(test) { 0xa5 } else { 0 }; len]
}

fn l2_len(vlan: Option<u16>) -> usize {
    ETH_LEN + if vlan.is_some() { vlan::HEADER_LEN } else { 0 }
}

/// Writes the Ethernet header (and tag) at the start of `buf`; returns the L3 offset.
fn emit_l2(
    buf: &mut [u8],
    src: MacAddr,
    dst: MacAddr,
    ether_type: u16,
    vlan: Option<u16>,
) -> usize {
    let mut eth = EthernetFrame::new_unchecked(&mut *buf);
    eth.set_dst_addr(dst.into());
    eth.set_src_addr(src.into());
    match vlan {
        None => {
            eth.set_ethertype(EthernetProtocol::from(ether_type));
            ETH_LEN
        }
        Some(tci) => {
            eth.set_ethertype(EthernetProtocol::from(ethertype::VLAN));
            let mut tag = vlan::Tag::new_unchecked(&mut buf[ETH_LEN..ETH_LEN + vlan::HEADER_LEN]);
            tag.set_tci(tci);
            tag.set_ethertype(ether_type);
            ETH_LEN + vlan::HEADER_LEN
        }
    }
}

/// Writes a 20-byte IPv4 header (checksum included) for `l4_len` bytes of payload.
fn emit_ipv4(buf: &mut [u8], src: Ipv4Addr, dst: Ipv4Addr, proto: u8, l4_len: usize) {
    let total = u16::try_from(IPV4_LEN + l4_len).expect("IPv4 packet longer than 65535 bytes");
    let mut ip = Ipv4Packet::new_unchecked(&mut buf[..IPV4_LEN]);
    ip.set_version(4);
    ip.set_header_len(IPV4_LEN as u8);
    ip.set_dscp(0);
    ip.set_ecn(0);
    ip.set_total_len(total);
    ip.set_ident(0);
    ip.clear_flags();
    ip.set_frag_offset(0);
    ip.set_dont_frag(true);
    ip.set_hop_limit(DEFAULT_TTL);
    ip.set_next_header(IpProtocol::from(proto));
    ip.set_src_addr(src);
    ip.set_dst_addr(dst);
    ip.set_checksum(0);
    let c = checksum::of(&buf[..IPV4_LEN]);
    Ipv4Packet::new_unchecked(&mut buf[..IPV4_LEN]).set_checksum(c);
}

/// Writes a 40-byte IPv6 header for `l4_len` bytes of payload.
fn emit_ipv6(buf: &mut [u8], src: Ipv6Addr, dst: Ipv6Addr, next: u8, l4_len: usize) {
    let len = u16::try_from(l4_len).expect("IPv6 payload longer than 65535 bytes");
    let mut ip = Ipv6Packet::new_unchecked(&mut buf[..IPV6_LEN]);
    ip.set_version(6);
    ip.set_traffic_class(0);
    ip.set_flow_label(0);
    ip.set_payload_len(len);
    ip.set_next_header(IpProtocol::from(next));
    ip.set_hop_limit(DEFAULT_TTL);
    ip.set_src_addr(src);
    ip.set_dst_addr(dst);
}

/// The transport checksum field value for `l4` (checksum field zeroed) under `pseudo`.
fn l4_checksum(pseudo: u32, l4: &[u8]) -> u16 {
    checksum::finish(checksum::sum(pseudo, l4))
}

fn emit_udp(l4: &mut [u8], src_port: u16, dst_port: u16, payload: &[u8]) {
    let len = u16::try_from(l4.len()).expect("UDP datagram longer than 65535 bytes");
    let mut udp = UdpPacket::new_unchecked(&mut *l4);
    udp.set_src_port(src_port);
    udp.set_dst_port(dst_port);
    udp.set_len(len);
    udp.set_checksum(0);
    l4[UDP_LEN..].copy_from_slice(payload);
}

/// A UDP/IPv4 frame carrying `payload`, tagged with `vlan` (a TCI) when given.
pub fn udp4(ep: &Endpoints4, payload: &[u8], vlan: Option<u16>) -> Vec<u8> {
    let l3 = l2_len(vlan);
    let l4_len = UDP_LEN + payload.len();
    let mut buf = alloc(l3 + IPV4_LEN + l4_len);
    emit_l2(&mut buf, ep.src_mac, ep.dst_mac, ethertype::IPV4, vlan);
    emit_ipv4(&mut buf[l3..], ep.src_ip, ep.dst_ip, ip_proto::UDP, l4_len);
    let l4 = &mut buf[l3 + IPV4_LEN..];
    emit_udp(l4, ep.src_port, ep.dst_port, payload);
    let pseudo = checksum::pseudo_v4(ep.src_ip, ep.dst_ip, ip_proto::UDP, l4_len as u16);
    // RFC 768: a computed 0 is sent as all ones (0 means "no checksum").
    let c = match l4_checksum(pseudo, l4) {
        0 => 0xffff,
        c => c,
    };
    UdpPacket::new_unchecked(l4).set_checksum(c);
    buf
}

/// A UDP/IPv6 frame carrying `payload`.
pub fn udp6(ep: &Endpoints6, payload: &[u8], vlan: Option<u16>) -> Vec<u8> {
    let l3 = l2_len(vlan);
    let l4_len = UDP_LEN + payload.len();
    let mut buf = alloc(l3 + IPV6_LEN + l4_len);
    emit_l2(&mut buf, ep.src_mac, ep.dst_mac, ethertype::IPV6, vlan);
    emit_ipv6(&mut buf[l3..], ep.src_ip, ep.dst_ip, ip_proto::UDP, l4_len);
    let l4 = &mut buf[l3 + IPV6_LEN..];
    emit_udp(l4, ep.src_port, ep.dst_port, payload);
    let pseudo = checksum::pseudo_v6(&ep.src_ip, &ep.dst_ip, ip_proto::UDP, l4_len as u32);
    let c = match l4_checksum(pseudo, l4) {
        0 => 0xffff,
        c => c,
    };
    UdpPacket::new_unchecked(l4).set_checksum(c);
    buf
}

fn emit_tcp(
    l4: &mut [u8],
    src_port: u16,
    dst_port: u16,
    flags: TcpFlags,
    seq: u32,
    ack: u32,
    payload: &[u8],
) {
    let mut tcp = TcpPacket::new_unchecked(&mut *l4);
    tcp.set_src_port(src_port);
    tcp.set_dst_port(dst_port);
    tcp.set_seq_number(TcpSeqNumber(seq as i32));
    tcp.set_ack_number(TcpSeqNumber(ack as i32));
    tcp.set_header_len(TCP_LEN as u8);
    tcp.clear_flags();
    tcp.set_fin(flags.contains(TcpFlags::FIN));
    tcp.set_syn(flags.contains(TcpFlags::SYN));
    tcp.set_rst(flags.contains(TcpFlags::RST));
    tcp.set_psh(flags.contains(TcpFlags::PSH));
    tcp.set_ack(flags.contains(TcpFlags::ACK));
    tcp.set_urg(flags.contains(TcpFlags::URG));
    tcp.set_window_len(0xffff);
    tcp.set_checksum(0);
    tcp.set_urgent_at(0);
    l4[TCP_LEN..].copy_from_slice(payload);
}

/// A TCP/IPv4 frame (no options, window 65535) with `flags`, sequence and acknowledgement
/// numbers, carrying `payload`.
pub fn tcp4(
    ep: &Endpoints4,
    flags: TcpFlags,
    seq: u32,
    ack: u32,
    payload: &[u8],
    vlan: Option<u16>,
) -> Vec<u8> {
    let l3 = l2_len(vlan);
    let l4_len = TCP_LEN + payload.len();
    let mut buf = alloc(l3 + IPV4_LEN + l4_len);
    emit_l2(&mut buf, ep.src_mac, ep.dst_mac, ethertype::IPV4, vlan);
    emit_ipv4(&mut buf[l3..], ep.src_ip, ep.dst_ip, ip_proto::TCP, l4_len);
    let l4 = &mut buf[l3 + IPV4_LEN..];
    emit_tcp(l4, ep.src_port, ep.dst_port, flags, seq, ack, payload);
    let pseudo = checksum::pseudo_v4(ep.src_ip, ep.dst_ip, ip_proto::TCP, l4_len as u16);
    let c = l4_checksum(pseudo, l4);
    TcpPacket::new_unchecked(l4).set_checksum(c);
    buf
}

/// A TCP/IPv6 frame, as [`tcp4`].
pub fn tcp6(
    ep: &Endpoints6,
    flags: TcpFlags,
    seq: u32,
    ack: u32,
    payload: &[u8],
    vlan: Option<u16>,
) -> Vec<u8> {
    let l3 = l2_len(vlan);
    let l4_len = TCP_LEN + payload.len();
    let mut buf = alloc(l3 + IPV6_LEN + l4_len);
    emit_l2(&mut buf, ep.src_mac, ep.dst_mac, ethertype::IPV6, vlan);
    emit_ipv6(&mut buf[l3..], ep.src_ip, ep.dst_ip, ip_proto::TCP, l4_len);
    let l4 = &mut buf[l3 + IPV6_LEN..];
    emit_tcp(l4, ep.src_port, ep.dst_port, flags, seq, ack, payload);
    let pseudo = checksum::pseudo_v6(&ep.src_ip, &ep.dst_ip, ip_proto::TCP, l4_len as u32);
    let c = l4_checksum(pseudo, l4);
    TcpPacket::new_unchecked(l4).set_checksum(c);
    buf
}

fn arp(
    op: ArpOperation,
    src_mac: MacAddr,
    src_ip: Ipv4Addr,
    dst_mac: MacAddr,
    target_mac: MacAddr,
    target_ip: Ipv4Addr,
    vlan: Option<u16>,
) -> Vec<u8> {
    let l3 = l2_len(vlan);
    let mut buf = alloc(l3 + ARP_LEN);
    emit_l2(&mut buf, src_mac, dst_mac, ethertype::ARP, vlan);
    let mut a = ArpPacket::new_unchecked(&mut buf[l3..]);
    a.set_hardware_type(ArpHardware::Ethernet);
    a.set_protocol_type(EthernetProtocol::Ipv4);
    a.set_hardware_len(6);
    a.set_protocol_len(4);
    a.set_operation(op);
    a.set_source_hardware_addr(&src_mac.0);
    a.set_source_protocol_addr(&src_ip.octets());
    a.set_target_hardware_addr(&target_mac.0);
    a.set_target_protocol_addr(&target_ip.octets());
    buf
}

/// A broadcast ARP request from `src_mac`/`src_ip` asking for `target_ip` (target hardware
/// address zero, as RFC 826 senders do).
pub fn arp_request(
    src_mac: MacAddr,
    src_ip: Ipv4Addr,
    target_ip: Ipv4Addr,
    vlan: Option<u16>,
) -> Vec<u8> {
    arp(
        ArpOperation::Request,
        src_mac,
        src_ip,
        MacAddr::BROADCAST,
        MacAddr::ZERO,
        target_ip,
        vlan,
    )
}

/// An ARP reply from `src_mac`/`src_ip` ("`src_ip` is at `src_mac`") to `dst_mac`/`dst_ip`.
pub fn arp_reply(
    src_mac: MacAddr,
    src_ip: Ipv4Addr,
    dst_mac: MacAddr,
    dst_ip: Ipv4Addr,
    vlan: Option<u16>,
) -> Vec<u8> {
    arp(
        ArpOperation::Reply,
        src_mac,
        src_ip,
        dst_mac,
        dst_mac,
        dst_ip,
        vlan,
    )
}

fn icmp4_echo(
    ep: &Endpoints4,
    msg: Icmpv4Message,
    id: u16,
    seq: u16,
    payload: &[u8],
    vlan: Option<u16>,
) -> Vec<u8> {
    let l3 = l2_len(vlan);
    let l4_len = ICMP_LEN + payload.len();
    let mut buf = alloc(l3 + IPV4_LEN + l4_len);
    emit_l2(&mut buf, ep.src_mac, ep.dst_mac, ethertype::IPV4, vlan);
    emit_ipv4(&mut buf[l3..], ep.src_ip, ep.dst_ip, ip_proto::ICMP, l4_len);
    let l4 = &mut buf[l3 + IPV4_LEN..];
    let mut icmp = Icmpv4Packet::new_unchecked(&mut *l4);
    icmp.set_msg_type(msg);
    icmp.set_msg_code(0);
    icmp.set_checksum(0);
    icmp.set_echo_ident(id);
    icmp.set_echo_seq_no(seq);
    l4[ICMP_LEN..].copy_from_slice(payload);
    let c = checksum::of(l4);
    Icmpv4Packet::new_unchecked(l4).set_checksum(c);
    buf
}

/// An ICMPv4 echo request (type 8) with identifier `id` and sequence number `seq`. The
/// ports of `ep` are not used.
pub fn icmp4_echo_request(
    ep: &Endpoints4,
    id: u16,
    seq: u16,
    payload: &[u8],
    vlan: Option<u16>,
) -> Vec<u8> {
    icmp4_echo(ep, Icmpv4Message::EchoRequest, id, seq, payload, vlan)
}

/// An ICMPv4 echo reply (type 0), as [`icmp4_echo_request`].
pub fn icmp4_echo_reply(
    ep: &Endpoints4,
    id: u16,
    seq: u16,
    payload: &[u8],
    vlan: Option<u16>,
) -> Vec<u8> {
    icmp4_echo(ep, Icmpv4Message::EchoReply, id, seq, payload, vlan)
}

fn icmp6_echo(
    ep: &Endpoints6,
    msg: Icmpv6Message,
    id: u16,
    seq: u16,
    payload: &[u8],
    vlan: Option<u16>,
) -> Vec<u8> {
    let l3 = l2_len(vlan);
    let l4_len = ICMP_LEN + payload.len();
    let mut buf = alloc(l3 + IPV6_LEN + l4_len);
    emit_l2(&mut buf, ep.src_mac, ep.dst_mac, ethertype::IPV6, vlan);
    emit_ipv6(
        &mut buf[l3..],
        ep.src_ip,
        ep.dst_ip,
        ip_proto::ICMPV6,
        l4_len,
    );
    let l4 = &mut buf[l3 + IPV6_LEN..];
    let mut icmp = Icmpv6Packet::new_unchecked(&mut *l4);
    icmp.set_msg_type(msg);
    icmp.set_msg_code(0);
    icmp.set_checksum(0);
    icmp.set_echo_ident(id);
    icmp.set_echo_seq_no(seq);
    l4[ICMP_LEN..].copy_from_slice(payload);
    let pseudo = checksum::pseudo_v6(&ep.src_ip, &ep.dst_ip, ip_proto::ICMPV6, l4_len as u32);
    let c = l4_checksum(pseudo, l4);
    Icmpv6Packet::new_unchecked(l4).set_checksum(c);
    buf
}

/// An ICMPv6 echo request (type 128); the checksum covers the IPv6 pseudo-header. The ports
/// of `ep` are not used.
pub fn icmp6_echo_request(
    ep: &Endpoints6,
    id: u16,
    seq: u16,
    payload: &[u8],
    vlan: Option<u16>,
) -> Vec<u8> {
    icmp6_echo(ep, Icmpv6Message::EchoRequest, id, seq, payload, vlan)
}

/// An ICMPv6 echo reply (type 129), as [`icmp6_echo_request`].
pub fn icmp6_echo_reply(
    ep: &Endpoints6,
    id: u16,
    seq: u16,
    payload: &[u8],
    vlan: Option<u16>,
) -> Vec<u8> {
    icmp6_echo(ep, Icmpv6Message::EchoReply, id, seq, payload, vlan)
}

/// A UDP/IPv4 request of exactly `frame_len` bytes for the memory port's traffic generator:
/// 02:00:00:00:00:02 / 198.18.0.2 port `1024 + flow` (wrapping within 1024..=65535) to
/// 02:00:00:00:00:01 / 198.18.0.1 port `dst_port`. `frame_len` is clamped to
/// [`MIN_FRAME_LEN`]..=[`MAX_FRAME_LEN`]. The payload is bytes `0, 1, 2, ...` (mod 256).
pub fn udp4_request_of_size(frame_len: usize, flow: u16, dst_port: u16) -> Vec<u8> {
    let frame_len = frame_len.clamp(MIN_FRAME_LEN, MAX_FRAME_LEN);
    let payload: Vec<u8> = (0..frame_len - ETH_LEN - IPV4_LEN - UDP_LEN)
        .map(|i| i as u8)
        .collect();
    let ep = Endpoints4 {
        src_port: 1024 + (flow % (u16::MAX - 1023)),
        dst_port,
        ..Endpoints4::default()
    };
    udp4(&ep, &payload, None)
}

/// Appends zero bytes (Ethernet padding) until `frame` is `min_len` long.
pub fn pad(mut frame: Vec<u8>, min_len: usize) -> Vec<u8> {
    if frame.len() < min_len {
        frame.resize(min_len, 0);
    }
    frame
}
