//! [`TaskStore`]: tasks, their leases and the writes made under them, their
//! transcripts and status events.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::error::StoreError;
use crate::model::{ExecutionStep, TaskId};
use crate::record::{
    Lease, LeaseRelease, LeaseReleased, LeaseRequest, LeasedOutcome, LeasedWrite, StatusEvent,
    TaskEvent, TaskEventKind, TaskFilter, TaskRecord, TaskUpdate, TranscriptQuery, Transition,
};
#[cfg(doc)]
use crate::{model::TaskStatus, store::Store};

/// The durable state of tasks: what was submitted, where each task stands, who
/// drives it, and what happened to it.
///
/// # Contract
/// Every backend guarantees, besides the clauses every [`Store`] keeps:
/// - **Lists are ordered**: tasks by `(created_at, id)`, status events by time of
///   writing.
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
///   caller's, and which are not in `except`, and leases them to the caller. Two
///   concurrent callers never receive the same task while a lease holds. Every claim
///   sets `lease_epoch` to one more than the row had. Leasing does not touch
///   `updated_at`.
/// - **`write_leased` is fenced**: in one transaction it checks that `lease.owner`
///   holds the task's lease at `lease.epoch` and that the lease has not expired at
///   `at`, then applies the writes in order, each exactly as its own method would
///   (node writes as the [`crate::store::FleetStore`] methods would). Otherwise it
///   writes nothing and fails with `LeaseLost`, naming the lease it was given and the
///   one it found; a missing task is `NotFound`. A driver that lost its lease can
///   neither write nor extend it.
/// - **A transcript is numbered without gaps, in commit order**: `append_task_event`
///   (and a leased `Event`) numbers a task's entries 1, 2, … in the order written,
///   also when several control planes append to one task at once (appends to one
///   task are serialised); an entry is visible to readers only once every entry
///   numbered before it is, so a reader that resumes after the last number it saw
///   misses nothing. `list_task_events` returns the entries after a number, of the
///   kinds asked for, in number order (or reversed), at most `limit` of them.
/// - **Pruning removes whole transcripts of ended tasks only**: `prune_task_events`
///   deletes the entries of tasks in a terminal status last updated before the
///   cutoff, and nothing of a live task.
/// - **`release_lease` writes only for the holder**: when `owner` holds the lease
///   (expired or not, at `epoch` when given) it frees the lease and, in the same
///   transaction, applies the release's step exactly as `set_execution_step` would
///   (idempotent, reported in `step_changed`) and its update exactly as `update_task`
///   would; otherwise (another owner, no lease, a missing task) it writes nothing and
///   is `NotHeld`.
#[async_trait]
pub trait TaskStore: Send + Sync + std::fmt::Debug {
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

    /// Appends `kind` to the task's transcript, numbered after its last entry, and
    /// returns the entry's number.
    ///
    /// # Errors
    /// `NotFound` for a missing task.
    async fn append_task_event(
        &self,
        id: &TaskId,
        at: DateTime<Utc>,
        kind: &TaskEventKind,
    ) -> Result<u64, StoreError>;

    /// The task's transcript entries `query` selects, in number order (reversed
    /// for `newest_first`); empty for a missing task.
    ///
    /// # Errors
    /// Backend or decoding failures.
    async fn list_task_events(
        &self,
        id: &TaskId,
        query: &TranscriptQuery,
    ) -> Result<Vec<TaskEvent>, StoreError>;

    /// Deletes the transcripts of tasks that ended (a terminal status) and were last
    /// updated before `ended_before`; returns how many entries went.
    ///
    /// # Errors
    /// Backend failures.
    async fn prune_task_events(&self, ended_before: DateTime<Utc>) -> Result<u64, StoreError>;

    /// The status events of a task, oldest first.
    ///
    /// # Errors
    /// Backend or decoding failures.
    async fn list_status_events(&self, id: &TaskId) -> Result<Vec<StatusEvent>, StoreError>;
}
