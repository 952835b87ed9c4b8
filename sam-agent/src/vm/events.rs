//! The agent's event log: what happened on the node, newest first over the API.
//!
//! [`EventLog`] is the seam: the agent writes every event through it, and
//! `GET /v1/events` reads the most recent ones back. Two backends:
//! - [`SqliteEventLog`]: `sam-store`'s SQLite event log (WAL, 7-day retention pruned
//!   while it runs, export after a checkpoint), what a node uses;
//! - [`MemoryEventLog`]: a bounded buffer in the process, for tests and embedding.
//!
//! Every [`NewEvent`] is redacted when it is built ([`sam_core::redact`] on the
//! message and on every string in the detail), so no backend ever sees a secret.

use std::collections::VecDeque;
use std::sync::Mutex;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sam_core::{WorkspaceId, redact};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::wire::{AgentEvent, EventLevel};

mod sqlite;

pub use sqlite::SqliteEventLog;

/// An event to append; built redacted, so its fields are read-only.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    at: DateTime<Utc>,
    level: EventLevel,
    kind: String,
    message: String,
    workspace_id: Option<WorkspaceId>,
    detail: Value,
}

/// Redacts every string inside a JSON value.
fn redact_json(value: Value) -> Value {
    match value {
        Value::String(s) => Value::String(redact(&s).into_owned()),
        Value::Array(items) => Value::Array(items.into_iter().map(redact_json).collect()),
        Value::Object(map) => {
            Value::Object(map.into_iter().map(|(k, v)| (k, redact_json(v))).collect())
        }
        other => other,
    }
}

impl NewEvent {
    /// An event of `kind` happening now, with `message` redacted.
    pub fn new(level: EventLevel, kind: impl Into<String>, message: &str) -> Self {
        Self {
            at: Utc::now(),
            level,
            kind: kind.into(),
            message: redact(message).into_owned(),
            workspace_id: None,
            detail: Value::Null,
        }
    }

    /// About `workspace`.
    #[must_use]
    pub fn with_workspace(mut self, workspace: &WorkspaceId) -> Self {
        self.workspace_id = Some(workspace.clone());
        self
    }

    /// With structured `detail`, every string in it redacted.
    #[must_use]
    pub fn with_detail(mut self, detail: Value) -> Self {
        self.detail = redact_json(detail);
        self
    }

    /// The event as stored under `id`.
    pub fn into_event(self, id: u64) -> AgentEvent {
        AgentEvent {
            id,
            at: self.at,
            level: self.level,
            kind: self.kind,
            message: self.message,
            workspace_id: self.workspace_id,
            detail: self.detail,
        }
    }
}

/// Where the agent's events go.
///
/// # Contract
/// - `append` stores the event and assigns it an id greater than every earlier one.
/// - `recent` returns at most `limit` events, newest first.
#[async_trait]
pub trait EventLog: Send + Sync + std::fmt::Debug {
    /// Stores `event`.
    ///
    /// # Errors
    /// [`Error::Store`] when the log cannot be written.
    async fn append(&self, event: NewEvent) -> Result<AgentEvent>;

    /// The latest `limit` events, newest first.
    ///
    /// # Errors
    /// [`Error::Store`] when the log cannot be read.
    async fn recent(&self, limit: usize) -> Result<Vec<AgentEvent>>;
}

/// A bounded in-process log: the oldest events are dropped past its capacity.
#[derive(Debug)]
pub struct MemoryEventLog {
    capacity: usize,
    inner: Mutex<(u64, VecDeque<AgentEvent>)>,
}

impl MemoryEventLog {
    /// Keeps the latest `capacity` events (at least one).
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            inner: Mutex::new((0, VecDeque::new())),
        }
    }
}

impl Default for MemoryEventLog {
    /// Keeps the latest 10 000 events.
    fn default() -> Self {
        Self::new(10_000)
    }
}

#[async_trait]
impl EventLog for MemoryEventLog {
    async fn append(&self, event: NewEvent) -> Result<AgentEvent> {
        let mut inner = self
            .inner
            .lock()
            .map_err(|_| Error::Store("the event buffer is poisoned".to_owned()))?;
        inner.0 += 1;
        let event = event.into_event(inner.0);
        if inner.1.len() == self.capacity {
            inner.1.pop_front();
        }
        inner.1.push_back(event.clone());
        Ok(event)
    }

    async fn recent(&self, limit: usize) -> Result<Vec<AgentEvent>> {
        let inner = self
            .inner
            .lock()
            .map_err(|_| Error::Store("the event buffer is poisoned".to_owned()))?;
        Ok(inner.1.iter().rev().take(limit).cloned().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[tokio::test]
    async fn bounded_newest_first_and_redacted() {
        let log = MemoryEventLog::new(3);
        for i in 0..5 {
            log.append(NewEvent::new(
                EventLevel::Info,
                "test",
                &format!("event {i}"),
            ))
            .await
            .unwrap();
        }
        let recent = log.recent(10).await.unwrap();
        let messages: Vec<&str> = recent.iter().map(|e| e.message.as_str()).collect();
        assert_eq!(messages, ["event 4", "event 3", "event 2"]);
        assert_eq!(recent[0].id, 5);
        assert_eq!(log.recent(1).await.unwrap().len(), 1);

        let ws = WorkspaceId::new("ws-1").unwrap();
        let event = log
            .append(
                NewEvent::new(EventLevel::Warn, "test", "Authorization: Bearer abc.def")
                    .with_workspace(&ws)
                    .with_detail(json!({ "nested": ["key sk-ant-api03-AbCdEf123456"] })),
            )
            .await
            .unwrap();
        assert_eq!(event.message, "Authorization: Bearer ***");
        assert_eq!(event.detail, json!({ "nested": ["key ***"] }));
        assert_eq!(event.workspace_id, Some(ws));
    }
}
