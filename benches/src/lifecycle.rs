//! Scenario `lifecycle`: tasks driven from submit to completed through the real
//! runner, [`DefaultScheduler`] and [`SqliteStore`] (a file in WAL mode), with the fake
//! provider and the fake node agent answering at once; and the raw write rate of the
//! same file through plain sqlx, the bound the store cannot beat.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use sam_core::testkit::node_agent::{FakeAgentScript, FakeNodeAgent, PlainBoot};
use sam_core::{
    ControlPlane, ControlPlaneConfig, ControlPlaneParts, DefaultScheduler, Provider, ProviderKind,
    Secret, Store, StoreAccess, SubmitRequest, TaskEvent, TaskEventKind, TaskId, TaskStatus,
    TokenSigner, TokioClock,
};
use sam_providers::FakeProvider;
use sam_store::{SqliteConfig, SqliteStore};
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::TryRecvError;

/// A [`Store`] that counts the calls that write, and those that only read, around
/// any store, per method.
///
/// Every write method of the SQL stores is one transaction, so the count is the
/// number of write transactions the control plane asked for. A lease claim that
/// finds nothing due still takes SQLite's write lock, so it counts too. Each read is
/// one query (one round trip to the store's connection thread on SQLite).
#[derive(Debug)]
pub struct CountingStore {
    inner: Arc<dyn Store>,
    writes: Mutex<BTreeMap<&'static str, u64>>,
    reads: Mutex<BTreeMap<&'static str, u64>>,
}

impl CountingStore {
    /// Counts the writes to `inner`.
    pub fn new(inner: Arc<dyn Store>) -> Self {
        Self {
            inner,
            writes: Mutex::new(BTreeMap::new()),
            reads: Mutex::new(BTreeMap::new()),
        }
    }

    /// Write calls so far.
    pub fn writes(&self) -> u64 {
        self.by_method().values().sum()
    }

    /// Write calls so far, per `Store` method.
    pub fn by_method(&self) -> BTreeMap<&'static str, u64> {
        locked(&self.writes).clone()
    }

    /// Read-only calls so far, per `Store` method.
    pub fn reads_by_method(&self) -> BTreeMap<&'static str, u64> {
        locked(&self.reads).clone()
    }

    /// Counts a call to `method` as a write or a read, and hands it to the inner store.
    fn route(&self, method: &'static str, access: StoreAccess) -> &dyn Store {
        let counts = match access {
            StoreAccess::Write => &self.writes,
            StoreAccess::Read => &self.reads,
        };
        *locked(counts).entry(method).or_default() += 1;
        self.inner.as_ref()
    }
}

fn locked<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

sam_core::delegate_store!(
    impl TaskStore, FleetStore, AccountStore for CountingStore => CountingStore::route
);

/// Ticks a control plane by hand and hands its events to the caller, failing when
/// nothing advances for 30 s.
#[derive(Debug)]
pub struct Driver {
    events: broadcast::Receiver<TaskEvent>,
    idle_since: Option<Instant>,
}

impl Driver {
    /// A driver of `cp`, seeing the events from now on.
    pub fn new(cp: &ControlPlane) -> Self {
        Self {
            events: cp.subscribe(),
            idle_since: None,
        }
    }

    /// One tick, then every event it caused to `seen`; after a tick that advanced
    /// nothing, waits one poll interval.
    ///
    /// # Errors
    /// A store failure while leasing, an error from `seen`, missed events, a stall.
    pub async fn step(
        &mut self,
        cp: &ControlPlane,
        mut seen: impl FnMut(&TaskEvent) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let worked = cp.tick().await? > 0;
        loop {
            match self.events.try_recv() {
                Ok(event) => seen(&event)?,
                Err(TryRecvError::Lagged(n)) => anyhow::bail!("missed {n} task events"),
                Err(_) => break,
            }
        }
        if worked {
            self.idle_since = None;
        } else {
            let since = *self.idle_since.get_or_insert_with(Instant::now);
            anyhow::ensure!(
                since.elapsed() < Duration::from_secs(30),
                "no task advanced for 30 s"
            );
            tokio::time::sleep(cp.config().poll_interval).await;
        }
        Ok(())
    }
}

/// The figures of the lifecycle scenario.
#[derive(Debug, Clone, PartialEq)]
pub struct LifecycleFigures {
    /// Tasks from submit to completed per second.
    pub tasks_per_sec: f64,
    /// Write transactions per task.
    pub writes_per_task: f64,
    /// Single-row write transactions per second on the same file through plain sqlx:
    /// the mean of [`Self::raw_samples`].
    pub raw_writes_per_sec: f64,
    /// The raw rate measured before each round of tasks and once after the last.
    pub raw_samples: Vec<f64>,
    /// `raw_writes_per_sec / writes_per_task`: the task rate the file allows.
    pub bound_tasks_per_sec: f64,
    /// Write transactions per task, per `Store` method, largest first.
    pub writes_by_method: Vec<(&'static str, f64)>,
    /// Read-only calls per task, per `Store` method, largest first.
    pub reads_by_method: Vec<(&'static str, f64)>,
}

/// The control plane of the scenario, with its counted store.
fn control_plane(store: Arc<CountingStore>) -> anyhow::Result<ControlPlane> {
    let store: Arc<dyn Store> = store;
    let mut config = ControlPlaneConfig::new("bench", ProviderKind::Fake);
    // Waits end as soon as the fakes answer; a short poll keeps the runner busy.
    config.poll_interval = Duration::from_millis(1);
    config.max_concurrent = 64;
    let parts = ControlPlaneParts {
        scheduler: Arc::new(DefaultScheduler::new(Arc::clone(&store))),
        store,
        providers: vec![Arc::new(FakeProvider::new()) as Arc<dyn Provider>],
        node_agent: Arc::new(FakeNodeAgent::new(FakeAgentScript::default())),
        boot: Arc::new(PlainBoot),
        signer: TokenSigner::new(Secret::new("b".repeat(32)), "sam-bench")?,
        clock: Arc::new(TokioClock::new()),
    };
    Ok(ControlPlane::new(parts, config)?)
}

/// A task as the scenario submits it.
pub fn submit_request(n: u64) -> SubmitRequest {
    SubmitRequest {
        repo: "https://example.invalid/repo.git".to_owned(),
        branch: None,
        prompt: format!("benchmark task {n}"),
        ..SubmitRequest::default()
    }
}

/// How many rows each raw measurement writes.
const RAW_ROWS: u64 = 4_000;
/// How many rounds the tasks run in, each after a raw measurement.
const ROUNDS: u64 = 4;

/// Runs `tasks` tasks through the control plane on a SQLite file in `dir`, keeping
/// `in_flight` of them submitted at once (a closed loop, so warm nodes are reused as
/// they would be in service), and measures the file's raw write rate alongside.
///
/// The tasks run in `ROUNDS` rounds on one control plane, and the raw rate is
/// measured before each round and after the last; the bound uses the mean. On a
/// shared machine the raw rate drifts by tens of percent within a minute (one run
/// here measured 1,770 and 5,418 tx/s a few seconds apart), so a bound taken on one
/// side of the tasks only would carry that drift into the share.
///
/// # Errors
/// Store or control-plane failures, a task that does not complete, a stall.
pub async fn run(dir: &Path, tasks: u64, in_flight: usize) -> anyhow::Result<LifecycleFigures> {
    let path = dir.join("lifecycle.db");
    let sqlite = SqliteStore::new(&SqliteConfig::new(&path)).await?;
    let store = Arc::new(CountingStore::new(Arc::new(sqlite)));
    let cp = control_plane(Arc::clone(&store))?;
    let mut driver = Driver::new(&cp);

    let before = store.by_method();
    let reads_before = store.reads_by_method();
    let mut raw_samples = Vec::new();
    let mut secs = 0.0;
    let mut submitted = 0;
    for round in 1..=ROUNDS {
        raw_samples.push(crate::baseline::raw_writes_per_sec(&path, RAW_ROWS).await?);
        let until = tasks * round / ROUNDS;
        let start = Instant::now();
        drive(&cp, &mut driver, &mut submitted, until, in_flight).await?;
        secs += start.elapsed().as_secs_f64();
    }
    let writes_by_method = per_task(&store.by_method(), &before, tasks);
    let reads_by_method = per_task(&store.reads_by_method(), &reads_before, tasks);
    let writes_per_task: f64 = writes_by_method.iter().map(|(_, n)| n).sum();
    drop(cp);
    drop(store);
    raw_samples.push(crate::baseline::raw_writes_per_sec(&path, RAW_ROWS).await?);

    let raw = raw_samples.iter().sum::<f64>() / raw_samples.len() as f64;
    Ok(LifecycleFigures {
        tasks_per_sec: tasks as f64 / secs,
        writes_per_task,
        raw_writes_per_sec: raw,
        raw_samples,
        bound_tasks_per_sec: raw / writes_per_task,
        writes_by_method,
        reads_by_method,
    })
}

/// Submits tasks (numbered on from `submitted`) until `until` have been submitted,
/// keeping `in_flight` open, and drives them until every one of them has completed.
async fn drive(
    cp: &ControlPlane,
    driver: &mut Driver,
    submitted: &mut u64,
    until: u64,
    in_flight: usize,
) -> anyhow::Result<()> {
    let mut open: HashSet<TaskId> = HashSet::new();
    while *submitted < until || !open.is_empty() {
        while open.len() < in_flight && *submitted < until {
            open.insert(cp.submit(&submit_request(*submitted)).await?);
            *submitted += 1;
        }
        driver
            .step(cp, |event| {
                if let TaskEventKind::Status { status, error } = &event.kind
                    && status.is_terminal()
                    && open.remove(&event.task_id)
                {
                    anyhow::ensure!(
                        *status == TaskStatus::Completed,
                        "task {} ended {status}: {error:?}",
                        event.task_id
                    );
                }
                Ok(())
            })
            .await
            .with_context(|| format!("{} tasks submitted, {} open", submitted, open.len()))?;
    }
    Ok(())
}

/// The calls made since `before`, per task and method, most first.
fn per_task(
    now: &BTreeMap<&'static str, u64>,
    before: &BTreeMap<&'static str, u64>,
    tasks: u64,
) -> Vec<(&'static str, f64)> {
    let mut calls: Vec<(&'static str, f64)> = now
        .iter()
        .map(|(method, n)| {
            let earlier = before.get(method).copied().unwrap_or_default();
            (*method, (n - earlier) as f64 / tasks as f64)
        })
        .filter(|(_, per_task)| *per_task > 0.0)
        .collect();
    calls.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(b.0)));
    calls
}
