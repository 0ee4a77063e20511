//! memcached's UDP framing and ASCII request syntax, as memcached 1.6 reads them.
//!
//! Pure functions over borrowed bytes: no storage, no allocation, no panics on any input
//! (property-tested in this module and in `tests/proto.rs`). The shapes follow memcached's
//! `proto_text.c` closely, because clients depend on its exact error lines:
//!
//! - A datagram starts with an 8-byte frame header (request id, sequence number, datagram
//!   count, reserved). memcached ignores datagrams of 8 bytes or less, and answers a request
//!   whose count is not 1 with `SERVER_ERROR multi-packet request not supported` (its source
//!   says so; 1.6.18 actually drops the line on the floor, see the crate docs).
//! - Requests are lines ending in `\n` (a `\r` before it is dropped when the line has more
//!   than one byte); a line is cut at its first NUL (memcached uses `strlen`). Bytes after
//!   the last `\n` are an incomplete command memcached would wait for; over UDP nothing
//!   follows, so they are ignored, as memcached effectively does.
//! - Tokens are separated by spaces only (runs of spaces collapse; tabs belong to tokens),
//!   at most 23 per line are looked at (`MAX_TOKENS` 24 with the terminator), and `ntokens`
//!   below counts the terminator as memcached does, so the token-count rules read the same.
//! - Numbers are parsed with C's `strtoul`/`strtol` semantics (leading white space, a sign,
//!   64-bit range, then truncation to 32 bits where memcached stores 32 bits) through
//!   memcached's `safe_strto*` checks, so `set k 4294967296 0 1` stores flags 0 and
//!   `set k -1 0 1` is a `CLIENT_ERROR`, exactly as memcached answers.
//! - `noreply` is the last token, and silences every line `out_string` would send after the
//!   point where memcached looks for it (including its errors), but not a token-count
//!   `ERROR`, which memcached sends before it looks.

/// Bytes of the frame header in front of every datagram, request or response.
pub const HEADER_LEN: usize = 8;
/// Largest response datagram memcached sends, header included (`UDP_MAX_PAYLOAD_SIZE`).
pub const MAX_DATAGRAM: usize = 1400;
/// Response payload per datagram.
pub const MAX_CHUNK: usize = MAX_DATAGRAM - HEADER_LEN;
/// Longest key (`KEY_MAX_LENGTH`).
pub const KEY_MAX: usize = 250;
/// memcached's `MAX_TOKENS`: 23 tokens and the terminator.
pub const MAX_TOKENS: usize = 24;
/// `REALTIME_MAXDELTA`: exptimes up to 30 days are relative, larger ones are Unix times.
pub const REALTIME_MAXDELTA: i64 = 60 * 60 * 24 * 30;

/// The 8-byte frame header of a memcached UDP datagram (all fields big-endian).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FrameHeader {
    /// Chosen by the client, echoed in every datagram of the response.
    pub request_id: u16,
    /// Datagram number within the message, from 0.
    pub seq: u16,
    /// Datagrams in the message.
    pub count: u16,
    /// Must be 0 on the wire; slipstream uses it between its own cores (see `handler`).
    pub reserved: u16,
}

impl FrameHeader {
    /// The header at the start of `b`, if `b` is long enough.
    pub fn parse(b: &[u8]) -> Option<FrameHeader> {
        let h = b.get(..HEADER_LEN)?;
        let w = |i: usize| u16::from_be_bytes([h[i], h[i + 1]]);
        Some(FrameHeader {
            request_id: w(0),
            seq: w(2),
            count: w(4),
            reserved: w(6),
        })
    }

    /// Writes the header into the first 8 bytes of `b` (false when `b` is shorter).
    pub fn write(&self, b: &mut [u8]) -> bool {
        let Some(h) = b.get_mut(..HEADER_LEN) else {
            return false;
        };
        h[0..2].copy_from_slice(&self.request_id.to_be_bytes());
        h[2..4].copy_from_slice(&self.seq.to_be_bytes());
        h[4..6].copy_from_slice(&self.count.to_be_bytes());
        h[6..8].copy_from_slice(&self.reserved.to_be_bytes());
        true
    }
}

/// Number of datagrams a message of `len` payload bytes takes (at least one).
pub fn datagrams(len: usize) -> usize {
    len.div_ceil(MAX_CHUNK).max(1)
}

/// One request line: the command text (without `\r\n`, cut at a NUL) and where the next
/// line (or a storage command's data block) starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Line<'a> {
    pub text: &'a [u8],
    pub next: usize,
}

/// The line starting at `pos`, or `None` when no `\n` follows (an incomplete command).
pub fn line_at(buf: &[u8], pos: usize) -> Option<Line<'_>> {
    let rest = buf.get(pos..)?;
    let nl = memchr::memchr(b'\n', rest)?;
    let mut text = &rest[..nl];
    if text.len() > 1 && text[text.len() - 1] == b'\r' {
        text = &text[..text.len() - 1];
    }
    if let Some(nul) = memchr::memchr(0, text) {
        text = &text[..nul];
    }
    Some(Line {
        text,
        next: pos + nl + 1,
    })
}

/// The first tokens of a line, as memcached's `tokenize_command` finds them.
#[derive(Debug, Clone, Copy)]
pub struct Tokens<'a> {
    toks: [&'a [u8]; MAX_TOKENS - 1],
    n: usize,
}

impl<'a> Tokens<'a> {
    /// Splits `text` on spaces, keeping at most 23 tokens.
    pub fn new(text: &'a [u8]) -> Tokens<'a> {
        let mut t = Tokens {
            toks: [&[]; MAX_TOKENS - 1],
            n: 0,
        };
        for tok in words(text) {
            if t.n == MAX_TOKENS - 1 {
                break;
            }
            t.toks[t.n] = tok;
            t.n += 1;
        }
        t
    }

    /// memcached's `ntokens`: real tokens plus the terminator.
    pub fn ntokens(&self) -> usize {
        self.n + 1
    }

    /// Token `i` (empty past the end).
    pub fn get(&self, i: usize) -> &'a [u8] {
        if i < self.n {
            self.toks[i]
        } else {
            &[]
        }
    }

    /// The last real token (what `set_noreply_maybe` looks at).
    pub fn last(&self) -> &'a [u8] {
        self.get(self.n.wrapping_sub(1))
    }

    /// True when the last token is `noreply`.
    pub fn noreply(&self) -> bool {
        self.n > 0 && self.last() == b"noreply"
    }
}

/// The space-separated tokens of `text` after the first one (the keys of a get).
pub fn keys(text: &[u8]) -> impl Iterator<Item = &[u8]> {
    words(text).skip(1)
}

/// The non-empty runs of `text` between spaces (memcached's tokenizer splits on spaces
/// only).
fn words(text: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = text;
    std::iter::from_fn(move || loop {
        if rest.is_empty() {
            return None;
        }
        let end = memchr::memchr(b' ', rest).unwrap_or(rest.len());
        let word = &rest[..end];
        rest = rest.get(end + 1..).unwrap_or(&[]);
        if !word.is_empty() {
            return Some(word);
        }
    })
}

fn c_isspace(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

/// `strtoull`/`strtoll`-style scan of a decimal number at the start of `s`: (magnitude,
/// negative, end offset, overflow of `limit`). `end` is 0 when no digit was found.
fn scan(s: &[u8], limit: u128) -> (u128, bool, usize, bool) {
    let mut i = 0;
    while i < s.len() && c_isspace(s[i]) {
        i += 1;
    }
    let mut neg = false;
    if i < s.len() && (s[i] == b'+' || s[i] == b'-') {
        neg = s[i] == b'-';
        i += 1;
    }
    let start = i;
    let mut v: u128 = 0;
    let mut over = false;
    while i < s.len() && s[i].is_ascii_digit() {
        if !over {
            v = v * 10 + u128::from(s[i] - b'0');
            if v > limit {
                over = true;
            }
        }
        i += 1;
    }
    if i == start {
        return (0, false, 0, false);
    }
    (v, neg, i, over)
}

/// What may follow a number for memcached to accept it: the end of the token or white space.
fn accepted_end(s: &[u8], end: usize) -> bool {
    end != 0 && s.get(end).is_none_or(|&b| c_isspace(b) || b == 0)
}

/// memcached's `safe_strtoull`.
pub fn safe_strtoull(s: &[u8]) -> Option<u64> {
    let (mag, neg, end, over) = scan(s, u128::from(u64::MAX));
    if over || !accepted_end(s, end) {
        return None;
    }
    let v = if neg {
        (mag as u64).wrapping_neg()
    } else {
        mag as u64
    };
    if (v as i64) < 0 && s[..end].contains(&b'-') {
        return None;
    }
    Some(v)
}

/// memcached's `safe_strtoul` on a 64-bit system: `strtoul` into 64 bits, the sign check,
/// then truncation to the 32 bits memcached stores.
pub fn safe_strtoul(s: &[u8]) -> Option<u32> {
    let (mag, neg, end, over) = scan(s, u128::from(u64::MAX));
    if over || !accepted_end(s, end) {
        return None;
    }
    let v = if neg {
        (mag as u64).wrapping_neg()
    } else {
        mag as u64
    };
    if (v as i64) < 0 && s.contains(&b'-') {
        return None;
    }
    Some(v as u32)
}

/// memcached's `safe_strtol` on a 64-bit system: `strtol` into 64 bits (out of range is an
/// error), then truncation to 32 bits.
pub fn safe_strtol(s: &[u8]) -> Option<i32> {
    // i64::MAX for positive, |i64::MIN| for negative numbers.
    let (mag, neg, end, over) = scan(s, 1u128 << 63);
    if over || !accepted_end(s, end) {
        return None;
    }
    let v: i64 = if neg {
        (mag as i128).wrapping_neg() as i64
    } else if mag > i64::MAX as u128 {
        return None;
    } else {
        mag as i64
    };
    Some(v as i32)
}

/// Which storage command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreOp {
    Set,
    Add,
    Replace,
    Append,
    Prepend,
    Cas,
}

impl StoreOp {
    pub fn name(self) -> &'static str {
        match self {
            StoreOp::Set => "set",
            StoreOp::Add => "add",
            StoreOp::Replace => "replace",
            StoreOp::Append => "append",
            StoreOp::Prepend => "prepend",
            StoreOp::Cas => "cas",
        }
    }
}

/// `stats` subcommands served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatsCmd {
    /// `stats`: the general counters.
    General,
    /// `stats settings`.
    Settings,
    /// `stats reset`.
    Reset,
}

/// One parsed request line. Keys and data borrow from the datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command<'a> {
    /// `get`/`gets`/`gat`/`gats`: the keys are [`keys`] of `line`; `touch` is `gat`'s
    /// exptime.
    Get {
        cas: bool,
        touch: Option<i32>,
        line: &'a [u8],
    },
    /// A storage command whose data block (`len` bytes and `\r\n`) follows the line.
    Store {
        op: StoreOp,
        key: &'a [u8],
        flags: u32,
        exptime: i32,
        len: usize,
        cas: u64,
        noreply: bool,
    },
    /// A storage command refused before its data was read; the data block (`len` + 2 bytes)
    /// is swallowed. A refused `set` also removes the key (memcached does, so that a stale
    /// value cannot survive a failed update).
    TooLarge {
        op: StoreOp,
        key: &'a [u8],
        len: usize,
        noreply: bool,
    },
    Delete {
        key: &'a [u8],
        noreply: bool,
    },
    Arith {
        incr: bool,
        key: &'a [u8],
        delta: u64,
        noreply: bool,
    },
    Touch {
        key: &'a [u8],
        exptime: i32,
        noreply: bool,
    },
    /// `flush_all [delay] [noreply]`.
    FlushAll {
        delay: i32,
        noreply: bool,
    },
    Version,
    Verbosity {
        noreply: bool,
    },
    Stats(StatsCmd),
    /// `quit`: memcached answers with an empty message (a header whose count is 0) and
    /// reads no further.
    Quit,
    /// A line memcached answers with a fixed line (`ERROR`, `CLIENT_ERROR ...`), silenced
    /// by `noreply` when memcached had already seen it.
    Reply {
        line: &'static str,
        noreply: bool,
    },
    /// A line that makes memcached close the connection without an answer (`... HTTP/1.1`):
    /// nothing more of the datagram is read.
    Close,
    /// `cache_memlimit <MiB> [noreply]`: a new budget over all partitions (memcached's own
    /// way to change `-m` at run time).
    MemLimit {
        mb: u32,
        noreply: bool,
    },
}

impl<'a> Command<'a> {
    /// The key that decides which partition must run the command, if any (for a get, its
    /// first key).
    pub fn key(&self) -> Option<&'a [u8]> {
        match *self {
            Command::Get { line, .. } => keys(line).nth(usize::from(self.is_gat())),
            Command::Store { key, .. }
            | Command::Delete { key, .. }
            | Command::Arith { key, .. }
            | Command::Touch { key, .. } => Some(key),
            Command::TooLarge {
                op: StoreOp::Set,
                key,
                ..
            } => Some(key),
            _ => None,
        }
    }

    fn is_gat(&self) -> bool {
        matches!(self, Command::Get { touch: Some(_), .. })
    }
}

const ERROR: &str = "ERROR";
const BAD_FORMAT: &str = "CLIENT_ERROR bad command line format";
const BAD_EXPTIME: &str = "CLIENT_ERROR invalid exptime argument";

fn reply(line: &'static str, noreply: bool) -> Command<'static> {
    Command::Reply { line, noreply }
}

/// Parses one request line (`text` without its line end). `item_size_max` is the largest
/// item (key, value and memcached's per-item overhead) a storage command may announce.
pub fn parse(text: &[u8], item_size_max: usize) -> Command<'_> {
    let t = Tokens::new(text);
    let n = t.ntokens();
    let cmd = t.get(0);
    if n < 2 || cmd.len() < 2 {
        return reply(ERROR, false);
    }
    match cmd {
        b"get" | b"gets" | b"gat" | b"gats" | b"bget" => {
            if n < 3 {
                return reply(ERROR, false);
            }
            let touch = if cmd == b"gat" || cmd == b"gats" {
                match safe_strtol(t.get(1)) {
                    Some(e) => Some(e),
                    None => return reply(BAD_EXPTIME, false),
                }
            } else {
                None
            };
            Command::Get {
                cas: cmd == b"gets" || cmd == b"gats",
                touch,
                line: text,
            }
        }
        b"set" => storage(&t, StoreOp::Set, item_size_max),
        b"add" => storage(&t, StoreOp::Add, item_size_max),
        b"replace" => storage(&t, StoreOp::Replace, item_size_max),
        b"append" => storage(&t, StoreOp::Append, item_size_max),
        b"prepend" => storage(&t, StoreOp::Prepend, item_size_max),
        b"cas" => storage(&t, StoreOp::Cas, item_size_max),
        b"incr" | b"decr" => {
            if n != 4 && n != 5 {
                return reply(ERROR, false);
            }
            let noreply = t.noreply();
            let key = t.get(1);
            if key.len() > KEY_MAX {
                return reply(BAD_FORMAT, noreply);
            }
            match safe_strtoull(t.get(2)) {
                Some(delta) => Command::Arith {
                    incr: cmd == b"incr",
                    key,
                    delta,
                    noreply,
                },
                None => reply("CLIENT_ERROR invalid numeric delta argument", noreply),
            }
        }
        b"delete" => {
            if !(3..=5).contains(&n) {
                return reply(ERROR, false);
            }
            let mut noreply = false;
            if n > 3 {
                let hold_is_zero = t.get(2) == b"0";
                noreply = t.noreply();
                let valid =
                    (n == 4 && (hold_is_zero || noreply)) || (n == 5 && hold_is_zero && noreply);
                if !valid {
                    return reply(
                        "CLIENT_ERROR bad command line format.  Usage: delete <key> [noreply]",
                        noreply,
                    );
                }
            }
            let key = t.get(1);
            if key.len() > KEY_MAX {
                return reply(BAD_FORMAT, noreply);
            }
            Command::Delete { key, noreply }
        }
        b"touch" => {
            if n != 4 && n != 5 {
                return reply(ERROR, false);
            }
            let noreply = t.noreply();
            let key = t.get(1);
            if key.len() > KEY_MAX {
                return reply(BAD_FORMAT, noreply);
            }
            match safe_strtol(t.get(2)) {
                Some(exptime) => Command::Touch {
                    key,
                    exptime,
                    noreply,
                },
                None => reply(BAD_EXPTIME, noreply),
            }
        }
        b"flush_all" => {
            if !(2..=4).contains(&n) {
                return reply(ERROR, false);
            }
            let noreply = t.noreply();
            let mut delay = 0;
            if n != if noreply { 3 } else { 2 } {
                match safe_strtol(t.get(1)) {
                    Some(d) => delay = d,
                    None => return reply(BAD_EXPTIME, noreply),
                }
            }
            Command::FlushAll { delay, noreply }
        }
        b"version" => Command::Version,
        b"quit" => Command::Quit,
        b"verbosity" => {
            if n != 3 && n != 4 {
                return reply(ERROR, false);
            }
            let noreply = t.noreply();
            match safe_strtoul(t.get(1)) {
                Some(_) => Command::Verbosity { noreply },
                None => reply(BAD_FORMAT, noreply),
            }
        }
        b"stats" => match (n, t.get(1)) {
            (2, _) => Command::Stats(StatsCmd::General),
            (_, b"reset") => Command::Stats(StatsCmd::Reset),
            (_, b"settings") => Command::Stats(StatsCmd::Settings),
            (_, b"detail") if n < 4 => reply("CLIENT_ERROR usage: stats detail on|off|dump", false),
            (_, b"detail") => match t.get(2) {
                b"on" | b"off" => reply("OK", false),
                b"dump" => reply("END", false),
                _ => reply("CLIENT_ERROR usage: stats detail on|off|dump", false),
            },
            _ => reply(ERROR, false),
        },
        b"shutdown" => reply("ERROR: shutdown not enabled", false),
        // The meta protocol's no-op; other meta commands are not served.
        b"mn" => reply("MN", false),
        b"cache_memlimit" => {
            if n != 3 && n != 4 {
                return reply(ERROR, false);
            }
            let noreply = t.noreply();
            match safe_strtoul(t.get(1)) {
                None => reply(ERROR, noreply),
                Some(mb) if mb < 8 => reply(
                    "MEMLIMIT_TOO_SMALL cannot set maxbytes to less than 8m",
                    noreply,
                ),
                Some(mb) if mb > 1_000_000_000 => reply(
                    "MEMLIMIT_ADJUST_FAILED input value is megabytes not bytes",
                    noreply,
                ),
                Some(mb) => Command::MemLimit { mb, noreply },
            }
        }
        _ => {
            if t.get(n - 2).starts_with(b"HTTP/") {
                Command::Close
            } else {
                reply(ERROR, false)
            }
        }
    }
}

/// memcached's per-item overhead counted against `item_size_max` (its item header with
/// CAS, the key's terminating NUL and the value's `\r\n`).
pub const ITEM_OVERHEAD: usize = 48 + 1 + 2;

fn storage<'a>(t: &Tokens<'a>, op: StoreOp, item_size_max: usize) -> Command<'a> {
    let n = t.ntokens();
    let want = if op == StoreOp::Cas { (7, 8) } else { (6, 7) };
    if n != want.0 && n != want.1 {
        return reply(ERROR, false);
    }
    let noreply = t.noreply();
    let key = t.get(1);
    if key.len() > KEY_MAX {
        return reply(BAD_FORMAT, noreply);
    }
    let (Some(flags), Some(exptime), Some(vlen)) = (
        safe_strtoul(t.get(2)),
        safe_strtol(t.get(3)),
        safe_strtol(t.get(4)),
    ) else {
        return reply(BAD_FORMAT, noreply);
    };
    let mut cas = 0;
    if op == StoreOp::Cas {
        match safe_strtoull(t.get(5)) {
            Some(c) => cas = c,
            None => return reply(BAD_FORMAT, noreply),
        }
    }
    if !(0..=i32::MAX - 2).contains(&vlen) {
        return reply(BAD_FORMAT, noreply);
    }
    let len = vlen as usize;
    if key.len() + len + ITEM_OVERHEAD > item_size_max {
        return Command::TooLarge {
            op,
            key,
            len,
            noreply,
        };
    }
    Command::Store {
        op,
        key,
        flags,
        exptime,
        len,
        cas,
        noreply,
    }
}

/// memcached's `realtime(EXPTIME_TO_POSITIVE_TIME(exptime))` as an absolute Unix time: 0
/// never expires; up to 30 days is relative to `now`; larger values are Unix times
/// (already past ones expire at once); negative values expire at once.
pub fn expiry(exptime: i32, now: u32) -> u32 {
    match i64::from(exptime) {
        0 => 0,
        e if e < 0 => 1,
        e if e > REALTIME_MAXDELTA => e.clamp(1, i64::from(u32::MAX)) as u32,
        e => (i64::from(now) + e).min(i64::from(u32::MAX)) as u32,
    }
}

/// Writes `v` in decimal into `out`, returning the digits used (at most 20).
pub fn itoa(mut v: u64, out: &mut [u8; 20]) -> &[u8] {
    let mut i = out.len();
    loop {
        i -= 1;
        out[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    &out[i..]
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const MAX: usize = 1024 * 1024;

    #[test]
    fn header_round_trips() {
        let h = FrameHeader {
            request_id: 0x1234,
            seq: 2,
            count: 3,
            reserved: 0x8001,
        };
        let mut b = [0xa5u8; 8];
        assert!(h.write(&mut b));
        assert_eq!(b, [0x12, 0x34, 0, 2, 0, 3, 0x80, 1]);
        assert_eq!(FrameHeader::parse(&b), Some(h));
        assert_eq!(FrameHeader::parse(&b[..7]), None);
        assert!(!h.write(&mut [0u8; 7]));
        assert_eq!(datagrams(0), 1);
        assert_eq!(datagrams(MAX_CHUNK), 1);
        assert_eq!(datagrams(MAX_CHUNK + 1), 2);
    }

    #[test]
    fn lines_end_at_newline_drop_one_cr_and_stop_at_nul() {
        let b = b"get a\r\nget b\nver\0sion\r\n\r\n\nincomplete";
        let l = line_at(b, 0).unwrap();
        assert_eq!((l.text, l.next), (&b"get a"[..], 7));
        let l = line_at(b, l.next).unwrap();
        assert_eq!(l.text, b"get b");
        let l = line_at(b, l.next).unwrap();
        assert_eq!(l.text, b"ver");
        // "\r\n" alone: a one-byte line keeps its \r (memcached: `el - rcurr > 1`).
        let l = line_at(b, l.next).unwrap();
        assert_eq!(l.text, b"\r");
        let l = line_at(b, l.next).unwrap();
        assert_eq!(l.text, b"");
        assert_eq!(line_at(b, l.next), None);
        assert_eq!(line_at(b, 999), None);
    }

    #[test]
    fn tokens_collapse_spaces_and_stop_at_23() {
        let t = Tokens::new(b"  set  a\t 0 ");
        assert_eq!(t.ntokens(), 4);
        assert_eq!(t.get(1), b"a\t");
        assert_eq!(t.get(9), b"");
        let many: Vec<u8> = (0..30)
            .flat_map(|i| format!("k{i} ").into_bytes())
            .collect();
        let t = Tokens::new(&many);
        assert_eq!(t.ntokens(), MAX_TOKENS);
        assert_eq!(t.last(), b"k22");
        assert_eq!(keys(&many).count(), 29);
        assert!(Tokens::new(b"delete a noreply").noreply());
        assert!(!Tokens::new(b"").noreply());
    }

    #[test]
    fn numbers_follow_memcached_safe_strto() {
        assert_eq!(safe_strtoul(b"4294967295"), Some(u32::MAX));
        assert_eq!(safe_strtoul(b"4294967296"), Some(0));
        assert_eq!(safe_strtoul(b"-1"), None);
        assert_eq!(safe_strtoul(b"-0"), Some(0));
        assert_eq!(safe_strtoul(b"+7"), Some(7));
        assert_eq!(safe_strtoul(b"\t7"), Some(7));
        assert_eq!(safe_strtoul(b"7\t"), Some(7));
        assert_eq!(safe_strtoul(b"7x"), None);
        assert_eq!(safe_strtoul(b""), None);
        assert_eq!(safe_strtoul(b"x"), None);
        assert_eq!(safe_strtoul(b"18446744073709551616"), None);
        assert_eq!(safe_strtol(b"-1"), Some(-1));
        assert_eq!(safe_strtol(b"4294967297"), Some(1));
        assert_eq!(safe_strtol(b"9223372036854775807"), Some(-1));
        assert_eq!(safe_strtol(b"9223372036854775808"), None);
        assert_eq!(safe_strtol(b"-9223372036854775808"), Some(0));
        assert_eq!(safe_strtol(b"-9223372036854775809"), None);
        assert_eq!(safe_strtoull(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(safe_strtoull(b"18446744073709551616"), None);
        assert_eq!(safe_strtoull(b"-5"), None);
        assert_eq!(safe_strtoull(b" 12\r\n"), Some(12));
        assert_eq!(safe_strtoull(b"12 abc"), Some(12));
        assert_eq!(safe_strtoull(b"12abc"), None);
        assert_eq!(safe_strtoull(b"12\0x"), Some(12));
        let mut buf = [0u8; 20];
        assert_eq!(itoa(0, &mut buf), b"0");
        assert_eq!(itoa(u64::MAX, &mut buf), b"18446744073709551615");
    }

    #[test]
    fn commands_parse_like_memcached() {
        use Command::*;
        let p = |s: &'static str| parse(s.as_bytes(), MAX);
        assert_eq!(
            p("set a 1 2 3"),
            Store {
                op: StoreOp::Set,
                key: b"a",
                flags: 1,
                exptime: 2,
                len: 3,
                cas: 0,
                noreply: false
            }
        );
        assert!(matches!(
            p("cas a 0 0 1 99 noreply"),
            Store {
                cas: 99,
                noreply: true,
                ..
            }
        ));
        assert_eq!(p("set a 0 0"), reply(ERROR, false));
        assert_eq!(p("set a x 0 1"), reply(BAD_FORMAT, false));
        assert_eq!(p("set a x 0 1 noreply"), reply(BAD_FORMAT, true));
        assert_eq!(p("set a 0 0 -1"), reply(BAD_FORMAT, false));
        assert_eq!(p("set a 0 0 1 2 3"), reply(ERROR, false));
        assert!(matches!(p("set a 0 0 1 foo"), Store { noreply: false, .. }));
        assert!(matches!(
            p("set a 0 0 2000000"),
            TooLarge { len: 2_000_000, .. }
        ));
        assert_eq!(p(""), reply(ERROR, false));
        assert_eq!(p("g"), reply(ERROR, false));
        assert_eq!(p("get"), reply(ERROR, false));
        assert!(matches!(
            p("gets a b"),
            Get {
                cas: true,
                touch: None,
                ..
            }
        ));
        assert!(matches!(
            p("gat 10 a"),
            Get {
                cas: false,
                touch: Some(10),
                ..
            }
        ));
        assert_eq!(p("gat x a"), reply(BAD_EXPTIME, false));
        assert_eq!(p("gat 1 a").key(), Some(&b"a"[..]));
        assert_eq!(p("get b a").key(), Some(&b"b"[..]));
        assert_eq!(
            p("incr a x"),
            reply("CLIENT_ERROR invalid numeric delta argument", false)
        );
        assert_eq!(p("incr a"), reply(ERROR, false));
        assert!(matches!(
            p("decr a 5 noreply"),
            Arith {
                incr: false,
                delta: 5,
                noreply: true,
                ..
            }
        ));
        assert!(matches!(p("delete a 0"), Delete { noreply: false, .. }));
        assert!(matches!(
            p("delete a 0 noreply"),
            Delete { noreply: true, .. }
        ));
        assert!(matches!(
            p("delete a noreply"),
            Delete { noreply: true, .. }
        ));
        assert!(matches!(p("delete a 5"), Reply { noreply: false, .. }));
        assert!(matches!(
            p("delete a 5 noreply"),
            Reply { noreply: true, .. }
        ));
        assert_eq!(p("delete"), reply(ERROR, false));
        assert_eq!(p("touch a x"), reply(BAD_EXPTIME, false));
        assert!(matches!(
            p("flush_all"),
            FlushAll {
                delay: 0,
                noreply: false
            }
        ));
        assert!(matches!(
            p("flush_all noreply"),
            FlushAll {
                delay: 0,
                noreply: true
            }
        ));
        assert!(matches!(
            p("flush_all 10 noreply"),
            FlushAll {
                delay: 10,
                noreply: true
            }
        ));
        assert_eq!(p("flush_all x"), reply(BAD_EXPTIME, false));
        assert!(matches!(
            p("flush_all 0 junk"),
            FlushAll {
                delay: 0,
                noreply: false
            }
        ));
        assert_eq!(p("verbosity"), reply(ERROR, false));
        assert!(matches!(p("verbosity 1"), Verbosity { noreply: false }));
        assert_eq!(p("verbosity noreply"), reply(BAD_FORMAT, true));
        assert_eq!(p("version extra"), Version);
        assert_eq!(p("quit"), Quit);
        assert_eq!(p("GET a"), reply(ERROR, false));
        assert_eq!(p("stats"), Stats(StatsCmd::General));
        assert_eq!(p("stats reset"), Stats(StatsCmd::Reset));
        assert_eq!(p("stats foo"), reply(ERROR, false));
        assert_eq!(p("GET / HTTP/1.1"), Close);
        let long = format!("get {}", "k".repeat(251));
        assert!(matches!(parse(long.as_bytes(), MAX), Get { .. }));
        let long = format!("set {} 0 0 1", "k".repeat(251));
        assert_eq!(parse(long.as_bytes(), MAX), reply(BAD_FORMAT, false));
    }

    #[test]
    fn expiry_is_relative_absolute_or_past() {
        assert_eq!(expiry(0, 1000), 0);
        assert_eq!(expiry(10, 1000), 1010);
        assert_eq!(expiry(-1, 1000), 1);
        assert_eq!(
            expiry(REALTIME_MAXDELTA as i32, 1000),
            1000 + REALTIME_MAXDELTA as u32
        );
        assert_eq!(
            expiry(REALTIME_MAXDELTA as i32 + 1, 1000),
            REALTIME_MAXDELTA as u32 + 1
        );
        assert_eq!(expiry(i32::MAX, 1000), i32::MAX as u32);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Any bytes: lines, tokens and commands never panic, and a parsed key is always a
        /// token of the line no longer than 250 bytes (except a get's, checked later).
        #[test]
        fn parse_never_panics(b in prop::collection::vec(any::<u8>(), 0..400)) {
            let mut pos = 0;
            while let Some(l) = line_at(&b, pos) {
                prop_assert!(l.next > pos);
                let c = parse(l.text, MAX);
                if let Some(k) = c.key() {
                    prop_assert!(!k.is_empty() && !k.contains(&b' '));
                }
                if let Command::Store { key, .. } = c {
                    prop_assert!(key.len() <= KEY_MAX);
                }
                pos = l.next;
            }
            let _ = FrameHeader::parse(&b);
            let _ = safe_strtoull(&b);
            let _ = safe_strtol(&b);
            let _ = safe_strtoul(&b);
        }

        /// Words from the protocol's vocabulary in any order: still no panic, and the
        /// token counts agree with a naive split.
        #[test]
        fn vocabulary_soup_never_panics(words in prop::collection::vec(prop::sample::select(vec![
            "get", "gets", "gat", "set", "add", "cas", "incr", "decr", "delete", "touch",
            "flush_all", "stats", "noreply", "0", "-1", "4294967296", "99999999999999999999",
            "k", " ", "\t", "+5", "HTTP/1.0", "reset", "detail", "version", "quit",
        ]), 0..30)) {
            let line = words.join(" ");
            let c = parse(line.as_bytes(), MAX);
            let naive = line.split(' ').filter(|t| !t.is_empty()).count();
            prop_assert_eq!(Tokens::new(line.as_bytes()).ntokens(), naive.min(23) + 1);
            let _ = c.key();
        }

        /// Numbers: safe_strtoull agrees with Rust's parser on plain digit strings.
        #[test]
        fn plain_numbers_agree_with_rust(v in any::<u64>()) {
            let s = v.to_string();
            prop_assert_eq!(safe_strtoull(s.as_bytes()), Some(v));
            prop_assert_eq!(safe_strtoul(s.as_bytes()), Some(v as u32));
            let mut buf = [0u8; 20];
            prop_assert_eq!(itoa(v, &mut buf), s.as_bytes());
        }
    }
}
