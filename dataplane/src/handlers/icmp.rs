//! `icmp`: answers ICMPv4 echo requests (type 8) and ICMPv6 echo requests (type 128) sent to
//! the appliance's addresses, in place: type set to echo reply (0 / 129), code, identifier,
//! sequence number and data kept, IP addresses and MACs swapped, TTL / hop limit set to a
//! fresh [`DEFAULT_TTL`] (64; the reply is a new packet from this host, as in Linux), sent
//! back on the queue it came from.
//!
//! Checksums are updated incrementally (RFC 1624): the ICMP checksum for the changed type
//! word (the ICMPv6 pseudo-header is unchanged by the address swap), the IPv4 header
//! checksum for the TTL word. The request's ICMP checksum is not verified (that would cost a
//! pass over the data); a corrupt request yields a reply its sender discards.
//!
//! Left `Next`: other ICMP messages, requests to other addresses, IPv4 fragments (no
//! reassembly), requests from an unspecified, multicast or broadcast source, and ICMPv6
//! behind extension headers (the parse does not walk them). Neighbour discovery is a
//! separate concern, not handled here yet.
//!
//! Addresses are looked up by a linear scan: the list is a handful of entries, and a scan of
//! a small contiguous array beats hashing at that size.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::rewrite::{
    ip_packet, set_ttl_v4, swap_ipv4, swap_ipv6, swap_macs, unicast_v4, unicast_v6,
};
use crate::mem::Frame;
use crate::pipeline::{Context, Handler, Verdict};
use crate::wire::build::DEFAULT_TTL;
use crate::wire::view::{
    Icmpv4Message, Icmpv4Packet, Icmpv6Message, Icmpv6Packet, IpProtocol, Ipv4Packet, Ipv6Packet,
    IPV6_HEADER_LEN,
};
use crate::wire::{checksum, ip_proto, Layout, L3};

/// Answers echo requests to a set of IPv4 and IPv6 addresses.
#[derive(Debug, Clone, Default)]
pub struct Icmp {
    v4: Vec<Ipv4Addr>,
    v6: Vec<Ipv6Addr>,
}

impl Icmp {
    /// Answers for `addresses` (both families may be mixed).
    pub fn new(addresses: &[IpAddr]) -> Icmp {
        let mut h = Icmp::default();
        for a in addresses {
            match a {
                IpAddr::V4(a) => h.v4.push(*a),
                IpAddr::V6(a) => h.v6.push(*a),
            }
        }
        h
    }

    fn answer(&self, frame: &mut [u8], layout: &Layout) -> bool {
        let done = match (layout.l3, layout.l4_proto) {
            (L3::Ipv4, ip_proto::ICMP) => self.answer_v4(frame, layout),
            (L3::Ipv6, ip_proto::ICMPV6) => self.answer_v6(frame, layout),
            _ => false,
        };
        done && swap_macs(frame)
    }

    fn answer_v4(&self, frame: &mut [u8], layout: &Layout) -> bool {
        let Some(pkt) = ip_packet(frame, layout) else {
            return false;
        };
        let hl = match Ipv4Packet::new_checked(&*pkt) {
            Ok(ip)
                if ip.next_header() == IpProtocol::Icmp
                    && !ip.more_frags()
                    && ip.frag_offset() == 0
                    && self.v4.contains(&ip.dst_addr())
                    && unicast_v4(ip.src_addr()) =>
            {
                usize::from(ip.header_len())
            }
            _ => return false,
        };
        let Some(l4) = pkt.get_mut(hl..) else {
            return false;
        };
        let Ok(mut icmp) = Icmpv4Packet::new_checked(l4) else {
            return false;
        };
        if icmp.msg_type() != Icmpv4Message::EchoRequest {
            return false;
        }
        let code = icmp.msg_code();
        let c = checksum::update16(
            icmp.checksum(),
            u16::from_be_bytes([u8::from(Icmpv4Message::EchoRequest), code]),
            u16::from_be_bytes([u8::from(Icmpv4Message::EchoReply), code]),
        );
        icmp.set_msg_type(Icmpv4Message::EchoReply);
        icmp.set_checksum(c);
        let mut ip = Ipv4Packet::new_unchecked(&mut pkt[..]);
        swap_ipv4(&mut ip);
        set_ttl_v4(&mut ip, DEFAULT_TTL);
        true
    }

    fn answer_v6(&self, frame: &mut [u8], layout: &Layout) -> bool {
        let Some(pkt) = ip_packet(frame, layout) else {
            return false;
        };
        match Ipv6Packet::new_checked(&*pkt) {
            Ok(ip)
                if ip.next_header() == IpProtocol::Icmpv6
                    && self.v6.contains(&ip.dst_addr())
                    && unicast_v6(&ip.src_addr()) => {}
            _ => return false,
        }
        let Some(l4) = pkt.get_mut(IPV6_HEADER_LEN..) else {
            return false;
        };
        // smoltcp's check refuses unknown types, which we would leave alone anyway.
        let Ok(mut icmp) = Icmpv6Packet::new_checked(l4) else {
            return false;
        };
        if icmp.msg_type() != Icmpv6Message::EchoRequest {
            return false;
        }
        let code = icmp.msg_code();
        let c = checksum::update16(
            icmp.checksum(),
            u16::from_be_bytes([u8::from(Icmpv6Message::EchoRequest), code]),
            u16::from_be_bytes([u8::from(Icmpv6Message::EchoReply), code]),
        );
        icmp.set_msg_type(Icmpv6Message::EchoReply);
        icmp.set_checksum(c);
        let mut ip = Ipv6Packet::new_unchecked(&mut pkt[..]);
        swap_ipv6(&mut ip);
        ip.set_hop_limit(DEFAULT_TTL);
        true
    }
}

impl Handler for Icmp {
    fn name(&self) -> &str {
        "icmp"
    }

    fn process(&mut self, frames: &mut [Frame], verdicts: &mut [Verdict], _cx: &Context) {
        for (frame, v) in frames.iter_mut().zip(verdicts.iter_mut()) {
            if *v != Verdict::Next {
                continue;
            }
            let layout = frame.meta.layout;
            if self.answer(frame.data_mut(), &layout) {
                *v = Verdict::reply(frame);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::handlers::testutil::{reply, run, run_raw};
    use crate::pipeline::DropReason;
    use crate::wire::build::{self, Endpoints4, Endpoints6};
    use crate::wire::tests::{checksums_ok, set_ipv4};

    fn handler() -> Icmp {
        let e4 = Endpoints4::default();
        let e6 = Endpoints6::default();
        Icmp::new(&[
            e4.dst_ip.into(),
            e6.dst_ip.into(),
            Ipv4Addr::new(198, 19, 255, 1).into(),
        ])
    }

    #[test]
    fn answers_echo_requests_v4_and_v6_byte_exact() {
        let e4 = Endpoints4::default();
        let e6 = Endpoints6::default();
        let second = Endpoints4 {
            dst_ip: Ipv4Addr::new(198, 19, 255, 1),
            ..e4
        };
        let cases = [
            (
                build::icmp4_echo_request(&e4, 0x1234, 1, b"abcdefgh", None),
                build::icmp4_echo_reply(&e4.reversed(), 0x1234, 1, b"abcdefgh", None),
            ),
            (
                build::icmp4_echo_request(&second, 7, 65535, b"odd", Some(12)),
                build::icmp4_echo_reply(&second.reversed(), 7, 65535, b"odd", Some(12)),
            ),
            (
                build::icmp6_echo_request(&e6, 0xbeef, 2, &[0x5a; 56], None),
                build::icmp6_echo_reply(&e6.reversed(), 0xbeef, 2, &[0x5a; 56], None),
            ),
            (
                build::icmp6_echo_request(&e6, 0, 0, b"", Some(0xfff)),
                build::icmp6_echo_reply(&e6.reversed(), 0, 0, b"", Some(0xfff)),
            ),
        ];
        for (req, want) in cases {
            let out = run(&mut handler(), &[req]);
            assert_eq!(out[0].1, reply());
            assert_eq!(out[0].0, want);
            assert!(checksums_ok(&out[0].0));
        }
    }

    #[test]
    fn ttl_and_hop_limit_become_64() {
        let mut req = build::icmp4_echo_request(&Endpoints4::default(), 1, 1, b"x", None);
        set_ipv4(&mut req, |ip| ip.set_hop_limit(5));
        let out = run(&mut handler(), &[req]);
        assert_eq!(out[0].0[22], 64);
        assert_eq!(out[0].0[34], 0); // echo reply
        assert!(checksums_ok(&out[0].0));

        let mut req6 = build::icmp6_echo_request(&Endpoints6::default(), 1, 1, b"x", None);
        req6[21] = 1;
        let out = run(&mut handler(), &[req6]);
        assert_eq!((out[0].0[21], out[0].0[54]), (64, 129));
        assert!(checksums_ok(&out[0].0));
    }

    #[test]
    fn others_are_left_next_and_untouched() {
        let e4 = Endpoints4::default();
        let e6 = Endpoints6::default();
        let mut frag = build::icmp4_echo_request(&e4, 1, 1, b"x", None);
        set_ipv4(&mut frag, |ip| ip.set_more_frags(true));
        let inputs = vec![
            build::icmp4_echo_reply(&e4, 1, 1, b"", None),
            build::icmp6_echo_reply(&e6, 1, 1, b"", None),
            build::icmp4_echo_request(
                &Endpoints4 {
                    dst_ip: Ipv4Addr::new(198, 18, 0, 9),
                    ..e4
                },
                1,
                1,
                b"",
                None,
            ),
            build::icmp6_echo_request(
                &Endpoints6 {
                    dst_ip: "2001:db8::9".parse().unwrap(),
                    ..e6
                },
                1,
                1,
                b"",
                None,
            ),
            build::icmp4_echo_request(
                &Endpoints4 {
                    src_ip: Ipv4Addr::new(224, 0, 0, 5),
                    ..e4
                },
                1,
                1,
                b"",
                None,
            ),
            build::icmp6_echo_request(
                &Endpoints6 {
                    src_ip: Ipv6Addr::UNSPECIFIED,
                    ..e6
                },
                1,
                1,
                b"",
                None,
            ),
            build::udp4(&e4, b"", None),
            build::arp_request(e4.src_mac, e4.src_ip, e4.dst_ip, None),
            frag,
        ];
        for (i, (out, input)) in run(&mut handler(), &inputs)
            .into_iter()
            .zip(&inputs)
            .enumerate()
        {
            assert_eq!(out, (input.clone(), Verdict::Next), "input {i}");
        }
        // Other ICMP types (destination unreachable; an unknown ICMPv6 type).
        let mut unreach = build::icmp4_echo_request(&e4, 1, 1, b"", None);
        unreach[34] = 3;
        let mut unknown6 = build::icmp6_echo_request(&e6, 1, 1, b"", None);
        unknown6[54] = 250;
        let out = run(&mut handler(), &[unreach.clone(), unknown6.clone()]);
        assert_eq!(
            out,
            vec![(unreach, Verdict::Next), (unknown6, Verdict::Next)]
        );
    }

    #[test]
    fn decided_packets_and_empty_address_lists() {
        let req = build::icmp4_echo_request(&Endpoints4::default(), 1, 1, b"", None);
        let decided = Verdict::Drop(DropReason::Unhandled);
        let out = run_raw(&mut handler(), vec![(req.clone(), None, decided)]);
        assert_eq!(out[0], (req.clone(), decided));
        let out = run(&mut Icmp::new(&[]), &[&req]);
        assert_eq!(out[0], (req, Verdict::Next));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        #[test]
        fn reply_is_the_reversed_request(
            s in any::<[u8; 4]>(), s6 in any::<[u8; 16]>(), id in any::<u16>(), seq in any::<u16>(),
            payload in prop::collection::vec(any::<u8>(), 0..200), vlan in prop::option::of(any::<u16>()),
        ) {
            let s = Ipv4Addr::from(s);
            prop_assume!(unicast_v4(s));
            let e4 = Endpoints4 { src_ip: s, ..Endpoints4::default() };
            let out = run(&mut handler(), &[build::icmp4_echo_request(&e4, id, seq, &payload, vlan)]);
            prop_assert_eq!(&out[0].0, &build::icmp4_echo_reply(&e4.reversed(), id, seq, &payload, vlan));
            let s6 = Ipv6Addr::from(s6);
            prop_assume!(unicast_v6(&s6));
            let e6 = Endpoints6 { src_ip: s6, ..Endpoints6::default() };
            let out = run(&mut handler(), &[build::icmp6_echo_request(&e6, id, seq, &payload, vlan)]);
            prop_assert_eq!(&out[0].0, &build::icmp6_echo_reply(&e6.reversed(), id, seq, &payload, vlan));
        }
    }
}
