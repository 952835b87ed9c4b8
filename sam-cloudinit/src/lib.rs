//! # sam-cloudinit
//!
//! Safe node boot scripts for the SAM SDK: a typed cloud-config model and a
//! renderer that turns a validated [`NodeBoot`] into user-data.
//!
//! - **Input**: [`NodeBoot`] holds the node id, control-plane URL, callback token,
//!   agent download URL, the agent's pinned SHA-256 and port, the agents to install,
//!   swap, [`JournaldLimits`], provider and [`NodeRole`]. [`NodeBoot::render`] validates every field in one place by
//!   allow-list and reports all failures together in [`Error::Invalid`], each
//!   naming its field. There is no field for a provider credential.
//! - **Model**: [`CloudConfig`] with [`User`], [`WriteFile`] and [`Command`].
//!   Commands are argument vectors, which cloud-init quotes element by element;
//!   no input value is ever spliced into a shell line, and data such as the agent
//!   configuration travels as `write_files` content.
//! - **Output**: [`UserData`], YAML rendered by serde-saphyr with YAML 1.1 quoting
//!   (`yes`, `on`, `0600`, `12:30` stay strings), starting with
//!   [`CLOUD_CONFIG_HEADER`] and checked against [`MAX_USER_DATA_BYTES`].
//!
//! - **Control plane**: [`CloudInitBoot`] is the `sam_core::BootRenderer` for cloud
//!   nodes: it renders each node's [`NodeBoot`] with its node-scoped token.
//!
//! ## Boot order
//! `runcmd` runs the [`Phase`]s in the order of [`Phase::ALL`]: apt timers off,
//! swap, packages, Node.js, the agents' ACP adapters ([`AGENT_ADAPTERS`], pinned;
//! the devcontainer CLI on Docker nodes), journald, Docker (the last point where
//! Docker may restart), the metadata-endpoint block (every address of the node's
//! provider, [`metadata_endpoints`]), TLS, agent download (checked against its
//! pinned SHA-256), and agent start last. Each phase is logged as
//! `logger -t sam-boot "PHASE START: <name>"` and `"PHASE END: <name>"`, followed
//! by [`ALL_PHASES_COMPLETE`].
//!
//! ## Failed boots
//! `runcmd` runs under `set -e`, and each phase command runs through
//! [`PHASE_SCRIPT`]: a failing command logs `PHASE FAILED: <name> (exit <status>)`,
//! posts a [`BOOT_FAILED_EVENT`] to [`BOOT_FAILED_PATH`] with the callback token, and
//! stops the boot; no later phase runs and [`ALL_PHASES_COMPLETE`] is not logged.
//!
//! The agent's systemd unit orders itself after Docker but never requires it, so
//! a Docker restart cannot stop the agent. The callback token is written to
//! [`CALLBACK_TOKEN_PATH`] (mode 0600, root only) and passed to the agent by
//! path, never in `Environment=` or on a command line.
//!
//! ## Example
//! ```
//! use sam_cloudinit::{Error, NodeBoot, NodeRole};
//! use sam_core::Secret;
//!
//! let mut boot = NodeBoot::new(
//!     "node-42",
//!     "https://sam.example.com",
//!     Secret::new("eyJhbGciOiJIUzI1NiJ9.e30.c2lnbmF0dXJl"),
//!     "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
//! );
//! boot.swap_mb = 4096;
//! boot.role = NodeRole::Host;
//! boot.agents = vec!["claude".into()];
//!
//! let user_data = boot.render()?;
//! let text = user_data.expose();
//! assert!(text.starts_with("#cloud-config\n"));
//! assert!(text.contains("PHASE START: swap"));
//! assert!(text.contains("https://sam.example.com/v1/agent/download"));
//! assert!(text.contains("@zed-industries/claude-agent-acp@0.23.1"));
//! assert!(!text.contains("codex-acp"));
//! // The token reaches the VM only as the content of its root-only file.
//! assert!(!format!("{boot:?}").contains("eyJhbGci"));
//!
//! // Every invalid field is reported at once, by name.
//! boot.node_id = "node; rm -rf /".into();
//! boot.control_plane_url = "http://sam.example.com".into();
//! boot.swappiness = 101;
//! boot.agents = vec!["aider".into()];
//! let err = boot.render().unwrap_err();
//! assert_eq!(
//!     err.invalid_fields(),
//!     ["node_id", "control_plane_url", "agents", "swappiness"]
//! );
//! # Ok::<(), Error>(())
//! ```

mod agents;
mod boot;
mod config;
mod error;
mod phase;

pub use agents::{AGENT_ADAPTERS, AgentAdapter, DEVCONTAINER_CLI_PACKAGE, agent_adapter};
pub use boot::{
    CloudInitBoot, DEFAULT_LIGHTWEIGHT_IMAGE, JournaldLimits, MAX_CA_PEM_BYTES, MAX_IMAGE_LEN,
    MAX_SWAP_MB, MAX_SWAPPINESS, MAX_TOKEN_LEN, MAX_URL_LEN, MIN_TOKEN_LEN, NodeBoot,
};
pub use config::{
    Account, CLOUD_CONFIG_HEADER, CloudConfig, Command, FileContent, MAX_USER_DATA_BYTES, User,
    UserData, WriteFile,
};
pub use error::{Error, FieldError, Result};
pub use phase::{
    AGENT_BINARY_PATH, AGENT_CONFIG_PATH, AGENT_SHA256_PATH, AGENT_UNIT, AGENT_USER,
    ALL_PHASES_COMPLETE, BACKGROUND_SCRIPT, BASE_PACKAGES, BOOT_FAILED_EVENT, BOOT_FAILED_PATH,
    BOOT_LOG_TAG, CALLBACK_TOKEN_PATH, INSTALL_PACKAGES_SCRIPT, PHASE_FAILED, PHASE_SCRIPT, Phase,
    metadata_endpoints,
};
/// How a node runs workspaces (the VM agent reads the same value).
pub use sam_core::NodeRole;
