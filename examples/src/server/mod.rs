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
//! - `GET /v1/tasks/{id}/events?after=<n>&limit=<n>&kind=<kinds>` → the task's
//!   transcript, a [`TranscriptPage`] of [`TaskEvent`](sam_core::TaskEvent)s; with
//!   `Accept: text/event-stream`, server-sent events, one entry each (the event's
//!   name is its `type`, its `id` the entry's number), resuming after
//!   `Last-Event-ID` and ending after the task's terminal status
//! - `GET /v1/nodes` → [`NodeView`]s
//! - `GET /v1/nodes/{id}` → one [`NodeView`], its boot timeline included
//! - `GET /v1/catalog` → [`CatalogView`]
//! - `POST /v1/tasks/{id}/retry`, `POST /v1/tasks/{id}/fork` (`{"prompt": …}`) →
//!   `202` [`Accepted`]: a new task recording its parent (`source` in its view)
//! - `POST /v1/users`, `GET`/`PUT /v1/users/{id}`, `GET /v1/users/{id}/setup`
//!   (`?project=<id>`): which of AI, cloud and repository access the user chose;
//!   `PUT /v1/users/{id}/setup` (`{"platform_ai": true, "platform_infrastructure":
//!   false}`) records the user's choice of the platform's own AI or infrastructure,
//!   which counts only while the platform offers it
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
//! - `GET /metrics`: the Prometheus metrics ([`metrics`]); it needs a token unless
//!   the server is configured with `metrics_public = true`
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
//!
//! The parts: `routes` holds the route table and the OpenAPI document built from it,
//! `auth` the bearer-token layer of the user routes, `tasks`, `follow` (the event
//! stream), `nodes`, `accounts` and [`tokens`] the handlers, `views` the JSON
//! answers, [`agent_download`] the VM agent binary; this module assembles them into
//! [`api_router`] and runs it as a [`Server`].

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use chrono::Utc;
pub use sam_agent::wire::ApiError;
use sam_agent::wire::{parse_body, path_id};
use sam_core::{
    Catalog, ControlPlane, ErrorCategory, ExternalInstallationId, GitCredential, GithubError,
    PullRequestRequest, RepoRef, RepositoryHost, Secret,
};
use tokio::sync::watch;
use tracing::Instrument as _;

use crate::embedded::{CallbackServing, Embedded, EmbeddedOptions};

mod accounts;
pub mod agent_download;
mod auth;
mod follow;
pub mod metrics;
mod nodes;
mod routes;
mod tasks;
pub mod tokens;
mod views;

pub use accounts::{InstallationView, LinkInstallationBody};
pub use auth::{Authenticated, token_hash};
pub use follow::{DEFAULT_TRANSCRIPT_PAGE, TranscriptPage};
// The route modules take `ErrorDoc` (the error schema their annotations name),
// `parse_body` and `path_id` from here, as `super::…`.
use routes::ErrorDoc;
pub use routes::{Verb, openapi, routes};
pub use tasks::{
    ForkBody, GithubBody, MAX_PAGE, SubmitBody, check_local_repository, submit_request, task_filter,
};
pub use tokens::{CreateTokenBody, CreatedToken, TokenView};
pub(crate) use views::output_fields;
pub use views::{
    Accepted, Cancelled, CatalogView, HealthView, LocationView, NodeView, SizeEntry, SizeView,
    StepView, TaskList, TaskView, boot_line,
};

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
    /// Whether [`metrics::PATH`] is served without an API token.
    pub metrics_public: bool,
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
        embedded.transcript_retention = config.transcript_retention();
        Ok(Self {
            listen: config.listen,
            public_url: config.public_url.clone(),
            api_token: config.api_token.clone(),
            embedded,
            github,
            agent_binary: delivery.and_then(|d| d.served().cloned()),
            metrics_public: config.metrics_public,
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
        let metrics = Arc::new(metrics::Metrics::new());
        embedded_options.provider_layer = Some(Arc::clone(&metrics) as _);
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
        metrics.listen(&embedded.control_plane, stopped.clone());
        let state = ApiState {
            metrics,
            metrics_public: options.metrics_public,
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
    /// The series of [`metrics::PATH`].
    pub metrics: Arc<metrics::Metrics>,
    /// Whether [`metrics::PATH`] is served without an API token.
    pub metrics_public: bool,
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

/// The whole API: user routes (behind bearer tokens), the callback routes, a JSON
/// 404 for anything else, request ids and request logs.
pub fn api_router(state: ApiState) -> Router {
    let user = routes::user_routes()
        .into_iter()
        .fold(Router::new(), |router, (_, path, method)| {
            router.route(path, method)
        })
        .route_layer(axum::middleware::from_fn_with_state(
            state.control_plane.clone(),
            auth::authenticate,
        ))
        .with_state(state.clone());
    // Scrapers call with an API token unless the operator made the metrics public.
    let mut scrape = Router::new().route(metrics::PATH, axum::routing::get(metrics::scrape));
    if !state.metrics_public {
        scrape = scrape.route_layer(axum::middleware::from_fn_with_state(
            state.control_plane.clone(),
            auth::authenticate,
        ));
    }
    let scrape = scrape.with_state((state.metrics.clone(), state.control_plane.clone()));
    let timing =
        axum::middleware::from_fn_with_state(state.metrics.clone(), metrics::time_requests);
    routes::public_routes()
        .into_iter()
        .fold(Router::new(), |router, (_, path, method)| {
            router.route(path, method)
        })
        .merge(user)
        .merge(scrape)
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
        .layer(timing)
        .layer(axum::middleware::from_fn(request_id))
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
}
