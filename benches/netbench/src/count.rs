//! `netbench xdp-drop` and `netbench sink`: attach a counting XDP program to an interface for
//! a bounded window, sample its per-CPU counter, detach (a guard does it on every exit path,
//! Ctrl-C included: SIGINT/SIGTERM end the window early), and report.
//!
//! - `xdp-drop` (`nb_drop`) counts and drops every frame: the kernel's XDP_DROP rate on the
//!   app end, the ceiling any AF_XDP receiver on that veth is held against.
//! - `sink` (`nb_sink`) runs on the peer end and counts and drops IPv4 UDP (the echo
//!   replies), optionally only from one source port; everything else (ARP, neighbour
//!   discovery) goes to the kernel so the peer stays reachable.
//!
//! Two rates are reported: `pps` over the whole window, and `active_pps` from the last sample
//! before the first packet to the last sample that saw the counter move, i.e. the rate while
//! traffic flowed (resolution: one sample period, `--sample-ms`).

use std::fs;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde_json::json;

use crate::bpf::{Mode, Prog, Programs, COUNT_HIT, COUNT_PASS};

/// New packets a sample must see to count as traffic for `active_pps`.
const MIN_ACTIVE_DELTA: u64 = 8;

/// Options both counters share.
#[derive(clap::Args, Debug)]
pub struct Common {
    /// Interface to attach to, in this netns.
    #[arg(long)]
    pub ifname: String,
    /// Length of the window in seconds (SIGINT/SIGTERM end it early).
    #[arg(long)]
    pub seconds: f64,
    /// XDP attach mode. Default native: veth supports it, and it is what AF_XDP uses there.
    #[arg(long, value_enum, default_value_t = Mode::Native)]
    pub mode: Mode,
    /// CPU for the sampling thread (the XDP program runs wherever the packets are received).
    /// Default: unpinned.
    #[arg(long)]
    pub core: Option<usize>,
    /// Counter sampling period in milliseconds. Default 10: 0.5 % of a 2 s run.
    #[arg(long, default_value_t = 10)]
    pub sample_ms: u64,
    /// File to create once the program is attached (for scripts to wait on).
    #[arg(long)]
    pub ready_file: Option<PathBuf>,
}

/// Arguments of `netbench xdp-drop`.
#[derive(clap::Args, Debug)]
pub struct DropArgs {
    #[command(flatten)]
    pub common: Common,
}

/// Arguments of `netbench sink`.
#[derive(clap::Args, Debug)]
pub struct SinkArgs {
    #[command(flatten)]
    pub common: Common,
    /// Count only UDP from this source port (the echo port); 0 = any UDP. Default 0.
    #[arg(long, default_value_t = 0)]
    pub sport: u16,
}

/// Runs `xdp-drop`.
pub fn run_drop(args: &DropArgs, stop: &AtomicBool) -> anyhow::Result<serde_json::Value> {
    run(Prog::Drop, "xdp-drop", &args.common, 0, stop)
}

/// Runs `sink`.
pub fn run_sink(args: &SinkArgs, stop: &AtomicBool) -> anyhow::Result<serde_json::Value> {
    run(Prog::Sink, "sink", &args.common, args.sport, stop)
}

fn run(
    prog: Prog,
    cmd: &str,
    args: &Common,
    sport: u16,
    stop: &AtomicBool,
) -> anyhow::Result<serde_json::Value> {
    if !(args.seconds > 0.0 && args.seconds.is_finite()) {
        bail!("--seconds {}: use a positive number", args.seconds);
    }
    if args.sample_ms == 0 {
        bail!("--sample-ms 0: use at least 1");
    }
    crate::pin(args.core)?;
    let progs = Programs::load()?;
    progs.set_sink_sport(sport)?;
    let attached = progs.attach(prog, &args.ifname, args.mode)?;
    if let Some(path) = &args.ready_file {
        fs::write(path, b"attached\n")
            .with_context(|| format!("writing --ready-file {}", path.display()))?;
    }

    let period = Duration::from_millis(args.sample_ms);
    let window = Duration::from_secs_f64(args.seconds);
    let start = Instant::now();
    let read = || progs.counter(COUNT_HIT).context("reading the XDP counter");
    let mut prev = (start, read()?);
    let base = prev.1;
    let mut first: Option<(Instant, u64)> = None;
    let mut last = prev;
    while start.elapsed() < window && !stop.load(Ordering::Relaxed) {
        std::thread::sleep(period.min(window.saturating_sub(start.elapsed())));
        let now = (Instant::now(), read()?);
        if now.1.saturating_sub(prev.1) >= MIN_ACTIVE_DELTA {
            first.get_or_insert(prev);
            last = now;
        }
        prev = now;
    }
    let end = Instant::now();
    let hits = read()?;
    let passed = progs
        .counter(COUNT_PASS)
        .context("reading the pass counter")?;
    drop(attached);

    let packets = hits - base;
    let window_s = end.duration_since(start).as_secs_f64();
    let (active_s, active_pps) = match first {
        Some(f) if last.0 > f.0 => {
            let s = last.0.duration_since(f.0).as_secs_f64();
            (s, (last.1 - f.1) as f64 / s)
        }
        _ => (0.0, 0.0),
    };
    Ok(json!({
        "cmd": cmd,
        "ifname": args.ifname,
        "mode": args.mode,
        "packets": packets,
        "passed": if prog == Prog::Sink { Some(passed) } else { None },
        "window_s": window_s,
        "pps": packets as f64 / window_s.max(1e-9),
        "active_s": active_s,
        "active_pps": active_pps,
    }))
}
