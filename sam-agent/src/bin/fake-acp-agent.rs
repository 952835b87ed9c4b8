//! A scripted ACP agent on stdio, for tests: see `sam_agent::vm::fake`.
//!
//! The script comes from `FAKE_ACP_*` environment variables. A scripted crash exits
//! with status 3 and a line on stderr.

use sam_agent::vm::fake::{FakeAgentScript, FakeExit, serve};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let script = FakeAgentScript::from_env();
    match serve(&script, tokio::io::stdin(), tokio::io::stdout()).await {
        Ok(FakeExit::Closed) => {}
        Ok(FakeExit::Crashed) => {
            eprintln!("fake-acp-agent: scripted crash");
            std::process::exit(3);
        }
        Err(e) => {
            eprintln!("fake-acp-agent: {e}");
            std::process::exit(1);
        }
    }
}
