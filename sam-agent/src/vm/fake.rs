//! A scripted ACP agent for tests and examples, always compiled (like the fake
//! provider).
//!
//! [`FakeAgentScript`] says how the agent misbehaves; [`serve`] runs it on any pair of
//! streams. The `fake-acp-agent` binary runs it on stdio with the script read from
//! `FAKE_ACP_*` environment variables ([`FakeAgentScript::from_env`], the inverse of
//! [`FakeAgentScript::to_env`]), so tests drive a real process; the script is also an
//! [`AgentLauncher`] that runs the agent in-process over a pipe, for doctests.
//!
//! On a prompt the agent: fails the first [`FakeAgentScript::fail_prompts`] prompts
//! with an error carrying [`FakeAgentScript::fail_text`]; streams an
//! `agent_message_chunk` and an update of a kind no specification defines; crashes
//! when told to; asks for permission, reads and writes files when told to, reporting
//! each answer as an `agent_message_chunk` (`permission: …`, `read: …`, `write: …`);
//! waits [`FakeAgentScript::slow`] (answering `session/cancel` with `cancelled`);
//! then ends the turn with [`FakeAgentScript::stop_reason`]. With
//! [`FakeAgentScript::models`] its sessions list those models and it answers
//! `session/set_model`; [`FakeAgentScript::name`] lets it stand in for a real adapter,
//! and [`FakeAgentScript::transcript`] keeps every message it received.
//!
//! The misbehaviours of real adapters are scripted as observed with them
//! (claude-agent-acp 0.23.1, codex-acp 0.16.0, gemini-cli 0.61.0, opencode-ai 1.18.33,
//! run without keys and with fake keys): [`FakeAgentScript::announce_commands`] sends
//! `available_commands_update` as a prompt starts, before anything else, as all four
//! did; [`FakeAgentScript::require_auth`] lists codex-acp's `authMethods` and refuses
//! `session/new` with `-32000 "Authentication required"` until `authenticate`
//! succeeds, as codex-acp did even with its key set. [`FakeAgentScript::hang`],
//! [`FakeAgentScript::garbage`] and [`FakeAgentScript::grandchild`] inject faults no
//! adapter was seen to make on purpose: a turn that never answers, lines that are not
//! JSON-RPC, and a tool started with `setsid` that outlives its parent.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use sam_core::AgentError;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::vm::acp::endpoint::AgentEndpoint;
use crate::vm::acp::{AgentIo, AgentLauncher};

/// When the fake agent crashes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FakeCrash {
    /// Exit right after start, before reading anything.
    AtStart,
    /// Exit in the middle of a prompt turn, after streaming one update.
    MidPrompt,
}

/// What the fake agent does; see the [module docs](self).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeAgentScript {
    /// Prompts that fail before any update, counted per process.
    pub fail_prompts: u32,
    /// The failing prompts' error message (an agent-relayed provider error).
    pub fail_text: String,
    /// The failing prompts' JSON-RPC error code.
    pub fail_code: i64,
    /// Whether the failing prompts stream model output (an `agent_message_chunk`)
    /// before they fail: the model had accepted the prompt.
    pub fail_after_output: bool,
    /// Whether `initialize` advertises `loadSession`.
    pub load_session: bool,
    /// When to crash.
    pub crash: Option<FakeCrash>,
    /// With a crash: crash only while this file does not exist, creating it first, so
    /// a restarted agent behaves.
    pub crash_marker: Option<PathBuf>,
    /// How long each turn takes.
    pub slow: Duration,
    /// Ask permission for an `edit` tool call in each turn.
    pub ask_permission: bool,
    /// A path to read with `fs/read_text_file` in each turn.
    pub read_path: Option<String>,
    /// A path to write (`written by the fake agent`) with `fs/write_text_file`.
    pub write_path: Option<String>,
    /// How each turn ends (`end_turn`, `refusal`, …).
    pub stop_reason: String,
    /// The name of an environment variable whose presence (never its value)
    /// `initialize` reports in `agentInfo.name`.
    pub report_env: Option<String>,
    /// A file to which every received message's method and session id are appended.
    pub record: Option<PathBuf>,
    /// A file to which every received message is appended whole, one JSON line each.
    pub transcript: Option<PathBuf>,
    /// The name `initialize` gives instead of `fake-acp-agent` (to stand in for a
    /// real adapter).
    pub name: Option<String>,
    /// The models `session/new` and `session/load` list (the first is current);
    /// `session/set_model` selects one of them. Empty: the agent lists none and has
    /// no `session/set_model`.
    pub models: Vec<String>,
    /// Send `available_commands_update` as each prompt starts, before failing or
    /// answering.
    pub announce_commands: bool,
    /// List codex-acp's `authMethods` and refuse `session/new` with `-32000` until
    /// `authenticate` names a method whose variable is set in this process's
    /// environment (`openai-api-key`: `OPENAI_API_KEY`, `codex-api-key`:
    /// `CODEX_API_KEY`); any other method is refused with `-32000`.
    pub require_auth: bool,
    /// Never answer a prompt (until `session/cancel`), and send nothing meanwhile.
    pub hang: bool,
    /// Before answering a prompt, write lines that are not JSON-RPC (and never answer).
    pub garbage: bool,
    /// On each prompt, start `sleep` in a session of its own (`setsid`) and write its
    /// pid to this file.
    pub grandchild: Option<PathBuf>,
}

impl Default for FakeAgentScript {
    /// A well-behaved agent: no failures, no crash, no `loadSession`, turns end with
    /// `end_turn` at once.
    fn default() -> Self {
        Self {
            fail_prompts: 0,
            fail_text: "Internal error".to_owned(),
            fail_code: -32603,
            fail_after_output: false,
            load_session: false,
            crash: None,
            crash_marker: None,
            slow: Duration::ZERO,
            ask_permission: false,
            read_path: None,
            write_path: None,
            stop_reason: "end_turn".to_owned(),
            report_env: None,
            record: None,
            transcript: None,
            name: None,
            models: Vec::new(),
            announce_commands: false,
            require_auth: false,
            hang: false,
            garbage: false,
            grandchild: None,
        }
    }
}

const ENV_PREFIX: &str = "FAKE_ACP_";

impl FakeAgentScript {
    /// The script as `FAKE_ACP_*` environment variables, for the `fake-acp-agent`
    /// binary.
    pub fn to_env(&self) -> Vec<(String, String)> {
        let mut env = vec![
            ("FAIL_PROMPTS", self.fail_prompts.to_string()),
            ("FAIL_TEXT", self.fail_text.clone()),
            ("FAIL_CODE", self.fail_code.to_string()),
            ("FAIL_AFTER_OUTPUT", self.fail_after_output.to_string()),
            ("LOAD_SESSION", self.load_session.to_string()),
            ("SLOW_MS", self.slow.as_millis().to_string()),
            ("ASK_PERMISSION", self.ask_permission.to_string()),
            ("STOP_REASON", self.stop_reason.clone()),
            ("ANNOUNCE_COMMANDS", self.announce_commands.to_string()),
            ("REQUIRE_AUTH", self.require_auth.to_string()),
            ("HANG", self.hang.to_string()),
            ("GARBAGE", self.garbage.to_string()),
        ];
        if !self.models.is_empty() {
            env.push(("MODELS", self.models.join(",")));
        }
        if let Some(crash) = self.crash {
            let crash = match crash {
                FakeCrash::AtStart => "at_start",
                FakeCrash::MidPrompt => "mid_prompt",
            };
            env.push(("CRASH", crash.to_owned()));
        }
        let paths = [
            (
                "CRASH_MARKER",
                self.crash_marker.as_ref().map(|p| p.display().to_string()),
            ),
            ("READ_PATH", self.read_path.clone()),
            ("WRITE_PATH", self.write_path.clone()),
            ("REPORT_ENV", self.report_env.clone()),
            (
                "RECORD",
                self.record.as_ref().map(|p| p.display().to_string()),
            ),
            (
                "TRANSCRIPT",
                self.transcript.as_ref().map(|p| p.display().to_string()),
            ),
            ("NAME", self.name.clone()),
            (
                "GRANDCHILD",
                self.grandchild.as_ref().map(|p| p.display().to_string()),
            ),
        ];
        env.extend(paths.into_iter().filter_map(|(k, v)| v.map(|v| (k, v))));
        env.into_iter()
            .map(|(k, v)| (format!("{ENV_PREFIX}{k}"), v))
            .collect()
    }

    /// Reads the script from `FAKE_ACP_*` variables; missing or unreadable ones keep
    /// their default.
    pub fn from_env() -> Self {
        let vars: HashMap<String, String> = std::env::vars()
            .filter_map(|(k, v)| k.strip_prefix(ENV_PREFIX).map(|k| (k.to_owned(), v)))
            .collect();
        Self::from_vars(&vars)
    }

    fn from_vars(vars: &HashMap<String, String>) -> Self {
        fn parse<T: std::str::FromStr>(vars: &HashMap<String, String>, key: &str) -> Option<T> {
            vars.get(key).and_then(|v| v.parse().ok())
        }
        let defaults = Self::default();
        let get = |k: &str| vars.get(k).cloned();
        Self {
            fail_prompts: parse(vars, "FAIL_PROMPTS").unwrap_or(defaults.fail_prompts),
            fail_text: get("FAIL_TEXT").unwrap_or(defaults.fail_text),
            fail_code: parse(vars, "FAIL_CODE").unwrap_or(defaults.fail_code),
            fail_after_output: parse(vars, "FAIL_AFTER_OUTPUT").unwrap_or(false),
            load_session: parse(vars, "LOAD_SESSION").unwrap_or(defaults.load_session),
            crash: match vars.get("CRASH").map(String::as_str) {
                Some("at_start") => Some(FakeCrash::AtStart),
                Some("mid_prompt") => Some(FakeCrash::MidPrompt),
                _ => None,
            },
            crash_marker: get("CRASH_MARKER").map(PathBuf::from),
            slow: Duration::from_millis(parse(vars, "SLOW_MS").unwrap_or(0)),
            ask_permission: parse(vars, "ASK_PERMISSION").unwrap_or(false),
            read_path: get("READ_PATH"),
            write_path: get("WRITE_PATH"),
            stop_reason: get("STOP_REASON").unwrap_or(defaults.stop_reason),
            report_env: get("REPORT_ENV"),
            record: get("RECORD").map(PathBuf::from),
            transcript: get("TRANSCRIPT").map(PathBuf::from),
            name: get("NAME"),
            models: get("MODELS")
                .map(|m| {
                    m.split(',')
                        .filter(|m| !m.is_empty())
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default(),
            announce_commands: parse(vars, "ANNOUNCE_COMMANDS").unwrap_or(false),
            require_auth: parse(vars, "REQUIRE_AUTH").unwrap_or(false),
            hang: parse(vars, "HANG").unwrap_or(false),
            garbage: parse(vars, "GARBAGE").unwrap_or(false),
            grandchild: get("GRANDCHILD").map(PathBuf::from),
        }
    }

    /// Whether the scripted crash happens now (consuming the marker).
    fn crash_now(&self, when: FakeCrash) -> bool {
        if self.crash != Some(when) {
            return false;
        }
        match &self.crash_marker {
            None => true,
            Some(marker) if marker.exists() => false,
            Some(marker) => std::fs::write(marker, b"crashed\n").is_ok(),
        }
    }
}

/// How [`serve`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FakeExit {
    /// The client closed the input.
    Closed,
    /// The script crashed the agent.
    Crashed,
}

/// Runs the fake agent until its input ends or the script crashes it.
///
/// # Errors
/// When writing to `output` fails.
pub async fn serve(
    script: &FakeAgentScript,
    input: impl AsyncRead + Send + Unpin + 'static,
    output: impl AsyncWrite + Send + Unpin,
) -> std::io::Result<FakeExit> {
    if script.crash_now(FakeCrash::AtStart) {
        return Ok(FakeExit::Crashed);
    }
    let mut agent = Agent {
        script,
        io: AgentEndpoint::new(input, output),
        prompts: 0,
        next_id: 1000,
        sessions: 0,
        model: script.models.first().cloned(),
        authenticated: false,
    };
    agent.run().await
}

struct Agent<'a, W> {
    script: &'a FakeAgentScript,
    io: AgentEndpoint<W>,
    prompts: u32,
    next_id: u64,
    sessions: u32,
    /// The current model, when the script lists models.
    model: Option<String>,
    /// Whether `authenticate` succeeded.
    authenticated: bool,
}

/// codex-acp 0.16.0's `authMethods`, as it answered `initialize` (without a key).
fn codex_auth_methods() -> Value {
    json!([
        { "id": "chatgpt", "name": "Login with ChatGPT", "description": "Use your ChatGPT login with Codex CLI (requires a paid ChatGPT subscription)" },
        { "type": "env_var", "id": "codex-api-key", "name": "Use CODEX_API_KEY", "description": "Requires setting the `CODEX_API_KEY` environment variable.", "vars": [{ "name": "CODEX_API_KEY" }] },
        { "type": "env_var", "id": "openai-api-key", "name": "Use OPENAI_API_KEY", "description": "Requires setting the `OPENAI_API_KEY` environment variable.", "vars": [{ "name": "OPENAI_API_KEY" }] },
    ])
}

impl<W: AsyncWrite + Unpin> Agent<'_, W> {
    fn record(&self, message: &Value) {
        if let Some(path) = &self.script.transcript {
            append(path, &format!("{message}\n"));
        }
        let Some(path) = &self.script.record else {
            return;
        };
        let method = message.get("method").and_then(Value::as_str).unwrap_or("");
        let session = message
            .pointer("/params/sessionId")
            .and_then(Value::as_str)
            .unwrap_or("-");
        append(path, &format!("{method} {session}\n"));
    }

    /// The session answer's `models`, when the script lists models.
    fn models(&self) -> Option<Value> {
        let current = self.model.as_ref()?;
        let available: Vec<Value> = self
            .script
            .models
            .iter()
            .map(|m| json!({ "modelId": m, "name": m }))
            .collect();
        Some(json!({ "availableModels": available, "currentModelId": current }))
    }

    /// A session answer with `fields`, and the models when the script lists them.
    fn session_answer(&self, mut fields: Value) -> Value {
        if let Some(models) = self.models() {
            fields["models"] = models;
        }
        fields
    }

    async fn run(&mut self) -> std::io::Result<FakeExit> {
        while let Some(message) = self.io.recv().await {
            self.record(&message);
            let id = message.get("id").cloned();
            let method = message.get("method").and_then(Value::as_str).unwrap_or("");
            let Some(id) = id else { continue };
            match method {
                "initialize" => {
                    let base = self.script.name.as_deref().unwrap_or("fake-acp-agent");
                    let name = match &self.script.report_env {
                        Some(var) if std::env::var_os(var).is_some() => {
                            format!("{base} ({var} set)")
                        }
                        Some(var) => format!("{base} ({var} unset)"),
                        None => base.to_owned(),
                    };
                    let result = json!({
                        "protocolVersion": 1,
                        "agentCapabilities": { "loadSession": self.script.load_session },
                        "agentInfo": { "name": name, "version": env!("CARGO_PKG_VERSION") },
                        "authMethods": if self.script.require_auth { codex_auth_methods() } else { json!([]) },
                    });
                    self.io.reply(id, result).await?;
                }
                "authenticate" => {
                    let method = message
                        .pointer("/params/methodId")
                        .and_then(Value::as_str)
                        .unwrap_or_default();
                    let var = match method {
                        "openai-api-key" => Some("OPENAI_API_KEY"),
                        "codex-api-key" => Some("CODEX_API_KEY"),
                        _ => None,
                    };
                    if var.is_some_and(|v| std::env::var_os(v).is_some()) {
                        self.authenticated = true;
                        self.io.reply(id, json!({})).await?;
                    } else {
                        self.io
                            .reply_error(id, -32000, &format!("Authentication failed: {method}"))
                            .await?;
                    }
                }
                "session/new" if self.script.require_auth && !self.authenticated => {
                    self.io
                        .reply_error(id, -32000, "Authentication required")
                        .await?;
                }
                "session/new" => {
                    self.sessions += 1;
                    let session = format!("fake-session-{}", self.sessions);
                    let answer = self.session_answer(json!({ "sessionId": session }));
                    self.io.reply(id, answer).await?;
                }
                "session/set_model" if self.model.is_some() => {
                    let wanted = message
                        .pointer("/params/modelId")
                        .and_then(Value::as_str)
                        .unwrap_or_default();
                    if self.script.models.iter().any(|m| m == wanted) {
                        self.model = Some(wanted.to_owned());
                        self.io.reply(id, json!({})).await?;
                    } else {
                        let error =
                            json!({ "code": -32602, "message": format!("unknown model {wanted}") });
                        self.io
                            .send(json!({ "jsonrpc": "2.0", "id": id, "error": error }))
                            .await?;
                    }
                }
                "session/load" => {
                    let session = message
                        .pointer("/params/sessionId")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned();
                    // Replay the history, as real agents do.
                    self.io.update(&session, json!({ "sessionUpdate": "user_message_chunk", "content": { "type": "text", "text": "(history)" } }))
                        .await?;
                    let answer = self.session_answer(json!({}));
                    self.io.reply(id, answer).await?;
                }
                "session/prompt" => {
                    let session = message
                        .pointer("/params/sessionId")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned();
                    if let Some(exit) = self.prompt(id, &session).await? {
                        return Ok(exit);
                    }
                }
                _ => {
                    self.io.send(json!({ "jsonrpc": "2.0", "id": id, "error": { "code": -32601, "message": format!("method not found: {method}") } }))
                        .await?;
                }
            }
        }
        Ok(FakeExit::Closed)
    }

    /// Sends a request and waits for its answer, ending the turn on `session/cancel`.
    async fn ask(&mut self, method: &str, params: Value) -> std::io::Result<Option<Value>> {
        self.next_id += 1;
        let id = self.next_id;
        self.io
            .send(json!({ "jsonrpc": "2.0", "id": id, "method": method, "params": params }))
            .await?;
        while let Some(message) = self.io.recv().await {
            self.record(&message);
            if message.get("id").and_then(Value::as_u64) == Some(id)
                && message.get("method").is_none()
            {
                return Ok(Some(message));
            }
        }
        Ok(None)
    }

    async fn prompt(&mut self, id: Value, session: &str) -> std::io::Result<Option<FakeExit>> {
        self.prompts += 1;
        if self.script.announce_commands {
            self.io
                .update(
                    session,
                    json!({ "sessionUpdate": "available_commands_update", "availableCommands": [
                        { "name": "review", "description": "Review my current changes and find issues" },
                    ]}),
                )
                .await?;
        }
        if let Some(path) = &self.script.grandchild {
            spawn_grandchild(path);
        }
        if self.script.garbage {
            for line in [
                "not json at all",
                "{\"jsonrpc\": \"2.0\", \"id\":",
                "\u{0}\u{7f}garbage",
            ] {
                self.io.send_line(line).await?;
            }
        }
        if self.script.hang || self.script.garbage {
            while let Some(message) = self.io.recv().await {
                self.record(&message);
                if message.get("method").and_then(Value::as_str) == Some("session/cancel") {
                    self.io
                        .reply(id, json!({ "stopReason": "cancelled" }))
                        .await?;
                    return Ok(None);
                }
            }
            return Ok(Some(FakeExit::Closed));
        }
        if self.prompts <= self.script.fail_prompts {
            if self.script.fail_after_output {
                self.io.say(session, "Let me look at the test.").await?;
            }
            let error = json!({ "code": self.script.fail_code, "message": self.script.fail_text });
            self.io
                .send(json!({ "jsonrpc": "2.0", "id": id, "error": error }))
                .await?;
            return Ok(None);
        }
        self.io.say(session, "working").await?;
        self.io
            .update(
                session,
                json!({ "sessionUpdate": "fake_kind_from_the_future", "detail": 1 }),
            )
            .await?;
        if self.script.crash_now(FakeCrash::MidPrompt) {
            return Ok(Some(FakeExit::Crashed));
        }
        if self.script.ask_permission {
            let answer = self
                .ask(
                    "session/request_permission",
                    json!({
                        "sessionId": session,
                        "toolCall": { "toolCallId": "fake-edit", "kind": "edit", "title": "Edit a file" },
                        "options": [
                            { "optionId": "allow", "name": "Allow", "kind": "allow_once" },
                            { "optionId": "reject", "name": "Reject", "kind": "reject_once" },
                        ],
                    }),
                )
                .await?;
            let outcome = answer
                .as_ref()
                .and_then(|a| a.pointer("/result/outcome/optionId"))
                .and_then(Value::as_str)
                .unwrap_or("cancelled")
                .to_owned();
            self.io
                .say(session, &format!("permission: {outcome}"))
                .await?;
        }
        if let Some(path) = self.script.read_path.clone() {
            let answer = self
                .ask(
                    "fs/read_text_file",
                    json!({ "sessionId": session, "path": path }),
                )
                .await?;
            let text = describe_answer(answer.as_ref(), |r| {
                let content = r.get("content").and_then(Value::as_str).unwrap_or("");
                format!("{} bytes", content.len())
            });
            self.io.say(session, &format!("read: {text}")).await?;
        }
        if let Some(path) = self.script.write_path.clone() {
            let answer = self
                .ask(
                    "fs/write_text_file",
                    json!({ "sessionId": session, "path": path, "content": "written by the fake agent\n" }),
                )
                .await?;
            let text = describe_answer(answer.as_ref(), |_| "ok".to_owned());
            self.io.say(session, &format!("write: {text}")).await?;
        }
        let mut reason = self.script.stop_reason.clone();
        if !self.script.slow.is_zero() {
            let sleep = tokio::time::sleep(self.script.slow);
            tokio::pin!(sleep);
            loop {
                tokio::select! {
                    () = &mut sleep => break,
                    message = self.io.recv() => match message {
                        Some(message) => {
                            self.record(&message);
                            if message.get("method").and_then(Value::as_str) == Some("session/cancel") {
                                reason = "cancelled".to_owned();
                                break;
                            }
                        }
                        None => return Ok(Some(FakeExit::Closed)),
                    },
                }
            }
        }
        self.io.reply(id, json!({ "stopReason": reason })).await?;
        Ok(None)
    }
}

/// Starts `sleep 600` in a session of its own, as a tool started with `setsid` would
/// run, and writes its pid to `path` (a test reads it).
fn spawn_grandchild(path: &std::path::Path) {
    let spawned = std::process::Command::new("sh")
        .args([
            "-c",
            "setsid sleep 600 </dev/null >/dev/null 2>&1 & echo $!",
        ])
        .stdin(std::process::Stdio::null())
        .output();
    if let Ok(out) = spawned {
        let _ = std::fs::write(path, &out.stdout);
    }
}

/// Appends `text` to the file at `path`, ignoring failures (a test reads it).
fn append(path: &std::path::Path, text: &str) {
    if let Ok(mut file) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        use std::io::Write as _;
        let _ = file.write_all(text.as_bytes());
    }
}

fn describe_answer(answer: Option<&Value>, ok: impl FnOnce(&Value) -> String) -> String {
    match answer {
        Some(a) if a.get("result").is_some() => ok(&a["result"]),
        Some(a) => format!(
            "error {} {}",
            a.pointer("/error/code").unwrap_or(&Value::Null),
            a.pointer("/error/message")
                .and_then(Value::as_str)
                .unwrap_or("")
        ),
        None => "no answer".to_owned(),
    }
}

#[async_trait]
impl AgentLauncher for FakeAgentScript {
    /// Runs the fake agent in-process, connected by an in-memory pipe.
    async fn launch(&self) -> Result<AgentIo, AgentError> {
        let (host_side, agent_side) = tokio::io::duplex(64 * 1024);
        let (host_read, host_write) = tokio::io::split(host_side);
        let (agent_read, agent_write) = tokio::io::split(agent_side);
        let script = self.clone();
        tokio::spawn(async move {
            // The pipe closes when this task ends, which the host sees as the exit.
            let _ = serve(&script, agent_read, agent_write).await;
        });
        Ok(AgentIo::from_streams(host_write, host_read))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_round_trip() {
        let script = FakeAgentScript {
            fail_prompts: 2,
            fail_text: "API Error: 529 overloaded".to_owned(),
            fail_code: -32000,
            fail_after_output: true,
            load_session: true,
            crash: Some(FakeCrash::MidPrompt),
            crash_marker: Some(PathBuf::from("/tmp/marker")),
            slow: Duration::from_millis(250),
            ask_permission: true,
            read_path: Some("../../etc/passwd".to_owned()),
            write_path: Some("out.txt".to_owned()),
            stop_reason: "refusal".to_owned(),
            report_env: Some("ANTHROPIC_API_KEY".to_owned()),
            record: Some(PathBuf::from("/tmp/record")),
            transcript: Some(PathBuf::from("/tmp/transcript")),
            name: Some("@zed-industries/claude-agent-acp".to_owned()),
            models: vec!["default".to_owned(), "opus".to_owned()],
            announce_commands: true,
            require_auth: true,
            hang: true,
            garbage: true,
            grandchild: Some(PathBuf::from("/tmp/grandchild")),
        };
        let vars = script
            .to_env()
            .into_iter()
            .map(|(k, v)| (k.strip_prefix(ENV_PREFIX).unwrap().to_owned(), v))
            .collect();
        assert_eq!(FakeAgentScript::from_vars(&vars), script);
        assert_eq!(
            FakeAgentScript::from_vars(&HashMap::new()),
            FakeAgentScript::default()
        );
    }
}
