//! Callbacks from the VM agent to the control plane.
//!
//! # The contract (served by the control plane, e.g. the `sam-server` example)
//! | route | token | body | answer |
//! |---|---|---|---|
//! | `POST /v1/nodes/{id}/ready` | node | [`NodeReady`] | `2xx` |
//! | `POST /v1/nodes/{id}/heartbeat` | node | [`Heartbeat`] | `2xx` with a [`HeartbeatResponse`] (an empty body counts as no refresh) |
//! | `POST /v1/workspaces/{id}/ready` | workspace | [`sam_core::WorkspaceReport`] | `2xx` |
//! | `POST /v1/workspaces/{id}/events` | workspace | [`sam_core::SessionCallback`] | `2xx` |
//! | `POST /v1/workspaces/{id}/git-credential` | workspace | [`crate::wire::GitCredentialRequest`] | `2xx` with a [`crate::wire::GitCredentialResponse`] (asked by the credential helper, [`crate::vm::git`]) |
//! | `POST /v1/workspaces/{id}/pull-request` | workspace | [`sam_core::PullRequestRequest`] | `2xx` with a [`PullRequestCreated`] |
//!
//! Each request carries `Authorization: Bearer <token>`: the node token for node
//! routes, the workspace's own token (from its creation request) for workspace
//! routes. These map one to one onto `ControlPlane::{node_ready, heartbeat,
//! workspace_ready, session_event}` in `sam-core`.
//!
//! # Retries
//! Every call runs in [`sam_core::retry_notify`] with [`callback_policy`] (1 s → 30 s,
//! 5 attempts, 2 min budget, 30 s per attempt): connection failures and 5xx are
//! retried, 4xx are permanent ([`classify_status`]).

use std::sync::RwLock;
use std::time::Duration;

use sam_core::{
    ErrorCategory, NodeId, NodeMetrics, PullRequestRequest, RetryError, RetryOn, RetryPolicy,
    Secret, SessionCallback, WorkspaceId, WorkspaceReport, redact, retry_notify,
};
use serde::Serialize;
use url::Url;

use crate::error::{Error, Result, error_chain};
use crate::wire::PullRequestCreated;
use crate::wire::{Heartbeat, HeartbeatResponse, NodeReady, classify_status};

/// The callback retry policy: 1 s initial delay, 30 s maximum, 5 attempts, a 2 min
/// budget, 20 % jitter, 30 s per attempt.
pub fn callback_policy() -> RetryPolicy {
    RetryPolicy {
        initial_delay: Duration::from_secs(1),
        max_delay: Duration::from_secs(30),
        max_attempts: 5,
        budget: Duration::from_secs(120),
        jitter: 0.2,
        per_attempt_timeout: Some(Duration::from_secs(30)),
        retry_on: RetryOn::Retryable,
    }
}

/// Where and how to call the control plane. No `Default`: it holds the node's identity
/// and token.
#[derive(Debug, Clone)]
pub struct CallbacksConfig {
    /// The control plane's base URL (`https://cp.example.com/`).
    pub base_url: Url,
    /// This node.
    pub node_id: NodeId,
    /// The node token the node booted with.
    pub node_token: Secret,
    /// How calls are retried.
    pub retry: RetryPolicy,
}

impl CallbacksConfig {
    /// A configuration with [`callback_policy`].
    pub fn new(base_url: Url, node_id: NodeId, node_token: Secret) -> Self {
        Self {
            base_url,
            node_id,
            node_token,
            retry: callback_policy(),
        }
    }
}

/// The callback client; see the [module docs](self).
#[derive(Debug)]
pub struct Callbacks {
    http: reqwest::Client,
    base_url: Url,
    node_id: NodeId,
    node_token: RwLock<Secret>,
    retry: RetryPolicy,
}

/// One failed attempt, before the retry loop decides.
fn callback_error(status: Option<u16>, message: &str) -> Error {
    Error::Callback {
        category: status.map_or(ErrorCategory::Transient, classify_status),
        status,
        message: redact(message).into_owned(),
    }
}

/// One POST of `body` as JSON with `token` as the bearer; the body of a 2xx answer,
/// or a classified [`Error::Callback`]. No retry: callers wrap it in their policy.
pub(crate) async fn post_json<B: Serialize + Sync + ?Sized>(
    http: &reqwest::Client,
    url: &Url,
    token: &Secret,
    body: &B,
) -> Result<String> {
    let response = http
        .post(url.clone())
        .bearer_auth(token.expose())
        .json(body)
        .send()
        .await
        .map_err(|e| callback_error(None, &error_chain(&e.without_url())))?;
    let status = response.status();
    let text = response
        .text()
        .await
        .map_err(|e| callback_error(None, &error_chain(&e.without_url())))?;
    if status.is_success() {
        return Ok(text);
    }
    let snippet: String = text.chars().take(500).collect();
    Err(callback_error(
        Some(status.as_u16()),
        &format!("{} answered {status}: {snippet}", url.path()),
    ))
}

/// [`post_json`] in a retry loop with `policy`, logging each retry; the token is
/// asked for per attempt.
pub(crate) async fn post_with_retry<B: Serialize + Sync + ?Sized>(
    http: &reqwest::Client,
    policy: &RetryPolicy,
    url: &Url,
    token: impl Fn() -> Secret + Sync,
    body: &B,
) -> Result<String> {
    let outcome = retry_notify(
        policy,
        || async { post_json(http, url, &token(), body).await },
        |retry| {
            tracing::info!(
                path = url.path(),
                attempt = retry.attempt,
                delay = ?retry.delay,
                error = retry.error.map(ToString::to_string),
                "retrying a callback"
            );
        },
    )
    .await;
    outcome.map_err(|e| match e {
        RetryError::Failed(e) => e,
        RetryError::TimedOut { attempts, timeout } => Error::Callback {
            category: ErrorCategory::Transient,
            status: None,
            message: format!(
                "{} did not answer within {timeout:?} after {attempts} attempt(s)",
                url.path()
            ),
        },
    })
}

/// Decodes the JSON answer of a callback; one that does not decode is
/// `invalid_config` (the two sides disagree on the contract), named by `what`
/// (`"the heartbeat answer"`).
pub(crate) fn decode_answer<T: serde::de::DeserializeOwned>(what: &str, text: &str) -> Result<T> {
    serde_json::from_str(text).map_err(|e| Error::Callback {
        category: ErrorCategory::InvalidConfig,
        status: None,
        message: format!("{what} is not understood: {e}"),
    })
}

impl Callbacks {
    /// A client for `config`.
    ///
    /// # Errors
    /// [`Error::InvalidRequest`] for a base URL that cannot have paths, an empty
    /// token or a retry policy that cannot work.
    pub fn new(config: CallbacksConfig) -> Result<Self> {
        if config.base_url.cannot_be_a_base() {
            return Err(Error::InvalidRequest(format!(
                "the control plane URL {} cannot have paths",
                config.base_url
            )));
        }
        if config.node_token.is_empty() {
            return Err(Error::InvalidRequest(
                "the node token must not be empty".to_owned(),
            ));
        }
        config
            .retry
            .validate()
            .map_err(|e| Error::InvalidRequest(e.to_string()))?;
        Ok(Self {
            http: reqwest::Client::new(),
            base_url: config.base_url,
            node_id: config.node_id,
            node_token: RwLock::new(config.node_token),
            retry: config.retry,
        })
    }

    /// The node token callbacks carry now (the boot token, or a refreshed one).
    pub fn node_token(&self) -> Secret {
        self.node_token
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The control plane's URL for `segments` (`["v1", "workspaces", id, …]`).
    pub(crate) fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base_url.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }

    /// Sends `body` to `segments` with `token`, retrying by the policy.
    async fn send<B: Serialize + Sync + ?Sized>(
        &self,
        segments: &[&str],
        token: Option<&Secret>,
        body: &B,
    ) -> Result<String> {
        let url = self.url(segments);
        // The node token is read per attempt: a heartbeat may have refreshed it.
        let token = || token.cloned().unwrap_or_else(|| self.node_token());
        post_with_retry(&self.http, &self.retry, &url, token, body).await
    }

    /// Reports the node ready, with the agent's version and boot timeline.
    ///
    /// # Errors
    /// [`Error::Callback`] when the control plane refuses it or cannot be reached
    /// within the retry policy.
    pub async fn node_ready(&self, ready: &NodeReady) -> Result<()> {
        self.send(
            &["v1", "nodes", self.node_id.as_str(), "ready"],
            None,
            ready,
        )
        .await
        .map(drop)
    }

    /// Sends a heartbeat; a refreshed token in the answer replaces the node token.
    /// Returns whether it did.
    ///
    /// # Errors
    /// As [`Callbacks::node_ready`]; an answer that is not a [`HeartbeatResponse`]
    /// is `invalid_config`.
    pub async fn heartbeat(&self, metrics: &NodeMetrics) -> Result<bool> {
        let text = self
            .send(
                &["v1", "nodes", self.node_id.as_str(), "heartbeat"],
                None,
                &Heartbeat { metrics: *metrics },
            )
            .await?;
        let reply: HeartbeatResponse = if text.trim().is_empty() {
            HeartbeatResponse::default()
        } else {
            decode_answer("the heartbeat answer", &text)?
        };
        match reply.refreshed_token {
            Some(token) if !token.is_empty() => {
                *self
                    .node_token
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = token;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Reports a workspace ready (or failed), with the workspace's token.
    ///
    /// # Errors
    /// As [`Callbacks::node_ready`].
    pub async fn workspace_ready(
        &self,
        workspace: &WorkspaceId,
        token: &Secret,
        report: &WorkspaceReport,
    ) -> Result<()> {
        self.send(
            &["v1", "workspaces", workspace.as_str(), "ready"],
            Some(token),
            report,
        )
        .await
        .map(drop)
    }

    /// Asks the control plane to open a pull request for the workspace's output
    /// branch (`POST /v1/workspaces/{id}/pull-request`); returns its URL.
    ///
    /// # Errors
    /// As [`Callbacks::node_ready`]; an answer that is not a [`PullRequestCreated`]
    /// is `invalid_config`.
    pub async fn open_pull_request(
        &self,
        workspace: &WorkspaceId,
        token: &Secret,
        request: &PullRequestRequest,
    ) -> Result<String> {
        let text = self
            .send(
                &["v1", "workspaces", workspace.as_str(), "pull-request"],
                Some(token),
                request,
            )
            .await?;
        let created: PullRequestCreated = decode_answer("the pull request answer", &text)?;
        Ok(created.url)
    }

    /// Reports a session event or state, with the workspace's token.
    ///
    /// # Errors
    /// As [`Callbacks::node_ready`].
    pub async fn session_event(
        &self,
        workspace: &WorkspaceId,
        token: &Secret,
        callback: &SessionCallback,
    ) -> Result<()> {
        self.send(
            &["v1", "workspaces", workspace.as_str(), "events"],
            Some(token),
            callback,
        )
        .await
        .map(drop)
    }
}
