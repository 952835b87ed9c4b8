//! `sam-vm-agent`: the agent on a node (see `sam_examples::node`).
//!
//! On a cloud node: `sam-vm-agent --config /etc/sam/agent.json --callback-token-file
//! /etc/sam/callback-token`. Under the local provider: no arguments; the provider
//! passes `SAM_USER_DATA`, `SAM_PORT` and `SAM_DATA_DIR`.
//!
//! `sam-vm-agent git-credential <operation>` is the git credential helper the agent
//! configures for repositories behind a GitHub installation (`sam_agent::git`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// The SAM VM agent.
#[derive(Debug, Parser)]
#[command(name = "sam-vm-agent", version)]
struct Cli {
    /// The agent's configuration (JSON, as cloud-init writes it).
    #[arg(long)]
    config: Option<PathBuf>,
    /// The file holding the node's callback token.
    #[arg(long)]
    callback_token_file: Option<PathBuf>,
    /// What to run instead of the agent.
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// The git credential helper: answers git's `get` from the control plane.
    GitCredential {
        /// The operation git asks for (`get`, `store`, `erase`).
        operation: String,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::GitCredential { operation }) = &cli.command {
        return match sam_agent::git::run_credential_helper(operation).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("sam-vm-agent git-credential: {e}");
                ExitCode::FAILURE
            }
        };
    }
    match sam_examples::node::run_vm_agent(
        cli.config.as_deref(),
        cli.callback_token_file.as_deref(),
    )
    .await
    {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sam-vm-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}
