//! The event stream of a task (`GET /v1/tasks/{id}/events`): where the task is now,
//! then each of its events as a server-sent event, until its terminal status or the
//! server's shutdown.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path as UrlPath, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use sam_core::{TaskEvent, TaskEventKind, TaskId, TaskRecord};
use tokio::sync::broadcast::error::RecvError;

use super::tasks::require_task;
use super::{ApiError, ApiState, ErrorDoc, path_id};

/// The SSE event of a task event: named by its `type`, the [`TaskEvent`] as data.
fn sse_event(event: &TaskEvent) -> Event {
    let name = match &event.kind {
        TaskEventKind::Step { .. } => "step",
        TaskEventKind::Status { .. } => "status",
        TaskEventKind::Downgraded { .. } => "downgraded",
        TaskEventKind::CapacityUnavailable { .. } => "capacity_unavailable",
        TaskEventKind::Session { .. } => "session",
        TaskEventKind::LastMessage { .. } => "last_message",
        TaskEventKind::NodeLost { .. } => "node_lost",
        TaskEventKind::Refused { .. } => "refused",
    };
    Event::default()
        .event(name)
        .json_data(event)
        .unwrap_or_else(|_| Event::default().event(name))
}

/// Where an event stream is.
struct Follow {
    state: ApiState,
    id: TaskId,
    events: tokio::sync::broadcast::Receiver<TaskEvent>,
    check: tokio::time::Interval,
    /// Events to send before waiting again.
    pending: std::collections::VecDeque<TaskEvent>,
    ended: bool,
}

impl Follow {
    /// Events that say where `task` is now: its step, and its status when terminal.
    fn snapshot(task: &TaskRecord) -> Vec<TaskEvent> {
        let mut events = vec![TaskEvent {
            task_id: task.id.clone(),
            at: task.updated_at,
            kind: TaskEventKind::Step {
                step: task.execution_step,
                label: task.execution_step.label().to_owned(),
            },
        }];
        if task.status.is_terminal() {
            events.push(TaskEvent {
                task_id: task.id.clone(),
                at: task.updated_at,
                kind: TaskEventKind::Status {
                    status: task.status,
                    error: task.error.clone(),
                },
            });
        }
        events
    }

    /// The next event, or `None` when the stream ends.
    async fn next(&mut self) -> Option<TaskEvent> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                if matches!(&event.kind, TaskEventKind::Status { status, .. } if status.is_terminal())
                {
                    self.ended = true;
                }
                return Some(event);
            }
            let stopping = *self.state.stopped.borrow();
            if self.ended || stopping {
                return None;
            }
            let mut stopped = self.state.stopped.clone();
            tokio::select! {
                event = self.events.recv() => match event {
                    Ok(event) if event.task_id == self.id => self.pending.push_back(event),
                    Ok(_) => {}
                    Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => return None,
                },
                // A missed terminal event (a lagging receiver, another process
                // finishing the task) still ends the stream.
                _ = self.check.tick() => match self.state.control_plane.get(&self.id).await {
                    Ok(Some(task)) if task.status.is_terminal() => {
                        self.pending.extend(Self::snapshot(&task));
                    }
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => return None,
                },
                () = async move { let _ = stopped.wait_for(|s| *s).await; } => return None,
            }
        }
    }
}

/// The task's events as server-sent events, named by their `type`; the stream ends
/// after the task's terminal status.
#[utoipa::path(get, path = "/v1/tasks/{id}/events", tag = "tasks", security(("bearer" = [])), params(("id" = String, Path, description = "The task id")),
    responses(
        (status = 200, description = "One `TaskEvent` (JSON) per event", content_type = "text/event-stream", body = String),
        (status = 404, description = "No such task", body = ErrorDoc),
        (status = 401, description = "No or an unknown API token", body = ErrorDoc),
    ))]
pub(super) async fn events(
    State(state): State<ApiState>,
    UrlPath(id): UrlPath<String>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let id: TaskId = path_id(&id, "id")?;
    // Subscribe before reading, so nothing falls between the snapshot and the stream.
    let events = state.control_plane.subscribe();
    let task = require_task(&state.control_plane, &id).await?;
    let mut check = tokio::time::interval(Duration::from_secs(1));
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let follow = Follow {
        pending: Follow::snapshot(&task).into(),
        state,
        id,
        events,
        check,
        ended: false,
    };
    let stream = futures::stream::unfold(follow, |mut follow| async move {
        let event = follow.next().await?;
        Some((Ok(sse_event(&event)), follow))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}
