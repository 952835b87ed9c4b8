//! The [`Store`] trait and the records it keeps: tasks, nodes, workspaces, API tokens.

use std::fmt::Debug;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::boot::NodeBootRecord;
use crate::control::LayerSettings;
use crate::credential::{CredentialOwner, CredentialRecord, CredentialTarget};
use crate::error::{ErrorCategory, StoreError};
use crate::github::{GithubAccess, GithubInstallation, InstallationKey, TaskOutput};
use crate::model::{
    ExecutionStep, Labels, Location, NodeHealth, NodeId, NodeLifecycle, NodeStatus, ProfileId,
    ProjectId, ProviderKind, TaskId, TaskStatus, UserId, VmId, VmSize, WorkspaceId,
};
use crate::project::{AgentOptions, AgentProfileRecord, ProjectRecord, UserRecord};
use crate::reservation::{Capacity, Layer, RequirementLayers, Reservation, SlotRejection};
use crate::scheduler::PlacementExplanation;

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
    /// The step to move to, as [`Store::set_execution_step`] would; `None` keeps it.
    pub step: Option<ExecutionStep>,
    /// Fields to change, as [`Store::update_task`] would; the default changes none.
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

/// A driver's hold on one task, as [`Store::claim_due_tasks`] granted it.
///
/// Every claim takes a new epoch, so a driver that lost the lease (to another
/// driver, or to itself in a later claim) holds an epoch the row no longer has.
/// [`Store::write_leased`] checks it in the same transaction as the write.
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

/// What the runner noticed about where a task could run, kept with the task so a
/// user sees it after the fact (a downgrade, a capacity wait), not only live.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum TaskNotice {
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
    /// The task runs on a smaller size than it asked for.
    Downgraded {
        /// The size asked for.
        requested: VmSize,
        /// The size it runs on.
        provisioned: VmSize,
    },
}

impl std::fmt::Display for TaskNotice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
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
        }
    }
}

/// A [`TaskNotice`] as stored: its place among the task's notices, and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskNoticeRecord {
    /// 1 for the task's first notice, then one more for each.
    pub seq: u64,
    /// When it was noticed.
    pub at: DateTime<Utc>,
    /// What.
    #[serde(flatten)]
    pub notice: TaskNotice,
}

/// One write a step makes under its task's lease ([`Store::write_leased`]).
#[derive(Debug, Clone, PartialEq)]
pub enum LeasedWrite {
    /// Extends the lease to `until`.
    Renew {
        /// When the lease ends now.
        until: DateTime<Utc>,
    },
    /// Moves the task's execution step, as [`Store::set_execution_step`].
    Step(ExecutionStep),
    /// Changes task fields, as [`Store::update_task`].
    Update(TaskUpdate),
    /// Changes the task's status, as [`Store::transition_task`].
    Transition(Transition),
    /// Writes a node row, as [`Store::put_node`].
    PutNode(Box<NodeRecord>),
    /// Deletes a node row, as [`Store::delete_node`].
    DeleteNode(NodeId),
    /// Adds a notice to the task, as [`Store::add_task_notice`].
    Notice(TaskNotice),
}

/// What [`Store::write_leased`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LeasedOutcome {
    /// Whether a [`LeasedWrite::Step`] moved the step.
    pub step_changed: bool,
    /// Whether a [`LeasedWrite::Transition`] applied (the task was in its `from`).
    pub transitioned: bool,
}

/// What [`Store::release_lease`] did.
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

/// A sign of life from a node's VM agent: a heartbeat, or its ready callback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeBeat {
    /// When it arrived.
    pub at: DateTime<Utc>,
    /// The agent's version, when the beat is its ready callback.
    pub ready_version: Option<String>,
    /// The node's boot timeline, as its ready callback reported it; empty for a
    /// heartbeat (and for a ready callback without one).
    pub boot_timeline: Vec<crate::boot::BootPhaseRecord>,
}

/// A node as persisted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// The node's id (also its VM's `sam-node` label).
    pub id: NodeId,
    /// The provider running it.
    pub provider: ProviderKind,
    /// The provider's VM id, once known.
    pub vm_id: Option<VmId>,
    /// Its size.
    pub size: VmSize,
    /// Its concrete server type.
    pub server_type: String,
    /// Where it runs.
    pub location: Location,
    /// What it can hold, from the catalog.
    pub capacity: Capacity,
    /// Its VM's labels.
    pub labels: Labels,
    /// Its status.
    pub status: NodeStatus,
    /// Its lifecycle.
    pub lifecycle: NodeLifecycle,
    /// Since when it has been warm.
    pub warm_since: Option<DateTime<Utc>>,
    /// Its health.
    pub health: NodeHealth,
    /// Its last heartbeat.
    pub last_heartbeat_at: Option<DateTime<Utc>>,
    /// The VM agent's version, from its ready callback.
    pub agent_version: Option<String>,
    /// When the VM agent reported ready.
    pub ready_at: Option<DateTime<Utc>>,
    /// The task whose provisioning created the node, if any.
    pub created_for: Option<TaskId>,
    /// Whose provider credential created the node, and so whose account pays for it:
    /// `None` for the platform's own. Every later provider call for the node uses the
    /// same owner's credential, and only tasks of that owner are placed on it.
    #[serde(default)]
    pub credential_owner: Option<CredentialOwner>,
    /// The VM's address as its provider reported it once the VM ran. A node agent
    /// directory reaches the nodes of a user's or project's account by it, since the
    /// platform's provider cannot look those VMs up.
    #[serde(default)]
    pub address: Option<String>,
    /// What the node reported of its boot: the timeline of its phases, and why it
    /// failed when it did. Never cleared: a row written without a timeline or a
    /// failure keeps the stored one.
    #[serde(default)]
    pub boot: NodeBootRecord,
    /// When the row was written.
    pub created_at: DateTime<Utc>,
    /// When the row last changed.
    pub updated_at: DateTime<Utc>,
}

impl NodeRecord {
    /// The task this node is held for: the task it was provisioned for
    /// (`created_for`), while that task has not ended, still names this node as its
    /// `provisioned_node_id`, and has no workspace (in any status) among
    /// `workspaces`, the node's workspaces. `creator` is that task as read, `None`
    /// when it does not exist.
    ///
    /// A node provisioned for a task belongs to that task until the task has
    /// reserved its slot there (or has moved on), so that others filling it first
    /// cannot send the task to provision a second VM.
    pub fn held_for(
        &self,
        workspaces: &[WorkspaceRecord],
        creator: Option<&TaskRecord>,
    ) -> Option<&TaskId> {
        let id = self.created_for.as_ref()?;
        let creator = creator.filter(|t| &t.id == id)?;
        let holds = !creator.status.is_terminal()
            && creator.provisioned_node_id.as_ref() == Some(&self.id)
            && !workspaces.iter().any(|w| &w.task_id == id);
        holds.then_some(id)
    }
}

/// A `running`, `active` node as placement judges it, read in bulk by
/// [`Store::list_placement_candidates`].
#[derive(Debug, Clone, PartialEq)]
pub struct PlacementCandidate {
    /// The node.
    pub node: NodeRecord,
    /// Its workspaces that hold a slot, ordered by `(created_at, id)`.
    pub workspaces: Vec<WorkspaceRecord>,
    /// The task it is held for, as [`NodeRecord::held_for`] decides over all of the
    /// node's workspaces (those that no longer hold a slot included).
    pub held_for: Option<TaskId>,
}

/// Which nodes to list.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeFilter {
    /// Only these statuses; empty means all.
    pub statuses: Vec<NodeStatus>,
    /// Only these lifecycles; empty means all.
    pub lifecycles: Vec<NodeLifecycle>,
    /// Only this provider.
    pub provider: Option<ProviderKind>,
}

/// Which warm node a task may claim.
#[derive(Debug, Clone, PartialEq)]
pub struct WarmClaim {
    /// The claiming task.
    pub task_id: TaskId,
    /// The provider.
    pub provider: ProviderKind,
    /// The exact size.
    pub size: VmSize,
    /// The exact location; `None` accepts any.
    pub location: Option<Location>,
    /// Only nodes made with this owner's provider credential (`None`: the platform's).
    pub credential_owner: Option<CredentialOwner>,
    /// The current time.
    pub now: DateTime<Utc>,
}

/// Status of a workspace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkspaceStatus {
    /// The slot is reserved and the workspace is being created.
    Creating,
    /// Ready, on the requested profile.
    Running,
    /// Ready, on a fallback profile.
    Recovery,
    /// Being stopped.
    Stopping,
    /// Stopped; its slot is free.
    Stopped,
    /// Failed; its slot is free.
    Error,
}

impl WorkspaceStatus {
    /// Whether the workspace still holds its slot on the node.
    pub const fn holds_slot(self) -> bool {
        matches!(
            self,
            Self::Creating | Self::Running | Self::Recovery | Self::Stopping
        )
    }
}

/// A workspace as persisted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkspaceRecord {
    /// Its id.
    pub id: WorkspaceId,
    /// The node it runs on.
    pub node_id: NodeId,
    /// The task it serves.
    pub task_id: TaskId,
    /// Its status.
    pub status: WorkspaceStatus,
    /// The profile actually used (`full`, `lightweight`), once known.
    pub effective_profile: Option<String>,
    /// What it reserved on the node.
    pub reservation: Reservation,
    /// When the slot was reserved.
    pub created_at: DateTime<Utc>,
    /// When the row last changed.
    pub updated_at: DateTime<Utc>,
}

/// The result of a slot reservation the store could carry out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotOutcome {
    /// The workspace row is written and holds its slot.
    Reserved,
    /// The node cannot take it; nothing was written.
    Rejected(SlotRejection),
}

pub use crate::api_token::ApiTokenRecord;

/// What a [`KeyRecord`] is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyPurpose {
    /// Signs the tokens the control plane issues ([`crate::TokenSigner`]).
    Signing,
    /// A node's boot token, which its VM agent keys its management tokens with;
    /// the key's id is the node's.
    Node,
}

impl KeyPurpose {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Signing => "signing",
            Self::Node => "node",
        }
    }
}

/// A key every control plane on one database shares, kept in the store sealed with
/// the credential key ([`crate::CredentialCipher`]), so servers share nothing else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    /// The key's id (tokens name it, so a key can be replaced while the tokens it
    /// signed still verify).
    pub id: String,
    /// What it is for.
    pub purpose: KeyPurpose,
    /// The key, sealed for [`KeyRecord::context`].
    pub sealed: crate::credential::Sealed,
    /// When it was made.
    pub created_at: DateTime<Utc>,
}

impl KeyRecord {
    /// What the key is sealed for: its purpose and id, so a sealed key copied to
    /// another row does not open.
    pub fn context(purpose: KeyPurpose, id: &str) -> String {
        format!("key:{}:{id}", purpose.as_str())
    }

    /// A key record holding `key`, sealed with `cipher` for its purpose and id.
    ///
    /// # Errors
    /// [`crate::CredentialError`] for a key the cipher cannot seal (empty, oversized).
    pub fn seal(
        purpose: KeyPurpose,
        id: impl Into<String>,
        key: &crate::secret::Secret,
        cipher: &crate::credential::CredentialCipher,
        created_at: DateTime<Utc>,
    ) -> Result<Self, crate::credential::CredentialError> {
        let id = id.into();
        Ok(Self {
            sealed: cipher.seal(key, &Self::context(purpose, &id))?,
            id,
            purpose,
            created_at,
        })
    }

    /// The key, opened with `cipher`.
    ///
    /// # Errors
    /// [`crate::CredentialError`] when it was sealed with another key, or for
    /// another purpose or id.
    pub fn open(
        &self,
        cipher: &crate::credential::CredentialCipher,
    ) -> Result<crate::secret::Secret, crate::credential::CredentialError> {
        cipher.open(&self.sealed, &Self::context(self.purpose, &self.id))
    }
}

/// Durable state of the control plane.
///
/// # Contract
/// Every backend guarantees:
/// - **Reads of missing rows are `Ok(None)`**; updates of missing rows are
///   `StoreErrorKind::NotFound`; creating an existing id is `AlreadyExists`.
/// - **Lists are ordered**: tasks by `(created_at, id)`, nodes by `(created_at, id)`,
///   workspaces by `(created_at, id)`, status events by time of writing.
/// - **`transition_task` is optimistic and atomic**: it changes the status only if
///   the task is still in `from` (one statement or one transaction), records a
///   [`StatusEvent`], sets `updated_at`, and returns whether it applied. A move
///   [`TaskStatus::can_transition_to`] forbids is `InvalidInput`. A move to a
///   terminal status also clears `next_wake_at` and the lease, in the same write:
///   nothing ever drives an ended task again.
/// - **`set_execution_step` is idempotent**: writing the step the task is already in
///   changes nothing (`updated_at` included) and returns `false`; a new step sets
///   `step_started_at` and `updated_at`.
/// - **`claim_due_tasks` leases atomically**: it returns live (non-terminal) tasks
///   whose `next_wake_at` is due, whose lease is free, expired or already the
///   caller's, and which are not in `except`, and leases them to the caller. Two concurrent callers never receive
///   the same task while a lease holds. Every claim sets `lease_epoch` to one more
///   than the row had. Leasing does not touch `updated_at`.
/// - **`write_leased` is fenced**: in one transaction it checks that `lease.owner`
///   holds the task's lease at `lease.epoch` and that the lease has not expired at
///   `at`, then applies the writes in order, each exactly as its own method would.
///   Otherwise it writes nothing and fails with `LeaseLost`, naming the lease it was
///   given and the one it found; a missing task is `NotFound`. A driver that lost
///   its lease can neither write nor extend it.
/// - **A key is written once**: `put_key_if_absent` writes a key whose id is new and
///   otherwise leaves the stored one, and returns the key stored under the id either
///   way, so control planes starting at once on one database agree on it;
///   `list_keys` returns the keys of a purpose ordered by `(created_at, id)`.
///   Deleting a node (`delete_node`, or a leased `DeleteNode`) deletes its `node` key.
/// - **Notices are kept in order**: `add_task_notice` (and a leased `Notice`) numbers
///   a task's notices 1, 2, … in the order written, and `list_task_notices` returns
///   them in that order.
/// - **`release_lease` writes only for the holder**: when `owner` holds the lease
///   (expired or not, at `epoch` when given) it frees the lease and, in the same transaction, applies the
///   release's step exactly as `set_execution_step` would (idempotent, reported in
///   `step_changed`) and its update exactly as `update_task` would; otherwise
///   (another owner, no lease, a missing task) it writes nothing and is `NotHeld`.
/// - **`claim_warm_node` has one winner**: of concurrent claims for the same warm
///   node, exactly one gets it (moved to `active`, `warm_since` cleared); only
///   `running`, `healthy` nodes of the exact provider, size, credential owner (and
///   location, when given) are claimed.
/// - **Nodes keep their credential owner**: `put_node` and every read round-trip
///   [`NodeRecord::credential_owner`], `None` included.
/// - **A node's boot record is never cleared**: `put_node` round-trips
///   [`NodeRecord::boot`], and a row written without a boot timeline (or without a
///   boot failure) keeps the one stored, so a writer holding a row read before the
///   node reported its boot cannot erase the report.
/// - **`reserve_workspace_slot` never over-commits**: in one transaction it checks
///   the node's capacity minus the reservations of its workspaces that hold a slot
///   with [`crate::reservation::check_slot`], and writes the workspace only if that
///   passes; concurrent reservations on one node never exceed its capacity, an
///   exclusive workspace is alone, and `max_co_tenants` holds.
/// - **`list_placement_candidates` is one bulk read**: it returns the `running`,
///   `active` nodes of one provider ordered by `(created_at, id)`, each with its
///   slot-holding workspaces ordered by `(created_at, id)` and the task it is held
///   for ([`NodeRecord::held_for`]), in a constant number of queries (never one per
///   node) over one consistent snapshot.
/// - **`get_placement_candidate` is the same read for one node**: one consistent
///   snapshot of the node, its slot-holding workspaces and the task it is held for,
///   equal to the node's entry in `list_placement_candidates` when it is listed there.
/// - **`release_node_to_warm` is atomic**: an `active` node with no slot-holding
///   workspace becomes `warm` with `warm_since` set; otherwise nothing changes.
/// - **`record_node_beat` touches only liveness**: it sets `last_heartbeat_at` and
///   `updated_at`, turns a `stale` node `healthy`, and for a ready callback also sets
///   `status` `running`, `health` `healthy`, `agent_version`, `ready_at` (kept when
///   set) and, when the beat carries one, the boot record's timeline (its failure
///   kept), in one statement; it never changes `lifecycle`, `warm_since` or anything
///   else, so a beat racing a warm claim or release cannot undo it.
/// - **`mark_node_stale` is conditional**: only a `healthy` node whose last heartbeat
///   is older than `beat_before` becomes `stale` (with `updated_at`), in one
///   statement, and nothing else changes; otherwise it writes nothing and returns
///   `false`. A beat or a warm claim landing after the caller's read survives.
/// - **A stopped workspace stays stopped**: `update_workspace` on a `stopped`
///   workspace changes nothing, so a late report cannot take back a freed slot.
/// - **Deletes are idempotent**: deleting a missing row succeeds.
/// - **Bad stored data is a typed error** (`InvalidData`), never a panic.
/// - **Timestamps round-trip to the microsecond**; finer precision may be dropped.
/// - **GitHub installation links are per user**: `put_github_installation` writes or
///   replaces the link under its [`InstallationKey`] (`<user id>:<external id>`), so
///   two users linking one installation have two rows with the same external id;
///   `list_github_installations` returns a user's links ordered by
///   `(created_at, key)`, and only theirs; `delete_github_installation` removes one
///   link and leaves the other users' links to the same installation.
/// - **Users, projects and profiles are upserted by id** (`put_*`); projects are
///   listed by `(created_at, id)`, a project's profiles by `(created_at, id)`.
///   A profile's name is unique within its project: putting a profile whose name
///   another profile of the project holds is `AlreadyExists`. A profile of a missing
///   project is `NotFound`. Deleting a project deletes its profiles and credentials.
///   Nothing is created implicitly: a new project has no profiles, and deleting
///   every profile leaves none.
/// - **API tokens are records**: `put_api_token` inserts (`AlreadyExists` for a taken
///   id or hash); `find_api_token` finds revoked and expired tokens too;
///   `list_api_tokens` is ordered by `(created_at, id)`; `revoke_api_token` sets the
///   revocation time once; `touch_api_token` changes the last use only;
///   `rotate_bootstrap_api_token` leaves exactly one unrevoked bootstrap token, in
///   one transaction.
/// - **Credentials are upserted by `(owner, target)`** and listed per owner ordered
///   by target; the store keeps them sealed and never opens them.
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait Store: Send + Sync + Debug {
    /// Writes a new task and its submission status event.
    ///
    /// # Errors
    /// `AlreadyExists` when the id is taken.
    async fn create_task(&self, task: &TaskRecord) -> Result<(), StoreError>;

    /// Reads a task.
    ///
    /// # Errors
    /// Backend or decoding failures.
    async fn get_task(&self, id: &TaskId) -> Result<Option<TaskRecord>, StoreError>;

    /// Lists tasks matching `filter`, ordered by `(created_at, id)`.
    ///
    /// # Errors
    /// Backend or decoding failures.
    async fn list_tasks(&self, filter: &TaskFilter) -> Result<Vec<TaskRecord>, StoreError>;

    /// Applies an optimistic status change; `Ok(false)` when the task is no longer in `from`.
    ///
    /// # Errors
    /// `NotFound` for a missing task; `InvalidInput` for a forbidden move.
    async fn transition_task(&self, id: &TaskId, change: &Transition) -> Result<bool, StoreError>;

    /// Sets the execution step; `Ok(false)` (and no write) when it is already `step`.
    ///
    /// # Errors
    /// `NotFound` for a missing task.
    async fn set_execution_step(
        &self,
        id: &TaskId,
        step: ExecutionStep,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError>;

    /// Changes the given fields and sets `updated_at`.
    ///
    /// # Errors
    /// `NotFound` for a missing task.
    async fn update_task(
        &self,
        id: &TaskId,
        update: &TaskUpdate,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError>;

    /// Leases due tasks to `request.owner`.
    ///
    /// # Errors
    /// Backend failures.
    async fn claim_due_tasks(&self, request: &LeaseRequest) -> Result<Vec<TaskRecord>, StoreError>;

    /// Gives a lease back with the step and fields the holder's handler changed, in
    /// one transaction; `NotHeld` (and no write) when `release.owner` does not hold it.
    ///
    /// # Errors
    /// Backend failures.
    async fn release_lease(
        &self,
        id: &TaskId,
        release: &LeaseRelease,
    ) -> Result<LeaseReleased, StoreError>;

    /// Applies `writes` in one transaction while `lease` holds at `at`.
    ///
    /// # Errors
    /// `LeaseLost` (and no write) when the lease is another owner's, of another
    /// epoch, free or expired; `NotFound` for a missing task; what each write's own
    /// method would return.
    async fn write_leased(
        &self,
        lease: &Lease,
        at: DateTime<Utc>,
        writes: &[LeasedWrite],
    ) -> Result<LeasedOutcome, StoreError>;

    /// Adds `notice` to the task's notices, numbered after the last.
    ///
    /// # Errors
    /// `NotFound` for a missing task.
    async fn add_task_notice(
        &self,
        id: &TaskId,
        at: DateTime<Utc>,
        notice: &TaskNotice,
    ) -> Result<(), StoreError>;

    /// A task's notices, oldest first; empty for a missing task.
    ///
    /// # Errors
    /// Backend or decoding failures.
    async fn list_task_notices(&self, id: &TaskId) -> Result<Vec<TaskNoticeRecord>, StoreError>;

    /// Writes `key` unless a key with its id exists; returns the stored key.
    ///
    /// # Errors
    /// Backend or decoding failures.
    async fn put_key_if_absent(&self, key: &KeyRecord) -> Result<KeyRecord, StoreError>;

    /// The key of `purpose` with `id`.
    ///
    /// # Errors
    /// Backend or decoding failures.
    async fn get_key(&self, purpose: KeyPurpose, id: &str)
    -> Result<Option<KeyRecord>, StoreError>;

    /// The keys of `purpose`, ordered by `(created_at, id)`.
    ///
    /// # Errors
    /// Backend or decoding failures.
    async fn list_keys(&self, purpose: KeyPurpose) -> Result<Vec<KeyRecord>, StoreError>;

    /// The status events of a task, oldest first.
    ///
    /// # Errors
    /// Backend or decoding failures.
    async fn list_status_events(&self, id: &TaskId) -> Result<Vec<StatusEvent>, StoreError>;

    /// Writes a node row, replacing any row with the same id.
    ///
    /// # Errors
    /// Backend failures.
    async fn put_node(&self, node: &NodeRecord) -> Result<(), StoreError>;

    /// Reads a node.
    ///
    /// # Errors
    /// Backend or decoding failures.
    async fn get_node(&self, id: &NodeId) -> Result<Option<NodeRecord>, StoreError>;

    /// Lists nodes matching `filter`, ordered by `(created_at, id)`.
    ///
    /// # Errors
    /// Backend or decoding failures.
    async fn list_nodes(&self, filter: &NodeFilter) -> Result<Vec<NodeRecord>, StoreError>;

    /// Deletes a node row; succeeds when it is already gone.
    ///
    /// # Errors
    /// Backend failures.
    async fn delete_node(&self, id: &NodeId) -> Result<(), StoreError>;

    /// Records a sign of life of a node's VM agent, changing only its liveness fields.
    ///
    /// # Errors
    /// `NotFound` for a missing node.
    async fn record_node_beat(&self, id: &NodeId, beat: &NodeBeat) -> Result<(), StoreError>;

    /// Marks a healthy node whose last heartbeat is older than `beat_before` stale;
    /// `Ok(false)` (and no write) when it is not healthy or has beaten since.
    ///
    /// # Errors
    /// `NotFound` for a missing node.
    async fn mark_node_stale(
        &self,
        id: &NodeId,
        beat_before: DateTime<Utc>,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError>;

    /// Claims one matching warm node for a task, atomically.
    ///
    /// # Errors
    /// Backend failures.
    async fn claim_warm_node(&self, claim: &WarmClaim) -> Result<Option<NodeRecord>, StoreError>;

    /// Returns an idle active node to the warm pool; `Ok(false)` when it still holds a
    /// workspace or is not active.
    ///
    /// # Errors
    /// `NotFound` for a missing node.
    async fn release_node_to_warm(
        &self,
        id: &NodeId,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError>;

    /// Reserves a workspace slot on its node, atomically.
    ///
    /// # Errors
    /// `NotFound` for a missing node; `AlreadyExists` for a taken workspace id.
    async fn reserve_workspace_slot(
        &self,
        workspace: &WorkspaceRecord,
    ) -> Result<SlotOutcome, StoreError>;

    /// The `running`, `active` nodes of `provider` with their slot-holding workspaces
    /// and the task each is held for, ordered by `(created_at, id)`: everything
    /// placement on existing nodes needs, in one bulk read.
    ///
    /// # Errors
    /// Backend or decoding failures.
    async fn list_placement_candidates(
        &self,
        provider: ProviderKind,
    ) -> Result<Vec<PlacementCandidate>, StoreError>;

    /// Node `id` as placement judges it, whatever its status, lifecycle or
    /// provider: its row, its slot-holding workspaces ordered by `(created_at, id)`
    /// and the task it is held for; `None` when there is no such node. For a
    /// `running`, `active` node it is exactly that node's entry in
    /// [`Store::list_placement_candidates`]. A scheduler checking one proposed node
    /// reads this instead of the node, its workspaces and its creator task one by one.
    ///
    /// # Errors
    /// Backend or decoding failures.
    async fn get_placement_candidate(
        &self,
        id: &NodeId,
    ) -> Result<Option<PlacementCandidate>, StoreError>;

    /// Reads a workspace.
    ///
    /// # Errors
    /// Backend or decoding failures.
    async fn get_workspace(&self, id: &WorkspaceId) -> Result<Option<WorkspaceRecord>, StoreError>;

    /// Lists the workspaces of a node, ordered by `(created_at, id)`.
    ///
    /// # Errors
    /// Backend or decoding failures.
    async fn list_workspaces(&self, node: &NodeId) -> Result<Vec<WorkspaceRecord>, StoreError>;

    /// Sets a workspace's status (and effective profile, when given); a status that
    /// does not hold a slot frees it. A `stopped` workspace is left as it is.
    ///
    /// # Errors
    /// `NotFound` for a missing workspace.
    async fn update_workspace(
        &self,
        id: &WorkspaceId,
        status: WorkspaceStatus,
        effective_profile: Option<String>,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError>;

    /// Stores an API token's hash.
    ///
    /// # Errors
    /// `AlreadyExists` for a taken id or hash.
    async fn put_api_token(&self, token: &ApiTokenRecord) -> Result<(), StoreError>;

    /// Finds an API token by its hash, revoked and expired ones included (the
    /// caller decides with [`ApiTokenRecord::check`]).
    ///
    /// # Errors
    /// Backend failures.
    async fn find_api_token(&self, hash: &str) -> Result<Option<ApiTokenRecord>, StoreError>;

    /// Every API token, revoked ones included, ordered by `(created_at, id)`.
    ///
    /// # Errors
    /// Backend or decoding failures.
    async fn list_api_tokens(&self) -> Result<Vec<ApiTokenRecord>, StoreError>;

    /// Revokes the API token `id` at `at`; `Ok(false)` when it was revoked already
    /// (its revocation time stays the first one).
    ///
    /// # Errors
    /// `NotFound` for an unknown id.
    async fn revoke_api_token(&self, id: &str, at: DateTime<Utc>) -> Result<bool, StoreError>;

    /// Records that the API token `id` was used at `at` (its `last_used_at` only).
    ///
    /// # Errors
    /// `NotFound` for an unknown id.
    async fn touch_api_token(&self, id: &str, at: DateTime<Utc>) -> Result<(), StoreError>;

    /// Makes `token` the one live bootstrap token, atomically: every other
    /// unrevoked bootstrap token is revoked at `token.created_at`; a row with
    /// `token`'s hash becomes a live bootstrap token (keeping its id, creation and
    /// last use); otherwise `token` is written.
    ///
    /// # Errors
    /// `AlreadyExists` when `token`'s id is taken by a row of another hash.
    async fn rotate_bootstrap_api_token(&self, token: &ApiTokenRecord) -> Result<(), StoreError>;

    /// Writes one user's link to a GitHub App installation, replacing the row with
    /// the same key.
    ///
    /// # Errors
    /// Backend failures.
    async fn put_github_installation(
        &self,
        installation: &GithubInstallation,
    ) -> Result<(), StoreError>;

    /// Reads a link by its storage key.
    ///
    /// # Errors
    /// Backend or decoding failures.
    async fn get_github_installation(
        &self,
        key: &InstallationKey,
    ) -> Result<Option<GithubInstallation>, StoreError>;

    /// The links of one user, ordered by `(created_at, key)`.
    ///
    /// # Errors
    /// Backend or decoding failures.
    async fn list_github_installations(
        &self,
        user: &UserId,
    ) -> Result<Vec<GithubInstallation>, StoreError>;

    /// Deletes one user's link to an installation; succeeds when it is gone.
    ///
    /// # Errors
    /// Backend failures.
    async fn delete_github_installation(&self, key: &InstallationKey) -> Result<(), StoreError>;

    /// Writes a user, replacing any user with the same id.
    ///
    /// # Errors
    /// Backend failures.
    async fn put_user(&self, user: &UserRecord) -> Result<(), StoreError>;

    /// Reads a user.
    ///
    /// # Errors
    /// Backend or decoding failures.
    async fn get_user(&self, id: &UserId) -> Result<Option<UserRecord>, StoreError>;

    /// Writes a project, replacing any project with the same id.
    ///
    /// # Errors
    /// Backend failures.
    async fn put_project(&self, project: &ProjectRecord) -> Result<(), StoreError>;

    /// Reads a project.
    ///
    /// # Errors
    /// Backend or decoding failures.
    async fn get_project(&self, id: &ProjectId) -> Result<Option<ProjectRecord>, StoreError>;

    /// Lists every project, ordered by `(created_at, id)`.
    ///
    /// # Errors
    /// Backend or decoding failures.
    async fn list_projects(&self) -> Result<Vec<ProjectRecord>, StoreError>;

    /// Deletes a project with its profiles and credentials; succeeds when it is gone.
    ///
    /// # Errors
    /// Backend failures.
    async fn delete_project(&self, id: &ProjectId) -> Result<(), StoreError>;

    /// Writes an agent profile, replacing any profile with the same id.
    ///
    /// # Errors
    /// `NotFound` when its project does not exist; `AlreadyExists` when another
    /// profile of the project has its name.
    async fn put_profile(&self, profile: &AgentProfileRecord) -> Result<(), StoreError>;

    /// Reads an agent profile.
    ///
    /// # Errors
    /// Backend or decoding failures.
    async fn get_profile(&self, id: &ProfileId) -> Result<Option<AgentProfileRecord>, StoreError>;

    /// Lists a project's profiles, ordered by `(created_at, id)`.
    ///
    /// # Errors
    /// Backend or decoding failures.
    async fn list_profiles(
        &self,
        project: &ProjectId,
    ) -> Result<Vec<AgentProfileRecord>, StoreError>;

    /// Deletes an agent profile; succeeds when it is gone.
    ///
    /// # Errors
    /// Backend failures.
    async fn delete_profile(&self, id: &ProfileId) -> Result<(), StoreError>;

    /// Writes a credential, replacing the owner's credential for the same target.
    ///
    /// # Errors
    /// Backend failures.
    async fn put_credential(&self, credential: &CredentialRecord) -> Result<(), StoreError>;

    /// Lists an owner's credentials, ordered by target.
    ///
    /// # Errors
    /// Backend or decoding failures.
    async fn list_credentials(
        &self,
        owner: &CredentialOwner,
    ) -> Result<Vec<CredentialRecord>, StoreError>;

    /// Deletes an owner's credential for a target; succeeds when it is gone.
    ///
    /// # Errors
    /// Backend failures.
    async fn delete_credential(
        &self,
        owner: &CredentialOwner,
        target: &CredentialTarget,
    ) -> Result<(), StoreError>;
}
