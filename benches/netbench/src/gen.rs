//! `netbench gen`: the traffic generator. XDP live frames, the mechanism xdp-trafficgen
//! uses: `BPF_PROG_RUN` of `nb_gen` with `BPF_F_TEST_XDP_LIVE_FRAMES` over one template
//! frame, `repeat` times, in batches of `batch` frames; the program rewrites the UDP source
//! port from a per-CPU counter (spreading `flows` flows) and returns XDP_TX, which the kernel
//! turns into a transmit out of the interface given as the run's ingress ifindex. Run it in
//! the peer netns on the peer veth end: frames arrive at the app end.
//!
//! Why not AF_PACKET: one `sendmmsg`/`PACKET_MMAP` path tops out near 0.5 Mpps on this
//! machine, below what the receivers take, so it could not show a ceiling. Live frames skip
//! the socket layer and the skb: each frame goes from a recycled page straight into the
//! veth peer's XDP ring.
//!
//! Pacing: at `--rate-pps 0` each syscall sends [`CHUNK`] frames back to back; with a rate,
//! chunks are what is due by the clock (at least one batch), with sleeps in between, so the
//! rate holds over any window longer than a few milliseconds. The run is bounded by
//! `--count` and by `--seconds`, whichever ends first, and stops early on SIGINT/SIGTERM.
//!
//! What it cannot see: frames the receiving veth's ring had no room for are dropped inside
//! veth and not reported by the syscall; `xdp_xmit`/`xdp_xmit_errors` from `ethtool -S` (if
//! present) are reported next to `sent` for that reason. The receiver's count is the truth.

use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde_json::json;

use crate::bpf::{KvShape, Mode, Prog, Programs};
use crate::frame::{self, Mac};

/// Frames per syscall at full rate: large enough that syscall overhead vanishes, small
/// enough (~35 ms at 2 Mpps) that `--seconds` and signals are noticed promptly.
const CHUNK: u64 = 65_536;
/// memcached mode layout (netbench.h): the command's offset and a get's frame length.
const NB_KV_CMD_OFF: usize = 50;
const NB_KV_GET_LEN: usize = NB_KV_CMD_OFF + 4 + 32 + 2;
const NB_KV_MAX_KEYS: u32 = 100_000;
/// Largest batch the kernel takes (`TEST_XDP_MAX_BATCH`, net/bpf/test_run.c).
const MAX_BATCH: u32 = 256;

/// Arguments of `netbench gen`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Interface to transmit out of (the peer end of the lab veth), in this netns.
    #[arg(long)]
    pub ifname: String,
    /// Destination MAC (the app end's address).
    #[arg(long)]
    pub dst_mac: Mac,
    /// Source MAC (this end's address).
    #[arg(long)]
    pub src_mac: Mac,
    /// Destination IPv4 address.
    #[arg(long)]
    pub dst_ip: Ipv4Addr,
    /// Source IPv4 address (where replies go).
    #[arg(long)]
    pub src_ip: Ipv4Addr,
    /// UDP destination port. Default 7: echo (RFC 862), what udp-echo serves.
    #[arg(long, default_value_t = 7)]
    pub dst_port: u16,
    /// First UDP source port; flow i uses src_port + i. Default 10000: clear of 0 and 7,
    /// which echo services refuse as sources, and of the ephemeral range.
    #[arg(long, default_value_t = 10_000)]
    pub src_port: u16,
    /// Frame size on the wire, FCS included (RFC 2544). Default 64: the minimum.
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// Distinct flows (source ports). Default 64: enough to spread over any RSS table.
    #[arg(long, default_value_t = 64)]
    pub flows: u32,
    /// Frames to send (required: every run is bounded).
    #[arg(long)]
    pub count: u64,
    /// Target rate in frames/s; 0 = as fast as possible. Default 0.
    #[arg(long, default_value_t = 0)]
    pub rate_pps: u64,
    /// CPU to pin to (the kernel work of the syscall runs there too). Default: unpinned.
    #[arg(long)]
    pub core: Option<usize>,
    /// Upper bound on the run time in seconds. Default 10.
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    /// Frames per kernel batch (1..=256). Default 64: the kernel's own default, one NAPI
    /// budget.
    #[arg(long, default_value_t = 64)]
    pub batch: u32,
    /// memcached mode: send memcached UDP `get`/`set` requests with values of this many
    /// bytes (instead of `--size` frames), over kv-load's key space (`kvload:` + 25 digits).
    /// Open loop: for a server's throughput under overload, counted by `sink` at the peer.
    #[arg(long)]
    pub kv_value: Option<usize>,
    /// memcached mode: keys 0..N (at most 100000). Default 10000, as kv-load.
    #[arg(long, default_value_t = 10_000)]
    pub kv_keys: u32,
    /// memcached mode: share of gets (the rest are sets). Default 0.9.
    #[arg(long, default_value_t = 0.9)]
    pub kv_get_ratio: f64,
}

/// The addresses and ports of `args` for a frame of `size` bytes.
fn frame_spec(args: &Args, size: usize) -> frame::Spec {
    frame::Spec {
        src_mac: args.src_mac,
        dst_mac: args.dst_mac,
        src_ip: args.src_ip,
        dst_ip: args.dst_ip,
        src_port: args.src_port,
        dst_port: args.dst_port,
        size,
    }
}

/// memcached mode: the `set` template and how to turn it into a get.
fn kv_template(args: &Args, value: usize) -> anyhow::Result<(Vec<u8>, KvShape)> {
    if !(1..=NB_KV_MAX_KEYS).contains(&args.kv_keys) {
        bail!("--kv-keys {}: use 1..={NB_KV_MAX_KEYS}", args.kv_keys);
    }
    if !(0.0..=1.0).contains(&args.kv_get_ratio) {
        bail!("--kv-get-ratio {}: use 0..=1", args.kv_get_ratio);
    }
    if value > 1400 {
        bail!("--kv-value {value}: at most 1400 bytes (one datagram on a 1500-byte MTU)");
    }
    // memcached's UDP frame header: request id 0, sequence 0, one datagram, reserved.
    let header = [0u8, 0, 0, 0, 0, 1, 0, 0];
    let key = format!("kvload:{:025}", 0);
    let mut set = header.to_vec();
    set.extend_from_slice(format!("set {key} 0 0 {value}\r\n").as_bytes());
    set.extend(std::iter::repeat_n(b'x', value));
    set.extend_from_slice(b"\r\n");
    let mut get = header.to_vec();
    get.extend_from_slice(format!("get {key}\r\n").as_bytes());
    let spec = frame_spec(args, 0);
    let build = |payload: &[u8]| frame::udp_with_payload(&spec, payload);
    let set = build(&set)?;
    let get = build(&get)?;
    debug_assert_eq!(&set[NB_KV_CMD_OFF..NB_KV_CMD_OFF + 4], b"set ");
    if get.len() != NB_KV_GET_LEN {
        bail!(
            "internal: a get frame is {} bytes, the program expects {NB_KV_GET_LEN}",
            get.len()
        );
    }
    let raw = |f: &[u8], at: usize| u16::from_ne_bytes([f[at], f[at + 1]]);
    let shape = KvShape {
        keys: args.kv_keys,
        get_permille: (args.kv_get_ratio * 1000.0).round() as u32,
        shrink: (set.len() - get.len()) as u32,
        ip_len_get: raw(&get, 16),
        ip_csum_get: raw(&get, 24),
        udp_len_get: raw(&get, 38),
        ip_len_set: raw(&set, 16),
        ip_csum_set: raw(&set, 24),
        udp_len_set: raw(&set, 38),
    };
    Ok((set, shape))
}

/// Sends the frames; returns the result line.
pub fn run(args: &Args, stop: &AtomicBool) -> anyhow::Result<serde_json::Value> {
    if args.count == 0 {
        bail!("--count 0: give the number of frames to send (every run is bounded)");
    }
    if !(1..=MAX_BATCH).contains(&args.batch) {
        bail!("--batch {}: use 1..={MAX_BATCH}", args.batch);
    }
    if args.flows == 0 || u32::from(args.src_port) + args.flows - 1 > u32::from(u16::MAX) {
        bail!(
            "--flows {} from --src-port {}: use 1.. flows with src_port + flows - 1 <= 65535",
            args.flows,
            args.src_port
        );
    }
    if !(args.seconds > 0.0 && args.seconds.is_finite()) {
        bail!("--seconds {}: use a positive number", args.seconds);
    }
    crate::pin(args.core)?;
    let (template, kv) = match args.kv_value {
        Some(value) => {
            let (t, shape) = kv_template(args, value)?;
            (t, Some(shape))
        }
        None => (frame::udp_request(&frame_spec(args, args.size))?, None),
    };
    let ifindex = crate::bpf::ifindex(&args.ifname)?;
    let progs = Programs::load()?;
    progs.set_gen(args.src_port, args.flows, ifindex, kv)?;
    // Every BPF_PROG_RUN of an XDP program that no interface runs adds it to the kernel's XDP
    // dispatcher and removes it again afterwards, and each change waits for an RCU grace
    // period (`bpf_dispatcher_change_prog` -> `synchronize_rcu`): milliseconds per call, in
    // which the generator sleeps. The offered load then came in bursts of CHUNK frames with
    // idle gaps (the generator's core was half idle), overflowing receive rings during the
    // bursts and starving the receiver between them. Attached somewhere, the program stays in
    // the dispatcher and test runs change nothing. The loopback of this namespace is the
    // harmless place: generic mode, and the program passes every frame that is not its own.
    let _parked = progs
        .attach(Prog::Gen, "lo", Mode::Generic)
        .context("parking the generator program on lo (keeps it in the XDP dispatcher)")?;
    let before = xdp_xmit_stats(&args.ifname);

    let limit = Duration::from_secs_f64(args.seconds);
    let start = Instant::now();
    let mut sent = 0u64;
    let stopped = loop {
        if sent >= args.count {
            break "count";
        }
        if stop.load(Ordering::Relaxed) {
            break "signal";
        }
        let elapsed = start.elapsed();
        if elapsed >= limit {
            break "time";
        }
        let left = args.count - sent;
        let chunk = if args.rate_pps == 0 {
            left.min(CHUNK)
        } else {
            let due_total = (args.rate_pps as f64 * elapsed.as_secs_f64()) as u64;
            let due = due_total.saturating_sub(sent).min(left).min(CHUNK);
            let want = u64::from(args.batch).min(left);
            if due < want {
                let wait = (want - due) as f64 / args.rate_pps as f64;
                pace(Duration::from_secs_f64(wait));
                continue;
            }
            due
        };
        match progs.run_live(&template, ifindex, chunk as u32, args.batch) {
            Ok(()) => sent += chunk,
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            Err(e) => {
                return Err(e).with_context(|| {
                    format!(
                        "BPF_PROG_RUN (XDP live frames) on {}: needs root and kernel >= 5.18; \
                         on veth the other end must be up with an XDP program or GRO on",
                        args.ifname
                    )
                })
            }
        }
    };
    let elapsed = start.elapsed().as_secs_f64();
    let after = xdp_xmit_stats(&args.ifname);
    let (xmit, xmit_errors) = match (before, after) {
        (Some(b), Some(a)) => (Some(a.0.saturating_sub(b.0)), Some(a.1.saturating_sub(b.1))),
        _ => (None, None),
    };
    let pps = sent as f64 / elapsed.max(1e-9);
    Ok(json!({
        "cmd": "gen",
        "ifname": args.ifname,
        "sent": sent,
        "elapsed_s": elapsed,
        "pps": pps,
        "mpps": pps / 1e6,
        "rate_pps": args.rate_pps,
        "size": args.size,
        "kv_value": args.kv_value,
        "kv_get_ratio": args.kv_value.map(|_| args.kv_get_ratio),
        "flows": args.flows,
        "batch": args.batch,
        "core": args.core,
        "xdp_xmit": xmit,
        "xdp_xmit_errors": xmit_errors,
        "stopped": stopped,
    }))
}

/// Waits `d`: sleeps for the bulk, spins for the last stretch (sleep overshoots by ~50 us).
fn pace(d: Duration) {
    let end = Instant::now() + d;
    if d > Duration::from_micros(200) {
        std::thread::sleep(d - Duration::from_micros(100));
    }
    while Instant::now() < end {
        std::hint::spin_loop();
    }
}

/// Sum of veth's per-queue `xdp_xmit` and `xdp_xmit_errors` counters (`ethtool -S`), or
/// None when ethtool or the counters are missing.
fn xdp_xmit_stats(ifname: &str) -> Option<(u64, u64)> {
    let out = Command::new("ethtool").args(["-S", ifname]).output().ok()?;
    if !out.status.success() {
        return None;
    }
    parse_xdp_xmit(&String::from_utf8_lossy(&out.stdout))
}

fn parse_xdp_xmit(text: &str) -> Option<(u64, u64)> {
    let (mut xmit, mut errors, mut found) = (0u64, 0u64, false);
    for line in text.lines() {
        let Some((key, value)) = line.trim().split_once(':') else {
            continue;
        };
        let Ok(value) = value.trim().parse::<u64>() else {
            continue;
        };
        if key.ends_with("_xdp_xmit") {
            xmit += value;
            found = true;
        } else if key.ends_with("_xdp_xmit_errors") {
            errors += value;
        }
    }
    found.then_some((xmit, errors))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn veth_ethtool_counters_are_summed_over_queues() {
        let text = "NIC statistics:\n     peer_ifindex: 5\n     rx_queue_0_xdp_packets: 9\n     \
                    tx_queue_0_xdp_xmit: 100\n     tx_queue_0_xdp_xmit_errors: 3\n     \
                    tx_queue_1_xdp_xmit: 20\n     tx_queue_1_xdp_xmit_errors: 1\n";
        assert_eq!(parse_xdp_xmit(text), Some((120, 4)));
        assert_eq!(parse_xdp_xmit("NIC statistics:\n rx_bytes: 1\n"), None);
    }

    #[test]
    fn kv_template_is_a_set_and_its_get_shape_is_consistent() {
        let args = Args {
            ifname: "x".into(),
            dst_mac: "02:00:c6:12:00:01".parse().unwrap(),
            src_mac: "02:00:c6:12:00:02".parse().unwrap(),
            dst_ip: Ipv4Addr::new(198, 18, 0, 1),
            src_ip: Ipv4Addr::new(198, 18, 0, 2),
            dst_port: 11211,
            src_port: 10_000,
            size: 64,
            flows: 1,
            count: 1,
            rate_pps: 0,
            core: None,
            seconds: 1.0,
            batch: 64,
            kv_value: Some(100),
            kv_keys: 10_000,
            kv_get_ratio: 0.9,
        };
        let (set, shape) = kv_template(&args, 100).unwrap();
        let p = etherparse::SlicedPacket::from_ethernet(&set).unwrap();
        let Some(etherparse::TransportSlice::Udp(udp)) = p.transport else {
            panic!("not UDP")
        };
        let payload = udp.payload();
        assert_eq!(&payload[..8], &[0, 0, 0, 0, 0, 1, 0, 0]);
        assert!(payload[8..].starts_with(b"set kvload:0000000000000000000000000 0 0 100\r\n"));
        assert!(payload.ends_with(b"\r\n"));
        assert_eq!(&set[NB_KV_CMD_OFF..NB_KV_CMD_OFF + 4], b"set ");
        // What the program writes for a get: 38 payload bytes after the memcached header.
        let be = |v: u16| u16::from_be_bytes(v.to_ne_bytes());
        assert_eq!(be(shape.ip_len_get), 20 + 8 + 8 + 38);
        assert_eq!(be(shape.udp_len_get), 8 + 8 + 38);
        assert_eq!(be(shape.ip_len_set) as usize, set.len() - 14);
        assert_eq!(shape.shrink as usize, set.len() - NB_KV_GET_LEN);
        assert_eq!(shape.get_permille, 900);
        // The get checksum is the one of a header with the get's length.
        let mut get = set[..NB_KV_GET_LEN].to_vec();
        get[16..18].copy_from_slice(&shape.ip_len_get.to_ne_bytes());
        get[24..26].copy_from_slice(&shape.ip_csum_get.to_ne_bytes());
        let ip = etherparse::Ipv4HeaderSlice::from_slice(&get[14..34]).unwrap();
        assert_eq!(ip.header_checksum(), ip.to_header().calc_header_checksum());
        assert!(kv_template(&Args { kv_keys: 0, ..args }, 100).is_err());
    }
}
