//! Embedded, forward-only schema migrations, run when a store opens.

use sqlx::{AnyPool, AssertSqlSafe};

use crate::error::{Dialect, Error};

/// One schema change, embedded in the binary.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Migration {
    /// Its version; versions increase by one from 1.
    pub(crate) version: i64,
    /// The SQL, possibly several statements.
    pub(crate) sql: &'static str,
}

/// A family of migrations and the table that records which of them ran.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Schema {
    /// The table recording applied versions (one per family, so several families
    /// can share a database file).
    pub(crate) table: &'static str,
    /// The migrations, oldest first.
    pub(crate) migrations: &'static [Migration],
}

/// Brings the schema up to the newest of its migrations, in one transaction.
///
/// `begin` starts a write transaction; `lock`, when given, is run first inside it so
/// that concurrent openers migrate one at a time.
///
/// # Errors
/// [`Error::SchemaTooNew`] when the database records a version this build does not
/// know; database errors otherwise.
pub(crate) async fn migrate(
    pool: &AnyPool,
    dialect: Dialect,
    begin: &'static str,
    lock: Option<&'static str>,
    schema: &Schema,
) -> Result<(), Error> {
    let Schema { table, migrations } = *schema;
    let db = |context: &'static str| move |e| Error::database(dialect, context, e);
    let mut tx = pool
        .begin_with(begin)
        .await
        .map_err(db("starting a migration"))?;
    if let Some(lock) = lock {
        sqlx::query(lock)
            .execute(&mut *tx)
            .await
            .map_err(db("locking for a migration"))?;
    }
    sqlx::raw_sql(AssertSqlSafe(format!(
        "CREATE TABLE IF NOT EXISTS {table} \
         (version BIGINT PRIMARY KEY NOT NULL, applied_at BIGINT NOT NULL)"
    )))
    .execute(&mut *tx)
    .await
    .map_err(db("creating the migrations table"))?;
    let current: Option<i64> =
        sqlx::query_scalar(AssertSqlSafe(format!("SELECT MAX(version) FROM {table}")))
            .fetch_one(&mut *tx)
            .await
            .map_err(db("reading the schema version"))?;
    let current = current.unwrap_or(0);
    let supported = migrations.last().map_or(0, |m| m.version);
    if current > supported {
        return Err(Error::SchemaTooNew {
            found: current,
            supported,
        });
    }
    for m in migrations.iter().filter(|m| m.version > current) {
        sqlx::raw_sql(AssertSqlSafe(m.sql))
            .execute(&mut *tx)
            .await
            .map_err(db("applying a migration"))?;
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO {table} (version, applied_at) VALUES ($1, $2)"
        )))
        .bind(m.version)
        .bind(chrono::Utc::now().timestamp_micros())
        .execute(&mut *tx)
        .await
        .map_err(db("recording a migration"))?;
    }
    tx.commit().await.map_err(db("committing a migration"))
}
