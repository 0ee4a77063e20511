//! Live changes under full load: queue moves, workers coming and going, handler and idle
//! policy swaps, while memory ports generate traffic as fast as the workers take it. Every
//! test checks conservation exactly: each generated packet was transmitted (or, where the
//! test says so, counted as a drop by reason), and every frame is back in its pool.
//!
//! Rejected changes are checked too: the right error kind, the field named, and nothing
//! changed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dataplane::config::{EngineConfig, Idle, Mode};
use dataplane::control::{ChangeError, WorkerState};
use dataplane::engine::{Engine, WorkerPlan};
use dataplane::handlers::{MacswapSpec, Spec, UdpEchoSpec};
use dataplane::port::memory::{MemoryOptions, Sink, Source};
use dataplane::port::{Memory, Port};
use dataplane::{
    Context, CoreId, DropReason, Frame, Handler, Pipeline, PortId, QueueId, Verdict, WorkerId,
};

fn generator(queues: u16, per_queue: u64) -> Arc<Memory> {
    Memory::new(
        PortId(0),
        MemoryOptions {
            queues,
            frames: 4096,
            frame_size: 2048,
            memory: dataplane::mem::Options {
                hugepages: false,
                numa_node: None,
            },
            source: Source::Generate {
                templates: (0..64)
                    .map(|f| dataplane::wire::build::udp4_request_of_size(64, f, 7))
                    .collect(),
                limit: Some(per_queue),
            },
            sink: Sink::Discard,
            ring_size: 1024,
        },
    )
    .unwrap()
}

fn cfg(mode: Mode) -> EngineConfig {
    EngineConfig {
        mode,
        burst: 32,
        ring_size: 4096,
        hugepages: false,
        ..EngineConfig::default()
    }
}

fn udp_echo() -> Vec<Spec> {
    vec![Spec::UdpEcho(UdpEchoSpec::default())]
}

fn macswap() -> Vec<Spec> {
    vec![Spec::Macswap(MacswapSpec {})]
}

fn chain(specs: &[Spec]) -> Pipeline {
    Pipeline::new(specs.iter().map(|s| s.build()).collect())
}

fn plan(queues: &[QueueId]) -> WorkerPlan {
    WorkerPlan {
        core: None,
        queues: queues.to_vec(),
    }
}

fn q(n: u16) -> QueueId {
    QueueId::new(0, n)
}

/// Waits until the port has received `more` packets beyond `from` (traffic is flowing), or
/// returns false when the input ended first.
fn flowing(engine: &Engine, port: &Memory, from: u64, more: u64) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = engine.snapshot().received();
        if now >= from + more {
            return true;
        }
        if port.rx_finished() {
            return false;
        }
        assert!(Instant::now() < deadline, "traffic stalled at {now}");
        std::thread::sleep(Duration::from_micros(100));
    }
}

#[test]
fn queue_moves_worker_changes_and_handler_swaps_lose_nothing() {
    const QUEUES: u16 = 4;
    const PER_QUEUE: u64 = 750_000;
    let p0 = generator(QUEUES, PER_QUEUE);
    let mut engine = Engine::from_parts(
        &cfg(Mode::RunToCompletion),
        vec![p0.clone() as Arc<dyn Port>],
        vec![plan(&[q(0), q(1)]), plan(&[q(2), q(3)])],
        vec![chain(&udp_echo()), chain(&udp_echo())],
    )
    .unwrap();
    engine.set_handlers(None, udp_echo()).unwrap();
    engine.start().unwrap();

    let mut changes_under_load = 0;
    let mut round = 0u16;
    while round < 40 {
        let before = engine.snapshot().received();
        if !flowing(&engine, &p0, before, 5_000) {
            break;
        }
        // Move a queue to the other original worker and back again later.
        let mover = q(round % QUEUES);
        let owner = engine.queue_owner(mover).unwrap();
        let other = if owner == WorkerId(0) {
            WorkerId(1)
        } else {
            WorkerId(0)
        };
        assert_eq!(engine.assign(mover, other).unwrap(), Some(owner));
        // A new worker takes a queue, then leaves; its queue moves back automatically.
        let w = engine.add_worker(None, &[q((round + 1) % QUEUES)]).unwrap();
        assert!(w.0 >= 2);
        if round & 1 == 0 {
            engine
                .set_handlers(
                    None,
                    if round & 3 == 0 {
                        macswap()
                    } else {
                        udp_echo()
                    },
                )
                .unwrap();
        } else {
            let idle = if round & 3 == 1 {
                Idle::Backoff
            } else {
                Idle::BusyPoll
            };
            engine.set_idle(None, idle, Some(50)).unwrap();
        }
        let moves = engine.remove_worker(w).unwrap();
        assert_eq!(moves.len(), 1, "{moves:?}");
        changes_under_load += 5;
        round += 1;
    }
    assert!(
        changes_under_load >= 50,
        "only {changes_under_load} changes happened while traffic flowed; raise PER_QUEUE"
    );
    let workers = engine.workers();
    assert!(workers.iter().any(|w| w.state == WorkerState::Removed));
    let report = engine.run_to_end(Duration::from_secs(120)).unwrap();
    report.check_conservation().unwrap();
    let generated = QUEUES as u64 * PER_QUEUE;
    assert_eq!(
        report.received(),
        generated,
        "every queue generated its packets"
    );
    assert_eq!(
        report.drops().total(),
        0,
        "no drop at all: {:?}",
        report.drops()
    );
    assert_eq!(report.transmitted(), generated, "every packet answered");
    p0.pool().verify().unwrap();
    eprintln!(
        "{changes_under_load} live changes over {} packets in {:.2?}",
        generated, report.elapsed
    );
}

/// Sends every packet out of p0:q0, whoever received it: frames cross workers over rings
/// to q0's owner, so moving q0 exercises the parking and forwarding of frames in transit.
struct AllToQ0;

impl Handler for AllToQ0 {
    fn name(&self) -> &str {
        "all-to-q0"
    }
    fn process(&mut self, _frames: &mut [Frame], verdicts: &mut [Verdict], _cx: &Context) {
        for v in verdicts.iter_mut() {
            if *v == Verdict::Next {
                *v = Verdict::Tx(q(0));
            }
        }
    }
}

#[test]
fn moving_a_queue_that_others_transmit_on_loses_nothing_in_transit() {
    const PER_QUEUE: u64 = 600_000;
    let p0 = generator(3, PER_QUEUE);
    let mut engine = Engine::from_parts(
        &cfg(Mode::RunToCompletion),
        vec![p0.clone() as Arc<dyn Port>],
        vec![plan(&[q(0)]), plan(&[q(1)]), plan(&[q(2)])],
        vec![
            Pipeline::new(vec![Box::new(AllToQ0)]),
            Pipeline::new(vec![Box::new(AllToQ0)]),
            Pipeline::new(vec![Box::new(AllToQ0)]),
        ],
    )
    .unwrap();
    engine
        .set_chain(Arc::new(|| Pipeline::new(vec![Box::new(AllToQ0)])))
        .unwrap();
    engine.start().unwrap();
    let mut moves = 0;
    for i in 0..60u16 {
        let before = engine.snapshot().received();
        if !flowing(&engine, &p0, before, 2_000) {
            break;
        }
        engine.assign(q(0), WorkerId(i % 3)).unwrap();
        moves += 1;
    }
    assert!(
        moves >= 20,
        "only {moves} moves under load; raise PER_QUEUE"
    );
    let report = engine.run_to_end(Duration::from_secs(120)).unwrap();
    report.check_conservation().unwrap();
    let generated = 3 * PER_QUEUE;
    assert_eq!(report.received(), generated);
    // Only a full ring may drop (counted); with rings of 4096 and bursts of 32 none does.
    let d = report.drops();
    assert_eq!(d.total(), d.get(DropReason::RingFull), "{d:?}");
    assert_eq!(report.transmitted() + d.total(), generated);
    assert_eq!(
        d.get(DropReason::NoRoute),
        0,
        "a queue in transit is never a missing route"
    );
    assert!(
        report.worker_totals().ring_out > 0,
        "frames crossed workers"
    );
}

#[test]
fn pipeline_mode_workers_come_and_go_without_loss() {
    const PER_QUEUE: u64 = 400_000;
    let p0 = generator(2, PER_QUEUE);
    let mut engine = Engine::from_parts(
        &cfg(Mode::Pipeline),
        vec![p0.clone() as Arc<dyn Port>],
        vec![plan(&[q(0)]), plan(&[q(1)])],
        vec![chain(&macswap()), chain(&macswap())],
    )
    .unwrap();
    engine.set_handlers(None, macswap()).unwrap();
    engine.start().unwrap();
    let mut rounds = 0;
    for i in 0..30u16 {
        let before = engine.snapshot().received();
        if !flowing(&engine, &p0, before, 2_000) {
            break;
        }
        // A handler core joins the spreading, then leaves while flows are spread to it.
        let w = engine.add_worker(None, &[]).unwrap();
        let before = engine.snapshot().received();
        if flowing(&engine, &p0, before, 1_000) {
            rounds += 1;
        }
        engine.remove_worker(w).unwrap();
        engine.assign(q(i % 2), WorkerId(i / 2 % 2)).unwrap();
    }
    assert!(rounds >= 10, "only {rounds} rounds under load");
    let report = engine.run_to_end(Duration::from_secs(120)).unwrap();
    report.check_conservation().unwrap();
    let generated = 2 * PER_QUEUE;
    assert_eq!(report.received(), generated);
    let d = report.drops();
    assert_eq!(
        d.total(),
        d.get(DropReason::RingFull),
        "only counted ring overflow: {d:?}"
    );
    assert_eq!(report.transmitted() + d.total(), generated);
    let removed: u64 = report
        .workers
        .iter()
        .filter(|w| w.id.0 >= 2)
        .map(|w| w.counters.ring_in)
        .sum();
    assert!(removed > 0, "added workers got a share of the flows");
}

#[test]
fn rejected_changes_name_the_field_and_change_nothing() {
    let p0 = generator(2, 1_000);
    let mut engine = Engine::from_parts(
        &cfg(Mode::RunToCompletion),
        vec![p0.clone() as Arc<dyn Port>],
        vec![plan(&[q(0)])],
        vec![chain(&udp_echo())],
    )
    .unwrap();
    assert!(matches!(
        engine.assign(q(1), WorkerId(0)),
        Err(ChangeError::Precondition { ref field, .. }) if field == "engine"
    ));
    engine.set_handlers(None, udp_echo()).unwrap();
    engine.start().unwrap();
    let before = engine.workers();
    let version = engine.chain().version;

    let e = engine.assign(QueueId::new(0, 9), WorkerId(0)).unwrap_err();
    assert!(matches!(e, ChangeError::NotFound { .. }), "{e:?}");
    assert_eq!(e.field(), Some("queue"));
    assert!(e.to_string().contains("p0:q9"), "{e}");
    let e = engine.assign(QueueId::new(3, 0), WorkerId(0)).unwrap_err();
    assert!(e.to_string().contains("port p3 does not exist"), "{e}");
    let e = engine.assign(q(1), WorkerId(7)).unwrap_err();
    assert!(
        matches!(e, ChangeError::NotFound { .. }) && e.field() == Some("worker"),
        "{e:?}"
    );

    let e = engine.add_worker(Some(CoreId(4000)), &[]).unwrap_err();
    assert!(
        matches!(e, ChangeError::Precondition { .. }) && e.field() == Some("core"),
        "{e:?}"
    );
    let e = engine.add_worker(None, &[q(1), q(1)]).unwrap_err();
    assert!(
        matches!(e, ChangeError::Invalid { .. }) && e.field() == Some("queues[1]"),
        "{e:?}"
    );
    let e = engine.add_worker(None, &[QueueId::new(0, 5)]).unwrap_err();
    assert!(
        matches!(e, ChangeError::NotFound { .. }) && e.field() == Some("queues[0]"),
        "{e:?}"
    );

    let e = engine.remove_worker(WorkerId(0)).unwrap_err();
    assert!(
        matches!(e, ChangeError::Precondition { .. }) && e.to_string().contains("last worker"),
        "{e:?}"
    );
    let e = engine.set_idle(None, Idle::Backoff, Some(0)).unwrap_err();
    assert_eq!(e.field(), Some("backoff_max_us"));

    let bad = vec![
        Spec::UdpEcho(UdpEchoSpec::default()),
        Spec::UdpEcho(UdpEchoSpec { port: 0 }),
    ];
    let e = engine.set_handlers(None, bad).unwrap_err();
    assert!(matches!(e, ChangeError::Invalid { .. }), "{e:?}");
    assert_eq!(e.field(), Some("handlers[1].port"));
    let e = engine
        .set_handlers(Some(version + 5), macswap())
        .unwrap_err();
    assert!(
        matches!(e, ChangeError::Precondition { .. }) && e.field() == Some("base_version"),
        "{e:?}"
    );

    assert_eq!(engine.workers(), before, "nothing changed");
    assert_eq!(engine.chain().version, version);
    assert_eq!(engine.chain().specs, Some(udp_echo()));
    assert_eq!(
        engine.set_handlers(Some(version), macswap()).unwrap(),
        version + 1
    );

    // An unowned queue is opened on assignment and then polled.
    assert_eq!(engine.assign(q(1), WorkerId(0)).unwrap(), None);
    let report = engine.run_to_end(Duration::from_secs(30)).unwrap();
    assert_eq!(report.received(), 2_000);
    assert_eq!(report.transmitted(), 2_000);
}

#[test]
fn drain_stops_receiving_and_flushes_then_resume_continues() {
    let p0 = generator(1, 200_000);
    let mut engine = Engine::from_parts(
        &cfg(Mode::RunToCompletion),
        vec![p0.clone() as Arc<dyn Port>],
        vec![plan(&[q(0)])],
        vec![chain(&udp_echo())],
    )
    .unwrap();
    engine.start().unwrap();
    assert!(flowing(&engine, &p0, 0, 1_000));
    let drained = engine.drain(Duration::from_secs(5)).unwrap();
    assert!(!engine.receiving());
    assert_eq!(drained.in_flight(), 0);
    drained.check_conservation().unwrap();
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(
        engine.snapshot().received(),
        drained.received(),
        "nothing received while drained"
    );
    engine.resume();
    let report = engine.run_to_end(Duration::from_secs(60)).unwrap();
    assert_eq!(report.transmitted(), 200_000);
}
