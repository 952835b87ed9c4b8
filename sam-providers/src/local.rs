//! Nodes as local processes: the embedded default for running everything on one machine.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use async_trait::async_trait;
use sam_core::{
    Catalog, ErrorCategory, Labels, Provider, ProviderCapabilities, ProviderError, ProviderKind,
    VmId, VmInstance, VmSpec,
};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::process::{Launch, NODE_LOG, ProcessNodes, io_error, write_private_file};

const KIND: ProviderKind = ProviderKind::Local;

/// Settings of [`LocalProvider`].
///
/// The command runs once per node, in the node's data directory, with these
/// variables set: `SAM_NODE_ID`, `SAM_VM_ID`, `SAM_PORT` (a free loopback port),
/// `SAM_DATA_DIR`, and `SAM_USER_DATA` (the path of a file holding the spec's user
/// data, readable by its owner only). In `args`, `{port}`, `{data_dir}`, `{node_id}`
/// and `{vm_id}` are replaced by the same values.
///
/// Nothing else of this process's environment reaches the node: it starts from an
/// empty environment with only the allow-list of [`sam_core::environment`] (and
/// `SSH_AUTH_SOCK`, for git over SSH), so the control plane's tokens, credential key
/// and cloud keys never reach a node nor the agents it runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LocalConfig {
    /// Where the state file and one directory per node live.
    pub root_dir: PathBuf,
    /// The program each node runs (the CLI points it at `sam-vm-agent`).
    pub command: PathBuf,
    /// Its arguments, with placeholders.
    #[serde(default)]
    pub args: Vec<String>,
}

impl LocalConfig {
    /// A config running `command` without arguments, keeping state under `root_dir`.
    pub fn new(root_dir: impl Into<PathBuf>, command: impl Into<PathBuf>) -> Self {
        Self {
            root_dir: root_dir.into(),
            command: command.into(),
            args: Vec::new(),
        }
    }

    /// Reads `SAM_LOCAL_ROOT` and `SAM_LOCAL_COMMAND` (default `sam-vm-agent`).
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] when `SAM_LOCAL_ROOT` is missing.
    pub fn from_env() -> Result<Self> {
        let root = crate::env_var(KIND, "SAM_LOCAL_ROOT")?;
        let command = std::env::var("SAM_LOCAL_COMMAND").unwrap_or_else(|_| "sam-vm-agent".into());
        Ok(Self::new(root, command))
    }
}

/// Runs each node as a local process on a loopback port with its own data directory.
///
/// The VMs' labels and processes are kept in `<root_dir>/state.json`, so `get_vm`
/// and `list_vms` see the nodes of an earlier control-plane process; creates and
/// deletes hold an exclusive lock on `<root_dir>/state.lock`, so several processes
/// may share one root. `delete_vm`
/// kills the node's process group and removes its directory. Linux only (it reads
/// `/proc` to tell a live process from a reused pid).
#[derive(Debug)]
pub struct LocalProvider {
    config: LocalConfig,
    catalog: Catalog,
    nodes: ProcessNodes,
}

impl LocalProvider {
    /// Validates the config and creates the root directory.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for an empty command or root; [`Error::Setup`] when
    /// the root directory cannot be created.
    pub fn new(config: LocalConfig) -> Result<Self> {
        if config.command.as_os_str().is_empty() {
            return Err(Error::config(KIND, "command", "must not be empty"));
        }
        let nodes = ProcessNodes::new(KIND, &config.root_dir)?;
        Ok(Self {
            config,
            catalog: crate::catalog(KIND, &[]),
            nodes,
        })
    }

    /// Writes the user data, then starts the node's process.
    fn spawn(&self, spec: &VmSpec, launch: &Launch<'_>) -> Result<Child, ProviderError> {
        let data_dir = launch.data_dir;
        // The user data holds the node's token: readable by its owner only.
        write_private_file(&data_dir.join("user-data"), spec.user_data.as_bytes())
            .map_err(|e| io_error(KIND, "write the user data", e))?;
        let port_text = launch.port.to_string();
        let dir_text = data_dir.display().to_string();
        let args = self.config.args.iter().map(|a| {
            a.replace("{port}", &port_text)
                .replace("{data_dir}", &dir_text)
                .replace("{node_id}", spec.node_id.as_str())
                .replace("{vm_id}", launch.id)
        });
        let log = std::fs::File::create(data_dir.join(NODE_LOG))
            .map_err(|e| io_error(KIND, "create the node log", e))?;
        let log_err = log
            .try_clone()
            .map_err(|e| io_error(KIND, "create the node log", e))?;
        let mut command = Command::new(&self.config.command);
        command
            .args(args)
            .current_dir(data_dir)
            .env_clear()
            .envs(node_env())
            .env("SAM_NODE_ID", spec.node_id.as_str())
            .env("SAM_VM_ID", launch.id)
            .env("SAM_PORT", &port_text)
            .env("SAM_DATA_DIR", data_dir)
            .env("SAM_USER_DATA", data_dir.join("user-data"))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        command.spawn().map_err(|e| {
            let category = if e.kind() == std::io::ErrorKind::NotFound {
                ErrorCategory::InvalidConfig
            } else {
                ErrorCategory::Unknown
            };
            ProviderError::new(
                KIND,
                category,
                format!("could not start {}", self.config.command.display()),
            )
            .with_source(e)
        })
    }
}

/// What a node keeps of this process's environment: the allow-list, and the SSH
/// agent's socket for its git processes.
fn node_env() -> Vec<(std::ffi::OsString, std::ffi::OsString)> {
    sam_core::environment::inherited(
        std::env::vars_os(),
        sam_core::environment::Inherit::WithSshAgent,
    )
}

#[async_trait]
impl Provider for LocalProvider {
    fn kind(&self) -> ProviderKind {
        KIND
    }

    fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    fn capabilities(&self) -> ProviderCapabilities {
        ProviderCapabilities::default()
    }

    async fn check_credentials(&self) -> Result<(), ProviderError> {
        // No credentials: check that the state is readable instead.
        self.nodes.load().await.map(|_| ())
    }

    async fn create_vm(&self, spec: &VmSpec) -> Result<VmInstance, ProviderError> {
        self.nodes
            .create(spec, |launch| self.spawn(spec, &launch))
            .await
    }

    async fn poll_create(&self, vm: &VmInstance) -> Result<VmInstance, ProviderError> {
        self.nodes.poll_create(vm).await
    }

    async fn get_vm(&self, id: &VmId) -> Result<Option<VmInstance>, ProviderError> {
        self.nodes.get(id).await
    }

    async fn delete_vm(&self, id: &VmId) -> Result<(), ProviderError> {
        self.nodes.delete(id).await
    }

    async fn list_vms(&self, labels: &Labels) -> Result<Vec<VmInstance>, ProviderError> {
        self.nodes.list(labels).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sam_core::VmState;
    use sam_core::testkit::provider::{spec, wait_running};
    use std::path::Path;

    /// A node program that runs until killed.
    fn sleeper(root: &Path) -> LocalConfig {
        LocalConfig {
            root_dir: root.to_path_buf(),
            command: "/bin/sh".into(),
            args: vec!["-c".into(), "echo port={port} >&2; exec sleep 60".into()],
        }
    }

    /// Keeps the temporary root alive as long as the provider.
    #[derive(Debug)]
    struct Fixture {
        provider: LocalProvider,
        _root: tempfile::TempDir,
    }

    impl std::ops::Deref for Fixture {
        type Target = LocalProvider;
        fn deref(&self) -> &LocalProvider {
            &self.provider
        }
    }

    async fn fixture() -> Fixture {
        let root = tempfile::tempdir().expect("temp dir");
        let provider = LocalProvider::new(sleeper(root.path())).expect("valid config");
        Fixture {
            provider,
            _root: root,
        }
    }

    mod conformance {
        sam_core::provider_conformance!(super::fixture());
    }

    #[tokio::test]
    async fn state_survives_a_restart_and_delete_stops_the_process() {
        let root = tempfile::tempdir().expect("temp dir");
        let first = LocalProvider::new(sleeper(root.path())).expect("valid");
        let spec = spec(&first, "restart");
        let vm = first.create_vm(&spec).await.expect("create");
        let vm = wait_running(&first, &vm).await;
        let record = first.nodes.load().await.expect("state").vms[vm.id.as_str()].clone();
        let user_data = record.data_dir.join("user-data");
        assert!(user_data.exists());
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&user_data).unwrap().permissions(),
        );
        assert_eq!(
            mode & 0o777,
            0o600,
            "the user data holds the token: owner only"
        );

        let second = LocalProvider::new(sleeper(root.path())).expect("valid");
        let listed = second.list_vms(&spec.labels).await.expect("list");
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].state, VmState::Running);
        assert_eq!(listed[0].labels, spec.labels);

        second.delete_vm(&vm.id).await.expect("delete");
        assert!(!record.data_dir.exists(), "the node directory is removed");
        assert_eq!(first.get_vm(&vm.id).await.expect("get"), None);
        // SIGKILL lands asynchronously; the first instance started the process, so it
        // reaps it and sees it gone within a moment.
        let mut alive = true;
        for _ in 0..100 {
            alive = first.nodes.is_alive(&record);
            if !alive {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(!alive, "the process was killed");
    }

    /// The names a node's environment holds: what it is given, the allow-list, and
    /// what the shell that records it adds itself.
    fn allowed_in_node(name: &str) -> bool {
        sam_core::environment::is_inherited(name, sam_core::environment::Inherit::WithSshAgent)
            || [
                "SAM_NODE_ID",
                "SAM_VM_ID",
                "SAM_PORT",
                "SAM_DATA_DIR",
                "SAM_USER_DATA",
            ]
            .contains(&name)
            || ["PWD", "OLDPWD", "SHLVL", "_"].contains(&name)
    }

    /// The node starts from an empty environment: none of this process's variables
    /// reaches it besides the allow-list. Cargo gives every test process its
    /// `CARGO_*` variables, which stand in for the control plane's secrets here.
    #[tokio::test]
    async fn a_node_gets_only_its_own_variables_and_the_allow_list() {
        assert!(
            std::env::var_os("CARGO_MANIFEST_DIR").is_some(),
            "the test runs under cargo, which sets CARGO_MANIFEST_DIR"
        );
        let root = tempfile::tempdir().expect("temp dir");
        let config = LocalConfig {
            root_dir: root.path().to_path_buf(),
            command: "/bin/sh".into(),
            args: vec![
                "-c".into(),
                "env > node-env.tmp && mv node-env.tmp node-env; exec sleep 60".into(),
            ],
        };
        let provider = LocalProvider::new(config).expect("valid");
        let vm = provider
            .create_vm(&spec(&provider, "env"))
            .await
            .expect("create");
        let record = provider.nodes.load().await.expect("state").vms[vm.id.as_str()].clone();
        let dump = record.data_dir.join("node-env");
        let mut env = None;
        for _ in 0..500 {
            if let Ok(text) = std::fs::read_to_string(&dump) {
                env = Some(text);
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        provider.delete_vm(&vm.id).await.expect("delete");
        let env = env.expect("the node recorded its environment");
        let names: Vec<&str> = env
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, _)| k)
            .collect();
        for name in &names {
            assert!(allowed_in_node(name), "{name} reached the node:\n{env}");
        }
        for name in ["SAM_NODE_ID", "SAM_USER_DATA", "SAM_PORT", "PATH"] {
            assert!(names.contains(&name), "the node has {name}:\n{env}");
        }
    }

    #[tokio::test]
    async fn stop_nodes_stops_every_node_of_the_root_from_another_instance() {
        let root = tempfile::tempdir().expect("temp dir");
        let provider = LocalProvider::new(sleeper(root.path())).expect("valid");
        let a = provider
            .create_vm(&spec(&provider, "a"))
            .await
            .expect("create");
        let b = provider
            .create_vm(&spec(&provider, "b"))
            .await
            .expect("create");
        let records = provider.nodes.load().await.expect("state").vms;
        let mut stopped = crate::stop_nodes(KIND, root.path()).await.expect("stop");
        stopped.sort();
        let mut ids = vec![a.id, b.id];
        ids.sort();
        assert_eq!(stopped, ids);
        assert!(provider.list_vms(&Labels::new()).await.unwrap().is_empty());
        for record in records.values() {
            assert!(!record.data_dir.exists());
            let mut alive = true;
            for _ in 0..100 {
                alive = provider.nodes.is_alive(record);
                if !alive {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            assert!(!alive, "the node process was killed");
        }
        let empty = tempfile::tempdir().expect("temp dir");
        assert!(
            crate::stop_nodes(KIND, empty.path())
                .await
                .unwrap()
                .is_empty()
        );
    }

    #[tokio::test]
    async fn a_missing_command_is_invalid_config() {
        let root = tempfile::tempdir().expect("temp dir");
        let config = LocalConfig::new(root.path(), root.path().join("no-such-program"));
        let provider = LocalProvider::new(config).expect("valid");
        let error = provider
            .create_vm(&spec(&provider, "missing"))
            .await
            .expect_err("cannot start");
        assert_eq!(error.category(), ErrorCategory::InvalidConfig);
        assert!(
            provider
                .list_vms(&Labels::new())
                .await
                .expect("list")
                .is_empty()
        );
    }
}
