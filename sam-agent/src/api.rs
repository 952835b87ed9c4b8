//! The VM agent's HTTP API and its callbacks to the control plane: paths, bodies,
//! tokens. The server ([`crate::server`]), its client ([`crate::HttpNodeAgent`]) and
//! the callback client ([`crate::Callbacks`]) all use these types, so they cannot
//! drift apart.
//!
//! # The agent's routes
//! | route | body | answer |
//! |---|---|---|
//! | `GET /health` | | [`AgentHealth`], without a token, as soon as the agent listens |
//! | `POST /v1/workspaces` | [`CreateWorkspace`] | `202` [`WorkspaceView`] (`200` when it exists already) |
//! | `GET /v1/workspaces/{id}` | | [`WorkspaceView`] |
//! | `DELETE /v1/workspaces/{id}` | | `204`, also for an unknown workspace |
//! | `POST /v1/workspaces/{id}/sessions` | [`StartSession`] | `202` [`SessionView`] (`200` when a session exists already) |
//! | `GET /v1/workspaces/{id}/sessions` | | [`SessionView`]; `404` without a session |
//! | `POST /v1/workspaces/{id}/cancel` | | `204` |
//! | `GET /v1/events?limit=N` | | [`AgentEvent`](crate::events::AgentEvent)s, newest first |
//! | `GET /v1/events/export` | | the event log's SQLite file after a WAL checkpoint (`application/vnd.sqlite3`); `404` with [`Storage::Memory`](crate::Storage::Memory) |
//! | `GET /v1/metrics/export` | | the metrics store's SQLite file, likewise |
//!
//! Failures answer an [`ErrorBody`] with the status of its category
//! ([`status_for`]); a malformed body names the field.
//!
//! # Management tokens
//! Every `/v1` request carries `Authorization: Bearer <token>`, a
//! [`TokenSigner`] token with audience [`MANAGEMENT_AUDIENCE`], scope `node` and the
//! node id as subject, issued for minutes ([`MANAGEMENT_TOKEN_TTL`]).
//!
//! Its HMAC key is the **node token** the agent was started with
//! ([`management_signer`]). DESIGN.md §8 allows one secret on the VM: the
//! node-scoped callback token in a root-only file. Keying management tokens with it
//! needs no second secret on the VM, and binds the key to the node: the token of one
//! node is useless against another, and it is at least as long as the 32 bytes a
//! signer requires (claims and a 256-bit signature, base64url). The control plane
//! issued that token, so it can sign management tokens without knowing anything the
//! VM does not. A token refreshed over the heartbeat replaces the *callback* token
//! only; the management key stays the token the agent started with, so the control
//! plane must keep the token it booted the node with (see
//! [`crate::NodeEndpoint::management_key`]). The alternative — giving the agent the
//! control plane's own key — would let one compromised VM forge tokens for every
//! node.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use sam_core::model::id_kind::IdKind;
use sam_core::{
    AgentHealth, AgentOptions, Classify, ErrorCategory, Id, NodeMetrics, PullRequestMode, Secret,
    SessionReport, TokenSigner, WorkspaceId, WorkspaceReport, redact,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize, Serializer};

use crate::boot::BootTimeline;
use crate::git::GitAccess;
use crate::runtime::{ProfileRequest, WorkspaceRequest};

/// The audience of management tokens (control plane → VM agent).
pub const MANAGEMENT_AUDIENCE: &str = "sam-vm-agent";

/// How long a management token the client issues lives: one request's worth.
pub const MANAGEMENT_TOKEN_TTL: Duration = Duration::from_secs(300);

/// The largest `limit` `GET /v1/events` accepts; larger ones are capped.
pub const MAX_EVENTS: usize = 1000;

/// The signer that issues and verifies a node's management tokens, keyed with the
/// node token the agent started with (see the [module docs](self)).
///
/// # Errors
/// `invalid_input` when the token is shorter than 32 bytes.
pub fn management_signer(node_token: &Secret) -> Result<TokenSigner, sam_core::Error> {
    TokenSigner::new(node_token.clone(), MANAGEMENT_AUDIENCE)
}

/// Serializes a secret where the wire needs it; only the API's bodies do this.
fn expose<S: Serializer>(secret: &Secret, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(secret.expose())
}

fn expose_option<S: Serializer>(secret: &Option<Secret>, serializer: S) -> Result<S::Ok, S::Error> {
    match secret {
        Some(s) => serializer.serialize_some(s.expose()),
        None => serializer.serialize_none(),
    }
}

/// The profile a control plane names (`full`, `lightweight`; `auto` and
/// `devcontainer` too), or `None` for a name the agent does not know.
pub fn parse_profile(name: &str) -> Option<ProfileRequest> {
    match name {
        "full" | "auto" => Some(ProfileRequest::Auto),
        "lightweight" => Some(ProfileRequest::Lightweight),
        "devcontainer" => Some(ProfileRequest::Devcontainer),
        _ => None,
    }
}

/// `POST /v1/workspaces`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateWorkspace {
    /// The workspace.
    pub id: WorkspaceId,
    /// The repository to clone (a URL or a path on the node).
    pub repo: String,
    /// `repo` is a path on the control plane's machine, which this node cannot read:
    /// clone it from (and push to) the control plane's git route for this workspace
    /// (`…/v1/workspaces/{id}/repo`) with the workspace token.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub repo_served: bool,
    /// The branch; the repository's default when absent.
    #[serde(default)]
    pub branch: Option<String>,
    /// The requested profile.
    #[serde(default)]
    pub profile: ProfileRequest,
    /// A devcontainer configuration by name.
    #[serde(default)]
    pub devcontainer: Option<String>,
    /// The workspace-scoped token for this workspace's callbacks.
    #[serde(serialize_with = "expose")]
    pub token: Secret,
    /// The branch to create after the clone, commit to and push when the turn ends.
    #[serde(default)]
    pub output_branch: Option<String>,
    /// Present when the repository is behind a GitHub installation: git asks the
    /// control plane for credentials; says whether to open a pull request.
    #[serde(default)]
    pub github: Option<PullRequestMode>,
}

impl CreateWorkspace {
    /// What the workspace runtime prepares: the repository cloned from `repo` (the
    /// request's own, or the control plane's git route for a served one) with
    /// `credentials`, how git reaches it.
    pub fn to_runtime_request(
        &self,
        repo: String,
        credentials: Option<GitAccess>,
    ) -> WorkspaceRequest {
        WorkspaceRequest {
            id: self.id.clone(),
            repo,
            branch: self.branch.clone(),
            profile: self.profile,
            devcontainer: self.devcontainer.clone(),
            output_branch: self.output_branch.clone(),
            credentials,
        }
    }
}

/// A workspace's state: the answer to `GET /v1/workspaces/{id}` and to creation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkspaceView {
    /// The workspace.
    pub id: WorkspaceId,
    /// Its state.
    pub report: WorkspaceReport,
}

/// `POST /v1/workspaces/{id}/sessions`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartSession {
    /// The agent, by a name the VM agent knows (`claude`, `codex`, …).
    pub agent: String,
    /// The prompt.
    pub prompt: String,
    /// How the agent runs (model, effort, permission mode, system-prompt addition);
    /// `None` fields leave the VM agent's defaults.
    #[serde(default)]
    pub options: AgentOptions,
    /// Environment for the agent process only: its credential.
    #[serde(default)]
    pub env: AgentEnv,
    /// The longest a prompt attempt may go without a word from the agent, in
    /// seconds; absent, the VM agent's own limit applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout_secs: Option<u64>,
}

/// Environment variables for an agent process (its credentials): sent to the VM agent
/// over its authenticated API and put in the agent's environment only; `Debug` shows
/// the names, never the values, and the VM agent neither stores nor logs them.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AgentEnv(pub BTreeMap<String, String>);

impl fmt::Debug for AgentEnv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

/// A session's state: the answer to `GET /v1/workspaces/{id}/sessions` and to
/// starting one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionView {
    /// The workspace.
    pub workspace_id: WorkspaceId,
    /// The agent.
    pub agent: String,
    /// Its state.
    pub report: SessionReport,
}

/// `GET /v1/events` query.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventsQuery {
    /// How many events, newest first; 100 by default, at most [`MAX_EVENTS`].
    #[serde(default)]
    pub limit: Option<usize>,
}

/// The body of every failed request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// One sentence, redacted.
    pub error: String,
    /// What kind of failure.
    pub category: ErrorCategory,
    /// The request field at fault, for malformed requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// A failed request: an [`ErrorBody`] answered with the status of its category
/// ([`status_for`]). Every server of the SDK (the VM agent's, the control plane's
/// callback routes and `sam-server`) answers failures with this one type, so the
/// body and the status cannot drift apart between them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    body: ErrorBody,
    /// The status when it is not the category's: `413` for a field over its size
    /// limit, `403` for a known caller that may not do this.
    status: Option<u16>,
}

impl ApiError {
    /// A failure of `category`; the message is redacted.
    pub fn new(category: ErrorCategory, message: &str) -> Self {
        Self {
            body: ErrorBody {
                error: redact(message).into_owned(),
                category,
                field: None,
            },
            status: None,
        }
    }

    /// A field over its size limit: `invalid_config` (sending it again cannot
    /// work), answered `413`.
    pub fn too_large(field: &str, message: &str) -> Self {
        let mut error = Self::field(ErrorCategory::InvalidConfig, field, message);
        error.status = Some(413);
        error
    }

    /// A caller who is known but may not do this: `auth_error`, answered `403`.
    pub fn forbidden(message: &str) -> Self {
        let mut error = Self::new(ErrorCategory::AuthError, message);
        error.status = Some(403);
        error
    }

    /// A failure of `category` that names the request field at fault.
    pub fn field(category: ErrorCategory, field: &str, message: &str) -> Self {
        let mut error = Self::new(category, message);
        error.body.field = Some(field.to_owned());
        error
    }

    /// A failure carrying the category and message of a classified error.
    pub fn classified<E: Classify + fmt::Display + ?Sized>(error: &E) -> Self {
        Self::new(error.category(), &error.to_string())
    }

    /// The HTTP status the error is answered with.
    pub fn status(&self) -> u16 {
        self.status
            .unwrap_or_else(|| status_for(self.body.category))
    }

    /// The JSON body the error is answered with.
    pub fn body(&self) -> &ErrorBody {
        &self.body
    }
}

impl From<sam_core::Error> for ApiError {
    fn from(error: sam_core::Error) -> Self {
        match &error {
            sam_core::Error::InvalidInput { field, .. } => {
                Self::field(error.category(), field, &error.to_string())
            }
            sam_core::Error::TooLarge { field, .. } => Self::too_large(field, &error.to_string()),
            _ => Self::classified(&error),
        }
    }
}

impl From<sam_core::StoreError> for ApiError {
    fn from(error: sam_core::StoreError) -> Self {
        sam_core::Error::from(error).into()
    }
}

impl From<sam_core::GithubError> for ApiError {
    fn from(error: sam_core::GithubError) -> Self {
        Self::classified(&error)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, axum::Json(self.body)).into_response()
    }
}

/// Parses a JSON request body. A malformed one is `invalid_config` naming the field
/// at fault: the path to a bad value, or the name of a missing or unknown field;
/// trailing data after the value is refused too.
///
/// # Errors
/// The [`ApiError`] to answer.
pub fn parse_body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let deserializer = &mut serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut *deserializer).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let message = inner.to_string();
        // Missing and unknown fields are reported at the parent: their name is in
        // the message, between backticks.
        let field = if inner.is_syntax() || inner.is_eof() {
            None
        } else if path == "." || path == "?" {
            message.split('`').nth(1).map(ToOwned::to_owned)
        } else {
            Some(path)
        };
        let mut error = ApiError::new(
            ErrorCategory::InvalidConfig,
            &format!("malformed request body: {message}"),
        );
        error.body.field = field;
        error
    })?;
    deserializer.end().map_err(|e| {
        ApiError::new(
            ErrorCategory::InvalidConfig,
            &format!("malformed request body: {e}"),
        )
    })?;
    Ok(value)
}

/// An id from a request path; a bad one is `invalid_config` naming `field`.
///
/// # Errors
/// The [`ApiError`] to answer.
pub fn path_id<K: IdKind>(raw: &str, field: &str) -> Result<Id<K>, ApiError> {
    Id::new(raw).map_err(|e| ApiError::field(ErrorCategory::InvalidConfig, field, &e.to_string()))
}

/// Middleware for every route that changes state: runs the rest of the request in
/// its own task and answers when it ends.
///
/// hyper drops a handler's future when its connection closes, so without this a
/// caller that goes away (a killed process, a client timeout, a VM agent that
/// aborts its callback sender) cuts the handler at whatever `.await` it reached:
/// a task made terminal but its workspace never stopped and its node never returned
/// to the warm pool, or a workspace entry never given its preparation. With it, the
/// work runs to its end and only the answer is lost; the callers retry idempotently.
///
/// ```
/// use axum::{Router, middleware, routing::post};
///
/// let router: Router = Router::new()
///     .route("/v1/things", post(|| async { "made" }))
///     .layer(middleware::from_fn(sam_agent::api::run_to_completion));
/// ```
pub async fn run_to_completion(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    match tokio::spawn(next.run(request)).await {
        Ok(response) => response,
        Err(e) => ApiError::new(
            ErrorCategory::Unknown,
            &format!("the request's handler did not finish: {e}"),
        )
        .into_response(),
    }
}

/// The largest request body either server reads (2 MiB); a larger one is answered
/// `413` with an [`ErrorBody`]. Routes with smaller limits of their own (a task's
/// prompt) check them after reading.
pub const BODY_LIMIT: usize = 2 * 1024 * 1024;

/// Middleware for every server of the SDK: a failure answered without a JSON body
/// (axum's own rejections: a body over [`BODY_LIMIT`], a path segment that does not
/// decode such as `%FF`, a query or body it cannot read) is answered as an
/// [`ErrorBody`] with the same status, its text as the message.
///
/// The failures hyper answers itself, before any route (a URL over 64 KiB, headers
/// too large), are rewritten by [`crate::listener::JsonErrorListener`].
pub async fn json_errors(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) || is_json(&response) {
        return response;
    }
    let (parts, body) = response.into_parts();
    // A rejection's text is one line; anything longer is cut.
    let text = axum::body::to_bytes(body, 4096)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
        .unwrap_or_default();
    let message = if text.is_empty() {
        status
            .canonical_reason()
            .unwrap_or("the request failed")
            .to_owned()
    } else {
        text
    };
    let error = ApiError::new(classify_status(status.as_u16()), &message);
    let mut answer = (status, axum::Json(error.body)).into_response();
    for (name, value) in &parts.headers {
        if name != axum::http::header::CONTENT_TYPE && name != axum::http::header::CONTENT_LENGTH {
            answer.headers_mut().append(name, value.clone());
        }
    }
    answer
}

fn is_json(response: &Response) -> bool {
    response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"))
}

/// The HTTP status that answers a failure of `category`.
pub fn status_for(category: ErrorCategory) -> u16 {
    match category {
        ErrorCategory::InvalidConfig => 400,
        ErrorCategory::AuthError => 401,
        ErrorCategory::NotFound => 404,
        ErrorCategory::Conflict => 409,
        ErrorCategory::QuotaExceeded | ErrorCategory::RateLimited => 429,
        ErrorCategory::Transient | ErrorCategory::TransientCapacity => 503,
        _ => 500,
    }
}

/// The category of an HTTP failure status, for both clients: 401 and 403 are
/// `auth_error`, 404 `not_found`, every other 4xx `invalid_config` (permanent: the
/// same request will fail again), 5xx and anything else `transient`.
///
/// A 429 is permanent here too, as the agent's issue asks of callbacks: the control
/// plane does not rate-limit its own nodes, so a 429 means a misrouted request.
pub fn classify_status(status: u16) -> ErrorCategory {
    match status {
        401 | 403 => ErrorCategory::AuthError,
        404 => ErrorCategory::NotFound,
        400..=499 => ErrorCategory::InvalidConfig,
        _ => ErrorCategory::Transient,
    }
}

/// `POST /v1/nodes/{id}/ready` (agent → control plane).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeReady {
    /// The agent's version.
    pub version: String,
    /// Where the node's boot time went.
    pub boot: BootTimeline,
}

/// The `event` of a [`BootFailed`] body.
pub const BOOT_FAILED_EVENT: &str = "boot_failed";

/// `POST /v1/nodes/{id}/boot-failed` (a node's boot script → control plane): the
/// body `report-boot-failure.sh` posts when a boot phase fails.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootFailed {
    /// Always [`BOOT_FAILED_EVENT`].
    pub event: String,
    /// The phase that failed.
    pub phase: String,
    /// The exit status of its failing command.
    pub exit_status: i32,
    /// The boot's markers as `journalctl -o json` prints them, one object each
    /// (empty on a node without a journal).
    #[serde(default)]
    pub journal: Vec<serde_json::Value>,
}

impl BootFailed {
    /// The report the control plane keeps: the journal's messages (an entry
    /// without a text message is kept as its JSON) and the timeline read from the
    /// journal with the VM agent's own parser.
    ///
    /// # Errors
    /// `invalid_config` (field `event`) for an event other than [`BOOT_FAILED_EVENT`].
    pub fn to_report(&self) -> Result<sam_core::BootFailureReport, ApiError> {
        if self.event != BOOT_FAILED_EVENT {
            let mut error = ApiError::new(
                ErrorCategory::InvalidConfig,
                &format!(
                    "the event must be {BOOT_FAILED_EVENT:?}, not {:?}",
                    self.event.chars().take(64).collect::<String>()
                ),
            );
            error.body.field = Some("event".to_owned());
            return Err(error);
        }
        let lines: Vec<String> = self.journal.iter().map(ToString::to_string).collect();
        let timeline = BootTimeline::from_journal_json(&lines.join("\n"));
        Ok(sam_core::BootFailureReport {
            phase: self.phase.clone(),
            exit_status: self.exit_status,
            journal: self
                .journal
                .iter()
                .map(|entry| match entry.get("MESSAGE") {
                    Some(serde_json::Value::String(message)) => message.clone(),
                    _ => entry.to_string(),
                })
                .collect(),
            timeline: timeline.to_records(),
        })
    }
}

/// `POST /v1/nodes/{id}/heartbeat` (agent → control plane).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// The node's resource use.
    pub metrics: NodeMetrics,
}

/// The control plane's answer to a heartbeat.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HeartbeatResponse {
    /// A fresh node token when the current one is past half its life; it replaces
    /// the token the agent's callbacks carry.
    #[serde(default, serialize_with = "expose_option")]
    pub refreshed_token: Option<Secret>,
}

/// The agent's health, re-exported for the API's users.
pub type Health = AgentHealth;

#[cfg(test)]
mod tests {
    use super::*;

    /// A handler whose caller hangs up while it works.
    async fn hang_up_midway(layered: bool) -> bool {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, Ordering};
        use tokio::io::AsyncWriteExt as _;

        let entered = Arc::new(tokio::sync::Notify::new());
        let done = Arc::new(AtomicBool::new(false));
        let (e, d) = (Arc::clone(&entered), Arc::clone(&done));
        let mut router = axum::Router::new().route(
            "/work",
            axum::routing::post(move || async move {
                e.notify_one();
                tokio::time::sleep(Duration::from_millis(500)).await;
                d.store(true, Ordering::SeqCst);
                "done"
            }),
        );
        if layered {
            router = router.layer(axum::middleware::from_fn(run_to_completion));
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let server = tokio::spawn(async move { axum::serve(listener, router).await });
        let mut caller = tokio::net::TcpStream::connect(address).await.unwrap();
        caller
            .write_all(b"POST /work HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n")
            .await
            .unwrap();
        entered.notified().await;
        drop(caller);
        tokio::time::sleep(Duration::from_millis(1200)).await;
        server.abort();
        done.load(Ordering::SeqCst)
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_handler_runs_to_its_end_when_the_caller_hangs_up() {
        assert!(hang_up_midway(true).await, "the work finished");
        // Without the layer hyper drops the handler with the connection: what the
        // layer is for.
        assert!(!hang_up_midway(false).await, "cut short without the layer");
    }

    #[test]
    fn status_classification_table() {
        for (status, category) in [
            (400, ErrorCategory::InvalidConfig),
            (401, ErrorCategory::AuthError),
            (403, ErrorCategory::AuthError),
            (404, ErrorCategory::NotFound),
            (409, ErrorCategory::InvalidConfig),
            (422, ErrorCategory::InvalidConfig),
            (429, ErrorCategory::InvalidConfig),
            (500, ErrorCategory::Transient),
            (502, ErrorCategory::Transient),
            (503, ErrorCategory::Transient),
        ] {
            assert_eq!(classify_status(status), category, "status {status}");
            assert!(
                (status >= 500) == category.is_retryable(),
                "4xx is permanent, 5xx is retried: {status}"
            );
        }
    }

    #[test]
    fn statuses_match_their_categories() {
        for category in [
            ErrorCategory::InvalidConfig,
            ErrorCategory::AuthError,
            ErrorCategory::NotFound,
        ] {
            assert_eq!(classify_status(status_for(category)), category);
        }
        assert!(classify_status(status_for(ErrorCategory::Transient)).is_retryable());
    }

    #[test]
    fn secrets_go_on_the_wire_only_in_their_field() {
        let body = CreateWorkspace {
            id: WorkspaceId::new("ws-1").unwrap(),
            repo: "/srv/repo".to_owned(),
            repo_served: false,
            branch: None,
            profile: ProfileRequest::Auto,
            devcontainer: None,
            token: Secret::new("the-workspace-token"),
            output_branch: Some("sam/fix-1".to_owned()),
            github: Some(PullRequestMode::Open),
        };
        let json = serde_json::to_value(&body).unwrap();
        assert_eq!(json["token"], "the-workspace-token");
        assert!(!format!("{body:?}").contains("the-workspace-token"));
        let back: CreateWorkspace = serde_json::from_value(json).unwrap();
        assert_eq!(back, body);

        let reply = HeartbeatResponse {
            refreshed_token: Some(Secret::new("fresh")),
        };
        let json = serde_json::to_string(&reply).unwrap();
        assert_eq!(json, r#"{"refreshed_token":"fresh"}"#);
        assert_eq!(
            serde_json::from_str::<HeartbeatResponse>("{}").unwrap(),
            HeartbeatResponse::default()
        );
    }

    #[test]
    fn profile_names() {
        assert_eq!(parse_profile("full"), Some(ProfileRequest::Auto));
        assert_eq!(
            parse_profile("lightweight"),
            Some(ProfileRequest::Lightweight)
        );
        assert_eq!(parse_profile("huge"), None);
    }
}
