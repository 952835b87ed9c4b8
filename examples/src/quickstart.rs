//! One task end to end on an [`Embedded`] control plane, with a progress display:
//! what `sam run` does.
//!
//! [`run_task`] submits the task, shows one line per execution step with its label
//! and elapsed time (a spinner on a terminal, plain lines otherwise), and returns a
//! [`RunOutcome`]: status, node, size and where it came from, workspace profile, the
//! agent's last message, files changed. [`RunOutcome::summary`] is the text the CLI
//! prints; the outcome serializes to the JSON of `sam run --json`.

use std::collections::BTreeMap;
use std::io::{IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use sam_core::{
    ErrorCategory, ExecutionStep, Layer, LayerSettings, SessionEvent, SubmitRequest, TaskError,
    TaskEventKind, TaskId, TaskOutput, TaskRecord, TaskStatus, WorkspaceStatus,
};
use serde::Serialize;
use tokio::sync::broadcast::error::RecvError;

use crate::embedded::Embedded;

/// What to run.
#[derive(Debug, Clone)]
pub struct RunRequest {
    /// The repository (a local path).
    pub repo: PathBuf,
    /// The prompt.
    pub prompt: String,
    /// The agent by name (`demo`, `claude`, …, or [`crate::embedded::CUSTOM_AGENT`]).
    pub agent: String,
}

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// A spinner when stderr is a terminal, plain lines otherwise.
    Auto,
    /// Plain lines on stderr.
    Lines,
}

/// The size a task ran on.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SizeInfo {
    /// `small`, `medium` or `large`.
    pub size: String,
    /// Shown as the catalog knows it ([`sam_providers::SizeDisplay`]).
    pub display: String,
    /// The layer the requested size came from (`task`, `platform`, …).
    pub source: String,
    /// The requested size, when a smaller one was provisioned.
    pub downgraded_from: Option<String>,
}

/// How a run ended: the JSON object of `sam run --json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunOutcome {
    /// The task.
    pub task_id: String,
    /// Its final status.
    pub status: TaskStatus,
    /// The step it ended in.
    pub execution_step: ExecutionStep,
    /// The node it ran on.
    pub node: Option<String>,
    /// The size provisioned (`small`, `medium`, `large`).
    pub provisioned_size: Option<String>,
    /// Whether the node was a warm one from an earlier task.
    pub node_reused: bool,
    /// The size with its specs and source.
    pub size: Option<SizeInfo>,
    /// The workspace's effective profile.
    pub workspace_profile: Option<String>,
    /// Where the workspace was handed over to.
    pub workspace_dir: Option<PathBuf>,
    /// The agent.
    pub agent: String,
    /// The agent's last message.
    pub last_message: Option<String>,
    /// Files the agent changed (from `git status` of the workspace).
    pub files_changed: Vec<String>,
    /// The output branch and commit the task left in the repository.
    pub output: Option<TaskOutput>,
    /// Wall-clock seconds from submission to the end.
    pub elapsed_secs: f64,
    /// Why it failed, with a hint; `null` on success.
    pub error: Option<RunError>,
}

/// A failure as `sam run` reports it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunError {
    /// The category.
    pub category: ErrorCategory,
    /// The message.
    pub message: String,
    /// What the user can do, when known.
    pub hint: Option<String>,
}

impl RunOutcome {
    /// Whether the task completed.
    pub fn succeeded(&self) -> bool {
        self.status == TaskStatus::Completed
    }

    /// The human summary.
    pub fn summary(&self) -> String {
        let mut lines = vec![format!("Task {} {}", self.task_id, self.status)];
        let mut field = |name: &str, value: String| lines.push(format!("  {name:<18}{value}"));
        if let Some(node) = &self.node {
            let how = if self.node_reused {
                " (warm, reused)"
            } else {
                " (new)"
            };
            field("node", format!("{node}{how}"));
        }
        if let Some(size) = &self.size {
            let mut text = format!("{} (size from {})", size.display, size.source);
            if let Some(from) = &size.downgraded_from {
                text.push_str(&format!(", downgraded from {from}"));
            }
            field("size", text);
        }
        if let Some(profile) = &self.workspace_profile {
            field("workspace", profile.clone());
        }
        field("agent", self.agent.clone());
        if let Some(message) = &self.last_message {
            field("last message", message.trim().to_owned());
        }
        if !self.files_changed.is_empty() {
            field("files changed", self.files_changed.join(", "));
        }
        for (name, value) in crate::server::output_fields(self.output.as_ref()) {
            field(name, value);
        }
        if let Some(dir) = &self.workspace_dir {
            field("workspace dir", dir.display().to_string());
        }
        if let Some(error) = &self.error {
            field("error", format!("{} ({})", error.message, error.category));
            if let Some(hint) = &error.hint {
                field("hint", hint.clone());
            }
        }
        field("elapsed", format!("{:.1}s", self.elapsed_secs));
        lines.join("\n")
    }
}

/// What a user can do about a failure of `agent` with `category`.
pub fn hint(category: ErrorCategory, agent: &str) -> Option<String> {
    let key = match agent {
        "claude" => "set ANTHROPIC_API_KEY (or log in with `claude`)",
        "codex" => "set OPENAI_API_KEY (or log in with `codex login`)",
        "gemini" => "set GEMINI_API_KEY (or log in with `gemini`)",
        "opencode" => "configure a model provider with `opencode auth login`",
        _ => "give the agent its credentials",
    };
    match category {
        ErrorCategory::AuthError => Some(format!("the agent is not authenticated: {key}")),
        ErrorCategory::QuotaExceeded => Some(
            "the model provider's quota is used up: check the account's plan and billing".into(),
        ),
        ErrorCategory::RateLimited | ErrorCategory::TransientCapacity => {
            Some("the model provider is busy: try again in a minute".into())
        }
        _ if agent != "demo" && agent != crate::embedded::CUSTOM_AGENT => Some(format!(
            "check that the {agent} agent is installed and on PATH; `--agent demo` needs nothing"
        )),
        _ => None,
    }
}

/// The step display: a spinner or plain lines, on stderr.
#[derive(Debug)]
struct Display {
    spinner: Option<indicatif::ProgressBar>,
    current: Option<(ExecutionStep, String, Instant)>,
    started: Instant,
}

impl Display {
    fn new(progress: Progress) -> Self {
        let spinner = (progress == Progress::Auto && std::io::stderr().is_terminal()).then(|| {
            let bar = indicatif::ProgressBar::new_spinner();
            bar.enable_steady_tick(Duration::from_millis(100));
            bar
        });
        Self {
            spinner,
            current: None,
            started: Instant::now(),
        }
    }

    fn line(&self, text: &str) {
        match &self.spinner {
            Some(bar) => bar.println(text),
            None => {
                let _ = writeln!(std::io::stderr(), "{text}");
            }
        }
    }

    /// Ends the current step's line and starts `step`'s.
    fn step(&mut self, step: ExecutionStep, label: &str) {
        if self.current.as_ref().is_some_and(|(s, _, _)| *s == step) {
            return;
        }
        self.finish_step("✓");
        if let Some(bar) = &self.spinner {
            bar.set_message(label.to_owned());
        }
        self.current = Some((step, label.to_owned(), Instant::now()));
    }

    fn finish_step(&mut self, mark: &str) {
        if let Some((_, label, since)) = self.current.take() {
            self.line(&format!(
                "{mark} {label:<40} {:>6.1}s  (total {:.1}s)",
                since.elapsed().as_secs_f64(),
                self.started.elapsed().as_secs_f64()
            ));
        }
    }

    fn note(&self, text: &str) {
        self.line(&format!("  {text}"));
    }

    fn done(mut self, ok: bool) {
        self.finish_step(if ok { "✓" } else { "✗" });
        if let Some(bar) = self.spinner.take() {
            bar.finish_and_clear();
        }
    }
}

/// A short line for a session event worth showing, if it is one.
fn describe(event: &SessionEvent) -> Option<String> {
    match event {
        SessionEvent::Update { update } => {
            let kind = update.get("sessionUpdate")?.as_str()?;
            match kind {
                "tool_call" => Some(format!(
                    "tool: {}",
                    update.get("title").and_then(|t| t.as_str()).unwrap_or("?")
                )),
                _ => None,
            }
        }
        SessionEvent::PromptRetry { .. } => Some("the model provider failed; retrying".into()),
        SessionEvent::Crashed { .. } => Some("the agent crashed".into()),
        SessionEvent::Restarted { .. } => Some("the agent was restarted".into()),
        SessionEvent::Stopped { .. } => None,
    }
}

/// Follows one task's events with the step display: what `sam run` and `sam watch`
/// show while a task runs.
#[derive(Debug)]
pub struct Follower {
    display: Display,
    followed: Followed,
}

/// What a [`Follower`] saw besides the steps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Followed {
    /// The agent's last message.
    pub last_message: Option<String>,
    /// The requested size, when a smaller one was provisioned.
    pub downgraded_from: Option<String>,
}

impl Follower {
    /// Starts the display.
    pub fn new(progress: Progress) -> Self {
        Self {
            display: Display::new(progress),
            followed: Followed::default(),
        }
    }

    /// Shows one event of the task.
    pub fn event(&mut self, kind: &TaskEventKind) {
        match kind {
            TaskEventKind::Step { step, label } => self.display.step(*step, label),
            TaskEventKind::LastMessage { text } => {
                self.followed.last_message = Some(text.clone());
            }
            TaskEventKind::Downgraded { requested, .. } => {
                self.followed.downgraded_from = Some(requested.to_string());
            }
            TaskEventKind::Session { event } => {
                if let Some(text) = describe(event) {
                    self.display.note(&text);
                }
            }
            TaskEventKind::CapacityUnavailable { size, location } => {
                self.display
                    .note(&format!("no {size} capacity in {location}"));
            }
            TaskEventKind::Status { .. } | TaskEventKind::Refused { .. } => {}
        }
    }

    /// Shows that the task is in `step` (a no-op when it already was).
    pub fn step(&mut self, step: ExecutionStep, label: &str) {
        self.display.step(step, label);
    }

    /// Shows an indented note.
    pub fn note(&self, text: &str) {
        self.display.note(text);
    }

    /// Ends the display, marking the last step done or failed.
    pub fn done(self, ok: bool) -> Followed {
        self.display.done(ok);
        self.followed
    }
}

/// Submits `request` and follows it to its end; see the [module docs](self).
///
/// # Errors
/// When the task cannot be submitted or read back (not when it fails: that is a
/// [`RunOutcome`] with status `failed`).
pub async fn run_task(
    embedded: &Embedded,
    request: &RunRequest,
    progress: Progress,
) -> anyhow::Result<RunOutcome> {
    let cp = &embedded.control_plane;
    let repo = request
        .repo
        .canonicalize()
        .with_context(|| format!("cannot find the repository {}", request.repo.display()))?;
    let mut events = cp.subscribe();
    let mut layers = BTreeMap::new();
    layers.insert(
        Layer::Task,
        LayerSettings {
            agent: Some(request.agent.clone()),
            ..LayerSettings::default()
        },
    );
    let started = Instant::now();
    let id = cp
        .submit(&SubmitRequest {
            repo: repo.display().to_string(),
            prompt: request.prompt.clone(),
            layers,
            ..SubmitRequest::default()
        })
        .await
        .context("the task was refused")?;
    let mut follower = Follower::new(progress);
    follower.note(&format!(
        "task {id}: {} on {}",
        request.agent,
        repo.display()
    ));
    let mut check = tokio::time::interval(Duration::from_millis(200));
    let task = loop {
        tokio::select! {
            event = events.recv() => match event {
                Ok(event) if event.task_id == id => follower.event(&event.kind),
                Ok(_) | Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => {}
            },
            _ = check.tick() => {
                let task = read(embedded, &id).await?;
                follower.step(task.execution_step, task.execution_step.label());
                if task.status.is_terminal() {
                    break task;
                }
            }
        }
    };
    // The session's last events may still be in the channel.
    while let Ok(event) = events.try_recv() {
        if event.task_id == id {
            follower.event(&event.kind);
        }
    }
    released(embedded, &task).await;
    let Followed {
        last_message,
        downgraded_from,
    } = follower.done(task.status == TaskStatus::Completed);
    outcome(
        embedded,
        task,
        request,
        last_message,
        downgraded_from,
        started,
    )
    .await
}

/// How long [`released`] waits for the control plane to release a finished task.
const RELEASE_WAIT: Duration = Duration::from_secs(5);

/// Waits, at most [`RELEASE_WAIT`], until the control plane has released what `task`
/// held: its workspace is stopped, and so handed over into the workspaces directory
/// on the way. A task turns terminal before its release runs, so the workspace read
/// at once may still be on the node. A release that does not come in time (the
/// sweeps finish it) leaves the outcome without the workspace, as before.
async fn released(embedded: &Embedded, task: &TaskRecord) {
    let Some(workspace) = &task.workspace_id else {
        return;
    };
    let store = embedded.control_plane.store();
    let deadline = tokio::time::Instant::now() + RELEASE_WAIT;
    while tokio::time::Instant::now() < deadline {
        match store.get_workspace(workspace).await {
            Ok(Some(w)) if w.status != WorkspaceStatus::Stopped => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            _ => return,
        }
    }
}

async fn read(embedded: &Embedded, id: &TaskId) -> anyhow::Result<TaskRecord> {
    embedded
        .control_plane
        .get(id)
        .await?
        .with_context(|| format!("task {id} vanished"))
}

/// The lines `git` prints with `args` in `dir`; none when it fails.
async fn git_lines(dir: &Path, args: &[&str]) -> Vec<String> {
    let output = tokio::process::Command::new("git")
        .args(args)
        .current_dir(dir)
        .output()
        .await;
    match output {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    }
}

/// Paths the agent changed in `dir`: what the output branch committed since it left
/// the branch the clone started on (`@{-1}`), and what `git status` still reports.
async fn files_changed(dir: &Path) -> Vec<String> {
    let mut files = git_lines(dir, &["diff", "--name-only", "@{-1}"]).await;
    let status = git_lines(dir, &["status", "--porcelain", "--untracked-files=all"]).await;
    for file in status.iter().filter_map(|l| l.get(3..)) {
        if !files.iter().any(|f| f == file) {
            files.push(file.to_owned());
        }
    }
    files
}

async fn outcome(
    embedded: &Embedded,
    task: TaskRecord,
    request: &RunRequest,
    last_message: Option<String>,
    downgraded_from: Option<String>,
    started: Instant,
) -> anyhow::Result<RunOutcome> {
    let view = crate::server::TaskView::describe(
        &embedded.control_plane,
        embedded.catalog(),
        task.clone(),
    )
    .await?;
    let size = view.size.provisioned.map(|size| SizeInfo {
        size: size.to_string(),
        display: view.size.display.clone(),
        source: task.size_source.to_string(),
        downgraded_from: downgraded_from.clone(),
    });
    let workspace_dir = task
        .workspace_id
        .as_ref()
        .map(|id| embedded.workspaces_dir.join(id.as_str()))
        .filter(|dir| dir.is_dir());
    let files_changed = match &workspace_dir {
        Some(dir) => files_changed(dir).await,
        None => Vec::new(),
    };
    let error = task.error.as_ref().map(|e: &TaskError| RunError {
        category: e.category,
        message: e.message.clone(),
        hint: hint(e.category, &request.agent),
    });
    Ok(RunOutcome {
        task_id: task.id.to_string(),
        status: task.status,
        execution_step: task.execution_step,
        node: view.node,
        provisioned_size: view.size.provisioned.map(|s| s.to_string()),
        node_reused: view.node_reused,
        size,
        workspace_profile: view.workspace_profile,
        workspace_dir,
        agent: request.agent.clone(),
        last_message,
        files_changed,
        output: view.output,
        elapsed_secs: started.elapsed().as_secs_f64(),
        error,
    })
}
