//! The SQL both dialects share: [`SqlStore`], generic over a [`Dialect`] marker.
//!
//! [`crate::SqliteStore`] and [`crate::PgStore`] are this type with a dialect. The
//! statements are written once in the subset SQLite and PostgreSQL agree on
//! (numbered `$n` parameters, `RETURNING`, `ON CONFLICT`); where they differ (row
//! locks, how a write transaction starts) the dialect supplies the text.

mod migrate;
mod rows;

use std::fmt;
use std::marker::PhantomData;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sam_core::{
    AgentProfileRecord, ApiTokenRecord, CredentialOwner, CredentialRecord, CredentialTarget,
    ExecutionStep, GithubInstallation, InstallationKey, KeyPurpose, KeyRecord, Lease, LeaseRelease,
    LeaseReleased, LeaseRequest, LeasedOutcome, LeasedWrite, NodeBeat, NodeFilter, NodeId,
    NodeLifecycle, NodeRecord, PlacementCandidate, ProfileId, ProjectId, ProjectRecord,
    ProviderKind, SlotOutcome, StatusEvent, Store, StoreError, TaskFilter, TaskId, TaskNotice,
    TaskNoticeRecord, TaskRecord, TaskUpdate, Transition, UserId, UserRecord, WarmClaim,
    WorkspaceId, WorkspaceRecord, WorkspaceStatus, check_slot,
};
use sqlx::any::{Any, AnyArguments, AnyRow};
use sqlx::query::Query;
use sqlx::{AnyPool, AssertSqlSafe, Row, Transaction};

pub(crate) use migrate::{Migration, Schema, migrate};

use crate::error::Error;
use crate::task::{
    LeaseState, SUBMISSION_ACTOR, check_lease, check_leased_writes, check_transition, lease_until,
};
use rows::{json, micros, name, opt_micros};

/// Marks which SQL dialect a [`SqlStore`] speaks; implemented by [`Sqlite`] and
/// [`Postgres`] only.
pub trait Dialect: sealed::Sealed + Send + Sync + 'static {}

/// The SQLite dialect.
#[derive(Debug, Clone, Copy)]
pub enum Sqlite {}

/// The PostgreSQL dialect.
#[derive(Debug, Clone, Copy)]
pub enum Postgres {}

impl Dialect for Sqlite {}
impl Dialect for Postgres {}

// The trait is sealed: its items are for this crate only.
#[allow(private_interfaces)]
mod sealed {
    /// Keeps [`super::Dialect`] closed.
    pub trait Sealed {
        /// The dialect's name for error classification.
        const DIALECT: crate::error::Dialect;
        /// Starts a write transaction.
        const BEGIN: &'static str;
        /// Starts a read-only transaction whose statements all see one snapshot.
        const BEGIN_SNAPSHOT: &'static str;
        /// Locks the rows a `SELECT` reads until the transaction ends.
        const FOR_UPDATE: &'static str;
        /// Locks the rows a `SELECT` reads, skipping rows others hold.
        const FOR_UPDATE_SKIP_LOCKED: &'static str;
        /// The text values of the JSON array bound as parameter 5, as a subquery.
        const JSON_TEXTS_5: &'static str;
    }
    impl Sealed for super::Sqlite {
        const DIALECT: crate::error::Dialect = crate::error::Dialect::Sqlite;
        // The write lock is taken at BEGIN, so a transaction never has to upgrade a
        // read snapshot (which would fail with SQLITE_BUSY instead of waiting).
        const BEGIN: &'static str = "BEGIN IMMEDIATE";
        // A deferred transaction takes its read snapshot at its first SELECT and
        // keeps it (WAL mode) until it ends.
        const BEGIN_SNAPSHOT: &'static str = "BEGIN";
        // SQLite serializes writers: a write transaction already excludes the others.
        const FOR_UPDATE: &'static str = "";
        const FOR_UPDATE_SKIP_LOCKED: &'static str = "";
        const JSON_TEXTS_5: &'static str = "SELECT value FROM json_each($5)";
    }
    impl Sealed for super::Postgres {
        const DIALECT: crate::error::Dialect = crate::error::Dialect::Postgres;
        const BEGIN: &'static str = "BEGIN";
        // Read committed would give each statement its own snapshot.
        const BEGIN_SNAPSHOT: &'static str = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY";
        const FOR_UPDATE: &'static str = " FOR UPDATE";
        const FOR_UPDATE_SKIP_LOCKED: &'static str = " FOR UPDATE SKIP LOCKED";
        const JSON_TEXTS_5: &'static str = "SELECT json_array_elements_text($5::json)";
    }
}

/// A [`Store`] over a SQL database; see [`crate::SqliteStore`] and [`crate::PgStore`].
pub struct SqlStore<D> {
    /// Runs every write (for SQLite: the single writer connection).
    writer: AnyPool,
    /// Runs reads (for PostgreSQL: the same pool as `writer`).
    reader: AnyPool,
    /// What `Debug` shows: the file or the server, without credentials.
    target: String,
    dialect: PhantomData<D>,
}

impl<D> fmt::Debug for SqlStore<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqlStore")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

const TASK_COLUMNS: &str = "id, status, execution_step, spec, provider, requested_size, \
    size_source, requested_location, location_source, requirements, reservation, placement, \
    provisioned_node_id, provisioned_size, provisioned_location, workspace_id, next_wake_at, \
    lease_owner, lease_expires_at, provisioning_started_at, step_started_at, error_category, \
    error_message, created_at, updated_at, capacity_passes, output, node_replacements, \
    lease_epoch";

const INSTALLATION_COLUMNS: &str = "id, user_id, external_id, account, created_at";

const NODE_COLUMNS: &str = "id, provider, vm_id, size, server_type, location, capacity, labels, \
    status, lifecycle, warm_since, health, last_heartbeat_at, agent_version, ready_at, \
    created_for, created_at, updated_at, credential_owner, address, boot_timeline, boot_failure";

const WORKSPACE_COLUMNS: &str =
    "id, node_id, task_id, status, effective_profile, reservation, created_at, updated_at";

/// The statuses of workspaces that hold a slot, as an SQL list.
const SLOT_HOLDING: &str = "('creating', 'running', 'recovery', 'stopping')";

/// The terminal task statuses, as an SQL list.
const TERMINAL: &str = "('completed', 'failed', 'cancelled')";

/// Which nodes a placement-candidate read covers.
#[derive(Debug, Clone, Copy)]
enum CandidateScope<'a> {
    /// The `running`, `active` nodes of one provider.
    Placeable(ProviderKind),
    /// One node, whatever its state.
    Node(&'a NodeId),
}

/// What a task statement of [`SqlStore::update_query`] does with the execution step.
#[derive(Debug, Clone, Copy)]
enum StepGuard {
    /// Moves the task to the step (sets `step_started_at`); matches only a task in
    /// another step.
    Moves(ExecutionStep),
    /// Leaves the step; matches only a task already in it.
    Stays(ExecutionStep),
}

type AnyQuery<'q> = Query<'q, Any, AnyArguments>;

/// A lease epoch as its 64-bit signed column.
fn epoch(epoch: u64) -> Result<i64, Error> {
    i64::try_from(epoch).map_err(|_| Error::InvalidInput {
        what: "lease epoch".into(),
        reason: format!("{epoch} is out of range"),
    })
}

fn query(sql: impl Into<String>) -> AnyQuery<'static> {
    sqlx::query(AssertSqlSafe(sql.into()))
}

impl<D: Dialect> SqlStore<D> {
    /// Wraps opened (and migrated) pools.
    pub(crate) fn from_pools(writer: AnyPool, reader: AnyPool, target: String) -> Self {
        Self {
            writer,
            reader,
            target,
            dialect: PhantomData,
        }
    }

    /// Closes the pools, waiting for connections in use to be returned.
    pub async fn close(&self) {
        self.writer.close().await;
        self.reader.close().await;
    }

    fn db(context: &str) -> impl FnOnce(sqlx::Error) -> Error + '_ {
        move |e| Error::database(D::DIALECT, context, e)
    }

    async fn begin(&self, context: &str) -> Result<Transaction<'static, Any>, Error> {
        self.writer
            .begin_with(D::BEGIN)
            .await
            .map_err(Self::db(context))
    }

    async fn commit(tx: Transaction<'static, Any>, context: &str) -> Result<(), Error> {
        tx.commit().await.map_err(Self::db(context))
    }

    async fn fetch_all<T>(
        &self,
        q: AnyQuery<'_>,
        decode: fn(&AnyRow) -> Result<T, Error>,
        context: &str,
    ) -> Result<Vec<T>, Error> {
        let rows = q.fetch_all(&self.reader).await.map_err(Self::db(context))?;
        rows.iter().map(decode).collect()
    }

    async fn fetch_optional<T>(
        &self,
        q: AnyQuery<'_>,
        decode: fn(&AnyRow) -> Result<T, Error>,
        context: &str,
    ) -> Result<Option<T>, Error> {
        let row = q
            .fetch_optional(&self.reader)
            .await
            .map_err(Self::db(context))?;
        row.as_ref().map(decode).transpose()
    }

    /// Whether a row with `id` exists in `table`, read through `executor` (a
    /// transaction, or a pool).
    async fn exists<'e>(
        executor: impl sqlx::Executor<'e, Database = Any>,
        table: &str,
        id: &str,
    ) -> Result<bool, Error> {
        let found = query(format!("SELECT 1 AS found FROM {table} WHERE id = $1"))
            .bind(id.to_owned())
            .fetch_optional(executor)
            .await
            .map_err(Self::db("checking a row exists"))?;
        Ok(found.is_some())
    }

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

    /// Runs a single-row update of `table`; `Ok(false)` when it matched no row and
    /// the row exists, `NotFound` when the row does not exist.
    ///
    /// The update is one statement, so it runs as a transaction of its own: no
    /// `BEGIN` and `COMMIT` round trips (on SQLite each is a hand-off to the
    /// connection's thread, and these updates are most of a task's writes). Only when
    /// it matched nothing is the row looked for; a row deleted in between reads as
    /// deleted before the update, which is as true.
    async fn update_existing(
        &self,
        q: AnyQuery<'_>,
        table: &str,
        id: &str,
        context: &str,
    ) -> Result<bool, Error> {
        let done = q.execute(&self.writer).await.map_err(Self::db(context))?;
        if done.rows_affected() > 0 {
            return Ok(true);
        }
        if !Self::exists(&self.writer, table, id).await? {
            let what = table.trim_end_matches('s');
            return Err(Error::not_found(format!("{what} {id}")));
        }
        Ok(false)
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
                LeasedWrite::Notice(notice) => Self::notice_query(id, at, notice),
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

    async fn try_put_node(&self, node: &NodeRecord) -> Result<(), Error> {
        Self::put_node_query(node)
            .execute(&self.writer)
            .await
            .map_err(Self::db("writing a node"))?;
        Ok(())
    }

    /// The delete of a node's key, which goes with its row.
    fn delete_node_key_query(node: &NodeId) -> AnyQuery<'static> {
        query("DELETE FROM keys WHERE purpose = 'node' AND id = $1").bind(node.to_string())
    }

    /// The insert of a task's next notice, numbered after its last.
    fn notice_query(id: &TaskId, at: DateTime<Utc>, notice: &TaskNotice) -> AnyQuery<'static> {
        query(
            "INSERT INTO task_notices (task_id, seq, at, notice) \
             SELECT $1, COALESCE(MAX(seq), 0) + 1, $2, $3 FROM task_notices WHERE task_id = $1",
        )
        .bind(id.to_string())
        .bind(micros(at))
        .bind(json(notice))
    }

    /// The upsert of a node row.
    fn put_node_query(node: &NodeRecord) -> AnyQuery<'static> {
        let placeholders: Vec<String> = (1..=22).map(|i| format!("${i}")).collect();
        // A boot record is never cleared: an empty timeline or a missing failure is
        // written as NULL and keeps the stored one.
        let updates: Vec<String> = NODE_COLUMNS
            .split(", ")
            .skip(1)
            .map(|c| match c {
                "boot_timeline" | "boot_failure" => {
                    format!("{c} = COALESCE(excluded.{c}, nodes.{c})")
                }
                c => format!("{c} = excluded.{c}"),
            })
            .collect();
        query(format!(
            "INSERT INTO nodes ({NODE_COLUMNS}) VALUES ({}) ON CONFLICT (id) DO UPDATE SET {}",
            placeholders.join(", "),
            updates.join(", ")
        ))
        .bind(node.id.to_string())
        .bind(node.provider.as_str().to_owned())
        .bind(node.vm_id.as_ref().map(|v| v.to_string()))
        .bind(node.size.as_str().to_owned())
        .bind(node.server_type.clone())
        .bind(node.location.to_string())
        .bind(json(&node.capacity))
        .bind(json(&node.labels))
        .bind(node.status.as_str().to_owned())
        .bind(node.lifecycle.as_str().to_owned())
        .bind(opt_micros(node.warm_since))
        .bind(node.health.as_str().to_owned())
        .bind(opt_micros(node.last_heartbeat_at))
        .bind(node.agent_version.clone())
        .bind(opt_micros(node.ready_at))
        .bind(node.created_for.as_ref().map(|t| t.to_string()))
        .bind(micros(node.created_at))
        .bind(micros(node.updated_at))
        .bind(rows::owner_column(node.credential_owner.as_ref()))
        .bind(node.address.clone())
        .bind((!node.boot.timeline.is_empty()).then(|| json(&node.boot.timeline)))
        .bind(node.boot.failure.as_ref().map(json))
    }

    async fn try_list_nodes(&self, filter: &NodeFilter) -> Result<Vec<NodeRecord>, Error> {
        let mut sql = format!("SELECT {NODE_COLUMNS} FROM nodes WHERE 1 = 1");
        let mut values: Vec<String> = Vec::new();
        let mut add = |column: &str, names: Vec<&str>, sql: &mut String| {
            if names.is_empty() {
                return;
            }
            let list: Vec<String> = names
                .into_iter()
                .map(|n| {
                    values.push(n.to_owned());
                    format!("${}", values.len())
                })
                .collect();
            *sql += &format!(" AND {column} IN ({})", list.join(", "));
        };
        add(
            "status",
            filter.statuses.iter().map(|s| s.as_str()).collect(),
            &mut sql,
        );
        add(
            "lifecycle",
            filter.lifecycles.iter().map(|l| l.as_str()).collect(),
            &mut sql,
        );
        add(
            "provider",
            filter.provider.iter().map(|p| p.as_str()).collect(),
            &mut sql,
        );
        sql += " ORDER BY created_at, id";
        let q = values.into_iter().fold(query(sql), |q, v| q.bind(v));
        self.fetch_all(q, rows::node, "listing nodes").await
    }

    async fn try_claim_warm(&self, claim: &WarmClaim) -> Result<Option<NodeRecord>, Error> {
        let sql = format!(
            "WITH pick AS (SELECT id FROM nodes \
                WHERE lifecycle = 'warm' AND status = 'running' AND health = 'healthy' \
                  AND provider = $1 AND size = $2 AND ($3 = 0 OR location = $4) \
                  AND credential_owner = $6 \
                ORDER BY warm_since, created_at, id LIMIT 1{}) \
             UPDATE nodes SET lifecycle = 'active', warm_since = NULL, updated_at = $5 \
             WHERE id IN (SELECT id FROM pick) AND lifecycle = 'warm' \
             RETURNING {NODE_COLUMNS}",
            D::FOR_UPDATE_SKIP_LOCKED
        );
        let q = query(sql)
            .bind(claim.provider.as_str().to_owned())
            .bind(claim.size.as_str().to_owned())
            .bind(i64::from(claim.location.is_some()))
            .bind(
                claim
                    .location
                    .as_ref()
                    .map(|l| l.to_string())
                    .unwrap_or_default(),
            )
            .bind(micros(claim.now))
            .bind(rows::owner_column(claim.credential_owner.as_ref()));
        // One statement, so a transaction of its own (see `update_existing`).
        let context = "claiming a warm node";
        let row = q
            .fetch_optional(&self.writer)
            .await
            .map_err(Self::db(context))?;
        row.as_ref().map(rows::node).transpose()
    }

    /// The placement candidates of `provider`: the nodes (with the task each is held
    /// for, worked out in SQL as [`NodeRecord::held_for`] does) and then their
    /// slot-holding workspaces, two queries over one snapshot.
    async fn try_list_candidates(
        &self,
        scope: CandidateScope<'_>,
    ) -> Result<Vec<PlacementCandidate>, Error> {
        const PLACEABLE: &str = "status = 'running' AND lifecycle = 'active' AND provider = $1";
        let (nodes_where, workspaces_where, bound) = match scope {
            CandidateScope::Placeable(provider) => (
                PLACEABLE.to_owned(),
                format!("node_id IN (SELECT id FROM nodes WHERE {PLACEABLE})"),
                provider.as_str().to_owned(),
            ),
            CandidateScope::Node(id) => (
                "id = $1".to_owned(),
                "node_id = $1".to_owned(),
                id.to_string(),
            ),
        };
        let nodes_sql = format!(
            "SELECT {NODE_COLUMNS}, \
               CASE WHEN EXISTS (SELECT 1 FROM tasks t WHERE t.id = nodes.created_for \
                                   AND t.status NOT IN {TERMINAL} \
                                   AND t.provisioned_node_id = nodes.id) \
                     AND NOT EXISTS (SELECT 1 FROM workspaces w WHERE w.node_id = nodes.id \
                                       AND w.task_id = nodes.created_for) \
                    THEN nodes.created_for END AS held_for \
             FROM nodes WHERE {nodes_where} ORDER BY created_at, id"
        );
        let workspaces_sql = format!(
            "SELECT {WORKSPACE_COLUMNS} FROM workspaces \
             WHERE status IN {SLOT_HOLDING} AND {workspaces_where} \
             ORDER BY node_id, created_at, id"
        );
        let context = match scope {
            CandidateScope::Placeable(_) => "listing placement candidates",
            CandidateScope::Node(_) => "reading a placement candidate",
        };
        let mut tx = self
            .reader
            .begin_with(D::BEGIN_SNAPSHOT)
            .await
            .map_err(Self::db(context))?;
        let node_rows = query(nodes_sql)
            .bind(bound.clone())
            .fetch_all(&mut *tx)
            .await
            .map_err(Self::db(context))?;
        let workspace_rows = query(workspaces_sql)
            .bind(bound)
            .fetch_all(&mut *tx)
            .await
            .map_err(Self::db(context))?;
        Self::commit(tx, context).await?;
        let mut on_node: std::collections::HashMap<NodeId, Vec<WorkspaceRecord>> =
            std::collections::HashMap::new();
        for row in &workspace_rows {
            let ws = rows::workspace(row)?;
            on_node.entry(ws.node_id.clone()).or_default().push(ws);
        }
        node_rows
            .iter()
            .map(|row| {
                let (node, held_for) = rows::placement_node(row)?;
                Ok(PlacementCandidate {
                    workspaces: on_node.remove(&node.id).unwrap_or_default(),
                    node,
                    held_for,
                })
            })
            .collect()
    }

    /// Locks the node row and returns its capacity; `NotFound` when it is missing.
    async fn lock_node(tx: &mut Transaction<'static, Any>, id: &NodeId) -> Result<AnyRow, Error> {
        let sql = format!(
            "SELECT id, capacity, lifecycle FROM nodes WHERE id = $1{}",
            D::FOR_UPDATE
        );
        query(sql)
            .bind(id.to_string())
            .fetch_optional(&mut **tx)
            .await
            .map_err(Self::db("locking a node"))?
            .ok_or_else(|| Error::not_found(format!("node {id}")))
    }

    /// The reservations of the node's slot-holding workspaces, inside `tx`.
    async fn live_reservations(
        tx: &mut Transaction<'static, Any>,
        node: &NodeId,
    ) -> Result<Vec<sam_core::Reservation>, Error> {
        let sql = format!(
            "SELECT id, reservation FROM workspaces WHERE node_id = $1 AND status IN {SLOT_HOLDING}"
        );
        let rows = query(sql)
            .bind(node.to_string())
            .fetch_all(&mut **tx)
            .await
            .map_err(Self::db("reading live reservations"))?;
        rows.iter().map(rows::reservation).collect()
    }

    async fn try_release_to_warm(&self, id: &NodeId, at: DateTime<Utc>) -> Result<bool, Error> {
        let context = "returning a node to the warm pool";
        let mut tx = self.begin(context).await?;
        let node = Self::lock_node(&mut tx, id).await?;
        let lifecycle: String = node.try_get("lifecycle").map_err(Self::db(context))?;
        if lifecycle != NodeLifecycle::Active.as_str()
            || !Self::live_reservations(&mut tx, id).await?.is_empty()
        {
            return Ok(false);
        }
        query(
            "UPDATE nodes SET lifecycle = 'warm', warm_since = $1, updated_at = $1 WHERE id = $2",
        )
        .bind(micros(at))
        .bind(id.to_string())
        .execute(&mut *tx)
        .await
        .map_err(Self::db(context))?;
        Self::commit(tx, context).await?;
        Ok(true)
    }

    async fn try_reserve(&self, ws: &WorkspaceRecord) -> Result<SlotOutcome, Error> {
        let context = "reserving a workspace slot";
        let mut tx = self.begin(context).await?;
        let node = Self::lock_node(&mut tx, &ws.node_id).await?;
        let capacity = rows::capacity(&node)?;
        if Self::exists(&mut *tx, "workspaces", ws.id.as_str()).await? {
            return Err(Error::already_exists(format!("workspace {}", ws.id)));
        }
        let live = Self::live_reservations(&mut tx, &ws.node_id).await?;
        if let Err(rejection) = check_slot(&capacity, &live, &ws.reservation) {
            return Ok(SlotOutcome::Rejected(rejection));
        }
        query(format!(
            "INSERT INTO workspaces ({WORKSPACE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
        ))
        .bind(ws.id.to_string())
        .bind(ws.node_id.to_string())
        .bind(ws.task_id.to_string())
        .bind(name(&ws.status))
        .bind(ws.effective_profile.clone())
        .bind(json(&ws.reservation))
        .bind(micros(ws.created_at))
        .bind(micros(ws.updated_at))
        .execute(&mut *tx)
        .await
        .map_err(Self::db(context))?;
        Self::commit(tx, context).await?;
        Ok(SlotOutcome::Reserved)
    }

    async fn try_update_workspace(
        &self,
        id: &WorkspaceId,
        status: WorkspaceStatus,
        effective_profile: Option<String>,
        at: DateTime<Utc>,
    ) -> Result<(), Error> {
        // A stopped workspace matches nothing: a late report cannot revive it.
        let q = query(
            "UPDATE workspaces SET status = $1, \
             effective_profile = COALESCE($2, effective_profile), updated_at = $3 \
             WHERE id = $4 AND status <> 'stopped'",
        )
        .bind(name(&status))
        .bind(effective_profile)
        .bind(micros(at))
        .bind(id.to_string());
        self.update_existing(q, "workspaces", id.as_str(), "updating a workspace")
            .await?;
        Ok(())
    }

    async fn try_mark_stale(
        &self,
        id: &NodeId,
        beat_before: DateTime<Utc>,
        at: DateTime<Utc>,
    ) -> Result<bool, Error> {
        let q = query(
            "UPDATE nodes SET health = 'stale', updated_at = $1 \
             WHERE id = $2 AND health = 'healthy' AND last_heartbeat_at < $3",
        )
        .bind(micros(at))
        .bind(id.to_string())
        .bind(micros(beat_before));
        self.update_existing(q, "nodes", id.as_str(), "marking a node stale")
            .await
    }

    async fn try_record_beat(&self, id: &NodeId, beat: &NodeBeat) -> Result<(), Error> {
        // One statement on the liveness columns only: a beat read-modify-writing the
        // whole row could put back the lifecycle a warm claim or release just changed.
        let q = query(
            "UPDATE nodes SET last_heartbeat_at = $1, updated_at = $1, \
             health = CASE WHEN $2 = 1 OR health = 'stale' THEN 'healthy' ELSE health END, \
             status = CASE WHEN $2 = 1 THEN 'running' ELSE status END, \
             ready_at = CASE WHEN $2 = 1 AND ready_at IS NULL THEN $1 ELSE ready_at END, \
             agent_version = CASE WHEN $2 = 1 THEN $3 ELSE agent_version END, \
             boot_timeline = CASE WHEN $2 = 1 AND $5 = 1 THEN $6 ELSE boot_timeline END \
             WHERE id = $4",
        )
        .bind(micros(beat.at))
        .bind(i64::from(beat.ready_version.is_some()))
        .bind(beat.ready_version.clone())
        .bind(id.to_string())
        .bind(i64::from(!beat.boot_timeline.is_empty()))
        .bind(json(&beat.boot_timeline));
        self.update_existing(q, "nodes", id.as_str(), "recording a node's beat")
            .await?;
        Ok(())
    }

    async fn try_put_token(&self, token: &ApiTokenRecord) -> Result<(), Error> {
        let result = Self::insert_token(&self.writer, token).await;
        match result {
            Err(e) if e.kind() == sam_core::StoreErrorKind::AlreadyExists => Err(
                Error::already_exists(format!("API token {} (or its hash)", token.id)),
            ),
            other => other,
        }
    }

    /// Inserts an `api_tokens` row through `executor` (a transaction, or a pool).
    async fn insert_token<'e>(
        executor: impl sqlx::Executor<'e, Database = Any>,
        token: &ApiTokenRecord,
    ) -> Result<(), Error> {
        query(
            "INSERT INTO api_tokens (id, hash, label, kind, created_at, last_used_at, \
             expires_at, revoked_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(token.id.clone())
        .bind(token.hash.clone())
        .bind(token.label.clone())
        .bind(token.kind.as_str().to_owned())
        .bind(micros(token.created_at))
        .bind(opt_micros(token.last_used_at))
        .bind(opt_micros(token.expires_at))
        .bind(opt_micros(token.revoked_at))
        .execute(executor)
        .await
        .map_err(Self::db("storing an API token"))?;
        Ok(())
    }

    async fn try_rotate_bootstrap(&self, token: &ApiTokenRecord) -> Result<(), Error> {
        let context = "rotating the bootstrap API token";
        let mut tx = self.begin(context).await?;
        let taken = query("SELECT 1 AS found FROM api_tokens WHERE id = $1 AND hash <> $2")
            .bind(token.id.clone())
            .bind(token.hash.clone())
            .fetch_optional(&mut *tx)
            .await
            .map_err(Self::db(context))?;
        if taken.is_some() {
            return Err(Error::already_exists(format!("API token {}", token.id)));
        }
        query(
            "UPDATE api_tokens SET revoked_at = $1 \
             WHERE kind = 'bootstrap' AND revoked_at IS NULL AND hash <> $2",
        )
        .bind(micros(token.created_at))
        .bind(token.hash.clone())
        .execute(&mut *tx)
        .await
        .map_err(Self::db(context))?;
        let kept =
            query("UPDATE api_tokens SET kind = 'bootstrap', revoked_at = NULL WHERE hash = $1")
                .bind(token.hash.clone())
                .execute(&mut *tx)
                .await
                .map_err(Self::db(context))?;
        if kept.rows_affected() == 0 {
            let fresh = ApiTokenRecord {
                kind: sam_core::ApiTokenKind::Bootstrap,
                ..token.clone()
            };
            Self::insert_token(&mut *tx, &fresh).await?;
        }
        Self::commit(tx, context).await
    }

    /// Upserts a row of one of the JSON-bodied tables: `columns` are the key columns
    /// (the first is the conflict target's first column), `body` goes last.
    async fn upsert(
        &self,
        table: &str,
        conflict: &str,
        columns: &[(&str, String)],
        extra: Option<(&str, i64)>,
        body: String,
        context: &str,
    ) -> Result<(), Error> {
        let mut names: Vec<&str> = columns.iter().map(|(c, _)| *c).collect();
        if let Some((c, _)) = extra {
            names.push(c);
        }
        names.push("body");
        let placeholders: Vec<String> = (1..=names.len()).map(|i| format!("${i}")).collect();
        let updates: Vec<String> = names
            .iter()
            .filter(|c| !conflict.split(", ").any(|k| k == **c))
            .map(|c| format!("{c} = excluded.{c}"))
            .collect();
        let mut q = query(format!(
            "INSERT INTO {table} ({}) VALUES ({}) ON CONFLICT ({conflict}) DO UPDATE SET {}",
            names.join(", "),
            placeholders.join(", "),
            updates.join(", ")
        ));
        for (_, value) in columns {
            q = q.bind(value.clone());
        }
        if let Some((_, value)) = extra {
            q = q.bind(value);
        }
        q.bind(body)
            .execute(&self.writer)
            .await
            .map_err(Self::db(context))?;
        Ok(())
    }

    async fn try_put_profile(&self, profile: &AgentProfileRecord) -> Result<(), Error> {
        let context = "writing an agent profile";
        let mut tx = self.begin(context).await?;
        if !Self::exists(&mut *tx, "projects", profile.project_id.as_str()).await? {
            return Err(Error::not_found(format!("project {}", profile.project_id)));
        }
        let taken = query("SELECT 1 AS found FROM agent_profiles WHERE project_id = $1 AND name = $2 AND id <> $3")
            .bind(profile.project_id.to_string())
            .bind(profile.name.clone())
            .bind(profile.id.to_string())
            .fetch_optional(&mut *tx)
            .await
            .map_err(Self::db(context))?;
        if taken.is_some() {
            return Err(Error::already_exists(format!(
                "agent profile {:?} of project {}",
                profile.name, profile.project_id
            )));
        }
        query(
            "INSERT INTO agent_profiles (id, project_id, name, created_at, body) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (id) DO UPDATE SET \
             project_id = excluded.project_id, name = excluded.name, \
             created_at = excluded.created_at, body = excluded.body",
        )
        .bind(profile.id.to_string())
        .bind(profile.project_id.to_string())
        .bind(profile.name.clone())
        .bind(micros(profile.created_at))
        .bind(json(profile))
        .execute(&mut *tx)
        .await
        .map_err(Self::db(context))?;
        Self::commit(tx, context).await
    }

    async fn try_delete_project(&self, id: &ProjectId) -> Result<(), Error> {
        let context = "deleting a project";
        let mut tx = self.begin(context).await?;
        let owner = CredentialOwner::Project(id.clone()).to_string();
        for (sql, key) in [
            ("DELETE FROM credentials WHERE owner = $1", owner),
            (
                "DELETE FROM agent_profiles WHERE project_id = $1",
                id.to_string(),
            ),
            ("DELETE FROM projects WHERE id = $1", id.to_string()),
        ] {
            query(sql)
                .bind(key)
                .execute(&mut *tx)
                .await
                .map_err(Self::db(context))?;
        }
        Self::commit(tx, context).await
    }

    async fn delete_where(&self, sql: &str, keys: &[String], context: &str) -> Result<(), Error> {
        let mut q = query(sql.to_owned());
        for key in keys {
            q = q.bind(key.clone());
        }
        q.execute(&self.writer).await.map_err(Self::db(context))?;
        Ok(())
    }
}

/// The columns of an `api_tokens` row, as [`rows::api_token`] reads them.
const TOKEN_COLUMNS: &str =
    "id, hash, label, kind, created_at, last_used_at, expires_at, revoked_at";

#[async_trait]
impl<D: Dialect> Store for SqlStore<D> {
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

    async fn add_task_notice(
        &self,
        id: &TaskId,
        at: DateTime<Utc>,
        notice: &TaskNotice,
    ) -> Result<(), StoreError> {
        let context = "adding a task notice";
        if !Self::exists(&self.writer, "tasks", id.as_str()).await? {
            return Err(Error::not_found(format!("task {id}")).into());
        }
        Self::notice_query(id, at, notice)
            .execute(&self.writer)
            .await
            .map_err(Self::db(context))?;
        Ok(())
    }

    async fn put_key_if_absent(&self, key: &KeyRecord) -> Result<KeyRecord, StoreError> {
        let context = "writing a key";
        // One statement, so two control planes starting at once both read the key
        // that was written first.
        query(
            "INSERT INTO keys (id, purpose, sealed, created_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(key.id.clone())
        .bind(key.purpose.as_str().to_owned())
        .bind(key.sealed.as_str().to_owned())
        .bind(micros(key.created_at))
        .execute(&self.writer)
        .await
        .map_err(Self::db(context))?;
        let q = query("SELECT id, purpose, sealed, created_at FROM keys WHERE id = $1")
            .bind(key.id.clone());
        let stored = q
            .fetch_optional(&self.writer)
            .await
            .map_err(Self::db(context))?
            .ok_or_else(|| Error::not_found(format!("key {}", key.id)))?;
        Ok(rows::key(&stored)?)
    }

    async fn get_key(
        &self,
        purpose: KeyPurpose,
        id: &str,
    ) -> Result<Option<KeyRecord>, StoreError> {
        let q = query(
            "SELECT id, purpose, sealed, created_at FROM keys WHERE purpose = $1 AND id = $2",
        )
        .bind(purpose.as_str().to_owned())
        .bind(id.to_owned());
        Ok(self.fetch_optional(q, rows::key, "reading a key").await?)
    }

    async fn list_keys(&self, purpose: KeyPurpose) -> Result<Vec<KeyRecord>, StoreError> {
        let q = query(
            "SELECT id, purpose, sealed, created_at FROM keys WHERE purpose = $1 \
             ORDER BY created_at, id",
        )
        .bind(purpose.as_str().to_owned());
        Ok(self.fetch_all(q, rows::key, "listing keys").await?)
    }

    async fn list_task_notices(&self, id: &TaskId) -> Result<Vec<TaskNoticeRecord>, StoreError> {
        let q = query("SELECT seq, at, notice FROM task_notices WHERE task_id = $1 ORDER BY seq")
            .bind(id.to_string());
        Ok(self
            .fetch_all(q, rows::notice, "listing task notices")
            .await?)
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

    async fn put_node(&self, node: &NodeRecord) -> Result<(), StoreError> {
        Ok(self.try_put_node(node).await?)
    }

    async fn get_node(&self, id: &NodeId) -> Result<Option<NodeRecord>, StoreError> {
        let q =
            query(format!("SELECT {NODE_COLUMNS} FROM nodes WHERE id = $1")).bind(id.to_string());
        Ok(self.fetch_optional(q, rows::node, "reading a node").await?)
    }

    async fn list_nodes(&self, filter: &NodeFilter) -> Result<Vec<NodeRecord>, StoreError> {
        Ok(self.try_list_nodes(filter).await?)
    }

    async fn delete_node(&self, id: &NodeId) -> Result<(), StoreError> {
        let context = "deleting a node";
        let mut tx = self.begin(context).await?;
        for q in [
            Self::delete_node_key_query(id),
            query("DELETE FROM nodes WHERE id = $1").bind(id.to_string()),
        ] {
            q.execute(&mut *tx).await.map_err(Self::db(context))?;
        }
        Self::commit(tx, context).await?;
        Ok(())
    }

    async fn record_node_beat(&self, id: &NodeId, beat: &NodeBeat) -> Result<(), StoreError> {
        Ok(self.try_record_beat(id, beat).await?)
    }

    async fn mark_node_stale(
        &self,
        id: &NodeId,
        beat_before: DateTime<Utc>,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        Ok(self.try_mark_stale(id, beat_before, at).await?)
    }

    async fn claim_warm_node(&self, claim: &WarmClaim) -> Result<Option<NodeRecord>, StoreError> {
        Ok(self.try_claim_warm(claim).await?)
    }

    async fn release_node_to_warm(
        &self,
        id: &NodeId,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        Ok(self.try_release_to_warm(id, at).await?)
    }

    async fn reserve_workspace_slot(
        &self,
        workspace: &WorkspaceRecord,
    ) -> Result<SlotOutcome, StoreError> {
        Ok(self.try_reserve(workspace).await?)
    }

    async fn list_placement_candidates(
        &self,
        provider: ProviderKind,
    ) -> Result<Vec<PlacementCandidate>, StoreError> {
        Ok(self
            .try_list_candidates(CandidateScope::Placeable(provider))
            .await?)
    }

    async fn get_placement_candidate(
        &self,
        id: &NodeId,
    ) -> Result<Option<PlacementCandidate>, StoreError> {
        Ok(self
            .try_list_candidates(CandidateScope::Node(id))
            .await?
            .pop())
    }

    async fn get_workspace(&self, id: &WorkspaceId) -> Result<Option<WorkspaceRecord>, StoreError> {
        let q = query(format!(
            "SELECT {WORKSPACE_COLUMNS} FROM workspaces WHERE id = $1"
        ))
        .bind(id.to_string());
        Ok(self
            .fetch_optional(q, rows::workspace, "reading a workspace")
            .await?)
    }

    async fn list_workspaces(&self, node: &NodeId) -> Result<Vec<WorkspaceRecord>, StoreError> {
        let q = query(format!(
            "SELECT {WORKSPACE_COLUMNS} FROM workspaces WHERE node_id = $1 ORDER BY created_at, id"
        ))
        .bind(node.to_string());
        Ok(self
            .fetch_all(q, rows::workspace, "listing workspaces")
            .await?)
    }

    async fn update_workspace(
        &self,
        id: &WorkspaceId,
        status: WorkspaceStatus,
        effective_profile: Option<String>,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        Ok(self
            .try_update_workspace(id, status, effective_profile, at)
            .await?)
    }

    async fn put_api_token(&self, token: &ApiTokenRecord) -> Result<(), StoreError> {
        Ok(self.try_put_token(token).await?)
    }

    async fn find_api_token(&self, hash: &str) -> Result<Option<ApiTokenRecord>, StoreError> {
        let q = query(format!(
            "SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE hash = $1"
        ))
        .bind(hash.to_owned());
        Ok(self
            .fetch_optional(q, rows::api_token, "finding an API token")
            .await?)
    }

    async fn list_api_tokens(&self) -> Result<Vec<ApiTokenRecord>, StoreError> {
        let q = query(format!(
            "SELECT {TOKEN_COLUMNS} FROM api_tokens ORDER BY created_at, id"
        ));
        Ok(self
            .fetch_all(q, rows::api_token, "listing API tokens")
            .await?)
    }

    async fn revoke_api_token(&self, id: &str, at: DateTime<Utc>) -> Result<bool, StoreError> {
        let q = query("UPDATE api_tokens SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
            .bind(micros(at))
            .bind(id.to_owned());
        Ok(self
            .update_existing(q, "api_tokens", id, "revoking an API token")
            .await?)
    }

    async fn touch_api_token(&self, id: &str, at: DateTime<Utc>) -> Result<(), StoreError> {
        let q = query("UPDATE api_tokens SET last_used_at = $1 WHERE id = $2")
            .bind(micros(at))
            .bind(id.to_owned());
        self.update_existing(q, "api_tokens", id, "recording an API token's use")
            .await?;
        Ok(())
    }

    async fn rotate_bootstrap_api_token(&self, token: &ApiTokenRecord) -> Result<(), StoreError> {
        Ok(self.try_rotate_bootstrap(token).await?)
    }

    async fn put_github_installation(
        &self,
        installation: &GithubInstallation,
    ) -> Result<(), StoreError> {
        let external =
            i64::try_from(installation.external_id.get()).map_err(|_| Error::InvalidInput {
                what: format!("installation id {}", installation.external_id),
                reason: "is larger than a 64-bit signed integer".to_owned(),
            })?;
        query(format!(
            "INSERT INTO github_installations ({INSTALLATION_COLUMNS}) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (id) DO UPDATE SET account = excluded.account"
        ))
        .bind(installation.key().to_string())
        .bind(installation.user_id.to_string())
        .bind(external)
        .bind(installation.account.clone())
        .bind(micros(installation.created_at))
        .execute(&self.writer)
        .await
        .map_err(Self::db("storing a GitHub installation link"))?;
        Ok(())
    }

    async fn get_github_installation(
        &self,
        key: &InstallationKey,
    ) -> Result<Option<GithubInstallation>, StoreError> {
        let q = query(format!(
            "SELECT {INSTALLATION_COLUMNS} FROM github_installations WHERE id = $1"
        ))
        .bind(key.to_string());
        Ok(self
            .fetch_optional(
                q,
                rows::github_installation,
                "reading a GitHub installation link",
            )
            .await?)
    }

    async fn list_github_installations(
        &self,
        user: &UserId,
    ) -> Result<Vec<GithubInstallation>, StoreError> {
        let q = query(format!(
            "SELECT {INSTALLATION_COLUMNS} FROM github_installations WHERE user_id = $1 \
             ORDER BY created_at, id"
        ))
        .bind(user.to_string());
        Ok(self
            .fetch_all(
                q,
                rows::github_installation,
                "listing GitHub installation links",
            )
            .await?)
    }

    async fn delete_github_installation(&self, key: &InstallationKey) -> Result<(), StoreError> {
        Ok(self
            .delete_where(
                "DELETE FROM github_installations WHERE id = $1",
                &[key.to_string()],
                "deleting a GitHub installation link",
            )
            .await?)
    }

    async fn put_user(&self, user: &UserRecord) -> Result<(), StoreError> {
        Ok(self
            .upsert(
                "users",
                "id",
                &[("id", user.id.to_string())],
                Some(("created_at", micros(user.created_at))),
                json(user),
                "writing a user",
            )
            .await?)
    }

    async fn get_user(&self, id: &UserId) -> Result<Option<UserRecord>, StoreError> {
        let q = query("SELECT id, body FROM users WHERE id = $1").bind(id.to_string());
        Ok(self.fetch_optional(q, rows::user, "reading a user").await?)
    }

    async fn put_project(&self, project: &ProjectRecord) -> Result<(), StoreError> {
        Ok(self
            .upsert(
                "projects",
                "id",
                &[("id", project.id.to_string())],
                Some(("created_at", micros(project.created_at))),
                json(project),
                "writing a project",
            )
            .await?)
    }

    async fn get_project(&self, id: &ProjectId) -> Result<Option<ProjectRecord>, StoreError> {
        let q = query("SELECT id, body FROM projects WHERE id = $1").bind(id.to_string());
        Ok(self
            .fetch_optional(q, rows::project, "reading a project")
            .await?)
    }

    async fn list_projects(&self) -> Result<Vec<ProjectRecord>, StoreError> {
        let q = query("SELECT id, body FROM projects ORDER BY created_at, id");
        Ok(self.fetch_all(q, rows::project, "listing projects").await?)
    }

    async fn delete_project(&self, id: &ProjectId) -> Result<(), StoreError> {
        Ok(self.try_delete_project(id).await?)
    }

    async fn put_profile(&self, profile: &AgentProfileRecord) -> Result<(), StoreError> {
        Ok(self.try_put_profile(profile).await?)
    }

    async fn get_profile(&self, id: &ProfileId) -> Result<Option<AgentProfileRecord>, StoreError> {
        let q = query("SELECT id, body FROM agent_profiles WHERE id = $1").bind(id.to_string());
        Ok(self
            .fetch_optional(q, rows::profile, "reading an agent profile")
            .await?)
    }

    async fn list_profiles(
        &self,
        project: &ProjectId,
    ) -> Result<Vec<AgentProfileRecord>, StoreError> {
        let q = query(
            "SELECT id, body FROM agent_profiles WHERE project_id = $1 ORDER BY created_at, id",
        )
        .bind(project.to_string());
        Ok(self
            .fetch_all(q, rows::profile, "listing agent profiles")
            .await?)
    }

    async fn delete_profile(&self, id: &ProfileId) -> Result<(), StoreError> {
        Ok(self
            .delete_where(
                "DELETE FROM agent_profiles WHERE id = $1",
                &[id.to_string()],
                "deleting an agent profile",
            )
            .await?)
    }

    async fn put_credential(&self, credential: &CredentialRecord) -> Result<(), StoreError> {
        Ok(self
            .upsert(
                "credentials",
                "owner, target",
                &[
                    ("owner", credential.owner.to_string()),
                    ("target", credential.target.to_string()),
                ],
                None,
                json(credential),
                "writing a credential",
            )
            .await?)
    }

    async fn list_credentials(
        &self,
        owner: &CredentialOwner,
    ) -> Result<Vec<CredentialRecord>, StoreError> {
        let q =
            query("SELECT target AS id, body FROM credentials WHERE owner = $1 ORDER BY target")
                .bind(owner.to_string());
        Ok(self
            .fetch_all(q, rows::credential, "listing credentials")
            .await?)
    }

    async fn delete_credential(
        &self,
        owner: &CredentialOwner,
        target: &CredentialTarget,
    ) -> Result<(), StoreError> {
        Ok(self
            .delete_where(
                "DELETE FROM credentials WHERE owner = $1 AND target = $2",
                &[owner.to_string(), target.to_string()],
                "deleting a credential",
            )
            .await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sam_core::TaskStatus;

    #[test]
    fn status_lists_match_the_model() {
        let terminal: Vec<String> = [
            TaskStatus::Queued,
            TaskStatus::Delegated,
            TaskStatus::InProgress,
            TaskStatus::Completed,
            TaskStatus::Failed,
            TaskStatus::Cancelled,
        ]
        .into_iter()
        .filter(|s| s.is_terminal())
        .map(|s| format!("'{s}'"))
        .collect();
        assert_eq!(TERMINAL, format!("({})", terminal.join(", ")));
        let holding: Vec<String> = [
            WorkspaceStatus::Creating,
            WorkspaceStatus::Running,
            WorkspaceStatus::Recovery,
            WorkspaceStatus::Stopping,
            WorkspaceStatus::Stopped,
            WorkspaceStatus::Error,
        ]
        .into_iter()
        .filter(|s| s.holds_slot())
        .map(|s| format!("'{}'", name(&s)))
        .collect();
        assert_eq!(SLOT_HOLDING, format!("({})", holding.join(", ")));
    }
}
