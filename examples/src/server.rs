//! The control plane as an HTTP service: what `sam-server` runs.
//!
//! [`Server::start`] assembles an [`Embedded`] control plane (SQLite in the data
//! directory or PostgreSQL, the local provider), binds the listen address and serves
//! [`api_router`] there: the user API under `/v1` and the VM agents' callback routes
//! ([`sam_agent::callback_router`]), so nodes call back to the same address.
//!
//! The user API (JSON):
//! - `GET /v1/health`
//! - `POST /v1/tasks` ([`SubmitBody`]) → `202` [`Accepted`]
//! - `GET /v1/tasks?status=queued,in_progress&after=<id>&limit=<n>` → [`TaskList`]
//! - `GET /v1/tasks/{id}` → [`TaskView`]
//! - `POST /v1/tasks/{id}/cancel` → [`Cancelled`]
//! - `GET /v1/tasks/{id}/events`: server-sent events, one [`TaskEvent`] each (the
//!   event name is its `type`); the stream ends after the task's terminal status
//! - `GET /v1/nodes` → [`NodeView`]s
//! - `GET /v1/nodes/{id}` → one [`NodeView`], its boot timeline included
//! - `GET /v1/catalog` → [`CatalogView`]
//! - `POST /v1/tasks/{id}/retry`, `POST /v1/tasks/{id}/fork` (`{"prompt": …}`) →
//!   `202` [`Accepted`]: a new task recording its parent (`source` in its view)
//! - `POST /v1/users`, `GET`/`PUT /v1/users/{id}`, `GET /v1/users/{id}/setup`
//!   (`?project=<id>`): which of AI, cloud and repository access the user chose
//! - `GET`/`POST /v1/projects`, `GET`/`PUT`/`DELETE /v1/projects/{id}`
//! - `GET`/`POST /v1/projects/{id}/profiles`, `GET`/`PUT`/`DELETE
//!   /v1/projects/{id}/profiles/{profile}`
//! - `GET`/`PUT /v1/{users,projects}/{id}/credentials`, `DELETE
//!   /v1/{users,projects}/{id}/credentials/{target}`: write-only, answers never
//!   carry the secret
//! - `POST`/`GET /v1/users/{id}/github/installations` (`{"installation": 4242}`),
//!   `DELETE /v1/users/{id}/github/installations/{installation}`: the user's links
//!   to GitHub App installations, checked with GitHub when made, shown by GitHub's
//!   id ([`InstallationView`]); a task's `github` names one by that id with its `user`
//! - `GET`/`POST /v1/tokens`, `DELETE /v1/tokens/{id}` (admin tokens only): list,
//!   create (`{"name": …, "kind": "user"|"admin", "expires_in_days": n}`; the
//!   answer shows the token this once) and revoke API tokens ([`tokens`])
//! - `GET /v1/openapi.json`: the OpenAPI document of all of these and the callbacks
//!   ([`openapi`]); like `/v1/health` it needs no token
//!
//! [`routes`] lists every route the router serves; the router is built from the same
//! table.
//!
//! Every user route needs `Authorization: Bearer <token>` of a token that is neither
//! revoked nor expired; tokens are stored only as SHA-256 hashes ([`token_hash`],
//! [`sam_core::ApiTokenRecord`]). The token the server starts with is the bootstrap
//! token: starting with another one revokes it ([`tokens::register_bootstrap`]).
//! The callback routes check their own scoped tokens. Every failure is an
//! [`ErrorBody`](sam_agent::wire::ErrorBody) with the status of its category; a
//! malformed body names the field; unknown routes get a JSON `404`; bodies over
//! [`sam_agent::serve::BODY_LIMIT`] a JSON
//! `413`, and so do axum's and hyper's own refusals ([`sam_agent::serve::json_errors`],
//! [`sam_agent::serve::JsonErrorListener`]). A task's repository must be
//! `https://…`, `ssh://…`, `user@host:path` or, with the local provider, a git
//! repository on this machine ([`check_local_repository`]); its prompt holds no NUL
//! and at most [`sam_core::MAX_PROMPT_BYTES`] (`413` above). Each response carries an
//! `x-request-id`, and each request is logged with it (tracing).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, RawQuery, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, MethodRouter};
use chrono::{DateTime, Utc};
use futures::Stream;
pub use sam_agent::wire::ApiError;
use sam_agent::wire::{parse_body, path_id};
use sam_core::{
    AgentOptions, BootPhaseRecord, Catalog, ControlPlane, Effort, ErrorCategory, ExecutionStep,
    ExternalInstallationId, GitCredential, GithubAccess, GithubError, InstallationKey, Layer,
    LayerSettings, Location, NodeFilter, NodeRecord, PermissionMode, PlacementExplanation,
    ProjectId, ProviderKind, PullRequestMode, PullRequestRequest, RepoRef, RepositoryHost,
    Reservation, ResourceRequirements, Secret, SubmitRequest, TaskError, TaskEvent, TaskEventKind,
    TaskFilter, TaskId, TaskNoticeRecord, TaskOutput, TaskRecord, TaskSource, TaskStatus, UserId,
    VmSize, WorkspaceProfile,
};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::watch;
use tracing::Instrument as _;
use utoipa::{OpenApi as _, ToSchema};

use crate::embedded::{CallbackServing, Embedded, EmbeddedOptions};

/// The most tasks one `GET /v1/tasks` returns.
pub const MAX_PAGE: usize = 200;

/// How [`Server::start`] runs.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Where the API and the callbacks listen.
    pub listen: SocketAddr,
    /// The base URL nodes call back to; `None` derives it from the bound address
    /// (loopback for an unspecified address, which suits the local provider).
    pub public_url: Option<url::Url>,
    /// The bootstrap API token (an admin token); `None` creates one in
    /// `<data dir>/api-token` (0600) at first start and uses that. Another token
    /// used as the bootstrap token before is revoked at start.
    pub api_token: Option<Secret>,
    /// The embedded control plane (its `callbacks` are replaced: this server serves them).
    pub embedded: EmbeddedOptions,
    /// The GitHub App that mints the workspaces' git credentials; `None` answers the
    /// git routes with `invalid_config`.
    pub github: Option<Arc<dyn RepositoryHost>>,
    /// The VM agent binary served at [`agent_download::PATH`]; `None` answers `404`.
    pub agent_binary: Option<agent_download::AgentBinary>,
}

impl ServerOptions {
    /// The options `config` describes, with its provider built from the environment
    /// ([`crate::config::node_provider`]).
    ///
    /// # Errors
    /// When the provider's credentials are missing (the message names the variable),
    /// or the running executable (which starts local nodes) cannot be found.
    pub fn from_config(config: &crate::config::ServerConfig) -> anyhow::Result<Self> {
        let mut embedded = EmbeddedOptions::new(&config.data_dir)?;
        (embedded.provider, embedded.provider_factory) =
            crate::config::node_provider(config.provider, config.qemu_image.as_deref())?;
        if let crate::embedded::NodeProvider::Qemu(nodes) = &mut embedded.provider {
            nodes.apt_proxy_port = config.qemu_apt_proxy_port;
        }
        embedded.local_root.clone_from(&config.local_root);
        embedded.database_url = config.database_url.clone();
        embedded.database_schema = config.database_schema.clone();
        embedded.agent_command = config.agent_command.clone();
        embedded.poll_interval = config.poll_interval();
        embedded.timeouts = config.timeouts();
        let delivery = agent_download::AgentDelivery::from_config(config)?;
        // QEMU nodes reach no registry: they install no adapter unless told to (their
        // image then has it pre-baked).
        let no_agents: &[String] = &[];
        let agents = match config.provider {
            crate::config::ProviderChoice::Qemu => {
                Some(config.node_agents.as_deref().unwrap_or(no_agents))
            }
            _ => config.node_agents.as_deref(),
        };
        embedded.cloud_boot = delivery.as_ref().map(|d| d.cloud_boot(agents));
        // A GitHub App is optional: it is configured when `GITHUB_APP_ID` is set.
        let github = match std::env::var_os("GITHUB_APP_ID") {
            Some(_) => Some(Arc::new(sam_providers::GithubApp::new(
                sam_providers::GithubAppConfig::from_env()?,
            )?) as Arc<dyn RepositoryHost>),
            None => None,
        };
        embedded.credential_key = config.credential_key.clone();
        embedded.lease = config.lease();
        embedded.node_replacements = config.node_replacements;
        Ok(Self {
            listen: config.listen,
            public_url: config.public_url.clone(),
            api_token: config.api_token.clone(),
            embedded,
            github,
            agent_binary: delivery.and_then(|d| d.served().cloned()),
        })
    }
}

/// A running `sam-server`; see the [module docs](self).
#[derive(Debug)]
pub struct Server {
    /// The control plane and its provider.
    pub embedded: Embedded,
    /// The address the API listens on.
    pub local_addr: SocketAddr,
    stop: watch::Sender<bool>,
    http: tokio::task::JoinHandle<()>,
}

/// The hex SHA-256 of an API token: the only form in which tokens are stored
/// ([`sam_core::hash_api_token`]).
pub fn token_hash(token: &str) -> String {
    sam_core::hash_api_token(token)
}

impl Server {
    /// Binds the listen address, starts the control plane and serves the API.
    ///
    /// # Errors
    /// When the address cannot be bound or the control plane cannot start.
    pub async fn start(options: ServerOptions) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind(options.listen)
            .await
            .with_context(|| format!("cannot listen on {}", options.listen))?;
        Self::start_on(listener, options).await
    }

    /// As [`Server::start`], on a listener already bound (`options.listen` is not
    /// used).
    ///
    /// # Errors
    /// When the control plane cannot start.
    pub async fn start_on(
        listener: tokio::net::TcpListener,
        options: ServerOptions,
    ) -> anyhow::Result<Self> {
        let local_addr = listener.local_addr()?;
        let public_url = match options.public_url {
            Some(url) => url,
            None => {
                let ip = match local_addr.ip() {
                    ip if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
                    ip => ip,
                };
                url::Url::parse(&format!(
                    "http://{}/",
                    SocketAddr::new(ip, local_addr.port())
                ))?
            }
        };
        let mut embedded_options = options.embedded;
        embedded_options.callbacks = CallbackServing::External(public_url);
        let data_dir: PathBuf = embedded_options.data_dir.clone();
        let embedded = Embedded::start(embedded_options).await?;
        let token = match options.api_token {
            Some(token) => token,
            None => {
                let path = data_dir.join("api-token");
                let token = crate::embedded::secret_file(&path, 24)?;
                tracing::info!(path = %path.display(), "accepting the API token in this file");
                token
            }
        };
        let store = embedded.control_plane.store();
        // The token the server starts with is the bootstrap token: another one it
        // was started with before is revoked.
        tokens::register_bootstrap(store.as_ref(), &token, Utc::now()).await?;

        let (stop, stopped) = watch::channel(false);
        let state = ApiState {
            control_plane: embedded.control_plane.clone(),
            catalog: Arc::new(embedded.catalog().clone()),
            stopped: stopped.clone(),
            github: options.github.unwrap_or_else(|| Arc::new(NoGithubApp)),
            agent_binary: options.agent_binary,
        };
        let router = api_router(state);
        let http = tokio::spawn(async move {
            let mut stopped = stopped;
            let shutdown = async move {
                let _ = stopped.wait_for(|s| *s).await;
            };
            let listener = sam_agent::serve::JsonErrorListener::new(listener);
            if let Err(e) = axum::serve(listener, router)
                .with_graceful_shutdown(shutdown)
                .await
            {
                tracing::error!(error = %e, "the HTTP server stopped");
            }
        });
        tracing::info!(addr = %local_addr, callbacks = %embedded.callback_url, "sam-server listening");
        Ok(Self {
            embedded,
            local_addr,
            stop,
            http,
        })
    }

    /// Stops serving (open event streams end), then stops the runner. Nodes keep
    /// running and unfinished tasks resume in the next process: their leases expire.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(10), self.http).await;
        self.embedded.shutdown().await;
    }
}

/// What the API handlers share.
#[derive(Debug, Clone)]
pub struct ApiState {
    /// The control plane.
    pub control_plane: ControlPlane,
    /// The catalog shown by `GET /v1/catalog` and used to describe sizes.
    pub catalog: Arc<Catalog>,
    /// Becomes `true` when the server shuts down; event streams end then.
    pub stopped: watch::Receiver<bool>,
    /// GitHub, for the git routes ([`sam_agent::git_router`]).
    pub github: Arc<dyn RepositoryHost>,
    /// The VM agent binary served at [`agent_download::PATH`], if any.
    pub agent_binary: Option<agent_download::AgentBinary>,
}

/// The GitHub of a server without a GitHub App: every request is `invalid_config`.
#[derive(Debug)]
struct NoGithubApp;

impl NoGithubApp {
    fn refusal() -> GithubError {
        GithubError::new(
            ErrorCategory::InvalidConfig,
            "this server has no GitHub App (set GITHUB_APP_ID and GITHUB_APP_PRIVATE_KEY_FILE)",
        )
    }
}

#[async_trait::async_trait]
impl RepositoryHost for NoGithubApp {
    async fn installation_account(
        &self,
        _installation: ExternalInstallationId,
    ) -> Result<String, GithubError> {
        Err(Self::refusal())
    }

    async fn repository_token(
        &self,
        _installation: ExternalInstallationId,
        _repo: &RepoRef,
    ) -> Result<GitCredential, GithubError> {
        Err(Self::refusal())
    }

    async fn open_pull_request(
        &self,
        _installation: ExternalInstallationId,
        _repo: &RepoRef,
        _request: &PullRequestRequest,
    ) -> Result<String, GithubError> {
        Err(Self::refusal())
    }
}

/// An HTTP method the API uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Verb {
    /// `GET`.
    Get,
    /// `POST`.
    Post,
    /// `PUT`.
    Put,
    /// `DELETE`.
    Delete,
}

impl Verb {
    /// The method's name, upper case.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Get => "GET",
            Self::Post => "POST",
            Self::Put => "PUT",
            Self::Delete => "DELETE",
        }
    }

    const fn to_filter(self) -> MethodFilter {
        match self {
            Self::Get => MethodFilter::GET,
            Self::Post => MethodFilter::POST,
            Self::Put => MethodFilter::PUT,
            Self::Delete => MethodFilter::DELETE,
        }
    }
}

/// One route of the table the router is built from.
type RouteEntry<S> = (Verb, &'static str, MethodRouter<S>);

fn entry<S, H, T>(verb: Verb, path: &'static str, handler: H) -> RouteEntry<S>
where
    S: Clone + Send + Sync + 'static,
    H: axum::handler::Handler<T, S>,
    T: 'static,
{
    (verb, path, axum::routing::on(verb.to_filter(), handler))
}

pub mod agent_download;
mod projects;
pub mod tokens;
pub use projects::{ForkBody, InstallationView, LinkInstallationBody};
pub use tokens::{CreateTokenBody, CreatedToken, TokenView};

/// The routes anyone may call.
fn public_routes() -> Vec<RouteEntry<()>> {
    vec![
        entry(Verb::Get, "/v1/health", health),
        entry(Verb::Get, "/v1/openapi.json", openapi_json),
        entry(Verb::Get, agent_download::PATH, agent_download::download),
    ]
}

/// The routes behind a bearer token.
fn user_routes() -> Vec<RouteEntry<ApiState>> {
    vec![
        entry(Verb::Post, "/v1/tasks", submit),
        entry(Verb::Get, "/v1/tasks", list),
        entry(Verb::Get, "/v1/tasks/{id}", task),
        entry(Verb::Post, "/v1/tasks/{id}/cancel", cancel),
        entry(Verb::Get, "/v1/tasks/{id}/events", events),
        entry(Verb::Get, "/v1/nodes", nodes),
        entry(Verb::Get, "/v1/nodes/{id}", node),
        entry(Verb::Get, "/v1/catalog", catalog),
        entry(Verb::Get, "/v1/tokens", tokens::list_tokens),
        entry(Verb::Post, "/v1/tokens", tokens::create_token),
        entry(Verb::Delete, "/v1/tokens/{id}", tokens::revoke_token),
        entry(Verb::Post, "/v1/tasks/{id}/retry", projects::retry),
        entry(Verb::Post, "/v1/tasks/{id}/fork", projects::fork),
        entry(Verb::Post, "/v1/users", projects::create_user),
        entry(Verb::Get, "/v1/users/{id}", projects::get_user),
        entry(Verb::Put, "/v1/users/{id}", projects::update_user),
        entry(Verb::Get, "/v1/users/{id}/setup", projects::setup),
        entry(
            Verb::Get,
            "/v1/users/{id}/credentials",
            projects::user_credentials,
        ),
        entry(
            Verb::Put,
            "/v1/users/{id}/credentials",
            projects::set_user_credential,
        ),
        entry(
            Verb::Delete,
            "/v1/users/{id}/credentials/{target}",
            projects::delete_user_credential,
        ),
        entry(
            Verb::Post,
            "/v1/users/{id}/github/installations",
            projects::link_installation,
        ),
        entry(
            Verb::Get,
            "/v1/users/{id}/github/installations",
            projects::list_installations,
        ),
        entry(
            Verb::Delete,
            "/v1/users/{id}/github/installations/{installation}",
            projects::unlink_installation,
        ),
        entry(Verb::Get, "/v1/projects", projects::list_projects),
        entry(Verb::Post, "/v1/projects", projects::create_project),
        entry(Verb::Get, "/v1/projects/{id}", projects::get_project),
        entry(Verb::Put, "/v1/projects/{id}", projects::update_project),
        entry(Verb::Delete, "/v1/projects/{id}", projects::delete_project),
        entry(
            Verb::Get,
            "/v1/projects/{id}/credentials",
            projects::project_credentials,
        ),
        entry(
            Verb::Put,
            "/v1/projects/{id}/credentials",
            projects::set_project_credential,
        ),
        entry(
            Verb::Delete,
            "/v1/projects/{id}/credentials/{target}",
            projects::delete_project_credential,
        ),
        entry(
            Verb::Get,
            "/v1/projects/{id}/profiles",
            projects::list_profiles,
        ),
        entry(
            Verb::Post,
            "/v1/projects/{id}/profiles",
            projects::create_profile,
        ),
        entry(
            Verb::Get,
            "/v1/projects/{id}/profiles/{profile}",
            projects::get_profile,
        ),
        entry(
            Verb::Put,
            "/v1/projects/{id}/profiles/{profile}",
            projects::update_profile,
        ),
        entry(
            Verb::Delete,
            "/v1/projects/{id}/profiles/{profile}",
            projects::delete_profile,
        ),
    ]
}

/// Every route [`api_router`] serves, as (method, path) in axum's path syntax (which
/// is also OpenAPI's): the public and user routes from the table the router is built
/// from, and the callback routes ([`sam_agent::plane::CALLBACK_PATHS`], all `POST`). Not
/// listed: the served repository ([`sam_agent::plane::SERVED_REPO_PATH`]), which speaks
/// git's smart HTTP protocol to git, not JSON.
pub fn routes() -> Vec<(Verb, &'static str)> {
    let public = public_routes().into_iter().map(|(v, p, _)| (v, p));
    let user = user_routes().into_iter().map(|(v, p, _)| (v, p));
    let callbacks = sam_agent::plane::CALLBACK_PATHS
        .into_iter()
        .chain(sam_agent::plane::GIT_PATHS)
        .map(|p| (Verb::Post, p));
    public.chain(user).chain(callbacks).collect()
}

/// The whole API: user routes (behind bearer tokens), the callback routes, a JSON
/// 404 for anything else, request ids and request logs.
pub fn api_router(state: ApiState) -> Router {
    let user = user_routes()
        .into_iter()
        .fold(Router::new(), |router, (_, path, method)| {
            router.route(path, method)
        })
        .route_layer(axum::middleware::from_fn_with_state(
            state.control_plane.clone(),
            authenticate,
        ))
        .with_state(state.clone());
    public_routes()
        .into_iter()
        .fold(Router::new(), |router, (_, path, method)| {
            router.route(path, method)
        })
        .merge(user)
        .layer(axum::Extension(state.agent_binary.clone()))
        // The git and callback routers run to completion by themselves.
        .layer(axum::middleware::from_fn(
            sam_agent::serve::run_to_completion,
        ))
        .merge(sam_agent::git_router(
            state.control_plane.clone(),
            state.github,
        ))
        .merge(sam_agent::callback_router(state.control_plane))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::extract::DefaultBodyLimit::max(
            sam_agent::serve::BODY_LIMIT,
        ))
        // Every failure is JSON, axum's own rejections included.
        .layer(axum::middleware::from_fn(sam_agent::serve::json_errors))
        .layer(axum::middleware::from_fn(request_id))
}

/// The OpenAPI description of the user routes (generated from the handlers).
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "sam-server",
        description = "The SAM control plane. User routes need `Authorization: Bearer <token>`; \
                       the VM agents' callbacks need their scoped tokens."
    ),
    paths(
        health, openapi_json, submit, list, task, cancel, events, nodes, node, catalog,
        projects::retry, projects::fork, projects::create_user, projects::get_user,
        projects::update_user, projects::setup, projects::user_credentials,
        projects::set_user_credential, projects::delete_user_credential,
        projects::list_projects, projects::create_project, projects::get_project,
        projects::update_project, projects::delete_project, projects::project_credentials,
        projects::set_project_credential, projects::delete_project_credential,
        projects::list_profiles, projects::create_profile, projects::get_profile,
        projects::update_profile, projects::delete_profile, projects::link_installation,
        projects::list_installations, projects::unlink_installation, agent_download::download,
        tokens::list_tokens, tokens::create_token, tokens::revoke_token,
    ),
    components(schemas(ErrorDoc)),
    modifiers(&BearerAuth),
)]
struct ApiDoc;

/// Declares the bearer token scheme the user routes name.
struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// The body of every failed request (the shape of [`ErrorBody`]).
#[derive(ToSchema)]
#[schema(as = ErrorBody)]
#[expect(dead_code)] // Only its schema is used: the API answers with `ErrorBody`.
pub(crate) struct ErrorDoc {
    /// One sentence, redacted.
    error: String,
    /// What kind of failure (`invalid_config`, `auth_error`, `not_found`, …).
    category: String,
    /// The request field at fault, for malformed requests.
    field: Option<String>,
}

/// The OpenAPI document `GET /v1/openapi.json` serves: every route of [`routes`],
/// the user routes from their handlers, the callback routes described here.
pub fn openapi() -> utoipa::openapi::OpenApi {
    use utoipa::openapi::path::{HttpMethod, OperationBuilder, ParameterBuilder, ParameterIn};
    use utoipa::openapi::{Required, ResponseBuilder};
    let mut doc = ApiDoc::openapi();
    for path in sam_agent::plane::CALLBACK_PATHS
        .into_iter()
        .chain(sam_agent::plane::GIT_PATHS)
    {
        let operation = OperationBuilder::new()
            .summary(Some("A VM agent's callback; needs the node's scoped token"))
            .tag("callbacks")
            .parameter(
                ParameterBuilder::new()
                    .name("id")
                    .parameter_in(ParameterIn::Path)
                    .required(Required::True),
            )
            .response("200", ResponseBuilder::new().description("Accepted"))
            .response(
                "401",
                ResponseBuilder::new().description("A missing or wrong token"),
            )
            .build();
        doc.paths
            .add_path_operation(path, vec![HttpMethod::Post], operation);
    }
    doc
}

/// The OpenAPI document of this API.
#[utoipa::path(get, path = "/v1/openapi.json", tag = "meta",
    responses((status = 200, description = "The OpenAPI 3 document", body = Object)))]
async fn openapi_json() -> axum::Json<utoipa::openapi::OpenApi> {
    axum::Json(openapi())
}

async fn require_task(cp: &ControlPlane, id: &TaskId) -> Result<TaskRecord, ApiError> {
    cp.get(id).await?.ok_or_else(|| {
        ApiError::new(
            ErrorCategory::NotFound,
            &format!("task {id} does not exist"),
        )
    })
}

static REQUESTS: AtomicU64 = AtomicU64::new(0);

/// Gives every request an id (the caller's `x-request-id`, or a new one), runs it in
/// a span carrying that id, logs its outcome, and echoes the id in the response.
async fn request_id(request: Request, next: Next) -> Response {
    let id = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 64 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map_or_else(
            || {
                format!(
                    "req-{:x}-{}",
                    std::process::id(),
                    REQUESTS.fetch_add(1, Ordering::Relaxed)
                )
            },
            str::to_owned,
        );
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let span = tracing::info_span!("request", request_id = %id, %method, %path);
    let started = Instant::now();
    let mut response = next.run(request).instrument(span.clone()).await;
    span.in_scope(|| {
        let status = response.status().as_u16();
        let elapsed_ms = started.elapsed().as_millis() as u64;
        if routine_request(&path, status) {
            tracing::debug!(status, elapsed_ms, "request");
        } else {
            tracing::info!(status, elapsed_ms, "request");
        }
    });
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}

/// Lets a request through only with a bearer token whose hash the store knows and
/// that is neither revoked nor expired; records its use (at most once a minute) and
/// hands its record to the handler ([`tokens::Authenticated`]).
async fn authenticate(
    State(cp): State<ControlPlane>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let token = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            ApiError::new(
                ErrorCategory::AuthError,
                "authentication required: send the API token in the Authorization header",
            )
        })?;
    let record = cp
        .store()
        .find_api_token(&token_hash(token))
        .await?
        .ok_or_else(|| {
            ApiError::new(
                ErrorCategory::AuthError,
                "the server does not know this API token",
            )
        })?;
    let now = Utc::now();
    record
        .check(now)
        .map_err(|refusal| ApiError::new(ErrorCategory::AuthError, &refusal.to_string()))?;
    if record.needs_touch(now)
        && let Err(e) = cp.store().touch_api_token(&record.id, now).await
    {
        tracing::warn!(token = %record.id, error = %e, "could not record the API token's use");
    }
    request
        .extensions_mut()
        .insert(tokens::Authenticated(record));
    Ok(next.run(request).await)
}

async fn not_found(request: Request) -> ApiError {
    ApiError::new(
        ErrorCategory::NotFound,
        &format!("no route for {} {}", request.method(), request.uri().path()),
    )
}

async fn method_not_allowed(request: Request) -> Response {
    let error = ApiError::new(
        ErrorCategory::InvalidConfig,
        &format!(
            "{} is not allowed on {}",
            request.method(),
            request.uri().path()
        ),
    );
    // The one answer whose status is not its category's.
    (
        StatusCode::METHOD_NOT_ALLOWED,
        axum::Json(error.body().clone()),
    )
        .into_response()
}

/// The body of `GET /v1/health`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HealthView {
    /// Always `ok` when the server answers.
    pub status: String,
    /// The server's version.
    pub version: String,
}

/// Whether the server is up.
#[utoipa::path(get, path = "/v1/health", tag = "meta",
    responses((status = 200, description = "The server answers", body = HealthView)))]
async fn health() -> axum::Json<HealthView> {
    axum::Json(HealthView {
        status: "ok".to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
    })
}

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

/// The answer to `POST /v1/tasks`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Accepted {
    /// The new task.
    pub id: String,
    /// Its status (`queued`).
    #[schema(value_type = String)]
    pub status: TaskStatus,
}

/// Submits a task.
#[utoipa::path(post, path = "/v1/tasks", tag = "tasks", security(("bearer" = [])), request_body = SubmitBody,
    responses(
        (status = 202, description = "Queued", body = Accepted),
        (status = 400, description = "A malformed body, a repository that is not allowed, a prompt holding NUL; `field` names the field", body = ErrorDoc),
        (status = 401, description = "No or an unknown API token", body = ErrorDoc),
        (status = 413, description = "A prompt over 256 KiB (`field` is `prompt`), or a body over 2 MiB", body = ErrorDoc),
    ))]
async fn submit(State(state): State<ApiState>, bytes: Bytes) -> Result<Response, ApiError> {
    let request = submit_request(&bytes)?;
    check_local_repository(&request.repo)?;
    let id = state.control_plane.submit(&request).await?;
    tracing::info!(task = %id, "task submitted");
    let accepted = Accepted {
        id: id.to_string(),
        status: TaskStatus::Queued,
    };
    Ok((StatusCode::ACCEPTED, axum::Json(accepted)).into_response())
}

/// A step with its human label.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct StepView {
    /// The step.
    #[schema(value_type = String)]
    pub step: ExecutionStep,
    /// Its label.
    pub label: String,
}

/// A task's size: requested, where that came from, provisioned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SizeView {
    /// The size asked for.
    #[schema(value_type = String)]
    pub requested: VmSize,
    /// The layer it came from (`task`, `platform`, …).
    #[schema(value_type = String)]
    pub source: Layer,
    /// The size running the task, once known.
    #[schema(value_type = Option<String>)]
    pub provisioned: Option<VmSize>,
    /// The provisioned (else requested) size as the catalog knows it.
    pub display: String,
}

/// A task's location: requested, where that came from, provisioned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LocationView {
    /// The location asked for, if any.
    #[schema(value_type = Option<String>)]
    pub requested: Option<Location>,
    /// The layer it came from.
    #[schema(value_type = String)]
    pub source: Layer,
    /// The location running the task, once known.
    #[schema(value_type = Option<String>)]
    pub provisioned: Option<Location>,
}

/// The answer to `GET /v1/tasks/{id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TaskView {
    /// The task.
    pub id: String,
    /// Its status.
    #[schema(value_type = String)]
    pub status: TaskStatus,
    /// Its current (or last) step.
    pub execution_step: StepView,
    /// The repository.
    pub repo: String,
    /// The agent.
    pub agent: String,
    /// The provider.
    #[schema(value_type = String)]
    pub provider: ProviderKind,
    /// The size.
    pub size: SizeView,
    /// The location.
    pub location: LocationView,
    /// Where each resolved setting came from.
    #[schema(value_type = Object)]
    pub provenance: BTreeMap<String, Layer>,
    /// The reservation, with each field's source.
    #[schema(value_type = Object)]
    pub reservation: Reservation,
    /// Why the task was placed where it was.
    #[schema(value_type = Option<Object>)]
    pub placement: Option<PlacementExplanation>,
    /// The node running the task.
    pub node: Option<String>,
    /// Whether that node was a warm one from an earlier task.
    pub node_reused: bool,
    /// The boot timeline of the node, when the task booted it (empty for a warm
    /// node, and until the node reported it).
    #[serde(default)]
    #[schema(value_type = Vec<Object>)]
    pub boot_timeline: Vec<BootPhaseRecord>,
    /// How many times the task moved off a node it lost (a failed boot, a VM that
    /// vanished, an agent that stopped answering).
    #[serde(default)]
    pub node_replacements: u32,
    /// What the runner noticed about where the task could run, oldest first: each
    /// attempt without capacity, each wait for capacity, a downgrade.
    #[serde(default)]
    #[schema(value_type = Vec<Object>)]
    pub notices: Vec<TaskNoticeRecord>,
    /// The workspace.
    pub workspace: Option<String>,
    /// The workspace's effective profile.
    pub workspace_profile: Option<String>,
    /// Why it failed; `null` unless failed.
    #[schema(value_type = Option<Object>)]
    pub error: Option<TaskError>,
    /// The project whose settings the task carries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// The agent profile whose settings the task carries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    /// How the agent runs (model, effort, permission mode, system-prompt addition).
    #[serde(default)]
    #[schema(value_type = Object)]
    pub agent_options: AgentOptions,
    /// Where a retried or forked task came from (parent title, task and session);
    /// absent for an original task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub source: Option<TaskSource>,
    /// What the task left in its repository (output branch, commit, pull request),
    /// once it has pushed; absent before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub output: Option<TaskOutput>,
    /// When it was submitted.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
}

impl TaskView {
    /// Describes `task`, reading its node and workspace from the store.
    ///
    /// # Errors
    /// Store failures.
    pub async fn describe(
        cp: &ControlPlane,
        catalog: &Catalog,
        task: TaskRecord,
    ) -> Result<Self, sam_core::Error> {
        let store = cp.store();
        let source = cp.source(&task).await?;
        let node = match &task.provisioned_node_id {
            Some(id) => store.get_node(id).await?,
            None => None,
        };
        let workspace = match &task.workspace_id {
            Some(id) => store.get_workspace(id).await?,
            None => None,
        };
        let notices = store.list_task_notices(&task.id).await?;
        // A claimed warm node records no provisioned size on the task: the node's is it.
        let provisioned = task.provisioned_size.or(node.as_ref().map(|n| n.size));
        let shown = provisioned.unwrap_or(task.requested_size);
        Ok(Self {
            id: task.id.to_string(),
            status: task.status,
            execution_step: StepView {
                step: task.execution_step,
                label: task.execution_step.label().to_owned(),
            },
            repo: task.spec.repo,
            agent: task.spec.agent,
            provider: task.provider,
            size: SizeView {
                requested: task.requested_size,
                source: task.size_source,
                provisioned,
                display: sam_providers::SizeDisplay::from_catalog(catalog, shown).inline(),
            },
            location: LocationView {
                requested: task.requested_location,
                source: task.location_source,
                provisioned: task
                    .provisioned_location
                    .or(node.as_ref().map(|n| n.location.clone())),
            },
            provenance: task.spec.provenance,
            reservation: task.reservation,
            placement: task.placement,
            node_reused: node
                .as_ref()
                .is_some_and(|n| n.created_for.as_ref() != Some(&task.id)),
            boot_timeline: node
                .as_ref()
                .filter(|n| n.created_for.as_ref() == Some(&task.id))
                .map(|n| n.boot.timeline.clone())
                .unwrap_or_default(),
            node_replacements: task.node_replacements,
            notices,
            node: node.map(|n| n.id.to_string()),
            workspace: task.workspace_id.map(|w| w.to_string()),
            workspace_profile: workspace.and_then(|w| w.effective_profile),
            error: task.error,
            project: task.spec.project.map(|p| p.to_string()),
            profile: task.spec.profile.map(|p| p.to_string()),
            agent_options: task.spec.agent_options,
            source,
            output: task.output,
            created_at: task.created_at,
            updated_at: task.updated_at,
        })
    }

    /// The human summary `sam status` and `sam watch` print; `last_message` is the
    /// agent's, when the caller saw it in the event stream.
    pub fn summary(&self, last_message: Option<&str>) -> String {
        let mut lines = vec![format!("Task {} {}", self.id, self.status)];
        let mut field = |name: &str, value: String| lines.push(format!("  {name:<18}{value}"));
        field(
            "step",
            format!(
                "{} ({})",
                self.execution_step.label, self.execution_step.step
            ),
        );
        field("repo", self.repo.clone());
        if let Some(node) = &self.node {
            let how = if self.node_reused {
                " (warm, reused)"
            } else {
                " (new)"
            };
            field("node", format!("{node}{how}"));
        }
        if let Some(boot) = boot_line(&self.boot_timeline) {
            field("boot", boot);
        }
        if self.node_replacements > 0 {
            field("replacements", self.node_replacements.to_string());
        }
        let mut size = format!("{} (size from {})", self.size.display, self.size.source);
        if let Some(p) = self.size.provisioned.filter(|p| *p != self.size.requested) {
            size.push_str(&format!(", {p} instead of {}", self.size.requested));
        }
        field("size", size);
        for notice in &self.notices {
            let at = notice.at.format("%H:%M:%S");
            field("notice", format!("{at} {}", notice.notice));
        }
        if let Some(profile) = &self.workspace_profile {
            field("workspace", profile.clone());
        }
        field("agent", self.agent.clone());
        if let Some(placement) = &self.placement {
            field("placement", placement.reason.clone());
        }
        for (name, value) in output_fields(self.output.as_ref()) {
            field(name, value);
        }
        if let Some(message) = last_message {
            field("last message", message.trim().to_owned());
        }
        if let Some(error) = &self.error {
            field("error", format!("{} ({})", error.message, error.category));
            if let Some(hint) = crate::quickstart::hint(error, &self.agent) {
                field("hint", hint);
            }
        }
        lines.join("\n")
    }
}

/// The summary lines of what a task left in its repository: branch, commit, pull
/// request (`sam status`, `sam watch` and `sam run` print them alike).
pub(crate) fn output_fields(output: Option<&TaskOutput>) -> Vec<(&'static str, String)> {
    let Some(output) = output else {
        return Vec::new();
    };
    let mut fields = vec![("branch", output.branch.clone())];
    if let Some(commit) = &output.commit {
        fields.push(("commit", commit.clone()));
    }
    if let Some(url) = &output.pull_request_url {
        fields.push(("pull request", url.clone()));
    }
    fields
}

/// A node's boot timeline on one line: each phase with its duration, a phase that
/// never ended marked `failed` or `unfinished`, and the total; `None` when empty.
pub fn boot_line(timeline: &[BootPhaseRecord]) -> Option<String> {
    let (first, last) = (timeline.first()?, timeline.last()?);
    let phases: Vec<String> = timeline
        .iter()
        .map(|p| match p.ended_at {
            _ if p.failed => format!("{} failed", p.phase),
            Some(end) => format!("{} {}", p.phase, seconds(end - p.started_at)),
            None => format!("{} unfinished", p.phase),
        })
        .collect();
    let end = last.ended_at.unwrap_or(last.started_at);
    Some(format!(
        "{} in {}",
        phases.join(", "),
        seconds(end - first.started_at)
    ))
}

/// A duration as seconds with one decimal (`31.5 s`).
fn seconds(d: chrono::TimeDelta) -> String {
    format!("{:.1} s", d.num_milliseconds().max(0) as f64 / 1000.0)
}

/// One task: status, step, size and location with their provenance, placement, error.
#[utoipa::path(get, path = "/v1/tasks/{id}", tag = "tasks", security(("bearer" = [])), params(("id" = String, Path, description = "The task id")),
    responses(
        (status = 200, description = "The task", body = TaskView),
        (status = 404, description = "No such task", body = ErrorDoc),
        (status = 401, description = "No or an unknown API token", body = ErrorDoc),
    ))]
async fn task(
    State(state): State<ApiState>,
    UrlPath(id): UrlPath<String>,
) -> Result<axum::Json<TaskView>, ApiError> {
    let id: TaskId = path_id(&id, "id")?;
    let task = require_task(&state.control_plane, &id).await?;
    Ok(axum::Json(
        TaskView::describe(&state.control_plane, &state.catalog, task).await?,
    ))
}

/// The answer to `GET /v1/tasks`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TaskList {
    /// The tasks, oldest first.
    pub tasks: Vec<TaskView>,
    /// The `after` cursor of the next page, when there may be one.
    pub next_after: Option<String>,
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
async fn list(
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

/// The answer to `POST /v1/tasks/{id}/cancel`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Cancelled {
    /// The task.
    pub id: String,
    /// Whether this request cancelled it (`false` when it had already ended).
    pub cancelled: bool,
    /// Its status now.
    #[schema(value_type = String)]
    pub status: TaskStatus,
}

/// Cancels a task (nothing changes when it has already ended).
#[utoipa::path(post, path = "/v1/tasks/{id}/cancel", tag = "tasks", security(("bearer" = [])), params(("id" = String, Path, description = "The task id")),
    responses(
        (status = 200, description = "The task's status now", body = Cancelled),
        (status = 404, description = "No such task", body = ErrorDoc),
        (status = 401, description = "No or an unknown API token", body = ErrorDoc),
    ))]
async fn cancel(
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

/// The SSE event of a task event: named by its `type`, the [`TaskEvent`] as data.
fn sse_event(event: &TaskEvent) -> Event {
    let name = match &event.kind {
        TaskEventKind::Step { .. } => "step",
        TaskEventKind::Status { .. } => "status",
        TaskEventKind::Downgraded { .. } => "downgraded",
        TaskEventKind::CapacityUnavailable { .. } => "capacity_unavailable",
        TaskEventKind::Session { .. } => "session",
        TaskEventKind::LastMessage { .. } => "last_message",
        TaskEventKind::NodeLost { .. } => "node_lost",
        TaskEventKind::Refused { .. } => "refused",
    };
    Event::default()
        .event(name)
        .json_data(event)
        .unwrap_or_else(|_| Event::default().event(name))
}

/// Where an event stream is.
struct Follow {
    state: ApiState,
    id: TaskId,
    events: tokio::sync::broadcast::Receiver<TaskEvent>,
    check: tokio::time::Interval,
    /// Events to send before waiting again.
    pending: std::collections::VecDeque<TaskEvent>,
    ended: bool,
}

impl Follow {
    /// Events that say where `task` is now: its step, and its status when terminal.
    fn snapshot(task: &TaskRecord) -> Vec<TaskEvent> {
        let mut events = vec![TaskEvent {
            task_id: task.id.clone(),
            at: task.updated_at,
            kind: TaskEventKind::Step {
                step: task.execution_step,
                label: task.execution_step.label().to_owned(),
            },
        }];
        if task.status.is_terminal() {
            events.push(TaskEvent {
                task_id: task.id.clone(),
                at: task.updated_at,
                kind: TaskEventKind::Status {
                    status: task.status,
                    error: task.error.clone(),
                },
            });
        }
        events
    }

    /// The next event, or `None` when the stream ends.
    async fn next(&mut self) -> Option<TaskEvent> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                if matches!(&event.kind, TaskEventKind::Status { status, .. } if status.is_terminal())
                {
                    self.ended = true;
                }
                return Some(event);
            }
            let stopping = *self.state.stopped.borrow();
            if self.ended || stopping {
                return None;
            }
            let mut stopped = self.state.stopped.clone();
            tokio::select! {
                event = self.events.recv() => match event {
                    Ok(event) if event.task_id == self.id => self.pending.push_back(event),
                    Ok(_) => {}
                    Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => return None,
                },
                // A missed terminal event (a lagging receiver, another process
                // finishing the task) still ends the stream.
                _ = self.check.tick() => match self.state.control_plane.get(&self.id).await {
                    Ok(Some(task)) if task.status.is_terminal() => {
                        self.pending.extend(Self::snapshot(&task));
                    }
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => return None,
                },
                () = async move { let _ = stopped.wait_for(|s| *s).await; } => return None,
            }
        }
    }
}

/// The task's events as server-sent events, named by their `type`; the stream ends
/// after the task's terminal status.
#[utoipa::path(get, path = "/v1/tasks/{id}/events", tag = "tasks", security(("bearer" = [])), params(("id" = String, Path, description = "The task id")),
    responses(
        (status = 200, description = "One `TaskEvent` (JSON) per event", content_type = "text/event-stream", body = String),
        (status = 404, description = "No such task", body = ErrorDoc),
        (status = 401, description = "No or an unknown API token", body = ErrorDoc),
    ))]
async fn events(
    State(state): State<ApiState>,
    UrlPath(id): UrlPath<String>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let id: TaskId = path_id(&id, "id")?;
    // Subscribe before reading, so nothing falls between the snapshot and the stream.
    let events = state.control_plane.subscribe();
    let task = require_task(&state.control_plane, &id).await?;
    let mut check = tokio::time::interval(Duration::from_secs(1));
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let follow = Follow {
        pending: Follow::snapshot(&task).into(),
        state,
        id,
        events,
        check,
        ended: false,
    };
    let stream = futures::stream::unfold(follow, |mut follow| async move {
        let event = follow.next().await?;
        Some((Ok(sse_event(&event)), follow))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

/// A node as `GET /v1/nodes` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct NodeView {
    /// The node.
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub node: NodeRecord,
    /// Its size as the catalog knows it.
    pub size_display: String,
}

/// The nodes.
#[utoipa::path(get, path = "/v1/nodes", tag = "nodes", security(("bearer" = [])),
    responses((status = 200, description = "Every node", body = Vec<NodeView>), (status = 401, description = "No or an unknown API token", body = ErrorDoc)))]
async fn nodes(State(state): State<ApiState>) -> Result<axum::Json<Vec<NodeView>>, ApiError> {
    let nodes = state
        .control_plane
        .store()
        .list_nodes(&NodeFilter::default())
        .await?;
    Ok(axum::Json(
        nodes
            .into_iter()
            .map(|node| NodeView {
                size_display: sam_providers::SizeDisplay::from_catalog(&state.catalog, node.size)
                    .inline(),
                node,
            })
            .collect(),
    ))
}

/// One node, with what it reported of its boot (`boot`: the timeline of its
/// phases, and the failing phase, exit status and journal tail of a failed boot).
#[utoipa::path(get, path = "/v1/nodes/{id}", tag = "nodes", security(("bearer" = [])), params(("id" = String, Path, description = "The node id")),
    responses(
        (status = 200, description = "The node", body = NodeView),
        (status = 404, description = "No such node", body = ErrorDoc),
        (status = 401, description = "No or an unknown API token", body = ErrorDoc),
    ))]
async fn node(
    State(state): State<ApiState>,
    UrlPath(id): UrlPath<String>,
) -> Result<axum::Json<NodeView>, ApiError> {
    let id: sam_core::NodeId = path_id(&id, "id")?;
    let node = state
        .control_plane
        .store()
        .get_node(&id)
        .await?
        .ok_or_else(|| {
            ApiError::new(
                ErrorCategory::NotFound,
                &format!("node {id} does not exist"),
            )
        })?;
    Ok(axum::Json(NodeView {
        size_display: sam_providers::SizeDisplay::from_catalog(&state.catalog, node.size).inline(),
        node,
    }))
}

/// One size of the catalog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SizeEntry {
    /// The size.
    #[schema(value_type = String)]
    pub size: VmSize,
    /// Its server type.
    pub server_type: Option<String>,
    /// One line, with the specs where the catalog knows them.
    pub display: String,
}

/// The answer to `GET /v1/catalog`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CatalogView {
    /// The provider.
    #[schema(value_type = String)]
    pub provider: ProviderKind,
    /// Its default location.
    #[schema(value_type = Option<String>)]
    pub default_location: Option<Location>,
    /// Each size and what it maps to.
    pub sizes: Vec<SizeEntry>,
    /// The full catalog.
    #[schema(value_type = Object)]
    pub catalog: Catalog,
}

impl CatalogView {
    /// The view of `catalog`.
    pub fn new(catalog: &Catalog) -> Self {
        Self {
            provider: catalog.provider,
            default_location: catalog.default_location.clone(),
            sizes: [VmSize::Small, VmSize::Medium, VmSize::Large]
                .into_iter()
                .map(|size| SizeEntry {
                    size,
                    server_type: catalog.sizes.get(&size).cloned(),
                    display: sam_providers::SizeDisplay::from_catalog(catalog, size).inline(),
                })
                .collect(),
            catalog: catalog.clone(),
        }
    }
}

/// The provider's catalog: sizes, server types, locations.
#[utoipa::path(get, path = "/v1/catalog", tag = "nodes", security(("bearer" = [])),
    responses((status = 200, description = "The catalog", body = CatalogView), (status = 401, description = "No or an unknown API token", body = ErrorDoc)))]
async fn catalog(State(state): State<ApiState>) -> axum::Json<CatalogView> {
    axum::Json(CatalogView::new(&state.catalog))
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Installs the global tracing subscriber on stderr, filtered by `RUST_LOG`
/// (default `info`).
pub fn init_logs(format: LogFormat) {
    init_logs_at(format, "info");
}

/// Installs the global tracing subscriber on stderr, filtered by `RUST_LOG`, else
/// by `default` (`info`, `debug`, `warn`, …). Text is coloured only when stderr is
/// a terminal, so a log file or a pipe gets plain lines.
pub fn init_logs_at(format: LogFormat, default: &str) {
    use std::io::IsTerminal as _;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Whether a request is routine enough to log at DEBUG rather than INFO: a node's
/// heartbeat that went through, which every node sends every few seconds.
fn routine_request(path: &str, status: u16) -> bool {
    path.starts_with("/v1/nodes/") && path.ends_with("/heartbeat") && status < 400
}

/// Runs the server until `shutdown` completes, then shuts it down gracefully.
///
/// # Errors
/// When the server cannot start.
pub async fn serve(
    options: ServerOptions,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let server = Server::start(options).await?;
    shutdown.await;
    tracing::info!("shutting down; unfinished tasks resume at the next start");
    server.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Heartbeats that went through are routine; everything else, and a refused
    /// heartbeat, is logged at INFO.
    #[test]
    fn only_accepted_heartbeats_are_routine() {
        assert!(routine_request("/v1/nodes/n-1/heartbeat", 200));
        assert!(!routine_request("/v1/nodes/n-1/heartbeat", 401));
        assert!(!routine_request("/v1/nodes/n-1/ready", 200));
        assert!(!routine_request("/v1/tasks", 202));
    }

    #[test]
    fn a_boot_timeline_reads_as_one_line() {
        let at = |ms: i64| DateTime::from_timestamp_millis(1_765_000_000_000 + ms).unwrap();
        let phase = |name: &str, start, end: Option<i64>, failed| BootPhaseRecord {
            phase: name.into(),
            started_at: at(start),
            ended_at: end.map(at),
            failed,
        };
        assert_eq!(boot_line(&[]), None);
        assert_eq!(
            boot_line(&[
                phase("swap", 0, Some(1_500), false),
                phase("packages", 1_500, Some(31_000), false),
            ])
            .as_deref(),
            Some("swap 1.5 s, packages 29.5 s in 31.0 s")
        );
        assert_eq!(
            boot_line(&[
                phase("swap", 0, Some(1_500), false),
                phase("packages", 1_500, None, true),
            ])
            .as_deref(),
            Some("swap 1.5 s, packages failed in 1.5 s")
        );
        assert_eq!(
            boot_line(&[phase("agent-start", 0, None, false)]).as_deref(),
            Some("agent-start unfinished in 0.0 s")
        );
    }

    /// Drives `id` to its end (real time, 10 ms polls).
    async fn drive(cp: &ControlPlane, id: &TaskId) -> TaskRecord {
        for _ in 0..500 {
            let task = cp.get(id).await.unwrap().unwrap();
            if task.status.is_terminal() {
                return task;
            }
            cp.tick().await.unwrap();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("{id} did not end");
    }

    #[tokio::test]
    async fn a_task_shows_the_boot_timeline_of_the_node_it_booted_only() {
        use sam_core::testkit::node_agent::{FakeAgentScript, FakeNodeAgent, PlainBoot};
        let store: Arc<dyn sam_core::Store> = Arc::new(sam_store::MemoryStore::new());
        let provider = Arc::new(sam_providers::FakeProvider::new());
        let mut config = sam_core::ControlPlaneConfig::new("t", ProviderKind::Fake);
        config.poll_interval = Duration::from_millis(10);
        let cp = ControlPlane::new(
            sam_core::ControlPlaneParts {
                store: Arc::clone(&store),
                providers: vec![Arc::clone(&provider) as Arc<dyn sam_core::Provider>],
                scheduler: Arc::new(sam_core::DefaultScheduler::new(Arc::clone(&store))),
                node_agent: Arc::new(FakeNodeAgent::new(FakeAgentScript::default())),
                boot: Arc::new(PlainBoot),
                signer: sam_core::TokenSigner::new(Secret::new("k".repeat(32)), "sam").unwrap(),
                clock: Arc::new(sam_core::TokioClock::new()),
            },
            config,
        )
        .unwrap();
        let request = SubmitRequest {
            repo: "https://example.invalid/repo.git".into(),
            prompt: "p".into(),
            ..SubmitRequest::default()
        };
        let first = drive(&cp, &cp.submit(&request).await.unwrap()).await;
        let node = first.provisioned_node_id.clone().unwrap();
        // The node's ready callback carried its timeline.
        let at = |s: i64| DateTime::from_timestamp(1_765_000_000 + s, 0).unwrap();
        let timeline = vec![
            BootPhaseRecord {
                phase: "packages".into(),
                started_at: at(0),
                ended_at: Some(at(20)),
                failed: false,
            },
            BootPhaseRecord {
                phase: "agent-start".into(),
                started_at: at(20),
                ended_at: Some(at(23)),
                failed: false,
            },
        ];
        cp.node_ready(cp.issue_node_token(&node).expose(), &node, "1.0", &timeline)
            .await
            .unwrap();
        let catalog = sam_core::Provider::catalog(provider.as_ref()).clone();
        let view = TaskView::describe(&cp, &catalog, cp.get(&first.id).await.unwrap().unwrap())
            .await
            .unwrap();
        assert_eq!(view.boot_timeline, timeline);
        let summary = view.summary(None);
        assert!(
            summary.contains("boot              packages 20.0 s, agent-start 3.0 s in 23.0 s"),
            "{summary}"
        );
        // The next task reuses the warm node: its boot is not the task's.
        let second = drive(&cp, &cp.submit(&request).await.unwrap()).await;
        assert_eq!(second.provisioned_node_id.as_ref(), Some(&node));
        let view = TaskView::describe(&cp, &catalog, second).await.unwrap();
        assert!(view.node_reused);
        assert!(view.boot_timeline.is_empty());
        assert!(!view.summary(None).contains("boot  "));
        assert!(
            view.notices.is_empty(),
            "nothing to notice: {:?}",
            view.notices
        );

        // What the runner kept is in the view and the summary, after the fact.
        let notice = sam_core::TaskNotice::Downgraded {
            requested: VmSize::Large,
            provisioned: VmSize::Medium,
        };
        store
            .add_task_notice(&first.id, at(30), &notice)
            .await
            .unwrap();
        let view = TaskView::describe(&cp, &catalog, cp.get(&first.id).await.unwrap().unwrap())
            .await
            .unwrap();
        assert_eq!(view.notices.len(), 1);
        let json = serde_json::to_value(&view).unwrap();
        assert_eq!(json["notices"][0]["type"], "downgraded", "{json}");
        assert_eq!(json["notices"][0]["seq"], 1, "{json}");
        let summary = view.summary(None);
        assert!(
            summary.contains(
                "notice            05:47:10 runs on medium instead of the large asked for"
            ),
            "{summary}"
        );
    }

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
