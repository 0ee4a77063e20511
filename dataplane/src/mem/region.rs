//! One contiguous, page-aligned memory region backing a port's frames.
//!
//! A region is mapped once at start-up and never grows. It prefers 2 MiB hugepages
//! (`MAP_HUGETLB`), which cut TLB misses on the packet path, and falls back to normal pages
//! with a single warning per process when the hugepage pool is empty. When a NUMA node is
//! requested the range is bound with `mbind(2)` *before* it is touched, so every page is
//! faulted in on that node; only then are the pages populated by writing to them.
//!
//! All `unsafe` needed for memory lives here and in `pool.rs`.

use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};

/// Size of a huge page on x86_64 and aarch64 Linux defaults.
pub const HUGE_PAGE: usize = 2 << 20;
const SMALL_PAGE: usize = 4096;

static FALLBACK_WARNED: AtomicBool = AtomicBool::new(false);

/// Where a region's pages came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backing {
    /// 2 MiB hugepages from the hugetlbfs pool.
    Huge,
    /// Ordinary 4 KiB pages (hugepages were not requested or not available).
    Normal,
}

impl std::fmt::Display for Backing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Backing::Huge => "hugepages-2M",
            Backing::Normal => "4k-pages",
        })
    }
}

/// Errors from mapping or binding a region.
#[derive(Debug, thiserror::Error)]
pub enum RegionError {
    #[error("mmap of {len} bytes failed: {source}")]
    Map { len: usize, source: io::Error },
    #[error("binding {len} bytes to NUMA node {node} failed: {source} (does the node exist? see /sys/devices/system/node)")]
    Bind {
        node: u32,
        len: usize,
        source: io::Error,
    },
    #[error("region size must be non-zero")]
    Empty,
}

/// Options for [`Region::map`].
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Try 2 MiB hugepages first (default: true).
    pub hugepages: bool,
    /// Bind the pages to this NUMA node before touching them (default: none, first touch).
    pub numa_node: Option<u32>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            hugepages: true,
            numa_node: None,
        }
    }
}

/// A page-aligned anonymous mapping, unmapped on drop.
#[derive(Debug)]
pub struct Region {
    ptr: NonNull<u8>,
    len: usize,
    backing: Backing,
    numa_node: Option<u32>,
}

// SAFETY: the region is plain memory owned by this value; access to its bytes is mediated by
// `FramePool`, which hands out each frame to exactly one owner at a time.
unsafe impl Send for Region {}
// SAFETY: as above; `&Region` only exposes the base pointer and length.
unsafe impl Sync for Region {}

impl Region {
    /// Maps `len` bytes (rounded up to the page size in use), binds and populates them.
    pub fn map(len: usize, opts: Options) -> Result<Region, RegionError> {
        if len == 0 {
            return Err(RegionError::Empty);
        }
        let (ptr, len, backing) = if opts.hugepages {
            let huge_len = len.div_ceil(HUGE_PAGE) * HUGE_PAGE;
            match mmap_anon(huge_len, libc::MAP_HUGETLB) {
                Ok(ptr) => (ptr, huge_len, Backing::Huge),
                Err(err) => {
                    if !FALLBACK_WARNED.swap(true, Ordering::Relaxed) {
                        tracing::warn!(
                            "hugepages unavailable ({err}); using 4k pages \
                             (reserve some with: echo 64 > /proc/sys/vm/nr_hugepages)"
                        );
                    }
                    let small_len = len.div_ceil(SMALL_PAGE) * SMALL_PAGE;
                    (mmap_anon(small_len, 0)?, small_len, Backing::Normal)
                }
            }
        } else {
            let small_len = len.div_ceil(SMALL_PAGE) * SMALL_PAGE;
            (mmap_anon(small_len, 0)?, small_len, Backing::Normal)
        };
        let region = Region {
            ptr,
            len,
            backing,
            numa_node: opts.numa_node,
        };
        if let Some(node) = opts.numa_node {
            region.bind(node)?;
        }
        region.populate(if backing == Backing::Huge {
            HUGE_PAGE
        } else {
            SMALL_PAGE
        });
        Ok(region)
    }

    fn bind(&self, node: u32) -> Result<(), RegionError> {
        // mbind(2): MPOL_BIND with a one-word node mask; maxnode counts bits.
        const MPOL_BIND: libc::c_int = 2;
        if node >= 64 {
            return Err(RegionError::Bind {
                node,
                len: self.len,
                source: io::Error::from_raw_os_error(libc::EINVAL),
            });
        }
        let mask: libc::c_ulong = 1 << node;
        // SAFETY: the range is exactly our own live mapping; `mask` outlives the call and
        // `maxnode` (65) covers the single word it points to.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_mbind,
                self.ptr.as_ptr() as libc::c_ulong,
                self.len as libc::c_ulong,
                MPOL_BIND,
                &mask as *const libc::c_ulong,
                65 as libc::c_ulong,
                0 as libc::c_uint,
            )
        };
        if rc != 0 {
            return Err(RegionError::Bind {
                node,
                len: self.len,
                source: io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    /// Touches every page so that faults happen now, at start-up, not on the packet path.
    fn populate(&self, page: usize) {
        let mut off = 0;
        while off < self.len {
            // SAFETY: `off < len`, so the write is inside our mapping, which nobody else
            // references yet (the region has not been handed out).
            unsafe { self.ptr.as_ptr().add(off).write_volatile(0) };
            off += page;
        }
    }

    /// Base address of the mapping.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Length in bytes (a multiple of the page size).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: regions are never empty.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Which pages back the region.
    pub fn backing(&self) -> Backing {
        self.backing
    }

    /// The NUMA node the region is bound to, if any.
    pub fn numa_node(&self) -> Option<u32> {
        self.numa_node
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: ptr/len are exactly what mmap returned; the owner (FramePool) guarantees no
        // frame references the memory any more (it leaks the region instead otherwise).
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

fn mmap_anon(len: usize, extra: libc::c_int) -> Result<NonNull<u8>, RegionError> {
    // SAFETY: anonymous private mapping at an address of the kernel's choosing; no existing
    // memory is affected. The result is checked against MAP_FAILED.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | extra,
            -1,
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(RegionError::Map {
            len,
            source: io::Error::last_os_error(),
        });
    }
    NonNull::new(ptr.cast()).ok_or(RegionError::Map {
        len,
        source: io::Error::from_raw_os_error(libc::ENOMEM),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_rounds_up_and_is_zeroed() {
        let r = Region::map(
            10_000,
            Options {
                hugepages: false,
                numa_node: None,
            },
        )
        .unwrap();
        assert_eq!(r.len(), 12_288);
        assert_eq!(r.backing(), Backing::Normal);
        // SAFETY: reading within our own mapping.
        let bytes = unsafe { std::slice::from_raw_parts(r.as_ptr(), r.len()) };
        assert!(bytes.iter().all(|&b| b == 0));
    }

    #[test]
    fn hugepage_request_falls_back_or_succeeds() {
        let r = Region::map(4096, Options::default()).unwrap();
        match r.backing() {
            Backing::Huge => assert_eq!(r.len(), HUGE_PAGE),
            Backing::Normal => assert_eq!(r.len(), 4096),
        }
    }

    #[test]
    fn binds_to_node_zero() {
        let r = Region::map(
            8192,
            Options {
                hugepages: false,
                numa_node: Some(0),
            },
        )
        .unwrap();
        assert_eq!(r.numa_node(), Some(0));
    }

    #[test]
    fn refuses_a_node_that_does_not_exist() {
        let err = Region::map(
            8192,
            Options {
                hugepages: false,
                numa_node: Some(63),
            },
        )
        .unwrap_err();
        assert!(err.to_string().contains("NUMA node 63"), "{err}");
    }

    #[test]
    fn refuses_zero_length() {
        assert!(matches!(
            Region::map(0, Options::default()),
            Err(RegionError::Empty)
        ));
    }
}
