//! `kv`: a key-value cache speaking memcached's UDP protocol, written as a user's own
//! handler would be: only against `dataplane`'s public handler API (`Handler`, `Emit`,
//! `Verdict`, the wire views, `mem::Region`), registered with
//! `dataplane::handlers::ext::register` so that configs can say `[[handlers]] kind = "kv"`.
//!
//! # Design
//!
//! **Key ownership (MICA).** The key space is split into one partition per handler core
//! (`workers = [...]`); partition `p` is owned by one worker, and only that worker ever
//! touches it, so the data path takes no lock. A request may arrive on any core (the NIC or
//! veth spreads flows, not keys): the receiving core hashes the key and, if another core
//! owns it, forwards the request frame through the engine's rings (`Verdict::Forward`);
//! the owner runs it and answers with `Verdict::Tx(rx queue)`, which the engine routes back
//! to the core that owns the transmit queue. Multi-key gets and multi-command datagrams
//! visit the owners in turn (`exec`). Rejected: one shared table with locks or optimistic
//! reads (MICA's CREW mode) — cross-core cache-line traffic on every request, and unsafe
//! racy reads of item bytes; client-side partitioning (memcached clients do not know our
//! cores).
//!
//! **Storage** (`store`): per partition, a circular log of items in a hugepage region with
//! a fixed byte budget, a cache-line-bucketed index, CLOCK eviction (referenced items get a
//! second chance at the log's tail), per-item TTL, memcached's item size limit.
//!
//! **Protocol** (`proto`, `exec`): memcached 1.6's ASCII commands and error lines, byte for
//! byte where the differential test against a real `memcached -U` can tell (version
//! string, stats values and CAS uniques aside), with its UDP framing: an 8-byte header on
//! every datagram, each answer message split into numbered datagrams of at most 1400 bytes.
//!
//! Deliberate differences from memcached 1.6.18, all about its UDP connection state, which
//! is shared by every client and carries half-read requests from one datagram to the next:
//! - a request with a datagram count other than 1 is answered `SERVER_ERROR multi-packet
//!   request not supported` (memcached's source means to send this line, 1.6.18 drops it);
//! - a storage command whose data block does not fit in its datagram is answered
//!   `CLIENT_ERROR bad data chunk` (memcached waits and reads the next datagram, from any
//!   client, as its data);
//! - `stats` subcommands other than `settings`, `reset` and `detail`, meta commands other
//!   than `mn` (`mg`, `ms`, ...), `slabs`, `lru`, `lru_crawler` and `watch` are answered
//!   `ERROR` (not implemented); `cache_memlimit` sets the budget as in memcached.
//!
//! **Engine hooks** this crate needed, both generic: `handlers::ext::register` (external
//! handler kinds) and `pipeline::Emit` (a handler may answer one packet with several; the
//! engine counts them as `generated`), plus the drop reason `consumed` for requests that
//! get no answer (`noreply`).
//!
//! **Requests over the MTU** arrive as IPv4 fragments; `frag` reassembles them on the key's
//! owner (steer with a rule without a port so the later fragments reach AF_XDP).
//!
//! **Live settings**: `memory_mb` and `flush` through a chain update keep the store (see
//! `spec`); counters per core appear in `ctl stats`, the gRPC `Stats` API, the run report
//! and memcached's `stats`.

pub mod cache;
pub mod exec;
pub mod frag;
pub mod handler;
pub mod proto;
pub mod spec;
pub mod stats;
pub mod store;
pub mod wire;

pub use cache::Store;
pub use handler::Kv;
pub use spec::{KvExt, KvSpec};

/// The handler kind, as configs spell it.
pub const KIND: &str = "kv";

/// Makes `[[handlers]] kind = "kv"` available to every config, chain update and replay
/// case parsed from now on. Idempotent.
pub fn register() {
    // Cannot fail: "kv" is a valid name and not a built-in kind.
    let _ = dataplane::handlers::ext::register(KIND, spec::parse);
}
