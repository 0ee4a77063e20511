//! The engine's command API for live changes: the types its methods take and return.
//!
//! The control plane (the `control` crate's gRPC server, or any embedder) validates nothing
//! itself that the engine can check better: it calls [`Engine`](crate::engine::Engine)
//! methods such as `add_worker`, `assign`, `remove_worker`, `set_idle` and `set_handlers`,
//! which validate the whole request before changing anything and answer with a
//! [`ChangeError`] whose kind maps one to one onto a gRPC status code and whose message
//! names the field that was wrong. A rejected change has changed nothing.

use serde::Serialize;

use crate::config::Idle;
use crate::handlers::Spec;
use crate::packet::{CoreId, QueueId, WorkerId};

/// Why a live change was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChangeError {
    /// The request itself is malformed (gRPC INVALID_ARGUMENT).
    #[error("{field}: {msg}")]
    Invalid { field: String, msg: String },
    /// It names a worker, port, queue or node that does not exist (NOT_FOUND).
    #[error("{field}: {msg}")]
    NotFound { field: String, msg: String },
    /// It is well formed but the current state does not allow it: a busy core, a stale
    /// version, removing the last worker (FAILED_PRECONDITION).
    #[error("{field}: {msg}")]
    Precondition { field: String, msg: String },
    /// Something broke while carrying it out (a worker did not answer) (INTERNAL).
    #[error("{0}")]
    Internal(String),
}

impl ChangeError {
    pub fn invalid(field: impl Into<String>, msg: impl Into<String>) -> ChangeError {
        ChangeError::Invalid {
            field: field.into(),
            msg: msg.into(),
        }
    }

    pub fn not_found(field: impl Into<String>, msg: impl Into<String>) -> ChangeError {
        ChangeError::NotFound {
            field: field.into(),
            msg: msg.into(),
        }
    }

    pub fn precondition(field: impl Into<String>, msg: impl Into<String>) -> ChangeError {
        ChangeError::Precondition {
            field: field.into(),
            msg: msg.into(),
        }
    }

    /// The request field the error is about, if any.
    pub fn field(&self) -> Option<&str> {
        match self {
            ChangeError::Invalid { field, .. }
            | ChangeError::NotFound { field, .. }
            | ChangeError::Precondition { field, .. } => Some(field),
            ChangeError::Internal(_) => None,
        }
    }
}

/// Where a worker is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum WorkerState {
    /// Configured, engine not started yet.
    Planned,
    Running,
    /// Removed by the control plane; its counters stay in the totals.
    Removed,
}

impl WorkerState {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerState::Planned => "planned",
            WorkerState::Running => "running",
            WorkerState::Removed => "removed",
        }
    }
}

/// What one worker is and owns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WorkerInfo {
    pub id: WorkerId,
    pub core: Option<CoreId>,
    pub state: WorkerState,
    pub queues: Vec<QueueId>,
    pub idle: Idle,
    pub backoff_max_us: u64,
}

/// A queue that changed owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Moved {
    pub queue: QueueId,
    pub from: Option<WorkerId>,
    pub to: WorkerId,
}

/// The handler chain every worker runs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Chain {
    /// Bumped by every accepted update; 1 for a chain from the configuration file, 0 for a
    /// chain an embedder built by hand.
    pub version: u64,
    /// The settings the chain was built from; `None` for hand-built chains.
    pub specs: Option<Vec<Spec>>,
    /// Handler names, in order.
    pub names: Vec<String>,
}
