//! The crate's error type and the one place where database errors are classified.

use std::path::PathBuf;

use sam_core::{BoxError, Classify, ErrorCategory, StoreError, StoreErrorKind};

/// A failed store, event log or metrics operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A row that must exist does not.
    #[error("{what} does not exist")]
    NotFound {
        /// The missing row, e.g. `task t-1`.
        what: String,
    },
    /// A row with the same key exists already.
    #[error("{what} exists already")]
    AlreadyExists {
        /// The existing row, e.g. `task t-1`.
        what: String,
    },
    /// The caller passed a value the store cannot hold or a change it forbids.
    #[error("invalid {what}: {reason}")]
    InvalidInput {
        /// The rejected value.
        what: String,
        /// Why.
        reason: String,
    },
    /// A write under a lease the writer no longer holds.
    #[error("{held} is lost: the task's lease is {found}; nothing was written")]
    LeaseLost {
        /// The lease the writer gave.
        held: String,
        /// The lease the row has.
        found: String,
    },
    /// A stored value could not be decoded (bad JSON, an unknown enum name).
    #[error("stored {what} cannot be decoded: {source}")]
    InvalidData {
        /// The value, e.g. `tasks.spec of t-1`.
        what: String,
        /// The decoding error.
        #[source]
        source: BoxError,
    },
    /// The file at `path` is not a SQLite database, or is damaged.
    #[error("{} is not a SQLite database or is damaged; move it away or restore a backup", path.display())]
    Corrupt {
        /// The database file.
        path: PathBuf,
        /// The driver's error.
        #[source]
        source: BoxError,
    },
    /// The database was written by a newer version of this crate.
    #[error(
        "the database schema is at version {found}, newer than version {supported} that this \
         build of sam-store knows; upgrade sam-store instead of downgrading the database"
    )]
    SchemaTooNew {
        /// The version recorded in the database.
        found: i64,
        /// The newest version this build knows.
        supported: i64,
    },
    /// A migration this build carries is not the one that was applied to the
    /// database: its SQL was edited after it ran.
    #[error(
        "migration {version} ({description}) recorded in {table} was applied with other SQL \
         than this build carries; restore the migration's original text and put the change \
         in a new migration"
    )]
    MigrationEdited {
        /// The table that records the migrations.
        table: String,
        /// The edited migration's version.
        version: i64,
        /// Its description (the first line of its comment).
        description: String,
    },
    /// A file could not be read or written.
    #[error("cannot access {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The database failed; `kind` is its classification.
    #[cfg(feature = "_sql")]
    #[error("database error ({kind:?}) while {context}: {source}")]
    Database {
        /// What the error means for the caller.
        kind: StoreErrorKind,
        /// What the store was doing.
        context: String,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// What went wrong, in the vocabulary of [`sam_core::Store`].
    pub fn kind(&self) -> StoreErrorKind {
        match self {
            Self::NotFound { .. } => StoreErrorKind::NotFound,
            Self::AlreadyExists { .. } => StoreErrorKind::AlreadyExists,
            Self::InvalidInput { .. } => StoreErrorKind::InvalidInput,
            Self::LeaseLost { .. } => StoreErrorKind::LeaseLost,
            Self::InvalidData { .. } => StoreErrorKind::InvalidData,
            Self::Corrupt { .. } => StoreErrorKind::Corrupt,
            Self::SchemaTooNew { .. } => StoreErrorKind::SchemaTooNew,
            // The record of what ran disagrees with this build, like a damaged value.
            Self::MigrationEdited { .. } => StoreErrorKind::InvalidData,
            Self::Io { .. } => StoreErrorKind::Backend,
            #[cfg(feature = "_sql")]
            Self::Database { kind, .. } => *kind,
        }
    }

    /// Whether the same call may succeed later.
    pub fn is_retryable(&self) -> bool {
        self.category().is_retryable()
    }

    pub(crate) fn not_found(what: impl std::fmt::Display) -> Self {
        Self::NotFound {
            what: what.to_string(),
        }
    }

    pub(crate) fn already_exists(what: impl std::fmt::Display) -> Self {
        Self::AlreadyExists {
            what: what.to_string(),
        }
    }

    #[cfg(feature = "_sql")]
    pub(crate) fn invalid_data(what: impl std::fmt::Display, source: impl Into<BoxError>) -> Self {
        Self::InvalidData {
            what: what.to_string(),
            source: source.into(),
        }
    }
}

impl Classify for Error {
    fn category(&self) -> ErrorCategory {
        // The kind-to-category table lives in sam-core, next to `StoreErrorKind`.
        StoreError::new(self.kind(), String::new()).category()
    }
}

impl From<Error> for StoreError {
    fn from(error: Error) -> Self {
        StoreError::new(error.kind(), error.to_string()).with_source(error)
    }
}

/// Which SQL dialect produced an error code.
#[cfg(feature = "_sql")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    Sqlite,
    Postgres,
}

/// Classifies a database error code: a SQLite (extended) result code or a PostgreSQL
/// SQLSTATE. This match, and [`is_sqlite_busy`] for the one code the SQLite open
/// retries on, are the only places codes are interpreted.
#[cfg(feature = "_sql")]
pub(crate) fn kind_of_code(dialect: Dialect, code: &str) -> StoreErrorKind {
    match dialect {
        Dialect::Sqlite => match sqlite_primary(code).unwrap_or(-1) {
            19 => StoreErrorKind::AlreadyExists, // SQLITE_CONSTRAINT
            5 | 6 | 10 | 13 | 14 => StoreErrorKind::Unavailable, // BUSY, LOCKED, IOERR, FULL, CANTOPEN
            11 | 26 => StoreErrorKind::Corrupt,                  // SQLITE_CORRUPT, SQLITE_NOTADB
            20 | 25 => StoreErrorKind::InvalidInput,             // SQLITE_MISMATCH, SQLITE_RANGE
            _ => StoreErrorKind::Backend,
        },
        Dialect::Postgres => match code {
            // integrity_constraint_violation: unique, foreign key, check, not null.
            c if c.starts_with("23") => StoreErrorKind::AlreadyExists,
            // serialization_failure, deadlock_detected, lock_not_available, query_canceled.
            "40001" | "40P01" | "55P03" | "57014" => StoreErrorKind::Unavailable,
            // connection_exception, insufficient_resources, operator_intervention.
            c if c.starts_with("08") || c.starts_with("53") || c.starts_with("57") => {
                StoreErrorKind::Unavailable
            }
            // data_exception: a value out of range or of the wrong shape.
            c if c.starts_with("22") => StoreErrorKind::InvalidInput,
            "XX001" | "XX002" => StoreErrorKind::Corrupt,
            _ => StoreErrorKind::Backend,
        },
    }
}

/// Whether a SQLite error is `SQLITE_BUSY` (any extended form): another connection
/// holds a lock this one needs, so the same statement may succeed once it lets go.
#[cfg(feature = "_sql")]
pub(crate) fn is_sqlite_busy(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(db) => db.code().and_then(|code| sqlite_primary(&code)) == Some(5),
        _ => false,
    }
}

/// The primary result code of a SQLite (extended) result code: extended codes carry
/// it in their low byte.
#[cfg(feature = "_sql")]
fn sqlite_primary(code: &str) -> Option<i64> {
    code.parse::<i64>().ok().map(|c| c & 0xff)
}

/// Classifies any driver error, delegating database errors to [`kind_of_code`].
#[cfg(feature = "_sql")]
pub(crate) fn kind_of(dialect: Dialect, error: &sqlx::Error) -> StoreErrorKind {
    match error {
        sqlx::Error::Database(db) => db
            .code()
            .map_or(StoreErrorKind::Backend, |code| kind_of_code(dialect, &code)),
        sqlx::Error::RowNotFound => StoreErrorKind::NotFound,
        sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) => StoreErrorKind::InvalidData,
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => StoreErrorKind::Unavailable,
        _ => StoreErrorKind::Backend,
    }
}

#[cfg(feature = "_sql")]
impl Error {
    /// Wraps a driver error, classifying it once.
    pub(crate) fn database(
        dialect: Dialect,
        context: impl Into<String>,
        source: sqlx::Error,
    ) -> Self {
        Self::Database {
            kind: kind_of(dialect, &source),
            context: context.into(),
            source,
        }
    }
}

#[cfg(all(test, feature = "_sql"))]
mod tests {
    use super::*;

    fn check(dialect: Dialect, code: &str, expected: StoreErrorKind) {
        assert_eq!(
            kind_of_code(dialect, code),
            expected,
            "{dialect:?} code {code}"
        );
    }

    #[test]
    fn database_codes_are_classified() {
        use Dialect::{Postgres, Sqlite};
        use StoreErrorKind::*;
        let table = [
            (Sqlite, "2067", AlreadyExists), // SQLITE_CONSTRAINT_UNIQUE
            (Sqlite, "1555", AlreadyExists), // SQLITE_CONSTRAINT_PRIMARYKEY
            (Sqlite, "5", Unavailable),      // SQLITE_BUSY
            (Sqlite, "517", Unavailable),    // SQLITE_BUSY_SNAPSHOT
            (Sqlite, "6", Unavailable),      // SQLITE_LOCKED
            (Sqlite, "11", Corrupt),         // SQLITE_CORRUPT
            (Sqlite, "26", Corrupt),         // SQLITE_NOTADB
            (Sqlite, "1", Backend),          // SQLITE_ERROR
            (Sqlite, "not a number", Backend),
            (Postgres, "23505", AlreadyExists),
            (Postgres, "23503", AlreadyExists),
            (Postgres, "40001", Unavailable),
            (Postgres, "40P01", Unavailable),
            (Postgres, "08006", Unavailable),
            (Postgres, "53300", Unavailable),
            (Postgres, "57P01", Unavailable),
            (Postgres, "22P02", InvalidInput),
            (Postgres, "XX001", Corrupt),
            (Postgres, "42P01", Backend),
            (Postgres, "3F000", Backend),
        ];
        for (dialect, code, expected) in table {
            check(dialect, code, expected);
        }
    }

    #[test]
    fn driver_errors_are_classified() {
        let kind = |e: sqlx::Error| kind_of(Dialect::Sqlite, &e);
        assert_eq!(kind(sqlx::Error::PoolTimedOut), StoreErrorKind::Unavailable);
        assert_eq!(kind(sqlx::Error::RowNotFound), StoreErrorKind::NotFound);
        assert_eq!(
            kind(sqlx::Error::Protocol("eof".into())),
            StoreErrorKind::Unavailable
        );
        assert_eq!(
            kind(sqlx::Error::Decode("bad".into())),
            StoreErrorKind::InvalidData
        );
    }

    #[test]
    fn errors_keep_their_kind_through_store_error() {
        let e: StoreError = Error::not_found("task t-1").into();
        assert_eq!(e.kind(), StoreErrorKind::NotFound);
        assert!(e.message().contains("task t-1"));
        let e = Error::SchemaTooNew {
            found: 9,
            supported: 1,
        };
        assert_eq!(e.kind(), StoreErrorKind::SchemaTooNew);
        assert!(!e.is_retryable());
        assert!(e.to_string().contains("version 9"));
    }
}
