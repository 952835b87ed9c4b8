//! Classification of provider responses into [`ErrorCategory`].
//!
//! Each provider has one table of its native codes in its own `error.rs`. This
//! module holds what they share: the signals are read once by
//! [`sam_core::signal::extract`] (JSON, Python repr, SDK and CLI renderings), the
//! order of decision is [`sam_core::classify::decide`] (specific code, specific
//! message, generic code, status, narrow phrases), and the status table and the way
//! an error is assembled live here.

use sam_core::classify::{Verdict, Weight, decide};
use sam_core::signal::{Signal, SignalKind, SignalOrigin, Signals, extract};
use sam_core::{ErrorCategory, ProviderError, ProviderKind};
use serde_json::Value;

/// Classifies a failed HTTP response of `provider` from its status and body.
///
/// Total: any status and any body (empty, not JSON, JSON of an unexpected shape)
/// give an error; it never panics. The body is kept truncated to 4 KiB and redacted.
///
/// ```
/// use sam_providers::{ProviderKind, classify_http_error};
/// use sam_core::ErrorCategory;
///
/// let body = r#"{"error":{"code":"resource_unavailable","message":"server type not available"}}"#;
/// let error = classify_http_error(ProviderKind::Hetzner, 412, body);
/// assert_eq!(error.category(), ErrorCategory::TransientCapacity);
/// assert_eq!(error.provider_code(), Some("resource_unavailable"));
/// assert_eq!(error.status(), Some(412));
/// ```
pub fn classify_http_error(provider: ProviderKind, status: u16, body: &str) -> ProviderError {
    classify_error_text(provider, Some(status), body)
}

/// Classifies an error of `provider` as it reached us: a response body, the error
/// of an Operation or action (`status` `None` unless it names one), or what an SDK
/// or a CLI rendered of either (`googleapi: Error 403: …, rateLimitExceeded`,
/// `error during placement (resource_unavailable)`, a Python repr of the body).
///
/// Total, like [`classify_http_error`]; a status written in the text counts when
/// `status` is `None`.
///
/// ```
/// use sam_providers::{ProviderKind, classify_error_text};
/// use sam_core::ErrorCategory;
///
/// let text = "googleapi: Error 403: Quota exceeded for quota group 'ReadGroup' and limit \
///             'Read requests per 100 seconds' of service 'compute.googleapis.com'., rateLimitExceeded";
/// let error = classify_error_text(ProviderKind::Gcp, None, text);
/// assert_eq!(error.category(), ErrorCategory::RateLimited);
/// assert_eq!(error.provider_code(), Some("rateLimitExceeded"));
/// ```
pub fn classify_error_text(
    provider: ProviderKind,
    status: Option<u16>,
    text: &str,
) -> ProviderError {
    match provider {
        ProviderKind::Hetzner => crate::hetzner::error::classify(status, text),
        ProviderKind::Scaleway => crate::scaleway::error::classify(status, text),
        ProviderKind::Gcp => crate::gcp::error::classify(status, text),
        ProviderKind::Local | ProviderKind::Fake | ProviderKind::Qemu => {
            classify_with(provider, status, text, |_, _| None).0
        }
    }
}

/// Classifies `body` with a provider's table of native codes. `native` gets each
/// code (with its kind and origin) and the error's message. Returns the error and the signals, for the
/// provider's extras (a `reset_seconds`, …).
pub(crate) fn classify_with(
    provider: ProviderKind,
    status: Option<u16>,
    body: &str,
    native: impl Fn(&Signal, &str) -> Option<(ErrorCategory, Weight)>,
) -> (ProviderError, Signals) {
    let signals = extract(body);
    let message = signals
        .messages()
        .next()
        .map_or_else(|| plain_message(body), str::to_owned);
    let Verdict { category, code } = decide(
        &signals,
        body,
        status,
        |c| native(c, &message),
        |s| Some(by_status(Some(s))).filter(|c| *c != ErrorCategory::Unknown),
    );
    // Keep the body's own code for diagnosis even when the status decided.
    let code = code.or_else(|| {
        signals
            .iter()
            .find(|s| {
                matches!(s.origin, SignalOrigin::Json | SignalOrigin::PythonRepr)
                    && matches!(s.kind, SignalKind::Code | SignalKind::Type)
            })
            .map(|s| s.value.clone())
    });
    let error = assemble(provider, category, status, code.as_deref(), &message, body);
    (error, signals)
}

/// The category an HTTP status implies when the body names nothing better.
///
/// Shared by every provider so that a bare status means the same everywhere.
pub(crate) fn by_status(status: Option<u16>) -> ErrorCategory {
    match status {
        Some(401 | 403) => ErrorCategory::AuthError,
        Some(404 | 410) => ErrorCategory::NotFound,
        Some(408 | 500..=599) => ErrorCategory::Transient,
        Some(409 | 423) => ErrorCategory::Conflict,
        Some(429) => ErrorCategory::RateLimited,
        Some(400 | 405 | 411..=415 | 422) => ErrorCategory::InvalidConfig,
        _ => ErrorCategory::Unknown,
    }
}

/// Builds the error every classifier returns.
pub(crate) fn assemble(
    provider: ProviderKind,
    category: ErrorCategory,
    status: Option<u16>,
    code: Option<&str>,
    message: &str,
    body: &str,
) -> ProviderError {
    let message = if message.is_empty() {
        match status {
            Some(s) => format!("the request failed with HTTP status {s}"),
            None => "the request failed".to_owned(),
        }
    } else {
        message.to_owned()
    };
    let mut error = ProviderError::new(provider, category, message);
    if let Some(s) = status {
        error = error.with_status(s);
    }
    if let Some(c) = code.filter(|c| !c.is_empty()) {
        error = error.with_code(c);
    }
    if !body.is_empty() {
        error = error.with_body(body);
    }
    error
}

/// Parses a body as JSON; anything that is not JSON becomes `Null`.
pub(crate) fn parse(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or(Value::Null)
}

/// The non-empty string at `pointer` in `value`, if there is one.
#[cfg_attr(not(feature = "github"), allow(dead_code))]
pub(crate) fn text<'a>(value: &'a Value, pointer: &str) -> Option<&'a str> {
    value
        .pointer(pointer)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// A message for a body that is not JSON: its first line, at most 300 characters.
pub(crate) fn plain_message(body: &str) -> String {
    if body.trim_start().starts_with(['{', '[']) {
        return String::new();
    }
    body.lines()
        .next()
        .unwrap_or_default()
        .trim()
        .chars()
        .take(300)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::path::PathBuf;

    /// One recorded case of `provider-errors.json`.
    #[derive(serde::Deserialize)]
    struct Case {
        id: String,
        provider: String,
        http_status: Option<u16>,
        body: String,
        accept: Vec<ErrorCategory>,
    }

    fn cases_file() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/cases/provider-errors.json")
    }

    #[test]
    fn every_recorded_case_classifies_into_its_accept_list() {
        let path = cases_file();
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "cannot read {} ({e}); the repository and shared/ must be siblings",
                path.display()
            )
        });
        let cases: Vec<Case> = serde_json::from_str(&text).expect("provider-errors.json parses");
        let mut checked = 0;
        for case in &cases {
            let Some(status) = case.http_status else {
                continue;
            };
            let provider = match case.provider.as_str() {
                "hetzner" => ProviderKind::Hetzner,
                "scaleway" => ProviderKind::Scaleway,
                "gcp" | "gcp-compute" => ProviderKind::Gcp,
                other => panic!("case {}: unknown provider {other}", case.id),
            };
            let error = classify_http_error(provider, status, &case.body);
            assert!(
                case.accept.contains(&error.category()),
                "case {}: classified {} but accepts {:?}",
                case.id,
                error.category(),
                case.accept
            );
            assert_eq!(error.status(), Some(status), "case {}", case.id);
            checked += 1;
        }
        assert!(checked >= 20, "only {checked} cases had a status");
    }

    #[test]
    fn status_table() {
        let check =
            |status, expected| assert_eq!(by_status(Some(status)), expected, "status {status}");
        check(401, ErrorCategory::AuthError);
        check(403, ErrorCategory::AuthError);
        check(404, ErrorCategory::NotFound);
        check(409, ErrorCategory::Conflict);
        check(423, ErrorCategory::Conflict);
        check(429, ErrorCategory::RateLimited);
        check(400, ErrorCategory::InvalidConfig);
        check(422, ErrorCategory::InvalidConfig);
        check(500, ErrorCategory::Transient);
        check(503, ErrorCategory::Transient);
        check(599, ErrorCategory::Transient);
        check(302, ErrorCategory::Unknown);
        assert_eq!(by_status(None), ErrorCategory::Unknown);
    }

    #[test]
    fn empty_and_garbage_bodies_classify_by_status() {
        for provider in ProviderKind::ALL {
            for body in [
                "",
                "not json",
                "{",
                "[]",
                "null",
                r#"{"error":"x"}"#,
                r#"{"error":{"code":5}}"#,
            ] {
                let error = classify_http_error(provider, 503, body);
                assert_eq!(
                    error.category(),
                    ErrorCategory::Transient,
                    "{provider} {body:?}"
                );
                assert!(!error.message().is_empty());
            }
        }
    }

    #[test]
    fn bodies_are_truncated_and_redacted() {
        let body = format!(
            "{{\"error\":{{\"code\":\"x\",\"message\":\"Bearer abcdefghijklmnop\"}}, \"pad\":\"{}\"}}",
            "a".repeat(10_000)
        );
        let error = classify_http_error(ProviderKind::Hetzner, 400, &body);
        let kept = error.body().expect("body kept");
        assert!(kept.len() < 4200, "kept {} bytes", kept.len());
        assert!(!kept.contains("abcdefghijklmnop"));
        assert!(!error.message().contains("abcdefghijklmnop"));
    }

    /// A body that names a native code of `provider`, to exercise the code arms.
    fn coded_body() -> impl Strategy<Value = String> {
        let codes = prop::sample::select(vec![
            "resource_unavailable",
            "invalid_input",
            "resource_limit_exceeded",
            "out_of_stock",
            "quotas_exceeded",
            "invalid_request_error",
            "ZONE_RESOURCE_POOL_EXHAUSTED",
            "QUOTA_EXCEEDED",
            "quotaExceeded",
            "PERMISSION_DENIED",
            "not_found",
            "unauthorized",
        ]);
        (codes, ".{0,40}").prop_map(|(code, message)| {
            let message = serde_json::to_string(&message).unwrap_or_default();
            format!(
                r#"{{"error":{{"code":"{code}","status":"{code}","message":{message},"errors":[{{"reason":"{code}","code":"{code}"}}]}},"type":"{code}","message":{message}}}"#
            )
        })
    }

    fn capacity_codes() -> [&'static str; 5] {
        [
            "resource_unavailable",
            "unavailable",
            "out_of_stock",
            "ZONE_RESOURCE_POOL_EXHAUSTED",
            "ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS",
        ]
    }

    fn quota_codes() -> [&'static str; 4] {
        [
            "resource_limit_exceeded",
            "quotas_exceeded",
            "QUOTA_EXCEEDED",
            "quotaExceeded",
        ]
    }

    proptest! {
        #[test]
        fn classification_is_total(
            provider in prop::sample::select(ProviderKind::ALL.to_vec()),
            status in any::<u16>(),
            bytes in prop::collection::vec(any::<u8>(), 0..512),
        ) {
            let body = String::from_utf8_lossy(&bytes);
            let error = classify_http_error(provider, status, &body);
            prop_assert_eq!(error.status(), Some(status));
            prop_assert!(!error.to_string().is_empty());
        }

        /// A count quota is a quota whatever the status, so a quota code keeps its
        /// category under a 5xx too.
        #[test]
        fn every_5xx_is_retryable_unless_the_code_says_capacity_or_quota(
            provider in prop::sample::select(ProviderKind::ALL.to_vec()),
            status in 500u16..600,
            body in prop_oneof![coded_body(), ".{0,200}"],
        ) {
            let error = classify_http_error(provider, status, &body);
            let capacity = error.provider_code().is_some_and(|c| capacity_codes().contains(&c));
            let quota = error.provider_code().is_some_and(|c| quota_codes().contains(&c));
            prop_assert!(
                error.is_retryable()
                    || (capacity && error.category() == ErrorCategory::TransientCapacity)
                    || (quota && error.category() == ErrorCategory::QuotaExceeded),
                "{} {} {:?} -> {}", provider, status, body, error.category()
            );
        }
    }
}
