//! The shared error vocabulary: [`ErrorCategory`], the [`Classify`] trait, and the
//! small error types the traits and policies return ([`ProviderError`],
//! [`StoreError`], [`PolicyError`], [`InvalidInput`]).
//!
//! This is the base of the crate's layering: it imports only the model and the
//! secret scrubber, and every other module may import it. sam-core's one error,
//! which holds every module's, is [`crate::failure::Error`], at the top.

use std::error::Error as StdError;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::model::ProviderKind;
use crate::secret::redact;

/// What kind of failure happened, which decides what the SDK does next.
///
/// The whole taxonomy: every failure in the SDK is one of these; serialized in
/// snake_case.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorCategory {
    /// This size or location is sold out right now: try the next fallback entry.
    TransientCapacity,
    /// An account or project limit: fail fast.
    QuotaExceeded,
    /// Too many requests: retry after the provider's hint or a backoff.
    RateLimited,
    /// A server or network hiccup: retry idempotent calls.
    Transient,
    /// The resource is busy or in a transitional state: short backoff, then retry.
    Conflict,
    /// Credentials are invalid or forbidden: fail fast.
    AuthError,
    /// The resource is gone.
    NotFound,
    /// The request can never succeed as sent: fail fast.
    InvalidConfig,
    /// Nothing matched: fail, keeping the raw code and message.
    Unknown,
}

impl ErrorCategory {
    /// Every category.
    pub const ALL: [Self; 9] = [
        Self::TransientCapacity,
        Self::QuotaExceeded,
        Self::RateLimited,
        Self::Transient,
        Self::Conflict,
        Self::AuthError,
        Self::NotFound,
        Self::InvalidConfig,
        Self::Unknown,
    ];

    /// Whether the *same* request may succeed if sent again later.
    ///
    /// `TransientCapacity` is not: it moves to the next entry of the fallback plan
    /// instead, and only a full pass backs off (see [`crate::fallback`]).
    pub const fn is_retryable(self) -> bool {
        matches!(self, Self::RateLimited | Self::Transient | Self::Conflict)
    }

    /// The snake_case name, as serialized.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::TransientCapacity => "transient_capacity",
            Self::QuotaExceeded => "quota_exceeded",
            Self::RateLimited => "rate_limited",
            Self::Transient => "transient",
            Self::Conflict => "conflict",
            Self::AuthError => "auth_error",
            Self::NotFound => "not_found",
            Self::InvalidConfig => "invalid_config",
            Self::Unknown => "unknown",
        }
    }
}

impl fmt::Display for ErrorCategory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Anything that knows its [`ErrorCategory`]: the one thing retry loops need.
pub trait Classify {
    /// The category of this error.
    fn category(&self) -> ErrorCategory;

    /// How long the other side asked us to wait before trying again.
    fn retry_after(&self) -> Option<Duration> {
        None
    }
}

impl Classify for ErrorCategory {
    fn category(&self) -> ErrorCategory {
        *self
    }
}

/// A boxed cause, kept for diagnosis.
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// The most bytes of a provider's response body an error keeps.
pub const MAX_BODY_BYTES: usize = 4096;

/// Redacts secrets in `body`, then truncates it to [`MAX_BODY_BYTES`] on a character
/// boundary. Redacting first means a secret cut in half by the limit is still removed.
pub fn truncate_body(body: &str) -> String {
    let redacted = redact(body);
    let mut end = redacted.len().min(MAX_BODY_BYTES);
    while !redacted.is_char_boundary(end) {
        end -= 1;
    }
    let mut kept = redacted[..end].to_owned();
    if end < redacted.len() {
        kept.push_str("…[truncated]");
    }
    kept
}

/// A classified failure of a [`crate::Provider`] call.
///
/// Built once, at the provider's HTTP edge, from the status and body; the category
/// decides every policy above it.
#[derive(Debug)]
pub struct ProviderError {
    provider: ProviderKind,
    category: ErrorCategory,
    code: Option<String>,
    status: Option<u16>,
    message: String,
    body: Option<String>,
    retry_after: Option<Duration>,
    source: Option<BoxError>,
    cleanup: Option<Box<ProviderError>>,
}

impl ProviderError {
    /// A new error with its category and a message from the provider (or the SDK).
    pub fn new(
        provider: ProviderKind,
        category: ErrorCategory,
        message: impl Into<String>,
    ) -> Self {
        Self {
            provider,
            category,
            code: None,
            status: None,
            message: redact(&message.into()).into_owned(),
            body: None,
            retry_after: None,
            source: None,
            cleanup: None,
        }
    }

    /// With the provider's native error code (`resource_unavailable`, `out_of_stock`, …).
    pub fn with_code(mut self, code: impl Into<String>) -> Self {
        self.code = Some(code.into());
        self
    }

    /// With the HTTP status of the response.
    pub fn with_status(mut self, status: u16) -> Self {
        self.status = Some(status);
        self
    }

    /// With the raw response body, truncated to [`MAX_BODY_BYTES`] and redacted.
    pub fn with_body(mut self, body: &str) -> Self {
        self.body = Some(truncate_body(body));
        self
    }

    /// With the provider's requested wait before a retry.
    pub fn with_retry_after(mut self, retry_after: Duration) -> Self {
        self.retry_after = Some(retry_after);
        self
    }

    /// With the underlying cause (a transport error, a parse error).
    pub fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// With the failure of a cleanup that followed this error (e.g. terminating a
    /// half-created server failed too). The original error stays the primary one.
    pub fn with_cleanup_failure(mut self, cleanup: ProviderError) -> Self {
        self.cleanup = Some(Box::new(cleanup));
        self
    }

    /// Which provider failed.
    pub fn provider(&self) -> ProviderKind {
        self.provider
    }

    /// The category that decides what happens next.
    pub fn category(&self) -> ErrorCategory {
        self.category
    }

    /// The provider's native error code, if it sent one.
    pub fn provider_code(&self) -> Option<&str> {
        self.code.as_deref()
    }

    /// The HTTP status, if the error came from a response.
    pub fn status(&self) -> Option<u16> {
        self.status
    }

    /// The provider's message (redacted).
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The response body, truncated and redacted.
    pub fn body(&self) -> Option<&str> {
        self.body.as_deref()
    }

    /// How long the provider asked us to wait.
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// The failure of a cleanup attempted after this error, if any.
    pub fn cleanup_failure(&self) -> Option<&ProviderError> {
        self.cleanup.as_deref()
    }

    /// Whether the same request may succeed later.
    pub fn is_retryable(&self) -> bool {
        self.category.is_retryable()
    }
}

/// What a user can do about each category, as the second half of a message.
fn advice(category: ErrorCategory) -> &'static str {
    match category {
        ErrorCategory::TransientCapacity => {
            "the requested size or location is out of stock right now; another size or location may work"
        }
        ErrorCategory::QuotaExceeded => {
            "an account limit was reached; raise the limit with the provider or free resources"
        }
        ErrorCategory::RateLimited => "too many requests; wait and try again",
        ErrorCategory::Transient => "a temporary failure; trying again later may work",
        ErrorCategory::Conflict => "the resource is busy or changing state; try again in a moment",
        ErrorCategory::AuthError => "check the credentials and their permissions",
        ErrorCategory::NotFound => "the resource does not exist",
        ErrorCategory::InvalidConfig => "the request is invalid as sent; fix the configuration",
        ErrorCategory::Unknown => "an unrecognised error; see the code and message for details",
    }
}

impl fmt::Display for ProviderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} failed", self.provider.display_name())?;
        match (self.status, self.code.as_deref()) {
            (Some(s), Some(c)) => write!(f, " (HTTP {s}, {c})")?,
            (Some(s), None) => write!(f, " (HTTP {s})")?,
            (None, Some(c)) => write!(f, " ({c})")?,
            (None, None) => {}
        }
        if !self.message.is_empty() {
            write!(f, ": {}", self.message.trim_end_matches('.'))?;
        }
        write!(f, ": {}", advice(self.category))?;
        if let Some(cleanup) = &self.cleanup {
            write!(f, " (cleanup also failed: {})", cleanup.message)?;
        }
        Ok(())
    }
}

impl StdError for ProviderError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn StdError + 'static))
    }
}

impl Classify for ProviderError {
    fn category(&self) -> ErrorCategory {
        self.category
    }
    fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }
}

/// What went wrong in a [`crate::Store`] call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum StoreErrorKind {
    /// A row that must exist does not.
    NotFound,
    /// A row with the same key exists already, or a constraint rejected the write.
    AlreadyExists,
    /// The database is busy or unreachable right now.
    Unavailable,
    /// The database file is not a database, or is damaged.
    Corrupt,
    /// The database schema is newer than this binary knows.
    SchemaTooNew,
    /// A stored value could not be decoded (bad JSON, unknown enum name).
    InvalidData,
    /// The caller passed a value the store cannot hold.
    InvalidInput,
    /// A write under a lease the caller no longer holds ([`crate::TaskStore::write_leased`]).
    LeaseLost,
    /// Any other failure of the backend.
    Backend,
}

/// A failed [`crate::Store`] operation.
#[derive(Debug, thiserror::Error)]
#[error("store error ({kind:?}): {message}")]
pub struct StoreError {
    kind: StoreErrorKind,
    message: String,
    #[source]
    source: Option<BoxError>,
}

impl StoreError {
    /// A new error of `kind` with a message naming what failed.
    pub fn new(kind: StoreErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// With the underlying cause (a driver error).
    pub fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// What went wrong.
    pub fn kind(&self) -> StoreErrorKind {
        self.kind
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Whether the same call may succeed later.
    pub fn is_retryable(&self) -> bool {
        self.category().is_retryable()
    }
}

impl Classify for StoreError {
    fn category(&self) -> ErrorCategory {
        match self.kind {
            StoreErrorKind::NotFound => ErrorCategory::NotFound,
            StoreErrorKind::AlreadyExists => ErrorCategory::Conflict,
            StoreErrorKind::Unavailable => ErrorCategory::Transient,
            StoreErrorKind::InvalidInput => ErrorCategory::InvalidConfig,
            StoreErrorKind::LeaseLost => ErrorCategory::Conflict,
            StoreErrorKind::Corrupt
            | StoreErrorKind::SchemaTooNew
            | StoreErrorKind::InvalidData
            | StoreErrorKind::Backend => ErrorCategory::Unknown,
        }
    }
}

/// A retry or timeout policy whose values cannot work together.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {policy} policy: {field} {reason}")]
pub struct PolicyError {
    /// Which policy (`"retry"`, `"timeout"`).
    pub policy: &'static str,
    /// The field at fault.
    pub field: &'static str,
    /// What is wrong, as a sentence fragment.
    pub reason: String,
}

/// An input field out of range or inconsistent, as the policies below the control
/// plane report it (a reservation's, a project's, a boot report's).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field}: {reason}")]
pub struct InvalidInput {
    /// The field at fault.
    pub field: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

impl InvalidInput {
    /// An [`InvalidInput`] for `field`.
    pub fn new(field: &'static str, reason: impl Into<String>) -> Self {
        Self {
            field,
            reason: reason.into(),
        }
    }
}

impl Classify for InvalidInput {
    fn category(&self) -> ErrorCategory {
        ErrorCategory::InvalidConfig
    }
}

#[cfg(test)]
mod tests;
