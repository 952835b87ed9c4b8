//! Nodes as local processes: the embedded default for running everything on one machine.

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sam_core::{
    Catalog, ErrorCategory, Labels, Location, Provider, ProviderCapabilities, ProviderError,
    ProviderKind, VmId, VmInstance, VmSpec, VmState,
};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

const KIND: ProviderKind = ProviderKind::Local;
const STATE_FILE: &str = "state.json";
const LOCK_FILE: &str = "state.lock";

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

/// What the state file keeps of one node.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    name: String,
    server_type: String,
    location: Location,
    labels: Labels,
    pid: u32,
    /// The process's start time in clock ticks, so a reused pid is not mistaken for it.
    start_ticks: Option<u64>,
    port: u16,
    data_dir: PathBuf,
    created_at: DateTime<Utc>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct StateFile {
    vms: BTreeMap<String, Record>,
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
    /// Serializes read-modify-write of the state file.
    state: tokio::sync::Mutex<()>,
    /// Processes this instance started, so they are reaped, not left as zombies.
    children: Mutex<HashMap<u32, Child>>,
    next: AtomicU64,
}

fn io_error(what: &str, error: std::io::Error) -> ProviderError {
    ProviderError::new(KIND, ErrorCategory::Unknown, format!("could not {what}")).with_source(error)
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
        if config.root_dir.as_os_str().is_empty() {
            return Err(Error::config(KIND, "root_dir", "must not be empty"));
        }
        std::fs::create_dir_all(config.root_dir.join("vms")).map_err(|e| Error::Setup {
            provider: KIND,
            what: format!("the directory {}", config.root_dir.display()),
            source: e.into(),
        })?;
        Ok(Self {
            config,
            catalog: crate::catalog(KIND, &[]),
            state: tokio::sync::Mutex::new(()),
            children: Mutex::default(),
            next: AtomicU64::new(0),
        })
    }

    fn state_path(&self) -> PathBuf {
        self.config.root_dir.join(STATE_FILE)
    }

    /// Takes the exclusive lock on `<root_dir>/state.lock` for a read-modify-write
    /// of the state file, so several processes (control planes sharing one root)
    /// never lose each other's writes. Released when the returned file is dropped.
    async fn lock_state_file(&self) -> Result<std::fs::File, ProviderError> {
        let path = self.config.root_dir.join(LOCK_FILE);
        tokio::task::spawn_blocking(move || {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)?;
            file.lock()?;
            Ok(file)
        })
        .await
        .map_err(|e| {
            ProviderError::new(KIND, ErrorCategory::Unknown, "the state lock task failed")
                .with_source(e)
        })?
        .map_err(|e| io_error("lock the local state file", e))
    }

    async fn load(&self) -> Result<StateFile, ProviderError> {
        match tokio::fs::read(self.state_path()).await {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                ProviderError::new(
                    KIND,
                    ErrorCategory::Unknown,
                    "the local state file is damaged",
                )
                .with_source(e)
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(StateFile::default()),
            Err(e) => Err(io_error("read the local state file", e)),
        }
    }

    async fn save(&self, state: &StateFile) -> Result<(), ProviderError> {
        let bytes = serde_json::to_vec_pretty(state).map_err(|e| {
            ProviderError::new(
                KIND,
                ErrorCategory::Unknown,
                "could not encode the local state",
            )
            .with_source(e)
        })?;
        let tmp = self.state_path().with_extension("json.tmp");
        tokio::fs::write(&tmp, bytes)
            .await
            .map_err(|e| io_error("write the local state file", e))?;
        tokio::fs::rename(&tmp, self.state_path())
            .await
            .map_err(|e| io_error("replace the local state file", e))
    }

    fn children(&self) -> MutexGuard<'_, HashMap<u32, Child>> {
        self.children.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the record's process still runs (reaping it if this instance started it).
    fn is_alive(&self, record: &Record) -> bool {
        if let Some(child) = self.children().get_mut(&record.pid)
            && !matches!(child.try_wait(), Ok(None))
        {
            return false;
        }
        match proc_stat(record.pid) {
            Some((state, ticks)) => {
                !matches!(state, 'Z' | 'X' | 'x')
                    && (record.start_ticks.is_none() || record.start_ticks == Some(ticks))
            }
            None => false,
        }
    }

    fn instance(&self, id: &str, record: &Record) -> Result<VmInstance, ProviderError> {
        Ok(VmInstance {
            id: crate::vm_id(KIND, id.to_owned())?,
            provider: KIND,
            name: record.name.clone(),
            server_type: record.server_type.clone(),
            location: record.location.clone(),
            state: if self.is_alive(record) {
                VmState::Running
            } else {
                VmState::Stopped
            },
            labels: record.labels.clone(),
            address: Some(format!("127.0.0.1:{}", record.port)),
            created_at: Some(record.created_at),
        })
    }

    /// Kills the node's process group, if it is still the process we started.
    fn stop(&self, record: &Record) {
        // Already gone is fine: the goal is that it does not run.
        if self.is_alive(record)
            && let Some(pid) = i32::try_from(record.pid)
                .ok()
                .and_then(rustix::process::Pid::from_raw)
        {
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        }
        let mut children = self.children();
        if let Some(mut child) = children.remove(&record.pid) {
            // SIGKILL was sent; reap now if it is already gone, else on a later call.
            if matches!(child.try_wait(), Ok(None)) {
                children.insert(record.pid, child);
            }
        }
    }

    fn spawn(
        &self,
        vm_id: &str,
        spec: &VmSpec,
        data_dir: &Path,
        port: u16,
    ) -> Result<Child, ProviderError> {
        let port_text = port.to_string();
        let dir_text = data_dir.display().to_string();
        let args = self.config.args.iter().map(|a| {
            a.replace("{port}", &port_text)
                .replace("{data_dir}", &dir_text)
                .replace("{node_id}", spec.node_id.as_str())
                .replace("{vm_id}", vm_id)
        });
        let log = std::fs::File::create(data_dir.join("node.log"))
            .map_err(|e| io_error("create the node log", e))?;
        let log_err = log
            .try_clone()
            .map_err(|e| io_error("create the node log", e))?;
        let mut command = Command::new(&self.config.command);
        command
            .args(args)
            .current_dir(data_dir)
            .env_clear()
            .envs(node_env())
            .env("SAM_NODE_ID", spec.node_id.as_str())
            .env("SAM_VM_ID", vm_id)
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

/// The state character and start time (field 22) of `/proc/<pid>/stat`.
fn proc_stat(pid: u32) -> Option<(char, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ticks = fields.nth(18)?.parse().ok()?;
    Some((state, ticks))
}

/// A free loopback port, found by binding port 0.
fn free_port() -> Result<u16, ProviderError> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .map_err(|e| io_error("find a free loopback port", e))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| io_error("find a free loopback port", e))
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
        self.load().await.map(|_| ())
    }

    async fn create_vm(&self, spec: &VmSpec) -> Result<VmInstance, ProviderError> {
        let _guard = self.state.lock().await;
        let _file_lock = self.lock_state_file().await?;
        let mut state = self.load().await?;
        // The process id keeps ids unique across processes sharing the root.
        let id = format!(
            "local-{}-{}-{}",
            Utc::now().timestamp_millis(),
            std::process::id(),
            self.next.fetch_add(1, Ordering::Relaxed)
        );
        let data_dir = self.config.root_dir.join("vms").join(&id);
        tokio::fs::create_dir_all(&data_dir)
            .await
            .map_err(|e| io_error("create the node directory", e))?;
        let prepared = async {
            // The user data holds the node's token: readable by its owner only.
            let mut file = tokio::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(data_dir.join("user-data"))
                .await
                .map_err(|e| io_error("create the user data file", e))?;
            tokio::io::AsyncWriteExt::write_all(&mut file, spec.user_data.as_bytes())
                .await
                .map_err(|e| io_error("write the user data", e))?;
            // A tokio file finishes its last write in the background: without the
            // flush the node, started next, could read an empty file (seen under load
            // in the scale-out test as "EOF while parsing" and a node that exited).
            tokio::io::AsyncWriteExt::flush(&mut file)
                .await
                .map_err(|e| io_error("write the user data", e))?;
            let port = free_port()?;
            Ok::<_, ProviderError>((port, self.spawn(&id, spec, &data_dir, port)?))
        }
        .await;
        let (port, child) = match prepared {
            Ok(started) => started,
            Err(e) => {
                let _ = tokio::fs::remove_dir_all(&data_dir).await;
                return Err(e);
            }
        };
        let record = Record {
            name: spec.name.clone(),
            server_type: spec.server_type.clone(),
            location: spec.location.clone(),
            labels: spec.labels.clone(),
            pid: child.id(),
            start_ticks: proc_stat(child.id()).map(|(_, ticks)| ticks),
            port,
            data_dir,
            created_at: Utc::now(),
        };
        self.children().insert(child.id(), child);
        state.vms.insert(id.clone(), record.clone());
        if let Err(e) = self.save(&state).await {
            self.stop(&record);
            let _ = tokio::fs::remove_dir_all(&record.data_dir).await;
            return Err(e);
        }
        let mut vm = self.instance(&id, &record)?;
        if vm.state == VmState::Running {
            vm.state = VmState::Pending;
        }
        Ok(vm)
    }

    async fn poll_create(&self, vm: &VmInstance) -> Result<VmInstance, ProviderError> {
        let Some(current) = self.get_vm(&vm.id).await? else {
            return Err(ProviderError::new(
                KIND,
                ErrorCategory::NotFound,
                "the node no longer exists",
            ));
        };
        if current.state == VmState::Running {
            Ok(current)
        } else {
            let log = self
                .config
                .root_dir
                .join("vms")
                .join(vm.id.as_str())
                .join("node.log");
            // The node's directory goes with the node: say how it ended here.
            let text = tokio::fs::read_to_string(&log).await.unwrap_or_default();
            let lines: Vec<&str> = text.lines().rev().take(3).collect();
            let tail: Vec<&str> = lines.into_iter().rev().collect();
            Err(ProviderError::new(
                KIND,
                ErrorCategory::Unknown,
                format!(
                    "the node process exited; see {}: {}",
                    log.display(),
                    tail.join(" | ")
                ),
            ))
        }
    }

    async fn get_vm(&self, id: &VmId) -> Result<Option<VmInstance>, ProviderError> {
        let state = self.load().await?;
        state
            .vms
            .get(id.as_str())
            .map(|record| self.instance(id.as_str(), record))
            .transpose()
    }

    async fn delete_vm(&self, id: &VmId) -> Result<(), ProviderError> {
        let _guard = self.state.lock().await;
        let _file_lock = self.lock_state_file().await?;
        let mut state = self.load().await?;
        let Some(record) = state.vms.remove(id.as_str()) else {
            return Ok(());
        };
        self.stop(&record);
        match tokio::fs::remove_dir_all(&record.data_dir).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_error("remove the node directory", e)),
        }
        self.save(&state).await
    }

    async fn list_vms(&self, labels: &Labels) -> Result<Vec<VmInstance>, ProviderError> {
        let state = self.load().await?;
        state
            .vms
            .iter()
            .filter(|(_, record)| record.labels.matches(labels))
            .map(|(id, record)| self.instance(id, record))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sam_core::testkit::provider::{spec, wait_running};

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
        let record = first.load().await.expect("state").vms[vm.id.as_str()].clone();
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
            alive = first.is_alive(&record);
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
        let record = provider.load().await.expect("state").vms[vm.id.as_str()].clone();
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
