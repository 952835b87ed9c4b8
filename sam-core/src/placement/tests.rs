use super::*;
use crate::model::{Labels, Location, NodeId, ProviderKind, TaskId, VmSize};
use crate::reservation::{Layer, RequirementLayers, resolve_reservation};
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
