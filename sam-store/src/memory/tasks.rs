//! [`TaskStore`] for [`MemoryStore`]: tasks, leases, transcripts and status events.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sam_core::{
    ExecutionStep, Lease, LeaseRelease, LeaseReleased, LeaseRequest, LeasedOutcome, LeasedWrite,
    StatusEvent, StoreError, TaskEvent, TaskEventKind, TaskFilter, TaskId, TaskRecord, TaskStore,
    TaskUpdate, TranscriptQuery, Transition,
};

use super::{MemoryStore, State, by_creation};
use crate::error::Error;
use crate::task::{
    LeaseState, SUBMISSION_ACTOR, check_lease, check_leased_writes, check_transition, lease_until,
};

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

impl State {
    /// The optimistic status change of [`TaskStore::transition_task`], checked already.
    pub(super) fn transition(&mut self, id: &TaskId, change: &Transition) -> Result<bool, Error> {
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

    /// Appends to a task's transcript (the task must exist) and returns the number.
    fn append_event(&mut self, id: &TaskId, at: DateTime<Utc>, kind: &TaskEventKind) -> u64 {
        let transcript = self.transcripts.entry(id.clone()).or_default();
        let number = transcript.last().map_or(0, |e| e.id) + 1;
        transcript.push(TaskEvent {
            id: number,
            task_id: id.clone(),
            at,
            kind: kind.clone(),
        });
        number
    }
}

#[async_trait]
impl TaskStore for MemoryStore {
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
                LeasedWrite::Event(kind) => {
                    outcome.last_event = Some(state.append_event(&lease.task, at, kind));
                }
            }
        }
        Ok(outcome)
    }

    async fn append_task_event(
        &self,
        id: &TaskId,
        at: DateTime<Utc>,
        kind: &TaskEventKind,
    ) -> Result<u64, StoreError> {
        let mut state = self.state();
        state.task_mut(id)?;
        Ok(state.append_event(id, at, kind))
    }

    async fn list_task_events(
        &self,
        id: &TaskId,
        query: &TranscriptQuery,
    ) -> Result<Vec<TaskEvent>, StoreError> {
        let state = self.state();
        let Some(transcript) = state.transcripts.get(id) else {
            return Ok(Vec::new());
        };
        // Numbers are ascending: skip to the first after `after`.
        let start = transcript.partition_point(|e| e.id <= query.after);
        let picked = |e: &&TaskEvent| query.matches(e);
        let chosen = transcript[start..].iter();
        Ok(if query.newest_first {
            chosen
                .rev()
                .filter(picked)
                .take(query.limit)
                .cloned()
                .collect()
        } else {
            chosen.filter(picked).take(query.limit).cloned().collect()
        })
    }

    async fn prune_task_events(&self, ended_before: DateTime<Utc>) -> Result<u64, StoreError> {
        let mut state = self.state();
        let State {
            tasks, transcripts, ..
        } = &mut *state;
        let mut pruned = 0;
        transcripts.retain(|id, transcript| {
            let ended = tasks
                .get(id)
                .is_some_and(|t| t.status.is_terminal() && t.updated_at < ended_before);
            if ended {
                pruned += transcript.len() as u64;
            }
            !ended
        });
        Ok(pruned)
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
}
