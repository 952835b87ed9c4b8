//! [`MetricsStore`]: resource snapshots of a node, one per minute, in a SQLite file
//! (WAL) with the same retention and export as the event log.

use std::path::Path;

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use serde::{Deserialize, Serialize};
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::error::Error;
use crate::retention::{RetainedFile, RetentionConfig};
use crate::sql::{Migration, Schema};

/// Resource use of a node at one minute.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MetricsSnapshot {
    /// The minute (seconds and below are dropped when stored).
    pub minute: DateTime<Utc>,
    /// CPU use in percent, from two `/proc/stat` samples.
    pub cpu_percent: f64,
    /// The one-minute load average.
    pub load_avg1: f64,
    /// Memory in use (total minus available) in percent.
    pub memory_percent: f64,
    /// Root file system use in percent.
    pub disk_percent: f64,
}

const SCHEMA: Schema = Schema {
    table: "sam_metrics_migrations",
    migrations: &[Migration {
        version: 1,
        sql: "CREATE TABLE snapshots (\
                minute INTEGER PRIMARY KEY NOT NULL, \
                cpu_percent REAL NOT NULL, \
                load_avg1 REAL NOT NULL, \
                memory_percent REAL NOT NULL, \
                disk_percent REAL NOT NULL);",
    }],
};

/// The metrics store; see the module docs.
#[derive(Debug)]
pub struct MetricsStore {
    file: RetainedFile,
}

fn decode(row: &AnyRow) -> Result<MetricsSnapshot, Error> {
    let db = RetainedFile::db("reading a snapshot");
    let minute: i64 = row.try_get("minute").map_err(db)?;
    let number = |column: &str| {
        row.try_get::<f64, _>(column)
            .map_err(|e| Error::invalid_data(format!("snapshots.{column} of {minute}"), e))
    };
    Ok(MetricsSnapshot {
        minute: DateTime::from_timestamp_micros(minute).ok_or_else(|| {
            Error::invalid_data("snapshots.minute", format!("{minute} is not a time"))
        })?,
        cpu_percent: number("cpu_percent")?,
        load_avg1: number("load_avg1")?,
        memory_percent: number("memory_percent")?,
        disk_percent: number("disk_percent")?,
    })
}

impl MetricsStore {
    /// Opens (creating if needed) and migrates the metrics file.
    ///
    /// # Errors
    /// [`Error::Corrupt`] naming the file when it is not a SQLite database;
    /// [`Error::SchemaTooNew`]; database errors.
    pub async fn new(config: &RetentionConfig) -> Result<Self, Error> {
        let file = RetainedFile::open(config, &SCHEMA, "snapshots", "minute").await?;
        Ok(Self { file })
    }

    /// Records a snapshot, replacing any other of the same minute.
    ///
    /// # Errors
    /// Database errors.
    pub async fn record(&self, snapshot: &MetricsSnapshot) -> Result<(), Error> {
        let minute = snapshot
            .minute
            .duration_trunc(TimeDelta::minutes(1))
            .map_err(|e| Error::InvalidInput {
                what: "snapshot minute".into(),
                reason: e.to_string(),
            })?;
        sqlx::query(
            "INSERT INTO snapshots (minute, cpu_percent, load_avg1, memory_percent, disk_percent) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (minute) DO UPDATE SET \
             cpu_percent = excluded.cpu_percent, load_avg1 = excluded.load_avg1, \
             memory_percent = excluded.memory_percent, disk_percent = excluded.disk_percent",
        )
        .bind(minute.timestamp_micros())
        .bind(snapshot.cpu_percent)
        .bind(snapshot.load_avg1)
        .bind(snapshot.memory_percent)
        .bind(snapshot.disk_percent)
        .execute(&self.file.writer)
        .await
        .map_err(RetainedFile::db("recording a snapshot"))?;
        self.file.prune_if_due(minute).await
    }

    /// The snapshots from `since` on, oldest first.
    ///
    /// # Errors
    /// Database errors; [`Error::InvalidData`] for a row that cannot be decoded.
    pub async fn list(&self, since: DateTime<Utc>) -> Result<Vec<MetricsSnapshot>, Error> {
        let rows = sqlx::query(
            "SELECT minute, cpu_percent, load_avg1, memory_percent, disk_percent \
             FROM snapshots WHERE minute >= $1 ORDER BY minute",
        )
        .bind(since.timestamp_micros())
        .fetch_all(&self.file.reader)
        .await
        .map_err(RetainedFile::db("listing snapshots"))?;
        rows.iter().map(decode).collect()
    }

    /// Deletes snapshots older than `now` minus the retention; returns how many.
    ///
    /// # Errors
    /// Database errors.
    pub async fn prune(&self, now: DateTime<Utc>) -> Result<u64, Error> {
        self.file.prune(now).await
    }

    /// Moves every committed snapshot from the WAL into the database file.
    ///
    /// # Errors
    /// Database errors.
    pub async fn checkpoint(&self) -> Result<(), Error> {
        self.file.checkpoint().await
    }

    /// Checkpoints, then copies the database file to `dest`; returns its size in bytes.
    ///
    /// # Errors
    /// [`Error::Io`] naming `dest`; database errors.
    pub async fn export(&self, dest: &Path) -> Result<u64, Error> {
        self.file.export(dest).await
    }
}
