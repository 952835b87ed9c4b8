use super::*;
use crate::model::{Labels, Location, NodeId, ProviderKind, TaskId, VmSize, WorkspaceId};
use crate::reservation::{Layer, RequirementLayers, resolve_reservation};
use crate::store::SlotOutcome;
use chrono::{TimeZone, Utc};
use proptest::prelude::*;

fn node(
    i: usize,
    cpu: u64,
    mem: u64,
    status: NodeStatus,
    health: NodeHealth,
    location: &str,
) -> NodeRecord {
    let at = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
    let id = NodeId::new(format!("node-{i:05}")).unwrap();
    NodeRecord {
        labels: Labels::for_node(&id),
        id,
        provider: ProviderKind::Fake,
        vm_id: None,
        size: VmSize::Medium,
        server_type: "fake-medium".into(),
        location: Location::new(location).unwrap(),
        capacity: Capacity {
            cpu_millis: cpu,
            memory_mb: mem,
            disk_mb: None,
        },
        status,
        lifecycle: NodeLifecycle::Active,
        warm_since: None,
        health,
        last_heartbeat_at: None,
        agent_version: None,
        ready_at: None,
        created_for: None,
        credential_owner: None,
        address: None,
        boot: crate::boot::NodeBootRecord::default(),
        created_at: at,
        updated_at: at,
    }
}

fn request(cpu: u64, mem: u64) -> PlacementRequest {
    let mut r = resolve_reservation(&RequirementLayers::default()).unwrap();
    r.cpu_millis = cpu;
    r.memory_mb = mem;
    PlacementRequest {
        task_id: TaskId::new("t-1").unwrap(),
        provider: ProviderKind::Fake,
        size: VmSize::Medium,
        size_source: Layer::Platform,
        location: None,
        location_source: Layer::Platform,
        reservation: r,
        preferred_node: None,
        credential_owner: None,
        now: Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap(),
    }
}

#[test]
fn picks_the_tightest_fit_and_explains_every_rejection() {
    let nodes = [
        node(
            1,
            8000,
            16384,
            NodeStatus::Running,
            NodeHealth::Healthy,
            "fsn1",
        ),
        node(
            2,
            4000,
            8192,
            NodeStatus::Running,
            NodeHealth::Healthy,
            "fsn1",
        ),
        node(
            3,
            16000,
            32768,
            NodeStatus::Running,
            NodeHealth::Stale,
            "fsn1",
        ),
        node(
            4,
            1000,
            1024,
            NodeStatus::Running,
            NodeHealth::Healthy,
            "fsn1",
        ),
    ];
    let live: Vec<Vec<Reservation>> = vec![vec![]; nodes.len()];
    let (chosen, rejected) = best_fit(
        nodes
            .iter()
            .zip(&live)
            .map(|(node, live)| Candidate { node, live }),
        &request(2000, 4096),
    );
    assert_eq!(chosen.unwrap().id.as_str(), "node-00002");
    let reasons: Vec<&str> = rejected.iter().map(|r| r.reason.as_str()).collect();
    assert_eq!(
        reasons,
        [
            "node node-00001 fits, but less tightly",
            "node node-00003 is stale",
            "node node-00004 not enough cpu_millis: 2000 needed, 1000 free of 1000",
        ]
    );
}

#[test]
fn only_nodes_of_the_tasks_credential_owner_are_candidates() {
    use crate::credential::CredentialOwner;
    use crate::model::UserId;
    let user = |id: &str| Some(CredentialOwner::User(UserId::new(id).unwrap()));
    let owned = |i: usize, owner: Option<CredentialOwner>| NodeRecord {
        credential_owner: owner,
        ..node(
            i,
            4000,
            8192,
            NodeStatus::Running,
            NodeHealth::Healthy,
            "fsn1",
        )
    };
    // The tightest node belongs to user A; user B's task must not take it.
    let nodes = [owned(1, user("u-a")), owned(2, None), owned(3, user("u-b"))];
    let live: Vec<Vec<Reservation>> = vec![vec![]; nodes.len()];
    let candidates = || {
        nodes
            .iter()
            .zip(&live)
            .map(|(node, live)| Candidate { node, live })
    };
    let for_owner = |owner: Option<CredentialOwner>| PlacementRequest {
        credential_owner: owner,
        ..request(1000, 1024)
    };
    let (chosen, rejected) = best_fit(candidates(), &for_owner(user("u-b")));
    assert_eq!(chosen.unwrap().id.as_str(), "node-00003");
    let reasons: Vec<&str> = rejected.iter().map(|r| r.reason.as_str()).collect();
    assert_eq!(
        reasons,
        [
            "node node-00001 was made with user:u-a's provider credential, not user:u-b's",
            "node node-00002 was made with the platform's provider credential, not user:u-b's",
        ]
    );
    let (chosen, _) = best_fit(candidates(), &for_owner(None));
    assert_eq!(chosen.unwrap().id.as_str(), "node-00002");
    let (chosen, _) = best_fit(candidates(), &for_owner(user("u-c")));
    assert!(chosen.is_none(), "user C has no node");
    // The fleet index judges by the same rule.
    let mut index = FleetIndex::new();
    for n in &nodes {
        index.insert_node(n.clone());
    }
    for owner in [user("u-a"), user("u-b"), None, user("u-c")] {
        let request = for_owner(owner);
        assert_eq!(
            index.best_fit(&request).map(|n| &n.id),
            best_fit(candidates(), &request).0.map(|n| &n.id)
        );
    }
}

#[test]
fn explicit_location_and_size_are_requirements() {
    let nodes = [node(
        1,
        8000,
        16384,
        NodeStatus::Running,
        NodeHealth::Healthy,
        "nbg1",
    )];
    let live = [vec![]];
    let mut req = request(1000, 1024);
    req.location = Some(Location::new("fsn1").unwrap());
    req.location_source = Layer::Task;
    let (chosen, rejected) = best_fit(
        nodes
            .iter()
            .zip(&live)
            .map(|(node, live)| Candidate { node, live }),
        &req,
    );
    assert!(chosen.is_none());
    assert_eq!(
        rejected[0].reason,
        "node node-00001 is in nbg1, not the requested fsn1"
    );
    let mut req = request(1000, 1024);
    req.size = VmSize::Large;
    req.size_source = Layer::AgentProfile;
    let (chosen, rejected) = best_fit(
        nodes
            .iter()
            .zip(&live)
            .map(|(node, live)| Candidate { node, live }),
        &req,
    );
    assert!(chosen.is_none());
    assert_eq!(
        rejected[0].reason,
        "node node-00001 is medium, smaller than the requested large"
    );
}

proptest! {
    /// Random fleets and reservations: the chosen node can take the reservation
    /// (so placement never over-commits), every other candidate is explained, and the
    /// same input gives the same answer.
    #[test]
    fn never_over_commits_and_explains_everyone(
        fleet in proptest::collection::vec(
            (1000u64..16_000, 1024u64..32_768, 0usize..4, any::<bool>(), proptest::collection::vec((0u64..4000, 0u64..8192), 0..4)),
            0..40),
        cpu in 0u64..8000,
        mem in 0u64..16_384,
    ) {
        let nodes: Vec<NodeRecord> = fleet.iter().enumerate().map(|(i, (c, m, s, healthy, _))| {
            let status = [NodeStatus::Running, NodeStatus::Running, NodeStatus::Creating, NodeStatus::Stopped][*s];
            let health = if *healthy { NodeHealth::Healthy } else { NodeHealth::Unhealthy };
            node(i, *c, *m, status, health, "fsn1")
        }).collect();
        let base = request(0, 0).reservation;
        let live: Vec<Vec<Reservation>> = fleet.iter().map(|(_, _, _, _, ws)| {
            ws.iter().map(|(c, m)| Reservation { cpu_millis: *c, memory_mb: *m, ..base }).collect()
        }).collect();
        let req = request(cpu, mem);
        let candidates = || nodes.iter().zip(&live).map(|(node, live)| Candidate { node, live });
        let (chosen, rejected) = best_fit(candidates(), &req);
        prop_assert_eq!(rejected.len() + usize::from(chosen.is_some()), nodes.len());
        if let Some(chosen) = chosen {
            let i = nodes.iter().position(|n| n.id == chosen.id).unwrap();
            prop_assert!(check_slot(&chosen.capacity, &live[i], &req.reservation).is_ok());
            prop_assert_eq!(chosen.status, NodeStatus::Running);
            prop_assert_eq!(chosen.health, NodeHealth::Healthy);
        } else {
            for c in candidates() {
                prop_assert!(reject_reason(c, &req).is_some());
            }
        }
        let (again, _) = best_fit(candidates(), &req);
        prop_assert_eq!(again.map(|n| &n.id), chosen.map(|n| &n.id));
    }
}

/// One step of a random workload on a [`FleetIndex`].
#[derive(Debug, Clone)]
enum Op {
    /// Place a request; when a node is chosen, reserve the slot on it.
    Place {
        cpu: u64,
        mem: u64,
        disk: u64,
        exclusive: bool,
        co_tenants: u32,
        location: Option<(usize, bool)>,
        size: Option<VmSize>,
        hetzner: bool,
    },
    /// Release the slot of the n-th workspace placed so far (modulo their number).
    Release(usize),
    /// Change the n-th node's health (modulo the fleet's size).
    Sicken(usize, bool),
    /// A fresh read of the n-th node (modulo the fleet's size) through
    /// [`FleetIndex::replace_node`]: it keeps the node's workspaces whose bit is set
    /// in the mask (the others stopped), and gains the m-th placed workspace from
    /// another node when it has room for it (the read saw it move there).
    Reread(usize, u8, Option<usize>),
}

fn op() -> impl Strategy<Value = Op> {
    // Coarse values, so that many nodes tie on free CPU and memory and the
    // tie-breaking (disk, then node id) is exercised.
    let place = (
        prop::sample::select(vec![0u64, 500, 1000, 2000]),
        prop::sample::select(vec![0u64, 512, 1024, 2048]),
        prop::sample::select(vec![0u64, 10_240, 20_480]),
        prop::bool::weighted(0.1),
        1u32..5,
        prop::option::of((0usize..2, any::<bool>())),
        prop::option::of(prop::sample::select(vec![
            VmSize::Small,
            VmSize::Medium,
            VmSize::Large,
        ])),
        prop::bool::weighted(0.1),
    )
        .prop_map(
            |(cpu, mem, disk, exclusive, co_tenants, location, size, hetzner)| Op::Place {
                cpu,
                mem,
                disk,
                exclusive,
                co_tenants,
                location,
                size,
                hetzner,
            },
        );
    prop_oneof![
        6 => place,
        3 => any::<usize>().prop_map(Op::Release),
        1 => (any::<usize>(), any::<bool>()).prop_map(|(i, h)| Op::Sicken(i, h)),
        2 => (any::<usize>(), any::<u8>(), prop::option::of(any::<usize>()))
            .prop_map(|(i, mask, moved)| Op::Reread(i, mask, moved)),
    ]
}

const LOCATIONS: [&str; 2] = ["fsn1", "nbg1"];

proptest! {
    /// Random fleets and workloads: the index always chooses the node the linear
    /// scan chooses (ties included), and no node ever holds more than it has.
    #[test]
    fn fleet_index_agrees_with_the_scan_and_never_over_commits(
        fleet in proptest::collection::vec(
            (
                prop::sample::select(vec![2000u64, 4000, 8000]),
                prop::sample::select(vec![2048u64, 4096, 8192]),
                prop::option::of(prop::sample::select(vec![20_480u64, 40_960])),
                0usize..2,
                prop::sample::select(vec![VmSize::Small, VmSize::Medium, VmSize::Large]),
                0usize..5,
            ),
            0..30),
        ops in proptest::collection::vec(op(), 0..60),
        long_ids in any::<bool>(),
    ) {
        // Long ids share their first 16 bytes, so the index's ranking falls back to
        // comparing them whole.
        let id_of = |i: usize| {
            let id = if long_ids { format!("fleet.eu-central.1:node-{i:05}") } else { format!("node-{i:05}") };
            NodeId::new(id).unwrap()
        };
        let mut index = FleetIndex::new();
        for (i, (cpu, mem, disk, location, size, status)) in fleet.iter().enumerate() {
            let status = [NodeStatus::Running, NodeStatus::Running, NodeStatus::Running, NodeStatus::Creating, NodeStatus::Stopped][*status];
            let mut n = node(i, *cpu, *mem, status, NodeHealth::Healthy, LOCATIONS[*location]);
            n.capacity.disk_mb = *disk;
            n.size = *size;
            n.id = id_of(i);
            n.labels = Labels::for_node(&n.id);
            index.insert_node(n);
        }
        let ids: Vec<NodeId> = (0..fleet.len()).map(id_of).collect();
        // Every workspace holding a slot: its node and reservation.
        let mut placed: Vec<(WorkspaceId, NodeId, Reservation)> = Vec::new();
        for (step, op) in ops.into_iter().enumerate() {
            match op {
                Op::Place { cpu, mem, disk, exclusive, co_tenants, location, size, hetzner } => {
                    let mut req = request(cpu, mem);
                    req.reservation.disk_mb = disk;
                    req.reservation.exclusive = exclusive;
                    req.reservation.max_co_tenants = co_tenants;
                    if hetzner {
                        req.provider = ProviderKind::Hetzner;
                    }
                    if let Some((l, explicit)) = location {
                        req.location = Some(Location::new(LOCATIONS[l]).unwrap());
                        req.location_source = if explicit { Layer::Task } else { Layer::Platform };
                    }
                    if let Some(size) = size {
                        req.size = size;
                        req.size_source = Layer::Task;
                    }
                    let scanned = best_fit(index.candidates(), &req).0.map(|n| n.id.clone());
                    let indexed = index.best_fit(&req).map(|n| n.id.clone());
                    prop_assert_eq!(&indexed, &scanned, "step {}: {:?}", step, req.reservation);
                    if let Some(id) = indexed {
                        let ws = WorkspaceId::new(format!("ws-{step}")).unwrap();
                        let outcome = index.reserve(&id, ws.clone(), req.reservation).unwrap();
                        prop_assert_eq!(outcome, SlotOutcome::Reserved);
                        placed.push((ws, id, req.reservation));
                    }
                }
                Op::Release(i) => {
                    if !placed.is_empty() {
                        let (ws, _, _) = placed.swap_remove(i % placed.len());
                        prop_assert!(index.release(&ws));
                        prop_assert!(!index.release(&ws));
                    }
                }
                Op::Reread(i, mask, moved) => {
                    if ids.is_empty() {
                        continue;
                    }
                    let id = &ids[i % ids.len()];
                    let n = index.candidate(id).unwrap().node.clone();
                    let mut kept = Vec::new();
                    let mut stopped = Vec::new();
                    for (bit, (ws, _, r)) in placed.iter().filter(|(_, on, _)| on == id).enumerate() {
                        if mask & (1 << (bit % 8)) != 0 {
                            kept.push((ws.clone(), *r));
                        } else {
                            stopped.push(ws.clone());
                        }
                    }
                    let live: Vec<Reservation> = kept.iter().map(|(_, r)| *r).collect();
                    if let Some(m) = moved.filter(|_| !placed.is_empty()) {
                        let (ws, from, r) = &placed[m % placed.len()];
                        if from != id && crate::reservation::check_slot(&n.capacity, &live, r).is_ok() {
                            kept.push((ws.clone(), *r));
                        }
                    }
                    placed.retain(|(ws, _, _)| !stopped.contains(ws));
                    for (ws, on, _) in &mut placed {
                        if kept.iter().any(|(k, _)| k == ws) {
                            *on = id.clone();
                        }
                    }
                    index.replace_node(n, kept);
                    for ws in &stopped {
                        prop_assert!(!index.release(ws), "step {}: {} stopped", step, ws);
                    }
                    for (on, r) in ids.iter().map(|on| (on, index.candidate(on).unwrap())) {
                        let mut want: Vec<u64> = placed.iter().filter(|(_, n, _)| n == on).map(|(_, _, r)| r.cpu_millis).collect();
                        let mut have: Vec<u64> = r.live.iter().map(|r| r.cpu_millis).collect();
                        want.sort_unstable();
                        have.sort_unstable();
                        prop_assert_eq!(want, have, "step {}: the slots of {}", step, on);
                    }
                }
                Op::Sicken(i, healthy) => {
                    if !ids.is_empty() {
                        let mut n = index.candidate(&ids[i % ids.len()]).unwrap().node.clone();
                        n.health = if healthy { NodeHealth::Healthy } else { NodeHealth::Unhealthy };
                        index.insert_node(n);
                    }
                }
            }
            for c in index.candidates() {
                let sum = |f: fn(&Reservation) -> u64| c.live.iter().map(f).sum::<u64>();
                prop_assert!(sum(|r| r.cpu_millis) <= c.node.capacity.cpu_millis);
                prop_assert!(sum(|r| r.memory_mb) <= c.node.capacity.memory_mb);
                if let Some(disk) = c.node.capacity.disk_mb {
                    prop_assert!(sum(|r| r.disk_mb) <= disk);
                }
                prop_assert!(c.live.len() <= 1 || c.live.iter().all(|r| !r.exclusive));
            }
        }
    }
}

#[test]
fn fleet_index_refuses_unknown_nodes_and_double_bookings() {
    let mut index = FleetIndex::new();
    index.insert_node(node(
        1,
        4000,
        8192,
        NodeStatus::Running,
        NodeHealth::Healthy,
        "fsn1",
    ));
    index.insert_node(node(
        2,
        4000,
        8192,
        NodeStatus::Running,
        NodeHealth::Healthy,
        "fsn1",
    ));
    let one = NodeId::new("node-00001").unwrap();
    let two = NodeId::new("node-00002").unwrap();
    let ws = WorkspaceId::new("ws-1").unwrap();
    let r = request(1000, 1024).reservation;
    assert!(matches!(
        index.reserve(&NodeId::new("nope").unwrap(), ws.clone(), r),
        Err(Error::InvalidInput { field: "node", .. })
    ));
    assert_eq!(
        index.reserve(&one, ws.clone(), r).unwrap(),
        SlotOutcome::Reserved
    );
    assert_eq!(
        index.reserve(&one, ws.clone(), r).unwrap(),
        SlotOutcome::Reserved
    );
    assert_eq!(
        index.candidate(&one).unwrap().live.len(),
        1,
        "reserving twice is idempotent"
    );
    assert!(matches!(
        index.reserve(&two, ws.clone(), r),
        Err(Error::InvalidInput {
            field: "workspace",
            ..
        })
    ));
    let too_big = request(8000, 1024).reservation;
    assert!(matches!(
        index
            .reserve(&two, WorkspaceId::new("ws-2").unwrap(), too_big)
            .unwrap(),
        SlotOutcome::Rejected(_)
    ));
    assert_eq!(index.remove_node(&one).map(|n| n.id), Some(one.clone()));
    assert!(!index.release(&ws), "removing the node freed its slots");
    assert_eq!(index.len(), 1);
}

/// Groups one MB of memory apart, and a group at the largest memory: the lookup walks
/// on to each next group (by memory, then by CPU) until a node fits.
#[test]
fn fleet_index_walks_every_next_group() {
    let running = |i, cpu, mem, disk| {
        let mut n = node(
            i,
            cpu,
            mem,
            NodeStatus::Running,
            NodeHealth::Healthy,
            "fsn1",
        );
        n.capacity.disk_mb = disk;
        n
    };
    let fleet = [
        running(1, 2000, 4096, Some(1000)), // the tightest group, too little disk
        running(2, 2000, 4097, Some(10_241)), // the next group by one MB, one MB of disk left
        running(3, 2000, u64::MAX, Some(1000)), // the last memory of that CPU
        running(4, 2001, 4096, None),       // the next CPU
    ];
    let mut index = FleetIndex::new();
    for n in &fleet {
        index.insert_node(n.clone());
    }
    let mut req = request(2000, 4096);
    req.reservation.disk_mb = 10_240;
    let chosen = |index: &FleetIndex| index.best_fit(&req).map(|n| n.id.to_string());
    let scanned = |index: &FleetIndex| {
        best_fit(index.candidates(), &req)
            .0
            .map(|n| n.id.to_string())
    };
    assert_eq!(chosen(&index).as_deref(), Some("node-00002"));
    assert_eq!(chosen(&index), scanned(&index));
    index.remove_node(&fleet[1].id);
    assert_eq!(chosen(&index).as_deref(), Some("node-00004"));
    assert_eq!(chosen(&index), scanned(&index));
}

/// A view is trusted for the maximum staleness, or four times as long as its read
/// took when that is longer; a zero staleness reads for every decision however long
/// a read takes, and a read too long to count does not overflow.
#[test]
fn a_slow_read_stretches_the_views_lifetime() {
    let ms = chrono::Duration::milliseconds;
    let check = |staleness: chrono::Duration, took: Duration, expected: chrono::Duration| {
        assert_eq!(
            view_lifetime(staleness, took),
            expected,
            "staleness {staleness}, read took {took:?}"
        );
    };
    check(ms(500), Duration::from_millis(33), ms(500));
    check(ms(500), Duration::from_millis(125), ms(500));
    check(ms(500), Duration::from_millis(126), ms(504));
    check(ms(500), Duration::from_millis(400), ms(1600));
    check(
        chrono::Duration::zero(),
        Duration::from_secs(3),
        chrono::Duration::zero(),
    );
    check(ms(500), Duration::MAX, chrono::Duration::MAX);
    check(
        chrono::Duration::MAX,
        Duration::from_secs(1),
        chrono::Duration::MAX,
    );
}
