//! `classify_http_error` is total: any status and body from any provider gives a
//! category, without a panic, and every 5xx is retryable or a capacity shortage.
//!
//! Input: one byte choosing the provider, the status as two big-endian bytes, then
//! the body (so the field bodies in `shared/cases/provider-errors.json` seed it).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sam_core::{ErrorCategory, ProviderKind};

fuzz_target!(|data: &[u8]| {
    let [which, high, low, body @ ..] = data else {
        return;
    };
    let status = u16::from_be_bytes([*high, *low]);
    let body = &String::from_utf8_lossy(body);
    let provider = match which % 3 {
        0 => ProviderKind::Hetzner,
        1 => ProviderKind::Scaleway,
        _ => ProviderKind::Gcp,
    };
    let error = sam_providers::classify_http_error(provider, status, body);
    let category = error.category();
    if (500..600).contains(&status) {
        assert!(
            category.is_retryable()
                || matches!(
                    category,
                    ErrorCategory::TransientCapacity | ErrorCategory::QuotaExceeded
                ),
            "HTTP {status} from {provider:?} is {category:?}: {body:?}"
        );
    }
    // Messages pass through the redactor and never panic when shown.
    let _ = error.to_string();
});
