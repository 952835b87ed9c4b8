//! [`FleetView`]: what [`DefaultScheduler`](super::DefaultScheduler) remembers of one
//! provider's fleet between decisions.
//!
//! A view is a [`FleetIndex`] built from one bulk read
//! ([`Store::list_placement_candidates`](crate::store::Store::list_placement_candidates)),
//! the nodes that read found held for a task, and the reservations the scheduler has
//! handed out since and the store does not show yet. It is plain data with no IO: the
//! scheduler reads, then applies what it read here. It only ever *proposes* a node;
//! the scheduler checks the proposal against the store before it returns it.

use std::fmt;

use chrono::{DateTime, Utc};
use foldhash::HashMap;

use crate::model::{NodeId, NodeLifecycle, NodeStatus, ProviderKind, TaskId, WorkspaceId};
use crate::reservation::Reservation;
use crate::scheduler::{PlacementRequest, Rejected};
use crate::store::{NodeRecord, PlacementCandidate, WorkspaceRecord};

use super::{Candidate, FleetIndex, reject_reason};

/// How many nodes the explanation of a decision to provision names one by one.
pub(super) const EXPLAINED: usize = 16;

/// What holds a slot in a view's index: a workspace the store showed, or a task the
/// scheduler handed a slot to (an `Existing` decision) whose workspace the store does
/// not show yet.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Holder {
    Workspace(WorkspaceId),
    Task(TaskId),
}

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Workspace(id) => write!(f, "workspace {id}"),
            Self::Task(id) => write!(f, "task {id}"),
        }
    }
}

/// One provider's fleet as last read, plus the slots handed out since; see the
/// [module docs](self).
#[derive(Debug, Clone)]
pub(super) struct FleetView {
    provider: ProviderKind,
    /// The fleet, with the slots handed out since the read held by their tasks.
    index: FleetIndex<Holder>,
    /// The nodes held for a task (the task each is held for).
    held: HashMap<NodeId, TaskId>,
    /// An empty vector with room, for [`FleetView::check`].
    spare: Vec<(Holder, Reservation)>,
    /// When the bulk read the view was built from happened.
    read_at: DateTime<Utc>,
    /// How long after `read_at` the view is trusted.
    lifetime: chrono::Duration,
}

/// How a node the view proposed compared with what the store says of it now.
#[derive(Debug)]
pub(super) enum Checked {
    /// It can take the request: the view now holds the request's slot on it.
    Fits(Box<NodeRecord>),
    /// It cannot: why, for the placement explanation.
    Rejected(Rejected),
}

impl FleetView {
    /// A view of `provider`'s fleet from a bulk read made at `read_at`. Slots handed out
    /// before are forgotten: the view is the store's word only, so a decision to
    /// provision made from it is made from fresh data.
    pub(super) fn new(
        provider: ProviderKind,
        candidates: Vec<PlacementCandidate>,
        read_at: DateTime<Utc>,
    ) -> Self {
        let mut view = Self {
            provider,
            index: FleetIndex::default(),
            held: HashMap::default(),
            spare: Vec::new(),
            read_at,
            lifetime: chrono::Duration::zero(),
        };
        for candidate in candidates {
            if let Some(task) = candidate.held_for {
                view.held.insert(candidate.node.id.clone(), task);
            }
            view.index
                .replace_node(candidate.node, live(&candidate.workspaces));
        }
        view
    }

    /// The view, trusted for `lifetime` after its read (until then, zero: stale at
    /// once).
    pub(super) fn trusted_for(self, lifetime: chrono::Duration) -> Self {
        Self { lifetime, ..self }
    }

    /// Whether the view has reached its lifetime at `now` (or is that much in the
    /// future, by a clock that went back); a zero lifetime is always reached.
    pub(super) fn is_stale(&self, now: DateTime<Utc>) -> bool {
        let age = now.signed_duration_since(self.read_at);
        age >= self.lifetime || -age >= self.lifetime
    }

    /// Whether `node` is held for a task other than `asking`.
    fn held_for_other(&self, node: &NodeId, asking: &TaskId) -> Option<&TaskId> {
        self.held.get(node).filter(|task| *task != asking)
    }

    /// Gives back the slot handed out to `task` earlier, if the view still holds it:
    /// the task is being placed again.
    pub(super) fn forget(&mut self, task: &TaskId) {
        self.index.release(&Holder::Task(task.clone()));
    }

    /// Frees the slot of `task`'s workspace `workspace`, which the store no longer
    /// counts: whether the view knows it by the workspace (from a read) or by the
    /// task (handed out since).
    pub(super) fn released(&mut self, task: &TaskId, workspace: &WorkspaceId) {
        self.index.release(&Holder::Workspace(workspace.clone()));
        self.forget(task);
    }

    /// The best-fit node for `request` by the view, skipping nodes held for another
    /// task.
    pub(super) fn propose(&self, request: &PlacementRequest) -> Option<NodeId> {
        self.index
            .best_fit_where(request, |node| {
                self.held_for_other(&node.id, &request.task_id).is_none()
            })
            .map(|node| node.id.clone())
    }

    /// Takes in what the store says of node `id` now (its row, its slot-holding
    /// workspaces and the task it is held for), then judges whether it can take
    /// `request`. When it can, the view holds the request's slot on it, so the next
    /// decision does not count the same room twice.
    pub(super) fn check(
        &mut self,
        id: &NodeId,
        read: Option<PlacementCandidate>,
        request: &PlacementRequest,
    ) -> Checked {
        let gone = |reason: String| {
            Checked::Rejected(Rejected {
                candidate: id.to_string(),
                reason: format!("node {id} {reason}"),
            })
        };
        let Some(PlacementCandidate {
            node,
            workspaces,
            held_for,
        }) = read
        else {
            self.drop_node(id);
            return gone("no longer exists".to_owned());
        };
        if node.provider != self.provider
            || node.status != NodeStatus::Running
            || node.lifecycle != NodeLifecycle::Active
        {
            let reason = format!("is now {} and {}", node.status, node.lifecycle);
            self.drop_node(id);
            return gone(reason);
        }
        match held_for {
            Some(task) => self.held.insert(id.clone(), task),
            None => self.held.remove(id),
        };
        // Slots handed out on this node stay counted until their task shows up there
        // holding a slot (one whose workspace has already stopped stays counted until
        // the next bulk read: the view errs on the side of too little room).
        let mut pending = std::mem::take(&mut self.spare);
        pending.extend(
            self.index
                .holders(id)
                .filter(|(holder, _)| {
                    matches!(holder, Holder::Task(task)
                        if !workspaces.iter().any(|w| w.task_id == *task))
                })
                .map(|(holder, reservation)| (holder.clone(), *reservation)),
        );
        self.index
            .replace_node(node, live(&workspaces).chain(pending.drain(..)));
        self.spare = pending;
        if let Some(task) = self.held_for_other(id, &request.task_id) {
            return gone(format!(
                "was provisioned for task {task}, which has not taken its slot yet"
            ));
        }
        let Some(candidate) = self.index.candidate(id) else {
            return gone("is not in the fleet index".to_owned());
        };
        if let Some(reason) = reject_reason(candidate, request) {
            return gone(reason);
        }
        let node = Box::new(candidate.node.clone());
        self.assume(id, request);
        Checked::Fits(node)
    }

    /// Node `id` as the view has it, with `request`'s slot now held on it: for a
    /// proposal taken without reading the node again.
    pub(super) fn accept(&mut self, id: &NodeId, request: &PlacementRequest) -> Option<NodeRecord> {
        let node = self.index.candidate(id)?.node.clone();
        self.assume(id, request);
        Some(node)
    }

    /// Holds `request`'s slot on node `id` in the view until the store shows it.
    fn assume(&mut self, id: &NodeId, request: &PlacementRequest) {
        self.forget(&request.task_id);
        // Refused only if the node has no room, which the caller has just checked; a
        // refusal would cost no more than the next decision choosing the same node,
        // which the store's slot check settles.
        let _ = self.index.reserve(
            id,
            Holder::Task(request.task_id.clone()),
            request.reservation,
        );
    }

    fn drop_node(&mut self, id: &NodeId) {
        self.index.remove_node(id);
        self.held.remove(id);
    }

    /// Why the nodes of the view cannot take `request`: the explanation of a decision
    /// to provision. The first [`EXPLAINED`] nodes by `(created_at, id)` each with its
    /// reason, then one entry counting the rest, so a large fleet does not write a
    /// row per node into every such task.
    pub(super) fn rejections(&self, request: &PlacementRequest) -> Vec<Rejected> {
        let mut candidates: Vec<Candidate<'_>> = self.index.candidates().collect();
        let order = |a: &Candidate<'_>, b: &Candidate<'_>| {
            (a.node.created_at, &a.node.id).cmp(&(b.node.created_at, &b.node.id))
        };
        let rest = candidates.len().saturating_sub(EXPLAINED);
        if rest > 0 {
            candidates.select_nth_unstable_by(EXPLAINED, order);
            candidates.truncate(EXPLAINED);
        }
        candidates.sort_by(order);
        let mut rejected: Vec<Rejected> = candidates
            .into_iter()
            .map(|candidate| {
                let id = &candidate.node.id;
                let reason = match self.held_for_other(id, &request.task_id) {
                    Some(task) => {
                        format!("was provisioned for task {task}, which has not taken its slot yet")
                    }
                    None => reject_reason(candidate, request)
                        .unwrap_or_else(|| "fits, but the view was behind the store".to_owned()),
                };
                Rejected {
                    candidate: id.to_string(),
                    reason: format!("node {id} {reason}"),
                }
            })
            .collect();
        if rest > 0 {
            rejected.push(Rejected {
                candidate: format!("{rest} more nodes"),
                reason: format!("{rest} more running nodes cannot take it either (not listed)"),
            });
        }
        rejected
    }
}

/// The slot-holding workspaces among `workspaces`, as the index keeps them.
fn live(workspaces: &[WorkspaceRecord]) -> impl Iterator<Item = (Holder, Reservation)> + '_ {
    workspaces
        .iter()
        .filter(|w| w.status.holds_slot())
        .map(|w| (Holder::Workspace(w.id.clone()), w.reservation))
}
