//! [`VmAgent`]: the agent on a node, wired together.
//!
//! [`VmAgent::serve`] answers the HTTP API of [`crate::wire`] on a listener the
//! caller bound (so `GET /health` answers as soon as it runs), and meanwhile:
//! - reads the boot timeline ([`crate::wire::boot_timeline`]), records each phase as an event and
//!   reports the node ready with the agent's version and the timeline;
//! - samples the resource monitor every [`VmAgentConfig::metrics_interval`] and
//!   stores each snapshot under its minute ([`Storage`]);
//! - sends a heartbeat with the latest snapshot every
//!   [`VmAgentConfig::heartbeat_interval`], adopting any refreshed node token;
//! - prepares workspaces with its [`WorkspaceRuntime`] in the background and reports
//!   each ready (or failed) with the workspace's own token;
//! - hosts one ACP session per workspace ([`AcpSession`]): every session event goes
//!   to the control plane as [`SessionCallback::Event`], in order, and the end of the
//!   turn as [`SessionCallback::Report`] (`stopped` with the stop reason and the
//!   agent's last message, or `failed` with the classified error);
//! - writes what happens to its [`EventLog`](crate::vm::EventLog), which
//!   `GET /v1/events` reads; with [`Storage::Sqlite`], `GET /v1/events/export` and
//!   `GET /v1/metrics/export` stream the database files after a WAL checkpoint.
//!
//! Idempotency follows [`sam_core::NodeAgent`]'s contract: creating a workspace that
//! exists, or starting a session in a workspace that has one, answers `200` with the
//! current state and starts nothing. A workspace runs one session: the control
//! plane gives each task its own workspace.
//!
//! Agents are named, never given as commands: a request picks one of
//! [`VmAgentConfig::agents`] (the known agents by default), so a management token
//! cannot run an arbitrary program.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::Utc;
use futures::{FutureExt, StreamExt};
use sam_core::{
    AgentHealth, AgentSession, Classify, ErrorCategory, NodeId, NodeMetrics, PullRequestMode,
    PullRequestRequest, RetryPolicy, Secret, SessionCallback, SessionEvent, SessionId,
    SessionReport, StopReason, TaskError, TaskOutput, TokenScope, TokenSigner, WorkspaceId,
    WorkspaceReport, coalesce_chunks, redact,
};
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use url::Url;

use crate::error::{Error, Result};
use crate::vm::acp::{AcpOptions, AcpSession, AgentCommand, KNOWN_AGENTS, SessionSettings};
use crate::vm::boot_log::finished_timeline;
use crate::vm::callbacks::{Callbacks, CallbacksConfig, callback_policy};
use crate::vm::events::NewEvent;
use crate::vm::git::{CredentialSource, GitAccess, commit_message};
use crate::vm::monitor::{self, MetricsSnapshot};
use crate::vm::runtime::{
    EffectiveProfile, ReadyReport, ReadyStatus, Workspace, WorkspaceRequest, WorkspaceRuntime,
};
use crate::vm::storage::{ExportKind, Storage, Stores};
use crate::wire::boot_timeline::{BootPhase, BootTimeline};
use crate::wire::{
    ApiError, CreateWorkspace, EventLevel, EventsQuery, MAX_EVENTS, NodeReady, SessionView,
    StartSession, WorkspaceView, management_signer, parse_body, path_id,
};

/// The agent's version, reported by `/health` and the ready callback.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Where cloud-init writes its output: the boot timeline's fallback source.
pub const DEFAULT_BOOT_LOG: &str = "/var/log/cloud-init-output.log";

/// How long the resource monitor samples `/proc/stat` for the CPU percentage (at
/// most half the metrics interval).
const CPU_WINDOW: Duration = Duration::from_millis(200);

/// The media type of an exported SQLite database.
pub const SQLITE_MEDIA_TYPE: &str = "application/vnd.sqlite3";

/// How much of an exported file each chunk of the response body carries.
const EXPORT_CHUNK: usize = 64 * 1024;

/// The longest agent message a stop report carries (its end is kept).
const LAST_MESSAGE_CHARS: usize = 4000;

/// How a [`VmAgent`] runs. No `Default`: it holds the node's identity and token.
#[derive(Debug, Clone)]
pub struct VmAgentConfig {
    /// This node.
    pub node_id: NodeId,
    /// The node token from the node's root-only boot file: it authenticates
    /// callbacks and keys management tokens ([`crate::wire`]).
    pub node_token: Secret,
    /// The control plane's base URL.
    pub control_plane: Url,
    /// How callbacks are retried.
    pub callback_retry: RetryPolicy,
    /// Time between heartbeats.
    pub heartbeat_interval: Duration,
    /// Time between resource snapshots.
    pub metrics_interval: Duration,
    /// Where events and metrics are kept.
    pub storage: Storage,
    /// The boot timeline's fallback log when there is no journal; `None` reports an
    /// empty timeline without reading anything (off a real node).
    pub boot_log: Option<PathBuf>,
    /// The agents a session may name, by name.
    pub agents: BTreeMap<String, AgentCommand>,
    /// How ACP sessions behave.
    pub acp: AcpOptions,
}

impl VmAgentConfig {
    /// Defaults around the node's identity: [`callback_policy`], heartbeats and
    /// resource snapshots every 60 s, events in memory ([`Storage::default`]; a node
    /// sets [`Storage::Sqlite`]), the boot timeline from the journal or
    /// [`DEFAULT_BOOT_LOG`], the known agents ([`KNOWN_AGENTS`]),
    /// [`AcpOptions::default`].
    pub fn new(node_id: NodeId, node_token: Secret, control_plane: Url) -> Self {
        Self {
            node_id,
            node_token,
            control_plane,
            callback_retry: callback_policy(),
            heartbeat_interval: Duration::from_secs(60),
            metrics_interval: Duration::from_secs(60),
            storage: Storage::default(),
            boot_log: Some(PathBuf::from(DEFAULT_BOOT_LOG)),
            agents: KNOWN_AGENTS
                .iter()
                .filter_map(|(name, _, _)| Some(((*name).to_owned(), AgentCommand::known(name)?)))
                .collect(),
            acp: AcpOptions::default(),
        }
    }
}

/// The VM agent; see the [module docs](self).
#[derive(Debug, Clone)]
pub struct VmAgent {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    node_id: NodeId,
    heartbeat_interval: Duration,
    metrics_interval: Duration,
    boot_log: Option<PathBuf>,
    agents: BTreeMap<String, AgentCommand>,
    acp: AcpOptions,
    runtime: Arc<dyn WorkspaceRuntime>,
    stores: Stores,
    /// The resource monitor's latest result, which heartbeats send.
    latest: watch::Sender<Sampled>,
    callbacks: Callbacks,
    signer: TokenSigner,
    workspaces: Mutex<HashMap<WorkspaceId, Arc<Entry>>>,
}

/// The resource monitor's latest result.
#[derive(Debug, Clone)]
enum Sampled {
    /// No sample has been taken yet.
    NotYet,
    /// The latest snapshot.
    Snapshot(MetricsSnapshot),
    /// The latest sample failed (the failure is in the event log).
    Failed,
}

/// One workspace and what runs in it.
#[derive(Debug)]
struct Entry {
    id: WorkspaceId,
    token: Secret,
    /// The branch pushed when the turn ends, if any.
    output_branch: Option<String>,
    /// Whether (and how) the repository is behind a GitHub installation.
    github: Option<PullRequestMode>,
    /// How git reaches the repository: for one behind an installation or served by
    /// the control plane.
    credentials: Option<GitAccess>,
    state: Mutex<EntryState>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

#[derive(Debug)]
struct EntryState {
    report: WorkspaceReport,
    workspace: Option<Workspace>,
    session: Option<Slot>,
}

/// A workspace's session.
#[derive(Debug)]
struct Slot {
    agent: String,
    report: SessionReport,
    acp: Arc<AcpSession>,
    id: Option<SessionId>,
    /// The turn has started (its user message was recorded): cancel goes to the agent.
    prompting: bool,
    cancel_requested: bool,
}

/// Locks a mutex; a panic elsewhere while holding it leaves consistent data here,
/// because every critical section only assigns whole values.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Entry {
    fn view(&self) -> WorkspaceView {
        WorkspaceView {
            id: self.id.clone(),
            report: lock(&self.state).report.clone(),
        }
    }

    fn session_view(&self) -> Option<SessionView> {
        lock(&self.state).session.as_ref().map(|s| SessionView {
            workspace_id: self.id.clone(),
            agent: s.agent.clone(),
            report: s.report.clone(),
        })
    }

    fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        lock(&self.tasks).push(tokio::spawn(task));
    }

    fn abort(&self) {
        for task in lock(&self.tasks).drain(..) {
            task.abort();
        }
    }
}

impl From<Error> for ApiError {
    fn from(error: Error) -> Self {
        ApiError::classified(&error)
    }
}

fn workspace_id(id: &str) -> Result<WorkspaceId, ApiError> {
    if id == "." || id == ".." {
        return Err(ApiError::field(
            ErrorCategory::InvalidConfig,
            "id",
            "a workspace id must not be . or ..",
        ));
    }
    path_id(id, "id")
}

/// The profile string the control plane stores, from the runtime's report.
fn profile_name(report: &ReadyReport) -> String {
    match &report.profile {
        EffectiveProfile::Host => "host".to_owned(),
        EffectiveProfile::Lightweight { .. } => "lightweight".to_owned(),
        EffectiveProfile::Devcontainer { name: None, .. } => "devcontainer".to_owned(),
        EffectiveProfile::Devcontainer {
            name: Some(name), ..
        } => format!("devcontainer/{name}"),
    }
}

/// A session event's kind in the event log.
fn event_kind(event: &SessionEvent) -> &'static str {
    match event {
        SessionEvent::Update { .. } => "agent_session.update",
        SessionEvent::PromptRetry { .. } => "agent_session.prompt_retry",
        SessionEvent::Crashed { .. } => "agent_session.crashed",
        SessionEvent::Restarted { .. } => "agent_session.restarted",
        SessionEvent::Stopped { .. } => "agent_session.stopped",
        SessionEvent::Permission { .. } => "agent_session.permission",
    }
}

/// The agent's message text in a `session/update`, if it is one.
fn agent_message_text(event: &SessionEvent) -> Option<Option<&str>> {
    let SessionEvent::Update { update } = event else {
        return None;
    };
    match update.get("sessionUpdate").and_then(Value::as_str) {
        Some("agent_message_chunk") => {
            Some(update.pointer("/content/text").and_then(Value::as_str))
        }
        _ => None,
    }
}

/// Whether the event is a user message: the host records it when a turn starts.
fn is_user_message(event: &SessionEvent) -> bool {
    matches!(event, SessionEvent::Update { update }
        if update.get("sessionUpdate").and_then(Value::as_str) == Some("user_message_chunk"))
}

impl VmAgent {
    /// An agent for `config`, preparing workspaces with `runtime` and keeping
    /// events and metrics where [`VmAgentConfig::storage`] says (opening, creating
    /// and migrating its files).
    ///
    /// # Errors
    /// [`Error::InvalidRequest`] for a node token too short to key management tokens,
    /// a zero heartbeat or metrics interval or retention, or a callback
    /// configuration that cannot work; [`Error::Sqlite`] or [`Error::Io`] when the
    /// storage's files cannot be opened.
    pub async fn new(config: VmAgentConfig, runtime: Arc<dyn WorkspaceRuntime>) -> Result<Self> {
        let signer = management_signer(&config.node_token)
            .map_err(|e| Error::InvalidRequest(format!("node token: {e}")))?;
        if config.heartbeat_interval.is_zero() {
            return Err(Error::InvalidRequest(
                "the heartbeat interval must be greater than zero".to_owned(),
            ));
        }
        if config.metrics_interval.is_zero() {
            return Err(Error::InvalidRequest(
                "the metrics interval must be greater than zero".to_owned(),
            ));
        }
        let callbacks = Callbacks::new(CallbacksConfig {
            base_url: config.control_plane,
            node_id: config.node_id.clone(),
            node_token: config.node_token,
            retry: config.callback_retry,
        })?;
        let stores = Stores::open(&config.storage, &config.node_id).await?;
        Ok(Self {
            shared: Arc::new(Shared {
                node_id: config.node_id,
                heartbeat_interval: config.heartbeat_interval,
                metrics_interval: config.metrics_interval,
                boot_log: config.boot_log,
                agents: config.agents,
                acp: config.acp,
                runtime,
                stores,
                latest: watch::Sender::new(Sampled::NotYet),
                callbacks,
                signer,
                workspaces: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The HTTP API, without the background work of [`VmAgent::serve`].
    pub fn router(&self) -> Router {
        let managed = Router::new()
            .route("/v1/workspaces", post(create_workspace))
            .route(
                "/v1/workspaces/{id}",
                get(get_workspace).delete(delete_workspace),
            )
            .route(
                "/v1/workspaces/{id}/sessions",
                post(start_session).get(get_session),
            )
            .route("/v1/workspaces/{id}/cancel", post(cancel_session))
            .route("/v1/events", get(list_events))
            .route("/v1/events/export", get(export_events))
            .route("/v1/metrics/export", get(export_metrics))
            .route_layer(middleware::from_fn_with_state(
                Arc::clone(&self.shared),
                require_management,
            ));
        Router::new()
            .route("/health", get(health))
            .merge(managed)
            .layer(middleware::from_fn(crate::serve::run_to_completion))
            .fallback(|| async { ApiError::new(ErrorCategory::NotFound, "no such route") })
            .layer(axum::extract::DefaultBodyLimit::max(
                crate::serve::BODY_LIMIT,
            ))
            .layer(middleware::from_fn(crate::serve::json_errors))
            .with_state(Arc::clone(&self.shared))
    }

    /// Serves the API on `listener` until `shutdown` completes, reporting ready and
    /// sending heartbeats meanwhile; then stops every session and background task.
    ///
    /// # Errors
    /// [`Error::Io`] when the listener fails.
    pub async fn serve(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<()> {
        let sampler = tokio::spawn(sample_metrics(Arc::clone(&self.shared)));
        let background = tokio::spawn(run_node(Arc::clone(&self.shared)));
        let listener = crate::serve::JsonErrorListener::new(listener);
        let served = axum::serve(listener, self.router())
            .with_graceful_shutdown(shutdown)
            .await;
        background.abort();
        sampler.abort();
        let entries: Vec<Arc<Entry>> = lock(&self.shared.workspaces)
            .drain()
            .map(|(_, e)| e)
            .collect();
        for entry in entries {
            entry.abort();
            // Dropping the sessions stops their agents' process groups.
            lock(&entry.state).session.take();
        }
        served.map_err(|e| Error::io("serving the VM agent API", e))
    }
}

impl Shared {
    async fn record(&self, event: NewEvent) {
        if let Err(e) = self.stores.events.append(event).await {
            tracing::warn!(error = %e, "could not record an event");
        }
    }

    fn entry(&self, id: &WorkspaceId) -> Result<Arc<Entry>, ApiError> {
        lock(&self.workspaces).get(id).cloned().ok_or_else(|| {
            ApiError::new(
                ErrorCategory::NotFound,
                &format!("workspace {id} does not exist"),
            )
        })
    }
}

/// Reports ready, then heartbeats forever.
async fn run_node(shared: Arc<Shared>) {
    let timeline = match &shared.boot_log {
        Some(log) => match finished_timeline(log).await {
            Ok(timeline) => timeline,
            Err(e) => {
                shared
                    .record(NewEvent::new(
                        EventLevel::Warn,
                        "node.boot_timeline",
                        &format!("the boot timeline cannot be read: {e}"),
                    ))
                    .await;
                BootTimeline::default()
            }
        },
        None => BootTimeline::default(),
    };
    for phase in &timeline.phases {
        shared.record(boot_phase_event(phase)).await;
    }
    let ready = NodeReady {
        version: VERSION.to_owned(),
        boot: timeline,
    };
    match shared.callbacks.node_ready(&ready).await {
        Ok(()) => {
            shared
                .record(NewEvent::new(
                    EventLevel::Info,
                    "node.ready",
                    &format!("reported ready (agent {VERSION})"),
                ))
                .await;
        }
        Err(e) => {
            shared
                .record(NewEvent::new(
                    EventLevel::Error,
                    "callback.failed",
                    &format!("the ready callback failed: {e}"),
                ))
                .await;
        }
    }
    let mut ticks = tokio::time::interval(shared.heartbeat_interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        heartbeat(&shared).await;
    }
}

/// A boot phase as an event: its start, end and duration in the detail.
fn boot_phase_event(phase: &BootPhase) -> NewEvent {
    let duration_ms = phase
        .duration
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let message = match duration_ms {
        Some(ms) => format!("boot phase {} took {ms} ms", phase.name),
        None => format!("boot phase {} never ended", phase.name),
    };
    let level = if phase.ended_at.is_some() {
        EventLevel::Info
    } else {
        EventLevel::Warn
    };
    NewEvent::new(level, "node.boot_phase", &message).with_detail(json!({
        "phase": phase.name,
        "started_at": phase.started_at,
        "ended_at": phase.ended_at,
        "duration_ms": duration_ms,
    }))
}

/// Samples the resource monitor every interval: stores each snapshot, publishes it
/// for heartbeats, and prunes events past the retention (even when none are written).
async fn sample_metrics(shared: Arc<Shared>) {
    let window = CPU_WINDOW.min(shared.metrics_interval / 2);
    let mut ticks = tokio::time::interval(shared.metrics_interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        match monitor::sample(window).await {
            Ok(snapshot) => {
                if let Err(e) = shared.stores.record_metrics(&snapshot).await {
                    shared
                        .record(NewEvent::new(
                            EventLevel::Warn,
                            "node.metrics",
                            &format!("a resource snapshot could not be stored: {e}"),
                        ))
                        .await;
                }
                shared.latest.send_replace(Sampled::Snapshot(snapshot));
            }
            Err(e) => {
                shared
                    .record(NewEvent::new(
                        EventLevel::Warn,
                        "node.metrics",
                        &format!("the resource monitor failed: {e}"),
                    ))
                    .await;
                shared.latest.send_replace(Sampled::Failed);
            }
        }
        if let Err(e) = shared.stores.prune_events(Utc::now()).await {
            tracing::warn!(error = %e, "could not prune old events");
        }
    }
}

async fn heartbeat(shared: &Shared) {
    // The first heartbeat waits for the first sample; later ones send the latest.
    let mut latest = shared.latest.subscribe();
    let sampled = latest
        .wait_for(|s| !matches!(s, Sampled::NotYet))
        .await
        .map(|s| s.clone());
    let metrics = match sampled {
        Ok(Sampled::Snapshot(snapshot)) => NodeMetrics {
            cpu_load_avg1: snapshot.cpu_load_avg1,
            memory_percent: snapshot.memory_percent,
            disk_percent: snapshot.disk_percent,
        },
        // The heartbeat still goes: liveness matters more than the numbers.
        _ => NodeMetrics::default(),
    };
    match shared.callbacks.heartbeat(&metrics).await {
        Ok(true) => {
            shared
                .record(NewEvent::new(
                    EventLevel::Info,
                    "node.token_refreshed",
                    "the control plane refreshed the node token",
                ))
                .await;
        }
        Ok(false) => {}
        Err(e) => {
            shared
                .record(NewEvent::new(
                    EventLevel::Warn,
                    "callback.failed",
                    &format!("a heartbeat failed: {e}"),
                ))
                .await;
        }
    }
}

async fn require_management(
    State(shared): State<Arc<Shared>>,
    request: Request,
    next: Next,
) -> Response {
    let token = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let Some(token) = token else {
        return ApiError::new(
            ErrorCategory::AuthError,
            "a management token is required (Authorization: Bearer …)",
        )
        .into_response();
    };
    match shared.signer.verify(
        token.trim(),
        TokenScope::Node,
        shared.node_id.as_str(),
        Utc::now(),
    ) {
        Ok(_) => next.run(request).await,
        Err(e) => ApiError::new(ErrorCategory::AuthError, &e.to_string()).into_response(),
    }
}

async fn health() -> axum::Json<AgentHealth> {
    axum::Json(AgentHealth {
        version: VERSION.to_owned(),
    })
}

async fn create_workspace(
    State(shared): State<Arc<Shared>>,
    body: Bytes,
) -> Result<(StatusCode, axum::Json<WorkspaceView>), ApiError> {
    let request: CreateWorkspace = parse_body(&body)?;
    workspace_id(request.id.as_str())?;
    // The control plane checked it at submission; the agent, which hands it to git,
    // checks the shape again.
    let repository = sam_core::parse_repository(&request.repo).map_err(|e| {
        ApiError::field(
            ErrorCategory::InvalidConfig,
            "repo",
            &format!("the repository {e}"),
        )
    })?;
    if request.repo_served && !repository.is_local() {
        return Err(ApiError::field(
            ErrorCategory::InvalidConfig,
            "repo_served",
            "only a path on the control plane's machine is served by it; this repository is a URL",
        ));
    }
    if request.repo_served && request.github.is_some() {
        return Err(ApiError::field(
            ErrorCategory::InvalidConfig,
            "repo_served",
            "a served repository is not behind a GitHub installation",
        ));
    }
    if request.token.is_empty() {
        return Err(ApiError::field(
            ErrorCategory::InvalidConfig,
            "token",
            "the workspace token must not be empty",
        ));
    }
    let entry = {
        let mut workspaces = lock(&shared.workspaces);
        if let Some(entry) = workspaces.get(&request.id) {
            return Ok((StatusCode::OK, axum::Json(entry.view())));
        }
        let route = |last: &str| {
            shared
                .callbacks
                .url(&["v1", "workspaces", request.id.as_str(), last])
        };
        let (repo, credentials) = if request.repo_served {
            (
                route(crate::wire::SERVED_REPO_SEGMENT).to_string(),
                Some(GitAccess::ControlPlane(request.token.clone())),
            )
        } else {
            let helper = request.github.map(|_| {
                GitAccess::Helper(CredentialSource {
                    url: route("git-credential"),
                    token: request.token.clone(),
                })
            });
            (request.repo.clone(), helper)
        };
        let entry = Arc::new(Entry {
            id: request.id.clone(),
            token: request.token.clone(),
            output_branch: request.output_branch.clone(),
            github: request.github,
            credentials,
            state: Mutex::new(EntryState {
                report: WorkspaceReport::Preparing,
                workspace: None,
                session: None,
            }),
            tasks: Mutex::new(Vec::new()),
        });
        // Spawned under the lock and before anything is awaited: a caller that goes
        // away mid-request (a control plane killed, a timeout) drops this handler,
        // and an entry left without its preparation would report `preparing` for
        // ever; a delete between the insert and the spawn would find nothing to stop.
        let created = NewEvent::new(
            EventLevel::Info,
            "workspace.created",
            &format!("preparing workspace {} from {}", request.id, request.repo),
        )
        .with_workspace(&request.id);
        let runtime_request =
            WorkspaceRequest::from_create(&request, repo, entry.credentials.clone());
        let (task_shared, task_entry) = (Arc::clone(&shared), Arc::clone(&entry));
        entry.spawn(async move {
            task_shared.record(created).await;
            prepare(task_shared, task_entry, runtime_request).await;
        });
        workspaces.insert(request.id.clone(), Arc::clone(&entry));
        entry
    };
    Ok((StatusCode::ACCEPTED, axum::Json(entry.view())))
}

/// Prepares a workspace, then reports it ready or failed.
async fn prepare(
    shared: Arc<Shared>,
    entry: Arc<Entry>,
    request: crate::vm::runtime::WorkspaceRequest,
) {
    let (report, event) = match shared.runtime.prepare(&request).await {
        Ok(workspace) => {
            let report = WorkspaceReport::Ready {
                effective_profile: profile_name(&workspace.report),
                recovery: workspace.report.status == ReadyStatus::Recovery,
            };
            let mut message = format!(
                "workspace ready with the {} profile",
                profile_name(&workspace.report)
            );
            if let Some(note) = &workspace.report.message {
                message.push_str(": ");
                message.push_str(note);
            }
            let level = match workspace.report.status {
                ReadyStatus::Running => EventLevel::Info,
                ReadyStatus::Recovery => EventLevel::Warn,
            };
            let event = NewEvent::new(level, "workspace.ready", &message)
                .with_detail(serde_json::to_value(&workspace.report).unwrap_or(Value::Null));
            lock(&entry.state).workspace = Some(workspace);
            (report, event)
        }
        Err(e) => {
            let error = TaskError {
                category: e.category(),
                message: redact(&e.to_string()).into_owned(),
            };
            let event = NewEvent::new(EventLevel::Error, "workspace.failed", &error.message)
                .with_detail(json!({ "category": error.category }));
            (WorkspaceReport::Failed { error }, event)
        }
    };
    lock(&entry.state).report = report.clone();
    shared.record(event.with_workspace(&entry.id)).await;
    if let Err(e) = shared
        .callbacks
        .workspace_ready(&entry.id, &entry.token, &report)
        .await
    {
        shared
            .record(
                NewEvent::new(
                    EventLevel::Error,
                    "callback.failed",
                    &format!("the workspace-ready callback failed: {e}"),
                )
                .with_workspace(&entry.id),
            )
            .await;
    }
}

async fn get_workspace(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
) -> Result<axum::Json<WorkspaceView>, ApiError> {
    Ok(axum::Json(shared.entry(&workspace_id(&id)?)?.view()))
}

async fn delete_workspace(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = workspace_id(&id)?;
    let Some(entry) = lock(&shared.workspaces).remove(&id) else {
        return Ok(StatusCode::NO_CONTENT);
    };
    entry.abort();
    let (session, workspace) = {
        let mut state = lock(&entry.state);
        (state.session.take(), state.workspace.take())
    };
    // Dropping the session stops the agent's process group.
    drop(session);
    if let Some(workspace) = workspace {
        shared.runtime.remove(&workspace).await?;
    }
    shared
        .record(
            NewEvent::new(EventLevel::Info, "workspace.removed", "workspace removed")
                .with_workspace(&id),
        )
        .await;
    Ok(StatusCode::NO_CONTENT)
}

async fn start_session(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<(StatusCode, axum::Json<SessionView>), ApiError> {
    let id = workspace_id(&id)?;
    let request: StartSession = parse_body(&body)?;
    sam_core::check_prompt(&request.prompt).map_err(|e| match e {
        sam_core::PromptRefusal::TooLarge { .. } => {
            ApiError::too_large("prompt", &format!("the prompt {e}"))
        }
        sam_core::PromptRefusal::Invalid(reason) => ApiError::field(
            ErrorCategory::InvalidConfig,
            "prompt",
            &format!("the prompt {reason}"),
        ),
    })?;
    let entry = shared.entry(&id)?;
    let (acp, dir) = {
        let mut state = lock(&entry.state);
        if let Some(slot) = &state.session {
            let view = SessionView {
                workspace_id: id,
                agent: slot.agent.clone(),
                report: slot.report.clone(),
            };
            return Ok((StatusCode::OK, axum::Json(view)));
        }
        let command = shared.agents.get(&request.agent).ok_or_else(|| {
            ApiError::field(
                ErrorCategory::InvalidConfig,
                "agent",
                &format!(
                    "unknown agent {:?}; this node runs {}",
                    request.agent,
                    shared.agents.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            )
        })?;
        let workspace = match (&state.report, &state.workspace) {
            (WorkspaceReport::Ready { .. }, Some(workspace)) => workspace,
            (WorkspaceReport::Failed { error }, _) => {
                return Err(ApiError::new(
                    ErrorCategory::InvalidConfig,
                    &format!("workspace {id} failed: {}", error.message),
                ));
            }
            _ => {
                return Err(ApiError::new(
                    ErrorCategory::Conflict,
                    &format!("workspace {id} is still being prepared"),
                ));
            }
        };
        let command = with_session_env(command.clone(), &request)?;
        let command = shared.runtime.agent_command(workspace, &command);
        let options = AcpOptions {
            permission: request
                .options
                .permission_mode
                .unwrap_or(shared.acp.permission),
            idle_timeout: request
                .idle_timeout_secs
                .map_or(shared.acp.idle_timeout, Duration::from_secs),
            ..shared.acp
        };
        let settings = SessionSettings {
            model: request.options.model.clone(),
            system_prompt: request.options.system_prompt.clone(),
            credentials: request.env.0.keys().cloned().collect(),
        };
        let mut acp = AcpSession::new(Arc::new(command), options).with_settings(settings);
        if let Some(dir) = workspace.agent_dir() {
            acp = acp.with_agent_root(dir);
        }
        let acp = Arc::new(acp);
        let dir = workspace.dir.clone();
        state.session = Some(Slot {
            agent: request.agent.clone(),
            report: SessionReport::Running,
            acp: Arc::clone(&acp),
            id: None,
            prompting: false,
            cancel_requested: false,
        });
        (acp, dir)
    };
    shared
        .record(
            NewEvent::new(
                EventLevel::Info,
                "agent_session.started",
                &format!("starting {}", request.agent),
            )
            .with_workspace(&id),
        )
        .await;
    let (sender, receiver) = mpsc::unbounded_channel();
    entry.spawn(forward(Arc::clone(&shared), Arc::clone(&entry), receiver));
    entry.spawn(run_session(
        Arc::clone(&shared),
        Arc::clone(&entry),
        acp,
        dir,
        request.prompt.clone(),
        sender,
    ));
    let view = entry.session_view().ok_or_else(|| {
        ApiError::new(
            ErrorCategory::NotFound,
            "the workspace was removed meanwhile",
        )
    })?;
    Ok((StatusCode::ACCEPTED, axum::Json(view)))
}

/// Names an agent's environment may not set: they would change how the agent
/// process itself is found, loaded or run.
const RESERVED_ENV: &[&str] = &["PATH", "HOME", "USER", "SHELL", "PWD"];

/// The agent command with the session's environment: its credential, and its model
/// and effort as `SAM_AGENT_MODEL` / `SAM_AGENT_EFFORT` (Claude also reads the model
/// from `ANTHROPIC_MODEL`). These are for agents without ACP support for them: the
/// model is also selected over ACP ([`SessionSettings`]) when the agent lists its
/// models, while effort has no ACP field and travels only here.
fn with_session_env(
    mut command: AgentCommand,
    request: &StartSession,
) -> Result<AgentCommand, ApiError> {
    for (name, value) in &request.env.0 {
        let valid = !name.is_empty()
            && name.len() <= 64
            && name
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
            && !name.starts_with(|c: char| c.is_ascii_digit())
            && !name.starts_with("LD_")
            && !RESERVED_ENV.contains(&name.as_str());
        if !valid {
            return Err(ApiError::field(
                ErrorCategory::InvalidConfig,
                "env",
                &format!("{name:?} is not an environment variable an agent may be given"),
            ));
        }
        // The agent's credential: masked in this node's logs and events from now on.
        sam_core::secret::register(value);
        command = command.with_env(name.clone(), Secret::new(value.clone()));
    }
    if let Some(model) = &request.options.model {
        command = command.with_env("SAM_AGENT_MODEL", Secret::new(model.clone()));
        if request.agent == "claude" {
            command = command.with_env("ANTHROPIC_MODEL", Secret::new(model.clone()));
        }
    }
    if let Some(effort) = request.options.effort {
        command = command.with_env("SAM_AGENT_EFFORT", Secret::new(effort.as_str()));
    }
    Ok(command)
}

/// Sends a session's callbacks to the control plane, one at a time, in order.
async fn forward(
    shared: Arc<Shared>,
    entry: Arc<Entry>,
    mut receiver: mpsc::UnboundedReceiver<SessionCallback>,
) {
    let mut pending = std::collections::VecDeque::new();
    while let Some(callback) = next_callback(&mut receiver, &mut pending).await {
        let delivered = shared
            .callbacks
            .session_event(&entry.id, &entry.token, &callback)
            .await;
        // The turn's end becomes visible to a poll only after its report (and
        // everything before it: events, the output) went to the control plane. A
        // control plane that polled first would end the task and then, rightly,
        // refuse the output still on its way.
        if let SessionCallback::Report(report) = &callback
            && let Some(slot) = lock(&entry.state).session.as_mut()
        {
            slot.report = report.clone();
        }
        if let Err(e) = delivered {
            shared
                .record(
                    NewEvent::new(
                        EventLevel::Warn,
                        "callback.failed",
                        &format!("a session callback failed: {e}"),
                    )
                    .with_workspace(&entry.id),
                )
                .await;
        }
    }
}

/// The next callback to send: what waited while the last one was on its way, its
/// message and thought chunks joined ([`coalesce_chunks`]), so the transcript keeps
/// messages rather than one entry per token and a slow control plane is sent fewer,
/// larger callbacks. Nothing is held back waiting for more.
async fn next_callback(
    receiver: &mut mpsc::UnboundedReceiver<SessionCallback>,
    pending: &mut std::collections::VecDeque<SessionCallback>,
) -> Option<SessionCallback> {
    if pending.is_empty() {
        pending.push_back(receiver.recv().await?);
    }
    // Take what is already here, then join adjacent events.
    while let Ok(more) = receiver.try_recv() {
        pending.push_back(more);
    }
    let mut joined = Vec::with_capacity(pending.len());
    let mut run = Vec::new();
    for callback in pending.drain(..) {
        match callback {
            SessionCallback::Event(event) => run.push(event),
            other => {
                joined.extend(
                    coalesce_chunks(run.drain(..))
                        .into_iter()
                        .map(SessionCallback::Event),
                );
                joined.push(other);
            }
        }
    }
    joined.extend(coalesce_chunks(run).into_iter().map(SessionCallback::Event));
    pending.extend(joined);
    pending.pop_front()
}

/// The agent's last message of a turn, assembled from its chunks.
#[derive(Debug, Default)]
struct LastMessage {
    text: String,
    /// Something else came after the current message: the next chunk starts anew.
    closed: bool,
}

impl LastMessage {
    fn observe(&mut self, event: &SessionEvent) {
        match agent_message_text(event) {
            Some(chunk) => {
                if self.closed {
                    self.text.clear();
                    self.closed = false;
                }
                self.text.push_str(chunk.unwrap_or_default());
            }
            None => self.closed = !self.text.is_empty(),
        }
    }

    fn into_text(self) -> Option<String> {
        let count = self.text.chars().count();
        let text: String = self
            .text
            .chars()
            .skip(count.saturating_sub(LAST_MESSAGE_CHARS))
            .collect();
        (!text.trim().is_empty()).then(|| redact(&text).into_owned())
    }
}

/// Commits what the agent changed, pushes the output branch (through the credential
/// helper for a repository behind an installation) and, when asked, has the control
/// plane open a pull request.
async fn deliver(
    shared: &Shared,
    entry: &Entry,
    dir: &std::path::Path,
    branch: &str,
    prompt: &str,
) -> Result<TaskOutput> {
    let git = shared.runtime.git();
    git.commit_all(dir, &commit_message(prompt, &entry.id))
        .await?;
    let commit = git.head(dir).await?;
    git.push(dir, branch, entry.credentials.as_ref()).await?;
    let pull_request_url = match entry.github {
        Some(PullRequestMode::Open) => {
            let base = lock(&entry.state)
                .workspace
                .as_ref()
                .and_then(|w| w.base_branch.clone())
                .ok_or_else(|| {
                    Error::InvalidRequest(
                        "no pull request: the clone did not start on a branch".to_owned(),
                    )
                })?;
            let request = PullRequestRequest {
                title: commit_message(prompt, &entry.id)
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .to_owned(),
                head: branch.to_owned(),
                base,
                body: format!("Opened by SAM for the prompt:\n\n{}", prompt.trim()),
            };
            Some(
                shared
                    .callbacks
                    .open_pull_request(&entry.id, &entry.token, &request)
                    .await?,
            )
        }
        Some(PullRequestMode::BranchOnly) | None => None,
    };
    Ok(TaskOutput {
        branch: branch.to_owned(),
        commit: Some(commit),
        pull_request_url,
    })
}

/// Runs one prompt turn, streaming its events, then reports how it ended.
async fn run_session(
    shared: Arc<Shared>,
    entry: Arc<Entry>,
    acp: Arc<AcpSession>,
    dir: PathBuf,
    prompt: String,
    sender: mpsc::UnboundedSender<SessionCallback>,
) {
    let mut events = acp.events();
    let turn = async {
        acp.initialize().await?;
        let id = acp.new_session(&dir).await?;
        let cancelled = {
            let mut state = lock(&entry.state);
            state.session.as_mut().is_some_and(|slot| {
                slot.id = Some(id.clone());
                slot.cancel_requested
            })
        };
        if cancelled {
            return Ok(StopReason::Cancelled);
        }
        acp.prompt(&id, &prompt).await
    };
    tokio::pin!(turn);
    let mut last = LastMessage::default();
    let relay = |event: SessionEvent, last: &mut LastMessage| {
        last.observe(&event);
        let record = NewEvent::new(EventLevel::Info, event_kind(&event), event_kind(&event))
            .with_workspace(&entry.id)
            .with_detail(serde_json::to_value(&event).unwrap_or(Value::Null));
        // A closed channel means the workspace is being removed: nothing to report to.
        let _ = sender.send(SessionCallback::Event(event));
        record
    };
    let outcome = loop {
        tokio::select! {
            biased;
            outcome = &mut turn => break outcome,
            Some(timed) = events.next() => {
                // The turn's user message is recorded after the prompt began: from
                // then on a cancel reaches the agent.
                let started = is_user_message(&timed.event);
                let record = relay(timed.event, &mut last);
                shared.record(record).await;
                if !started {
                    continue;
                }
                let pending_cancel = {
                    let mut state = lock(&entry.state);
                    state.session.as_mut().and_then(|slot| {
                        let first = !slot.prompting;
                        slot.prompting = true;
                        (first && slot.cancel_requested).then(|| slot.id.clone()).flatten()
                    })
                };
                if let Some(id) = pending_cancel
                    && let Err(e) = acp.cancel(&id).await
                {
                    tracing::warn!(error = %e, "could not cancel the turn");
                }
            }
        }
    };
    // Events emitted before the turn returned are buffered: relay them before the report.
    while let Some(Some(timed)) = events.next().now_or_never() {
        let record = relay(timed.event, &mut last);
        shared.record(record).await;
    }
    let mut report = match outcome {
        Ok(reason) => SessionReport::Stopped {
            reason,
            last_message: last.into_text(),
        },
        Err(e) => SessionReport::Failed {
            error: TaskError {
                category: e.category,
                message: e.message,
            },
        },
    };
    // A turn that ended (and was not cancelled) leaves its work on the output branch.
    if let (SessionReport::Stopped { reason, .. }, Some(branch)) = (&report, &entry.output_branch)
        && *reason != StopReason::Cancelled
    {
        match deliver(&shared, &entry, &dir, branch, &prompt).await {
            Ok(output) => {
                let mut message = format!(
                    "pushed {} at {}",
                    output.branch,
                    output.commit.as_deref().unwrap_or("?")
                );
                if let Some(url) = &output.pull_request_url {
                    message.push_str(&format!("; opened {url}"));
                }
                shared
                    .record(
                        NewEvent::new(EventLevel::Info, "workspace.pushed", &message)
                            .with_workspace(&entry.id)
                            .with_detail(serde_json::to_value(&output).unwrap_or(Value::Null)),
                    )
                    .await;
                let _ = sender.send(SessionCallback::Output(output));
            }
            Err(e) => {
                report = SessionReport::Failed {
                    error: TaskError {
                        category: e.category(),
                        message: redact(&format!(
                            "the agent's work could not be pushed to {branch}: {e}"
                        ))
                        .into_owned(),
                    },
                };
            }
        }
    }
    let (level, message) = match &report {
        SessionReport::Failed { error } => (
            EventLevel::Error,
            format!("the session failed: {}", error.message),
        ),
        _ => (EventLevel::Info, "the turn ended".to_owned()),
    };
    shared
        .record(
            NewEvent::new(level, "agent_session.report", &message)
                .with_workspace(&entry.id)
                .with_detail(serde_json::to_value(&report).unwrap_or(Value::Null)),
        )
        .await;
    let _ = sender.send(SessionCallback::Report(report));
}

async fn get_session(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
) -> Result<axum::Json<SessionView>, ApiError> {
    let id = workspace_id(&id)?;
    shared
        .entry(&id)?
        .session_view()
        .map(axum::Json)
        .ok_or_else(|| {
            ApiError::new(
                ErrorCategory::NotFound,
                &format!("workspace {id} has no session"),
            )
        })
}

async fn cancel_session(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = workspace_id(&id)?;
    let entry = shared.entry(&id)?;
    let target = {
        let mut state = lock(&entry.state);
        state.session.as_mut().and_then(|slot| {
            if slot.report != SessionReport::Running {
                return None;
            }
            slot.cancel_requested = true;
            // Before the turn started, the session task sends the cancel itself.
            slot.prompting
                .then(|| slot.id.clone().map(|sid| (Arc::clone(&slot.acp), sid)))
                .flatten()
        })
    };
    if let Some((acp, session)) = target {
        acp.cancel(&session).await.map_err(Error::from)?;
    }
    shared
        .record(
            NewEvent::new(EventLevel::Info, "agent_session.cancel", "cancel requested")
                .with_workspace(&id),
        )
        .await;
    Ok(StatusCode::NO_CONTENT)
}

async fn list_events(
    State(shared): State<Arc<Shared>>,
    query: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<axum::Json<Vec<crate::wire::AgentEvent>>, ApiError> {
    let Query(query) = query
        .map_err(|e| ApiError::field(ErrorCategory::InvalidConfig, "limit", &e.body_text()))?;
    let limit = query.limit.unwrap_or(100).min(MAX_EVENTS);
    Ok(axum::Json(shared.stores.events.recent(limit).await?))
}

async fn export_events(State(shared): State<Arc<Shared>>) -> Result<Response, ApiError> {
    export(&shared, ExportKind::Events).await
}

async fn export_metrics(State(shared): State<Arc<Shared>>) -> Result<Response, ApiError> {
    export(&shared, ExportKind::Metrics).await
}

/// Checkpoints a database's WAL, copies it, and streams the copy.
async fn export(shared: &Shared, kind: ExportKind) -> Result<Response, ApiError> {
    let Some(exported) = shared.stores.export(kind).await? else {
        return Err(ApiError::new(
            ErrorCategory::NotFound,
            &format!(
                "this agent keeps its {} in memory: there is no file to export",
                kind.name()
            ),
        ));
    };
    let chunks = futures::stream::try_unfold(exported.file, |mut file| async move {
        let mut chunk = vec![0; EXPORT_CHUNK];
        let read = file.read(&mut chunk).await?;
        if read == 0 {
            return Ok::<_, std::io::Error>(None);
        }
        chunk.truncate(read);
        Ok(Some((Bytes::from(chunk), file)))
    });
    let disposition = format!("attachment; filename=\"{}.db\"", kind.name());
    let mut response = Response::new(Body::from_stream(chunks));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(SQLITE_MEDIA_TYPE),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(exported.len));
    if let Ok(value) = HeaderValue::from_str(&disposition) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use sam_core::{SessionCallback, SessionEvent, SessionReport, StopReason};
    use serde_json::json;
    use tokio::sync::mpsc;

    use super::next_callback;

    fn chunk(text: &str) -> SessionCallback {
        SessionCallback::Event(SessionEvent::Update {
            update: json!({"sessionUpdate": "agent_message_chunk", "content": {"type": "text", "text": text}}),
        })
    }

    /// What waited while a callback was on its way goes as one message, in order,
    /// and never across a report.
    #[tokio::test]
    async fn chunks_that_waited_go_as_one_message_in_order() {
        let (sender, mut receiver) = mpsc::unbounded_channel();
        let report = SessionCallback::Report(SessionReport::Stopped {
            reason: StopReason::EndTurn,
            last_message: Some("Done…".into()),
        });
        for text in ["Do", "ne", "…"] {
            sender.send(chunk(text)).unwrap();
        }
        sender.send(report.clone()).unwrap();
        sender.send(chunk("late")).unwrap();
        let mut pending = std::collections::VecDeque::new();
        let mut sent = Vec::new();
        // The first arrives alone: nothing is held back waiting for more.
        drop(sender);
        while let Some(callback) = next_callback(&mut receiver, &mut pending).await {
            sent.push(callback);
        }
        assert_eq!(sent, vec![chunk("Done…"), report, chunk("late")]);
    }
}
