//! The agent-side classifier on real model-provider failures as they reach an agent
//! host: Anthropic, OpenAI, Gemini and proxy bodies as rendered by Claude Code, the
//! ACP adapter, the TypeScript and Python SDKs, litellm, OpenCode and Codex.
//!
//! The corpus (`corpus/model-errors.json`) holds each text with its public source,
//! the status when known, its rendering and the category a maintainer would choose.

use std::sync::LazyLock;

use proptest::prelude::*;
use sam_core::testkit::corpus::{self, CorpusCase, CorpusReport, pad_and_truncate, python_repr};
use sam_core::{ErrorCategory, classify_agent_error};

static CASES: LazyLock<Vec<CorpusCase>> =
    LazyLock::new(|| corpus::load(include_str!("corpus/model-errors.json")));

#[test]
fn the_corpus_classifies_right() {
    CorpusReport::run(&CASES, |case| classify_agent_error(&case.text))
        .print_and_hold("model-provider errors", 60);
}

/// The real bodies of the corpus with the status they came with.
static BODIES: LazyLock<Vec<(u16, String)>> = LazyLock::new(|| {
    CASES
        .iter()
        .filter_map(|c| Some((c.status?, c.body()?.to_string())))
        .filter(|(status, _)| *status >= 400)
        .collect()
});

/// How agents and SDKs present a body that came with `status`.
fn render(rendering: usize, status: u16, body: &str) -> String {
    let value: serde_json::Value = serde_json::from_str(body).expect("a body is JSON");
    match rendering {
        // Claude Code and the TypeScript SDK.
        0 => format!("API Error: {status} {body}"),
        1 => format!("Error: {status} {body}"),
        // The Python SDKs: `Error code: 429 - {'error': {…, 'param': None}}`.
        2 => format!("Error code: {status} - {}", python_repr(&value)),
        3 => format!(
            "anthropic.{}: Error code: {status} - {}",
            python_exception(status),
            python_repr(&value)
        ),
        // The Claude ACP adapter's JSON-RPC error, as the host classifies it.
        4 => serde_json::json!({
            "code": -32603,
            "message": format!("Internal error: API Error: {status} {body}"),
        })
        .to_string(),
        // litellm wraps the SDK's text.
        5 => format!("litellm.APIError: OpenAIException - Error code: {status} - {body}"),
        // The same with the body cut at 4 KiB: the native codes survive.
        _ => format!("API Error: {status} {}", pad_and_truncate(body, 5000)),
    }
}

/// The exception class the Python SDKs raise for `status`.
fn python_exception(status: u16) -> &'static str {
    match status {
        400 => "BadRequestError",
        401 => "AuthenticationError",
        403 => "PermissionDeniedError",
        404 => "NotFoundError",
        409 => "ConflictError",
        422 => "UnprocessableEntityError",
        429 => "RateLimitError",
        500.. => "InternalServerError",
        _ => "APIStatusError",
    }
}

proptest! {
    /// Wrapping a body in any rendering never changes its category.
    #[test]
    fn renderings_keep_the_category(index in 0usize..1000, rendering in 0usize..7) {
        let (status, body) = &BODIES[index % BODIES.len()];
        let base = classify_agent_error(&render(0, *status, body));
        let rendered = render(rendering, *status, body);
        prop_assert_eq!(classify_agent_error(&rendered), base, "{}", rendered);
    }
}

#[test]
fn every_body_is_rendered() {
    assert!(BODIES.len() >= 10, "only {} bodies", BODIES.len());
    for (status, body) in BODIES.iter() {
        let base = classify_agent_error(&render(0, *status, body));
        assert_ne!(base, ErrorCategory::Unknown, "{status} {body}");
        for rendering in 1..7 {
            let rendered = render(rendering, *status, body);
            assert_eq!(classify_agent_error(&rendered), base, "{rendered}");
        }
    }
}
