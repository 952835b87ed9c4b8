//! # sam-agent
//!
//! The SAM VM agent as a library.

pub mod acp;
pub mod devcontainer;
pub mod fake;

pub use acp::{
    AcpOptions, AcpSession, AgentCommand, AgentIo, AgentLauncher, CrashPolicy, PermissionMode,
};
