//! Where the VM agent keeps its event log and metrics: [`Storage`].
//!
//! A node keeps both in SQLite files under its data directory ([`SqliteStorage`]):
//! `events.db` ([`SqliteEventLog`]) and `metrics.db` (`sam-store`'s
//! [`MetricsStore`], one snapshot per minute). Both run in WAL mode with
//! `synchronous=NORMAL`, drop rows older than the retention while the agent runs, and
//! are exported by checkpointing the WAL and copying the file. Tests and embedding
//! programs may keep events in memory instead ([`Storage::Memory`]).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use sam_core::NodeId;
use sam_store::{MetricsStore, RetentionConfig};

use crate::error::{Error, Result};
use crate::vm::events::{EventLog, MemoryEventLog, SqliteEventLog};
use crate::vm::monitor::MetricsSnapshot;

/// The event log's file name in the data directory.
pub const EVENTS_FILE: &str = "events.db";
/// The metrics store's file name in the data directory.
pub const METRICS_FILE: &str = "metrics.db";
/// The directory (in the data directory) where exports are staged while they stream.
const EXPORTS_DIR: &str = "exports";

/// How often `sam-store` prunes old rows at most: hourly, or as often as the
/// retention when that is shorter.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// Where a [`crate::vm::VmAgent`] keeps its events and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Storage {
    /// In the process: the latest `events_kept` events in a [`MemoryEventLog`], and
    /// only the latest metrics sample. Nothing can be exported (the export routes
    /// answer `404`). For tests and embedding programs.
    Memory {
        /// How many events are kept.
        events_kept: usize,
    },
    /// SQLite files in a data directory: what a node uses.
    Sqlite(SqliteStorage),
}

impl Default for Storage {
    /// In memory, keeping the latest 10 000 events.
    fn default() -> Self {
        Self::Memory {
            events_kept: 10_000,
        }
    }
}

/// The SQLite files of a node: [`EVENTS_FILE`] and [`METRICS_FILE`] in `dir`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqliteStorage {
    /// The data directory; created if missing.
    pub dir: PathBuf,
    /// How long events and metrics are kept, enforced while the agent runs.
    pub retention: Duration,
}

impl SqliteStorage {
    /// The files in `dir`, kept for 7 days.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            retention: Duration::from_secs(7 * 24 * 3600),
        }
    }

    fn retention_config(&self, file: &str) -> RetentionConfig {
        let mut config = RetentionConfig::new(self.dir.join(file));
        config.retention = self.retention;
        config.prune_every = PRUNE_EVERY.min(self.retention);
        config
    }
}

/// Which database an export copies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ExportKind {
    Events,
    Metrics,
}

impl ExportKind {
    pub(crate) const fn name(self) -> &'static str {
        match self {
            Self::Events => "events",
            Self::Metrics => "metrics",
        }
    }
}

/// An exported database file, already unlinked: it lives as long as the handle.
#[derive(Debug)]
pub(crate) struct Exported {
    pub(crate) file: tokio::fs::File,
    pub(crate) len: u64,
}

/// The opened stores of a [`Storage`].
#[derive(Debug)]
pub(crate) struct Stores {
    pub(crate) events: Arc<dyn EventLog>,
    files: Option<Files>,
}

#[derive(Debug)]
struct Files {
    events: Arc<SqliteEventLog>,
    metrics: MetricsStore,
    exports: PathBuf,
    next_export: AtomicU64,
}

impl Stores {
    /// Opens what `storage` selects for `node_id`'s events.
    pub(crate) async fn open(storage: &Storage, node_id: &NodeId) -> Result<Self> {
        let sqlite = match storage {
            Storage::Memory { events_kept } => {
                return Ok(Self {
                    events: Arc::new(MemoryEventLog::new(*events_kept)),
                    files: None,
                });
            }
            Storage::Sqlite(sqlite) => sqlite,
        };
        if sqlite.retention.is_zero() {
            return Err(Error::InvalidRequest(
                "the retention of events and metrics must be greater than zero".to_owned(),
            ));
        }
        let exports = sqlite.dir.join(EXPORTS_DIR);
        // Exports are unlinked as soon as they are open; what is left is from a crash.
        match tokio::fs::remove_dir_all(&exports).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(format!("clearing {}", exports.display()), e)),
        }
        tokio::fs::create_dir_all(&exports)
            .await
            .map_err(|e| Error::io(format!("creating {}", exports.display()), e))?;
        let events = Arc::new(
            SqliteEventLog::new(&sqlite.retention_config(EVENTS_FILE), node_id.clone()).await?,
        );
        let metrics = MetricsStore::new(&sqlite.retention_config(METRICS_FILE)).await?;
        Ok(Self {
            events: Arc::clone(&events) as Arc<dyn EventLog>,
            files: Some(Files {
                events,
                metrics,
                exports,
                next_export: AtomicU64::new(0),
            }),
        })
    }

    /// Stores a snapshot under its minute (nothing in memory: the sampler keeps the
    /// latest one).
    pub(crate) async fn record_metrics(&self, snapshot: &MetricsSnapshot) -> Result<()> {
        let Some(files) = &self.files else {
            return Ok(());
        };
        files
            .metrics
            .record(&sam_store::MetricsSnapshot {
                minute: snapshot.at,
                cpu_percent: snapshot.cpu_percent,
                load_avg1: snapshot.cpu_load_avg1,
                memory_percent: snapshot.memory_percent,
                disk_percent: snapshot.disk_percent,
            })
            .await?;
        Ok(())
    }

    /// Drops events older than the retention, even when none are being written.
    /// (Metrics prune themselves: a snapshot is written every interval.)
    pub(crate) async fn prune_events(&self, now: DateTime<Utc>) -> Result<u64> {
        match &self.files {
            Some(files) => Ok(files.events.store().prune(now).await?),
            None => Ok(0),
        }
    }

    /// Checkpoints `kind`'s WAL and copies its file; `None` when the storage keeps
    /// no files.
    pub(crate) async fn export(&self, kind: ExportKind) -> Result<Option<Exported>> {
        let Some(files) = &self.files else {
            return Ok(None);
        };
        let n = files.next_export.fetch_add(1, Ordering::Relaxed);
        let path = files.exports.join(format!("{}-{n}.db", kind.name()));
        let exported = match kind {
            ExportKind::Events => files.events.export(&path).await,
            ExportKind::Metrics => files.metrics.export(&path).await.map_err(Error::from),
        };
        let opened = match exported {
            Ok(len) => tokio::fs::File::open(&path)
                .await
                .map(|file| Exported { file, len })
                .map_err(|e| Error::io(format!("opening {}", path.display()), e)),
            Err(e) => Err(e),
        };
        // The open handle keeps the copy readable; the name is no longer needed.
        if let Err(e) = tokio::fs::remove_file(&path).await
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(error = %e, path = %path.display(), "could not remove an export");
        }
        opened.map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node() -> NodeId {
        NodeId::new("node-1").unwrap()
    }

    #[tokio::test]
    async fn memory_keeps_no_files() {
        let stores = Stores::open(&Storage::default(), &node()).await.unwrap();
        assert!(stores.export(ExportKind::Events).await.unwrap().is_none());
        assert!(stores.export(ExportKind::Metrics).await.unwrap().is_none());
        assert_eq!(stores.prune_events(Utc::now()).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn sqlite_files_are_created_and_a_zero_retention_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut storage = SqliteStorage::new(dir.path().join("data"));
        storage.retention = Duration::ZERO;
        let refused = Stores::open(&Storage::Sqlite(storage.clone()), &node()).await;
        assert!(
            matches!(refused, Err(Error::InvalidRequest(_))),
            "{refused:?}"
        );

        storage.retention = Duration::from_secs(60);
        // A leftover from a crash mid-export is cleared.
        std::fs::create_dir_all(storage.dir.join(EXPORTS_DIR)).unwrap();
        std::fs::write(storage.dir.join(EXPORTS_DIR).join("events-0.db"), "x").unwrap();
        let stores = Stores::open(&Storage::Sqlite(storage.clone()), &node())
            .await
            .unwrap();
        assert!(storage.dir.join(EVENTS_FILE).exists());
        assert!(storage.dir.join(METRICS_FILE).exists());
        let staged = std::fs::read_dir(storage.dir.join(EXPORTS_DIR)).unwrap();
        assert_eq!(staged.count(), 0);
        let exported = stores.export(ExportKind::Metrics).await.unwrap().unwrap();
        assert!(exported.len > 0);
        assert_eq!(
            exported.file.metadata().await.unwrap().len(),
            exported.len,
            "the unlinked copy is still readable"
        );
    }
}
