//! Running cases: check, regenerate, ad hoc.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::counters::Counters;
use super::diff::diff_captures;
use super::ReplayError;
use crate::config::{Config, PortConfig};
use crate::engine::{Engine, EngineError, Report};
use crate::packet::PortId;
use crate::port::pcap::read_capture;

/// Longest one case may run before it fails. Cases hold a few dozen packets and finish in
/// milliseconds; the margin is for a loaded 2-core CI machine.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// The result of running one case (or one ad-hoc capture).
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The case's folder name.
    pub case: String,
    /// Every mismatch and accounting problem, in the order found; empty: the case passed.
    pub problems: Vec<String>,
    /// The counters the run produced.
    pub counters: Counters,
}

impl Outcome {
    /// True when nothing differed.
    pub fn passed(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Counters of a finished run.
pub fn counters_of(report: &Report) -> Counters {
    let ports: Vec<(PortId, _)> = report.ports.iter().map(|p| (p.id, p.stats)).collect();
    Counters::from_parts(&ports, &report.drops(), report.slow_path())
}

/// A folder under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(label: &str) -> Result<TempDir, ReplayError> {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let safe: String = label
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let dir = std::env::temp_dir().join(format!(
            "slipstream-replay-{}-{n}-{safe}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| ReplayError::io(&dir, e))?;
        Ok(TempDir(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// An output of a case: where the run writes it and where the expected file is.
struct OutputFile {
    /// `out-p0` (file stem), for messages.
    label: String,
    expected: PathBuf,
    actual: PathBuf,
}

/// The case name: the folder's last component.
pub fn case_name(dir: &Path) -> String {
    dir.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| dir.display().to_string())
}

/// Loads the case's config and points every pcap output into `tmp`.
fn prepare(dir: &Path, tmp: &Path) -> Result<(Config, Vec<OutputFile>), ReplayError> {
    let path = dir.join("config.toml");
    let mut cfg = Config::load(&path)?;
    let mut outputs = Vec::new();
    for (i, p) in cfg.ports.iter_mut().enumerate() {
        let PortConfig::Pcap(pc) = p else { continue };
        let Some(rel) = pc.output.clone() else {
            continue;
        };
        if rel.is_absolute()
            || rel
                .components()
                .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            return Err(ReplayError::Case(format!(
                "{}: ports[{i}].output `{}` must be a path inside the case folder",
                path.display(),
                rel.display()
            )));
        }
        let actual = tmp.join(&rel);
        if let Some(parent) = actual.parent() {
            std::fs::create_dir_all(parent).map_err(|e| ReplayError::io(parent, e))?;
        }
        outputs.push(OutputFile {
            label: rel
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| format!("p{i}")),
            expected: dir.join(&rel),
            actual: actual.clone(),
        });
        pc.output = Some(actual);
    }
    Ok((cfg, outputs))
}

/// Runs the engine to the end of its inputs. An accounting failure at stop still yields
/// the report, with the problems.
fn run_engine(
    cfg: &Config,
    base_dir: &Path,
    timeout: Duration,
) -> Result<(Report, Vec<String>), ReplayError> {
    let engine = Engine::new(cfg, base_dir)?;
    match engine.run_to_end(timeout) {
        Ok(report) => {
            let problems = report
                .check_conservation()
                .err()
                .map(|e| format!("conservation: {e}"))
                .into_iter()
                .collect();
            Ok((report, problems))
        }
        Err(EngineError::Accounting { problems, report }) => Ok((
            *report,
            problems
                .into_iter()
                .map(|p| format!("accounting: {p}"))
                .collect(),
        )),
        Err(e) => Err(e.into()),
    }
}

/// Runs the case in `dir` and compares outputs and counters with the expected files.
pub fn check(dir: &Path, timeout: Duration) -> Result<Outcome, ReplayError> {
    let case = case_name(dir);
    let tmp = TempDir::new(&case)?;
    let (cfg, outputs) = prepare(dir, &tmp.0)?;
    let (report, mut problems) = run_engine(&cfg, dir, timeout)?;
    let counters = counters_of(&report);
    let mut found = Vec::new();
    for o in &outputs {
        let expected = match read_capture(&o.expected) {
            Ok(p) => p,
            Err(e) => {
                found.push(format!(
                    "{}: {e} (write the expected files with `slipstream replay --regen`)",
                    o.expected.display()
                ));
                continue;
            }
        };
        let actual = read_capture(&o.actual)
            .map_err(|e| ReplayError::Case(format!("{}: {e}", o.actual.display())))?;
        let diffs = diff_captures(&o.label, &expected, &actual);
        if diffs.is_empty() {
            // Same packets and timestamps; the files must then be the same bytes too.
            let a = std::fs::read(&o.expected).map_err(|e| ReplayError::io(&o.expected, e))?;
            let b = std::fs::read(&o.actual).map_err(|e| ReplayError::io(&o.actual, e))?;
            if a != b {
                found.push(format!(
                    "{}: same packets, but the files differ (capture header or record format)",
                    o.label
                ));
            }
        }
        found.extend(diffs);
    }
    let counters_path = dir.join("counters.toml");
    match std::fs::read_to_string(&counters_path) {
        Ok(text) => {
            let expected = Counters::parse(&text, &counters_path).map_err(ReplayError::Case)?;
            found.extend(Counters::diff(&expected, &counters));
        }
        Err(e) => found.push(format!(
            "{}: {e} (write it with `slipstream replay --regen`)",
            counters_path.display()
        )),
    }
    found.append(&mut problems);
    Ok(Outcome {
        case,
        problems: found,
        counters,
    })
}

/// Runs the case in `dir` and rewrites its expected outputs and `counters.toml` from the
/// run. Accounting problems are returned (and the files are still written, so that they can
/// be inspected).
pub fn regen(dir: &Path, timeout: Duration) -> Result<Outcome, ReplayError> {
    let case = case_name(dir);
    let tmp = TempDir::new(&case)?;
    let (cfg, outputs) = prepare(dir, &tmp.0)?;
    let (report, problems) = run_engine(&cfg, dir, timeout)?;
    let counters = counters_of(&report);
    for o in &outputs {
        std::fs::copy(&o.actual, &o.expected).map_err(|e| ReplayError::io(&o.expected, e))?;
    }
    let counters_path = dir.join("counters.toml");
    std::fs::write(&counters_path, counters.to_toml(&case))
        .map_err(|e| ReplayError::io(&counters_path, e))?;
    Ok(Outcome {
        case,
        problems,
        counters,
    })
}

/// Runs any capture through a config without expectations: `inputs` replace the inputs of
/// the named pcap ports, and every pcap port writes `out_dir/out-<port>.pcap`. Relative
/// paths in the config are resolved against the config file's folder.
pub fn adhoc(
    config: &Path,
    inputs: &[(PortId, PathBuf)],
    out_dir: &Path,
    timeout: Duration,
) -> Result<Outcome, ReplayError> {
    let mut cfg = Config::load(config)?;
    let base_dir = config.parent().map(Path::to_path_buf).unwrap_or_default();
    std::fs::create_dir_all(out_dir).map_err(|e| ReplayError::io(out_dir, e))?;
    let cwd = std::env::current_dir().map_err(|e| ReplayError::io(Path::new("."), e))?;
    for (port, path) in inputs {
        let n = cfg.ports.len();
        match cfg.ports.get_mut(port.0 as usize) {
            Some(PortConfig::Pcap(pc)) => pc.input = Some(cwd.join(path)),
            Some(_) => {
                return Err(ReplayError::Case(format!(
                    "--in {port}={}: {port} is not a pcap port in {}",
                    path.display(),
                    config.display()
                )))
            }
            None => {
                return Err(ReplayError::Case(format!(
                    "--in {port}={}: {} has {n} ports",
                    path.display(),
                    config.display()
                )))
            }
        }
    }
    for (i, p) in cfg.ports.iter_mut().enumerate() {
        if let PortConfig::Pcap(pc) = p {
            pc.output = Some(cwd.join(out_dir).join(format!("out-p{i}.pcap")));
        }
    }
    let (report, problems) = run_engine(&cfg, &base_dir, timeout)?;
    Ok(Outcome {
        case: config.display().to_string(),
        problems,
        counters: counters_of(&report),
    })
}

/// The case folders under `root` (those holding a `config.toml`), sorted by name.
pub fn discover(root: &Path) -> Result<Vec<PathBuf>, ReplayError> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(root).map_err(|e| ReplayError::io(root, e))? {
        let entry = entry.map_err(|e| ReplayError::io(root, e))?;
        let path = entry.path();
        if path.join("config.toml").is_file() {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}
