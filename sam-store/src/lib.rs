//! # sam-store
//!
//! Durable state for the SAM SDK: backends of [`sam_core::Store`], plus the event
//! log and metrics store the VM agent keeps.
//!
//! - [`MemoryStore`]: everything in memory behind one lock; always compiled.
//! - [`SqliteStore`] (feature `sqlite`): the embedded default, one SQLite file in WAL
//!   mode with `synchronous=NORMAL`, a busy timeout and a single writer connection,
//!   so callers never see `SQLITE_BUSY`.
//! - [`PgStore`] (feature `postgres`): PostgreSQL, for several control-plane processes
//!   sharing one database; claims use `FOR UPDATE SKIP LOCKED`.
//! - [`EventLog`] and [`MetricsStore`] (feature `sqlite`): append-only SQLite files
//!   with retention pruned while they run, `checkpoint()` and export.
//!
//! Both SQL backends are one [`SqlStore`] over a dialect, with runtime queries (no
//! compile-time macros) and embedded migrations per dialect. Opening a store
//! migrates it; a database written by a newer build is [`Error::SchemaTooNew`],
//! never silently downgraded. Every backend passes the conformance suite of
//! `sam_core::testkit::store`.
//!
//! Errors are one [`Error`] enum, classified once from SQLite result codes and
//! PostgreSQL SQLSTATEs, and converted into [`sam_core::StoreError`] at the trait.
//!
//! ## Features
//! - `sqlite` (default): [`SqliteStore`], [`EventLog`], [`MetricsStore`].
//! - `postgres` (default): [`PgStore`].
//!
//! ## Example
//! Submit a task, then lease it the way a task runner's driver does:
//! ```
//! use std::time::Duration;
//!
//! use chrono::{TimeZone, Utc};
//! use sam_core::{
//!     ExecutionStep, Layer, LeaseRequest, ProviderKind, RequirementLayers, TaskId, TaskRecord,
//!     TaskSpec, TaskStatus, TaskStore, VmSize, resolve_reservation,
//! };
//! use sam_store::MemoryStore;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), sam_core::StoreError> {
//! let store = MemoryStore::new();
//! let now = Utc.with_ymd_and_hms(2025, 1, 1, 12, 0, 0).unwrap();
//! let requirements = RequirementLayers::default();
//! let task = TaskRecord {
//!     id: TaskId::new("task-1").unwrap(),
//!     status: TaskStatus::Queued,
//!     execution_step: ExecutionStep::NodeSelection,
//!     spec: TaskSpec {
//!         repo: "https://example.invalid/repo.git".into(),
//!         branch: None,
//!         prompt: "fix the flaky test".into(),
//!         agent: "claude".into(),
//!         workspace_profile: None,
//!         devcontainer: None,
//!         preferred_node: None,
//!         provenance: Default::default(),
//!         ..TaskSpec::default()
//!     },
//!     provider: ProviderKind::Hetzner,
//!     requested_size: VmSize::Medium,
//!     size_source: Layer::Platform,
//!     requested_location: None,
//!     location_source: Layer::Platform,
//!     reservation: resolve_reservation(&requirements).unwrap(),
//!     requirements,
//!     placement: None,
//!     provisioned_node_id: None,
//!     provisioned_size: None,
//!     provisioned_location: None,
//!     workspace_id: None,
//!     next_wake_at: Some(now),
//!     lease_owner: None,
//!     lease_expires_at: None,
//!     lease_epoch: 0,
//!     provisioning_started_at: None,
//!     capacity_passes: 0,
//!     node_replacements: 0,
//!     output: None,
//!     step_started_at: now,
//!     error: None,
//!     created_at: now,
//!     updated_at: now,
//! };
//! store.create_task(&task).await?;
//!
//! // Two drivers ask for due work: only the first gets the task while its lease holds.
//! let lease = |owner: &str| LeaseRequest {
//!     owner: owner.into(),
//!     now,
//!     lease: Duration::from_secs(30),
//!     limit: 10,
//!     except: Vec::new(),
//! };
//! assert_eq!(store.claim_due_tasks(&lease("driver-a")).await?.len(), 1);
//! assert!(store.claim_due_tasks(&lease("driver-b")).await?.is_empty());
//!
//! // Writing the same step again is not a change: `updated_at` stays honest.
//! assert!(!store.set_execution_step(&task.id, ExecutionStep::NodeSelection, now).await?);
//! # Ok(())
//! # }
//! ```

mod error;
#[cfg(feature = "sqlite")]
mod eventlog;
mod memory;
#[cfg(feature = "sqlite")]
mod metrics;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "sqlite")]
mod retention;
#[cfg(feature = "_sql")]
pub mod sql;
#[cfg(feature = "sqlite")]
mod sqlite;
mod task;

pub use error::{Error, Result};
#[cfg(feature = "sqlite")]
pub use eventlog::{Event, EventCursor, EventLevel, EventLog, EventPage, EventQuery, LoggedEvent};
pub use memory::MemoryStore;
#[cfg(feature = "sqlite")]
pub use metrics::{MetricsSnapshot, MetricsStore};
#[cfg(feature = "postgres")]
pub use postgres::{PgConfig, PgStore};
#[cfg(feature = "sqlite")]
pub use retention::RetentionConfig;
#[cfg(feature = "_sql")]
pub use sql::SqlStore;
#[cfg(feature = "sqlite")]
pub use sqlite::{SqliteConfig, SqliteStore};
