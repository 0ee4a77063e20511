//! The XDP programs of `src/bpf/netbench.bpf.c` and every libbpf call netbench makes: loading
//! the embedded object, the maps, attaching (with a guard that detaches), and
//! `BPF_PROG_RUN` in live-frames mode. All of the crate's BPF `unsafe` lives here.
//!
//! Shaped like `xdp/src/sys.rs` (same libbpf-sys pin, same error conventions: libbpf 1.x
//! returns `-errno`, constructors return NULL + `errno`), but separate: the xdp crate keeps
//! its FFI private, and a bench tool should not widen the appliance's API. After loading,
//! only duplicated fds are kept, so [`Programs`] is plain data.
//!
//! Attachment uses netlink (`bpf_xdp_attach`) with `XDP_FLAGS_UPDATE_IF_NOEXIST`; a program
//! of ours left by a killed run (recognised by name) is replaced, anything else is refused
//! with a hint. [`Attached`] detaches on drop with `XDP_FLAGS_REPLACE`, so it only ever
//! removes its own program.

use std::ffi::{c_void, CStr, CString};
use std::io;
use std::mem;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::ptr::{self, NonNull};

use anyhow::{bail, Context as _};
use libbpf_sys as sys;

/// Keys of the `counts` PERCPU array (`NB_COUNT_*`, netbench.h).
pub const COUNT_HIT: u32 = 0;
/// Frames `nb_sink` passed to the kernel.
pub const COUNT_PASS: u32 = 1;

/// The compiled object; 8-byte aligned because libelf reads ELF headers in place.
#[repr(C, align(8))]
struct Aligned<B: ?Sized>(B);
static OBJECT: &Aligned<[u8]> =
    &Aligned(*include_bytes!(concat!(env!("OUT_DIR"), "/netbench.bpf.o")));

/// `struct nb_gen_cfg` (netbench.h).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct GenCfg {
    sport_base: u16,
    pad: u16,
    flows: u32,
    ifindex: u32,
    kv: KvShape,
}
const _: () = assert!(mem::size_of::<GenCfg>() == 36);

/// The memcached part of `struct nb_gen_cfg`: how the generator turns its `set` template
/// into each frame's get or set. Lengths and the checksum in network byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KvShape {
    pub keys: u32,
    pub get_permille: u32,
    /// Bytes a get is shorter than the template.
    pub shrink: u32,
    pub ip_len_get: u16,
    pub ip_csum_get: u16,
    pub udp_len_get: u16,
    pub ip_len_set: u16,
    pub ip_csum_set: u16,
    pub udp_len_set: u16,
}

/// Plain-old-data types that may be copied into map values byte for byte.
///
/// # Safety
/// Implementors must have no padding bytes (the kernel copies every byte).
unsafe trait Pod: Copy {}
// SAFETY: integers have no padding.
unsafe impl Pod for u32 {}
// SAFETY: repr(C), three integers with the padding spelled out as `pad`; size asserted.
unsafe impl Pod for GenCfg {}

/// Turns a libbpf `-errno` return into `io::Result`.
fn check(rc: i32) -> io::Result<i32> {
    if rc < 0 {
        Err(io::Error::from_raw_os_error(-rc))
    } else {
        Ok(rc)
    }
}

/// `size_t sz` value of a libbpf opts struct.
fn opts_size<T>() -> sys::size_t {
    mem::size_of::<T>() as sys::size_t
}

/// Duplicates an fd some libbpf object owns.
///
/// # Safety
/// `fd` must be an open file descriptor for the duration of the call.
unsafe fn dup_fd(fd: i32) -> io::Result<OwnedFd> {
    if fd < 0 {
        return Err(io::Error::from_raw_os_error(-fd));
    }
    // SAFETY: the caller guarantees `fd` is open for this call; the borrow ends before return.
    unsafe { BorrowedFd::borrow_raw(fd) }.try_clone_to_owned()
}

/// Which program of the object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prog {
    /// The generator (`nb_gen`), run with BPF_PROG_RUN only.
    Gen,
    /// Count and drop everything (`nb_drop`).
    Drop,
    /// Count and drop IPv4 UDP, pass the rest (`nb_sink`).
    Sink,
}

impl Prog {
    /// Name in the object, which is also the name the kernel reports.
    fn name(self) -> &'static CStr {
        match self {
            Prog::Gen => c"nb_gen",
            Prog::Drop => c"nb_drop",
            Prog::Sink => c"nb_sink",
        }
    }
}

/// XDP attach mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// In the driver (`XDP_FLAGS_DRV_MODE`); veth supports it.
    Native,
    /// In the generic receive path (`XDP_FLAGS_SKB_MODE`), after an skb exists.
    Generic,
}

impl Mode {
    fn flag(self) -> u32 {
        match self {
            Mode::Native => sys::XDP_FLAGS_DRV_MODE,
            Mode::Generic => sys::XDP_FLAGS_SKB_MODE,
        }
    }
}

/// A BPF map fd with the number of bytes one value takes in user space.
#[derive(Debug)]
struct Map {
    fd: OwnedFd,
    /// `value_size`, or for PERCPU maps `round_up(value_size, 8) * possible CPUs`
    /// (Documentation/bpf/map_array.rst).
    value_bytes: usize,
}

impl Map {
    fn update<V: Pod>(&self, key: u32, value: &[V]) -> io::Result<()> {
        assert!(
            mem::size_of_val(value) >= self.value_bytes,
            "map value buffer too small"
        );
        // SAFETY: the key is a u32 (all our maps have 4-byte keys); `value` is readable for at
        // least `value_bytes`, all the kernel reads (asserted above), and `V: Pod` has no
        // uninitialised padding bytes.
        let rc = unsafe {
            sys::bpf_map_update_elem(
                self.fd.as_raw_fd(),
                ptr::from_ref(&key).cast(),
                value.as_ptr().cast::<c_void>(),
                sys::BPF_ANY.into(),
            )
        };
        check(rc).map(drop)
    }

    fn lookup_u64s(&self, key: u32, values: &mut [u64]) -> io::Result<()> {
        assert!(
            mem::size_of_val(values) >= self.value_bytes,
            "map value buffer too small"
        );
        // SAFETY: `values` is writable for at least `value_bytes` (asserted above), all the
        // kernel writes, and any bytes are a valid u64.
        let rc = unsafe {
            sys::bpf_map_lookup_elem(
                self.fd.as_raw_fd(),
                ptr::from_ref(&key).cast(),
                values.as_mut_ptr().cast::<c_void>(),
            )
        };
        check(rc).map(drop)
    }
}

/// The loaded object: three programs and their maps.
#[derive(Debug)]
pub struct Programs {
    gen: OwnedFd,
    drop: OwnedFd,
    sink: OwnedFd,
    gen_cfg: Map,
    sink_cfg: Map,
    counts: Map,
    cpus: usize,
}

impl Programs {
    /// Loads the embedded object (needs root: CAP_BPF, CAP_PERFMON for the test runs).
    pub fn load() -> anyhow::Result<Programs> {
        let object = Object::open_and_load(&OBJECT.0, c"netbench").context(
            "loading netbench's XDP programs (needs root; libbpf printed details on stderr)",
        )?;
        // SAFETY: no arguments; libbpf parses /sys/devices/system/cpu/possible.
        let cpus = check(unsafe { sys::libbpf_num_possible_cpus() })
            .context("counting possible CPUs")? as usize;
        let map = |name: &CStr, value_size: usize, percpu: bool| -> anyhow::Result<Map> {
            let fd = object
                .map_fd(name)
                .with_context(|| format!("finding map {name:?}"))?;
            let value_bytes = if percpu {
                value_size.next_multiple_of(8) * cpus
            } else {
                value_size
            };
            Ok(Map { fd, value_bytes })
        };
        let prog = |p: Prog| {
            object
                .program_fd(p.name())
                .with_context(|| format!("finding program {:?}", p.name()))
        };
        Ok(Programs {
            gen: prog(Prog::Gen)?,
            drop: prog(Prog::Drop)?,
            sink: prog(Prog::Sink)?,
            gen_cfg: map(c"gen_cfg", mem::size_of::<GenCfg>(), false)?,
            sink_cfg: map(c"sink_cfg", mem::size_of::<u32>(), false)?,
            counts: map(c"counts", mem::size_of::<u64>(), true)?,
            cpus,
        })
    }

    fn fd(&self, p: Prog) -> BorrowedFd<'_> {
        match p {
            Prog::Gen => self.gen.as_fd(),
            Prog::Drop => self.drop.as_fd(),
            Prog::Sink => self.sink.as_fd(),
        }
    }

    /// Generator: source port = `sport_base + seq % flows` (flows <= 1: template's port), for
    /// test runs on `ifindex` only (elsewhere the program passes every frame); with `kv`,
    /// memcached requests made from a `set` template (see netbench.h).
    pub fn set_gen(
        &self,
        sport_base: u16,
        flows: u32,
        ifindex: u32,
        kv: Option<KvShape>,
    ) -> anyhow::Result<()> {
        let cfg = GenCfg {
            sport_base,
            pad: 0,
            flows,
            ifindex,
            kv: kv.unwrap_or_default(),
        };
        self.gen_cfg
            .update(0, &[cfg])
            .context("writing map gen_cfg")
    }

    /// Sink: count only UDP from this source port (0 = any UDP).
    pub fn set_sink_sport(&self, port: u16) -> anyhow::Result<()> {
        self.sink_cfg
            .update(0, &[u32::from(port)])
            .context("writing map sink_cfg")
    }

    /// A counter of `counts`, summed over CPUs.
    pub fn counter(&self, key: u32) -> io::Result<u64> {
        let mut values = vec![0u64; self.cpus];
        self.counts.lookup_u64s(key, &mut values)?;
        Ok(values.iter().sum())
    }

    /// `BPF_PROG_RUN` of the generator in live-frames mode: `repeat` copies of `frame`, in
    /// batches of `batch` (<= 256), each transmitted out of `ifindex` (the program returns
    /// XDP_TX). Runs on the calling thread's CPU; returns when all were handed to the
    /// interface (frames its peer's ring had no room for are dropped by veth and not
    /// reported here). EINTR when a signal arrives (an unknown part was sent).
    pub fn run_live(&self, frame: &[u8], ifindex: u32, repeat: u32, batch: u32) -> io::Result<()> {
        let len =
            u32::try_from(frame.len()).map_err(|_| io::Error::from_raw_os_error(libc::E2BIG))?;
        // linux/bpf.h `struct xdp_md`: for a test run, data = 0 (no metadata) and data_end =
        // the frame length; ingress_ifindex picks the device XDP_TX leaves through (looked up
        // in the caller's network namespace).
        let ctx = sys::xdp_md {
            data: 0,
            data_end: len,
            data_meta: 0,
            ingress_ifindex: ifindex,
            rx_queue_index: 0,
            egress_ifindex: 0,
        };
        let mut opts = sys::bpf_test_run_opts {
            sz: opts_size::<sys::bpf_test_run_opts>(),
            data_in: frame.as_ptr().cast(),
            data_size_in: len,
            ctx_in: ptr::from_ref(&ctx).cast(),
            ctx_size_in: mem::size_of::<sys::xdp_md>() as u32,
            repeat: i32::try_from(repeat).map_err(|_| io::Error::from_raw_os_error(libc::E2BIG))?,
            flags: sys::BPF_F_TEST_XDP_LIVE_FRAMES,
            batch_size: batch,
            ..Default::default()
        };
        // SAFETY: `data_in` points to `len` readable bytes and `ctx_in` to a readable xdp_md,
        // both outliving the call; no output buffers are given (live mode forbids them), so
        // the kernel writes only into `opts` itself (retval, duration).
        check(unsafe { sys::bpf_prog_test_run_opts(self.gen.as_raw_fd(), &mut opts) }).map(drop)
    }

    /// Attaches `prog` to `ifname` in `mode`; detached when the guard drops.
    pub fn attach(&self, prog: Prog, ifname: &str, mode: Mode) -> anyhow::Result<Attached> {
        let ifindex = ifindex(ifname)?;
        let fd = self.fd(prog).try_clone_to_owned()?;
        let current =
            xdp_query(ifindex).with_context(|| format!("querying the XDP programs of {ifname}"))?;
        let mut old = None;
        for (id, their_mode) in [(current.0, Mode::Native), (current.1, Mode::Generic)] {
            if id == 0 {
                continue;
            }
            // SAFETY: plain syscall wrapper taking an integer.
            let their = check(unsafe { sys::bpf_prog_get_fd_by_id(id) })
                // SAFETY: a fresh fd that nothing else owns.
                .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) })
                .with_context(|| format!("opening XDP program id {id} on {ifname}"))?;
            let name = prog_name(their.as_fd())?;
            if !name.starts_with("nb_") {
                bail!(
                    "{ifname} already has XDP program {name:?} (id {id}) in {their_mode:?} mode; \
                     stop its owner or remove it: `ip link set dev {ifname} xdp off`"
                );
            }
            eprintln!("netbench: replacing a stale {name} (id {id}) on {ifname}");
            if their_mode == mode {
                old = Some(their);
            } else {
                xdp_detach(
                    ifindex,
                    their_mode.flag() | sys::XDP_FLAGS_REPLACE,
                    their.as_fd(),
                )
                .with_context(|| format!("detaching stale program {id} from {ifname}"))?;
            }
        }
        let flags = match &old {
            Some(_) => mode.flag() | sys::XDP_FLAGS_REPLACE,
            None => mode.flag() | sys::XDP_FLAGS_UPDATE_IF_NOEXIST,
        };
        let opts = sys::bpf_xdp_attach_opts {
            sz: opts_size::<sys::bpf_xdp_attach_opts>(),
            old_prog_fd: old.as_ref().map_or(0, |fd| fd.as_raw_fd()),
            ..Default::default()
        };
        // SAFETY: `opts` is initialised with `sz` set; the fds are open for the call.
        check(unsafe { sys::bpf_xdp_attach(ifindex as i32, fd.as_raw_fd(), flags, &opts) })
            .with_context(|| {
                format!("attaching {:?} to {ifname} in {mode:?} mode (needs root; on veth, native mode needs the peer up)", prog.name())
            })?;
        Ok(Attached {
            ifname: ifname.to_string(),
            ifindex,
            mode,
            prog: fd,
        })
    }
}

/// An attached program; detaches it (only if it is still ours) on drop.
#[derive(Debug)]
pub struct Attached {
    ifname: String,
    ifindex: u32,
    mode: Mode,
    prog: OwnedFd,
}

impl Drop for Attached {
    fn drop(&mut self) {
        match xdp_detach(
            self.ifindex,
            self.mode.flag() | sys::XDP_FLAGS_REPLACE,
            self.prog.as_fd(),
        ) {
            Ok(()) => {}
            // EEXIST: replaced by someone else; ENODEV: the interface is gone.
            Err(e) if matches!(e.raw_os_error(), Some(libc::EEXIST | libc::ENODEV)) => {}
            Err(e) => eprintln!(
                "netbench: detaching XDP from {} failed: {e}; remove it: `ip link set dev {} xdp off`",
                self.ifname, self.ifname
            ),
        }
    }
}

/// `if_nametoindex(3)` in the calling thread's network namespace.
pub fn ifindex(ifname: &str) -> anyhow::Result<u32> {
    let c = CString::new(ifname).context("interface name contains NUL")?;
    // SAFETY: `c` is a NUL-terminated string that outlives the call.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if index == 0 {
        bail!(
            "interface {ifname:?} not found in this network namespace (run inside it: `ip netns exec NS netbench ...`)"
        );
    }
    Ok(index)
}

/// Program ids attached to `ifindex` (native, generic).
fn xdp_query(ifindex: u32) -> io::Result<(u32, u32)> {
    let mut opts = sys::bpf_xdp_query_opts {
        sz: opts_size::<sys::bpf_xdp_query_opts>(),
        ..Default::default()
    };
    // SAFETY: `opts` is a writable, initialised opts struct with `sz` set.
    check(unsafe { sys::bpf_xdp_query(ifindex as i32, 0, &mut opts) })?;
    Ok((opts.drv_prog_id, opts.skb_prog_id))
}

fn xdp_detach(ifindex: u32, flags: u32, old: BorrowedFd<'_>) -> io::Result<()> {
    let opts = sys::bpf_xdp_attach_opts {
        sz: opts_size::<sys::bpf_xdp_attach_opts>(),
        old_prog_fd: old.as_raw_fd(),
        ..Default::default()
    };
    // SAFETY: `opts` is initialised with `sz` set; the fd is open for the call.
    check(unsafe { sys::bpf_xdp_detach(ifindex as i32, flags, &opts) }).map(drop)
}

/// The kernel's name of a loaded program (`bpf_prog_info.name`).
fn prog_name(prog: BorrowedFd<'_>) -> io::Result<String> {
    let mut info = sys::bpf_prog_info::default();
    let mut len = mem::size_of::<sys::bpf_prog_info>() as u32;
    // SAFETY: `info` is a writable bpf_prog_info of `len` bytes; its pointer fields are 0, so
    // the kernel writes nothing through them.
    check(unsafe { sys::bpf_prog_get_info_by_fd(prog.as_raw_fd(), &mut info, &mut len) })?;
    let name: Vec<u8> = info
        .name
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    Ok(String::from_utf8_lossy(&name).into_owned())
}

/// An opened and loaded `struct bpf_object`, closed (with its own fds) on drop.
struct Object(NonNull<sys::bpf_object>);

impl Object {
    fn open_and_load(image: &'static [u8], name: &CStr) -> io::Result<Object> {
        let opts = sys::bpf_object_open_opts {
            sz: opts_size::<sys::bpf_object_open_opts>(),
            object_name: name.as_ptr(),
            ..Default::default()
        };
        // SAFETY: `image` is 'static (libbpf may point into it until close); `opts` is a
        // fully initialised opts struct with `sz` set, and `name` outlives the call.
        let obj =
            unsafe { sys::bpf_object__open_mem(image.as_ptr().cast(), image.len() as _, &opts) };
        let obj = NonNull::new(obj)
            .map(Object)
            .ok_or_else(io::Error::last_os_error)?;
        // SAFETY: `obj` is a live object returned by bpf_object__open_mem above.
        check(unsafe { sys::bpf_object__load(obj.0.as_ptr()) })?;
        Ok(obj)
    }

    fn program_fd(&self, name: &CStr) -> io::Result<OwnedFd> {
        // SAFETY: `self.0` is a live, loaded object; `name` is NUL-terminated.
        let prog = unsafe { sys::bpf_object__find_program_by_name(self.0.as_ptr(), name.as_ptr()) };
        if prog.is_null() {
            return Err(io::Error::from_raw_os_error(libc::ENOENT));
        }
        // SAFETY: `prog` belongs to the live `self`; its fd stays open until `self` drops.
        unsafe { dup_fd(sys::bpf_program__fd(prog)) }
    }

    fn map_fd(&self, name: &CStr) -> io::Result<OwnedFd> {
        // SAFETY: `self.0` is a live, loaded object; `name` is NUL-terminated; the map fd is
        // owned by the object and stays open until `self` drops, after this call.
        unsafe {
            dup_fd(sys::bpf_object__find_map_fd_by_name(
                self.0.as_ptr(),
                name.as_ptr(),
            ))
        }
    }
}

impl Drop for Object {
    fn drop(&mut self) {
        // SAFETY: `self.0` came from bpf_object__open_mem and is closed exactly once, here.
        unsafe { sys::bpf_object__close(self.0.as_ptr()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_object_is_a_bpf_elf() {
        let image = &OBJECT.0;
        assert_eq!(&image[..4], b"\x7fELF");
        assert_eq!(u16::from_le_bytes([image[18], image[19]]), 247, "EM_BPF");
        assert_eq!(ptr::from_ref(OBJECT).cast::<u8>() as usize % 8, 0);
    }
}
