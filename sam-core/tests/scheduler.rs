//! [`DefaultScheduler`] with its cached fleet view, over a real [`MemoryStore`] that
//! other writers change behind its back: another control plane placing and reserving
//! with its own scheduler, workspaces stopping, nodes appearing, changing state,
//! disappearing, and nodes being held for the task they were provisioned for.
//!
//! Every decision is judged against the store as it is when the decision returns,
//! read node by node (not through the bulk read the scheduler uses): an existing node
//! it returns fits, and it decides to provision only when no running node has room.
//! With a zero staleness the decision is exactly the scan's best fit.

use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use sam_core::testkit::fixtures::{at, node, reservation, task, task_id, workspace};
use sam_core::{
    Candidate, DefaultScheduler, Layer, NodeFilter, NodeHealth, NodeId, NodeLifecycle, NodeRecord,
    NodeStatus, Placement, PlacementDecision, PlacementRequest, ProviderKind, Reservation,
    Scheduler, SlotOutcome, Store, TaskId, TaskStatus, Transition, VmSize, WorkspaceRecord,
    WorkspaceStatus, best_fit, fits,
};
use sam_store::MemoryStore;

/// What happens next, to the store or through a scheduler.
#[derive(Debug, Clone)]
enum Op {
    /// This control plane places a task; with `commit`, the task reserves its slot at
    /// once (as the runner does next), else it stays pending.
    Place {
        cpu: u64,
        memory: u64,
        exclusive: bool,
        commit: bool,
    },
    /// The oldest pending task reserves its slot; when the store refuses (others took
    /// the room), the task is placed again.
    Commit,
    /// Another control plane, with its own scheduler, places a task and reserves.
    OtherPlaces { cpu: u64, memory: u64 },
    /// A workspace stops and frees its slot; with `tell`, both schedulers are told
    /// ([`Scheduler::released`]), as the control plane's release does.
    StopWorkspace { workspace: usize, tell: bool },
    /// A new node starts running.
    AddNode { cpu: u64, memory: u64 },
    /// A node changes state.
    SetNode { node: usize, state: u8 },
    /// A node row is deleted.
    DeleteNode(usize),
    /// A node is held for a live task that provisioned it.
    Hold(usize),
    /// The task a node is held for ends.
    Unhold(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (1u64..=8, 1u64..=8, prop::bool::weighted(0.1), any::<bool>()).prop_map(
            |(cpu, memory, exclusive, commit)| Op::Place {
                cpu: cpu * 500,
                memory: memory * 1024,
                exclusive,
                commit,
            }
        ),
        3 => Just(Op::Commit),
        3 => (1u64..=8, 1u64..=8).prop_map(|(cpu, memory)| Op::OtherPlaces {
            cpu: cpu * 500,
            memory: memory * 1024,
        }),
        2 => (any::<usize>(), any::<bool>())
            .prop_map(|(workspace, tell)| Op::StopWorkspace { workspace, tell }),
        2 => (1u64..=8, 1u64..=8).prop_map(|(cpu, memory)| Op::AddNode {
            cpu: cpu * 1000,
            memory: memory * 2048,
        }),
        2 => (any::<usize>(), 0u8..4).prop_map(|(node, state)| Op::SetNode { node, state }),
        1 => any::<usize>().prop_map(Op::DeleteNode),
        1 => any::<usize>().prop_map(Op::Hold),
        1 => any::<usize>().prop_map(Op::Unhold),
    ]
}

/// The world under test: the store, this control plane's scheduler, another's, and
/// the tasks this one placed that have not reserved yet.
struct World {
    store: Arc<dyn Store>,
    scheduler: DefaultScheduler,
    other: DefaultScheduler,
    pending: Vec<(PlacementRequest, NodeId)>,
    serial: usize,
    /// With a zero staleness: the decision must be the scan's best fit.
    exact: bool,
}

fn request(task: TaskId, reservation: Reservation) -> PlacementRequest {
    PlacementRequest {
        task_id: task,
        provider: ProviderKind::Hetzner,
        size: VmSize::Medium,
        size_source: Layer::Platform,
        location: None,
        location_source: Layer::Platform,
        reservation,
        preferred_node: None,
        credential_owner: None,
        now: at(100),
    }
}

/// The placeable nodes as the store has them now, read one by one, each with its
/// slot-holding reservations; nodes held for a task other than `asking` left out.
async fn open_nodes(store: &dyn Store, asking: &TaskId) -> Vec<(NodeRecord, Vec<Reservation>)> {
    let nodes = store
        .list_nodes(&NodeFilter {
            statuses: vec![NodeStatus::Running],
            lifecycles: vec![NodeLifecycle::Active],
            provider: Some(ProviderKind::Hetzner),
        })
        .await
        .unwrap();
    let mut open = Vec::new();
    for node in nodes {
        let workspaces = store.list_workspaces(&node.id).await.unwrap();
        let creator = match &node.created_for {
            Some(t) => store.get_task(t).await.unwrap(),
            None => None,
        };
        if node
            .held_for(&workspaces, creator.as_ref())
            .is_some_and(|t| t != asking)
        {
            continue;
        }
        let live = workspaces
            .iter()
            .filter(|w| w.status.holds_slot())
            .map(|w| w.reservation)
            .collect();
        open.push((node, live));
    }
    open
}

impl World {
    fn new(exact: bool) -> Self {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let staleness = if exact {
            Duration::ZERO
        } else {
            // Never stale by age: only the checks keep it right.
            Duration::from_secs(3600)
        };
        Self {
            scheduler: DefaultScheduler::with_max_staleness(Arc::clone(&store), staleness),
            other: DefaultScheduler::with_max_staleness(Arc::clone(&store), staleness),
            store,
            pending: Vec::new(),
            serial: 0,
            exact,
        }
    }

    fn next(&mut self, prefix: &str) -> String {
        self.serial += 1;
        format!("{prefix}-{:04}", self.serial)
    }

    async fn nodes(&self) -> Vec<NodeRecord> {
        self.store.list_nodes(&NodeFilter::default()).await.unwrap()
    }

    async fn add_node(&mut self, cpu: u64, memory: u64) {
        let id = self.next("n");
        let mut n = node(&id, i64::try_from(self.serial).unwrap());
        n.capacity.cpu_millis = cpu;
        n.capacity.memory_mb = memory;
        n.created_for = None;
        self.store.put_node(&n).await.unwrap();
    }

    /// Judges `decision` for `request` against the store as it is now.
    async fn judge(&self, request: &PlacementRequest, decision: &PlacementDecision) {
        let open = open_nodes(self.store.as_ref(), &request.task_id).await;
        let candidates = || {
            open.iter()
                .map(|(node, live)| Candidate { node, live })
                .collect::<Vec<_>>()
        };
        let (best, _) = best_fit(candidates(), request);
        match &decision.placement {
            Placement::Node { node_id, .. } => {
                let chosen = candidates().into_iter().find(|c| &c.node.id == node_id);
                assert!(
                    chosen.is_some_and(|c| fits(c, request)),
                    "chose node {node_id}, which does not fit (or is not open) in the store: \
                     {decision:?}\nopen: {open:#?}"
                );
                if self.exact {
                    assert_eq!(
                        best.map(|n| &n.id),
                        Some(node_id),
                        "with a zero staleness, the scan's best fit"
                    );
                }
            }
            Placement::Provision { .. } => assert!(
                best.is_none(),
                "decided to provision while node {:?} has room: {decision:?}",
                best.map(|n| &n.id)
            ),
        }
    }

    /// Reserves `request`'s slot on `node` as the runner does.
    async fn reserve(&self, request: &PlacementRequest, node: &NodeId) -> SlotOutcome {
        let suffix = request.task_id.as_str().trim_start_matches("t-");
        let ws = WorkspaceRecord {
            task_id: request.task_id.clone(),
            ..workspace(
                &format!("w-{suffix}"),
                node.as_str(),
                request.reservation,
                50,
            )
        };
        self.store.reserve_workspace_slot(&ws).await.unwrap()
    }

    /// Places `request` with this control plane's scheduler and judges the decision.
    async fn place(&self, request: &PlacementRequest) -> Option<NodeId> {
        let decision = self.scheduler.place(request).await.unwrap();
        self.judge(request, &decision).await;
        match decision.placement {
            Placement::Node { node_id, .. } => Some(node_id),
            Placement::Provision { .. } => None,
        }
    }

    async fn apply(&mut self, op: Op) {
        match op {
            Op::Place {
                cpu,
                memory,
                exclusive,
                commit,
            } => {
                let task = task_id(&self.next("t"));
                let request = request(task, reservation(cpu, memory, exclusive, 8));
                if let Some(node) = self.place(&request).await {
                    if commit {
                        assert_eq!(
                            self.reserve(&request, &node).await,
                            SlotOutcome::Reserved,
                            "a checked choice holds when nothing came between"
                        );
                    } else {
                        self.pending.push((request, node));
                    }
                }
            }
            Op::Commit => {
                if self.pending.is_empty() {
                    return;
                }
                let (request, node) = self.pending.remove(0);
                let Ok(SlotOutcome::Rejected(_)) = self
                    .store
                    .reserve_workspace_slot(&WorkspaceRecord {
                        task_id: request.task_id.clone(),
                        ..workspace(
                            &format!("w-{}", request.task_id.as_str().trim_start_matches("t-")),
                            node.as_str(),
                            request.reservation,
                            50,
                        )
                    })
                    .await
                else {
                    // Reserved, or the node row is gone (the runner's node-lost path).
                    return;
                };
                // Refused: placed again, from whatever the view holds now.
                if let Some(again) = self.place(&request).await {
                    assert_eq!(
                        self.reserve(&request, &again).await,
                        SlotOutcome::Reserved,
                        "the fresh placement holds"
                    );
                }
            }
            Op::OtherPlaces { cpu, memory } => {
                let task = task_id(&self.next("t-other"));
                let request = request(task, reservation(cpu, memory, false, 8));
                let decision = self.other.place(&request).await.unwrap();
                if let Placement::Node { node_id, .. } = decision.placement {
                    self.reserve(&request, &node_id).await;
                }
            }
            Op::StopWorkspace { workspace: i, tell } => {
                let mut live = Vec::new();
                for node in self.nodes().await {
                    live.extend(
                        self.store
                            .list_workspaces(&node.id)
                            .await
                            .unwrap()
                            .into_iter()
                            .filter(|w| w.status.holds_slot()),
                    );
                }
                if !live.is_empty() {
                    let ws = &live[i % live.len()];
                    self.store
                        .update_workspace(&ws.id, WorkspaceStatus::Stopped, None, at(60))
                        .await
                        .unwrap();
                    if tell {
                        self.scheduler.released(&ws.task_id, &ws.id);
                        self.other.released(&ws.task_id, &ws.id);
                    }
                }
            }
            Op::AddNode { cpu, memory } => self.add_node(cpu, memory).await,
            Op::SetNode { node, state } => {
                let nodes = self.nodes().await;
                if nodes.is_empty() {
                    return;
                }
                let mut n = nodes[node % nodes.len()].clone();
                (n.status, n.health, n.lifecycle) = match state {
                    0 => (
                        NodeStatus::Running,
                        NodeHealth::Healthy,
                        NodeLifecycle::Active,
                    ),
                    1 => (
                        NodeStatus::Running,
                        NodeHealth::Unhealthy,
                        NodeLifecycle::Active,
                    ),
                    2 => (
                        NodeStatus::Creating,
                        NodeHealth::Unhealthy,
                        NodeLifecycle::Active,
                    ),
                    _ => (
                        NodeStatus::Running,
                        NodeHealth::Healthy,
                        NodeLifecycle::Destroying,
                    ),
                };
                self.store.put_node(&n).await.unwrap();
            }
            Op::DeleteNode(i) => {
                let nodes = self.nodes().await;
                if !nodes.is_empty() {
                    self.store
                        .delete_node(&nodes[i % nodes.len()].id)
                        .await
                        .unwrap();
                }
            }
            Op::Hold(i) => {
                let nodes = self.nodes().await;
                if nodes.is_empty() {
                    return;
                }
                let mut n = nodes[i % nodes.len()].clone();
                let mut creator = task(&self.next("t-creator"), 0);
                creator.status = TaskStatus::InProgress;
                creator.provisioned_node_id = Some(n.id.clone());
                self.store.create_task(&creator).await.unwrap();
                n.created_for = Some(creator.id);
                self.store.put_node(&n).await.unwrap();
            }
            Op::Unhold(i) => {
                let nodes = self.nodes().await;
                if nodes.is_empty() {
                    return;
                }
                let n = &nodes[i % nodes.len()];
                if let Some(creator) = &n.created_for {
                    self.store
                        .transition_task(
                            creator,
                            &Transition {
                                from: TaskStatus::InProgress,
                                to: TaskStatus::Cancelled,
                                actor: "test".into(),
                                reason: None,
                                error: None,
                                at: at(70),
                            },
                        )
                        .await
                        .unwrap();
                }
            }
        }
    }
}

fn run(exact: bool, nodes: Vec<(u64, u64)>, ops: Vec<Op>) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async move {
        let mut world = World::new(exact);
        for (cpu, memory) in nodes {
            world.add_node(cpu * 1000, memory * 2048).await;
        }
        for op in ops {
            world.apply(op).await;
        }
    });
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// With a view never refreshed by age, every decision is still right by the
    /// store: a chosen node fits, and a decision to provision means none does.
    #[test]
    fn a_cached_view_never_misplaces(
        nodes in prop::collection::vec((1u64..=8, 1u64..=8), 0..10),
        ops in prop::collection::vec(op(), 1..40),
    ) {
        run(false, nodes, ops);
    }

    /// With a zero staleness every decision is the scan's best fit over the store.
    #[test]
    fn a_fresh_view_is_the_best_fit(
        nodes in prop::collection::vec((1u64..=8, 1u64..=8), 0..10),
        ops in prop::collection::vec(op(), 1..30),
    ) {
        run(true, nodes, ops);
    }
}

/// Consecutive decisions do not all pick the same nearly-full node: a slot handed
/// out counts in the view until the store shows it, also when a later decision reads
/// the node back and the store does not show the slot yet. Three tasks of 1,500
/// millicores, none reserving, over a tight node with room for `slots` of them and a
/// big one: the first `slots` go to the tight node, the rest elsewhere.
#[tokio::test]
async fn consecutive_decisions_count_the_slots_they_handed_out() {
    for slots in [1, 2] {
        let mut world = World::new(false);
        world.add_node(1500 * slots + 500, 8192).await;
        world.add_node(8000, 16384).await;
        let tight = world.nodes().await[0].id.clone();
        let mut chosen = Vec::new();
        for _ in 0..3 {
            let task = task_id(&world.next("t"));
            let request = request(task, reservation(1500, 1024, false, 8));
            chosen.push(world.place(&request).await.expect("room on a node"));
        }
        let on_tight: Vec<bool> = chosen.iter().map(|n| n == &tight).collect();
        let expected: Vec<bool> = (0..3).map(|i| i < slots).collect();
        assert_eq!(
            on_tight, expected,
            "{slots} slot(s) on the tight node: {chosen:?}"
        );
    }
}

/// A slot the scheduler is told was freed counts as room again at once, whether the
/// view holds it from its bulk read or handed it out since; a slot freed without a
/// word stays counted until the view reads the node again.
#[tokio::test]
async fn a_released_slot_is_room_again_without_a_read() {
    for told in [false, true] {
        for read_first in [false, true] {
            let mut world = World::new(false);
            world.add_node(2000, 8192).await;
            world.add_node(8000, 16384).await;
            let tight = world.nodes().await[0].id.clone();
            let ask = |task: &str| request(task_id(task), reservation(1500, 1024, false, 8));
            if read_first {
                // The first slot is taken before the view's bulk read sees it.
                assert_eq!(
                    world.reserve(&ask("t-0001"), &tight).await,
                    SlotOutcome::Reserved
                );
                world.place(&ask("t-read")).await;
            } else {
                let first = ask("t-0001");
                assert_eq!(world.place(&first).await, Some(tight.clone()));
                assert_eq!(world.reserve(&first, &tight).await, SlotOutcome::Reserved);
            }
            let freed = world
                .store
                .get_workspace(&sam_core::WorkspaceId::new("w-0001").unwrap())
                .await
                .unwrap()
                .expect("the first task's workspace");
            world
                .store
                .update_workspace(&freed.id, WorkspaceStatus::Stopped, None, at(60))
                .await
                .unwrap();
            if told {
                world.scheduler.released(&freed.task_id, &freed.id);
            }
            let next = world.place(&ask("t-next")).await;
            if told {
                assert_eq!(next, Some(tight.clone()), "read first: {read_first}");
            } else {
                assert_ne!(next, Some(tight.clone()), "read first: {read_first}");
            }
        }
    }
}

/// A node that appears after the view was read is found before the scheduler
/// decides to provision, and a node that disappears is never chosen.
#[tokio::test]
async fn nodes_added_and_removed_behind_its_back() {
    let mut world = World::new(false);
    let request = |task: &str| request(task_id(task), reservation(1000, 1024, false, 8));
    assert_eq!(world.place(&request("t-a")).await, None, "an empty fleet");
    world.add_node(4000, 8192).await;
    let added = world.nodes().await[0].id.clone();
    assert_eq!(
        world.place(&request("t-b")).await,
        Some(added.clone()),
        "the new node is seen before provisioning"
    );
    world.store.delete_node(&added).await.unwrap();
    assert_eq!(
        world.place(&request("t-c")).await,
        None,
        "a deleted node is never chosen"
    );
}

/// A decision to provision over a large fleet names the first 16 nodes with their
/// reasons and counts the rest, rather than writing a row per node into the task.
#[tokio::test]
async fn a_decision_to_provision_explains_a_bounded_number_of_nodes() {
    let mut world = World::new(false);
    for _ in 0..20 {
        world.add_node(1000, 2048).await;
    }
    let request = request(task_id("t-big"), reservation(4000, 4096, false, 8));
    let decision = world.scheduler.place(&request).await.unwrap();
    world.judge(&request, &decision).await;
    let rejected = &decision.explanation.rejected;
    assert_eq!(rejected.len(), 17, "{rejected:#?}");
    assert_eq!(rejected[0].candidate, "n-0001", "by (created_at, id)");
    assert!(
        rejected[0].reason.contains("cpu_millis"),
        "{:?}",
        rejected[0]
    );
    assert_eq!(rejected[16].candidate, "4 more nodes");
}
