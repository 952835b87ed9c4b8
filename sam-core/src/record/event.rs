//! A task's transcript: everything that happened to it and everything its agent said
//! and did, in order, each entry numbered within its task.
//!
//! The store keeps it ([`TaskStore::append_task_event`](crate::store::TaskStore::append_task_event));
//! live displays hear of each entry as it is written; a reader that fell behind, or
//! talks to another control plane, reads it back from the store by number.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::model::{ExecutionStep, Location, NodeId, TaskId, TaskStatus, VmSize};
use crate::record::TaskError;
use crate::session::SessionEvent;

/// One entry of a task's transcript.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskEvent {
    /// Its number within the task: 1 for the first, then one more for each, in the
    /// order written. A reader resumes after the last number it saw.
    pub id: u64,
    /// The task.
    pub task_id: TaskId,
    /// When it was written.
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
    /// The task runs on a smaller size than it asked for.
    Downgraded {
        /// The size asked for.
        requested: VmSize,
        /// The size it runs on.
        provisioned: VmSize,
    },
    /// An attempt found no capacity: its create was refused, or accepted and then
    /// failed for capacity.
    CapacityUnavailable {
        /// The size tried.
        size: VmSize,
        /// The location tried.
        location: Location,
    },
    /// A full pass of the fallback plan found no capacity; the task waits.
    WaitingForCapacity {
        /// Full passes so far.
        passes: u32,
        /// When the next pass starts.
        until: DateTime<Utc>,
    },
    /// An event from the agent session: a message or thought (its chunks joined as
    /// they arrived together), a tool call and its status, a plan, a permission
    /// asked and answered, a retry, a crash, the end of the turn.
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
    /// that vanished or failed, an agent that does not answer, a node that never
    /// reported ready); the task moves on while its replacement budget lasts.
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

impl TaskEventKind {
    /// Every kind's [`name`](Self::name), in declaration order: what a reader may
    /// filter a transcript by.
    pub const NAMES: [&'static str; 9] = [
        "step",
        "status",
        "downgraded",
        "capacity_unavailable",
        "waiting_for_capacity",
        "session",
        "last_message",
        "node_lost",
        "refused",
    ];

    /// The kind's name, as its JSON `type` and its server-sent event's name.
    pub const fn name(&self) -> &'static str {
        match self {
            Self::Step { .. } => "step",
            Self::Status { .. } => "status",
            Self::Downgraded { .. } => "downgraded",
            Self::CapacityUnavailable { .. } => "capacity_unavailable",
            Self::WaitingForCapacity { .. } => "waiting_for_capacity",
            Self::Session { .. } => "session",
            Self::LastMessage { .. } => "last_message",
            Self::NodeLost { .. } => "node_lost",
            Self::Refused { .. } => "refused",
        }
    }

    /// Whether this entry ends the transcript: the task's terminal status.
    pub const fn is_end(&self) -> bool {
        matches!(self, Self::Status { status, .. } if status.is_terminal())
    }
}

impl std::fmt::Display for TaskEventKind {
    /// One line for a person; session events by their kind.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Step { label, .. } => f.write_str(label),
            Self::Status { status, error } => match error {
                Some(error) => write!(f, "{status}: {}", error.message),
                None => write!(f, "{status}"),
            },
            Self::CapacityUnavailable { size, location } => {
                write!(f, "no capacity for {size} in {location}")
            }
            Self::WaitingForCapacity { passes, until } => write!(
                f,
                "no capacity anywhere the task may run ({passes} passes); trying again at {}",
                until.format("%H:%M:%S UTC")
            ),
            Self::Downgraded {
                requested,
                provisioned,
            } => write!(
                f,
                "runs on {provisioned} instead of the {requested} asked for"
            ),
            Self::Session { event } => f.write_str(event.name()),
            Self::LastMessage { text } => f.write_str(text),
            Self::NodeLost { node, reason } => write!(f, "node {node} lost: {reason}"),
            Self::Refused { callback, reason } => write!(f, "refused a {callback}: {reason}"),
        }
    }
}

/// Which transcript entries [`TaskStore::list_task_events`](crate::store::TaskStore::list_task_events)
/// reads: those numbered after `after`, of the given kinds (all when empty), oldest
/// or newest first, at most `limit`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TranscriptQuery {
    /// Only entries numbered after this (0 for all).
    pub after: u64,
    /// At most this many.
    pub limit: usize,
    /// Only entries of these kinds ([`TaskEventKind::name`]); every kind when empty.
    pub kinds: Vec<String>,
    /// Newest first instead of oldest first.
    pub newest_first: bool,
}

impl TranscriptQuery {
    /// Up to `limit` entries after `after`, oldest first, of every kind.
    pub fn after(after: u64, limit: usize) -> Self {
        Self {
            after,
            limit,
            kinds: Vec::new(),
            newest_first: false,
        }
    }

    /// Only entries of `kinds`.
    #[must_use]
    pub fn with_kinds<'a>(mut self, kinds: impl IntoIterator<Item = &'a str>) -> Self {
        self.kinds = kinds.into_iter().map(str::to_owned).collect();
        self
    }

    /// Newest first.
    #[must_use]
    pub fn newest_first(mut self) -> Self {
        self.newest_first = true;
        self
    }

    /// Whether `event` is one this query reads (its number and kind; not the limit).
    pub fn matches(&self, event: &TaskEvent) -> bool {
        event.id > self.after
            && (self.kinds.is_empty() || self.kinds.iter().any(|k| k == event.kind.name()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_can_be_asked_for() {
        let kinds: Vec<TaskEventKind> = vec![
            TaskEventKind::Step {
                step: crate::ExecutionStep::NodeSelection,
                label: String::new(),
            },
            TaskEventKind::Status {
                status: crate::TaskStatus::Queued,
                error: None,
            },
            TaskEventKind::Downgraded {
                requested: crate::VmSize::Large,
                provisioned: crate::VmSize::Small,
            },
            TaskEventKind::CapacityUnavailable {
                size: crate::VmSize::Large,
                location: "fsn1".parse().unwrap(),
            },
            TaskEventKind::WaitingForCapacity {
                passes: 1,
                until: chrono::Utc::now(),
            },
            TaskEventKind::Session {
                event: crate::SessionEvent::Restarted { restarts: 1 },
            },
            TaskEventKind::LastMessage {
                text: String::new(),
            },
            TaskEventKind::NodeLost {
                node: "n-1".parse().unwrap(),
                reason: String::new(),
            },
            TaskEventKind::Refused {
                callback: String::new(),
                reason: String::new(),
            },
        ];
        let names: Vec<&str> = kinds.iter().map(TaskEventKind::name).collect();
        assert_eq!(names, TaskEventKind::NAMES);
    }
}
