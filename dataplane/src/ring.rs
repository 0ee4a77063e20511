//! Burst rings of frames between workers, over `crossbeam_queue::ArrayQueue`.
//!
//! One ring per worker, fed by any number of other workers (MPSC use of an MPMC queue): the
//! inbox for packets spread by flow hash and for responses that must go out of a TX queue
//! the worker owns. Capacity is fixed at start-up; a push to a full ring hands the frames
//! back, and the caller counts them as `ring_full` drops. `crossbeam-queue` was chosen over
//! a hand-written SPSC ring: it is well kept, lock-free, and the bench (`benches/ring.rs`)
//! shows it within reach of the hand-written alternative at burst sizes we use.

use crossbeam_queue::ArrayQueue;

use crate::batch::Batch;
use crate::mem::Frame;

/// A bounded multi-producer ring of frames with burst operations.
#[derive(Debug)]
pub struct Burst {
    q: ArrayQueue<Frame>,
}

impl Burst {
    /// A ring that holds up to `capacity` frames.
    pub fn new(capacity: usize) -> Burst {
        Burst {
            q: ArrayQueue::new(capacity.max(1)),
        }
    }

    /// Frames waiting.
    pub fn len(&self) -> usize {
        self.q.len()
    }

    /// True when no frame waits.
    pub fn is_empty(&self) -> bool {
        self.q.is_empty()
    }

    /// Capacity.
    pub fn capacity(&self) -> usize {
        self.q.capacity()
    }

    /// Pushes one frame; hands it back when the ring is full.
    #[inline]
    pub fn push(&self, frame: Frame) -> Result<(), Frame> {
        self.q.push(frame)
    }

    /// Pushes every frame of `frames`; frames that do not fit are passed to `rejected`.
    /// Returns how many were pushed.
    #[inline]
    pub fn push_burst(&self, frames: &mut Batch, mut rejected: impl FnMut(Frame)) -> usize {
        let mut pushed = 0;
        for f in frames.drain() {
            match self.q.push(f) {
                Ok(()) => pushed += 1,
                Err(f) => rejected(f),
            }
        }
        pushed
    }

    /// Pops up to `out.remaining()` frames into `out`; returns how many.
    #[inline]
    pub fn pop_burst(&self, out: &mut Batch) -> usize {
        let mut n = 0;
        while !out.is_full() {
            match self.q.pop() {
                Some(f) => {
                    // Cannot fail: checked is_full above.
                    let _ = out.try_push(f);
                    n += 1;
                }
                None => break,
            }
        }
        n
    }

    /// Pops one frame.
    #[inline]
    pub fn pop(&self) -> Option<Frame> {
        self.q.pop()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem::{FramePool, Options, PoolId};

    #[test]
    fn burst_push_pop_keeps_order_and_reports_overflow() {
        let pool = FramePool::new(
            PoolId(0),
            "t",
            16,
            2048,
            Options {
                hugepages: false,
                numa_node: None,
            },
        )
        .unwrap();
        let ring = Burst::new(4);
        let mut b = Batch::with_capacity(8);
        for i in 0..6u8 {
            let mut f = pool.alloc().unwrap();
            assert!(f.try_fill(&[i]));
            b.try_push(f).unwrap();
        }
        let mut rejected = Vec::new();
        assert_eq!(ring.push_burst(&mut b, |f| rejected.push(f)), 4);
        assert!(b.is_empty());
        assert_eq!(
            rejected.iter().map(|f| f.data()[0]).collect::<Vec<_>>(),
            [4, 5]
        );
        let mut out = Batch::with_capacity(3);
        assert_eq!(ring.pop_burst(&mut out), 3);
        assert_eq!(
            out.as_slice()
                .iter()
                .map(|f| f.data()[0])
                .collect::<Vec<_>>(),
            [0, 1, 2]
        );
        assert_eq!(ring.len(), 1);
        for f in out.drain().chain(rejected).chain(ring.pop()) {
            pool.free(f);
        }
        pool.verify().unwrap();
    }
}
