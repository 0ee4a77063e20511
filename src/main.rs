//! `slipstream`: the appliance binary. Wiring only: parse arguments, load the config, build
//! the engine, print stats, map errors to exit codes (0 ok, 1 runtime failure, 2 bad
//! configuration or usage).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};

use dataplane::config::{
    Config, EngineConfig, MemoryPortConfig, MemorySink, MemorySource, PortConfig, WorkerConfig,
};
use dataplane::engine::{Engine, EngineError, Report};
use dataplane::handlers::{Spec, UdpEchoSpec};

mod lab;
mod replay;

#[derive(Debug, Parser)]
#[command(
    name = "slipstream",
    version,
    about = "Kernel-bypass packet-processing appliance"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the data plane until SIGINT/SIGTERM (or --duration).
    Run(RunArgs),
    /// Run golden pcap replay cases, or any capture through a config.
    Replay(replay::ReplayArgs),
    /// Check a configuration file and print it with every default filled in.
    CheckConfig {
        /// The TOML file.
        file: PathBuf,
    },
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// Configuration file (TOML). Without it, a built-in default runs: one memory port
    /// generating 64-byte UDP requests, udp-echo, one worker on the last allowed core.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Stop by itself after this many seconds (default: run until SIGINT/SIGTERM).
    #[arg(long)]
    duration: Option<f64>,
    /// Print the final report as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// Serve the control plane (`ctl`) on this Unix socket (default: the config's
    /// control.socket, /run/slipstream/ctl.sock).
    #[arg(long, value_name = "PATH")]
    ctl_socket: Option<PathBuf>,
    /// Do not serve the control plane.
    #[arg(long, conflicts_with = "ctl_socket")]
    no_ctl: bool,
    /// Root only: bring up a throw-away veth lab, run udp-echo over AF_XDP on it and drive
    /// it from the peer namespace with kernel UDP clients for --duration (default 10) s;
    /// prints throughput and latency, and removes the lab on exit (src/lab.rs).
    #[arg(long, conflicts_with = "config")]
    lab: bool,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SLIPSTREAM_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    // Handler kinds from other crates, before any config is read (`kind = "kv"`).
    kv::register();
    let code = match cli.command {
        Command::Run(args) => run(args),
        Command::Replay(args) => match replay::main(args) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("slipstream replay: {e:#}");
                2
            }
        },
        Command::CheckConfig { file } => match Config::load(&file) {
            Ok(cfg) => {
                print!("{}", toml::to_string_pretty(&cfg).unwrap_or_default());
                0
            }
            Err(e) => {
                eprintln!("slipstream: {e}");
                2
            }
        },
    };
    ExitCode::from(code)
}

/// The configuration `slipstream run` uses without `--config`: works on any machine.
fn default_config() -> Config {
    let core = dataplane::topology::default_worker_core();
    Config {
        engine: EngineConfig::default(),
        ports: vec![PortConfig::Memory(MemoryPortConfig {
            source: MemorySource::Generate,
            sink: MemorySink::Discard,
            ..MemoryPortConfig::default()
        })],
        workers: vec![WorkerConfig {
            core,
            queues: vec!["p0:q0".into()],
        }],
        handlers: vec![Spec::UdpEcho(UdpEchoSpec::default())],
        control: Default::default(),
    }
}

fn run(args: RunArgs) -> u8 {
    if args.lab {
        return lab::run(args.duration, args.json);
    }
    let (cfg, base) = match &args.config {
        Some(path) => match Config::load(path) {
            Ok(cfg) => (
                cfg,
                path.parent().map(Path::to_path_buf).unwrap_or_default(),
            ),
            Err(e) => {
                eprintln!("slipstream: {e}");
                return 2;
            }
        },
        None => {
            let cfg = default_config();
            eprintln!(
                "slipstream: no --config: built-in default (memory port generating {}-byte UDP \
                 requests, udp-echo, one worker on core {})",
                64, cfg.workers[0].core
            );
            (cfg, PathBuf::from("."))
        }
    };
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        if let Err(e) = signal_hook::flag::register(sig, stop.clone()) {
            eprintln!("slipstream: cannot install signal handler: {e}");
            return 1;
        }
    }
    let engine = match Engine::new(&cfg, &base) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("slipstream: {e}");
            return 2;
        }
    };
    // The engine is shared with the control plane's thread; `None` once stopped.
    let engine: control::SharedEngine = Arc::new(Mutex::new(Some(engine)));
    let daemon = match start_control(&args, &cfg, &base, &engine, &stop) {
        Ok(d) => d,
        Err(code) => return code,
    };
    let lock = || engine.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(Err(e)) = lock().as_mut().map(Engine::start) {
        eprintln!("slipstream: {e}");
        return match e {
            EngineError::Pin { .. } | EngineError::Plan(_) | EngineError::Port(_) => 2,
            _ => 1,
        };
    }
    let snapshot = || lock().as_ref().map(Engine::snapshot);
    let interval = Duration::from_millis(cfg.engine.stats_interval_ms);
    let deadline = args
        .duration
        .map(|s| Instant::now() + Duration::from_secs_f64(s.max(0.0)));
    let Some(mut last) = snapshot() else {
        return 1;
    };
    let mut last_at = Instant::now();
    let mut next_print = Instant::now() + interval;
    loop {
        if stop.load(Ordering::Relaxed) {
            eprintln!("slipstream: stopping");
            break;
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        let finished = lock()
            .as_ref()
            .is_none_or(|e| e.ports().iter().all(|p| p.rx_finished()) && e.in_flight() == 0);
        if finished {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
        if !interval.is_zero() && Instant::now() >= next_print {
            let Some(now) = snapshot() else { break };
            let dt = last_at.elapsed().as_secs_f64();
            eprintln!("{}", stats_line(&now, &last, dt));
            last = now;
            last_at = Instant::now();
            next_print += interval;
        }
    }
    let Some(engine) = lock().take() else {
        return 1;
    };
    let result = engine.stop();
    if let Some(d) = daemon {
        d.finish(control::server::outcome(&result));
    }
    match result {
        Ok(report) => {
            print_final(&report, args.json);
            0
        }
        Err(EngineError::Accounting { problems, report }) => {
            print_final(&report, args.json);
            for p in problems {
                eprintln!("slipstream: accounting: {p}");
            }
            1
        }
        Err(e) => {
            eprintln!("slipstream: {e}");
            1
        }
    }
}

/// Starts the control plane unless turned off. A failure on the default socket (not
/// root, or another instance serving it) is a warning; on a socket or TCP listener the
/// user asked for, it is an error (exit 2).
fn start_control(
    args: &RunArgs,
    cfg: &Config,
    base: &Path,
    engine: &control::SharedEngine,
    stop: &Arc<AtomicBool>,
) -> Result<Option<control::Daemon>, u8> {
    if args.no_ctl || !cfg.control.enabled {
        return Ok(None);
    }
    let mut ccfg = cfg.control.clone();
    ccfg.resolve(base);
    if let Some(p) = &args.ctl_socket {
        ccfg.socket = p.clone();
    }
    let best_effort = control::server::is_default_socket(&ccfg.socket) && ccfg.tcp.is_none();
    let started = control::Options::from_config(&ccfg, &cfg.ports)
        .and_then(|opts| control::Daemon::start(engine.clone(), stop.clone(), opts));
    match started {
        Ok(d) => {
            eprintln!("slipstream: control plane on {}", d.listeners().join(", "));
            Ok(Some(d))
        }
        Err(e) if best_effort => {
            eprintln!("slipstream: control plane off: {e} (use --ctl-socket PATH)");
            Ok(None)
        }
        Err(e) => {
            eprintln!("slipstream: {e}");
            Err(2)
        }
    }
}

fn mpps(packets: u64, secs: f64) -> f64 {
    if secs <= 0.0 {
        0.0
    } else {
        packets as f64 / secs / 1e6
    }
}

fn stats_line(now: &Report, last: &Report, dt: f64) -> String {
    let w = now.worker_totals();
    let l = last.worker_totals();
    format!(
        "[{:>6.1}s] rx {:>7.3} Mpps  tx {:>7.3} Mpps  drops {:>8}  burst latency p50 {} ns p99 {} ns",
        now.elapsed.as_secs_f64(),
        mpps(w.rx_packets - l.rx_packets, dt),
        mpps(w.tx_packets - l.tx_packets, dt),
        now.drops().total() - last.drops().total(),
        now.latency.p50,
        now.latency.p99,
    )
}

fn print_final(r: &Report, json: bool) {
    if json {
        println!("{}", serde_json::to_string_pretty(r).unwrap_or_default());
        return;
    }
    let secs = r.elapsed.as_secs_f64();
    let w = r.worker_totals();
    println!("elapsed      {secs:.2} s");
    println!(
        "received     {} packets ({:.3} Mpps)",
        r.received(),
        mpps(r.received(), secs)
    );
    println!(
        "transmitted  {} packets ({:.3} Mpps)",
        r.transmitted(),
        mpps(r.transmitted(), secs)
    );
    println!("dropped      {}", r.drops().total());
    for (reason, n) in r.drops().nonzero() {
        println!("  {reason:<14} {n}");
    }
    println!("slow path    {}", r.slow_path());
    if r.generated() > 0 {
        println!(
            "generated    {} (extra datagrams of multi-datagram answers)",
            r.generated()
        );
    }
    println!("copies       {}", w.copies);
    println!(
        "burst latency (ns)  p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  ({} bursts)",
        r.latency.p50, r.latency.p90, r.latency.p99, r.latency.p999, r.latency.max, r.latency.count
    );
    for p in &r.ports {
        println!(
            "  {} {}{}: rx {} tx {} drops {}",
            p.id,
            p.kind,
            if p.info.is_empty() {
                String::new()
            } else {
                format!(" ({})", p.info)
            },
            p.stats.rx_packets,
            p.stats.tx_packets,
            p.stats.drops.total()
        );
    }
    for wr in &r.workers {
        println!(
            "  {} {}: rx {} tx {} drops {} ring in/out {}/{} idle {:.1}%",
            wr.id,
            wr.core
                .map(|c| c.to_string())
                .unwrap_or_else(|| "unpinned".into()),
            wr.counters.rx_packets,
            wr.counters.tx_packets,
            wr.counters.drops.total(),
            wr.counters.ring_in,
            wr.counters.ring_out,
            100.0 * wr.counters.idle_polls as f64
                / (wr.counters.idle_polls + wr.counters.busy_polls).max(1) as f64
        );
    }
    println!("accounting   ok: every frame back in its pool, received == transmitted + dropped + slow path");
}
