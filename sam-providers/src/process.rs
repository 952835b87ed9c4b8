//! Nodes as processes on this machine, whatever the process is: the engine shared
//! by [`crate::LocalProvider`] (a VM agent process) and the QEMU provider (a virtual
//! machine process).
//!
//! Each node has a directory `<root>/vms/<id>` and one process, started in its own
//! process group; `<root>/state.json` keeps every node's labels, process and port,
//! so `get_vm` and `list_vms` see the nodes of an earlier control-plane process and
//! a restarted control plane adopts them. Creates and deletes hold an exclusive lock
//! on `<root>/state.lock`, so several processes may share one root. Linux only (it
//! reads `/proc` to tell a live process from a reused pid).

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use chrono::{DateTime, Utc};
use sam_core::{
    ErrorCategory, Labels, Location, ProviderError, ProviderKind, VmId, VmInstance, VmSpec, VmState,
};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

const STATE_FILE: &str = "state.json";
const LOCK_FILE: &str = "state.lock";
/// The file a node's process writes its output to, in its directory.
pub(crate) const NODE_LOG: &str = "node.log";

/// What the state file keeps of one node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Record {
    name: String,
    server_type: String,
    location: Location,
    labels: Labels,
    pid: u32,
    /// The process's start time in clock ticks, so a reused pid is not mistaken for it.
    start_ticks: Option<u64>,
    port: u16,
    pub(crate) data_dir: PathBuf,
    created_at: DateTime<Utc>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct StateFile {
    pub(crate) vms: BTreeMap<String, Record>,
}

/// Where a new node's process starts: its id, its own directory (created, empty),
/// and a free loopback port its agent is to answer on.
#[derive(Debug)]
pub(crate) struct Launch<'a> {
    pub(crate) id: &'a str,
    pub(crate) data_dir: &'a Path,
    pub(crate) port: u16,
}

/// The nodes of one root directory, each a process.
#[derive(Debug)]
pub(crate) struct ProcessNodes {
    kind: ProviderKind,
    root_dir: PathBuf,
    /// Serializes read-modify-write of the state file within this process.
    state: tokio::sync::Mutex<()>,
    /// Processes this instance started, so they are reaped, not left as zombies.
    children: Mutex<HashMap<u32, Child>>,
    next: AtomicU64,
}

pub(crate) fn io_error(kind: ProviderKind, what: &str, error: std::io::Error) -> ProviderError {
    if error.kind() == std::io::ErrorKind::StorageFull {
        return disk_full(kind, &format!("could not {what}"));
    }
    ProviderError::new(kind, ErrorCategory::Unknown, format!("could not {what}")).with_source(error)
}

/// This machine's disk is full: `quota_exceeded`, since a node of another size or
/// a retry needs the same disk; the message says what to do.
pub(crate) fn disk_full(kind: ProviderKind, what: &str) -> ProviderError {
    ProviderError::new(
        kind,
        ErrorCategory::QuotaExceeded,
        format!(
            "{what}: no space left on this machine's disk; free some, or move the data directory"
        ),
    )
}

impl ProcessNodes {
    /// Creates `<root_dir>/vms`.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for an empty root; [`Error::Setup`] when the
    /// directory cannot be created.
    pub(crate) fn new(kind: ProviderKind, root_dir: &Path) -> Result<Self> {
        if root_dir.as_os_str().is_empty() {
            return Err(Error::config(kind, "root_dir", "must not be empty"));
        }
        std::fs::create_dir_all(root_dir.join("vms")).map_err(|e| Error::Setup {
            provider: kind,
            what: format!("the directory {}", root_dir.display()),
            source: e.into(),
        })?;
        Ok(Self {
            kind,
            root_dir: root_dir.to_path_buf(),
            state: tokio::sync::Mutex::new(()),
            children: Mutex::default(),
            next: AtomicU64::new(0),
        })
    }

    fn io_error(&self, what: &str, error: std::io::Error) -> ProviderError {
        io_error(self.kind, what, error)
    }

    fn state_path(&self) -> PathBuf {
        self.root_dir.join(STATE_FILE)
    }

    /// The directory of the node `id`.
    pub(crate) fn node_dir(&self, id: &str) -> PathBuf {
        self.root_dir.join("vms").join(id)
    }

    /// Takes the exclusive lock on `<root_dir>/state.lock` for a read-modify-write
    /// of the state file, so several processes (control planes sharing one root)
    /// never lose each other's writes. Released when the returned file is dropped.
    async fn lock_state_file(&self) -> Result<std::fs::File, ProviderError> {
        let path = self.root_dir.join(LOCK_FILE);
        let kind = self.kind;
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
            ProviderError::new(kind, ErrorCategory::Unknown, "the state lock task failed")
                .with_source(e)
        })?
        .map_err(|e| self.io_error("lock the state file", e))
    }

    pub(crate) async fn load(&self) -> Result<StateFile, ProviderError> {
        match tokio::fs::read(self.state_path()).await {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                ProviderError::new(
                    self.kind,
                    ErrorCategory::Unknown,
                    "the state file is damaged",
                )
                .with_source(e)
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(StateFile::default()),
            Err(e) => Err(self.io_error("read the state file", e)),
        }
    }

    async fn save(&self, state: &StateFile) -> Result<(), ProviderError> {
        let bytes = serde_json::to_vec_pretty(state).map_err(|e| {
            ProviderError::new(
                self.kind,
                ErrorCategory::Unknown,
                "could not encode the state",
            )
            .with_source(e)
        })?;
        let tmp = self.state_path().with_extension("json.tmp");
        tokio::fs::write(&tmp, bytes)
            .await
            .map_err(|e| self.io_error("write the state file", e))?;
        tokio::fs::rename(&tmp, self.state_path())
            .await
            .map_err(|e| self.io_error("replace the state file", e))
    }

    fn children(&self) -> MutexGuard<'_, HashMap<u32, Child>> {
        self.children.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the record's process still runs (reaping it if this instance started it).
    pub(crate) fn is_alive(&self, record: &Record) -> bool {
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
        let alive = self.is_alive(record);
        Ok(VmInstance {
            id: crate::vm_id(self.kind, id.to_owned())?,
            provider: self.kind,
            name: record.name.clone(),
            server_type: record.server_type.clone(),
            location: record.location.clone(),
            // A node's process that exited on its own (a crash, a killed QEMU, a
            // guest that powered off) cannot be started again: the node is lost,
            // which the control plane treats as a failed VM and replaces.
            state: if alive {
                VmState::Running
            } else {
                VmState::Failed
            },
            labels: record.labels.clone(),
            address: Some(format!("127.0.0.1:{}", record.port)),
            created_at: Some(record.created_at),
            failure: (!alive).then(|| self.exit_reason(id)),
        })
    }

    /// What a node's process said last (the last lines of its output), for a node
    /// whose process exited: QEMU's own reason, a crashed agent's last words.
    fn exit_reason(&self, id: &str) -> String {
        let log = self.node_dir(id).join(NODE_LOG);
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<&str> = text
            .lines()
            .rev()
            .filter(|l| !l.trim().is_empty())
            .take(3)
            .collect();
        let tail: Vec<&str> = lines.into_iter().rev().collect();
        if tail.is_empty() {
            format!("its process exited with no output (see {})", log.display())
        } else {
            format!(
                "its process exited: {} (see {})",
                tail.join(" | "),
                log.display()
            )
        }
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

    /// Creates a node: its directory, then its process, started by `launch` (which
    /// must put it in its own process group); records it in the state file. A
    /// failed launch leaves no directory and no record behind.
    pub(crate) async fn create(
        &self,
        spec: &VmSpec,
        launch: impl FnOnce(Launch<'_>) -> Result<Child, ProviderError>,
    ) -> Result<VmInstance, ProviderError> {
        let _guard = self.state.lock().await;
        let _file_lock = self.lock_state_file().await?;
        let mut state = self.load().await?;
        // The process id keeps ids unique across processes sharing the root.
        let id = format!(
            "{}-{}-{}-{}",
            self.kind,
            Utc::now().timestamp_millis(),
            std::process::id(),
            self.next.fetch_add(1, Ordering::Relaxed)
        );
        let data_dir = self.node_dir(&id);
        create_private_dir(&data_dir).map_err(|e| self.io_error("create the node directory", e))?;
        let started = free_port(self.kind).and_then(|port| {
            let child = launch(Launch {
                id: &id,
                data_dir: &data_dir,
                port,
            })?;
            Ok((port, child))
        });
        let (port, child) = match started {
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

    /// The node while its process runs; an error with the tail of its output once
    /// the process has exited.
    pub(crate) async fn poll_create(&self, vm: &VmInstance) -> Result<VmInstance, ProviderError> {
        let Some(current) = self.get(&vm.id).await? else {
            return Err(ProviderError::new(
                self.kind,
                ErrorCategory::NotFound,
                "the node no longer exists",
            ));
        };
        if current.state == VmState::Running {
            return Ok(current);
        }
        // The node's directory goes with the node: say how it ended here.
        Err(ProviderError::new(
            self.kind,
            ErrorCategory::Unknown,
            format!("the node {}", self.exit_reason(vm.id.as_str())),
        ))
    }

    pub(crate) async fn get(&self, id: &VmId) -> Result<Option<VmInstance>, ProviderError> {
        let state = self.load().await?;
        state
            .vms
            .get(id.as_str())
            .map(|record| self.instance(id.as_str(), record))
            .transpose()
    }

    /// Stops the node's process and removes its directory; an unknown node is done.
    pub(crate) async fn delete(&self, id: &VmId) -> Result<(), ProviderError> {
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
            Err(e) => return Err(self.io_error("remove the node directory", e)),
        }
        self.save(&state).await
    }

    /// Stops and removes every node of the root; returns their ids.
    pub(crate) async fn stop_all(&self) -> Result<Vec<VmId>, ProviderError> {
        let ids: Vec<String> = self.load().await?.vms.into_keys().collect();
        let mut stopped = Vec::with_capacity(ids.len());
        for id in ids {
            let id = crate::vm_id(self.kind, id)?;
            self.delete(&id).await?;
            stopped.push(id);
        }
        Ok(stopped)
    }

    pub(crate) async fn list(&self, labels: &Labels) -> Result<Vec<VmInstance>, ProviderError> {
        let state = self.load().await?;
        state
            .vms
            .iter()
            .filter(|(_, record)| record.labels.matches(labels))
            .map(|(id, record)| self.instance(id, record))
            .collect()
    }
}

/// Stops every node a [`crate::LocalProvider`] or [`crate::QemuProvider`] with this
/// `root_dir` started (their processes, wherever they were started from) and removes
/// their directories; returns their ids. A root that does not exist has none. What
/// `sam down` does; the control plane finds the nodes gone at its next look.
///
/// # Errors
/// When the state file cannot be read or a node's directory cannot be removed.
pub async fn stop_nodes(kind: ProviderKind, root_dir: &Path) -> Result<Vec<VmId>, ProviderError> {
    if !root_dir.join(STATE_FILE).exists() {
        return Ok(Vec::new());
    }
    let nodes = ProcessNodes::new(kind, root_dir)
        .map_err(|e| ProviderError::new(kind, ErrorCategory::Unknown, e.to_string()))?;
    nodes.stop_all().await
}

/// A directory only its owner may enter: it holds the node's user data, and so its
/// token.
fn create_private_dir(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
}

/// Writes `contents` to a new file readable by its owner only (it holds a token).
pub(crate) fn write_private_file(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(contents)?;
    file.sync_all()
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
fn free_port(kind: ProviderKind) -> Result<u16, ProviderError> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .map_err(|e| io_error(kind, "find a free loopback port", e))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| io_error(kind, "find a free loopback port", e))
}
