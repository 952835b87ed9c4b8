//! The conformance suite of the [`Store`] contract.
//!
//! Every case takes a fresh, empty store and checks one clause of the contract
//! (see [`Store`]); it panics with a message naming the clause when the backend
//! breaks it. [`crate::store_conformance!`] turns every case into its own test.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::future::join_all;
use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::TestRunner;

use crate::boot::{BootFailure, BootPhaseRecord, NodeBootRecord};
use crate::credential::{CredentialOwner, CredentialTarget};
use crate::error::{ErrorCategory, StoreErrorKind};
use crate::github::{GithubInstallation, TaskOutput};
use crate::model::UserId;
use crate::model::{
    ExecutionStep, Location, NodeHealth, NodeLifecycle, NodeStatus, ProviderKind, TaskId,
    TaskStatus, VmSize,
};
use crate::reservation::{Reservation, SlotRejection, check_slot};
use crate::scheduler::PlacementExplanation;
use crate::store::{
    LeaseRelease, LeaseReleased, LeaseRequest, NodeBeat, NodeFilter, NodeRecord, SlotOutcome,
    Store, TaskError, TaskFilter, TaskRecord, TaskUpdate, Transition, WarmClaim, WorkspaceRecord,
    WorkspaceStatus,
};
use crate::testkit::fixtures::{
    api_token, at, credential, due_task, full_task, github_installation, location, node, node_id,
    profile, project, project_id, reservation, task, task_id, user, warm_node, workspace,
    workspace_id,
};

/// Expands to one `#[tokio::test]` per conformance case of the [`Store`] contract.
///
/// `$make` is an expression of a future that yields the store (or any [`UnderTest`]);
/// it is evaluated once per case, so every case runs against a fresh store. With `optional`, the future
/// yields `Option<store>` and a `None` skips the case (for servers that are not
/// configured, see [`crate::testkit::required_env`]).
///
/// ```text
/// #[cfg(test)]
/// mod conformance {
///     sam_core::store_conformance!(async { crate::MemoryStore::new() });
/// }
/// ```
#[macro_export]
macro_rules! store_conformance {
    (@cases [] $make:expr; $($case:ident),*) => {$(
        #[tokio::test]
        async fn $case() {
            let store = $make.await;
            $crate::testkit::store::$case($crate::testkit::store::UnderTest::store(&store)).await;
        }
    )*};
    (@cases [optional] $make:expr; $($case:ident),*) => {$(
        #[tokio::test]
        async fn $case() {
            if let Some(store) = $make.await {
                $crate::testkit::store::$case($crate::testkit::store::UnderTest::store(&store))
                    .await;
            }
        }
    )*};
    (@list [$($mode:ident)?] $make:expr) => {
        $crate::store_conformance!(@cases [$($mode)?] $make;
            missing_rows_are_none,
            task_round_trips,
            create_task_twice_is_already_exists,
            create_task_records_submission_event,
            list_tasks_is_ordered,
            list_tasks_filters,
            transition_applies_and_records_event,
            transition_from_stale_status_is_false,
            terminal_task_cannot_leave,
            transition_of_missing_task_is_not_found,
            transition_to_failed_keeps_error,
            set_execution_step_is_idempotent,
            set_execution_step_of_missing_task_is_not_found,
            update_task_sets_and_clears,
            update_of_missing_task_is_not_found,
            claim_due_tasks_leases_only_due_live_tasks,
            claim_due_tasks_respects_limit_and_order,
            claim_skips_held_lease_and_takes_over_expired,
            claim_renews_own_lease,
            claim_leaves_out_the_tasks_excepted,
            release_lease_only_by_owner,
            release_lease_writes_step_and_fields,
            release_lease_by_another_writes_nothing,
            claim_takes_a_new_epoch,
            write_leased_applies_every_write_under_the_lease,
            write_leased_refuses_a_lost_lease,
            write_leased_refuses_an_expired_lease,
            write_leased_writes_nothing_on_a_bad_batch,
            release_lease_with_a_stale_epoch_writes_nothing,
            task_notices_are_kept_in_order,
            a_key_is_written_once,
            terminal_transition_clears_wake_and_lease,
            record_node_beat_touches_only_liveness,
            node_boot_record_round_trips_and_is_never_cleared,
            stopped_workspace_stays_stopped,
            mark_node_stale_is_conditional,
            put_node_replaces_and_round_trips,
            list_nodes_is_ordered_and_filters,
            deletes_are_idempotent,
            claim_warm_node_matches_exactly,
            claim_warm_node_keeps_to_its_credential_owner,
            nodes_keep_their_credential_owner,
            claim_warm_node_has_one_winner,
            release_node_to_warm_only_when_idle,
            reserve_slot_checks_capacity,
            reserve_slot_keeps_exclusive_alone,
            reserve_slot_keeps_co_tenant_limit,
            update_workspace_frees_slot,
            reserve_slot_rejects_missing_node_and_taken_id,
            list_workspaces_is_ordered,
            placement_candidates_are_running_active_nodes_with_live_slots,
            placement_candidates_say_which_nodes_are_held,
            api_tokens_are_found_by_hash,
            api_tokens_are_listed_revoked_and_touched,
            bootstrap_rotation_revokes_the_previous_token,
            github_installation_links_are_per_user,
            put_github_installation_replaces,
            delete_github_installation_keeps_other_users_links,
            concurrent_claimers_claim_each_task_once,
            concurrent_warm_claims_have_one_winner,
            concurrent_reservations_never_over_commit,
            users_round_trip_and_upsert,
            projects_round_trip_and_list_in_order,
            profiles_are_listed_per_project_in_order,
            profile_names_are_unique_per_project,
            profile_of_missing_project_is_not_found,
            deleting_every_profile_leaves_none,
            deleting_a_project_deletes_its_profiles_and_credentials,
            credentials_upsert_per_owner_and_target
        );
    };
    (optional $make:expr) => {
        $crate::store_conformance!(@list [optional] $make);
    };
    ($make:expr) => {
        $crate::store_conformance!(@list [] $make);
    };
}

/// What a conformance test runs against: a store, or a value that owns one (for
/// example together with the temporary directory holding its files).
pub trait UnderTest {
    /// The store to check.
    fn store(&self) -> &dyn Store;
}

impl<S: Store + 'static> UnderTest for S {
    fn store(&self) -> &dyn Store {
        self
    }
}

/// Asserts `result` failed with `kind`, naming the contract `clause` otherwise.
fn expect_kind<T: std::fmt::Debug>(
    result: Result<T, crate::error::StoreError>,
    kind: StoreErrorKind,
    clause: &str,
) {
    match result {
        Err(e) => assert_eq!(e.kind(), kind, "{clause}: wrong error kind ({e})"),
        Ok(v) => panic!("{clause}: expected {kind:?}, got Ok({v:?})"),
    }
}

async fn create(store: &dyn Store, task: TaskRecord) {
    store.create_task(&task).await.expect("create_task");
}

async fn put(store: &dyn Store, node: NodeRecord) {
    store.put_node(&node).await.expect("put_node");
}

async fn reserve(store: &dyn Store, workspace: &WorkspaceRecord) -> SlotOutcome {
    store
        .reserve_workspace_slot(workspace)
        .await
        .expect("reserve_workspace_slot")
}

async fn must_get_task(store: &dyn Store, id: &TaskId) -> TaskRecord {
    store
        .get_task(id)
        .await
        .expect("get_task")
        .unwrap_or_else(|| panic!("task {id} must exist"))
}

fn transition(from: TaskStatus, to: TaskStatus, secs: i64) -> Transition {
    Transition {
        from,
        to,
        actor: "runner".into(),
        reason: Some(format!("{from} to {to}")),
        error: None,
        at: at(secs),
    }
}

fn lease(owner: &str, now: i64, limit: usize) -> LeaseRequest {
    LeaseRequest {
        owner: owner.into(),
        now: at(now),
        lease: Duration::from_secs(30),
        limit,
        except: Vec::new(),
    }
}

fn ids(tasks: &[TaskRecord]) -> Vec<String> {
    tasks.iter().map(|t| t.id.to_string()).collect()
}

fn sorted_ids(tasks: &[TaskRecord]) -> Vec<String> {
    let mut ids = ids(tasks);
    ids.sort();
    ids
}

async fn claim(store: &dyn Store, owner: &str, now: i64, limit: usize) -> Vec<TaskRecord> {
    store
        .claim_due_tasks(&lease(owner, now, limit))
        .await
        .expect("claim_due_tasks")
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

/// Reads of missing rows are `Ok(None)`.
pub async fn missing_rows_are_none(store: &dyn Store) {
    let clause = "reads of missing rows are Ok(None)";
    assert_eq!(
        store.get_task(&task_id("nope")).await.expect(clause),
        None,
        "{clause}"
    );
    assert_eq!(
        store.get_node(&node_id("nope")).await.expect(clause),
        None,
        "{clause}"
    );
    let ws = store.get_workspace(&workspace_id("nope")).await;
    assert_eq!(ws.expect(clause), None, "{clause}");
    let token = store.find_api_token(&"00".repeat(32)).await;
    assert_eq!(token.expect(clause), None, "{clause}");
    assert!(
        store
            .list_status_events(&task_id("nope"))
            .await
            .expect(clause)
            .is_empty()
    );
    assert!(
        store
            .list_workspaces(&node_id("nope"))
            .await
            .expect(clause)
            .is_empty()
    );
}

/// A task with every field set reads back equal, and so does a minimal one.
pub async fn task_round_trips(store: &dyn Store) {
    for record in [full_task("t-full", 1), task("t-min", 2)] {
        create(store, record.clone()).await;
        let read = must_get_task(store, &record.id).await;
        assert_eq!(read, record, "a stored task reads back unchanged");
    }
}

/// For a store just migrated: moves the `queued` task `id` to `cancelled` and checks
/// that the move is recorded as its latest status event, with its actor, reason and
/// time (what an upgrade test asks of a task written before the migration).
pub async fn transition_is_recorded(store: &dyn Store, id: &TaskId) {
    let change = Transition {
        reason: Some("no longer needed".into()),
        actor: "user".into(),
        ..transition(TaskStatus::Queued, TaskStatus::Cancelled, 5)
    };
    assert!(
        store
            .transition_task(id, &change)
            .await
            .expect("transition"),
        "task {id} moves"
    );
    let events = store.list_status_events(id).await.expect("events");
    let last = events.last().expect("an event");
    assert_eq!(
        (
            last.from,
            last.to,
            last.actor.as_str(),
            last.reason.as_deref(),
            last.at
        ),
        (
            Some(TaskStatus::Queued),
            TaskStatus::Cancelled,
            "user",
            Some("no longer needed"),
            at(5)
        ),
        "the move is the latest status event"
    );
}

/// Creating an existing id is `AlreadyExists`, and the first row (and its one status
/// event) stays.
pub async fn create_task_twice_is_already_exists(store: &dyn Store) {
    let first = task("t-1", 1);
    create(store, first.clone()).await;
    let second = TaskRecord {
        spec: full_task("t-1", 2).spec,
        ..first.clone()
    };
    expect_kind(
        store.create_task(&second).await,
        StoreErrorKind::AlreadyExists,
        "creating an existing id is AlreadyExists",
    );
    assert_eq!(
        must_get_task(store, &first.id).await,
        first,
        "the first row stays"
    );
    assert_eq!(
        store
            .list_status_events(&first.id)
            .await
            .expect("events")
            .len(),
        1,
        "the refused creation records no status event"
    );
}

/// `create_task` records the submission as the first status event.
pub async fn create_task_records_submission_event(store: &dyn Store) {
    create(store, task("t-1", 7)).await;
    let events = store
        .list_status_events(&task_id("t-1"))
        .await
        .expect("events");
    assert_eq!(events.len(), 1, "one submission event");
    assert_eq!(events[0].task_id, task_id("t-1"));
    assert_eq!(
        events[0].from, None,
        "the submission has no previous status"
    );
    assert_eq!(events[0].to, TaskStatus::Queued);
    assert_eq!(
        events[0].at,
        at(7),
        "the submission is recorded at created_at"
    );
}

/// Tasks list by `(created_at, id)`, whatever the order of writing.
pub async fn list_tasks_is_ordered(store: &dyn Store) {
    for (id, created) in [("c", 20), ("b", 10), ("a", 20), ("d", 5)] {
        create(store, task(id, created)).await;
    }
    let all = store
        .list_tasks(&TaskFilter::default())
        .await
        .expect("list_tasks");
    assert_eq!(
        ids(&all),
        ["d", "b", "a", "c"],
        "tasks are ordered by (created_at, id)"
    );
}

/// Task filters: statuses, node, the `after` cursor and the limit.
pub async fn list_tasks_filters(store: &dyn Store) {
    for (i, id) in ["a", "b", "c", "d", "e"].into_iter().enumerate() {
        let mut t = task(id, i as i64);
        if id == "b" || id == "d" {
            t.status = TaskStatus::InProgress;
            t.provisioned_node_id = Some(node_id("n-1"));
        }
        create(store, t).await;
    }
    let list =
        |filter: TaskFilter| async move { ids(&store.list_tasks(&filter).await.expect("list")) };
    let in_progress = TaskFilter {
        statuses: vec![TaskStatus::InProgress],
        ..Default::default()
    };
    assert_eq!(list(in_progress).await, ["b", "d"], "status filter");
    let both = TaskFilter {
        statuses: vec![TaskStatus::Queued, TaskStatus::InProgress],
        ..Default::default()
    };
    assert_eq!(
        list(both).await,
        ["a", "b", "c", "d", "e"],
        "several statuses"
    );
    let on_node = TaskFilter {
        node: Some(node_id("n-1")),
        ..Default::default()
    };
    assert_eq!(list(on_node).await, ["b", "d"], "node filter");
    let page = TaskFilter {
        after: Some(task_id("b")),
        limit: Some(2),
        ..Default::default()
    };
    assert_eq!(
        list(page).await,
        ["c", "d"],
        "the cursor starts after `after`, limit caps"
    );
    let last = TaskFilter {
        after: Some(task_id("e")),
        ..Default::default()
    };
    assert!(list(last).await.is_empty(), "nothing after the last task");
}

/// An optimistic transition applies, sets `updated_at` and records an event.
pub async fn transition_applies_and_records_event(store: &dyn Store) {
    create(store, task("t-1", 1)).await;
    let applied = store
        .transition_task(
            &task_id("t-1"),
            &transition(TaskStatus::Queued, TaskStatus::Delegated, 50),
        )
        .await
        .expect("transition_task");
    assert!(applied, "a transition from the current status applies");
    let read = must_get_task(store, &task_id("t-1")).await;
    assert_eq!(read.status, TaskStatus::Delegated);
    assert_eq!(read.updated_at, at(50), "a transition sets updated_at");
    let events = store
        .list_status_events(&task_id("t-1"))
        .await
        .expect("events");
    assert_eq!(events.len(), 2, "submission plus the transition");
    let last = &events[1];
    assert_eq!(last.from, Some(TaskStatus::Queued));
    assert_eq!(last.to, TaskStatus::Delegated);
    assert_eq!(last.actor, "runner");
    assert_eq!(last.reason.as_deref(), Some("queued to delegated"));
    assert_eq!(last.at, at(50));
}

/// A transition whose `from` is stale returns `false` and changes nothing.
pub async fn transition_from_stale_status_is_false(store: &dyn Store) {
    create(store, task("t-1", 1)).await;
    let id = task_id("t-1");
    let step = transition(TaskStatus::Queued, TaskStatus::Delegated, 10);
    assert!(store.transition_task(&id, &step).await.expect("first"));
    let stale = transition(TaskStatus::Queued, TaskStatus::Cancelled, 20);
    let applied = store
        .transition_task(&id, &stale)
        .await
        .expect("stale transition");
    assert!(!applied, "a transition from a stale status does not apply");
    let read = must_get_task(store, &id).await;
    assert_eq!(
        read.status,
        TaskStatus::Delegated,
        "the status is unchanged"
    );
    assert_eq!(read.updated_at, at(10), "updated_at is unchanged");
    let events = store.list_status_events(&id).await.expect("events");
    assert_eq!(
        events.len(),
        2,
        "no event for a transition that did not apply"
    );
}

/// Nothing leaves a terminal status: such a move is `InvalidInput`.
pub async fn terminal_task_cannot_leave(store: &dyn Store) {
    create(store, task("t-1", 1)).await;
    let id = task_id("t-1");
    let done = transition(TaskStatus::Queued, TaskStatus::Completed, 10);
    assert!(store.transition_task(&id, &done).await.expect("complete"));
    for to in [
        TaskStatus::Queued,
        TaskStatus::InProgress,
        TaskStatus::Failed,
    ] {
        expect_kind(
            store
                .transition_task(&id, &transition(TaskStatus::Completed, to, 20))
                .await,
            StoreErrorKind::InvalidInput,
            "a move can_transition_to forbids is InvalidInput",
        );
    }
    expect_kind(
        store
            .transition_task(
                &id,
                &transition(TaskStatus::InProgress, TaskStatus::Queued, 20),
            )
            .await,
        StoreErrorKind::InvalidInput,
        "a backward move is InvalidInput",
    );
    assert_eq!(
        must_get_task(store, &id).await.status,
        TaskStatus::Completed
    );
}

/// Transitioning a missing task is `NotFound`.
pub async fn transition_of_missing_task_is_not_found(store: &dyn Store) {
    expect_kind(
        store
            .transition_task(
                &task_id("nope"),
                &transition(TaskStatus::Queued, TaskStatus::Delegated, 1),
            )
            .await,
        StoreErrorKind::NotFound,
        "updates of missing rows are NotFound",
    );
}

/// A move to `failed` keeps the error it carries.
pub async fn transition_to_failed_keeps_error(store: &dyn Store) {
    create(store, task("t-1", 1)).await;
    let error = TaskError {
        category: ErrorCategory::QuotaExceeded,
        message: "The Hetzner project has reached its server limit".into(),
    };
    let change = Transition {
        error: Some(error.clone()),
        ..transition(TaskStatus::Queued, TaskStatus::Failed, 9)
    };
    assert!(
        store
            .transition_task(&task_id("t-1"), &change)
            .await
            .expect("fail")
    );
    let read = must_get_task(store, &task_id("t-1")).await;
    assert_eq!(read.status, TaskStatus::Failed);
    assert_eq!(read.error, Some(error), "the failure's error is stored");
}

/// Writing the current step again changes nothing, `updated_at` included.
pub async fn set_execution_step_is_idempotent(store: &dyn Store) {
    create(store, task("t-1", 1)).await;
    let id = task_id("t-1");
    let changed = store
        .set_execution_step(&id, ExecutionStep::NodeProvisioning, at(10))
        .await
        .expect("new step");
    assert!(changed, "a new step is written");
    let read = must_get_task(store, &id).await;
    assert_eq!(read.execution_step, ExecutionStep::NodeProvisioning);
    assert_eq!(
        read.step_started_at,
        at(10),
        "a new step sets step_started_at"
    );
    assert_eq!(read.updated_at, at(10), "a new step sets updated_at");
    let again = store
        .set_execution_step(&id, ExecutionStep::NodeProvisioning, at(99))
        .await
        .expect("same step");
    assert!(!again, "writing the current step again returns false");
    let reread = must_get_task(store, &id).await;
    assert_eq!(
        reread, read,
        "writing the current step again changes nothing"
    );
}

/// Setting the step of a missing task is `NotFound`.
pub async fn set_execution_step_of_missing_task_is_not_found(store: &dyn Store) {
    expect_kind(
        store
            .set_execution_step(&task_id("nope"), ExecutionStep::Running, at(1))
            .await,
        StoreErrorKind::NotFound,
        "updates of missing rows are NotFound",
    );
}

/// `update_task` sets given fields, clears `Some(None)` ones, leaves the rest.
pub async fn update_task_sets_and_clears(store: &dyn Store) {
    create(store, task("t-1", 1)).await;
    let id = task_id("t-1");
    let placement = PlacementExplanation {
        chosen: "new medium in fsn1".into(),
        reason: "no node had room".into(),
        rejected: vec![],
    };
    let set = TaskUpdate {
        placement: Some(Some(placement.clone())),
        provisioned_node_id: Some(Some(node_id("n-1"))),
        provisioned_size: Some(Some(VmSize::Small)),
        provisioned_location: Some(Some(location("nbg1"))),
        workspace_id: Some(Some(workspace_id("ws-1"))),
        next_wake_at: Some(Some(at(40))),
        provisioning_started_at: Some(Some(at(30))),
        capacity_passes: Some(2),
        node_replacements: Some(3),
        output: Some(Some(TaskOutput {
            branch: "sam/fix-1".into(),
            commit: Some("abc123".into()),
            pull_request_url: None,
        })),
    };
    store
        .update_task(&id, &set, at(20))
        .await
        .expect("update_task");
    let read = must_get_task(store, &id).await;
    let expected = TaskRecord {
        placement: Some(placement.clone()),
        provisioned_node_id: Some(node_id("n-1")),
        provisioned_size: Some(VmSize::Small),
        provisioned_location: Some(location("nbg1")),
        workspace_id: Some(workspace_id("ws-1")),
        next_wake_at: Some(at(40)),
        provisioning_started_at: Some(at(30)),
        capacity_passes: 2,
        node_replacements: 3,
        output: Some(TaskOutput {
            branch: "sam/fix-1".into(),
            commit: Some("abc123".into()),
            pull_request_url: None,
        }),
        updated_at: at(20),
        ..task("t-1", 1)
    };
    assert_eq!(
        read, expected,
        "update_task sets every given field and updated_at"
    );

    let clear = TaskUpdate {
        provisioned_node_id: Some(None),
        next_wake_at: Some(None),
        ..Default::default()
    };
    store
        .update_task(&id, &clear, at(25))
        .await
        .expect("update_task");
    let read = must_get_task(store, &id).await;
    let expected = TaskRecord {
        provisioned_node_id: None,
        next_wake_at: None,
        updated_at: at(25),
        ..expected
    };
    assert_eq!(
        read, expected,
        "Some(None) clears, None leaves a field alone"
    );
}

/// Updating a missing task is `NotFound`.
pub async fn update_of_missing_task_is_not_found(store: &dyn Store) {
    expect_kind(
        store
            .update_task(&task_id("nope"), &TaskUpdate::default(), at(1))
            .await,
        StoreErrorKind::NotFound,
        "updates of missing rows are NotFound",
    );
}

/// Only live tasks that are due are leased; leasing leaves `updated_at` alone.
pub async fn claim_due_tasks_leases_only_due_live_tasks(store: &dyn Store) {
    create(store, due_task("due", 1, 10)).await;
    create(store, due_task("exactly-due", 2, 100)).await;
    create(store, due_task("later", 3, 500)).await;
    create(store, task("no-wake", 4)).await;
    let done = TaskRecord {
        status: TaskStatus::Completed,
        ..due_task("done", 5, 10)
    };
    create(store, done).await;

    let claimed = claim(store, "a", 100, 10).await;
    let got = sorted_ids(&claimed);
    assert_eq!(
        got,
        ["due", "exactly-due"],
        "only live, due tasks are leased"
    );
    for t in &claimed {
        assert_eq!(
            t.lease_owner.as_deref(),
            Some("a"),
            "the returned task shows the lease"
        );
        assert_eq!(
            t.lease_expires_at,
            Some(at(130)),
            "the lease ends at now + lease"
        );
    }
    let read = must_get_task(store, &task_id("due")).await;
    assert_eq!(
        read.lease_owner.as_deref(),
        Some("a"),
        "the lease is stored"
    );
    assert_eq!(read.lease_expires_at, Some(at(130)));
    assert_eq!(read.updated_at, at(1), "leasing does not touch updated_at");
    let later = must_get_task(store, &task_id("later")).await;
    assert_eq!(later.lease_owner, None, "a task not yet due is not leased");
}

/// At most `limit` tasks are leased, the earliest due first.
pub async fn claim_due_tasks_respects_limit_and_order(store: &dyn Store) {
    for (id, wake) in [("w3", 30), ("w1", 10), ("w2", 20), ("w4", 40)] {
        create(store, due_task(id, 1, wake)).await;
    }
    let first = claim(store, "a", 100, 2).await;
    let got = sorted_ids(&first);
    assert_eq!(
        got,
        ["w1", "w2"],
        "the earliest due tasks are leased first, up to limit"
    );
    let second = claim(store, "b", 100, 10).await;
    let got = sorted_ids(&second);
    assert_eq!(got, ["w3", "w4"], "another owner gets the rest");
}

/// A held lease keeps others out; an expired one can be taken over.
pub async fn claim_skips_held_lease_and_takes_over_expired(store: &dyn Store) {
    create(store, due_task("t-1", 1, 10)).await;
    assert_eq!(claim(store, "a", 100, 10).await.len(), 1);
    let during = claim(store, "b", 129, 10).await;
    assert!(
        during.is_empty(),
        "two callers never receive a task while a lease holds"
    );
    let after = claim(store, "b", 130, 10).await;
    assert_eq!(ids(&after), ["t-1"], "an expired lease can be taken over");
    let read = must_get_task(store, &task_id("t-1")).await;
    assert_eq!(read.lease_owner.as_deref(), Some("b"));
    assert_eq!(read.lease_expires_at, Some(at(160)));
    assert_eq!(read.updated_at, at(1), "leasing does not touch updated_at");
}

/// A caller may claim a task it already holds, which renews the lease.
pub async fn claim_renews_own_lease(store: &dyn Store) {
    create(store, due_task("t-1", 1, 10)).await;
    claim(store, "a", 100, 10).await;
    let again = claim(store, "a", 110, 10).await;
    assert_eq!(
        ids(&again),
        ["t-1"],
        "a lease already the caller's can be claimed again"
    );
    let read = must_get_task(store, &task_id("t-1")).await;
    assert_eq!(
        read.lease_expires_at,
        Some(at(140)),
        "claiming again renews the lease"
    );
}

/// Tasks in `except` are left out, even the caller's own, and do not count towards
/// the limit; the lease they hold is left as it was.
pub async fn claim_leaves_out_the_tasks_excepted(store: &dyn Store) {
    for (id, wake) in [("t-1", 10), ("t-2", 20), ("t-3", 30)] {
        create(store, due_task(id, 1, wake)).await;
    }
    claim(store, "a", 100, 1).await;
    let request = LeaseRequest {
        except: vec![task_id("t-1"), task_id("t-2")],
        ..lease("a", 110, 1)
    };
    let got = store
        .claim_due_tasks(&request)
        .await
        .expect("claim_due_tasks");
    assert_eq!(ids(&got), ["t-3"], "the excepted tasks are left out");
    let held = must_get_task(store, &task_id("t-1")).await;
    assert_eq!(
        held.lease_expires_at,
        Some(at(130)),
        "an excepted task's lease is not renewed"
    );
    let free = must_get_task(store, &task_id("t-2")).await;
    assert_eq!(
        free.lease_owner, None,
        "an excepted free task is not leased"
    );
}

/// Only the owner can give a lease back; then anyone can claim the task.
pub async fn release_lease_only_by_owner(store: &dyn Store) {
    create(store, due_task("t-1", 1, 10)).await;
    let id = task_id("t-1");
    claim(store, "a", 100, 10).await;
    let plain = |owner: &str| LeaseRelease::plain(owner, at(100));
    assert_eq!(
        store
            .release_lease(&id, &plain("b"))
            .await
            .expect("release"),
        LeaseReleased::NotHeld,
        "b holds no lease"
    );
    assert_eq!(
        store
            .release_lease(&id, &plain("a"))
            .await
            .expect("release"),
        LeaseReleased::Released {
            step_changed: false
        },
        "a holds the lease"
    );
    let read = must_get_task(store, &id).await;
    assert_eq!(
        (read.lease_owner, read.lease_expires_at),
        (None, None),
        "the lease is cleared"
    );
    assert_eq!(
        read.updated_at,
        at(1),
        "releasing does not touch updated_at"
    );
    assert_eq!(
        store
            .release_lease(&id, &plain("a"))
            .await
            .expect("release"),
        LeaseReleased::NotHeld,
        "already released"
    );
    let claimed = claim(store, "b", 101, 10).await;
    assert_eq!(
        ids(&claimed),
        ["t-1"],
        "a released task can be claimed at once"
    );
    assert_eq!(
        store
            .release_lease(&task_id("nope"), &plain("a"))
            .await
            .expect("missing task"),
        LeaseReleased::NotHeld
    );
}

fn held(owner: &str, task: &str, epoch: u64) -> crate::store::Lease {
    crate::store::Lease {
        task: task_id(task),
        owner: owner.into(),
        epoch,
    }
}

/// Every claim takes the next epoch: a renewal by the same owner, and a takeover.
pub async fn claim_takes_a_new_epoch(store: &dyn Store) {
    create(store, due_task("t-1", 1, 10)).await;
    let clause = "every claim sets lease_epoch to one more than the row had";
    assert_eq!(
        claim(store, "a", 100, 10).await[0].lease_epoch,
        1,
        "{clause}"
    );
    assert_eq!(
        claim(store, "a", 110, 10).await[0].lease_epoch,
        2,
        "{clause}"
    );
    assert_eq!(
        claim(store, "b", 140, 10).await[0].lease_epoch,
        3,
        "{clause}"
    );
    let read = must_get_task(store, &task_id("t-1")).await;
    assert_eq!(read.lease_epoch, 3, "the epoch is stored");
}

/// Under a held lease every write applies, in order, each as its own method would.
pub async fn write_leased_applies_every_write_under_the_lease(store: &dyn Store) {
    use crate::store::LeasedWrite;
    create(store, due_task("t-1", 1, 10)).await;
    claim(store, "a", 100, 10).await;
    let writes = [
        LeasedWrite::Renew { until: at(200) },
        LeasedWrite::Step(ExecutionStep::NodeProvisioning),
        LeasedWrite::Update(TaskUpdate {
            capacity_passes: Some(2),
            provisioned_node_id: Some(Some(node_id("n-1"))),
            ..TaskUpdate::default()
        }),
        LeasedWrite::PutNode(Box::new(node("n-1", 110))),
        LeasedWrite::Transition(transition(TaskStatus::Queued, TaskStatus::Delegated, 110)),
    ];
    let outcome = store
        .write_leased(&held("a", "t-1", 1), at(110), &writes)
        .await
        .expect("write_leased under a held lease");
    assert!(outcome.step_changed, "the step moved");
    assert!(outcome.transitioned, "the transition applied");
    let read = must_get_task(store, &task_id("t-1")).await;
    assert_eq!(read.lease_expires_at, Some(at(200)), "the lease is renewed");
    assert_eq!(read.execution_step, ExecutionStep::NodeProvisioning);
    assert_eq!(read.step_started_at, at(110));
    assert_eq!(read.capacity_passes, 2);
    assert_eq!(read.status, TaskStatus::Delegated);
    assert_eq!(
        read.lease_owner.as_deref(),
        Some("a"),
        "the lease stays held"
    );
    let events = store.list_status_events(&task_id("t-1")).await.unwrap();
    assert_eq!(events.last().map(|e| e.to), Some(TaskStatus::Delegated));
    assert!(store.get_node(&node_id("n-1")).await.unwrap().is_some());
    // The renewed lease holds past the claim's end, and a repeated step is no change.
    let again = store
        .write_leased(
            &held("a", "t-1", 1),
            at(150),
            &[
                LeasedWrite::Step(ExecutionStep::NodeProvisioning),
                LeasedWrite::DeleteNode(node_id("n-1")),
            ],
        )
        .await
        .expect("a renewed lease holds past the claim's end");
    assert!(!again.step_changed, "a step the task is in is no change");
    assert!(store.get_node(&node_id("n-1")).await.unwrap().is_none());
}

/// A driver whose lease was taken over, or who holds an older epoch of its own,
/// can neither write nor renew: `LeaseLost`, and nothing is written.
pub async fn write_leased_refuses_a_lost_lease(store: &dyn Store) {
    use crate::store::LeasedWrite;
    let clause = "a write under a lost lease is LeaseLost and writes nothing";
    create(store, due_task("t-1", 1, 10)).await;
    claim(store, "a", 100, 10).await;
    claim(store, "b", 130, 10).await;
    let writes = [
        LeasedWrite::Update(TaskUpdate {
            capacity_passes: Some(9),
            ..TaskUpdate::default()
        }),
        LeasedWrite::PutNode(Box::new(node("n-1", 131))),
    ];
    let lost = store
        .write_leased(&held("a", "t-1", 1), at(131), &writes)
        .await;
    match &lost {
        Err(e) => {
            let text = e.to_string();
            assert!(
                text.contains("epoch 1") && text.contains("b's") && text.contains("epoch 2"),
                "the error names both leases: {text}"
            );
        }
        Ok(o) => panic!("{clause}: got Ok({o:?})"),
    }
    expect_kind(lost, StoreErrorKind::LeaseLost, clause);
    let renew = [LeasedWrite::Renew { until: at(999) }];
    expect_kind(
        store
            .write_leased(&held("a", "t-1", 1), at(131), &renew)
            .await,
        StoreErrorKind::LeaseLost,
        "a lease renewed after it was lost",
    );
    // The right owner with a stale epoch is refused too.
    claim(store, "b", 140, 10).await;
    expect_kind(
        store
            .write_leased(&held("b", "t-1", 2), at(141), &writes)
            .await,
        StoreErrorKind::LeaseLost,
        "a write with a stale epoch",
    );
    let read = must_get_task(store, &task_id("t-1")).await;
    assert_eq!(read.capacity_passes, 0, "{clause}");
    assert_eq!(read.lease_expires_at, Some(at(170)), "{clause}");
    assert!(
        store.get_node(&node_id("n-1")).await.unwrap().is_none(),
        "{clause}"
    );
    store
        .write_leased(&held("b", "t-1", 3), at(141), &writes)
        .await
        .expect("the current holder writes");
    expect_kind(
        store
            .write_leased(&held("a", "t-9", 1), at(141), &writes)
            .await,
        StoreErrorKind::NotFound,
        "a missing task is NotFound",
    );
}

/// A lease that expired is lost even before anyone takes it over.
pub async fn write_leased_refuses_an_expired_lease(store: &dyn Store) {
    use crate::store::LeasedWrite;
    create(store, due_task("t-1", 1, 10)).await;
    claim(store, "a", 100, 10).await;
    let renew = [LeasedWrite::Renew { until: at(200) }];
    expect_kind(
        store
            .write_leased(&held("a", "t-1", 1), at(130), &renew)
            .await,
        StoreErrorKind::LeaseLost,
        "a lease is lost once it expired",
    );
    let read = must_get_task(store, &task_id("t-1")).await;
    assert_eq!(read.lease_expires_at, Some(at(130)), "nothing was written");
}

/// A batch with a forbidden transition is refused before any of it is written.
pub async fn write_leased_writes_nothing_on_a_bad_batch(store: &dyn Store) {
    use crate::store::LeasedWrite;
    create(store, due_task("t-1", 1, 10)).await;
    claim(store, "a", 100, 10).await;
    let writes = [
        LeasedWrite::PutNode(Box::new(node("n-1", 110))),
        LeasedWrite::Transition(transition(TaskStatus::Queued, TaskStatus::Queued, 110)),
    ];
    expect_kind(
        store
            .write_leased(&held("a", "t-1", 1), at(110), &writes)
            .await,
        StoreErrorKind::InvalidInput,
        "a forbidden transition in a leased batch",
    );
    assert!(
        store.get_node(&node_id("n-1")).await.unwrap().is_none(),
        "nothing of a refused batch is written"
    );
}

/// Notices are numbered per task in the order written, whether added directly or
/// under the lease, and a lost lease adds none.
pub async fn task_notices_are_kept_in_order(store: &dyn Store) {
    use crate::store::{LeasedWrite, TaskNotice};
    create(store, due_task("t-1", 1, 10)).await;
    create(store, due_task("t-2", 1, 10)).await;
    let capacity = TaskNotice::CapacityUnavailable {
        size: VmSize::Large,
        location: location("fsn1"),
    };
    let downgrade = TaskNotice::Downgraded {
        requested: VmSize::Large,
        provisioned: VmSize::Medium,
    };
    let waiting = TaskNotice::WaitingForCapacity {
        passes: 2,
        until: at(300),
    };
    store
        .add_task_notice(&task_id("t-1"), at(100), &capacity)
        .await
        .expect("add_task_notice");
    claim(store, "a", 100, 1).await;
    store
        .write_leased(
            &held("a", "t-1", 1),
            at(110),
            &[
                LeasedWrite::Notice(waiting.clone()),
                LeasedWrite::Notice(downgrade.clone()),
            ],
        )
        .await
        .expect("notices under the lease");
    claim(store, "b", 200, 1).await;
    expect_kind(
        store
            .write_leased(
                &held("a", "t-1", 1),
                at(201),
                &[LeasedWrite::Notice(capacity.clone())],
            )
            .await,
        StoreErrorKind::LeaseLost,
        "a notice under a lost lease",
    );
    let notices = store.list_task_notices(&task_id("t-1")).await.unwrap();
    let seen: Vec<(u64, chrono::DateTime<chrono::Utc>, TaskNotice)> = notices
        .into_iter()
        .map(|n| (n.seq, n.at, n.notice))
        .collect();
    assert_eq!(
        seen,
        [
            (1, at(100), capacity),
            (2, at(110), waiting),
            (3, at(110), downgrade)
        ],
        "notices are kept in order, numbered per task"
    );
    assert!(
        store
            .list_task_notices(&task_id("t-2"))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .list_task_notices(&task_id("t-9"))
            .await
            .unwrap()
            .is_empty()
    );
    expect_kind(
        store
            .add_task_notice(
                &task_id("t-9"),
                at(1),
                &TaskNotice::Downgraded {
                    requested: VmSize::Large,
                    provisioned: VmSize::Small,
                },
            )
            .await,
        StoreErrorKind::NotFound,
        "a notice for a missing task",
    );
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

/// A release naming an epoch the row no longer has writes nothing.
pub async fn release_lease_with_a_stale_epoch_writes_nothing(store: &dyn Store) {
    create(store, due_task("t-1", 1, 10)).await;
    claim(store, "a", 100, 10).await;
    claim(store, "a", 110, 10).await;
    let mut stale = release(
        "a",
        Some(ExecutionStep::NodeProvisioning),
        TaskUpdate::default(),
        111,
    );
    stale.epoch = Some(1);
    assert_eq!(
        store.release_lease(&task_id("t-1"), &stale).await.unwrap(),
        LeaseReleased::NotHeld,
        "a release at a stale epoch is NotHeld"
    );
    let read = must_get_task(store, &task_id("t-1")).await;
    assert_eq!(read.lease_owner.as_deref(), Some("a"), "the lease stays");
    assert_eq!(read.execution_step, ExecutionStep::NodeSelection);
    stale.epoch = Some(2);
    assert!(matches!(
        store.release_lease(&task_id("t-1"), &stale).await.unwrap(),
        LeaseReleased::Released { step_changed: true }
    ));
}

fn release(
    owner: &str,
    step: Option<ExecutionStep>,
    update: TaskUpdate,
    secs: i64,
) -> LeaseRelease {
    LeaseRelease {
        owner: owner.into(),
        epoch: None,
        step,
        update,
        at: at(secs),
    }
}

/// A release by the holder writes its step and fields with the lease, in one write;
/// the step is idempotent as in `set_execution_step`.
pub async fn release_lease_writes_step_and_fields(store: &dyn Store) {
    create(store, due_task("t-1", 1, 10)).await;
    let id = task_id("t-1");
    claim(store, "a", 100, 10).await;
    let wake = TaskUpdate {
        next_wake_at: Some(Some(at(150))),
        workspace_id: Some(Some(workspace_id("ws-1"))),
        ..TaskUpdate::default()
    };
    let done = store
        .release_lease(
            &id,
            &release("a", Some(ExecutionStep::WorkspaceReady), wake, 120),
        )
        .await
        .expect("release_lease");
    assert_eq!(done, LeaseReleased::Released { step_changed: true });
    let read = must_get_task(store, &id).await;
    assert_eq!(
        (read.lease_owner.as_deref(), read.lease_expires_at),
        (None, None),
        "the lease is free"
    );
    assert_eq!(read.execution_step, ExecutionStep::WorkspaceReady);
    assert_eq!(
        read.step_started_at,
        at(120),
        "a new step sets step_started_at"
    );
    assert_eq!(read.next_wake_at, Some(at(150)), "the update is written");
    assert_eq!(read.workspace_id, Some(workspace_id("ws-1")));
    assert_eq!(read.updated_at, at(120), "a change sets updated_at");

    claim(store, "a", 150, 10).await;
    let again = TaskUpdate {
        next_wake_at: Some(Some(at(200))),
        ..TaskUpdate::default()
    };
    let done = store
        .release_lease(
            &id,
            &release("a", Some(ExecutionStep::WorkspaceReady), again, 160),
        )
        .await
        .expect("release_lease");
    assert_eq!(
        done,
        LeaseReleased::Released {
            step_changed: false
        },
        "the step the task is in does not move"
    );
    let read = must_get_task(store, &id).await;
    assert_eq!(
        read.step_started_at,
        at(120),
        "a repeated step keeps step_started_at"
    );
    assert_eq!(read.next_wake_at, Some(at(200)));

    claim(store, "a", 200, 10).await;
    let plain = store
        .release_lease(&id, &LeaseRelease::plain("a", at(210)))
        .await
        .expect("release_lease");
    assert_eq!(
        plain,
        LeaseReleased::Released {
            step_changed: false
        }
    );
    let read = must_get_task(store, &id).await;
    assert_eq!(
        read.updated_at,
        at(160),
        "a release that changes nothing else does not touch updated_at"
    );
}

/// A release by anyone but the holder writes nothing, not even its step or fields.
pub async fn release_lease_by_another_writes_nothing(store: &dyn Store) {
    create(store, due_task("t-1", 1, 10)).await;
    let id = task_id("t-1");
    claim(store, "a", 100, 10).await;
    let before = must_get_task(store, &id).await;
    let wake = TaskUpdate {
        next_wake_at: Some(Some(at(999))),
        ..TaskUpdate::default()
    };
    let done = store
        .release_lease(&id, &release("b", Some(ExecutionStep::Running), wake, 120))
        .await
        .expect("release_lease");
    assert_eq!(done, LeaseReleased::NotHeld, "b holds no lease");
    assert_eq!(
        must_get_task(store, &id).await,
        before,
        "a release by another owner changes nothing"
    );
    let missing = store
        .release_lease(&task_id("nope"), &LeaseRelease::plain("a", at(120)))
        .await
        .expect("a missing task is not an error");
    assert_eq!(missing, LeaseReleased::NotHeld);
}

/// A move to a terminal status clears the wake-up and the lease with it.
pub async fn terminal_transition_clears_wake_and_lease(store: &dyn Store) {
    create(store, due_task("t-1", 1, 10)).await;
    create(store, due_task("t-2", 2, 10)).await;
    claim(store, "a", 100, 10).await;
    let live = transition(TaskStatus::Queued, TaskStatus::Delegated, 110);
    assert!(
        store
            .transition_task(&task_id("t-2"), &live)
            .await
            .expect("transition_task")
    );
    let read = must_get_task(store, &task_id("t-2")).await;
    assert_eq!(
        (read.next_wake_at, read.lease_owner.as_deref()),
        (Some(at(10)), Some("a")),
        "a move to a live status keeps the wake-up and the lease"
    );
    let end = transition(TaskStatus::Queued, TaskStatus::Cancelled, 120);
    assert!(
        store
            .transition_task(&task_id("t-1"), &end)
            .await
            .expect("transition_task")
    );
    let read = must_get_task(store, &task_id("t-1")).await;
    assert_eq!(read.status, TaskStatus::Cancelled);
    assert_eq!(
        (read.next_wake_at, read.lease_owner, read.lease_expires_at),
        (None, None, None),
        "a terminal move clears the wake-up and the lease"
    );
    let held = store
        .release_lease(&task_id("t-1"), &LeaseRelease::plain("a", at(130)))
        .await
        .expect("release_lease");
    assert_eq!(held, LeaseReleased::NotHeld, "the lease went with the move");
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

/// Deleting a missing row succeeds; deleting twice succeeds.
pub async fn deletes_are_idempotent(store: &dyn Store) {
    store
        .delete_node(&node_id("never-existed"))
        .await
        .expect("delete missing");
    put(store, node("n-1", 1)).await;
    store.delete_node(&node_id("n-1")).await.expect("delete");
    assert_eq!(
        store.get_node(&node_id("n-1")).await.expect("get"),
        None,
        "the row is gone"
    );
    store
        .delete_node(&node_id("n-1"))
        .await
        .expect("delete again");
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

/// API tokens are found by hash; ids and hashes are unique.
pub async fn api_tokens_are_found_by_hash(store: &dyn Store) {
    let token = api_token("tok-1", 0xab);
    store.put_api_token(&token).await.expect("put_api_token");
    let found = store.find_api_token(&token.hash).await.expect("find");
    assert_eq!(found, Some(token.clone()), "a token is found by its hash");
    let other = store
        .find_api_token(&api_token("x", 0xcd).hash)
        .await
        .expect("find");
    assert_eq!(other, None, "an unknown hash finds nothing");
    expect_kind(
        store.put_api_token(&api_token("tok-1", 0x01)).await,
        StoreErrorKind::AlreadyExists,
        "a taken token id is AlreadyExists",
    );
    expect_kind(
        store.put_api_token(&api_token("tok-2", 0xab)).await,
        StoreErrorKind::AlreadyExists,
        "a taken token hash is AlreadyExists",
    );
}

/// API tokens are listed by `(created_at, id)`, revoked once, and touched on their
/// last use only; every field round-trips.
pub async fn api_tokens_are_listed_revoked_and_touched(store: &dyn Store) {
    let mut late = api_token("tok-b", 0x0b);
    late.created_at = at(20);
    late.expires_at = Some(at(3_600));
    late.kind = crate::api_token::ApiTokenKind::Admin;
    let mut early = api_token("tok-c", 0x0c);
    early.created_at = at(10);
    let mut tie = api_token("tok-a", 0x0a);
    tie.created_at = at(20);
    for token in [&late, &early, &tie] {
        store.put_api_token(token).await.expect("put_api_token");
    }
    let ids = |tokens: Vec<crate::ApiTokenRecord>| -> Vec<String> {
        tokens.into_iter().map(|t| t.id).collect()
    };
    assert_eq!(
        ids(store.list_api_tokens().await.expect("list")),
        ["tok-c", "tok-a", "tok-b"],
        "tokens are listed by (created_at, id)"
    );
    assert_eq!(
        store.find_api_token(&late.hash).await.expect("find"),
        Some(late.clone()),
        "kind and expiry round-trip"
    );

    assert!(
        store
            .revoke_api_token("tok-b", at(30))
            .await
            .expect("revoke"),
        "the first revocation changes the token"
    );
    assert!(
        !store
            .revoke_api_token("tok-b", at(40))
            .await
            .expect("revoke"),
        "a second revocation changes nothing"
    );
    let revoked = store.find_api_token(&late.hash).await.expect("find");
    assert_eq!(
        revoked.as_ref().and_then(|t| t.revoked_at),
        Some(at(30)),
        "a revoked token is still found, with its first revocation time"
    );
    expect_kind(
        store.revoke_api_token("tok-nope", at(30)).await,
        StoreErrorKind::NotFound,
        "revoking an unknown token is NotFound",
    );

    store.touch_api_token("tok-c", at(50)).await.expect("touch");
    let touched = store
        .find_api_token(&early.hash)
        .await
        .expect("find")
        .expect("tok-c exists");
    assert_eq!(
        touched,
        crate::ApiTokenRecord {
            last_used_at: Some(at(50)),
            ..early
        },
        "a touch changes the last use only"
    );
    expect_kind(
        store.touch_api_token("tok-nope", at(50)).await,
        StoreErrorKind::NotFound,
        "touching an unknown token is NotFound",
    );
}

/// Starting with another bootstrap token revokes the previous one and leaves other
/// tokens alone; starting again with a known token keeps its record.
pub async fn bootstrap_rotation_revokes_the_previous_token(store: &dyn Store) {
    use crate::api_token::ApiTokenKind;
    let bootstrap = |id: &str, seed: u8, created: i64| crate::ApiTokenRecord {
        kind: ApiTokenKind::Bootstrap,
        created_at: at(created),
        ..api_token(id, seed)
    };
    let user = api_token("tok-user", 0x55);
    store.put_api_token(&user).await.expect("put_api_token");
    let a = bootstrap("tok-a", 0xaa, 10);
    store
        .rotate_bootstrap_api_token(&a)
        .await
        .expect("rotate to a");
    let found = |hash: String| async move {
        store
            .find_api_token(&hash)
            .await
            .expect("find")
            .expect("the token exists")
    };
    assert_eq!(
        found(a.hash.clone()).await,
        a,
        "the first bootstrap token is written"
    );

    // The same token again: nothing changes.
    let again = bootstrap("tok-a", 0xaa, 15);
    store
        .rotate_bootstrap_api_token(&again)
        .await
        .expect("rotate to a again");
    assert_eq!(
        found(a.hash.clone()).await,
        a,
        "a known token keeps its record"
    );

    let b = bootstrap("tok-b", 0xbb, 20);
    store
        .rotate_bootstrap_api_token(&b)
        .await
        .expect("rotate to b");
    assert_eq!(
        found(a.hash.clone()).await.revoked_at,
        Some(at(20)),
        "the previous bootstrap token is revoked when the next one is written"
    );
    assert_eq!(
        found(b.hash.clone()).await,
        b,
        "the new bootstrap token is live"
    );
    assert_eq!(
        found(user.hash.clone()).await,
        user,
        "other tokens are left alone"
    );

    // Back to the first: it is live again, and the second is revoked.
    let back = bootstrap("tok-a", 0xaa, 30);
    store
        .rotate_bootstrap_api_token(&back)
        .await
        .expect("rotate back to a");
    let a_now = found(a.hash.clone()).await;
    assert_eq!(
        (a_now.revoked_at, a_now.created_at),
        (None, at(10)),
        "a token named again is live again, with its first creation time"
    );
    assert_eq!(found(b.hash.clone()).await.revoked_at, Some(at(30)));
    let live: Vec<String> = store
        .list_api_tokens()
        .await
        .expect("list")
        .into_iter()
        .filter(|t| t.kind == ApiTokenKind::Bootstrap && t.revoked_at.is_none())
        .map(|t| t.id)
        .collect();
    assert_eq!(live, ["tok-a"], "exactly one bootstrap token is live");
    expect_kind(
        store
            .rotate_bootstrap_api_token(&bootstrap("tok-user", 0xcc, 40))
            .await,
        StoreErrorKind::AlreadyExists,
        "an id taken by another hash is AlreadyExists",
    );
}

/// Two users of one organisation each have their own link to the same installation:
/// distinct keys, the same external id, each listed only for its user.
pub async fn github_installation_links_are_per_user(store: &dyn Store) {
    let alice = github_installation("alice", 4_242_424_242, 2);
    let alice_other = github_installation("alice", 7, 1);
    let bob = github_installation("bob", 4_242_424_242, 3);
    for link in [&alice, &alice_other, &bob] {
        store
            .put_github_installation(link)
            .await
            .expect("put_github_installation");
    }
    assert_ne!(alice.key(), bob.key(), "the storage keys differ");
    let read = store
        .get_github_installation(&bob.key())
        .await
        .expect("get_github_installation");
    assert_eq!(read, Some(bob.clone()), "a link round-trips by its key");
    assert_eq!(
        read.map(|l| l.external_id),
        Some(alice.external_id),
        "both links carry GitHub's installation id"
    );
    let listed = store
        .list_github_installations(&alice.user_id)
        .await
        .expect("list_github_installations");
    assert_eq!(
        listed,
        vec![alice_other, alice.clone()],
        "a user's links, ordered by (created_at, key)"
    );
    let bobs = store
        .list_github_installations(&bob.user_id)
        .await
        .expect("list_github_installations");
    assert_eq!(bobs, vec![bob], "the other user sees only their own link");
    let nobody = github_installation("carol", 4_242_424_242, 0);
    assert_eq!(
        store
            .get_github_installation(&nobody.key())
            .await
            .expect("get_github_installation"),
        None,
        "a missing link is None"
    );
}

/// Deleting one user's link leaves another user's link to the same installation,
/// and deleting it again succeeds.
pub async fn delete_github_installation_keeps_other_users_links(store: &dyn Store) {
    let alice = github_installation("alice", 4_242, 0);
    let bob = github_installation("bob", 4_242, 1);
    for link in [&alice, &bob] {
        store.put_github_installation(link).await.expect("put");
    }
    for _ in 0..2 {
        store
            .delete_github_installation(&alice.key())
            .await
            .expect("delete_github_installation is idempotent");
    }
    assert_eq!(
        store
            .get_github_installation(&alice.key())
            .await
            .expect("get"),
        None,
        "the deleted link is gone"
    );
    assert_eq!(
        store
            .list_github_installations(&alice.user_id)
            .await
            .expect("list"),
        vec![],
        "its user has no links left"
    );
    assert_eq!(
        store
            .list_github_installations(&bob.user_id)
            .await
            .expect("list"),
        vec![bob],
        "the other user's link to the same installation stays"
    );
}

/// Writing a link again replaces it (the account may be renamed).
pub async fn put_github_installation_replaces(store: &dyn Store) {
    let link = github_installation("alice", 42, 0);
    store.put_github_installation(&link).await.expect("put");
    let renamed = GithubInstallation {
        account: "acme-renamed".into(),
        ..link.clone()
    };
    store
        .put_github_installation(&renamed)
        .await
        .expect("put again");
    assert_eq!(
        store
            .get_github_installation(&link.key())
            .await
            .expect("get"),
        Some(renamed.clone()),
        "the second write wins"
    );
    assert_eq!(
        store
            .list_github_installations(&link.user_id)
            .await
            .expect("list"),
        vec![renamed],
        "one row per key"
    );
}

/// N due tasks, M concurrent claimers: every task is claimed exactly once.
pub async fn concurrent_claimers_claim_each_task_once(store: &dyn Store) {
    const TASKS: usize = 60;
    const CLAIMERS: usize = 6;
    for i in 0..TASKS {
        let id = format!("t-{i:03}");
        create(store, due_task(&id, i as i64, 10)).await;
    }
    let claimer = |owner: String| async move {
        let mut mine = Vec::new();
        loop {
            let got = claim(store, &owner, 100, 4).await;
            if got.is_empty() {
                return mine;
            }
            for t in &got {
                assert_eq!(t.lease_owner.as_deref(), Some(owner.as_str()));
                // "Run" the task: it sleeps until further notice, written with the
                // end of the lease.
                let done = LeaseRelease {
                    update: TaskUpdate {
                        next_wake_at: Some(None),
                        ..Default::default()
                    },
                    ..LeaseRelease::plain(owner.clone(), at(101))
                };
                assert_eq!(
                    store
                        .release_lease(&t.id, &done)
                        .await
                        .expect("release_lease"),
                    LeaseReleased::Released {
                        step_changed: false
                    }
                );
            }
            mine.extend(ids(&got));
        }
    };
    let results = join_all((0..CLAIMERS).map(|c| claimer(format!("driver-{c}")))).await;
    let mut count: BTreeMap<String, usize> = BTreeMap::new();
    for id in results.iter().flatten() {
        *count.entry(id.clone()).or_default() += 1;
    }
    assert_eq!(count.len(), TASKS, "every due task is claimed");
    let twice: Vec<_> = count.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "two callers never receive the same task: {twice:?}"
    );
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

/// Users are upserted by id and read back whole.
pub async fn users_round_trip_and_upsert(store: &dyn Store) {
    let clause = "users are upserted by id";
    let mut u = user("u-1", 0);
    store.put_user(&u).await.expect(clause);
    assert_eq!(
        store.get_user(&u.id).await.expect(clause),
        Some(u.clone()),
        "{clause}"
    );
    u.name = "renamed".into();
    u.updated_at = at(5);
    store.put_user(&u).await.expect(clause);
    assert_eq!(
        store.get_user(&u.id).await.expect(clause),
        Some(u),
        "{clause}"
    );
    let missing = UserId::new("u-missing").expect("valid id");
    assert_eq!(
        store.get_user(&missing).await.expect(clause),
        None,
        "{clause}"
    );
}

/// Projects are upserted by id, read back whole, and listed by `(created_at, id)`.
pub async fn projects_round_trip_and_list_in_order(store: &dyn Store) {
    let clause = "projects are listed by (created_at, id)";
    for p in [project("p-b", 5), project("p-c", 1), project("p-a", 5)] {
        store.put_project(&p).await.expect(clause);
    }
    let mut updated = project("p-c", 1);
    updated.name = "renamed".into();
    updated.scaling.warm_timeout_secs = None;
    store.put_project(&updated).await.expect(clause);
    assert_eq!(
        store.get_project(&project_id("p-c")).await.expect(clause),
        Some(updated),
        "{clause}"
    );
    let ids: Vec<String> = store
        .list_projects()
        .await
        .expect(clause)
        .into_iter()
        .map(|p| p.id.to_string())
        .collect();
    assert_eq!(ids, ["p-c", "p-a", "p-b"], "{clause}");
    assert_eq!(
        store.get_project(&project_id("p-x")).await.expect(clause),
        None
    );
}

/// A project's profiles are listed by `(created_at, id)`, and only its own.
pub async fn profiles_are_listed_per_project_in_order(store: &dyn Store) {
    let clause = "a project's profiles are listed by (created_at, id)";
    store.put_project(&project("p-1", 0)).await.expect(clause);
    store.put_project(&project("p-2", 0)).await.expect(clause);
    let first = profile("pf-b", "p-1", "reviewer", 3);
    for p in [
        &first,
        &profile("pf-a", "p-1", "writer", 3),
        &profile("pf-c", "p-1", "fixer", 1),
    ] {
        store.put_profile(p).await.expect(clause);
    }
    store
        .put_profile(&profile("pf-d", "p-2", "reviewer", 0))
        .await
        .expect("the same name in another project is fine");
    let names: Vec<String> = store
        .list_profiles(&project_id("p-1"))
        .await
        .expect(clause)
        .into_iter()
        .map(|p| p.id.to_string())
        .collect();
    assert_eq!(names, ["pf-c", "pf-a", "pf-b"], "{clause}");
    assert_eq!(
        store.get_profile(&first.id).await.expect(clause),
        Some(first)
    );
}

/// Putting a profile whose name another profile of the project holds is `AlreadyExists`;
/// renaming a profile to its own name is not.
pub async fn profile_names_are_unique_per_project(store: &dyn Store) {
    let clause = "a profile's name is unique within its project";
    store.put_project(&project("p-1", 0)).await.expect(clause);
    store
        .put_profile(&profile("pf-1", "p-1", "reviewer", 0))
        .await
        .expect(clause);
    let mut again = profile("pf-1", "p-1", "reviewer", 0);
    again.settings.model = Some("other".into());
    store
        .put_profile(&again)
        .await
        .expect("re-putting a profile keeps its name");
    let err = store
        .put_profile(&profile("pf-2", "p-1", "reviewer", 1))
        .await
        .expect_err(clause);
    assert_eq!(err.kind(), StoreErrorKind::AlreadyExists, "{clause}: {err}");
    assert_eq!(
        store
            .list_profiles(&project_id("p-1"))
            .await
            .expect(clause)
            .len(),
        1
    );
}

/// A profile of a missing project is `NotFound`.
pub async fn profile_of_missing_project_is_not_found(store: &dyn Store) {
    let clause = "a profile of a missing project is NotFound";
    let err = store
        .put_profile(&profile("pf-1", "p-missing", "reviewer", 0))
        .await
        .expect_err(clause);
    assert_eq!(err.kind(), StoreErrorKind::NotFound, "{clause}: {err}");
}

/// Nothing is created implicitly: a new project has no profiles, and deleting every
/// profile leaves none.
pub async fn deleting_every_profile_leaves_none(store: &dyn Store) {
    let clause = "deleting every profile leaves none";
    store.put_project(&project("p-1", 0)).await.expect(clause);
    assert!(
        store
            .list_profiles(&project_id("p-1"))
            .await
            .expect(clause)
            .is_empty()
    );
    let a = profile("pf-1", "p-1", "reviewer", 0);
    let b = profile("pf-2", "p-1", "writer", 1);
    store.put_profile(&a).await.expect(clause);
    store.put_profile(&b).await.expect(clause);
    store.delete_profile(&a.id).await.expect(clause);
    store.delete_profile(&b.id).await.expect(clause);
    store
        .delete_profile(&b.id)
        .await
        .expect("deleting a missing profile succeeds");
    assert!(
        store
            .list_profiles(&project_id("p-1"))
            .await
            .expect(clause)
            .is_empty(),
        "{clause}"
    );
    assert_eq!(store.get_profile(&a.id).await.expect(clause), None);
}

/// Deleting a project deletes its profiles and credentials, and nothing else.
pub async fn deleting_a_project_deletes_its_profiles_and_credentials(store: &dyn Store) {
    let clause = "deleting a project deletes its profiles and credentials";
    store.put_project(&project("p-1", 0)).await.expect(clause);
    store.put_project(&project("p-2", 0)).await.expect(clause);
    store
        .put_profile(&profile("pf-1", "p-1", "reviewer", 0))
        .await
        .expect(clause);
    store
        .put_profile(&profile("pf-2", "p-2", "reviewer", 0))
        .await
        .expect(clause);
    let p1 = CredentialOwner::Project(project_id("p-1"));
    let p2 = CredentialOwner::Project(project_id("p-2"));
    store
        .put_credential(&credential(p1.clone(), "agent:claude", 1))
        .await
        .expect(clause);
    store
        .put_credential(&credential(p2.clone(), "agent:claude", 1))
        .await
        .expect(clause);
    store
        .delete_project(&project_id("p-1"))
        .await
        .expect(clause);
    store
        .delete_project(&project_id("p-1"))
        .await
        .expect("deleting a missing project succeeds");
    assert_eq!(
        store.get_project(&project_id("p-1")).await.expect(clause),
        None
    );
    assert!(
        store
            .list_profiles(&project_id("p-1"))
            .await
            .expect(clause)
            .is_empty(),
        "{clause}"
    );
    assert!(
        store.list_credentials(&p1).await.expect(clause).is_empty(),
        "{clause}"
    );
    assert_eq!(
        store
            .list_profiles(&project_id("p-2"))
            .await
            .expect(clause)
            .len(),
        1
    );
    assert_eq!(store.list_credentials(&p2).await.expect(clause).len(), 1);
}

/// Credentials are upserted by `(owner, target)`, listed per owner by target, and
/// deleted idempotently.
pub async fn credentials_upsert_per_owner_and_target(store: &dyn Store) {
    let clause = "credentials are upserted by (owner, target) and listed by target";
    let u1 = CredentialOwner::User(UserId::new("u-1").expect("valid id"));
    let u2 = CredentialOwner::User(UserId::new("u-2").expect("valid id"));
    let p1 = CredentialOwner::Project(project_id("u-1"));
    store
        .put_credential(&credential(u1.clone(), "provider:scaleway", 1))
        .await
        .expect(clause);
    store
        .put_credential(&credential(u1.clone(), "agent:claude", 1))
        .await
        .expect(clause);
    store
        .put_credential(&credential(u2.clone(), "agent:claude", 1))
        .await
        .expect(clause);
    store
        .put_credential(&credential(p1.clone(), "agent:claude", 1))
        .await
        .expect(clause);
    let newer = credential(u1.clone(), "agent:claude", 9);
    store.put_credential(&newer).await.expect(clause);
    let listed = store.list_credentials(&u1).await.expect(clause);
    assert_eq!(listed.len(), 2, "{clause}");
    assert_eq!(
        listed[0], newer,
        "{clause}: the newer write replaced the older"
    );
    assert_eq!(
        listed[1].target,
        CredentialTarget::Provider(ProviderKind::Scaleway),
        "{clause}"
    );
    let claude = CredentialTarget::Agent("claude".into());
    store.delete_credential(&u1, &claude).await.expect(clause);
    store
        .delete_credential(&u1, &claude)
        .await
        .expect("deleting a missing credential succeeds");
    assert_eq!(store.list_credentials(&u1).await.expect(clause).len(), 1);
    assert_eq!(
        store.list_credentials(&u2).await.expect(clause).len(),
        1,
        "other owners keep theirs"
    );
    assert_eq!(
        store.list_credentials(&p1).await.expect(clause).len(),
        1,
        "a project is not a user of the same id"
    );
}
