//! A task's transcript (`GET /v1/tasks/{id}/events`): a JSON page of its entries,
//! or, for a client that accepts `text/event-stream`, each entry as a server-sent
//! event (with its number as the event's `id`) until the task's terminal status or
//! the server's shutdown.
//!
//! Both read the store: the stream replays what was written after the client's
//! `Last-Event-ID` (or `after`), then waits for more, woken by this process's
//! entries and, each second, by a look at the store for entries other servers
//! wrote. So any server serves any client, a client that reconnects misses nothing
//! and sees nothing twice, and a listener that lagged loses nothing.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path as UrlPath, RawQuery, State};
use axum::http::HeaderMap;
use axum::http::header::ACCEPT;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use sam_core::{
    ErrorCategory, MAX_TRANSCRIPT_PAGE, TaskEvent, TaskEventKind, TaskId, TranscriptQuery,
};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast::error::RecvError;
use utoipa::ToSchema;

use super::tasks::require_task;
use super::{ApiError, ApiState, ErrorDoc, path_id};

/// The entries a page holds when the request names no `limit`.
pub const DEFAULT_TRANSCRIPT_PAGE: usize = 200;

/// The header a reconnecting event-stream client names the last entry it saw with.
const LAST_EVENT_ID: &str = "last-event-id";

/// The answer to `GET /v1/tasks/{id}/events` as JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TranscriptPage {
    /// The entries, in number order.
    #[schema(value_type = Vec<Object>)]
    pub events: Vec<TaskEvent>,
    /// The `after` of the next page when this one is full (more may follow).
    pub next_after: Option<u64>,
    /// Whether the task has ended: once a page is not full, nothing more comes.
    pub ended: bool,
}

/// What a transcript request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Request {
    query: TranscriptQuery,
    stream: bool,
}

/// Reads `after`, `limit` and `kind` from the query string, `Last-Event-ID` (which
/// wins over `after`) and whether the client wants a stream from the headers.
fn request(query: Option<&str>, headers: &HeaderMap) -> Result<Request, ApiError> {
    let mut transcript = TranscriptQuery::after(0, DEFAULT_TRANSCRIPT_PAGE);
    for (key, value) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        let bad = |message: String| ApiError::field(ErrorCategory::InvalidConfig, &key, &message);
        match key.as_ref() {
            "after" => {
                transcript.after = value
                    .parse()
                    .map_err(|_| bad("must be an entry number (0 for the start)".into()))?;
            }
            "limit" => match value.parse::<usize>() {
                Ok(n) if (1..=MAX_TRANSCRIPT_PAGE).contains(&n) => transcript.limit = n,
                _ => {
                    return Err(bad(format!(
                        "must be a number from 1 to {MAX_TRANSCRIPT_PAGE}"
                    )));
                }
            },
            "kind" => {
                for kind in value.split(',').filter(|k| !k.is_empty()) {
                    if !TaskEventKind::NAMES.contains(&kind) {
                        return Err(bad(format!(
                            "unknown kind `{kind}`; one of {}",
                            TaskEventKind::NAMES.join(", ")
                        )));
                    }
                    transcript.kinds.push(kind.to_owned());
                }
            }
            _ => return Err(bad(format!("unknown query parameter `{key}`"))),
        }
    }
    if let Some(last) = headers.get(LAST_EVENT_ID) {
        transcript.after = last
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| {
                ApiError::field(
                    ErrorCategory::InvalidConfig,
                    "Last-Event-ID",
                    "must be the number of an entry this stream sent",
                )
            })?;
    }
    let stream = headers
        .get_all(ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("text/event-stream"));
    Ok(Request {
        query: transcript,
        stream,
    })
}

/// The SSE event of an entry: its number as the `id`, its kind as the name, the
/// [`TaskEvent`] as data. `numbered` is `false` for the closing status a stream
/// makes up for a task whose transcript lacks it, which carries no `id`.
fn sse_event(event: &TaskEvent, numbered: bool) -> Event {
    let name = event.kind.name();
    let sse = Event::default().event(name);
    let sse = if numbered {
        sse.id(event.id.to_string())
    } else {
        sse
    };
    sse.json_data(event)
        .unwrap_or_else(|_| Event::default().event(name))
}

/// Where an event stream is.
struct Follow {
    state: ApiState,
    id: TaskId,
    query: TranscriptQuery,
    events: tokio::sync::broadcast::Receiver<TaskEvent>,
    check: tokio::time::Interval,
    /// Entries read and not yet sent.
    pending: VecDeque<TaskEvent>,
    /// Whether the store may hold entries not read yet.
    dirty: bool,
    ended: bool,
}

impl Follow {
    /// The next entry (and whether it is numbered), or `None` when the stream ends.
    async fn next(&mut self) -> Option<(TaskEvent, bool)> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                self.query.after = event.id;
                self.ended |= event.kind.is_end();
                return Some((event, true));
            }
            if self.ended || *self.state.stopped.borrow() {
                return None;
            }
            // What was written since: by this server or another.
            if std::mem::take(&mut self.dirty) {
                match self
                    .state
                    .control_plane
                    .transcript(&self.id, &self.query)
                    .await
                {
                    Ok(page) if !page.is_empty() => {
                        // A full page may have more behind it.
                        self.dirty = page.len() >= self.query.limit;
                        self.pending.extend(page);
                        continue;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        // The client reconnects from its last entry.
                        tracing::warn!(task = %self.id, error = %e, "could not read a transcript");
                        return None;
                    }
                }
            }
            let mut stopped = self.state.stopped.clone();
            tokio::select! {
                event = self.events.recv() => match event {
                    // Read back from the store, in order, with whatever came before.
                    Ok(event) => self.dirty = event.task_id == self.id,
                    Err(RecvError::Lagged(_)) => self.dirty = true,
                    Err(RecvError::Closed) => return None,
                },
                _ = self.check.tick() => {
                    self.dirty = true;
                    if let Some(end) = self.missing_end().await {
                        self.ended = true;
                        return Some((end, false));
                    }
                }
                () = async move { let _ = stopped.wait_for(|s| *s).await; } => return None,
            }
        }
    }

    /// The closing status of a task that ended while its transcript holds no such
    /// entry after what was sent (a task that ended before transcripts were kept,
    /// or whose closing entry could not be written); `None` otherwise.
    async fn missing_end(&self) -> Option<TaskEvent> {
        let task = self.state.control_plane.get(&self.id).await.ok()??;
        if !task.status.is_terminal() {
            return None;
        }
        // Written meanwhile: the next read sends it.
        let rest = self
            .state
            .control_plane
            .transcript(
                &self.id,
                &TranscriptQuery {
                    limit: 1,
                    ..self.query.clone()
                },
            )
            .await
            .ok()?;
        rest.is_empty().then(|| TaskEvent {
            id: self.query.after,
            task_id: task.id.clone(),
            at: task.updated_at,
            kind: TaskEventKind::Status {
                status: task.status,
                error: task.error.clone(),
            },
        })
    }
}

/// The task's transcript: a JSON page ([`TranscriptPage`]), or with `Accept:
/// text/event-stream`, each entry as a server-sent event named by its `type`, with
/// its number as the `id`; the stream resumes after `Last-Event-ID` and ends after
/// the task's terminal status.
#[utoipa::path(get, path = "/v1/tasks/{id}/events", tag = "tasks", security(("bearer" = [])),
    params(
        ("id" = String, Path, description = "The task id"),
        ("after" = Option<u64>, Query, description = "Only entries numbered after this (default 0: from the start)"),
        ("limit" = Option<usize>, Query, description = "At most this many entries in a JSON page (1 to 1000; default 200)"),
        ("kind" = Option<String>, Query, description = "Comma-separated kinds, e.g. `session,last_message`"),
        ("Last-Event-ID" = Option<u64>, Header, description = "The stream resumes after this entry (wins over `after`)"),
    ),
    responses(
        (status = 200, description = "A page of entries, or (`Accept: text/event-stream`) one `TaskEvent` (JSON) per event", body = TranscriptPage,
            content(
                (TranscriptPage = "application/json"),
                (String = "text/event-stream"),
            )),
        (status = 400, description = "A bad query parameter or `Last-Event-ID`, named in `field`", body = ErrorDoc),
        (status = 404, description = "No such task", body = ErrorDoc),
        (status = 401, description = "No or an unknown API token", body = ErrorDoc),
    ))]
pub(super) async fn events(
    State(state): State<ApiState>,
    UrlPath(id): UrlPath<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let id: TaskId = path_id(&id, "id")?;
    let Request { query, stream } = request(query.as_deref(), &headers)?;
    if !stream {
        let task = require_task(&state.control_plane, &id).await?;
        let events = state.control_plane.transcript(&id, &query).await?;
        let next_after = (events.len() >= query.limit)
            .then(|| events.last().map(|e| e.id))
            .flatten();
        return Ok(axum::Json(TranscriptPage {
            events,
            next_after,
            ended: task.status.is_terminal(),
        })
        .into_response());
    }
    // Subscribe before the first read, so nothing falls between the two.
    let events = state.control_plane.subscribe();
    require_task(&state.control_plane, &id).await?;
    let mut check = tokio::time::interval(Duration::from_secs(1));
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let follow = Follow {
        query: TranscriptQuery {
            limit: MAX_TRANSCRIPT_PAGE,
            ..query
        },
        state,
        id,
        events,
        check,
        pending: VecDeque::new(),
        dirty: true,
        ended: false,
    };
    let stream = futures::stream::unfold(follow, |mut follow| async move {
        let (event, numbered) = follow.next().await?;
        Some((Ok::<_, Infallible>(sse_event(&event, numbered)), follow))
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(*k, HeaderValue::from_static(v));
        }
        map
    }

    #[test]
    fn a_request_reads_its_page_kinds_and_resume_point() {
        let plain = request(None, &HeaderMap::new()).unwrap();
        assert_eq!(
            plain.query,
            TranscriptQuery::after(0, DEFAULT_TRANSCRIPT_PAGE)
        );
        assert!(!plain.stream);
        let page = request(
            Some("after=7&limit=3&kind=session,last_message"),
            &HeaderMap::new(),
        )
        .unwrap();
        assert_eq!(
            page.query,
            TranscriptQuery::after(7, 3).with_kinds(["session", "last_message"])
        );
        let resumed = request(
            Some("after=2"),
            &headers(&[("accept", "text/event-stream"), ("last-event-id", "41")]),
        )
        .unwrap();
        assert!(resumed.stream);
        assert_eq!(resumed.query.after, 41, "Last-Event-ID wins over after");
    }

    #[test]
    fn bad_requests_name_what_is_wrong() {
        let field = |query: Option<&str>, headers: &HeaderMap| {
            request(query, headers)
                .expect_err("refused")
                .body()
                .field
                .clone()
        };
        let none = HeaderMap::new();
        assert_eq!(field(Some("after=-1"), &none).as_deref(), Some("after"));
        assert_eq!(field(Some("limit=0"), &none).as_deref(), Some("limit"));
        assert_eq!(field(Some("limit=1001"), &none).as_deref(), Some("limit"));
        assert_eq!(field(Some("kind=tokens"), &none).as_deref(), Some("kind"));
        assert_eq!(field(Some("page=2"), &none).as_deref(), Some("page"));
        assert_eq!(
            field(None, &headers(&[("last-event-id", "abc")])).as_deref(),
            Some("Last-Event-ID")
        );
    }
}
