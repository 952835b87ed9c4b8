//! # sam-agent
//!
//! The SAM VM agent as a library: what runs on a node to prepare workspaces and host
//! coding agents.
//!
//! - **ACP session host** ([`acp`]): [`AcpSession`] implements
//!   [`sam_core::AgentSession`] over the Agent Client Protocol for any
//!   [`AgentLauncher`] — an [`AgentCommand`] (the registry knows `claude`, `codex`,
//!   `gemini` and `opencode`; any command works), or an in-process agent. It answers
//!   permission requests by [`PermissionMode`], serves file requests strictly inside
//!   the workspace, retries prompts that fail before the agent accepted them
//!   ([`sam_core::RetryPolicy::prompt`]), and recovers crashed agents with
//!   `session/load` ([`CrashPolicy`]).
//! - **Devcontainers** ([`devcontainer`]): `discover` and `select` in the
//!   specification's order, JSONC with comments and trailing commas.
//! - **Workspace runtimes** ([`runtime`]): [`HostRuntime`] (the embedded default) and
//!   [`DockerRuntime`]; the [`runtime::ReadyReport`] carries the effective profile.
//! - **Boot timeline** ([`boot`]) and **resource monitor** ([`monitor`]): parsing of
//!   the `sam-boot` phase markers, `/proc` and `statvfs`.
//! - **Event log and metrics** ([`events`], [`storage`]): [`SqliteEventLog`] and
//!   `sam-store`'s metrics store in the node's data directory ([`Storage::Sqlite`]),
//!   or a [`MemoryEventLog`] for tests and embedding ([`Storage::Memory`]).
//! - **Fake agent** ([`fake`]): a scripted ACP agent, always compiled, also shipped as
//!   the `fake-acp-agent` binary for tests.
//! - **Demo agent** ([`demo`]): a real ACP agent that needs no model (it reads the
//!   repository and writes one file), the `demo` agent of the offline quickstart.
//! - **Node configuration** ([`node_config`]): [`NodeConfig`] (cloud-init's
//!   `agent.json` or the local provider's user data), the runtime its role selects
//!   ([`NodeRuntime`]), and [`LocalBoot`].
//! - **Agent user** ([`user`]): [`AgentUser`], the unprivileged account agents and
//!   git run as on a cloud node.
//! - **The control plane's side** ([`control_plane`]): [`callback_router`] serves the
//!   callback routes over a `sam_core::ControlPlane`; [`ProviderNodeDirectory`] and
//!   [`FileNodeKeys`] let [`HttpNodeAgent`] find nodes and keep their boot tokens.
//!
//! ## Example
//! Discover a repository's devcontainer, then run one prompt turn against the fake
//! agent (in-process here; tests run the same agent as a real process):
//! ```
//! use std::sync::Arc;
//! use futures::StreamExt;
//! use sam_agent::{AcpOptions, AcpSession, devcontainer};
//! use sam_agent::fake::FakeAgentScript;
//! use sam_core::{AgentSession, SessionEvent, StopReason};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let repo = tempfile::tempdir()?;
//! std::fs::write(repo.path().join(".devcontainer.json"), r#"{ "image": "debian:12", }"#)?;
//! let config = devcontainer::select(repo.path(), None)?.expect("the repo has one");
//! assert_eq!(config.image.as_deref(), Some("debian:12"));
//!
//! // An agent whose model provider is overloaded once: the prompt is retried.
//! let agent = FakeAgentScript {
//!     fail_prompts: 1,
//!     fail_text: "API Error: 529 overloaded".to_owned(),
//!     ..FakeAgentScript::default()
//! };
//! let mut options = AcpOptions::default();
//! options.prompt_retry.initial_delay = std::time::Duration::from_millis(10);
//! let session = AcpSession::new(Arc::new(agent), options);
//! let mut events = session.events();
//! session.initialize().await?;
//! let id = session.new_session(repo.path()).await?;
//! assert_eq!(session.prompt(&id, "fix the flaky test").await?, StopReason::EndTurn);
//!
//! let mut retries = 0;
//! while let Some(event) = events.next().await {
//!     match event.event {
//!         SessionEvent::PromptRetry { .. } => retries += 1,
//!         SessionEvent::Stopped { .. } => break,
//!         _ => {}
//!     }
//! }
//! assert_eq!(retries, 1);
//! # Ok(())
//! # }
//! ```
//!
//! ## The VM agent over HTTP
//! [`VmAgent`] wires it together ([`server`]): it serves the HTTP API of [`api`]
//! (`GET /health`, and under `/v1` with a management token: workspaces, sessions,
//! cancel, events, and the exports of the event log and metrics), prepares workspaces with a [`WorkspaceRuntime`], hosts one
//! [`AcpSession`] per workspace, and reports to the control plane through
//! [`Callbacks`] (node ready with the boot timeline, heartbeats with metrics,
//! workspace ready, session events), retrying with [`callbacks::callback_policy`].
//! [`HttpNodeAgent`] is the control plane's [`sam_core::NodeAgent`] over that API.
//! Events go to an [`events::EventLog`] and resource snapshots (every minute) to a
//! metrics store, both chosen by [`VmAgentConfig::storage`].

pub mod acp;
pub mod api;
pub mod boot;
pub mod callbacks;
pub mod control_plane;
pub mod demo;
pub mod devcontainer;
pub mod error;
pub mod events;
pub mod fake;
pub mod git;
pub mod listener;
pub mod monitor;
pub mod node_agent;
pub mod node_config;
pub mod runtime;
pub mod served_repo;
pub mod server;
pub mod storage;
pub mod user;

pub use acp::{
    AcpOptions, AcpSession, AgentCommand, AgentIo, AgentLauncher, CrashPolicy, PermissionMode,
    SYSTEM_PROMPT_META_AGENTS, SessionSettings,
};
pub use callbacks::{Callbacks, CallbacksConfig};
pub use control_plane::{
    BOOT_FAILED_BODY_LIMIT, CALLBACK_PATHS, GIT_PATHS, SERVED_REPO_PATH, callback_router,
    git_router,
};
pub use error::{Error, Result};
pub use events::{EventLog, MemoryEventLog, SqliteEventLog};
pub use node_agent::{
    FileNodeKeys, HttpNodeAgent, HttpNodeAgentConfig, KeyedBoot, NodeDirectory, NodeEndpoint,
    NodeKeys, ProviderNodeDirectory, StaticNodeDirectory, StoreNodeKeys,
};
pub use node_config::{LocalBoot, NodeConfig, NodeRuntime};
pub use runtime::{DockerRuntime, HostRuntime, WorkspaceRuntime};
pub use server::{VmAgent, VmAgentConfig};
pub use storage::{SqliteStorage, Storage};
pub use user::AgentUser;
