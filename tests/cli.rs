//! The `slipstream` binary as a user meets it: the built-in default run, a clean stop on
//! SIGINT with frame accounting, and configuration errors that exit 2 naming the field.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn slipstream() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_slipstream"));
    c.env("SLIPSTREAM_LOG", "warn");
    c
}

fn config_file(text: &str) -> tempfile_path::TempPath {
    tempfile_path::TempPath::with(text)
}

/// A tiny temp-file helper (std only).
mod tempfile_path {
    use std::path::PathBuf;

    pub struct TempPath(pub PathBuf);

    impl TempPath {
        pub fn with(text: &str) -> TempPath {
            static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
            let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let p = std::env::temp_dir()
                .join(format!("slipstream-cli-{}-{n}.toml", std::process::id()));
            std::fs::write(&p, text).expect("write temp config");
            TempPath(p)
        }
    }

    impl Drop for TempPath {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

#[test]
fn default_run_forwards_and_accounts_for_every_frame() {
    let out = slipstream()
        .args(["run", "--duration", "1"])
        .output()
        .expect("run slipstream");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "exit {:?}\n{stdout}\n{stderr}",
        out.status
    );
    assert!(stderr.contains("built-in default"), "{stderr}");
    assert!(stdout.contains("accounting   ok"), "{stdout}");
    let mpps: f64 = stdout
        .lines()
        .find(|l| l.starts_with("transmitted"))
        .and_then(|l| l.split('(').nth(1))
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .expect("a transmitted rate");
    assert!(mpps > 0.0, "{stdout}");
    assert!(stdout.contains("core"), "pinned worker listed: {stdout}");
}

#[test]
fn sigint_stops_cleanly_with_accounting() {
    let mut child = slipstream()
        .args(["run"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn slipstream");
    std::thread::sleep(Duration::from_millis(700));
    let kill = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(kill.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if child.try_wait().expect("wait").is_some() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "slipstream did not stop on SIGINT"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("accounting   ok"), "{stdout}");
}

fn run_config(text: &str) -> (i32, String) {
    let f = config_file(text);
    let out = slipstream()
        .args(["run", "--config"])
        .arg(&f.0)
        .output()
        .expect("run slipstream");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const GOOD_TAIL: &str =
    "[[ports]]\nkind = \"memory\"\n[[workers]]\ncore = 0\nqueues = [\"p0:q0\"]\n";

#[test]
fn unknown_field_exits_2_naming_it() {
    let (code, err) = run_config(&format!("[engine]\nframesize = 2048\n{GOOD_TAIL}"));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("slipstream-cli-"), "names the file: {err}");
    assert!(err.contains("unknown field `framesize`"), "{err}");
}

#[test]
fn bad_values_exit_2_naming_the_field() {
    let cases = [
        (
            "[engine]\nframe_size = 1000\n".to_string() + GOOD_TAIL,
            "engine.frame_size",
        ),
        (
            "[engine]\nburst = 0\n".to_string() + GOOD_TAIL,
            "engine.burst",
        ),
        (
            GOOD_TAIL.replace("core = 0", "core = 4000"),
            "workers[0].core: core 4000 does not exist or is outside the allowed cpuset",
        ),
        (
            GOOD_TAIL.replace("p0:q0", "p0:q5"),
            "workers[0].queues[0]",
        ),
        (
            GOOD_TAIL.replace("p0:q0", "p3:q0"),
            "workers[0].queues[0]: port p3 does not exist",
        ),
        (
            format!("{GOOD_TAIL}[[workers]]\ncore = 0\n"),
            "workers[1].core: core 0 is already used",
        ),
        (
            format!("{GOOD_TAIL}[[handlers]]\nkind = \"udp-echo\"\nport = 0\n"),
            "handlers[0]",
        ),
        (
            format!("{GOOD_TAIL}[[handlers]]\nkind = \"arp\"\nmac = \"zz\"\naddresses = [\"198.18.0.1\"]\n"),
            "not a MAC address",
        ),
        (
            "[[ports]]\nkind = \"pcap\"\ninput = \"/nonexistent/in.pcap\"\n[[workers]]\ncore = 0\nqueues = [\"p0\"]\n".to_string(),
            "/nonexistent/in.pcap",
        ),
    ];
    for (text, expect) in cases {
        let (code, err) = run_config(&text);
        assert_eq!(code, 2, "config:\n{text}\nstderr: {err}");
        assert!(err.contains(expect), "expected `{expect}` in: {err}");
    }
}

#[test]
fn check_config_prints_defaults() {
    let f = config_file(GOOD_TAIL);
    let out = slipstream()
        .arg("check-config")
        .arg(&f.0)
        .output()
        .expect("run");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("frame_size = 2048"), "{text}");
    assert!(text.contains("burst = 32"), "{text}");
}
