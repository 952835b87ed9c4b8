//! The records the store keeps, and the requests and filters that read and change
//! them: plain data, below the [`crate::store`] traits that persist them and the
//! policies that decide over them.
//!
//! - [`task`]: [`TaskRecord`] and what it is submitted with ([`TaskSpec`]), changed
//!   by ([`Transition`], [`TaskUpdate`]), leased with ([`LeaseRequest`], [`Lease`],
//!   [`LeaseRelease`], [`LeasedWrite`]), and the [`PlacementExplanation`] it keeps.
//! - [`event`]: the task's transcript ([`TaskEvent`], [`TaskEventKind`]).
//! - [`fleet`]: [`NodeRecord`], its signs of life ([`NodeBeat`]), warm claims
//!   ([`WarmClaim`]), [`WorkspaceRecord`] and the slot it holds ([`SlotOutcome`]), and
//!   a node as placement judges it ([`PlacementCandidate`]).
//! - [`key`]: the sealed keys control planes share ([`KeyRecord`]).
//!
//! The records of accounts live with their own rules: users, projects and agent
//! profiles in [`crate::project`], credentials in [`crate::credential`], GitHub
//! installations in [`crate::github`], API tokens in [`crate::api_token`].

pub mod event;
pub mod fleet;
pub mod key;
pub mod task;

pub use event::{TaskEvent, TaskEventKind, TranscriptQuery};
pub use fleet::{
    NodeBeat, NodeFilter, NodeRecord, PlacementCandidate, SlotOutcome, WarmClaim, WorkspaceRecord,
    WorkspaceStatus,
};
pub use key::{KeyPurpose, KeyRecord};
pub use task::{
    Lease, LeaseRelease, LeaseReleased, LeaseRequest, LeasedOutcome, LeasedWrite, Lineage,
    LineageKind, PlacementExplanation, Rejected, StatusEvent, TaskError, TaskFilter, TaskRecord,
    TaskSpec, TaskUpdate, Transition,
};
