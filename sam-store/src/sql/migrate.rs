//! Embedded, forward-only schema migrations, run through sqlx's migrator when a store
//! opens.
//!
//! sqlx records each applied migration with a checksum of its SQL, so a migration
//! edited after it ran is refused ([`Error::MigrationEdited`]) instead of leaving
//! databases that ran the old text and databases that ran the new one apart.

use std::borrow::Cow;

use sqlx::migrate::{Migrate, MigrateError, MigrationType, Migrator};
use sqlx::{AnyConnection, AnyPool, AssertSqlSafe, SqlSafeStr};

use crate::error::{Dialect, Error};

/// One schema change, embedded in the binary.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Migration {
    /// Its version; versions increase by one from 1.
    pub(crate) version: i64,
    /// The SQL, possibly several statements. The first line of a leading `--` comment
    /// is its description in the migrations table.
    pub(crate) sql: &'static str,
}

/// A family of migrations and the table that records which of them ran.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Schema {
    /// The table recording applied migrations, in sqlx's layout (one per family, so
    /// several families can share a database file).
    pub(crate) table: &'static str,
    /// The migrations, oldest first.
    pub(crate) migrations: &'static [Migration],
}

impl Schema {
    /// sqlx's migrator for this family. It takes no lock of its own: [`migrate`] runs
    /// it inside a transaction that holds the caller's lock.
    fn migrator(&self) -> Migrator {
        let migrations = self
            .migrations
            .iter()
            .map(|m| {
                sqlx::migrate::Migration::new(
                    m.version,
                    Cow::Borrowed(description(m.sql)),
                    MigrationType::Simple,
                    m.sql.into_sql_str(),
                    false,
                )
            })
            .collect();
        let mut migrator = Migrator::with_migrations(migrations);
        migrator.dangerous_set_table_name(self.table);
        migrator.set_locking(false);
        migrator
    }

    /// The newest version this build knows.
    fn supported(&self) -> i64 {
        self.migrations.last().map_or(0, |m| m.version)
    }
}

/// The first line of the comment that opens `sql`, or nothing.
fn description(sql: &'static str) -> &'static str {
    sql.lines()
        .next()
        .and_then(|line| line.strip_prefix("--"))
        .map_or("", str::trim)
}

/// Brings the schema up to the newest of its migrations, in one transaction.
///
/// `begin` starts a write transaction; `lock`, when given, is run first inside it so
/// that concurrent openers migrate one at a time. sqlx's own PostgreSQL lock is
/// session-level and would stay with a pooled connection after a failed migration;
/// a lock taken inside the transaction ends with it whatever happens, and it also
/// covers the upgrade of an earlier build's migrations table. (sqlx takes no lock on
/// SQLite; there `BEGIN IMMEDIATE` makes concurrent openers wait for each other.)
///
/// # Errors
/// [`Error::SchemaTooNew`] when the database records a version this build does not
/// know; [`Error::MigrationEdited`] when a migration's SQL differs from the SQL that
/// was applied; database errors otherwise.
pub(crate) async fn migrate(
    pool: &AnyPool,
    dialect: Dialect,
    begin: &'static str,
    lock: Option<&'static str>,
    schema: &Schema,
) -> Result<(), Error> {
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
    let migrator = schema.migrator();
    upgrade_earlier_table(&mut tx, dialect, schema, &migrator).await?;
    // `run_direct` is what `Migrator::run` does once it holds a connection. Through
    // `run`, sqlx's higher-ranked `Acquire` bound leaves the opener's future not
    // provably `Send` (so a store could not be opened in a spawned task); sqlx keeps
    // `run_direct` public for exactly that.
    match migrator.run_direct(None, &mut *tx, false).await {
        Ok(()) => {}
        Err(MigrateError::VersionMissing(_)) => {
            let found: Option<i64> = sqlx::query_scalar(AssertSqlSafe(format!(
                "SELECT MAX(version) FROM {}",
                schema.table
            )))
            .fetch_one(&mut *tx)
            .await
            .map_err(db("reading the schema version"))?;
            return Err(Error::SchemaTooNew {
                found: found.unwrap_or(0),
                supported: schema.supported(),
            });
        }
        Err(e) => return Err(migration_error(dialect, schema, &migrator, e)),
    }
    tx.commit().await.map_err(db("committing a migration"))
}

/// Rewrites the table of an earlier build's migrator (`version` and `applied_at` in
/// microseconds, nothing else) into sqlx's layout, recording each applied version
/// with the checksum of this build's SQL for it, so the migrator goes on from there.
async fn upgrade_earlier_table(
    conn: &mut AnyConnection,
    dialect: Dialect,
    schema: &Schema,
    migrator: &Migrator,
) -> Result<(), Error> {
    let table = schema.table;
    let db = |context: &'static str| move |e| Error::database(dialect, context, e);
    let (probe, installed_on) = match dialect {
        Dialect::Sqlite => (
            format!("SELECT COUNT(*) FROM pragma_table_info('{table}') WHERE name = 'applied_at'"),
            "datetime($4 / 1000000, 'unixepoch')",
        ),
        Dialect::Postgres => (
            format!(
                "SELECT COUNT(*) FROM information_schema.columns WHERE table_schema = \
                 current_schema() AND table_name = '{table}' AND column_name = 'applied_at'"
            ),
            "to_timestamp(CAST($4 AS DOUBLE PRECISION) / 1000000)",
        ),
    };
    let earlier: i64 = sqlx::query_scalar(AssertSqlSafe(probe))
        .fetch_one(&mut *conn)
        .await
        .map_err(db("looking for an earlier migrations table"))?;
    if earlier == 0 {
        return Ok(());
    }
    let applied: Vec<(i64, i64)> = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT version, applied_at FROM {table} ORDER BY version"
    )))
    .fetch_all(&mut *conn)
    .await
    .map_err(db("reading the earlier migrations table"))?;
    if applied.iter().any(|&(v, _)| !migrator.version_exists(v)) {
        return Err(Error::SchemaTooNew {
            found: applied.last().map_or(0, |&(v, _)| v),
            supported: schema.supported(),
        });
    }
    sqlx::raw_sql(AssertSqlSafe(format!("DROP TABLE {table}")))
        .execute(&mut *conn)
        .await
        .map_err(db("replacing the earlier migrations table"))?;
    conn.ensure_migrations_table(table)
        .await
        .map_err(|e| migration_error(dialect, schema, migrator, e))?;
    for (version, applied_at) in applied {
        let Some(m) = migrator.iter().find(|m| m.version == version) else {
            continue; // Every applied version is known: checked above.
        };
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO {table} \
             (version, description, installed_on, success, checksum, execution_time) \
             VALUES ($1, $2, {installed_on}, TRUE, $3, -1)"
        )))
        .bind(version)
        .bind(m.description.to_string())
        .bind(m.checksum.to_vec())
        .bind(applied_at)
        .execute(&mut *conn)
        .await
        .map_err(db("recording an earlier migration"))?;
    }
    Ok(())
}

/// A failure of sqlx's migrator as the crate's error.
fn migration_error(
    dialect: Dialect,
    schema: &Schema,
    migrator: &Migrator,
    error: MigrateError,
) -> Error {
    let table = schema.table;
    match error {
        MigrateError::VersionMismatch(version) => Error::MigrationEdited {
            table: table.to_owned(),
            version,
            description: migrator
                .iter()
                .find(|m| m.version == version)
                .map(|m| m.description.to_string())
                .unwrap_or_default(),
        },
        MigrateError::Execute(e) => Error::database(dialect, format!("migrating {table}"), e),
        MigrateError::ExecuteMigration(e, version) => Error::database(
            dialect,
            format!("applying migration {version} of {table}"),
            e,
        ),
        other => Error::database(
            dialect,
            format!("migrating {table}"),
            sqlx::Error::Migrate(Box::new(other)),
        ),
    }
}
