//! Classification of errors as they really reach us, on both sides of the SDK.
//!
//! Agents relay model-provider failures as text: an ACP JSON-RPC error, often with
//! the provider's body inside a message such as
//! `Internal error: API Error: 529 {"type":"error","error":{"type":"overloaded_error",…}}`,
//! a Python client's repr of the body, or a network failure (`Cannot connect to API:
//! connect ECONNREFUSED`). Providers answer with bodies that SDKs, CLIs and proxies
//! may have rendered again.
//!
//! Every classifier here and in the providers reads the native signals that
//! [`crate::signal::extract`] found, then [`decide`]s in one order: a specific native
//! code first; then a specific message ("overloaded", "no free IP", "request too
//! large", "quota … exceeded"); then a generic native code (`RESOURCE_EXHAUSTED`,
//! `api_error`, `invalid_request_error`); then the HTTP status; and only when nothing
//! else speaks, a narrow list of phrases (network failures, "invalid API key").
//! [`is_agent_crash`] tells process-level failures apart.

use std::sync::LazyLock;

use regex::Regex;

use crate::error::ErrorCategory;
use crate::signal::{Signal, Signals, extract};

/// How much a native code says on its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Weight {
    /// It names the failure (`overloaded_error`, `rateLimitExceeded`,
    /// `resource_unavailable`): it wins over messages and the status.
    Specific,
    /// It names a family (`RESOURCE_EXHAUSTED`, `api_error`, `invalid_request_error`,
    /// `rate_limit_exceeded`): a specific message wins over it, it wins over the status.
    Generic,
}

/// What [`decide`] concluded, and the native code that decided (or the first one
/// the classifier knew), kept for diagnosis.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// The category.
    pub category: ErrorCategory,
    /// The native code behind it, if any.
    pub code: Option<String>,
}

/// Decides a category from the signals of `text`.
///
/// `native` maps a code, reason, type or named status (with its kind and origin) to
/// its category and [`Weight`] (`None` for a code it does not know); `by_status` maps an HTTP status.
/// `status` is the response's status when there was a response, else the first one
/// written in the text. Under a 5xx status only a shortage, a quota or a retryable
/// category survives from codes and messages; anything else is a server hiccup.
pub fn decide(
    signals: &Signals,
    text: &str,
    status: Option<u16>,
    native: impl Fn(&Signal) -> Option<(ErrorCategory, Weight)>,
    by_status: impl Fn(u16) -> Option<ErrorCategory>,
) -> Verdict {
    let status = status.or_else(|| signals.http_status());
    let known: Vec<(&str, ErrorCategory, Weight)> = signals
        .codes()
        .filter_map(|c| native(c).map(|(category, weight)| (c.value.as_str(), category, weight)))
        .collect();
    let first_known = known.first().map(|(c, _, _)| (*c).to_owned());
    let server_side = status.is_some_and(|s| (500..=599).contains(&s));
    let survive = |category: ErrorCategory| {
        if server_side
            && !category.is_retryable()
            && !matches!(
                category,
                ErrorCategory::TransientCapacity | ErrorCategory::QuotaExceeded
            )
        {
            ErrorCategory::Transient
        } else {
            category
        }
    };
    let verdict = |category, code: Option<String>| Verdict { category, code };

    if let Some((code, category, _)) = known.iter().find(|(_, _, w)| *w == Weight::Specific) {
        return verdict(survive(*category), Some((*code).to_owned()));
    }
    if let Some(category) = specific_message(text) {
        return verdict(survive(category), first_known);
    }
    if let Some((code, category, _)) = known.first() {
        return verdict(survive(*category), Some((*code).to_owned()));
    }
    if let Some(category) = status.and_then(&by_status) {
        return verdict(category, None);
    }
    verdict(
        fallback_message(text).unwrap_or(ErrorCategory::Unknown),
        None,
    )
}

/// A message that names the failure precisely enough to win over a generic code
/// or status, checked in this order:
///
/// | message | category |
/// |---|---|
/// | "request too large", "prompt is too long", "maximum context length", "access not configured", "already exists" | `invalid_config` |
/// | "overloaded", "no free IP", "does not have enough resources available", "out of stock" | `transient_capacity` |
/// | "exceeded your current quota", "quota limit '…' has been exceeded", "Quota 'CPUS' exceeded", "the following quotas were exceeded", "insufficient project quota", "has reached its quota", "server limit reached" | `rate_limited` for a window shorter than a day, else `quota_exceeded` |
/// | "rate limit", "too many requests" | `rate_limited` |
pub fn specific_message(text: &str) -> Option<ErrorCategory> {
    const NEVER_FITS: &[&str] = &[
        "request too large",
        "request_too_large",
        "prompt is too long",
        "maximum context length",
        "context_length_exceeded",
        "input or output tokens must be reduced",
        "access not configured",
        "has not been used in project",
        "already exists",
    ];
    const SHORTAGE: &[&str] = &[
        "overloaded",
        "no free ip",
        "does not have enough resources available",
        "resource pool exhausted",
        "out of stock",
        "stockout",
    ];
    const RATE: &[&str] = &["rate limit", "rate_limit", "ratelimit", "too many requests"];
    static QUOTA: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(
            r"exceeded (?:your |the |its )?(?:current |project )?quota|insufficient(?:_| [a-z]+ | )quota|insufficient tokens for quota|quotas? (?:(?:was|were|has been|have been) )?exceeded|quota limit|has reached its quota|(?:out of|over) quota|quota (?:has been )?exhausted|quota '?[a-z0-9_]+'? (?:has been )?exceeded|\b(?:server|resource|primary ip|floating ip|volume|snapshot|instance|project)s? limit (?:reached|exceeded)",
        )
        .expect("valid quota regex")
    });
    let lower = text.to_lowercase();
    let has = |phrases: &[&str]| phrases.iter().any(|p| lower.contains(p));
    if has(NEVER_FITS) {
        Some(ErrorCategory::InvalidConfig)
    } else if has(SHORTAGE) {
        Some(ErrorCategory::TransientCapacity)
    } else if QUOTA.is_match(&lower) {
        Some(quota_category(text))
    } else if has(RATE) {
        Some(ErrorCategory::RateLimited)
    } else {
        None
    }
}

/// The category of a quota named in `text`: `rate_limited` when its window is
/// shorter than a day (per second, per minute, per 100 seconds, per hour, TPM,
/// RPM), else `quota_exceeded` (a count, or a daily allowance no retry outlasts).
pub fn quota_category(text: &str) -> ErrorCategory {
    if names_short_window(text) {
        ErrorCategory::RateLimited
    } else {
        ErrorCategory::QuotaExceeded
    }
}

/// Whether `text` names a quota window shorter than a day.
pub fn names_short_window(text: &str) -> bool {
    static SHORT: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(
            r"(?i)per[\s_]*(?:user[\s_]+per[\s_]+)?(?:[0-9]+[\s_]*)?(?:second|sec|minute|min|hour)s?(?:\b|_)|Per(?:Second|Minute|Hour)|\b(?:tpm|rpm|rps)\b",
        )
        .expect("valid window regex")
    });
    SHORT.is_match(text)
}

/// Whether `text` names a daily quota.
pub fn names_daily_window(text: &str) -> bool {
    static DAY: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(r"(?i)per[\s_]*day|PerDay|\bdaily\b").expect("valid day regex")
    });
    DAY.is_match(text)
}

/// The narrow fallback, used only when no code, specific message or status spoke:
/// network failures are `transient`, credential phrases `auth_error`, "not found"
/// `not_found`.
///
/// Deliberately absent: a bare "internal server error" or "internal error", which
/// agents also use for their own bugs (an invalid tool call payload) that no retry fixes.
pub fn fallback_message(text: &str) -> Option<ErrorCategory> {
    const PATTERNS: &[(&str, ErrorCategory)] = &[
        ("temporarily unavailable", ErrorCategory::Transient),
        ("service unavailable", ErrorCategory::Transient),
        ("bad gateway", ErrorCategory::Transient),
        ("gateway timeout", ErrorCategory::Transient),
        ("cannot connect to api", ErrorCategory::Transient),
        ("unable to connect", ErrorCategory::Transient),
        ("connection refused", ErrorCategory::Transient),
        ("connectionrefused", ErrorCategory::Transient),
        ("econnrefused", ErrorCategory::Transient),
        ("enotfound", ErrorCategory::Transient),
        ("etimedout", ErrorCategory::Transient),
        ("enetunreach", ErrorCategory::Transient),
        ("getaddrinfo", ErrorCategory::Transient),
        ("fetch failed", ErrorCategory::Transient),
        ("network is unreachable", ErrorCategory::Transient),
        ("network unreachable", ErrorCategory::Transient),
        ("socket hang up", ErrorCategory::Transient),
        ("socket connection was closed", ErrorCategory::Transient),
        ("connection error", ErrorCategory::Transient),
        ("connect timeout", ErrorCategory::Transient),
        ("i/o timeout", ErrorCategory::Transient),
        ("timed out", ErrorCategory::Transient),
        ("stream disconnected", ErrorCategory::Transient),
        ("error sending request", ErrorCategory::Transient),
        (
            "an error occurred while processing your request",
            ErrorCategory::Transient,
        ),
        ("authentication required", ErrorCategory::AuthError),
        ("unable to authenticate", ErrorCategory::AuthError),
        ("authorization required", ErrorCategory::AuthError),
        ("invalid api key", ErrorCategory::AuthError),
        ("api key not valid", ErrorCategory::AuthError),
        ("invalid x-api-key", ErrorCategory::AuthError),
        ("please run /login", ErrorCategory::AuthError),
        ("permission denied", ErrorCategory::AuthError),
        ("insufficient permissions", ErrorCategory::AuthError),
        ("not found", ErrorCategory::NotFound),
    ];
    let lower = text.to_lowercase();
    PATTERNS
        .iter()
        .find(|(p, _)| lower.contains(p))
        .map(|(_, c)| *c)
}

/// Classifies an error text reported by a coding agent into the SDK's taxonomy.
///
/// | reported | category |
/// |---|---|
/// | `overloaded_error`, HTTP 529, "Overloaded" | `transient_capacity` |
/// | HTTP 500/502/503/504, `api_error`, "temporarily unavailable", "Cannot connect to API", `ECONNREFUSED`, "fetch failed" | `transient` |
/// | HTTP 429, `rate_limit_error`, "rate limit", a quota per minute | `rate_limited` |
/// | `insufficient_quota`, a daily or count quota | `quota_exceeded` |
/// | ACP `-32000`, HTTP 401/403, `authentication_error` | `auth_error` |
/// | `request_too_large`, "Request too large for … tokens per min", `invalid_request_error`, HTTP 400/413 | `invalid_config` |
/// | anything else, including a bare "Internal server error" | `unknown` |
///
/// Never panics; any input yields a category.
pub fn classify_agent_error(text: &str) -> ErrorCategory {
    let signals = extract(text);
    match signals.rpc_code() {
        // ACP: "Authentication required".
        Some(-32000) => return ErrorCategory::AuthError,
        // Invalid request, method not found, invalid params: never succeeds as sent.
        Some(-32602..=-32600) => return ErrorCategory::InvalidConfig,
        _ => {}
    }
    decide(
        &signals,
        text,
        None,
        |c| agent_code(&c.value, text),
        agent_status,
    )
    .category
}

/// Native codes of Anthropic, OpenAI and Google (Gemini) bodies, and the error
/// codes of the agents' own HTTP clients.
fn agent_code(code: &str, text: &str) -> Option<(ErrorCategory, Weight)> {
    use ErrorCategory::*;
    use Weight::*;
    Some(match code {
        "overloaded_error" | "overloaded" | "server_is_overloaded" => (TransientCapacity, Specific),
        "rate_limit_error" | "rateLimitExceeded" => (RateLimited, Specific),
        // OpenAI sends "Request too large" under this code: the message decides.
        "rate_limit_exceeded" | "requests" | "tokens" => (RateLimited, Generic),
        "insufficient_quota" | "billing_hard_limit_reached" => (QuotaExceeded, Specific),
        "RESOURCE_EXHAUSTED" if names_daily_window(text) && !names_short_window(text) => {
            (QuotaExceeded, Generic)
        }
        "RESOURCE_EXHAUSTED" => (RateLimited, Generic),
        "api_error"
        | "server_error"
        | "service_unavailable"
        | "timeout_error"
        | "UNAVAILABLE"
        | "INTERNAL"
        | "DEADLINE_EXCEEDED" => (Transient, Generic),
        "ConnectionRefused" | "ECONNREFUSED" | "ECONNRESET" | "ETIMEDOUT" | "ENOTFOUND"
        | "EAI_AGAIN" => (Transient, Specific),
        "authentication_error"
        | "permission_error"
        | "invalid_api_key"
        | "unauthorized"
        | "UNAUTHENTICATED" => (AuthError, Specific),
        "PERMISSION_DENIED" => (AuthError, Generic),
        "request_too_large" | "context_length_exceeded" => (InvalidConfig, Specific),
        "invalid_request_error" | "INVALID_ARGUMENT" | "FAILED_PRECONDITION" | "OUT_OF_RANGE" => {
            (InvalidConfig, Generic)
        }
        "not_found_error" | "model_not_found" => (NotFound, Specific),
        "NOT_FOUND" => (NotFound, Generic),
        "ABORTED" => (Conflict, Generic),
        _ => return None,
    })
}

/// The HTTP statuses model providers answer with.
fn agent_status(status: u16) -> Option<ErrorCategory> {
    Some(match status {
        529 => ErrorCategory::TransientCapacity,
        429 => ErrorCategory::RateLimited,
        500 | 502 | 503 | 504 | 408 => ErrorCategory::Transient,
        401 | 403 => ErrorCategory::AuthError,
        400 | 413 | 422 => ErrorCategory::InvalidConfig,
        404 => ErrorCategory::NotFound,
        409 => ErrorCategory::Conflict,
        _ => return None,
    })
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
        // SAM's agent-side table: what each agent error text means.
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
    fn network_failures_and_lying_statuses() {
        // OpenCode and other agents' HTTP clients, when the provider is unreachable.
        for text in [
            "Cannot connect to API: connect ECONNREFUSED 127.0.0.1:9",
            "TypeError: fetch failed",
            "getaddrinfo ENOTFOUND api.anthropic.com",
            "Error: socket hang up",
            "connect ENETUNREACH 2607:6bc0::10:443 - Local (:::0)",
            "request to https://api.openai.com/v1/responses failed: network is unreachable",
        ] {
            check(text, Transient);
            assert!(!is_agent_crash(text), "{text:?} is not a crash");
        }
        // An overload under HTTP 400, in an OpenAI stream's error event.
        check(
            r#"{"type":"response.failed","response":{"status":"failed","error":{"code":"server_is_overloaded","message":"Our servers are currently overloaded. Please try again later."}}}"#,
            TransientCapacity,
        );
        check(
            r#"400 {"error":{"message":"Our servers are currently overloaded. Please try again later.","type":"invalid_request_error"}}"#,
            TransientCapacity,
        );
        // Too large for a per-minute limit: retrying can never succeed.
        check(
            "Error code: 429 - {'error': {'message': 'Request too large for gpt-4o in organization org-x on tokens per min (TPM): Limit 30000, Requested 36278.', 'type': 'tokens', 'param': None, 'code': 'rate_limit_exceeded'}}",
            InvalidConfig,
        );
        // A per-minute quota is a rate limit, a daily one a quota.
        check(
            "429 RESOURCE_EXHAUSTED. {'error': {'code': 429, 'message': 'You exceeded your current quota', 'status': 'RESOURCE_EXHAUSTED', 'details': [{'quotaId': 'GenerateRequestsPerMinutePerProjectPerModel-FreeTier'}]}}",
            RateLimited,
        );
        check(
            "429 RESOURCE_EXHAUSTED. {'error': {'code': 429, 'message': 'You exceeded your current quota', 'status': 'RESOURCE_EXHAUSTED', 'details': [{'quotaId': 'GenerateRequestsPerDayPerProjectPerModel'}]}}",
            QuotaExceeded,
        );
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
