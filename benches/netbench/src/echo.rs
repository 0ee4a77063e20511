//! `netbench echo-server`: the kernel baseline for udp-echo. One thread, pinned, one UDP
//! socket: `recvmmsg` (MSG_WAITFORONE, up to `--batch` datagrams) then `sendmmsg` of the same
//! buffers back to their sources, the best a plain kernel UDP server does without extra
//! sockets or cores (SO_REUSEPORT would add cores; the appliance gets one core too).
//!
//! Tuning, stated so the baseline is fair and known: batch 64 (a NAPI budget), a 4 MiB
//! receive buffer (SO_RCVBUFFORCE; the default ~208 KiB drops bursts long before the core is
//! busy), blocking socket with a 50 ms SO_RCVTIMEO so the window and signals are noticed.

use std::fs;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde_json::json;

use crate::mmsg::{self, Batch};

/// Arguments of `netbench echo-server`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// UDP port to serve. Default 7: echo (RFC 862).
    #[arg(long, default_value_t = 7)]
    pub port: u16,
    /// Address to bind. Default 0.0.0.0.
    #[arg(long, default_value_t = Ipv4Addr::UNSPECIFIED)]
    pub bind: Ipv4Addr,
    /// CPU to pin to. Default: unpinned.
    #[arg(long)]
    pub core: Option<usize>,
    /// How long to serve, in seconds (SIGINT/SIGTERM end it early).
    #[arg(long)]
    pub seconds: f64,
    /// Datagrams per recvmmsg/sendmmsg. Default 64: one NAPI budget.
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// Receive buffer in bytes. Default 4 MiB (see the module docs).
    #[arg(long, default_value_t = 4 << 20)]
    pub rcvbuf: usize,
    /// File to create once the socket is bound (for scripts to wait on).
    #[arg(long)]
    pub ready_file: Option<PathBuf>,
}

/// Serves until the window ends; returns the result line.
pub fn run(args: &Args, stop: &AtomicBool) -> anyhow::Result<serde_json::Value> {
    if !(args.seconds > 0.0 && args.seconds.is_finite()) {
        bail!("--seconds {}: use a positive number", args.seconds);
    }
    if !(1..=1024).contains(&args.batch) {
        bail!("--batch {}: use 1..=1024", args.batch);
    }
    crate::pin(args.core)?;
    let addr = SocketAddr::from((args.bind, args.port));
    let sock = UdpSocket::bind(addr).with_context(|| format!("binding UDP {addr}"))?;
    sock.set_read_timeout(Some(Duration::from_millis(50)))?;
    mmsg::set_rcvbuf(sock.as_fd(), args.rcvbuf).context("setting the receive buffer")?;
    let mut batch = Batch::new(args.batch);
    if let Some(path) = &args.ready_file {
        fs::write(path, b"bound\n")
            .with_context(|| format!("writing --ready-file {}", path.display()))?;
    }

    let window = Duration::from_secs_f64(args.seconds);
    let start = Instant::now();
    let (mut rx, mut tx, mut calls) = (0u64, 0u64, 0u64);
    let mut tx_errors = 0u64;
    let mut first_rx: Option<Instant> = None;
    let mut last_rx = start;
    while start.elapsed() < window && !stop.load(Ordering::Relaxed) {
        let n = match batch.recv(sock.as_fd()) {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) =>
            {
                continue
            }
            Err(e) => return Err(e).context("recvmmsg"),
        };
        let now = Instant::now();
        first_rx.get_or_insert(now);
        last_rx = now;
        calls += 1;
        rx += n as u64;
        match batch.echo(sock.as_fd(), n) {
            Ok(sent) => {
                tx += sent as u64;
                tx_errors += (n - sent) as u64;
            }
            Err(_) => tx_errors += n as u64,
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let active_s = first_rx.map_or(0.0, |f| last_rx.duration_since(f).as_secs_f64());
    Ok(json!({
        "cmd": "echo-server",
        "port": args.port,
        "core": args.core,
        "batch": args.batch,
        "rx": rx,
        "tx": tx,
        "tx_errors": tx_errors,
        "calls": calls,
        "avg_batch": if calls > 0 { rx as f64 / calls as f64 } else { 0.0 },
        "elapsed_s": elapsed,
        "active_s": active_s,
        "active_pps": if active_s > 0.0 { tx as f64 / active_s } else { 0.0 },
    }))
}
