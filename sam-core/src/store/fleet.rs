//! [`FleetStore`]: nodes and their signs of life, the warm pool, workspace slots,
//! the reads placement decides from, and the keys of nodes and of the control plane.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::error::StoreError;
use crate::model::{NodeId, ProviderKind, WorkspaceId};
use crate::record::{
    KeyPurpose, KeyRecord, NodeBeat, NodeFilter, NodeRecord, PlacementCandidate, SlotOutcome,
    WarmClaim, WorkspaceRecord, WorkspaceStatus,
};
#[cfg(doc)]
use crate::store::Store;

/// The durable state of the fleet: the nodes, what each holds, and the keys they
/// and the control planes sign with.
///
/// The keys are here rather than with the accounts: a node's key lives and dies with
/// its node row (deleting the node deletes it, in the same transaction), which is the
/// only rule the store keeps about keys beyond writing each once; the control plane's
/// signing key belongs to no user or project either, and it is read where node tokens
/// are issued.
///
/// # Contract
/// Every backend guarantees, besides the clauses every [`Store`] keeps:
/// - **Lists are ordered**: nodes by `(created_at, id)`, workspaces by
///   `(created_at, id)`.
/// - **A key is written once**: `put_key_if_absent` writes a key whose id is new and
///   otherwise leaves the stored one, and returns the key stored under the id either
///   way, so control planes starting at once on one database agree on it;
///   `list_keys` returns the keys of a purpose ordered by `(created_at, id)`.
///   Deleting a node (`delete_node`, or a leased `DeleteNode`) deletes its `node` key.
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
#[async_trait]
pub trait FleetStore: Send + Sync + std::fmt::Debug {
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
    /// [`FleetStore::list_placement_candidates`]. A scheduler checking one proposed node
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
}
