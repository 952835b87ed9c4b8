//! A smoke test with a real agent: `@zed-industries/claude-agent-acp`, without a key.
//!
//! The agent is looked up at `$SAM_CLAUDE_AGENT_ACP`, then at
//! `$CARGO_TARGET_DIR/claude-agent-acp/node_modules/.bin/claude-agent-acp` (where
//! `.ci/run` installs it with npm). When it is absent the test prints a notice and
//! passes; in CI (`CI=true`) a missing agent is a failure.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use sam_agent::{AcpOptions, AcpSession, AgentCommand};
use sam_core::{AgentSession, ErrorCategory, Secret, SessionEvent};

fn agent_path() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("SAM_CLAUDE_AGENT_ACP") {
        return Some(PathBuf::from(path));
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let path = target.join("claude-agent-acp/node_modules/.bin/claude-agent-acp");
    path.is_file().then_some(path)
}

#[tokio::test]
async fn claude_agent_acp_without_a_key_fails_with_auth_error_once() {
    let Some(agent) = agent_path() else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI must install @zed-industries/claude-agent-acp (see .ci/run)"
        );
        eprintln!("notice: claude-agent-acp not installed; skipping the real-agent smoke test");
        return;
    };
    if std::env::var_os("ANTHROPIC_API_KEY").is_some() {
        eprintln!("notice: ANTHROPIC_API_KEY is set; the no-key smoke test does not apply");
        return;
    }
    let workspace = tempfile::tempdir().unwrap();
    let command = AgentCommand::new(agent.display().to_string())
        .with_env("IS_SANDBOX", Secret::new("1"))
        .with_cwd(workspace.path());
    let options = AcpOptions {
        request_timeout: Duration::from_secs(60),
        ..AcpOptions::default()
    };
    let session = AcpSession::new(Arc::new(command), options);
    let mut events = session.events();

    let info = session.initialize().await.expect("initialize needs no key");
    assert_eq!(info.protocol_version, 1);

    let failure = match session.new_session(workspace.path()).await {
        Ok(id) => tokio::time::timeout(Duration::from_secs(120), session.prompt(&id, "Say hello."))
            .await
            .expect("the prompt fails promptly")
            .expect_err("a prompt without a key fails"),
        Err(e) => e,
    };
    assert_eq!(failure.category, ErrorCategory::AuthError, "{failure}");
    let mut retries = 0;
    while let Some(Some(event)) = events.next().now_or_never() {
        if matches!(event.event, SessionEvent::PromptRetry { .. }) {
            retries += 1;
        }
    }
    assert_eq!(retries, 0, "an auth error is never retried");
}
