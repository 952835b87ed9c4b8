//! Any agent output through the ACP host: an in-process "agent" answers each
//! message the host writes with the next line of the input, sending notifications
//! (`session/update`) on without waiting (and going on after 20 ms without a
//! message), so responses, requests such as `fs/read_text_file` and notifications
//! all arrive in turn; then it ends. The host's `initialize`, `session/new` and `session/prompt`
//! end in a result or a typed error, never a panic or a hang, and file requests stay
//! inside the workspace (the file outside it is never written).
#![no_main]

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use async_trait::async_trait;
use libfuzzer_sys::fuzz_target;
use sam_agent::vm::CrashPolicy;
use sam_agent::{AcpOptions, AcpSession, AgentIo, AgentLauncher};
use sam_core::{AgentError, AgentSession, RetryPolicy};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};

static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
});

/// Starts the scripted agent once; a second start (crash recovery) gets an agent
/// that ends at once.
#[derive(Debug)]
struct Scripted {
    lines: std::sync::Mutex<Option<Vec<String>>>,
}

#[async_trait]
impl AgentLauncher for Scripted {
    async fn launch(&self) -> Result<AgentIo, AgentError> {
        let lines = self.lines.lock().expect("lines").take().unwrap_or_default();
        let (host_in, agent_in) = tokio::io::duplex(64 * 1024);
        let (mut agent_out, host_out) = tokio::io::duplex(64 * 1024);
        tokio::spawn(async move {
            let mut from_host = BufReader::new(agent_in).lines();
            let mut wait = true;
            for line in lines {
                // Wait for the host's next message, but not for ever: an input whose
                // lines answer nothing the host asked must still run to its end.
                if wait {
                    match tokio::time::timeout(Duration::from_millis(20), from_host.next_line())
                        .await
                    {
                        Ok(Ok(Some(_))) | Err(_) => {}
                        Ok(_) => break,
                    }
                }
                if agent_out.write_all(line.as_bytes()).await.is_err()
                    || agent_out.write_all(b"\n").await.is_err()
                {
                    break;
                }
                // A notification needs no answer: the next line follows at once, as
                // a working agent streams updates before it answers the prompt.
                wait = !is_notification(&line);
            }
        });
        Ok(AgentIo::from_streams(host_in, host_out))
    }
}

/// Whether `line` is a JSON-RPC notification (a method without an id).
fn is_notification(line: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(line)
        .is_ok_and(|m| m.get("method").is_some() && m.get("id").is_none())
}

fn options() -> AcpOptions {
    AcpOptions {
        prompt_retry: RetryPolicy {
            max_attempts: 1,
            ..RetryPolicy::default()
        },
        crash: CrashPolicy {
            max_restarts: 0,
            ..CrashPolicy::default()
        },
        request_timeout: Duration::from_millis(500),
        ..AcpOptions::default()
    }
}

fuzz_target!(|text: &str| {
    let dir = tempfile::tempdir().expect("a temp dir");
    let workspace = dir.path().join("ws");
    std::fs::create_dir(&workspace).expect("the workspace");
    let outside = dir.path().join("outside.txt");
    std::fs::write(&outside, "outside\n").expect("the outside file");
    let launcher = Scripted {
        lines: std::sync::Mutex::new(Some(text.lines().map(str::to_owned).collect())),
    };
    let session = AcpSession::new(Arc::new(launcher), options());
    RUNTIME.block_on(async {
        let turn = async {
            session.initialize().await?;
            let id = session.new_session(&workspace).await?;
            session.prompt(&id, "fix it").await?;
            session.cancel(&id).await
        };
        let ended = tokio::time::timeout(Duration::from_secs(10), turn).await;
        assert!(ended.is_ok(), "the host hung on {text:?}");
    });
    assert_eq!(
        std::fs::read_to_string(&outside).expect("the outside file"),
        "outside\n"
    );
});
