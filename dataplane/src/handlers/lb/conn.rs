//! The connection table: a bounded, per-worker map from a flow's (rewritten) 5-tuple to the
//! id of the real it was sent to, so that established flows stay put when rings change.
//!
//! Shape: a preallocated array of 64-byte entries in 4-way buckets (one bucket is four cache
//! lines); a key hashes to one bucket, a lookup compares at most four keys, an insert takes
//! the key's own entry, a free or expired one, or else evicts the least recently used of the
//! four. That is an LRU per bucket, which approximates Katran's per-CPU BPF LRU map without a
//! linked list to maintain per packet. Nothing is allocated after construction, and the table
//! is owned by one worker, so nothing is locked (flows are pinned to workers by RSS or by the
//! engine's flow-hash spread, so each worker sees whole flows).
//!
//! Expiry (the spec's rules): UDP entries older than 30 s are ignored and refreshed on every
//! hit; TCP entries never expire (they only leave by eviction). Time is the engine clock of
//! the burst ([`Context::now_ns`](crate::pipeline::Context)).
//!
//! Rejected: a `HashMap` (grows, so it allocates on the data path, and has no eviction), a
//! global shared table (a lock or atomics per packet across workers).

/// UDP entries older than this are ignored (Katran's `LRU_UDP_TIMEOUT`, 30 s).
pub const UDP_TIMEOUT_NS: u64 = 30_000_000_000;

const WAYS: usize = 4;

/// A flow as the table keys it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Key {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// Source port (high 16 bits) and destination port (low 16 bits), after the rewrites.
    pub ports: u32,
    pub proto: u8,
    pub v6: bool,
}

impl Key {
    #[inline]
    fn tag(&self) -> u32 {
        // Bit 16 marks a used entry, so an all-zero entry is free.
        u32::from(self.proto) | (u32::from(self.v6) << 8) | (1 << 16)
    }

    #[inline]
    fn hash(&self) -> u64 {
        const K: u64 = 0x9e37_79b9_7f4a_7c15;
        let w = |b: &[u8]| u64::from_le_bytes(b.try_into().expect("8 bytes"));
        // A multiply-rotate chain: each word goes through the multiplier before the next
        // is mixed in, so correlated fields (address and port counting up together) do
        // not cancel out.
        let mut h = K ^ u64::from(self.tag());
        for x in [
            w(&self.src[..8]),
            w(&self.src[8..]),
            w(&self.dst[..8]),
            w(&self.dst[8..]),
            u64::from(self.ports),
        ] {
            h = (h ^ x).wrapping_mul(K).rotate_left(29);
        }
        h = (h ^ (h >> 33)).wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^ (h >> 33)
    }
}

#[derive(Debug, Clone, Copy, Default)]
#[repr(C, align(64))]
struct Entry {
    src: [u8; 16],
    dst: [u8; 16],
    ports: u32,
    tag: u32,
    real: u32,
    atime: u64,
}

impl Entry {
    #[inline]
    fn matches(&self, k: &Key, tag: u32) -> bool {
        self.tag == tag && self.ports == k.ports && self.src == k.src && self.dst == k.dst
    }

    #[inline]
    fn used(&self) -> bool {
        self.tag != 0
    }

    #[inline]
    fn expired(&self, now: u64) -> bool {
        self.tag as u8 == crate::wire::ip_proto::UDP
            && now.saturating_sub(self.atime) > UDP_TIMEOUT_NS
    }
}

/// What a lookup found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    /// A live entry: the real's id.
    Real(u32),
    Miss,
}

/// Counters of one table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TableStats {
    pub evictions: u64,
}

/// The per-worker connection table.
pub struct Table {
    entries: Box<[Entry]>,
    mask: usize,
    stats: TableStats,
}

impl std::fmt::Debug for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("conn::Table")
            .field("capacity", &self.entries.len())
            .finish()
    }
}

impl Table {
    /// A table of at least `capacity` entries (rounded up to a power of two, at least one
    /// bucket).
    pub fn new(capacity: u32) -> Table {
        let n = (capacity as usize).max(WAYS).next_power_of_two();
        Table {
            entries: vec![Entry::default(); n].into_boxed_slice(),
            mask: n / WAYS - 1,
            stats: TableStats::default(),
        }
    }

    pub fn capacity(&self) -> usize {
        self.entries.len()
    }

    pub fn stats(&self) -> TableStats {
        self.stats
    }

    #[inline]
    fn bucket(&mut self, k: &Key) -> &mut [Entry] {
        let b = (k.hash() as usize & self.mask) * WAYS;
        &mut self.entries[b..b + WAYS]
    }

    /// The real of `k`'s live entry; refreshes its access time (which is what keeps a UDP
    /// entry alive and a TCP entry from being evicted).
    #[inline]
    pub fn lookup(&mut self, k: &Key, now: u64) -> Found {
        let tag = k.tag();
        for e in self.bucket(k) {
            if e.matches(k, tag) {
                if e.expired(now) {
                    return Found::Miss;
                }
                e.atime = now;
                return Found::Real(e.real);
            }
        }
        Found::Miss
    }

    /// Records that `k` goes to `real`.
    #[inline]
    pub fn insert(&mut self, k: &Key, real: u32, now: u64) {
        let tag = k.tag();
        let bucket = self.bucket(k);
        let pick = bucket
            .iter()
            .position(|e| e.matches(k, tag))
            .or_else(|| bucket.iter().position(|e| !e.used() || e.expired(now)));
        let (i, evicted) = match pick {
            Some(i) => (i, false),
            None => {
                let mut oldest = 0;
                for i in 1..WAYS {
                    if bucket[i].atime < bucket[oldest].atime {
                        oldest = i;
                    }
                }
                (oldest, true)
            }
        };
        bucket[i] = Entry {
            src: k.src,
            dst: k.dst,
            ports: k.ports,
            tag,
            real,
            atime: now,
        };
        if evicted {
            self.stats.evictions += 1;
        }
    }

    /// Number of used entries (a full scan; for tests and `show`).
    pub fn len(&self) -> usize {
        self.entries.iter().filter(|e| e.used()).count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ip_proto::{TCP, UDP};

    fn key(n: u32, proto: u8) -> Key {
        let mut src = [0; 16];
        src[..4].copy_from_slice(&n.to_be_bytes());
        Key {
            src,
            dst: [9; 16],
            ports: n,
            proto,
            v6: false,
        }
    }

    #[test]
    fn entry_is_one_cache_line() {
        assert_eq!(std::mem::size_of::<Entry>(), 64);
    }

    #[test]
    fn insert_lookup_update() {
        let mut t = Table::new(16);
        assert_eq!(t.lookup(&key(1, TCP), 0), Found::Miss);
        t.insert(&key(1, TCP), 7, 0);
        assert_eq!(t.lookup(&key(1, TCP), 5), Found::Real(7));
        // Same addresses and ports, other protocol: another flow.
        assert_eq!(t.lookup(&key(1, UDP), 5), Found::Miss);
        t.insert(&key(1, TCP), 8, 6);
        assert_eq!(t.lookup(&key(1, TCP), 7), Found::Real(8));
        assert_eq!(t.len(), 1);
        let mut v6 = key(1, TCP);
        v6.v6 = true;
        assert_eq!(t.lookup(&v6, 7), Found::Miss);
    }

    /// UDP: 30 s without a packet and the entry is gone; a hit refreshes it. TCP: never.
    #[test]
    fn udp_expires_after_30s_tcp_does_not() {
        let s = 1_000_000_000u64;
        let mut t = Table::new(16);
        t.insert(&key(1, UDP), 1, 0);
        t.insert(&key(2, TCP), 2, 0);
        assert_eq!(t.lookup(&key(1, UDP), 30 * s), Found::Real(1)); // exactly 30 s: alive
        assert_eq!(t.lookup(&key(1, UDP), 59 * s), Found::Real(1)); // refreshed at 30 s
        assert_eq!(t.lookup(&key(1, UDP), 89 * s + 1), Found::Miss);
        assert_eq!(t.lookup(&key(2, TCP), 1_000_000 * s), Found::Real(2));
    }

    /// Bounded: more flows than entries evict the least recently used of a bucket.
    #[test]
    fn bounded_with_lru_eviction_per_bucket() {
        let mut t = Table::new(4); // one bucket
        for n in 0..4 {
            t.insert(&key(n, TCP), n + 1, u64::from(n));
        }
        // Touch flow 0 so that flow 1 is the least recently used.
        assert_eq!(t.lookup(&key(0, TCP), 10), Found::Real(1));
        t.insert(&key(9, TCP), 10, 11);
        assert_eq!(t.len(), 4);
        assert_eq!(t.stats().evictions, 1);
        assert_eq!(t.lookup(&key(1, TCP), 12), Found::Miss);
        assert_eq!(t.lookup(&key(0, TCP), 12), Found::Real(1));
        assert_eq!(t.lookup(&key(9, TCP), 12), Found::Real(10));
        let mut big = Table::new(1000);
        assert_eq!(big.capacity(), 1024);
        for n in 0..100_000 {
            big.insert(&key(n, UDP), 1, 0);
        }
        assert_eq!(big.len(), 1024);
    }

    /// An expired UDP entry's slot is reused before anything live is evicted.
    #[test]
    fn expired_slots_are_reused_first() {
        let mut t = Table::new(4);
        t.insert(&key(0, UDP), 1, 0);
        for n in 1..4 {
            t.insert(&key(n, TCP), 1, 0);
        }
        t.insert(&key(7, TCP), 2, UDP_TIMEOUT_NS + 1);
        assert_eq!(t.stats().evictions, 0);
        for n in 1..4 {
            assert_eq!(t.lookup(&key(n, TCP), UDP_TIMEOUT_NS + 2), Found::Real(1));
        }
    }
}
