//! The checks every backend applies to task writes before touching storage.

use chrono::{DateTime, Utc};
use sam_core::{Lease, LeaseRequest, LeasedWrite, TaskRecord, Transition};

use crate::error::Error;

/// The actor of the status event that `create_task` records.
pub(crate) const SUBMISSION_ACTOR: &str = "submit";

/// Rejects a move [`sam_core::TaskStatus::can_transition_to`] forbids.
pub(crate) fn check_transition(change: &Transition) -> Result<(), Error> {
    if change.from.can_transition_to(change.to) {
        Ok(())
    } else {
        Err(Error::InvalidInput {
            what: "task transition".into(),
            reason: format!("a task cannot move from {} to {}", change.from, change.to),
        })
    }
}

/// When a lease granted now ends.
pub(crate) fn lease_until(request: &LeaseRequest) -> Result<DateTime<Utc>, Error> {
    chrono::Duration::from_std(request.lease)
        .ok()
        .and_then(|lease| request.now.checked_add_signed(lease))
        .ok_or_else(|| Error::InvalidInput {
            what: "lease".into(),
            reason: format!("{:?} from {} is out of range", request.lease, request.now),
        })
}

/// Checks that `lease` still holds `task` at `at`: the same owner and epoch, and
/// not expired. The error names both leases, so a refused write says why.
pub(crate) fn check_lease(
    task: &LeaseState<'_>,
    lease: &Lease,
    at: DateTime<Utc>,
) -> Result<(), Error> {
    let held = task.owner == Some(lease.owner.as_str())
        && task.epoch == lease.epoch
        && task.expires_at.is_some_and(|until| until > at);
    if held {
        return Ok(());
    }
    let found = match (task.owner, task.expires_at) {
        (None, _) => format!("free (epoch {})", task.epoch),
        (Some(owner), Some(until)) if until <= at => {
            format!("{owner}'s (epoch {}), expired at {until}", task.epoch)
        }
        (Some(owner), _) => format!("{owner}'s (epoch {})", task.epoch),
    };
    Err(Error::LeaseLost {
        held: lease.to_string(),
        found,
    })
}

/// The lease columns of a task row, as [`check_lease`] reads them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LeaseState<'a> {
    pub(crate) owner: Option<&'a str>,
    pub(crate) epoch: u64,
    pub(crate) expires_at: Option<DateTime<Utc>>,
}

impl<'a> LeaseState<'a> {
    pub(crate) fn of(task: &'a TaskRecord) -> Self {
        Self {
            owner: task.lease_owner.as_deref(),
            epoch: task.lease_epoch,
            expires_at: task.lease_expires_at,
        }
    }
}

/// Rejects a batch of leased writes holding a forbidden transition, before any of
/// them is written.
pub(crate) fn check_leased_writes(writes: &[LeasedWrite]) -> Result<(), Error> {
    for write in writes {
        if let LeasedWrite::Transition(change) = write {
            check_transition(change)?;
        }
    }
    Ok(())
}
