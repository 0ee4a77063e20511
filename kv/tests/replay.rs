//! Golden replay cases of the kv handler: `kv/tests/replay/<case>/`, pcap in, pcap out,
//! byte-exact, run by `dataplane::replay` (the same harness as `tests/replay/`), and by
//! `slipstream replay kv/tests/replay/*/`.
//!
//! The cases live with this crate rather than in `dataplane::replay::cases` because
//! `kind = "kv"` exists only where this crate is linked and registered: the data plane's
//! own tests (and the root `tests/replay.rs`, which runs every folder of `tests/replay/`)
//! cannot run them. Inputs are generated here ([`cases`]); `KV_REPLAY_REGEN=1 cargo test
//! -p kv --test replay` rewrites inputs and expected outputs. Beyond byte-exactness, every
//! expected output is decoded and checked against the memcached answer written next to
//! its request below ([`goldens_say_what_memcached_says`]), so a regenerated golden that
//! changed meaning fails.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use dataplane::port::pcap::{read_capture, Captured};
use dataplane::replay::cases::{Case, Format, Input};
use dataplane::wire::build::{self, Endpoints4, Endpoints6};

/// First packet's timestamp (as the data plane's cases): 2023-11-14 22:13:20 UTC.
const EPOCH_US: u64 = 1_700_000_000_000_000;

/// One request of a case and the answer memcached gives (messages concatenated; `None`:
/// no answer at all).
struct Exchange {
    frame: Vec<u8>,
    id: u16,
    answer: Option<Vec<u8>>,
}

fn v4(sport: u16, payload: &[u8]) -> Vec<u8> {
    build::udp4(
        &Endpoints4 {
            src_port: sport,
            dst_port: 11211,
            ..Endpoints4::default()
        },
        payload,
        None,
    )
}

fn ex(id: u16, req: &[u8], answer: &[u8]) -> Exchange {
    Exchange {
        frame: v4(40000 + id, &common::datagram(id, req)),
        id,
        answer: Some(answer.to_vec()),
    }
}

fn silent(frame: Vec<u8>, id: u16) -> Exchange {
    Exchange {
        frame,
        id,
        answer: None,
    }
}

fn data(cmd: &str, value: &[u8]) -> Vec<u8> {
    [cmd.as_bytes(), b"\r\n", value, b"\r\n"].concat()
}

struct KvCase {
    name: &'static str,
    about: &'static str,
    exchanges: Vec<Exchange>,
}

fn basic() -> KvCase {
    let ex = |id, r: &[u8], a: &str| ex(id, r, a.as_bytes());
    KvCase {
        name: "kv-basic",
        about: "every command and its answers over IPv4, one datagram each",
        exchanges: vec![
            ex(1, &data("set a 5 0 5", b"hello"), "STORED\r\n"),
            ex(2, b"get a\r\n", "VALUE a 5 5\r\nhello\r\nEND\r\n"),
            ex(3, b"get zz\r\n", "END\r\n"),
            ex(4, &data("add a 0 0 1", b"x"), "NOT_STORED\r\n"),
            ex(5, &data("add b 0 0 2", b"bb"), "STORED\r\n"),
            ex(6, &data("replace c 0 0 1", b"c"), "NOT_STORED\r\n"),
            ex(7, &data("append b 0 0 2", b"++"), "STORED\r\n"),
            ex(8, &data("prepend b 0 0 2", b"--"), "STORED\r\n"),
            ex(
                9,
                b"get a b\r\n",
                "VALUE a 5 5\r\nhello\r\nVALUE b 0 6\r\n--bb++\r\nEND\r\n",
            ),
            // CAS uniques are deterministic here: one partition, counted from 1.
            ex(10, b"gets a\r\n", "VALUE a 5 5 1\r\nhello\r\nEND\r\n"),
            ex(11, &data("cas a 0 0 1 9", b"x"), "EXISTS\r\n"),
            ex(12, &data("cas a 0 0 1 1", b"x"), "STORED\r\n"),
            ex(13, &data("cas zz 0 0 1 1", b"x"), "NOT_FOUND\r\n"),
            ex(14, &data("set n 0 0 2", b"10"), "STORED\r\n"),
            ex(15, b"incr n 5\r\n", "15\r\n"),
            ex(16, b"decr n 100\r\n", "0\r\n"),
            ex(17, b"get n\r\n", "VALUE n 0 2\r\n0 \r\nEND\r\n"),
            ex(
                18,
                b"incr a 1\r\n",
                "CLIENT_ERROR cannot increment or decrement non-numeric value\r\n",
            ),
            ex(19, b"touch n 1000\r\n", "TOUCHED\r\n"),
            ex(20, b"gat 1000 n zz\r\n", "VALUE n 0 2\r\n0 \r\nEND\r\n"),
            ex(21, b"delete n\r\n", "DELETED\r\n"),
            ex(22, b"delete n\r\n", "NOT_FOUND\r\n"),
            ex(23, &data("set q 0 0 1 noreply", b"q"), ""),
            ex(
                24,
                b"get q\r\nincr zz 1\r\nverbosity 1\r\n",
                "VALUE q 0 1\r\nq\r\nEND\r\nNOT_FOUND\r\nOK\r\n",
            ),
            ex(25, &data("set e 0 -1 1", b"e"), "STORED\r\n"),
            ex(26, b"get e\r\n", "END\r\n"),
            ex(27, b"flush_all\r\n", "OK\r\n"),
            ex(28, b"get a b q\r\n", "END\r\n"),
            ex(29, b"quit\r\nget a\r\n", ""),
        ],
    }
}

fn multi_datagram() -> KvCase {
    let big = |c: u8| vec![c; 1300];
    let mut exchanges = Vec::new();
    for (i, c) in [b'x', b'y', b'z'].into_iter().enumerate() {
        exchanges.push(ex(
            i as u16 + 1,
            &data(&format!("set big{i} 0 0 1300"), &big(c)),
            b"STORED\r\n",
        ));
    }
    let value = |i: usize, v: &[u8]| {
        [
            format!("VALUE big{i} 0 {}\r\n", v.len()).as_bytes(),
            v,
            b"\r\n",
        ]
        .concat()
    };
    // Three keys and a miss: one message per hit (one datagram each), END on the last.
    exchanges.push(ex(
        4,
        b"get big0 big1 nope big2\r\n",
        &[
            value(0, &big(b'x')),
            value(1, &big(b'y')),
            value(2, &big(b'z')),
            b"END\r\n".to_vec(),
        ]
        .concat(),
    ));
    // Appends grow big0 to 5200 bytes: one message of four datagrams.
    for id in 5..8 {
        exchanges.push(ex(
            id,
            &data("append big0 0 0 1300", &big(b'w')),
            b"STORED\r\n",
        ));
    }
    let grown = [big(b'x'), big(b'w'), big(b'w'), big(b'w')].concat();
    exchanges.push(ex(
        8,
        b"get big0\r\n",
        &[value(0, &grown), b"END\r\n".to_vec()].concat(),
    ));
    exchanges.push(ex(
        9,
        b"get big0 big1\r\n",
        &[value(0, &grown), value(1, &big(b'y')), b"END\r\n".to_vec()].concat(),
    ));
    KvCase {
        name: "kv-multi-datagram",
        about: "answers longer than a datagram: numbered datagrams of at most 1400 bytes, one message per key",
        exchanges,
    }
}

fn malformed() -> KvCase {
    let mut bad_sum = v4(40100, &common::datagram(100, b"version\r\n"));
    let n = bad_sum.len();
    bad_sum[n - 1] ^= 0x20;
    let mut multi = common::datagram(101, b"get a\r\n");
    multi[5] = 3;
    let long = "k".repeat(251);
    let v6 = build::udp6(
        &Endpoints6 {
            src_port: 40102,
            dst_port: 11211,
            ..Endpoints6::default()
        },
        &common::datagram(102, &data("set six 0 0 3", b"ip6")),
        None,
    );
    let vlan = build::udp4(
        &Endpoints4 {
            src_port: 40103,
            dst_port: 11211,
            ..Endpoints4::default()
        },
        &common::datagram(103, b"get six\r\n"),
        Some(42),
    );
    let ex = |id, r: &[u8], a: &str| ex(id, r, a.as_bytes());
    KvCase {
        name: "kv-malformed",
        about: "framing and syntax errors get memcached's lines (or its silence); IPv6 and 802.1Q requests",
        exchanges: vec![
            // 8 bytes or less: ignored, as memcached does.
            silent(v4(40090, &[0, 90, 0, 0, 0, 1, 0, 0]), 90),
            silent(v4(40091, b"abc"), 91),
            silent(bad_sum, 100),
            Exchange {
                frame: v4(40101, &multi),
                id: 101,
                answer: Some(b"SERVER_ERROR multi-packet request not supported\r\n".to_vec()),
            },
            Exchange {
                frame: v6,
                id: 102,
                answer: Some(b"STORED\r\n".to_vec()),
            },
            Exchange {
                frame: vlan,
                id: 103,
                answer: Some(b"VALUE six 0 3\r\nip6\r\nEND\r\n".to_vec()),
            },
            ex(1, b"bogus\r\n", "ERROR\r\n"),
            ex(2, b"\r\n", "ERROR\r\n"),
            ex(3, b"GET a\r\n", "ERROR\r\n"),
            ex(4, b"get\r\n", "ERROR\r\n"),
            ex(5, &data("set a x 0 1", b"1"), "CLIENT_ERROR bad command line format\r\nERROR\r\n"),
            ex(6, &data("set a 0 0 -1", b"1"), "CLIENT_ERROR bad command line format\r\nERROR\r\n"),
            ex(7, &data("set a 0 0", b"1"), "ERROR\r\nERROR\r\n"),
            ex(8, &data(&format!("set {long} 0 0 1"), b"1"), "CLIENT_ERROR bad command line format\r\nERROR\r\n"),
            ex(9, format!("get {long}\r\n").as_bytes(), "CLIENT_ERROR bad command line format\r\n"),
            ex(10, &data("set a 0 0 3", b"abcd"), "CLIENT_ERROR bad data chunk\r\nERROR\r\n"),
            ex(11, b"set a 0 0 100\r\nshort\r\n", "CLIENT_ERROR bad data chunk\r\n"),
            ex(12, &data("set a 0 0 2000000", b"1"), "SERVER_ERROR object too large for cache\r\n"),
            ex(13, b"incr a x\r\n", "CLIENT_ERROR invalid numeric delta argument\r\n"),
            ex(14, b"touch a x\r\n", "CLIENT_ERROR invalid exptime argument\r\n"),
            ex(15, b"delete a 5\r\n", "CLIENT_ERROR bad command line format.  Usage: delete <key> [noreply]\r\n"),
            ex(16, b"flush_all x\r\n", "CLIENT_ERROR invalid exptime argument\r\n"),
            ex(17, b"stats detail\r\n", "CLIENT_ERROR usage: stats detail on|off|dump\r\n"),
            ex(18, b"stats items\r\n", "ERROR\r\n"),
            ex(19, b"shutdown\r\n", "ERROR: shutdown not enabled\r\n"),
            ex(20, b"get a\r\nincomplete", "END\r\n"),
            ex(21, b"get a\0junk\r\n", "END\r\n"),
        ],
    }
}

fn all() -> Vec<KvCase> {
    vec![basic(), multi_datagram(), malformed()]
}

fn config(c: &KvCase) -> String {
    format!(
        "# Replay case `{}`: {}.\n# Generated by kv/tests/replay.rs (KV_REPLAY_REGEN=1); edit the generator, not this file.\n\n\
         [engine]\n# Small test pools: 4k pages are enough, and no hugepage warning on machines without them.\nhugepages = false\n\n\
         [[ports]]\nkind = \"pcap\"\ninput = \"in-p0.pcap\"\noutput = \"out-p0.pcap\"\n\n\
         [[workers]]\ncore = 0\nqueues = [\"p0:q0\"]\n\n\
         [[handlers]]\nkind = \"kv\"\nmemory_mb = 4\nhugepages = false\n",
        c.name, c.about
    )
}

fn case(c: &KvCase) -> Case {
    Case {
        name: c.name,
        config: config(c),
        inputs: vec![Input {
            file: "in-p0.pcap".into(),
            format: Format::Pcap,
            packets: c
                .exchanges
                .iter()
                .enumerate()
                .map(|(i, e)| Captured {
                    ts_ns: (EPOCH_US + i as u64 * 1000) * 1000,
                    data: e.frame.clone(),
                })
                .collect(),
        }],
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/replay")
}

fn regen() -> bool {
    std::env::var("KV_REPLAY_REGEN").is_ok_and(|v| v == "1")
}

/// The committed config and inputs are what the generator writes (or, with
/// KV_REPLAY_REGEN=1, are rewritten together with the expected outputs).
#[test]
fn committed_inputs_are_generated() {
    kv::register();
    for c in all() {
        let dir = root().join(c.name);
        if regen() {
            std::fs::create_dir_all(&dir).unwrap();
            for (name, bytes) in case(&c).files() {
                std::fs::write(dir.join(name), bytes).unwrap();
            }
            let o = dataplane::replay::regen(&dir, dataplane::replay::DEFAULT_TIMEOUT).unwrap();
            assert!(o.passed(), "{}: {:?}", c.name, o.problems);
            continue;
        }
        for (name, bytes) in case(&c).files() {
            let got = std::fs::read(dir.join(&name))
                .unwrap_or_else(|e| panic!("{}/{name}: {e} (KV_REPLAY_REGEN=1 writes it)", c.name));
            assert!(
                got == bytes,
                "{}/{name} differs from the generator (KV_REPLAY_REGEN=1 rewrites it)",
                c.name
            );
        }
    }
}

#[test]
fn every_kv_golden_case_passes() {
    kv::register();
    let dirs = dataplane::replay::discover(&root()).unwrap();
    assert_eq!(dirs.len(), all().len(), "{dirs:?}");
    let mut failures = Vec::new();
    for dir in &dirs {
        match dataplane::replay::check(dir, dataplane::replay::DEFAULT_TIMEOUT) {
            Ok(o) if o.passed() => {}
            Ok(o) => failures.push(format!("{}: {}", dir.display(), o.problems.join("; "))),
            Err(e) => failures.push(format!("{}: {e}", dir.display())),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Decodes every expected output: each request's datagrams, reassembled, say exactly the
/// memcached answer written next to the request above, and requests that memcached does
/// not answer get nothing.
#[test]
fn goldens_say_what_memcached_says() {
    for c in all() {
        let out = read_capture(&root().join(c.name).join("out-p0.pcap")).unwrap();
        let mut by_id: BTreeMap<u16, Vec<common::Reply>> = BTreeMap::new();
        for p in &out {
            let l = dataplane::wire::parse(&p.data).unwrap();
            let udp = &p.data[usize::from(l.l4_off)..l.l4_end()];
            assert!(
                udp.len() <= 8 + 1400,
                "{}: datagram of {} bytes",
                c.name,
                udp.len() - 8
            );
            let d = &udp[8..];
            let r = common::Reply {
                dport: u16::from_be_bytes([udp[2], udp[3]]),
                id: u16::from_be_bytes([d[0], d[1]]),
                seq: u16::from_be_bytes([d[2], d[3]]),
                count: u16::from_be_bytes([d[4], d[5]]),
                reserved: u16::from_be_bytes([d[6], d[7]]),
                payload: d[8..].to_vec(),
            };
            by_id.entry(r.id).or_default().push(r);
        }
        for e in &c.exchanges {
            let got = by_id.remove(&e.id);
            match (&e.answer, got) {
                (None, None) => {}
                (Some(a), None) if a.is_empty() => {}
                (Some(a), Some(rs)) => {
                    let text = common::messages(&rs).concat();
                    assert_eq!(
                        common::show(&text),
                        common::show(a),
                        "{} request {}",
                        c.name,
                        e.id
                    );
                }
                (a, g) => panic!("{} request {}: expected {a:?}, got {g:?}", c.name, e.id),
            }
        }
        assert!(
            by_id.is_empty(),
            "{}: answers to nothing: {by_id:?}",
            c.name
        );
    }
}
