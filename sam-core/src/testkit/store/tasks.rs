//! The conformance cases of the [`TaskStore`](crate::store::TaskStore) contract:
//! tasks, status changes, leases and the writes made under them, notices.

use std::collections::BTreeMap;

use futures::future::join_all;

use crate::error::{ErrorCategory, StoreErrorKind};
use crate::github::TaskOutput;
use crate::model::{ExecutionStep, TaskId, TaskStatus, VmSize};
use crate::record::PlacementExplanation;
use crate::store::{
    LeaseRelease, LeaseReleased, LeaseRequest, Store, TaskError, TaskFilter, TaskRecord,
    TaskUpdate, Transition,
};
use crate::testkit::fixtures::{
    at, due_task, full_task, location, node, node_id, task, task_id, workspace_id,
};

use super::{claim, create, expect_kind, held, ids, lease};

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

fn sorted_ids(tasks: &[TaskRecord]) -> Vec<String> {
    let mut ids = ids(tasks);
    ids.sort();
    ids
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

/// Transcript entries are numbered per task in the order written, whether appended
/// directly or under the lease; a lost lease appends none; reads page by number.
pub async fn transcript_is_numbered_in_order(store: &dyn Store) {
    use crate::store::{LeasedWrite, TaskEvent, TaskEventKind, TranscriptQuery};
    create(store, due_task("t-1", 1, 10)).await;
    create(store, due_task("t-2", 1, 10)).await;
    let capacity = TaskEventKind::CapacityUnavailable {
        size: VmSize::Large,
        location: location("fsn1"),
    };
    let downgrade = TaskEventKind::Downgraded {
        requested: VmSize::Large,
        provisioned: VmSize::Medium,
    };
    let waiting = TaskEventKind::WaitingForCapacity {
        passes: 2,
        until: at(300),
    };
    let said = TaskEventKind::Session {
        event: crate::session::SessionEvent::Update {
            update: serde_json::json!({
                "sessionUpdate": "agent_message_chunk",
                "content": {"type": "text", "text": "Done… ✓ 完成"}
            }),
        },
    };
    let first = store
        .append_task_event(&task_id("t-1"), at(100), &capacity)
        .await
        .expect("append_task_event");
    assert_eq!(first, 1, "the first entry is number 1");
    claim(store, "a", 100, 1).await;
    let outcome = store
        .write_leased(
            &held("a", "t-1", 1),
            at(110),
            &[
                LeasedWrite::Event(waiting.clone()),
                LeasedWrite::Event(downgrade.clone()),
            ],
        )
        .await
        .expect("entries under the lease");
    assert_eq!(
        outcome.last_event,
        Some(3),
        "a leased write reports the number of the last entry it appended"
    );
    let plain = store
        .write_leased(&held("a", "t-1", 1), at(111), &[])
        .await
        .expect("an empty leased write");
    assert_eq!(plain.last_event, None, "no entry, no number");
    assert_eq!(
        store
            .append_task_event(&task_id("t-1"), at(120), &said)
            .await
            .expect("append_task_event"),
        4
    );
    claim(store, "b", 200, 1).await;
    expect_kind(
        store
            .write_leased(
                &held("a", "t-1", 1),
                at(201),
                &[LeasedWrite::Event(capacity.clone())],
            )
            .await,
        StoreErrorKind::LeaseLost,
        "an entry under a lost lease",
    );
    let event = |id: u64, when: i64, kind: &TaskEventKind| TaskEvent {
        id,
        task_id: task_id("t-1"),
        at: at(when),
        kind: kind.clone(),
    };
    let all = vec![
        event(1, 100, &capacity),
        event(2, 110, &waiting),
        event(3, 110, &downgrade),
        event(4, 120, &said),
    ];
    assert_eq!(
        store
            .list_task_events(&task_id("t-1"), &TranscriptQuery::after(0, 100))
            .await
            .unwrap(),
        all,
        "entries are kept in order, numbered per task, as written"
    );
    assert_eq!(
        store
            .list_task_events(&task_id("t-1"), &TranscriptQuery::after(1, 2))
            .await
            .unwrap(),
        all[1..3].to_vec(),
        "a page starts after the number given and holds at most the limit"
    );
    assert_eq!(
        store
            .list_task_events(
                &task_id("t-1"),
                &TranscriptQuery::after(0, 100).with_kinds(["downgraded", "capacity_unavailable"]),
            )
            .await
            .unwrap(),
        vec![all[0].clone(), all[2].clone()],
        "a read by kind keeps only those kinds"
    );
    assert_eq!(
        store
            .list_task_events(
                &task_id("t-1"),
                &TranscriptQuery::after(1, 2).newest_first(),
            )
            .await
            .unwrap(),
        vec![all[3].clone(), all[2].clone()],
        "newest first, still after the number given"
    );
    assert!(
        store
            .list_task_events(&task_id("t-1"), &TranscriptQuery::after(4, 100))
            .await
            .unwrap()
            .is_empty(),
        "nothing after the last entry"
    );
    assert_eq!(
        store
            .append_task_event(&task_id("t-2"), at(130), &capacity)
            .await
            .unwrap(),
        1,
        "each task is numbered on its own"
    );
    assert!(
        store
            .list_task_events(&task_id("t-9"), &TranscriptQuery::after(0, 100))
            .await
            .unwrap()
            .is_empty()
    );
    expect_kind(
        store
            .append_task_event(&task_id("t-9"), at(1), &downgrade)
            .await,
        StoreErrorKind::NotFound,
        "an entry for a missing task",
    );
}

/// Appends to one task from many writers at once are numbered 1, 2, … without a gap
/// or a repeat, each writer's entries in its own order.
pub async fn concurrent_appends_number_without_gaps(store: &dyn Store) {
    use crate::store::{TaskEventKind, TranscriptQuery};
    const WRITERS: u64 = 4;
    const EACH: u64 = 8;
    create(store, due_task("t-1", 1, 10)).await;
    let writer = |w: u64| async move {
        let mut numbers = Vec::new();
        for n in 0..EACH {
            let kind = TaskEventKind::LastMessage {
                text: format!("{w}/{n}"),
            };
            numbers.push(
                store
                    .append_task_event(&task_id("t-1"), at(100), &kind)
                    .await
                    .expect("append_task_event"),
            );
        }
        numbers
    };
    let numbers: Vec<Vec<u64>> = futures::future::join_all((0..WRITERS).map(writer)).await;
    let mut all: Vec<u64> = numbers.iter().flatten().copied().collect();
    all.sort_unstable();
    assert_eq!(
        all,
        (1..=WRITERS * EACH).collect::<Vec<_>>(),
        "numbers without a gap or a repeat"
    );
    let read = store
        .list_task_events(&task_id("t-1"), &TranscriptQuery::after(0, 1000))
        .await
        .unwrap();
    for w in 0..WRITERS {
        let texts: Vec<String> = read
            .iter()
            .filter_map(|e| match &e.kind {
                TaskEventKind::LastMessage { text } if text.starts_with(&format!("{w}/")) => {
                    Some(text.clone())
                }
                _ => None,
            })
            .collect();
        let expected: Vec<String> = (0..EACH).map(|n| format!("{w}/{n}")).collect();
        assert_eq!(texts, expected, "writer {w}'s entries in its order");
    }
}

/// Pruning deletes the transcripts of tasks that ended before the cutoff, and
/// nothing else.
pub async fn prune_removes_only_ended_transcripts(store: &dyn Store) {
    use crate::store::{TaskEventKind, TranscriptQuery};
    create(store, due_task("t-1", 1, 10)).await;
    create(store, due_task("t-2", 2, 10)).await;
    create(store, due_task("t-3", 3, 10)).await;
    let kind = TaskEventKind::LastMessage { text: "hi".into() };
    for task in ["t-1", "t-2", "t-3"] {
        for _ in 0..3 {
            store
                .append_task_event(&task_id(task), at(50), &kind)
                .await
                .expect("append_task_event");
        }
    }
    let ended = |task: &'static str, when: i64| async move {
        let end = transition(TaskStatus::Queued, TaskStatus::Cancelled, when);
        assert!(store.transition_task(&task_id(task), &end).await.unwrap());
    };
    ended("t-1", 100).await;
    ended("t-2", 300).await;
    assert_eq!(
        store.prune_task_events(at(100)).await.unwrap(),
        0,
        "a task that ended at the cutoff is kept"
    );
    assert_eq!(store.prune_task_events(at(200)).await.unwrap(), 3);
    let count = |task: &'static str| async move {
        store
            .list_task_events(&task_id(task), &TranscriptQuery::after(0, 100))
            .await
            .unwrap()
            .len()
    };
    assert_eq!(
        (count("t-1").await, count("t-2").await, count("t-3").await),
        (0, 3, 3),
        "only the transcript of the task that ended before the cutoff went"
    );
    assert_eq!(
        store.prune_task_events(at(10_000)).await.unwrap(),
        3,
        "a live task's transcript is never pruned"
    );
    assert_eq!(count("t-3").await, 3);
    assert!(
        store.get_task(&task_id("t-1")).await.unwrap().is_some(),
        "the task itself stays"
    );
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
