//! The VM agent's callbacks to the control plane: their bodies and answers. The
//! callback client (`vm::callbacks`), the git credential helper (`vm::git`) and the
//! control plane's routes (`plane::routes`) all use these types.

use sam_core::{ErrorCategory, NodeMetrics, Secret};
use serde::{Deserialize, Serialize};

use super::api_error::ApiError;
use super::boot_timeline::BootTimeline;

/// `POST /v1/nodes/{id}/ready` (agent → control plane).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeReady {
    /// The agent's version.
    pub version: String,
    /// Where the node's boot time went.
    pub boot: BootTimeline,
}

/// The `event` of a [`BootFailed`] body.
pub const BOOT_FAILED_EVENT: &str = "boot_failed";

/// `POST /v1/nodes/{id}/boot-failed` (a node's boot script → control plane): the
/// body `report-boot-failure.sh` posts when a boot phase fails.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootFailed {
    /// Always [`BOOT_FAILED_EVENT`].
    pub event: String,
    /// The phase that failed.
    pub phase: String,
    /// The exit status of its failing command.
    pub exit_status: i32,
    /// The boot's markers as `journalctl -o json` prints them, one object each
    /// (empty on a node without a journal).
    #[serde(default)]
    pub journal: Vec<serde_json::Value>,
}

impl BootFailed {
    /// The report the control plane keeps: the journal's messages (an entry
    /// without a text message is kept as its JSON) and the timeline read from the
    /// journal with the VM agent's own parser.
    ///
    /// # Errors
    /// `invalid_config` (field `event`) for an event other than [`BOOT_FAILED_EVENT`].
    pub fn to_report(&self) -> Result<sam_core::BootFailureReport, ApiError> {
        if self.event != BOOT_FAILED_EVENT {
            return Err(ApiError::field(
                ErrorCategory::InvalidConfig,
                "event",
                &format!(
                    "the event must be {BOOT_FAILED_EVENT:?}, not {:?}",
                    self.event.chars().take(64).collect::<String>()
                ),
            ));
        }
        let lines: Vec<String> = self.journal.iter().map(ToString::to_string).collect();
        let timeline = BootTimeline::from_journal_json(&lines.join("\n"));
        Ok(sam_core::BootFailureReport {
            phase: self.phase.clone(),
            exit_status: self.exit_status,
            journal: self
                .journal
                .iter()
                .map(|entry| match entry.get("MESSAGE") {
                    Some(serde_json::Value::String(message)) => message.clone(),
                    _ => entry.to_string(),
                })
                .collect(),
            timeline: timeline.to_records(),
        })
    }
}

/// `POST /v1/nodes/{id}/heartbeat` (agent → control plane).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// The node's resource use.
    pub metrics: NodeMetrics,
}

/// The control plane's answer to a heartbeat.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HeartbeatResponse {
    /// A fresh node token when the current one is past half its life; it replaces
    /// the token the agent's callbacks carry.
    #[serde(default, serialize_with = "super::expose_option")]
    pub refreshed_token: Option<Secret>,
}

/// The last path segment of the route a served repository lives under
/// (`…/v1/workspaces/{id}/repo`); git appends its own paths to it.
pub const SERVED_REPO_SEGMENT: &str = "repo";

/// The body of `POST /v1/workspaces/{id}/git-credential`: what git asked about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GitCredentialRequest {
    /// `https` (or `http` to a loopback host).
    pub protocol: String,
    /// The host, with its port when git names one.
    pub host: String,
    /// The repository path, when git sends it (`credential.useHttpPath`).
    #[serde(default)]
    pub path: Option<String>,
}

/// The answer of the credential route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GitCredentialResponse {
    /// The user name git sends.
    pub username: String,
    /// The short-lived token.
    pub password: String,
    /// When it expires (RFC 3339).
    pub expires_at: chrono::DateTime<chrono::Utc>,
}

/// The answer of `POST /v1/workspaces/{id}/pull-request`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullRequestCreated {
    /// The pull request's web URL.
    pub url: String,
}
