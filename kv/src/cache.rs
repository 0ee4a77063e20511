//! The whole cache: its partitions, who owns which, and the little state they share.
//!
//! A [`Store`] is shared (`Arc`) by the handler instances of every worker and outlives
//! chain swaps (see `spec`), so a live settings change keeps the items. Partition `i` is
//! owned by worker `owners[i]`; a key belongs to partition `partition_of(hash(key), n)`.
//! What crosses cores is only what cannot belong to one partition, and it is all plain
//! atomics read at burst boundaries:
//!
//! - `flush_seq` / `flush_at`: `flush_all` (from any core, or the control plane) bumps the
//!   sequence; each owner applies it before its next burst (an immediate flush empties the
//!   partition, a delayed one is remembered and applied when its time comes). A flush on
//!   the core that received it also applies to that core's own partition at once, so a
//!   command after `flush_all` in the same datagram sees the empty cache.
//! - `budget`: the byte budget over all partitions; each owner moves its own share towards
//!   it (`Partition::maintain`).
//! - per-worker counters ([`Counters`]), single writer each.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crossbeam_utils::CachePadded;
use dataplane::mem::{Options as MemOptions, RegionError};
use dataplane::WorkerId;

use crate::stats::{self, Counters};
use crate::store::{Cell, Geometry, Partition};

/// Worker ids a store keeps counters for (and may give partitions to).
pub const MAX_WORKERS: usize = 64;

/// Settings a store is made with (and must match for a chain update to keep it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shape {
    /// Partition owners, by worker id; partition `i` belongs to `owners[i]`.
    pub owners: Vec<u16>,
    /// Log bytes mapped per partition.
    pub capacity: u64,
    /// Largest item, bytes (memcached -I).
    pub item_max: usize,
    pub hugepages: bool,
}

/// The cache shared by every worker's handler instance.
pub struct Store {
    shape: Shape,
    geo: Geometry,
    /// Worker id -> partition index + 1 (0: none).
    part_of_worker: [u8; MAX_WORKERS],
    cells: Vec<Cell>,
    counters: Vec<CachePadded<Counters>>,
    /// `stats reset` baselines, per counter name.
    baseline: Vec<AtomicU64>,
    flush_seq: AtomicU64,
    flush_at: AtomicU32,
    /// Last control-plane flush generation applied (`flush` setting).
    pub(crate) flush_gen: AtomicU64,
    /// Byte budget over all partitions.
    budget: AtomicU64,
    started: Instant,
    started_unix: u64,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("shape", &self.shape)
            .field("budget", &self.budget.load(Ordering::Relaxed))
            .finish()
    }
}

/// Now, in Unix seconds (memcached's clock resolution).
pub fn unix_now() -> u32 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as u32)
}

impl Store {
    /// Maps every partition. `budget` is the byte budget over all partitions.
    pub fn new(shape: Shape, budget: u64, flush_gen: u64) -> Result<Store, RegionError> {
        let n = shape.owners.len().max(1);
        let geo = Geometry::for_capacity(shape.capacity);
        let mut part_of_worker = [0u8; MAX_WORKERS];
        let mut cells = Vec::with_capacity(n);
        for (i, &w) in shape.owners.iter().enumerate() {
            if let Some(slot) = part_of_worker.get_mut(usize::from(w)) {
                *slot = i as u8 + 1;
            }
            let p = Partition::new(
                geo,
                budget / n as u64,
                i,
                n,
                shape.item_max,
                MemOptions {
                    hugepages: shape.hugepages,
                    numa_node: None,
                },
            )?;
            cells.push(Cell::new(p));
        }
        let store = Store {
            geo,
            part_of_worker,
            cells,
            counters: (0..MAX_WORKERS).map(|_| CachePadded::default()).collect(),
            baseline: Counters::NAMES.iter().map(|_| AtomicU64::new(0)).collect(),
            flush_seq: AtomicU64::new(0),
            flush_at: AtomicU32::new(0),
            flush_gen: AtomicU64::new(flush_gen),
            budget: AtomicU64::new(budget),
            started: Instant::now(),
            started_unix: u64::from(unix_now()),
            shape,
        };
        for (i, &w) in store.shape.owners.iter().enumerate() {
            if let Some(c) = store.counters.get(usize::from(w)) {
                c.budget.set(store.partition_budget(i));
            }
        }
        Ok(store)
    }

    pub fn shape(&self) -> &Shape {
        &self.shape
    }

    pub fn geometry(&self) -> Geometry {
        self.geo
    }

    /// Number of partitions.
    pub fn partitions(&self) -> usize {
        self.cells.len()
    }

    /// The partition `w` owns, if any.
    #[inline]
    pub fn partition_of_worker(&self, w: WorkerId) -> Option<usize> {
        match self.part_of_worker.get(usize::from(w.0)) {
            Some(&p) if p > 0 => Some(usize::from(p - 1)),
            _ => None,
        }
    }

    /// The worker that owns partition `p`.
    #[inline]
    pub fn owner(&self, p: usize) -> WorkerId {
        WorkerId(self.shape.owners.get(p).copied().unwrap_or(0))
    }

    /// Partition `p`'s cell.
    pub fn cell(&self, p: usize) -> Option<&Cell> {
        self.cells.get(p)
    }

    /// Worker `w`'s counters (a spare block for ids beyond [`MAX_WORKERS`], which then
    /// share it: counts from such workers are approximate).
    #[inline]
    pub fn counters(&self, w: WorkerId) -> &Counters {
        let i = usize::from(w.0).min(MAX_WORKERS - 1);
        &self.counters[i]
    }

    /// Byte budget over all partitions.
    pub fn budget(&self) -> u64 {
        self.budget.load(Ordering::Relaxed)
    }

    /// Sets the budget over all partitions; owners apply it from their next burst.
    pub fn set_budget(&self, bytes: u64) {
        self.budget.store(bytes, Ordering::Relaxed);
    }

    fn partition_budget(&self, _p: usize) -> u64 {
        (self.budget() / self.cells.len().max(1) as u64).min(self.geo.capacity)
    }

    /// `flush_all`: at once (`at == 0` or past) or at Unix time `at`.
    pub fn request_flush(&self, at: u32) {
        self.flush_at.store(at, Ordering::Release);
        self.flush_seq.fetch_add(1, Ordering::AcqRel);
    }

    /// Start-of-burst upkeep of partition `p` by its owner: pending flushes, budget moves,
    /// gauges.
    pub fn upkeep(&self, p: usize, part: &mut Partition, now: u32, c: &Counters) {
        let seq = self.flush_seq.load(Ordering::Acquire);
        if seq != part.flush_seen {
            part.flush_seen = seq;
            let at = self.flush_at.load(Ordering::Acquire);
            if at == 0 || at <= now {
                part.flush();
                part.flush_pending = 0;
            } else {
                part.flush_pending = at;
            }
        }
        if part.flush_pending != 0 && part.flush_pending <= now {
            part.flush();
            part.flush_pending = 0;
        }
        let b = self.partition_budget(p);
        if b != part.budget() {
            part.set_budget(b);
            c.budget.set(part.budget());
        }
        part.maintain(now, c);
        c.items.set(part.items());
        c.bytes.set(part.bytes());
    }

    /// Seconds since the store was made (memcached's `uptime`).
    pub fn uptime(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    /// Unix time the store was made.
    pub fn started_unix(&self) -> u64 {
        self.started_unix
    }

    /// Per-worker counters of every worker that has a partition or counted anything.
    pub fn rows(&self) -> Vec<(WorkerId, Vec<u64>)> {
        (0..MAX_WORKERS)
            .filter_map(|w| {
                let id = WorkerId(w as u16);
                let v = self.counters[w].values();
                let owns = self.partition_of_worker(id).is_some();
                (owns || v.iter().any(|&x| x != 0)).then_some((id, v))
            })
            .collect()
    }

    /// Counter totals over all workers, minus the `stats reset` baseline (gauges are not
    /// reset), in [`Counters::NAMES`] order.
    pub fn totals(&self) -> Vec<u64> {
        let mut t = vec![0u64; Counters::NAMES.len()];
        for c in &self.counters {
            for (a, v) in t.iter_mut().zip(c.values()) {
                *a = a.wrapping_add(v);
            }
        }
        for (i, a) in t.iter_mut().enumerate() {
            if !stats::is_gauge(Counters::NAMES[i]) {
                *a = a.wrapping_sub(self.baseline[i].load(Ordering::Relaxed));
            }
        }
        t
    }

    /// `stats reset`: the current totals become the baseline.
    pub fn reset_stats(&self) {
        let mut raw = vec![0u64; Counters::NAMES.len()];
        for c in &self.counters {
            for (a, v) in raw.iter_mut().zip(c.values()) {
                *a = a.wrapping_add(v);
            }
        }
        for (b, v) in self.baseline.iter().zip(raw) {
            b.store(v, Ordering::Relaxed);
        }
    }
}
