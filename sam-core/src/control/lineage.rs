//! Tasks made from other tasks: a retry runs the same request again, a fork runs a
//! new prompt on the same settings; both record their parent.

use serde::{Deserialize, Serialize};

use crate::control::{ControlPlane, SubmitRequest, invalid};
use crate::failure::Error;
use crate::model::{TaskId, WorkspaceId};
use crate::store::{Lineage, LineageKind, TaskRecord};

/// How many ancestors a retried or forked task may have.
pub const MAX_LINEAGE_DEPTH: u32 = 10;

/// Longest parent title shown in a task's source block, in characters.
pub(super) const TITLE_CHARS: usize = 80;

/// Where a retried or forked task came from: shown only for tasks that have a parent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskSource {
    /// Retry or fork.
    pub kind: LineageKind,
    /// The parent's title: the first line of its prompt, shortened; `None` when the
    /// parent is gone.
    pub parent_title: Option<String>,
    /// The parent task.
    pub parent_task_id: TaskId,
    /// The parent's agent session, named by its workspace.
    pub parent_session_id: Option<WorkspaceId>,
}

pub(super) fn title(prompt: &str) -> String {
    let line = prompt.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    let mut title: String = line.trim().chars().take(TITLE_CHARS).collect();
    if line.trim().chars().count() > TITLE_CHARS {
        title.push('…');
    }
    title
}

impl ControlPlane {
    /// Runs a task's prompt again as a new task that records its parent.
    ///
    /// # Errors
    /// `not_found` for an unknown task; [`Error::InvalidInput`] for a task still
    /// running or past the lineage depth limit ([`MAX_LINEAGE_DEPTH`]); as
    /// [`ControlPlane::submit`].
    pub async fn retry(&self, id: &TaskId) -> Result<TaskId, Error> {
        let parent = self.require_task(id).await?;
        if !parent.status.is_terminal() {
            return Err(invalid(
                "task",
                format!(
                    "task {id} is still {}; only a finished task can be retried",
                    parent.status
                ),
            ));
        }
        let prompt = parent.spec.prompt.clone();
        self.derive(&parent, LineageKind::Retry, prompt).await
    }

    /// Continues from a task with a new prompt, as a new task that records its parent.
    ///
    /// # Errors
    /// `not_found` for an unknown task; [`Error::InvalidInput`] for an empty prompt or
    /// past the lineage depth limit ([`MAX_LINEAGE_DEPTH`]); as [`ControlPlane::submit`].
    pub async fn fork(&self, id: &TaskId, prompt: &str) -> Result<TaskId, Error> {
        let parent = self.require_task(id).await?;
        self.derive(&parent, LineageKind::Fork, prompt.to_owned())
            .await
    }

    pub(super) async fn derive(
        &self,
        parent: &TaskRecord,
        kind: LineageKind,
        prompt: String,
    ) -> Result<TaskId, Error> {
        let depth = parent.spec.lineage.as_ref().map_or(0, |l| l.depth) + 1;
        if depth > MAX_LINEAGE_DEPTH {
            return Err(invalid(
                "task",
                format!(
                    "task {} already has {} ancestors; a task may have at most {MAX_LINEAGE_DEPTH}, so start a new task instead",
                    parent.id,
                    depth - 1
                ),
            ));
        }
        let request = SubmitRequest {
            repo: parent.spec.repo.clone(),
            branch: parent.spec.branch.clone(),
            prompt,
            layers: parent.spec.submitted.clone(),
            preferred_node: None,
            project: parent.spec.project.clone(),
            profile: parent.spec.profile.as_ref().map(|p| p.as_str().to_owned()),
            user: parent.spec.user.clone(),
            github: parent.spec.github.clone(),
        };
        let lineage = Lineage {
            kind,
            parent_task: parent.id.clone(),
            parent_session: parent.workspace_id.clone(),
            depth,
        };
        self.submit_with(&request, Some(lineage)).await
    }

    /// The source block of a retried or forked task; `None` for an original task.
    ///
    /// # Errors
    /// Store failures.
    pub async fn source(&self, task: &TaskRecord) -> Result<Option<TaskSource>, Error> {
        let Some(lineage) = &task.spec.lineage else {
            return Ok(None);
        };
        let parent = self.store.get_task(&lineage.parent_task).await?;
        Ok(Some(TaskSource {
            kind: lineage.kind,
            parent_title: parent.map(|p| title(&p.spec.prompt)),
            parent_task_id: lineage.parent_task.clone(),
            parent_session_id: lineage.parent_session.clone(),
        }))
    }
}
#[cfg(test)]
mod tests {
    use super::title;

    #[test]
    fn titles_are_the_first_line_shortened() {
        assert_eq!(title("\n  Fix the build  \nmore"), "Fix the build");
        let long = "x".repeat(100);
        assert_eq!(title(&long).chars().count(), 81);
        assert_eq!(title(""), "");
    }
}
