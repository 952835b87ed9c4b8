//! What the event log and the metrics store share: a SQLite file whose old rows are
//! pruned while it runs, and which can be checkpointed and exported.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{AnyPool, AssertSqlSafe, Row};

use crate::error::{Dialect, Error};
use crate::sql::Schema;
use crate::sqlite::{self, SqliteConfig};

/// Settings of the event log or the metrics store.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
pub struct RetentionConfig {
    /// The SQLite file.
    #[serde(flatten)]
    pub file: SqliteConfig,
    /// How long rows are kept, measured back from the newest time written.
    #[serde(default = "default_retention", with = "secs")]
    pub retention: Duration,
    /// How often (in the time of the rows written) old rows are pruned.
    #[serde(default = "default_prune_every", with = "secs")]
    pub prune_every: Duration,
}

fn default_retention() -> Duration {
    Duration::from_secs(7 * 24 * 3600)
}

fn default_prune_every() -> Duration {
    Duration::from_secs(3600)
}

/// Durations written in seconds.
mod secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_secs)
    }
}

impl RetentionConfig {
    /// A file at `path` keeping 7 days, pruned every hour.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            file: SqliteConfig::new(path),
            retention: default_retention(),
            prune_every: default_prune_every(),
        }
    }
}

/// A SQLite file with a retention window over one table's time column.
#[derive(Debug)]
pub(crate) struct RetainedFile {
    pub(crate) writer: AnyPool,
    pub(crate) reader: AnyPool,
    path: PathBuf,
    retention: chrono::Duration,
    prune_every: chrono::Duration,
    /// The table and its time column (microseconds) that retention applies to.
    table: &'static str,
    time_column: &'static str,
    last_prune: Mutex<Option<DateTime<Utc>>>,
}

fn chrono_duration(what: &str, d: Duration) -> Result<chrono::Duration, Error> {
    chrono::Duration::from_std(d).map_err(|_| Error::InvalidInput {
        what: what.into(),
        reason: format!("{d:?} is too long"),
    })
}

impl RetainedFile {
    /// Opens and migrates the file.
    pub(crate) async fn open(
        config: &RetentionConfig,
        schema: &Schema,
        table: &'static str,
        time_column: &'static str,
    ) -> Result<Self, Error> {
        let retention = chrono_duration("retention", config.retention)?;
        let prune_every = chrono_duration("prune interval", config.prune_every)?;
        let (writer, reader) = sqlite::open(&config.file, schema).await?;
        Ok(Self {
            writer,
            reader,
            path: config.file.path.clone(),
            retention,
            prune_every,
            table,
            time_column,
            last_prune: Mutex::new(None),
        })
    }

    pub(crate) fn db(context: &str) -> impl FnOnce(sqlx::Error) -> Error + '_ {
        move |e| Error::database(Dialect::Sqlite, context, e)
    }

    /// Prunes when `now` is at least `prune_every` past the last pruning.
    pub(crate) async fn prune_if_due(&self, now: DateTime<Utc>) -> Result<(), Error> {
        let due = {
            let mut last = self.last_prune.lock().unwrap_or_else(|p| p.into_inner());
            let due = last.is_none_or(|l| now - l >= self.prune_every);
            if due {
                *last = Some(now);
            }
            due
        };
        if due {
            self.prune(now).await?;
        }
        Ok(())
    }

    /// Deletes rows older than `now` minus the retention; returns how many.
    pub(crate) async fn prune(&self, now: DateTime<Utc>) -> Result<u64, Error> {
        let cutoff = (now - self.retention).timestamp_micros();
        let sql = format!("DELETE FROM {} WHERE {} < $1", self.table, self.time_column);
        let done = sqlx::query(AssertSqlSafe(sql))
            .bind(cutoff)
            .execute(&self.writer)
            .await
            .map_err(Self::db("pruning old rows"))?;
        Ok(done.rows_affected())
    }

    /// Moves every committed row from the WAL into the database file.
    pub(crate) async fn checkpoint(&self) -> Result<(), Error> {
        let mut conn = self
            .writer
            .acquire()
            .await
            .map_err(Self::db("checkpointing"))?;
        Self::checkpoint_on(&mut conn).await
    }

    async fn checkpoint_on(conn: &mut sqlx::AnyConnection) -> Result<(), Error> {
        let row = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .fetch_one(&mut *conn)
            .await
            .map_err(Self::db("checkpointing"))?;
        let busy: i64 = row.try_get(0).map_err(Self::db("checkpointing"))?;
        if busy != 0 {
            return Err(Error::database(
                Dialect::Sqlite,
                "checkpointing",
                sqlx::Error::Protocol("the checkpoint could not finish; readers are active".into()),
            ));
        }
        Ok(())
    }

    /// Checkpoints, then copies the database file to `dest` while holding the writer,
    /// so the copy holds every committed row and nothing half-written; returns its size.
    pub(crate) async fn export(&self, dest: &Path) -> Result<u64, Error> {
        let mut conn = self.writer.acquire().await.map_err(Self::db("exporting"))?;
        Self::checkpoint_on(&mut conn).await?;
        let copied = tokio::fs::copy(&self.path, dest)
            .await
            .map_err(|source| Error::Io {
                path: dest.to_owned(),
                source,
            })?;
        drop(conn);
        Ok(copied)
    }
}
