//! The pinned run-to-completion loop.
//!
//! One thread per configured core, pinned with `core_affinity`, exclusively owning a set of
//! port queues. Each turn of the loop:
//!
//! 1. for every owned queue: housekeeping (`poll`), then a receive burst; every frame is
//!    parsed once (`wire::parse`) and malformed frames are dropped by reason before any
//!    handler sees them;
//! 2. in pipeline mode, valid frames are spread over all workers by flow hash through their
//!    inbound rings; otherwise (run-to-completion) the handler chain runs on the burst here;
//! 3. the worker's own inbound ring is drained: frames marked for transmission go straight
//!    to the owned queue, the others run through the chain;
//! 4. verdicts are carried out in bulk: per-queue transmit batches, per-worker ring batches,
//!    drops counted by reason and freed through a local cache, slow-path hand-off;
//! 5. transmit and ring batches are flushed once; what a full queue or ring refuses is
//!    counted (`tx_full`, `ring_full`) and freed, never lost silently.
//!
//! The stop flag is read once per turn, so a worker always stops at a batch boundary. No
//! locks, no allocation and no syscalls happen in the loop (beyond what a port's I/O model
//! needs, and a sleep in the back-off idle policy).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::batch::Batch;
use crate::config::{Idle, Mode};
use crate::mem::{Cache, Frame};
use crate::packet::{QueueId, WorkerId};
use crate::pipeline::{Context, DropReason, Pipeline, Verdict};
use crate::port::Queue;
use crate::ring::Burst;
use crate::stats::{new_histogram, LatencyMailbox, Padded, WorkerCounters};

/// How often a worker publishes its latency histogram.
const LATENCY_POST_INTERVAL: Duration = Duration::from_millis(20);

/// Which worker transmits on each port queue: `owners[port][queue]`.
#[derive(Debug, Clone, Default)]
pub struct Routes {
    pub owners: Vec<Vec<Option<WorkerId>>>,
}

impl Routes {
    #[inline]
    pub fn owner(&self, q: QueueId) -> Option<WorkerId> {
        self.owners
            .get(q.port.0 as usize)
            .and_then(|p| p.get(q.queue as usize))
            .copied()
            .flatten()
    }
}

/// State shared between a worker thread and the engine.
#[derive(Debug, Default)]
pub struct Shared {
    pub counters: Padded<WorkerCounters>,
    pub latency: LatencyMailbox,
    /// Consecutive loop turns without work, written by the worker (for quiescence checks).
    pub idle_streak: AtomicU64,
}

/// Flags the engine uses to stop workers.
#[derive(Debug, Default)]
pub struct Control {
    /// Stop receiving from ports; keep draining rings.
    pub stop_rx: AtomicBool,
    /// Leave the loop at the next batch boundary.
    pub exit: AtomicBool,
}

/// Everything a worker thread owns.
pub struct Worker {
    pub id: WorkerId,
    pub workers: u16,
    pub mode: Mode,
    pub idle: Idle,
    pub backoff_max: Duration,
    pub burst: usize,
    pub queues: Vec<Box<dyn Queue>>,
    /// Frame caches indexed by pool id (== port index).
    pub caches: Vec<Cache>,
    pub routes: Arc<Routes>,
    /// Inbound ring of every worker, indexed by worker id.
    pub rings: Arc<Vec<Burst>>,
    pub slow_path: Arc<Burst>,
    pub pipeline: Pipeline,
    pub shared: Arc<Shared>,
    pub control: Arc<Control>,
    pub epoch: Instant,
}

/// Per-loop scratch space, allocated once.
struct Scratch {
    rx: Batch,
    work: Batch,
    local: Batch,
    verdicts: Vec<Verdict>,
    sinks: Sinks,
}

/// Outgoing batches: per owned queue, per worker ring, slow path.
struct Sinks {
    /// Ids of the owned queues, parallel to `tx` and `Worker::queues`.
    tx_ids: Vec<QueueId>,
    tx: Vec<Batch>,
    out: Vec<Batch>,
    slow: Batch,
}

impl Worker {
    /// Runs until told to exit. Returns nothing: results are in the shared counters.
    pub fn run(mut self) {
        let burst = self.burst;
        let mut s = Scratch {
            rx: Batch::with_capacity(burst),
            work: Batch::with_capacity(burst),
            local: Batch::with_capacity(burst),
            verdicts: vec![Verdict::Next; burst],
            sinks: Sinks {
                tx_ids: self.queues.iter().map(|q| q.id()).collect(),
                tx: (0..self.queues.len())
                    .map(|_| Batch::with_capacity(burst))
                    .collect(),
                out: (0..self.workers)
                    .map(|_| Batch::with_capacity(burst))
                    .collect(),
                slow: Batch::with_capacity(burst),
            },
        };
        let mut hist = new_histogram();
        let mut last_post = Instant::now();
        let mut idle_streak: u64 = 0;
        loop {
            if self.control.exit.load(Ordering::Acquire) {
                break;
            }
            let receiving = !self.control.stop_rx.load(Ordering::Acquire);
            let mut work = 0;
            for qi in 0..self.queues.len() {
                self.queues[qi].poll();
                if !receiving {
                    continue;
                }
                let n = self.queues[qi].rx_burst(&mut s.rx);
                if n == 0 {
                    continue;
                }
                work += n;
                self.classify(&mut s);
                if self.mode == Mode::Pipeline && self.workers > 1 {
                    self.spread(&mut s);
                    if !s.local.is_empty() {
                        std::mem::swap(&mut s.work, &mut s.local);
                        self.handle(&mut s, &mut hist);
                    }
                } else {
                    self.handle(&mut s, &mut hist);
                }
            }
            let n = self.rings[self.id.0 as usize].pop_burst(&mut s.rx);
            if n > 0 {
                work += n;
                self.shared.counters.ring_in.add(n as u64);
                for f in s.rx.drain() {
                    match f.meta.tx {
                        Some(q) => self.enqueue_tx(q, f, &mut s.sinks),
                        // Cannot fail: rx and work have the same capacity.
                        None => {
                            let _ = s.work.try_push(f);
                        }
                    }
                }
                if !s.work.is_empty() {
                    self.handle(&mut s, &mut hist);
                }
            }
            self.flush(&mut s.sinks);

            let c = &self.shared.counters;
            if work > 0 {
                c.busy_polls.add(1);
                if idle_streak != 0 {
                    idle_streak = 0;
                    self.shared.idle_streak.store(0, Ordering::Release);
                }
                let now = Instant::now();
                if now.duration_since(last_post) >= LATENCY_POST_INTERVAL {
                    self.shared.latency.post(&hist);
                    last_post = now;
                }
            } else {
                c.idle_polls.add(1);
                idle_streak += 1;
                self.shared
                    .idle_streak
                    .store(idle_streak, Ordering::Release);
                self.idle(idle_streak);
            }
        }
        self.shared.latency.post(&hist);
        // Queues and caches are dropped here, at a batch boundary: queue handles give their
        // queues back to the port, caches return their frames to the pools.
    }

    fn idle(&self, streak: u64) {
        match self.idle {
            Idle::BusyPoll => std::hint::spin_loop(),
            Idle::Backoff => {
                if streak < 64 {
                    std::hint::spin_loop();
                } else if streak < 128 {
                    std::thread::yield_now();
                } else {
                    let exp = (streak - 128).min(16) as u32;
                    let us = (1u64 << exp).min(self.backoff_max.as_micros().max(1) as u64);
                    std::thread::sleep(Duration::from_micros(us));
                }
            }
        }
    }

    /// Parses every frame of `s.rx` into `s.work`; drops the malformed ones by reason.
    fn classify(&mut self, s: &mut Scratch) {
        let c = &self.shared.counters;
        let mut bytes = 0;
        let n = s.rx.len() as u64;
        for mut f in s.rx.drain() {
            bytes += f.len() as u64;
            match crate::wire::parse(f.data()) {
                Ok(layout) => {
                    f.meta.hash = crate::wire::flow_hash(f.data(), &layout);
                    f.meta.layout = layout;
                    f.meta.tx = None;
                    // Cannot fail: rx and work have the same capacity.
                    let _ = s.work.try_push(f);
                }
                Err(reason) => {
                    c.drops.add(reason, 1);
                    self.caches[f.pool().0 as usize].free(f);
                }
            }
        }
        c.rx_packets.add(n);
        c.rx_bytes.add(bytes);
    }

    /// Pipeline mode: sends each frame to the worker that owns its flow.
    fn spread(&mut self, s: &mut Scratch) {
        let me = self.id.0 as usize;
        for f in s.work.drain() {
            let target = ((f.meta.hash as u64 * self.workers as u64) >> 32) as usize;
            if target == me {
                let _ = s.local.try_push(f);
            } else {
                push_out(
                    &self.rings,
                    &self.shared.counters,
                    &mut self.caches,
                    &mut s.sinks.out,
                    target,
                    f,
                );
            }
        }
    }

    /// Runs the chain over `s.work` and carries out the verdicts.
    fn handle(&mut self, s: &mut Scratch, hist: &mut Histogram<u64>) {
        let n = s.work.len();
        let verdicts = &mut s.verdicts[..n];
        verdicts.fill(Verdict::Next);
        let start = Instant::now();
        let cx = Context {
            worker: self.id,
            workers: self.workers,
            now_ns: start.duration_since(self.epoch).as_nanos() as u64,
        };
        self.pipeline.run(s.work.as_mut_slice(), verdicts, &cx);
        let ns = start.elapsed().as_nanos() as u64;
        let _ = hist.record(ns.max(1));

        let Scratch {
            work,
            verdicts,
            sinks,
            ..
        } = s;
        for (f, v) in work.drain().zip(verdicts.iter()) {
            self.dispatch(*v, f, sinks);
        }
    }

    #[inline]
    fn dispatch(&mut self, v: Verdict, mut f: Frame, s: &mut Sinks) {
        let c = &self.shared.counters;
        match v {
            Verdict::Tx(q) => self.enqueue_tx(q, f, s),
            Verdict::Forward(w) => {
                if (w.0 as usize) < self.rings.len() {
                    f.meta.tx = None;
                    push_out(
                        &self.rings,
                        c,
                        &mut self.caches,
                        &mut s.out,
                        w.0 as usize,
                        f,
                    );
                } else {
                    c.drops.add(DropReason::NoRoute, 1);
                    self.caches[f.pool().0 as usize].free(f);
                }
            }
            Verdict::Drop(r) => {
                c.drops.add(r, 1);
                self.caches[f.pool().0 as usize].free(f);
            }
            Verdict::SlowPath => {
                if s.slow.is_full() {
                    self.flush_slow(s);
                }
                let _ = s.slow.try_push(f);
            }
            Verdict::Next => {
                // Pipeline::run never leaves Next; treat defensively as unhandled.
                c.drops.add(DropReason::Unhandled, 1);
                self.caches[f.pool().0 as usize].free(f);
            }
        }
    }

    /// Queues a frame for transmission on `q`: locally if this worker owns `q`, else over the
    /// owner's ring. Copies into the port's own memory if the frame lives elsewhere.
    fn enqueue_tx(&mut self, q: QueueId, f: Frame, s: &mut Sinks) {
        let c = &self.shared.counters;
        let Some(qi) = s.tx_ids.iter().position(|&x| x == q) else {
            match self.routes.owner(q) {
                Some(w) if w != self.id => {
                    let mut f = f;
                    f.meta.tx = Some(q);
                    push_out(
                        &self.rings,
                        c,
                        &mut self.caches,
                        &mut s.out,
                        w.0 as usize,
                        f,
                    );
                }
                _ => {
                    c.drops.add(DropReason::NoRoute, 1);
                    self.caches[f.pool().0 as usize].free(f);
                }
            }
            return;
        };
        let dst_pool = q.port.0 as usize;
        let f = if f.pool().0 as usize != dst_pool {
            let Some(cache) = self.caches.get_mut(dst_pool) else {
                c.drops.add(DropReason::NoRoute, 1);
                self.caches[f.pool().0 as usize].free(f);
                return;
            };
            let copied = match cache.alloc() {
                Some(mut g) => {
                    if g.try_fill(f.data()) {
                        g.meta = f.meta;
                        Some(g)
                    } else {
                        // Destination frames are smaller than the packet.
                        cache.free(g);
                        None
                    }
                }
                None => None,
            };
            let src = f.pool().0 as usize;
            self.caches[src].free(f);
            match copied {
                Some(g) => {
                    c.copies.add(1);
                    g
                }
                None => {
                    c.drops.add(DropReason::NoBuffer, 1);
                    return;
                }
            }
        } else {
            f
        };
        if s.tx[qi].is_full() {
            self.flush_tx(qi, s);
        }
        let _ = s.tx[qi].try_push(f);
    }

    fn flush_tx(&mut self, qi: usize, s: &mut Sinks) {
        let batch = &mut s.tx[qi];
        if batch.is_empty() {
            return;
        }
        let bytes: u64 = batch.as_slice().iter().map(|f| f.len() as u64).sum();
        let sent = self.queues[qi].tx_burst(batch);
        let c = &self.shared.counters;
        let mut unsent_bytes = 0;
        let unsent = batch.len() as u64;
        for f in batch.drain() {
            unsent_bytes += f.len() as u64;
            self.caches[f.pool().0 as usize].free(f);
        }
        c.tx_packets.add(sent as u64);
        c.tx_bytes.add(bytes - unsent_bytes);
        if unsent > 0 {
            c.drops.add(DropReason::TxFull, unsent);
        }
    }

    fn flush_slow(&mut self, s: &mut Sinks) {
        let c = &self.shared.counters;
        let n = s.slow.len() as u64;
        let caches = &mut self.caches;
        let mut full = 0;
        self.slow_path.push_burst(&mut s.slow, |f| {
            full += 1;
            caches[f.pool().0 as usize].free(f);
        });
        c.slow_path.add(n - full);
        if full > 0 {
            c.drops.add(DropReason::SlowPathFull, full);
        }
    }

    fn flush(&mut self, s: &mut Sinks) {
        for qi in 0..s.tx.len() {
            self.flush_tx(qi, s);
        }
        for w in 0..s.out.len() {
            flush_out(
                &self.rings,
                &self.shared.counters,
                &mut self.caches,
                &mut s.out,
                w,
            );
        }
        if !s.slow.is_empty() {
            self.flush_slow(s);
        }
    }
}

#[inline]
fn push_out(
    rings: &[Burst],
    c: &WorkerCounters,
    caches: &mut [Cache],
    out: &mut [Batch],
    w: usize,
    f: Frame,
) {
    if out[w].is_full() {
        flush_out(rings, c, caches, out, w);
    }
    let _ = out[w].try_push(f);
}

fn flush_out(
    rings: &[Burst],
    c: &WorkerCounters,
    caches: &mut [Cache],
    out: &mut [Batch],
    w: usize,
) {
    if out[w].is_empty() {
        return;
    }
    let n = out[w].len() as u64;
    let mut full = 0;
    rings[w].push_burst(&mut out[w], |f| {
        full += 1;
        caches[f.pool().0 as usize].free(f);
    });
    c.ring_out.add(n - full);
    if full > 0 {
        c.drops.add(DropReason::RingFull, full);
    }
}
