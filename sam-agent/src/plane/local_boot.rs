//! [`LocalBoot`]: the control plane's boot renderer for nodes of the local
//! provider, which writes a [`NodeConfig`] with the token inline.

use std::collections::BTreeMap;

use sam_core::{BootRenderer, NodeRecord, Secret};
use url::Url;

use crate::wire::node_config::{AgentProgram, DEFAULT_PORT, NodeConfig};

/// Renders local-provider user data: a [`NodeConfig`] with the token inline.
///
/// Used as the control plane's [`BootRenderer`] when nodes are local processes; the
/// node's directory is its own, so the token travels in its user-data file.
#[derive(Debug, Clone)]
pub struct LocalBoot {
    /// Where the control plane listens for callbacks.
    pub control_plane_url: Url,
    /// Seconds between heartbeats; `None` keeps the agent's default.
    pub heartbeat_interval_secs: Option<u64>,
    /// Extra agents by name (a demo agent run by another executable, say).
    pub agents: BTreeMap<String, AgentProgram>,
}

impl LocalBoot {
    /// Nodes calling back to `control_plane_url`, with the agent's defaults.
    pub fn new(control_plane_url: Url) -> Self {
        Self {
            control_plane_url,
            heartbeat_interval_secs: None,
            agents: BTreeMap::new(),
        }
    }
}

impl BootRenderer for LocalBoot {
    fn user_data(&self, node: &NodeRecord, token: &Secret) -> Result<String, sam_core::Error> {
        let config = NodeConfig {
            node_id: node.id.clone(),
            control_plane_url: self.control_plane_url.clone(),
            callback_token_file: None,
            callback_token: Some(token.clone()),
            // The local provider chooses the port and the directory (SAM_PORT, SAM_DATA_DIR).
            port: DEFAULT_PORT,
            listen: Some(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)),
            data_dir: None,
            heartbeat_interval_secs: self.heartbeat_interval_secs,
            agents: self.agents.clone(),
            // A local node runs workspaces as host processes of its own user.
            role: None,
            agent_user: None,
            lightweight_image: None,
        };
        serde_json::to_string_pretty(&config).map_err(|e| sam_core::Error::InvalidInput {
            field: "user_data",
            reason: e.to_string(),
        })
    }
}
