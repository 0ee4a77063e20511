//! The `Port` abstraction: a device with queues that receive and transmit bursts of frames.
//!
//! A port is shared (`Send + Sync`) but each of its queues is owned by exactly one worker at
//! a time: [`Port::open_queue`] hands out an exclusive [`Queue`] handle, and dropping the
//! handle gives the queue back (this is how queues move between workers at a batch
//! boundary). Every backend is one implementation of these two traits: `memory` and `pcap`
//! here, AF_XDP and DPDK in their own modules.
//!
//! Counters live with the port, one padded block per queue, written by the queue's current
//! owner only.

use std::sync::Arc;

use crate::batch::Batch;
use crate::mem::FramePool;
use crate::packet::{PortId, QueueId};
use crate::stats::{Padded, QueueCounters, QueueSnapshot};

pub mod afxdp;
#[cfg(feature = "dpdk")]
pub mod dpdk;
pub mod memory;
pub mod pcap;

pub use memory::Memory;
pub use pcap::Pcap;

/// Errors from setting up or using a port outside the hot path.
#[derive(Debug, thiserror::Error)]
pub enum PortError {
    #[error("{port}: queue {queue} does not exist (the port has {count} queues)")]
    NoSuchQueue {
        port: PortId,
        queue: u16,
        count: u16,
    },
    #[error("{0}: queue is already owned by a worker")]
    QueueBusy(QueueId),
    #[error("{port}: {path}: {source}")]
    Io {
        port: PortId,
        path: String,
        source: std::io::Error,
    },
    #[error("{port}: {path}: not a readable pcap or pcapng file: {reason}")]
    Capture {
        port: PortId,
        path: String,
        reason: String,
    },
    #[error("{port}: {msg}")]
    Config { port: PortId, msg: String },
    #[error(transparent)]
    Pool(#[from] crate::mem::PoolError),
    #[error(transparent)]
    Leak(#[from] crate::mem::LeakError),
}

/// A network device (or a stand-in for one) with one or more queues.
pub trait Port: Send + Sync {
    /// The port's index.
    fn id(&self) -> PortId;

    /// Backend name (`memory`, `pcap`, `afxdp`, `dpdk`).
    fn kind(&self) -> &'static str;

    /// Number of queues.
    fn queue_count(&self) -> u16;

    /// The pool that holds this port's frames.
    fn pool(&self) -> &Arc<FramePool>;

    /// Takes exclusive ownership of a queue. `burst` is the most frames one call moves.
    fn open_queue(&self, queue: u16, burst: usize) -> Result<Box<dyn Queue>, PortError>;

    /// One line saying how the port runs (interface, copy or zero-copy, page size...), for
    /// logs and reports. Default: empty.
    fn describe(&self) -> String {
        String::new()
    }

    /// Per-queue counters, indexed by queue number.
    fn counters(&self) -> &[Padded<QueueCounters>];

    /// True once the port will never receive another frame (a finite input such as a
    /// capture file has been read to the end). Live ports return false.
    fn rx_finished(&self) -> bool {
        false
    }

    /// Flushes outputs and releases the port's resources. Called once, after every queue
    /// handle has been dropped.
    fn close(&self) -> Result<(), PortError> {
        Ok(())
    }

    /// Sum of the queue counters.
    fn stats(&self) -> QueueSnapshot {
        let mut s = QueueSnapshot::default();
        for q in self.counters() {
            s.add(&q.snapshot());
        }
        s
    }
}

/// One queue of a port, owned by one worker.
pub trait Queue: Send {
    /// Which queue this is.
    fn id(&self) -> QueueId;

    /// Receives up to `out.remaining()` frames into `out`; returns how many were added.
    fn rx_burst(&mut self, out: &mut Batch) -> usize;

    /// Transmits frames from the front of `frames`, removing those the queue accepted
    /// (ownership passes to the port); returns how many. Frames left in the batch were not
    /// accepted (queue full) and remain the caller's.
    ///
    /// Frames must belong to this port's pool; the worker copies others first.
    fn tx_burst(&mut self, frames: &mut Batch) -> usize;

    /// Housekeeping that must happen every loop even without traffic (completion rings,
    /// buffered output). Default: nothing.
    fn poll(&mut self) {}
}

/// Tracks which queues of a port have an owner. Shared by the backends.
#[derive(Debug)]
pub(crate) struct Ownership {
    port: PortId,
    taken: Vec<std::sync::atomic::AtomicBool>,
}

impl Ownership {
    pub(crate) fn new(port: PortId, queues: u16) -> Ownership {
        Ownership {
            port,
            taken: (0..queues)
                .map(|_| std::sync::atomic::AtomicBool::new(false))
                .collect(),
        }
    }

    pub(crate) fn take(&self, queue: u16) -> Result<QueueId, PortError> {
        use std::sync::atomic::Ordering;
        let slot = self
            .taken
            .get(queue as usize)
            .ok_or(PortError::NoSuchQueue {
                port: self.port,
                queue,
                count: self.taken.len() as u16,
            })?;
        let id = QueueId {
            port: self.port,
            queue,
        };
        if slot.swap(true, Ordering::AcqRel) {
            return Err(PortError::QueueBusy(id));
        }
        Ok(id)
    }

    pub(crate) fn release(&self, queue: u16) {
        if let Some(s) = self.taken.get(queue as usize) {
            s.store(false, std::sync::atomic::Ordering::Release);
        }
    }
}
