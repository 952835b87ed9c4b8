//! [`MemoryStore`]: the in-memory backend, always compiled, for tests and
//! single-process embedding.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, MutexGuard};

use chrono::{DateTime, Utc};
use foldhash::HashMap;
use sam_core::{
    AgentProfileRecord, ApiTokenRecord, CredentialOwner, CredentialRecord, CredentialTarget,
    GithubInstallation, InstallationKey, KeyRecord, NodeId, NodeLifecycle, NodeRecord,
    PlacementCandidate, ProfileId, ProjectId, ProjectRecord, Reservation, SetupChoices,
    StatusEvent, TaskEvent, TaskId, TaskRecord, UserId, UserRecord, WorkspaceId, WorkspaceRecord,
};

use crate::error::Error;

mod accounts;
mod fleet;
mod tasks;

/// A [`Store`](sam_core::Store) that keeps everything in memory behind one lock.
///
/// Every operation holds the lock for its whole duration, so each one is atomic.
#[derive(Debug, Default)]
pub struct MemoryStore {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    tasks: BTreeMap<TaskId, TaskRecord>,
    events: Vec<StatusEvent>,
    /// Each task's transcript, in number order.
    transcripts: BTreeMap<TaskId, Vec<TaskEvent>>,
    keys: BTreeMap<String, KeyRecord>,
    nodes: BTreeMap<NodeId, NodeRecord>,
    /// The nodes whose lifecycle is `warm`, so a claim looks at those only.
    warm: BTreeSet<NodeId>,
    /// Looked up by id only (lists go through `on_node` and sort), so hashed: a
    /// fleet's workspace rows are never deleted and a B-tree over them grows deep.
    workspaces: HashMap<WorkspaceId, WorkspaceRecord>,
    /// The workspaces of each node (workspace rows are never deleted), so a node's
    /// slots are found without looking at every workspace.
    on_node: HashMap<NodeId, Vec<WorkspaceId>>,
    /// The slot-holding workspaces of each node: placement reads these on every
    /// decision, and a node's history of stopped workspaces only grows.
    live_on_node: HashMap<NodeId, Vec<WorkspaceId>>,
    tokens: BTreeMap<String, ApiTokenRecord>,
    installations: BTreeMap<InstallationKey, GithubInstallation>,
    users: BTreeMap<UserId, UserRecord>,
    /// Each user's setup choices, kept apart from the user as the contract asks.
    setup_choices: BTreeMap<UserId, SetupChoices>,
    projects: BTreeMap<ProjectId, ProjectRecord>,
    profiles: BTreeMap<ProfileId, AgentProfileRecord>,
    credentials: BTreeMap<(CredentialOwner, CredentialTarget), CredentialRecord>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave a half-written record: every
        // operation validates before it writes, so the state is still consistent.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl State {
    fn task_mut(&mut self, id: &TaskId) -> Result<&mut TaskRecord, Error> {
        self.tasks
            .get_mut(id)
            .ok_or_else(|| Error::not_found(format!("task {id}")))
    }

    /// The workspaces of `node`, in no particular order.
    fn workspaces_on<'a>(&'a self, node: &NodeId) -> impl Iterator<Item = &'a WorkspaceRecord> {
        self.records(self.on_node.get(node))
    }

    /// The slot-holding workspaces of `node`, in no particular order.
    fn live_on<'a>(&'a self, node: &NodeId) -> impl Iterator<Item = &'a WorkspaceRecord> {
        self.records(self.live_on_node.get(node))
    }

    /// The records of the workspaces `ids` names.
    fn records<'a>(
        &'a self,
        ids: Option<&'a Vec<WorkspaceId>>,
    ) -> impl Iterator<Item = &'a WorkspaceRecord> {
        ids.into_iter()
            .flatten()
            .filter_map(|id| self.workspaces.get(id))
    }

    fn live_reservations(&self, node: &NodeId) -> Vec<Reservation> {
        self.live_on(node).map(|w| w.reservation).collect()
    }

    /// `node` as placement judges it: its slot-holding workspaces and the task it is
    /// held for.
    fn candidate(&self, node: &NodeRecord) -> PlacementCandidate {
        // Only a node whose creator task exists can be held; only then are the rows
        // that no longer hold a slot needed.
        let creator = node.created_for.as_ref().and_then(|t| self.tasks.get(t));
        let held_for = creator.and_then(|creator| {
            let all: Vec<WorkspaceRecord> = self.workspaces_on(&node.id).cloned().collect();
            node.held_for(&all, Some(creator)).cloned()
        });
        let mut workspaces: Vec<WorkspaceRecord> = self.live_on(&node.id).cloned().collect();
        by_creation(&mut workspaces, |w| (w.created_at, w.id.as_str()));
        PlacementCandidate {
            node: node.clone(),
            workspaces,
            held_for,
        }
    }

    /// Writes a node row, keeping the warm set in step.
    fn set_node(&mut self, node: NodeRecord) {
        if node.lifecycle == NodeLifecycle::Warm {
            self.warm.insert(node.id.clone());
        } else {
            self.warm.remove(&node.id);
        }
        self.nodes.insert(node.id.clone(), node);
    }
}

/// Sorts `items` by `(created_at, id)`, borrowing the keys: a sort that built an owned
/// key per comparison allocated O(n log n) strings on every list.
fn by_creation<T>(items: &mut [T], key: impl Fn(&T) -> (DateTime<Utc>, &str)) {
    items.sort_by(|a, b| key(a).cmp(&key(b)));
}

#[cfg(test)]
mod conformance {
    sam_core::store_conformance!(async { crate::MemoryStore::new() });
}
