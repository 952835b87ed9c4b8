//! `sam`: the SAM SDK's command line.
//!
//! - `sam cloud-init`: print the cloud-init user-data a node would boot with, so an
//!   operator can preview exactly what the node will run.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use sam_cloudinit::NodeBoot;
use sam_core::{ProviderKind, Secret};

/// Run AI coding agents on cloud VMs.
#[derive(Debug, Parser)]
#[command(name = "sam", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the cloud-init user-data a node boots with (it includes the callback token).
    CloudInit(CloudInitArgs),
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
