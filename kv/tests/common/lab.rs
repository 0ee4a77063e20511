//! Lab harness of the privileged kv tests (ARCHITECTURE.md, "Testing topologies" 2): a
//! veth pair between an app and a peer namespace (`scripts/lab`), the kv engine over
//! AF_XDP in the app namespace (in this process, on the test's thread, which enters the
//! namespace), real clients in the peer namespace (`ip netns exec`).
//!
//! Not root: a loud `*** SKIP` on stderr, or a failure under `CI=true`. Every lab and every
//! process is removed by a drop guard, also when the test panics; every wait has a
//! deadline.

#![allow(dead_code)]

use std::fs::File;
use std::io;
use std::net::UdpSocket;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use dataplane::config::Config;
use dataplane::engine::{Engine, Report};

pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

fn skip(msg: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "\n*** SKIP {msg} ***\n");
}

/// Whether a privileged test can run (root, and the client programs it needs).
pub fn ready(test: &str, programs: &[&str]) -> bool {
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        assert!(
            !in_ci(),
            "{test}: needs root (netns, veth, XDP, AF_XDP); CI=true forbids skipping"
        );
        skip(&format!("{test}: needs root (netns, veth, XDP, AF_XDP)"));
        return false;
    }
    for p in programs {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {p}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            assert!(
                !in_ci(),
                "{test}: `{p}` is missing (scripts/setup installs memcached libmemcached-tools)"
            );
            skip(&format!(
                "{test}: `{p}` is missing (apt-get install memcached libmemcached-tools)"
            ));
            return false;
        }
    }
    true
}

fn run(program: &str, args: &[&str]) -> Result<String, String> {
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

/// A veth pair between two fresh namespaces, removed on drop.
#[derive(Debug)]
pub struct Lab {
    pub prefix: String,
    pub app_ns: String,
    pub peer_ns: String,
    pub app_if: String,
    pub queues: u16,
}

impl Lab {
    /// `scripts/lab up` with a prefix unique to this process and call (`ssK<pid><n>`).
    pub fn up(queues: u16) -> Result<Lab, String> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let prefix = format!(
            "ssK{}{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed) % 10
        );
        let lab = Lab {
            app_ns: format!("{prefix}-app"),
            peer_ns: format!("{prefix}-peer"),
            app_if: format!("{prefix}-a"),
            prefix,
            queues,
        };
        lab.script("down")?;
        lab.script("up")?;
        Ok(lab)
    }

    fn script(&self, cmd: &str) -> Result<String, String> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/lab");
        run(
            script.to_str().unwrap_or("scripts/lab"),
            &[
                "--prefix",
                &self.prefix,
                "--queues",
                &self.queues.to_string(),
                cmd,
            ],
        )
    }

    /// A command in the peer namespace.
    pub fn peer(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.peer_ns, program]);
        c.stdin(Stdio::null());
        c
    }

    /// Runs a client in the peer namespace with a deadline; its output.
    pub fn peer_run(&self, program: &str, args: &[&str], limit: Duration) -> Output {
        let mut child = self
            .peer(program)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{program}: {e}"));
        let deadline = Instant::now() + limit;
        loop {
            if child.try_wait().ok().flatten().is_some() {
                return child.wait_with_output().unwrap();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let out = child.wait_with_output().unwrap();
                panic!(
                    "{program} {} did not finish within {limit:?}:\n{}{}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A UDP socket in the peer namespace (made by a short-lived thread; sockets keep the
    /// namespace they were made in).
    pub fn peer_socket(&self) -> UdpSocket {
        let ns = self.peer_ns.clone();
        std::thread::spawn(move || {
            let _ns = Netns::enter(&ns).expect("entering the peer namespace");
            UdpSocket::bind("0.0.0.0:0").expect("a peer socket")
        })
        .join()
        .expect("peer socket thread")
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
    // SAFETY: setns(2) on an open nsfs descriptor changes only the calling thread's network
    // namespace and touches no memory of ours.
    if unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The calling thread in network namespace `ns` until dropped (threads it starts
/// meanwhile, such as the engine's workers, are born there too).
pub struct Netns {
    home: OwnedFd,
}

impl Netns {
    pub fn enter(ns: &str) -> io::Result<Netns> {
        let home: OwnedFd = File::open("/proc/thread-self/ns/net")?.into();
        setns(&File::open(Path::new("/run/netns").join(ns))?)?;
        Ok(Netns { home })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = setns(&self.home) {
            eprintln!("cannot return to the original network namespace: {e}");
        }
    }
}

/// A kv appliance over AF_XDP on the lab's app end: the engine runs in this process, on
/// workers started from the test's thread while it is in the app namespace. Dropped: the
/// engine is stopped (still in the namespace), then the thread returns.
pub struct Appliance {
    engine: Option<Engine>,
    /// The kv store's name (unique per appliance: tests in one process never share one).
    pub name: String,
    _ns: Netns,
}

/// Worker cores: the last allowed core first (as `slipstream run` picks), then the others.
pub fn cores(n: usize) -> Vec<u32> {
    let mut all: Vec<u32> = dataplane::topology::allowed_cores().into_iter().collect();
    all.reverse();
    (0..n).map(|i| all[i % all.len().max(1)]).collect()
}

impl Appliance {
    /// `kv` on `lab` with one worker per queue (worker i owns queue i and partition i),
    /// plus `extra` kv settings.
    pub fn start(lab: &Lab, extra: &str) -> Appliance {
        Appliance::start_with(lab, "rules = [\"udp 198.18.0.1 11211\"]", extra)
    }

    /// As [`Appliance::start`] with other port settings (`port` holds the `rules` line;
    /// `udp 198.18.0.1`, without a port, also steers the later fragments of IPv4
    /// datagrams, which carry no port).
    pub fn start_with(lab: &Lab, port: &str, extra: &str) -> Appliance {
        kv::register();
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!("lab{}", NEXT.fetch_add(1, Ordering::Relaxed));
        let ns = Netns::enter(&lab.app_ns).expect("entering the app namespace");
        let cores = cores(usize::from(lab.queues));
        let mut text = format!(
            "[engine]\nstats_interval_ms = 0\n\n[[ports]]\nkind = \"afxdp\"\ninterface = \"{}\"\n\
             queues = {}\n{port}\n",
            lab.app_if, lab.queues
        );
        for (i, c) in cores.iter().enumerate() {
            text += &format!("\n[[workers]]\ncore = {c}\nqueues = [\"p0:q{i}\"]\n");
        }
        let owners: Vec<String> = (0..lab.queues).map(|i| i.to_string()).collect();
        text += &format!(
            "\n[[handlers]]\nkind = \"kv\"\nname = \"{name}\"\nworkers = [{}]\n{extra}\n",
            owners.join(", ")
        );
        let cfg: Config = toml::from_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let mut engine = Engine::new(&cfg, Path::new(".")).unwrap_or_else(|e| panic!("{e}"));
        engine.start().unwrap_or_else(|e| panic!("{e}"));
        Appliance {
            engine: Some(engine),
            name,
            _ns: ns,
        }
    }

    pub fn engine(&mut self) -> &mut Engine {
        self.engine.as_mut().expect("running")
    }

    pub fn snapshot(&self) -> Report {
        self.engine.as_ref().expect("running").snapshot()
    }

    /// Stops the engine; the report (accounting checked by the engine: every frame back).
    pub fn stop(mut self) -> Report {
        let e = self.engine.take().expect("running");
        e.stop().unwrap_or_else(|e| panic!("engine stop: {e}"))
    }
}

impl Drop for Appliance {
    fn drop(&mut self) {
        if let Some(e) = self.engine.take() {
            let _ = e.stop();
        }
    }
}

/// A process (memcached) killed on drop.
pub struct Process(pub Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A scratch folder, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(label: &str) -> TempDir {
        let d = std::env::temp_dir().join(format!("kv-lab-{}-{label}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("temp dir");
        TempDir(d)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
