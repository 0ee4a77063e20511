//! `macswap`: the L2 reflector (DPDK testpmd's `macswap` forwarding mode). Every packet still
//! undecided goes back out of the queue it came in on with its Ethernet addresses swapped;
//! nothing above L2 is read or changed. Used as the baseline handler in benchmarks. It needs
//! no receive-side parse ([`Handler::needs_layout`] is false): runts are its own `runt` drops,
//! and frames with broken upper headers are reflected like any other.

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

    /// Reads only the 12 address bytes, checking the length itself: a chain of `macswap`
    /// alone skips the receive-side parse, like testpmd's `macswap` mode.
    fn needs_layout(&self) -> bool {
        false
    }

    fn process(&mut self, frames: &mut [Frame], verdicts: &mut [Verdict], _cx: &Context) {
        for (frame, v) in frames.iter_mut().zip(verdicts.iter_mut()) {
            if *v != Verdict::Next {
                continue;
            }
            let rx = frame.meta.rx;
            *v = match frame.data_mut().first_chunk_mut::<ETHERNET_HEADER>() {
                Some(eth) => {
                    swap_addresses(eth);
                    Verdict::Tx(rx)
                }
                // Shorter than an Ethernet header: only reachable when the chain skipped the
                // receive-side parse (see `needs_layout`).
                None => Verdict::Drop(DropReason::Runt),
            };
        }
    }
}

/// Destination, source, ethertype.
const ETHERNET_HEADER: usize = 14;

/// Swaps the two 6-byte addresses in registers: one 8-byte and one 4-byte load, the same
/// stores back (what `rewrite::swap_macs` does through smoltcp's view, without a round trip
/// through the stack; this is the whole per-packet work of the handler).
#[inline(always)]
fn swap_addresses(eth: &mut [u8; ETHERNET_HEADER]) {
    let (head, rest) = eth
        .split_first_chunk_mut::<8>()
        .unwrap_or_else(|| unreachable!());
    let tail = rest
        .first_chunk_mut::<4>()
        .unwrap_or_else(|| unreachable!());
    // Little-endian numbering: bit 8k holds byte k. Bytes 0..12 are dst (0..6), src (6..12).
    let a = u64::from_le_bytes(*head);
    let b = u32::from_le_bytes(*tail);
    // New bytes 0..6 = old 6..12 (6, 7 from `a`, 8..12 from `b`); new 6, 7 = old 0, 1.
    *head = ((a >> 48) | (u64::from(b) << 16) | (a << 48)).to_le_bytes();
    // New bytes 8..12 = old 2..6.
    *tail = ((a >> 16) as u32).to_le_bytes();
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
