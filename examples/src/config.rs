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

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format as _, Toml};
use sam_core::Secret;
use serde::Deserialize;

use crate::embedded::NodeProvider;
use crate::server::LogFormat;

/// The fields `SAM_*` environment variables may set (upper-cased, after `SAM_`).
pub const ENV_KEYS: [&str; 18] = [
    "listen",
    "data_dir",
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
];

/// Which provider runs the nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
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

/// Everything `sam-server` can be told; see the [module docs](self) for the layers.
///
/// Deliberately without `Default` (it holds credentials): the defaults are per field.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// The address the API and the node callbacks listen on. Default `127.0.0.1:8080`.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Where state lives: the SQLite database, the nodes, handed-over workspaces.
    /// Default `.sam-server` (relative to the working directory).
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// A PostgreSQL URL; without it state is in SQLite in the data directory.
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
    /// Seconds between the nodes' heartbeats (1 to 3600). Default 10.
    #[serde(default = "default_heartbeat_interval_secs")]
    pub heartbeat_interval_secs: u64,
    /// The key users' and projects' credentials are sealed with (AES-256-GCM): 32
    /// bytes as base64, for example from `openssl rand -base64 32`. Never stored;
    /// without it credentials cannot be set. Best given as `SAM_CREDENTIAL_KEY`.
    #[serde(default, deserialize_with = "token_text")]
    pub credential_key: Option<Secret>,
    /// Seconds a runner's lease on a task lasts (1 to 3600): how soon another server
    /// sharing the database takes over the tasks of one that died. Default 30.
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
    30
}

const fn default_node_replacements() -> u32 {
    1
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
        }
    }
}

impl std::error::Error for ConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Parse(e) => Some(e.as_ref()),
            Self::Invalid { .. } => None,
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
        Ok(config)
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
            (Err(ConfigError::Invalid { field: got, .. }), Some(want)) => {
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
    }
}
