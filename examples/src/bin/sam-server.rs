//! `sam-server`: the SAM control plane as an HTTP service (see `sam_examples::server`).
//!
//! `sam-server --listen 127.0.0.1:8080 --data-dir /var/lib/sam` keeps state in SQLite
//! in the data directory, or in PostgreSQL with `--database-url`, and runs nodes with
//! the local provider. Every option can also come from a `SAM_*` environment
//! variable. SIGINT or SIGTERM stop it gracefully; unfinished tasks resume at the
//! next start.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, ValueEnum};
use sam_core::Secret;
use sam_examples::embedded::EmbeddedOptions;
use sam_examples::server::{self, LogFormat, ServerOptions};

/// The SAM control plane server.
#[derive(Debug, Parser)]
#[command(name = "sam-server", version)]
struct Cli {
    /// The address the API and the node callbacks listen on.
    #[arg(long, env = "SAM_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Where state lives: the SQLite database, the nodes, handed-over workspaces.
    #[arg(long, env = "SAM_DATA_DIR", default_value = ".sam-server")]
    data_dir: PathBuf,
    /// A PostgreSQL URL; without it state is in SQLite in the data directory.
    #[arg(long, env = "SAM_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// The base URL nodes call back to [default: http://<listen address>/].
    #[arg(long, env = "SAM_PUBLIC_URL")]
    public_url: Option<url::Url>,
    /// The user API token [default: one created in <data dir>/api-token].
    #[arg(long, env = "SAM_API_TOKEN", hide_env_values = true)]
    api_token: Option<String>,
    /// Any ACP agent, as a shell command (run as the `custom` agent).
    #[arg(long, env = "SAM_AGENT_COMMAND")]
    agent_command: Option<String>,
    /// How logs are written to stderr (filtered by RUST_LOG).
    #[arg(long, env = "SAM_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: Format,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Format {
    Text,
    Json,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    server::init_logs(match cli.log_format {
        Format::Text => LogFormat::Text,
        Format::Json => LogFormat::Json,
    });
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("sam-server: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let mut embedded = EmbeddedOptions::new(&cli.data_dir)?;
    embedded.database_url = cli.database_url.map(Secret::new);
    embedded.agent_command = cli.agent_command;
    let options = ServerOptions {
        listen: cli.listen,
        public_url: cli.public_url,
        api_token: cli.api_token.map(Secret::new),
        embedded,
    };
    server::serve(options, sam_examples::node::shutdown_signal()).await
}
