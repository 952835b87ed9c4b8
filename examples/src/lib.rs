//! Shared code of the example binaries (`sam`, `sam-vm-agent`, `sam-demo-agent`),
//! so each binary stays a thin argument parser.
//!
//! - [`embedded`]: the embedded control plane (SQLite store, local provider, callback
//!   server) that `sam run` drives.
//! - [`quickstart`]: one task end to end with a progress display and a summary.
//! - [`node`]: the VM agent process, for `sam-vm-agent` and the local provider.
//! - [`client`]: the `sam` commands that talk to a `sam-server`.
//! - [`transcript`]: a task's events as lines people read (`sam logs`, `sam watch`).
//! - [`watch`]: `sam logs` and `sam watch`, which read a task's events.
//! - [`exit`]: the exit codes of `sam`.
//! - [`server`]: the control plane as an HTTP service, for `sam-server`.
//! - [`config`]: the layered configuration of `sam-server` (file, `SAM_*`, flags).
//! - [`logging`]: the log setup of the binaries (a tracing subscriber on stderr).
//! - [`roles`]: the helper roles (VM agent, demo agent, git credential helper) that
//!   `sam` and `sam-server` play when no sibling binary is installed.

pub mod client;
pub mod config;
pub mod embedded;
pub mod exit;
pub mod logging;
pub mod node;
pub mod quickstart;
pub mod roles;
pub mod server;
pub mod transcript;
pub mod watch;
