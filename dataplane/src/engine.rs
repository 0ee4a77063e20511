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

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::config::{Config, EngineConfig, MemorySink, MemorySource, PortConfig};
use crate::mem::{Cache, Options as MemOptions};
use crate::packet::{CoreId, PortId, QueueId, WorkerId};
use crate::pipeline::Pipeline;
use crate::port::memory::{MemoryOptions, Sink, Source};
use crate::port::{Port, PortError};
use crate::ring::Burst;
use crate::stats::{DropCounts, Percentiles, QueueSnapshot, WorkerSnapshot};
use crate::worker::{Control, Routes, Shared, Worker};

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
    pub stats: QueueSnapshot,
}

/// Per-worker figures in a snapshot.
#[derive(Debug, Clone, Serialize)]
pub struct WorkerReport {
    pub id: WorkerId,
    pub core: Option<CoreId>,
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

    /// Worker totals.
    pub fn worker_totals(&self) -> WorkerSnapshot {
        let mut t = WorkerSnapshot::default();
        for w in &self.workers {
            t.add(&w.counters);
        }
        t
    }

    /// Packets received but not yet transmitted, dropped or handed to the slow path.
    pub fn in_flight(&self) -> i64 {
        self.received() as i64
            - self.transmitted() as i64
            - self.drops().total() as i64
            - self.slow_path() as i64
    }

    /// Checks received == transmitted + dropped (by reason) + slow path, with nothing in
    /// flight, and that workers and ports agree on what crossed between them.
    pub fn check_conservation(&self) -> Result<(), String> {
        let w = self.worker_totals();
        let port_drops: u64 = self.ports.iter().map(|p| p.stats.drops.total()).sum();
        let mut problems = Vec::new();
        if self.in_flight() != 0 {
            problems.push(format!(
                "received {} != transmitted {} + dropped {} + slow path {} ({} unaccounted)",
                self.received(),
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

/// The running (or ready to run) data plane.
pub struct Engine {
    cfg: EngineConfig,
    ports: Vec<Arc<dyn Port>>,
    plans: Vec<WorkerPlan>,
    pipelines: Vec<Option<Pipeline>>,
    shared: Vec<Arc<Shared>>,
    control: Arc<Control>,
    rings: Arc<Vec<Burst>>,
    slow: Arc<Burst>,
    threads: Vec<JoinHandle<()>>,
    started: Option<Instant>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("ports", &self.ports.len())
            .field("plans", &self.plans)
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
        let pipelines = (0..plans.len())
            .map(|_| Pipeline::new(cfg.handlers.iter().map(|h| h.build()).collect()))
            .collect();
        Engine::from_parts(&cfg.engine, ports, plans, pipelines)
    }

    /// Assembles an engine from ready-made ports and one handler chain per worker (for
    /// embedders with their own handlers, tests and benches).
    pub fn from_parts(
        cfg: &EngineConfig,
        ports: Vec<Arc<dyn Port>>,
        plans: Vec<WorkerPlan>,
        pipelines: Vec<Pipeline>,
    ) -> Result<Engine, EngineError> {
        if plans.is_empty() || plans.len() > u16::MAX as usize {
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
        let n = plans.len();
        Ok(Engine {
            cfg: cfg.clone(),
            ports,
            plans,
            pipelines: pipelines.into_iter().map(Some).collect(),
            shared: (0..n).map(|_| Arc::new(Shared::default())).collect(),
            control: Arc::new(Control::default()),
            rings: Arc::new((0..n).map(|_| Burst::new(cfg.ring_size)).collect()),
            slow: Arc::new(Burst::new(cfg.ring_size)),
            threads: Vec::new(),
            started: None,
        })
    }

    /// The ports, indexed by port id.
    pub fn ports(&self) -> &[Arc<dyn Port>] {
        &self.ports
    }

    /// Frames handed to the slow path wait here; whoever consumes them frees them to their
    /// port's pool.
    pub fn slow_path(&self) -> &Arc<Burst> {
        &self.slow
    }

    /// Opens the queues, spawns and pins the workers. Fails (and leaves nothing running)
    /// when a queue cannot be opened or a core cannot be pinned.
    pub fn start(&mut self) -> Result<(), EngineError> {
        if self.started.is_some() {
            return Ok(());
        }
        let n = self.plans.len() as u16;
        let mut routes = Routes {
            owners: self
                .ports
                .iter()
                .map(|p| vec![None; p.queue_count() as usize])
                .collect(),
        };
        for (w, plan) in self.plans.iter().enumerate() {
            for q in &plan.queues {
                let slot = routes
                    .owners
                    .get_mut(q.port.0 as usize)
                    .and_then(|p| p.get_mut(q.queue as usize))
                    .ok_or_else(|| EngineError::Plan(format!("w{w}: {q} does not exist")))?;
                if let Some(other) = slot {
                    return Err(EngineError::Plan(format!(
                        "{q} is owned by both {other} and w{w}"
                    )));
                }
                *slot = Some(WorkerId(w as u16));
            }
        }
        let routes = Arc::new(routes);
        // core_affinity panics (inside libc's CPU_SET) on a core beyond the set size, so
        // check against the allowed cpuset first.
        let allowed = crate::topology::allowed_cores();
        for (w, plan) in self.plans.iter().enumerate() {
            if let Some(core) = plan.core {
                if !allowed.contains(&core.0) {
                    return Err(EngineError::Pin {
                        worker: w as u16,
                        core,
                    });
                }
            }
        }
        // Open every queue before spawning anything, so a failure leaves nothing running.
        let mut all_queues = Vec::with_capacity(self.plans.len());
        for plan in &self.plans {
            let mut qs = Vec::with_capacity(plan.queues.len());
            for q in &plan.queues {
                let port = self.ports.get(q.port.0 as usize).ok_or_else(|| {
                    EngineError::Plan(format!("{q}: port {} does not exist", q.port))
                })?;
                qs.push(port.open_queue(q.queue, self.cfg.burst)?);
            }
            all_queues.push(qs);
        }
        let epoch = Instant::now();
        let (ack_tx, ack_rx) = mpsc::channel::<(u16, bool)>();
        for (i, queues) in all_queues.into_iter().enumerate() {
            let plan = self.plans[i].clone();
            let worker = Worker {
                id: WorkerId(i as u16),
                workers: n,
                mode: self.cfg.mode,
                idle: self.cfg.idle,
                backoff_max: Duration::from_micros(self.cfg.backoff_max_us),
                burst: self.cfg.burst,
                queues,
                caches: self
                    .ports
                    .iter()
                    .map(|p| Cache::new(p.pool().clone(), self.cfg.burst))
                    .collect(),
                routes: routes.clone(),
                rings: self.rings.clone(),
                slow_path: self.slow.clone(),
                pipeline: self.pipelines[i].take().unwrap_or_default(),
                shared: self.shared[i].clone(),
                control: self.control.clone(),
                epoch,
            };
            let ack = ack_tx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("ss-w{i}"))
                .spawn(move || {
                    if let Some(core) = plan.core {
                        let ok = core_affinity::set_for_current(core_affinity::CoreId {
                            id: core.0 as usize,
                        });
                        let _ = ack.send((i as u16, ok));
                        if !ok {
                            return;
                        }
                    } else {
                        let _ = ack.send((i as u16, true));
                    }
                    worker.run();
                });
            match spawned {
                Ok(h) => self.threads.push(h),
                Err(source) => {
                    self.abort();
                    return Err(EngineError::Spawn {
                        worker: i as u16,
                        source,
                    });
                }
            }
        }
        drop(ack_tx);
        for _ in 0..self.threads.len() {
            match ack_rx.recv() {
                Ok((_, true)) => {}
                Ok((w, false)) => {
                    let core = self.plans[w as usize].core.unwrap_or_default();
                    self.abort();
                    return Err(EngineError::Pin { worker: w, core });
                }
                Err(_) => break,
            }
        }
        self.started = Some(epoch);
        Ok(())
    }

    /// Stops every thread at once (start-up failure path).
    fn abort(&mut self) {
        self.control.stop_rx.store(true, Ordering::Release);
        self.control.exit.store(true, Ordering::Release);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }

    /// A snapshot of every counter and latency histogram, readable while running.
    pub fn snapshot(&self) -> Report {
        let mut all = crate::stats::new_histogram();
        let workers = self
            .shared
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let h = s.latency.read();
                let _ = all.add(&h);
                WorkerReport {
                    id: WorkerId(i as u16),
                    core: self.plans[i].core,
                    counters: s.counters.snapshot(),
                    latency: Percentiles::of(&h),
                }
            })
            .collect();
        Report {
            elapsed: self.started.map(|s| s.elapsed()).unwrap_or_default(),
            ports: self
                .ports
                .iter()
                .map(|p| PortReport {
                    id: p.id(),
                    kind: p.kind(),
                    stats: p.stats(),
                })
                .collect(),
            workers,
            latency: Percentiles::of(&all),
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
        for w in &self.shared {
            let c = &w.counters;
            done += (c.slow_path.get() + c.drops.snapshot().total()) as i64;
        }
        received - done
    }

    fn quiescent(&self) -> bool {
        self.in_flight() == 0
            && self.rings.iter().all(|r| r.is_empty())
            && self
                .shared
                .iter()
                .all(|s| s.idle_streak.load(Ordering::Acquire) >= 2)
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

    /// Stops receiving, drains in-flight packets, stops the workers at a batch boundary,
    /// closes the ports and checks that every frame is back in its pool and every packet is
    /// accounted for.
    pub fn stop(mut self) -> Result<Report, EngineError> {
        self.control.stop_rx.store(true, Ordering::Release);
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        if self.started.is_some() {
            while !self.quiescent() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        self.control.exit.store(true, Ordering::Release);
        let mut problems = Vec::new();
        for (i, t) in self.threads.drain(..).enumerate() {
            if t.join().is_err() {
                problems.push(format!("w{i} panicked"));
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
    }
}
