//! The scripted request sequence of the differential tests: the same datagrams go to a
//! real `memcached -U` and to slipstream's kv, and the answers must be the same, message
//! by message and datagram count by datagram count, except where they legitimately
//! differ: the version string, `stats` values (and which stats exist), and CAS uniques
//! (normalized to `<cas>`; a `cas` command uses the value the same server gave).
//!
//! Left out on purpose (tested against our own expectations instead, see the crate docs):
//! requests memcached answers by reading later datagrams as their continuation (a data
//! block longer than the datagram, `set` of an item that is too large, whose swallow
//! crosses datagrams) and multi-packet requests (memcached 1.6.18 drops its own error).

#![allow(dead_code)]

use super::Reply;

/// One request datagram of the script.
#[derive(Debug, Clone)]
pub struct Step {
    /// The payload; `{cas}` and `{cas+1}` are replaced by the CAS unique this server last
    /// returned.
    pub payload: Vec<u8>,
    /// Answers are compared only for their shape (`stats`).
    pub shape_only: bool,
}

fn step(p: impl Into<Vec<u8>>) -> Step {
    Step {
        payload: p.into(),
        shape_only: false,
    }
}

fn data(cmd: &str, value: &[u8]) -> Vec<u8> {
    let mut v = cmd.as_bytes().to_vec();
    v.extend_from_slice(b"\r\n");
    v.extend_from_slice(value);
    v.extend_from_slice(b"\r\n");
    v
}

/// The script: every command, its error lines, noreply, pipelined commands, multi-key gets
/// and answers longer than one datagram.
pub fn script() -> Vec<Step> {
    let long = "k".repeat(251);
    let big: Vec<u8> = (0..1300u32).map(|i| b'A' + (i % 26) as u8).collect();
    let mut s = vec![
        step("version\r\n"),
        step(data("set a 0 0 5", b"hello")),
        step("get a\r\n"),
        step("gets a\r\n"),
        step("get a b c\r\n"),
        step(data("set b 42 0 3", b"xyz")),
        step("get a b c\r\n"),
        step("gets a b\r\n"),
        step(data("add a 0 0 1", b"x")),
        step(data("add c 7 0 2", b"cc")),
        step(data("replace d 0 0 1", b"d")),
        step(data("replace c 0 0 3", b"ccc")),
        step(data("append c 0 0 2", b"++")),
        step(data("prepend c 0 0 2", b"--")),
        step("get c\r\n"),
        step(data("append zz 0 0 1", b"x")),
        step(data("prepend zz 0 0 1", b"x")),
        step("gets a\r\n"),
        step(data("cas a 0 0 3 {cas+1}", b"new")),
        step(data("cas a 0 0 3 {cas}", b"new")),
        step(data("cas zz 0 0 1 1", b"x")),
        step(data("cas a 0 0 1", b"x")),
        step(data("cas a 0 0 1 abc", b"x")),
        step("get a\r\n"),
        step(data("set n 0 0 2", b"10")),
        step("incr n 5\r\n"),
        step("decr n 20\r\n"),
        step("incr n 18446744073709551615\r\n"),
        step("get n\r\n"),
        step(data("set n 0 0 20", b"18446744073709551615")),
        step("incr n 1\r\n"),
        step("get n\r\n"),
        step(data("set n 0 0 3", b"100")),
        step("decr n 1\r\n"),
        step("get n\r\n"),
        step(data("set n 0 0 3", b" 12")),
        step("incr n 1\r\n"),
        step(data("set t 0 0 3", b"abc")),
        step("incr t 1\r\n"),
        step("decr nokey 1\r\n"),
        step("incr n x\r\n"),
        step("incr n -1\r\n"),
        step("incr n\r\n"),
        step("touch a 100\r\n"),
        step("touch nokey 10\r\n"),
        step("touch a\r\n"),
        step("touch a x\r\n"),
        step("gat 100 a b zz\r\n"),
        step("gats 0 a\r\n"),
        step("bget a\r\n"),
        step("delete b\r\n"),
        step("delete b\r\n"),
        step("delete c 0\r\n"),
        step("delete a 5\r\n"),
        step("delete a 5 noreply\r\n"),
        step("delete\r\n"),
        step(data("set e 0 -1 1", b"x")),
        step("get e\r\n"),
        step(data("set f 4294967296 0 1", b"x")),
        step(data("set f2 4294967295 0 1", b"y")),
        step("get f f2\r\n"),
        step(data("set g -1 0 1", b"x")),
        step(data("set h 0 0 -1", b"x")),
        step(data("set h 0 0", b"x")),
        step(data("set h 0 0 1 2 3", b"x")),
        step(data("set h 0 0 1 junk", b"h")),
        step("get h\r\n"),
        step(data(&format!("set {long} 0 0 1"), b"x")),
        step(format!("get {long}\r\n")),
        step(
            data("set i 0 0 1", b"i")
                .into_iter()
                .chain(format!("get i {long}\r\n").into_bytes())
                .collect::<Vec<u8>>(),
        ),
        step(data("set j 0 0 3", b"abcd")),
        step(data("set k 0 0 1 noreply", b"x")),
        step("get k\r\n"),
        step("incr k 1 noreply\r\n"),
        step(data("set k 0 0 1", b"5")),
        step("incr k 1 noreply\r\nget k\r\n"),
        step("delete zz noreply\r\n"),
        step(
            data("set m 0 0 1", b"1")
                .into_iter()
                .chain(b"get m\r\nincr m 2\r\nget m\r\n".iter().copied())
                .collect::<Vec<u8>>(),
        ),
        step(data("set t\tx 0 0 1", b"q")),
        step("get t\tx\r\n"),
        step("get a\0b c\r\n"),
        // An empty first message (a missed first key) is sent as a datagram of count 0;
        // empty messages after a sent one are not.
        step("get zz yy\r\n"),
        step("get zz yy xx\r\n"),
        step(
            data("set q 0 0 1 noreply", b"q")
                .into_iter()
                .chain(b"get zz yy\r\n".iter().copied())
                .collect::<Vec<u8>>(),
        ),
        step("get q zz yy\r\n"),
        step("get zz q\r\n"),
        step("gat 10 zz yy\r\n"),
        step("version\r\nquit\r\n"),
        step(
            data("set q 0 0 1 noreply", b"q")
                .into_iter()
                .chain(b"quit\r\n".iter().copied())
                .collect::<Vec<u8>>(),
        ),
        step("get a\tb\r\n"),
        step("\r\n"),
        step("\n"),
        step("GET a\r\n"),
        step("gets\r\n"),
        step("get\r\n"),
        step("bogus stuff\r\n"),
        step("g\r\n"),
        step("verbosity 1\r\n"),
        step("verbosity\r\n"),
        step("verbosity noreply\r\nverbosity 1 noreply\r\nverbosity 1 2\r\n"),
        step("shutdown\r\n"),
        step("mn\r\n"),
        step("cache_memlimit 4\r\n"),
        step("cache_memlimit x\r\n"),
        step("cache_memlimit 2000000000\r\n"),
        step("stats reset\r\n"),
        step("stats detail\r\n"),
        step("stats detail on\r\n"),
        step("stats detail off\r\n"),
        step("stats foo\r\n"),
        Step {
            payload: b"stats\r\n".to_vec(),
            shape_only: true,
        },
        step("flush_all x\r\n"),
        step("flush_all 0 junk\r\n"),
        step("get a f f2 h i m\r\n"),
    ];
    // Answers longer than one datagram: values of 1300 bytes, several of them in one get,
    // and one value grown by appends past three datagrams.
    for k in ["big1", "big2", "big3", "big4"] {
        s.push(step(data(&format!("set {k} 0 0 1300"), &big)));
    }
    s.push(step("get big1 big2 nope big3 big4\r\n"));
    for _ in 0..3 {
        s.push(step(data("append big1 0 0 1300", &big)));
    }
    s.push(step("get big1\r\n"));
    s.push(step("gets big1 big2\r\n"));
    // Many small keys in one get (several partitions when there are several).
    for i in 0..40 {
        s.push(step(data(
            &format!("set key:{i} {i} 0 {}", 3 + i % 7),
            &b"abcdefghij"[..3 + i % 7],
        )));
    }
    let keys: Vec<String> = (0..40).map(|i| format!("key:{i}")).collect();
    s.push(step(format!("get {}\r\n", keys.join(" "))));
    s.push(step(format!("get {} nokey\r\n", keys.join(" "))));
    s.push(step("flush_all\r\n"));
    s.push(step("get big1 key:1 a\r\n"));
    s.push(step(data("set after 0 0 5", b"flush")));
    s.push(step("get after\r\n"));
    s.push(step("flush_all noreply\r\nget after\r\n"));
    s.push(step("quit\r\nversion\r\n"));
    s.push(step("version\r\n"));
    s
}

/// The payload to send: placeholders replaced with `cas`.
pub fn render(step: &Step, cas: u64) -> Vec<u8> {
    let text = String::from_utf8_lossy(&step.payload);
    if !text.contains("{cas") {
        return step.payload.clone();
    }
    text.replace("{cas+1}", &(cas + 1).to_string())
        .replace("{cas}", &cas.to_string())
        .into_bytes()
}

/// One message of an answer, normalized, with its datagram count.
pub type Message = (Vec<u8>, u16);

/// The messages of one request's datagrams (reassembled, see `super::messages`), with
/// legitimately differing fields normalized, and the last CAS unique seen.
pub fn normalize(replies: &[Reply], shape_only: bool, cas: &mut u64) -> Vec<Message> {
    let counts: Vec<u16> = replies
        .iter()
        .filter(|r| r.seq == 0)
        .map(|r| r.count)
        .collect();
    let msgs = super::messages(replies);
    msgs.into_iter()
        .zip(counts)
        .map(|(m, n)| {
            if shape_only {
                let ok = m.starts_with(b"STAT ") && m.ends_with(b"END\r\n");
                return (if ok { b"<stats>".to_vec() } else { m }, 0);
            }
            (normalize_text(&m, cas), n)
        })
        .collect()
}

fn normalize_text(m: &[u8], cas: &mut u64) -> Vec<u8> {
    if m.starts_with(b"VERSION ") {
        return b"VERSION <version>\r\n".to_vec();
    }
    // VALUE lines with a fifth token carry a CAS unique.
    let mut out = Vec::with_capacity(m.len());
    let mut rest = m;
    while !rest.is_empty() {
        let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
            out.extend_from_slice(rest);
            break;
        };
        let line = &rest[..=nl];
        rest = &rest[nl + 1..];
        if line.starts_with(b"VALUE ") {
            let text = String::from_utf8_lossy(&line[..line.len() - 2]).to_string();
            let t: Vec<&str> = text.split(' ').collect();
            if t.len() == 5 {
                if let Ok(c) = t[4].parse() {
                    *cas = c;
                }
                out.extend_from_slice(
                    format!("{} {} {} {} <cas>\r\n", t[0], t[1], t[2], t[3]).as_bytes(),
                );
            } else {
                out.extend_from_slice(line);
            }
            // The data block follows: copy `bytes` + 2 as they are.
            let n: usize = t.get(3).and_then(|x| x.parse().ok()).unwrap_or(0);
            let take = (n + 2).min(rest.len());
            out.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
        } else {
            out.extend_from_slice(line);
        }
    }
    out
}
