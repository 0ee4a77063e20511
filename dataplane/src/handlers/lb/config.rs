//! `kind = "lb"` settings: the TOML shape (also the control plane's, through the same serde
//! types), the VIP flags, and the value checks.
//!
//! ```toml
//! [[handlers]]
//! kind = "lb"
//! router_mac = "02:00:00:00:00:fe"   # required: next hop of all encapsulated output
//! encap = "ipip"                     # or "gue" (default "ipip")
//! gue_port = 9886                    # GUE destination port (default 9886, Katran's tests)
//! gue_source_v4 = "198.18.0.1"       # outer source for GUE over IPv4 (needed with gue)
//! gue_source_v6 = "2001:db8::1"      # outer source for GUE over IPv6 (needed with gue)
//! conn_table_size = 65536            # connection-table entries per worker (default 65536)
//!
//! [[handlers.vips]]
//! address = "198.18.1.1"
//! port = 80                          # 0 = any port (default 0)
//! proto = "tcp"                      # or "udp"
//! flags = ["no-src-port"]            # VIP flags by name (default none)
//! reals = [{ address = "198.19.0.1", weight = 1 }, { address = "198.19.0.2" }]
//!
//! [[handlers.quic_servers]]          # QUIC server id -> real
//! id = 1025
//! real = "198.19.0.1"
//!
//! [[handlers.src_routes]]            # source prefix -> real (VIPs with "src-routing")
//! prefix = "198.18.128.0/17"
//! real = "198.19.0.2"
//! ```
//!
//! The same values are the initial state of the live [`Control`](super::Control); every
//! check here is also made for live changes, with the same messages.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;
use std::sync::{Arc, OnceLock};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::control::Control;
use crate::wire::MacAddr;

/// Most VIPs one instance holds (Katran's `MAX_VIPS`).
pub const MAX_VIPS: usize = 512;
/// Most reals (distinct addresses) one instance holds (Katran's default `maxReals`).
pub const MAX_REALS: usize = 4096;
/// Default connection-table entries per worker.
pub const DEFAULT_CONN_TABLE_SIZE: u32 = 65_536;
/// Largest connection table accepted (entries per worker; 64 B each).
pub const MAX_CONN_TABLE_SIZE: u32 = 1 << 26;
/// Default GUE destination port (the port Katran's tests use).
pub const DEFAULT_GUE_PORT: u16 = 9886;

/// Transport protocol of a VIP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    /// The IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Proto::Tcp => crate::wire::ip_proto::TCP,
            Proto::Udp => crate::wire::ip_proto::UDP,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Proto {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "tcp" => Ok(Proto::Tcp),
            "udp" => Ok(Proto::Udp),
            _ => Err(format!("`{s}` is not a protocol; use tcp or udp")),
        }
    }
}

/// Encapsulation of the packets sent to reals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encap {
    /// IPv4-in-IPv4 (protocol 4) for IPv4 reals, IPv4/IPv6-in-IPv6 (4 / 41) for IPv6 reals.
    #[default]
    Ipip,
    /// GUE variant 1: the inner packet directly in UDP to `gue_port`.
    Gue,
}

/// One VIP flag. Values are Katran's bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Flag {
    /// 1: the source port is not hashed (sport := 0).
    NoSrcPort,
    /// 2: never read or write the connection table.
    LruBypass,
    /// 4: route QUIC packets by the server id in their connection id.
    Quic,
    /// 8: hash only the destination port (sport := dport, source address zeroed).
    DportOnly,
    /// 16: source-prefix routing before the ring.
    SrcRouting,
    /// 32: the VIP is served locally: its packets continue down the pipeline (the kernel, on
    /// AF_XDP).
    LocalVip,
    /// 64: accepted for compatibility; no effect here (Katran's global LRU is a statistics
    /// aid).
    GlobalLru,
    /// 128: keep the destination port when matched through the port-0 entry.
    SrcDstPort,
    /// 256: accepted for compatibility; no effect here (not part of the specified
    /// behaviour).
    StableRouting,
    /// 512: a connection-table entry pointing at a real marked down is ignored.
    UdpFlowMigration,
}

impl Flag {
    pub const ALL: [Flag; 10] = [
        Flag::NoSrcPort,
        Flag::LruBypass,
        Flag::Quic,
        Flag::DportOnly,
        Flag::SrcRouting,
        Flag::LocalVip,
        Flag::GlobalLru,
        Flag::SrcDstPort,
        Flag::StableRouting,
        Flag::UdpFlowMigration,
    ];

    /// Katran's bit for the flag.
    pub const fn bit(self) -> u32 {
        1 << (self as u32)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Flag::NoSrcPort => "no-src-port",
            Flag::LruBypass => "lru-bypass",
            Flag::Quic => "quic",
            Flag::DportOnly => "dport-only",
            Flag::SrcRouting => "src-routing",
            Flag::LocalVip => "local-vip",
            Flag::GlobalLru => "global-lru",
            Flag::SrcDstPort => "src-dst-port",
            Flag::StableRouting => "stable-routing",
            Flag::UdpFlowMigration => "udp-flow-migration",
        }
    }
}

impl FromStr for Flag {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Flag::ALL
            .into_iter()
            .find(|f| f.as_str() == s)
            .ok_or_else(|| format!("`{s}` is not a VIP flag"))
    }
}

/// A set of VIP flags, as Katran's bit mask.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Flags(pub u32);

impl Flags {
    pub fn of(flags: &[Flag]) -> Flags {
        Flags(flags.iter().fold(0, |m, f| m | f.bit()))
    }

    #[inline]
    pub fn has(self, f: Flag) -> bool {
        self.0 & f.bit() != 0
    }

    /// The flags, in bit order.
    pub fn list(self) -> Vec<Flag> {
        Flag::ALL.into_iter().filter(|f| self.has(*f)).collect()
    }
}

/// An address prefix, `198.18.0.0/15` or `2001:db8::/32`. Host bits must be zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Prefix {
    pub addr: IpAddr,
    pub len: u8,
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl FromStr for Prefix {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad =
            || format!("`{s}` is not a prefix: expected ADDRESS/LENGTH, for example 198.18.0.0/15");
        let (a, l) = s.split_once('/').ok_or_else(bad)?;
        let addr: IpAddr = a.parse().map_err(|_| bad())?;
        let len: u8 = l.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if len > max {
            return Err(format!("`{s}`: length {len} is longer than {max}"));
        }
        let p = Prefix { addr, len };
        if p.masked() != addr {
            return Err(format!(
                "`{s}` has host bits set; did you mean {}/{len}?",
                p.masked()
            ));
        }
        Ok(p)
    }
}

impl Prefix {
    /// The address with the host bits cleared.
    pub fn masked(&self) -> IpAddr {
        match self.addr {
            IpAddr::V4(a) => {
                let m = if self.len == 0 {
                    0
                } else {
                    u32::MAX << (32 - u32::from(self.len))
                };
                IpAddr::V4(Ipv4Addr::from(u32::from(a) & m))
            }
            IpAddr::V6(a) => {
                let m = if self.len == 0 {
                    0
                } else {
                    u128::MAX << (128 - u32::from(self.len))
                };
                IpAddr::V6(Ipv6Addr::from(u128::from(a) & m))
            }
        }
    }
}

impl Serialize for Prefix {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Prefix {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

fn default_weight() -> u32 {
    1
}

/// A real (backend) of a VIP.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RealSpec {
    pub address: IpAddr,
    /// Maglev weight; 0 keeps the real configured but out of the ring. Default 1.
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Marked down (only consulted by VIPs with `udp-flow-migration`). Default false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub down: bool,
}

/// A VIP and its reals.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct VipSpec {
    pub address: IpAddr,
    /// Destination port; 0 matches any port not configured on its own. Default 0.
    #[serde(default)]
    pub port: u16,
    pub proto: Proto,
    /// Default none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub flags: Vec<Flag>,
    /// Default none (traffic to the VIP is then dropped as `lb_no_real`).
    #[serde(default)]
    pub reals: Vec<RealSpec>,
}

/// `[[handlers.quic_servers]]`: a QUIC server id and the real it routes to.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct QuicServerSpec {
    pub id: u32,
    pub real: IpAddr,
}

/// `[[handlers.src_routes]]`: clients in `prefix` go to `real` (VIPs with `src-routing`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SrcRouteSpec {
    pub prefix: Prefix,
    pub real: IpAddr,
}

fn default_gue_port() -> u16 {
    DEFAULT_GUE_PORT
}

fn default_conn_table_size() -> u32 {
    DEFAULT_CONN_TABLE_SIZE
}

/// The control handle shared by every copy of one spec (see [`LbSpec::control`]). Not part
/// of the settings: equal for any two specs, skipped by serde.
#[derive(Clone, Default)]
pub struct ControlSlot(Arc<OnceLock<Control>>);

impl fmt::Debug for ControlSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.get().is_some() {
            "ControlSlot(built)"
        } else {
            "ControlSlot(empty)"
        })
    }
}

impl PartialEq for ControlSlot {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

/// `kind = "lb"`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LbSpec {
    /// MAC address of the next hop all encapsulated packets go to. Required.
    pub router_mac: MacAddr,
    /// Default `ipip`.
    #[serde(default)]
    pub encap: Encap,
    /// Default 9886.
    #[serde(default = "default_gue_port")]
    pub gue_port: u16,
    /// Required with `encap = "gue"` when an IPv4 real is configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gue_source_v4: Option<Ipv4Addr>,
    /// Required with `encap = "gue"` when an IPv6 real is configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gue_source_v6: Option<Ipv6Addr>,
    /// Connection-table entries per worker (rounded up to a power of two). Default 65536.
    #[serde(default = "default_conn_table_size")]
    pub conn_table_size: u32,
    #[serde(default)]
    pub vips: Vec<VipSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub quic_servers: Vec<QuicServerSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub src_routes: Vec<SrcRouteSpec>,
    /// The live state built from this spec, shared by its clones (so every worker's handler
    /// and the control plane see one instance).
    #[serde(skip)]
    pub(crate) slot: ControlSlot,
}

impl Default for LbSpec {
    fn default() -> Self {
        LbSpec {
            router_mac: MacAddr::ZERO,
            encap: Encap::Ipip,
            gue_port: DEFAULT_GUE_PORT,
            gue_source_v4: None,
            gue_source_v6: None,
            conn_table_size: DEFAULT_CONN_TABLE_SIZE,
            vips: Vec::new(),
            quic_servers: Vec::new(),
            src_routes: Vec::new(),
            slot: ControlSlot::default(),
        }
    }
}

impl LbSpec {
    /// Checks every value; the message starts with the field (`vips[2].reals[0].address:
    /// ...`). Building the live state makes exactly these checks, so a spec that passes
    /// builds.
    pub fn validate(&self) -> Result<(), String> {
        Control::new(self).map(|_| ()).map_err(|e| e.to_string())
    }

    /// The live control handle of this spec: built on first use (rings and all), then
    /// shared by every clone of the spec, so every worker's handler built from it and the
    /// control plane act on one state. An invalid spec yields an empty balancer (it answers
    /// nothing) rather than panicking; call [`LbSpec::validate`] first.
    pub fn control(&self) -> Control {
        self.slot
            .0
            .get_or_init(|| Control::new(self).unwrap_or_else(|_| Control::empty(self)))
            .clone()
    }
}

/// True for an address a real or VIP may have.
pub(crate) fn host_address(a: IpAddr) -> bool {
    match a {
        IpAddr::V4(a) => !(a.is_unspecified() || a.is_multicast() || a.is_broadcast()),
        IpAddr::V6(a) => !(a.is_unspecified() || a.is_multicast()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_have_katrans_bits() {
        let bits: Vec<u32> = Flag::ALL.iter().map(|f| f.bit()).collect();
        assert_eq!(bits, [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]);
        for f in Flag::ALL {
            assert_eq!(f.as_str().parse::<Flag>().unwrap(), f);
        }
        assert_eq!(Flags::of(&[Flag::Quic, Flag::DportOnly]).0, 12);
        assert_eq!(Flags(12).list(), vec![Flag::Quic, Flag::DportOnly]);
    }

    #[test]
    fn prefixes_parse_and_refuse_host_bits() {
        let p: Prefix = "198.18.0.0/15".parse().unwrap();
        assert_eq!(p.len, 15);
        assert_eq!(p.to_string(), "198.18.0.0/15");
        assert!("198.18.0.1/15"
            .parse::<Prefix>()
            .unwrap_err()
            .contains("host bits"));
        assert!("198.18.0.0/33".parse::<Prefix>().is_err());
        assert!("2001:db8::/32".parse::<Prefix>().is_ok());
        assert!("2001:db8::/129".parse::<Prefix>().is_err());
        assert!("0.0.0.0/0".parse::<Prefix>().is_ok());
        assert!("x/1".parse::<Prefix>().is_err());
    }
}
