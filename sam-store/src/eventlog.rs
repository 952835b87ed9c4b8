//! [`EventLog`]: what happened on a node, in a SQLite file (WAL), newest first.
//!
//! Messages and details pass through [`sam_core::redact`] before they are written,
//! so secrets never reach the file. Rows older than the retention window are pruned
//! while the log runs, and [`EventLog::export`] copies a consistent database file.

use std::path::Path;

use chrono::{DateTime, Utc};
use sam_core::{NodeId, WorkspaceId, redact};
use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use sqlx::{AssertSqlSafe, Row};

use crate::error::Error;
use crate::retention::{RetainedFile, RetentionConfig};
use crate::sql::{Migration, Schema};

/// How much an event matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventLevel {
    /// Detail for debugging.
    Debug,
    /// Normal progress.
    Info,
    /// Something unexpected that was handled.
    Warn,
    /// A failure.
    Error,
}

impl EventLevel {
    /// The snake_case name, as stored.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Debug => "debug",
            Self::Info => "info",
            Self::Warn => "warn",
            Self::Error => "error",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        [Self::Debug, Self::Info, Self::Warn, Self::Error]
            .into_iter()
            .find(|l| l.as_str() == s)
    }
}

/// An event to append.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// The node it happened on.
    pub node_id: Option<NodeId>,
    /// The workspace it concerns.
    pub workspace_id: Option<WorkspaceId>,
    /// How much it matters.
    pub level: EventLevel,
    /// Dotted type, e.g. `agent_session.prompt_retry`.
    #[serde(rename = "type")]
    pub kind: String,
    /// One human sentence.
    pub message: String,
    /// Structured detail.
    pub detail: serde_json::Value,
    /// When it happened; also the log's clock for retention.
    pub created_at: DateTime<Utc>,
}

/// An event as stored, with its id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoggedEvent {
    /// Increases with every append.
    pub id: i64,
    /// The event, redacted.
    #[serde(flatten)]
    pub event: Event,
}

/// Which events to list.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct EventQuery {
    /// Only events of this workspace.
    pub workspace_id: Option<WorkspaceId>,
    /// Only events whose type starts with this.
    pub type_prefix: Option<String>,
    /// Only events older than this cursor (from a previous page).
    pub before: Option<EventCursor>,
    /// At most this many; `None` for 100.
    pub limit: Option<usize>,
}

/// Where the next page of a newest-first listing starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EventCursor(pub i64);

/// One page of events, newest first.
#[derive(Debug, Clone, PartialEq)]
pub struct EventPage {
    /// The events.
    pub events: Vec<LoggedEvent>,
    /// The cursor of the next (older) page; `None` on the last page.
    pub next: Option<EventCursor>,
}

const SCHEMA: Schema = Schema {
    table: "sam_events_migrations",
    migrations: &[Migration {
        version: 1,
        sql: "CREATE TABLE events (\
                id INTEGER PRIMARY KEY AUTOINCREMENT, \
                node_id TEXT, \
                workspace_id TEXT, \
                level TEXT NOT NULL, \
                type TEXT NOT NULL, \
                message TEXT NOT NULL, \
                detail TEXT NOT NULL, \
                created_at INTEGER NOT NULL); \
              CREATE INDEX events_by_time ON events (created_at); \
              CREATE INDEX events_by_workspace ON events (workspace_id, id);",
    }],
};

const COLUMNS: &str = "id, node_id, workspace_id, level, type, message, detail, created_at";

/// The event log; see the module docs.
#[derive(Debug)]
pub struct EventLog {
    file: RetainedFile,
}

/// Replaces secrets in every string of a JSON value.
fn redact_json(value: &serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::String(s) => Value::String(redact(s).into_owned()),
        Value::Array(items) => Value::Array(items.iter().map(redact_json).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), redact_json(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

fn decode(row: &AnyRow) -> Result<LoggedEvent, Error> {
    let id: i64 = row
        .try_get("id")
        .map_err(RetainedFile::db("reading an event"))?;
    let bad = |column: &str, e: sam_core::BoxError| {
        Error::invalid_data(format!("events.{column} of {id}"), e)
    };
    let text = |column: &str| -> Result<Option<String>, Error> {
        row.try_get::<Option<String>, _>(column)
            .map_err(|e| bad(column, e.into()))
    };
    let required =
        |column: &str| text(column)?.ok_or_else(|| bad(column, "unexpected NULL".into()));
    let level = required("level")?;
    let created: i64 = row
        .try_get("created_at")
        .map_err(|e| bad("created_at", e.into()))?;
    Ok(LoggedEvent {
        id,
        event: Event {
            node_id: text("node_id")?
                .map(|s| s.parse())
                .transpose()
                .map_err(|e: sam_core::ParseError| bad("node_id", e.into()))?,
            workspace_id: text("workspace_id")?
                .map(|s| s.parse())
                .transpose()
                .map_err(|e: sam_core::ParseError| bad("workspace_id", e.into()))?,
            level: EventLevel::parse(&level)
                .ok_or_else(|| bad("level", format!("unknown level {level:?}").into()))?,
            kind: required("type")?,
            message: required("message")?,
            detail: serde_json::from_str(&required("detail")?)
                .map_err(|e| bad("detail", e.into()))?,
            created_at: DateTime::from_timestamp_micros(created)
                .ok_or_else(|| bad("created_at", format!("{created} is not a time").into()))?,
        },
    })
}

impl EventLog {
    /// Opens (creating if needed) and migrates the log file.
    ///
    /// # Errors
    /// [`Error::Corrupt`] naming the file when it is not a SQLite database;
    /// [`Error::SchemaTooNew`]; [`Error::InvalidInput`] for a retention that does not
    /// fit; database errors.
    pub async fn new(config: &RetentionConfig) -> Result<Self, Error> {
        let file = RetainedFile::open(config, &SCHEMA, "events", "created_at").await?;
        Ok(Self { file })
    }

    /// Appends one event; returns its id.
    ///
    /// # Errors
    /// Database errors.
    pub async fn append(&self, event: &Event) -> Result<i64, Error> {
        let ids = self.append_batch(std::slice::from_ref(event)).await?;
        Ok(ids[0])
    }

    /// Appends events in one transaction; returns their ids in order.
    ///
    /// # Errors
    /// Database errors; then none of the events is written.
    pub async fn append_batch(&self, events: &[Event]) -> Result<Vec<i64>, Error> {
        let context = "appending events";
        let mut tx = self
            .file
            .writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(RetainedFile::db(context))?;
        let mut ids = Vec::with_capacity(events.len());
        for e in events {
            let row = sqlx::query(AssertSqlSafe(format!(
                "INSERT INTO events ({COLUMNS}) VALUES (NULL, $1, $2, $3, $4, $5, $6, $7) \
                 RETURNING id"
            )))
            .bind(e.node_id.as_ref().map(ToString::to_string))
            .bind(e.workspace_id.as_ref().map(ToString::to_string))
            .bind(e.level.as_str())
            .bind(e.kind.clone())
            .bind(redact(&e.message).into_owned())
            .bind(redact_json(&e.detail).to_string())
            .bind(e.created_at.timestamp_micros())
            .fetch_one(&mut *tx)
            .await
            .map_err(RetainedFile::db(context))?;
            ids.push(
                row.try_get::<i64, _>(0)
                    .map_err(RetainedFile::db(context))?,
            );
        }
        tx.commit().await.map_err(RetainedFile::db(context))?;
        if let Some(newest) = events.iter().map(|e| e.created_at).max() {
            self.file.prune_if_due(newest).await?;
        }
        Ok(ids)
    }

    /// Lists events newest first.
    ///
    /// # Errors
    /// Database errors; [`Error::InvalidData`] for a row that cannot be decoded.
    pub async fn list(&self, query: &EventQuery) -> Result<EventPage, Error> {
        let limit = query.limit.unwrap_or(100);
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM events \
             WHERE ($1 = 0 OR id < $2) AND ($3 = 0 OR workspace_id = $4) \
               AND substr(type, 1, length($5)) = $5 \
             ORDER BY id DESC LIMIT $6"
        )))
        .bind(i64::from(query.before.is_some()))
        .bind(query.before.map_or(0, |c| c.0))
        .bind(i64::from(query.workspace_id.is_some()))
        .bind(
            query
                .workspace_id
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
        )
        .bind(query.type_prefix.clone().unwrap_or_default())
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.file.reader)
        .await
        .map_err(RetainedFile::db("listing events"))?;
        let events = rows.iter().map(decode).collect::<Result<Vec<_>, _>>()?;
        let next = (events.len() == limit && limit > 0)
            .then(|| events.last().map(|e| EventCursor(e.id)))
            .flatten();
        Ok(EventPage { events, next })
    }

    /// Deletes events older than `now` minus the retention; returns how many.
    ///
    /// Appends do this on their own every `prune_every`; call it to prune at once.
    ///
    /// # Errors
    /// Database errors.
    pub async fn prune(&self, now: DateTime<Utc>) -> Result<u64, Error> {
        self.file.prune(now).await
    }

    /// Moves every committed event from the WAL into the database file.
    ///
    /// # Errors
    /// Database errors, or `Unavailable` when readers kept it from finishing.
    pub async fn checkpoint(&self) -> Result<(), Error> {
        self.file.checkpoint().await
    }

    /// Checkpoints, then copies the database file to `dest`; returns its size in bytes.
    /// The copy is a SQLite database holding every event committed before the call.
    ///
    /// # Errors
    /// [`Error::Io`] naming `dest`; database errors.
    pub async fn export(&self, dest: &Path) -> Result<u64, Error> {
        self.file.export(dest).await
    }
}
