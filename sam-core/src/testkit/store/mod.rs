//! The conformance suite of the [`Store`] contract.
//!
//! Every case takes a fresh, empty store and checks one clause of the contract
//! (see [`Store`]); it panics with a message naming the clause when the backend
//! breaks it. [`crate::store_conformance!`] turns every case into its own test.
//!
//! The cases of each trait's contract are in a module of their own ([`TaskStore`],
//! [`FleetStore`], [`AccountStore`]) and re-exported here; the clauses every
//! [`Store`] keeps are checked here.
//!
//! [`TaskStore`]: crate::store::TaskStore
//! [`FleetStore`]: crate::store::FleetStore
//! [`AccountStore`]: crate::store::AccountStore

use std::time::Duration;

use crate::error::StoreErrorKind;
use crate::store::{LeaseRequest, NodeRecord, Store, TaskRecord};
use crate::testkit::fixtures::{at, node, node_id, task_id, workspace_id};

mod accounts;
mod fleet;
mod tasks;

pub use accounts::*;
pub use fleet::*;
pub use tasks::*;

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
            transcript_is_numbered_in_order,
            concurrent_appends_number_without_gaps,
            prune_removes_only_ended_transcripts,
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
            setup_choices_are_kept_apart_from_the_user,
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

async fn claim(store: &dyn Store, owner: &str, now: i64, limit: usize) -> Vec<TaskRecord> {
    store
        .claim_due_tasks(&lease(owner, now, limit))
        .await
        .expect("claim_due_tasks")
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

fn held(owner: &str, task: &str, epoch: u64) -> crate::store::Lease {
    crate::store::Lease {
        task: task_id(task),
        owner: owner.into(),
        epoch,
    }
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
