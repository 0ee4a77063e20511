//! `lb`: a Katran-compatible L4 load balancer (`../shared/specs/maglev-lb.md`). For the same
//! configuration it picks the same real and writes the same encapsulation as Katran, so
//! instances can join or replace Katran instances behind ECMP without moving a flow.
//!
//! Per packet, in the spec's order:
//! 1. Not IP: left `Next`. IPv4 with options or any fragment, IPv6 fragments: dropped
//!    (`lb_ip_options`, `lb_fragment`). Protocols other than TCP, UDP, ICMP: `Next`.
//! 2. ICMP echo request to a VIP address: answered in place. ICMP destination unreachable
//!    (ICMPv6 unreachable / packet too big): the flow embedded in it, turned around, is
//!    balanced like a packet of that flow, and the whole ICMP packet goes to the flow's
//!    real (path-MTU discovery keeps working). Other ICMP: `Next`.
//! 3. VIP lookup (exact, then port 0); no VIP: `Next`. `local-vip`: `Next`. Over 1514 bytes:
//!    `lb_too_big`.
//! 4. Choose the real: QUIC server id, then the connection table, then source routes, then
//!    the Maglev ring ([`maglev`]) at `jhash(source, ports) % 65537` ([`hash`]); the table
//!    is written after 3/4 (unless `lru-bypass` or TCP RST).
//! 5. Encapsulate ([`encap`]) to the router MAC and send back out of the receiving queue,
//!    as Katran's `XDP_TX`.
//!
//! Layout: [`config`] (the TOML/API shape and its checks), [`control`] (desired state,
//! versioned all-or-nothing changes, ring builds off the data path, the atomic hand-over to
//! workers, show and stats), [`conn`] (the bounded per-worker connection table), [`quic`],
//! [`packet`] (parse and echo reply), [`encap`], [`hash`], [`maglev`].
//!
//! Per worker, the handler holds an `Arc` of the published tables and its own connection
//! table; per burst it does one relaxed atomic load to notice a new version. Nothing is
//! allocated, locked or logged per packet.
//!
//! A burst goes through in two passes over chunks of [`CHUNK`] packets: the first parses
//! each packet, finds its VIP and prefetches the connection-table bucket its flow will look
//! at; the second does everything else, in packet order. The first pass only reads, so the
//! outcome is exactly that of one pass per packet; what it buys is that the chunk's cache
//! misses on the table (nearly every lookup, once the table holds more flows than the cache)
//! overlap instead of following each other.
//!
//! Choices where the spec is silent, and why:
//! - The connection table is keyed by the 5-tuple after the port-0 and `no-src-port`
//!   rewrites (Katran's lookup key); `dport-only` changes only the hash input and the encap
//!   source. Source routing matches the client's real address (Katran checks it before the
//!   `dport-only` rewrite).
//! - SYN and RST count only for TCP packets, not for the TCP header inside an ICMP error.
//! - The embedded transport header of an ICMP error must be whole (20 bytes for TCP, 8 for
//!   UDP), as Katran requires; otherwise the packet is dropped as `truncated`.
//! - Echo requests are answered only for VIP addresses (Katran answers any), so the
//!   appliance's own `icmp` handler later in the chain keeps its addresses.
//! - Time for UDP expiry is the engine clock of the burst, so replays do not depend on
//!   capture timestamps and live ports need no per-packet clock read.
//! - A VLAN tag, if present, is kept in front of the outer header (Katran has none); the
//!   1514-byte limit is for the frame without the tag.
//! - Flags `global-lru` and `stable-routing` are accepted (Katran configurations carry them)
//!   and have no effect: the spec does not define their behaviour.

pub mod config;
pub mod conn;
pub mod control;
pub mod encap;
pub mod hash;
pub mod maglev;
pub mod packet;
pub mod quic;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crossbeam_utils::CachePadded;

pub use config::{
    Encap, Flag, Flags, LbSpec, Prefix, Proto, QuicServerSpec, RealSpec, SrcRouteSpec, VipSpec,
    MAX_REALS, MAX_VIPS,
};
pub use control::{Change, Control, RealInfo, Show, Stats, VipInfo, VipKey, VipStats};

use self::control::{Counters, PacketVip, Shared, Tables};
use self::packet::Parsed;
use crate::mem::Frame;
use crate::pipeline::{Context, DropReason, Handler, Verdict};
use crate::wire::ip_proto;

/// Largest frame (without a VLAN tag) balanced; larger ones are `lb_too_big`.
pub const MAX_FRAME: usize = 1514;

/// Packets per prefetch pass: a default burst; enough misses in flight to cover a memory
/// latency, few enough that the first buckets are still cached when the second pass
/// reaches them.
pub const CHUNK: usize = 32;

/// What the first pass learned about a packet.
#[derive(Debug, Clone, Copy)]
enum Pre {
    /// Claimed by an earlier handler.
    Skip,
    /// Not a flow to a VIP (pass, drop or echo), as parsed.
    Other(Parsed),
    /// A flow to VIP number `vip`, matched exactly (`exact`) or through its port-0 entry.
    Flow {
        flow: packet::Flow,
        vip: u16,
        exact: bool,
    },
}

/// The connection-table key of `flow` to a VIP with `flags` (the spec's rewrites: dport 0
/// for a port-0 match unless `dport-only`/`src-dst-port`, sport 0 with `no-src-port`), and
/// the rewritten ports.
#[inline]
fn conn_key(flow: &packet::Flow, flags: Flags, exact: bool) -> (conn::Key, u16, u16) {
    let mut sport = flow.sport;
    let mut dport = flow.dport;
    if !exact && !flags.has(Flag::DportOnly) && !flags.has(Flag::SrcDstPort) {
        dport = 0;
    }
    if flags.has(Flag::NoSrcPort) {
        sport = 0;
    }
    let key = conn::Key {
        src: flow.src,
        dst: flow.dst,
        ports: u32::from(sport) << 16 | u32::from(dport),
        proto: flow.proto,
        v6: flow.v6,
    };
    (key, sport, dport)
}

/// One worker's balancer.
pub struct Lb {
    shared: Arc<Shared>,
    tables: Arc<Tables>,
    seen: u64,
    conns: conn::Table,
    counters: Arc<CachePadded<Counters>>,
    evictions_seen: u64,
    /// The first pass's findings for the current chunk.
    pre: Box<[Pre; CHUNK]>,
}

impl std::fmt::Debug for Lb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lb")
            .field("version", &self.seen)
            .field("conns", &self.conns)
            .finish()
    }
}

impl Lb {
    /// A worker's handler on `control`'s state, with its own connection table.
    pub fn new(control: &Control) -> Lb {
        let shared = control.shared().clone();
        let tables = shared
            .current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let counters = Arc::new(CachePadded::new(Counters::default()));
        shared
            .workers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(counters.clone());
        Lb {
            seen: tables.version,
            conns: conn::Table::new(tables.settings.conn_table_size),
            tables,
            shared,
            counters,
            evictions_seen: 0,
            pre: Box::new([Pre::Skip; CHUNK]),
        }
    }

    /// The configuration version this handler is using.
    pub fn version(&self) -> u64 {
        self.seen
    }

    /// Entries in this worker's connection table (a full scan; tests and tools).
    pub fn conn_entries(&self) -> usize {
        self.conns.len()
    }

    /// Picks up a newly published version, without ever waiting.
    #[inline]
    fn refresh(&mut self) {
        if self.shared.version.load(Ordering::Acquire) != self.seen {
            if let Ok(cur) = self.shared.current.try_lock() {
                self.tables = cur.clone();
                self.seen = self.tables.version;
            }
        }
    }

    /// The first pass: classify, find the VIP, prefetch the flow's bucket. Reads only.
    #[inline]
    fn prepare(&self, frame: &Frame) -> Pre {
        let flow = match packet::parse(frame.data(), &frame.meta.layout) {
            Parsed::Flow(f) => f,
            other => return Pre::Other(other),
        };
        let t = &*self.tables;
        let pv = |port| PacketVip {
            addr: flow.dst,
            v6: flow.v6,
            port,
            proto: flow.proto,
        };
        let (vip, exact) = match t.vip(&pv(flow.dport)) {
            Some(v) => (v, true),
            None => match t.vip(&pv(0)) {
                Some(v) => (v, false),
                None => return Pre::Other(Parsed::Pass),
            },
        };
        let flags = vip.flags;
        if !flow.syn && !flags.has(Flag::LruBypass) && !flags.has(Flag::LocalVip) {
            self.conns.prefetch(&conn_key(&flow, flags, exact).0);
        }
        Pre::Flow {
            flow,
            vip: vip.number,
            exact,
        }
    }

    /// The second pass: everything else, for one packet.
    #[inline]
    fn finish(&mut self, frame: &mut Frame, pre: Pre, now: u64) -> Verdict {
        let layout = frame.meta.layout;
        let (flow, number, exact) = match pre {
            Pre::Skip => return Verdict::Next,
            Pre::Other(Parsed::Pass) | Pre::Other(Parsed::Flow(_)) => return self.pass(),
            Pre::Other(Parsed::Drop(r)) => return Verdict::Drop(r),
            Pre::Other(Parsed::Echo { dst, v6 }) => {
                if !self.tables.vip_addrs.contains(&(dst, v6)) {
                    return self.pass();
                }
                if packet::echo_reply(frame.data_mut(), usize::from(layout.l3_off), v6) {
                    self.counters.icmp_echo.add(1);
                    return Verdict::reply(frame);
                }
                return self.pass();
            }
            Pre::Flow { flow, vip, exact } => (flow, vip, exact),
        };
        let t = &*self.tables;
        let Some(vip) = t.vips.get(usize::from(number)).and_then(Option::as_ref) else {
            return self.pass();
        };
        let flags = vip.flags;
        if flags.has(Flag::LocalVip) {
            return self.pass();
        }
        let n = usize::from(vip.number);
        self.counters.vip_packets[n].add(1);
        self.counters.vip_bytes[n].add(frame.len() as u64);
        let tag = if layout.vlan.is_some() { 4 } else { 0 };
        if frame.len() > MAX_FRAME + tag {
            return Verdict::Drop(DropReason::LbTooBig);
        }
        if flow.icmp {
            self.counters.icmp_errors.add(1);
        }

        // The spec's rewrites.
        let (key, sport, dport) = conn_key(&flow, flags, exact);
        let encap_port = sport.to_be_bytes();
        let mut src = flow.src;
        let (mut hsport, hdport) = (sport, dport);
        if flags.has(Flag::DportOnly) {
            hsport = dport;
            src = [0; 16];
        }
        let bypass = flags.has(Flag::LruBypass);

        let mut real = 0u32;
        // 1. QUIC server id.
        if flags.has(Flag::Quic) && !flow.icmp && flow.proto == ip_proto::UDP {
            let (off, len) = flow.payload;
            if let Some(id) = frame
                .data()
                .get(off..off + len)
                .and_then(quic::server_id)
                .and_then(|sid| t.quic.get(&sid).copied())
            {
                real = id;
                self.counters.quic_routed.add(1);
                if !bypass {
                    self.conns.insert(&key, id, now);
                }
            }
        }
        // 2. Connection table.
        if real == 0 && !flow.syn && !bypass {
            match self.conns.lookup(&key, now) {
                conn::Found::Real(id)
                    if !(flags.has(Flag::UdpFlowMigration) && vip.down.contains(&id)) =>
                {
                    real = id;
                    self.counters.conn_hits.add(1);
                }
                _ => self.counters.conn_misses.add(1),
            }
        }
        if real == 0 {
            // 3. Source routing.
            if flags.has(Flag::SrcRouting) {
                if let Some(id) = t.lpm.lookup(&flow.src, flow.v6) {
                    real = id;
                    self.counters.src_routed.add(1);
                }
            }
            // 4. The ring.
            if real == 0 {
                let (s, d) = (hsport.to_be_bytes(), hdport.to_be_bytes());
                let h = hash::packet_hash(&src, flow.v6, [s[0], s[1], d[0], d[1]]);
                real = vip
                    .ring
                    .get((h % maglev::RING_SIZE) as usize)
                    .copied()
                    .unwrap_or(0);
                if real != 0 {
                    self.counters.ring_routed.add(1);
                }
            }
            if real != 0 && !bypass && !flow.rst {
                self.conns.insert(&key, real, now);
            }
        }
        let Some(addr) = (real != 0).then(|| t.real(real)).flatten().copied() else {
            return Verdict::Drop(DropReason::LbNoReal);
        };
        let s = if flow.v6 {
            [src[12], src[13], src[14], src[15]]
        } else {
            [src[0], src[1], src[2], src[3]]
        };
        let inner = encap::Inner {
            l3_off: usize::from(layout.l3_off),
            v6: flow.v6,
            len: flow.ip_len,
            tos: flow.tos,
            s,
            p: encap_port,
        };
        let params = t.settings.params;
        match encap::encapsulate(frame, &inner, addr.wire(), &params) {
            Ok(()) => {
                let outer = encap::outer_len(addr.v6, params.encap);
                let l = &mut frame.meta.layout;
                l.l3 = if addr.v6 {
                    crate::wire::L3::Ipv6
                } else {
                    crate::wire::L3::Ipv4
                };
                let ip = if addr.v6 { 40 } else { 20 };
                l.l4_off = l.l3_off + ip as u16;
                l.l4_len = (flow.ip_len + outer - ip) as u16;
                l.l4_proto = match (params.encap, flow.v6) {
                    (Encap::Gue, _) => ip_proto::UDP,
                    (Encap::Ipip, true) => 41,
                    (Encap::Ipip, false) => 4,
                };
                Verdict::reply(frame)
            }
            Err(r) => Verdict::Drop(r),
        }
    }

    #[inline]
    fn pass(&self) -> Verdict {
        self.counters.passed.add(1);
        Verdict::Next
    }
}

impl Handler for Lb {
    fn name(&self) -> &str {
        "lb"
    }

    fn process(&mut self, frames: &mut [Frame], verdicts: &mut [Verdict], cx: &Context) {
        self.refresh();
        for (frames, verdicts) in frames.chunks_mut(CHUNK).zip(verdicts.chunks_mut(CHUNK)) {
            for (i, (frame, v)) in frames.iter().zip(verdicts.iter()).enumerate() {
                self.pre[i] = if *v == Verdict::Next {
                    self.prepare(frame)
                } else {
                    Pre::Skip
                };
            }
            for (i, (frame, v)) in frames.iter_mut().zip(verdicts.iter_mut()).enumerate() {
                let pre = self.pre[i];
                if !matches!(pre, Pre::Skip) {
                    *v = self.finish(frame, pre, cx.now_ns);
                }
            }
        }
        let ev = self.conns.stats().evictions;
        if ev != self.evictions_seen {
            self.counters.conn_evictions.add(ev - self.evictions_seen);
            self.evictions_seen = ev;
        }
    }
}

#[cfg(test)]
mod tests;
