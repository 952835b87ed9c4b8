//! The node's configuration, [`NodeConfig`]: what the control plane (or cloud-init)
//! writes for a node and what its VM agent reads when it starts.
//!
//! Two sources, one format (JSON):
//! - **cloud nodes**: cloud-init writes `/etc/sam/agent.json` (`node_id`,
//!   `control_plane_url`, `callback_token_file`, `port`, and fields the agent does
//!   not need) and the node token in a root-only file; the agent's unit runs
//!   `sam-vm-agent --config /etc/sam/agent.json --callback-token-file /etc/sam/callback-token`.
//! - **local nodes**: the local provider starts the agent with `SAM_USER_DATA` (a
//!   file holding the user data `plane::LocalBoot` rendered: the same fields, with
//!   the token inline), `SAM_PORT` and `SAM_DATA_DIR`.
//!
//! What the node does with it (parsing, the token, the runtime its role selects) is
//! the VM side's (`vm::node_config`), so the control plane writes this type without
//! compiling the agent.

use std::collections::BTreeMap;
use std::path::PathBuf;

use sam_core::{NodeId, NodeRole, Secret};
use serde::{Deserialize, Serialize};
use url::Url;

/// The agent's port when the configuration names none.
pub const DEFAULT_PORT: u16 = 8080;

/// Where a cloud node keeps its workspaces when the configuration names no data
/// directory.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/sam";

/// The image of the lightweight profile on a `docker` node whose configuration
/// names none (the one the boot pulls).
pub const DEFAULT_LIGHTWEIGHT_IMAGE: &str = sam_core::DEFAULT_LIGHTWEIGHT_IMAGE;

/// An agent command in a [`NodeConfig`]: a program and its arguments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentProgram {
    /// The program.
    pub program: String,
    /// Its arguments.
    #[serde(default)]
    pub args: Vec<String>,
}

/// A node agent's configuration; see the [module docs](self).
///
/// Unknown fields are ignored, so cloud-init may carry more than the agent reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeConfig {
    /// This node.
    pub node_id: NodeId,
    /// The control plane's base URL.
    pub control_plane_url: Url,
    /// The file holding the node token (cloud nodes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback_token_file: Option<PathBuf>,
    /// The node token itself (local nodes, whose user data is a file of their own).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "super::expose_option"
    )]
    pub callback_token: Option<Secret>,
    /// The port of the agent's HTTP API.
    #[serde(default = "default_port")]
    pub port: u16,
    /// The address the API listens on (all interfaces when absent; local nodes use
    /// loopback).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<std::net::IpAddr>,
    /// Where workspaces, the event log and the metrics live ([`DEFAULT_DATA_DIR`]
    /// when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    /// Seconds between heartbeats (60 when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_interval_secs: Option<u64>,
    /// Agents added to (or replacing) the known ones, by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub agents: BTreeMap<String, AgentProgram>,
    /// How the node runs workspaces: [`NodeRole::Docker`] (containers) or
    /// [`NodeRole::Host`] (host processes, also when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<NodeRole>,
    /// The unprivileged account agents and git run as; this process's own when
    /// absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_user: Option<String>,
    /// The lightweight profile's image on a `docker` node
    /// ([`DEFAULT_LIGHTWEIGHT_IMAGE`] when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lightweight_image: Option<String>,
}

const fn default_port() -> u16 {
    DEFAULT_PORT
}
