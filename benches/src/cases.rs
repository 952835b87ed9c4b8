//! The field material of `shared/cases` (a sibling of the repository) that the
//! benchmarks replay: provider error bodies and the ACP transcript.

use std::path::PathBuf;

use anyhow::Context as _;
use sam_core::ProviderKind;
use serde_json::Value;

/// The session id of the ACP transcript's updates.
pub const ACP_SESSION_ID: &str = "sess_abc123def456";

/// Where `shared/cases` is: `SAM_CASES_DIR` when set, else next to the repository.
pub fn dir() -> PathBuf {
    std::env::var_os("SAM_CASES_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/cases"),
        PathBuf::from,
    )
}

fn read(name: &str) -> anyhow::Result<String> {
    let path = dir().join(name);
    std::fs::read_to_string(&path).with_context(|| {
        format!(
            "cannot read {} (the repository and shared/ must be siblings, or set SAM_CASES_DIR)",
            path.display()
        )
    })
}

/// One recorded provider error response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorBody {
    /// The provider that sent it.
    pub provider: ProviderKind,
    /// Its HTTP status (0 where the record has none).
    pub status: u16,
    /// The body, exactly as recorded.
    pub body: String,
}

/// Every body of `provider-errors.json`.
///
/// # Errors
/// When the file cannot be read or a record lacks a field.
pub fn provider_errors() -> anyhow::Result<Vec<ErrorBody>> {
    let records: Vec<Value> = serde_json::from_str(&read("provider-errors.json")?)?;
    records
        .iter()
        .map(|r| {
            let provider = r["provider"]
                .as_str()
                .context("a record without a provider")?
                .parse::<ProviderKind>()?;
            let status = r["http_status"]
                .as_u64()
                .and_then(|s| u16::try_from(s).ok())
                .unwrap_or(0);
            let body = r["body"].as_str().context("a record without a body")?;
            Ok(ErrorBody {
                provider,
                status,
                body: body.to_owned(),
            })
        })
        .collect()
}

/// The agent's `session/update` notifications of `acp-transcript.jsonl`, one JSON
/// line each, for the transcript's session.
///
/// # Errors
/// When the file cannot be read or a line is not JSON.
pub fn session_updates() -> anyhow::Result<Vec<String>> {
    let mut updates = Vec::new();
    for line in read("acp-transcript.jsonl")?.lines() {
        let record: Value = serde_json::from_str(line)?;
        let message = &record["message"];
        if record["direction"] == "agent->client"
            && message["method"] == "session/update"
            && message["params"]["sessionId"] == ACP_SESSION_ID
            && message["params"]["update"]["sessionUpdate"] != "user_message_chunk"
        {
            updates.push(message.to_string());
        }
    }
    anyhow::ensure!(!updates.is_empty(), "the transcript has no session updates");
    Ok(updates)
}
