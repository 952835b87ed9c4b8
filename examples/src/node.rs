//! The VM agent process: reads its configuration and runs `sam_agent::VmAgent`.

use std::path::Path;

use anyhow::Context as _;
use sam_agent::NodeConfig;

/// Runs the VM agent until SIGINT or SIGTERM, logging to stderr.
///
/// With `config` (cloud-init's `/etc/sam/agent.json`) the token comes from
/// `token_file` or the file the configuration names, and the boot timeline from the
/// journal or cloud-init's log. Without it the agent runs under the local provider:
/// the configuration is the user data at `SAM_USER_DATA`, with `SAM_PORT` and
/// `SAM_DATA_DIR` ([`NodeConfig::from_local_env`]).
///
/// # Errors
/// When the configuration or token cannot be read, or the agent cannot serve.
pub async fn run_vm_agent(config: Option<&Path>, token_file: Option<&Path>) -> anyhow::Result<()> {
    // The agent's own log, on stderr (the node's journal or log file): plain lines
    // at INFO unless `RUST_LOG` says otherwise; the same whether it runs as
    // `sam-vm-agent` or as the `vm-agent` role of `sam` or `sam-server`.
    crate::logging::init(crate::logging::LogFormat::Text);
    let (node, boot_log) = match config {
        Some(path) => (
            NodeConfig::read(path)?,
            Some(sam_agent::vm::http::DEFAULT_BOOT_LOG.into()),
        ),
        None => (NodeConfig::from_local_env()?, None),
    };
    let mut node = node;
    // A cloud or QEMU node has only this binary: without a `sam-demo-agent` beside
    // it, the demo agent is this binary's own `demo-agent` role.
    if !node.agents.contains_key(sam_agent::vm::demo::DEMO_AGENT) {
        let demo = crate::embedded::Program::sibling_or_self(
            sam_agent::vm::demo::DEMO_BINARY,
            &["demo-agent"],
        )?;
        node.agents.insert(
            sam_agent::vm::demo::DEMO_AGENT.to_owned(),
            sam_agent::wire::AgentProgram {
                program: demo.program.display().to_string(),
                args: demo.args,
            },
        );
    }
    let token = node.token(token_file)?;
    tracing::info!(
        version = sam_agent::vm::http::VERSION,
        node = %node.node_id,
        port = node.port,
        control_plane = %node.control_plane_url,
        "sam-vm-agent starting"
    );
    node.serve(token, boot_log, shutdown_signal())
        .await
        .context("the VM agent stopped")
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
}
