//! The bodies the VM agent and the control plane exchange, and nothing else.
//!
//! Both sides import this module and neither imports the other, so a body cannot
//! drift apart between its sender and its reader. It imports nothing else of this
//! crate (only `sam-core`, `serde` and the HTTP types of the error answer), and it
//! is compiled with and without the `vm` feature.
//!
//! - **The agent's API** ([`agent_api`]): control plane → VM agent, with management
//!   tokens ([`management_signer`]); [`CreateWorkspace`], [`StartSession`] and their
//!   views, and the [`AgentEvent`]s of `GET /v1/events`.
//! - **The callbacks** ([`callback_api`]): VM agent (or its boot script) → control
//!   plane; [`NodeReady`], [`Heartbeat`], [`BootFailed`], and git's
//!   [`GitCredentialRequest`].
//! - **Failures** ([`api_error`]): every server answers an [`ApiError`], an
//!   [`ErrorBody`] with the status of its category.
//! - **The boot timeline** ([`boot_timeline`]): [`BootTimeline`], parsed from the boot
//!   script's markers on the node (in its ready callback) and on the control plane
//!   (in a failed boot's report).
//! - **The node's configuration** ([`node_config`]): [`NodeConfig`], written by the
//!   control plane or cloud-init and read by the node's agent.

use sam_core::Secret;
use serde::Serializer;

pub mod agent_api;
pub mod api_error;
pub mod boot_timeline;
pub mod callback_api;
pub mod node_config;

pub use agent_api::{
    AgentEnv, AgentEvent, CreateWorkspace, EventLevel, EventsQuery, Health, MANAGEMENT_AUDIENCE,
    MANAGEMENT_TOKEN_TTL, MAX_EVENTS, ProfileRequest, SessionView, StartSession, WorkspaceView,
    management_signer, parse_profile,
};
pub use api_error::{ApiError, ErrorBody, classify_status, parse_body, path_id, status_for};
pub use boot_timeline::{BootPhase, BootTimeline};
pub use callback_api::{
    BOOT_FAILED_EVENT, BootFailed, GitCredentialRequest, GitCredentialResponse, Heartbeat,
    HeartbeatResponse, NodeReady, PullRequestCreated, SERVED_REPO_SEGMENT,
};
pub use node_config::{AgentProgram, NodeConfig};

/// Serializes a secret where the wire needs it; only the API's bodies do this.
fn expose<S: Serializer>(secret: &Secret, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(secret.expose())
}

fn expose_option<S: Serializer>(secret: &Option<Secret>, serializer: S) -> Result<S::Ok, S::Error> {
    match secret {
        Some(s) => serializer.serialize_some(s.expose()),
        None => serializer.serialize_none(),
    }
}
