//! Counters and latency histograms, written by one owner and read by anyone.
//!
//! Every counter block is cache-line padded and written by exactly one thread (the worker
//! that owns it, or the worker that currently owns a port queue), with relaxed load+store
//! instead of `fetch_add` (no locked instruction on the hot path). Readers sum the blocks
//! into plain snapshots at any time without stopping anybody.
//!
//! Latency (per-burst handler time, of a fixed sample of the bursts: see `worker`) goes
//! into a worker-local `hdrhistogram::Histogram`.
//! Publishing it to readers must not allocate or lock, so three preallocated histograms
//! circulate between two lock-free queues: the worker copies its histogram into a spare one
//! and posts it; a reader takes the posted one, reads it and gives it back as a spare.

use std::sync::atomic::{AtomicU64, Ordering};

use crossbeam_queue::ArrayQueue;
use crossbeam_utils::CachePadded;
use hdrhistogram::Histogram;
use serde::Serialize;

use crate::pipeline::DropReason;

/// A counter with a single writer.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds `n`. Only the owner may call this (load + store is not atomic as a whole).
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.store(
            self.0.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }

    /// Current value.
    #[inline]
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Drop counters, one per [`DropReason`].
#[derive(Debug, Default)]
pub struct Drops([Counter; DropReason::COUNT]);

impl Drops {
    #[inline]
    pub fn add(&self, reason: DropReason, n: u64) {
        self.0[reason.index()].add(n);
    }

    pub fn get(&self, reason: DropReason) -> u64 {
        self.0[reason.index()].get()
    }

    /// Snapshot as a plain array indexed by [`DropReason::index`].
    pub fn snapshot(&self) -> DropCounts {
        let mut out = DropCounts::default();
        for r in DropReason::ALL {
            out.0[r.index()] = self.get(r);
        }
        out
    }
}

/// A snapshot of drop counters.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DropCounts(pub [u64; DropReason::COUNT]);

impl DropCounts {
    pub fn get(&self, r: DropReason) -> u64 {
        self.0[r.index()]
    }
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }
    pub fn add(&mut self, other: &DropCounts) {
        for (a, b) in self.0.iter_mut().zip(other.0.iter()) {
            *a += b;
        }
    }
    /// Non-zero reasons with their counts.
    pub fn nonzero(&self) -> impl Iterator<Item = (DropReason, u64)> + '_ {
        DropReason::ALL
            .into_iter()
            .map(|r| (r, self.get(r)))
            .filter(|(_, n)| *n > 0)
    }
}

impl Serialize for DropCounts {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(None)?;
        for (r, n) in self.nonzero() {
            m.serialize_entry(r.as_str(), &n)?;
        }
        m.end()
    }
}

/// Counters of one port queue, written by the worker that owns the queue.
#[derive(Debug, Default)]
pub struct QueueCounters {
    /// Frames the port received on this queue, including those it dropped itself.
    pub rx_packets: Counter,
    pub rx_bytes: Counter,
    /// Frames handed to the wire (or the output file).
    pub tx_packets: Counter,
    pub tx_bytes: Counter,
    /// Drops inside the port (for example frames larger than the frame size).
    pub drops: Drops,
}

/// Snapshot of [`QueueCounters`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct QueueSnapshot {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub drops: DropCounts,
}

impl QueueCounters {
    pub fn snapshot(&self) -> QueueSnapshot {
        QueueSnapshot {
            rx_packets: self.rx_packets.get(),
            rx_bytes: self.rx_bytes.get(),
            tx_packets: self.tx_packets.get(),
            tx_bytes: self.tx_bytes.get(),
            drops: self.drops.snapshot(),
        }
    }
}

impl QueueSnapshot {
    pub fn add(&mut self, o: &QueueSnapshot) {
        self.rx_packets += o.rx_packets;
        self.rx_bytes += o.rx_bytes;
        self.tx_packets += o.tx_packets;
        self.tx_bytes += o.tx_bytes;
        self.drops.add(&o.drops);
    }
}

/// Counters of one worker, written only by that worker's thread.
#[derive(Debug, Default)]
pub struct WorkerCounters {
    /// Frames taken from port queues.
    pub rx_packets: Counter,
    pub rx_bytes: Counter,
    /// Frames given to port queues for transmission.
    pub tx_packets: Counter,
    pub tx_bytes: Counter,
    /// Frames pushed to other workers' rings.
    pub ring_out: Counter,
    /// Frames taken from this worker's ring.
    pub ring_in: Counter,
    /// Frames given to the slow path.
    pub slow_path: Counter,
    /// Frames copied into another port's memory on transmit.
    pub copies: Counter,
    /// Frames handlers added to answers that take several packets (`pipeline::Emit`).
    pub generated: Counter,
    /// Loop iterations that found work / found none.
    pub busy_polls: Counter,
    pub idle_polls: Counter,
    pub drops: Drops,
}

/// Snapshot of [`WorkerCounters`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct WorkerSnapshot {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub ring_out: u64,
    pub ring_in: u64,
    pub slow_path: u64,
    pub copies: u64,
    pub generated: u64,
    pub busy_polls: u64,
    pub idle_polls: u64,
    pub drops: DropCounts,
}

impl WorkerCounters {
    pub fn snapshot(&self) -> WorkerSnapshot {
        WorkerSnapshot {
            rx_packets: self.rx_packets.get(),
            rx_bytes: self.rx_bytes.get(),
            tx_packets: self.tx_packets.get(),
            tx_bytes: self.tx_bytes.get(),
            ring_out: self.ring_out.get(),
            ring_in: self.ring_in.get(),
            slow_path: self.slow_path.get(),
            copies: self.copies.get(),
            generated: self.generated.get(),
            busy_polls: self.busy_polls.get(),
            idle_polls: self.idle_polls.get(),
            drops: self.drops.snapshot(),
        }
    }
}

impl WorkerSnapshot {
    pub fn add(&mut self, o: &WorkerSnapshot) {
        self.rx_packets += o.rx_packets;
        self.rx_bytes += o.rx_bytes;
        self.tx_packets += o.tx_packets;
        self.tx_bytes += o.tx_bytes;
        self.ring_out += o.ring_out;
        self.ring_in += o.ring_in;
        self.slow_path += o.slow_path;
        self.copies += o.copies;
        self.generated += o.generated;
        self.busy_polls += o.busy_polls;
        self.idle_polls += o.idle_polls;
        self.drops.add(&o.drops);
    }
}

/// Padded counter block, so two owners never share a cache line.
pub type Padded<T> = CachePadded<T>;

/// Latency range the histograms cover: 1 ns to 10 s, 3 significant digits.
const LATENCY_MAX_NS: u64 = 10_000_000_000;

/// A new, empty latency histogram with the engine's fixed bounds.
pub fn new_histogram() -> Histogram<u64> {
    // Cannot fail: the bounds are valid constants.
    Histogram::new_with_bounds(1, LATENCY_MAX_NS, 3).expect("valid histogram bounds")
}

/// Latency percentiles in nanoseconds.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Percentiles {
        if h.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            count: h.len(),
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }
}

/// Hands a worker's histogram to readers without locks or allocation on the worker side.
#[derive(Debug)]
pub struct LatencyMailbox {
    posted: ArrayQueue<Box<Histogram<u64>>>,
    spare: ArrayQueue<Box<Histogram<u64>>>,
}

impl Default for LatencyMailbox {
    fn default() -> Self {
        let m = LatencyMailbox {
            posted: ArrayQueue::new(1),
            spare: ArrayQueue::new(2),
        };
        let _ = m.spare.push(Box::new(new_histogram()));
        let _ = m.spare.push(Box::new(new_histogram()));
        m
    }
}

impl LatencyMailbox {
    /// Worker side: publishes a copy of `h`. Skips (returns false) if no spare buffer is
    /// free because a reader holds it; the next post catches up.
    pub fn post(&self, h: &Histogram<u64>) -> bool {
        let Some(mut buf) = self.spare.pop() else {
            return false;
        };
        buf.reset();
        // Same bounds on both sides, so `add` never resizes (no allocation).
        let _ = buf.add(h);
        if let Some(old) = self.posted.force_push(buf) {
            let _ = self.spare.push(old);
        }
        true
    }

    /// Reader side: a copy of the latest posted histogram (empty if none yet).
    pub fn read(&self) -> Histogram<u64> {
        let mut out = new_histogram();
        if let Some(buf) = self.posted.pop() {
            let _ = out.add(&*buf);
            // Put it back so that the next reader sees it too, unless a newer one arrived.
            if let Err(buf) = self.posted.push(buf) {
                let _ = self.spare.push(buf);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_add_and_snapshot() {
        let w = WorkerCounters::default();
        w.rx_packets.add(3);
        w.drops.add(DropReason::Runt, 2);
        let s = w.snapshot();
        assert_eq!(s.rx_packets, 3);
        assert_eq!(s.drops.get(DropReason::Runt), 2);
        assert_eq!(s.drops.total(), 2);
        let mut t = WorkerSnapshot::default();
        t.add(&s);
        t.add(&s);
        assert_eq!(t.rx_packets, 6);
        assert_eq!(t.drops.get(DropReason::Runt), 4);
    }

    #[test]
    fn mailbox_posts_and_reads_repeatedly() {
        let m = LatencyMailbox::default();
        assert!(m.read().is_empty());
        let mut h = new_histogram();
        h.record(100).unwrap();
        assert!(m.post(&h));
        assert_eq!(m.read().len(), 1);
        assert_eq!(
            m.read().len(),
            1,
            "a read leaves the snapshot for the next reader"
        );
        h.record(200).unwrap();
        for _ in 0..10 {
            assert!(m.post(&h));
        }
        let r = m.read();
        assert_eq!(r.len(), 2);
        assert_eq!(Percentiles::of(&r).max, r.max());
    }

    #[test]
    fn mailbox_is_safe_across_threads() {
        let m = std::sync::Arc::new(LatencyMailbox::default());
        let w = {
            let m = m.clone();
            std::thread::spawn(move || {
                let mut h = new_histogram();
                for i in 1..=2000u64 {
                    h.record(i).unwrap();
                    m.post(&h);
                }
            })
        };
        let mut last = 0;
        for _ in 0..2000 {
            let n = m.read().len();
            assert!(n >= last, "snapshots never go backwards");
            last = n;
        }
        w.join().unwrap();
        assert!(m.post(&{
            let mut h = new_histogram();
            h.record(1).unwrap();
            h
        }));
    }
}
