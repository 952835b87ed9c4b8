//! The configuration of `sam-server`: one [`ServerConfig`], layered with figment.
//!
//! [`ServerConfig::load`] takes each field from the highest layer that sets it:
//! 1. the built-in defaults (documented on each field);
//! 2. a TOML file (`--config FILE`), whose keys are the field names;
//! 3. `SAM_<FIELD>` environment variables (`SAM_LISTEN`, `SAM_DATA_DIR`,
//!    `SAM_PROVIDER`, …; only the names in [`ENV_KEYS`] are read, so other `SAM_*`
//!    variables such as `SAM_TEST_POSTGRES_URL` are left alone);
//! 4. the command-line flags, which win.
//!
//! Then it validates the result: every error names the field (and, for a value that
//! does not parse, the layer it came from).
//!
//! ```toml
//! listen = "0.0.0.0:8080"
//! data_dir = "/var/lib/sam"
//! provider = "hetzner"
//! poll_interval_ms = 500
//! ```
//!
//! # Timeouts
//!
//! Every field of [`TimeoutPolicy`] is a key of its own, in whole seconds: the field's
//! name with `_secs` (`agent_ready_secs`, `heartbeat_stale_secs`, …; [`TIMEOUT_KEYS`]
//! lists them), each defaulting to [`TimeoutPolicy::default`]'s value.
//! `heartbeat_interval_secs` is the policy's `heartbeat_interval`: one key sets both
//! how often local nodes beat and what the stale limit is checked against.
//! The policy is checked with `lease_secs` and the provider's longest call
//! ([`ProviderChoice::call_timeout`]) by [`TimeoutPolicy::validate_with_lease`], so a
//! configuration whose timeouts contradict each other is refused at load, naming the
//! values.
//!
//! ```toml
//! agent_ready_secs = 1200
//! heartbeat_interval_secs = 20
//! heartbeat_stale_secs = 90
//! lease_secs = 60
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format as _, Toml};
use sam_core::{DerivedTimeouts, PolicyError, Secret, TimeoutPolicy};
use serde::{Deserialize, Serialize};

use crate::embedded::NodeProvider;
use crate::logging::LogFormat;

/// The fields `SAM_*` environment variables may set (upper-cased, after `SAM_`).
pub const ENV_KEYS: [&str; 35] = [
    "listen",
    "data_dir",
    "local_root",
    "database_url",
    "database_schema",
    "public_url",
    "api_token",
    "agent_command",
    "log_format",
    "provider",
    "poll_interval_ms",
    "heartbeat_interval_secs",
    "credential_key",
    "lease_secs",
    "vm_agent_binary",
    "agent_download_url",
    "agent_sha256",
    "node_agents",
    "node_replacements",
    "capacity_wait_secs",
    "node_provisioning_secs",
    "agent_ready_secs",
    "workspace_ready_secs",
    "queued_grace_secs",
    "delegated_grace_secs",
    "in_progress_soft_secs",
    "in_progress_hard_secs",
    "task_absolute_secs",
    "warm_node_secs",
    "node_max_lifetime_secs",
    "heartbeat_stale_secs",
    "agent_idle_secs",
    "git_command_secs",
    "metrics_public",
    "transcript_retention_days",
];

/// Each [`TimeoutPolicy`] field (and the lease) with the key that sets it, in the
/// order `--check-config` prints them.
pub const TIMEOUT_KEYS: [(&str, &str); 16] = [
    ("capacity_wait", "capacity_wait_secs"),
    ("node_provisioning", "node_provisioning_secs"),
    ("agent_ready", "agent_ready_secs"),
    ("workspace_ready", "workspace_ready_secs"),
    ("queued_grace", "queued_grace_secs"),
    ("delegated_grace", "delegated_grace_secs"),
    ("in_progress_soft", "in_progress_soft_secs"),
    ("in_progress_hard", "in_progress_hard_secs"),
    ("task_absolute", "task_absolute_secs"),
    ("warm_node", "warm_node_secs"),
    ("node_max_lifetime", "node_max_lifetime_secs"),
    ("heartbeat_interval", "heartbeat_interval_secs"),
    ("heartbeat_stale", "heartbeat_stale_secs"),
    ("agent_idle", "agent_idle_secs"),
    ("git_command", "git_command_secs"),
    ("lease", "lease_secs"),
];

/// The longest value a timeout key takes: 30 days, in seconds.
const MAX_TIMEOUT_SECS: u64 = 30 * 24 * 3600;

/// Which provider runs the nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderChoice {
    /// Each node a `sam-vm-agent` process on this machine.
    Local,
    /// Hetzner Cloud (`HCLOUD_TOKEN`, …; see `sam_providers::HetznerConfig::from_env`).
    Hetzner,
    /// Scaleway (see `sam_providers::ScalewayConfig::from_env`).
    Scaleway,
    /// Google Compute Engine (see `sam_providers::GcpConfig::from_env`).
    Gcp,
    /// Each node a QEMU virtual machine on this machine, booted from cloud-init user
    /// data (see `sam_providers::QemuProvider`); its image comes from `sam image build`.
    Qemu,
}

impl fmt::Display for ProviderChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Local => "local",
            Self::Hetzner => "hetzner",
            Self::Scaleway => "scaleway",
            Self::Gcp => "gcp",
            Self::Qemu => "qemu",
        })
    }
}

impl ProviderChoice {
    /// The longest a single call to this provider may take, which the lease must
    /// cover ([`TimeoutPolicy::validate_with_lease`]).
    ///
    /// A cloud's is the HTTP client's timeout ([`sam_providers::REQUEST_TIMEOUT`],
    /// 30 s). The local and QEMU providers make no network call and bound none of
    /// theirs: zero, so only the renewal rule applies to their lease.
    pub const fn call_timeout(self) -> Duration {
        match self {
            Self::Hetzner | Self::Scaleway | Self::Gcp => sam_providers::REQUEST_TIMEOUT,
            Self::Local | Self::Qemu => Duration::ZERO,
        }
    }
}

/// Everything `sam-server` can be told; see the [module docs](self) for the layers.
///
/// Deliberately without `Default` (it holds credentials): the defaults are per field.
/// It serializes with its secrets shown as `***` (what `--check-config` prints).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// The address the API and the node callbacks listen on. Default `127.0.0.1:8080`.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Where state lives: the SQLite database, the nodes, handed-over workspaces.
    /// Default `.sam-server` (relative to the working directory).
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// With provider `local`: where the local provider keeps its nodes, the
    /// machine's "cloud". Servers that share a local fleet, each with its own data
    /// directory, give the same one. Default `<data_dir>/local`.
    #[serde(default)]
    pub local_root: Option<PathBuf>,
    /// A PostgreSQL URL; without it state is in SQLite in the data directory.
    #[serde(serialize_with = "hidden")]
    #[serde(default)]
    pub database_url: Option<Secret>,
    /// The PostgreSQL schema for the tables, created if missing (`a-z`, `0-9`, `_`,
    /// checked when the store opens). Default: the server's `search_path` (normally `public`).
    #[serde(default)]
    pub database_schema: Option<String>,
    /// The base URL nodes call back to (`http` or `https`). Default: derived from the
    /// bound address, which only suits the local provider.
    #[serde(default)]
    pub public_url: Option<url::Url>,
    /// The user API token (at least 8 characters). Default: one created in
    /// `<data dir>/api-token`.
    #[serde(serialize_with = "hidden")]
    #[serde(default, deserialize_with = "token_text")]
    pub api_token: Option<Secret>,
    /// Any ACP agent, as a shell command (run as the `custom` agent).
    #[serde(default)]
    pub agent_command: Option<String>,
    /// How logs are written to stderr: `text` (default) or `json`.
    #[serde(default = "default_log_format")]
    pub log_format: LogFormat,
    /// Which provider runs the nodes. Default `local`.
    #[serde(default = "default_provider")]
    pub provider: ProviderChoice,
    /// Milliseconds between the runner's looks at waiting tasks (1 to 60000).
    /// Default 250.
    #[serde(default = "default_poll_interval_ms")]
    pub poll_interval_ms: u64,
    /// Seconds between the nodes' heartbeats (1 to 3600): the timeout policy's
    /// `heartbeat_interval`, which `heartbeat_stale_secs` must cover 3 times.
    /// Default 10 (the policy's own default is 60). Local nodes are told it; cloud
    /// and QEMU nodes boot from cloud-init, which does not carry it yet, and beat at
    /// the VM agent's default of 60 s.
    #[serde(default = "default_heartbeat_interval_secs")]
    pub heartbeat_interval_secs: u64,
    /// The key users' and projects' credentials are sealed with (AES-256-GCM): 32
    /// bytes as base64, for example from `openssl rand -base64 32`. Never stored;
    /// without it credentials cannot be set. Best given as `SAM_CREDENTIAL_KEY`.
    #[serde(serialize_with = "hidden")]
    #[serde(default, deserialize_with = "token_text")]
    pub credential_key: Option<Secret>,
    /// Seconds a runner's lease on a task lasts (1 to 3600): how soon another server
    /// sharing the database takes over the tasks of one that died. What is left of it
    /// after one missed renewal (every third of it) must cover the provider's longest
    /// call: at least 45 with a cloud provider. Default 60.
    #[serde(default = "default_lease_secs")]
    pub lease_secs: u64,
    /// The VM agent binary cloud nodes download from `/v1/agent/download`, pinned by
    /// its SHA-256. Default: the `sam-vm-agent` next to this executable.
    #[serde(default)]
    pub vm_agent_binary: Option<PathBuf>,
    /// Where cloud nodes download the VM agent instead (https); needs `agent_sha256`.
    #[serde(default)]
    pub agent_download_url: Option<url::Url>,
    /// The SHA-256 (64 hex digits) of the binary at `agent_download_url`.
    #[serde(default)]
    pub agent_sha256: Option<String>,
    /// The agents whose ACP adapters cloud nodes install (a list, or one
    /// comma-separated string). Default: every known agent.
    #[serde(
        default,
        deserialize_with = "crate::server::agent_download::agent_names"
    )]
    pub node_agents: Option<Vec<String>>,
    /// The directory of the base image QEMU nodes boot from (`sam image build`
    /// prints it). Default: the default recipe's image in the user's cache.
    #[serde(default)]
    pub qemu_image: Option<PathBuf>,
    /// With provider `qemu`: the loopback port of an HTTP proxy for apt on this
    /// machine (apt-cacher-ng listens on 3142), so nodes booted from a bare image
    /// (`sam image build --bare`) can install their packages. Default: none, and
    /// the VMs reach no mirror.
    #[serde(default)]
    pub qemu_apt_proxy_port: Option<u16>,
    /// How many times one task may move to another node after losing its node (a
    /// failed boot, a VM that vanished or failed, an agent that stopped answering, a node
    /// that never reported ready)
    /// before it fails (0 to 10). Default 1.
    #[serde(default = "default_node_replacements")]
    pub node_replacements: u32,
    /// The timeout policy's `capacity_wait`, in seconds. Default 300.
    #[serde(default = "default_capacity_wait_secs")]
    pub capacity_wait_secs: u64,
    /// The timeout policy's `node_provisioning`, in seconds. Default 900.
    #[serde(default = "default_node_provisioning_secs")]
    pub node_provisioning_secs: u64,
    /// The timeout policy's `agent_ready`, in seconds. Default 900.
    #[serde(default = "default_agent_ready_secs")]
    pub agent_ready_secs: u64,
    /// The timeout policy's `workspace_ready`, in seconds. Default 1800.
    #[serde(default = "default_workspace_ready_secs")]
    pub workspace_ready_secs: u64,
    /// The timeout policy's `queued_grace`, in seconds. Default 300.
    #[serde(default = "default_queued_grace_secs")]
    pub queued_grace_secs: u64,
    /// The timeout policy's `delegated_grace`, in seconds. Default 60.
    #[serde(default = "default_delegated_grace_secs")]
    pub delegated_grace_secs: u64,
    /// The timeout policy's `in_progress_soft`, in seconds. Default 14400.
    #[serde(default = "default_in_progress_soft_secs")]
    pub in_progress_soft_secs: u64,
    /// The timeout policy's `in_progress_hard`, in seconds. Default 28800.
    #[serde(default = "default_in_progress_hard_secs")]
    pub in_progress_hard_secs: u64,
    /// The timeout policy's `task_absolute`, in seconds. Default 86400.
    #[serde(default = "default_task_absolute_secs")]
    pub task_absolute_secs: u64,
    /// The timeout policy's `warm_node`, in seconds. Default 1800.
    #[serde(default = "default_warm_node_secs")]
    pub warm_node_secs: u64,
    /// The timeout policy's `node_max_lifetime`, in seconds. Default 86400.
    #[serde(default = "default_node_max_lifetime_secs")]
    pub node_max_lifetime_secs: u64,
    /// The timeout policy's `heartbeat_stale`, in seconds: at least 3 heartbeat
    /// intervals. Default 180.
    #[serde(default = "default_heartbeat_stale_secs")]
    pub heartbeat_stale_secs: u64,
    /// The timeout policy's `agent_idle`, in seconds. Default 300.
    #[serde(default = "default_agent_idle_secs")]
    pub agent_idle_secs: u64,
    /// The timeout policy's `git_command`, in seconds. Default 600.
    #[serde(default = "default_git_command_secs")]
    pub git_command_secs: u64,
    /// Whether `GET /metrics` is served without an API token, for a scraper on a
    /// private network. Default `false`: scrapers send a token, since the port is
    /// also the one nodes call back on.
    #[serde(default)]
    pub metrics_public: bool,
    /// How many days a task's transcript is kept after the task ended (0 keeps it
    /// for good; at most 36,500). Default 30.
    #[serde(default = "default_transcript_retention_days")]
    pub transcript_retention_days: u32,
}

/// A secret as `***` (and nothing when it is not set).
fn hidden<S: serde::Serializer>(secret: &Option<Secret>, s: S) -> Result<S::Ok, S::Error> {
    match secret {
        Some(_) => s.serialize_some("***"),
        None => s.serialize_none(),
    }
}

/// A token as text, also when the environment layer read an all-digit token as a number.
fn token_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Secret>, D::Error> {
    Ok(match Option::<serde_json::Value>::deserialize(d)? {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) => Some(Secret::new(s)),
        Some(serde_json::Value::Number(n)) => Some(Secret::new(n.to_string())),
        Some(_) => return Err(serde::de::Error::custom("expected a string")),
    })
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}

fn default_data_dir() -> PathBuf {
    PathBuf::from(".sam-server")
}

const fn default_log_format() -> LogFormat {
    LogFormat::Text
}

const fn default_provider() -> ProviderChoice {
    ProviderChoice::Local
}

const fn default_poll_interval_ms() -> u64 {
    250
}

const fn default_heartbeat_interval_secs() -> u64 {
    10
}

const fn default_lease_secs() -> u64 {
    60
}

/// A field of [`TimeoutPolicy::default`] in seconds: the default of its key.
fn default_secs(field: fn(&TimeoutPolicy) -> Duration) -> u64 {
    field(&TimeoutPolicy::default()).as_secs()
}

fn default_capacity_wait_secs() -> u64 {
    default_secs(|p| p.capacity_wait)
}

fn default_node_provisioning_secs() -> u64 {
    default_secs(|p| p.node_provisioning)
}

fn default_agent_ready_secs() -> u64 {
    default_secs(|p| p.agent_ready)
}

fn default_workspace_ready_secs() -> u64 {
    default_secs(|p| p.workspace_ready)
}

fn default_queued_grace_secs() -> u64 {
    default_secs(|p| p.queued_grace)
}

fn default_delegated_grace_secs() -> u64 {
    default_secs(|p| p.delegated_grace)
}

fn default_in_progress_soft_secs() -> u64 {
    default_secs(|p| p.in_progress_soft)
}

fn default_in_progress_hard_secs() -> u64 {
    default_secs(|p| p.in_progress_hard)
}

fn default_task_absolute_secs() -> u64 {
    default_secs(|p| p.task_absolute)
}

fn default_warm_node_secs() -> u64 {
    default_secs(|p| p.warm_node)
}

fn default_node_max_lifetime_secs() -> u64 {
    default_secs(|p| p.node_max_lifetime)
}

fn default_heartbeat_stale_secs() -> u64 {
    default_secs(|p| p.heartbeat_stale)
}

fn default_agent_idle_secs() -> u64 {
    default_secs(|p| p.agent_idle)
}

fn default_git_command_secs() -> u64 {
    default_secs(|p| p.git_command)
}

const fn default_node_replacements() -> u32 {
    1
}

const fn default_transcript_retention_days() -> u32 {
    30
}

/// A configuration that cannot be used.
#[derive(Debug)]
pub enum ConfigError {
    /// A layer sets a value that does not parse (figment names the key and the layer).
    Parse(Box<figment::Error>),
    /// A value parses but is not allowed.
    Invalid {
        /// The field at fault.
        field: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// The timeouts contradict each other or the lease
    /// ([`TimeoutPolicy::validate_with_lease`]).
    Timeouts {
        /// The key of the value at fault (`heartbeat_stale_secs`, `lease_secs`, …).
        field: &'static str,
        /// The rule broken, naming the values in conflict.
        source: PolicyError,
    },
}

impl ConfigError {
    /// A timeout policy error, with the policy's field turned into its key.
    fn timeouts(source: PolicyError) -> Self {
        let field = TIMEOUT_KEYS
            .iter()
            .find(|(f, _)| *f == source.field)
            .map_or(source.field, |(_, key)| *key);
        Self::Timeouts { field, source }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Parse(e) => {
                let mut first = true;
                for error in e.as_ref().clone() {
                    if !first {
                        f.write_str("; ")?;
                    }
                    first = false;
                    let kind = error.kind.to_string();
                    let kind = kind.trim();
                    match error.path.join(".").to_lowercase() {
                        key if key.is_empty() => write!(f, "invalid configuration: {kind}")?,
                        key => write!(f, "invalid configuration: `{key}`: {kind}")?,
                    }
                    let Some(metadata) = &error.metadata else {
                        continue;
                    };
                    match &metadata.source {
                        Some(figment::Source::File(path)) => {
                            write!(f, " (in {})", path.display())?;
                        }
                        // The only layer built in code is the command line's.
                        Some(figment::Source::Code(_)) => write!(f, " (from a flag)")?,
                        Some(source) => write!(f, " (in {source})")?,
                        // Only the environment layer has no source.
                        None => write!(f, " (from SAM_{})", error.path.join("_").to_uppercase())?,
                    }
                }
                Ok(())
            }
            Self::Invalid { field, message } => {
                write!(f, "invalid configuration: `{field}` {message}")
            }
            Self::Timeouts { field, source } => {
                write!(f, "invalid configuration: `{field}`: {source}")
            }
        }
    }
}

impl std::error::Error for ConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Parse(e) => Some(e.as_ref()),
            Self::Invalid { .. } => None,
            Self::Timeouts { source, .. } => Some(source),
        }
    }
}

impl ServerConfig {
    /// The layered configuration: defaults, then `file` (TOML, when given), then the
    /// `SAM_*` variables of [`ENV_KEYS`], then `flags` (fields it sets win); validated.
    ///
    /// # Errors
    /// [`ConfigError::Parse`] when a layer sets a value of the wrong type or an unknown
    /// key (or `file` is missing), [`ConfigError::Invalid`] naming the field when a
    /// value is out of range.
    pub fn load(file: Option<&Path>, flags: impl figment::Provider) -> Result<Self, ConfigError> {
        Self::load_explained(file, flags).map(|(config, _)| config)
    }

    /// As [`ServerConfig::load`], with where each field's value came from, by field
    /// name (every field is listed; one no layer set is [`ValueSource::Default`]).
    ///
    /// # Errors
    /// As [`ServerConfig::load`].
    pub fn load_explained(
        file: Option<&Path>,
        flags: impl figment::Provider,
    ) -> Result<(Self, BTreeMap<String, ValueSource>), ConfigError> {
        let mut figment = Figment::new();
        if let Some(file) = file {
            figment = figment.merge(Toml::file_exact(file));
        }
        let figment = figment
            .merge(Env::prefixed("SAM_").only(&ENV_KEYS))
            .merge(flags);
        let config: Self = figment
            .extract()
            .map_err(|e| ConfigError::Parse(Box::new(e)))?;
        let sources = config
            .fields()
            .into_iter()
            .map(|(key, _)| {
                let source = match figment.find_metadata(&key) {
                    None => ValueSource::Default,
                    Some(metadata) => match &metadata.source {
                        Some(figment::Source::File(path)) => ValueSource::File(path.clone()),
                        // The only layer built in code is the command line's.
                        Some(figment::Source::Code(_)) => {
                            ValueSource::Flag(format!("--{}", key.replace('_', "-")))
                        }
                        Some(other) => ValueSource::File(PathBuf::from(other.to_string())),
                        // Only the environment layer has no source.
                        None => ValueSource::Env(format!("SAM_{}", key.to_uppercase())),
                    },
                };
                (key, source)
            })
            .collect();
        config.validate()?;
        // The secrets are masked in every log line from here on.
        for secret in [
            &config.api_token,
            &config.credential_key,
            &config.database_url,
        ]
        .into_iter()
        .flatten()
        {
            sam_core::secret::register(secret.expose());
        }
        Ok((config, sources))
    }

    /// Checks the values a type cannot.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the first field at fault.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field, message: &str| {
            Err(ConfigError::Invalid {
                field,
                message: message.to_owned(),
            })
        };
        if self.data_dir.as_os_str().is_empty() {
            return invalid("data_dir", "is empty");
        }
        if !(1..=60_000).contains(&self.poll_interval_ms) {
            return invalid(
                "poll_interval_ms",
                &format!("must be 1 to 60000 (ms), not {}", self.poll_interval_ms),
            );
        }
        if !(1..=3_600).contains(&self.heartbeat_interval_secs) {
            return invalid(
                "heartbeat_interval_secs",
                &format!(
                    "must be 1 to 3600 (s), not {}",
                    self.heartbeat_interval_secs
                ),
            );
        }
        if let Some(key) = &self.credential_key
            && let Err(e) = sam_core::CredentialCipher::new(key)
        {
            return invalid("credential_key", &e.to_string());
        }
        if self.transcript_retention_days > 36_500 {
            return invalid(
                "transcript_retention_days",
                &format!(
                    "must be 0 (keep for good) to 36500, not {}",
                    self.transcript_retention_days
                ),
            );
        }
        if self.node_replacements > 10 {
            return invalid(
                "node_replacements",
                &format!("must be 0 to 10, not {}", self.node_replacements),
            );
        }
        if !(1..=3_600).contains(&self.lease_secs) {
            return invalid(
                "lease_secs",
                &format!("must be 1 to 3600 (s), not {}", self.lease_secs),
            );
        }
        for ((_, key), secs) in TIMEOUT_KEYS.into_iter().zip(self.timeout_values()) {
            if secs > MAX_TIMEOUT_SECS {
                return invalid(
                    key,
                    &format!("must be at most {MAX_TIMEOUT_SECS} (s, 30 days), not {secs}"),
                );
            }
        }
        self.derived_timeouts()?;
        if let Some(url) = &self.public_url
            && !matches!(url.scheme(), "http" | "https")
        {
            return invalid(
                "public_url",
                &format!("must be an http or https URL, not `{}:`", url.scheme()),
            );
        }
        if let Some(token) = &self.api_token
            && token.expose().trim().len() < 8
        {
            return invalid("api_token", "must be at least 8 characters");
        }
        if let Some(url) = &self.database_url
            && !url.expose().starts_with("postgres")
        {
            return invalid("database_url", "must be a postgres:// or postgresql:// URL");
        }
        // The schema's characters are checked by the store (`sam_store::PgConfig`).
        if self.database_schema.is_some() && self.database_url.is_none() {
            return invalid("database_schema", "needs `database_url`");
        }
        crate::server::agent_download::check(self)?;
        if self.qemu_apt_proxy_port == Some(0) {
            return invalid("qemu_apt_proxy_port", "must not be 0");
        }
        if self.qemu_apt_proxy_port.is_some() && self.provider != ProviderChoice::Qemu {
            return invalid("qemu_apt_proxy_port", "is for provider `qemu`");
        }
        if self.provider == ProviderChoice::Qemu {
            // The VMs reach only this machine's loopback, through QEMU's forward.
            if self.agent_download_url.is_some() {
                return invalid(
                    "agent_download_url",
                    "QEMU nodes reach nothing but this server: they download the agent from it",
                );
            }
            if let Some(url) = &self.public_url
                && !url
                    .host()
                    .is_some_and(|h| matches!(h, url::Host::Ipv4(ip) if ip.is_loopback()))
            {
                return invalid(
                    "public_url",
                    "with provider `qemu` must be on 127.0.0.1: QEMU forwards its VMs to this machine's loopback",
                );
            }
            return Ok(());
        }
        if self.provider != ProviderChoice::Local
            && self
                .public_url
                .as_ref()
                .is_none_or(|u| u.scheme() != "https")
        {
            return invalid(
                "public_url",
                &format!(
                    "must be an https URL with provider `{}`: the URL its VMs call back to",
                    self.provider
                ),
            );
        }
        Ok(())
    }

    /// The runner's poll interval.
    pub const fn poll_interval(&self) -> Duration {
        Duration::from_millis(self.poll_interval_ms)
    }

    /// How long a runner's lease on a task lasts.
    pub const fn lease(&self) -> Duration {
        Duration::from_secs(self.lease_secs)
    }

    /// How long a transcript is kept after its task ended; `None` keeps it for good.
    pub const fn transcript_retention(&self) -> Option<Duration> {
        match self.transcript_retention_days {
            0 => None,
            days => Some(Duration::from_secs(days as u64 * 24 * 3600)),
        }
    }

    /// The timeout policy the timeout keys describe.
    pub fn timeouts(&self) -> TimeoutPolicy {
        let s = Duration::from_secs;
        TimeoutPolicy {
            capacity_wait: s(self.capacity_wait_secs),
            node_provisioning: s(self.node_provisioning_secs),
            agent_ready: s(self.agent_ready_secs),
            workspace_ready: s(self.workspace_ready_secs),
            queued_grace: s(self.queued_grace_secs),
            delegated_grace: s(self.delegated_grace_secs),
            in_progress_soft: s(self.in_progress_soft_secs),
            in_progress_hard: s(self.in_progress_hard_secs),
            task_absolute: s(self.task_absolute_secs),
            warm_node: s(self.warm_node_secs),
            node_max_lifetime: s(self.node_max_lifetime_secs),
            heartbeat_interval: s(self.heartbeat_interval_secs),
            heartbeat_stale: s(self.heartbeat_stale_secs),
            agent_idle: s(self.agent_idle_secs),
            git_command: s(self.git_command_secs),
        }
    }

    /// The value of each key of [`TIMEOUT_KEYS`] in seconds, in its order.
    const fn timeout_values(&self) -> [u64; 16] {
        [
            self.capacity_wait_secs,
            self.node_provisioning_secs,
            self.agent_ready_secs,
            self.workspace_ready_secs,
            self.queued_grace_secs,
            self.delegated_grace_secs,
            self.in_progress_soft_secs,
            self.in_progress_hard_secs,
            self.task_absolute_secs,
            self.warm_node_secs,
            self.node_max_lifetime_secs,
            self.heartbeat_interval_secs,
            self.heartbeat_stale_secs,
            self.agent_idle_secs,
            self.git_command_secs,
            self.lease_secs,
        ]
    }

    /// The timeout policy checked with the lease and the provider's longest call,
    /// and the values they derive.
    ///
    /// # Errors
    /// [`ConfigError::Timeouts`] naming the key at fault and the values in conflict.
    pub fn derived_timeouts(&self) -> Result<DerivedTimeouts, ConfigError> {
        self.timeouts()
            .validate_with_lease(self.lease(), self.provider.call_timeout())
            .map_err(ConfigError::timeouts)
    }

    /// The timeouts and what they derive, one `name = seconds` line each, under two
    /// headings: what `sam-server --check-config` prints after the configuration.
    ///
    /// # Errors
    /// As [`ServerConfig::derived_timeouts`].
    pub fn timeouts_report(&self) -> Result<String, ConfigError> {
        use fmt::Write as _;
        let derived = self.derived_timeouts()?;
        let mut out = String::from("timeouts (seconds):\n");
        for ((_, key), secs) in TIMEOUT_KEYS.into_iter().zip(self.timeout_values()) {
            let _ = writeln!(out, "  {key} = {secs}");
        }
        let replacements = self.node_replacements;
        let stuck_after = self.timeouts().stuck_queued_after(replacements);
        let lines = [
            ("stuck_queued", derived.stuck_queued),
            ("stuck_queued_after_replacements", stuck_after),
            ("stuck_delegated", derived.stuck_delegated),
            ("longest_legitimate_task", derived.longest_legitimate_task),
            ("lease_renewal", derived.lease_renewal),
            (
                "lease_after_missed_renewal",
                derived.lease_after_missed_renewal,
            ),
            ("provider_call", derived.provider_call),
        ];
        out.push_str("derived (seconds):\n");
        for (name, value) in lines {
            let _ = writeln!(out, "  {name} = {}", seconds(value));
        }
        let _ = writeln!(
            out,
            "  heartbeats_before_stale = {}",
            derived.heartbeats_before_stale
        );
        Ok(out)
    }
}

/// Where a value of the effective configuration came from (`--check-config`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValueSource {
    /// No layer set it: the built-in default.
    Default,
    /// The configuration file at this path.
    File(PathBuf),
    /// This environment variable (`SAM_LISTEN`, …).
    Env(String),
    /// This command-line flag (`--listen`, …).
    Flag(String),
}

impl fmt::Display for ValueSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Default => f.write_str("default"),
            Self::File(path) => write!(f, "{}", path.display()),
            Self::Env(name) | Self::Flag(name) => f.write_str(name),
        }
    }
}

impl ServerConfig {
    /// Every field with its value, secrets as `***`, in declaration order; a field
    /// that is not set is `null`.
    fn fields(&self) -> Vec<(String, serde_json::Value)> {
        match serde_json::to_value(self) {
            Ok(serde_json::Value::Object(map)) => map.into_iter().collect(),
            // A struct of plain fields always serializes to an object.
            _ => Vec::new(),
        }
    }

    /// The effective configuration as TOML, one `key = value` line each with a
    /// comment naming where it came from (`# from SAM_LISTEN`, `# from --listen`,
    /// `# from /etc/sam.toml`, `# default`); secrets show as `***`; a key that is
    /// not set is a comment. Then, as comments, every timeout and what it derives
    /// ([`ServerConfig::timeouts_report`]). What `sam-server --check-config` prints;
    /// the text parses as TOML.
    ///
    /// # Errors
    /// As [`ServerConfig::derived_timeouts`].
    pub fn check_report(
        &self,
        sources: &BTreeMap<String, ValueSource>,
    ) -> Result<String, ConfigError> {
        use fmt::Write as _;
        let mut out = String::from(
            "# The effective configuration of sam-server, with where each value came from.\n",
        );
        let mut unset = Vec::new();
        for (key, value) in self.fields() {
            let source = sources.get(&key).unwrap_or(&ValueSource::Default);
            let from = match source {
                ValueSource::Default => "default".to_owned(),
                other => format!("from {other}"),
            };
            match toml::Value::try_from(&value) {
                Ok(value) => {
                    let _ = writeln!(out, "{key} = {value} # {from}");
                }
                // `null` has no TOML form (it fails to convert): the key is not set.
                Err(_) => unset.push(key),
            }
        }
        for key in unset {
            let _ = writeln!(out, "# {key} is not set");
        }
        for line in self.timeouts_report()?.lines() {
            let _ = writeln!(out, "# {line}");
        }
        Ok(out)
    }
}

/// A duration in seconds, with a fraction only when it has one (`20`, `3.333`).
fn seconds(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        d.as_secs().to_string()
    } else {
        format!("{:.3}", d.as_secs_f64())
    }
}

/// The provider `choice` names, built from its environment variables
/// (`sam_providers::{HetznerConfig, ScalewayConfig, GcpConfig}::from_env`), and for a
/// cloud the factory that builds the same provider from a user's or project's own
/// credential, with the platform's config as its template.
///
/// # Errors
/// When a variable is missing or invalid; the message names it (`HCLOUD_TOKEN`, …).
pub fn node_provider(
    choice: ProviderChoice,
    qemu_image: Option<&std::path::Path>,
) -> anyhow::Result<(
    NodeProvider,
    Option<std::sync::Arc<dyn sam_core::ProviderFactory>>,
)> {
    use std::sync::Arc;

    use anyhow::Context as _;
    use sam_providers::{
        CloudProviderFactory, GcpConfig, GcpProvider, HetznerConfig, HetznerProvider,
        ScalewayConfig, ScalewayProvider,
    };
    let context = || format!("cannot set up provider `{choice}` from the environment");
    let factory = CloudProviderFactory::new();
    let (provider, factory): (Arc<dyn sam_core::Provider>, _) = match choice {
        ProviderChoice::Local => return Ok((NodeProvider::Local, None)),
        ProviderChoice::Qemu => {
            let nodes = crate::embedded::QemuNodes::from_image_dir(qemu_image)?;
            return Ok((NodeProvider::Qemu(nodes), None));
        }
        ProviderChoice::Hetzner => {
            let config = HetznerConfig::from_env().with_context(context)?;
            let provider = HetznerProvider::new(config.clone()).with_context(context)?;
            (Arc::new(provider), factory.with_hetzner(config))
        }
        ProviderChoice::Scaleway => {
            let config = ScalewayConfig::from_env().with_context(context)?;
            let provider = ScalewayProvider::new(config.clone()).with_context(context)?;
            (Arc::new(provider), factory.with_scaleway(config))
        }
        ProviderChoice::Gcp => {
            let config = GcpConfig::from_env().with_context(context)?;
            let provider = GcpProvider::new(config.clone()).with_context(context)?;
            (Arc::new(provider), factory.with_gcp(config))
        }
    };
    Ok((NodeProvider::Cloud(provider), Some(Arc::new(factory))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use figment::providers::Serialized;

    fn check(flags: serde_json::Value, field: Option<&str>) {
        let result = ServerConfig::load(None, Serialized::globals(flags.clone()));
        match (result, field) {
            (Ok(_), None) => {}
            (
                Err(
                    ConfigError::Invalid { field: got, .. }
                    | ConfigError::Timeouts { field: got, .. },
                ),
                Some(want),
            ) => {
                assert_eq!(got, want, "{flags}");
            }
            (Err(ConfigError::Parse(e)), Some(want)) => {
                assert!(e.to_string().contains(want), "{flags}: {e}");
            }
            (other, want) => panic!("{flags}: {other:?}, wanted an error naming {want:?}"),
        }
    }

    #[test]
    fn values_are_checked_and_errors_name_the_field() {
        check(serde_json::json!({}), None);
        check(
            serde_json::json!({"poll_interval_ms": 0}),
            Some("poll_interval_ms"),
        );
        check(
            serde_json::json!({"heartbeat_interval_secs": 7200}),
            Some("heartbeat_interval_secs"),
        );
        check(serde_json::json!({"transcript_retention_days": 0}), None);
        check(
            serde_json::json!({"transcript_retention_days": 36_500}),
            None,
        );
        check(
            serde_json::json!({"transcript_retention_days": 36_501}),
            Some("transcript_retention_days"),
        );
        check(serde_json::json!({"node_replacements": 0}), None);
        check(serde_json::json!({"node_replacements": 3}), None);
        check(
            serde_json::json!({"node_replacements": 11}),
            Some("node_replacements"),
        );
        check(
            serde_json::json!({"node_replacements": -1}),
            Some("node_replacements"),
        );
        check(serde_json::json!({"api_token": "short"}), Some("api_token"));
        check(serde_json::json!({"api_token": 123_456_789}), None);
        check(serde_json::json!({"api_token": [1]}), Some("api_token"));
        check(
            serde_json::json!({"public_url": "ftp://x/"}),
            Some("public_url"),
        );
        check(
            serde_json::json!({"provider": "hetzner"}),
            Some("public_url"),
        );
        check(
            serde_json::json!({"provider": "hetzner", "public_url": "https://sam.example/"}),
            None,
        );
        check(serde_json::json!({"provider": "aws"}), Some("provider"));
        check(serde_json::json!({"listen": "nowhere"}), Some("listen"));
        check(
            serde_json::json!({"database_url": "mysql://x"}),
            Some("database_url"),
        );
        check(serde_json::json!({"no_such_key": 1}), Some("no_such_key"));
        check(
            serde_json::json!({"database_schema": "s"}),
            Some("database_schema"),
        );
        check(
            serde_json::json!({"database_url": "postgres://h/d", "database_schema": "sam_1"}),
            None,
        );
        check(
            serde_json::json!({"agent_ready_secs": "soon"}),
            Some("agent_ready_secs"),
        );
        check(
            serde_json::json!({"warm_node_secs": MAX_TIMEOUT_SECS + 1}),
            Some("warm_node_secs"),
        );
        check(
            serde_json::json!({"queued_grace_secs": 0}),
            Some("queued_grace_secs"),
        );
    }

    /// Every timeout key can come from the environment, and every one names a field.
    #[test]
    fn every_timeout_key_is_a_known_key() {
        for (field, key) in TIMEOUT_KEYS {
            assert!(ENV_KEYS.contains(&key), "{key} is read from SAM_*");
            assert_eq!(key, format!("{field}_secs"));
        }
        let config = ServerConfig::load(None, Serialized::globals(serde_json::json!({}))).unwrap();
        assert_eq!(
            config.timeouts(),
            TimeoutPolicy {
                heartbeat_interval: Duration::from_secs(10),
                ..TimeoutPolicy::default()
            },
            "every timeout defaults to the policy's, but the heartbeat's own 10 s"
        );
        assert_eq!(config.lease(), Duration::from_secs(60));
    }

    /// A timeout from the file, overridden by a flag; the rest keep their defaults.
    #[test]
    fn timeouts_come_from_the_file_and_flags_win() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("sam-server.toml");
        std::fs::write(
            &file,
            "agent_ready_secs = 1200\nheartbeat_interval_secs = 20\nheartbeat_stale_secs = 90\nlease_secs = 90\n",
        )
        .unwrap();
        let load = |flags| ServerConfig::load(Some(&file), Serialized::globals(flags));
        let config = load(serde_json::json!({})).unwrap();
        let t = config.timeouts();
        assert_eq!(t.agent_ready, Duration::from_secs(1200));
        assert_eq!(t.heartbeat_interval, Duration::from_secs(20));
        assert_eq!(t.heartbeat_stale, Duration::from_secs(90));
        assert_eq!(
            t.node_provisioning,
            TimeoutPolicy::default().node_provisioning
        );
        assert_eq!(config.lease(), Duration::from_secs(90));
        let derived = config.derived_timeouts().unwrap();
        assert_eq!(derived.lease_renewal, Duration::from_secs(30));
        assert_eq!(derived.stuck_queued, Duration::from_secs(300 + 1200 + 300));

        let config =
            load(serde_json::json!({"agent_ready_secs": 600, "git_command_secs": 60})).unwrap();
        assert_eq!(config.timeouts().agent_ready, Duration::from_secs(600));
        assert_eq!(config.timeouts().git_command, Duration::from_secs(60));
    }

    /// Loads `flags` expecting a contradiction reported on `key`, whose message says
    /// each of `wants`.
    fn refused(flags: serde_json::Value, key: &str, wants: &[&str]) {
        match ServerConfig::load(None, Serialized::globals(flags.clone())) {
            Err(e @ ConfigError::Timeouts { field, .. }) => {
                assert_eq!(field, key, "{flags}: {e}");
                let text = e.to_string();
                for want in wants {
                    assert!(text.contains(want), "{want:?} in {text}");
                }
            }
            other => panic!("{flags}: {other:?}, wanted a timeout error on {key}"),
        }
    }

    #[test]
    fn contradicting_timeouts_are_refused_at_load_naming_the_values() {
        refused(
            serde_json::json!({"heartbeat_interval_secs": 600, "heartbeat_stale_secs": 180}),
            "heartbeat_stale_secs",
            &[
                "`heartbeat_stale_secs`",
                "heartbeat_stale (180 s) must cover 3 heartbeats of heartbeat_interval (600 s)",
            ],
        );
        // A cloud's calls take up to 30 s: a 30 s lease is too short, 45 s is enough.
        let cloud = |lease: u64| {
            serde_json::json!({
                "provider": "hetzner",
                "public_url": "https://sam.example/",
                "lease_secs": lease,
            })
        };
        refused(
            cloud(30),
            "lease_secs",
            &["lease (30 s) must cover the longest provider call (30 s)"],
        );
        refused(cloud(20), "lease_secs", &["(20 s)", "(30 s)"]);
        check(cloud(45), None);
        // The local provider makes no call to cover: a short lease is enough.
        check(serde_json::json!({"lease_secs": 3}), None);
        // A sweep that fires before its wait can finish is refused as before.
        refused(
            serde_json::json!({"delegated_grace_secs": 0}),
            "delegated_grace_secs",
            &["stuck-delegated"],
        );
    }

    #[test]
    fn the_report_lists_every_timeout_and_what_it_derives() {
        let config = ServerConfig::load(None, Serialized::globals(serde_json::json!({}))).unwrap();
        let report = config.timeouts_report().unwrap();
        for (_, key) in TIMEOUT_KEYS {
            assert!(report.contains(&format!("  {key} = ")), "{key} in {report}");
        }
        for want in [
            "timeouts (seconds):",
            "derived (seconds):",
            "  stuck_queued = 1500\n",
            "  stuck_queued_after_replacements = 2400\n",
            "  stuck_delegated = 1860\n",
            "  longest_legitimate_task = 32160\n",
            "  lease_renewal = 20\n",
            "  lease_after_missed_renewal = 40\n",
            "  provider_call = 0\n",
            "  heartbeats_before_stale = 18\n",
        ] {
            assert!(report.contains(want), "{want:?} in {report}");
        }
        let config = ServerConfig::load(
            None,
            Serialized::globals(serde_json::json!({"lease_secs": 10})),
        )
        .unwrap();
        assert!(
            config
                .timeouts_report()
                .unwrap()
                .contains("  lease_renewal = 3.333\n"),
            "a fraction is shown"
        );
    }
}
