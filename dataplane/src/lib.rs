//! slipstream's data plane: everything that touches packets.
//!
//! Layers, bottom up: [`mem`] (hugepage regions and frame pools), [`wire`] (zero-copy header
//! views), [`port`] (devices with queues), [`ring`] (lock-free rings between workers),
//! [`pipeline`] (handlers and verdicts), [`worker`] (pinned run-to-completion loops) and
//! [`engine`] (builds and runs the whole from a [`config::Config`]).

pub mod batch;
pub mod mem;
pub mod packet;
pub mod pipeline;
pub mod port;
pub mod ring;
pub mod stats;
pub mod wire;

pub use batch::Batch;
pub use mem::Frame;
pub use packet::{CoreId, Meta, PortId, QueueId, WorkerId};
pub use pipeline::{Context, DropReason, Emit, Handler, Pipeline, Verdict};
pub mod config;
pub mod control;
pub mod engine;
pub mod handlers;
pub mod replay;
pub mod topology;
pub mod worker;
