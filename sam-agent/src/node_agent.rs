//! [`HttpNodeAgent`]: the control plane's [`NodeAgent`] over the VM agent's HTTP API
//! ([`crate::api`]).
//!
//! A [`NodeRecord`] does not say where its agent listens nor which key signs its
//! management tokens, so the client asks a [`NodeDirectory`] for each node's
//! [`NodeEndpoint`]: the embedding control plane knows the VM's address (from its
//! provider) and the node token it booted the node with. [`StaticNodeDirectory`] is
//! a map for tests and small embeddings.
//!
//! Per the trait's contract every call is one request: nothing here retries or
//! sleeps. Each request has a timeout ([`HttpNodeAgentConfig::request_timeout`]),
//! because the runner calls the agent inline and an unanswered request must not hold
//! a task's lease forever; that bounds one request, it is not a retry layer.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use reqwest::{Method, StatusCode};
use sam_core::{
    AgentHealth, ErrorCategory, NodeAgent, NodeAgentError, NodeId, NodeRecord, Secret,
    SessionReport, SessionRequest, TokenScope, WorkspaceId, WorkspaceReport, WorkspaceRequest,
    redact,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use url::Url;

use crate::api::{
    AgentEnv, CreateWorkspace, ErrorBody, MANAGEMENT_TOKEN_TTL, SessionView, StartSession,
    WorkspaceView, classify_status, management_signer, parse_profile,
};
use crate::error::error_chain;

/// Where a node's agent listens and how to sign its management tokens.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeEndpoint {
    /// The agent's base URL (`http://203.0.113.7:8080/`).
    pub base_url: Url,
    /// The node token the node booted with: the key of its management tokens
    /// ([`crate::api::management_signer`]).
    pub management_key: Secret,
}

/// Finds a node's [`NodeEndpoint`].
///
/// # Contract
/// `Ok(None)` means the node cannot be reached yet (no address while it boots); it
/// is not an error.
#[async_trait]
pub trait NodeDirectory: Send + Sync + std::fmt::Debug {
    /// The endpoint of `node`'s agent.
    ///
    /// # Errors
    /// When the lookup itself fails (a provider call, say), classified.
    async fn endpoint(&self, node: &NodeRecord) -> Result<Option<NodeEndpoint>, NodeAgentError>;
}

/// A [`NodeDirectory`] from a map, filled by its owner.
#[derive(Debug, Default)]
pub struct StaticNodeDirectory {
    endpoints: RwLock<HashMap<NodeId, NodeEndpoint>>,
}

impl StaticNodeDirectory {
    /// An empty directory.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records (or replaces) `node`'s endpoint.
    pub fn insert(&self, node: NodeId, endpoint: NodeEndpoint) {
        self.endpoints
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(node, endpoint);
    }

    /// Forgets `node`.
    pub fn remove(&self, node: &NodeId) {
        self.endpoints
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(node);
    }
}

#[async_trait]
impl NodeDirectory for StaticNodeDirectory {
    async fn endpoint(&self, node: &NodeRecord) -> Result<Option<NodeEndpoint>, NodeAgentError> {
        Ok(self
            .endpoints
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&node.id)
            .cloned())
    }
}

/// How an [`HttpNodeAgent`] behaves: plain data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpNodeAgentConfig {
    /// The longest one request may take.
    pub request_timeout: Duration,
}

impl Default for HttpNodeAgentConfig {
    /// 30 s per request.
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// The control plane's [`NodeAgent`] over HTTP; see the [module docs](self).
#[derive(Debug, Clone)]
pub struct HttpNodeAgent {
    http: reqwest::Client,
    directory: Arc<dyn NodeDirectory>,
}

fn failure(category: ErrorCategory, message: &str) -> NodeAgentError {
    NodeAgentError {
        category,
        message: redact(message).into_owned(),
    }
}

/// A request that got no answer: a connection failure or a timeout.
fn unanswered(error: reqwest::Error) -> NodeAgentError {
    failure(
        ErrorCategory::Transient,
        &format!(
            "the VM agent did not answer: {}",
            error_chain(&error.without_url())
        ),
    )
}

/// A successful answer's body, or a 404.
enum Answer<T> {
    Found(T),
    NotFound,
}

impl HttpNodeAgent {
    /// A client that finds nodes through `directory`.
    ///
    /// # Errors
    /// `invalid_config` when the HTTP client cannot be built (no TLS backend).
    pub fn new(
        directory: Arc<dyn NodeDirectory>,
        config: HttpNodeAgentConfig,
    ) -> Result<Self, NodeAgentError> {
        let http = reqwest::Client::builder()
            .timeout(config.request_timeout)
            .build()
            .map_err(|e| failure(ErrorCategory::InvalidConfig, &e.to_string()))?;
        Ok(Self { http, directory })
    }

    /// The endpoint of `node`, or a transient error while it has none.
    async fn endpoint(&self, node: &NodeRecord) -> Result<NodeEndpoint, NodeAgentError> {
        self.directory.endpoint(node).await?.ok_or_else(|| {
            failure(
                ErrorCategory::Transient,
                &format!("the address of node {} is not known yet", node.id),
            )
        })
    }

    /// One authenticated request; `Ok(NotFound)` for a 404.
    async fn call<T: DeserializeOwned, B: Serialize + Sync>(
        &self,
        node: &NodeRecord,
        method: Method,
        segments: &[&str],
        body: Option<&B>,
    ) -> Result<Answer<T>, NodeAgentError> {
        let endpoint = self.endpoint(node).await?;
        let signer = management_signer(&endpoint.management_key)
            .map_err(|e| failure(ErrorCategory::InvalidConfig, &e.to_string()))?;
        let token = signer.issue(
            TokenScope::Node,
            node.id.as_str(),
            Utc::now(),
            MANAGEMENT_TOKEN_TTL,
        );
        let mut url = endpoint.base_url;
        url.path_segments_mut()
            .map_err(|()| {
                failure(
                    ErrorCategory::InvalidConfig,
                    "the agent URL cannot have paths",
                )
            })?
            .pop_if_empty()
            .extend(segments);
        let mut request = self.http.request(method, url).bearer_auth(token.expose());
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(unanswered)?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(unanswered)?;
        if status == StatusCode::NOT_FOUND {
            return Ok(Answer::NotFound);
        }
        if !status.is_success() {
            return Err(match serde_json::from_slice::<ErrorBody>(&bytes) {
                // The agent classified its own failure (`conflict` for a workspace
                // that is not ready yet, `invalid_config` for an unknown agent, …).
                Ok(body) => failure(body.category, &body.error),
                Err(_) => failure(
                    classify_status(status.as_u16()),
                    &format!(
                        "the VM agent answered {status}: {}",
                        String::from_utf8_lossy(&bytes[..bytes.len().min(500)])
                    ),
                ),
            });
        }
        let bytes = if bytes.is_empty() {
            &b"null"[..]
        } else {
            &bytes[..]
        };
        serde_json::from_slice(bytes)
            .map(Answer::Found)
            .map_err(|e| {
                failure(
                    ErrorCategory::Unknown,
                    &format!("the VM agent's answer is not understood: {e}"),
                )
            })
    }
}

/// The body of `sam_core`'s request, checked before it is sent.
fn create_body(request: &WorkspaceRequest) -> Result<CreateWorkspace, NodeAgentError> {
    let profile = match request.profile.as_deref() {
        None => Default::default(),
        Some(name) => parse_profile(name).ok_or_else(|| {
            failure(
                ErrorCategory::InvalidConfig,
                &format!("the VM agent does not know the workspace profile {name:?}"),
            )
        })?,
    };
    Ok(CreateWorkspace {
        id: request.workspace_id.clone(),
        repo: request.repo.clone(),
        repo_served: request.repo_served,
        branch: request.branch.clone(),
        profile,
        devcontainer: request.devcontainer.clone(),
        token: request.token.clone(),
        output_branch: request.output_branch.clone(),
        github: request.github,
    })
}

const NO_BODY: Option<&()> = None;

#[async_trait]
impl NodeAgent for HttpNodeAgent {
    async fn health(&self, node: &NodeRecord) -> Result<Option<AgentHealth>, NodeAgentError> {
        let Some(endpoint) = self.directory.endpoint(node).await? else {
            return Ok(None);
        };
        let mut url = endpoint.base_url;
        url.set_path("/health");
        let response = match self.http.get(url).send().await {
            Ok(response) => response,
            // A booting node does not listen yet: not reachable is not an error.
            Err(e) if e.is_connect() || e.is_timeout() => return Ok(None),
            Err(e) => return Err(unanswered(e)),
        };
        let status = response.status();
        if !status.is_success() {
            return Err(failure(
                classify_status(status.as_u16()),
                &format!("the VM agent's health check answered {status}"),
            ));
        }
        response.json().await.map(Some).map_err(|e| {
            failure(
                ErrorCategory::Unknown,
                &format!("the VM agent's health is not understood: {e}"),
            )
        })
    }

    async fn create_workspace(
        &self,
        node: &NodeRecord,
        request: &WorkspaceRequest,
    ) -> Result<(), NodeAgentError> {
        let body = create_body(request)?;
        match self
            .call::<WorkspaceView, _>(node, Method::POST, &["v1", "workspaces"], Some(&body))
            .await?
        {
            Answer::Found(_) => Ok(()),
            Answer::NotFound => Err(failure(
                ErrorCategory::InvalidConfig,
                "the VM agent has no workspace API (404)",
            )),
        }
    }

    async fn workspace_status(
        &self,
        node: &NodeRecord,
        workspace: &WorkspaceId,
    ) -> Result<Option<WorkspaceReport>, NodeAgentError> {
        match self
            .call::<WorkspaceView, _>(
                node,
                Method::GET,
                &["v1", "workspaces", workspace.as_str()],
                NO_BODY,
            )
            .await?
        {
            Answer::Found(view) => Ok(Some(view.report)),
            Answer::NotFound => Ok(None),
        }
    }

    async fn start_session(
        &self,
        node: &NodeRecord,
        request: &SessionRequest,
    ) -> Result<(), NodeAgentError> {
        let body = StartSession {
            agent: request.agent.clone(),
            prompt: request.prompt.clone(),
            options: request.options.clone(),
            env: AgentEnv(
                request
                    .env
                    .iter()
                    .map(|(k, v)| (k.clone(), v.expose().to_owned()))
                    .collect(),
            ),
            idle_timeout_secs: request.idle_timeout.map(|d| d.as_secs().max(1)),
        };
        match self
            .call::<SessionView, _>(
                node,
                Method::POST,
                &[
                    "v1",
                    "workspaces",
                    request.workspace_id.as_str(),
                    "sessions",
                ],
                Some(&body),
            )
            .await?
        {
            Answer::Found(_) => Ok(()),
            Answer::NotFound => Err(failure(
                ErrorCategory::NotFound,
                &format!("the VM agent has no workspace {}", request.workspace_id),
            )),
        }
    }

    async fn session_status(
        &self,
        node: &NodeRecord,
        workspace: &WorkspaceId,
    ) -> Result<Option<SessionReport>, NodeAgentError> {
        match self
            .call::<SessionView, _>(
                node,
                Method::GET,
                &["v1", "workspaces", workspace.as_str(), "sessions"],
                NO_BODY,
            )
            .await?
        {
            Answer::Found(view) => Ok(Some(view.report)),
            Answer::NotFound => Ok(None),
        }
    }

    async fn cancel_session(
        &self,
        node: &NodeRecord,
        workspace: &WorkspaceId,
    ) -> Result<(), NodeAgentError> {
        // An unknown workspace has nothing running: cancelling it is done.
        self.call::<serde_json::Value, _>(
            node,
            Method::POST,
            &["v1", "workspaces", workspace.as_str(), "cancel"],
            NO_BODY,
        )
        .await
        .map(drop)
    }

    async fn stop_workspace(
        &self,
        node: &NodeRecord,
        workspace: &WorkspaceId,
    ) -> Result<(), NodeAgentError> {
        self.call::<serde_json::Value, _>(
            node,
            Method::DELETE,
            &["v1", "workspaces", workspace.as_str()],
            NO_BODY,
        )
        .await
        .map(drop)
    }
}

/// The node tokens a control plane booted its nodes with, kept as files (one per
/// node, mode 0600) so a restarted control plane can still manage its nodes.
///
/// A VM agent keys its management tokens with its boot token
/// ([`crate::api::management_signer`]); the token is signed with an issue time, so
/// it cannot be derived again and must be kept. [`KeyedBoot`] records each token as
/// it is issued; [`ProviderNodeDirectory`] reads it back.
#[derive(Debug, Clone)]
pub struct FileNodeKeys {
    dir: std::path::PathBuf,
}

impl FileNodeKeys {
    /// Keys in `dir`, which is created (mode 0700) when missing.
    ///
    /// # Errors
    /// [`crate::Error::Io`] when the directory cannot be created.
    pub fn new(dir: impl Into<std::path::PathBuf>) -> crate::Result<Self> {
        use std::os::unix::fs::DirBuilderExt as _;
        let dir = dir.into();
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| crate::Error::io(format!("creating {}", dir.display()), e))?;
        Ok(Self { dir })
    }

    fn path(&self, node: &NodeId) -> std::path::PathBuf {
        self.dir.join(format!("{}.token", node.as_str()))
    }

    /// Records `node`'s boot token, replacing an earlier one.
    ///
    /// # Errors
    /// [`crate::Error::Io`] when the file cannot be written.
    pub fn put(&self, node: &NodeId, token: &Secret) -> crate::Result<()> {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let path = self.path(node);
        let tmp = path.with_extension("tmp");
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .and_then(|mut f| f.write_all(token.expose().as_bytes()).map(|()| f))
            .map_err(|e| crate::Error::io(format!("writing {}", tmp.display()), e))?;
        file.flush()
            .map_err(|e| crate::Error::io(format!("writing {}", tmp.display()), e))?;
        std::fs::rename(&tmp, &path)
            .map_err(|e| crate::Error::io(format!("writing {}", path.display()), e))
    }

    /// `node`'s boot token, if one was recorded.
    ///
    /// # Errors
    /// [`crate::Error::Io`] when the file exists but cannot be read.
    pub fn get(&self, node: &NodeId) -> crate::Result<Option<Secret>> {
        let path = self.path(node);
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(Some(Secret::new(text))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(crate::Error::io(format!("reading {}", path.display()), e)),
        }
    }
}

/// Where a control plane finds the boot token each node was booted with (its
/// management key): files ([`FileNodeKeys`]) or the store ([`StoreNodeKeys`]).
#[async_trait]
pub trait NodeKeys: Send + Sync + std::fmt::Debug {
    /// `node`'s boot token, if one was kept.
    ///
    /// # Errors
    /// When the keys cannot be read or opened.
    async fn node_key(&self, node: &NodeId) -> crate::Result<Option<Secret>>;
}

#[async_trait]
impl NodeKeys for FileNodeKeys {
    async fn node_key(&self, node: &NodeId) -> crate::Result<Option<Secret>> {
        self.get(node)
    }
}

/// Node keys kept in the store, sealed with the credential key, as the control
/// plane writes them when it creates a node with one: every control plane on the
/// database reads them. A node booted before (its key only in a file) is found in
/// `files`.
#[derive(Debug, Clone)]
pub struct StoreNodeKeys {
    store: Arc<dyn sam_core::Store>,
    cipher: sam_core::CredentialCipher,
    files: Option<FileNodeKeys>,
}

impl StoreNodeKeys {
    /// Keys in `store`, opened with `cipher`; `files` for nodes booted before.
    pub fn new(
        store: Arc<dyn sam_core::Store>,
        cipher: sam_core::CredentialCipher,
        files: Option<FileNodeKeys>,
    ) -> Self {
        Self {
            store,
            cipher,
            files,
        }
    }
}

#[async_trait]
impl NodeKeys for StoreNodeKeys {
    async fn node_key(&self, node: &NodeId) -> crate::Result<Option<Secret>> {
        let purpose = sam_core::KeyPurpose::Node;
        let failed = |reason: String| crate::Error::InvalidConfig {
            field: "node_keys".to_owned(),
            reason,
        };
        let stored = self
            .store
            .get_key(purpose, node.as_str())
            .await
            .map_err(|e| failed(format!("reading the key of node {node}: {e}")))?;
        match stored {
            Some(key) => {
                let secret = key.open(&self.cipher).map_err(|e| {
                    failed(format!(
                        "the key of node {node} does not open with this credential_key ({e}): \
                         every server on one database needs the same credential_key"
                    ))
                })?;
                Ok(Some(secret))
            }
            None => match &self.files {
                Some(files) => files.get(node),
                None => Ok(None),
            },
        }
    }
}

/// A [`sam_core::BootRenderer`] that records each node's boot token in
/// [`FileNodeKeys`] before the wrapped renderer puts it into the user data.
#[derive(Debug, Clone)]
pub struct KeyedBoot {
    inner: Arc<dyn sam_core::BootRenderer>,
    keys: FileNodeKeys,
}

impl KeyedBoot {
    /// Wraps `inner`, recording tokens in `keys`.
    pub fn new(inner: Arc<dyn sam_core::BootRenderer>, keys: FileNodeKeys) -> Self {
        Self { inner, keys }
    }
}

impl sam_core::BootRenderer for KeyedBoot {
    /// Renders with the key recorded for the node when there is one: a node's key is
    /// made once, and a create made again (its first one never reached the provider,
    /// or went through unseen) boots with the key a VM of the first may already hold.
    fn user_data(&self, node: &NodeRecord, token: &Secret) -> Result<String, sam_core::Error> {
        let failed = |e: crate::Error| sam_core::Error::InvalidInput {
            field: "node_keys",
            reason: e.to_string(),
        };
        if let Some(kept) = self.keys.get(&node.id).map_err(failed)? {
            return self.inner.user_data(node, &kept);
        }
        // Recorded first: a node whose key is lost could not be managed.
        self.keys.put(&node.id, token).map_err(failed)?;
        self.inner.user_data(node, token)
    }
}

/// A [`NodeDirectory`] that reaches a node at the address recorded when its VM ran
/// ([`NodeRecord::address`]) and finds its management key in [`NodeKeys`].
/// Only a node without a recorded address (a row from before the address was kept)
/// is looked up through its provider ([`sam_core::VmInstance::address`]), and only
/// when it is in the platform's account: a node made with a user's or project's own
/// provider credential lives in their account, which the platform's providers
/// cannot see.
///
/// An address with a port (`127.0.0.1:40123`, the local provider) is used as is; a
/// bare IP address or host name gets [`ProviderNodeDirectory::new`]'s port. Agents
/// are reached over plain HTTP.
#[derive(Debug, Clone)]
pub struct ProviderNodeDirectory {
    providers: HashMap<sam_core::ProviderKind, Arc<dyn sam_core::Provider>>,
    keys: Arc<dyn NodeKeys>,
    port: u16,
}

impl ProviderNodeDirectory {
    /// A directory over `providers`, with agents on `port` unless the address says.
    pub fn new(
        providers: impl IntoIterator<Item = Arc<dyn sam_core::Provider>>,
        keys: Arc<dyn NodeKeys>,
        port: u16,
    ) -> Self {
        Self {
            providers: providers.into_iter().map(|p| (p.kind(), p)).collect(),
            keys,
            port,
        }
    }

    /// The agent's base URL for a VM address.
    fn base_url(&self, address: &str) -> Option<Url> {
        let host = if address.parse::<std::net::SocketAddr>().is_ok() {
            address.to_owned()
        } else if let Ok(ip) = address.parse::<std::net::IpAddr>() {
            std::net::SocketAddr::new(ip, self.port).to_string()
        } else {
            format!("{address}:{}", self.port)
        };
        Url::parse(&format!("http://{host}/")).ok()
    }
}

#[async_trait]
impl NodeDirectory for ProviderNodeDirectory {
    async fn endpoint(&self, node: &NodeRecord) -> Result<Option<NodeEndpoint>, NodeAgentError> {
        let address = if node.address.is_some() || node.credential_owner.is_some() {
            // The address recorded when the VM ran. Without one, a VM in a user's or
            // project's account cannot be looked up: the platform's provider does
            // not see it.
            node.address.clone()
        } else {
            let (Some(vm_id), Some(provider)) = (&node.vm_id, self.providers.get(&node.provider))
            else {
                return Ok(None);
            };
            let vm = provider.get_vm(vm_id).await.map_err(|e| {
                failure(
                    sam_core::Classify::category(&e),
                    &format!("could not look up node {}: {e}", node.id),
                )
            })?;
            vm.and_then(|vm| vm.address)
        };
        let Some(url) = address.and_then(|address| self.base_url(&address)) else {
            return Ok(None);
        };
        let key = self
            .keys
            .node_key(&node.id)
            .await
            .map_err(|e| failure(ErrorCategory::Unknown, &e.to_string()))?;
        let Some(management_key) = key else {
            return Err(failure(
                ErrorCategory::InvalidConfig,
                &format!(
                    "the boot token of node {} was not kept, so its agent cannot be managed",
                    node.id
                ),
            ));
        };
        Ok(Some(NodeEndpoint {
            base_url: url,
            management_key,
        }))
    }
}
