//! Classification of Hetzner Cloud errors: `{"error":{"code","message","details"}}`,
//! and the `error` of a failed action.

use sam_core::{ErrorCategory, ProviderError, ProviderKind};
use serde_json::Value;

use crate::classify::{assemble, by_status, parse, plain_message, text};

/// The one message under `invalid_input` that means "out of stock": SAM met it in
/// production when a location stopped offering a server type. Matched exactly.
const UNSUPPORTED_LOCATION: &str = "unsupported location for server type";

/// Classifies a Hetzner response body (or a failed action, with `status` `None`).
pub(crate) fn classify(status: Option<u16>, body: &str) -> ProviderError {
    let value = parse(body);
    let error = error_object(&value);
    let code = error.and_then(|e| text(e, "/code"));
    let message = error
        .and_then(|e| text(e, "/message"))
        .map_or_else(|| plain_message(body), str::to_owned);
    let category = category(status, code, &message);
    assemble(
        ProviderKind::Hetzner,
        category,
        status,
        code,
        &message,
        body,
    )
}

/// Classifies the `error` object of a failed action.
#[cfg_attr(not(feature = "hetzner"), allow(dead_code))]
pub(crate) fn classify_action_error(error: &Value) -> ProviderError {
    classify(None, &serde_json::json!({ "error": error }).to_string())
}

/// The error object of an error response, an action, or the first failed action
/// of a list.
fn error_object(value: &Value) -> Option<&Value> {
    let object = |v: &'_ Value| v.is_object();
    value
        .get("error")
        .filter(|e| object(e))
        .or_else(|| value.pointer("/action/error").filter(|e| object(e)))
        .or_else(|| {
            value
                .get("actions")?
                .as_array()?
                .iter()
                .filter_map(|a| a.get("error"))
                .find(|e| object(e))
        })
}

fn category(status: Option<u16>, code: Option<&str>, message: &str) -> ErrorCategory {
    use ErrorCategory::*;
    match (code, status) {
        // Out of stock, whatever the status (Hetzner sends 412 or 422, 503 for `unavailable`).
        (Some("resource_unavailable" | "unavailable" | "placement_error"), _) => TransientCapacity,
        // Any other 5xx is a server hiccup, whatever code it carries.
        (_, Some(500..=599)) => Transient,
        (Some("invalid_input"), _) if message == UNSUPPORTED_LOCATION => TransientCapacity,
        // `server_limit_exceeded` is not in the public list, but SAM met it in production.
        (Some("resource_limit_exceeded" | "server_limit_exceeded"), _) => QuotaExceeded,
        (Some("rate_limit_exceeded"), _) => RateLimited,
        (Some("conflict" | "locked"), _) => Conflict,
        (Some("unauthorized" | "forbidden" | "token_readonly"), _) => AuthError,
        (Some("not_found"), _) => NotFound,
        (
            Some(
                "invalid_input" | "json_error" | "uniqueness_error" | "unsupported_error"
                | "protected" | "server_not_stopped",
            ),
            _,
        ) => InvalidConfig,
        (Some("timeout" | "bad_gateway" | "maintenance"), _) => Transient,
        // Documented but meaningless to a caller: keep the code for diagnosis.
        (Some("service_error" | "action_failed" | "deprecated_api_endpoint"), _) => Unknown,
        _ => by_status(status),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ErrorCategory::*;

    fn check(status: Option<u16>, body: &str, expected: ErrorCategory) {
        let error = classify(status, body);
        assert_eq!(error.category(), expected, "{status:?} {body}");
    }

    fn coded(code: &str, message: &str) -> String {
        serde_json::json!({ "error": { "code": code, "message": message, "details": {} } })
            .to_string()
    }

    #[test]
    fn table() {
        check(
            Some(412),
            &coded("resource_unavailable", "x"),
            TransientCapacity,
        );
        check(
            Some(422),
            &coded("resource_unavailable", "x"),
            TransientCapacity,
        );
        check(
            Some(503),
            &coded("resource_unavailable", "x"),
            TransientCapacity,
        );
        check(
            Some(422),
            &coded("invalid_input", UNSUPPORTED_LOCATION),
            TransientCapacity,
        );
        check(
            Some(422),
            &coded("invalid_input", "unsupported location for server type cx99"),
            InvalidConfig,
        );
        check(
            Some(400),
            &coded("invalid_input", "name is too long"),
            InvalidConfig,
        );
        check(
            Some(403),
            &coded("resource_limit_exceeded", "project limit exceeded"),
            QuotaExceeded,
        );
        check(
            Some(403),
            &coded("server_limit_exceeded", "server limit exceeded"),
            QuotaExceeded,
        );
        check(
            Some(429),
            &coded("rate_limit_exceeded", "limit"),
            RateLimited,
        );
        check(Some(409), &coded("conflict", "conflict"), Conflict);
        check(Some(423), &coded("locked", "locked"), Conflict);
        check(Some(401), &coded("unauthorized", "nope"), AuthError);
        check(Some(403), &coded("forbidden", "nope"), AuthError);
        check(Some(404), &coded("not_found", "gone"), NotFound);
        check(Some(500), &coded("invalid_input", "odd"), Transient);
        check(Some(502), "", Transient);
        check(Some(429), "", RateLimited);
        check(Some(404), "<html>Not Found</html>", NotFound);
        check(None, &coded("resource_unavailable", "x"), TransientCapacity);
        check(None, &coded("action_failed", "x"), Unknown);
        check(Some(422), &coded("some_future_code", "x"), InvalidConfig);
    }

    #[test]
    fn failed_actions_classify_like_errors() {
        let action =
            serde_json::json!({ "code": "resource_unavailable", "message": "no capacity" });
        let error = classify_action_error(&action);
        assert_eq!(error.category(), TransientCapacity);
        assert_eq!(error.status(), None);
        assert_eq!(error.provider_code(), Some("resource_unavailable"));
        assert_eq!(error.message(), "no capacity");
    }
}
