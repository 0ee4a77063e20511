//! Handlers, verdicts and the per-worker handler chain.
//!
//! Handlers are batch-oriented (one virtual call per burst, not per packet) and decide one
//! [`Verdict`] per packet. A chain runs its handlers in order; each handler only looks at the
//! packets still marked [`Verdict::Next`], so the first handler that claims a packet decides
//! its fate. Whatever is still `Next` at the end of the chain is dropped as
//! [`DropReason::Unhandled`]. Verdicts are plain values (no `Result` per packet); drops are
//! counted by reason by the worker.
//!
//! A handler whose answer takes more than one packet (a memcached reply split over several
//! datagrams) implements [`Handler::process_emit`] and adds frames through [`Emit`]: they
//! come from the per-worker frame caches (no allocation, no lock), each with its verdict,
//! and the worker carries them out after the burst's own verdicts and counts them as
//! `generated`, so that conservation reads `received + generated == transmitted + dropped +
//! slow path + in flight`. Rejected: letting handlers hold frames across bursts or own a
//! pool (frames would escape the engine's accounting), and a second kind of verdict that
//! names several frames (every existing handler and the dispatch loop would change).

use std::fmt;

use crate::mem::{Cache, Frame};
use crate::packet::{QueueId, WorkerId};

/// Why a packet was dropped. Every drop in the data plane has exactly one reason, and every
/// reason has its own counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum DropReason {
    /// Shorter than an Ethernet header.
    Runt,
    /// A header (802.1Q, ARP, IPv4, IPv6, UDP, TCP, ICMP) is cut short by the end of the frame.
    Truncated,
    /// IPv4 header length below 5 words.
    BadIhl,
    /// A length field (IPv4 total length, IPv6 payload length, UDP length) disagrees with
    /// the frame: larger than the bytes present, or smaller than the header.
    BadLength,
    /// IP version field does not match the ethertype.
    BadVersion,
    /// IPv4 header checksum wrong.
    BadChecksum,
    /// Frame larger than the port's frame size (dropped on receive).
    Oversize,
    /// No handler claimed the packet.
    Unhandled,
    /// A handler decided to drop it (policy, for example ARP for an address we do not own).
    Filtered,
    /// The ring to another worker was full.
    RingFull,
    /// The transmit queue did not accept it.
    TxFull,
    /// The verdict named a queue no worker transmits on.
    NoRoute,
    /// No frame left in the destination port's pool for a cross-port copy.
    NoBuffer,
    /// The slow path queue was full.
    SlowPathFull,
    /// `lb`: IPv4 packet with options (IHL != 5), outer or embedded in an ICMP error (Katran
    /// does not balance them).
    LbIpOptions,
    /// `lb`: IPv4 fragment or IPv6 fragment header (no reassembly, so no ports to hash).
    LbFragment,
    /// `lb`: frame to a VIP larger than 1514 bytes (plus a VLAN tag): encapsulated it would
    /// exceed the next hop's MTU.
    LbTooBig,
    /// `lb`: the VIP has no real to send the packet to (empty ring, no usable entry).
    LbNoReal,
    /// `lb`: not enough headroom in the frame for the outer header.
    LbNoHeadroom,
    /// A handler consumed the packet and has nothing to send back (a memcached request
    /// with `noreply`, a datagram memcached ignores).
    Consumed,
    /// The port's receive ring was full: the kernel dropped the frame before a worker took
    /// it (AF_XDP: the socket's RX ring; read from the kernel's socket statistics and
    /// folded into the port's counters). The worker is behind the offered load.
    RxRingFull,
}

impl DropReason {
    /// Every reason, in counter order.
    pub const ALL: [DropReason; 21] = [
        DropReason::Runt,
        DropReason::Truncated,
        DropReason::BadIhl,
        DropReason::BadLength,
        DropReason::BadVersion,
        DropReason::BadChecksum,
        DropReason::Oversize,
        DropReason::Unhandled,
        DropReason::Filtered,
        DropReason::RingFull,
        DropReason::TxFull,
        DropReason::NoRoute,
        DropReason::NoBuffer,
        DropReason::SlowPathFull,
        DropReason::LbIpOptions,
        DropReason::LbFragment,
        DropReason::LbTooBig,
        DropReason::LbNoReal,
        DropReason::LbNoHeadroom,
        DropReason::Consumed,
        DropReason::RxRingFull,
    ];
    /// Number of reasons (size of counter arrays).
    pub const COUNT: usize = Self::ALL.len();

    /// The counter's name, as printed in stats and written in `counters.toml`.
    pub const fn as_str(self) -> &'static str {
        match self {
            DropReason::Runt => "runt",
            DropReason::Truncated => "truncated",
            DropReason::BadIhl => "bad_ihl",
            DropReason::BadLength => "bad_length",
            DropReason::BadVersion => "bad_version",
            DropReason::BadChecksum => "bad_checksum",
            DropReason::Oversize => "oversize",
            DropReason::Unhandled => "unhandled",
            DropReason::Filtered => "filtered",
            DropReason::RingFull => "ring_full",
            DropReason::TxFull => "tx_full",
            DropReason::NoRoute => "no_route",
            DropReason::NoBuffer => "no_buffer",
            DropReason::SlowPathFull => "slow_path_full",
            DropReason::LbIpOptions => "lb_ip_options",
            DropReason::LbFragment => "lb_fragment",
            DropReason::LbTooBig => "lb_too_big",
            DropReason::LbNoReal => "lb_no_real",
            DropReason::LbNoHeadroom => "lb_no_headroom",
            DropReason::Consumed => "consumed",
            DropReason::RxRingFull => "rx_ring_full",
        }
    }

    /// Index into counter arrays.
    #[inline]
    pub const fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for DropReason {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DropReason::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("unknown drop reason `{s}`"))
    }
}

/// What happens to one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Verdict {
    /// Not decided yet: the next handler in the chain looks at it.
    #[default]
    Next,
    /// Transmit on this port queue (the worker that owns it sends it).
    Tx(QueueId),
    /// Hand to another worker's ring, which runs its own chain on it.
    Forward(WorkerId),
    /// Drop and count.
    Drop(DropReason),
    /// Give to the slow path (control thread / kernel exception path).
    SlowPath,
}

impl Verdict {
    /// Send the packet back out of the queue it arrived on.
    #[inline]
    pub fn reply(frame: &Frame) -> Verdict {
        Verdict::Tx(frame.meta.rx)
    }
}

/// What a handler may know about where it runs.
#[derive(Debug, Clone, Copy)]
pub struct Context {
    /// The worker running the chain.
    pub worker: WorkerId,
    /// Number of workers in the engine (for spreading by hash).
    pub workers: u16,
    /// Time at the start of the burst, nanoseconds on the engine clock, give or take a few
    /// loop turns: a worker reads the clock at most once per turn and reuses the reading
    /// for a few consecutive busy turns (never across an idle one), so it lags by
    /// microseconds under load. Never decreases; fine for expiry and ageing, not for timing
    /// one packet.
    pub now_ns: u64,
}

/// A packet handler. Implementations must be cheap per packet: no allocation, no lock, no
/// syscall and no logging in `process`.
pub trait Handler: Send {
    /// Short name for stats and logs.
    fn name(&self) -> &str;

    /// Decides verdicts for the packets whose verdict is [`Verdict::Next`]; leaves the others
    /// untouched. `frames` and `verdicts` have the same length.
    fn process(&mut self, frames: &mut [Frame], verdicts: &mut [Verdict], cx: &Context);

    /// Whether this handler reads [`Meta::layout`](crate::Meta) or relies on the
    /// receive-side parse having dropped malformed frames (the default). A worker whose whole
    /// chain answers false skips that parse: its handlers then see frames exactly as the
    /// port delivered them, of any length (shorter than an Ethernet header included) and
    /// with any header contents, `meta.layout` left at its default. Such a handler checks
    /// what it reads itself and drops what it cannot handle with a reason (`runt` for a
    /// frame too short for it), never panics.
    fn needs_layout(&self) -> bool {
        true
    }

    /// As [`Handler::process`], for handlers that may answer one packet with several: extra
    /// frames come from `emit` (see [`Emit`]). The worker calls this one; the default
    /// ignores `emit`.
    fn process_emit(
        &mut self,
        frames: &mut [Frame],
        verdicts: &mut [Verdict],
        cx: &Context,
        emit: &mut Emit<'_>,
    ) {
        let _ = emit;
        self.process(frames, verdicts, cx);
    }
}

/// Frames a handler adds to a burst, with their verdicts (see the module docs).
///
/// [`Emit::alloc`] reserves room and takes a frame from the pool of the packet it answers
/// (so it can leave where that packet leaves without a copy); the frame must then be given
/// to [`Emit::push`] or back to [`Emit::free`]. Room is fixed per burst: when it runs out,
/// `alloc` says `None` and the handler answers in fewer packets (an error line).
pub struct Emit<'a> {
    caches: &'a mut [Cache],
    out: &'a mut Vec<(Frame, Verdict)>,
    reserved: usize,
}

impl<'a> Emit<'a> {
    /// Frames come from `caches` (indexed by pool id) and go to `out`, whose capacity is
    /// the room: `out` never grows.
    pub fn new(caches: &'a mut [Cache], out: &'a mut Vec<(Frame, Verdict)>) -> Emit<'a> {
        Emit {
            caches,
            out,
            reserved: 0,
        }
    }

    /// Frames that can still be allocated and pushed this burst.
    #[inline]
    pub fn room(&self) -> usize {
        self.out.capacity() - self.out.len() - self.reserved
    }

    /// An empty frame (default headroom, length 0) from the pool `like` belongs to, with
    /// `like`'s metadata. `None` when the room or the pool is exhausted.
    #[inline]
    pub fn alloc(&mut self, like: &Frame) -> Option<Frame> {
        if self.room() == 0 {
            return None;
        }
        let mut f = self.caches.get_mut(like.pool().0 as usize)?.alloc()?;
        f.meta = like.meta;
        self.reserved += 1;
        Some(f)
    }

    /// Adds a frame from [`Emit::alloc`] with its verdict (never [`Verdict::Next`], which
    /// is carried out as `unhandled`).
    #[inline]
    pub fn push(&mut self, frame: Frame, verdict: Verdict) {
        self.reserved = self.reserved.saturating_sub(1);
        if self.out.len() < self.out.capacity() {
            self.out.push((frame, verdict));
        } else {
            // Only reachable for a frame that did not come from `alloc`: free, not leak.
            self.free(frame);
        }
    }

    /// Gives back a frame from [`Emit::alloc`] that is not needed after all.
    #[inline]
    pub fn free(&mut self, frame: Frame) {
        self.reserved = self.reserved.saturating_sub(1);
        if let Some(c) = self.caches.get_mut(frame.pool().0 as usize) {
            c.free(frame);
        } else {
            // A frame of a pool this worker has no cache for cannot come from `alloc`; it
            // shows up in that pool's leak accounting.
            let _unreturned = frame;
        }
    }

    /// Frames pushed so far.
    pub fn len(&self) -> usize {
        self.out.len()
    }

    /// True when nothing was pushed.
    pub fn is_empty(&self) -> bool {
        self.out.is_empty()
    }
}

/// An ordered chain of handlers, one per worker.
pub struct Pipeline {
    handlers: Vec<Box<dyn Handler>>,
    /// Some handler needs the receive-side parse ([`Handler::needs_layout`]).
    needs_layout: bool,
}

impl fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.handlers.iter().map(|h| h.name()))
            .finish()
    }
}

impl Default for Pipeline {
    /// The empty chain: every packet is dropped, as `unhandled` or by what the parse found.
    fn default() -> Pipeline {
        Pipeline::new(Vec::new())
    }
}

impl Pipeline {
    /// A chain running `handlers` in order.
    pub fn new(handlers: Vec<Box<dyn Handler>>) -> Pipeline {
        let mut p = Pipeline {
            handlers,
            needs_layout: true,
        };
        p.needs_layout = p.layout_needed();
        p
    }

    /// Appends a handler.
    pub fn push(&mut self, handler: Box<dyn Handler>) {
        self.handlers.push(handler);
        self.needs_layout = self.layout_needed();
    }

    fn layout_needed(&self) -> bool {
        self.handlers.is_empty() || self.handlers.iter().any(|h| h.needs_layout())
    }

    /// True unless every handler of the chain declares that it needs no receive-side parse
    /// ([`Handler::needs_layout`]). The empty chain keeps the parse, so that its drops still
    /// say what was wrong with a malformed frame.
    #[inline]
    pub fn needs_layout(&self) -> bool {
        self.needs_layout
    }

    /// Handler names, in order.
    pub fn names(&self) -> Vec<String> {
        self.handlers.iter().map(|h| h.name().to_string()).collect()
    }

    /// Runs the chain: every entry of `verdicts` must be `Next` on entry; on return none is.
    pub fn run(&mut self, frames: &mut [Frame], verdicts: &mut [Verdict], cx: &Context) {
        debug_assert_eq!(frames.len(), verdicts.len());
        for (i, h) in self.handlers.iter_mut().enumerate() {
            if i > 0 && !verdicts.contains(&Verdict::Next) {
                return;
            }
            h.process(frames, verdicts, cx);
        }
        unhandled(verdicts);
    }

    /// As [`Pipeline::run`], letting handlers add frames through `emit`.
    pub fn run_emit(
        &mut self,
        frames: &mut [Frame],
        verdicts: &mut [Verdict],
        cx: &Context,
        emit: &mut Emit<'_>,
    ) {
        let _ = self.run_burst(frames, verdicts, cx, emit);
    }

    /// As [`Pipeline::run_emit`], and says when the whole burst goes to one queue: `Some(q)`
    /// when every verdict is `Tx(q)`, so that a worker can transmit such a burst in one go
    /// without looking at each verdict again.
    pub fn run_burst(
        &mut self,
        frames: &mut [Frame],
        verdicts: &mut [Verdict],
        cx: &Context,
        emit: &mut Emit<'_>,
    ) -> Option<QueueId> {
        debug_assert_eq!(frames.len(), verdicts.len());
        for (i, h) in self.handlers.iter_mut().enumerate() {
            // Every verdict is `Next` on entry: the first handler needs no look.
            if i > 0 && !verdicts.contains(&Verdict::Next) {
                break;
            }
            h.process_emit(frames, verdicts, cx, emit);
        }
        let q = all_tx(verdicts);
        if q.is_none() {
            unhandled(verdicts);
        }
        q
    }
}

/// `Some(q)` when every verdict is `Tx(q)` (then none is `Next`). Branch-free over the
/// burst but for one test at the end: a few instructions per verdict.
fn all_tx(verdicts: &[Verdict]) -> Option<QueueId> {
    let Some(&Verdict::Tx(q)) = verdicts.first() else {
        return None;
    };
    let mut odd = 0;
    for v in verdicts {
        odd |= match *v {
            Verdict::Tx(x) => (x.port.0 ^ q.port.0) | (x.queue ^ q.queue),
            _ => 1,
        };
    }
    (odd == 0).then_some(q)
}

fn unhandled(verdicts: &mut [Verdict]) {
    for v in verdicts.iter_mut() {
        if *v == Verdict::Next {
            *v = Verdict::Drop(DropReason::Unhandled);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(bool);
    impl Handler for Fixed {
        fn name(&self) -> &str {
            "fixed"
        }
        fn process(&mut self, _: &mut [Frame], _: &mut [Verdict], _: &Context) {}
        fn needs_layout(&self) -> bool {
            self.0
        }
    }

    #[test]
    fn chain_skips_the_parse_only_when_no_handler_needs_it() {
        assert!(Pipeline::default().needs_layout());
        assert!(!Pipeline::new(vec![Box::new(Fixed(false))]).needs_layout());
        let mut p = Pipeline::new(vec![Box::new(Fixed(false)), Box::new(Fixed(false))]);
        assert!(!p.needs_layout());
        p.push(Box::new(Fixed(true)));
        assert!(p.needs_layout());
        assert!(Pipeline::new(vec![Box::new(Fixed(true)), Box::new(Fixed(false))]).needs_layout());
    }

    #[test]
    fn a_burst_says_when_it_all_goes_to_one_queue() {
        let q = QueueId::new(1, 0);
        let tx = Verdict::Tx(q);
        assert_eq!(all_tx(&[tx, tx, tx]), Some(q));
        assert_eq!(all_tx(&[tx, Verdict::Next, tx]), None);
        assert_eq!(all_tx(&[tx, tx, Verdict::Tx(QueueId::new(1, 1))]), None);
        assert_eq!(all_tx(&[tx, Verdict::Tx(QueueId::new(0, 0))]), None);
        assert_eq!(all_tx(&[Verdict::Drop(DropReason::Filtered); 2]), None);
        assert_eq!(all_tx(&[]), None);
    }

    #[test]
    fn reasons_round_trip_and_index_in_order() {
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
            assert_eq!(r.as_str().parse::<DropReason>().unwrap(), *r);
        }
        assert!("nope".parse::<DropReason>().is_err());
    }
}
