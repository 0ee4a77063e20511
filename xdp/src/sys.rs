//! Every `unsafe` of the crate: thin wrappers over the libbpf (libbpf-sys) and libc calls the
//! loader needs, each returning `io::Result` with the errno the kernel or libbpf gave.
//!
//! libbpf 1.x returns `-errno` from its `bpf_*` calls and `NULL` + `errno` from constructors
//! (`libbpf.h`, "libbpf 1.0 error conventions"). File descriptors are handed out as `OwnedFd`
//! duplicates, so nothing outside this module sees a raw pointer or has to close anything.

use std::ffi::{c_void, CStr, CString};
use std::fs::File;
use std::io;
use std::mem;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::ptr::{self, NonNull};

use libbpf_sys as bpf;

/// Turns a libbpf `-errno` return into `io::Result`.
fn check(rc: i32) -> io::Result<i32> {
    if rc < 0 {
        Err(io::Error::from_raw_os_error(-rc))
    } else {
        Ok(rc)
    }
}

/// `size_t sz` field value of a libbpf opts struct.
fn opts_size<T>() -> bpf::size_t {
    mem::size_of::<T>() as bpf::size_t
}

/// Duplicates an fd that some libbpf object owns (close-on-exec).
///
/// # Safety
/// `fd` must be an open file descriptor for the duration of the call.
unsafe fn dup_fd(fd: i32) -> io::Result<OwnedFd> {
    if fd < 0 {
        return Err(io::Error::from_raw_os_error(-fd));
    }
    // SAFETY: the caller guarantees `fd` is open for this call; the borrow ends before return.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    borrowed.try_clone_to_owned()
}

/// An opened and loaded `struct bpf_object`, closed (with its own fds) on drop.
pub(crate) struct Object(NonNull<bpf::bpf_object>);

impl Object {
    /// `bpf_object__open_mem` + `bpf_object__load`. `image` must be an ELF BPF object.
    /// `name` is the object name libbpf uses in its messages.
    pub(crate) fn open_and_load(image: &'static [u8], name: &CStr) -> io::Result<Object> {
        let opts = bpf::bpf_object_open_opts {
            sz: opts_size::<bpf::bpf_object_open_opts>(),
            object_name: name.as_ptr(),
            ..Default::default()
        };
        // SAFETY: `image` is a 'static byte slice (libbpf may keep pointers into it until the
        // object is closed, which 'static covers); `opts` is a valid, fully initialised opts
        // struct with `sz` set, and `name` outlives the call (libbpf copies it).
        let obj =
            unsafe { bpf::bpf_object__open_mem(image.as_ptr().cast(), image.len() as _, &opts) };
        let obj = NonNull::new(obj)
            .map(Object)
            .ok_or_else(io::Error::last_os_error)?;
        // SAFETY: `obj` is a live object returned by bpf_object__open_mem above.
        check(unsafe { bpf::bpf_object__load(obj.0.as_ptr()) })?;
        Ok(obj)
    }

    /// A duplicate of the fd of program `name` (after load).
    pub(crate) fn program_fd(&self, name: &CStr) -> io::Result<OwnedFd> {
        // SAFETY: `self.0` is a live, loaded object; `name` is NUL-terminated.
        let prog = unsafe { bpf::bpf_object__find_program_by_name(self.0.as_ptr(), name.as_ptr()) };
        if prog.is_null() {
            return Err(io::Error::from_raw_os_error(libc::ENOENT));
        }
        // SAFETY: `prog` belongs to `self`, which is alive; the fd it returns is owned by the
        // object and stays open until `self` is dropped, after this call.
        unsafe { dup_fd(bpf::bpf_program__fd(prog)) }
    }

    /// A duplicate of the fd of map `name` (after load).
    pub(crate) fn map_fd(&self, name: &CStr) -> io::Result<OwnedFd> {
        // SAFETY: `self.0` is a live, loaded object; `name` is NUL-terminated. The returned fd
        // is owned by the object and stays open until `self` is dropped, after this call.
        unsafe {
            dup_fd(bpf::bpf_object__find_map_fd_by_name(
                self.0.as_ptr(),
                name.as_ptr(),
            ))
        }
    }
}

impl Drop for Object {
    fn drop(&mut self) {
        // SAFETY: `self.0` came from bpf_object__open_mem and is closed exactly once, here.
        unsafe { bpf::bpf_object__close(self.0.as_ptr()) }
    }
}

/// Number of possible CPUs: the per-CPU value count of a PERCPU map.
pub(crate) fn num_possible_cpus() -> io::Result<usize> {
    // SAFETY: no arguments; libbpf parses /sys/devices/system/cpu/possible.
    check(unsafe { bpf::libbpf_num_possible_cpus() }).map(|n| n as usize)
}

/// The kernel's id and name of a loaded program (`bpf_prog_info`, linux/bpf.h).
pub(crate) fn prog_info(prog: BorrowedFd<'_>) -> io::Result<(u32, String)> {
    let mut info = bpf::bpf_prog_info::default();
    let mut len = mem::size_of::<bpf::bpf_prog_info>() as u32;
    // SAFETY: `info` is a writable bpf_prog_info of `len` bytes; all its pointer fields are 0,
    // so the kernel writes nothing through them.
    check(unsafe { bpf::bpf_prog_get_info_by_fd(prog.as_raw_fd(), &mut info, &mut len) })?;
    let name: Vec<u8> = info
        .name
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    Ok((info.id, String::from_utf8_lossy(&name).into_owned()))
}

/// An fd for the program with kernel id `id`.
pub(crate) fn prog_fd_by_id(id: u32) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall wrapper taking an integer.
    let fd = check(unsafe { bpf::bpf_prog_get_fd_by_id(id) })?;
    // SAFETY: `fd` is a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Metadata of a map, read back from the kernel (`bpf_map_info`).
pub(crate) fn map_info(map: BorrowedFd<'_>) -> io::Result<(u32, u32, u32)> {
    let mut info = bpf::bpf_map_info::default();
    let mut len = mem::size_of::<bpf::bpf_map_info>() as u32;
    // SAFETY: `info` is a writable bpf_map_info of `len` bytes with no pointer fields set.
    check(unsafe { bpf::bpf_map_get_info_by_fd(map.as_raw_fd(), &mut info, &mut len) })?;
    Ok((info.type_, info.value_size, info.max_entries))
}

/// Plain-old-data types that may be copied to and from map values byte for byte.
///
/// # Safety
/// Implementors must have no padding bytes and accept any bit pattern.
pub(crate) unsafe trait Pod: Copy {}
// SAFETY: integers have no padding and every bit pattern is valid.
unsafe impl Pod for u32 {}
// SAFETY: integers have no padding and every bit pattern is valid.
unsafe impl Pod for u64 {}

// SAFETY: `RawRule` is repr(C) with explicit padding (`pad`), 40 bytes asserted, all fields
// integers: no padding bytes, every bit pattern valid.
unsafe impl Pod for crate::rule::RawRule {}

/// A BPF map fd with the value size the kernel reports, so that every copy is bounds-checked.
#[derive(Debug)]
pub(crate) struct Map {
    fd: OwnedFd,
    /// Bytes the kernel copies per lookup/update: `value_size`, or for PERCPU maps
    /// `round_up(value_size, 8) * possible CPUs` (Documentation/bpf/map_array.rst).
    value_bytes: usize,
    max_entries: u32,
}

impl Map {
    pub(crate) fn new(
        fd: OwnedFd,
        value_size: u32,
        max_entries: u32,
        percpu: bool,
        cpus: usize,
    ) -> Map {
        let value_bytes = if percpu {
            (value_size as usize).next_multiple_of(8) * cpus
        } else {
            value_size as usize
        };
        Map {
            fd,
            value_bytes,
            max_entries,
        }
    }

    pub(crate) fn max_entries(&self) -> u32 {
        self.max_entries
    }

    /// `BPF_MAP_UPDATE_ELEM` with `BPF_ANY`. `value` must cover the whole map value.
    pub(crate) fn update<V: Pod>(&self, key: u32, value: &[V]) -> io::Result<()> {
        assert!(
            mem::size_of_val(value) >= self.value_bytes,
            "map value buffer too small"
        );
        // SAFETY: `key` is a u32 (all our maps have 4-byte keys); `value` is readable for at
        // least `value_bytes`, the number of bytes the kernel copies (asserted above).
        let rc = unsafe {
            bpf::bpf_map_update_elem(
                self.fd.as_raw_fd(),
                ptr::from_ref(&key).cast(),
                value.as_ptr().cast::<c_void>(),
                bpf::BPF_ANY.into(),
            )
        };
        check(rc).map(drop)
    }

    /// `BPF_MAP_LOOKUP_ELEM` into `value`, which must cover the whole map value.
    pub(crate) fn lookup<V: Pod>(&self, key: u32, value: &mut [V]) -> io::Result<()> {
        assert!(
            mem::size_of_val(value) >= self.value_bytes,
            "map value buffer too small"
        );
        // SAFETY: `value` is writable for at least `value_bytes` (asserted above), which is all
        // the kernel writes; `V: Pod` accepts whatever bytes it writes.
        let rc = unsafe {
            bpf::bpf_map_lookup_elem(
                self.fd.as_raw_fd(),
                ptr::from_ref(&key).cast(),
                value.as_mut_ptr().cast::<c_void>(),
            )
        };
        check(rc).map(drop)
    }

    /// `BPF_MAP_DELETE_ELEM`.
    pub(crate) fn delete(&self, key: u32) -> io::Result<()> {
        // SAFETY: `key` is a readable u32, the key size of all our maps.
        check(unsafe { bpf::bpf_map_delete_elem(self.fd.as_raw_fd(), ptr::from_ref(&key).cast()) })
            .map(drop)
    }
}

impl AsFd for Map {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// XDP program ids attached to an interface, per mode (`bpf_xdp_query`, IFLA_XDP_*_PROG_ID).
#[derive(Debug, Default)]
pub(crate) struct XdpQuery {
    pub(crate) drv: u32,
    pub(crate) skb: u32,
}

pub(crate) fn xdp_query(ifindex: u32) -> io::Result<XdpQuery> {
    let mut opts = bpf::bpf_xdp_query_opts {
        sz: opts_size::<bpf::bpf_xdp_query_opts>(),
        ..Default::default()
    };
    // SAFETY: `opts` is a writable, initialised opts struct with `sz` set.
    check(unsafe { bpf::bpf_xdp_query(ifindex as i32, 0, &mut opts) })?;
    Ok(XdpQuery {
        drv: opts.drv_prog_id,
        skb: opts.skb_prog_id,
    })
}

/// `bpf_xdp_attach` (netlink IFLA_XDP). With `XDP_FLAGS_REPLACE`, `old` is the program that
/// must currently be attached; the kernel refuses with EEXIST otherwise.
pub(crate) fn xdp_attach(
    ifindex: u32,
    prog: BorrowedFd<'_>,
    flags: u32,
    old: Option<BorrowedFd<'_>>,
) -> io::Result<()> {
    let opts = bpf::bpf_xdp_attach_opts {
        sz: opts_size::<bpf::bpf_xdp_attach_opts>(),
        old_prog_fd: old.map_or(0, |fd| fd.as_raw_fd()),
        ..Default::default()
    };
    // SAFETY: `opts` is initialised with `sz` set; the fds are open for the call's duration.
    check(unsafe { bpf::bpf_xdp_attach(ifindex as i32, prog.as_raw_fd(), flags, &opts) }).map(drop)
}

/// `bpf_xdp_detach`; see [`xdp_attach`] for `old`.
pub(crate) fn xdp_detach(ifindex: u32, flags: u32, old: Option<BorrowedFd<'_>>) -> io::Result<()> {
    let opts = bpf::bpf_xdp_attach_opts {
        sz: opts_size::<bpf::bpf_xdp_attach_opts>(),
        old_prog_fd: old.map_or(0, |fd| fd.as_raw_fd()),
        ..Default::default()
    };
    // SAFETY: `opts` is initialised with `sz` set; the fd is open for the call's duration.
    check(unsafe { bpf::bpf_xdp_detach(ifindex as i32, flags, &opts) }).map(drop)
}

/// `BPF_PROG_TEST_RUN` of an XDP program over one frame; returns the XDP action.
pub(crate) fn test_run(prog: BorrowedFd<'_>, frame: &[u8]) -> io::Result<u32> {
    let mut opts = bpf::bpf_test_run_opts {
        sz: opts_size::<bpf::bpf_test_run_opts>(),
        data_in: frame.as_ptr().cast(),
        data_size_in: u32::try_from(frame.len())
            .map_err(|_| io::Error::from_raw_os_error(libc::E2BIG))?,
        repeat: 1,
        ..Default::default()
    };
    // SAFETY: `data_in` points to `data_size_in` readable bytes that outlive the call; no
    // output buffers are given (all other pointers are NULL).
    check(unsafe { bpf::bpf_prog_test_run_opts(prog.as_raw_fd(), &mut opts) })?;
    Ok(opts.retval)
}

/// `if_nametoindex(3)` in the calling thread's network namespace.
pub(crate) fn if_nametoindex(name: &str) -> Option<u32> {
    let name = CString::new(name).ok()?;
    // SAFETY: `name` is a NUL-terminated string that outlives the call.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    (index != 0).then_some(index)
}

/// The calling thread's network namespace.
pub(crate) fn current_netns() -> io::Result<OwnedFd> {
    Ok(File::open("/proc/thread-self/ns/net")?.into())
}

/// Whether two netns fds name the same namespace (same nsfs inode).
pub(crate) fn same_netns(a: BorrowedFd<'_>, b: BorrowedFd<'_>) -> io::Result<bool> {
    let a = File::from(a.try_clone_to_owned()?).metadata()?;
    let b = File::from(b.try_clone_to_owned()?).metadata()?;
    Ok(a.dev() == b.dev() && a.ino() == b.ino())
}

/// `setns(2)` of the calling thread into the network namespace `ns`.
pub(crate) fn enter_netns(ns: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: plain syscall on an fd we borrow for its duration; it changes only the calling
    // thread's network namespace, which the callers restore.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
