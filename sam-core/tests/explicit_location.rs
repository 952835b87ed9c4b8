//! One meaning of "explicit location": placement, warm claims and the fallback plan
//! all follow [`Layer::is_explicit_location`].
//!
//! For every layer a location can come from, a task asking for one location is put
//! in front of a fleet with running and warm nodes in several locations, over a real
//! [`MemoryStore`]. With an explicit location it is never placed on a node elsewhere,
//! never claims a warm node elsewhere, and its fallback plan never leaves it; with the
//! platform's default location all three may move.

use std::sync::Arc;

use proptest::prelude::*;
use sam_core::testkit::fixtures::{at, node, reservation, task_id, warm_node};
use sam_core::{
    Candidate, DefaultScheduler, FallbackPlan, Layer, Location, NodeChoice, NodeRecord, Placement,
    PlacementRequest, PlanRequest, ProviderKind, Reservation, Scheduler, SizeDescent, Store,
    VmSize, best_fit,
};
use sam_store::MemoryStore;

const LOCATIONS: [&str; 3] = ["fsn1", "nbg1", "hel1"];

fn location(name: &str) -> Location {
    Location::new(name).unwrap()
}

/// A node of the fleet: running and active, or warm, in `LOCATIONS[at]`.
fn fleet_node(i: usize, warm: bool, at: usize) -> NodeRecord {
    let id = format!("node-{i:02}");
    let mut n = if warm {
        warm_node(&id, 0)
    } else {
        node(&id, 0)
    };
    n.location = location(LOCATIONS[at]);
    n.created_for = None;
    n
}

fn small() -> Reservation {
    reservation(500, 512, false, 8)
}

fn request(to: &str, source: Layer) -> PlacementRequest {
    PlacementRequest {
        task_id: task_id("t-pinned"),
        provider: ProviderKind::Hetzner,
        size: VmSize::Medium,
        size_source: Layer::Platform,
        location: Some(location(to)),
        location_source: source,
        reservation: small(),
        preferred_node: None,
        credential_owner: None,
        now: at(100),
    }
}

/// Where each of the three decisions put the task: the node placement chose (and
/// how), the node the pure best fit chose, and the locations of the fallback plan.
struct Decisions {
    placed: Placement,
    placed_in: Option<Location>,
    best_fit_in: Option<Location>,
    planned_in: Vec<Location>,
}

async fn decide(fleet: &[NodeRecord], req: &PlacementRequest) -> Decisions {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    for n in fleet {
        store.put_node(n).await.unwrap();
    }
    let scheduler = DefaultScheduler::new(Arc::clone(&store));
    let decision = scheduler.place(req).await.unwrap();
    let placed_in = decision.node.as_ref().map(|n| n.location.clone());

    let active: Vec<&NodeRecord> = fleet
        .iter()
        .filter(|n| n.lifecycle == sam_core::NodeLifecycle::Active)
        .collect();
    let (chosen, _) = best_fit(active.iter().map(|node| Candidate { node, live: &[] }), req);

    let catalog = sam_providers::catalog(ProviderKind::Hetzner, &LOCATIONS.map(location));
    let plan = FallbackPlan::new(&PlanRequest {
        catalog: &catalog,
        size: req.size,
        size_source: req.size_source,
        location: req.location.clone(),
        location_source: req.location_source,
        reservation: &req.reservation,
        descent: SizeDescent::Allowed,
    })
    .unwrap();
    Decisions {
        placed: decision.placement,
        placed_in,
        best_fit_in: chosen.map(|n| n.location.clone()),
        planned_in: plan.attempts().iter().map(|a| a.location.clone()).collect(),
    }
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(f)
}

/// Every layer but the platform's pins the location.
#[test]
fn only_the_platform_default_location_is_not_explicit() {
    for layer in Layer::ALL {
        assert_eq!(
            layer.is_explicit_location(),
            layer != Layer::Platform,
            "{layer}"
        );
    }
}

/// Per layer: a task asking for `fsn1` in front of a running and a warm node in
/// `nbg1` only. An explicit location provisions in `fsn1` and plans only `fsn1`; the
/// platform's default claims the warm node elsewhere and may plan elsewhere.
#[test]
fn each_layer_is_held_to_its_location_by_placement_warm_claims_and_the_plan() {
    let fleet = [fleet_node(1, false, 1), fleet_node(2, true, 1)];
    for layer in Layer::ALL {
        let req = request("fsn1", layer);
        let d = block_on(decide(&fleet, &req));
        let fsn1 = location("fsn1");
        if layer.is_explicit_location() {
            assert_eq!(
                d.placed,
                Placement::Provision {
                    size: VmSize::Medium,
                    location: Some(fsn1.clone()),
                },
                "{layer}: neither the warm nor the running node in nbg1"
            );
            assert_eq!(
                d.best_fit_in, None,
                "{layer}: the running node is elsewhere"
            );
            assert!(
                d.planned_in.iter().all(|l| *l == fsn1),
                "{layer}: {:?}",
                d.planned_in
            );
        } else {
            assert!(
                matches!(
                    d.placed,
                    Placement::Node {
                        choice: NodeChoice::Warm,
                        ..
                    }
                ),
                "{layer}: {:?}",
                d.placed
            );
            assert_eq!(d.placed_in, Some(location("nbg1")), "{layer}");
            assert_eq!(d.best_fit_in, Some(location("nbg1")), "{layer}");
            assert!(
                d.planned_in.iter().any(|l| *l != fsn1),
                "{layer}: {:?}",
                d.planned_in
            );
        }
    }
}

/// `(warm, location index)` of each node of a fleet.
fn fleet() -> impl Strategy<Value = Vec<(bool, usize)>> {
    proptest::collection::vec((any::<bool>(), 0..LOCATIONS.len()), 0..8)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Any fleet, any requested location, any layer: with an explicit location, the
    /// node placement chose (warm, existing), the best fit and every planned attempt
    /// are in the requested location.
    #[test]
    fn an_explicit_location_is_never_left(
        nodes in fleet(),
        to in 0..LOCATIONS.len(),
        layer in proptest::sample::select(Layer::ALL.to_vec()),
    ) {
        let fleet: Vec<NodeRecord> = nodes
            .iter()
            .enumerate()
            .map(|(i, (warm, at))| fleet_node(i, *warm, *at))
            .collect();
        let wanted = location(LOCATIONS[to]);
        let d = block_on(decide(&fleet, &request(LOCATIONS[to], layer)));
        if layer.is_explicit_location() {
            prop_assert!(d.placed_in.as_ref().is_none_or(|l| *l == wanted), "{layer}: {:?}", d.placed_in);
            if let Placement::Provision { location, .. } = &d.placed {
                prop_assert_eq!(location.as_ref(), Some(&wanted));
            }
            prop_assert!(d.best_fit_in.as_ref().is_none_or(|l| *l == wanted), "{layer}");
            prop_assert!(d.planned_in.iter().all(|l| *l == wanted), "{layer}: {:?}", d.planned_in);
        } else {
            // The platform's default moves only when nothing is there: a warm node
            // in the requested location is still claimed first.
            let warm_here = fleet.iter().any(|n| n.warm_since.is_some() && n.location == wanted);
            if warm_here {
                prop_assert_eq!(d.placed_in.as_ref(), Some(&wanted));
            }
            prop_assert_eq!(d.planned_in.first(), Some(&wanted));
        }
    }
}
