//! The embedded control plane: everything on one machine, state in one directory.
//!
//! [`Embedded::start`] builds a [`ControlPlane`] from the embedded defaults and runs
//! it in this process:
//! - the store: SQLite at `<data dir>/sam.db` ([`open_store`]);
//! - the provider: [`LocalProvider`] with its state under `<data dir>/local`, each
//!   node a real `sam-vm-agent` process on a loopback port; or a cloud provider
//!   ([`NodeProvider::Cloud`]) whose nodes boot from cloud-init;
//! - boot: [`LocalBoot`] user data (cloud-init for a cloud), with every node's boot token kept in
//!   `<data dir>/node-keys` ([`KeyedBoot`]) so a later process can still manage the
//!   node ([`ProviderNodeDirectory`]);
//! - the callback routes ([`sam_agent::callback_router`]) on a loopback port that is
//!   kept in `<data dir>/control-plane.addr` and bound again next time, so warm
//!   nodes of an earlier run keep reaching the control plane;
//! - the signing key in `<data dir>/signing-key` (0600), for the same reason.
//!
//! Workspaces are handed over when their task ends ([`HandOver`]): the directory
//! moves to `<data dir>/workspaces/<workspace id>` instead of being deleted, so the
//! user can look at what the agent did.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_trait::async_trait;
use sam_agent::plane::{FileNodeKeys, KeyedBoot, LocalBoot, ProviderNodeDirectory};
use sam_agent::wire::AgentProgram;
use sam_agent::{HttpNodeAgent, HttpNodeAgentConfig};
use sam_core::{
    AgentHealth, ControlPlane, ControlPlaneConfig, ControlPlaneParts, CredentialKind,
    DefaultScheduler, NodeAgent, NodeAgentError, NodeRecord, PlatformCredential, Provider,
    ProviderKind, Secret, SessionReport, SessionRequest, Store, TaskId, TimeoutPolicy, TokenSigner,
    TokioClock, VmId, WorkspaceId, WorkspaceReport, WorkspaceRequest,
};
use sam_providers::{LocalConfig, LocalProvider};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The agent name under which `--agent-command` runs.
pub use sam_core::CUSTOM_AGENT;

/// How a process is started: a program and its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Program {
    /// The program.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
}

impl Program {
    /// `name` next to the running executable when it is there; otherwise the running
    /// executable itself with `fallback_args` (the `sam` binary runs every role through
    /// hidden subcommands, so `cargo run --bin sam` needs nothing else built).
    ///
    /// # Errors
    /// When the running executable cannot be found.
    pub fn sibling_or_self(name: &str, fallback_args: &[&str]) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("cannot find the running executable")?;
        let sibling = exe.parent().map(|dir| dir.join(name));
        Ok(match sibling.filter(|p| p.is_file()) {
            Some(program) => Self {
                program,
                args: Vec::new(),
            },
            None => Self {
                program: exe,
                args: fallback_args.iter().map(|a| (*a).to_owned()).collect(),
            },
        })
    }
}

/// Where the local provider's nodes live in a data directory.
const LOCAL_DIR: &str = "local";
/// Where the QEMU provider's VMs live in a data directory.
const QEMU_DIR: &str = "qemu";

/// Stops every node a control plane on `data_dir` started on this machine (local
/// node processes and QEMU VMs) and removes their directories; returns each one's
/// provider and id (`sam down`). The store still lists them: the next control plane
/// finds them gone and replaces them as it would a dead node.
///
/// # Errors
/// When a provider's state cannot be read or a node's directory cannot be removed.
pub async fn stop_nodes(data_dir: &Path) -> anyhow::Result<Vec<(ProviderKind, VmId)>> {
    let mut stopped = Vec::new();
    for (kind, dir) in [
        (ProviderKind::Local, LOCAL_DIR),
        (ProviderKind::Qemu, QEMU_DIR),
    ] {
        let root = data_dir.join(dir);
        let ids = sam_providers::stop_nodes(kind, &root)
            .await
            .with_context(|| format!("cannot stop the nodes under {}", root.display()))?;
        stopped.extend(ids.into_iter().map(|id| (kind, id)));
    }
    Ok(stopped)
}

/// How [`Embedded::start`] builds the control plane.
#[derive(Debug, Clone)]
pub struct EmbeddedOptions {
    /// Where all state lives (`.sam` by default in the CLI).
    pub data_dir: PathBuf,
    /// How a node's VM agent is started.
    pub vm_agent: Program,
    /// How the nodes run the demo agent.
    pub demo_agent: Program,
    /// A command to run as the [`CUSTOM_AGENT`] agent, if any.
    pub agent_command: Option<String>,
    /// How often the runner looks at waiting tasks.
    pub poll_interval: Duration,
    /// Every wait's timeout; its `heartbeat_interval` (whole seconds, at least 1) is
    /// also how often local nodes beat.
    pub timeouts: TimeoutPolicy,
    /// How long a runner's lease on a task lasts.
    pub lease: Duration,
    /// How many times one task may move off a node it lost.
    pub node_replacements: u32,
    /// How long a task's transcript is kept after the task ended; `None` keeps it
    /// for good.
    pub transcript_retention: Option<Duration>,
    /// What happens to live tasks found at start.
    pub leftovers: Leftovers,
    /// A PostgreSQL URL; `None` keeps state in SQLite at `<data dir>/sam.db`.
    pub database_url: Option<Secret>,
    /// The PostgreSQL schema for the tables (created if missing); `None` uses the
    /// server's `search_path`.
    pub database_schema: Option<String>,
    /// Who serves the callback routes nodes call.
    pub callbacks: CallbackServing,
    /// Which provider runs the nodes.
    pub provider: NodeProvider,
    /// The key credentials are sealed with; `None` disables stored credentials.
    pub credential_key: Option<Secret>,
    /// Where the local provider keeps its nodes; `None`: `<data dir>/local`.
    /// Servers sharing a local fleet with separate data directories give one root.
    pub local_root: Option<PathBuf>,
    /// Builds providers from users' and projects' own provider credentials, so their
    /// tasks' VMs are made in their account; `None` refuses such tasks.
    pub provider_factory: Option<Arc<dyn sam_core::ProviderFactory>>,
    /// The platform's own agent credentials, by agent ([`agent_credentials_from`]):
    /// each is given by name to its agent's process only, since nodes and agents never
    /// inherit this process's environment.
    pub agent_credentials: BTreeMap<String, PlatformCredential>,
    /// The boot settings every cloud node shares: above all the VM agent's pinned
    /// SHA-256 and where to download it. Its control-plane URL and agent port are
    /// replaced at start; a cloud provider needs it.
    pub cloud_boot: Option<sam_cloudinit::CloudInitBoot>,
    /// Wraps every provider the control plane calls, the platform's and those built
    /// from owners' credentials (`sam-server`'s metrics count their calls); `None`
    /// wraps nothing.
    pub provider_layer: Option<Arc<dyn ProviderLayer>>,
}

/// A decorator put around every provider the control plane calls
/// ([`EmbeddedOptions::provider_layer`]): it implements [`Provider`] around an
/// `inner` one.
pub trait ProviderLayer: Send + Sync + std::fmt::Debug {
    /// `provider`, decorated.
    fn layer(self: Arc<Self>, provider: Arc<dyn Provider>) -> Arc<dyn Provider>;
}

/// A provider factory whose providers are decorated by a [`ProviderLayer`].
#[derive(Debug)]
struct LayeredFactory {
    inner: Arc<dyn sam_core::ProviderFactory>,
    layer: Arc<dyn ProviderLayer>,
}

impl sam_core::ProviderFactory for LayeredFactory {
    fn build(
        &self,
        kind: sam_core::ProviderKind,
        credential: &sam_core::ProviderCredential,
    ) -> Result<Arc<dyn Provider>, sam_core::Error> {
        let provider = self.inner.build(kind, credential)?;
        Ok(Arc::clone(&self.layer).layer(provider))
    }
}

/// The agents whose credentials [`agent_credentials_from`] looks for.
const CREDENTIAL_AGENTS: [&str; 6] = [
    "claude",
    "codex",
    "gemini",
    "opencode",
    "demo",
    CUSTOM_AGENT,
];

/// The agent credentials `var` (an environment lookup) holds: for each known agent,
/// its key's variable (`ANTHROPIC_API_KEY`, `OPENAI_API_KEY`, …, `SAM_AGENT_API_KEY`
/// for [`CUSTOM_AGENT`]), else its OAuth token's (`CLAUDE_CODE_OAUTH_TOKEN`); see
/// [`sam_core::agent_env_var`]. Each value found is registered with the redactor.
pub fn agent_credentials_from(
    var: impl Fn(&str) -> Option<String>,
) -> BTreeMap<String, PlatformCredential> {
    let mut credentials = BTreeMap::new();
    for agent in CREDENTIAL_AGENTS {
        for kind in [CredentialKind::ApiKey, CredentialKind::OauthToken] {
            let Some(value) = sam_core::agent_env_var(agent, kind)
                .and_then(&var)
                .filter(|v| !v.trim().is_empty())
            else {
                continue;
            };
            sam_core::secret::register(&value);
            credentials
                .entry(agent.to_owned())
                .or_insert(PlatformCredential {
                    kind,
                    secret: Secret::new(value),
                });
        }
    }
    credentials
}

/// Which provider runs the nodes.
#[derive(Debug, Clone)]
pub enum NodeProvider {
    /// [`LocalProvider`]: each node a `sam-vm-agent` process here, booted from
    /// [`LocalBoot`] user data; workspaces are handed over ([`HandOver`]).
    Local,
    /// A cloud provider: nodes boot from cloud-init ([`sam_cloudinit::CloudInitBoot`]),
    /// so the callback URL must be one the VMs can reach (`https`), and their agents
    /// are reached at their public address on [`sam_agent::wire::node_config::DEFAULT_PORT`].
    Cloud(Arc<dyn Provider>),
    /// [`sam_providers::QemuProvider`]: each node a QEMU VM on this machine, booted
    /// from cloud-init like a cloud node ([`NodeProvider::Cloud`]'s `cloud_boot`
    /// pins its agent), calling back through QEMU's forward to the callback port,
    /// which must be on loopback; workspaces run on the host role and no agent
    /// adapter is installed unless `cloud_boot` names agents (a pre-baked image has
    /// them: the VMs reach no registry).
    Qemu(QemuNodes),
}

/// What QEMU nodes boot from.
#[derive(Debug, Clone)]
pub struct QemuNodes {
    /// The base image.
    pub image: sam_providers::qemu::BaseImage,
    /// How the guests' CPUs run.
    pub accel: sam_providers::qemu::Accel,
    /// The loopback port of an apt proxy the guests reach
    /// ([`sam_providers::QemuConfig::apt_proxy_port`]); `None` for none.
    pub apt_proxy_port: Option<u16>,
}

impl QemuNodes {
    /// The image in `dir`, or, without one, the default recipe's image in the
    /// user's cache ([`sam_providers::qemu::image::default_cache_dir`]); the
    /// accelerator chosen by probe.
    ///
    /// # Errors
    /// When the image is missing or incomplete; the message says how to build it.
    pub fn from_image_dir(dir: Option<&Path>) -> anyhow::Result<Self> {
        use sam_providers::qemu::{BaseImage, ImageRecipe, image};
        let dir = match dir {
            Some(dir) => dir.to_path_buf(),
            None => image::default_cache_dir()?.join(ImageRecipe::default().key()),
        };
        let image = BaseImage::in_dir(&dir);
        image.check().with_context(|| {
            format!(
                "no QEMU base image in {}: build it with `sam image build`",
                dir.display()
            )
        })?;
        Ok(Self {
            image,
            accel: sam_providers::qemu::Accel::Auto,
            apt_proxy_port: None,
        })
    }
}

/// Who serves the callback routes ([`sam_agent::callback_router`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallbackServing {
    /// [`Embedded::start`] serves them on a loopback port that it records in
    /// `<data dir>/control-plane.addr` and binds again next time.
    Loopback,
    /// The caller serves them (merged into its own router) at this base URL.
    External(url::Url),
}

impl EmbeddedOptions {
    /// Defaults for `data_dir`: this executable's `sam-vm-agent` and `sam-demo-agent`
    /// siblings (or itself), polls every 250 ms, SAM's timeouts with heartbeats every
    /// 10 s, leases for 60 s (what is left after a missed renewal covers a 30 s HTTP
    /// call), one replacement node per task,
    /// the agent credentials of this process's environment ([`agent_credentials_from`]).
    ///
    /// # Errors
    /// When the running executable cannot be found.
    pub fn new(data_dir: impl Into<PathBuf>) -> anyhow::Result<Self> {
        Ok(Self {
            data_dir: data_dir.into(),
            vm_agent: Program::sibling_or_self("sam-vm-agent", &["vm-agent"])?,
            demo_agent: Program::sibling_or_self(
                sam_agent::vm::demo::DEMO_BINARY,
                &["demo-agent"],
            )?,
            agent_command: None,
            poll_interval: Duration::from_millis(250),
            timeouts: TimeoutPolicy {
                heartbeat_interval: Duration::from_secs(10),
                ..TimeoutPolicy::default()
            },
            lease: Duration::from_secs(60),
            node_replacements: 1,
            transcript_retention: ControlPlaneConfig::new("", ProviderKind::Local)
                .transcript_retention,
            leftovers: Leftovers::Keep,
            database_url: None,
            database_schema: None,
            callbacks: CallbackServing::Loopback,
            provider: NodeProvider::Local,
            credential_key: None,
            local_root: None,
            provider_factory: None,
            agent_credentials: agent_credentials_from(|name| std::env::var(name).ok()),
            cloud_boot: None,
            provider_layer: None,
        })
    }
}

/// Opens the store: PostgreSQL at `database_url` when given (its tables in `schema`
/// when given), else SQLite in WAL mode at `<data_dir>/sam.db`.
///
/// # Errors
/// When the database cannot be opened or migrated.
pub async fn open_store(
    data_dir: &Path,
    database_url: Option<&Secret>,
    schema: Option<&str>,
) -> anyhow::Result<Arc<dyn Store>> {
    if let Some(url) = database_url {
        let mut config = sam_store::PgConfig::new(url.expose());
        if let Some(schema) = schema {
            config = config.with_schema(schema);
        }
        let store = sam_store::PgStore::new(&config)
            .await
            .context("cannot open the PostgreSQL store")?;
        return Ok(Arc::new(store));
    }
    let path = data_dir.join("sam.db");
    let store = sam_store::SqliteStore::new(&sam_store::SqliteConfig::new(&path))
        .await
        .with_context(|| format!("cannot open the store {}", path.display()))?;
    Ok(Arc::new(store))
}

/// A control plane running in this process; see the [module docs](self).
#[derive(Debug)]
pub struct Embedded {
    /// The control plane.
    pub control_plane: ControlPlane,
    /// The provider running the nodes.
    pub provider: Arc<dyn Provider>,
    /// Where handed-over workspaces go.
    pub workspaces_dir: PathBuf,
    /// The base URL nodes call back to.
    pub callback_url: url::Url,
    /// The live tasks of earlier runs this one cancelled at start
    /// ([`Leftovers::Cancel`]).
    pub cancelled_leftovers: Vec<TaskId>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

/// What an embedded control plane does with the live tasks it finds in its store
/// at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Leftovers {
    /// Drives them, as any control plane sharing the store would (a server).
    #[default]
    Keep,
    /// Cancels them before its runner starts: `sam run` drives its own task only,
    /// and a task an interrupted or killed run left live must not start again in a
    /// later one. The caller holds the data directory's run lock ([`lock_runs`]),
    /// so no other run is using them.
    Cancel,
}

/// Why a leftover task was cancelled, as its status event records it.
pub const LEFTOVER_ACTOR: &str = "sam run (left live by an earlier run that stopped first)";

/// Takes the run lock of `data_dir` (`run.lock`, the directory made if missing), or
/// names why it cannot: one `sam run` at a time per data directory. Take it before
/// anything else of the directory is touched (the remembered callback address above
/// all, which the nodes of the run holding it call back to); it holds until the
/// returned file is dropped.
///
/// # Errors
/// When another run holds it, or the file cannot be made or locked.
pub fn lock_runs(data_dir: &Path) -> anyhow::Result<std::fs::File> {
    private_dir(data_dir)?;
    let path = data_dir.join("run.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(anyhow::anyhow!(
            "another `sam run` is using {}; wait for it to end, or give this one another --data-dir",
            data_dir.display()
        )),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("cannot lock {}", path.display()))
        }
    }
}

/// Tells apart the temporary files of threads of one process racing on one key.
static NEXT_TMP: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The secret in `path` when it holds one of at least `min_len` characters; `None`
/// when the file does not exist.
fn read_secret(path: &Path, min_len: usize) -> anyhow::Result<Option<Secret>> {
    match std::fs::read_to_string(path) {
        Ok(text) if text.trim().len() >= min_len => Ok(Some(Secret::new(text.trim()))),
        Ok(_) => anyhow::bail!(
            "{} holds no usable secret (fewer than {min_len} characters): remove it to have a new one made",
            path.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// The secret kept in `path`, created there (0600) at first use as `bytes` random
/// bytes from the kernel, in hex.
///
/// Creation is atomic: the new secret is written in full to a temporary file beside
/// `path`, then hard-linked into place, which fails when `path` exists. Processes
/// and threads racing on a fresh directory therefore all end with the one secret that
/// was linked first, never each with their own.
///
/// # Errors
/// When the file can be neither read nor written, holds fewer than `bytes`
/// characters, or the kernel gives no randomness.
pub fn secret_file(path: &Path, bytes: usize) -> anyhow::Result<Secret> {
    use std::io::Write as _;
    if let Some(secret) = read_secret(path, bytes)? {
        sam_core::secret::register(secret.expose());
        return Ok(secret);
    }
    let secret = random_secret(bytes)?;
    let secret = secret.expose();
    let name = path
        .file_name()
        .with_context(|| format!("{} names no file", path.display()))?
        .to_string_lossy();
    let tmp = path.with_file_name(format!(
        ".{name}.{}.{}.tmp",
        std::process::id(),
        NEXT_TMP.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| {
            f.write_all(secret.as_bytes())?;
            f.sync_all()
        });
    let linked = written.and_then(|()| match std::fs::hard_link(&tmp, path) {
        Ok(()) => Ok(()),
        // Another process or thread linked its secret first: that one is used.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    });
    let _ = std::fs::remove_file(&tmp);
    linked.with_context(|| format!("cannot write {}", path.display()))?;
    let secret = read_secret(path, bytes)?
        .with_context(|| format!("{} vanished while it was made", path.display()))?;
    sam_core::secret::register(secret.expose());
    Ok(secret)
}

/// Who the control plane's tokens are for.
const TOKEN_AUDIENCE: &str = "sam-control-plane";

/// The id of the first signing key kept in the store.
pub const FIRST_SIGNING_KEY: &str = "signing-1";

/// How often a server reads the signing keys again, to pick up a rotation.
pub const SIGNING_KEYS_RELOAD: Duration = Duration::from_secs(30);

/// How long a new signing key only verifies before servers sign with it: long
/// enough for every server to have read it ([`SIGNING_KEYS_RELOAD`], with margin),
/// so no server meets a token signed with a key it has not read yet.
pub const SIGNING_KEY_ACTIVATION: Duration = Duration::from_secs(120);

/// The control plane's token signer.
///
/// With a credential key, the signing keys live in the store, sealed with it, so
/// every server on one database signs and verifies alike, whatever its data
/// directory: the first server writes the key (its data directory's `signing-key`
/// when it has one, so the tokens it issued before still verify), and the others
/// read that one. Without a credential key, the key is the data directory's file,
/// which is enough for one server.
///
/// # Errors
/// A credential key that does not open the stored keys (servers on one database
/// need the same one), store failures, and those of [`secret_file`].
pub async fn token_signer(
    store: &dyn Store,
    credential_key: Option<&Secret>,
    data_dir: &Path,
) -> anyhow::Result<TokenSigner> {
    let file = data_dir.join("signing-key");
    let Some(credential_key) = credential_key else {
        return Ok(TokenSigner::new(secret_file(&file, 32)?, TOKEN_AUDIENCE)?);
    };
    let cipher = sam_core::CredentialCipher::new(credential_key)?;
    let purpose = sam_core::KeyPurpose::Signing;
    let mut keys = store.list_keys(purpose).await?;
    if keys.is_empty() {
        let key = match read_secret(&file, 32)? {
            Some(key) => key,
            None => random_secret(32)?,
        };
        let record = sam_core::KeyRecord::seal(
            purpose,
            FIRST_SIGNING_KEY,
            &key,
            &cipher,
            chrono::Utc::now(),
        )?;
        // Servers starting at once each offer a key; the first one written is kept.
        store.put_key_if_absent(&record).await?;
        keys = store.list_keys(purpose).await?;
    }
    open_signing_keys(&cipher, keys)
}

/// A signer over the stored signing `keys` (oldest first), signing with the one
/// [`sam_core::active_key`] picks now.
fn open_signing_keys(
    cipher: &sam_core::CredentialCipher,
    keys: Vec<sam_core::KeyRecord>,
) -> anyhow::Result<TokenSigner> {
    anyhow::ensure!(!keys.is_empty(), "the database holds no signing key");
    let created: Vec<_> = keys.iter().map(|k| k.created_at).collect();
    let active = sam_core::active_key(&created, chrono::Utc::now(), SIGNING_KEY_ACTIVATION);
    let mut opened = Vec::with_capacity(keys.len());
    for key in keys {
        let secret = key.open(cipher).with_context(|| {
            format!(
                "the signing key {} in the database does not open with this credential_key: \
                 every server on one database needs the same credential_key",
                key.id
            )
        })?;
        sam_core::secret::register(secret.expose());
        opened.push((key.id, secret));
    }
    let signing = opened[active].0.clone();
    Ok(TokenSigner::with_keys(opened, TOKEN_AUDIENCE)?.signing_with(&signing)?)
}

/// Reads the signing keys again and gives them to `control_plane` when they
/// changed (a rotation), or when a new key's activation came.
async fn reload_signing_keys(
    control_plane: &ControlPlane,
    store: &dyn Store,
    cipher: &sam_core::CredentialCipher,
) -> anyhow::Result<()> {
    let keys = store.list_keys(sam_core::KeyPurpose::Signing).await?;
    if keys.is_empty() {
        return Ok(());
    }
    let signer = open_signing_keys(cipher, keys)?;
    let now = (
        signer
            .key_ids()
            .into_iter()
            .map(|id| id.map(str::to_owned))
            .collect::<Vec<_>>(),
        signer.signing_key_id().map(str::to_owned),
    );
    if control_plane.signer_keys() != now {
        tracing::info!(keys = ?now.0, signing = ?now.1, "the signing keys changed; using them");
        control_plane.replace_signer(signer);
    }
    Ok(())
}

/// Adds a signing key to the store, sealed with `credential_key`, and returns it.
/// Every server reads it within [`SIGNING_KEYS_RELOAD`] and signs with it once it is
/// [`SIGNING_KEY_ACTIVATION`] old; tokens signed with older keys verify until they
/// expire (at most [`sam_core::MAX_TOKEN_TTL`]).
///
/// # Errors
/// A credential key that does not open the stored keys, or store failures.
pub async fn rotate_signing_key(
    store: &dyn Store,
    credential_key: &Secret,
) -> anyhow::Result<sam_core::KeyRecord> {
    let cipher = sam_core::CredentialCipher::new(credential_key)?;
    let purpose = sam_core::KeyPurpose::Signing;
    let keys = store.list_keys(purpose).await?;
    // The stored keys must open with this credential key: a rotation made with
    // another would add a key no server can read.
    if !keys.is_empty() {
        open_signing_keys(&cipher, keys.clone())?;
    }
    let next = keys
        .iter()
        .filter_map(|k| k.id.strip_prefix("signing-")?.parse::<u64>().ok())
        .max()
        .unwrap_or(0)
        + 1;
    let record = sam_core::KeyRecord::seal(
        purpose,
        format!("signing-{next}"),
        &random_secret(32)?,
        &cipher,
        chrono::Utc::now(),
    )?;
    Ok(store.put_key_if_absent(&record).await?)
}

/// `bytes` random bytes from the kernel, in hex.
fn random_secret(bytes: usize) -> anyhow::Result<Secret> {
    let mut random = vec![0_u8; bytes];
    std::io::Read::read_exact(
        &mut std::fs::File::open("/dev/urandom").context("cannot open /dev/urandom")?,
        &mut random,
    )
    .context("cannot read /dev/urandom")?;
    Ok(Secret::new(
        random
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>(),
    ))
}

/// What an embedded control plane keeps in its data directory.
const DATA_DIR_ENTRIES: &[&str] = &[
    ".gitignore",
    "sam.db",
    "sam.db-wal",
    "sam.db-shm",
    "signing-key",
    "api-token",
    "node-keys",
    "local",
    "workspaces",
    "control-plane.addr",
    "agent-command",
];

/// Creates `dir` (0700) and its missing parents: it holds the database, keys and
/// tokens. An existing directory is narrowed to 0700 only when it holds nothing but
/// what a data directory holds, so pointing `--data-dir` at a shared directory
/// (`/tmp`, a home) never changes that directory's mode.
///
/// # Errors
/// When the directory cannot be created or its mode cannot be set.
pub fn private_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    let ours = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .all(|entry| {
            entry.is_ok_and(|e| {
                let name = e.file_name();
                let name = name.to_string_lossy();
                DATA_DIR_ENTRIES.contains(&name.as_ref())
                    || (name.starts_with('.') && name.ends_with(".tmp"))
            })
        });
    if ours {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot make {} private", dir.display()))?;
    }
    Ok(())
}

/// Binds a listener on the loopback address an earlier run with `data_dir` (an
/// existing directory) used, else anywhere on loopback, and records the address:
/// nodes that outlive a run (warm local processes, QEMU VMs forwarding to this
/// port) reach the next run at the address they booted with.
///
/// # Errors
/// When no loopback port can be bound or the address cannot be recorded.
pub async fn remembered_loopback_listener(
    data_dir: &Path,
) -> anyhow::Result<tokio::net::TcpListener> {
    let path = data_dir.join("control-plane.addr");
    let earlier = std::fs::read_to_string(&path)
        .ok()
        .and_then(|t| t.trim().parse::<SocketAddr>().ok())
        .filter(|a| a.ip().is_loopback());
    let listener = match earlier {
        Some(addr) => match tokio::net::TcpListener::bind(addr).await {
            Ok(listener) => listener,
            Err(_) => tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?,
        },
        None => tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?,
    };
    let addr = listener.local_addr()?;
    std::fs::write(&path, addr.to_string())
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(listener)
}

impl Embedded {
    /// Builds the control plane and starts its callback server and runner.
    ///
    /// # Errors
    /// When the data directory, the store, the listener or a part cannot be set up.
    pub async fn start(options: EmbeddedOptions) -> anyhow::Result<Self> {
        let data_dir = &options.data_dir;
        private_dir(data_dir)?;
        let data_dir = data_dir
            .canonicalize()
            .with_context(|| format!("cannot resolve {}", data_dir.display()))?;
        // The data directory usually sits inside the repository: keep it out of git.
        let ignore = data_dir.join(".gitignore");
        if !ignore.exists() {
            std::fs::write(&ignore, "*\n")
                .with_context(|| format!("cannot write {}", ignore.display()))?;
        }
        let store = open_store(
            &data_dir,
            options.database_url.as_ref(),
            options.database_schema.as_deref(),
        )
        .await?;
        let (listener, url) = match &options.callbacks {
            CallbackServing::Loopback => {
                let listener = remembered_loopback_listener(&data_dir).await?;
                let url = url::Url::parse(&format!("http://{}/", listener.local_addr()?))?;
                (Some(listener), url)
            }
            CallbackServing::External(url) => (None, url.clone()),
        };

        // With a credential key, node keys live in the store (every server on the
        // database reads them); the files keep serving nodes booted before.
        let files = FileNodeKeys::new(data_dir.join("node-keys"))?;
        let keys: Arc<dyn sam_agent::plane::NodeKeys> = match &options.credential_key {
            Some(key) => Arc::new(sam_agent::plane::StoreNodeKeys::new(
                Arc::clone(&store),
                sam_core::CredentialCipher::new(key)?,
                Some(files.clone()),
            )),
            None => Arc::new(files.clone()),
        };
        let workspaces_dir = data_dir.join("workspaces");
        let (provider, boot, node_agent) = match &options.provider {
            NodeProvider::Local => local_parts(&options, &data_dir, &url, &keys)?,
            NodeProvider::Cloud(provider) => {
                cloud_parts(provider, &url, &keys, options.cloud_boot.as_ref())?
            }
            NodeProvider::Qemu(nodes) => {
                qemu_parts(nodes, &data_dir, &url, &keys, options.cloud_boot.as_ref())?
            }
        };

        // The control plane calls the decorated provider; the rest of this process
        // (the catalog, the node directory) keeps the plain one.
        let called = match &options.provider_layer {
            Some(layer) => Arc::clone(layer).layer(Arc::clone(&provider)),
            None => Arc::clone(&provider),
        };
        let mut config =
            ControlPlaneConfig::new(format!("sam-{}", std::process::id()), provider.kind());
        config.poll_interval = options.poll_interval;
        config.timeouts = options.timeouts;
        config.lease = options.lease;
        config.node_replacements = options.node_replacements;
        config.transcript_retention = options.transcript_retention;
        config.agents.push(CUSTOM_AGENT.to_owned());
        config.credential_key = options.credential_key.clone();
        config.agent_credentials = options.agent_credentials.clone();
        let mut control_plane = ControlPlane::new(
            ControlPlaneParts {
                store: Arc::clone(&store),
                providers: vec![called],
                scheduler: Arc::new(DefaultScheduler::new(Arc::clone(&store))),
                node_agent,
                // The control plane keeps node keys in the store itself when it
                // has a credential key; otherwise they are kept in files here.
                boot: match &options.credential_key {
                    Some(_) => boot,
                    None => Arc::new(KeyedBoot::new(boot, files)),
                },
                signer: token_signer(store.as_ref(), options.credential_key.as_ref(), &data_dir)
                    .await?,
                clock: Arc::new(TokioClock::new()),
            },
            config,
        )?;
        if let Some(factory) = &options.provider_factory {
            let factory = match &options.provider_layer {
                Some(layer) => Arc::new(LayeredFactory {
                    inner: Arc::clone(factory),
                    layer: Arc::clone(layer),
                }),
                None => Arc::clone(factory),
            };
            control_plane = control_plane.with_provider_factory(factory);
        }

        let (stop, stopped) = watch::channel(false);
        let until = |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        let mut tasks = Vec::new();
        if let Some(key) = &options.credential_key {
            // A rotation made by `sam-server keys rotate` reaches this server here.
            let cipher = sam_core::CredentialCipher::new(key)?;
            let cp = control_plane.clone();
            let store = Arc::clone(&store);
            let shutdown = until(stopped.clone());
            tasks.push(tokio::spawn(async move {
                tokio::pin!(shutdown);
                let mut every = tokio::time::interval(SIGNING_KEYS_RELOAD);
                every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                every.tick().await;
                loop {
                    tokio::select! {
                        () = &mut shutdown => return,
                        _ = every.tick() => {
                            if let Err(e) = reload_signing_keys(&cp, store.as_ref(), &cipher).await {
                                tracing::warn!(error = %format!("{e:#}"), "could not read the signing keys; keeping the ones in use");
                            }
                        }
                    }
                }
            }));
        }
        if let Some(listener) = listener {
            let router = sam_agent::callback_router(control_plane.clone());
            let shutdown = until(stopped.clone());
            tasks.push(tokio::spawn(async move {
                let listener = sam_agent::serve::JsonErrorListener::new(listener);
                if let Err(e) = axum::serve(listener, router)
                    .with_graceful_shutdown(shutdown)
                    .await
                {
                    tracing::warn!(error = %e, "the callback server stopped");
                }
            }));
        }
        let mut cancelled_leftovers = Vec::new();
        if options.leftovers == Leftovers::Cancel {
            for task in control_plane.list(&sam_core::TaskFilter::live()).await? {
                if control_plane.cancel(&task.id, LEFTOVER_ACTOR).await? {
                    tracing::info!(task = %task.id, "cancelled a task an earlier run left live");
                    cancelled_leftovers.push(task.id);
                }
            }
        }
        tasks.push(tokio::spawn({
            let cp = control_plane.clone();
            let shutdown = until(stopped);
            async move { cp.run(shutdown).await }
        }));
        Ok(Self {
            control_plane,
            provider,
            workspaces_dir,
            callback_url: url,
            cancelled_leftovers,
            stop,
            tasks,
        })
    }

    /// The catalog of the provider running the nodes.
    pub fn catalog(&self) -> &sam_core::Catalog {
        self.provider.catalog()
    }

    /// Stops the runner and the callback server. Nodes keep running (warm), and
    /// unfinished tasks resume in the next process.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
    }
}

/// The parts of a control plane that runs nodes with `provider`.
type ProviderParts = (
    Arc<dyn Provider>,
    Arc<dyn sam_core::BootRenderer>,
    Arc<dyn NodeAgent>,
);

/// Reaches the nodes' agents at their provider address on `port`, with the keys.
fn http_node_agent(
    provider: &Arc<dyn Provider>,
    keys: &Arc<dyn sam_agent::plane::NodeKeys>,
    port: u16,
) -> anyhow::Result<HttpNodeAgent> {
    let directory = ProviderNodeDirectory::new([Arc::clone(provider)], Arc::clone(keys), port);
    Ok(HttpNodeAgent::new(
        Arc::new(directory),
        HttpNodeAgentConfig {
            request_timeout: Duration::from_secs(10),
        },
    )?)
}

/// A cloud provider, cloud-init boot calling back to `url`, and its node agent.
fn cloud_parts(
    provider: &Arc<dyn Provider>,
    url: &url::Url,
    keys: &Arc<dyn sam_agent::plane::NodeKeys>,
    template: Option<&sam_cloudinit::CloudInitBoot>,
) -> anyhow::Result<ProviderParts> {
    let port = sam_agent::wire::node_config::DEFAULT_PORT;
    let mut boot = template
        .context(
            "a cloud provider needs the VM agent its nodes install: set `cloud_boot` \
             (sam-server: --vm-agent-binary, or --agent-download-url with --agent-sha256)",
        )?
        .clone();
    url.as_str()
        .trim_end_matches('/')
        .clone_into(&mut boot.control_plane_url);
    boot.agent_port = port;
    // The settings every node shares are checked now, not at the first node's boot.
    boot.validate()
        .context("the cloud nodes' boot settings are invalid")?;
    let agent = http_node_agent(provider, keys, port)?;
    Ok((Arc::clone(provider), Arc::new(boot), Arc::new(agent)))
}

/// The QEMU provider, forwarding its guests to the callback URL's loopback port; the
/// cloud boot renderer with the guests' view of that URL; the node agent reaching
/// each VM's forwarded agent port.
fn qemu_parts(
    nodes: &QemuNodes,
    data_dir: &Path,
    url: &url::Url,
    keys: &Arc<dyn sam_agent::plane::NodeKeys>,
    template: Option<&sam_cloudinit::CloudInitBoot>,
) -> anyhow::Result<ProviderParts> {
    let loopback = matches!(url.host(), Some(url::Host::Ipv4(ip)) if ip.is_loopback());
    let port = url
        .port_or_known_default()
        .filter(|_| loopback)
        .with_context(|| {
            format!(
                "QEMU nodes call back through a forward to this machine's loopback, not to {url}"
            )
        })?;
    let mut config = sam_providers::QemuConfig::new(data_dir.join(QEMU_DIR), nodes.image.clone());
    config.accel = nodes.accel;
    config.agent_port = sam_agent::wire::node_config::DEFAULT_PORT;
    config.control_plane_port = Some(port);
    config.apt_proxy_port = nodes.apt_proxy_port;
    let provider: Arc<dyn Provider> = Arc::new(sam_providers::QemuProvider::new(config)?);

    let mut boot = template
        .context("QEMU nodes need the VM agent they install: set `cloud_boot` (sam-server serves its own)")?
        .clone();
    let guest = sam_core::QEMU_CONTROL_PLANE_ADDRESS;
    boot.control_plane_url = format!("http://{}{}", guest.ip(), url.path().trim_end_matches('/'));
    boot.agent_port = sam_agent::wire::node_config::DEFAULT_PORT;
    boot.role = sam_cloudinit::NodeRole::Host;
    boot.validate_for(ProviderKind::Qemu)
        .context("the QEMU nodes' boot settings are invalid")?;
    let agent = http_node_agent(&provider, keys, sam_agent::wire::node_config::DEFAULT_PORT)?;
    Ok((provider, Arc::new(boot), Arc::new(agent)))
}

/// The local provider, its boot renderer and its node agent (which hands workspaces
/// over).
fn local_parts(
    options: &EmbeddedOptions,
    data_dir: &Path,
    url: &url::Url,
    keys: &Arc<dyn sam_agent::plane::NodeKeys>,
) -> anyhow::Result<ProviderParts> {
    let root = options
        .local_root
        .clone()
        .unwrap_or_else(|| data_dir.join(LOCAL_DIR));
    let mut local = LocalConfig::new(root, &options.vm_agent.program);
    local.args = options.vm_agent.args.clone();
    let provider: Arc<dyn Provider> = Arc::new(LocalProvider::new(local)?);

    let mut agents = BTreeMap::new();
    agents.insert(
        sam_agent::vm::demo::DEMO_AGENT.to_owned(),
        AgentProgram {
            program: options.demo_agent.program.display().to_string(),
            args: options.demo_agent.args.clone(),
        },
    );
    // The custom agent reads its command from a file at each start, so a warm node
    // booted by an earlier run runs the command of this one.
    let command_file = data_dir.join("agent-command");
    if let Some(command) = &options.agent_command {
        std::fs::write(&command_file, command)
            .with_context(|| format!("cannot write {}", command_file.display()))?;
    }
    agents.insert(
        CUSTOM_AGENT.to_owned(),
        AgentProgram {
            program: "/bin/sh".to_owned(),
            args: vec![
                "-c".to_owned(),
                "exec /bin/sh -c \"$(cat \"$0\")\"".to_owned(),
                command_file.display().to_string(),
            ],
        },
    );
    let boot = LocalBoot {
        control_plane_url: url.clone(),
        heartbeat_interval_secs: Some(options.timeouts.heartbeat_interval.as_secs().max(1)),
        agents,
    };
    let http = http_node_agent(&provider, keys, sam_agent::wire::node_config::DEFAULT_PORT)?;
    let node_agent = HandOver {
        inner: http,
        nodes_dir: data_dir.join(LOCAL_DIR).join("vms"),
        to: data_dir.join("workspaces"),
    };
    Ok((provider, Arc::new(boot), Arc::new(node_agent)))
}

/// A [`NodeAgent`] that moves a workspace's directory out of its local node before
/// the node removes it, so what the agent did stays for the user to see.
///
/// The local provider runs each node in `<nodes_dir>/<vm id>` and the VM agent keeps
/// workspaces in its data directory's `workspaces/<workspace id>`
/// ([`sam_agent::NodeConfig::serve`]).
#[derive(Debug)]
pub struct HandOver<A> {
    inner: A,
    nodes_dir: PathBuf,
    to: PathBuf,
}

impl<A> HandOver<A> {
    /// Where `workspace` of `node` lives on the node.
    fn on_node(&self, node: &NodeRecord, workspace: &WorkspaceId) -> Option<PathBuf> {
        let vm = node.vm_id.as_ref()?;
        Some(
            self.nodes_dir
                .join(vm.as_str())
                .join("workspaces")
                .join(workspace.as_str()),
        )
    }
}

#[async_trait]
impl<A: NodeAgent> NodeAgent for HandOver<A> {
    async fn health(&self, node: &NodeRecord) -> Result<Option<AgentHealth>, NodeAgentError> {
        self.inner.health(node).await
    }

    async fn create_workspace(
        &self,
        node: &NodeRecord,
        request: &WorkspaceRequest,
    ) -> Result<(), NodeAgentError> {
        self.inner.create_workspace(node, request).await
    }

    async fn workspace_status(
        &self,
        node: &NodeRecord,
        workspace: &WorkspaceId,
    ) -> Result<Option<WorkspaceReport>, NodeAgentError> {
        self.inner.workspace_status(node, workspace).await
    }

    async fn start_session(
        &self,
        node: &NodeRecord,
        request: &SessionRequest,
    ) -> Result<(), NodeAgentError> {
        self.inner.start_session(node, request).await
    }

    async fn session_status(
        &self,
        node: &NodeRecord,
        workspace: &WorkspaceId,
    ) -> Result<Option<SessionReport>, NodeAgentError> {
        self.inner.session_status(node, workspace).await
    }

    async fn cancel_session(
        &self,
        node: &NodeRecord,
        workspace: &WorkspaceId,
    ) -> Result<(), NodeAgentError> {
        self.inner.cancel_session(node, workspace).await
    }

    async fn stop_workspace(
        &self,
        node: &NodeRecord,
        workspace: &WorkspaceId,
    ) -> Result<(), NodeAgentError> {
        if let Some(from) = self.on_node(node, workspace)
            && from.is_dir()
        {
            let to = self.to.join(workspace.as_str());
            let moved = tokio::fs::create_dir_all(&self.to).await.is_ok()
                && tokio::fs::rename(&from, &to).await.is_ok();
            if !moved {
                tracing::warn!(workspace = %workspace, "could not hand the workspace over; the node removes it");
            }
        }
        self.inner.stop_workspace(node, workspace).await
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    /// Servers with separate data directories on one database sign and verify alike
    /// once they share the credential key: the first writes the signing key into the
    /// store (its data directory's, so its earlier tokens still verify), the others
    /// read it; a server with another credential key is refused, naming it.
    #[tokio::test]
    async fn servers_on_one_database_share_the_signing_key_through_it() {
        use sam_core::{TokenScope, TokenSigner};
        let store: Arc<dyn Store> = Arc::new(sam_store::MemoryStore::new());
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        // Server A ran alone before: its data directory has a key, and a node holds a
        // token it signed (without a key id).
        let old_key = secret_file(&a.path().join("signing-key"), 32).unwrap();
        let now = chrono::Utc::now();
        let ttl = Duration::from_secs(3600);
        let old_token = TokenSigner::new(old_key, TOKEN_AUDIENCE).unwrap().issue(
            TokenScope::Node,
            "n-1",
            now,
            ttl,
        );
        let credential_key = Secret::new("AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=");
        let first = token_signer(store.as_ref(), Some(&credential_key), a.path())
            .await
            .unwrap();
        let second = token_signer(store.as_ref(), Some(&credential_key), b.path())
            .await
            .unwrap();
        assert_eq!(first.signing_key_id(), Some(FIRST_SIGNING_KEY));
        assert!(
            !b.path().join("signing-key").exists(),
            "the second server keeps no key of its own"
        );
        for signer in [&first, &second] {
            signer
                .verify(old_token.expose(), TokenScope::Node, "n-1", now)
                .expect("a token signed before the key moved into the store");
        }
        let token = first.issue(TokenScope::Node, "n-2", now, ttl);
        second
            .verify(token.expose(), TokenScope::Node, "n-2", now)
            .expect("a token one server signed verifies on the other");
        let keys = store
            .list_keys(sam_core::KeyPurpose::Signing)
            .await
            .unwrap();
        assert_eq!(keys.len(), 1, "one key for every server");
        assert!(
            !keys[0].sealed.as_str().contains(old_token.expose()),
            "the key is stored sealed"
        );

        let other = Secret::new("AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=");
        let refused = token_signer(store.as_ref(), Some(&other), b.path())
            .await
            .unwrap_err();
        assert!(
            format!("{refused:#}")
                .contains("every server on one database needs the same credential_key"),
            "{refused:#}"
        );
        // Without a credential key the data directory's file is the key, as before.
        let alone = token_signer(store.as_ref(), None, b.path()).await.unwrap();
        assert_eq!(alone.signing_key_id(), None);
        assert!(b.path().join("signing-key").exists());
    }

    /// A rotation adds a key that every server verifies at once and signs with only
    /// once it is old enough; a rotation with another credential key is refused.
    #[tokio::test]
    async fn a_rotated_key_verifies_at_once_and_signs_once_active() {
        use sam_core::{KeyPurpose, TokenScope};
        let store: Arc<dyn Store> = Arc::new(sam_store::MemoryStore::new());
        let dir = tempfile::tempdir().unwrap();
        let credential_key = Secret::new("AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=");
        let first = token_signer(store.as_ref(), Some(&credential_key), dir.path())
            .await
            .unwrap();
        let added = rotate_signing_key(store.as_ref(), &credential_key)
            .await
            .unwrap();
        assert_eq!(added.id, "signing-2");
        let now = chrono::Utc::now();
        let ttl = Duration::from_secs(3600);
        let reloaded = token_signer(store.as_ref(), Some(&credential_key), dir.path())
            .await
            .unwrap();
        assert_eq!(
            reloaded.signing_key_id(),
            Some(FIRST_SIGNING_KEY),
            "a new key does not sign before its activation"
        );
        let new_token = reloaded.clone().signing_with("signing-2").unwrap().issue(
            TokenScope::Node,
            "n-1",
            now,
            ttl,
        );
        reloaded
            .verify(new_token.expose(), TokenScope::Node, "n-1", now)
            .expect("every server verifies the new key at once");
        let old_token = first.issue(TokenScope::Node, "n-1", now, ttl);
        // A key made long enough ago signs; the earlier ones still verify.
        let cipher = sam_core::CredentialCipher::new(&credential_key).unwrap();
        let context = sam_core::KeyRecord::context(KeyPurpose::Signing, "signing-3");
        store
            .put_key_if_absent(&sam_core::KeyRecord {
                id: "signing-3".into(),
                purpose: KeyPurpose::Signing,
                sealed: cipher.seal(&Secret::new("c".repeat(64)), &context).unwrap(),
                created_at: now - chrono::Duration::minutes(10),
            })
            .await
            .unwrap();
        let later = token_signer(store.as_ref(), Some(&credential_key), dir.path())
            .await
            .unwrap();
        assert_eq!(later.signing_key_id(), Some("signing-3"));
        later
            .verify(old_token.expose(), TokenScope::Node, "n-1", now)
            .expect("tokens of earlier keys verify until they expire");
        let other = Secret::new("AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=");
        let refused = rotate_signing_key(store.as_ref(), &other)
            .await
            .unwrap_err();
        assert!(
            format!("{refused:#}").contains("does not open with this credential_key"),
            "{refused:#}"
        );
        assert_eq!(store.list_keys(KeyPurpose::Signing).await.unwrap().len(), 3);
    }

    /// A bare QEMU image leaves out exactly what the boot installs.
    #[test]
    fn a_bare_image_leaves_out_what_the_boot_installs() {
        assert_eq!(
            sam_providers::qemu::image::BOOT_PACKAGES,
            sam_cloudinit::BASE_PACKAGES
        );
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    /// Threads racing to make the key of one fresh directory all get the same key,
    /// the one on disk, and leave no temporary file behind.
    #[test]
    fn racing_makers_of_a_key_agree_on_one() {
        for _ in 0..20 {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("signing-key");
            let start = std::sync::Barrier::new(8);
            let keys: Vec<String> = std::thread::scope(|s| {
                let handles: Vec<_> = (0..8)
                    .map(|_| {
                        s.spawn(|| {
                            start.wait();
                            secret_file(&path, 32).unwrap().expose().to_owned()
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            });
            let on_disk = std::fs::read_to_string(&path).unwrap();
            assert_eq!(on_disk.len(), 64);
            assert!(keys.iter().all(|k| *k == on_disk), "{keys:?} vs {on_disk}");
            assert_eq!(mode(&path), 0o600);
            let names: Vec<_> = std::fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            assert_eq!(names, ["signing-key"], "temporary files are removed");
        }
    }

    #[test]
    fn a_key_file_too_short_is_refused_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api-token");
        std::fs::write(&path, "short\n").unwrap();
        let err = secret_file(&path, 24).unwrap_err();
        assert!(err.to_string().contains("no usable secret"), "{err:#}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "short\n");
        std::fs::write(&path, "a-token-that-is-long-enough-1234\n").unwrap();
        assert_eq!(
            secret_file(&path, 24).unwrap().expose(),
            "a-token-that-is-long-enough-1234"
        );
    }

    #[test]
    fn agent_credentials_come_from_each_agents_own_variable() {
        let env = [
            ("ANTHROPIC_API_KEY", "sk-ant-key-1234567"),
            ("CLAUDE_CODE_OAUTH_TOKEN", "oauth-token-1234567"),
            ("GEMINI_API_KEY", "   "),
            ("SAM_AGENT_API_KEY", "custom-key-1234567"),
            ("HCLOUD_TOKEN", "not-an-agent-key"),
        ];
        let found = agent_credentials_from(|name| {
            env.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        });
        let summary: Vec<(&str, CredentialKind, &str)> = found
            .iter()
            .map(|(agent, c)| (agent.as_str(), c.kind, c.secret.expose()))
            .collect();
        assert_eq!(
            summary,
            [
                ("claude", CredentialKind::ApiKey, "sk-ant-key-1234567"),
                (CUSTOM_AGENT, CredentialKind::ApiKey, "custom-key-1234567"),
            ]
        );
    }

    #[test]
    fn the_data_directory_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("a").join(".sam");
        private_dir(&data).unwrap();
        assert_eq!(mode(&data), 0o700);
        std::fs::write(data.join("sam.db"), "").unwrap();
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
        private_dir(&data).unwrap();
        assert_eq!(mode(&data), 0o700, "an existing data directory is narrowed");
        std::fs::write(data.join("notes.txt"), "mine").unwrap();
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
        private_dir(&data).unwrap();
        assert_eq!(
            mode(&data),
            0o755,
            "a directory holding other files is left alone"
        );
    }
}
