//! The bookkeeping of [`ControlPlane::run`](crate::ControlPlane::run): which tasks
//! have a step under way in this process, when to ask the store for more, and which
//! leased tasks to drive. Pure, so every ordering of its events is tested.
//!
//! A claim runs beside the steps under way, and the store's `claim_due_tasks` also
//! returns due tasks whose lease is the caller's own. So each claim names the tasks
//! under way as exceptions: otherwise they would fill its limit, and come back as
//! records read before their step ended, and driving such a stale record runs a
//! finished step again (places a task a second time, on another node). A step ends
//! (its result written) before the pipeline hears of it, so a claim that starts
//! after that reads the task afresh.

use std::collections::HashSet;
use std::time::Duration;

use tokio::time::Instant;

use crate::model::TaskId;

#[cfg(test)]
mod tests;

/// What a claim asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Claim {
    /// At most this many tasks: the free slots.
    pub(super) limit: usize,
    /// The tasks under way here, to leave out.
    pub(super) except: Vec<TaskId>,
}

/// See the [module docs](self).
#[derive(Debug)]
pub(super) struct Pipeline {
    /// Steps under way at once, at most.
    limit: usize,
    /// How long to wait after a claim that found nothing.
    poll: Duration,
    /// Tasks with a step under way here.
    driving: HashSet<TaskId>,
    /// Whether a claim is out.
    claiming: bool,
    /// Whether a step ended (freeing a slot) while the claim was out.
    freed_meanwhile: bool,
    /// When the next claim may start.
    claim_at: Instant,
}

impl Pipeline {
    /// Nothing under way; the first claim may start at `now`.
    pub(super) fn new(limit: usize, poll: Duration, now: Instant) -> Self {
        Self {
            limit,
            poll,
            driving: HashSet::new(),
            claiming: false,
            freed_meanwhile: false,
            claim_at: now,
        }
    }

    /// When a claim may start: `None` while one is out or every slot is busy.
    pub(super) fn next_claim(&self) -> Option<Instant> {
        (!self.claiming && self.driving.len() < self.limit).then_some(self.claim_at)
    }

    /// Starts a claim if one may start at `now`: returns what to ask for.
    pub(super) fn start_claim(&mut self, now: Instant) -> Option<Claim> {
        let at = self.next_claim()?;
        if now < at {
            return None;
        }
        self.claiming = true;
        Some(Claim {
            limit: self.limit - self.driving.len(),
            except: self.driving.iter().cloned().collect(),
        })
    }

    /// The claim returned `tasks` (each named by `id`): returns those to drive, now
    /// counted as under way.
    pub(super) fn claimed<T>(
        &mut self,
        tasks: Vec<T>,
        id: impl Fn(&T) -> &TaskId,
        now: Instant,
    ) -> Vec<T> {
        self.claiming = false;
        // The claim left out what was under way when it started, and only one claim
        // is out at a time: nothing it returns is under way. Were a store to break
        // that, the task's lease runs out (it is driven later) rather than it being
        // driven twice at once.
        let drive: Vec<T> = tasks
            .into_iter()
            .filter(|t| !self.driving.contains(id(t)))
            .collect();
        self.driving.extend(drive.iter().map(|t| id(t).clone()));
        // Work found, or slots freed while the claim was out (it asked for fewer):
        // look again at once. Otherwise wait a poll.
        let again = !drive.is_empty() || std::mem::take(&mut self.freed_meanwhile);
        self.claim_at = if again { now } else { now + self.poll };
        drive
    }

    /// The claim failed: try again after a poll.
    pub(super) fn claim_failed(&mut self, now: Instant) {
        self.claiming = false;
        self.freed_meanwhile = false;
        self.claim_at = now + self.poll;
    }

    /// A step of `id` ended (its result written, its lease released): its slot is
    /// free, and the task may be due again at once.
    pub(super) fn drove(&mut self, id: &TaskId, now: Instant) {
        self.driving.remove(id);
        self.freed_meanwhile |= self.claiming;
        self.claim_at = now;
    }
}
