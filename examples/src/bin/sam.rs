//! `sam`: the SAM SDK's command line.
//!
//! - `sam run`: run one task end to end on the embedded defaults (SQLite in the data
//!   directory, nodes as local `sam-vm-agent` processes, the demo agent by default).
//! - `sam cloud-init`: print the cloud-init user-data a node would boot with, so an
//!   operator can preview exactly what the node will run.
//!
//! Hidden: `sam vm-agent` and `sam demo-agent` run those roles from this executable,
//! for when `sam-vm-agent` and `sam-demo-agent` are not built next to it
//! (`cargo run --bin sam` builds only `sam`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use sam_cloudinit::NodeBoot;
use sam_core::{ProviderKind, Secret};
use sam_examples::embedded::{self, Embedded, EmbeddedOptions};
use sam_examples::quickstart::{Progress, RunRequest, run_task};

/// Run AI coding agents on cloud VMs.
#[derive(Debug, Parser)]
#[command(name = "sam", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run one task end to end on this machine, and wait for it.
    Run(RunArgs),
    /// Run the VM agent (as `sam-vm-agent` does).
    #[command(hide = true)]
    VmAgent {
        /// The agent's configuration.
        #[arg(long)]
        config: Option<PathBuf>,
        /// The file holding the node's callback token.
        #[arg(long)]
        callback_token_file: Option<PathBuf>,
    },
    /// Run the demo ACP agent on stdio (as `sam-demo-agent` does).
    #[command(hide = true)]
    DemoAgent,
    /// Print the cloud-init user-data a node boots with (it includes the callback token).
    CloudInit(CloudInitArgs),
}

#[derive(Debug, Args)]
struct RunArgs {
    /// The repository to work on (a local git repository).
    #[arg(long, default_value = ".")]
    repo: PathBuf,
    /// Where state lives: the database, the nodes, handed-over workspaces.
    #[arg(long, default_value = ".sam")]
    data_dir: PathBuf,
    /// The agent: demo (no model, works offline), claude, codex, gemini or opencode.
    #[arg(long, default_value = "demo", conflicts_with = "agent_command")]
    agent: String,
    /// Any ACP agent, as a shell command (run as the `custom` agent).
    #[arg(long)]
    agent_command: Option<String>,
    /// Print one JSON object at the end instead of the summary.
    #[arg(long)]
    json: bool,
    /// What the agent should do.
    prompt: String,
}

#[derive(Debug, Args)]
struct CloudInitArgs {
    /// The node's id.
    #[arg(long)]
    node_id: String,
    /// The control plane's base URL (https; plain http only for loopback).
    #[arg(long)]
    control_plane_url: String,
    /// A file holding the node's callback token.
    #[arg(long)]
    callback_token_file: PathBuf,
    /// Swap file size in MiB, 0 to 65536; 0 disables swap [default: 2048].
    #[arg(long)]
    swap_mb: Option<u32>,
    /// vm.swappiness, 0 to 100 [default: 60].
    #[arg(long)]
    swappiness: Option<u32>,
    /// The cloud the node runs on: hetzner, scaleway, gcp, local or fake [default: hetzner].
    #[arg(long)]
    provider: Option<ProviderKind>,
}

fn main() -> ExitCode {
    let outcome = match Cli::parse().command {
        Command::CloudInit(args) => cloud_init(&args),
        Command::Run(args) => {
            return runtime()
                .and_then(|rt| rt.block_on(run(args)))
                .unwrap_or_else(report);
        }
        Command::VmAgent {
            config,
            callback_token_file,
        } => runtime().and_then(|rt| {
            rt.block_on(sam_examples::node::run_vm_agent(
                config.as_deref(),
                callback_token_file.as_deref(),
            ))
        }),
        Command::DemoAgent => runtime().and_then(|rt| {
            rt.block_on(sam_agent::demo::serve(
                tokio::io::stdin(),
                tokio::io::stdout(),
            ))
            .map_err(Into::into)
        }),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            match err.downcast_ref::<sam_cloudinit::Error>() {
                Some(sam_cloudinit::Error::Invalid { errors }) => {
                    eprintln!("error: invalid node boot input");
                    for field in errors {
                        eprintln!("  {field}");
                    }
                }
                _ => eprintln!("error: {err:#}"),
            }
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

fn report(err: anyhow::Error) -> ExitCode {
    eprintln!("error: {err:#}");
    ExitCode::FAILURE
}

/// `sam run`: exit 0 only when the task completed.
async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let mut options = EmbeddedOptions::new(&args.data_dir)?;
    let agent = match &args.agent_command {
        Some(command) => {
            options.agent_command = Some(command.clone());
            embedded::CUSTOM_AGENT.to_owned()
        }
        None => args.agent.clone(),
    };
    let embedded = Embedded::start(options).await?;
    let request = RunRequest {
        repo: args.repo.clone(),
        prompt: args.prompt.clone(),
        agent,
    };
    let outcome = run_task(&embedded, &request, Progress::Auto).await;
    embedded.shutdown().await;
    let outcome = outcome?;
    if args.json {
        println!("{}", serde_json::to_string(&outcome)?);
    } else {
        println!("{}", outcome.summary());
    }
    Ok(if outcome.succeeded() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn cloud_init(args: &CloudInitArgs) -> anyhow::Result<()> {
    let mut boot = NodeBoot::new(
        args.node_id.as_str(),
        args.control_plane_url.as_str(),
        read_token(&args.callback_token_file)?,
    );
    if let Some(swap_mb) = args.swap_mb {
        boot.swap_mb = swap_mb;
    }
    if let Some(swappiness) = args.swappiness {
        boot.swappiness = swappiness;
    }
    if let Some(provider) = args.provider {
        boot.provider = provider;
    }
    print!("{}", boot.render()?.expose());
    Ok(())
}

/// Reads a token file, dropping the line end an editor or `echo` leaves behind.
fn read_token(path: &Path) -> anyhow::Result<Secret> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the callback token file {}", path.display()))?;
    Ok(Secret::new(text.trim_end_matches(['\n', '\r'])))
}
