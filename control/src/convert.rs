//! Between the engine's types and the wire's: reports to stats messages, handler specs to
//! and from `google.protobuf.Struct`, [`ChangeError`]s to gRPC statuses.
//!
//! Handler settings travel as a `Struct` holding exactly what a `[[handlers]]` table of
//! the config file holds, and are turned into a [`Spec`] by the same serde code that reads
//! the file, so the file and the API cannot drift apart and an unknown or misspelt setting
//! is an error naming it.

use std::collections::BTreeMap;

use dataplane::config::Idle;
use dataplane::control::{ChangeError, Moved, WorkerState};
use dataplane::engine::Report;
use dataplane::handlers::Spec;
use dataplane::stats::{DropCounts, Percentiles};
use dataplane::{QueueId, WorkerId};
use prost_types::value::Kind;
use tonic::{Code, Status};

use crate::pb;

/// The gRPC status for a refused change: the message names the field.
pub fn status(e: &ChangeError) -> Status {
    let code = match e {
        ChangeError::Invalid { .. } => Code::InvalidArgument,
        ChangeError::NotFound { .. } => Code::NotFound,
        ChangeError::Precondition { .. } => Code::FailedPrecondition,
        ChangeError::Internal(_) => Code::Internal,
    };
    Status::new(code, e.to_string())
}

pub fn invalid(field: &str, msg: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("{field}: {msg}"))
}

pub fn totals(r: &Report) -> pb::Totals {
    pb::Totals {
        received: r.received(),
        transmitted: r.transmitted(),
        dropped: r.drops().total(),
        slow_path: r.slow_path(),
        in_flight: r.in_flight(),
        generated: r.generated(),
    }
}

pub fn drops(d: &DropCounts) -> Vec<pb::DropCount> {
    d.nonzero()
        .map(|(r, n)| pb::DropCount {
            reason: r.as_str().to_string(),
            count: n,
        })
        .collect()
}

pub fn latency(p: &Percentiles) -> pb::Latency {
    pb::Latency {
        count: p.count,
        p50_ns: p.p50,
        p90_ns: p.p90,
        p99_ns: p.p99,
        p999_ns: p.p999,
        max_ns: p.max,
    }
}

pub fn worker_state(s: WorkerState) -> pb::WorkerState {
    match s {
        WorkerState::Planned => pb::WorkerState::Planned,
        WorkerState::Running => pb::WorkerState::Running,
        WorkerState::Removed => pb::WorkerState::Removed,
    }
}

pub fn idle(i: Idle) -> pb::IdlePolicy {
    match i {
        Idle::BusyPoll => pb::IdlePolicy::BusyPoll,
        Idle::Backoff => pb::IdlePolicy::Backoff,
    }
}

pub fn queue_ref(q: QueueId) -> pb::QueueRef {
    pb::QueueRef {
        port: q.port.0 as u32,
        queue: q.queue as u32,
    }
}

/// A queue from the wire; ids beyond u16 cannot exist, so they are NOT_FOUND.
pub fn queue_id(field: &str, q: Option<&pb::QueueRef>) -> Result<QueueId, Status> {
    let q = q.ok_or_else(|| invalid(field, "required (port and queue)"))?;
    match (u16::try_from(q.port), u16::try_from(q.queue)) {
        (Ok(p), Ok(n)) => Ok(QueueId::new(p, n)),
        _ => Err(Status::not_found(format!(
            "{field}: p{}:q{} does not exist",
            q.port, q.queue
        ))),
    }
}

pub fn worker_id(field: &str, w: u32) -> Result<WorkerId, Status> {
    u16::try_from(w)
        .map(WorkerId)
        .map_err(|_| Status::not_found(format!("{field}: w{w} does not exist")))
}

pub fn moved(m: &Moved) -> pb::Move {
    pb::Move {
        queue: Some(queue_ref(m.queue)),
        from: m.from.map(|w| w.0 as u32),
        to: m.to.0 as u32,
    }
}

/// Stats for the wire; `owner` says which worker polls each queue.
pub fn stats(r: &Report, owner: impl Fn(QueueId) -> Option<WorkerId>) -> pb::StatsSnapshot {
    pb::StatsSnapshot {
        elapsed_ns: r.elapsed.as_nanos() as u64,
        totals: Some(totals(r)),
        drops: drops(&r.drops()),
        latency: Some(latency(&r.latency)),
        workers: r
            .workers
            .iter()
            .map(|w| {
                let c = &w.counters;
                pb::WorkerStats {
                    id: w.id.0 as u32,
                    core: w.core.map(|c| c.0),
                    state: worker_state(w.state) as i32,
                    rx_packets: c.rx_packets,
                    rx_bytes: c.rx_bytes,
                    tx_packets: c.tx_packets,
                    tx_bytes: c.tx_bytes,
                    ring_in: c.ring_in,
                    ring_out: c.ring_out,
                    slow_path: c.slow_path,
                    copies: c.copies,
                    busy_polls: c.busy_polls,
                    idle_polls: c.idle_polls,
                    drops: drops(&c.drops),
                    latency: Some(latency(&w.latency)),
                    generated: c.generated,
                }
            })
            .collect(),
        ports: r
            .ports
            .iter()
            .map(|p| pb::PortStats {
                id: p.id.0 as u32,
                kind: p.kind.to_string(),
                rx_packets: p.stats.rx_packets,
                rx_bytes: p.stats.rx_bytes,
                tx_packets: p.stats.tx_packets,
                tx_bytes: p.stats.tx_bytes,
                drops: drops(&p.stats.drops),
                queues: p
                    .queues
                    .iter()
                    .enumerate()
                    .map(|(i, q)| pb::QueueStats {
                        queue: i as u32,
                        worker: owner(QueueId {
                            port: p.id,
                            queue: i as u16,
                        })
                        .map(|w| w.0 as u32),
                        rx_packets: q.rx_packets,
                        rx_bytes: q.rx_bytes,
                        tx_packets: q.tx_packets,
                        tx_bytes: q.tx_bytes,
                        drops: drops(&q.drops),
                    })
                    .collect(),
            })
            .collect(),
        handlers: r
            .handlers
            .iter()
            .map(|h| pb::HandlerStats {
                kind: h.kind.clone(),
                workers: h
                    .workers
                    .iter()
                    .map(|w| pb::HandlerWorkerStats {
                        worker: u32::from(w.worker.0),
                        counters: w
                            .counters
                            .iter()
                            .map(|(name, value)| pb::Counter {
                                name: name.clone(),
                                value: *value,
                            })
                            .collect(),
                    })
                    .collect(),
            })
            .collect(),
    }
}

/// `google.protobuf.Value` to JSON. Struct numbers are doubles; whole ones become integers
/// so that `{"port": 7}` reads as the u16 the spec wants.
pub fn value_to_json(v: &prost_types::Value) -> serde_json::Value {
    use serde_json::Value as J;
    match &v.kind {
        None | Some(Kind::NullValue(_)) => J::Null,
        Some(Kind::BoolValue(b)) => J::Bool(*b),
        Some(Kind::NumberValue(n)) => {
            if n.fract() == 0.0 && n.abs() < 9.007_199_254_740_992e15 {
                if *n >= 0.0 {
                    J::from(*n as u64)
                } else {
                    J::from(*n as i64)
                }
            } else {
                serde_json::Number::from_f64(*n).map_or(J::Null, J::Number)
            }
        }
        Some(Kind::StringValue(s)) => J::String(s.clone()),
        Some(Kind::ListValue(l)) => J::Array(l.values.iter().map(value_to_json).collect()),
        Some(Kind::StructValue(s)) => struct_to_json(s),
    }
}

pub fn struct_to_json(s: &prost_types::Struct) -> serde_json::Value {
    serde_json::Value::Object(
        s.fields
            .iter()
            .map(|(k, v)| (k.clone(), value_to_json(v)))
            .collect(),
    )
}

pub fn json_to_value(j: &serde_json::Value) -> prost_types::Value {
    use serde_json::Value as J;
    let kind = match j {
        J::Null => Kind::NullValue(0),
        J::Bool(b) => Kind::BoolValue(*b),
        J::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        J::String(s) => Kind::StringValue(s.clone()),
        J::Array(a) => Kind::ListValue(prost_types::ListValue {
            values: a.iter().map(json_to_value).collect(),
        }),
        J::Object(_) => Kind::StructValue(json_to_struct(j)),
    };
    prost_types::Value { kind: Some(kind) }
}

/// A JSON object as a Struct (anything else gives an empty Struct).
pub fn json_to_struct(j: &serde_json::Value) -> prost_types::Struct {
    let fields: BTreeMap<String, prost_types::Value> = match j {
        serde_json::Value::Object(m) => m
            .iter()
            .map(|(k, v)| (k.clone(), json_to_value(v)))
            .collect(),
        _ => BTreeMap::new(),
    };
    prost_types::Struct { fields }
}

/// A wire handler as a spec. The error names `handlers[i]` and the setting.
pub fn spec(i: usize, h: &pb::Handler) -> Result<Spec, Status> {
    let field = format!("handlers[{i}]");
    if h.kind.is_empty() {
        return Err(invalid(
            &format!("{field}.kind"),
            "required (udp-echo, macswap, arp, icmp)",
        ));
    }
    let mut obj = match h.settings.as_ref().map(struct_to_json) {
        Some(serde_json::Value::Object(m)) => m,
        _ => serde_json::Map::new(),
    };
    if obj.contains_key("kind") {
        return Err(invalid(
            &format!("{field}.settings"),
            "`kind` goes in the kind field, not in settings",
        ));
    }
    obj.insert("kind".into(), serde_json::Value::String(h.kind.clone()));
    serde_json::from_value::<Spec>(serde_json::Value::Object(obj)).map_err(|e| invalid(&field, e))
}

/// A spec for the wire: its kind, and the rest of its table as settings.
pub fn handler(s: &Spec) -> pb::Handler {
    let mut j = serde_json::to_value(s).unwrap_or_default();
    if let serde_json::Value::Object(m) = &mut j {
        m.remove("kind");
    }
    pb::Handler {
        kind: s.kind().to_string(),
        settings: Some(json_to_struct(&j)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dataplane::handlers::UdpEchoSpec;

    #[test]
    fn specs_round_trip_through_struct() {
        let specs: Vec<Spec> = serde_json::from_str(
            r#"[{"kind":"udp-echo","port":9},{"kind":"macswap"},
                {"kind":"arp","mac":"02:00:00:00:00:01","addresses":["198.18.0.1"]},
                {"kind":"icmp","addresses":["198.18.0.1","2001:db8::1"]}]"#,
        )
        .unwrap();
        for (i, s) in specs.iter().enumerate() {
            let h = handler(s);
            assert_eq!(&spec(i, &h).unwrap(), s);
        }
        assert_eq!(
            handler(&specs[0]).settings.unwrap().fields["port"].kind,
            Some(Kind::NumberValue(9.0))
        );
    }

    #[test]
    fn bad_settings_name_the_field() {
        let mut h = handler(&Spec::UdpEcho(UdpEchoSpec { port: 7 }));
        h.settings
            .as_mut()
            .unwrap()
            .fields
            .insert("prot".into(), json_to_value(&serde_json::json!(7)));
        let e = spec(2, &h).unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(
            e.message().starts_with("handlers[2]: unknown field `prot`"),
            "{}",
            e.message()
        );
        let e = spec(
            0,
            &pb::Handler {
                kind: "nope".into(),
                settings: None,
            },
        )
        .unwrap_err();
        assert!(
            e.message().contains("unknown variant `nope`"),
            "{}",
            e.message()
        );
        let e = spec(
            0,
            &pb::Handler {
                kind: String::new(),
                settings: None,
            },
        )
        .unwrap_err();
        assert!(
            e.message().starts_with("handlers[0].kind"),
            "{}",
            e.message()
        );
        let mut h = handler(&Spec::UdpEcho(UdpEchoSpec { port: 7 }));
        h.settings
            .as_mut()
            .unwrap()
            .fields
            .insert("port".into(), json_to_value(&serde_json::json!(7.5)));
        assert!(spec(0, &h).is_err(), "a fractional port is not a port");
    }
}
