//! [`SqliteEventLog`]: the agent's [`EventLog`] over `sam-store`'s SQLite event log.

use std::path::Path;

use async_trait::async_trait;
use sam_core::NodeId;
use sam_store::{Event, EventQuery, LoggedEvent, RetentionConfig};

use crate::error::{Error, Result};
use crate::vm::events::{EventLog, NewEvent};
use crate::wire::{AgentEvent, EventLevel};

/// The node's durable event log: one SQLite file in WAL mode with
/// `synchronous=NORMAL`, whose events older than the retention are pruned while it
/// runs, and which can be exported as a consistent database file.
///
/// Events are redacted when they are built ([`NewEvent`]) and again by `sam-store`
/// when they are written. Every event carries the node's id.
#[derive(Debug)]
pub struct SqliteEventLog {
    node_id: NodeId,
    log: sam_store::EventLog,
}

impl SqliteEventLog {
    /// Opens (creating and migrating if needed) the log of `config`; its events are
    /// `node_id`'s.
    ///
    /// # Errors
    /// [`Error::Sqlite`] when the file cannot be opened or is not an event log.
    pub async fn new(config: &RetentionConfig, node_id: NodeId) -> Result<Self> {
        Ok(Self {
            node_id,
            log: sam_store::EventLog::new(config).await?,
        })
    }

    /// Checkpoints the WAL, then copies the database file to `dest`; returns its
    /// size in bytes. The copy holds every event appended before the call.
    ///
    /// # Errors
    /// [`Error::Sqlite`] when the checkpoint or the copy fails.
    pub async fn export(&self, dest: &Path) -> Result<u64> {
        Ok(self.log.export(dest).await?)
    }

    /// The underlying `sam-store` log, for queries the [`EventLog`] seam does not
    /// offer (filters, cursors, pruning).
    pub fn store(&self) -> &sam_store::EventLog {
        &self.log
    }
}

fn to_store_level(level: EventLevel) -> sam_store::EventLevel {
    match level {
        EventLevel::Info => sam_store::EventLevel::Info,
        EventLevel::Warn => sam_store::EventLevel::Warn,
        EventLevel::Error => sam_store::EventLevel::Error,
    }
}

/// The agent has no debug level: a debug event (written by another program) reads
/// back as `info`.
fn from_store_level(level: sam_store::EventLevel) -> EventLevel {
    match level {
        sam_store::EventLevel::Warn => EventLevel::Warn,
        sam_store::EventLevel::Error => EventLevel::Error,
        _ => EventLevel::Info,
    }
}

fn from_logged(logged: LoggedEvent) -> Result<AgentEvent> {
    let id = u64::try_from(logged.id)
        .map_err(|_| Error::Store(format!("event id {} is negative", logged.id)))?;
    Ok(AgentEvent {
        id,
        at: logged.event.created_at,
        level: from_store_level(logged.event.level),
        kind: logged.event.kind,
        message: logged.event.message,
        workspace_id: logged.event.workspace_id,
        detail: logged.event.detail,
    })
}

#[async_trait]
impl EventLog for SqliteEventLog {
    async fn append(&self, event: NewEvent) -> Result<AgentEvent> {
        // The id is not known yet: build the stored event with a placeholder, then
        // give it the id the database assigned.
        let mut stored = event.into_event(0);
        let id = self
            .log
            .append(&Event {
                node_id: Some(self.node_id.clone()),
                workspace_id: stored.workspace_id.clone(),
                level: to_store_level(stored.level),
                kind: stored.kind.clone(),
                message: stored.message.clone(),
                detail: stored.detail.clone(),
                created_at: stored.at,
            })
            .await?;
        stored.id =
            u64::try_from(id).map_err(|_| Error::Store(format!("event id {id} is negative")))?;
        Ok(stored)
    }

    async fn recent(&self, limit: usize) -> Result<Vec<AgentEvent>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let page = self
            .log
            .list(&EventQuery {
                limit: Some(limit),
                ..EventQuery::default()
            })
            .await?;
        page.events.into_iter().map(from_logged).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[tokio::test]
    async fn appends_read_back_newest_first_redacted_with_the_node() {
        let dir = tempfile::tempdir().unwrap();
        let config = RetentionConfig::new(dir.path().join("events.db"));
        let node = NodeId::new("node-1").unwrap();
        let log = SqliteEventLog::new(&config, node.clone()).await.unwrap();
        let ws = sam_core::WorkspaceId::new("ws-1").unwrap();
        let mut ids = Vec::new();
        for (level, message) in [
            (EventLevel::Info, "first"),
            (EventLevel::Warn, "Authorization: Bearer abc.def"),
            (EventLevel::Error, "third"),
        ] {
            let event = log
                .append(
                    NewEvent::new(level, "test.kind", message)
                        .with_workspace(&ws)
                        .with_detail(json!({ "key": "sk-ant-api03-AbCdEf123456" })),
                )
                .await
                .unwrap();
            ids.push(event.id);
        }
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");

        let recent = log.recent(2).await.unwrap();
        let got: Vec<_> = recent
            .iter()
            .map(|e| (e.id, e.level, e.message.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                (ids[2], EventLevel::Error, "third"),
                (ids[1], EventLevel::Warn, "Authorization: Bearer ***"),
            ]
        );
        assert_eq!(recent[0].detail, json!({ "key": "***" }));
        assert_eq!(recent[0].workspace_id, Some(ws));
        assert!(log.recent(0).await.unwrap().is_empty());

        let stored = log.store().list(&EventQuery::default()).await.unwrap();
        assert_eq!(stored.events.len(), 3);
        assert!(
            stored
                .events
                .iter()
                .all(|e| e.event.node_id == Some(node.clone()))
        );

        // The log reopens with its events.
        drop(log);
        let log = SqliteEventLog::new(&config, node).await.unwrap();
        assert_eq!(log.recent(10).await.unwrap().len(), 3);
    }
}
