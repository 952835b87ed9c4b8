//! The [`AgentSession`] trait: one coding agent spoken to over ACP.

use std::fmt::{self, Debug};
use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};

use crate::error::{Classify, ErrorCategory};
use crate::model::TaskStatus;

/// The ACP session id the agent assigned.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SessionId(pub String);

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// How the host answers `session/request_permission` (the task's permission mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PermissionMode {
    /// Allow every tool call (the agent runs unattended in a disposable workspace).
    #[default]
    AllowAll,
    /// Allow tool calls that only look (`read`, `search`, `think`, `fetch`); reject
    /// the rest.
    ReadOnly,
    /// Reject every tool call.
    RejectAll,
}

impl PermissionMode {
    /// Whether a tool call of ACP `kind` (`None` when the agent did not say) is allowed.
    pub fn allows(self, kind: Option<&str>) -> bool {
        match self {
            Self::AllowAll => true,
            Self::ReadOnly => matches!(kind, Some("read" | "search" | "think" | "fetch")),
            Self::RejectAll => false,
        }
    }
}

/// What the agent said about itself in `initialize`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentInfo {
    /// The ACP protocol version it speaks.
    pub protocol_version: u32,
    /// Whether it supports `session/load` (crash recovery depends on it).
    pub load_session: bool,
    /// Its name and version, when it reports them.
    pub name: Option<String>,
}

/// Why the agent ended a prompt turn (ACP `stopReason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// The turn ended normally.
    EndTurn,
    /// The model hit its token limit.
    MaxTokens,
    /// The agent hit its limit of model requests in one turn.
    MaxTurnRequests,
    /// The model refused.
    Refusal,
    /// The turn was cancelled.
    Cancelled,
}

impl StopReason {
    /// The task status this stop reason leads to: `end_turn` completes, `cancelled`
    /// cancels, the rest fail with that reason.
    pub const fn outcome(self) -> TaskStatus {
        match self {
            Self::EndTurn => TaskStatus::Completed,
            Self::Cancelled => TaskStatus::Cancelled,
            Self::MaxTokens | Self::MaxTurnRequests | Self::Refusal => TaskStatus::Failed,
        }
    }
}

/// How an agent call failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentFailure {
    /// The agent process could not be started.
    Spawn,
    /// The agent answered with a JSON-RPC error.
    Rpc,
    /// The agent process died or its pipe closed.
    Crash,
    /// The agent sent something that is not valid ACP.
    Protocol,
    /// The agent did not answer in time.
    Timeout,
    /// The agent cannot run with the session's settings (a model it does not offer).
    Unsupported,
}

/// A failed [`AgentSession`] call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("agent {failure:?} error ({category}): {message}")]
pub struct AgentError {
    /// How it failed.
    pub failure: AgentFailure,
    /// Its category (from [`crate::classify_agent_error`] for relayed errors).
    pub category: ErrorCategory,
    /// The JSON-RPC error code, for `Rpc` failures.
    pub code: Option<i64>,
    /// The message, redacted.
    pub message: String,
}

impl Classify for AgentError {
    fn category(&self) -> ErrorCategory {
        self.category
    }
}

/// Something that happened in a session, streamed to the event sink.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SessionEvent {
    /// An ACP `session/update` notification, kept as the agent sent it (unknown
    /// `sessionUpdate` kinds included).
    Update {
        /// The notification's `params.update`.
        update: serde_json::Value,
    },
    /// A prompt is being retried after a retryable failure.
    PromptRetry {
        /// Attempts made so far.
        attempt: u32,
        /// The wait before the next attempt.
        delay: Duration,
        /// The failure, redacted.
        error: String,
        /// Its category.
        category: ErrorCategory,
        /// How many retries the policy allows in all (attempts after the first);
        /// absent in events recorded before it was sent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_retries: Option<u32>,
    },
    /// The agent process crashed.
    Crashed {
        /// What happened, redacted.
        reason: String,
        /// Whether the session will be resumed with `session/load`.
        resumable: bool,
    },
    /// The agent was restarted and its session loaded.
    Restarted {
        /// Restarts so far.
        restarts: u32,
    },
    /// The prompt turn ended.
    Stopped {
        /// Why.
        reason: StopReason,
    },
}

/// A timestamped [`SessionEvent`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimedEvent {
    /// When it happened.
    pub at: DateTime<Utc>,
    /// What happened.
    pub event: SessionEvent,
}

/// One coding agent, spoken to over ACP.
///
/// # Contract
/// - `initialize` comes first and is called once; it speaks protocol version 1 and
///   advertises the client's `fs` capabilities.
/// - `new_session` and `load_session` take the workspace root as the session's
///   working directory; file requests from the agent are served only inside it.
/// - `prompt` returns the turn's [`StopReason`]; errors before the agent accepted
///   the prompt carry the category of [`crate::classify_agent_error`]; a crash is an
///   [`AgentFailure::Crash`], never a hang.
/// - `cancel` may be called while `prompt` runs, and makes it return `cancelled`.
/// - `events` yields every event in order; each call returns a new subscription
///   that sees events from then on.
/// - Credentials given to the agent never appear in errors or events.
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait AgentSession: Send + Sync + Debug {
    /// Performs the ACP handshake.
    ///
    /// # Errors
    /// Spawn, protocol or RPC failures.
    async fn initialize(&self) -> Result<AgentInfo, AgentError>;

    /// Starts a new session rooted at `cwd`.
    ///
    /// # Errors
    /// RPC failures (`auth_error` for a missing key).
    async fn new_session(&self, cwd: &Path) -> Result<SessionId, AgentError>;

    /// Resumes an earlier session, when the agent supports `session/load`.
    ///
    /// # Errors
    /// RPC failures, or `invalid_config` when the agent cannot load sessions.
    async fn load_session(&self, id: &SessionId, cwd: &Path) -> Result<(), AgentError>;

    /// Sends a prompt and waits for the end of the turn.
    ///
    /// # Errors
    /// RPC failures, crashes, timeouts.
    async fn prompt(&self, id: &SessionId, text: &str) -> Result<StopReason, AgentError>;

    /// Cancels the running turn.
    ///
    /// # Errors
    /// When the cancel notification cannot be sent.
    async fn cancel(&self, id: &SessionId) -> Result<(), AgentError>;

    /// Subscribes to the session's events.
    fn events(&self) -> BoxStream<'static, TimedEvent>;
}
