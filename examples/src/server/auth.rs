//! Authentication of the user routes: the layer that lets a request through only
//! with a bearer token the store knows, and the token record it hands the handler.

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::Response;
use chrono::Utc;
use sam_core::{ApiTokenRecord, ControlPlane, ErrorCategory};

use super::ApiError;

/// The token a request was let through with (set by the authentication layer).
#[derive(Debug, Clone)]
pub struct Authenticated(pub ApiTokenRecord);

/// The hex SHA-256 of an API token: the only form in which tokens are stored
/// ([`sam_core::hash_api_token`]).
pub fn token_hash(token: &str) -> String {
    sam_core::hash_api_token(token)
}

/// Lets a request through only with a bearer token whose hash the store knows and
/// that is neither revoked nor expired; records its use (at most once a minute) and
/// hands its record to the handler ([`Authenticated`]).
pub(super) async fn authenticate(
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
    request.extensions_mut().insert(Authenticated(record));
    Ok(next.run(request).await)
}
