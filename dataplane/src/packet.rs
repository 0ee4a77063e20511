//! Identifiers and per-packet metadata shared by ports, workers and handlers.

use std::fmt;

use crate::wire::Layout;

/// Index of a port in the engine's port table; prints as `p0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct PortId(pub u16);

impl fmt::Display for PortId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "p{}", self.0)
    }
}

/// One queue of one port; prints as `p0:q1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct QueueId {
    pub port: PortId,
    pub queue: u16,
}

impl QueueId {
    pub const fn new(port: u16, queue: u16) -> QueueId {
        QueueId {
            port: PortId(port),
            queue,
        }
    }
}

impl fmt::Display for QueueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:q{}", self.port, self.queue)
    }
}

/// Error parsing a [`QueueId`] or [`PortId`] from text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a queue: expected pN:qM (for example p0:q1) or pN for queue 0")]
pub struct ParseIdError(pub String);

impl std::str::FromStr for PortId {
    type Err = ParseIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.strip_prefix('p')
            .and_then(|n| n.parse().ok())
            .map(PortId)
            .ok_or_else(|| ParseIdError(s.to_string()))
    }
}

impl std::str::FromStr for QueueId {
    type Err = ParseIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseIdError(s.to_string());
        match s.split_once(':') {
            None => Ok(QueueId {
                port: s.parse().map_err(|_| err())?,
                queue: 0,
            }),
            Some((p, q)) => Ok(QueueId {
                port: p.parse().map_err(|_| err())?,
                queue: q
                    .strip_prefix('q')
                    .and_then(|n| n.parse().ok())
                    .ok_or_else(err)?,
            }),
        }
    }
}

/// Index of a worker; prints as `w0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct WorkerId(pub u16);

impl fmt::Display for WorkerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "w{}", self.0)
    }
}

/// A CPU core number; prints as `core3`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct CoreId(pub u32);

impl fmt::Display for CoreId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "core{}", self.0)
    }
}

/// Ids serialize as their printed form (`p0`, `p0:q1`, `w2`, `core3`).
macro_rules! serialize_as_display {
    ($($t:ty),*) => {$(
        impl serde::Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
    )*};
}
serialize_as_display!(PortId, QueueId, WorkerId, CoreId);

/// Metadata carried with every frame.
#[derive(Debug, Clone, Copy, Default)]
pub struct Meta {
    /// Queue the packet was received on.
    pub rx: QueueId,
    /// Receive timestamp in nanoseconds (capture time for pcap ports, so that outputs are
    /// deterministic; `CLOCK_MONOTONIC` for live ports).
    pub ts_ns: u64,
    /// Flow hash (symmetric over the 5-tuple), used to spread packets over workers. Set by
    /// the receiving worker in pipeline mode only (0 otherwise: run-to-completion needs no
    /// hash, and handlers that want one compute their own with `wire::flow_hash`).
    pub hash: u32,
    /// Header offsets found by the receive-side parse.
    pub layout: Layout,
    /// Set when a frame travels over a ring only to be transmitted by the worker that owns
    /// this queue (pipeline mode); `None` when the receiving worker must run the pipeline.
    pub tx: Option<QueueId>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_print_and_parse() {
        let q = QueueId::new(0, 1);
        assert_eq!(q.to_string(), "p0:q1");
        assert_eq!("p0:q1".parse::<QueueId>().unwrap(), q);
        assert_eq!("p3".parse::<QueueId>().unwrap(), QueueId::new(3, 0));
        assert!("x0:q1".parse::<QueueId>().is_err());
        assert!("p0:1".parse::<QueueId>().is_err());
        assert!("p0:q".parse::<QueueId>().is_err());
        assert_eq!(WorkerId(2).to_string(), "w2");
        assert_eq!(CoreId(3).to_string(), "core3");
    }
}
