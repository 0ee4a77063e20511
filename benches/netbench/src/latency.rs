//! `netbench latency`: open-loop UDP round-trip latency at a fixed offered rate, from a
//! plain kernel socket (the client a real user would run), measured with hdrhistogram.
//!
//! One pinned thread, non-blocking connected socket, busy loop: send every request when its
//! slot in the schedule (`start + i / rate`) comes, and between sends drain every reply that
//! has arrived. Open loop: a late reply never delays the next request, so queueing in the
//! server shows up as latency instead of being hidden by a slower sender (coordinated
//! omission). If the sender itself falls behind, it catches up by at most [`CATCH_UP`]
//! requests per pass and reports `late_sends`.
//!
//! Each request carries a sequence number and its send time (ns since the run's start, from
//! the monotonic clock) in the first 16 payload bytes; the round trip is the receive time
//! minus that. Requests sent during `--warmup-ms` are not recorded (caches, neighbour entry),
//! replies that come `--drain-ms` after the last send are counted lost.
//!
//! On a veth lab, turn TX checksum offload off on the client's interface (`ethtool -K IF tx
//! off`): otherwise the kernel sends CHECKSUM_PARTIAL frames whose UDP checksum field holds
//! only the pseudo-header sum; a kernel server never notices (the skb says "partial"), but an
//! AF_XDP appliance sees raw bytes, echoes them, and the client's kernel then drops every
//! reply as `UdpInCsumErrors`.

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use hdrhistogram::Histogram;
use serde_json::json;

use crate::frame;

/// Most requests sent back to back in one pass when the sender is behind schedule.
const CATCH_UP: u32 = 16;
/// Highest round trip the histogram holds: 10 s in ns.
const MAX_RTT_NS: u64 = 10_000_000_000;

/// Arguments of `netbench latency`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Echo server to measure, e.g. 198.18.0.1:7.
    #[arg(long)]
    pub dst: SocketAddr,
    /// Offered load in requests/s.
    #[arg(long)]
    pub rate_pps: u64,
    /// Sending time in seconds (a drain period follows).
    #[arg(long)]
    pub seconds: f64,
    /// CPU to pin to. Default: unpinned.
    #[arg(long)]
    pub core: Option<usize>,
    /// Request frame size on the wire, FCS included. Default 64, as the throughput rows.
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// Requests sent in the first N ms are not recorded. Default 100.
    #[arg(long, default_value_t = 100)]
    pub warmup_ms: u64,
    /// How long to wait for the last replies, in ms. Default 200.
    #[arg(long, default_value_t = 200)]
    pub drain_ms: u64,
}

/// Runs the measurement; returns the result line.
pub fn run(args: &Args, stop: &AtomicBool) -> anyhow::Result<serde_json::Value> {
    if args.rate_pps == 0 || args.rate_pps > 10_000_000 {
        bail!("--rate-pps {}: use 1..=10000000", args.rate_pps);
    }
    if !(args.seconds > 0.0 && args.seconds.is_finite()) {
        bail!("--seconds {}: use a positive number", args.seconds);
    }
    let payload_len = frame::payload_len(args.size)?;
    crate::pin(args.core)?;
    let bind: SocketAddr = if args.dst.is_ipv4() {
        "0.0.0.0:0".parse()?
    } else {
        "[::]:0".parse()?
    };
    let sock = UdpSocket::bind(bind).context("binding the client socket")?;
    sock.connect(args.dst)
        .with_context(|| format!("connecting to {}", args.dst))?;
    sock.set_nonblocking(true)?;
    // Replies must not be lost to a full buffer when the machine stalls this thread briefly.
    crate::mmsg::set_rcvbuf(sock.as_fd(), 4 << 20).context("setting the receive buffer")?;

    let mut hist = Histogram::<u64>::new_with_bounds(1, MAX_RTT_NS, 3)?;
    let mut req = vec![0u8; payload_len.max(16)];
    let mut buf = [0u8; 2048];
    let interval_ns = 1e9 / args.rate_pps as f64;
    let send_ns = (args.seconds * 1e9) as u64;
    let warmup_ns = args.warmup_ms * 1_000_000;
    let drain = Duration::from_millis(args.drain_ms);

    let start = Instant::now();
    let ns = || start.elapsed().as_nanos() as u64;
    let (mut sent, mut received, mut recorded) = (0u64, 0u64, 0u64);
    let (mut send_errors, mut late_sends, mut bad) = (0u64, 0u64, 0u64);
    let mut sending_until = None;
    loop {
        let now = ns();
        if sending_until.is_none() {
            if now >= send_ns || stop.load(Ordering::Relaxed) {
                sending_until = Some(Instant::now());
            } else {
                let mut burst = 0;
                while ((sent as f64) * interval_ns) as u64 <= now && burst < CATCH_UP {
                    if burst > 0 {
                        late_sends += 1;
                    }
                    req[..8].copy_from_slice(&sent.to_le_bytes());
                    req[8..16].copy_from_slice(&ns().to_le_bytes());
                    match sock.send(&req) {
                        Ok(_) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => send_errors += 1,
                        Err(_) => send_errors += 1,
                    }
                    sent += 1;
                    burst += 1;
                }
            }
        } else if sending_until.is_some_and(|t| t.elapsed() >= drain) || received >= sent {
            break;
        }
        // Drain every reply that is there.
        loop {
            match sock.recv(&mut buf) {
                Ok(n) if n >= 16 => {
                    let at = ns();
                    let seq = u64::from_le_bytes(buf[..8].try_into().expect("8 bytes"));
                    let t = u64::from_le_bytes(buf[8..16].try_into().expect("8 bytes"));
                    if seq >= sent || t > at {
                        bad += 1;
                        continue;
                    }
                    received += 1;
                    if t >= warmup_ns {
                        hist.saturating_record((at - t).max(1));
                        recorded += 1;
                    }
                }
                Ok(_) => bad += 1,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                // ECONNREFUSED: an ICMP port unreachable (no server yet); count, go on.
                Err(_) => {
                    bad += 1;
                    break;
                }
            }
        }
    }
    let us = |q: f64| hist.value_at_quantile(q) as f64 / 1e3;
    Ok(json!({
        "cmd": "latency",
        "dst": args.dst.to_string(),
        "rate_pps": args.rate_pps,
        "size": args.size,
        "seconds": args.seconds,
        "sent": sent,
        "received": received,
        "lost": sent.saturating_sub(received),
        "recorded": recorded,
        "send_errors": send_errors,
        "late_sends": late_sends,
        "bad_replies": bad,
        "p50_us": us(0.5),
        "p90_us": us(0.9),
        "p99_us": us(0.99),
        "p999_us": us(0.999),
        "max_us": hist.max() as f64 / 1e3,
        "mean_us": hist.mean() / 1e3,
    }))
}
