//! [`FleetView`]: what [`DefaultScheduler`](super::DefaultScheduler) remembers of one
//! provider's fleet between decisions.
//!
//! A view is a [`FleetIndex`] built from one bulk read
//! ([`Store::list_placement_candidates`](crate::store::Store::list_placement_candidates)),
//! the nodes that read found held for a task, and the reservations the scheduler has
//! handed out since and the store does not show yet. It is plain data with no IO: the
//! scheduler reads, then applies what it read here. It only ever *proposes* a node;
//! the scheduler checks the proposal against the store before it returns it.

use chrono::{DateTime, Utc};
use foldhash::HashMap;

use crate::model::{NodeId, NodeLifecycle, NodeStatus, ProviderKind, TaskId, WorkspaceId};
use crate::reservation::Reservation;
use crate::scheduler::{PlacementRequest, Rejected};
use crate::store::{NodeRecord, PlacementCandidate, SlotOutcome, WorkspaceRecord};

use super::{Candidate, FleetIndex, reject_reason};

/// How many nodes the explanation of a decision to provision names one by one.
pub(super) const EXPLAINED: usize = 16;

/// A slot the scheduler handed out (an `Existing` decision) that the store does not
/// show yet: the task still has to reserve it.
#[derive(Debug, Clone)]
struct Assumed {
    node: NodeId,
    /// The placeholder workspace the index holds the slot under.
    key: WorkspaceId,
    reservation: Reservation,
}

/// One provider's fleet as last read, plus the slots handed out since; see the
/// [module docs](self).
#[derive(Debug, Clone)]
pub(super) struct FleetView {
    provider: ProviderKind,
    index: FleetIndex,
    /// The nodes held for a task (the task each is held for).
    held: HashMap<NodeId, TaskId>,
    /// Slots handed out and not yet seen in the store, by task.
    assumed: HashMap<TaskId, Assumed>,
    /// The tasks of `assumed` on each node.
    assumed_on: HashMap<NodeId, Vec<TaskId>>,
    /// Numbers the placeholder workspaces of `assumed`.
    next_key: u64,
    /// When the bulk read the view was built from happened.
    read_at: DateTime<Utc>,
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
            index: FleetIndex::new(),
            held: HashMap::default(),
            assumed: HashMap::default(),
            assumed_on: HashMap::default(),
            next_key: 0,
            read_at,
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

    /// Whether the view has reached `max_age` at `now` (or is that much in the
    /// future, by a clock that went back); a zero `max_age` is always reached.
    pub(super) fn is_stale(&self, now: DateTime<Utc>, max_age: chrono::Duration) -> bool {
        let age = now.signed_duration_since(self.read_at);
        age >= max_age || -age >= max_age
    }

    /// Whether `node` is held for a task other than `asking`.
    fn held_for_other(&self, node: &NodeId, asking: &TaskId) -> Option<&TaskId> {
        self.held.get(node).filter(|task| *task != asking)
    }

    /// Gives back the slot handed out to `task` earlier, if the view still holds it:
    /// the task is being placed again.
    pub(super) fn forget(&mut self, task: &TaskId) {
        if let Some(assumed) = self.assumed.remove(task) {
            self.index.release(&assumed.key);
            if let Some(tasks) = self.assumed_on.get_mut(&assumed.node) {
                tasks.retain(|t| t != task);
                if tasks.is_empty() {
                    self.assumed_on.remove(&assumed.node);
                }
            }
        }
    }

    /// Frees the slot of `task`'s workspace `workspace`, which the store no longer
    /// counts: whether the view knows it by the workspace (from a read) or by the
    /// task (handed out since).
    pub(super) fn released(&mut self, task: &TaskId, workspace: &WorkspaceId) {
        self.index.release(workspace);
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
        self.index.replace_node(node, live(&workspaces));
        // Slots handed out on this node stay counted until their task shows up there
        // holding a slot (one whose workspace has already stopped stays counted until
        // the next bulk read: the view errs on the side of too little room).
        for task in self.assumed_on.remove(id).unwrap_or_default() {
            let Some(assumed) = self.assumed.remove(&task) else {
                continue;
            };
            if workspaces.iter().any(|w| w.task_id == task) {
                continue;
            }
            if let Ok(SlotOutcome::Reserved) =
                self.index
                    .reserve(id, assumed.key.clone(), assumed.reservation)
            {
                self.hold(task, assumed);
            }
        }
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
        self.next_key += 1;
        // Placeholder ids are short and of valid characters, so this cannot fail; if
        // it did, the only loss would be that the next decision may pick the same
        // node, which the store's slot check settles.
        let Ok(key) = WorkspaceId::new(format!("assumed:{}", self.next_key)) else {
            return;
        };
        if let Ok(SlotOutcome::Reserved) = self.index.reserve(id, key.clone(), request.reservation)
        {
            self.hold(
                request.task_id.clone(),
                Assumed {
                    node: id.clone(),
                    key,
                    reservation: request.reservation,
                },
            );
        }
    }

    /// Records a slot the index now holds for `task`.
    fn hold(&mut self, task: TaskId, assumed: Assumed) {
        self.assumed_on
            .entry(assumed.node.clone())
            .or_default()
            .push(task.clone());
        self.assumed.insert(task, assumed);
    }

    fn drop_node(&mut self, id: &NodeId) {
        self.index.remove_node(id);
        self.held.remove(id);
        for task in self.assumed_on.remove(id).unwrap_or_default() {
            self.assumed.remove(&task);
        }
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
fn live<'a>(
    workspaces: impl IntoIterator<Item = &'a WorkspaceRecord>,
) -> Vec<(WorkspaceId, Reservation)> {
    workspaces
        .into_iter()
        .filter(|w| w.status.holds_slot())
        .map(|w| (w.id.clone(), w.reservation))
        .collect()
}
