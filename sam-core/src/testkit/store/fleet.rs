//! The conformance cases of the [`FleetStore`](crate::store::FleetStore) contract:
//! keys, nodes and their beats, the warm pool, workspace slots, placement reads.

use futures::future::join_all;
use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::TestRunner;

use crate::boot::{BootFailure, BootPhaseRecord, NodeBootRecord};
use crate::error::StoreErrorKind;
use crate::model::{
    Location, NodeHealth, NodeLifecycle, NodeStatus, ProviderKind, TaskStatus, VmSize,
};
use crate::reservation::{Reservation, SlotRejection, check_slot};
use crate::store::{
    NodeBeat, NodeFilter, NodeRecord, SlotOutcome, Store, WarmClaim, WorkspaceRecord,
    WorkspaceStatus,
};
use crate::testkit::fixtures::{
    at, due_task, location, node, node_id, reservation, task, task_id, warm_node, workspace,
    workspace_id,
};

use super::{claim, create, expect_kind, held, put};

async fn reserve(store: &dyn Store, workspace: &WorkspaceRecord) -> SlotOutcome {
    store
        .reserve_workspace_slot(workspace)
        .await
        .expect("reserve_workspace_slot")
}

fn warm_claim(task: &str, location: Option<Location>, now: i64) -> WarmClaim {
    WarmClaim {
        task_id: task_id(task),
        provider: ProviderKind::Hetzner,
        size: VmSize::Medium,
        location,
        credential_owner: None,
        now: at(now),
    }
}

/// A key is written once: a second write under its id leaves the first, and both
/// writers read the first back.
pub async fn a_key_is_written_once(store: &dyn Store) {
    use crate::store::{KeyPurpose, KeyRecord};
    let key = |id: &str, sealed: &str, created: i64| KeyRecord {
        id: id.into(),
        purpose: KeyPurpose::Signing,
        sealed: crate::credential::Sealed::from_stored(sealed),
        created_at: at(created),
    };
    let first = key("signing-1", "v1:aaaa:bbbb", 10);
    assert_eq!(store.put_key_if_absent(&first).await.unwrap(), first);
    let racing = key("signing-1", "v1:cccc:dddd", 11);
    assert_eq!(
        store.put_key_if_absent(&racing).await.unwrap(),
        first,
        "the key written first stays, and the second writer reads it back"
    );
    let second = key("signing-2", "v1:eeee:ffff", 20);
    store.put_key_if_absent(&second).await.unwrap();
    assert_eq!(
        store.list_keys(KeyPurpose::Signing).await.unwrap(),
        [first.clone(), second],
        "keys are listed by (created_at, id)"
    );
    assert_eq!(
        store
            .get_key(KeyPurpose::Signing, "signing-1")
            .await
            .unwrap(),
        Some(first)
    );
    assert_eq!(
        store.get_key(KeyPurpose::Node, "signing-1").await.unwrap(),
        None,
        "a key is read for its purpose only"
    );
    // A node's key goes with its row, directly or under a lease.
    for (id, leased) in [("n-1", false), ("n-2", true)] {
        put(store, node(id, 1)).await;
        let node_key = KeyRecord {
            purpose: KeyPurpose::Node,
            ..key(id, "v1:gggg:hhhh", 30)
        };
        store.put_key_if_absent(&node_key).await.unwrap();
        assert!(store.get_key(KeyPurpose::Node, id).await.unwrap().is_some());
        if leased {
            create(store, due_task("t-1", 1, 10)).await;
            claim(store, "a", 100, 1).await;
            let writes = [crate::store::LeasedWrite::DeleteNode(node_id(id))];
            store
                .write_leased(&held("a", "t-1", 1), at(101), &writes)
                .await
                .unwrap();
        } else {
            store.delete_node(&node_id(id)).await.unwrap();
        }
        assert_eq!(
            store.get_key(KeyPurpose::Node, id).await.unwrap(),
            None,
            "deleting node {id} deletes its key"
        );
    }
    assert_eq!(store.list_keys(KeyPurpose::Signing).await.unwrap().len(), 2);
}

/// Records a beat of node `id` at `at(secs)` and reads the node back.
async fn beat(store: &dyn Store, id: &str, secs: i64, ready_version: Option<&str>) -> NodeRecord {
    let beat = NodeBeat {
        at: at(secs),
        ready_version: ready_version.map(str::to_owned),
        boot_timeline: Vec::new(),
    };
    store
        .record_node_beat(&node_id(id), &beat)
        .await
        .expect("record_node_beat");
    store
        .get_node(&node_id(id))
        .await
        .expect("get")
        .expect("exists")
}

/// Reads node `id`, which must exist.
async fn must_get_node(store: &dyn Store, id: &str) -> NodeRecord {
    store
        .get_node(&node_id(id))
        .await
        .expect("get_node")
        .expect("the node exists")
}

/// A node's boot record round-trips, a ready beat sets its timeline (keeping a
/// failure), and a row written without one keeps the stored record.
pub async fn node_boot_record_round_trips_and_is_never_cleared(store: &dyn Store) {
    let phase = |name: &str, start: i64, end: Option<i64>, failed: bool| BootPhaseRecord {
        phase: name.into(),
        started_at: at(start),
        ended_at: end.map(at),
        failed,
    };
    let failed = NodeRecord {
        boot: NodeBootRecord {
            timeline: vec![
                phase("swap", 1, Some(2), false),
                phase("packages", 2, None, true),
            ],
            failure: Some(BootFailure {
                phase: "packages".into(),
                exit_status: 100,
                journal: vec!["PHASE FAILED: packages (exit 100)".into()],
                reported_at: at(3),
            }),
        },
        ..node("failed", 1)
    };
    put(store, failed.clone()).await;
    assert_eq!(
        store.get_node(&failed.id).await.expect("get_node"),
        Some(failed.clone()),
        "the boot record round-trips"
    );
    // A writer holding the row as read before the report writes it back.
    let stale_read = NodeRecord {
        boot: NodeBootRecord::default(),
        status: NodeStatus::Deleted,
        ..failed.clone()
    };
    put(store, stale_read.clone()).await;
    assert_eq!(
        store.get_node(&failed.id).await.expect("get_node"),
        Some(NodeRecord {
            boot: failed.boot.clone(),
            ..stale_read
        }),
        "the row changes, the boot record stays"
    );

    put(store, node("ready", 2)).await;
    let timeline = vec![
        phase("swap", 1, Some(2), false),
        phase("agent", 2, Some(9), false),
    ];
    let beat = NodeBeat {
        at: at(10),
        ready_version: Some("1.0".into()),
        boot_timeline: timeline.clone(),
    };
    store
        .record_node_beat(&node_id("ready"), &beat)
        .await
        .expect("record_node_beat");
    let read = must_get_node(store, "ready").await;
    assert_eq!(
        read.boot.timeline, timeline,
        "a ready beat sets the timeline"
    );
    let heartbeat = NodeBeat {
        at: at(20),
        ready_version: None,
        boot_timeline: Vec::new(),
    };
    store
        .record_node_beat(&node_id("ready"), &heartbeat)
        .await
        .expect("record_node_beat");
    assert_eq!(
        must_get_node(store, "ready").await.boot.timeline,
        timeline,
        "a heartbeat keeps it"
    );
    store
        .record_node_beat(&failed.id, &beat)
        .await
        .expect("record_node_beat");
    assert_eq!(
        must_get_node(store, "failed").await.boot.failure,
        failed.boot.failure,
        "a ready beat keeps a recorded failure"
    );
}

/// A beat changes only the liveness fields: a warm node stays warm, an active one
/// active, whatever the beat read before.
pub async fn record_node_beat_touches_only_liveness(store: &dyn Store) {
    let stale = NodeRecord {
        health: NodeHealth::Stale,
        ..warm_node("warm", 1)
    };
    put(store, stale.clone()).await;
    let read = beat(store, "warm", 50, None).await;
    assert_eq!(
        read,
        NodeRecord {
            health: NodeHealth::Healthy,
            last_heartbeat_at: Some(at(50)),
            updated_at: at(50),
            ..stale
        },
        "a heartbeat sets the beat time and heals a stale node, nothing else"
    );

    let booting = NodeRecord {
        status: NodeStatus::Creating,
        health: NodeHealth::Unhealthy,
        ready_at: None,
        agent_version: None,
        last_heartbeat_at: None,
        ..node("booting", 2)
    };
    put(store, booting.clone()).await;
    let read = beat(store, "booting", 60, Some("1.2.3")).await;
    let expected = NodeRecord {
        status: NodeStatus::Running,
        health: NodeHealth::Healthy,
        ready_at: Some(at(60)),
        agent_version: Some("1.2.3".into()),
        last_heartbeat_at: Some(at(60)),
        updated_at: at(60),
        ..booting
    };
    assert_eq!(
        read, expected,
        "a ready beat makes the node running and ready"
    );
    let read = beat(store, "booting", 70, Some("1.2.4")).await;
    assert_eq!(read.ready_at, Some(at(60)), "ready_at is kept once set");
    assert_eq!(read.agent_version.as_deref(), Some("1.2.4"));
    assert_eq!(read.lifecycle, NodeLifecycle::Active);

    let missing = NodeBeat {
        at: at(80),
        ready_version: None,
        boot_timeline: Vec::new(),
    };
    expect_kind(
        store.record_node_beat(&node_id("nope"), &missing).await,
        StoreErrorKind::NotFound,
        "a beat of a missing node is not found",
    );
}

/// Only a healthy node silent since before `beat_before` turns stale, and only its
/// health changes.
pub async fn mark_node_stale_is_conditional(store: &dyn Store) {
    // Both last beat at `at(11)`.
    put(store, warm_node("warm", 1)).await;
    let mark = |id: &'static str, before: i64| async move {
        store
            .mark_node_stale(&node_id(id), at(before), at(100))
            .await
            .expect("mark_node_stale")
    };
    assert!(!mark("warm", 11).await, "a beat at the limit is not stale");
    let read = store.get_node(&node_id("warm")).await.expect("get");
    assert_eq!(
        read,
        Some(warm_node("warm", 1)),
        "a refused mark writes nothing"
    );
    assert!(
        mark("warm", 12).await,
        "a healthy node silent since before turns stale"
    );
    let read = store.get_node(&node_id("warm")).await.expect("get");
    assert_eq!(
        read,
        Some(NodeRecord {
            health: NodeHealth::Stale,
            updated_at: at(100),
            ..warm_node("warm", 1)
        }),
        "only the health (and updated_at) change: the node stays warm"
    );
    assert!(!mark("warm", 12).await, "a stale node is not marked again");
    expect_kind(
        store
            .mark_node_stale(&node_id("nope"), at(12), at(100))
            .await,
        StoreErrorKind::NotFound,
        "marking a missing node is not found",
    );
}

/// A stopped workspace stays stopped: a late update changes nothing.
pub async fn stopped_workspace_stays_stopped(store: &dyn Store) {
    put(store, node("n-1", 1)).await;
    let ws = workspace("ws-1", "n-1", reservation(1000, 1024, false, 4), 2);
    assert_eq!(reserve(store, &ws).await, SlotOutcome::Reserved);
    let id = workspace_id("ws-1");
    store
        .update_workspace(&id, WorkspaceStatus::Stopped, None, at(5))
        .await
        .expect("update_workspace");
    store
        .update_workspace(&id, WorkspaceStatus::Running, Some("full".into()), at(6))
        .await
        .expect("updating a stopped workspace is not an error");
    let read = store
        .get_workspace(&id)
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(
        (read.status, read.effective_profile, read.updated_at),
        (WorkspaceStatus::Stopped, None, at(5)),
        "a late report does not revive a stopped workspace"
    );
    assert!(
        store
            .release_node_to_warm(&node_id("n-1"), at(7))
            .await
            .expect("release"),
        "its slot stays free"
    );
}

/// `put_node` writes a row that reads back equal and replaces a row with the same id.
pub async fn put_node_replaces_and_round_trips(store: &dyn Store) {
    let first = node("n-1", 1);
    store.put_node(&first).await.expect("put_node");
    assert_eq!(
        store.get_node(&first.id).await.expect("get"),
        Some(first.clone())
    );
    let replaced = NodeRecord {
        status: NodeStatus::Stopping,
        health: NodeHealth::Stale,
        vm_id: None,
        agent_version: None,
        updated_at: at(50),
        ..first.clone()
    };
    store.put_node(&replaced).await.expect("put_node again");
    assert_eq!(
        store.get_node(&first.id).await.expect("get"),
        Some(replaced),
        "put_node replaces the row with the same id"
    );
}

/// Nodes list by `(created_at, id)` and filter by status, lifecycle and provider.
pub async fn list_nodes_is_ordered_and_filters(store: &dyn Store) {
    put(store, node("n-c", 20)).await;
    put(store, warm_node("n-b", 10)).await;
    put(store, node("n-a", 20)).await;
    let gcp = NodeRecord {
        provider: ProviderKind::Gcp,
        status: NodeStatus::Creating,
        ..node("n-d", 5)
    };
    put(store, gcp).await;
    let list = |filter: NodeFilter| async move {
        let nodes = store.list_nodes(&filter).await.expect("list_nodes");
        nodes
            .into_iter()
            .map(|n| n.id.to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        list(NodeFilter::default()).await,
        ["n-d", "n-b", "n-a", "n-c"],
        "ordered"
    );
    let running = NodeFilter {
        statuses: vec![NodeStatus::Running],
        ..Default::default()
    };
    assert_eq!(list(running).await, ["n-b", "n-a", "n-c"], "status filter");
    let warm = NodeFilter {
        lifecycles: vec![NodeLifecycle::Warm],
        ..Default::default()
    };
    assert_eq!(list(warm).await, ["n-b"], "lifecycle filter");
    let gcp = NodeFilter {
        provider: Some(ProviderKind::Gcp),
        ..Default::default()
    };
    assert_eq!(list(gcp).await, ["n-d"], "provider filter");
}

/// Only running, healthy, warm nodes of the exact provider, size and location match.
pub async fn claim_warm_node_matches_exactly(store: &dyn Store) {
    let mismatches = [
        NodeRecord {
            provider: ProviderKind::Scaleway,
            ..warm_node("other-provider", 1)
        },
        NodeRecord {
            size: VmSize::Large,
            ..warm_node("other-size", 2)
        },
        NodeRecord {
            location: location("nbg1"),
            ..warm_node("other-location", 3)
        },
        NodeRecord {
            health: NodeHealth::Stale,
            ..warm_node("stale", 4)
        },
        NodeRecord {
            status: NodeStatus::Stopping,
            ..warm_node("stopping", 5)
        },
        node("active", 6),
        NodeRecord {
            lifecycle: NodeLifecycle::Destroying,
            ..warm_node("destroying", 7)
        },
    ];
    for n in &mismatches {
        store.put_node(n).await.expect("put");
    }
    let none = store
        .claim_warm_node(&warm_claim("t-1", Some(location("fsn1")), 50))
        .await;
    assert_eq!(none.expect("claim"), None, "no node matches every rule");

    put(store, warm_node("fits", 8)).await;
    let got = store
        .claim_warm_node(&warm_claim("t-1", Some(location("fsn1")), 50))
        .await;
    let got = got
        .expect("claim")
        .expect("the matching warm node is claimed");
    assert_eq!(got.id, node_id("fits"));
    assert_eq!(
        got.lifecycle,
        NodeLifecycle::Active,
        "a claimed node is active"
    );
    assert_eq!(got.warm_since, None, "a claimed node is no longer warm");
    let read = store
        .get_node(&node_id("fits"))
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(read, got, "the claim is stored as returned");

    let other = store
        .claim_warm_node(&warm_claim("t-2", None, 50))
        .await
        .expect("claim");
    let other = other.expect("without a location, any location matches");
    assert_eq!(other.id, node_id("other-location"));
}

fn user_owner(id: &str) -> crate::credential::CredentialOwner {
    crate::credential::CredentialOwner::User(crate::model::UserId::new(id).expect("valid id"))
}

fn project_owner(id: &str) -> crate::credential::CredentialOwner {
    crate::credential::CredentialOwner::Project(crate::model::ProjectId::new(id).expect("valid id"))
}

/// A warm node is claimed only for a task of the credential owner that made it: a
/// user's node never goes to another user or to the platform, nor the reverse.
pub async fn claim_warm_node_keeps_to_its_credential_owner(store: &dyn Store) {
    let clause = "claim_warm_node matches the credential owner";
    put(store, warm_node("w-platform", 1)).await;
    put(
        store,
        NodeRecord {
            credential_owner: Some(user_owner("u-a")),
            ..warm_node("w-user-a", 2)
        },
    )
    .await;
    put(
        store,
        NodeRecord {
            credential_owner: Some(project_owner("p-1")),
            ..warm_node("w-project", 3)
        },
    )
    .await;
    let claim = |task: &str, owner: Option<crate::credential::CredentialOwner>| WarmClaim {
        credential_owner: owner,
        ..warm_claim(task, None, 50)
    };
    let stranger = store
        .claim_warm_node(&claim("t-b", Some(user_owner("u-b"))))
        .await
        .expect(clause);
    assert_eq!(
        stranger, None,
        "{clause}: user B gets none of the others' nodes"
    );
    let got = store
        .claim_warm_node(&claim("t-a", Some(user_owner("u-a"))))
        .await
        .expect(clause)
        .expect("user A's warm node is claimed");
    assert_eq!(
        got.id,
        node_id("w-user-a"),
        "{clause}: user A gets their own node, not the older platform one"
    );
    assert_eq!(got.credential_owner, Some(user_owner("u-a")), "{clause}");
    let again = store
        .claim_warm_node(&claim("t-a2", Some(user_owner("u-a"))))
        .await
        .expect(clause);
    assert_eq!(again, None, "{clause}: user A has no other warm node");
    let project = store
        .claim_warm_node(&claim("t-p", Some(project_owner("p-1"))))
        .await
        .expect(clause)
        .expect("the project's warm node is claimed");
    assert_eq!(project.id, node_id("w-project"), "{clause}");
    let platform = store
        .claim_warm_node(&claim("t-x", None))
        .await
        .expect(clause)
        .expect("the platform's warm node is claimed");
    assert_eq!(platform.id, node_id("w-platform"), "{clause}");
}

/// `put_node` and every read keep a node's credential owner, `None` included.
pub async fn nodes_keep_their_credential_owner(store: &dyn Store) {
    let clause = "nodes keep their credential owner";
    // A user id may itself hold a colon; the owner still round-trips.
    let owners = [
        None,
        Some(user_owner("user:42")),
        Some(project_owner("p-1")),
    ];
    for (i, owner) in owners.iter().enumerate() {
        let n = NodeRecord {
            credential_owner: owner.clone(),
            ..node(&format!("n-owner-{i}"), i64::try_from(i).expect("small"))
        };
        put(store, n.clone()).await;
        let read = store.get_node(&n.id).await.expect(clause);
        assert_eq!(read.as_ref(), Some(&n), "{clause}: get_node");
    }
    let listed: Vec<_> = store
        .list_nodes(&NodeFilter::default())
        .await
        .expect(clause)
        .into_iter()
        .map(|n| n.credential_owner)
        .collect();
    assert_eq!(listed, owners, "{clause}: list_nodes");
    // Replacing the row replaces the owner.
    let moved = NodeRecord {
        credential_owner: Some(user_owner("u-2")),
        ..node("n-owner-0", 0)
    };
    put(store, moved.clone()).await;
    let read = store.get_node(&moved.id).await.expect(clause);
    assert_eq!(read, Some(moved), "{clause}: put_node replaces it");
}

/// Of two claims for one warm node, exactly one gets it.
pub async fn claim_warm_node_has_one_winner(store: &dyn Store) {
    put(store, warm_node("n-1", 1)).await;
    let first = store
        .claim_warm_node(&warm_claim("t-1", None, 10))
        .await
        .expect("claim");
    let second = store
        .claim_warm_node(&warm_claim("t-2", None, 11))
        .await
        .expect("claim");
    assert!(first.is_some(), "the first claim wins");
    assert_eq!(second, None, "a claimed node is not claimed again");
}

/// An idle active node goes warm; a busy, warm or missing one does not.
pub async fn release_node_to_warm_only_when_idle(store: &dyn Store) {
    put(store, node("idle", 1)).await;
    put(store, node("busy", 2)).await;
    let ws = workspace("ws-1", "busy", reservation(1000, 1024, false, 4), 3);
    assert_eq!(reserve(store, &ws).await, SlotOutcome::Reserved);

    assert!(
        store
            .release_node_to_warm(&node_id("idle"), at(10))
            .await
            .expect("release")
    );
    let idle = store
        .get_node(&node_id("idle"))
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(
        idle.lifecycle,
        NodeLifecycle::Warm,
        "an idle active node becomes warm"
    );
    assert_eq!(idle.warm_since, Some(at(10)), "warm_since is set");
    let again = store
        .release_node_to_warm(&node_id("idle"), at(20))
        .await
        .expect("release");
    assert!(!again, "a warm node is not active");
    let idle = store
        .get_node(&node_id("idle"))
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(
        idle.warm_since,
        Some(at(10)),
        "a refused release changes nothing"
    );

    let busy = store
        .release_node_to_warm(&node_id("busy"), at(10))
        .await
        .expect("release");
    assert!(!busy, "a node with a slot-holding workspace stays active");
    store
        .update_workspace(&ws.id, WorkspaceStatus::Stopped, None, at(30))
        .await
        .expect("stop workspace");
    let freed = store
        .release_node_to_warm(&node_id("busy"), at(31))
        .await
        .expect("release");
    assert!(freed, "a node whose workspaces stopped can go warm");
    expect_kind(
        store.release_node_to_warm(&node_id("nope"), at(10)).await,
        StoreErrorKind::NotFound,
        "release_node_to_warm of a missing node is NotFound",
    );
}

/// A reservation that the node's remaining capacity cannot cover is rejected.
pub async fn reserve_slot_checks_capacity(store: &dyn Store) {
    put(store, node("n-1", 1)).await;
    let first = workspace("ws-1", "n-1", reservation(3000, 2048, false, 8), 2);
    assert_eq!(reserve(store, &first).await, SlotOutcome::Reserved);
    let too_big = workspace("ws-2", "n-1", reservation(1500, 1024, false, 8), 3);
    let outcome = reserve(store, &too_big).await;
    assert_eq!(
        outcome,
        SlotOutcome::Rejected(SlotRejection::Insufficient {
            resource: "cpu_millis".into(),
            needed: 1500,
            free: 1000,
            total: 4000,
        }),
        "capacity minus live reservations must cover the new one"
    );
    assert_eq!(
        store.get_workspace(&too_big.id).await.expect("get"),
        None,
        "nothing written"
    );
    let fits = workspace("ws-3", "n-1", reservation(1000, 6144, false, 8), 4);
    assert_eq!(reserve(store, &fits).await, SlotOutcome::Reserved);
    let read = store.get_workspace(&fits.id).await.expect("get");
    assert_eq!(
        read,
        Some(fits),
        "a reserved workspace reads back unchanged"
    );
}

/// An exclusive workspace is alone on its node.
pub async fn reserve_slot_keeps_exclusive_alone(store: &dyn Store) {
    put(store, node("n-1", 1)).await;
    put(store, node("n-2", 1)).await;
    let small = |id: &str, node: &str, exclusive| {
        workspace(id, node, reservation(500, 512, exclusive, 8), 2)
    };
    let alone = small("ws-1", "n-1", true);
    assert_eq!(reserve(store, &alone).await, SlotOutcome::Reserved);
    assert_eq!(
        reserve(store, &small("ws-2", "n-1", false)).await,
        SlotOutcome::Rejected(SlotRejection::HeldExclusively),
        "nothing joins an exclusive workspace"
    );
    let shared = small("ws-3", "n-2", false);
    assert_eq!(reserve(store, &shared).await, SlotOutcome::Reserved);
    assert_eq!(
        reserve(store, &small("ws-4", "n-2", true)).await,
        SlotOutcome::Rejected(SlotRejection::NotEmpty { live: 1 }),
        "an exclusive workspace needs an empty node"
    );
}

/// No workspace's `max_co_tenants` is exceeded.
pub async fn reserve_slot_keeps_co_tenant_limit(store: &dyn Store) {
    put(store, node("n-1", 1)).await;
    let ws = |id: &str, limit| workspace(id, "n-1", reservation(100, 100, false, limit), 2);
    assert_eq!(reserve(store, &ws("ws-1", 2)).await, SlotOutcome::Reserved);
    assert_eq!(reserve(store, &ws("ws-2", 8)).await, SlotOutcome::Reserved);
    assert_eq!(
        reserve(store, &ws("ws-3", 8)).await,
        SlotOutcome::Rejected(SlotRejection::TooManyTenants {
            would_hold: 3,
            limit: 2
        }),
        "a live workspace's co-tenant limit holds"
    );
}

/// A status that does not hold a slot frees it; the effective profile is kept.
pub async fn update_workspace_frees_slot(store: &dyn Store) {
    put(store, node("n-1", 1)).await;
    let big = |id: &str| workspace(id, "n-1", reservation(3000, 1024, false, 8), 2);
    assert_eq!(reserve(store, &big("ws-1")).await, SlotOutcome::Reserved);
    let id = workspace_id("ws-1");
    store
        .update_workspace(
            &id,
            WorkspaceStatus::Running,
            Some("lightweight".into()),
            at(5),
        )
        .await
        .expect("update_workspace");
    let read = store
        .get_workspace(&id)
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(read.status, WorkspaceStatus::Running);
    assert_eq!(read.effective_profile.as_deref(), Some("lightweight"));
    assert_eq!(read.updated_at, at(5));
    assert!(
        matches!(
            reserve(store, &big("ws-2")).await,
            SlotOutcome::Rejected(SlotRejection::Insufficient { .. })
        ),
        "a running workspace holds its slot"
    );
    store
        .update_workspace(&id, WorkspaceStatus::Stopped, None, at(6))
        .await
        .expect("update_workspace");
    let read = store
        .get_workspace(&id)
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(
        read.effective_profile.as_deref(),
        Some("lightweight"),
        "None keeps the profile"
    );
    assert_eq!(
        reserve(store, &big("ws-2")).await,
        SlotOutcome::Reserved,
        "a stopped workspace frees its slot"
    );
    expect_kind(
        store
            .update_workspace(&workspace_id("nope"), WorkspaceStatus::Stopped, None, at(7))
            .await,
        StoreErrorKind::NotFound,
        "updating a missing workspace is NotFound",
    );
}

/// Reserving on a missing node is `NotFound`; reusing a workspace id is `AlreadyExists`.
pub async fn reserve_slot_rejects_missing_node_and_taken_id(store: &dyn Store) {
    let orphan = workspace("ws-1", "nope", reservation(100, 100, false, 8), 1);
    expect_kind(
        store.reserve_workspace_slot(&orphan).await,
        StoreErrorKind::NotFound,
        "reserving on a missing node is NotFound",
    );
    put(store, node("n-1", 1)).await;
    let ws = workspace("ws-1", "n-1", reservation(100, 100, false, 8), 1);
    assert_eq!(reserve(store, &ws).await, SlotOutcome::Reserved);
    expect_kind(
        store.reserve_workspace_slot(&ws).await,
        StoreErrorKind::AlreadyExists,
        "a taken workspace id is AlreadyExists",
    );
}

/// Workspaces of a node list by `(created_at, id)`, stopped ones included.
pub async fn list_workspaces_is_ordered(store: &dyn Store) {
    put(store, node("n-1", 1)).await;
    put(store, node("n-2", 1)).await;
    for (id, node, created) in [
        ("ws-c", "n-1", 9),
        ("ws-b", "n-1", 3),
        ("ws-a", "n-1", 9),
        ("ws-x", "n-2", 1),
    ] {
        let ws = workspace(id, node, reservation(100, 100, false, 8), created);
        assert_eq!(reserve(store, &ws).await, SlotOutcome::Reserved);
    }
    store
        .update_workspace(&workspace_id("ws-b"), WorkspaceStatus::Error, None, at(10))
        .await
        .expect("update");
    let list = store
        .list_workspaces(&node_id("n-1"))
        .await
        .expect("list_workspaces");
    let got: Vec<String> = list.iter().map(|w| w.id.to_string()).collect();
    assert_eq!(
        got,
        ["ws-b", "ws-a", "ws-c"],
        "ordered by (created_at, id), one node only"
    );
}

/// The nodes of [`Store::list_placement_candidates`], by id.
async fn candidate_ids(store: &dyn Store, provider: ProviderKind) -> Vec<String> {
    store
        .list_placement_candidates(provider)
        .await
        .expect("list_placement_candidates")
        .iter()
        .map(|c| c.node.id.to_string())
        .collect()
}

/// Checks [`Store::get_placement_candidate`] against the bulk read: every node the
/// bulk read lists reads back alike one by one, `unlisted` nodes read back with their
/// row and slot-holding workspaces, and a node that does not exist is `None`.
async fn one_by_one_matches_bulk(
    store: &dyn Store,
    provider: ProviderKind,
    unlisted: &[(&str, &[&str])],
) {
    let bulk = store
        .list_placement_candidates(provider)
        .await
        .expect("list_placement_candidates");
    for candidate in &bulk {
        let one = store
            .get_placement_candidate(&candidate.node.id)
            .await
            .expect("get_placement_candidate");
        assert_eq!(
            one.as_ref(),
            Some(candidate),
            "node {} reads alike alone and in bulk",
            candidate.node.id
        );
    }
    for (id, workspaces) in unlisted {
        let one = store
            .get_placement_candidate(&node_id(id))
            .await
            .expect("get_placement_candidate")
            .unwrap_or_else(|| panic!("node {id} exists, whatever its state"));
        assert_eq!(one.node.id.as_str(), *id, "the node asked for");
        let got: Vec<&str> = one.workspaces.iter().map(|w| w.id.as_str()).collect();
        assert_eq!(
            got, *workspaces,
            "node {id}: its slot-holding workspaces by (created_at, id)"
        );
    }
    assert_eq!(
        store
            .get_placement_candidate(&node_id("n-never"))
            .await
            .expect("get_placement_candidate"),
        None,
        "a node that does not exist"
    );
}

/// `list_placement_candidates` returns the running, active nodes of one provider in
/// `(created_at, id)` order, each with its slot-holding workspaces in `(created_at, id)`
/// order.
pub async fn placement_candidates_are_running_active_nodes_with_live_slots(store: &dyn Store) {
    put(store, node("n-b", 5)).await;
    put(store, node("n-a", 5)).await;
    put(store, node("n-first", 1)).await;
    put(store, warm_node("n-warm", 0)).await;
    put(
        store,
        NodeRecord {
            status: NodeStatus::Creating,
            ..node("n-creating", 0)
        },
    )
    .await;
    put(
        store,
        NodeRecord {
            lifecycle: NodeLifecycle::Destroying,
            ..node("n-destroying", 0)
        },
    )
    .await;
    put(
        store,
        NodeRecord {
            provider: ProviderKind::Scaleway,
            ..node("n-scaleway", 0)
        },
    )
    .await;
    put(
        store,
        NodeRecord {
            health: NodeHealth::Unhealthy,
            ..node("n-unhealthy", 6)
        },
    )
    .await;
    for (id, on, created) in [
        ("ws-3", "n-a", 9),
        ("ws-2", "n-a", 7),
        ("ws-1", "n-a", 9),
        ("ws-gone", "n-a", 2),
        ("ws-x", "n-b", 8),
        ("ws-s", "n-scaleway", 8),
    ] {
        let ws = workspace(id, on, reservation(100, 100, false, 8), created);
        assert_eq!(reserve(store, &ws).await, SlotOutcome::Reserved);
    }
    store
        .update_workspace(
            &workspace_id("ws-gone"),
            WorkspaceStatus::Stopped,
            None,
            at(10),
        )
        .await
        .expect("update_workspace");
    store
        .update_workspace(
            &workspace_id("ws-1"),
            WorkspaceStatus::Running,
            None,
            at(10),
        )
        .await
        .expect("update_workspace");

    let candidates = store
        .list_placement_candidates(ProviderKind::Hetzner)
        .await
        .expect("list_placement_candidates");
    let got: Vec<(String, Vec<String>)> = candidates
        .iter()
        .map(|c| {
            (
                c.node.id.to_string(),
                c.workspaces.iter().map(|w| w.id.to_string()).collect(),
            )
        })
        .collect();
    let want: Vec<(String, Vec<String>)> = [
        ("n-first", vec![]),
        ("n-a", vec!["ws-2", "ws-1", "ws-3"]),
        ("n-b", vec!["ws-x"]),
        ("n-unhealthy", vec![]),
    ]
    .into_iter()
    .map(|(n, ws)| (n.to_owned(), ws.into_iter().map(str::to_owned).collect()))
    .collect();
    assert_eq!(
        got, want,
        "running, active nodes of the provider by (created_at, id), each with its slot-holding \
         workspaces by (created_at, id)"
    );
    let n_a = &candidates[1];
    assert_eq!(n_a.node, node("n-a", 5), "the node reads back unchanged");
    assert_eq!(
        n_a.workspaces[1].status,
        WorkspaceStatus::Running,
        "workspaces read back as stored"
    );
    assert!(
        candidates.iter().all(|c| c.held_for.is_none()),
        "a node whose creator task does not exist is held for no one"
    );
    assert_eq!(
        candidate_ids(store, ProviderKind::Scaleway).await,
        ["n-scaleway"],
        "one provider only"
    );
    assert!(
        candidate_ids(store, ProviderKind::Gcp).await.is_empty(),
        "no node of a provider is an empty list"
    );
    one_by_one_matches_bulk(
        store,
        ProviderKind::Hetzner,
        &[
            ("n-warm", &[]),
            ("n-creating", &[]),
            ("n-destroying", &[]),
            ("n-scaleway", &["ws-s"]),
        ],
    )
    .await;
}

/// `list_placement_candidates` names the task a node is held for: its creator while
/// that task is live, still names the node and has no workspace on it.
pub async fn placement_candidates_say_which_nodes_are_held(store: &dyn Store) {
    // (node, creator task, creator status, node the creator names)
    let cases = [
        ("n-held", "t-held", TaskStatus::InProgress, "n-held"),
        ("n-queued", "t-queued", TaskStatus::Queued, "n-queued"),
        ("n-ended", "t-ended", TaskStatus::Completed, "n-ended"),
        ("n-moved", "t-moved", TaskStatus::Queued, "n-elsewhere"),
        ("n-taken", "t-taken", TaskStatus::InProgress, "n-taken"),
        (
            "n-stopped",
            "t-stopped",
            TaskStatus::InProgress,
            "n-stopped",
        ),
    ];
    for (i, (node_name, creator, status, names)) in cases.into_iter().enumerate() {
        let created = i64::try_from(i).expect("small");
        let mut t = task(creator, created);
        t.status = status;
        t.provisioned_node_id = Some(node_id(names));
        create(store, t).await;
        put(
            store,
            NodeRecord {
                created_for: Some(task_id(creator)),
                ..node(node_name, created)
            },
        )
        .await;
    }
    put(
        store,
        NodeRecord {
            created_for: None,
            ..node("n-plain", 10)
        },
    )
    .await;
    // The creator took its slot on n-taken; on n-stopped its workspace has already
    // stopped, and that too means the node no longer waits for it.
    for (id, on, creator) in [
        ("ws-t", "n-taken", "t-taken"),
        ("ws-s", "n-stopped", "t-stopped"),
    ] {
        let ws = WorkspaceRecord {
            task_id: task_id(creator),
            ..workspace(id, on, reservation(100, 100, false, 8), 20)
        };
        assert_eq!(reserve(store, &ws).await, SlotOutcome::Reserved);
    }
    store
        .update_workspace(
            &workspace_id("ws-s"),
            WorkspaceStatus::Stopped,
            None,
            at(21),
        )
        .await
        .expect("update_workspace");

    let held: Vec<(String, Option<String>)> = store
        .list_placement_candidates(ProviderKind::Hetzner)
        .await
        .expect("list_placement_candidates")
        .iter()
        .map(|c| {
            (
                c.node.id.to_string(),
                c.held_for.as_ref().map(ToString::to_string),
            )
        })
        .collect();
    let want: Vec<(String, Option<String>)> = [
        ("n-held", Some("t-held")),
        ("n-queued", Some("t-queued")),
        ("n-ended", None),
        ("n-moved", None),
        ("n-taken", None),
        ("n-stopped", None),
        ("n-plain", None),
    ]
    .into_iter()
    .map(|(n, t)| (n.to_owned(), t.map(str::to_owned)))
    .collect();
    assert_eq!(
        held, want,
        "held for the creator only while it is live, names the node and has no workspace there"
    );
    one_by_one_matches_bulk(store, ProviderKind::Hetzner, &[]).await;
}

/// Concurrent claims for one warm node: exactly one wins.
pub async fn concurrent_warm_claims_have_one_winner(store: &dyn Store) {
    for round in 0..5 {
        let nid = format!("warm-{round}");
        put(store, warm_node(&nid, round)).await;
        let claims = (0..4).map(|c| async move {
            let claim = warm_claim(&format!("t-{round}-{c}"), None, 100);
            store
                .claim_warm_node(&claim)
                .await
                .expect("claim_warm_node")
        });
        let won: Vec<_> = join_all(claims).await.into_iter().flatten().collect();
        assert_eq!(
            won.len(),
            1,
            "exactly one concurrent claim wins the warm node"
        );
        assert_eq!(won[0].id.to_string(), nid);
    }
}

/// Concurrent reservations on one node never over-commit it, for generated
/// reservations.
pub async fn concurrent_reservations_never_over_commit(store: &dyn Store) {
    let one = (
        1u64..=16,
        1u64..=32,
        proptest::bool::weighted(0.1),
        1u32..=6,
    )
        .prop_map(|(cpu, mem, exclusive, co)| reservation(cpu * 250, mem * 256, exclusive, co));
    let batch = proptest::collection::vec(one, 2..12);
    let mut runner = TestRunner::deterministic();
    for round in 0..8 {
        let wanted: Vec<Reservation> = batch
            .new_tree(&mut runner)
            .expect("generate reservations")
            .current();
        let nid = format!("n-{round}");
        let n = node(&nid, round);
        put(store, n.clone()).await;
        let attempts = wanted.iter().enumerate().map(|(i, r)| {
            let ws = workspace(&format!("ws-{round}-{i}"), &nid, *r, i as i64);
            async move { reserve(store, &ws).await }
        });
        let outcomes = join_all(attempts).await;
        let live = store.list_workspaces(&n.id).await.expect("list_workspaces");
        let reserved = outcomes
            .iter()
            .filter(|o| **o == SlotOutcome::Reserved)
            .count();
        assert_eq!(
            live.len(),
            reserved,
            "exactly the reserved workspaces are written"
        );
        assert!(
            reserved >= 1,
            "the first reservation on an empty node fits: {wanted:?}"
        );
        let held: Vec<Reservation> = live.iter().map(|w| w.reservation).collect();
        for (i, w) in held.iter().enumerate() {
            let others: Vec<Reservation> = held
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, r)| *r)
                .collect();
            assert_eq!(
                check_slot(&n.capacity, &others, w),
                Ok(()),
                "concurrent reservations broke capacity, exclusivity or co-tenancy: {held:?}"
            );
        }
    }
}
