//! A synthetic fleet and a placement workload over it, for the indexed placement
//! ([`FleetIndex`]) and the naive linear scan ([`NaiveFleet`]) alike.
//!
//! The fleet mixes three sizes in three locations, with a few unhealthy nodes; the
//! workload places a stream of reservations of four shapes (a fifth of them with an
//! explicit location), reserves the chosen slot, and releases the oldest workspace
//! once the fleet holds as many workspaces as it has nodes, so it runs at a steady,
//! partly full state. Everything is drawn from a seeded generator, so two fleets built
//! with the same seed see the same requests in the same order.

use std::collections::{HashMap, VecDeque};

use chrono::{TimeZone, Utc};
use sam_core::{
    Candidate, Capacity, FleetIndex, Labels, Layer, Location, NodeHealth, NodeId, NodeLifecycle,
    NodeRecord, NodeStatus, PlacementRequest, ProviderKind, RequirementLayers, Reservation,
    SlotOutcome, TaskId, VmSize, WorkspaceId, fits, leftover, resolve_reservation,
};

/// A small, fast, seeded generator (SplitMix64); good enough to pick workloads.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator starting from `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number below `n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

const LOCATIONS: [&str; 3] = ["fsn1", "nbg1", "hel1"];

/// The nodes of a fleet of `size` nodes drawn from `seed`.
pub fn nodes(size: usize, seed: u64) -> Vec<NodeRecord> {
    let mut rng = Rng::new(seed);
    let at = Utc
        .with_ymd_and_hms(2026, 1, 1, 0, 0, 0)
        .single()
        .unwrap_or_default();
    (0..size)
        .map(|i| {
            let (vm_size, vcpu, gb) = match rng.below(3) {
                0 => (VmSize::Small, 2, 4),
                1 => (VmSize::Medium, 4, 8),
                _ => (VmSize::Large, 8, 16),
            };
            let id = NodeId::new(format!("node-{i:06}")).expect("a valid node id");
            NodeRecord {
                labels: Labels::for_node(&id),
                id,
                provider: ProviderKind::Fake,
                vm_id: None,
                size: vm_size,
                server_type: format!("fake-{vm_size}"),
                location: Location::new(LOCATIONS[rng.below(3) as usize])
                    .expect("a valid location"),
                capacity: Capacity {
                    cpu_millis: vcpu * 1000,
                    memory_mb: gb * 1024,
                    disk_mb: Some(gb * 10 * 1024),
                },
                status: NodeStatus::Running,
                lifecycle: NodeLifecycle::Active,
                warm_since: None,
                health: if rng.below(50) == 0 {
                    NodeHealth::Unhealthy
                } else {
                    NodeHealth::Healthy
                },
                last_heartbeat_at: None,
                agent_version: None,
                ready_at: None,
                created_for: None,
                credential_owner: None,
                address: None,
                boot: sam_core::NodeBootRecord::default(),
                created_at: at,
                updated_at: at,
            }
        })
        .collect()
}

/// The reservation every request starts from: the platform defaults.
fn base_reservation() -> Reservation {
    resolve_reservation(&RequirementLayers::default()).expect("the platform defaults resolve")
}

/// The `n`-th request of a workload drawn from `rng`.
pub fn request(rng: &mut Rng, n: u64) -> PlacementRequest {
    request_from(rng, n, base_reservation())
}

fn request_from(rng: &mut Rng, n: u64, base: Reservation) -> PlacementRequest {
    let (cpu, memory, disk) = match rng.below(4) {
        0 => (500, 1024, 5 * 1024),
        1 => (1000, 2048, 10 * 1024),
        2 => (2000, 4096, 20 * 1024),
        _ => (4000, 8192, 40 * 1024),
    };
    let explicit = rng.below(5) == 0;
    let location = Location::new(LOCATIONS[rng.below(3) as usize]).expect("a valid location");
    PlacementRequest {
        task_id: TaskId::new(format!("t-{n}")).expect("a valid task id"),
        provider: ProviderKind::Fake,
        size: VmSize::Medium,
        size_source: Layer::Platform,
        location: Some(location),
        location_source: if explicit {
            Layer::Task
        } else {
            Layer::Platform
        },
        reservation: Reservation {
            cpu_millis: cpu,
            memory_mb: memory,
            disk_mb: disk,
            ..base
        },
        preferred_node: None,
        credential_owner: None,
        now: Utc::now(),
    }
}

/// What a placement workload needs of a fleet: choose, take a slot, give it back.
pub trait Placer {
    /// The best-fit node for `request`.
    fn choose(&self, request: &PlacementRequest) -> Option<NodeId>;
    /// Gives `workspace` a slot on `node`; `false` when the node cannot take it.
    fn take(&mut self, node: &NodeId, workspace: WorkspaceId, reservation: Reservation) -> bool;
    /// Frees the slot of `workspace`.
    fn give_back(&mut self, workspace: &WorkspaceId);
}

impl Placer for FleetIndex {
    fn choose(&self, request: &PlacementRequest) -> Option<NodeId> {
        self.best_fit(request).map(|n| n.id.clone())
    }

    fn take(&mut self, node: &NodeId, workspace: WorkspaceId, reservation: Reservation) -> bool {
        matches!(
            self.reserve(node, workspace, reservation),
            Ok(SlotOutcome::Reserved)
        )
    }

    fn give_back(&mut self, workspace: &WorkspaceId) {
        self.release(workspace);
    }
}

/// The baseline: the fleet in plain vectors, and best fit by looking at every node
/// with the same [`fits`] rule and [`leftover`] order as the index.
#[derive(Debug, Default)]
pub struct NaiveFleet {
    nodes: Vec<NodeRecord>,
    live: Vec<Vec<Reservation>>,
    holders: Vec<Vec<WorkspaceId>>,
    positions: HashMap<NodeId, usize>,
    workspaces: HashMap<WorkspaceId, usize>,
}

impl NaiveFleet {
    /// A fleet of these nodes, all empty.
    pub fn new(nodes: Vec<NodeRecord>) -> Self {
        let positions = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.id.clone(), i))
            .collect();
        Self {
            live: vec![Vec::new(); nodes.len()],
            holders: vec![Vec::new(); nodes.len()],
            nodes,
            positions,
            workspaces: HashMap::new(),
        }
    }
}

impl Placer for NaiveFleet {
    fn choose(&self, request: &PlacementRequest) -> Option<NodeId> {
        let mut best: Option<((u64, u64, u64), &NodeId)> = None;
        for (node, live) in self.nodes.iter().zip(&self.live) {
            if !fits(Candidate { node, live }, request) {
                continue;
            }
            let key = (
                leftover(&node.capacity, live, &request.reservation),
                &node.id,
            );
            if best.is_none_or(|b| key < b) {
                best = Some(key);
            }
        }
        best.map(|(_, id)| id.clone())
    }

    fn take(&mut self, node: &NodeId, workspace: WorkspaceId, reservation: Reservation) -> bool {
        let Some(&i) = self.positions.get(node) else {
            return false;
        };
        if sam_core::check_slot(&self.nodes[i].capacity, &self.live[i], &reservation).is_err() {
            return false;
        }
        self.live[i].push(reservation);
        self.holders[i].push(workspace.clone());
        self.workspaces.insert(workspace, i);
        true
    }

    fn give_back(&mut self, workspace: &WorkspaceId) {
        if let Some(i) = self.workspaces.remove(workspace)
            && let Some(at) = self.holders[i].iter().position(|w| w == workspace)
        {
            self.holders[i].swap_remove(at);
            self.live[i].swap_remove(at);
        }
    }
}

/// A placement workload: a stream of requests over one fleet, at steady occupancy.
#[derive(Debug)]
pub struct Workload {
    rng: Rng,
    base: Reservation,
    issued: u64,
    /// The workspaces holding a slot, oldest first, with the task of each.
    live: VecDeque<(TaskId, WorkspaceId)>,
    target: usize,
    /// A digest of every decision so far, to check two placers decided alike.
    pub digest: u64,
    /// How many requests found a node.
    pub placed: u64,
}

impl Workload {
    /// A workload drawn from `seed` that keeps about `target` workspaces live.
    pub fn new(seed: u64, target: usize) -> Self {
        Self {
            rng: Rng::new(seed),
            base: base_reservation(),
            issued: 0,
            live: VecDeque::new(),
            target,
            digest: 0xcbf2_9ce4_8422_2325,
            placed: 0,
        }
    }

    /// Runs `n` steps on `placer`: decide, take the slot, release the oldest workspace
    /// when the target is exceeded.
    pub fn run(&mut self, placer: &mut impl Placer, n: u64) {
        for _ in 0..n {
            let request = self.next_request();
            let chosen = placer.choose(&request);
            let workspace = self.workspace();
            let taken = chosen
                .as_ref()
                .filter(|node| placer.take(node, workspace.clone(), request.reservation))
                .map(|_| (request.task_id, workspace));
            for (_, oldest) in self.decided(chosen.as_ref(), taken) {
                placer.give_back(&oldest);
            }
        }
    }

    /// The next request of the stream.
    pub fn next_request(&mut self) -> PlacementRequest {
        request_from(&mut self.rng, self.issued, self.base)
    }

    /// The workspace the current request takes its slot under.
    pub fn workspace(&self) -> WorkspaceId {
        WorkspaceId::new(format!("ws-{}", self.issued)).expect("a valid workspace id")
    }

    /// Records the decision on the current request (`taken`: the request's task and
    /// the workspace that now holds its slot, if any) and moves to the next; returns
    /// the oldest workspaces (with their tasks) to release, to keep the target.
    pub fn decided(
        &mut self,
        chosen: Option<&NodeId>,
        taken: Option<(TaskId, WorkspaceId)>,
    ) -> Vec<(TaskId, WorkspaceId)> {
        self.fold(chosen);
        if let Some(workspace) = taken {
            self.placed += 1;
            self.live.push_back(workspace);
        }
        self.issued += 1;
        let excess = self.live.len().saturating_sub(self.target);
        self.live.drain(..excess).collect()
    }

    fn fold(&mut self, chosen: Option<&NodeId>) {
        let bytes = chosen.map_or(&b"-"[..], |id| id.as_str().as_bytes());
        for &b in bytes.iter().chain(b";") {
            self.digest = (self.digest ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// A [`FleetIndex`] over `nodes`.
pub fn index(nodes: Vec<NodeRecord>) -> FleetIndex {
    let mut index = FleetIndex::new();
    for node in nodes {
        index.insert_node(node);
    }
    index
}
