//! Per-worker counters of the cache: single writer (the worker), any number of readers.
//!
//! Each worker has one cache-line-padded block, written with relaxed load + store (no locked
//! instruction on the data path, as `dataplane::stats`). Key operations run on the core that
//! owns the key's partition, so a partition's hits, misses, evictions, items and bytes are
//! its owner's row. `stats reset` (memcached's command) cannot write other workers' blocks,
//! so it records a baseline that readers subtract.

use std::sync::atomic::{AtomicU64, Ordering};

/// One counter with a single writer.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.store(
            self.0.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }

    #[inline]
    pub fn inc(&self) {
        self.add(1);
    }

    /// For gauges (items, bytes): the owner sets the value.
    #[inline]
    pub fn set(&self, v: u64) {
        self.0.store(v, Ordering::Relaxed);
    }

    #[inline]
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

macro_rules! counters {
    ($( $(#[$doc:meta])* $name:ident ),* $(,)?) => {
        /// The counters of one worker.
        #[derive(Debug, Default)]
        pub struct Counters {
            $( $(#[$doc])* pub $name: Counter, )*
        }

        impl Counters {
            /// Every counter's name, in display order.
            pub const NAMES: &'static [&'static str] = &[$(stringify!($name)),*];

            /// Values in [`Counters::NAMES`] order.
            pub fn values(&self) -> Vec<u64> {
                vec![$(self.$name.get()),*]
            }
        }
    };
}

counters! {
    /// Gets (`get`, `gets`, `gat`, `gats`) that found the key, one per key.
    hits,
    /// Gets that did not (absent, expired or flushed).
    misses,
    /// Live items removed to make room (budget or index full).
    evictions,
    /// Items in the partition this worker owns (gauge).
    items,
    /// Bytes those items take in the log, headers included (gauge).
    bytes,
    /// The partition's byte budget (gauge; 0 on workers without a partition).
    budget,
    /// Request datagrams this worker answered or consumed.
    requests,
    /// Request datagrams this worker handed to the owner of a key.
    forwarded,
    /// Response datagrams sent (all messages).
    datagrams,
    /// Error lines sent (`ERROR`, `CLIENT_ERROR ...`, `SERVER_ERROR ...`).
    errors,
    /// Expired items found and removed (on access or when the log reached them).
    expired,
    /// Keys looked up by gets, hits and misses together (memcached's `cmd_get`).
    cmd_get,
    /// Storage commands carried out (memcached's `cmd_set`).
    cmd_set,
    /// `flush_all` commands (and control-plane flushes) this worker took.
    cmd_flush,
    /// `touch` and `gat` keys.
    cmd_touch,
    touch_hits,
    touch_misses,
    delete_hits,
    delete_misses,
    incr_hits,
    incr_misses,
    decr_hits,
    decr_misses,
    cas_hits,
    cas_misses,
    cas_badval,
    /// Items stored over the partition's life (memcached's `total_items`).
    total_items,
    /// Referenced items the CLOCK hand moved to the log's tail instead of evicting.
    second_chances,
    /// Requests dropped for a bad UDP checksum.
    bad_checksum,
    /// Response parts replaced by an out-of-memory error (no frame or room left).
    out_of_frames,
    /// Requests that arrived in IPv4 fragments and were reassembled here.
    frag_reassembled,
    /// Fragmented requests given up (over 16 KiB, or a bad checksum once complete).
    frag_dropped,
}

/// Index of `name` in [`Counters::NAMES`].
pub fn index_of(name: &str) -> Option<usize> {
    Counters::NAMES.iter().position(|n| *n == name)
}

/// Gauges are not reset by `stats reset`.
pub fn is_gauge(name: &str) -> bool {
    matches!(name, "items" | "bytes" | "budget")
}
