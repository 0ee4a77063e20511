//! The appliance's configuration: one TOML file, every field documented with its default.
//!
//! The same types serve the config file and (later) the control-plane API. Parsing is strict
//! (`deny_unknown_fields`): a typo is an error naming the field, never a silently ignored
//! setting. [`Config::validate`] then checks what serde cannot: references between sections
//! (a worker's queue must exist), ranges, and that cores exist and are allowed.
//!
//! The file's `[dpdk]` section (the DPDK environment, see [`DpdkConfig`]) is carried in
//! [`EngineConfig::dpdk`], so that port builders, which see the engine settings but not the
//! whole file, can initialise the EAL from it; in the file it stays a top-level section.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::handlers::Spec as HandlerSpec;
use crate::packet::QueueId;

/// Errors loading or validating a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {msg}")]
    Parse { path: PathBuf, msg: String },
    #[error("{path}: {field}: {msg}")]
    Invalid {
        path: PathBuf,
        field: String,
        msg: String,
    },
}

/// Whole configuration. (De)serialized through [`ConfigFile`], the file's shape.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(from = "ConfigFile", into = "ConfigFile")]
pub struct Config {
    /// Engine-wide settings. Default: see [`EngineConfig`].
    #[serde(default)]
    pub engine: EngineConfig,
    /// Ports, in order: the first is `p0`, the next `p1`, and so on. Required: at least one.
    pub ports: Vec<PortConfig>,
    /// Workers, one pinned thread each. Default: none, which is an error.
    #[serde(default)]
    pub workers: Vec<WorkerConfig>,
    /// The handler chain every worker runs, in order. Default: empty (everything is
    /// dropped as `unhandled`).
    #[serde(default)]
    pub handlers: Vec<HandlerSpec>,
    /// The control plane `ctl` talks to. Default: see [`ControlConfig`].
    #[serde(default)]
    pub control: ControlConfig,
}

/// The configuration file as written: [`Config`] plus the top-level `[dpdk]` section, which
/// [`Config`] keeps in `engine.dpdk`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    #[serde(default)]
    pub engine: EngineConfig,
    pub ports: Vec<PortConfig>,
    #[serde(default)]
    pub workers: Vec<WorkerConfig>,
    #[serde(default)]
    pub handlers: Vec<HandlerSpec>,
    #[serde(default)]
    pub control: ControlConfig,
    /// The DPDK environment. Default: see [`DpdkConfig`]. Printed (by `check-config`) when
    /// the config has a DPDK port or sets something here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dpdk: Option<DpdkConfig>,
}

impl From<ConfigFile> for Config {
    fn from(f: ConfigFile) -> Config {
        let mut engine = f.engine;
        engine.dpdk = f.dpdk.unwrap_or_default();
        Config {
            engine,
            ports: f.ports,
            workers: f.workers,
            handlers: f.handlers,
            control: f.control,
        }
    }
}

impl From<Config> for ConfigFile {
    fn from(c: Config) -> ConfigFile {
        let mut engine = c.engine;
        let dpdk = std::mem::take(&mut engine.dpdk);
        let show = dpdk != DpdkConfig::default()
            || c.ports.iter().any(|p| matches!(p, PortConfig::Dpdk(_)));
        ConfigFile {
            engine,
            ports: c.ports,
            workers: c.workers,
            handlers: c.handlers,
            control: c.control,
            dpdk: show.then_some(dpdk),
        }
    }
}

/// Why a `kind = "dpdk"` port is refused by a build without the `dpdk` cargo feature.
pub const DPDK_FEATURE_MISSING: &str = "`dpdk` ports need slipstream built with the `dpdk` \
    cargo feature: rebuild with `cargo build --release --features dpdk` (needs DPDK >= 22.11: \
    apt-get install libdpdk-dev dpdk, which scripts/setup does)";

/// The default control socket: `/run` is where the FHS puts runtime sockets.
pub const DEFAULT_CTL_SOCKET: &str = "/run/slipstream/ctl.sock";

/// `[control]`: the gRPC control plane (`slipstream.v1`) served inside `slipstream run`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ControlConfig {
    /// Serve the control plane. Default: true.
    pub enabled: bool,
    /// Unix socket, created owner-only (0600). Default: `/run/slipstream/ctl.sock`.
    pub socket: PathBuf,
    /// Also listen on TCP at this address (`HOST:PORT`), with mutual TLS only: requires
    /// `tls_cert`, `tls_key` and `tls_ca`. Default: none (Unix socket only).
    pub tcp: Option<std::net::SocketAddr>,
    /// PEM certificate chain the TCP listener presents, relative to this file. Default: none.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`, relative to this file. Default: none.
    pub tls_key: Option<PathBuf>,
    /// PEM CA certificate(s) that client certificates must be signed by, relative to this
    /// file. Default: none.
    pub tls_ca: Option<PathBuf>,
}

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig {
            enabled: true,
            socket: PathBuf::from(DEFAULT_CTL_SOCKET),
            tcp: None,
            tls_cert: None,
            tls_key: None,
            tls_ca: None,
        }
    }
}

impl ControlConfig {
    /// The TLS file paths resolved against `base` (the config file's folder).
    pub fn resolve(&mut self, base: &Path) {
        for p in [&mut self.tls_cert, &mut self.tls_key, &mut self.tls_ca]
            .into_iter()
            .flatten()
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
    }
}

/// How packets move between cores.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// The core that receives a packet handles and transmits it (default).
    #[default]
    RunToCompletion,
    /// Receiving cores spread packets over all workers by flow hash; responses go back to
    /// the worker that owns the transmit queue.
    Pipeline,
}

/// What a worker does when a poll finds no work.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Idle {
    /// Spin (lowest latency, one core at 100%). Default, as in DPDK.
    #[default]
    BusyPoll,
    /// Spin briefly, then yield, then sleep with exponential back-off up to
    /// `engine.backoff_max_us` (for shared machines).
    Backoff,
}

/// Engine-wide settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EngineConfig {
    /// Run-to-completion or pipeline. Default: `run-to-completion`.
    pub mode: Mode,
    /// Most frames per receive/transmit call. Default: 32 (DPDK's customary burst).
    pub burst: usize,
    /// Bytes per frame, a power of two from 512 to 32768. Default: 2048 (fits a 1500-byte
    /// MTU frame plus headroom, as AF_XDP's default chunk size).
    pub frame_size: u32,
    /// Capacity of each worker's inbound ring, in frames. Default: 1024.
    pub ring_size: usize,
    /// Idle policy. Default: `busy-poll`.
    pub idle: Idle,
    /// Longest back-off sleep in microseconds with `idle = "backoff"`. Default: 200.
    pub backoff_max_us: u64,
    /// Interval of the stats line printed by `slipstream run`, in milliseconds; 0 turns it
    /// off. Default: 1000.
    pub stats_interval_ms: u64,
    /// Try 2 MiB hugepages for frame memory (falls back to 4k pages with a warning).
    /// Default: true.
    pub hugepages: bool,
    /// The file's `[dpdk]` section (not written under `[engine]`). Default: see
    /// [`DpdkConfig`].
    #[serde(skip)]
    pub dpdk: DpdkConfig,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            mode: Mode::RunToCompletion,
            burst: 32,
            frame_size: 2048,
            ring_size: 1024,
            idle: Idle::BusyPoll,
            backoff_max_us: 200,
            stats_interval_ms: 1000,
            hugepages: true,
            dpdk: DpdkConfig::default(),
        }
    }
}

/// `[dpdk]`: the DPDK environment (EAL), used when a port has `kind = "dpdk"`.
///
/// DPDK allows one EAL per process: the first engine with a DPDK port initialises it from
/// its config, and later engines in the same process share it (a different `[dpdk]`
/// section of theirs is then ignored, with one log line). Hugepages follow
/// `engine.hugepages`: when true, the EAL uses 2 MiB hugepages if enough are free for the
/// mempools, and otherwise runs with `--no-huge` after one warning.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DpdkConfig {
    /// `--file-prefix`, the name of DPDK's runtime state. Default: none, which uses
    /// `slipstream-<pid>`, unique per process, so two instances never share state.
    pub file_prefix: Option<String>,
    /// Keep no runtime files (and so no multi-process support): `--in-memory` with
    /// hugepages, `--no-shconf` without (DPDK refuses `--in-memory` with `--no-huge`).
    /// Default: true.
    pub in_memory: bool,
    /// Scan the PCI bus; false passes `--no-pci` (virtual devices only). Default: false.
    pub pci: bool,
    /// `-l`: the EAL's main lcore. The EAL pins the thread that initialises it to this core;
    /// slipstream gives that thread its previous affinity back afterwards, and each worker
    /// registers itself as an lcore of its own (for the mempool caches). Default: none,
    /// which uses the first core of the allowed cpuset.
    pub main_core: Option<u32>,
    /// `-m` with `--no-huge`: MiB of ordinary memory for the EAL's heap. Default: 512
    /// (the default mempool takes about 40).
    pub memory_mb: u32,
    /// mbufs in each mempool (one mempool per NUMA socket in use, shared by the ports on
    /// it). Default: 16383 (2^14 - 1: a mempool's ring holds a power of two minus one).
    pub mbufs: u32,
    /// mbufs each lcore keeps in its mempool cache, at most 512. Default: 256.
    pub mbuf_cache: u32,
    /// `--log-level` of DPDK's own log (to stderr). Default: `notice`.
    pub log_level: String,
    /// Keep DPDK's telemetry socket; false passes `--no-telemetry`. Default: false.
    pub telemetry: bool,
    /// More EAL arguments, passed after slipstream's (for example `["-a",
    /// "0000:01:00.0"]` with `pci = true`). Default: none.
    pub args: Vec<String>,
}

impl Default for DpdkConfig {
    fn default() -> Self {
        DpdkConfig {
            file_prefix: None,
            in_memory: true,
            pci: false,
            main_core: None,
            memory_mb: 512,
            mbufs: 16383,
            mbuf_cache: 256,
            log_level: "notice".into(),
            telemetry: false,
            args: Vec::new(),
        }
    }
}

/// One port. `kind` selects the backend.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum PortConfig {
    /// In-process rings or a traffic generator.
    Memory(MemoryPortConfig),
    /// Reads a capture file, writes one.
    Pcap(PcapPortConfig),
    /// AF_XDP sockets on a network interface, one per queue, steered by our XDP program.
    Afxdp(AfxdpPortConfig),
    /// A DPDK ethdev (a NIC or a virtual device), with mbuf-backed frames. Needs slipstream
    /// built with the `dpdk` cargo feature; the EAL is set up from `[dpdk]`.
    Dpdk(DpdkPortConfig),
}

impl PortConfig {
    /// Number of queues.
    pub fn queues(&self) -> u16 {
        match self {
            PortConfig::Memory(m) => m.queues,
            PortConfig::Pcap(_) => 1,
            PortConfig::Afxdp(a) => a.queues,
            PortConfig::Dpdk(d) => d.queues,
        }
    }
}

/// `kind = "dpdk"`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DpdkPortConfig {
    /// The device, in DPDK's device-argument syntax. A virtual device with its options is
    /// hot-plugged when the port is built and removed when it closes: `net_null0`,
    /// `net_ring0`, `net_pcap0,rx_pcap=in.pcap,tx_pcap=out.pcap`,
    /// `net_af_packet0,iface=eth1`, `net_af_xdp0,iface=eth1`. Anything else names a device
    /// the EAL probed at start-up (a PCI address such as `0000:01:00.0`, with `dpdk.pci =
    /// true`). Relative `rx_pcap=`/`tx_pcap=` paths are taken relative to the config file.
    /// Device names are unique per process. Required.
    pub device: String,
    /// Queue pairs (RX queue i and TX queue i form queue `pN:qi`). Default: 1.
    #[serde(default = "one")]
    pub queues: u16,
    /// RX descriptors per queue. Default: 1024 (testpmd's default).
    #[serde(default = "dpdk_desc")]
    pub rx_desc: u16,
    /// TX descriptors per queue. Default: 1024 (testpmd's default).
    #[serde(default = "dpdk_desc")]
    pub tx_desc: u16,
    /// NUMA socket of the port's mempool. Default: none, which uses the device's socket,
    /// or the main lcore's for devices without one (virtual devices).
    #[serde(default)]
    pub socket: Option<u32>,
    /// Promiscuous mode. Default: true (an appliance takes every frame it is given).
    #[serde(default = "yes")]
    pub promiscuous: bool,
}

fn dpdk_desc() -> u16 {
    1024
}
fn yes() -> bool {
    true
}

/// Where generated packets are sent from the memory port.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum MemorySource {
    /// Packets injected by the embedding program (tests). Default.
    #[default]
    Ring,
    /// Generated UDP requests (see `packet_size`, `flows`, `count`).
    Generate,
}

/// What the memory port does with transmitted packets.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum MemorySink {
    /// Keep them for the embedding program to read. Default.
    #[default]
    Ring,
    /// Free them at once (benchmarks).
    Discard,
}

/// `kind = "memory"`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MemoryPortConfig {
    /// Queues. Default: 1.
    pub queues: u16,
    /// Frames in the port's pool. Default: 4096.
    pub frames: u32,
    /// NUMA node for the frame memory. Default: none (first touch).
    pub numa_node: Option<u32>,
    /// Where received packets come from. Default: `ring`.
    pub source: MemorySource,
    /// What happens to transmitted packets. Default: `ring`.
    pub sink: MemorySink,
    /// Generator: Ethernet frame size of the generated UDP requests, 60 to 1514 bytes.
    /// Default: 64 (the RFC 2544 minimum, 60 without FCS... we generate 64 bytes on the
    /// wire model: 60 + padding-free payload).
    pub packet_size: usize,
    /// Generator: number of distinct flows (source ports). Default: 64.
    pub flows: u16,
    /// Generator: packets per queue before the input ends; 0 = unlimited. Default: 0.
    pub count: u64,
    /// Generator: UDP destination port. Default: 7 (echo).
    pub dst_port: u16,
}

impl Default for MemoryPortConfig {
    fn default() -> Self {
        MemoryPortConfig {
            queues: 1,
            frames: 4096,
            numa_node: None,
            source: MemorySource::Ring,
            sink: MemorySink::Ring,
            packet_size: 64,
            flows: 64,
            count: 0,
            dst_port: 7,
        }
    }
}

/// `kind = "pcap"`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct PcapPortConfig {
    /// Capture to read (pcap or pcapng), relative to the config file. Default: none (the
    /// port receives nothing).
    pub input: Option<PathBuf>,
    /// Capture to write (pcap), relative to the config file. Default: none (transmitted
    /// packets are counted and freed).
    pub output: Option<PathBuf>,
    /// Frames in the port's pool. Default: 4096.
    pub frames: Option<u32>,
    /// NUMA node for the frame memory. Default: none.
    pub numa_node: Option<u32>,
}

/// XDP attach mode for the steering program.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum XdpMode {
    /// Native (driver) mode, falling back to generic (skb) mode when refused. Default.
    #[default]
    Auto,
    Native,
    Generic,
}

/// Whether AF_XDP sockets bind in zero-copy mode.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ZeroCopy {
    /// Try zero-copy, use copy mode when the driver refuses (veth does). Default.
    #[default]
    Auto,
    /// Zero-copy or fail.
    On,
    /// Copy mode.
    Off,
}

/// `kind = "afxdp"`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AfxdpPortConfig {
    /// Network interface to bind. Required.
    pub interface: String,
    /// Queues (one AF_XDP socket each, queue ids 0..queues). Default: 1.
    #[serde(default = "one")]
    pub queues: u16,
    /// UMEM frames for the whole port (shared by its sockets). Default: 8192.
    #[serde(default = "afxdp_frames")]
    pub frames: u32,
    /// Size of each fill, completion, RX and TX ring (power of two). Default: 2048.
    #[serde(default = "afxdp_ring")]
    pub ring_size: u32,
    /// XDP attach mode. Default: `auto`.
    #[serde(default)]
    pub xdp_mode: XdpMode,
    /// Zero-copy policy. Default: `auto`.
    #[serde(default)]
    pub zero_copy: ZeroCopy,
    /// Steering rules: frames matching one go to the socket, everything else to the kernel
    /// (`udp 198.18.0.1 7`, `tcp 2001:db8::/64 8000-8100`, `any 198.18.0.1`). Default:
    /// none, which steers nothing.
    #[serde(default)]
    pub rules: Vec<String>,
    /// NUMA node for the UMEM. Default: the interface's node from sysfs, else none.
    #[serde(default)]
    pub numa_node: Option<u32>,
}

fn one() -> u16 {
    1
}
fn afxdp_frames() -> u32 {
    8192
}
fn afxdp_ring() -> u32 {
    2048
}

/// One worker thread.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WorkerConfig {
    /// CPU core to pin to. Required; must exist and be in the process's allowed cpuset.
    pub core: u32,
    /// Queues the worker polls and transmits on, as `pN:qM` (or `pN` for queue 0).
    /// Default: none (a pure handler core in pipeline mode).
    #[serde(default)]
    pub queues: Vec<String>,
}

impl Config {
    /// Reads and validates a file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let cfg = Config::parse(&text, path)?;
        cfg.validate(path, &crate::topology::allowed_cores())?;
        Ok(cfg)
    }

    /// Parses TOML without semantic checks; `path` only labels errors.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            msg: e.to_string().trim_end().replace('\n', "\n  "),
        })
    }

    /// Checks everything serde cannot. `allowed` is the set of cores the process may run on.
    pub fn validate(&self, path: &Path, allowed: &BTreeSet<u32>) -> Result<(), ConfigError> {
        let bad = |field: String, msg: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            field,
            msg,
        };
        let e = &self.engine;
        if !(512..=32768).contains(&e.frame_size) || !e.frame_size.is_power_of_two() {
            return Err(bad(
                "engine.frame_size".into(),
                format!(
                    "{} is not a power of two between 512 and 32768",
                    e.frame_size
                ),
            ));
        }
        if !(1..=512).contains(&e.burst) {
            return Err(bad(
                "engine.burst".into(),
                format!("{} is out of range 1..=512", e.burst),
            ));
        }
        if !(2..=1 << 20).contains(&e.ring_size) {
            return Err(bad(
                "engine.ring_size".into(),
                format!("{} is out of range 2..=1048576", e.ring_size),
            ));
        }
        if self.ports.is_empty() {
            return Err(bad("ports".into(), "at least one port is required".into()));
        }
        if self.ports.len() > u16::MAX as usize {
            return Err(bad("ports".into(), "too many ports".into()));
        }
        for (i, p) in self.ports.iter().enumerate() {
            match p {
                PortConfig::Memory(m) => {
                    if !(1..=256).contains(&m.queues) {
                        return Err(bad(
                            format!("ports[{i}].queues"),
                            format!("{} is out of range 1..=256", m.queues),
                        ));
                    }
                    if m.frames < (e.burst * 2) as u32 {
                        return Err(bad(
                            format!("ports[{i}].frames"),
                            format!(
                                "{} frames is fewer than two bursts ({})",
                                m.frames,
                                e.burst * 2
                            ),
                        ));
                    }
                    if !(60..=1514).contains(&m.packet_size) {
                        return Err(bad(
                            format!("ports[{i}].packet_size"),
                            format!("{} is out of range 60..=1514", m.packet_size),
                        ));
                    }
                    if m.flows == 0 {
                        return Err(bad(
                            format!("ports[{i}].flows"),
                            "must be at least 1".into(),
                        ));
                    }
                }
                PortConfig::Afxdp(a) => {
                    if a.interface.is_empty() || a.interface.len() > 15 {
                        return Err(bad(
                            format!("ports[{i}].interface"),
                            format!("`{}` is not an interface name (1 to 15 bytes)", a.interface),
                        ));
                    }
                    if !(1..=256).contains(&a.queues) {
                        return Err(bad(
                            format!("ports[{i}].queues"),
                            format!("{} is out of range 1..=256", a.queues),
                        ));
                    }
                    if !a.ring_size.is_power_of_two() || !(64..=16384).contains(&a.ring_size) {
                        return Err(bad(
                            format!("ports[{i}].ring_size"),
                            format!("{} is not a power of two between 64 and 16384", a.ring_size),
                        ));
                    }
                    let need = a.queues as u32 * a.ring_size * 2;
                    if a.frames < need {
                        return Err(bad(
                            format!("ports[{i}].frames"),
                            format!(
                                "{} frames cannot fill {} queues' fill and TX rings of {} (need at least {need})",
                                a.frames, a.queues, a.ring_size
                            ),
                        ));
                    }
                    for (j, r) in a.rules.iter().enumerate() {
                        if let Err(e) = r.parse::<xdp::Rule>() {
                            return Err(bad(format!("ports[{i}].rules[{j}]"), e.to_string()));
                        }
                    }
                }
                PortConfig::Dpdk(d) => {
                    if !cfg!(feature = "dpdk") {
                        return Err(bad(format!("ports[{i}].kind"), DPDK_FEATURE_MISSING.into()));
                    }
                    let dev = d.device.split(',').next().unwrap_or_default();
                    if dev.trim().is_empty() {
                        return Err(bad(
                            format!("ports[{i}].device"),
                            "must name a device, for example `net_null0` or `0000:01:00.0`".into(),
                        ));
                    }
                    if !(1..=256).contains(&d.queues) {
                        return Err(bad(
                            format!("ports[{i}].queues"),
                            format!("{} is out of range 1..=256", d.queues),
                        ));
                    }
                    for (name, v) in [("rx_desc", d.rx_desc), ("tx_desc", d.tx_desc)] {
                        if !(32..=16384).contains(&v) {
                            return Err(bad(
                                format!("ports[{i}].{name}"),
                                format!("{v} is out of range 32..=16384 (default 1024)"),
                            ));
                        }
                    }
                    let twin = self.ports[..i].iter().position(|p| match p {
                        PortConfig::Dpdk(o) => o.device.split(',').next() == Some(dev),
                        _ => false,
                    });
                    if let Some(j) = twin {
                        return Err(bad(
                            format!("ports[{i}].device"),
                            format!("`{dev}` is already ports[{j}]: device names are unique"),
                        ));
                    }
                }
                PortConfig::Pcap(pc) => {
                    if let Some(f) = pc.frames {
                        if f < (e.burst * 2) as u32 {
                            return Err(bad(
                                format!("ports[{i}].frames"),
                                format!("{f} frames is fewer than two bursts ({})", e.burst * 2),
                            ));
                        }
                    }
                }
            }
        }
        if self.ports.iter().any(|p| matches!(p, PortConfig::Dpdk(_))) {
            self.validate_dpdk(path)?;
        }
        if self.workers.is_empty() {
            return Err(bad(
                "workers".into(),
                "at least one worker is required".into(),
            ));
        }
        let mut cores = BTreeSet::new();
        let mut owned = BTreeSet::new();
        for (i, w) in self.workers.iter().enumerate() {
            if !allowed.contains(&w.core) {
                return Err(bad(
                    format!("workers[{i}].core"),
                    format!(
                        "core {} does not exist or is outside the allowed cpuset ({})",
                        w.core,
                        crate::topology::format_cpuset(allowed)
                    ),
                ));
            }
            if !cores.insert(w.core) {
                return Err(bad(
                    format!("workers[{i}].core"),
                    format!("core {} is already used by another worker", w.core),
                ));
            }
            for (j, q) in w.queues.iter().enumerate() {
                let field = format!("workers[{i}].queues[{j}]");
                let id: QueueId = q.parse().map_err(|e| bad(field.clone(), format!("{e}")))?;
                let Some(port) = self.ports.get(id.port.0 as usize) else {
                    return Err(bad(
                        field,
                        format!(
                            "port {} does not exist (there are {} ports)",
                            id.port,
                            self.ports.len()
                        ),
                    ));
                };
                if id.queue >= port.queues() {
                    return Err(bad(
                        field,
                        format!(
                            "{} has {} queues, so {id} does not exist",
                            id.port,
                            port.queues()
                        ),
                    ));
                }
                if !owned.insert(id) {
                    return Err(bad(
                        field,
                        format!("{id} is already owned by another worker"),
                    ));
                }
            }
        }
        if e.mode == Mode::RunToCompletion && owned.is_empty() {
            return Err(bad(
                "workers".into(),
                "no worker owns a queue, so nothing would be received".into(),
            ));
        }
        for (i, h) in self.handlers.iter().enumerate() {
            h.validate()
                .map_err(|msg| bad(format!("handlers[{i}]"), msg))?;
        }
        let c = &self.control;
        if c.enabled && c.socket.as_os_str().is_empty() {
            return Err(bad(
                "control.socket".into(),
                "must not be empty (default /run/slipstream/ctl.sock; set enabled = false to turn the control plane off)".into(),
            ));
        }
        if c.tcp.is_some() {
            for (name, v) in [
                ("tls_cert", &c.tls_cert),
                ("tls_key", &c.tls_key),
                ("tls_ca", &c.tls_ca),
            ] {
                if v.is_none() {
                    return Err(bad(
                        format!("control.{name}"),
                        "is required when control.tcp is set: TCP is served with mutual TLS only"
                            .into(),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Checks `[dpdk]` against the DPDK ports.
    fn validate_dpdk(&self, path: &Path) -> Result<(), ConfigError> {
        let bad = |field: &str, msg: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            field: format!("dpdk.{field}"),
            msg,
        };
        let d = &self.engine.dpdk;
        if let Some(p) = &d.file_prefix {
            if p.is_empty() || p.contains('/') || p.len() > 64 {
                return Err(bad(
                    "file_prefix",
                    format!("`{p}` must be 1 to 64 characters without `/`"),
                ));
            }
        }
        if d.mbuf_cache > 512 {
            return Err(bad(
                "mbuf_cache",
                format!("{} is above DPDK's limit of 512", d.mbuf_cache),
            ));
        }
        // Every RX descriptor of every DPDK port may hold an mbuf, and each burst in flight
        // needs its own; the mempool must cover at least that.
        let rx: u32 = self
            .ports
            .iter()
            .filter_map(|p| match p {
                PortConfig::Dpdk(p) => Some(p.queues as u32 * p.rx_desc as u32),
                _ => None,
            })
            .sum();
        let need = rx + 4 * self.engine.burst as u32 + d.mbuf_cache * 3 / 2;
        if d.mbufs < need {
            return Err(bad(
                "mbufs",
                format!(
                    "{} mbufs cannot fill the DPDK ports' RX rings ({rx} descriptors) with room \
                     for bursts and a cache of {}: use at least {need}",
                    d.mbufs, d.mbuf_cache
                ),
            ));
        }
        if d.memory_mb < 16 {
            return Err(bad(
                "memory_mb",
                format!(
                    "{} MiB is too little for the EAL (at least 16)",
                    d.memory_mb
                ),
            ));
        }
        Ok(())
    }

    /// The queues of each worker, parsed (valid after [`Config::validate`]).
    pub fn worker_queues(&self, worker: usize) -> Vec<QueueId> {
        self.workers[worker]
            .queues
            .iter()
            .filter_map(|q| q.parse().ok())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DPDK: &str = r#"
[engine]
hugepages = false

[dpdk]
file_prefix = "t1"
mbufs = 4095

[[ports]]
kind = "dpdk"
device = "net_null0"

[[workers]]
core = 0
queues = ["p0:q0"]
"#;

    fn cores() -> BTreeSet<u32> {
        [0].into_iter().collect()
    }

    #[test]
    fn dpdk_section_lands_in_the_engine_config_and_prints_back() {
        let cfg = Config::parse(DPDK, Path::new("t.toml")).unwrap();
        assert_eq!(cfg.engine.dpdk.file_prefix.as_deref(), Some("t1"));
        assert_eq!(cfg.engine.dpdk.mbufs, 4095);
        assert_eq!(cfg.engine.dpdk.mbuf_cache, 256);
        let PortConfig::Dpdk(p) = &cfg.ports[0] else {
            panic!("not a dpdk port")
        };
        assert_eq!((p.queues, p.rx_desc, p.tx_desc), (1, 1024, 1024));
        assert!(p.promiscuous);
        let text = toml::to_string_pretty(&cfg).unwrap();
        assert!(text.contains("[dpdk]"), "{text}");
        assert!(!text.contains("[engine.dpdk]"), "{text}");
        assert_eq!(Config::parse(&text, Path::new("t.toml")).unwrap(), cfg);
    }

    #[test]
    fn configs_without_dpdk_print_no_dpdk_section() {
        let text = DPDK
            .replace(
                "kind = \"dpdk\"\ndevice = \"net_null0\"",
                "kind = \"memory\"",
            )
            .replace("[dpdk]\nfile_prefix = \"t1\"\nmbufs = 4095\n", "");
        let cfg = Config::parse(&text, Path::new("t.toml")).unwrap();
        let out = toml::to_string_pretty(&cfg).unwrap();
        assert!(!out.contains("dpdk"), "{out}");
    }

    #[test]
    fn dpdk_typos_are_errors() {
        let e = Config::parse(&DPDK.replace("mbufs =", "mbuf ="), Path::new("t.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("mbuf"), "{e}");
        let e = Config::parse(
            &DPDK.replace(
                "device = \"net_null0\"",
                "device = \"net_null0\"\nqueue = 2",
            ),
            Path::new("t.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("queue"), "{e}");
    }

    #[cfg(not(feature = "dpdk"))]
    #[test]
    fn dpdk_ports_are_refused_without_the_feature() {
        let cfg = Config::parse(DPDK, Path::new("t.toml")).unwrap();
        let e = cfg
            .validate(Path::new("t.toml"), &cores())
            .unwrap_err()
            .to_string();
        assert!(e.contains("ports[0].kind"), "{e}");
        assert!(e.contains("`dpdk` cargo feature"), "{e}");
    }

    #[cfg(feature = "dpdk")]
    #[test]
    fn dpdk_settings_are_checked() {
        let cfg = Config::parse(DPDK, Path::new("t.toml")).unwrap();
        cfg.validate(Path::new("t.toml"), &cores()).unwrap();
        let small = Config::parse(&DPDK.replace("4095", "1000"), Path::new("t.toml")).unwrap();
        let e = small
            .validate(Path::new("t.toml"), &cores())
            .unwrap_err()
            .to_string();
        assert!(e.contains("dpdk.mbufs"), "{e}");
        let twice =
            format!("{DPDK}\n[[ports]]\nkind = \"dpdk\"\ndevice = \"net_null0,size=128\"\n");
        let cfg = Config::parse(&twice, Path::new("t.toml")).unwrap();
        let e = cfg
            .validate(Path::new("t.toml"), &cores())
            .unwrap_err()
            .to_string();
        assert!(e.contains("ports[1].device"), "{e}");
    }
}
