//! The golden replay cases under `tests/replay/`, run through the real engine on pcap ports.
//!
//! Also checks the harness itself: an altered expected file must fail with a field-level
//! message, and the committed inputs must be exactly what the generator writes today.

use std::path::{Path, PathBuf};

use dataplane::replay::{self, cases};

fn cases_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/replay")
}

/// A scratch folder, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(label: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!(
            "slipstream-replay-test-{}-{label}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Copies the files of case `name` into a scratch folder.
fn copy_case(name: &str) -> (Scratch, PathBuf) {
    let scratch = Scratch::new(name);
    let dir = scratch.0.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    for e in std::fs::read_dir(cases_root().join(name)).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dir.join(e.file_name())).unwrap();
    }
    (scratch, dir)
}

#[test]
fn every_golden_case_passes() {
    let dirs = replay::discover(&cases_root()).unwrap();
    assert!(
        dirs.len() >= 12,
        "expected at least 12 cases, found {}",
        dirs.len()
    );
    let mut failures = Vec::new();
    for dir in &dirs {
        let name = replay::case_name(dir);
        match replay::check(dir, replay::DEFAULT_TIMEOUT) {
            Ok(o) if o.passed() => {}
            Ok(o) => failures.push(format!("{name}:\n    {}", o.problems.join("\n    "))),
            Err(e) => failures.push(format!("{name}: {e}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} replay cases failed (regenerate with `slipstream replay --regen tests/replay` only after checking the change is intended):\n{}",
        failures.len(),
        dirs.len(),
        failures.join("\n")
    );
}

/// Byte offset of frame byte `at` of packet 0 in a pcap file (24-byte file header, 16-byte
/// record header).
fn first_packet_byte(at: usize) -> usize {
    24 + 16 + at
}

#[test]
fn an_altered_expected_ttl_fails_with_a_field_level_diff() {
    let (_scratch, dir) = copy_case("udp-echo-v4");
    let out = dir.join("out-p0.pcap");
    let mut bytes = std::fs::read(&out).unwrap();
    // IPv4 TTL: frame byte 14 + 8.
    let ttl = first_packet_byte(22);
    bytes[ttl] -= 1;
    let altered = bytes[ttl];
    std::fs::write(&out, &bytes).unwrap();
    let o = replay::check(&dir, replay::DEFAULT_TIMEOUT).unwrap();
    assert!(!o.passed());
    let want = format!(
        "out-p0 packet 0: ipv4.ttl expected {altered}, got {}",
        altered + 1
    );
    assert!(
        o.problems.iter().any(|p| p == &want),
        "wanted `{want}` in {:?}",
        o.problems
    );
}

#[test]
fn missing_packets_and_wrong_counters_are_named() {
    let (_scratch, dir) = copy_case("udp-echo-v4");
    // Expect one packet more than the run sends, by appending a copy of the first record.
    let out = dir.join("out-p0.pcap");
    let mut bytes = std::fs::read(&out).unwrap();
    let caplen = u32::from_le_bytes(bytes[32..36].try_into().unwrap()) as usize;
    let record = bytes[24..24 + 16 + caplen].to_vec();
    bytes.extend_from_slice(&record);
    std::fs::write(&out, &bytes).unwrap();
    // And one unhandled drop more than there is.
    let counters = dir.join("counters.toml");
    let text = std::fs::read_to_string(&counters).unwrap();
    let text = text.replace("unhandled = 1", "unhandled = 2");
    std::fs::write(&counters, text).unwrap();
    let o = replay::check(&dir, replay::DEFAULT_TIMEOUT).unwrap();
    assert!(
        o.problems
            .iter()
            .any(|p| p.starts_with("out-p0: expected 5 packets, got 4")),
        "{:?}",
        o.problems
    );
    assert!(
        o.problems
            .iter()
            .any(|p| p == "drops.unhandled expected 2, got 1"),
        "{:?}",
        o.problems
    );
}

#[test]
fn committed_inputs_are_what_the_generator_writes() {
    let root = cases_root();
    let generated = cases::all();
    for case in &generated {
        for (file, bytes) in case.files() {
            let path = root.join(case.name).join(&file);
            let committed =
                std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert!(
                committed == bytes,
                "{} differs from what dataplane::replay::cases generates; run `slipstream replay --generate-cases tests/replay`, then `--regen` and inspect",
                path.display()
            );
        }
    }
    // Every committed case comes from the generator.
    for dir in replay::discover(&root).unwrap() {
        let name = replay::case_name(&dir);
        assert!(
            generated.iter().any(|c| c.name == name),
            "tests/replay/{name} is not produced by dataplane::replay::cases"
        );
    }
}
