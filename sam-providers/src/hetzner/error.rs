//! Classification of Hetzner Cloud errors: `{"error":{"code","message","details"}}`,
//! the `error` of a failed action, and hcloud-go's rendering `<message> (<code>)`.

use sam_core::classify::Weight;
use sam_core::signal::Signal;
use sam_core::{ErrorCategory, ProviderError, ProviderKind};
use serde_json::Value;

use crate::classify::classify_with;

/// The one message under `invalid_input` that means "out of stock": SAM met it in
/// production when a location stopped offering a server type. Matched as the end
/// of the message, so a caller's prefix (`Error: …`) keeps it and a named server
/// type (`… cx99`, a type that does not exist) does not.
const UNSUPPORTED_LOCATION: &str = "unsupported location for server type";

/// Classifies a Hetzner response body (or a failed action, with `status` `None`).
pub(crate) fn classify(status: Option<u16>, body: &str) -> ProviderError {
    classify_with(ProviderKind::Hetzner, status, body, native).0
}

/// Classifies the `error` object of a failed action.
#[cfg_attr(not(feature = "hetzner"), allow(dead_code))]
pub(crate) fn classify_action_error(error: &Value) -> ProviderError {
    classify(None, &serde_json::json!({ "error": error }).to_string())
}

/// Hetzner's documented codes (and the two SAM met in production). Each names its
/// failure, so each is specific; under a 5xx only a shortage or a quota survives.
fn native(code: &Signal, message: &str) -> Option<(ErrorCategory, Weight)> {
    use ErrorCategory::*;
    let category = match code.value.as_str() {
        // Out of stock, whatever the status (Hetzner sends 412 or 422, 503 for `unavailable`).
        "resource_unavailable"
        | "unavailable"
        | "placement_error"
        | "no_space_left_in_location" => TransientCapacity,
        "invalid_input" if message.trim_end().ends_with(UNSUPPORTED_LOCATION) => TransientCapacity,
        // `server_limit_exceeded` is not in the public list, but SAM met it in production.
        "resource_limit_exceeded" | "server_limit_exceeded" => QuotaExceeded,
        "rate_limit_exceeded" | "limit_reached" => RateLimited,
        "conflict" | "locked" => Conflict,
        "unauthorized" | "forbidden" | "token_readonly" => AuthError,
        "not_found" => NotFound,
        "invalid_input"
        | "json_error"
        | "uniqueness_error"
        | "unsupported_error"
        | "protected"
        | "server_not_stopped"
        | "invalid_server_type" => InvalidConfig,
        "timeout" | "bad_gateway" | "maintenance" | "server_error" | "robot_unavailable" => {
            Transient
        }
        // Documented but meaningless to a caller: keep the code for diagnosis.
        "service_error" | "action_failed" | "deprecated_api_endpoint" | "unknown_error" => Unknown,
        _ => return None,
    };
    Some((category, Weight::Specific))
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
