//! The ACP session host: [`AcpSession`] speaks the Agent Client Protocol to one
//! coding agent and implements [`AgentSession`].
//!
//! # Why a JSON-RPC loop of our own
//! ACP is newline-delimited JSON-RPC 2.0 on stdio, and the host needs nine message
//! shapes (`initialize`, `session/new`, `session/load`, `session/set_model`,
//! `session/prompt`, `session/cancel`, `session/update`, `session/request_permission`,
//! the two `fs/*` requests). The requests the host sends, the `initialize`,
//! `session/new` and `session/prompt` results and the answers to `fs/*` are the
//! stable v1 types of `agent-client-protocol-schema` (`session/set_model` is not in
//! the stable schema and stays JSON); the framing and the process are this module's
//! own small loop ([`rpc`](self)), not the SDK's. The agent's own requests are read
//! as JSON, which tolerates the fields they leave out (the schema requires them,
//! and the host's answers to missing ones name the field); so are `agentInfo` (the
//! schema needs a version beside the name), `authMethods` and `models` (extensions
//! the stable schema lacks). Where the crate stops:
//! - the schema crate's `SessionUpdate` is a closed, internally tagged enum without a
//!   catch-all variant, so an update kind newer than the pinned version fails to
//!   deserialize, while the host must pass unknown kinds through untouched; updates
//!   are therefore kept as raw JSON ([`SessionEvent::Update`]);
//! - the schema crate turns on `serde_json`'s `preserve_order` feature, which feature
//!   unification switches on for every crate built with this one (objects keep their
//!   insertion order instead of being sorted by key);
//! - the SDK's connection owns the process and its retry-free request flow, while
//!   crash recovery here must replace the process under a live session.
//!
//! The shapes are checked against the specification's own transcript
//! (`shared/cases/acp-transcript.jsonl`) in the tests.
//!
//! # Session settings
//! [`SessionSettings`] carry a task's model and system-prompt addition. After
//! `session/new` (and `session/load`), when the agent listed its models
//! (`models.availableModels`, `models.currentModelId`), the model is selected with
//! `session/set_model` (an ACP method the Claude adapter implements); a model the
//! agent does not list fails the session with [`AgentFailure::Unsupported`]
//! (`invalid_config`) naming the ones it offers, and an agent that lists none gets
//! the model only from its environment. The addition is sent as
//! `_meta.systemPrompt.append` to the agents that read it
//! ([`SYSTEM_PROMPT_META_AGENTS`], by their `initialize` name); every other agent gets
//! it prepended to the session's first prompt. ACP has no effort setting: effort
//! reaches an agent only through its environment.
//!
//! # Prompt retry and crash recovery
//! [`AgentSession::prompt`] records the user message once (a `user_message_chunk`
//! update), then runs the turn through [`sam_core::retry_notify`] with the prompt
//! policy ([`RetryPolicy::prompt`]). A JSON-RPC error that arrives before the agent
//! streamed anything for the turn is classified with [`classify_agent_error`] and
//! retried when its category allows, each retry emitting
//! [`SessionEvent::PromptRetry`]; once the agent streamed an update it accepted the
//! prompt, and an error then fails the turn at once.
//!
//! When the agent process dies during a turn (or reports a process-level failure,
//! [`is_agent_crash`]), the host emits [`SessionEvent::Crashed`]. If the agent
//! advertised `loadSession`, lived at least [`CrashPolicy::min_uptime`] and the
//! restart budget allows, it is started again, initialized, the session loaded (its
//! history replay is not re-emitted) within [`CrashPolicy::recovery_timeout`], a
//! [`SessionEvent::Restarted`] emitted, and the interrupted prompt sent again: ACP
//! cannot resume a turn half way. Otherwise the turn fails with an
//! [`AgentFailure::Crash`] error whose message says what was missing.

mod auth;
mod client;
pub(crate) mod endpoint;
mod fs;
mod launch;
mod restart;
mod rpc;
mod tree;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use agent_client_protocol_schema::{ProtocolVersion, v1 as acp};
use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::BoxStream;
use sam_core::{
    AgentError, AgentFailure, AgentInfo, AgentSession, Classify, ErrorCategory, RetryError,
    RetryPolicy, SessionEvent, SessionId, StopReason, TimedEvent, classify_agent_error,
    is_agent_crash, redact, retry_notify,
};
use serde_json::{Value, json};
use tokio::sync::{Mutex, broadcast};
use tokio::time::Instant;

pub use auth::KNOWN_AUTH_METHODS;
pub use client::{MODEL_OUTPUT_UPDATES, PermissionMode, is_model_output};
pub use launch::{
    AgentCommand, AgentIo, AgentLauncher, KNOWN_AGENT_PACKAGES, KNOWN_AGENTS, agent_package,
};
pub use restart::CrashPolicy;
pub use tree::TREE_VAR;

use client::{ClientHandler, redact_value};
use restart::RestartBudget;
use rpc::{CallError, Connection, Exit, RpcError};

/// The ACP protocol version the host speaks.
pub const PROTOCOL_VERSION: u64 = 1;

/// How an [`AcpSession`] behaves: plain data.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AcpOptions {
    /// How `session/request_permission` is answered.
    pub permission: PermissionMode,
    /// Retry of prompts that fail before the agent accepted them.
    pub prompt_retry: RetryPolicy,
    /// Restart of crashed agents.
    pub crash: CrashPolicy,
    /// The longest `initialize`, `authenticate`, `session/new` and `session/load`
    /// may take.
    pub request_timeout: Duration,
    /// The longest a prompt attempt may go without a word from the agent (an update
    /// or a request of its own). An attempt silent for this long is cancelled and
    /// ends as a `transient` [`AgentFailure::Timeout`], retried under
    /// [`AcpOptions::prompt_retry`] when the agent had not accepted the prompt yet.
    /// The control plane sends its [`sam_core::TimeoutPolicy::agent_idle`].
    pub idle_timeout: Duration,
}

impl Default for AcpOptions {
    /// Allow all tool calls, [`RetryPolicy::prompt`], [`CrashPolicy::default`], 2 min
    /// per setup request, and the idle limit of [`sam_core::TimeoutPolicy::default`]
    /// (5 min).
    fn default() -> Self {
        Self {
            permission: PermissionMode::AllowAll,
            prompt_retry: RetryPolicy::prompt(),
            crash: CrashPolicy::default(),
            request_timeout: Duration::from_secs(120),
            idle_timeout: sam_core::TimeoutPolicy::default().agent_idle,
        }
    }
}

/// Agents known to read `_meta.systemPrompt` on `session/new` and `session/load`,
/// by the name they give in `initialize`: Zed's Claude adapters, which take
/// `{"append": text}` as an addition to Claude Code's own system prompt.
pub const SYSTEM_PROMPT_META_AGENTS: &[&str] = &[
    "@zed-industries/claude-agent-acp",
    "@zed-industries/claude-code-acp",
];

/// How the agent of a session should run: the parts of a task's agent options that
/// ACP (or an agent's `_meta` extension) can carry. Plain data.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionSettings {
    /// The model: selected with `session/set_model` when the agent lists its models
    /// in `session/new`; a model it does not list fails the session
    /// ([`AgentFailure::Unsupported`]). An agent that lists none gets it only from
    /// its environment (set by the caller).
    pub model: Option<String>,
    /// Text added to the agent's instructions: sent as `_meta.systemPrompt.append`
    /// to [`SYSTEM_PROMPT_META_AGENTS`], prepended to a session's first prompt for
    /// every other agent.
    pub system_prompt: Option<String>,
    /// The names of the credential variables the agent was given (never their
    /// values): an `authMethods` entry that needs exactly these is used to
    /// `authenticate` before `session/new` (see [`KNOWN_AUTH_METHODS`]).
    pub credentials: Vec<String>,
}

/// One coding agent spoken to over ACP; see the [module docs](self).
#[derive(Debug)]
pub struct AcpSession {
    launcher: Arc<dyn AgentLauncher>,
    options: AcpOptions,
    settings: SessionSettings,
    /// Sessions whose agent has the system-prompt addition already (from `_meta`, or
    /// prepended to a prompt).
    instructed: StdMutex<std::collections::HashSet<String>>,
    handler: Arc<ClientHandler>,
    events: broadcast::Sender<TimedEvent>,
    live: Mutex<Option<Live>>,
    restarts: StdMutex<RestartBudget>,
    cancelled: AtomicBool,
    /// Where the agent sees its workspace, when that is not where the host has it.
    agent_root: Option<PathBuf>,
}

#[derive(Debug)]
struct Live {
    connection: Arc<Connection>,
    info: AgentInfo,
    /// The agent's `authMethods`, for the hint of an authentication failure.
    auth: Vec<auth::AuthMethod>,
}

/// A prompt attempt's failure, as the retry loop sees it.
#[derive(Debug)]
struct AttemptError {
    error: AgentError,
    /// False once the agent accepted the prompt, or for a crash report.
    retryable: bool,
}

impl Classify for AttemptError {
    fn category(&self) -> ErrorCategory {
        // The loop retries by category; an error that must not be retried reports
        // `unknown`, which no policy retries. The real category is returned to the caller.
        if self.retryable {
            self.error.category
        } else {
            ErrorCategory::Unknown
        }
    }
}

impl AcpSession {
    /// A session host for the agent `launcher` starts. Nothing starts until
    /// [`AgentSession::initialize`].
    pub fn new(launcher: Arc<dyn AgentLauncher>, options: AcpOptions) -> Self {
        let (events, _) = broadcast::channel(4096);
        let handler = Arc::new(ClientHandler::new(options.permission, events.clone()));
        Self {
            launcher,
            options,
            settings: SessionSettings::default(),
            instructed: StdMutex::new(std::collections::HashSet::new()),
            handler,
            events,
            live: Mutex::new(None),
            restarts: StdMutex::new(RestartBudget::new(options.crash)),
            cancelled: AtomicBool::new(false),
            agent_root: None,
        }
    }

    /// The same host, for an agent that sees its workspace at `dir` (inside a
    /// container) rather than where the host has it: sessions get `dir` as their
    /// `cwd`, and the agent's file requests under `dir` are served from the
    /// workspace on the host.
    #[must_use]
    pub fn with_agent_root(mut self, dir: impl Into<PathBuf>) -> Self {
        self.agent_root = Some(dir.into());
        self
    }

    /// The workspace at `cwd` on the host, as the agent sees it.
    fn workspace(&self, cwd: &Path) -> Result<fs::WorkspaceRoot, AgentError> {
        let root = workspace(cwd)?;
        Ok(match &self.agent_root {
            Some(seen) => root.seen_at(seen),
            None => root,
        })
    }

    /// The same host, running its sessions with `settings`.
    #[must_use]
    pub fn with_settings(mut self, settings: SessionSettings) -> Self {
        self.settings = settings;
        self
    }

    /// The system-prompt addition, when it is set and not blank.
    fn addition(&self) -> Option<&str> {
        self.settings
            .system_prompt
            .as_deref()
            .map(str::trim)
            .filter(|a| !a.is_empty())
    }

    /// The `_meta` of a `session/new` or `session/load` request: the system-prompt
    /// addition, for an agent that reads it there; `None` for every other agent.
    fn session_meta(&self, info: &AgentInfo) -> Option<acp::Meta> {
        let reads_meta = info.name.as_deref().is_some_and(|name| {
            SYSTEM_PROMPT_META_AGENTS
                .iter()
                .any(|a| name == *a || name.strip_prefix(a).is_some_and(|v| v.starts_with(' ')))
        });
        let addition = self.addition().filter(|_| reads_meta)?;
        let mut meta = acp::Meta::new();
        meta.insert("systemPrompt".to_owned(), json!({ "append": addition }));
        Some(meta)
    }

    /// Marks session `id` as having the system-prompt addition.
    fn mark_instructed(&self, id: &SessionId) {
        if let Ok(mut set) = self.instructed.lock() {
            set.insert(id.0.clone());
        }
    }

    /// The text to send for a prompt: the system-prompt addition first, as
    /// instructions, when the agent of session `id` did not get it in the session
    /// (once per session).
    fn prompt_text(&self, id: &SessionId, text: &str) -> String {
        let Some(addition) = self.addition() else {
            return text.to_owned();
        };
        let first = self
            .instructed
            .lock()
            .map(|mut set| set.insert(id.0.clone()))
            .unwrap_or(false);
        if first {
            format!("{addition}\n\n{text}")
        } else {
            text.to_owned()
        }
    }

    /// Selects the settings' model with `session/set_model`, when the agent listed its
    /// models in `result` (the answer to `session/new` or `session/load`).
    async fn select_model(
        &self,
        connection: &Connection,
        id: &SessionId,
        result: &Value,
    ) -> Result<(), AgentError> {
        let (Some(wanted), Some(models)) = (&self.settings.model, result.get("models")) else {
            return Ok(());
        };
        let offered: Vec<&str> = models
            .get("availableModels")
            .and_then(Value::as_array)
            .map(|list| {
                list.iter()
                    .filter_map(|m| m.get("modelId").and_then(Value::as_str))
                    .collect()
            })
            .unwrap_or_default();
        if !offered.contains(&wanted.as_str()) {
            return Err(agent_error(
                AgentFailure::Unsupported,
                ErrorCategory::InvalidConfig,
                &format!(
                    "the agent does not offer model {wanted:?}; it offers {}",
                    if offered.is_empty() {
                        "none".to_owned()
                    } else {
                        offered.join(", ")
                    }
                ),
            ));
        }
        if models.get("currentModelId").and_then(Value::as_str) == Some(wanted.as_str()) {
            return Ok(());
        }
        // `session/set_model` is not part of the stable v1 schema: its parameters are
        // built here.
        self.call(
            connection,
            "session/set_model",
            json!({ "sessionId": id.0, "modelId": wanted }),
        )
        .await
        .map_err(Self::setup_error)?;
        Ok(())
    }

    /// What the agent said about itself, once initialized.
    pub async fn agent_info(&self) -> Option<AgentInfo> {
        self.live.lock().await.as_ref().map(|l| l.info.clone())
    }

    /// Starts the agent and performs the handshake.
    async fn start(&self) -> Result<Live, AgentError> {
        let io = self.launcher.launch().await?;
        let connection = Arc::new(Connection::start(io, Arc::clone(&self.handler)));
        let result = self
            .call(&connection, "initialize", to_params(&initialize_request())?)
            .await
            .map_err(Self::setup_error)?;
        let info = parse_initialize(&result)?;
        let methods = auth::parse_methods(&result);
        if let Some(method) = auth::choose(&methods, &self.settings.credentials) {
            self.call(
                &connection,
                "authenticate",
                to_params(&acp::AuthenticateRequest::new(method.id.clone()))?,
            )
            .await
            .map_err(|e| {
                let mut error = Self::setup_error(e);
                if error.failure == AgentFailure::Rpc {
                    // Whatever the agent says, a refused `authenticate` is about
                    // the credential: no retry can fix it.
                    error.category = ErrorCategory::AuthError;
                }
                error.message =
                    format!("authenticate with {} failed: {}", method.id, error.message);
                error
            })?;
        }
        Ok(Live {
            connection,
            info,
            auth: methods,
        })
    }

    /// An error of the agent's, with what the user can do added when it is an
    /// authentication failure and the agent listed how it authenticates.
    async fn explained(&self, mut error: AgentError) -> AgentError {
        if error.category == ErrorCategory::AuthError
            && let Some(hint) = self
                .live
                .lock()
                .await
                .as_ref()
                .and_then(|l| auth::hint(&l.auth))
        {
            error.message = format!("{}; {hint}", error.message);
        }
        error
    }

    /// A setup request with the request timeout.
    async fn call(
        &self,
        connection: &Connection,
        method: &str,
        params: Value,
    ) -> Result<Value, CallError> {
        match tokio::time::timeout(
            self.options.request_timeout,
            connection.request(method, params),
        )
        .await
        {
            Ok(outcome) => outcome,
            Err(_) => Err(CallError::Protocol(format!(
                "{method} got no answer within {:?}",
                self.options.request_timeout
            ))),
        }
    }

    fn setup_error(error: CallError) -> AgentError {
        match error {
            CallError::Rpc(e) => rpc_agent_error(&e),
            CallError::Closed(exit) => crash_error(format!(
                "{} after {} ms",
                exit.reason,
                exit.uptime.as_millis()
            )),
            CallError::Protocol(message) => {
                agent_error(AgentFailure::Timeout, ErrorCategory::Transient, &message)
            }
        }
    }

    async fn connection(&self) -> Result<(Arc<Connection>, AgentInfo), AgentError> {
        let live = self.live.lock().await;
        let live = live.as_ref().ok_or_else(|| {
            agent_error(
                AgentFailure::Protocol,
                ErrorCategory::InvalidConfig,
                "initialize must be called first",
            )
        })?;
        Ok((Arc::clone(&live.connection), live.info.clone()))
    }

    /// One attempt at a prompt turn, recovering from crashes on the way.
    async fn prompt_attempt(&self, id: &SessionId, text: &str) -> Result<StopReason, AttemptError> {
        loop {
            if self.cancelled.load(Ordering::SeqCst) {
                return Ok(StopReason::Cancelled);
            }
            let (connection, info) = self.connection().await.map_err(fatal)?;
            let seen = self.handler.output();
            let accepted = || self.handler.output() > seen;
            let params = to_params(&acp::PromptRequest::new(
                acp_session(id),
                vec![acp::ContentBlock::Text(acp::TextContent::new(text))],
            ))
            .map_err(fatal)?;
            let Some(answer) = self
                .until_idle(connection.request("session/prompt", params))
                .await
            else {
                // Ask the agent to end the silent turn; the next attempt starts afresh.
                if let Ok(params) = to_params(&acp::CancelNotification::new(acp_session(id))) {
                    let _ = connection.notify("session/cancel", params).await;
                }
                return Err(AttemptError {
                    error: agent_error(
                        AgentFailure::Timeout,
                        ErrorCategory::Transient,
                        &format!(
                            "the agent sent nothing for {} s",
                            self.options.idle_timeout.as_secs()
                        ),
                    ),
                    retryable: !accepted(),
                });
            };
            let exit = match answer {
                Ok(result) => return parse_stop_reason(&result).map_err(fatal),
                Err(CallError::Rpc(e)) if is_agent_crash(&e.message) => {
                    // The agent reports its own transport as gone: treat it as dead.
                    Exit {
                        reason: redact(&format!("agent reported: {}", e.message)).into_owned(),
                        uptime: connection.uptime(),
                    }
                }
                Err(CallError::Rpc(e)) => {
                    return Err(AttemptError {
                        error: rpc_agent_error(&e),
                        retryable: !accepted(),
                    });
                }
                Err(CallError::Closed(exit)) => exit,
                Err(CallError::Protocol(message)) => return Err(fatal(protocol_error(message))),
            };
            drop(connection);
            self.recover(id, &info, exit).await.map_err(fatal)?;
        }
    }

    /// Waits for `answer`, or `None` once the agent has been silent (no update, no
    /// request) for the idle limit.
    async fn until_idle<T>(&self, answer: impl std::future::Future<Output = T>) -> Option<T> {
        let idle = self.options.idle_timeout;
        let started = Instant::now();
        tokio::pin!(answer);
        loop {
            let last = self
                .handler
                .last_activity()
                .map_or(started, |at| at.max(started));
            tokio::select! {
                biased;
                outcome = &mut answer => return Some(outcome),
                () = tokio::time::sleep_until(last + idle) => {
                    let now_last = self
                        .handler
                        .last_activity()
                        .map_or(started, |at| at.max(started));
                    if now_last == last {
                        return None;
                    }
                }
            }
        }
    }

    /// Restarts the agent and loads `id`, or explains why not.
    async fn recover(
        &self,
        id: &SessionId,
        info: &AgentInfo,
        exit: Exit,
    ) -> Result<(), AgentError> {
        // Drop the dead connection first: it kills what is left of the process group.
        self.live.lock().await.take();
        let short_lived = exit.uptime < self.options.crash.min_uptime;
        let restart = if info.load_session && !short_lived {
            self.restarts
                .lock()
                .map_err(|_| protocol_error("restart budget poisoned".to_owned()))?
                .take(Instant::now())
        } else {
            None
        };
        self.handler.emit(SessionEvent::Crashed {
            reason: exit.reason.clone(),
            resumable: restart.is_some(),
        });
        let Some(restarts) = restart else {
            let why = if !info.load_session {
                "it cannot be resumed: the agent does not advertise loadSession".to_owned()
            } else if short_lived {
                format!(
                    "it exited {} ms after it started (under {} ms counts as a crash, not a restart)",
                    exit.uptime.as_millis(),
                    self.options.crash.min_uptime.as_millis()
                )
            } else {
                format!(
                    "it was restarted {} times within {} s already",
                    self.options.crash.max_restarts,
                    self.options.crash.decay.as_secs()
                )
            };
            return Err(crash_error(format!("{}; {why}", exit.reason)));
        };
        let cwd = self.handler.root(id).ok_or_else(|| {
            crash_error(format!(
                "{}; the session's workspace is unknown",
                exit.reason
            ))
        })?;
        let recovery = async {
            let live = self.start().await?;
            self.handler.set_muted(true);
            let params = acp::LoadSessionRequest::new(acp_session(id), cwd)
                .meta(self.session_meta(&live.info));
            let loaded = self
                .call(&live.connection, "session/load", to_params(&params)?)
                .await;
            self.handler.set_muted(false);
            let loaded = loaded.map_err(Self::setup_error)?;
            self.select_model(&live.connection, id, &loaded).await?;
            Ok::<_, AgentError>(live)
        };
        let live = tokio::time::timeout(self.options.crash.recovery_timeout, recovery)
            .await
            .map_err(|_| {
                crash_error(format!(
                    "{}; recovery did not finish within {} s",
                    exit.reason,
                    self.options.crash.recovery_timeout.as_secs()
                ))
            })?
            .map_err(|e| crash_error(format!("{}; restart failed: {}", exit.reason, e.message)))?;
        *self.live.lock().await = Some(live);
        self.handler.emit(SessionEvent::Restarted { restarts });
        Ok(())
    }
}

/// The `initialize` request: the host reads and writes text files for the agent, and
/// has no terminal.
fn initialize_request() -> acp::InitializeRequest {
    acp::InitializeRequest::new(ProtocolVersion::V1)
        .client_capabilities(
            acp::ClientCapabilities::new().fs(acp::FileSystemCapabilities::new()
                .read_text_file(true)
                .write_text_file(true)),
        )
        .client_info(
            acp::Implementation::new("sam-agent", env!("CARGO_PKG_VERSION"))
                .title("SAM VM agent".to_owned()),
        )
}

/// The protocol's id of session `id`.
fn acp_session(id: &SessionId) -> acp::SessionId {
    acp::SessionId::new(id.0.as_str())
}

/// The JSON parameters of a request or notification.
fn to_params(params: &impl serde::Serialize) -> Result<Value, AgentError> {
    serde_json::to_value(params)
        .map_err(|e| protocol_error(format!("cannot encode the parameters: {e}")))
}

fn fatal(error: AgentError) -> AttemptError {
    AttemptError {
        error,
        retryable: false,
    }
}

/// An error of the host's own making (not relayed from the agent), redacted.
pub(crate) fn agent_error(
    failure: AgentFailure,
    category: ErrorCategory,
    message: &str,
) -> AgentError {
    AgentError {
        failure,
        category,
        code: None,
        message: redact(message).into_owned(),
    }
}

/// The session's workspace root, which must be an existing directory.
fn workspace(cwd: &Path) -> Result<fs::WorkspaceRoot, AgentError> {
    fs::WorkspaceRoot::new(cwd).map_err(|e| {
        agent_error(
            AgentFailure::Protocol,
            ErrorCategory::InvalidConfig,
            &format!("workspace {}: {e}", cwd.display()),
        )
    })
}

fn crash_error(message: String) -> AgentError {
    agent_error(AgentFailure::Crash, ErrorCategory::Unknown, &message)
}

fn protocol_error(message: String) -> AgentError {
    agent_error(AgentFailure::Protocol, ErrorCategory::Unknown, &message)
}

/// An agent's JSON-RPC error, classified on its whole error object (code, message,
/// and the provider body agents put in `data` or the message).
fn rpc_agent_error(error: &RpcError) -> AgentError {
    let text = error.to_json().to_string();
    AgentError {
        failure: AgentFailure::Rpc,
        category: classify_agent_error(&text),
        code: Some(error.code),
        message: redact(&match &error.data {
            Some(data) => format!("{} ({data})", error.message),
            None => error.message.clone(),
        })
        .into_owned(),
    }
}

fn parse_initialize(result: &Value) -> Result<AgentInfo, AgentError> {
    let missing = || {
        protocol_error(format!(
            "initialize answered without a protocolVersion: {result}"
        ))
    };
    let response = match serde_json::from_value::<acp::InitializeResponse>(result.clone()) {
        Ok(response) => response,
        // A version beyond the schema's range is still a version the host does not speak.
        Err(_) => match result.get("protocolVersion").and_then(Value::as_u64) {
            Some(version) => return Err(version_mismatch(version)),
            None => return Err(missing()),
        },
    };
    let version = u64::from(response.protocol_version.as_u16());
    if version != PROTOCOL_VERSION {
        return Err(version_mismatch(version));
    }
    // `agentInfo` is read as JSON: the schema needs a version beside the name, and
    // an agent that sends its name alone is still named.
    let agent = result.get("agentInfo");
    let name = agent.and_then(|a| a.get("name")).and_then(Value::as_str);
    let agent_version = agent.and_then(|a| a.get("version")).and_then(Value::as_str);
    Ok(AgentInfo {
        protocol_version: u32::try_from(version).unwrap_or(u32::MAX),
        load_session: response.agent_capabilities.load_session,
        name: match (name, agent_version) {
            (Some(n), Some(v)) => Some(format!("{n} {v}")),
            (Some(n), None) => Some(n.to_owned()),
            _ => None,
        },
    })
}

fn version_mismatch(version: u64) -> AgentError {
    AgentError {
        failure: AgentFailure::Protocol,
        category: ErrorCategory::InvalidConfig,
        code: None,
        message: format!(
            "the agent speaks ACP version {version}; the host speaks {PROTOCOL_VERSION}"
        ),
    }
}

fn parse_stop_reason(result: &Value) -> Result<StopReason, AgentError> {
    let unknown = || {
        let reason = result.get("stopReason").unwrap_or(&Value::Null);
        protocol_error(format!("unknown stopReason {reason}"))
    };
    let response =
        serde_json::from_value::<acp::PromptResponse>(result.clone()).map_err(|_| unknown())?;
    Ok(match response.stop_reason {
        acp::StopReason::EndTurn => StopReason::EndTurn,
        acp::StopReason::MaxTokens => StopReason::MaxTokens,
        acp::StopReason::MaxTurnRequests => StopReason::MaxTurnRequests,
        acp::StopReason::Refusal => StopReason::Refusal,
        acp::StopReason::Cancelled => StopReason::Cancelled,
        // A reason newer than the schema the host was built with.
        _ => return Err(unknown()),
    })
}

#[async_trait]
impl AgentSession for AcpSession {
    async fn initialize(&self) -> Result<AgentInfo, AgentError> {
        let live = self.start().await?;
        let info = live.info.clone();
        *self.live.lock().await = Some(live);
        Ok(info)
    }

    async fn new_session(&self, cwd: &Path) -> Result<SessionId, AgentError> {
        let root = self.workspace(cwd)?;
        let (connection, info) = self.connection().await?;
        let meta = self.session_meta(&info);
        let instructed = meta.is_some();
        let params = acp::NewSessionRequest::new(root.agent_path()).meta(meta);
        let result = match self
            .call(&connection, "session/new", to_params(&params)?)
            .await
        {
            Ok(result) => result,
            Err(e) => return Err(self.explained(Self::setup_error(e)).await),
        };
        let id = serde_json::from_value::<acp::NewSessionResponse>(result.clone())
            .map_err(|_| {
                protocol_error(format!(
                    "session/new answered without a sessionId: {result}"
                ))
            })?
            .session_id;
        let id = SessionId(id.0.to_string());
        self.select_model(&connection, &id, &result).await?;
        if instructed {
            self.mark_instructed(&id);
        }
        self.handler.set_root(&id, root);
        Ok(id)
    }

    async fn load_session(&self, id: &SessionId, cwd: &Path) -> Result<(), AgentError> {
        let (connection, info) = self.connection().await?;
        if !info.load_session {
            return Err(agent_error(
                AgentFailure::Protocol,
                ErrorCategory::InvalidConfig,
                "the agent does not support session/load",
            ));
        }
        let root = self.workspace(cwd)?;
        self.handler.set_root(id, root.clone());
        let params = acp::LoadSessionRequest::new(acp_session(id), root.agent_path())
            .meta(self.session_meta(&info));
        let result = self
            .call(&connection, "session/load", to_params(&params)?)
            .await
            .map_err(Self::setup_error)?;
        self.select_model(&connection, id, &result).await?;
        // The loaded session has the addition: from `_meta`, or in its history (its
        // first prompt carried it).
        self.mark_instructed(id);
        Ok(())
    }

    async fn prompt(&self, id: &SessionId, text: &str) -> Result<StopReason, AgentError> {
        self.cancelled.store(false, Ordering::SeqCst);
        // The user message is recorded once, however often the prompt is retried.
        self.handler.emit(SessionEvent::Update {
            update: redact_value(json!({
                "sessionUpdate": "user_message_chunk",
                "content": { "type": "text", "text": text },
            })),
        });
        let text = &self.prompt_text(id, text);
        let outcome = retry_notify(
            &self.options.prompt_retry,
            || self.prompt_attempt(id, text),
            |retry| {
                let (error, category) = retry.error.map_or_else(
                    || ("the attempt timed out".to_owned(), ErrorCategory::Transient),
                    |e| (e.error.message.clone(), e.error.category),
                );
                tracing::info!(attempt = retry.attempt, delay = ?retry.delay, %category, "retrying a prompt");
                self.handler.emit(SessionEvent::PromptRetry {
                    attempt: retry.attempt,
                    delay: retry.delay,
                    error: redact(&error).into_owned(),
                    category,
                    max_retries: Some(self.options.prompt_retry.max_attempts.saturating_sub(1)),
                });
            },
        )
        .await;
        match outcome {
            Ok(reason) => {
                self.handler.emit(SessionEvent::Stopped { reason });
                Ok(reason)
            }
            Err(RetryError::Failed(e)) => Err(self.explained(e.error).await),
            Err(RetryError::TimedOut { attempts, timeout }) => Err(AgentError {
                failure: AgentFailure::Timeout,
                category: ErrorCategory::Transient,
                code: None,
                message: format!(
                    "the prompt did not finish within {timeout:?} after {attempts} attempt(s)"
                ),
            }),
        }
    }

    async fn cancel(&self, id: &SessionId) -> Result<(), AgentError> {
        self.cancelled.store(true, Ordering::SeqCst);
        let (connection, _) = self.connection().await?;
        let params = to_params(&acp::CancelNotification::new(acp_session(id)))?;
        connection
            .notify("session/cancel", params)
            .await
            .map_err(Self::setup_error)
    }

    fn events(&self) -> BoxStream<'static, TimedEvent> {
        let receiver = self.events.subscribe();
        futures::stream::unfold(receiver, |mut receiver| async move {
            loop {
                match receiver.recv().await {
                    Ok(event) => return Some((event, receiver)),
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::warn!(missed, "a slow event subscriber missed events");
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        })
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The outgoing requests as they go on the wire.
    #[test]
    fn requests_on_the_wire() {
        let session = SessionId("s1".to_owned());
        assert_eq!(
            to_params(&initialize_request()).unwrap(),
            json!({
                "protocolVersion": 1,
                // `auth` is the schema's: the client performs no terminal login.
                "clientCapabilities": {
                    "fs": { "readTextFile": true, "writeTextFile": true },
                    "terminal": false,
                    "auth": { "terminal": false },
                },
                "clientInfo": { "name": "sam-agent", "title": "SAM VM agent", "version": env!("CARGO_PKG_VERSION") },
            })
        );
        assert_eq!(
            to_params(&acp::AuthenticateRequest::new("codex-api-key")).unwrap(),
            json!({ "methodId": "codex-api-key" })
        );
        assert_eq!(
            to_params(&acp::NewSessionRequest::new("/ws")).unwrap(),
            json!({ "cwd": "/ws", "mcpServers": [] })
        );
        let mut meta = acp::Meta::new();
        meta.insert("systemPrompt".to_owned(), json!({ "append": "be brief" }));
        assert_eq!(
            to_params(&acp::LoadSessionRequest::new(acp_session(&session), "/ws").meta(meta))
                .unwrap(),
            json!({ "sessionId": "s1", "cwd": "/ws", "mcpServers": [], "_meta": { "systemPrompt": { "append": "be brief" } } })
        );
        assert_eq!(
            to_params(&acp::PromptRequest::new(
                acp_session(&session),
                vec![acp::ContentBlock::Text(acp::TextContent::new("hi"))],
            ))
            .unwrap(),
            json!({ "sessionId": "s1", "prompt": [{ "type": "text", "text": "hi" }] })
        );
        assert_eq!(
            to_params(&acp::CancelNotification::new(acp_session(&session))).unwrap(),
            json!({ "sessionId": "s1" })
        );
    }

    /// Incoming results read through the schema tolerate what they tolerated as JSON.
    #[test]
    fn results_read_as_before() {
        let info = parse_initialize(&json!({
            "protocolVersion": 1,
            "agentCapabilities": { "loadSession": true, "promptCapabilities": "garbled" },
            "agentInfo": { "name": "fake" },
        }))
        .unwrap();
        assert!(info.load_session);
        assert_eq!(info.name.as_deref(), Some("fake"));
        for (result, expected) in [
            (
                json!({}),
                "initialize answered without a protocolVersion: {}",
            ),
            (
                json!({ "protocolVersion": 2 }),
                "the agent speaks ACP version 2; the host speaks 1",
            ),
            (
                json!({ "protocolVersion": 100_000 }),
                "the agent speaks ACP version 100000; the host speaks 1",
            ),
        ] {
            assert_eq!(parse_initialize(&result).unwrap_err().message, expected);
        }
        assert_eq!(
            parse_stop_reason(&json!({ "stopReason": "refusal", "usage": {} })).unwrap(),
            StopReason::Refusal
        );
        assert_eq!(
            parse_stop_reason(&json!({ "stopReason": "bored" }))
                .unwrap_err()
                .message,
            "unknown stopReason \"bored\""
        );
        assert_eq!(
            parse_stop_reason(&json!({})).unwrap_err().message,
            "unknown stopReason null"
        );
    }
}
