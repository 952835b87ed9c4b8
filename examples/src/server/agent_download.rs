//! Agent delivery: which VM agent binary cloud nodes install, pinned by its SHA-256.
//!
//! `GET /v1/agent/download` serves the binary this server was built with (the
//! `sam-vm-agent` next to the running executable) or the file named by
//! `vm_agent_binary`, streamed, with its SHA-256 in [`SHA256_HEADER`]. It needs no
//! token: the binary is public. Every node's boot pins the same SHA-256
//! ([`AgentDelivery::sha256`]), so a node installs exactly this file or fails its
//! `agent-download` phase. An operator may instead point nodes at their own copy
//! (`agent_download_url` and `agent_sha256`, both or neither).

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use axum::Extension;
use axum::body::Body;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse as _, Response};
use sam_core::ErrorCategory;
use sha2::Digest as _;
use tokio::io::AsyncReadExt as _;

use super::ApiError;
use crate::config::{ConfigError, ProviderChoice, ServerConfig};

/// The route's path (`GET`, no token).
pub const PATH: &str = "/v1/agent/download";
/// The response header carrying the served binary's SHA-256, in lower-case hex.
pub const SHA256_HEADER: &str = "x-sam-agent-sha256";
/// The VM agent binary's name, next to the server's own executable.
pub const BINARY_NAME: &str = "sam-vm-agent";

/// A VM agent binary on this machine, with the SHA-256 it had when it was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentBinary {
    path: PathBuf,
    sha256: String,
    len: u64,
    modified: Option<SystemTime>,
}

impl AgentBinary {
    /// Reads `path` whole and records its SHA-256, size and modification time.
    ///
    /// # Errors
    /// When `path` is not a readable regular file.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let mut file = std::fs::File::open(path)?;
        let metadata = file.metadata()?;
        if !metadata.is_file() {
            return Err(std::io::Error::other("not a regular file"));
        }
        let mut hasher = sha2::Sha256::new();
        let mut buffer = vec![0; 64 * 1024];
        loop {
            let read = file.read(&mut buffer)?;
            if read == 0 {
                break;
            }
            hasher.update(&buffer[..read]);
        }
        Ok(Self {
            path: path.to_owned(),
            sha256: hex(&hasher.finalize()),
            len: metadata.len(),
            modified: metadata.modified().ok(),
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Its SHA-256, lower-case hex.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// Whether the file on disk is still the one that was hashed (same size and
    /// modification time).
    fn unchanged(&self, metadata: &std::fs::Metadata) -> bool {
        metadata.len() == self.len && metadata.modified().ok() == self.modified
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Where cloud nodes get their VM agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentDelivery {
    /// From this server, at [`PATH`].
    Served(AgentBinary),
    /// From the operator's URL, pinned to the operator's checksum.
    External {
        /// Where nodes download the binary.
        url: url::Url,
        /// Its SHA-256, lower-case hex.
        sha256: String,
        /// The binary this server also serves at [`PATH`], if it has one.
        served: Option<AgentBinary>,
    },
}

impl AgentDelivery {
    /// What `config` says, with the binary read and hashed now: `None` when nothing
    /// is configured and no `sam-vm-agent` lies next to this executable, which only
    /// the local provider accepts.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the field: `agent_download_url` without
    /// `agent_sha256` or the reverse, a malformed checksum, a `vm_agent_binary` that
    /// cannot be read, or a cloud provider with no binary to pin.
    pub fn from_config(config: &ServerConfig) -> Result<Option<Self>, ConfigError> {
        check(config)?;
        let served = match &config.vm_agent_binary {
            Some(path) => Some(AgentBinary::open(path).map_err(|e| {
                invalid(
                    "vm_agent_binary",
                    format!("cannot be read at {}: {e}", path.display()),
                )
            })?),
            None => std::env::current_exe()
                .ok()
                .and_then(|exe| Some(exe.parent()?.join(BINARY_NAME)))
                .filter(|path| path.is_file())
                .and_then(|path| AgentBinary::open(&path).ok()),
        };
        let delivery = match (&config.agent_download_url, &config.agent_sha256) {
            (Some(url), Some(sha256)) => Some(Self::External {
                url: url.clone(),
                sha256: sha256.to_ascii_lowercase(),
                served,
            }),
            _ => served.map(Self::Served),
        };
        if delivery.is_none() && config.provider != ProviderChoice::Local {
            return Err(invalid(
                "vm_agent_binary",
                format!(
                    "is needed with provider `{}`: no {BINARY_NAME} lies next to this \
                     executable (build it with `cargo build --release --bin {BINARY_NAME}`), \
                     so name one, or give `agent_download_url` and `agent_sha256`",
                    config.provider
                ),
            ));
        }
        Ok(delivery)
    }

    /// The SHA-256 every node's boot pins.
    pub fn sha256(&self) -> &str {
        match self {
            Self::Served(binary) => binary.sha256(),
            Self::External { sha256, .. } => sha256,
        }
    }

    /// Where nodes download the binary; `None` means this server's [`PATH`].
    pub fn download_url(&self) -> Option<&url::Url> {
        match self {
            Self::Served(_) => None,
            Self::External { url, .. } => Some(url),
        }
    }

    /// The boot settings every cloud node shares, pinning this agent and installing
    /// `agents` (`None`: every known agent); the control-plane URL (empty here) and
    /// the agent port are the embedding's to set.
    pub fn cloud_boot(&self, agents: Option<&[String]>) -> sam_cloudinit::CloudInitBoot {
        let mut boot = sam_cloudinit::CloudInitBoot::new(String::new(), self.sha256());
        boot.agent_download_url = self.download_url().map(ToString::to_string);
        if let Some(agents) = agents {
            boot.agents = agents.to_vec();
        }
        boot
    }

    /// The binary this server serves at [`PATH`], if any.
    pub fn served(&self) -> Option<&AgentBinary> {
        match self {
            Self::Served(binary) => Some(binary),
            Self::External { served, .. } => served.as_ref(),
        }
    }
}

fn invalid(field: &'static str, message: String) -> ConfigError {
    ConfigError::Invalid { field, message }
}

/// Agent names as a list, or as one comma-separated string (an environment
/// variable).
///
/// # Errors
/// When the value is neither.
pub fn agent_names<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Vec<String>>, D::Error> {
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum Names {
        List(Vec<String>),
        Text(String),
    }
    Ok(
        match <Option<Names> as serde::Deserialize>::deserialize(d)? {
            None => None,
            Some(Names::List(names)) => Some(names),
            Some(Names::Text(text)) => Some(
                text.split(',')
                    .map(str::trim)
                    .filter(|name| !name.is_empty())
                    .map(str::to_owned)
                    .collect(),
            ),
        },
    )
}

/// The checks that need no file: the URL and checksum come together, the checksum
/// is 64 hex digits, a named binary is a file, and every node agent is known.
///
/// # Errors
/// [`ConfigError::Invalid`] naming the field at fault.
pub fn check(config: &ServerConfig) -> Result<(), ConfigError> {
    match (&config.agent_download_url, &config.agent_sha256) {
        (Some(_), None) => {
            return Err(invalid(
                "agent_download_url",
                "needs `agent_sha256`, the binary's SHA-256, so nodes can check it".into(),
            ));
        }
        (None, Some(_)) => {
            return Err(invalid(
                "agent_sha256",
                "needs `agent_download_url`: the binary this server serves pins its own checksum"
                    .into(),
            ));
        }
        (Some(url), Some(sha256)) => {
            if !(sha256.len() == 64 && sha256.bytes().all(|b| b.is_ascii_hexdigit())) {
                return Err(invalid(
                    "agent_sha256",
                    "must be 64 hexadecimal digits (`sha256sum sam-vm-agent`)".into(),
                ));
            }
            if url.scheme() != "https" {
                return Err(invalid(
                    "agent_download_url",
                    format!("must be an https URL, not `{}:`", url.scheme()),
                ));
            }
        }
        (None, None) => {}
    }
    for name in config.node_agents.iter().flatten() {
        if sam_cloudinit::agent_adapter(name).is_none() {
            let known: Vec<&str> = sam_cloudinit::AGENT_ADAPTERS
                .iter()
                .map(|a| a.agent)
                .collect();
            return Err(invalid(
                "node_agents",
                format!(
                    "names an unknown agent {name:?} (known: {})",
                    known.join(", ")
                ),
            ));
        }
    }
    if let Some(path) = &config.vm_agent_binary
        && !path.is_file()
    {
        return Err(invalid(
            "vm_agent_binary",
            format!("{} is not a file", path.display()),
        ));
    }
    Ok(())
}

/// The VM agent binary nodes install.
#[utoipa::path(get, path = "/v1/agent/download", tag = "nodes",
    responses(
        (status = 200, description = "The VM agent binary, its SHA-256 in `x-sam-agent-sha256`",
            content_type = "application/octet-stream"),
        (status = 404, description = "This server serves no VM agent binary", body = super::ErrorDoc),
        (status = 500, description = "The binary changed since the server started", body = super::ErrorDoc),
    ))]
pub(super) async fn download(
    Extension(binary): Extension<Option<AgentBinary>>,
) -> Result<Response, ApiError> {
    let Some(binary) = binary else {
        return Err(ApiError::new(
            ErrorCategory::NotFound,
            "this server serves no VM agent binary (see `vm_agent_binary`)",
        ));
    };
    let unreadable = |e: std::io::Error| {
        ApiError::new(
            ErrorCategory::Unknown,
            &format!(
                "the VM agent binary {} cannot be read: {e}",
                binary.path.display()
            ),
        )
    };
    let file = tokio::fs::File::open(&binary.path)
        .await
        .map_err(unreadable)?;
    let metadata = file.metadata().await.map_err(unreadable)?;
    // Nodes pin the checksum taken at start; a different file would fail every boot.
    if !binary.unchanged(&metadata) {
        return Err(ApiError::new(
            ErrorCategory::Unknown,
            &format!(
                "the VM agent binary {} changed since the server started; restart it so \
                 nodes pin the new checksum",
                binary.path.display()
            ),
        ));
    }
    let chunks = futures::stream::try_unfold(file, |mut file| async move {
        let mut chunk = vec![0; 64 * 1024];
        let read = file.read(&mut chunk).await?;
        chunk.truncate(read);
        Ok::<_, std::io::Error>((read > 0).then_some((chunk, file)))
    });
    let mut response = Body::from_stream(chunks).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(binary.len));
    if let Ok(value) = HeaderValue::from_str(&binary.sha256) {
        headers.insert(SHA256_HEADER, value);
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use figment::providers::Serialized;

    use super::*;

    fn config(flags: serde_json::Value) -> Result<ServerConfig, ConfigError> {
        ServerConfig::load(None, Serialized::globals(flags))
    }

    fn binary(content: &[u8]) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(content).unwrap();
        file
    }

    /// The single check of a configuration that must fail on `field`.
    fn check_invalid(flags: serde_json::Value, field: &str, says: &str) {
        let error = config(flags.clone())
            .and_then(|c| AgentDelivery::from_config(&c))
            .expect_err("must be refused");
        let message = error.to_string();
        assert!(
            matches!(&error, ConfigError::Invalid { field: f, .. } if *f == field),
            "{flags}: {message}"
        );
        assert!(message.contains(says), "{flags}: {message}");
    }

    #[test]
    fn a_named_binary_is_hashed_and_pinned() {
        let file = binary(b"agent");
        let config = config(serde_json::json!({
            "vm_agent_binary": file.path(),
            "provider": "hetzner",
            "public_url": "https://sam.example.com",
        }))
        .unwrap();
        let delivery = AgentDelivery::from_config(&config).unwrap().unwrap();
        // The same digest as coreutils' `sha256sum`, which the node checks with.
        let output = std::process::Command::new("sha256sum")
            .arg(file.path())
            .output()
            .expect("sha256sum is installed");
        let printed = String::from_utf8(output.stdout).unwrap();
        assert_eq!(printed.split_whitespace().next(), Some(delivery.sha256()));
        assert_eq!(delivery.download_url(), None);
        assert_eq!(delivery.served().unwrap().path(), file.path());
    }

    #[test]
    fn an_operator_url_comes_with_its_checksum() {
        let sha = "AB".repeat(32);
        let config = config(serde_json::json!({
            "agent_download_url": "https://downloads.example.com/sam-vm-agent",
            "agent_sha256": sha,
            "node_agents": "codex, claude",
            "provider": "gcp",
            "public_url": "https://sam.example.com",
        }))
        .unwrap();
        let delivery = AgentDelivery::from_config(&config).unwrap().unwrap();
        assert_eq!(delivery.sha256(), "ab".repeat(32));
        assert_eq!(
            delivery.download_url().map(url::Url::as_str),
            Some("https://downloads.example.com/sam-vm-agent")
        );
        let boot = delivery.cloud_boot(config.node_agents.as_deref());
        assert_eq!(boot.agent_sha256, "ab".repeat(32));
        assert_eq!(boot.agents, ["codex", "claude"]);
        assert_eq!(
            boot.agent_download_url.as_deref(),
            Some("https://downloads.example.com/sam-vm-agent")
        );
    }

    #[test]
    fn bad_settings_are_refused_by_field() {
        let cloud = |mut flags: serde_json::Value| {
            flags["provider"] = "scaleway".into();
            flags["public_url"] = "https://sam.example.com".into();
            flags
        };
        check_invalid(
            cloud(serde_json::json!({"agent_download_url": "https://d.example.com/a"})),
            "agent_download_url",
            "needs `agent_sha256`",
        );
        check_invalid(
            cloud(serde_json::json!({"agent_sha256": "a".repeat(64)})),
            "agent_sha256",
            "needs `agent_download_url`",
        );
        check_invalid(
            cloud(serde_json::json!({
                "agent_download_url": "https://d.example.com/a",
                "agent_sha256": "a".repeat(63),
            })),
            "agent_sha256",
            "64 hexadecimal digits",
        );
        check_invalid(
            cloud(serde_json::json!({
                "agent_download_url": "http://d.example.com/a",
                "agent_sha256": "a".repeat(64),
            })),
            "agent_download_url",
            "https",
        );
        check_invalid(
            cloud(serde_json::json!({"node_agents": ["claude", "aider"]})),
            "node_agents",
            "unknown agent \"aider\" (known: claude, codex, gemini, opencode)",
        );
        check_invalid(
            cloud(serde_json::json!({"vm_agent_binary": "/nonexistent/sam-vm-agent"})),
            "vm_agent_binary",
            "/nonexistent/sam-vm-agent is not a file",
        );
    }

    #[test]
    fn the_local_provider_needs_no_binary() {
        let config = config(serde_json::json!({})).unwrap();
        // The test executable has no sam-vm-agent beside it.
        assert_eq!(AgentDelivery::from_config(&config).unwrap(), None);
    }

    /// Serves `binary` the way `sam-server` does, on a loopback port.
    async fn serve(binary: Option<AgentBinary>) -> (String, tokio::task::JoinHandle<()>) {
        let router = axum::Router::new()
            .route(PATH, axum::routing::get(download))
            .layer(Extension(binary));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}{PATH}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            axum::serve(listener, router).await.unwrap();
        });
        (url, task)
    }

    /// What a node does with the download: curl fetches it, and `sha256sum --check`
    /// accepts it against the checksum the server pins.
    #[tokio::test]
    async fn curl_downloads_what_sha256sum_accepts() {
        let content: Vec<u8> = (0..200_000_u32).map(|i| (i % 251) as u8).collect();
        let file = binary(&content);
        let served = AgentBinary::open(file.path()).unwrap();
        let (url, task) = serve(Some(served.clone())).await;

        let dir = tempfile::tempdir().unwrap();
        let download = dir.path().join("sam-vm-agent.download");
        let headers = dir.path().join("headers");
        let curl = tokio::process::Command::new("curl")
            .args(["--fail", "--silent", "--show-error", "--dump-header"])
            .arg(&headers)
            .arg("--output")
            .arg(&download)
            .arg(&url)
            .output()
            .await
            .expect("curl is installed");
        assert!(
            curl.status.success(),
            "{}",
            String::from_utf8_lossy(&curl.stderr)
        );
        let headers = std::fs::read_to_string(&headers)
            .unwrap()
            .to_ascii_lowercase();
        assert!(
            headers.contains(&format!("{SHA256_HEADER}: {}", served.sha256())),
            "{headers}"
        );
        assert!(headers.contains("content-length: 200000"), "{headers}");

        let checksum = dir.path().join("sam-vm-agent.sha256");
        let line = format!("{}  {}\n", served.sha256(), download.display());
        std::fs::write(&checksum, line).unwrap();
        let check = tokio::process::Command::new("sha256sum")
            .args(["--check", "--strict"])
            .arg(&checksum)
            .output()
            .await
            .expect("sha256sum is installed");
        assert!(
            check.status.success(),
            "{}",
            String::from_utf8_lossy(&check.stdout)
        );
        assert_eq!(std::fs::read(&download).unwrap(), content);
        task.abort();
    }

    #[tokio::test]
    async fn no_binary_or_a_changed_one_is_a_json_error() {
        let file = binary(b"agent v1");
        let served = AgentBinary::open(file.path()).unwrap();
        let client = reqwest::Client::new();

        let (url, none) = serve(None).await;
        let response = client.get(&url).send().await.unwrap();
        assert_eq!(response.status(), 404);
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["category"], "not_found", "{body}");

        let (url, changed) = serve(Some(served)).await;
        std::fs::write(file.path(), b"agent v2, longer").unwrap();
        let response = client.get(&url).send().await.unwrap();
        assert_eq!(response.status(), 500);
        let body: serde_json::Value = response.json().await.unwrap();
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .contains("changed since the server started"),
            "{body}"
        );
        none.abort();
        changed.abort();
    }

    #[test]
    fn a_cloud_provider_without_a_binary_is_refused() {
        check_invalid(
            serde_json::json!({"provider": "hetzner", "public_url": "https://sam.example.com"}),
            "vm_agent_binary",
            "cargo build --release --bin sam-vm-agent",
        );
    }
}
