//! `sam-server`: the SAM control plane as an HTTP service (see `sam_examples::server`).
//!
//! `sam-server --listen 127.0.0.1:8080 --data-dir /var/lib/sam` keeps state in SQLite
//! in the data directory, or in PostgreSQL with `--database-url`, and runs nodes with
//! the local provider (or `--provider hetzner|scaleway|gcp`). Every option can also
//! come from a TOML file (`--config FILE`) or a `SAM_*` environment variable; flags
//! win over both (see `sam_examples::config`). SIGINT or SIGTERM stop it gracefully;
//! unfinished tasks resume at the next start.
//!
//! Every timeout is a key in seconds (`--agent-ready-secs`, `SAM_HEARTBEAT_STALE_SECS`,
//! `lease_secs = 60` in the file, …), checked together at start: timeouts that
//! contradict each other or the lease stop the server, naming the values.
//! `--check-config` prints the effective configuration as TOML, each key with a
//! comment naming where its value came from (`# default`, `# from SAM_LISTEN`,
//! `# from --listen`, `# from <file>`) and secrets as `***`, then, as comments, every
//! timeout and the values they derive (sweep thresholds, lease renewal); it fails
//! naming the variable when the selected provider's credentials are missing.
//!
//! `sam-server tokens create --name ci [--admin] [--expires-in-days 30]`, `sam-server
//! tokens list` and `sam-server tokens revoke <id>` manage the API tokens in the
//! store the same configuration names (a running server sees the change at once);
//! a created token is printed once.
//!
//! Like `sam`, it also plays the hidden helper roles (`vm-agent`, `demo-agent`,
//! `git-credential`) its local nodes start when no sibling binary is installed
//! (`sam_examples::roles`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use figment::providers::Serialized;
use sam_examples::config::ServerConfig;
use sam_examples::roles::Role;
use sam_examples::server::tokens::{self, CreateTokenBody, TokenView};
use sam_examples::server::{self, ServerOptions};
use serde::Serialize;

/// The SAM control plane server. Defaults are in `sam_examples::config::ServerConfig`.
#[derive(Debug, Parser, Serialize)]
#[command(name = "sam-server", version)]
struct Cli {
    /// Manage API tokens instead of serving.
    #[command(subcommand)]
    #[serde(skip)]
    command: Option<Command>,
    /// A TOML configuration file (keys are the long flag names with `_`).
    #[arg(long)]
    #[serde(skip)]
    config: Option<PathBuf>,
    /// Print the effective configuration as TOML, with where each value came from
    /// (secrets hidden), check the provider's credentials are present, and exit.
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
    /// Which provider runs the nodes: local, qemu, hetzner, scaleway or gcp.
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
    /// With the local provider: where it keeps its nodes, shared by servers that
    /// share a local fleet with separate data directories [default: DATA_DIR/local].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    local_root: Option<PathBuf>,
    /// With --provider qemu: the directory of the base image its VMs boot from
    /// (`sam image build` prints it) [default: the default image in the user's cache].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    qemu_image: Option<PathBuf>,
    /// With --provider qemu: the loopback port of an apt proxy (apt-cacher-ng: 3142)
    /// through which nodes booted from a bare image install their packages.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    qemu_apt_proxy_port: Option<u16>,
    /// How long a task may wait for capacity, from submission [default: 300].
    #[arg(long, help_heading = "Timeouts (seconds)")]
    #[serde(skip_serializing_if = "Option::is_none")]
    capacity_wait_secs: Option<u64>,
    /// From the create call until the provider reports the VM running [default: 900].
    #[arg(long, help_heading = "Timeouts (seconds)")]
    #[serde(skip_serializing_if = "Option::is_none")]
    node_provisioning_secs: Option<u64>,
    /// From the create call until the node's agent reports ready [default: 900].
    #[arg(long, help_heading = "Timeouts (seconds)")]
    #[serde(skip_serializing_if = "Option::is_none")]
    agent_ready_secs: Option<u64>,
    /// From the workspace request until the agent reports it ready [default: 1800].
    #[arg(long, help_heading = "Timeouts (seconds)")]
    #[serde(skip_serializing_if = "Option::is_none")]
    workspace_ready_secs: Option<u64>,
    /// Added to the longer node wait to get the stuck-queued sweep [default: 300].
    #[arg(long, help_heading = "Timeouts (seconds)")]
    #[serde(skip_serializing_if = "Option::is_none")]
    queued_grace_secs: Option<u64>,
    /// Added to the workspace wait to get the stuck-delegated sweep [default: 60].
    #[arg(long, help_heading = "Timeouts (seconds)")]
    #[serde(skip_serializing_if = "Option::is_none")]
    delegated_grace_secs: Option<u64>,
    /// A running task older than this is probed [default: 14400].
    #[arg(long, help_heading = "Timeouts (seconds)")]
    #[serde(skip_serializing_if = "Option::is_none")]
    in_progress_soft_secs: Option<u64>,
    /// A running task older than this fails unless the probe shows it alive [default: 28800].
    #[arg(long, help_heading = "Timeouts (seconds)")]
    #[serde(skip_serializing_if = "Option::is_none")]
    in_progress_hard_secs: Option<u64>,
    /// No task lives longer than this [default: 86400].
    #[arg(long, help_heading = "Timeouts (seconds)")]
    #[serde(skip_serializing_if = "Option::is_none")]
    task_absolute_secs: Option<u64>,
    /// How long an idle node stays warm [default: 1800].
    #[arg(long, help_heading = "Timeouts (seconds)")]
    #[serde(skip_serializing_if = "Option::is_none")]
    warm_node_secs: Option<u64>,
    /// No node lives longer than this [default: 86400].
    #[arg(long, help_heading = "Timeouts (seconds)")]
    #[serde(skip_serializing_if = "Option::is_none")]
    node_max_lifetime_secs: Option<u64>,
    /// Seconds between the nodes' heartbeats, 1 to 3600 [default: 10].
    #[arg(long, help_heading = "Timeouts (seconds)")]
    #[serde(skip_serializing_if = "Option::is_none")]
    heartbeat_interval_secs: Option<u64>,
    /// A node silent this long is stale; at least 3 heartbeats [default: 180].
    #[arg(long, help_heading = "Timeouts (seconds)")]
    #[serde(skip_serializing_if = "Option::is_none")]
    heartbeat_stale_secs: Option<u64>,
    /// The longest a prompt attempt may go without a word from the agent [default: 300].
    #[arg(long, help_heading = "Timeouts (seconds)")]
    #[serde(skip_serializing_if = "Option::is_none")]
    agent_idle_secs: Option<u64>,
    /// The longest one git command on a node may run [default: 600].
    #[arg(long, help_heading = "Timeouts (seconds)")]
    #[serde(skip_serializing_if = "Option::is_none")]
    git_command_secs: Option<u64>,
    /// How long a server's lease on a task lasts, 1 to 3600; after a missed renewal
    /// it must still cover the provider's longest call [default: 60].
    #[arg(long, help_heading = "Timeouts (seconds)")]
    #[serde(skip_serializing_if = "Option::is_none")]
    lease_secs: Option<u64>,
    /// Serve /metrics without an API token (for a scraper on a private network).
    #[arg(long)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    metrics_public: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create, list or revoke API tokens.
    #[command(subcommand)]
    Tokens(TokensCommand),
    /// Rotate or list the keys that sign node and workspace tokens (kept in the
    /// database when a credential key is configured).
    #[command(subcommand)]
    Keys(KeysCommand),
    /// The helper roles the server's local nodes run when no `sam-vm-agent` or
    /// `sam-demo-agent` is installed beside it (`vm-agent`, `demo-agent`,
    /// `git-credential`), hidden.
    #[command(flatten)]
    Role(Role),
}

#[derive(Debug, Subcommand)]
enum TokensCommand {
    /// Create a token and print it (it is shown this once).
    Create {
        /// Its name (1 to 64 characters).
        #[arg(long)]
        name: String,
        /// An admin token, which may manage tokens (`/v1/tokens`).
        #[arg(long)]
        admin: bool,
        /// Days until it expires (1 to 3650); without it it does not expire.
        #[arg(long)]
        expires_in_days: Option<u32>,
    },
    /// List every token, revoked ones included (never their values).
    List,
    /// Revoke a token by its id: it gets 401 from then on.
    Revoke {
        /// The token's id (`tok-…`, from `list`).
        id: String,
    },
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Add a signing key: every server reads it within 30 s and signs with it two
    /// minutes after it was made; tokens signed with earlier keys verify until they
    /// expire (at most 24 h).
    Rotate,
    /// List the signing keys (never their values).
    List,
}

/// Runs `sam-server keys …` against the configured store.
async fn manage_keys(config: &ServerConfig, command: KeysCommand) -> anyhow::Result<()> {
    use sam_examples::embedded::{SIGNING_KEY_ACTIVATION, rotate_signing_key};
    let credential_key = config.credential_key.as_ref().context(
        "signing keys live in the database only with a credential_key \
         (SAM_CREDENTIAL_KEY); without one the key is the data directory's signing-key file",
    )?;
    let store = sam_examples::embedded::open_store(
        &config.data_dir,
        config.database_url.as_ref(),
        config.database_schema.as_deref(),
    )
    .await?;
    match command {
        KeysCommand::Rotate => {
            let key = rotate_signing_key(store.as_ref(), credential_key).await?;
            let from = key.created_at
                + chrono::Duration::from_std(SIGNING_KEY_ACTIVATION).unwrap_or_default();
            println!(
                "added {}: servers sign with it from {} on; tokens signed with earlier keys verify until they expire",
                key.id,
                from.format("%Y-%m-%d %H:%M:%S UTC")
            );
        }
        KeysCommand::List => {
            println!("{:<12} created", "id");
            for key in store.list_keys(sam_core::KeyPurpose::Signing).await? {
                println!(
                    "{:<12} {}",
                    key.id,
                    key.created_at.format("%Y-%m-%d %H:%M:%S UTC")
                );
            }
        }
    }
    Ok(())
}

/// One line of `tokens list`.
fn token_line(token: &TokenView) -> String {
    let time = |t: Option<chrono::DateTime<chrono::Utc>>| {
        t.map_or_else(
            || "-".to_owned(),
            |t| t.format("%Y-%m-%d %H:%M").to_string(),
        )
    };
    format!(
        "{:<20} {:<9} {:<16} {:<16} {:<16} {:<16} {}",
        token.id,
        token.kind,
        time(Some(token.created_at)),
        time(token.last_used_at),
        time(token.expires_at),
        time(token.revoked_at),
        token.name,
    )
}

/// Runs `sam-server tokens …` against the configured store.
async fn manage_tokens(config: &ServerConfig, command: TokensCommand) -> anyhow::Result<()> {
    let store = sam_examples::embedded::open_store(
        &config.data_dir,
        config.database_url.as_ref(),
        config.database_schema.as_deref(),
    )
    .await?;
    let refused = |e: server::ApiError| anyhow::anyhow!("{}", e.body().error);
    match command {
        TokensCommand::Create {
            name,
            admin,
            expires_in_days,
        } => {
            let body = CreateTokenBody {
                name,
                kind: Some(if admin {
                    sam_core::ApiTokenKind::Admin
                } else {
                    sam_core::ApiTokenKind::User
                }),
                expires_in_days,
            };
            let created = tokens::create(store.as_ref(), &body, chrono::Utc::now())
                .await
                .map_err(refused)?;
            eprintln!(
                "created {} ({} token {:?}); it is shown this once:",
                created.record.id, created.record.kind, created.record.name
            );
            println!("{}", created.token);
        }
        TokensCommand::List => {
            println!(
                "{:<20} {:<9} {:<16} {:<16} {:<16} {:<16} name",
                "id", "kind", "created", "last used", "expires", "revoked"
            );
            for token in tokens::list(store.as_ref()).await.map_err(refused)? {
                println!("{}", token_line(&token));
            }
        }
        TokensCommand::Revoke { id } => {
            let revoked = tokens::revoke(store.as_ref(), &id, chrono::Utc::now())
                .await
                .map_err(refused)?;
            println!("revoked {}", token_line(&revoked));
        }
    }
    Ok(())
}

/// `--check-config`: prints the effective configuration as TOML, each value with
/// where it came from and secrets as `***`, then checks that the selected
/// provider's credentials (or, for QEMU, its image) are there. Fails naming the
/// value or the variable at fault.
fn check_config(cli: &Cli) -> ExitCode {
    let fail = |e: &dyn std::fmt::Display| {
        eprintln!("sam-server: {e}");
        ExitCode::FAILURE
    };
    let (config, sources) =
        match ServerConfig::load_explained(cli.config.as_deref(), Serialized::globals(cli)) {
            Ok(loaded) => loaded,
            Err(e) => return fail(&e),
        };
    match config.check_report(&sources) {
        Ok(report) => print!("{report}"),
        Err(e) => return fail(&e),
    }
    // Building the provider reads its variables and checks them; it calls nobody.
    match sam_examples::config::node_provider(config.provider, config.qemu_image.as_deref()) {
        Ok(_) => {
            println!("# provider `{}`: what it needs is present", config.provider);
            ExitCode::SUCCESS
        }
        Err(e) => fail(&format_args!("{e:#}")),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Role(role)) = &cli.command {
        // A role reads no server configuration: it runs with the environment its
        // node gave it.
        return match role.clone().run().await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("sam-server: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    if cli.check_config {
        return check_config(&cli);
    }
    let config = match ServerConfig::load(cli.config.as_deref(), Serialized::globals(&cli)) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("sam-server: {e}");
            return ExitCode::FAILURE;
        }
    };
    let managed = match cli.command {
        Some(Command::Tokens(command)) => Some(manage_tokens(&config, command).await),
        Some(Command::Keys(command)) => Some(manage_keys(&config, command).await),
        _ => None,
    };
    if let Some(done) = managed {
        return match done {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("sam-server: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    sam_examples::logging::init(config.log_format);
    let result = async {
        let options = ServerOptions::from_config(&config)?;
        server::serve(options, sam_examples::node::shutdown_signal()).await
    };
    match result.await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Once, through the logs (which go to stderr): plain or JSON as configured.
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}
