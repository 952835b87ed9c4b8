//! The `sam` commands that talk to a `sam-server` process, end to end: exit codes,
//! `logs`, `watch`, `status`, `nodes`, `retry`, `fork`, `catalog`.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use serde_json::Value;

mod common;
use common::server::{ServerProcess, TOKEN, free_port};
use common::{StopNodes, repo};

/// Runs `sam ARGS` against `server` (or no server) with `token`; never hangs.
async fn sam(server: &str, token: &str, args: &[&str]) -> Output {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_sam"));
    command
        .args(args)
        .env("SAM_SERVER", server)
        .env("SAM_API_TOKEN", token)
        .kill_on_drop(true);
    tokio::time::timeout(Duration::from_secs(90), command.output())
        .await
        .expect("sam finished within 90 s")
        .expect("sam runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Submits a demo task on `repo` and returns its id.
async fn submit(server: &str, repo: &Path, extra: &[&str]) -> String {
    let repo = repo.display().to_string();
    let mut args = vec!["submit", "--repo", &repo, "--agent", "demo"];
    args.extend_from_slice(extra);
    args.push("say hello");
    let output = sam(server, TOKEN, &args).await;
    assert!(output.status.success(), "{}", text(&output.stderr));
    text(&output.stdout).trim().to_owned()
}

/// Bad arguments exit 2, a closed port 5, a refused token 6.
#[tokio::test(flavor = "multi_thread")]
async fn usage_unreachable_and_auth_errors_have_their_own_exit_codes() {
    let closed = format!("http://127.0.0.1:{}", free_port());
    for args in [
        &["status"][..],
        &["list", "--status", "running"],
        &["submit", "--size", "huge", "x"],
    ] {
        let output = sam(&closed, TOKEN, args).await;
        assert_eq!(
            output.status.code(),
            Some(2),
            "{args:?}: {}",
            text(&output.stderr)
        );
    }
    let output = sam(&closed, TOKEN, &["status", "t-1"]).await;
    assert_eq!(output.status.code(), Some(5), "{}", text(&output.stderr));
    assert!(text(&output.stderr).contains("cannot reach the server"));
    let help = sam(&closed, TOKEN, &["--help"]).await;
    assert!(help.status.success());
    assert!(
        text(&help.stdout).contains("Exit codes:"),
        "{}",
        text(&help.stdout)
    );

    let data = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(data.path()).await;
    let output = sam(&server.base, "not-the-token", &["list"]).await;
    assert_eq!(output.status.code(), Some(6), "{}", text(&output.stderr));
    // The server behind a path prefix is not this one: a 404, a plain error.
    let output = sam(&server.url("/prefix"), TOKEN, &["list"]).await;
    assert_eq!(output.status.code(), Some(1), "{}", text(&output.stderr));
    assert!(
        text(&output.stderr).contains("404"),
        "{}",
        text(&output.stderr)
    );
}

/// A finished task's transcript is read back with `sam logs` (text and NDJSON),
/// `sam status` shows its last step and message, `sam watch` on it shows no step
/// display; a cancelled task exits 4, a failed one 3; `retry`, `fork`, `nodes`
/// and `catalog` work.
#[tokio::test(flavor = "multi_thread")]
async fn a_finished_task_is_read_back_and_the_task_commands_work() {
    let repo = repo();
    let data = tempfile::tempdir().unwrap();
    let _nodes = StopNodes(data.path().to_owned());
    let server = ServerProcess::start(data.path()).await;
    let base = server.base.clone();

    // A task followed live: the agent's text streams on stderr, NDJSON on stdout.
    let repo_path = repo.path().display().to_string();
    let output = sam(
        &base,
        TOKEN,
        &[
            "submit",
            "--watch",
            "--json",
            "--repo",
            &repo_path,
            "say hello",
        ],
    )
    .await;
    let (stdout, stderr) = (text(&output.stdout), text(&output.stderr));
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("Demo agent (no model)"),
        "the agent's text: {stderr}"
    );
    let lines: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    let task = lines.last().expect("the task");
    assert_eq!(task["status"], "completed", "{stdout}");
    let id = task["id"].as_str().unwrap().to_owned();
    let live: Vec<&Value> = lines[..lines.len() - 1].iter().collect();
    assert!(
        live.iter().all(|e| e["task_id"] == id.as_str()),
        "NDJSON events of the task: {stdout}"
    );

    // `sam logs`: the stored transcript, the same events the live client saw.
    let output = sam(&base, TOKEN, &["logs", &id, "--json"]).await;
    assert!(output.status.success(), "{}", text(&output.stderr));
    let stored: Vec<Value> = text(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    let ids: Vec<u64> = stored.iter().filter_map(|e| e["id"].as_u64()).collect();
    assert_eq!(
        ids,
        (1..=stored.len() as u64).collect::<Vec<_>>(),
        "numbered 1…n"
    );
    let agent_text = |events: &[&Value]| -> String {
        events
            .iter()
            .filter(|e| e["kind"]["event"]["update"]["sessionUpdate"] == "agent_message_chunk")
            .filter_map(|e| e["kind"]["event"]["update"]["content"]["text"].as_str())
            .collect()
    };
    let stored_refs: Vec<&Value> = stored.iter().collect();
    assert_eq!(
        agent_text(&stored_refs),
        agent_text(&live),
        "read back = seen live"
    );
    assert!(agent_text(&stored_refs).contains("Demo agent (no model)"));
    let output = sam(&base, TOKEN, &["logs", &id]).await;
    let logs = text(&output.stdout);
    assert!(output.status.success(), "{}", text(&output.stderr));
    for expected in [
        "Demo agent (no model)",
        "✓ tool: Write SAM_DEMO.md (completed)",
        "plan:",
        "task completed",
    ] {
        assert!(logs.contains(expected), "{expected}: {logs}");
    }

    // `sam status`: the last step and the agent's last message.
    let output = sam(&base, TOKEN, &["status", &id]).await;
    let status = text(&output.stdout);
    assert!(
        status.contains("last message      Demo agent (no model)"),
        "{status}"
    );
    // `sam watch` on a finished task: its transcript, no step line timed now.
    let output = sam(&base, TOKEN, &["watch", &id]).await;
    assert!(output.status.success());
    assert!(
        !text(&output.stderr).contains("0.0s"),
        "{}",
        text(&output.stderr)
    );

    // `sam retry` and `sam fork` start new tasks that record their parent.
    for args in [
        vec!["retry", id.as_str(), "--watch", "--json"],
        vec![
            "fork",
            id.as_str(),
            "--prompt",
            "and more",
            "--watch",
            "--json",
        ],
    ] {
        let output = sam(&base, TOKEN, &args).await;
        let stdout = text(&output.stdout);
        assert!(
            output.status.success(),
            "{args:?}: {}",
            text(&output.stderr)
        );
        let task: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
        assert_eq!(task["status"], "completed", "{task}");
        assert_ne!(task["id"], id.as_str());
        assert_eq!(
            task["source"]["parent_task_id"],
            id.as_str(),
            "{args:?}: {task}"
        );
    }

    // `sam nodes`: the node with its health; `sam catalog`: specs.
    let output = sam(&base, TOKEN, &["nodes"]).await;
    let nodes = text(&output.stdout);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(nodes.starts_with("NODE "), "{nodes}");
    assert!(
        nodes.contains(task["node"].as_str().expect("a node")),
        "{nodes}"
    );
    let output = sam(&base, TOKEN, &["catalog"]).await;
    let catalog = text(&output.stdout);
    assert!(
        catalog.contains("2 vCPU · 4 GB RAM · 40 GB disk"),
        "{catalog}"
    );

    // A cancelled task exits 4; a failed one (no such branch) 3.
    let cancelled = submit(&base, repo.path(), &[]).await;
    let output = sam(&base, TOKEN, &["cancel", &cancelled]).await;
    assert!(output.status.success(), "{}", text(&output.stderr));
    let output = sam(&base, TOKEN, &["watch", &cancelled]).await;
    assert_eq!(output.status.code(), Some(4), "{}", text(&output.stdout));
    let failed = submit(&base, repo.path(), &["--branch", "no-such-branch"]).await;
    let output = sam(&base, TOKEN, &["watch", &failed]).await;
    assert_eq!(output.status.code(), Some(3), "{}", text(&output.stdout));
    let output = sam(&base, TOKEN, &["logs", &failed, "--follow"]).await;
    assert_eq!(output.status.code(), Some(3), "{}", text(&output.stdout));
    assert!(
        text(&output.stdout).contains("task failed"),
        "{}",
        text(&output.stdout)
    );

    let status = server.terminate().await;
    assert!(status.success());
}
