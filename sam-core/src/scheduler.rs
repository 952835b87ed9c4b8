//! The [`Scheduler`] trait: where a task runs, and why.

use std::fmt::Debug;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::credential::CredentialOwner;
use crate::failure::Error;
use crate::model::{Location, NodeId, ProviderKind, TaskId, VmSize, WorkspaceId};
use crate::record::NodeRecord;
use crate::reservation::{Layer, Reservation};

// Plain data persisted with the task, so it sits with the records.
pub use crate::record::{PlacementExplanation, Rejected};

/// What a placement decision is made from.
#[derive(Debug, Clone, PartialEq)]
pub struct PlacementRequest {
    /// The task being placed.
    pub task_id: TaskId,
    /// The provider to place on.
    pub provider: ProviderKind,
    /// The requested size.
    pub size: VmSize,
    /// Where the size came from.
    pub size_source: Layer,
    /// The requested location, if any.
    pub location: Option<Location>,
    /// Where the location came from: an explicit one
    /// ([`Layer::is_explicit_location`]) is a requirement.
    pub location_source: Layer,
    /// The resolved reservation.
    pub reservation: Reservation,
    /// A node the task asked for, if any.
    pub preferred_node: Option<NodeId>,
    /// Whose provider credential the task's nodes must have been made with (`None`:
    /// the platform's): a task runs only on nodes its own credential owner pays for.
    pub credential_owner: Option<CredentialOwner>,
    /// The current time (for warm-node claims), supplied by the caller's clock.
    pub now: DateTime<Utc>,
}

impl PlacementRequest {
    /// The requested location when it is explicit ([`Layer::is_explicit_location`]):
    /// then the task is placed on, or claims, only a node in it, and provisions only
    /// there.
    pub fn explicit_location(&self) -> Option<&Location> {
        self.location
            .as_ref()
            .filter(|_| self.location_source.is_explicit_location())
    }
}

/// How an existing node was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeChoice {
    /// The task's preferred node.
    Preferred,
    /// A warm node, claimed atomically.
    Warm,
    /// A running node with room for the reservation.
    Existing,
}

/// Where the task goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Placement {
    /// Onto an existing node.
    Node {
        /// The node.
        node_id: NodeId,
        /// How it was chosen.
        choice: NodeChoice,
    },
    /// Onto a new VM, walking the fallback plan from this size and location.
    Provision {
        /// The size to start from.
        size: VmSize,
        /// The location to start from, if any.
        location: Option<Location>,
    },
}

/// A placement and its explanation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlacementDecision {
    /// Where the task goes.
    pub placement: Placement,
    /// Why.
    pub explanation: PlacementExplanation,
    /// For [`Placement::Node`], the node as the scheduler last read it, so the caller
    /// need not read it again for what does not change (its size and location);
    /// `None` when the scheduler does not have it. Not persisted.
    #[serde(skip)]
    pub node: Option<Box<NodeRecord>>,
}

/// Decides where a task runs.
///
/// # Contract
/// - **Same account**: a task is placed only on nodes (preferred, warm or existing)
///   made with its own credential owner's provider credential.
/// - **Explicit location**: when [`PlacementRequest::explicit_location`] is set, every
///   node chosen (preferred, warm or existing) is in that location.
/// - **Order**: the preferred node (if given and it fits, else a clear permanent
///   error), then a warm node claimed atomically (exact size first, then location),
///   then an existing healthy node whose capacity minus its live reservations covers
///   the reservation (best fit), then provisioning.
/// - **Never over-commits**: a chosen node satisfies
///   [`crate::reservation::check_slot`]; `exclusive` and `max_co_tenants` hold.
/// - **Explains**: every decision lists the chosen target, the reason, and every
///   rejected candidate with its reason.
/// - **Deterministic**: the same store contents and request give the same decision.
/// - **Hints only free**: [`Scheduler::released`] is called after the store has freed
///   a slot; a scheduler may count that room again before it next reads the store,
///   and nothing else. A lost or late hint costs at most a tighter fit missed until
///   the next read, never an over-commit (decisions stay checked against the store).
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait Scheduler: Send + Sync + Debug {
    /// Decides where `request` runs.
    ///
    /// # Errors
    /// `invalid_config` for a preferred node that cannot take the task; store
    /// failures as classified.
    async fn place(&self, request: &PlacementRequest) -> Result<PlacementDecision, Error>;

    /// Told that `task`'s workspace `workspace` no longer holds its slot: the store
    /// already says so. A scheduler that keeps a view of the fleet between reads
    /// frees the slot in it; one that reads the store for every decision has
    /// nothing to do, which is the default.
    fn released(&self, task: &TaskId, workspace: &WorkspaceId) {
        let _ = (task, workspace);
    }
}
