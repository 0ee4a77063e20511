//! Runs the commands of one request datagram on one core, and collects the answer.
//!
//! A datagram may hold several commands, and a get several keys, owned by different
//! partitions. The core runs commands in order while it owns what they touch (commands
//! without a key — `version`, `stats`, `flush_all` — run anywhere); at the first command or
//! get key that another partition owns it stops and says where to resume: the handler
//! sends what was answered so far and forwards the datagram to the owner, which goes on
//! from there. Keys of a get that were already answered are blanked out with spaces (the
//! tokenizer skips runs of spaces), so the get continues where it stopped.
//!
//! Answers follow memcached 1.6's response objects: each command's answer is one message,
//! and each key of a get is one message (a hit's `VALUE` block, a miss's nothing) with
//! `END` appended to the last key's; messages are numbered and split into datagrams
//! separately (see `handler`). That makes a get that spans partitions decompose exactly:
//! every key's message is made by its owner.

use std::ops::Range;

use dataplane::WorkerId;

use crate::cache::Store;
use crate::proto::{self, Command, StatsCmd, StoreOp};
use crate::stats::Counters;
use crate::store::{self, Arith, Partition, Stored};

/// The `VERSION` memcached clients see.
pub const VERSION: &str = concat!("slipstream-kv-", env!("CARGO_PKG_VERSION"));

/// Bytes of answer one datagram may produce before a get is refused with
/// `SERVER_ERROR out of memory writing get response` (memcached's own answer when it runs
/// out of response memory).
pub const OUT_BYTES: usize = 1 << 20;
/// Messages one datagram may produce.
pub const OUT_MESSAGES: usize = 4096;

/// The answer to one datagram so far: messages, back to back.
///
/// Empty messages (a get's missed key, `quit`) are sent only when they come first in the
/// datagram's answer, as a datagram with no payload and a count of 0: memcached sends the
/// response object at the head of its queue whatever it holds, and drops the empty ones
/// behind a sent one.
#[derive(Debug)]
pub struct Out {
    buf: Vec<u8>,
    /// End offset of each message in `buf`.
    ends: Vec<u32>,
}

impl Default for Out {
    fn default() -> Self {
        Out {
            buf: Vec::with_capacity(OUT_BYTES),
            ends: Vec::with_capacity(OUT_MESSAGES),
        }
    }
}

/// A point to roll back to.
#[derive(Debug, Clone, Copy)]
pub struct Mark(usize, usize);

impl Out {
    pub fn clear(&mut self) {
        self.buf.clear();
        self.ends.clear();
    }

    /// Starts a new (empty) message.
    pub fn begin(&mut self) -> bool {
        if self.ends.len() == self.ends.capacity() {
            return false;
        }
        self.ends.push(self.buf.len() as u32);
        true
    }

    /// Appends to the current message (starting one if there is none).
    pub fn push(&mut self, b: &[u8]) -> bool {
        if self.ends.is_empty() && !self.begin() {
            return false;
        }
        if self.buf.len() + b.len() > self.buf.capacity() {
            return false;
        }
        self.buf.extend_from_slice(b);
        if let Some(e) = self.ends.last_mut() {
            *e = self.buf.len() as u32;
        }
        true
    }

    pub fn push_u64(&mut self, v: u64) -> bool {
        let mut d = [0u8; 20];
        self.push(proto::itoa(v, &mut d))
    }

    /// A message of one line (`\r\n` added).
    pub fn line(&mut self, s: &str) -> bool {
        self.begin() && self.push(s.as_bytes()) && self.push(b"\r\n")
    }

    pub fn mark(&self) -> Mark {
        Mark(self.buf.len(), self.ends.len())
    }

    pub fn rollback(&mut self, m: Mark) {
        self.buf.truncate(m.0);
        self.ends.truncate(m.1);
    }

    /// The messages to send. `first`: these are the first of the datagram's answer (no
    /// earlier core sent any), so an empty first message is sent too.
    pub fn messages(&self, first: bool) -> impl Iterator<Item = &[u8]> + '_ {
        let mut start = 0usize;
        self.ends.iter().enumerate().filter_map(move |(i, &end)| {
            let end = end as usize;
            let m = &self.buf[start..end];
            start = end;
            (!m.is_empty() || (first && i == 0)).then_some(m)
        })
    }

    /// True when there is nothing to send.
    pub fn is_empty(&self, first: bool) -> bool {
        self.messages(first).next().is_none()
    }
}

/// Where a datagram stands after one core ran what it could.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Every command ran (or the datagram ended early: `quit`, a closing line).
    Done,
    /// The command at `resume` (payload offset, after the frame header) belongs to `to`'s
    /// partition. `blank`: payload bytes (keys of a get answered here) to overwrite with
    /// spaces before forwarding.
    Forward {
        to: WorkerId,
        resume: usize,
        blank: Option<Range<usize>>,
    },
}

/// What one core brings to a datagram.
pub struct Hop<'a> {
    pub store: &'a Store,
    /// This core's partition, if it owns one.
    pub part: Option<(usize, &'a mut Partition)>,
    pub c: &'a Counters,
    pub now: u32,
}

impl Hop<'_> {
    fn mine(&self) -> Option<usize> {
        self.part.as_ref().map(|(i, _)| *i)
    }
}

/// Room for the longest `VALUE` line: a 250-byte key, 32-bit flags, 64-bit length and cas.
pub const VALUE_LINE_MAX: usize = 320;

/// The line in front of a get hit's data, `VALUE <key> <flags> <bytes>[ <cas unique>]\r\n`,
/// written at the start of `buf`; returns its length. `key` is at most
/// [`proto::KEY_MAX`] bytes (longer keys are refused before any lookup).
pub fn value_line(
    buf: &mut [u8; VALUE_LINE_MAX],
    key: &[u8],
    f: &store::Found,
    cas: bool,
) -> usize {
    let mut n = 0;
    let mut put = |b: &[u8]| {
        let end = (n + b.len()).min(VALUE_LINE_MAX);
        buf[n..end].copy_from_slice(&b[..end - n]);
        n = end;
    };
    let mut d = [0u8; 20];
    put(b"VALUE ");
    put(key);
    put(b" ");
    put(proto::itoa(u64::from(f.flags), &mut d));
    put(b" ");
    put(proto::itoa(f.vlen as u64, &mut d));
    if cas {
        put(b" ");
        put(proto::itoa(f.cas, &mut d));
    }
    put(b"\r\n");
    n
}

fn is_error(line: &str) -> bool {
    ["ERROR", "CLIENT_ERROR", "SERVER_ERROR", "MEMLIMIT_"]
        .iter()
        .any(|p| line.starts_with(p))
}

fn say(out: &mut Out, c: &Counters, line: &str, noreply: bool) {
    if is_error(line) {
        c.errors.inc();
    }
    if !noreply {
        out.line(line);
    }
}

/// Runs the commands of `payload` (the datagram after its frame header) from offset
/// `start`, appending answers to `out`.
pub fn run(hop: &mut Hop<'_>, payload: &[u8], start: usize, out: &mut Out) -> Next {
    let store = hop.store;
    let n = store.partitions();
    let item_max = store.shape().item_max;
    let hop_start = out.mark();
    let mut pos = start;
    while let Some(line) = proto::line_at(payload, pos) {
        let cmd = proto::parse(line.text, item_max);
        if let Some(key) = cmd.key() {
            if key.len() <= proto::KEY_MAX {
                let p = store::partition_of(store::hash(key), n);
                if hop.mine() != Some(p) {
                    return Next::Forward {
                        to: store.owner(p),
                        resume: pos,
                        blank: None,
                    };
                }
            }
        }
        let c = hop.c;
        let now = hop.now;
        match cmd {
            Command::Get {
                cas,
                touch,
                line: text,
            } => {
                let skip = usize::from(touch.is_some());
                if proto::keys(text)
                    .skip(skip)
                    .any(|k| k.len() > proto::KEY_MAX)
                {
                    // memcached drops the answers it had stacked, then says this.
                    out.rollback(hop_start);
                    say(out, c, "CLIENT_ERROR bad command line format", false);
                    pos = line.next;
                    continue;
                }
                let mark = out.mark();
                let mut ok = true;
                let mut first: Option<usize> = None;
                let expiry = touch.map(|e| proto::expiry(e, now));
                for k in proto::keys(text).skip(skip) {
                    let h = store::hash(k);
                    let p = store::partition_of(h, n);
                    let off = k.as_ptr() as usize - payload.as_ptr() as usize;
                    let Some((_, part)) = hop.part.as_mut().filter(|(i, _)| *i == p) else {
                        return Next::Forward {
                            to: store.owner(p),
                            resume: pos,
                            blank: first.map(|f| f..off),
                        };
                    };
                    first.get_or_insert(off);
                    ok &= out.begin();
                    c.cmd_get.inc();
                    if touch.is_some() {
                        c.cmd_touch.inc();
                    }
                    match part.get(k, h, now, expiry, c) {
                        Some(f) => {
                            c.hits.inc();
                            if touch.is_some() {
                                c.touch_hits.inc();
                            }
                            let mut line = [0; VALUE_LINE_MAX];
                            let n = value_line(&mut line, k, &f, cas);
                            ok &= out.push(&line[..n])
                                && out.push(part.value(&f))
                                && out.push(b"\r\n");
                        }
                        None => {
                            c.misses.inc();
                            if touch.is_some() {
                                c.touch_misses.inc();
                            }
                        }
                    }
                }
                ok &= out.push(b"END\r\n");
                if !ok {
                    out.rollback(mark);
                    c.out_of_frames.inc();
                    say(
                        out,
                        c,
                        "SERVER_ERROR out of memory writing get response",
                        false,
                    );
                }
                pos = line.next;
            }
            Command::Store {
                op,
                key,
                flags,
                exptime,
                len,
                cas,
                noreply,
            } => {
                let ds = line.next;
                let Some(block) = payload.get(ds..ds + len + 2) else {
                    // The data block is not all in this datagram; memcached would wait for
                    // the rest, but no request continues in another datagram.
                    say(out, c, "CLIENT_ERROR bad data chunk", noreply);
                    pos = payload.len();
                    continue;
                };
                pos = ds + len + 2;
                if &block[len..] != b"\r\n" {
                    say(out, c, "CLIENT_ERROR bad data chunk", noreply);
                    continue;
                }
                let Some((_, part)) = hop.part.as_mut() else {
                    say(out, c, "SERVER_ERROR out of memory storing object", noreply);
                    continue;
                };
                c.cmd_set.inc();
                let r = part.store(
                    op,
                    key,
                    store::hash(key),
                    flags,
                    proto::expiry(exptime, now),
                    &block[..len],
                    cas,
                    item_max,
                    now,
                    c,
                );
                let is_cas = op == StoreOp::Cas;
                let line = match r {
                    Stored::Stored => {
                        if is_cas {
                            c.cas_hits.inc();
                        }
                        "STORED"
                    }
                    Stored::NotStored => "NOT_STORED",
                    Stored::Exists => {
                        if is_cas {
                            c.cas_badval.inc();
                        }
                        "EXISTS"
                    }
                    Stored::NotFound => {
                        c.cas_misses.inc();
                        "NOT_FOUND"
                    }
                    Stored::NoMemory => "SERVER_ERROR out of memory storing object",
                };
                say(out, c, line, noreply);
            }
            Command::TooLarge {
                op,
                key,
                len,
                noreply,
            } => {
                say(out, c, "SERVER_ERROR object too large for cache", noreply);
                if op == StoreOp::Set {
                    if let Some((_, part)) = hop.part.as_mut() {
                        part.remove(key, store::hash(key));
                    }
                }
                pos = (line.next + len + 2).min(payload.len());
            }
            Command::Delete { key, noreply } => {
                let hit = hop
                    .part
                    .as_mut()
                    .is_some_and(|(_, p)| p.delete(key, store::hash(key), now, c));
                if hit {
                    c.delete_hits.inc();
                    say(out, c, "DELETED", noreply);
                } else {
                    c.delete_misses.inc();
                    say(out, c, "NOT_FOUND", noreply);
                }
                pos = line.next;
            }
            Command::Arith {
                incr,
                key,
                delta,
                noreply,
            } => {
                let r = match hop.part.as_mut() {
                    Some((_, p)) => p.arith(key, store::hash(key), incr, delta, now, c),
                    None => Arith::NotFound,
                };
                match r {
                    Arith::Value(v) => {
                        if incr { &c.incr_hits } else { &c.decr_hits }.inc();
                        if !noreply {
                            out.begin();
                            out.push_u64(v);
                            out.push(b"\r\n");
                        }
                    }
                    Arith::NotFound => {
                        if incr { &c.incr_misses } else { &c.decr_misses }.inc();
                        say(out, c, "NOT_FOUND", noreply);
                    }
                    Arith::NonNumeric => say(
                        out,
                        c,
                        "CLIENT_ERROR cannot increment or decrement non-numeric value",
                        noreply,
                    ),
                    Arith::NoMemory => say(out, c, "SERVER_ERROR out of memory", noreply),
                }
                pos = line.next;
            }
            Command::Touch {
                key,
                exptime,
                noreply,
            } => {
                c.cmd_touch.inc();
                let e = proto::expiry(exptime, now);
                let hit = hop
                    .part
                    .as_mut()
                    .is_some_and(|(_, p)| p.touch(key, store::hash(key), e, now, c));
                if hit {
                    c.touch_hits.inc();
                    say(out, c, "TOUCHED", noreply);
                } else {
                    c.touch_misses.inc();
                    say(out, c, "NOT_FOUND", noreply);
                }
                pos = line.next;
            }
            Command::FlushAll { delay, noreply } => {
                c.cmd_flush.inc();
                // memcached flushes items stored up to realtime(delay) - 1.
                let at = if delay > 0 {
                    proto::expiry(delay, now).saturating_sub(1)
                } else {
                    0
                };
                store.request_flush(if at <= now { 0 } else { at });
                if let Some((i, part)) = hop.part.as_mut() {
                    store.upkeep(*i, part, now, c);
                }
                say(out, c, "OK", noreply);
                pos = line.next;
            }
            Command::Version => {
                out.begin();
                out.push(b"VERSION ");
                out.push(VERSION.as_bytes());
                out.push(b"\r\n");
                pos = line.next;
            }
            Command::Verbosity { noreply } => {
                say(out, c, "OK", noreply);
                pos = line.next;
            }
            Command::Stats(s) => {
                match s {
                    StatsCmd::General => general_stats(store, now, out),
                    StatsCmd::Settings => settings_stats(store, out),
                    StatsCmd::Reset => {
                        store.reset_stats();
                        out.line("RESET");
                    }
                }
                pos = line.next;
            }
            Command::Quit => {
                // memcached answers with an empty message and reads no further.
                out.begin();
                return Next::Done;
            }
            Command::Reply { line: l, noreply } => {
                say(out, c, l, noreply);
                pos = line.next;
            }
            Command::Close => return Next::Done,
            Command::MemLimit { mb, noreply } => {
                let bytes = u64::from(mb) << 20;
                let max = store.geometry().capacity * store.partitions() as u64;
                if bytes > max {
                    say(
                        out,
                        c,
                        "MEMLIMIT_ADJUST_FAILED out of bounds or unable to adjust",
                        noreply,
                    );
                } else {
                    store.set_budget(bytes);
                    if let Some((i, part)) = hop.part.as_mut() {
                        store.upkeep(*i, part, now, c);
                    }
                    say(out, c, "OK", noreply);
                }
                pos = line.next;
            }
        }
    }
    Next::Done
}

fn stat(out: &mut Out, name: &str, v: u64) {
    out.push(b"STAT ");
    out.push(name.as_bytes());
    out.push(b" ");
    out.push_u64(v);
    out.push(b"\r\n");
}

/// `stats`: memcached's general statistics, the subset that has a meaning here, in
/// memcached's order, plus `kv_*` lines of our own.
fn general_stats(store: &Store, now: u32, out: &mut Out) {
    let t = store.totals();
    let get = |name: &str| {
        crate::stats::index_of(name)
            .and_then(|i| t.get(i).copied())
            .unwrap_or(0)
    };
    out.begin();
    stat(out, "pid", u64::from(std::process::id()));
    stat(out, "uptime", store.uptime());
    stat(out, "time", u64::from(now));
    out.push(b"STAT version ");
    out.push(VERSION.as_bytes());
    out.push(b"\r\n");
    stat(out, "pointer_size", 64);
    for (name, counter) in [
        ("cmd_get", "cmd_get"),
        ("cmd_set", "cmd_set"),
        ("cmd_flush", "cmd_flush"),
        ("cmd_touch", "cmd_touch"),
        ("get_hits", "hits"),
        ("get_misses", "misses"),
        ("delete_misses", "delete_misses"),
        ("delete_hits", "delete_hits"),
        ("incr_misses", "incr_misses"),
        ("incr_hits", "incr_hits"),
        ("decr_misses", "decr_misses"),
        ("decr_hits", "decr_hits"),
        ("cas_misses", "cas_misses"),
        ("cas_hits", "cas_hits"),
        ("cas_badval", "cas_badval"),
        ("touch_hits", "touch_hits"),
        ("touch_misses", "touch_misses"),
    ] {
        stat(out, name, get(counter));
    }
    stat(out, "limit_maxbytes", store.budget());
    stat(out, "threads", store.partitions() as u64);
    stat(out, "bytes", get("bytes"));
    stat(out, "curr_items", get("items"));
    stat(out, "total_items", get("total_items"));
    stat(out, "evictions", get("evictions"));
    stat(out, "reclaimed", get("expired"));
    stat(out, "kv_partitions", store.partitions() as u64);
    stat(out, "kv_forwarded", get("forwarded"));
    stat(out, "kv_second_chances", get("second_chances"));
    out.push(b"END\r\n");
}

/// `stats settings`: the settings that exist here.
fn settings_stats(store: &Store, out: &mut Out) {
    out.begin();
    stat(out, "maxbytes", store.budget());
    stat(out, "item_size_max", store.shape().item_max as u64);
    stat(out, "num_threads", store.partitions() as u64);
    out.push(b"STAT evictions on\r\nSTAT cas_enabled yes\r\nSTAT flush_enabled yes\r\n");
    out.push(b"END\r\n");
}
