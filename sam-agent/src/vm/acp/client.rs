//! The client side of ACP: what the host answers when the agent asks something
//! (`session/request_permission`, `fs/read_text_file`, `fs/write_text_file`) and what
//! it does with `session/update` notifications.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use chrono::Utc;
use sam_core::{SessionEvent, SessionId, TimedEvent, redact};

use agent_client_protocol_schema::v1 as acp;
use serde_json::{Value, json};
use tokio::sync::broadcast;
use tokio::time::Instant;

use super::fs::{PathDenied, WorkspaceRoot, slice_lines};
use super::rpc::RpcError;
pub use sam_core::PermissionMode;

/// JSON-RPC "invalid params".
const INVALID_PARAMS: i64 = -32602;
/// JSON-RPC "method not found".
const METHOD_NOT_FOUND: i64 = -32601;
/// JSON-RPC "internal error".
const INTERNAL_ERROR: i64 = -32603;
/// ACP "resource not found".
const RESOURCE_NOT_FOUND: i64 = -32002;

/// Answers the agent's requests and turns its notifications into events.
#[derive(Debug)]
pub(crate) struct ClientHandler {
    permission: PermissionMode,
    events: broadcast::Sender<TimedEvent>,
    roots: Mutex<HashMap<String, WorkspaceRoot>>,
    tool_kinds: Mutex<HashMap<String, String>>,
    /// When the agent last sent an update or a request: its sign of life.
    last_activity: Mutex<Option<Instant>>,
    /// Updates and requests that carry model output for a prompt: acceptance.
    output: AtomicU64,
    muted: AtomicBool,
}

/// The `sessionUpdate` kinds that carry model output: once one of them arrives for a
/// prompt, the model has answered it and the prompt was accepted. Everything else is
/// bookkeeping that real adapters send before the model says anything (Claude's,
/// Gemini's and OpenCode's adapters send `available_commands_update` as soon as a
/// prompt starts; `current_mode_update`, usage and session-info updates likewise).
pub const MODEL_OUTPUT_UPDATES: &[&str] = &[
    "agent_message_chunk",
    "agent_thought_chunk",
    "tool_call",
    "tool_call_update",
    "plan",
];

/// Whether an update of `kind` carries model output ([`MODEL_OUTPUT_UPDATES`]).
pub fn is_model_output(kind: &str) -> bool {
    MODEL_OUTPUT_UPDATES.contains(&kind)
}

impl ClientHandler {
    pub(crate) fn new(permission: PermissionMode, events: broadcast::Sender<TimedEvent>) -> Self {
        Self {
            permission,
            events,
            roots: Mutex::default(),
            tool_kinds: Mutex::default(),
            last_activity: Mutex::new(None),
            output: AtomicU64::new(0),
            muted: AtomicBool::new(false),
        }
    }

    /// Emits an event (redacted by the caller where it carries agent text).
    pub(crate) fn emit(&self, event: SessionEvent) {
        // No subscriber is fine: events are also written to the log by the embedder.
        let _ = self.events.send(TimedEvent {
            at: Utc::now(),
            event,
        });
    }

    /// Confines the session's file requests to `root`.
    pub(crate) fn set_root(&self, session: &SessionId, root: WorkspaceRoot) {
        if let Ok(mut roots) = self.roots.lock() {
            roots.insert(session.0.clone(), root);
        }
    }

    /// The workspace of a session.
    pub(crate) fn root(&self, session: &SessionId) -> Option<PathBuf> {
        self.roots
            .lock()
            .ok()
            .and_then(|r| r.get(&session.0).map(|w| w.agent_path().to_path_buf()))
    }

    /// When the agent last sent an update or a request of its own.
    pub(crate) fn last_activity(&self) -> Option<Instant> {
        *self.last_activity.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn active(&self) {
        *self.last_activity.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
    }

    /// Model output seen so far ([`is_model_output`] updates, and permission and file
    /// requests, which only a model's tool call makes): a change during a prompt means
    /// the agent accepted it.
    pub(crate) fn output(&self) -> u64 {
        self.output.load(Ordering::SeqCst)
    }

    /// While muted (replaying history during crash recovery), updates are not emitted.
    pub(crate) fn set_muted(&self, muted: bool) {
        self.muted.store(muted, Ordering::SeqCst);
    }

    /// Handles a notification from the agent.
    pub(crate) fn on_notification(&self, method: &str, params: Value) {
        if method != "session/update" {
            tracing::debug!(method, "ignoring an agent notification we do not know");
            return;
        }
        let Some(update) = params.get("update").cloned() else {
            tracing::warn!("session/update without an update");
            return;
        };
        if let (Some(id), Some(kind)) = (
            update.get("toolCallId").and_then(Value::as_str),
            update.get("kind").and_then(Value::as_str),
        ) && let Ok(mut kinds) = self.tool_kinds.lock()
        {
            kinds.insert(id.to_owned(), kind.to_owned());
        }
        if self.muted.load(Ordering::SeqCst) {
            return;
        }
        self.active();
        if update
            .get("sessionUpdate")
            .and_then(Value::as_str)
            .is_some_and(is_model_output)
        {
            self.output.fetch_add(1, Ordering::SeqCst);
        }
        // Unknown `sessionUpdate` kinds pass through as they are.
        self.emit(SessionEvent::Update {
            update: redact_value(update),
        });
    }

    /// Handles a request from the agent.
    pub(crate) async fn on_request(&self, method: &str, params: Value) -> Result<Value, RpcError> {
        self.active();
        self.output.fetch_add(1, Ordering::SeqCst);
        match method {
            "session/request_permission" => Ok(self.permission(&params)),
            "fs/read_text_file" => self.read_text_file(&params).await,
            "fs/write_text_file" => self.write_text_file(&params).await,
            _ => Err(RpcError::new(
                METHOD_NOT_FOUND,
                format!("the client does not offer {method}"),
            )),
        }
    }

    fn permission(&self, params: &Value) -> Value {
        let tool = params.get("toolCall").unwrap_or(&Value::Null);
        let kind = tool
            .get("kind")
            .and_then(Value::as_str)
            .map(ToOwned::to_owned)
            .or_else(|| {
                let id = tool.get("toolCallId").and_then(Value::as_str)?;
                self.tool_kinds.lock().ok()?.get(id).cloned()
            });
        let allow = self.permission.allows(kind.as_deref());
        let preferred: &[&str] = if allow {
            &["allow_once", "allow_always"]
        } else {
            &["reject_once", "reject_always"]
        };
        let options = params
            .get("options")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let chosen = preferred.iter().find_map(|want| {
            options
                .iter()
                .find(|o| o.get("kind").and_then(Value::as_str) == Some(want))
                .and_then(|o| o.get("optionId").cloned())
        });
        tracing::info!(?kind, allow, ?chosen, "answered a permission request");
        if !self.muted.load(Ordering::SeqCst) {
            self.emit(SessionEvent::Permission {
                tool_call: redact_value(tool.clone()),
                tool_kind: kind.clone(),
                allowed: allow && chosen.is_some(),
                option: chosen.as_ref().and_then(Value::as_str).map(str::to_owned),
            });
        }
        match chosen {
            Some(option) => json!({ "outcome": { "outcome": "selected", "optionId": option } }),
            None => json!({ "outcome": { "outcome": "cancelled" } }),
        }
    }

    fn session_root(&self, params: &Value) -> Result<WorkspaceRoot, RpcError> {
        let session = params
            .get("sessionId")
            .and_then(Value::as_str)
            .ok_or_else(|| RpcError::new(INVALID_PARAMS, "sessionId is missing"))?;
        self.roots
            .lock()
            .ok()
            .and_then(|r| r.get(session).cloned())
            .ok_or_else(|| RpcError::new(INVALID_PARAMS, format!("unknown session {session}")))
    }

    async fn read_text_file(&self, params: &Value) -> Result<Value, RpcError> {
        let root = self.session_root(params)?;
        let requested = str_param(params, "path")?;
        let path = root.resolve_existing(requested).map_err(denied)?;
        let text = tokio::fs::read_to_string(&path)
            .await
            .map_err(|e| io_error(requested, &e))?;
        let line = params.get("line").and_then(Value::as_u64);
        let limit = params.get("limit").and_then(Value::as_u64);
        to_result(&acp::ReadTextFileResponse::new(slice_lines(
            &text, line, limit,
        )))
    }

    async fn write_text_file(&self, params: &Value) -> Result<Value, RpcError> {
        let root = self.session_root(params)?;
        let requested = str_param(params, "path")?;
        let content = str_param(params, "content")?;
        let path = root.resolve_for_write(requested).map_err(denied)?;
        // The directories this write creates, and the file itself.
        let mut created: Vec<PathBuf> = path
            .ancestors()
            .skip(1)
            .take_while(|dir| !dir.exists())
            .map(ToOwned::to_owned)
            .collect();
        created.push(path.clone());
        if let Some(parent) = path.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(|e| io_error(requested, &e))?;
        }
        tokio::fs::write(&path, content)
            .await
            .map_err(|e| io_error(requested, &e))?;
        root.hand_over(&created)
            .map_err(|e| io_error(requested, &e))?;
        to_result(&acp::WriteTextFileResponse::new())
    }
}

/// The JSON result of an answer to the agent.
fn to_result(result: &impl serde::Serialize) -> Result<Value, RpcError> {
    serde_json::to_value(result).map_err(|e| RpcError::new(INTERNAL_ERROR, e.to_string()))
}

fn str_param<'a>(params: &'a Value, name: &str) -> Result<&'a str, RpcError> {
    params
        .get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| RpcError::new(INVALID_PARAMS, format!("{name} is missing")))
}

fn denied(e: PathDenied) -> RpcError {
    tracing::warn!(error = %e, "refused a file request from the agent");
    let code = if e.is_not_found() {
        RESOURCE_NOT_FOUND
    } else {
        INVALID_PARAMS
    };
    RpcError::new(code, e.to_string())
}

fn io_error(path: &str, e: &std::io::Error) -> RpcError {
    let code = if e.kind() == std::io::ErrorKind::NotFound {
        RESOURCE_NOT_FOUND
    } else {
        INTERNAL_ERROR
    };
    RpcError::new(code, format!("{path}: {e}"))
}

/// `value` with [`redact`] applied to every string in it.
pub(crate) fn redact_value(value: Value) -> Value {
    match value {
        Value::String(s) => Value::String(redact(&s).into_owned()),
        Value::Array(items) => Value::Array(items.into_iter().map(redact_value).collect()),
        Value::Object(map) => {
            Value::Object(map.into_iter().map(|(k, v)| (k, redact_value(v))).collect())
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_permission(mode: PermissionMode, kind: Option<&str>, expected: &str) {
        let (tx, mut rx) = broadcast::channel(8);
        let handler = ClientHandler::new(mode, tx);
        let mut tool = json!({ "toolCallId": "t1" });
        if let Some(kind) = kind {
            tool["kind"] = json!(kind);
        }
        let params = json!({
            "sessionId": "s",
            "toolCall": tool,
            "options": [
                { "optionId": "yes", "name": "Allow", "kind": "allow_once" },
                { "optionId": "no", "name": "Reject", "kind": "reject_once" },
            ],
        });
        let answer = handler.permission(&params);
        assert_eq!(
            answer["outcome"]["optionId"], expected,
            "{mode:?} {kind:?} -> {answer}"
        );
        // The question and the answer are in the session's events.
        let event = rx.try_recv().expect("a permission event").event;
        assert_eq!(
            event,
            SessionEvent::Permission {
                tool_call: tool,
                tool_kind: kind.map(str::to_owned),
                allowed: expected == "yes",
                option: Some(expected.to_owned()),
            }
        );
    }

    #[test]
    fn permission_modes() {
        check_permission(PermissionMode::AllowAll, Some("edit"), "yes");
        check_permission(PermissionMode::AllowAll, None, "yes");
        check_permission(PermissionMode::ReadOnly, Some("read"), "yes");
        check_permission(PermissionMode::ReadOnly, Some("execute"), "no");
        check_permission(PermissionMode::ReadOnly, None, "no");
        check_permission(PermissionMode::RejectAll, Some("read"), "no");
    }

    #[test]
    fn kind_from_an_earlier_tool_call() {
        let (tx, _) = broadcast::channel(8);
        let handler = ClientHandler::new(PermissionMode::ReadOnly, tx);
        handler.on_notification(
            "session/update",
            json!({ "sessionId": "s", "update": { "sessionUpdate": "tool_call", "toolCallId": "c", "kind": "read" } }),
        );
        let answer = handler.permission(&json!({
            "toolCall": { "toolCallId": "c" },
            "options": [{ "optionId": "ok", "kind": "allow_always" }],
        }));
        assert_eq!(answer["outcome"]["optionId"], "ok");
        let none = handler.permission(&json!({ "toolCall": {}, "options": [] }));
        assert_eq!(none["outcome"]["outcome"], "cancelled");
    }

    #[test]
    fn redaction_reaches_nested_strings() {
        let value = json!({ "a": ["Bearer abc.def", { "k": "sk-ant-abcdefghijkl" }], "n": 1 });
        let redacted = redact_value(value);
        assert_eq!(redacted["a"][0], "Bearer ***");
        assert_eq!(redacted["a"][1]["k"], "***");
        assert_eq!(redacted["n"], 1);
    }
}
