//! The account routes, whose settings a task carries: users, projects, agent
//! profiles, credentials (write-only), GitHub installation links and setup status.

use axum::body::Bytes;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use sam_core::{
    AgentProfileRecord, CredentialInput, CredentialOwner, CredentialTarget, CredentialView,
    ErrorCategory, ExternalInstallationId, GithubInstallation, ProfileId, ProfileInput, ProjectId,
    ProjectInput, ProjectRecord, SetupChoices, SetupStatus, UserId, UserInput, UserRecord,
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{ApiError, ApiState, parse_body, path_id};

type Json<T> = Result<axum::Json<T>, ApiError>;

fn missing(what: std::fmt::Arguments<'_>) -> ApiError {
    ApiError::new(ErrorCategory::NotFound, &format!("{what} does not exist"))
}

fn created<T: Serialize>(value: T) -> Response {
    (StatusCode::CREATED, axum::Json(value)).into_response()
}

/// Creates a user.
#[utoipa::path(post, path = "/v1/users", tag = "users", security(("bearer" = [])),
    request_body = Object,
    responses((status = 201, description = "The user", body = Object)))]
pub(super) async fn create_user(
    State(state): State<ApiState>,
    bytes: Bytes,
) -> Result<Response, ApiError> {
    let input: UserInput = parse_body(&bytes)?;
    Ok(created(
        state.control_plane.accounts().create_user(&input).await?,
    ))
}

/// Reads a user.
#[utoipa::path(get, path = "/v1/users/{id}", tag = "users", security(("bearer" = [])),
    responses((status = 200, description = "The user", body = Object)))]
pub(super) async fn get_user(
    State(state): State<ApiState>,
    UrlPath(raw): UrlPath<String>,
) -> Json<UserRecord> {
    let user: UserId = path_id(&raw, "id")?;
    let found = state.control_plane.accounts().get_user(&user).await?;
    Ok(axum::Json(
        found.ok_or_else(|| missing(format_args!("user {user}")))?,
    ))
}

/// Replaces a user's name and settings.
#[utoipa::path(put, path = "/v1/users/{id}", tag = "users", security(("bearer" = [])),
    request_body = Object,
    responses((status = 200, description = "The user", body = Object)))]
pub(super) async fn update_user(
    State(state): State<ApiState>,
    UrlPath(raw): UrlPath<String>,
    bytes: Bytes,
) -> Json<UserRecord> {
    let user: UserId = path_id(&raw, "id")?;
    let input: UserInput = parse_body(&bytes)?;
    Ok(axum::Json(
        state
            .control_plane
            .accounts()
            .update_user(&user, &input)
            .await?,
    ))
}

/// Records the platform resources the user chose for their setup
/// (`{"platform_ai": true, "platform_infrastructure": false}`; a missing field is
/// `false`), replacing their earlier choices, and answers the setup status that
/// follows. A choice of something the platform does not offer (no agent credential,
/// no provider of its own) is `400`, naming the field.
#[utoipa::path(put, path = "/v1/users/{id}/setup", tag = "users", security(("bearer" = [])),
    request_body(content = Object, description = "`platform_ai`, `platform_infrastructure`: booleans"),
    responses(
        (status = 200, description = "The setup status with the choices", body = Object),
        (status = 400, description = "The platform does not offer a chosen resource", body = super::ErrorDoc),
        (status = 404, description = "No such user", body = super::ErrorDoc)))]
pub(super) async fn set_setup(
    State(state): State<ApiState>,
    UrlPath(raw): UrlPath<String>,
    bytes: Bytes,
) -> Json<SetupStatus> {
    let user: UserId = path_id(&raw, "id")?;
    let choices: SetupChoices = parse_body(&bytes)?;
    let accounts = state.control_plane.accounts();
    accounts.set_setup_choices(&user, choices).await?;
    Ok(axum::Json(accounts.setup_status(&user, None).await?))
}

/// The query of `GET /v1/users/{id}/setup`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SetupQuery {
    /// Only this project's credentials besides the user's.
    #[serde(default)]
    project: Option<String>,
}

/// Which of AI, cloud and repository access the user has chosen, and how: from
/// what the user (and their projects) configured, never from what the platform offers.
#[utoipa::path(get, path = "/v1/users/{id}/setup", tag = "users", security(("bearer" = [])),
    params(("project" = Option<String>, Query, description = "Only this project besides the user")),
    responses((status = 200, description = "The setup status", body = Object)))]
pub(super) async fn setup(
    State(state): State<ApiState>,
    UrlPath(raw): UrlPath<String>,
    query: Result<Query<SetupQuery>, axum::extract::rejection::QueryRejection>,
) -> Json<SetupStatus> {
    let user: UserId = path_id(&raw, "id")?;
    let Query(query) = query.map_err(|e| {
        ApiError::new(
            ErrorCategory::InvalidConfig,
            &format!("malformed query: {e}"),
        )
    })?;
    let project: Option<ProjectId> = query
        .project
        .as_deref()
        .map(|p| path_id(p, "project"))
        .transpose()?;
    Ok(axum::Json(
        state
            .control_plane
            .accounts()
            .setup_status(&user, project.as_ref())
            .await?,
    ))
}

async fn list_credentials(state: &ApiState, owner: CredentialOwner) -> Json<Vec<CredentialView>> {
    Ok(axum::Json(
        state
            .control_plane
            .accounts()
            .list_credentials(&owner)
            .await?,
    ))
}

async fn set_credential(
    state: &ApiState,
    owner: CredentialOwner,
    bytes: &[u8],
) -> Json<CredentialView> {
    let input: CredentialInput = parse_body(bytes)?;
    Ok(axum::Json(
        state
            .control_plane
            .accounts()
            .set_credential(&owner, &input)
            .await?,
    ))
}

async fn delete_credential(
    state: &ApiState,
    owner: CredentialOwner,
    target: &str,
) -> Result<StatusCode, ApiError> {
    let target: CredentialTarget = target.parse().map_err(|e: sam_core::CredentialError| {
        ApiError::field(ErrorCategory::InvalidConfig, "target", &e.to_string())
    })?;
    state
        .control_plane
        .accounts()
        .delete_credential(&owner, &target)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A user's credentials: what kind and for what, never the secret.
#[utoipa::path(get, path = "/v1/users/{id}/credentials", tag = "credentials", security(("bearer" = [])),
    responses((status = 200, description = "The credentials, without secrets", body = Object)))]
pub(super) async fn user_credentials(
    State(state): State<ApiState>,
    UrlPath(raw): UrlPath<String>,
) -> Json<Vec<CredentialView>> {
    list_credentials(&state, CredentialOwner::User(path_id(&raw, "id")?)).await
}

/// Sets a user's credential for a target (write-only: the answer has no secret).
#[utoipa::path(put, path = "/v1/users/{id}/credentials", tag = "credentials", security(("bearer" = [])),
    request_body = Object,
    responses((status = 200, description = "What was stored, without the secret", body = Object)))]
pub(super) async fn set_user_credential(
    State(state): State<ApiState>,
    UrlPath(raw): UrlPath<String>,
    bytes: Bytes,
) -> Json<CredentialView> {
    set_credential(&state, CredentialOwner::User(path_id(&raw, "id")?), &bytes).await
}

/// Deletes a user's credential for a target (`agent:claude`, `provider:hetzner`, …).
#[utoipa::path(delete, path = "/v1/users/{id}/credentials/{target}", tag = "credentials", security(("bearer" = [])),
    responses((status = 204, description = "Gone")))]
pub(super) async fn delete_user_credential(
    State(state): State<ApiState>,
    UrlPath((raw, target)): UrlPath<(String, String)>,
) -> Result<StatusCode, ApiError> {
    delete_credential(&state, CredentialOwner::User(path_id(&raw, "id")?), &target).await
}

/// A project's credentials: what kind and for what, never the secret.
#[utoipa::path(get, path = "/v1/projects/{id}/credentials", tag = "credentials", security(("bearer" = [])),
    responses((status = 200, description = "The credentials, without secrets", body = Object)))]
pub(super) async fn project_credentials(
    State(state): State<ApiState>,
    UrlPath(raw): UrlPath<String>,
) -> Json<Vec<CredentialView>> {
    list_credentials(&state, CredentialOwner::Project(path_id(&raw, "id")?)).await
}

/// Sets a project's credential for a target (write-only: the answer has no secret).
#[utoipa::path(put, path = "/v1/projects/{id}/credentials", tag = "credentials", security(("bearer" = [])),
    request_body = Object,
    responses((status = 200, description = "What was stored, without the secret", body = Object)))]
pub(super) async fn set_project_credential(
    State(state): State<ApiState>,
    UrlPath(raw): UrlPath<String>,
    bytes: Bytes,
) -> Json<CredentialView> {
    set_credential(
        &state,
        CredentialOwner::Project(path_id(&raw, "id")?),
        &bytes,
    )
    .await
}

/// Deletes a project's credential for a target.
#[utoipa::path(delete, path = "/v1/projects/{id}/credentials/{target}", tag = "credentials", security(("bearer" = [])),
    responses((status = 204, description = "Gone")))]
pub(super) async fn delete_project_credential(
    State(state): State<ApiState>,
    UrlPath((raw, target)): UrlPath<(String, String)>,
) -> Result<StatusCode, ApiError> {
    delete_credential(
        &state,
        CredentialOwner::Project(path_id(&raw, "id")?),
        &target,
    )
    .await
}

/// Every project, oldest first.
#[utoipa::path(get, path = "/v1/projects", tag = "projects", security(("bearer" = [])),
    responses((status = 200, description = "The projects", body = Object)))]
pub(super) async fn list_projects(State(state): State<ApiState>) -> Json<Vec<ProjectRecord>> {
    Ok(axum::Json(
        state.control_plane.accounts().list_projects().await?,
    ))
}

/// Creates a project; it starts with no agent profiles.
#[utoipa::path(post, path = "/v1/projects", tag = "projects", security(("bearer" = [])),
    request_body = Object,
    responses(
        (status = 201, description = "The project", body = Object),
        (status = 400, description = "A field out of range; `field` names it", body = super::ErrorDoc),
    ))]
pub(super) async fn create_project(
    State(state): State<ApiState>,
    bytes: Bytes,
) -> Result<Response, ApiError> {
    let input: ProjectInput = parse_body(&bytes)?;
    Ok(created(
        state
            .control_plane
            .accounts()
            .create_project(&input)
            .await?,
    ))
}

/// Reads a project.
#[utoipa::path(get, path = "/v1/projects/{id}", tag = "projects", security(("bearer" = [])),
    responses((status = 200, description = "The project", body = Object)))]
pub(super) async fn get_project(
    State(state): State<ApiState>,
    UrlPath(raw): UrlPath<String>,
) -> Json<ProjectRecord> {
    let project: ProjectId = path_id(&raw, "id")?;
    let found = state.control_plane.accounts().get_project(&project).await?;
    Ok(axum::Json(found.ok_or_else(|| {
        missing(format_args!("project {project}"))
    })?))
}

/// Replaces a project's fields.
#[utoipa::path(put, path = "/v1/projects/{id}", tag = "projects", security(("bearer" = [])),
    request_body = Object,
    responses((status = 200, description = "The project", body = Object)))]
pub(super) async fn update_project(
    State(state): State<ApiState>,
    UrlPath(raw): UrlPath<String>,
    bytes: Bytes,
) -> Json<ProjectRecord> {
    let project: ProjectId = path_id(&raw, "id")?;
    let input: ProjectInput = parse_body(&bytes)?;
    Ok(axum::Json(
        state
            .control_plane
            .accounts()
            .update_project(&project, &input)
            .await?,
    ))
}

/// Deletes a project with its profiles and credentials.
#[utoipa::path(delete, path = "/v1/projects/{id}", tag = "projects", security(("bearer" = [])),
    responses((status = 204, description = "Gone")))]
pub(super) async fn delete_project(
    State(state): State<ApiState>,
    UrlPath(raw): UrlPath<String>,
) -> Result<StatusCode, ApiError> {
    let project: ProjectId = path_id(&raw, "id")?;
    state
        .control_plane
        .accounts()
        .delete_project(&project)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A project's agent profiles, oldest first; a new project has none.
#[utoipa::path(get, path = "/v1/projects/{id}/profiles", tag = "projects", security(("bearer" = [])),
    responses((status = 200, description = "The profiles", body = Object)))]
pub(super) async fn list_profiles(
    State(state): State<ApiState>,
    UrlPath(raw): UrlPath<String>,
) -> Json<Vec<AgentProfileRecord>> {
    let project: ProjectId = path_id(&raw, "id")?;
    Ok(axum::Json(
        state
            .control_plane
            .accounts()
            .list_profiles(&project)
            .await?,
    ))
}

/// Creates an agent profile in a project.
#[utoipa::path(post, path = "/v1/projects/{id}/profiles", tag = "projects", security(("bearer" = [])),
    request_body = Object,
    responses(
        (status = 201, description = "The profile", body = Object),
        (status = 409, description = "The project has a profile of that name", body = super::ErrorDoc),
    ))]
pub(super) async fn create_profile(
    State(state): State<ApiState>,
    UrlPath(raw): UrlPath<String>,
    bytes: Bytes,
) -> Result<Response, ApiError> {
    let project: ProjectId = path_id(&raw, "id")?;
    let input: ProfileInput = parse_body(&bytes)?;
    Ok(created(
        state
            .control_plane
            .accounts()
            .create_profile(&project, &input)
            .await?,
    ))
}

fn profile_ids(raw: &str, profile: &str) -> Result<(ProjectId, ProfileId), ApiError> {
    Ok((path_id(raw, "id")?, path_id(profile, "profile")?))
}

/// Reads a project's agent profile.
#[utoipa::path(get, path = "/v1/projects/{id}/profiles/{profile}", tag = "projects", security(("bearer" = [])),
    responses((status = 200, description = "The profile", body = Object)))]
pub(super) async fn get_profile(
    State(state): State<ApiState>,
    UrlPath((raw, profile)): UrlPath<(String, String)>,
) -> Json<AgentProfileRecord> {
    let (project, profile) = profile_ids(&raw, &profile)?;
    let found = state
        .control_plane
        .accounts()
        .get_profile(&project, &profile)
        .await?;
    Ok(axum::Json(found.ok_or_else(|| {
        missing(format_args!("agent profile {profile} of project {project}"))
    })?))
}

/// Replaces a project's agent profile.
#[utoipa::path(put, path = "/v1/projects/{id}/profiles/{profile}", tag = "projects", security(("bearer" = [])),
    request_body = Object,
    responses((status = 200, description = "The profile", body = Object)))]
pub(super) async fn update_profile(
    State(state): State<ApiState>,
    UrlPath((raw, profile)): UrlPath<(String, String)>,
    bytes: Bytes,
) -> Json<AgentProfileRecord> {
    let (project, profile) = profile_ids(&raw, &profile)?;
    let input: ProfileInput = parse_body(&bytes)?;
    Ok(axum::Json(
        state
            .control_plane
            .accounts()
            .update_profile(&project, &profile, &input)
            .await?,
    ))
}

/// Deletes a project's agent profile; deleting the last one leaves none.
#[utoipa::path(delete, path = "/v1/projects/{id}/profiles/{profile}", tag = "projects", security(("bearer" = [])),
    responses((status = 204, description = "Gone")))]
pub(super) async fn delete_profile(
    State(state): State<ApiState>,
    UrlPath((raw, profile)): UrlPath<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let (project, profile) = profile_ids(&raw, &profile)?;
    state
        .control_plane
        .accounts()
        .delete_profile(&project, &profile)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The body of `POST /v1/users/{id}/github/installations`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LinkInstallationBody {
    /// GitHub's id of the App installation (as in the App's installation URL).
    #[schema(value_type = u64, example = 4242)]
    pub installation: ExternalInstallationId,
}

/// One of a user's GitHub installation links, as the API shows it: by GitHub's id,
/// never by its storage key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct InstallationView {
    /// GitHub's id of the installation.
    #[schema(value_type = u64, example = 4242)]
    pub installation: ExternalInstallationId,
    /// The account the App is installed on (an organisation or a user login).
    pub account: String,
    /// When the user linked it.
    pub created_at: DateTime<Utc>,
}

impl From<GithubInstallation> for InstallationView {
    fn from(link: GithubInstallation) -> Self {
        Self {
            installation: link.external_id,
            account: link.account,
            created_at: link.created_at,
        }
    }
}

/// Links the user to a GitHub App installation, after GitHub confirmed the App has
/// it. Two users of one organisation each link it for themselves.
#[utoipa::path(post, path = "/v1/users/{id}/github/installations", tag = "github", security(("bearer" = [])),
    request_body = LinkInstallationBody,
    responses(
        (status = 201, description = "The link", body = InstallationView),
        (status = 400, description = "No GitHub App is configured, or a malformed body", body = super::ErrorDoc),
        (status = 404, description = "No such user, or GitHub has no such installation of the App", body = super::ErrorDoc),
    ))]
pub(super) async fn link_installation(
    State(state): State<ApiState>,
    UrlPath(raw): UrlPath<String>,
    bytes: Bytes,
) -> Result<Response, ApiError> {
    let user: UserId = path_id(&raw, "id")?;
    let body: LinkInstallationBody = parse_body(&bytes)?;
    let link = state
        .control_plane
        .accounts()
        .link_github_installation(state.github.as_ref(), &user, body.installation)
        .await?;
    Ok(created(InstallationView::from(link)))
}

/// The user's GitHub installation links, oldest first.
#[utoipa::path(get, path = "/v1/users/{id}/github/installations", tag = "github", security(("bearer" = [])),
    responses(
        (status = 200, description = "The links", body = Vec<InstallationView>),
        (status = 404, description = "No such user", body = super::ErrorDoc),
    ))]
pub(super) async fn list_installations(
    State(state): State<ApiState>,
    UrlPath(raw): UrlPath<String>,
) -> Json<Vec<InstallationView>> {
    let user: UserId = path_id(&raw, "id")?;
    let links = state
        .control_plane
        .accounts()
        .list_github_installations(&user)
        .await?;
    Ok(axum::Json(links.into_iter().map(Into::into).collect()))
}

/// Removes the user's link to an installation (by GitHub's id); other users' links
/// to it stay.
#[utoipa::path(delete, path = "/v1/users/{id}/github/installations/{installation}", tag = "github", security(("bearer" = [])),
    responses((status = 204, description = "Gone")))]
pub(super) async fn unlink_installation(
    State(state): State<ApiState>,
    UrlPath((raw, installation)): UrlPath<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let user: UserId = path_id(&raw, "id")?;
    let installation: ExternalInstallationId =
        installation
            .parse()
            .map_err(|e: sam_core::model::ParseError| {
                ApiError::field(ErrorCategory::InvalidConfig, "installation", &e.to_string())
            })?;
    state
        .control_plane
        .accounts()
        .unlink_github_installation(&user, installation)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
