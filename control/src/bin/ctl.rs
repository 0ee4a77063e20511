//! `ctl`: a thin client for a running slipstream appliance.
//!
//! Human tables by default, `--json` for scripts. It talks to the Unix socket by default
//! (`/run/slipstream/ctl.sock`, or `--socket`, or `$SLIPSTREAM_CTL_SOCKET`), or over TCP
//! with mutual TLS (`--endpoint https://HOST:PORT --cert --key --ca`). Exit codes: 0 on
//! success, 1 when the server refused or failed (or could not be reached), 2 on a usage
//! error (clap's own, and ours: a malformed handler spec, missing TLS files).

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};
use control::client::{Client, Target};
use control::convert;
use control::pb;
use control::tls::Pem;
use dataplane::config::DEFAULT_CTL_SOCKET;
use dataplane::QueueId;
use serde_json::{json, Value};
use tonic::Code;

const EXAMPLES: &str = "Examples:
  ctl status
  ctl topology
  ctl workers add --core 1 --queue p0:q1
  ctl workers assign p0:q0 w1
  ctl workers rm w1
  ctl workers idle backoff --backoff-max-us 100
  ctl stats --watch
  ctl handlers set 'udp-echo port=7' 'icmp addresses=[198.18.0.1,2001:db8::1]'
  ctl lb show
  ctl lb vip add 198.18.1.1:80/tcp
  ctl lb real add 198.18.1.1:80/tcp 10.0.0.1 --weight 2
  ctl lb real rm 198.18.1.1:80/tcp 10.0.0.1
  ctl --endpoint https://10.0.0.5:50051 --cert me.pem --key me.key --ca ca.pem status";

#[derive(Debug, Parser)]
#[command(
    name = "ctl",
    version,
    about = "Control a running slipstream appliance over its gRPC API (slipstream.v1)",
    after_help = EXAMPLES
)]
struct Cli {
    #[command(flatten)]
    conn: Conn,
    /// Print JSON instead of tables (for scripts).
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Args)]
struct Conn {
    /// The appliance's Unix socket.
    #[arg(
        long,
        global = true,
        env = "SLIPSTREAM_CTL_SOCKET",
        default_value = DEFAULT_CTL_SOCKET,
        value_name = "PATH"
    )]
    socket: PathBuf,
    /// Connect over TCP with mutual TLS instead: https://HOST:PORT (needs --cert, --key and
    /// --ca).
    #[arg(long, global = true, value_name = "URL")]
    endpoint: Option<String>,
    /// Client certificate (PEM), signed by the CA the appliance trusts.
    #[arg(long, global = true, value_name = "FILE")]
    cert: Option<PathBuf>,
    /// Private key of --cert (PEM).
    #[arg(long, global = true, value_name = "FILE")]
    key: Option<PathBuf>,
    /// CA certificate (PEM) that signed the appliance's certificate.
    #[arg(long, global = true, value_name = "FILE")]
    ca: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Version, uptime, mode, workers and packet totals.
    Status,
    /// CPUs, NUMA nodes, and ports and queues with their NUMA node and owner.
    Topology,
    /// List the workers, or change them.
    Workers {
        #[command(subcommand)]
        cmd: Option<WorkersCmd>,
    },
    /// Show or set the NUMA placement policy for new workers.
    Placement {
        #[command(subcommand)]
        cmd: Option<PlacementCmd>,
    },
    /// Counters per worker, port and queue, drops by reason, latency.
    Stats(StatsArgs),
    /// Show the handler chain, or replace it.
    Handlers {
        #[command(subcommand)]
        cmd: Option<HandlersCmd>,
    },
    /// The lb handler's live configuration (VIPs, reals, weights) and counters.
    Lb(LbArgs),
    /// Stop receiving, let what is in flight finish, print the counts.
    Drain {
        /// How long to wait for packets in flight, in milliseconds.
        #[arg(long, default_value_t = 5000)]
        timeout_ms: u32,
    },
    /// Receive again after a drain.
    Resume,
    /// Stop the appliance (drain, stop, verify accounting) and print the final counts.
    Shutdown,
    /// Print a completion script for a shell (e.g. `ctl completions bash > /etc/bash_completion.d/ctl`).
    Completions { shell: clap_complete::Shell },
}

#[derive(Debug, Subcommand)]
enum WorkersCmd {
    /// List the workers (the default).
    List,
    /// Start a worker on a core and move queues to it.
    Add {
        /// Core to pin to (default: a free allowed core chosen by the placement policy).
        #[arg(long)]
        core: Option<u32>,
        /// A queue to move to the new worker (repeatable).
        #[arg(long = "queue", value_name = "pN:qM")]
        queues: Vec<QueueId>,
    },
    /// Stop a worker; its queues move to the remaining workers first.
    #[command(alias = "remove")]
    Rm { worker: Wid },
    /// Move a queue to a worker at a batch boundary, losing no packet.
    Assign { queue: QueueId, worker: Wid },
    /// Set the idle policy of every worker (or of one).
    Idle {
        policy: IdleArg,
        #[arg(long)]
        worker: Option<Wid>,
        /// Longest back-off sleep, microseconds.
        #[arg(long)]
        backoff_max_us: Option<u64>,
    },
}

#[derive(Debug, Subcommand)]
enum PlacementCmd {
    /// Show the policy and each port's and worker's node (the default).
    Show,
    /// Set the policy: `local` (workers on their port's node) or `explicit --node N`.
    Set {
        policy: PolicyArg,
        #[arg(long)]
        node: Option<u32>,
    },
}

#[derive(Debug, Subcommand)]
enum HandlersCmd {
    /// Show the chain and its version (the default).
    Show,
    /// Replace the whole chain, atomically on every worker.
    ///
    /// Each SPEC is one handler: its kind, then KEY=VALUE settings as in the config file;
    /// lists in brackets: 'icmp addresses=[198.18.0.1,2001:db8::1]'.
    Set {
        /// Handlers, in order.
        #[arg(value_name = "SPEC")]
        specs: Vec<String>,
        /// Read the chain from the `[[handlers]]` tables of a TOML file instead (a slipstream
        /// config file works).
        #[arg(long, conflicts_with = "specs")]
        file: Option<PathBuf>,
        /// Apply only if the chain is still at this version.
        #[arg(long)]
        base_version: Option<u64>,
    },
}

#[derive(Debug, Args)]
struct LbArgs {
    /// Which lb handler of the chain, by its index (default: the chain's only one).
    #[arg(long, global = true, value_name = "N")]
    handler: Option<u32>,
    #[command(subcommand)]
    cmd: Option<LbCmd>,
}

/// Every change is acknowledged with the balancer's new version, or refused with nothing
/// changed.
#[derive(Debug, Subcommand)]
enum LbCmd {
    /// VIPs with their reals, ids, weights and ring shares, and the version (the default).
    Show,
    /// Packets and bytes per VIP, connection-table hits and misses, how reals were chosen,
    /// lb drops.
    Stats,
    /// Add or remove a VIP, or set its flags.
    Vip {
        #[command(subcommand)]
        cmd: VipCmd,
    },
    /// Add, remove, reweight, or mark down or up a real of a VIP.
    Real {
        #[command(subcommand)]
        cmd: RealCmd,
    },
}

/// Apply a change only if the balancer is still at a version.
#[derive(Debug, Args)]
struct Base {
    /// Apply only if the balancer is still at this version (`ctl lb show` prints it).
    #[arg(long, value_name = "VERSION")]
    base_version: Option<u64>,
}

#[derive(Debug, Subcommand)]
enum VipCmd {
    /// Add a VIP, with no reals yet (its traffic is dropped until one is added).
    Add {
        /// ADDRESS:PORT/PROTO, e.g. 198.18.1.1:80/tcp or [2001:db8::1]:0/udp (port 0: any).
        vip: VipArg,
        /// A VIP flag (repeatable, or comma-separated): no-src-port, lru-bypass, quic,
        /// dport-only, src-routing, local-vip, global-lru, src-dst-port, stable-routing,
        /// udp-flow-migration.
        #[arg(long = "flag", value_name = "FLAG", value_delimiter = ',')]
        flags: Vec<String>,
        #[command(flatten)]
        base: Base,
    },
    /// Remove a VIP and its reals.
    #[command(alias = "remove")]
    Rm {
        vip: VipArg,
        #[command(flatten)]
        base: Base,
    },
    /// Replace a VIP's flags (none given: clear them).
    Flags {
        vip: VipArg,
        #[arg(value_name = "FLAG")]
        flags: Vec<String>,
        #[command(flatten)]
        base: Base,
    },
}

#[derive(Debug, Subcommand)]
enum RealCmd {
    /// Add a real to a VIP.
    Add {
        vip: VipArg,
        /// The real's address (IPv4 or IPv6).
        real: String,
        /// Maglev weight (0: configured but out of the ring).
        #[arg(long, default_value_t = 1)]
        weight: u32,
        #[command(flatten)]
        base: Base,
    },
    /// Remove a real from a VIP: new flows avoid it, established ones stay on it (the
    /// connection table).
    #[command(alias = "remove")]
    Rm {
        vip: VipArg,
        real: String,
        #[command(flatten)]
        base: Base,
    },
    /// Change a real's weight (0 takes it out of the ring but keeps it configured).
    Weight {
        vip: VipArg,
        real: String,
        weight: u32,
        #[command(flatten)]
        base: Base,
    },
    /// Mark a real down (consulted by VIPs with udp-flow-migration).
    Down {
        vip: VipArg,
        real: String,
        #[command(flatten)]
        base: Base,
    },
    /// Mark a real up again.
    Up {
        vip: VipArg,
        real: String,
        #[command(flatten)]
        base: Base,
    },
}

/// A VIP on the command line, `ADDRESS:PORT/PROTO`. The address is checked by the
/// appliance (a bad one is a refusal naming the field, exit 1); the shape, port and
/// protocol here (exit 2).
#[derive(Debug, Clone)]
struct VipArg(pb::VipRef);

impl std::str::FromStr for VipArg {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why: &str| {
            format!(
                "`{s}` is not a VIP: {why}; expected ADDRESS:PORT/PROTO, for example \
                 198.18.1.1:80/tcp or [2001:db8::1]:0/udp (port 0: any port)"
            )
        };
        let (sock, proto) = s.rsplit_once('/').ok_or_else(|| bad("no /PROTO"))?;
        let proto = match proto {
            "tcp" => pb::LbProto::Tcp,
            "udp" => pb::LbProto::Udp,
            _ => return Err(bad("the protocol is tcp or udp")),
        };
        let (addr, port) = sock.rsplit_once(':').ok_or_else(|| bad("no :PORT"))?;
        let port: u16 = port.parse().map_err(|_| bad("the port is 0-65535"))?;
        let addr = match addr.strip_prefix('[') {
            Some(a) => a
                .strip_suffix(']')
                .ok_or_else(|| bad("unbalanced brackets"))?,
            None if addr.contains(':') => return Err(bad("an IPv6 address goes in brackets")),
            None => addr,
        };
        if addr.is_empty() {
            return Err(bad("no address"));
        }
        Ok(VipArg(pb::VipRef {
            address: addr.to_string(),
            port: u32::from(port),
            proto: proto as i32,
        }))
    }
}

#[derive(Debug, Args)]
struct StatsArgs {
    /// Redraw every interval, with rates per second.
    #[arg(long)]
    watch: bool,
    /// Interval of --watch, milliseconds.
    #[arg(long, default_value_t = 1000)]
    interval_ms: u32,
    /// Stop --watch after this many snapshots (default: until Ctrl-C).
    #[arg(long)]
    count: Option<u32>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum IdleArg {
    BusyPoll,
    Backoff,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum PolicyArg {
    Local,
    Explicit,
}

/// A worker id, `w1` or `1`.
#[derive(Debug, Clone, Copy)]
struct Wid(u32);

impl std::str::FromStr for Wid {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.strip_prefix('w')
            .unwrap_or(s)
            .parse()
            .map(Wid)
            .map_err(|_| format!("`{s}` is not a worker: expected wN (for example w1)"))
    }
}

/// Why `ctl` failed, and so its exit code.
enum Failure {
    /// The command line was wrong (exit 2).
    Usage(String),
    /// The server refused or failed, or could not be reached (exit 1).
    Server(String),
}

impl From<tonic::Status> for Failure {
    fn from(s: tonic::Status) -> Failure {
        Failure::Server(describe(&s))
    }
}

/// `CODE: message`, and for transport failures the causes (a TLS alert, a reset) that
/// tonic keeps in the error chain.
fn describe(s: &tonic::Status) -> String {
    let mut out = format!("{}: {}", code_name(s.code()), s.message());
    let mut cur = std::error::Error::source(s);
    while let Some(c) = cur {
        out += &format!(": {c}");
        cur = c.source();
    }
    out
}

fn code_name(c: Code) -> &'static str {
    match c {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Cmd::Completions { shell } = cli.cmd {
        clap_complete::generate(shell, &mut Cli::command(), "ctl", &mut std::io::stdout());
        return ExitCode::SUCCESS;
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ctl: {e}");
            return ExitCode::from(1);
        }
    };
    let tls = cli.conn.endpoint.is_some();
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Server(m)) if tls && m.contains("transport error") => {
            eprintln!(
                "ctl: {m}\n  (over TLS this usually means the appliance refused the client certificate: \
                 it must be signed by the CA in the appliance's control.tls_ca)"
            );
            ExitCode::from(1)
        }
        Err(Failure::Usage(m)) => {
            eprintln!("ctl: {m}");
            ExitCode::from(2)
        }
        Err(Failure::Server(m)) => {
            eprintln!("ctl: {m}");
            ExitCode::from(1)
        }
    }
}

fn target(c: &Conn) -> Result<Target, Failure> {
    let Some(endpoint) = &c.endpoint else {
        if c.cert.is_some() || c.key.is_some() || c.ca.is_some() {
            return Err(Failure::Usage(
                "--cert, --key and --ca go with --endpoint".into(),
            ));
        }
        return Ok(Target::Unix(c.socket.clone()));
    };
    let (Some(cert), Some(key), Some(ca)) = (&c.cert, &c.key, &c.ca) else {
        return Err(Failure::Usage(
            "--endpoint needs --cert, --key and --ca (the appliance accepts mutual TLS only)"
                .into(),
        ));
    };
    control::client::parse_endpoint(endpoint).map_err(|e| Failure::Usage(e.to_string()))?;
    let read = |p: &PathBuf, what| Pem::read(p, what).map_err(|e| Failure::Usage(e.to_string()));
    Ok(Target::Tls {
        endpoint: endpoint.clone(),
        ca: read(ca, "CA certificate")?,
        identity: Some((read(cert, "certificate")?, read(key, "private key")?)),
    })
}

async fn run(cli: Cli) -> Result<(), Failure> {
    // Check what can be checked before connecting: usage errors win over server errors.
    let t = target(&cli.conn)?;
    let update = match &cli.cmd {
        Cmd::Handlers {
            cmd:
                Some(HandlersCmd::Set {
                    specs,
                    file,
                    base_version,
                }),
        } => Some(handler_update(specs, file.as_ref(), *base_version)?),
        _ => None,
    };
    let mut c = Client::connect(&t)
        .await
        .map_err(|e| Failure::Server(e.to_string()))?;
    let json = cli.json;
    match cli.cmd {
        Cmd::Status => {
            let s = c
                .system
                .get_status(pb::GetStatusRequest {})
                .await?
                .into_inner();
            out(json, status_json(&s), || status_text(&s));
        }
        Cmd::Topology => {
            let t = c
                .system
                .get_topology(pb::GetTopologyRequest {})
                .await?
                .into_inner();
            out(json, topology_json(&t), || topology_text(&t));
        }
        Cmd::Workers { cmd } => match cmd.unwrap_or(WorkersCmd::List) {
            WorkersCmd::List => {
                let l = c
                    .workers
                    .list(pb::ListWorkersRequest {})
                    .await?
                    .into_inner();
                out(json, workers_json(&l.workers), || workers_text(&l.workers));
            }
            WorkersCmd::Add { core, queues } => {
                let r = c
                    .workers
                    .add(pb::AddWorkerRequest {
                        core,
                        queues: queues.iter().map(|q| convert::queue_ref(*q)).collect(),
                    })
                    .await?
                    .into_inner();
                let w = r.worker.unwrap_or_default();
                out(
                    json,
                    json!({"worker": worker_json(&w), "moved": moves_json(&r.moved)}),
                    || {
                        let mut s = format!("added w{} on {}\n", w.id, core_name(w.core));
                        s += &moves_text(&r.moved);
                        s
                    },
                );
            }
            WorkersCmd::Rm { worker } => {
                let r = c
                    .workers
                    .remove(pb::RemoveWorkerRequest { worker: worker.0 })
                    .await?
                    .into_inner();
                out(
                    json,
                    json!({"removed": format!("w{}", worker.0), "moved": moves_json(&r.moved)}),
                    || format!("removed w{}\n{}", worker.0, moves_text(&r.moved)),
                );
            }
            WorkersCmd::Assign { queue, worker } => {
                let r = c
                    .workers
                    .assign(pb::AssignQueueRequest {
                        queue: Some(convert::queue_ref(queue)),
                        worker: worker.0,
                    })
                    .await?
                    .into_inner();
                let moved: Vec<pb::Move> = r.moved.into_iter().collect();
                out(json, json!({"moved": moves_json(&moved)}), || {
                    moves_text(&moved)
                });
            }
            WorkersCmd::Idle {
                policy,
                worker,
                backoff_max_us,
            } => {
                let l = c
                    .workers
                    .set_idle(pb::SetIdleRequest {
                        worker: worker.map(|w| w.0),
                        idle: match policy {
                            IdleArg::BusyPoll => pb::IdlePolicy::BusyPoll,
                            IdleArg::Backoff => pb::IdlePolicy::Backoff,
                        } as i32,
                        backoff_max_us,
                    })
                    .await?
                    .into_inner();
                out(json, workers_json(&l.workers), || workers_text(&l.workers));
            }
        },
        Cmd::Placement { cmd } => {
            let p = match cmd.unwrap_or(PlacementCmd::Show) {
                PlacementCmd::Show => c.placement.get(pb::GetPlacementRequest {}).await?,
                PlacementCmd::Set { policy, node } => {
                    c.placement
                        .set(pb::SetPlacementRequest {
                            policy: match policy {
                                PolicyArg::Local => pb::NumaPolicy::Local,
                                PolicyArg::Explicit => pb::NumaPolicy::Explicit,
                            } as i32,
                            node,
                        })
                        .await?
                }
            }
            .into_inner();
            out(json, placement_json(&p), || placement_text(&p));
        }
        Cmd::Stats(a) => stats(&mut c, &a, json).await?,
        Cmd::Handlers { cmd } => match cmd.unwrap_or(HandlersCmd::Show) {
            HandlersCmd::Show => {
                let h = c
                    .handlers
                    .get(pb::GetHandlersRequest {})
                    .await?
                    .into_inner();
                out(json, chain_json(&h), || chain_text(&h));
            }
            HandlersCmd::Set { .. } => {
                let req = update.unwrap_or_default();
                let r = c.handlers.update(req).await.map_err(|s| {
                    Failure::Server(format!("rejected, nothing changed: {}", describe(&s)))
                })?;
                let v = r.into_inner().version;
                out(json, json!({"accepted": true, "version": v}), || {
                    format!("accepted: handler chain is now version {v}\n")
                });
            }
        },
        Cmd::Lb(a) => lb(&mut c, a, json).await?,
        Cmd::Drain { timeout_ms } => {
            let r = c
                .system
                .drain(pb::DrainRequest { timeout_ms })
                .await?
                .into_inner();
            let t = r.totals.unwrap_or_default();
            out(
                json,
                json!({"drained": true, "totals": totals_json(&t)}),
                || {
                    format!(
                        "drained: receiving stopped, nothing in flight\n{}",
                        totals_text(&t)
                    )
                },
            );
        }
        Cmd::Resume => {
            c.system.resume(pb::ResumeRequest {}).await?;
            out(json, json!({"receiving": true}), || {
                "receiving again\n".into()
            });
        }
        Cmd::Shutdown => {
            let r = c
                .system
                .shutdown(pb::ShutdownRequest {})
                .await?
                .into_inner();
            let t = r.totals.unwrap_or_default();
            out(
                json,
                json!({"accounting_ok": r.accounting_ok, "problems": r.problems, "totals": totals_json(&t)}),
                || {
                    let mut s = format!("stopped\n{}", totals_text(&t));
                    if r.accounting_ok {
                        s += "accounting ok: every frame back in its pool, received == transmitted + dropped + slow path\n";
                    }
                    for p in &r.problems {
                        s += &format!("accounting problem: {p}\n");
                    }
                    s
                },
            );
            if !r.accounting_ok {
                return Err(Failure::Server(
                    "the appliance stopped with accounting problems".into(),
                ));
            }
        }
        Cmd::Completions { .. } => {}
    }
    Ok(())
}

fn out(json: bool, j: Value, text: impl FnOnce() -> String) {
    let mut o = std::io::stdout().lock();
    if json {
        let _ = writeln!(
            o,
            "{}",
            serde_json::to_string_pretty(&j).unwrap_or_default()
        );
    } else {
        let _ = write!(o, "{}", text());
    }
}

// ---- handler specs -----------------------------------------------------------------------

fn handler_update(
    specs: &[String],
    file: Option<&PathBuf>,
    base_version: Option<u64>,
) -> Result<pb::UpdateHandlersRequest, Failure> {
    let handlers = match file {
        Some(path) => {
            // Built-in kinds are checked here; kinds the appliance registered from other
            // crates (`kv`) are passed on as they are and checked by the appliance.
            #[derive(serde::Deserialize)]
            struct Chain {
                #[serde(default)]
                handlers: Vec<serde_json::Map<String, Value>>,
            }
            let text = std::fs::read_to_string(path)
                .map_err(|e| Failure::Usage(format!("{}: {e}", path.display())))?;
            let chain: Chain = toml::from_str(&text)
                .map_err(|e| Failure::Usage(format!("{}: {e}", path.display())))?;
            let mut out = Vec::with_capacity(chain.handlers.len());
            for (i, mut table) in chain.handlers.into_iter().enumerate() {
                let kind = match table.get("kind") {
                    Some(Value::String(k)) => k.clone(),
                    _ => {
                        return Err(Failure::Usage(format!(
                            "{}: handlers[{i}]: `kind` is required",
                            path.display()
                        )))
                    }
                };
                if dataplane::handlers::ext::BUILTIN_KINDS.contains(&kind.as_str()) {
                    let spec: dataplane::handlers::Spec =
                        serde_json::from_value(Value::Object(table)).map_err(|e| {
                            Failure::Usage(format!("{}: handlers[{i}]: {e}", path.display()))
                        })?;
                    out.push(convert::handler(&spec));
                } else {
                    table.remove("kind");
                    out.push(pb::Handler {
                        kind,
                        settings: Some(convert::json_to_struct(&Value::Object(table))),
                    });
                }
            }
            out
        }
        None => {
            if specs.is_empty() {
                return Err(Failure::Usage(
                    "give the new chain: handler specs (e.g. 'udp-echo port=7') or --file".into(),
                ));
            }
            specs
                .iter()
                .map(|s| parse_spec(s).map_err(Failure::Usage))
                .collect::<Result<Vec<_>, _>>()?
        }
    };
    Ok(pb::UpdateHandlersRequest {
        base_version,
        handlers,
    })
}

/// `KIND KEY=VALUE ...` as a wire handler; values are integers, booleans, `[a,b]` lists or
/// strings.
fn parse_spec(s: &str) -> Result<pb::Handler, String> {
    let mut parts = s.split_whitespace();
    let kind = parts
        .next()
        .ok_or_else(|| "an empty handler spec: expected KIND [KEY=VALUE ...]".to_string())?;
    let mut settings = serde_json::Map::new();
    for kv in parts {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| format!("`{kv}` in `{s}`: expected KEY=VALUE"))?;
        let v = match v.strip_prefix('[').and_then(|v| v.strip_suffix(']')) {
            Some(list) => Value::Array(
                list.split(',')
                    .map(str::trim)
                    .filter(|x| !x.is_empty())
                    .map(scalar)
                    .collect(),
            ),
            None => scalar(v),
        };
        settings.insert(k.to_string(), v);
    }
    Ok(pb::Handler {
        kind: kind.to_string(),
        settings: Some(convert::json_to_struct(&Value::Object(settings))),
    })
}

fn scalar(v: &str) -> Value {
    if let Ok(n) = v.parse::<i64>() {
        return json!(n);
    }
    match v {
        "true" => json!(true),
        "false" => json!(false),
        _ => json!(v.trim_matches('"')),
    }
}

// ---- formatting ----------------------------------------------------------------------------

/// Left-aligned columns, two spaces apart.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                s += c;
            } else {
                s += &format!("{c:<w$}  ");
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut s = line(header.to_vec());
    for r in rows {
        s += &line(r.iter().map(String::as_str).collect());
    }
    s
}

fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "-".into(), |v| v.to_string())
}

fn core_name(c: Option<u32>) -> String {
    c.map_or_else(|| "unpinned".into(), |c| format!("core{c}"))
}

fn qname(q: &pb::QueueRef) -> String {
    format!("p{}:q{}", q.port, q.queue)
}

fn state_name(s: i32) -> &'static str {
    match pb::WorkerState::try_from(s) {
        Ok(pb::WorkerState::Planned) => "planned",
        Ok(pb::WorkerState::Running) => "running",
        Ok(pb::WorkerState::Removed) => "removed",
        _ => "unknown",
    }
}

fn idle_name(i: i32) -> &'static str {
    match pb::IdlePolicy::try_from(i) {
        Ok(pb::IdlePolicy::BusyPoll) => "busy-poll",
        Ok(pb::IdlePolicy::Backoff) => "backoff",
        _ => "unknown",
    }
}

fn bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 30 => format!("{:.1} GiB", n as f64 / (1u64 << 30) as f64),
        n if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64),
        n => format!("{} KiB", n / 1024),
    }
}

fn rate(per_s: f64) -> String {
    match per_s {
        r if r >= 1e6 => format!("{:.2}M", r / 1e6),
        r if r >= 1e3 => format!("{:.1}k", r / 1e3),
        r => format!("{r:.0}"),
    }
}

fn secs(ns: u64) -> String {
    format!("{:.1}s", ns as f64 / 1e9)
}

fn totals_text(t: &pb::Totals) -> String {
    format!(
        "received {}{}  transmitted {}  dropped {}  slow path {}  in flight {}\n",
        t.received,
        match t.generated {
            0 => String::new(),
            g => format!("  generated {g}"),
        },
        t.transmitted,
        t.dropped,
        t.slow_path,
        t.in_flight
    )
}

fn totals_json(t: &pb::Totals) -> Value {
    json!({
        "received": t.received, "transmitted": t.transmitted, "dropped": t.dropped,
        "slow_path": t.slow_path, "in_flight": t.in_flight, "generated": t.generated,
        "conserved": (t.received + t.generated) as i64 == (t.transmitted + t.dropped + t.slow_path) as i64 + t.in_flight,
    })
}

fn status_text(s: &pb::Status) -> String {
    format!(
        "slipstream {}  up {}  mode {}  {}\nworkers {} running ({} slots)  ports {}  handlers v{}\n{}listening on {}\n",
        s.version,
        secs(s.uptime_ns),
        s.mode,
        if s.receiving { "receiving" } else { "drained (not receiving)" },
        s.workers_running,
        s.worker_slots,
        s.ports,
        s.handlers_version,
        totals_text(&s.totals.unwrap_or_default()),
        s.listeners.join(", "),
    )
}

fn status_json(s: &pb::Status) -> Value {
    json!({
        "version": s.version, "uptime_ns": s.uptime_ns, "mode": s.mode, "receiving": s.receiving,
        "workers_running": s.workers_running, "worker_slots": s.worker_slots, "ports": s.ports,
        "handlers_version": s.handlers_version, "totals": totals_json(&s.totals.unwrap_or_default()),
        "listeners": s.listeners,
    })
}

fn topology_text(t: &pb::Topology) -> String {
    let yes = |b: bool| if b { "yes" } else { "no" }.to_string();
    let cpus: Vec<Vec<String>> = t
        .cpus
        .iter()
        .map(|c| {
            vec![
                format!("cpu{}", c.id),
                opt(c.node),
                opt(c.core_id),
                opt(c.package),
                yes(c.online),
                yes(c.allowed),
                c.worker.map_or_else(|| "-".into(), |w| format!("w{w}")),
            ]
        })
        .collect();
    let nodes: Vec<Vec<String>> = t
        .nodes
        .iter()
        .map(|n| {
            vec![
                format!("node{}", n.id),
                n.cpus.clone(),
                n.memory_total_bytes.map_or_else(|| "-".into(), bytes),
                n.memory_free_bytes.map_or_else(|| "-".into(), bytes),
                match (n.hugepages_2m, n.hugepages_2m_free) {
                    (Some(a), Some(f)) => format!("{f}/{a} free"),
                    _ => "-".into(),
                },
            ]
        })
        .collect();
    let ports: Vec<Vec<String>> = t
        .ports
        .iter()
        .map(|p| {
            vec![
                format!("p{}", p.id),
                p.kind.clone(),
                if p.interface.is_empty() {
                    "-".into()
                } else {
                    p.interface.clone()
                },
                match p.numa_node {
                    Some(n) => format!("{n} ({})", p.numa_source),
                    None => "unknown".into(),
                },
                p.queues
                    .iter()
                    .map(|q| {
                        format!(
                            "q{}={}",
                            q.queue,
                            q.worker.map_or_else(|| "-".into(), |w| format!("w{w}"))
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(" "),
            ]
        })
        .collect();
    format!(
        "{}\n{}\n{}allowed cpuset: {}\n",
        table(
            &["CPU", "NODE", "CORE", "PKG", "ONLINE", "ALLOWED", "WORKER"],
            &cpus
        ),
        table(&["NODE", "CPUS", "MEMORY", "FREE", "HUGEPAGES 2M"], &nodes),
        table(
            &["PORT", "KIND", "INTERFACE", "NUMA NODE", "QUEUES (owner)"],
            &ports
        ),
        t.allowed
    )
}

fn topology_json(t: &pb::Topology) -> Value {
    json!({
        "allowed": t.allowed,
        "cpus": t.cpus.iter().map(|c| json!({
            "id": c.id, "online": c.online, "allowed": c.allowed, "node": c.node,
            "core_id": c.core_id, "package": c.package, "worker": c.worker.map(|w| format!("w{w}")),
        })).collect::<Vec<_>>(),
        "nodes": t.nodes.iter().map(|n| json!({
            "id": n.id, "cpus": n.cpus, "memory_total_bytes": n.memory_total_bytes,
            "memory_free_bytes": n.memory_free_bytes, "hugepages_2m": n.hugepages_2m,
            "hugepages_2m_free": n.hugepages_2m_free,
        })).collect::<Vec<_>>(),
        "ports": t.ports.iter().map(|p| json!({
            "id": format!("p{}", p.id), "kind": p.kind, "interface": p.interface,
            "numa_node": p.numa_node, "numa_source": p.numa_source,
            "queues": p.queues.iter().map(|q| json!({
                "queue": format!("p{}:q{}", q.port, q.queue),
                "worker": q.worker.map(|w| format!("w{w}")),
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

fn worker_json(w: &pb::Worker) -> Value {
    json!({
        "id": format!("w{}", w.id), "core": w.core, "numa_node": w.numa_node,
        "state": state_name(w.state), "queues": w.queues.iter().map(qname).collect::<Vec<_>>(),
        "idle": idle_name(w.idle), "backoff_max_us": w.backoff_max_us,
    })
}

fn workers_json(ws: &[pb::Worker]) -> Value {
    Value::Array(ws.iter().map(worker_json).collect())
}

fn workers_text(ws: &[pb::Worker]) -> String {
    let rows: Vec<Vec<String>> = ws
        .iter()
        .map(|w| {
            vec![
                format!("w{}", w.id),
                core_name(w.core),
                opt(w.numa_node),
                state_name(w.state).into(),
                match pb::IdlePolicy::try_from(w.idle) {
                    Ok(pb::IdlePolicy::Backoff) => format!("backoff (max {} us)", w.backoff_max_us),
                    _ => idle_name(w.idle).into(),
                },
                if w.queues.is_empty() {
                    "-".into()
                } else {
                    w.queues.iter().map(qname).collect::<Vec<_>>().join(",")
                },
            ]
        })
        .collect();
    table(
        &["WORKER", "CORE", "NODE", "STATE", "IDLE", "QUEUES"],
        &rows,
    )
}

fn moves_json(ms: &[pb::Move]) -> Value {
    Value::Array(
        ms.iter()
            .map(|m| {
                json!({
                    "queue": m.queue.as_ref().map(qname),
                    "from": m.from.map(|w| format!("w{w}")),
                    "to": format!("w{}", m.to),
                })
            })
            .collect(),
    )
}

fn moves_text(ms: &[pb::Move]) -> String {
    ms.iter()
        .map(|m| {
            let q = m.queue.as_ref().map(qname).unwrap_or_default();
            match m.from {
                Some(f) if f == m.to => format!("{q} already on w{}\n", m.to),
                Some(f) => format!("moved {q}: w{f} -> w{}\n", m.to),
                None => format!("assigned {q} to w{}\n", m.to),
            }
        })
        .collect()
}

fn policy_name(p: i32) -> &'static str {
    match pb::NumaPolicy::try_from(p) {
        Ok(pb::NumaPolicy::Local) => "local",
        Ok(pb::NumaPolicy::Explicit) => "explicit",
        _ => "unknown",
    }
}

fn placement_json(p: &pb::PlacementState) -> Value {
    json!({
        "policy": policy_name(p.policy), "node": p.node,
        "ports": p.ports.iter().map(|x| json!({
            "port": format!("p{}", x.port), "nic_node": x.nic_node,
            "memory_node": x.memory_node, "preferred_node": x.preferred_node,
        })).collect::<Vec<_>>(),
        "workers": p.workers.iter().map(|w| json!({
            "worker": format!("w{}", w.worker), "core": w.core, "node": w.node,
            "remote_queues": w.remote_queues.iter().map(qname).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

fn placement_text(p: &pb::PlacementState) -> String {
    let ports: Vec<Vec<String>> = p
        .ports
        .iter()
        .map(|x| {
            vec![
                format!("p{}", x.port),
                opt(x.nic_node),
                opt(x.memory_node),
                opt(x.preferred_node),
            ]
        })
        .collect();
    let workers: Vec<Vec<String>> = p
        .workers
        .iter()
        .map(|w| {
            vec![
                format!("w{}", w.worker),
                core_name(w.core),
                opt(w.node),
                if w.remote_queues.is_empty() {
                    "-".into()
                } else {
                    w.remote_queues
                        .iter()
                        .map(qname)
                        .collect::<Vec<_>>()
                        .join(",")
                },
            ]
        })
        .collect();
    format!(
        "policy {}{}\n\n{}\n{}",
        policy_name(p.policy),
        p.node.map_or_else(String::new, |n| format!(" (node {n})")),
        table(
            &["PORT", "NIC NODE", "MEMORY NODE", "PREFERRED NODE"],
            &ports
        ),
        table(&["WORKER", "CORE", "NODE", "REMOTE QUEUES"], &workers),
    )
}

fn chain_json(h: &pb::HandlerChain) -> Value {
    json!({
        "version": h.version,
        "custom": h.custom,
        "handlers": h.handlers.iter().map(|x| {
            let mut j = x.settings.as_ref().map(convert::struct_to_json).unwrap_or_else(|| json!({}));
            if let Value::Object(m) = &mut j {
                m.insert("kind".into(), json!(x.kind));
            }
            j
        }).collect::<Vec<_>>(),
        "last_rejected": h.last_rejected.as_ref().map(|r| json!({"base_version": r.base_version, "reason": r.reason})),
    })
}

fn chain_text(h: &pb::HandlerChain) -> String {
    let rows: Vec<Vec<String>> = h
        .handlers
        .iter()
        .enumerate()
        .map(|(i, x)| {
            let settings = x
                .settings
                .as_ref()
                .map(|s| {
                    s.fields
                        .iter()
                        .map(|(k, v)| format!("{k}={}", convert::value_to_json(v)))
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .unwrap_or_default();
            vec![i.to_string(), x.kind.clone(), settings]
        })
        .collect();
    let mut s = format!(
        "handler chain version {}{}\n{}",
        h.version,
        if h.custom { " (built in code)" } else { "" },
        table(&["#", "KIND", "SETTINGS"], &rows)
    );
    if let Some(r) = &h.last_rejected {
        s += &format!(
            "last rejected update (base version {}): {}\n",
            r.base_version, r.reason
        );
    }
    s
}

// ---- lb -----------------------------------------------------------------------------------

async fn lb(c: &mut Client, a: LbArgs, json: bool) -> Result<(), Failure> {
    use pb::lb_change::Change as C;
    let handler = a.handler;
    let (change, base) = match a.cmd.unwrap_or(LbCmd::Show) {
        LbCmd::Show => {
            let s = c.lb.get(pb::GetLbRequest { handler }).await?.into_inner();
            out(json, lb_state_json(&s), || lb_state_text(&s));
            return Ok(());
        }
        LbCmd::Stats => {
            let s =
                c.lb.get_stats(pb::GetLbStatsRequest { handler })
                    .await?
                    .into_inner();
            out(json, lb_stats_json(&s), || lb_stats_text(&s));
            return Ok(());
        }
        LbCmd::Vip { cmd } => match cmd {
            VipCmd::Add { vip, flags, base } => (
                C::AddVip(pb::LbAddVip {
                    vip: Some(vip.0),
                    flags,
                }),
                base,
            ),
            VipCmd::Rm { vip, base } => (C::RemoveVip(pb::LbRemoveVip { vip: Some(vip.0) }), base),
            VipCmd::Flags { vip, flags, base } => (
                C::SetFlags(pb::LbSetFlags {
                    vip: Some(vip.0),
                    flags,
                }),
                base,
            ),
        },
        LbCmd::Real { cmd } => match cmd {
            RealCmd::Add {
                vip,
                real,
                weight,
                base,
            } => (
                C::AddReal(pb::LbAddReal {
                    vip: Some(vip.0),
                    real,
                    weight: Some(weight),
                }),
                base,
            ),
            RealCmd::Rm { vip, real, base } => (
                C::RemoveReal(pb::LbRemoveReal {
                    vip: Some(vip.0),
                    real,
                }),
                base,
            ),
            RealCmd::Weight {
                vip,
                real,
                weight,
                base,
            } => (
                C::SetWeight(pb::LbSetWeight {
                    vip: Some(vip.0),
                    real,
                    weight,
                }),
                base,
            ),
            RealCmd::Down { vip, real, base } => (
                C::SetDown(pb::LbSetDown {
                    vip: Some(vip.0),
                    real,
                    down: true,
                }),
                base,
            ),
            RealCmd::Up { vip, real, base } => (
                C::SetDown(pb::LbSetDown {
                    vip: Some(vip.0),
                    real,
                    down: false,
                }),
                base,
            ),
        },
    };
    let r =
        c.lb.update(pb::UpdateLbRequest {
            handler,
            base_version: base.base_version,
            changes: vec![pb::LbChange {
                change: Some(change),
            }],
        })
        .await
        .map_err(|s| Failure::Server(format!("rejected, nothing changed: {}", describe(&s))))?;
    let v = r.into_inner().version;
    out(json, json!({"accepted": true, "version": v}), || {
        format!("accepted: lb version {v}\n")
    });
    Ok(())
}

fn vip_json(v: &Option<pb::VipRef>) -> Value {
    json!(v.as_ref().map(control::lb::vip_text))
}

fn lb_state_json(s: &pb::LbState) -> Value {
    json!({
        "handler": s.handler, "version": s.version, "router_mac": s.router_mac,
        "encap": s.encap, "gue_port": s.gue_port, "conn_table_size": s.conn_table_size,
        "vips": s.vips.iter().map(|v| json!({
            "vip": vip_json(&v.vip), "number": v.number, "flags": v.flags,
            "reals": v.reals.iter().map(|r| json!({
                "address": r.address, "id": r.id, "weight": r.weight, "down": r.down,
                "slots": r.slots,
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "quic_servers": s.quic_servers.iter().map(|q| json!({"id": q.id, "real": q.real})).collect::<Vec<_>>(),
        "src_routes": s.src_routes.iter().map(|r| json!({"prefix": r.prefix, "real": r.real})).collect::<Vec<_>>(),
    })
}

fn lb_state_text(s: &pb::LbState) -> String {
    let mut rows = Vec::new();
    for v in &s.vips {
        let name = v
            .vip
            .as_ref()
            .map(control::lb::vip_text)
            .unwrap_or_default();
        let flags = if v.flags.is_empty() {
            "-".to_string()
        } else {
            v.flags.join(",")
        };
        if v.reals.is_empty() {
            rows.push(vec![
                name,
                v.number.to_string(),
                flags,
                "(no reals: traffic dropped)".into(),
            ]);
            continue;
        }
        for (i, r) in v.reals.iter().enumerate() {
            let first = i == 0;
            rows.push(vec![
                if first { name.clone() } else { String::new() },
                if first {
                    v.number.to_string()
                } else {
                    String::new()
                },
                if first { flags.clone() } else { String::new() },
                r.address.clone(),
                r.id.to_string(),
                r.weight.to_string(),
                if r.down { "down" } else { "up" }.into(),
                format!("{} ({:.1}%)", r.slots, 100.0 * f64::from(r.slots) / 65537.0),
            ]);
        }
    }
    let mut o = format!(
        "lb handler {}, version {}: router {}, {} encapsulation{}, {} connection-table entries per worker\n",
        s.handler,
        s.version,
        s.router_mac,
        s.encap,
        if s.encap == "gue" {
            format!(" (port {})", s.gue_port)
        } else {
            String::new()
        },
        s.conn_table_size
    );
    if s.vips.is_empty() {
        o += "no VIPs\n";
    } else {
        o += &table(
            &[
                "VIP",
                "#",
                "FLAGS",
                "REAL",
                "ID",
                "WEIGHT",
                "STATE",
                "RING SLOTS",
            ],
            &rows,
        );
    }
    if !s.quic_servers.is_empty() {
        o += &format!(
            "quic server ids: {}\n",
            s.quic_servers
                .iter()
                .map(|q| format!("{} -> {}", q.id, q.real))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if !s.src_routes.is_empty() {
        o += &format!(
            "source routes: {}\n",
            s.src_routes
                .iter()
                .map(|r| format!("{} -> {}", r.prefix, r.real))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    o
}

fn lb_stats_json(s: &pb::LbStats) -> Value {
    json!({
        "handler": s.handler, "version": s.version, "workers": s.workers,
        "vips": s.vips.iter().map(|v| json!({
            "vip": vip_json(&v.vip), "packets": v.packets, "bytes": v.bytes,
        })).collect::<Vec<_>>(),
        "conn_hits": s.conn_hits, "conn_misses": s.conn_misses,
        "conn_evictions": s.conn_evictions, "quic_routed": s.quic_routed,
        "src_routed": s.src_routed, "ring_routed": s.ring_routed, "icmp_echo": s.icmp_echo,
        "icmp_errors": s.icmp_errors, "passed": s.passed, "drops": drops_json(&s.drops),
    })
}

fn lb_stats_text(s: &pb::LbStats) -> String {
    let rows: Vec<Vec<String>> = s
        .vips
        .iter()
        .map(|v| {
            vec![
                v.vip
                    .as_ref()
                    .map(control::lb::vip_text)
                    .unwrap_or_default(),
                v.packets.to_string(),
                v.bytes.to_string(),
            ]
        })
        .collect();
    let mut o = format!(
        "lb handler {}, version {}, counters of {} worker instance{}\n",
        s.handler,
        s.version,
        s.workers,
        if s.workers == 1 { "" } else { "s" }
    );
    if !rows.is_empty() {
        o += &table(&["VIP", "PACKETS", "BYTES"], &rows);
    }
    o += &format!(
        "connection table: {} hits, {} misses, {} evictions\n\
         real chosen by: ring {}, quic server id {}, source route {}\n\
         icmp: {} echo requests answered, {} errors sent to their flow's real\n\
         passed down the chain: {}\n\
         drops: {}\n",
        s.conn_hits,
        s.conn_misses,
        s.conn_evictions,
        s.ring_routed,
        s.quic_routed,
        s.src_routed,
        s.icmp_echo,
        s.icmp_errors,
        s.passed,
        if s.drops.is_empty() {
            "none".to_string()
        } else {
            s.drops
                .iter()
                .map(|d| format!("{} {}", d.reason, d.count))
                .collect::<Vec<_>>()
                .join(", ")
        }
    );
    o
}

// ---- stats --------------------------------------------------------------------------------

async fn stats(c: &mut Client, a: &StatsArgs, json: bool) -> Result<(), Failure> {
    if !a.watch {
        let s = c.stats.get(pb::GetStatsRequest {}).await?.into_inner();
        out(json, stats_json(&s, None), || stats_text(&s, None));
        return Ok(());
    }
    let mut stream = c
        .stats
        .watch(pb::WatchStatsRequest {
            interval_ms: a.interval_ms,
            count: a.count.unwrap_or(0),
        })
        .await?
        .into_inner();
    let tty = std::io::stdout().is_terminal();
    let mut prev: Option<pb::StatsSnapshot> = None;
    let mut lines = 0;
    loop {
        let next = tokio::select! {
            m = stream.message() => m?,
            _ = tokio::signal::ctrl_c() => None,
        };
        let Some(s) = next else { break };
        let mut o = std::io::stdout().lock();
        if json {
            let _ = writeln!(o, "{}", stats_json(&s, prev.as_ref()));
        } else {
            let text = stats_text(&s, prev.as_ref());
            if tty && lines > 0 {
                // Back to the top of the previous frame, clear below, draw again.
                let _ = write!(o, "\x1b[{lines}A\x1b[J");
            } else if lines > 0 {
                let _ = writeln!(o);
            }
            lines = text.lines().count();
            let _ = write!(o, "{text}");
        }
        let _ = o.flush();
        prev = Some(s);
    }
    Ok(())
}

/// Per-second rates between two snapshots (or since start without a previous one).
struct Rates {
    dt: f64,
}

impl Rates {
    fn new(cur: &pb::StatsSnapshot, prev: Option<&pb::StatsSnapshot>) -> Rates {
        let dt = cur
            .elapsed_ns
            .saturating_sub(prev.map_or(0, |p| p.elapsed_ns)) as f64
            / 1e9;
        Rates { dt }
    }
    fn of(&self, cur: u64, prev: Option<u64>) -> f64 {
        if self.dt <= 0.0 {
            return 0.0;
        }
        cur.saturating_sub(prev.unwrap_or(0)) as f64 / self.dt
    }
}

fn drops_total(d: &[pb::DropCount]) -> u64 {
    d.iter().map(|x| x.count).sum()
}

fn stats_text(s: &pb::StatsSnapshot, prev: Option<&pb::StatsSnapshot>) -> String {
    let r = Rates::new(s, prev);
    let t = s.totals.unwrap_or_default();
    let pt = prev.and_then(|p| p.totals);
    let l = s.latency.unwrap_or_default();
    let mut o = format!(
        "elapsed {}  rx {}/s  tx {}/s  drops {}/s  ({})\n",
        secs(s.elapsed_ns),
        rate(r.of(t.received, pt.map(|p| p.received))),
        rate(r.of(t.transmitted, pt.map(|p| p.transmitted))),
        rate(r.of(t.dropped, pt.map(|p| p.dropped))),
        if prev.is_some() {
            "rates over the last interval"
        } else {
            "average rates since start"
        },
    );
    o += &totals_text(&t);
    o += &format!(
        "burst latency ns: p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  ({} bursts)\n",
        l.p50_ns, l.p90_ns, l.p99_ns, l.p999_ns, l.max_ns, l.count
    );
    o += &format!(
        "drops by reason: {}\n\n",
        if s.drops.is_empty() {
            "none".to_string()
        } else {
            s.drops
                .iter()
                .map(|d| format!("{} {}", d.reason, d.count))
                .collect::<Vec<_>>()
                .join(", ")
        }
    );
    let pw = |id: u32| prev.and_then(|p| p.workers.iter().find(|w| w.id == id));
    let workers: Vec<Vec<String>> = s
        .workers
        .iter()
        .map(|w| {
            let p = pw(w.id);
            let l = w.latency.unwrap_or_default();
            vec![
                format!("w{}", w.id),
                core_name(w.core),
                state_name(w.state).into(),
                w.rx_packets.to_string(),
                w.tx_packets.to_string(),
                rate(r.of(w.rx_packets, p.map(|p| p.rx_packets))),
                rate(r.of(w.tx_packets, p.map(|p| p.tx_packets))),
                drops_total(&w.drops).to_string(),
                format!("{}/{}", w.ring_in, w.ring_out),
                format!(
                    "{:.0}%",
                    100.0 * w.idle_polls as f64 / (w.idle_polls + w.busy_polls).max(1) as f64
                ),
                format!("{}/{}/{}/{}", l.p50_ns, l.p99_ns, l.p999_ns, l.max_ns),
            ]
        })
        .collect();
    o += &table(
        &[
            "WORKER",
            "CORE",
            "STATE",
            "RX",
            "TX",
            "RX/S",
            "TX/S",
            "DROPS",
            "RING IN/OUT",
            "IDLE",
            "LATENCY p50/p99/p99.9/max ns",
        ],
        &workers,
    );
    o += "\n";
    let mut rows = Vec::new();
    for p in &s.ports {
        let pp = prev.and_then(|x| x.ports.iter().find(|y| y.id == p.id));
        rows.push(vec![
            format!("p{}", p.id),
            p.kind.clone(),
            p.rx_packets.to_string(),
            p.tx_packets.to_string(),
            rate(r.of(p.rx_packets, pp.map(|x| x.rx_packets))),
            rate(r.of(p.tx_packets, pp.map(|x| x.tx_packets))),
            drops_total(&p.drops).to_string(),
        ]);
        for q in &p.queues {
            let pq = pp.and_then(|x| x.queues.iter().find(|y| y.queue == q.queue));
            rows.push(vec![
                format!("  p{}:q{}", p.id, q.queue),
                q.worker.map_or_else(|| "-".into(), |w| format!("w{w}")),
                q.rx_packets.to_string(),
                q.tx_packets.to_string(),
                rate(r.of(q.rx_packets, pq.map(|x| x.rx_packets))),
                rate(r.of(q.tx_packets, pq.map(|x| x.tx_packets))),
                drops_total(&q.drops).to_string(),
            ]);
        }
    }
    o += &table(
        &[
            "PORT/QUEUE",
            "KIND/OWNER",
            "RX",
            "TX",
            "RX/S",
            "TX/S",
            "DROPS",
        ],
        &rows,
    );
    o += &handler_stats_text(s);
    o
}

/// Columns of a handler's counter table in text output (the handler lists its headline
/// counters first; `--json` has them all).
const HANDLER_COLUMNS: usize = 10;

/// Per-worker counters of handlers that keep them (the kv cache), one table per handler.
fn handler_stats_text(s: &pb::StatsSnapshot) -> String {
    let mut o = String::new();
    for h in &s.handlers {
        let names: Vec<String> = h
            .workers
            .first()
            .map(|w| {
                w.counters
                    .iter()
                    .take(HANDLER_COLUMNS)
                    .map(|c| c.name.clone())
                    .collect()
            })
            .unwrap_or_default();
        let mut header = vec!["WORKER".to_string()];
        header.extend(names.iter().map(|n| n.to_uppercase()));
        let rows: Vec<Vec<String>> = h
            .workers
            .iter()
            .map(|w| {
                let mut row = vec![format!("w{}", w.worker)];
                row.extend(names.iter().map(|n| {
                    w.counters
                        .iter()
                        .find(|c| &c.name == n)
                        .map_or_else(|| "-".into(), |c| c.value.to_string())
                }));
                row
            })
            .collect();
        let header: Vec<&str> = header.iter().map(String::as_str).collect();
        let more = h
            .workers
            .first()
            .is_some_and(|w| w.counters.len() > HANDLER_COLUMNS);
        o += &format!(
            "\n{}{}\n{}",
            h.kind,
            if more {
                " (all counters with --json)"
            } else {
                ""
            },
            table(&header, &rows)
        );
    }
    o
}

fn handler_stats_json(s: &pb::StatsSnapshot) -> Value {
    Value::Array(
        s.handlers
            .iter()
            .map(|h| {
                json!({
                    "kind": h.kind,
                    "workers": h.workers.iter().map(|w| {
                        let mut m = serde_json::Map::new();
                        m.insert("worker".into(), json!(format!("w{}", w.worker)));
                        for c in &w.counters {
                            m.insert(c.name.clone(), json!(c.value));
                        }
                        Value::Object(m)
                    }).collect::<Vec<_>>(),
                })
            })
            .collect(),
    )
}

fn drops_json(d: &[pb::DropCount]) -> Value {
    Value::Object(
        d.iter()
            .map(|x| (x.reason.clone(), json!(x.count)))
            .collect(),
    )
}

fn latency_json(l: &Option<pb::Latency>) -> Value {
    let l = l.unwrap_or_default();
    json!({"count": l.count, "p50_ns": l.p50_ns, "p90_ns": l.p90_ns, "p99_ns": l.p99_ns, "p999_ns": l.p999_ns, "max_ns": l.max_ns})
}

fn stats_json(s: &pb::StatsSnapshot, prev: Option<&pb::StatsSnapshot>) -> Value {
    let r = Rates::new(s, prev);
    let t = s.totals.unwrap_or_default();
    let pt = prev.and_then(|p| p.totals);
    json!({
        "elapsed_ns": s.elapsed_ns,
        "totals": totals_json(&t),
        "rates": {
            "interval_s": r.dt,
            "rx_pps": r.of(t.received, pt.map(|p| p.received)),
            "tx_pps": r.of(t.transmitted, pt.map(|p| p.transmitted)),
            "drops_pps": r.of(t.dropped, pt.map(|p| p.dropped)),
        },
        "drops": drops_json(&s.drops),
        "latency": latency_json(&s.latency),
        "workers": s.workers.iter().map(|w| json!({
            "id": format!("w{}", w.id), "core": w.core, "state": state_name(w.state),
            "rx_packets": w.rx_packets, "rx_bytes": w.rx_bytes, "tx_packets": w.tx_packets,
            "tx_bytes": w.tx_bytes, "ring_in": w.ring_in, "ring_out": w.ring_out,
            "slow_path": w.slow_path, "copies": w.copies, "busy_polls": w.busy_polls,
            "idle_polls": w.idle_polls, "drops": drops_json(&w.drops), "latency": latency_json(&w.latency),
            "generated": w.generated,
        })).collect::<Vec<_>>(),
        "handlers": handler_stats_json(s),
        "ports": s.ports.iter().map(|p| json!({
            "id": format!("p{}", p.id), "kind": p.kind, "rx_packets": p.rx_packets,
            "rx_bytes": p.rx_bytes, "tx_packets": p.tx_packets, "tx_bytes": p.tx_bytes,
            "drops": drops_json(&p.drops),
            "queues": p.queues.iter().map(|q| json!({
                "queue": format!("p{}:q{}", p.id, q.queue), "worker": q.worker.map(|w| format!("w{w}")),
                "rx_packets": q.rx_packets, "rx_bytes": q.rx_bytes, "tx_packets": q.tx_packets,
                "tx_bytes": q.tx_bytes, "drops": drops_json(&q.drops),
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inline_specs() {
        let h = parse_spec("icmp addresses=[198.18.0.1, 2001:db8::1]").unwrap_err();
        assert!(h.contains("KEY=VALUE"), "spaces split settings: {h}");
        let h = parse_spec("icmp addresses=[198.18.0.1,2001:db8::1]").unwrap();
        assert_eq!(h.kind, "icmp");
        let spec = convert::spec(0, &h).unwrap();
        assert_eq!(spec.kind(), "icmp");
        let h = parse_spec("udp-echo port=9").unwrap();
        assert_eq!(
            convert::spec(0, &h).unwrap(),
            dataplane::handlers::Spec::UdpEcho(dataplane::handlers::UdpEchoSpec { port: 9 })
        );
        assert!(parse_spec("  ").is_err());
        assert!(parse_spec("udp-echo port").is_err());
    }

    #[test]
    fn vips_parse() {
        let v: VipArg = "198.18.1.1:80/tcp".parse().unwrap();
        assert_eq!(
            (v.0.address.as_str(), v.0.port, v.0.proto),
            ("198.18.1.1", 80, pb::LbProto::Tcp as i32)
        );
        let v: VipArg = "[2001:db8::1]:0/udp".parse().unwrap();
        assert_eq!((v.0.address.as_str(), v.0.port), ("2001:db8::1", 0));
        // The address itself is the appliance's to check (a refusal naming the field).
        assert!("300.1.1.1:80/tcp".parse::<VipArg>().is_ok());
        for bad in [
            "198.18.1.1:80",
            "198.18.1.1/tcp",
            "198.18.1.1:80/sctp",
            "198.18.1.1:70000/tcp",
            "2001:db8::1:80/tcp",
            "[2001:db8::1:80/tcp",
            ":80/tcp",
        ] {
            assert!(bad.parse::<VipArg>().is_err(), "{bad}");
        }
    }

    #[test]
    fn cli_parses() {
        Cli::command().debug_assert();
        assert!(
            "w3".parse::<Wid>().is_ok()
                && "3".parse::<Wid>().is_ok()
                && "x".parse::<Wid>().is_err()
        );
    }
}
