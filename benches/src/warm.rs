//! Scenario `warm_path`: from submit to the agent session running, on a warm local
//! node.
//!
//! The control plane is the embedded one of `sam run` ([`Embedded`]: SQLite in a
//! temporary directory, the local provider, the callback server on loopback). Its
//! node is a real VM agent process with the host runtime, and its agent the demo ACP
//! agent; both are this executable started again in another role
//! ([`VM_AGENT_ROLE`], [`DEMO_AGENT_ROLE`]), so the harness needs nothing else built.
//! A first task boots the node (the cold path, not measured); then each task is
//! submitted once the previous one completed and the node is back in the warm pool,
//! so it finds the node warm, and the time from `submit` to the `running` step is
//! one sample.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use sam_core::{
    ExecutionStep, Labels, NodeFilter, NodeLifecycle, SubmitRequest, TaskEventKind, TaskStatus,
};
use sam_examples::embedded::{Embedded, EmbeddedOptions, Program};
use tokio::sync::broadcast::error::RecvError;

use crate::acp::quantile_us;

/// The argument that makes the harness run as a VM agent.
pub const VM_AGENT_ROLE: &str = "vm-agent";
/// The argument that makes the harness run as the demo ACP agent.
pub const DEMO_AGENT_ROLE: &str = "demo-agent";

/// The figures of the warm-path scenario.
#[derive(Debug, Clone, PartialEq)]
pub struct WarmFigures {
    /// Median submit → running, in milliseconds.
    pub p50_ms: f64,
    /// 99th percentile submit → running, in milliseconds.
    pub p99_ms: f64,
    /// Tasks measured.
    pub samples: usize,
    /// The step events of the slowest sample: each step's label and when it began,
    /// in ms after submit; what to look at when the p99 is far from the p50.
    pub slowest_steps: Vec<(String, f64)>,
}

/// A git repository of one commit in `dir`, for the tasks to clone.
fn repository(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(
        dir.join("README.md"),
        "A repository for the warm-path benchmark.\n",
    )?;
    for args in [
        &["init", "-q", "-b", "main"][..],
        &["add", "README.md"],
        &[
            "-c",
            "user.name=sam-bench",
            "-c",
            "user.email=sam-bench@example.invalid",
            "commit",
            "-q",
            "-m",
            "initial",
        ],
    ] {
        let status = std::process::Command::new("git")
            .args(args)
            .current_dir(dir)
            .status()
            .context("cannot run git")?;
        anyhow::ensure!(status.success(), "git {args:?} failed");
    }
    Ok(())
}

/// Runs one task; returns the time from submit to its `running` step, with its step
/// events.
async fn one_task(embedded: &Embedded, repo: &Path, n: usize) -> anyhow::Result<Sample> {
    let cp = &embedded.control_plane;
    let mut events = cp.subscribe();
    let start = Instant::now();
    let id = cp
        .submit(&SubmitRequest {
            repo: repo.display().to_string(),
            prompt: format!("warm-path benchmark task {n}"),
            ..SubmitRequest::default()
        })
        .await?;
    let mut running = None;
    let mut steps = Vec::new();
    loop {
        let event = tokio::time::timeout(Duration::from_secs(60), events.recv())
            .await
            .with_context(|| format!("task {id} made no progress for 60 s"))?;
        let event = match event {
            Ok(event) => event,
            Err(RecvError::Lagged(_)) => continue,
            Err(RecvError::Closed) => anyhow::bail!("the control plane stopped"),
        };
        if event.task_id != id {
            continue;
        }
        match event.kind {
            TaskEventKind::Step { step, label } => {
                steps.push((label, start.elapsed()));
                if step == ExecutionStep::Running {
                    running = Some(start.elapsed());
                }
            }
            TaskEventKind::Status { status, error } if status.is_terminal() => {
                anyhow::ensure!(
                    status == TaskStatus::Completed,
                    "task {id} ended {status}: {error:?}"
                );
                let took = running.with_context(|| format!("task {id} never reached running"))?;
                return Ok(Sample { took, steps });
            }
            _ => {}
        }
    }
}

/// Runs one cold task and `samples` warm ones in a fresh directory under `dir`.
///
/// # Errors
/// When the control plane cannot start, a task fails, or a warm task booted a node.
pub async fn run(dir: &Path, samples: usize) -> anyhow::Result<WarmFigures> {
    let repo = dir.join("repo");
    repository(&repo)?;
    let exe = std::env::current_exe().context("cannot find the running executable")?;
    let mut options = EmbeddedOptions::new(dir.join("sam"))?;
    options.vm_agent = Program {
        program: exe.clone(),
        args: vec![VM_AGENT_ROLE.to_owned()],
    };
    options.demo_agent = Program {
        program: exe,
        args: vec![DEMO_AGENT_ROLE.to_owned()],
    };
    options.poll_interval = Duration::from_millis(2);
    let embedded = Embedded::start(options).await?;
    let outcome = measure(&embedded, &repo, samples).await;
    let provider = std::sync::Arc::clone(&embedded.provider);
    embedded.shutdown().await;
    // The node stays warm after a shutdown, as `sam run` leaves it: stop it.
    for vm in provider.list_vms(&Labels::new()).await? {
        provider.delete_vm(&vm.id).await?;
    }
    outcome
}

/// One warm task: submit to the running step, and the step events on the way.
#[derive(Debug)]
struct Sample {
    took: Duration,
    steps: Vec<(String, Duration)>,
}

/// Waits until the node is back in the warm pool: a task's `completed` event comes
/// before the control plane has stopped its workspace and released the node, and a
/// task submitted in between would not find the node warm.
async fn node_warm(embedded: &Embedded) -> anyhow::Result<()> {
    let filter = NodeFilter {
        lifecycles: vec![NodeLifecycle::Warm],
        ..NodeFilter::default()
    };
    let start = Instant::now();
    while embedded
        .control_plane
        .store()
        .list_nodes(&filter)
        .await?
        .is_empty()
    {
        if start.elapsed() >= Duration::from_secs(30) {
            let store = embedded.control_plane.store();
            let mut state = Vec::new();
            for node in store.list_nodes(&NodeFilter::default()).await? {
                let workspaces: Vec<String> = store
                    .list_workspaces(&node.id)
                    .await?
                    .iter()
                    .map(|w| format!("{} {:?}", w.id, w.status))
                    .collect();
                state.push(format!(
                    "{} {} {} {} [{}]",
                    node.id,
                    node.status,
                    node.lifecycle,
                    node.health,
                    workspaces.join(", ")
                ));
            }
            anyhow::bail!(
                "the node did not return to the warm pool within 30 s: {}",
                state.join("; ")
            );
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(())
}

async fn measure(embedded: &Embedded, repo: &Path, samples: usize) -> anyhow::Result<WarmFigures> {
    one_task(embedded, repo, 0).await?;
    let mut times = Vec::with_capacity(samples);
    let mut slowest: Option<Sample> = None;
    for n in 1..=samples {
        node_warm(embedded).await?;
        let sample = one_task(embedded, repo, n).await?;
        times.push(sample.took);
        if slowest.as_ref().is_none_or(|s| sample.took > s.took) {
            slowest = Some(sample);
        }
    }
    let vms = embedded.provider.list_vms(&Labels::new()).await?;
    anyhow::ensure!(
        vms.len() == 1,
        "the warm tasks booted {} nodes instead of reusing one",
        vms.len()
    );
    Ok(WarmFigures {
        p50_ms: quantile_us(&mut times, 0.5) / 1000.0,
        p99_ms: quantile_us(&mut times, 0.99) / 1000.0,
        samples,
        slowest_steps: slowest
            .map(|s| {
                s.steps
                    .into_iter()
                    .map(|(label, at)| (label, at.as_secs_f64() * 1000.0))
                    .collect()
            })
            .unwrap_or_default(),
    })
}
