//! Handler kinds that live outside this crate: `[[handlers]] kind = "kv"` when the program
//! linked a crate that registered `kv`.
//!
//! The hook is one call, [`register`]: a kind name and a function that turns the settings of
//! a `[[handlers]]` table (everything but `kind`, as a `serde_json::Value`) into an
//! [`Extension`]. After that the kind works everywhere a built-in one does, because
//! [`Spec`](super::Spec) carries it as [`Spec::Ext`](super::Spec::Ext): in the config file,
//! in `check-config` (settings printed back with defaults), in the control plane's
//! `Handlers.Update` (the same serde path), in live chain swaps, and in stats
//! ([`Extension::stats`], which the engine's report carries as [`HandlerStats`]).
//!
//! Shape, and what was rejected:
//! - A process-wide registry, filled by the binary before it reads its config (`main` calls
//!   `kv::register()`). The data plane cannot name crates that depend on it, and the config
//!   types are deserialized in many places (file, gRPC, tests), so the lookup must be
//!   reachable from `Spec`'s `Deserialize` without threading a context through every caller.
//!   Rejected: `Engine::new_with(cfg, extra_factory)` (the control plane's
//!   `Handlers.Update` and `check-config` would still not know the kind), and a generic
//!   `Spec<E>` (every user of `Spec` would change type).
//! - Settings travel as JSON values: both the TOML file and the gRPC `Struct` deserialize
//!   into one, and the extension deserializes its own settings type from it with
//!   `deny_unknown_fields`, so error messages name the field as for built-ins.
//! - Built-in kinds keep their derived serde code; only the unknown-kind error mentions the
//!   registered kinds too.
//!
//! Registration is not on the hot path: the registry is read when a config or an update is
//! parsed, never by a worker.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, RwLock};

use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};

use crate::packet::WorkerId;
use crate::pipeline::Handler;

/// A handler kind defined outside this crate: its parsed settings, able to check them,
/// build handler instances (one per worker, like built-ins) and report counters.
pub trait Extension: Send + Sync + 'static {
    /// The settings as a `[[handlers]]` table would spell them, without `kind`, with every
    /// default filled in (printed by `check-config`, returned by the control plane).
    fn settings(&self) -> serde_json::Value;

    /// Checks values serde cannot; the message starts with the field name
    /// (`"memory_mb: 0 is too small; ..."`), as for built-ins.
    fn validate(&self) -> Result<(), String> {
        Ok(())
    }

    /// One handler instance (called once per worker, and again on every chain swap).
    fn build(&self) -> Box<dyn Handler>;

    /// Per-worker counters, for `ctl stats`, the gRPC API and the run report. `None`: the
    /// handler keeps none.
    fn stats(&self) -> Option<HandlerStats> {
        None
    }
}

/// Turns the settings of a `[[handlers]]` table (without `kind`) into an extension, or
/// says what is wrong with them (the message names the field).
pub type ParseFn = fn(&serde_json::Value) -> Result<Arc<dyn Extension>, String>;

static REGISTRY: RwLock<Vec<(&'static str, ParseFn)>> = RwLock::new(Vec::new());

/// Kinds built into this crate; an extension cannot take their names.
pub const BUILTIN_KINDS: [&str; 5] = ["macswap", "udp-echo", "arp", "icmp", "lb"];

/// Makes `kind` usable in `[[handlers]]` tables from now on. Registering a kind again
/// replaces its parser (idempotent for the same function). Fails for a built-in name.
pub fn register(kind: &'static str, parse: ParseFn) -> Result<(), String> {
    if BUILTIN_KINDS.contains(&kind) {
        return Err(format!("`{kind}` is a built-in handler kind"));
    }
    if kind.is_empty() || !kind.bytes().all(|b| b.is_ascii_lowercase() || b == b'-') {
        return Err(format!("`{kind}`: kinds are lowercase letters and `-`"));
    }
    let mut r = REGISTRY.write().unwrap_or_else(|e| e.into_inner());
    match r.iter_mut().find(|(k, _)| *k == kind) {
        Some(entry) => entry.1 = parse,
        None => r.push((kind, parse)),
    }
    Ok(())
}

/// The registered kinds, in registration order.
pub fn kinds() -> Vec<&'static str> {
    let r = REGISTRY.read().unwrap_or_else(|e| e.into_inner());
    r.iter().map(|(k, _)| *k).collect()
}

pub(super) fn lookup(kind: &str) -> Option<(&'static str, ParseFn)> {
    let r = REGISTRY.read().unwrap_or_else(|e| e.into_inner());
    r.iter().find(|(k, _)| *k == kind).copied()
}

/// A `[[handlers]]` entry of a registered kind.
#[derive(Clone)]
pub struct ExtSpec {
    kind: &'static str,
    ext: Arc<dyn Extension>,
}

impl ExtSpec {
    /// Parses `settings` (a table without `kind`) with the parser registered for `kind`.
    pub fn parse(kind: &str, settings: &serde_json::Value) -> Result<ExtSpec, String> {
        let (kind, parse) = lookup(kind).ok_or_else(|| {
            format!(
                "unknown handler kind `{kind}` (built in: {}; registered: {})",
                BUILTIN_KINDS.join(", "),
                kinds().join(", ")
            )
        })?;
        Ok(ExtSpec {
            kind,
            ext: parse(settings)?,
        })
    }

    /// The registered kind.
    pub fn kind(&self) -> &'static str {
        self.kind
    }

    /// The parsed extension.
    pub fn extension(&self) -> &Arc<dyn Extension> {
        &self.ext
    }
}

impl PartialEq for ExtSpec {
    fn eq(&self, other: &ExtSpec) -> bool {
        self.kind == other.kind && self.ext.settings() == other.ext.settings()
    }
}

impl fmt::Debug for ExtSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExtSpec")
            .field("kind", &self.kind)
            .field("settings", &self.ext.settings())
            .finish()
    }
}

impl Serialize for ExtSpec {
    /// `kind` first, then the settings, as one table.
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let settings = self.ext.settings();
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("kind", self.kind)?;
        if let serde_json::Value::Object(o) = &settings {
            for (k, v) in o {
                if k != "kind" {
                    m.serialize_entry(k, v)?;
                }
            }
        }
        m.end()
    }
}

/// Counters an extension keeps per worker (for example the `kv` cache's hits, misses,
/// evictions, items and bytes per partition core).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct HandlerStats {
    /// The handler kind.
    pub kind: String,
    /// One row per worker that has counters, by worker id.
    pub workers: Vec<HandlerWorkerStats>,
}

/// One worker's counters of one handler, in display order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HandlerWorkerStats {
    pub worker: WorkerId,
    pub counters: Vec<(String, u64)>,
}

impl HandlerWorkerStats {
    /// The counter called `name`, if present.
    pub fn get(&self, name: &str) -> Option<u64> {
        self.counters
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| *v)
    }
}

impl Serialize for HandlerWorkerStats {
    /// `{"worker": "w0", "counters": {"hits": 1, ...}}`, counters in display order.
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        struct Ordered<'a>(&'a [(String, u64)]);
        impl Serialize for Ordered<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let mut m = s.serialize_map(Some(self.0.len()))?;
                for (k, v) in self.0 {
                    m.serialize_entry(k, v)?;
                }
                m.end()
            }
        }
        let mut m = s.serialize_map(Some(2))?;
        m.serialize_entry("worker", &self.worker)?;
        m.serialize_entry("counters", &Ordered(&self.counters))?;
        m.end()
    }
}

/// Sums every worker's counters of `stats` by name (counters in first-seen order).
pub fn totals(stats: &HandlerStats) -> Vec<(String, u64)> {
    let mut order: Vec<String> = Vec::new();
    let mut sums: BTreeMap<String, u64> = BTreeMap::new();
    for w in &stats.workers {
        for (k, v) in &w.counters {
            if !sums.contains_key(k) {
                order.push(k.clone());
            }
            *sums.entry(k.clone()).or_default() += v;
        }
    }
    order
        .into_iter()
        .map(|k| {
            let v = sums[&k];
            (k, v)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handlers::Spec;
    use crate::pipeline::{Context, Verdict};
    use crate::Frame;

    /// A registered kind that drops everything, with one setting.
    #[derive(Debug, serde::Deserialize, serde::Serialize)]
    #[serde(deny_unknown_fields)]
    struct Settings {
        #[serde(default)]
        level: u8,
    }

    struct DropAll;

    impl Handler for DropAll {
        fn name(&self) -> &str {
            "drop-all"
        }
        fn process(&mut self, _: &mut [Frame], verdicts: &mut [Verdict], _: &Context) {
            for v in verdicts {
                *v = Verdict::Drop(crate::DropReason::Filtered);
            }
        }
    }

    struct Ext(Settings);

    impl Extension for Ext {
        fn settings(&self) -> serde_json::Value {
            serde_json::to_value(&self.0).unwrap_or_default()
        }
        fn validate(&self) -> Result<(), String> {
            if self.0.level > 3 {
                return Err(format!("level: {} is above 3", self.0.level));
            }
            Ok(())
        }
        fn build(&self) -> Box<dyn Handler> {
            Box::new(DropAll)
        }
        fn stats(&self) -> Option<HandlerStats> {
            Some(HandlerStats {
                kind: "drop-all".into(),
                workers: vec![HandlerWorkerStats {
                    worker: WorkerId(0),
                    counters: vec![("level".into(), self.0.level as u64)],
                }],
            })
        }
    }

    fn parse(v: &serde_json::Value) -> Result<Arc<dyn Extension>, String> {
        let s: Settings = serde_json::from_value(v.clone()).map_err(|e| e.to_string())?;
        Ok(Arc::new(Ext(s)))
    }

    #[derive(Debug, serde::Deserialize, serde::Serialize)]
    struct Chain {
        handlers: Vec<Spec>,
    }

    #[test]
    fn a_registered_kind_parses_validates_builds_and_prints_back() {
        register("drop-all", parse).unwrap();
        assert!(kinds().contains(&"drop-all"));
        let chain: Chain = toml::from_str(
            "[[handlers]]\nkind = \"drop-all\"\nlevel = 2\n\n[[handlers]]\nkind = \"udp-echo\"\n",
        )
        .unwrap();
        let Spec::Ext(e) = &chain.handlers[0] else {
            panic!("{:?}", chain.handlers[0]);
        };
        assert_eq!(e.kind(), "drop-all");
        assert_eq!(chain.handlers[0].kind(), "drop-all");
        chain.handlers[0].validate().unwrap();
        assert_eq!(chain.handlers[0].build().name(), "drop-all");
        assert_eq!(
            chain.handlers[0].stats().unwrap().workers[0].get("level"),
            Some(2)
        );
        assert!(chain.handlers[1].stats().is_none());
        // Printed back with its settings, and read back equal; JSON too (control plane).
        let text = toml::to_string(&chain).unwrap();
        assert!(text.contains("kind = \"drop-all\"\nlevel = 2"), "{text}");
        let again: Chain = toml::from_str(&text).unwrap();
        assert_eq!(again.handlers, chain.handlers);
        let json = serde_json::to_value(&chain.handlers).unwrap();
        let back: Vec<Spec> = serde_json::from_value(json).unwrap();
        assert_eq!(back, chain.handlers);

        let bad: Chain = toml::from_str("[[handlers]]\nkind = \"drop-all\"\nlevel = 9\n").unwrap();
        assert_eq!(
            bad.handlers[0].validate().unwrap_err(),
            "level: 9 is above 3"
        );
        let e = toml::from_str::<Chain>("[[handlers]]\nkind = \"drop-all\"\nlevle = 1\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `levle`"), "{e}");
    }

    #[test]
    fn built_in_kinds_keep_their_messages_and_unknown_kinds_list_registered_ones() {
        register("drop-all", parse).unwrap();
        let e = toml::from_str::<Chain>("[[handlers]]\nkind = \"udp-echo\"\nprot = 7\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `prot`, expected `port`"), "{e}");
        let e = serde_json::from_str::<Spec>(r#"{"kind":"nope"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown variant `nope`"), "{e}");
        assert!(e.contains("drop-all"), "{e}");
        assert!(register("udp-echo", parse).is_err());
        assert!(register("Bad Name", parse).is_err());
    }
}
