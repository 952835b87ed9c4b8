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
    let output = tokio::time::timeout(Duration::from_secs(60), command.output())
        .await
        .expect("sam run finished within a minute")
        .expect("sam runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let json = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "stdout is one JSON object ({e}):\n{stdout}\nstderr:\n{}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    (output, json)
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
    assert!(!output.status.success(), "a failed task exits non-zero");
    assert_eq!(json["status"], "failed", "{json}");
    assert_eq!(json["error"]["category"], "auth_error", "{json}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "auth errors are not retried: took {:?}",
        started.elapsed()
    );
}
