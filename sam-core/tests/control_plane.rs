//! The control plane end to end over real stores, the fake provider and the fake
//! node agent, on tokio's paused clock.
//!
//! Integration tests link the normal build of `sam-core`, the same one `sam-store`
//! and `sam-providers` link, so real backends can be dev-dependencies here without
//! duplicating sam-core's types.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use sam_core::testkit::node_agent::{FakeAgentScript, FakeNodeAgent};
use sam_core::{
    Classify, ControlPlane, ControlPlaneConfig, ErrorCategory, ExecutionStep, FleetStore, Layer,
    LayerSettings, Provider, ProviderKind, Secret, SessionReport, SizeDescent, StopReason, Store,
    SubmitRequest, TaskError, TaskEventKind, TaskId, TaskRecord, TaskStatus, TaskStore,
    TokenSigner, TokioClock, VmSize, WorkspaceReport,
};
use sam_providers::{FakeCall, FakeOp, FakeOutcome, FakeProvider};
use sam_store::MemoryStore;

struct Harness {
    cp: ControlPlane,
    store: Arc<dyn Store>,
    provider: Arc<FakeProvider>,
    agent: Arc<FakeNodeAgent>,
}

fn config(driver: &str) -> ControlPlaneConfig {
    ControlPlaneConfig::new(driver, ProviderKind::Fake)
}

fn harness_with(
    store: Arc<dyn Store>,
    provider: Arc<FakeProvider>,
    agent: Arc<FakeNodeAgent>,
    config: ControlPlaneConfig,
) -> Harness {
    let scheduler = Arc::new(sam_core::DefaultScheduler::new(Arc::clone(&store)));
    harness_on(store, provider, agent, config, scheduler)
}

/// A harness on `store` whose control plane places with `scheduler`.
fn harness_scheduled(store: Arc<dyn Store>, scheduler: Arc<dyn sam_core::Scheduler>) -> Harness {
    let provider = Arc::new(FakeProvider::new());
    let agent = Arc::new(FakeNodeAgent::new(FakeAgentScript::default()));
    harness_on(store, provider, agent, config("d1"), scheduler)
}

/// A harness over these parts, its control plane placing with `scheduler`.
fn harness_on(
    store: Arc<dyn Store>,
    provider: Arc<FakeProvider>,
    agent: Arc<FakeNodeAgent>,
    config: ControlPlaneConfig,
    scheduler: Arc<dyn sam_core::Scheduler>,
) -> Harness {
    Harness {
        // Anchored at the real time: the fake provider stamps VMs with it.
        cp: support::control_plane_with(
            Arc::clone(&store),
            Arc::clone(&provider),
            Arc::clone(&agent),
            Arc::new(TokioClock::new()),
            config,
            scheduler,
        ),
        store,
        provider,
        agent,
    }
}

fn harness(config: ControlPlaneConfig) -> Harness {
    harness_with(
        Arc::new(MemoryStore::new()),
        Arc::new(FakeProvider::new()),
        Arc::new(FakeNodeAgent::new(FakeAgentScript::default())),
        config,
    )
}

fn request(layers: &[(Layer, LayerSettings)]) -> SubmitRequest {
    SubmitRequest {
        repo: "https://example.invalid/repo.git".into(),
        prompt: "fix the flaky test".into(),
        layers: layers.iter().cloned().collect::<BTreeMap<_, _>>(),
        ..SubmitRequest::default()
    }
}

fn sized(size: VmSize) -> LayerSettings {
    LayerSettings {
        size: Some(size),
        ..LayerSettings::default()
    }
}

impl Harness {
    /// Ticks, advancing the paused clock to each next wake-up, until the task ends
    /// or `limit` of virtual time has passed.
    /// Ticks a second of virtual time at a time until the task reaches `step`.
    async fn until_step(&self, id: &TaskId, step: ExecutionStep) -> TaskRecord {
        for _ in 0..50 {
            let task = self.store.get_task(id).await.unwrap().unwrap();
            if task.execution_step == step {
                return task;
            }
            self.cp.tick().await.unwrap();
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        panic!("{id} did not reach {step:?} in 50 ticks");
    }

    async fn run(&self, id: &TaskId, limit: Duration) -> TaskRecord {
        let start = tokio::time::Instant::now();
        loop {
            self.cp.tick().await.unwrap();
            let task = self.store.get_task(id).await.unwrap().unwrap();
            if task.status.is_terminal() || start.elapsed() > limit {
                return task;
            }
            tokio::time::advance(self.cp.config().poll_interval).await;
        }
    }

    /// Submits a task with these layers and runs it for up to an hour of virtual time.
    async fn submit_and_run(&self, layers: &[(Layer, LayerSettings)]) -> TaskRecord {
        let id = self.cp.submit(&request(layers)).await.unwrap();
        self.run(&id, HOUR).await
    }

    fn creates(&self) -> Vec<(VmSize, String)> {
        self.provider
            .calls()
            .into_iter()
            .filter_map(|c| match c {
                FakeCall::CreateVm(spec) => Some((spec.size, spec.server_type)),
                _ => None,
            })
            .collect()
    }

    async fn node_rows(&self) -> usize {
        self.store
            .list_nodes(&Default::default())
            .await
            .unwrap()
            .len()
    }
}

const HOUR: Duration = Duration::from_secs(3600);

/// Asserts the task failed with a message containing `needle`, and returns its error.
fn failed_with(task: &TaskRecord, needle: &str) -> TaskError {
    assert_eq!(task.status, TaskStatus::Failed, "{task:?}");
    let error = task.error.clone().expect("a failed task has an error");
    assert!(
        error.message.contains(needle),
        "{error:?} should mention {needle:?}"
    );
    error
}

#[tokio::test(start_paused = true)]
async fn a_task_runs_to_completion_and_its_node_goes_warm() {
    let h = harness(config("d1"));
    let mut events = h.cp.subscribe();
    let id = h.cp.submit(&request(&[])).await.unwrap();
    let task = h.run(&id, HOUR).await;
    assert_eq!(task.status, TaskStatus::Completed, "{task:?}");
    assert_eq!(task.provisioned_size, Some(VmSize::Medium));
    assert!(task.placement.is_some());
    assert_eq!(task.spec.provenance["size"], Layer::Platform);
    let statuses: Vec<_> = h
        .store
        .list_status_events(&id)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.to)
        .collect();
    assert_eq!(
        statuses,
        [
            TaskStatus::Queued,
            TaskStatus::Delegated,
            TaskStatus::InProgress,
            TaskStatus::Completed
        ]
    );
    let nodes = h.store.list_nodes(&Default::default()).await.unwrap();
    assert_eq!(nodes.len(), 1);
    assert_eq!(nodes[0].lifecycle, sam_core::NodeLifecycle::Warm);
    let mut steps = Vec::new();
    while let Ok(e) = events.try_recv() {
        if let TaskEventKind::Step { step, .. } = e.kind {
            steps.push(step);
        }
    }
    assert_eq!(
        steps,
        [
            ExecutionStep::NodeProvisioning,
            ExecutionStep::NodeAgentReady,
            ExecutionStep::WorkspaceCreation,
            ExecutionStep::WorkspaceReady,
            ExecutionStep::AgentSession,
            ExecutionStep::Running,
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_second_task_reuses_the_warm_node() {
    let h = harness(config("d1"));
    let first = h.cp.submit(&request(&[])).await.unwrap();
    assert_eq!(h.run(&first, HOUR).await.status, TaskStatus::Completed);
    let second = h.cp.submit(&request(&[])).await.unwrap();
    let task = h.run(&second, HOUR).await;
    assert_eq!(task.status, TaskStatus::Completed);
    assert_eq!(h.creates().len(), 1, "the warm node was reused");
    assert_eq!(
        task.provisioned_size,
        Some(VmSize::Medium),
        "the warm node's size is recorded"
    );
    let placement = task.placement.unwrap();
    assert!(placement.reason.contains("warm"), "{placement:?}");
}

/// The capacity entries of a task's transcript, oldest first.
async fn notices(h: &Harness, id: &TaskId) -> Vec<TaskEventKind> {
    let query = sam_core::TranscriptQuery::after(0, 1000).with_kinds([
        "capacity_unavailable",
        "waiting_for_capacity",
        "downgraded",
    ]);
    h.cp.transcript(id, &query)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect()
}

#[tokio::test(start_paused = true)]
async fn project_large_steps_down_to_medium_and_records_it() {
    let h = harness(config("d1"));
    h.provider.script(
        FakeOp::CreateVm,
        [FakeOutcome::Fail(ErrorCategory::TransientCapacity)],
    );
    let mut events = h.cp.subscribe();
    let id =
        h.cp.submit(&request(&[(Layer::Project, sized(VmSize::Large))]))
            .await
            .unwrap();
    let task = h.run(&id, HOUR).await;
    assert_eq!(task.status, TaskStatus::Completed, "{task:?}");
    assert_eq!(
        h.creates().iter().map(|c| c.0).collect::<Vec<_>>(),
        [VmSize::Large, VmSize::Medium]
    );
    assert_eq!(task.requested_size, VmSize::Large);
    assert_eq!(task.provisioned_size, Some(VmSize::Medium));
    assert_eq!(
        h.node_rows().await,
        1,
        "the capacity-failed row was deleted"
    );
    let mut downgraded = false;
    while let Ok(e) = events.try_recv() {
        downgraded |= matches!(
            e.kind,
            TaskEventKind::Downgraded {
                requested: VmSize::Large,
                provisioned: VmSize::Medium
            }
        );
    }
    assert!(downgraded, "the downgrade is an event the user sees");
    let kept = notices(&h, &id).await;
    assert_eq!(
        kept,
        [
            TaskEventKind::CapacityUnavailable {
                size: VmSize::Large,
                location: task.provisioned_location.clone().unwrap(),
            },
            TaskEventKind::Downgraded {
                requested: VmSize::Large,
                provisioned: VmSize::Medium,
            },
        ],
        "the capacity failure and the downgrade are kept with the task"
    );
}

/// Every capacity path leaves a notice, and tells live listeners: a create refused
/// after an earlier one failed (the node's create made again), and a create accepted
/// and then failed for capacity while polled.
#[tokio::test(start_paused = true)]
async fn every_capacity_path_is_kept_with_the_task() {
    for (path, script) in [
        (
            "made again",
            vec![
                FakeOutcome::Fail(ErrorCategory::Transient),
                FakeOutcome::Fail(ErrorCategory::TransientCapacity),
            ],
        ),
        (
            "failed while polled",
            vec![FakeOutcome::FailInAction(ErrorCategory::TransientCapacity)],
        ),
    ] {
        let h = harness(config("d1"));
        h.provider.script(FakeOp::CreateVm, script);
        let mut events = h.cp.subscribe();
        let id =
            h.cp.submit(&request(&[(Layer::Project, sized(VmSize::Large))]))
                .await
                .unwrap();
        let task = h.run(&id, HOUR).await;
        assert_eq!(task.status, TaskStatus::Completed, "{path}: {task:?}");
        let notices = notices(&h, &id).await;
        let failed: Vec<_> = notices
            .iter()
            .filter_map(|n| match n {
                TaskEventKind::CapacityUnavailable { size, .. } => Some(*size),
                _ => None,
            })
            .collect();
        assert_eq!(failed, [VmSize::Large], "{path}: {notices:?}");
        let mut told = 0;
        while let Ok(e) = events.try_recv() {
            told += usize::from(matches!(e.kind, TaskEventKind::CapacityUnavailable { .. }));
        }
        assert_eq!(told, 1, "{path}: live listeners hear of it once");
    }
}

#[tokio::test(start_paused = true)]
async fn a_downgrade_adopted_after_a_lost_response_is_shown() {
    // Found by the simulation: the downgrade event was sent only when the create's
    // response arrived, so a smaller VM adopted by its label was never shown.
    let h = harness(config("d1"));
    h.provider.script(
        FakeOp::CreateVm,
        [
            FakeOutcome::Fail(ErrorCategory::TransientCapacity),
            FakeOutcome::ResponseLost,
        ],
    );
    let mut events = h.cp.subscribe();
    let task = h
        .submit_and_run(&[(Layer::Project, sized(VmSize::Large))])
        .await;
    assert_eq!(task.status, TaskStatus::Completed, "{task:?}");
    assert_eq!(task.provisioned_size, Some(VmSize::Medium));
    let mut shown = 0;
    while let Ok(e) = events.try_recv() {
        shown += usize::from(matches!(e.kind, TaskEventKind::Downgraded { .. }));
    }
    assert_eq!(shown, 1, "the downgrade is shown once");
}

#[tokio::test(start_paused = true)]
async fn platform_default_tries_every_size_then_backs_off_until_the_budget_ends() {
    let mut c = config("d1");
    c.platform.size = Some(VmSize::Large);
    let h = harness(c);
    h.provider.script(
        FakeOp::CreateVm,
        std::iter::repeat_n(FakeOutcome::Fail(ErrorCategory::TransientCapacity), 100),
    );
    let task = h.submit_and_run(&[]).await;
    assert_eq!(task.status, TaskStatus::Failed);
    let error = task.error.unwrap();
    assert_eq!(error.category, ErrorCategory::TransientCapacity);
    assert_eq!(
        error.message,
        "No capacity for any available VM size (tried large, medium, small)."
    );
    let creates = h.creates();
    assert!(
        creates.len() >= 6 && creates.len().is_multiple_of(3),
        "{creates:?}"
    );
    for pass in creates.chunks(3) {
        assert_eq!(
            pass.iter().map(|c| c.0).collect::<Vec<_>>(),
            [VmSize::Large, VmSize::Medium, VmSize::Small]
        );
    }
    assert_eq!(h.node_rows().await, 0, "no dead row lingers");
}

#[tokio::test(start_paused = true)]
async fn explicit_sizes_never_descend() {
    for layer in [
        Layer::Task,
        Layer::Trigger,
        Layer::Skill,
        Layer::AgentProfile,
    ] {
        let h = harness(config("d1"));
        h.provider.script(
            FakeOp::CreateVm,
            std::iter::repeat_n(FakeOutcome::Fail(ErrorCategory::TransientCapacity), 100),
        );
        let id =
            h.cp.submit(&request(&[(layer, sized(VmSize::Large))]))
                .await
                .unwrap();
        let task = h.run(&id, HOUR).await;
        assert_eq!(task.status, TaskStatus::Failed);
        assert_eq!(
            task.error.unwrap().message,
            "There were no large machines available."
        );
        assert!(h.creates().iter().all(|c| c.0 == VmSize::Large), "{layer}");
    }
}

#[tokio::test(start_paused = true)]
async fn quota_and_invalid_config_stop_after_one_attempt() {
    for category in [
        ErrorCategory::QuotaExceeded,
        ErrorCategory::InvalidConfig,
        ErrorCategory::AuthError,
    ] {
        let h = harness(config("d1"));
        h.provider
            .script(FakeOp::CreateVm, [FakeOutcome::Fail(category)]);
        let id =
            h.cp.submit(&request(&[(Layer::Project, sized(VmSize::Large))]))
                .await
                .unwrap();
        let task = h.run(&id, HOUR).await;
        assert_eq!(task.status, TaskStatus::Failed);
        assert_eq!(task.error.unwrap().category, category);
        assert_eq!(h.creates().len(), 1, "{category}");
        assert_eq!(h.node_rows().await, 0);
    }
}

#[tokio::test(start_paused = true)]
async fn the_kill_switch_disables_descent() {
    let mut c = config("d1");
    c.descent = SizeDescent::Disabled;
    let h = harness(c);
    h.provider.script(
        FakeOp::CreateVm,
        std::iter::repeat_n(FakeOutcome::Fail(ErrorCategory::TransientCapacity), 100),
    );
    let id =
        h.cp.submit(&request(&[(Layer::Project, sized(VmSize::Large))]))
            .await
            .unwrap();
    let task = h.run(&id, HOUR).await;
    assert_eq!(task.status, TaskStatus::Failed);
    assert!(h.creates().iter().all(|c| c.0 == VmSize::Large));
}

#[tokio::test(start_paused = true)]
async fn a_lost_create_response_is_adopted_by_label_not_created_twice() {
    let h = harness(config("d1"));
    h.provider
        .script(FakeOp::CreateVm, [FakeOutcome::ResponseLost]);
    let task = h.submit_and_run(&[]).await;
    assert_eq!(task.status, TaskStatus::Completed, "{task:?}");
    assert_eq!(h.creates().len(), 1);
    assert_eq!(h.provider.vms().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_restarted_runner_adopts_the_in_flight_vm() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let provider = Arc::new(FakeProvider::new());
    let agent = Arc::new(FakeNodeAgent::new(FakeAgentScript {
        ready_after_probes: Some(3),
        ..FakeAgentScript::default()
    }));
    let first = harness_with(
        Arc::clone(&store),
        Arc::clone(&provider),
        Arc::clone(&agent),
        config("d1"),
    );
    let id = first.cp.submit(&request(&[])).await.unwrap();
    // Run until the VM exists, then "crash" the first runner (drop it).
    for _ in 0..3 {
        first.cp.tick().await.unwrap();
    }
    assert_eq!(provider.vms().len(), 1);
    drop(first);
    tokio::time::advance(Duration::from_secs(60)).await;
    let second = harness_with(store, Arc::clone(&provider), agent, config("d2"));
    let task = second.run(&id, HOUR).await;
    assert_eq!(task.status, TaskStatus::Completed);
    assert_eq!(second.creates().len(), 1, "no second VM for one task");
}

#[tokio::test(start_paused = true)]
async fn an_agent_that_never_reports_ready_fails_at_the_agent_ready_limit() {
    let mut c = config("d1");
    c.node_replacements = 0;
    let h = harness(c);
    h.agent.set_script(never_ready());
    let task = h.submit_and_run(&[]).await;
    assert_eq!(task.status, TaskStatus::Failed);
    let error = task.error.unwrap();
    assert!(error.message.contains("agent ready timeout"), "{error:?}");
    assert!(error.message.contains("15 minutes"), "{error:?}");
    let elapsed = task.updated_at - task.created_at;
    assert!(elapsed >= chrono::Duration::minutes(15) && elapsed < chrono::Duration::minutes(16));
    assert!(
        h.provider.vms().is_empty(),
        "a node that never became ready is destroyed"
    );
}

/// A VM that hung while it booted (a QEMU guest under emulation once stopped in its
/// kernel for good) is replaced at the agent-ready limit, like a failed boot; the
/// task fails only when the replacement hangs too.
#[tokio::test(start_paused = true)]
async fn a_node_that_never_reports_ready_is_replaced_while_the_budget_lasts() {
    let h = harness(config("d1"));
    h.agent.set_script(never_ready());
    let task = h.submit_and_run(&[]).await;
    assert_eq!(task.status, TaskStatus::Failed);
    assert_eq!(task.node_replacements, 1);
    assert_eq!(h.creates().len(), 2, "the hung node was replaced once");
    let error = task.error.unwrap();
    assert!(error.message.contains("agent ready timeout"), "{error:?}");
    let elapsed = task.updated_at - task.created_at;
    assert!(
        elapsed >= chrono::Duration::minutes(30) && elapsed < chrono::Duration::minutes(32),
        "{elapsed}"
    );
    assert!(h.provider.vms().is_empty(), "both nodes are destroyed");

    // A replacement that does boot runs the task.
    let h = harness(config("d1"));
    h.agent.set_script(never_ready());
    let id = h.cp.submit(&request(&[])).await.unwrap();
    loop {
        h.cp.tick().await.unwrap();
        let task = h.store.get_task(&id).await.unwrap().unwrap();
        if task.node_replacements == 1 {
            break;
        }
        tokio::time::advance(Duration::from_secs(30)).await;
    }
    h.agent.set_script(FakeAgentScript::default());
    let task = h.run(&id, HOUR).await;
    assert_eq!(task.status, TaskStatus::Completed, "{:?}", task.error);
    assert_eq!(h.creates().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_vm_whose_delete_failed_is_destroyed_by_the_next_sweep() {
    // Found by the simulation: the failed delete left a live row, which the orphan
    // sweep counts as the VM's owner, so the VM ran until its 24 hour lifetime.
    let mut c = config("d1");
    c.node_replacements = 0;
    let h = harness(c);
    h.agent.set_script(never_ready());
    h.provider.script(
        FakeOp::DeleteVm,
        [FakeOutcome::Fail(ErrorCategory::Transient)],
    );
    failed_with(&h.submit_and_run(&[]).await, "agent ready timeout");
    assert_eq!(h.provider.vms().len(), 1, "the delete failed");
    let nodes = h.store.list_nodes(&Default::default()).await.unwrap();
    assert_eq!(nodes[0].lifecycle, sam_core::NodeLifecycle::Destroying);
    let report = h.cp.sweep().await.unwrap();
    assert_eq!(report.nodes_destroyed, 1, "{report:?}");
    assert!(h.provider.vms().is_empty());
    let nodes = h.store.list_nodes(&Default::default()).await.unwrap();
    assert_eq!(nodes[0].status, sam_core::NodeStatus::Deleted);
}

#[tokio::test(start_paused = true)]
async fn a_stale_node_is_destroyed_when_its_last_task_ends() {
    // Found by the simulation: a task on a warm node it did not create ended after
    // the node's heartbeats stopped; the node was neither warm nor destroyed.
    let h = harness(config("d1"));
    let first = h.submit_and_run(&[]).await;
    assert_eq!(first.status, TaskStatus::Completed);
    h.agent.set_script(FakeAgentScript {
        session: SessionReport::Running,
        ..FakeAgentScript::default()
    });
    let id = h.cp.submit(&request(&[])).await.unwrap();
    for _ in 0..10 {
        h.cp.tick().await.unwrap();
        tokio::time::advance(Duration::from_secs(2)).await;
    }
    let second = h.store.get_task(&id).await.unwrap().unwrap();
    assert_eq!(second.status, TaskStatus::InProgress);
    assert_eq!(second.provisioned_node_id, first.provisioned_node_id);
    // No heartbeat for longer than the stale limit.
    tokio::time::advance(Duration::from_secs(10 * 60)).await;
    assert_eq!(h.cp.sweep().await.unwrap().nodes_stale, 1);
    assert!(h.cp.cancel(&id, "user").await.unwrap());
    assert!(h.provider.vms().is_empty(), "the stale node was destroyed");
}

#[tokio::test(start_paused = true)]
async fn a_vm_that_never_runs_fails_at_the_provisioning_limit() {
    let h = harness(config("d1"));
    h.provider.script(
        FakeOp::PollCreate,
        std::iter::repeat_n(FakeOutcome::Fail(ErrorCategory::Transient), 10_000),
    );
    let task = h.submit_and_run(&[]).await;
    failed_with(&task, "node provisioning timeout");
}

#[tokio::test(start_paused = true)]
async fn a_workspace_that_never_gets_ready_fails_at_the_workspace_limit() {
    let h = harness(config("d1"));
    h.agent.set_script(FakeAgentScript {
        workspace: WorkspaceReport::Preparing,
        ..FakeAgentScript::default()
    });
    let id = h.cp.submit(&request(&[])).await.unwrap();
    let task = h.run(&id, 2 * HOUR).await;
    failed_with(&task, "workspace ready timeout");
}

#[tokio::test(start_paused = true)]
async fn an_agent_auth_failure_fails_fast_with_its_category() {
    let h = harness(config("d1"));
    h.agent.set_script(FakeAgentScript {
        session: SessionReport::Failed {
            error: TaskError {
                category: ErrorCategory::AuthError,
                message: "Authentication required: set ANTHROPIC_API_KEY".into(),
            },
        },
        ..FakeAgentScript::default()
    });
    let task = h.submit_and_run(&[]).await;
    assert_eq!(task.status, TaskStatus::Failed);
    assert_eq!(task.error.unwrap().category, ErrorCategory::AuthError);
}

#[tokio::test(start_paused = true)]
async fn stop_reasons_map_to_outcomes() {
    for (reason, status) in [
        (StopReason::MaxTokens, TaskStatus::Failed),
        (StopReason::Refusal, TaskStatus::Failed),
        (StopReason::Cancelled, TaskStatus::Cancelled),
    ] {
        let h = harness(config("d1"));
        h.agent.set_script(FakeAgentScript {
            session: SessionReport::Stopped {
                reason,
                last_message: None,
            },
            ..FakeAgentScript::default()
        });
        let id = h.cp.submit(&request(&[])).await.unwrap();
        assert_eq!(h.run(&id, HOUR).await.status, status, "{reason:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn cancel_releases_the_workspace_and_node() {
    let h = harness(config("d1"));
    h.agent.set_script(FakeAgentScript {
        session: SessionReport::Running,
        ..FakeAgentScript::default()
    });
    let id = h.cp.submit(&request(&[])).await.unwrap();
    for _ in 0..20 {
        h.cp.tick().await.unwrap();
        tokio::time::advance(Duration::from_secs(2)).await;
    }
    let task = h.store.get_task(&id).await.unwrap().unwrap();
    assert_eq!(task.status, TaskStatus::InProgress);
    assert!(h.cp.cancel(&id, "user").await.unwrap());
    let task = h.store.get_task(&id).await.unwrap().unwrap();
    assert_eq!(task.status, TaskStatus::Cancelled);
    let ws = h
        .store
        .get_workspace(task.workspace_id.as_ref().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert!(!ws.status.holds_slot());
    let node = h
        .store
        .get_node(task.provisioned_node_id.as_ref().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(node.lifecycle, sam_core::NodeLifecycle::Warm);
    assert!(
        !h.cp.cancel(&id, "user").await.unwrap(),
        "a finished task stays finished"
    );
}

#[tokio::test(start_paused = true)]
async fn invalid_requests_are_rejected_at_submission() {
    let h = harness(config("d1"));
    let check = |layers: Vec<(Layer, LayerSettings)>, field: &str| {
        let h = &h;
        let field = field.to_owned();
        async move {
            let err = h.cp.submit(&request(&layers)).await.unwrap_err();
            assert_eq!(err.category(), ErrorCategory::InvalidConfig, "{err}");
            assert!(
                err.to_string().contains(&field),
                "{err} should name {field}"
            );
        }
    };
    check(
        vec![(
            Layer::Task,
            LayerSettings {
                provider: Some(ProviderKind::Hetzner),
                ..Default::default()
            },
        )],
        "hetzner",
    )
    .await;
    check(
        vec![(
            Layer::Task,
            LayerSettings {
                agent: Some("nope".into()),
                ..Default::default()
            },
        )],
        "unknown agent",
    )
    .await;
    check(
        vec![(
            Layer::Task,
            LayerSettings {
                devcontainer: Some("python".into()),
                workspace_profile: Some(sam_core::WorkspaceProfile::Lightweight),
                ..Default::default()
            },
        )],
        "lightweight",
    )
    .await;
    let mut huge = LayerSettings::default();
    huge.requirements.min_vcpu = Some(64.0);
    check(vec![(Layer::Task, huge)], "64 vCPU").await;
    let mut too_small = sized(VmSize::Small);
    too_small.requirements.min_memory_gb = Some(8.0);
    check(vec![(Layer::Task, too_small)], "requested size small").await;
    let mut empty = request(&[]);
    empty.prompt = "  ".into();
    assert!(h.cp.submit(&empty).await.is_err());
    assert!(
        h.store
            .list_tasks(&Default::default())
            .await
            .unwrap()
            .is_empty(),
        "nothing persisted"
    );
}

#[tokio::test(start_paused = true)]
async fn callbacks_check_scope_and_subject() {
    let h = harness(config("d1"));
    h.agent.set_script(never_ready());
    let id = h.cp.submit(&request(&[])).await.unwrap();
    for _ in 0..5 {
        h.cp.tick().await.unwrap();
        tokio::time::advance(Duration::from_secs(2)).await;
    }
    let task = h.store.get_task(&id).await.unwrap().unwrap();
    assert_eq!(task.execution_step, ExecutionStep::NodeAgentReady);
    let node = task.provisioned_node_id.unwrap();
    let other = sam_core::NodeId::new("n-other").unwrap();
    let wrong_subject = h.cp.issue_node_token(&other);
    let err =
        h.cp.node_ready(wrong_subject.expose(), &node, "1.0", &[])
            .await
            .unwrap_err();
    assert_eq!(err.category(), ErrorCategory::AuthError);
    let ws_token =
        h.cp.issue_workspace_token(&sam_core::WorkspaceId::new(node.as_str()).unwrap());
    assert!(
        h.cp.node_ready(ws_token.expose(), &node, "1.0", &[])
            .await
            .is_err()
    );
    // The right token moves the task on.
    let token = h.cp.issue_node_token(&node);
    h.cp.node_ready(token.expose(), &node, "1.0", &[])
        .await
        .unwrap();
    let task = h.run(&id, HOUR).await;
    assert_eq!(task.status, TaskStatus::Completed);
}

#[tokio::test(start_paused = true)]
async fn sweeps_destroy_expired_warm_nodes_and_orphans() {
    let h = harness(config("d1"));
    let id = h.cp.submit(&request(&[])).await.unwrap();
    assert_eq!(h.run(&id, HOUR).await.status, TaskStatus::Completed);
    // An orphan: a managed VM with no node row.
    let orphan_node = sam_core::NodeId::new("n-orphan").unwrap();
    h.provider
        .create_vm(&sam_core::VmSpec {
            node_id: orphan_node.clone(),
            name: "orphan".into(),
            size: VmSize::Small,
            server_type: "local-small".into(),
            location: sam_core::Location::new("local").unwrap(),
            image: None,
            user_data: String::new(),
            labels: sam_core::Labels::for_node(&orphan_node),
        })
        .await
        .unwrap();
    assert_eq!(h.provider.vms().len(), 2);
    let report = h.cp.sweep().await.unwrap();
    assert_eq!(
        report.nodes_destroyed, 0,
        "the warm node is still within its warm timeout"
    );
    tokio::time::advance(Duration::from_secs(31 * 60)).await;
    let report = h.cp.sweep().await.unwrap();
    let nodes = h.store.list_nodes(&Default::default()).await.unwrap();
    assert_eq!(report.nodes_destroyed, 1, "{report:?} {nodes:#?}");
    assert_eq!(report.orphans_deleted, 1);
    assert!(h.provider.vms().is_empty());
}

#[tokio::test(start_paused = true)]
async fn the_stuck_sweep_never_fires_before_the_waits_it_guards() {
    let h = harness(config("d1"));
    h.agent.set_script(never_ready());
    let id = h.cp.submit(&request(&[])).await.unwrap();
    // Sweep throughout the agent-ready wait: the runner's own limit must fire first.
    let task = loop {
        h.cp.tick().await.unwrap();
        let report = h.cp.sweep().await.unwrap();
        assert_eq!(
            report.stuck_failed, 0,
            "the sweep fired before the wait it guards"
        );
        let task = h.store.get_task(&id).await.unwrap().unwrap();
        if task.status.is_terminal() {
            break task;
        }
        tokio::time::advance(Duration::from_secs(30)).await;
    };
    assert!(task.error.unwrap().message.contains("agent ready timeout"));
}

fn two_location_catalog() -> sam_core::Catalog {
    let locations = [
        sam_core::Location::new("fsn1").unwrap(),
        sam_core::Location::new("nbg1").unwrap(),
    ];
    sam_providers::catalog(ProviderKind::Fake, &locations)
}

#[tokio::test(start_paused = true)]
async fn a_default_location_moves_before_the_size_steps_down() {
    let h = harness_with(
        Arc::new(MemoryStore::new()),
        Arc::new(FakeProvider::with_catalog(two_location_catalog())),
        Arc::new(FakeNodeAgent::new(FakeAgentScript::default())),
        config("d1"),
    );
    h.provider.script(
        FakeOp::CreateVm,
        [FakeOutcome::Fail(ErrorCategory::TransientCapacity)],
    );
    let task = h.submit_and_run(&[]).await;
    assert_eq!(task.status, TaskStatus::Completed);
    assert_eq!(task.provisioned_size, Some(VmSize::Medium));
    assert_eq!(task.provisioned_location.unwrap().as_str(), "nbg1");
}

#[tokio::test(start_paused = true)]
async fn an_explicit_location_never_moves() {
    let h = harness_with(
        Arc::new(MemoryStore::new()),
        Arc::new(FakeProvider::with_catalog(two_location_catalog())),
        Arc::new(FakeNodeAgent::new(FakeAgentScript::default())),
        config("d1"),
    );
    h.provider.script(
        FakeOp::CreateVm,
        [FakeOutcome::Fail(ErrorCategory::TransientCapacity)],
    );
    let settings = LayerSettings {
        location: Some(sam_core::Location::new("fsn1").unwrap()),
        ..LayerSettings::default()
    };
    let id =
        h.cp.submit(&request(&[(Layer::Task, settings)]))
            .await
            .unwrap();
    let task = h.run(&id, HOUR).await;
    assert_eq!(task.status, TaskStatus::Completed);
    // Medium in fsn1 was out; the plan stepped down to small, still in fsn1.
    assert_eq!(task.provisioned_size, Some(VmSize::Small));
    assert_eq!(task.provisioned_location.unwrap().as_str(), "fsn1");
}

#[tokio::test(start_paused = true)]
async fn descent_never_goes_below_what_the_reservation_needs() {
    let h = harness(config("d1"));
    h.provider.script(
        FakeOp::CreateVm,
        std::iter::repeat_n(FakeOutcome::Fail(ErrorCategory::TransientCapacity), 100),
    );
    let mut project = sized(VmSize::Large);
    project.requirements.min_vcpu = Some(3.0);
    let id =
        h.cp.submit(&request(&[(Layer::Project, project)]))
            .await
            .unwrap();
    let task = h.run(&id, HOUR).await;
    assert_eq!(task.status, TaskStatus::Failed);
    assert!(
        h.creates().iter().all(|c| c.0 != VmSize::Small),
        "{:?}",
        h.creates()
    );
    assert_eq!(
        task.error.unwrap().message,
        "No capacity for any available VM size (tried large, medium)."
    );
}

#[tokio::test(start_paused = true)]
async fn a_create_that_fails_in_its_action_moves_to_the_next_entry() {
    let h = harness(config("d1"));
    h.provider.script(
        FakeOp::CreateVm,
        [FakeOutcome::FailInAction(ErrorCategory::TransientCapacity)],
    );
    let id =
        h.cp.submit(&request(&[(Layer::Project, sized(VmSize::Large))]))
            .await
            .unwrap();
    let task = h.run(&id, HOUR).await;
    assert_eq!(task.status, TaskStatus::Completed, "{task:?}");
    assert_eq!(task.provisioned_size, Some(VmSize::Medium));
    assert_eq!(h.provider.vms().len(), 1, "the failed VM was deleted");
}

#[tokio::test(start_paused = true)]
async fn warm_nodes_are_preferred_over_running_ones() {
    let h = harness(config("d1"));
    // Two tasks at once: two nodes (the medium default holds one default workspace
    // twice over, so make each task exclusive).
    let mut exclusive = LayerSettings::default();
    exclusive.requirements.exclusive_node = Some(true);
    let a =
        h.cp.submit(&request(&[(Layer::Task, exclusive.clone())]))
            .await
            .unwrap();
    let b =
        h.cp.submit(&request(&[(Layer::Task, exclusive.clone())]))
            .await
            .unwrap();
    h.run(&a, HOUR).await;
    h.run(&b, HOUR).await;
    assert_eq!(h.creates().len(), 2);
    let c = h.cp.submit(&request(&[])).await.unwrap();
    let task = h.run(&c, HOUR).await;
    assert_eq!(task.status, TaskStatus::Completed);
    assert_eq!(h.creates().len(), 2, "no third VM");
    assert!(task.placement.unwrap().reason.contains("warm"));
}

mod sweep_order {
    use super::*;
    use proptest::prelude::*;

    fn minutes(range: std::ops::Range<u64>) -> impl Strategy<Value = Duration> {
        range.prop_map(|m| Duration::from_secs(m * 60))
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]
        /// Over random valid policies, a node whose agent never reports ready is
        /// failed by the runner's own agent-ready limit, never earlier by the sweep.
        #[test]
        fn the_sweep_never_fires_before_the_runner_limit(
            capacity in minutes(1..10),
            provisioning in minutes(1..30),
            ready in minutes(1..30),
            grace in minutes(1..10),
        ) {
            let mut c = config("d1");
            c.timeouts.capacity_wait = capacity;
            c.timeouts.node_provisioning = provisioning;
            c.timeouts.agent_ready = ready;
            c.timeouts.queued_grace = grace;
            c.timeouts.validate().unwrap();
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()
                .unwrap();
            let message = rt.block_on(async move {
                let h = harness(c);
                h.agent.set_script(never_ready());
                let id = h.cp.submit(&request(&[])).await.unwrap();
                loop {
                    h.cp.tick().await.unwrap();
                    let report = h.cp.sweep().await.unwrap();
                    assert_eq!(report.stuck_failed, 0, "the sweep fired first");
                    let task = h.store.get_task(&id).await.unwrap().unwrap();
                    if task.status.is_terminal() {
                        break task.error.unwrap().message;
                    }
                    tokio::time::advance(Duration::from_secs(20)).await;
                }
            });
            prop_assert!(
                message.contains("agent ready timeout") || message.contains("node provisioning timeout"),
                "{}", message
            );
        }
    }
}

/// Every kind of bad token is refused by the workspace callbacks and changes
/// nothing: another audience, another scope, expired, scopeless, tampered, another
/// key, and a workspace token of another workspace. Then the right token is accepted.
#[tokio::test(start_paused = true)]
async fn workspace_callbacks_refuse_every_bad_token() {
    use sam_core::token::{TokenClaims, TokenScope};
    use sam_core::{SessionCallback, WorkspaceId};

    let h = harness(config("d1"));
    h.agent.set_script(FakeAgentScript {
        workspace: WorkspaceReport::Preparing,
        ..FakeAgentScript::default()
    });
    let id = h.cp.submit(&request(&[])).await.unwrap();
    let task = h.until_step(&id, ExecutionStep::WorkspaceReady).await;
    let ws = task.workspace_id.clone().expect("a workspace");
    let other_ws = WorkspaceId::new("ws-other").unwrap();

    // The key and audience of the harness's signer (tests/support).
    let key = Secret::new("k".repeat(32));
    let signer = TokenSigner::new(key.clone(), "sam").unwrap();
    let now = chrono::Utc::now();
    let hour = Duration::from_secs(3600);
    let claims = |scope: Option<TokenScope>, exp: i64| TokenClaims {
        aud: "sam".to_owned(),
        scope,
        sub: ws.to_string(),
        iat: now.timestamp() - 7200,
        exp,
        kid: None,
    };
    let valid = signer.issue(TokenScope::Workspace, ws.as_str(), now, hour);
    let tampered = {
        let (payload, signature) = valid.expose().split_once('.').unwrap();
        let mut bytes = payload.as_bytes().to_vec();
        let last = bytes.len() - 2;
        bytes[last] = if bytes[last] == b'A' { b'B' } else { b'A' };
        format!("{}.{signature}", String::from_utf8(bytes).unwrap())
    };
    let bad: [(&str, String); 7] = [
        (
            "another audience",
            TokenSigner::new(key.clone(), "sam-vm-agent")
                .unwrap()
                .issue(TokenScope::Workspace, ws.as_str(), now, hour)
                .expose()
                .to_owned(),
        ),
        (
            "another scope",
            signer
                .issue(TokenScope::Node, ws.as_str(), now, hour)
                .expose()
                .to_owned(),
        ),
        (
            "expired",
            signer
                .sign(&claims(Some(TokenScope::Workspace), now.timestamp() - 1))
                .expose()
                .to_owned(),
        ),
        (
            "scopeless",
            signer
                .sign(&claims(None, now.timestamp() + 3600))
                .expose()
                .to_owned(),
        ),
        ("tampered", tampered),
        (
            "another key",
            TokenSigner::new(Secret::new("x".repeat(32)), "sam")
                .unwrap()
                .issue(TokenScope::Workspace, ws.as_str(), now, hour)
                .expose()
                .to_owned(),
        ),
        (
            "another workspace's token",
            h.cp.issue_workspace_token(&other_ws).expose().to_owned(),
        ),
    ];
    let ready = WorkspaceReport::Ready {
        effective_profile: "full".to_owned(),
        recovery: false,
    };
    let done = SessionCallback::Report(SessionReport::Stopped {
        reason: StopReason::EndTurn,
        last_message: None,
    });
    for (why, token) in &bad {
        let err = h.cp.workspace_ready(token, &ws, &ready).await.unwrap_err();
        assert_eq!(err.category(), ErrorCategory::AuthError, "{why}: {err}");
        let err = h.cp.session_event(token, &ws, &done).await.unwrap_err();
        assert_eq!(err.category(), ErrorCategory::AuthError, "{why}: {err}");
    }
    let unchanged = h.store.get_task(&id).await.unwrap().unwrap();
    assert_eq!(unchanged.status, task.status);
    assert_eq!(unchanged.execution_step, ExecutionStep::WorkspaceReady);

    h.cp.workspace_ready(valid.expose(), &ws, &ready)
        .await
        .unwrap();
    h.agent.set_script(FakeAgentScript::default());
    let task = h.run(&id, HOUR).await;
    assert_eq!(task.status, TaskStatus::Completed);
}

/// A task that has ended is closed: a late output, session report, session event or
/// workspace failure with the workspace's own token is refused as a conflict, says
/// so in the task's events, and changes nothing.
#[tokio::test(start_paused = true)]
async fn an_ended_task_refuses_every_callback_that_would_change_it() {
    use sam_core::{SessionCallback, SessionEvent, TaskError, TaskEventKind, TaskOutput};

    let h = harness(config("d1"));
    let id = h.cp.submit(&request(&[])).await.unwrap();
    let task = h.run(&id, HOUR).await;
    assert_eq!(task.status, TaskStatus::Completed);
    let ws = task.workspace_id.clone().expect("a workspace");
    let token = h.cp.issue_workspace_token(&ws);
    let mut events = h.cp.subscribe();

    let late = [
        SessionCallback::Output(TaskOutput {
            branch: "evil".to_owned(),
            commit: Some("0000000".to_owned()),
            pull_request_url: Some("https://evil.example/pr/1".to_owned()),
        }),
        SessionCallback::Report(SessionReport::Failed {
            error: TaskError {
                category: ErrorCategory::Unknown,
                message: "late".to_owned(),
            },
        }),
        SessionCallback::Event(SessionEvent::Crashed {
            reason: "late".to_owned(),
            resumable: false,
        }),
    ];
    for callback in &late {
        let err =
            h.cp.session_event(token.expose(), &ws, callback)
                .await
                .unwrap_err();
        assert_eq!(
            err.category(),
            ErrorCategory::Conflict,
            "{callback:?}: {err}"
        );
    }
    let failed = WorkspaceReport::Failed {
        error: TaskError {
            category: ErrorCategory::Unknown,
            message: "late".to_owned(),
        },
    };
    let err =
        h.cp.workspace_ready(token.expose(), &ws, &failed)
            .await
            .unwrap_err();
    assert_eq!(err.category(), ErrorCategory::Conflict, "{err}");

    let after = h.store.get_task(&id).await.unwrap().unwrap();
    assert_eq!(
        (after.status, &after.output, &after.error),
        (task.status, &task.output, &task.error),
        "the ended task is unchanged"
    );
    let mut refused = Vec::new();
    while let Ok(event) = events.try_recv() {
        if let TaskEventKind::Refused { callback, reason } = event.kind {
            assert!(reason.contains(id.as_str()), "{reason}");
            refused.push(callback);
        }
    }
    assert_eq!(
        refused,
        [
            "output",
            "session report",
            "session event",
            "workspace failure"
        ],
        "each refusal is a task event"
    );
}

/// The node provisioned for a task can be filled by other tasks before the task
/// reserves its own slot there (many tasks in flight, as in the scale-out test): the
/// task is placed again rather than failed.
#[tokio::test(start_paused = true)]
async fn a_task_whose_new_node_filled_up_meanwhile_is_placed_again() {
    use sam_core::{SlotOutcome, WorkspaceId, WorkspaceRecord, WorkspaceStatus};

    let h = harness(config("d1"));
    let id = h.cp.submit(&request(&[])).await.unwrap();
    let task = h.until_step(&id, ExecutionStep::WorkspaceCreation).await;
    let first = task.provisioned_node_id.clone().expect("a node");
    // Other tasks take every slot of the new node.
    let now = chrono::Utc::now();
    for n in 0.. {
        let other = TaskId::new(format!("t-other{n}")).unwrap();
        let outcome = h
            .store
            .reserve_workspace_slot(&WorkspaceRecord {
                id: WorkspaceId::new(format!("w-other{n}")).unwrap(),
                node_id: first.clone(),
                task_id: other,
                status: WorkspaceStatus::Creating,
                effective_profile: None,
                reservation: task.reservation,
                created_at: now,
                updated_at: now,
            })
            .await
            .unwrap();
        if matches!(outcome, SlotOutcome::Rejected(_)) {
            break;
        }
        assert!(n < 64, "the node never filled up");
    }
    let task = h.run(&id, HOUR).await;
    assert_eq!(task.status, TaskStatus::Completed, "{:?}", task.error);
    assert_ne!(
        task.provisioned_node_id.as_ref(),
        Some(&first),
        "placed on another node"
    );
}

#[tokio::test(start_paused = true)]
async fn a_late_workspace_report_does_not_revive_a_finished_tasks_workspace() {
    let h = harness(config("d1"));
    let task = h.submit_and_run(&[]).await;
    assert_eq!(task.status, TaskStatus::Completed, "{task:?}");
    let ws = task.workspace_id.clone().expect("a workspace");
    let token = h.cp.issue_workspace_token(&ws);
    // The VM agent's ready callback arrives after the runner polled the same news and
    // the task finished.
    h.cp.workspace_ready(
        token.expose(),
        &ws,
        &WorkspaceReport::Ready {
            effective_profile: "full".to_owned(),
            recovery: false,
        },
    )
    .await
    .unwrap();
    let record = h.store.get_workspace(&ws).await.unwrap().unwrap();
    assert_eq!(record.status, sam_core::WorkspaceStatus::Stopped);
    let nodes = h.store.list_nodes(&Default::default()).await.unwrap();
    assert_eq!(nodes[0].lifecycle, sam_core::NodeLifecycle::Warm);
}

/// A node provisioned for a task is held for it until the task takes its slot there:
/// another task is not placed on it meanwhile (it would leave the first task to
/// provision a second VM), and is once the first task is on it or has ended.
#[tokio::test]
async fn a_node_provisioned_for_a_task_is_held_until_the_task_takes_its_slot() {
    use sam_core::testkit::fixtures::{node, reservation, task, task_id, workspace};
    use sam_core::{
        DefaultScheduler, Placement, PlacementRequest, Scheduler, Transition, WorkspaceRecord,
    };

    let store = Arc::new(MemoryStore::new());
    let mut creator = task("t-creator", 0);
    creator.status = TaskStatus::InProgress;
    let held = node("n-new", 0);
    creator.provisioned_node_id = Some(held.id.clone());
    store.create_task(&creator).await.unwrap();
    store
        .put_node(&sam_core::NodeRecord {
            created_for: Some(creator.id.clone()),
            provider: ProviderKind::Fake,
            ..held.clone()
        })
        .await
        .unwrap();
    let scheduler = DefaultScheduler::new(store.clone());
    let small = reservation(500, 512, false, 10);
    let request = |id: &str| PlacementRequest {
        task_id: task_id(id),
        provider: ProviderKind::Fake,
        size: VmSize::Medium,
        size_source: Layer::Platform,
        location: None,
        location_source: Layer::Platform,
        reservation: small,
        preferred_node: None,
        credential_owner: None,
        now: chrono::Utc::now(),
    };
    let on_held = |placement: &Placement| matches!(placement, Placement::Node { node_id, .. } if node_id == &held.id);

    let other = scheduler.place(&request("t-other")).await.unwrap();
    assert!(
        !on_held(&other.placement),
        "placed on a node held for another task: {other:?}"
    );
    assert!(
        other
            .explanation
            .rejected
            .iter()
            .any(|r| r.reason.contains("has not taken its slot")),
        "{other:?}"
    );
    // The creator itself may use it.
    let own = scheduler.place(&request("t-creator")).await.unwrap();
    assert!(on_held(&own.placement), "{own:?}");

    // Once the creator holds its slot, the node is open to others.
    let slot = WorkspaceRecord {
        task_id: creator.id.clone(),
        ..workspace("w-creator", "n-new", small, 1)
    };
    store.reserve_workspace_slot(&slot).await.unwrap();
    let other = scheduler.place(&request("t-other")).await.unwrap();
    assert!(on_held(&other.placement), "{other:?}");

    // And so it is when the creator ended without taking one.
    let store = Arc::new(MemoryStore::new());
    let mut gone = task("t-gone", 0);
    gone.provisioned_node_id = Some(held.id.clone());
    store.create_task(&gone).await.unwrap();
    store
        .put_node(&sam_core::NodeRecord {
            created_for: Some(gone.id.clone()),
            provider: ProviderKind::Fake,
            ..held.clone()
        })
        .await
        .unwrap();
    let scheduler = DefaultScheduler::new(store.clone());
    let before = scheduler.place(&request("t-other")).await.unwrap();
    assert!(!on_held(&before.placement), "{before:?}");
    let ended = Transition {
        from: gone.status,
        to: TaskStatus::Cancelled,
        actor: "test".to_owned(),
        reason: None,
        error: None,
        at: chrono::Utc::now(),
    };
    assert!(store.transition_task(&gone.id, &ended).await.unwrap());
    let after = scheduler.place(&request("t-other")).await.unwrap();
    assert!(on_held(&after.placement), "{after:?}");
}

/// A heartbeat reads its node and then writes it. A finished task's release of the
/// node to the warm pool can land in between (the warm path releases a node every
/// few milliseconds); the heartbeat must not put back the `active` lifecycle it read,
/// or the node never returns to the pool: it holds no task, yet its heartbeats keep
/// it from ever looking idle to the node sweep.
#[tokio::test]
async fn a_heartbeat_keeps_a_warm_release_that_lands_between_its_read_and_write() {
    use futures::FutureExt as _;
    use sam_core::{MockStore, NodeLifecycle, NodeMetrics};

    let inner = Arc::new(MemoryStore::new());
    let node = sam_core::testkit::fixtures::node("n-1", 1);
    inner.put_node(&node).await.unwrap();
    let released_at = sam_core::testkit::fixtures::at(20);

    let mut store = MockStore::new();
    let racing = Arc::clone(&inner);
    store.expect_get_node().returning(move |id| {
        // The memory store answers at once, so its futures are ready when polled.
        let read = racing.get_node(id).now_or_never().expect("ready");
        let warmed = racing
            .release_node_to_warm(id, released_at)
            .now_or_never()
            .expect("ready");
        assert!(
            matches!(warmed, Ok(true)),
            "the release lands after the read"
        );
        read
    });
    let writes = Arc::clone(&inner);
    store
        .expect_put_node()
        .returning(move |n| writes.put_node(n).now_or_never().expect("ready"));
    let beats = Arc::clone(&inner);
    store.expect_record_node_beat().returning(move |id, beat| {
        beats
            .record_node_beat(id, beat)
            .now_or_never()
            .expect("ready")
    });

    let h = harness_with(
        Arc::new(store),
        Arc::new(FakeProvider::new()),
        Arc::new(FakeNodeAgent::new(FakeAgentScript::default())),
        config("runner"),
    );
    let token = h.cp.issue_node_token(&node.id);
    h.cp.heartbeat(token.expose(), &node.id, &NodeMetrics::default())
        .await
        .unwrap();

    let after = inner.get_node(&node.id).await.unwrap().unwrap();
    assert_eq!(
        (after.lifecycle, after.warm_since),
        (NodeLifecycle::Warm, Some(released_at)),
        "the heartbeat undid the node's return to the warm pool"
    );
    assert!(
        after.last_heartbeat_at > node.last_heartbeat_at,
        "the heartbeat is recorded"
    );
}

/// When the store refuses the slot the scheduler chose (another control plane took
/// the room first), the runner places the task again, and the scheduler's cached
/// fleet view, which still shows the room, is checked against the store: the task
/// goes to the node that has room, with no new VM.
#[tokio::test(start_paused = true)]
async fn a_refused_slot_leads_to_a_fresh_placement() {
    use sam_core::testkit::fixtures::{task, workspace};
    use sam_core::{NodeLifecycle, SlotOutcome, WorkspaceRecord};

    // A view trusted for an hour: the re-placement below is served from it, so the
    // check against the store is what finds the node full.
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let h = harness_scheduled(
        Arc::clone(&store),
        Arc::new(sam_core::DefaultScheduler::with_max_staleness(
            Arc::clone(&store),
            HOUR,
        )),
    );
    // Two exclusive tasks leave two idle medium nodes; make them active, running
    // nodes the existing-node step chooses between.
    let mut exclusive = LayerSettings::default();
    exclusive.requirements.exclusive_node = Some(true);
    let mut both = Vec::new();
    for _ in 0..2 {
        both.push(
            h.cp.submit(&request(&[(Layer::Task, exclusive.clone())]))
                .await
                .unwrap(),
        );
    }
    for id in &both {
        assert_eq!(h.run(id, HOUR).await.status, TaskStatus::Completed);
    }
    let mut nodes = h.store.list_nodes(&Default::default()).await.unwrap();
    assert_eq!(nodes.len(), 2);
    for node in &mut nodes {
        node.lifecycle = NodeLifecycle::Active;
        node.warm_since = None;
        h.store.put_node(node).await.unwrap();
    }
    let (tight, loose) = (nodes[0].id.clone(), nodes[1].id.clone());

    // Another control plane's task holds one default slot on `tight`, so it is the
    // best fit for a default task.
    let default = h.cp.submit(&request(&[])).await.unwrap();
    let reservation = h
        .store
        .get_task(&default)
        .await
        .unwrap()
        .unwrap()
        .reservation;
    h.cp.cancel(&default, "test").await.unwrap();
    let mut slot = 0;
    let mut occupy = |node: &sam_core::NodeId| {
        slot += 1;
        let mut other = task(&format!("t-other-{slot}"), 0);
        other.status = TaskStatus::InProgress;
        let ws = WorkspaceRecord {
            task_id: other.id.clone(),
            ..workspace(&format!("w-other-{slot}"), node.as_str(), reservation, 0)
        };
        (other, ws)
    };
    let (other, ws) = occupy(&tight);
    h.store.create_task(&other).await.unwrap();
    assert_eq!(
        h.store.reserve_workspace_slot(&ws).await.unwrap(),
        SlotOutcome::Reserved
    );

    let id = h.cp.submit(&request(&[])).await.unwrap();
    let placed = h.until_step(&id, ExecutionStep::WorkspaceCreation).await;
    assert_eq!(
        placed.provisioned_node_id.as_ref(),
        Some(&tight),
        "the tightest fit first: {:?}",
        placed.placement
    );
    // The other control plane takes the last slot on `tight` before this task does.
    let (other, ws) = occupy(&tight);
    h.store.create_task(&other).await.unwrap();
    assert_eq!(
        h.store.reserve_workspace_slot(&ws).await.unwrap(),
        SlotOutcome::Reserved
    );

    let done = h.run(&id, HOUR).await;
    assert_eq!(done.status, TaskStatus::Completed, "{done:?}");
    assert_eq!(
        done.provisioned_node_id.as_ref(),
        Some(&loose),
        "placed again, on the node with room"
    );
    let explanation = done.placement.expect("placed");
    assert_eq!(explanation.chosen, loose.to_string());
    assert!(
        explanation
            .rejected
            .iter()
            .any(|r| r.candidate == tight.to_string()),
        "the full node was checked and rejected: {explanation:?}"
    );
    let workspace = h
        .store
        .get_workspace(&done.workspace_id.expect("a workspace"))
        .await
        .unwrap()
        .expect("its row");
    assert_eq!(workspace.node_id, loose);
    assert_eq!(h.creates().len(), 2, "no new VM");
}

/// A scheduler that records the slots it is told were freed, around the default one.
#[derive(Debug)]
struct Recording {
    inner: sam_core::DefaultScheduler,
    released: std::sync::Mutex<Vec<(TaskId, sam_core::WorkspaceId)>>,
}

#[async_trait::async_trait]
impl sam_core::Scheduler for Recording {
    async fn place(
        &self,
        request: &sam_core::PlacementRequest,
    ) -> Result<sam_core::PlacementDecision, sam_core::Error> {
        self.inner.place(request).await
    }

    fn released(&self, task: &TaskId, workspace: &sam_core::WorkspaceId) {
        self.inner.released(task, workspace);
        self.released
            .lock()
            .unwrap()
            .push((task.clone(), workspace.clone()));
    }
}

/// A finished task's slot is freed in the store first, then the scheduler is told,
/// once, so a scheduler that keeps a view counts the room again before its next read.
#[tokio::test(start_paused = true)]
async fn a_finished_task_tells_the_scheduler_its_slot_is_free() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let scheduler = Arc::new(Recording {
        inner: sam_core::DefaultScheduler::with_max_staleness(Arc::clone(&store), HOUR),
        released: std::sync::Mutex::default(),
    });
    let h = harness_scheduled(
        store,
        Arc::clone(&scheduler) as Arc<dyn sam_core::Scheduler>,
    );
    let id = h.cp.submit(&request(&[])).await.unwrap();
    let task = h.run(&id, HOUR).await;
    assert_eq!(task.status, TaskStatus::Completed);
    let workspace = task.workspace_id.clone().expect("the task had a workspace");
    let stopped = h.store.get_workspace(&workspace).await.unwrap().unwrap();
    assert!(!stopped.status.holds_slot(), "{stopped:?}");
    assert_eq!(
        *scheduler.released.lock().unwrap(),
        vec![(id, workspace)],
        "told once, after the store freed the slot"
    );
}

/// The task's record, once it is terminal or `limit` of (virtual) time has passed.
async fn terminal_within(store: &dyn Store, id: &TaskId, limit: Duration) -> TaskRecord {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let task = store.get_task(id).await.unwrap().unwrap();
        if task.status.is_terminal() || tokio::time::Instant::now() >= deadline {
            return task;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Starts `ControlPlane::run` on the harness; the sender stops it.
fn start_running(
    h: &Harness,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let cp = h.cp.clone();
    let running = tokio::spawn(async move {
        cp.run(async {
            let _ = stopped.await;
        })
        .await;
    });
    (stop, running)
}

/// Waits until the provider has been asked to create `count` VMs.
async fn creates_started(provider: &FakeProvider, count: usize) {
    while provider
        .calls()
        .iter()
        .filter(|c| matches!(c, FakeCall::CreateVm(_)))
        .count()
        < count
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `run` leases more while a step is under way: a task submitted while another's VM
/// create hangs runs to completion before that create returns. (A driver that waited
/// for its whole batch, as `tick` does, left it queued behind the slow create.)
#[tokio::test(start_paused = true)]
async fn a_slow_step_holds_back_only_its_own_task() {
    let mut config = config("d1");
    config.poll_interval = Duration::from_millis(100);
    let h = harness(config);
    // Shorter than the lease (30 s), so the slow task is never leased twice.
    let slow = Duration::from_secs(20);
    h.provider.script(
        FakeOp::CreateVm,
        [FakeOutcome::Delayed(slow, Box::new(FakeOutcome::Succeed))],
    );
    let started = tokio::time::Instant::now();
    let (stop, running) = start_running(&h);
    let first = h.cp.submit(&request(&[])).await.unwrap();
    creates_started(&h.provider, 1).await;
    let second = h.cp.submit(&request(&[])).await.unwrap();

    let task = terminal_within(h.store.as_ref(), &second, slow).await;
    assert_eq!(task.status, TaskStatus::Completed, "{task:?}");
    assert!(
        started.elapsed() < slow,
        "the second task waited {:?} for the first one's create",
        started.elapsed()
    );
    let blocked = h.store.get_task(&first).await.unwrap().unwrap();
    assert_eq!(blocked.execution_step, ExecutionStep::NodeProvisioning);

    let task = terminal_within(h.store.as_ref(), &first, HOUR).await;
    assert_eq!(task.status, TaskStatus::Completed, "{task:?}");
    assert_eq!(h.creates().len(), 2);
    stop.send(()).unwrap();
    running.await.unwrap();
}

/// A stopped `run` leases nothing more but lets the step under way finish and write
/// its result, so the task is not left for its lease to run out.
#[tokio::test(start_paused = true)]
async fn a_stopped_run_finishes_the_step_under_way() {
    let h = harness(config("d1"));
    let slow = Duration::from_secs(20);
    h.provider.script(
        FakeOp::CreateVm,
        [FakeOutcome::Delayed(slow, Box::new(FakeOutcome::Succeed))],
    );
    let (stop, running) = start_running(&h);
    let id = h.cp.submit(&request(&[])).await.unwrap();
    creates_started(&h.provider, 1).await;
    let asked = tokio::time::Instant::now();
    stop.send(()).unwrap();
    running.await.unwrap();
    assert!(
        asked.elapsed() >= slow - Duration::from_secs(1),
        "returned {:?} after the stop, before the create ended",
        asked.elapsed()
    );

    let task = h.store.get_task(&id).await.unwrap().unwrap();
    assert_eq!(task.lease_owner, None, "the step's lease was released");
    assert!(!task.status.is_terminal());
    assert_eq!(h.provider.vms().len(), 1, "the VM was created");
}

/// A step that outlives its lease is not started again by the driver still running
/// it: the lease it takes again is released by the step under way, and the VM is
/// created once.
#[tokio::test(start_paused = true)]
async fn a_step_longer_than_its_lease_is_not_driven_twice() {
    let mut config = config("d1");
    config.poll_interval = Duration::from_millis(100);
    config.lease = Duration::from_secs(5);
    let h = harness(config);
    h.provider.script(
        FakeOp::CreateVm,
        [FakeOutcome::Delayed(
            Duration::from_secs(20),
            Box::new(FakeOutcome::Succeed),
        )],
    );
    let (stop, running) = start_running(&h);
    let id = h.cp.submit(&request(&[])).await.unwrap();
    let task = terminal_within(h.store.as_ref(), &id, HOUR).await;
    assert_eq!(task.status, TaskStatus::Completed, "{task:?}");
    assert_eq!(h.creates().len(), 1, "{:?}", h.provider.calls());
    stop.send(()).unwrap();
    running.await.unwrap();
}

/// What `report-boot-failure.sh` reports for a boot that failed in `packages`
/// (exit status 100, apt-get's), once the callback route has read its journal.
fn packages_failed() -> sam_core::BootFailureReport {
    let at = |s: i64| chrono::DateTime::from_timestamp(1_765_000_000 + s, 0).unwrap();
    sam_core::BootFailureReport {
        phase: "packages".into(),
        exit_status: 100,
        journal: vec![
            "PHASE START: swap".into(),
            "PHASE END: swap".into(),
            "PHASE START: packages".into(),
            "PHASE FAILED: packages (exit 100)".into(),
        ],
        timeline: vec![
            sam_core::BootPhaseRecord {
                phase: "swap".into(),
                started_at: at(0),
                ended_at: Some(at(2)),
                failed: false,
            },
            sam_core::BootPhaseRecord {
                phase: "packages".into(),
                started_at: at(2),
                ended_at: None,
                failed: false,
            },
        ],
    }
}

impl Harness {
    /// The node the task is recorded on, read back.
    async fn task_node(&self, id: &TaskId) -> sam_core::NodeRecord {
        let task = self.store.get_task(id).await.unwrap().unwrap();
        let node = task.provisioned_node_id.expect("the task names a node");
        self.store.get_node(&node).await.unwrap().unwrap()
    }

    /// Reports a failed boot of `node` with its own token.
    async fn boot_failed(&self, node: &sam_core::NodeId) {
        let token = self.cp.issue_node_token(node);
        self.cp
            .node_boot_failed(token.expose(), node, &packages_failed())
            .await
            .unwrap();
    }
}

/// A script for a node whose agent never comes up.
fn never_ready() -> FakeAgentScript {
    FakeAgentScript {
        ready_after_probes: None,
        ..FakeAgentScript::default()
    }
}

#[tokio::test(start_paused = true)]
async fn a_boot_failure_moves_the_task_to_a_new_node_and_deletes_the_first_vm() {
    let h = harness(config("d1"));
    h.agent.set_script(never_ready());
    let id = h.cp.submit(&request(&[])).await.unwrap();
    h.until_step(&id, ExecutionStep::NodeAgentReady).await;
    let first = h.task_node(&id).await;
    let first_vm = first.vm_id.clone().unwrap();
    h.boot_failed(&first.id).await;
    h.agent.set_script(FakeAgentScript::default());

    // The callback itself records the failure and deletes the VM.
    let failed = h.store.get_node(&first.id).await.unwrap().unwrap();
    assert_eq!(failed.status, sam_core::NodeStatus::Deleted);
    let failure = failed.boot.failure.clone().expect("the failure is kept");
    assert_eq!(
        (failure.phase.as_str(), failure.exit_status),
        ("packages", 100)
    );
    assert_eq!(failure.journal.len(), 4);
    let failed_phases: Vec<(&str, bool)> = failed
        .boot
        .timeline
        .iter()
        .map(|p| (p.phase.as_str(), p.failed))
        .collect();
    assert_eq!(failed_phases, [("swap", false), ("packages", true)]);
    assert!(h.provider.vms().iter().all(|vm| vm.id != first_vm));

    let before = tokio::time::Instant::now();
    let task = h.run(&id, HOUR).await;
    assert_eq!(task.status, TaskStatus::Completed, "{task:?}");
    assert!(
        before.elapsed() < Duration::from_secs(60),
        "{:?}",
        before.elapsed()
    );
    assert_eq!(task.node_replacements, 1);
    assert_ne!(task.provisioned_node_id.as_ref(), Some(&first.id));
    assert!(
        task.workspace_id.as_ref().unwrap().as_str().ends_with("-1"),
        "a fresh workspace on the new node: {:?}",
        task.workspace_id
    );
    assert_eq!(h.provider.vms().len(), 1, "only the replacement runs");
}

#[tokio::test(start_paused = true)]
async fn a_second_boot_failure_fails_the_task_naming_the_phase_and_status() {
    let h = harness(config("d1"));
    h.agent.set_script(never_ready());
    let id = h.cp.submit(&request(&[])).await.unwrap();
    h.until_step(&id, ExecutionStep::NodeAgentReady).await;
    let first = h.task_node(&id).await;
    h.boot_failed(&first.id).await;
    for _ in 0..20 {
        h.cp.tick().await.unwrap();
        tokio::time::advance(Duration::from_secs(1)).await;
        let task = h.store.get_task(&id).await.unwrap().unwrap();
        if task
            .provisioned_node_id
            .as_ref()
            .is_some_and(|n| n != &first.id)
            && task.execution_step == ExecutionStep::NodeAgentReady
        {
            break;
        }
    }
    let second = h.task_node(&id).await;
    assert_ne!(second.id, first.id);
    h.boot_failed(&second.id).await;
    let task = h.run(&id, HOUR).await;
    let error = failed_with(&task, "phase packages");
    assert!(error.message.contains("exit status 100"), "{error:?}");
    assert!(error.message.contains("replacement"), "{error:?}");
    assert_ne!(error.category, ErrorCategory::TransientCapacity);
    assert!(h.provider.vms().is_empty(), "both failed VMs are deleted");
}

#[tokio::test(start_paused = true)]
async fn a_vm_that_vanishes_or_fails_while_booting_is_replaced_within_seconds() {
    for vanish in [true, false] {
        let h = harness(config("d1"));
        h.agent.queue_node_scripts([never_ready()]);
        let id = h.cp.submit(&request(&[])).await.unwrap();
        h.until_step(&id, ExecutionStep::NodeAgentReady).await;
        let first = h.task_node(&id).await;
        let vm = first.vm_id.clone().unwrap();
        if vanish {
            h.provider.delete_vm(&vm).await.unwrap();
        } else {
            assert!(h.provider.fail_vm(&vm));
        }
        let before = tokio::time::Instant::now();
        let task = h.run(&id, HOUR).await;
        assert_eq!(
            task.status,
            TaskStatus::Completed,
            "vanish {vanish}: {task:?}"
        );
        assert!(
            before.elapsed() < Duration::from_secs(60),
            "vanish {vanish}"
        );
        assert_eq!(task.node_replacements, 1);
        assert!(
            h.provider.vms().iter().all(|v| v.id != vm),
            "vanish {vanish}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn the_replacement_budget_is_configurable() {
    let mut config = config("d1");
    config.node_replacements = 0;
    let h = harness(config);
    h.agent.queue_node_scripts([never_ready()]);
    let id = h.cp.submit(&request(&[])).await.unwrap();
    h.until_step(&id, ExecutionStep::NodeAgentReady).await;
    let vm = h.task_node(&id).await.vm_id.unwrap();
    assert!(h.provider.fail_vm(&vm));
    let task = h.run(&id, HOUR).await;
    let error = failed_with(&task, "no replacement server");
    assert!(
        error.message.contains("reports the server's VM as failed"),
        "{error:?}"
    );
    assert!(h.provider.vms().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_warm_node_whose_agent_died_hands_the_task_to_a_new_node_within_seconds() {
    let h = harness(config("d1"));
    let first = h.submit_and_run(&[]).await;
    assert_eq!(first.status, TaskStatus::Completed);
    let dead = first.provisioned_node_id.clone().unwrap();
    h.agent.kill(&dead);
    let before = tokio::time::Instant::now();
    let task = h.submit_and_run(&[]).await;
    assert_eq!(task.status, TaskStatus::Completed, "{task:?}");
    assert!(
        before.elapsed() < Duration::from_secs(30),
        "{:?}",
        before.elapsed()
    );
    assert_ne!(task.provisioned_node_id.as_ref(), Some(&dead));
    assert_eq!(task.node_replacements, 1);
    let node = h.store.get_node(&dead).await.unwrap().unwrap();
    assert_eq!(
        node.status,
        sam_core::NodeStatus::Deleted,
        "the dead node nobody else used is destroyed"
    );
    // The slot reserved on the dead node is free again.
    let held: Vec<_> = h
        .store
        .list_workspaces(&dead)
        .await
        .unwrap()
        .into_iter()
        .filter(|w| w.status.holds_slot())
        .collect();
    assert!(held.is_empty(), "{held:?}");
}

#[tokio::test(start_paused = true)]
async fn a_node_gone_stale_before_workspace_creation_is_left_for_another() {
    let h = harness(config("d1"));
    let first = h.submit_and_run(&[]).await;
    let warm = first.provisioned_node_id.clone().unwrap();
    let id = h.cp.submit(&request(&[])).await.unwrap();
    h.cp.tick().await.unwrap();
    let task = h.store.get_task(&id).await.unwrap().unwrap();
    assert_eq!(task.execution_step, ExecutionStep::WorkspaceCreation);
    assert_eq!(task.provisioned_node_id.as_ref(), Some(&warm));
    // Its heartbeats stop, and the sweep marks it stale before the task goes on.
    tokio::time::advance(Duration::from_secs(10 * 60)).await;
    assert_eq!(h.cp.sweep().await.unwrap().nodes_stale, 1);
    let task = h.run(&id, HOUR).await;
    assert_eq!(task.status, TaskStatus::Completed, "{task:?}");
    assert_ne!(task.provisioned_node_id.as_ref(), Some(&warm));
    let on_warm = h
        .agent
        .calls()
        .into_iter()
        .filter(|c| {
            matches!(c, sam_core::testkit::node_agent::FakeAgentCall::CreateWorkspace(n, _) if n == &warm)
        })
        .count();
    assert_eq!(
        on_warm, 1,
        "only the first task's workspace was created there"
    );
}

#[tokio::test(start_paused = true)]
async fn a_dead_agent_on_a_shared_node_marks_it_stale_and_leaves_it_to_its_tasks() {
    let h = harness(config("d1"));
    h.agent.set_script(FakeAgentScript {
        session: SessionReport::Running,
        ..FakeAgentScript::default()
    });
    let first = h.cp.submit(&request(&[])).await.unwrap();
    h.until_step(&first, ExecutionStep::Running).await;
    let shared = h.task_node(&first).await.id;
    h.agent.kill(&shared);
    let second = h.cp.submit(&request(&[])).await.unwrap();
    let moved = h.until_step(&second, ExecutionStep::Running).await;
    assert_ne!(moved.provisioned_node_id.as_ref(), Some(&shared));
    assert_eq!(moved.node_replacements, 1);
    let tried = h.agent.calls().into_iter().any(|c| {
        matches!(c, sam_core::testkit::node_agent::FakeAgentCall::CreateWorkspace(n, _) if n == shared)
    });
    assert!(tried, "the second task was placed on the shared node first");
    let node = h.store.get_node(&shared).await.unwrap().unwrap();
    assert_eq!(node.health, sam_core::NodeHealth::Stale);
    assert_ne!(
        node.status,
        sam_core::NodeStatus::Deleted,
        "its other task still runs there"
    );
    let first = h.store.get_task(&first).await.unwrap().unwrap();
    assert_eq!(first.status, TaskStatus::InProgress);
}

#[tokio::test(start_paused = true)]
async fn a_vm_that_vanishes_while_it_is_created_is_replaced_after_the_grace() {
    let h = harness(config("d1"));
    // The first create is accepted but does not run yet.
    h.provider.script(
        FakeOp::PollCreate,
        std::iter::repeat_n(FakeOutcome::Fail(ErrorCategory::Transient), 3),
    );
    let id = h.cp.submit(&request(&[])).await.unwrap();
    let mut vm = None;
    for _ in 0..20 {
        h.cp.tick().await.unwrap();
        tokio::time::advance(Duration::from_secs(1)).await;
        vm = h.provider.vms().first().map(|v| v.id.clone());
        if vm.is_some() {
            break;
        }
    }
    let vm = vm.expect("the first VM was created");
    h.provider.delete_vm(&vm).await.unwrap();
    let before = tokio::time::Instant::now();
    let task = h.run(&id, HOUR).await;
    assert_eq!(task.status, TaskStatus::Completed, "{task:?}");
    assert_eq!(task.node_replacements, 1);
    let took = before.elapsed();
    assert!(
        took >= sam_core::VANISHED_GRACE - Duration::from_secs(5)
            && took < Duration::from_secs(120),
        "replaced after the grace, not at the provisioning timeout: {took:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_lost_vm_is_replaced_only_once_it_is_deleted() {
    let h = harness(config("d1"));
    h.agent.queue_node_scripts([never_ready()]);
    let id = h.cp.submit(&request(&[])).await.unwrap();
    h.until_step(&id, ExecutionStep::NodeAgentReady).await;
    let vm = h.task_node(&id).await.vm_id.unwrap();
    assert!(h.provider.fail_vm(&vm));
    h.provider.script(
        FakeOp::DeleteVm,
        [
            FakeOutcome::Fail(ErrorCategory::Transient),
            FakeOutcome::Fail(ErrorCategory::Transient),
        ],
    );
    for _ in 0..200 {
        h.cp.tick().await.unwrap();
        assert!(
            h.provider.vms().len() <= 1,
            "a replacement was created while the lost VM still ran: {:?}",
            h.provider.vms()
        );
        if h.store
            .get_task(&id)
            .await
            .unwrap()
            .unwrap()
            .status
            .is_terminal()
        {
            break;
        }
        tokio::time::advance(h.cp.config().poll_interval).await;
    }
    let task = h.store.get_task(&id).await.unwrap().unwrap();
    assert_eq!(task.status, TaskStatus::Completed, "{task:?}");
    assert_eq!(task.node_replacements, 1);
    let deletes = h
        .provider
        .calls()
        .into_iter()
        .filter(|c| matches!(c, FakeCall::DeleteVm(v) if v == &vm))
        .count();
    assert_eq!(
        deletes, 3,
        "two refused deletes, then the one that went through"
    );
}

#[tokio::test(start_paused = true)]
async fn a_task_on_a_replacement_node_gets_its_whole_boot_time_before_the_stuck_sweep() {
    let h = harness(config("d1"));
    // The first boot fails after 14 minutes; the replacement takes 14 more.
    let slow = FakeAgentScript {
        ready_after_probes: Some(420),
        ..FakeAgentScript::default()
    };
    h.agent.queue_node_scripts([never_ready(), slow]);
    let id = h.cp.submit(&request(&[])).await.unwrap();
    h.until_step(&id, ExecutionStep::NodeAgentReady).await;
    let first = h.task_node(&id).await;
    let poll = h.cp.config().poll_interval;
    for _ in 0..420 {
        h.cp.tick().await.unwrap();
        tokio::time::advance(poll).await;
    }
    h.boot_failed(&first.id).await;
    let mut ticks = 0u32;
    let task = loop {
        h.cp.tick().await.unwrap();
        if ticks.is_multiple_of(15) {
            h.cp.sweep().await.unwrap();
        }
        let task = h.store.get_task(&id).await.unwrap().unwrap();
        if task.status.is_terminal() || ticks > 3600 {
            break task;
        }
        tokio::time::advance(poll).await;
        ticks += 1;
    };
    assert_eq!(task.status, TaskStatus::Completed, "{:?}", task.error);
    let took = (task.updated_at - task.created_at).to_std().unwrap();
    assert!(
        took > h.cp.config().timeouts.stuck_queued(),
        "the run outlasted the plain stuck-queued threshold ({took:?}), so the test shows something"
    );
}

/// With a credential key, a node's boot token is kept in the store, sealed, and made
/// once: a create made again for the node (its first never reached the provider)
/// boots with the same token, and the key goes with the node's row.
#[tokio::test(start_paused = true)]
async fn a_node_boots_with_one_key_kept_sealed_in_the_store() {
    use sam_core::testkit::node_agent::{FakeAgentScript, FakeNodeAgent};
    use sam_core::{BootRenderer, KeyPurpose, NodeRecord};

    /// Records the token of every rendering, by node.
    #[derive(Debug, Default)]
    struct TokenBoot(std::sync::Mutex<Vec<(String, String)>>);
    impl BootRenderer for TokenBoot {
        fn user_data(&self, node: &NodeRecord, token: &Secret) -> Result<String, sam_core::Error> {
            let mut seen = self.0.lock().unwrap();
            seen.push((node.id.to_string(), token.expose().to_owned()));
            Ok(format!("#cloud-config\nhostname: {}\n", node.id))
        }
    }

    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let provider = Arc::new(FakeProvider::new());
    provider.script(
        FakeOp::CreateVm,
        [FakeOutcome::Fail(ErrorCategory::Transient)],
    );
    let boot = Arc::new(TokenBoot::default());
    let mut config = config("d1");
    config.credential_key = Some(Secret::new("AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE="));
    let cp = ControlPlane::new(
        sam_core::ControlPlaneParts {
            scheduler: Arc::new(sam_core::DefaultScheduler::new(Arc::clone(&store))),
            store: Arc::clone(&store),
            providers: vec![Arc::clone(&provider) as Arc<dyn Provider>],
            node_agent: Arc::new(FakeNodeAgent::new(FakeAgentScript::default())),
            boot: Arc::clone(&boot) as Arc<dyn BootRenderer>,
            signer: TokenSigner::new(Secret::new("k".repeat(32)), "sam").unwrap(),
            clock: Arc::new(TokioClock::new()),
        },
        config,
    )
    .unwrap();
    let h = Harness {
        cp,
        store: Arc::clone(&store),
        provider,
        agent: Arc::new(FakeNodeAgent::new(FakeAgentScript::default())),
    };
    let id = h.cp.submit(&request(&[])).await.unwrap();
    let task = h.run(&id, HOUR).await;
    assert_eq!(task.status, TaskStatus::Completed, "{task:?}");
    let rendered = boot.0.lock().unwrap().clone();
    assert_eq!(rendered.len(), 2, "the create was made twice: {rendered:?}");
    assert_eq!(rendered[0], rendered[1], "the node kept its first key");
    let (node, token) = &rendered[0];
    let stored = store
        .get_key(KeyPurpose::Node, node)
        .await
        .unwrap()
        .expect("the key is kept in the store");
    assert!(
        !stored.sealed.as_str().contains(token.as_str()),
        "the key is stored sealed"
    );
    h.cp.verify_node_token(token, &sam_core::NodeId::new(node.clone()).unwrap())
        .expect("the kept key is a token of this node");
    store
        .delete_node(&sam_core::NodeId::new(node.clone()).unwrap())
        .await
        .unwrap();
    assert_eq!(store.get_key(KeyPurpose::Node, node).await.unwrap(), None);
}

/// The sweep deletes the transcripts of tasks that ended longer ago than the
/// retention, and keeps the rest; no retention keeps everything.
#[tokio::test(start_paused = true)]
async fn the_sweep_prunes_transcripts_past_their_retention() {
    for retention in [Some(Duration::from_secs(3600)), None] {
        let mut config = config("d1");
        config.transcript_retention = retention;
        let h = harness(config);
        let ended = h.cp.submit(&request(&[])).await.unwrap();
        assert_eq!(h.run(&ended, HOUR).await.status, TaskStatus::Completed);
        let all = sam_core::TranscriptQuery::after(0, 1000);
        let kept = h.cp.transcript(&ended, &all).await.unwrap();
        assert!(
            kept.iter().any(|e| e.kind.is_end()),
            "the transcript ends with the status: {kept:?}"
        );
        assert_eq!(h.cp.sweep().await.unwrap().transcript_entries_pruned, 0);

        tokio::time::advance(Duration::from_secs(2 * 3600)).await;
        let later = h.cp.submit(&request(&[])).await.unwrap();
        let report = h.cp.sweep().await.unwrap();
        let left = h.cp.transcript(&ended, &all).await.unwrap();
        match retention {
            Some(_) => {
                assert_eq!(report.transcript_entries_pruned, kept.len() as u64);
                assert!(left.is_empty(), "{left:?}");
            }
            None => {
                assert_eq!(report.transcript_entries_pruned, 0);
                assert_eq!(left, kept);
            }
        }
        assert!(
            !h.cp.transcript(&later, &all).await.unwrap().is_empty(),
            "a live task's transcript stays"
        );
    }
}
