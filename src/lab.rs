//! `slipstream run --lab`: the AF_XDP data path end to end on one machine, with nothing to
//! set up and nothing left behind.
//!
//! In order:
//! 1. Root is required (exit 2 otherwise): namespaces, veth, XDP and AF_XDP all need it.
//! 2. A lab comes up: `scripts/lab` (embedded at build time, so the binary works from any
//!    directory and builds exactly the topology the tests use) with the prefix
//!    `ss-lab<pid>`. Labs of earlier runs that were SIGKILLed (prefix `ss-lab<pid>` whose
//!    process is gone) are removed first.
//! 3. The main thread enters the app namespace (setns) *before* the engine is built, so the
//!    XDP attach, the AF_XDP sockets and the pinned worker threads (which inherit the
//!    namespace) all live there.
//! 4. udp-echo runs over AF_XDP on the app veth (`udp 198.18.0.1 7`, `udp 2001:db8::1 7`),
//!    one busy-polling worker on the last allowed core.
//! 5. The peer namespace drives it: [`LOAD_THREADS`] kernel-socket clients pinned to the
//!    other cores, [`FLOWS_PER_THREAD`] flows each (IPv4 and IPv6 alternately), each flow
//!    keeping up to [`WINDOW`] requests outstanding; and one latency probe that sends one
//!    request at a time and records the round trip in an hdrhistogram. Everything stops at
//!    `--duration` (default 10 s) or Ctrl-C, and is also capped in packets.
//!    The load starts once one request has been echoed (the path is up end to end).
//! 6. It prints throughput, loss, latency percentiles and the kernel's counters of the wire
//!    (what was redirected to AF_XDP, dropped, sent, received: where a loss happened), then
//!    the engine's final report.
//!
//! Teardown runs on every way out: a guard's `Drop` on return and error; Ctrl-C/SIGTERM
//! set a flag that ends the run normally; and a panic hook removes the lab too, because the
//! release profile aborts on panic and would skip destructors.
//!
//! The figures are kernel socket to kernel socket through a veth (AF_XDP in copy mode), on
//! a shared machine: a smoke test of the whole path and a feel for its cost, not a
//! benchmark (that is `scripts/bench-afxdp`, with its baselines).
//!
//! Rejected: running the load as `ip netns exec ... <client>` processes (a second binary or
//! a script to ship, and no shared stop flag); keeping the engine in its own process (then
//! the engine's report and the load's figures could not be printed together).

use std::fs::File;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dataplane::config::Config;
use dataplane::engine::{Engine, EngineError};
use dataplane::stats::{new_histogram, Percentiles};

/// `scripts/lab`, run with `bash -c`: one definition of the topology for tests and `--lab`.
const LAB_SCRIPT: &str = include_str!("../scripts/lab");
/// Name prefix of the labs `--lab` makes: `ss-lab<pid>` (13 characters at most).
const PREFIX: &str = "ss-lab";

/// Addresses `scripts/lab` gives the two ends.
const APP_V4: &str = "198.18.0.1";
const APP_V6: &str = "2001:db8::1";
const PEER_V4: &str = "198.18.0.2";
const PEER_V6: &str = "2001:db8::2";
/// The echo port (RFC 862).
const ECHO_PORT: u16 = 7;

/// Default `--duration` for `--lab`, in seconds: long enough for stable percentiles.
const DEFAULT_SECS: f64 = 10.0;
/// Load threads (each pinned, each with its own flows).
const LOAD_THREADS: usize = 2;
/// Flows per load thread (one connected UDP socket each, so one 5-tuple each).
const FLOWS_PER_THREAD: usize = 4;
/// Requests a flow keeps outstanding: enough to keep the worker busy, few enough that the
/// veth and socket queues never overflow.
const WINDOW: u32 = 16;
/// A flow that has heard nothing for this long stops waiting for its outstanding requests
/// (a stall) and sends a new window; replies that come later still count as echoed.
const LOSS_TIMEOUT: Duration = Duration::from_millis(50);
/// Requests per load thread at most, whatever the duration.
const MAX_REQUESTS_PER_THREAD: u64 = 200_000_000;
/// The probe's pause between requests, and its reply timeout.
const PROBE_GAP: Duration = Duration::from_micros(500);
const PROBE_TIMEOUT: Duration = Duration::from_millis(100);
/// Probes at most.
const MAX_PROBES: u64 = 10_000_000;
/// Request payload: thread (1), flow (1), sequence (8), padding to 18 bytes: a 60-byte
/// IPv4 frame, the Ethernet minimum without FCS.
const PAYLOAD: usize = 18;

/// Runs `slipstream run --lab`; returns the exit code.
pub fn run(duration: Option<f64>, json: bool) -> u8 {
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!(
            "slipstream run --lab: needs root (it creates network namespaces and a veth pair, \
             attaches XDP and opens AF_XDP sockets); run it as root, e.g. with sudo"
        );
        return 2;
    }
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        if let Err(e) = signal_hook::flag::register(sig, stop.clone()) {
            eprintln!("slipstream: cannot install signal handler: {e}");
            return 1;
        }
    }
    remove_stale_labs();
    let prefix = format!("{PREFIX}{}", std::process::id());
    let lab = match Lab::up(&prefix) {
        Ok(lab) => lab,
        Err(e) => {
            eprintln!("slipstream run --lab: {e}");
            return 1;
        }
    };
    if stop.load(Ordering::Relaxed) {
        return 1;
    }
    match run_in(&lab, duration.unwrap_or(DEFAULT_SECS), json, &stop) {
        Ok(code) => code,
        Err((code, msg)) => {
            eprintln!("slipstream run --lab: {msg}");
            code
        }
    }
}

/// Everything after the lab is up; the caller's `lab` guard tears it down afterwards.
fn run_in(lab: &Lab, secs: f64, json: bool, stop: &AtomicBool) -> Result<u8, (u8, String)> {
    let allowed = dataplane::topology::allowed_cores();
    let worker_core = dataplane::topology::default_worker_core();
    let load_cores: Vec<u32> = allowed
        .iter()
        .copied()
        .filter(|c| *c != worker_core)
        .collect();
    if load_cores.is_empty() {
        eprintln!(
            "slipstream run --lab: only core {worker_core} is allowed: the load shares it with \
             the worker, so expect poor figures"
        );
    }
    // idle = backoff: the peer's receive work for our replies runs in softirq on the
    // worker's core (a veth receives on the sender's CPU), and when the kernel defers it to
    // ksoftirqd, a busy-polling worker keeps that thread off the core for a scheduler slice:
    // replies then wait milliseconds (p99 7 ms, p99.9 25 ms here). Idle turns that yield
    // let it run at once; a saturated worker has no idle turns and loses nothing.
    let text = format!(
        "[engine]\nstats_interval_ms = 1000\nidle = \"backoff\"\n\n\
         [[ports]]\nkind = \"afxdp\"\ninterface = \"{}\"\nqueues = 1\n\
         rules = [\"udp {APP_V4} {ECHO_PORT}\", \"udp {APP_V6} {ECHO_PORT}\"]\n\n\
         [[workers]]\ncore = {worker_core}\nqueues = [\"p0:q0\"]\n\n\
         [[handlers]]\nkind = \"udp-echo\"\nport = {ECHO_PORT}\n",
        lab.app_if
    );
    let label = Path::new("(slipstream run --lab)");
    let cfg = Config::parse(&text, label)
        .and_then(|c| c.validate(label, &allowed).map(|()| c))
        .map_err(|e| (2, e.to_string()))?;

    // The engine, its XDP program and sockets, and its workers live in the app namespace.
    let peer_ns = File::open(Path::new("/run/netns").join(&lab.peer_ns))
        .map_err(|e| (1, format!("opening netns {}: {e}", lab.peer_ns)))?;
    let in_app =
        Netns::enter(&lab.app_ns).map_err(|e| (1, format!("entering {}: {e}", lab.app_ns)))?;
    let mut engine = Engine::new(&cfg, Path::new(".")).map_err(|e| (2, e.to_string()))?;
    if let Err(e) = engine.start() {
        let code = match e {
            EngineError::Pin { .. } | EngineError::Plan(_) | EngineError::Port(_) => 2,
            _ => 1,
        };
        return Err((code, e.to_string()));
    }
    eprintln!(
        "slipstream: lab {}: udp-echo over AF_XDP on {} (app, worker on core {worker_core}); \
         load from {} ({LOAD_THREADS} threads x {FLOWS_PER_THREAD} flows, window {WINDOW}, \
         + latency probe, on core(s) {}) for {secs} s; Ctrl-C stops",
        lab.prefix,
        lab.app_if,
        lab.peer_if,
        if load_cores.is_empty() {
            worker_core.to_string()
        } else {
            dataplane::topology::format_cpuset(&load_cores.iter().copied().collect())
        }
    );

    // The sockets are in the XSKMAP before the worker's first loop turn fills the fill
    // ring, and the first requests of every flow leave together once the peer has resolved
    // the app's address: start the load only when one request has come back.
    let ready = std::thread::scope(|s| s.spawn(|| wait_for_echo(&peer_ns)).join())
        .unwrap_or_else(|_| Err(io::Error::other("readiness probe panicked")));
    if let Err(e) = ready {
        let _ = engine.stop();
        return Err((1, format!("the AF_XDP path does not echo: {e}")));
    }

    let deadline = Instant::now() + Duration::from_secs_f64(secs.max(0.0));
    let load_stop = AtomicBool::new(false);
    let pick_core = |i: usize| load_cores.get(i % load_cores.len().max(1)).copied();
    let started = Instant::now();
    let (loads, probe) = std::thread::scope(|s| {
        let loads: Vec<_> = (0..LOAD_THREADS)
            .map(|t| {
                let (ns, core, stop) = (&peer_ns, pick_core(t), &load_stop);
                s.spawn(move || load(t as u8, ns, core, stop, deadline))
            })
            .collect();
        let probe = {
            let (ns, core, stop) = (&peer_ns, pick_core(LOAD_THREADS), &load_stop);
            s.spawn(move || probe(ns, core, stop, deadline))
        };
        // The main thread: stats once a second until the deadline or a signal.
        let interval = Duration::from_millis(cfg.engine.stats_interval_ms);
        let mut last = engine.snapshot();
        let mut last_at = Instant::now();
        let mut next_print = Instant::now() + interval;
        while Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(20));
            if !interval.is_zero() && Instant::now() >= next_print {
                let now = engine.snapshot();
                eprintln!(
                    "{}",
                    super::stats_line(&now, &last, last_at.elapsed().as_secs_f64())
                );
                last = now;
                last_at = Instant::now();
                next_print += interval;
            }
        }
        if stop.load(Ordering::Relaxed) {
            eprintln!("slipstream: stopping");
        }
        load_stop.store(true, Ordering::Relaxed);
        let loads: Vec<io::Result<LoadStats>> = loads
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(io::Error::other("load thread panicked")))
            })
            .collect();
        let probe = probe
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("probe thread panicked")));
        (loads, probe)
    });
    let elapsed = started.elapsed().as_secs_f64();
    let stopped = engine.stop();
    drop(in_app);
    let wire = Wire::read(lab);

    let mut total = LoadStats::default();
    let mut problems = Vec::new();
    for (t, l) in loads.into_iter().enumerate() {
        match l {
            Ok(l) => total.add(&l),
            Err(e) => problems.push(format!("load thread {t}: {e}")),
        }
    }
    let probe = probe.unwrap_or_else(|e| {
        problems.push(format!("latency probe: {e}"));
        ProbeStats::default()
    });
    let latency = probe.latency;
    let (report, accounting) = match stopped {
        Ok(r) => (r, Vec::new()),
        Err(EngineError::Accounting { problems, report }) => (*report, problems),
        Err(e) => return Err((1, e.to_string())),
    };
    if json {
        let out = serde_json::json!({
            "lab": {
                "prefix": lab.prefix,
                "app_interface": lab.app_if,
                "peer_interface": lab.peer_if,
                "worker_core": worker_core,
                "load_cores": load_cores,
            },
            "load": {
                "seconds": elapsed,
                "threads": LOAD_THREADS,
                "flows": LOAD_THREADS * FLOWS_PER_THREAD,
                "window": WINDOW,
                "sent": total.sent,
                "echoed": total.echoed,
                "lost": total.lost(),
                "stalls": total.stalls,
                "bad": total.bad,
                "echoes_per_sec": total.echoed as f64 / elapsed.max(1e-9),
            },
            "latency_ns": latency,
            "probe": { "sent": probe.sent, "lost": probe.lost },
            "wire": wire,
            "report": report,
        });
        println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
    } else {
        println!(
            "lab          {} ({} <-> {}), {LOAD_THREADS} load threads x {FLOWS_PER_THREAD} flows, \
             window {WINDOW}",
            lab.prefix, lab.app_if, lab.peer_if
        );
        println!(
            "load         {} sent, {} echoed in {elapsed:.2} s ({:.1} k echoes/s), {} lost ({:.3}%), {} bad, \
             {} stalls > {LOSS_TIMEOUT:?}",
            total.sent,
            total.echoed,
            total.echoed as f64 / elapsed.max(1e-9) / 1e3,
            total.lost(),
            100.0 * total.lost() as f64 / total.sent.max(1) as f64,
            total.bad,
            total.stalls
        );
        println!(
            "latency (us) p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}  ({} probes, {} lost; \
             round trip, kernel socket to kernel socket, under load)",
            us(latency.p50),
            us(latency.p90),
            us(latency.p99),
            us(latency.p999),
            us(latency.max),
            latency.count,
            probe.lost
        );
        println!(
            "wire         app end: {} redirected to AF_XDP, {} dropped, {} sent; peer end: {} \
             not sent (ring full), {} received, {} dropped (kernel counters, ARP/ND included)",
            wire.app_redirected,
            wire.app_rx_dropped,
            wire.app_tx,
            wire.peer_tx_dropped,
            wire.peer_rx,
            wire.peer_rx_dropped
        );
        println!("-- engine --");
        super::print_final(&report, false);
    }
    for p in &accounting {
        eprintln!("slipstream: accounting: {p}");
    }
    for p in &problems {
        eprintln!("slipstream run --lab: {p}");
    }
    if total.echoed == 0 {
        problems.push("no request was echoed".into());
        eprintln!("slipstream run --lab: no request was echoed: the AF_XDP path does not work");
    }
    if total.bad > 0 {
        problems.push(format!("{} replies did not match a request", total.bad));
    }
    Ok(if accounting.is_empty() && problems.is_empty() {
        0
    } else {
        1
    })
}

/// What the kernel counted on the veth, to tell where lost requests or replies went: frames
/// the app end's XDP program redirected to AF_XDP (`ethtool -S`, summed over queues), frames
/// the app end sent (AF_XDP TX and the app kernel's own), and what the peer end received and
/// dropped (`ip -s link`).
#[derive(Debug, Default, serde::Serialize)]
struct Wire {
    app_redirected: u64,
    /// Drops at the app end: XDP_DROP, redirects that failed (no fill frame, RX ring full)
    /// and ring overflows (`rx_queue_N_xdp_drops` + `rx_queue_N_drops`), and the stack's.
    app_rx_dropped: u64,
    app_tx: u64,
    /// Frames the peer could not put on the wire (veth ring full).
    peer_tx_dropped: u64,
    peer_rx: u64,
    peer_rx_dropped: u64,
}

impl Wire {
    /// Reads the counters; a counter that cannot be read stays 0.
    fn read(lab: &Lab) -> Wire {
        let link = |ns: &str, dev: &str| -> serde_json::Value {
            Command::new("ip")
                .args(["-n", ns, "-j", "-s", "link", "show", "dev", dev])
                .output()
                .ok()
                .and_then(|o| serde_json::from_slice(&o.stdout).ok())
                .unwrap_or_default()
        };
        let n = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
        let app = link(&lab.app_ns, &lab.app_if);
        let peer = link(&lab.peer_ns, &lab.peer_if);
        let ethtool = Command::new("ip")
            .args(["netns", "exec", &lab.app_ns, "ethtool", "-S", &lab.app_if])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let per_queue = |suffixes: &[&str]| -> u64 {
            ethtool
                .lines()
                .filter_map(|l| l.trim().split_once(':'))
                .filter(|(k, _)| {
                    k.starts_with("rx_queue_") && suffixes.iter().any(|s| k.ends_with(s))
                })
                .filter_map(|(_, v)| v.trim().parse::<u64>().ok())
                .sum()
        };
        Wire {
            app_redirected: per_queue(&["_xdp_redirect"]),
            // `_drops` also counts redirects that failed (no fill frame, RX ring full).
            app_rx_dropped: per_queue(&["_drops"]) + n(&app[0]["stats64"]["rx"]["dropped"]),
            app_tx: n(&app[0]["stats64"]["tx"]["packets"]),
            peer_tx_dropped: n(&peer[0]["stats64"]["tx"]["dropped"]),
            peer_rx: n(&peer[0]["stats64"]["rx"]["packets"]),
            peer_rx_dropped: n(&peer[0]["stats64"]["rx"]["dropped"]),
        }
    }
}

fn us(ns: u64) -> f64 {
    ns as f64 / 1e3
}

/// Runs `scripts/lab --prefix P CMD`; Ok(stdout), Err with its stderr.
fn lab_script(prefix: &str, cmd: &str) -> Result<String, String> {
    let out = Command::new("bash")
        .arg("-c")
        .arg(LAB_SCRIPT)
        .arg("scripts/lab")
        .args(["--prefix", prefix, cmd])
        .output()
        .map_err(|e| format!("running bash (scripts/lab): {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "scripts/lab {cmd}: {}",
            String::from_utf8_lossy(&out.stderr).trim_end()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Removes the lab `prefix` (veth first, then both namespaces), whatever state it is in.
fn teardown(prefix: &str) {
    if let Err(e) = lab_script(prefix, "down") {
        eprintln!("slipstream: lab {prefix}: {e}");
    }
    for ns in [format!("{prefix}-app"), format!("{prefix}-peer")] {
        if Path::new("/run/netns").join(&ns).exists() {
            let _ = Command::new("ip").args(["netns", "del", &ns]).output();
        }
    }
}

/// Removes labs of earlier `--lab` runs whose process is gone (SIGKILL leaves them).
fn remove_stale_labs() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    let mut stale: Vec<String> = entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter_map(|name| {
            let prefix = name
                .strip_suffix("-app")
                .or_else(|| name.strip_suffix("-peer"))?;
            let pid = prefix.strip_prefix(PREFIX)?;
            let is_pid = !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit());
            (is_pid && !Path::new("/proc").join(pid).exists()).then(|| prefix.to_string())
        })
        .collect();
    stale.sort();
    stale.dedup();
    for prefix in stale {
        eprintln!("slipstream: removing lab {prefix} left by a run that was killed");
        teardown(&prefix);
    }
}

/// The prefix of the lab that is up, for the panic hook.
static ACTIVE: Mutex<Option<String>> = Mutex::new(None);

/// The lab: up on creation, down on drop (and from the panic hook).
struct Lab {
    prefix: String,
    app_ns: String,
    peer_ns: String,
    app_if: String,
    peer_if: String,
}

impl Lab {
    fn up(prefix: &str) -> Result<Lab, String> {
        let lab = Lab {
            prefix: prefix.to_string(),
            app_ns: format!("{prefix}-app"),
            peer_ns: format!("{prefix}-peer"),
            app_if: format!("{prefix}-a"),
            peer_if: format!("{prefix}-p"),
        };
        if let Ok(mut active) = ACTIVE.lock() {
            *active = Some(prefix.to_string());
        }
        static HOOK: std::sync::Once = std::sync::Once::new();
        HOOK.call_once(|| {
            let previous = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                if let Some(prefix) = ACTIVE.lock().ok().and_then(|mut a| a.take()) {
                    teardown(&prefix);
                }
                previous(info);
            }));
        });
        // The script also turns checksum offload off at both ends, so that kernel sockets
        // put complete checksums on the wire, as on a real one (AF_XDP hands bytes over
        // as they are).
        lab_script(prefix, "up")?;
        Ok(lab)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Ok(mut active) = ACTIVE.lock() {
            active.take();
        }
        teardown(&self.prefix);
    }
}

fn setns(fd: &impl AsRawFd) -> io::Result<()> {
    // SAFETY: setns(2) on an open nsfs descriptor; it changes only the calling thread's
    // network namespace and touches no memory of ours.
    if unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The calling thread in network namespace `ns` (under /run/netns) until dropped.
struct Netns {
    home: OwnedFd,
}

impl Netns {
    fn enter(ns: &str) -> io::Result<Netns> {
        let home: OwnedFd = File::open("/proc/thread-self/ns/net")?.into();
        setns(&File::open(Path::new("/run/netns").join(ns))?)?;
        Ok(Netns { home })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = setns(&self.home) {
            eprintln!("slipstream: returning to the original network namespace: {e}");
        }
    }
}

/// Pins the calling thread to `core`.
fn pin(core: Option<u32>) -> io::Result<()> {
    let Some(core) = core else {
        return Ok(());
    };
    // SAFETY: cpu_set_t is a plain bit mask; all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: CPU_SET writes one bit of `set`; `core` comes from the allowed cpuset, which
    // sched_getaffinity read into a set of this same size.
    unsafe { libc::CPU_SET(core as usize, &mut set) };
    // SAFETY: `set` is a live cpu_set_t and its size is passed; pid 0 is this thread.
    if unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A UDP socket of the peer: bound to the peer address of `dst`'s family, connected to
/// `dst`. Must be called in the peer namespace.
fn peer_socket(dst: SocketAddr) -> io::Result<UdpSocket> {
    let bind = if dst.is_ipv4() {
        format!("{PEER_V4}:0")
    } else {
        format!("[{PEER_V6}]:0")
    };
    let s = UdpSocket::bind(bind)?;
    s.connect(dst)?;
    Ok(s)
}

/// The echo address of flow `i`: even flows IPv4, odd flows IPv6.
fn echo_addr(i: usize) -> SocketAddr {
    if i % 2 == 1 {
        SocketAddr::new(APP_V6.parse().expect("an IPv6 address"), ECHO_PORT)
    } else {
        SocketAddr::new(APP_V4.parse().expect("an IPv4 address"), ECHO_PORT)
    }
}

#[derive(Debug, Default)]
struct LoadStats {
    sent: u64,
    echoed: u64,
    bad: u64,
    stalls: u64,
}

impl LoadStats {
    /// Requests never echoed.
    fn lost(&self) -> u64 {
        self.sent.saturating_sub(self.echoed)
    }

    fn add(&mut self, o: &LoadStats) {
        self.sent += o.sent;
        self.echoed += o.echoed;
        self.stalls += o.stalls;
        self.bad += o.bad;
    }
}

/// One flow of a load thread: a connected socket and its outstanding requests.
struct Flow {
    sock: UdpSocket,
    outstanding: u32,
    last_reply: Instant,
}

/// A load thread: enters the peer namespace, pins itself, and keeps [`WINDOW`] requests
/// outstanding on each of its flows until `stop` or `deadline`.
fn load(
    thread: u8,
    peer_ns: &File,
    core: Option<u32>,
    stop: &AtomicBool,
    deadline: Instant,
) -> io::Result<LoadStats> {
    setns(peer_ns)?;
    pin(core)?;
    let mut flows = Vec::with_capacity(FLOWS_PER_THREAD);
    for i in 0..FLOWS_PER_THREAD {
        let sock = peer_socket(echo_addr(i))?;
        sock.set_nonblocking(true)?;
        flows.push(Flow {
            sock,
            outstanding: 0,
            last_reply: Instant::now(),
        });
    }
    let mut st = LoadStats::default();
    let mut req = [0u8; PAYLOAD];
    let mut buf = [0u8; 2048];
    let mut seq = 0u64;
    let mut polls: Vec<libc::pollfd> = flows
        .iter()
        .map(|f| libc::pollfd {
            fd: f.sock.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let drain_until = loop {
        let now = Instant::now();
        if stop.load(Ordering::Relaxed) || now >= deadline || st.sent >= MAX_REQUESTS_PER_THREAD {
            break now + LOSS_TIMEOUT * 2;
        }
        let mut progress = false;
        for (i, f) in flows.iter_mut().enumerate() {
            while f.outstanding < WINDOW {
                req[0] = thread;
                req[1] = i as u8;
                req[2..10].copy_from_slice(&seq.to_le_bytes());
                match f.sock.send(&req) {
                    Ok(_) => {
                        seq += 1;
                        st.sent += 1;
                        f.outstanding += 1;
                        progress = true;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e),
                }
            }
            receive(f, thread, i, &mut buf, &mut st, &mut progress)?;
            if f.outstanding > 0 && now.duration_since(f.last_reply) > LOSS_TIMEOUT {
                st.stalls += 1;
                f.outstanding = 0;
                f.last_reply = now;
            }
        }
        if !progress {
            // Nothing to send or receive: wait for a reply rather than spin.
            // SAFETY: `polls` holds one valid pollfd per flow socket, all open.
            unsafe { libc::poll(polls.as_mut_ptr(), polls.len() as libc::nfds_t, 1) };
        }
    };
    // Collect the replies still on their way; what has not come by then is lost.
    while Instant::now() < drain_until && st.echoed < st.sent {
        let mut progress = false;
        for (i, f) in flows.iter_mut().enumerate() {
            receive(f, thread, i, &mut buf, &mut st, &mut progress)?;
        }
        if !progress {
            // SAFETY: as above.
            unsafe { libc::poll(polls.as_mut_ptr(), polls.len() as libc::nfds_t, 1) };
        }
    }
    Ok(st)
}

/// Takes every reply waiting on flow `i`, checking that it answers one of its requests.
fn receive(
    f: &mut Flow,
    thread: u8,
    i: usize,
    buf: &mut [u8],
    st: &mut LoadStats,
    progress: &mut bool,
) -> io::Result<()> {
    loop {
        match f.sock.recv(buf) {
            Ok(n) => {
                *progress = true;
                f.last_reply = Instant::now();
                if n == PAYLOAD && buf[0] == thread && buf[1] == i as u8 {
                    st.echoed += 1;
                    f.outstanding = f.outstanding.saturating_sub(1);
                } else {
                    st.bad += 1;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            // An ICMP error queued on the socket (port unreachable while starting): ignore.
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {}
            Err(e) => return Err(e),
        }
    }
}

#[derive(Default)]
struct ProbeStats {
    sent: u64,
    lost: u64,
    latency: Percentiles,
}

/// Readiness: from the peer, one request at a time until one is echoed (each waits
/// 100 ms, 50 at most).
fn wait_for_echo(peer_ns: &File) -> io::Result<()> {
    setns(peer_ns)?;
    let sock = peer_socket(echo_addr(0))?;
    sock.set_read_timeout(Some(Duration::from_millis(100)))?;
    let mut buf = [0u8; 64];
    for i in 0..50u8 {
        let req = [0xfe, i];
        sock.send(&req)?;
        let until = Instant::now() + Duration::from_millis(100);
        while Instant::now() < until {
            match sock.recv(&mut buf) {
                Ok(n) if buf[..n] == req => return Ok(()),
                Ok(_) => {}
                Err(_) => break,
            }
        }
    }
    Err(io::Error::other("no echo from the app end within 5 s"))
}

/// The latency probe: one IPv4 request at a time from the peer, round trip recorded.
fn probe(
    peer_ns: &File,
    core: Option<u32>,
    stop: &AtomicBool,
    deadline: Instant,
) -> io::Result<ProbeStats> {
    setns(peer_ns)?;
    pin(core)?;
    let sock = peer_socket(echo_addr(0))?;
    sock.set_read_timeout(Some(PROBE_TIMEOUT))?;
    let mut st = ProbeStats::default();
    let mut rtt = new_histogram();
    let mut buf = [0u8; 2048];
    let mut req = [0u8; PAYLOAD];
    req[0] = 0xff;
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline && st.sent < MAX_PROBES {
        req[2..10].copy_from_slice(&st.sent.to_le_bytes());
        let sent_at = Instant::now();
        if sock.send(&req).is_err() {
            st.lost += 1;
            std::thread::sleep(PROBE_TIMEOUT);
            continue;
        }
        st.sent += 1;
        loop {
            match sock.recv(&mut buf) {
                // A late reply to an earlier probe: keep waiting for this one.
                Ok(n) if n != PAYLOAD || buf[2..10] != req[2..10] => {
                    if sent_at.elapsed() >= PROBE_TIMEOUT {
                        st.lost += 1;
                        break;
                    }
                }
                Ok(_) => {
                    let ns = u64::try_from(sent_at.elapsed().as_nanos()).unwrap_or(u64::MAX);
                    rtt.saturating_record(ns.max(1));
                    break;
                }
                Err(_) => {
                    st.lost += 1;
                    break;
                }
            }
        }
        std::thread::sleep(PROBE_GAP);
    }
    st.latency = Percentiles::of(&rtt);
    Ok(st)
}
