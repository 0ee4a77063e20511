//! `udp-echo`: RFC 862 echo over UDP, IPv4 and IPv6, with or without an 802.1Q tag (kept
//! as is). The request is turned into the reply in place: MACs, IP addresses and ports
//! swapped, payload untouched, sent back on the queue it came from.
//!
//! TTL / hop limit: the reply is a new datagram originated by this host, so it gets a fresh
//! TTL of [`DEFAULT_TTL`] (64, as a Linux echo server's reply would), not the request's
//! remaining TTL. Keeping the request's value would make replies to far-away clients arrive
//! with a TTL near zero, and would leak the request's path length back to the sender.
//!
//! Checksums are updated, not recomputed: swapping addresses and ports changes no sum
//! (one's complement addition is commutative), so the UDP checksum stays as it was (an IPv4
//! UDP checksum of 0, "none", stays 0) and only the IPv4 header checksum is adjusted for the
//! TTL word (RFC 1624). A request with a wrong UDP checksum therefore gets a reply with a
//! wrong checksum, which its sender discards: the handler does not read the payload.
//!
//! Left `Next` (for a later handler, or the `Unhandled` counter): anything but UDP to the
//! port; IPv4 fragments (no reassembly); requests from the echo port itself (two echo
//! services would otherwise bounce a packet between them forever) or from port 0; requests
//! from or to an unspecified, multicast or broadcast address (a reflector must not answer a
//! group or a spoofed source).

use super::rewrite::{
    ip_packet, set_ttl_v4, swap_ipv4, swap_ipv6, swap_macs, unicast_v4, unicast_v6,
};
use crate::mem::Frame;
use crate::pipeline::{Context, Handler, Verdict};
use crate::wire::build::DEFAULT_TTL;
use crate::wire::view::{IpProtocol, Ipv4Packet, Ipv6Packet, UdpPacket, IPV6_HEADER_LEN};
use crate::wire::{ip_proto, Layout, L3};

/// Answers UDP datagrams to one port with the same payload.
#[derive(Debug, Clone)]
pub struct UdpEcho {
    port: u16,
}

impl UdpEcho {
    /// An echo service on `port`.
    pub fn new(port: u16) -> UdpEcho {
        UdpEcho { port }
    }

    /// The port answered on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Checks the ports of the UDP header at the start of `l4`: true for a request to serve.
    #[inline]
    fn wanted(&self, l4: &[u8]) -> bool {
        match UdpPacket::new_checked(l4) {
            Ok(udp) => {
                udp.dst_port() == self.port && udp.src_port() != self.port && udp.src_port() != 0
            }
            Err(_) => false,
        }
    }

    /// Turns a request into its reply in place; false (nothing changed) when the frame is not
    /// a request this handler serves.
    fn answer(&self, frame: &mut [u8], layout: &Layout) -> bool {
        if layout.l4_proto != ip_proto::UDP {
            return false;
        }
        let done = match layout.l3 {
            L3::Ipv4 => self.answer_v4(frame, layout),
            L3::Ipv6 => self.answer_v6(frame, layout),
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
                if ip.next_header() == IpProtocol::Udp
                    && !ip.more_frags()
                    && ip.frag_offset() == 0
                    && unicast_v4(ip.src_addr())
                    && unicast_v4(ip.dst_addr()) =>
            {
                usize::from(ip.header_len())
            }
            _ => return false,
        };
        if !pkt.get(hl..).is_some_and(|l4| self.wanted(l4)) {
            return false;
        }
        let mut ip = Ipv4Packet::new_unchecked(&mut pkt[..]);
        swap_ipv4(&mut ip);
        set_ttl_v4(&mut ip, DEFAULT_TTL);
        swap_ports(&mut pkt[hl..]);
        true
    }

    fn answer_v6(&self, frame: &mut [u8], layout: &Layout) -> bool {
        let Some(pkt) = ip_packet(frame, layout) else {
            return false;
        };
        match Ipv6Packet::new_checked(&*pkt) {
            Ok(ip)
                if ip.next_header() == IpProtocol::Udp
                    && unicast_v6(&ip.src_addr())
                    && unicast_v6(&ip.dst_addr()) => {}
            _ => return false,
        }
        let hl = IPV6_HEADER_LEN;
        if !pkt.get(hl..).is_some_and(|l4| self.wanted(l4)) {
            return false;
        }
        let mut ip = Ipv6Packet::new_unchecked(&mut pkt[..]);
        swap_ipv6(&mut ip);
        ip.set_hop_limit(DEFAULT_TTL);
        swap_ports(&mut pkt[hl..]);
        true
    }
}

/// Exchanges the UDP ports; the checksum is unchanged (same words, other order).
#[inline]
fn swap_ports(l4: &mut [u8]) {
    if let Ok(mut udp) = UdpPacket::new_checked(l4) {
        let (s, d) = (udp.src_port(), udp.dst_port());
        udp.set_src_port(d);
        udp.set_dst_port(s);
    }
}

impl Handler for UdpEcho {
    fn name(&self) -> &str {
        "udp-echo"
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
    use std::net::{Ipv4Addr, Ipv6Addr};

    use proptest::prelude::*;

    use super::*;
    use crate::handlers::testutil::{reply, run, run_raw};
    use crate::pipeline::DropReason;
    use crate::wire::build::{self, Endpoints4, Endpoints6, TcpFlags};
    use crate::wire::checksum;
    use crate::wire::tests::{checksums_ok, set_ipv4};

    fn echo<B: AsRef<[u8]>>(inputs: &[B]) -> Vec<(Vec<u8>, Verdict)> {
        run(&mut UdpEcho::new(7), inputs)
    }

    #[test]
    fn answers_ipv4_and_ipv6_with_and_without_vlan() {
        let e4 = Endpoints4::default();
        let e6 = Endpoints6::default();
        let payload = b"the quick brown fox";
        let cases = [
            (
                build::udp4(&e4, payload, None),
                build::udp4(&e4.reversed(), payload, None),
            ),
            (
                build::udp4(&e4, payload, Some(0x2064)),
                build::udp4(&e4.reversed(), payload, Some(0x2064)),
            ),
            (
                build::udp6(&e6, payload, None),
                build::udp6(&e6.reversed(), payload, None),
            ),
            (
                build::udp6(&e6, b"odd", Some(5)),
                build::udp6(&e6.reversed(), b"odd", Some(5)),
            ),
            (
                build::udp4(&e4, b"", None),
                build::udp4(&e4.reversed(), b"", None),
            ),
        ];
        for (req, want) in cases {
            let out = echo(&[req]);
            assert_eq!(out[0].1, reply());
            // Byte-exact against an independently built reply (TTL 64, fresh checksums).
            assert_eq!(out[0].0, want);
            assert!(checksums_ok(&out[0].0));
        }
    }

    #[test]
    fn ethernet_padding_is_kept() {
        let e4 = Endpoints4::default();
        let req = build::pad(build::udp4(&e4, b"x", None), 60);
        let out = echo(&[req]);
        assert_eq!(
            out[0].0,
            build::pad(build::udp4(&e4.reversed(), b"x", None), 60)
        );
    }

    /// The TTL decision: a fresh 64 whatever the request had, header checksum still valid.
    #[test]
    fn reply_gets_a_fresh_ttl_of_64() {
        let e4 = Endpoints4::default();
        for ttl in [1u8, 2, 63, 64, 65, 255] {
            let mut req = build::udp4(&e4, b"ttl", None);
            set_ipv4(&mut req, |ip| ip.set_hop_limit(ttl));
            let out = echo(&[req]);
            assert_eq!(out[0].0[22], 64, "request ttl {ttl}");
            assert!(checksums_ok(&out[0].0));
            assert_eq!(out[0].0, build::udp4(&e4.reversed(), b"ttl", None));
        }
        let mut req6 = build::udp6(&Endpoints6::default(), b"", None);
        req6[21] = 3;
        assert_eq!(echo(&[req6])[0].0[21], 64);
    }

    #[test]
    fn ipv4_checksum_zero_stays_zero() {
        let mut req = build::udp4(&Endpoints4::default(), b"no checksum", None);
        req[40] = 0;
        req[41] = 0;
        let out = echo(&[req]);
        assert_eq!(out[0].1, reply());
        assert_eq!(&out[0].0[40..42], &[0, 0]);
        assert!(checksums_ok(&out[0].0));
    }

    #[test]
    fn ip_options_are_kept() {
        // IHL 6 with four NOP options.
        let base = build::udp4(&Endpoints4::default(), b"opt", None);
        let mut req = base[..34].to_vec();
        req.extend_from_slice(&[1, 1, 1, 1]);
        req.extend_from_slice(&base[34..]);
        req[14] = 0x46;
        req[17] += 4;
        req[24] = 0;
        req[25] = 0;
        let c = checksum::of(&req[14..38]);
        req[24..26].copy_from_slice(&c.to_be_bytes());
        let out = echo(&[&req]);
        assert_eq!(out[0].1, reply());
        let r = &out[0].0;
        assert!(checksums_ok(r));
        assert_eq!(&r[34..38], &[1, 1, 1, 1]);
        assert_eq!(&r[38..42], &[0, 7, 4, 0]);
        assert_eq!(&r[26..34], &[198, 18, 0, 1, 198, 18, 0, 2]);
    }

    #[test]
    fn port_is_configurable() {
        let e = Endpoints4 {
            dst_port: 9,
            ..Endpoints4::default()
        };
        let req = build::udp4(&e, b"discard?", None);
        let out = run(&mut UdpEcho::new(9), &[&req]);
        assert_eq!(
            out[0],
            (build::udp4(&e.reversed(), b"discard?", None), reply())
        );
        assert_eq!(echo(&[&req])[0], (req, Verdict::Next));
    }

    #[test]
    fn everything_else_is_left_next_and_untouched() {
        let e4 = Endpoints4::default();
        let e6 = Endpoints6::default();
        let mut frag = build::udp4(&e4, b"frag", None);
        set_ipv4(&mut frag, |ip| ip.set_more_frags(true));
        let mut later = build::udp4(&e4, b"frag", None);
        set_ipv4(&mut later, |ip| ip.set_frag_offset(8));
        let inputs = vec![
            build::udp4(&Endpoints4 { dst_port: 8, ..e4 }, b"", None),
            build::udp6(&Endpoints6 { dst_port: 77, ..e6 }, b"", None),
            build::tcp4(&e4, TcpFlags::SYN, 0, 0, b"", None),
            build::icmp4_echo_request(&e4, 1, 1, b"", None),
            build::arp_request(e4.src_mac, e4.src_ip, e4.dst_ip, None),
            frag,
            later,
            // Loop guard: from the echo port itself, and from port 0.
            build::udp4(&Endpoints4 { src_port: 7, ..e4 }, b"", None),
            build::udp6(&Endpoints6 { src_port: 0, ..e6 }, b"", None),
            // Group and unspecified addresses.
            build::udp4(
                &Endpoints4 {
                    dst_ip: Ipv4Addr::BROADCAST,
                    ..e4
                },
                b"",
                None,
            ),
            build::udp4(
                &Endpoints4 {
                    dst_ip: Ipv4Addr::new(224, 0, 0, 1),
                    ..e4
                },
                b"",
                None,
            ),
            build::udp4(
                &Endpoints4 {
                    src_ip: Ipv4Addr::UNSPECIFIED,
                    ..e4
                },
                b"",
                None,
            ),
            build::udp6(
                &Endpoints6 {
                    dst_ip: "ff02::1".parse().unwrap(),
                    ..e6
                },
                b"",
                None,
            ),
            build::udp6(
                &Endpoints6 {
                    src_ip: Ipv6Addr::UNSPECIFIED,
                    ..e6
                },
                b"",
                None,
            ),
        ];
        for (i, (out, input)) in echo(&inputs).into_iter().zip(&inputs).enumerate() {
            assert_eq!(out, (input.clone(), Verdict::Next), "input {i}");
        }
    }

    #[test]
    fn decided_packets_and_stale_layouts_are_left_alone() {
        let req = build::udp4(&Endpoints4::default(), b"x", None);
        let decided = Verdict::Drop(DropReason::Filtered);
        let mut stale = parse_of(&req);
        stale.l4_len += 100;
        let mut short = parse_of(&req);
        short.l3_off = 2;
        let out = run_raw(
            &mut UdpEcho::new(7),
            vec![
                (req.clone(), None, decided),
                (req.clone(), Some(stale), Verdict::Next),
                (req.clone(), Some(short), Verdict::Next),
                (req[..40].to_vec(), Some(parse_of(&req)), Verdict::Next),
            ],
        );
        assert_eq!(out[0], (req.clone(), decided));
        assert_eq!(out[1], (req.clone(), Verdict::Next));
        assert_eq!(out[2], (req.clone(), Verdict::Next));
        assert_eq!(out[3], (req[..40].to_vec(), Verdict::Next));
    }

    fn parse_of(f: &[u8]) -> Layout {
        crate::wire::parse(f).unwrap()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// For any endpoints, payload and tag, the reply is exactly the request built in the
        /// other direction (which has valid checksums by construction).
        #[test]
        fn reply_is_the_reversed_request(
            s in any::<[u8; 4]>(), d in any::<[u8; 4]>(), s6 in any::<[u8; 16]>(), d6 in any::<[u8; 16]>(),
            sp in 1u16.., payload in prop::collection::vec(any::<u8>(), 0..300),
            vlan in prop::option::of(any::<u16>()),
        ) {
            let s = Ipv4Addr::from(s);
            let d = Ipv4Addr::from(d);
            prop_assume!(sp != 7 && unicast_v4(s) && unicast_v4(d));
            let e4 = Endpoints4 { src_ip: s, dst_ip: d, src_port: sp, ..Endpoints4::default() };
            let out = echo(&[build::udp4(&e4, &payload, vlan)]);
            prop_assert_eq!(&out[0].0, &build::udp4(&e4.reversed(), &payload, vlan));
            prop_assert!(checksums_ok(&out[0].0));
            let (s6, d6) = (Ipv6Addr::from(s6), Ipv6Addr::from(d6));
            prop_assume!(unicast_v6(&s6) && unicast_v6(&d6));
            let e6 = Endpoints6 { src_ip: s6, dst_ip: d6, src_port: sp, ..Endpoints6::default() };
            let out = echo(&[build::udp6(&e6, &payload, vlan)]);
            prop_assert_eq!(&out[0].0, &build::udp6(&e6.reversed(), &payload, vlan));
            prop_assert!(checksums_ok(&out[0].0));
        }
    }
}
