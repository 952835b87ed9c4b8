//! [`FleetIndex`]: the fleet kept sorted by free capacity, so a best-fit placement is
//! a range lookup rather than a scan of every node.
//!
//! [`best_fit`](super::best_fit) looks at every node; over 10,000 nodes that is
//! 10,000 slot checks per decision. The best fit is the node left with the least CPU,
//! then memory, then disk, and since the request is the same for every node, the
//! node left with least CPU is the node with the least free CPU that still covers it.
//! So the index keeps the placeable nodes grouped by `(provider, free CPU, free
//! memory)` in a B-tree (a node whose workspaces fill it by count, an exclusive one
//! or as many as a co-tenant limit allows, is in no group: it fits no request, and
//! left in its group it would be walked past by every lookup that reaches it), and each group by free disk and node id: the lookup starts
//! at the request's own CPU and memory, skips the part of each CPU group with too
//! little memory, walks each group in best-fit order (least disk left, then the
//! smaller node id, as [`best_fit`](super::best_fit) breaks ties) from the request's
//! own disk, and stops at the first node that fits. Every node is judged by the same
//! [`fits`](super::fits) rule, so the two always agree (a property test holds them
//! to it).
//!
//! The index is updated incrementally: [`FleetIndex::insert_node`] when a node row
//! changes, [`FleetIndex::reserve`] and [`FleetIndex::release`] when a workspace takes
//! or gives back its slot. It is plain data with no IO, for a scheduler that keeps
//! its fleet in memory.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;

use foldhash::HashMap;

use crate::error::Error;
use crate::model::{NodeHealth, NodeId, NodeLifecycle, NodeStatus, ProviderKind, WorkspaceId};
use crate::reservation::{Reservation, check_slot};
use crate::scheduler::PlacementRequest;
use crate::store::{NodeRecord, SlotOutcome};

use super::{Candidate, fits};

/// A group of the index: nodes of one provider with the same free CPU and memory.
type GroupKey = (ProviderKind, u64, u64);

/// A placeable node's group and its free disk (`None` when its disk is not known).
type Position = (GroupKey, Option<u64>);

/// One node and the workspaces holding a slot on it.
#[derive(Debug, Clone)]
struct Slot {
    node: NodeRecord,
    workspaces: Vec<WorkspaceId>,
    /// The reservations of `workspaces`, in the same order.
    live: Vec<Reservation>,
}

impl Slot {
    fn candidate(&self) -> Candidate<'_> {
        Candidate {
            node: &self.node,
            live: &self.live,
        }
    }

    /// The node's group and its free disk (`None` when its disk is not known), or
    /// `None` when it can take no task at all: its status keeps it from any, or its
    /// workspaces already fill it by count (one is exclusive, or they reach the
    /// smallest `max_co_tenants` among them), whatever room is left.
    fn key(&self) -> Option<Position> {
        let node = &self.node;
        let full_by_count = self.live.iter().any(|r| r.exclusive)
            || self
                .live
                .iter()
                .map(|r| r.max_co_tenants as usize)
                .min()
                .is_some_and(|limit| self.live.len() >= limit);
        let placeable = node.status == NodeStatus::Running
            && node.lifecycle == NodeLifecycle::Active
            && node.health == NodeHealth::Healthy
            && !full_by_count;
        let used =
            |f: fn(&Reservation) -> u64| self.live.iter().map(f).fold(0u64, u64::saturating_add);
        placeable.then(|| {
            (
                (
                    node.provider,
                    node.capacity
                        .cpu_millis
                        .saturating_sub(used(|r| r.cpu_millis)),
                    node.capacity
                        .memory_mb
                        .saturating_sub(used(|r| r.memory_mb)),
                ),
                node.capacity
                    .disk_mb
                    .map(|disk| disk.saturating_sub(used(|r| r.disk_mb))),
            )
        })
    }
}

/// The nodes of one group, in the order best fit ranks them within it.
#[derive(Debug, Clone, Default)]
struct Group {
    /// Nodes whose disk is known, by free disk, each set ordered by node id.
    by_disk: BTreeMap<u64, BTreeSet<NodeId>>,
    /// Nodes whose disk is not known: disk never keeps them from a workspace, and
    /// best fit counts them as left with no disk at all.
    no_disk: BTreeSet<NodeId>,
}

impl Group {
    fn insert(&mut self, disk: Option<u64>, id: NodeId) {
        match disk {
            Some(free) => {
                self.by_disk.entry(free).or_default().insert(id);
            }
            None => {
                self.no_disk.insert(id);
            }
        }
    }

    fn remove(&mut self, disk: Option<u64>, id: &NodeId) {
        match disk {
            Some(free) => {
                if let Some(set) = self.by_disk.get_mut(&free) {
                    set.remove(id);
                    if set.is_empty() {
                        self.by_disk.remove(&free);
                    }
                }
            }
            None => {
                self.no_disk.remove(id);
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.by_disk.is_empty() && self.no_disk.is_empty()
    }

    /// The nodes with disk for `need` MB, least disk left first, then by node id:
    /// the nodes left with none (unknown disk, or free disk exactly `need`) merged by
    /// id, then the rest by free disk.
    fn ranked(&self, need: u64) -> impl Iterator<Item = &NodeId> {
        let mut exact = self.by_disk.get(&need).into_iter().flatten().peekable();
        let mut unknown = self.no_disk.iter().peekable();
        let none_left = std::iter::from_fn(move || match (exact.peek(), unknown.peek()) {
            (Some(a), Some(b)) if a <= b => exact.next(),
            (Some(_), Some(_)) | (None, Some(_)) => unknown.next(),
            (Some(_), None) => exact.next(),
            (None, None) => None,
        });
        let more_left = self
            .by_disk
            .range((Bound::Excluded(need), Bound::Unbounded))
            .flat_map(|(_, ids)| ids);
        none_left.chain(more_left)
    }
}

/// The fleet sorted by free capacity; see the [module docs](self).
#[derive(Debug, Clone, Default)]
pub struct FleetIndex {
    slots: HashMap<NodeId, Slot>,
    /// Which node each workspace holds a slot on.
    workspaces: HashMap<WorkspaceId, NodeId>,
    /// The placeable nodes by group, each group ordered by node id.
    groups: BTreeMap<GroupKey, Group>,
}

impl FleetIndex {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many nodes the index holds.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether the index holds no node.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Every node with its slot-holding reservations, in no particular order: what a
    /// linear scan such as [`best_fit`](super::best_fit) would look at.
    pub fn candidates(&self) -> impl Iterator<Item = Candidate<'_>> {
        self.slots.values().map(Slot::candidate)
    }

    /// The node `id` with its slot-holding reservations, if the index holds it.
    pub fn candidate(&self, id: &NodeId) -> Option<Candidate<'_>> {
        self.slots.get(id).map(Slot::candidate)
    }

    /// Where node `id` sits now: its group and free disk, if it is placeable.
    fn position(&self, id: &NodeId) -> Option<Position> {
        self.slots.get(id).and_then(Slot::key)
    }

    /// Moves node `id` from `before` (where it sat before its slot changed) to the
    /// group its row and reservations now call for; nothing when that is the same
    /// place (a fresh read that repeats what the index holds).
    fn reorder(&mut self, id: &NodeId, before: Option<Position>) {
        let after = self.position(id);
        if before == after {
            return;
        }
        if let Some((key, disk)) = before
            && let Some(group) = self.groups.get_mut(&key)
        {
            group.remove(disk, id);
            if group.is_empty() {
                self.groups.remove(&key);
            }
        }
        if let Some((key, disk)) = after {
            self.groups.entry(key).or_default().insert(disk, id.clone());
        }
    }

    /// The slot of node `id` with its row set to `node`: a new, empty slot when the
    /// index did not hold the node. The caller reorders it.
    fn slot_with_row(&mut self, id: &NodeId, node: NodeRecord) -> &mut Slot {
        match self.slots.entry(id.clone()) {
            Entry::Occupied(entry) => {
                let slot = entry.into_mut();
                slot.node = node;
                slot
            }
            Entry::Vacant(entry) => entry.insert(Slot {
                node,
                workspaces: Vec::new(),
                live: Vec::new(),
            }),
        }
    }

    /// Adds `node`, or replaces its row and keeps its workspaces.
    pub fn insert_node(&mut self, node: NodeRecord) {
        let id = node.id.clone();
        let before = self.position(&id);
        self.slot_with_row(&id, node);
        self.reorder(&id, before);
    }

    /// Sets node `node` to what a fresh read says: its row and the workspaces
    /// holding a slot on it (with their reservations), replacing whatever the index
    /// held for it. Nothing is checked: this is the store's word, not a request.
    pub fn replace_node(
        &mut self,
        node: NodeRecord,
        workspaces: impl IntoIterator<Item = (WorkspaceId, Reservation)>,
    ) {
        let id = node.id.clone();
        let position = self.position(&id);
        // The slot is changed in place: a fresh read of a node mostly repeats what
        // the index holds, so only the workspaces that came or went touch the map.
        let (mut now, mut live) = (Vec::new(), Vec::new());
        for (workspace, reservation) in workspaces {
            if self.workspaces.get(&workspace) != Some(&id) {
                // A workspace is on one node; one the index had elsewhere moves here.
                self.release(&workspace);
                self.workspaces.insert(workspace.clone(), id.clone());
            }
            now.push(workspace);
            live.push(reservation);
        }
        let slot = self.slot_with_row(&id, node);
        slot.live = live;
        let before = std::mem::replace(&mut slot.workspaces, now);
        let gone: Vec<WorkspaceId> = before
            .into_iter()
            .filter(|w| !slot.workspaces.contains(w))
            .collect();
        for workspace in &gone {
            self.workspaces.remove(workspace);
        }
        self.reorder(&id, position);
    }

    /// Removes node `id` and the slots its workspaces held; returns its row.
    pub fn remove_node(&mut self, id: &NodeId) -> Option<NodeRecord> {
        let before = self.position(id);
        let slot = self.slots.remove(id)?;
        self.reorder(id, before);
        for workspace in &slot.workspaces {
            self.workspaces.remove(workspace);
        }
        Some(slot.node)
    }

    /// Gives `workspace` a slot on node `node` when [`check_slot`] allows it, as a
    /// store's `reserve_workspace_slot` does; reserving a workspace that already holds
    /// a slot on that node is [`SlotOutcome::Reserved`] and changes nothing.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] when the index holds no node `node`, or `workspace`
    /// holds a slot on another node.
    pub fn reserve(
        &mut self,
        node: &NodeId,
        workspace: WorkspaceId,
        reservation: Reservation,
    ) -> Result<SlotOutcome, Error> {
        if let Some(holder) = self.workspaces.get(&workspace) {
            if holder == node {
                return Ok(SlotOutcome::Reserved);
            }
            return Err(Error::InvalidInput {
                field: "workspace",
                reason: format!("workspace {workspace} already holds a slot on node {holder}"),
            });
        }
        let Some(slot) = self.slots.get(node) else {
            return Err(Error::InvalidInput {
                field: "node",
                reason: format!("node {node} is not in the fleet index"),
            });
        };
        if let Err(rejection) = check_slot(&slot.node.capacity, &slot.live, &reservation) {
            return Ok(SlotOutcome::Rejected(rejection));
        }
        let before = self.position(node);
        if let Some(slot) = self.slots.get_mut(node) {
            slot.workspaces.push(workspace.clone());
            slot.live.push(reservation);
        }
        self.workspaces.insert(workspace, node.clone());
        self.reorder(node, before);
        Ok(SlotOutcome::Reserved)
    }

    /// Frees the slot `workspace` holds; returns whether it held one.
    pub fn release(&mut self, workspace: &WorkspaceId) -> bool {
        let Some(node) = self.workspaces.remove(workspace) else {
            return false;
        };
        let before = self.position(&node);
        if let Some(slot) = self.slots.get_mut(&node)
            && let Some(i) = slot.workspaces.iter().position(|w| w == workspace)
        {
            slot.workspaces.swap_remove(i);
            slot.live.swap_remove(i);
        }
        self.reorder(&node, before);
        true
    }

    /// The best-fit node for `request`: always the node [`best_fit`](super::best_fit)
    /// would choose among [`FleetIndex::candidates`], found by a range lookup.
    pub fn best_fit(&self, request: &PlacementRequest) -> Option<&NodeRecord> {
        self.best_fit_where(request, |_| true)
    }

    /// The best-fit node for `request` among the nodes `open` accepts: the node
    /// [`best_fit`](super::best_fit) would choose among those of
    /// [`FleetIndex::candidates`] that `open` accepts. `open` is asked only about
    /// nodes that fit, in best-fit order, so a rule that rejects few nodes costs
    /// little.
    pub fn best_fit_where(
        &self,
        request: &PlacementRequest,
        open: impl Fn(&NodeRecord) -> bool,
    ) -> Option<&NodeRecord> {
        let need = &request.reservation;
        let provider = request.provider;
        let mut from = Bound::Included((provider, need.cpu_millis, need.memory_mb));
        loop {
            let (&key, group) = self.groups.range((from, Bound::Unbounded)).next()?;
            let (group_provider, cpu, memory) = key;
            if group_provider != provider {
                return None;
            }
            if memory < need.memory_mb {
                // This CPU group's nodes with enough memory start further on.
                from = Bound::Included((provider, cpu, need.memory_mb));
                continue;
            }
            // Within the group the nodes come in best-fit order, so the first that
            // fits is the best fit.
            let best = group
                .ranked(need.disk_mb)
                .filter_map(|id| self.slots.get(id))
                .find(|slot| fits(slot.candidate(), request) && open(&slot.node));
            if let Some(slot) = best {
                return Some(&slot.node);
            }
            from = Bound::Excluded(key);
        }
    }
}
