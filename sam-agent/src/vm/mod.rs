//! The VM agent: what runs on a node (the `vm` feature, on by default).
//!
//! - **HTTP API** ([`http`]): [`VmAgent`] serves the agent's routes
//!   ([`crate::wire::agent_api`]), prepares workspaces with a [`WorkspaceRuntime`],
//!   hosts one [`AcpSession`] per workspace, and reports to the control plane through
//!   [`Callbacks`] ([`callbacks`]).
//! - **ACP session host** ([`acp`]): [`AcpSession`] implements
//!   [`sam_core::AgentSession`] over the Agent Client Protocol for any
//!   [`AgentLauncher`].
//! - **Workspace runtimes** ([`runtime`]): [`HostRuntime`] and [`DockerRuntime`],
//!   with git ([`git`]), devcontainers ([`devcontainer`]) and the agent user
//!   ([`user`]).
//! - **What the node records** : the boot timeline ([`boot_log`]), resource
//!   snapshots ([`monitor`]), the event log ([`events`]) and where both are kept
//!   ([`storage`]).
//! - **Starting a node** ([`node_config`]): the node's side of
//!   [`NodeConfig`](crate::wire::NodeConfig).
//! - **Agents for tests and demos**: a scripted ACP agent ([`fake`]) and the offline
//!   quickstart's demo agent ([`demo`]).

pub mod acp;
pub mod boot_log;
pub mod callbacks;
pub mod demo;
pub mod devcontainer;
pub mod events;
pub mod fake;
pub mod git;
pub mod http;
pub mod monitor;
pub mod node_config;
pub mod runtime;
pub mod storage;
pub mod user;

pub use acp::{
    AcpOptions, AcpSession, AgentCommand, AgentIo, AgentLauncher, CrashPolicy, PermissionMode,
    SYSTEM_PROMPT_META_AGENTS, SessionSettings,
};
pub use callbacks::{Callbacks, CallbacksConfig};
pub use events::{EventLog, MemoryEventLog, SqliteEventLog};
pub use http::{VmAgent, VmAgentConfig};
pub use node_config::NodeRuntime;
pub use runtime::{DockerRuntime, HostRuntime, WorkspaceRuntime};
pub use storage::{SqliteStorage, Storage};
pub use user::AgentUser;
