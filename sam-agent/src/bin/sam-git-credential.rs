//! The git credential helper on its own (see `sam_agent::vm::git`): git runs it as
//! `sam-git-credential <operation>` with the workspace's credential route and token
//! in its environment. `sam-vm-agent git-credential` does the same.

use std::process::ExitCode;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let operation = std::env::args().nth(1).unwrap_or_default();
    match sam_agent::vm::git::run_credential_helper(&operation).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sam-git-credential: {e}");
            ExitCode::FAILURE
        }
    }
}
