//! Privileged lab tests: real memcached clients from Debian's libmemcached-tools in the peer
//! namespace against the kv handler over AF_XDP (veth, copy mode), and the differential
//! script against a real `memcached -U` in the peer namespace. Root only (loud SKIP
//! otherwise, failure under CI=true); each test has a lab of its own, removed on every way
//! out.
//!
//! ```sh
//! CI=true cargo test -p kv --test lab -- --test-threads=1
//! ```

mod common;

use std::net::UdpSocket;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::lab::{ready, Appliance, Lab, Process, TempDir};
use common::script::{normalize, render, script, Message};
use common::Reply;

/// The counters memaslap prints at the end: `name: value` lines.
fn memaslap_counter(out: &str, name: &str) -> u64 {
    out.lines()
        .filter_map(|l| l.trim().strip_prefix(&format!("{name}:")))
        .filter_map(|v| v.split_whitespace().next()?.parse().ok())
        .next_back()
        .unwrap_or_else(|| panic!("memcaslap printed no `{name}`:\n{out}"))
}

fn assert_clean_report(r: &dataplane::engine::Report, what: &str) {
    r.check_conservation()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let drops: Vec<_> = r.drops().nonzero().collect();
    assert!(drops.is_empty(), "{what}: drops {drops:?}");
}

fn run_memaslap(lab: &Lab, args: &[&str]) -> String {
    let mut all = vec!["-s", "198.18.0.1:11211", "-U"];
    all.extend_from_slice(args);
    let out = lab.peer_run("memcaslap", &all, Duration::from_secs(120));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "memcaslap failed:\n{text}");
    text
}

fn check_memaslap(text: &str) {
    for c in [
        "get_misses",
        "packet_drop",
        "udp_timeout",
        "packet_disorder",
    ] {
        assert_eq!(memaslap_counter(text, c), 0, "{c} in:\n{text}");
    }
    assert!(memaslap_counter(text, "cmd_get") > 1000, "{text}");
    assert!(memaslap_counter(text, "cmd_set") > 100, "{text}");
}

/// memcaslap -U, 90/10 get/set with data verification: no misses, drops, disorder or
/// timeouts on the client; the engine drops nothing and accounts for every packet.
#[test]
fn memcaslap_udp_one_core() {
    if !ready("memcaslap_udp_one_core", &["memcaslap"]) {
        return;
    }
    let lab = Lab::up(1).expect("lab");
    let app = Appliance::start(&lab, "memory_mb = 64\nhugepages = false");
    let text = run_memaslap(&lab, &["-t", "4s", "-T", "1", "-c", "16", "-v", "0.1"]);
    check_memaslap(&text);
    let r = app.stop();
    assert_clean_report(&r, "memcaslap");
}

/// The same over two queues, two workers and two partitions: RSS spreads client flows
/// over both queues, and each core forwards the keys of the other's partition to it.
#[test]
fn memcaslap_udp_two_cores_forward_by_key() {
    if !ready("memcaslap_udp_two_cores_forward_by_key", &["memcaslap"]) {
        return;
    }
    let lab = Lab::up(2).expect("lab");
    let mut app = Appliance::start(
        &lab,
        "memory_mb = 64\nmax_memory_mb = 128\nhugepages = false",
    );
    let text = run_memaslap(&lab, &["-t", "3s", "-T", "2", "-c", "16"]);
    check_memaslap(&text);
    // Live budget changes through a chain update (as `ctl handlers set` makes them) while
    // clients run: nothing lost, nothing evicted (the budget never goes below the data).
    let mut version = app.engine().chain().version;
    let handle = std::thread::spawn({
        let peer = lab.peer_ns.clone();
        move || {
            std::process::Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &peer,
                    "memcaslap",
                    "-s",
                    "198.18.0.1:11211",
                    "-U",
                    "-t",
                    "4s",
                    "-T",
                    "2",
                    "-c",
                    "16",
                ])
                .stdin(Stdio::null())
                .output()
        }
    });
    for mem in [96, 64, 128, 64] {
        std::thread::sleep(Duration::from_millis(600));
        let specs = common::specs(&format!(
            "[[handlers]]\nkind = \"kv\"\nname = \"{}\"\nworkers = [0, 1]\nmemory_mb = {mem}\nmax_memory_mb = 128\nhugepages = false\n",
            app.name
        ));
        version = app
            .engine()
            .set_handlers(Some(version), specs)
            .expect("update");
    }
    let out = handle.join().expect("client thread").expect("memcaslap");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for c in ["packet_drop", "udp_timeout"] {
        assert_eq!(
            memaslap_counter(&text, c),
            0,
            "{c} during live updates:\n{text}"
        );
    }
    let r = app.stop();
    assert_clean_report(&r, "memcaslap, two cores");
    let w = r.worker_totals();
    assert!(w.ring_in > 0, "no key crossed cores");
    let kv = r
        .handlers
        .iter()
        .find(|h| h.kind == "kv")
        .expect("kv stats");
    assert_eq!(
        kv.workers
            .iter()
            .map(|w| w.get("evictions").unwrap_or(0))
            .sum::<u64>(),
        0
    );
    for w in &kv.workers {
        assert!(w.get("hits").unwrap_or(0) > 0, "{kv:?}");
    }
}

/// `memccp --udp` copies files in (sets with noreply); each comes back intact with a get.
#[test]
fn memccp_udp_files_come_back() {
    if !ready("memccp_udp_files_come_back", &["memccp"]) {
        return;
    }
    let lab = Lab::up(1).expect("lab");
    let app = Appliance::start(&lab, "memory_mb = 8\nhugepages = false");
    let dir = TempDir::new("memccp");
    let mut files = Vec::new();
    for i in 0..8usize {
        let name = format!("file{i}.txt");
        let body: Vec<u8> = (0..(100 + i * 150))
            .map(|j| b'a' + ((i + j) % 26) as u8)
            .collect();
        std::fs::write(dir.0.join(&name), &body).unwrap();
        files.push((name, body));
    }
    let paths: Vec<String> = files
        .iter()
        .map(|(n, _)| dir.0.join(n).to_string_lossy().into_owned())
        .collect();
    let mut args = vec!["--udp", "--servers=198.18.0.1:11211"];
    args.extend(paths.iter().map(String::as_str));
    let out = lab.peer_run("memccp", &args, Duration::from_secs(30));
    assert!(
        out.status.success(),
        "memccp: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sock = lab.peer_socket();
    sock.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    for (i, (name, body)) in files.iter().enumerate() {
        let got = exchange(
            &sock,
            "198.18.0.1:11211",
            i as u16 + 1,
            format!("get {name}\r\n").as_bytes(),
        );
        let text = common::messages(&got).concat();
        let want = [
            format!("VALUE {name} 0 {}\r\n", body.len()).as_bytes(),
            body,
            b"\r\nEND\r\n",
        ]
        .concat();
        assert_eq!(common::show(&text), common::show(&want), "{name}");
    }
    let r = app.stop();
    r.check_conservation().unwrap();
    // The sets carry noreply: their frames end as `consumed`, nothing else is dropped.
    let drops: Vec<_> = r.drops().nonzero().collect();
    assert_eq!(drops, vec![(dataplane::DropReason::Consumed, 8)]);
}

/// `memcslap --udp --test=set`: sets with noreply, values up to 5 KB. libmemcached's UDP
/// mode cannot get (it asserts), so the check is the appliance's: every set arrived and
/// was stored, nothing dropped.
#[test]
fn memcslap_udp_sets_all_arrive() {
    if !ready("memcslap_udp_sets_all_arrive", &["memcslap"]) {
        return;
    }
    let lab = Lab::up(1).expect("lab");
    // Port-less rule: the later fragments of the >MTU sets carry no UDP header. memcslap
    // sends open loop (noreply, no pacing): rings of 8192 frames take its whole burst
    // (memcached -U on a default socket buffer keeps about a third of the 4000 sets of
    // `--concurrency=2 --execute-number=2000`; this test sends 2000).
    let app = Appliance::start_with(
        &lab,
        "rules = [\"udp 198.18.0.1\"]\nring_size = 8192\nframes = 32768",
        "memory_mb = 64\nhugepages = false",
    );
    let out = lab.peer_run(
        "memcslap",
        &[
            "--udp",
            "--servers=198.18.0.1:11211",
            "--test=set",
            "--concurrency=2",
            "--execute-number=1000",
        ],
        Duration::from_secs(60),
    );
    assert!(
        out.status.success(),
        "memcslap: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The sets carry noreply: wait until the engine has seen them all.
    let deadline = Instant::now() + Duration::from_secs(10);
    let sets = |a: &Appliance| {
        a.snapshot()
            .handlers
            .iter()
            .flat_map(|h| h.workers.iter())
            .map(|w| w.get("cmd_set").unwrap_or(0))
            .sum::<u64>()
    };
    while sets(&app) < 2000 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(sets(&app), 2000, "{:?}", app.snapshot().handlers);
    let r = app.stop();
    r.check_conservation().unwrap();
    let drops: Vec<_> = r
        .drops()
        .nonzero()
        .filter(|(d, _)| *d != dataplane::DropReason::Consumed)
        .collect();
    assert!(drops.is_empty(), "drops {drops:?}");
}

/// Sends `payload` as request `id` to `to`, then a `version` sentinel, and returns the
/// request's datagrams (everything of `id` that arrived up to 100 ms after the sentinel's
/// answer: with several partitions a forwarded request may answer after it).
fn exchange(sock: &UdpSocket, to: &str, id: u16, payload: &[u8]) -> Vec<Reply> {
    let sentinel = id ^ 0x8000;
    sock.send_to(&common::datagram(id, payload), to).unwrap();
    sock.send_to(&common::datagram(sentinel, b"version\r\n"), to)
        .unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut grace: Option<Instant> = None;
    loop {
        let now = Instant::now();
        assert!(now < deadline, "{to} did not answer request {id}");
        if grace.is_some_and(|g| now > g) {
            return out;
        }
        let Ok((n, _)) = sock.recv_from(&mut buf) else {
            continue;
        };
        let d = &buf[..n];
        let r = Reply {
            dport: 0,
            id: u16::from_be_bytes([d[0], d[1]]),
            seq: u16::from_be_bytes([d[2], d[3]]),
            count: u16::from_be_bytes([d[4], d[5]]),
            reserved: u16::from_be_bytes([d[6], d[7]]),
            payload: d[8..].to_vec(),
        };
        if r.id == sentinel {
            grace = Some(Instant::now() + Duration::from_millis(100));
        } else if r.id == id {
            out.push(r);
        }
    }
}

/// The differential script over the wire: memcached -U in the peer namespace (kernel UDP)
/// and slipstream's kv over AF_XDP (two queues, two partitions) get the same datagrams and
/// must answer the same, but for version, stats values and CAS uniques.
#[test]
fn answers_match_memcached_over_afxdp() {
    if !ready("answers_match_memcached_over_afxdp", &["memcached"]) {
        return;
    }
    let lab = Lab::up(2).expect("lab");
    let app = Appliance::start(&lab, "memory_mb = 16\nhugepages = false");
    let mc = Process(
        lab.peer("memcached")
            .args([
                "-U",
                "11311",
                "-p",
                "0",
                "-l",
                "198.18.0.2",
                "-t",
                "1",
                "-m",
                "64",
                "-u",
                "nobody",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("memcached"),
    );
    let sock = lab.peer_socket();
    sock.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    // memcached is up when it answers.
    let deadline = Instant::now() + Duration::from_secs(10);
    while exchange_quiet(&sock, "198.18.0.2:11311").is_none() {
        assert!(Instant::now() < deadline, "memcached did not come up");
    }
    let (mut cas_mc, mut cas_kv) = (0u64, 0u64);
    let mut diffs = Vec::new();
    let steps = script();
    for (i, step) in steps.iter().enumerate() {
        let id = i as u16 + 1;
        let theirs: Vec<Message> = normalize(
            &exchange(&sock, "198.18.0.2:11311", id, &render(step, cas_mc)),
            step.shape_only,
            &mut cas_mc,
        );
        let ours: Vec<Message> = normalize(
            &exchange(&sock, "198.18.0.1:11211", id, &render(step, cas_kv)),
            step.shape_only,
            &mut cas_kv,
        );
        if theirs != ours {
            diffs.push(format!(
                "step {i}: {:?}\n  memcached:  {theirs:?}\n  slipstream: {ours:?}",
                String::from_utf8_lossy(&step.payload)
            ));
        }
    }
    drop(mc);
    assert!(
        diffs.is_empty(),
        "{} of {} steps differ:\n{}",
        diffs.len(),
        steps.len(),
        diffs.join("\n")
    );
    let r = app.stop();
    r.check_conservation().unwrap();
    assert!(r.worker_totals().ring_in > 0, "keys crossed cores");
}

fn exchange_quiet(sock: &UdpSocket, to: &str) -> Option<()> {
    sock.send_to(&common::datagram(1, b"version\r\n"), to)
        .ok()?;
    let mut buf = [0u8; 2048];
    sock.recv_from(&mut buf).ok().map(|_| ())
}
