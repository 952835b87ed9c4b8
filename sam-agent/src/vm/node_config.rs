//! How a VM agent process learns who it is: the node's side of [`NodeConfig`].
//!
//! [`NodeConfig::parse`] and [`NodeConfig::read`] read cloud-init's `agent.json`,
//! [`NodeConfig::from_local_env`] a local-provider node's user data (`SAM_USER_DATA`,
//! with `SAM_PORT` and `SAM_DATA_DIR`).
//! [`NodeConfig::agent_config`] turns either into a [`VmAgentConfig`], and
//! [`NodeConfig::runtime`] chooses the workspace runtime from the node's `role`
//! (`docker` or `host`, the host runtime when absent) and its `agent_user` (agents
//! and git run as that account; as the agent's own when absent, as under the local
//! provider). Both are resolved when the agent starts: an unknown role or a missing
//! user stops it there, before it reports ready.
//!
//! The type itself is a wire format (`wire::node_config`): the control plane writes
//! it and the node reads it. Its methods live here, in a second `impl` block, so
//! that the control plane's build does not compile the agent they start; they are
//! the only `impl` of the type outside its own module.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sam_core::{NodeRole, Secret};

use crate::error::{Error, Result};
use crate::vm::acp::AgentCommand;
use crate::vm::git::GitConfig;
use crate::vm::http::{VmAgent, VmAgentConfig};
use crate::vm::runtime::{DockerRuntime, HostRuntime, WorkspaceRuntime};
use crate::vm::storage::{SqliteStorage, Storage};
use crate::vm::user::AgentUser;
use crate::wire::node_config::{DEFAULT_DATA_DIR, DEFAULT_LIGHTWEIGHT_IMAGE, NodeConfig};

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
    /// demo agent ([`crate::vm::demo::command`]), plus this configuration's agents; the
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
        config.agents.insert(
            crate::vm::demo::DEMO_AGENT.to_owned(),
            crate::vm::demo::command(),
        );
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
