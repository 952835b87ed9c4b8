//! The ACP session host against the scripted fake agent, run as a real process.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use sam_agent::vm::fake::{FakeAgentScript, FakeCrash};
use sam_agent::vm::{CrashPolicy, PermissionMode, SessionSettings};
use sam_agent::{AcpOptions, AcpSession, AgentCommand};
use sam_core::{
    AgentError, AgentFailure, AgentSession, ErrorCategory, RetryOn, RetryPolicy, Secret,
    SessionEvent, StopReason, TaskStatus, TimedEvent,
};
use tempfile::TempDir;

fn fast_options() -> AcpOptions {
    AcpOptions {
        permission: PermissionMode::AllowAll,
        prompt_retry: RetryPolicy {
            initial_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(40),
            max_attempts: 3,
            budget: Duration::from_secs(20),
            jitter: 0.0,
            per_attempt_timeout: None,
            retry_on: RetryOn::RetryableAndCapacity,
        },
        crash: CrashPolicy {
            max_restarts: 3,
            decay: Duration::from_secs(300),
            min_uptime: Duration::ZERO,
            recovery_timeout: Duration::from_secs(20),
        },
        request_timeout: Duration::from_secs(20),
        idle_timeout: Duration::from_secs(20),
    }
}

fn command(script: &FakeAgentScript) -> AgentCommand {
    script.to_env().into_iter().fold(
        AgentCommand::new(env!("CARGO_BIN_EXE_fake-acp-agent")),
        |c, (k, v)| c.with_env(k, Secret::new(v)),
    )
}

/// A workspace with one file, `hello.txt`, and a secret next to it.
fn workspace() -> TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("ws")).unwrap();
    std::fs::write(dir.path().join("ws/hello.txt"), "hello\nworld\n").unwrap();
    std::fs::write(dir.path().join("outside.txt"), "secret\n").unwrap();
    dir
}

/// What one prompt turn produced.
struct Turn {
    result: Result<StopReason, AgentError>,
    events: Vec<SessionEvent>,
}

impl Turn {
    fn texts(&self) -> Vec<String> {
        self.events
            .iter()
            .filter_map(|e| match e {
                SessionEvent::Update { update }
                    if update["sessionUpdate"] == "agent_message_chunk" =>
                {
                    update["content"]["text"].as_str().map(ToOwned::to_owned)
                }
                _ => None,
            })
            .collect()
    }

    fn count(&self, kind: &str) -> usize {
        self.events
            .iter()
            .filter(
                |e| matches!(e, SessionEvent::Update { update } if update["sessionUpdate"] == kind),
            )
            .count()
    }

    fn retries(&self) -> Vec<(u32, ErrorCategory)> {
        self.events
            .iter()
            .filter_map(|e| match e {
                SessionEvent::PromptRetry {
                    attempt, category, ..
                } => Some((*attempt, *category)),
                _ => None,
            })
            .collect()
    }
}

fn drain(events: &mut futures::stream::BoxStream<'static, TimedEvent>) -> Vec<SessionEvent> {
    let mut out = Vec::new();
    while let Some(Some(event)) = events.next().now_or_never() {
        out.push(event.event);
    }
    out
}

/// Starts the fake agent as a process, opens a session in `root/ws`, sends one prompt.
async fn turn(script: &FakeAgentScript, options: AcpOptions, root: &Path) -> Turn {
    let session = AcpSession::new(Arc::new(command(script)), options);
    let mut events = session.events();
    session.initialize().await.unwrap();
    let id = session.new_session(&root.join("ws")).await.unwrap();
    let result = session.prompt(&id, "fix the flaky test").await;
    Turn {
        result,
        events: drain(&mut events),
    }
}

#[tokio::test]
async fn a_turn_streams_every_update_and_ends() {
    let dir = workspace();
    let turn = turn(&FakeAgentScript::default(), fast_options(), dir.path()).await;
    assert_eq!(turn.result.clone().unwrap(), StopReason::EndTurn);
    assert_eq!(turn.count("user_message_chunk"), 1);
    assert_eq!(turn.texts(), ["working"]);
    // An update kind no specification defines is passed through, not dropped.
    assert_eq!(turn.count("fake_kind_from_the_future"), 1);
    assert_eq!(
        turn.events.last(),
        Some(&SessionEvent::Stopped {
            reason: StopReason::EndTurn
        })
    );
}

/// Prompt failures: (error code, text, prompts that fail, expected outcome, expected retries).
async fn check_retry(
    code: i64,
    text: &str,
    failures: u32,
    expected: Result<StopReason, ErrorCategory>,
    retries: &[(u32, ErrorCategory)],
) {
    let dir = workspace();
    let script = FakeAgentScript {
        fail_prompts: failures,
        fail_text: text.to_owned(),
        fail_code: code,
        ..FakeAgentScript::default()
    };
    let turn = turn(&script, fast_options(), dir.path()).await;
    match (&turn.result, expected) {
        (Ok(got), Ok(want)) => assert_eq!(*got, want, "{text}"),
        (Err(e), Err(category)) => {
            assert_eq!(e.category, category, "{text}: {e}");
            assert_eq!(e.failure, AgentFailure::Rpc);
            assert_eq!(e.code, Some(code));
        }
        (got, want) => panic!("{text}: got {got:?}, want {want:?}"),
    }
    assert_eq!(turn.retries(), retries, "{text}");
    assert_eq!(
        turn.count("user_message_chunk"),
        1,
        "the user message is recorded once"
    );
}

#[tokio::test]
async fn overloads_are_retried_then_succeed() {
    use ErrorCategory::TransientCapacity as C;
    let text = r#"Internal error: API Error: 529 {"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
    check_retry(-32603, text, 2, Ok(StopReason::EndTurn), &[(1, C), (2, C)]).await;
}

#[tokio::test]
async fn transient_errors_give_up_after_the_policy() {
    use ErrorCategory::Transient as T;
    let text = "provider returned HTTP 502 Bad Gateway";
    check_retry(-32603, text, 5, Err(T), &[(1, T), (2, T)]).await;
}

#[tokio::test]
async fn auth_quota_and_invalid_fail_at_once() {
    check_retry(
        -32000,
        "Authentication required",
        1,
        Err(ErrorCategory::AuthError),
        &[],
    )
    .await;
    let quota = r#"429 {"error":{"message":"You exceeded your current quota","type":"insufficient_quota","code":"insufficient_quota"}}"#;
    check_retry(-32603, quota, 1, Err(ErrorCategory::QuotaExceeded), &[]).await;
    check_retry(
        -32602,
        "Invalid params",
        1,
        Err(ErrorCategory::InvalidConfig),
        &[],
    )
    .await;
    check_retry(
        -32603,
        "Internal error: invalid tool call payload",
        1,
        Err(ErrorCategory::Unknown),
        &[],
    )
    .await;
}

fn crashing(dir: &Path, load_session: bool, once: bool) -> FakeAgentScript {
    FakeAgentScript {
        load_session,
        crash: Some(FakeCrash::MidPrompt),
        crash_marker: once.then(|| dir.join("crashed-once")),
        record: Some(dir.join("record.log")),
        ..FakeAgentScript::default()
    }
}

fn crashes(turn: &Turn) -> Vec<bool> {
    turn.events
        .iter()
        .filter_map(|e| match e {
            SessionEvent::Crashed { resumable, .. } => Some(*resumable),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn a_crash_with_load_session_restarts_and_loads_the_same_session() {
    let dir = workspace();
    let script = crashing(dir.path(), true, true);
    let turn = turn(&script, fast_options(), dir.path()).await;
    assert_eq!(turn.result.clone().unwrap(), StopReason::EndTurn);
    assert_eq!(crashes(&turn), [true]);
    assert!(
        turn.events
            .contains(&SessionEvent::Restarted { restarts: 1 })
    );
    let crash_reason = turn.events.iter().find_map(|e| match e {
        SessionEvent::Crashed { reason, .. } => Some(reason.clone()),
        _ => None,
    });
    assert!(
        crash_reason.unwrap().contains("scripted crash"),
        "the reason carries stderr"
    );
    // The history the agent replayed on load is not streamed a second time.
    assert!(!turn.texts().iter().any(|t| t.contains("history")));
    assert_eq!(turn.count("user_message_chunk"), 1);
    let record = std::fs::read_to_string(dir.path().join("record.log")).unwrap();
    let lines: Vec<&str> = record.lines().collect();
    assert_eq!(
        lines,
        [
            "initialize -",
            "session/new -",
            "session/prompt fake-session-1",
            "initialize -",
            "session/load fake-session-1",
            "session/prompt fake-session-1",
        ]
    );
}

#[tokio::test]
async fn a_crash_without_load_session_is_reported() {
    let dir = workspace();
    let turn = turn(
        &crashing(dir.path(), false, true),
        fast_options(),
        dir.path(),
    )
    .await;
    let error = turn.result.clone().unwrap_err();
    assert_eq!(error.failure, AgentFailure::Crash);
    assert!(error.message.contains("loadSession"), "{error}");
    assert!(error.message.contains("exit status: 3"), "{error}");
    assert_eq!(crashes(&turn), [false]);
    assert!(turn.retries().is_empty(), "a crash is not a prompt retry");
}

#[tokio::test]
async fn an_exit_soon_after_start_is_a_crash_not_a_restart() {
    let dir = workspace();
    let mut options = fast_options();
    options.crash.min_uptime = Duration::from_secs(60);
    let turn = turn(&crashing(dir.path(), true, true), options, dir.path()).await;
    let error = turn.result.clone().unwrap_err();
    assert_eq!(error.failure, AgentFailure::Crash);
    assert!(error.message.contains("after it started"), "{error}");
    assert_eq!(crashes(&turn), [false]);
}

#[tokio::test]
async fn restarts_stop_at_the_budget() {
    let dir = workspace();
    let mut options = fast_options();
    options.crash.max_restarts = 2;
    let turn = turn(&crashing(dir.path(), true, false), options, dir.path()).await;
    let error = turn.result.clone().unwrap_err();
    assert_eq!(error.failure, AgentFailure::Crash);
    assert!(error.message.contains("restarted 2 times"), "{error}");
    assert_eq!(crashes(&turn), [true, true, false]);
    let restarts: Vec<_> = turn
        .events
        .iter()
        .filter(|e| matches!(e, SessionEvent::Restarted { .. }))
        .collect();
    assert_eq!(restarts.len(), 2);
}

#[tokio::test]
async fn an_agent_that_exits_at_once_fails_initialize_with_a_crash() {
    let script = FakeAgentScript {
        crash: Some(FakeCrash::AtStart),
        ..FakeAgentScript::default()
    };
    let session = AcpSession::new(Arc::new(command(&script)), fast_options());
    let error = session.initialize().await.unwrap_err();
    assert_eq!(error.failure, AgentFailure::Crash);
    assert!(error.message.contains("scripted crash"), "{error}");
}

#[tokio::test]
async fn a_missing_agent_is_a_spawn_error() {
    let session = AcpSession::new(
        Arc::new(AgentCommand::new("/nonexistent/claude-agent-acp")),
        fast_options(),
    );
    let error = session.initialize().await.unwrap_err();
    assert_eq!(error.failure, AgentFailure::Spawn);
}

#[tokio::test]
async fn cancel_ends_a_slow_turn() {
    let dir = workspace();
    let script = FakeAgentScript {
        slow: Duration::from_secs(30),
        record: Some(dir.path().join("record.log")),
        ..FakeAgentScript::default()
    };
    let session = Arc::new(AcpSession::new(Arc::new(command(&script)), fast_options()));
    let mut events = session.events();
    session.initialize().await.unwrap();
    let id = session.new_session(&dir.path().join("ws")).await.unwrap();
    let prompt = {
        let (session, id) = (Arc::clone(&session), id.clone());
        tokio::spawn(async move { session.prompt(&id, "take your time").await })
    };
    // Wait until the agent is working, then cancel.
    while let Some(event) = events.next().await {
        if matches!(&event.event, SessionEvent::Update { update } if update["content"]["text"] == "working")
        {
            break;
        }
    }
    session.cancel(&id).await.unwrap();
    let reason = tokio::time::timeout(Duration::from_secs(10), prompt)
        .await
        .expect("cancel ends the turn well before the agent's 30 s")
        .unwrap()
        .unwrap();
    assert_eq!(reason, StopReason::Cancelled);
    assert_eq!(reason.outcome(), TaskStatus::Cancelled);
    let record = std::fs::read_to_string(dir.path().join("record.log")).unwrap();
    assert!(record.contains("session/cancel fake-session-1"), "{record}");
}

#[tokio::test]
async fn permission_requests_follow_the_mode() {
    for (mode, expected) in [
        (PermissionMode::AllowAll, "permission: allow"),
        (PermissionMode::ReadOnly, "permission: reject"),
        (PermissionMode::RejectAll, "permission: reject"),
    ] {
        let dir = workspace();
        let script = FakeAgentScript {
            ask_permission: true,
            ..FakeAgentScript::default()
        };
        let options = AcpOptions {
            permission: mode,
            ..fast_options()
        };
        let turn = turn(&script, options, dir.path()).await;
        assert_eq!(turn.result.clone().unwrap(), StopReason::EndTurn);
        assert!(
            turn.texts().contains(&expected.to_owned()),
            "{mode:?}: {:?}",
            turn.texts()
        );
    }
}

/// File requests: (read path, write path, expected reports).
async fn check_files(read: Option<&str>, write: Option<&str>, expected: &[&str]) -> TempDir {
    let dir = workspace();
    let script = FakeAgentScript {
        read_path: read.map(ToOwned::to_owned),
        write_path: write.map(ToOwned::to_owned),
        ..FakeAgentScript::default()
    };
    let turn = turn(&script, fast_options(), dir.path()).await;
    assert_eq!(turn.result.clone().unwrap(), StopReason::EndTurn);
    let reports: Vec<String> = turn
        .texts()
        .into_iter()
        .filter(|t| t.starts_with("read") || t.starts_with("write"))
        .collect();
    assert_eq!(reports.len(), expected.len(), "{reports:?}");
    for (report, want) in reports.iter().zip(expected) {
        assert!(
            report.starts_with(want),
            "{report:?} should start with {want:?}"
        );
    }
    dir
}

#[tokio::test]
async fn file_requests_stay_inside_the_workspace() {
    check_files(Some("hello.txt"), None, &["read: 12 bytes"]).await;
    check_files(Some("../../etc/passwd"), None, &["read: error -32602"]).await;
    check_files(Some("/etc/passwd"), None, &["read: error -32602"]).await;
    check_files(Some("../outside.txt"), None, &["read: error -32602"]).await;
    check_files(Some("missing.txt"), None, &["read: error -32002"]).await;
    let dir = check_files(None, Some("notes/new.txt"), &["write: ok"]).await;
    assert_eq!(
        std::fs::read_to_string(dir.path().join("ws/notes/new.txt")).unwrap(),
        "written by the fake agent\n"
    );
    let dir = check_files(None, Some("../escape.txt"), &["write: error -32602"]).await;
    assert!(!dir.path().join("escape.txt").exists());
    let outside = tempfile::tempdir().unwrap();
    let absolute = outside.path().join("escape.txt");
    check_files(
        None,
        Some(absolute.to_str().unwrap()),
        &["write: error -32602"],
    )
    .await;
    assert!(
        !absolute.exists(),
        "an absolute path outside is not written"
    );
}

#[tokio::test]
async fn a_symlink_out_of_the_workspace_is_refused() {
    let dir = workspace();
    std::os::unix::fs::symlink(dir.path().join("outside.txt"), dir.path().join("ws/link")).unwrap();
    let script = FakeAgentScript {
        read_path: Some("link".to_owned()),
        write_path: Some("link".to_owned()),
        ..FakeAgentScript::default()
    };
    let turn = turn(&script, fast_options(), dir.path()).await;
    let texts = turn.texts();
    assert!(
        texts.iter().any(|t| t.starts_with("read: error -32602")),
        "{texts:?}"
    );
    assert!(
        texts.iter().any(|t| t.starts_with("write: error -32602")),
        "{texts:?}"
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("outside.txt")).unwrap(),
        "secret\n"
    );
}

#[tokio::test]
async fn stop_reasons_map_to_outcomes() {
    for (reason, stop, outcome) in [
        ("end_turn", StopReason::EndTurn, TaskStatus::Completed),
        ("refusal", StopReason::Refusal, TaskStatus::Failed),
        ("max_tokens", StopReason::MaxTokens, TaskStatus::Failed),
        (
            "max_turn_requests",
            StopReason::MaxTurnRequests,
            TaskStatus::Failed,
        ),
        ("cancelled", StopReason::Cancelled, TaskStatus::Cancelled),
    ] {
        let dir = workspace();
        let script = FakeAgentScript {
            stop_reason: reason.to_owned(),
            ..FakeAgentScript::default()
        };
        let turn = turn(&script, fast_options(), dir.path()).await;
        let got = turn.result.clone().unwrap();
        assert_eq!(got, stop, "{reason}");
        assert_eq!(got.outcome(), outcome, "{reason}");
    }
}

#[tokio::test]
async fn api_keys_reach_only_the_agent() {
    const VAR: &str = "SAM_TEST_AGENT_API_KEY";
    let script = FakeAgentScript {
        report_env: Some(VAR.to_owned()),
        ..FakeAgentScript::default()
    };
    let command = command(&script).with_env(VAR, Secret::new("sk-ant-test-0123456789"));
    assert!(!format!("{command:?}").contains("sk-ant-test"));
    let session = AcpSession::new(Arc::new(command), fast_options());
    let info = session.initialize().await.unwrap();
    assert_eq!(
        info.name.unwrap(),
        format!("fake-acp-agent ({VAR} set) {}", env!("CARGO_PKG_VERSION"))
    );
    assert!(
        std::env::var_os(VAR).is_none(),
        "the key never enters this process's environment"
    );
}

#[tokio::test]
async fn load_session_needs_the_capability() {
    let dir = workspace();
    for load_session in [false, true] {
        let script = FakeAgentScript {
            load_session,
            ..FakeAgentScript::default()
        };
        let session = AcpSession::new(Arc::new(command(&script)), fast_options());
        let info = session.initialize().await.unwrap();
        assert_eq!(info.load_session, load_session);
        assert_eq!(info.protocol_version, 1);
        let id = sam_core::SessionId("earlier".to_owned());
        let loaded = session.load_session(&id, &dir.path().join("ws")).await;
        assert_eq!(loaded.is_ok(), load_session, "{loaded:?}");
        if let Err(e) = loaded {
            assert_eq!(e.category, ErrorCategory::InvalidConfig);
        }
    }
}

/// Every request the fake agent received, as (method, params), from its transcript.
fn requests(transcript: &Path) -> Vec<(String, serde_json::Value)> {
    std::fs::read_to_string(transcript)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter_map(|m| {
            let method = m.get("method")?.as_str()?.to_owned();
            Some((method, m.get("params").cloned().unwrap_or_default()))
        })
        .collect()
}

/// A session with `settings` against the fake agent of `script` (its transcript in
/// `root/transcript.jsonl`): initialize, `session/new`, then two prompts.
async fn settings_turns(
    script: FakeAgentScript,
    settings: SessionSettings,
    root: &Path,
) -> (Result<(), AgentError>, Vec<(String, serde_json::Value)>) {
    let transcript = root.join("transcript.jsonl");
    let script = FakeAgentScript {
        transcript: Some(transcript.clone()),
        ..script
    };
    let session =
        AcpSession::new(Arc::new(command(&script)), fast_options()).with_settings(settings);
    session.initialize().await.unwrap();
    let outcome = async {
        let id = session.new_session(&root.join("ws")).await?;
        session.prompt(&id, "fix it").await?;
        session.prompt(&id, "and then this").await?;
        Ok(())
    }
    .await;
    drop(session);
    (outcome, requests(&transcript))
}

fn settings() -> SessionSettings {
    SessionSettings {
        model: Some("opus".to_owned()),
        system_prompt: Some("  Review only.\n".to_owned()),
        credentials: Vec::new(),
    }
}

fn methods(requests: &[(String, serde_json::Value)]) -> Vec<&str> {
    requests.iter().map(|(m, _)| m.as_str()).collect()
}

fn prompt_text(params: &serde_json::Value) -> &str {
    params["prompt"][0]["text"].as_str().unwrap()
}

#[tokio::test]
async fn the_claude_adapter_gets_its_model_and_system_prompt_over_acp() {
    let dir = workspace();
    let script = FakeAgentScript {
        name: Some(sam_agent::vm::SYSTEM_PROMPT_META_AGENTS[0].to_owned()),
        models: vec!["default".to_owned(), "opus".to_owned()],
        ..FakeAgentScript::default()
    };
    let (outcome, requests) = settings_turns(script, settings(), dir.path()).await;
    outcome.unwrap();
    assert_eq!(
        methods(&requests),
        [
            "initialize",
            "session/new",
            "session/set_model",
            "session/prompt",
            "session/prompt"
        ]
    );
    let ws = dir.path().join("ws").canonicalize().unwrap();
    assert_eq!(
        requests[1].1,
        serde_json::json!({
            "cwd": ws,
            "mcpServers": [],
            "_meta": { "systemPrompt": { "append": "Review only." } },
        })
    );
    assert_eq!(
        requests[2].1,
        serde_json::json!({ "sessionId": "fake-session-1", "modelId": "opus" })
    );
    // The instructions went in the session: the prompts are the user's own.
    assert_eq!(prompt_text(&requests[3].1), "fix it");
    assert_eq!(prompt_text(&requests[4].1), "and then this");
}

#[tokio::test]
async fn an_agent_without_the_extension_gets_the_instructions_in_its_first_prompt() {
    let dir = workspace();
    // No models listed: the model reaches this agent through its environment only.
    let (outcome, requests) =
        settings_turns(FakeAgentScript::default(), settings(), dir.path()).await;
    outcome.unwrap();
    assert_eq!(
        methods(&requests),
        [
            "initialize",
            "session/new",
            "session/prompt",
            "session/prompt"
        ]
    );
    assert!(requests[1].1.get("_meta").is_none(), "{}", requests[1].1);
    assert_eq!(prompt_text(&requests[2].1), "Review only.\n\nfix it");
    assert_eq!(prompt_text(&requests[3].1), "and then this");
}

#[tokio::test]
async fn a_model_the_agent_does_not_offer_is_a_typed_error() {
    let dir = workspace();
    let script = FakeAgentScript {
        models: vec!["default".to_owned(), "sonnet".to_owned()],
        ..FakeAgentScript::default()
    };
    let (outcome, requests) = settings_turns(script, settings(), dir.path()).await;
    let error = outcome.unwrap_err();
    assert_eq!(error.failure, AgentFailure::Unsupported, "{error}");
    assert_eq!(error.category, ErrorCategory::InvalidConfig, "{error}");
    assert!(
        error.message.contains("\"opus\"") && error.message.contains("default, sonnet"),
        "{error}"
    );
    assert_eq!(
        methods(&requests),
        ["initialize", "session/new"],
        "nothing was prompted"
    );

    // The model the agent has already: nothing to select.
    let dir = workspace();
    let script = FakeAgentScript {
        models: vec!["opus".to_owned()],
        ..FakeAgentScript::default()
    };
    let (outcome, requests) = settings_turns(script, settings(), dir.path()).await;
    outcome.unwrap();
    assert!(!requests.iter().any(|(m, _)| m == "session/set_model"));
}

/// The Claude adapter's rendering of a model-provider failure (observed with
/// claude-agent-acp 0.23.1: JSON-RPC `-32603`, message `Internal error: API Error:
/// <status> <body>`), with Anthropic's documented error bodies.
fn claude_api_error(status: u16, kind: &str, message: &str) -> String {
    format!(
        r#"Internal error: API Error: {status} {{"type":"error","error":{{"type":"{kind}","message":"{message}"}},"request_id":"req_011CSHoEeqs5C35K2UUqR7Fy"}}"#
    )
}

/// Commands announced as the prompt starts are bookkeeping, not acceptance: the
/// failures after them are retried (as they were not when any update counted).
#[tokio::test]
async fn announced_commands_do_not_count_as_acceptance() {
    use ErrorCategory::{RateLimited as R, Transient as T, TransientCapacity as C};
    let cases = [
        (529, "overloaded_error", "Overloaded", C),
        (500, "api_error", "Internal server error", T),
        (502, "api_error", "Bad gateway", T),
        (503, "api_error", "Service unavailable", T),
        (
            429,
            "rate_limit_error",
            "Number of requests has exceeded your rate limit",
            R,
        ),
    ];
    for (status, kind, message, category) in cases {
        let dir = workspace();
        let script = FakeAgentScript {
            announce_commands: true,
            fail_prompts: 2,
            fail_text: claude_api_error(status, kind, message),
            fail_code: -32603,
            ..FakeAgentScript::default()
        };
        let turn = turn(&script, fast_options(), dir.path()).await;
        assert_eq!(
            turn.result.clone().unwrap(),
            StopReason::EndTurn,
            "{status}"
        );
        assert_eq!(turn.retries(), [(1, category), (2, category)], "{status}");
        assert_eq!(turn.count("available_commands_update"), 3, "{status}");
        assert_eq!(turn.count("user_message_chunk"), 1, "{status}");
    }
}

/// Once the model streamed output for the prompt, a failure is final: retrying would
/// repeat work the agent may already have done.
#[tokio::test]
async fn a_failure_after_model_output_is_not_retried() {
    let dir = workspace();
    let script = FakeAgentScript {
        announce_commands: true,
        fail_after_output: true,
        fail_prompts: 1,
        fail_text: claude_api_error(529, "overloaded_error", "Overloaded"),
        ..FakeAgentScript::default()
    };
    let turn = turn(&script, fast_options(), dir.path()).await;
    let error = turn.result.clone().unwrap_err();
    assert_eq!(error.category, ErrorCategory::TransientCapacity, "{error}");
    assert_eq!(turn.retries(), []);
    assert_eq!(turn.texts(), ["Let me look at the test."]);
}

fn codex_like(dir: &Path) -> FakeAgentScript {
    FakeAgentScript {
        require_auth: true,
        transcript: Some(dir.join("transcript.jsonl")),
        ..FakeAgentScript::default()
    }
}

/// codex-acp refuses `session/new` until `authenticate`: the host authenticates with
/// the method whose variable it gave the agent.
#[tokio::test]
async fn the_host_authenticates_with_the_method_of_the_given_key() {
    let dir = workspace();
    let script = codex_like(dir.path());
    for var in ["OPENAI_API_KEY", "CODEX_API_KEY"] {
        let command = command(&script).with_env(var, Secret::new("sk-test-not-real"));
        let session =
            AcpSession::new(Arc::new(command), fast_options()).with_settings(SessionSettings {
                credentials: vec![var.to_owned()],
                ..SessionSettings::default()
            });
        session.initialize().await.unwrap();
        let id = session.new_session(&dir.path().join("ws")).await.unwrap();
        assert_eq!(
            session.prompt(&id, "hello").await.unwrap(),
            StopReason::EndTurn
        );
    }
    let sent = requests(&dir.path().join("transcript.jsonl"));
    let auth: Vec<&str> = sent
        .iter()
        .filter(|(m, _)| m == "authenticate")
        .map(|(_, p)| p["methodId"].as_str().unwrap())
        .collect();
    assert_eq!(auth, ["openai-api-key", "codex-api-key"]);
    let order = methods(&sent);
    let first_auth = order.iter().position(|m| *m == "authenticate").unwrap();
    let first_new = order.iter().position(|m| *m == "session/new").unwrap();
    assert!(first_auth < first_new, "{order:?}");
}

/// Without a usable key the refusal names what would work.
#[tokio::test]
async fn without_a_usable_key_the_error_names_the_variables() {
    let dir = workspace();
    let session = AcpSession::new(Arc::new(command(&codex_like(dir.path()))), fast_options());
    session.initialize().await.unwrap();
    let error = session
        .new_session(&dir.path().join("ws"))
        .await
        .unwrap_err();
    assert_eq!(error.category, ErrorCategory::AuthError, "{error}");
    assert!(
        error.message.contains("OPENAI_API_KEY")
            && error.message.contains("CODEX_API_KEY")
            && error.message.contains("openai-api-key"),
        "{error}"
    );
}

/// An `authenticate` the agent refuses is an authentication failure, whatever code
/// it answers with.
#[tokio::test]
async fn a_refused_authenticate_is_an_auth_error() {
    let dir = workspace();
    // The host believes it gave the key; the agent's environment lacks it.
    let session = AcpSession::new(Arc::new(command(&codex_like(dir.path()))), fast_options())
        .with_settings(SessionSettings {
            credentials: vec!["OPENAI_API_KEY".to_owned()],
            ..SessionSettings::default()
        });
    let error = session.initialize().await.unwrap_err();
    assert_eq!(error.category, ErrorCategory::AuthError, "{error}");
    assert!(
        error
            .message
            .contains("authenticate with openai-api-key failed"),
        "{error}"
    );
}

fn idle_options() -> AcpOptions {
    AcpOptions {
        idle_timeout: Duration::from_millis(300),
        ..fast_options()
    }
}

/// An agent that goes silent is ended by the idle limit and retried, then reported
/// as a `transient` timeout; one that writes garbage the same way.
#[tokio::test]
async fn a_silent_or_garbled_agent_is_ended_by_the_idle_limit() {
    for script in [
        FakeAgentScript {
            hang: true,
            announce_commands: true,
            ..FakeAgentScript::default()
        },
        FakeAgentScript {
            garbage: true,
            ..FakeAgentScript::default()
        },
    ] {
        let dir = workspace();
        let turn = tokio::time::timeout(
            Duration::from_secs(30),
            turn(&script, idle_options(), dir.path()),
        )
        .await
        .expect("the idle limit ends the turn");
        let error = turn.result.clone().unwrap_err();
        assert_eq!(error.failure, AgentFailure::Timeout, "{error}");
        assert_eq!(error.category, ErrorCategory::Transient, "{error}");
        assert!(error.message.contains("sent nothing"), "{error}");
        use ErrorCategory::Transient as T;
        assert_eq!(turn.retries(), [(1, T), (2, T)], "{script:?}");
    }
}

fn proc_state(pid: u32) -> Option<(char, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let session = fields.nth(2)?.parse().ok()?;
    Some((state, session))
}

/// A tool the agent started in a session of its own dies with the agent.
#[tokio::test]
async fn a_setsid_grandchild_dies_with_the_session() {
    let dir = workspace();
    let pid_file = dir.path().join("grandchild.pid");
    let script = FakeAgentScript {
        grandchild: Some(pid_file.clone()),
        ..FakeAgentScript::default()
    };
    let session = AcpSession::new(Arc::new(command(&script)), fast_options());
    session.initialize().await.unwrap();
    let id = session.new_session(&dir.path().join("ws")).await.unwrap();
    session.prompt(&id, "start the dev server").await.unwrap();
    let pid: u32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // `setsid` may not have run yet on a loaded host: wait until it has.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (state, sid) = proc_state(pid).expect("the grandchild runs");
        assert_ne!(state, 'Z');
        if sid == pid {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the grandchild never led a session of its own"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(session);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while proc_state(pid).is_some_and(|(s, _)| s != 'Z') {
        assert!(
            std::time::Instant::now() < deadline,
            "the setsid grandchild {pid} outlived its agent"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Network failures as the real adapters reported them here without network:
/// claude-agent-acp 0.23.1 (with a fake key, after 186 s), gemini-cli 0.61.0 (code
/// 500, after 256 s), opencode-ai 1.18.33 (after 82 s) and codex-acp 0.16.0 (its
/// `data.message`). Each is `transient`, so it is retried like any outage.
#[tokio::test]
async fn network_failures_as_the_real_adapters_report_them_are_retried() {
    use ErrorCategory::Transient as T;
    let cases = [
        (
            -32603,
            "Internal error: API Error: Unable to connect to API (ENOTFOUND)",
        ),
        (500, "exception TypeError: fetch failed sending request"),
        (
            -32603,
            "Internal error: Cannot connect to API: Unable to connect. Is the computer able to access the url?",
        ),
        (
            -32603,
            "stream disconnected before completion: error sending request for url (https://api.openai.com/v1/responses)",
        ),
    ];
    for (code, text) in cases {
        let dir = workspace();
        let script = FakeAgentScript {
            announce_commands: true,
            fail_prompts: 5,
            fail_text: text.to_owned(),
            fail_code: code,
            ..FakeAgentScript::default()
        };
        let turn = turn(&script, fast_options(), dir.path()).await;
        let error = turn.result.clone().unwrap_err();
        assert_eq!(error.category, T, "{text}: {error}");
        assert_eq!(turn.retries(), [(1, T), (2, T)], "{text}");
    }
}
