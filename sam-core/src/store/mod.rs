//! The store traits: [`TaskStore`], [`FleetStore`] and [`AccountStore`], one per
//! concern, joined by [`Store`], which every backend implements and the control
//! plane holds as `Arc<dyn Store>`.
//!
//! The records they keep are in [`crate::record`] (and the account modules);
//! they are re-exported here so that `store::TaskRecord` names them as well.
//! A wrapper around a store forwards what it does not change with
//! [`delegate_store!`](crate::delegate_store).

mod accounts;
mod delegate;
mod fleet;
#[cfg(feature = "mock")]
mod mock;
mod tasks;

pub use accounts::AccountStore;
#[doc(hidden)]
pub use delegate::__private;
pub use fleet::FleetStore;
#[cfg(feature = "mock")]
pub use mock::MockStore;
pub use tasks::TaskStore;

pub use crate::api_token::ApiTokenRecord;
pub use crate::record::{
    KeyPurpose, KeyRecord, Lease, LeaseRelease, LeaseReleased, LeaseRequest, LeasedOutcome,
    LeasedWrite, Lineage, LineageKind, NodeBeat, NodeFilter, NodeRecord, PlacementCandidate,
    SlotOutcome, StatusEvent, TaskError, TaskEvent, TaskEventKind, TaskFilter, TaskRecord,
    TaskSpec, TaskUpdate, TranscriptQuery, Transition, WarmClaim, WorkspaceRecord, WorkspaceStatus,
};

/// Durable state of the control plane: [`TaskStore`], [`FleetStore`] and
/// [`AccountStore`] over one database.
///
/// Every type that implements the three implements `Store`; code that drives the
/// control plane takes `Arc<dyn Store>` and calls the methods of all three on it.
/// Code that holds a concrete store (a `MemoryStore`, an `Arc<SqliteStore>`) imports
/// the trait of the method it calls, as for any trait method.
/// The three share one state and are one backend's job: a leased write
/// ([`TaskStore::write_leased`]) writes node rows too, placement
/// ([`FleetStore::list_placement_candidates`]) reads the task a node is held for,
/// and deleting a project deletes its credentials.
///
/// # Contract
/// Every backend guarantees, for the methods of all three traits (each trait's own
/// `# Contract` lists the rest):
/// - **Reads of missing rows are `Ok(None)`**; updates of missing rows are
///   `StoreErrorKind::NotFound`; creating an existing id is `AlreadyExists`.
/// - **Deletes are idempotent**: deleting a missing row succeeds.
/// - **Bad stored data is a typed error** (`InvalidData`), never a panic.
/// - **Timestamps round-trip to the microsecond**; finer precision may be dropped.
pub trait Store: TaskStore + FleetStore + AccountStore {}

impl<S: TaskStore + FleetStore + AccountStore + ?Sized> Store for S {}

/// Whether a store method only reads, or may write; what [`delegate_store!`]
/// tells a wrapper about each call.
///
/// [`delegate_store!`]: crate::delegate_store
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StoreAccess {
    /// The method only reads (`get_*`, `list_*`, `find_*`).
    Read,
    /// The method may write: on the SQL stores, one write transaction.
    Write,
}
