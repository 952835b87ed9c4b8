//! The VM agent's HTTP API: its routes, their bodies and the management tokens. The
//! server (`vm::http`) and its client (`plane::node_client`) both use these types,
//! so they cannot drift apart.
//!
//! # The agent's routes
//! | route | body | answer |
//! |---|---|---|
//! | `GET /health` | | [`AgentHealth`], without a token, as soon as the agent listens |
//! | `POST /v1/workspaces` | [`CreateWorkspace`] | `202` [`WorkspaceView`] (`200` when it exists already) |
//! | `GET /v1/workspaces/{id}` | | [`WorkspaceView`] |
//! | `DELETE /v1/workspaces/{id}` | | `204`, also for an unknown workspace |
//! | `POST /v1/workspaces/{id}/sessions` | [`StartSession`] | `202` [`SessionView`] (`200` when a session exists already) |
//! | `GET /v1/workspaces/{id}/sessions` | | [`SessionView`]; `404` without a session |
//! | `POST /v1/workspaces/{id}/cancel` | | `204` |
//! | `GET /v1/events?limit=N` | | [`AgentEvent`]s, newest first |
//! | `GET /v1/events/export` | | the event log's SQLite file after a WAL checkpoint (`application/vnd.sqlite3`); `404` when the agent keeps its events in memory |
//! | `GET /v1/metrics/export` | | the metrics store's SQLite file, likewise |
//!
//! Failures answer an [`ErrorBody`](super::ErrorBody) with the status of its
//! category ([`status_for`](super::status_for)); a malformed body names the field.
//!
//! # Management tokens
//! Every `/v1` request carries `Authorization: Bearer <token>`, a
//! [`TokenSigner`] token with audience [`MANAGEMENT_AUDIENCE`], scope `node` and the
//! node id as subject, issued for minutes ([`MANAGEMENT_TOKEN_TTL`]).
//!
//! Its HMAC key is the **node token** the agent was started with
//! ([`management_signer`]). The VM holds one secret only: the
//! node-scoped callback token in a root-only file. Keying management tokens with it
//! needs no second secret on the VM, and binds the key to the node: the token of one
//! node is useless against another, and it is at least as long as the 32 bytes a
//! signer requires (claims and a 256-bit signature, base64url). The control plane
//! issued that token, so it can sign management tokens without knowing anything the
//! VM does not. A token refreshed over the heartbeat replaces the *callback* token
//! only; the management key stays the token the agent started with, so the control
//! plane must keep the token it booted the node with (see
//! `plane::NodeEndpoint::management_key`). The alternative — giving the agent the
//! control plane's own key — would let one compromised VM forge tokens for every
//! node.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sam_core::{
    AgentHealth, AgentOptions, PullRequestMode, Secret, SessionReport, TokenSigner, WorkspaceId,
    WorkspaceReport,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The audience of management tokens (control plane → VM agent).
pub const MANAGEMENT_AUDIENCE: &str = "sam-vm-agent";

/// How long a management token the client issues lives: one request's worth.
pub const MANAGEMENT_TOKEN_TTL: Duration = Duration::from_secs(300);

/// The largest `limit` `GET /v1/events` accepts; larger ones are capped.
pub const MAX_EVENTS: usize = 1000;

/// The signer that issues and verifies a node's management tokens, keyed with the
/// node token the agent started with (see the [module docs](self)).
///
/// # Errors
/// `invalid_input` when the token is shorter than 32 bytes.
pub fn management_signer(node_token: &Secret) -> Result<TokenSigner, sam_core::Error> {
    TokenSigner::new(node_token.clone(), MANAGEMENT_AUDIENCE)
}

/// The profile a control plane names (`full`, `lightweight`; `auto` and
/// `devcontainer` too), or `None` for a name the agent does not know.
pub fn parse_profile(name: &str) -> Option<ProfileRequest> {
    match name {
        "full" | "auto" => Some(ProfileRequest::Auto),
        "lightweight" => Some(ProfileRequest::Lightweight),
        "devcontainer" => Some(ProfileRequest::Devcontainer),
        _ => None,
    }
}

/// The profile a workspace request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProfileRequest {
    /// The repository's devcontainer when it has one, else the lightweight image.
    #[default]
    Auto,
    /// The lightweight image, even when the repository has a devcontainer.
    Lightweight,
    /// The repository's devcontainer; without one the workspace falls back to the
    /// lightweight image and reports `recovery`.
    Devcontainer,
}

/// `POST /v1/workspaces`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateWorkspace {
    /// The workspace.
    pub id: WorkspaceId,
    /// The repository to clone (a URL or a path on the node).
    pub repo: String,
    /// `repo` is a path on the control plane's machine, which this node cannot read:
    /// clone it from (and push to) the control plane's git route for this workspace
    /// (`…/v1/workspaces/{id}/repo`) with the workspace token.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub repo_served: bool,
    /// The branch; the repository's default when absent.
    #[serde(default)]
    pub branch: Option<String>,
    /// The requested profile.
    #[serde(default)]
    pub profile: ProfileRequest,
    /// A devcontainer configuration by name.
    #[serde(default)]
    pub devcontainer: Option<String>,
    /// The workspace-scoped token for this workspace's callbacks.
    #[serde(serialize_with = "super::expose")]
    pub token: Secret,
    /// The branch to create after the clone, commit to and push when the turn ends.
    #[serde(default)]
    pub output_branch: Option<String>,
    /// Present when the repository is behind a GitHub installation: git asks the
    /// control plane for credentials; says whether to open a pull request.
    #[serde(default)]
    pub github: Option<PullRequestMode>,
}

/// A workspace's state: the answer to `GET /v1/workspaces/{id}` and to creation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkspaceView {
    /// The workspace.
    pub id: WorkspaceId,
    /// Its state.
    pub report: WorkspaceReport,
}

/// `POST /v1/workspaces/{id}/sessions`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartSession {
    /// The agent, by a name the VM agent knows (`claude`, `codex`, …).
    pub agent: String,
    /// The prompt.
    pub prompt: String,
    /// How the agent runs (model, effort, permission mode, system-prompt addition);
    /// `None` fields leave the VM agent's defaults.
    #[serde(default)]
    pub options: AgentOptions,
    /// Environment for the agent process only: its credential.
    #[serde(default)]
    pub env: AgentEnv,
    /// The longest a prompt attempt may go without a word from the agent, in
    /// seconds; absent, the VM agent's own limit applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout_secs: Option<u64>,
}

/// Environment variables for an agent process (its credentials): sent to the VM agent
/// over its authenticated API and put in the agent's environment only; `Debug` shows
/// the names, never the values, and the VM agent neither stores nor logs them.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AgentEnv(pub BTreeMap<String, String>);

impl fmt::Debug for AgentEnv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

/// A session's state: the answer to `GET /v1/workspaces/{id}/sessions` and to
/// starting one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionView {
    /// The workspace.
    pub workspace_id: WorkspaceId,
    /// The agent.
    pub agent: String,
    /// Its state.
    pub report: SessionReport,
}

/// `GET /v1/events` query.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventsQuery {
    /// How many events, newest first; 100 by default, at most [`MAX_EVENTS`].
    #[serde(default)]
    pub limit: Option<usize>,
}

/// How important an event is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventLevel {
    /// Normal operation.
    Info,
    /// Something went wrong and was handled.
    Warn,
    /// Something failed.
    Error,
}

/// An event as the log stores it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentEvent {
    /// Increasing per log.
    pub id: u64,
    /// When it happened.
    pub at: DateTime<Utc>,
    /// How important it is.
    pub level: EventLevel,
    /// What kind of event (`workspace.ready`, `agent_session.prompt_retry`, …).
    #[serde(rename = "type")]
    pub kind: String,
    /// One sentence, redacted.
    pub message: String,
    /// The workspace it is about, if any.
    pub workspace_id: Option<WorkspaceId>,
    /// Structured detail, redacted.
    pub detail: Value,
}

/// The agent's health, re-exported for the API's users.
pub type Health = AgentHealth;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::HeartbeatResponse;

    #[test]
    fn secrets_go_on_the_wire_only_in_their_field() {
        let body = CreateWorkspace {
            id: WorkspaceId::new("ws-1").unwrap(),
            repo: "/srv/repo".to_owned(),
            repo_served: false,
            branch: None,
            profile: ProfileRequest::Auto,
            devcontainer: None,
            token: Secret::new("the-workspace-token"),
            output_branch: Some("sam/fix-1".to_owned()),
            github: Some(PullRequestMode::Open),
        };
        let json = serde_json::to_value(&body).unwrap();
        assert_eq!(json["token"], "the-workspace-token");
        assert!(!format!("{body:?}").contains("the-workspace-token"));
        let back: CreateWorkspace = serde_json::from_value(json).unwrap();
        assert_eq!(back, body);

        let reply = HeartbeatResponse {
            refreshed_token: Some(Secret::new("fresh")),
        };
        let json = serde_json::to_string(&reply).unwrap();
        assert_eq!(json, r#"{"refreshed_token":"fresh"}"#);
        assert_eq!(
            serde_json::from_str::<HeartbeatResponse>("{}").unwrap(),
            HeartbeatResponse::default()
        );
    }

    #[test]
    fn profile_names() {
        assert_eq!(parse_profile("full"), Some(ProfileRequest::Auto));
        assert_eq!(
            parse_profile("lightweight"),
            Some(ProfileRequest::Lightweight)
        );
        assert_eq!(parse_profile("huge"), None);
    }
}
