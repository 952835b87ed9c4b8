//! [`SqliteStore`]: the embedded default backend, one SQLite file in WAL mode.
//!
//! Every write goes through a single writer connection, and write transactions
//! take the write lock when they begin (`BEGIN IMMEDIATE`), so callers in this
//! process never see `SQLITE_BUSY`; other processes on the same file wait up to the
//! busy timeout for the lock. Reads run on a small pool of reader connections,
//! which WAL lets proceed alongside the writer.

use std::path::{Path, PathBuf};
use std::time::Duration;

use sam_core::{Classify, ErrorCategory, RetryError, RetryOn, RetryPolicy, StoreErrorKind, retry};
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{AnyConnection, AnyPool, AssertSqlSafe, ConnectOptions, Connection, Executor};

use crate::error::{Dialect, Error, is_sqlite_busy};
use crate::sql::{self, Migration, Schema, SqlStore};

/// The SQLite [`sam_core::Store`] backend; open it with [`SqliteStore::new`].
pub type SqliteStore = SqlStore<sql::Sqlite>;

/// Settings of a SQLite database file.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
pub struct SqliteConfig {
    /// The database file; created readable by its owner only (0600) if missing.
    pub path: PathBuf,
    /// How long a write waits for another process's lock before failing.
    #[serde(default = "default_busy_timeout", with = "millis")]
    pub busy_timeout: Duration,
    /// Reader connections besides the single writer.
    #[serde(default = "default_readers")]
    pub readers: u32,
}

fn default_busy_timeout() -> Duration {
    Duration::from_secs(5)
}

fn default_readers() -> u32 {
    4
}

/// `busy_timeout` is written in milliseconds.
mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

impl SqliteConfig {
    /// A file at `path`, with a 5 s busy timeout and 4 readers.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            busy_timeout: default_busy_timeout(),
            readers: default_readers(),
        }
    }
}

const STORE_SCHEMA: Schema = Schema {
    table: "sam_store_migrations",
    migrations: &[
        Migration {
            version: 1,
            sql: include_str!("../migrations/sqlite/0001_initial.sql"),
        },
        Migration {
            version: 2,
            sql: include_str!("../migrations/sqlite/0002_github.sql"),
        },
        Migration {
            version: 3,
            sql: include_str!("../migrations/sqlite/0003_projects.sql"),
        },
        Migration {
            version: 4,
            sql: include_str!("../migrations/sqlite/0004_node_owner.sql"),
        },
        Migration {
            version: 5,
            sql: include_str!("../migrations/sqlite/0005_status_trigger.sql"),
        },
        Migration {
            version: 6,
            sql: include_str!("../migrations/sqlite/0006_api_token_records.sql"),
        },
        Migration {
            version: 7,
            sql: include_str!("../migrations/sqlite/0007_node_boot.sql"),
        },
        Migration {
            version: 8,
            sql: include_str!("../migrations/sqlite/0008_lease_epoch.sql"),
        },
        Migration {
            version: 9,
            sql: include_str!("../migrations/sqlite/0009_task_notices.sql"),
        },
        Migration {
            version: 10,
            sql: include_str!("../migrations/sqlite/0010_keys.sql"),
        },
        Migration {
            version: 11,
            sql: include_str!("../migrations/sqlite/0011_task_events.sql"),
        },
        Migration {
            version: 12,
            sql: include_str!("../migrations/sqlite/0012_setup_choices.sql"),
        },
    ],
};

impl SqlStore<sql::Sqlite> {
    /// Opens (creating if needed) and migrates the database file.
    ///
    /// # Errors
    /// [`Error::Corrupt`] naming the file when it is not a SQLite database;
    /// [`Error::SchemaTooNew`] when a newer build wrote it; other database errors.
    pub async fn new(config: &SqliteConfig) -> Result<Self, Error> {
        let (writer, reader) = open(config, &STORE_SCHEMA).await?;
        Ok(Self::from_pools(
            writer,
            reader,
            config.path.display().to_string(),
        ))
    }
}

/// Opens the writer and reader pools of a SQLite file and migrates it to `schema`.
pub(crate) async fn open(
    config: &SqliteConfig,
    schema: &Schema,
) -> Result<(AnyPool, AnyPool), Error> {
    let path = &config.path;
    let named = |e: Error| match e.kind() {
        StoreErrorKind::Corrupt => Error::Corrupt {
            path: path.clone(),
            source: Box::new(e),
        },
        _ => e,
    };
    make_private(path).map_err(|e| Error::Io {
        path: path.clone(),
        source: e,
    })?;
    let writer = pool(config, 1).await.map_err(named)?;
    sql::migrate(&writer, Dialect::Sqlite, "BEGIN IMMEDIATE", None, schema)
        .await
        .map_err(named)?;
    let reader = pool(config, config.readers.max(1)).await.map_err(named)?;
    Ok((writer, reader))
}

/// Creates the database file readable and writable by its owner only (0600) when it
/// is missing, and narrows an existing one and its `-wal` and `-shm` files to 0600.
/// SQLite creates the files beside a database with the database's own mode, so they
/// stay private too.
fn make_private(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    // An empty file is an empty database to SQLite.
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)?;
    for suffix in ["", "-wal", "-shm"] {
        let mut file = path.as_os_str().to_owned();
        file.push(suffix);
        match std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

async fn pool(config: &SqliteConfig, connections: u32) -> Result<AnyPool, Error> {
    sqlx::any::install_default_drivers();
    let context = || format!("opening {}", config.path.display());
    let url = SqliteConnectOptions::new()
        .filename(&config.path)
        .create_if_missing(true)
        .to_url_lossy();
    let options = AnyConnectOptions::from_url(&url)
        .map_err(|e| Error::database(Dialect::Sqlite, context(), e))?;
    let pragmas = format!(
        "PRAGMA busy_timeout = {}; PRAGMA journal_mode = WAL; \
         PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;",
        config.busy_timeout.as_millis()
    );
    // One connection first, so an unusable file fails at once with its own error,
    // rather than as a pool timeout after the pool has retried it. It also switches
    // the file into WAL, which takes a read lock and then upgrades it to a write lock;
    // SQLite answers that upgrade with SQLITE_BUSY at once, without waiting in its busy
    // handler, when another connection holds a read lock meanwhile (two stores opening
    // one fresh file). The probe is retried on that answer only, for as long as the
    // busy handler would have waited (at least a second).
    let policy = RetryPolicy {
        initial_delay: Duration::from_millis(5),
        max_delay: Duration::from_millis(100),
        max_attempts: u32::MAX,
        budget: config.busy_timeout.max(Duration::from_secs(1)),
        jitter: 0.5,
        per_attempt_timeout: None,
        retry_on: RetryOn::Retryable,
    };
    retry(&policy, || async {
        let mut probe = AnyConnection::connect_with(&options).await.map_err(Probe)?;
        probe
            .execute(sqlx::raw_sql(AssertSqlSafe(pragmas.clone())))
            .await
            .map_err(Probe)?;
        probe.close().await.map_err(Probe)
    })
    .await
    .map_err(|e| match e {
        RetryError::Failed(Probe(e)) => Error::database(Dialect::Sqlite, context(), e),
        RetryError::TimedOut { timeout, .. } => Error::database(
            Dialect::Sqlite,
            format!("{}: the file stayed locked for {timeout:?}", context()),
            sqlx::Error::PoolTimedOut,
        ),
    })?;
    AnyPoolOptions::new()
        .max_connections(connections)
        // sqlx pings an idle connection on every acquire to find one its peer hung up.
        // A SQLite connection is a file handle in this process with no peer, so the
        // ping only costs a round trip to the connection's thread per store call.
        .test_before_acquire(false)
        .after_connect(move |conn, _| {
            let pragmas = pragmas.clone();
            Box::pin(async move {
                conn.execute(sqlx::raw_sql(AssertSqlSafe(pragmas))).await?;
                Ok(())
            })
        })
        .connect_with(options)
        .await
        .map_err(|e| Error::database(Dialect::Sqlite, context(), e))
}

/// A failed attempt at the probe connection; only a busy lock is worth another.
#[derive(Debug)]
struct Probe(sqlx::Error);

impl Classify for Probe {
    fn category(&self) -> ErrorCategory {
        if is_sqlite_busy(&self.0) {
            ErrorCategory::Conflict
        } else {
            // Not retried: reported as it is, classified by `Error::database`.
            ErrorCategory::Unknown
        }
    }
}

#[cfg(test)]
pub(crate) mod conformance {
    use sam_core::Store;
    use sam_core::testkit::store::UnderTest;

    use super::{SqliteConfig, SqliteStore};

    /// A store on a fresh file in a temporary directory removed with it.
    #[derive(Debug)]
    pub(crate) struct Fresh {
        pub(crate) store: SqliteStore,
        pub(crate) _dir: tempfile::TempDir,
    }

    impl UnderTest for Fresh {
        fn store(&self) -> &dyn Store {
            &self.store
        }
    }

    pub(crate) async fn fresh() -> Fresh {
        let dir = tempfile::tempdir().expect("temporary directory");
        let store = SqliteStore::new(&SqliteConfig::new(dir.path().join("store.db")))
            .await
            .expect("open a fresh SQLite store");
        Fresh { store, _dir: dir }
    }

    sam_core::store_conformance!(fresh());
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use sam_core::TaskStore as _;

    use super::{SqliteConfig, SqliteStore};

    fn mode(path: &std::path::Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    /// The database and the files SQLite keeps beside it hold tokens' hashes and
    /// sealed credentials: readable by their owner only, new or inherited.
    #[tokio::test]
    async fn the_database_and_its_wal_are_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sam.db");
        let store = SqliteStore::new(&SqliteConfig::new(&path)).await.unwrap();
        // A write, so the WAL and shared-memory files exist.
        store.list_tasks(&Default::default()).await.unwrap();
        for suffix in ["", "-wal", "-shm"] {
            // In WAL mode all three exist while a connection is open.
            let file = dir.path().join(format!("sam.db{suffix}"));
            assert_eq!(mode(&file), 0o600, "{}", file.display());
        }
        drop(store);

        // A database an older build left world-readable is narrowed when opened.
        for suffix in ["", "-wal", "-shm"] {
            let file = dir.path().join(format!("sam.db{suffix}"));
            if file.exists() {
                std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
            }
        }
        let _store = SqliteStore::new(&SqliteConfig::new(&path)).await.unwrap();
        assert_eq!(mode(&path), 0o600);
        for suffix in ["-wal", "-shm"] {
            let file = dir.path().join(format!("sam.db{suffix}"));
            if file.exists() {
                assert_eq!(mode(&file), 0o600, "{}", file.display());
            }
        }
    }
}
