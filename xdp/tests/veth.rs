//! The steering program on a live veth (scripts/lab topology): attach in native and generic
//! mode, steer UDP from the peer namespace, keep ARP/ICMP working, change rules at run time,
//! replace a program left by a "crashed" run, refuse to touch a foreign program, and leave
//! nothing behind on detach. Needs root: SKIPs loudly, FAILs under CI=true.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use common::{in_netns, Lab, Netns};
use xdp::{Error, Mode, Proto, Rule, Steering, PROG_NAME};

const APP_IP4: &str = "198.18.0.1";
const APP_IP6: &str = "2001:db8::1";

fn lab(test: &str) -> Option<Lab> {
    if !common::privileged(test) {
        return None;
    }
    match Lab::up() {
        Ok(lab) => Some(lab),
        Err(e) => {
            common::setup_failed(test, &e);
            None
        }
    }
}

/// Sends `count` datagrams from the peer namespace to `dst` and receives them on a socket
/// bound to `dst` in the app namespace (the caller's thread must be in it): packets that
/// matched a rule with no AF_XDP socket must still reach the kernel.
fn udp_round(lab: &Lab, dst: &str, port: u16, count: usize) {
    let dst: SocketAddr = SocketAddr::new(dst.parse().unwrap(), port);
    let rx = UdpSocket::bind(dst).expect("binding the receiver in the app namespace");
    rx.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    in_netns(&lab.peer_ns, || {
        let any: SocketAddr = if dst.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }
            .parse()
            .unwrap();
        let tx = UdpSocket::bind(any).unwrap();
        for i in 0..count {
            tx.send_to(format!("slipstream {i}").as_bytes(), dst)
                .expect("sending from the peer");
        }
    });
    let mut buf = [0u8; 64];
    for i in 0..count {
        let (n, _) = rx
            .recv_from(&mut buf)
            .unwrap_or_else(|e| panic!("datagram {i} of {count} to {dst}: {e}"));
        assert_eq!(&buf[..n], format!("slipstream {i}").as_bytes());
    }
}

fn steer_udp_and_keep_the_rest(test: &str, mode: Mode) {
    let Some(lab) = lab(test) else { return };
    let _ns = Netns::enter(&lab.app_ns).expect("entering the app namespace");
    let mut s = Steering::attach(&lab.app_if, mode).expect("attach");
    assert_eq!(s.mode(), Some(mode));
    assert_eq!(s.ifname(), Some(lab.app_if.as_str()));
    // `ip link` flags the mode in the first line: "mtu 1500 xdp ..." or "... xdpgeneric ...".
    let link = lab.app_link();
    let keyword = if mode == Mode::Native {
        " xdp "
    } else {
        " xdpgeneric "
    };
    let first = link.lines().next().unwrap_or_default();
    assert!(
        first.contains(keyword),
        "{mode} attachment not shown by ip link:\n{link}"
    );
    assert!(link.contains(&format!("name {PROG_NAME} ")), "{link}");

    s.set_rules(&["udp 198.18.0.1 7".parse().unwrap()]).unwrap();
    udp_round(&lab, APP_IP4, 7, 5);
    assert_eq!(s.rule_hits().unwrap(), vec![5], "5 datagrams to udp/7");
    assert_eq!(
        s.no_socket().unwrap(),
        5,
        "no XSK registered: all 5 fell back to the kernel"
    );

    let passed = s.passed().unwrap();
    assert!(passed > 0, "ARP at least must have passed");
    assert!(
        lab.ping_from_peer(APP_IP4, 3),
        "ping over IPv4 with the program attached"
    );
    assert!(
        lab.ping_from_peer(APP_IP6, 3),
        "ping over IPv6 with the program attached"
    );
    assert!(s.passed().unwrap() >= passed + 6, "6 echo requests passed");
    udp_round(&lab, APP_IP4, 8, 2);
    assert_eq!(s.rule_hits().unwrap(), vec![5], "udp/8 matches no rule");

    // Runtime update, no reload: a new rule for IPv6 gets its own counter.
    let id = s.prog_id();
    s.set_rules(&[
        Rule::host(APP_IP4.parse().unwrap())
            .proto(Proto::Udp)
            .port(7),
        Rule::new("2001:db8::".parse().unwrap(), 64)
            .proto(Proto::Udp)
            .ports(9..=10),
    ])
    .unwrap();
    udp_round(&lab, APP_IP6, 9, 3);
    udp_round(&lab, APP_IP6, 10, 1);
    udp_round(&lab, APP_IP4, 7, 2);
    assert_eq!(s.rule_hits().unwrap(), vec![2, 4]);
    assert_eq!(s.prog_id(), id);
    assert!(
        lab.app_link().contains(&format!(" id {id} ")),
        "the same program is still attached"
    );

    s.detach().unwrap();
    assert_eq!(s.mode(), None);
    let link = lab.app_link();
    assert!(
        !link.contains("xdp"),
        "detach left XDP on the link:\n{link}"
    );
    assert!(lab.ping_from_peer(APP_IP4, 1), "ping after detach");
}

#[test]
fn native_mode_steers_udp_and_passes_the_rest() {
    steer_udp_and_keep_the_rest("native_mode_steers_udp_and_passes_the_rest", Mode::Native);
}

#[test]
fn generic_mode_steers_udp_and_passes_the_rest() {
    steer_udp_and_keep_the_rest("generic_mode_steers_udp_and_passes_the_rest", Mode::Generic);
}

#[test]
fn auto_mode_picks_native_on_veth() {
    let Some(lab) = lab("auto_mode_picks_native_on_veth") else {
        return;
    };
    let _ns = Netns::enter(&lab.app_ns).unwrap();
    let s = Steering::attach(&lab.app_if, Mode::Auto).expect("attach");
    assert_eq!(s.mode(), Some(Mode::Native), "veth has native XDP");
    drop(s);
    let link = lab.app_link();
    assert!(!link.contains("xdp"), "drop left XDP on the link:\n{link}");
}

/// Regression guard for the crash case: a run that dies leaves its program attached; the
/// next run must replace it (same mode: atomically; other mode: detach first).
#[test]
fn a_stale_program_from_a_crashed_run_is_replaced() {
    let Some(lab) = lab("a_stale_program_from_a_crashed_run_is_replaced") else {
        return;
    };
    let _ns = Netns::enter(&lab.app_ns).unwrap();
    for (crashed, next) in [
        (Mode::Native, Mode::Native),
        (Mode::Generic, Mode::Generic),
        (Mode::Generic, Mode::Native),
        (Mode::Native, Mode::Generic),
    ] {
        let stale = Steering::attach(&lab.app_if, crashed).expect("first attach");
        let stale_id = stale.prog_id();
        std::mem::forget(stale); // a crash: no detach, the program stays on the link
        assert!(lab.app_link().contains(&format!(" id {stale_id} ")));

        let mut s = Steering::attach(&lab.app_if, next)
            .unwrap_or_else(|e| panic!("attach {next} over a stale {crashed} program: {e}"));
        let link = lab.app_link();
        assert!(link.contains(&format!(" id {} ", s.prog_id())), "{link}");
        assert!(
            !link.contains(&format!(" id {stale_id} ")),
            "stale program still attached:\n{link}"
        );
        s.set_rules(&["udp 198.18.0.1 7".parse().unwrap()]).unwrap();
        udp_round(&lab, APP_IP4, 7, 1);
        assert_eq!(
            s.rule_hits().unwrap(),
            vec![1],
            "the new program is the one running"
        );
        s.detach().unwrap();
        assert!(
            !lab.app_link().contains("xdp"),
            "{crashed} -> {next}: detach left XDP behind"
        );
    }
}

#[test]
fn a_foreign_program_is_left_alone() {
    let Some(lab) = lab("a_foreign_program_is_left_alone") else {
        return;
    };
    let _ns = Netns::enter(&lab.app_ns).unwrap();
    let foreign =
        foreign::Prog::load_and_attach(&lab.app_if).expect("attaching a foreign XDP program");
    match Steering::attach(&lab.app_if, Mode::Auto) {
        Err(Error::ForeignProgram {
            name,
            mode: Mode::Generic,
            ..
        }) => assert_eq!(name, "not_slipstream"),
        other => panic!("expected ForeignProgram, got {other:?}"),
    }
    assert!(lab.app_link().contains("not_slipstream") || lab.app_link().contains("xdpgeneric"));
    drop(foreign);
    let s = Steering::attach(&lab.app_if, Mode::Generic)
        .expect("attach once the foreign program is gone");
    assert_ne!(PROG_NAME, "not_slipstream");
    drop(s);
    assert!(!lab.app_link().contains("xdp"));
}

#[test]
fn detach_from_another_namespace_still_removes_the_program() {
    let Some(lab) = lab("detach_from_another_namespace_still_removes_the_program") else {
        return;
    };
    let ns = Netns::enter(&lab.app_ns).unwrap();
    let s = Steering::attach(&lab.app_if, Mode::Generic).expect("attach");
    drop(ns); // back in the test's own namespace, where this ifindex means something else
    drop(s);
    assert!(
        !lab.app_link().contains("xdp"),
        "drop from another netns left XDP behind"
    );
}

/// A minimal XDP program that is not ours (`return XDP_PASS`, named "not_slipstream"),
/// attached in generic mode with raw libbpf calls, detached on drop.
mod foreign {
    use std::io;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    use libbpf_sys as bpf;

    pub struct Prog {
        fd: OwnedFd,
        ifindex: i32,
    }

    impl Prog {
        pub fn load_and_attach(ifname: &str) -> io::Result<Prog> {
            // r0 = XDP_PASS; exit
            let mut mov = bpf::bpf_insn {
                code: (bpf::BPF_ALU64 | bpf::BPF_MOV | bpf::BPF_K) as u8,
                imm: 2,
                ..Default::default()
            };
            mov.set_dst_reg(0);
            let exit = bpf::bpf_insn {
                code: (bpf::BPF_JMP | bpf::BPF_EXIT) as u8,
                ..Default::default()
            };
            let insns = [mov, exit];
            // SAFETY: `insns` holds 2 valid instructions; the name and license are NUL-terminated
            // and outlive the call; NULL opts are allowed.
            let fd = unsafe {
                bpf::bpf_prog_load(
                    bpf::BPF_PROG_TYPE_XDP,
                    c"not_slipstream".as_ptr(),
                    c"Apache-2.0".as_ptr(),
                    insns.as_ptr(),
                    insns.len() as _,
                    std::ptr::null_mut(),
                )
            };
            if fd < 0 {
                return Err(io::Error::from_raw_os_error(-fd));
            }
            // SAFETY: `fd` is a new descriptor nobody else owns.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            let name = std::ffi::CString::new(ifname).unwrap();
            // SAFETY: `name` is NUL-terminated and outlives the call.
            let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) } as i32;
            // SAFETY: plain call with an open program fd; NULL opts are allowed.
            let rc = unsafe {
                bpf::bpf_xdp_attach(
                    ifindex,
                    fd.as_raw_fd(),
                    bpf::XDP_FLAGS_SKB_MODE,
                    std::ptr::null(),
                )
            };
            if rc < 0 {
                return Err(io::Error::from_raw_os_error(-rc));
            }
            Ok(Prog { fd, ifindex })
        }
    }

    impl Drop for Prog {
        fn drop(&mut self) {
            let _ = &self.fd;
            // SAFETY: plain call; NULL opts are allowed.
            unsafe { bpf::bpf_xdp_detach(self.ifindex, bpf::XDP_FLAGS_SKB_MODE, std::ptr::null()) };
        }
    }
}
