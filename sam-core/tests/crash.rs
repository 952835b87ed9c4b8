//! The crash matrix: a control plane crashes at each crash window of the runner and
//! the sweeps ([`sam_core::crash::ALL`]), a fresh control plane with another driver
//! id opens the same database and carries on, and the promises still hold.
//!
//! A crash is a panic at a fail point inside the driver's task: everything that
//! control plane had in flight stops there, its leases stay behind, and it is
//! dropped; the fake cloud survives it.
//! Runs on a SQLite file always and on PostgreSQL when `SAM_TEST_POSTGRES_URL` is
//! set (required in CI).
//! Fail points are process-global, so each test holds a `fail::FailScenario` for its
//! whole run: the tests of this file take turns under `cargo test` too.

mod support;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use sam_core::testkit::node_agent::{FakeAgentScript, FakeNodeAgent};
use sam_core::{
    ControlPlane, ControlPlaneConfig, ExecutionStep, Labels, Layer, LayerSettings, Location,
    ManualClock, NodeId, Provider, ProviderKind, Store, SubmitRequest, TaskFilter, TaskStatus,
    VmSize, VmSpec, crash,
};
use sam_providers::FakeProvider;
use sam_store::{PgConfig, PgStore, SqliteConfig, SqliteStore};

/// Opens a new handle to the database of the matrix row with this index.
type Open = Box<dyn Fn(usize) -> Pin<Box<dyn Future<Output = Handle> + Send>> + Send + Sync>;

/// A store handle and what closes it.
struct Handle {
    store: Arc<dyn Store>,
    /// Closes the handle's pools, waiting for statements in flight. A crashed
    /// process's last writes land before its leases expire; in-process, the dropped
    /// driver's statements must likewise land before the next driver starts.
    close: Pin<Box<dyn Future<Output = ()> + Send>>,
}

/// Virtual time a recovering control plane gets to finish every task.
const RECOVERY_LIMIT: Duration = Duration::from_secs(3 * 3600);

struct World {
    clock: Arc<ManualClock>,
    provider: Arc<FakeProvider>,
    agent: Arc<FakeNodeAgent>,
}

impl World {
    fn new() -> Self {
        let clock = Arc::new(ManualClock::starting_at(chrono::Utc::now()));
        Self {
            provider: Arc::new(FakeProvider::new().with_clock(clock.clone())),
            agent: Arc::new(FakeNodeAgent::new(FakeAgentScript {
                ready_after_probes: Some(1),
                ..FakeAgentScript::default()
            })),
            clock,
        }
    }

    fn control_plane(&self, driver: &str, store: Arc<dyn Store>) -> ControlPlane {
        support::control_plane(
            store,
            Arc::clone(&self.provider),
            Arc::clone(&self.agent),
            self.clock.clone(),
            ControlPlaneConfig::new(driver, ProviderKind::Fake),
        )
    }

    /// Ticks (advancing the clock a poll interval each time) until every task ended
    /// or `limit` passed; sweeps every 15 ticks, as `ControlPlane::run` does.
    async fn drive(&self, cp: &ControlPlane, limit: Duration) -> Result<(), Crash> {
        let step = cp.config().poll_interval;
        let mut spent = Duration::ZERO;
        let mut ticks = 0u32;
        while spent <= limit {
            if ticks.is_multiple_of(15) {
                crashable(cp, Op::Sweep).await?;
            }
            crashable(cp, Op::Tick).await?;
            if support::all_ended(cp.store().as_ref()).await {
                return Ok(());
            }
            self.clock.advance(step);
            spent += step;
            ticks += 1;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy)]
enum Op {
    Tick,
    Sweep,
}

/// The control plane crashed (panicked at a fail point).
#[derive(Debug)]
struct Crash;

/// Runs one tick or sweep in its own task, so a panic there is a crash of that
/// control plane and not of the test.
async fn crashable(cp: &ControlPlane, op: Op) -> Result<(), Crash> {
    let cp = cp.clone();
    let joined = tokio::spawn(async move {
        match op {
            Op::Tick => cp.tick().await.map(drop),
            Op::Sweep => cp.sweep().await.map(drop),
        }
    })
    .await;
    match joined {
        Ok(result) => {
            result.expect("store calls work in the crash matrix");
            Ok(())
        }
        Err(e) if e.is_panic() => Err(Crash),
        Err(e) => panic!("the driver task ended oddly: {e}"),
    }
}

fn request(exclusive: bool) -> SubmitRequest {
    let mut task = LayerSettings::default();
    task.requirements.exclusive_node = Some(exclusive);
    SubmitRequest {
        repo: "https://example.invalid/repo.git".into(),
        prompt: "fix the flaky test".into(),
        layers: [(Layer::Task, task)].into_iter().collect(),
        ..SubmitRequest::default()
    }
}

/// What a scenario leaves for the recovering control plane to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Every task completes.
    Completed,
    /// Every task ends (some fail, as the scenario means them to).
    Ended,
}

/// Sets the world up so that the next step of `first` reaches `point`, configures the
/// point to panic, and runs until it does. Returns what the recovery must achieve.
async fn crash_at(point: &str, world: &World, first: &ControlPlane) -> Expect {
    let expect = match point {
        crash::SWEEP_NODES | crash::VM_DELETED => {
            // Three warm nodes whose warm time ran out, destroyed by the node sweep.
            for _ in 0..3 {
                first.submit(&request(true)).await.unwrap();
            }
            world.drive(first, RECOVERY_LIMIT).await.unwrap();
            world.clock.advance(Duration::from_secs(31 * 60));
            Expect::Completed
        }
        crash::SWEEP_TASKS => {
            // Three tasks whose agents never report ready, left by a driver that
            // stopped: the stuck sweep fails them.
            world.agent.set_script(FakeAgentScript {
                ready_after_probes: None,
                ..FakeAgentScript::default()
            });
            for _ in 0..3 {
                first.submit(&request(true)).await.unwrap();
            }
            for _ in 0..10 {
                crashable(first, Op::Tick).await.unwrap();
                world.clock.advance(first.config().poll_interval);
            }
            let waiting = first.list(&TaskFilter::default()).await.unwrap();
            assert!(
                waiting
                    .iter()
                    .all(|t| t.execution_step == ExecutionStep::NodeAgentReady),
                "{waiting:#?}"
            );
            world.clock.advance(first.config().timeouts.stuck_queued());
            Expect::Ended
        }
        crash::SWEEP_ORPHANS => {
            // Three managed VMs no node row knows.
            for i in 0..3 {
                let node = NodeId::new(format!("n-orphan-{i}")).unwrap();
                world
                    .provider
                    .create_vm(&VmSpec {
                        labels: Labels::for_node(&node),
                        node_id: node,
                        name: format!("orphan-{i}"),
                        size: VmSize::Small,
                        server_type: "local-small".into(),
                        location: Location::new("local").unwrap(),
                        image: None,
                        user_data: String::new(),
                    })
                    .await
                    .unwrap();
            }
            world.clock.advance(first.config().orphan_min_age);
            Expect::Completed
        }
        _ => {
            // One task leaves a warm node; then one task can take it and two
            // exclusive tasks provision nodes of their own.
            first.submit(&request(false)).await.unwrap();
            world.drive(first, RECOVERY_LIMIT).await.unwrap();
            first.submit(&request(false)).await.unwrap();
            first.submit(&request(true)).await.unwrap();
            first.submit(&request(true)).await.unwrap();
            Expect::Completed
        }
    };
    fail::cfg(point, "panic").unwrap();
    let crashed = match point {
        crash::SWEEP_NODES | crash::SWEEP_TASKS | crash::SWEEP_ORPHANS | crash::VM_DELETED => {
            crashable(first, Op::Sweep).await.is_err()
        }
        _ => world.drive(first, RECOVERY_LIMIT).await.is_err(),
    };
    fail::remove(point);
    assert!(crashed, "the scenario for {point} never reached it");
    expect
}

/// One row of the matrix: crash at `point`, recover with a fresh control plane on a
/// new handle to the same database, reconcile once, check the promises.
async fn one_point(point: &str, index: usize, open: &Open) {
    let world = World::new();
    let crashed = open(index).await;
    let first = world.control_plane("driver-a", crashed.store);
    let expect = crash_at(point, &world, &first).await;
    drop(first);
    crashed.close.await;

    // The crashed driver's leases must run out before anyone else may take its tasks.
    let second = world.control_plane("driver-b", open(index).await.store);
    world
        .clock
        .advance(second.config().lease + Duration::from_secs(1));
    world.drive(&second, RECOVERY_LIMIT).await.unwrap();
    // One reconciliation with every orphan old enough to go.
    world.clock.advance(second.config().orphan_min_age);
    second.sweep().await.unwrap();

    let store = second.store().as_ref();
    let broken = support::violations(store, &world.provider, Some(1)).await;
    assert!(broken.is_empty(), "crash at {point}: {broken:#?}");
    let tasks = second.list(&TaskFilter::default()).await.unwrap();
    if expect == Expect::Completed {
        for task in &tasks {
            assert_eq!(
                task.status,
                TaskStatus::Completed,
                "crash at {point}: {task:#?}"
            );
        }
    }
    eprintln!(
        "crash at {point}: recovered; {} tasks ({} completed), {} VMs",
        tasks.len(),
        tasks
            .iter()
            .filter(|t| t.status == TaskStatus::Completed)
            .count(),
        world.provider.vms().len()
    );
}

/// Runs `test` on a runtime of its own, holding the fail-point scenario (a
/// process-wide lock) throughout, so the tests of this file take turns.
fn with_fail_points(test: impl Future<Output = ()>) {
    support::quiet_fail_point_panics();
    let scenario = fail::FailScenario::setup();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(test);
    scenario.teardown();
}

fn matrix(open: Open) {
    with_fail_points(async {
        for (index, point) in crash::ALL.iter().enumerate() {
            one_point(point, index, &open).await;
        }
    });
}

#[test]
fn crash_matrix_on_sqlite() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let open: Open = Box::new(move |n| {
        let dir = Arc::clone(&dir);
        Box::pin(async move {
            let config = SqliteConfig::new(dir.path().join(format!("sam-{n}.db")));
            let store = Arc::new(SqliteStore::new(&config).await.unwrap());
            let closing = Arc::clone(&store);
            Handle {
                store,
                close: Box::pin(async move { closing.close().await }),
            }
        })
    });
    matrix(open);
}

#[test]
fn crash_matrix_on_postgres() {
    let Some(url) = sam_core::testkit::required_env("SAM_TEST_POSTGRES_URL") else {
        return;
    };
    let open: Open = Box::new(move |n| {
        let url = url.clone();
        Box::pin(async move {
            let schema = format!("sam_crash_{}_{n}", std::process::id());
            let config = PgConfig::new(url).with_schema(schema);
            let store = Arc::new(PgStore::new(&config).await.unwrap());
            let closing = Arc::clone(&store);
            Handle {
                store,
                close: Box::pin(async move { closing.close().await }),
            }
        })
    });
    matrix(open);
}

/// A driver that claimed a warm node and died before its task recorded it left the
/// node active with nobody on it; when the task then ends elsewhere (here: it is
/// cancelled), the node sweep returns the node to the warm pool, whose timeout
/// destroys it, instead of letting it run until its 24 hour lifetime.
#[test]
fn a_claimed_node_left_by_a_crash_goes_back_to_the_warm_pool() {
    with_fail_points(async {
        let dir = tempfile::tempdir().unwrap();
        let config = SqliteConfig::new(dir.path().join("sam.db"));
        let world = World::new();
        let crashed = Arc::new(SqliteStore::new(&config).await.unwrap());
        let first = world.control_plane("driver-a", crashed.clone());
        first.submit(&request(false)).await.unwrap();
        world.drive(&first, RECOVERY_LIMIT).await.unwrap();
        let task = first.submit(&request(false)).await.unwrap();
        fail::cfg(crash::WARM_CLAIMED, "panic").unwrap();
        assert!(crashable(&first, Op::Tick).await.is_err());
        fail::remove(crash::WARM_CLAIMED);
        drop(first);
        crashed.close().await;

        let second = world.control_plane(
            "driver-b",
            Arc::new(SqliteStore::new(&config).await.unwrap()),
        );
        assert!(second.cancel(&task, "user").await.unwrap());
        world
            .clock
            .advance(second.config().lease + Duration::from_secs(1));
        let report = second.sweep().await.unwrap();
        assert_eq!(report.nodes_warmed, 1, "{report:?}");
        world
            .clock
            .advance(second.config().timeouts.warm_node + Duration::from_secs(1));
        let report = second.sweep().await.unwrap();
        assert_eq!(report.nodes_destroyed, 1, "{report:?}");
        assert!(world.provider.vms().is_empty());
    });
}
