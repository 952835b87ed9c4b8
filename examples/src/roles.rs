//! The helper roles every binary that may start nodes can play: the VM agent, the
//! demo agent and the git credential helper.
//!
//! The embedded control plane starts a node's VM agent as `sam-vm-agent` next to the
//! running executable, or, when that file is missing (a lone `sam` or `sam-server`
//! built with `cargo run --bin …`), as the running executable itself with the role's
//! subcommand (`vm-agent`, `demo-agent`); the VM agent in turn configures its own
//! executable as git's credential helper (`git-credential`). So each such binary
//! flattens [`Role`] into its subcommands, hidden from its help.

use std::path::PathBuf;

use clap::Subcommand;

/// A helper role, as hidden subcommands.
#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum Role {
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
    /// The git credential helper a VM agent run as a role configures (as
    /// `sam-vm-agent git-credential` does).
    #[command(hide = true)]
    GitCredential {
        /// The operation git asks for (`get`, `store`, `erase`).
        operation: String,
    },
}

impl Role {
    /// Plays the role until it ends.
    ///
    /// # Errors
    /// The role's own failure: the VM agent's start or serve errors, the demo
    /// agent's I/O errors, the credential helper's request errors.
    pub async fn run(self) -> anyhow::Result<()> {
        match self {
            Self::VmAgent {
                config,
                callback_token_file,
            } => crate::node::run_vm_agent(config.as_deref(), callback_token_file.as_deref()).await,
            Self::DemoAgent => {
                sam_agent::vm::demo::serve(tokio::io::stdin(), tokio::io::stdout()).await?;
                Ok(())
            }
            Self::GitCredential { operation } => {
                sam_agent::vm::git::run_credential_helper(&operation).await?;
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::Role;

    #[derive(Debug, Parser)]
    struct Host {
        #[command(subcommand)]
        role: Role,
    }

    #[test]
    fn the_fallback_arguments_of_the_embedded_plane_parse_as_roles() {
        // The exact arguments `Program::sibling_or_self` falls back to.
        let parse = |args: &[&str]| Host::try_parse_from(args).map(|h| h.role);
        assert_eq!(
            parse(&["x", "vm-agent"]).unwrap(),
            Role::VmAgent {
                config: None,
                callback_token_file: None
            }
        );
        assert_eq!(parse(&["x", "demo-agent"]).unwrap(), Role::DemoAgent);
        assert_eq!(
            parse(&["x", "git-credential", "get"]).unwrap(),
            Role::GitCredential {
                operation: "get".into()
            }
        );
        assert!(parse(&["x", "git-credential"]).is_err());
    }
}
