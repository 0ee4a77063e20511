//! A fixed-capacity burst of frames, preallocated once and never grown on the hot path.

use crate::mem::Frame;

/// Up to `capacity` frames, in order. Pushing past the capacity hands the frame back instead
/// of reallocating.
#[derive(Debug)]
pub struct Batch {
    frames: Vec<Frame>,
}

impl Batch {
    /// An empty batch that holds up to `capacity` frames.
    pub fn with_capacity(capacity: usize) -> Batch {
        Batch {
            frames: Vec::with_capacity(capacity.max(1)),
        }
    }

    /// Frames in the batch.
    #[inline]
    pub fn len(&self) -> usize {
        self.frames.len()
    }

    /// True when the batch holds no frame.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Most frames the batch holds.
    #[inline]
    pub fn capacity(&self) -> usize {
        self.frames.capacity()
    }

    /// Room left.
    #[inline]
    pub fn remaining(&self) -> usize {
        self.frames.capacity() - self.frames.len()
    }

    /// True when no more frame fits.
    #[inline]
    pub fn is_full(&self) -> bool {
        self.frames.len() == self.frames.capacity()
    }

    /// Appends a frame, or hands it back when the batch is full.
    #[inline]
    pub fn try_push(&mut self, frame: Frame) -> Result<(), Frame> {
        if self.is_full() {
            return Err(frame);
        }
        self.frames.push(frame);
        Ok(())
    }

    /// Appends every frame of `frames`, which must fit (a receive path that asked for at
    /// most [`Batch::remaining`] frames). One check for the whole burst instead of one per
    /// frame.
    ///
    /// # Panics
    /// If the frames do not fit: handing some back or dropping them would lose frames.
    #[inline]
    pub fn extend_exact<I: ExactSizeIterator<Item = Frame>>(&mut self, frames: I) {
        assert!(
            frames.len() <= self.remaining(),
            "burst larger than the batch"
        );
        self.frames.extend(frames);
    }

    /// The frames.
    #[inline]
    pub fn as_slice(&self) -> &[Frame] {
        &self.frames
    }

    /// The frames, writable.
    #[inline]
    pub fn as_mut_slice(&mut self) -> &mut [Frame] {
        &mut self.frames
    }

    /// Removes and yields every frame, in order.
    #[inline]
    pub fn drain(&mut self) -> std::vec::Drain<'_, Frame> {
        self.frames.drain(..)
    }

    /// Removes and yields the first `n` frames (for ports that accepted only part of a burst).
    #[inline]
    pub fn drain_front(&mut self, n: usize) -> std::vec::Drain<'_, Frame> {
        let n = n.min(self.frames.len());
        self.frames.drain(..n)
    }

    /// Removes the last frame.
    #[inline]
    pub fn pop(&mut self) -> Option<Frame> {
        self.frames.pop()
    }
}
