//! A smoke test with a real agent: `@zed-industries/claude-agent-acp`, without a key.
//!
//! The agent is looked up at `$SAM_CLAUDE_AGENT_ACP`, then at
//! `$CARGO_TARGET_DIR/claude-agent-acp/node_modules/.bin/claude-agent-acp` (where
//! `.ci/run` installs it with npm). When it is absent the test prints a notice and
//! passes; in CI (`CI=true`) a missing agent is a failure.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use sam_agent::{AcpOptions, AcpSession, AgentCommand, SessionSettings};
use sam_core::{AgentFailure, AgentSession, ErrorCategory, Secret, SessionEvent};

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

/// The adapter's path, unless the test does not apply here (printed as a notice).
fn agent_or_skip() -> Option<PathBuf> {
    let Some(agent) = agent_path() else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI must install @zed-industries/claude-agent-acp (see .ci/run)"
        );
        eprintln!("notice: claude-agent-acp not installed; skipping the real-agent smoke test");
        return None;
    };
    if std::env::var_os("ANTHROPIC_API_KEY").is_some() {
        eprintln!("notice: ANTHROPIC_API_KEY is set; the no-key smoke test does not apply");
        return None;
    }
    Some(agent)
}

/// A session host for the adapter at `agent` in `workspace`, with `settings`.
fn session(agent: &Path, workspace: &Path, settings: SessionSettings) -> AcpSession {
    let command = AgentCommand::new(agent.display().to_string())
        .with_env("IS_SANDBOX", Secret::new("1"))
        .with_cwd(workspace);
    let options = AcpOptions {
        request_timeout: Duration::from_secs(60),
        ..AcpOptions::default()
    };
    AcpSession::new(Arc::new(command), options).with_settings(settings)
}

#[tokio::test]
async fn claude_agent_acp_without_a_key_fails_with_auth_error_once() {
    let Some(agent) = agent_or_skip() else {
        return;
    };
    let workspace = tempfile::tempdir().unwrap();
    let session = session(&agent, workspace.path(), SessionSettings::default());
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

/// The adapter lists its models in `session/new` (it needs no key for that): a model
/// it lists is selected with `session/set_model` and the system-prompt addition goes
/// in `_meta`, so the session opens and only the prompt fails for want of a key; a
/// model it does not list fails the session with the models it offers.
#[tokio::test]
async fn claude_agent_acp_takes_a_listed_model_and_refuses_another() {
    let Some(agent) = agent_or_skip() else {
        return;
    };
    let workspace = tempfile::tempdir().unwrap();
    let listed = SessionSettings {
        model: Some("haiku".to_owned()),
        system_prompt: Some("Review only; change nothing.".to_owned()),
        ..SessionSettings::default()
    };
    let host = session(&agent, workspace.path(), listed);
    host.initialize().await.expect("initialize needs no key");
    let id = host
        .new_session(workspace.path())
        .await
        .expect("session/new needs no key (IS_SANDBOX=1), and haiku is listed");
    let failure = tokio::time::timeout(Duration::from_secs(120), host.prompt(&id, "Say hello."))
        .await
        .expect("the prompt fails promptly")
        .expect_err("a prompt without a key fails");
    assert_eq!(failure.category, ErrorCategory::AuthError, "{failure}");
    drop(host);

    let unknown = SessionSettings {
        model: Some("no-such-model".to_owned()),
        ..SessionSettings::default()
    };
    let host = session(&agent, workspace.path(), unknown);
    host.initialize().await.expect("initialize needs no key");
    let error = host
        .new_session(workspace.path())
        .await
        .expect_err("a model the adapter does not list fails the session");
    assert_eq!(error.failure, AgentFailure::Unsupported, "{error}");
    assert_eq!(error.category, ErrorCategory::InvalidConfig, "{error}");
    assert!(
        error.message.contains("no-such-model") && error.message.contains("haiku"),
        "{error}"
    );
}
