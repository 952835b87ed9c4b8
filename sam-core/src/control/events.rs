//! The transcript of each task: every entry is written to the store first, numbered
//! within its task, then announced to this process's live listeners. The store is
//! the record: a listener that lags, or runs in another process, reads the entries
//! it missed back by number ([`ControlPlane::transcript`]).

pub use crate::record::{TaskEvent, TaskEventKind};

use chrono::{DateTime, Utc};

use crate::control::ControlPlane;
use crate::failure::Error;
use crate::model::TaskId;
use crate::record::{LeasedWrite, TranscriptQuery};

/// The most entries one [`ControlPlane::transcript`] call returns.
pub const MAX_TRANSCRIPT_PAGE: usize = 1000;

impl ControlPlane {
    /// The task's transcript entries `query` selects, its limit capped at
    /// [`MAX_TRANSCRIPT_PAGE`].
    ///
    /// # Errors
    /// `not_found` for a missing task; store failures.
    pub async fn transcript(
        &self,
        id: &TaskId,
        query: &TranscriptQuery,
    ) -> Result<Vec<TaskEvent>, Error> {
        self.require_task(id).await?;
        let query = TranscriptQuery {
            limit: query.limit.clamp(1, MAX_TRANSCRIPT_PAGE),
            ..query.clone()
        };
        Ok(self.store.list_task_events(id, &query).await?)
    }

    /// Writes an entry to the task's transcript, then announces it.
    ///
    /// # Errors
    /// Store failures (the entry was not written, nor announced).
    pub(super) async fn emit(&self, task_id: &TaskId, kind: TaskEventKind) -> Result<u64, Error> {
        let at = self.clock.now();
        let id = self.store.append_task_event(task_id, at, &kind).await?;
        self.announce(TaskEvent {
            id,
            task_id: task_id.clone(),
            at,
            kind,
        });
        Ok(id)
    }

    /// [`Self::emit`] where the caller's own work is done and a failed transcript
    /// write must not undo it: the failure is logged.
    pub(super) async fn emit_logged(&self, task_id: &TaskId, kind: TaskEventKind) {
        let name = kind.name();
        if let Err(e) = self.emit(task_id, kind).await {
            tracing::warn!(task = %task_id, event = name, error = %e, "could not write a transcript entry");
        }
    }

    /// Announces the [`LeasedWrite::Event`]s among `writes`, which a write
    /// numbered up to `last` at `at`.
    pub(super) fn announce_written(
        &self,
        task_id: &TaskId,
        at: DateTime<Utc>,
        writes: &[LeasedWrite],
        last: Option<u64>,
    ) {
        let Some(last) = last else { return };
        let kinds: Vec<&TaskEventKind> = writes
            .iter()
            .filter_map(|w| match w {
                LeasedWrite::Event(kind) => Some(kind),
                _ => None,
            })
            .collect();
        let first = last + 1 - kinds.len() as u64;
        for (id, kind) in (first..).zip(kinds) {
            self.announce(TaskEvent {
                id,
                task_id: task_id.clone(),
                at,
                kind: kind.clone(),
            });
        }
    }

    /// Tells this process's live listeners; nobody listening is fine.
    fn announce(&self, event: TaskEvent) {
        let _ = self.events.send(event);
    }
}
