//! The `kv` handler: one instance per worker, all sharing one [`Store`].
//!
//! Per burst: the worker's own partition (if it owns one) is taken for the whole burst
//! (one uncontended flag, see `store::Cell`), its upkeep runs (pending flushes, budget
//! moves, gauges), then every frame still `Next` is looked at:
//!
//! - not UDP to the kv port: left for the next handler;
//! - a bad UDP checksum: dropped (`bad_checksum`);
//! - 8 bytes or less: consumed without an answer (memcached ignores such datagrams);
//! - a datagram count other than 1: `SERVER_ERROR multi-packet request not supported`;
//! - exactly one `get <key>\r\n` of this core's partition whose answer fits one datagram
//!   (most traffic): answered in place by `Burst::quick_get`, with the bytes and counters of
//!   the general path below;
//! - otherwise its commands run here as far as this core owns their keys (`exec`); the
//!   answer so far is sent, and the datagram is forwarded (`Verdict::Forward`) to the
//!   owner of the next key, which goes on where this core stopped. The resume offset
//!   travels in the frame header's reserved field with its top bit set (memcached ignores
//!   that field; a client that sets the bit skips part of its own request, nothing more).
//!
//! Answers: every message is split into datagrams of at most 1400 bytes (memcached's
//! `UDP_MAX_PAYLOAD_SIZE`, header included), numbered from 0 with the message's datagram
//! count. On the core that finishes a datagram, the first answer datagram is written into
//! the request's own frame (`Verdict::Tx` back out of the queue it came from); every other
//! datagram is a frame from `Emit` (same pool, so no copy on transmit), counted by the
//! engine as generated. When the burst's emit room or the pool runs out, the answer is
//! replaced by memcached's `SERVER_ERROR out of memory writing get response`.

use std::sync::Arc;

use dataplane::mem::HEADROOM;
use dataplane::{Context, DropReason, Emit, Frame, Handler, Verdict, WorkerId};

use crate::cache::{unix_now, Store};
use crate::exec::{self, Hop, Next, Out};
use crate::frag::{self, Reassembly};
use crate::proto::{self, FrameHeader, HEADER_LEN, MAX_CHUNK};
use crate::stats::Counters;
use crate::store::{self, Partition};
use crate::wire::{self, Class, Template};

/// Marks a forwarded datagram's reserved field: the low 14 bits are the payload offset to
/// resume at.
pub const RESUME: u16 = 0x8000;
/// Also set in a forwarded datagram's reserved field when an earlier core already sent
/// part of the answer (so an empty message is no longer the answer's first).
pub const ANSWERED: u16 = 0x4000;
/// The resume offset's bits.
const OFFSET: u16 = 0x3fff;

/// The handler instance of one worker.
pub struct Kv {
    store: Option<Arc<Store>>,
    port: u16,
    out: Out,
    reasm: Reassembly,
}

impl std::fmt::Debug for Kv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kv")
            .field("port", &self.port)
            .field("store", &self.store)
            .finish()
    }
}

impl Kv {
    /// An instance serving `port` from `store`. Without a store (its memory could not be
    /// mapped) every request is answered `SERVER_ERROR out of memory`.
    pub fn new(store: Option<Arc<Store>>, port: u16) -> Kv {
        Kv {
            store,
            port,
            out: Out::default(),
            reasm: Reassembly::default(),
        }
    }

    /// The store served.
    pub fn store(&self) -> Option<&Arc<Store>> {
        self.store.as_ref()
    }
}

impl Handler for Kv {
    fn name(&self) -> &str {
        "kv"
    }

    /// Without `Emit` (a chain run outside the engine): answers longer than one datagram
    /// become an error line.
    fn process(&mut self, frames: &mut [Frame], verdicts: &mut [Verdict], cx: &Context) {
        let mut none = Vec::new();
        let mut emit = Emit::new(&mut [], &mut none);
        self.process_emit(frames, verdicts, cx, &mut emit);
    }

    fn process_emit(
        &mut self,
        frames: &mut [Frame],
        verdicts: &mut [Verdict],
        cx: &Context,
        emit: &mut Emit<'_>,
    ) {
        let Kv {
            store,
            port,
            out,
            reasm,
        } = self;
        let port = *port;
        let now = unix_now();
        let Some(store) = store.as_deref() else {
            broken(frames, verdicts, port, out, emit);
            return;
        };
        let me = cx.worker;
        let c = store.counters(me);
        let mut b = Burst {
            store,
            c,
            now,
            now_ns: cx.now_ns,
            me,
            port,
            out,
            reasm,
        };
        match store
            .partition_of_worker(me)
            .and_then(|i| store.cell(i).map(|c| (i, c)))
        {
            Some((i, cell)) => {
                let ran = cell.with(|part| {
                    store.upkeep(i, part, now, c);
                    b.run(Some((i, part)), frames, verdicts, emit);
                });
                if ran.is_none() {
                    // Someone else holds this worker's partition (two threads claiming one
                    // worker id): refuse rather than forward the keys to ourselves.
                    for (f, v) in frames.iter().zip(verdicts.iter_mut()) {
                        if *v == Verdict::Next
                            && matches!(
                                wire::classify(f.data(), &f.meta.layout, port),
                                Class::Request(_)
                            )
                        {
                            *v = Verdict::Drop(DropReason::Filtered);
                        }
                    }
                }
            }
            None => b.run(None, frames, verdicts, emit),
        }
    }
}

/// The end of every get answer.
const END: &[u8] = b"END\r\n";

/// What one burst works with.
struct Burst<'a> {
    store: &'a Store,
    c: &'a Counters,
    now: u32,
    now_ns: u64,
    me: WorkerId,
    port: u16,
    out: &'a mut Out,
    reasm: &'a mut Reassembly,
}

/// Requests of a burst whose index and log reads are prefetched before the burst runs.
const PREFETCH_MAX: usize = 64;

impl Burst<'_> {
    /// Starts the memory reads of the burst's `get`/`gets`/`set` requests to this core's
    /// partition: first every index bucket, then every log entry the buckets name, so that
    /// the misses overlap (MICA's batched prefetch). Hints only: a request this cheap scan
    /// does not recognise simply is not prefetched; `run` parses and checks everything.
    fn prefetch(&self, mine: usize, part: &Partition, frames: &[Frame], verdicts: &[Verdict]) {
        let n = self.store.partitions();
        let mut hashes = [0u64; PREFETCH_MAX];
        let mut count = 0;
        for (f, v) in frames.iter().zip(verdicts) {
            if count == PREFETCH_MAX {
                break;
            }
            if *v != Verdict::Next {
                continue;
            }
            if let Some(key) = wire::first_key(f.data(), &f.meta.layout, self.port) {
                let h = store::hash(key);
                if store::partition_of(h, n) == mine {
                    part.prefetch_bucket(h);
                    hashes[count] = h;
                    count += 1;
                }
            }
        }
        for &h in &hashes[..count] {
            part.prefetch_entry(h);
        }
    }

    /// The fast path for the request most traffic is: a datagram that is exactly one
    /// `get <key>\r\n` for a key of this core's partition, whose answer fits one datagram.
    /// The answer is written straight over the request (the value copied once, from the
    /// log into the frame) with the bytes and counters the general path (`exec::run`, then
    /// `answer`) gives it, and returns the frame's verdict. Returns `None`, having answered
    /// and counted nothing, for anything else; a lookup it made then is simply made again.
    fn quick_get(
        &self,
        mine: usize,
        part: &mut Partition,
        f: &mut Frame,
        payload: std::ops::Range<usize>,
        request_id: u16,
        tpl: &Template,
    ) -> Option<Verdict> {
        let c = self.c;
        let kstart = payload.start + b"get ".len();
        let key = f
            .data()
            .get(payload)?
            .strip_prefix(b"get ")?
            .strip_suffix(b"\r\n")?;
        // What the general path would read differently: no key, a refused key, several
        // keys or lines, a NUL (the line ends there).
        if key.is_empty()
            || key.len() > proto::KEY_MAX
            || memchr::memchr3(b' ', b'\r', b'\n', key).is_some()
            || memchr::memchr(0, key).is_some()
        {
            return None;
        }
        let h = store::hash(key);
        if store::partition_of(h, self.store.partitions()) != mine {
            return None;
        }
        // The answer overwrites the request: keep the key.
        let mut kbuf = [0u8; proto::KEY_MAX];
        let key = &mut kbuf[..key.len()];
        key.copy_from_slice(&f.data()[kstart..kstart + key.len()]);
        let key = &*key;
        let found = part.get(key, h, self.now, None, c);
        let mut line = [0; exec::VALUE_LINE_MAX];
        let (line_len, len) = match &found {
            Some(hit) => {
                let n = exec::value_line(&mut line, key, hit, false);
                (n, n + hit.vlen + 2 + END.len())
            }
            None => (0, END.len()),
        };
        let room = f.capacity().saturating_sub(usize::from(HEADROOM));
        let chunk = MAX_CHUNK.min(room.saturating_sub(tpl.payload_offset()));
        if len > chunk || !f.try_set_len(tpl.payload_offset() + len) {
            return None;
        }
        let d = &mut f.data_mut()[tpl.payload_offset()..];
        let mut at = 0;
        let mut put = |b: &[u8]| {
            d[at..at + b.len()].copy_from_slice(b);
            at += b.len();
        };
        c.cmd_get.inc();
        if let Some(hit) = &found {
            c.hits.inc();
            put(&line[..line_len]);
            put(part.value(hit));
            put(b"\r\n");
        } else {
            c.misses.inc();
        }
        put(END);
        let h = FrameHeader {
            request_id,
            seq: 0,
            count: 1,
            reserved: 0,
        };
        c.requests.inc();
        if tpl.write_around(f.data_mut(), &h, len).is_none() {
            // Cannot happen (the length was set above); the request is spent, so it is
            // counted as the general path counts an answer it could not write.
            c.out_of_frames.inc();
            return Some(Verdict::Drop(DropReason::Consumed));
        }
        c.datagrams.inc();
        Some(Verdict::Tx(f.meta.rx))
    }

    fn run(
        &mut self,
        mut part: Option<(usize, &mut Partition)>,
        frames: &mut [Frame],
        verdicts: &mut [Verdict],
        emit: &mut Emit<'_>,
    ) {
        let c = self.c;
        if let Some((mine, p)) = part.as_ref() {
            self.prefetch(*mine, p, frames, verdicts);
        }
        for (f, v) in frames.iter_mut().zip(verdicts.iter_mut()) {
            if *v != Verdict::Next {
                continue;
            }
            let layout = f.meta.layout;
            if let Some(fr) = frag::fragment(f.data(), &layout) {
                self.fragment(f, v, &fr, &mut part, emit);
                continue;
            }
            let range = match wire::classify(f.data(), &layout, self.port) {
                Class::NotOurs => continue,
                Class::BadChecksum => {
                    c.bad_checksum.inc();
                    *v = Verdict::Drop(DropReason::BadChecksum);
                    continue;
                }
                Class::Request(r) => r,
            };
            let data = f.data();
            let dgram = &data[range.clone()];
            let (Some(hdr), Some(tpl)) = (
                FrameHeader::parse(dgram).filter(|_| dgram.len() > HEADER_LEN),
                Template::for_request(data, &layout),
            ) else {
                // memcached ignores datagrams of 8 bytes or less.
                c.requests.inc();
                *v = Verdict::Drop(DropReason::Consumed);
                continue;
            };
            if hdr.count == 1 && hdr.reserved & RESUME == 0 {
                if let Some((mine, p)) = part.as_mut() {
                    let payload = range.start + HEADER_LEN..range.end;
                    if let Some(verdict) =
                        self.quick_get(*mine, p, f, payload, hdr.request_id, &tpl)
                    {
                        *v = verdict;
                        continue;
                    }
                }
            }
            let dgram = &f.data()[range.clone()];
            self.out.clear();
            let forwarded = hdr.reserved & RESUME != 0;
            let first = !(forwarded && hdr.reserved & ANSWERED != 0);
            let next = if hdr.count != 1 {
                c.errors.inc();
                self.out
                    .line("SERVER_ERROR multi-packet request not supported");
                Next::Done
            } else {
                let resume = if forwarded {
                    usize::from(hdr.reserved & OFFSET)
                } else {
                    0
                };
                let mut hop = Hop {
                    store: self.store,
                    part: part.as_mut().map(|(i, p)| (*i, &mut **p)),
                    c,
                    now: self.now,
                };
                exec::run(&mut hop, &dgram[HEADER_LEN..], resume, self.out)
            };
            match next {
                Next::Done => {
                    c.requests.inc();
                    answer(f, Some(v), &tpl, hdr.request_id, self.out, first, emit, c);
                }
                Next::Forward { resume, .. } if resume > usize::from(OFFSET) => {
                    // The resume offset does not fit in the mark (datagrams over 16 KiB,
                    // jumbo frames only): the rest of the request is refused.
                    c.requests.inc();
                    c.errors.inc();
                    self.out.line("SERVER_ERROR out of memory reading request");
                    answer(f, Some(v), &tpl, hdr.request_id, self.out, first, emit, c);
                }
                Next::Forward { to, resume, blank } => {
                    let answered = !first || !self.out.is_empty(first);
                    let d = &mut f.data_mut()[range];
                    let mark = RESUME | if answered { ANSWERED } else { 0 } | resume as u16;
                    d[6..8].copy_from_slice(&mark.to_be_bytes());
                    if let Some(b) = blank {
                        if let Some(s) = d.get_mut(HEADER_LEN + b.start..HEADER_LEN + b.end) {
                            s.fill(b' ');
                        }
                    }
                    // The owner checks the UDP checksum like any receiver.
                    wire::refresh_checksum(f.data_mut(), &layout);
                    c.forwarded.inc();
                    forward(f, v, to, &tpl, hdr.request_id, self.out, first, emit, c);
                }
            }
        }
    }
}

/// Hands the (already marked) request to `to` after sending what this core answered.
///
/// The worker carries out the burst's own verdicts before the frames from `Emit`, and
/// answers must reach the transmit queue before the ones the next owner makes. So when
/// there is an answer, the request's frame carries its first datagram and a copy of the
/// request, pushed after the other answer datagrams, is what travels on; both take the
/// same ring when the transmitting core is the next owner, in that order. Without an
/// answer the frame itself is forwarded.
#[allow(clippy::too_many_arguments)]
fn forward(
    f: &mut Frame,
    v: &mut Verdict,
    to: dataplane::WorkerId,
    tpl: &Template,
    request_id: u16,
    out: &mut Out,
    first: bool,
    emit: &mut Emit<'_>,
    c: &Counters,
) {
    if out.is_empty(first) {
        *v = Verdict::Forward(to);
        return;
    }
    let Some(mut copy) = emit.alloc(f) else {
        // No room for the copy: forward the frame itself; the answers may then arrive
        // after the next owner's.
        c.out_of_frames.inc();
        answer(f, None, tpl, request_id, out, first, emit, c);
        *v = Verdict::Forward(to);
        return;
    };
    if !copy.try_fill(f.data()) {
        emit.free(copy);
        answer(f, None, tpl, request_id, out, first, emit, c);
        *v = Verdict::Forward(to);
        return;
    }
    answer(f, Some(&mut *v), tpl, request_id, out, first, emit, c);
    emit.push(copy, Verdict::Forward(to));
}

impl Burst<'_> {
    /// An IPv4 fragment of a UDP datagram (see `frag`).
    fn fragment(
        &mut self,
        f: &mut Frame,
        v: &mut Verdict,
        fr: &frag::Fragment,
        part: &mut Option<(usize, &mut Partition)>,
        emit: &mut Emit<'_>,
    ) {
        let c = self.c;
        let mine = part.as_ref().map(|(i, _)| *i);
        if fr.offset == 0 {
            let Some(l4) = f.data().get(fr.payload.clone()) else {
                return;
            };
            if l4.len() < 8 || u16::from_be_bytes([l4[2], l4[3]]) != self.port {
                return;
            }
            // The first command's key (in this first fragment) names the owner.
            let n = self.store.partitions();
            let owner = l4
                .get(8 + HEADER_LEN..)
                .and_then(|req| proto::line_at(req, 0))
                .and_then(|line| {
                    let cmd = proto::parse(line.text, self.store.shape().item_max);
                    let k = cmd.key().filter(|k| k.len() <= proto::KEY_MAX)?;
                    Some(store::partition_of(store::hash(k), n))
                });
            if let Some(p) = owner.filter(|&p| Some(p) != mine) {
                let to = self.store.owner(p);
                // Later fragments that came first follow it, rebuilt as frames.
                for (off, bytes, last) in self.reasm.held(&fr.id) {
                    if !refragment(f, off, bytes, last, to, emit) {
                        c.frag_dropped.inc();
                    }
                }
                self.reasm.set_route(fr.id, to, self.now_ns);
                c.forwarded.inc();
                *v = Verdict::Forward(to);
                return;
            }
            self.reasm.clear_route(&fr.id);
        } else if let Some(to) = self.reasm.route(&fr.id, self.now_ns) {
            if to != self.me {
                c.forwarded.inc();
                *v = Verdict::Forward(to);
                return;
            }
        }
        let layout = f.meta.layout;
        let slot = match self.reasm.keep(f.data(), &layout, fr, self.now_ns) {
            frag::Step::Complete(i) => i,
            frag::Step::Dropped => {
                c.frag_dropped.inc();
                *v = Verdict::Drop(DropReason::Consumed);
                return;
            }
            _ => {
                *v = Verdict::Drop(DropReason::Consumed);
                return;
            }
        };
        let Some((d, tpl)) = self.reasm.take(slot) else {
            *v = Verdict::Drop(DropReason::Consumed);
            return;
        };
        if u16::from_be_bytes([d[2], d[3]]) != self.port {
            // Not ours after all (a port-less steering rule): nobody else reassembles.
            *v = Verdict::Drop(DropReason::Unhandled);
            return;
        }
        c.frag_reassembled.inc();
        let dgram = &d[8..];
        let Some(hdr) = FrameHeader::parse(dgram) else {
            *v = Verdict::Drop(DropReason::Consumed);
            return;
        };
        self.out.clear();
        c.requests.inc();
        if hdr.count != 1 {
            c.errors.inc();
            self.out
                .line("SERVER_ERROR multi-packet request not supported");
        } else {
            let mut hop = Hop {
                store: self.store,
                part: part.as_mut().map(|(i, p)| (*i, &mut **p)),
                c,
                now: self.now,
            };
            if let Next::Forward { .. } = exec::run(&mut hop, &dgram[HEADER_LEN..], 0, self.out) {
                // A reassembled datagram cannot travel to another core in one frame.
                c.errors.inc();
                self.out.line("SERVER_ERROR out of memory reading request");
            }
        }
        answer(f, Some(v), &tpl, hdr.request_id, self.out, true, emit, c);
    }
}

/// Sends `bytes` (datagram offset `off`) to worker `to` as IPv4 fragments made from the
/// first fragment `first`'s headers: as many frames from `emit` as needed (offsets stay
/// multiples of 8). False when a frame could not be had.
fn refragment(
    first: &Frame,
    off: usize,
    bytes: &[u8],
    last: bool,
    to: WorkerId,
    emit: &mut Emit<'_>,
) -> bool {
    let l = first.meta.layout;
    let l3 = usize::from(l.l3_off);
    let hl = usize::from(l.l4_off) - l3;
    let room = first
        .capacity()
        .saturating_sub(usize::from(HEADROOM) + l3 + hl)
        / 8
        * 8;
    if room == 0 {
        return false;
    }
    let mut done = 0;
    while done < bytes.len() {
        let n = room.min(bytes.len() - done);
        let more = !(last && done + n == bytes.len());
        let Some(mut g) = emit.alloc(first) else {
            return false;
        };
        if !g.try_set_len(l3 + hl + n) {
            emit.free(g);
            return false;
        }
        let d = g.data_mut();
        d[..l3 + hl].copy_from_slice(&first.data()[..l3 + hl]);
        d[l3 + hl..].copy_from_slice(&bytes[done..done + n]);
        let ip = &mut d[l3..];
        ip[2..4].copy_from_slice(&((hl + n) as u16).to_be_bytes());
        let fo = ((off + done) / 8) as u16 & 0x1fff;
        ip[6..8].copy_from_slice(&(fo | if more { 0x2000 } else { 0 }).to_be_bytes());
        ip[10..12].copy_from_slice(&[0, 0]);
        let c = dataplane::wire::checksum::of(&ip[..hl]);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        // The receiving core reads the layout the receive path stored: fix the lengths.
        g.meta.layout.l4_len = n as u16;
        emit.push(g, Verdict::Forward(to));
        done += n;
    }
    true
}

/// Datagrams a message of `len` bytes takes with `chunk`-byte payloads.
fn datagrams(len: usize, chunk: usize) -> usize {
    len.div_ceil(chunk).max(1)
}

/// Sends `out` (`first`: no earlier core sent part of this answer): the first datagram in
/// `f` itself when `v` is given (the request is done here), every other one in frames from
/// `emit`. Nothing to send: the request is consumed.
#[allow(clippy::too_many_arguments)]
fn answer(
    f: &mut Frame,
    v: Option<&mut Verdict>,
    tpl: &Template,
    request_id: u16,
    out: &mut Out,
    first: bool,
    emit: &mut Emit<'_>,
    c: &Counters,
) {
    let fin = v.is_some();
    // Payload per datagram: memcached's, or less when frames are smaller than that.
    let room = f.capacity().saturating_sub(usize::from(HEADROOM));
    let chunk = MAX_CHUNK.min(room.saturating_sub(tpl.len() + HEADER_LEN));
    let count =
        |out: &Out| -> usize { out.messages(first).map(|m| datagrams(m.len(), chunk)).sum() };
    let mut total = if chunk == 0 { 0 } else { count(out) };
    if total > usize::from(fin) + emit.room() {
        c.out_of_frames.inc();
        c.errors.inc();
        out.clear();
        out.line("SERVER_ERROR out of memory writing get response");
        total = count(out);
        if total > usize::from(fin) + emit.room() {
            total = 0;
        }
    }
    let rx = f.meta.rx;
    let Some(v) = v else {
        if total > 0 {
            send(f, None, tpl, request_id, out, first, emit, c, chunk);
        }
        return;
    };
    if total == 0 {
        *v = Verdict::Drop(DropReason::Consumed);
        return;
    }
    if send(f, Some(()), tpl, request_id, out, first, emit, c, chunk) {
        *v = Verdict::Tx(rx);
    } else {
        *v = Verdict::Drop(DropReason::Consumed);
    }
}

/// Writes the datagrams; `own` says whether the first one goes into `f`. Returns whether
/// `f` was written.
#[allow(clippy::too_many_arguments)]
fn send(
    f: &mut Frame,
    own: Option<()>,
    tpl: &Template,
    request_id: u16,
    out: &Out,
    first: bool,
    emit: &mut Emit<'_>,
    c: &Counters,
    chunk: usize,
) -> bool {
    let rx = f.meta.rx;
    let mut use_own = own.is_some();
    let mut wrote_own = false;
    for m in out.messages(first) {
        let n = datagrams(m.len(), chunk);
        // memcached's count: full and partial chunks (0 for an empty message).
        let count = m.len().div_ceil(chunk).min(usize::from(u16::MAX)) as u16;
        for i in 0..n {
            let part = &m[(i * chunk).min(m.len())..((i + 1) * chunk).min(m.len())];
            let h = FrameHeader {
                request_id,
                seq: i as u16,
                count,
                reserved: 0,
            };
            let len = tpl.len() + HEADER_LEN + part.len();
            if use_own {
                use_own = false;
                if f.try_set_len(len) && tpl.write(f.data_mut(), &h, part).is_some() {
                    wrote_own = true;
                    c.datagrams.inc();
                }
                continue;
            }
            let Some(mut g) = emit.alloc(f) else {
                c.out_of_frames.inc();
                return wrote_own;
            };
            if g.try_set_len(len) && tpl.write(g.data_mut(), &h, part).is_some() {
                emit.push(g, Verdict::Tx(rx));
                c.datagrams.inc();
            } else {
                emit.free(g);
                c.out_of_frames.inc();
            }
        }
    }
    wrote_own
}

/// Requests to a kv handler whose store could not be mapped.
fn broken(
    frames: &mut [Frame],
    verdicts: &mut [Verdict],
    port: u16,
    out: &mut Out,
    emit: &mut Emit<'_>,
) {
    let c = Counters::default();
    for (f, v) in frames.iter_mut().zip(verdicts.iter_mut()) {
        if *v != Verdict::Next {
            continue;
        }
        let layout = f.meta.layout;
        let Class::Request(r) = wire::classify(f.data(), &layout, port) else {
            continue;
        };
        let data = f.data();
        let (Some(hdr), Some(tpl)) = (
            FrameHeader::parse(&data[r]),
            Template::for_request(data, &layout),
        ) else {
            *v = Verdict::Drop(DropReason::Consumed);
            continue;
        };
        out.clear();
        out.line("SERVER_ERROR out of memory");
        answer(f, Some(v), &tpl, hdr.request_id, out, true, emit, &c);
    }
}
