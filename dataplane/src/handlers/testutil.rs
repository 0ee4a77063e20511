//! Test harness for handlers: runs a handler over real frames from a real [`FramePool`] and
//! returns the bytes and verdicts, returning every frame to the pool.

use crate::mem::{FramePool, Options, PoolId};
use crate::packet::QueueId;
use crate::pipeline::{Context, Handler, Verdict};
use crate::wire::{self, Layout};

/// The queue test frames arrive on.
pub(crate) const RX: QueueId = QueueId::new(0, 3);

/// The verdict of a packet answered on the queue it came from.
pub(crate) fn reply() -> Verdict {
    Verdict::Tx(RX)
}

/// Runs `h` once over `inputs` (each parsed with `wire::parse`, which must succeed), all
/// verdicts starting as `Next`.
pub(crate) fn run<B: AsRef<[u8]>>(h: &mut dyn Handler, inputs: &[B]) -> Vec<(Vec<u8>, Verdict)> {
    run_raw(
        h,
        inputs
            .iter()
            .map(|f| {
                let f = f.as_ref();
                let l = wire::parse(f).unwrap_or_else(|r| panic!("test input does not parse: {r}"));
                (f.to_vec(), Some(l), Verdict::Next)
            })
            .collect(),
    )
}

/// Runs `h` once over frames with the given layouts (`None`: whatever `wire::parse` gives,
/// or the default layout when it fails) and starting verdicts.
pub(crate) fn run_raw(
    h: &mut dyn Handler,
    inputs: Vec<(Vec<u8>, Option<Layout>, Verdict)>,
) -> Vec<(Vec<u8>, Verdict)> {
    let pool = FramePool::new(
        PoolId(9),
        "handler-test",
        inputs.len().max(1) as u32,
        2048,
        Options {
            hugepages: false,
            numa_node: None,
        },
    )
    .unwrap();
    let mut frames = Vec::new();
    let mut verdicts = Vec::new();
    for (bytes, layout, verdict) in inputs {
        let mut f = pool.alloc().unwrap();
        assert!(f.try_fill(&bytes), "test frame too long");
        f.meta.rx = RX;
        f.meta.layout = layout.unwrap_or_else(|| wire::parse(&bytes).unwrap_or_default());
        frames.push(f);
        verdicts.push(verdict);
    }
    let cx = Context {
        worker: crate::packet::WorkerId(0),
        workers: 1,
        now_ns: 0,
    };
    h.process(&mut frames, &mut verdicts, &cx);
    let out = frames
        .iter()
        .map(|f| f.data().to_vec())
        .zip(verdicts)
        .collect();
    for f in frames {
        pool.free(f);
    }
    pool.verify().unwrap();
    out
}
