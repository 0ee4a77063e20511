//! The engine: builds ports, pools, rings and workers from a configuration, runs them, and
//! stops them cleanly with every packet and every frame accounted for.
//!
//! Lifecycle: [`Engine::new`] (or [`Engine::from_parts`] for embedders and tests) builds
//! everything without starting a thread; [`Engine::start`] opens each worker's queues,
//! spawns one pinned thread per worker and waits until each has pinned itself;
//! [`Engine::stop`] stops receiving, lets in-flight packets drain through rings and transmit
//! queues, stops the workers at a batch boundary, closes the ports and verifies frame
//! accounting and packet conservation. [`Engine::run_to_end`] does the same once finite
//! inputs (capture files, bounded generators) are exhausted.
//!
//! Live changes, while the workers run: [`Engine::assign`] moves a queue between workers,
//! [`Engine::add_worker`] and [`Engine::remove_worker`] start and stop workers,
//! [`Engine::set_idle`] and [`Engine::set_handlers`] change the idle policy and the handler
//! chain, [`Engine::drain`] stops receiving and waits for in-flight packets. Each change is
//! validated whole before anything moves (errors are [`ChangeError`]s naming the field),
//! then carried out through the workers' command mailboxes at batch boundaries (see
//! `worker`), so no packet is lost and the hot path takes no lock. The methods take `&mut
//! self`: one change at a time, which is what the control plane's engine lock gives.
//!
//! Worker ids are slots: the engine reserves one per allowed core (at least `MIN_SLOTS`)
//! up front, with rings and liveness flags, so a worker that comes later allocates nothing
//! the running workers read. A removed worker's slot keeps its counters (they are part of
//! the totals) and can be reused by a later worker, which continues them.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::config::{Config, EngineConfig, Idle, MemorySink, MemorySource, PortConfig};
use crate::control::{Chain, ChangeError, Moved, WorkerInfo, WorkerState};
use crate::handlers::Spec;
use crate::mem::{Cache, Options as MemOptions};
use crate::packet::{CoreId, PortId, QueueId, WorkerId};
use crate::pipeline::Pipeline;
use crate::port::memory::{MemoryOptions, Sink, Source};
use crate::port::{Port, PortError};
use crate::ring::Burst;
use crate::stats::{DropCounts, Percentiles, QueueSnapshot, WorkerSnapshot};
use crate::worker::{Command, Control, Reply, Routes, Shared, Worker};

/// Longest a stop waits for in-flight packets to drain before giving up.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Errors building, starting or stopping the engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Port(#[from] PortError),
    #[error("w{worker}: cannot pin to {core}: the core does not exist or is not allowed")]
    Pin { worker: u16, core: CoreId },
    #[error("w{worker}: thread could not be started: {source}")]
    Spawn { worker: u16, source: std::io::Error },
    #[error("{0}")]
    Plan(String),
    #[error("inputs not consumed within {timeout:?} ({in_flight} packets in flight)")]
    Timeout { timeout: Duration, in_flight: i64 },
    #[error("accounting failed at stop: {}", .problems.join("; "))]
    Accounting {
        problems: Vec<String>,
        report: Box<Report>,
    },
}

/// What one worker runs on and owns.
#[derive(Debug, Clone)]
pub struct WorkerPlan {
    /// Core to pin to; `None` leaves the thread unpinned (tests, benches).
    pub core: Option<CoreId>,
    /// Queues the worker receives from and transmits on.
    pub queues: Vec<QueueId>,
}

/// Per-port figures in a snapshot.
#[derive(Debug, Clone, Serialize)]
pub struct PortReport {
    pub id: PortId,
    pub kind: &'static str,
    /// How the port runs (see `Port::describe`).
    pub info: String,
    /// Sum over the queues.
    pub stats: QueueSnapshot,
    /// Per queue, indexed by queue number.
    pub queues: Vec<QueueSnapshot>,
}

/// Per-worker figures in a snapshot.
#[derive(Debug, Clone, Serialize)]
pub struct WorkerReport {
    pub id: WorkerId,
    pub core: Option<CoreId>,
    /// Removed workers stay in reports: their counters are part of the totals.
    pub state: WorkerState,
    pub counters: WorkerSnapshot,
    /// Handler time per burst, nanoseconds.
    pub latency: Percentiles,
}

/// A point-in-time view of the whole engine.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Time since start.
    pub elapsed: Duration,
    pub ports: Vec<PortReport>,
    pub workers: Vec<WorkerReport>,
    /// Handler time per burst over all workers, nanoseconds.
    pub latency: Percentiles,
    /// Counters of handlers that keep their own (registered kinds, `handlers::ext`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub handlers: Vec<crate::handlers::HandlerStats>,
}

impl Report {
    /// Packets the ports received (including the ones they dropped themselves).
    pub fn received(&self) -> u64 {
        self.ports.iter().map(|p| p.stats.rx_packets).sum()
    }

    /// Packets the ports transmitted.
    pub fn transmitted(&self) -> u64 {
        self.ports.iter().map(|p| p.stats.tx_packets).sum()
    }

    /// Drops by reason, in ports and workers together.
    pub fn drops(&self) -> DropCounts {
        let mut d = DropCounts::default();
        for p in &self.ports {
            d.add(&p.stats.drops);
        }
        for w in &self.workers {
            d.add(&w.counters.drops);
        }
        d
    }

    /// Packets handed to the slow path.
    pub fn slow_path(&self) -> u64 {
        self.workers.iter().map(|w| w.counters.slow_path).sum()
    }

    /// Packets handlers added to answers that take several (`pipeline::Emit`).
    pub fn generated(&self) -> u64 {
        self.workers.iter().map(|w| w.counters.generated).sum()
    }

    /// Worker totals.
    pub fn worker_totals(&self) -> WorkerSnapshot {
        let mut t = WorkerSnapshot::default();
        for w in &self.workers {
            t.add(&w.counters);
        }
        t
    }

    /// Packets received (or generated by handlers) but not yet transmitted, dropped or
    /// handed to the slow path.
    pub fn in_flight(&self) -> i64 {
        self.received() as i64 + self.generated() as i64
            - self.transmitted() as i64
            - self.drops().total() as i64
            - self.slow_path() as i64
    }

    /// Checks received + generated == transmitted + dropped (by reason) + slow path, with
    /// nothing in flight, and that workers and ports agree on what crossed between them.
    pub fn check_conservation(&self) -> Result<(), String> {
        let w = self.worker_totals();
        let port_drops: u64 = self.ports.iter().map(|p| p.stats.drops.total()).sum();
        let mut problems = Vec::new();
        if self.in_flight() != 0 {
            problems.push(format!(
                "received {}{} != transmitted {} + dropped {} + slow path {} ({} unaccounted)",
                self.received(),
                match self.generated() {
                    0 => String::new(),
                    g => format!(" + generated {g}"),
                },
                self.transmitted(),
                self.drops().total(),
                self.slow_path(),
                self.in_flight()
            ));
        }
        if w.rx_packets != self.received() - port_drops {
            problems.push(format!(
                "workers took {} packets but ports delivered {}",
                w.rx_packets,
                self.received() - port_drops
            ));
        }
        if w.tx_packets != self.transmitted() {
            problems.push(format!(
                "workers transmitted {} packets but ports sent {}",
                w.tx_packets,
                self.transmitted()
            ));
        }
        if w.ring_out != w.ring_in {
            problems.push(format!(
                "{} packets pushed to rings but {} taken off",
                w.ring_out, w.ring_in
            ));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }
}

/// Worker slots an engine reserves at least (worker ids are slot numbers; see
/// [`Engine::add_worker`]). More are reserved when the process may use more cores.
const MIN_SLOTS: usize = 8;

/// Longest the engine waits for a worker to answer a command.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// Builds one handler chain (one per worker: handlers keep per-worker state).
pub type ChainFactory = Arc<dyn Fn() -> Pipeline + Send + Sync>;

/// One worker slot: its plan, its thread and its shared counters.
struct Slot {
    /// `None`: never used.
    state: Option<WorkerState>,
    core: Option<CoreId>,
    queues: Vec<QueueId>,
    idle: Idle,
    backoff_max_us: u64,
    /// The chain, until the worker starts.
    pipeline: Option<Pipeline>,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Slot {
    fn free(cfg: &EngineConfig) -> Slot {
        Slot {
            state: None,
            core: None,
            queues: Vec::new(),
            idle: cfg.idle,
            backoff_max_us: cfg.backoff_max_us,
            pipeline: None,
            shared: Arc::new(Shared::default()),
            thread: None,
        }
    }

    fn running(&self) -> bool {
        self.state == Some(WorkerState::Running)
    }
}

/// The chain every worker runs, and what it was built from.
struct ChainState {
    version: u64,
    specs: Option<Vec<Spec>>,
    names: Vec<String>,
    factory: ChainFactory,
}

/// The running (or ready to run) data plane.
pub struct Engine {
    cfg: EngineConfig,
    ports: Vec<Arc<dyn Port>>,
    /// Indexed by worker id; the first `plans.len()` are the configured workers.
    slots: Vec<Slot>,
    control: Arc<Control>,
    routes: Arc<Routes>,
    rings: Arc<Vec<Burst>>,
    slow: Arc<Burst>,
    chain: ChainState,
    started: Option<Instant>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("ports", &self.ports.len())
            .field("workers", &self.workers())
            .field("running", &self.started.is_some())
            .finish()
    }
}

impl Engine {
    /// Builds ports and handler chains from a validated configuration. Relative capture
    /// paths are resolved against `base_dir` (the config file's folder).
    pub fn new(cfg: &Config, base_dir: &Path) -> Result<Engine, EngineError> {
        let mut ports: Vec<Arc<dyn Port>> = Vec::with_capacity(cfg.ports.len());
        for (i, p) in cfg.ports.iter().enumerate() {
            ports.push(build_port(PortId(i as u16), p, &cfg.engine, base_dir)?);
        }
        let plans = cfg
            .workers
            .iter()
            .enumerate()
            .map(|(i, w)| WorkerPlan {
                core: Some(CoreId(w.core)),
                queues: cfg.worker_queues(i),
            })
            .collect::<Vec<_>>();
        let factory = spec_factory(cfg.handlers.clone());
        let pipelines = (0..plans.len()).map(|_| factory()).collect();
        let mut engine = Engine::from_parts(&cfg.engine, ports, plans, pipelines)?;
        engine.chain = ChainState {
            version: 1,
            specs: Some(cfg.handlers.clone()),
            names: cfg.handlers.iter().map(|h| h.kind().to_string()).collect(),
            factory,
        };
        Ok(engine)
    }

    /// Assembles an engine from ready-made ports and one handler chain per worker (for
    /// embedders with their own handlers, tests and benches). Workers added later get an
    /// empty chain unless [`Engine::set_chain`] says how to build one.
    pub fn from_parts(
        cfg: &EngineConfig,
        ports: Vec<Arc<dyn Port>>,
        plans: Vec<WorkerPlan>,
        pipelines: Vec<Pipeline>,
    ) -> Result<Engine, EngineError> {
        if plans.is_empty() || plans.len() >= u16::MAX as usize {
            return Err(EngineError::Plan("at least one worker is required".into()));
        }
        if pipelines.len() != plans.len() {
            return Err(EngineError::Plan(format!(
                "{} handler chains for {} workers",
                pipelines.len(),
                plans.len()
            )));
        }
        for (i, p) in ports.iter().enumerate() {
            if p.id() != PortId(i as u16) || p.pool().id().0 != i as u16 {
                return Err(EngineError::Plan(format!(
                    "port {i} must have id p{i} and pool id {i} (has {} / {})",
                    p.id(),
                    p.pool().id()
                )));
            }
        }
        // One slot per core the process may use (each worker needs its own core), at least
        // MIN_SLOTS so that unpinned test workers can come and go too.
        let n = plans
            .len()
            .max(crate::topology::allowed_cores().len())
            .max(MIN_SLOTS)
            .min(u16::MAX as usize - 1);
        let names = pipelines.first().map(Pipeline::names).unwrap_or_default();
        let mut slots: Vec<Slot> = (0..n).map(|_| Slot::free(cfg)).collect();
        for ((slot, plan), pipeline) in slots.iter_mut().zip(plans).zip(pipelines) {
            slot.state = Some(WorkerState::Planned);
            slot.core = plan.core;
            slot.queues = plan.queues;
            slot.pipeline = Some(pipeline);
        }
        Ok(Engine {
            cfg: cfg.clone(),
            routes: Arc::new(Routes::new(ports.iter().map(|p| p.queue_count()))),
            ports,
            slots,
            control: Arc::new(Control::with_slots(n)),
            rings: Arc::new((0..n).map(|_| Burst::new(cfg.ring_size)).collect()),
            slow: Arc::new(Burst::new(cfg.ring_size)),
            chain: ChainState {
                version: 0,
                specs: None,
                names,
                factory: Arc::new(Pipeline::default),
            },
            started: None,
        })
    }

    /// The ports, indexed by port id.
    pub fn ports(&self) -> &[Arc<dyn Port>] {
        &self.ports
    }

    /// Engine-wide settings (the idle policy reflects [`Engine::set_idle`] for all workers).
    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    /// Frames handed to the slow path wait here; whoever consumes them frees them to their
    /// port's pool.
    pub fn slow_path(&self) -> &Arc<Burst> {
        &self.slow
    }

    /// True between [`Engine::start`] and the stop.
    pub fn is_running(&self) -> bool {
        self.started.is_some()
    }

    /// False once a drain or stop began (and until [`Engine::resume`]).
    pub fn receiving(&self) -> bool {
        !self.control.stop_rx.load(Ordering::Acquire)
    }

    /// Every worker that exists or existed, by id.
    pub fn workers(&self) -> Vec<WorkerInfo> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                Some(WorkerInfo {
                    id: WorkerId(i as u16),
                    core: s.core,
                    state: s.state?,
                    queues: s.queues.clone(),
                    idle: s.idle,
                    backoff_max_us: s.backoff_max_us,
                })
            })
            .collect()
    }

    /// Number of worker slots (the most workers that can exist at once).
    pub fn worker_slots(&self) -> usize {
        self.slots.len()
    }

    /// The worker that owns `q`, if any.
    pub fn queue_owner(&self, q: QueueId) -> Option<WorkerId> {
        self.slots
            .iter()
            .position(|s| s.state.is_some() && s.queues.contains(&q))
            .map(|i| WorkerId(i as u16))
    }

    /// The handler chain and its version.
    pub fn chain(&self) -> Chain {
        Chain {
            version: self.chain.version,
            specs: self.chain.specs.clone(),
            names: self.chain.names.clone(),
        }
    }

    /// Opens the queues, spawns and pins the workers. Fails (and leaves nothing running)
    /// when a queue cannot be opened or a core cannot be pinned.
    pub fn start(&mut self) -> Result<(), EngineError> {
        if self.started.is_some() {
            return Ok(());
        }
        let planned: Vec<usize> = (0..self.slots.len())
            .filter(|&i| self.slots[i].state == Some(WorkerState::Planned))
            .collect();
        let mut owners: Vec<Vec<Option<usize>>> = self
            .ports
            .iter()
            .map(|p| vec![None; p.queue_count() as usize])
            .collect();
        for &w in &planned {
            for q in &self.slots[w].queues {
                let slot = owners
                    .get_mut(q.port.0 as usize)
                    .and_then(|p| p.get_mut(q.queue as usize))
                    .ok_or_else(|| EngineError::Plan(format!("w{w}: {q} does not exist")))?;
                if let Some(other) = slot {
                    return Err(EngineError::Plan(format!(
                        "{q} is owned by both w{other} and w{w}"
                    )));
                }
                *slot = Some(w);
            }
        }
        // core_affinity panics (inside libc's CPU_SET) on a core beyond the set size, so
        // check against the allowed cpuset first.
        let allowed = crate::topology::allowed_cores();
        for &w in &planned {
            if let Some(core) = self.slots[w].core {
                if !allowed.contains(&core.0) {
                    return Err(EngineError::Pin {
                        worker: w as u16,
                        core,
                    });
                }
            }
        }
        // Open every queue before spawning anything, so a failure leaves nothing running.
        let mut all_queues = Vec::with_capacity(planned.len());
        for &w in &planned {
            let mut qs = Vec::with_capacity(self.slots[w].queues.len());
            for q in &self.slots[w].queues {
                let port = self.ports.get(q.port.0 as usize).ok_or_else(|| {
                    EngineError::Plan(format!("{q}: port {} does not exist", q.port))
                })?;
                qs.push(port.open_queue(q.queue, self.cfg.burst)?);
            }
            all_queues.push(qs);
        }
        for &w in &planned {
            for q in &self.slots[w].queues {
                self.routes.set(*q, Some(WorkerId(w as u16)));
            }
        }
        let epoch = Instant::now();
        self.started = Some(epoch);
        // Live before the first worker runs: they may forward to each other at once.
        for &w in &planned {
            self.control.live[w].store(true, Ordering::Release);
        }
        let peers: Vec<WorkerId> = planned.iter().map(|&w| WorkerId(w as u16)).collect();
        let (ack_tx, ack_rx) = mpsc::channel::<(u16, bool)>();
        let mut spawned = 0;
        for (&w, queues) in planned.iter().zip(all_queues) {
            let pipeline = self.slots[w].pipeline.take().unwrap_or_default();
            match self.spawn(w, queues, pipeline, peers.clone(), ack_tx.clone()) {
                Ok(()) => spawned += 1,
                Err(source) => {
                    self.started = None;
                    self.abort();
                    return Err(EngineError::Spawn {
                        worker: w as u16,
                        source,
                    });
                }
            }
        }
        drop(ack_tx);
        for _ in 0..spawned {
            match ack_rx.recv() {
                Ok((_, true)) => {}
                Ok((w, false)) => {
                    let core = self.slots[w as usize].core.unwrap_or_default();
                    self.started = None;
                    self.abort();
                    return Err(EngineError::Pin { worker: w, core });
                }
                Err(_) => break,
            }
        }
        for &w in &planned {
            self.slots[w].state = Some(WorkerState::Running);
        }
        Ok(())
    }

    /// Spawns worker `w` on its slot's core; the thread reports on `ack` whether it could
    /// pin itself (and exits at once if not).
    fn spawn(
        &mut self,
        w: usize,
        queues: Vec<Box<dyn crate::port::Queue>>,
        pipeline: Pipeline,
        peers: Vec<WorkerId>,
        ack: mpsc::Sender<(u16, bool)>,
    ) -> std::io::Result<()> {
        let slot = &self.slots[w];
        let core = slot.core;
        let mut all_peers = Vec::with_capacity(self.slots.len());
        all_peers.extend(peers);
        let worker = Worker {
            id: WorkerId(w as u16),
            mode: self.cfg.mode,
            idle: slot.idle,
            backoff_max: Duration::from_micros(slot.backoff_max_us),
            burst: self.cfg.burst,
            queues,
            caches: self
                .ports
                .iter()
                .map(|p| Cache::new(p.pool().clone(), self.cfg.burst))
                .collect(),
            routes: self.routes.clone(),
            rings: self.rings.clone(),
            slow_path: self.slow.clone(),
            pipeline,
            shared: slot.shared.clone(),
            control: self.control.clone(),
            peers: all_peers,
            epoch: self.started.unwrap_or_else(Instant::now),
        };
        let handle = std::thread::Builder::new()
            .name(format!("ss-w{w}"))
            .spawn(move || {
                if let Some(core) = core {
                    let ok = core_affinity::set_for_current(core_affinity::CoreId {
                        id: core.0 as usize,
                    });
                    let _ = ack.send((w as u16, ok));
                    if !ok {
                        return;
                    }
                } else {
                    let _ = ack.send((w as u16, true));
                }
                worker.run();
            })?;
        self.slots[w].thread = Some(handle);
        Ok(())
    }

    /// Stops every thread at once (start-up failure path).
    fn abort(&mut self) {
        for l in &self.control.live {
            l.store(false, Ordering::Release);
        }
        self.control.stop_rx.store(true, Ordering::Release);
        self.control.exit.store(true, Ordering::Release);
        for s in &mut self.slots {
            if let Some(t) = s.thread.take() {
                let _ = t.join();
            }
        }
    }

    /// A snapshot of every counter and latency histogram, readable while running.
    pub fn snapshot(&self) -> Report {
        let mut all = crate::stats::new_histogram();
        let workers = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                let state = s.state?;
                let h = s.shared.latency.read();
                let _ = all.add(&h);
                Some(WorkerReport {
                    id: WorkerId(i as u16),
                    core: s.core,
                    state,
                    counters: s.shared.counters.snapshot(),
                    latency: Percentiles::of(&h),
                })
            })
            .collect();
        Report {
            elapsed: self.started.map(|s| s.elapsed()).unwrap_or_default(),
            ports: self
                .ports
                .iter()
                .map(|p| {
                    let queues: Vec<QueueSnapshot> =
                        p.counters().iter().map(|c| c.snapshot()).collect();
                    let mut stats = QueueSnapshot::default();
                    for q in &queues {
                        stats.add(q);
                    }
                    PortReport {
                        id: p.id(),
                        kind: p.kind(),
                        info: p.describe(),
                        stats,
                        queues,
                    }
                })
                .collect(),
            workers,
            latency: Percentiles::of(&all),
            handlers: self
                .chain
                .specs
                .iter()
                .flatten()
                .filter_map(Spec::stats)
                .collect(),
        }
    }

    /// Packets received but not yet transmitted, dropped or handed to the slow path
    /// (cheap: counters only, no histogram copies).
    pub fn in_flight(&self) -> i64 {
        let mut received = 0i64;
        let mut done = 0i64;
        for p in &self.ports {
            let s = p.stats();
            received += s.rx_packets as i64;
            done += (s.tx_packets + s.drops.total()) as i64;
        }
        for s in &self.slots {
            let c = &s.shared.counters;
            received += c.generated.get() as i64;
            done += (c.slow_path.get() + c.drops.snapshot().total()) as i64;
        }
        received - done
    }

    fn quiescent(&self) -> bool {
        self.in_flight() == 0
            && self.rings.iter().all(|r| r.is_empty())
            && self
                .slots
                .iter()
                .filter(|s| s.running())
                .all(|s| s.shared.idle_streak.load(Ordering::Acquire) >= 2)
    }

    /// Waits until nothing is in flight and every worker has gone idle.
    fn wait_quiescent(&self, deadline: Instant) -> bool {
        while !self.quiescent() {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        true
    }

    /// Runs until every port's input is exhausted and nothing is in flight, then stops.
    pub fn run_to_end(mut self, timeout: Duration) -> Result<Report, EngineError> {
        self.start()?;
        let deadline = Instant::now() + timeout;
        loop {
            if self.ports.iter().all(|p| p.rx_finished()) && self.quiescent() {
                // Confirm after the workers have had another turn.
                std::thread::sleep(Duration::from_micros(200));
                if self.quiescent() {
                    break;
                }
            }
            if Instant::now() >= deadline {
                let in_flight = self.in_flight();
                let _ = self.stop();
                return Err(EngineError::Timeout { timeout, in_flight });
            }
            std::thread::sleep(Duration::from_micros(500));
        }
        self.stop()
    }

    /// Stops receiving and waits until every packet in flight has been transmitted, dropped
    /// or handed to the slow path; the workers keep running (see [`Engine::resume`]). The
    /// report has nothing in flight unless the drain timed out.
    pub fn drain(&mut self, timeout: Duration) -> Result<Report, EngineError> {
        self.control.stop_rx.store(true, Ordering::Release);
        if self.started.is_some() && !self.wait_quiescent(Instant::now() + timeout) {
            return Err(EngineError::Timeout {
                timeout,
                in_flight: self.in_flight(),
            });
        }
        Ok(self.snapshot())
    }

    /// Receives again after a drain.
    pub fn resume(&mut self) {
        self.control.stop_rx.store(false, Ordering::Release);
    }

    /// Stops receiving, drains in-flight packets, stops the workers at a batch boundary,
    /// closes the ports and checks that every frame is back in its pool and every packet is
    /// accounted for.
    pub fn stop(mut self) -> Result<Report, EngineError> {
        self.control.stop_rx.store(true, Ordering::Release);
        if self.started.is_some() {
            self.wait_quiescent(Instant::now() + DRAIN_TIMEOUT);
        }
        self.control.exit.store(true, Ordering::Release);
        let mut problems = Vec::new();
        for (i, s) in self.slots.iter_mut().enumerate() {
            if let Some(t) = s.thread.take() {
                if t.join().is_err() {
                    problems.push(format!("w{i} panicked"));
                }
            }
        }
        // Slow-path frames nobody consumed go back to their pools (they are already
        // counted as handed to the slow path).
        while let Some(f) = self.slow.pop() {
            // Pool ids equal port indices (checked in from_parts), so the pool exists.
            self.ports[f.pool().0 as usize].pool().free(f);
        }
        // Frames stranded in rings (only after a drain timeout) are dropped, not lost.
        for r in self.rings.iter() {
            while let Some(f) = r.pop() {
                problems.push(format!("{:?} stranded in a ring", f));
                if let Some(p) = self.ports.get(f.pool().0 as usize) {
                    p.pool().free(f);
                }
            }
        }
        let report = self.snapshot();
        for p in &self.ports {
            if let Err(e) = p.close() {
                problems.push(e.to_string());
            }
        }
        if let Err(e) = report.check_conservation() {
            problems.push(e);
        }
        if problems.is_empty() {
            Ok(report)
        } else {
            Err(EngineError::Accounting {
                problems,
                report: Box::new(report),
            })
        }
    }

    // ---- live changes -------------------------------------------------------------------

    fn require_running(&self) -> Result<(), ChangeError> {
        if self.started.is_none() {
            return Err(ChangeError::precondition(
                "engine",
                "the engine is not running; start it first",
            ));
        }
        Ok(())
    }

    /// Checks that `q` exists; the error names `field`.
    fn check_queue(&self, field: &str, q: QueueId) -> Result<(), ChangeError> {
        let Some(port) = self.ports.get(q.port.0 as usize) else {
            return Err(ChangeError::not_found(
                field,
                format!(
                    "port {} does not exist (there are {} ports)",
                    q.port,
                    self.ports.len()
                ),
            ));
        };
        if q.queue >= port.queue_count() {
            return Err(ChangeError::not_found(
                field,
                format!(
                    "{} has {} queues, so {q} does not exist",
                    q.port,
                    port.queue_count()
                ),
            ));
        }
        Ok(())
    }

    /// Checks that `w` is a running worker; the error names `field`.
    fn check_worker(&self, field: &str, w: WorkerId) -> Result<usize, ChangeError> {
        let i = w.0 as usize;
        match self.slots.get(i).and_then(|s| s.state) {
            Some(WorkerState::Running) => Ok(i),
            Some(WorkerState::Removed) => Err(ChangeError::not_found(
                field,
                format!("{w} was removed; `workers` lists the running ones"),
            )),
            _ => Err(ChangeError::not_found(
                field,
                format!("{w} does not exist; `workers` lists the running ones"),
            )),
        }
    }

    fn running_ids(&self) -> Vec<WorkerId> {
        (0..self.slots.len())
            .filter(|&i| self.slots[i].running())
            .map(|i| WorkerId(i as u16))
            .collect()
    }

    /// Sends one command to each worker named, then collects every reply: either every
    /// command is on its way or (on a full mailbox, which one-at-a-time use rules out)
    /// none is sent after the first failure.
    fn call_all(&self, cmds: Vec<(usize, Command)>) -> Result<Vec<Reply>, ChangeError> {
        let mut sent = Vec::with_capacity(cmds.len());
        for (w, cmd) in cmds {
            let sh = &self.slots[w].shared;
            // A reply left over from an earlier timed-out call is stale.
            while sh.replies.pop().is_some() {}
            if sh.commands.push(cmd).is_err() {
                return Err(ChangeError::Internal(format!(
                    "w{w}: command mailbox is full (the worker is not answering)"
                )));
            }
            sent.push(w);
        }
        let deadline = Instant::now() + REPLY_TIMEOUT;
        let mut replies = Vec::with_capacity(sent.len());
        for w in sent {
            let slot = &self.slots[w];
            let deadline = deadline + Duration::from_micros(slot.backoff_max_us);
            loop {
                if let Some(r) = slot.shared.replies.pop() {
                    replies.push(r);
                    break;
                }
                if slot.thread.as_ref().is_none_or(|t| t.is_finished()) {
                    return Err(ChangeError::Internal(format!("w{w} is not running")));
                }
                if Instant::now() >= deadline {
                    return Err(ChangeError::Internal(format!(
                        "w{w} did not answer within {REPLY_TIMEOUT:?}"
                    )));
                }
                std::thread::sleep(Duration::from_micros(20));
            }
        }
        Ok(replies)
    }

    fn call(&self, w: usize, cmd: Command) -> Result<Reply, ChangeError> {
        self.call_all(vec![(w, cmd)])
            .map(|mut r| r.pop().unwrap_or(Reply::Done))
    }

    /// Moves queue `q` to worker `to` without losing a packet: the old owner stops polling
    /// it at a batch boundary and hands the queue over; packets wait in the port meanwhile.
    /// A queue nobody owns is opened. Returns the previous owner.
    pub fn assign(&mut self, q: QueueId, to: WorkerId) -> Result<Option<WorkerId>, ChangeError> {
        self.require_running()?;
        self.check_queue("queue", q)?;
        let t = self.check_worker("worker", to)?;
        let from = self.queue_owner(q);
        if from == Some(to) {
            return Ok(from);
        }
        let handle = match from {
            None => {
                // Opening is the only step that can fail; do it before changing anything.
                let h = self.ports[q.port.0 as usize]
                    .open_queue(q.queue, self.cfg.burst)
                    .map_err(|e| ChangeError::precondition("queue", e.to_string()))?;
                self.routes.set(q, Some(to));
                h
            }
            Some(f) => {
                let f = f.0 as usize;
                // Route first: frames for q now travel to the new owner, which parks them
                // until the handle arrives; the old owner forwards what it still gets.
                self.routes.set(q, Some(to));
                match self.call(f, Command::Release(q)) {
                    Ok(Reply::Queue(h)) => {
                        self.slots[f].queues.retain(|&x| x != q);
                        h
                    }
                    Ok(other) => {
                        self.routes.set(q, Some(WorkerId(f as u16)));
                        return Err(ChangeError::Internal(format!(
                            "w{f} answered {other:?} to a release of {q}"
                        )));
                    }
                    Err(e) => {
                        self.routes.set(q, Some(WorkerId(f as u16)));
                        return Err(e);
                    }
                }
            }
        };
        self.slots[t].queues.push(q);
        self.call(t, Command::Adopt(handle))?;
        Ok(from)
    }

    /// Starts a worker on `core` (`None`: unpinned, for tests) and moves `queues` to it.
    /// Everything is checked before anything changes: the core must be allowed and free,
    /// the queues must exist, a slot must be free.
    pub fn add_worker(
        &mut self,
        core: Option<CoreId>,
        queues: &[QueueId],
    ) -> Result<WorkerId, ChangeError> {
        self.require_running()?;
        if let Some(c) = core {
            let allowed = crate::topology::allowed_cores();
            if !allowed.contains(&c.0) {
                return Err(ChangeError::precondition(
                    "core",
                    format!(
                        "{c} does not exist or is outside the allowed cpuset ({})",
                        crate::topology::format_cpuset(&allowed)
                    ),
                ));
            }
            if let Some(i) = self
                .slots
                .iter()
                .position(|s| s.running() && s.core == Some(c))
            {
                return Err(ChangeError::precondition(
                    "core",
                    format!("{c} is already used by w{i}"),
                ));
            }
        }
        for (i, q) in queues.iter().enumerate() {
            self.check_queue(&format!("queues[{i}]"), *q)?;
            if queues[..i].contains(q) {
                return Err(ChangeError::invalid(
                    format!("queues[{i}]"),
                    format!("{q} is listed twice"),
                ));
            }
        }
        let Some(k) = self
            .slots
            .iter()
            .position(|s| matches!(s.state, None | Some(WorkerState::Removed)))
        else {
            return Err(ChangeError::precondition(
                "worker",
                format!(
                    "all {} worker slots are in use; remove a worker first",
                    self.slots.len()
                ),
            ));
        };
        // Queues nobody owns are opened now, so that a port refusing one changes nothing.
        let mut opened = Vec::new();
        for q in queues {
            if self.queue_owner(*q).is_none() {
                let h = self.ports[q.port.0 as usize]
                    .open_queue(q.queue, self.cfg.burst)
                    .map_err(|e| ChangeError::precondition("queues", e.to_string()))?;
                opened.push(h);
            }
        }
        let mut peers = self.running_ids();
        peers.push(WorkerId(k as u16));
        peers.sort();
        {
            let s = &mut self.slots[k];
            s.core = core;
            s.queues.clear();
            s.idle = self.cfg.idle;
            s.backoff_max_us = self.cfg.backoff_max_us;
            s.shared.idle_streak.store(0, Ordering::Release);
        }
        let (ack_tx, ack_rx) = mpsc::channel();
        let pipeline = (self.chain.factory)();
        if let Err(e) = self.spawn(k, Vec::new(), pipeline, peers.clone(), ack_tx) {
            return Err(ChangeError::Internal(format!(
                "w{k}: cannot start a thread: {e}"
            )));
        }
        let pinned = matches!(ack_rx.recv(), Ok((_, true)));
        if !pinned {
            if let Some(t) = self.slots[k].thread.take() {
                let _ = t.join();
            }
            return Err(ChangeError::precondition(
                "core",
                format!("cannot pin a thread to {}", core.unwrap_or_default()),
            ));
        }
        self.slots[k].state = Some(WorkerState::Running);
        self.control.live[k].store(true, Ordering::Release);
        let others: Vec<(usize, Command)> = peers
            .iter()
            .filter(|w| w.0 as usize != k)
            .map(|w| (w.0 as usize, Command::SetPeers(peers.clone())))
            .collect();
        self.call_all(others)?;
        let id = WorkerId(k as u16);
        let mut opened = opened.into_iter();
        for q in queues {
            if self.queue_owner(*q).is_none() {
                if let Some(h) = opened.next() {
                    self.routes.set(*q, Some(id));
                    self.slots[k].queues.push(*q);
                    self.call(k, Command::Adopt(h))?;
                }
            } else {
                self.assign(*q, id)?;
            }
        }
        Ok(id)
    }

    /// Stops worker `w` without losing a packet: its queues move to the remaining workers
    /// (each to the one with the fewest queues), nobody sends it frames any more, it runs
    /// what waits on its ring and leaves. Its counters stay in the totals. Returns the
    /// moves.
    pub fn remove_worker(&mut self, w: WorkerId) -> Result<Vec<Moved>, ChangeError> {
        self.require_running()?;
        let k = self.check_worker("worker", w)?;
        let others: Vec<WorkerId> = self.running_ids().into_iter().filter(|&o| o != w).collect();
        if others.is_empty() {
            return Err(ChangeError::precondition(
                "worker",
                format!("{w} is the last worker; add another one first"),
            ));
        }
        let mut moves = Vec::new();
        for q in self.slots[k].queues.clone() {
            let to = *others
                .iter()
                .min_by_key(|o| (self.slots[o.0 as usize].queues.len(), o.0))
                .unwrap_or(&others[0]);
            self.assign(q, to)?;
            moves.push(Moved {
                queue: q,
                from: Some(w),
                to,
            });
        }
        // No new forwards to w; once every other worker has answered (a barrier: each has
        // finished the turns that might have sent it something), nothing more arrives.
        self.control.live[k].store(false, Ordering::Release);
        let barrier: Vec<(usize, Command)> = others
            .iter()
            .map(|o| (o.0 as usize, Command::SetPeers(others.clone())))
            .collect();
        self.call_all(barrier)?;
        self.call(k, Command::Exit)?;
        if let Some(t) = self.slots[k].thread.take() {
            if t.join().is_err() {
                return Err(ChangeError::Internal(format!("{w} panicked while leaving")));
            }
        }
        self.slots[k].state = Some(WorkerState::Removed);
        Ok(moves)
    }

    /// Sets the idle policy of one worker, or of all (and of workers added later) when
    /// `worker` is `None`. `backoff_max_us` keeps its value when `None`.
    pub fn set_idle(
        &mut self,
        worker: Option<WorkerId>,
        idle: Idle,
        backoff_max_us: Option<u64>,
    ) -> Result<(), ChangeError> {
        self.require_running()?;
        if let Some(us) = backoff_max_us {
            if !(1..=1_000_000).contains(&us) {
                return Err(ChangeError::invalid(
                    "backoff_max_us",
                    format!("{us} is out of range 1..=1000000 (default 200)"),
                ));
            }
        }
        let targets: Vec<usize> = match worker {
            Some(w) => vec![self.check_worker("worker", w)?],
            None => (0..self.slots.len())
                .filter(|&i| self.slots[i].running())
                .collect(),
        };
        let cmds = targets
            .iter()
            .map(|&i| {
                let us = backoff_max_us.unwrap_or(self.slots[i].backoff_max_us);
                (
                    i,
                    Command::SetIdle {
                        idle,
                        backoff_max: Duration::from_micros(us),
                    },
                )
            })
            .collect();
        for &i in &targets {
            let s = &mut self.slots[i];
            s.idle = idle;
            s.backoff_max_us = backoff_max_us.unwrap_or(s.backoff_max_us);
        }
        if worker.is_none() {
            self.cfg.idle = idle;
            self.cfg.backoff_max_us = backoff_max_us.unwrap_or(self.cfg.backoff_max_us);
        }
        self.call_all(cmds)?;
        Ok(())
    }

    /// Replaces the handler chain of every worker with one built from `specs`, if
    /// `base_version` (when given) is the current version and every spec is valid; returns
    /// the new version. Each worker switches between two bursts, so a packet sees the old
    /// chain or the new one, never a mix. A rejected update changes nothing.
    pub fn set_handlers(
        &mut self,
        base_version: Option<u64>,
        specs: Vec<Spec>,
    ) -> Result<u64, ChangeError> {
        if let Some(b) = base_version {
            if b != self.chain.version {
                return Err(ChangeError::precondition(
                    "base_version",
                    format!(
                        "the chain is at version {}, not {b}; fetch it again and retry",
                        self.chain.version
                    ),
                ));
            }
        }
        for (i, s) in specs.iter().enumerate() {
            if let Err(msg) = s.validate() {
                // Spec::validate starts its message with the field name.
                let (field, msg) = match msg.split_once(": ") {
                    Some((f, m)) if !f.contains(' ') => {
                        (format!("handlers[{i}].{f}"), m.to_string())
                    }
                    _ => (format!("handlers[{i}]"), msg),
                };
                return Err(ChangeError::invalid(field, msg));
            }
        }
        let names = specs.iter().map(|h| h.kind().to_string()).collect();
        let factory = spec_factory(specs.clone());
        self.swap_chain(factory)?;
        self.chain.specs = Some(specs);
        self.chain.names = names;
        Ok(self.chain.version)
    }

    /// Replaces every worker's chain with one from `factory` (embedders with their own
    /// handlers), and builds the chains of workers added later with it. Returns the new
    /// version.
    pub fn set_chain(&mut self, factory: ChainFactory) -> Result<u64, ChangeError> {
        self.chain.names = factory().names();
        self.swap_chain(factory)?;
        self.chain.specs = None;
        Ok(self.chain.version)
    }

    fn swap_chain(&mut self, factory: ChainFactory) -> Result<(), ChangeError> {
        let mut cmds = Vec::new();
        for (i, s) in self.slots.iter_mut().enumerate() {
            match s.state {
                Some(WorkerState::Planned) => s.pipeline = Some(factory()),
                Some(WorkerState::Running) => cmds.push((i, Command::SetPipeline(factory()))),
                _ => {}
            }
        }
        self.chain.factory = factory;
        self.chain.version += 1;
        // Every command is queued before the first reply is awaited, so even a slow worker
        // gets the new chain: the update is never half applied. Old chains come back in the
        // replies and are freed here, off the workers.
        self.call_all(cmds).map(drop)
    }
}

fn spec_factory(specs: Vec<Spec>) -> ChainFactory {
    Arc::new(move || Pipeline::new(specs.iter().map(|h| h.build()).collect()))
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.abort();
    }
}

fn mem_options(cfg: &EngineConfig, numa_node: Option<u32>) -> MemOptions {
    MemOptions {
        hugepages: cfg.hugepages,
        numa_node,
    }
}

/// Builds one port from its configuration.
pub fn build_port(
    id: PortId,
    cfg: &PortConfig,
    engine: &EngineConfig,
    base_dir: &Path,
) -> Result<Arc<dyn Port>, EngineError> {
    match cfg {
        PortConfig::Memory(m) => {
            let source = match m.source {
                MemorySource::Ring => Source::Ring,
                MemorySource::Generate => Source::Generate {
                    templates: (0..m.flows)
                        .map(|f| {
                            crate::wire::build::udp4_request_of_size(m.packet_size, f, m.dst_port)
                        })
                        .collect(),
                    limit: (m.count > 0).then_some(m.count),
                },
            };
            let port = crate::port::Memory::new(
                id,
                MemoryOptions {
                    queues: m.queues,
                    frames: m.frames,
                    frame_size: engine.frame_size,
                    memory: mem_options(engine, m.numa_node),
                    source,
                    sink: match m.sink {
                        MemorySink::Ring => Sink::Ring,
                        MemorySink::Discard => Sink::Discard,
                    },
                    ring_size: engine.ring_size.max(m.frames as usize),
                },
            )?;
            Ok(port)
        }
        PortConfig::Pcap(p) => {
            let opts = crate::port::pcap::PcapOptions::from_config(p, engine, base_dir);
            Ok(crate::port::Pcap::new(id, &opts)?)
        }
        PortConfig::Afxdp(a) => Ok(crate::port::afxdp::Afxdp::new(id, a, engine)?),
        #[cfg(feature = "dpdk")]
        PortConfig::Dpdk(d) => Ok(crate::port::dpdk::Dpdk::new(id, d, engine, base_dir)?),
        #[cfg(not(feature = "dpdk"))]
        PortConfig::Dpdk(_) => Err(EngineError::Port(PortError::Config {
            port: id,
            msg: crate::config::DPDK_FEATURE_MISSING.into(),
        })),
    }
}
