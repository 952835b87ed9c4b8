//! How a VM agent process learns who it is: [`NodeConfig`], and [`LocalBoot`], which
//! writes that configuration for nodes of the local provider.
//!
//! Two sources, one format (JSON):
//! - **cloud nodes**: cloud-init writes `/etc/sam/agent.json` (`node_id`,
//!   `control_plane_url`, `callback_token_file`, `port`, and fields the agent does
//!   not need) and the node token in a root-only file; the agent's unit runs
//!   `sam-vm-agent --config /etc/sam/agent.json --callback-token-file /etc/sam/callback-token`.
//! - **local nodes**: the local provider starts the agent with `SAM_USER_DATA` (a
//!   file holding the user data [`LocalBoot`] rendered: the same fields, with the
//!   token inline), `SAM_PORT` and `SAM_DATA_DIR` ([`NodeConfig::from_local_env`]).
//!
//! [`NodeConfig::agent_config`] turns either into a [`VmAgentConfig`], and
//! [`NodeConfig::runtime`] chooses the workspace runtime from the node's `role`
//! (`docker` or `host`, the host runtime when absent) and its `agent_user` (agents
//! and git run as that account; as the agent's own when absent, as under the local
//! provider). Both are resolved when the agent starts: an unknown role or a missing
//! user stops it there, before it reports ready.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sam_core::{BootRenderer, NodeId, NodeRecord, NodeRole, Secret};
use serde::{Deserialize, Serialize, Serializer};
use url::Url;

use crate::acp::AgentCommand;
use crate::error::{Error, Result};
use crate::git::GitConfig;
use crate::runtime::{DockerRuntime, HostRuntime, WorkspaceRuntime};
use crate::server::{VmAgent, VmAgentConfig};
use crate::storage::{SqliteStorage, Storage};
use crate::user::AgentUser;

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

fn expose_option<S: Serializer>(secret: &Option<Secret>, serializer: S) -> Result<S::Ok, S::Error> {
    match secret {
        Some(s) => serializer.serialize_some(s.expose()),
        None => serializer.serialize_none(),
    }
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
        serialize_with = "expose_option"
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

/// The workspace runtime a node's configuration selects ([`NodeConfig::runtime`]).
#[derive(Debug, Clone)]
pub enum NodeRuntime {
    /// Agents as host processes (`role = host`).
    Host(HostRuntime),
    /// Containers (`role = docker`).
    Docker(DockerRuntime),
}

impl NodeRuntime {
    /// The runtime, ready for [`VmAgent::new`].
    pub fn into_shared(self) -> Arc<dyn WorkspaceRuntime> {
        match self {
            Self::Host(runtime) => Arc::new(runtime),
            Self::Docker(runtime) => Arc::new(runtime),
        }
    }
}

impl NodeConfig {
    /// Parses a configuration file's text.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the setting and what is wrong with it (an
    /// unknown `role`, say).
    pub fn parse(text: &str) -> Result<Self> {
        let mut json = serde_json::Deserializer::from_str(text);
        let config: Self =
            serde_path_to_error::deserialize(&mut json).map_err(|e| Error::InvalidConfig {
                field: e.path().to_string(),
                reason: e.inner().to_string(),
            })?;
        json.end().map_err(|e| Error::InvalidConfig {
            field: ".".to_owned(),
            reason: e.to_string(),
        })?;
        Ok(config)
    }

    /// Reads and parses a configuration file.
    ///
    /// # Errors
    /// [`Error::Io`] when it cannot be read; as [`NodeConfig::parse`].
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        Self::parse(&text)
    }

    /// The configuration of a local-provider node: the user data at `SAM_USER_DATA`,
    /// with `SAM_PORT` and `SAM_DATA_DIR` taking precedence over what it says.
    ///
    /// # Errors
    /// [`Error::InvalidRequest`] when `SAM_USER_DATA` is unset or `SAM_PORT` is not a
    /// port; as [`NodeConfig::read`].
    pub fn from_local_env() -> Result<Self> {
        let path = std::env::var_os("SAM_USER_DATA").ok_or_else(|| {
            Error::InvalidRequest(
                "SAM_USER_DATA is not set: pass --config, or run under the local provider"
                    .to_owned(),
            )
        })?;
        let mut config = Self::read(Path::new(&path))?;
        if let Ok(port) = std::env::var("SAM_PORT") {
            config.port = port.parse().map_err(|_| {
                Error::InvalidRequest(format!("SAM_PORT {port:?} is not a port number"))
            })?;
        }
        if let Some(dir) = std::env::var_os("SAM_DATA_DIR") {
            config.data_dir = Some(PathBuf::from(dir));
        }
        Ok(config)
    }

    /// The node token: from `token_file` when given (the command line wins), else
    /// from [`NodeConfig::callback_token_file`], else inline.
    ///
    /// # Errors
    /// [`Error::InvalidRequest`] when there is no token or it is empty; [`Error::Io`]
    /// when its file cannot be read.
    pub fn token(&self, token_file: Option<&Path>) -> Result<Secret> {
        let token = match token_file.or(self.callback_token_file.as_deref()) {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    Error::io(format!("reading the token file {}", path.display()), e)
                })?;
                Secret::new(text.trim_end_matches(['\n', '\r']))
            }
            None => self.callback_token.clone().ok_or_else(|| {
                Error::InvalidRequest(
                    "the node configuration has no callback token nor token file".to_owned(),
                )
            })?,
        };
        if token.is_empty() {
            return Err(Error::InvalidRequest(
                "the callback token is empty".to_owned(),
            ));
        }
        sam_core::secret::register(token.expose());
        Ok(token)
    }

    /// Where workspaces, the event log and the metrics live.
    pub fn data_dir(&self) -> PathBuf {
        self.data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR))
    }

    /// The [`VmAgentConfig`] for this node with `token`: the known agents, plus the
    /// demo agent ([`crate::demo::command`]), plus this configuration's agents; the
    /// event log and metrics in SQLite files in the data directory.
    /// `boot_log` is the boot timeline's fallback source (`None` off a real node).
    ///
    /// # Errors
    /// [`Error::InvalidRequest`] for a zero heartbeat interval.
    pub fn agent_config(&self, token: Secret, boot_log: Option<PathBuf>) -> Result<VmAgentConfig> {
        let mut config =
            VmAgentConfig::new(self.node_id.clone(), token, self.control_plane_url.clone());
        config.boot_log = boot_log;
        config.storage = Storage::Sqlite(SqliteStorage::new(self.data_dir()));
        if let Some(secs) = self.heartbeat_interval_secs {
            if secs == 0 {
                return Err(Error::InvalidRequest(
                    "heartbeat_interval_secs must be at least 1".to_owned(),
                ));
            }
            config.heartbeat_interval = Duration::from_secs(secs);
        }
        config
            .agents
            .insert(crate::demo::DEMO_AGENT.to_owned(), crate::demo::command());
        for (name, program) in &self.agents {
            config.agents.insert(
                name.clone(),
                AgentCommand::new(program.program.clone()).with_args(program.args.clone()),
            );
        }
        Ok(config)
    }
}

impl NodeConfig {
    /// The node's role; [`NodeRole::Host`] when the configuration names none.
    pub fn role(&self) -> NodeRole {
        self.role.unwrap_or(NodeRole::Host)
    }

    /// The agent user, looked up in the node's user database; `None` when the
    /// configuration names none.
    ///
    /// # Errors
    /// As [`AgentUser::lookup`]: no such user, or root.
    pub fn agent_user(&self) -> Result<Option<AgentUser>> {
        self.agent_user
            .as_deref()
            .map(AgentUser::lookup)
            .transpose()
    }

    /// The workspace runtime this configuration selects, with workspaces under
    /// `workspaces` and git run as `git` says: [`DockerRuntime`] with the
    /// lightweight image for `role = docker`, [`HostRuntime`] for `role = host`; git
    /// and the agents run as the agent user when there is one.
    ///
    /// # Errors
    /// As [`NodeConfig::agent_user`]; [`Error::InvalidConfig`] for an empty image.
    pub fn runtime(&self, workspaces: PathBuf, git: GitConfig) -> Result<NodeRuntime> {
        let mut host = HostRuntime::new(workspaces).with_git_config(git);
        if let Some(user) = self.agent_user()? {
            host = host.with_user(user);
        }
        Ok(match self.role() {
            NodeRole::Host => NodeRuntime::Host(host),
            NodeRole::Docker => {
                let image = self
                    .lightweight_image
                    .as_deref()
                    .unwrap_or(DEFAULT_LIGHTWEIGHT_IMAGE);
                if image.trim().is_empty() || image.starts_with('-') {
                    return Err(Error::InvalidConfig {
                        field: "lightweight_image".to_owned(),
                        reason: format!("{image:?} is not an image name"),
                    });
                }
                NodeRuntime::Docker(DockerRuntime::new(host, image))
            }
        })
    }

    /// Runs the VM agent for this configuration until `shutdown` completes: binds
    /// the API's port, prepares workspaces with the runtime of
    /// [`NodeConfig::runtime`] under `<data dir>/workspaces`, keeps events and
    /// metrics in `<data dir>/events.db` and `<data dir>/metrics.db`.
    ///
    /// # Errors
    /// [`Error::Io`] when the port cannot be bound or the listener fails; as
    /// [`NodeConfig::agent_config`], [`NodeConfig::runtime`] and [`VmAgent::new`].
    pub async fn serve(
        &self,
        token: Secret,
        boot_log: Option<PathBuf>,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<()> {
        let agent_config = self.agent_config(token, boot_log)?;
        let workspaces = self.data_dir().join("workspaces");
        // Git asks this very binary for credentials (`<binary> git-credential get`).
        let mut git = GitConfig::default();
        if let Ok(exe) = std::env::current_exe() {
            git = git.with_credential_helper(exe, vec!["git-credential".to_owned()]);
        }
        // Resolved before anything is created: a bad role or user stops the agent
        // here, and the node never reports ready.
        let runtime = self.runtime(workspaces.clone(), git)?;
        std::fs::create_dir_all(&workspaces)
            .map_err(|e| Error::io(format!("creating {}", workspaces.display()), e))?;
        let agent = VmAgent::new(agent_config, runtime.into_shared()).await?;
        let ip = self
            .listen
            .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
        let listener = tokio::net::TcpListener::bind((ip, self.port))
            .await
            .map_err(|e| Error::io(format!("binding {ip}:{}", self.port), e))?;
        agent.serve(listener, shutdown).await
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cloud_inits_agent_json_with_the_token_file() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("callback-token");
        std::fs::write(&token, "the-node-token\n").unwrap();
        let json = format!(
            r#"{{"node_id":"n-1","control_plane_url":"https://cp.example.com/","callback_token_file":{:?},"port":8080,"provider":"hetzner","role":"docker","agent_user":"sam"}}"#,
            token.display()
        );
        let config = NodeConfig::parse(&json).unwrap();
        assert_eq!(config.node_id.as_str(), "n-1");
        assert_eq!(config.port, 8080);
        assert_eq!(config.token(None).unwrap().expose(), "the-node-token");
        assert_eq!(config.data_dir(), PathBuf::from(DEFAULT_DATA_DIR));
        let agent = config
            .agent_config(config.token(None).unwrap(), None)
            .unwrap();
        assert!(agent.agents.contains_key("demo") && agent.agents.contains_key("claude"));
        assert_eq!(
            agent.storage,
            Storage::Sqlite(SqliteStorage::new(DEFAULT_DATA_DIR))
        );
    }

    #[test]
    fn a_missing_token_is_an_error_not_an_empty_token() {
        let config =
            NodeConfig::parse(r#"{"node_id":"n-1","control_plane_url":"http://127.0.0.1:1/"}"#)
                .unwrap();
        assert!(config.token(None).is_err());
        assert!(NodeConfig::parse(r#"{"node_id":"n-1"}"#).is_err());
    }

    fn parse(json: &str) -> NodeConfig {
        NodeConfig::parse(json).unwrap()
    }

    fn runtime(config: &NodeConfig) -> Result<NodeRuntime> {
        config.runtime(PathBuf::from("/srv/ws"), GitConfig::default())
    }

    const BASE: &str = r#""node_id":"n-1","control_plane_url":"http://127.0.0.1:1/""#;

    #[test]
    fn the_role_selects_the_runtime() {
        // No role (a local node): the host runtime, as this process's user.
        match runtime(&parse(&format!("{{{BASE}}}"))).unwrap() {
            NodeRuntime::Host(host) => {
                assert!(host.user().is_none() && host.git().user().is_none());
            }
            other => panic!("expected the host runtime, got {other:?}"),
        }
        let host = parse(&format!(r#"{{{BASE},"role":"host"}}"#));
        assert!(matches!(runtime(&host).unwrap(), NodeRuntime::Host(_)));
        match runtime(&parse(&format!(r#"{{{BASE},"role":"docker"}}"#))).unwrap() {
            NodeRuntime::Docker(docker) => assert_eq!(docker.image(), DEFAULT_LIGHTWEIGHT_IMAGE),
            other => panic!("expected the Docker runtime, got {other:?}"),
        }
        let named = parse(&format!(
            r#"{{{BASE},"role":"docker","lightweight_image":"sam-test/rootfs:1"}}"#
        ));
        match runtime(&named).unwrap() {
            NodeRuntime::Docker(docker) => assert_eq!(docker.image(), "sam-test/rootfs:1"),
            other => panic!("expected the Docker runtime, got {other:?}"),
        }
        for image in ["", " ", "--privileged"] {
            let bad = parse(&format!(
                r#"{{{BASE},"role":"docker","lightweight_image":{image:?}}}"#
            ));
            match runtime(&bad) {
                Err(Error::InvalidConfig { field, .. }) => assert_eq!(field, "lightweight_image"),
                other => panic!("{image:?}: expected a configuration error, got {other:?}"),
            }
        }
    }

    #[test]
    fn an_unknown_role_is_a_configuration_error_naming_the_field() {
        for role in [r#""kvm""#, r#""Docker""#, "1", "null"] {
            let json = format!(r#"{{{BASE},"role":{role}}}"#);
            match NodeConfig::parse(&json) {
                // `null` is the absent role.
                Ok(config) if role == "null" => assert_eq!(config.role(), NodeRole::Host),
                Err(Error::InvalidConfig { field, reason }) => {
                    assert_eq!(field, "role", "{role}");
                    if role.starts_with('"') {
                        assert!(reason.contains("`docker` or `host`"), "{reason}");
                    }
                }
                other => panic!("{role}: expected a configuration error, got {other:?}"),
            }
        }
        match NodeConfig::parse(&format!("{{{BASE}}} trailing")) {
            Err(Error::InvalidConfig { field, .. }) => assert_eq!(field, "."),
            other => panic!("expected a configuration error, got {other:?}"),
        }
    }

    #[test]
    fn the_agent_user_is_resolved_for_both_roles_and_a_missing_one_is_an_error() {
        for role in ["host", "docker"] {
            // `nobody` stands in for `sam`, which cloud-init creates on a node.
            let config = parse(&format!(
                r#"{{{BASE},"role":"{role}","agent_user":"nobody"}}"#
            ));
            let host = match runtime(&config).unwrap() {
                NodeRuntime::Host(host) => host,
                NodeRuntime::Docker(docker) => docker.host().clone(),
            };
            assert_eq!(host.user().map(AgentUser::name), Some("nobody"), "{role}");
            assert_eq!(
                host.git().user(),
                host.user(),
                "{role}: git runs as the user"
            );
            let missing = parse(&format!(
                r#"{{{BASE},"role":"{role}","agent_user":"sam-no-such-user-7f3a"}}"#
            ));
            match runtime(&missing) {
                Err(Error::InvalidConfig { field, reason }) => {
                    assert_eq!(field, "agent_user");
                    assert!(reason.contains("sam-no-such-user-7f3a"), "{reason}");
                }
                other => panic!("{role}: expected a configuration error, got {other:?}"),
            }
        }
        let root = parse(&format!(r#"{{{BASE},"agent_user":"root"}}"#));
        assert!(matches!(runtime(&root), Err(Error::InvalidConfig { .. })));
    }

    /// The agent refuses to start, before it binds its port or reports ready, when
    /// its user does not exist.
    #[tokio::test]
    async fn serve_stops_at_a_missing_user() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = parse(&format!(
            r#"{{{BASE},"role":"host","agent_user":"sam-no-such-user-7f3a"}}"#
        ));
        config.data_dir = Some(dir.path().to_path_buf());
        let served = config
            .serve(Secret::new("node-token"), None, std::future::pending())
            .await;
        assert!(
            matches!(served, Err(Error::InvalidConfig { ref field, .. }) if field == "agent_user"),
            "{served:?}"
        );
        assert!(!dir.path().join("workspaces").exists());
    }
}
