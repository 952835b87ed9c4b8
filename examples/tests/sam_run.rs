//! `sam run` end to end: real `sam-vm-agent` and `sam-demo-agent` processes over
//! loopback, SQLite in a temporary data directory, a temporary git repository.

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;
use common::{StopNodes, repo};

/// Runs `sam run --json` on `repo` with `data_dir`, then `extra`, then the prompt.
/// Never hangs: the process is killed after a minute.
async fn sam_run(repo: &Path, data_dir: &Path, extra: &[&str]) -> (Output, Value) {
    sam_run_with(repo, data_dir, extra, |_| {}).await
}

/// [`sam_run`] with the command adjusted by `adjust` (its environment, say).
async fn sam_run_with(
    repo: &Path,
    data_dir: &Path,
    extra: &[&str],
    adjust: impl FnOnce(&mut tokio::process::Command),
) -> (Output, Value) {
    let mut command = sam_command(repo, data_dir, extra);
    adjust(&mut command);
    let output = tokio::time::timeout(Duration::from_secs(60), command.output())
        .await
        .expect("sam run finished within a minute")
        .expect("sam runs");
    let json = parse_output(&output);
    (output, json)
}

fn parse_output(output: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "stdout is one JSON object ({e}):\n{stdout}\nstderr:\n{}",
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

fn sam_command(repo: &Path, data_dir: &Path, extra: &[&str]) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_sam"));
    command
        .arg("run")
        .arg("--repo")
        .arg(repo)
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--json")
        .args(extra)
        .arg("say hello")
        .kill_on_drop(true);
    command
}

#[tokio::test(flavor = "multi_thread")]
async fn the_demo_agent_completes_and_a_second_task_reuses_the_warm_node() {
    let repo = repo();
    let data = tempfile::tempdir().unwrap();
    let _nodes = StopNodes(data.path().to_owned());
    let (output, first) = sam_run(repo.path(), data.path(), &[]).await;
    assert!(
        output.status.success(),
        "exit code 0 on completion: {first}"
    );
    for key in [
        "task_id",
        "status",
        "execution_step",
        "node",
        "provisioned_size",
        "error",
    ] {
        assert!(first.get(key).is_some(), "--json has {key}: {first}");
    }
    assert_eq!(first["status"], "completed");
    assert_eq!(first["error"], Value::Null);
    assert_eq!(first["provisioned_size"], "medium");
    assert_eq!(first["node_reused"], false);
    let workspace = Path::new(first["workspace_dir"].as_str().expect("a workspace"));
    let written = std::fs::read_to_string(workspace.join("SAM_DEMO.md"))
        .expect("the demo agent wrote its file in the workspace");
    assert!(written.contains("say hello") && written.contains("demo"));
    assert_eq!(first["files_changed"], serde_json::json!(["SAM_DEMO.md"]));
    // The output branch the task pushed is reported, and is in the user's repository
    // at the reported commit.
    let branch = first["output"]["branch"]
        .as_str()
        .expect("an output branch");
    assert!(branch.starts_with("sam/"), "{first}");
    let commit = first["output"]["commit"].as_str().expect("a commit");
    let head = std::process::Command::new("git")
        .args(["rev-parse", branch])
        .current_dir(repo.path())
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&head.stdout).trim(), commit);

    let (output, second) = sam_run(repo.path(), data.path(), &[]).await;
    assert!(output.status.success(), "{second}");
    assert_eq!(second["node"], first["node"], "the warm node was reused");
    assert_eq!(second["node_reused"], true);
    assert_ne!(second["task_id"], first["task_id"]);
    // A local node has no boot script: its timeline is there, and empty; a warm
    // node's boot is not the task's.
    assert_eq!(first["boot_timeline"], serde_json::json!([]), "{first}");
    assert_eq!(second["boot_timeline"], serde_json::json!([]), "{second}");
    assert_eq!(first["node_replacements"], 0, "{first}");
}

/// An ACP agent that answers `initialize` and `session/new`, then refuses every
/// prompt with ACP's "Authentication required" (-32000), as real agents do without
/// credentials.
const UNAUTHENTICATED_AGENT: &str = r#"
while IFS= read -r line; do
  id=$(printf '%s' "$line" | sed -n 's/.*"id":\([0-9][0-9]*\).*/\1/p')
  case "$line" in
    *'"method":"initialize"'*) printf '{"jsonrpc":"2.0","id":%s,"result":{"protocolVersion":1,"agentCapabilities":{},"authMethods":[]}}\n' "$id" ;;
    *'"method":"session/new"'*) printf '{"jsonrpc":"2.0","id":%s,"result":{"sessionId":"s-1"}}\n' "$id" ;;
    *'"method":"session/prompt"'*) printf '{"jsonrpc":"2.0","id":%s,"error":{"code":-32000,"message":"Authentication required"}}\n' "$id" ;;
  esac
done
"#;

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_without_credentials_fails_fast_with_auth_error() {
    let repo = repo();
    let data = tempfile::tempdir().unwrap();
    let script = data.path().join("unauthenticated-agent.sh");
    std::fs::write(&script, UNAUTHENTICATED_AGENT).unwrap();
    let command = format!("/bin/sh {}", script.display());
    let _nodes = StopNodes(data.path().to_owned());
    let started = Instant::now();
    let (output, json) = sam_run(repo.path(), data.path(), &["--agent-command", &command]).await;
    assert_eq!(
        output.status.code(),
        Some(3),
        "a failed task exits 3: {json}"
    );
    assert_eq!(json["status"], "failed", "{json}");
    assert_eq!(json["error"]["category"], "auth_error", "{json}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "auth errors are not retried: took {:?}",
        started.elapsed()
    );
}

/// An ACP agent in `sh` that starts a tool in a session of its own (`setsid`) when a
/// prompt comes, says it is working and then never ends the turn, ignoring
/// `session/cancel`: only stopping its whole process tree stops it. It writes its own
/// pid and the tool's to the directory given as its argument.
const STUBBORN_AGENT: &str = r#"
echo $$ > "$1/agent.pid"
while IFS= read -r line; do
  id=$(printf '%s' "$line" | sed -n 's/.*"id":\([0-9][0-9]*\).*/\1/p')
  case "$line" in
    *'"method":"initialize"'*) printf '{"jsonrpc":"2.0","id":%s,"result":{"protocolVersion":1,"agentCapabilities":{},"authMethods":[]}}\n' "$id" ;;
    *'"method":"session/new"'*) printf '{"jsonrpc":"2.0","id":%s,"result":{"sessionId":"s-1"}}\n' "$id" ;;
    *'"method":"session/prompt"'*)
      setsid sleep 600 </dev/null >/dev/null 2>&1 &
      echo $! > "$1/tool.pid.tmp" && mv "$1/tool.pid.tmp" "$1/tool.pid"
      printf '{"jsonrpc":"2.0","method":"session/update","params":{"sessionId":"s-1","update":{"sessionUpdate":"agent_message_chunk","content":{"type":"text","text":"working"}}}}\n' ;;
  esac
done
"#;

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X")
    })
}

/// `sam run` with the stubborn agent on `data`, once the agent has its prompt: the
/// process, and the pids of the agent and of its `setsid` tool.
async fn run_stubborn(repo: &Path, data: &Path, pids: &Path) -> (tokio::process::Child, u32, u32) {
    let script = data.join("stubborn-agent.sh");
    std::fs::create_dir_all(data).unwrap();
    std::fs::write(&script, STUBBORN_AGENT).unwrap();
    let command = format!("/bin/sh {} {}", script.display(), pids.display());
    let mut sam = sam_command(repo, data, &["--agent-command", &command]);
    sam.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let child = sam.spawn().expect("sam runs");
    let tool_file = pids.join("tool.pid");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !tool_file.exists() {
        assert!(Instant::now() < deadline, "the agent never got its prompt");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let read_pid = |name: &str| -> u32 {
        std::fs::read_to_string(pids.join(name))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    (child, read_pid("agent.pid"), read_pid("tool.pid"))
}

/// SIGINT on `sam run` cancels the task, prints the result and exits 130; no process
/// of the agent's tree survives, the `setsid` tool included.
#[tokio::test(flavor = "multi_thread")]
async fn an_interrupt_cancels_the_task_and_stops_the_agent_tree() {
    let repo = repo();
    let data = tempfile::tempdir().unwrap();
    let pids = tempfile::tempdir().unwrap();
    let _nodes = StopNodes(data.path().to_owned());
    let (child, agent, tool) = run_stubborn(repo.path(), data.path(), pids.path()).await;
    let sam_pid = child.id().unwrap();
    assert!(alive(agent) && alive(tool), "the agent and its tool run");

    let status = std::process::Command::new("kill")
        .args(["-INT", &sam_pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let output = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("sam run ends after an interrupt")
        .unwrap();
    let json = parse_output(&output);
    assert_eq!(output.status.code(), Some(130), "{json}");
    assert_eq!(json["status"], "cancelled", "{json}");

    let deadline = Instant::now() + Duration::from_secs(15);
    while alive(agent) || alive(tool) {
        assert!(
            Instant::now() < deadline,
            "agent {agent} alive: {}, setsid tool {tool} alive: {}",
            alive(agent),
            alive(tool)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A second `sam run` on a data directory another one is using is refused; a task
/// that a killed `sam run` left live is cancelled by the next run (its agent
/// stopped), never run again.
#[tokio::test(flavor = "multi_thread")]
async fn a_task_a_killed_run_left_live_is_cancelled_by_the_next_run() {
    use sam_core::{TaskFilter, TaskStatus, TaskStore as _};
    let repo = repo();
    let data = tempfile::tempdir().unwrap();
    let pids = tempfile::tempdir().unwrap();
    let _nodes = StopNodes(data.path().to_owned());
    let (mut first, agent, tool) = run_stubborn(repo.path(), data.path(), pids.path()).await;

    // While the first runs, a second on the same data directory is refused.
    let output = tokio::time::timeout(
        Duration::from_secs(60),
        sam_command(repo.path(), data.path(), &[]).output(),
    )
    .await
    .expect("refused at once")
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("another `sam run` is using"), "{stderr}");

    // Killed outright, the first leaves its task live.
    first.kill().await.unwrap();
    assert!(alive(agent), "the node's agent outlives the killed run");

    let (output, json) = sam_run(repo.path(), data.path(), &[]).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{json}\n{stderr}");
    assert_eq!(json["status"], "completed", "{json}");
    assert!(
        stderr.contains("note: cancelled task t-"),
        "the run says what it ended: {stderr}"
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    while alive(agent) || alive(tool) {
        assert!(Instant::now() < deadline, "the left-over agent was stopped");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let store =
        sam_store::SqliteStore::new(&sam_store::SqliteConfig::new(data.path().join("sam.db")))
            .await
            .unwrap();
    let tasks = store.list_tasks(&TaskFilter::default()).await.unwrap();
    let statuses: Vec<TaskStatus> = tasks.iter().map(|t| t.status).collect();
    assert_eq!(
        statuses,
        [TaskStatus::Cancelled, TaskStatus::Completed],
        "{tasks:?}"
    );
    let ended = store.list_status_events(&tasks[0].id).await.unwrap();
    assert_eq!(
        ended.last().map(|e| e.actor.as_str()),
        Some(sam_examples::embedded::LEFTOVER_ACTOR)
    );
}

/// A `gemini` stand-in that says whether `GEMINI_API_KEY` reached it (by a digest:
/// the key itself would be masked as the secret it is), and ends its turn.
const KEY_REPORTING_GEMINI: &str = r#"#!/bin/sh
while IFS= read -r line; do
  id=$(printf '%s' "$line" | sed -n 's/.*"id":\([0-9][0-9]*\).*/\1/p')
  case "$line" in
    *'"method":"initialize"'*) printf '{"jsonrpc":"2.0","id":%s,"result":{"protocolVersion":1,"agentCapabilities":{},"authMethods":[]}}\n' "$id" ;;
    *'"method":"session/new"'*) printf '{"jsonrpc":"2.0","id":%s,"result":{"sessionId":"s-1"}}\n' "$id" ;;
    *'"method":"session/prompt"'*)
      if [ -n "$GEMINI_API_KEY" ]; then key="key $(printf %s "$GEMINI_API_KEY" | sha256sum | cut -c1-16)"; else key="no key"; fi
      printf '{"jsonrpc":"2.0","method":"session/update","params":{"sessionId":"s-1","update":{"sessionUpdate":"agent_message_chunk","content":{"type":"text","text":"%s"}}}}\n' "$key"
      printf '{"jsonrpc":"2.0","id":%s,"result":{"stopReason":"end_turn"}}\n' "$id" ;;
  esac
done
"#;

/// The key of the second run reaches the agent on the warm node the first run
/// started without it.
#[tokio::test(flavor = "multi_thread")]
async fn a_key_set_on_a_later_run_reaches_the_reused_warm_node() {
    use std::os::unix::fs::PermissionsExt as _;
    let repo = repo();
    let data = tempfile::tempdir().unwrap();
    let bin = tempfile::tempdir().unwrap();
    let gemini = bin.path().join("gemini");
    std::fs::write(&gemini, KEY_REPORTING_GEMINI).unwrap();
    std::fs::set_permissions(&gemini, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        bin.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let _nodes = StopNodes(data.path().to_owned());
    let (output, first) = sam_run_with(repo.path(), data.path(), &["--agent", "gemini"], |c| {
        c.env("PATH", &path).env_remove("GEMINI_API_KEY");
    })
    .await;
    assert!(output.status.success(), "{first}");
    assert_eq!(first["last_message"], "no key", "{first}");
    let (output, second) = sam_run_with(repo.path(), data.path(), &["--agent", "gemini"], |c| {
        c.env("PATH", &path).env("GEMINI_API_KEY", "second-run-key");
    })
    .await;
    assert!(output.status.success(), "{second}");
    assert_eq!(second["node_reused"], true, "{second}");
    // The first 16 hex digits of the SHA-256 of "second-run-key".
    let digest = std::process::Command::new("sh")
        .args(["-c", "printf %s second-run-key | sha256sum | cut -c1-16"])
        .output()
        .unwrap();
    let digest = String::from_utf8_lossy(&digest.stdout).trim().to_owned();
    assert_eq!(second["last_message"], format!("key {digest}"), "{second}");
    // Nothing of the second run's environment survives into the third.
    let (output, third) = sam_run_with(repo.path(), data.path(), &["--agent", "gemini"], |c| {
        c.env("PATH", &path).env_remove("GEMINI_API_KEY");
    })
    .await;
    assert!(output.status.success(), "{third}");
    assert_eq!(third["node_reused"], true, "{third}");
    assert_eq!(third["last_message"], "no key", "{third}");
}

/// `sam completions SHELL` prints a completion script naming the commands and the
/// values of closed sets, without the hidden helper roles, for every shell
/// clap_complete knows; another shell is a usage error (exit 2).
#[test]
fn completions_are_generated_for_each_shell() {
    let sam = env!("CARGO_BIN_EXE_sam");
    for (shell, marker) in [
        ("bash", "_sam()"),
        ("zsh", "#compdef sam"),
        ("fish", "complete -c sam"),
        ("elvish", "edit:completion:arg-completer[sam]"),
        ("powershell", "Register-ArgumentCompleter"),
    ] {
        let output = std::process::Command::new(sam)
            .args(["completions", shell])
            .output()
            .expect("sam runs");
        assert!(output.status.success(), "{shell}");
        let script = String::from_utf8_lossy(&output.stdout);
        assert!(script.contains(marker), "{shell}: {script}");
        for command in [
            "run",
            "status",
            "watch",
            "logs",
            "nodes",
            "retry",
            "fork",
            "down",
            "completions",
        ] {
            assert!(script.contains(command), "{shell} completes {command}");
        }
        // The helper roles are hidden from completions too (the binaries
        // `sam-vm-agent` and `sam-demo-agent` are named in descriptions).
        let without_binaries = script
            .replace("sam-vm-agent", "")
            .replace("sam-demo-agent", "");
        for role in ["vm-agent", "demo-agent", "git-credential"] {
            assert!(
                !without_binaries.contains(role),
                "{shell} does not complete {role}"
            );
        }
        // Closed sets list their values (in the shells whose scripts complete values).
        if ["bash", "zsh", "fish"].contains(&shell) {
            for value in ["medium", "scaleway", "in_progress"] {
                assert!(
                    script.contains(value),
                    "{shell} completes the value {value}"
                );
            }
        }
        if shell == "bash" {
            // Real bash parses it (`-n`: read, do not run).
            let dir = tempfile::tempdir().unwrap();
            let file = dir.path().join("sam.bash");
            std::fs::write(&file, script.as_bytes()).unwrap();
            let parsed = std::process::Command::new("bash")
                .arg("-n")
                .arg(&file)
                .output()
                .expect("bash runs");
            assert!(
                parsed.status.success(),
                "bash -n: {}",
                String::from_utf8_lossy(&parsed.stderr)
            );
        }
    }
    let refused = std::process::Command::new(sam)
        .args(["completions", "tcsh"])
        .output()
        .expect("sam runs");
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("possible values"));
}

/// The directory `sam run` keeps its local nodes in holds no node.
fn no_node_in(data_dir: &Path) -> bool {
    std::fs::read_dir(data_dir.join("local")).map_or(true, |mut dir| dir.next().is_none())
}

/// `sam run` refuses, with the usage exit code 2 and before any node is started,
/// a directory that is not a git repository and an agent command not on `PATH`.
#[tokio::test(flavor = "multi_thread")]
async fn pre_flight_checks_refuse_before_any_node_is_started() {
    let not_git = tempfile::tempdir().unwrap();
    let repo = repo();
    let data = tempfile::tempdir().unwrap();
    let _nodes = StopNodes(data.path().to_owned());
    let empty_path = tempfile::tempdir().unwrap();
    let cases: [(&Path, &[&str], &str); 3] = [
        (not_git.path(), &[], "is not a git repository"),
        (
            repo.path(),
            &["--agent-command", "/nonexistent/acp-agent --stdio"],
            "`/nonexistent/acp-agent` is not on PATH",
        ),
        (
            repo.path(),
            &["--agent", "codex"],
            "`codex-acp` is not on PATH: `npm install -g @zed-industries/codex-acp`",
        ),
    ];
    for (repo, extra, expected) in cases {
        let mut command = sam_command(repo, data.path(), extra);
        // A PATH with git (the check needs it) and no agent.
        command.env(
            "PATH",
            format!("{}:/usr/bin:/bin", empty_path.path().display()),
        );
        let output = tokio::time::timeout(Duration::from_secs(60), command.output())
            .await
            .expect("sam run finished within a minute")
            .expect("sam runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{expected}: {stderr}");
        assert!(stderr.contains(expected), "{expected}: {stderr}");
        assert!(output.stdout.is_empty(), "{expected}: nothing on stdout");
        assert!(no_node_in(data.path()), "{expected}: no node was started");
    }
}

/// `sam run` takes the submit flags: an explicit size is the task's, never
/// downgraded; an unknown size is a usage error listing the sizes.
#[tokio::test(flavor = "multi_thread")]
async fn run_takes_the_size_and_branch_flags() {
    let repo = repo();
    let data = tempfile::tempdir().unwrap();
    let _nodes = StopNodes(data.path().to_owned());
    let (output, json) = sam_run(repo.path(), data.path(), &["--size", "small"]).await;
    assert!(output.status.success(), "{json}");
    assert_eq!(json["provisioned_size"], "small", "{json}");
    assert_eq!(json["size"]["source"], "task", "{json}");
    let (output, json) = sam_run(repo.path(), data.path(), &["--branch", "no-such-branch"]).await;
    assert_eq!(output.status.code(), Some(3), "{json}");
    assert_eq!(json["status"], "failed", "{json}");
    let refused = sam_command(repo.path(), data.path(), &["--size", "huge"])
        .output()
        .await
        .unwrap();
    assert_eq!(refused.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("[possible values: small, medium, large]"),
        "{stderr}"
    );
}
