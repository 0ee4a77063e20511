//! The XDP steering program and its loader.
//!
//! # What it does
//!
//! `src/bpf/steer.bpf.c` runs on every frame an interface receives. It parses Ethernet (with
//! at most one 802.1Q/802.1ad tag), IPv4 (options skipped by IHL) or IPv6 (fixed header), and
//! the TCP/UDP destination port, then walks up to [`MAX_RULES`] [`Rule`]s. The first match
//! redirects the frame into the AF_XDP socket registered for the frame's RX queue
//! ([`Steering::register_xsk`]); if that queue has no socket, `bpf_redirect_map` falls back
//! to `XDP_PASS` and the kernel gets the packet. Anything that matches nothing — ARP, ICMP,
//! SSH, other services — is `XDP_PASS`, so the host stays reachable while the appliance runs.
//!
//! # Design
//!
//! - **Loader: libbpf through `libbpf-sys`**, pinned to the version `libxdp-sys` pins, because
//!   the AF_XDP port uses `xsk-rs` (libxdp), which links that same libbpf. Two copies of a
//!   `links = "bpf"` crate cannot be in one binary, and one libbpf means one set of netlink
//!   and BPF semantics. aya (pure Rust) was the fallback had the versions not matched.
//! - **The object is built by `build.rs`** (clang `-target bpf`) and embedded with
//!   `include_bytes!`: no file to install, no path to get wrong at run time.
//! - **After loading, the loader keeps only file descriptors** (duplicated from libbpf's
//!   object, which is closed at once), so [`Steering`] is plain `Send + Sync` data.
//! - **Rules are double-buffered**: `set_rules` writes the inactive bank of the `rules` map
//!   and zeroes its hit counters, then flips one 32-bit `config` word (bank + count). A
//!   packet sees the old rule set or the new one, never a mix, and no reload happens.
//! - **Counters are PERCPU arrays** (no atomics on the hot path), summed here on read.
//! - **Attachment uses netlink (`bpf_xdp_attach`)**, not a BPF link. A link would vanish
//!   with a crashed process's fds, but only its holder can replace it, `ip link set dev IF
//!   xdp off` cannot remove it (a hung process would pin it), and libxdp/`ip` both speak
//!   netlink. Instead a program left by a crashed run is recognised by its name
//!   ([`PROG_NAME`]) and replaced atomically with `XDP_FLAGS_REPLACE` (same mode) or
//!   detached first (other mode; the kernel forbids native and generic at once). A program
//!   with another name is never touched: [`Error::ForeignProgram`] says how to remove it.
//!   Detach also uses `XDP_FLAGS_REPLACE`, so it only ever removes our own program.
//! - **Network namespaces**: interface indexes are per namespace. The namespace current at
//!   attach time is remembered, and detach (or drop) enters it if the thread has moved.
//!
//! # Use with an AF_XDP socket (xsk-rs)
//!
//! ```ignore
//! let mut steering = xdp::Steering::attach("eth0", xdp::Mode::Auto)?;
//! steering.set_rules(&["udp 198.18.0.1 7".parse()?])?;
//! // libxdp must not load its own program over ours: INHIBIT_PROG_LOAD. On veth: XDP_COPY.
//! let config = SocketConfig::builder()
//!     .libxdp_flags(LibxdpFlags::XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD)
//!     .bind_flags(BindFlags::XDP_COPY)
//!     .build();
//! let (tx, rx, fq_cq) = unsafe { Socket::new(config, &umem, &"eth0".parse()?, queue) }?;
//! steering.register_xsk(queue, rx.fd().as_raw_fd())?;
//! ```
//!
//! (Checked end to end with xsk-rs 0.11 on a lab veth, native and generic: matching UDP
//! arrives on the socket's RX ring, `no_socket()` stays 0.)
//!
//! # Limits
//!
//! [`MAX_RULES`] rules, RX queues `0..`[`MAX_QUEUES`]; IPv6 extension headers are not
//! walked (the first next-header is taken as the L4 protocol); non-first IPv4 fragments have
//! no ports, so only port-less rules match them.
//!
//! # Privileges
//!
//! Loading and attaching need root (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN for reading other
//! programs' names). libbpf prints its own diagnostics, including verifier logs, on stderr.

mod rule;
mod sys;

use std::fmt;
use std::io;
use std::os::fd::{AsFd, OwnedFd, RawFd};
use std::str::FromStr;

use rule::RawRule;
pub use rule::{Proto, Rule};

/// Rules the program holds (`STEER_MAX_RULES` in `src/bpf/steer.h`).
pub const MAX_RULES: usize = 64;
/// XSKMAP entries: RX queues `0..MAX_QUEUES` can be steered (`STEER_MAX_QUEUES`).
pub const MAX_QUEUES: u32 = 256;
/// Name of the XDP program as the kernel reports it (`ip link`, `bpftool prog`); how a
/// program left by a crashed run is recognised as ours.
pub const PROG_NAME: &str = "slipstream_xdp";

const BANKS: u32 = 2;
const CONFIG_BANK_SHIFT: u32 = 16;
const STAT_PASSED: u32 = 0;
const STAT_NO_XSK: u32 = 1;

/// The compiled program; 8-byte aligned because libelf reads ELF headers in place.
#[repr(C, align(8))]
struct Aligned<B: ?Sized>(B);
static OBJECT: &Aligned<[u8]> = &Aligned(*include_bytes!(concat!(env!("OUT_DIR"), "/steer.bpf.o")));

/// Errors of the loader. Each names the interface, map or rule involved and what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The BPF object could not be loaded.
    #[error(
        "loading the XDP steering program: {what} failed: {source}; this needs root \
         (CAP_BPF + CAP_NET_ADMIN) and a kernel with BTF-defined maps (>= 5.8); libbpf \
         printed details (any verifier log) on stderr"
    )]
    Load {
        /// The step that failed.
        what: String,
        /// The errno.
        #[source]
        source: io::Error,
    },
    /// No interface of that name in the calling thread's network namespace.
    #[error(
        "interface {ifname:?} not found in this network namespace (see `ip link show`; \
         run in the namespace that holds it, e.g. `ip netns exec NS ...`)"
    )]
    NoSuchInterface {
        /// The name asked for.
        ifname: String,
    },
    /// Another XDP program, not ours, is attached to the interface.
    #[error(
        "interface {ifname} already has XDP program {name:?} (id {id}) attached in {mode} mode, \
         which is not slipstream's; remove it first: `ip link set dev {ifname} {} off`",
        mode.ip_link_keyword()
    )]
    ForeignProgram {
        /// The interface.
        ifname: String,
        /// The other program's name.
        name: String,
        /// The other program's kernel id.
        id: u32,
        /// The mode it is attached in.
        mode: Mode,
    },
    /// The kernel refused the attachment.
    #[error("attaching XDP to {ifname} in {mode} mode failed: {source}{}", attach_hint(*mode, source))]
    Attach {
        /// The interface.
        ifname: String,
        /// The mode tried.
        mode: Mode,
        /// The errno.
        #[source]
        source: io::Error,
    },
    /// [`Mode::Auto`] tried both modes and both failed.
    #[error("attaching XDP to {ifname} failed in native mode ({native}) and in generic mode ({generic})")]
    AttachAuto {
        /// The interface.
        ifname: String,
        /// Why native mode failed.
        native: Box<Error>,
        /// Why generic mode failed.
        generic: Box<Error>,
    },
    /// The kernel refused to detach the program.
    #[error("detaching XDP from {ifname} failed: {source}; remove it by hand: `ip link set dev {ifname} xdp off`")]
    Detach {
        /// The interface.
        ifname: String,
        /// The errno.
        #[source]
        source: io::Error,
    },
    /// A map operation failed.
    #[error("BPF map {map}: {what} failed: {source}")]
    Map {
        /// The map's name in steer.bpf.c.
        map: &'static str,
        /// The operation.
        what: String,
        /// The errno.
        #[source]
        source: io::Error,
    },
    /// More rules than the program holds.
    #[error("{count} rules given, but the XDP program holds at most {max}; merge rules into prefixes or port ranges")]
    TooManyRules {
        /// Rules given.
        count: usize,
        /// [`MAX_RULES`].
        max: usize,
    },
    /// A rule that cannot be installed.
    #[error("rule {index} ({rule}): {reason}")]
    InvalidRule {
        /// Position in the slice given to `set_rules`.
        index: usize,
        /// The rule, in its text form.
        rule: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A rule's text form could not be parsed.
    #[error("invalid rule {text:?}: {reason}; expected `PROTO ADDR[/LEN] [PORT[-PORT]]`, e.g. `udp 198.18.0.1 7`")]
    ParseRule {
        /// The text.
        text: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An RX queue outside the XSKMAP.
    #[error("RX queue {queue} is out of range: the XSKMAP holds queues 0..{max}")]
    QueueOutOfRange {
        /// The queue.
        queue: u32,
        /// [`MAX_QUEUES`].
        max: u32,
    },
    /// The kernel refused an AF_XDP socket for the XSKMAP.
    #[error(
        "registering fd {fd} for RX queue {queue} in the XSKMAP failed: {source}; it must be an \
         AF_XDP socket with an RX ring, bound to queue {queue} of the steered interface"
    )]
    Xsk {
        /// The queue.
        queue: u32,
        /// The fd given.
        fd: RawFd,
        /// The errno.
        #[source]
        source: io::Error,
    },
    /// A mode name that is not native, generic or auto.
    #[error("invalid XDP mode {0:?}: expected native, generic or auto")]
    ParseMode(String),
}

/// Result of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

fn attach_hint(mode: Mode, err: &io::Error) -> &'static str {
    match (mode, err.raw_os_error()) {
        (Mode::Native, Some(libc::EOPNOTSUPP)) => {
            "; the driver has no native XDP: use generic or auto mode"
        }
        (Mode::Native, Some(libc::ERANGE | libc::EINVAL)) => {
            "; the MTU may be too large for native XDP on this driver: lower it or use generic mode"
        }
        (_, Some(libc::EBUSY | libc::EEXIST)) => {
            "; another XDP program was attached meanwhile: check `ip link show`"
        }
        (_, Some(libc::EPERM | libc::EACCES)) => "; this needs root (CAP_NET_ADMIN)",
        _ => "",
    }
}

/// How the program is attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    /// In the driver (`XDP_FLAGS_DRV_MODE`): fastest; needed for zero-copy AF_XDP.
    Native,
    /// In the generic receive path (`XDP_FLAGS_SKB_MODE`): works on every interface,
    /// after an skb has been allocated; AF_XDP in copy mode only.
    Generic,
    /// Native, falling back to generic; [`Steering::mode`] says which one was used.
    Auto,
}

impl Mode {
    fn flag(self) -> u32 {
        match self {
            Mode::Native => libbpf_sys::XDP_FLAGS_DRV_MODE,
            Mode::Generic => libbpf_sys::XDP_FLAGS_SKB_MODE,
            Mode::Auto => 0,
        }
    }

    /// The keyword of `ip link set dev IF KEYWORD off` for this mode.
    fn ip_link_keyword(self) -> &'static str {
        match self {
            Mode::Native => "xdpdrv",
            Mode::Generic => "xdpgeneric",
            Mode::Auto => "xdp",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Native => "native",
            Mode::Generic => "generic",
            Mode::Auto => "auto",
        })
    }
}

impl FromStr for Mode {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "native" | "drv" | "driver" => Ok(Mode::Native),
            "generic" | "skb" => Ok(Mode::Generic),
            "auto" => Ok(Mode::Auto),
            _ => Err(Error::ParseMode(s.to_string())),
        }
    }
}

/// XDP action returned by [`Steering::test_run`] (`enum xdp_action`, linux/bpf.h).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// `XDP_ABORTED`.
    Aborted,
    /// `XDP_DROP`.
    Drop,
    /// `XDP_PASS`: to the kernel.
    Pass,
    /// `XDP_TX`.
    Tx,
    /// `XDP_REDIRECT`: to an AF_XDP socket.
    Redirect,
    /// Anything else.
    Other(u32),
}

impl From<u32> for Action {
    fn from(v: u32) -> Action {
        match v {
            libbpf_sys::XDP_ABORTED => Action::Aborted,
            libbpf_sys::XDP_DROP => Action::Drop,
            libbpf_sys::XDP_PASS => Action::Pass,
            libbpf_sys::XDP_TX => Action::Tx,
            libbpf_sys::XDP_REDIRECT => Action::Redirect,
            other => Action::Other(other),
        }
    }
}

/// Where the program is attached.
#[derive(Debug)]
struct Attachment {
    ifname: String,
    ifindex: u32,
    /// Native or Generic, never Auto.
    mode: Mode,
    /// The network namespace `ifindex` belongs to.
    netns: OwnedFd,
}

/// The loaded steering program: its maps, and the interface it is attached to, if any.
/// Dropping it detaches the program (and the kernel frees program and maps once no fd and
/// no interface holds them).
#[derive(Debug)]
pub struct Steering {
    prog: OwnedFd,
    prog_id: u32,
    rules_map: sys::Map,
    config: sys::Map,
    hits: sys::Map,
    stats: sys::Map,
    xsks: sys::Map,
    cpus: usize,
    /// Bank `config` points the program at.
    bank: u32,
    rules: Vec<Rule>,
    attached: Option<Attachment>,
}

impl Steering {
    /// Loads the program and attaches it to `ifname` (in the calling thread's network
    /// namespace) in `mode`, replacing a program of ours left there by a crashed run.
    /// No rules are installed yet: everything passes until [`Steering::set_rules`].
    pub fn attach(ifname: &str, mode: Mode) -> Result<Steering> {
        let mut steering = Steering::load()?;
        steering.attach_to(ifname, mode)?;
        Ok(steering)
    }

    /// Loads the program without attaching it (for [`Steering::test_run`], or to fill the
    /// rules before traffic arrives and attach with [`Steering::attach_to`]).
    pub fn load() -> Result<Steering> {
        let load_err = |what: &str| {
            let what = what.to_string();
            move |source| Error::Load { what, source }
        };
        let object = sys::Object::open_and_load(&OBJECT.0, c"slipstream_steer")
            .map_err(load_err("opening and loading the embedded BPF object"))?;
        let prog = object
            .program_fd(c"slipstream_xdp")
            .map_err(load_err("finding program slipstream_xdp"))?;
        let (prog_id, _) =
            sys::prog_info(prog.as_fd()).map_err(load_err("reading the program id"))?;
        let cpus = sys::num_possible_cpus().map_err(load_err("counting possible CPUs"))?;
        let map = |name: &'static str,
                   c_name: &std::ffi::CStr,
                   value_size: usize,
                   percpu: bool|
         -> Result<sys::Map> {
            let fd = object
                .map_fd(c_name)
                .map_err(load_err(&format!("finding map {name}")))?;
            let (_, kernel_size, max_entries) =
                sys::map_info(fd.as_fd()).map_err(load_err(&format!("reading map {name}")))?;
            if kernel_size as usize != value_size {
                return Err(Error::Load {
                    what: format!("checking map {name}: value size {kernel_size}, the loader expects {value_size}"),
                    source: io::Error::from_raw_os_error(libc::EPROTO),
                });
            }
            Ok(sys::Map::new(fd, kernel_size, max_entries, percpu, cpus))
        };
        let steering = Steering {
            rules_map: map("rules", c"rules", size_of::<RawRule>(), false)?,
            config: map("config", c"config", size_of::<u32>(), false)?,
            hits: map("hits", c"hits", size_of::<u64>(), true)?,
            stats: map("stats", c"stats", size_of::<u64>(), true)?,
            xsks: map("xsks", c"xsks", size_of::<u32>(), false)?,
            prog,
            prog_id,
            cpus,
            bank: 0,
            rules: Vec::new(),
            attached: None,
        };
        if steering.rules_map.max_entries() as usize != BANKS as usize * MAX_RULES
            || steering.xsks.max_entries() != MAX_QUEUES
        {
            return Err(Error::Load {
                what:
                    "checking map sizes against MAX_RULES/MAX_QUEUES (steer.h and lib.rs disagree)"
                        .into(),
                source: io::Error::from_raw_os_error(libc::EPROTO),
            });
        }
        Ok(steering)
    }

    /// Attaches the loaded program to `ifname`; see [`Steering::attach`]. Detaches it from
    /// the interface it was attached to before, if any. Returns the mode used.
    pub fn attach_to(&mut self, ifname: &str, mode: Mode) -> Result<Mode> {
        self.detach_inner()?;
        let ifindex = sys::if_nametoindex(ifname).ok_or_else(|| Error::NoSuchInterface {
            ifname: ifname.to_string(),
        })?;
        let netns = sys::current_netns().map_err(|source| Error::Attach {
            ifname: ifname.to_string(),
            mode,
            source,
        })?;
        let used = match mode {
            Mode::Native | Mode::Generic => {
                self.try_attach(ifname, ifindex, mode)?;
                mode
            }
            Mode::Auto => match self.try_attach(ifname, ifindex, Mode::Native) {
                Ok(()) => Mode::Native,
                Err(e @ Error::ForeignProgram { .. }) => return Err(e),
                Err(native) => match self.try_attach(ifname, ifindex, Mode::Generic) {
                    Ok(()) => {
                        tracing::warn!(%ifname, error = %native, "native XDP unavailable; using generic mode");
                        Mode::Generic
                    }
                    Err(generic) => {
                        return Err(Error::AttachAuto {
                            ifname: ifname.to_string(),
                            native: Box::new(native),
                            generic: Box::new(generic),
                        })
                    }
                },
            },
        };
        self.attached = Some(Attachment {
            ifname: ifname.to_string(),
            ifindex,
            mode: used,
            netns,
        });
        tracing::info!(%ifname, mode = %used, prog_id = self.prog_id, "XDP steering attached");
        Ok(used)
    }

    /// One attach attempt in `mode` (Native or Generic), clearing a stale program of ours.
    fn try_attach(&self, ifname: &str, ifindex: u32, mode: Mode) -> Result<()> {
        let attach_err = |source| Error::Attach {
            ifname: ifname.to_string(),
            mode,
            source,
        };
        let current = sys::xdp_query(ifindex).map_err(attach_err)?;
        let mut same_mode = None;
        for (id, their_mode) in [(current.drv, Mode::Native), (current.skb, Mode::Generic)] {
            if id == 0 {
                continue;
            }
            let fd = match sys::prog_fd_by_id(id) {
                Ok(fd) => fd,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue, // just went away
                Err(e) => return Err(attach_err(e)),
            };
            let (_, name) = sys::prog_info(fd.as_fd()).map_err(attach_err)?;
            if name != PROG_NAME {
                return Err(Error::ForeignProgram {
                    ifname: ifname.to_string(),
                    name,
                    id,
                    mode: their_mode,
                });
            }
            if their_mode == mode {
                same_mode = Some((id, fd));
            } else {
                // The kernel refuses native and generic at once: remove the stale one first.
                tracing::warn!(%ifname, id, mode = %their_mode, "detaching a stale {PROG_NAME} (left by a crashed run?)");
                sys::xdp_detach(
                    ifindex,
                    their_mode.flag() | libbpf_sys::XDP_FLAGS_REPLACE,
                    Some(fd.as_fd()),
                )
                .map_err(|source| Error::Detach {
                    ifname: ifname.to_string(),
                    source,
                })?;
            }
        }
        match same_mode {
            Some((id, old)) => {
                if id != self.prog_id {
                    tracing::warn!(%ifname, id, %mode, "replacing a stale {PROG_NAME} (left by a crashed run?)");
                }
                let flags = mode.flag() | libbpf_sys::XDP_FLAGS_REPLACE;
                sys::xdp_attach(ifindex, self.prog.as_fd(), flags, Some(old.as_fd()))
            }
            None => {
                let flags = mode.flag() | libbpf_sys::XDP_FLAGS_UPDATE_IF_NOEXIST;
                sys::xdp_attach(ifindex, self.prog.as_fd(), flags, None)
            }
        }
        .map_err(attach_err)
    }

    /// Detaches the program from its interface (a no-op when not attached). The program and
    /// its maps stay loaded until `self` is dropped.
    pub fn detach(&mut self) -> Result<()> {
        self.detach_inner()
    }

    fn detach_inner(&mut self) -> Result<()> {
        let Some(a) = self.attached.take() else {
            return Ok(());
        };
        let detach_err = |source| Error::Detach {
            ifname: a.ifname.clone(),
            source,
        };
        let here = sys::current_netns().map_err(detach_err)?;
        let moved = !sys::same_netns(here.as_fd(), a.netns.as_fd()).map_err(detach_err)?;
        if moved {
            sys::enter_netns(a.netns.as_fd()).map_err(detach_err)?;
        }
        // REPLACE with our own fd: removes the program only if it is still ours.
        let flags = a.mode.flag() | libbpf_sys::XDP_FLAGS_REPLACE;
        let result = sys::xdp_detach(a.ifindex, flags, Some(self.prog.as_fd()));
        if moved {
            sys::enter_netns(here.as_fd()).map_err(detach_err)?;
        }
        match result {
            Ok(()) => {
                tracing::info!(ifname = %a.ifname, "XDP steering detached");
                Ok(())
            }
            // EEXIST: someone replaced it, nothing of ours is there. ENODEV: interface gone.
            Err(e) if matches!(e.raw_os_error(), Some(libc::EEXIST | libc::ENODEV)) => {
                tracing::debug!(ifname = %a.ifname, error = %e, "XDP steering was already gone");
                Ok(())
            }
            Err(e) => Err(detach_err(e)),
        }
    }

    /// Replaces the rule set, atomically for the data path and without reloading the
    /// program. Hit counters of the new rules start at zero. On error nothing changes.
    pub fn set_rules(&mut self, rules: &[Rule]) -> Result<()> {
        if rules.len() > MAX_RULES {
            return Err(Error::TooManyRules {
                count: rules.len(),
                max: MAX_RULES,
            });
        }
        let raw = rules
            .iter()
            .enumerate()
            .map(|(index, r)| {
                r.encode().map_err(|reason| Error::InvalidRule {
                    index,
                    rule: r.to_string(),
                    reason,
                })
            })
            .collect::<Result<Vec<RawRule>>>()?;
        let next = self.bank ^ 1;
        let base = next * MAX_RULES as u32;
        let zeros = vec![0u64; self.cpus];
        for (i, r) in raw.iter().enumerate() {
            let key = base + i as u32;
            self.rules_map
                .update(key, std::slice::from_ref(r))
                .map_err(|source| Error::Map {
                    map: "rules",
                    what: format!("writing rule {i}"),
                    source,
                })?;
            self.hits.update(key, &zeros).map_err(|source| Error::Map {
                map: "hits",
                what: format!("zeroing rule {i}"),
                source,
            })?;
        }
        let word = (next << CONFIG_BANK_SHIFT) | raw.len() as u32;
        self.config
            .update(0, &[word])
            .map_err(|source| Error::Map {
                map: "config",
                what: "switching the rule bank".into(),
                source,
            })?;
        self.bank = next;
        self.rules = rules.to_vec();
        Ok(())
    }

    /// The rules installed, in match order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Packets each installed rule matched since it was installed, summed over CPUs; index
    /// `i` belongs to `rules()[i]`.
    pub fn rule_hits(&self) -> Result<Vec<u64>> {
        let base = self.bank * MAX_RULES as u32;
        (0..self.rules.len() as u32)
            .map(|i| self.percpu_sum(&self.hits, "hits", base + i))
            .collect()
    }

    /// Packets that matched no rule (or were not IPv4/IPv6) and went to the kernel.
    pub fn passed(&self) -> Result<u64> {
        self.percpu_sum(&self.stats, "stats", STAT_PASSED)
    }

    /// Packets that matched a rule but went to the kernel because their RX queue had no
    /// AF_XDP socket registered.
    pub fn no_socket(&self) -> Result<u64> {
        self.percpu_sum(&self.stats, "stats", STAT_NO_XSK)
    }

    fn percpu_sum(&self, map: &sys::Map, name: &'static str, key: u32) -> Result<u64> {
        let mut values = vec![0u64; self.cpus];
        map.lookup(key, &mut values).map_err(|source| Error::Map {
            map: name,
            what: format!("reading counter {key}"),
            source,
        })?;
        Ok(values.iter().sum())
    }

    /// Steers RX queue `queue` to the AF_XDP socket `fd` (which must be bound to that queue
    /// of the attached interface). The map holds its own reference to the socket; closing the
    /// socket removes the entry.
    pub fn register_xsk(&self, queue: u32, fd: RawFd) -> Result<()> {
        self.check_queue(queue)?;
        let value = u32::try_from(fd).map_err(|_| Error::Xsk {
            queue,
            fd,
            source: io::Error::from_raw_os_error(libc::EBADF),
        })?;
        self.xsks
            .update(queue, &[value])
            .map_err(|source| Error::Xsk { queue, fd, source })
    }

    /// Stops steering `queue` to a socket: its matching packets go to the kernel again.
    /// Unregistering a queue that has no socket is not an error.
    pub fn unregister_xsk(&self, queue: u32) -> Result<()> {
        self.check_queue(queue)?;
        match self.xsks.delete(queue) {
            Err(e) if e.raw_os_error() != Some(libc::ENOENT) => Err(Error::Map {
                map: "xsks",
                what: format!("removing queue {queue}"),
                source: e,
            }),
            _ => Ok(()),
        }
    }

    fn check_queue(&self, queue: u32) -> Result<()> {
        if queue >= MAX_QUEUES {
            return Err(Error::QueueOutOfRange {
                queue,
                max: MAX_QUEUES,
            });
        }
        Ok(())
    }

    /// Runs the program once over `frame` in the kernel (`BPF_PROG_TEST_RUN`, RX queue 0),
    /// counters included, without any interface: the way to check what the data path would
    /// do with a frame.
    pub fn test_run(&self, frame: &[u8]) -> Result<Action> {
        sys::test_run(self.prog.as_fd(), frame)
            .map(Action::from)
            .map_err(|source| Error::Load {
                what: "BPF_PROG_TEST_RUN".into(),
                source,
            })
    }

    /// The kernel's id of the loaded program (`bpftool prog show id N`).
    pub fn prog_id(&self) -> u32 {
        self.prog_id
    }

    /// The interface the program is attached to.
    pub fn ifname(&self) -> Option<&str> {
        self.attached.as_ref().map(|a| a.ifname.as_str())
    }

    /// The mode the program is attached in (Native or Generic, never Auto).
    pub fn mode(&self) -> Option<Mode> {
        self.attached.as_ref().map(|a| a.mode)
    }
}

impl Drop for Steering {
    fn drop(&mut self) {
        if let Err(e) = self.detach_inner() {
            tracing::warn!(error = %e, "XDP steering left attached");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steering_can_move_between_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<Steering>();
        send_sync::<Error>();
    }

    #[test]
    fn mode_parses_and_prints() {
        for (text, mode) in [
            ("native", Mode::Native),
            ("skb", Mode::Generic),
            ("Auto", Mode::Auto),
        ] {
            assert_eq!(text.parse::<Mode>().unwrap(), mode);
        }
        assert_eq!(Mode::Generic.to_string(), "generic");
        let err = "fast".parse::<Mode>().unwrap_err().to_string();
        assert!(err.contains("\"fast\"") && err.contains("generic"), "{err}");
    }

    #[test]
    fn embedded_object_is_a_bpf_elf() {
        let image = &OBJECT.0;
        assert_eq!(&image[..4], b"\x7fELF");
        assert_eq!(image[4], 2, "64-bit");
        // e_machine EM_BPF (247), little-endian on the hosts we build for.
        assert_eq!(u16::from_le_bytes([image[18], image[19]]), 247);
        assert_eq!(OBJECT as *const Aligned<[u8]> as *const u8 as usize % 8, 0);
    }

    #[test]
    fn foreign_program_error_says_how_to_remove_it() {
        let e = Error::ForeignProgram {
            ifname: "eth0".into(),
            name: "xdp_dispatcher".into(),
            id: 7,
            mode: Mode::Generic,
        };
        assert!(
            e.to_string()
                .contains("ip link set dev eth0 xdpgeneric off"),
            "{e}"
        );
    }
}
