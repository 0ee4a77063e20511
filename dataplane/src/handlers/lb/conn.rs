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
//! Memory: a table of at least one huge page (2 MiB, 32768 entries; the default is 65536)
//! lives in a [`Region`] of 2 MiB hugepages (4 KiB pages when none are free, with the
//! region's one warning), populated when the table is made, so that a large table costs no
//! TLB miss per lookup and no page fault on the data path; smaller ones are on the heap. A
//! worker [prefetches](Table::prefetch) the buckets of a whole burst before it looks any of
//! them up, so that their cache misses overlap instead of following each other (a table
//! holding a million flows misses the cache on nearly every lookup). The two `unsafe` uses
//! (the region viewed as entries, the prefetch instruction) are here, each with its reasons.
//!
//! Rejected: a `HashMap` (grows, so it allocates on the data path, and has no eviction), a
//! global shared table (a lock or atomics per packet across workers).

use crate::mem::{Options, Region, HUGE_PAGE};

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

/// Where the entries are.
enum Slots {
    Heap(Box<[Entry]>),
    /// `len` entries at the start of the region.
    Mapped {
        region: Region,
        len: usize,
    },
}

impl Slots {
    fn new(n: usize) -> Slots {
        let bytes = n * std::mem::size_of::<Entry>();
        if bytes >= HUGE_PAGE {
            let opts = Options {
                hugepages: true,
                numa_node: None,
            };
            // A failed mapping (no memory at all) leaves the heap to fail the same way.
            if let Ok(region) = Region::map(bytes, opts) {
                return Slots::Mapped { region, len: n };
            }
        }
        Slots::Heap(vec![Entry::default(); n].into_boxed_slice())
    }

    #[inline]
    fn get(&self) -> &[Entry] {
        match self {
            Slots::Heap(b) => b,
            // SAFETY: the region is at least `len * 64` bytes (it was mapped for that many,
            // rounded up to pages), page aligned (so aligned for `Entry`, 64), zero-filled by
            // mmap (all zeros is a valid `Entry`: integers and byte arrays only, and the
            // "free" state), and owned by `self`, so it outlives the borrow; writes only go
            // through `get_mut`, which borrows `self` exclusively.
            Slots::Mapped { region, len } => unsafe {
                std::slice::from_raw_parts(region.as_ptr().cast::<Entry>().cast_const(), *len)
            },
        }
    }

    #[inline]
    fn get_mut(&mut self) -> &mut [Entry] {
        match self {
            Slots::Heap(b) => b,
            // SAFETY: as in `get`; `&mut self` makes this the only reference to the entries.
            Slots::Mapped { region, len } => unsafe {
                std::slice::from_raw_parts_mut(region.as_ptr().cast::<Entry>(), *len)
            },
        }
    }
}

/// Asks the CPU to start loading the cache line of `p` (a hint: it cannot fault, and does
/// nothing on other architectures).
#[inline(always)]
fn prefetch_line(p: *const Entry) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: PREFETCHT0 reads nothing architecturally and cannot fault, whatever the
    // address; `p` points into our own table anyway.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast::<i8>())
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// The per-worker connection table.
pub struct Table {
    slots: Slots,
    mask: usize,
    stats: TableStats,
}

impl std::fmt::Debug for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("conn::Table")
            .field("capacity", &self.capacity())
            .field("backing", &self.backing())
            .finish()
    }
}

impl Table {
    /// A table of at least `capacity` entries (rounded up to a power of two, at least one
    /// bucket).
    pub fn new(capacity: u32) -> Table {
        let n = (capacity as usize).max(WAYS).next_power_of_two();
        Table {
            slots: Slots::new(n),
            mask: n / WAYS - 1,
            stats: TableStats::default(),
        }
    }

    pub fn capacity(&self) -> usize {
        self.slots.get().len()
    }

    /// Where the entries live: "heap", or the region's pages ("hugepages-2M", "4k-pages").
    pub fn backing(&self) -> String {
        match &self.slots {
            Slots::Heap(_) => "heap".into(),
            Slots::Mapped { region, .. } => region.backing().to_string(),
        }
    }

    pub fn stats(&self) -> TableStats {
        self.stats
    }

    #[inline]
    fn bucket_index(&self, k: &Key) -> usize {
        (k.hash() as usize & self.mask) * WAYS
    }

    #[inline]
    fn bucket(&mut self, k: &Key) -> &mut [Entry] {
        let b = self.bucket_index(k);
        &mut self.slots.get_mut()[b..b + WAYS]
    }

    /// Starts loading `k`'s bucket into the cache, so that a lookup or insert of `k` soon
    /// after finds it there. A hint only: results never depend on it.
    #[inline]
    pub fn prefetch(&self, k: &Key) {
        let b = self.bucket_index(k);
        for e in &self.slots.get()[b..b + WAYS] {
            prefetch_line(e);
        }
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
        self.slots.get().iter().filter(|e| e.used()).count()
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

    /// Tables of a huge page or more are mapped (on hugepages when there are free ones),
    /// start empty and work the same; a prefetch changes nothing.
    #[test]
    fn large_tables_are_mapped_and_behave_the_same() {
        let small = Table::new(1024);
        assert_eq!(small.backing(), "heap");
        let mut t = Table::new(1 << 15);
        assert_eq!(t.capacity(), 1 << 15);
        assert_ne!(t.backing(), "heap", "{t:?}");
        assert!(t.is_empty());
        for n in 0..10_000 {
            t.prefetch(&key(n, UDP));
            t.insert(&key(n, UDP), n + 1, 0);
        }
        let mut hits = 0;
        for n in 0..10_000 {
            t.prefetch(&key(n, UDP));
            match t.lookup(&key(n, UDP), 1) {
                Found::Real(r) => {
                    assert_eq!(r, n + 1);
                    hits += 1;
                }
                Found::Miss => {} // evicted from a full bucket
            }
        }
        assert_eq!(hits, t.len());
        assert_eq!(t.len() as u64 + t.stats().evictions, 10_000);
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
