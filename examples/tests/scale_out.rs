//! Two `sam-server` processes share one PostgreSQL database (a fresh schema) and one
//! local provider (real `sam-vm-agent` nodes, real demo agents), and nothing else:
//! each has its own data directory, and both have the same credential key, so the
//! signing key and the node keys they share live in the database. They drive 500 tasks,
//! submitted through both APIs with a bounded number in flight. One server is killed
//! with SIGKILL while it holds leases on tasks; the survivor takes those tasks over
//! once their leases expire, and every task completes exactly once: one transition to
//! `completed`, no task with two nodes or two workspaces, and no VM without a node.
//! The nodes call back through one address in front of both servers (a small TCP
//! balancer in the test), as they would through a load balancer in production.
//!
//! Skips with a notice without `SAM_TEST_POSTGRES_URL`; fails without it when
//! `CI=true`. `SAM_SCALE_TASKS` changes the number of tasks (default 500).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sam_core::{
    ExecutionStep, Labels, NodeFilter, Provider as _, Store, TaskFilter, TaskId, TaskStatus,
};
use serde_json::json;

mod common;
use common::server::{ServerProcess, TOKEN, call, free_port, fresh_schema, server_command};
use common::{StopNodes, repo};

/// The runners' lease on a task: short, so the takeover is quick to see.
const LEASE: Duration = Duration::from_secs(3);
/// How often each runner looks for due tasks.
const POLL: Duration = Duration::from_millis(50);
/// How long after its lease expires the survivor may take to take a task over: its
/// poll, plus a runner busy with its own tasks on a loaded 2-core machine (4.6 s
/// after a 3 s lease was seen while release builds ran beside the test). A takeover
/// that waited for anything but the lease (a timeout, a sweep) takes far longer.
const TAKEOVER_SLACK: Duration = Duration::from_secs(3);
/// Tasks submitted but not yet finished, at most.
const IN_FLIGHT: usize = 24;

/// One address in front of both servers, as a load balancer would be: each
/// connection goes to the first server (round robin) that accepts it, so nodes booted
/// by a server that died still reach the survivor. Returns the balancer's port.
async fn balancer(backends: [u16; 2]) -> u16 {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .expect("a balancer port");
    let port = listener.local_addr().expect("an address").port();
    tokio::spawn(async move {
        let mut next = 0_usize;
        while let Ok((mut inbound, _)) = listener.accept().await {
            next += 1;
            let first = next % backends.len();
            tokio::spawn(async move {
                for i in 0..backends.len() {
                    let backend = backends[(first + i) % backends.len()];
                    if let Ok(mut outbound) =
                        tokio::net::TcpStream::connect(("127.0.0.1", backend)).await
                    {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        return;
                    }
                }
            });
        }
    });
    port
}

/// The credential key both servers are given (base64 of 32 bytes).
const CREDENTIAL_KEY: &str = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";

/// A server on `port` with its own data directory `data`, the shared database and
/// the shared local fleet at `fleet`, whose nodes call back through the balancer at
/// `public`, logging to `log`.
async fn start(
    port: u16,
    public: &str,
    data: &Path,
    fleet: &Path,
    url: &str,
    schema: &str,
    log: &Path,
) -> ServerProcess {
    let lease = LEASE.as_secs().to_string();
    let poll = POLL.as_millis().to_string();
    std::fs::create_dir_all(data).expect("a data directory");
    let fleet = fleet.display().to_string();
    let mut command = server_command(
        data,
        port,
        &["--database-schema", schema, "--public-url", public],
        &[
            ("SAM_DATABASE_URL", url),
            ("SAM_LEASE_SECS", &lease),
            ("SAM_POLL_INTERVAL_MS", &poll),
            ("SAM_LOCAL_ROOT", &fleet),
            ("SAM_CREDENTIAL_KEY", CREDENTIAL_KEY),
        ],
    );
    let log = std::fs::File::create(log).expect("a log file");
    command.stdout(Stdio::null()).stderr(Stdio::from(log));
    ServerProcess::launch(command, port).await
}

/// Submits a demo task through `server`; returns its id.
async fn submit(http: &reqwest::Client, server: &ServerProcess, repo: &Path, n: usize) -> TaskId {
    let (status, accepted) = call(
        http.post(server.url("/v1/tasks"))
            .bearer_auth(TOKEN)
            .json(&json!({"repo": repo, "prompt": format!("task {n}"), "agent": "demo"})),
    )
    .await;
    assert_eq!(status, 202, "{accepted}");
    TaskId::new(accepted["id"].as_str().expect("an id")).expect("a task id")
}

/// Sends `signal` (`STOP`, `CONT`) to process `pid`.
async fn signal(pid: u32, signal: &str) {
    let status = tokio::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .await
        .expect("kill runs");
    assert!(status.success(), "kill -{signal} {pid}");
}

/// The live tasks whose lease `owner` holds now.
async fn leased_by(store: &dyn Store, owner: &str) -> Vec<TaskId> {
    let now = chrono::Utc::now();
    store
        .list_tasks(&TaskFilter::live())
        .await
        .expect("tasks")
        .into_iter()
        .filter(|t| {
            t.lease_owner.as_deref() == Some(owner) && t.lease_expires_at.is_some_and(|e| e > now)
        })
        .map(|t| t.id)
        .collect()
}

/// Where a task stood when the server holding it died.
#[derive(Debug)]
struct Held {
    step: ExecutionStep,
    updated_at: chrono::DateTime<chrono::Utc>,
    taken_over: Option<Duration>,
}

#[tokio::test(flavor = "multi_thread")]
async fn two_servers_drive_every_task_exactly_once_through_a_sigkill() {
    let Some(url) = sam_core::testkit::required_env("SAM_TEST_POSTGRES_URL") else {
        return;
    };
    let total: usize = std::env::var("SAM_SCALE_TASKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    let schema = fresh_schema("sam_scale");
    let repo = repo();
    // The servers' logs, their data directories and the fleet (with the nodes' logs)
    // stay for a look after a failure.
    let logs = tempfile::Builder::new()
        .prefix("scale-out-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap()
        .keep();
    // StopNodes stops the nodes of `<dir>/local`: the fleet is that directory.
    let shared = logs.join("shared");
    let fleet = shared.join("local");
    std::fs::create_dir_all(&fleet).unwrap();
    let stop_nodes = StopNodes(shared.clone());
    let ports = [free_port(), free_port()];
    let public = format!("http://127.0.0.1:{}/", balancer(ports).await);
    let (data_a, data_b) = (logs.join("data-a"), logs.join("data-b"));
    let mut a = start(
        ports[0],
        &public,
        &data_a,
        &fleet,
        &url,
        &schema,
        &logs.join("a.log"),
    )
    .await;
    let b = start(
        ports[1],
        &public,
        &data_b,
        &fleet,
        &url,
        &schema,
        &logs.join("b.log"),
    )
    .await;
    let owner_a = format!("sam-{}", a.pid());
    let owner_b = format!("sam-{}", b.pid());
    let store: Arc<dyn Store> = Arc::new(
        sam_store::PgStore::new(&sam_store::PgConfig::new(&url).with_schema(&schema))
            .await
            .expect("the shared database"),
    );
    let http = reqwest::Client::new();

    let started = Instant::now();
    let deadline = started + Duration::from_secs(600);
    let mut ids: Vec<TaskId> = Vec::new();
    let mut in_flight: BTreeSet<TaskId> = BTreeSet::new();
    let mut finished = 0_usize;
    let mut killed_at: Option<Instant> = None;
    let mut held: BTreeMap<TaskId, Held> = BTreeMap::new();
    while finished < total {
        assert!(
            Instant::now() < deadline,
            "{finished} of {total} tasks finished in {:?}; see {}",
            started.elapsed(),
            logs.display()
        );
        // Keep the pipeline full, through both servers while both live.
        while in_flight.len() < IN_FLIGHT && ids.len() < total {
            let server = if killed_at.is_none() && ids.len().is_multiple_of(2) {
                &a
            } else {
                &b
            };
            let id = submit(&http, server, repo.path(), ids.len()).await;
            in_flight.insert(id.clone());
            ids.push(id);
        }
        // Kill A once a third of the tasks are done, at a moment it holds leases. A
        // holds each lease for a step only, so it is frozen (SIGSTOP) while its
        // leases are read: what is read is what it dies holding. The pause lets
        // statements already sent land first.
        if killed_at.is_none() && finished >= total / 3 {
            let pid = a.pid();
            signal(pid, "STOP").await;
            tokio::time::sleep(Duration::from_millis(100)).await;
            let holding = leased_by(store.as_ref(), &owner_a).await;
            if holding.is_empty() {
                signal(pid, "CONT").await;
            } else {
                a.child.start_kill().expect("SIGKILL");
                let at = Instant::now();
                a.child.wait().await.expect("the killed server is reaped");
                killed_at = Some(at);
                // The tasks it died holding: still leased by it after its death.
                for id in leased_by(store.as_ref(), &owner_a).await {
                    let task = store.get_task(&id).await.unwrap().expect("the task");
                    held.insert(
                        id,
                        Held {
                            step: task.execution_step,
                            updated_at: task.updated_at,
                            taken_over: None,
                        },
                    );
                }
                eprintln!(
                    "killed server A (pid {}) after {:?} with {} of {total} tasks finished, holding {} leases",
                    owner_a,
                    started.elapsed(),
                    finished,
                    held.len()
                );
            }
        }
        // The survivor's progress on what the dead server held.
        if let Some(at) = killed_at {
            for (id, h) in held.iter_mut().filter(|(_, h)| h.taken_over.is_none()) {
                let task = store.get_task(id).await.unwrap().expect("the task");
                if task.lease_owner.as_deref() == Some(owner_b.as_str())
                    || task.updated_at != h.updated_at
                    || task.execution_step != h.step
                    || task.status.is_terminal()
                {
                    h.taken_over = Some(at.elapsed());
                }
            }
        }
        let mut done = Vec::new();
        for id in &in_flight {
            let task = store.get_task(id).await.unwrap().expect("the task");
            if task.status.is_terminal() {
                done.push(id.clone());
            }
        }
        finished += done.len();
        for id in done {
            in_flight.remove(&id);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed();

    // Every task completed, exactly once.
    for id in &ids {
        let task = store.get_task(id).await.unwrap().expect("the task");
        assert_eq!(
            task.status,
            TaskStatus::Completed,
            "{id}: {:?}; see {}",
            task.error,
            logs.display()
        );
        let completions = store
            .list_status_events(id)
            .await
            .unwrap()
            .iter()
            .filter(|e| e.to == TaskStatus::Completed)
            .count();
        assert_eq!(completions, 1, "{id} completed {completions} times");
    }
    // No task got two nodes or two workspaces.
    let nodes = store.list_nodes(&NodeFilter::default()).await.unwrap();
    let mut created_for: HashMap<TaskId, usize> = HashMap::new();
    let mut workspaces: HashMap<TaskId, usize> = HashMap::new();
    for node in &nodes {
        if let Some(task) = &node.created_for {
            *created_for.entry(task.clone()).or_default() += 1;
        }
        for ws in store.list_workspaces(&node.id).await.unwrap() {
            *workspaces.entry(ws.task_id.clone()).or_default() += 1;
        }
    }
    assert!(
        created_for.values().all(|n| *n == 1),
        "a task provisioned two nodes: {created_for:?}"
    );
    assert!(
        workspaces.values().all(|n| *n == 1),
        "a task got two workspaces"
    );
    // Every VM the provider runs belongs to a recorded node, one VM per node.
    let provider =
        sam_providers::LocalProvider::new(sam_providers::LocalConfig::new(&fleet, "unused"))
            .unwrap();
    let vms = provider.list_vms(&Labels::new()).await.unwrap();
    let recorded: BTreeSet<_> = nodes.iter().filter_map(|n| n.vm_id.clone()).collect();
    let mut per_node: HashMap<String, usize> = HashMap::new();
    for vm in &vms {
        assert!(recorded.contains(&vm.id), "VM {} has no node", vm.id);
        let label = format!("{:?}", vm.labels);
        *per_node.entry(label).or_default() += 1;
    }
    assert!(
        per_node.values().all(|n| *n == 1),
        "two VMs carry one node's labels"
    );

    // The servers shared nothing but the database: no signing key and no node key in
    // either data directory.
    for data in [&data_a, &data_b] {
        assert!(
            !data.join("signing-key").exists(),
            "{} holds a signing key",
            data.display()
        );
        let node_keys = std::fs::read_dir(data.join("node-keys"))
            .map(|entries| entries.count())
            .unwrap_or(0);
        assert_eq!(node_keys, 0, "{} holds node keys", data.display());
    }

    // The survivor took over what the dead server held, within the lease (plus slack).
    let killed_at = killed_at.expect("server A was killed while holding leases");
    assert!(!held.is_empty(), "server A died holding leases");
    let takeovers: Vec<Duration> = held
        .iter()
        .map(|(id, h)| {
            h.taken_over
                .unwrap_or_else(|| panic!("{id} was never taken over"))
        })
        .collect();
    let slowest = takeovers.iter().max().copied().unwrap_or_default();
    let fastest = takeovers.iter().min().copied().unwrap_or_default();
    eprintln!(
        "scale-out: {total} tasks in {elapsed:?} ({:.1} tasks/s), {} nodes, {} VMs; \
         {} leases held by the killed server, taken over after {fastest:?} to {slowest:?} \
         (lease {LEASE:?}, poll {POLL:?}); killed {:?} into the run",
        total as f64 / elapsed.as_secs_f64(),
        nodes.len(),
        vms.len(),
        held.len(),
        killed_at - started,
    );
    assert!(
        slowest <= LEASE + TAKEOVER_SLACK,
        "the survivor took {slowest:?} to take over (lease {LEASE:?})"
    );
    let status = b.terminate().await;
    assert!(status.success(), "a graceful shutdown: {status}");
    drop(stop_nodes);
    let _ = std::fs::remove_dir_all(&logs);
}
