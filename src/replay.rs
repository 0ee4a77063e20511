//! `slipstream replay`: runs golden replay cases, regenerates them, or replays any capture.
//!
//! The work is in `dataplane::replay`; this module parses arguments, prints one line per case
//! and maps the outcome to an exit code (0: everything passed; 1: a case failed or could not
//! run).

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use anyhow::Context as _;
use dataplane::replay::{self, cases, Outcome};
use dataplane::PortId;

/// Most problems printed per failing case; the rest are counted.
const MAX_PROBLEMS_SHOWN: usize = 10;

/// `--in PORT=FILE`.
#[derive(Debug, Clone)]
pub struct InputArg {
    pub port: PortId,
    pub path: PathBuf,
}

impl FromStr for InputArg {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (port, path) = s
            .split_once('=')
            .ok_or_else(|| format!("`{s}`: expected PORT=FILE, for example p0=capture.pcap"))?;
        Ok(InputArg {
            port: port.parse().map_err(|e| format!("`{s}`: {e}"))?,
            path: PathBuf::from(path),
        })
    }
}

/// Arguments of `slipstream replay`.
#[derive(Debug, Clone, clap::Args)]
pub struct ReplayArgs {
    /// Case folders to run (each holds config.toml, in-*.pcap, out-*.pcap and counters.toml).
    /// A folder without a config.toml runs every case folder inside it.
    #[arg(value_name = "CASE_DIR", required_unless_present_any = ["config", "generate_cases"])]
    pub cases: Vec<PathBuf>,

    /// Rewrite each case's expected out-*.pcap and counters.toml from this run (inspect
    /// them before committing).
    #[arg(long, conflicts_with = "config")]
    pub regen: bool,

    /// Ad hoc: the config to run a capture through, without expectations.
    #[arg(
        long,
        value_name = "FILE",
        requires = "out_dir",
        conflicts_with = "cases"
    )]
    pub config: Option<PathBuf>,

    /// Ad hoc: replace the input of pcap port PORT with FILE (pcap or pcapng); repeatable.
    #[arg(long = "in", value_name = "PORT=FILE", requires = "config")]
    pub inputs: Vec<InputArg>,

    /// Ad hoc: folder for the outputs, one out-<port>.pcap per pcap port.
    #[arg(long, value_name = "DIR", requires = "config")]
    pub out_dir: Option<PathBuf>,

    /// Longest a case may run, in seconds. Default: 60 (`dataplane::replay::DEFAULT_TIMEOUT`:
    /// cases take milliseconds; the margin is for a loaded CI machine).
    #[arg(long, value_name = "SECS", default_value_t = replay::DEFAULT_TIMEOUT.as_secs())]
    pub timeout: u64,

    /// Write every built-in case's config.toml and input captures under DIR (then run
    /// `--regen` on them).
    #[arg(long, value_name = "DIR", hide = true, conflicts_with_all = ["config", "regen"])]
    pub generate_cases: Option<PathBuf>,
}

/// Runs `slipstream replay`; returns the process exit code.
pub fn main(args: ReplayArgs) -> anyhow::Result<u8> {
    let timeout = Duration::from_secs(args.timeout.max(1));
    if let Some(dir) = &args.generate_cases {
        gen_cases(dir)?;
        if args.cases.is_empty() {
            return Ok(0);
        }
    }
    if let Some(config) = &args.config {
        let out_dir = args
            .out_dir
            .as_deref()
            .context("--config needs --out-dir")?;
        return adhoc(config, &args.inputs, out_dir, timeout);
    }
    let dirs = expand(&args.cases)?;
    let (mut passed, mut failed) = (0, 0);
    for dir in &dirs {
        let name = replay::case_name(dir);
        let result = if args.regen {
            replay::regen(dir, timeout)
        } else {
            replay::check(dir, timeout)
        };
        match result {
            Ok(o) if o.passed() => {
                passed += 1;
                if args.regen {
                    println!("regen {name}: {}", o.counters.summary());
                } else {
                    println!("ok   {name}");
                }
            }
            Ok(o) => {
                failed += 1;
                print_failure(&name, &o);
            }
            Err(e) => {
                failed += 1;
                println!("FAIL {name}: {e}");
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    Ok(if failed == 0 { 0 } else { 1 })
}

/// Writes every built-in case's config and inputs under `dir` (for a `gen-cases`
/// subcommand, or `replay --generate-cases`).
pub fn gen_cases(dir: &Path) -> anyhow::Result<u8> {
    let written =
        cases::generate(dir).with_context(|| format!("writing cases under {}", dir.display()))?;
    for d in &written {
        println!("generated {}", d.display());
    }
    Ok(0)
}

fn print_failure(name: &str, o: &Outcome) {
    let mut lines = o.problems.iter();
    if let Some(first) = lines.next() {
        println!("FAIL {name}: {first}");
    }
    for p in lines.by_ref().take(MAX_PROBLEMS_SHOWN - 1) {
        println!("     {name}: {p}");
    }
    let rest = o.problems.len().saturating_sub(MAX_PROBLEMS_SHOWN);
    if rest > 0 {
        println!("     {name}: ... and {rest} more");
    }
}

/// Case folders: each argument that holds a config.toml, or the case folders inside it.
fn expand(args: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for a in args {
        if a.join("config.toml").is_file() {
            out.push(a.clone());
        } else {
            let found = replay::discover(a)?;
            anyhow::ensure!(
                !found.is_empty(),
                "{}: neither a case folder (no config.toml) nor a folder of cases",
                a.display()
            );
            out.extend(found);
        }
    }
    Ok(out)
}

fn adhoc(
    config: &Path,
    inputs: &[InputArg],
    out_dir: &Path,
    timeout: Duration,
) -> anyhow::Result<u8> {
    let inputs: Vec<(PortId, PathBuf)> = inputs.iter().map(|i| (i.port, i.path.clone())).collect();
    let o = replay::adhoc(config, &inputs, out_dir, timeout)?;
    println!(
        "# Counters of {} ({})",
        config.display(),
        o.counters.summary()
    );
    print!("{}", o.counters.body());
    for p in &o.problems {
        eprintln!("problem: {p}");
    }
    Ok(if o.passed() { 0 } else { 1 })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: ReplayArgs,
    }

    #[test]
    fn parses_the_three_modes() {
        let c = Cli::try_parse_from(["x", "tests/replay/arp", "tests/replay/mixed"]).unwrap();
        assert_eq!(c.args.cases.len(), 2);
        assert!(!c.args.regen);
        let c = Cli::try_parse_from(["x", "--regen", "tests/replay"]).unwrap();
        assert!(c.args.regen);
        let c = Cli::try_parse_from([
            "x",
            "--config",
            "c.toml",
            "--in",
            "p0=a.pcap",
            "--in",
            "p1=b.pcapng",
            "--out-dir",
            "o",
        ])
        .unwrap();
        assert_eq!(c.args.inputs.len(), 2);
        assert_eq!(c.args.inputs[1].port, PortId(1));
        assert!(Cli::try_parse_from(["x", "--config", "c.toml"]).is_err());
        assert!(Cli::try_parse_from([
            "x",
            "--config",
            "c.toml",
            "--in",
            "a.pcap",
            "--out-dir",
            "o"
        ])
        .is_err());
        assert!(Cli::try_parse_from(["x"]).is_err());
        assert!(Cli::try_parse_from(["x", "--generate-cases", "d"]).is_ok());
    }
}
