//! The `Lb` service's side of the wire: finding an `lb` handler in the engine's chain, and
//! turning its live state ([`lb::Control`]) into messages and wire changes into
//! [`lb::Change`]s.
//!
//! The balancer validates and applies changes itself, all or nothing
//! ([`lb::Control::apply`]); this module only checks what the wire adds (strings that must
//! be addresses, prefixes or flag names, a port that must fit in 16 bits, an unset `oneof`)
//! and names the field the way the balancer does (`changes[2].real`), so that a request
//! refused here has changed nothing either.
//!
//! The handler is found through the specs the engine built its chain from: every worker's
//! `lb` instance and the spec share one [`lb::Control`] (see [`lb::LbSpec::control`]), so the
//! control plane acts on exactly what the workers run, with no engine command and no worker
//! involved. Chains built in code (no specs) have no reachable balancer.

use std::net::IpAddr;
use std::str::FromStr;

use dataplane::control::ChangeError;
use dataplane::engine::Engine;
use dataplane::handlers::lb::{self, Change, Flag, Prefix, Proto, VipKey};
use dataplane::handlers::Spec;
use tonic::Status;

use crate::convert::{self, invalid};
use crate::pb;

/// The lb handler `handler` (an index in the chain) or, when `None`, the chain's only one:
/// its index and control handle.
pub fn find(e: &Engine, handler: Option<u32>) -> Result<(u32, lb::Control), Status> {
    let chain = e.chain();
    let Some(specs) = chain.specs else {
        return Err(Status::failed_precondition(
            "handler: the handler chain was built in code (no settings to reach an lb handler through)",
        ));
    };
    let lbs: Vec<(usize, &lb::LbSpec)> = specs
        .iter()
        .enumerate()
        .filter_map(|(i, s)| match s {
            Spec::Lb(l) => Some((i, l)),
            _ => None,
        })
        .collect();
    match handler {
        Some(h) => match specs.get(h as usize) {
            Some(Spec::Lb(l)) => Ok((h, l.control())),
            Some(other) => Err(Status::not_found(format!(
                "handler: handler {h} of the chain is {}, not lb{}",
                other.kind(),
                at(&lbs)
            ))),
            None => Err(Status::not_found(format!(
                "handler: the chain has {} handlers, there is no handler {h}{}",
                specs.len(),
                at(&lbs)
            ))),
        },
        None => match lbs.as_slice() {
            [(i, l)] => Ok((*i as u32, l.control())),
            [] => Err(Status::failed_precondition(format!(
                "handler: no lb handler in the chain (version {}: {}); add one with `ctl handlers set`",
                chain.version,
                if chain.names.is_empty() {
                    "empty".to_string()
                } else {
                    chain.names.join(", ")
                }
            ))),
            _ => Err(Status::failed_precondition(format!(
                "handler: the chain has {} lb handlers{}; choose one with handler (ctl: --handler N)",
                lbs.len(),
                at(&lbs)
            ))),
        },
    }
}

fn at(lbs: &[(usize, &lb::LbSpec)]) -> String {
    if lbs.is_empty() {
        return String::new();
    }
    format!(
        " (lb at {})",
        lbs.iter()
            .map(|(i, _)| i.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// A refused change as a status; the balancer's `expected_version` is the wire's
/// `base_version`.
pub fn status(e: &ChangeError) -> Status {
    let renamed;
    let e = match e.field() {
        Some("expected_version") => {
            renamed = match e {
                ChangeError::Precondition { msg, .. } => {
                    ChangeError::precondition("base_version", msg.clone())
                }
                other => other.clone(),
            };
            &renamed
        }
        _ => e,
    };
    convert::status(e)
}

fn proto_of(p: Proto) -> pb::LbProto {
    match p {
        Proto::Tcp => pb::LbProto::Tcp,
        Proto::Udp => pb::LbProto::Udp,
    }
}

pub fn vip_ref(k: &VipKey) -> pb::VipRef {
    pb::VipRef {
        address: k.address.to_string(),
        port: u32::from(k.port),
        proto: proto_of(k.proto) as i32,
    }
}

/// `198.18.1.1:80/tcp`, `[2001:db8::1]:0/udp`, as tools print a VIP.
pub fn vip_text(v: &pb::VipRef) -> String {
    let proto = match pb::LbProto::try_from(v.proto) {
        Ok(pb::LbProto::Tcp) => "tcp",
        Ok(pb::LbProto::Udp) => "udp",
        _ => "?",
    };
    if v.address.contains(':') {
        format!("[{}]:{}/{proto}", v.address, v.port)
    } else {
        format!("{}:{}/{proto}", v.address, v.port)
    }
}

fn address(field: &str, s: &str) -> Result<IpAddr, Status> {
    if s.is_empty() {
        return Err(invalid(field, "required: an IPv4 or IPv6 address"));
    }
    IpAddr::from_str(s.trim_start_matches('[').trim_end_matches(']')).map_err(|_| {
        invalid(
            field,
            format!("`{s}` is not an IP address (expected IPv4 like 198.18.1.1 or IPv6 like 2001:db8::1)"),
        )
    })
}

/// A VIP from the wire; the field is `<at>.vip`.
pub fn vip_key(at: &str, v: Option<&pb::VipRef>) -> Result<VipKey, Status> {
    let field = format!("{at}.vip");
    let v = v.ok_or_else(|| invalid(&field, "required (address, port, proto)"))?;
    let addr = address(&format!("{field}.address"), &v.address)?;
    let port = u16::try_from(v.port).map_err(|_| {
        invalid(
            &format!("{field}.port"),
            format!("{} is not a port (0-65535; 0 matches any port)", v.port),
        )
    })?;
    let proto = match pb::LbProto::try_from(v.proto) {
        Ok(pb::LbProto::Tcp) => Proto::Tcp,
        Ok(pb::LbProto::Udp) => Proto::Udp,
        _ => {
            return Err(invalid(
                &format!("{field}.proto"),
                "required: LB_PROTO_TCP or LB_PROTO_UDP",
            ))
        }
    };
    Ok(VipKey::new(addr, port, proto))
}

fn flags(at: &str, names: &[String]) -> Result<Vec<Flag>, Status> {
    names
        .iter()
        .enumerate()
        .map(|(j, n)| {
            n.parse::<Flag>().map_err(|e| {
                invalid(
                    &format!("{at}.flags[{j}]"),
                    format!("{e}; use {}", Flag::ALL.map(|f| f.as_str()).join(", ")),
                )
            })
        })
        .collect()
}

fn prefix(field: &str, s: &str) -> Result<Prefix, Status> {
    s.parse::<Prefix>().map_err(|e| invalid(field, e))
}

/// The wire's changes as the balancer's; the error names `changes[i].<field>`.
pub fn changes(cs: &[pb::LbChange]) -> Result<Vec<Change>, Status> {
    use pb::lb_change::Change as C;
    cs.iter()
        .enumerate()
        .map(|(i, c)| {
            let at = format!("changes[{i}]");
            let real = |s: &str| address(&format!("{at}.real"), s);
            Ok(match c.change.as_ref() {
                None => {
                    return Err(invalid(
                        &at,
                        "empty: set one of add_vip, remove_vip, set_flags, add_real, remove_real, \
                         set_weight, set_down, add_quic_server, remove_quic_server, add_src_route, \
                         remove_src_route",
                    ))
                }
                Some(C::AddVip(a)) => Change::AddVip {
                    vip: vip_key(&at, a.vip.as_ref())?,
                    flags: flags(&at, &a.flags)?,
                },
                Some(C::RemoveVip(r)) => Change::RemoveVip {
                    vip: vip_key(&at, r.vip.as_ref())?,
                },
                Some(C::SetFlags(s)) => Change::SetFlags {
                    vip: vip_key(&at, s.vip.as_ref())?,
                    flags: flags(&at, &s.flags)?,
                },
                Some(C::AddReal(a)) => Change::AddReal {
                    vip: vip_key(&at, a.vip.as_ref())?,
                    real: real(&a.real)?,
                    weight: a.weight.unwrap_or(1),
                },
                Some(C::RemoveReal(r)) => Change::RemoveReal {
                    vip: vip_key(&at, r.vip.as_ref())?,
                    real: real(&r.real)?,
                },
                Some(C::SetWeight(w)) => Change::SetWeight {
                    vip: vip_key(&at, w.vip.as_ref())?,
                    real: real(&w.real)?,
                    weight: w.weight,
                },
                Some(C::SetDown(d)) => Change::SetDown {
                    vip: vip_key(&at, d.vip.as_ref())?,
                    real: real(&d.real)?,
                    down: d.down,
                },
                Some(C::AddQuicServer(q)) => Change::AddQuicServer {
                    id: q.id,
                    real: real(&q.real)?,
                },
                Some(C::RemoveQuicServer(q)) => Change::RemoveQuicServer { id: q.id },
                Some(C::AddSrcRoute(s)) => Change::AddSrcRoute {
                    prefix: prefix(&format!("{at}.prefix"), &s.prefix)?,
                    real: real(&s.real)?,
                },
                Some(C::RemoveSrcRoute(s)) => Change::RemoveSrcRoute {
                    prefix: prefix(&format!("{at}.prefix"), &s.prefix)?,
                },
            })
        })
        .collect()
}

/// The balancer's published configuration.
pub fn state(handler: u32, c: &lb::Control) -> pb::LbState {
    // One read of the desired state for the VIPs, and the settings beside it.
    let show = c.show();
    let spec = c.spec();
    pb::LbState {
        handler,
        version: show.version,
        router_mac: spec.router_mac.to_string(),
        encap: match spec.encap {
            lb::Encap::Ipip => "ipip",
            lb::Encap::Gue => "gue",
        }
        .to_string(),
        gue_port: u32::from(spec.gue_port),
        conn_table_size: spec.conn_table_size,
        vips: show
            .vips
            .iter()
            .map(|v| pb::LbVip {
                vip: Some(vip_ref(&v.vip)),
                number: u32::from(v.number),
                flags: v.flags.iter().map(|f| f.as_str().to_string()).collect(),
                reals: v
                    .reals
                    .iter()
                    .map(|r| pb::LbReal {
                        address: r.address.to_string(),
                        id: r.id,
                        weight: r.weight,
                        down: r.down,
                        slots: r.slots,
                    })
                    .collect(),
            })
            .collect(),
        quic_servers: show
            .quic_servers
            .iter()
            .map(|q| pb::LbQuicServer {
                id: q.id,
                real: q.real.to_string(),
            })
            .collect(),
        src_routes: show
            .src_routes
            .iter()
            .map(|s| pb::LbSrcRoute {
                prefix: s.prefix.to_string(),
                real: s.real.to_string(),
            })
            .collect(),
    }
}

/// The balancer's counters, with the engine's `lb_*` drops.
pub fn stats(handler: u32, c: &lb::Control, e: &Engine) -> pb::LbStats {
    let s = c.stats();
    let drops = e.snapshot().drops();
    pb::LbStats {
        handler,
        version: s.version,
        workers: s.workers as u32,
        vips: s
            .vips
            .iter()
            .map(|v| pb::LbVipStats {
                vip: Some(vip_ref(&v.vip)),
                packets: v.packets,
                bytes: v.bytes,
            })
            .collect(),
        conn_hits: s.conn_hits,
        conn_misses: s.conn_misses,
        conn_evictions: s.conn_evictions,
        quic_routed: s.quic_routed,
        src_routed: s.src_routed,
        ring_routed: s.ring_routed,
        icmp_echo: s.icmp_echo,
        icmp_errors: s.icmp_errors,
        passed: s.passed,
        drops: convert::drops(&drops)
            .into_iter()
            .filter(|d| d.reason.starts_with("lb_"))
            .collect(),
    }
}

/// For `Handlers.Get`: an lb spec with its live state in place of its starting state, so
/// that the chain as read back is what a config file would need to start in this state.
pub fn live_spec(s: &Spec) -> Spec {
    match s {
        Spec::Lb(l) => Spec::Lb(l.control().spec()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    fn vip(address: &str, port: u32, proto: pb::LbProto) -> Option<pb::VipRef> {
        Some(pb::VipRef {
            address: address.into(),
            port,
            proto: proto as i32,
        })
    }

    #[test]
    fn wire_changes_parse_and_name_the_field() {
        use pb::lb_change::Change as C;
        let ok = changes(&[
            pb::LbChange {
                change: Some(C::AddVip(pb::LbAddVip {
                    vip: vip("2001:db8::1", 0, pb::LbProto::Udp),
                    flags: vec!["quic".into()],
                })),
            },
            pb::LbChange {
                change: Some(C::AddReal(pb::LbAddReal {
                    vip: vip("198.18.1.1", 80, pb::LbProto::Tcp),
                    real: "10.0.0.1".into(),
                    weight: None,
                })),
            },
        ])
        .unwrap();
        assert_eq!(
            ok[1],
            Change::AddReal {
                vip: "198.18.1.1:80/tcp".parse().unwrap(),
                real: "10.0.0.1".parse().unwrap(),
                weight: 1
            }
        );
        let bad = |c: C| {
            changes(&[
                pb::LbChange { change: None },
                pb::LbChange { change: Some(c) },
            ])
        };
        let e = changes(&[pb::LbChange { change: None }]).unwrap_err();
        assert!(
            e.message().starts_with("changes[0]: empty"),
            "{}",
            e.message()
        );
        let e = bad(C::RemoveVip(pb::LbRemoveVip { vip: None })).unwrap_err();
        assert!(e.message().starts_with("changes[0]"), "{}", e.message());
        let one = |c: C| changes(&[pb::LbChange { change: Some(c) }]).unwrap_err();
        for (c, field) in [
            (
                C::RemoveVip(pb::LbRemoveVip {
                    vip: vip("300.1.1.1", 80, pb::LbProto::Tcp),
                }),
                "changes[0].vip.address: `300.1.1.1` is not an IP address",
            ),
            (
                C::RemoveVip(pb::LbRemoveVip {
                    vip: vip("198.18.1.1", 70000, pb::LbProto::Tcp),
                }),
                "changes[0].vip.port",
            ),
            (
                C::RemoveVip(pb::LbRemoveVip {
                    vip: vip("198.18.1.1", 80, pb::LbProto::Unspecified),
                }),
                "changes[0].vip.proto",
            ),
            (
                C::AddReal(pb::LbAddReal {
                    vip: vip("198.18.1.1", 80, pb::LbProto::Tcp),
                    real: "10.0.0".into(),
                    weight: Some(1),
                }),
                "changes[0].real: `10.0.0` is not an IP address",
            ),
            (
                C::SetFlags(pb::LbSetFlags {
                    vip: vip("198.18.1.1", 80, pb::LbProto::Tcp),
                    flags: vec!["quic".into(), "fast".into()],
                }),
                "changes[0].flags[1]: `fast` is not a VIP flag",
            ),
            (
                C::AddSrcRoute(pb::LbAddSrcRoute {
                    prefix: "10.0.0.1/8".into(),
                    real: "10.0.0.1".into(),
                }),
                "changes[0].prefix: `10.0.0.1/8` has host bits set",
            ),
        ] {
            let e = one(c);
            assert_eq!(e.code(), Code::InvalidArgument);
            assert!(e.message().starts_with(field), "{} vs {field}", e.message());
        }
    }

    #[test]
    fn stale_version_is_named_as_on_the_wire() {
        let s = status(&ChangeError::precondition("expected_version", "stale"));
        assert_eq!(s.code(), Code::FailedPrecondition);
        assert_eq!(s.message(), "base_version: stale");
        let s = status(&ChangeError::not_found("changes[0].vip", "unknown VIP"));
        assert_eq!(s.code(), Code::NotFound);
        assert_eq!(s.message(), "changes[0].vip: unknown VIP");
    }

    #[test]
    fn vips_print_as_tools_write_them() {
        let k: VipKey = "[2001:db8::1]:0/udp".parse().unwrap();
        assert_eq!(vip_text(&vip_ref(&k)), "[2001:db8::1]:0/udp");
        let k: VipKey = "198.18.1.1:80/tcp".parse().unwrap();
        assert_eq!(vip_text(&vip_ref(&k)), "198.18.1.1:80/tcp");
        assert_eq!(vip_key("x", Some(&vip_ref(&k))).unwrap(), k);
    }
}
