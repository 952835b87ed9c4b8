//! The checks every backend applies to task writes before touching storage.

use chrono::{DateTime, Utc};
use sam_core::{LeaseRequest, Transition};

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
