//! The control plane's side of the callback contract ([`crate::wire::callback_api`]):
//! [`callback_router`] serves the five routes VM agents (and a failing boot script)
//! call and hands each to a [`ControlPlane`].
//!
//! Client (the VM agent's `vm::Callbacks`) and server share this crate's body types
//! ([`NodeReady`], [`Heartbeat`], [`HeartbeatResponse`]), so they cannot drift
//! apart. Failures answer an [`ApiError`]: an [`ErrorBody`](crate::wire::ErrorBody) with
//! the status of its category: a token that is not the node's or the workspace's gets `401`
//! (checked before the body is read, so a bad token with a malformed body is a `401` too),
//! an unknown node `404`, a malformed body `400` naming the field, a callback that would
//! change a task that has ended `409`. Bodies over [`crate::serve::BODY_LIMIT`] get a `413`,
//! and every failure, axum's own rejections included, is JSON ([`crate::serve::json_errors`]).

use axum::Router;
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use std::sync::Arc;

use serde::de::DeserializeOwned;

use sam_core::model::id_kind::{self, IdKind};
use sam_core::{
    ControlPlane, ErrorCategory, Id, NodeId, PullRequestMode, PullRequestRequest, RepositoryHost,
    SessionCallback, WorkspaceId, WorkspaceReport, output_branch,
};

use crate::plane::served_repo::{GitService, ServeOptions};
use crate::wire::{
    ApiError, BootFailed, Heartbeat, HeartbeatResponse, NodeReady, parse_body, path_id,
};
use crate::wire::{GitCredentialRequest, GitCredentialResponse, PullRequestCreated};

/// The paths of the callback routes, all `POST`, in the order [`callback_router`]
/// registers them: a node is ready, a node's heartbeat, a workspace is ready, a
/// session's events, a node's boot failed. Documentation (an OpenAPI document) and
/// tests list them from here.
pub const CALLBACK_PATHS: [&str; 5] = [
    "/v1/nodes/{id}/ready",
    "/v1/nodes/{id}/heartbeat",
    "/v1/workspaces/{id}/ready",
    "/v1/workspaces/{id}/events",
    "/v1/nodes/{id}/boot-failed",
];

/// The largest `boot-failed` body read (256 KiB): the boot script sends at most 200
/// journal entries of a few hundred bytes each.
pub const BOOT_FAILED_BODY_LIMIT: usize = 256 * 1024;

/// The callback routes ([`CALLBACK_PATHS`]) over `control_plane`.
/// Merge it into a larger router, or serve it alone.
pub fn callback_router(control_plane: ControlPlane) -> Router {
    let [
        node_ready_path,
        heartbeat_path,
        workspace_ready_path,
        events_path,
        boot_failed_path,
    ] = CALLBACK_PATHS;
    let nodes = Router::new()
        .route(node_ready_path, post(node_ready))
        .route(heartbeat_path, post(heartbeat))
        .route(
            boot_failed_path,
            post(boot_failed).layer(axum::extract::DefaultBodyLimit::max(BOOT_FAILED_BODY_LIMIT)),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            control_plane.clone(),
            node_token_first,
        ));
    let workspaces = Router::new()
        .route(workspace_ready_path, post(workspace_ready))
        .route(events_path, post(session_event))
        .route_layer(axum::middleware::from_fn_with_state(
            control_plane.clone(),
            workspace_token_first,
        ));
    nodes
        .merge(workspaces)
        .layer(axum::middleware::from_fn(crate::serve::run_to_completion))
        .layer(axum::extract::DefaultBodyLimit::max(
            crate::serve::BODY_LIMIT,
        ))
        .layer(axum::middleware::from_fn(crate::serve::json_errors))
        .with_state(control_plane)
}

/// The paths of the git routes, all `POST` with a workspace token, in the order
/// [`git_router`] registers them: a git credential for the credential helper, and a
/// pull request for the output branch.
pub const GIT_PATHS: [&str; 2] = [
    "/v1/workspaces/{id}/git-credential",
    "/v1/workspaces/{id}/pull-request",
];

/// The path of the served-repository route ([`crate::plane::served_repo`]): git's smart
/// HTTP protocol (`GET …/info/refs`, `POST …/git-upload-pack`, `POST
/// …/git-receive-pack`) for the path repository of the workspace's task, with the
/// workspace token as a bearer token.
pub const SERVED_REPO_PATH: &str = "/v1/workspaces/{id}/repo/{*git}";

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
///
/// It also serves [`SERVED_REPO_PATH`]: the repository of a live task whose
/// repository is a path on this machine, to that workspace's token only.
pub fn git_router(control_plane: ControlPlane, host: Arc<dyn RepositoryHost>) -> Router {
    let [credential_path, pull_request_path] = GIT_PATHS;
    Router::new()
        .route(credential_path, post(git_credential))
        .route(pull_request_path, post(pull_request))
        .route_layer(axum::middleware::from_fn_with_state(
            control_plane.clone(),
            workspace_token_first,
        ))
        // Its token is checked by the handler, before the body is read: the route
        // has two path parameters, which the middleware does not take.
        .route(SERVED_REPO_PATH, get(served_repo).post(served_repo))
        .layer(axum::middleware::from_fn(crate::serve::run_to_completion))
        .layer(axum::extract::DefaultBodyLimit::max(
            crate::serve::BODY_LIMIT,
        ))
        .layer(axum::middleware::from_fn(crate::serve::json_errors))
        .with_state(GitState {
            control_plane,
            host,
        })
}

async fn git_credential(
    State(git): State<GitState>,
    Callback { token, id, body }: Callback<id_kind::Workspace, GitCredentialRequest>,
) -> Result<axum::Json<GitCredentialResponse>, ApiError> {
    let found = git.control_plane.workspace_github(&token, &id).await?;
    if !found
        .repo
        .matches_credential_request(&body.protocol, &body.host, body.path.as_deref())
    {
        return Err(ApiError::new(
            ErrorCategory::AuthError,
            &format!("workspace {id} gets credentials only for {}", found.repo),
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

async fn served_repo(
    State(git): State<GitState>,
    Path((id, path)): Path<(String, String)>,
    request: Request,
) -> Result<Response, ApiError> {
    let workspace: WorkspaceId = path_id(&id, "id")?;
    let token = bearer(request.headers())?;
    let served = git
        .control_plane
        .workspace_repository(token, &workspace)
        .await?;
    let service =
        GitService::parse(request.method(), &path, request.uri().query()).ok_or_else(|| {
            ApiError::new(
                ErrorCategory::NotFound,
                &format!(
                    "a served repository answers git's smart protocol only, not {} {path}",
                    request.method()
                ),
            )
        })?;
    let (parts, body) = request.into_parts();
    crate::plane::served_repo::serve(
        &ServeOptions::default(),
        &served.path,
        workspace.as_str(),
        service,
        &parts.headers,
        body,
        &format!("refs/heads/{}", served.output_branch),
    )
    .await
}

async fn pull_request(
    State(git): State<GitState>,
    Callback { token, id, body }: Callback<id_kind::Workspace, PullRequestRequest>,
) -> Result<axum::Json<PullRequestCreated>, ApiError> {
    let found = git.control_plane.workspace_github(&token, &id).await?;
    let task = &found.task;
    if task.spec.github.as_ref().map(|g| g.pull_request) != Some(PullRequestMode::Open) {
        return Err(ApiError::new(
            ErrorCategory::InvalidConfig,
            &format!("task {} did not ask for a pull request", task.id),
        ));
    }
    let expected = output_branch(&task.spec.prompt, &task.id);
    if body.head != expected {
        return Err(ApiError::new(
            ErrorCategory::AuthError,
            &format!(
                "task {} may open a pull request only from {expected}",
                task.id
            ),
        ));
    }
    let url = git
        .host
        .open_pull_request(found.installation.external_id, &found.repo, &body)
        .await?;
    Ok(axum::Json(PullRequestCreated { url }))
}

/// Lets a node route's request through only with that node's token, before the
/// handler reads its body: a caller without the token learns nothing about what the
/// body should be, and sends no body that is read.
async fn node_token_first(
    State(cp): State<ControlPlane>,
    Path(id): Path<String>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let node: NodeId = path_id(&id, "id")?;
    cp.verify_node_token(bearer(request.headers())?, &node)?;
    Ok(next.run(request).await)
}

/// As [`node_token_first`], for the workspace routes and the workspace's token.
async fn workspace_token_first(
    State(cp): State<ControlPlane>,
    Path(id): Path<String>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let workspace: WorkspaceId = path_id(&id, "id")?;
    cp.verify_workspace_token(bearer(request.headers())?, &workspace)?;
    Ok(next.run(request).await)
}

/// A callback as its handler takes it: the caller's bearer token, the id in the
/// path and the JSON body. Read as the handlers' own extractors did before: the
/// path, the body's bytes (a body over its limit is a `413`), then the token (`401`),
/// the id and the body (`400` naming the field).
struct Callback<K: IdKind, B> {
    token: String,
    id: Id<K>,
    body: B,
}

impl<S, K, B> FromRequest<S> for Callback<K, B>
where
    S: Send + Sync,
    K: IdKind,
    B: DeserializeOwned,
{
    type Rejection = Response;

    async fn from_request(request: Request, state: &S) -> Result<Self, Response> {
        let (mut parts, body) = request.into_parts();
        let Path(raw) = Path::<String>::from_request_parts(&mut parts, state)
            .await
            .map_err(IntoResponse::into_response)?;
        let headers = parts.headers.clone();
        let bytes = Bytes::from_request(Request::from_parts(parts, body), state)
            .await
            .map_err(IntoResponse::into_response)?;
        let read = || -> Result<Self, ApiError> {
            Ok(Self {
                token: bearer(&headers)?.to_owned(),
                id: path_id(&raw, "id")?,
                body: parse_body(&bytes)?,
            })
        };
        read().map_err(IntoResponse::into_response)
    }
}

fn bearer(headers: &HeaderMap) -> Result<&str, ApiError> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ApiError::new(ErrorCategory::AuthError, "a bearer token is required"))
}

async fn node_ready(
    State(cp): State<ControlPlane>,
    Callback { token, id, body }: Callback<id_kind::Node, NodeReady>,
) -> Result<StatusCode, ApiError> {
    cp.node_ready(&token, &id, &body.version, &body.boot.to_records())
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn boot_failed(
    State(cp): State<ControlPlane>,
    Callback { token, id, body }: Callback<id_kind::Node, BootFailed>,
) -> Result<StatusCode, ApiError> {
    cp.node_boot_failed(&token, &id, &body.to_report()?).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn heartbeat(
    State(cp): State<ControlPlane>,
    Callback { token, id, body }: Callback<id_kind::Node, Heartbeat>,
) -> Result<axum::Json<HeartbeatResponse>, ApiError> {
    let reply = cp.heartbeat(&token, &id, &body.metrics).await?;
    Ok(axum::Json(HeartbeatResponse {
        refreshed_token: reply.refreshed_token,
    }))
}

async fn workspace_ready(
    State(cp): State<ControlPlane>,
    Callback { token, id, body }: Callback<id_kind::Workspace, WorkspaceReport>,
) -> Result<StatusCode, ApiError> {
    cp.workspace_ready(&token, &id, &body).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn session_event(
    State(cp): State<ControlPlane>,
    Callback { token, id, body }: Callback<id_kind::Workspace, SessionCallback>,
) -> Result<StatusCode, ApiError> {
    cp.session_event(&token, &id, &body).await?;
    Ok(StatusCode::NO_CONTENT)
}
