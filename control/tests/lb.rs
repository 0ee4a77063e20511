//! `ctl lb` end to end: an in-process appliance (memory port generating UDP to the VIP,
//! two workers running `lb` then `udp-echo`, the control server on a Unix socket) driven by
//! the real `ctl` binary and by the gRPC client, as an operator and a script would.
//!
//! | test | proves |
//! |---|---|
//! | `ctl_lb_session` | show, stats (tables and `--json`), vip add/flags/rm and real add/weight/down/up/rm are acknowledged with the next version and visible in `show`; the rings follow the weights; the traffic to the VIP is counted per VIP and balanced; `ctl handlers` reads back the live state |
//! | `refused_changes_change_nothing` | unknown VIP or real, addresses that are not addresses or cannot be reals, an unknown flag, a duplicate VIP and a stale `--base-version` are refused with the right code and field, exit 1, and leave the version and `show` (text and JSON) exactly as they were; malformed command lines exit 2 |
//! | `more_than_512_vips_is_refused_and_changes_nothing` | 512 VIPs fit (one request), the 513th is FAILED_PRECONDITION naming the field, and so is a 513-VIP request; a request whose last change fails applies none of its earlier ones |
//! | `handler_selection` | no lb in the chain, two of them, an index that is not lb or not there: refused with the reason; `--handler N` picks one |

mod common;

use std::net::IpAddr;
use std::process::Output;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{expect, stderr, Appliance};
use control::client::{Client, Target};
use control::pb;
use control::server::outcome;
use control::{Daemon, SharedEngine};
use dataplane::config::{EngineConfig, Idle};
use dataplane::engine::{Engine, WorkerPlan};
use dataplane::handlers::lb::{LbSpec, Proto, RealSpec, VipSpec};
use dataplane::handlers::{Spec, UdpEchoSpec};
use dataplane::port::Port;
use dataplane::wire::MacAddr;
use dataplane::{Pipeline, QueueId};
use serde_json::Value;

/// Requests each of the two generating queues sends (to 198.18.0.1:7, 16 flows).
const PER_QUEUE: u64 = 1000;
const VIP: &str = "198.18.0.1:7/udp";

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}):\n{s}"))
}

fn lb_spec(reals: &[&str]) -> LbSpec {
    let mut s = LbSpec::default();
    s.router_mac = MacAddr([2, 0, 0, 0, 0, 0xfe]);
    s.vips = vec![VipSpec {
        address: "198.18.0.1".parse().unwrap(),
        port: 7,
        proto: Proto::Udp,
        flags: vec![],
        reals: reals
            .iter()
            .map(|r| RealSpec {
                address: r.parse().unwrap(),
                weight: 1,
                down: false,
            })
            .collect(),
    }];
    s
}

/// The in-process appliance of this file: `common::engine`'s shape with its own chain,
/// set before the workers start, so every generated packet meets the balancer.
struct LbAppliance {
    _dir: tempfile::TempDir,
    socket: std::path::PathBuf,
    engine: SharedEngine,
    stop: Arc<AtomicBool>,
    main: Option<JoinHandle<pb::ShutdownResponse>>,
}

impl LbAppliance {
    fn start(chain: Vec<Spec>) -> LbAppliance {
        let dir = tempfile::tempdir().unwrap();
        let opts = common::options(dir.path());
        let socket = opts.socket.clone().unwrap();
        let cfg = EngineConfig {
            burst: 32,
            ring_size: 1024,
            idle: Idle::Backoff,
            backoff_max_us: 500,
            hugepages: false,
            ..EngineConfig::default()
        };
        let mut e = Engine::from_parts(
            &cfg,
            vec![common::generator(2, PER_QUEUE) as Arc<dyn Port>],
            (0..2)
                .map(|q| WorkerPlan {
                    core: None,
                    queues: vec![QueueId::new(0, q)],
                })
                .collect(),
            vec![Pipeline::default(), Pipeline::default()],
        )
        .unwrap();
        e.set_handlers(None, chain).unwrap();
        let engine: SharedEngine = Arc::new(Mutex::new(Some(e)));
        let stop = Arc::new(AtomicBool::new(false));
        let daemon = Daemon::start(engine.clone(), stop.clone(), opts).unwrap();
        engine.lock().unwrap().as_mut().unwrap().start().unwrap();
        let main = {
            let (engine, stop) = (engine.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Acquire) {
                    std::thread::sleep(Duration::from_millis(5));
                }
                let e = engine.lock().unwrap().take().unwrap();
                let out = outcome(&e.stop());
                daemon.finish(out.clone());
                out
            })
        };
        LbAppliance {
            _dir: dir,
            socket,
            engine,
            stop,
            main: Some(main),
        }
    }

    fn ctl(&self, args: &[&str]) -> Output {
        let mut all = vec!["--socket", self.socket.to_str().unwrap()];
        all.extend_from_slice(args);
        common::ctl(&all)
    }

    /// Waits until the engine has received `n` packets and has none in flight.
    fn wait_received(&self, n: u64) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (rx, in_flight) = {
                let g = self.engine.lock().unwrap();
                let r = g.as_ref().unwrap().snapshot();
                (r.received(), r.in_flight())
            };
            if rx >= n && in_flight == 0 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "received {rx} of {n} after 30 s ({in_flight} in flight)"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// A gRPC client on a runtime of its own.
    fn client(&self) -> (tokio::runtime::Runtime, Client) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let c = rt
            .block_on(Client::connect(&Target::Unix(self.socket.clone())))
            .unwrap();
        (rt, c)
    }

    fn stop(mut self) -> pb::ShutdownResponse {
        self.stop.store(true, Ordering::Release);
        self.main.take().unwrap().join().unwrap()
    }
}

impl Drop for LbAppliance {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(m) = self.main.take() {
            let _ = m.join();
        }
    }
}

fn chain(reals: &[&str]) -> Vec<Spec> {
    vec![
        Spec::Lb(lb_spec(reals)),
        Spec::UdpEcho(UdpEchoSpec::default()),
    ]
}

/// `show --json`'s VIP `vip`.
fn vip_of<'a>(show: &'a Value, vip: &str) -> Option<&'a Value> {
    show["vips"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["vip"] == vip)
}

/// Asserts a refusal: exit 1, nothing changed, and stderr with `code: field`.
#[track_caller]
fn refused(o: &Output, code: &str, field: &str) {
    expect(o, 1);
    let e = stderr(o);
    assert!(
        e.contains(&format!("rejected, nothing changed: {code}: {field}")),
        "expected {code}: {field}..., got: {e}"
    );
}

#[test]
fn ctl_lb_session() {
    let a = LbAppliance::start(chain(&["10.0.0.1", "10.0.0.2"]));
    a.wait_received(2 * PER_QUEUE);

    // The configuration file's state, version 1.
    let s = expect(&a.ctl(&["lb", "show"]), 0);
    assert!(
        s.starts_with("lb handler 0, version 1: router 02:00:00:00:00:fe, ipip encapsulation"),
        "{s}"
    );
    assert!(
        s.contains("VIP") && s.contains("RING SLOTS") && s.contains(VIP),
        "{s}"
    );
    assert!(s.contains("10.0.0.1") && s.contains("10.0.0.2"), "{s}");
    let show = json(&expect(&a.ctl(&["lb", "show", "--json"]), 0));
    assert_eq!(show["version"], 1);
    assert_eq!(show["handler"], 0);
    let v = vip_of(&show, VIP).unwrap();
    let slots: Vec<u64> = v["reals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["slots"].as_u64().unwrap())
        .collect();
    assert_eq!(slots.iter().sum::<u64>(), 65537, "{v}");
    assert!(slots.iter().all(|&n| n.abs_diff(65537 / 2) < 100), "{v}");
    assert_eq!(v["reals"][0]["id"], 1);
    assert_eq!(v["reals"][1]["id"], 2);

    // Every generated packet went to the VIP and was balanced: the first packet of a flow
    // on a worker through the ring, the rest through that worker's connection table.
    let st = json(&expect(&a.ctl(&["lb", "stats", "--json"]), 0));
    let total = 2 * PER_QUEUE;
    assert_eq!(st["vips"][0]["vip"], VIP);
    assert_eq!(st["vips"][0]["packets"], total);
    assert_eq!(st["vips"][0]["bytes"], total * 64);
    let (hits, misses) = (
        st["conn_hits"].as_u64().unwrap(),
        st["conn_misses"].as_u64().unwrap(),
    );
    assert_eq!(hits + misses, total, "{st}");
    assert!((1..=32).contains(&misses), "16 flows on 2 workers: {st}");
    assert_eq!(st["ring_routed"], misses, "{st}");
    assert_eq!(st["passed"], 0);
    assert_eq!(st["drops"], serde_json::json!({}));
    let t = expect(&a.ctl(&["lb", "stats"]), 0);
    assert!(
        t.contains(&format!("{VIP}  {total}")) && t.contains("drops: none"),
        "{t}"
    );
    assert!(
        t.contains(&format!("connection table: {hits} hits, {misses} misses")),
        "{t}"
    );

    // Changes, each acknowledged with the next version.
    let o = expect(
        &a.ctl(&["lb", "real", "add", VIP, "10.0.0.3", "--weight", "2"]),
        0,
    );
    assert_eq!(o, "accepted: lb version 2\n");
    let show = json(&expect(&a.ctl(&["lb", "show", "--json"]), 0));
    let v = vip_of(&show, VIP).unwrap();
    assert_eq!(v["reals"].as_array().unwrap().len(), 3);
    let r3 = &v["reals"][2];
    assert_eq!(
        (r3["address"].as_str(), r3["weight"].as_u64()),
        (Some("10.0.0.3"), Some(2))
    );
    assert_eq!(r3["id"], 3);
    // In the ring (Maglev V1 as the spec has it: the weight counts in the first round
    // only, so three reals share the ring about equally).
    let slots: Vec<u64> = v["reals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["slots"].as_u64().unwrap())
        .collect();
    assert_eq!(slots.iter().sum::<u64>(), 65537, "{v}");
    assert!(slots.iter().all(|&n| n.abs_diff(65537 / 3) < 100), "{v}");

    let o = json(&expect(
        &a.ctl(&["--json", "lb", "real", "weight", VIP, "10.0.0.3", "0"]),
        0,
    ));
    assert_eq!(o, serde_json::json!({"accepted": true, "version": 3}));
    let show = json(&expect(&a.ctl(&["lb", "show", "--json"]), 0));
    assert_eq!(vip_of(&show, VIP).unwrap()["reals"][2]["slots"], 0);

    expect(&a.ctl(&["lb", "real", "down", VIP, "10.0.0.1"]), 0);
    let show = json(&expect(&a.ctl(&["lb", "show", "--json"]), 0));
    assert_eq!(show["version"], 4);
    assert_eq!(vip_of(&show, VIP).unwrap()["reals"][0]["down"], true);
    assert!(expect(&a.ctl(&["lb", "show"]), 0).contains("down"));
    expect(&a.ctl(&["lb", "real", "up", VIP, "10.0.0.1"]), 0);
    let show = json(&expect(&a.ctl(&["lb", "show", "--json"]), 0));
    assert_eq!(vip_of(&show, VIP).unwrap()["reals"][0]["down"], false);

    let o = expect(
        &a.ctl(&["lb", "real", "rm", VIP, "10.0.0.3", "--base-version", "5"]),
        0,
    );
    assert_eq!(o, "accepted: lb version 6\n");
    let show = json(&expect(&a.ctl(&["lb", "show", "--json"]), 0));
    assert_eq!(
        vip_of(&show, VIP).unwrap()["reals"]
            .as_array()
            .unwrap()
            .len(),
        2
    );

    // A second VIP, IPv6 any-port with flags; then its flags changed; then removed.
    let v6 = "[2001:db8::1]:0/udp";
    expect(
        &a.ctl(&["lb", "vip", "add", v6, "--flag", "quic,no-src-port"]),
        0,
    );
    let show = json(&expect(&a.ctl(&["lb", "show", "--json"]), 0));
    let v = vip_of(&show, v6).unwrap();
    assert_eq!(v["flags"], serde_json::json!(["no-src-port", "quic"]));
    assert_eq!(v["number"], 1);
    assert!(v["reals"].as_array().unwrap().is_empty());
    assert!(expect(&a.ctl(&["lb", "show"]), 0).contains("(no reals: traffic dropped)"));
    expect(&a.ctl(&["lb", "real", "add", v6, "2001:db8:ffff::1"]), 0);
    expect(&a.ctl(&["lb", "vip", "flags", v6, "dport-only"]), 0);
    let show = json(&expect(&a.ctl(&["lb", "show", "--json"]), 0));
    let v = vip_of(&show, v6).unwrap();
    assert_eq!(v["flags"], serde_json::json!(["dport-only"]));
    assert_eq!(v["reals"][0]["slots"], 65537, "one real fills the ring");
    assert_eq!(show["version"], 9);

    // `ctl handlers` reads the balancer back in its live state.
    let h = json(&expect(&a.ctl(&["handlers", "--json"]), 0));
    assert_eq!(h["handlers"][0]["kind"], "lb");
    let vips = h["handlers"][0]["vips"].as_array().unwrap();
    assert_eq!(vips.len(), 2, "{h}");
    assert_eq!(vips[1]["address"], "2001:db8::1");
    assert_eq!(vips[1]["reals"][0]["address"], "2001:db8:ffff::1");

    expect(&a.ctl(&["lb", "vip", "rm", v6]), 0);
    let show = json(&expect(&a.ctl(&["lb", "show", "--json"]), 0));
    assert!(vip_of(&show, v6).is_none());
    assert_eq!(show["version"], 10);

    let out = a.stop();
    assert!(out.accounting_ok, "{:?}", out.problems);
    let t = out.totals.unwrap();
    assert_eq!((t.received, t.transmitted, t.dropped), (total, total, 0));
}

#[test]
fn refused_changes_change_nothing() {
    let a = LbAppliance::start(chain(&["10.0.0.1", "10.0.0.2"]));
    expect(&a.ctl(&["lb", "real", "add", VIP, "10.0.0.3"]), 0);
    let before_text = expect(&a.ctl(&["lb", "show"]), 0);
    let before = expect(&a.ctl(&["lb", "show", "--json"]), 0);
    assert_eq!(json(&before)["version"], 2);
    let unchanged = |what: &str| {
        assert_eq!(
            expect(&a.ctl(&["lb", "show", "--json"]), 0),
            before,
            "{what} changed the configuration"
        );
        assert_eq!(expect(&a.ctl(&["lb", "show"]), 0), before_text, "{what}");
    };

    for (args, code, field) in [
        // Unknown VIP (a VIP that exists on another port, protocol or address).
        (
            vec!["real", "add", "198.18.0.1:8/udp", "10.0.0.9"],
            "NOT_FOUND",
            "changes[0].vip: unknown VIP 198.18.0.1:8/udp",
        ),
        (
            vec!["real", "rm", "198.18.0.1:7/tcp", "10.0.0.1"],
            "NOT_FOUND",
            "changes[0].vip",
        ),
        (
            vec!["vip", "rm", "198.18.9.9:7/udp"],
            "NOT_FOUND",
            "changes[0].vip",
        ),
        // A real the VIP does not have.
        (
            vec!["real", "rm", VIP, "10.0.0.9"],
            "NOT_FOUND",
            "changes[0].real: real 10.0.0.9 is not in VIP",
        ),
        (
            vec!["real", "weight", VIP, "10.0.0.9", "3"],
            "NOT_FOUND",
            "changes[0].real",
        ),
        // Addresses that are not addresses, or cannot be reals or VIPs.
        (
            vec!["real", "add", VIP, "10.0.0.300"],
            "INVALID_ARGUMENT",
            "changes[0].real: `10.0.0.300` is not an IP address",
        ),
        (
            vec!["real", "add", VIP, "224.0.0.1"],
            "INVALID_ARGUMENT",
            "changes[0].real: `224.0.0.1` cannot be a real",
        ),
        (
            vec!["vip", "add", "198.18.0.256:80/tcp"],
            "INVALID_ARGUMENT",
            "changes[0].vip.address: `198.18.0.256` is not an IP address",
        ),
        (
            vec!["vip", "add", "[2001:db8::zz]:80/tcp"],
            "INVALID_ARGUMENT",
            "changes[0].vip.address",
        ),
        (
            vec!["vip", "add", "0.0.0.0:80/tcp"],
            "INVALID_ARGUMENT",
            "changes[0].vip: `0.0.0.0` cannot be a VIP address",
        ),
        (
            vec!["vip", "add", "198.18.5.5:80/tcp", "--flag", "fast"],
            "INVALID_ARGUMENT",
            "changes[0].flags[0]: `fast` is not a VIP flag",
        ),
        // Well formed, but the state does not allow it.
        (
            vec!["vip", "add", VIP],
            "FAILED_PRECONDITION",
            "changes[0].vip: VIP 198.18.0.1:7/udp already exists",
        ),
        (
            vec!["real", "add", VIP, "10.0.0.1"],
            "FAILED_PRECONDITION",
            "changes[0].real: real 10.0.0.1 is already in VIP",
        ),
        (
            vec!["real", "add", VIP, "10.0.0.7", "--base-version", "1"],
            "FAILED_PRECONDITION",
            "base_version: stale: the balancer is at version 2, not 1",
        ),
    ] {
        let mut all = vec!["lb"];
        all.extend(args.iter());
        let o = a.ctl(&all);
        refused(&o, code, field);
        unchanged(&args.join(" "));
        // And the same in JSON mode: still exit 1, the message on stderr.
        let mut j = vec!["--json"];
        j.extend(all.iter());
        refused(&a.ctl(&j), code, field);
    }

    // Malformed command lines are usage errors (exit 2), caught before anything is sent.
    for args in [
        vec!["lb", "vip", "add", "198.18.0.1/udp"],
        vec!["lb", "vip", "add", "198.18.0.1:80"],
        vec!["lb", "vip", "add", "198.18.0.1:80/sctp"],
        vec!["lb", "vip", "add", "2001:db8::1:80/udp"],
        vec!["lb", "real", "weight", VIP, "10.0.0.1", "heavy"],
        vec!["lb", "real", "add", VIP],
        vec!["lb", "real", "rm", VIP, "10.0.0.1", "--base-version", "x"],
        vec!["lb", "frobnicate"],
    ] {
        let o = a.ctl(&args);
        expect(&o, 2);
        assert!(!stderr(&o).is_empty(), "{args:?}");
    }
    unchanged("usage errors");
    assert_eq!(
        json(&expect(&a.ctl(&["lb", "stats", "--json"]), 0))["version"],
        2
    );
    drop(a);
}

#[test]
fn more_than_512_vips_is_refused_and_changes_nothing() {
    use pb::lb_change::Change as C;
    let a = LbAppliance::start(chain(&["10.0.0.1"]));
    let (rt, mut c) = a.client();
    let vip = |n: u32| pb::VipRef {
        address: format!("198.19.{}.{}", n / 256, n % 256),
        port: 80,
        proto: pb::LbProto::Tcp as i32,
    };
    let add = |n: u32| pb::LbChange {
        change: Some(C::AddVip(pb::LbAddVip {
            vip: Some(vip(n)),
            flags: vec![],
        })),
    };
    let update = |c: &mut Client, base: Option<u64>, changes: Vec<pb::LbChange>| {
        rt.block_on(c.lb.update(pb::UpdateLbRequest {
            handler: None,
            base_version: base,
            changes,
        }))
    };
    let show = |c: &mut Client| {
        rt.block_on(c.lb.get(pb::GetLbRequest { handler: None }))
            .unwrap()
            .into_inner()
    };

    // 512 at once is refused whole: one VIP is configured already.
    let e = update(&mut c, None, (0..512).map(add).collect()).unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
    assert!(
        e.message().starts_with("changes[511].vip: cannot add VIP")
            && e.message().contains("already 512 VIPs"),
        "{}",
        e.message()
    );
    let s = show(&mut c);
    assert_eq!((s.version, s.vips.len()), (1, 1));

    // 511 more fit.
    let v = update(&mut c, Some(1), (0..511).map(add).collect())
        .unwrap()
        .into_inner()
        .version;
    assert_eq!(v, 2);
    let before = show(&mut c);
    assert_eq!(before.vips.len(), 512);
    let before_text = expect(&a.ctl(&["lb", "show", "--json"]), 0);

    // The 513th, through ctl.
    let o = a.ctl(&["lb", "vip", "add", "198.19.200.1:80/tcp"]);
    refused(
        &o,
        "FAILED_PRECONDITION",
        "changes[0].vip: cannot add VIP 198.19.200.1:80/tcp",
    );
    assert!(stderr(&o).contains("already 512 VIPs"), "{}", stderr(&o));
    assert_eq!(show(&mut c), before);
    assert_eq!(expect(&a.ctl(&["lb", "show", "--json"]), 0), before_text);

    // Room again after a removal; all or nothing: a request whose last change fails
    // applies none of the earlier ones (the removal and the real stay as they were).
    let rm0 = pb::LbChange {
        change: Some(C::RemoveVip(pb::LbRemoveVip { vip: Some(vip(0)) })),
    };
    let real = pb::LbChange {
        change: Some(C::AddReal(pb::LbAddReal {
            vip: Some(vip(1)),
            real: "10.0.0.5".into(),
            weight: Some(3),
        })),
    };
    let e = update(
        &mut c,
        None,
        vec![rm0.clone(), real.clone(), add(600), add(601)],
    )
    .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
    assert!(e.message().starts_with("changes[3].vip"), "{}", e.message());
    let e = update(
        &mut c,
        None,
        vec![
            rm0.clone(),
            real.clone(),
            pb::LbChange {
                change: Some(C::RemoveReal(pb::LbRemoveReal {
                    vip: Some(vip(2)),
                    real: "10.0.0.1".into(),
                })),
            },
        ],
    )
    .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    assert!(
        e.message().starts_with("changes[2].real"),
        "{}",
        e.message()
    );
    let e = update(&mut c, None, vec![]).unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().starts_with("changes: "), "{}", e.message());
    assert_eq!(show(&mut c), before);

    let v = update(&mut c, Some(2), vec![rm0, real, add(600)])
        .unwrap()
        .into_inner()
        .version;
    assert_eq!(v, 3);
    let s = show(&mut c);
    assert_eq!(s.vips.len(), 512);
    let key = |v: &pb::LbVip| v.vip.as_ref().unwrap().address.clone();
    assert!(!s.vips.iter().any(|v| key(v) == "198.19.0.0"));
    let v1 = s.vips.iter().find(|v| key(v) == "198.19.0.1").unwrap();
    assert_eq!(v1.reals[0].address, "10.0.0.5");
    assert_eq!(v1.reals[0].slots, 65537);
    // The freed VIP number (Katran's ring position) is the one reused.
    let v600 = s.vips.iter().find(|v| key(v) == "198.19.2.88").unwrap();
    assert_eq!(
        v600.number,
        before
            .vips
            .iter()
            .find(|v| key(v) == "198.19.0.0")
            .unwrap()
            .number
    );
    drop(c);
    drop(rt);
    drop(a);
}

#[test]
fn handler_selection() {
    // No lb in the chain: the common appliance runs udp-echo only.
    let plain = Appliance::start(0, |_| {});
    let o = plain.ctl(&["lb", "show"]);
    expect(&o, 1);
    assert!(
        stderr(&o).contains("FAILED_PRECONDITION: handler: no lb handler in the chain"),
        "{}",
        stderr(&o)
    );
    let o = plain.ctl(&["lb", "real", "add", VIP, "10.0.0.1"]);
    refused(&o, "FAILED_PRECONDITION", "handler: no lb handler");
    drop(plain);

    // Two balancers: the index must be given.
    let mut second = lb_spec(&["10.0.1.1"]);
    second.vips[0].address = "198.18.0.99".parse::<IpAddr>().unwrap();
    let a = LbAppliance::start(vec![
        Spec::Lb(lb_spec(&["10.0.0.1"])),
        Spec::UdpEcho(UdpEchoSpec::default()),
        Spec::Lb(second),
    ]);
    let o = a.ctl(&["lb", "show"]);
    expect(&o, 1);
    assert!(
        stderr(&o)
            .contains("FAILED_PRECONDITION: handler: the chain has 2 lb handlers (lb at 0, 2)"),
        "{}",
        stderr(&o)
    );
    let s = json(&expect(
        &a.ctl(&["lb", "--handler", "2", "show", "--json"]),
        0,
    ));
    assert_eq!(s["handler"], 2);
    assert_eq!(s["vips"][0]["vip"], "198.18.0.99:7/udp");
    let o = a.ctl(&["lb", "show", "--handler", "1"]);
    expect(&o, 1);
    assert!(
        stderr(&o).contains("NOT_FOUND: handler: handler 1 of the chain is udp-echo, not lb"),
        "{}",
        stderr(&o)
    );
    let o = a.ctl(&["lb", "stats", "--handler", "7"]);
    expect(&o, 1);
    assert!(stderr(&o).contains("NOT_FOUND: handler:"), "{}", stderr(&o));
    // A change to one leaves the other alone.
    expect(
        &a.ctl(&[
            "lb",
            "real",
            "add",
            "198.18.0.99:7/udp",
            "10.0.1.2",
            "--handler",
            "2",
        ]),
        0,
    );
    let s0 = json(&expect(
        &a.ctl(&["lb", "show", "--json", "--handler", "0"]),
        0,
    ));
    let s2 = json(&expect(
        &a.ctl(&["lb", "show", "--json", "--handler", "2"]),
        0,
    ));
    assert_eq!(
        (s0["version"].as_u64(), s2["version"].as_u64()),
        (Some(1), Some(2))
    );
}
