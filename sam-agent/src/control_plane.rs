//! The control plane's side of the callback contract ([`crate::callbacks`]):
//! [`callback_router`] serves the four routes VM agents call and hands each to a
//! [`ControlPlane`].
//!
//! Client ([`crate::Callbacks`]) and server share this crate's body types
//! ([`NodeReady`], [`Heartbeat`], [`HeartbeatResponse`]), so they cannot drift
//! apart. Failures answer an [`ErrorBody`] with the status of their category
//! ([`status_for`]): a token that is not the node's or the workspace's gets `401`,
//! an unknown node `404`, a malformed body `400` naming the field.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use std::sync::Arc;

use sam_core::{
    Classify, ControlPlane, ErrorCategory, GithubError, NodeId, PullRequestMode,
    PullRequestRequest, RepositoryHost, SessionCallback, WorkspaceId, WorkspaceReport,
    output_branch, redact,
};
use serde::de::DeserializeOwned;

use crate::api::{ErrorBody, Heartbeat, HeartbeatResponse, NodeReady, status_for};
use crate::git::{GitCredentialRequest, GitCredentialResponse, PullRequestCreated};

/// The paths of the callback routes, all `POST`, in the order [`callback_router`]
/// registers them: a node is ready, a node's heartbeat, a workspace is ready, a
/// session's events. Documentation (an OpenAPI document) and tests list them from here.
pub const CALLBACK_PATHS: [&str; 4] = [
    "/v1/nodes/{id}/ready",
    "/v1/nodes/{id}/heartbeat",
    "/v1/workspaces/{id}/ready",
    "/v1/workspaces/{id}/events",
];

/// The callback routes ([`CALLBACK_PATHS`]) over `control_plane`.
/// Merge it into a larger router, or serve it alone.
pub fn callback_router(control_plane: ControlPlane) -> Router {
    let [
        node_ready_path,
        heartbeat_path,
        workspace_ready_path,
        events_path,
    ] = CALLBACK_PATHS;
    Router::new()
        .route(node_ready_path, post(node_ready))
        .route(heartbeat_path, post(heartbeat))
        .route(workspace_ready_path, post(workspace_ready))
        .route(events_path, post(session_event))
        .with_state(control_plane)
}

/// The paths of the git routes, all `POST` with a workspace token, in the order
/// [`git_router`] registers them: a git credential for the credential helper, and a
/// pull request for the output branch.
pub const GIT_PATHS: [&str; 2] = [
    "/v1/workspaces/{id}/git-credential",
    "/v1/workspaces/{id}/pull-request",
];

/// What the git routes need: the control plane, and GitHub.
#[derive(Debug, Clone)]
struct GitState {
    control_plane: ControlPlane,
    host: Arc<dyn RepositoryHost>,
}

/// The git routes ([`GIT_PATHS`]) over `control_plane`, asking `host` (GitHub) for
/// installation tokens and pull requests.
///
/// A credential is issued only for a live task whose repository is behind an
/// installation, only to that workspace's token, and only for that repository's
/// host and path (`auth_error`, `401`, otherwise); GitHub is always addressed by the installation's
/// external id. A pull request is opened only for the task's own output branch, and
/// only when the task asked for one. Merge it next to [`callback_router`].
pub fn git_router(control_plane: ControlPlane, host: Arc<dyn RepositoryHost>) -> Router {
    let [credential_path, pull_request_path] = GIT_PATHS;
    Router::new()
        .route(credential_path, post(git_credential))
        .route(pull_request_path, post(pull_request))
        .with_state(GitState {
            control_plane,
            host,
        })
}

async fn git_credential(
    State(git): State<GitState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Result<axum::Json<GitCredentialResponse>, Failure> {
    let token = bearer(&headers)?;
    let workspace: WorkspaceId = path_id(&id)?;
    let asked: GitCredentialRequest = body(&bytes)?;
    let found = git
        .control_plane
        .workspace_github(token, &workspace)
        .await?;
    if !found
        .repo
        .matches_credential_request(&asked.protocol, &asked.host, asked.path.as_deref())
    {
        return Err(Failure::new(
            ErrorCategory::AuthError,
            &format!(
                "workspace {workspace} gets credentials only for {}",
                found.repo
            ),
        ));
    }
    let credential = git
        .host
        .repository_token(found.installation.external_id, &found.repo)
        .await?;
    Ok(axum::Json(GitCredentialResponse {
        username: credential.username,
        password: credential.password.expose().to_owned(),
        expires_at: credential.expires_at,
    }))
}

async fn pull_request(
    State(git): State<GitState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Result<axum::Json<PullRequestCreated>, Failure> {
    let token = bearer(&headers)?;
    let workspace: WorkspaceId = path_id(&id)?;
    let request: PullRequestRequest = body(&bytes)?;
    let found = git
        .control_plane
        .workspace_github(token, &workspace)
        .await?;
    let task = &found.task;
    if task.spec.github.as_ref().map(|g| g.pull_request) != Some(PullRequestMode::Open) {
        return Err(Failure::new(
            ErrorCategory::InvalidConfig,
            &format!("task {} did not ask for a pull request", task.id),
        ));
    }
    let expected = output_branch(&task.spec.prompt, &task.id);
    if request.head != expected {
        return Err(Failure::new(
            ErrorCategory::AuthError,
            &format!(
                "task {} may open a pull request only from {expected}",
                task.id
            ),
        ));
    }
    let url = git
        .host
        .open_pull_request(found.installation.external_id, &found.repo, &request)
        .await?;
    Ok(axum::Json(PullRequestCreated { url }))
}

/// A failed callback.
#[derive(Debug)]
struct Failure {
    category: ErrorCategory,
    message: String,
    field: Option<String>,
}

impl Failure {
    fn new(category: ErrorCategory, message: &str) -> Self {
        Self {
            category,
            message: redact(message).into_owned(),
            field: None,
        }
    }
}

impl From<GithubError> for Failure {
    fn from(error: GithubError) -> Self {
        Self::new(error.category(), &error.to_string())
    }
}

impl From<sam_core::Error> for Failure {
    fn from(error: sam_core::Error) -> Self {
        Self::new(error.category(), &error.to_string())
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(status_for(self.category))
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = ErrorBody {
            error: self.message,
            category: self.category,
            field: self.field,
        };
        (status, axum::Json(body)).into_response()
    }
}

fn bearer(headers: &HeaderMap) -> Result<&str, Failure> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .filter(|t| !t.is_empty())
        .ok_or_else(|| Failure::new(ErrorCategory::AuthError, "a bearer token is required"))
}

fn body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Failure> {
    let deserializer = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(deserializer).map_err(|e| {
        let path = e.path().to_string();
        let mut failure = Failure::new(
            ErrorCategory::InvalidConfig,
            &format!("malformed request body: {}", e.inner()),
        );
        failure.field = (path != "." && path != "?").then_some(path);
        failure
    })
}

/// A node or workspace id from the path; a bad one is `invalid_config`.
fn path_id<K: sam_core::model::id_kind::IdKind>(id: &str) -> Result<sam_core::Id<K>, Failure> {
    sam_core::Id::new(id).map_err(|e| Failure::new(ErrorCategory::InvalidConfig, &e.to_string()))
}

async fn node_ready(
    State(cp): State<ControlPlane>,
    Path(id): Path<String>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Result<StatusCode, Failure> {
    let token = bearer(&headers)?;
    let node: NodeId = path_id(&id)?;
    let ready: NodeReady = body(&bytes)?;
    cp.node_ready(token, &node, &ready.version).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn heartbeat(
    State(cp): State<ControlPlane>,
    Path(id): Path<String>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Result<axum::Json<HeartbeatResponse>, Failure> {
    let token = bearer(&headers)?;
    let node: NodeId = path_id(&id)?;
    let beat: Heartbeat = body(&bytes)?;
    let reply = cp.heartbeat(token, &node, &beat.metrics).await?;
    Ok(axum::Json(HeartbeatResponse {
        refreshed_token: reply.refreshed_token,
    }))
}

async fn workspace_ready(
    State(cp): State<ControlPlane>,
    Path(id): Path<String>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Result<StatusCode, Failure> {
    let token = bearer(&headers)?;
    let workspace: WorkspaceId = path_id(&id)?;
    let report: WorkspaceReport = body(&bytes)?;
    cp.workspace_ready(token, &workspace, &report).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn session_event(
    State(cp): State<ControlPlane>,
    Path(id): Path<String>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Result<StatusCode, Failure> {
    let token = bearer(&headers)?;
    let workspace: WorkspaceId = path_id(&id)?;
    let callback: SessionCallback = body(&bytes)?;
    cp.session_event(token, &workspace, &callback).await?;
    Ok(StatusCode::NO_CONTENT)
}
