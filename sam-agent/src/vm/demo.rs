//! The built-in **demo** ACP agent: a real ACP agent that needs no model.
//!
//! It exists so the quickstart runs offline, and it says so everywhere it appears
//! (its `agentInfo`, its plan, its messages, the file it writes). On a prompt it:
//! 1. reports a plan (`session/update` `plan`);
//! 2. reads the repository: lists the workspace (the session's `cwd`) and reads its
//!    README through `fs/read_text_file`, each step a tool call with its updates;
//! 3. writes one file, [`DEMO_FILE`], through `fs/write_text_file`: a short summary of
//!    the repository and the prompt;
//! 4. says what it did (`agent_message_chunk`) and ends its turn with `end_turn`.
//!
//! A `session/cancel` during the turn ends it with `cancelled`. [`serve`] runs the
//! agent on any pair of streams; the `sam-demo-agent` binary runs it on stdio.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::vm::acp::AgentCommand;
use crate::vm::acp::endpoint::AgentEndpoint;

/// The demo agent's name in the agent registry.
pub const DEMO_AGENT: &str = "demo";

/// The executable that runs the demo agent on stdio.
pub const DEMO_BINARY: &str = "sam-demo-agent";

/// The file the demo agent writes, relative to the workspace root.
pub const DEMO_FILE: &str = "SAM_DEMO.md";

/// The most directory entries the demo agent lists.
const MAX_LISTED: usize = 200;

/// The demo agent's command: [`DEMO_BINARY`] next to the running executable when it
/// is there (a build's target directory, an install prefix), else from `PATH`.
pub fn command() -> AgentCommand {
    let sibling = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join(DEMO_BINARY)))
        .filter(|path| path.is_file());
    match sibling {
        Some(path) => AgentCommand::new(path.display().to_string()),
        None => AgentCommand::new(DEMO_BINARY),
    }
}

/// Runs the demo agent until its input ends.
///
/// # Errors
/// When writing to `output` fails.
pub async fn serve(
    input: impl AsyncRead + Send + Unpin + 'static,
    output: impl AsyncWrite + Send + Unpin,
) -> std::io::Result<()> {
    let mut agent = Demo {
        io: AgentEndpoint::new(input, output),
        next_id: 0,
        sessions: HashMap::new(),
    };
    agent.run().await
}

struct Demo<W> {
    io: AgentEndpoint<W>,
    next_id: u64,
    /// Each session's working directory.
    sessions: HashMap<String, PathBuf>,
}

/// The turn was cancelled (or the client went away) while the agent waited.
struct Interrupted;

impl<W: AsyncWrite + Unpin> Demo<W> {
    async fn run(&mut self) -> std::io::Result<()> {
        while let Some(message) = self.io.recv().await {
            let method = message.get("method").and_then(Value::as_str).unwrap_or("");
            let Some(id) = message.get("id").cloned() else {
                // Notifications outside a turn (a late `session/cancel`) need no answer.
                continue;
            };
            match method {
                "initialize" => {
                    let result = json!({
                        "protocolVersion": 1,
                        "agentCapabilities": { "loadSession": false },
                        "agentInfo": {
                            "name": "sam-demo-agent",
                            "title": "SAM demo agent (no model)",
                            "version": env!("CARGO_PKG_VERSION"),
                        },
                        "authMethods": [],
                    });
                    self.io.reply(id, result).await?;
                }
                "session/new" => {
                    let Some(cwd) = message.pointer("/params/cwd").and_then(Value::as_str) else {
                        self.io
                            .reply_error(id, -32602, "session/new needs an absolute cwd")
                            .await?;
                        continue;
                    };
                    let session = format!("demo-session-{}", self.sessions.len() + 1);
                    self.sessions.insert(session.clone(), PathBuf::from(cwd));
                    self.io.reply(id, json!({ "sessionId": session })).await?;
                }
                "session/prompt" => {
                    let session = message
                        .pointer("/params/sessionId")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned();
                    let Some(cwd) = self.sessions.get(&session).cloned() else {
                        self.io
                            .reply_error(id, -32602, &format!("unknown session {session:?}"))
                            .await?;
                        continue;
                    };
                    let prompt = prompt_text(message.pointer("/params/prompt"));
                    let reason = match self.turn(&session, &cwd, &prompt).await? {
                        Ok(()) => "end_turn",
                        Err(Interrupted) => "cancelled",
                    };
                    self.io.reply(id, json!({ "stopReason": reason })).await?;
                }
                _ => {
                    self.io
                        .reply_error(id, -32601, &format!("method not found: {method}"))
                        .await?;
                }
            }
        }
        Ok(())
    }

    /// Sends a request to the client and waits for its answer; a `session/cancel`
    /// meanwhile interrupts the turn.
    async fn ask(
        &mut self,
        method: &str,
        params: Value,
    ) -> std::io::Result<Result<Value, Interrupted>> {
        self.next_id += 1;
        let id = format!("demo-{}", self.next_id);
        self.io
            .send(json!({ "jsonrpc": "2.0", "id": id, "method": method, "params": params }))
            .await?;
        while let Some(message) = self.io.recv().await {
            if message.get("method").and_then(Value::as_str) == Some("session/cancel") {
                return Ok(Err(Interrupted));
            }
            if message.get("id").and_then(Value::as_str) == Some(id.as_str())
                && message.get("method").is_none()
            {
                return Ok(Ok(message));
            }
        }
        Ok(Err(Interrupted))
    }

    async fn plan(&mut self, session: &str, done: usize) -> std::io::Result<()> {
        let steps = [
            "Read the repository",
            "Write SAM_DEMO.md with a summary",
            "Report what was done",
        ];
        let entries: Vec<Value> = steps
            .iter()
            .enumerate()
            .map(|(i, step)| {
                let status = match i.cmp(&done) {
                    std::cmp::Ordering::Less => "completed",
                    std::cmp::Ordering::Equal => "in_progress",
                    std::cmp::Ordering::Greater => "pending",
                };
                json!({ "content": format!("[demo] {step}"), "priority": "medium", "status": status })
            })
            .collect();
        self.io
            .update(
                session,
                json!({ "sessionUpdate": "plan", "entries": entries }),
            )
            .await
    }

    async fn tool(
        &mut self,
        session: &str,
        id: &str,
        status: &str,
        title: Option<(&str, &str)>,
    ) -> std::io::Result<()> {
        self.tool_at(session, id, status, title, None).await
    }

    /// A tool call (with a title and kind) or its update; `path` is the file it touches.
    async fn tool_at(
        &mut self,
        session: &str,
        id: &str,
        status: &str,
        title: Option<(&str, &str)>,
        path: Option<&str>,
    ) -> std::io::Result<()> {
        let locations: Vec<Value> = path.map(|p| json!({ "path": p })).into_iter().collect();
        let update = match title {
            Some((title, kind)) => json!({
                "sessionUpdate": "tool_call", "toolCallId": id, "title": title,
                "kind": kind, "status": status, "locations": locations,
            }),
            None => {
                json!({ "sessionUpdate": "tool_call_update", "toolCallId": id, "status": status })
            }
        };
        self.io.update(session, update).await
    }

    /// One prompt turn; `Err(Interrupted)` when it was cancelled.
    async fn turn(
        &mut self,
        session: &str,
        cwd: &Path,
        prompt: &str,
    ) -> std::io::Result<Result<(), Interrupted>> {
        self.io.say(
            session,
            "This is the SAM demo agent: it uses no model. It reads the repository and writes one file.\n",
        )
        .await?;
        self.plan(session, 0).await?;

        self.tool(
            session,
            "demo-list",
            "in_progress",
            Some(("List the repository", "read")),
        )
        .await?;
        let files = list(cwd);
        self.tool(session, "demo-list", "completed", None).await?;

        let readme = files
            .iter()
            .find(|f| f.to_ascii_lowercase().starts_with("readme"))
            .cloned();
        let mut readme_title = None;
        if let Some(name) = &readme {
            self.tool(
                session,
                "demo-read",
                "in_progress",
                Some((&format!("Read {name}"), "read")),
            )
            .await?;
            let path = cwd.join(name).display().to_string();
            let answer = match self
                .ask(
                    "fs/read_text_file",
                    json!({ "sessionId": session, "path": path }),
                )
                .await?
            {
                Ok(answer) => answer,
                Err(Interrupted) => return Ok(Err(Interrupted)),
            };
            let status = match answer.pointer("/result/content").and_then(Value::as_str) {
                Some(text) => {
                    readme_title = text
                        .lines()
                        .map(str::trim)
                        .find(|l| !l.is_empty())
                        .map(|l| l.trim_start_matches('#').trim().to_owned());
                    "completed"
                }
                None => "failed",
            };
            self.tool(session, "demo-read", status, None).await?;
        }
        self.plan(session, 1).await?;

        let content = summary(prompt, &files, readme_title.as_deref());
        let path = cwd.join(DEMO_FILE).display().to_string();
        self.tool_at(
            session,
            "demo-write",
            "in_progress",
            Some((&format!("Write {DEMO_FILE}"), "edit")),
            Some(&path),
        )
        .await?;
        let answer = match self
            .ask(
                "fs/write_text_file",
                json!({ "sessionId": session, "path": path, "content": content }),
            )
            .await?
        {
            Ok(answer) => answer,
            Err(Interrupted) => return Ok(Err(Interrupted)),
        };
        let written = answer.get("result").is_some();
        self.tool(
            session,
            "demo-write",
            if written { "completed" } else { "failed" },
            None,
        )
        .await?;
        self.plan(session, 2).await?;

        let message = if written {
            format!(
                "Demo agent (no model): I looked at {} top-level entries and wrote {DEMO_FILE} with a summary. Use --agent claude (or codex, gemini, opencode) for real work.",
                files.len()
            )
        } else {
            let error = answer
                .pointer("/error/message")
                .and_then(Value::as_str)
                .unwrap_or("no answer");
            format!("Demo agent (no model): I could not write {DEMO_FILE}: {error}")
        };
        self.plan(session, 3).await?;
        self.io.say(session, &message).await?;
        Ok(Ok(()))
    }
}

/// The text blocks of a `session/prompt`'s prompt.
fn prompt_text(prompt: Option<&Value>) -> String {
    prompt
        .and_then(Value::as_array)
        .map(|blocks| {
            blocks
                .iter()
                .filter_map(|b| b.get("text").and_then(Value::as_str))
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default()
}

/// The workspace's top-level entries, sorted, without `.git`; directories end in `/`.
fn list(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .filter(|e| e.file_name() != ".git")
                .map(|e| {
                    let mut name = e.file_name().to_string_lossy().into_owned();
                    if e.file_type().is_ok_and(|t| t.is_dir()) {
                        name.push('/');
                    }
                    name
                })
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names.truncate(MAX_LISTED);
    names
}

/// The content of [`DEMO_FILE`].
fn summary(prompt: &str, files: &[String], readme_title: Option<&str>) -> String {
    let mut text = String::from("# SAM demo agent\n\n");
    text.push_str(
        "This file was written by the SAM **demo** agent, which uses no model: it shows that a task ran end to end.\n\n",
    );
    text.push_str("## The prompt\n\n");
    for line in prompt.lines() {
        text.push_str("> ");
        text.push_str(line);
        text.push('\n');
    }
    if let Some(title) = readme_title {
        text.push_str(&format!(
            "\n## The repository\n\nIts README begins with: {title}\n"
        ));
    }
    text.push_str(&format!("\n## Top-level entries ({})\n\n", files.len()));
    for name in files {
        text.push_str(&format!("- `{name}`\n"));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_names_the_prompt_and_the_files() {
        let text = summary(
            "fix the flaky test\nplease",
            &["README.md".into(), "src/".into()],
            Some("My project"),
        );
        assert!(text.contains("> fix the flaky test\n> please\n"));
        assert!(text.contains("- `src/`"));
        assert!(text.contains("My project"));
        assert!(text.contains("demo"));
    }

    #[test]
    fn listing_skips_git_and_marks_directories() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join(".git")).unwrap();
        std::fs::create_dir(dir.path().join("src")).unwrap();
        std::fs::write(dir.path().join("b.txt"), "b").unwrap();
        assert_eq!(
            list(dir.path()),
            vec!["b.txt".to_owned(), "src/".to_owned()]
        );
    }
}
