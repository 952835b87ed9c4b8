//! The task routes: submit (with the checks a body passes before the control plane
//! sees it), read, list, cancel, and retry and fork, which start a new task that
//! records its parent.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::{Path as UrlPath, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use sam_core::{
    ControlPlane, Effort, ErrorCategory, ExternalInstallationId, GithubAccess, InstallationKey,
    Layer, LayerSettings, Location, PermissionMode, ProjectId, ProviderKind, PullRequestMode,
    ResourceRequirements, SubmitRequest, TaskFilter, TaskId, TaskRecord, TaskStatus, UserId,
    VmSize, WorkspaceProfile,
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::views::{Accepted, Cancelled, TaskList, TaskView};
use super::{ApiError, ApiState, ErrorDoc, parse_body, path_id};

/// The most tasks one `GET /v1/tasks` returns.
pub const MAX_PAGE: usize = 200;

/// The body of `POST /v1/tasks`: the task layer's settings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitBody {
    /// Repository URL, or a path on the server's machine for the local provider.
    #[serde(default)]
    pub repo: Option<String>,
    /// What the agent should do.
    #[serde(default)]
    pub prompt: Option<String>,
    /// Branch to start from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    /// The agent (`demo`, `claude`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// An explicit size: never downgraded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, example = "medium")]
    pub size: Option<VmSize>,
    /// An explicit location.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub location: Option<Location>,
    /// The provider.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, example = "local")]
    pub provider: Option<ProviderKind>,
    /// Resource requirements of the task layer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub requirements: Option<ResourceRequirements>,
    /// A devcontainer configuration name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub devcontainer: Option<String>,
    /// The workspace profile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub workspace_profile: Option<WorkspaceProfile>,
    /// The GitHub App installation the repository is behind, by GitHub's id
    /// (`{"installation": 4242, "pull_request": "open"}`): the submitting `user` must
    /// have linked it (`POST /v1/users/{id}/github/installations`); the workspace
    /// then clones and pushes with short-lived installation tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub github: Option<GithubBody>,
    /// The agent's model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The agent's effort (`low`, `medium`, `high`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub effort: Option<Effort>,
    /// How permission requests are answered (`allow_all`, `read_only`, `reject_all`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub permission_mode: Option<PermissionMode>,
    /// Text added to the agent's instructions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_prompt: Option<String>,
    /// The project: its settings are the project layer, its repository the default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub project: Option<ProjectId>,
    /// The project's agent profile, by id or name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    /// The submitting user: their settings are the user layer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub user: Option<UserId>,
}

/// The `github` of a [`SubmitBody`]: which installation, by GitHub's id, and whether
/// to open a pull request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GithubBody {
    /// GitHub's id of the App installation the submitting user linked.
    #[schema(value_type = u64, example = 4242)]
    pub installation: ExternalInstallationId,
    /// `branch_only` (the default) or `open`: push the output branch only, or open a
    /// pull request for it too.
    #[serde(default)]
    #[schema(value_type = String, example = "open")]
    pub pull_request: PullRequestMode,
}

impl SubmitBody {
    /// The task's link to its GitHub installation: the submitting user's link to
    /// the installation the body names.
    fn github_access(&self) -> Result<Option<GithubAccess>, ApiError> {
        let Some(github) = &self.github else {
            return Ok(None);
        };
        let user = self.user.clone().ok_or_else(|| {
            ApiError::field(
                ErrorCategory::InvalidConfig,
                "user",
                "a task with `github` names its `user`: GitHub installations are linked per user",
            )
        })?;
        Ok(Some(GithubAccess {
            installation: InstallationKey::new(user, github.installation),
            pull_request: github.pull_request,
        }))
    }

    /// The control plane's request, with these settings as the task layer.
    ///
    /// # Errors
    /// `invalid_config` naming `repo` or `prompt` when one is missing, or `user` when
    /// `github` is given without it.
    pub fn to_request(&self) -> Result<SubmitRequest, ApiError> {
        let required = |value: &Option<String>, field: &str| {
            value.clone().ok_or_else(|| {
                ApiError::field(
                    ErrorCategory::InvalidConfig,
                    field,
                    &format!("missing field `{field}`"),
                )
            })
        };
        let mut layers = BTreeMap::new();
        layers.insert(
            Layer::Task,
            LayerSettings {
                size: self.size,
                provider: self.provider,
                location: self.location.clone(),
                workspace_profile: self.workspace_profile,
                devcontainer: self.devcontainer.clone(),
                agent: self.agent.clone(),
                model: self.model.clone(),
                effort: self.effort,
                permission_mode: self.permission_mode,
                system_prompt: self.system_prompt.clone(),
                requirements: self.requirements.clone().unwrap_or_default(),
            },
        );
        // A project supplies the repository; without one it is required.
        let repo = match (&self.repo, &self.project) {
            (Some(repo), _) => repo.clone(),
            (None, Some(_)) => String::new(),
            (None, None) => required(&self.repo, "repo")?,
        };
        Ok(SubmitRequest {
            repo,
            prompt: required(&self.prompt, "prompt")?,
            branch: self.branch.clone(),
            layers,
            preferred_node: None,
            github: self.github_access()?,
            project: self.project.clone(),
            profile: self.profile.clone(),
            user: self.user.clone(),
        })
    }
}

/// Reads a `POST /v1/tasks` body into the control plane's request: everything the
/// route checks before it hands the request to [`ControlPlane::submit`].
///
/// # Errors
/// `invalid_config` for a body that is not JSON, a field of the wrong type (named in
/// `field`), a missing `repo` or `prompt`, or `github` without `user`.
pub fn submit_request(bytes: &[u8]) -> Result<SubmitRequest, ApiError> {
    parse_body::<SubmitBody>(bytes)?.to_request()
}

/// When `repo` is a path on this machine (`/path` or `file:///path`), checks that
/// it is a git repository here: a directory holding `.git`, or a bare repository.
/// Other repositories are the control plane's to check ([`ControlPlane::submit`]).
///
/// # Errors
/// `invalid_config` naming `repo` for a path that is not a git repository.
pub fn check_local_repository(repo: &str) -> Result<(), ApiError> {
    let Ok(sam_core::Repository::Local { path }) = sam_core::parse_repository(repo) else {
        return Ok(());
    };
    let path = std::path::Path::new(&path);
    let is_repository = path.join(".git").exists()
        || (path.join("HEAD").is_file() && path.join("objects").is_dir());
    if path.is_dir() && is_repository {
        return Ok(());
    }
    Err(ApiError::field(
        ErrorCategory::InvalidConfig,
        "repo",
        &format!(
            "{} is not a git repository on the server's machine",
            path.display()
        ),
    ))
}

/// The `202` answer of a route that queued task `id`.
fn accepted(id: TaskId) -> Response {
    let body = Accepted {
        id: id.to_string(),
        status: TaskStatus::Queued,
    };
    (StatusCode::ACCEPTED, axum::Json(body)).into_response()
}

/// Submits a task.
#[utoipa::path(post, path = "/v1/tasks", tag = "tasks", security(("bearer" = [])), request_body = SubmitBody,
    responses(
        (status = 202, description = "Queued", body = Accepted),
        (status = 400, description = "A malformed body, a repository that is not allowed, a prompt holding NUL; `field` names the field", body = ErrorDoc),
        (status = 401, description = "No or an unknown API token", body = ErrorDoc),
        (status = 413, description = "A prompt over 256 KiB (`field` is `prompt`), or a body over 2 MiB", body = ErrorDoc),
    ))]
pub(super) async fn submit(
    State(state): State<ApiState>,
    bytes: Bytes,
) -> Result<Response, ApiError> {
    let request = submit_request(&bytes)?;
    check_local_repository(&request.repo)?;
    let id = state.control_plane.submit(&request).await?;
    tracing::info!(task = %id, "task submitted");
    Ok(accepted(id))
}

/// The task `id`, or `not_found`.
pub(super) async fn require_task(cp: &ControlPlane, id: &TaskId) -> Result<TaskRecord, ApiError> {
    cp.get(id).await?.ok_or_else(|| {
        ApiError::new(
            ErrorCategory::NotFound,
            &format!("task {id} does not exist"),
        )
    })
}

/// One task: status, step, size and location with their provenance, placement, error.
#[utoipa::path(get, path = "/v1/tasks/{id}", tag = "tasks", security(("bearer" = [])), params(("id" = String, Path, description = "The task id")),
    responses(
        (status = 200, description = "The task", body = TaskView),
        (status = 404, description = "No such task", body = ErrorDoc),
        (status = 401, description = "No or an unknown API token", body = ErrorDoc),
    ))]
pub(super) async fn task(
    State(state): State<ApiState>,
    UrlPath(id): UrlPath<String>,
) -> Result<axum::Json<TaskView>, ApiError> {
    let id: TaskId = path_id(&id, "id")?;
    let task = require_task(&state.control_plane, &id).await?;
    Ok(axum::Json(
        TaskView::describe(&state.control_plane, &state.catalog, task).await?,
    ))
}

/// Reads `status` (comma-separated), `after` and `limit` from the query string of
/// `GET /v1/tasks`.
///
/// # Errors
/// `invalid_config` naming the parameter for an unknown status, a bad cursor, a
/// limit outside 1 to 200, or an unknown parameter.
pub fn task_filter(query: Option<&str>) -> Result<TaskFilter, ApiError> {
    let mut filter = TaskFilter {
        limit: Some(50),
        ..TaskFilter::default()
    };
    let query = query.unwrap_or_default();
    for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
        let bad = |message: String| ApiError::field(ErrorCategory::InvalidConfig, &key, &message);
        match key.as_ref() {
            "status" => {
                for s in value.split(',').filter(|s| !s.is_empty()) {
                    filter.statuses.push(
                        s.parse()
                            .map_err(|e: sam_core::ParseError| bad(e.to_string()))?,
                    );
                }
            }
            "after" => filter.after = Some(path_id(&value, "after")?),
            "limit" => match value.parse::<usize>() {
                Ok(n) if (1..=MAX_PAGE).contains(&n) => filter.limit = Some(n),
                _ => return Err(bad(format!("must be a number from 1 to {MAX_PAGE}"))),
            },
            _ => return Err(bad(format!("unknown query parameter `{key}`"))),
        }
    }
    Ok(filter)
}

/// Tasks, oldest first, filtered by status and paginated by `after`.
#[utoipa::path(get, path = "/v1/tasks", tag = "tasks", security(("bearer" = [])),
    params(
        ("status" = Option<String>, Query, description = "Comma-separated statuses, e.g. `queued,in_progress`"),
        ("after" = Option<String>, Query, description = "The `next_after` cursor of the previous page"),
        ("limit" = Option<usize>, Query, description = "At most this many tasks (1 to 200; default 50)"),
    ),
    responses(
        (status = 200, description = "A page of tasks", body = TaskList),
        (status = 400, description = "A bad query parameter, named in `field`", body = ErrorDoc),
        (status = 401, description = "No or an unknown API token", body = ErrorDoc),
    ))]
pub(super) async fn list(
    State(state): State<ApiState>,
    RawQuery(query): RawQuery,
) -> Result<axum::Json<TaskList>, ApiError> {
    let filter = task_filter(query.as_deref())?;
    let records = state.control_plane.list(&filter).await?;
    let full = filter.limit.is_some_and(|l| records.len() >= l);
    let next_after = full
        .then(|| records.last().map(|t| t.id.to_string()))
        .flatten();
    let mut tasks = Vec::with_capacity(records.len());
    for record in records {
        tasks.push(TaskView::describe(&state.control_plane, &state.catalog, record).await?);
    }
    Ok(axum::Json(TaskList { tasks, next_after }))
}

/// Cancels a task (nothing changes when it has already ended).
#[utoipa::path(post, path = "/v1/tasks/{id}/cancel", tag = "tasks", security(("bearer" = [])), params(("id" = String, Path, description = "The task id")),
    responses(
        (status = 200, description = "The task's status now", body = Cancelled),
        (status = 404, description = "No such task", body = ErrorDoc),
        (status = 401, description = "No or an unknown API token", body = ErrorDoc),
    ))]
pub(super) async fn cancel(
    State(state): State<ApiState>,
    UrlPath(id): UrlPath<String>,
) -> Result<axum::Json<Cancelled>, ApiError> {
    let id: TaskId = path_id(&id, "id")?;
    require_task(&state.control_plane, &id).await?;
    let cancelled = state.control_plane.cancel(&id, "user").await?;
    let task = require_task(&state.control_plane, &id).await?;
    Ok(axum::Json(Cancelled {
        id: id.to_string(),
        cancelled,
        status: task.status,
    }))
}

/// Runs a finished task's prompt again as a new task that records its parent.
#[utoipa::path(post, path = "/v1/tasks/{id}/retry", tag = "tasks", security(("bearer" = [])),
    responses(
        (status = 202, description = "The new task", body = Accepted),
        (status = 400, description = "The task is still running, or has 10 ancestors already", body = ErrorDoc),
        (status = 404, description = "No such task", body = ErrorDoc),
    ))]
pub(super) async fn retry(
    State(state): State<ApiState>,
    UrlPath(id): UrlPath<String>,
) -> Result<Response, ApiError> {
    let id: sam_core::TaskId = path_id(&id, "id")?;
    Ok(accepted(state.control_plane.retry(&id).await?))
}

/// The body of `POST /v1/tasks/{id}/fork`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ForkBody {
    /// What the agent should do next.
    pub prompt: String,
}

/// Continues from a task with a new prompt, as a new task that records its parent.
#[utoipa::path(post, path = "/v1/tasks/{id}/fork", tag = "tasks", security(("bearer" = [])),
    request_body = ForkBody,
    responses(
        (status = 202, description = "The new task", body = Accepted),
        (status = 400, description = "An empty prompt, or 10 ancestors already", body = ErrorDoc),
        (status = 404, description = "No such task", body = ErrorDoc),
    ))]
pub(super) async fn fork(
    State(state): State<ApiState>,
    UrlPath(id): UrlPath<String>,
    bytes: Bytes,
) -> Result<Response, ApiError> {
    let id: sam_core::TaskId = path_id(&id, "id")?;
    let body: ForkBody = parse_body(&bytes)?;
    Ok(accepted(state.control_plane.fork(&id, &body.prompt).await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_repo_is_named() {
        let body = SubmitBody {
            prompt: Some("p".into()),
            ..SubmitBody::default()
        };
        let error = body.to_request().unwrap_err();
        assert_eq!(error.body().field.as_deref(), Some("repo"));
        assert_eq!(error.status(), StatusCode::BAD_REQUEST.as_u16());
    }

    #[test]
    fn query_parameters_are_checked() {
        let filter = task_filter(Some("status=queued,failed&limit=3")).unwrap();
        assert_eq!(
            filter.statuses,
            vec![TaskStatus::Queued, TaskStatus::Failed]
        );
        assert_eq!(filter.limit, Some(3));
        for (query, field) in [
            ("limit=0", "limit"),
            ("status=nope", "status"),
            ("x=1", "x"),
        ] {
            let error = task_filter(Some(query)).unwrap_err();
            assert_eq!(error.body().field.as_deref(), Some(field), "{query}");
        }
    }
}
