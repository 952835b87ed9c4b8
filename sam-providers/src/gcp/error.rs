//! Classification of Google Compute Engine errors: synchronous
//! `{"error":{"code","message","status","errors":[{"reason"}]}}`, OAuth
//! `{"error":"invalid_grant"}`, plain text, the `error` of an Operation, and the
//! client renderings of them (`googleapi: Error 403: …, rateLimitExceeded`, gcloud's
//! YAML, a Python client's `503 SERVICE UNAVAILABLE ZONE_RESOURCE_POOL_EXHAUSTED…`).

use sam_core::classify::{Weight, names_daily_window, names_short_window, quota_category};
use sam_core::{ErrorCategory, ProviderError, ProviderKind};
use serde_json::Value;

use crate::classify::classify_with;

/// Classifies a GCP response body.
pub(crate) fn classify(status: Option<u16>, body: &str) -> ProviderError {
    classify_with(ProviderKind::Gcp, status, body, |code, _| {
        native(&code.value, body)
    })
    .0
}

/// Classifies the `error` of a finished Operation, with its `httpErrorStatusCode`.
#[cfg_attr(not(feature = "gcp"), allow(dead_code))]
pub(crate) fn classify_operation_error(status: Option<u16>, error: &Value) -> ProviderError {
    classify(status, &serde_json::json!({ "error": error }).to_string())
}

/// Google's reasons and codes are specific; its canonical statuses
/// (`PERMISSION_DENIED`, `RESOURCE_EXHAUSTED`, …) are generic, so "Quota limit
/// 'InstancesPerProjectPerRegion' has been exceeded" under `RESOURCE_EXHAUSTED` is a
/// quota and a per-minute quota under `PERMISSION_DENIED` a rate limit.
fn native(code: &str, text: &str) -> Option<(ErrorCategory, Weight)> {
    use ErrorCategory::*;
    use Weight::*;
    Some(match code {
        "ZONE_RESOURCE_POOL_EXHAUSTED"
        | "ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS"
        | "resource_availability" => (TransientCapacity, Specific),
        "QUOTA_EXCEEDED" | "quotaExceeded" => (quota_category(text), Specific),
        "CONCURRENT_OPERATIONS_QUOTA_EXCEEDED" | "rateLimitExceeded" | "userRateLimitExceeded" => {
            (RateLimited, Specific)
        }
        "dailyLimitExceeded" => (QuotaExceeded, Specific),
        "RESOURCE_EXHAUSTED" if names_daily_window(text) && !names_short_window(text) => {
            (QuotaExceeded, Generic)
        }
        "RESOURCE_EXHAUSTED" => (RateLimited, Generic),
        "notFound" | "RESOURCE_NOT_FOUND" => (NotFound, Specific),
        "NOT_FOUND" => (NotFound, Generic),
        "UNAUTHENTICATED"
        | "authError"
        | "keyInvalid"
        | "invalid_token"
        | "invalid_grant"
        | "invalid_client"
        | "unauthorized_client" => (AuthError, Specific),
        "PERMISSION_DENIED" | "forbidden" | "insufficientPermissions" => (AuthError, Generic),
        "accessNotConfigured" | "SERVICE_DISABLED" => (InvalidConfig, Specific),
        "resourceNotReady" | "RESOURCE_NOT_READY" | "resourceInUseByAnotherResource" => {
            (Conflict, Specific)
        }
        "ABORTED" => (Conflict, Generic),
        "alreadyExists" | "ALREADY_EXISTS" | "invalid" | "badRequest" | "required"
        | "invalidParameter" => (InvalidConfig, Specific),
        "INVALID_ARGUMENT" | "FAILED_PRECONDITION" => (InvalidConfig, Generic),
        "backendError" => (Transient, Specific),
        "UNAVAILABLE" | "DEADLINE_EXCEEDED" | "INTERNAL" => (Transient, Generic),
        _ => return None,
    })
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
