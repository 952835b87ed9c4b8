//! # sam-agent
//!
//! Both ends of the wire between SAM's control plane and the agent on each node, in
//! three parts:
//!
//! - **[`wire`]**: every body the two sides exchange (the agent's API and its
//!   management tokens, the callbacks, the error answer, the boot timeline, the
//!   node's configuration). It imports nothing else of this crate, so the client
//!   and the server of each route share one definition.
//! - **[`vm`]** (the `vm` feature, on by default): the VM agent, what runs on a
//!   node. [`VmAgent`] serves the agent's HTTP API, prepares workspaces with a
//!   [`WorkspaceRuntime`] ([`HostRuntime`], [`DockerRuntime`]; devcontainers, git,
//!   the agent user), hosts coding agents with the ACP session host ([`AcpSession`]
//!   for any [`AgentLauncher`], such as an [`AgentCommand`]), keeps an event log
//!   ([`SqliteEventLog`], [`MemoryEventLog`]) and metrics, and calls the control
//!   plane back. [`NodeConfig`] tells it who it is.
//! - **[`plane`]**: the control plane's side. [`HttpNodeAgent`] is its
//!   [`sam_core::NodeAgent`] over the agent's API; [`callback_router`] and
//!   [`git_router`] serve the routes nodes call.
//!
//! [`serve`] holds what both servers put around their routes (every failure is a
//! JSON [`wire::ErrorBody`]), and [`Error`] is the crate's error type.
//!
//! ## Features
//! - `vm` (default): the [`vm`] part and the `fake-acp-agent` and
//!   `sam-git-credential` binaries. Without it (`default-features = false`) a control
//!   plane gets [`wire`] and [`plane`] only, and does not compile the ACP host, the
//!   workspace runtimes, devcontainer parsing (`jsonc-parser`), the agent user
//!   (`nix`) or the node's SQLite stores (`sam-store`).
//!
//! ## Example
//! Discover a repository's devcontainer, then run one prompt turn against the fake
//! agent (in-process here; tests run the same agent as a real process):
//! ```
//! use std::sync::Arc;
//! use futures::StreamExt;
//! use sam_agent::{AcpOptions, AcpSession};
//! use sam_agent::vm::devcontainer;
//! use sam_agent::vm::fake::FakeAgentScript;
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

// The crate docs above name the `vm` part's types; without the feature they are not
// there to link to, and the docs of that build are the control plane's only.
#![cfg_attr(not(feature = "vm"), allow(rustdoc::broken_intra_doc_links))]

pub mod error;
pub mod plane;
pub mod serve;
#[cfg(feature = "vm")]
pub mod vm;
pub mod wire;

pub use error::{Error, Result};
pub use plane::{HttpNodeAgent, HttpNodeAgentConfig, callback_router, git_router};
#[cfg(feature = "vm")]
pub use vm::{
    AcpOptions, AcpSession, AgentCommand, AgentIo, AgentLauncher, DockerRuntime, EventLog,
    HostRuntime, MemoryEventLog, SqliteEventLog, VmAgent, VmAgentConfig, WorkspaceRuntime,
};
pub use wire::NodeConfig;
