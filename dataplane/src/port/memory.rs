//! `port::Memory`: an in-process port over rings, with an optional traffic generator.
//!
//! Each queue has a receive side and a transmit side:
//! - receive from a ring that tests fill with [`Memory::inject`], or from a generator that
//!   stamps packet templates into fresh frames as fast as the worker asks (for benches),
//!   optionally stopping after a fixed number of packets;
//! - transmit into a ring that tests read with [`Memory::drain_tx`], or into a sink that
//!   frees the frames at once (for benches).
//!
//! This is the cheapest port there is, so it is also the baseline that shows what the
//! engine itself costs per packet.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use crate::batch::Batch;
use crate::mem::{Cache, FramePool, Options, PoolId};
use crate::packet::{PortId, QueueId};
use crate::port::{Ownership, Port, PortError, Queue};
use crate::ring::Burst;
use crate::stats::{Padded, QueueCounters};

/// Where a memory queue's received packets come from.
#[derive(Debug, Clone)]
pub enum Source {
    /// Frames injected with [`Memory::inject`].
    Ring,
    /// Copies of these templates, round robin, `limit` packets per queue (None: forever).
    Generate {
        templates: Vec<Vec<u8>>,
        limit: Option<u64>,
    },
}

/// Where a memory queue's transmitted packets go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sink {
    /// Kept in a ring for [`Memory::drain_tx`]; a full ring refuses frames (`tx_full`).
    Ring,
    /// Freed at once.
    Discard,
}

/// Settings of a memory port.
#[derive(Debug, Clone)]
pub struct MemoryOptions {
    pub queues: u16,
    pub frames: u32,
    pub frame_size: u32,
    pub memory: Options,
    pub source: Source,
    pub sink: Sink,
    /// Capacity of each queue's rx and tx ring.
    pub ring_size: usize,
}

impl Default for MemoryOptions {
    fn default() -> Self {
        MemoryOptions {
            queues: 1,
            frames: 4096,
            frame_size: 2048,
            memory: Options::default(),
            source: Source::Ring,
            sink: Sink::Ring,
            ring_size: 1024,
        }
    }
}

struct QueueRings {
    rx: Burst,
    tx: Burst,
    generated: AtomicU64,
}

/// An in-process port.
pub struct Memory {
    shared: Arc<Shared>,
}

struct Shared {
    id: PortId,
    pool: Arc<FramePool>,
    opts: MemoryOptions,
    rings: Vec<QueueRings>,
    counters: Vec<Padded<QueueCounters>>,
    owners: Ownership,
    input_closed: AtomicBool,
}

impl std::fmt::Debug for Memory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Memory")
            .field("id", &self.shared.id)
            .field("queues", &self.shared.opts.queues)
            .finish()
    }
}

impl Memory {
    /// Creates the port and its pool (pool id = port id).
    pub fn new(id: PortId, opts: MemoryOptions) -> Result<Arc<Memory>, PortError> {
        if opts.queues == 0 {
            return Err(PortError::Config {
                port: id,
                msg: "queues must be at least 1".into(),
            });
        }
        if let Source::Generate { templates, .. } = &opts.source {
            if templates.is_empty() {
                return Err(PortError::Config {
                    port: id,
                    msg: "the generator needs at least one template".into(),
                });
            }
            let room = opts.frame_size as usize - crate::mem::HEADROOM as usize;
            if let Some(t) = templates.iter().find(|t| t.len() > room) {
                return Err(PortError::Config {
                    port: id,
                    msg: format!(
                        "a {}-byte template does not fit a {}-byte frame",
                        t.len(),
                        opts.frame_size
                    ),
                });
            }
        }
        let pool = FramePool::new(
            PoolId(id.0),
            id.to_string(),
            opts.frames,
            opts.frame_size,
            opts.memory,
        )?;
        let rings = (0..opts.queues)
            .map(|_| QueueRings {
                rx: Burst::new(opts.ring_size),
                tx: Burst::new(opts.ring_size),
                generated: AtomicU64::new(0),
            })
            .collect();
        Ok(Arc::new(Memory {
            shared: Arc::new(Shared {
                id,
                pool,
                rings,
                counters: (0..opts.queues).map(|_| Padded::default()).collect(),
                owners: Ownership::new(id, opts.queues),
                input_closed: AtomicBool::new(false),
                opts,
            }),
        }))
    }

    /// Puts a copy of `bytes` on queue `queue`'s receive ring. False when the pool or the
    /// ring is full, or the bytes do not fit a frame.
    pub fn inject(&self, queue: u16, bytes: &[u8]) -> bool {
        let Some(r) = self.shared.rings.get(queue as usize) else {
            return false;
        };
        let Some(mut f) = self.shared.pool.alloc() else {
            return false;
        };
        if !f.try_fill(bytes) {
            self.shared.pool.free(f);
            return false;
        }
        match r.rx.push(f) {
            Ok(()) => true,
            Err(f) => {
                self.shared.pool.free(f);
                false
            }
        }
    }

    /// Declares that nothing more will be injected, so [`Port::rx_finished`] can turn true
    /// once the rings are empty.
    pub fn close_input(&self) {
        self.shared.input_closed.store(true, Ordering::Release);
    }

    /// Takes every transmitted frame of `queue` off its ring, calls `f` with its bytes and
    /// frees it. Returns how many.
    pub fn drain_tx(&self, queue: u16, mut f: impl FnMut(&[u8])) -> usize {
        let Some(r) = self.shared.rings.get(queue as usize) else {
            return 0;
        };
        let mut n = 0;
        while let Some(frame) = r.tx.pop() {
            f(frame.data());
            self.shared.pool.free(frame);
            n += 1;
        }
        n
    }

    /// Frees everything still waiting on the receive rings (for a clean shutdown of a port
    /// whose queues were never polled). Returns how many.
    pub fn discard_pending(&self) -> usize {
        let mut n = 0;
        for r in &self.shared.rings {
            while let Some(f) = r.rx.pop() {
                self.shared.pool.free(f);
                n += 1;
            }
        }
        n
    }
}

impl Port for Memory {
    fn id(&self) -> PortId {
        self.shared.id
    }

    fn kind(&self) -> &'static str {
        "memory"
    }

    fn queue_count(&self) -> u16 {
        self.shared.opts.queues
    }

    fn pool(&self) -> &Arc<FramePool> {
        &self.shared.pool
    }

    fn open_queue(&self, queue: u16, burst: usize) -> Result<Box<dyn Queue>, PortError> {
        let id = self.shared.owners.take(queue)?;
        Ok(Box::new(MemoryQueue {
            id,
            port: self.shared.clone(),
            cache: Cache::new(self.shared.pool.clone(), burst),
            next_template: 0,
        }))
    }

    fn counters(&self) -> &[Padded<QueueCounters>] {
        &self.shared.counters
    }

    fn rx_finished(&self) -> bool {
        match &self.shared.opts.source {
            Source::Ring => {
                self.shared.input_closed.load(Ordering::Acquire)
                    && self.shared.rings.iter().all(|r| r.rx.is_empty())
            }
            Source::Generate { limit, .. } => match limit {
                None => false,
                Some(l) => self
                    .shared
                    .rings
                    .iter()
                    .all(|r| r.generated.load(Ordering::Relaxed) >= *l),
            },
        }
    }

    fn close(&self) -> Result<(), PortError> {
        self.discard_pending();
        for q in 0..self.shared.opts.queues {
            self.drain_tx(q, |_| {});
        }
        self.shared.pool.verify()?;
        Ok(())
    }
}

struct MemoryQueue {
    id: QueueId,
    port: Arc<Shared>,
    cache: Cache,
    next_template: usize,
}

impl Queue for MemoryQueue {
    fn id(&self) -> QueueId {
        self.id
    }

    fn rx_burst(&mut self, out: &mut Batch) -> usize {
        let port = &*self.port;
        let q = self.id.queue as usize;
        let ring = &port.rings[q];
        let counters = &port.counters[q];
        let n = match &port.opts.source {
            Source::Ring => ring.rx.pop_burst(out),
            Source::Generate { templates, limit } => {
                let generated = ring.generated.load(Ordering::Relaxed);
                let mut want = out.remaining() as u64;
                if let Some(l) = limit {
                    want = want.min(l.saturating_sub(generated));
                }
                let mut n = 0;
                while n < want {
                    let Some(mut f) = self.cache.alloc() else {
                        break;
                    };
                    let t = &templates[self.next_template];
                    self.next_template = (self.next_template + 1) % templates.len();
                    // Cannot fail: template sizes were checked against the frame size.
                    let _ = f.try_fill(t);
                    let _ = out.try_push(f);
                    n += 1;
                }
                ring.generated.store(generated + n, Ordering::Relaxed);
                n as usize
            }
        };
        let start = out.len() - n;
        let mut bytes = 0;
        for f in &mut out.as_mut_slice()[start..] {
            f.meta.rx = self.id;
            bytes += f.len() as u64;
        }
        counters.rx_packets.add(n as u64);
        counters.rx_bytes.add(bytes);
        n
    }

    fn tx_burst(&mut self, frames: &mut Batch) -> usize {
        let port = &*self.port;
        let q = self.id.queue as usize;
        let counters = &port.counters[q];
        let mut n = 0;
        let mut bytes = 0;
        match port.opts.sink {
            Sink::Discard => {
                for f in frames.drain() {
                    bytes += f.len() as u64;
                    self.cache.free(f);
                    n += 1;
                }
            }
            Sink::Ring => {
                // This queue is the ring's only producer, so the room seen here can only grow
                // while we push (a reader may pop concurrently).
                let ring = &port.rings[q].tx;
                let room = ring.capacity() - ring.len();
                for f in frames.drain_front(room) {
                    bytes += f.len() as u64;
                    if let Err(f) = ring.push(f) {
                        // Unreachable with one producer; still, never lose a frame silently.
                        counters.drops.add(crate::pipeline::DropReason::TxFull, 1);
                        self.cache.free(f);
                        continue;
                    }
                    n += 1;
                }
            }
        }
        counters.tx_packets.add(n as u64);
        counters.tx_bytes.add(bytes);
        n
    }
}

impl Drop for MemoryQueue {
    fn drop(&mut self) {
        self.cache.flush();
        self.port.owners.release(self.id.queue);
    }
}
