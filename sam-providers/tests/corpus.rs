//! The providers' classifiers on real errors as they reach a caller: Hetzner,
//! Scaleway and GCP bodies, and what hcloud-go, scaleway-sdk-go, the old Scaleway
//! CLI, Go's googleapi, gcloud, Python clients and Terraform made of them.
//!
//! The corpus (`corpus/provider-errors.json`) holds each text with its public source,
//! the status when known, its rendering and the category a maintainer would choose.

use std::sync::LazyLock;

use proptest::prelude::*;
use sam_core::testkit::corpus::{
    self, CorpusCase, CorpusReport, googleapi, pad_and_truncate, python_repr,
};
use sam_core::{ErrorCategory, ProviderKind};
use sam_providers::classify_error_text;

static CASES: LazyLock<Vec<CorpusCase>> =
    LazyLock::new(|| corpus::load(include_str!("corpus/provider-errors.json")));

fn kind(case: &CorpusCase) -> ProviderKind {
    match case.provider.as_str() {
        "hetzner" => ProviderKind::Hetzner,
        "scaleway" => ProviderKind::Scaleway,
        "gcp" => ProviderKind::Gcp,
        other => panic!("case {}: unknown provider {other}", case.id),
    }
}

fn classify(case: &CorpusCase, text: &str) -> ErrorCategory {
    classify_error_text(kind(case), case.status, text).category()
}

#[test]
fn the_corpus_classifies_right() {
    CorpusReport::run(&CASES, |case| classify(case, &case.text))
        .print_and_hold("provider errors", 100);
}

/// The cases whose text is a provider's own JSON body.
static BODIES: LazyLock<Vec<&'static CorpusCase>> = LazyLock::new(|| {
    CASES
        .iter()
        .filter(|c| serde_json::from_str::<serde_json::Value>(&c.text).is_ok_and(|v| v.is_object()))
        .collect()
});

/// How clients present a provider's body; `None` where the rendering does not
/// apply to that provider's shape.
fn render(rendering: usize, case: &CorpusCase) -> Option<String> {
    let body = &case.text;
    let value: serde_json::Value = serde_json::from_str(body).ok()?;
    let compact = value.to_string();
    Some(match rendering {
        0 => compact,
        // Terraform's diagnostics around a provider's error text.
        1 => format!("│ Error: {compact}\n│ \n│   with hcloud_server.node[0],"),
        2 => format!("* google_compute_instance.node: Error creating instance: {compact}"),
        // Python's repr of the parsed body.
        3 => python_repr(&value),
        // A proxy passing the body on inside its own error.
        4 => serde_json::json!({ "error": { "message": compact, "code": "upstream_error" } })
            .to_string(),
        // Go's googleapi rendering, for Google bodies.
        5 => googleapi(&value)?,
        // hcloud-go's `message (code)`, for Hetzner bodies.
        6 => {
            let error = value.get("error")?;
            let code = error.get("code")?.as_str()?;
            let message = error.get("message").and_then(|m| m.as_str()).unwrap_or("");
            format!("{message} ({code})")
        }
        // Cut at 4 KiB with every native field kept.
        _ => pad_and_truncate(body, 5000),
    })
}

proptest! {
    /// Wrapping a body in any rendering never changes its category.
    #[test]
    fn renderings_keep_the_category(index in 0usize..1000, rendering in 0usize..8) {
        let case = BODIES[index % BODIES.len()];
        let base = classify(case, &case.text);
        if let Some(rendered) = render(rendering, case) {
            prop_assert_eq!(classify(case, &rendered), base, "{}: {}", case.id, rendered);
        }
    }
}

#[test]
fn every_body_is_rendered() {
    assert!(BODIES.len() >= 20, "only {} bodies", BODIES.len());
    let mut rendered_count = 0;
    for case in BODIES.iter() {
        let base = classify(case, &case.text);
        for rendering in 1..8 {
            if let Some(rendered) = render(rendering, case) {
                assert_eq!(classify(case, &rendered), base, "{}: {rendered}", case.id);
                rendered_count += 1;
            }
        }
    }
    assert!(
        rendered_count >= 5 * BODIES.len(),
        "{rendered_count} renderings"
    );
}
