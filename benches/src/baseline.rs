//! The plain sqlx baselines: what the same SQLite file sustains without the SDK in
//! between, on one connection with the stores' settings (WAL, `synchronous =
//! NORMAL`, writes in `BEGIN IMMEDIATE` transactions, no liveness ping when a
//! connection is taken from the pool).

use std::path::Path;
use std::time::{Duration, Instant};

use sam_store::Event;
use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

/// One connection to the SQLite file at `path`, with the stores' settings.
async fn open(path: &Path) -> anyhow::Result<SqlitePool> {
    let options = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(Duration::from_secs(5));
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .test_before_acquire(false)
        .connect_with(options)
        .await?;
    Ok(pool)
}

/// Single-row write transactions per second on the SQLite file at `path`, through
/// plain sqlx on one connection with the store's settings (WAL, `synchronous =
/// NORMAL`, `BEGIN IMMEDIATE`).
///
/// # Errors
/// Database errors.
pub async fn raw_writes_per_sec(path: &Path, rows: u64) -> anyhow::Result<f64> {
    let pool = open(path).await?;
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS bench_raw (id INTEGER PRIMARY KEY, \
         task_id TEXT NOT NULL, status TEXT NOT NULL, at INTEGER NOT NULL)",
    )
    .execute(&pool)
    .await?;
    let start = Instant::now();
    for i in 0..rows {
        let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
        sqlx::query("INSERT INTO bench_raw (task_id, status, at) VALUES ($1, $2, $3)")
            .bind(format!("t-{i}"))
            .bind("queued")
            .bind(i as i64)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
    }
    let secs = start.elapsed().as_secs_f64();
    pool.close().await;
    Ok(rows as f64 / secs)
}

/// Rows per second of a plain sqlx loop inserting `events`, one per `BEGIN IMMEDIATE`
/// transaction, into the event log's table and indexes in the file at `path`
/// (created with them on the first call; later calls add to it).
///
/// # Errors
/// Database errors.
pub async fn raw_rows_per_sec(path: &Path, events: &[Event]) -> anyhow::Result<f64> {
    let pool = open(path).await?;
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY AUTOINCREMENT, \
         node_id TEXT, workspace_id TEXT, level TEXT NOT NULL, type TEXT NOT NULL, \
         message TEXT NOT NULL, detail TEXT NOT NULL, created_at INTEGER NOT NULL); \
         CREATE INDEX IF NOT EXISTS events_by_time ON events (created_at); \
         CREATE INDEX IF NOT EXISTS events_by_workspace ON events (workspace_id, id);",
    )
    .execute(&pool)
    .await?;
    let start = Instant::now();
    for e in events {
        let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
        let _id: i64 = sqlx::query_scalar(
            "INSERT INTO events (id, node_id, workspace_id, level, type, message, detail, \
             created_at) VALUES (NULL, $1, $2, $3, $4, $5, $6, $7) RETURNING id",
        )
        .bind(e.node_id.as_ref().map(ToString::to_string))
        .bind(e.workspace_id.as_ref().map(ToString::to_string))
        .bind(e.level.as_str())
        .bind(e.kind.clone())
        .bind(e.message.clone())
        .bind(e.detail.to_string())
        .bind(e.created_at.timestamp_micros())
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
    }
    let secs = start.elapsed().as_secs_f64();
    pool.close().await;
    Ok(events.len() as f64 / secs)
}
