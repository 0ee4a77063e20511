//! Fixed-size frames over a [`Region`], with a shared lock-free free list and per-owner caches.
//!
//! The free list is a `crossbeam_queue::ArrayQueue` of frame indices sized to hold every
//! frame, so a free can never fail. Workers and queues allocate and free through a [`Cache`]
//! (like DPDK's per-lcore mempool cache): a plain `Vec` refilled and spilled in bursts, so
//! the common path touches no shared cache line. Rejected: a mutex-protected stack (a lock
//! per burst on the hot path) and per-frame reference counts (an atomic per packet).
//!
//! A pool can also front memory that another allocator owns and recycles (a DPDK mempool,
//! whose mbufs the PMDs allocate and free themselves): a [`FrameSource`]. Such a pool has no
//! free list of its own; [`FramePool`] and [`Cache`] hand allocation and release to the
//! source in bursts (the cache stashes buffer pointers instead of indices), behind one
//! predictable branch on the index-pool path. Frames of a source are addressed by buffer
//! pointer, not by index, so their buffers need not be equally spaced (mbufs sit between
//! headers, and a mempool may span several memory chunks). Accounting is per pool: every
//! owner keeps a local count of the source frames it created and consumed and adds it to the
//! pool's `outstanding` counter when it flushes, so the hot path touches no shared counter
//! and [`FramePool::verify`] can still say how many frames a port never gave back, even when
//! several ports share one source. Rejected: a stride field giving source buffers an index
//! (it would tie us to a single contiguous mempool chunk and to one object layout).

use std::fmt;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicI64, Ordering};
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

    /// Index of the frame within its pool (its offset is `index * frame_size`);
    /// [`SOURCE_INDEX`] for frames of a [`FrameSource`], which have no index.
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

    /// Gives up the token of a [`FrameSource`] frame, returning (buffer, head, len), for a
    /// frame handed to a device. The device returns the buffer to the source itself; the
    /// caller accounts for the frame with [`FramePool::add_outstanding`].
    #[inline]
    #[cfg_attr(not(feature = "dpdk"), allow(dead_code))]
    pub(crate) fn into_buffer(self) -> (NonNull<u8>, u16, u16) {
        (self.base, self.head, self.len)
    }

    /// [`FramePool::frame_from_buffer_meta`] without touching the pool: `pool` and
    /// `capacity` are the pool's id and [`FramePool::frame_size`], read once per burst by a
    /// receive path that turns many device buffers into frames.
    ///
    /// # Safety
    /// As for [`FramePool::frame_from_buffer`], for the pool `pool` and `capacity` came
    /// from.
    #[inline(always)]
    #[cfg_attr(not(feature = "dpdk"), allow(dead_code))]
    pub(crate) unsafe fn from_source_buffer(
        buffer: NonNull<u8>,
        pool: PoolId,
        capacity: u16,
        head: u16,
        len: u16,
        meta: Meta,
    ) -> Frame {
        debug_assert!(head as usize + len as usize <= capacity as usize);
        Frame {
            base: buffer,
            index: SOURCE_INDEX,
            pool,
            capacity,
            head,
            len,
            meta,
        }
    }

    /// Start of the frame's buffer (headroom included).
    #[inline]
    #[cfg_attr(not(feature = "dpdk"), allow(dead_code))]
    pub(crate) fn buffer(&self) -> NonNull<u8> {
        self.base
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

/// [`Frame::index`] of frames that belong to a [`FrameSource`].
pub const SOURCE_INDEX: u32 = u32::MAX;

/// An allocator that owns frame buffers and recycles them itself (a DPDK mempool): a
/// [`FramePool`] built with [`FramePool::from_source`] hands it every allocation and release.
///
/// Buffers are identified by their start address (headroom included); each is
/// `frame_size()` bytes long, and a freshly allocated one holds its packet from
/// `headroom()` on.
///
/// # Safety
/// Implementations must guarantee that a buffer returned by `alloc_bulk` is `frame_size()`
/// bytes of readable and writable memory that nothing else uses until it is given back with
/// `free_bulk` (or handed to a device that gives it back), and that buffers stay mapped as
/// long as the source is alive.
pub unsafe trait FrameSource: Send + Sync + fmt::Debug {
    /// Bytes per buffer: headroom plus the most packet bytes.
    fn frame_size(&self) -> u16;
    /// Where a freshly allocated buffer's packet starts.
    fn headroom(&self) -> u16;
    /// Buffers the source holds in all.
    fn total(&self) -> u32;
    /// Buffers free in the source now (its own caches included).
    fn available(&self) -> u32;
    /// Pages behind the buffers.
    fn backing(&self) -> Backing;
    /// Appends up to `n` buffers to `out` (which has the capacity) and returns how many. May
    /// return 0 while buffers are free (bulk sources give all or nothing); callers retry
    /// with fewer.
    fn alloc_bulk(&self, out: &mut Vec<NonNull<u8>>, n: usize) -> usize;
    /// Gives buffers back.
    ///
    /// # Safety
    /// Each buffer must have come from this source (from `alloc_bulk` or a device that
    /// allocates from it) and be owned by the caller, with no reference left to it.
    unsafe fn free_bulk(&self, buffers: &[NonNull<u8>]);
}

/// Memory behind a pool: our own region, memory another component owns (an AF_XDP UMEM
/// mapped by xsk-rs) kept alive by an opaque owner value, or buffers a [`FrameSource`]
/// manages.
enum Memory {
    Owned(std::mem::ManuallyDrop<Region>),
    External {
        base: NonNull<u8>,
        backing: Backing,
        owner: std::mem::ManuallyDrop<Box<dyn std::any::Any + Send + Sync>>,
    },
    Source,
}

impl Memory {
    fn base(&self) -> *mut u8 {
        match self {
            Memory::Owned(r) => r.as_ptr(),
            Memory::External { base, .. } => base.as_ptr(),
            Memory::Source => std::ptr::null_mut(),
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
    /// Set for pools over a [`FrameSource`]; `free` is then unused.
    source: Option<Arc<dyn FrameSource>>,
    /// Source pools: frames created minus frames given back, as published by their owners
    /// (see the module doc). 0 at a clean stop.
    outstanding: AtomicI64,
}

// SAFETY: the memory is only reached through Frames, each the unique owner of its bytes;
// the external owner value and the source are Send + Sync themselves.
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
            .field("free", &self.available())
            .field("backing", &self.backing())
            .field("source", &self.source)
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
            source: None,
            outstanding: AtomicI64::new(0),
        }))
    }

    /// Builds a pool whose frames live in, and go back to, `source` (a DPDK mempool).
    /// Several pools may share one source; each accounts for its own frames.
    pub fn from_source(
        id: PoolId,
        name: impl Into<String>,
        source: Arc<dyn FrameSource>,
    ) -> Result<Arc<FramePool>, PoolError> {
        let count = source.total();
        if count == 0 {
            return Err(PoolError::Count {
                got: 0,
                max: u32::MAX,
            });
        }
        if source.frame_size() <= source.headroom() {
            // No room for a packet behind the headroom.
            return Err(PoolError::FrameSize(source.frame_size() as u32));
        }
        Ok(Arc::new(FramePool {
            id,
            name: name.into(),
            memory: Memory::Source,
            frame_size: source.frame_size(),
            count,
            // Unused for source pools; ArrayQueue needs a capacity of at least one.
            free: ArrayQueue::new(1),
            source: Some(source),
            outstanding: AtomicI64::new(0),
        }))
    }

    /// The source behind the pool, if it has one.
    pub fn source(&self) -> Option<&Arc<dyn FrameSource>> {
        self.source.as_ref()
    }

    /// Source pools: adds `delta` to the frames counted as out of the source (frames a
    /// device handed over become tokens: positive; tokens handed to a device: negative).
    /// Owners call this once per flush, not per frame.
    pub(crate) fn add_outstanding(&self, delta: i64) {
        if delta != 0 {
            self.outstanding.fetch_add(delta, Ordering::Relaxed);
        }
    }

    /// Source pools: frames currently out of the source as far as published (see
    /// [`FramePool::add_outstanding`]); 0 for index pools.
    pub fn outstanding(&self) -> i64 {
        self.outstanding.load(Ordering::Relaxed)
    }

    /// Rebuilds the token of a source frame a device handed over. The caller accounts for it
    /// with [`FramePool::add_outstanding`].
    ///
    /// # Safety
    /// `buffer` must be a buffer of this pool's source that the caller owns exclusively,
    /// and `head + len` must not exceed the source's frame size.
    #[inline]
    pub(crate) unsafe fn frame_from_buffer(
        &self,
        buffer: NonNull<u8>,
        head: u16,
        len: u16,
    ) -> Frame {
        // SAFETY: forwarded from the caller.
        unsafe { self.frame_from_buffer_meta(buffer, head, len, Meta::default()) }
    }

    /// [`FramePool::frame_from_buffer`] with the frame's metadata, so that a receive path
    /// builds the whole token in one expression.
    ///
    /// # Safety
    /// As for [`FramePool::frame_from_buffer`].
    #[inline(always)]
    pub(crate) unsafe fn frame_from_buffer_meta(
        &self,
        buffer: NonNull<u8>,
        head: u16,
        len: u16,
        meta: Meta,
    ) -> Frame {
        debug_assert!(self.source.is_some());
        debug_assert!(head as usize + len as usize <= self.frame_size as usize);
        Frame {
            base: buffer,
            index: SOURCE_INDEX,
            pool: self.id,
            capacity: self.frame_size,
            head,
            len,
            meta,
        }
    }

    /// True when `other` hands out the same memory as this pool: both front one
    /// [`FrameSource`] (two DPDK ports on one mempool). A frame of one can then become a
    /// frame of the other without a copy ([`Cache::adopt`]).
    pub fn shares_memory(&self, other: &FramePool) -> bool {
        match (&self.source, &other.source) {
            (Some(a), Some(b)) => std::ptr::addr_eq(Arc::as_ptr(a), Arc::as_ptr(b)),
            _ => false,
        }
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

    /// Frames on the shared free list (frames held in caches count as in use here). For a
    /// source pool: the source's free buffers, which other pools sharing it also draw on.
    pub fn available(&self) -> u32 {
        match &self.source {
            Some(s) => s.available(),
            None => self.free.len() as u32,
        }
    }

    /// Pages backing the pool.
    pub fn backing(&self) -> Backing {
        match (&self.memory, &self.source) {
            (Memory::Owned(r), _) => r.backing(),
            (Memory::External { backing, .. }, _) => *backing,
            (Memory::Source, Some(s)) => s.backing(),
            (Memory::Source, None) => Backing::Normal,
        }
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
            source: None,
            outstanding: AtomicI64::new(0),
        }))
    }

    /// Base address of the pool's memory (frame `i` starts at `base + i * frame_size`); null
    /// for a source pool, whose buffers need not be contiguous.
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
        if let Some(src) = &self.source {
            return self.alloc_from(src.as_ref());
        }
        self.free.pop().map(|i| self.frame(i))
    }

    fn alloc_from(&self, src: &dyn FrameSource) -> Option<Frame> {
        let mut one = Vec::with_capacity(1);
        if src.alloc_bulk(&mut one, 1) == 0 {
            return None;
        }
        self.outstanding.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the source just handed this buffer over; its headroom lies inside it.
        Some(unsafe { self.frame_from_buffer(one[0], src.headroom(), 0) })
    }

    /// Returns a frame to the free list.
    ///
    /// # Panics
    /// If the frame belongs to another pool: that is a bug in the caller, and silently
    /// accepting it would corrupt both pools.
    #[inline]
    pub fn free(&self, frame: Frame) {
        assert_eq!(frame.pool, self.id, "frame freed to the wrong pool");
        if let Some(src) = &self.source {
            // SAFETY: the token proves exclusive ownership of a buffer of this source (only
            // `frame_from_buffer` and `alloc` make source-pool tokens).
            unsafe { src.free_bulk(&[frame.base]) };
            self.outstanding.fetch_sub(1, Ordering::Relaxed);
            return;
        }
        // Cannot fail: there are never more than `count` indices in circulation.
        let _ = self.free.push(frame.index);
    }

    /// Checks that every frame is back on the free list (for a source pool: that every
    /// frame this pool handed out has been given back, as published by its owners).
    pub fn verify(&self) -> Result<(), LeakError> {
        if self.source.is_some() {
            let out = self.outstanding();
            return if out == 0 {
                Ok(())
            } else {
                Err(LeakError {
                    pool: self.id,
                    name: self.name.clone(),
                    total: self.count,
                    free: self.available(),
                    missing: out.clamp(i64::from(u32::MIN), i64::from(u32::MAX)) as u32,
                })
            };
        }
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
        if let Some(src) = self.source.take() {
            let out = self.outstanding();
            if out != 0 {
                // Frames may still point into the source: keep it alive for good.
                tracing::error!(
                    "{} ({}): {out} frames still out of the source at drop; leaving it allocated",
                    self.id,
                    self.name
                );
                std::mem::forget(src);
            }
            return;
        }
        if self.free.len() as u32 == self.count {
            // SAFETY: every frame is back on the free list, so no Frame points into the
            // memory any more and it can be released; `memory` is not used after this.
            unsafe {
                match &mut self.memory {
                    Memory::Owned(r) => std::mem::ManuallyDrop::drop(r),
                    Memory::External { owner, .. } => std::mem::ManuallyDrop::drop(owner),
                    Memory::Source => {}
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
    /// For a source pool: its stash of buffers (`stash` is then unused).
    ext: Option<Box<SourceStash>>,
}

/// A cache's stash in front of a [`FrameSource`].
struct SourceStash {
    source: Arc<dyn FrameSource>,
    buffers: Vec<NonNull<u8>>,
    /// Frames handed out minus frames taken back since the last flush.
    delta: i64,
}

impl fmt::Debug for Cache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cache")
            .field("pool", &self.pool.id)
            .field(
                "stash",
                &self
                    .ext
                    .as_ref()
                    .map_or(self.stash.len(), |x| x.buffers.len()),
            )
            .finish()
    }
}

// SAFETY: the stashed buffers are free buffers owned by this cache alone (like the stashed
// indices); the source is Send + Sync.
unsafe impl Send for SourceStash {}

impl Cache {
    /// A cache that moves `burst` frames at a time to and from the shared list.
    pub fn new(pool: Arc<FramePool>, burst: usize) -> Cache {
        let burst = burst.max(1);
        let ext = pool.source.clone().map(|source| {
            Box::new(SourceStash {
                source,
                buffers: Vec::with_capacity(burst * 2),
                delta: 0,
            })
        });
        Cache {
            stash: Vec::with_capacity(if ext.is_some() { 0 } else { burst * 2 }),
            pool,
            burst,
            ext,
        }
    }

    /// The pool behind the cache.
    pub fn pool(&self) -> &Arc<FramePool> {
        &self.pool
    }

    /// Takes a frame; `None` when both the cache and the pool are empty.
    #[inline]
    pub fn alloc(&mut self) -> Option<Frame> {
        if let Some(x) = self.ext.as_deref_mut() {
            return x.alloc(&self.pool, self.burst);
        }
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
        if let Some(x) = self.ext.as_deref_mut() {
            x.free(frame, self.burst);
            return;
        }
        if self.stash.len() == self.stash.capacity() {
            self.spill(self.burst);
        }
        self.stash.push(frame.index);
    }

    fn spill(&mut self, n: usize) {
        if let Some(x) = self.ext.as_deref_mut() {
            x.spill(n);
            return;
        }
        for _ in 0..n.min(self.stash.len()) {
            if let Some(i) = self.stash.pop() {
                let _ = self.pool.free.push(i);
            }
        }
    }

    /// Makes `frame`, a frame of `from`'s pool, a frame of this cache's pool without
    /// copying it, when both pools share their memory ([`FramePool::shares_memory`]); hands
    /// it back unchanged otherwise. Each cache's local count moves with the frame, so both
    /// pools' accounting stays exact.
    #[inline]
    pub fn adopt(&mut self, frame: Frame, from: &mut Cache) -> Result<Frame, Frame> {
        if frame.pool != from.pool.id || !self.pool.shares_memory(&from.pool) {
            return Err(frame);
        }
        match (self.ext.as_deref_mut(), from.ext.as_deref_mut()) {
            (Some(to), Some(src)) => {
                src.delta -= 1;
                to.delta += 1;
                let mut f = frame;
                f.pool = self.pool.id;
                // Same source, so the same buffer size.
                f.capacity = self.pool.frame_size;
                Ok(f)
            }
            _ => Err(frame),
        }
    }

    /// [`Cache::adopt`] for a whole burst: every frame of `frames` must be a frame of
    /// `from`'s pool. False (and nothing changed) when the pools do not share their memory.
    #[inline]
    pub fn adopt_all(&mut self, frames: &mut [Frame], from: &mut Cache) -> bool {
        if !self.pool.shares_memory(&from.pool) {
            return false;
        }
        let (Some(to), Some(src)) = (self.ext.as_deref_mut(), from.ext.as_deref_mut()) else {
            return false;
        };
        let (id, capacity) = (self.pool.id, self.pool.frame_size);
        for f in frames.iter_mut() {
            assert_eq!(f.pool, from.pool.id, "frame of another pool");
            f.pool = id;
            f.capacity = capacity;
        }
        src.delta -= frames.len() as i64;
        to.delta += frames.len() as i64;
        true
    }

    /// Returns every cached frame to the pool (and, for a source pool, publishes this
    /// cache's frame count to the pool's accounting).
    pub fn flush(&mut self) {
        if let Some(x) = self.ext.as_deref_mut() {
            x.spill(x.buffers.len());
            self.pool.add_outstanding(std::mem::take(&mut x.delta));
            return;
        }
        self.spill(self.stash.len());
    }
}

impl SourceStash {
    #[inline]
    fn alloc(&mut self, pool: &FramePool, burst: usize) -> Option<Frame> {
        if self.buffers.is_empty() && self.source.alloc_bulk(&mut self.buffers, burst) == 0 {
            // Bulk sources give all or nothing: the pool may still have a few.
            self.source.alloc_bulk(&mut self.buffers, 1);
        }
        let b = self.buffers.pop()?;
        self.delta += 1;
        // SAFETY: a stashed buffer is a free buffer of this source owned by the cache; the
        // source's headroom lies inside it.
        Some(unsafe { pool.frame_from_buffer(b, self.source.headroom(), 0) })
    }

    #[inline]
    fn free(&mut self, frame: Frame, burst: usize) {
        if self.buffers.len() == self.buffers.capacity() {
            self.spill(burst);
        }
        self.delta -= 1;
        self.buffers.push(frame.base);
    }

    fn spill(&mut self, n: usize) {
        let n = n.min(self.buffers.len());
        if n == 0 {
            return;
        }
        let from = self.buffers.len() - n;
        // SAFETY: stashed buffers are free buffers of this source owned by the cache alone;
        // they leave the stash right after.
        unsafe { self.source.free_bulk(&self.buffers[from..]) };
        self.buffers.truncate(from);
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

    /// A heap-backed stand-in for a DPDK mempool: `n` boxed buffers on a locked free list,
    /// all-or-nothing bulk allocation.
    #[derive(Debug)]
    struct FakeSource {
        buffers: Vec<Box<[u8]>>,
        free: std::sync::Mutex<Vec<NonNull<u8>>>,
    }

    // SAFETY: buffers are handed out at most once (free list under a lock) and live as long
    // as the source.
    unsafe impl FrameSource for FakeSource {
        fn frame_size(&self) -> u16 {
            1024
        }
        fn headroom(&self) -> u16 {
            128
        }
        fn total(&self) -> u32 {
            self.buffers.len() as u32
        }
        fn available(&self) -> u32 {
            self.free.lock().unwrap().len() as u32
        }
        fn backing(&self) -> Backing {
            Backing::Normal
        }
        fn alloc_bulk(&self, out: &mut Vec<NonNull<u8>>, n: usize) -> usize {
            let mut free = self.free.lock().unwrap();
            if free.len() < n {
                return 0;
            }
            let at = free.len() - n;
            out.extend(free.drain(at..));
            n
        }
        unsafe fn free_bulk(&self, buffers: &[NonNull<u8>]) {
            let mut free = self.free.lock().unwrap();
            for b in buffers {
                assert!(!free.contains(b), "double free");
                free.push(*b);
            }
        }
    }

    // SAFETY: see FakeSource (Send + Sync are needed by FrameSource).
    unsafe impl Send for FakeSource {}
    // SAFETY: the free list is behind a mutex.
    unsafe impl Sync for FakeSource {}

    fn fake(n: usize) -> Arc<FakeSource> {
        let mut buffers: Vec<Box<[u8]>> =
            (0..n).map(|_| vec![0u8; 1024].into_boxed_slice()).collect();
        let free = buffers
            .iter_mut()
            .map(|b| NonNull::new(b.as_mut_ptr()).unwrap())
            .collect();
        Arc::new(FakeSource {
            buffers,
            free: std::sync::Mutex::new(free),
        })
    }

    #[test]
    fn source_pool_delegates_and_accounts() {
        let src = fake(8);
        let p = FramePool::from_source(PoolId(3), "src", src.clone()).unwrap();
        assert_eq!(p.total(), 8);
        assert_eq!(p.frame_size(), 1024);
        assert!(p.base().is_null());
        let mut frames: Vec<Frame> = (0..8).map(|_| p.alloc().unwrap()).collect();
        assert!(p.alloc().is_none());
        assert_eq!(src.available(), 0);
        assert_eq!(frames[0].index(), SOURCE_INDEX);
        assert_eq!(frames[0].headroom(), 128);
        assert!(frames[0].try_fill(b"hello"));
        assert_eq!(frames[0].data(), b"hello");
        assert!(!frames[1].try_fill(&[0u8; 1024]));
        let err = p.verify().unwrap_err();
        assert_eq!(err.missing, 8);
        for f in frames.drain(..) {
            p.free(f);
        }
        p.verify().unwrap();
        assert_eq!(src.available(), 8);
    }

    #[test]
    fn source_cache_spills_in_bursts_and_publishes_on_flush() {
        let src = fake(32);
        let p = FramePool::from_source(PoolId(0), "src", src.clone()).unwrap();
        let mut c = Cache::new(p.clone(), 4);
        let f = c.alloc().unwrap();
        // One burst came from the source; the cache keeps the rest.
        assert_eq!(src.available(), 28);
        c.free(f);
        assert_eq!(src.available(), 28);
        let frames: Vec<Frame> = (0..32).map(|_| c.alloc().unwrap()).collect();
        assert!(c.alloc().is_none());
        // Not published yet: the pool only learns at a flush.
        assert_eq!(p.outstanding(), 0);
        c.flush();
        assert_eq!(p.outstanding(), 32);
        for f in frames {
            c.free(f);
        }
        assert!(src.available() >= 24);
        drop(c);
        assert_eq!(src.available(), 32);
        p.verify().unwrap();
    }

    #[test]
    fn source_frames_cross_a_device_with_exact_accounting() {
        let src = fake(4);
        let p = FramePool::from_source(PoolId(0), "src", src.clone()).unwrap();
        let mut f = p.alloc().unwrap();
        assert!(f.try_fill(&[7; 60]));
        let (buf, head, len) = f.into_buffer();
        // The "device" owns it now: the pool counts it as given back.
        p.add_outstanding(-1);
        p.verify().unwrap();
        // SAFETY: the buffer came back from the "device" and nobody else holds it.
        let g = unsafe { p.frame_from_buffer(buf, head, len) };
        p.add_outstanding(1);
        assert_eq!(g.data(), &[7; 60]);
        assert!(p.verify().is_err());
        p.free(g);
        p.verify().unwrap();
        assert_eq!(src.available(), 4);
    }

    #[test]
    fn pools_over_one_source_pass_frames_without_a_copy_and_keep_exact_accounts() {
        let src = fake(16);
        let a = FramePool::from_source(PoolId(0), "a", src.clone()).unwrap();
        let b = FramePool::from_source(PoolId(1), "b", src.clone()).unwrap();
        let other = FramePool::from_source(PoolId(2), "c", fake(4)).unwrap();
        assert!(a.shares_memory(&b) && !a.shares_memory(&other) && !a.shares_memory(&pool(1)));
        let (mut ca, mut cb, mut cc) = (
            Cache::new(a.clone(), 4),
            Cache::new(b.clone(), 4),
            Cache::new(other.clone(), 4),
        );
        let mut f = ca.alloc().unwrap();
        assert!(f.try_fill(b"moved"));
        let before = f.buffer();
        let g = cb.adopt(f, &mut ca).unwrap();
        assert_eq!(
            (g.pool(), g.buffer(), g.data()),
            (PoolId(1), before, &b"moved"[..])
        );
        // Not a frame of `cc`'s memory: handed back untouched.
        let g = cc.adopt(g, &mut cb).unwrap_err();
        let mut burst: Vec<Frame> = (0..3).map(|_| ca.alloc().unwrap()).collect();
        assert!(cb.adopt_all(&mut burst, &mut ca));
        assert!(!cc.adopt_all(&mut burst, &mut cb));
        assert!(burst.iter().all(|f| f.pool() == PoolId(1)));
        cb.free(g);
        for f in burst {
            cb.free(f);
        }
        drop((ca, cb, cc));
        a.verify().unwrap();
        b.verify().unwrap();
        other.verify().unwrap();
        assert_eq!(src.available(), 16);
    }

    #[test]
    #[should_panic(expected = "wrong pool")]
    fn source_frames_are_refused_by_another_pool() {
        let a = FramePool::from_source(PoolId(0), "a", fake(1)).unwrap();
        let b = FramePool::from_source(PoolId(1), "b", fake(1)).unwrap();
        let f = a.alloc().unwrap();
        b.free(f);
    }
}
