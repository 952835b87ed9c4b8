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
use crate::transcript::{Received, Transcript};

/// What to run.
#[derive(Debug, Clone)]
pub struct RunRequest {
    /// The repository (a local path).
    pub repo: PathBuf,
    /// The prompt.
    pub prompt: String,
    /// The agent by name (`demo`, `claude`, …, or [`crate::embedded::CUSTOM_AGENT`]).
    pub agent: String,
    /// The branch to start from [default: the repository's default branch].
    pub branch: Option<String>,
    /// The task's own settings (size, location, devcontainer, …); its `agent` is
    /// replaced by [`RunRequest::agent`].
    pub settings: LayerSettings,
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
    /// The boot timeline of the node, when the task booted a fresh one: each
    /// phase with `phase`, `started_at`, `ended_at` and `failed`.
    pub boot_timeline: Vec<sam_core::BootPhaseRecord>,
    /// How many times the task moved off a node it lost.
    pub node_replacements: u32,
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
    /// How often the prompt was retried after a model-provider failure.
    pub prompt_retries: u32,
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
        if let Some(boot) = crate::server::boot_line(&self.boot_timeline) {
            field("boot", boot);
        }
        if self.node_replacements > 0 {
            field("replacements", self.node_replacements.to_string());
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

/// What a user can do about `error`, a failure of the task's `agent`, from what
/// happened: the agent could not be started, could not authenticate, hit a quota,
/// found the model provider busy or unreachable. `None` when there is nothing better
/// to say than the error itself.
pub fn hint(error: &TaskError, agent: &str) -> Option<String> {
    // The VM agent's own wording for an agent program it could not start.
    if error.message.contains("cannot start agent") {
        return Some(match sam_agent::vm::acp::agent_package(agent) {
            Some(package) => format!(
                "the {agent} agent is not installed on the node: `npm install -g {package}` puts it on PATH; `--agent demo` needs nothing"
            ),
            None => "the agent's command could not be started: check the command and its PATH"
                .to_owned(),
        });
    }
    // Observed with claude-agent-acp 0.23.1 run as root: `session/new` fails with
    // `-32603` and this detail, because Claude Code refuses root.
    if agent == "claude"
        && error
            .message
            .contains("Query closed before response received")
        && rustix::process::geteuid().is_root()
    {
        return Some(
            "Claude's ACP adapter refuses to run as root: run `sam` as an unprivileged user"
                .to_owned(),
        );
    }
    let key = match agent {
        "claude" => "set ANTHROPIC_API_KEY (or log in with `claude`)",
        "codex" => "set OPENAI_API_KEY or CODEX_API_KEY",
        "gemini" => "set GEMINI_API_KEY",
        "opencode" => "configure a model provider with `opencode auth login`",
        _ => "give the agent its credentials",
    };
    match error.category {
        ErrorCategory::AuthError => Some(format!("the agent is not authenticated: {key}")),
        ErrorCategory::QuotaExceeded => Some(
            "the model provider's quota is used up: check the account's plan and billing".into(),
        ),
        ErrorCategory::TransientCapacity => Some(
            "the model provider is overloaded: the prompt was retried; try again in a few minutes"
                .into(),
        ),
        ErrorCategory::RateLimited => Some(
            "the model provider rate-limited the account: try again in a minute".into(),
        ),
        ErrorCategory::Transient if agent != "demo" => Some(
            "the agent started but could not get an answer from its model provider (network, or a provider outage): check the node's network and try again"
                .into(),
        ),
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
        SessionEvent::PromptRetry { .. } => crate::transcript::retry_summary(event),
        SessionEvent::Crashed { .. } => Some("the agent crashed".into()),
        SessionEvent::Restarted { .. } => Some("the agent was restarted".into()),
        SessionEvent::Stopped { .. } | SessionEvent::Permission { .. } => None,
    }
}

/// Follows one task's events with the step display: what `sam run` and `sam watch`
/// show while a task runs.
#[derive(Debug)]
pub struct Follower {
    display: Display,
    followed: Followed,
    /// When the agent last said something (or its step began).
    heard: Instant,
    /// When the last "waiting for the agent" line was shown.
    waiting_shown: Option<Instant>,
    /// The agent's text, tool calls and plan as lines, for `sam watch`; without it
    /// only tool titles and retries are noted.
    transcript: Option<Transcript>,
}

/// How long the agent may be silent before the display says it is waiting for it.
const WAITING_AFTER: Duration = Duration::from_secs(15);
/// How often plain-line output repeats the waiting line.
const WAITING_EVERY: Duration = Duration::from_secs(30);

/// What a [`Follower`] saw besides the steps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Followed {
    /// The agent's last message.
    pub last_message: Option<String>,
    /// The requested size, when a smaller one was provisioned.
    pub downgraded_from: Option<String>,
    /// How often the prompt was retried.
    pub prompt_retries: u32,
}

impl Follower {
    /// Starts the display.
    pub fn new(progress: Progress) -> Self {
        Self {
            display: Display::new(progress),
            followed: Followed::default(),
            heard: Instant::now(),
            waiting_shown: None,
            transcript: None,
        }
    }

    /// Starts the display, showing the agent's session as its [`Transcript`] does:
    /// its text, thoughts, tool calls and plan, line by line.
    pub fn with_transcript(progress: Progress) -> Self {
        Self {
            transcript: Some(Transcript::new()),
            ..Self::new(progress)
        }
    }

    /// Shows one event as a client received it (an unknown kind is named).
    pub fn received(&mut self, received: &Received) {
        match &received.event {
            Some(event) => self.event(&event.kind),
            None => self.display.note(&format!(
                "an event of a kind this sam does not know: {}",
                received
                    .raw
                    .pointer("/kind/type")
                    .unwrap_or(&serde_json::Value::Null)
            )),
        }
    }

    /// Says "waiting for the agent (2m10s)…" while the agent works silently: on the
    /// spinner, or as a line every half minute. Call it periodically.
    pub fn tick(&mut self) {
        let running = self
            .display
            .current
            .as_ref()
            .is_some_and(|(step, _, _)| *step == ExecutionStep::Running);
        let silent = self.heard.elapsed();
        if !running || silent < WAITING_AFTER {
            return;
        }
        let text = format!("waiting for the agent ({})…", minutes(silent));
        match &self.display.spinner {
            Some(bar) => bar.set_message(format!("{} — {text}", ExecutionStep::Running.label())),
            None if self
                .waiting_shown
                .is_none_or(|at| at.elapsed() >= WAITING_EVERY) =>
            {
                self.waiting_shown = Some(Instant::now());
                self.display.note(&text);
            }
            None => {}
        }
    }

    fn heard(&mut self) {
        self.heard = Instant::now();
        self.waiting_shown = None;
        if let (Some(bar), Some((_, label, _))) = (&self.display.spinner, &self.display.current) {
            bar.set_message(label.clone());
        }
    }

    /// Shows one event of the task.
    pub fn event(&mut self, kind: &TaskEventKind) {
        match kind {
            TaskEventKind::Step { step, label } => {
                self.heard();
                self.display.step(*step, label);
            }
            TaskEventKind::LastMessage { text } => {
                self.followed.last_message = Some(text.clone());
            }
            TaskEventKind::Downgraded { requested, .. } => {
                self.followed.downgraded_from = Some(requested.to_string());
            }
            TaskEventKind::Session { event } => {
                self.heard();
                if matches!(event, SessionEvent::PromptRetry { .. }) {
                    self.followed.prompt_retries += 1;
                }
                match &mut self.transcript {
                    Some(transcript) => {
                        for line in transcript.session(event) {
                            self.display.line(&line);
                        }
                    }
                    None => {
                        if let Some(text) = describe(event) {
                            self.display.note(&text);
                        }
                    }
                }
            }
            TaskEventKind::CapacityUnavailable { size, location } => {
                self.display
                    .note(&format!("no {size} capacity in {location}"));
            }
            TaskEventKind::NodeLost { node, reason } => {
                self.display
                    .note(&format!("server {node} lost: {reason}; moving on"));
            }
            TaskEventKind::WaitingForCapacity { .. } => self.display.note(&kind.to_string()),
            TaskEventKind::Status { .. } | TaskEventKind::Refused { .. } => {}
        }
    }

    /// Shows that the task is in `step` (a no-op when it already was).
    pub fn step(&mut self, step: ExecutionStep, label: &str) {
        if self
            .display
            .current
            .as_ref()
            .is_none_or(|(s, _, _)| *s != step)
        {
            self.heard();
        }
        self.display.step(step, label);
    }

    /// Shows an indented note.
    pub fn note(&self, text: &str) {
        self.display.note(text);
    }

    /// Ends the display, marking the last step done or failed.
    pub fn done(mut self, ok: bool) -> Followed {
        if let Some(transcript) = &mut self.transcript {
            for line in transcript.finish() {
                self.display.line(&line);
            }
        }
        self.display.done(ok);
        self.followed
    }
}

/// `2m10s`, `45s`: a wait as the display shows it.
fn minutes(wait: Duration) -> String {
    let secs = wait.as_secs();
    if secs >= 60 {
        format!("{}m{:02}s", secs / 60, secs % 60)
    } else {
        format!("{secs}s")
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
    run_task_until(embedded, request, progress, std::future::pending()).await
}

/// [`run_task`], cancelling the task when `interrupt` completes (Ctrl-C in `sam
/// run`): the control plane's cancel (the same as `sam cancel` and the API) stops the
/// agent and its whole process tree, and the task is followed until it has ended
/// `cancelled`, so the outcome is still reported.
///
/// # Errors
/// As [`run_task`].
pub async fn run_task_until(
    embedded: &Embedded,
    request: &RunRequest,
    progress: Progress,
    interrupt: impl std::future::Future<Output = ()>,
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
            ..request.settings.clone()
        },
    );
    let started = Instant::now();
    let id = cp
        .submit(&SubmitRequest {
            repo: repo.display().to_string(),
            prompt: request.prompt.clone(),
            branch: request.branch.clone(),
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
    tokio::pin!(interrupt);
    let mut interrupted = false;
    let task = loop {
        tokio::select! {
            event = events.recv() => match event {
                Ok(event) if event.task_id == id => follower.event(&event.kind),
                Ok(_) | Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => {}
            },
            () = &mut interrupt, if !interrupted => {
                interrupted = true;
                follower.note(&format!("interrupted: cancelling task {id} (interrupt again to exit at once)"));
                if let Err(e) = cp.cancel(&id, "sam run (interrupted)").await {
                    follower.note(&format!("the cancel failed: {e}"));
                }
            }
            _ = check.tick() => {
                let task = read(embedded, &id).await?;
                follower.step(task.execution_step, task.execution_step.label());
                follower.tick();
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
    let followed = follower.done(task.status == TaskStatus::Completed);
    outcome(embedded, task, request, followed, started).await
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
    followed: Followed,
    started: Instant,
) -> anyhow::Result<RunOutcome> {
    let Followed {
        last_message,
        downgraded_from,
        prompt_retries,
    } = followed;
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
    let files_changed = match (&workspace_dir, &view.output) {
        (Some(dir), _) => files_changed(dir).await,
        // The workspace stayed on its node (a QEMU VM): its pushed commit, in the
        // repository it landed in, says what changed.
        (
            None,
            Some(TaskOutput {
                commit: Some(commit),
                ..
            }),
        ) => {
            git_lines(
                &request.repo,
                &["diff-tree", "--no-commit-id", "--name-only", "-r", commit],
            )
            .await
        }
        (None, _) => Vec::new(),
    };
    let error = task.error.as_ref().map(|e: &TaskError| RunError {
        category: e.category,
        message: e.message.clone(),
        hint: hint(e, &request.agent),
    });
    Ok(RunOutcome {
        task_id: task.id.to_string(),
        status: task.status,
        execution_step: task.execution_step,
        node: view.node,
        provisioned_size: view.size.provisioned.map(|s| s.to_string()),
        node_reused: view.node_reused,
        boot_timeline: view.boot_timeline,
        node_replacements: view.node_replacements,
        size,
        workspace_profile: view.workspace_profile,
        workspace_dir,
        agent: request.agent.clone(),
        last_message,
        files_changed,
        output: view.output,
        elapsed_secs: started.elapsed().as_secs_f64(),
        prompt_retries,
        error,
    })
}
