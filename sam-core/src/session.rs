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
    /// The agent asked to run a tool (`session/request_permission`), and the host
    /// answered by the session's [`PermissionMode`].
    Permission {
        /// The tool call the agent asked about, as it sent it (redacted).
        tool_call: serde_json::Value,
        /// The tool's kind (`edit`, `execute`, …), when known.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tool_kind: Option<String>,
        /// Whether the answer allows it.
        allowed: bool,
        /// The option chosen (`optionId`); `None` when none fitted and the request
        /// was answered `cancelled`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        option: Option<String>,
    },
}

/// The largest text one coalesced chunk carries ([`coalesce_chunks`]), in bytes: a
/// long message is kept as several entries rather than one unbounded one.
pub const MAX_COALESCED_TEXT: usize = 64 * 1024;

impl SessionEvent {
    /// The event's name: its `type`, or for an update its `sessionUpdate` kind
    /// (`agent_message_chunk`, `tool_call`, …).
    pub fn name(&self) -> &str {
        match self {
            Self::Update { update } => update
                .get("sessionUpdate")
                .and_then(serde_json::Value::as_str)
                .unwrap_or("update"),
            Self::PromptRetry { .. } => "prompt_retry",
            Self::Crashed { .. } => "crashed",
            Self::Restarted { .. } => "restarted",
            Self::Stopped { .. } => "stopped",
            Self::Permission { .. } => "permission",
        }
    }

    /// The text of a message or thought chunk: its kind (`agent_message_chunk`,
    /// `agent_thought_chunk`, `user_message_chunk`) and text, when the update is one
    /// whose content is text.
    pub fn chunk_text(&self) -> Option<(&str, &str)> {
        let Self::Update { update } = self else {
            return None;
        };
        let kind = update.get("sessionUpdate")?.as_str()?;
        if !matches!(
            kind,
            "agent_message_chunk" | "agent_thought_chunk" | "user_message_chunk"
        ) {
            return None;
        }
        let content = update.get("content")?;
        if content.get("type")?.as_str()? != "text" {
            return None;
        }
        Some((kind, content.get("text")?.as_str()?))
    }

    /// Appends `next` to this chunk when both are text chunks of one kind that
    /// differ only in their text, and the joined text stays within
    /// [`MAX_COALESCED_TEXT`]; `false` (and no change) otherwise.
    fn absorb(&mut self, next: &Self) -> bool {
        let (Some((kind, text)), Some((next_kind, next_text))) =
            (self.chunk_text(), next.chunk_text())
        else {
            return false;
        };
        if kind != next_kind || text.len() + next_text.len() > MAX_COALESCED_TEXT {
            return false;
        }
        let (Self::Update { update }, Self::Update { update: other }) = (&*self, next) else {
            return false;
        };
        // Only the text may differ: a message id, annotations or metadata that
        // differ mark another message.
        let without_text = |u: &serde_json::Value| {
            let mut u = u.clone();
            if let Some(content) = u
                .get_mut("content")
                .and_then(serde_json::Value::as_object_mut)
            {
                content.remove("text");
            }
            u
        };
        if without_text(update) != without_text(other) {
            return false;
        }
        let joined = format!("{text}{next_text}");
        if let Self::Update { update } = self
            && let Some(content) = update
                .get_mut("content")
                .and_then(serde_json::Value::as_object_mut)
        {
            content.insert("text".to_owned(), serde_json::Value::String(joined));
        }
        true
    }
}

/// Joins runs of adjacent message, thought and user-message chunks into one chunk
/// each (the text concatenated, nothing else changed), so a transcript keeps
/// messages rather than one entry per token. Everything else, and the order, is
/// kept; a run is split where the joined text would pass [`MAX_COALESCED_TEXT`].
pub fn coalesce_chunks(events: impl IntoIterator<Item = SessionEvent>) -> Vec<SessionEvent> {
    let mut out: Vec<SessionEvent> = Vec::new();
    for event in events {
        if let Some(last) = out.last_mut()
            && last.absorb(&event)
        {
            continue;
        }
        out.push(event);
    }
    out
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

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    fn chunk(kind: &str, text: &str) -> SessionEvent {
        SessionEvent::Update {
            update: json!({"sessionUpdate": kind, "content": {"type": "text", "text": text}}),
        }
    }

    fn other(n: u32) -> SessionEvent {
        SessionEvent::Update {
            update: json!({"sessionUpdate": "tool_call", "toolCallId": format!("t{n}"), "title": "Read"}),
        }
    }

    /// The text a list of events says, per kind, with a separator wherever something
    /// else comes between: what a reader shows, before and after coalescing.
    fn spoken(events: &[SessionEvent]) -> Vec<String> {
        events
            .iter()
            .map(|e| match e.chunk_text() {
                Some((kind, text)) => format!("{kind}:{text}"),
                None => format!("<{}>", e.name()),
            })
            .fold(Vec::new(), |mut acc: Vec<String>, item| {
                let joined = acc.last().and_then(|last| {
                    let (lk, lt) = last.split_once(':')?;
                    let (k, t) = item.split_once(':')?;
                    (lk == k && !lk.starts_with('<')).then(|| format!("{lk}:{lt}{t}"))
                });
                match joined {
                    Some(j) => *acc.last_mut().expect("a last item") = j,
                    None => acc.push(item),
                }
                acc
            })
    }

    fn event() -> impl Strategy<Value = SessionEvent> {
        prop_oneof![
            (
                prop_oneof![
                    Just("agent_message_chunk"),
                    Just("agent_thought_chunk"),
                    Just("user_message_chunk")
                ],
                "[a-z…é ]{0,8}"
            )
                .prop_map(|(k, t)| chunk(k, &t)),
            (0u32..4).prop_map(other),
            Just(SessionEvent::Stopped {
                reason: StopReason::EndTurn
            }),
        ]
    }

    proptest! {
        /// Coalescing keeps every word in order and every other event in place, and
        /// leaves no two adjacent chunks it could have joined.
        #[test]
        fn coalescing_keeps_what_was_said(events in proptest::collection::vec(event(), 0..40)) {
            let joined = coalesce_chunks(events.clone());
            prop_assert_eq!(spoken(&joined), spoken(&events));
            let others = |list: &[SessionEvent]| list.iter().filter(|e| e.chunk_text().is_none()).cloned().collect::<Vec<_>>();
            prop_assert_eq!(others(&joined), others(&events));
            for pair in joined.windows(2) {
                let (a, b) = (pair[0].chunk_text(), pair[1].chunk_text());
                if let (Some((ka, _)), Some((kb, _))) = (a, b) {
                    prop_assert_ne!(ka, kb);
                }
            }
            prop_assert_eq!(coalesce_chunks(joined.clone()), joined);
        }
    }

    #[test]
    fn chunks_that_differ_beyond_their_text_stay_apart() {
        let with_id = |id: &str, text: &str| SessionEvent::Update {
            update: json!({"sessionUpdate": "agent_message_chunk", "messageId": id, "content": {"type": "text", "text": text}}),
        };
        let image = SessionEvent::Update {
            update: json!({"sessionUpdate": "agent_message_chunk", "content": {"type": "image", "data": "AA=="}}),
        };
        let events = vec![
            with_id("m1", "Hel"),
            with_id("m1", "lo"),
            with_id("m2", "Bye"),
            image.clone(),
            chunk("agent_message_chunk", "x"),
        ];
        let joined = coalesce_chunks(events);
        assert_eq!(
            joined,
            vec![
                with_id("m1", "Hello"),
                with_id("m2", "Bye"),
                image,
                chunk("agent_message_chunk", "x")
            ]
        );
    }

    #[test]
    fn a_long_message_is_kept_in_bounded_pieces() {
        let piece = "a".repeat(MAX_COALESCED_TEXT / 2 + 1);
        let joined = coalesce_chunks((0..3).map(|_| chunk("agent_message_chunk", &piece)));
        assert_eq!(joined.len(), 3, "no piece grows past the bound");
        let small = coalesce_chunks((0..100).map(|_| chunk("agent_message_chunk", "ab")));
        assert_eq!(small, vec![chunk("agent_message_chunk", &"ab".repeat(100))]);
    }
}
