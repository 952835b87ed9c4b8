//! `sam-demo-agent`: the SAM **demo** ACP agent on stdio; it uses no model (see
//! `sam_agent::vm::demo`).

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    match sam_agent::vm::demo::serve(tokio::io::stdin(), tokio::io::stdout()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sam-demo-agent: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
