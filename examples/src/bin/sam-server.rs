//! `sam-server`: the SAM control plane as an HTTP service (see `sam_examples::server`).
//!
//! `sam-server --listen 127.0.0.1:8080 --data-dir /var/lib/sam` keeps state in SQLite
//! in the data directory, or in PostgreSQL with `--database-url`, and runs nodes with
//! the local provider (or `--provider hetzner|scaleway|gcp`). Every option can also
//! come from a TOML file (`--config FILE`) or a `SAM_*` environment variable; flags
//! win over both (see `sam_examples::config`). SIGINT or SIGTERM stop it gracefully;
//! unfinished tasks resume at the next start.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use figment::providers::Serialized;
use sam_examples::config::ServerConfig;
use sam_examples::server::{self, ServerOptions};
use serde::Serialize;

/// The SAM control plane server. Defaults are in `sam_examples::config::ServerConfig`.
#[derive(Debug, Parser, Serialize)]
#[command(name = "sam-server", version)]
struct Cli {
    /// A TOML configuration file (keys are the long flag names with `_`).
    #[arg(long)]
    #[serde(skip)]
    config: Option<PathBuf>,
    /// Print the effective configuration (secrets hidden) and exit.
    #[arg(long)]
    #[serde(skip)]
    check_config: bool,
    /// The address the API and the node callbacks listen on [default: 127.0.0.1:8080].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    listen: Option<SocketAddr>,
    /// Where state lives: the SQLite database, the nodes, handed-over workspaces
    /// [default: .sam-server].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    data_dir: Option<PathBuf>,
    /// A PostgreSQL URL; without it state is in SQLite in the data directory.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    database_url: Option<String>,
    /// The PostgreSQL schema for the tables (created if missing).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    database_schema: Option<String>,
    /// The base URL nodes call back to [default: http://<listen address>/].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    public_url: Option<String>,
    /// The user API token [default: one created in <data dir>/api-token].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    api_token: Option<String>,
    /// Any ACP agent, as a shell command (run as the `custom` agent).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    agent_command: Option<String>,
    /// How logs are written to stderr (filtered by RUST_LOG): text or json.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    log_format: Option<String>,
    /// Which provider runs the nodes: local, hetzner, scaleway or gcp.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    provider: Option<String>,
    /// The VM agent binary cloud nodes download from /v1/agent/download
    /// [default: the sam-vm-agent next to this executable].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    vm_agent_binary: Option<PathBuf>,
    /// Where cloud nodes download the VM agent instead (https); needs --agent-sha256.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    agent_download_url: Option<String>,
    /// The SHA-256 of the binary at --agent-download-url (64 hex digits).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    agent_sha256: Option<String>,
    /// The agents whose ACP adapters cloud nodes install, comma-separated
    /// [default: claude,codex,gemini,opencode].
    #[arg(long, value_delimiter = ',')]
    #[serde(skip_serializing_if = "Option::is_none")]
    node_agents: Option<Vec<String>>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match ServerConfig::load(cli.config.as_deref(), Serialized::globals(&cli)) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("sam-server: {e}");
            return ExitCode::FAILURE;
        }
    };
    if cli.check_config {
        println!("{config:#?}");
        return ExitCode::SUCCESS;
    }
    server::init_logs(config.log_format);
    let result = async {
        let options = ServerOptions::from_config(&config)?;
        server::serve(options, sam_examples::node::shutdown_signal()).await
    };
    match result.await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("sam-server: {e:#}");
            ExitCode::FAILURE
        }
    }
}
