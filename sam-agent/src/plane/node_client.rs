//! [`HttpNodeAgent`]: the control plane's [`NodeAgent`] over the VM agent's HTTP API
//! ([`crate::wire`]).
//!
//! A [`NodeRecord`] does not say where its agent listens nor which key signs its
//! management tokens, so the client asks a [`NodeDirectory`] for each node's
//! [`NodeEndpoint`]: the embedding control plane knows the VM's address (from its
//! provider) and the node token it booted the node with. [`StaticNodeDirectory`](super::StaticNodeDirectory) is
//! a map for tests and small embeddings.
//!
//! Per the trait's contract every call is one request: nothing here retries or
//! sleeps. Each request has a timeout ([`HttpNodeAgentConfig::request_timeout`]),
//! because the runner calls the agent inline and an unanswered request must not hold
//! a task's lease forever; that bounds one request, it is not a retry layer.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use reqwest::{Method, StatusCode};
use sam_core::{
    AgentHealth, ErrorCategory, NodeAgent, NodeAgentError, NodeRecord, SessionReport,
    SessionRequest, TokenScope, WorkspaceId, WorkspaceReport, WorkspaceRequest,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::error_chain;
use crate::wire::{
    AgentEnv, CreateWorkspace, ErrorBody, MANAGEMENT_TOKEN_TTL, SessionView, StartSession,
    WorkspaceView, classify_status, management_signer, parse_profile,
};

use super::node_directory::{NodeDirectory, NodeEndpoint, failure};

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
