//! Steering rules: what user space says ([`Rule`]) and what the XDP program reads
//! ([`RawRule`], the `struct steer_rule` of `src/bpf/steer.h`).
//!
//! A rule matches on the destination only: address family, L4 protocol, destination prefix
//! and destination port range, which is what decides which service (and so which AF_XDP
//! socket) a packet is for. Prefixes, not exact addresses, so that one rule can cover a
//! service subnet; an exact address is the full-length prefix. The prefix mask is computed
//! here, once, so the XDP program does four AND/compare pairs and no shifts.
//!
//! The text form (`FromStr`/`Display`) is `PROTO ADDR[/LEN] [PORT[-PORT]]`, for example
//! `udp 198.18.0.1 7`, `tcp 2001:db8::/32 8000-8080` or `any 198.18.0.0/15`.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::ops::RangeInclusive;
use std::str::FromStr;

use crate::Error;

/// L4 protocol a rule matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Proto {
    /// Any protocol (then a port range still limits the match to TCP and UDP).
    Any,
    /// TCP (IP protocol 6).
    Tcp,
    /// UDP (IP protocol 17).
    Udp,
}

impl Proto {
    /// The IP protocol number, 0 for any.
    pub fn number(self) -> u8 {
        match self {
            Proto::Any => 0,
            Proto::Tcp => 6,
            Proto::Udp => 17,
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Any => "any",
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

impl FromStr for Proto {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "any" => Ok(Proto::Any),
            "tcp" => Ok(Proto::Tcp),
            "udp" => Ok(Proto::Udp),
            _ => Err(format!("unknown protocol {s:?} (expected any, tcp or udp)")),
        }
    }
}

/// One steering rule: packets to `dst/prefix_len`, protocol `proto`, destination port in
/// `dst_ports` (None: any port) go to the AF_XDP socket of their RX queue.
///
/// Build one with [`Rule::new`] and the `proto`/`ports` builders, or parse the text form.
/// Checked when installed ([`crate::Steering::set_rules`]): the prefix length must fit the
/// family, host bits must be zero, a port range must be non-empty and not `0..=0`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Rule {
    /// Destination network (host bits zero); its family is the rule's family.
    pub dst: IpAddr,
    /// Prefix length: 0..=32 for IPv4, 0..=128 for IPv6.
    pub prefix_len: u8,
    /// L4 protocol.
    pub proto: Proto,
    /// Inclusive destination port range; None matches any port and port-less packets.
    pub dst_ports: Option<RangeInclusive<u16>>,
}

impl Rule {
    /// A rule for `dst/prefix_len`, any protocol, any port.
    pub fn new(dst: IpAddr, prefix_len: u8) -> Rule {
        Rule {
            dst,
            prefix_len,
            proto: Proto::Any,
            dst_ports: None,
        }
    }

    /// A rule for exactly the address `dst` (a full-length prefix), any protocol, any port.
    pub fn host(dst: IpAddr) -> Rule {
        let len = if dst.is_ipv4() { 32 } else { 128 };
        Rule::new(dst, len)
    }

    /// Sets the protocol.
    pub fn proto(mut self, proto: Proto) -> Rule {
        self.proto = proto;
        self
    }

    /// Sets the destination port range.
    pub fn ports(mut self, ports: RangeInclusive<u16>) -> Rule {
        self.dst_ports = Some(ports);
        self
    }

    /// Sets a single destination port.
    pub fn port(self, port: u16) -> Rule {
        self.ports(port..=port)
    }

    /// Checks the rule and lays it out as the XDP program reads it.
    pub(crate) fn encode(&self) -> Result<RawRule, String> {
        let (family, bits, addr) = match self.dst {
            IpAddr::V4(a) => (4u8, 32u8, u128::from(u32::from(a)) << 96),
            IpAddr::V6(a) => (6u8, 128u8, u128::from(a)),
        };
        if self.prefix_len > bits {
            return Err(format!(
                "prefix length {} is longer than {bits} bits",
                self.prefix_len
            ));
        }
        // The address left-aligned in 128 bits, so one mask computation serves both families.
        let mask = if self.prefix_len == 0 {
            0
        } else {
            u128::MAX << (128 - u32::from(self.prefix_len))
        };
        if addr & !mask != 0 {
            let network = match self.dst {
                IpAddr::V4(_) => IpAddr::from(Ipv4Addr::from(((addr & mask) >> 96) as u32)),
                IpAddr::V6(_) => IpAddr::from(Ipv6Addr::from(addr & mask)),
            };
            return Err(format!(
                "{}/{} has host bits set; the network is {network}/{}",
                self.dst, self.prefix_len, self.prefix_len
            ));
        }
        let (port_lo, port_hi) = match &self.dst_ports {
            None => (0, 0),
            Some(r) if r.start() > r.end() => {
                return Err(format!("port range {}-{} is empty", r.start(), r.end()))
            }
            Some(r) if *r.end() == 0 => {
                return Err(
                    "port range 0-0 cannot be matched (leave the ports out to match any port)"
                        .into(),
                )
            }
            Some(r) => (*r.start(), *r.end()),
        };
        // The first `bits / 8` bytes of the left-aligned address, in network byte order, as the
        // u32 words the program compares against packet memory (so native-endian words).
        let words = |v: u128| -> [u32; 4] {
            let b = v.to_be_bytes();
            let mut w = [0u32; 4];
            for (i, chunk) in b.chunks_exact(4).enumerate().take(usize::from(bits) / 32) {
                w[i] = u32::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
            }
            w
        };
        Ok(RawRule {
            addr: words(addr),
            mask: words(mask),
            port_lo,
            port_hi,
            family,
            proto: self.proto.number(),
            pad: [0; 2],
        })
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.proto, self.dst, self.prefix_len)?;
        match &self.dst_ports {
            Some(r) if r.start() == r.end() => write!(f, " {}", r.start()),
            Some(r) => write!(f, " {}-{}", r.start(), r.end()),
            None => Ok(()),
        }
    }
}

impl FromStr for Rule {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = |reason: String| Error::ParseRule {
            text: text.to_string(),
            reason,
        };
        let words: Vec<&str> = text.split_whitespace().collect();
        let (proto, dst, ports) = match words.as_slice() {
            [proto, dst] => (proto, dst, None),
            [proto, dst, ports] => (proto, dst, Some(ports)),
            _ => return Err(bad(format!("expected 2 or 3 words, found {}", words.len()))),
        };
        let proto: Proto = proto.parse().map_err(bad)?;
        let (addr, len) = match dst.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (*dst, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|e| bad(format!("address {addr:?}: {e}")))?;
        let mut rule = Rule::host(addr).proto(proto);
        if let Some(len) = len {
            rule.prefix_len = len
                .parse()
                .map_err(|e| bad(format!("prefix length {len:?}: {e}")))?;
        }
        if let Some(ports) = ports {
            let port = |p: &str| {
                p.parse::<u16>()
                    .map_err(|e| bad(format!("port {p:?}: {e}")))
            };
            rule.dst_ports = Some(match ports.split_once('-') {
                Some((lo, hi)) => port(lo)?..=port(hi)?,
                None => port(ports)?..=port(ports)?,
            });
        }
        rule.encode().map_err(bad)?;
        Ok(rule)
    }
}

/// `struct steer_rule` (src/bpf/steer.h): 40 bytes, no implicit padding.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct RawRule {
    pub(crate) addr: [u32; 4],
    pub(crate) mask: [u32; 4],
    pub(crate) port_lo: u16,
    pub(crate) port_hi: u16,
    pub(crate) family: u8,
    pub(crate) proto: u8,
    pub(crate) pad: [u8; 2],
}

const _: () = assert!(std::mem::size_of::<RawRule>() == 40);

#[cfg(test)]
mod tests {
    use super::*;

    fn be(bytes: [u8; 4]) -> u32 {
        u32::from_ne_bytes(bytes)
    }

    #[test]
    fn ipv4_prefix_encodes_network_order_words() {
        let raw = Rule::new(Ipv4Addr::new(198, 18, 0, 0).into(), 15)
            .proto(Proto::Udp)
            .port(7)
            .encode()
            .unwrap();
        assert_eq!(raw.family, 4);
        assert_eq!(raw.proto, 17);
        assert_eq!(raw.addr, [be([198, 18, 0, 0]), 0, 0, 0]);
        assert_eq!(raw.mask, [be([255, 254, 0, 0]), 0, 0, 0]);
        assert_eq!((raw.port_lo, raw.port_hi), (7, 7));
    }

    #[test]
    fn ipv6_host_rule_masks_all_words() {
        let a: Ipv6Addr = "2001:db8::1".parse().unwrap();
        let raw = Rule::host(a.into())
            .proto(Proto::Tcp)
            .ports(8000..=8080)
            .encode()
            .unwrap();
        assert_eq!(raw.family, 6);
        assert_eq!(raw.proto, 6);
        assert_eq!(
            raw.addr,
            [be([0x20, 0x01, 0x0d, 0xb8]), 0, 0, be([0, 0, 0, 1])]
        );
        assert_eq!(raw.mask, [u32::MAX; 4]);
        assert_eq!((raw.port_lo, raw.port_hi), (8000, 8080));
    }

    #[test]
    fn zero_prefix_matches_everything_of_the_family() {
        let raw = Rule::new(Ipv6Addr::UNSPECIFIED.into(), 0).encode().unwrap();
        assert_eq!((raw.addr, raw.mask), ([0; 4], [0; 4]));
        assert_eq!((raw.port_lo, raw.port_hi, raw.proto), (0, 0, 0));
    }

    #[test]
    fn invalid_rules_say_what_is_wrong() {
        let host_bits = Rule::new(Ipv4Addr::new(198, 18, 0, 1).into(), 24)
            .encode()
            .unwrap_err();
        assert!(host_bits.contains("198.18.0.0/24"), "{host_bits}");
        let too_long = Rule::new(Ipv4Addr::new(198, 18, 0, 1).into(), 33)
            .encode()
            .unwrap_err();
        assert!(too_long.contains("33"), "{too_long}");
        #[allow(clippy::reversed_empty_ranges)]
        let empty = Rule::host(Ipv4Addr::new(198, 18, 0, 1).into())
            .ports(9..=7)
            .encode()
            .unwrap_err();
        assert!(empty.contains("empty"), "{empty}");
        let zero = Rule::host(Ipv4Addr::new(198, 18, 0, 1).into())
            .port(0)
            .encode()
            .unwrap_err();
        assert!(zero.contains("0-0"), "{zero}");
    }

    #[test]
    fn text_form_round_trips() {
        for text in [
            "udp 198.18.0.1/32 7",
            "tcp 2001:db8::/32 8000-8080",
            "any 198.18.0.0/15",
        ] {
            let rule: Rule = text.parse().unwrap();
            assert_eq!(rule.to_string(), text);
        }
        let short: Rule = "UDP 198.18.0.1 7".parse().unwrap();
        assert_eq!(
            short,
            Rule::host(Ipv4Addr::new(198, 18, 0, 1).into())
                .proto(Proto::Udp)
                .port(7)
        );
    }

    #[test]
    fn text_form_rejects_garbage() {
        for text in [
            "",
            "udp",
            "icmp 198.18.0.1",
            "udp 198.18.0.1 7 8",
            "udp 198.18.0.300",
            "udp 198.18.0.1 x",
            "udp 198.18.0.1/24",
        ] {
            let err = text.parse::<Rule>().unwrap_err().to_string();
            assert!(err.contains(&format!("{text:?}")), "{err}");
        }
    }
}
