use super::*;
use crate::failure::Error;
use proptest::prelude::*;

#[test]
fn categories_serialize_snake_case() {
    let names: Vec<String> = ErrorCategory::ALL
        .iter()
        .map(|c| {
            serde_json::to_value(c)
                .unwrap()
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(
        names,
        [
            "transient_capacity",
            "quota_exceeded",
            "rate_limited",
            "transient",
            "conflict",
            "auth_error",
            "not_found",
            "invalid_config",
            "unknown"
        ]
    );
    for c in ErrorCategory::ALL {
        assert_eq!(c.to_string(), c.as_str());
        let back: ErrorCategory = serde_json::from_value(serde_json::json!(c.as_str())).unwrap();
        assert_eq!(back, c);
    }
    let retryable: Vec<_> = ErrorCategory::ALL
        .into_iter()
        .filter(|c| c.is_retryable())
        .collect();
    assert_eq!(
        retryable,
        [
            ErrorCategory::RateLimited,
            ErrorCategory::Transient,
            ErrorCategory::Conflict
        ]
    );
}

#[test]
fn provider_error_is_one_actionable_sentence() {
    let e = ProviderError::new(
        ProviderKind::Hetzner,
        ErrorCategory::TransientCapacity,
        "server type cx43 is unavailable in fsn1.",
    )
    .with_status(412)
    .with_code("resource_unavailable");
    assert_eq!(
        e.to_string(),
        "Hetzner Cloud failed (HTTP 412, resource_unavailable): server type cx43 is unavailable in fsn1: \
         the requested size or location is out of stock right now; another size or location may work"
    );
    assert_eq!(e.category(), ErrorCategory::TransientCapacity);
    assert_eq!(e.provider_code(), Some("resource_unavailable"));
    assert!(!e.is_retryable());
    let core: Error = e.into();
    assert_eq!(core.category(), ErrorCategory::TransientCapacity);
}

#[test]
fn provider_error_keeps_cleanup_failure_and_redacts() {
    let cleanup = ProviderError::new(
        ProviderKind::Scaleway,
        ErrorCategory::Transient,
        "terminate failed",
    );
    let e = ProviderError::new(
        ProviderKind::Scaleway,
        ErrorCategory::Transient,
        "upload failed with token=abc123",
    )
    .with_cleanup_failure(cleanup);
    assert!(
        e.to_string()
            .contains("(cleanup also failed: terminate failed)"),
        "{e}"
    );
    assert!(!e.to_string().contains("abc123"));
    assert_eq!(e.cleanup_failure().unwrap().message(), "terminate failed");
}

#[test]
fn store_errors_classify_by_kind() {
    let e = StoreError::new(StoreErrorKind::Unavailable, "database is locked");
    assert!(e.is_retryable());
    assert_eq!(
        StoreError::new(StoreErrorKind::AlreadyExists, "x").category(),
        ErrorCategory::Conflict
    );
    assert_eq!(
        StoreError::new(StoreErrorKind::Corrupt, "x").category(),
        ErrorCategory::Unknown
    );
}

proptest! {
    #[test]
    fn bodies_are_truncated_on_char_boundaries(body in ".{0,3000}", repeat in 1usize..4) {
        let body = body.repeat(repeat);
        let kept = truncate_body(&body);
        prop_assert!(kept.len() <= MAX_BODY_BYTES + "…[truncated]".len());
        if body.len() <= MAX_BODY_BYTES {
            prop_assert_eq!(kept, redact(&body).into_owned());
        }
    }
}
