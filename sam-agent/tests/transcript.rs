//! The ACP specification's transcript (`shared/cases/acp-transcript.jsonl`) replayed
//! through the session host: a stand-in agent sends the transcript's agent lines and
//! checks that what the host sends matches the transcript's client lines.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use futures::StreamExt;
use sam_agent::{AcpOptions, AcpSession, AgentIo, AgentLauncher};
use sam_core::{AgentError, AgentSession, SessionEvent, StopReason};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// The directory the transcript's session runs in.
const TRANSCRIPT_CWD: &str = "/home/user/project";

fn transcript() -> Vec<(String, Value)> {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/cases/acp-transcript.jsonl");
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|line| {
            let mut entry: Value = serde_json::from_str(line).unwrap();
            let direction = entry["direction"].as_str().unwrap().to_owned();
            (direction, entry["message"].take())
        })
        .collect()
}

#[derive(Debug)]
struct TranscriptAgent {
    workspace: PathBuf,
    mismatches: Arc<Mutex<Vec<String>>>,
}

#[async_trait]
impl AgentLauncher for TranscriptAgent {
    async fn launch(&self) -> Result<AgentIo, AgentError> {
        let (host, agent) = tokio::io::duplex(1 << 16);
        let (host_read, host_write) = tokio::io::split(host);
        let (agent_read, mut agent_write) = tokio::io::split(agent);
        let workspace = self.workspace.display().to_string();
        let mismatches = Arc::clone(&self.mismatches);
        tokio::spawn(async move {
            let mut from_host = BufReader::new(agent_read).lines();
            // Transcript request ids → the ids the host chose.
            let mut ids = std::collections::HashMap::new();
            let fail = |m: String| mismatches.lock().unwrap().push(m);
            for (direction, expected) in transcript() {
                if direction == "agent->client" {
                    let mut message = expected.clone();
                    let is_response = message.get("method").is_none();
                    if is_response {
                        let id = message["id"].as_i64().unwrap();
                        message["id"] = ids.get(&id).cloned().unwrap_or(Value::Null);
                    }
                    let text = message.to_string().replace(TRANSCRIPT_CWD, &workspace);
                    agent_write
                        .write_all(format!("{text}\n").as_bytes())
                        .await
                        .unwrap();
                    continue;
                }
                let Ok(Some(line)) = from_host.next_line().await else {
                    fail(format!("the host closed before sending {expected}"));
                    return;
                };
                let got: Value = serde_json::from_str(&line).unwrap();
                if got.get("method") != expected.get("method") {
                    fail(format!("expected {expected}, the host sent {got}"));
                    continue;
                }
                match expected.get("method").and_then(Value::as_str) {
                    Some("initialize") => {
                        if got["params"]["protocolVersion"] != 1
                            || got["params"]["clientCapabilities"]["fs"]
                                != expected["params"]["clientCapabilities"]["fs"]
                        {
                            fail(format!("initialize params differ: {got}"));
                        }
                    }
                    Some("session/new") => {
                        if got["params"]["cwd"].as_str().is_none() {
                            fail(format!("session/new without cwd: {got}"));
                        }
                    }
                    Some(_) => {
                        if got["params"]["sessionId"] != expected["params"]["sessionId"] {
                            fail(format!("wrong session: {got}"));
                        }
                    }
                    // A response to one of the transcript agent's requests.
                    None => {
                        if got["id"] != expected["id"] || got["result"] != expected["result"] {
                            fail(format!("expected the answer {expected}, got {got}"));
                        }
                    }
                }
                if let (Some(want), Some(id)) = (expected["id"].as_i64(), got.get("id"))
                    && expected.get("method").is_some()
                {
                    ids.insert(want, id.clone());
                }
            }
        });
        Ok(AgentIo::from_streams(host_write, host_read))
    }
}

#[tokio::test]
async fn the_specification_transcript_replays() {
    let dir = tempfile::tempdir().unwrap();
    let workspace = dir.path().canonicalize().unwrap();
    // The transcript reads lines 10-11 of src/main.py.
    std::fs::create_dir(workspace.join("src")).unwrap();
    let filler = "# filler\n".repeat(9);
    let body = "def hello_world():\n    print('Hello, world!')\n";
    std::fs::write(workspace.join("src/main.py"), format!("{filler}{body}")).unwrap();

    let mismatches = Arc::new(Mutex::new(Vec::new()));
    let agent = TranscriptAgent {
        workspace: workspace.clone(),
        mismatches: Arc::clone(&mismatches),
    };
    let session = Arc::new(AcpSession::new(Arc::new(agent), AcpOptions::default()));
    let mut events = session.events();
    let info = session.initialize().await.unwrap();
    assert!(info.load_session);
    assert_eq!(info.name.as_deref(), Some("my-agent 1.0.0"));
    let id = session.new_session(&workspace).await.unwrap();
    assert_eq!(id.0, "sess_abc123def456");

    let first = session
        .prompt(&id, "Can you analyze this code for potential issues?")
        .await
        .unwrap();
    assert_eq!(first, StopReason::EndTurn);

    let second = {
        let (session, id) = (Arc::clone(&session), id.clone());
        tokio::spawn(async move { session.prompt(&id, "Now refactor it.").await })
    };
    let mut kinds = Vec::new();
    let mut cancelled = false;
    while let Some(event) = events.next().await {
        match event.event {
            SessionEvent::Update { update } => {
                let kind = update["sessionUpdate"].as_str().unwrap().to_owned();
                if update["toolCallId"] == "call_002" && kind == "tool_call" && !cancelled {
                    session.cancel(&id).await.unwrap();
                    cancelled = true;
                }
                kinds.push(kind);
            }
            SessionEvent::Stopped { reason } => {
                kinds.push(format!("stopped:{}", json!(reason).as_str().unwrap()));
                if reason == StopReason::Cancelled {
                    break;
                }
            }
            // The host's answer to the agent's permission request is an event too.
            SessionEvent::Permission {
                tool_call,
                allowed,
                option,
                ..
            } => kinds.push(format!(
                "permission:{}:{allowed}:{}",
                tool_call["toolCallId"].as_str().unwrap(),
                option.unwrap_or_default()
            )),
            other => panic!("unexpected event {other:?}"),
        }
    }
    assert_eq!(second.await.unwrap().unwrap(), StopReason::Cancelled);
    assert_eq!(
        kinds,
        [
            "user_message_chunk",
            "plan",
            "agent_message_chunk",
            "tool_call",
            "permission:call_001:true:allow-once",
            "tool_call_update",
            "tool_call_update",
            "usage_update",
            "stopped:end_turn",
            "user_message_chunk",
            "tool_call",
            "tool_call_update",
            "stopped:cancelled",
        ]
    );
    assert_eq!(*mismatches.lock().unwrap(), Vec::<String>::new());
}
