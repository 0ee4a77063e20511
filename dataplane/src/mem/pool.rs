//! Fixed-size frames over a [`Region`], with a shared lock-free free list and per-owner caches.
//!
//! The free list is a `crossbeam_queue::ArrayQueue` of frame indices sized to hold every
//! frame, so a free can never fail. Workers and queues allocate and free through a [`Cache`]
//! (like DPDK's per-lcore mempool cache): a plain `Vec` refilled and spilled in bursts, so
//! the common path touches no shared cache line. Rejected: a mutex-protected stack (a lock
//! per burst on the hot path) and per-frame reference counts (an atomic per packet).

use std::fmt;
use std::ptr::NonNull;
use std::sync::Arc;

use crossbeam_queue::ArrayQueue;

use super::region::{Backing, Options, Region, RegionError};
use crate::packet::Meta;

/// Bytes reserved in front of every packet so that headers can be prepended in place
/// (encapsulation) without a copy. Same value as DPDK's `RTE_PKTMBUF_HEADROOM` (128) doubled
/// to fit an IPv6 + UDP + GUE outer header with room to spare.
pub const HEADROOM: u16 = 256;

/// Index of a pool in the engine's pool table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct PoolId(pub u16);

impl fmt::Display for PoolId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pool{}", self.0)
    }
}

/// A packet buffer: exclusive ownership of one frame of a pool plus its metadata.
///
/// Not `Clone`/`Copy`: holding a `Frame` *is* the right to read and write its bytes. Return
/// it with [`FramePool::free`] or [`Cache::free`]; a frame that is dropped instead shows up as
/// a leak in the pool's shutdown accounting.
#[must_use = "a frame must be transmitted, forwarded or freed; dropping it leaks pool memory"]
pub struct Frame {
    base: NonNull<u8>,
    index: u32,
    pool: PoolId,
    capacity: u16,
    head: u16,
    len: u16,
    /// Per-packet metadata (receive queue, timestamp, parsed layout, ...).
    pub meta: Meta,
}

// SAFETY: a Frame is the unique owner of its bytes (see FramePool: each index is handed out
// once until it is freed), so moving it to another thread moves that ownership.
unsafe impl Send for Frame {}

impl fmt::Debug for Frame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Frame")
            .field("pool", &self.pool)
            .field("index", &self.index)
            .field("head", &self.head)
            .field("len", &self.len)
            .finish()
    }
}

impl Frame {
    /// The packet bytes.
    #[inline]
    pub fn data(&self) -> &[u8] {
        // SAFETY: head + len <= capacity is an invariant of every setter, the frame's bytes
        // lie inside the pool's live region, and `&self` excludes concurrent writers.
        unsafe {
            std::slice::from_raw_parts(
                self.base.as_ptr().add(self.head as usize),
                self.len as usize,
            )
        }
    }

    /// The packet bytes, writable.
    #[inline]
    pub fn data_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `data`; `&mut self` makes this the only reference to the bytes.
        unsafe {
            std::slice::from_raw_parts_mut(
                self.base.as_ptr().add(self.head as usize),
                self.len as usize,
            )
        }
    }

    /// Packet length in bytes.
    #[inline]
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// True when the frame holds no packet bytes.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Frame size: the most bytes headroom + packet can take.
    #[inline]
    pub fn capacity(&self) -> usize {
        self.capacity as usize
    }

    /// Bytes free in front of the packet.
    #[inline]
    pub fn headroom(&self) -> usize {
        self.head as usize
    }

    /// Bytes free after the packet.
    #[inline]
    pub fn tailroom(&self) -> usize {
        (self.capacity - self.head - self.len) as usize
    }

    /// Index of the pool the frame belongs to.
    #[inline]
    pub fn pool(&self) -> PoolId {
        self.pool
    }

    /// Index of the frame within its pool (its offset is `index * frame_size`).
    #[inline]
    pub fn index(&self) -> u32 {
        self.index
    }

    /// Sets the packet length, keeping the start. Returns false (and changes nothing) when
    /// the frame has no room for `len` bytes.
    #[inline]
    pub fn try_set_len(&mut self, len: usize) -> bool {
        if len > (self.capacity - self.head) as usize {
            return false;
        }
        self.len = len as u16;
        true
    }

    /// Grows the packet at the front by `n` bytes (for a new outer header) and returns the
    /// new packet. None when the headroom is too small.
    #[inline]
    pub fn try_prepend(&mut self, n: usize) -> Option<&mut [u8]> {
        if n > self.head as usize {
            return None;
        }
        self.head -= n as u16;
        self.len += n as u16;
        Some(self.data_mut())
    }

    /// Removes `n` bytes from the front of the packet (decapsulation). False when the packet
    /// is shorter than `n`.
    #[inline]
    pub fn try_strip(&mut self, n: usize) -> bool {
        if n > self.len as usize {
            return false;
        }
        self.head += n as u16;
        self.len -= n as u16;
        true
    }

    /// Gives up the token, returning (index, head, len), for a frame handed to a device ring.
    /// The pool counts the frame as in use until it comes back through
    /// [`FramePool::frame_from_raw`] or [`FramePool::release_raw`].
    #[inline]
    pub(crate) fn into_raw(self) -> (u32, u16, u16) {
        (self.index, self.head, self.len)
    }

    /// Moves the packet so that it starts `head` bytes into the frame (devices that can
    /// only transmit from a fixed offset). False when it does not fit.
    #[inline]
    pub(crate) fn try_move_to(&mut self, head: u16) -> bool {
        if head as usize + self.len as usize > self.capacity as usize {
            return false;
        }
        if head != self.head {
            // SAFETY: both ranges lie inside this frame (checked above and by the
            // head + len <= capacity invariant); `copy` handles the overlap.
            unsafe {
                std::ptr::copy(
                    self.base.as_ptr().add(self.head as usize),
                    self.base.as_ptr().add(head as usize),
                    self.len as usize,
                );
            }
            self.head = head;
        }
        true
    }

    /// Replaces the packet with `bytes`, starting at the default headroom. False when the
    /// frame cannot hold them.
    #[inline]
    pub fn try_fill(&mut self, bytes: &[u8]) -> bool {
        let head = HEADROOM.min(self.capacity / 2);
        if bytes.len() > (self.capacity - head) as usize {
            return false;
        }
        self.head = head;
        self.len = bytes.len() as u16;
        self.data_mut().copy_from_slice(bytes);
        true
    }
}

/// Shutdown accounting failure: frames that were never returned.
#[derive(Debug, thiserror::Error)]
#[error("{pool} ({name}): {missing} of {total} frames not returned (free {free})")]
pub struct LeakError {
    pub pool: PoolId,
    pub name: String,
    pub total: u32,
    pub free: u32,
    pub missing: u32,
}

/// Memory behind a pool: our own region, or memory another component owns (an AF_XDP
/// UMEM mapped by xsk-rs), kept alive by an opaque owner value.
enum Memory {
    Owned(std::mem::ManuallyDrop<Region>),
    External {
        base: NonNull<u8>,
        backing: Backing,
        owner: std::mem::ManuallyDrop<Box<dyn std::any::Any + Send + Sync>>,
    },
}

impl Memory {
    fn base(&self) -> *mut u8 {
        match self {
            Memory::Owned(r) => r.as_ptr(),
            Memory::External { base, .. } => base.as_ptr(),
        }
    }

    fn backing(&self) -> Backing {
        match self {
            Memory::Owned(r) => r.backing(),
            Memory::External { backing, .. } => *backing,
        }
    }
}

/// A fixed set of equal-size frames over one region.
pub struct FramePool {
    id: PoolId,
    name: String,
    memory: Memory,
    frame_size: u16,
    count: u32,
    free: ArrayQueue<u32>,
}

// SAFETY: the memory is only reached through Frames, each the unique owner of its bytes;
// the external owner value is Send + Sync itself.
unsafe impl Send for FramePool {}
// SAFETY: as above; shared access only touches the lock-free free list.
unsafe impl Sync for FramePool {}

impl fmt::Debug for FramePool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FramePool")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("frames", &self.count)
            .field("frame_size", &self.frame_size)
            .field("free", &self.free.len())
            .field("backing", &self.memory.backing())
            .finish()
    }
}

/// Errors building a pool.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("frame_size {0} is out of range: it must be a power of two between 512 and 32768")]
    FrameSize(u32),
    #[error("frames must be between 1 and {max}, got {got}")]
    Count { got: u32, max: u32 },
    #[error(transparent)]
    Region(#[from] RegionError),
}

impl FramePool {
    /// Maps a region for `count` frames of `frame_size` bytes and puts them all on the free
    /// list.
    pub fn new(
        id: PoolId,
        name: impl Into<String>,
        count: u32,
        frame_size: u32,
        opts: Options,
    ) -> Result<Arc<FramePool>, PoolError> {
        if !(512..=32768).contains(&frame_size) || !frame_size.is_power_of_two() {
            return Err(PoolError::FrameSize(frame_size));
        }
        const MAX_FRAMES: u32 = 1 << 24;
        if count == 0 || count > MAX_FRAMES {
            return Err(PoolError::Count {
                got: count,
                max: MAX_FRAMES,
            });
        }
        let region = Region::map(count as usize * frame_size as usize, opts)?;
        let free = ArrayQueue::new(count as usize);
        for i in 0..count {
            // Cannot fail: the queue holds exactly `count` entries.
            let _ = free.push(i);
        }
        // Fits: the range check above caps frame_size at 32768.
        let frame_size = frame_size as u16;
        Ok(Arc::new(FramePool {
            id,
            name: name.into(),
            memory: Memory::Owned(std::mem::ManuallyDrop::new(region)),
            frame_size,
            count,
            free,
        }))
    }

    /// The pool's index.
    pub fn id(&self) -> PoolId {
        self.id
    }

    /// The pool's name (its port's).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Bytes per frame.
    pub fn frame_size(&self) -> usize {
        self.frame_size as usize
    }

    /// Total frames.
    pub fn total(&self) -> u32 {
        self.count
    }

    /// Frames on the shared free list (frames held in caches count as in use here).
    pub fn available(&self) -> u32 {
        self.free.len() as u32
    }

    /// Pages backing the pool.
    pub fn backing(&self) -> Backing {
        self.memory.backing()
    }

    /// Builds a pool over memory someone else mapped (an AF_XDP UMEM). All frames start on
    /// the free list. `owner` is kept alive (and dropped) with the pool, or leaked with the
    /// memory if frames are still out when the pool is dropped.
    ///
    /// # Safety
    /// `base` must point to `count * frame_size` bytes that stay mapped and are used by
    /// nothing else while `owner` is alive, except through frames of this pool (and, for
    /// frames handed to a kernel ring, by the kernel until they are handed back).
    pub unsafe fn from_external(
        id: PoolId,
        name: impl Into<String>,
        base: NonNull<u8>,
        count: u32,
        frame_size: u32,
        backing: Backing,
        owner: Box<dyn std::any::Any + Send + Sync>,
    ) -> Result<Arc<FramePool>, PoolError> {
        if !(512..=32768).contains(&frame_size) || !frame_size.is_power_of_two() {
            return Err(PoolError::FrameSize(frame_size));
        }
        if count == 0 || count > 1 << 24 {
            return Err(PoolError::Count {
                got: count,
                max: 1 << 24,
            });
        }
        let free = ArrayQueue::new(count as usize);
        for i in 0..count {
            let _ = free.push(i);
        }
        Ok(Arc::new(FramePool {
            id,
            name: name.into(),
            memory: Memory::External {
                base,
                backing,
                owner: std::mem::ManuallyDrop::new(owner),
            },
            frame_size: frame_size as u16,
            count,
            free,
        }))
    }

    /// Base address of the pool's memory (frame `i` starts at `base + i * frame_size`).
    pub fn base(&self) -> *mut u8 {
        self.memory.base()
    }

    /// Rebuilds the token of a frame whose index the caller got back from a device ring.
    ///
    /// # Safety
    /// `index` must be a frame of this pool that was given away with [`Frame::into_raw`]
    /// and is owned by nobody else now; `head + len` must not exceed the frame size.
    #[inline]
    pub(crate) unsafe fn frame_from_raw(&self, index: u32, head: u16, len: u16) -> Frame {
        debug_assert!(head as usize + len as usize <= self.frame_size as usize);
        let mut f = self.frame(index);
        f.head = head;
        f.len = len;
        f
    }

    /// Puts a frame index given away with [`Frame::into_raw`] straight back on the free list
    /// (used when a device returns everything at close).
    ///
    /// # Safety
    /// As for [`FramePool::frame_from_raw`].
    pub(crate) unsafe fn release_raw(&self, index: u32) {
        let _ = self.free.push(index);
    }

    /// Takes every index off the free list (for close-time reclaim); the caller must give
    /// all of them back with `release_raw`.
    pub(crate) fn drain_free(&self) -> Vec<u32> {
        let mut v = Vec::with_capacity(self.free.len());
        while let Some(i) = self.free.pop() {
            v.push(i);
        }
        v
    }

    #[inline]
    fn frame(&self, index: u32) -> Frame {
        debug_assert!(index < self.count);
        // SAFETY: index < count, so the offset is inside the region (count * frame_size
        // bytes).
        let base = unsafe {
            self.memory
                .base()
                .add(index as usize * self.frame_size as usize)
        };
        Frame {
            // SAFETY: derived from the non-null region base by an in-bounds offset.
            base: unsafe { NonNull::new_unchecked(base) },
            index,
            pool: self.id,
            capacity: self.frame_size,
            head: HEADROOM.min(self.frame_size / 2),
            len: 0,
            meta: Meta::default(),
        }
    }

    /// Takes one frame from the free list; `None` when the pool is exhausted.
    #[inline]
    pub fn alloc(&self) -> Option<Frame> {
        self.free.pop().map(|i| self.frame(i))
    }

    /// Returns a frame to the free list.
    ///
    /// # Panics
    /// If the frame belongs to another pool: that is a bug in the caller, and silently
    /// accepting it would corrupt both pools.
    #[inline]
    pub fn free(&self, frame: Frame) {
        assert_eq!(frame.pool, self.id, "frame freed to the wrong pool");
        // Cannot fail: there are never more than `count` indices in circulation.
        let _ = self.free.push(frame.index);
    }

    /// Checks that every frame is back on the free list.
    pub fn verify(&self) -> Result<(), LeakError> {
        let free = self.available();
        if free == self.count {
            Ok(())
        } else {
            Err(LeakError {
                pool: self.id,
                name: self.name.clone(),
                total: self.count,
                free,
                missing: self.count - free,
            })
        }
    }
}

impl Drop for FramePool {
    fn drop(&mut self) {
        if self.free.len() as u32 == self.count {
            // SAFETY: every frame is back on the free list, so no Frame points into the
            // memory any more and it can be released; `memory` is not used after this.
            unsafe {
                match &mut self.memory {
                    Memory::Owned(r) => std::mem::ManuallyDrop::drop(r),
                    Memory::External { owner, .. } => std::mem::ManuallyDrop::drop(owner),
                }
            }
        } else {
            // Frames are still out (a leak already reported by `verify`): keep the memory
            // mapped so that they never dangle.
            tracing::error!(
                "{} ({}): {} frames still in use at drop; leaving the region mapped",
                self.id,
                self.name,
                self.count - self.free.len() as u32
            );
        }
    }
}

/// An owner-local stash of free frame indices in front of a pool's shared free list.
///
/// Allocation and release are plain `Vec` operations; the shared list is touched once per
/// `burst` frames. Dropping a cache returns its frames to the pool.
pub struct Cache {
    pool: Arc<FramePool>,
    stash: Vec<u32>,
    burst: usize,
}

impl fmt::Debug for Cache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cache")
            .field("pool", &self.pool.id)
            .field("stash", &self.stash.len())
            .finish()
    }
}

impl Cache {
    /// A cache that moves `burst` frames at a time to and from the shared list.
    pub fn new(pool: Arc<FramePool>, burst: usize) -> Cache {
        let burst = burst.max(1);
        Cache {
            pool,
            stash: Vec::with_capacity(burst * 2),
            burst,
        }
    }

    /// The pool behind the cache.
    pub fn pool(&self) -> &Arc<FramePool> {
        &self.pool
    }

    /// Takes a frame; `None` when both the cache and the pool are empty.
    #[inline]
    pub fn alloc(&mut self) -> Option<Frame> {
        if self.stash.is_empty() {
            for _ in 0..self.burst {
                match self.pool.free.pop() {
                    Some(i) => self.stash.push(i),
                    None => break,
                }
            }
        }
        self.stash.pop().map(|i| self.pool.frame(i))
    }

    /// Returns a frame; spills a burst to the shared list when the cache is full.
    ///
    /// # Panics
    /// If the frame belongs to another pool (a caller bug, see [`FramePool::free`]).
    #[inline]
    pub fn free(&mut self, frame: Frame) {
        assert_eq!(frame.pool, self.pool.id, "frame freed to the wrong pool");
        if self.stash.len() == self.stash.capacity() {
            self.spill(self.burst);
        }
        self.stash.push(frame.index);
    }

    fn spill(&mut self, n: usize) {
        for _ in 0..n.min(self.stash.len()) {
            if let Some(i) = self.stash.pop() {
                let _ = self.pool.free.push(i);
            }
        }
    }

    /// Returns every cached frame to the pool.
    pub fn flush(&mut self) {
        self.spill(self.stash.len());
    }
}

impl Drop for Cache {
    fn drop(&mut self) {
        self.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(n: u32) -> Arc<FramePool> {
        FramePool::new(
            PoolId(1),
            "t",
            n,
            2048,
            Options {
                hugepages: false,
                numa_node: None,
            },
        )
        .unwrap()
    }

    #[test]
    fn every_frame_is_distinct_and_returns() {
        let p = pool(64);
        let frames: Vec<Frame> = (0..64).map(|_| p.alloc().unwrap()).collect();
        assert!(p.alloc().is_none());
        let mut idx: Vec<u32> = frames.iter().map(|f| f.index()).collect();
        idx.sort_unstable();
        idx.dedup();
        assert_eq!(idx.len(), 64);
        assert!(p.verify().is_err());
        for f in frames {
            p.free(f);
        }
        p.verify().unwrap();
    }

    #[test]
    fn frames_do_not_overlap() {
        let p = pool(4);
        let mut a = p.alloc().unwrap();
        let mut b = p.alloc().unwrap();
        assert!(a.try_set_len(1792));
        assert!(b.try_set_len(1792));
        a.data_mut().fill(0xaa);
        b.data_mut().fill(0xbb);
        assert!(a.data().iter().all(|&x| x == 0xaa));
        assert!(b.data().iter().all(|&x| x == 0xbb));
        p.free(a);
        p.free(b);
    }

    #[test]
    fn length_headroom_and_tailroom_are_enforced() {
        let p = pool(1);
        let mut f = p.alloc().unwrap();
        assert_eq!(f.headroom(), HEADROOM as usize);
        assert!(!f.try_set_len(2048));
        assert!(f.try_set_len(2048 - HEADROOM as usize));
        assert_eq!(f.tailroom(), 0);
        assert!(f.try_fill(&[1, 2, 3]));
        assert_eq!(f.data(), &[1, 2, 3]);
        let outer = f.try_prepend(2).unwrap();
        outer[0] = 9;
        outer[1] = 8;
        assert_eq!(f.data(), &[9, 8, 1, 2, 3]);
        assert!(f.try_strip(2));
        assert_eq!(f.data(), &[1, 2, 3]);
        assert!(!f.try_strip(4));
        assert!(f.try_prepend(HEADROOM as usize + 1).is_none());
        assert!(!f.try_fill(&[0u8; 2048]));
        p.free(f);
        p.verify().unwrap();
    }

    #[test]
    fn cache_recycles_without_touching_the_pool_and_flushes_on_drop() {
        let p = pool(32);
        {
            let mut c = Cache::new(p.clone(), 8);
            let f = c.alloc().unwrap();
            assert_eq!(p.available(), 24);
            c.free(f);
            let g = c.alloc().unwrap();
            assert_eq!(p.available(), 24);
            c.free(g);
        }
        p.verify().unwrap();
    }

    #[test]
    fn cache_spills_when_full() {
        let p = pool(32);
        let mut c = Cache::new(p.clone(), 4);
        let frames: Vec<Frame> = (0..32).map(|_| c.alloc().unwrap()).collect();
        assert!(c.alloc().is_none());
        for f in frames {
            c.free(f);
        }
        assert!(p.available() >= 24);
        c.flush();
        p.verify().unwrap();
    }

    #[test]
    #[should_panic(expected = "wrong pool")]
    fn freeing_to_the_wrong_pool_is_refused() {
        let a = pool(1);
        let b = FramePool::new(
            PoolId(2),
            "b",
            1,
            2048,
            Options {
                hugepages: false,
                numa_node: None,
            },
        )
        .unwrap();
        let f = a.alloc().unwrap();
        b.free(f);
    }

    #[test]
    fn bad_sizes_are_refused() {
        let o = Options {
            hugepages: false,
            numa_node: None,
        };
        assert!(matches!(
            FramePool::new(PoolId(0), "x", 1, 1000, o),
            Err(PoolError::FrameSize(1000))
        ));
        assert!(matches!(
            FramePool::new(PoolId(0), "x", 0, 2048, o),
            Err(PoolError::Count { .. })
        ));
    }
}
