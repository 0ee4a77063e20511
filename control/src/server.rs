//! The gRPC server: `slipstream.v1` services, gRPC health and reflection, on an owner-only
//! Unix socket and optionally on TCP with mutual TLS.
//!
//! It runs on its own thread with a small tokio runtime, never on a data-plane core. The
//! engine sits behind a mutex shared with the binary's main loop ([`SharedEngine`]); a
//! handler validates what the engine cannot know (the machine's topology, the placement
//! policy, the shape of the request), then calls one engine method on the blocking pool.
//! The engine validates the rest and carries the change out through the workers' command
//! mailboxes, so no handler touches data-plane state directly and the workers never see
//! the lock. The `Lb` service is the exception that proves the rule: an `lb` handler's
//! live state has its own versioned, all-or-nothing API (`lb::Control`) that workers pick
//! up between bursts without a command, reached through the chain's specs ([`crate::lb`]).
//!
//! Shutdown is cooperative: the Shutdown call raises the stop flag the binary's main loop
//! watches (the same flag SIGINT and SIGTERM raise), and answers once the binary has
//! stopped the engine and handed the final counts to [`Daemon::finish`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dataplane::config::{ControlConfig, Idle, Mode, PortConfig};
use dataplane::control::WorkerState;
use dataplane::engine::{Engine, EngineError, Report};
use dataplane::topology::{self, Topology};
use dataplane::{CoreId, QueueId, WorkerId};
use tokio::sync::watch;
use tonic::transport::Server;
use tonic::{Request, Response, Status};

use crate::convert::{self, invalid};
use crate::listen::{self, ListenError};
use crate::pb;
use crate::pb::handlers_server::{Handlers, HandlersServer};
use crate::pb::lb_server::{Lb, LbServer};
use crate::pb::placement_server::{Placement, PlacementServer};
use crate::pb::stats_server::{Stats, StatsServer};
use crate::pb::system_server::{System, SystemServer};
use crate::pb::workers_server::{Workers, WorkersServer};
use crate::tls::{self, Pem, TlsError};

/// The engine, shared by the binary's main loop and the server. `None` once stopped.
pub type SharedEngine = Arc<Mutex<Option<Engine>>>;

/// Longest `Daemon::finish` waits for open calls and streams to end.
const GRACE: Duration = Duration::from_secs(3);

/// Longest a Drain may take when the request does not say.
const DRAIN_DEFAULT: Duration = Duration::from_secs(5);

/// Errors starting the server.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Listen(#[from] ListenError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("control: {0}")]
    Io(#[from] std::io::Error),
    #[error("control: reflection: {0}")]
    Reflection(String),
}

/// What the server knows about a port beyond what the engine knows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortInfo {
    /// Network interface, for ports on one (read for NUMA locality in sysfs).
    pub interface: Option<String>,
    /// NUMA node the port's memory was bound to.
    pub memory_node: Option<u32>,
}

impl PortInfo {
    pub fn from_config(p: &PortConfig) -> PortInfo {
        match p {
            PortConfig::Memory(m) => PortInfo {
                interface: None,
                memory_node: m.numa_node,
            },
            PortConfig::Pcap(c) => PortInfo {
                interface: None,
                memory_node: c.numa_node,
            },
            PortConfig::Afxdp(a) => PortInfo {
                interface: Some(a.interface.clone()),
                memory_node: a.numa_node,
            },
            // Virtual devices on an interface say so (`net_af_xdp0,iface=eth1`); a PCI
            // device's node is the EAL's business, reported through `socket` if set.
            PortConfig::Dpdk(d) => PortInfo {
                interface: d
                    .device
                    .split(',')
                    .find_map(|kv| kv.strip_prefix("iface="))
                    .map(str::to_string),
                memory_node: d.socket,
            },
        }
    }
}

/// The TCP listener: address and PEM material.
#[derive(Debug, Clone)]
pub struct TcpOptions {
    pub addr: SocketAddr,
    pub cert: Pem,
    pub key: Pem,
    pub ca: Pem,
}

/// Where and how to serve.
#[derive(Debug, Clone)]
pub struct Options {
    /// Unix socket path; `None`: no Unix socket.
    pub socket: Option<PathBuf>,
    pub tcp: Option<TcpOptions>,
    /// sysfs root for the topology. Default `/sys`; tests use a fake tree.
    pub sysfs: PathBuf,
    /// Per port, indexed by port id.
    pub ports: Vec<PortInfo>,
}

impl Options {
    /// From the `[control]` section (TLS paths already resolved) and the ports.
    pub fn from_config(cfg: &ControlConfig, ports: &[PortConfig]) -> Result<Options, ServeError> {
        let tcp = match (&cfg.tcp, &cfg.tls_cert, &cfg.tls_key, &cfg.tls_ca) {
            (Some(addr), Some(cert), Some(key), Some(ca)) => Some(TcpOptions {
                addr: *addr,
                cert: Pem::read(cert, "certificate")?,
                key: Pem::read(key, "private key")?,
                ca: Pem::read(ca, "CA certificate")?,
            }),
            _ => None,
        };
        Ok(Options {
            socket: Some(cfg.socket.clone()),
            tcp,
            sysfs: PathBuf::from(topology::SYSFS),
            ports: ports.iter().map(PortInfo::from_config).collect(),
        })
    }
}

/// The final counts, as the Shutdown call answers them.
pub fn outcome(result: &Result<Report, EngineError>) -> pb::ShutdownResponse {
    match result {
        Ok(r) => pb::ShutdownResponse {
            totals: Some(convert::totals(r)),
            accounting_ok: true,
            problems: Vec::new(),
        },
        Err(EngineError::Accounting { problems, report }) => pb::ShutdownResponse {
            totals: Some(convert::totals(report)),
            accounting_ok: false,
            problems: problems.clone(),
        },
        Err(e) => pb::ShutdownResponse {
            totals: None,
            accounting_ok: false,
            problems: vec![e.to_string()],
        },
    }
}

struct State {
    engine: SharedEngine,
    stop: Arc<AtomicBool>,
    finished: watch::Sender<Option<pb::ShutdownResponse>>,
    sysfs: PathBuf,
    ports: Vec<PortInfo>,
    /// NUMA policy and explicit node.
    placement: Mutex<(pb::NumaPolicy, Option<u32>)>,
    rejected: Mutex<Option<pb::Rejection>>,
    listeners: Vec<String>,
}

/// The running server.
pub struct Daemon {
    state: Arc<State>,
    shutdown: watch::Sender<bool>,
    done: std::sync::mpsc::Receiver<()>,
    _unix: Option<listen::UnixSocket>,
}

impl std::fmt::Debug for Daemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Daemon")
            .field("listeners", &self.state.listeners)
            .finish()
    }
}

impl Daemon {
    /// Binds the listeners (errors surface here, before anything is served) and starts
    /// serving on a thread of its own. `stop` is raised by the Shutdown call.
    pub fn start(
        engine: SharedEngine,
        stop: Arc<AtomicBool>,
        opts: Options,
    ) -> Result<Daemon, ServeError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .max_blocking_threads(4)
            .thread_name("ss-ctl")
            .enable_all()
            .build()?;
        let mut unix = opts.socket.as_deref().map(listen::bind_unix).transpose()?;
        let tls = match &opts.tcp {
            Some(t) => Some((
                t.addr,
                Arc::new(tls::server_config(&t.cert, &t.key, &t.ca)?),
            )),
            None => None,
        };
        let (unix_listener, tcp) = rt.block_on(async {
            let u = match unix.as_mut() {
                Some(u) => Some(u.take_listener()?),
                None => None,
            };
            let t = match &tls {
                Some((addr, cfg)) => {
                    let l = tokio::net::TcpListener::bind(addr)
                        .await
                        .map_err(|source| ListenError::Tcp {
                            addr: *addr,
                            source,
                        })?;
                    Some((l, cfg.clone()))
                }
                None => None,
            };
            Ok::<_, ServeError>((u, t))
        })?;
        let mut listeners = Vec::new();
        if let Some(u) = &unix {
            listeners.push(format!("unix:{}", u.path.display()));
        }
        if let Some((l, _)) = &tcp {
            listeners.push(format!("https://{}", l.local_addr()?));
        }
        let (finished, _) = watch::channel(None);
        let state = Arc::new(State {
            engine,
            stop,
            finished,
            sysfs: opts.sysfs,
            ports: opts.ports,
            placement: Mutex::new((pb::NumaPolicy::Local, None)),
            rejected: Mutex::new(None),
            listeners,
        });
        let reflection = |v1: bool| {
            let b = tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET);
            if v1 {
                b.build_v1().map(|s| (Some(s), None))
            } else {
                b.build_v1alpha().map(|s| (None, Some(s)))
            }
            .map_err(|e| ServeError::Reflection(e.to_string()))
        };
        let (refl_v1, _) = reflection(true)?;
        let (_, refl_v1alpha) = reflection(false)?;
        let (refl_v1, refl_v1alpha) = (
            refl_v1.ok_or_else(|| ServeError::Reflection("v1".into()))?,
            refl_v1alpha.ok_or_else(|| ServeError::Reflection("v1alpha".into()))?,
        );
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (done_tx, done) = std::sync::mpsc::channel();
        let api = Api {
            state: state.clone(),
        };
        std::thread::Builder::new()
            .name("ss-ctl".into())
            .spawn(move || {
                rt.block_on(async move {
                    let (reporter, health) = tonic_health::server::health_reporter();
                    reporter.set_serving::<SystemServer<Api>>().await;
                    reporter.set_serving::<WorkersServer<Api>>().await;
                    reporter.set_serving::<PlacementServer<Api>>().await;
                    reporter.set_serving::<StatsServer<Api>>().await;
                    reporter.set_serving::<HandlersServer<Api>>().await;
                    reporter.set_serving::<LbServer<Api>>().await;
                    let router = || {
                        Server::builder()
                            .add_service(health.clone())
                            .add_service(refl_v1.clone())
                            .add_service(refl_v1alpha.clone())
                            .add_service(SystemServer::new(api.clone()))
                            .add_service(WorkersServer::new(api.clone()))
                            .add_service(PlacementServer::new(api.clone()))
                            .add_service(StatsServer::new(api.clone()))
                            .add_service(HandlersServer::new(api.clone()))
                            .add_service(LbServer::new(api.clone()))
                    };
                    let stopped = |mut rx: watch::Receiver<bool>| async move {
                        let _ = rx.wait_for(|s| *s).await;
                    };
                    let unix = async {
                        if let Some(l) = unix_listener {
                            let incoming = tokio_stream::wrappers::UnixListenerStream::new(l);
                            if let Err(e) = router()
                                .serve_with_incoming_shutdown(
                                    incoming,
                                    stopped(shutdown_rx.clone()),
                                )
                                .await
                            {
                                tracing::error!("control: unix socket: {e}");
                            }
                        }
                    };
                    let tcp = async {
                        if let Some((l, cfg)) = tcp {
                            let incoming = listen::tls_incoming(l, cfg);
                            if let Err(e) = router()
                                .serve_with_incoming_shutdown(
                                    incoming,
                                    stopped(shutdown_rx.clone()),
                                )
                                .await
                            {
                                tracing::error!("control: tcp: {e}");
                            }
                        }
                    };
                    tokio::join!(unix, tcp);
                });
                rt.shutdown_timeout(Duration::from_millis(200));
                let _ = done_tx.send(());
            })?;
        Ok(Daemon {
            state,
            shutdown,
            done,
            _unix: unix,
        })
    }

    /// Where the server listens (`unix:PATH`, `https://ADDR`).
    pub fn listeners(&self) -> &[String] {
        &self.state.listeners
    }

    /// Answers waiting Shutdown calls with the final counts, then stops serving: open calls
    /// and streams get a moment to finish, and the socket is removed.
    pub fn finish(self, outcome: pb::ShutdownResponse) {
        self.state.finished.send_replace(Some(outcome));
        // Let the Shutdown call's answer go out before the listeners close.
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.state.finished.borrow().is_none() {
            self.state.finished.send_replace(Some(pb::ShutdownResponse {
                totals: None,
                accounting_ok: false,
                problems: vec!["the control server stopped before the engine".into()],
            }));
        }
        let _ = self.shutdown.send(true);
        let _ = self.done.recv_timeout(GRACE);
    }
}

#[derive(Clone)]
struct Api {
    state: Arc<State>,
}

impl Api {
    /// Runs `f` with the engine on the blocking pool (engine calls wait for workers).
    async fn engine<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Engine) -> Result<T, Status> + Send + 'static,
    ) -> Result<T, Status> {
        let st = self.state.clone();
        tokio::task::spawn_blocking(move || {
            let mut g = st.engine.lock().unwrap_or_else(|e| e.into_inner());
            match g.as_mut() {
                Some(e) => f(e),
                None => Err(Status::unavailable("the engine has stopped")),
            }
        })
        .await
        .map_err(|e| Status::internal(format!("control task failed: {e}")))?
    }

    fn topology(&self) -> Topology {
        Topology::read(&self.state.sysfs, topology::allowed_cores())
    }

    /// NUMA node of port `i`, and where that comes from.
    fn port_node(&self, i: usize) -> (Option<u32>, &'static str) {
        let info = self.state.ports.get(i).cloned().unwrap_or_default();
        let nic = info
            .interface
            .as_deref()
            .and_then(|n| topology::read_nic(&self.state.sysfs, n))
            .and_then(|n| n.numa_node);
        match (nic, info.memory_node) {
            (Some(n), _) => (Some(n), "sysfs"),
            (None, Some(n)) => (Some(n), "config"),
            _ => (None, "unknown"),
        }
    }

    /// Where the placement policy wants workers for port `i`.
    fn preferred_node(&self, i: usize) -> Option<u32> {
        let (policy, node) = *self
            .state
            .placement
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        match policy {
            pb::NumaPolicy::Explicit => node,
            _ => self.port_node(i).0,
        }
    }
}

fn mode_name(m: Mode) -> &'static str {
    match m {
        Mode::RunToCompletion => "run-to-completion",
        Mode::Pipeline => "pipeline",
    }
}

fn worker_msg(w: &dataplane::control::WorkerInfo, topo: &Topology) -> pb::Worker {
    pb::Worker {
        id: w.id.0 as u32,
        core: w.core.map(|c| c.0),
        numa_node: w.core.and_then(|c| topo.node_of(c.0)),
        state: convert::worker_state(w.state) as i32,
        queues: w.queues.iter().map(|q| convert::queue_ref(*q)).collect(),
        idle: convert::idle(w.idle) as i32,
        backoff_max_us: w.backoff_max_us,
    }
}

#[tonic::async_trait]
impl System for Api {
    async fn get_status(
        &self,
        _: Request<pb::GetStatusRequest>,
    ) -> Result<Response<pb::Status>, Status> {
        let listeners = self.state.listeners.clone();
        let s = self
            .engine(move |e| {
                let r = e.snapshot();
                Ok(pb::Status {
                    version: env!("CARGO_PKG_VERSION").to_string(),
                    uptime_ns: r.elapsed.as_nanos() as u64,
                    mode: mode_name(e.config().mode).to_string(),
                    receiving: e.receiving(),
                    workers_running: e
                        .workers()
                        .iter()
                        .filter(|w| w.state == WorkerState::Running)
                        .count() as u32,
                    worker_slots: e.worker_slots() as u32,
                    ports: e.ports().len() as u32,
                    handlers_version: e.chain().version,
                    totals: Some(convert::totals(&r)),
                    listeners,
                })
            })
            .await?;
        Ok(Response::new(s))
    }

    async fn get_topology(
        &self,
        _: Request<pb::GetTopologyRequest>,
    ) -> Result<Response<pb::Topology>, Status> {
        let topo = self.topology();
        let (ports, workers) = self
            .engine(|e| {
                let ports: Vec<(u32, &'static str, Vec<Option<WorkerId>>)> = e
                    .ports()
                    .iter()
                    .map(|p| {
                        let owners = (0..p.queue_count())
                            .map(|q| {
                                e.queue_owner(QueueId {
                                    port: p.id(),
                                    queue: q,
                                })
                            })
                            .collect();
                        (p.id().0 as u32, p.kind(), owners)
                    })
                    .collect();
                Ok((ports, e.workers()))
            })
            .await?;
        let worker_on = |cpu: u32| {
            workers
                .iter()
                .find(|w| w.state == WorkerState::Running && w.core == Some(CoreId(cpu)))
                .map(|w| w.id.0 as u32)
        };
        let t = pb::Topology {
            cpus: topo
                .cpus
                .iter()
                .map(|c| pb::Cpu {
                    id: c.id,
                    online: c.online,
                    allowed: c.allowed,
                    node: c.node,
                    core_id: c.core_id,
                    package: c.package,
                    worker: worker_on(c.id),
                })
                .collect(),
            nodes: topo
                .nodes
                .iter()
                .map(|n| pb::NumaNode {
                    id: n.id,
                    cpus: topology::format_cpuset(&n.cpus),
                    memory_total_bytes: n.mem_total,
                    memory_free_bytes: n.mem_free,
                    hugepages_2m: n.hugepages_2m,
                    hugepages_2m_free: n.hugepages_2m_free,
                })
                .collect(),
            ports: ports
                .into_iter()
                .map(|(id, kind, owners)| {
                    let (node, source) = self.port_node(id as usize);
                    pb::Port {
                        id,
                        kind: kind.to_string(),
                        interface: self
                            .state
                            .ports
                            .get(id as usize)
                            .and_then(|p| p.interface.clone())
                            .unwrap_or_default(),
                        numa_node: node,
                        numa_source: source.to_string(),
                        queues: owners
                            .iter()
                            .enumerate()
                            .map(|(q, w)| pb::Queue {
                                port: id,
                                queue: q as u32,
                                worker: w.map(|w| w.0 as u32),
                            })
                            .collect(),
                    }
                })
                .collect(),
            allowed: topology::format_cpuset(&topo.allowed),
        };
        Ok(Response::new(t))
    }

    async fn drain(
        &self,
        req: Request<pb::DrainRequest>,
    ) -> Result<Response<pb::DrainResponse>, Status> {
        let ms = req.into_inner().timeout_ms;
        if ms > 600_000 {
            return Err(invalid(
                "timeout_ms",
                format!("{ms} is above 600000 (10 minutes)"),
            ));
        }
        let timeout = if ms == 0 {
            DRAIN_DEFAULT
        } else {
            Duration::from_millis(ms as u64)
        };
        let r = self
            .engine(move |e| {
                e.drain(timeout)
                    .map_err(|err| Status::deadline_exceeded(format!("timeout_ms: {err}")))
            })
            .await?;
        Ok(Response::new(pb::DrainResponse {
            totals: Some(convert::totals(&r)),
        }))
    }

    async fn resume(
        &self,
        _: Request<pb::ResumeRequest>,
    ) -> Result<Response<pb::ResumeResponse>, Status> {
        self.engine(|e| {
            e.resume();
            Ok(())
        })
        .await?;
        Ok(Response::new(pb::ResumeResponse {}))
    }

    async fn shutdown(
        &self,
        _: Request<pb::ShutdownRequest>,
    ) -> Result<Response<pb::ShutdownResponse>, Status> {
        let mut rx = self.state.finished.subscribe();
        self.state.stop.store(true, Ordering::Release);
        let out = rx
            .wait_for(|f| f.is_some())
            .await
            .map_err(|_| Status::unavailable("the server stopped before the engine"))?
            .clone()
            .unwrap_or_default();
        Ok(Response::new(out))
    }
}

#[tonic::async_trait]
impl Workers for Api {
    async fn list(
        &self,
        _: Request<pb::ListWorkersRequest>,
    ) -> Result<Response<pb::WorkerList>, Status> {
        let topo = self.topology();
        let workers = self.engine(|e| Ok(e.workers())).await?;
        Ok(Response::new(pb::WorkerList {
            workers: workers.iter().map(|w| worker_msg(w, &topo)).collect(),
        }))
    }

    async fn add(
        &self,
        req: Request<pb::AddWorkerRequest>,
    ) -> Result<Response<pb::AddWorkerResponse>, Status> {
        let req = req.into_inner();
        let topo = self.topology();
        let queues = req
            .queues
            .iter()
            .enumerate()
            .map(|(i, q)| convert::queue_id(&format!("queues[{i}]"), Some(q)))
            .collect::<Result<Vec<_>, _>>()?;
        let busy: Vec<CoreId> = self
            .engine(|e| {
                Ok(e.workers()
                    .iter()
                    .filter(|w| w.state == WorkerState::Running)
                    .filter_map(|w| w.core)
                    .collect())
            })
            .await?;
        let core = match req.core {
            Some(c) => {
                if !topo.cpus.is_empty() {
                    match topo.cpu(c) {
                        None => {
                            return Err(invalid(
                                "core",
                                format!(
                                    "core{c} does not exist (this machine has CPUs {})",
                                    topology::format_cpuset(
                                        &topo.cpus.iter().map(|c| c.id).collect()
                                    )
                                ),
                            ))
                        }
                        Some(cpu) if !cpu.online => {
                            return Err(Status::failed_precondition(format!(
                                "core: core{c} is offline"
                            )))
                        }
                        _ => {}
                    }
                }
                CoreId(c)
            }
            None => {
                // The placement policy picks: a free allowed core on the preferred node,
                // the last one (core 0 usually does the housekeeping), else (local policy
                // only) any free allowed core.
                let port = queues.first().map_or(0, |q| q.port.0 as usize);
                let node = self.preferred_node(port);
                let explicit = self
                    .state
                    .placement
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .0
                    == pb::NumaPolicy::Explicit;
                let free = |on: Option<u32>| {
                    topo.cpus
                        .iter()
                        .filter(|c| c.allowed && c.online && !busy.contains(&CoreId(c.id)))
                        .filter(|c| on.is_none() || c.node == on)
                        .map(|c| c.id)
                        .next_back()
                };
                match free(node).or_else(|| if explicit { None } else { free(None) }) {
                    Some(c) => CoreId(c),
                    None => {
                        return Err(Status::failed_precondition(match node {
                            Some(n) => format!(
                                "core: no free allowed core on node {n}; name one with --core"
                            ),
                            None => "core: no free allowed core; remove a worker first".to_string(),
                        }))
                    }
                }
            }
        };
        let (info, moved) = self
            .engine(move |e| {
                let before: Vec<Option<WorkerId>> =
                    queues.iter().map(|q| e.queue_owner(*q)).collect();
                let id = e
                    .add_worker(Some(core), &queues)
                    .map_err(|err| convert::status(&err))?;
                let info = e.workers().into_iter().find(|w| w.id == id);
                let moved = queues
                    .iter()
                    .zip(before)
                    .map(|(q, from)| pb::Move {
                        queue: Some(convert::queue_ref(*q)),
                        from: from.map(|w| w.0 as u32),
                        to: id.0 as u32,
                    })
                    .collect();
                Ok((info, moved))
            })
            .await?;
        Ok(Response::new(pb::AddWorkerResponse {
            worker: info.map(|w| worker_msg(&w, &topo)),
            moved,
        }))
    }

    async fn remove(
        &self,
        req: Request<pb::RemoveWorkerRequest>,
    ) -> Result<Response<pb::RemoveWorkerResponse>, Status> {
        let w = convert::worker_id("worker", req.into_inner().worker)?;
        let moves = self
            .engine(move |e| e.remove_worker(w).map_err(|err| convert::status(&err)))
            .await?;
        Ok(Response::new(pb::RemoveWorkerResponse {
            moved: moves.iter().map(convert::moved).collect(),
        }))
    }

    async fn assign(
        &self,
        req: Request<pb::AssignQueueRequest>,
    ) -> Result<Response<pb::AssignQueueResponse>, Status> {
        let req = req.into_inner();
        let q = convert::queue_id("queue", req.queue.as_ref())?;
        let w = convert::worker_id("worker", req.worker)?;
        let from = self
            .engine(move |e| e.assign(q, w).map_err(|err| convert::status(&err)))
            .await?;
        Ok(Response::new(pb::AssignQueueResponse {
            moved: Some(pb::Move {
                queue: Some(convert::queue_ref(q)),
                from: from.map(|w| w.0 as u32),
                to: w.0 as u32,
            }),
        }))
    }

    async fn set_idle(
        &self,
        req: Request<pb::SetIdleRequest>,
    ) -> Result<Response<pb::WorkerList>, Status> {
        let req = req.into_inner();
        let idle = match pb::IdlePolicy::try_from(req.idle) {
            Ok(pb::IdlePolicy::BusyPoll) => Idle::BusyPoll,
            Ok(pb::IdlePolicy::Backoff) => Idle::Backoff,
            _ => {
                return Err(invalid(
                    "idle",
                    "required: IDLE_POLICY_BUSY_POLL or IDLE_POLICY_BACKOFF",
                ))
            }
        };
        let worker = req
            .worker
            .map(|w| convert::worker_id("worker", w))
            .transpose()?;
        let topo = self.topology();
        let workers = self
            .engine(move |e| {
                e.set_idle(worker, idle, req.backoff_max_us)
                    .map_err(|err| convert::status(&err))?;
                Ok(e.workers())
            })
            .await?;
        Ok(Response::new(pb::WorkerList {
            workers: workers.iter().map(|w| worker_msg(w, &topo)).collect(),
        }))
    }
}

impl Api {
    async fn placement_state(&self) -> Result<pb::PlacementState, Status> {
        let topo = self.topology();
        let (workers, nports) = self.engine(|e| Ok((e.workers(), e.ports().len()))).await?;
        let (policy, node) = *self
            .state
            .placement
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let port_node = |p: usize| self.port_node(p).0;
        Ok(pb::PlacementState {
            policy: policy as i32,
            node,
            ports: (0..nports)
                .map(|i| {
                    let info = self.state.ports.get(i).cloned().unwrap_or_default();
                    pb::PortPlacement {
                        port: i as u32,
                        nic_node: info
                            .interface
                            .as_deref()
                            .and_then(|n| topology::read_nic(&self.state.sysfs, n))
                            .and_then(|n| n.numa_node),
                        memory_node: info.memory_node,
                        preferred_node: self.preferred_node(i),
                    }
                })
                .collect(),
            workers: workers
                .iter()
                .filter(|w| w.state == WorkerState::Running)
                .map(|w| {
                    let wnode = w.core.and_then(|c| topo.node_of(c.0));
                    pb::WorkerPlacement {
                        worker: w.id.0 as u32,
                        core: w.core.map(|c| c.0),
                        node: wnode,
                        remote_queues: w
                            .queues
                            .iter()
                            .filter(|q| {
                                matches!((wnode, port_node(q.port.0 as usize)), (Some(a), Some(b)) if a != b)
                            })
                            .map(|q| convert::queue_ref(*q))
                            .collect(),
                    }
                })
                .collect(),
        })
    }
}

#[tonic::async_trait]
impl Placement for Api {
    async fn get(
        &self,
        _: Request<pb::GetPlacementRequest>,
    ) -> Result<Response<pb::PlacementState>, Status> {
        Ok(Response::new(self.placement_state().await?))
    }

    async fn set(
        &self,
        req: Request<pb::SetPlacementRequest>,
    ) -> Result<Response<pb::PlacementState>, Status> {
        let req = req.into_inner();
        let policy = match pb::NumaPolicy::try_from(req.policy) {
            Ok(p @ (pb::NumaPolicy::Local | pb::NumaPolicy::Explicit)) => p,
            _ => {
                return Err(invalid(
                    "policy",
                    "required: NUMA_POLICY_LOCAL or NUMA_POLICY_EXPLICIT",
                ))
            }
        };
        let node = match (policy, req.node) {
            (pb::NumaPolicy::Explicit, None) => {
                return Err(invalid("node", "required with NUMA_POLICY_EXPLICIT"))
            }
            (pb::NumaPolicy::Explicit, Some(n)) => {
                let topo = self.topology();
                if topo.node(n).is_none() {
                    return Err(Status::not_found(format!(
                        "node: node {n} does not exist (nodes: {})",
                        topology::format_cpuset(&topo.nodes.iter().map(|n| n.id).collect())
                    )));
                }
                Some(n)
            }
            (_, Some(_)) => {
                return Err(invalid(
                    "node",
                    "only with NUMA_POLICY_EXPLICIT (local follows each port)",
                ))
            }
            (_, None) => None,
        };
        *self
            .state
            .placement
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = (policy, node);
        Ok(Response::new(self.placement_state().await?))
    }
}

fn snapshot(e: &Engine) -> pb::StatsSnapshot {
    let r = e.snapshot();
    convert::stats(&r, |q| e.queue_owner(q))
}

#[tonic::async_trait]
impl Stats for Api {
    async fn get(
        &self,
        _: Request<pb::GetStatsRequest>,
    ) -> Result<Response<pb::StatsSnapshot>, Status> {
        Ok(Response::new(self.engine(|e| Ok(snapshot(e))).await?))
    }

    type WatchStream = tokio_stream::wrappers::ReceiverStream<Result<pb::StatsSnapshot, Status>>;

    async fn watch(
        &self,
        req: Request<pb::WatchStatsRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let req = req.into_inner();
        let ms = match req.interval_ms {
            0 => 1000,
            n if n < 10 => return Err(invalid("interval_ms", format!("{n} is below 10"))),
            n => n,
        };
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let api = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(ms as u64));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut sent = 0u32;
            loop {
                tick.tick().await;
                // The engine gone (shutdown) ends the stream.
                let Ok(s) = api.engine(|e| Ok(snapshot(e))).await else {
                    break;
                };
                if tx.send(Ok(s)).await.is_err() {
                    break;
                }
                sent += 1;
                if req.count != 0 && sent >= req.count {
                    break;
                }
            }
        });
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
            rx,
        )))
    }
}

#[tonic::async_trait]
impl Handlers for Api {
    async fn get(
        &self,
        _: Request<pb::GetHandlersRequest>,
    ) -> Result<Response<pb::HandlerChain>, Status> {
        let chain = self.engine(|e| Ok(e.chain())).await?;
        let (handlers, custom) = match &chain.specs {
            // An lb handler reads back with its live state (VIPs and reals changed
            // through the Lb service), not the state it started from.
            Some(specs) => (
                specs
                    .iter()
                    .map(|s| convert::handler(&crate::lb::live_spec(s)))
                    .collect(),
                false,
            ),
            None => (
                chain
                    .names
                    .iter()
                    .map(|n| pb::Handler {
                        kind: n.clone(),
                        settings: None,
                    })
                    .collect(),
                true,
            ),
        };
        Ok(Response::new(pb::HandlerChain {
            version: chain.version,
            handlers,
            custom,
            last_rejected: self
                .state
                .rejected
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        }))
    }

    async fn update(
        &self,
        req: Request<pb::UpdateHandlersRequest>,
    ) -> Result<Response<pb::UpdateHandlersResponse>, Status> {
        let req = req.into_inner();
        let base = req.base_version;
        let result = async {
            let specs = req
                .handlers
                .iter()
                .enumerate()
                .map(|(i, h)| convert::spec(i, h))
                .collect::<Result<Vec<_>, _>>()?;
            self.engine(move |e| {
                e.set_handlers(base, specs)
                    .map_err(|err| convert::status(&err))
            })
            .await
        }
        .await;
        match result {
            Ok(version) => Ok(Response::new(pb::UpdateHandlersResponse { version })),
            Err(status) => {
                *self
                    .state
                    .rejected
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = Some(pb::Rejection {
                    base_version: base.unwrap_or_default(),
                    reason: status.message().to_string(),
                });
                Err(status)
            }
        }
    }
}

#[tonic::async_trait]
impl Lb for Api {
    async fn get(&self, req: Request<pb::GetLbRequest>) -> Result<Response<pb::LbState>, Status> {
        let handler = req.into_inner().handler;
        let state = self
            .engine(move |e| {
                let (i, c) = crate::lb::find(e, handler)?;
                Ok(crate::lb::state(i, &c))
            })
            .await?;
        Ok(Response::new(state))
    }

    async fn update(
        &self,
        req: Request<pb::UpdateLbRequest>,
    ) -> Result<Response<pb::UpdateLbResponse>, Status> {
        let req = req.into_inner();
        let changes = crate::lb::changes(&req.changes)?;
        let (handler, base) = (req.handler, req.base_version);
        // Under the engine lock, so that the chain cannot be replaced between finding the
        // balancer and changing it. The rings are rebuilt here, on the blocking pool.
        let version = self
            .engine(move |e| {
                let (_, c) = crate::lb::find(e, handler)?;
                c.apply(base, &changes)
                    .map_err(|err| crate::lb::status(&err))
            })
            .await?;
        Ok(Response::new(pb::UpdateLbResponse { version }))
    }

    async fn get_stats(
        &self,
        req: Request<pb::GetLbStatsRequest>,
    ) -> Result<Response<pb::LbStats>, Status> {
        let handler = req.into_inner().handler;
        let stats = self
            .engine(move |e| {
                let (i, c) = crate::lb::find(e, handler)?;
                Ok(crate::lb::stats(i, &c, e))
            })
            .await?;
        Ok(Response::new(stats))
    }
}

/// Whether `path` is the default socket (whose failure is a warning, not an error, since
/// nobody asked for it by name).
pub fn is_default_socket(path: &Path) -> bool {
    path == Path::new(dataplane::config::DEFAULT_CTL_SOCKET)
}
