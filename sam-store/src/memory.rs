//! [`MemoryStore`]: the in-memory backend, always compiled, for tests and
//! single-process embedding.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, MutexGuard};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use foldhash::HashMap;
use sam_core::{
    AgentProfileRecord, ApiTokenKind, ApiTokenRecord, CredentialOwner, CredentialRecord,
    CredentialTarget, ExecutionStep, GithubInstallation, InstallationKey, KeyPurpose, KeyRecord,
    Lease, LeaseRelease, LeaseReleased, LeaseRequest, LeasedOutcome, LeasedWrite, NodeBeat,
    NodeFilter, NodeHealth, NodeId, NodeLifecycle, NodeRecord, NodeStatus, PlacementCandidate,
    ProfileId, ProjectId, ProjectRecord, ProviderKind, Reservation, SlotOutcome, StatusEvent,
    Store, StoreError, TaskFilter, TaskId, TaskNotice, TaskNoticeRecord, TaskRecord, TaskUpdate,
    Transition, UserId, UserRecord, WarmClaim, WorkspaceId, WorkspaceRecord, WorkspaceStatus,
    check_slot,
};

use crate::error::Error;
use crate::task::{
    LeaseState, SUBMISSION_ACTOR, check_lease, check_leased_writes, check_transition, lease_until,
};

/// A [`Store`] that keeps everything in memory behind one lock.
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
    notices: BTreeMap<TaskId, Vec<TaskNoticeRecord>>,
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

/// Moves a task to `step` as `set_execution_step` does; whether it moved.
fn apply_step(task: &mut TaskRecord, step: ExecutionStep, at: DateTime<Utc>) -> bool {
    if task.execution_step == step {
        return false;
    }
    task.execution_step = step;
    task.step_started_at = at;
    task.updated_at = at;
    true
}

/// Changes a task's fields as `update_task` does.
impl State {
    /// The optimistic status change of [`Store::transition_task`], checked already.
    fn transition(&mut self, id: &TaskId, change: &Transition) -> Result<bool, Error> {
        let task = self.task_mut(id)?;
        if task.status != change.from {
            return Ok(false);
        }
        task.status = change.to;
        task.updated_at = change.at;
        if change.error.is_some() {
            task.error.clone_from(&change.error);
        }
        if change.to.is_terminal() {
            task.next_wake_at = None;
            task.lease_owner = None;
            task.lease_expires_at = None;
        }
        self.events.push(StatusEvent {
            task_id: id.clone(),
            from: Some(change.from),
            to: change.to,
            actor: change.actor.clone(),
            reason: change.reason.clone(),
            at: change.at,
        });
        Ok(true)
    }

    /// [`Store::put_node`]: a boot record is never cleared by a row read before it
    /// was reported.
    fn put_node(&mut self, node: &NodeRecord) {
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

    fn add_notice(&mut self, id: &TaskId, at: DateTime<Utc>, notice: &TaskNotice) {
        let notices = self.notices.entry(id.clone()).or_default();
        notices.push(TaskNoticeRecord {
            seq: notices.len() as u64 + 1,
            at,
            notice: notice.clone(),
        });
    }

    fn delete_node(&mut self, id: &NodeId) {
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

fn apply_update(task: &mut TaskRecord, update: &TaskUpdate, at: DateTime<Utc>) {
    fn set<T: Clone>(field: &mut T, value: &Option<T>) {
        if let Some(v) = value {
            field.clone_from(v);
        }
    }
    set(&mut task.placement, &update.placement);
    set(&mut task.provisioned_node_id, &update.provisioned_node_id);
    set(&mut task.provisioned_size, &update.provisioned_size);
    set(&mut task.provisioned_location, &update.provisioned_location);
    set(&mut task.workspace_id, &update.workspace_id);
    set(&mut task.next_wake_at, &update.next_wake_at);
    set(
        &mut task.provisioning_started_at,
        &update.provisioning_started_at,
    );
    if let Some(passes) = update.capacity_passes {
        task.capacity_passes = passes;
    }
    if let Some(replacements) = update.node_replacements {
        task.node_replacements = replacements;
    }
    set(&mut task.output, &update.output);
    task.updated_at = at;
}

/// Sorts `items` by `(created_at, id)`, borrowing the keys: a sort that built an owned
/// key per comparison allocated O(n log n) strings on every list.
fn by_creation<T>(items: &mut [T], key: impl Fn(&T) -> (DateTime<Utc>, &str)) {
    items.sort_by(|a, b| key(a).cmp(&key(b)));
}

#[async_trait]
impl Store for MemoryStore {
    async fn create_task(&self, task: &TaskRecord) -> Result<(), StoreError> {
        let mut state = self.state();
        if state.tasks.contains_key(&task.id) {
            return Err(Error::already_exists(format!("task {}", task.id)).into());
        }
        state.tasks.insert(task.id.clone(), task.clone());
        state.events.push(StatusEvent {
            task_id: task.id.clone(),
            from: None,
            to: task.status,
            actor: SUBMISSION_ACTOR.into(),
            reason: None,
            at: task.created_at,
        });
        Ok(())
    }

    async fn get_task(&self, id: &TaskId) -> Result<Option<TaskRecord>, StoreError> {
        Ok(self.state().tasks.get(id).cloned())
    }

    async fn list_tasks(&self, filter: &TaskFilter) -> Result<Vec<TaskRecord>, StoreError> {
        let state = self.state();
        let mut tasks: Vec<TaskRecord> = state
            .tasks
            .values()
            .filter(|t| filter.statuses.is_empty() || filter.statuses.contains(&t.status))
            .filter(|t| filter.node.is_none() || t.provisioned_node_id == filter.node)
            .cloned()
            .collect();
        by_creation(&mut tasks, |t| (t.created_at, t.id.as_str()));
        if let Some(after) = &filter.after {
            let Some(cursor) = state.tasks.get(after) else {
                return Ok(Vec::new());
            };
            let cursor = (cursor.created_at, cursor.id.to_string());
            tasks.retain(|t| (t.created_at, t.id.to_string()) > cursor);
        }
        tasks.truncate(filter.limit.unwrap_or(usize::MAX));
        Ok(tasks)
    }

    async fn transition_task(&self, id: &TaskId, change: &Transition) -> Result<bool, StoreError> {
        check_transition(change)?;
        Ok(self.state().transition(id, change)?)
    }

    async fn set_execution_step(
        &self,
        id: &TaskId,
        step: ExecutionStep,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let mut state = self.state();
        let task = state.task_mut(id)?;
        Ok(apply_step(task, step, at))
    }

    async fn update_task(
        &self,
        id: &TaskId,
        update: &TaskUpdate,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let mut state = self.state();
        let task = state.task_mut(id)?;
        apply_update(task, update, at);
        Ok(())
    }

    async fn claim_due_tasks(&self, request: &LeaseRequest) -> Result<Vec<TaskRecord>, StoreError> {
        let until = lease_until(request)?;
        let mut state = self.state();
        let mut due: Vec<&mut TaskRecord> = state
            .tasks
            .values_mut()
            .filter(|t| !t.status.is_terminal())
            .filter(|t| t.next_wake_at.is_some_and(|w| w <= request.now))
            .filter(|t| !request.except.contains(&t.id))
            .filter(|t| match (&t.lease_owner, t.lease_expires_at) {
                (Some(owner), Some(expires)) => owner == &request.owner || expires <= request.now,
                _ => true,
            })
            .collect();
        due.sort_by(|a, b| {
            (a.next_wake_at, a.created_at, a.id.as_str()).cmp(&(
                b.next_wake_at,
                b.created_at,
                b.id.as_str(),
            ))
        });
        Ok(due
            .into_iter()
            .take(request.limit)
            .map(|t| {
                t.lease_owner = Some(request.owner.clone());
                t.lease_expires_at = Some(until);
                t.lease_epoch += 1;
                t.clone()
            })
            .collect())
    }

    async fn release_lease(
        &self,
        id: &TaskId,
        release: &LeaseRelease,
    ) -> Result<LeaseReleased, StoreError> {
        let mut state = self.state();
        match state.tasks.get_mut(id) {
            Some(t)
                if t.lease_owner.as_deref() == Some(release.owner.as_str())
                    && release.epoch.is_none_or(|e| e == t.lease_epoch) =>
            {
                t.lease_owner = None;
                t.lease_expires_at = None;
                let step_changed = release
                    .step
                    .is_some_and(|step| apply_step(t, step, release.at));
                if release.update != TaskUpdate::default() {
                    apply_update(t, &release.update, release.at);
                }
                Ok(LeaseReleased::Released { step_changed })
            }
            _ => Ok(LeaseReleased::NotHeld),
        }
    }

    async fn write_leased(
        &self,
        lease: &Lease,
        at: DateTime<Utc>,
        writes: &[LeasedWrite],
    ) -> Result<LeasedOutcome, StoreError> {
        check_leased_writes(writes)?;
        let mut state = self.state();
        check_lease(&LeaseState::of(state.task_mut(&lease.task)?), lease, at)?;
        let mut outcome = LeasedOutcome::default();
        for write in writes {
            match write {
                LeasedWrite::Renew { until } => {
                    state.task_mut(&lease.task)?.lease_expires_at = Some(*until);
                }
                LeasedWrite::Step(step) => {
                    outcome.step_changed |= apply_step(state.task_mut(&lease.task)?, *step, at);
                }
                LeasedWrite::Update(update) => {
                    apply_update(state.task_mut(&lease.task)?, update, at);
                }
                LeasedWrite::Transition(change) => {
                    outcome.transitioned |= state.transition(&lease.task, change)?;
                }
                LeasedWrite::PutNode(node) => state.put_node(node),
                LeasedWrite::DeleteNode(id) => state.delete_node(id),
                LeasedWrite::Notice(notice) => state.add_notice(&lease.task, at, notice),
            }
        }
        Ok(outcome)
    }

    async fn add_task_notice(
        &self,
        id: &TaskId,
        at: DateTime<Utc>,
        notice: &TaskNotice,
    ) -> Result<(), StoreError> {
        let mut state = self.state();
        state.task_mut(id)?;
        state.add_notice(id, at, notice);
        Ok(())
    }

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

    async fn list_task_notices(&self, id: &TaskId) -> Result<Vec<TaskNoticeRecord>, StoreError> {
        Ok(self.state().notices.get(id).cloned().unwrap_or_default())
    }

    async fn list_status_events(&self, id: &TaskId) -> Result<Vec<StatusEvent>, StoreError> {
        let state = self.state();
        Ok(state
            .events
            .iter()
            .filter(|e| &e.task_id == id)
            .cloned()
            .collect())
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

    async fn put_api_token(&self, token: &ApiTokenRecord) -> Result<(), StoreError> {
        let mut state = self.state();
        if state.tokens.contains_key(&token.id)
            || state.tokens.values().any(|t| t.hash == token.hash)
        {
            return Err(Error::already_exists(format!("API token {}", token.id)).into());
        }
        state.tokens.insert(token.id.clone(), token.clone());
        Ok(())
    }

    async fn find_api_token(&self, hash: &str) -> Result<Option<ApiTokenRecord>, StoreError> {
        Ok(self
            .state()
            .tokens
            .values()
            .find(|t| t.hash == hash)
            .cloned())
    }

    async fn list_api_tokens(&self) -> Result<Vec<ApiTokenRecord>, StoreError> {
        let mut tokens: Vec<ApiTokenRecord> = self.state().tokens.values().cloned().collect();
        tokens.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(tokens)
    }

    async fn revoke_api_token(&self, id: &str, at: DateTime<Utc>) -> Result<bool, StoreError> {
        let mut state = self.state();
        let token = state
            .tokens
            .get_mut(id)
            .ok_or_else(|| Error::not_found(format!("API token {id}")))?;
        if token.revoked_at.is_some() {
            return Ok(false);
        }
        token.revoked_at = Some(at);
        Ok(true)
    }

    async fn touch_api_token(&self, id: &str, at: DateTime<Utc>) -> Result<(), StoreError> {
        let mut state = self.state();
        let token = state
            .tokens
            .get_mut(id)
            .ok_or_else(|| Error::not_found(format!("API token {id}")))?;
        token.last_used_at = Some(at);
        Ok(())
    }

    async fn rotate_bootstrap_api_token(&self, token: &ApiTokenRecord) -> Result<(), StoreError> {
        let mut state = self.state();
        if state
            .tokens
            .get(&token.id)
            .is_some_and(|t| t.hash != token.hash)
        {
            return Err(Error::already_exists(format!("API token {}", token.id)).into());
        }
        for other in state.tokens.values_mut() {
            if other.hash == token.hash {
                other.kind = ApiTokenKind::Bootstrap;
                other.revoked_at = None;
            } else if other.kind == ApiTokenKind::Bootstrap && other.revoked_at.is_none() {
                other.revoked_at = Some(token.created_at);
            }
        }
        if !state.tokens.values().any(|t| t.hash == token.hash) {
            let mut fresh = token.clone();
            fresh.kind = ApiTokenKind::Bootstrap;
            state.tokens.insert(fresh.id.clone(), fresh);
        }
        Ok(())
    }

    async fn put_github_installation(
        &self,
        installation: &GithubInstallation,
    ) -> Result<(), StoreError> {
        self.state()
            .installations
            .insert(installation.key(), installation.clone());
        Ok(())
    }

    async fn get_github_installation(
        &self,
        key: &InstallationKey,
    ) -> Result<Option<GithubInstallation>, StoreError> {
        Ok(self.state().installations.get(key).cloned())
    }

    async fn list_github_installations(
        &self,
        user: &UserId,
    ) -> Result<Vec<GithubInstallation>, StoreError> {
        let mut links: Vec<GithubInstallation> = self
            .state()
            .installations
            .values()
            .filter(|i| &i.user_id == user)
            .cloned()
            .collect();
        links.sort_by_cached_key(|i| (i.created_at, i.key().to_string()));
        Ok(links)
    }

    async fn delete_github_installation(&self, key: &InstallationKey) -> Result<(), StoreError> {
        self.state().installations.remove(key);
        Ok(())
    }

    async fn put_user(&self, user: &UserRecord) -> Result<(), StoreError> {
        self.state().users.insert(user.id.clone(), user.clone());
        Ok(())
    }

    async fn get_user(&self, id: &UserId) -> Result<Option<UserRecord>, StoreError> {
        Ok(self.state().users.get(id).cloned())
    }

    async fn put_project(&self, project: &ProjectRecord) -> Result<(), StoreError> {
        self.state()
            .projects
            .insert(project.id.clone(), project.clone());
        Ok(())
    }

    async fn get_project(&self, id: &ProjectId) -> Result<Option<ProjectRecord>, StoreError> {
        Ok(self.state().projects.get(id).cloned())
    }

    async fn list_projects(&self) -> Result<Vec<ProjectRecord>, StoreError> {
        let mut list: Vec<ProjectRecord> = self.state().projects.values().cloned().collect();
        by_creation(&mut list, |p| (p.created_at, p.id.as_str()));
        Ok(list)
    }

    async fn delete_project(&self, id: &ProjectId) -> Result<(), StoreError> {
        let mut state = self.state();
        state.projects.remove(id);
        state.profiles.retain(|_, p| &p.project_id != id);
        state
            .credentials
            .retain(|(owner, _), _| owner != &CredentialOwner::Project(id.clone()));
        Ok(())
    }

    async fn put_profile(&self, profile: &AgentProfileRecord) -> Result<(), StoreError> {
        let mut state = self.state();
        if !state.projects.contains_key(&profile.project_id) {
            return Err(Error::not_found(format!("project {}", profile.project_id)).into());
        }
        if state.profiles.values().any(|p| {
            p.project_id == profile.project_id && p.name == profile.name && p.id != profile.id
        }) {
            return Err(Error::already_exists(format!(
                "agent profile {:?} of project {}",
                profile.name, profile.project_id
            ))
            .into());
        }
        state.profiles.insert(profile.id.clone(), profile.clone());
        Ok(())
    }

    async fn get_profile(&self, id: &ProfileId) -> Result<Option<AgentProfileRecord>, StoreError> {
        Ok(self.state().profiles.get(id).cloned())
    }

    async fn list_profiles(
        &self,
        project: &ProjectId,
    ) -> Result<Vec<AgentProfileRecord>, StoreError> {
        let mut list: Vec<AgentProfileRecord> = self
            .state()
            .profiles
            .values()
            .filter(|p| &p.project_id == project)
            .cloned()
            .collect();
        by_creation(&mut list, |p| (p.created_at, p.id.as_str()));
        Ok(list)
    }

    async fn delete_profile(&self, id: &ProfileId) -> Result<(), StoreError> {
        self.state().profiles.remove(id);
        Ok(())
    }

    async fn put_credential(&self, credential: &CredentialRecord) -> Result<(), StoreError> {
        self.state().credentials.insert(
            (credential.owner.clone(), credential.target.clone()),
            credential.clone(),
        );
        Ok(())
    }

    async fn list_credentials(
        &self,
        owner: &CredentialOwner,
    ) -> Result<Vec<CredentialRecord>, StoreError> {
        let mut list: Vec<CredentialRecord> = self
            .state()
            .credentials
            .values()
            .filter(|c| &c.owner == owner)
            .cloned()
            .collect();
        list.sort_by_key(|c| c.target.to_string());
        Ok(list)
    }

    async fn delete_credential(
        &self,
        owner: &CredentialOwner,
        target: &CredentialTarget,
    ) -> Result<(), StoreError> {
        self.state()
            .credentials
            .remove(&(owner.clone(), target.clone()));
        Ok(())
    }
}

#[cfg(test)]
mod conformance {
    sam_core::store_conformance!(async { crate::MemoryStore::new() });
}
