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

/// How many rounds the rows are written in.
const ROUNDS: u64 = 4;

/// Appends `rows` events to a log in `dir`, one per call, and inserts the same rows
/// with plain sqlx into a second file, in `ROUNDS` alternating rounds (a quarter
/// of the rows to the log, the same quarter to the raw file, and so on), so a slow
/// spell of the shared machine's disk falls on both sides alike.
///
/// # Errors
/// Database errors.
pub async fn run(dir: &Path, rows: u64) -> anyhow::Result<EventFigures> {
    let log = EventLog::new(&RetentionConfig::new(dir.join("events.db"))).await?;
    let raw_path = dir.join("events-raw.db");
    let events: Vec<Event> = (0..rows).map(event).collect();
    let chunk = usize::try_from(rows.div_ceil(ROUNDS).max(1))?;
    let (mut logged, mut raw_secs) = (0.0, 0.0);
    for part in events.chunks(chunk) {
        let start = Instant::now();
        for e in part {
            log.append(e).await?;
        }
        logged += start.elapsed().as_secs_f64();
        let rate = crate::baseline::raw_rows_per_sec(&raw_path, part).await?;
        raw_secs += part.len() as f64 / rate;
    }
    drop(log);
    Ok(EventFigures {
        rows_per_sec: rows as f64 / logged,
        raw_rows_per_sec: rows as f64 / raw_secs,
    })
}
