//! Two control planes sharing one database drive 200 tasks: every task completes and
//! none is provisioned twice. Runs on a SQLite file always, and on PostgreSQL when
//! `SAM_TEST_POSTGRES_URL` is set (required in CI).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

mod support;

use sam_core::testkit::node_agent::{FakeAgentScript, FakeNodeAgent};
use sam_core::{
    ControlPlane, ControlPlaneConfig, NodeId, ProviderKind, Store, SubmitRequest, TaskFilter,
    TaskStatus, TokioClock,
};
use sam_providers::{FakeCall, FakeProvider};
use sam_store::{PgConfig, PgStore, SqliteConfig, SqliteStore};

const TASKS: usize = 200;

fn control_plane(
    driver: &str,
    store: Arc<dyn Store>,
    provider: Arc<FakeProvider>,
    agent: Arc<FakeNodeAgent>,
) -> ControlPlane {
    let mut config = ControlPlaneConfig::new(driver, ProviderKind::Fake);
    config.poll_interval = Duration::from_millis(5);
    config.lease = Duration::from_secs(10);
    support::control_plane(store, provider, agent, Arc::new(TokioClock::new()), config)
}

/// Submits through the first store, drives with two control planes (each on its own
/// store handle to the same database) until every task ends, then checks that no task
/// was provisioned twice.
async fn two_drivers(first: Arc<dyn Store>, second: Arc<dyn Store>) {
    let provider = Arc::new(FakeProvider::new());
    let agent = Arc::new(FakeNodeAgent::new(FakeAgentScript::default()));
    let a = control_plane("driver-a", first, Arc::clone(&provider), Arc::clone(&agent));
    let b = control_plane("driver-b", second, Arc::clone(&provider), agent);
    for i in 0..TASKS {
        a.submit(&SubmitRequest {
            repo: format!("https://example.invalid/repo-{i}.git"),
            prompt: "fix it".into(),
            ..SubmitRequest::default()
        })
        .await
        .unwrap();
    }
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_drivers_on_one_sqlite_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = SqliteConfig::new(dir.path().join("sam.db"));
    let first = SqliteStore::new(&config).await.unwrap();
    let second = SqliteStore::new(&config).await.unwrap();
    two_drivers(Arc::new(first), Arc::new(second)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_drivers_on_one_postgres_database() {
    let Some(url) = sam_core::testkit::required_env("SAM_TEST_POSTGRES_URL") else {
        return;
    };
    let schema = format!("sam_scale_out_{}", std::process::id());
    let config = PgConfig::new(url).with_schema(schema);
    let first = PgStore::new(&config).await.unwrap();
    let second = PgStore::new(&config).await.unwrap();
    two_drivers(Arc::new(first), Arc::new(second)).await;
}
