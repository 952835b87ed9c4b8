//! [`TaskStore`] for [`SqlStore`]: the SQL of tasks, leases, transcripts and status
//! events.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sam_core::{
    ExecutionStep, Lease, LeaseRelease, LeaseReleased, LeaseRequest, LeasedOutcome, LeasedWrite,
    StatusEvent, StoreError, TaskEvent, TaskEventKind, TaskFilter, TaskId, TaskRecord, TaskStore,
    TaskUpdate, TranscriptQuery, Transition,
};
use sqlx::any::Any;
use sqlx::{Row as _, Transaction};

use super::rows::{self, json, micros, name, opt_micros};
use super::{AnyQuery, Dialect, SqlStore, TERMINAL, query};
use crate::error::Error;
use crate::task::{
    LeaseState, SUBMISSION_ACTOR, check_lease, check_leased_writes, check_transition, lease_until,
};

const TASK_COLUMNS: &str = "id, status, execution_step, spec, provider, requested_size, \
    size_source, requested_location, location_source, requirements, reservation, placement, \
    provisioned_node_id, provisioned_size, provisioned_location, workspace_id, next_wake_at, \
    lease_owner, lease_expires_at, provisioning_started_at, step_started_at, error_category, \
    error_message, created_at, updated_at, capacity_passes, output, node_replacements, \
    lease_epoch";

/// What a task statement of [`SqlStore::update_query`] does with the execution step.
#[derive(Debug, Clone, Copy)]
enum StepGuard {
    /// Moves the task to the step (sets `step_started_at`); matches only a task in
    /// another step.
    Moves(ExecutionStep),
    /// Leaves the step; matches only a task already in it.
    Stays(ExecutionStep),
}

/// A lease epoch as its 64-bit signed column.
fn epoch(epoch: u64) -> Result<i64, Error> {
    i64::try_from(epoch).map_err(|_| Error::InvalidInput {
        what: "lease epoch".into(),
        reason: format!("{epoch} is out of range"),
    })
}

impl<D: Dialect> SqlStore<D> {
    /// Inserts the task in one statement (a transaction of its own, see
    /// `update_existing`); the `tasks_status_created` trigger records its first status
    /// event from `status_actor` inside it.
    async fn try_create_task(&self, task: &TaskRecord) -> Result<(), Error> {
        let placeholders: Vec<String> = (1..=30).map(|i| format!("${i}")).collect();
        let result = query(format!(
            "INSERT INTO tasks ({TASK_COLUMNS}, status_actor) VALUES ({})",
            placeholders.join(", ")
        ))
        .bind(task.id.to_string())
        .bind(task.status.as_str().to_owned())
        .bind(task.execution_step.as_str().to_owned())
        .bind(json(&task.spec))
        .bind(task.provider.as_str().to_owned())
        .bind(task.requested_size.as_str().to_owned())
        .bind(task.size_source.as_str().to_owned())
        .bind(task.requested_location.as_ref().map(|l| l.to_string()))
        .bind(task.location_source.as_str().to_owned())
        .bind(json(&task.requirements))
        .bind(json(&task.reservation))
        .bind(task.placement.as_ref().map(json))
        .bind(task.provisioned_node_id.as_ref().map(|n| n.to_string()))
        .bind(task.provisioned_size.map(|s| s.as_str().to_owned()))
        .bind(task.provisioned_location.as_ref().map(|l| l.to_string()))
        .bind(task.workspace_id.as_ref().map(|w| w.to_string()))
        .bind(opt_micros(task.next_wake_at))
        .bind(task.lease_owner.clone())
        .bind(opt_micros(task.lease_expires_at))
        .bind(opt_micros(task.provisioning_started_at))
        .bind(micros(task.step_started_at))
        .bind(task.error.as_ref().map(|e| name(&e.category)))
        .bind(task.error.as_ref().map(|e| e.message.clone()))
        .bind(micros(task.created_at))
        .bind(micros(task.updated_at))
        .bind(i64::from(task.capacity_passes))
        .bind(task.output.as_ref().map(json))
        .bind(i64::from(task.node_replacements))
        .bind(epoch(task.lease_epoch)?)
        .bind(SUBMISSION_ACTOR)
        .execute(&self.writer)
        .await;
        match result.map_err(Self::db("creating a task")) {
            Err(e) if e.kind() == sam_core::StoreErrorKind::AlreadyExists => {
                Err(Error::already_exists(format!("task {}", task.id)))
            }
            other => other.map(drop),
        }
    }

    async fn try_list_tasks(&self, filter: &TaskFilter) -> Result<Vec<TaskRecord>, Error> {
        let mut sql = format!("SELECT {TASK_COLUMNS} FROM tasks WHERE 1 = 1");
        let mut n = 0;
        let mut next = || {
            n += 1;
            format!("${n}")
        };
        if !filter.statuses.is_empty() {
            let list: Vec<String> = filter.statuses.iter().map(|_| next()).collect();
            sql += &format!(" AND status IN ({})", list.join(", "));
        }
        if filter.node.is_some() {
            sql += &format!(" AND provisioned_node_id = {}", next());
        }
        if filter.after.is_some() {
            let p = next();
            sql += &format!(
                " AND (created_at, id) > (SELECT created_at, id FROM tasks WHERE id = {p})"
            );
        }
        sql += &format!(" ORDER BY created_at, id LIMIT {}", next());
        let mut q = query(sql);
        for status in &filter.statuses {
            q = q.bind(status.as_str().to_owned());
        }
        if let Some(node) = &filter.node {
            q = q.bind(node.to_string());
        }
        if let Some(after) = &filter.after {
            q = q.bind(after.to_string());
        }
        let limit = filter
            .limit
            .map_or(i64::MAX, |l| i64::try_from(l).unwrap_or(i64::MAX));
        q = q.bind(limit);
        self.fetch_all(q, rows::task, "listing tasks").await
    }

    /// Moves the task in one statement (a transaction of its own, see
    /// `update_existing`); the `tasks_status_changed` trigger records the status event
    /// from `status_actor` and `status_reason` inside it.
    async fn try_transition(&self, id: &TaskId, change: &Transition) -> Result<bool, Error> {
        check_transition(change)?;
        self.update_existing(
            Self::transition_query(id, change),
            "tasks",
            id.as_str(),
            "transitioning a task",
        )
        .await
    }

    /// The statement of a checked [`Transition`] of task `id`.
    fn transition_query(id: &TaskId, change: &Transition) -> AnyQuery<'static> {
        // An ended task is never driven again: its wake-up and lease go with the move.
        query(
            "UPDATE tasks SET status = $1, updated_at = $2, \
             error_category = CASE WHEN $3 = 1 THEN $4 ELSE error_category END, \
             error_message = CASE WHEN $3 = 1 THEN $5 ELSE error_message END, \
             next_wake_at = CASE WHEN $8 = 1 THEN NULL ELSE next_wake_at END, \
             lease_owner = CASE WHEN $8 = 1 THEN NULL ELSE lease_owner END, \
             lease_expires_at = CASE WHEN $8 = 1 THEN NULL ELSE lease_expires_at END, \
             status_actor = $9, status_reason = $10 \
             WHERE id = $6 AND status = $7",
        )
        .bind(change.to.as_str().to_owned())
        .bind(micros(change.at))
        .bind(i64::from(change.error.is_some()))
        .bind(change.error.as_ref().map(|e| name(&e.category)))
        .bind(change.error.as_ref().map(|e| e.message.clone()))
        .bind(id.to_string())
        .bind(change.from.as_str().to_owned())
        .bind(i64::from(change.to.is_terminal()))
        .bind(change.actor.clone())
        .bind(change.reason.clone())
    }

    async fn try_set_step(
        &self,
        id: &TaskId,
        step: ExecutionStep,
        at: DateTime<Utc>,
    ) -> Result<bool, Error> {
        // It matches no row when the task is in `step` already.
        let q = Self::update_query(
            id,
            &TaskUpdate::default(),
            at,
            None,
            Some(StepGuard::Moves(step)),
        );
        self.update_existing(q, "tasks", id.as_str(), "setting the execution step")
            .await
    }

    async fn try_update_task(
        &self,
        id: &TaskId,
        update: &TaskUpdate,
        at: DateTime<Utc>,
    ) -> Result<(), Error> {
        let done = Self::update_query(id, update, at, None, None)
            .execute(&self.writer)
            .await
            .map_err(Self::db("updating a task"))?;
        if done.rows_affected() == 0 {
            return Err(Error::not_found(format!("task {id}")));
        }
        Ok(())
    }

    /// The statement of a [`TaskUpdate`] on task `id` at `at`. With `holder`, it also
    /// frees the lease and matches the row only while `holder` holds it; with `step`,
    /// it moves the execution step (setting `step_started_at`) or insists on it (see
    /// [`StepGuard`]). With either, a default `update` leaves the fields alone, and
    /// `updated_at` changes only when a field or the step does.
    fn update_query(
        id: &TaskId,
        update: &TaskUpdate,
        at: DateTime<Utc>,
        holder: Option<(&str, Option<i64>)>,
        step: Option<StepGuard>,
    ) -> AnyQuery<'static> {
        // Fixed statements (a handful of shapes): each column takes a flag ("change
        // it?") and a value, so the statement does not depend on which fields change.
        let columns = [
            "placement",
            "provisioned_node_id",
            "provisioned_size",
            "provisioned_location",
            "workspace_id",
            "next_wake_at",
            "provisioning_started_at",
            "capacity_passes",
            "output",
            "node_replacements",
        ];
        let fields = *update != TaskUpdate::default() || (holder.is_none() && step.is_none());
        let moves = matches!(step, Some(StepGuard::Moves(_)));
        let mut sets = Vec::new();
        let mut n = 0;
        if fields {
            for (i, c) in columns.iter().enumerate() {
                let (flag, value) = (2 * i + 1, 2 * i + 2);
                sets.push(format!(
                    "{c} = CASE WHEN ${flag} = 1 THEN ${value} ELSE {c} END"
                ));
            }
            n = 2 * columns.len();
        }
        let at_param = (fields || moves).then(|| {
            n += 1;
            sets.push(format!("updated_at = ${n}"));
            n
        });
        n += 1;
        let mut wheres = vec![format!("id = ${n}")];
        if let Some((_, epoch)) = holder {
            sets.push("lease_owner = NULL, lease_expires_at = NULL".to_owned());
            n += 1;
            wheres.push(format!("lease_owner = ${n}"));
            if epoch.is_some() {
                n += 1;
                wheres.push(format!("lease_epoch = ${n}"));
            }
        }
        if let Some(guard) = step {
            n += 1;
            // A move always has `at_param` (it sets `updated_at`).
            match (guard, at_param) {
                (StepGuard::Moves(_), Some(at)) => {
                    sets.push(format!("execution_step = ${n}, step_started_at = ${at}"));
                    wheres.push(format!("execution_step <> ${n}"));
                }
                _ => wheres.push(format!("execution_step = ${n}")),
            }
        }
        let sql = format!(
            "UPDATE tasks SET {} WHERE {}",
            sets.join(", "),
            wheres.join(" AND ")
        );
        fn text<'q, T>(
            q: AnyQuery<'q>,
            v: &Option<Option<T>>,
            f: impl Fn(&T) -> String,
        ) -> AnyQuery<'q> {
            q.bind(i64::from(v.is_some()))
                .bind(v.as_ref().and_then(|inner| inner.as_ref().map(&f)))
        }
        fn time<'q>(q: AnyQuery<'q>, v: &Option<Option<DateTime<Utc>>>) -> AnyQuery<'q> {
            q.bind(i64::from(v.is_some())).bind(v.and_then(opt_micros))
        }
        let mut q = query(sql);
        if fields {
            q = text(q, &update.placement, json);
            q = text(q, &update.provisioned_node_id, ToString::to_string);
            q = text(q, &update.provisioned_size, |s| s.as_str().to_owned());
            q = text(q, &update.provisioned_location, ToString::to_string);
            q = text(q, &update.workspace_id, ToString::to_string);
            q = time(q, &update.next_wake_at);
            q = time(q, &update.provisioning_started_at);
            q = q
                .bind(i64::from(update.capacity_passes.is_some()))
                .bind(i64::from(update.capacity_passes.unwrap_or_default()));
            q = text(q, &update.output, json);
            q = q
                .bind(i64::from(update.node_replacements.is_some()))
                .bind(i64::from(update.node_replacements.unwrap_or_default()));
        }
        if at_param.is_some() {
            q = q.bind(micros(at));
        }
        q = q.bind(id.to_string());
        if let Some((holder, epoch)) = holder {
            q = q.bind(holder.to_owned());
            if let Some(epoch) = epoch {
                q = q.bind(epoch);
            }
        }
        match step {
            Some(StepGuard::Moves(step) | StepGuard::Stays(step)) => {
                q.bind(step.as_str().to_owned())
            }
            None => q,
        }
    }

    async fn try_claim(&self, request: &LeaseRequest) -> Result<Vec<TaskRecord>, Error> {
        let until = lease_until(request)?;
        // The exceptions go as one JSON array, so the statement's text does not
        // depend on how many there are; without any, the statement stays as it was.
        let except = if request.except.is_empty() {
            String::new()
        } else {
            format!(" AND id NOT IN ({})", D::JSON_TEXTS_5)
        };
        let sql = format!(
            "WITH due AS (SELECT id FROM tasks \
                WHERE status NOT IN {TERMINAL} \
                  AND next_wake_at IS NOT NULL AND next_wake_at <= $1 \
                  AND (lease_owner IS NULL OR lease_expires_at IS NULL \
                       OR lease_expires_at <= $1 OR lease_owner = $2){except} \
                ORDER BY next_wake_at, created_at, id LIMIT $3{}) \
             UPDATE tasks SET lease_owner = $2, lease_expires_at = $4, \
                lease_epoch = lease_epoch + 1 \
             WHERE id IN (SELECT id FROM due) \
             RETURNING {TASK_COLUMNS}",
            D::FOR_UPDATE_SKIP_LOCKED
        );
        let limit = i64::try_from(request.limit).unwrap_or(i64::MAX);
        let mut q = query(sql)
            .bind(micros(request.now))
            .bind(request.owner.clone())
            .bind(limit)
            .bind(micros(until));
        if !request.except.is_empty() {
            let ids: Vec<&str> = request.except.iter().map(TaskId::as_str).collect();
            q = q.bind(json(&ids));
        }
        // One statement, so a transaction of its own (see `update_existing`).
        let context = "claiming due tasks";
        let rows = q.fetch_all(&self.writer).await.map_err(Self::db(context))?;
        let mut tasks = rows.iter().map(rows::task).collect::<Result<Vec<_>, _>>()?;
        tasks.sort_by_key(|t| (t.next_wake_at, t.created_at, t.id.to_string()));
        Ok(tasks)
    }

    /// Gives the lease back in one statement, which is a transaction of its own (see
    /// `update_existing`): the lease, the fields and the step change together or not
    /// at all, with no `BEGIN` and `COMMIT` round trips. This is most of a task's
    /// writes.
    ///
    /// With a step, the release first tries to move the task to it (matching only a
    /// task in another step), then to keep it there (matching only a task in it), so
    /// the statement that matched says whether the step changed. When neither matched,
    /// the lease is gone, or the step moved between the two: only then is the lease
    /// looked at, and while it is held the two are tried again.
    async fn try_release_lease(
        &self,
        id: &TaskId,
        release: &LeaseRelease,
    ) -> Result<LeaseReleased, Error> {
        let context = "releasing a lease";
        let held_epoch = release.epoch.map(epoch).transpose()?;
        let attempt = |step: Option<StepGuard>| async move {
            let holder = Some((release.owner.as_str(), held_epoch));
            let done = Self::update_query(id, &release.update, release.at, holder, step)
                .execute(&self.writer)
                .await
                .map_err(Self::db(context))?;
            Ok::<_, Error>(done.rows_affected() > 0)
        };
        let Some(step) = release.step else {
            return Ok(if attempt(None).await? {
                LeaseReleased::Released {
                    step_changed: false,
                }
            } else {
                LeaseReleased::NotHeld
            });
        };
        loop {
            if attempt(Some(StepGuard::Moves(step))).await? {
                return Ok(LeaseReleased::Released { step_changed: true });
            }
            if attempt(Some(StepGuard::Stays(step))).await? {
                return Ok(LeaseReleased::Released {
                    step_changed: false,
                });
            }
            let held = query(
                "SELECT 1 AS held FROM tasks WHERE id = $1 AND lease_owner = $2 \
                 AND ($3 IS NULL OR lease_epoch = $3)",
            )
            .bind(id.to_string())
            .bind(release.owner.clone())
            .bind(held_epoch)
            .fetch_optional(&self.writer)
            .await
            .map_err(Self::db(context))?;
            if held.is_none() {
                return Ok(LeaseReleased::NotHeld);
            }
        }
    }

    /// Locks the task row, checks the lease on it, then runs each write inside the
    /// same transaction; an error anywhere rolls all of it back.
    async fn try_write_leased(
        &self,
        lease: &Lease,
        at: DateTime<Utc>,
        writes: &[LeasedWrite],
    ) -> Result<LeasedOutcome, Error> {
        check_leased_writes(writes)?;
        let context = "writing under a lease";
        let mut tx = self.begin(context).await?;
        match Self::leased_writes(&mut tx, lease, at, writes).await {
            Ok(outcome) => {
                Self::commit(tx, context).await?;
                Ok(outcome)
            }
            Err(e) => {
                // Rolled back now, not when the connection is next used: on SQLite an
                // open write transaction would hold the file's lock meanwhile. The
                // write's own error is the one to report.
                let _ = tx.rollback().await;
                Err(e)
            }
        }
    }

    /// The check and the writes of [`Self::try_write_leased`], inside `tx`.
    async fn leased_writes(
        tx: &mut Transaction<'static, Any>,
        lease: &Lease,
        at: DateTime<Utc>,
        writes: &[LeasedWrite],
    ) -> Result<LeasedOutcome, Error> {
        let context = "writing under a lease";
        let id = &lease.task;
        let sql = format!(
            "SELECT id, lease_owner, lease_epoch, lease_expires_at FROM tasks WHERE id = $1{}",
            D::FOR_UPDATE
        );
        let row = query(sql)
            .bind(id.to_string())
            .fetch_optional(&mut **tx)
            .await
            .map_err(Self::db(context))?
            .ok_or_else(|| Error::not_found(format!("task {id}")))?;
        let (owner, held_epoch, expires_at) = rows::lease(&row)?;
        let state = LeaseState {
            owner: owner.as_deref(),
            epoch: held_epoch,
            expires_at,
        };
        check_lease(&state, lease, at)?;
        let mut outcome = LeasedOutcome::default();
        for write in writes {
            if let LeasedWrite::DeleteNode(node) = write {
                Self::delete_node_key_query(node)
                    .execute(&mut **tx)
                    .await
                    .map_err(Self::db(context))?;
            }
            let q = match write {
                LeasedWrite::Renew { until } => {
                    query("UPDATE tasks SET lease_expires_at = $1 WHERE id = $2")
                        .bind(micros(*until))
                        .bind(id.to_string())
                }
                LeasedWrite::Step(step) => Self::update_query(
                    id,
                    &TaskUpdate::default(),
                    at,
                    None,
                    Some(StepGuard::Moves(*step)),
                ),
                LeasedWrite::Update(update) => Self::update_query(id, update, at, None, None),
                LeasedWrite::Transition(change) => Self::transition_query(id, change),
                LeasedWrite::PutNode(node) => Self::put_node_query(node),
                LeasedWrite::DeleteNode(node) => {
                    query("DELETE FROM nodes WHERE id = $1").bind(node.to_string())
                }
                LeasedWrite::Event(kind) => {
                    outcome.last_event = Some(Self::append_event(tx, id, at, kind).await?);
                    continue;
                }
            };
            let done = q.execute(&mut **tx).await.map_err(Self::db(context))?;
            let applied = done.rows_affected() > 0;
            match write {
                LeasedWrite::Step(_) => outcome.step_changed |= applied,
                LeasedWrite::Transition(_) => outcome.transitioned |= applied,
                _ => {}
            }
        }
        Ok(outcome)
    }

    /// Appends a task's next transcript entry, numbered after its last, and returns
    /// the number. The caller holds the task's row lock, so appends to one task are
    /// serialised and commit in number order.
    async fn append_event(
        tx: &mut Transaction<'static, Any>,
        id: &TaskId,
        at: DateTime<Utc>,
        kind: &TaskEventKind,
    ) -> Result<u64, Error> {
        let row = query(
            "INSERT INTO task_events (task_id, seq, at, kind_name, kind) \
             SELECT $1, COALESCE(MAX(seq), 0) + 1, $2, $3, $4 FROM task_events \
             WHERE task_id = $1 RETURNING seq",
        )
        .bind(id.to_string())
        .bind(micros(at))
        .bind(kind.name())
        .bind(json(kind))
        .fetch_one(&mut **tx)
        .await
        .map_err(Self::db("appending to a transcript"))?;
        let seq: i64 = row
            .try_get("seq")
            .map_err(|e| Error::invalid_data("task_events.seq", e))?;
        u64::try_from(seq).map_err(|e| Error::invalid_data("task_events.seq", e))
    }

    async fn try_append_event(
        &self,
        id: &TaskId,
        at: DateTime<Utc>,
        kind: &TaskEventKind,
    ) -> Result<u64, Error> {
        let context = "appending to a transcript";
        let mut tx = self.begin(context).await?;
        let lock = format!("SELECT id FROM tasks WHERE id = $1{}", D::FOR_UPDATE);
        let result = async {
            query(lock)
                .bind(id.to_string())
                .fetch_optional(&mut *tx)
                .await
                .map_err(Self::db(context))?
                .ok_or_else(|| Error::not_found(format!("task {id}")))?;
            Self::append_event(&mut tx, id, at, kind).await
        }
        .await;
        match result {
            Ok(number) => {
                Self::commit(tx, context).await?;
                Ok(number)
            }
            Err(e) => {
                let _ = tx.rollback().await;
                Err(e)
            }
        }
    }
}

#[async_trait]
impl<D: Dialect> TaskStore for SqlStore<D> {
    async fn create_task(&self, task: &TaskRecord) -> Result<(), StoreError> {
        Ok(self.try_create_task(task).await?)
    }

    async fn get_task(&self, id: &TaskId) -> Result<Option<TaskRecord>, StoreError> {
        let q =
            query(format!("SELECT {TASK_COLUMNS} FROM tasks WHERE id = $1")).bind(id.to_string());
        Ok(self.fetch_optional(q, rows::task, "reading a task").await?)
    }

    async fn list_tasks(&self, filter: &TaskFilter) -> Result<Vec<TaskRecord>, StoreError> {
        Ok(self.try_list_tasks(filter).await?)
    }

    async fn transition_task(&self, id: &TaskId, change: &Transition) -> Result<bool, StoreError> {
        Ok(self.try_transition(id, change).await?)
    }

    async fn set_execution_step(
        &self,
        id: &TaskId,
        step: ExecutionStep,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        Ok(self.try_set_step(id, step, at).await?)
    }

    async fn update_task(
        &self,
        id: &TaskId,
        update: &TaskUpdate,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        Ok(self.try_update_task(id, update, at).await?)
    }

    async fn claim_due_tasks(&self, request: &LeaseRequest) -> Result<Vec<TaskRecord>, StoreError> {
        Ok(self.try_claim(request).await?)
    }

    async fn release_lease(
        &self,
        id: &TaskId,
        release: &LeaseRelease,
    ) -> Result<LeaseReleased, StoreError> {
        Ok(self.try_release_lease(id, release).await?)
    }

    async fn write_leased(
        &self,
        lease: &Lease,
        at: DateTime<Utc>,
        writes: &[LeasedWrite],
    ) -> Result<LeasedOutcome, StoreError> {
        Ok(self.try_write_leased(lease, at, writes).await?)
    }

    async fn append_task_event(
        &self,
        id: &TaskId,
        at: DateTime<Utc>,
        kind: &TaskEventKind,
    ) -> Result<u64, StoreError> {
        Ok(self.try_append_event(id, at, kind).await?)
    }

    async fn list_task_events(
        &self,
        id: &TaskId,
        transcript: &TranscriptQuery,
    ) -> Result<Vec<TaskEvent>, StoreError> {
        let kinds: Vec<String> = (0..transcript.kinds.len())
            .map(|i| format!("${}", i + 4))
            .collect();
        let kinds = if kinds.is_empty() {
            String::new()
        } else {
            format!(" AND kind_name IN ({})", kinds.join(", "))
        };
        let order = if transcript.newest_first {
            "DESC"
        } else {
            "ASC"
        };
        let mut q = query(format!(
            "SELECT task_id, seq, at, kind FROM task_events \
             WHERE task_id = $1 AND seq > $2{kinds} ORDER BY seq {order} LIMIT $3"
        ))
        .bind(id.to_string())
        .bind(i64::try_from(transcript.after).unwrap_or(i64::MAX))
        .bind(i64::try_from(transcript.limit).unwrap_or(i64::MAX));
        for kind in &transcript.kinds {
            q = q.bind(kind.clone());
        }
        Ok(self
            .fetch_all(q, rows::task_event, "reading a transcript")
            .await?)
    }

    async fn prune_task_events(&self, ended_before: DateTime<Utc>) -> Result<u64, StoreError> {
        let done = query(format!(
            "DELETE FROM task_events WHERE task_id IN \
             (SELECT id FROM tasks WHERE status IN {TERMINAL} AND updated_at < $1)"
        ))
        .bind(micros(ended_before))
        .execute(&self.writer)
        .await
        .map_err(Self::db("pruning transcripts"))?;
        Ok(done.rows_affected())
    }

    async fn list_status_events(&self, id: &TaskId) -> Result<Vec<StatusEvent>, StoreError> {
        let q = query(
            "SELECT task_id, from_status, to_status, actor, reason, at \
             FROM task_status_events WHERE task_id = $1 ORDER BY id",
        )
        .bind(id.to_string());
        Ok(self
            .fetch_all(q, rows::status_event, "listing status events")
            .await?)
    }
}
