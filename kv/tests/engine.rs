//! The kv handler in the real engine and workers, on memory ports: the protocol end to end,
//! key ownership across cores (requests forwarded to the owner, answers routed back to
//! the receiving queue), multi-datagram answers counted as generated, live settings
//! without losing a request, and the per-core counters in the engine's report.

mod common;

use std::collections::BTreeMap;

use common::{datagram, kv_table, messages, show, Reply, Rig};

fn set(key: &str, value: &[u8]) -> Vec<u8> {
    let mut r = format!("set {key} 0 0 {}\r\n", value.len()).into_bytes();
    r.extend_from_slice(value);
    r.extend_from_slice(b"\r\n");
    r
}

#[test]
fn protocol_round_trip_on_one_core() {
    let mut rig = Rig::new(1, &kv_table("memory_mb = 4"));
    assert_eq!(rig.ask(&set("a", b"hello")), b"STORED\r\n");
    assert_eq!(rig.ask(b"get a\r\n"), b"VALUE a 0 5\r\nhello\r\nEND\r\n");
    assert_eq!(rig.ask(b"get nope\r\n"), b"END\r\n");
    assert_eq!(rig.ask(b"add a 0 0 1\r\nx\r\n"), b"NOT_STORED\r\n");
    assert_eq!(rig.ask(b"append a 0 0 1\r\n!\r\n"), b"STORED\r\n");
    assert_eq!(rig.ask(b"prepend a 0 0 1\r\n<\r\n"), b"STORED\r\n");
    let g = rig.ask(b"gets a\r\n");
    let text = String::from_utf8(g.clone()).unwrap();
    assert!(text.starts_with("VALUE a 0 7 "), "{text}");
    assert!(text.ends_with("\r\n<hello!\r\nEND\r\n"), "{text}");
    let cas: u64 = text["VALUE a 0 7 ".len()..]
        .split("\r\n")
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        rig.ask(format!("cas a 0 0 1 {}\r\nz\r\n", cas + 1).as_bytes()),
        b"EXISTS\r\n"
    );
    assert_eq!(
        rig.ask(format!("cas a 0 0 1 {cas}\r\nz\r\n").as_bytes()),
        b"STORED\r\n"
    );
    assert_eq!(rig.ask(b"set n 3 0 2\r\n10\r\n"), b"STORED\r\n");
    assert_eq!(rig.ask(b"incr n 5\r\n"), b"15\r\n");
    assert_eq!(rig.ask(b"decr n 100\r\n"), b"0\r\n");
    assert_eq!(rig.ask(b"get n\r\n"), b"VALUE n 3 2\r\n0 \r\nEND\r\n");
    assert_eq!(rig.ask(b"touch n 100\r\n"), b"TOUCHED\r\n");
    assert_eq!(rig.ask(b"delete n\r\n"), b"DELETED\r\n");
    assert_eq!(rig.ask(b"delete n\r\n"), b"NOT_FOUND\r\n");
    assert_eq!(rig.ask(b"set q 0 0 1 noreply\r\nq\r\n"), b"");
    assert_eq!(rig.ask(b"bogus\r\n"), b"ERROR\r\n");
    assert_eq!(
        rig.ask(b"version\r\n"),
        format!("VERSION {}\r\n", kv::exec::VERSION).as_bytes()
    );
    assert_eq!(rig.ask(b"flush_all\r\n"), b"OK\r\n");
    assert_eq!(rig.ask(b"get a q\r\n"), b"END\r\n");
    // Several commands in one datagram: one message each.
    let m = rig.ask_on(0, b"set x 0 0 1\r\n1\r\nget x\r\nincr x 1\r\n");
    assert_eq!(
        m,
        vec![
            b"STORED\r\n".to_vec(),
            b"VALUE x 0 1\r\n1\r\nEND\r\n".to_vec(),
            b"2\r\n".to_vec()
        ]
    );
    let s = String::from_utf8(rig.ask(b"stats\r\n")).unwrap();
    assert!(s.starts_with("STAT pid "), "{s}");
    assert!(s.contains("STAT get_hits "), "{s}");
    assert!(s.ends_with("END\r\n"), "{s}");
    rig.stop();
}

/// memcached's framing rules: datagrams of 8 bytes or less are ignored, a count other than
/// 1 is refused, a bad UDP checksum is dropped, `quit` answers with an empty message.
#[test]
fn framing_edge_cases() {
    let mut rig = Rig::new(1, &kv_table("memory_mb = 4"));
    let sport = rig.sport();
    rig.send(0, sport, &[0, 1, 0, 0, 0, 1, 0, 0]);
    rig.send(0, sport, b"abc");
    assert!(rig.settle().is_empty());
    let mut multi = datagram(9, b"get a\r\n");
    multi[5] = 2;
    rig.send(0, sport, &multi);
    let r = rig.settle();
    assert_eq!(r.len(), 1);
    assert_eq!(
        r[0].1.payload,
        b"SERVER_ERROR multi-packet request not supported\r\n"
    );
    let mut f = common::request_frame(sport, &datagram(3, b"version\r\n"));
    let n = f.len();
    f[n - 1] ^= 0xff;
    rig.inject(0, &f);
    assert!(rig.settle().is_empty());
    rig.send(0, sport, &datagram(4, b"quit\r\nversion\r\n"));
    let r = rig.settle();
    assert_eq!(r.len(), 1);
    assert_eq!((r[0].1.id, r[0].1.seq, r[0].1.count), (4, 0, 0));
    assert!(r[0].1.payload.is_empty());
    let report = rig.stop();
    let drops = report.drops();
    assert_eq!(drops.get(dataplane::DropReason::Consumed), 2);
    assert_eq!(drops.get(dataplane::DropReason::BadChecksum), 1);
}

/// Long answers are split into numbered datagrams of at most 1400 bytes; the extra ones
/// are generated frames and conservation still holds.
#[test]
fn multi_datagram_answers_are_numbered_and_accounted() {
    let mut rig = Rig::new(1, &kv_table("memory_mb = 4"));
    let big: Vec<u8> = (0..1300).map(|i| b'a' + (i % 26) as u8).collect();
    for k in ["b1", "b2", "b3"] {
        assert_eq!(rig.ask(&set(k, &big)), b"STORED\r\n");
    }
    // Three keys: three messages (one per key, as memcached 1.6 sends them).
    let m = rig.ask_on(0, b"get b1 b2 zz b3\r\n");
    assert_eq!(m.len(), 3, "{m:?}");
    let mut want = Vec::new();
    for k in ["b1", "b2", "b3"] {
        want.extend_from_slice(format!("VALUE {k} 0 1300\r\n").as_bytes());
        want.extend_from_slice(&big);
        want.extend_from_slice(b"\r\n");
    }
    want.extend_from_slice(b"END\r\n");
    assert_eq!(m.concat(), want);
    // Appends make one value longer than a datagram.
    for _ in 0..3 {
        assert_eq!(
            rig.ask(&[b"append b1 0 0 1300\r\n".as_slice(), &big, b"\r\n"].concat()),
            b"STORED\r\n"
        );
    }
    let sport = rig.sport();
    rig.send(0, sport, &datagram(5, b"get b1\r\n"));
    let replies: Vec<_> = rig.settle().into_iter().map(|(_, r)| r).collect();
    assert_eq!(replies.len(), 4, "5200+ bytes: 4 datagrams");
    assert!(replies
        .iter()
        .all(|r| r.count == 4 && r.payload.len() <= 1392));
    assert_eq!(
        messages(&replies)[0].len(),
        "VALUE b1 0 5200\r\n".len() + 5200 + 7
    );
    let r = rig.stop();
    // Two extra datagrams for the three-key get, three for the 5200-byte value.
    assert_eq!(r.generated(), 2 + 3);
    assert_eq!(r.drops().total(), 0);
}

/// Two cores, two partitions, every request arriving on queue 0: the keys of the other
/// partition go to w1 and come back out of p0:q0; a multi-key get visits both owners and
/// the answer still reads like memcached's.
#[test]
fn keys_are_served_by_their_owner() {
    let mut rig = Rig::new(2, &kv_table("memory_mb = 8\nworkers = [0, 1]"));
    let keys: Vec<String> = (0..64).map(|i| format!("key:{i}")).collect();
    for k in &keys {
        assert_eq!(rig.ask(&set(k, k.as_bytes())), b"STORED\r\n", "{k}");
    }
    for k in &keys {
        let want = format!("VALUE {k} 0 {}\r\n{k}\r\nEND\r\n", k.len());
        assert_eq!(
            show(&rig.ask(format!("get {k}\r\n").as_bytes())),
            show(want.as_bytes())
        );
    }
    // Queue 1 (worker 1) receives too.
    assert_eq!(
        rig.ask_on(1, b"get key:1\r\n").concat(),
        b"VALUE key:1 0 5\r\nkey:1\r\nEND\r\n"
    );
    let line = format!("get {}\r\n", keys.join(" "));
    let m = rig.ask_on(0, line.as_bytes());
    let mut want = String::new();
    for k in &keys {
        want += &format!("VALUE {k} 0 {}\r\n{k}\r\n", k.len());
    }
    want += "END\r\n";
    assert_eq!(m.len(), keys.len());
    assert_eq!(show(&m.concat()), show(want.as_bytes()));
    let s = rig.kv_stats();
    let (w0, w1) = (&s[&0], &s[&1]);
    assert!(w0["items"] > 10 && w1["items"] > 10, "{s:?}");
    assert_eq!(w0["items"] + w1["items"], 64);
    assert!(w0["forwarded"] > 0, "{s:?}");
    assert!(w0["hits"] > 0 && w1["hits"] > 0);
    assert_eq!(w0["hits"] + w1["hits"], 64 + 1 + 64);
    let r = rig.stop();
    let w = r.worker_totals();
    assert!(w.ring_in > 0 && w.ring_in == w.ring_out);
    assert_eq!(r.drops().total(), 0);
}

/// Budget cuts and raises and flushes through chain updates while a client keeps
/// requests in flight: every request is answered, items survive a budget change, a flush
/// empties every partition.
#[test]
fn live_settings_lose_no_request() {
    let table = |mem: u64, flush: u64| {
        kv_table(&format!(
            "name = \"live\"\nworkers = [0, 1]\nmemory_mb = {mem}\nmax_memory_mb = 16\nflush = {flush}"
        ))
    };
    let mut rig = Rig::new(2, &table(16, 0));
    let value = vec![b'v'; 1000];
    let mut sent = 0u64;
    let mut answered = 0u64;
    let mut version = rig.engine().chain().version;
    for round in 0..12u64 {
        // A burst of sets and gets on both queues, then a settings change mid-flight.
        for i in 0..400u64 {
            let k = format!("r{round}k{i}");
            let q = (i % 2) as u16;
            rig.send(
                q,
                30000 + (i % 100) as u16,
                &datagram(i as u16, &set(&k, &value)),
            );
            rig.send(
                q,
                30000 + (i % 100) as u16,
                &datagram(i as u16, format!("get {k}\r\n").as_bytes()),
            );
            sent += 2;
        }
        let mem = [16, 4, 2, 16][round as usize % 4];
        let flush = u64::from(round == 9);
        version = rig
            .engine()
            .set_handlers(Some(version), common::specs(&table(mem, flush)))
            .unwrap();
        answered += rig.settle().len() as u64;
        if round == 0 || round == 8 {
            // Same budget before and after this update: nothing of this round was lost.
            let k = format!("r{round}k7");
            let want = [
                format!("VALUE {k} 0 1000\r\n").as_bytes(),
                &value,
                b"\r\nEND\r\n",
            ]
            .concat();
            assert_eq!(
                show(&rig.ask(format!("get {k}\r\n").as_bytes())),
                show(&want)
            );
            answered += 1;
            sent += 1;
        }
    }
    assert_eq!(answered, sent, "every request answered once");
    assert_eq!(rig.ask(b"get r8k7\r\n"), b"END\r\n", "flushed in round 9");
    let s = rig.kv_stats();
    assert!(
        s[&0]["evictions"] + s[&1]["evictions"] > 0,
        "the 2 MiB budget evicted: {s:?}"
    );
    assert!(
        s[&0]["budget"] == 8 << 20 && s[&1]["budget"] == 8 << 20,
        "{s:?}"
    );
    let r = rig.stop();
    assert_eq!(r.drops().total(), 0);
}

/// A request larger than the MTU arrives in IPv4 fragments (as `memcslap --udp` sends
/// them); they are reassembled on the key's owner, on whichever queue they arrive, and the
/// answer is memcached's.
#[test]
fn fragmented_requests_are_reassembled_on_the_owner() {
    let mut rig = Rig::new(2, &kv_table("memory_mb = 8\nworkers = [0, 1]"));
    let value: Vec<u8> = (0..4000u32).map(|i| b'a' + (i % 26) as u8).collect();
    for (i, key) in ["frag:1", "frag:2", "frag:3", "frag:4"].iter().enumerate() {
        let sport = rig.sport();
        let frame = common::request_frame(sport, &datagram(i as u16, &set(key, &value)));
        // The first two share an IP id (a reused id must not follow an old route).
        let mut frags = common::fragments(&frame, 1500, (i / 2) as u16 + 100);
        assert_eq!(frags.len(), 3);
        if i == 3 {
            // Out of order (the first fragment last): still reassembled, on this core.
            frags.rotate_left(1);
        }
        for f in &frags {
            rig.inject((i % 2) as u16, f);
        }
        let replies: Vec<_> = rig
            .settle()
            .into_iter()
            .filter(|(_, r)| r.dport == sport)
            .collect();
        assert_eq!(replies.len(), 1, "{key}: {replies:?}");
        assert_eq!(replies[0].1.payload, b"STORED\r\n", "{key}");
        let want = [
            format!("VALUE {key} 0 4000\r\n").as_bytes(),
            &value,
            b"\r\nEND\r\n",
        ]
        .concat();
        assert_eq!(
            show(&rig.ask(format!("get {key}\r\n").as_bytes())),
            show(&want)
        );
    }
    let s = rig.kv_stats();
    assert_eq!(
        s[&0]["frag_reassembled"] + s[&1]["frag_reassembled"],
        4,
        "{s:?}"
    );
    let r = rig.stop();
    assert_eq!(
        r.drops().total(),
        r.drops().get(dataplane::DropReason::Consumed)
    );
}

/// A datagram that is exactly `get <key>\r\n` takes the handler's fast path (the answer
/// written straight over the request); the same get spelled so that the fast path declines
/// it (a trailing space) takes the general one. Both must give the same datagrams and move
/// the same counters: hits and misses, values from empty to larger than one datagram (the
/// fast path hands those back), a key owned by the other core.
#[test]
fn single_gets_answer_the_same_on_the_fast_and_the_general_path() {
    let mut rig = Rig::new(2, &kv_table("memory_mb = 8\nworkers = [0, 1]"));
    let value = |n: usize| -> Vec<u8> { (0..n).map(|i| b'a' + (i % 26) as u8).collect() };
    let sizes = [0usize, 1, 100, 1000, 1364, 1365, 1366, 1370];
    let mut keys: Vec<String> = sizes.iter().map(|n| format!("k{n}")).collect();
    for (k, n) in keys.iter().zip(sizes) {
        assert_eq!(rig.ask(&set(k, &value(n))), b"STORED\r\n");
    }
    // Longer than a frame holds: grown by appends.
    assert_eq!(rig.ask(&set("big", &value(1300))), b"STORED\r\n");
    for _ in 0..2 {
        let append = [b"append big 0 0 1300\r\n".as_slice(), &value(1300), b"\r\n"].concat();
        assert_eq!(rig.ask(&append), b"STORED\r\n");
    }
    keys.push("big".into());
    let counters = |rig: &Rig| -> BTreeMap<String, u64> {
        let mut sum = BTreeMap::new();
        for w in rig.kv_stats().values() {
            for (name, v) in w {
                if [
                    "cmd_get",
                    "hits",
                    "misses",
                    "requests",
                    "datagrams",
                    "forwarded",
                ]
                .contains(&name.as_str())
                {
                    *sum.entry(name.clone()).or_insert(0) += v;
                }
            }
        }
        sum
    };
    let delta = |a: &BTreeMap<String, u64>, b: &BTreeMap<String, u64>| -> Vec<(String, u64)> {
        b.iter().map(|(k, v)| (k.clone(), v - a[k])).collect()
    };
    let strip = |r: Vec<Reply>| -> Vec<(u16, u16, u16, u16, Vec<u8>)> {
        r.into_iter()
            .map(|r| (r.id, r.seq, r.count, r.reserved, r.payload))
            .collect()
    };
    for k in keys
        .iter()
        .map(String::as_str)
        .chain(["missing", "also-missing"])
    {
        for queue in [0, 1] {
            let c0 = counters(&rig);
            let fast = strip(rig.exchange(queue, 9, format!("get {k}\r\n").as_bytes()));
            let c1 = counters(&rig);
            let general = strip(rig.exchange(queue, 9, format!("get {k} \r\n").as_bytes()));
            let c2 = counters(&rig);
            assert_eq!(fast, general, "get {k} on queue {queue}");
            assert_eq!(delta(&c0, &c1), delta(&c1, &c2), "counters of get {k}");
            assert!(!fast.is_empty());
        }
    }
    let r = rig.stop();
    assert_eq!(r.drops().total(), 0);
}
