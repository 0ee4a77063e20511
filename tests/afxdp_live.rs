//! Lossless live changes over AF_XDP: the real `slipstream` binary runs udp-echo on a
//! 2-queue AF_XDP port in a lab veth pair (`scripts/lab --queues 2`), one worker per queue
//! (w0 on the first allowed core owns p0:q0, w1 on the second owns p0:q1), its control
//! plane on a Unix socket in a temp dir (`--ctl-socket`). From the peer namespace, kernel
//! UDP sockets keep a window of numbered requests outstanding on each of 16 flows, 8 per RX
//! queue, while the test drives a series of live changes through the real `ctl` binary:
//! every queue moved to the other worker and back, the worker of the second core removed
//! (its queue moves to w0) and a new one added on that core taking the queue back, the
//! handler chain swapped (a new version each time), and the idle policy switched between
//! busy-poll and back-off. Each change must succeed (ctl exits 0) and each is made while
//! replies are flowing.
//!
//! At the end, nothing may be lost anywhere, and this is proved at both ends:
//!
//! - **the client**: every request got exactly one reply, with its own payload (numbered
//!   per flow, lengths varying), nothing retried, no stray or duplicate reply;
//! - **slipstream**: it stops cleanly on SIGINT (exit 0, frame accounting held) and its
//!   `--json` report shows no drop, no slow path, transmitted == received, and received ==
//!   exactly the requests sent (plus the set-up probes counted before the load);
//! - **the kernel**: the app end's XDP program redirected exactly the requests into the
//!   two AF_XDP sockets (`ethtool -S`, per queue equal to what slipstream received on that
//!   queue), and no drop or error counter moved on either veth end (`ethtool -S`, `ip -s
//!   link`) or in the peer's UDP stack (`InErrors`, `RcvbufErrors`).
//!
//! The window is sized so that the kernel cannot lose anything under this load: at most
//! 16 x 8 = 128 requests are outstanding in all (64 per queue), far below the veth's per
//! queue NAPI ring (256), the AF_XDP RX and fill rings (2048 each) and the peer sockets'
//! receive buffers (8 replies each), so a queue that is not polled for a while during a
//! hand-over only makes its requests wait.
//!
//! `ctl` is the control crate's binary, which this package's tests cannot name with
//! `CARGO_BIN_EXE_ctl`: the test builds it next to the `slipstream` binary under test
//! (`cargo build -p control --bin ctl`, a no-op when it is current, as it is under `cargo
//! test --workspace`), or uses `$SLIPSTREAM_CTL` when set. It needs root and two allowed
//! cores: without them a loud `*** SKIP`, or a failure under `CI=true`.

#[allow(dead_code)] // the shared lab harness has more than this test uses
mod common;

use std::collections::HashSet;
use std::io::{self, Read};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{
    afxdp_config, in_netns, lab_for, report_counters, setup_failed, wait_for_echo, Appliance, Lab,
    TempDir, WorkerSpec, APP_V4, PEER_V4, START_TIMEOUT, UDP_ECHO,
};
use serde_json::Value;

/// Flows (connected peer sockets) per RX queue.
const FLOWS_PER_QUEUE: usize = 8;
/// Requests outstanding per flow.
const WINDOW: usize = 8;
/// Load threads; each drives half of the flows of each queue.
const LOAD_THREADS: usize = 2;
/// The load runs until the changes are done and at least this many requests were sent...
const MIN_REQUESTS: u64 = 50_000;
/// ...and never sends more than this many (spread over the load threads). The changes
/// take 100k-150k requests on a 2-core machine; the room above that is for a loaded
/// one, where a `ctl` process may start slowly while packets still flow fast.
const MAX_REQUESTS: u64 = 400_000;
/// ...nor for longer than this.
const LOAD_TIME: Duration = Duration::from_secs(120);
/// Rounds of the change series (10 changes each).
const ROUNDS: usize = 3;
/// Replies that must arrive before each change (and after the last one): the change
/// happens while traffic flows.
const PROGRESS: u64 = 1_000;
/// How long those replies may take before the load counts as stalled.
const PROGRESS_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the load threads wait for the replies still outstanding when they stop. A
/// reply that has not come by then is lost (nothing is retried).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one `ctl` command may take.
const CTL_TIMEOUT: Duration = Duration::from_secs(30);
/// Peer sockets tried at most to find FLOWS_PER_QUEUE flows on each RX queue.
const MAX_CANDIDATES: usize = 64;
/// Readiness probes before giving up (100 ms each).
const PROBES: u32 = 50;

const RULES: &[&str] = &["udp 198.18.0.1 7"];
/// The flow id of the classification requests.
const CLASSIFY_FLOW: u16 = u16::MAX;

// ---- ctl -------------------------------------------------------------------------------------

/// Runs `program args`, killing it after `timeout`. Ok(stdout) on exit 0; Err with the
/// exit status and stderr otherwise.
fn run_bounded(mut cmd: Command, what: &str, timeout: Duration) -> Result<String, String> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{what}: cannot start: {e}"))?;
    let reader = |mut r: Box<dyn Read + Send>| -> JoinHandle<String> {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    let out = reader(Box::new(child.stdout.take().expect("piped stdout")));
    let err = reader(Box::new(child.stderr.take().expect("piped stderr")));
    let status = wait_bounded(&mut child, timeout);
    let (out, err) = (
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default(),
    );
    match status {
        Some(s) if s.success() => Ok(out),
        Some(s) => Err(format!("{what}: {s}: {}{out}", err.trim_end())),
        None => Err(format!(
            "{what}: no exit within {timeout:?} (killed): {}{out}",
            err.trim_end()
        )),
    }
}

/// Waits for `child` at most `timeout`; kills it (and reaps it) when it takes longer.
fn wait_bounded(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(s)) => return Some(s),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
}

/// `ctl --socket S --json ...`.
struct Ctl {
    bin: PathBuf,
    socket: PathBuf,
}

impl Ctl {
    fn text(&self, args: &[&str]) -> Result<String, String> {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--socket").arg(&self.socket).args(args);
        run_bounded(cmd, &format!("ctl {}", args.join(" ")), CTL_TIMEOUT)
    }

    fn json(&self, args: &[&str]) -> Result<Value, String> {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.text(&all)?;
        serde_json::from_str(&out)
            .map_err(|e| format!("ctl {}: output is not JSON ({e}): {out}", args.join(" ")))
    }

    /// Per-queue received packets of p0 and the totals, from `ctl stats`.
    fn stats(&self) -> Result<Stats, String> {
        let j = self.json(&["stats"])?;
        let q = |i: usize| j["ports"][0]["queues"][i]["rx_packets"].as_u64();
        let t = &j["totals"];
        match (
            q(0),
            q(1),
            t["received"].as_u64(),
            t["transmitted"].as_u64(),
            t["dropped"].as_u64(),
        ) {
            (Some(q0), Some(q1), Some(rx), Some(tx), Some(dropped)) => Ok(Stats {
                queue_rx: [q0, q1],
                rx,
                tx,
                dropped,
                in_flight: t["in_flight"].as_i64().unwrap_or(0),
            }),
            _ => Err(format!("ctl stats: unexpected shape: {j}")),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stats {
    queue_rx: [u64; 2],
    rx: u64,
    tx: u64,
    dropped: u64,
    in_flight: i64,
}

// ---- the load --------------------------------------------------------------------------------

/// Request `seq` of flow `flow`: magic, flow, sequence number, and 0..=47 bytes of filler
/// that depend on the number (so lengths and contents differ from request to request).
fn payload(flow: u16, seq: u64, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(b"SSLV");
    out.extend_from_slice(&flow.to_be_bytes());
    out.extend_from_slice(&seq.to_be_bytes());
    let fill = (seq % 48) as u8;
    out.extend((0..fill).map(|k| (seq as u8).wrapping_mul(31).wrapping_add(k)));
}

/// One flow: a connected, non-blocking peer socket whose 5-tuple lands on `queue`.
struct Flow {
    id: u16,
    queue: usize,
    sock: UdpSocket,
    next: u64,
    outstanding: HashSet<u64>,
    /// When the flow last got a reply (or, with nothing outstanding, sent a request).
    last: Instant,
}

/// What the load threads share with the test thread.
#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    sent: AtomicU64,
    echoed: AtomicU64,
    /// Load threads still sending.
    sending: AtomicUsize,
}

/// Sets `stop` when dropped, so that load threads end (within DRAIN_TIMEOUT) however the
/// test thread leaves their scope.
struct StopOnDrop<'a>(&'a Shared);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.stop.store(true, Ordering::Relaxed);
    }
}

/// What one load thread saw.
#[derive(Debug, Default)]
struct LoadResult {
    sent: u64,
    echoed: u64,
    sent_per_queue: [u64; 2],
    /// Replies that answered no outstanding request of their flow (wrong content, a
    /// duplicate, another flow's), and socket errors.
    bad: u64,
    problems: Vec<String>,
    /// Requests never answered.
    missing: u64,
    missing_examples: Vec<(u16, u64)>,
    /// Longest wait of a flow with requests outstanding for its next reply.
    max_gap: Duration,
}

impl LoadResult {
    fn problem(&mut self, p: String) {
        self.bad += 1;
        if self.problems.len() < 10 {
            self.problems.push(p);
        }
    }

    fn add(&mut self, o: LoadResult) {
        self.sent += o.sent;
        self.echoed += o.echoed;
        for q in 0..2 {
            self.sent_per_queue[q] += o.sent_per_queue[q];
        }
        self.bad += o.bad;
        self.problems.extend(o.problems);
        self.missing += o.missing;
        self.missing_examples.extend(o.missing_examples);
        self.max_gap = self.max_gap.max(o.max_gap);
    }
}

/// Takes every reply waiting on `f`, checking each against the flow's outstanding requests.
fn receive(
    f: &mut Flow,
    buf: &mut [u8],
    expect: &mut Vec<u8>,
    r: &mut LoadResult,
    shared: &Shared,
) -> bool {
    let mut progress = false;
    loop {
        match f.sock.recv(buf) {
            Ok(n) => {
                progress = true;
                let now = Instant::now();
                r.max_gap = r.max_gap.max(now.duration_since(f.last));
                f.last = now;
                let data = &buf[..n];
                let seq = (n >= 14 && data[..4] == *b"SSLV" && data[4..6] == f.id.to_be_bytes())
                    .then(|| u64::from_be_bytes(data[6..14].try_into().unwrap_or_default()));
                match seq {
                    Some(seq) if f.outstanding.contains(&seq) => {
                        payload(f.id, seq, expect);
                        if data == &expect[..] {
                            f.outstanding.remove(&seq);
                            r.echoed += 1;
                            shared.echoed.fetch_add(1, Ordering::Relaxed);
                        } else {
                            r.problem(format!(
                                "flow {} request {seq}: reply content differs: {data:02x?}",
                                f.id
                            ));
                        }
                    }
                    Some(seq) => r.problem(format!(
                        "flow {}: a reply to request {seq}, which is not outstanding \
                         (duplicate or never sent)",
                        f.id
                    )),
                    None => r.problem(format!(
                        "flow {}: a reply that is no request of this flow: {data:02x?}",
                        f.id
                    )),
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return progress,
            // ECONNREFUSED: an ICMP port unreachable, i.e. a request reached the app
            // kernel instead of slipstream.
            Err(e) => {
                r.problem(format!("flow {}: recv: {e}", f.id));
                return progress;
            }
        }
    }
}

/// Waits for any of `fds` to become readable, at most `ms` milliseconds.
fn wait_readable(fds: &mut [libc::pollfd], ms: libc::c_int) {
    // SAFETY: `fds` is a live slice of pollfd structs for open sockets; its length is
    // passed.
    unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
}

/// A load thread: keeps WINDOW requests outstanding on each of its flows until `stop`,
/// `max` requests or `deadline`, then waits up to DRAIN_TIMEOUT for what is outstanding.
fn load(mut flows: Vec<Flow>, shared: &Shared, max: u64, deadline: Instant) -> LoadResult {
    let mut r = LoadResult::default();
    let (mut req, mut expect) = (Vec::with_capacity(64), Vec::with_capacity(64));
    let mut buf = [0u8; 2048];
    let mut fds: Vec<libc::pollfd> = flows
        .iter()
        .map(|f| libc::pollfd {
            fd: f.sock.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    'send: loop {
        if shared.stop.load(Ordering::Relaxed) || r.sent >= max || Instant::now() >= deadline {
            break;
        }
        let mut progress = false;
        for f in flows.iter_mut() {
            while f.outstanding.len() < WINDOW && r.sent < max {
                payload(f.id, f.next, &mut req);
                match f.sock.send(&req) {
                    Ok(n) if n == req.len() => {
                        if f.outstanding.is_empty() {
                            f.last = Instant::now();
                        }
                        f.outstanding.insert(f.next);
                        f.next += 1;
                        r.sent += 1;
                        r.sent_per_queue[f.queue] += 1;
                        shared.sent.fetch_add(1, Ordering::Relaxed);
                        progress = true;
                    }
                    Ok(n) => {
                        r.problem(format!("flow {}: sent {n} of {} bytes", f.id, req.len()));
                        break 'send;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => {
                        r.problem(format!("flow {}: send: {e}", f.id));
                        break 'send;
                    }
                }
            }
            progress |= receive(f, &mut buf, &mut expect, &mut r, shared);
        }
        if !progress {
            wait_readable(&mut fds, 2);
        }
    }
    shared.sending.fetch_sub(1, Ordering::Relaxed);
    let until = Instant::now() + DRAIN_TIMEOUT;
    while Instant::now() < until && flows.iter().any(|f| !f.outstanding.is_empty()) {
        let mut progress = false;
        for f in flows.iter_mut() {
            progress |= receive(f, &mut buf, &mut expect, &mut r, shared);
        }
        if !progress {
            wait_readable(&mut fds, 2);
        }
    }
    for f in &flows {
        let mut m: Vec<u64> = f.outstanding.iter().copied().collect();
        m.sort_unstable();
        r.missing += m.len() as u64;
        r.missing_examples
            .extend(m.iter().take(4).map(|&s| (f.id, s)));
    }
    r
}

/// A peer socket connected to `dst`.
fn peer_flow_socket(lab: &Lab, dst: SocketAddr) -> io::Result<UdpSocket> {
    in_netns(&lab.peer_ns, move || {
        let s = UdpSocket::bind(format!("{PEER_V4}:0"))?;
        s.connect(dst)?;
        Ok(s)
    })
}

/// Opens peer sockets until FLOWS_PER_QUEUE of them land on each RX queue. Which queue a
/// socket's flow lands on is seen in slipstream's per-queue counters after one request
/// (veth hands a frame to the RX queue with the index of the TX queue the sender's stack
/// chose for the socket, which it remembers per connected socket). Returns the flows and
/// the number of classification requests sent (each echoed).
fn classify_flows(lab: &Lab, ctl: &Ctl, dst: SocketAddr) -> Result<(Vec<Flow>, u64), String> {
    let mut flows: Vec<Flow> = Vec::new();
    let mut per_queue = [0usize; 2];
    let mut requests = 0u64;
    let (mut req, mut buf) = (Vec::new(), [0u8; 2048]);
    for i in 0..MAX_CANDIDATES as u64 {
        if per_queue.iter().all(|&n| n >= FLOWS_PER_QUEUE) {
            break;
        }
        let sock = peer_flow_socket(lab, dst).map_err(|e| format!("peer socket: {e}"))?;
        sock.set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(|e| e.to_string())?;
        let before = ctl.stats()?;
        payload(CLASSIFY_FLOW, i, &mut req);
        sock.send(&req)
            .map_err(|e| format!("classification request {i}: {e}"))?;
        requests += 1;
        let n = sock
            .recv(&mut buf)
            .map_err(|e| format!("classification request {i}: no reply within 5 s ({e})"))?;
        if buf[..n] != req[..] {
            return Err(format!(
                "classification request {i}: wrong reply {:02x?}",
                &buf[..n]
            ));
        }
        // The worker counts a frame when it receives it, before it answers; poll briefly
        // all the same.
        let deadline = Instant::now() + Duration::from_secs(2);
        let queue = loop {
            let now = ctl.stats()?;
            let d = [
                now.queue_rx[0] - before.queue_rx[0],
                now.queue_rx[1] - before.queue_rx[1],
            ];
            match d {
                [1, 0] => break 0,
                [0, 1] => break 1,
                [0, 0] if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                _ => {
                    return Err(format!(
                        "classification request {i}: per-queue rx went from {:?} to {:?}, \
                         expected one more on one queue",
                        before.queue_rx, now.queue_rx
                    ))
                }
            }
        };
        if per_queue[queue] < FLOWS_PER_QUEUE {
            per_queue[queue] += 1;
            sock.set_nonblocking(true).map_err(|e| e.to_string())?;
            flows.push(Flow {
                id: flows.len() as u16,
                queue,
                sock,
                next: 0,
                outstanding: HashSet::new(),
                last: Instant::now(),
            });
        }
    }
    if per_queue.iter().any(|&n| n < FLOWS_PER_QUEUE) {
        return Err(format!(
            "after {requests} peer sockets, flows per RX queue are {per_queue:?}: the veth \
             does not spread flows over its 2 queues"
        ));
    }
    Ok((flows, requests))
}

// ---- the kernel's view of the wire ---------------------------------------------------------

/// Kernel counters of both veth ends and the peer's UDP stack.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Wire {
    /// Frames the app end's XDP program redirected to AF_XDP, per RX queue.
    redirected: [u64; 2],
    /// Every drop and error counter of both ends (`ethtool -S` names containing "drop" or
    /// "err", `ip -s link` rx/tx dropped and errors) and the peer's UDP InErrors and
    /// RcvbufErrors, by name.
    losses: Vec<(String, u64)>,
}

impl Wire {
    fn read(lab: &Lab) -> Result<Wire, String> {
        let mut w = Wire::default();
        for (end, ns, dev) in [
            ("app", &lab.app_ns, &lab.app_if),
            ("peer", &lab.peer_ns, &lab.peer_if),
        ] {
            let stats = lab.exec(ns, &["ethtool", "-S", dev])?;
            for (k, v) in stats.lines().filter_map(|l| l.trim().split_once(':')) {
                let Ok(v) = v.trim().parse::<u64>() else {
                    continue;
                };
                if end == "app" {
                    for q in 0..2 {
                        if k == format!("rx_queue_{q}_xdp_redirect") {
                            w.redirected[q] = v;
                        }
                    }
                }
                if k.contains("drop") || k.contains("err") {
                    w.losses.push((format!("{end} ethtool {k}"), v));
                }
            }
            let link = lab.exec(ns, &["ip", "-j", "-s", "link", "show", "dev", dev])?;
            let j: Value = serde_json::from_str(&link).map_err(|e| format!("ip -j: {e}"))?;
            for dir in ["rx", "tx"] {
                for what in ["dropped", "errors"] {
                    let v = j[0]["stats64"][dir][what].as_u64().unwrap_or(0);
                    w.losses.push((format!("{end} link {dir} {what}"), v));
                }
            }
        }
        let snmp = lab.exec(&lab.peer_ns, &["cat", "/proc/net/snmp"])?;
        let mut rows = snmp.lines().filter(|l| l.starts_with("Udp:"));
        if let (Some(names), Some(values)) = (rows.next(), rows.next()) {
            for (n, v) in names.split_whitespace().zip(values.split_whitespace()) {
                if n == "InErrors" || n == "RcvbufErrors" {
                    w.losses
                        .push((format!("peer Udp {n}"), v.parse().unwrap_or(u64::MAX)));
                }
            }
        }
        Ok(w)
    }

    /// The loss counters that moved since `before`.
    fn losses_since(&self, before: &Wire) -> Vec<String> {
        self.losses
            .iter()
            .filter_map(|(k, v)| {
                let was = before
                    .losses
                    .iter()
                    .find(|(bk, _)| bk == k)
                    .map_or(0, |(_, b)| *b);
                (*v != was).then(|| format!("{k}: {was} -> {v}"))
            })
            .collect()
    }
}

// ---- the changes -----------------------------------------------------------------------------

/// Drives the live changes, each after PROGRESS more replies.
struct Changes<'a> {
    ctl: &'a Ctl,
    shared: &'a Shared,
    /// The core of the second worker, and that worker's id (it changes when it is
    /// removed and added again).
    core1: u32,
    w1: String,
    /// The handler chain's version.
    version: u64,
    made: usize,
    under_load: usize,
    log: Vec<String>,
    slowest: Duration,
}

impl Changes<'_> {
    /// Waits for PROGRESS more replies. Ok(false) when the load has stopped sending.
    fn progress(&self) -> Result<bool, String> {
        let from = self.shared.echoed.load(Ordering::Relaxed);
        let deadline = Instant::now() + PROGRESS_TIMEOUT;
        loop {
            let now = self.shared.echoed.load(Ordering::Relaxed);
            if now >= from + PROGRESS {
                return Ok(true);
            }
            if self.shared.sending.load(Ordering::Relaxed) == 0 {
                return Ok(false);
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "traffic stalled after change {}: {} replies in {PROGRESS_TIMEOUT:?} \
                     (wanted {PROGRESS})",
                    self.made,
                    now - from
                ));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// One change under load: `ctl --json ARGS` must exit 0.
    fn make(&mut self, args: &[&str]) -> Result<Value, String> {
        let flowing = self.progress()?;
        let t = Instant::now();
        let out = self
            .ctl
            .json(args)
            .map_err(|e| format!("change {}: {e}", self.made + 1))?;
        let took = t.elapsed();
        self.slowest = self.slowest.max(took);
        self.made += 1;
        if flowing && self.shared.sending.load(Ordering::Relaxed) > 0 {
            self.under_load += 1;
        }
        self.log.push(format!(
            "{:>2}. ctl {} ({took:.0?}, {} replies so far)",
            self.made,
            args.join(" "),
            self.shared.echoed.load(Ordering::Relaxed)
        ));
        Ok(out)
    }

    fn assign(&mut self, queue: &str, to: &str) -> Result<(), String> {
        let out = self.make(&["workers", "assign", queue, to])?;
        let m = &out["moved"][0];
        if m["queue"] != queue || m["to"] != to {
            return Err(format!("ctl workers assign {queue} {to}: moved {out}"));
        }
        Ok(())
    }

    fn handlers(&mut self, specs: &[&str]) -> Result<(), String> {
        let base = self.version.to_string();
        let mut args = vec!["handlers", "set", "--base-version", &base];
        args.extend_from_slice(specs);
        let out = self.make(&args)?;
        if out["accepted"] != true || out["version"] != self.version + 1 {
            return Err(format!(
                "ctl handlers set on version {}: {out}",
                self.version
            ));
        }
        self.version += 1;
        Ok(())
    }

    fn idle(&mut self, args: &[&str], want: &str) -> Result<(), String> {
        let mut all = vec!["workers", "idle"];
        all.extend_from_slice(args);
        let out = self.make(&all)?;
        let running: Vec<&Value> = out
            .as_array()
            .map(|ws| ws.iter().filter(|w| w["state"] == "running").collect())
            .unwrap_or_default();
        if running.len() != 2 || running.iter().any(|w| w["idle"] != want) {
            return Err(format!("ctl workers idle {}: {out}", args.join(" ")));
        }
        Ok(())
    }

    /// Removes the second core's worker (its queue moves to w0) and adds a new one on that
    /// core, taking p0:q1.
    fn replace_w1(&mut self) -> Result<(), String> {
        let w1 = self.w1.clone();
        let out = self.make(&["workers", "rm", &w1])?;
        let m = &out["moved"][0];
        if out["removed"] != w1.as_str() || m["queue"] != "p0:q1" || m["to"] != "w0" {
            return Err(format!("ctl workers rm {w1}: {out}"));
        }
        let core = self.core1.to_string();
        let out = self.make(&["workers", "add", "--core", &core, "--queue", "p0:q1"])?;
        let id = out["worker"]["id"].as_str().unwrap_or_default().to_string();
        let m = &out["moved"][0];
        if out["worker"]["core"] != self.core1 || m["queue"] != "p0:q1" || m["to"] != id.as_str() {
            return Err(format!(
                "ctl workers add --core {core} --queue p0:q1: {out}"
            ));
        }
        self.w1 = id;
        Ok(())
    }

    /// Round `r` of the series: 10 changes.
    fn round(&mut self, r: usize) -> Result<(), String> {
        let w1 = self.w1.clone();
        self.assign("p0:q0", &w1)?;
        self.assign("p0:q0", "w0")?;
        self.assign("p0:q1", "w0")?;
        self.assign("p0:q1", &w1)?;
        self.idle(&["busy-poll"], "busy-poll")?;
        self.handlers(&["icmp addresses=[198.18.0.1]", "udp-echo port=7"])?;
        self.replace_w1()?;
        let max_us = (100 + 50 * r).to_string();
        self.idle(&["backoff", "--backoff-max-us", &max_us], "backoff")?;
        self.handlers(&["udp-echo port=7"])?;
        Ok(())
    }
}

// ---- the test --------------------------------------------------------------------------------

/// Everything measured while slipstream ran.
struct Outcome {
    load: LoadResult,
    took: Duration,
    changes: Vec<String>,
    made: usize,
    under_load: usize,
    slowest_change: Duration,
    /// Slipstream's counters after the set-up requests (before the load) and at the end.
    base: Stats,
    end: Stats,
    wire_before: Wire,
    wire_after: Wire,
    workers: Value,
    version: (u64, u64),
}

fn exercise(lab: &Lab, ctl: &Ctl, cores: [u32; 2]) -> Result<Outcome, String> {
    let dst: SocketAddr = format!("{APP_V4}:7").parse().expect("an address");
    let probe = peer_flow_socket(lab, dst).map_err(|e| format!("peer socket: {e}"))?;
    wait_for_echo(&probe, dst, PROBES)?;
    let version0 = ctl.json(&["handlers"])?["version"]
        .as_u64()
        .ok_or("ctl handlers: no version")?;
    let (flows, _classified) = classify_flows(lab, ctl, dst)?;
    let base = ctl.stats()?;
    if base.rx != base.tx || base.dropped != 0 || base.in_flight != 0 {
        return Err(format!(
            "before the load, not every request was echoed: {base:?}"
        ));
    }
    let wire_before = Wire::read(lab)?;

    let shared = Shared {
        sending: AtomicUsize::new(LOAD_THREADS),
        ..Shared::default()
    };
    let mut per_thread: Vec<Vec<Flow>> = (0..LOAD_THREADS).map(|_| Vec::new()).collect();
    for (i, f) in flows.into_iter().enumerate() {
        per_thread[i % LOAD_THREADS].push(f);
    }
    let started = Instant::now();
    let deadline = started + LOAD_TIME;
    let mut changes = Changes {
        ctl,
        shared: &shared,
        core1: cores[1],
        w1: "w1".into(),
        version: version0,
        made: 0,
        under_load: 0,
        log: Vec::new(),
        slowest: Duration::ZERO,
    };
    let (result, changed) = std::thread::scope(|s| {
        let _stop = StopOnDrop(&shared);
        let threads: Vec<_> = per_thread
            .into_iter()
            .map(|flows| {
                let shared = &shared;
                s.spawn(move || load(flows, shared, MAX_REQUESTS / LOAD_THREADS as u64, deadline))
            })
            .collect();
        let mut changed = (0..ROUNDS).try_for_each(|r| changes.round(r));
        // Traffic still flows after the last change.
        if changed.is_ok() {
            changed = changes.progress().map(|_| ());
        }
        while shared.sent.load(Ordering::Relaxed) < MIN_REQUESTS
            && shared.sending.load(Ordering::Relaxed) > 0
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        shared.stop.store(true, Ordering::Relaxed);
        let mut total = LoadResult::default();
        for t in threads {
            match t.join() {
                Ok(r) => total.add(r),
                Err(_) => total.problem("a load thread panicked".into()),
            }
        }
        (total, changed)
    });
    let took = started.elapsed();
    let failed = |e: String, load: &LoadResult| {
        format!(
            "{e}\nload so far: {} sent, {} echoed, {} missing (e.g. {:?}), {} bad {:?}",
            load.sent, load.echoed, load.missing, load.missing_examples, load.bad, load.problems
        )
    };
    if let Err(e) = changed {
        return Err(failed(
            format!("{e}\nchanges made:\n{}", changes.log.join("\n")),
            &result,
        ));
    }
    let end = ctl.stats().map_err(|e| failed(e, &result))?;
    let wire_after = Wire::read(lab).map_err(|e| failed(e, &result))?;
    let workers = ctl.json(&["workers"]).map_err(|e| failed(e, &result))?;
    let version = ctl.json(&["handlers"]).map_err(|e| failed(e, &result))?["version"]
        .as_u64()
        .unwrap_or(0);
    Ok(Outcome {
        load: result,
        took,
        changes: changes.log,
        made: changes.made,
        under_load: changes.under_load,
        slowest_change: changes.slowest,
        base,
        end,
        wire_before,
        wire_after,
        workers,
        version: (version0, version),
    })
}

#[test]
fn live_changes_under_load_lose_nothing_over_afxdp() {
    let test = "live_changes_under_load_lose_nothing_over_afxdp";
    let cores: Vec<u32> = dataplane::topology::allowed_cores()
        .into_iter()
        .take(2)
        .collect();
    if cores.len() < 2 {
        if common::privileged(test) {
            setup_failed(test, "needs two allowed cores, one worker per queue");
        }
        return;
    }
    let cores = [cores[0], cores[1]];
    let Some(lab) = lab_for(test, 'l', 2) else {
        return;
    };
    let bin = match common::ctl_binary() {
        Ok(b) => b,
        Err(e) => {
            setup_failed(test, &e);
            return;
        }
    };
    let dir = TempDir::new(&format!("{}-ctl", lab.prefix)).expect("temp dir");
    let socket = dir.0.join("ctl.sock");
    let ctl = Ctl {
        bin,
        socket: socket.clone(),
    };
    let workers = [
        WorkerSpec {
            core: cores[0],
            queues: &["p0:q0"],
        },
        WorkerSpec {
            core: cores[1],
            queues: &["p0:q1"],
        },
    ];
    // Back-off when idle to begin with: the machine has two cores, shared by both workers,
    // the load threads, ctl and the kernel's veth processing.
    let config = afxdp_config(&lab, RULES, &workers, UDP_ECHO).replacen(
        "[engine]\n",
        "[engine]\nidle = \"backoff\"\nbackoff_max_us = 200\n",
        1,
    );
    let socket_arg = socket.to_str().expect("a UTF-8 temp path");
    let mut app = Appliance::start_with_args(&lab, &config, &["--ctl-socket", socket_arg])
        .unwrap_or_else(|e| panic!("{test}: {e}"));
    if let Err(e) = app.wait_running(START_TIMEOUT) {
        panic!("{test}: {e}");
    }
    let ready = Instant::now() + START_TIMEOUT;
    while ctl.text(&["status"]).is_err() && Instant::now() < ready {
        std::thread::sleep(Duration::from_millis(50));
    }
    let outcome = exercise(&lab, &ctl, cores);
    let done = app.interrupt();
    let o = outcome.unwrap_or_else(|e| {
        panic!(
            "{test}: {e}\nwire: {}\nslipstream exit {}, report:\n{}\nstderr:\n{}",
            lab.diagnostics(),
            done.status,
            done.stdout,
            done.tail_of_stderr()
        )
    });
    let report = done.assert_clean(test);
    let context = || {
        format!(
            "changes:\n{}\nwire before {:?}\nwire after {:?}\nreport: {}\nstderr:\n{}",
            o.changes.join("\n"),
            o.wire_before,
            o.wire_after,
            done.stdout,
            done.tail_of_stderr()
        )
    };

    // The changes: all made, each while traffic flowed, and in effect at the end.
    assert_eq!(o.made, ROUNDS * 10, "{test}: changes made\n{}", context());
    assert_eq!(
        o.under_load,
        o.made,
        "{test}: only {} of {} changes were made while traffic flowed (the load reached \
         its cap of {MAX_REQUESTS} requests or {LOAD_TIME:?} first)\n{}",
        o.under_load,
        o.made,
        context()
    );
    assert_eq!(
        o.version.1,
        o.version.0 + 2 * ROUNDS as u64,
        "{test}: handler chain versions"
    );
    let running: Vec<(Value, Value, Value)> = o
        .workers
        .as_array()
        .map(|ws| {
            ws.iter()
                .filter(|w| w["state"] == "running")
                .map(|w| (w["core"].clone(), w["queues"].clone(), w["idle"].clone()))
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(
        running,
        vec![
            (
                cores[0].into(),
                serde_json::json!(["p0:q0"]),
                "backoff".into()
            ),
            (
                cores[1].into(),
                serde_json::json!(["p0:q1"]),
                "backoff".into()
            ),
        ],
        "{test}: workers at the end: {}",
        o.workers
    );

    // The client: every request got exactly its reply.
    let l = &o.load;
    assert!(
        l.bad == 0 && l.missing == 0 && l.echoed == l.sent,
        "{test}: the client lost requests: {} sent, {} echoed, {} never answered (flow, \
         request: {:?}), {} bad replies or errors {:?}\n{}",
        l.sent,
        l.echoed,
        l.missing,
        l.missing_examples,
        l.bad,
        l.problems,
        context()
    );
    assert!(
        l.sent >= MIN_REQUESTS,
        "{test}: only {} requests sent in {:?}",
        l.sent,
        o.took
    );
    assert!(
        l.sent_per_queue.iter().all(|&n| n > 0),
        "{test}: both queues carry load: {:?}",
        l.sent_per_queue
    );

    // Slipstream: nothing dropped, everything received transmitted, exactly the requests.
    let c = report_counters(&report);
    assert!(
        c.total.drops.is_empty() && c.total.slow_path == 0,
        "{test}: slipstream dropped: {}\n{}",
        c.summary(),
        context()
    );
    assert_eq!(
        c.total.rx_packets,
        c.total.tx_packets,
        "{test}: received != transmitted: {}",
        c.summary()
    );
    assert_eq!(
        c.total.rx_packets,
        o.base.rx + l.sent,
        "{test}: slipstream received {} packets: {} before the load + {} requests expected\n{}",
        c.total.rx_packets,
        o.base.rx,
        l.sent,
        context()
    );
    assert_eq!(
        (o.end.rx, o.end.tx, o.end.dropped, o.end.in_flight),
        (o.base.rx + l.sent, o.base.rx + l.sent, 0, 0),
        "{test}: ctl stats after the load"
    );
    let queue_rx: Vec<u64> = (0..2)
        .map(|q| {
            report["ports"][0]["queues"][q]["rx_packets"]
                .as_u64()
                .unwrap_or(0)
        })
        .collect();
    assert_eq!(
        queue_rx, o.end.queue_rx,
        "{test}: per-queue rx, report vs ctl stats"
    );

    // The kernel: exactly the requests went into the AF_XDP sockets, per queue what
    // slipstream received there, and no drop or error counter moved at either end.
    let redirected: Vec<u64> = (0..2)
        .map(|q| o.wire_after.redirected[q] - o.wire_before.redirected[q])
        .collect();
    let received: Vec<u64> = (0..2)
        .map(|q| o.end.queue_rx[q] - o.base.queue_rx[q])
        .collect();
    assert_eq!(
        redirected,
        received,
        "{test}: per queue, frames the XDP program redirected to AF_XDP vs slipstream \
         received\n{}",
        context()
    );
    assert_eq!(redirected.iter().sum::<u64>(), l.sent, "{test}: redirected");
    let losses = o.wire_after.losses_since(&o.wire_before);
    assert!(
        losses.is_empty(),
        "{test}: kernel drop/error counters moved: {losses:?}\n{}",
        context()
    );
    assert_eq!(
        lab.app_xdp_prog(),
        None,
        "{test}: the XDP program is still attached after a clean stop"
    );
    eprintln!(
        "{test}: {} requests over {} flows (window {WINDOW}) in {:.2?}, all echoed; per queue \
         sent {:?}, redirected {redirected:?}; {} live changes under load (slowest {:.0?}); \
         longest wait for a reply {:.0?}\n{}",
        l.sent,
        2 * FLOWS_PER_QUEUE,
        o.took,
        l.sent_per_queue,
        o.made,
        o.slowest_change,
        l.max_gap,
        o.changes.join("\n")
    );
}
