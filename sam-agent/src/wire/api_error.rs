//! The body and status of every failed request: [`ApiError`] and its
//! [`ErrorBody`]. Every server of the SDK (the VM agent's, the control plane's
//! callback routes and `sam-server`) answers failures with this one type, and both
//! clients classify a failure status with [`classify_status`].

use std::fmt;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use sam_core::model::id_kind::IdKind;
use sam_core::{Classify, ErrorCategory, Id, redact};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
