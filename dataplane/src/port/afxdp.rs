//! `port::Afxdp`: AF_XDP sockets (xsk-rs) on a network interface, steered by our XDP program.
//!
//! Shape:
//! - **One UMEM per port**, shared by the port's sockets (one socket per queue, each with its
//!   own fill and completion ring). The UMEM is mapped by xsk-rs on 2 MiB hugepages when it
//!   can (4k pages and one warning otherwise), with the thread's memory policy set to the
//!   interface's NUMA node while it is mapped and registered, so the kernel pins its pages
//!   there. The UMEM is then wrapped in an ordinary [`FramePool`] (external memory), so AF_XDP
//!   frames are the same move-only `Frame` tokens as everywhere else and a reply is the
//!   received frame itself: no copy between RX and TX.
//! - **Frame ownership across the kernel boundary**: a frame given to the fill or TX ring
//!   stops being a `Frame` (its token is consumed) and is counted as kernel-held by the
//!   socket; it becomes a `Frame` again when it comes back on the RX or completion ring. At
//!   close, after the sockets are gone, every kernel-held frame is reclaimed and the count
//!   must match exactly: free + in flight + kernel-held == total.
//! - **Fill ring kept topped up** every receive call; `FillQueue::produce` is all-or-nothing,
//!   so frames allocated for it that did not fit are kept for the next call, not freed.
//!   The completion ring is reaped on every loop turn (`Queue::poll`) and before each TX.
//! - **Wake-ups only when the kernel asks** (`XDP_USE_NEED_WAKEUP`): `poll(2)` on the fill
//!   side, `sendto(2)` on the TX side, each only when the ring's flag is set.
//! - **Zero-copy first**: bind with `XDP_ZEROCOPY`; on `EOPNOTSUPP` (veth, most virtual
//!   devices) bind again in copy mode. The mode is logged and reported by [`Port::describe`].
//!   A bind that finds the queue busy (`EBUSY`, for example a previous instance still being
//!   torn down) is retried with exponential back-off.
//! - **Steering**: our XDP program (crate `xdp`) is attached (native, falling back to generic),
//!   replacing a stale copy left by a crashed run, loaded with the configured rules, and every
//!   socket is registered in its XSKMAP. libxdp is told not to load its own program.

use std::io;
use std::num::NonZeroU32;
use std::os::fd::AsRawFd;
use std::ptr::NonNull;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use xsk_rs::config::{
    BindFlags, FrameSize, Interface, LibxdpFlags, QueueSize, SocketConfig, UmemConfig,
};
use xsk_rs::{CompQueue, FillQueue, FrameDesc, RxQueue, TxQueue, Umem};

use crate::batch::Batch;
use crate::config::{AfxdpPortConfig, EngineConfig, XdpMode, ZeroCopy};
use crate::mem::{Backing, Cache, FramePool, PoolId};
use crate::packet::{PortId, QueueId};
use crate::port::{Ownership, Port, PortError, Queue};
use crate::stats::{Padded, QueueCounters};

/// `XDP_PACKET_HEADROOM`: where the kernel puts received data in each chunk (aligned mode,
/// no user headroom), and so where we transmit from.
const XDP_HEADROOM: u16 = 256;

/// How often, and how long at most, a busy bind is retried.
const BIND_RETRIES: u32 = 8;

/// The sockets of one queue.
struct Socket {
    tx: TxQueue,
    rx: RxQueue,
    fq: FillQueue,
    cq: CompQueue,
    /// Frames the kernel holds for this socket (fill + RX + TX + completion rings).
    in_kernel: u64,
    /// Frames handed to the TX ring whose completion has not been reaped yet.
    tx_outstanding: u64,
    /// Frames allocated for the fill ring that did not fit yet.
    fill_pending: Vec<FrameDesc>,
    /// The kernel's drop counters (`XDP_STATISTICS`) as last folded into ours.
    seen_ring_full: u64,
    seen_dropped: u64,
}

struct Shared {
    id: PortId,
    ifname: String,
    pool: Arc<FramePool>,
    umem: Umem,
    /// Descriptor of every frame (xsk-rs only hands out descriptors it made).
    descs: Vec<FrameDesc>,
    sockets: Mutex<Vec<Option<Socket>>>,
    steering: Mutex<Option<xdp::Steering>>,
    counters: Vec<Padded<QueueCounters>>,
    owners: Ownership,
    frame_size: u32,
    ring_size: u32,
    description: String,
}

/// An AF_XDP port.
pub struct Afxdp {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Afxdp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Afxdp")
            .field("id", &self.shared.id)
            .field("interface", &self.shared.ifname)
            .finish()
    }
}

fn cfg_err(port: PortId, msg: impl Into<String>) -> PortError {
    PortError::Config {
        port,
        msg: msg.into(),
    }
}

/// NUMA node of an interface's device, from sysfs (`-1` or absent: none).
pub fn interface_numa_node(ifname: &str) -> Option<u32> {
    std::fs::read_to_string(format!("/sys/class/net/{ifname}/device/numa_node"))
        .ok()
        .and_then(|s| s.trim().parse::<i64>().ok())
        .and_then(|n| u32::try_from(n).ok())
}

/// Sets the calling thread's memory policy to prefer `node` until dropped.
struct MemPolicy(bool);

impl MemPolicy {
    fn prefer(node: Option<u32>) -> MemPolicy {
        const MPOL_PREFERRED: libc::c_int = 1;
        let Some(node) = node.filter(|n| *n < 64) else {
            return MemPolicy(false);
        };
        let mask: libc::c_ulong = 1 << node;
        // SAFETY: set_mempolicy(2) with a one-word node mask that outlives the call.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_set_mempolicy,
                MPOL_PREFERRED,
                &mask as *const libc::c_ulong,
                65 as libc::c_ulong,
            )
        };
        if rc != 0 {
            tracing::warn!(
                "cannot prefer NUMA node {node} for the UMEM: {}",
                io::Error::last_os_error()
            );
        }
        MemPolicy(rc == 0)
    }
}

impl Drop for MemPolicy {
    fn drop(&mut self) {
        if self.0 {
            // SAFETY: MPOL_DEFAULT (0) with no mask restores the default policy.
            unsafe {
                libc::syscall(
                    libc::SYS_set_mempolicy,
                    0 as libc::c_int,
                    std::ptr::null::<libc::c_ulong>(),
                    0 as libc::c_ulong,
                )
            };
        }
    }
}

fn os_error(e: &(dyn std::error::Error + 'static)) -> Option<i32> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<io::Error>() {
            return io.raw_os_error();
        }
        cur = err.source();
    }
    None
}

impl Afxdp {
    /// Maps the UMEM, attaches the steering program, binds one socket per queue and
    /// registers them. Everything is undone if any step fails.
    pub fn new(
        id: PortId,
        cfg: &AfxdpPortConfig,
        engine: &EngineConfig,
    ) -> Result<Arc<Afxdp>, PortError> {
        if engine.frame_size != 2048 && engine.frame_size != 4096 {
            return Err(cfg_err(
                id,
                format!(
                    "AF_XDP needs engine.frame_size 2048 or 4096 (a UMEM chunk), not {}",
                    engine.frame_size
                ),
            ));
        }
        let rules = cfg
            .rules
            .iter()
            .map(|r| r.parse::<xdp::Rule>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| cfg_err(id, format!("rules: {e}")))?;
        let ring = QueueSize::new(cfg.ring_size).map_err(|_| {
            cfg_err(
                id,
                format!("ring_size {} is not a power of two", cfg.ring_size),
            )
        })?;
        let umem_cfg = UmemConfig::builder()
            .frame_size(
                FrameSize::new(engine.frame_size)
                    .map_err(|_| cfg_err(id, "frame_size is not a valid UMEM chunk size"))?,
            )
            .fill_queue_size(ring)
            .comp_queue_size(ring)
            .frame_headroom(0)
            .build()
            .map_err(|e| cfg_err(id, format!("UMEM config: {e}")))?;
        let frames =
            NonZeroU32::new(cfg.frames).ok_or_else(|| cfg_err(id, "frames must be > 0"))?;
        let node = cfg
            .numa_node
            .or_else(|| interface_numa_node(&cfg.interface));

        let (umem, descs, backing) = {
            let _policy = MemPolicy::prefer(node);
            match Umem::new(umem_cfg, frames, engine.hugepages) {
                Ok((u, d)) => (
                    u,
                    d,
                    if engine.hugepages {
                        Backing::Huge
                    } else {
                        Backing::Normal
                    },
                ),
                Err(e) if engine.hugepages => {
                    tracing::warn!(
                        "{id}: UMEM on hugepages failed ({e}); using 4k pages \
                         (reserve some with: echo 256 > /proc/sys/vm/nr_hugepages)"
                    );
                    let (u, d) = Umem::new(umem_cfg, frames, false)
                        .map_err(|e| cfg_err(id, format!("cannot create the UMEM: {e}")))?;
                    (u, d, Backing::Normal)
                }
                Err(e) => return Err(cfg_err(id, format!("cannot create the UMEM: {e}"))),
            }
        };
        // The UMEM's base: a descriptor's data pointer minus its offset.
        // SAFETY: descs[0] is a descriptor of this UMEM that nobody else uses yet.
        let first = unsafe { umem.data(&descs[0]) };
        let base = first.contents().as_ptr().wrapping_sub(descs[0].addr()) as *mut u8;
        let base = NonNull::new(base).ok_or_else(|| cfg_err(id, "UMEM base is null"))?;
        for (i, d) in descs.iter().enumerate() {
            if d.addr() != i * engine.frame_size as usize + XDP_HEADROOM as usize {
                return Err(cfg_err(
                    id,
                    "unexpected UMEM frame layout (unaligned mode?)",
                ));
            }
        }
        // SAFETY: `base` is the start of the UMEM xsk-rs mapped for `frames` chunks of
        // `frame_size`; the Umem value (kept as the pool's owner and in `Shared`) keeps it
        // mapped; frames are only touched through pool tokens or by the kernel while it
        // holds them on a ring.
        let pool = unsafe {
            FramePool::from_external(
                PoolId(id.0),
                format!("{id} ({})", cfg.interface),
                base,
                cfg.frames,
                engine.frame_size,
                backing,
                Box::new(umem.clone()),
            )?
        };

        let mut steering = xdp::Steering::attach(
            &cfg.interface,
            match cfg.xdp_mode {
                XdpMode::Auto => xdp::Mode::Auto,
                XdpMode::Native => xdp::Mode::Native,
                XdpMode::Generic => xdp::Mode::Generic,
            },
        )
        .map_err(|e| cfg_err(id, format!("{}: XDP program: {e}", cfg.interface)))?;
        steering
            .set_rules(&rules)
            .map_err(|e| cfg_err(id, format!("rules: {e}")))?;

        let ifname: Interface = cfg
            .interface
            .parse()
            .map_err(|_| cfg_err(id, format!("`{}` is not an interface name", cfg.interface)))?;
        let mut sockets = Vec::with_capacity(cfg.queues as usize);
        let mut zero_copy = None;
        for q in 0..cfg.queues as u32 {
            let (mut s, zc) = bind(id, &umem, &ifname, &cfg.interface, q, ring, cfg.zero_copy)?;
            zero_copy.get_or_insert(zc);
            // Fill the fill ring before the socket is registered for redirects: a frame
            // redirected to a socket with an empty fill ring is dropped by the kernel.
            prefill(&mut s, &pool, &descs, engine.frame_size, cfg.ring_size);
            steering
                .register_xsk(q, s.rx.fd().as_raw_fd())
                .map_err(|e| cfg_err(id, format!("{}: queue {q}: {e}", cfg.interface)))?;
            sockets.push(Some(s));
        }
        let description = format!(
            "{} {} xdp={} umem={} ({} frames){}",
            cfg.interface,
            if zero_copy == Some(true) {
                "zero-copy"
            } else {
                "copy-mode"
            },
            steering
                .mode()
                .map(|m| format!("{m:?}").to_lowercase())
                .unwrap_or_default(),
            backing,
            cfg.frames,
            node.map(|n| format!(" numa{n}")).unwrap_or_default()
        );
        tracing::info!("{id}: AF_XDP on {description}");
        Ok(Arc::new(Afxdp {
            shared: Arc::new(Shared {
                id,
                ifname: cfg.interface.clone(),
                pool,
                umem,
                descs,
                sockets: Mutex::new(sockets),
                steering: Mutex::new(Some(steering)),
                counters: (0..cfg.queues).map(|_| Padded::default()).collect(),
                owners: Ownership::new(id, cfg.queues),
                frame_size: engine.frame_size,
                ring_size: cfg.ring_size,
                description,
            }),
        }))
    }

    /// Per-rule hit counters of the steering program.
    pub fn rule_hits(&self) -> Vec<u64> {
        self.shared
            .steering
            .lock()
            .ok()
            .and_then(|s| s.as_ref().and_then(|s| s.rule_hits().ok()))
            .unwrap_or_default()
    }
}

/// Gives the kernel a full fill ring (straight from the pool: no queue handle exists yet).
fn prefill(s: &mut Socket, pool: &FramePool, descs: &[FrameDesc], frame_size: u32, ring: u32) {
    while s.fill_pending.len() < ring as usize {
        let Some(f) = pool.alloc() else {
            break;
        };
        let (index, _, _) = f.into_raw();
        debug_assert_eq!(
            descs[index as usize].addr(),
            index as usize * frame_size as usize + XDP_HEADROOM as usize
        );
        s.fill_pending.push(descs[index as usize]);
    }
    let free = s.fq.nb_free(ring) as usize;
    let n = s.fill_pending.len().min(free);
    // SAFETY: frames of this UMEM whose tokens were consumed above; nobody else has them.
    let produced = unsafe { s.fq.produce(&s.fill_pending[..n]) };
    s.fill_pending.drain(..produced);
    s.in_kernel += produced as u64;
}

/// `XDP_MAX_TX_SKB_BUDGET` (linux/if_xdp.h, Linux 6.17): the most descriptors one
/// `sendto(2)` turns into skbs in copy mode (default 32).
const XDP_MAX_TX_SKB_BUDGET: libc::c_int = 9;

/// Lets one kick of a copy-mode socket transmit up to a whole TX ring instead of the
/// kernel's default 32 descriptors, so a loop turn that queued several bursts needs one
/// `sendto(2)`, not one per 32 frames. Older kernels (ENOPROTOOPT) keep their default.
fn raise_tx_budget(fd: std::os::fd::RawFd, ring: u32) {
    let budget = ring as libc::c_int;
    // SAFETY: setsockopt(2) on our own socket with a c_int option value that outlives the
    // call; the kernel copies the value and clamps it to the TX ring size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_XDP,
            XDP_MAX_TX_SKB_BUDGET,
            (&budget as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        tracing::debug!(
            "XDP_MAX_TX_SKB_BUDGET not set ({}): the kernel's default TX budget applies",
            io::Error::last_os_error()
        );
    }
}

/// Binds one socket: zero-copy first (unless told otherwise), copy mode on EOPNOTSUPP,
/// retrying on EBUSY. Returns the socket and whether it is zero-copy.
fn bind(
    id: PortId,
    umem: &Umem,
    ifname: &Interface,
    name: &str,
    queue: u32,
    ring: QueueSize,
    policy: ZeroCopy,
) -> Result<(Socket, bool), PortError> {
    let attempts: &[(BindFlags, bool)] = match policy {
        ZeroCopy::Auto => &[
            (BindFlags::XDP_ZEROCOPY, true),
            (BindFlags::XDP_COPY, false),
        ],
        ZeroCopy::On => &[(BindFlags::XDP_ZEROCOPY, true)],
        ZeroCopy::Off => &[(BindFlags::XDP_COPY, false)],
    };
    let mut last = String::new();
    for &(mode, zc) in attempts {
        let config = SocketConfig::builder()
            .rx_queue_size(ring)
            .tx_queue_size(ring)
            .libxdp_flags(LibxdpFlags::XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD)
            .bind_flags(mode | BindFlags::XDP_USE_NEED_WAKEUP)
            .build();
        let mut delay = Duration::from_millis(10);
        for attempt in 0..=BIND_RETRIES {
            // SAFETY: INHIBIT_PROG_LOAD is set (required when sharing the UMEM); each
            // (interface, queue) pair is bound once per port.
            match unsafe { xsk_rs::Socket::new(config, umem, ifname, queue) } {
                Ok((tx, rx, Some((fq, cq)))) => {
                    if !zc {
                        raise_tx_budget(rx.fd().as_raw_fd(), ring.get());
                    }
                    return Ok((
                        Socket {
                            tx,
                            rx,
                            fq,
                            cq,
                            in_kernel: 0,
                            tx_outstanding: 0,
                            fill_pending: Vec::new(),
                            seen_ring_full: 0,
                            seen_dropped: 0,
                        },
                        zc,
                    ));
                }
                Ok((_, _, None)) => {
                    return Err(cfg_err(
                        id,
                        format!("{name}: queue {queue}: no fill/completion ring (bound twice?)"),
                    ))
                }
                Err(e) => {
                    let errno = os_error(&e);
                    last = format!(
                        "{e}: {}",
                        errno
                            .map(|n| io::Error::from_raw_os_error(n).to_string())
                            .unwrap_or_default()
                    );
                    if errno == Some(libc::EBUSY) && attempt < BIND_RETRIES {
                        tracing::warn!("{id}: {name} queue {queue} busy, retrying in {delay:?}");
                        std::thread::sleep(delay);
                        delay *= 2;
                        continue;
                    }
                    if zc && errno == Some(libc::EOPNOTSUPP) && policy == ZeroCopy::Auto {
                        tracing::info!(
                            "{id}: {name} queue {queue}: zero-copy refused (EOPNOTSUPP), using copy mode"
                        );
                    }
                    break;
                }
            }
        }
    }
    Err(cfg_err(
        id,
        format!("{name}: cannot bind an AF_XDP socket to queue {queue}: {last}"),
    ))
}

impl Port for Afxdp {
    fn id(&self) -> PortId {
        self.shared.id
    }

    fn kind(&self) -> &'static str {
        "afxdp"
    }

    fn queue_count(&self) -> u16 {
        self.shared.counters.len() as u16
    }

    fn pool(&self) -> &Arc<FramePool> {
        &self.shared.pool
    }

    fn open_queue(&self, queue: u16, burst: usize) -> Result<Box<dyn Queue>, PortError> {
        let id = self.shared.owners.take(queue)?;
        let socket = self
            .shared
            .sockets
            .lock()
            .ok()
            .and_then(|mut s| s.get_mut(queue as usize).and_then(Option::take));
        let Some(socket) = socket else {
            self.shared.owners.release(queue);
            return Err(PortError::QueueBusy(id));
        };
        let burst = burst.max(1);
        Ok(Box::new(AfxdpQueue {
            id,
            shared: self.shared.clone(),
            socket: Some(socket),
            cache: Cache::new(self.shared.pool.clone(), burst),
            scratch: vec![FrameDesc::default(); burst.max(64)],
            tx_descs: Vec::with_capacity(burst),
            polls: 0,
        }))
    }

    fn counters(&self) -> &[Padded<QueueCounters>] {
        &self.shared.counters
    }

    fn describe(&self) -> String {
        self.shared.description.clone()
    }

    fn close(&self) -> Result<(), PortError> {
        let sh = &self.shared;
        let Ok(mut sockets) = sh.sockets.lock() else {
            return Err(cfg_err(sh.id, "socket table poisoned"));
        };
        if sockets.iter().any(Option::is_none) {
            return Err(cfg_err(sh.id, "close while a queue is still open"));
        }
        if let Ok(mut steering) = sh.steering.lock() {
            if let Some(mut s) = steering.take() {
                if let Err(e) = s.detach() {
                    tracing::warn!("{}: detaching the XDP program: {e}", sh.id);
                }
            }
        }
        let mut in_kernel = 0;
        for s in sockets.iter_mut() {
            if let Some(mut s) = s.take() {
                in_kernel += s.in_kernel;
                for d in s.fill_pending.drain(..) {
                    let index = (d.addr() / sh.frame_size as usize) as u32;
                    // SAFETY: pending fill frames were allocated from this pool and never
                    // given to the kernel.
                    unsafe { sh.pool.release_raw(index) };
                }
                // Dropping the queues closes the socket; the kernel lets go of its rings.
                drop(s);
            }
        }
        // Every frame not on the free list now was held by the kernel: take them all back.
        let free = sh.pool.drain_free();
        let total = sh.pool.total();
        let out = total as u64 - free.len() as u64;
        for i in 0..total {
            // SAFETY: the sockets are closed, no queue handle is open and no Frame of this
            // pool exists (the engine stops workers before closing ports), so every index
            // is unowned; pushing all of them back rebuilds the free list exactly.
            unsafe { sh.pool.release_raw(i) };
        }
        if out != in_kernel {
            return Err(cfg_err(
                sh.id,
                format!(
                    "frame accounting: {out} frames were out at close but the sockets held {in_kernel}"
                ),
            ));
        }
        sh.pool.verify()?;
        Ok(())
    }
}

struct AfxdpQueue {
    id: QueueId,
    shared: Arc<Shared>,
    socket: Option<Socket>,
    cache: Cache,
    scratch: Vec<FrameDesc>,
    tx_descs: Vec<FrameDesc>,
    polls: u32,
}

/// Loop turns between two reads of the kernel's socket statistics (a getsockopt(2)).
const FOLD_INTERVAL: u32 = 4096;

impl AfxdpQueue {
    /// Folds the frames the kernel dropped before our RX ring (`XDP_STATISTICS`) into the
    /// queue's counters: received, and dropped as `rx_ring_full` (the ring was full) or
    /// `no_buffer` (no frame on the fill ring, or another kernel-side drop). So the port's
    /// counters keep `received == transmitted + dropped + in flight` with the kernel's
    /// drops included, as the DPDK port does with `imissed`.
    fn fold_kernel_drops(&mut self) {
        let Some(s) = self.socket.as_mut() else {
            return;
        };
        let Ok(st) = s.rx.fd().xdp_statistics() else {
            return;
        };
        let full = st.rx_ring_full().saturating_sub(s.seen_ring_full);
        let dropped = st.rx_dropped().saturating_sub(s.seen_dropped);
        s.seen_ring_full = st.rx_ring_full();
        s.seen_dropped = st.rx_dropped();
        if full + dropped > 0 {
            let c = &self.shared.counters[self.id.queue as usize];
            c.rx_packets.add(full + dropped);
            c.drops.add(crate::DropReason::RxRingFull, full);
            c.drops.add(crate::DropReason::NoBuffer, dropped);
        }
    }

    /// Takes completed TX frames back into the cache.
    fn reap(&mut self) {
        let Some(s) = self.socket.as_mut() else {
            return;
        };
        let fs = self.shared.frame_size as usize;
        loop {
            // SAFETY: the descriptors come back from our own completion ring.
            let n = unsafe { s.cq.consume(&mut self.scratch) };
            if n == 0 {
                break;
            }
            s.in_kernel -= n as u64;
            s.tx_outstanding -= n as u64;
            for d in &self.scratch[..n] {
                let index = (d.addr() / fs) as u32;
                // SAFETY: the kernel handed this frame back; no token for it exists.
                let f = unsafe { self.shared.pool.frame_from_raw(index, XDP_HEADROOM, 0) };
                self.cache.free(f);
            }
            if n < self.scratch.len() {
                break;
            }
        }
    }

    /// Tops the fill ring up; frames that did not fit are kept for next time.
    fn refill(&mut self) {
        let Some(s) = self.socket.as_mut() else {
            return;
        };
        let free = s.fq.nb_free(self.shared.ring_size) as usize;
        if free == 0 {
            return;
        }
        while s.fill_pending.len() < free {
            let Some(f) = self.cache.alloc() else {
                break;
            };
            let (index, _, _) = f.into_raw();
            s.fill_pending.push(self.shared.descs[index as usize]);
        }
        let n = s.fill_pending.len().min(free);
        if n == 0 {
            return;
        }
        // SAFETY: these frames are ours (tokens consumed above) and belong to this UMEM.
        let produced = unsafe { s.fq.produce(&s.fill_pending[..n]) };
        if produced > 0 {
            s.fill_pending.drain(..produced);
            s.in_kernel += produced as u64;
        }
        if s.fq.needs_wakeup() {
            let _ = s.fq.wakeup(s.rx.fd_mut(), 0);
        }
    }
}

impl Queue for AfxdpQueue {
    fn id(&self) -> QueueId {
        self.id
    }

    fn rx_burst(&mut self, out: &mut Batch) -> usize {
        self.refill();
        let want = out.remaining().min(self.scratch.len());
        let Some(s) = self.socket.as_mut() else {
            return 0;
        };
        // SAFETY: descriptors from our RX ring; each frame is then owned by us.
        let n = unsafe { s.rx.consume(&mut self.scratch[..want]) };
        if n == 0 {
            return 0;
        }
        s.in_kernel -= n as u64;
        let fs = self.shared.frame_size as usize;
        let counters = &self.shared.counters[self.id.queue as usize];
        let mut bytes = 0;
        for d in &self.scratch[..n] {
            let index = (d.addr() / fs) as u32;
            let head = (d.addr() % fs) as u16;
            let len = d.lengths().data() as u16;
            bytes += len as u64;
            // SAFETY: the kernel handed this frame back on the RX ring; head + len lie in
            // the chunk (the kernel never writes past it).
            let mut f = unsafe { self.shared.pool.frame_from_raw(index, head, len) };
            f.meta = Default::default();
            f.meta.rx = self.id;
            // Cannot fail: at most out.remaining() descriptors were consumed.
            let _ = out.try_push(f);
        }
        counters.rx_packets.add(n as u64);
        counters.rx_bytes.add(bytes);
        n
    }

    fn tx_burst(&mut self, frames: &mut Batch) -> usize {
        self.reap();
        let Some(s) = self.socket.as_mut() else {
            return 0;
        };
        let room = s.tx.nb_free(frames.len() as u32) as usize;
        let n = room.min(frames.len());
        if n == 0 {
            if s.tx.needs_wakeup() {
                let _ = s.tx.wakeup();
            }
            return 0;
        }
        // xsk-rs descriptors start at the XDP headroom, so a packet must fit there; one
        // that does not (grown at the front past the chunk) stops the burst and stays with
        // the caller, who counts it.
        let room_after_headroom = self.shared.frame_size as usize - XDP_HEADROOM as usize;
        let n = frames.as_slice()[..n]
            .iter()
            .position(|f| f.len() > room_after_headroom)
            .unwrap_or(n);
        self.tx_descs.clear();
        let mut bytes = 0;
        for mut f in frames.drain_front(n) {
            // Move the packet to the headroom if a handler changed its start
            // (encapsulation); one copy, only then. Cannot fail: length checked above.
            let _ = f.try_move_to(XDP_HEADROOM);
            let len = f.len();
            let (index, _, _) = f.into_raw();
            let mut d = self.shared.descs[index as usize];
            // SAFETY: `d` describes frame `index` of this UMEM, which we own (token consumed
            // above); set_pos only records the length, it copies nothing.
            unsafe { self.shared.umem.data_mut(&mut d) }
                .cursor()
                .set_pos(len);
            bytes += len as u64;
            self.tx_descs.push(d);
        }
        // SAFETY: frames of this UMEM that we own; the ring has room for all of them
        // (nb_free above), so produce takes them all.
        let produced = unsafe { s.tx.produce(&self.tx_descs) };
        debug_assert_eq!(produced, self.tx_descs.len());
        s.in_kernel += produced as u64;
        s.tx_outstanding += produced as u64;
        if s.tx.needs_wakeup() {
            let _ = s.tx.wakeup();
        }
        let counters = &self.shared.counters[self.id.queue as usize];
        counters.tx_packets.add(n as u64);
        counters.tx_bytes.add(bytes);
        n
    }

    fn poll(&mut self) {
        self.reap();
        self.polls = self.polls.wrapping_add(1);
        if self.polls.is_multiple_of(FOLD_INTERVAL) {
            self.fold_kernel_drops();
        }
        // In copy mode one sendto(2) moves at most 32 descriptors (the kernel's TX batch),
        // and may stop early when the device is busy: while frames wait on the TX ring and
        // the kernel asks for a kick, kick again, or a request/response flow would stall
        // until the next transmit.
        if let Some(s) = self.socket.as_mut() {
            if s.tx_outstanding > 0 && s.tx.needs_wakeup() {
                let _ = s.tx.wakeup();
            }
        }
    }
}

impl Drop for AfxdpQueue {
    fn drop(&mut self) {
        self.reap();
        self.fold_kernel_drops();
        if let Some(s) = self.socket.take() {
            if let Ok(mut sockets) = self.shared.sockets.lock() {
                sockets[self.id.queue as usize] = Some(s);
            }
        }
        self.cache.flush();
        self.shared.owners.release(self.id.queue);
    }
}
