//! In-process rig for the kv tests: an engine on a memory port (frames injected and
//! collected by the test), the kv handler from a TOML table, memcached datagrams in and
//! out, and client-side reassembly of multi-datagram answers.
//!
//! Every wait has a deadline; nothing loops unbounded.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dataplane::config::EngineConfig;
use dataplane::engine::{Engine, Report, WorkerPlan};
use dataplane::handlers::Spec;
use dataplane::port::memory::{MemoryOptions, Sink, Source};
use dataplane::port::{Memory, Port};
use dataplane::wire::build::{self, Endpoints4};
use dataplane::{Pipeline, PortId, QueueId};

pub mod lab;
pub mod script;

/// The appliance side of every test packet.
pub const SERVER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
pub const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
pub const PORT: u16 = 11211;

/// `[[handlers]]` tables parsed as the config file would.
pub fn specs(toml_text: &str) -> Vec<Spec> {
    kv::register();
    #[derive(serde::Deserialize)]
    struct Chain {
        handlers: Vec<Spec>,
    }
    toml::from_str::<Chain>(toml_text)
        .unwrap_or_else(|e| panic!("{e}\n{toml_text}"))
        .handlers
}

/// A kv handler table with `extra` settings. Each call names a store of its own, so that
/// tests running side by side in one process never share one (stores are reused by name).
pub fn kv_table(extra: &str) -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = if extra.contains("name =") {
        String::new()
    } else {
        format!("name = \"test{n}\"\n")
    };
    format!("[[handlers]]\nkind = \"kv\"\nhugepages = false\n{name}{extra}\n")
}

/// A memcached request datagram: header (count 1) and payload.
pub fn datagram(id: u16, payload: &[u8]) -> Vec<u8> {
    let mut d = Vec::with_capacity(8 + payload.len());
    d.extend_from_slice(&id.to_be_bytes());
    d.extend_from_slice(&[0, 0, 0, 1, 0, 0]);
    d.extend_from_slice(payload);
    d
}

/// The Ethernet frame a client at `CLIENT:sport` sends with `udp_payload`.
pub fn request_frame(sport: u16, udp_payload: &[u8]) -> Vec<u8> {
    build::udp4(
        &Endpoints4 {
            src_ip: CLIENT,
            dst_ip: SERVER,
            src_port: sport,
            dst_port: PORT,
            ..Endpoints4::default()
        },
        udp_payload,
        None,
    )
}

/// Splits an untagged IPv4 frame into fragments of at most `mtu` bytes of IP packet
/// (RFC 791) with IP identification `ident`, header checksums fixed.
pub fn fragments(frame: &[u8], mtu: usize, ident: u16) -> Vec<Vec<u8>> {
    let (l3, hl) = (14, 20);
    let payload = &frame[l3 + hl..];
    let step = (mtu - hl) / 8 * 8;
    let mut out = Vec::new();
    let mut off = 0;
    while off < payload.len() {
        let end = (off + step).min(payload.len());
        let mut f = frame[..l3 + hl].to_vec();
        f.extend_from_slice(&payload[off..end]);
        let more = end < payload.len();
        f[l3 + 2..l3 + 4].copy_from_slice(&((hl + end - off) as u16).to_be_bytes());
        f[l3 + 4..l3 + 6].copy_from_slice(&ident.to_be_bytes());
        let fo = ((off / 8) as u16) | if more { 0x2000 } else { 0 };
        f[l3 + 6..l3 + 8].copy_from_slice(&fo.to_be_bytes());
        f[l3 + 10..l3 + 12].copy_from_slice(&[0, 0]);
        let c = dataplane::wire::checksum::of(&f[l3..l3 + hl]);
        f[l3 + 10..l3 + 12].copy_from_slice(&c.to_be_bytes());
        out.push(f);
        off = end;
    }
    out
}

/// A datagram from the appliance, as the client sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub dport: u16,
    pub id: u16,
    pub seq: u16,
    pub count: u16,
    pub reserved: u16,
    pub payload: Vec<u8>,
}

/// Parses a transmitted frame: must be UDP from SERVER:PORT with correct checksums.
pub fn parse_reply(frame: &[u8]) -> Reply {
    let l = dataplane::wire::parse(frame).expect("reply parses");
    let start = usize::from(l.l4_off);
    let udp = &frame[start..l.l4_end()];
    let ip = &frame[usize::from(l.l3_off)..usize::from(l.l4_off)];
    let pseudo = dataplane::wire::checksum::pseudo_v4(
        Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]),
        Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]),
        17,
        udp.len() as u16,
    );
    assert!(
        dataplane::wire::checksum::verify(pseudo, udp),
        "bad UDP checksum"
    );
    assert_eq!(u16::from_be_bytes([udp[0], udp[1]]), PORT, "source port");
    let d = &udp[8..];
    Reply {
        dport: u16::from_be_bytes([udp[2], udp[3]]),
        id: u16::from_be_bytes([d[0], d[1]]),
        seq: u16::from_be_bytes([d[2], d[3]]),
        count: u16::from_be_bytes([d[4], d[5]]),
        reserved: u16::from_be_bytes([d[6], d[7]]),
        payload: d[8..].to_vec(),
    }
}

/// Reassembles messages from the datagrams of one request, in arrival order: a message is
/// datagrams seq 0..count-1, contiguous. Panics on anything else.
pub fn messages(replies: &[Reply]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut cur: Option<(u16, u16, Vec<u8>)> = None;
    for r in replies {
        match cur.take() {
            None => {
                assert_eq!(r.seq, 0, "message starts with seq 0: {r:?}");
                if r.count <= 1 {
                    out.push(r.payload.clone());
                } else {
                    cur = Some((1, r.count, r.payload.clone()));
                }
            }
            Some((next, count, mut buf)) => {
                assert_eq!((r.seq, r.count), (next, count), "datagram out of order");
                buf.extend_from_slice(&r.payload);
                if next + 1 == count {
                    out.push(buf);
                } else {
                    cur = Some((next + 1, count, buf));
                }
            }
        }
    }
    assert!(cur.is_none(), "incomplete message");
    out
}

/// An engine with `workers` unpinned workers, worker i owning memory queue i, running the
/// chain `handlers` (TOML).
pub struct Rig {
    pub engine: Option<Engine>,
    pub port: Arc<Memory>,
    pub queues: u16,
    next_sport: u16,
    injected: std::cell::Cell<u64>,
}

pub fn engine_config() -> EngineConfig {
    EngineConfig {
        burst: 32,
        ring_size: 4096,
        hugepages: false,
        ..EngineConfig::default()
    }
}

impl Rig {
    pub fn new(workers: u16, handlers: &str) -> Rig {
        let port = Memory::new(
            PortId(0),
            MemoryOptions {
                queues: workers,
                frames: 16384,
                frame_size: 2048,
                memory: dataplane::mem::Options {
                    hugepages: false,
                    numa_node: None,
                },
                source: Source::Ring,
                sink: Sink::Ring,
                ring_size: 8192,
            },
        )
        .unwrap();
        let plans = (0..workers)
            .map(|w| WorkerPlan {
                core: None,
                queues: vec![QueueId::new(0, w)],
            })
            .collect();
        let ports: Vec<Arc<dyn Port>> = vec![port.clone()];
        let mut engine = Engine::from_parts(
            &engine_config(),
            ports,
            plans,
            (0..workers).map(|_| Pipeline::default()).collect(),
        )
        .unwrap();
        engine.start().unwrap();
        engine.set_handlers(None, specs(handlers)).unwrap();
        Rig {
            engine: Some(engine),
            port,
            queues: workers,
            next_sport: 20000,
            injected: std::cell::Cell::new(0),
        }
    }

    pub fn engine(&mut self) -> &mut Engine {
        self.engine.as_mut().expect("running")
    }

    /// A fresh client port (so tests can tell their answers apart).
    pub fn sport(&mut self) -> u16 {
        self.next_sport += 1;
        self.next_sport
    }

    /// Injects a UDP payload from `sport` on `queue`.
    pub fn send(&self, queue: u16, sport: u16, udp_payload: &[u8]) {
        self.inject(queue, &request_frame(sport, udp_payload));
    }

    /// Injects a whole frame on `queue`.
    pub fn inject(&self, queue: u16, f: &[u8]) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.port.inject(queue, f) {
            assert!(Instant::now() < deadline, "cannot inject");
            std::thread::sleep(Duration::from_micros(100));
        }
        self.injected.set(self.injected.get() + 1);
    }

    /// Every reply transmitted so far, by queue.
    pub fn drain(&self) -> Vec<(u16, Reply)> {
        let mut out = Vec::new();
        for q in 0..self.queues {
            self.port.drain_tx(q, |b| out.push((q, parse_reply(b))));
        }
        out
    }

    /// Waits until the engine has nothing in flight and returns every reply.
    pub fn settle(&self) -> Vec<(u16, Reply)> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut out = Vec::new();
        let mut quiet = 0;
        loop {
            let got = self.drain();
            // Busy while a frame waits in the port (the workers may not have run yet on a
            // loaded machine) or travels between workers.
            let busy = self.engine.as_ref().is_some_and(|e| e.in_flight() != 0)
                || self.port.stats().rx_packets < self.injected.get();
            if got.is_empty() && !busy {
                quiet += 1;
                if quiet > 20 {
                    return out;
                }
            } else {
                quiet = 0;
            }
            out.extend(got);
            assert!(Instant::now() < deadline, "engine did not settle");
            std::thread::sleep(Duration::from_micros(500));
        }
    }

    /// Sends one request datagram (id `id`) on `queue` and returns its answer's datagrams in
    /// arrival order.
    pub fn exchange(&mut self, queue: u16, id: u16, payload: &[u8]) -> Vec<Reply> {
        let sport = self.sport();
        self.send(queue, sport, &datagram(id, payload));
        self.settle()
            .into_iter()
            .map(|(q, r)| {
                assert_eq!(q, queue, "answer left on another queue");
                r
            })
            .filter(|r| r.dport == sport)
            .collect()
    }

    /// Sends one request datagram on `queue` and returns the payloads of its answer's
    /// messages.
    pub fn ask_on(&mut self, queue: u16, payload: &[u8]) -> Vec<Vec<u8>> {
        let sport = self.sport();
        self.send(queue, sport, &datagram(7, payload));
        let replies: Vec<Reply> = self
            .settle()
            .into_iter()
            .map(|(q, r)| {
                assert_eq!(q, queue, "answer left on another queue");
                r
            })
            .filter(|r| r.dport == sport)
            .collect();
        for r in &replies {
            assert_eq!((r.id, r.reserved), (7, 0));
        }
        messages(&replies)
    }

    /// As [`Rig::ask_on`] on queue 0, the answer as one byte string.
    pub fn ask(&mut self, payload: &[u8]) -> Vec<u8> {
        self.ask_on(0, payload).concat()
    }

    pub fn report(&self) -> Report {
        self.engine.as_ref().expect("running").snapshot()
    }

    /// The kv counters of every worker: worker -> (name -> value).
    pub fn kv_stats(&self) -> BTreeMap<u16, BTreeMap<String, u64>> {
        let r = self.report();
        let h = r
            .handlers
            .iter()
            .find(|h| h.kind == "kv")
            .expect("kv stats in the report");
        h.workers
            .iter()
            .map(|w| (w.worker.0, w.counters.iter().cloned().collect()))
            .collect()
    }

    /// Stops the engine and checks conservation (generated datagrams included).
    pub fn stop(mut self) -> Report {
        let e = self.engine.take().expect("running");
        let r = e.stop().unwrap_or_else(|e| panic!("{e}"));
        r.check_conservation().unwrap();
        r
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        if let Some(e) = self.engine.take() {
            let _ = e.stop();
        }
    }
}

/// `text` with `\r\n` line ends made visible, for assertion messages.
pub fn show(b: &[u8]) -> String {
    String::from_utf8_lossy(b).replace("\r\n", "\\r\\n\n")
}
