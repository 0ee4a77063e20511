//! Helpers of the privileged tests: the root check (SKIP loudly, or FAIL under `CI=true`),
//! a throw-away lab (scripts/lab with a unique prefix, torn down by a drop guard even when
//! the test panics) and network-namespace switching for the calling thread.
#![allow(dead_code)] // each test binary uses a different subset

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Whether a privileged test can run. Not root: a loud SKIP, or a failure under CI=true.
pub fn privileged(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if in_ci() {
        panic!("{test}: needs root (BPF, netns, veth) and CI=true forbids skipping");
    }
    skip(&format!(
        "{test}: needs root (BPF, netns, veth); run as root or under CI=true"
    ));
    false
}

/// A setup step failed: under CI=true that fails the test, otherwise a loud SKIP.
pub fn setup_failed(test: &str, what: &str) {
    if in_ci() {
        panic!("{test}: setup failed: {what}");
    }
    skip(&format!("{test}: setup failed: {what}"));
}

/// Prints a SKIP line straight to stderr: `eprintln!` would be swallowed by the test
/// harness's output capture, since a skipped test passes.
fn skip(msg: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "\n*** SKIP {msg} ***\n");
}

fn lab_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/lab")
}

/// A veth pair between two fresh namespaces, made by `scripts/lab up` with a prefix unique
/// to this process and test, removed by `scripts/lab down` (and `ip netns del`) on drop.
#[derive(Debug)]
pub struct Lab {
    pub prefix: String,
    pub app_ns: String,
    pub peer_ns: String,
    pub app_if: String,
    pub peer_if: String,
    pub app_mac: String,
    pub peer_mac: String,
}

impl Lab {
    /// Brings a lab up; Err says what failed (the guard has already cleaned up).
    pub fn up() -> Result<Lab, String> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let prefix = format!(
            "sx{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let mut lab = Lab {
            app_ns: format!("{prefix}-app"),
            peer_ns: format!("{prefix}-peer"),
            prefix,
            app_if: String::new(),
            peer_if: String::new(),
            app_mac: String::new(),
            peer_mac: String::new(),
        };
        let out = Command::new(lab_script())
            .args(["--prefix", &lab.prefix, "up"])
            .output()
            .map_err(|e| format!("running scripts/lab: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "scripts/lab up: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            let value = value.to_string();
            match key {
                "APP_NS" => lab.app_ns = value,
                "PEER_NS" => lab.peer_ns = value,
                "APP_IF" => lab.app_if = value,
                "PEER_IF" => lab.peer_if = value,
                "APP_MAC" => lab.app_mac = value,
                "PEER_MAC" => lab.peer_mac = value,
                _ => {}
            }
        }
        if lab.app_if.is_empty() || lab.peer_if.is_empty() {
            return Err(format!(
                "scripts/lab up printed no interface names: {}",
                String::from_utf8_lossy(&out.stdout)
            ));
        }
        Ok(lab)
    }

    /// `ip -n NS link show dev IF` of the app side.
    pub fn app_link(&self) -> String {
        let out = Command::new("ip")
            .args(["-n", &self.app_ns, "link", "show", "dev", &self.app_if])
            .output()
            .expect("ip link show");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs `ping` from the peer namespace; true when every reply came back.
    pub fn ping_from_peer(&self, dst: &str, count: u32) -> bool {
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.peer_ns,
                "ping",
                "-q",
                "-c",
                &count.to_string(),
                "-i",
                "0.2",
                "-W",
                "2",
                dst,
            ])
            .output()
            .is_ok_and(|o| o.status.success())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = Command::new(lab_script())
            .args(["--prefix", &self.prefix, "down"])
            .output();
        for ns in [&self.app_ns, &self.peer_ns] {
            if PathBuf::from("/run/netns").join(ns).exists() {
                let _ = Command::new("ip").args(["netns", "del", ns]).output();
            }
        }
    }
}

/// Moves the calling thread into network namespace `ns` (a name under /run/netns) and
/// back into the namespace it came from on drop.
pub struct Netns {
    home: OwnedFd,
}

fn setns(fd: &impl AsRawFd) -> std::io::Result<()> {
    // SAFETY: plain syscall on an open nsfs fd; it changes only this thread's namespace.
    if unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

impl Netns {
    pub fn enter(ns: &str) -> std::io::Result<Netns> {
        let home: OwnedFd = File::open("/proc/thread-self/ns/net")?.into();
        let target = File::open(PathBuf::from("/run/netns").join(ns))?;
        setns(&target)?;
        Ok(Netns { home })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        setns(&self.home).expect("returning to the original network namespace");
    }
}

/// Runs `f` on a new thread inside network namespace `ns` (sockets it makes live there).
pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            let _ns = Netns::enter(ns).expect("entering the network namespace");
            f()
        })
        .join()
        .expect("thread in the network namespace panicked")
    })
}
