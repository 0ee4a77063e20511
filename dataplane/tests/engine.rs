//! Engine behaviour over memory ports: verdicts, rings, pipeline mode, cross-port copies,
//! stop at a batch boundary, and exact packet/frame accounting in every case.

use std::sync::Arc;
use std::time::Duration;

use dataplane::config::{EngineConfig, Mode};
use dataplane::engine::{Engine, EngineError, WorkerPlan};
use dataplane::port::memory::{MemoryOptions, Sink, Source};
use dataplane::port::{Memory, Port};
use dataplane::{
    Context, CoreId, DropReason, Frame, Handler, Pipeline, PortId, QueueId, Verdict, WorkerId,
};

/// A user-style handler: decides by the first payload byte after the Ethernet header.
/// 0 = reply, 1 = drop (filtered), 2 = forward to w1 (which replies), 3 = send out of
/// p1:q0, 4 = slow path, 5 = forward to a worker that does not exist, anything else: not
/// ours.
struct ByFirstByte;

impl Handler for ByFirstByte {
    fn name(&self) -> &str {
        "by-first-byte"
    }
    fn process(&mut self, frames: &mut [Frame], verdicts: &mut [Verdict], cx: &Context) {
        for (f, v) in frames.iter_mut().zip(verdicts.iter_mut()) {
            if *v != Verdict::Next {
                continue;
            }
            *v = match f.data().get(14) {
                Some(0) => Verdict::reply(f),
                Some(2) if cx.worker == WorkerId(1) => Verdict::reply(f),
                Some(1) => Verdict::Drop(DropReason::Filtered),
                Some(2) => Verdict::Forward(WorkerId(1)),
                Some(3) => Verdict::Tx(QueueId::new(1, 0)),
                Some(4) => Verdict::SlowPath,
                Some(5) => Verdict::Forward(WorkerId(9)),
                _ => Verdict::Next,
            };
        }
    }
}

/// Replies to everything (for pipeline-mode tests).
struct ReplyAll;

impl Handler for ReplyAll {
    fn name(&self) -> &str {
        "reply-all"
    }
    fn process(&mut self, frames: &mut [Frame], verdicts: &mut [Verdict], _cx: &Context) {
        for (f, v) in frames.iter().zip(verdicts.iter_mut()) {
            if *v == Verdict::Next {
                *v = Verdict::reply(f);
            }
        }
    }
}

fn frame(kind: u8, n: u16) -> Vec<u8> {
    // Ethernet header with an unknown ethertype (valid, not IP), then kind and a counter.
    let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0x88, 0xb5];
    f.push(kind);
    f.extend_from_slice(&n.to_be_bytes());
    f.resize(60, 0);
    f
}

fn memory(id: u16, queues: u16, source: Source, sink: Sink) -> Arc<Memory> {
    Memory::new(
        PortId(id),
        MemoryOptions {
            queues,
            frames: 1024,
            frame_size: 2048,
            memory: dataplane::mem::Options {
                hugepages: false,
                numa_node: None,
            },
            source,
            sink,
            ring_size: 1024,
        },
    )
    .unwrap()
}

fn cfg(mode: Mode) -> EngineConfig {
    EngineConfig {
        mode,
        burst: 8,
        ring_size: 64,
        ..EngineConfig::default()
    }
}

fn plan(queues: &[QueueId]) -> WorkerPlan {
    WorkerPlan {
        core: None,
        queues: queues.to_vec(),
    }
}

#[test]
fn every_verdict_is_carried_out_and_counted() {
    let p0 = memory(0, 1, Source::Ring, Sink::Ring);
    let p1 = memory(1, 1, Source::Ring, Sink::Ring);
    let counts = [(0u8, 10u16), (1, 7), (2, 5), (3, 4), (4, 3), (5, 2), (9, 6)];
    for (kind, n) in counts {
        for i in 0..n {
            assert!(p0.inject(0, &frame(kind, i)));
        }
    }
    // Runts are dropped before any handler.
    assert!(p0.inject(0, &[0u8; 10]));
    p0.close_input();
    p1.close_input();
    let ports: Vec<Arc<dyn Port>> = vec![p0.clone(), p1.clone()];
    let engine = Engine::from_parts(
        &cfg(Mode::RunToCompletion),
        ports,
        vec![plan(&[QueueId::new(0, 0)]), plan(&[QueueId::new(1, 0)])],
        vec![
            Pipeline::new(vec![Box::new(ByFirstByte)]),
            Pipeline::new(vec![Box::new(ByFirstByte)]),
        ],
    )
    .unwrap();
    let report = engine.run_to_end(Duration::from_secs(10)).unwrap();
    report.check_conservation().unwrap();
    let d = report.drops();
    assert_eq!(d.get(DropReason::Filtered), 7);
    assert_eq!(d.get(DropReason::Runt), 1);
    assert_eq!(d.get(DropReason::NoRoute), 2, "forward to w9");
    assert_eq!(d.get(DropReason::Unhandled), 6);
    assert_eq!(report.slow_path(), 3);
    let w = report.worker_totals();
    assert_eq!(
        report.ports[0].stats.tx_packets, 15,
        "10 direct replies + 5 replied by w1 and sent back to p0's owner"
    );
    assert_eq!(report.ports[1].stats.tx_packets, 4, "kind 3 leaves via p1");
    assert_eq!(w.copies, 4, "p0 frames copied into p1's memory");
    // w0 -> w1: 5 forwards + 4 for p1:q0 (owned by w1); w1 -> w0: 5 replies for p0:q0.
    assert_eq!(w.ring_out, 14);
    assert_eq!(w.ring_in, 14);
}

/// Forwards kind-2 frames to w1 once; w1 (seeing meta from another worker) replies.
struct ForwardOnce;

impl Handler for ForwardOnce {
    fn name(&self) -> &str {
        "forward-once"
    }
    fn process(&mut self, frames: &mut [Frame], verdicts: &mut [Verdict], cx: &Context) {
        for (f, v) in frames.iter().zip(verdicts.iter_mut()) {
            *v = if cx.worker == WorkerId(0) {
                Verdict::Forward(WorkerId(1))
            } else {
                Verdict::reply(f)
            };
        }
    }
}

#[test]
fn forward_runs_the_other_workers_chain_and_returns_to_the_tx_owner() {
    let p0 = memory(0, 1, Source::Ring, Sink::Ring);
    for i in 0..100 {
        assert!(p0.inject(0, &frame(0, i)));
    }
    p0.close_input();
    // Rings large enough for the whole input, so nothing may overflow.
    let mut c = cfg(Mode::RunToCompletion);
    c.ring_size = 256;
    let engine = Engine::from_parts(
        &c,
        vec![p0.clone() as Arc<dyn Port>],
        vec![plan(&[QueueId::new(0, 0)]), plan(&[])],
        vec![
            Pipeline::new(vec![Box::new(ForwardOnce)]),
            Pipeline::new(vec![Box::new(ForwardOnce)]),
        ],
    )
    .unwrap();
    let report = engine.run_to_end(Duration::from_secs(10)).unwrap();
    report.check_conservation().unwrap();
    assert_eq!(report.drops().total(), 0);
    assert_eq!(report.transmitted(), 100);
    let w0 = &report.workers[0].counters;
    let w1 = &report.workers[1].counters;
    assert_eq!(w0.ring_out, 100, "w0 forwards everything to w1");
    assert_eq!(w1.ring_in, 100);
    assert_eq!(
        w1.ring_out, 100,
        "w1 sends replies back to the owner of p0:q0"
    );
    assert_eq!(w0.ring_in, 100);
    assert_eq!(w0.tx_packets, 100);
}

#[test]
fn pipeline_mode_spreads_by_flow_and_loses_nothing() {
    // Generated UDP flows: the hash spreads them over both workers.
    let p0 = Memory::new(
        PortId(0),
        MemoryOptions {
            queues: 1,
            frames: 2048,
            frame_size: 2048,
            memory: dataplane::mem::Options {
                hugepages: false,
                numa_node: None,
            },
            source: Source::Generate {
                templates: (0..64)
                    .map(|f| dataplane::wire::build::udp4_request_of_size(64, f, 7))
                    .collect(),
                limit: Some(20_000),
            },
            sink: Sink::Discard,
            ring_size: 1024,
        },
    )
    .unwrap();
    let mut c = cfg(Mode::Pipeline);
    c.ring_size = 4096;
    let engine = Engine::from_parts(
        &c,
        vec![p0 as Arc<dyn Port>],
        vec![plan(&[QueueId::new(0, 0)]), plan(&[])],
        vec![
            Pipeline::new(vec![Box::new(ReplyAll)]),
            Pipeline::new(vec![Box::new(ReplyAll)]),
        ],
    )
    .unwrap();
    let report = engine.run_to_end(Duration::from_secs(20)).unwrap();
    report.check_conservation().unwrap();
    assert_eq!(report.received(), 20_000);
    let d = report.drops();
    assert_eq!(
        report.transmitted() + d.get(DropReason::RingFull),
        20_000,
        "only ring overflow may drop, and it is counted"
    );
    let w1 = &report.workers[1].counters;
    assert!(w1.ring_in > 0, "the handler core got a share of the flows");
}

#[test]
fn a_full_ring_is_a_counted_drop() {
    let p0 = memory(0, 1, Source::Ring, Sink::Ring);
    for i in 0..200 {
        assert!(p0.inject(0, &frame(0, i)));
    }
    p0.close_input();
    // Bursts of 64 forwarded into a ring of 2: overflow is certain.
    let mut c = cfg(Mode::RunToCompletion);
    c.ring_size = 2;
    c.burst = 64;
    let engine = Engine::from_parts(
        &c,
        vec![p0 as Arc<dyn Port>],
        vec![plan(&[QueueId::new(0, 0)]), plan(&[])],
        vec![
            Pipeline::new(vec![Box::new(ForwardOnce)]),
            Pipeline::new(vec![Box::new(ForwardOnce)]),
        ],
    )
    .unwrap();
    let report = engine.run_to_end(Duration::from_secs(10)).unwrap();
    report.check_conservation().unwrap();
    let full = report.drops().get(DropReason::RingFull);
    assert!(full > 0, "ring overflow must be counted");
    assert_eq!(report.transmitted() + full, 200);
}

#[test]
fn stop_mid_traffic_returns_every_frame() {
    let p0 = Memory::new(
        PortId(0),
        MemoryOptions {
            queues: 2,
            frames: 512,
            frame_size: 2048,
            memory: dataplane::mem::Options::default(),
            source: Source::Generate {
                templates: vec![frame(0, 0)],
                limit: None,
            },
            sink: Sink::Discard,
            ring_size: 256,
        },
    )
    .unwrap();
    let mut engine = Engine::from_parts(
        &cfg(Mode::RunToCompletion),
        vec![p0.clone() as Arc<dyn Port>],
        vec![plan(&[QueueId::new(0, 0)]), plan(&[QueueId::new(0, 1)])],
        vec![
            Pipeline::new(vec![Box::new(ReplyAll)]),
            Pipeline::new(vec![Box::new(ReplyAll)]),
        ],
    )
    .unwrap();
    engine.start().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let live = engine.snapshot();
    assert!(live.received() > 0, "traffic flows");
    let report = engine.stop().unwrap();
    report.check_conservation().unwrap();
    assert!(report.latency.count > 0, "burst latency recorded");
    p0.pool().verify().unwrap();
    assert_eq!(p0.pool().available(), 512);
}

#[test]
fn pinning_to_a_core_that_does_not_exist_fails_cleanly() {
    let p0 = memory(0, 1, Source::Ring, Sink::Ring);
    let mut engine = Engine::from_parts(
        &cfg(Mode::RunToCompletion),
        vec![p0.clone() as Arc<dyn Port>],
        vec![WorkerPlan {
            core: Some(CoreId(4000)),
            queues: vec![QueueId::new(0, 0)],
        }],
        vec![Pipeline::default()],
    )
    .unwrap();
    match engine.start() {
        Err(EngineError::Pin { core, .. }) => assert_eq!(core, CoreId(4000)),
        other => panic!("expected a pin error, got {other:?}"),
    }
    drop(engine);
    // The queue was given back: it can be opened again.
    assert!(p0.open_queue(0, 8).is_ok());
}

#[test]
fn a_queue_cannot_have_two_owners() {
    let p0 = memory(0, 1, Source::Ring, Sink::Ring);
    let mut engine = Engine::from_parts(
        &cfg(Mode::RunToCompletion),
        vec![p0 as Arc<dyn Port>],
        vec![plan(&[QueueId::new(0, 0)]), plan(&[QueueId::new(0, 0)])],
        vec![Pipeline::default(), Pipeline::default()],
    )
    .unwrap();
    let err = engine.start().unwrap_err();
    assert!(err.to_string().contains("p0:q0"), "{err}");
}

fn idle_polls_in(idle: dataplane::config::Idle, wait: Duration) -> u64 {
    let p0 = memory(0, 1, Source::Ring, Sink::Ring);
    let mut c = cfg(Mode::RunToCompletion);
    c.idle = idle;
    c.backoff_max_us = 1000;
    let mut engine = Engine::from_parts(
        &c,
        vec![p0.clone() as Arc<dyn Port>],
        vec![plan(&[QueueId::new(0, 0)])],
        vec![Pipeline::new(vec![Box::new(ReplyAll)])],
    )
    .unwrap();
    engine.start().unwrap();
    std::thread::sleep(wait);
    // Traffic still flows with the back-off policy: it wakes up and answers.
    for i in 0..10 {
        assert!(p0.inject(0, &frame(0, i)));
    }
    p0.close_input();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while engine.in_flight() != 0 || engine.snapshot().transmitted() < 10 {
        assert!(
            std::time::Instant::now() < deadline,
            "worker did not wake up"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    let report = engine.stop().unwrap();
    report.check_conservation().unwrap();
    assert_eq!(report.transmitted(), 10);
    report.workers[0].counters.idle_polls
}

#[test]
fn backoff_idle_policy_sleeps_instead_of_spinning_and_still_answers() {
    let wait = Duration::from_millis(300);
    let spinning = idle_polls_in(dataplane::config::Idle::BusyPoll, wait);
    let backing_off = idle_polls_in(dataplane::config::Idle::Backoff, wait);
    // A 1 ms sleep cap allows at most ~300 sleeps plus the spin/yield warm-up (192 turns)
    // in 300 ms; busy polling makes millions of turns.
    assert!(backing_off < 2_000, "back-off polled {backing_off} times");
    assert!(
        spinning > 10 * backing_off,
        "busy-poll {spinning} vs back-off {backing_off}"
    );
}
