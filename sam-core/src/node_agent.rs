//! The [`NodeAgent`] trait: how the control plane talks to the VM agent on a node.

use std::fmt::Debug;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::error::{Classify, ErrorCategory};
use crate::github::PullRequestMode;
use crate::model::{TaskId, WorkspaceId};
use crate::project::AgentOptions;
use crate::secret::Secret;
use crate::session::StopReason;
use crate::store::{NodeRecord, TaskError};

/// A failed call to a VM agent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("VM agent call failed ({category}): {message}")]
pub struct NodeAgentError {
    /// Its category (`transient` for a connection failure, `auth_error` for 401/403, …).
    pub category: ErrorCategory,
    /// One sentence, redacted.
    pub message: String,
}

impl Classify for NodeAgentError {
    fn category(&self) -> ErrorCategory {
        self.category
    }
}

/// What the VM agent says about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentHealth {
    /// The VM agent's version.
    pub version: String,
}

/// A workspace to create.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkspaceRequest {
    /// The workspace's id.
    pub workspace_id: WorkspaceId,
    /// The task it serves.
    pub task_id: TaskId,
    /// Repository URL or path.
    pub repo: String,
    /// `true` when `repo` is a path on the control plane's machine that the node
    /// cannot read itself (a QEMU VM): the VM agent then clones it from, and pushes
    /// it to, the control plane's git route for this workspace
    /// (`…/v1/workspaces/{id}/repo`) with the workspace token.
    pub repo_served: bool,
    /// Branch, if any.
    pub branch: Option<String>,
    /// Requested workspace profile.
    pub profile: Option<String>,
    /// Requested devcontainer configuration name.
    pub devcontainer: Option<String>,
    /// The workspace-scoped token the agent uses for this workspace's callbacks.
    pub token: Secret,
    /// The branch to create after the clone and push when the turn ends.
    pub output_branch: Option<String>,
    /// `Some` when the repository is behind a GitHub installation: git then asks the
    /// control plane for short-lived credentials, and this says whether to open a
    /// pull request.
    pub github: Option<PullRequestMode>,
}

/// A prompt to run in a workspace.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionRequest {
    /// The workspace.
    pub workspace_id: WorkspaceId,
    /// The agent (`claude`, `codex`, `demo`, … or a command).
    pub agent: String,
    /// The prompt.
    pub prompt: String,
    /// How the agent runs; `None` fields leave the VM agent's defaults.
    pub options: AgentOptions,
    /// Environment for the agent process only (its credential); never persisted or
    /// logged, and sent only over the node's authenticated channel.
    pub env: Vec<(String, Secret)>,
    /// The longest a prompt attempt may go without a word from the agent
    /// ([`crate::TimeoutPolicy::agent_idle`]); `None` leaves the VM agent's default.
    pub idle_timeout: Option<std::time::Duration>,
}

/// State of a workspace as the VM agent reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum WorkspaceReport {
    /// Still being prepared.
    Preparing,
    /// Ready; `recovery` when it fell back to another profile.
    Ready {
        /// The profile actually used.
        effective_profile: String,
        /// Whether it fell back.
        recovery: bool,
    },
    /// Failed.
    Failed {
        /// Why.
        error: TaskError,
    },
}

/// State of a session as the VM agent reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum SessionReport {
    /// The agent is working.
    Running,
    /// The turn ended.
    Stopped {
        /// Why.
        reason: StopReason,
        /// The agent's last message, if any.
        last_message: Option<String>,
    },
    /// The session failed (crash without resume, auth, quota, …).
    Failed {
        /// Why.
        error: TaskError,
    },
}

/// The control plane's client for VM agents.
///
/// # Contract
/// - Every call makes one request and returns; none retries or sleeps (the runner
///   decides when to call again).
/// - `health` is `Ok(None)` while the agent cannot be reached yet (a booting node),
///   not an error.
/// - `create_workspace` and `start_session` are idempotent per workspace id: asking
///   again for a workspace that exists, or a session that runs, succeeds.
/// - `workspace_status` and `session_status` are `Ok(None)` for an unknown workspace.
/// - `stop_workspace` is idempotent.
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait NodeAgent: Send + Sync + Debug {
    /// Probes the VM agent.
    ///
    /// # Errors
    /// Failures other than "not reachable yet".
    async fn health(&self, node: &NodeRecord) -> Result<Option<AgentHealth>, NodeAgentError>;

    /// Asks the VM agent to create a workspace.
    ///
    /// # Errors
    /// The classified failure.
    async fn create_workspace(
        &self,
        node: &NodeRecord,
        request: &WorkspaceRequest,
    ) -> Result<(), NodeAgentError>;

    /// Reports a workspace's state.
    ///
    /// # Errors
    /// The classified failure.
    async fn workspace_status(
        &self,
        node: &NodeRecord,
        workspace: &WorkspaceId,
    ) -> Result<Option<WorkspaceReport>, NodeAgentError>;

    /// Starts the agent session with the prompt.
    ///
    /// # Errors
    /// The classified failure.
    async fn start_session(
        &self,
        node: &NodeRecord,
        request: &SessionRequest,
    ) -> Result<(), NodeAgentError>;

    /// Reports a session's state.
    ///
    /// # Errors
    /// The classified failure.
    async fn session_status(
        &self,
        node: &NodeRecord,
        workspace: &WorkspaceId,
    ) -> Result<Option<SessionReport>, NodeAgentError>;

    /// Cancels the running prompt.
    ///
    /// # Errors
    /// The classified failure.
    async fn cancel_session(
        &self,
        node: &NodeRecord,
        workspace: &WorkspaceId,
    ) -> Result<(), NodeAgentError>;

    /// Stops and removes a workspace.
    ///
    /// # Errors
    /// The classified failure.
    async fn stop_workspace(
        &self,
        node: &NodeRecord,
        workspace: &WorkspaceId,
    ) -> Result<(), NodeAgentError>;
}
