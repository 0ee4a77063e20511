//! Lab harness of the privileged AF_XDP tests (`tests/afxdp.rs`): what a test needs to put
//! the real `slipstream` binary on one end of a veth pair and real kernel programs on the
//! other (ARCHITECTURE.md, "Testing topologies" 2).
//!
//! - [`privileged`] / [`setup_failed`]: not root or a setup step failed is a loud `*** SKIP`
//!   on stderr, or a failure under `CI=true` (STYLE.md, "Tests").
//! - [`Lab`]: `scripts/lab up` with a prefix unique to the process and test, torn down by
//!   `Drop` (so also when the test panics).
//! - [`Netns`] / [`in_netns`]: move a thread into a namespace with setns(2). A socket keeps
//!   the namespace it was made in, so sockets made in the peer namespace by a short-lived
//!   thread are used from the test thread afterwards.
//! - [`Appliance`]: the binary run with `ip netns exec <app> slipstream run --json` on a
//!   generated config in a temp dir; stopped with SIGINT (or SIGKILL), killed on drop.
//! - [`RawLink`]: an AF_PACKET socket bound to one interface, to inject frames as they are
//!   and to capture what arrives (with the VLAN tag the kernel took off put back).
//! - [`echo_exchange`] and friends: numbered UDP requests from kernel sockets, every reply
//!   checked, nothing retried.
//!
//! Everything here waits with a deadline; no loop is unbounded.

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use dataplane::replay::counters::{PortCounters, Totals};
use dataplane::replay::Counters;

/// MAC of the app end of the lab veth (`scripts/lab`): frames the app *kernel* sends.
pub const LAB_APP_MAC: [u8; 6] = [0x02, 0x00, 0xc6, 0x12, 0x00, 0x01];
/// The app end's addresses.
pub const APP_V4: &str = "198.18.0.1";
pub const APP_V6: &str = "2001:db8::1";
/// The peer end's addresses.
pub const PEER_V4: &str = "198.18.0.2";
pub const PEER_V6: &str = "2001:db8::2";

/// How long the appliance may take to come up (UMEM, XDP attach, bind) on a loaded
/// 2-core CI machine.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a SIGINT'd appliance may take to stop and print its report.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(30);

pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Prints a SKIP line straight to stderr: the harness captures `eprintln!` of passing
/// tests, and a skipped test passes.
fn skip(msg: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "\n*** SKIP {msg} ***\n");
}

/// Whether a privileged test can run. Not root: a loud SKIP, or a failure under CI=true.
pub fn privileged(test: &str) -> bool {
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    assert!(
        !in_ci(),
        "{test}: needs root (netns, veth, XDP, AF_XDP) and CI=true forbids skipping"
    );
    skip(&format!(
        "{test}: needs root (netns, veth, XDP, AF_XDP); run as root, or under CI=true to fail instead"
    ));
    false
}

/// A setup step failed: under CI=true that fails the test, otherwise a loud SKIP.
pub fn setup_failed(test: &str, what: &str) {
    assert!(!in_ci(), "{test}: setup failed: {what}");
    skip(&format!("{test}: setup failed: {what}"));
}

/// `privileged` plus [`Lab::up`]: the lab, or None after a SKIP (a panic under CI=true).
pub fn lab_for(test: &str, tag: char, queues: u16) -> Option<Lab> {
    if !privileged(test) {
        return None;
    }
    match Lab::up(tag, queues) {
        Ok(lab) => Some(lab),
        Err(e) => {
            setup_failed(test, &e);
            None
        }
    }
}

/// Runs a command; Ok(stdout) when it exits 0, Err naming the command and its stderr.
pub fn run(program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{program} {}: {e}", args.join(" ")))?;
    if !out.status.success() {
        return Err(format!(
            "{program} {}: {}: {}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn lab_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/lab")
}

/// A veth pair between two fresh namespaces (`scripts/lab up`), removed on drop.
#[derive(Debug)]
pub struct Lab {
    pub prefix: String,
    pub app_ns: String,
    pub peer_ns: String,
    pub app_if: String,
    pub peer_if: String,
    pub queues: u16,
}

impl Lab {
    /// Brings a lab up with `queues` queues per veth end. The prefix is `ssT<pid><tag><n>`
    /// (at most 12 characters): unique per test process and test, so that test binaries
    /// and tests can run side by side.
    pub fn up(tag: char, queues: u16) -> Result<Lab, String> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        // The whole pid (at most 7 digits), so that no other live process can have the same
        // prefix: `down` below must only ever remove leftovers of a dead one.
        let prefix = format!(
            "ssT{}{tag}{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed) % 10
        );
        // The guard exists before anything is made, so a half-made lab is removed too.
        let lab = Lab {
            app_ns: format!("{prefix}-app"),
            peer_ns: format!("{prefix}-peer"),
            app_if: format!("{prefix}-a"),
            peer_if: format!("{prefix}-p"),
            prefix,
            queues,
        };
        // Leftovers of a killed earlier run that had our pid.
        lab.script("down")?;
        let out = lab.script("up")?;
        for (key, want) in [("APP_IF", &lab.app_if), ("PEER_IF", &lab.peer_if)] {
            if !out.lines().any(|l| l == format!("{key}={want}")) {
                return Err(format!("scripts/lab up did not print {key}={want}:\n{out}"));
            }
        }
        Ok(lab)
    }

    fn script(&self, cmd: &str) -> Result<String, String> {
        let queues = self.queues.to_string();
        let script = lab_script();
        run(
            script.to_str().unwrap_or("scripts/lab"),
            &["--prefix", &self.prefix, "--queues", &queues, cmd],
        )
    }

    /// `ip netns exec NS ARGS...`.
    pub fn exec(&self, ns: &str, args: &[&str]) -> Result<String, String> {
        let mut all = vec!["netns", "exec", ns];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// The id of the XDP program attached to the app end, if any (`ip link` shows
    /// `prog/xdp id N` for every mode).
    pub fn app_xdp_prog(&self) -> Option<u32> {
        let out = run(
            "ip",
            &["-n", &self.app_ns, "link", "show", "dev", &self.app_if],
        )
        .ok()?;
        let words: Vec<&str> = out.split_whitespace().collect();
        words.windows(3).find_map(|w| match w {
            [prog, "id", id] if prog.starts_with("prog/xdp") => id.parse().ok(),
            _ => None,
        })
    }

    /// What the kernel says about the wire, for failure messages: `ethtool -S` of both
    /// ends (per-queue XDP counters) and the peer's nonzero UDP/IP error counters.
    pub fn diagnostics(&self) -> String {
        let mut out = String::new();
        for (ns, dev) in [(&self.app_ns, &self.app_if), (&self.peer_ns, &self.peer_if)] {
            let stats = self.exec(ns, &["ethtool", "-S", dev]).unwrap_or_else(|e| e);
            let nonzero: Vec<&str> = stats
                .lines()
                .map(str::trim)
                .filter(|l| l.contains(':') && !l.ends_with(": 0"))
                .collect();
            out.push_str(&format!("ethtool -S {dev}: {}\n", nonzero.join(", ")));
        }
        let snmp = self
            .exec(&self.peer_ns, &["nstat", "-asz"])
            .unwrap_or_else(|e| e);
        let errors: Vec<&str> = snmp
            .lines()
            .filter(|l| {
                (l.contains("Err") || l.contains("Drop") || l.contains("NoPorts"))
                    && l.split_whitespace().nth(1).is_some_and(|v| v != "0")
            })
            .collect();
        out.push_str(&format!("peer nstat: {}\n", errors.join("; ")));
        out
    }

    /// A snmp counter of the app namespace's kernel (`/proc/net/snmp` for `Udp`/`Icmp`,
    /// `/proc/net/snmp6` for `Icmp6InEchos`-style names).
    pub fn app_snmp(&self, group: &str, field: &str) -> Result<u64, String> {
        if group.ends_with('6') {
            let text = self.exec(&self.app_ns, &["cat", "/proc/net/snmp6"])?;
            let key = format!("{group}{field}");
            return text
                .lines()
                .filter_map(|l| l.split_once(char::is_whitespace))
                .find(|(k, _)| *k == key)
                .and_then(|(_, v)| v.trim().parse().ok())
                .ok_or_else(|| format!("no {key} in /proc/net/snmp6"));
        }
        let text = self.exec(&self.app_ns, &["cat", "/proc/net/snmp"])?;
        let prefix = format!("{group}:");
        let mut rows = text.lines().filter(|l| l.starts_with(&prefix));
        let (names, values) = (rows.next(), rows.next());
        let (Some(names), Some(values)) = (names, values) else {
            return Err(format!("no {group} rows in /proc/net/snmp"));
        };
        names
            .split_whitespace()
            .zip(values.split_whitespace())
            .find(|(n, _)| *n == field)
            .and_then(|(_, v)| v.parse().ok())
            .ok_or_else(|| format!("no {group} {field} in /proc/net/snmp"))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Err(e) = self.script("down") {
            eprintln!("lab {}: scripts/lab down: {e}", self.prefix);
        }
        for ns in [&self.app_ns, &self.peer_ns] {
            if Path::new("/run/netns").join(ns).exists() {
                let _ = Command::new("ip").args(["netns", "del", ns]).output();
            }
        }
    }
}

fn setns(fd: &impl AsRawFd) -> io::Result<()> {
    // SAFETY: setns(2) on an open nsfs descriptor; it changes only the calling thread's
    // network namespace and touches no memory of ours.
    if unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Moves the calling thread into network namespace `ns` (a name under /run/netns) and
/// back to where it was on drop.
pub struct Netns {
    home: OwnedFd,
}

impl Netns {
    pub fn enter(ns: &str) -> io::Result<Netns> {
        let home: OwnedFd = File::open("/proc/thread-self/ns/net")?.into();
        let target = File::open(Path::new("/run/netns").join(ns))?;
        setns(&target)?;
        Ok(Netns { home })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        setns(&self.home).expect("returning to the original network namespace");
    }
}

/// Runs `f` on a fresh thread inside network namespace `ns`; sockets it makes stay in `ns`.
pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> io::Result<T> + Send) -> io::Result<T> {
    std::thread::scope(|s| {
        s.spawn(|| {
            let _ns = Netns::enter(ns)?;
            f()
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("thread in the network namespace panicked")))
    })
}

/// A UDP socket of the peer namespace bound to `bind` (port 0: any).
pub fn peer_udp(lab: &Lab, bind: &str) -> io::Result<UdpSocket> {
    let bind: SocketAddr = bind
        .parse()
        .map_err(|e| io::Error::other(format!("{bind}: {e}")))?;
    in_netns(&lab.peer_ns, move || UdpSocket::bind(bind))
}

/// A scratch folder under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(label: &str) -> io::Result<TempDir> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "slipstream-afxdp-{}-{}-{label}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        Ok(TempDir(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One worker of a generated config: its core and the queues it owns (`p0:q1`).
pub struct WorkerSpec<'a> {
    pub core: u32,
    pub queues: &'a [&'a str],
}

/// A slipstream config with one AF_XDP port on the lab's app end, steered by `rules`,
/// the given workers and `handlers` (TOML `[[handlers]]` sections). Stats every 100 ms,
/// which is also how [`Appliance::wait_running`] sees the workers are up.
pub fn afxdp_config(lab: &Lab, rules: &[&str], workers: &[WorkerSpec], handlers: &str) -> String {
    let quoted = |v: &[&str]| {
        v.iter()
            .map(|s| format!("\"{s}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut s = format!(
        "[engine]\nstats_interval_ms = 100\n\n[[ports]]\nkind = \"afxdp\"\ninterface = \"{}\"\n\
         queues = {}\nrules = [{}]\n",
        lab.app_if,
        lab.queues,
        quoted(rules)
    );
    for w in workers {
        s.push_str(&format!(
            "\n[[workers]]\ncore = {}\nqueues = [{}]\n",
            w.core,
            quoted(w.queues)
        ));
    }
    s.push_str(handlers);
    s
}

/// The udp-echo handler on port 7.
pub const UDP_ECHO: &str = "\n[[handlers]]\nkind = \"udp-echo\"\nport = 7\n";

/// How a finished appliance ended.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Finished {
    /// Asserts a clean stop: exit 0, a JSON report on stdout whose accounting holds
    /// (received == transmitted + dropped + slow path; the binary has already checked
    /// that every frame is back in its pool, or it would exit 1). Returns the report.
    pub fn assert_clean(&self, what: &str) -> serde_json::Value {
        assert_eq!(
            self.status.code(),
            Some(0),
            "{what}: slipstream did not exit 0 ({})\nstdout:\n{}\nstderr:\n{}",
            self.status,
            self.stdout,
            self.tail_of_stderr()
        );
        let report: serde_json::Value = serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "{what}: the --json report does not parse: {e}\n{}",
                self.stdout
            )
        });
        let c = report_counters(&report);
        let drops: u64 = c.total.drops.values().sum();
        assert_eq!(
            c.total.rx_packets,
            c.total.tx_packets + drops + c.total.slow_path,
            "{what}: conservation: received != transmitted + dropped + slow path: {}",
            c.summary()
        );
        report
    }

    /// The last lines of stderr (the stats lines make it long).
    pub fn tail_of_stderr(&self) -> String {
        let lines: Vec<&str> = self.stderr.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

/// A `slipstream run` process in the app namespace of a lab.
pub struct Appliance {
    child: Option<Child>,
    stdout: Option<JoinHandle<String>>,
    stderr_thread: Option<JoinHandle<()>>,
    stderr: Arc<Mutex<String>>,
    _dir: TempDir,
}

impl Appliance {
    /// Writes `config` into a temp dir and starts `slipstream run --config F --json` in the
    /// lab's app namespace. Does not wait; see [`Appliance::wait_running`].
    pub fn start(lab: &Lab, config: &str) -> Result<Appliance, String> {
        Appliance::start_with_args(lab, config, &[])
    }

    /// [`Appliance::start`] with more arguments for `slipstream run` (for example
    /// `--ctl-socket PATH`).
    #[allow(dead_code)] // not every test binary that includes this module uses it
    pub fn start_with_args(lab: &Lab, config: &str, extra: &[&str]) -> Result<Appliance, String> {
        let dir = TempDir::new(&lab.prefix).map_err(|e| format!("temp dir: {e}"))?;
        let path = dir.0.join("slipstream.toml");
        std::fs::write(&path, config).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &lab.app_ns,
                env!("CARGO_BIN_EXE_slipstream"),
            ])
            .args(["run", "--json", "--config"])
            .arg(&path)
            .args(extra)
            .env("SLIPSTREAM_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("starting slipstream: {e}"))?;
        let mut out = child.stdout.take().expect("piped stdout");
        let stdout = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = out.read_to_string(&mut s);
            s
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err = child.stderr.take().expect("piped stderr");
        let sink = stderr.clone();
        let stderr_thread = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                if let Ok(mut s) = sink.lock() {
                    s.push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            }
        });
        Ok(Appliance {
            child: Some(child),
            stdout: Some(stdout),
            stderr_thread: Some(stderr_thread),
            stderr,
            _dir: dir,
        })
    }

    /// What the process has written on stderr so far.
    pub fn stderr_so_far(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// The pid of `ip netns exec`, which execs slipstream: the appliance's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Waits until the engine runs: the first periodic stats line is printed after the
    /// port is set up (XDP attached, sockets bound and registered) and the workers are
    /// started, whose first loop turn fills the fill ring; then a little more for that.
    /// Err (with stderr) when the process exits first or `timeout` passes.
    pub fn wait_running(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            if self
                .stderr_so_far()
                .lines()
                .any(|l| l.contains("] rx ") && l.contains("Mpps"))
            {
                std::thread::sleep(Duration::from_millis(200));
                return Ok(());
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(format!(
                        "slipstream exited during start-up ({status}):\n{}",
                        self.stderr_so_far()
                    ));
                }
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "slipstream printed no stats line within {timeout:?}:\n{}",
                    self.stderr_so_far()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn signal(&self, sig: libc::c_int) {
        let Ok(pid) = libc::pid_t::try_from(self.pid()) else {
            return;
        };
        if pid > 0 {
            // SAFETY: kill(2) on our own child's pid, which we have not reaped yet (so it
            // cannot have been reused); no memory is involved.
            unsafe { libc::kill(pid, sig) };
        }
    }

    fn finish(&mut self, timeout: Duration) -> Finished {
        let mut child = self.child.take().expect("appliance already finished");
        let deadline = Instant::now() + timeout;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    let _ = child.kill();
                    let status = child.wait().expect("wait for slipstream");
                    let stderr = self.stderr_so_far();
                    panic!(
                        "slipstream did not stop within {timeout:?} (killed: {status}):\n{stderr}"
                    );
                }
            }
        };
        let stdout = self
            .stdout
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        if let Some(h) = self.stderr_thread.take() {
            let _ = h.join();
        }
        Finished {
            status,
            stdout,
            stderr: self.stderr_so_far(),
        }
    }

    /// SIGINT, then waits for the exit and the report.
    pub fn interrupt(mut self) -> Finished {
        self.signal(libc::SIGINT);
        self.finish(STOP_TIMEOUT)
    }

    /// SIGKILL (a crash: nothing is cleaned up), then waits for the exit.
    pub fn kill(mut self) -> Finished {
        self.signal(libc::SIGKILL);
        self.finish(STOP_TIMEOUT)
    }
}

impl Drop for Appliance {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn u64_at(v: &serde_json::Value, key: &str) -> u64 {
    v.get(key).and_then(serde_json::Value::as_u64).unwrap_or(0)
}

fn drop_map(v: Option<&serde_json::Value>) -> std::collections::BTreeMap<String, u64> {
    v.and_then(serde_json::Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, n)| n.as_u64().filter(|n| *n > 0).map(|n| (k.clone(), n)))
                .collect()
        })
        .unwrap_or_default()
}

/// The replay harness's counters (`counters.toml` form) of a `--json` report: per port rx/tx
/// packets and bytes and port drops, totals over ports and workers.
pub fn report_counters(report: &serde_json::Value) -> Counters {
    let mut c = Counters::default();
    let empty = Vec::new();
    for p in report["ports"].as_array().unwrap_or(&empty) {
        let s = &p["stats"];
        let port = PortCounters {
            rx_packets: u64_at(s, "rx_packets"),
            rx_bytes: u64_at(s, "rx_bytes"),
            tx_packets: u64_at(s, "tx_packets"),
            tx_bytes: u64_at(s, "tx_bytes"),
            drops: drop_map(s.get("drops")),
        };
        c.total.rx_packets += port.rx_packets;
        c.total.tx_packets += port.tx_packets;
        for (k, n) in &port.drops {
            *c.total.drops.entry(k.clone()).or_default() += n;
        }
        let name = p["id"].as_str().unwrap_or("p?").to_string();
        c.ports.insert(name, port);
    }
    let mut totals = Totals {
        rx_packets: c.total.rx_packets,
        tx_packets: c.total.tx_packets,
        slow_path: 0,
        drops: std::mem::take(&mut c.total.drops),
    };
    for w in report["workers"].as_array().unwrap_or(&empty) {
        totals.slow_path += u64_at(&w["counters"], "slow_path");
        for (k, n) in drop_map(w["counters"].get("drops")) {
            *totals.drops.entry(k).or_default() += n;
        }
    }
    c.total = totals;
    c
}

/// Packets worker `i` received, from a `--json` report.
pub fn worker_rx(report: &serde_json::Value, i: usize) -> u64 {
    u64_at(&report["workers"][i]["counters"], "rx_packets")
}

/// Sends one probe at a time from `sock` to `dst` until one comes back (each waits 100 ms,
/// at most `tries`): the path works end to end. Returns how many probes were sent (a lost
/// early probe may still have been counted by the appliance).
pub fn wait_for_echo(sock: &UdpSocket, dst: SocketAddr, tries: u32) -> Result<u32, String> {
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .map_err(|e| e.to_string())?;
    let mut buf = [0u8; 2048];
    for i in 0..tries {
        let probe = format!("probe {i}");
        sock.send_to(probe.as_bytes(), dst)
            .map_err(|e| format!("probe to {dst}: {e}"))?;
        let until = Instant::now() + Duration::from_millis(100);
        while Instant::now() < until {
            match sock.recv_from(&mut buf) {
                Ok((n, from)) if from == dst && buf[..n] == *probe.as_bytes() => return Ok(i + 1),
                Ok(_) => {} // a late reply to an earlier probe
                Err(_) => break,
            }
        }
    }
    Err(format!("no echo from {dst} after {tries} probes"))
}

/// The payload of request `i` of `tag`: numbered, and long enough to look like data.
pub fn request_payload(tag: &str, i: usize) -> Vec<u8> {
    let mut p = format!("{tag} request {i:06} ").into_bytes();
    // Vary the length (20..=83 bytes after the header) so that lengths are checked too.
    p.extend((0..(i % 64)).map(|k| b'a' + (k % 26) as u8));
    p
}

/// Sends `n` numbered requests from `sock` to `dst`, one at a time, and checks that every
/// reply comes from `dst` with the request's payload. Nothing is retried: a reply that
/// does not arrive within `timeout` fails the exchange. Returns the number of replies.
pub fn echo_exchange(
    sock: &UdpSocket,
    dst: SocketAddr,
    tag: &str,
    n: usize,
    timeout: Duration,
) -> Result<usize, String> {
    sock.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let mut buf = [0u8; 2048];
    for i in 0..n {
        let req = request_payload(tag, i);
        sock.send_to(&req, dst)
            .map_err(|e| format!("{tag}: sending request {i} to {dst}: {e}"))?;
        let (len, from) = sock.recv_from(&mut buf).map_err(|e| {
            format!("{tag}: request {i} of {n} to {dst}: no reply within {timeout:?} ({e})")
        })?;
        if from != dst || buf[..len] != req[..] {
            return Err(format!(
                "{tag}: request {i} to {dst}: reply from {from} is {:?}, expected {:?}",
                String::from_utf8_lossy(&buf[..len]),
                String::from_utf8_lossy(&req)
            ));
        }
    }
    Ok(n)
}

/// An AF_PACKET raw socket bound to one interface (packet(7)): injects frames exactly as
/// given and captures the frames the interface receives from its peer.
pub struct RawLink {
    fd: OwnedFd,
    ifindex: i32,
}

/// A captured frame.
#[derive(Debug, Clone)]
pub struct Frame {
    pub data: Vec<u8>,
    /// `sll_pkttype`: PACKET_HOST, PACKET_OTHERHOST, ...
    pub pkttype: u8,
}

fn check(rc: libc::c_int, what: &str) -> io::Result<libc::c_int> {
    if rc < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("{what}: {e}")));
    }
    Ok(rc)
}

fn setsockopt_int(
    fd: &OwnedFd,
    level: libc::c_int,
    opt: libc::c_int,
    v: libc::c_int,
) -> io::Result<()> {
    // SAFETY: `v` is a live c_int and the length passed is its size; fd is open.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            opt,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    check(rc, "setsockopt").map(|_| ())
}

impl RawLink {
    /// Opens the socket in the calling thread's namespace (use [`in_netns`]) on `ifname`;
    /// it receives every protocol, not the frames this host sends (PACKET_IGNORE_OUTGOING),
    /// with PACKET_AUXDATA for the VLAN tag.
    pub fn open(ifname: &str) -> io::Result<RawLink> {
        let proto = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: socket(2) with constant arguments; the result is checked and owned below.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::c_int::from(proto),
            )
        };
        let raw = check(raw, "socket(AF_PACKET)")?;
        // SAFETY: `raw` is a new descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let name = CString::new(ifname).map_err(io::Error::other)?;
        // SAFETY: `name` is a NUL-terminated string that outlives the call.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if ifindex == 0 {
            return Err(io::Error::other(format!(
                "interface {ifname} not found in this namespace: {}",
                io::Error::last_os_error()
            )));
        }
        let ifindex = ifindex as i32;
        // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto;
        sll.sll_ifindex = ifindex;
        // SAFETY: `sll` is a sockaddr_ll (linux/if_packet.h) and its size is passed.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        check(rc, "bind(AF_PACKET)")?;
        setsockopt_int(&fd, libc::SOL_PACKET, libc::PACKET_AUXDATA, 1)?;
        setsockopt_int(&fd, libc::SOL_PACKET, libc::PACKET_IGNORE_OUTGOING, 1)?;
        setsockopt_int(&fd, libc::SOL_SOCKET, libc::SO_RCVBUF, 4 << 20)?;
        let link = RawLink { fd, ifindex };
        // Frames of any interface may have been queued between socket() and bind().
        while link.recv(Duration::ZERO)?.is_some() {}
        Ok(link)
    }

    /// Transmits `frame` (a complete Ethernet frame, at least 14 bytes) as it is.
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_ifindex = self.ifindex;
        sll.sll_halen = 6;
        for (d, s) in sll.sll_addr.iter_mut().zip(frame.iter().take(6)) {
            *d = *s;
        }
        // SAFETY: `frame` and `sll` are live for the call and their lengths are passed.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if n as usize != frame.len() {
            return Err(io::Error::other(format!(
                "sent {n} of {} bytes",
                frame.len()
            )));
        }
        Ok(())
    }

    /// The next received frame, waiting at most `timeout`; None when none came. A VLAN tag
    /// the kernel moved into the skb's metadata (it always does on receive) is put back
    /// into the frame, so the frame reads as it was on the wire.
    pub fn recv(&self, timeout: Duration) -> io::Result<Option<Frame>> {
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
        // SAFETY: one valid pollfd, count 1.
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        if check(rc, "poll")? == 0 {
            return Ok(None);
        }
        let mut data = vec![0u8; 65536];
        // SAFETY: plain old data; zero is valid.
        let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        // Room for one PACKET_AUXDATA control message (u64 keeps it aligned for cmsghdr).
        let mut control = [0u64; 16];
        let mut iov = libc::iovec {
            iov_base: data.as_mut_ptr().cast(),
            iov_len: data.len(),
        };
        // SAFETY: plain old data; zero is valid, the fields are set below.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_name = (&mut from as *mut libc::sockaddr_ll).cast();
        msg.msg_namelen = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&control);
        // SAFETY: every buffer `msg` points at is live and sized as stated.
        let n = unsafe { libc::recvmsg(self.fd.as_raw_fd(), &mut msg, libc::MSG_DONTWAIT) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::WouldBlock {
                return Ok(None);
            }
            return Err(e);
        }
        data.truncate(n as usize);
        // SAFETY: CMSG_FIRSTHDR/CMSG_NXTHDR walk the control buffer the kernel filled, within
        // msg_controllen.
        let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
        while !cmsg.is_null() {
            // SAFETY: `cmsg` is non-null and points into `control`.
            let (level, ty) = unsafe { ((*cmsg).cmsg_level, (*cmsg).cmsg_type) };
            if level == libc::SOL_PACKET && ty == libc::PACKET_AUXDATA {
                // SAFETY: a PACKET_AUXDATA message carries a tpacket_auxdata
                // (linux/if_packet.h); read_unaligned since CMSG_DATA need not be aligned
                // for it.
                let aux: libc::tpacket_auxdata = unsafe {
                    std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::tpacket_auxdata>())
                };
                if aux.tp_status & libc::TP_STATUS_VLAN_VALID != 0 && data.len() >= 12 {
                    let tpid = if aux.tp_status & libc::TP_STATUS_VLAN_TPID_VALID != 0 {
                        aux.tp_vlan_tpid
                    } else {
                        0x8100
                    };
                    let mut tag = tpid.to_be_bytes().to_vec();
                    tag.extend_from_slice(&aux.tp_vlan_tci.to_be_bytes());
                    data.splice(12..12, tag);
                }
            }
            // SAFETY: as for CMSG_FIRSTHDR above.
            cmsg = unsafe { libc::CMSG_NXTHDR(&msg, cmsg) };
        }
        Ok(Some(Frame {
            data,
            pkttype: from.sll_pkttype,
        }))
    }
}

/// A raw link on the lab's peer end.
pub fn peer_link(lab: &Lab) -> io::Result<RawLink> {
    let ifname = lab.peer_if.clone();
    in_netns(&lab.peer_ns, move || RawLink::open(&ifname))
}

/// The `ctl` binary for tests that drive a running appliance: `$SLIPSTREAM_CTL`, else the
/// control crate's `ctl` next to the `slipstream` binary under test (`cargo test --workspace`
/// builds it there), else built there now with cargo.
#[allow(dead_code)]
pub fn ctl_binary() -> Result<std::path::PathBuf, String> {
    if let Some(p) = std::env::var_os("SLIPSTREAM_CTL") {
        return Ok(std::path::PathBuf::from(p));
    }
    let slipstream = std::path::Path::new(env!("CARGO_BIN_EXE_slipstream"));
    let ctl = slipstream.with_file_name("ctl");
    if ctl.exists() {
        return Ok(ctl);
    }
    let profile_dir = slipstream.parent().ok_or("slipstream has no directory")?;
    let target_dir = profile_dir.parent().ok_or("no target directory")?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = std::process::Command::new(cargo);
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
        .args([
            "build",
            "--quiet",
            "-p",
            "control",
            "--bin",
            "ctl",
            "--target-dir",
        ])
        .arg(target_dir);
    if profile_dir.file_name().and_then(|n| n.to_str()) == Some("release") {
        cmd.arg("--release");
    }
    let status = cmd
        .status()
        .map_err(|e| format!("cargo build -p control --bin ctl: {e}"))?;
    if status.success() && ctl.exists() {
        Ok(ctl)
    } else {
        Err(format!(
            "no ctl binary at {} (cargo build -p control --bin ctl, or set SLIPSTREAM_CTL)",
            ctl.display()
        ))
    }
}
