//! What the machine offers: CPUs, NUMA nodes and network interfaces, and which cores this
//! process may run on.
//!
//! The allowed set is the process's affinity mask (`sched_getaffinity(2)`), which already
//! reflects cgroup cpusets, `taskset` and offline CPUs. Everything else comes from sysfs,
//! read from a root path the caller chooses (`/sys` in production, a fake tree in tests):
//!
//! - CPUs: `devices/system/cpu/{present,online}` and `cpuN/topology/{core_id,
//!   physical_package_id}`;
//! - NUMA nodes: `devices/system/node/online`, `nodeN/cpulist`, `nodeN/meminfo` and
//!   `nodeN/hugepages/hugepages-2048kB/{nr,free}_hugepages`;
//! - interfaces: `class/net/IF/device/numa_node` (-1 means the platform does not say) and
//!   `class/net/IF/queues/{rx,tx}-N`.
//!
//! Missing files are not errors: containers and small VMs often lack NUMA or PCI details,
//! and an unknown value is reported as unknown (`None`), never guessed. A kernel without
//! `devices/system/node` is treated as one node holding every CPU, which is what the kernel
//! itself does on non-NUMA builds.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::Serialize;

/// The default sysfs mount.
pub const SYSFS: &str = "/sys";

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

/// The core a single worker uses by default: the last allowed one, leaving the first (where
/// the shell and the stats thread usually are) alone; 0 when the affinity cannot be read.
pub fn default_worker_core() -> u32 {
    allowed_cores().last().copied().unwrap_or(0)
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

/// Parses the kernel's list format (`0-3,8,10-11`; empty means none).
pub fn parse_cpulist(s: &str) -> Result<BTreeSet<u32>, String> {
    let mut out = BTreeSet::new();
    for part in s.trim().split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let bad = || format!("`{part}` is not a CPU number or range (expected e.g. 0-3,8)");
        match part.split_once('-') {
            None => {
                out.insert(part.parse().map_err(|_| bad())?);
            }
            Some((a, b)) => {
                let a: u32 = a.parse().map_err(|_| bad())?;
                let b: u32 = b.parse().map_err(|_| bad())?;
                if b < a || b - a > 1 << 16 {
                    return Err(bad());
                }
                out.extend(a..=b);
            }
        }
    }
    Ok(out)
}

/// One logical CPU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Cpu {
    pub id: u32,
    /// Listed in `online` (CPU 0 often has no `online` file of its own; the list decides).
    pub online: bool,
    /// In this process's affinity mask.
    pub allowed: bool,
    /// NUMA node, when known.
    pub node: Option<u32>,
    /// Physical core id within its package (hyper-threads share it), when known.
    pub core_id: Option<u32>,
    /// Socket, when known.
    pub package: Option<u32>,
}

/// One NUMA node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Node {
    pub id: u32,
    pub cpus: BTreeSet<u32>,
    /// From `meminfo`, bytes.
    pub mem_total: Option<u64>,
    pub mem_free: Option<u64>,
    /// 2 MiB hugepages reserved on this node, and how many are free.
    pub hugepages_2m: Option<u64>,
    pub hugepages_2m_free: Option<u64>,
}

/// A network interface as sysfs describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Nic {
    pub name: String,
    /// NUMA node of the device, when the platform says (`numa_node` is -1 or absent
    /// otherwise, as for virtual devices).
    pub numa_node: Option<u32>,
    pub rx_queues: u16,
    pub tx_queues: u16,
}

/// CPUs and NUMA nodes of the machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Topology {
    /// The sysfs root this was read from.
    pub root: PathBuf,
    pub cpus: Vec<Cpu>,
    pub nodes: Vec<Node>,
    pub allowed: BTreeSet<u32>,
}

fn read_trim(path: &Path) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

fn read_num<T: std::str::FromStr>(path: &Path) -> Option<T> {
    read_trim(path).and_then(|s| s.parse().ok())
}

fn read_list(path: &Path) -> Option<BTreeSet<u32>> {
    read_trim(path).and_then(|s| parse_cpulist(&s).ok())
}

/// Numbered entries `prefixN` of a directory.
fn numbered(dir: &Path, prefix: &str) -> BTreeSet<u32> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return BTreeSet::new();
    };
    rd.filter_map(|e| e.ok())
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_prefix(prefix))
                .and_then(|n| n.parse().ok())
        })
        .collect()
}

/// `Node 0 MemTotal:  16318412 kB` -> bytes.
fn meminfo_field(text: &str, field: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (_, rest) = l.split_once(field)?;
        let kb: u64 = rest
            .trim_start_matches(':')
            .split_whitespace()
            .next()?
            .parse()
            .ok()?;
        Some(kb * 1024)
    })
}

impl Topology {
    /// Reads the topology of this machine from `/sys`, with this thread's allowed cores.
    pub fn system() -> Topology {
        Topology::read(Path::new(SYSFS), allowed_cores())
    }

    /// Reads CPUs and nodes under the sysfs root `root`; `allowed` marks the cores the
    /// process may use. Missing information is left unknown.
    pub fn read(root: &Path, allowed: BTreeSet<u32>) -> Topology {
        let cpu_dir = root.join("devices/system/cpu");
        let present = read_list(&cpu_dir.join("present"))
            .or_else(|| read_list(&cpu_dir.join("possible")))
            .unwrap_or_else(|| numbered(&cpu_dir, "cpu"));
        let online = read_list(&cpu_dir.join("online")).unwrap_or_else(|| present.clone());

        let node_dir = root.join("devices/system/node");
        let node_ids =
            read_list(&node_dir.join("online")).unwrap_or_else(|| numbered(&node_dir, "node"));
        let mut nodes: Vec<Node> = node_ids
            .iter()
            .map(|&id| {
                let d = node_dir.join(format!("node{id}"));
                let meminfo = read_trim(&d.join("meminfo")).unwrap_or_default();
                let hp = d.join("hugepages/hugepages-2048kB");
                Node {
                    id,
                    cpus: read_list(&d.join("cpulist")).unwrap_or_default(),
                    mem_total: meminfo_field(&meminfo, "MemTotal"),
                    mem_free: meminfo_field(&meminfo, "MemFree"),
                    hugepages_2m: read_num(&hp.join("nr_hugepages")),
                    hugepages_2m_free: read_num(&hp.join("free_hugepages")),
                }
            })
            .collect();
        if nodes.is_empty() && !present.is_empty() {
            // No NUMA information: one node with everything, as a non-NUMA kernel reports.
            nodes.push(Node {
                id: 0,
                cpus: present.clone(),
                mem_total: None,
                mem_free: None,
                hugepages_2m: None,
                hugepages_2m_free: None,
            });
        }
        let cpus = present
            .iter()
            .map(|&id| {
                let t = cpu_dir.join(format!("cpu{id}/topology"));
                Cpu {
                    id,
                    online: online.contains(&id),
                    allowed: allowed.contains(&id),
                    node: nodes.iter().find(|n| n.cpus.contains(&id)).map(|n| n.id),
                    core_id: read_num(&t.join("core_id")),
                    package: read_num(&t.join("physical_package_id")),
                }
            })
            .collect();
        Topology {
            root: root.to_path_buf(),
            cpus,
            nodes,
            allowed,
        }
    }

    /// The CPU with this number, if the machine has it.
    pub fn cpu(&self, id: u32) -> Option<&Cpu> {
        self.cpus.iter().find(|c| c.id == id)
    }

    /// NUMA node of a CPU, when known.
    pub fn node_of(&self, cpu: u32) -> Option<u32> {
        self.cpu(cpu).and_then(|c| c.node)
    }

    /// The node with this number.
    pub fn node(&self, id: u32) -> Option<&Node> {
        self.nodes.iter().find(|n| n.id == id)
    }

    /// Reads one interface's NUMA node and queue counts; `None` when sysfs does not know
    /// the interface.
    pub fn nic(&self, name: &str) -> Option<Nic> {
        read_nic(&self.root, name)
    }
}

/// Reads an interface under the sysfs root `root` (`class/net/NAME`).
pub fn read_nic(root: &Path, name: &str) -> Option<Nic> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return None;
    }
    let d = root.join("class/net").join(name);
    if !d.exists() {
        return None;
    }
    let numa_node = read_num::<i64>(&d.join("device/numa_node"))
        .filter(|&n| n >= 0)
        .map(|n| n as u32);
    let queues = d.join("queues");
    Nic {
        name: name.to_string(),
        numa_node,
        rx_queues: numbered(&queues, "rx-").len() as u16,
        tx_queues: numbered(&queues, "tx-").len() as u16,
    }
    .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_ranges() {
        let s: BTreeSet<u32> = [0, 1, 2, 3, 8, 10, 11].into();
        assert_eq!(format_cpuset(&s), "0-3,8,10-11");
        assert_eq!(format_cpuset(&BTreeSet::new()), "none");
        assert_eq!(parse_cpulist("0-3,8,10-11").unwrap(), s);
        assert_eq!(parse_cpulist("").unwrap(), BTreeSet::new());
        assert_eq!(parse_cpulist("5\n").unwrap(), [5].into());
        assert!(parse_cpulist("3-1").is_err());
        assert!(parse_cpulist("a").is_err());
        assert!(parse_cpulist("0-99999999").is_err());
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

    fn write(root: &Path, rel: &str, text: &str) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    /// A two-socket machine: cpus 0-3 on node 0, 4-7 on node 1, cpu 7 offline; one NIC on
    /// node 1 with 4 queue pairs, one virtual interface without a device.
    fn fake_sysfs(root: &Path) {
        write(root, "devices/system/cpu/present", "0-7\n");
        write(root, "devices/system/cpu/online", "0-6\n");
        for c in 0..8 {
            write(
                root,
                &format!("devices/system/cpu/cpu{c}/topology/core_id"),
                &format!("{}\n", c % 4),
            );
            write(
                root,
                &format!("devices/system/cpu/cpu{c}/topology/physical_package_id"),
                &format!("{}\n", c / 4),
            );
        }
        write(root, "devices/system/node/online", "0-1\n");
        write(root, "devices/system/node/node0/cpulist", "0-3\n");
        write(root, "devices/system/node/node1/cpulist", "4-7\n");
        write(
            root,
            "devices/system/node/node0/meminfo",
            "Node 0 MemTotal:       16318412 kB\nNode 0 MemFree:         1000 kB\n",
        );
        write(
            root,
            "devices/system/node/node0/hugepages/hugepages-2048kB/nr_hugepages",
            "256\n",
        );
        write(
            root,
            "devices/system/node/node0/hugepages/hugepages-2048kB/free_hugepages",
            "200\n",
        );
        write(root, "class/net/ens1f0/device/numa_node", "1\n");
        for q in 0..4 {
            write(
                root,
                &format!("class/net/ens1f0/queues/rx-{q}/rps_cpus"),
                "0\n",
            );
            write(
                root,
                &format!("class/net/ens1f0/queues/tx-{q}/xps_cpus"),
                "0\n",
            );
        }
        write(root, "class/net/veth0/queues/rx-0/rps_cpus", "0\n");
        write(root, "class/net/weird/device/numa_node", "-1\n");
    }

    #[test]
    fn reads_a_fake_two_node_tree() {
        let dir = std::env::temp_dir().join(format!("ss-topo-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        fake_sysfs(&dir);
        let t = Topology::read(&dir, [1, 2, 5].into());
        assert_eq!(t.cpus.len(), 8);
        assert_eq!(t.nodes.len(), 2);
        let c5 = t.cpu(5).unwrap();
        assert_eq!(
            (c5.node, c5.core_id, c5.package, c5.allowed, c5.online),
            (Some(1), Some(1), Some(1), true, true)
        );
        assert!(!t.cpu(7).unwrap().online);
        assert!(!t.cpu(0).unwrap().allowed);
        assert_eq!(t.node_of(2), Some(0));
        let n0 = t.node(0).unwrap();
        assert_eq!(n0.mem_total, Some(16318412 * 1024));
        assert_eq!(n0.hugepages_2m, Some(256));
        assert_eq!(n0.hugepages_2m_free, Some(200));
        assert_eq!(
            t.node(1).unwrap().mem_total,
            None,
            "missing meminfo stays unknown"
        );
        let nic = t.nic("ens1f0").unwrap();
        assert_eq!(
            (nic.numa_node, nic.rx_queues, nic.tx_queues),
            (Some(1), 4, 4)
        );
        assert_eq!(t.nic("veth0").unwrap().numa_node, None);
        assert_eq!(t.nic("weird").unwrap().numa_node, None, "-1 means unknown");
        assert!(t.nic("nope").is_none());
        assert!(t.nic("../devices").is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_tree_without_numa_is_one_node() {
        let dir = std::env::temp_dir().join(format!("ss-topo-flat-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        write(&dir, "devices/system/cpu/present", "0-1\n");
        let t = Topology::read(&dir, [0, 1].into());
        assert_eq!(t.nodes.len(), 1);
        assert_eq!(t.node_of(1), Some(0));
        assert_eq!(t.cpu(1).unwrap().core_id, None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn this_machine_has_a_topology() {
        let t = Topology::system();
        if t.cpus.is_empty() {
            eprintln!("SKIPPED: no sysfs at {SYSFS}");
            return;
        }
        for c in &allowed_cores() {
            assert!(t.cpu(*c).is_some(), "allowed cpu {c} is in sysfs");
        }
    }
}
