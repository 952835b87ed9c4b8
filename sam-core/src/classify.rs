//! Classification of what coding agents report when their model provider fails.
//!
//! Agents relay model-provider failures as text: an ACP JSON-RPC error, often with
//! the provider's JSON body inside a message such as
//! `Internal error: API Error: 529 {"type":"error","error":{"type":"overloaded_error",…}}`.
//! [`classify_agent_error`] reads structured codes first (JSON where the text holds
//! JSON), then an HTTP status written in the text, and only then a short list of
//! narrow message patterns. [`is_agent_crash`] tells process-level failures apart.

use std::sync::LazyLock;

use regex::Regex;
use serde_json::Value;

use crate::error::ErrorCategory;

/// Classifies an error text reported by a coding agent into the SDK's taxonomy.
///
/// | reported | category |
/// |---|---|
/// | `overloaded_error`, HTTP 529, "Overloaded" | `transient_capacity` |
/// | HTTP 500/502/503/504, `api_error`, "temporarily unavailable" | `transient` |
/// | HTTP 429, `rate_limit_error`, "rate limit" | `rate_limited` |
/// | `insufficient_quota` | `quota_exceeded` |
/// | ACP `-32000`, HTTP 401/403, `authentication_error` | `auth_error` |
/// | `request_too_large`, `invalid_request_error`, HTTP 400/413 | `invalid_config` |
/// | anything else, including a bare "Internal server error" | `unknown` |
///
/// Never panics; any input yields a category.
pub fn classify_agent_error(text: &str) -> ErrorCategory {
    classify_text(text, 0)
}

/// How deep nested JSON-in-text is followed before giving up.
const MAX_DEPTH: u8 = 4;

fn classify_text(text: &str, depth: u8) -> ErrorCategory {
    if depth <= MAX_DEPTH
        && let Some(value) = first_json_object(text)
        && let Some(category) = classify_json(&value, depth)
    {
        return category;
    }
    if let Some(category) = status_in_text(text).and_then(classify_status) {
        return category;
    }
    classify_message(text).unwrap_or(ErrorCategory::Unknown)
}

/// Parses the first JSON object embedded in `text`, if any.
fn first_json_object(text: &str) -> Option<Value> {
    text.char_indices()
        .filter(|(_, c)| *c == '{')
        .take(8)
        .find_map(|(i, _)| {
            let mut stream = serde_json::Deserializer::from_str(&text[i..]).into_iter::<Value>();
            match stream.next() {
                Some(Ok(value @ Value::Object(_))) => Some(value),
                _ => None,
            }
        })
}

fn str_at<'a>(value: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter()
        .try_fold(value, |v, key| v.get(key))
        .and_then(Value::as_str)
}

/// Reads the structured parts of an error body: JSON-RPC `code`, Anthropic and
/// OpenAI `error.type`/`error.code`, Google `error.status`. `None` when nothing in it
/// decides the category.
fn classify_json(value: &Value, depth: u8) -> Option<ErrorCategory> {
    // A JSON-RPC error object may be the value itself or sit under `error`.
    let rpc = if value.get("code").is_some_and(Value::is_i64) {
        Some(value)
    } else {
        value
            .get("error")
            .filter(|e| e.get("code").is_some_and(Value::is_i64))
    };
    if let Some(rpc) = rpc {
        let code = rpc.get("code").and_then(Value::as_i64).unwrap_or_default();
        match code {
            // ACP: "Authentication required".
            -32000 => return Some(ErrorCategory::AuthError),
            // Invalid request, method not found, invalid params: never succeeds as sent.
            -32602..=-32600 => return Some(ErrorCategory::InvalidConfig),
            // A Google-style body carries the HTTP status as `error.code`.
            100..=599 => {
                if let Some(c) = google_status(rpc) {
                    return Some(c);
                }
                if let Some(c) = classify_status(code as u16) {
                    return Some(refine_weak(c, rpc));
                }
            }
            _ => {}
        }
        // Internal errors (-32603) and server errors carry the real cause in
        // `message` or `data`: classify that text.
        let inner = [rpc.get("data"), rpc.get("message")]
            .into_iter()
            .flatten()
            .map(|v| match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .map(|t| classify_text(&t, depth + 1))
            .find(|c| *c != ErrorCategory::Unknown);
        if inner.is_some() {
            return inner;
        }
    }

    // Anthropic: {"type":"error","error":{"type":"overloaded_error","message":…}}.
    // OpenAI:    {"error":{"type":"insufficient_quota","code":"insufficient_quota",…}}.
    let error = value.get("error").unwrap_or(value);
    let native = [str_at(error, &["code"]), str_at(error, &["type"])];
    for code in native.into_iter().flatten() {
        if let Some(category) = classify_native_code(code) {
            return Some(refine_weak(category, error));
        }
    }
    google_status(error)
}

/// Google APIs (Gemini): `error.status` such as `RESOURCE_EXHAUSTED`.
fn google_status(error: &Value) -> Option<ErrorCategory> {
    let status = str_at(error, &["status"])?;
    let category = match status {
        "RESOURCE_EXHAUSTED" => {
            let message = str_at(error, &["message"])
                .unwrap_or_default()
                .to_ascii_lowercase();
            if message.contains("per day") || message.contains("billing") {
                ErrorCategory::QuotaExceeded
            } else {
                ErrorCategory::RateLimited
            }
        }
        "UNAVAILABLE" | "INTERNAL" | "DEADLINE_EXCEEDED" => ErrorCategory::Transient,
        "UNAUTHENTICATED" | "PERMISSION_DENIED" => ErrorCategory::AuthError,
        "INVALID_ARGUMENT" | "FAILED_PRECONDITION" | "OUT_OF_RANGE" => ErrorCategory::InvalidConfig,
        "NOT_FOUND" => ErrorCategory::NotFound,
        "ABORTED" => ErrorCategory::Conflict,
        _ => return None,
    };
    Some(refine_weak(category, error))
}

/// Native error codes of Anthropic and OpenAI bodies.
fn classify_native_code(code: &str) -> Option<ErrorCategory> {
    Some(match code {
        "overloaded_error" | "overloaded" => ErrorCategory::TransientCapacity,
        "rate_limit_error" | "rate_limit_exceeded" | "requests" | "tokens" => {
            ErrorCategory::RateLimited
        }
        "insufficient_quota" | "billing_hard_limit_reached" => ErrorCategory::QuotaExceeded,
        "api_error" | "server_error" | "service_unavailable" | "timeout_error" => {
            ErrorCategory::Transient
        }
        "authentication_error" | "permission_error" | "invalid_api_key" | "unauthorized" => {
            ErrorCategory::AuthError
        }
        "request_too_large" | "invalid_request_error" | "context_length_exceeded" => {
            ErrorCategory::InvalidConfig
        }
        "not_found_error" | "model_not_found" => ErrorCategory::NotFound,
        _ => return None,
    })
}

/// A generic server error whose message says "overloaded" is an overload: Anthropic
/// has sent overloads as `500 api_error "Overloaded"`.
fn refine_weak(category: ErrorCategory, error: &Value) -> ErrorCategory {
    if category == ErrorCategory::Transient
        && str_at(error, &["message"])
            .is_some_and(|m| m.to_ascii_lowercase().contains("overloaded"))
    {
        ErrorCategory::TransientCapacity
    } else {
        category
    }
}

/// An HTTP status written in the text: `API Error: 529`, `HTTP 502`, `status code 429`.
fn status_in_text(text: &str) -> Option<u16> {
    static STATUS: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(r"(?i)\b(?:api error|http(?:/[0-9.]+)?|status(?: code)?|error code)\s*:?\s*([1-5][0-9]{2})\b")
            .expect("valid status regex")
    });
    STATUS
        .captures(text)
        .and_then(|c| c.get(1))
        .and_then(|m| m.as_str().parse().ok())
}

fn classify_status(status: u16) -> Option<ErrorCategory> {
    Some(match status {
        529 => ErrorCategory::TransientCapacity,
        429 => ErrorCategory::RateLimited,
        500 | 502 | 503 | 504 => ErrorCategory::Transient,
        401 | 403 => ErrorCategory::AuthError,
        400 | 413 | 422 => ErrorCategory::InvalidConfig,
        404 => ErrorCategory::NotFound,
        408 => ErrorCategory::Transient,
        409 => ErrorCategory::Conflict,
        _ => return None,
    })
}

/// The narrow fallback: phrases providers and agents use, checked last.
///
/// Deliberately absent: a bare "internal server error" or "internal error", which
/// agents also use for their own bugs (an invalid tool call payload) that no retry fixes.
fn classify_message(text: &str) -> Option<ErrorCategory> {
    const PATTERNS: &[(&str, ErrorCategory)] = &[
        ("insufficient_quota", ErrorCategory::QuotaExceeded),
        ("exceeded your current quota", ErrorCategory::QuotaExceeded),
        ("overloaded", ErrorCategory::TransientCapacity),
        ("rate limit", ErrorCategory::RateLimited),
        ("rate_limit", ErrorCategory::RateLimited),
        ("too many requests", ErrorCategory::RateLimited),
        ("temporarily unavailable", ErrorCategory::Transient),
        ("service unavailable", ErrorCategory::Transient),
        ("bad gateway", ErrorCategory::Transient),
        ("gateway timeout", ErrorCategory::Transient),
        ("authentication required", ErrorCategory::AuthError),
        ("invalid api key", ErrorCategory::AuthError),
        ("invalid x-api-key", ErrorCategory::AuthError),
        ("please run /login", ErrorCategory::AuthError),
        ("request too large", ErrorCategory::InvalidConfig),
        ("request_too_large", ErrorCategory::InvalidConfig),
        ("prompt is too long", ErrorCategory::InvalidConfig),
    ];
    let lower = text.to_ascii_lowercase();
    PATTERNS
        .iter()
        .find(|(p, _)| lower.contains(p))
        .map(|(_, c)| *c)
}

/// Whether `text` reports a process-level failure of the agent itself (its pipe or
/// connection went away) rather than an error it relayed from its model provider.
pub fn is_agent_crash(text: &str) -> bool {
    static CRASH: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(
            r"(?i)\b(?:unexpected eof|eof while|end of file|\beof\b|broken pipe|epipe|connection reset|econnreset|peer disconnected|stdin closed|stdout closed|process exited|agent process exited)",
        )
        .expect("valid crash regex")
    });
    CRASH.is_match(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ErrorCategory::*;
    use proptest::prelude::*;

    fn check(text: &str, expected: ErrorCategory) {
        assert_eq!(classify_agent_error(text), expected, "classifying {text:?}");
    }

    #[test]
    fn issue_cases() {
        check(
            r#"Internal error: API Error: 529 {"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
            TransientCapacity,
        );
        check("provider returned HTTP 502\n Bad Gateway", Transient);
        assert!(!classify_agent_error("Internal error: invalid tool call payload").is_retryable());
        assert!(!classify_agent_error("Internal server error").is_retryable());
    }

    #[test]
    fn design_table() {
        // DESIGN.md §4 and §10: SAM's agent-side table.
        check("API Error: 529 Overloaded", TransientCapacity);
        check(
            r#"API Error: 500 {"type":"error","error":{"type":"api_error","message":"Overloaded"}}"#,
            TransientCapacity,
        );
        check(
            r#"API Error: 500 {"type":"error","error":{"type":"api_error","message":"Internal server error"}}"#,
            Transient,
        );
        check(
            "upstream returned 503: service temporarily unavailable",
            Transient,
        );
        check("HTTP 504 Gateway Timeout", Transient);
        check("API Error: 429 rate limit reached", RateLimited);
        check(
            r#"{"type":"error","error":{"type":"rate_limit_error","message":"Number of requests has exceeded your rate limit"}}"#,
            RateLimited,
        );
        check(
            r#"429 {"error":{"message":"You exceeded your current quota","type":"insufficient_quota","code":"insufficient_quota"}}"#,
            QuotaExceeded,
        );
        check(
            r#"{"code":-32000,"message":"Authentication required"}"#,
            AuthError,
        );
        check(
            r#"ACP error: {"jsonrpc":"2.0","id":3,"error":{"code":-32000,"message":"Authentication required"}}"#,
            AuthError,
        );
        check(
            r#"API Error: 413 {"type":"error","error":{"type":"request_too_large","message":"Request exceeds the maximum allowed number of bytes."}}"#,
            InvalidConfig,
        );
        check("Request too large", InvalidConfig);
        check(
            r#"{"code":-32603,"message":"Internal error","data":{"details":"API Error: 529 {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}"}}"#,
            TransientCapacity,
        );
        check(r#"{"code":-32603,"message":"Internal error"}"#, Unknown);
        check(
            r#"{"error":{"code":429,"message":"Resource has been exhausted (e.g. check quota).","status":"RESOURCE_EXHAUSTED"}}"#,
            RateLimited,
        );
        check(
            r#"{"error":{"code":503,"message":"The model is overloaded. Please try again later.","status":"UNAVAILABLE"}}"#,
            TransientCapacity,
        );
        check(
            r#"{"error":{"code":401,"message":"API key not valid.","status":"UNAUTHENTICATED"}}"#,
            AuthError,
        );
        check("Invalid API key · Please run /login", AuthError);
        check("something odd happened", Unknown);
        check("", Unknown);
    }

    #[test]
    fn crashes() {
        for text in [
            "unexpected EOF",
            "read failed: EOF",
            "write: broken pipe",
            "Error: write EPIPE",
            "connection reset by peer",
            "peer disconnected",
            "stdin closed",
            "agent process exited with code 1",
        ] {
            assert!(is_agent_crash(text), "{text:?} is a crash");
        }
        for text in [
            "API Error: 529 Overloaded",
            "Authentication required",
            "geoffrey wrote this",
            "Internal server error",
        ] {
            assert!(!is_agent_crash(text), "{text:?} is not a crash");
        }
    }

    proptest! {
        #[test]
        fn total_on_any_text(text in ".{0,300}") {
            let _ = classify_agent_error(&text);
            let _ = is_agent_crash(&text);
        }

        #[test]
        fn every_5xx_status_text_is_retryable_or_capacity(status in 500u16..600) {
            let c = classify_agent_error(&format!("API Error: {status}"));
            let expected = matches!(status, 500 | 502 | 503 | 504 | 529);
            prop_assert_eq!(c != Unknown, expected, "status {} gave {:?}", status, c);
        }
    }
}
