//! Deterministic simulation: seeded scenarios on tokio's paused clock, with the
//! in-memory store, the fake provider and fake VM agents, and a fault schedule.
//!
//! Each seed generates a fleet (locations, capacity per size and location), tasks
//! with random requirements and explicit or default sizes and locations, and faults:
//! sold-out sizes, rate limits with `Retry-After`, 5xx errors, creates whose response
//! is lost, creates that fail later in their action, agents that never call back,
//! agents that crash, heartbeats that stop, nodes lost while they boot (a reported
//! boot failure, a VM the provider reports failed), creates slower than a lease, a
//! second control plane driving beside the first, leases taken from a driver in the
//! middle of its step, and control planes that crash at a fail point and are
//! replaced by others.
//! After every step the simulation checks that no task has two VMs, that placement
//! never over-commits a node, that explicit sizes never descend, that every
//! downgrade is recorded, that no node ever had two VMs, that no driver wrote a task
//! whose lease was taken from it, and that every retry stays inside its budget; at the end,
//! after one reconciliation, that the cloud holds exactly the VMs the store believes
//! live, that nothing idles unaccounted, and that every task ended in time.
//!
//! `SAM_SIM_SEEDS=N` runs seeds `0..N` (default [`DEFAULT_SEEDS`]);
//! `SAM_SIM_SEED=n` runs one seed; a failure prints its seed and the command that
//! replays it.

mod support;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use proptest::prelude::RngExt;
use proptest::test_runner::{RngAlgorithm, TestRng};
use sam_core::testkit::node_agent::{FakeAgentScript, FakeNodeAgent};
use sam_core::{
    Classify, ControlPlane, ControlPlaneConfig, ErrorCategory, Layer, LayerSettings, Location,
    NodeFilter, NodeLifecycle, NodeMetrics, NodeStatus, ProviderKind, SessionReport, StopReason,
    Store, SubmitRequest, TaskError, TaskEventKind, TaskFilter, TaskId, TaskStatus, TokioClock,
    VmSize, WorkspaceReport, crash,
};
use sam_providers::{FakeCall, FakeOp, FakeOutcome, FakeProvider};
use sam_store::MemoryStore;

/// Seeds run by default: a few hundred, about two minutes of a debug build in CI.
const DEFAULT_SEEDS: u64 = 400;

/// Virtual time after which a simulation gives up waiting for its tasks.
const HORIZON: Duration = Duration::from_secs(4 * 3600);

/// One task of a scenario: when it is submitted and what it asks for.
#[derive(Debug, Clone)]
struct PlannedTask {
    at: Duration,
    request: SubmitRequest,
}

/// Everything a seed decides up front.
#[derive(Debug)]
struct Scenario {
    locations: Vec<Location>,
    /// (server type, location, live VMs it can hold).
    capacity: Vec<(String, Location, usize)>,
    tasks: Vec<PlannedTask>,
    scripts: Vec<(FakeOp, Vec<FakeOutcome>)>,
    agents: Vec<FakeAgentScript>,
    /// Crashes of the control plane: when, and at which crash window.
    crashes: Vec<(Duration, &'static str)>,
    /// Chance that a node's heartbeats stop at some point.
    silent_share: f64,
    /// Chance that a booting node is lost (its boot fails, or its VM fails).
    loss_share: f64,
    /// Whether a second control plane drives beside the first.
    second_driver: bool,
    /// Chance, per tick, that a lease is taken from its driver mid-step.
    theft_share: f64,
}

fn pick<T: Clone>(rng: &mut TestRng, items: &[T]) -> T {
    items[rng.random_range(0..items.len())].clone()
}

fn generate(seed: u64) -> Scenario {
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let mut rng = TestRng::from_seed(RngAlgorithm::ChaCha, &bytes);
    let all_locations = ["fsn1", "nbg1", "hel1"].map(|l| Location::new(l).expect("valid"));
    let locations = all_locations[..rng.random_range(1..=3)].to_vec();
    let sizes = [VmSize::Small, VmSize::Medium, VmSize::Large];
    let server_type = |size: VmSize| format!("local-{size}");

    let mut capacity = Vec::new();
    for size in sizes {
        for location in &locations {
            if rng.random_bool(0.3) {
                capacity.push((server_type(size), location.clone(), rng.random_range(0..3)));
            }
        }
    }

    let mut tasks = Vec::new();
    for _ in 0..rng.random_range(1..=8) {
        let mut layers = BTreeMap::new();
        let size = pick(&mut rng, &sizes);
        match rng.random_range(0..3) {
            0 => {}
            1 => {
                layers.insert(
                    Layer::Project,
                    LayerSettings {
                        size: Some(size),
                        ..LayerSettings::default()
                    },
                );
            }
            _ => {
                let layer = pick(&mut rng, &[Layer::Task, Layer::Skill, Layer::AgentProfile]);
                layers.insert(
                    layer,
                    LayerSettings {
                        size: Some(size),
                        ..LayerSettings::default()
                    },
                );
            }
        }
        let task = layers.entry(Layer::Task).or_default();
        if rng.random_bool(0.2) {
            task.location = Some(pick(&mut rng, &locations));
        }
        let r = &mut task.requirements;
        r.min_vcpu = pick(
            &mut rng,
            &[None, Some(1.0), Some(2.0), Some(3.0), Some(4.0)],
        );
        r.min_memory_gb = pick(&mut rng, &[None, Some(2.0), Some(4.0), Some(6.0)]);
        r.exclusive_node = rng.random_bool(0.25).then_some(true);
        r.max_co_tenants = pick(&mut rng, &[None, None, Some(1), Some(2), Some(3)]);
        tasks.push(PlannedTask {
            at: Duration::from_secs(rng.random_range(0..1800)),
            request: SubmitRequest {
                repo: "https://example.invalid/repo.git".into(),
                prompt: "fix the flaky test".into(),
                layers,
                ..SubmitRequest::default()
            },
        });
    }

    let create_fault = |rng: &mut TestRng| match rng.random_range(0..8) {
        0 => FakeOutcome::Fail(ErrorCategory::TransientCapacity),
        1 => FakeOutcome::RateLimited(Duration::from_secs(rng.random_range(1..90))),
        2 => FakeOutcome::Fail(ErrorCategory::Transient),
        3 => FakeOutcome::ResponseLost,
        4 => FakeOutcome::FailInAction(ErrorCategory::TransientCapacity),
        5 => FakeOutcome::FailInAction(ErrorCategory::Unknown),
        // Slower than a lease (60 s): the step must renew it while it waits.
        6 => FakeOutcome::Delayed(
            Duration::from_secs(rng.random_range(30..150)),
            Box::new(FakeOutcome::Succeed),
        ),
        _ => FakeOutcome::Succeed,
    };
    let call_fault = |rng: &mut TestRng| match rng.random_range(0..4) {
        0 => FakeOutcome::Fail(ErrorCategory::Transient),
        1 => FakeOutcome::RateLimited(Duration::from_secs(rng.random_range(1..30))),
        _ => FakeOutcome::Succeed,
    };
    let mut scripts = Vec::new();
    let creates = (0..rng.random_range(0..10))
        .map(|_| create_fault(&mut rng))
        .collect();
    scripts.push((FakeOp::CreateVm, creates));
    for op in [
        FakeOp::PollCreate,
        FakeOp::ListVms,
        FakeOp::DeleteVm,
        FakeOp::GetVm,
    ] {
        let outcomes = (0..rng.random_range(0..4))
            .map(|_| call_fault(&mut rng))
            .collect();
        scripts.push((op, outcomes));
    }

    let crash_error = TaskError {
        category: ErrorCategory::Unknown,
        message: "The agent process exited: broken pipe".into(),
    };
    let agents = (0..12)
        .map(|_| FakeAgentScript {
            ready_after_probes: (!rng.random_bool(0.1)).then(|| rng.random_range(0..6)),
            workspace: match rng.random_range(0..20) {
                0 => WorkspaceReport::Preparing,
                1 => WorkspaceReport::Failed {
                    error: TaskError {
                        category: ErrorCategory::InvalidConfig,
                        message: "devcontainer \"python\" not found".into(),
                    },
                },
                2 => WorkspaceReport::Ready {
                    effective_profile: "lightweight".into(),
                    recovery: true,
                },
                _ => WorkspaceReport::Ready {
                    effective_profile: "full".into(),
                    recovery: false,
                },
            },
            session: match rng.random_range(0..10) {
                0 => SessionReport::Failed {
                    error: crash_error.clone(),
                },
                1 => SessionReport::Stopped {
                    reason: StopReason::MaxTokens,
                    last_message: None,
                },
                _ => SessionReport::Stopped {
                    reason: StopReason::EndTurn,
                    last_message: Some("Done.".into()),
                },
            },
        })
        .collect();

    let crashes = (0..rng.random_range(0..3))
        .map(|_| {
            (
                Duration::from_secs(rng.random_range(0..2400)),
                pick(&mut rng, crash::ALL),
            )
        })
        .collect();
    Scenario {
        locations,
        capacity,
        tasks,
        scripts,
        agents,
        crashes,
        silent_share: pick(&mut rng, &[0.0, 0.2, 0.5]),
        loss_share: pick(&mut rng, &[0.0, 0.0, 0.3, 0.6]),
        second_driver: rng.random_bool(0.5),
        theft_share: pick(&mut rng, &[0.0, 0.1, 0.3]),
    }
}

/// What one seed produced.
#[derive(Debug)]
struct Run {
    /// Everything observable, in order, to check that a seed replays exactly.
    trace: Vec<String>,
    /// Broken promises, as sentences.
    broken: Vec<String>,
    tasks: usize,
    crashes: usize,
    /// Booting nodes lost on purpose.
    losses: usize,
    /// Leases taken from their driver mid-step.
    thefts: usize,
}

struct Sim {
    seed: u64,
    scenario: Scenario,
    store: Arc<dyn Store>,
    provider: Arc<FakeProvider>,
    agent: Arc<FakeNodeAgent>,
    clock: Arc<TokioClock>,
    start: DateTime<Utc>,
    cp: ControlPlane,
    /// The second control plane, when the scenario has one.
    cp2: Option<ControlPlane>,
    generation: u32,
    events: tokio::sync::broadcast::Receiver<sam_core::TaskEvent>,
    /// The second control plane's events.
    events2: Option<tokio::sync::broadcast::Receiver<sam_core::TaskEvent>>,
    downgraded: BTreeSet<TaskId>,
    trace: Vec<String>,
    broken: Vec<String>,
    /// When each node's heartbeats stop (`None`: never), decided when first seen.
    heartbeats: BTreeMap<String, Option<Duration>>,
    /// The booting nodes already judged for loss.
    judged: BTreeSet<String>,
    node_rng: TestRng,
    /// Provider calls already attributed to a moment.
    calls_seen: usize,
    /// The moment each CreateVm call happened, by index among creates.
    create_times: Vec<(Duration, FakeCall)>,
    /// Every VM seen for each node label.
    vms_by_node: BTreeMap<String, BTreeSet<String>>,
    theft_rng: TestRng,
    thefts: usize,
}

impl Sim {
    fn new(seed: u64) -> Self {
        let scenario = generate(seed);
        let start = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let clock = Arc::new(TokioClock::starting_at(start));
        let catalog = sam_providers::catalog(ProviderKind::Fake, &scenario.locations);
        let provider = Arc::new(FakeProvider::with_catalog(catalog).with_clock(clock.clone()));
        for (server_type, location, limit) in &scenario.capacity {
            provider.limit_capacity(server_type, location, *limit);
        }
        for (op, outcomes) in &scenario.scripts {
            provider.script(*op, outcomes.iter().cloned());
        }
        let agent = Arc::new(FakeNodeAgent::new(FakeAgentScript::default()));
        agent.queue_node_scripts(scenario.agents.iter().cloned());
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let cp = Self::control_plane(seed, 0, &store, &provider, &agent, &clock);
        let cp2 = scenario
            .second_driver
            .then(|| Self::control_plane(seed, 1_000, &store, &provider, &agent, &clock));
        let events = cp.subscribe();
        let events2 = cp2.as_ref().map(ControlPlane::subscribe);
        let mut bytes = [1u8; 32];
        bytes[..8].copy_from_slice(&seed.to_le_bytes());
        let mut theft_bytes = [2u8; 32];
        theft_bytes[..8].copy_from_slice(&seed.to_le_bytes());
        Self {
            seed,
            scenario,
            store,
            provider,
            agent,
            clock,
            start,
            cp,
            cp2,
            generation: 0,
            events,
            events2,
            downgraded: BTreeSet::new(),
            trace: Vec::new(),
            broken: Vec::new(),
            heartbeats: BTreeMap::new(),
            judged: BTreeSet::new(),
            node_rng: TestRng::from_seed(RngAlgorithm::ChaCha, &bytes),
            calls_seen: 0,
            create_times: Vec::new(),
            vms_by_node: BTreeMap::new(),
            theft_rng: TestRng::from_seed(RngAlgorithm::ChaCha, &theft_bytes),
            thefts: 0,
        }
    }

    fn control_plane(
        seed: u64,
        generation: u32,
        store: &Arc<dyn Store>,
        provider: &Arc<FakeProvider>,
        agent: &Arc<FakeNodeAgent>,
        clock: &Arc<TokioClock>,
    ) -> ControlPlane {
        let mut config = ControlPlaneConfig::new(format!("sim-{generation}"), ProviderKind::Fake);
        // Each generation draws other ids, as a restarted process would.
        config.random_seed = Some(
            seed.wrapping_mul(1_000_003)
                .wrapping_add(u64::from(generation)),
        );
        support::control_plane(
            Arc::clone(store),
            Arc::clone(provider),
            Arc::clone(agent),
            clock.clone(),
            config,
        )
    }

    /// Records a broken promise once.
    fn broke(&mut self, message: String) {
        if !self.broken.contains(&message) {
            self.broken.push(message);
        }
    }

    fn elapsed(&self) -> Duration {
        (self.clock_now() - self.start).to_std().unwrap_or_default()
    }

    fn clock_now(&self) -> DateTime<Utc> {
        use sam_core::Clock;
        self.clock.now()
    }

    /// Replaces the control plane, as after a crash: its leases stay behind.
    fn restart(&mut self) {
        self.drain_events();
        self.generation += 1;
        self.cp = Self::control_plane(
            self.seed,
            self.generation,
            &self.store,
            &self.provider,
            &self.agent,
            &self.clock,
        );
        self.events = self.cp.subscribe();
        if self.cp2.is_some() {
            let cp2 = Self::control_plane(
                self.seed,
                1_000 + self.generation,
                &self.store,
                &self.provider,
                &self.agent,
                &self.clock,
            );
            self.events2 = Some(cp2.subscribe());
            self.cp2 = Some(cp2);
        }
        self.trace
            .push(format!("{:?} restart {}", self.elapsed(), self.generation));
    }

    fn drain_events(&mut self) {
        let mut events = Vec::new();
        while let Ok(event) = self.events.try_recv() {
            events.push(event);
        }
        if let Some(second) = &mut self.events2 {
            while let Ok(event) = second.try_recv() {
                events.push(event);
            }
        }
        for event in events {
            if let TaskEventKind::Downgraded { .. } = &event.kind {
                self.downgraded.insert(event.task_id.clone());
            }
            self.trace.push(format!("{event:?}"));
        }
    }

    /// Runs a sweep, or a tick of each control plane (at once, with perhaps a thief
    /// taking a lease mid-step), each in a task of its own; `false` when one crashed.
    async fn step(&mut self, sweep: bool) -> bool {
        let cp = self.cp.clone();
        if sweep {
            let joined = tokio::spawn(async move { cp.sweep().await.map(drop) }).await;
            return self.joined(joined);
        }
        let theft = (self.scenario.theft_share > 0.0
            && self.theft_rng.random_bool(self.scenario.theft_share))
        .then(|| Duration::from_secs(self.theft_rng.random_range(1..40)));
        let (done, finished) = tokio::sync::watch::channel(false);
        let thief = theft.map(|after| {
            let store = Arc::clone(&self.store);
            let clock = self.clock.clone();
            tokio::spawn(steal_a_lease(store, clock, after, finished))
        });
        let (first, second) = match self.cp2.clone() {
            None => (tokio::spawn(async move { cp.tick().await.map(drop) }), None),
            Some(cp2) => {
                // Each driver ticks once, then keeps ticking while the other is still
                // in its first tick: a step slower than a lease meets the other
                // driver's claims, as it would with two servers.
                let (a_done, a_seen) = tokio::sync::watch::channel(false);
                let (b_done, b_seen) = tokio::sync::watch::channel(false);
                let poll = self.cp.config().poll_interval;
                (
                    tokio::spawn(drive_beside(cp, poll, a_done, b_seen)),
                    Some(tokio::spawn(drive_beside(cp2, poll, b_done, a_seen))),
                )
            }
        };
        let mut alive = self.joined(first.await);
        if let Some(second) = second {
            alive &= self.joined(second.await);
        }
        let _ = done.send(true);
        if let Some(thief) = thief {
            match thief.await.expect("the thief does not panic") {
                Theft::None => {}
                Theft::Clean(line) => {
                    self.thefts += 1;
                    self.trace.push(format!("{:?} {line}", self.elapsed()));
                }
                Theft::Written(broken) => self.broke(broken),
            }
        }
        alive
    }

    /// What a driver task ended with; `false` when it crashed.
    fn joined(
        &mut self,
        joined: Result<Result<(), sam_core::Error>, tokio::task::JoinError>,
    ) -> bool {
        match joined {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                self.broke(format!("the memory store failed a step: {e}"));
                true
            }
            Err(e) if e.is_panic() => false,
            Err(e) => panic!("the driver task ended oddly: {e}"),
        }
    }

    /// Every node row.
    async fn all_nodes(&self) -> Vec<sam_core::NodeRecord> {
        self.store
            .list_nodes(&NodeFilter::default())
            .await
            .expect("list nodes")
    }

    async fn heartbeat(&mut self) {
        let now = self.elapsed();
        for node in self.all_nodes().await {
            if node.ready_at.is_none() || !node.status.is_live() {
                continue;
            }
            let share = self.scenario.silent_share;
            let rng = &mut self.node_rng;
            let stop = *self
                .heartbeats
                .entry(node.id.to_string())
                .or_insert_with(|| {
                    rng.random_bool(share)
                        .then(|| now + Duration::from_secs(rng.random_range(0..1800)))
                });
            if stop.is_some_and(|at| now >= at) {
                continue;
            }
            let token = self.cp.issue_node_token(&node.id);
            if let Err(e) = self
                .cp
                .heartbeat(token.expose(), &node.id, &NodeMetrics::default())
                .await
            {
                self.broke(format!("a heartbeat of node {} failed: {e}", node.id));
            }
        }
    }

    /// Loses some booting nodes, once each when first seen booting: the node reports
    /// a failed boot through the control plane's callback, or the provider reports
    /// its VM failed.
    ///
    /// Returns `false` when the control plane crashed in the callback (a crash
    /// window armed inside its node deletion).
    async fn lose_nodes(&mut self) -> bool {
        for node in self.all_nodes().await {
            if node.ready_at.is_some()
                || node.status != NodeStatus::Running
                || !self.judged.insert(node.id.to_string())
            {
                continue;
            }
            let share = self.scenario.loss_share;
            if !self.node_rng.random_bool(share) {
                continue;
            }
            if self.node_rng.random_bool(0.5) {
                let token = self.cp.issue_node_token(&node.id);
                let report = sam_core::BootFailureReport {
                    phase: "packages".into(),
                    exit_status: 100,
                    journal: vec!["PHASE FAILED: packages (exit 100)".into()],
                    timeline: Vec::new(),
                };
                self.trace
                    .push(format!("{:?} boot failed {}", self.elapsed(), node.id));
                let cp = self.cp.clone();
                let id = node.id.clone();
                let joined =
                    tokio::spawn(
                        async move { cp.node_boot_failed(token.expose(), &id, &report).await },
                    )
                    .await;
                match joined {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => self.broke(format!(
                        "the boot failure of node {} was refused: {e}",
                        node.id
                    )),
                    Err(e) if e.is_panic() => return false,
                    Err(e) => panic!("the callback task ended oddly: {e}"),
                }
            } else if let Some(vm) = &node.vm_id {
                self.trace
                    .push(format!("{:?} VM failed {}", self.elapsed(), node.id));
                self.provider.fail_vm(vm);
            }
        }
        true
    }

    /// Records new provider calls with the moment each was made.
    fn record_calls(&mut self) {
        let calls = self.provider.timed_calls();
        for (at, call) in &calls[self.calls_seen..] {
            let at = (*at - self.start).to_std().unwrap_or_default();
            if let FakeCall::CreateVm(_) = call {
                self.create_times.push((at, call.clone()));
            }
            self.trace.push(format!("{at:?} {call:?}"));
        }
        self.calls_seen = calls.len();
    }

    /// The promises that hold after every step.
    async fn check_step(&mut self) {
        let tasks = self
            .store
            .list_tasks(&TaskFilter::default())
            .await
            .expect("list tasks");
        let nodes = self
            .store
            .list_nodes(&NodeFilter::default())
            .await
            .expect("list nodes");
        let by_label: HashMap<String, _> = nodes
            .iter()
            .map(|n| (sam_core::model::label_safe(n.id.as_str()), n))
            .collect();
        let mut vms_per_task: BTreeMap<String, usize> = BTreeMap::new();
        for vm in self.provider.vms() {
            let owner = vm
                .labels
                .get(sam_core::NODE_LABEL)
                .and_then(|l| by_label.get(l))
                .and_then(|n| n.created_for.clone());
            if let Some(task) = owner {
                *vms_per_task.entry(task.to_string()).or_default() += 1;
            }
        }
        for (task, count) in vms_per_task {
            if count > 1 {
                self.broke(format!(
                    "at {:?} task {task} has {count} VMs",
                    self.elapsed()
                ));
            }
        }
        // No node ever has two VMs (a create made twice, by two drivers, or by a
        // driver that lost its lease).
        for vm in self.provider.vms() {
            if let Some(node) = vm.labels.get(sam_core::NODE_LABEL) {
                let seen = self.vms_by_node.entry(node.to_owned()).or_default();
                seen.insert(vm.id.to_string());
                if seen.len() > 1 {
                    let message = format!("node {node} had two VMs: {seen:?}");
                    self.broke(message);
                }
            }
        }
        // Placement never over-commits a node.
        for node in nodes.iter().filter(|n| n.status.is_live()) {
            let held: Vec<_> = self
                .store
                .list_workspaces(&node.id)
                .await
                .expect("workspaces")
                .into_iter()
                .filter(|w| w.status.holds_slot())
                .map(|w| w.reservation)
                .collect();
            let cpu: u64 = held.iter().map(|r| r.cpu_millis).sum();
            let memory: u64 = held.iter().map(|r| r.memory_mb).sum();
            let limit = held
                .iter()
                .map(|r| r.max_co_tenants)
                .min()
                .unwrap_or(u32::MAX);
            let exclusive = held.iter().any(|r| r.exclusive);
            if cpu > node.capacity.cpu_millis
                || memory > node.capacity.memory_mb
                || held.len() > limit as usize
                || (exclusive && held.len() > 1)
            {
                self.broke(format!(
                    "at {:?} node {} ({}) is over-committed: {held:?}",
                    self.elapsed(),
                    node.id,
                    node.server_type
                ));
            }
        }
        self.drain_events();
        for task in &tasks {
            // Explicit sizes never descend, on a node of the task's own or any other.
            if task.size_source.is_explicit()
                && let Some(size) = task.provisioned_size
                && size < task.requested_size
            {
                self.broke(format!(
                    "task {} asked explicitly for {} and got {size}",
                    task.id, task.requested_size
                ));
            }
            // Every downgrade is recorded with the task and shown.
            if let Some(size) = task.provisioned_size
                && size < task.requested_size
                && task.workspace_id.is_some()
            {
                if !self.downgraded.contains(&task.id) {
                    self.broke(format!(
                        "task {} runs on {size} instead of {} and no downgrade was shown",
                        task.id, task.requested_size
                    ));
                }
                let notices = self
                    .store
                    .list_task_events(&task.id, &sam_core::TranscriptQuery::after(0, 10_000))
                    .await
                    .expect("transcript");
                let kept = notices.iter().any(|n| {
                    n.kind
                        == sam_core::TaskEventKind::Downgraded {
                            requested: task.requested_size,
                            provisioned: size,
                        }
                });
                if !kept {
                    self.broke(format!(
                        "task {} runs on {size} instead of {} and its notices do not say so: {notices:?}",
                        task.id, task.requested_size
                    ));
                }
            }
            // A task that waited for capacity keeps why.
            if task.capacity_passes > 0 {
                let notices = self
                    .store
                    .list_task_events(&task.id, &sam_core::TranscriptQuery::after(0, 10_000))
                    .await
                    .expect("transcript");
                let waits = notices
                    .iter()
                    .filter(|n| {
                        matches!(n.kind, sam_core::TaskEventKind::WaitingForCapacity { .. })
                    })
                    .count();
                let failures = notices
                    .iter()
                    .filter(|n| {
                        matches!(n.kind, sam_core::TaskEventKind::CapacityUnavailable { .. })
                    })
                    .count();
                if waits < task.capacity_passes as usize || failures == 0 {
                    self.broke(format!(
                        "task {} made {} capacity passes but keeps {waits} waits and {failures} capacity failures",
                        task.id, task.capacity_passes
                    ));
                }
            }
        }
    }

    /// The promises that hold once every task has ended and one reconciliation ran.
    async fn check_end(&mut self) {
        let config = self.cp.config().clone();
        let t = &config.timeouts;
        let tasks = self
            .store
            .list_tasks(&TaskFilter::default())
            .await
            .expect("list tasks");
        // Every retry stays inside its budget: no create for a task once its
        // capacity wait and one provisioning attempt are over, and none before a
        // `Retry-After` ran out.
        // A task that lost a node creates its replacement when it notices the loss,
        // at most one boot (the longer of provisioning and agent ready) later.
        let creates_budget = |replacements: u32| {
            t.capacity_wait
                + t.node_provisioning
                + config.poll_interval * 2
                + (t.node_provisioning.max(t.agent_ready) + config.poll_interval * 2) * replacements
        };
        let scripted: Vec<FakeOutcome> = self
            .scenario
            .scripts
            .iter()
            .find(|(op, _)| *op == FakeOp::CreateVm)
            .map(|(_, o)| o.clone())
            .unwrap_or_default();
        let mut last_rate_limit: HashMap<String, Duration> = HashMap::new();
        for (index, (at, call)) in self.create_times.clone().iter().enumerate() {
            let FakeCall::CreateVm(spec) = call else {
                continue;
            };
            let node = spec.node_id.to_string();
            if let Some(until) = last_rate_limit.get(&node)
                && at < until
            {
                self.broke(format!(
                    "node {node} was created again at {at:?}, before its Retry-After ran out at {until:?}"
                ));
            }
            if let Some(FakeOutcome::RateLimited(wait)) = scripted.get(index) {
                last_rate_limit.insert(node.clone(), *at + *wait);
            }
            let owner = self
                .store
                .get_node(&spec.node_id)
                .await
                .expect("get node")
                .and_then(|n| n.created_for);
            let task = owner.and_then(|id| tasks.iter().find(|t| t.id == id));
            if let Some(task) = task {
                let age = (self.start + chrono::Duration::from_std(*at).unwrap() - task.created_at)
                    .to_std()
                    .unwrap_or_default();
                let budget = creates_budget(task.node_replacements);
                if age > budget {
                    self.broke(format!(
                        "task {} created a VM {age:?} after submission, past its budget of {budget:?}",
                        task.id
                    ));
                }
            }
        }
        // Every task ended within the thresholds of the waits it went through.
        for task in &tasks {
            let bound = t.stuck_queued_after(task.node_replacements)
                + t.stuck_delegated()
                + config.poll_interval * 30;
            let took = (task.updated_at - task.created_at)
                .to_std()
                .unwrap_or_default();
            if task.status.is_terminal() && took > bound {
                self.broke(format!(
                    "task {} took {took:?} to end, past {bound:?}",
                    task.id
                ));
            }
            if task.status == TaskStatus::Failed
                && task.error.as_ref().is_none_or(|e| e.message.is_empty())
            {
                self.broke(format!("task {} failed without a reason", task.id));
            }
            self.trace.push(format!(
                "end {} {} {} {:?} {:?}",
                task.id, task.status, task.execution_step, task.provisioned_size, task.error
            ));
        }
        let broken = support::violations(self.store.as_ref(), &self.provider, None).await;
        self.broken.extend(broken);
        // Nothing idles unaccounted: a live node is warm (and will expire) or holds a
        // workspace.
        let nodes = self
            .store
            .list_nodes(&NodeFilter::default())
            .await
            .expect("list nodes");
        for node in nodes.iter().filter(|n| n.status.is_live()) {
            let busy = self
                .store
                .list_workspaces(&node.id)
                .await
                .expect("workspaces")
                .iter()
                .any(|w| w.status.holds_slot());
            if node.lifecycle == NodeLifecycle::Active && !busy {
                self.broke(format!(
                    "node {} is {:?}, {:?} and idle: nobody will reuse or destroy it before its lifetime ends",
                    node.id, node.status, node.health
                ));
            }
            if node.status == NodeStatus::Creating {
                self.broke(format!("node {} is still creating", node.id));
            }
        }
    }

    async fn run(mut self) -> Run {
        let poll = self.cp.config().poll_interval;
        let mut pending: Vec<PlannedTask> = self.scenario.tasks.clone();
        pending.sort_by_key(|t| t.at);
        let mut pending = std::collections::VecDeque::from(pending);
        let mut crashes: Vec<(Duration, &'static str)> = self.scenario.crashes.clone();
        crashes.sort();
        let mut crashes = std::collections::VecDeque::from(crashes);
        let mut armed: Option<(&'static str, Duration)> = None;
        let mut crashed = 0;
        let mut submitted = 0;
        let mut ticks: u64 = 0;
        loop {
            let now = self.elapsed();
            while pending.front().is_some_and(|t| t.at <= now) {
                let task = pending.pop_front().expect("checked");
                match self.cp.submit(&task.request).await {
                    Ok(id) => {
                        submitted += 1;
                        self.trace.push(format!("{now:?} submit {id}"));
                    }
                    Err(e) if e.category() == ErrorCategory::InvalidConfig => {
                        self.trace.push(format!("{now:?} rejected: {e}"));
                    }
                    Err(e) => self.broke(format!("a submission failed with {}: {e}", e.category())),
                }
            }
            if armed.is_none() && crashes.front().is_some_and(|(at, _)| *at <= now) {
                let (_, point) = crashes.pop_front().expect("checked");
                fail::cfg(point, "panic").expect("valid action");
                armed = Some((point, now + Duration::from_secs(600)));
            }
            if ticks.is_multiple_of(30) {
                self.heartbeat().await;
            }
            let mut alive = true;
            if ticks.is_multiple_of(7) {
                alive = self.lose_nodes().await;
            }
            if alive && ticks.is_multiple_of(15) {
                alive = self.step(true).await;
            }
            if alive {
                alive = self.step(false).await;
            }
            self.record_calls();
            if let Some((point, until)) = armed
                && (!alive || now >= until)
            {
                fail::remove(point);
                armed = None;
                crashed += usize::from(!alive);
                self.restart();
            }
            self.check_step().await;
            let live = support::live_tasks(self.store.as_ref()).await;
            if pending.is_empty() && live == 0 && armed.is_none() {
                break;
            }
            if now > HORIZON {
                break;
            }
            tokio::time::advance(poll).await;
            ticks += 1;
        }
        // One reconciliation, with the cloud calm and every orphan old enough to go.
        self.provider.clear_scripts();
        tokio::time::advance(self.cp.config().orphan_min_age).await;
        if !self.step(true).await {
            self.broke("the final sweep crashed".into());
        }
        self.record_calls();
        self.check_end().await;
        self.drain_events();
        let losses = self
            .trace
            .iter()
            .filter(|l| l.contains(" boot failed ") || l.contains(" VM failed "))
            .count();
        Run {
            trace: self.trace,
            broken: self.broken,
            tasks: submitted,
            crashes: crashed,
            losses,
            thefts: self.thefts,
        }
    }
}

/// Ticks `cp` once, says so, then ticks it every `poll` until the other driver
/// finished its first tick.
async fn drive_beside(
    cp: ControlPlane,
    poll: Duration,
    done: tokio::sync::watch::Sender<bool>,
    mut other: tokio::sync::watch::Receiver<bool>,
) -> Result<(), sam_core::Error> {
    let first = cp.tick().await.map(drop);
    let _ = done.send(true);
    first?;
    loop {
        if *other.borrow() {
            return Ok(());
        }
        tokio::select! {
            biased;
            () = tokio::time::sleep(poll) => {}
            _ = other.changed() => return Ok(()),
        }
        cp.tick().await?;
    }
}

/// What a thief saw.
#[derive(Debug)]
enum Theft {
    /// No driver held a lease to take.
    None,
    /// A lease was taken and its driver wrote nothing more (the trace line).
    Clean(String),
    /// The driver wrote the task after its lease was taken (the broken promise).
    Written(String),
}

/// After `after`, takes the lease of one task a driver holds (as if that driver
/// stalled past it), holds it until the drivers' ticks are `finished`, checks that
/// nothing a step writes changed meanwhile, and gives it back.
async fn steal_a_lease(
    store: Arc<dyn Store>,
    clock: Arc<TokioClock>,
    after: Duration,
    mut finished: tokio::sync::watch::Receiver<bool>,
) -> Theft {
    use sam_core::{Clock, LeaseRelease, LeaseRequest};
    tokio::select! {
            biased;
        () = tokio::time::sleep(after) => {}
        _ = finished.wait_for(|done| *done) => return Theft::None,
    }
    let live = store.list_tasks(&TaskFilter::live()).await.expect("list");
    let Some(victim) = live.iter().find(|t| t.lease_owner.is_some()) else {
        return Theft::None;
    };
    // Far in the future: the victim's lease reads as expired, and the thief's holds
    // past the end of the ticks.
    let request = LeaseRequest {
        owner: "thief".into(),
        now: clock.now() + chrono::Duration::days(1),
        lease: Duration::from_secs(60),
        limit: 1,
        except: live
            .iter()
            .filter(|t| t.id != victim.id)
            .map(|t| t.id.clone())
            .collect(),
    };
    let taken = store.claim_due_tasks(&request).await.expect("claim");
    let Some(before) = taken.into_iter().next() else {
        return Theft::None;
    };
    let _ = finished.wait_for(|done| *done).await;
    let after = store
        .get_task(&before.id)
        .await
        .expect("read")
        .expect("kept");
    let step_fields = |t: &sam_core::TaskRecord| {
        format!(
            "{} {} {:?} {:?} {:?} {} {} {:?}",
            t.status,
            t.execution_step,
            t.provisioned_node_id,
            t.workspace_id,
            t.provisioning_started_at,
            t.capacity_passes,
            t.node_replacements,
            (t.lease_owner.clone(), t.lease_epoch),
        )
    };
    let verdict = if step_fields(&before) == step_fields(&after) {
        Theft::Clean(format!(
            "lease of {} taken from {} (epoch {})",
            before.id,
            victim.lease_owner.as_deref().unwrap_or("?"),
            victim.lease_epoch
        ))
    } else {
        Theft::Written(format!(
            "task {} was written after its lease was taken from its driver: {} became {}",
            before.id,
            step_fields(&before),
            step_fields(&after)
        ))
    };
    let release = LeaseRelease {
        epoch: Some(before.lease_epoch),
        ..LeaseRelease::plain("thief", clock.now())
    };
    store
        .release_lease(&before.id, &release)
        .await
        .expect("release");
    verdict
}

/// Runs one seed on a fresh paused runtime.
fn run_seed(seed: u64) -> Run {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("runtime");
    runtime.block_on(async { Sim::new(seed).run().await })
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{name} must be a number, not {v:?}"))
    })
}

#[test]
fn seeded_simulations_keep_every_promise() {
    support::quiet_fail_point_panics();
    let scenario = fail::FailScenario::setup();
    let replay = env_u64("SAM_SIM_SEED");
    let seeds: Vec<u64> = match replay {
        Some(seed) => vec![seed],
        None => (0..env_u64("SAM_SIM_SEEDS").unwrap_or(DEFAULT_SEEDS)).collect(),
    };
    let started = std::time::Instant::now();
    let (mut tasks, mut crashes, mut losses, mut thefts) = (0, 0, 0, 0);
    let mut failures = String::new();
    for &seed in &seeds {
        let run = std::panic::catch_unwind(|| run_seed(seed));
        if let (Some(_), Ok(run)) = (replay, &run) {
            eprintln!("{:?}", generate(seed));
            for line in &run.trace {
                eprintln!("{line}");
            }
        }
        match run {
            Ok(run) if run.broken.is_empty() => {
                tasks += run.tasks;
                crashes += run.crashes;
                losses += run.losses;
                thefts += run.thefts;
            }
            Ok(run) => {
                let _ = writeln!(failures, "seed={seed}: {:#?}", run.broken);
            }
            Err(_) => {
                let _ = writeln!(failures, "seed={seed}: panicked");
            }
        }
        if !failures.is_empty() {
            let _ = writeln!(
                failures,
                "replay: SAM_SIM_SEED={seed} cargo test -p sam-core --test simulation -- --nocapture"
            );
            break;
        }
    }
    scenario.teardown();
    eprintln!(
        "simulation: {} seeds, {tasks} tasks, {crashes} control-plane crashes, {losses} nodes lost while booting, {thefts} leases taken mid-step, {:.1?}",
        seeds.len(),
        started.elapsed()
    );
    assert!(failures.is_empty(), "{failures}");
}

#[test]
fn a_seed_replays_exactly() {
    let seed = env_u64("SAM_SIM_SEED").unwrap_or(7);
    let _scenario = fail::FailScenario::setup();
    let hash = |run: &Run| {
        let mut hasher = DefaultHasher::new();
        run.trace.hash(&mut hasher);
        hasher.finish()
    };
    let first = run_seed(seed);
    let second = run_seed(seed);
    let differs = first
        .trace
        .iter()
        .zip(&second.trace)
        .position(|(a, b)| a != b);
    assert_eq!(
        hash(&first),
        hash(&second),
        "seed={seed} gave two different traces (first difference at line {differs:?}: {:?} / {:?}); replay: SAM_SIM_SEED={seed} cargo test -p sam-core --test simulation -- --nocapture",
        differs.map(|i| &first.trace[i]),
        differs.map(|i| &second.trace[i]),
    );
}
