//! The records of the fleet: nodes, their signs of life, warm claims, workspaces and
//! the slots they hold, and a node as placement judges it.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::boot::NodeBootRecord;
use crate::credential::CredentialOwner;
use crate::model::{
    Labels, Location, NodeHealth, NodeId, NodeLifecycle, NodeStatus, ProviderKind, TaskId, VmId,
    VmSize, WorkspaceId,
};
use crate::record::TaskRecord;
use crate::reservation::{Capacity, Reservation, SlotRejection};

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
/// [`FleetStore::list_placement_candidates`](crate::store::FleetStore::list_placement_candidates).
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
