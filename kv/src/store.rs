//! One partition of the cache, owned by one core: a circular log of items in a hugepage
//! region, a bucketed hash index in front of it, CLOCK eviction, per-item TTL.
//!
//! Layout of the region: `[index: buckets x 64 bytes][log: capacity bytes]`.
//!
//! - **Log** (MICA's circular log): items are appended at the tail, each entry a 40-byte
//!   header (size, state, reference bit, key length, flags, expiry, value length, CAS, key
//!   hash) followed by key and value, 8-byte aligned, never straddling the end of the ring
//!   (a padding entry fills the gap). Overwrites and deletes only mark the old entry dead;
//!   its bytes come back when the head passes it. The byte budget bounds `tail - head`.
//! - **Eviction** is CLOCK over the log: to make room the hand (the head) looks at the
//!   oldest entry; dead and padding entries are skipped, expired ones removed, a live entry
//!   whose reference bit a get has set is moved to the tail with the bit cleared (its second
//!   chance, bounded per insert so an insert's work stays bounded), any other is evicted.
//!   Rejected: memcached's slab classes with per-class LRUs (pointer-chasing lists and slab
//!   calcification; the log needs no allocator at all), and pure FIFO (MICA's default:
//!   a hot key would be evicted as soon as it was old).
//! - **Index**: 64-byte buckets, one cache line each: a word of flags and 7 slots of
//!   (16-bit tag, log position). A key lives in its home bucket or, when that is full, in
//!   the next ones (the full bucket is marked "overflowed" so lookups go on; deletes never
//!   need to move entries). The index is exact: every live entry has one slot and every
//!   slot names a live entry; items evicted from the log are unlinked. If a key finds no
//!   slot within a few buckets, the oldest item of its home bucket is evicted for it.
//! - **TTL**: absolute Unix seconds, checked on every access (expired items are removed
//!   then) and when the hand reaches them.
//!
//! Nothing here allocates or locks after construction; the only scratch space (one item,
//! for second chances and appends) is allocated with the partition.

use std::sync::atomic::{AtomicBool, Ordering};

use dataplane::mem::{Options as MemOptions, Region, RegionError};

use crate::proto::{self, StoreOp};
use crate::stats::Counters;

const HDR: usize = 40;
const KIND_LIVE: u8 = 1;
const KIND_DEAD: u8 = 2;
const KIND_PAD: u8 = 3;
/// Words per index bucket: one of flags, then slots.
const BUCKET_WORDS: usize = 8;
const SLOTS: usize = BUCKET_WORDS - 1;
const OVERFLOW: u64 = 1;
/// Buckets a key may be placed in, starting at its home bucket.
const MAX_PROBE: usize = 4;
const POS_MASK: u64 = (1 << 48) - 1;
/// Log bytes per index bucket (7 slots: entries of 73 bytes on average fill both at once).
const LOG_PER_BUCKET: u64 = 512;
/// Second chances the hand may give while making room for one insert.
const MAX_SECOND_CHANCES: u32 = 8;
/// Bytes the effective limit moves down per maintenance call after the budget was lowered,
/// so that a large cut is spread over many bursts instead of stalling one.
const SHRINK_STEP: u64 = 1 << 20;
/// Smallest log a partition gets.
pub const MIN_CAPACITY: u64 = 64 << 10;

/// The 64-bit hash of a key: partition, bucket and tag all come from it.
pub fn hash(key: &[u8]) -> u64 {
    const K: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ (key.len() as u64).wrapping_mul(K);
    let mut chunks = key.chunks_exact(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        h = (h ^ u64::from_le_bytes(w)).wrapping_mul(K).rotate_left(29);
    }
    let rem = chunks.remainder();
    if !rem.is_empty() {
        let mut w = [0u8; 8];
        w[..rem.len()].copy_from_slice(rem);
        h = (h ^ u64::from_le_bytes(w)).wrapping_mul(K).rotate_left(29);
    }
    // murmur3's 64-bit finalizer.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// Which of `n` partitions owns a key with hash `h` (the hash's top 32 bits, scaled).
#[inline]
pub fn partition_of(h: u64, n: usize) -> usize {
    (((h >> 32) * n as u64) >> 32) as usize
}

/// Asks the CPU to start loading the cache line at `p` (no effect elsewhere).
#[inline(always)]
fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint: it never faults and changes no memory, whatever the
    // address.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast::<i8>())
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

#[inline]
fn tag_of(h: u64) -> u64 {
    (h >> 16) & 0xffff
}

fn entry_size(klen: usize, vlen: usize) -> u64 {
    ((HDR + klen + vlen + 7) & !7) as u64
}

/// An entry header, decoded.
#[derive(Debug, Clone, Copy, Default)]
struct Hdr {
    size: u32,
    kind: u8,
    refb: u8,
    klen: u8,
    flags: u32,
    exptime: u32,
    vlen: u32,
    cas: u64,
    hash: u64,
}

fn rd32(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .map_or(0, |s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

fn rd64(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 8).map_or(0, |s| {
        let mut w = [0u8; 8];
        w.copy_from_slice(s);
        u64::from_le_bytes(w)
    })
}

fn wr32(b: &mut [u8], at: usize, v: u32) {
    if let Some(s) = b.get_mut(at..at + 4) {
        s.copy_from_slice(&v.to_le_bytes());
    }
}

fn wr64(b: &mut [u8], at: usize, v: u64) {
    if let Some(s) = b.get_mut(at..at + 8) {
        s.copy_from_slice(&v.to_le_bytes());
    }
}

fn read_hdr(log: &[u8], p: usize) -> Hdr {
    Hdr {
        size: rd32(log, p),
        kind: log.get(p + 4).copied().unwrap_or(0),
        refb: log.get(p + 5).copied().unwrap_or(0),
        klen: log.get(p + 6).copied().unwrap_or(0),
        flags: rd32(log, p + 8),
        exptime: rd32(log, p + 12),
        vlen: rd32(log, p + 16),
        cas: rd64(log, p + 24),
        hash: rd64(log, p + 32),
    }
}

fn write_hdr(log: &mut [u8], p: usize, h: &Hdr) {
    wr32(log, p, h.size);
    if let Some(s) = log.get_mut(p + 4..p + 8) {
        s.copy_from_slice(&[h.kind, h.refb, h.klen, 0]);
    }
    wr32(log, p + 8, h.flags);
    wr32(log, p + 12, h.exptime);
    wr32(log, p + 16, h.vlen);
    wr32(log, p + 20, 0);
    wr64(log, p + 24, h.cas);
    wr64(log, p + 32, h.hash);
}

fn set_kind(log: &mut [u8], p: usize, kind: u8) {
    if let Some(b) = log.get_mut(p + 4) {
        *b = kind;
    }
}

fn key_at(log: &[u8], p: usize, klen: usize) -> &[u8] {
    log.get(p + HDR..p + HDR + klen).unwrap_or(&[])
}

#[inline]
fn expired(exptime: u32, now: u32) -> bool {
    exptime != 0 && exptime <= now
}

/// Outcome of a storage command, as memcached words it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    Stored,
    NotStored,
    Exists,
    NotFound,
    /// The item does not fit in the partition's budget at all.
    NoMemory,
}

/// Outcome of `incr`/`decr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arith {
    Value(u64),
    NotFound,
    NonNumeric,
    NoMemory,
}

/// A found item: where it is and what its header says. Read its bytes with
/// [`Partition::value`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found {
    pos: usize,
    pub flags: u32,
    pub cas: u64,
    pub vlen: usize,
    klen: usize,
}

/// Sizes of a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Log bytes (the most the budget can be raised to).
    pub capacity: u64,
    /// Index buckets (a power of two).
    pub buckets: usize,
}

impl Geometry {
    /// The geometry for a log of `capacity` bytes (rounded down to 8, at least
    /// [`MIN_CAPACITY`]).
    pub fn for_capacity(capacity: u64) -> Geometry {
        let capacity = (capacity.max(MIN_CAPACITY)) & !7;
        let buckets = (capacity / LOG_PER_BUCKET).max(64).next_power_of_two() as usize;
        Geometry { capacity, buckets }
    }

    fn index_bytes(&self) -> usize {
        self.buckets * BUCKET_WORDS * 8
    }

    /// Bytes the region maps.
    pub fn region_bytes(&self) -> usize {
        self.index_bytes() + self.capacity as usize
    }
}

/// One partition: owned by one worker at a time (see [`Cell`]).
pub struct Partition {
    region: Region,
    geo: Geometry,
    head: u64,
    tail: u64,
    /// Bytes `tail - head` may reach now; moves down to `target` in steps.
    limit: u64,
    target: u64,
    items: u64,
    bytes: u64,
    /// Live items the index may hold (15/16 of its slots).
    live_max: u64,
    next_cas: u64,
    cas_stride: u64,
    cas_offset: u64,
    scratch: Vec<u8>,
    /// Flush requests seen (see [`crate::Store`]).
    pub(crate) flush_seen: u64,
    pub(crate) flush_pending: u32,
}

impl std::fmt::Debug for Partition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Partition")
            .field("geometry", &self.geo)
            .field("items", &self.items)
            .field("bytes", &self.bytes)
            .field("used", &self.used())
            .field("limit", &self.limit)
            .finish()
    }
}

impl Partition {
    /// Maps a partition of geometry `geo` with a budget of `budget` bytes. `index` and
    /// `count` make CAS values unique across the store's partitions; `item_max` sizes the
    /// scratch item.
    pub fn new(
        geo: Geometry,
        budget: u64,
        index: usize,
        count: usize,
        item_max: usize,
        mem: MemOptions,
    ) -> Result<Partition, RegionError> {
        let region = Region::map(geo.region_bytes(), mem)?;
        let budget = budget.min(geo.capacity);
        Ok(Partition {
            region,
            geo,
            head: 0,
            tail: 0,
            limit: budget,
            target: budget,
            items: 0,
            bytes: 0,
            live_max: (geo.buckets * SLOTS) as u64 * 15 / 16,
            next_cas: 0,
            cas_stride: count.max(1) as u64,
            cas_offset: index as u64,
            scratch: vec![0; entry_size(proto::KEY_MAX, item_max) as usize],
            flush_seen: 0,
            flush_pending: 0,
        })
    }

    /// The index words and the log.
    fn parts(&mut self) -> (&mut [u64], &mut [u8]) {
        let words = self.geo.buckets * BUCKET_WORDS;
        let total = self.geo.region_bytes();
        debug_assert!(total <= self.region.len());
        // SAFETY: the region is a live, private, read-write mapping of at least `total`
        // bytes (mapped with `region_bytes()`, rounded up to pages) owned by `self` alone,
        // page-aligned (so the u64 view is aligned), and anonymous mappings start zeroed, so
        // every u64 is initialized. `&mut self` makes these the only references to it, and
        // they live no longer than that borrow. The two slices do not overlap.
        unsafe {
            let base = self.region.as_ptr();
            (
                std::slice::from_raw_parts_mut(base.cast::<u64>(), words),
                std::slice::from_raw_parts_mut(base.add(words * 8), total - words * 8),
            )
        }
    }

    /// The index words, shared.
    fn index(&self) -> &[u64] {
        let words = self.geo.buckets * BUCKET_WORDS;
        // SAFETY: as in `parts`, shared: `&self` excludes writers for the borrow's life.
        unsafe { std::slice::from_raw_parts(self.region.as_ptr().cast::<u64>(), words) }
    }

    /// Starts loading the index bucket a lookup of hash `h` reads first. A hint only (no
    /// effect on any result): the handler calls it for every request of a burst before
    /// running them, so that their cache misses overlap instead of adding up, as MICA
    /// does.
    #[inline]
    pub fn prefetch_bucket(&self, h: u64) {
        let b = (h as usize) & (self.geo.buckets - 1);
        prefetch(self.index()[b * BUCKET_WORDS..].as_ptr());
    }

    /// Starts loading the log entry that `h`'s bucket names for its tag (the first match),
    /// once [`Partition::prefetch_bucket`] has had time to bring the bucket in. A hint only.
    #[inline]
    pub fn prefetch_entry(&self, h: u64) {
        let b = (h as usize) & (self.geo.buckets - 1);
        let tag = tag_of(h);
        let bucket = &self.index()[b * BUCKET_WORDS..(b + 1) * BUCKET_WORDS];
        if let Some(w) = bucket[1..].iter().find(|&&w| w != 0 && w >> 48 == tag) {
            let pos = (((w & POS_MASK) - 1) * 8) as usize;
            if let Some(entry) = self.log().get(pos..) {
                prefetch(entry.as_ptr());
            }
        }
    }

    fn log(&self) -> &[u8] {
        let words = self.geo.buckets * BUCKET_WORDS;
        let total = self.geo.region_bytes();
        // SAFETY: as in `parts`, shared: `&self` excludes writers for the borrow's life.
        unsafe {
            std::slice::from_raw_parts(self.region.as_ptr().add(words * 8), total - words * 8)
        }
    }

    pub fn geometry(&self) -> Geometry {
        self.geo
    }

    /// Live items.
    pub fn items(&self) -> u64 {
        self.items
    }

    /// Log bytes the live items take.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Log bytes between head and tail (live, dead and padding).
    pub fn used(&self) -> u64 {
        self.tail - self.head
    }

    /// The budget being moved to.
    pub fn budget(&self) -> u64 {
        self.target
    }

    /// Sets the budget (at most the capacity). A raise takes effect at once; a cut is
    /// carried out by [`Partition::maintain`] in steps.
    pub fn set_budget(&mut self, budget: u64) {
        self.target = budget.min(self.geo.capacity);
        if self.target >= self.limit {
            self.limit = self.target;
        }
    }

    /// Moves the effective limit one step towards a lowered budget, evicting from the head
    /// what no longer fits. Bounded work per call.
    pub fn maintain(&mut self, now: u32, c: &Counters) {
        if self.limit <= self.target {
            return;
        }
        self.limit = self.target.max(self.limit.saturating_sub(SHRINK_STEP));
        let mut none = 0;
        while self.used() > self.limit && self.head != self.tail {
            if !self.evict_head(now, c, &mut none) {
                break;
            }
        }
    }

    /// Drops every item (flush_all): the index is cleared and the log emptied.
    pub fn flush(&mut self) {
        let (idx, _) = self.parts();
        idx.fill(0);
        self.head = self.tail;
        self.items = 0;
        self.bytes = 0;
    }

    fn next_cas(&mut self) -> u64 {
        self.next_cas += 1;
        self.next_cas * self.cas_stride + self.cas_offset
    }

    // ---- index --------------------------------------------------------------------------

    /// The slot (word index) and log position of `key`, whatever its state.
    fn find(&mut self, key: &[u8], h: u64) -> Option<(usize, usize)> {
        let mask = self.geo.buckets - 1;
        let tag = tag_of(h);
        let mut b = (h as usize) & mask;
        let (idx, log) = self.parts();
        for _ in 0..MAX_PROBE {
            let base = b * BUCKET_WORDS;
            for s in 1..BUCKET_WORDS {
                let w = idx[base + s];
                if w != 0 && w >> 48 == tag {
                    let pos = (((w & POS_MASK) - 1) * 8) as usize;
                    let hd = read_hdr(log, pos);
                    if hd.kind == KIND_LIVE
                        && hd.hash == h
                        && key_at(log, pos, hd.klen as usize) == key
                    {
                        return Some((base + s, pos));
                    }
                }
            }
            if idx[base] & OVERFLOW == 0 {
                return None;
            }
            b = (b + 1) & mask;
        }
        None
    }

    /// The slot that points at `pos` (an entry with hash `h`).
    fn slot_of(&mut self, h: u64, pos: usize) -> Option<usize> {
        let mask = self.geo.buckets - 1;
        let want = (tag_of(h) << 48) | (pos as u64 / 8 + 1);
        let mut b = (h as usize) & mask;
        let (idx, _) = self.parts();
        for _ in 0..MAX_PROBE {
            let base = b * BUCKET_WORDS;
            if let Some(s) = (1..BUCKET_WORDS).find(|&s| idx[base + s] == want) {
                return Some(base + s);
            }
            if idx[base] & OVERFLOW == 0 {
                return None;
            }
            b = (b + 1) & mask;
        }
        None
    }

    /// Links a new entry at `pos`; when no slot is free within reach, evicts the oldest
    /// item of the home bucket for it.
    fn link(&mut self, h: u64, pos: usize, c: &Counters) {
        let mask = self.geo.buckets - 1;
        let word = (tag_of(h) << 48) | (pos as u64 / 8 + 1);
        let home = (h as usize) & mask;
        let mut b = home;
        {
            let (idx, _) = self.parts();
            for _ in 0..MAX_PROBE {
                let base = b * BUCKET_WORDS;
                if let Some(s) = (1..BUCKET_WORDS).find(|&s| idx[base + s] == 0) {
                    idx[base + s] = word;
                    return;
                }
                idx[base] |= OVERFLOW;
                b = (b + 1) & mask;
            }
        }
        // Lossy fallback: the home bucket's oldest item (nearest the head) makes way.
        let cap = self.geo.capacity;
        let head = self.head % cap;
        let base = home * BUCKET_WORDS;
        let (idx, log) = self.parts();
        let mut victim = base + 1;
        let mut oldest = u64::MAX;
        for s in 1..BUCKET_WORDS {
            let p = ((idx[base + s] & POS_MASK) - 1) * 8;
            let age = (p + cap - head) % cap;
            if age < oldest {
                oldest = age;
                victim = base + s;
            }
        }
        let vpos = (((idx[victim] & POS_MASK) - 1) * 8) as usize;
        let vh = read_hdr(log, vpos);
        set_kind(log, vpos, KIND_DEAD);
        idx[victim] = word;
        self.items -= 1;
        self.bytes -= u64::from(vh.size);
        c.evictions.inc();
    }

    /// Removes the live entry at `pos` (slot `slot`) from index and counts.
    fn unlink(&mut self, slot: usize, pos: usize) {
        let (idx, log) = self.parts();
        idx[slot] = 0;
        let size = u64::from(read_hdr(log, pos).size);
        set_kind(log, pos, KIND_DEAD);
        self.items -= 1;
        self.bytes -= size;
    }

    /// The live, unexpired entry for `key`; an expired one is removed on the way.
    fn lookup(&mut self, key: &[u8], h: u64, now: u32, c: &Counters) -> Option<(usize, usize)> {
        let (slot, pos) = self.find(key, h)?;
        let exp = read_hdr(self.log(), pos).exptime;
        if expired(exp, now) {
            self.unlink(slot, pos);
            c.expired.inc();
            return None;
        }
        Some((slot, pos))
    }

    // ---- log ----------------------------------------------------------------------------

    /// Looks at the entry under the hand and advances past it: skips dead and padding
    /// entries, removes expired ones, gives a referenced item a second chance (moves it to
    /// the tail) while `second` lasts, evicts anything else. False when the log is corrupt
    /// (which would be a bug; the partition is flushed rather than looping).
    fn evict_head(&mut self, now: u32, c: &Counters, second: &mut u32) -> bool {
        let cap = self.geo.capacity;
        let pos = (self.head % cap) as usize;
        let hd = read_hdr(self.log(), pos);
        let size = u64::from(hd.size);
        if size < 8 || size & 7 != 0 || size > self.used() {
            self.flush();
            return false;
        }
        if hd.kind == KIND_LIVE {
            let Some(slot) = self.slot_of(hd.hash, pos) else {
                // Not indexed: cannot happen; treat as dead.
                self.head += size;
                return true;
            };
            if expired(hd.exptime, now) {
                self.unlink(slot, pos);
                c.expired.inc();
            } else if hd.refb != 0 && *second > 0 && self.used() + self.pad_for(size) <= cap {
                *second -= 1;
                c.second_chances.inc();
                // Copy out, free the old place, write the copy at the tail, repoint the slot.
                let n = size as usize;
                let mut scratch = std::mem::take(&mut self.scratch);
                if scratch.len() < n {
                    // Entries are never larger than the scratch; evict if one ever is.
                    self.scratch = scratch;
                    self.unlink(slot, pos);
                    c.evictions.inc();
                    self.head += size;
                    return true;
                }
                scratch[..n].copy_from_slice(&self.log()[pos..pos + n]);
                scratch[5] = 0;
                self.head += size;
                let to = self.append_raw(size);
                let (idx, log) = self.parts();
                log[to..to + n].copy_from_slice(&scratch[..n]);
                idx[slot] = (tag_of(hd.hash) << 48) | (to as u64 / 8 + 1);
                self.scratch = scratch;
                return true;
            } else {
                self.unlink(slot, pos);
                c.evictions.inc();
            }
        }
        self.head += size;
        true
    }

    /// Padding needed before an entry of `size` bytes at the tail.
    fn pad_for(&self, size: u64) -> u64 {
        let cap = self.geo.capacity;
        let phys = self.tail % cap;
        if phys + size > cap {
            cap - phys
        } else {
            0
        }
    }

    /// Appends `size` bytes at the tail (padding the ring's end first if needed) without
    /// looking at the budget; the caller made sure they fit. Returns the position.
    fn append_raw(&mut self, size: u64) -> usize {
        let cap = self.geo.capacity;
        let pad = self.pad_for(size);
        if pad > 0 {
            let phys = (self.tail % cap) as usize;
            let (_, log) = self.parts();
            write_hdr(
                log,
                phys,
                &Hdr {
                    size: pad as u32,
                    kind: KIND_PAD,
                    ..Hdr::default()
                },
            );
            self.tail += pad;
        }
        let pos = (self.tail % cap) as usize;
        self.tail += size;
        pos
    }

    /// Makes room for an entry of `size` bytes within the budget and the index's reach,
    /// evicting from the head, and returns its position. `None`: it cannot fit at all.
    fn reserve(&mut self, size: u64, now: u32, c: &Counters) -> Option<usize> {
        let cap = self.geo.capacity;
        if size > self.limit || size > cap {
            return None;
        }
        let mut second = MAX_SECOND_CHANCES;
        // Every turn removes or moves one entry; more turns than entries is a bug.
        let mut turns = cap / 8 + 16;
        loop {
            let pad = self.pad_for(size);
            if self.used() + pad + size <= self.limit && self.items < self.live_max {
                return Some(self.append_raw(size));
            }
            if self.head == self.tail {
                // Empty, yet the padding does not fit: start again at the ring's start.
                let start = self.tail.div_ceil(cap) * cap;
                self.head = start;
                self.tail = start;
                continue;
            }
            turns -= 1;
            if turns == 0 || !self.evict_head(now, c, &mut second) {
                return None;
            }
        }
    }

    /// Writes a live entry at `pos`.
    #[allow(clippy::too_many_arguments)]
    fn write_entry(
        &mut self,
        pos: usize,
        size: u64,
        h: u64,
        key: &[u8],
        flags: u32,
        exptime: u32,
        cas: u64,
        parts: [&[u8]; 2],
    ) {
        let vlen = parts[0].len() + parts[1].len();
        let (_, log) = self.parts();
        write_hdr(
            log,
            pos,
            &Hdr {
                size: size as u32,
                kind: KIND_LIVE,
                refb: 0,
                klen: key.len() as u8,
                flags,
                exptime,
                vlen: vlen as u32,
                cas,
                hash: h,
            },
        );
        let k = pos + HDR;
        log[k..k + key.len()].copy_from_slice(key);
        let v = k + key.len();
        log[v..v + parts[0].len()].copy_from_slice(parts[0]);
        let v = v + parts[0].len();
        log[v..v + parts[1].len()].copy_from_slice(parts[1]);
    }

    /// Stores a new version of `key` made of `parts` (concatenated): reserves room, then
    /// replaces whatever entry the key has by then (it may have been evicted meanwhile).
    #[allow(clippy::too_many_arguments)]
    fn put(
        &mut self,
        key: &[u8],
        h: u64,
        flags: u32,
        exptime: u32,
        parts: [&[u8]; 2],
        now: u32,
        c: &Counters,
    ) -> Option<u64> {
        let size = entry_size(key.len(), parts[0].len() + parts[1].len());
        let pos = self.reserve(size, now, c)?;
        let cas = self.next_cas();
        self.write_entry(pos, size, h, key, flags, exptime, cas, parts);
        match self.find(key, h) {
            // `find` skips the new entry only if another live one matches first: the old.
            Some((slot, old)) if old != pos => {
                let (idx, log) = self.parts();
                let old_size = u64::from(read_hdr(log, old).size);
                set_kind(log, old, KIND_DEAD);
                idx[slot] = (tag_of(h) << 48) | (pos as u64 / 8 + 1);
                self.bytes -= old_size;
                self.items -= 1;
            }
            _ => self.link(h, pos, c),
        }
        self.items += 1;
        self.bytes += size;
        c.total_items.inc();
        Some(cas)
    }

    // ---- commands -----------------------------------------------------------------------

    /// Looks `key` up for a get: marks it referenced, applies `touch` (a new absolute
    /// expiry, for `gat`).
    pub fn get(
        &mut self,
        key: &[u8],
        h: u64,
        now: u32,
        touch: Option<u32>,
        c: &Counters,
    ) -> Option<Found> {
        let (_, pos) = self.lookup(key, h, now, c)?;
        let (_, log) = self.parts();
        if let Some(b) = log.get_mut(pos + 5) {
            *b = 1;
        }
        if let Some(e) = touch {
            wr32(log, pos + 12, e);
        }
        let hd = read_hdr(log, pos);
        Some(Found {
            pos,
            flags: hd.flags,
            cas: hd.cas,
            vlen: hd.vlen as usize,
            klen: hd.klen as usize,
        })
    }

    /// The value of a found item (valid until the next mutation).
    pub fn value(&self, f: &Found) -> &[u8] {
        let v = f.pos + HDR + f.klen;
        self.log().get(v..v + f.vlen).unwrap_or(&[])
    }

    /// A storage command. `exptime` is absolute (see `proto::expiry`); `cas` is the
    /// client's value for `cas` (0 otherwise).
    #[allow(clippy::too_many_arguments)]
    pub fn store(
        &mut self,
        op: StoreOp,
        key: &[u8],
        h: u64,
        flags: u32,
        exptime: u32,
        data: &[u8],
        cas: u64,
        item_max: usize,
        now: u32,
        c: &Counters,
    ) -> Stored {
        let old = self
            .lookup(key, h, now, c)
            .map(|(_, pos)| read_hdr(self.log(), pos));
        let old_pos = self.find(key, h).map(|(_, p)| p);
        match (op, old) {
            (StoreOp::Add, Some(_)) => {
                if let Some(p) = old_pos {
                    let (_, log) = self.parts();
                    log[p + 5] = 1;
                }
                Stored::NotStored
            }
            (StoreOp::Replace | StoreOp::Append | StoreOp::Prepend, None) => Stored::NotStored,
            (StoreOp::Cas, None) => Stored::NotFound,
            (StoreOp::Cas, Some(o)) if o.cas != cas => Stored::Exists,
            (StoreOp::Append | StoreOp::Prepend, Some(o)) => {
                if cas != 0 && cas != o.cas {
                    return Stored::Exists;
                }
                let olen = o.vlen as usize;
                if key.len() + olen + data.len() + proto::ITEM_OVERHEAD > item_max {
                    return Stored::NotStored;
                }
                // The old value may be evicted while room is made: copy it out first.
                let Some(p) = old_pos else {
                    return Stored::NotStored;
                };
                let mut scratch = std::mem::take(&mut self.scratch);
                if scratch.len() < olen {
                    self.scratch = scratch;
                    return Stored::NotStored;
                }
                let v = p + HDR + o.klen as usize;
                scratch[..olen].copy_from_slice(&self.log()[v..v + olen]);
                let parts: [&[u8]; 2] = if op == StoreOp::Append {
                    [&scratch[..olen], data]
                } else {
                    [data, &scratch[..olen]]
                };
                let r = self.put(key, h, o.flags, o.exptime, parts, now, c);
                self.scratch = scratch;
                match r {
                    Some(_) => Stored::Stored,
                    None => Stored::NoMemory,
                }
            }
            _ => match self.put(key, h, flags, exptime, [data, &[]], now, c) {
                Some(_) => Stored::Stored,
                None => Stored::NoMemory,
            },
        }
    }

    /// `delete`: true when the key was there.
    pub fn delete(&mut self, key: &[u8], h: u64, now: u32, c: &Counters) -> bool {
        match self.lookup(key, h, now, c) {
            Some((slot, pos)) => {
                self.unlink(slot, pos);
                true
            }
            None => false,
        }
    }

    /// Removes `key` whatever it holds (a `set` refused as too large).
    pub fn remove(&mut self, key: &[u8], h: u64) {
        if let Some((slot, pos)) = self.find(key, h) {
            self.unlink(slot, pos);
        }
    }

    /// `touch`: sets a new absolute expiry; true when the key was there.
    pub fn touch(&mut self, key: &[u8], h: u64, exptime: u32, now: u32, c: &Counters) -> bool {
        match self.lookup(key, h, now, c) {
            Some((_, pos)) => {
                let (_, log) = self.parts();
                wr32(log, pos + 12, exptime);
                true
            }
            None => false,
        }
    }

    /// `incr`/`decr` with memcached's rules: the value must parse as a decimal u64; incr
    /// wraps at 2^64, decr stops at 0; a result no longer than the old value is written in
    /// place, padded with spaces (the length stays), a longer one makes a new item.
    pub fn arith(
        &mut self,
        key: &[u8],
        h: u64,
        incr: bool,
        delta: u64,
        now: u32,
        c: &Counters,
    ) -> Arith {
        let Some((_, pos)) = self.lookup(key, h, now, c) else {
            return Arith::NotFound;
        };
        let hd = read_hdr(self.log(), pos);
        let vlen = hd.vlen as usize;
        let v = pos + HDR + hd.klen as usize;
        if vlen == 0 {
            return Arith::NonNumeric;
        }
        let Some(cur) = proto::safe_strtoull(&self.log()[v..v + vlen]) else {
            return Arith::NonNumeric;
        };
        let new = if incr {
            cur.wrapping_add(delta)
        } else {
            cur.saturating_sub(delta)
        };
        let mut digits = [0u8; 20];
        let d = proto::itoa(new, &mut digits);
        let n = d.len();
        if n <= vlen {
            let cas = self.next_cas();
            let (_, log) = self.parts();
            log[v..v + n].copy_from_slice(d);
            log[v + n..v + vlen].fill(b' ');
            wr64(log, pos + 24, cas);
            return Arith::Value(new);
        }
        let mut buf = [0u8; 20];
        buf[..n].copy_from_slice(d);
        match self.put(key, h, hd.flags, hd.exptime, [&buf[..n], &[]], now, c) {
            Some(_) => Arith::Value(new),
            None => Arith::NoMemory,
        }
    }

    /// Checks the index against the log (tests): every slot names a live entry whose hash
    /// and key lead back to the slot, and the counts agree.
    #[doc(hidden)]
    pub fn check(&mut self) -> Result<(), String> {
        let cap = self.geo.capacity;
        let mut live = 0u64;
        let mut bytes = 0u64;
        let mut at = self.head;
        while at < self.tail {
            let pos = (at % cap) as usize;
            let hd = read_hdr(self.log(), pos);
            if hd.size < 8 || hd.size & 7 != 0 {
                return Err(format!("bad entry size {} at {at}", hd.size));
            }
            if hd.kind == KIND_LIVE {
                live += 1;
                bytes += u64::from(hd.size);
                let key = key_at(self.log(), pos, hd.klen as usize).to_vec();
                if hash(&key) != hd.hash {
                    return Err(format!("entry at {at}: hash mismatch"));
                }
                match self.find(&key, hd.hash) {
                    Some((_, p)) if p == pos => {}
                    other => return Err(format!("entry at {at}: index says {other:?}")),
                }
            }
            at += u64::from(hd.size);
        }
        if at != self.tail {
            return Err(format!("entries end at {at}, tail is {}", self.tail));
        }
        if live != self.items || bytes != self.bytes {
            return Err(format!(
                "counted {live} items / {bytes} bytes, partition says {} / {}",
                self.items, self.bytes
            ));
        }
        let (idx, _) = self.parts();
        let slots = idx
            .chunks(BUCKET_WORDS)
            .flat_map(|b| &b[1..])
            .filter(|&&w| w != 0)
            .count() as u64;
        if slots != live {
            return Err(format!("{slots} index slots for {live} live items"));
        }
        if self.used() > self.limit.max(self.target) {
            return Err(format!("used {} over limit {}", self.used(), self.limit));
        }
        Ok(())
    }
}

/// A partition together with the flag that hands it to one worker at a time.
///
/// The partition is only ever used by the worker that owns it (MICA's exclusive
/// ownership), so the flag is never contended in the engine: it is taken once per burst
/// with one uncontended compare-and-swap and exists so that safe code cannot make two
/// mutable references (a test calling handlers from two threads, a chain swap). It is not
/// waited on: a second taker is refused.
pub struct Cell {
    busy: AtomicBool,
    part: std::cell::UnsafeCell<Partition>,
}

// SAFETY: the partition is reached only through `Cell::with`, which hands out `&mut` to one
// caller at a time (the busy flag, acquired with Acquire and released with Release, orders
// one holder's accesses before the next's). Partition itself is Send (a Region and plain
// data).
unsafe impl Sync for Cell {}

impl Cell {
    pub fn new(part: Partition) -> Cell {
        Cell {
            busy: AtomicBool::new(false),
            part: std::cell::UnsafeCell::new(part),
        }
    }

    /// Runs `f` on the partition, or returns `None` at once if someone else has it.
    pub fn with<R>(&self, f: impl FnOnce(&mut Partition) -> R) -> Option<R> {
        if self
            .busy
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            return None;
        }
        struct Release<'a>(&'a AtomicBool);
        impl Drop for Release<'_> {
            fn drop(&mut self) {
                self.0.store(false, Ordering::Release);
            }
        }
        let _release = Release(&self.busy);
        // SAFETY: the busy flag is ours until `_release` drops, so no other `&mut` to the
        // partition exists while `f` runs, and `f` cannot keep the reference.
        let part = unsafe { &mut *self.part.get() };
        Some(f(part))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(capacity: u64) -> Partition {
        Partition::new(
            Geometry::for_capacity(capacity),
            capacity,
            0,
            1,
            1 << 20,
            MemOptions {
                hugepages: false,
                numa_node: None,
            },
        )
        .unwrap()
    }

    fn set(p: &mut Partition, k: &str, v: &[u8], c: &Counters) -> Stored {
        p.store(
            StoreOp::Set,
            k.as_bytes(),
            hash(k.as_bytes()),
            0,
            0,
            v,
            0,
            1 << 20,
            100,
            c,
        )
    }

    fn get(p: &mut Partition, k: &str, c: &Counters) -> Option<Vec<u8>> {
        let f = p.get(k.as_bytes(), hash(k.as_bytes()), 100, None, c)?;
        Some(p.value(&f).to_vec())
    }

    #[test]
    fn set_get_overwrite_delete() {
        let c = Counters::default();
        let mut p = part(1 << 20);
        assert_eq!(set(&mut p, "a", b"1", &c), Stored::Stored);
        assert_eq!(set(&mut p, "b", b"22", &c), Stored::Stored);
        assert_eq!(set(&mut p, "a", b"333", &c), Stored::Stored);
        assert_eq!(get(&mut p, "a", &c).unwrap(), b"333");
        assert_eq!(get(&mut p, "b", &c).unwrap(), b"22");
        assert_eq!(p.items(), 2);
        p.check().unwrap();
        assert!(p.delete(b"a", hash(b"a"), 100, &c));
        assert!(!p.delete(b"a", hash(b"a"), 100, &c));
        assert_eq!(get(&mut p, "a", &c), None);
        assert_eq!(p.items(), 1);
        p.check().unwrap();
    }

    #[test]
    fn eviction_keeps_the_budget_and_referenced_items() {
        let c = Counters::default();
        let mut p = part(256 << 10);
        set(&mut p, "hot", b"h", &c);
        for i in 0..20_000 {
            // The hot key is read between inserts, so CLOCK keeps moving it to the tail.
            assert_eq!(set(&mut p, &format!("k{i}"), &[7; 100], &c), Stored::Stored);
            if i % 50 == 0 {
                assert!(get(&mut p, "hot", &c).is_some(), "hot key evicted at {i}");
            }
        }
        assert!(p.used() <= 256 << 10);
        assert!(c.evictions.get() > 10_000);
        assert!(c.second_chances.get() > 0);
        assert!(get(&mut p, "k19999", &c).is_some());
        assert!(get(&mut p, "k0", &c).is_none());
        p.check().unwrap();
    }

    #[test]
    fn ttl_expires_on_access_and_at_the_hand() {
        let c = Counters::default();
        let mut p = part(1 << 20);
        let h = hash(b"t");
        p.store(StoreOp::Set, b"t", h, 0, 150, b"x", 0, 1 << 20, 100, &c);
        assert!(p.get(b"t", h, 149, None, &c).is_some());
        assert!(p.get(b"t", h, 150, None, &c).is_none());
        assert_eq!(c.expired.get(), 1);
        assert_eq!(p.items(), 0);
        p.check().unwrap();
    }

    #[test]
    fn add_replace_append_prepend_cas() {
        let c = Counters::default();
        let mut p = part(1 << 20);
        let k = b"k";
        let h = hash(k);
        let st = |p: &mut Partition, op, v: &[u8], cas| {
            p.store(op, k, h, 5, 0, v, cas, 1 << 20, 100, &c)
        };
        assert_eq!(st(&mut p, StoreOp::Replace, b"x", 0), Stored::NotStored);
        assert_eq!(st(&mut p, StoreOp::Append, b"x", 0), Stored::NotStored);
        assert_eq!(st(&mut p, StoreOp::Cas, b"x", 1), Stored::NotFound);
        assert_eq!(st(&mut p, StoreOp::Add, b"mid", 0), Stored::Stored);
        assert_eq!(st(&mut p, StoreOp::Add, b"no", 0), Stored::NotStored);
        assert_eq!(st(&mut p, StoreOp::Append, b">", 0), Stored::Stored);
        assert_eq!(st(&mut p, StoreOp::Prepend, b"<", 0), Stored::Stored);
        let f = p.get(k, h, 100, None, &c).unwrap();
        assert_eq!(p.value(&f), b"<mid>");
        assert_eq!(f.flags, 5);
        assert_eq!(st(&mut p, StoreOp::Cas, b"c", f.cas + 1), Stored::Exists);
        assert_eq!(st(&mut p, StoreOp::Cas, b"c", f.cas), Stored::Stored);
        assert_eq!(st(&mut p, StoreOp::Replace, b"r", 0), Stored::Stored);
        let f = p.get(k, h, 100, None, &c).unwrap();
        assert_eq!(p.value(&f), b"r");
        p.check().unwrap();
    }

    #[test]
    fn incr_in_place_pads_and_grows() {
        let c = Counters::default();
        let mut p = part(1 << 20);
        let k = b"n";
        let h = hash(k);
        p.store(StoreOp::Set, k, h, 0, 0, b"100", 0, 1 << 20, 100, &c);
        assert_eq!(p.arith(k, h, false, 1, 100, &c), Arith::Value(99));
        let f = p.get(k, h, 100, None, &c).unwrap();
        assert_eq!(p.value(&f), b"99 ");
        assert_eq!(p.arith(k, h, true, 1000, 100, &c), Arith::Value(1099));
        let f = p.get(k, h, 100, None, &c).unwrap();
        assert_eq!(p.value(&f), b"1099");
        assert_eq!(p.arith(k, h, false, 5000, 100, &c), Arith::Value(0));
        assert_eq!(
            p.arith(b"zz", hash(b"zz"), true, 1, 100, &c),
            Arith::NotFound
        );
        p.store(StoreOp::Set, k, h, 0, 0, b"x1", 0, 1 << 20, 100, &c);
        assert_eq!(p.arith(k, h, true, 1, 100, &c), Arith::NonNumeric);
        p.check().unwrap();
    }

    #[test]
    fn budget_cuts_happen_in_steps_and_raises_at_once() {
        let c = Counters::default();
        let mut p = part(8 << 20);
        for i in 0..40_000 {
            set(&mut p, &format!("k{i}"), &[1; 150], &c);
        }
        let before = p.used();
        assert!(before > 7 << 20);
        p.set_budget(1 << 20);
        p.maintain(100, &c);
        // One step: the limit moved down by SHRINK_STEP from the capacity, not further.
        assert!(p.used() <= (8 << 20) - SHRINK_STEP && p.used() > 1 << 20);
        for _ in 0..10 {
            p.maintain(100, &c);
        }
        assert!(p.used() <= 1 << 20);
        p.check().unwrap();
        p.set_budget(8 << 20);
        for i in 0..40_000 {
            set(&mut p, &format!("j{i}"), &[1; 150], &c);
        }
        assert!(p.used() > 7 << 20);
        p.check().unwrap();
    }

    #[test]
    fn flush_empties_everything() {
        let c = Counters::default();
        let mut p = part(1 << 20);
        for i in 0..100 {
            set(&mut p, &format!("k{i}"), b"v", &c);
        }
        p.flush();
        assert_eq!(p.items(), 0);
        assert_eq!(get(&mut p, "k1", &c), None);
        p.check().unwrap();
        set(&mut p, "k1", b"again", &c);
        assert_eq!(get(&mut p, "k1", &c).unwrap(), b"again");
    }

    #[test]
    fn tiny_items_are_bounded_by_the_index() {
        let c = Counters::default();
        let mut p = part(MIN_CAPACITY);
        for i in 0..50_000 {
            assert_eq!(set(&mut p, &format!("{i}"), b"", &c), Stored::Stored);
        }
        assert!(p.items() <= p.live_max);
        p.check().unwrap();
    }

    #[test]
    fn an_item_larger_than_the_budget_is_refused() {
        let c = Counters::default();
        let mut p = part(MIN_CAPACITY);
        assert_eq!(set(&mut p, "big", &vec![0; 70_000], &c), Stored::NoMemory);
        assert_eq!(set(&mut p, "ok", &vec![0; 60_000], &c), Stored::Stored);
        p.check().unwrap();
    }

    #[test]
    fn cell_refuses_a_second_holder() {
        let cell = Cell::new(part(MIN_CAPACITY));
        let inner = cell.with(|_| cell.with(|_| ()).is_none());
        assert_eq!(inner, Some(true));
        assert!(cell.with(|_| ()).is_some());
    }

    #[test]
    fn partition_choice_is_balanced() {
        let mut n = [0usize; 3];
        for i in 0..30_000 {
            n[partition_of(hash(format!("key:{i}").as_bytes()), 3)] += 1;
        }
        assert!(n.iter().all(|&x| (9_000..11_000).contains(&x)), "{n:?}");
    }
}
