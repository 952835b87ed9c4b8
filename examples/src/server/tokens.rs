//! User API tokens: the bootstrap token a server starts with, and the tokens an
//! admin creates, lists and revokes, with `sam-server tokens` or under `/v1/tokens`.
//!
//! A created token's value is shown once, in the answer to its creation; the store
//! keeps only its hash ([`sam_core::api_token`]).

use axum::Extension;
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use sam_agent::wire::{ApiError, parse_body};
use sam_core::{
    ApiTokenKind, ApiTokenRecord, ErrorCategory, Secret, Store, StoreErrorKind,
    check_api_token_name, hash_api_token,
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::auth::Authenticated;
use super::{ApiState, ErrorDoc};

/// How many random bytes a created token holds (shown as hex after [`TOKEN_PREFIX`]).
const TOKEN_BYTES: usize = 24;

/// What every created token starts with, so a leaked one is recognisable.
pub const TOKEN_PREFIX: &str = "sam_";

/// The longest expiry a created token may have, in days (ten years).
pub const MAX_EXPIRY_DAYS: u32 = 3650;

/// A token as `GET /v1/tokens` and `sam-server tokens list` show it: never its value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TokenView {
    /// Its id, by which it is revoked.
    pub id: String,
    /// Its name.
    pub name: String,
    /// `bootstrap` (the token the server was started with), `admin` or `user`.
    #[schema(value_type = String)]
    pub kind: ApiTokenKind,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it last let a request through (to the minute).
    pub last_used_at: Option<DateTime<Utc>>,
    /// When it stops working, if ever.
    pub expires_at: Option<DateTime<Utc>>,
    /// When it was revoked, if it was.
    pub revoked_at: Option<DateTime<Utc>>,
}

impl From<ApiTokenRecord> for TokenView {
    fn from(token: ApiTokenRecord) -> Self {
        Self {
            id: token.id,
            name: token.label,
            kind: token.kind,
            created_at: token.created_at,
            last_used_at: token.last_used_at,
            expires_at: token.expires_at,
            revoked_at: token.revoked_at,
        }
    }
}

/// The body of `POST /v1/tokens`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTokenBody {
    /// Its name (1 to 64 characters).
    pub name: String,
    /// `user` (the default) or `admin` (may manage tokens).
    #[serde(default)]
    #[schema(value_type = Option<String>, example = "user")]
    pub kind: Option<ApiTokenKind>,
    /// Days until it expires (1 to 3650); without it the token does not expire.
    #[serde(default)]
    pub expires_in_days: Option<u32>,
}

/// The answer to `POST /v1/tokens`: the record and, this once, the token itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CreatedToken {
    /// The record.
    #[serde(flatten)]
    pub record: TokenView,
    /// The token: shown only here, stored only as its hash.
    pub token: String,
}

/// A new random token value: [`TOKEN_PREFIX`] and 24 random bytes in hex.
///
/// # Errors
/// When the kernel gives no randomness.
pub fn new_token_value() -> std::io::Result<Secret> {
    let mut random = [0_u8; TOKEN_BYTES];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut random)?;
    let hex: String = random.iter().map(|b| format!("{b:02x}")).collect();
    Ok(Secret::new(format!("{TOKEN_PREFIX}{hex}")))
}

/// Makes `token` the server's bootstrap token: a different token the server was
/// started with before is revoked ([`AccountStore::rotate_bootstrap_api_token`](sam_core::AccountStore::rotate_bootstrap_api_token)).
///
/// # Errors
/// Store failures.
pub async fn register_bootstrap(
    store: &dyn Store,
    token: &Secret,
    now: DateTime<Utc>,
) -> Result<(), sam_core::StoreError> {
    let record = ApiTokenRecord::new(
        "bootstrap",
        ApiTokenKind::Bootstrap,
        &hash_api_token(token.expose()),
        now,
    );
    store.rotate_bootstrap_api_token(&record).await
}

/// Creates a token as `body` asks.
///
/// # Errors
/// `invalid_config` naming the field for a bad name, kind or expiry; store failures.
pub async fn create(
    store: &dyn Store,
    body: &CreateTokenBody,
    now: DateTime<Utc>,
) -> Result<CreatedToken, ApiError> {
    check_api_token_name(&body.name)
        .map_err(|e| ApiError::field(ErrorCategory::InvalidConfig, "name", &e))?;
    let kind = match body.kind.unwrap_or(ApiTokenKind::User) {
        ApiTokenKind::Bootstrap => {
            return Err(ApiError::field(
                ErrorCategory::InvalidConfig,
                "kind",
                "a bootstrap token is only ever the one a server starts with; create `user` or `admin`",
            ));
        }
        kind => kind,
    };
    let expires_at = match body.expires_in_days {
        None => None,
        Some(days) if (1..=MAX_EXPIRY_DAYS).contains(&days) => {
            Some(now + chrono::Duration::days(i64::from(days)))
        }
        Some(_) => {
            return Err(ApiError::field(
                ErrorCategory::InvalidConfig,
                "expires_in_days",
                &format!("must be a number of days from 1 to {MAX_EXPIRY_DAYS}"),
            ));
        }
    };
    let value = new_token_value().map_err(|e| {
        ApiError::new(
            ErrorCategory::Unknown,
            &format!("cannot read randomness for a token: {e}"),
        )
    })?;
    let record = ApiTokenRecord {
        expires_at,
        ..ApiTokenRecord::new(&body.name, kind, &hash_api_token(value.expose()), now)
    };
    store.put_api_token(&record).await?;
    Ok(CreatedToken {
        record: record.into(),
        token: value.expose().to_owned(),
    })
}

/// Every token, revoked ones included, oldest first.
///
/// # Errors
/// Store failures.
pub async fn list(store: &dyn Store) -> Result<Vec<TokenView>, ApiError> {
    Ok(store
        .list_api_tokens()
        .await?
        .into_iter()
        .map(TokenView::from)
        .collect())
}

/// Revokes the token `id` (revoking a revoked token changes nothing); returns it as
/// it is now.
///
/// # Errors
/// `not_found` for an unknown id; store failures.
pub async fn revoke(
    store: &dyn Store,
    id: &str,
    now: DateTime<Utc>,
) -> Result<TokenView, ApiError> {
    let unknown = || {
        ApiError::new(
            ErrorCategory::NotFound,
            &format!("API token {id} does not exist"),
        )
    };
    match store.revoke_api_token(id, now).await {
        Ok(_) => {}
        Err(e) if e.kind() == StoreErrorKind::NotFound => return Err(unknown()),
        Err(e) => return Err(e.into()),
    }
    store
        .list_api_tokens()
        .await?
        .into_iter()
        .find(|t| t.id == id)
        .map(TokenView::from)
        .ok_or_else(unknown)
}

/// Lets only an admin token through.
fn require_admin(caller: &Authenticated) -> Result<(), ApiError> {
    if caller.0.kind.is_admin() {
        return Ok(());
    }
    Err(ApiError::forbidden(&format!(
        "managing API tokens needs an admin token; {} is a {} token",
        caller.0.id, caller.0.kind
    )))
}

/// Every API token, revoked ones included; their values are never shown.
#[utoipa::path(get, path = "/v1/tokens", tag = "tokens", security(("bearer" = [])),
    responses(
        (status = 200, description = "Every token, oldest first", body = Vec<TokenView>),
        (status = 401, description = "No or an unknown API token", body = ErrorDoc),
        (status = 403, description = "Not an admin token", body = ErrorDoc),
    ))]
pub(super) async fn list_tokens(
    State(state): State<ApiState>,
    Extension(caller): Extension<Authenticated>,
) -> Result<axum::Json<Vec<TokenView>>, ApiError> {
    require_admin(&caller)?;
    Ok(axum::Json(
        list(state.control_plane.store().as_ref()).await?,
    ))
}

/// Creates a token; its value is in this answer only.
#[utoipa::path(post, path = "/v1/tokens", tag = "tokens", security(("bearer" = [])), request_body = CreateTokenBody,
    responses(
        (status = 201, description = "The token, shown this once", body = CreatedToken),
        (status = 400, description = "A malformed body; `field` names the field", body = ErrorDoc),
        (status = 401, description = "No or an unknown API token", body = ErrorDoc),
        (status = 403, description = "Not an admin token", body = ErrorDoc),
    ))]
pub(super) async fn create_token(
    State(state): State<ApiState>,
    Extension(caller): Extension<Authenticated>,
    bytes: Bytes,
) -> Result<Response, ApiError> {
    require_admin(&caller)?;
    let body: CreateTokenBody = parse_body(&bytes)?;
    let created = create(state.control_plane.store().as_ref(), &body, Utc::now()).await?;
    tracing::info!(token = %created.record.id, kind = %created.record.kind, by = %caller.0.id, "API token created");
    Ok((StatusCode::CREATED, axum::Json(created)).into_response())
}

/// Revokes a token: it gets `401` from then on.
#[utoipa::path(delete, path = "/v1/tokens/{id}", tag = "tokens", security(("bearer" = [])), params(("id" = String, Path, description = "The token's id")),
    responses(
        (status = 200, description = "The token, revoked", body = TokenView),
        (status = 401, description = "No or an unknown API token", body = ErrorDoc),
        (status = 403, description = "Not an admin token", body = ErrorDoc),
        (status = 404, description = "No such token", body = ErrorDoc),
    ))]
pub(super) async fn revoke_token(
    State(state): State<ApiState>,
    Extension(caller): Extension<Authenticated>,
    UrlPath(id): UrlPath<String>,
) -> Result<axum::Json<TokenView>, ApiError> {
    require_admin(&caller)?;
    let revoked = revoke(state.control_plane.store().as_ref(), &id, Utc::now()).await?;
    tracing::info!(token = %revoked.id, by = %caller.0.id, "API token revoked");
    Ok(axum::Json(revoked))
}
