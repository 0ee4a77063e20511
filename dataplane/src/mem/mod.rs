//! Frame memory: hugepage-backed regions carved into fixed-size frames.
//!
//! A port owns one [`FramePool`] over one [`Region`]. Frames are addressed by index (their
//! offset is `index * frame_size`), recycled through a lock-free free list without
//! allocation, and handed around as move-only [`Frame`] tokens, so the type system enforces
//! "one owner per frame" and a frame can be neither double-freed nor used after release.
//! Accounting (free + in use == total) is checked when a port shuts down.

mod pool;
mod region;

pub use pool::{
    Cache, Frame, FramePool, FrameSource, LeakError, PoolError, PoolId, HEADROOM, SOURCE_INDEX,
};
pub use region::{Backing, Options, Region, RegionError, HUGE_PAGE};
