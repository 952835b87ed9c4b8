//! Classification of Google Compute Engine errors: synchronous
//! `{"error":{"code","message","status","errors":[{"reason"}]}}`, OAuth
//! `{"error":"invalid_grant"}`, plain text, and the `error` of an Operation.

use sam_core::{ErrorCategory, ProviderError, ProviderKind};
use serde_json::Value;

use crate::classify::{assemble, by_status, parse, plain_message, text};

/// Classifies a GCP response body.
pub(crate) fn classify(status: Option<u16>, body: &str) -> ProviderError {
    let value = parse(body);
    let (code, message) = match value.get("error") {
        Some(error @ Value::Object(_)) => (
            text(error, "/errors/0/reason")
                .or_else(|| text(error, "/errors/0/code"))
                .or_else(|| text(error, "/status")),
            text(error, "/message").or_else(|| text(error, "/errors/0/message")),
        ),
        // OAuth token endpoint: `error` is a string.
        Some(Value::String(code)) => (Some(code.as_str()), text(&value, "/error_description")),
        _ => (None, None),
    };
    let message = message.map_or_else(|| plain_message(body), str::to_owned);
    let category = category(status, code, &message);
    assemble(ProviderKind::Gcp, category, status, code, &message, body)
}

/// Classifies the `error` of a finished Operation, with its `httpErrorStatusCode`.
#[cfg_attr(not(feature = "gcp"), allow(dead_code))]
pub(crate) fn classify_operation_error(status: Option<u16>, error: &Value) -> ProviderError {
    classify(status, &serde_json::json!({ "error": error }).to_string())
}

/// Whether a message names a quota with a per-minute window (a rate limit).
fn per_minute(message: &str) -> bool {
    message.to_ascii_lowercase().contains("per minute")
}

fn category(status: Option<u16>, code: Option<&str>, message: &str) -> ErrorCategory {
    use ErrorCategory::*;
    match (code, status) {
        (Some("ZONE_RESOURCE_POOL_EXHAUSTED" | "ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS"), _) => {
            TransientCapacity
        }
        (_, Some(500..=599)) => Transient,
        (
            Some(
                "CONCURRENT_OPERATIONS_QUOTA_EXCEEDED"
                | "rateLimitExceeded"
                | "userRateLimitExceeded"
                | "RESOURCE_EXHAUSTED",
            ),
            _,
        ) => RateLimited,
        (Some("QUOTA_EXCEEDED" | "quotaExceeded"), _) if per_minute(message) => RateLimited,
        (Some("QUOTA_EXCEEDED" | "quotaExceeded" | "dailyLimitExceeded"), _) => QuotaExceeded,
        (Some("notFound" | "NOT_FOUND" | "RESOURCE_NOT_FOUND"), _) => NotFound,
        (
            Some(
                "UNAUTHENTICATED"
                | "PERMISSION_DENIED"
                | "authError"
                | "forbidden"
                | "insufficientPermissions"
                | "keyInvalid"
                | "invalid_token"
                | "invalid_grant"
                | "invalid_client"
                | "unauthorized_client",
            ),
            _,
        ) => AuthError,
        (
            Some(
                "resourceNotReady"
                | "RESOURCE_NOT_READY"
                | "resourceInUseByAnotherResource"
                | "ABORTED",
            ),
            _,
        ) => Conflict,
        (
            Some(
                "alreadyExists"
                | "ALREADY_EXISTS"
                | "invalid"
                | "INVALID_ARGUMENT"
                | "badRequest"
                | "required"
                | "invalidParameter"
                | "FAILED_PRECONDITION",
            ),
            _,
        ) => InvalidConfig,
        (Some("UNAVAILABLE" | "DEADLINE_EXCEEDED" | "INTERNAL" | "backendError"), _) => Transient,
        // Plain-text quota errors (terraform-provider-google's predicate): the window
        // in the limit name decides between a rate limit and a quota.
        (_, Some(403 | 429)) if message.starts_with("Quota exceeded") && per_minute(message) => {
            RateLimited
        }
        (_, Some(403 | 429)) if message.starts_with("Quota exceeded") => QuotaExceeded,
        _ => by_status(status),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ErrorCategory::*;

    fn check(status: Option<u16>, body: &str, expected: ErrorCategory) {
        assert_eq!(
            classify(status, body).category(),
            expected,
            "{status:?} {body}"
        );
    }

    fn google(code: u16, status: &str, reason: &str, message: &str) -> String {
        serde_json::json!({ "error": {
            "code": code, "message": message, "status": status,
            "errors": [{ "reason": reason, "message": message, "domain": "global" }],
        }})
        .to_string()
    }

    #[test]
    fn table() {
        let per_minute = "Quota exceeded for quota metric 'Queries' and limit 'Queries per minute'";
        let per_day = "Quota exceeded for quota metric 'Queries' and limit 'Queries per day'";
        check(
            Some(403),
            &google(403, "PERMISSION_DENIED", "rateLimitExceeded", per_minute),
            RateLimited,
        );
        check(
            Some(403),
            &google(403, "PERMISSION_DENIED", "quotaExceeded", per_minute),
            RateLimited,
        );
        check(
            Some(403),
            &google(403, "PERMISSION_DENIED", "quotaExceeded", per_day),
            QuotaExceeded,
        );
        check(Some(403), per_minute, RateLimited);
        check(Some(403), per_day, QuotaExceeded);
        check(
            Some(404),
            &google(404, "NOT_FOUND", "notFound", "gone"),
            NotFound,
        );
        check(
            Some(409),
            &google(409, "ALREADY_EXISTS", "alreadyExists", "exists"),
            InvalidConfig,
        );
        check(
            Some(401),
            &google(401, "UNAUTHENTICATED", "authError", "bad token"),
            AuthError,
        );
        check(
            Some(400),
            r#"{"error":"invalid_grant","error_description":"Invalid JWT"}"#,
            AuthError,
        );
        check(
            Some(429),
            &google(429, "RESOURCE_EXHAUSTED", "", "slow"),
            RateLimited,
        );
        check(
            Some(503),
            &google(503, "UNAVAILABLE", "backendError", "x"),
            Transient,
        );
        check(
            Some(400),
            &google(400, "INVALID_ARGUMENT", "invalid", "bad"),
            InvalidConfig,
        );
    }

    #[test]
    fn operation_errors() {
        let op = |code: &str| serde_json::json!({ "errors": [{ "code": code, "message": "m" }] });
        let check_op = |status, code: &str, expected| {
            assert_eq!(
                classify_operation_error(status, &op(code)).category(),
                expected,
                "{code}"
            );
        };
        check_op(Some(503), "ZONE_RESOURCE_POOL_EXHAUSTED", TransientCapacity);
        check_op(
            None,
            "ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS",
            TransientCapacity,
        );
        check_op(Some(403), "QUOTA_EXCEEDED", QuotaExceeded);
        check_op(None, "CONCURRENT_OPERATIONS_QUOTA_EXCEEDED", RateLimited);
        check_op(None, "SOMETHING_NEW", Unknown);
    }
}
