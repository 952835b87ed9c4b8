//! The real ACP adapters from npm, without keys or network: what each one does, as
//! the host meets it. `@zed-industries/claude-agent-acp` 0.23.1,
//! `@zed-industries/codex-acp` 0.16.0, `@google/gemini-cli` 0.61.0 and `opencode-ai`
//! 1.18.33 (`.ci/run` installs them with npm at these versions).
//!
//! The adapters are looked up in `$SAM_ACP_ADAPTERS/node_modules/.bin`, then in
//! `$CARGO_TARGET_DIR/acp-adapters/node_modules/.bin` (where `.ci/run` installs
//! them). When one is absent its test prints a notice and passes; in CI
//! (`CI=true`) a missing adapter is a failure.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use sam_agent::vm::SessionSettings;
use sam_agent::{AcpOptions, AcpSession, AgentCommand};
use sam_core::{AgentFailure, AgentSession, ErrorCategory, Secret, SessionEvent};

fn adapter_path(bin: &str) -> Option<PathBuf> {
    let dir = match std::env::var_os("SAM_ACP_ADAPTERS") {
        Some(dir) => PathBuf::from(dir),
        None => std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"))
            .join("acp-adapters"),
    };
    let path = dir.join("node_modules/.bin").join(bin);
    path.is_file().then_some(path)
}

/// The adapter's path, unless the test does not apply here (printed as a notice):
/// the adapter is missing (a failure in CI), or `key` is set in this environment.
fn adapter_or_skip(bin: &str, key: &str) -> Option<PathBuf> {
    let Some(agent) = adapter_path(bin) else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI must install the ACP adapter {bin} (see .ci/run)"
        );
        eprintln!("notice: {bin} not installed; skipping its real-adapter test");
        return None;
    };
    if std::env::var_os(key).is_some() {
        eprintln!("notice: {key} is set; the no-key test of {bin} does not apply");
        return None;
    }
    Some(agent)
}

fn agent_or_skip() -> Option<PathBuf> {
    adapter_or_skip("claude-agent-acp", "ANTHROPIC_API_KEY")
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

/// A host for `command`, whose credential variables are `credentials`.
fn host(command: AgentCommand, credentials: &[&str]) -> AcpSession {
    let options = AcpOptions {
        request_timeout: Duration::from_secs(90),
        ..AcpOptions::default()
    };
    AcpSession::new(Arc::new(command), options).with_settings(SessionSettings {
        credentials: credentials.iter().map(|c| (*c).to_owned()).collect(),
        ..SessionSettings::default()
    })
}

/// gemini-cli without a key refuses `session/new` at once with `-32000`; the error
/// names the variable that would work.
#[tokio::test]
async fn gemini_without_a_key_fails_fast_with_auth_error() {
    let Some(gemini) = adapter_or_skip("gemini", "GEMINI_API_KEY") else {
        return;
    };
    let workspace = tempfile::tempdir().unwrap();
    let command = AgentCommand::new(gemini.display().to_string())
        .with_args(["--acp"])
        .with_cwd(workspace.path());
    let host = host(command, &[]);
    let outcome = tokio::time::timeout(Duration::from_secs(120), async {
        host.initialize().await?;
        host.new_session(workspace.path()).await
    })
    .await
    .expect("gemini answers within two minutes");
    let error = outcome.expect_err("no key, no session");
    assert_eq!(error.category, ErrorCategory::AuthError, "{error}");
    assert!(error.message.contains("GEMINI_API_KEY"), "{error}");
}

/// codex-acp without a key: `session/new` is refused, and the error names both
/// variables its `authMethods` accept.
#[tokio::test]
async fn codex_without_a_key_names_the_variables_that_would_work() {
    let Some(codex) = adapter_or_skip("codex-acp", "OPENAI_API_KEY") else {
        return;
    };
    let workspace = tempfile::tempdir().unwrap();
    // codex keeps what `authenticate` gave it under CODEX_HOME: start from none.
    let home = tempfile::tempdir().unwrap();
    let host = host(
        AgentCommand::new(codex.display().to_string())
            .with_env("CODEX_HOME", Secret::new(home.path().display().to_string()))
            .with_cwd(workspace.path()),
        &[],
    );
    host.initialize().await.expect("initialize needs no key");
    let error = host
        .new_session(workspace.path())
        .await
        .expect_err("codex-acp refuses a session until authenticate");
    assert_eq!(error.category, ErrorCategory::AuthError, "{error}");
    assert!(
        error.message.contains("OPENAI_API_KEY") && error.message.contains("CODEX_API_KEY"),
        "{error}"
    );
}

/// codex-acp with a (fake) key: the host authenticates with `openai-api-key`, so
/// `session/new` succeeds; the prompt then fails on the network, not on auth, in
/// bounded time.
#[tokio::test]
async fn codex_with_a_key_authenticates_and_fails_later_on_the_network() {
    let Some(codex) = adapter_or_skip("codex-acp", "OPENAI_API_KEY") else {
        return;
    };
    let workspace = tempfile::tempdir().unwrap();
    let home = tempfile::tempdir().unwrap();
    let command = AgentCommand::new(codex.display().to_string())
        .with_env("OPENAI_API_KEY", Secret::new("sk-fake-not-a-real-key"))
        .with_env("CODEX_HOME", Secret::new(home.path().display().to_string()))
        .with_cwd(workspace.path());
    let host = host(command, &["OPENAI_API_KEY"]);
    host.initialize().await.expect("initialize needs no key");
    let id = host
        .new_session(workspace.path())
        .await
        .expect("authenticate opened the way to session/new");
    let failure = tokio::time::timeout(Duration::from_secs(240), host.prompt(&id, "Say hello."))
        .await
        .expect("the prompt fails in bounded time")
        .expect_err("there is no network to reach the model");
    assert_ne!(failure.category, ErrorCategory::AuthError, "{failure}");
    assert_ne!(failure.failure, AgentFailure::Spawn, "{failure}");
}

/// opencode answers `initialize` and opens a session without a key (it falls back to
/// its own free models).
#[tokio::test]
async fn opencode_opens_a_session_without_a_key() {
    let Some(opencode) = adapter_or_skip("opencode", "OPENCODE_API_KEY") else {
        return;
    };
    let workspace = tempfile::tempdir().unwrap();
    let command = AgentCommand::new(opencode.display().to_string())
        .with_args(["acp"])
        .with_cwd(workspace.path());
    let host = host(command, &[]);
    let info = tokio::time::timeout(Duration::from_secs(120), host.initialize())
        .await
        .expect("opencode answers initialize")
        .expect("initialize needs no key");
    assert_eq!(info.protocol_version, 1);
    host.new_session(workspace.path())
        .await
        .expect("opencode opens a session without a key");
}
