//! The live event stream: what happened to a task, for displays. The store is the
//! record; a subscriber that lags misses events.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::model::{ExecutionStep, Location, NodeId, TaskId, TaskStatus, VmSize};
use crate::session::SessionEvent;
use crate::store::TaskError;

/// What happened to a task, for live displays (the CLI's progress, server-sent events).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskEvent {
    /// The task.
    pub task_id: TaskId,
    /// When.
    pub at: DateTime<Utc>,
    /// What.
    pub kind: TaskEventKind,
}

/// The kinds of [`TaskEvent`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum TaskEventKind {
    /// The task entered a step.
    Step {
        /// The step.
        step: ExecutionStep,
        /// Its label.
        label: String,
    },
    /// The task's status changed.
    Status {
        /// The new status.
        status: TaskStatus,
        /// The error, for `failed`.
        error: Option<TaskError>,
    },
    /// A smaller size than requested was provisioned.
    Downgraded {
        /// Requested.
        requested: VmSize,
        /// Provisioned.
        provisioned: VmSize,
    },
    /// A provisioning attempt failed for capacity.
    CapacityUnavailable {
        /// The size tried.
        size: VmSize,
        /// The location tried.
        location: Location,
    },
    /// An event from the agent session.
    Session {
        /// The event.
        event: SessionEvent,
    },
    /// The agent's last message when its turn ended.
    LastMessage {
        /// The message, redacted.
        text: String,
    },
    /// The task's node was lost before the task ran on it (a failed boot, a VM
    /// that vanished or failed, an agent that does not answer, a node that never reported
    /// ready); the task moves on
    /// while its replacement budget lasts.
    NodeLost {
        /// The node.
        node: NodeId,
        /// What happened to it, as one sentence.
        reason: String,
    },
    /// A callback that would have changed the task came after it ended, and was
    /// refused.
    Refused {
        /// What was refused (`output`, `session report`, …).
        callback: String,
        /// Why, as one sentence.
        reason: String,
    },
}
