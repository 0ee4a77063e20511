//! What the machine offers: which cores this process may run on.
//!
//! The allowed set is the process's affinity mask (`sched_getaffinity(2)`), which already
//! reflects cgroup cpusets, `taskset` and offline CPUs. NUMA and NIC locality from sysfs
//! arrive with the control plane.

use std::collections::BTreeSet;

/// Cores the calling thread may be scheduled on.
pub fn allowed_cores() -> BTreeSet<u32> {
    // SAFETY: cpu_set_t is plain data; zeroed is a valid empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: pid 0 means the calling thread; the size matches the set we pass.
    let rc =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    let mut out = BTreeSet::new();
    if rc != 0 {
        return out;
    }
    for cpu in 0..libc::CPU_SETSIZE as usize {
        // SAFETY: cpu < CPU_SETSIZE, the bound CPU_ISSET requires.
        if unsafe { libc::CPU_ISSET(cpu, &set) } {
            out.insert(cpu as u32);
        }
    }
    out
}

/// Formats a core set compactly, as the kernel does: `0-3,8,10-11`.
pub fn format_cpuset(set: &BTreeSet<u32>) -> String {
    let mut parts = Vec::new();
    let mut iter = set.iter().copied().peekable();
    while let Some(start) = iter.next() {
        let mut end = start;
        while iter.peek() == Some(&(end + 1)) {
            end = iter.next().unwrap_or(end);
        }
        parts.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
    }
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_ranges() {
        let s: BTreeSet<u32> = [0, 1, 2, 3, 8, 10, 11].into();
        assert_eq!(format_cpuset(&s), "0-3,8,10-11");
        assert_eq!(format_cpuset(&BTreeSet::new()), "none");
    }

    #[test]
    fn this_thread_may_run_somewhere() {
        let cores = allowed_cores();
        assert!(!cores.is_empty());
        assert!(
            cores.len()
                <= std::thread::available_parallelism()
                    .map_or(4096, |n| n.get())
                    .max(cores.len())
        );
    }
}
