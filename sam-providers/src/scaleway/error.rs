//! Classification of Scaleway errors: `{"type","message",…}`, including the legacy
//! Instance API shapes.

use std::time::Duration;

use sam_core::{ErrorCategory, ProviderError, ProviderKind};
use serde_json::Value;

use crate::classify::{assemble, by_status, parse, plain_message, text};

/// The legacy Instance API reports quota only in this message (both official SDKs
/// match it as a case-insensitive substring).
const LEGACY_QUOTA: &str = "quota exceeded for this resource";

/// Classifies a Scaleway response body.
pub(crate) fn classify(status: Option<u16>, body: &str) -> ProviderError {
    let value = parse(body);
    let kind = text(&value, "/type");
    let message = text(&value, "/message")
        .or_else(|| text(&value, "/help_message"))
        .map_or_else(|| plain_message(body), str::to_owned);
    let category = category(status, kind, &message);
    let error = assemble(
        ProviderKind::Scaleway,
        category,
        status,
        kind,
        &message,
        body,
    );
    match reset_after(&value) {
        Some(wait) => error.with_retry_after(wait),
        None => error,
    }
}

/// `reset_seconds` of a `too_many_requests` body.
fn reset_after(value: &Value) -> Option<Duration> {
    value
        .get("reset_seconds")
        .and_then(Value::as_u64)
        .map(Duration::from_secs)
}

fn category(status: Option<u16>, kind: Option<&str>, message: &str) -> ErrorCategory {
    use ErrorCategory::*;
    match (kind, status) {
        // Out of stock arrives as 412 or 503; the type decides.
        (Some("out_of_stock"), _) => TransientCapacity,
        (_, Some(500..=599)) => Transient,
        (Some("quotas_exceeded"), _) => QuotaExceeded,
        (Some("invalid_request_error"), _)
            if message.to_ascii_lowercase().contains(LEGACY_QUOTA) =>
        {
            QuotaExceeded
        }
        (Some("too_many_requests"), _) => RateLimited,
        (Some("transient_state" | "conflict" | "locked"), _) => Conflict,
        (Some("denied_authentication" | "permissions_denied"), _) => AuthError,
        (Some("unknown_resource" | "not_found"), _) => NotFound,
        (
            Some(
                "invalid_request_error"
                | "invalid_arguments"
                | "precondition_failed"
                | "resource_expired",
            ),
            _,
        ) => InvalidConfig,
        _ => by_status(status),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ErrorCategory::*;

    fn check(status: u16, body: &str, expected: ErrorCategory) {
        assert_eq!(
            classify(Some(status), body).category(),
            expected,
            "{status} {body}"
        );
    }

    #[test]
    fn table() {
        check(
            412,
            r#"{"type":"out_of_stock","message":"DEV1-M is out of stock"}"#,
            TransientCapacity,
        );
        check(
            503,
            r#"{"type":"out_of_stock","message":"DEV1-M is out of stock"}"#,
            TransientCapacity,
        );
        check(503, r#"{"type":"invalid_arguments"}"#, Transient);
        check(
            403,
            r#"{"type":"quotas_exceeded","details":[]}"#,
            QuotaExceeded,
        );
        check(
            403,
            r#"{"type":"invalid_request_error","message":"Quota exceeded for this resource."}"#,
            QuotaExceeded,
        );
        check(
            400,
            r#"{"type":"invalid_request_error","message":"server should be running"}"#,
            InvalidConfig,
        );
        check(
            404,
            r#"{"type":"unknown_resource","message":"not found"}"#,
            NotFound,
        );
        check(
            429,
            r#"{"type":"too_many_requests","reset_seconds":13}"#,
            RateLimited,
        );
        check(409, r#"{"type":"transient_state"}"#, Conflict);
        check(401, r#"{"type":"denied_authentication"}"#, AuthError);
        check(400, "", InvalidConfig);
        check(418, "teapot", Unknown);
    }

    #[test]
    fn rate_limits_carry_the_reset() {
        let error = classify(
            Some(429),
            r#"{"type":"too_many_requests","reset_seconds":13}"#,
        );
        assert_eq!(error.retry_after(), Some(Duration::from_secs(13)));
    }
}
