//! `counters.toml`: the expected counters of a replay case.
//!
//! Per port: packets and bytes received and transmitted, and the drops the port made itself
//! (`oversize`). Totals: packets received and transmitted over all ports, drops by reason
//! over ports and workers, and packets given to the slow path. Drop reasons use the names of
//! [`DropReason::as_str`]; a reason that is absent is expected to be 0, so files only list
//! what happened. Unknown keys and unknown reasons are errors, as in the config file.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::packet::PortId;
use crate::pipeline::DropReason;
use crate::stats::{DropCounts, QueueSnapshot};

/// Counters of one port.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PortCounters {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    /// Drops made by the port itself, by reason.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub drops: BTreeMap<String, u64>,
}

/// Totals over every port and worker.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Totals {
    pub rx_packets: u64,
    pub tx_packets: u64,
    pub slow_path: u64,
    /// Drops by reason, ports and workers together.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub drops: BTreeMap<String, u64>,
}

/// The whole file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Counters {
    pub total: Totals,
    /// By port name (`p0`, `p1`, ...).
    pub ports: BTreeMap<String, PortCounters>,
}

fn drop_map(d: &DropCounts) -> BTreeMap<String, u64> {
    d.nonzero()
        .map(|(r, n)| (r.as_str().to_string(), n))
        .collect()
}

fn check_reasons(map: &BTreeMap<String, u64>, at: &str) -> Result<(), String> {
    for k in map.keys() {
        k.parse::<DropReason>()
            .map_err(|e| format!("{at}.drops: {e}"))?;
    }
    Ok(())
}

impl Counters {
    /// Counters from per-port snapshots, the drops of the whole run (ports and workers) and
    /// the slow-path count.
    pub fn from_parts(
        ports: &[(PortId, QueueSnapshot)],
        drops: &DropCounts,
        slow_path: u64,
    ) -> Counters {
        let mut c = Counters {
            total: Totals {
                slow_path,
                drops: drop_map(drops),
                ..Totals::default()
            },
            ports: BTreeMap::new(),
        };
        for (id, s) in ports {
            c.total.rx_packets += s.rx_packets;
            c.total.tx_packets += s.tx_packets;
            c.ports.insert(
                id.to_string(),
                PortCounters {
                    rx_packets: s.rx_packets,
                    rx_bytes: s.rx_bytes,
                    tx_packets: s.tx_packets,
                    tx_bytes: s.tx_bytes,
                    drops: drop_map(&s.drops),
                },
            );
        }
        c
    }

    /// Parses a `counters.toml`; `path` only labels errors.
    pub fn parse(text: &str, path: &Path) -> Result<Counters, String> {
        let c: Counters = toml::from_str(text)
            .map_err(|e| format!("{}: {}", path.display(), e.to_string().trim_end()))?;
        check_reasons(&c.total.drops, "total").map_err(|e| format!("{}: {e}", path.display()))?;
        for (name, p) in &c.ports {
            name.parse::<PortId>().map_err(|_| {
                format!(
                    "{}: ports.{name}: not a port name (p0, p1, ...)",
                    path.display()
                )
            })?;
            check_reasons(&p.drops, &format!("ports.{name}"))
                .map_err(|e| format!("{}: {e}", path.display()))?;
        }
        Ok(c)
    }

    /// The counters as TOML, without a header comment.
    pub fn body(&self) -> String {
        // Cannot fail: plain maps of integers.
        toml::to_string(self).expect("counters serialize")
    }

    /// The file's text, with a header comment naming the case.
    pub fn to_toml(&self, case: &str) -> String {
        let body = self.body();
        format!(
            "# Expected counters of replay case `{case}`.\n\
             # Written by `slipstream replay --regen`; check by hand before committing.\n\
             # A drop reason that is not listed is expected to be 0.\n\n{body}"
        )
    }

    /// Every difference, as `what expected X, got Y`, in a fixed order (totals first, then
    /// ports by name).
    pub fn diff(expected: &Counters, got: &Counters) -> Vec<String> {
        let mut out = Vec::new();
        fn num(out: &mut Vec<String>, what: String, e: u64, g: u64) {
            if e != g {
                out.push(format!("{what} expected {e}, got {g}"));
            }
        }
        let (e, g) = (&expected.total, &got.total);
        num(&mut out, "rx_packets".into(), e.rx_packets, g.rx_packets);
        num(&mut out, "tx_packets".into(), e.tx_packets, g.tx_packets);
        num(&mut out, "slow_path".into(), e.slow_path, g.slow_path);
        for r in DropReason::ALL {
            let k = r.as_str();
            num(
                &mut out,
                format!("drops.{k}"),
                e.drops.get(k).copied().unwrap_or(0),
                g.drops.get(k).copied().unwrap_or(0),
            );
        }
        let empty = PortCounters::default();
        let names: std::collections::BTreeSet<&String> =
            expected.ports.keys().chain(got.ports.keys()).collect();
        for name in names {
            match (expected.ports.get(name), got.ports.get(name)) {
                (Some(_), None) => out.push(format!("{name}: expected the port, the run has none")),
                (None, Some(_)) => out.push(format!(
                    "{name}: the run has the port, counters.toml does not"
                )),
                _ => {}
            }
            let e = expected.ports.get(name).unwrap_or(&empty);
            let g = got.ports.get(name).unwrap_or(&empty);
            num(
                &mut out,
                format!("{name}.rx_packets"),
                e.rx_packets,
                g.rx_packets,
            );
            num(&mut out, format!("{name}.rx_bytes"), e.rx_bytes, g.rx_bytes);
            num(
                &mut out,
                format!("{name}.tx_packets"),
                e.tx_packets,
                g.tx_packets,
            );
            num(&mut out, format!("{name}.tx_bytes"), e.tx_bytes, g.tx_bytes);
            for r in DropReason::ALL {
                let k = r.as_str();
                num(
                    &mut out,
                    format!("{name}.drops.{k}"),
                    e.drops.get(k).copied().unwrap_or(0),
                    g.drops.get(k).copied().unwrap_or(0),
                );
            }
        }
        out
    }

    /// One line for humans: `rx 5 tx 4 slow_path 0 drops unhandled=1`.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "rx {} tx {} slow_path {} drops",
            self.total.rx_packets, self.total.tx_packets, self.total.slow_path
        );
        if self.total.drops.is_empty() {
            s.push_str(" none");
        }
        for r in DropReason::ALL {
            if let Some(n) = self.total.drops.get(r.as_str()) {
                s.push_str(&format!(" {}={n}", r.as_str()));
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Counters {
        let mut port = QueueSnapshot {
            rx_packets: 5,
            rx_bytes: 400,
            tx_packets: 3,
            tx_bytes: 200,
            ..QueueSnapshot::default()
        };
        port.drops.0[DropReason::Oversize.index()] = 1;
        let mut drops = DropCounts::default();
        drops.0[DropReason::Oversize.index()] = 1;
        drops.0[DropReason::BadIhl.index()] = 1;
        Counters::from_parts(
            &[(PortId(0), port), (PortId(1), QueueSnapshot::default())],
            &drops,
            0,
        )
    }

    #[test]
    fn round_trips_through_toml() {
        let c = sample();
        let text = c.to_toml("t");
        assert!(text.contains("[ports.p0.drops]"), "{text}");
        assert_eq!(Counters::parse(&text, Path::new("c.toml")).unwrap(), c);
    }

    #[test]
    fn diff_names_every_mismatch() {
        let e = sample();
        let mut g = sample();
        g.total.drops.remove("bad_ihl");
        g.ports.get_mut("p0").unwrap().tx_packets = 4;
        assert_eq!(
            Counters::diff(&e, &g),
            vec![
                "drops.bad_ihl expected 1, got 0".to_string(),
                "p0.tx_packets expected 3, got 4".to_string()
            ]
        );
        assert!(Counters::diff(&e, &e).is_empty());
    }

    #[test]
    fn unknown_reasons_and_keys_are_refused() {
        let p = Path::new("c.toml");
        assert!(
            Counters::parse("[total]\n[total.drops]\nbogus = 1\n[ports]\n", p)
                .unwrap_err()
                .contains("bogus")
        );
        assert!(Counters::parse("[total]\nrx = 1\n[ports]\n", p).is_err());
        assert!(Counters::parse("[total]\n[ports.x0]\n", p)
            .unwrap_err()
            .contains("x0"));
    }
}
