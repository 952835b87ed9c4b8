//! A task's transcript as people read it: what `sam logs` prints and `sam watch`
//! shows while the task runs.
//!
//! [`Transcript`] turns each [`Received`] event into complete lines: the agent's
//! text as it wrote it (its message chunks continue one another), its thoughts
//! marked `┆`, each tool call on a line with its status, the plan's entries as they
//! change, prompt retries, crashes, the task's steps, notices and final status.
//! Partial lines of text are held until their end, so a caller can print lines
//! above a spinner.

use std::collections::HashMap;

use sam_core::{ErrorCategory, SessionEvent, TaskEvent, TaskEventKind, TaskStatus};
use serde_json::Value;

/// One event of a task as a client received it.
#[derive(Debug, Clone, PartialEq)]
pub struct Received {
    /// Its sequence number within its task (the SSE `id:`, the JSON `id`), when the
    /// server numbered it.
    pub id: Option<u64>,
    /// The event as the server sent it: what `--json` prints, unknown fields kept.
    pub raw: Value,
    /// The event, when its kind is one this client knows.
    pub event: Option<TaskEvent>,
}

impl Received {
    /// Decodes one event's JSON; `id` is the SSE `id:` field when there was one.
    ///
    /// # Errors
    /// When `data` is not JSON. A JSON event of an unknown kind is kept, without
    /// [`Received::event`].
    pub fn decode(data: &str, id: Option<u64>) -> serde_json::Result<Self> {
        let raw: Value = serde_json::from_str(data)?;
        Ok(Self::from_value(raw, id))
    }

    /// [`Received::decode`] of an already parsed event.
    pub fn from_value(raw: Value, id: Option<u64>) -> Self {
        let id = id.or_else(|| raw.get("id").and_then(Value::as_u64));
        let event = serde_json::from_value(raw.clone()).ok();
        Self { id, raw, event }
    }

    /// The task's status, when this event is a status event.
    pub fn status(&self) -> Option<TaskStatus> {
        match &self.event.as_ref()?.kind {
            TaskEventKind::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Whether the stream of the task ends with this event (its terminal status).
    pub fn is_terminal(&self) -> bool {
        self.status().is_some_and(TaskStatus::is_terminal)
    }
}

/// Which block of agent text the transcript is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Block {
    Message,
    Thought,
    User,
}

/// Renders a task's events as lines; see the [module docs](self).
#[derive(Debug, Default)]
pub struct Transcript {
    /// The text block being written and its unfinished last line.
    open: Option<(Block, String)>,
    /// Tool call titles by `toolCallId`, for their updates.
    tools: HashMap<String, String>,
    /// The last plan's entries with their statuses.
    plan: Vec<(String, String)>,
}

impl Transcript {
    /// An empty transcript.
    pub fn new() -> Self {
        Self::default()
    }

    /// The complete lines `received` adds.
    pub fn push(&mut self, received: &Received) -> Vec<String> {
        let mut lines = Vec::new();
        let Some(event) = &received.event else {
            let kind = received
                .raw
                .pointer("/kind/type")
                .and_then(Value::as_str)
                .unwrap_or("?");
            self.close(&mut lines);
            lines.push(format!(
                "? an event of a kind this sam does not know: {kind}"
            ));
            return lines;
        };
        let at = event.at.format("%H:%M:%S");
        match &event.kind {
            TaskEventKind::Session { event } => return self.session(event),
            TaskEventKind::Step { label, .. } => {
                self.close(&mut lines);
                lines.push(format!("· {at} {label}"));
            }
            TaskEventKind::Status { status, error } => {
                self.close(&mut lines);
                let mark = match status {
                    TaskStatus::Completed => "✓",
                    TaskStatus::Failed | TaskStatus::Cancelled => "✗",
                    _ => "·",
                };
                match error {
                    Some(error) => lines.push(format!(
                        "{mark} {at} task {status}: {} ({})",
                        error.message, error.category
                    )),
                    None => lines.push(format!("{mark} {at} task {status}")),
                }
            }
            TaskEventKind::Downgraded {
                requested,
                provisioned,
            } => {
                self.close(&mut lines);
                lines.push(format!(
                    "! {at} runs on {provisioned} instead of the {requested} asked for"
                ));
            }
            TaskEventKind::CapacityUnavailable { size, location } => {
                self.close(&mut lines);
                lines.push(format!("! {at} no {size} capacity in {location}"));
            }
            TaskEventKind::WaitingForCapacity { .. } => {
                self.close(&mut lines);
                lines.push(format!("! {at} {}", event.kind));
            }
            TaskEventKind::NodeLost { node, reason } => {
                self.close(&mut lines);
                lines.push(format!("! {at} node {node} lost: {reason}"));
            }
            TaskEventKind::Refused { callback, reason } => {
                self.close(&mut lines);
                lines.push(format!("! {at} a late {callback} was refused: {reason}"));
            }
            // The message was streamed as the agent wrote it; `sam status` shows it.
            TaskEventKind::LastMessage { .. } => {}
        }
        lines
    }

    /// The complete lines a session event adds.
    pub fn session(&mut self, event: &SessionEvent) -> Vec<String> {
        let mut lines = Vec::new();
        match event {
            SessionEvent::Update { update } => self.update(update, &mut lines),
            other => {
                self.close(&mut lines);
                lines.push(session_line(other));
            }
        }
        lines
    }

    /// The lines still held: the unfinished last line of the agent's text.
    pub fn finish(&mut self) -> Vec<String> {
        let mut lines = Vec::new();
        self.close(&mut lines);
        lines
    }

    /// Ends the open text block, giving its unfinished line.
    fn close(&mut self, lines: &mut Vec<String>) {
        if let Some((block, partial)) = self.open.take()
            && !partial.is_empty()
        {
            lines.push(text_line(block, &partial));
        }
    }

    /// Appends `text` to a `block` of agent text, giving its complete lines.
    fn text(&mut self, block: Block, text: &str, lines: &mut Vec<String>) {
        if self.open.as_ref().is_some_and(|(b, _)| *b != block) {
            self.close(lines);
        }
        let (_, partial) = self.open.get_or_insert_with(|| (block, String::new()));
        partial.push_str(text);
        while let Some(end) = partial.find('\n') {
            let line: String = partial.drain(..=end).collect();
            lines.push(text_line(block, line.trim_end_matches(['\n', '\r'])));
        }
    }

    /// An ACP `session/update`.
    fn update(&mut self, update: &Value, lines: &mut Vec<String>) {
        let field = |name: &str| update.get(name).and_then(Value::as_str);
        let text = || {
            update
                .pointer("/content/text")
                .and_then(Value::as_str)
                .unwrap_or("")
        };
        match field("sessionUpdate").unwrap_or("") {
            "agent_message_chunk" => self.text(Block::Message, text(), lines),
            "agent_thought_chunk" => self.text(Block::Thought, text(), lines),
            "user_message_chunk" => self.text(Block::User, text(), lines),
            "tool_call" => {
                self.close(lines);
                let id = field("toolCallId").unwrap_or("?");
                let title = field("title").unwrap_or(id).to_owned();
                let status = field("status").unwrap_or("pending");
                lines.push(tool_line(&title, status));
                self.tools.insert(id.to_owned(), title);
            }
            "tool_call_update" => {
                // Updates without a status (content, locations) change nothing shown.
                if let Some(status) = field("status") {
                    self.close(lines);
                    let id = field("toolCallId").unwrap_or("?");
                    let title = field("title")
                        .or_else(|| self.tools.get(id).map(String::as_str))
                        .unwrap_or(id)
                        .to_owned();
                    lines.push(tool_line(&title, status));
                }
            }
            "plan" => {
                self.close(lines);
                let entries: Vec<(String, String)> = update
                    .get("entries")
                    .and_then(Value::as_array)
                    .map(|entries| {
                        entries
                            .iter()
                            .map(|e| {
                                let get = |n: &str| {
                                    e.get(n).and_then(Value::as_str).unwrap_or("").to_owned()
                                };
                                (get("content"), get("status"))
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                // The first plan in full; then the entries whose status changed.
                let first = self.plan.is_empty();
                if first {
                    lines.push("plan:".to_owned());
                }
                for entry in &entries {
                    if first || !self.plan.contains(entry) {
                        lines.push(plan_line(&entry.0, &entry.1));
                    }
                }
                self.plan = entries;
            }
            // Modes, commands and kinds an agent adds are not part of the transcript.
            _ => {}
        }
    }
}

/// A line of agent text in `block`.
fn text_line(block: Block, text: &str) -> String {
    match block {
        Block::Message => text.to_owned(),
        Block::Thought => format!("┆ {text}"),
        Block::User => format!("> {text}"),
    }
}

/// A tool call with its status.
fn tool_line(title: &str, status: &str) -> String {
    let mark = match status {
        "completed" => "✓",
        "failed" => "✗",
        _ => "⚙",
    };
    format!("{mark} tool: {title} ({status})")
}

/// A plan entry with its status.
fn plan_line(content: &str, status: &str) -> String {
    let mark = match status {
        "completed" => "[x]",
        "in_progress" => "[~]",
        _ => "[ ]",
    };
    format!("  {mark} {content}")
}

/// A prompt retry as `sam run` and `sam logs` show it: `model overloaded, retrying in
/// 15s (1/2)`; `None` for other events.
pub(crate) fn retry_summary(event: &SessionEvent) -> Option<String> {
    let SessionEvent::PromptRetry {
        attempt,
        delay,
        category,
        max_retries,
        ..
    } = event
    else {
        return None;
    };
    let what = match category {
        ErrorCategory::TransientCapacity => "model overloaded",
        ErrorCategory::RateLimited => "model provider rate limit",
        _ => "model provider failed",
    };
    let of = max_retries.map_or_else(String::new, |m| format!("/{m}"));
    Some(format!(
        "{what}, retrying in {}s ({attempt}{of})",
        delay.as_secs()
    ))
}

/// A session event other than an update, on one line.
fn session_line(event: &SessionEvent) -> String {
    match event {
        SessionEvent::PromptRetry { error, .. } => {
            format!("! {} ({error})", retry_summary(event).unwrap_or_default())
        }
        SessionEvent::Crashed { reason, resumable } => {
            let then = if *resumable {
                "its session will be resumed"
            } else {
                "its session cannot be resumed"
            };
            format!("! the agent crashed: {reason}; {then}")
        }
        SessionEvent::Restarted { restarts } => {
            format!("! the agent was restarted (restart {restarts})")
        }
        SessionEvent::Stopped { reason } => {
            let reason = serde_json::to_value(reason)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_else(|| format!("{reason:?}"));
            format!("— the agent's turn ended ({reason})")
        }
        SessionEvent::Permission {
            tool_call,
            tool_kind,
            allowed,
            option,
        } => {
            let title = tool_call
                .get("title")
                .and_then(Value::as_str)
                .unwrap_or("a tool");
            let kind = tool_kind
                .as_deref()
                .map_or_else(String::new, |k| format!(" ({k})"));
            let answer = match (allowed, option) {
                (true, _) => "allowed".to_owned(),
                (false, Some(option)) => format!("refused ({option})"),
                (false, None) => "refused".to_owned(),
            };
            format!("? permission for {title}{kind}: {answer}")
        }
        SessionEvent::Update { .. } => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// Events in the wire form of `GET /v1/tasks/{id}/events` as documented for the
    /// durable transcript: `{"id":…,"task_id":…,"at":…,"kind":{…}}`.
    fn event(id: u64, kind: Value) -> Received {
        Received::from_value(
            json!({"id": id, "task_id": "t-1", "at": "2026-01-02T03:04:05Z", "kind": kind}),
            None,
        )
    }

    fn update(id: u64, update: Value) -> Received {
        event(
            id,
            json!({"type": "session", "event": {"type": "update", "update": update}}),
        )
    }

    fn chunk(id: u64, kind: &str, text: &str) -> Received {
        update(
            id,
            json!({"sessionUpdate": kind, "content": {"type": "text", "text": text}}),
        )
    }

    /// Every line of `events`, the held ones included.
    fn render(events: &[Received]) -> Vec<String> {
        let mut transcript = Transcript::new();
        let mut lines: Vec<String> = events.iter().flat_map(|e| transcript.push(e)).collect();
        lines.extend(transcript.finish());
        lines
    }

    fn check(events: &[Received], expected: &[&str]) {
        assert_eq!(render(events), expected);
    }

    #[test]
    fn the_agents_text_continues_across_chunks_and_thoughts_are_marked() {
        check(
            &[
                chunk(1, "user_message_chunk", "say hello"),
                chunk(2, "agent_thought_chunk", "The user wants\na greeting."),
                chunk(3, "agent_message_chunk", "Hel"),
                chunk(4, "agent_message_chunk", "lo, "),
                chunk(5, "agent_message_chunk", "world…\nBye."),
            ],
            &[
                "> say hello",
                "┆ The user wants",
                "┆ a greeting.",
                "Hello, world…",
                "Bye.",
            ],
        );
    }

    #[test]
    fn a_partial_line_is_held_until_its_end_or_the_next_kind_of_event() {
        let mut transcript = Transcript::new();
        assert!(
            transcript
                .push(&chunk(1, "agent_message_chunk", "Hel"))
                .is_empty()
        );
        assert_eq!(
            transcript.push(&chunk(2, "agent_message_chunk", "lo\nwor")),
            ["Hello"]
        );
        assert_eq!(
            transcript.push(&update(
                3,
                json!({"sessionUpdate": "tool_call", "toolCallId": "c1", "title": "Read README.md", "status": "in_progress"})
            )),
            ["wor", "⚙ tool: Read README.md (in_progress)"]
        );
        assert!(transcript.finish().is_empty());
    }

    #[test]
    fn tool_calls_plans_and_session_events_are_one_line_each() {
        let plan = |done: usize| {
            let entries: Vec<Value> = ["Read", "Write"]
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    let status = match i.cmp(&done) {
                        std::cmp::Ordering::Less => "completed",
                        std::cmp::Ordering::Equal => "in_progress",
                        std::cmp::Ordering::Greater => "pending",
                    };
                    json!({"content": c, "priority": "medium", "status": status})
                })
                .collect();
            json!({"sessionUpdate": "plan", "entries": entries})
        };
        check(
            &[
                event(
                    1,
                    json!({"type": "step", "step": "running", "label": "Agent is working…"}),
                ),
                update(2, plan(0)),
                update(
                    3,
                    json!({"sessionUpdate": "tool_call", "toolCallId": "c1", "title": "List the repository", "kind": "read", "status": "in_progress"}),
                ),
                update(
                    4,
                    json!({"sessionUpdate": "tool_call_update", "toolCallId": "c1", "content": []}),
                ),
                update(
                    5,
                    json!({"sessionUpdate": "tool_call_update", "toolCallId": "c1", "status": "completed"}),
                ),
                update(6, plan(1)),
                event(
                    7,
                    json!({"type": "session", "event": {"type": "prompt_retry", "attempt": 1, "delay": {"secs": 5, "nanos": 0}, "error": "overloaded", "category": "transient_capacity", "max_retries": 3}}),
                ),
                event(
                    8,
                    json!({"type": "session", "event": {"type": "crashed", "reason": "exit 1", "resumable": true}}),
                ),
                event(
                    9,
                    json!({"type": "session", "event": {"type": "restarted", "restarts": 1}}),
                ),
                chunk(10, "agent_message_chunk", "Done."),
                event(
                    11,
                    json!({"type": "session", "event": {"type": "stopped", "reason": "end_turn"}}),
                ),
                event(12, json!({"type": "last_message", "text": "Done."})),
                event(
                    13,
                    json!({"type": "status", "status": "completed", "error": null}),
                ),
            ],
            &[
                "· 03:04:05 Agent is working…",
                "plan:",
                "  [~] Read",
                "  [ ] Write",
                "⚙ tool: List the repository (in_progress)",
                "✓ tool: List the repository (completed)",
                "  [x] Read",
                "  [~] Write",
                "! model overloaded, retrying in 5s (1/3) (overloaded)",
                "! the agent crashed: exit 1; its session will be resumed",
                "! the agent was restarted (restart 1)",
                "Done.",
                "— the agent's turn ended (end_turn)",
                "✓ 03:04:05 task completed",
            ],
        );
    }

    #[test]
    fn task_notices_and_a_failure_are_shown_and_an_unknown_kind_is_named() {
        check(
            &[
                event(
                    1,
                    json!({"type": "capacity_unavailable", "size": "large", "location": "fsn1"}),
                ),
                event(
                    2,
                    json!({"type": "downgraded", "requested": "large", "provisioned": "medium"}),
                ),
                event(
                    3,
                    json!({"type": "node_lost", "node": "n-1", "reason": "the VM vanished"}),
                ),
                event(4, json!({"type": "something_new", "x": 1})),
                event(
                    5,
                    json!({"type": "status", "status": "failed", "error": {"category": "auth_error", "message": "no key"}}),
                ),
            ],
            &[
                "! 03:04:05 no large capacity in fsn1",
                "! 03:04:05 runs on medium instead of the large asked for",
                "! 03:04:05 node n-1 lost: the VM vanished",
                "? an event of a kind this sam does not know: something_new",
                "✗ 03:04:05 task failed: no key (auth_error)",
            ],
        );
    }

    #[test]
    fn the_id_comes_from_the_sse_field_or_the_json() {
        assert_eq!(chunk(7, "agent_message_chunk", "x").id, Some(7));
        let received = Received::decode(
            r#"{"id":9,"task_id":"t-1","at":"2026-01-02T03:04:05Z","kind":{"type":"status","status":"cancelled","error":null}}"#,
            Some(9),
        )
        .unwrap();
        assert_eq!(received.id, Some(9));
        assert!(received.is_terminal());
        assert_eq!(received.status(), Some(TaskStatus::Cancelled));
    }
}
