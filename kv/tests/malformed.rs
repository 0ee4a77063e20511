//! Property tests: whatever arrives on the kv port — random bytes, valid requests with
//! bytes flipped or cut, random frame headers — the handler never panics, every request it
//! takes is answered or consumed, every answer is well-formed memcached UDP (frame header
//! with the request's id, datagrams of at most 1400 bytes, correct checksums) made only of
//! lines memcached sends, and every frame goes back to its pool.

mod common;

use std::sync::Arc;

use dataplane::mem::{Cache, FramePool, Options, PoolId};
use dataplane::{Context, DropReason, Emit, Frame, Handler, QueueId, Verdict, WorkerId};
use proptest::prelude::*;

fn pool() -> Arc<FramePool> {
    FramePool::new(
        PoolId(0),
        "kv-prop",
        512,
        2048,
        Options {
            hugepages: false,
            numa_node: None,
        },
    )
    .unwrap()
}

/// The lines memcached answers with (a data block after `VALUE` is skipped).
fn known_line(l: &str) -> bool {
    const EXACT: &[&str] = &[
        "ERROR",
        "STORED",
        "NOT_STORED",
        "EXISTS",
        "NOT_FOUND",
        "DELETED",
        "TOUCHED",
        "OK",
        "END",
        "RESET",
        "MN",
    ];
    EXACT.contains(&l)
        || l.starts_with("CLIENT_ERROR ")
        || l.starts_with("SERVER_ERROR ")
        || l.starts_with("ERROR: ")
        || l.starts_with("VERSION ")
        || l.starts_with("STAT ")
        || l.starts_with("MEMLIMIT_")
        || l.chars().all(|c| c.is_ascii_digit()) && !l.is_empty()
}

fn check_text(text: &[u8]) -> Result<(), String> {
    let mut rest = text;
    while !rest.is_empty() {
        let nl = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or_else(|| format!("unterminated line in {:?}", String::from_utf8_lossy(text)))?;
        let line = String::from_utf8_lossy(&rest[..nl]).to_string();
        rest = &rest[nl + 2..];
        if let Some(v) = line.strip_prefix("VALUE ") {
            let n: usize = v
                .split(' ')
                .nth(2)
                .and_then(|x| x.parse().ok())
                .ok_or_else(|| format!("bad VALUE line {line:?}"))?;
            if rest.len() < n + 2 || &rest[n..n + 2] != b"\r\n" {
                return Err(format!("bad data block after {line:?}"));
            }
            rest = &rest[n + 2..];
        } else if !known_line(&line) {
            return Err(format!("unknown line {line:?}"));
        }
    }
    Ok(())
}

/// Runs `requests` (Ethernet frames) through one handler instance as one burst; checks
/// the properties and returns the answers' datagrams.
fn burst(
    h: &mut dyn Handler,
    pool: &Arc<FramePool>,
    requests: &[Vec<u8>],
) -> Result<usize, String> {
    let mut caches = vec![Cache::new(pool.clone(), 32)];
    let mut frames: Vec<Frame> = Vec::new();
    for r in requests {
        let mut f = caches[0].alloc().ok_or("pool empty")?;
        if !f.try_fill(r) {
            caches[0].free(f);
            continue;
        }
        match dataplane::wire::parse(f.data()) {
            Ok(l) => {
                f.meta.layout = l;
                f.meta.rx = QueueId::new(0, 0);
                frames.push(f);
            }
            Err(_) => caches[0].free(f),
        }
    }
    let mut verdicts = vec![Verdict::Next; frames.len()];
    let mut out = Vec::with_capacity(frames.len() * 16);
    let cx = Context {
        worker: WorkerId(0),
        workers: 1,
        now_ns: 0,
    };
    let mut emit = Emit::new(&mut caches, &mut out);
    h.process_emit(&mut frames, &mut verdicts, &cx, &mut emit);
    let mut answers = Vec::new();
    for (f, v) in frames.into_iter().zip(verdicts) {
        match v {
            Verdict::Tx(q) if q == QueueId::new(0, 0) => answers.push(f),
            Verdict::Next | Verdict::Drop(DropReason::Consumed | DropReason::BadChecksum) => {
                caches[0].free(f)
            }
            other => {
                caches[0].free(f);
                return Err(format!("unexpected verdict {other:?}"));
            }
        }
    }
    for (f, v) in out.drain(..) {
        if v != Verdict::Tx(QueueId::new(0, 0)) {
            caches[0].free(f);
            return Err(format!("unexpected emitted verdict {v:?}"));
        }
        answers.push(f);
    }
    let n = answers.len();
    let mut replies = Vec::new();
    for f in answers {
        let r = std::panic::catch_unwind(|| common::parse_reply(f.data()));
        caches[0].free(f);
        let r = r.map_err(|_| "an answer does not parse".to_string())?;
        if r.payload.len() > 1392 {
            return Err(format!("datagram of {} bytes", r.payload.len()));
        }
        replies.push(r);
    }
    // Per request id, every message is well-formed text.
    replies.sort_by_key(|r| r.id);
    for chunk in replies.chunk_by(|a, b| a.id == b.id) {
        let msgs = std::panic::catch_unwind(|| common::messages(chunk))
            .map_err(|_| "datagrams do not form messages".to_string())?;
        for m in msgs {
            check_text(&m)?;
        }
    }
    drop(caches);
    if pool.available() != pool.total() {
        return Err(format!(
            "{} frames not returned",
            pool.total() - pool.available()
        ));
    }
    Ok(n)
}

fn handler() -> Box<dyn Handler> {
    let specs = common::specs(&common::kv_table("memory_mb = 2\nitem_size_max = 4096"));
    specs[0].build()
}

fn frame(id: u16, payload: &[u8]) -> Vec<u8> {
    common::request_frame(40000, &common::datagram(id, payload))
}

const VALID: &[&str] = &[
    "set k 1 0 5\r\nhello\r\n",
    "get k k2 k3\r\n",
    "gets k\r\n",
    "add k 0 0 1\r\nx\r\n",
    "append k 0 0 2\r\nab\r\n",
    "cas k 0 0 1 3\r\nx\r\n",
    "incr n 7\r\n",
    "decr n 1\r\n",
    "delete k 0 noreply\r\n",
    "touch k 10\r\n",
    "gat 10 k n\r\n",
    "flush_all 0\r\n",
    "stats\r\n",
    "stats settings\r\n",
    "version\r\nquit\r\n",
    "verbosity 1\r\n",
    "cache_memlimit 8\r\n",
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    /// Random payloads behind a valid frame header.
    #[test]
    fn random_payloads(reqs in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..600), 1..24)) {
        let pool = pool();
        let mut h = handler();
        let frames: Vec<Vec<u8>> = reqs.iter().enumerate().map(|(i, r)| frame(i as u16, r)).collect();
        burst(h.as_mut(), &pool, &frames).map_err(TestCaseError::fail)?;
    }

    /// Valid requests, then bytes flipped, cut or a random frame header.
    #[test]
    fn mutated_requests(
        picks in prop::collection::vec((0..VALID.len(), prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4), any::<prop::sample::Index>(), any::<bool>()), 1..24),
        header in prop::array::uniform8(any::<u8>()),
    ) {
        let pool = pool();
        let mut h = handler();
        let mut frames = Vec::new();
        for (i, (pick, flips, cut, raw_header)) in picks.into_iter().enumerate() {
            let mut p = VALID[pick].as_bytes().to_vec();
            for (at, b) in flips {
                let n = p.len();
                p[at.index(n)] = b;
            }
            let n = p.len();
            p.truncate(cut.index(n + 1));
            let mut d = common::datagram(i as u16, &p);
            if raw_header {
                d[..8].copy_from_slice(&header);
            }
            frames.push(common::request_frame(40000, &d));
        }
        // Twice through the same instance: state left by the first burst is exercised too.
        burst(h.as_mut(), &pool, &frames).map_err(TestCaseError::fail)?;
        burst(h.as_mut(), &pool, &frames).map_err(TestCaseError::fail)?;
    }

    /// A valid large request in IPv4 fragments, shuffled, duplicated, cut or corrupted:
    /// reassembly never panics and anything answered is well-formed.
    #[test]
    fn fragments_in_any_state(
        mtu in 68usize..1500,
        order in prop::collection::vec(any::<prop::sample::Index>(), 0..12),
        flip in prop::option::of((any::<prop::sample::Index>(), any::<prop::sample::Index>(), any::<u8>())),
        value in 100usize..3000,
    ) {
        let pool = pool();
        let mut h = handler();
        let req = [format!("set big 0 0 {value}\r\n").into_bytes(), vec![b'x'; value], b"\r\nget big\r\n".to_vec()].concat();
        let all = common::fragments(&frame(1, &req), mtu, 7);
        let mut frames: Vec<Vec<u8>> = if order.is_empty() {
            all.clone()
        } else {
            order.iter().map(|i| all[i.index(all.len())].clone()).collect()
        };
        if let Some((f, at, b)) = flip {
            let n = frames.len();
            let fr = &mut frames[f.index(n)];
            let m = fr.len();
            fr[at.index(m)] = b;
        }
        burst(h.as_mut(), &pool, &frames).map_err(TestCaseError::fail)?;
    }

    /// Whole frames of random bytes with the layout the receive path would give them.
    #[test]
    fn random_frames(frames in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..200), 1..16)) {
        let pool = pool();
        let mut h = handler();
        burst(h.as_mut(), &pool, &frames).map_err(TestCaseError::fail)?;
    }
}

/// Every valid request of the vocabulary gets an answer (or is noreply), as a sanity check
/// that the properties above look at answers at all.
#[test]
fn the_vocabulary_is_answered() {
    let pool = pool();
    let mut h = handler();
    let frames: Vec<Vec<u8>> = VALID
        .iter()
        .enumerate()
        .map(|(i, r)| frame(i as u16, r.as_bytes()))
        .collect();
    let n = burst(h.as_mut(), &pool, &frames).unwrap();
    assert!(n >= VALID.len() - 1, "{n} answers");
}
