//! The pinned run-to-completion loop.
//!
//! One thread per configured core, pinned with `core_affinity`, exclusively owning a set of
//! port queues. Each turn of the loop:
//!
//! 1. for every owned queue: housekeeping (`poll`), then a receive burst, counted as
//!    received. When the chain needs it ([`Pipeline::needs_layout`]: some handler's
//!    [`Handler::needs_layout`](crate::pipeline::Handler::needs_layout) is true, the
//!    default), every frame is parsed once (`wire::parse`) in place and malformed frames
//!    are taken out and dropped by reason before any handler sees them. A chain whose
//!    handlers all declare that they need no layout (`macswap`) skips the parse: its
//!    handlers get the frames exactly as the port delivered them (any length, any header
//!    contents, `meta.layout` at its default) and drop what they cannot handle by reason
//!    themselves (`macswap` drops a frame shorter than an Ethernet header as `runt`);
//! 2. in pipeline mode, valid frames are spread over all workers by flow hash through their
//!    inbound rings; otherwise (run-to-completion) the handler chain runs on the burst here;
//! 3. the worker's own inbound ring is drained: frames marked for transmission go straight
//!    to the owned queue, the others run through the chain;
//! 4. verdicts are carried out in bulk. When every verdict of a burst is `Tx` to the same
//!    queue this worker owns, the handlers emitted nothing, that queue's transmit batch is
//!    empty and every frame is in the queue's pool (or in a pool over the same memory, see
//!    below), the burst batch itself becomes the transmit batch (a swap of two batches, no
//!    frame moves: the receive batch, the chain's batch and the transmit batch are the same
//!    frames in place). Otherwise per frame: per-queue transmit batches, per-worker ring
//!    batches, drops counted by reason and freed through a local cache, slow-path
//!    hand-off;
//! 5. transmit and ring batches are flushed once; what a full queue or ring refuses is
//!    counted (`tx_full`, `ring_full`) and freed, never lost silently.
//!
//! A frame sent to a port whose pool is not its own is copied into that pool (counted as
//! `copies`), except when both pools front the same memory (two DPDK ports on one mempool):
//! then it changes pools without a copy ([`Cache::adopt`]).
//!
//! The clock is read at most once per turn, for [`Context::now_ns`], and that reading serves
//! up to [`NOW_TURNS`] consecutive busy turns (an idle turn or a command forces a fresh
//! one). Handler time goes into the latency histogram for one burst in [`LATENCY_SAMPLE`]
//! (two more reads), so the histogram is a sample of bursts.
//!
//! The stop flag is read once per turn, so a worker always stops at a batch boundary. No
//! locks, no allocation and no syscalls happen in the loop (beyond what a port's I/O model
//! needs, and a sleep in the back-off idle policy).
//!
//! ## Live changes
//!
//! Each worker has a command mailbox ([`Shared::commands`], a bounded lock-free queue) that
//! it checks once per turn, at the top, where every transmit and ring batch of the previous
//! turn has been flushed: that is the batch boundary. A command is carried out there and
//! answered on [`Shared::replies`]; the engine sends one command at a time per worker and
//! waits for the reply, so the mailboxes never fill.
//!
//! - [`Command::Release`]: stop polling a queue and hand its [`Queue`] handle back in the
//!   reply. Packets that arrive meanwhile wait in the port's queue, so a move loses nothing.
//! - [`Command::Adopt`]: start polling and transmitting on a queue handle. The handle itself
//!   moves from the old owner to the new one; reopening it through the port would work too
//!   (dropping a handle gives the queue back), but a reopen can fail halfway (an AF_XDP
//!   re-bind), leaving a queue without owner, and moving the handle cannot.
//! - [`Command::SetPipeline`] swaps the handler chain between two bursts; the old chain goes
//!   back in the reply so that it is freed on the control thread, not here.
//! - [`Command::SetIdle`], [`Command::SetPeers`] (the workers that take part in flow
//!   spreading), [`Command::Sync`] (a barrier: once answered, the worker has finished every
//!   turn that started before) and [`Command::Exit`] (drain the inbound ring, then leave).
//!
//! While a queue moves, frames that must leave through it may reach the new owner (over its
//! ring) before the handle does. [`Routes`] already names the new owner then, so the new
//! owner parks such frames on its own ring and meets them again next turn, by which time the
//! handle has usually arrived. The old owner, after releasing, forwards them to the new one.
//! Nothing is dropped for the move itself.
//!
//! Worker ids are slots of fixed-size tables (rings, routes, liveness flags) sized when the
//! engine is built, so adding a worker allocates nothing that a running worker reads.

use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_queue::ArrayQueue;
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

/// Consecutive busy turns that share one clock reading for [`Context::now_ns`]. A clock
/// read costs about as much as forwarding a dozen frames; a busy turn lasts microseconds, so
/// the reading handlers see is at most a few turns old (and never goes backwards).
const NOW_TURNS: u32 = 4;

/// One burst in this many has its handler time recorded in the latency histogram: timing
/// every burst cost two clock reads per burst, as much as the chain itself for a simple
/// handler. Bursts are sampled at a fixed stride, so the distribution is not skewed.
const LATENCY_SAMPLE: u32 = 32;

/// Room in each worker's command and reply mailboxes. The engine keeps at most one command
/// outstanding per worker; the spare room only absorbs a reply nobody waited for.
const MAILBOX: usize = 8;

/// Marks a queue without owner in [`Routes`].
const NO_OWNER: u16 = u16::MAX;

/// Frames handlers may add per received frame of a burst (`pipeline::Emit`): room for a
/// burst of replies of this many datagrams each.
const EMIT_PER_FRAME: usize = 16;

/// Which worker transmits on each port queue, readable by every worker and updated by the
/// engine while they run (one atomic per queue).
#[derive(Debug, Default)]
pub struct Routes {
    owners: Vec<Vec<AtomicU16>>,
}

impl Routes {
    /// A table for ports with these queue counts, nobody owning anything.
    pub fn new(queue_counts: impl IntoIterator<Item = u16>) -> Routes {
        Routes {
            owners: queue_counts
                .into_iter()
                .map(|n| (0..n).map(|_| AtomicU16::new(NO_OWNER)).collect())
                .collect(),
        }
    }

    fn slot(&self, q: QueueId) -> Option<&AtomicU16> {
        self.owners
            .get(q.port.0 as usize)
            .and_then(|p| p.get(q.queue as usize))
    }

    /// The worker that transmits on `q`, if any.
    #[inline]
    pub fn owner(&self, q: QueueId) -> Option<WorkerId> {
        self.slot(q)
            .map(|s| s.load(Ordering::Acquire))
            .filter(|&w| w != NO_OWNER)
            .map(WorkerId)
    }

    /// True when the port and queue exist.
    pub fn exists(&self, q: QueueId) -> bool {
        self.slot(q).is_some()
    }

    /// Sets (or clears) the owner of `q`; false when `q` does not exist.
    pub fn set(&self, q: QueueId, owner: Option<WorkerId>) -> bool {
        match self.slot(q) {
            Some(s) => {
                s.store(owner.map_or(NO_OWNER, |w| w.0), Ordering::Release);
                true
            }
            None => false,
        }
    }

    /// Number of queues over all ports.
    pub fn queue_count(&self) -> usize {
        self.owners.iter().map(Vec::len).sum()
    }
}

/// A change a worker carries out at its next batch boundary.
pub enum Command {
    /// Start polling and transmitting on this queue.
    Adopt(Box<dyn Queue>),
    /// Stop using this queue and hand the handle back ([`Reply::Queue`]).
    Release(QueueId),
    /// Run this chain from the next burst on; the old one comes back ([`Reply::Pipeline`]).
    SetPipeline(Pipeline),
    /// Change the idle policy.
    SetIdle { idle: Idle, backoff_max: Duration },
    /// The live workers, for flow spreading in pipeline mode and [`Context::workers`]; the
    /// old list comes back ([`Reply::Peers`]).
    SetPeers(Vec<WorkerId>),
    /// Answer [`Reply::Done`]: every turn begun before has finished.
    Sync,
    /// Stop receiving, run what waits on the inbound ring, then leave the loop.
    Exit,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Adopt(q) => write!(f, "Adopt({})", q.id()),
            Command::Release(q) => write!(f, "Release({q})"),
            Command::SetPipeline(p) => write!(f, "SetPipeline({p:?})"),
            Command::SetIdle { idle, backoff_max } => {
                write!(f, "SetIdle({idle:?}, {backoff_max:?})")
            }
            Command::SetPeers(p) => write!(f, "SetPeers({p:?})"),
            Command::Sync => f.write_str("Sync"),
            Command::Exit => f.write_str("Exit"),
        }
    }
}

/// A worker's answer to a [`Command`].
pub enum Reply {
    Done,
    /// The released queue.
    Queue(Box<dyn Queue>),
    /// Release of a queue the worker does not own (an engine bug; nothing changed).
    NotOwned(QueueId),
    /// The chain that was replaced.
    Pipeline(Pipeline),
    /// The peer list that was replaced.
    Peers(Vec<WorkerId>),
}

impl std::fmt::Debug for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reply::Done => f.write_str("Done"),
            Reply::Queue(q) => write!(f, "Queue({})", q.id()),
            Reply::NotOwned(q) => write!(f, "NotOwned({q})"),
            Reply::Pipeline(p) => write!(f, "Pipeline({p:?})"),
            Reply::Peers(p) => write!(f, "Peers({p:?})"),
        }
    }
}

/// State shared between a worker thread and the engine.
#[derive(Debug)]
pub struct Shared {
    pub counters: Padded<WorkerCounters>,
    pub latency: LatencyMailbox,
    /// Consecutive loop turns without work, written by the worker (for quiescence checks).
    pub idle_streak: AtomicU64,
    /// Commands from the engine, taken once per turn.
    pub commands: ArrayQueue<Command>,
    /// Answers to the commands.
    pub replies: ArrayQueue<Reply>,
}

impl Default for Shared {
    fn default() -> Self {
        Shared {
            counters: Padded::default(),
            latency: LatencyMailbox::default(),
            idle_streak: AtomicU64::new(0),
            commands: ArrayQueue::new(MAILBOX),
            replies: ArrayQueue::new(MAILBOX),
        }
    }
}

/// Flags the engine uses to stop workers, and which worker slots are live.
#[derive(Debug, Default)]
pub struct Control {
    /// Stop receiving from ports; keep draining rings.
    pub stop_rx: AtomicBool,
    /// Leave the loop at the next batch boundary.
    pub exit: AtomicBool,
    /// Per worker slot: true while the worker runs and may be sent frames. A forward to a
    /// slot that is not live is dropped as `no_route`.
    pub live: Vec<AtomicBool>,
}

impl Control {
    /// Flags for `slots` worker slots, none live.
    pub fn with_slots(slots: usize) -> Control {
        Control {
            live: (0..slots).map(|_| AtomicBool::new(false)).collect(),
            ..Control::default()
        }
    }

    #[inline]
    fn is_live(&self, w: usize) -> bool {
        self.live.get(w).is_some_and(|l| l.load(Ordering::Acquire))
    }
}

/// Everything a worker thread owns.
pub struct Worker {
    pub id: WorkerId,
    pub mode: Mode,
    pub idle: Idle,
    pub backoff_max: Duration,
    pub burst: usize,
    /// Owned queues. Capacity for every queue of every port is reserved by
    /// [`Worker::run`], so adopting one never allocates.
    pub queues: Vec<Box<dyn Queue>>,
    /// Frame caches indexed by pool id (== port index).
    pub caches: Vec<Cache>,
    pub routes: Arc<Routes>,
    /// Inbound ring of every worker slot, indexed by worker id.
    pub rings: Arc<Vec<Burst>>,
    pub slow_path: Arc<Burst>,
    pub pipeline: Pipeline,
    pub shared: Arc<Shared>,
    pub control: Arc<Control>,
    /// Live workers, in spreading order (pipeline mode spreads flows over them).
    pub peers: Vec<WorkerId>,
    pub epoch: Instant,
}

/// Per-loop scratch space, allocated once.
struct Scratch {
    rx: Batch,
    work: Batch,
    local: Batch,
    verdicts: Vec<Verdict>,
    /// Frames handlers added to the burst, with their verdicts (capacity fixed).
    emitted: Vec<(Frame, Verdict)>,
    sinks: Sinks,
    /// The clock reading (and its engine-clock nanoseconds) handlers get as
    /// [`Context::now_ns`]: taken when a turn first needs it, then reused by up to
    /// [`NOW_TURNS`] consecutive busy turns; an idle turn or a command clears it.
    now: Option<(Instant, u64)>,
    /// Turns since `now` was read.
    now_age: u32,
    /// Bursts handled since the last one whose handler time went into the histogram.
    untimed: u32,
}

/// Outgoing batches: per owned queue, per worker ring, slow path.
struct Sinks {
    /// Ids of the owned queues, parallel to `tx` and `Worker::queues`.
    tx_ids: Vec<QueueId>,
    tx: Vec<Batch>,
    /// Bytes of the frames in each `tx` batch, summed as they are queued.
    tx_bytes: Vec<u64>,
    out: Vec<Batch>,
    slow: Batch,
}

impl Worker {
    /// Runs until told to exit. Returns nothing: results are in the shared counters.
    pub fn run(mut self) {
        let burst = self.burst;
        let max_queues = self.routes.queue_count().max(self.queues.len());
        self.queues.reserve(max_queues - self.queues.len());
        let mut s = Scratch {
            rx: Batch::with_capacity(burst),
            work: Batch::with_capacity(burst),
            local: Batch::with_capacity(burst),
            verdicts: vec![Verdict::Next; burst],
            emitted: Vec::with_capacity(burst * EMIT_PER_FRAME),
            sinks: Sinks {
                tx_ids: {
                    let mut ids = Vec::with_capacity(max_queues);
                    ids.extend(self.queues.iter().map(|q| q.id()));
                    ids
                },
                // One transmit batch per queue this worker could ever own; the first
                // `queues.len()` are in use.
                tx: (0..max_queues)
                    .map(|_| Batch::with_capacity(burst))
                    .collect(),
                tx_bytes: vec![0; max_queues],
                out: (0..self.rings.len())
                    .map(|_| Batch::with_capacity(burst))
                    .collect(),
                slow: Batch::with_capacity(burst),
            },
            now: None,
            now_age: 0,
            // The first burst is timed, so that any worker that handled one has a sample.
            untimed: LATENCY_SAMPLE - 1,
        };
        let mut hist = new_histogram();
        let mut last_post = Instant::now();
        let mut idle_streak: u64 = 0;
        let mut leaving = false;
        loop {
            if self.control.exit.load(Ordering::Acquire) {
                break;
            }
            // Batch boundary: every batch of the previous turn has been flushed.
            // (`is_empty` first: popping an empty queue costs a full fence.)
            while !self.shared.commands.is_empty() {
                let Some(cmd) = self.shared.commands.pop() else {
                    break;
                };
                leaving |= self.apply(cmd, &mut s.sinks);
                idle_streak = 0;
                s.now = None;
            }
            let receiving = !leaving && !self.control.stop_rx.load(Ordering::Acquire);
            let mut work = 0;
            s.now_age += 1;
            if s.now_age >= NOW_TURNS {
                s.now = None;
            }
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
                // The burst stays in `s.rx` (malformed frames taken out), then becomes the
                // work batch by a swap: frames are not moved one by one.
                self.classify(&mut s);
                if s.rx.is_empty() {
                    continue;
                }
                if self.mode == Mode::Pipeline && self.peers.len() > 1 {
                    self.spread(&mut s);
                    if !s.local.is_empty() {
                        std::mem::swap(&mut s.work, &mut s.local);
                        self.handle(&mut s, &mut hist);
                    }
                } else {
                    std::mem::swap(&mut s.work, &mut s.rx);
                    self.handle(&mut s, &mut hist);
                }
            }
            let ring = &self.rings[self.id.0 as usize];
            let n = if ring.is_empty() {
                0
            } else {
                ring.pop_burst(&mut s.rx)
            };
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
            if leaving && n == 0 {
                // Nobody sends to this worker any more (the engine made sure before asking
                // it to leave) and its ring is empty: done.
                break;
            }

            let c = &self.shared.counters;
            if work > 0 {
                c.busy_polls.add(1);
                if idle_streak != 0 {
                    idle_streak = 0;
                    self.shared.idle_streak.store(0, Ordering::Release);
                }
                // Only turns that ran the chain read the clock (and only they change the
                // histogram).
                if let Some((now, _)) = s.now {
                    if now.duration_since(last_post) >= LATENCY_POST_INTERVAL {
                        self.shared.latency.post(&hist);
                        last_post = now;
                    }
                }
            } else {
                // Time passes unseen while idle: the next busy turn reads the clock afresh.
                s.now = None;
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

    /// Carries out one command at a batch boundary (every batch in `s` is empty). Returns
    /// true when the worker must leave.
    fn apply(&mut self, cmd: Command, s: &mut Sinks) -> bool {
        let mut leave = false;
        let reply = match cmd {
            Command::Adopt(q) => {
                s.tx_ids.push(q.id());
                self.queues.push(q);
                Reply::Done
            }
            Command::Release(id) => match s.tx_ids.iter().position(|&x| x == id) {
                Some(qi) => {
                    // Flushed at the end of the last turn; flush again in case a port kept
                    // part of it, so the frames are counted before the handle leaves.
                    self.flush_tx(qi, s);
                    let last = self.queues.len() - 1;
                    s.tx.swap(qi, last);
                    s.tx_bytes.swap(qi, last);
                    s.tx_ids.swap_remove(qi);
                    Reply::Queue(self.queues.swap_remove(qi))
                }
                None => Reply::NotOwned(id),
            },
            Command::SetPipeline(p) => Reply::Pipeline(std::mem::replace(&mut self.pipeline, p)),
            Command::SetIdle { idle, backoff_max } => {
                self.idle = idle;
                self.backoff_max = backoff_max;
                Reply::Done
            }
            Command::SetPeers(p) => Reply::Peers(std::mem::replace(&mut self.peers, p)),
            Command::Sync => Reply::Done,
            Command::Exit => {
                leave = true;
                Reply::Done
            }
        };
        self.shared.idle_streak.store(0, Ordering::Release);
        // Cannot fail while the engine keeps one command outstanding; if it ever did, the
        // reply (and any queue handle in it) is dropped, which gives the queue back to its
        // port rather than losing it.
        let _ = self.shared.replies.push(reply);
        leave
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

    /// Counts the burst in `s.rx` as received and, when the chain needs it, parses every
    /// frame in place, taking the malformed ones out (dropped by reason).
    fn classify(&mut self, s: &mut Scratch) {
        let c = &self.shared.counters;
        let frames = s.rx.as_mut_slice();
        let bytes: u64 = frames.iter().map(|f| f.len() as u64).sum();
        c.rx_packets.add(frames.len() as u64);
        c.rx_bytes.add(bytes);
        if !self.pipeline.needs_layout() {
            return;
        }
        let mut bad = false;
        for (f, v) in frames.iter_mut().zip(s.verdicts.iter_mut()) {
            match crate::wire::parse(f.data()) {
                Ok(layout) => {
                    // The flow hash is only needed to spread (pipeline mode): computed there.
                    f.meta.hash = 0;
                    f.meta.layout = layout;
                    f.meta.tx = None;
                    *v = Verdict::Next;
                }
                Err(reason) => {
                    *v = Verdict::Drop(reason);
                    bad = true;
                }
            }
        }
        if bad {
            self.drop_malformed(s);
        }
    }

    /// Takes the frames `classify` marked malformed out of `s.rx`, in order, counting each
    /// drop by reason.
    #[cold]
    fn drop_malformed(&mut self, s: &mut Scratch) {
        let c = &self.shared.counters;
        for (f, v) in s.rx.drain().zip(s.verdicts.iter()) {
            match *v {
                Verdict::Drop(reason) => {
                    c.drops.add(reason, 1);
                    self.caches[f.pool().0 as usize].free(f);
                }
                // Cannot fail: rx and work have the same capacity (and work is empty).
                _ => {
                    let _ = s.work.try_push(f);
                }
            }
        }
        std::mem::swap(&mut s.rx, &mut s.work);
    }

    /// Pipeline mode: sends each frame to the worker that owns its flow.
    fn spread(&mut self, s: &mut Scratch) {
        let me = self.id.0 as usize;
        let n = self.peers.len() as u64;
        for mut f in s.rx.drain() {
            f.meta.hash = crate::wire::flow_hash(f.data(), &f.meta.layout);
            let pick = ((f.meta.hash as u64 * n) >> 32) as usize;
            let target = self.peers.get(pick).map_or(me, |w| w.0 as usize);
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

    /// Runs the chain over `s.work` and carries out the verdicts; leaves `s.work` empty.
    fn handle(&mut self, s: &mut Scratch, hist: &mut Histogram<u64>) {
        let n = s.work.len();
        let verdicts = &mut s.verdicts[..n];
        verdicts.fill(Verdict::Next);
        // One clock read per turn for the handlers' `now_ns`; the handler time of one burst
        // in LATENCY_SAMPLE goes into the histogram (two more reads).
        s.untimed += 1;
        let timed = if s.untimed >= LATENCY_SAMPLE {
            s.untimed = 0;
            Some(Instant::now())
        } else {
            None
        };
        if s.now.is_none() {
            let t = timed.unwrap_or_else(Instant::now);
            s.now = Some((t, t.duration_since(self.epoch).as_nanos() as u64));
            s.now_age = 0;
        }
        let now_ns = s.now.map_or(0, |(_, ns)| ns);
        let cx = Context {
            worker: self.id,
            workers: self.peers.len() as u16,
            now_ns,
        };
        let mut emit = crate::pipeline::Emit::new(&mut self.caches, &mut s.emitted);
        let uniform = self
            .pipeline
            .run_burst(s.work.as_mut_slice(), verdicts, &cx, &mut emit);
        if let Some(start) = timed {
            let ns = start.elapsed().as_nanos() as u64;
            let _ = hist.record(ns.max(1));
        }

        let Scratch {
            work,
            verdicts,
            emitted,
            sinks,
            ..
        } = s;
        let verdicts = &verdicts[..n];
        if let (Some(q), true) = (uniform, emitted.is_empty()) {
            if let Some((qi, src, bytes)) = whole_burst_tx(work.as_slice(), q, &sinks.tx_ids) {
                // The common case of a reflector or a forwarder: the burst becomes the
                // transmit batch as it is, when it is a frame of the queue's pool (or can
                // become one without a copy).
                let dst = q.port.0 as usize;
                let ready = sinks.tx[qi].is_empty()
                    && (src == dst
                        || pair_mut(&mut self.caches, dst, src)
                            .is_some_and(|(to, from)| to.adopt_all(work.as_mut_slice(), from)));
                if ready {
                    std::mem::swap(work, &mut sinks.tx[qi]);
                    sinks.tx_bytes[qi] += bytes;
                    return;
                }
            }
        }
        for (f, v) in work.drain().zip(verdicts.iter()) {
            self.dispatch(*v, f, sinks);
        }
        if !emitted.is_empty() {
            self.shared.counters.generated.add(emitted.len() as u64);
            for (f, v) in emitted.drain(..) {
                self.dispatch(v, f, sinks);
            }
        }
    }

    #[inline]
    fn dispatch(&mut self, v: Verdict, mut f: Frame, s: &mut Sinks) {
        let c = &self.shared.counters;
        match v {
            Verdict::Tx(q) => self.enqueue_tx(q, f, s),
            Verdict::Forward(w) => {
                if self.control.is_live(w.0 as usize) {
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
    /// owner's ring. Copies into the port's own memory if the frame lives elsewhere (unless
    /// both pools front the same memory: then the frame changes pools without a copy).
    fn enqueue_tx(&mut self, q: QueueId, f: Frame, s: &mut Sinks) {
        let c = &self.shared.counters;
        let Some(qi) = s.tx_ids.iter().position(|&x| x == q) else {
            // Another worker's queue, or (owner == self) one whose handle is on its way
            // here: park the frame on our own ring until the handle arrives.
            match self.routes.owner(q) {
                Some(w) if (w.0 as usize) < self.rings.len() => {
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
            match self.move_to_pool(f, dst_pool) {
                Some(g) => g,
                None => return,
            }
        } else {
            f
        };
        if s.tx[qi].is_full() {
            self.flush_tx(qi, s);
        }
        push_tx(s, qi, f);
    }

    /// Makes `f` a frame of pool `dst` for transmission there: handed over when both pools
    /// front the same memory (two DPDK ports on one mempool: no copy), copied otherwise.
    /// `None` when it could not be (counted as a drop, the frame freed).
    fn move_to_pool(&mut self, f: Frame, dst: usize) -> Option<Frame> {
        let c = &self.shared.counters;
        let src = f.pool().0 as usize;
        let f = match pair_mut(&mut self.caches, dst, src) {
            Some((to, from)) => match to.adopt(f, from) {
                Ok(g) => return Some(g),
                Err(f) => f,
            },
            None => f,
        };
        let Some(cache) = self.caches.get_mut(dst) else {
            c.drops.add(DropReason::NoRoute, 1);
            self.caches[src].free(f);
            return None;
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
        self.caches[src].free(f);
        match copied {
            Some(g) => {
                c.copies.add(1);
                Some(g)
            }
            None => {
                c.drops.add(DropReason::NoBuffer, 1);
                None
            }
        }
    }

    fn flush_tx(&mut self, qi: usize, s: &mut Sinks) {
        let batch = &mut s.tx[qi];
        if batch.is_empty() {
            return;
        }
        let bytes = std::mem::take(&mut s.tx_bytes[qi]);
        let sent = self.queues[qi].tx_burst(batch);
        let c = &self.shared.counters;
        let mut unsent_bytes = 0;
        let unsent = batch.len() as u64;
        if unsent > 0 {
            for f in batch.drain() {
                unsent_bytes += f.len() as u64;
                self.caches[f.pool().0 as usize].free(f);
            }
            c.drops.add(DropReason::TxFull, unsent);
        }
        c.tx_packets.add(sent as u64);
        c.tx_bytes.add(bytes - unsent_bytes);
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

/// Appends a frame to transmit batch `qi`, which has room.
#[inline]
fn push_tx(s: &mut Sinks, qi: usize, f: Frame) {
    s.tx_bytes[qi] += f.len() as u64;
    // Cannot fail: the caller made room.
    let _ = s.tx[qi].try_push(f);
}

/// Two distinct caches at once (`a` != `b`, both in range).
fn pair_mut(caches: &mut [Cache], a: usize, b: usize) -> Option<(&mut Cache, &mut Cache)> {
    if a == b || a >= caches.len() || b >= caches.len() {
        return None;
    }
    if a < b {
        let (x, y) = caches.split_at_mut(b);
        Some((&mut x[a], &mut y[0]))
    } else {
        let (x, y) = caches.split_at_mut(a);
        Some((&mut y[0], &mut x[b]))
    }
}

/// For a burst whose every verdict is `Tx(q)`: when `q` is one of this worker's queues
/// (index `qi` of `tx_ids`) and every frame lives in the same pool, `qi`, that pool and the
/// burst's bytes. Then the burst can be transmitted as it is, without a per-frame dispatch.
#[inline]
fn whole_burst_tx(frames: &[Frame], q: QueueId, tx_ids: &[QueueId]) -> Option<(usize, usize, u64)> {
    let pool = frames.first()?.pool().0;
    // Branch-free over the burst (one test at the end).
    let mut other = 0;
    let mut bytes = 0u64;
    for f in frames {
        other |= f.pool().0 ^ pool;
        bytes += f.len() as u64;
    }
    if other != 0 {
        return None;
    }
    let qi = tx_ids.iter().position(|&x| x == q)?;
    Some((qi, pool as usize, bytes))
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use crate::config::{EngineConfig, Mode};
    use crate::engine::{Engine, Report, WorkerPlan};
    use crate::handlers::{Macswap, UdpEcho};
    use crate::mem::Frame;
    use crate::packet::{PortId, QueueId};
    use crate::pipeline::{Context, DropReason, Handler, Pipeline, Verdict};
    use crate::port::memory::{MemoryOptions, Sink, Source};
    use crate::port::{Memory, Port};
    use crate::wire::build::{self, Endpoints4};

    fn memory(id: u16) -> Arc<Memory> {
        Memory::new(
            PortId(id),
            MemoryOptions {
                queues: 1,
                frames: 256,
                frame_size: 2048,
                memory: crate::mem::Options {
                    hugepages: false,
                    numa_node: None,
                },
                source: Source::Ring,
                sink: Sink::Ring,
                ring_size: 256,
            },
        )
        .unwrap()
    }

    /// Runs `chain` on one worker over p0 (and an idle p1), collects `want` frames from each
    /// port, stops; returns the report and what left p0 and p1.
    fn run(
        chain: Pipeline,
        input: &[Vec<u8>],
        want: (usize, usize),
    ) -> (Report, Vec<Vec<u8>>, Vec<Vec<u8>>) {
        let (p0, p1) = (memory(0), memory(1));
        for f in input {
            assert!(p0.inject(0, f));
        }
        let ports: Vec<Arc<dyn Port>> = vec![p0.clone(), p1.clone()];
        let mut engine = Engine::from_parts(
            &EngineConfig {
                mode: Mode::RunToCompletion,
                burst: 4,
                ..EngineConfig::default()
            },
            ports,
            vec![WorkerPlan {
                core: None,
                queues: vec![QueueId::new(0, 0), QueueId::new(1, 0)],
            }],
            vec![chain],
        )
        .unwrap();
        engine.start().unwrap();
        let (mut out0, mut out1) = (Vec::new(), Vec::new());
        let deadline = Instant::now() + Duration::from_secs(10);
        while out0.len() < want.0 || out1.len() < want.1 {
            p0.drain_tx(0, |b| out0.push(b.to_vec()));
            p1.drain_tx(0, |b| out1.push(b.to_vec()));
            assert!(
                Instant::now() < deadline,
                "{} + {} outputs",
                out0.len(),
                out1.len()
            );
            std::thread::yield_now();
        }
        let report = engine.stop().unwrap();
        report.check_conservation().unwrap();
        assert_eq!(report.ports[0].stats.rx_packets, input.len() as u64);
        (report, out0, out1)
    }

    fn bad_checksum() -> Vec<u8> {
        let mut f = build::udp4(&Endpoints4::default(), b"x", None);
        f[24] ^= 0xff;
        f
    }

    #[test]
    fn a_chain_that_needs_no_layout_sees_raw_frames_and_drops_runts_itself() {
        let good = build::udp4(&Endpoints4::default(), b"hello", None);
        let input = vec![good.clone(), vec![0u8; 10], bad_checksum(), good.clone()];
        let (report, out, _) = run(Pipeline::new(vec![Box::new(Macswap)]), &input, (3, 0));
        let d = report.drops();
        assert_eq!(d.get(DropReason::Runt), 1, "macswap's own check");
        assert_eq!(
            d.get(DropReason::BadChecksum),
            0,
            "no parse: reflected as it is"
        );
        assert_eq!(d.total(), 1);
        assert_eq!(out.len(), 3);
        for (o, i) in out.iter().zip([&input[0], &input[2], &input[3]]) {
            assert_eq!(&o[..6], &i[6..12]);
            assert_eq!(&o[12..], &i[12..]);
        }
    }

    #[test]
    fn a_chain_that_needs_the_layout_never_sees_malformed_frames() {
        let echo = build::udp4(
            &Endpoints4 {
                dst_port: 7,
                ..Endpoints4::default()
            },
            b"hello",
            None,
        );
        let input = vec![echo.clone(), vec![0u8; 10], bad_checksum(), echo];
        let chain = Pipeline::new(vec![Box::new(UdpEcho::new(7)), Box::new(Macswap)]);
        assert!(chain.needs_layout());
        let (report, out, _) = run(chain, &input, (2, 0));
        let d = report.drops();
        assert_eq!(d.get(DropReason::Runt), 1);
        assert_eq!(d.get(DropReason::BadChecksum), 1);
        assert_eq!(d.total(), 2);
        assert_eq!(out.len(), 2);
    }

    /// Sends frames whose first payload byte is odd to p1, the rest back to p0.
    struct Split;
    impl Handler for Split {
        fn name(&self) -> &str {
            "split"
        }
        fn needs_layout(&self) -> bool {
            false
        }
        fn process(&mut self, frames: &mut [Frame], verdicts: &mut [Verdict], _: &Context) {
            for (f, v) in frames.iter().zip(verdicts.iter_mut()) {
                *v = match f.data().get(14) {
                    Some(b) if b % 2 == 1 => Verdict::Tx(QueueId::new(1, 0)),
                    Some(_) => Verdict::reply(f),
                    None => Verdict::Drop(DropReason::Runt),
                };
            }
        }
    }

    #[test]
    fn whole_and_mixed_bursts_keep_order_and_count_bytes() {
        let frame = |k: u8, n: u8| {
            let mut f = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x88, 0xb5, k, n];
            f.resize(60 + n as usize, 0);
            f
        };
        // Bursts of 4: one all to p0 (whole), one mixed, one all to p1 (other pool: copied).
        let input: Vec<Vec<u8>> = [0, 2, 4, 6, 0, 1, 2, 3, 1, 3, 5, 7]
            .iter()
            .enumerate()
            .map(|(i, &k)| frame(k, i as u8))
            .collect();
        let even: Vec<_> = input.iter().filter(|f| f[14] % 2 == 0).cloned().collect();
        let odd: Vec<_> = input.iter().filter(|f| f[14] % 2 == 1).cloned().collect();
        let want = (even.len(), odd.len());
        let (report, out0, out1) = run(Pipeline::new(vec![Box::new(Split)]), &input, want);
        assert_eq!(out0, even);
        assert_eq!(out1, odd);
        let w = report.worker_totals();
        assert_eq!(w.copies, odd.len() as u64, "memory pools share nothing");
        assert_eq!(w.tx_packets, input.len() as u64);
        let bytes: u64 = input.iter().map(|f| f.len() as u64).sum();
        assert_eq!(w.tx_bytes, bytes);
        assert_eq!(w.rx_bytes, bytes);
        assert!(report.latency.count > 0, "the first burst is timed");
    }
}
