//! `port::Dpdk`: a DPDK ethdev (a NIC, or a virtual device such as `net_null`, `net_ring`,
//! `net_pcap`, `net_af_packet`, `net_af_xdp`) with mbuf-backed frames, over our `dpdk-sys`
//! bindings. Built only with the `dpdk` cargo feature.
//!
//! Shape:
//! - **One EAL per process.** DPDK cannot initialise its environment twice, so the first
//!   port built initialises it from its engine's `[dpdk]` section (`--in-memory --no-pci
//!   --file-prefix slipstream-<pid>`, the main lcore, `--no-huge -m` when hugepages are off or
//!   too few are free), and every later port, of any engine in the process, shares it. The
//!   thread that initialises the EAL gets its CPU affinity back afterwards (the EAL pins it to
//!   the main lcore). `rte_eal_cleanup` runs at process exit (or from [`cleanup`]).
//! - **Devices are hot-plugged.** A virtual device with its arguments (`net_pcap0,rx_pcap=...`)
//!   is probed when the port is built (`rte_dev_probe`) and removed when it closes, so tests
//!   and engines in one process each bring their own devices; devices the EAL probed itself
//!   (PCI, with `dpdk.pci = true`) are looked up by name, and closed but not removed at the
//!   end (closing is what gives back the mbufs their RX rings hold).
//! - **One mempool per NUMA socket in use**, shared by the ports on that socket (and by
//!   engines in the same process), created on first use and freed when its last user is gone.
//!   It is wrapped in each port's [`FramePool`] as a [`FrameSource`], so DPDK frames are the
//!   same move-only `Frame` tokens as everywhere else: a frame's bytes *are* the mbuf's data
//!   room (`buf_addr`), and the mbuf is found again from the buffer address (it sits right in
//!   front of it). Receiving turns mbufs into frames and transmitting hands the same mbufs to
//!   `rte_eth_tx_burst`; nothing is copied. An mbuf the driver hands over that we cannot use
//!   as a single buffer of our mempool (a chain of segments, an indirect or external buffer, or
//!   one from another pool) is copied into one of ours, or dropped as `oversize` when it is
//!   larger than a frame.
//! - **Mempool caches.** Workers are ordinary threads, not EAL lcores, so each registers
//!   itself (`rte_thread_register`) on its first burst, which gives it a per-lcore mempool
//!   cache like a DPDK lcore's; it unregisters when the thread ends. Without a free lcore slot
//!   it still works, through the mempool's ring.
//! - **Counters.** The queues count what they receive and transmit (the engine's conservation
//!   check needs exact, per-queue figures). Frames the device dropped before we saw them
//!   (`imissed`, `rx_nombuf` from `rte_eth_stats`) are folded into queue 0's counters as
//!   received and dropped with reason `no_buffer`, by queue 0's owner every 64k polls and at
//!   close; [`Dpdk::eth_stats`] reads the device's own counters at any time.
//! - **Frame size.** An mbuf's data room is DPDK's `RTE_PKTMBUF_HEADROOM` (128) plus
//!   `engine.frame_size` (2176 bytes for the default 2048, DPDK's default mbuf), so drivers
//!   find the room they expect behind the usual headroom. As for every port, a packet longer
//!   than the frame size minus [`HEADROOM`] is an `oversize` drop at the port, so DPDK, pcap
//!   and memory ports agree on what fits.
//! - **Clean shutdown** ([`Port::close`]): stop and close the device, remove it if we
//!   plugged it, check that every frame this port made was handed back (the pool's
//!   accounting), and, when the last port on a mempool closes, that every mbuf is back in it.
//!
//! Rejected: a mempool per port (the architecture wants one per socket, and mbufs would have
//! to be copied between ports of one socket); copying packets between mbufs and our own
//! frames (a copy per packet, which is what DPDK exists to avoid); EAL lcore threads for the
//! workers (the engine owns its threads and their pinning; registration gives the same
//! mempool caches).

use std::cell::Cell;
use std::ffi::{c_char, c_void, CStr, CString};
use std::path::Path;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use dpdk_sys as ffi;

use crate::batch::Batch;
use crate::config::{DpdkConfig, DpdkPortConfig, EngineConfig};
use crate::mem::{Backing, Frame, FramePool, FrameSource, PoolId, HEADROOM};
use crate::packet::{Meta, PortId, QueueId};
use crate::pipeline::DropReason;
use crate::port::{Ownership, Port, PortError, Queue};
use crate::stats::{Padded, QueueCounters};

/// Most mbufs one burst moves (and the size of a queue's mbuf array).
const MAX_BURST: usize = 512;

/// Queue 0's owner folds the device's drop counters in every this many polls.
const FOLD_INTERVAL: u32 = 1 << 16;

/// Size of `struct rte_mbuf`: a buffer starts this far (plus the pool's private area)
/// behind its mbuf header.
const MBUF_HEADER: usize = std::mem::size_of::<ffi::rte_mbuf>();

fn cfg_err(port: PortId, msg: impl Into<String>) -> PortError {
    PortError::Config {
        port,
        msg: msg.into(),
    }
}

/// `rte_strerror(rte_errno)` of the calling thread.
fn rte_error() -> String {
    // SAFETY: _rte_errno reads a thread-local; rte_strerror returns a pointer to a static or
    // thread-local NUL-terminated string.
    unsafe {
        let e = ffi::_rte_errno();
        CStr::from_ptr(ffi::rte_strerror(e))
            .to_string_lossy()
            .into_owned()
    }
}

/// Message for a negative errno returned by an ethdev function.
fn errno_text(rc: i32) -> String {
    // SAFETY: as in rte_error.
    let s = unsafe { CStr::from_ptr(ffi::rte_strerror(-rc)) };
    format!("{} ({rc})", s.to_string_lossy())
}

// ---- the process-wide EAL -------------------------------------------------------------------

enum EalState {
    Down,
    Up {
        settings: EalSettings,
        backing: Backing,
    },
    Failed(String),
    Closed,
}

/// What the EAL was initialised with (to notice a later engine asking for something else).
#[derive(Debug, Clone, PartialEq)]
struct EalSettings {
    dpdk: DpdkConfig,
    hugepages: bool,
}

struct Global {
    eal: EalState,
    /// Live mempools by (socket, data room); dead entries are pruned on lookup.
    mempools: Vec<(i32, u16, Weak<Mempool>)>,
    next_mempool: u32,
}

/// DPDK's control path (EAL init, device probe, configure, start, stop, close, remove) is
/// not safe to call from several threads at once; every such call happens under this lock.
static GLOBAL: Mutex<Global> = Mutex::new(Global {
    eal: EalState::Down,
    mempools: Vec::new(),
    next_mempool: 0,
});

/// Set once `rte_eal_cleanup` has run: thread-exit hooks must not call DPDK any more.
static EAL_CLOSED: AtomicBool = AtomicBool::new(false);

fn global() -> MutexGuard<'static, Global> {
    GLOBAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Free 2 MiB hugepages, in bytes, from /proc/meminfo.
fn free_hugepage_bytes() -> u64 {
    let Ok(text) = std::fs::read_to_string("/proc/meminfo") else {
        return 0;
    };
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let size_kb = field("Hugepagesize:");
    if size_kb != 2048 {
        return 0;
    }
    field("HugePages_Free:") * size_kb * 1024
}

/// Bytes of hugepage memory the EAL needs for one mempool of `cfg` plus its own structures.
fn hugepage_need(cfg: &DpdkConfig, frame_size: u32) -> u64 {
    let per_mbuf =
        frame_size as u64 + (ffi::RTE_PKTMBUF_HEADROOM as u64) + MBUF_HEADER as u64 + 128;
    cfg.mbufs as u64 * per_mbuf + (64 << 20)
}

/// Initialises the EAL from `engine` if nobody has yet.
fn ensure_eal(g: &mut Global, engine: &EngineConfig) -> Result<Backing, String> {
    let cfg = &engine.dpdk;
    match &g.eal {
        EalState::Up { settings, backing } => {
            if settings.dpdk != *cfg || settings.hugepages != engine.hugepages {
                tracing::info!(
                    "DPDK: the EAL is already initialised in this process; this engine's \
                     [dpdk] section and engine.hugepages are not applied again"
                );
            }
            return Ok(*backing);
        }
        EalState::Failed(msg) => return Err(msg.clone()),
        EalState::Closed => {
            return Err(
                "the EAL was cleaned up in this process, and DPDK cannot initialise it twice"
                    .into(),
            )
        }
        EalState::Down => {}
    }
    let main_core = cfg
        .main_core
        .or_else(|| crate::topology::allowed_cores().into_iter().next())
        .unwrap_or(0);
    let prefix = cfg
        .file_prefix
        .clone()
        .unwrap_or_else(|| format!("slipstream-{}", std::process::id()));
    let mut args: Vec<String> = vec![
        "slipstream".into(),
        "--file-prefix".into(),
        prefix,
        "-l".into(),
        main_core.to_string(),
        "--log-level".into(),
        cfg.log_level.clone(),
    ];
    if !cfg.pci {
        args.push("--no-pci".into());
    }
    if !cfg.telemetry {
        args.push("--no-telemetry".into());
    }
    let need = hugepage_need(cfg, engine.frame_size);
    let backing = if engine.hugepages && free_hugepage_bytes() >= need {
        Backing::Huge
    } else {
        if engine.hugepages {
            tracing::warn!(
                "DPDK: fewer than {} MiB of free 2 MiB hugepages; running the EAL with \
                 --no-huge on {} MiB of 4k pages (reserve some with: echo 256 > \
                 /proc/sys/vm/nr_hugepages)",
                need >> 20,
                cfg.memory_mb
            );
        }
        args.extend(["--no-huge".into(), "-m".into(), cfg.memory_mb.to_string()]);
        Backing::Normal
    };
    if cfg.in_memory {
        // --no-huge implies legacy memory, which --in-memory refuses; without hugepage files
        // --no-shconf is all that --in-memory adds.
        args.push(
            if backing == Backing::Huge {
                "--in-memory"
            } else {
                "--no-shconf"
            }
            .into(),
        );
    }
    args.extend(cfg.args.iter().cloned());
    tracing::info!("DPDK: rte_eal_init {}", args[1..].join(" "));

    // The EAL keeps pointers into argv (and may permute it): the strings live for the rest
    // of the process. Leaked once per process.
    let mut argv: Vec<*mut c_char> = Vec::with_capacity(args.len() + 1);
    for a in &args {
        let c = CString::new(a.as_str()).map_err(|_| format!("EAL argument `{a}` contains NUL"))?;
        argv.push(c.into_raw());
    }
    argv.push(std::ptr::null_mut());
    let argv = Box::leak(argv.into_boxed_slice());

    let affinity = current_affinity();
    // SAFETY: argv is a NULL-terminated array of NUL-terminated strings that outlive the
    // process; rte_eal_init runs once per process (we are under GLOBAL and state is Down).
    let rc = unsafe { ffi::rte_eal_init((args.len()) as i32, argv.as_mut_ptr()) };
    if let Some(set) = affinity {
        restore_affinity(&set);
    }
    if rc < 0 {
        let msg = format!(
            "rte_eal_init failed: {} (arguments: {}); DPDK cannot retry in this process",
            rte_error(),
            args[1..].join(" ")
        );
        g.eal = EalState::Failed(msg.clone());
        return Err(msg);
    }
    // SAFETY: at_exit is an extern "C" fn without arguments that only takes GLOBAL with
    // try_lock, so it cannot deadlock against a thread that exits while holding it.
    unsafe { libc::atexit(at_exit) };
    g.eal = EalState::Up {
        settings: EalSettings {
            dpdk: cfg.clone(),
            hugepages: engine.hugepages,
        },
        backing,
    };
    Ok(backing)
}

fn current_affinity() -> Option<libc::cpu_set_t> {
    // SAFETY: cpu_set_t is plain data; zeroed is a valid empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: pid 0 is the calling thread; the size matches `set`.
    let rc =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    (rc == 0).then_some(set)
}

fn restore_affinity(set: &libc::cpu_set_t) {
    // SAFETY: pid 0 is the calling thread; `set` is a valid cpu_set_t of the given size.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), set) };
    if rc != 0 {
        tracing::warn!(
            "DPDK: cannot restore this thread's CPU affinity after rte_eal_init: {}",
            std::io::Error::last_os_error()
        );
    }
}

extern "C" fn at_exit() {
    if let Ok(mut g) = GLOBAL.try_lock() {
        cleanup_locked(&mut g);
    }
}

fn cleanup_locked(g: &mut Global) {
    if matches!(g.eal, EalState::Up { .. }) {
        EAL_CLOSED.store(true, Ordering::Release);
        // SAFETY: the EAL is up and we hold the control lock; no DPDK call runs after this
        // (EAL_CLOSED and the Closed state refuse them).
        unsafe { ffi::rte_eal_cleanup() };
        g.eal = EalState::Closed;
    }
}

/// Cleans up the EAL (`rte_eal_cleanup`) now instead of at process exit. After this no DPDK
/// port can be built in this process. Refused while a DPDK port or mempool is still alive.
pub fn cleanup() -> Result<(), String> {
    let mut g = global();
    g.mempools.retain(|(_, _, w)| w.strong_count() > 0);
    if !g.mempools.is_empty() {
        return Err(format!(
            "{} DPDK mempool(s) still in use: close and drop every DPDK port first",
            g.mempools.len()
        ));
    }
    cleanup_locked(&mut g);
    Ok(())
}

// ---- worker threads as lcores -----------------------------------------------------------------

const LCORE_UNKNOWN: u8 = 0;
const LCORE_REGISTERED: u8 = 1;
const LCORE_NATIVE: u8 = 2;
const LCORE_NONE: u8 = 3;

/// The calling thread's lcore registration; unregisters when the thread ends.
struct Lcore(Cell<u8>);

impl Drop for Lcore {
    fn drop(&mut self) {
        if self.0.get() == LCORE_REGISTERED && !EAL_CLOSED.load(Ordering::Acquire) {
            // SAFETY: this thread registered itself and the EAL is still up.
            unsafe { ffi::rte_thread_unregister() };
        }
    }
}

thread_local! {
    static LCORE: Lcore = const { Lcore(Cell::new(LCORE_UNKNOWN)) };
}

/// Gives the calling thread an lcore id (and with it mempool caches) on first use.
#[inline]
fn ensure_lcore() {
    LCORE.with(|l| {
        if l.0.get() == LCORE_UNKNOWN {
            register_lcore(l);
        }
    });
}

#[cold]
fn register_lcore(l: &Lcore) {
    // SAFETY: plain EAL calls from an initialised EAL (a queue exists, so the EAL is up).
    unsafe {
        if ffi::_rte_lcore_id() != ffi::LCORE_ID_ANY {
            l.0.set(LCORE_NATIVE);
        } else if ffi::rte_thread_register() == 0 {
            l.0.set(LCORE_REGISTERED);
        } else {
            tracing::warn!(
                "DPDK: cannot register thread {:?} as an lcore ({}): its mbufs go through \
                 the mempool ring without a cache",
                std::thread::current().name(),
                rte_error()
            );
            l.0.set(LCORE_NONE);
        }
    }
}

// ---- mempools -----------------------------------------------------------------------------------

/// A DPDK packet mempool as a [`FrameSource`]: buffers are the mbufs' data rooms.
#[derive(Debug)]
pub struct Mempool {
    mp: NonNull<ffi::rte_mempool>,
    name: String,
    socket: i32,
    size: u32,
    data_room: u16,
    /// From a buffer address back to its mbuf.
    offset: usize,
    backing: Backing,
    /// DPDK ports built on this mempool and not closed yet.
    ports: AtomicUsize,
}

// SAFETY: a mempool is made for concurrent use from many threads; the pointer is only
// passed to DPDK's thread-safe mempool functions.
unsafe impl Send for Mempool {}
// SAFETY: as above.
unsafe impl Sync for Mempool {}

impl Mempool {
    /// The mempool for `socket` and `data_room`, created on first use.
    fn get(
        g: &mut Global,
        socket: i32,
        data_room: u16,
        cfg: &DpdkConfig,
        backing: Backing,
    ) -> Result<Arc<Mempool>, String> {
        g.mempools.retain(|(_, _, w)| w.strong_count() > 0);
        if let Some(mp) = g
            .mempools
            .iter()
            .find(|(s, r, _)| *s == socket && *r == data_room)
            .and_then(|(_, _, w)| w.upgrade())
        {
            return Ok(mp);
        }
        let name = format!("ss_s{socket}_{}", g.next_mempool);
        g.next_mempool += 1;
        let cname = CString::new(name.as_str()).map_err(|e| e.to_string())?;
        // SAFETY: a valid name; sizes within DPDK's limits (checked by Config::validate);
        // the EAL is up (the caller holds GLOBAL after ensure_eal).
        let mp = unsafe {
            ffi::rte_pktmbuf_pool_create(
                cname.as_ptr(),
                cfg.mbufs,
                cfg.mbuf_cache,
                0,
                data_room,
                socket,
            )
        };
        let Some(mp) = NonNull::new(mp) else {
            return Err(format!(
                "cannot create mempool {name} ({} mbufs of {data_room} bytes on socket \
                 {socket}): {}; lower dpdk.mbufs, raise dpdk.memory_mb (without hugepages) or \
                 reserve more hugepages",
                cfg.mbufs,
                rte_error()
            ));
        };
        // SAFETY: mp is a packet mempool we just created.
        let (priv_size, size) = unsafe {
            (
                ffi::_rte_pktmbuf_priv_size(mp.as_ptr()),
                ffi::_rte_mempool_size(mp.as_ptr()),
            )
        };
        let pool = Arc::new(Mempool {
            mp,
            name,
            socket,
            size,
            data_room,
            offset: MBUF_HEADER + priv_size as usize,
            backing,
            ports: AtomicUsize::new(0),
        });
        tracing::info!(
            "DPDK: mempool {} on socket {socket}: {size} mbufs of {data_room} bytes, cache {}",
            pool.name,
            cfg.mbuf_cache
        );
        g.mempools.push((socket, data_room, Arc::downgrade(&pool)));
        Ok(pool)
    }

    /// mbufs free in the pool, per-lcore caches included.
    pub fn available(&self) -> u32 {
        // SAFETY: a live mempool.
        unsafe { ffi::rte_mempool_avail_count(self.mp.as_ptr()) }
    }

    /// mbufs in the pool in all.
    pub fn size(&self) -> u32 {
        self.size
    }

    /// The NUMA socket the mempool lives on.
    pub fn socket(&self) -> i32 {
        self.socket
    }

    /// The mempool's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The raw mempool (for tests and tools that inject mbufs).
    pub fn as_ptr(&self) -> *mut ffi::rte_mempool {
        self.mp.as_ptr()
    }

    #[inline]
    fn mbuf_of(&self, buffer: NonNull<u8>) -> *mut ffi::rte_mbuf {
        buffer.as_ptr().wrapping_sub(self.offset).cast()
    }
}

// SAFETY: buffers are the data rooms of mbufs of this mempool, `data_room` bytes each, handed
// out by rte_pktmbuf_alloc_bulk (so nobody else owns them until they are put back) and kept
// mapped until the mempool is freed, which Drop only does when every mbuf is back.
unsafe impl FrameSource for Mempool {
    fn frame_size(&self) -> u16 {
        self.data_room
    }

    fn headroom(&self) -> u16 {
        (ffi::RTE_PKTMBUF_HEADROOM as u16).min(self.data_room)
    }

    fn total(&self) -> u32 {
        self.size
    }

    fn available(&self) -> u32 {
        Mempool::available(self)
    }

    fn backing(&self) -> Backing {
        self.backing
    }

    fn alloc_bulk(&self, out: &mut Vec<NonNull<u8>>, n: usize) -> usize {
        let n = n.min(MAX_BURST);
        if n == 0 {
            return 0;
        }
        out.reserve(n);
        let start = out.len();
        // The spare capacity receives mbuf pointers first, then their buffer addresses (a
        // pointer each either way).
        let dst = out
            .spare_capacity_mut()
            .as_mut_ptr()
            .cast::<*mut ffi::rte_mbuf>();
        // SAFETY: dst has room for n pointers (reserved above); the mempool is live.
        let rc = unsafe { ffi::_rte_pktmbuf_alloc_bulk(self.mp.as_ptr(), dst, n as u32) };
        if rc != 0 {
            return 0;
        }
        for i in 0..n {
            // SAFETY: the first n slots were written by rte_pktmbuf_alloc_bulk with valid
            // mbufs of this (packet) mempool, whose buffers start `offset` bytes in.
            unsafe {
                let m = *dst.add(i);
                let buf = m.cast::<u8>().add(self.offset);
                debug_assert_eq!((*m).buf_addr.cast::<u8>(), buf);
                dst.add(i)
                    .cast::<NonNull<u8>>()
                    .write(NonNull::new_unchecked(buf));
            }
        }
        // SAFETY: the n slots after `start` now hold initialised buffer pointers.
        unsafe { out.set_len(start + n) };
        n
    }

    unsafe fn free_bulk(&self, buffers: &[NonNull<u8>]) {
        let mut mbufs = [std::ptr::null_mut::<c_void>(); 64];
        for chunk in buffers.chunks(mbufs.len()) {
            for (slot, b) in mbufs.iter_mut().zip(chunk) {
                *slot = self.mbuf_of(*b).cast();
            }
            // SAFETY: each is a single-segment, direct mbuf of this mempool with refcnt 1
            // (the only kind a frame of ours can be: see DpdkQueue::rx_burst), owned by
            // the caller; such an mbuf may go back with a raw put.
            unsafe {
                ffi::_rte_mempool_put_bulk(self.mp.as_ptr(), mbufs.as_ptr(), chunk.len() as u32)
            };
        }
    }
}

impl Drop for Mempool {
    fn drop(&mut self) {
        if EAL_CLOSED.load(Ordering::Acquire) {
            return;
        }
        let free = self.available();
        if free == self.size {
            // SAFETY: every mbuf is back, so nothing points into the mempool any more.
            unsafe { ffi::rte_mempool_free(self.mp.as_ptr()) };
        } else {
            tracing::error!(
                "DPDK: mempool {}: {} of {} mbufs not returned at drop; leaving it allocated",
                self.name,
                self.size - free,
                self.size
            );
        }
    }
}

// ---- the port -------------------------------------------------------------------------------------

/// The device's own counters (`rte_eth_stats`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct EthStats {
    pub ipackets: u64,
    pub opackets: u64,
    pub ibytes: u64,
    pub obytes: u64,
    /// Dropped by the device: no RX descriptor was free.
    pub imissed: u64,
    pub ierrors: u64,
    pub oerrors: u64,
    /// RX mbuf allocation failures.
    pub rx_nombuf: u64,
}

struct Shared {
    id: PortId,
    port_id: u16,
    device: String,
    driver: String,
    /// The rte_device to remove at close, when we plugged it in.
    plugged: Option<NonNull<ffi::rte_device>>,
    pool: Arc<FramePool>,
    mempool: Arc<Mempool>,
    counters: Vec<Padded<QueueCounters>>,
    owners: Ownership,
    /// Longest packet a frame holds: frame size minus HEADROOM.
    max_len: u16,
    /// Packets in the device's capture inputs (`net_pcap` with `rx_pcap=`), if finite.
    input_packets: Option<u64>,
    /// `imissed + rx_nombuf` already folded into the counters.
    folded: Mutex<u64>,
    closed: Mutex<bool>,
    description: String,
}

// SAFETY: `plugged` is only used under GLOBAL at close; everything else is Send + Sync.
unsafe impl Send for Shared {}
// SAFETY: as above.
unsafe impl Sync for Shared {}

/// A DPDK port.
pub struct Dpdk {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Dpdk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dpdk")
            .field("id", &self.shared.id)
            .field("device", &self.shared.device)
            .field("port_id", &self.shared.port_id)
            .finish()
    }
}

/// Splits `name,args` and makes relative capture paths absolute against `base_dir`.
fn resolve_devargs(device: &str, base_dir: &Path) -> (String, String) {
    let mut parts = device.split(',');
    let name = parts.next().unwrap_or_default().trim().to_string();
    let mut out = name.clone();
    for kv in parts {
        out.push(',');
        match kv.split_once('=') {
            Some((k @ ("rx_pcap" | "tx_pcap"), v)) if Path::new(v).is_relative() => {
                out.push_str(k);
                out.push('=');
                out.push_str(&base_dir.join(v).to_string_lossy());
            }
            _ => out.push_str(kv),
        }
    }
    (name, out)
}

/// Packets in the `rx_pcap=` inputs of a `net_pcap` device; `None` when the device's input is
/// not a finite set of files (live interfaces, `infinite_rx=1`) or a file cannot be read.
fn pcap_input_packets(devargs: &str) -> Option<u64> {
    let mut total = None;
    for kv in devargs.split(',').skip(1) {
        match kv.split_once('=') {
            Some(("rx_pcap", path)) => {
                let n = crate::port::pcap::read_capture(Path::new(path)).ok()?.len() as u64;
                total = Some(total.unwrap_or(0) + n);
            }
            Some(("rx_iface" | "rx_iface_in" | "iface", _)) => return None,
            Some(("infinite_rx", v)) if v != "0" => return None,
            _ => {}
        }
    }
    total
}

/// Undoes a half-built port: stops and closes the device, and removes it when we plugged it.
fn release_device(port_id: u16, plugged: Option<NonNull<ffi::rte_device>>, started: bool) {
    // SAFETY: called under GLOBAL with a port id we configured; stop/close/remove tolerate a
    // device in any state.
    unsafe {
        if started {
            ffi::rte_eth_dev_stop(port_id);
        }
        ffi::rte_eth_dev_close(port_id);
        if let Some(dev) = plugged {
            let rc = ffi::rte_dev_remove(dev.as_ptr());
            if rc < 0 {
                tracing::warn!("DPDK: port {port_id}: rte_dev_remove: {}", errno_text(rc));
            }
        }
    }
}

impl Dpdk {
    /// Initialises the EAL if needed, plugs in (or finds) the device, configures and starts
    /// it with one RX and one TX queue per configured queue on the socket's mempool.
    /// Everything is undone if a step fails.
    pub fn new(
        id: PortId,
        cfg: &DpdkPortConfig,
        engine: &EngineConfig,
        base_dir: &Path,
    ) -> Result<Arc<Dpdk>, PortError> {
        if engine.frame_size + ffi::RTE_PKTMBUF_HEADROOM > u16::MAX as u32
            || engine.frame_size < 2 * HEADROOM as u32
        {
            return Err(cfg_err(
                id,
                format!(
                    "engine.frame_size {} does not fit an mbuf",
                    engine.frame_size
                ),
            ));
        }
        let mut g = global();
        let backing = ensure_eal(&mut g, engine).map_err(|m| cfg_err(id, format!("DPDK: {m}")))?;
        let (name, devargs) = resolve_devargs(&cfg.device, base_dir);
        let cname = CString::new(name.as_str())
            .map_err(|_| cfg_err(id, format!("device `{name}` contains NUL")))?;

        let mut port_id = 0u16;
        // SAFETY: a valid C string and a valid out pointer.
        let known = unsafe { ffi::rte_eth_dev_get_port_by_name(cname.as_ptr(), &mut port_id) } == 0;
        let mut plugged = None;
        if known {
            if devargs != name {
                return Err(cfg_err(
                    id,
                    format!(
                        "device `{name}` already exists in this process (another port or \
                         engine has it): give this one another name, for example `{name}x`"
                    ),
                ));
            }
        } else {
            let cargs = CString::new(devargs.as_str())
                .map_err(|_| cfg_err(id, format!("device `{devargs}` contains NUL")))?;
            // SAFETY: a valid C string; the EAL is up and we hold GLOBAL.
            let rc = unsafe { ffi::rte_dev_probe(cargs.as_ptr()) };
            if rc < 0 {
                return Err(cfg_err(
                    id,
                    format!(
                        "cannot probe device `{devargs}`: {} (a virtual device needs a known \
                         driver prefix such as net_null, net_ring, net_pcap, net_af_packet or \
                         net_af_xdp; a PCI device needs dpdk.pci = true)",
                        errno_text(rc)
                    ),
                ));
            }
            // SAFETY: as above.
            if unsafe { ffi::rte_eth_dev_get_port_by_name(cname.as_ptr(), &mut port_id) } != 0 {
                return Err(cfg_err(
                    id,
                    format!("device `{devargs}` was probed but is not an ethdev named `{name}`"),
                ));
            }
        }
        let mut info = ffi::rte_eth_dev_info::default();
        // SAFETY: a valid port id and out pointer.
        let rc = unsafe { ffi::rte_eth_dev_info_get(port_id, &mut info) };
        if rc != 0 {
            return Err(cfg_err(
                id,
                format!("{name}: rte_eth_dev_info_get: {}", errno_text(rc)),
            ));
        }
        if !known {
            plugged = NonNull::new(info.device);
        }
        let built = Self::configure(
            id, cfg, engine, &mut g, backing, &name, &devargs, port_id, &info, plugged,
        );
        match built {
            Ok(p) => Ok(p),
            Err((e, started)) => {
                release_device(port_id, plugged, started);
                Err(e)
            }
        }
    }

    /// The part of `new` after the device exists; on error also says whether it was started.
    #[allow(clippy::too_many_arguments)]
    fn configure(
        id: PortId,
        cfg: &DpdkPortConfig,
        engine: &EngineConfig,
        g: &mut Global,
        backing: Backing,
        name: &str,
        devargs: &str,
        port_id: u16,
        info: &ffi::rte_eth_dev_info,
        plugged: Option<NonNull<ffi::rte_device>>,
    ) -> Result<Arc<Dpdk>, (PortError, bool)> {
        let fail = |msg: String| (cfg_err(id, format!("{name}: {msg}")), false);
        // SAFETY: driver_name is a static NUL-terminated string of the driver (or null).
        let driver = unsafe {
            info.driver_name
                .as_ref()
                .map(|p| CStr::from_ptr(p).to_string_lossy().into_owned())
                .unwrap_or_default()
        };
        let q = cfg.queues;
        if q > info.max_rx_queues || q > info.max_tx_queues {
            return Err(fail(format!(
                "{q} queues asked, the device ({driver}) has at most {} RX and {} TX queues",
                info.max_rx_queues, info.max_tx_queues
            )));
        }
        let socket = match cfg.socket {
            Some(s) => s as i32,
            None => {
                // SAFETY: a valid port id; main-lcore lookups need only an initialised EAL.
                let s = unsafe { ffi::rte_eth_dev_socket_id(port_id) };
                if s >= 0 {
                    s
                } else {
                    // SAFETY: as above.
                    unsafe { ffi::rte_lcore_to_socket_id(ffi::rte_get_main_lcore()) as i32 }
                }
            }
        };
        let data_room = (engine.frame_size + ffi::RTE_PKTMBUF_HEADROOM) as u16;
        let mempool = Mempool::get(g, socket, data_room, &engine.dpdk, backing).map_err(fail)?;

        let mut conf = ffi::rte_eth_conf::default();
        if q > 1 && info.flow_type_rss_offloads != 0 {
            // Spread flows over the queues with every hash the device offers (with the
            // device's default key).
            conf.rxmode.mq_mode = ffi::RTE_ETH_MQ_RX_RSS;
            conf.rx_adv_conf.rss_conf.rss_hf = info.flow_type_rss_offloads;
        }
        // SAFETY: a valid port id and a zeroed (default) configuration.
        let rc = unsafe { ffi::rte_eth_dev_configure(port_id, q, q, &conf) };
        if rc != 0 {
            return Err(fail(format!("rte_eth_dev_configure: {}", errno_text(rc))));
        }
        let (mut nrx, mut ntx) = (cfg.rx_desc, cfg.tx_desc);
        // SAFETY: valid pointers to the descriptor counts.
        let rc = unsafe { ffi::rte_eth_dev_adjust_nb_rx_tx_desc(port_id, &mut nrx, &mut ntx) };
        if rc != 0 {
            return Err(fail(format!(
                "rte_eth_dev_adjust_nb_rx_tx_desc: {}",
                errno_text(rc)
            )));
        }
        for qi in 0..q {
            // SAFETY: a configured port, a queue below the configured count, default queue
            // configuration (null) and a live packet mempool.
            let rc = unsafe {
                ffi::rte_eth_rx_queue_setup(
                    port_id,
                    qi,
                    nrx,
                    socket as u32,
                    std::ptr::null(),
                    mempool.as_ptr(),
                )
            };
            if rc != 0 {
                return Err(fail(format!("RX queue {qi}: {}", errno_text(rc))));
            }
            // SAFETY: as above.
            let rc = unsafe {
                ffi::rte_eth_tx_queue_setup(port_id, qi, ntx, socket as u32, std::ptr::null())
            };
            if rc != 0 {
                return Err(fail(format!("TX queue {qi}: {}", errno_text(rc))));
            }
        }
        // SAFETY: a configured port with all its queues set up.
        let rc = unsafe { ffi::rte_eth_dev_start(port_id) };
        if rc != 0 {
            return Err(fail(format!("rte_eth_dev_start: {}", errno_text(rc))));
        }
        if cfg.promiscuous {
            // SAFETY: a started port. Devices without the notion answer -ENOTSUP: fine.
            let rc = unsafe { ffi::rte_eth_promiscuous_enable(port_id) };
            if rc != 0 && rc != -libc::ENOTSUP {
                tracing::warn!("{id}: {name}: promiscuous mode: {}", errno_text(rc));
            }
        }
        let pool = FramePool::from_source(
            PoolId(id.0),
            format!("{id}-{name}"),
            mempool.clone() as Arc<dyn FrameSource>,
        )
        .map_err(|e| (PortError::Pool(e), true))?;
        mempool.ports.fetch_add(1, Ordering::AcqRel);
        let input_packets = if driver == "net_pcap" {
            pcap_input_packets(devargs)
        } else {
            None
        };
        let description = format!(
            "{name} driver={driver} port={port_id} socket={socket} queues={q} desc={nrx}/{ntx} \
             mempool={} ({} mbufs of {} B, {})",
            mempool.name, mempool.size, mempool.data_room, backing
        );
        tracing::info!("{id}: DPDK {description}");
        Ok(Arc::new(Dpdk {
            shared: Arc::new(Shared {
                id,
                port_id,
                device: name.to_string(),
                driver,
                plugged,
                pool,
                mempool,
                counters: (0..q).map(|_| Padded::default()).collect(),
                owners: Ownership::new(id, q),
                max_len: (engine.frame_size as u16).saturating_sub(HEADROOM),
                input_packets,
                folded: Mutex::new(0),
                closed: Mutex::new(false),
                description,
            }),
        }))
    }

    /// The device's own counters (`rte_eth_stats_get`); `None` once the port is closed.
    pub fn eth_stats(&self) -> Option<EthStats> {
        self.shared.eth_stats()
    }

    /// DPDK's port id of the device.
    pub fn port_id(&self) -> u16 {
        self.shared.port_id
    }

    /// The driver's name (`net_null`, `net_pcap`, ...).
    pub fn driver(&self) -> &str {
        &self.shared.driver
    }

    /// The mempool the port's frames live in (shared with the other ports on its socket).
    pub fn mempool(&self) -> &Arc<Mempool> {
        &self.shared.mempool
    }
}

impl Shared {
    fn eth_stats(&self) -> Option<EthStats> {
        if *self.closed.lock().unwrap_or_else(|e| e.into_inner()) {
            return None;
        }
        let mut s = ffi::rte_eth_stats::default();
        // SAFETY: a valid, open port id and an out pointer.
        let rc = unsafe { ffi::rte_eth_stats_get(self.port_id, &mut s) };
        (rc == 0).then_some(EthStats {
            ipackets: s.ipackets,
            opackets: s.opackets,
            ibytes: s.ibytes,
            obytes: s.obytes,
            imissed: s.imissed,
            ierrors: s.ierrors,
            oerrors: s.oerrors,
            rx_nombuf: s.rx_nombuf,
        })
    }

    /// Folds frames the device dropped before we saw them into queue 0's counters. Only
    /// queue 0's owner (or close, when no queue is open) may call this.
    fn fold_device_drops(&self) {
        let Some(s) = self.eth_stats() else {
            return;
        };
        let now = s.imissed + s.rx_nombuf;
        let mut folded = self.folded.lock().unwrap_or_else(|e| e.into_inner());
        if now > *folded {
            let d = now - *folded;
            *folded = now;
            let c = &self.counters[0];
            c.rx_packets.add(d);
            c.drops.add(DropReason::NoBuffer, d);
        }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        let closed = *self.closed.get_mut().unwrap_or_else(|e| e.into_inner());
        if !closed && !EAL_CLOSED.load(Ordering::Acquire) {
            let _g = global();
            release_device(self.port_id, self.plugged, true);
            self.mempool.ports.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Port for Dpdk {
    fn id(&self) -> PortId {
        self.shared.id
    }

    fn kind(&self) -> &'static str {
        "dpdk"
    }

    fn queue_count(&self) -> u16 {
        self.shared.counters.len() as u16
    }

    fn pool(&self) -> &Arc<FramePool> {
        &self.shared.pool
    }

    fn open_queue(&self, queue: u16, burst: usize) -> Result<Box<dyn Queue>, PortError> {
        let id = self.shared.owners.take(queue)?;
        if *self.shared.closed.lock().unwrap_or_else(|e| e.into_inner()) {
            self.shared.owners.release(queue);
            return Err(cfg_err(self.shared.id, "the port is closed"));
        }
        let burst = burst.clamp(1, MAX_BURST);
        Ok(Box::new(DpdkQueue {
            id,
            port_id: self.shared.port_id,
            queue,
            mp: self.shared.mempool.as_ptr(),
            offset: self.shared.mempool.offset,
            max_len: self.shared.max_len,
            pool: self.shared.pool.clone(),
            shared: self.shared.clone(),
            mbufs: vec![std::ptr::null_mut(); burst],
            delta: 0,
            pool_id: self.shared.pool.id(),
            capacity: self.shared.pool.frame_size() as u16,
            meta: Meta {
                rx: id,
                ..Meta::default()
            },
            polls: 0,
        }))
    }

    fn counters(&self) -> &[Padded<QueueCounters>] {
        &self.shared.counters
    }

    fn describe(&self) -> String {
        self.shared.description.clone()
    }

    fn rx_finished(&self) -> bool {
        let Some(n) = self.shared.input_packets else {
            return false;
        };
        let seen: u64 = self
            .shared
            .counters
            .iter()
            .map(|c| c.rx_packets.get())
            .sum();
        let errors = self.shared.eth_stats().map_or(0, |s| s.ierrors);
        seen + errors >= n
    }

    fn close(&self) -> Result<(), PortError> {
        let sh = &self.shared;
        let _g = global();
        if *sh.closed.lock().unwrap_or_else(|e| e.into_inner()) {
            return Ok(());
        }
        if sh.owners.taken.iter().any(|t| t.load(Ordering::Acquire)) {
            return Err(cfg_err(sh.id, "close while a queue is still open"));
        }
        // SAFETY: a started port whose queues nobody polls any more (no handle is open).
        let rc = unsafe { ffi::rte_eth_dev_stop(sh.port_id) };
        if rc != 0 {
            tracing::warn!(
                "{}: {}: rte_eth_dev_stop: {}",
                sh.id,
                sh.device,
                errno_text(rc)
            );
        }
        sh.fold_device_drops();
        if let Some(s) = sh.eth_stats() {
            if s.ierrors + s.oerrors > 0 {
                tracing::warn!(
                    "{}: {}: device errors: {} on receive, {} on transmit",
                    sh.id,
                    sh.device,
                    s.ierrors,
                    s.oerrors
                );
            }
        }
        *sh.closed.lock().unwrap_or_else(|e| e.into_inner()) = true;
        // Closing releases the device's queues and every mbuf they held; removing a device
        // we plugged in also flushes its outputs (a net_pcap dumper).
        release_device(sh.port_id, sh.plugged, false);
        sh.pool.verify()?;
        if sh.mempool.ports.fetch_sub(1, Ordering::AcqRel) == 1 {
            let free = sh.mempool.available();
            if free != sh.mempool.size {
                return Err(cfg_err(
                    sh.id,
                    format!(
                        "mempool {}: {} of {} mbufs are not back after its last port closed",
                        sh.mempool.name,
                        sh.mempool.size - free,
                        sh.mempool.size
                    ),
                ));
            }
        }
        Ok(())
    }
}

struct DpdkQueue {
    id: QueueId,
    port_id: u16,
    queue: u16,
    mp: *mut ffi::rte_mempool,
    offset: usize,
    max_len: u16,
    pool: Arc<FramePool>,
    shared: Arc<Shared>,
    /// One burst of mbuf pointers, for both directions.
    mbufs: Vec<*mut ffi::rte_mbuf>,
    /// Frames made from device mbufs minus frames handed to the device; published to the
    /// pool's accounting when the handle is dropped.
    delta: i64,
    /// The pool's id and frame size, and the metadata of a received frame, read once.
    pool_id: PoolId,
    capacity: u16,
    meta: Meta,
    polls: u32,
}

// SAFETY: the raw pointers are the port's mempool (thread-safe) and scratch slots that only
// this handle uses; a queue handle is used by one thread at a time.
unsafe impl Send for DpdkQueue {}

impl DpdkQueue {
    /// An mbuf we cannot keep as a frame as it is: copied into a fresh mbuf of our mempool
    /// when it fits a frame, otherwise dropped (`oversize`). The original is freed either way.
    #[cold]
    fn adopt_foreign(&mut self, m: *mut ffi::rte_mbuf, len: u32) -> Option<crate::Frame> {
        let mut out = None;
        if len <= self.max_len as u32 {
            if let Some(mut f) = self.pool.alloc() {
                let mut data = vec![0u8; len as usize];
                // SAFETY: m is a valid mbuf the device handed us; rte_pktmbuf_read copies
                // `len` bytes (its packet length) across its segments into `data`.
                let p = unsafe { ffi::_rte_pktmbuf_read(m, 0, len, data.as_mut_ptr().cast()) };
                if !p.is_null() {
                    // SAFETY: p points to `len` readable bytes (into `data` or the mbuf).
                    let bytes = unsafe { std::slice::from_raw_parts(p.cast::<u8>(), len as usize) };
                    if f.try_fill(bytes) {
                        out = Some(f);
                    } else {
                        self.pool.free(f);
                    }
                } else {
                    self.pool.free(f);
                }
            }
        }
        // SAFETY: we own m (the device handed it over) and let go of it here.
        unsafe { ffi::_rte_pktmbuf_free(m) };
        out
    }
}

impl DpdkQueue {
    /// The careful receive path, for mbufs `from..n` of a burst, the first of which is not a
    /// plain single-segment mbuf of our mempool or is longer than a frame. They are counted
    /// as received already, but not their bytes; returns the frames delivered.
    #[cold]
    fn rx_mixed(&mut self, from: usize, n: usize, out: &mut Batch) -> usize {
        let (mut oversize, mut delivered, mut bytes) = (0u64, 0usize, 0u64);
        for i in from..n {
            let m = self.mbufs[i];
            // SAFETY: the device handed over n valid mbufs, now ours; these fields sit in
            // the mbuf's first cache line.
            let (buf, head, len, pkt_len, segs, pool, flags) = unsafe {
                let r = &*m;
                (
                    r.buf_addr, r.data_off, r.data_len, r.pkt_len, r.nb_segs, r.pool, r.ol_flags,
                )
            };
            bytes += u64::from(pkt_len);
            let plain = segs == 1
                && pool == self.mp
                && flags & (ffi::RTE_MBUF_F_EXTERNAL | ffi::RTE_MBUF_F_INDIRECT) == 0
                && buf.cast::<u8>() == m.cast::<u8>().wrapping_add(self.offset);
            let frame = if plain && len <= self.max_len {
                self.delta += 1;
                // SAFETY: a single-segment direct mbuf of our mempool: its buffer is one of
                // the source's buffers, owned by us now; data_off + data_len lie inside it.
                Some(unsafe {
                    Frame::from_source_buffer(
                        NonNull::new_unchecked(buf.cast()),
                        self.pool_id,
                        self.capacity,
                        head,
                        len,
                        self.meta,
                    )
                })
            } else if pkt_len > self.max_len as u32 {
                // SAFETY: ours to free.
                unsafe { ffi::_rte_pktmbuf_free(m) };
                None
            } else {
                self.adopt_foreign(m, pkt_len)
            };
            match frame {
                Some(f) => {
                    // Cannot fail: at most out.remaining() mbufs were received.
                    let _ = out.try_push(f);
                    delivered += 1;
                }
                None => oversize += 1,
            }
        }
        let c = &self.shared.counters[self.queue as usize];
        c.rx_bytes.add(bytes);
        if oversize > 0 {
            c.drops.add(DropReason::Oversize, oversize);
        }
        delivered
    }
}

impl Queue for DpdkQueue {
    fn id(&self) -> QueueId {
        self.id
    }

    fn rx_burst(&mut self, out: &mut Batch) -> usize {
        ensure_lcore();
        let want = out.remaining().min(self.mbufs.len());
        if want == 0 {
            return 0;
        }
        // SAFETY: a started port and queue we own exclusively; `mbufs` has room for `want`.
        let n = unsafe {
            ffi::_rte_eth_rx_burst(
                self.port_id,
                self.queue,
                self.mbufs.as_mut_ptr(),
                want as u16,
            )
        } as usize;
        if n == 0 {
            return 0;
        }
        // One pass over the burst's mbuf headers (the first cache line of each, which the
        // driver just wrote): every mbuf that is a plain single-segment mbuf of our mempool
        // and fits a frame becomes a frame as it is. The test is branch-free but for one
        // branch per mbuf, never taken in the common burst; the first other mbuf sends the
        // rest of the burst down the careful path.
        let (mp, offset, max_len) = (self.mp, self.offset, self.max_len);
        let (pool, capacity, rx) = (self.pool_id, self.capacity, self.id);
        let mut bytes = 0u64;
        let mut plain = 0;
        for &m in &self.mbufs[..n] {
            // SAFETY: the device handed over n valid mbufs, now ours.
            let r = unsafe { &*m };
            let odd = (u64::from(r.nb_segs) ^ 1)
                | (r.pool as usize ^ mp as usize) as u64
                | (r.ol_flags & (ffi::RTE_MBUF_F_EXTERNAL | ffi::RTE_MBUF_F_INDIRECT))
                | (r.buf_addr as usize ^ (m as usize).wrapping_add(offset)) as u64
                | u64::from(r.data_len > max_len);
            if odd != 0 {
                break;
            }
            bytes += u64::from(r.data_len);
            // SAFETY: checked just above: a single-segment direct mbuf of our mempool whose
            // buffer sits right behind it, so its buffer is one of the source's buffers,
            // owned by us now; data_off + data_len lie inside it (data_len <= max_len,
            // data_off within the headroom the driver keeps).
            let f = unsafe {
                Frame::from_source_buffer(
                    NonNull::new_unchecked(r.buf_addr.cast()),
                    pool,
                    capacity,
                    r.data_off,
                    r.data_len,
                    Meta {
                        rx,
                        ..Meta::default()
                    },
                )
            };
            // Cannot fail: at most out.remaining() mbufs were received.
            let _ = out.try_push(f);
            plain += 1;
        }
        self.delta += plain as i64;
        let c = &self.shared.counters[self.queue as usize];
        c.rx_packets.add(n as u64);
        c.rx_bytes.add(bytes);
        if plain < n {
            return plain + self.rx_mixed(plain, n, out);
        }
        n
    }

    fn tx_burst(&mut self, frames: &mut Batch) -> usize {
        ensure_lcore();
        let n = frames.len().min(self.mbufs.len());
        if n == 0 {
            return 0;
        }
        let offset = self.offset;
        let mut bytes = 0u64;
        for (slot, f) in self.mbufs.iter_mut().zip(&frames.as_slice()[..n]) {
            debug_assert_eq!(f.pool(), self.pool.id());
            let m = f
                .buffer()
                .as_ptr()
                .wrapping_sub(offset)
                .cast::<ffi::rte_mbuf>();
            let len = f.len() as u16;
            bytes += u64::from(len);
            // SAFETY: frames of this port's pool are buffers of our mempool's mbufs, each
            // right behind its mbuf header; the frame token makes the mbuf ours to write.
            // head + len fit the buffer (Frame invariant), so they fit the u16/u32 fields.
            unsafe {
                (*m).data_off = f.headroom() as u16;
                (*m).data_len = len;
                (*m).pkt_len = u32::from(len);
            }
            *slot = m;
        }
        // SAFETY: a started port and queue we own; the first n slots hold mbufs we own.
        let sent = unsafe {
            ffi::_rte_eth_tx_burst(self.port_id, self.queue, self.mbufs.as_mut_ptr(), n as u16)
        } as usize;
        if sent < n {
            bytes -= frames.as_slice()[sent..n]
                .iter()
                .map(|f| f.len() as u64)
                .sum::<u64>();
        }
        for f in frames.drain_front(sent) {
            // The device owns the mbuf now (and frees it to the mempool when done).
            let _ = f.into_buffer();
        }
        self.delta -= sent as i64;
        let c = &self.shared.counters[self.queue as usize];
        c.tx_packets.add(sent as u64);
        c.tx_bytes.add(bytes);
        sent
    }

    fn poll(&mut self) {
        if self.queue == 0 {
            self.polls = self.polls.wrapping_add(1);
            if self.polls & (FOLD_INTERVAL - 1) == 0 {
                self.shared.fold_device_drops();
            }
        }
    }
}

impl Drop for DpdkQueue {
    fn drop(&mut self) {
        self.pool.add_outstanding(std::mem::take(&mut self.delta));
        if self.queue == 0 {
            self.shared.fold_device_drops();
        }
        self.shared.owners.release(self.queue);
    }
}
