//! `arp`: answers ARP requests (RFC 826) for the appliance's IPv4 addresses, in place.
//!
//! A request (operation 1, Ethernet/IPv4) whose target protocol address is one of ours
//! becomes the reply: operation 2, sender = (our MAC, the asked-for address), target = the
//! requester's (MAC, IP); the Ethernet destination becomes the requester's hardware address
//! and the source our MAC. Frame length (Ethernet padding) and VLAN tag are kept.
//!
//! Every other ARP packet is dropped as `Filtered` rather than left `Next`: ARP is
//! link-local and nothing later in a chain should see it. That includes requests for other
//! addresses, replies and gratuitous ARP (sender address = target address, request or
//! reply): this appliance keeps no ARP cache yet, so it learns nothing from them. ARP that
//! is not Ethernet/IPv4 (other hardware types, address lengths) is `Filtered` too. Probes
//! (sender address 0.0.0.0, RFC 5227) for one of our addresses are answered like any request
//! so that the prober sees the address is taken. Non-ARP frames are left `Next`.

use std::net::Ipv4Addr;

use crate::mem::Frame;
use crate::pipeline::{Context, DropReason, Handler, Verdict};
use crate::wire::view::{ArpHardware, ArpOperation, ArpPacket, EthernetFrame, EthernetProtocol};
use crate::wire::{Layout, MacAddr, L3};

/// Answers ARP requests for a set of IPv4 addresses with one MAC address.
#[derive(Debug, Clone)]
pub struct Arp {
    mac: MacAddr,
    addresses: Vec<Ipv4Addr>,
}

impl Arp {
    /// Answers for `addresses` with `mac`.
    pub fn new(mac: MacAddr, addresses: Vec<Ipv4Addr>) -> Arp {
        Arp { mac, addresses }
    }

    /// The verdict for one ARP frame, rewriting it into a reply when it is a request for us.
    fn decide(&self, frame: &mut [u8], layout: &Layout) -> Option<DropReason> {
        let l3 = usize::from(layout.l3_off);
        if l3 < EthernetFrame::<&[u8]>::header_len() {
            return Some(DropReason::Truncated);
        }
        let Some(Ok(mut arp)) = frame.get_mut(l3..).map(ArpPacket::new_checked) else {
            return Some(DropReason::Truncated);
        };
        if arp.hardware_type() != ArpHardware::Ethernet
            || arp.protocol_type() != EthernetProtocol::Ipv4
            || arp.hardware_len() != 6
            || arp.protocol_len() != 4
            || arp.operation() != ArpOperation::Request
        {
            return Some(DropReason::Filtered);
        }
        // Lengths checked above: these are 6 and 4 bytes.
        let (Some(sha), Some(spa), Some(tpa)) = (
            MacAddr::from_slice(arp.source_hardware_addr()),
            ipv4(arp.source_protocol_addr()),
            ipv4(arp.target_protocol_addr()),
        ) else {
            return Some(DropReason::Filtered);
        };
        if spa == tpa || !self.addresses.contains(&tpa) {
            return Some(DropReason::Filtered);
        }
        arp.set_operation(ArpOperation::Reply);
        arp.set_target_hardware_addr(&sha.0);
        arp.set_target_protocol_addr(&spa.octets());
        arp.set_source_hardware_addr(&self.mac.0);
        arp.set_source_protocol_addr(&tpa.octets());
        // In bounds: l3 >= 14 and l3 <= frame length (the slice above existed).
        let mut eth = EthernetFrame::new_unchecked(&mut frame[..l3]);
        eth.set_dst_addr(sha.into());
        eth.set_src_addr(self.mac.into());
        None
    }
}

fn ipv4(b: &[u8]) -> Option<Ipv4Addr> {
    <[u8; 4]>::try_from(b).ok().map(Ipv4Addr::from)
}

impl Handler for Arp {
    fn name(&self) -> &str {
        "arp"
    }

    fn process(&mut self, frames: &mut [Frame], verdicts: &mut [Verdict], _cx: &Context) {
        for (frame, v) in frames.iter_mut().zip(verdicts.iter_mut()) {
            if *v != Verdict::Next || frame.meta.layout.l3 != L3::Arp {
                continue;
            }
            let layout = frame.meta.layout;
            *v = match self.decide(frame.data_mut(), &layout) {
                None => Verdict::reply(frame),
                Some(reason) => Verdict::Drop(reason),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handlers::testutil::{reply, run, run_raw};
    use crate::wire::build::{self, Endpoints4};

    const OURS: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0x01]);
    const CLIENT: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0x02]);

    fn ip(last: u8) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, 0, last)
    }

    fn handler() -> Arp {
        Arp::new(OURS, vec![ip(1), Ipv4Addr::new(198, 19, 0, 1)])
    }

    #[test]
    fn answers_requests_for_our_addresses_byte_exact() {
        for (target, vlan) in [(ip(1), None), (Ipv4Addr::new(198, 19, 0, 1), Some(100))] {
            let req = build::arp_request(CLIENT, ip(2), target, vlan);
            let out = run(&mut handler(), &[req]);
            assert_eq!(out[0].1, reply());
            assert_eq!(
                out[0].0,
                build::arp_reply(OURS, target, CLIENT, ip(2), vlan)
            );
        }
    }

    #[test]
    fn field_by_field() {
        let req = build::pad(build::arp_request(CLIENT, ip(2), ip(1), None), 60);
        let out = run(&mut handler(), &[req]);
        let f = &out[0].0;
        assert_eq!(f.len(), 60, "padding kept");
        assert_eq!(&f[0..6], &CLIENT.0, "eth dst = requester");
        assert_eq!(&f[6..12], &OURS.0, "eth src = us");
        assert_eq!(&f[12..14], &[0x08, 0x06]);
        assert_eq!(
            &f[14..22],
            &[0, 1, 8, 0, 6, 4, 0, 2],
            "htype, ptype, lengths, op = reply"
        );
        assert_eq!(&f[22..28], &OURS.0, "sha");
        assert_eq!(&f[28..32], &[198, 18, 0, 1], "spa");
        assert_eq!(&f[32..38], &CLIENT.0, "tha");
        assert_eq!(&f[38..42], &[198, 18, 0, 2], "tpa");
        assert_eq!(&f[42..], &[0; 18]);
    }

    #[test]
    fn answers_probes() {
        let req = build::arp_request(CLIENT, Ipv4Addr::UNSPECIFIED, ip(1), None);
        let out = run(&mut handler(), &[req]);
        assert_eq!(
            out[0],
            (
                build::arp_reply(OURS, ip(1), CLIENT, Ipv4Addr::UNSPECIFIED, None),
                reply()
            )
        );
    }

    #[test]
    fn filters_the_rest_of_arp_and_leaves_other_frames() {
        let filtered = Verdict::Drop(DropReason::Filtered);
        let mut rarp = build::arp_request(CLIENT, ip(2), ip(1), None);
        rarp[21] = 3; // RARP request
        let mut token_ring = build::arp_request(CLIENT, ip(2), ip(1), None);
        token_ring[15] = 6;
        let mut long_hw = build::arp_request(CLIENT, ip(2), ip(1), None);
        long_hw[18] = 7;
        long_hw.extend_from_slice(&[0, 0]);
        let inputs = vec![
            build::arp_request(CLIENT, ip(2), ip(9), None),
            build::arp_reply(CLIENT, ip(2), OURS, ip(1), None),
            // Gratuitous, request and reply form.
            build::arp_request(CLIENT, ip(1), ip(1), None),
            build::arp_reply(CLIENT, ip(1), MacAddr::BROADCAST, ip(1), None),
            rarp,
            token_ring,
            long_hw,
        ];
        for (i, (input, (bytes, verdict))) in
            inputs.iter().zip(run(&mut handler(), &inputs)).enumerate()
        {
            assert_eq!((&bytes, verdict), (input, filtered), "input {i}");
        }
        let udp = build::udp4(&Endpoints4::default(), b"", None);
        assert_eq!(run(&mut handler(), &[&udp])[0], (udp, Verdict::Next));
    }

    #[test]
    fn decided_packets_and_stale_layouts() {
        let req = build::arp_request(CLIENT, ip(2), ip(1), None);
        let decided = Verdict::Drop(DropReason::RingFull);
        let mut bad = crate::wire::parse(&req).unwrap();
        bad.l3_off = 40;
        let mut low = bad;
        low.l3_off = 3;
        let out = run_raw(
            &mut handler(),
            vec![
                (req.clone(), None, decided),
                (req.clone(), Some(bad), Verdict::Next),
                (req.clone(), Some(low), Verdict::Next),
                (
                    req[..30].to_vec(),
                    Some(crate::wire::parse(&req).unwrap()),
                    Verdict::Next,
                ),
            ],
        );
        assert_eq!(out[0], (req.clone(), decided));
        for o in &out[1..] {
            assert_eq!(o.1, Verdict::Drop(DropReason::Truncated));
        }
        assert_eq!(out[1].0, req);
    }
}
