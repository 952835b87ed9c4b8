//! [`FleetStore`] for [`MemoryStore`]: keys, nodes, the warm pool, workspace slots
//! and placement reads.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sam_core::{
    FleetStore, KeyPurpose, KeyRecord, NodeBeat, NodeFilter, NodeHealth, NodeId, NodeLifecycle,
    NodeRecord, NodeStatus, PlacementCandidate, ProviderKind, SlotOutcome, StoreError, WarmClaim,
    WorkspaceId, WorkspaceRecord, WorkspaceStatus, check_slot,
};

use super::{MemoryStore, State, by_creation};
use crate::error::Error;

impl State {
    /// [`FleetStore::put_node`]: a boot record is never cleared by a row read before it
    /// was reported.
    pub(super) fn put_node(&mut self, node: &NodeRecord) {
        let mut node = node.clone();
        if let Some(stored) = self.nodes.get(&node.id) {
            if node.boot.timeline.is_empty() {
                node.boot.timeline.clone_from(&stored.boot.timeline);
            }
            if node.boot.failure.is_none() {
                node.boot.failure.clone_from(&stored.boot.failure);
            }
        }
        self.set_node(node);
    }

    pub(super) fn delete_node(&mut self, id: &NodeId) {
        if self
            .keys
            .get(id.as_str())
            .is_some_and(|k| k.purpose == KeyPurpose::Node)
        {
            self.keys.remove(id.as_str());
        }
        self.nodes.remove(id);
        self.warm.remove(id);
    }
}

#[async_trait]
impl FleetStore for MemoryStore {
    async fn put_key_if_absent(&self, key: &KeyRecord) -> Result<KeyRecord, StoreError> {
        let mut state = self.state();
        Ok(state
            .keys
            .entry(key.id.clone())
            .or_insert_with(|| key.clone())
            .clone())
    }

    async fn get_key(
        &self,
        purpose: KeyPurpose,
        id: &str,
    ) -> Result<Option<KeyRecord>, StoreError> {
        Ok(self
            .state()
            .keys
            .get(id)
            .filter(|k| k.purpose == purpose)
            .cloned())
    }

    async fn list_keys(&self, purpose: KeyPurpose) -> Result<Vec<KeyRecord>, StoreError> {
        let mut keys: Vec<KeyRecord> = self
            .state()
            .keys
            .values()
            .filter(|k| k.purpose == purpose)
            .cloned()
            .collect();
        keys.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(keys)
    }

    async fn put_node(&self, node: &NodeRecord) -> Result<(), StoreError> {
        self.state().put_node(node);
        Ok(())
    }

    async fn get_node(&self, id: &NodeId) -> Result<Option<NodeRecord>, StoreError> {
        Ok(self.state().nodes.get(id).cloned())
    }

    async fn list_nodes(&self, filter: &NodeFilter) -> Result<Vec<NodeRecord>, StoreError> {
        let mut nodes: Vec<NodeRecord> = self
            .state()
            .nodes
            .values()
            .filter(|n| filter.statuses.is_empty() || filter.statuses.contains(&n.status))
            .filter(|n| filter.lifecycles.is_empty() || filter.lifecycles.contains(&n.lifecycle))
            .filter(|n| filter.provider.is_none_or(|p| p == n.provider))
            .cloned()
            .collect();
        by_creation(&mut nodes, |n| (n.created_at, n.id.as_str()));
        Ok(nodes)
    }

    async fn delete_node(&self, id: &NodeId) -> Result<(), StoreError> {
        self.state().delete_node(id);
        Ok(())
    }

    async fn record_node_beat(&self, id: &NodeId, beat: &NodeBeat) -> Result<(), StoreError> {
        let mut state = self.state();
        let node = state
            .nodes
            .get_mut(id)
            .ok_or_else(|| Error::not_found(format!("node {id}")))?;
        node.last_heartbeat_at = Some(beat.at);
        node.updated_at = beat.at;
        if node.health == NodeHealth::Stale {
            node.health = NodeHealth::Healthy;
        }
        if let Some(version) = &beat.ready_version {
            node.status = NodeStatus::Running;
            node.health = NodeHealth::Healthy;
            node.ready_at.get_or_insert(beat.at);
            node.agent_version = Some(version.clone());
            if !beat.boot_timeline.is_empty() {
                node.boot.timeline.clone_from(&beat.boot_timeline);
            }
        }
        Ok(())
    }

    async fn mark_node_stale(
        &self,
        id: &NodeId,
        beat_before: DateTime<Utc>,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let mut state = self.state();
        let node = state
            .nodes
            .get_mut(id)
            .ok_or_else(|| Error::not_found(format!("node {id}")))?;
        let silent = node
            .last_heartbeat_at
            .is_some_and(|beat| beat < beat_before);
        if node.health != NodeHealth::Healthy || !silent {
            return Ok(false);
        }
        node.health = NodeHealth::Stale;
        node.updated_at = at;
        Ok(true)
    }

    async fn claim_warm_node(&self, claim: &WarmClaim) -> Result<Option<NodeRecord>, StoreError> {
        let mut state = self.state();
        let chosen = state
            .warm
            .iter()
            .filter_map(|id| state.nodes.get(id))
            .filter(|n| {
                n.lifecycle == NodeLifecycle::Warm
                    && n.status == NodeStatus::Running
                    && n.health == NodeHealth::Healthy
                    && n.provider == claim.provider
                    && n.size == claim.size
                    && n.credential_owner == claim.credential_owner
                    && claim.location.as_ref().is_none_or(|l| l == &n.location)
            })
            .min_by_key(|n| (n.warm_since, n.created_at, n.id.to_string()))
            .cloned();
        Ok(chosen.map(|mut n| {
            n.lifecycle = NodeLifecycle::Active;
            n.warm_since = None;
            n.updated_at = claim.now;
            state.set_node(n.clone());
            n
        }))
    }

    async fn release_node_to_warm(
        &self,
        id: &NodeId,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let mut state = self.state();
        let busy = !state.live_reservations(id).is_empty();
        let node = state
            .nodes
            .get_mut(id)
            .ok_or_else(|| Error::not_found(format!("node {id}")))?;
        if busy || node.lifecycle != NodeLifecycle::Active {
            return Ok(false);
        }
        node.lifecycle = NodeLifecycle::Warm;
        node.warm_since = Some(at);
        node.updated_at = at;
        state.warm.insert(id.clone());
        Ok(true)
    }

    async fn reserve_workspace_slot(
        &self,
        workspace: &WorkspaceRecord,
    ) -> Result<SlotOutcome, StoreError> {
        let mut state = self.state();
        let capacity = match state.nodes.get(&workspace.node_id) {
            Some(node) => node.capacity,
            None => return Err(Error::not_found(format!("node {}", workspace.node_id)).into()),
        };
        if state.workspaces.contains_key(&workspace.id) {
            return Err(Error::already_exists(format!("workspace {}", workspace.id)).into());
        }
        let live = state.live_reservations(&workspace.node_id);
        if let Err(rejection) = check_slot(&capacity, &live, &workspace.reservation) {
            return Ok(SlotOutcome::Rejected(rejection));
        }
        state
            .workspaces
            .insert(workspace.id.clone(), workspace.clone());
        state
            .on_node
            .entry(workspace.node_id.clone())
            .or_default()
            .push(workspace.id.clone());
        if workspace.status.holds_slot() {
            state
                .live_on_node
                .entry(workspace.node_id.clone())
                .or_default()
                .push(workspace.id.clone());
        }
        Ok(SlotOutcome::Reserved)
    }

    async fn list_placement_candidates(
        &self,
        provider: ProviderKind,
    ) -> Result<Vec<PlacementCandidate>, StoreError> {
        let state = self.state();
        let mut candidates: Vec<PlacementCandidate> = state
            .nodes
            .values()
            .filter(|n| {
                n.provider == provider
                    && n.status == NodeStatus::Running
                    && n.lifecycle == NodeLifecycle::Active
            })
            .map(|node| state.candidate(node))
            .collect();
        // The nodes come in id order; a stable sort by creation time makes it
        // `(created_at, id)` without formatting a key per comparison.
        candidates.sort_by_key(|c| c.node.created_at);
        Ok(candidates)
    }

    async fn get_placement_candidate(
        &self,
        id: &NodeId,
    ) -> Result<Option<PlacementCandidate>, StoreError> {
        let state = self.state();
        Ok(state.nodes.get(id).map(|node| state.candidate(node)))
    }

    async fn get_workspace(&self, id: &WorkspaceId) -> Result<Option<WorkspaceRecord>, StoreError> {
        Ok(self.state().workspaces.get(id).cloned())
    }

    async fn list_workspaces(&self, node: &NodeId) -> Result<Vec<WorkspaceRecord>, StoreError> {
        let mut list: Vec<WorkspaceRecord> = self.state().workspaces_on(node).cloned().collect();
        by_creation(&mut list, |w| (w.created_at, w.id.as_str()));
        Ok(list)
    }

    async fn update_workspace(
        &self,
        id: &WorkspaceId,
        status: WorkspaceStatus,
        effective_profile: Option<String>,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let mut state = self.state();
        let ws = state
            .workspaces
            .get_mut(id)
            .ok_or_else(|| Error::not_found(format!("workspace {id}")))?;
        if ws.status == WorkspaceStatus::Stopped {
            // A late report cannot revive a stopped workspace.
            return Ok(());
        }
        ws.status = status;
        if effective_profile.is_some() {
            ws.effective_profile = effective_profile;
        }
        ws.updated_at = at;
        if !status.holds_slot() {
            let node = ws.node_id.clone();
            if let Some(live) = state.live_on_node.get_mut(&node) {
                live.retain(|w| w != id);
            }
        }
        Ok(())
    }
}
