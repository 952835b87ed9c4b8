//! Conformance suites for backends of the public traits.
//!
//! Each case is a `pub async fn` that takes the backend as a trait object and panics
//! with a message naming the broken contract clause. The macros
//! [`crate::store_conformance!`] and [`crate::provider_conformance!`] expand to one
//! `#[tokio::test]` per case, so every case passes or fails on its own:
//!
//! ```text
//! // sam-store/src/memory.rs
//! #[cfg(test)]
//! mod conformance {
//!     sam_core::store_conformance!(async { crate::MemoryStore::new() });
//! }
//! ```
//!
//! The `make` expression is evaluated once per case, so every case gets a fresh
//! backend (a fresh database, a fresh schema).

pub mod corpus;
pub mod fixtures;
pub mod node_agent;
pub mod provider;
pub mod store;

/// Reads an environment variable that points a conformance suite at a real server
/// (e.g. `SAM_TEST_POSTGRES_URL`).
///
/// Returns `None` with a printed notice when it is unset, so the suite skips; but
/// when `CI=true` a missing variable panics, so the suite really runs in CI.
pub fn required_env(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(value) if !value.is_empty() => Some(value),
        _ if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("{var} is not set, and CI=true requires this suite to run")
        }
        _ => {
            eprintln!("notice: {var} is not set; skipping this conformance case");
            None
        }
    }
}
