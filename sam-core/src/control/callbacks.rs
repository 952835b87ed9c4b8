//! What VM agents report (node ready, boot failures, heartbeats, workspace and
//! session reports) and what they fetch (GitHub tokens, the repository), each
//! checked against the caller's scoped token and the task's state.

use serde::{Deserialize, Serialize};

use crate::boot::{BootFailure, BootFailureReport, BootPhaseRecord, NodeBootRecord};
use crate::control::{ControlPlane, TaskEventKind, invalid, missing};
use crate::error::ErrorCategory;
use crate::failure::Error;
use crate::github::{GithubInstallation, RepoRef, TaskOutput, output_branch};
use crate::model::{NodeHealth, NodeId, NodeStatus, TaskId, TaskStatus, WorkspaceId};
use crate::node_agent::{SessionReport, WorkspaceReport};
use crate::secret::{Secret, redact};
use crate::session::{SessionEvent, StopReason};
use crate::store::{
    NodeBeat, NodeRecord, TaskError, TaskFilter, TaskRecord, TaskUpdate, WorkspaceStatus,
};
use crate::token::TokenScope;

/// The reply to a heartbeat.
#[derive(Debug, Clone, PartialEq)]
pub struct HeartbeatReply {
    /// A fresh node token when the current one is past half its life.
    pub refreshed_token: Option<Secret>,
}

/// Resource metrics a heartbeat carries.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct NodeMetrics {
    /// One-minute load average.
    pub cpu_load_avg1: f64,
    /// Memory used, percent.
    pub memory_percent: f64,
    /// Root disk used, percent.
    pub disk_percent: f64,
}

/// A repository the control plane serves to a workspace, from
/// [`ControlPlane::workspace_repository`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServedRepository {
    /// The repository's path on this machine.
    pub path: std::path::PathBuf,
    /// The only branch the workspace may push (the task's output branch).
    pub output_branch: String,
}

/// The GitHub side of a workspace's task, from [`ControlPlane::workspace_github`].
#[derive(Debug, Clone, PartialEq)]
pub struct WorkspaceGithub {
    /// The task.
    pub task: TaskRecord,
    /// Its repository.
    pub repo: RepoRef,
    /// The installation link the task names; API calls use its external id.
    pub installation: GithubInstallation,
}

/// What a VM agent reports about a session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SessionCallback {
    /// Progress, retries, crashes: shown, not acted on.
    Event(SessionEvent),
    /// A state change that may end the task.
    Report(SessionReport),
    /// What the task left in its repository (sent before the final report).
    Output(TaskOutput),
}

pub(super) fn stop_message(reason: StopReason) -> String {
    match reason {
        StopReason::MaxTokens => "The agent ran out of output tokens before finishing.".to_owned(),
        StopReason::MaxTurnRequests => {
            "The agent hit its limit of model requests in one turn.".to_owned()
        }
        StopReason::Refusal => "The model refused to continue.".to_owned(),
        StopReason::EndTurn | StopReason::Cancelled => String::new(),
    }
}

impl ControlPlane {
    /// Refuses a callback that would change `task`, which has ended: the refusal
    /// is an event of the task and the error to answer.
    pub(super) async fn refuse_ended(&self, task: &TaskRecord, callback: &'static str) -> Error {
        let error = Error::TaskEnded {
            task: task.id.clone(),
            status: task.status,
            callback,
        };
        tracing::info!(task = %task.id, callback, "refused a callback for an ended task");
        self.emit_logged(
            &task.id,
            TaskEventKind::Refused {
                callback: callback.to_owned(),
                reason: error.to_string(),
            },
        )
        .await;
        error
    }

    pub(super) async fn wake_tasks_on(&self, node: &NodeId) -> Result<(), Error> {
        let tasks = self
            .store
            .list_tasks(&TaskFilter {
                node: Some(node.clone()),
                ..TaskFilter::live()
            })
            .await?;
        for task in tasks {
            self.wake(&task.id).await?;
        }
        Ok(())
    }

    /// Makes a task due now, so a runner waiting a poll interval looks at it at once.
    pub(super) async fn wake(&self, task: &TaskId) -> Result<(), Error> {
        let now = self.clock.now();
        let update = TaskUpdate {
            next_wake_at: Some(Some(now)),
            ..TaskUpdate::default()
        };
        Ok(self.store.update_task(task, &update, now).await?)
    }

    /// Callback: the VM agent on `node` is up; `boot` is the timeline of the node's
    /// boot phases, kept on the node (bounded, [`NodeBootRecord::bounded`]).
    ///
    /// # Errors
    /// [`Error::Unauthorized`] for a token that is not this node's; `not_found` for an
    /// unknown node; store failures.
    pub async fn node_ready(
        &self,
        token: &str,
        node: &NodeId,
        version: &str,
        boot: &[BootPhaseRecord],
    ) -> Result<(), Error> {
        self.verify(token, TokenScope::Node, node.as_str())?;
        self.require_node(node).await?;
        // Only the liveness fields, in one statement: writing back the whole row read
        // above would undo a warm claim or release that landed in between.
        let beat = NodeBeat {
            at: self.clock.now(),
            ready_version: Some(version.chars().take(64).collect()),
            boot_timeline: NodeBootRecord {
                timeline: boot.to_vec(),
                failure: None,
            }
            .bounded()
            .timeline,
        };
        self.store.record_node_beat(node, &beat).await?;
        self.wake_tasks_on(node).await
    }

    /// Callback: the boot of `node` failed. The failure (phase, exit status, journal
    /// tail, timeline; bounded) is recorded on the node, the node is marked failed
    /// and its VM deleted (a VM whose delete fails stays recorded, `destroying`, for
    /// the node sweep), and the tasks headed for it are woken: each moves to a
    /// replacement node while its budget lasts
    /// ([`ControlPlaneConfig::node_replacements`](crate::ControlPlaneConfig::node_replacements)).
    ///
    /// # Errors
    /// [`Error::Unauthorized`] for a token that is not this node's; `not_found` for an
    /// unknown node; [`Error::InvalidInput`] for a phase that is not a phase name;
    /// store failures.
    pub async fn node_boot_failed(
        &self,
        token: &str,
        node: &NodeId,
        report: &BootFailureReport,
    ) -> Result<(), Error> {
        self.verify(token, TokenScope::Node, node.as_str())?;
        report.check()?;
        let record = self.require_node(node).await?;
        let now = self.clock.now();
        let mut failed = record.clone();
        failed.boot = NodeBootRecord {
            timeline: report.timeline.clone(),
            failure: Some(BootFailure {
                phase: report.phase.clone(),
                exit_status: report.exit_status,
                journal: report.journal.clone(),
                reported_at: now,
            }),
        }
        .bounded();
        failed.status = NodeStatus::Error;
        failed.health = NodeHealth::Unhealthy;
        failed.updated_at = now;
        self.store.put_node(&failed).await?;
        tracing::warn!(node = %node, phase = %report.phase, exit_status = report.exit_status, "a node's boot failed; deleting its VM");
        // A failed delete keeps the node, `destroying`, for the node sweep.
        let _ = self.destroy_node(&failed).await;
        self.wake_tasks_on(node).await
    }

    pub(super) async fn require_workspace(
        &self,
        workspace: &WorkspaceId,
    ) -> Result<crate::store::WorkspaceRecord, Error> {
        self.store
            .get_workspace(workspace)
            .await?
            .ok_or_else(|| missing(format_args!("workspace {workspace}")))
    }

    pub(super) async fn require_node(&self, node: &NodeId) -> Result<NodeRecord, Error> {
        self.store
            .get_node(node)
            .await?
            .ok_or_else(|| missing(format_args!("node {node}")))
    }

    /// Callback: a heartbeat with metrics. Returns a fresh token past half-life.
    ///
    /// # Errors
    /// As [`ControlPlane::node_ready`].
    pub async fn heartbeat(
        &self,
        token: &str,
        node: &NodeId,
        metrics: &NodeMetrics,
    ) -> Result<HeartbeatReply, Error> {
        let claims = self
            .signer()
            .verify(token, TokenScope::Node, node.as_str(), self.clock.now())
            .map_err(Error::Unauthorized)?;
        self.require_node(node).await?;
        let now = self.clock.now();
        // As in `node_ready`: a heartbeat races warm claims and releases, so it
        // writes its own fields only.
        let beat = NodeBeat {
            at: now,
            ready_version: None,
            boot_timeline: Vec::new(),
        };
        self.store.record_node_beat(node, &beat).await?;
        tracing::debug!(node = %node, load = metrics.cpu_load_avg1, memory = metrics.memory_percent, disk = metrics.disk_percent, "heartbeat");
        Ok(HeartbeatReply {
            refreshed_token: claims
                .needs_refresh(now)
                .then(|| self.issue_node_token(node)),
        })
    }

    /// Callback: a workspace is ready (or failed).
    ///
    /// # Errors
    /// [`Error::Unauthorized`] for a token that is not this workspace's; `not_found`;
    /// [`Error::TaskEnded`] for a failure reported once the task has ended; store
    /// failures.
    pub async fn workspace_ready(
        &self,
        token: &str,
        workspace: &WorkspaceId,
        report: &WorkspaceReport,
    ) -> Result<(), Error> {
        self.verify(token, TokenScope::Workspace, workspace.as_str())?;
        let record = self.require_workspace(workspace).await?;
        if let WorkspaceReport::Failed { .. } = report {
            let task = self.require_task(&record.task_id).await?;
            if task.status.is_terminal() {
                return Err(self.refuse_ended(&task, "workspace failure").await);
            }
        }
        if self.apply_workspace_report(&record, report).await? {
            self.wake(&record.task_id).await?;
        }
        Ok(())
    }

    /// Applies a report on workspace `current` (as the caller just read it); returns
    /// whether it made the workspace ready. The runner, which applies what it polled,
    /// moves on by itself; a callback wakes the task.
    pub(crate) async fn apply_workspace_report(
        &self,
        current: &crate::store::WorkspaceRecord,
        report: &WorkspaceReport,
    ) -> Result<bool, Error> {
        let now = self.clock.now();
        let (task_id, workspace) = (&current.task_id, &current.id);
        match report {
            WorkspaceReport::Preparing => Ok(false),
            WorkspaceReport::Ready {
                effective_profile,
                recovery,
            } => {
                // A report can arrive late (the runner may have polled the same news and
                // the task finished since): it must not bring a stopped workspace back,
                // or its slot would be held for good and its node never go warm. The
                // store refuses that atomically (a check here alone would race the
                // release); the caller's read spares the task a needless wake-up.
                if current.status == WorkspaceStatus::Stopped {
                    return Ok(false);
                }
                let status = if *recovery {
                    WorkspaceStatus::Recovery
                } else {
                    WorkspaceStatus::Running
                };
                self.store
                    .update_workspace(workspace, status, Some(effective_profile.clone()), now)
                    .await?;
                Ok(true)
            }
            WorkspaceReport::Failed { error } => {
                let task = self.require_task(task_id).await?;
                self.finish(
                    &task,
                    TaskStatus::Failed,
                    Some(error.clone()),
                    "node-agent",
                    "the workspace failed",
                )
                .await?;
                Ok(false)
            }
        }
    }

    /// Callback: something happened in a workspace's agent session.
    ///
    /// # Errors
    /// As [`ControlPlane::workspace_ready`]; [`Error::TaskEnded`] (`conflict`, with a
    /// [`TaskEventKind::Refused`] event) once the workspace's task has ended.
    pub async fn session_event(
        &self,
        token: &str,
        workspace: &WorkspaceId,
        report: &SessionCallback,
    ) -> Result<(), Error> {
        self.verify(token, TokenScope::Workspace, workspace.as_str())?;
        let record = self.require_workspace(workspace).await?;
        // A task that has ended is closed: nothing its agent says afterwards
        // changes it (a late output would replace its branch, commit and pull
        // request).
        let task = self.require_task(&record.task_id).await?;
        if task.status.is_terminal() {
            let callback = match report {
                SessionCallback::Event(_) => "session event",
                SessionCallback::Report(_) => "session report",
                SessionCallback::Output(_) => "output",
            };
            return Err(self.refuse_ended(&task, callback).await);
        }
        match report {
            SessionCallback::Event(event) => {
                self.emit(
                    &record.task_id,
                    TaskEventKind::Session {
                        event: event.clone(),
                    },
                )
                .await?;
                Ok(())
            }
            SessionCallback::Report(report) => self.apply_session_report(&task, report).await,
            SessionCallback::Output(output) => {
                self.store
                    .update_task(
                        &record.task_id,
                        &TaskUpdate {
                            output: Some(Some(output.clone())),
                            ..TaskUpdate::default()
                        },
                        self.clock.now(),
                    )
                    .await?;
                Ok(())
            }
        }
    }

    /// The GitHub access of the live task a workspace serves: what a VM agent's git
    /// credential or pull request request may be answered with.
    ///
    /// # Errors
    /// [`Error::Unauthorized`] for a token that is not this workspace's; `not_found`
    /// for a missing workspace, task or installation link; `invalid_config` when the
    /// task has finished or its repository is not behind a GitHub installation.
    pub async fn workspace_github(
        &self,
        token: &str,
        workspace: &WorkspaceId,
    ) -> Result<WorkspaceGithub, Error> {
        let task = self
            .live_workspace_task(token, workspace, "it gets no more credentials")
            .await?;
        let access = task.spec.github.clone().ok_or_else(|| {
            invalid(
                "workspace",
                format!(
                    "the repository of task {} is not behind a GitHub installation",
                    task.id
                ),
            )
        })?;
        let repo = RepoRef::parse_https(&task.spec.repo)?;
        let installation = self
            .store
            .get_github_installation(&access.installation)
            .await?
            .ok_or_else(|| {
                missing(format_args!(
                    "GitHub installation link {}",
                    access.installation
                ))
            })?;
        Ok(WorkspaceGithub {
            task,
            repo,
            installation,
        })
    }

    /// The repository a live task's workspace may fetch from and push to through
    /// the control plane's git route: the task's repository, when it is a path on
    /// this machine ([`crate::Repository::Local`]), and the one branch it may push.
    ///
    /// # Errors
    /// [`Error::Unauthorized`] for a token that is not this workspace's; `not_found`
    /// for a missing workspace or task; `invalid_config` when the task has finished
    /// or its repository is not a local path.
    pub async fn workspace_repository(
        &self,
        token: &str,
        workspace: &WorkspaceId,
    ) -> Result<ServedRepository, Error> {
        let task = self
            .live_workspace_task(token, workspace, "its repository is no longer served")
            .await?;
        match crate::repository::parse_repository(&task.spec.repo) {
            Ok(crate::Repository::Local { path }) => Ok(ServedRepository {
                path: path.into(),
                output_branch: output_branch(&task.spec.prompt, &task.id),
            }),
            _ => Err(invalid(
                "workspace",
                format!(
                    "the repository of task {} is not a path on this machine; the control plane serves no other",
                    task.id
                ),
            )),
        }
    }

    /// The task a workspace serves, for that workspace's `token`, while it is live;
    /// `invalid_config` saying `refusal` once it has ended.
    pub(super) async fn live_workspace_task(
        &self,
        token: &str,
        workspace: &WorkspaceId,
        refusal: &str,
    ) -> Result<TaskRecord, Error> {
        self.verify(token, TokenScope::Workspace, workspace.as_str())?;
        let record = self.require_workspace(workspace).await?;
        let task = self.require_task(&record.task_id).await?;
        if task.status.is_terminal() {
            return Err(invalid(
                "workspace",
                format!("task {} has finished; {refusal}", task.id),
            ));
        }
        Ok(task)
    }

    pub(crate) async fn apply_session_report(
        &self,
        task: &TaskRecord,
        report: &SessionReport,
    ) -> Result<(), Error> {
        match report {
            SessionReport::Running => Ok(()),
            SessionReport::Stopped {
                reason,
                last_message,
            } => {
                if let Some(text) = last_message {
                    self.emit(
                        &task.id,
                        TaskEventKind::LastMessage {
                            text: redact(text).into_owned(),
                        },
                    )
                    .await?;
                }
                let to = reason.outcome();
                let error = (to == TaskStatus::Failed).then(|| TaskError {
                    category: ErrorCategory::InvalidConfig,
                    message: stop_message(*reason),
                });
                self.finish(
                    task,
                    to,
                    error,
                    "node-agent",
                    &format!("the agent stopped: {reason:?}"),
                )
                .await?;
                Ok(())
            }
            SessionReport::Failed { error } => {
                self.finish(
                    task,
                    TaskStatus::Failed,
                    Some(error.clone()),
                    "node-agent",
                    "the agent session failed",
                )
                .await?;
                Ok(())
            }
        }
    }
}
