//! Migrations through sqlx's migrator: an edited migration is refused naming it, and a
//! database migrated by the earlier hand-written migrator (its own `version`,
//! `applied_at` table) upgrades in place, on SQLite and on PostgreSQL.

use futures::future::join_all;
use sam_core::testkit::fixtures::{task, task_id};
use sam_core::{Store, StoreErrorKind};
use sam_store::Error;
use sqlx::migrate::{Migration, MigrationType};
use sqlx::{AnyConnection, AssertSqlSafe, Connection, Row, SqlSafeStr};

/// The table the earlier hand-written migrator kept, exactly as it created it.
const EARLIER_TABLE: &str = "CREATE TABLE IF NOT EXISTS sam_store_migrations \
    (version BIGINT PRIMARY KEY NOT NULL, applied_at BIGINT NOT NULL)";

/// When the earlier migrator applied everything, in microseconds (2026-11-21 12:00 UTC).
const APPLIED_AT: i64 = 1_795_262_400_000_000;

/// The last version the earlier migrator applied: later ones only ever ran under sqlx's.
const EARLIER_LAST: usize = 10;

const SQLITE: [&str; 12] = [
    include_str!("../migrations/sqlite/0001_initial.sql"),
    include_str!("../migrations/sqlite/0002_github.sql"),
    include_str!("../migrations/sqlite/0003_projects.sql"),
    include_str!("../migrations/sqlite/0004_node_owner.sql"),
    include_str!("../migrations/sqlite/0005_status_trigger.sql"),
    include_str!("../migrations/sqlite/0006_api_token_records.sql"),
    include_str!("../migrations/sqlite/0007_node_boot.sql"),
    include_str!("../migrations/sqlite/0008_lease_epoch.sql"),
    include_str!("../migrations/sqlite/0009_task_notices.sql"),
    include_str!("../migrations/sqlite/0010_keys.sql"),
    include_str!("../migrations/sqlite/0011_task_events.sql"),
    include_str!("../migrations/sqlite/0012_setup_choices.sql"),
];

#[cfg(feature = "postgres")]
const POSTGRES: [&str; 12] = [
    include_str!("../migrations/postgres/0001_initial.sql"),
    include_str!("../migrations/postgres/0002_github.sql"),
    include_str!("../migrations/postgres/0003_projects.sql"),
    include_str!("../migrations/postgres/0004_node_owner.sql"),
    include_str!("../migrations/postgres/0005_status_trigger.sql"),
    include_str!("../migrations/postgres/0006_api_token_records.sql"),
    include_str!("../migrations/postgres/0007_node_boot.sql"),
    include_str!("../migrations/postgres/0008_lease_epoch.sql"),
    include_str!("../migrations/postgres/0009_task_notices.sql"),
    include_str!("../migrations/postgres/0010_keys.sql"),
    include_str!("../migrations/postgres/0011_task_events.sql"),
    include_str!("../migrations/postgres/0012_setup_choices.sql"),
];

/// The checksum sqlx (its `migrate!` macro and its CLI alike) records for `sql`.
fn checksum(sql: &str) -> Vec<u8> {
    let sql = AssertSqlSafe(sql.to_owned()).into_sql_str();
    Migration::new(0, "".into(), MigrationType::Simple, sql, false)
        .checksum
        .to_vec()
}

/// A raw connection to a database, outside any store; `setup` runs first.
async fn connect(url: &str, setup: &str) -> AnyConnection {
    sqlx::any::install_default_drivers();
    let mut conn = AnyConnection::connect(url).await.expect("raw connection");
    if !setup.is_empty() {
        run(&mut conn, setup).await;
    }
    conn
}

async fn run(conn: &mut AnyConnection, sql: &str) {
    sqlx::raw_sql(AssertSqlSafe(sql.to_owned()))
        .execute(&mut *conn)
        .await
        .unwrap_or_else(|e| panic!("raw SQL {sql:.60}: {e}"));
}

/// Migrates the database as the earlier migrator did: in one transaction, the first
/// `upto` migrations, each recorded in its table by version and time.
async fn migrate_as_earlier_builds_did(conn: &mut AnyConnection, migrations: &[&str], upto: usize) {
    let mut tx = conn.begin().await.expect("begin");
    sqlx::raw_sql(EARLIER_TABLE)
        .execute(&mut *tx)
        .await
        .expect("earlier table");
    for (i, sql) in migrations[..upto].iter().enumerate() {
        sqlx::raw_sql(AssertSqlSafe(*sql))
            .execute(&mut *tx)
            .await
            .expect("earlier migration");
        sqlx::query("INSERT INTO sam_store_migrations (version, applied_at) VALUES ($1, $2)")
            .bind(i as i64 + 1)
            .bind(APPLIED_AT)
            .execute(&mut *tx)
            .await
            .expect("earlier record");
    }
    tx.commit().await.expect("commit");
}

/// Checks that sqlx's table records every migration with the checksum of its file, and
/// the ones the earlier migrator ran (the first `earlier`) at the time it ran them.
async fn check_recorded(
    conn: &mut AnyConnection,
    migrations: &[&str],
    earlier: usize,
    installed_on: &str,
) {
    let rows = sqlx::query(AssertSqlSafe(format!(
        "SELECT version, checksum, {installed_on} AS installed_on \
         FROM sam_store_migrations WHERE success ORDER BY version"
    )))
    .fetch_all(&mut *conn)
    .await
    .expect("sqlx's migrations table");
    assert_eq!(
        rows.len(),
        migrations.len(),
        "one successful row per migration"
    );
    for (i, (row, sql)) in rows.iter().zip(migrations).enumerate() {
        let version: i64 = row.get("version");
        assert_eq!(version, i as i64 + 1);
        let recorded: Vec<u8> = row.get("checksum");
        assert_eq!(recorded, checksum(sql), "checksum of migration {version}");
        if i < earlier {
            let at: i64 = row.get("installed_on");
            assert_eq!(
                at,
                APPLIED_AT / 1_000_000,
                "migration {version} keeps its time"
            );
        }
    }
}

/// Migrates the database as the earlier migrator did up to `upto` (0: not at all),
/// opens it with several stores at once, then checks what sqlx's table records, that
/// the stores work, and that the database opens again (its checksums match).
async fn check_upgrade<S: Store, F: std::future::Future<Output = Result<S, Error>>>(
    conn: &mut AnyConnection,
    migrations: &[&str],
    upto: usize,
    installed_on: &str,
    open: impl Fn() -> F,
) {
    if upto > 0 {
        migrate_as_earlier_builds_did(conn, migrations, upto).await;
    }
    let opened = join_all((0..4).map(|_| open())).await;
    let stores: Vec<S> = opened
        .into_iter()
        .enumerate()
        .map(|(i, s)| s.unwrap_or_else(|e| panic!("opener {i} of a database at {upto}: {e}")))
        .collect();
    check_recorded(conn, migrations, upto, installed_on).await;
    for (i, store) in stores.iter().enumerate() {
        let id = format!("t-{i}");
        store.create_task(&task(&id, 1)).await.expect("write");
    }
    drop(stores);
    let again = open().await.expect("reopen");
    assert!(
        again
            .get_task(&task_id("t-3"))
            .await
            .expect("read")
            .is_some()
    );
}

mod sqlite {
    use sam_store::{SqliteConfig, SqliteStore};

    use super::*;

    /// `installed_on` (SQLite's text timestamp) as seconds since the epoch.
    const INSTALLED_ON: &str = "CAST(strftime('%s', installed_on) AS INTEGER)";

    fn url(path: &std::path::Path) -> String {
        format!("sqlite://{}?mode=rwc", path.display())
    }

    /// Stores opening at once migrate one at a time: a fresh file, one the earlier
    /// migrator took part of the way and one it took all the way.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn earlier_databases_upgrade_in_place_with_stores_opening_at_once() {
        for upto in [0, 4, EARLIER_LAST] {
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().join("store.db");
            let mut conn = connect(&url(&path), "").await;
            let config = SqliteConfig::new(&path);
            check_upgrade(&mut conn, &SQLITE, upto, INSTALLED_ON, || {
                SqliteStore::new(&config)
            })
            .await;
            conn.close().await.expect("close");
        }
    }

    #[tokio::test]
    async fn an_earlier_table_with_a_newer_version_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("store.db");
        let mut conn = connect(&url(&path), "").await;
        let config = SqliteConfig::new(&path);
        check_newer_refused(&mut conn, &SQLITE, || SqliteStore::new(&config)).await;
        conn.close().await.expect("close");
    }

    #[tokio::test]
    async fn an_edited_migration_is_refused_naming_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("store.db");
        let config = SqliteConfig::new(&path);
        SqliteStore::new(&config).await.expect("open").close().await;
        let mut conn = connect(&url(&path), "").await;
        record_another_text_of_migration_3(&mut conn, &SQLITE).await;
        conn.close().await.expect("close");
        let err = SqliteStore::new(&config)
            .await
            .expect_err("an edited migration must be refused");
        check_edited(
            &err,
            "Projects, users, agent profiles and credentials (SQLite).",
        );
    }
}

/// Plants a version this build lacks in the earlier migrator's table, then checks
/// that `open` refuses the database and leaves that table as it was.
async fn check_newer_refused<S: std::fmt::Debug, F>(
    conn: &mut AnyConnection,
    migrations: &[&str],
    open: impl FnOnce() -> F,
) where
    F: std::future::Future<Output = Result<S, Error>>,
{
    migrate_as_earlier_builds_did(conn, migrations, EARLIER_LAST).await;
    run(
        conn,
        "INSERT INTO sam_store_migrations (version, applied_at) VALUES (999, 0)",
    )
    .await;
    let err = open().await.expect_err("a newer schema must be refused");
    assert!(
        matches!(
            err,
            Error::SchemaTooNew {
                found: 999,
                supported,
            } if supported == migrations.len() as i64
        ),
        "{err:?}"
    );
    let kept: i64 = sqlx::query_scalar("SELECT COUNT(applied_at) FROM sam_store_migrations")
        .fetch_one(&mut *conn)
        .await
        .expect("the earlier table is still there");
    assert_eq!(
        kept,
        EARLIER_LAST as i64 + 1,
        "the earlier rows and the planted one"
    );
}

/// Records that the database ran another text of migration 3 than this build carries.
async fn record_another_text_of_migration_3(conn: &mut AnyConnection, migrations: &[&str]) {
    sqlx::query("UPDATE sam_store_migrations SET checksum = $1 WHERE version = 3")
        .bind(checksum(&format!("{}\n-- edited", migrations[2])))
        .execute(&mut *conn)
        .await
        .expect("record another text");
}

/// Checks the error of an edited migration 3.
fn check_edited(err: &Error, description: &str) {
    assert!(
        matches!(
            err,
            Error::MigrationEdited { table, version: 3, description: d }
                if table == "sam_store_migrations" && d == description
        ),
        "{err:?}"
    );
    assert_eq!(err.kind(), StoreErrorKind::InvalidData);
    assert!(!err.is_retryable());
    let message = err.to_string();
    assert!(message.contains("migration 3"), "{message}");
    assert!(message.contains(description), "{message}");
}

#[cfg(feature = "postgres")]
mod postgres {
    use sam_store::{PgConfig, PgStore};

    use super::*;

    const INSTALLED_ON: &str = "CAST(EXTRACT(EPOCH FROM installed_on) AS BIGINT)";

    /// A fresh schema name on the test server, or `None` (with a notice) without one.
    fn fresh(name: &str) -> Option<(String, String)> {
        let url = sam_core::testkit::required_env("SAM_TEST_POSTGRES_URL")?;
        Some((url, format!("sam_migrations_{name}_{}", std::process::id())))
    }

    async fn in_schema(url: &str, schema: &str) -> AnyConnection {
        connect(
            url,
            &format!(
                "DROP SCHEMA IF EXISTS \"{schema}\" CASCADE; CREATE SCHEMA \"{schema}\"; \
                 SET search_path TO \"{schema}\""
            ),
        )
        .await
    }

    fn config(url: &str, schema: &str) -> PgConfig {
        PgConfig {
            max_connections: 2,
            ..PgConfig::new(url).with_schema(schema)
        }
    }

    async fn drop_schema(mut conn: AnyConnection, schema: &str) {
        run(&mut conn, &format!("DROP SCHEMA \"{schema}\" CASCADE")).await;
        conn.close().await.expect("close");
    }

    /// Control planes starting at once migrate one at a time: on a fresh schema, on
    /// one the earlier migrator took part of the way and on one it took all the way.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn earlier_schemas_upgrade_in_place_with_servers_starting_at_once() {
        for upto in [0, 4, EARLIER_LAST] {
            let Some((url, schema)) = fresh(&format!("earlier_{upto}")) else {
                return;
            };
            let mut conn = in_schema(&url, &schema).await;
            let config = config(&url, &schema);
            check_upgrade(&mut conn, &POSTGRES, upto, INSTALLED_ON, || {
                PgStore::new(&config)
            })
            .await;
            drop_schema(conn, &schema).await;
        }
    }

    #[tokio::test]
    async fn an_earlier_table_with_a_newer_version_is_refused_and_left_alone() {
        let Some((url, schema)) = fresh("newer") else {
            return;
        };
        let mut conn = in_schema(&url, &schema).await;
        let config = config(&url, &schema);
        check_newer_refused(&mut conn, &POSTGRES, || PgStore::new(&config)).await;
        drop_schema(conn, &schema).await;
    }

    #[tokio::test]
    async fn an_edited_migration_is_refused_naming_it() {
        let Some((url, schema)) = fresh("edited") else {
            return;
        };
        let mut conn = in_schema(&url, &schema).await;
        PgStore::new(&config(&url, &schema))
            .await
            .expect("open")
            .close()
            .await;
        record_another_text_of_migration_3(&mut conn, &POSTGRES).await;
        let err = PgStore::new(&config(&url, &schema))
            .await
            .expect_err("an edited migration must be refused");
        check_edited(
            &err,
            "Projects, users, agent profiles and credentials (PostgreSQL).",
        );
        drop_schema(conn, &schema).await;
    }
}
