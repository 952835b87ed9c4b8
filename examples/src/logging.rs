//! The log setup the binaries share: `sam-server` (text or JSON, as configured),
//! `sam -v` and `sam-vm-agent`, each installing one global tracing subscriber on
//! stderr.

use serde::{Deserialize, Serialize};

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Installs the global tracing subscriber on stderr, filtered by `RUST_LOG`
/// (default `info`).
pub fn init(format: LogFormat) {
    init_at(format, "info");
}

/// Installs the global tracing subscriber on stderr, filtered by `RUST_LOG`, else
/// by `default` (`info`, `debug`, `warn`, …). Text is coloured only when stderr is
/// a terminal, so a log file or a pipe gets plain lines.
pub fn init_at(format: LogFormat, default: &str) {
    use std::io::IsTerminal as _;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}
