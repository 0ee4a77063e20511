//! `[[handlers]] kind = "kv"`: settings, validation, and the stores that outlive chain swaps.
//!
//! A chain update (`ctl handlers set ...`, `Handlers.Update`) builds new handler instances
//! from new settings. To keep the items across such an update, stores are looked up by
//! `name` in a process-wide table of weak references when instances are built: a store
//! with the same partition owners, item size limit and page kind, whose mapped memory
//! holds the new budget, is reused and given the new live settings — `memory_mb` (the budget; owners move to it
//! from their next burst, cuts in bounded steps) and `flush` (raising it empties the cache
//! once, the control plane's `flush_all`). A changed shape makes a new, empty store. The
//! old chain keeps the old store alive until the engine has swapped every worker, so no
//! request meets a missing store: each worker switches between two bursts.
//!
//! Memory is mapped when the first instance is built (not when the config is read:
//! `check-config` maps nothing).

use std::sync::{Arc, Mutex, OnceLock, Weak};

use dataplane::handlers::{Extension, HandlerStats, HandlerWorkerStats};
use dataplane::Handler;
use serde::{Deserialize, Serialize};

use crate::cache::{Shape, Store, MAX_WORKERS};
use crate::handler::Kv;
use crate::stats::Counters;
use crate::store::MIN_CAPACITY;

/// `kind = "kv"`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct KvSpec {
    /// UDP port served. Default: 11211 (memcached's).
    pub port: u16,
    /// The handler cores: worker ids (`0` is `w0`) that own one partition each; the key
    /// space is split evenly over them, and any worker that receives a request forwards it
    /// to the key's owner. Every one must be a running worker. Default: `[0]`.
    pub workers: Vec<u16>,
    /// Item memory over all partitions, MiB (memcached's `-m`). Live: a chain update
    /// changes it without losing items that still fit. Default: 64.
    pub memory_mb: u64,
    /// Memory mapped for items, MiB: the most `memory_mb` can later be raised to. 0: the
    /// same as `memory_mb`. Default: 0.
    pub max_memory_mb: u64,
    /// Largest item in bytes, key and memcached's 51 bytes of overhead included
    /// (memcached's `-I`). A request datagram carries at most about 1.4 KB, so only
    /// `append`/`prepend` make items near a large limit. Default: 1048576 (1 MiB).
    pub item_size_max: usize,
    /// Flush generation: every change empties the cache once, as `flush_all` does (the
    /// control plane's flush). Default: 0.
    pub flush: u64,
    /// The store's name: a chain update reuses the store of the same name (and shape).
    /// Default: `kv`.
    pub name: String,
    /// Map partitions on 2 MiB hugepages (falls back to 4k pages with one warning).
    /// Default: true.
    pub hugepages: bool,
}

impl Default for KvSpec {
    fn default() -> Self {
        KvSpec {
            port: 11211,
            workers: vec![0],
            memory_mb: 64,
            max_memory_mb: 0,
            item_size_max: 1 << 20,
            flush: 0,
            name: "kv".into(),
            hugepages: true,
        }
    }
}

const MIB: u64 = 1 << 20;

impl KvSpec {
    /// Checks the values; the message starts with the field's name.
    pub fn validate(&self) -> Result<(), String> {
        if self.port == 0 {
            return Err("port: 0 is not a valid UDP port; use 1-65535 (default 11211)".into());
        }
        if self.workers.is_empty() {
            return Err("workers: at least one worker must own a partition (default [0])".into());
        }
        if self.workers.len() > 255 {
            return Err(format!(
                "workers: {} partitions; at most 255",
                self.workers.len()
            ));
        }
        for (i, w) in self.workers.iter().enumerate() {
            if usize::from(*w) >= MAX_WORKERS {
                return Err(format!(
                    "workers: w{w} is beyond the {MAX_WORKERS} worker ids a store serves"
                ));
            }
            if self.workers[..i].contains(w) {
                return Err(format!("workers: w{w} is listed twice"));
            }
        }
        if self.memory_mb == 0 {
            return Err(
                "memory_mb: 0 leaves no room for items; use at least 1 (default 64)".into(),
            );
        }
        if self.memory_mb > 1 << 20 {
            return Err(format!(
                "memory_mb: {} MiB is more than 1 TiB",
                self.memory_mb
            ));
        }
        if self.max_memory_mb != 0 && self.max_memory_mb < self.memory_mb {
            return Err(format!(
                "max_memory_mb: {} is below memory_mb ({}); raise it or use 0 (= memory_mb)",
                self.max_memory_mb, self.memory_mb
            ));
        }
        if self.max_memory_mb > 1 << 20 {
            return Err(format!(
                "max_memory_mb: {} MiB is more than 1 TiB",
                self.max_memory_mb
            ));
        }
        if self.capacity() < MIN_CAPACITY {
            return Err(format!(
                "memory_mb: {} MiB over {} partitions leaves each less than {} KiB",
                self.memory_mb,
                self.workers.len(),
                MIN_CAPACITY >> 10
            ));
        }
        if !(1024..=1 << 30).contains(&self.item_size_max) {
            return Err(format!(
                "item_size_max: {} is out of range 1024..=1073741824 (memcached -I; default 1048576)",
                self.item_size_max
            ));
        }
        if self.item_size_max as u64 > self.capacity() {
            return Err(format!(
                "item_size_max: {} is larger than a partition ({} bytes); raise memory_mb",
                self.item_size_max,
                self.capacity()
            ));
        }
        if self.name.is_empty() {
            return Err("name: must not be empty (default \"kv\")".into());
        }
        Ok(())
    }

    /// Log bytes mapped per partition.
    pub fn capacity(&self) -> u64 {
        let max = if self.max_memory_mb == 0 {
            self.memory_mb
        } else {
            self.max_memory_mb
        };
        max * MIB / self.workers.len().max(1) as u64
    }

    fn shape(&self) -> Shape {
        Shape {
            owners: self.workers.clone(),
            capacity: self.capacity(),
            item_max: self.item_size_max,
            hugepages: self.hugepages,
        }
    }
}

/// Stores by name, for reuse across chain swaps.
static STORES: Mutex<Vec<(String, Weak<Store>)>> = Mutex::new(Vec::new());

/// Whether a store of `old` shape can serve `spec`: same partition owners, item size limit
/// and page kind, and enough mapped memory for the new budget (and for an explicit new
/// `max_memory_mb`).
fn fits(old: &Shape, spec: &KvSpec) -> bool {
    let n = spec.workers.len().max(1) as u64;
    old.owners == spec.workers
        && old.item_max == spec.item_size_max
        && old.hugepages == spec.hugepages
        && spec.memory_mb * MIB / n <= old.capacity
        && (spec.max_memory_mb == 0 || spec.capacity() <= old.capacity)
}

/// The store `spec` names, reused when it fits (with the live settings applied) or made
/// anew.
pub fn store_for(spec: &KvSpec) -> Result<Arc<Store>, String> {
    let mut stores = STORES.lock().unwrap_or_else(|e| e.into_inner());
    stores.retain(|(_, w)| w.strong_count() > 0);
    let shape = spec.shape();
    let budget = spec.memory_mb * MIB;
    if let Some(s) = stores
        .iter()
        .filter(|(n, _)| *n == spec.name)
        .find_map(|(_, w)| w.upgrade())
        .filter(|s| fits(s.shape(), spec))
    {
        s.set_budget(budget);
        let old = s
            .flush_gen
            .swap(spec.flush, std::sync::atomic::Ordering::AcqRel);
        if old != spec.flush {
            s.request_flush(0);
        }
        return Ok(s);
    }
    let store = Arc::new(
        Store::new(shape, budget, spec.flush).map_err(|e| format!("kv `{}`: {e}", spec.name))?,
    );
    stores.retain(|(n, _)| *n != spec.name);
    stores.push((spec.name.clone(), Arc::downgrade(&store)));
    Ok(store)
}

/// The parsed `kv` settings as a data-plane extension.
pub struct KvExt {
    spec: KvSpec,
    store: OnceLock<Option<Arc<Store>>>,
}

impl KvExt {
    pub fn new(spec: KvSpec) -> KvExt {
        KvExt {
            spec,
            store: OnceLock::new(),
        }
    }

    pub fn spec(&self) -> &KvSpec {
        &self.spec
    }

    /// The store, mapped on first use (`None` if mapping failed; logged once).
    pub fn store(&self) -> Option<&Arc<Store>> {
        self.store
            .get_or_init(|| match store_for(&self.spec) {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::error!("{e}: every kv request will get SERVER_ERROR out of memory");
                    None
                }
            })
            .as_ref()
    }
}

impl Extension for KvExt {
    fn settings(&self) -> serde_json::Value {
        serde_json::to_value(&self.spec).unwrap_or_default()
    }

    fn validate(&self) -> Result<(), String> {
        self.spec.validate()
    }

    fn build(&self) -> Box<dyn Handler> {
        Box::new(Kv::new(self.store().cloned(), self.spec.port))
    }

    fn stats(&self) -> Option<HandlerStats> {
        let store = self.store.get()?.as_ref()?;
        Some(HandlerStats {
            kind: "kv".into(),
            workers: store
                .rows()
                .into_iter()
                .map(|(worker, values)| HandlerWorkerStats {
                    worker,
                    counters: Counters::NAMES
                        .iter()
                        .map(|n| n.to_string())
                        .zip(values)
                        .collect(),
                })
                .collect(),
        })
    }
}

/// The parser registered for `kind = "kv"`.
pub fn parse(settings: &serde_json::Value) -> Result<Arc<dyn Extension>, String> {
    let spec: KvSpec = serde_json::from_value(settings.clone()).map_err(|e| e.to_string())?;
    Ok(Arc::new(KvExt::new(spec)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, mem: u64, max: u64) -> KvSpec {
        KvSpec {
            name: name.into(),
            memory_mb: mem,
            max_memory_mb: max,
            hugepages: false,
            ..KvSpec::default()
        }
    }

    /// A budget that fits the mapped memory keeps the store (and its items); one that does
    /// not, or other partition owners, make a new one.
    #[test]
    fn stores_are_kept_while_they_fit() {
        let a = store_for(&spec("reuse", 8, 0)).unwrap();
        let b = store_for(&spec("reuse", 4, 0)).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(b.budget(), 4 << 20);
        let c = store_for(&spec("reuse", 16, 0)).unwrap();
        assert!(!Arc::ptr_eq(&a, &c));
        let d = store_for(&KvSpec {
            workers: vec![0, 1],
            ..spec("reuse", 16, 0)
        })
        .unwrap();
        assert!(!Arc::ptr_eq(&c, &d));
        let e = store_for(&spec("other", 4, 0)).unwrap();
        assert!(!Arc::ptr_eq(&b, &e));
    }

    #[test]
    fn validate_names_the_field() {
        for (s, want) in [
            (
                KvSpec {
                    port: 0,
                    ..KvSpec::default()
                },
                "port:",
            ),
            (
                KvSpec {
                    workers: vec![],
                    ..KvSpec::default()
                },
                "workers:",
            ),
            (
                KvSpec {
                    workers: vec![1, 1],
                    ..KvSpec::default()
                },
                "workers: w1 is listed twice",
            ),
            (
                KvSpec {
                    workers: vec![64],
                    ..KvSpec::default()
                },
                "workers: w64",
            ),
            (
                KvSpec {
                    memory_mb: 0,
                    ..KvSpec::default()
                },
                "memory_mb:",
            ),
            (
                KvSpec {
                    max_memory_mb: 8,
                    ..KvSpec::default()
                },
                "max_memory_mb:",
            ),
            (
                KvSpec {
                    item_size_max: 10,
                    ..KvSpec::default()
                },
                "item_size_max:",
            ),
            (
                KvSpec {
                    memory_mb: 1,
                    item_size_max: 2 << 20,
                    ..KvSpec::default()
                },
                "item_size_max:",
            ),
            (
                KvSpec {
                    name: String::new(),
                    ..KvSpec::default()
                },
                "name:",
            ),
        ] {
            let e = s.validate().unwrap_err();
            assert!(e.starts_with(want), "{e:?} should start with {want:?}");
        }
        KvSpec::default().validate().unwrap();
    }
}
