//! The ACP session host: [`AcpSession`] speaks the Agent Client Protocol to one
//! coding agent and implements [`AgentSession`].
//!
//! # Why a JSON-RPC loop of our own
//! ACP is newline-delimited JSON-RPC 2.0 on stdio, and the host needs eight message
//! shapes (`initialize`, `session/new`, `session/load`, `session/prompt`,
//! `session/cancel`, `session/update`, `session/request_permission`, the two `fs/*`
//! requests). This module implements them with `serde_json` in a small loop
//! ([`rpc`](self)) instead of depending on `agent-client-protocol-schema` (1.15) or
//! the SDK:
//! - the schema crate's `SessionUpdate` is a closed, internally tagged enum without a
//!   catch-all variant, so an update kind newer than the pinned version fails to
//!   deserialize, while the host must pass unknown kinds through untouched; updates
//!   are therefore kept as raw JSON ([`SessionEvent::Update`]);
//! - the schema crate turns on `serde_json`'s `preserve_order` feature, which feature
//!   unification would switch on for every crate of the workspace, and brings
//!   `anyhow`, `derive_more`, `serde_with` and `strum` along;
//! - the SDK's connection owns the process and its retry-free request flow, while
//!   crash recovery here must replace the process under a live session.
//!
//! The shapes are checked against the specification's own transcript
//! (`shared/cases/acp-transcript.jsonl`) in the tests.
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

mod client;
pub(crate) mod endpoint;
mod fs;
mod launch;
mod restart;
mod rpc;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

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

pub use client::PermissionMode;
pub use launch::{AgentCommand, AgentIo, AgentLauncher, KNOWN_AGENTS};
pub use restart::CrashPolicy;

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
    /// The longest `initialize`, `session/new` and `session/load` may take.
    pub request_timeout: Duration,
}

impl Default for AcpOptions {
    /// Allow all tool calls, [`RetryPolicy::prompt`], [`CrashPolicy::default`], 2 min
    /// per setup request.
    fn default() -> Self {
        Self {
            permission: PermissionMode::AllowAll,
            prompt_retry: RetryPolicy::prompt(),
            crash: CrashPolicy::default(),
            request_timeout: Duration::from_secs(120),
        }
    }
}

/// One coding agent spoken to over ACP; see the [module docs](self).
#[derive(Debug)]
pub struct AcpSession {
    launcher: Arc<dyn AgentLauncher>,
    options: AcpOptions,
    handler: Arc<ClientHandler>,
    events: broadcast::Sender<TimedEvent>,
    live: Mutex<Option<Live>>,
    restarts: StdMutex<RestartBudget>,
    cancelled: AtomicBool,
}

#[derive(Debug)]
struct Live {
    connection: Arc<Connection>,
    info: AgentInfo,
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
            handler,
            events,
            live: Mutex::new(None),
            restarts: StdMutex::new(RestartBudget::new(options.crash)),
            cancelled: AtomicBool::new(false),
        }
    }

    /// What the agent said about itself, once initialized.
    pub async fn agent_info(&self) -> Option<AgentInfo> {
        self.live.lock().await.as_ref().map(|l| l.info.clone())
    }

    /// Starts the agent and performs the handshake.
    async fn start(&self) -> Result<Live, AgentError> {
        let io = self.launcher.launch().await?;
        let connection = Arc::new(Connection::start(io, Arc::clone(&self.handler)));
        let params = json!({
            "protocolVersion": PROTOCOL_VERSION,
            "clientCapabilities": { "fs": { "readTextFile": true, "writeTextFile": true }, "terminal": false },
            "clientInfo": { "name": "sam-agent", "title": "SAM VM agent", "version": env!("CARGO_PKG_VERSION") },
        });
        let result = self
            .call(&connection, "initialize", params)
            .await
            .map_err(Self::setup_error)?;
        let info = parse_initialize(&result)?;
        Ok(Live { connection, info })
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
            let seen = self.handler.updates();
            let params = json!({ "sessionId": id.0, "prompt": [{ "type": "text", "text": text }] });
            let exit = match connection.request("session/prompt", params).await {
                Ok(result) => return parse_stop_reason(&result).map_err(fatal),
                Err(CallError::Rpc(e)) if is_agent_crash(&e.message) => {
                    // The agent reports its own transport as gone: treat it as dead.
                    Exit {
                        reason: redact(&format!("agent reported: {}", e.message)).into_owned(),
                        uptime: connection.uptime(),
                    }
                }
                Err(CallError::Rpc(e)) => {
                    let accepted = self.handler.updates() > seen;
                    return Err(AttemptError {
                        error: rpc_agent_error(&e),
                        retryable: !accepted,
                    });
                }
                Err(CallError::Closed(exit)) => exit,
                Err(CallError::Protocol(message)) => return Err(fatal(protocol_error(message))),
            };
            drop(connection);
            self.recover(id, &info, exit).await.map_err(fatal)?;
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
            let loaded = self
                .call(
                    &live.connection,
                    "session/load",
                    json!({ "sessionId": id.0, "cwd": cwd, "mcpServers": [] }),
                )
                .await;
            self.handler.set_muted(false);
            loaded.map_err(Self::setup_error)?;
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
    let version = result
        .get("protocolVersion")
        .and_then(Value::as_u64)
        .ok_or_else(|| {
            protocol_error(format!(
                "initialize answered without a protocolVersion: {result}"
            ))
        })?;
    if version != PROTOCOL_VERSION {
        return Err(AgentError {
            failure: AgentFailure::Protocol,
            category: ErrorCategory::InvalidConfig,
            code: None,
            message: format!(
                "the agent speaks ACP version {version}; the host speaks {PROTOCOL_VERSION}"
            ),
        });
    }
    let agent = result.get("agentInfo");
    let name = agent.and_then(|a| a.get("name")).and_then(Value::as_str);
    let agent_version = agent.and_then(|a| a.get("version")).and_then(Value::as_str);
    Ok(AgentInfo {
        protocol_version: u32::try_from(version).unwrap_or(u32::MAX),
        load_session: result
            .pointer("/agentCapabilities/loadSession")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        name: match (name, agent_version) {
            (Some(n), Some(v)) => Some(format!("{n} {v}")),
            (Some(n), None) => Some(n.to_owned()),
            _ => None,
        },
    })
}

fn parse_stop_reason(result: &Value) -> Result<StopReason, AgentError> {
    let reason = result.get("stopReason").cloned().unwrap_or(Value::Null);
    serde_json::from_value(reason.clone())
        .map_err(|_| protocol_error(format!("unknown stopReason {reason}")))
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
        let root = workspace(cwd)?;
        let (connection, _) = self.connection().await?;
        let result = self
            .call(
                &connection,
                "session/new",
                json!({ "cwd": root.path(), "mcpServers": [] }),
            )
            .await
            .map_err(Self::setup_error)?;
        let id = result
            .get("sessionId")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                protocol_error(format!(
                    "session/new answered without a sessionId: {result}"
                ))
            })?;
        let id = SessionId(id.to_owned());
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
        let root = workspace(cwd)?;
        self.handler.set_root(id, root.clone());
        self.call(
            &connection,
            "session/load",
            json!({ "sessionId": id.0, "cwd": root.path(), "mcpServers": [] }),
        )
        .await
        .map_err(Self::setup_error)?;
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
                });
            },
        )
        .await;
        match outcome {
            Ok(reason) => {
                self.handler.emit(SessionEvent::Stopped { reason });
                Ok(reason)
            }
            Err(RetryError::Failed(e)) => Err(e.error),
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
        connection
            .notify("session/cancel", json!({ "sessionId": id.0 }))
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
