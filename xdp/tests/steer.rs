//! The steering program's parser and matcher, run in the kernel over hand-made frames with
//! `BPF_PROG_TEST_RUN` (no interface needed). Needs root: SKIPs loudly, FAILs under CI=true.
//!
//! With no AF_XDP socket registered, a matching frame is still XDP_PASS (the redirect's
//! fallback), so matches show in the counters: `rule_hits` and `no_socket` count them,
//! `passed` counts the rest.

mod common;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, UdpSocket};
use std::os::fd::AsRawFd;

use xdp::{Action, Error, Proto, Rule, Steering, MAX_QUEUES, MAX_RULES};

const TCP: u8 = 6;
const UDP: u8 = 17;
const ICMP: u8 = 1;

/// Frame builder: Ethernet (+ optional 802.1Q tag) / IPv4 or IPv6 / 8 bytes of L4 header
/// (source port 40000, `dport`). Checksums are not filled: XDP does not look at them.
struct Frame {
    vlan: Option<u16>,
    dst: IpAddr,
    proto: u8,
    dport: u16,
    ip_options: usize,
    frag_offset: u16,
    l4_len: usize,
}

impl Frame {
    fn new(dst: impl Into<IpAddr>, proto: u8, dport: u16) -> Frame {
        Frame {
            vlan: None,
            dst: dst.into(),
            proto,
            dport,
            ip_options: 0,
            frag_offset: 0,
            l4_len: 8,
        }
    }

    fn bytes(&self) -> Vec<u8> {
        let mut f = vec![0x02, 0, 0xc6, 0x12, 0, 0x01, 0x02, 0, 0xc6, 0x12, 0, 0x02];
        if let Some(id) = self.vlan {
            f.extend_from_slice(&[0x81, 0x00]);
            f.extend_from_slice(&id.to_be_bytes());
        }
        let mut l4 = Vec::new();
        l4.extend_from_slice(&40000u16.to_be_bytes());
        l4.extend_from_slice(&self.dport.to_be_bytes());
        l4.extend_from_slice(&[0, 8, 0, 0]);
        l4.truncate(self.l4_len);
        match self.dst {
            IpAddr::V4(dst) => {
                f.extend_from_slice(&[0x08, 0x00]);
                let ihl = 5 + self.ip_options / 4;
                let total = (ihl * 4 + l4.len()) as u16;
                f.push(0x40 | ihl as u8);
                f.push(0);
                f.extend_from_slice(&total.to_be_bytes());
                f.extend_from_slice(&[0, 1]);
                f.extend_from_slice(&self.frag_offset.to_be_bytes());
                f.extend_from_slice(&[64, self.proto, 0, 0]);
                f.extend_from_slice(&[198, 18, 0, 2]);
                f.extend_from_slice(&dst.octets());
                f.resize(f.len() + self.ip_options, 1); // NOP options
            }
            IpAddr::V6(dst) => {
                f.extend_from_slice(&[0x86, 0xdd]);
                f.extend_from_slice(&[0x60, 0, 0, 0]);
                f.extend_from_slice(&(l4.len() as u16).to_be_bytes());
                f.extend_from_slice(&[self.proto, 64]);
                f.extend_from_slice(&"2001:db8::2".parse::<Ipv6Addr>().unwrap().octets());
                f.extend_from_slice(&dst.octets());
            }
        }
        f.extend_from_slice(&l4);
        f
    }
}

fn v4(d: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, d)
}

fn v6(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}

fn arp_request() -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&[0x02, 0, 0xc6, 0x12, 0, 0x02, 0x08, 0x06]);
    f.extend_from_slice(&[
        0, 1, 8, 0, 6, 4, 0, 1, 0x02, 0, 0xc6, 0x12, 0, 0x02, 198, 18, 0, 2,
    ]);
    f.extend_from_slice(&[0, 0, 0, 0, 0, 0, 198, 18, 0, 1]);
    f
}

fn loaded(test: &str) -> Option<Steering> {
    if !common::privileged(test) {
        return None;
    }
    match Steering::load() {
        Ok(s) => Some(s),
        Err(e) => {
            common::setup_failed(test, &format!("{e}"));
            None
        }
    }
}

/// Runs `frame` and returns which rule it hit (None: passed unmatched).
fn which_rule(s: &Steering, frame: &[u8]) -> Option<usize> {
    let before = s.rule_hits().unwrap();
    let passed = s.passed().unwrap();
    assert_eq!(
        s.test_run(frame).unwrap(),
        Action::Pass,
        "no socket registered: always XDP_PASS"
    );
    let after = s.rule_hits().unwrap();
    let hit: Vec<usize> = (0..after.len())
        .filter(|&i| after[i] != before[i])
        .collect();
    match hit.as_slice() {
        [] => {
            assert_eq!(
                s.passed().unwrap(),
                passed + 1,
                "unmatched frames count as passed"
            );
            None
        }
        [i] => {
            assert_eq!(after[*i], before[*i] + 1);
            assert_eq!(
                s.passed().unwrap(),
                passed,
                "a matched frame is not counted as passed"
            );
            Some(*i)
        }
        _ => panic!("one frame hit several rules: {hit:?}"),
    }
}

#[test]
fn rules_match_on_family_protocol_prefix_and_ports() {
    let Some(mut s) = loaded("rules_match_on_family_protocol_prefix_and_ports") else {
        return;
    };
    s.set_rules(&[
        "udp 198.18.0.1 7".parse().unwrap(),
        "tcp 2001:db8::/32 8000-8080".parse().unwrap(),
        "any 198.18.1.0/24".parse().unwrap(),
        "udp 198.18.0.0/24 9-10".parse().unwrap(),
    ])
    .unwrap();

    let cases: Vec<(&str, Vec<u8>, Option<usize>)> = vec![
        (
            "udp to the host and port",
            Frame::new(v4(1), UDP, 7).bytes(),
            Some(0),
        ),
        ("udp, other port", Frame::new(v4(1), UDP, 8).bytes(), None),
        ("tcp to a udp rule", Frame::new(v4(1), TCP, 7).bytes(), None),
        (
            "udp to another host",
            Frame::new(v4(3), UDP, 7).bytes(),
            None,
        ),
        (
            "ipv4 with 8 bytes of options",
            Frame {
                ip_options: 8,
                ..Frame::new(v4(1), UDP, 7)
            }
            .bytes(),
            Some(0),
        ),
        (
            "ipv4 with 40 bytes of options",
            Frame {
                ip_options: 40,
                ..Frame::new(v4(1), UDP, 7)
            }
            .bytes(),
            Some(0),
        ),
        (
            "802.1Q tagged",
            Frame {
                vlan: Some(100),
                ..Frame::new(v4(1), UDP, 7)
            }
            .bytes(),
            Some(0),
        ),
        (
            "802.1Q tagged, other port",
            Frame {
                vlan: Some(100),
                ..Frame::new(v4(1), UDP, 8)
            }
            .bytes(),
            None,
        ),
        (
            "udp truncated before the ports",
            Frame {
                l4_len: 3,
                ..Frame::new(v4(1), UDP, 7)
            }
            .bytes(),
            None,
        ),
        (
            "non-first fragment has no ports",
            Frame {
                frag_offset: 185,
                ..Frame::new(v4(1), UDP, 7)
            }
            .bytes(),
            None,
        ),
        (
            "first fragment has ports",
            Frame {
                frag_offset: 0x2000,
                ..Frame::new(v4(1), UDP, 7)
            }
            .bytes(),
            Some(0),
        ),
        (
            "tcp v6 low end of range",
            Frame::new(v6("2001:db8::5"), TCP, 8000).bytes(),
            Some(1),
        ),
        (
            "tcp v6 high end of range",
            Frame::new(v6("2001:db8:ffff::5"), TCP, 8080).bytes(),
            Some(1),
        ),
        (
            "tcp v6 past the range",
            Frame::new(v6("2001:db8::5"), TCP, 8081).bytes(),
            None,
        ),
        (
            "tcp v6 outside the prefix",
            Frame::new(v6("2001:db9::5"), TCP, 8000).bytes(),
            None,
        ),
        (
            "v6 tagged",
            Frame {
                vlan: Some(7),
                ..Frame::new(v6("2001:db8::1"), TCP, 8001)
            }
            .bytes(),
            Some(1),
        ),
        (
            "icmp to the any rule",
            Frame {
                l4_len: 0,
                ..Frame::new(Ipv4Addr::new(198, 18, 1, 9), ICMP, 0)
            }
            .bytes(),
            Some(2),
        ),
        (
            "udp to the any rule",
            Frame::new(Ipv4Addr::new(198, 18, 1, 255), UDP, 53).bytes(),
            Some(2),
        ),
        (
            "next /24 is outside",
            Frame::new(Ipv4Addr::new(198, 18, 2, 1), UDP, 53).bytes(),
            None,
        ),
        (
            "port range low",
            Frame::new(v4(200), UDP, 9).bytes(),
            Some(3),
        ),
        (
            "port range high",
            Frame::new(v4(200), UDP, 10).bytes(),
            Some(3),
        ),
        (
            "first match wins",
            Frame::new(v4(1), UDP, 7).bytes(),
            Some(0),
        ),
        ("arp", arp_request(), None),
        ("ethernet header only", arp_request()[..14].to_vec(), None),
    ];
    let no_socket = s.no_socket().unwrap();
    let mut matched = 0;
    for (what, frame, want) in &cases {
        assert_eq!(which_rule(&s, frame), *want, "{what}");
        matched += u64::from(want.is_some());
    }
    assert_eq!(
        s.no_socket().unwrap(),
        no_socket + matched,
        "each match fell back to the kernel"
    );
}

#[test]
fn set_rules_switches_atomically_without_reload() {
    let Some(mut s) = loaded("set_rules_switches_atomically_without_reload") else {
        return;
    };
    let id = s.prog_id();
    let frame7 = Frame::new(v4(1), UDP, 7).bytes();
    let frame9 = Frame::new(v4(1), UDP, 9).bytes();

    assert_eq!(which_rule(&s, &frame7), None, "no rules: everything passes");
    s.set_rules(&[Rule::host(v4(1).into()).proto(Proto::Udp).port(7)])
        .unwrap();
    assert_eq!(which_rule(&s, &frame7), Some(0));
    assert_eq!(which_rule(&s, &frame9), None);
    assert_eq!(s.rule_hits().unwrap(), vec![1]);

    // New set: the old rule moves to slot 1, counters start from zero.
    s.set_rules(&[
        Rule::new(v4(0).into(), 24).proto(Proto::Udp).port(9),
        Rule::host(v4(1).into()).proto(Proto::Udp).port(7),
    ])
    .unwrap();
    assert_eq!(s.rule_hits().unwrap(), vec![0, 0]);
    assert_eq!(which_rule(&s, &frame9), Some(0));
    assert_eq!(which_rule(&s, &frame7), Some(1));
    // A third set reuses the first bank: its stale counters must not show.
    s.set_rules(&[Rule::host(v4(1).into()).proto(Proto::Udp).port(7)])
        .unwrap();
    assert_eq!(s.rule_hits().unwrap(), vec![0]);
    assert_eq!(which_rule(&s, &frame7), Some(0));
    assert_eq!(s.prog_id(), id, "no reload");

    s.set_rules(&[]).unwrap();
    assert_eq!(
        which_rule(&s, &frame7),
        None,
        "empty set: everything passes"
    );
}

#[test]
fn a_rejected_rule_set_changes_nothing() {
    let Some(mut s) = loaded("a_rejected_rule_set_changes_nothing") else {
        return;
    };
    let good = Rule::host(v4(1).into()).proto(Proto::Udp).port(7);
    s.set_rules(std::slice::from_ref(&good)).unwrap();

    let bad = Rule::new(v4(1).into(), 24);
    match s.set_rules(&[good.clone(), bad]) {
        Err(Error::InvalidRule {
            index: 1, reason, ..
        }) => assert!(reason.contains("198.18.0.0/24"), "{reason}"),
        other => panic!("expected InvalidRule for rule 1, got {other:?}"),
    }
    let too_many = vec![good.clone(); MAX_RULES + 1];
    assert!(
        matches!(s.set_rules(&too_many), Err(Error::TooManyRules { count, .. }) if count == MAX_RULES + 1)
    );
    assert_eq!(s.rules(), std::slice::from_ref(&good));
    assert_eq!(which_rule(&s, &Frame::new(v4(1), UDP, 7).bytes()), Some(0));

    let full = vec![good; MAX_RULES];
    s.set_rules(&full).unwrap();
    assert_eq!(s.rule_hits().unwrap().len(), MAX_RULES);
}

#[test]
fn xskmap_accepts_only_af_xdp_sockets() {
    let Some(s) = loaded("xskmap_accepts_only_af_xdp_sockets") else {
        return;
    };
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let err = s.register_xsk(0, udp.as_raw_fd()).unwrap_err();
    assert!(matches!(err, Error::Xsk { queue: 0, .. }), "{err}");
    assert!(err.to_string().contains("AF_XDP socket"), "{err}");
    assert!(matches!(
        s.register_xsk(MAX_QUEUES, udp.as_raw_fd()),
        Err(Error::QueueOutOfRange { .. })
    ));
    s.unregister_xsk(0)
        .expect("unregistering an empty queue is not an error");
    assert!(matches!(
        s.unregister_xsk(MAX_QUEUES),
        Err(Error::QueueOutOfRange { .. })
    ));
}
