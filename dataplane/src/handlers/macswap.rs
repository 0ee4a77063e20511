//! `macswap`: the L2 reflector (DPDK testpmd's `macswap` forwarding mode). Every packet still
//! undecided goes back out of the queue it came in on with its Ethernet addresses swapped;
//! nothing above L2 is read or changed. Used as the baseline handler in benchmarks.

use super::rewrite::swap_macs;
use crate::mem::Frame;
use crate::pipeline::{Context, DropReason, Handler, Verdict};

/// Swaps source and destination MAC of every packet and sends it back.
#[derive(Debug, Clone, Default)]
pub struct Macswap;

impl Macswap {
    pub fn new() -> Macswap {
        Macswap
    }
}

impl Handler for Macswap {
    fn name(&self) -> &str {
        "macswap"
    }

    fn process(&mut self, frames: &mut [Frame], verdicts: &mut [Verdict], _cx: &Context) {
        for (frame, v) in frames.iter_mut().zip(verdicts.iter_mut()) {
            if *v != Verdict::Next {
                continue;
            }
            *v = if swap_macs(frame.data_mut()) {
                Verdict::reply(frame)
            } else {
                // Only reachable if a frame skipped the receive-side parse.
                Verdict::Drop(DropReason::Runt)
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handlers::testutil::{reply, run, run_raw};
    use crate::wire::build::{self, Endpoints4, Endpoints6};

    #[test]
    fn swaps_macs_and_nothing_else() {
        let ep = Endpoints4::default();
        let inputs = vec![
            build::udp4(&ep, b"hello", None),
            build::udp6(&Endpoints6::default(), b"", Some(42)),
            build::arp_request(ep.src_mac, ep.src_ip, ep.dst_ip, None),
        ];
        let out = run(&mut Macswap::new(), &inputs);
        for (input, (bytes, verdict)) in inputs.iter().zip(&out) {
            assert_eq!(*verdict, reply());
            assert_eq!(&bytes[..6], &input[6..12]);
            assert_eq!(&bytes[6..12], &input[..6]);
            assert_eq!(&bytes[12..], &input[12..]);
        }
        assert_eq!(
            out[0].0,
            build::udp4(
                &Endpoints4 {
                    src_mac: ep.dst_mac,
                    dst_mac: ep.src_mac,
                    ..ep
                },
                b"hello",
                None
            )
        );
    }

    #[test]
    fn leaves_decided_packets_alone_and_refuses_runts() {
        let f = build::udp4(&Endpoints4::default(), b"", None);
        let decided = Verdict::Drop(DropReason::Filtered);
        let out = run_raw(
            &mut Macswap::new(),
            vec![
                (f.clone(), None, decided),
                (f[..10].to_vec(), None, Verdict::Next),
            ],
        );
        assert_eq!(out[0], (f, decided));
        assert_eq!(out[1].1, Verdict::Drop(DropReason::Runt));
    }
}
