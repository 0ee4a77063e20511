//! The Internet checksum: full computation (RFC 1071) and incremental update (RFC 1624).
//!
//! smoltcp computes checksums internally but does not export its `checksum` module, so this is
//! our own small copy of the arithmetic. Sums are carried as unfolded `u32` partial sums so
//! that a pseudo-header and several byte ranges can be added before one [`fold`]; the
//! accumulation itself runs in `u64` and cannot overflow for any slice length.
//!
//! Incremental updates use RFC 1624 equation 3, `HC' = ~(~HC + ~m + m')`, which (unlike the
//! older RFC 1141 form) never produces `-0` wrongly. Handlers that rewrite a few header words
//! use them instead of a pass over the payload. Note what does *not* need an update: swapping
//! the source and destination of an address or port pair leaves every sum unchanged, because
//! one's complement addition is commutative.

use std::net::{Ipv4Addr, Ipv6Addr};

/// One's complement sum of `data` read as big-endian 16-bit words (an odd last byte is padded
/// with a zero byte), added to `initial`. Not folded and not complemented: add more ranges to
/// it, then [`finish`] it.
///
/// Ranges after the first must start at an even offset of the checksummed data (an odd-length
/// range is only allowed last).
pub fn sum(initial: u32, data: &[u8]) -> u32 {
    // RFC 1071 section 2: the sum does not depend on byte order, and a word of any multiple
    // of 16 bits is congruent to the sum of its 16-bit pieces modulo 0xffff. So add
    // little-endian 32-bit words into eight 64-bit lanes (independent chains the compiler
    // turns into vector adds; a lane overflows only after 2^32 words, a 128 GiB slice),
    // fold to 16 bits, and swap once at the end to get the big-endian sum. 2 bytes and a
    // swap per add, as this once did, made it the largest part of building a 1 KB reply.
    let (words, rest) = data.as_chunks::<4>();
    let (blocks, odd) = words.as_chunks::<LANES>();
    let mut lanes = [0u64; LANES];
    for block in blocks {
        for (lane, w) in lanes.iter_mut().zip(block) {
            *lane += u64::from(u32::from_le_bytes(*w));
        }
    }
    let mut total = tail_word(rest);
    for w in odd {
        total += u128::from(u32::from_le_bytes(*w));
    }
    for lane in lanes {
        total += u128::from(lane);
    }
    combine(initial, total)
}

/// Accumulator lanes of [`sum`]: two 256-bit vectors' worth of 64-bit lanes.
const LANES: usize = 8;

/// The last 0-7 bytes as a little-endian word, zero-padded after them in memory order (an
/// odd last byte is the high byte of a big-endian 16-bit word). No copy call: short inputs
/// (IP headers) are most of the calls.
#[inline]
fn tail_word(rest: &[u8]) -> u128 {
    let (mut w, mut rest, mut shift) = (0u64, rest, 0);
    if let Some((four, r)) = rest.split_first_chunk::<4>() {
        w = u64::from(u32::from_le_bytes(*four));
        (rest, shift) = (r, 32);
    }
    if let Some((two, r)) = rest.split_first_chunk::<2>() {
        w |= u64::from(u16::from_le_bytes(*two)) << shift;
        (rest, shift) = (r, shift + 16);
    }
    if let Some(&b) = rest.first() {
        w |= u64::from(b) << shift;
    }
    u128::from(w)
}

/// Folds a sum of little-endian words to 16 bits, turns it big-endian and adds it to the
/// big-endian partial sum `initial`, folded into 32 bits.
#[inline]
fn combine(initial: u32, acc: u128) -> u32 {
    // 2^64, 2^32 and 2^16 are all 1 modulo 0xffff: fold the halves together (end-around
    // carry) down to 16 bits.
    let (s, carry) = (acc as u64).overflowing_add((acc >> 64) as u64);
    let s = s + u64::from(carry); // no overflow: after a carry, s <= 2^64 - 2
    let s = (s & 0xffff_ffff) + (s >> 32);
    let s = (s & 0xffff_ffff) + (s >> 32);
    let s = (s & 0xffff) + (s >> 16);
    let s = (s & 0xffff) + (s >> 16);
    let s = (s & 0xffff) + (s >> 16);
    let be = (s as u16).swap_bytes();
    let total = u64::from(initial) + u64::from(be);
    let total = (total & 0xffff_ffff) + (total >> 32);
    ((total & 0xffff_ffff) + (total >> 32)) as u32
}

/// Folds a partial sum to 16 bits (end-around carry), without complementing it.
#[inline]
pub fn fold(mut sum: u32) -> u16 {
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// The checksum field value for a partial sum: folded and complemented.
#[inline]
pub fn finish(sum: u32) -> u16 {
    !fold(sum)
}

/// Checksum of `data` alone (for example an IPv4 header with its checksum field zeroed).
#[inline]
pub fn of(data: &[u8]) -> u16 {
    finish(sum(0, data))
}

/// True when `data`, checksum field included, sums to `0xffff` (the checksum is right).
#[inline]
pub fn verify(initial: u32, data: &[u8]) -> bool {
    fold(sum(initial, data)) == 0xffff
}

/// Partial sum of the IPv4 pseudo-header (RFC 768 / RFC 793): addresses, protocol and the
/// transport length (header + payload).
pub fn pseudo_v4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, len: u16) -> u32 {
    let s = sum(0, &src.octets());
    let s = sum(s, &dst.octets());
    s + u32::from(proto) + u32::from(len)
}

/// Partial sum of the IPv6 pseudo-header (RFC 8200 section 8.1): addresses, upper-layer
/// packet length and next header.
pub fn pseudo_v6(src: &Ipv6Addr, dst: &Ipv6Addr, next_header: u8, len: u32) -> u32 {
    let s = sum(0, &src.octets());
    let s = sum(s, &dst.octets());
    let s = sum(s, &len.to_be_bytes());
    s + u32::from(next_header)
}

/// New checksum after one 16-bit word covered by `check` changed from `old` to `new`
/// (RFC 1624 equation 3).
#[inline]
pub fn update16(check: u16, old: u16, new: u16) -> u16 {
    let s = u32::from(!check) + u32::from(!old) + u32::from(new);
    !fold(s)
}

/// New checksum after a 32-bit field (an IPv4 address, a TCP sequence number) covered by
/// `check` changed from `old` to `new`.
#[inline]
pub fn update32(check: u16, old: u32, new: u32) -> u16 {
    let s = u32::from(!check)
        + u32::from(!(old >> 16) as u16)
        + u32::from(!old as u16)
        + u32::from((new >> 16) as u16)
        + u32::from(new as u16);
    !fold(s)
}

/// New checksum after a 16-byte field (an IPv6 address) covered by `check` changed from `old`
/// to `new`. The field must start at an even offset of the checksummed data.
pub fn update_addr16(check: u16, old: &[u8; 16], new: &[u8; 16]) -> u16 {
    let mut s = u32::from(!check);
    for (o, n) in old.chunks_exact(2).zip(new.chunks_exact(2)) {
        s += u32::from(!u16::from_be_bytes([o[0], o[1]]));
        s += u32::from(u16::from_be_bytes([n[0], n[1]]));
    }
    !fold(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The IPv4 header example of RFC 1071 section 3 / many textbooks (checksum 0xb861).
    const IPV4_HEADER: [u8; 20] = [
        0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8, 0x00,
        0x01, 0xc0, 0xa8, 0x00, 0xc7,
    ];

    #[test]
    fn known_header_checksum() {
        assert_eq!(of(&IPV4_HEADER), 0xb861);
        let mut h = IPV4_HEADER;
        h[10..12].copy_from_slice(&0xb861u16.to_be_bytes());
        assert!(verify(0, &h));
        h[3] ^= 1;
        assert!(!verify(0, &h));
    }

    #[test]
    fn rfc1071_example_sum() {
        // RFC 1071 section 3: bytes 00 01 f2 03 f4 f5 f6 f7 sum to ddf2 (folded).
        let d = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(sum(0, &d)), 0xddf2);
    }

    /// The definition, word by word, to check the fast sum against.
    fn reference(initial: u32, data: &[u8]) -> u32 {
        let mut acc = u64::from(initial);
        for w in data.chunks(2) {
            acc += u64::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)]));
        }
        while acc >> 32 != 0 {
            acc = (acc & 0xffff_ffff) + (acc >> 32);
        }
        acc as u32
    }

    proptest::proptest! {
        #[test]
        fn fast_sum_folds_like_the_definition(
            initial in proptest::prelude::any::<u32>(),
            data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2048),
        ) {
            proptest::prop_assert_eq!(fold(sum(initial, &data)), fold(reference(initial, &data)));
        }
    }

    #[test]
    fn fast_sum_edge_cases() {
        for data in [
            vec![],
            vec![0xff; 1],
            vec![0xff; 2],
            vec![0xff; 3],
            vec![0xff; 4096],
            vec![0; 7],
        ] {
            for initial in [0, 1, 0xffff, 0xffff_ffff] {
                assert_eq!(
                    fold(sum(initial, &data)),
                    fold(reference(initial, &data)),
                    "{data:?} {initial}"
                );
            }
        }
    }

    #[test]
    fn odd_length_pads_with_zero() {
        assert_eq!(fold(sum(0, &[0x12, 0x34, 0x56])), 0x1234 + 0x5600);
        assert_eq!(sum(0, &[]), 0);
        assert_eq!(finish(0), 0xffff);
    }

    #[test]
    fn sums_compose_over_even_splits() {
        let data: Vec<u8> = (0..999u32).map(|i| (i * 7 + 3) as u8).collect();
        let whole = fold(sum(0, &data));
        for split in (0..data.len()).step_by(2) {
            let (a, b) = data.split_at(split);
            assert_eq!(fold(sum(sum(0, a), b)), whole, "split at {split}");
        }
    }

    #[test]
    fn large_inputs_do_not_overflow() {
        let data = vec![0xffu8; 200_000];
        assert_eq!(fold(sum(0, &data)), 0xffff);
        let data = vec![0x80u8; 131_071];
        // Compare against a straightforward u128 reference.
        let mut r: u128 = 0;
        for c in data.chunks(2) {
            r += u128::from(c[0]) << 8 | u128::from(*c.get(1).unwrap_or(&0));
        }
        while r >> 16 != 0 {
            r = (r & 0xffff) + (r >> 16);
        }
        assert_eq!(u128::from(fold(sum(0, &data))), r);
    }

    #[test]
    fn pseudo_headers_match_their_byte_layout() {
        let (s, d) = (Ipv4Addr::new(198, 18, 0, 2), Ipv4Addr::new(198, 18, 0, 1));
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&s.octets());
        bytes.extend_from_slice(&d.octets());
        bytes.extend_from_slice(&[0, 17]);
        bytes.extend_from_slice(&1234u16.to_be_bytes());
        assert_eq!(fold(pseudo_v4(s, d, 17, 1234)), fold(sum(0, &bytes)));

        let s6: Ipv6Addr = "2001:db8::2".parse().unwrap();
        let d6: Ipv6Addr = "2001:db8:ffff::1".parse().unwrap();
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&s6.octets());
        bytes.extend_from_slice(&d6.octets());
        bytes.extend_from_slice(&70_000u32.to_be_bytes());
        bytes.extend_from_slice(&[0, 0, 0, 58]);
        assert_eq!(fold(pseudo_v6(&s6, &d6, 58, 70_000)), fold(sum(0, &bytes)));
    }

    /// A pseudo-random buffer with a valid checksum at bytes 10..12.
    fn buffer(seed: u32, len: usize) -> Vec<u8> {
        let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        let mut b: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect();
        b[10] = 0;
        b[11] = 0;
        let c = of(&b);
        b[10..12].copy_from_slice(&c.to_be_bytes());
        b
    }

    fn check_of(b: &[u8]) -> u16 {
        u16::from_be_bytes([b[10], b[11]])
    }

    fn recompute(b: &mut [u8]) -> u16 {
        b[10] = 0;
        b[11] = 0;
        of(b)
    }

    /// Checksums equal as values: 0x0000 and 0xffff are both "zero" in one's complement, and
    /// either may come out of an incremental update where a recomputation gives the other.
    fn same(a: u16, b: u16) -> bool {
        a == b || (a == 0 || a == 0xffff) && (b == 0 || b == 0xffff)
    }

    #[test]
    fn update16_matches_recomputation() {
        for seed in 0..500 {
            let mut b = buffer(seed, 64);
            let old = u16::from_be_bytes([b[20], b[21]]);
            let new = (seed as u16).wrapping_mul(40_503) ^ old;
            let updated = update16(check_of(&b), old, new);
            b[20..22].copy_from_slice(&new.to_be_bytes());
            assert!(same(updated, recompute(&mut b)), "seed {seed}");
        }
        // The corner RFC 1624 is about: data summing to 0xffff.
        assert_eq!(update16(0x0000, 0x0001, 0x0001), 0x0000);
    }

    #[test]
    fn update32_matches_recomputation() {
        for seed in 0..500 {
            let mut b = buffer(seed, 64);
            let old = u32::from_be_bytes([b[24], b[25], b[26], b[27]]);
            let new = seed.wrapping_mul(2_246_822_519) ^ old;
            let updated = update32(check_of(&b), old, new);
            b[24..28].copy_from_slice(&new.to_be_bytes());
            assert!(same(updated, recompute(&mut b)), "seed {seed}");
        }
    }

    #[test]
    fn update_addr16_matches_recomputation() {
        for seed in 0..500 {
            let mut b = buffer(seed, 80);
            let old: [u8; 16] = b[32..48].try_into().unwrap();
            let mut new = old;
            new[(seed % 16) as usize] ^= 0x5a;
            new[15] = seed as u8;
            let updated = update_addr16(check_of(&b), &old, &new);
            b[32..48].copy_from_slice(&new);
            assert!(same(updated, recompute(&mut b)), "seed {seed}");
        }
    }
}
