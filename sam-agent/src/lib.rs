//! # sam-agent
//!
//! The SAM VM agent as a library.

pub mod acp;
pub mod boot;
pub mod devcontainer;
pub mod error;
pub mod fake;
pub mod monitor;
pub mod runtime;

pub use acp::{
    AcpOptions, AcpSession, AgentCommand, AgentIo, AgentLauncher, CrashPolicy, PermissionMode,
};
pub use error::{Error, Result};
pub use runtime::{DockerRuntime, HostRuntime, WorkspaceRuntime};
