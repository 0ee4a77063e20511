//! Live configuration: the desired state, versioned changes, and the atomic hand-over of new
//! tables to the workers.
//!
//! [`Control`] owns the desired state (VIPs, reals, weights, flags, QUIC ids, source
//! routes) behind a mutex that only the control side takes. A change ([`Control::apply`])
//! works on a copy of that state: every [`Change`] of the request is checked and applied to
//! the copy in order, the rings of the VIPs it touched are rebuilt (on the calling thread,
//! off the data path; untouched VIPs keep their ring, shared by `Arc`), and the result is
//! published as one immutable [`Tables`] with the next version. If any change is refused the
//! copy is thrown away: nothing changed, and the error names the change and field.
//!
//! Publishing is a pointer swap: the new `Arc<Tables>` replaces the old one in a mutex-held
//! slot, then the version counter is bumped. Each worker's handler reads the version (one
//! relaxed atomic load per burst) and, when it moved, `try_lock`s the slot to clone the
//! `Arc` — a worker never waits: if the control thread holds the slot at that instant, the
//! worker keeps the previous tables for one more burst. So there is no lock and no
//! allocation per packet, a burst is processed entirely under one version, and old tables
//! are released on the control thread (they are parked in a retire list until no worker
//! holds them), never freed on a worker.
//!
//! Rejected alternatives: an `RwLock` around the tables (readers per burst contend on its
//! counter, and a writer makes workers wait), rebuilding rings inside the handler (Maglev
//! fills are milliseconds), and per-worker copies of the rings (512 × 256 KiB each).
//!
//! Real ids follow Katran: assigned from 1 upward in order of first addition (a FIFO of free
//! ids, so a released id is reused only after every never-used one), shared by all VIPs and
//! by QUIC and source-routing entries that name the same address, released when nothing
//! names the address any more. The id → address table keeps a released id's address until
//! the id is reused, so connection-table entries of a removed real keep reaching it (what
//! makes established flows sticky across a removal).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::config::{
    host_address, Encap, Flag, Flags, LbSpec, Prefix, Proto, QuicServerSpec, RealSpec,
    SrcRouteSpec, VipSpec, MAX_CONN_TABLE_SIZE, MAX_REALS, MAX_VIPS,
};
use super::encap::Params;
use super::hash;
use super::maglev::{self, Endpoint, RING_SIZE};
use crate::control::ChangeError;
use crate::stats::Counter;

/// A VIP's identity: address, port (0: any) and protocol. Prints as `198.18.1.1:80/tcp`,
/// `[2001:db8::1]:0/udp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VipKey {
    pub address: IpAddr,
    pub port: u16,
    pub proto: Proto,
}

impl VipKey {
    pub fn new(address: IpAddr, port: u16, proto: Proto) -> VipKey {
        VipKey {
            address: address.to_canonical(),
            port,
            proto,
        }
    }
}

impl fmt::Display for VipKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.address {
            IpAddr::V4(a) => write!(f, "{a}:{}/{}", self.port, self.proto),
            IpAddr::V6(a) => write!(f, "[{a}]:{}/{}", self.port, self.proto),
        }
    }
}

impl FromStr for VipKey {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || {
            format!("`{s}` is not a VIP: expected ADDRESS:PORT/PROTO, for example 198.18.1.1:80/tcp or [2001:db8::1]:0/udp")
        };
        let (sock, proto) = s.rsplit_once('/').ok_or_else(bad)?;
        let proto: Proto = proto.parse().map_err(|_| bad())?;
        let sa: std::net::SocketAddr = sock.parse().map_err(|_| bad())?;
        Ok(VipKey::new(sa.ip(), sa.port(), proto))
    }
}

impl Serialize for VipKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for VipKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// One live change. A request is a list of them, applied all or nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Change {
    /// Adds a VIP (with no reals: its traffic is dropped as `lb_no_real` until one is added).
    AddVip {
        vip: VipKey,
        #[serde(default)]
        flags: Vec<Flag>,
    },
    /// Removes a VIP and its reals.
    RemoveVip {
        vip: VipKey,
    },
    /// Replaces a VIP's flags.
    SetFlags {
        vip: VipKey,
        flags: Vec<Flag>,
    },
    /// Adds a real to a VIP.
    AddReal {
        vip: VipKey,
        real: IpAddr,
        weight: u32,
    },
    /// Removes a real from a VIP.
    RemoveReal {
        vip: VipKey,
        real: IpAddr,
    },
    /// Changes a real's weight (0 takes it out of the ring but keeps it configured).
    SetWeight {
        vip: VipKey,
        real: IpAddr,
        weight: u32,
    },
    /// Marks a real of a VIP down or up (consulted by `udp-flow-migration` VIPs).
    SetDown {
        vip: VipKey,
        real: IpAddr,
        down: bool,
    },
    /// Routes QUIC server id `id` to `real` (replacing an earlier mapping of the id).
    AddQuicServer {
        id: u32,
        real: IpAddr,
    },
    RemoveQuicServer {
        id: u32,
    },
    /// Routes clients in `prefix` to `real` (replacing an earlier rule for the prefix).
    AddSrcRoute {
        prefix: Prefix,
        real: IpAddr,
    },
    RemoveSrcRoute {
        prefix: Prefix,
    },
}

/// Settings fixed for the life of a handler chain (changing them is a chain change).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Settings {
    pub params: Params,
    pub conn_table_size: u32,
    pub gue_v4: bool,
    pub gue_v6: bool,
}

/// One real of a VIP in the desired state.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Member {
    addr: IpAddr,
    weight: u32,
    down: bool,
}

#[derive(Debug, Clone)]
struct VipState {
    number: u16,
    flags: Flags,
    reals: Vec<Member>,
    /// The built ring; `None` when the reals changed since.
    ring: Option<Arc<[u32]>>,
}

/// Real ids, shared by everything that names an address.
#[derive(Debug, Clone)]
struct Registry {
    ids: HashMap<IpAddr, (u32, u32)>,
    free: VecDeque<u32>,
    /// Address of every id ever assigned (kept after release until the id is reused).
    addrs: Vec<Option<IpAddr>>,
}

impl Registry {
    fn new() -> Registry {
        Registry {
            ids: HashMap::new(),
            free: (1..=MAX_REALS as u32).collect(),
            addrs: vec![None; MAX_REALS + 1],
        }
    }

    fn acquire(&mut self, addr: IpAddr) -> Option<u32> {
        if let Some((id, refs)) = self.ids.get_mut(&addr) {
            *refs += 1;
            return Some(*id);
        }
        let id = self.free.pop_front()?;
        self.ids.insert(addr, (id, 1));
        self.addrs[id as usize] = Some(addr);
        Some(id)
    }

    fn release(&mut self, addr: IpAddr) {
        if let Some((id, refs)) = self.ids.get_mut(&addr) {
            *refs -= 1;
            if *refs == 0 {
                let id = *id;
                self.ids.remove(&addr);
                self.free.push_back(id);
            }
        }
    }

    fn id(&self, addr: IpAddr) -> Option<u32> {
        self.ids.get(&addr).map(|(id, _)| *id)
    }
}

#[derive(Debug, Clone)]
struct State {
    version: u64,
    settings: Settings,
    vips: BTreeMap<VipKey, VipState>,
    free_vip_numbers: VecDeque<u16>,
    quic: BTreeMap<u32, IpAddr>,
    src_routes: BTreeMap<Prefix, IpAddr>,
    reals: Registry,
}

/// A real's address as the data path writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RealAddr {
    pub bytes: [u8; 16],
    pub v6: bool,
}

impl RealAddr {
    fn of(a: IpAddr) -> RealAddr {
        match a {
            IpAddr::V4(a) => {
                let mut bytes = [0; 16];
                bytes[..4].copy_from_slice(&a.octets());
                RealAddr { bytes, v6: false }
            }
            IpAddr::V6(a) => RealAddr {
                bytes: a.octets(),
                v6: true,
            },
        }
    }

    #[inline]
    pub fn wire(&self) -> &[u8] {
        if self.v6 {
            &self.bytes
        } else {
            &self.bytes[..4]
        }
    }

    pub fn ip(&self) -> IpAddr {
        if self.v6 {
            IpAddr::V6(Ipv6Addr::from(self.bytes))
        } else {
            IpAddr::V4(Ipv4Addr::new(
                self.bytes[0],
                self.bytes[1],
                self.bytes[2],
                self.bytes[3],
            ))
        }
    }
}

/// A VIP as the data path looks it up: address bytes (IPv4 in the first four), family,
/// port, protocol number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct PacketVip {
    pub addr: [u8; 16],
    pub v6: bool,
    pub port: u16,
    pub proto: u8,
}

impl PacketVip {
    fn of(k: &VipKey) -> PacketVip {
        PacketVip {
            addr: hash::addr_bytes(k.address),
            v6: k.address.is_ipv6(),
            port: k.port,
            proto: k.proto.number(),
        }
    }
}

/// A small, fast hasher for the data path's maps (keys are addresses and ports chosen by
/// the operator, not by clients, so flooding is not a concern; SipHash would cost more than
/// the rest of the lookup).
#[derive(Default, Clone, Copy)]
pub(crate) struct FastHasher(u64);

impl Hasher for FastHasher {
    #[inline]
    fn finish(&self) -> u64 {
        let mut h = self.0;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^ (h >> 33)
    }

    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        for c in bytes.chunks(8) {
            let mut w = [0u8; 8];
            w[..c.len()].copy_from_slice(c);
            self.0 = (self.0.rotate_left(23) ^ u64::from_le_bytes(w))
                .wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.write_u64(u64::from(i));
    }

    #[inline]
    fn write_u16(&mut self, i: u16) {
        self.write_u64(u64::from(i));
    }

    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.write_u64(u64::from(i));
    }

    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.0 = (self.0.rotate_left(23) ^ i).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }

    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.write_u64(i as u64);
    }
}

pub(crate) type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FastHasher>>;
type FastSet<K> = HashSet<K, BuildHasherDefault<FastHasher>>;

/// A VIP as the data path sees it.
#[derive(Debug)]
pub(crate) struct VipTable {
    pub number: u16,
    pub flags: Flags,
    pub ring: Arc<[u32]>,
    /// Ids of reals marked down.
    pub down: Box<[u32]>,
}

/// Source-prefix rules, longest first.
#[derive(Debug, Default)]
pub(crate) struct Lpm {
    v4: Vec<(u8, FastMap<u32, u32>)>,
    v6: Vec<(u8, FastMap<u128, u32>)>,
}

impl Lpm {
    fn build(rules: &[(Prefix, u32)]) -> Lpm {
        let mut v4: BTreeMap<u8, FastMap<u32, u32>> = BTreeMap::new();
        let mut v6: BTreeMap<u8, FastMap<u128, u32>> = BTreeMap::new();
        for (p, id) in rules {
            match p.masked() {
                IpAddr::V4(a) => {
                    v4.entry(p.len).or_default().insert(u32::from(a), *id);
                }
                IpAddr::V6(a) => {
                    v6.entry(p.len).or_default().insert(u128::from(a), *id);
                }
            }
        }
        Lpm {
            v4: v4.into_iter().rev().collect(),
            v6: v6.into_iter().rev().collect(),
        }
    }

    /// The real id of the longest prefix holding `src` (IPv4 in the first four bytes).
    #[inline]
    pub fn lookup(&self, src: &[u8; 16], v6: bool) -> Option<u32> {
        if v6 {
            let a = u128::from_be_bytes(*src);
            self.v6.iter().find_map(|(len, m)| {
                let mask = if *len == 0 {
                    0
                } else {
                    u128::MAX << (128 - u32::from(*len))
                };
                m.get(&(a & mask)).copied()
            })
        } else {
            let a = u32::from_be_bytes([src[0], src[1], src[2], src[3]]);
            self.v4.iter().find_map(|(len, m)| {
                let mask = if *len == 0 {
                    0
                } else {
                    u32::MAX << (32 - u32::from(*len))
                };
                m.get(&(a & mask)).copied()
            })
        }
    }
}

/// One published version of everything the data path reads. Immutable.
#[derive(Debug)]
pub(crate) struct Tables {
    pub version: u64,
    pub settings: Settings,
    pub vip_index: FastMap<PacketVip, u16>,
    /// Indexed by VIP number.
    pub vips: Vec<Option<VipTable>>,
    /// Addresses of all VIPs (ICMP echo requests to them are answered).
    pub vip_addrs: FastSet<([u8; 16], bool)>,
    /// Indexed by real id.
    pub reals: Vec<Option<RealAddr>>,
    pub quic: FastMap<u32, u32>,
    pub lpm: Lpm,
}

impl Tables {
    #[inline]
    pub fn vip(&self, k: &PacketVip) -> Option<&VipTable> {
        let n = *self.vip_index.get(k)?;
        self.vips.get(usize::from(n))?.as_ref()
    }

    #[inline]
    pub fn real(&self, id: u32) -> Option<&RealAddr> {
        self.reals.get(id as usize)?.as_ref()
    }
}

/// Per-worker counters of the balancer (written by that worker only).
#[derive(Debug)]
pub(crate) struct Counters {
    pub vip_packets: Box<[Counter]>,
    pub vip_bytes: Box<[Counter]>,
    pub conn_hits: Counter,
    pub conn_misses: Counter,
    pub conn_evictions: Counter,
    pub quic_routed: Counter,
    pub src_routed: Counter,
    pub ring_routed: Counter,
    pub icmp_echo: Counter,
    pub icmp_errors: Counter,
    pub passed: Counter,
}

impl Default for Counters {
    fn default() -> Self {
        let block = || (0..MAX_VIPS).map(|_| Counter::default()).collect();
        Counters {
            vip_packets: block(),
            vip_bytes: block(),
            conn_hits: Counter::default(),
            conn_misses: Counter::default(),
            conn_evictions: Counter::default(),
            quic_routed: Counter::default(),
            src_routed: Counter::default(),
            ring_routed: Counter::default(),
            icmp_echo: Counter::default(),
            icmp_errors: Counter::default(),
            passed: Counter::default(),
        }
    }
}

/// What the workers share with the control side.
#[derive(Debug)]
pub(crate) struct Shared {
    pub version: AtomicU64,
    pub current: Mutex<Arc<Tables>>,
    pub workers: Mutex<Vec<Arc<crossbeam_utils::CachePadded<Counters>>>>,
}

#[derive(Debug)]
struct Inner {
    state: Mutex<State>,
    shared: Arc<Shared>,
    retired: Mutex<Vec<Arc<Tables>>>,
}

/// The live balancer: desired state, published tables, and the handle the control plane
/// drives. Cheap to clone (all clones are one balancer).
#[derive(Debug, Clone)]
pub struct Control {
    inner: Arc<Inner>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Which field of the request an error is about; turned into a path by the caller
/// (`changes[3].real`, `vips[1].reals[0].address`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Vip,
    Real,
    Id,
    Prefix,
}

#[derive(Debug)]
struct Refusal {
    field: Field,
    kind: fn(String, String) -> ChangeError,
    msg: String,
}

fn invalid(field: Field, msg: impl Into<String>) -> Refusal {
    Refusal {
        field,
        kind: |f, m| ChangeError::invalid(f, m),
        msg: msg.into(),
    }
}

fn not_found(field: Field, msg: impl Into<String>) -> Refusal {
    Refusal {
        field,
        kind: |f, m| ChangeError::not_found(f, m),
        msg: msg.into(),
    }
}

fn precondition(field: Field, msg: impl Into<String>) -> Refusal {
    Refusal {
        field,
        kind: |f, m| ChangeError::precondition(f, m),
        msg: msg.into(),
    }
}

fn check_real(state: &State, vip: &VipKey, real: IpAddr) -> Result<IpAddr, Refusal> {
    let real = real.to_canonical();
    if !host_address(real) {
        return Err(invalid(
            Field::Real,
            format!("`{real}` cannot be a real (unspecified, multicast or broadcast)"),
        ));
    }
    if vip.address.is_ipv6() && real.is_ipv4() && state.settings.params.encap == Encap::Ipip {
        return Err(invalid(
            Field::Real,
            format!("`{real}` is IPv4 but VIP {vip} is IPv6: IP-in-IP cannot carry IPv6 in IPv4; use an IPv6 real or encap = \"gue\""),
        ));
    }
    check_gue_source(state, real)?;
    Ok(real)
}

fn check_gue_source(state: &State, real: IpAddr) -> Result<(), Refusal> {
    if state.settings.params.encap == Encap::Gue {
        let (ok, field) = if real.is_ipv4() {
            (state.settings.gue_v4, "gue_source_v4")
        } else {
            (state.settings.gue_v6, "gue_source_v6")
        };
        if !ok {
            return Err(invalid(
                Field::Real,
                format!("`{real}` needs {field} to be configured for GUE encapsulation"),
            ));
        }
    }
    Ok(())
}

fn check_real_general(state: &State, real: IpAddr) -> Result<IpAddr, Refusal> {
    let real = real.to_canonical();
    if !host_address(real) {
        return Err(invalid(
            Field::Real,
            format!("`{real}` cannot be a real (unspecified, multicast or broadcast)"),
        ));
    }
    check_gue_source(state, real)?;
    Ok(real)
}

fn vip_mut<'a>(state: &'a mut State, vip: &VipKey) -> Result<&'a mut VipState, Refusal> {
    state
        .vips
        .get_mut(vip)
        .ok_or_else(|| not_found(Field::Vip, format!("unknown VIP {vip}")))
}

impl State {
    fn new(settings: Settings) -> State {
        State {
            version: 0,
            settings,
            vips: BTreeMap::new(),
            free_vip_numbers: (0..MAX_VIPS as u16).collect(),
            quic: BTreeMap::new(),
            src_routes: BTreeMap::new(),
            reals: Registry::new(),
        }
    }

    fn apply(&mut self, c: &Change) -> Result<(), Refusal> {
        match c {
            Change::AddVip { vip, flags } => {
                let vip = VipKey::new(vip.address, vip.port, vip.proto);
                if !host_address(vip.address) {
                    return Err(invalid(
                        Field::Vip,
                        format!(
                            "`{}` cannot be a VIP address (unspecified, multicast or broadcast)",
                            vip.address
                        ),
                    ));
                }
                if self.vips.contains_key(&vip) {
                    return Err(precondition(
                        Field::Vip,
                        format!("VIP {vip} already exists"),
                    ));
                }
                let Some(number) = self.free_vip_numbers.pop_front() else {
                    return Err(precondition(
                        Field::Vip,
                        format!("cannot add VIP {vip}: already {MAX_VIPS} VIPs (the most one instance holds); remove one first"),
                    ));
                };
                self.vips.insert(
                    vip,
                    VipState {
                        number,
                        flags: Flags::of(flags),
                        reals: Vec::new(),
                        ring: None,
                    },
                );
            }
            Change::RemoveVip { vip } => {
                let v = self
                    .vips
                    .remove(vip)
                    .ok_or_else(|| not_found(Field::Vip, format!("unknown VIP {vip}")))?;
                for m in &v.reals {
                    self.reals.release(m.addr);
                }
                self.free_vip_numbers.push_back(v.number);
            }
            Change::SetFlags { vip, flags } => {
                vip_mut(self, vip)?.flags = Flags::of(flags);
            }
            Change::AddReal { vip, real, weight } => {
                let real = check_real(self, vip, *real)?;
                let v = vip_mut(self, vip)?;
                if v.reals.iter().any(|m| m.addr == real) {
                    return Err(precondition(
                        Field::Real,
                        format!("real {real} is already in VIP {vip}; use set-weight to change its weight"),
                    ));
                }
                v.reals.push(Member {
                    addr: real,
                    weight: *weight,
                    down: false,
                });
                v.ring = None;
                if self.reals.acquire(real).is_none() {
                    return Err(precondition(
                        Field::Real,
                        format!("cannot add real {real}: already {MAX_REALS} reals (the most one instance holds)"),
                    ));
                }
            }
            Change::RemoveReal { vip, real } => {
                let real = real.to_canonical();
                let v = vip_mut(self, vip)?;
                let i = v.reals.iter().position(|m| m.addr == real).ok_or_else(|| {
                    not_found(Field::Real, format!("real {real} is not in VIP {vip}"))
                })?;
                v.reals.remove(i);
                v.ring = None;
                self.reals.release(real);
            }
            Change::SetWeight { vip, real, weight } => {
                let real = real.to_canonical();
                let v = vip_mut(self, vip)?;
                let m = v.reals.iter_mut().find(|m| m.addr == real).ok_or_else(|| {
                    not_found(Field::Real, format!("real {real} is not in VIP {vip}"))
                })?;
                if m.weight != *weight {
                    m.weight = *weight;
                    v.ring = None;
                }
            }
            Change::SetDown { vip, real, down } => {
                let real = real.to_canonical();
                let v = vip_mut(self, vip)?;
                let m = v.reals.iter_mut().find(|m| m.addr == real).ok_or_else(|| {
                    not_found(Field::Real, format!("real {real} is not in VIP {vip}"))
                })?;
                m.down = *down;
            }
            Change::AddQuicServer { id, real } => {
                if *id == 0 {
                    return Err(invalid(
                        Field::Id,
                        "0 is not a QUIC server id (0 means \"none\"); use 1 or more",
                    ));
                }
                let real = check_real_general(self, *real)?;
                if self.reals.acquire(real).is_none() {
                    return Err(precondition(
                        Field::Real,
                        format!("cannot add real {real}: already {MAX_REALS} reals"),
                    ));
                }
                if let Some(old) = self.quic.insert(*id, real) {
                    self.reals.release(old);
                }
            }
            Change::RemoveQuicServer { id } => {
                let old = self
                    .quic
                    .remove(id)
                    .ok_or_else(|| not_found(Field::Id, format!("no QUIC server id {id}")))?;
                self.reals.release(old);
            }
            Change::AddSrcRoute { prefix, real } => {
                if prefix.masked() != prefix.addr {
                    return Err(invalid(
                        Field::Prefix,
                        format!("`{prefix}` has host bits set"),
                    ));
                }
                let real = check_real_general(self, *real)?;
                if self.reals.acquire(real).is_none() {
                    return Err(precondition(
                        Field::Real,
                        format!("cannot add real {real}: already {MAX_REALS} reals"),
                    ));
                }
                if let Some(old) = self.src_routes.insert(*prefix, real) {
                    self.reals.release(old);
                }
            }
            Change::RemoveSrcRoute { prefix } => {
                let old = self.src_routes.remove(prefix).ok_or_else(|| {
                    not_found(Field::Prefix, format!("no source route for {prefix}"))
                })?;
                self.reals.release(old);
            }
        }
        Ok(())
    }

    /// Rebuilds the rings that changed and makes the data path's tables.
    fn tables(&mut self) -> Tables {
        let mut vip_index = FastMap::default();
        let mut vips: Vec<Option<VipTable>> = Vec::new();
        let mut vip_addrs = FastSet::default();
        let reg = &self.reals;
        for (k, v) in self.vips.iter_mut() {
            let ring = match &v.ring {
                Some(r) => r.clone(),
                None => {
                    let eps: Vec<Endpoint> = v
                        .reals
                        .iter()
                        .filter_map(|m| Some(Endpoint::new(reg.id(m.addr)?, m.addr, m.weight)))
                        .collect();
                    let r: Arc<[u32]> = maglev::build(&eps).into();
                    v.ring = Some(r.clone());
                    r
                }
            };
            let pk = PacketVip::of(k);
            vip_index.insert(pk, v.number);
            vip_addrs.insert((pk.addr, pk.v6));
            let n = usize::from(v.number);
            if vips.len() <= n {
                vips.resize_with(n + 1, || None);
            }
            vips[n] = Some(VipTable {
                number: v.number,
                flags: v.flags,
                ring,
                down: v
                    .reals
                    .iter()
                    .filter(|m| m.down)
                    .filter_map(|m| reg.id(m.addr))
                    .collect(),
            });
        }
        let quic = self
            .quic
            .iter()
            .filter_map(|(id, a)| Some((*id, reg.id(*a)?)))
            .collect();
        let rules: Vec<(Prefix, u32)> = self
            .src_routes
            .iter()
            .filter_map(|(p, a)| Some((*p, reg.id(*a)?)))
            .collect();
        Tables {
            version: self.version,
            settings: self.settings.clone(),
            vip_index,
            vips,
            vip_addrs,
            reals: reg.addrs.iter().map(|a| a.map(RealAddr::of)).collect(),
            quic,
            lpm: Lpm::build(&rules),
        }
    }
}

/// A real of a VIP, as [`Control::show`] reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RealInfo {
    pub address: IpAddr,
    pub id: u32,
    pub weight: u32,
    pub down: bool,
    /// Ring slots it holds (of 65537).
    pub slots: u32,
}

/// A VIP, as [`Control::show`] reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VipInfo {
    pub vip: VipKey,
    /// Katran's VIP number (its ring is slots `n*65537..`).
    pub number: u16,
    pub flags: Vec<Flag>,
    pub reals: Vec<RealInfo>,
}

/// The whole live configuration (`ctl lb show`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Show {
    pub version: u64,
    pub vips: Vec<VipInfo>,
    pub quic_servers: Vec<QuicServerSpec>,
    pub src_routes: Vec<SrcRouteSpec>,
}

/// Packets and bytes of one VIP, summed over workers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VipStats {
    pub vip: VipKey,
    pub packets: u64,
    pub bytes: u64,
}

/// Balancer counters summed over workers (`ctl lb stats`). Drops are in the engine's drop
/// counters, by reason (`lb_*`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    pub version: u64,
    pub workers: usize,
    pub vips: Vec<VipStats>,
    pub conn_hits: u64,
    pub conn_misses: u64,
    pub conn_evictions: u64,
    pub quic_routed: u64,
    pub src_routed: u64,
    pub ring_routed: u64,
    pub icmp_echo: u64,
    pub icmp_errors: u64,
    /// Packets left to the rest of the chain (not for a VIP, local VIPs, other protocols).
    pub passed: u64,
}

impl Control {
    /// Builds the live state of `spec`, checking every value (the error names the field,
    /// `vips[1].reals[0].address: ...`).
    pub fn new(spec: &LbSpec) -> Result<Control, ChangeError> {
        let settings = settings(spec)?;
        let mut state = State::new(settings);
        let mut seen = HashSet::new();
        for (i, v) in spec.vips.iter().enumerate() {
            let key = VipKey::new(v.address, v.port, v.proto);
            let at = |_: Field| format!("vips[{i}]");
            if !seen.insert(key) {
                return Err(ChangeError::invalid(
                    format!("vips[{i}]"),
                    format!("VIP {key} is listed twice"),
                ));
            }
            state
                .apply(&Change::AddVip {
                    vip: key,
                    flags: v.flags.clone(),
                })
                .map_err(|r| (r.kind)(at(r.field), r.msg))?;
            for (j, r) in v.reals.iter().enumerate() {
                let at = |f: Field| match f {
                    Field::Vip => format!("vips[{i}]"),
                    _ => format!("vips[{i}].reals[{j}].address"),
                };
                let mut steps = vec![Change::AddReal {
                    vip: key,
                    real: r.address,
                    weight: r.weight,
                }];
                if r.down {
                    steps.push(Change::SetDown {
                        vip: key,
                        real: r.address,
                        down: true,
                    });
                }
                for c in &steps {
                    state.apply(c).map_err(|e| (e.kind)(at(e.field), e.msg))?;
                }
            }
        }
        for (i, q) in spec.quic_servers.iter().enumerate() {
            if spec.quic_servers[..i].iter().any(|o| o.id == q.id) {
                return Err(ChangeError::invalid(
                    format!("quic_servers[{i}].id"),
                    format!("server id {} is listed twice", q.id),
                ));
            }
            let at = |f: Field| match f {
                Field::Id => format!("quic_servers[{i}].id"),
                _ => format!("quic_servers[{i}].real"),
            };
            state
                .apply(&Change::AddQuicServer {
                    id: q.id,
                    real: q.real,
                })
                .map_err(|e| (e.kind)(at(e.field), e.msg))?;
        }
        for (i, s) in spec.src_routes.iter().enumerate() {
            if spec.src_routes[..i].iter().any(|o| o.prefix == s.prefix) {
                return Err(ChangeError::invalid(
                    format!("src_routes[{i}].prefix"),
                    format!("prefix {} is listed twice", s.prefix),
                ));
            }
            let at = |f: Field| match f {
                Field::Prefix => format!("src_routes[{i}].prefix"),
                _ => format!("src_routes[{i}].real"),
            };
            state
                .apply(&Change::AddSrcRoute {
                    prefix: s.prefix,
                    real: s.real,
                })
                .map_err(|e| (e.kind)(at(e.field), e.msg))?;
        }
        state.version = 1;
        Ok(Control::publish_first(state))
    }

    /// A balancer with no VIPs (what an invalid spec builds: it claims no packet).
    pub(crate) fn empty(spec: &LbSpec) -> Control {
        let params = Params {
            router_mac: spec.router_mac,
            encap: spec.encap,
            gue_port: spec.gue_port,
            gue_source_v4: [0; 4],
            gue_source_v6: [0; 16],
        };
        let mut state = State::new(Settings {
            params,
            conn_table_size: spec.conn_table_size.clamp(4, MAX_CONN_TABLE_SIZE),
            gue_v4: false,
            gue_v6: false,
        });
        state.version = 1;
        Control::publish_first(state)
    }

    fn publish_first(mut state: State) -> Control {
        let tables = Arc::new(state.tables());
        Control {
            inner: Arc::new(Inner {
                shared: Arc::new(Shared {
                    version: AtomicU64::new(state.version),
                    current: Mutex::new(tables),
                    workers: Mutex::new(Vec::new()),
                }),
                state: Mutex::new(state),
                retired: Mutex::new(Vec::new()),
            }),
        }
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.inner.shared
    }

    /// The version now published (1 for the configuration file's state; +1 per accepted
    /// change request).
    pub fn version(&self) -> u64 {
        lock(&self.inner.state).version
    }

    /// Applies `changes` in order, all or nothing, and publishes the result as the next
    /// version, which it returns. With `expected_version`, the request is refused unless
    /// that is the current version (optimistic concurrency, as in xDS). A refusal changes
    /// nothing; its field is `changes[i].<field>` (or `expected_version`).
    pub fn apply(
        &self,
        expected_version: Option<u64>,
        changes: &[Change],
    ) -> Result<u64, ChangeError> {
        let mut guard = lock(&self.inner.state);
        if let Some(v) = expected_version {
            if v != guard.version {
                return Err(ChangeError::precondition(
                    "expected_version",
                    format!("stale: the balancer is at version {}, not {v}; re-read it with show and retry", guard.version),
                ));
            }
        }
        if changes.is_empty() {
            return Err(ChangeError::invalid("changes", "no change given"));
        }
        let mut next = guard.clone();
        for (i, c) in changes.iter().enumerate() {
            next.apply(c).map_err(|r| {
                let f = match r.field {
                    Field::Vip => "vip",
                    Field::Real => "real",
                    Field::Id => "id",
                    Field::Prefix => "prefix",
                };
                (r.kind)(format!("changes[{i}].{f}"), r.msg)
            })?;
        }
        next.version = guard.version + 1;
        // Rings are built here, on the caller's thread, before anything is published.
        let tables = Arc::new(next.tables());
        *guard = next;
        let old = std::mem::replace(&mut *lock(&self.inner.shared.current), tables);
        self.inner
            .shared
            .version
            .store(guard.version, Ordering::Release);
        let version = guard.version;
        drop(guard);
        let mut retired = lock(&self.inner.retired);
        retired.push(old);
        // Free what no worker holds any more (here, not on a worker).
        retired.retain(|t| Arc::strong_count(t) > 1);
        Ok(version)
    }

    /// `ctl lb vip add`.
    pub fn add_vip(&self, vip: VipKey, flags: &[Flag]) -> Result<u64, ChangeError> {
        self.apply(
            None,
            &[Change::AddVip {
                vip,
                flags: flags.to_vec(),
            }],
        )
    }

    /// `ctl lb vip rm`.
    pub fn remove_vip(&self, vip: VipKey) -> Result<u64, ChangeError> {
        self.apply(None, &[Change::RemoveVip { vip }])
    }

    /// `ctl lb real add`.
    pub fn add_real(&self, vip: VipKey, real: IpAddr, weight: u32) -> Result<u64, ChangeError> {
        self.apply(None, &[Change::AddReal { vip, real, weight }])
    }

    /// `ctl lb real rm`.
    pub fn remove_real(&self, vip: VipKey, real: IpAddr) -> Result<u64, ChangeError> {
        self.apply(None, &[Change::RemoveReal { vip, real }])
    }

    /// `ctl lb real weight`.
    pub fn set_weight(&self, vip: VipKey, real: IpAddr, weight: u32) -> Result<u64, ChangeError> {
        self.apply(None, &[Change::SetWeight { vip, real, weight }])
    }

    /// `ctl lb real down` (and up, with `down = false`).
    pub fn set_down(&self, vip: VipKey, real: IpAddr, down: bool) -> Result<u64, ChangeError> {
        self.apply(None, &[Change::SetDown { vip, real, down }])
    }

    /// The live configuration (`ctl lb show`).
    pub fn show(&self) -> Show {
        let s = lock(&self.inner.state);
        let vips = s
            .vips
            .iter()
            .map(|(k, v)| {
                let ring = v.ring.clone();
                VipInfo {
                    vip: *k,
                    number: v.number,
                    flags: v.flags.list(),
                    reals: v
                        .reals
                        .iter()
                        .map(|m| {
                            let id = s.reals.id(m.addr).unwrap_or(0);
                            RealInfo {
                                address: m.addr,
                                id,
                                weight: m.weight,
                                down: m.down,
                                slots: ring
                                    .as_ref()
                                    .map_or(0, |r| r.iter().filter(|&&x| x == id).count() as u32),
                            }
                        })
                        .collect(),
                }
            })
            .collect();
        Show {
            version: s.version,
            vips,
            quic_servers: s
                .quic
                .iter()
                .map(|(id, real)| QuicServerSpec {
                    id: *id,
                    real: *real,
                })
                .collect(),
            src_routes: s
                .src_routes
                .iter()
                .map(|(prefix, real)| SrcRouteSpec {
                    prefix: *prefix,
                    real: *real,
                })
                .collect(),
        }
    }

    /// The live configuration as a spec (what a config file would need to start in this
    /// state; real ids may differ after a restart, outputs do not).
    pub fn spec(&self) -> LbSpec {
        let s = lock(&self.inner.state);
        let p = &s.settings.params;
        LbSpec {
            router_mac: p.router_mac,
            encap: p.encap,
            gue_port: p.gue_port,
            gue_source_v4: s.settings.gue_v4.then(|| Ipv4Addr::from(p.gue_source_v4)),
            gue_source_v6: s.settings.gue_v6.then(|| Ipv6Addr::from(p.gue_source_v6)),
            conn_table_size: s.settings.conn_table_size,
            vips: s
                .vips
                .iter()
                .map(|(k, v)| VipSpec {
                    address: k.address,
                    port: k.port,
                    proto: k.proto,
                    flags: v.flags.list(),
                    reals: v
                        .reals
                        .iter()
                        .map(|m| RealSpec {
                            address: m.addr,
                            weight: m.weight,
                            down: m.down,
                        })
                        .collect(),
                })
                .collect(),
            quic_servers: s
                .quic
                .iter()
                .map(|(id, real)| QuicServerSpec {
                    id: *id,
                    real: *real,
                })
                .collect(),
            src_routes: s
                .src_routes
                .iter()
                .map(|(prefix, real)| SrcRouteSpec {
                    prefix: *prefix,
                    real: *real,
                })
                .collect(),
            slot: Default::default(),
        }
    }

    /// Counters summed over every worker's handler (`ctl lb stats`).
    pub fn stats(&self) -> Stats {
        let s = lock(&self.inner.state);
        let workers = lock(&self.inner.shared.workers);
        let sum = |f: &dyn Fn(&Counters) -> u64| workers.iter().map(|c| f(c)).sum::<u64>();
        Stats {
            version: s.version,
            workers: workers.len(),
            vips: s
                .vips
                .iter()
                .map(|(k, v)| {
                    let n = usize::from(v.number);
                    VipStats {
                        vip: *k,
                        packets: sum(&|c| c.vip_packets[n].get()),
                        bytes: sum(&|c| c.vip_bytes[n].get()),
                    }
                })
                .collect(),
            conn_hits: sum(&|c| c.conn_hits.get()),
            conn_misses: sum(&|c| c.conn_misses.get()),
            conn_evictions: sum(&|c| c.conn_evictions.get()),
            quic_routed: sum(&|c| c.quic_routed.get()),
            src_routed: sum(&|c| c.src_routed.get()),
            ring_routed: sum(&|c| c.ring_routed.get()),
            icmp_echo: sum(&|c| c.icmp_echo.get()),
            icmp_errors: sum(&|c| c.icmp_errors.get()),
            passed: sum(&|c| c.passed.get()),
        }
    }

    /// The ring of `vip` as real addresses (65537 entries; `None` for an empty slot), from
    /// the published tables. For tests, `show` tooling and cross-instance comparison.
    pub fn ring(&self, vip: &VipKey) -> Option<Vec<Option<IpAddr>>> {
        let t = lock(&self.inner.shared.current).clone();
        let v = t.vip(&PacketVip::of(vip))?;
        Some(
            v.ring
                .iter()
                .map(|&id| (id != 0).then(|| t.real(id).map(|r| r.ip())).flatten())
                .collect(),
        )
    }

    /// The real the ring alone picks for a client (no connection table, QUIC or source
    /// routes): Katran's simulator, for `ctl` and tests.
    pub fn pick(&self, vip: &VipKey, src: IpAddr, sport: u16, dport: u16) -> Option<IpAddr> {
        let t = lock(&self.inner.shared.current).clone();
        let v = t.vip(&PacketVip::of(vip))?;
        let mut src_b = hash::addr_bytes(src.to_canonical());
        let (mut sp, mut dp) = (sport, dport);
        if vip.port == 0 && !v.flags.has(Flag::DportOnly) && !v.flags.has(Flag::SrcDstPort) {
            dp = 0;
        }
        if v.flags.has(Flag::NoSrcPort) {
            sp = 0;
        }
        if v.flags.has(Flag::DportOnly) {
            sp = dp;
            src_b = [0; 16];
        }
        let (s, d) = (sp.to_be_bytes(), dp.to_be_bytes());
        let h = hash::packet_hash(
            &src_b,
            src.to_canonical().is_ipv6(),
            [s[0], s[1], d[0], d[1]],
        );
        let id = v.ring[(h % RING_SIZE) as usize];
        t.real(id).map(|r| r.ip()).filter(|_| id != 0)
    }
}

fn settings(spec: &LbSpec) -> Result<Settings, ChangeError> {
    if !spec.router_mac.is_unicast() {
        return Err(ChangeError::invalid(
            "router_mac",
            format!(
                "`{}` is not a unicast address; use the next hop's MAC, for example 02:00:00:00:00:fe",
                spec.router_mac
            ),
        ));
    }
    if spec.conn_table_size == 0 || spec.conn_table_size > MAX_CONN_TABLE_SIZE {
        return Err(ChangeError::invalid(
            "conn_table_size",
            format!(
                "{} is out of range; use 1..={MAX_CONN_TABLE_SIZE} entries per worker (default 65536)",
                spec.conn_table_size
            ),
        ));
    }
    if spec.encap == Encap::Gue && spec.gue_port == 0 {
        return Err(ChangeError::invalid(
            "gue_port",
            "0 is not a valid UDP port; use 1-65535 (default 9886)",
        ));
    }
    if let Some(a) = spec.gue_source_v4 {
        if !host_address(IpAddr::V4(a)) {
            return Err(ChangeError::invalid(
                "gue_source_v4",
                format!("`{a}` cannot be a source address"),
            ));
        }
    }
    if let Some(a) = spec.gue_source_v6 {
        if !host_address(IpAddr::V6(a)) {
            return Err(ChangeError::invalid(
                "gue_source_v6",
                format!("`{a}` cannot be a source address"),
            ));
        }
    }
    if spec.vips.len() > MAX_VIPS {
        return Err(ChangeError::invalid(
            "vips",
            format!("{} VIPs configured; at most {MAX_VIPS}", spec.vips.len()),
        ));
    }
    Ok(Settings {
        params: Params {
            router_mac: spec.router_mac,
            encap: spec.encap,
            gue_port: spec.gue_port,
            gue_source_v4: spec.gue_source_v4.map_or([0; 4], |a| a.octets()),
            gue_source_v6: spec.gue_source_v6.map_or([0; 16], |a| a.octets()),
        },
        conn_table_size: spec.conn_table_size,
        gue_v4: spec.gue_source_v4.is_some(),
        gue_v6: spec.gue_source_v6.is_some(),
    })
}
