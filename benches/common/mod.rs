//! What the engine benchmarks share: a generating memory port and one engine run over it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dataplane::config::EngineConfig;
use dataplane::engine::{Engine, WorkerPlan};
use dataplane::port::memory::{MemoryOptions, Sink, Source};
use dataplane::port::{Memory, Port};
use dataplane::{CoreId, Handler, Pipeline, PortId, QueueId};

/// A one-queue memory port generating `templates` in turn, `limit` frames in all (`None`:
/// without end), its transmits discarded.
pub fn memory_port(templates: &[Vec<u8>], limit: Option<u64>) -> Arc<Memory> {
    Memory::new(
        PortId(0),
        MemoryOptions {
            queues: 1,
            frames: 4096,
            frame_size: 2048,
            memory: dataplane::mem::Options::default(),
            source: Source::Generate {
                templates: templates.to_vec(),
                limit,
            },
            sink: Sink::Discard,
            ring_size: 4096,
        },
    )
    .expect("memory port")
}

/// Runs `packets` frames, generated from `templates` in turn, through `handler` in the
/// real engine (one worker on the default worker core, transmits discarded); returns the
/// time the run took. Every packet must come out transmitted.
pub fn run_engine(templates: &[Vec<u8>], handler: Box<dyn Handler>, packets: u64) -> Duration {
    let p = memory_port(templates, Some(packets));
    let engine = Engine::from_parts(
        &EngineConfig::default(),
        vec![p as Arc<dyn Port>],
        vec![WorkerPlan {
            core: Some(CoreId(dataplane::topology::default_worker_core())),
            queues: vec![QueueId::new(0, 0)],
        }],
        vec![Pipeline::new(vec![handler])],
    )
    .expect("engine");
    let start = Instant::now();
    let report = engine.run_to_end(Duration::from_secs(120)).expect("run");
    let took = start.elapsed();
    assert_eq!(report.transmitted(), packets, "every packet answered");
    took
}
