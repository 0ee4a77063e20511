//! `kv-load`: a memcached UDP load generator for `scripts/bench-kv`, one pinned thread.
//!
//! It keeps `--window` requests in flight on each of `--flows` UDP sockets (one flow per
//! socket, so a multi-queue receiver spreads them), sends in batches with `sendmmsg(2)`,
//! reads answers with `recvmmsg(2)`, and records each request's round trip in an
//! hdrhistogram. Keys are 32 bytes from a fixed key space, preloaded with `set` before the
//! timed phase; the timed phase mixes gets and sets (`--get-ratio`). A request without an
//! answer for `--timeout-ms` counts as a timeout and its slot is reused. Prints one JSON
//! object: operations, rate, latency percentiles (microseconds), misses, timeouts, errors.
//!
//! Why not memcaslap alone: from one core it cannot offer more than about 90k requests/s,
//! below what a kernel-bypass server answers, so it would measure itself.

use std::io;
use std::mem;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

struct Args {
    server: SocketAddr,
    duration: f64,
    keys: usize,
    value: usize,
    get_ratio: f64,
    window: usize,
    flows: usize,
    core: Option<usize>,
    timeout_ms: u64,
    batch: usize,
}

fn usage(msg: &str) -> ! {
    eprintln!(
        "kv-load: {msg}\nusage: kv-load --server ADDR:PORT [--duration S] [--keys N] [--value BYTES] \
         [--get-ratio F] [--window N] [--flows N] [--batch N] [--core C] [--timeout-ms MS]"
    );
    std::process::exit(2)
}

fn num<T: std::str::FromStr>(k: &str, v: &str) -> T {
    v.parse()
        .unwrap_or_else(|_| usage(&format!("{k}: bad value {v}")))
}

fn args() -> Args {
    let mut a = Args {
        server: "198.18.0.1:11211"
            .parse()
            .unwrap_or_else(|_| usage("bad default")),
        duration: 5.0,
        keys: 10_000,
        value: 100,
        get_ratio: 0.9,
        window: 32,
        flows: 8,
        core: None,
        timeout_ms: 1000,
        batch: 16,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let v = it
            .next()
            .unwrap_or_else(|| usage(&format!("{k} needs a value")));
        match k.as_str() {
            "--server" => a.server = v.parse().unwrap_or_else(|_| usage("bad --server")),
            "--duration" => a.duration = num(&k, &v),
            "--keys" => a.keys = num(&k, &v),
            "--value" => a.value = num(&k, &v),
            "--get-ratio" => a.get_ratio = num(&k, &v),
            "--window" => a.window = num(&k, &v),
            "--flows" => a.flows = num(&k, &v),
            "--batch" => a.batch = num(&k, &v),
            "--core" => a.core = Some(num(&k, &v)),
            "--timeout-ms" => a.timeout_ms = num(&k, &v),
            _ => usage(&format!("unknown option {k}")),
        }
    }
    if a.window == 0 || a.window > 16_384 || a.flows == 0 || a.keys == 0 || a.batch == 0 {
        usage("window 1..=16384, flows, keys and batch at least 1");
    }
    a
}

/// A 32-byte key.
fn key(i: usize) -> String {
    format!("kvload:{i:025}")
}

/// A small xorshift generator: reproducible key and operation choices without a crate.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// One outstanding request.
#[derive(Clone, Copy)]
struct Slot {
    sent: Option<Instant>,
    get: bool,
}

/// Batched sendmmsg over one connected socket of the slot buffers `which`.
fn send_batch(sock: &UdpSocket, msgs: &[Vec<u8>], which: &[usize]) -> io::Result<usize> {
    let mut iovs: Vec<libc::iovec> = which
        .iter()
        .map(|&i| libc::iovec {
            iov_base: msgs[i].as_ptr() as *mut libc::c_void,
            iov_len: msgs[i].len(),
        })
        .collect();
    let mut hdrs: Vec<libc::mmsghdr> = iovs
        .iter_mut()
        .map(|iov| {
            // SAFETY: mmsghdr is plain data; all-zero is valid (no name, no control).
            let mut h: libc::mmsghdr = unsafe { mem::zeroed() };
            h.msg_hdr.msg_iov = iov;
            h.msg_hdr.msg_iovlen = 1;
            h
        })
        .collect();
    // SAFETY: `hdrs` points at `iovs`, which point into `msgs`; all outlive the call, and the
    // socket is connected (no address needed).
    let n = unsafe {
        libc::sendmmsg(
            sock.as_raw_fd(),
            hdrs.as_mut_ptr(),
            hdrs.len() as libc::c_uint,
            libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// Batched recvmmsg; returns how many of `bufs` were filled (lengths in `lens`).
fn recv_batch(sock: &UdpSocket, bufs: &mut [Vec<u8>], lens: &mut [usize]) -> usize {
    let mut iovs: Vec<libc::iovec> = bufs
        .iter_mut()
        .map(|b| libc::iovec {
            iov_base: b.as_mut_ptr() as *mut libc::c_void,
            iov_len: b.len(),
        })
        .collect();
    let mut hdrs: Vec<libc::mmsghdr> = iovs
        .iter_mut()
        .map(|iov| {
            // SAFETY: as in send_batch.
            let mut h: libc::mmsghdr = unsafe { mem::zeroed() };
            h.msg_hdr.msg_iov = iov;
            h.msg_hdr.msg_iovlen = 1;
            h
        })
        .collect();
    // SAFETY: the headers point at buffers that outlive the call; MSG_DONTWAIT, no timeout.
    let n = unsafe {
        libc::recvmmsg(
            sock.as_raw_fd(),
            hdrs.as_mut_ptr(),
            hdrs.len() as libc::c_uint,
            libc::MSG_DONTWAIT,
            std::ptr::null_mut(),
        )
    };
    if n <= 0 {
        return 0;
    }
    for (l, h) in lens.iter_mut().zip(&hdrs).take(n as usize) {
        *l = h.msg_len as usize;
    }
    n as usize
}

/// Writes request `id` into `m` (a slot's buffer, reused) from a prepared template
/// (`get`/`set` line and data without the frame header).
fn request(m: &mut Vec<u8>, id: u16, template: &[u8]) {
    m.clear();
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(&[0, 0, 0, 1, 0, 0]);
    m.extend_from_slice(template);
}

/// The get and set request bodies of every key, made once.
fn templates(a: &Args) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let value = vec![b'v'; a.value];
    let gets = (0..a.keys)
        .map(|i| format!("get {}\r\n", key(i)).into_bytes())
        .collect();
    let sets = (0..a.keys)
        .map(|i| {
            let mut m = format!("set {} 0 0 {}\r\n", key(i), a.value).into_bytes();
            m.extend_from_slice(&value);
            m.extend_from_slice(b"\r\n");
            m
        })
        .collect();
    (gets, sets)
}

#[derive(Default)]
struct Tally {
    done: u64,
    gets: u64,
    misses: u64,
    timeouts: u64,
    errors: u64,
}

/// Runs the load for `secs` (preload: every key once, as sets) and returns the tally and
/// the latency histogram (microseconds).
fn run(
    a: &Args,
    socks: &[UdpSocket],
    tpl: &(Vec<Vec<u8>>, Vec<Vec<u8>>),
    secs: f64,
    preload: bool,
) -> (Tally, Histogram<u64>, f64) {
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
    let mut slots = vec![
        vec![
            Slot {
                sent: None,
                get: false
            };
            a.window
        ];
        socks.len()
    ];
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut t = Tally::default();
    let mut next_key = 0usize;
    let mut bufs = vec![vec![0u8; 2048]; 64];
    let mut lens = vec![0usize; 64];
    // One request buffer per slot, reused.
    let mut reqs: Vec<Vec<Vec<u8>>> =
        vec![vec![Vec::with_capacity(64 + a.value); a.window]; socks.len()];
    let mut ids: Vec<(usize, bool)> = Vec::with_capacity(a.batch);
    let mut which: Vec<usize> = Vec::with_capacity(a.batch);
    let timeout = Duration::from_millis(a.timeout_ms);
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(secs);
    let mut last_progress = Instant::now();
    loop {
        let now = Instant::now();
        let finished_preload = preload && next_key >= a.keys;
        let stop = if preload {
            finished_preload
        } else {
            now >= end
        };
        let outstanding: usize = slots.iter().flatten().filter(|s| s.sent.is_some()).count();
        if stop && outstanding == 0 {
            break;
        }
        if now.duration_since(last_progress) > Duration::from_secs(10) {
            eprintln!("kv-load: no progress for 10 s; giving up");
            break;
        }
        let mut busy = false;
        for (f, sock) in socks.iter().enumerate() {
            // Fill free slots (and expire stale ones), a batch at a time.
            ids.clear();
            which.clear();
            for (i, s) in slots[f].iter_mut().enumerate() {
                if let Some(at) = s.sent {
                    if now.duration_since(at) > timeout {
                        t.timeouts += 1;
                        s.sent = None;
                    } else {
                        continue;
                    }
                }
                if stop || ids.len() == a.batch {
                    continue;
                }
                let (get, k) = if preload {
                    if next_key >= a.keys {
                        continue;
                    }
                    next_key += 1;
                    (false, next_key - 1)
                } else {
                    (
                        rng.unit() < a.get_ratio,
                        (rng.next() % a.keys as u64) as usize,
                    )
                };
                // Request ids: slot number in the low bits, a flow tag in the high ones.
                let id = (i as u16) | ((f as u16 & 3) << 14);
                let body = if get { &tpl.0[k] } else { &tpl.1[k] };
                request(&mut reqs[f][i], id, body);
                ids.push((i, get));
                which.push(i);
            }
            if !ids.is_empty() {
                // Stamped before the send: on a veth the server may answer the batch's first
                // requests while the syscall is still busy with its last ones.
                let at = Instant::now();
                let sent = send_batch(sock, &reqs[f], &which).unwrap_or(0);
                busy |= sent > 0;
                for &(i, get) in ids.iter().take(sent) {
                    slots[f][i] = Slot {
                        sent: Some(at),
                        get,
                    };
                }
            }
            let n = recv_batch(sock, &mut bufs, &mut lens);
            busy |= n > 0;
            let at = Instant::now();
            for j in 0..n {
                let d = &bufs[j][..lens[j]];
                if d.len() < 8 {
                    t.errors += 1;
                    continue;
                }
                let i = usize::from(u16::from_be_bytes([d[0], d[1]]) & 0x3fff);
                let Some(s) = slots[f].get_mut(i) else {
                    t.errors += 1;
                    continue;
                };
                let Some(sent) = s.sent.take() else {
                    continue; // answered after its timeout
                };
                let body = &d[8..];
                if s.get {
                    t.gets += 1;
                    if body == b"END\r\n" {
                        t.misses += 1;
                    } else if !body.starts_with(b"VALUE ") || !body.ends_with(b"END\r\n") {
                        t.errors += 1;
                    }
                } else if body != b"STORED\r\n" {
                    t.errors += 1;
                }
                t.done += 1;
                last_progress = at;
                let _ = hist.record((at.duration_since(sent).as_nanos() as u64 / 1000).max(1));
            }
        }
        if !busy {
            wait_readable(socks);
        }
    }
    let secs = start.elapsed().as_secs_f64();
    (t, hist, secs)
}

/// Waits (up to 1 ms) until a socket is readable, instead of spinning: the kernel's own
/// packet work for this core (veth NAPI, softirqs) must get the CPU too, or a spinning
/// client measures its own starvation.
fn wait_readable(socks: &[UdpSocket]) {
    let mut fds: Vec<libc::pollfd> = socks
        .iter()
        .map(|s| libc::pollfd {
            fd: s.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // SAFETY: `fds` is a valid array of pollfd for the duration of the call.
    unsafe {
        libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 1);
    }
}

fn main() {
    let a = args();
    if let Some(c) = a.core {
        if !core_affinity::set_for_current(core_affinity::CoreId { id: c }) {
            usage(&format!("cannot pin to core {c}"));
        }
    }
    let socks: Vec<UdpSocket> = (0..a.flows)
        .map(|_| {
            let s = UdpSocket::bind("0.0.0.0:0").unwrap_or_else(|e| usage(&format!("bind: {e}")));
            s.connect(a.server)
                .unwrap_or_else(|e| usage(&format!("connect {}: {e}", a.server)));
            s
        })
        .collect();
    let tpl = templates(&a);
    let (pre, _, _) = run(&a, &socks, &tpl, 0.0, true);
    let (t, h, secs) = run(&a, &socks, &tpl, a.duration, false);
    let q = |p: f64| h.value_at_quantile(p);
    println!(
        "{{\"ops\": {}, \"secs\": {:.3}, \"ops_per_s\": {:.0}, \"p50_us\": {}, \"p99_us\": {}, \
         \"p999_us\": {}, \"max_us\": {}, \"gets\": {}, \"misses\": {}, \"timeouts\": {}, \
         \"errors\": {}, \"preload_errors\": {}, \"preload_timeouts\": {}}}",
        t.done,
        secs,
        t.done as f64 / secs.max(1e-9),
        q(0.5),
        q(0.99),
        q(0.999),
        h.max(),
        t.gets,
        t.misses,
        t.timeouts,
        t.errors,
        pre.errors,
        pre.timeouts
    );
}
