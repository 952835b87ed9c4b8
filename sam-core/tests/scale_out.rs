//! Two control planes sharing one database drive 200 tasks: every task completes and
//! none is provisioned twice. Runs on a SQLite file always, and on PostgreSQL when
//! `SAM_TEST_POSTGRES_URL` is set (required in CI).
//!
//! The slow-create cases give the provider creates that take three lease periods:
//! a step that outlives its lease must keep it (renewed while it runs), so the
//! other control plane never takes the task over mid-create and creates again.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

mod support;

use sam_core::testkit::node_agent::{FakeAgentScript, FakeNodeAgent};
use sam_core::{
    ControlPlane, ControlPlaneConfig, NodeId, ProviderKind, Store, SubmitRequest, TaskFilter,
    TaskStatus, TokioClock,
};
use sam_providers::{FakeCall, FakeOp, FakeOutcome, FakeProvider};
use sam_store::{PgConfig, PgStore, SqliteConfig, SqliteStore};

const TASKS: usize = 200;

fn control_plane(
    driver: &str,
    store: Arc<dyn Store>,
    provider: Arc<FakeProvider>,
    agent: Arc<FakeNodeAgent>,
    lease: Duration,
) -> ControlPlane {
    let mut config = ControlPlaneConfig::new(driver, ProviderKind::Fake);
    config.poll_interval = Duration::from_millis(5);
    config.lease = lease;
    support::control_plane(store, provider, agent, Arc::new(TokioClock::new()), config)
}

/// Submits `count` tasks through `cp`, each on a repository of its own.
async fn submit_tasks(cp: &ControlPlane, count: usize) {
    for i in 0..count {
        cp.submit(&SubmitRequest {
            repo: format!("https://example.invalid/repo-{i}.git"),
            prompt: "fix it".into(),
            ..SubmitRequest::default()
        })
        .await
        .unwrap();
    }
}

/// Submits through the first store, drives with two control planes (each on its own
/// store handle to the same database) until every task ends, then checks that no task
/// was provisioned twice.
async fn two_drivers(first: Arc<dyn Store>, second: Arc<dyn Store>) {
    let provider = Arc::new(FakeProvider::new());
    let agent = Arc::new(FakeNodeAgent::new(FakeAgentScript::default()));
    let lease = Duration::from_secs(10);
    let a = control_plane(
        "driver-a",
        first,
        Arc::clone(&provider),
        Arc::clone(&agent),
        lease,
    );
    let b = control_plane("driver-b", second, Arc::clone(&provider), agent, lease);
    submit_tasks(&a, TASKS).await;
    let drive = |cp: ControlPlane| async move {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        loop {
            cp.tick().await.unwrap();
            let live = cp.list(&TaskFilter::live()).await.unwrap();
            if live.is_empty() {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} tasks still live",
                live.len()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    let (ra, rb) = tokio::join!(tokio::spawn(drive(a.clone())), tokio::spawn(drive(b)));
    ra.unwrap();
    rb.unwrap();

    let tasks = a.list(&TaskFilter::default()).await.unwrap();
    assert_eq!(tasks.len(), TASKS);
    for t in &tasks {
        assert_eq!(t.status, TaskStatus::Completed, "{t:?}");
    }
    // Every VM created was created for exactly one task, and no task got two.
    let mut creates_per_task: HashMap<String, usize> = HashMap::new();
    for call in provider.calls() {
        if let FakeCall::CreateVm(spec) = call {
            let node = a.store().get_node(&spec.node_id).await.unwrap().unwrap();
            let owner = node.created_for.expect("a provisioned node names its task");
            *creates_per_task.entry(owner.to_string()).or_default() += 1;
        }
    }
    for (task, creates) in &creates_per_task {
        assert_eq!(*creates, 1, "task {task} was provisioned {creates} times");
    }
    let vms = provider.vms().len();
    assert_eq!(vms, creates_per_task.len(), "every VM belongs to a task");
    // Each VM is a node the store knows.
    for vm in provider.vms() {
        let node = NodeId::new(vm.name.clone()).unwrap();
        assert!(a.store().get_node(&node).await.unwrap().is_some());
    }
}

/// Two store handles on one new SQLite file (kept while the directory lives).
async fn sqlite_pair(dir: &tempfile::TempDir) -> (Arc<dyn Store>, Arc<dyn Store>) {
    let config = SqliteConfig::new(dir.path().join("sam.db"));
    let first = SqliteStore::new(&config).await.unwrap();
    let second = SqliteStore::new(&config).await.unwrap();
    (Arc::new(first), Arc::new(second))
}

/// Two pools on one new PostgreSQL schema; `None` (loudly, failing in CI) without
/// `SAM_TEST_POSTGRES_URL`.
async fn postgres_pair(name: &str) -> Option<(Arc<dyn Store>, Arc<dyn Store>)> {
    let url = sam_core::testkit::required_env("SAM_TEST_POSTGRES_URL")?;
    let schema = format!("sam_{name}_{}", std::process::id());
    let config = PgConfig::new(url).with_schema(schema);
    let first = PgStore::new(&config).await.unwrap();
    let second = PgStore::new(&config).await.unwrap();
    Some((Arc::new(first), Arc::new(second)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_drivers_on_one_sqlite_file() {
    let dir = tempfile::tempdir().unwrap();
    let (first, second) = sqlite_pair(&dir).await;
    two_drivers(first, second).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_drivers_on_one_postgres_database() {
    if let Some((first, second)) = postgres_pair("scale_out").await {
        two_drivers(first, second).await;
    }
}

/// Tasks of the slow-create cases, and how long each create takes next to the lease.
const SLOW_TASKS: usize = 12;
const SLOW_LEASE: Duration = Duration::from_millis(1_500);
const SLOW_CREATE: Duration = Duration::from_millis(3_000);

/// Two control planes on one database, a provider whose every create outlasts
/// three leases, many tasks: no VM is created twice (for a task or for a node), no
/// node is booted with two keys, and every task completes exactly once.
async fn slow_creates(first: Arc<dyn Store>, second: Arc<dyn Store>, backend: &str) {
    let provider = Arc::new(FakeProvider::new());
    provider.script(
        FakeOp::CreateVm,
        (0..SLOW_TASKS * 4)
            .map(|_| FakeOutcome::Delayed(SLOW_CREATE, Box::new(FakeOutcome::Succeed))),
    );
    let agent = Arc::new(FakeNodeAgent::new(FakeAgentScript::default()));
    let a = control_plane(
        "driver-a",
        first,
        Arc::clone(&provider),
        Arc::clone(&agent),
        SLOW_LEASE,
    );
    let b = control_plane("driver-b", second, Arc::clone(&provider), agent, SLOW_LEASE);
    submit_tasks(&a, SLOW_TASKS).await;
    let started = std::time::Instant::now();
    let drive = |cp: ControlPlane| async move {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let runner = tokio::spawn({
            let cp = cp.clone();
            async move { cp.run(async { stopped.await.unwrap_or(()) }).await }
        });
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        while !cp.list(&TaskFilter::live()).await.unwrap().is_empty() {
            assert!(tokio::time::Instant::now() < deadline, "tasks still live");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = stop.send(());
        runner.await.unwrap();
    };
    let (ra, rb) = tokio::join!(tokio::spawn(drive(a.clone())), tokio::spawn(drive(b)));
    ra.unwrap();
    rb.unwrap();
    eprintln!(
        "slow creates ({backend}): {SLOW_TASKS} tasks in {:.1} s with {SLOW_CREATE:?} creates and a {SLOW_LEASE:?} lease",
        started.elapsed().as_secs_f64()
    );

    let mut creates_per_node: HashMap<String, usize> = HashMap::new();
    for call in provider.calls() {
        if let FakeCall::CreateVm(spec) = call {
            *creates_per_node
                .entry(spec.node_id.to_string())
                .or_default() += 1;
        }
    }
    // A node's key is issued with its create: one create per node, one key.
    for (node, creates) in &creates_per_node {
        assert_eq!(*creates, 1, "node {node} was created {creates} times");
    }
    let tasks = a.list(&TaskFilter::default()).await.unwrap();
    assert_eq!(tasks.len(), SLOW_TASKS);
    let mut creators = std::collections::HashSet::new();
    for t in &tasks {
        assert_eq!(t.status, TaskStatus::Completed, "{t:?}");
        let events = a.store().list_status_events(&t.id).await.unwrap();
        let completions = events
            .iter()
            .filter(|e| e.to == TaskStatus::Completed)
            .count();
        assert_eq!(
            completions, 1,
            "task {} completed {completions} times",
            t.id
        );
        let node = t.provisioned_node_id.clone().expect("a node");
        if let Some(record) = a.store().get_node(&node).await.unwrap() {
            creators.extend(record.created_for);
        }
    }
    assert!(
        creators.len() <= SLOW_TASKS,
        "no task owns two of the nodes the tasks ran on"
    );
    assert_eq!(
        provider.vms().len(),
        creates_per_node.len(),
        "every create made one VM"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_creates_on_one_memory_store() {
    let store: Arc<dyn Store> = Arc::new(sam_store::MemoryStore::new());
    slow_creates(Arc::clone(&store), store, "one memory store").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_creates_on_one_sqlite_file() {
    let dir = tempfile::tempdir().unwrap();
    let (first, second) = sqlite_pair(&dir).await;
    slow_creates(first, second, "two SQLite handles on one file").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_creates_on_one_postgres_database() {
    if let Some((first, second)) = postgres_pair("slow_creates").await {
        slow_creates(first, second, "two PostgreSQL pools on one database").await;
    }
}
