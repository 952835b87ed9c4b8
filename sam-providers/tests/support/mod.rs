//! What the wire-level suites share: the recorded error bodies and a fixture that
//! keeps a mock server alive as long as the provider that talks to it.

#![allow(dead_code, unreachable_pub)]

pub mod hetzner;

use std::path::PathBuf;

use sam_core::ErrorCategory;
use serde::Deserialize;

/// One recorded case of `shared/cases/provider-errors.json`.
#[derive(Debug, Clone, Deserialize)]
pub struct Case {
    pub id: String,
    pub provider: String,
    pub http_status: Option<u16>,
    pub body: String,
    pub accept: Vec<ErrorCategory>,
}

/// Every recorded case whose provider name starts with `prefix` and has a status.
pub fn cases(prefix: &str) -> Vec<Case> {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/cases/provider-errors.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read {} ({e}); the repository and shared/ must be siblings",
            path.display()
        )
    });
    let all: Vec<Case> = serde_json::from_str(&text).expect("provider-errors.json parses");
    all.into_iter()
        .filter(|c| c.provider.starts_with(prefix) && c.http_status.is_some())
        .collect()
}

/// One recorded case by id.
pub fn case(id: &str) -> Case {
    let prefix = id.split('-').next().unwrap_or(id);
    cases(prefix)
        .into_iter()
        .find(|c| c.id == id)
        .unwrap_or_else(|| panic!("no case {id}"))
}

/// A provider with the mock server it talks to.
#[derive(Debug)]
pub struct Mocked<P> {
    pub provider: P,
    pub server: wiremock::MockServer,
}

impl<P> std::ops::Deref for Mocked<P> {
    type Target = P;
    fn deref(&self) -> &P {
        &self.provider
    }
}
