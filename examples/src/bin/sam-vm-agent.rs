//! `sam-vm-agent`: the agent on a node (see `sam_examples::node`).
//!
//! On a cloud node: `sam-vm-agent --config /etc/sam/agent.json --callback-token-file
//! /etc/sam/callback-token`. Under the local provider: no arguments; the provider
//! passes `SAM_USER_DATA`, `SAM_PORT` and `SAM_DATA_DIR`.
//!
//! `sam-vm-agent git-credential <operation>` is the git credential helper the agent
//! configures for repositories behind a GitHub installation (`sam_agent::vm::git`), and
//! `sam-vm-agent demo-agent` the demo agent of a node that has no `sam-demo-agent`
//! (`sam_examples::roles`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use sam_examples::roles::Role;

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
    /// What to run instead of the agent: the git credential helper the agent
    /// configures (`git-credential`), or the demo agent (`demo-agent`).
    #[command(subcommand)]
    command: Option<Role>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(role) = cli.command {
        return match role.run().await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("sam-vm-agent: {e:#}");
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
