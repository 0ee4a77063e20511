//! The `lb` handler on a wire: the real `slipstream` binary balances a VIP over AF_XDP on the
//! app end of a lab veth pair (`scripts/lab`), kernel UDP sockets in the peer namespace are
//! the clients, and the encapsulated packets are captured where they come out.
//!
//! Making the output observable: the balancer's router MAC (the next hop of everything it
//! encapsulates) is the peer veth's MAC, so each encapsulated frame is transmitted back out
//! of the app veth, as Katran's `XDP_TX` would, and arrives at the peer end, where an
//! AF_PACKET socket captures it (the peer kernel then drops it: it is addressed to a real,
//! not to the peer). The VIPs (198.18.0.100, 2001:db8::100) are on the lab's subnets; the
//! peer reaches them through static neighbour entries pointing at the app veth's MAC, and the
//! steering rules send UDP to port 8080 of them to AF_XDP.
//!
//! | test | proves |
//! |---|---|
//! | `udp_flows_to_a_vip_come_back_encapsulated_to_their_reals` | 48 IPv4 and 16 IPv6 flows of numbered datagrams: every datagram comes back exactly once, IP-in-IP (IPv4) or IPv6-in-IPv6, to the real an independently built balancer of the same configuration picks (`lb::Control::pick`, Katran's simulator), with the spec's outer header (TTL/hop limit 64, outer source from the client address and port, lengths, checksum, router MAC) around the original packet (addresses, ports, payload, checksum intact) |
//! | `live_real_removal_keeps_established_flows_and_moves_new_ones` | `ctl lb real rm` while established flows keep sending: accepted with the next version; every datagram of an established flow, before, during and after the change, goes to the real it went to first (the connection table), those of the removed real included; new flows go where the new ring says, never to the removed real |
//!
//! Both stop the appliance with SIGINT and check a clean exit and its report: everything
//! received was transmitted, nothing dropped. They need root: not root, or a lab that
//! cannot be made, is a loud `*** SKIP`, or a failure under `CI=true`. `ctl` is the control
//! crate's binary, built next to the `slipstream` binary under test (`cargo build -p control
//! --bin ctl`, a no-op under `cargo test --workspace`), or `$SLIPSTREAM_CTL`.

#[allow(dead_code)] // the shared lab harness has more than this test uses
mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{
    afxdp_config, lab_for, peer_link, peer_udp, report_counters, setup_failed, Appliance, Lab,
    RawLink, TempDir, WorkerSpec, LAB_APP_MAC, PEER_V4, PEER_V6, START_TIMEOUT,
};
use dataplane::handlers::lb::{Change, LbSpec, Proto, RealSpec, VipKey, VipSpec};
use dataplane::wire::MacAddr;

const VIP4: &str = "198.18.0.100";
const VIP6: &str = "2001:db8::100";
const VIP_PORT: u16 = 8080;
const RULES: &[&str] = &["udp 198.18.0.100 8080", "udp 2001:db8::100 8080"];
/// Datagrams per flow in a round.
const PER_FLOW: usize = 4;
/// How long the capture waits for the last expected frame.
const CAPTURE_TIMEOUT: Duration = Duration::from_secs(10);
const CTL_TIMEOUT: Duration = Duration::from_secs(30);

fn reals4() -> Vec<IpAddr> {
    (1..=8)
        .map(|i| IpAddr::V4(Ipv4Addr::new(10, 200, 0, i)))
        .collect()
}

fn reals6() -> Vec<IpAddr> {
    (1..=4)
        .map(|i| IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0xff, 0, 0, 0, 0, i)))
        .collect()
}

fn vip4() -> VipKey {
    VipKey::new(VIP4.parse().unwrap(), VIP_PORT, Proto::Udp)
}

fn vip6() -> VipKey {
    VipKey::new(VIP6.parse().unwrap(), VIP_PORT, Proto::Udp)
}

/// The balancer's configuration: both VIPs, router MAC = the peer's.
fn spec(router: [u8; 6]) -> LbSpec {
    let vip = |k: VipKey, reals: Vec<IpAddr>| VipSpec {
        address: k.address,
        port: k.port,
        proto: k.proto,
        flags: vec![],
        reals: reals
            .into_iter()
            .map(|address| RealSpec {
                address,
                weight: 1,
                down: false,
            })
            .collect(),
    };
    let mut s = LbSpec::default();
    s.router_mac = MacAddr(router);
    s.vips = vec![vip(vip4(), reals4()), vip(vip6(), reals6())];
    s
}

/// The `[[handlers]]` table of `spec` and a control socket, for the config file.
fn config(lab: &Lab, spec: &LbSpec, socket: &Path) -> String {
    #[derive(serde::Serialize)]
    struct Chain<'a> {
        handlers: Vec<&'a dataplane::handlers::Spec>,
    }
    let lb = dataplane::handlers::Spec::Lb(spec.clone());
    let handlers = toml::to_string(&Chain {
        handlers: vec![&lb],
    })
    .expect("the spec serializes");
    let workers = [WorkerSpec {
        core: dataplane::topology::default_worker_core(),
        queues: &["p0:q0"],
    }];
    format!(
        "{}\n{handlers}\n[control]\nsocket = \"{}\"\n",
        afxdp_config(lab, RULES, &workers, ""),
        socket.display()
    )
}

fn mac_of(lab: &Lab, ns: &str, dev: &str) -> Result<[u8; 6], String> {
    let out = lab.exec(ns, &["ip", "link", "show", "dev", dev])?;
    let words: Vec<&str> = out.split_whitespace().collect();
    let mac = words
        .windows(2)
        .find(|w| w[0] == "link/ether")
        .map(|w| w[1])
        .ok_or_else(|| format!("no link/ether in: {out}"))?;
    let m: MacAddr = mac.parse().map_err(|e| format!("{mac}: {e:?}"))?;
    Ok(m.0)
}

/// Lab, peer MAC, static neighbours for the VIPs at the peer; None after a SKIP.
fn lab_with_vips(test: &str, tag: char) -> Option<(Lab, [u8; 6])> {
    let lab = lab_for(test, tag, 1)?;
    let setup = || -> Result<[u8; 6], String> {
        let app_mac = MacAddr(LAB_APP_MAC).to_string();
        for vip in [VIP4, VIP6] {
            lab.exec(
                &lab.peer_ns,
                &[
                    "ip",
                    "neigh",
                    "replace",
                    vip,
                    "lladdr",
                    &app_mac,
                    "dev",
                    &lab.peer_if,
                    "nud",
                    "permanent",
                ],
            )?;
        }
        mac_of(&lab, &lab.peer_ns, &lab.peer_if)
    };
    match setup() {
        Ok(mac) => Some((lab, mac)),
        Err(e) => {
            setup_failed(test, &e);
            None
        }
    }
}

fn start(test: &str, lab: &Lab, config: &str) -> Appliance {
    let mut app = Appliance::start(lab, config).unwrap_or_else(|e| panic!("{test}: {e}"));
    if let Err(e) = app.wait_running(START_TIMEOUT) {
        panic!("{test}: {e}");
    }
    app
}

// ---- ctl -----------------------------------------------------------------------------------

/// Runs `cmd` with a deadline; Ok(stdout) on exit 0, else Err with its stderr.
fn run_bounded(mut cmd: Command, what: &str, timeout: Duration) -> Result<String, String> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{what}: cannot start: {e}"))?;
    let (mut out, mut err) = (
        child.stdout.take().expect("piped"),
        child.stderr.take().expect("piped"),
    );
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut out, &mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut err, &mut s);
        s
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    let (out, err) = (
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default(),
    );
    match status {
        Some(s) if s.success() => Ok(out),
        Some(s) => Err(format!("{what}: {s}: {}{out}", err.trim_end())),
        None => Err(format!("{what}: no exit within {timeout:?}: {err}{out}")),
    }
}

fn ctl(bin: &Path, socket: &Path, args: &[&str]) -> Result<String, String> {
    let mut cmd = Command::new(bin);
    cmd.arg("--socket").arg(socket).args(args);
    run_bounded(cmd, &format!("ctl {}", args.join(" ")), CTL_TIMEOUT)
}

// ---- traffic -------------------------------------------------------------------------------

/// One client flow: a kernel UDP socket in the peer namespace, connected to a VIP.
struct Flow {
    sock: UdpSocket,
    src: SocketAddr,
    vip: VipKey,
}

impl Flow {
    fn open(lab: &Lab, vip: VipKey) -> Flow {
        let (bind, dst) = match vip.address {
            IpAddr::V4(_) => (
                format!("{PEER_V4}:0"),
                SocketAddr::new(vip.address, vip.port),
            ),
            IpAddr::V6(_) => (
                format!("[{PEER_V6}]:0"),
                SocketAddr::new(vip.address, vip.port),
            ),
        };
        let sock = peer_udp(lab, &bind).expect("peer UDP socket");
        sock.connect(dst).expect("connect");
        let src = sock.local_addr().expect("local address");
        Flow { sock, src, vip }
    }

    /// Sends datagram `n` (its payload names the flow's port and `n`).
    fn send(&self, n: usize) -> Vec<u8> {
        let p = payload(self.src.port(), n);
        self.sock.send(&p).expect("send");
        p
    }
}

fn payload(port: u16, n: usize) -> Vec<u8> {
    let mut p = format!("lb flow {port} datagram {n:05} ").into_bytes();
    p.extend((0..(n % 40)).map(|k| b'a' + (k % 26) as u8));
    p
}

/// What one captured frame says.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Encapsulated {
    /// Outer destination: the real.
    real: IpAddr,
    /// The inner packet's client address and port, and its payload.
    client: SocketAddr,
    payload: Vec<u8>,
}

fn sum16(data: &[u8]) -> u32 {
    data.chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum()
}

fn fold(mut s: u32) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

/// Checks a UDP datagram's checksum over its pseudo-header (`src`/`dst` are the address
/// bytes of the family).
fn udp_ok(src: &[u8], dst: &[u8], udp: &[u8]) -> bool {
    let len = udp.len() as u32;
    let s = sum16(src) + sum16(dst) + 17 + len + sum16(udp);
    fold(s) == 0xffff
}

/// Parses and checks one frame the balancer sent out; Err says what is wrong, Ok(None) is
/// a frame that is none of ours (ARP, neighbour discovery).
fn decode(frame: &[u8], router: [u8; 6]) -> Result<Option<Encapsulated>, String> {
    if frame.len() < 14 {
        return Ok(None);
    }
    let ethertype = u16::from_be_bytes([frame[12], frame[13]]);
    let ip = &frame[14..];
    let (real, inner, outer_src, outer_v6) = match ethertype {
        0x0800 if ip.len() >= 20 && ip[9] == 4 => {
            if ip[0] != 0x45 || ip[8] != 64 || fold(sum16(&ip[..20])) != 0xffff {
                return Err(format!(
                    "outer IPv4 header: version/IHL {:#x}, TTL {}, checksum ok {}",
                    ip[0],
                    ip[8],
                    fold(sum16(&ip[..20])) == 0xffff
                ));
            }
            if ip[4..8] != [0, 0, 0, 0] {
                return Err(format!("outer IPv4 id/flags not zero: {:?}", &ip[4..8]));
            }
            let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
            if total != ip.len() {
                return Err(format!(
                    "outer total length {total}, frame has {}",
                    ip.len()
                ));
            }
            let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
            (IpAddr::V4(dst), &ip[20..], ip[12..16].to_vec(), false)
        }
        0x86dd if ip.len() >= 40 && matches!(ip[6], 4 | 41) => {
            if ip[0] >> 4 != 6 || ip[7] != 64 {
                return Err(format!(
                    "outer IPv6 header: version {}, hop limit {}",
                    ip[0] >> 4,
                    ip[7]
                ));
            }
            let plen = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
            if plen + 40 != ip.len() {
                return Err(format!(
                    "outer payload length {plen}, frame has {}",
                    ip.len()
                ));
            }
            let dst: [u8; 16] = ip[24..40].try_into().unwrap();
            (
                IpAddr::V6(Ipv6Addr::from(dst)),
                &ip[40..],
                ip[8..24].to_vec(),
                true,
            )
        }
        _ => return Ok(None),
    };
    if frame[..6] != router || frame[6..12] != LAB_APP_MAC {
        return Err(format!(
            "Ethernet: destination {:02x?} (want the router MAC {router:02x?}), source {:02x?} \
             (want the VIP frame's destination, the app veth)",
            &frame[..6],
            &frame[6..12]
        ));
    }
    // The inner packet: the client's datagram as it was sent.
    let (client_ip, vip_ip, udp): (IpAddr, IpAddr, &[u8]) = match inner.first().map(|b| b >> 4) {
        Some(4) if inner.len() >= 28 => {
            if inner[0] != 0x45 || fold(sum16(&inner[..20])) != 0xffff || inner[9] != 17 {
                return Err("inner IPv4 header damaged or not UDP".into());
            }
            let total = usize::from(u16::from_be_bytes([inner[2], inner[3]]));
            if total != inner.len() {
                return Err(format!("inner total length {total} of {}", inner.len()));
            }
            let s = Ipv4Addr::new(inner[12], inner[13], inner[14], inner[15]);
            let d = Ipv4Addr::new(inner[16], inner[17], inner[18], inner[19]);
            if !udp_ok(&inner[12..16], &inner[16..20], &inner[20..]) {
                return Err("inner UDP checksum wrong".into());
            }
            (s.into(), d.into(), &inner[20..])
        }
        Some(6) if inner.len() >= 48 => {
            if inner[6] != 17 {
                return Err("inner IPv6 packet is not UDP".into());
            }
            let plen = usize::from(u16::from_be_bytes([inner[4], inner[5]]));
            if plen + 40 != inner.len() {
                return Err(format!("inner payload length {plen} of {}", inner.len()));
            }
            let s: [u8; 16] = inner[8..24].try_into().unwrap();
            let d: [u8; 16] = inner[24..40].try_into().unwrap();
            if !udp_ok(&inner[8..24], &inner[24..40], &inner[40..]) {
                return Err("inner UDP checksum wrong".into());
            }
            (
                Ipv6Addr::from(s).into(),
                Ipv6Addr::from(d).into(),
                &inner[40..],
            )
        }
        _ => return Err(format!("inner packet unreadable: {:02x?}", inner)),
    };
    if outer_v6 != real.is_ipv6() || (real.is_ipv4() && client_ip.is_ipv6()) {
        return Err("outer family does not match the real".into());
    }
    let sport = u16::from_be_bytes([udp[0], udp[1]]);
    let dport = u16::from_be_bytes([udp[2], udp[3]]);
    let ulen = usize::from(u16::from_be_bytes([udp[4], udp[5]]));
    if ulen != udp.len() || dport != VIP_PORT {
        return Err(format!(
            "inner UDP: length {ulen} of {}, port {dport}",
            udp.len()
        ));
    }
    let want_vip: IpAddr = if client_ip.is_ipv4() {
        VIP4.parse().unwrap()
    } else {
        VIP6.parse().unwrap()
    };
    if vip_ip != want_vip {
        return Err(format!("inner destination {vip_ip}, not the VIP"));
    }
    // The outer source (the spec's "Encapsulation"): from the client's address bytes s and
    // source port bytes p.
    let p = sport.to_be_bytes();
    let s = match client_ip {
        IpAddr::V4(a) => a.octets(),
        IpAddr::V6(a) => {
            let o = a.octets();
            [o[12], o[13], o[14], o[15]]
        }
    };
    let want_src = if outer_v6 {
        let mut b = [0u8; 16];
        b[0] = 1;
        b[12..16].copy_from_slice(&[s[0] ^ p[0], s[1] ^ p[1], s[2], s[3]]);
        b.to_vec()
    } else {
        vec![172, 16, s[2] ^ p[1], s[3] ^ p[0]]
    };
    if outer_src != want_src {
        return Err(format!(
            "outer source {outer_src:?}, the spec says {want_src:?} for {client_ip}:{sport}"
        ));
    }
    Ok(Some(Encapsulated {
        real,
        client: SocketAddr::new(client_ip, sport),
        payload: udp[8..].to_vec(),
    }))
}

/// Captures until `want` encapsulated datagrams arrived (or the timeout), checking each.
fn capture(link: &RawLink, router: [u8; 6], want: usize) -> Result<Vec<Encapsulated>, String> {
    let mut got = Vec::new();
    let deadline = Instant::now() + CAPTURE_TIMEOUT;
    while got.len() < want {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let Some(f) = link
            .recv(left.min(Duration::from_millis(200)))
            .map_err(|e| e.to_string())?
        else {
            continue;
        };
        if let Some(e) = decode(&f.data, router)? {
            got.push(e);
        }
    }
    // Anything beyond what was sent would be a duplicate: give it a moment to show up.
    while let Some(f) = link
        .recv(Duration::from_millis(100))
        .map_err(|e| e.to_string())?
    {
        if let Some(e) = decode(&f.data, router)? {
            got.push(e);
        }
    }
    Ok(got)
}

/// Matches captured datagrams to what was sent: each sent exactly once, nothing else.
/// Returns the real of every datagram, per client.
fn match_sent(
    sent: &HashMap<(SocketAddr, Vec<u8>), ()>,
    got: &[Encapsulated],
) -> Result<BTreeMap<SocketAddr, Vec<IpAddr>>, String> {
    let mut seen = BTreeSet::new();
    let mut per_client: BTreeMap<SocketAddr, Vec<IpAddr>> = BTreeMap::new();
    for e in got {
        let key = (e.client, e.payload.clone());
        if !sent.contains_key(&key) {
            return Err(format!(
                "captured a datagram nobody sent: {} {:?}",
                e.client,
                String::from_utf8_lossy(&e.payload)
            ));
        }
        if !seen.insert(key) {
            return Err(format!("datagram from {} captured twice", e.client));
        }
        per_client.entry(e.client).or_default().push(e.real);
    }
    if seen.len() != sent.len() {
        return Err(format!(
            "{} of {} datagrams came back encapsulated",
            seen.len(),
            sent.len()
        ));
    }
    Ok(per_client)
}

/// The report's totals: everything received was transmitted (encapsulated), nothing
/// dropped, and exactly `sent` datagrams received.
fn assert_all_balanced(test: &str, report: &serde_json::Value, sent: usize) {
    let c = report_counters(report);
    assert!(
        c.total.drops.is_empty() && c.total.slow_path == 0,
        "{test}: drops: {}",
        c.summary()
    );
    assert_eq!(
        (c.total.rx_packets, c.total.tx_packets),
        (sent as u64, sent as u64),
        "{test}: every datagram received and sent out encapsulated: {}",
        c.summary()
    );
}

#[test]
fn udp_flows_to_a_vip_come_back_encapsulated_to_their_reals() {
    let test = "udp_flows_to_a_vip_come_back_encapsulated_to_their_reals";
    let Some((lab, peer_mac)) = lab_with_vips(test, 'l') else {
        return;
    };
    let dir = TempDir::new("lb-live").expect("temp dir");
    let socket = dir.0.join("ctl.sock");
    let spec = spec(peer_mac);
    let app = start(test, &lab, &config(&lab, &spec, &socket));
    // The same configuration, built here: Katran's simulator says where each flow goes.
    let model = spec.control();
    let link = peer_link(&lab).expect("AF_PACKET socket on the peer end");

    let flows: Vec<Flow> = (0..48)
        .map(|_| Flow::open(&lab, vip4()))
        .chain((0..16).map(|_| Flow::open(&lab, vip6())))
        .collect();
    let mut sent = HashMap::new();
    for n in 0..PER_FLOW {
        for f in &flows {
            sent.insert((f.src, f.send(n)), ());
        }
        // Paced rounds: at most 64 datagrams in flight through a copy-mode veth.
        std::thread::sleep(Duration::from_millis(5));
    }
    let got = capture(&link, peer_mac, sent.len()).unwrap_or_else(|e| panic!("{test}: {e}"));
    let per_client =
        match_sent(&sent, &got).unwrap_or_else(|e| panic!("{test}: {e}\n{}", lab.diagnostics()));
    let mut used = BTreeSet::new();
    for f in &flows {
        let want = model
            .pick(&f.vip, f.src.ip(), f.src.port(), f.vip.port)
            .expect("the model picks a real");
        let reals = &per_client[&f.src];
        assert!(
            reals.iter().all(|r| *r == want),
            "{test}: flow {} to {}: sent to {reals:?}, the ring says {want}",
            f.src,
            f.vip
        );
        used.insert(want);
    }
    // The flows spread: most reals of each VIP got some (48 flows over 8, 16 over 4).
    assert!(
        used.iter().filter(|r| r.is_ipv4()).count() >= 6
            && used.iter().filter(|r| r.is_ipv6()).count() >= 3,
        "{test}: reals used: {used:?}"
    );
    let report = app.interrupt().assert_clean(test);
    assert_all_balanced(test, &report, sent.len());
}

#[test]
fn live_real_removal_keeps_established_flows_and_moves_new_ones() {
    let test = "live_real_removal_keeps_established_flows_and_moves_new_ones";
    let Some((lab, peer_mac)) = lab_with_vips(test, 'm') else {
        return;
    };
    let ctl_bin = match common::ctl_binary() {
        Ok(b) => b,
        Err(e) => {
            setup_failed(test, &e);
            return;
        }
    };
    let dir = TempDir::new("lb-live").expect("temp dir");
    let socket = dir.0.join("ctl.sock");
    let spec = spec(peer_mac);
    let app = start(test, &lab, &config(&lab, &spec, &socket));
    let model = spec.control();
    let link = peer_link(&lab).expect("AF_PACKET socket on the peer end");
    let vip = vip4();
    let vip_text = vip.to_string();

    // Established flows: their first datagrams, and where they went.
    let old: Vec<Flow> = (0..48).map(|_| Flow::open(&lab, vip)).collect();
    let mut sent = HashMap::new();
    for n in 0..PER_FLOW {
        for f in &old {
            sent.insert((f.src, f.send(n)), ());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let got = capture(&link, peer_mac, sent.len()).unwrap_or_else(|e| panic!("{test}: {e}"));
    let first = match_sent(&sent, &got).unwrap_or_else(|e| panic!("{test}: {e}"));
    let home: HashMap<SocketAddr, IpAddr> = old
        .iter()
        .map(|f| {
            let r = first[&f.src][0];
            assert_eq!(
                Some(r),
                model.pick(&vip, f.src.ip(), f.src.port(), VIP_PORT),
                "{test}: flow {} did not go where the ring says",
                f.src
            );
            (f.src, r)
        })
        .collect();
    // Remove the real with the most established flows.
    let mut load: BTreeMap<IpAddr, usize> = BTreeMap::new();
    for r in home.values() {
        *load.entry(*r).or_default() += 1;
    }
    let (&removed, &n_on_removed) = load.iter().max_by_key(|(_, n)| **n).unwrap();
    assert!(n_on_removed > 0);

    // While the established flows keep sending, the real goes.
    let mut sent = HashMap::new();
    let stop = AtomicBool::new(false);
    let during: Vec<(SocketAddr, Vec<u8>)> = std::thread::scope(|s| {
        let sender = s.spawn(|| {
            let mut out = Vec::new();
            let mut n = 1000;
            while !stop.load(Ordering::Acquire) && n < 1000 + 200 {
                for f in &old {
                    out.push((f.src, f.send(n)));
                }
                n += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            out
        });
        std::thread::sleep(Duration::from_millis(50));
        let out = ctl(
            &ctl_bin,
            &socket,
            &["lb", "real", "rm", &vip_text, &removed.to_string()],
        );
        std::thread::sleep(Duration::from_millis(50));
        stop.store(true, Ordering::Release);
        let during = sender.join().expect("sender");
        match out {
            Ok(o) => assert_eq!(o, "accepted: lb version 2\n", "{test}"),
            Err(e) => panic!("{test}: {e}"),
        }
        during
    });
    assert!(
        during.len() >= 2 * old.len(),
        "{test}: too little traffic during the change"
    );
    for d in during {
        sent.insert(d, ());
    }
    model
        .apply(Some(1), &[Change::RemoveReal { vip, real: removed }])
        .expect("the model follows");
    let show = ctl(&ctl_bin, &socket, &["--json", "lb", "show"]).unwrap();
    let show: serde_json::Value = serde_json::from_str(&show).unwrap();
    assert_eq!(show["version"], 2, "{test}");
    assert!(
        !show.to_string().contains(&format!("\"{removed}\"")),
        "{test}: {show}"
    );

    // After the change: the established flows again, and new flows.
    let new: Vec<Flow> = (0..48).map(|_| Flow::open(&lab, vip)).collect();
    for n in 0..PER_FLOW {
        for f in &old {
            sent.insert((f.src, f.send(2000 + n)), ());
        }
        for f in &new {
            sent.insert((f.src, f.send(n)), ());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let got = capture(&link, peer_mac, sent.len()).unwrap_or_else(|e| panic!("{test}: {e}"));
    let after =
        match_sent(&sent, &got).unwrap_or_else(|e| panic!("{test}: {e}\n{}", lab.diagnostics()));
    for f in &old {
        let reals = &after[&f.src];
        assert!(
            reals.iter().all(|r| *r == home[&f.src]),
            "{test}: established flow {} moved: first {}, then {reals:?} (removed {removed})",
            f.src,
            home[&f.src]
        );
    }
    for f in &new {
        let want = model
            .pick(&vip, f.src.ip(), f.src.port(), VIP_PORT)
            .expect("a real");
        assert_ne!(want, removed);
        let reals = &after[&f.src];
        assert!(
            reals.iter().all(|r| *r == want),
            "{test}: new flow {} went to {reals:?}, the new ring says {want} (removed {removed})",
            f.src
        );
    }
    let stats = ctl(&ctl_bin, &socket, &["--json", "lb", "stats"]).unwrap();
    let stats: serde_json::Value = serde_json::from_str(&stats).unwrap();
    // The first round, then what was sent during and after the change.
    let total = 48 * PER_FLOW + sent.len();
    assert_eq!(
        stats["vips"][0]["packets"].as_u64(),
        Some(total as u64),
        "{test}: {stats}"
    );
    // One ring lookup per flow; every other datagram was a connection-table hit.
    assert_eq!(stats["ring_routed"].as_u64(), Some(96), "{test}: {stats}");
    assert_eq!(
        stats["conn_hits"].as_u64(),
        Some(total as u64 - 96),
        "{test}: {stats}"
    );
    eprintln!(
        "{test}: removed {removed} ({n_on_removed} of 48 established flows on it) during {} \
         datagrams; all stayed, 48 new flows avoided it",
        sent.len()
    );
    let report = app.interrupt().assert_clean(test);
    assert_all_balanced(test, &report, total);
}
