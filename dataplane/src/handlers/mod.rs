//! Built-in handlers and their configuration.
//!
//! One module per handler, each a [`Handler`] that rewrites requests into replies in place
//! (no copy, no allocation) and sends them back on the queue they arrived on. The
//! configuration side is [`Spec`], one tagged enum shared by the TOML file and the control
//! plane: serde checks shapes, [`Spec::validate`] checks values and names the field, and
//! [`Spec::build`] makes one instance per worker (handlers keep per-worker state, so they are
//! built, not shared).
//!
//! Handlers trust the [`Layout`](crate::wire::Layout) the receive path stored in each frame
//! for *where* headers are, but read them through smoltcp's checked views, so a stale or
//! forged layout makes a handler skip the packet, never panic.

pub mod arp;
pub mod ext;
pub mod icmp;
pub mod lb;
pub mod macswap;
mod rewrite;
pub mod udp_echo;

#[cfg(test)]
pub(crate) mod testutil;

use std::net::{IpAddr, Ipv4Addr};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub use arp::Arp;
pub use ext::{ExtSpec, Extension, HandlerStats, HandlerWorkerStats};
pub use icmp::Icmp;
pub use lb::{Lb, LbSpec};
pub use macswap::Macswap;
pub use udp_echo::UdpEcho;

use crate::pipeline::Handler;
use crate::wire::MacAddr;

/// One entry of the `[[handlers]]` chain. `kind` selects the handler.
///
/// Built-in kinds use the derived serde code (`remote = "Self"` keeps it as inherent
/// functions); the trait impls below first give kinds registered with [`ext::register`] to
/// their parser, so that `kind = "kv"` works wherever a chain is read.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(remote = "Self")]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Spec {
    /// L2 reflector: swaps source and destination MAC and sends the frame back.
    Macswap(MacswapSpec),
    /// RFC 862 echo over UDP (IPv4 and IPv6).
    UdpEcho(UdpEchoSpec),
    /// Answers ARP requests for the appliance's IPv4 addresses.
    Arp(ArpSpec),
    /// Answers ICMPv4/ICMPv6 echo requests to the appliance's addresses.
    Icmp(IcmpSpec),
    /// Katran-compatible Maglev L4 load balancer (see [`lb`]).
    Lb(LbSpec),
    /// A kind registered by another crate (see [`ext`]).
    #[serde(skip)]
    Ext(ExtSpec),
}

impl Serialize for Spec {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Spec::Ext(e) => e.serialize(s),
            other => Spec::serialize(other, s),
        }
    }
}

impl<'de> Deserialize<'de> for Spec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Spec, D::Error> {
        use serde::de::Error;
        let mut v = serde_json::Value::deserialize(d)?;
        let kind = v.get("kind").and_then(|k| k.as_str()).map(str::to_owned);
        if let Some(kind) = kind.filter(|k| ext::lookup(k).is_some()) {
            if let Some(o) = v.as_object_mut() {
                o.remove("kind");
            }
            return ExtSpec::parse(&kind, &v)
                .map(Spec::Ext)
                .map_err(D::Error::custom);
        }
        Spec::deserialize(v).map_err(|e| {
            let msg = e.to_string();
            let registered = ext::kinds();
            if msg.starts_with("unknown variant") && !registered.is_empty() {
                D::Error::custom(format!(
                    "{msg}, or a registered kind: {}",
                    registered.join(", ")
                ))
            } else {
                D::Error::custom(msg)
            }
        })
    }
}

/// `kind = "macswap"`: no settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct MacswapSpec {}

/// `kind = "udp-echo"`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct UdpEchoSpec {
    /// UDP port to answer on. Default: 7 (RFC 862).
    pub port: u16,
}

impl Default for UdpEchoSpec {
    fn default() -> Self {
        UdpEchoSpec { port: 7 }
    }
}

/// `kind = "arp"`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct ArpSpec {
    /// The appliance's MAC address, `aa:bb:cc:dd:ee:ff` (must be unicast). Required.
    pub mac: MacAddr,
    /// IPv4 addresses to answer for. Required, at least one.
    pub addresses: Vec<Ipv4Addr>,
}

/// `kind = "icmp"`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct IcmpSpec {
    /// IPv4 and IPv6 addresses to answer echo requests for. Required, at least one.
    pub addresses: Vec<IpAddr>,
}

impl Spec {
    /// The handler's name, as [`Handler::name`] reports it and as `kind` spells it.
    pub fn kind(&self) -> &'static str {
        match self {
            Spec::Macswap(_) => "macswap",
            Spec::UdpEcho(_) => "udp-echo",
            Spec::Arp(_) => "arp",
            Spec::Icmp(_) => "icmp",
            Spec::Lb(_) => "lb",
            Spec::Ext(e) => e.kind(),
        }
    }

    /// Per-worker counters of handlers that keep them (registered kinds, see
    /// [`Extension::stats`]).
    pub fn stats(&self) -> Option<HandlerStats> {
        match self {
            Spec::Ext(e) => e.extension().stats(),
            _ => None,
        }
    }

    /// Checks settings serde cannot. The message starts with the field name, then says what
    /// is wrong and what would fix it, e.g. "port: 0 is not a valid UDP port; ...".
    pub fn validate(&self) -> Result<(), String> {
        match self {
            Spec::Macswap(_) => Ok(()),
            Spec::UdpEcho(s) => {
                if s.port == 0 {
                    Err("port: 0 is not a valid UDP port; use 1-65535 (default 7, RFC 862)".into())
                } else {
                    Ok(())
                }
            }
            Spec::Arp(s) => {
                if !s.mac.is_unicast() {
                    return Err(format!(
                        "mac: `{}` is not a unicast address; use the port's own MAC, for example 02:00:00:00:00:01",
                        s.mac
                    ));
                }
                if s.addresses.is_empty() {
                    return Err("addresses: at least one address is required".into());
                }
                for (i, a) in s.addresses.iter().enumerate() {
                    if a.is_unspecified() || a.is_multicast() || a.is_broadcast() {
                        return Err(format!(
                            "addresses: `{a}` cannot be a host address (unspecified, multicast or broadcast)"
                        ));
                    }
                    if s.addresses[..i].contains(a) {
                        return Err(format!("addresses: `{a}` is listed twice"));
                    }
                }
                Ok(())
            }
            Spec::Icmp(s) => {
                if s.addresses.is_empty() {
                    return Err("addresses: at least one address is required".into());
                }
                for (i, a) in s.addresses.iter().enumerate() {
                    let group = match a {
                        IpAddr::V4(a) => a.is_multicast() || a.is_broadcast(),
                        IpAddr::V6(a) => a.is_multicast(),
                    };
                    if a.is_unspecified() || group {
                        return Err(format!(
                            "addresses: `{a}` cannot be a host address (unspecified, multicast or broadcast)"
                        ));
                    }
                    if s.addresses[..i].contains(a) {
                        return Err(format!("addresses: `{a}` is listed twice"));
                    }
                }
                Ok(())
            }
            Spec::Lb(s) => s.validate(),
            Spec::Ext(e) => e.extension().validate(),
        }
    }

    /// Builds one instance (each worker gets its own). Meant to be called after
    /// [`Spec::validate`] passed; given invalid settings it still builds something harmless
    /// rather than panicking: an empty address list answers nothing, port 0 answers only the
    /// (invalid) port 0.
    pub fn build(&self) -> Box<dyn Handler> {
        match self {
            Spec::Macswap(_) => Box::new(Macswap::new()),
            Spec::UdpEcho(s) => Box::new(UdpEcho::new(s.port)),
            Spec::Arp(s) => Box::new(Arp::new(s.mac, s.addresses.clone())),
            Spec::Icmp(s) => Box::new(Icmp::new(&s.addresses)),
            // Every worker's instance shares the spec's live state (rings, versions) and
            // keeps its own connection table.
            Spec::Lb(s) => Box::new(Lb::new(&s.control())),
            Spec::Ext(e) => e.extension().build(),
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::handlers::testutil::{reply, run, run_raw};
    use crate::pipeline::Verdict;
    use crate::wire::build::{self, Endpoints4, Endpoints6};
    use crate::wire::{Layout, L3};

    #[derive(Debug, Deserialize, Serialize)]
    struct Chain {
        handlers: Vec<Spec>,
    }

    const CONFIG: &str = r#"
[[handlers]]
kind = "arp"
mac = "02:00:00:00:00:01"
addresses = ["198.18.0.1"]

[[handlers]]
kind = "icmp"
addresses = ["198.18.0.1", "2001:db8::1"]

[[handlers]]
kind = "udp-echo"

[[handlers]]
kind = "udp-echo"
port = 9

[[handlers]]
kind = "macswap"
"#;

    fn chain() -> Vec<Spec> {
        toml::from_str::<Chain>(CONFIG).unwrap().handlers
    }

    #[test]
    fn toml_shapes() {
        let specs = chain();
        assert_eq!(
            specs,
            vec![
                Spec::Arp(ArpSpec {
                    mac: MacAddr([2, 0, 0, 0, 0, 1]),
                    addresses: vec![Ipv4Addr::new(198, 18, 0, 1)]
                }),
                Spec::Icmp(IcmpSpec {
                    addresses: vec![
                        "198.18.0.1".parse().unwrap(),
                        "2001:db8::1".parse().unwrap()
                    ]
                }),
                Spec::UdpEcho(UdpEchoSpec { port: 7 }),
                Spec::UdpEcho(UdpEchoSpec { port: 9 }),
                Spec::Macswap(MacswapSpec {}),
            ]
        );
        // Round trip through the serializer keeps the text forms.
        let text = toml::to_string(&Chain {
            handlers: specs.clone(),
        })
        .unwrap();
        assert!(text.contains("mac = \"02:00:00:00:00:01\""), "{text}");
        assert_eq!(toml::from_str::<Chain>(&text).unwrap().handlers, specs);
        for s in &specs {
            s.validate().unwrap();
            assert_eq!(s.build().name(), s.kind());
        }
    }

    #[test]
    fn serde_refuses_bad_shapes() {
        for bad in [
            "[[handlers]]\nkind = \"macswap\"\nport = 1",
            "[[handlers]]\nkind = \"udp-echo\"\nprot = 7",
            "[[handlers]]\nkind = \"udp-echo\"\nport = 70000",
            "[[handlers]]\nkind = \"arp\"\nmac = \"zz\"\naddresses = []",
            "[[handlers]]\nkind = \"arp\"\naddresses = [\"198.18.0.1\"]",
            "[[handlers]]\nkind = \"icmp\"\naddresses = [\"198.18.0.300\"]",
            "[[handlers]]\nkind = \"nat\"",
        ] {
            assert!(toml::from_str::<Chain>(bad).is_err(), "{bad}");
        }
        let e =
            toml::from_str::<Chain>("[[handlers]]\nkind = \"arp\"\nmac = \"zz\"\naddresses = []")
                .unwrap_err()
                .to_string();
        assert!(e.contains("`zz` is not a MAC address"), "{e}");
    }

    #[test]
    fn validate_names_the_field() {
        let arp = |mac: &str, addresses: &[&str]| {
            Spec::Arp(ArpSpec {
                mac: mac.parse().unwrap(),
                addresses: addresses.iter().map(|a| a.parse().unwrap()).collect(),
            })
        };
        let icmp = |addresses: &[&str]| {
            Spec::Icmp(IcmpSpec {
                addresses: addresses.iter().map(|a| a.parse().unwrap()).collect(),
            })
        };
        let cases: Vec<(Spec, &str)> = vec![
            (
                Spec::UdpEcho(UdpEchoSpec { port: 0 }),
                "port: 0 is not a valid UDP port",
            ),
            (
                arp("01:00:5e:00:00:01", &["198.18.0.1"]),
                "mac: `01:00:5e:00:00:01` is not a unicast",
            ),
            (
                arp("00:00:00:00:00:00", &["198.18.0.1"]),
                "mac: `00:00:00:00:00:00`",
            ),
            (
                arp("02:00:00:00:00:01", &[]),
                "addresses: at least one address is required",
            ),
            (
                arp("02:00:00:00:00:01", &["0.0.0.0"]),
                "addresses: `0.0.0.0` cannot",
            ),
            (
                arp("02:00:00:00:00:01", &["255.255.255.255"]),
                "addresses: `255.255.255.255`",
            ),
            (
                arp("02:00:00:00:00:01", &["198.18.0.1", "198.18.0.1"]),
                "addresses: `198.18.0.1` is listed twice",
            ),
            (icmp(&[]), "addresses: at least one address is required"),
            (icmp(&["ff02::1"]), "addresses: `ff02::1` cannot"),
            (icmp(&["::"]), "addresses: `::` cannot"),
            (icmp(&["224.0.0.1"]), "addresses: `224.0.0.1`"),
            (
                icmp(&["2001:db8::1", "2001:db8::1"]),
                "addresses: `2001:db8::1` is listed twice",
            ),
        ];
        for (spec, want) in cases {
            let e = spec.validate().unwrap_err();
            assert!(e.starts_with(want), "{e:?} should start with {want:?}");
        }
        assert!(Spec::UdpEcho(UdpEchoSpec { port: 65535 })
            .validate()
            .is_ok());
    }

    #[test]
    fn build_does_not_panic_on_unvalidated_specs() {
        let specs = [
            Spec::UdpEcho(UdpEchoSpec { port: 0 }),
            Spec::Arp(ArpSpec::default()),
            Spec::Icmp(IcmpSpec::default()),
        ];
        let req = build::icmp4_echo_request(&Endpoints4::default(), 1, 1, b"", None);
        for s in &specs {
            let out = run(s.build().as_mut(), &[&req]);
            assert_eq!(out[0], (req.clone(), Verdict::Next));
        }
    }

    /// The whole configured chain, handler by handler as the pipeline runs it: each packet is
    /// claimed by the handler meant for it.
    #[test]
    fn configured_chain_claims_each_packet_once() {
        let e4 = Endpoints4::default();
        let e6 = Endpoints6::default();
        let inputs = [
            build::arp_request(e4.src_mac, e4.src_ip, e4.dst_ip, None),
            build::icmp6_echo_request(&e6, 1, 1, b"", None),
            build::udp4(&Endpoints4 { dst_port: 9, ..e4 }, b"", None),
            build::udp4(
                &Endpoints4 {
                    dst_port: 1234,
                    ..e4
                },
                b"",
                None,
            ),
        ];
        let mut verdicts: Vec<(Vec<u8>, Verdict)> =
            inputs.iter().map(|f| (f.clone(), Verdict::Next)).collect();
        let mut claimed_by = vec![""; inputs.len()];
        for spec in chain() {
            let mut h = spec.build();
            let out = run_raw(
                h.as_mut(),
                verdicts
                    .iter()
                    .map(|(f, v)| (f.clone(), None, *v))
                    .collect(),
            );
            for (i, o) in out.into_iter().enumerate() {
                if verdicts[i].1 == Verdict::Next && o.1 != Verdict::Next {
                    claimed_by[i] = spec.kind();
                }
                verdicts[i] = o;
            }
        }
        assert_eq!(claimed_by, ["arp", "icmp", "udp-echo", "macswap"]);
        assert!(verdicts.iter().all(|(_, v)| *v == reply()));
    }

    fn any_layout() -> impl Strategy<Value = Layout> {
        (
            prop::option::of(any::<u16>()),
            prop_oneof![Just(14u16), Just(18), 0u16..100, any::<u16>()],
            prop::sample::select(vec![
                L3::None,
                L3::Arp,
                L3::Ipv4,
                L3::Ipv6,
                L3::Other(0x88cc),
            ]),
            prop::sample::select(vec![0u8, 1, 6, 17, 58, 255]),
            prop_oneof![0u16..120, any::<u16>()],
            prop_oneof![0u16..120, any::<u16>()],
        )
            .prop_map(|(vlan, l3_off, l3, l4_proto, l4_off, l4_len)| Layout {
                vlan,
                l3_off,
                l3,
                l4_proto,
                l4_off,
                l4_len,
            })
    }

    fn specs_for_fuzz() -> Vec<Spec> {
        let mut s = chain();
        // Answer for the addresses random bytes are most likely to hit, too.
        s.push(Spec::Icmp(IcmpSpec {
            addresses: vec!["0.0.0.0".parse().unwrap(), "::".parse().unwrap()],
        }));
        s.push(Spec::Arp(ArpSpec {
            mac: MacAddr([2, 0, 0, 0, 0, 1]),
            addresses: vec![Ipv4Addr::UNSPECIFIED],
        }));
        s.push(Spec::UdpEcho(UdpEchoSpec { port: 0 }));
        s
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]

        /// No handler panics, whatever the bytes and whatever the layout claims.
        #[test]
        fn handlers_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..160), layout in any_layout()) {
            for spec in specs_for_fuzz() {
                let _ = run_raw(spec.build().as_mut(), vec![(bytes.clone(), Some(layout), Verdict::Next)]);
            }
        }

        /// No handler panics on valid packets mutated after the parse (stale layout).
        #[test]
        fn handlers_never_panic_on_mutated_requests(
            pick in 0usize..6,
            flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
            cut in any::<prop::sample::Index>(),
        ) {
            let e4 = Endpoints4::default();
            let e6 = Endpoints6::default();
            let mut f = [
                build::arp_request(e4.src_mac, e4.src_ip, e4.dst_ip, Some(5)),
                build::icmp4_echo_request(&e4, 1, 1, b"abc", None),
                build::icmp6_echo_request(&e6, 1, 1, b"abc", Some(1)),
                build::udp4(&e4, b"abc", None),
                build::udp6(&e6, b"abc", None),
                build::udp4(&Endpoints4 { dst_port: 9, ..e4 }, b"", Some(2)),
            ][pick].clone();
            let layout = crate::wire::parse(&f).unwrap();
            for (at, v) in flips {
                let i = at.index(f.len());
                f[i] = v;
            }
            let len = cut.index(f.len() + 1);
            f.truncate(len);
            for spec in specs_for_fuzz() {
                let _ = run_raw(spec.build().as_mut(), vec![(f.clone(), Some(layout), Verdict::Next)]);
            }
        }
    }
}
