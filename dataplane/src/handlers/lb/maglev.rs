//! The Maglev lookup table of one VIP (Katran's "Maglev V1"): 65537 slots of real ids.
//!
//! Endpoints (reals with a weight above 0) are sorted by their 64-bit key (see
//! [`hash::endpoint_key`](super::hash::endpoint_key)), so that the table depends only on the
//! set of (address, weight) pairs, never on the order they were configured in: two
//! instances given the same reals build identical tables. Each endpoint walks its own
//! permutation `(offset + next * skip) % 65537`; in the first round it places `weight`
//! entries, in later rounds one. The arithmetic is done in `u32` with wrap-around, exactly
//! as Katran's C++ does it (`next * skip` overflows for heavily probed endpoints, and the
//! overflow decides where they land).
//!
//! Built on the control thread, never on the data path: one build touches every slot a few
//! times (≈ 1 ms for 64 reals).

use super::hash::{endpoint_key, murmur};
use std::net::IpAddr;

/// Slots per VIP (a prime, so that every skip generates the whole table).
pub const RING_SIZE: u32 = 65_537;

/// One real as the ring sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint {
    /// The real's id (what the slots hold; never 0).
    pub id: u32,
    pub weight: u32,
    /// [`endpoint_key`] of the real's address.
    pub key: u64,
}

impl Endpoint {
    pub fn new(id: u32, addr: IpAddr, weight: u32) -> Endpoint {
        Endpoint {
            id,
            weight,
            key: endpoint_key(addr),
        }
    }
}

/// (offset, skip) of an endpoint's permutation.
pub fn permutation(key: u64) -> (u32, u32) {
    let offset = (murmur(key, 42, 0) % u64::from(RING_SIZE)) as u32;
    let skip = (murmur(key, 2_718_281_828, 2307) % u64::from(RING_SIZE - 1)) as u32 + 1;
    (offset, skip)
}

/// Builds the table for `endpoints` (any order; weight-0 entries are left out). With no
/// endpoint every slot is 0 ("no real").
pub fn build(endpoints: &[Endpoint]) -> Box<[u32]> {
    let size = RING_SIZE as usize;
    let mut eps: Vec<Endpoint> = endpoints.iter().copied().filter(|e| e.weight > 0).collect();
    // Equal keys (an address listed twice) keep a stable order by id.
    eps.sort_by_key(|e| (e.key, e.id));
    let mut ring = vec![0u32; size].into_boxed_slice();
    match eps.len() {
        0 => return ring,
        1 => {
            ring.fill(eps[0].id);
            return ring;
        }
        _ => {}
    }
    let perms: Vec<(u32, u32)> = eps.iter().map(|e| permutation(e.key)).collect();
    let mut next = vec![0u32; eps.len()];
    let mut weights: Vec<u32> = eps.iter().map(|e| e.weight).collect();
    let mut filled = 0usize;
    loop {
        for i in 0..eps.len() {
            let (offset, skip) = perms[i];
            for _ in 0..weights[i] {
                let mut cur = offset.wrapping_add(next[i].wrapping_mul(skip)) % RING_SIZE;
                while ring[cur as usize] != 0 {
                    next[i] = next[i].wrapping_add(1);
                    cur = offset.wrapping_add(next[i].wrapping_mul(skip)) % RING_SIZE;
                }
                ring[cur as usize] = eps[i].id;
                next[i] = next[i].wrapping_add(1);
                filled += 1;
                if filled == size {
                    return ring;
                }
            }
            weights[i] = 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn empty_and_single() {
        assert!(build(&[]).iter().all(|&s| s == 0));
        assert!(build(&[Endpoint::new(3, ip("10.0.0.1"), 0)])
            .iter()
            .all(|&s| s == 0));
        let r = build(&[Endpoint::new(7, ip("10.0.0.1"), 5)]);
        assert_eq!(r.len(), RING_SIZE as usize);
        assert!(r.iter().all(|&s| s == 7));
    }

    #[test]
    fn every_slot_filled_and_order_does_not_matter() {
        let eps: Vec<Endpoint> = (1..=10)
            .map(|i| Endpoint::new(i, ip(&format!("10.0.0.{i}")), 1))
            .collect();
        let a = build(&eps);
        let mut rev = eps.clone();
        rev.reverse();
        assert_eq!(a, build(&rev));
        assert!(a.iter().all(|&s| (1..=10).contains(&s)));
    }

    /// The first slots an endpoint claims are its permutation's first positions: with two
    /// endpoints, slot `offset` of the one sorted first is always its own.
    #[test]
    fn first_placement_is_at_the_offset() {
        let a = Endpoint::new(1, ip("10.0.0.1"), 1);
        let b = Endpoint::new(2, ip("10.0.0.2"), 1);
        let first = if a.key < b.key { a } else { b };
        let r = build(&[a, b]);
        let (offset, _) = permutation(first.key);
        assert_eq!(r[offset as usize], first.id);
    }

    /// Katran V1 weighting: the weight counts only in the first round, afterwards every
    /// endpoint places one entry per round. 20000 and 40000 place 60000 entries in round one;
    /// the 5537 left alternate, starting with the endpoint whose key sorts first.
    #[test]
    fn weights_count_in_the_first_round_only() {
        let a = Endpoint::new(1, ip("10.0.0.1"), 20_000);
        let b = Endpoint::new(2, ip("10.0.0.2"), 40_000);
        let r = build(&[a, b]);
        let ones = r.iter().filter(|&&s| s == 1).count();
        let a_first = a.key < b.key;
        assert_eq!(ones, 20_000 + if a_first { 2769 } else { 2768 });
        assert_eq!(r.iter().filter(|&&s| s == 2).count(), 65_537 - ones);
    }
}
