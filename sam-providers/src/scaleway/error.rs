//! Classification of Scaleway errors: `{"type","message",…}`, including the legacy
//! Instance API shapes, and the SDKs' renderings of them.

use std::time::Duration;

use sam_core::classify::Weight;
use sam_core::signal::{Signal, SignalKind};
use sam_core::{ErrorCategory, ProviderError, ProviderKind};
use serde_json::Value;

use crate::classify::{classify_with, parse};

/// Classifies a Scaleway response body.
///
/// The legacy Instance API reports quota only in the message "Quota exceeded for
/// this resource." under `invalid_request_error` (both official SDKs match it as a
/// case-insensitive substring), and a datacenter out of public IPs as "No free IP
/// address" under a 503: the generic type yields to those messages.
pub(crate) fn classify(status: Option<u16>, body: &str) -> ProviderError {
    let (error, _) = classify_with(ProviderKind::Scaleway, status, body, native);
    match reset_after(&parse(body)) {
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

/// Scaleway's `type`s. A `reason` inside a body qualifies its type (`"reason":
/// "not_found"` under `denied_authentication` is a missing key, an auth failure), so
/// only types and codes count.
fn native(kind: &Signal, _message: &str) -> Option<(ErrorCategory, Weight)> {
    use ErrorCategory::*;
    use Weight::*;
    if kind.kind == SignalKind::Reason {
        return None;
    }
    Some(match kind.value.as_str() {
        // Out of stock arrives as 412 or 503; the type decides.
        "out_of_stock" => (TransientCapacity, Specific),
        "quotas_exceeded" => (QuotaExceeded, Specific),
        "too_many_requests" => (RateLimited, Specific),
        "transient_state" | "conflict" | "locked" => (Conflict, Specific),
        "denied_authentication" | "permissions_denied" | "authorization_required" => {
            (AuthError, Specific)
        }
        "unknown_resource" | "not_found" => (NotFound, Specific),
        "invalid_arguments" | "precondition_failed" | "resource_expired" => {
            (InvalidConfig, Specific)
        }
        "invalid_request_error" => (InvalidConfig, Generic),
        _ => return None,
    })
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
