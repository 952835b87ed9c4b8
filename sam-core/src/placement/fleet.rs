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
use std::fmt;
use std::hash::Hash;
use std::ops::Bound;

use foldhash::HashMap;

use crate::failure::Error;
use crate::model::{NodeHealth, NodeId, NodeLifecycle, NodeStatus, ProviderKind, WorkspaceId};
use crate::reservation::{Reservation, check_slot};
use crate::scheduler::PlacementRequest;
use crate::store::{NodeRecord, SlotOutcome};

use super::{Candidate, fits};

/// A group of the index: nodes of one provider with the same free CPU and memory.
type GroupKey = (ProviderKind, u64, u64);

/// A placeable node's group and its free disk (`None` when its disk is not known).
type Position = (GroupKey, Option<u64>);

/// One node and what holds a slot on it.
#[derive(Debug, Clone)]
struct Slot<K> {
    node: NodeRecord,
    holders: Vec<K>,
    /// The reservations of `holders`, in the same order.
    live: Vec<Reservation>,
    /// Where the node sits in the index's groups: [`Slot::key`] as of its last
    /// change, kept so that a move need not compute where it came from.
    position: Option<Position>,
}

impl<K> Slot<K> {
    fn candidate(&self) -> Candidate<'_> {
        Candidate {
            node: &self.node,
            live: &self.live,
        }
    }

    /// The node's group and its free disk (`None` when its disk is not known), or
    /// `None` when it can take no task at all: its status keeps it from any, or its
    /// slots already fill it by count (one is exclusive, or they reach the smallest
    /// `max_co_tenants` among them), whatever room is left.
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

    /// Moves the node to the group its row and slots now call for, in `groups`;
    /// nothing when that is where it sits (a fresh read that repeats what the index
    /// holds).
    fn regroup(&mut self, groups: &mut BTreeMap<GroupKey, Group>) {
        let after = self.key();
        self.move_to(after, groups);
    }

    /// Moves the node to `after` in `groups` (`None`: out of every group).
    fn move_to(&mut self, after: Option<Position>, groups: &mut BTreeMap<GroupKey, Group>) {
        if self.position == after {
            return;
        }
        let ranked = Ranked::new(&self.node.id);
        if let Some((key, disk)) = self.position
            && let Some(group) = groups.get_mut(&key)
        {
            group.remove(disk, &ranked);
            if group.is_empty() {
                groups.remove(&key);
            }
        }
        if let Some((key, disk)) = after {
            groups.entry(key).or_default().insert(disk, ranked);
        }
        self.position = after;
    }
}

/// A node id in a group of the index, with the first 16 bytes of its text as a
/// big-endian number in front: most comparisons in the groups' B-trees are then one
/// integer comparison instead of a string comparison. The order is the ids' own: two
/// ids that differ within their first 16 bytes differ first there, and a shorter id
/// is padded with zero bytes, below every byte an id can hold after it; ids whose
/// heads are equal compare by their whole text.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Ranked {
    head: u128,
    id: NodeId,
}

impl Ranked {
    fn new(id: &NodeId) -> Self {
        let mut head = [0u8; 16];
        let text = id.as_str().as_bytes();
        let n = text.len().min(head.len());
        head[..n].copy_from_slice(&text[..n]);
        Self {
            head: u128::from_be_bytes(head),
            id: id.clone(),
        }
    }
}

/// The nodes of one group, in the order best fit ranks them within it.
#[derive(Debug, Clone, Default)]
struct Group {
    /// Nodes whose disk is known, by free disk, each set ordered by node id.
    by_disk: BTreeMap<u64, BTreeSet<Ranked>>,
    /// Nodes whose disk is not known: disk never keeps them from a workspace, and
    /// best fit counts them as left with no disk at all.
    no_disk: BTreeSet<Ranked>,
}

impl Group {
    fn insert(&mut self, disk: Option<u64>, id: Ranked) {
        match disk {
            Some(free) => {
                self.by_disk.entry(free).or_default().insert(id);
            }
            None => {
                self.no_disk.insert(id);
            }
        }
    }

    fn remove(&mut self, disk: Option<u64>, id: &Ranked) {
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
        none_left.chain(more_left).map(|ranked| &ranked.id)
    }
}

/// The fleet sorted by free capacity; see the module docs.
///
/// `K` is what holds a slot: a workspace, by its id, unless the index is kept for
/// something that also counts slots not yet given to a workspace.
#[derive(Debug, Clone)]
pub struct FleetIndex<K = WorkspaceId> {
    slots: HashMap<NodeId, Slot<K>>,
    /// Which node each holder holds a slot on.
    holders: HashMap<K, NodeId>,
    /// The placeable nodes by group, each group ordered by node id.
    groups: BTreeMap<GroupKey, Group>,
    /// Empty vectors with room, for the next [`FleetIndex::replace_node`] to fill, so
    /// that a read-back of a node allocates nothing.
    spare: (Vec<K>, Vec<Reservation>),
}

impl<K> Default for FleetIndex<K> {
    fn default() -> Self {
        Self {
            slots: HashMap::default(),
            holders: HashMap::default(),
            groups: BTreeMap::new(),
            spare: (Vec::new(), Vec::new()),
        }
    }
}

impl FleetIndex {
    /// An empty index of workspaces' slots (for other holders, `default()`).
    pub fn new() -> Self {
        Self::default()
    }
}

impl<K: Clone + Eq + Hash + fmt::Display> FleetIndex<K> {
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

    /// What holds a slot on node `id`, each with its reservation (empty when the
    /// index does not hold the node).
    pub fn holders(&self, id: &NodeId) -> impl Iterator<Item = (&K, &Reservation)> {
        self.slots
            .get(id)
            .into_iter()
            .flat_map(|slot| slot.holders.iter().zip(&slot.live))
    }

    /// Adds `node`, or replaces its row and keeps its slots.
    pub fn insert_node(&mut self, node: NodeRecord) {
        let slot = slot_with_row(&mut self.slots, node);
        slot.regroup(&mut self.groups);
    }

    /// Sets node `node` to what a fresh read says: its row and what holds a slot on
    /// it (with their reservations), replacing whatever the index held for it.
    /// Nothing is checked: this is the store's word, not a request.
    pub fn replace_node(
        &mut self,
        node: NodeRecord,
        holders: impl IntoIterator<Item = (K, Reservation)>,
    ) {
        let id = node.id.clone();
        // The slot is changed in place: a fresh read of a node mostly repeats what
        // the index holds, so only the holders that came or went touch the map.
        let (mut now, mut live) = std::mem::take(&mut self.spare);
        for (holder, reservation) in holders {
            if self.holders.get(&holder) != Some(&id) {
                // A slot is on one node; one the index had elsewhere moves here.
                self.release(&holder);
                self.holders.insert(holder.clone(), id.clone());
            }
            now.push(holder);
            live.push(reservation);
        }
        let slot = slot_with_row(&mut self.slots, node);
        std::mem::swap(&mut slot.holders, &mut now);
        std::mem::swap(&mut slot.live, &mut live);
        for gone in now.drain(..) {
            if !slot.holders.contains(&gone) {
                self.holders.remove(&gone);
            }
        }
        live.clear();
        self.spare = (now, live);
        slot.regroup(&mut self.groups);
    }

    /// Removes node `id` and the slots held on it; returns its row.
    pub fn remove_node(&mut self, id: &NodeId) -> Option<NodeRecord> {
        let mut slot = self.slots.remove(id)?;
        slot.move_to(None, &mut self.groups);
        for holder in &slot.holders {
            self.holders.remove(holder);
        }
        Some(slot.node)
    }

    /// Gives `holder` a slot on node `node` when [`check_slot`] allows it, as a
    /// store's `reserve_workspace_slot` does; reserving for a holder that already
    /// holds a slot on that node is [`SlotOutcome::Reserved`] and changes nothing.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] when the index holds no node `node`, or `holder`
    /// holds a slot on another node.
    pub fn reserve(
        &mut self,
        node: &NodeId,
        holder: K,
        reservation: Reservation,
    ) -> Result<SlotOutcome, Error> {
        if let Some(other) = self.holders.get(&holder) {
            if other == node {
                return Ok(SlotOutcome::Reserved);
            }
            return Err(Error::InvalidInput {
                field: "workspace",
                reason: format!("{holder} already holds a slot on node {other}"),
            });
        }
        let Some(slot) = self.slots.get_mut(node) else {
            return Err(Error::InvalidInput {
                field: "node",
                reason: format!("node {node} is not in the fleet index"),
            });
        };
        if let Err(rejection) = check_slot(&slot.node.capacity, &slot.live, &reservation) {
            return Ok(SlotOutcome::Rejected(rejection));
        }
        slot.holders.push(holder.clone());
        slot.live.push(reservation);
        slot.regroup(&mut self.groups);
        self.holders.insert(holder, node.clone());
        Ok(SlotOutcome::Reserved)
    }

    /// Frees the slot `holder` holds; returns whether it held one.
    pub fn release(&mut self, holder: &K) -> bool {
        let Some(node) = self.holders.remove(holder) else {
            return false;
        };
        if let Some(slot) = self.slots.get_mut(&node)
            && let Some(i) = slot.holders.iter().position(|h| h == holder)
        {
            slot.holders.swap_remove(i);
            slot.live.swap_remove(i);
            slot.regroup(&mut self.groups);
        }
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

/// The slot of node `node.id` in `slots` with its row set to `node`: a new, empty
/// slot, in no group yet, when there was none. The caller regroups it.
fn slot_with_row<K>(slots: &mut HashMap<NodeId, Slot<K>>, node: NodeRecord) -> &mut Slot<K> {
    match slots.entry(node.id.clone()) {
        Entry::Occupied(entry) => {
            let slot = entry.into_mut();
            slot.node = node;
            slot
        }
        Entry::Vacant(entry) => entry.insert(Slot {
            node,
            holders: Vec::new(),
            live: Vec::new(),
            position: None,
        }),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::Ranked;
    use crate::model::NodeId;

    /// Ids with a long shared start, some shorter than 16 bytes, some a prefix of
    /// another.
    fn id() -> impl Strategy<Value = NodeId> {
        (
            prop::sample::select(vec![
                "",
                "n",
                "node-",
                "node-0123456789a",
                "node-0123456789ab",
            ]),
            "[A-Za-z0-9._:-]{0,20}",
        )
            .prop_filter_map("ids are not empty", |(start, rest)| {
                NodeId::new(format!("{start}{rest}")).ok()
            })
    }

    proptest! {
        /// The index ranks node ids exactly as their text orders them.
        #[test]
        fn ranked_ids_order_as_their_text(a in id(), b in id()) {
            prop_assert_eq!(Ranked::new(&a).cmp(&Ranked::new(&b)), a.cmp(&b));
            prop_assert_eq!(Ranked::new(&a) == Ranked::new(&b), a == b);
        }
    }
}
