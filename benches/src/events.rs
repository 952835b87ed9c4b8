//! Scenario `events`: rows per second through [`EventLog`], against a plain sqlx
//! insert loop writing the same rows, one per transaction as the VM agent appends
//! them, into the same kind of file (SQLite, WAL, `synchronous = NORMAL`).

use std::path::Path;
use std::time::Instant;

use chrono::{TimeZone, Utc};
use sam_core::{NodeId, WorkspaceId};
use sam_store::{Event, EventLevel, EventLog, RetentionConfig};

/// The figures of the events scenario.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EventFigures {
    /// Rows per second through the event log.
    pub rows_per_sec: f64,
    /// Rows per second of the plain insert loop.
    pub raw_rows_per_sec: f64,
}

/// The `n`-th event of the scenario: the shape of an ACP session update.
pub fn event(n: u64) -> Event {
    Event {
        node_id: Some(NodeId::new("node-000001").expect("a valid node id")),
        workspace_id: Some(WorkspaceId::new("ws-000001").expect("a valid workspace id")),
        level: EventLevel::Info,
        kind: "agent_session.update".to_owned(),
        message: format!("the agent used tool read_file on src/lib.rs (call {n})"),
        detail: serde_json::json!({
            "sessionUpdate": "tool_call",
            "toolCallId": format!("call_{n}"),
            "status": "completed",
        }),
        created_at: Utc
            .timestamp_micros(1_767_225_600_000_000 + n as i64)
            .single()
            .unwrap_or_default(),
    }
}

/// Appends `rows` events to a log in `dir`, one per call, and then inserts the same
/// rows with plain sqlx into a second file.
///
/// # Errors
/// Database errors.
pub async fn run(dir: &Path, rows: u64) -> anyhow::Result<EventFigures> {
    let log = EventLog::new(&RetentionConfig::new(dir.join("events.db"))).await?;
    let events: Vec<Event> = (0..rows).map(event).collect();
    let start = Instant::now();
    for e in &events {
        log.append(e).await?;
    }
    let logged = start.elapsed().as_secs_f64();
    drop(log);

    let raw = crate::baseline::raw_rows_per_sec(&dir.join("events-raw.db"), &events).await?;
    Ok(EventFigures {
        rows_per_sec: rows as f64 / logged,
        raw_rows_per_sec: raw,
    })
}
