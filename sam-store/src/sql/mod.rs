//! The SQL both dialects share: [`SqlStore`], generic over a [`Dialect`] marker.
//!
//! [`crate::SqliteStore`] and [`crate::PgStore`] are this type with a dialect. The
//! statements are written once in the subset SQLite and PostgreSQL agree on
//! (numbered `$n` parameters, `RETURNING`, `ON CONFLICT`); where they differ (row
//! locks, how a write transaction starts) the dialect supplies the text.

mod accounts;
mod fleet;
mod migrate;
mod rows;
mod tasks;

use std::fmt;
use std::marker::PhantomData;

use sqlx::any::{Any, AnyArguments, AnyRow};
use sqlx::query::Query;
use sqlx::{AnyPool, AssertSqlSafe, Transaction};

pub(crate) use migrate::{Migration, Schema, migrate};

use crate::error::Error;

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

/// A [`Store`](sam_core::Store) over a SQL database; see [`crate::SqliteStore`] and [`crate::PgStore`].
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

/// The statuses of workspaces that hold a slot, as an SQL list.
const SLOT_HOLDING: &str = "('creating', 'running', 'recovery', 'stopping')";

/// The terminal task statuses, as an SQL list.
const TERMINAL: &str = "('completed', 'failed', 'cancelled')";

type AnyQuery<'q> = Query<'q, Any, AnyArguments>;

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
}

#[cfg(test)]
mod tests {
    use sam_core::{TaskStatus, WorkspaceStatus};

    use super::rows::name;
    use super::{SLOT_HOLDING, TERMINAL};

    #[test]
    fn status_lists_match_the_model() {
        let terminal: Vec<String> = TaskStatus::ALL
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
