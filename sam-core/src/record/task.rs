//! The records of a task's life: the task itself, its status changes, its lease and
//! the writes made under it, and where it was placed and why.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::credential::CredentialOwner;
use crate::error::ErrorCategory;
use crate::github::{GithubAccess, TaskOutput};
use crate::model::{
    ExecutionStep, Location, NodeId, ProfileId, ProjectId, ProviderKind, TaskId, TaskStatus,
    UserId, VmSize, WorkspaceId,
};
use crate::project::{AgentOptions, LayerSettings};
use crate::record::{NodeRecord, TaskEventKind};
use crate::reservation::{Layer, RequirementLayers, Reservation};

/// What the user asked for, beyond sizing: the repository, the prompt, the agent.
///
/// Stored as JSON; later fields are added with serde defaults.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TaskSpec {
    /// Repository URL or local path.
    pub repo: String,
    /// Branch to start from; `None` for the repository's default.
    #[serde(default)]
    pub branch: Option<String>,
    /// The prompt for the agent.
    pub prompt: String,
    /// The agent (`claude`, `codex`, …, or a command).
    pub agent: String,
    /// The workspace profile requested (`full`, `lightweight`), if any.
    #[serde(default)]
    pub workspace_profile: Option<String>,
    /// The devcontainer configuration name requested, if any.
    #[serde(default)]
    pub devcontainer: Option<String>,
    /// A node the task asked to run on, if any.
    #[serde(default)]
    pub preferred_node: Option<NodeId>,
    /// Where each resolved setting came from (`repo`, `provider`, `size`, `location`, `agent`,
    /// `workspace_profile`, `devcontainer`, `model`, `effort`, `permission_mode`,
    /// `system_prompt`, and the credentials: `provider_credential`, `agent_credential`).
    #[serde(default)]
    pub provenance: std::collections::BTreeMap<String, Layer>,
    /// The GitHub installation the repository is behind, if any: its workspace
    /// clones and pushes with short-lived installation tokens.
    #[serde(default)]
    pub github: Option<GithubAccess>,
    /// How the agent runs (model, effort, permission mode, system-prompt addition),
    /// as far as a layer set it.
    #[serde(default, flatten)]
    pub agent_options: AgentOptions,
    /// The project whose settings the task carries.
    #[serde(default)]
    pub project: Option<ProjectId>,
    /// The agent profile whose settings the task carries.
    #[serde(default)]
    pub profile: Option<ProfileId>,
    /// The user whose defaults the task carries.
    #[serde(default)]
    pub user: Option<UserId>,
    /// The task's own layers as submitted (task, trigger, skill), so a retry carries
    /// the same intent.
    #[serde(default)]
    pub submitted: std::collections::BTreeMap<Layer, LayerSettings>,
    /// Where the task came from, when it is a retry or a fork.
    #[serde(default)]
    pub lineage: Option<Lineage>,
    /// Whose provider credential the task's provider calls use: the project's or the
    /// user's, resolved at submission; `None` for the platform's own (tasks stored
    /// before per-owner credentials ran on the platform's, which is what `None` says).
    #[serde(default)]
    pub provider_credential_owner: Option<CredentialOwner>,
}

/// How a task was derived from another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LineageKind {
    /// The same prompt, run again.
    Retry,
    /// A new prompt that continues from the parent.
    Fork,
}

/// Where a retried or forked task came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lineage {
    /// Retry or fork.
    pub kind: LineageKind,
    /// The parent task.
    pub parent_task: TaskId,
    /// The parent's agent session, named by the workspace that hosted it (a workspace
    /// hosts one session); `None` when the parent never got that far.
    pub parent_session: Option<WorkspaceId>,
    /// How many ancestors the task has (a child of an original task has 1).
    pub depth: u32,
}

/// The error a failed task ended with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskError {
    /// Its category.
    pub category: ErrorCategory,
    /// One sentence a user can act on.
    pub message: String,
}

/// A task as persisted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRecord {
    /// The task's id.
    pub id: TaskId,
    /// Its status.
    pub status: TaskStatus,
    /// Its current step.
    pub execution_step: ExecutionStep,
    /// What the user asked for.
    pub spec: TaskSpec,
    /// The provider to place on.
    pub provider: ProviderKind,
    /// The requested size.
    pub requested_size: VmSize,
    /// Where the size came from.
    pub size_source: Layer,
    /// The requested location, if any.
    pub requested_location: Option<Location>,
    /// Where the location came from.
    pub location_source: Layer,
    /// The requirements of every layer, as submitted.
    pub requirements: RequirementLayers,
    /// The resolved reservation, with every field's source.
    pub reservation: Reservation,
    /// Why the task was placed where it was.
    pub placement: Option<PlacementExplanation>,
    /// The node recorded for this task before any provider call.
    pub provisioned_node_id: Option<NodeId>,
    /// The size actually provisioned.
    pub provisioned_size: Option<VmSize>,
    /// The location actually provisioned.
    pub provisioned_location: Option<Location>,
    /// The workspace serving the task.
    pub workspace_id: Option<WorkspaceId>,
    /// When the runner should next look at the task (a durable timer).
    pub next_wake_at: Option<DateTime<Utc>>,
    /// The driver holding the task's lease.
    pub lease_owner: Option<String>,
    /// When that lease ends.
    pub lease_expires_at: Option<DateTime<Utc>>,
    /// How many times the task has been leased: every claim takes the next epoch,
    /// so a driver holding an older one has lost the lease ([`Lease`]).
    #[serde(default)]
    pub lease_epoch: u64,
    /// When the current node's creation started; the provisioning and agent-ready clocks.
    pub provisioning_started_at: Option<DateTime<Utc>>,
    /// Full passes of the fallback plan that ended without capacity; the exponent of
    /// the backoff before the next pass.
    #[serde(default)]
    pub capacity_passes: u32,
    /// How many times the task moved off a node it lost (a failed boot, a VM that
    /// vanished or failed, an agent that does not answer); bounded by
    /// [`crate::ControlPlaneConfig::node_replacements`].
    #[serde(default)]
    pub node_replacements: u32,
    /// When `execution_step` last changed; the clock of the current wait.
    pub step_started_at: DateTime<Utc>,
    /// The error a failed task ended with.
    pub error: Option<TaskError>,
    /// The branch, commit and pull request the task left, once pushed.
    #[serde(default)]
    pub output: Option<TaskOutput>,
    /// When the task was submitted.
    pub created_at: DateTime<Utc>,
    /// When the task last changed (a lease or a repeated step write is not a change).
    pub updated_at: DateTime<Utc>,
}

/// A change of a task's status, recorded for every transition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusEvent {
    /// The task.
    pub task_id: TaskId,
    /// The status before; `None` for the submission.
    pub from: Option<TaskStatus>,
    /// The status after.
    pub to: TaskStatus,
    /// Who made the change (`runner`, `sweep`, `user`, a driver id).
    pub actor: String,
    /// Why.
    pub reason: Option<String>,
    /// When.
    pub at: DateTime<Utc>,
}

/// An optimistic status change: it applies only if the task is still in `from`.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    /// The status the caller believes the task is in.
    pub from: TaskStatus,
    /// The status to move to; must satisfy [`TaskStatus::can_transition_to`].
    pub to: TaskStatus,
    /// Who makes the change.
    pub actor: String,
    /// Why.
    pub reason: Option<String>,
    /// The error, when moving to `failed`.
    pub error: Option<TaskError>,
    /// When.
    pub at: DateTime<Utc>,
}

/// Fields of a task to change. `None` leaves a field alone; `Some(None)` clears a
/// nullable field.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TaskUpdate {
    /// The placement explanation.
    pub placement: Option<Option<PlacementExplanation>>,
    /// The node recorded for the task.
    pub provisioned_node_id: Option<Option<NodeId>>,
    /// The size provisioned.
    pub provisioned_size: Option<Option<VmSize>>,
    /// The location provisioned.
    pub provisioned_location: Option<Option<Location>>,
    /// The workspace.
    pub workspace_id: Option<Option<WorkspaceId>>,
    /// The next wake-up.
    pub next_wake_at: Option<Option<DateTime<Utc>>>,
    /// When the node's creation started.
    pub provisioning_started_at: Option<Option<DateTime<Utc>>>,
    /// Full capacity passes so far.
    pub capacity_passes: Option<u32>,
    /// Node replacements so far.
    pub node_replacements: Option<u32>,
    /// What the task left in its repository.
    pub output: Option<Option<TaskOutput>>,
}

/// Which tasks to list.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TaskFilter {
    /// Only these statuses; empty means all.
    pub statuses: Vec<TaskStatus>,
    /// Only tasks recorded on this node.
    pub node: Option<NodeId>,
    /// Only tasks created after this one in list order (a cursor).
    pub after: Option<TaskId>,
    /// At most this many.
    pub limit: Option<usize>,
}

impl TaskFilter {
    /// The tasks that have not ended: queued, delegated or in progress.
    pub fn live() -> Self {
        Self {
            statuses: vec![
                TaskStatus::Queued,
                TaskStatus::Delegated,
                TaskStatus::InProgress,
            ],
            ..Self::default()
        }
    }
}

/// A request to lease due tasks.
#[derive(Debug, Clone, PartialEq)]
pub struct LeaseRequest {
    /// The driver asking.
    pub owner: String,
    /// The current time.
    pub now: DateTime<Utc>,
    /// How long the lease lasts.
    pub lease: Duration,
    /// At most this many tasks.
    pub limit: usize,
    /// Tasks to leave out even when due: the caller's own steps under way, whose
    /// lease it already holds. Without it they would fill the `limit` and come back
    /// as records read before their step ended.
    pub except: Vec<TaskId>,
}

/// What a driver writes as it gives a task's lease back: the step its handler moved
/// the task to and the fields it changed (the next wake-up above all), so that a
/// step of a task ends in one write transaction rather than three.
#[derive(Debug, Clone, PartialEq)]
pub struct LeaseRelease {
    /// The driver giving the lease back.
    pub owner: String,
    /// The claim the lease came from; `None` releases whatever lease `owner` holds.
    pub epoch: Option<u64>,
    /// The step to move to, as [`TaskStore::set_execution_step`](crate::store::TaskStore::set_execution_step) would; `None` keeps it.
    pub step: Option<ExecutionStep>,
    /// Fields to change, as [`TaskStore::update_task`](crate::store::TaskStore::update_task) would; the default changes none.
    pub update: TaskUpdate,
    /// When.
    pub at: DateTime<Utc>,
}

impl LeaseRelease {
    /// A release by `owner` at `at` that changes nothing else.
    pub fn plain(owner: impl Into<String>, at: DateTime<Utc>) -> Self {
        Self {
            owner: owner.into(),
            epoch: None,
            step: None,
            update: TaskUpdate::default(),
            at,
        }
    }
}

/// A driver's hold on one task, as [`TaskStore::claim_due_tasks`](crate::store::TaskStore::claim_due_tasks) granted it.
///
/// Every claim takes a new epoch, so a driver that lost the lease (to another
/// driver, or to itself in a later claim) holds an epoch the row no longer has.
/// [`TaskStore::write_leased`](crate::store::TaskStore::write_leased) checks it in the same transaction as the write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The task.
    pub task: TaskId,
    /// The driver holding it.
    pub owner: String,
    /// The claim it came from.
    pub epoch: u64,
}

impl Lease {
    /// The lease `task` records for `owner`; `None` when it records none, or
    /// another driver's.
    pub fn held_by(task: &TaskRecord, owner: &str) -> Option<Self> {
        (task.lease_owner.as_deref() == Some(owner)).then(|| Self {
            task: task.id.clone(),
            owner: owner.to_owned(),
            epoch: task.lease_epoch,
        })
    }
}

impl std::fmt::Display for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}'s lease on task {} (epoch {})",
            self.owner, self.task, self.epoch
        )
    }
}

/// One write a step makes under its task's lease ([`TaskStore::write_leased`](crate::store::TaskStore::write_leased)).
#[derive(Debug, Clone, PartialEq)]
pub enum LeasedWrite {
    /// Extends the lease to `until`.
    Renew {
        /// When the lease ends now.
        until: DateTime<Utc>,
    },
    /// Moves the task's execution step, as [`TaskStore::set_execution_step`](crate::store::TaskStore::set_execution_step).
    Step(ExecutionStep),
    /// Changes task fields, as [`TaskStore::update_task`](crate::store::TaskStore::update_task).
    Update(TaskUpdate),
    /// Changes the task's status, as [`TaskStore::transition_task`](crate::store::TaskStore::transition_task).
    Transition(Transition),
    /// Writes a node row, as [`FleetStore::put_node`](crate::store::FleetStore::put_node).
    PutNode(Box<NodeRecord>),
    /// Deletes a node row, as [`FleetStore::delete_node`](crate::store::FleetStore::delete_node).
    DeleteNode(NodeId),
    /// Adds an entry to the task's transcript, as [`TaskStore::append_task_event`](crate::store::TaskStore::append_task_event).
    Event(TaskEventKind),
}

/// What [`TaskStore::write_leased`](crate::store::TaskStore::write_leased) did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LeasedOutcome {
    /// Whether a [`LeasedWrite::Step`] moved the step.
    pub step_changed: bool,
    /// Whether a [`LeasedWrite::Transition`] applied (the task was in its `from`).
    pub transitioned: bool,
    /// The number of the last transcript entry a [`LeasedWrite::Event`] appended;
    /// the entries of one write are numbered one after another, up to it.
    pub last_event: Option<u64>,
}

/// What [`TaskStore::release_lease`](crate::store::TaskStore::release_lease) did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseReleased {
    /// The owner did not hold the lease (or the task is gone): nothing was written.
    NotHeld,
    /// The lease is free and the changes are written.
    Released {
        /// Whether the execution step moved (a step the task was already in does not).
        step_changed: bool,
    },
}

/// A candidate placement turned down, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejected {
    /// The candidate (a node id, or a size and location).
    pub candidate: String,
    /// Why it was turned down, as a sentence.
    pub reason: String,
}

/// Why a task was placed where it was; persisted on the task so the database can
/// answer "why was this allowed".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlacementExplanation {
    /// What was chosen (a node id, or "new `<size>` in `<location>`").
    pub chosen: String,
    /// Why, as a sentence.
    pub reason: String,
    /// Every candidate considered and turned down, in the order considered.
    pub rejected: Vec<Rejected>,
}
