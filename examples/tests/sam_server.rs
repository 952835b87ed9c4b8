//! `sam-server` end to end: a real server process on loopback with SQLite in a
//! temporary data directory, real `sam-vm-agent` and demo agent processes, the API
//! over HTTP and the `sam` client commands. Every wait has a timeout.

use std::time::Duration;

use serde_json::{Value, json};

mod common;
use common::server::{
    ServerProcess, TOKEN, call, free_port, fresh_schema, read_events, read_events_after,
    read_transcript, server_command, server_command_of, submit_and_follow, submit_demo,
};
use common::{StopNodes, repo};

#[tokio::test(flavor = "multi_thread")]
async fn a_task_runs_through_the_server_and_a_second_reuses_the_warm_node() {
    let repo = repo();
    let data = tempfile::tempdir().unwrap();
    let _nodes = StopNodes(data.path().to_owned());
    let server = ServerProcess::start(data.path()).await;
    let http = reqwest::Client::new();

    // Submit, then follow the events to the end.
    let (id, events) = submit_and_follow(&server, &http, repo.path()).await;
    let steps: Vec<&str> = events
        .iter()
        .filter(|(name, _)| name == "step")
        .filter_map(|(_, data)| data["kind"]["step"].as_str())
        .collect();
    assert!(
        steps.contains(&"running"),
        "the steps were streamed: {events:?}"
    );
    let (last, end) = events.last().expect("events");
    assert_eq!(
        last, "status",
        "the stream ends with the status: {events:?}"
    );
    assert_eq!(end["kind"]["status"], "completed", "{end}");
    assert_eq!(end["task_id"], id.as_str());

    // The transcript, read back as JSON pages after the end, is what the live client
    // saw: every entry, numbered 1, 2, … without a gap.
    let transcript = read_transcript(&http, &server, &id, 5).await;
    let live: Vec<Value> = events.iter().map(|(_, data)| data.clone()).collect();
    assert_eq!(transcript, live, "read back equals seen live");
    let numbers: Vec<u64> = transcript
        .iter()
        .map(|e| e["id"].as_u64().expect("a number"))
        .collect();
    assert_eq!(numbers, (1..=numbers.len() as u64).collect::<Vec<_>>());
    let said: String = transcript
        .iter()
        .filter(|e| e["kind"]["event"]["update"]["sessionUpdate"] == "agent_message_chunk")
        .filter_map(|e| e["kind"]["event"]["update"]["content"]["text"].as_str())
        .collect();
    assert!(
        !said.is_empty(),
        "the agent's words are kept: {transcript:?}"
    );
    for kind in ["plan", "tool_call", "tool_call_update"] {
        assert!(
            transcript
                .iter()
                .any(|e| e["kind"]["event"]["update"]["sessionUpdate"] == kind),
            "the agent's {kind} is kept: {transcript:?}"
        );
    }
    assert!(
        transcript
            .iter()
            .any(|e| e["kind"]["type"] == "last_message"),
        "{transcript:?}"
    );
    // A stream resumed after an entry replays exactly what came after it.
    let middle = numbers[numbers.len() / 2];
    let resumed = read_events_after(
        &http,
        &server.url(&format!("/v1/tasks/{id}/events")),
        Some(middle),
    )
    .await;
    let resumed: Vec<Value> = resumed.into_iter().map(|(_, data)| data).collect();
    assert_eq!(resumed, live[middle as usize..], "no gap, no repeat");
    // Reads by kind.
    let (status, page) = call(
        http.get(server.url(&format!("/v1/tasks/{id}/events?kind=status")))
            .bearer_auth(TOKEN),
    )
    .await;
    assert_eq!(status, 200, "{page}");
    let statuses: Vec<&str> = page["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["kind"]["status"].as_str())
        .collect();
    assert_eq!(
        statuses,
        ["queued", "delegated", "in_progress", "completed"],
        "{page}"
    );
    assert_eq!(page["ended"], true);

    // Poll the task: completed, with its size, provenance and placement.
    let (status, task) = call(
        http.get(server.url(&format!("/v1/tasks/{id}")))
            .bearer_auth(TOKEN),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(task["status"], "completed", "{task}");
    assert_eq!(task["error"], Value::Null);
    assert_eq!(task["execution_step"]["step"], "running");
    assert_eq!(task["execution_step"]["label"], "Agent is working…");
    assert_eq!(task["size"]["source"], "platform");
    assert_eq!(task["size"]["provisioned"], "medium");
    assert!(task["reservation"].is_object(), "{task}");
    assert!(task["placement"]["reason"].is_string(), "{task}");
    assert_eq!(task["node_reused"], false);
    assert!(
        task["output"]["branch"]
            .as_str()
            .is_some_and(|b| b.starts_with("sam/")),
        "the output branch is on the task: {task}"
    );
    let node = task["node"].as_str().expect("a node").to_owned();
    assert!(task["boot_timeline"].is_array(), "{task}");
    assert_eq!(task["node_replacements"], 0, "{task}");
    // One node, with its boot record.
    let (status, shown) = call(
        http.get(server.url(&format!("/v1/nodes/{node}")))
            .bearer_auth(TOKEN),
    )
    .await;
    assert_eq!(status, 200, "{shown}");
    assert_eq!(shown["id"], node.as_str(), "{shown}");
    assert!(shown["boot"]["timeline"].is_array(), "{shown}");
    assert_eq!(shown["boot"]["failure"], Value::Null, "{shown}");
    let (status, missing) = call(
        http.get(server.url("/v1/nodes/n-missing"))
            .bearer_auth(TOKEN),
    )
    .await;
    assert_eq!(
        (status, &missing["category"]),
        (404, &Value::from("not_found")),
        "{missing}"
    );
    let (status, _) = call(http.get(server.url(&format!("/v1/nodes/{node}")))).await;
    assert_eq!(status, 401, "a node is shown only with a token");
    let workspace = task["workspace"].as_str().expect("a workspace");

    // The task has ended: a late output callback with the workspace's own token
    // (what code in the workspace could send) is refused and changes nothing.
    let signer = server_signer(data.path());
    let workspace_token = signer.issue(
        sam_core::TokenScope::Workspace,
        workspace,
        chrono::Utc::now(),
        Duration::from_secs(600),
    );
    let (status, refused) = call(
        http.post(server.url(&format!("/v1/workspaces/{workspace}/events")))
            .bearer_auth(workspace_token.expose())
            .json(&json!({
                "kind": "output",
                "branch": "evil",
                "commit": "0000000",
                "pull_request_url": "https://evil.example/pr/1",
            })),
    )
    .await;
    assert_eq!(status, 409, "a late output is refused: {refused}");
    assert_eq!(refused["category"], "conflict", "{refused}");
    let (_, after) = call(
        http.get(server.url(&format!("/v1/tasks/{id}")))
            .bearer_auth(TOKEN),
    )
    .await;
    assert_eq!(
        after["output"], task["output"],
        "the finished task's output is unchanged"
    );
    let written = data
        .path()
        .join("workspaces")
        .join(workspace)
        .join("SAM_DEMO.md");
    assert!(
        written.is_file(),
        "the demo agent wrote {}",
        written.display()
    );

    // The second task, through the CLI: `sam submit --watch` follows it to the end.
    let output = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_sam"))
            .args(["submit", "--watch", "--json", "--server", &server.base])
            .arg("--repo")
            .arg(repo.path())
            .arg("say hello again")
            .env("SAM_API_TOKEN", TOKEN)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("sam submit --watch finished within a minute")
    .expect("sam runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("Agent is working…"),
        "the step display: {stderr}"
    );
    // NDJSON: the task's events, then the task.
    let second: Value = serde_json::from_str(stdout.trim().lines().last().unwrap_or(""))
        .expect("the task as the last JSON line");
    assert_eq!(second["status"], "completed");
    assert_eq!(second["node"], node.as_str(), "the warm node was reused");
    assert_eq!(second["node_reused"], true);

    // Cancelling a finished task changes nothing.
    let (status, cancelled) = call(
        http.post(server.url(&format!("/v1/tasks/{id}/cancel")))
            .bearer_auth(TOKEN),
    )
    .await;
    assert_eq!(status, 200, "{cancelled}");
    assert_eq!(cancelled["cancelled"], false);
    assert_eq!(cancelled["status"], "completed");

    // The list, the nodes, the catalog.
    let (_, list) = call(
        http.get(server.url("/v1/tasks?status=completed&limit=1"))
            .bearer_auth(TOKEN),
    )
    .await;
    assert_eq!(list["tasks"].as_array().map(Vec::len), Some(1), "{list}");
    let after = list["next_after"].as_str().expect("a cursor").to_owned();
    let (_, rest) = call(
        http.get(server.url(&format!("/v1/tasks?after={after}")))
            .bearer_auth(TOKEN),
    )
    .await;
    assert_eq!(rest["tasks"][0]["id"], second["id"], "{rest}");
    let (_, nodes) = call(http.get(server.url("/v1/nodes")).bearer_auth(TOKEN)).await;
    assert_eq!(nodes.as_array().map(Vec::len), Some(1), "{nodes}");
    let (_, catalog) = call(http.get(server.url("/v1/catalog")).bearer_auth(TOKEN)).await;
    assert_eq!(catalog["provider"], "local", "{catalog}");
    assert_eq!(catalog["sizes"].as_array().map(Vec::len), Some(3));

    let status = server.terminate().await;
    assert!(status.success(), "a graceful shutdown: {status}");
}

/// `cargo run --release --bin sam-server` builds only `sam-server`: with no
/// `sam-vm-agent` or `sam-demo-agent` beside it, its local nodes run the server's own
/// `vm-agent` and `demo-agent` roles (and git its `git-credential` role).
/// A client that loses its connection while the task runs reconnects with the
/// last entry it saw and misses nothing and sees nothing twice.
#[tokio::test(flavor = "multi_thread")]
async fn a_stream_dropped_while_the_task_runs_resumes_with_no_gap_and_no_repeat() {
    let repo = repo();
    let data = tempfile::tempdir().unwrap();
    let _nodes = StopNodes(data.path().to_owned());
    let server = ServerProcess::start(data.path()).await;
    let http = reqwest::Client::new();
    let id = submit_demo(&server, &http, repo.path()).await;
    let url = server.url(&format!("/v1/tasks/{id}/events"));

    // Read the first three entries, then drop the connection.
    let mut response = http
        .get(&url)
        .bearer_auth(TOKEN)
        .header("accept", "text/event-stream")
        .send()
        .await
        .expect("reachable");
    let mut bytes = Vec::new();
    let first = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let chunk = response.chunk().await.expect("the stream").expect("more");
            bytes.extend_from_slice(&chunk);
            // Whole frames only: up to the last blank line.
            let text = String::from_utf8_lossy(&bytes).into_owned();
            let whole = &text[..text.rfind("\n\n").map_or(0, |i| i + 2)];
            let frames = common::server::parse_frames(whole);
            if frames.len() >= 3 {
                return frames;
            }
        }
    })
    .await
    .expect("three entries within a minute");
    drop(response);
    let last = first.last().expect("entries").1["id"]
        .as_u64()
        .expect("a number");
    assert_eq!(last, first.len() as u64);

    // Reconnect after the last entry seen, read to the end.
    let rest = read_events_after(&http, &url, Some(last)).await;
    let seen: Vec<Value> = first
        .into_iter()
        .chain(rest)
        .map(|(_, data)| data)
        .collect();
    let numbers: Vec<u64> = seen.iter().map(|e| e["id"].as_u64().unwrap()).collect();
    assert_eq!(
        numbers,
        (1..=numbers.len() as u64).collect::<Vec<_>>(),
        "no gap and no repeat across the reconnect"
    );
    assert_eq!(seen.last().unwrap()["kind"]["status"], "completed");
    assert_eq!(seen, read_transcript(&http, &server, &id, 1000).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lone_sam_server_runs_its_own_helper_roles() {
    let repo = repo();
    let data = tempfile::tempdir().unwrap();
    let _nodes = StopNodes(data.path().to_owned());
    let bin = tempfile::tempdir().unwrap();
    let lone = bin.path().join("sam-server");
    std::fs::copy(env!("CARGO_BIN_EXE_sam-server"), &lone).expect("copy sam-server");
    assert_eq!(
        std::fs::read_dir(bin.path()).unwrap().count(),
        1,
        "sam-server is alone in its directory"
    );
    let port = free_port();
    let mut command = server_command_of(&lone, data.path(), port, &[], &[]);
    command
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let server = ServerProcess::launch(command, port).await;
    let http = reqwest::Client::new();
    let (id, events) = submit_and_follow(&server, &http, repo.path()).await;
    let (_, end) = events.last().expect("events");
    assert_eq!(end["kind"]["status"], "completed", "task {id}: {events:?}");
    server.terminate().await;

    // The VM agent played as a role logs through tracing, like `sam-vm-agent`:
    // plain lines (its log is a file, not a terminal).
    let node_logs: Vec<String> = std::fs::read_dir(data.path().join("local/vms"))
        .expect("the local provider's directory")
        .flatten()
        .map(|entry| entry.path().join("node.log"))
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .collect();
    assert!(
        node_logs
            .iter()
            .any(|log| log.contains(" INFO ") && log.contains("sam-vm-agent starting")),
        "the role's log has its start at INFO: {node_logs:?}"
    );
    assert!(
        node_logs.iter().all(|log| !log.contains('\u{1b}')),
        "no colour codes in a log file: {node_logs:?}"
    );

    // Each role answers as its own subcommand, hidden from the help.
    let help = std::process::Command::new(&lone)
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    let commands: Vec<&str> = help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(commands, ["tokens", "keys", "help"], "{help}");
    let credential = std::process::Command::new(&lone)
        .args(["git-credential", "store"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(
        credential.status.success(),
        "git-credential store is a no-op that succeeds: {credential:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_get_json_errors() {
    let data = tempfile::tempdir().unwrap();
    let _nodes = StopNodes(data.path().to_owned());
    let server = ServerProcess::start(data.path()).await;
    let http = reqwest::Client::new();
    let tasks = server.url("/v1/tasks");

    let cases: Vec<(&str, reqwest::RequestBuilder, u16, Option<&str>)> = vec![
        ("no token", http.get(&tasks), 401, None),
        (
            "a wrong token",
            http.get(&tasks).bearer_auth("wrong"),
            401,
            None,
        ),
        (
            "no token on submit",
            http.post(&tasks).body("{}"),
            401,
            None,
        ),
        (
            "a number for repo",
            http.post(&tasks)
                .bearer_auth(TOKEN)
                .body(r#"{"repo": 5, "prompt": "x"}"#),
            400,
            Some("repo"),
        ),
        (
            "no prompt",
            http.post(&tasks)
                .bearer_auth(TOKEN)
                .body(r#"{"repo": "/tmp"}"#),
            400,
            Some("prompt"),
        ),
        (
            "an unknown size",
            http.post(&tasks)
                .bearer_auth(TOKEN)
                .body(r#"{"repo": "/tmp", "prompt": "x", "size": "huge"}"#),
            400,
            Some("size"),
        ),
        (
            "an unknown agent",
            http.post(&tasks).bearer_auth(TOKEN).body(
                r#"{"repo": "https://example.invalid/o/r.git", "prompt": "x", "agent": "nope"}"#,
            ),
            400,
            Some("agent"),
        ),
        (
            "not JSON",
            http.post(&tasks).bearer_auth(TOKEN).body("{not json"),
            400,
            None,
        ),
        (
            "a bad limit",
            http.get(server.url("/v1/tasks?limit=0")).bearer_auth(TOKEN),
            400,
            Some("limit"),
        ),
        (
            "an unknown task",
            http.get(server.url("/v1/tasks/t-0000000000000000"))
                .bearer_auth(TOKEN),
            404,
            None,
        ),
        (
            "an unknown route",
            http.get(server.url("/v2/nothing")),
            404,
            None,
        ),
        (
            "a callback without its token",
            http.post(server.url("/v1/nodes/n-1/ready")).body("{}"),
            401,
            None,
        ),
    ];
    for (what, request, want, field) in cases {
        let (status, body) = call(request).await;
        assert_eq!(status, want, "{what}: {body}");
        assert!(body["error"].is_string(), "{what}: {body}");
        assert!(body["category"].is_string(), "{what}: {body}");
        if let Some(field) = field {
            assert_eq!(body["field"], field, "{what}: {body}");
        }
    }

    let (status, health) = call(http.get(server.url("/v1/health"))).await;
    assert_eq!((status, health["status"].as_str()), (200, Some("ok")));
    let status = server.terminate().await;
    assert!(status.success(), "a graceful shutdown: {status}");
}

/// Each hostile or impossible submission is refused at the door with a JSON error
/// naming the field, before any node is touched; so are bodies, paths and queries
/// axum and hyper refuse by themselves.
#[tokio::test(flavor = "multi_thread")]
async fn hostile_input_is_refused_at_the_door_with_json() {
    let repo = repo();
    let data = tempfile::tempdir().unwrap();
    let _nodes = StopNodes(data.path().to_owned());
    let server = ServerProcess::start(data.path()).await;
    let http = reqwest::Client::new();
    let tasks = server.url("/v1/tasks");
    let submit = |repo: &str, prompt: &str| {
        http.post(&tasks)
            .bearer_auth(TOKEN)
            .json(&json!({"repo": repo, "prompt": prompt, "agent": "demo"}))
    };

    let not_a_repository = tempfile::tempdir().unwrap();
    let plain_dir = not_a_repository.path().display().to_string();
    let file_url = format!("file://{plain_dir}");
    for hostile in [
        "fd::17",
        "ext::sh -c touch% /tmp/pwned",
        "--upload-pack=touch /tmp/pwned",
        "-u",
        "/tmp/x\n--upload-pack=x",
        "relative/path",
        ".",
        "git://example.com/owner/name.git",
        "http://example.com/owner/name.git",
        "https://user:secret@example.com/owner/name.git",
        "git@-oProxyCommand=x:owner/name",
        plain_dir.as_str(),
        file_url.as_str(),
    ] {
        let (status, body) = call(submit(hostile, "fix it")).await;
        assert_eq!(status, 400, "{hostile:?}: {body}");
        assert_eq!(body["field"], "repo", "{hostile:?}: {body}");
        assert_eq!(body["category"], "invalid_config", "{hostile:?}: {body}");
    }
    let repo_path = repo.path().display().to_string();
    let (status, body) = call(submit(&repo_path, "a\u{0}b")).await;
    assert_eq!((status, &body["field"]), (400, &json!("prompt")), "{body}");
    let large = "x".repeat(sam_core::MAX_PROMPT_BYTES + 1);
    let (status, body) = call(submit(&repo_path, &large)).await;
    assert_eq!((status, &body["field"]), (413, &json!("prompt")), "{body}");
    assert_eq!(body["category"], "invalid_config", "{body}");

    // Nothing was touched: no task, no node.
    let (_, list) = call(http.get(&tasks).bearer_auth(TOKEN)).await;
    assert_eq!(list["tasks"], json!([]), "{list}");
    let (_, nodes) = call(http.get(server.url("/v1/nodes")).bearer_auth(TOKEN)).await;
    assert_eq!(nodes, json!([]), "{nodes}");

    // What axum and hyper refuse by themselves is JSON too, on the user routes and
    // on the callback routes.
    let huge_path = format!("/v1/tasks/{}", "a".repeat(100 * 1024));
    let cases: Vec<(&str, reqwest::RequestBuilder, u16)> = vec![
        (
            "a body over the limit",
            http.post(&tasks)
                .bearer_auth(TOKEN)
                .body(vec![b' '; 3 * 1024 * 1024]),
            413,
        ),
        (
            "a callback body over the limit",
            http.post(server.url("/v1/workspaces/ws-1/events"))
                .bearer_auth("x")
                .body(vec![b' '; 3 * 1024 * 1024]),
            401,
        ),
        (
            "a task id that does not decode",
            http.get(server.url("/v1/tasks/%FF")).bearer_auth(TOKEN),
            400,
        ),
        (
            "a callback id that does not decode",
            http.post(server.url("/v1/workspaces/%FF/events"))
                .bearer_auth("x")
                .body("{}"),
            400,
        ),
        (
            "a query that does not decode",
            http.get(server.url("/v1/tasks?limit=%FF"))
                .bearer_auth(TOKEN),
            400,
        ),
        (
            "a bad token with a malformed callback body",
            http.post(server.url("/v1/workspaces/ws-1/events"))
                .bearer_auth("not-a-token")
                .body("{not json"),
            401,
        ),
        (
            "a bad node token with a malformed body",
            http.post(server.url("/v1/nodes/n-1/heartbeat"))
                .bearer_auth("not-a-token")
                .body("[1,"),
            401,
        ),
    ];
    for (what, request, want) in cases {
        let (status, body) = call(request).await;
        assert_eq!(status, want, "{what}: {body}");
        assert!(body["error"].is_string(), "{what}: {body}");
        assert!(body["category"].is_string(), "{what}: {body}");
    }
    // HTTP clients refuse to send a URL this long, so it goes over a socket.
    let (status, body) = raw_get(&server.base, &huge_path).await;
    assert_eq!(status, 414, "a 100 KB path: {body}");
    assert_eq!(body["category"], "invalid_config", "{body}");

    let status = server.terminate().await;
    assert!(status.success(), "a graceful shutdown: {status}");
}

/// `GET path` written by hand on a socket to `base` (`http://host:port`); the status
/// and the JSON body of the answer.
async fn raw_get(base: &str, path: &str) -> (u16, Value) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let address = base.trim_start_matches("http://");
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(address)
            .await
            .expect("connect");
        let request =
            format!("GET {path} HTTP/1.1\r\nhost: {address}\r\nconnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("write");
        let mut answer = Vec::new();
        // The server may close before it read the whole request: what it answered
        // is read either way.
        let _ = stream.read_to_end(&mut answer).await;
        answer
    };
    let answer = tokio::time::timeout(Duration::from_secs(30), exchange)
        .await
        .expect("answered within 30 s");
    let text = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("a response head");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{head}"
    );
    let body = serde_json::from_str(body)
        .unwrap_or_else(|e| panic!("HTTP {status}: the body is JSON ({e}): {body:?}"));
    (status, body)
}

/// Runs `sam-server tokens …` on `data_dir`; returns stdout, or panics with stderr.
async fn tokens_command(data_dir: &std::path::Path, args: &[&str]) -> String {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_sam-server"));
    command
        .arg("--data-dir")
        .arg(data_dir)
        .arg("tokens")
        .args(args)
        .kill_on_drop(true);
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("SAM_")) {
        command.env_remove(key);
    }
    let output = tokio::time::timeout(Duration::from_secs(30), command.output())
        .await
        .expect("sam-server tokens finished within 30 s")
        .expect("sam-server runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "sam-server tokens {args:?}: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// The token a server starts with is the bootstrap token: a restart with another
/// one revokes it. Tokens are created, listed and revoked with `sam-server tokens`
/// and under `/v1/tokens`, which needs an admin token.
#[tokio::test(flavor = "multi_thread")]
async fn a_new_bootstrap_token_revokes_the_old_one_and_tokens_are_managed() {
    const FIRST: &str = "the-first-bootstrap-token";
    const SECOND: &str = "the-second-bootstrap-token";
    let data = tempfile::tempdir().unwrap();
    let _nodes = StopNodes(data.path().to_owned());
    let http = reqwest::Client::new();
    let get = |server: &ServerProcess, path: &str, token: &str| {
        http.get(server.url(path)).bearer_auth(token)
    };

    let server = ServerProcess::start_with(data.path(), &[], &[("SAM_API_TOKEN", FIRST)]).await;
    let (status, body) = call(get(&server, "/v1/tasks", FIRST)).await;
    assert_eq!(status, 200, "{body}");
    // An admin creates a user token over the API; its value is shown once.
    let (status, created) = call(
        http.post(server.url("/v1/tokens"))
            .bearer_auth(FIRST)
            .json(&json!({"name": "ci", "expires_in_days": 30})),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["kind"], "user", "{created}");
    assert!(created["expires_at"].is_string(), "{created}");
    let user = created["token"].as_str().expect("the token").to_owned();
    let user_id = created["id"].as_str().expect("an id").to_owned();
    let (status, body) = call(get(&server, "/v1/tasks", &user)).await;
    assert_eq!(status, 200, "the created token works: {body}");
    let (status, body) = call(get(&server, "/v1/tokens", &user)).await;
    assert_eq!(status, 403, "a user token manages no tokens: {body}");
    assert_eq!(body["category"], "auth_error", "{body}");
    let status = server.terminate().await;
    assert!(status.success(), "a graceful shutdown: {status}");

    // Restarted with another token: the first is revoked, the user token lives on.
    let server = ServerProcess::start_with(data.path(), &[], &[("SAM_API_TOKEN", SECOND)]).await;
    let (status, body) = call(get(&server, "/v1/tasks", FIRST)).await;
    assert_eq!(
        status, 401,
        "the replaced bootstrap token is revoked: {body}"
    );
    assert_eq!(body["category"], "auth_error", "{body}");
    for token in [SECOND, user.as_str()] {
        let (status, body) = call(get(&server, "/v1/tasks", token)).await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, list) = call(get(&server, "/v1/tokens", SECOND)).await;
    assert_eq!(status, 200, "{list}");
    let listed = list.as_array().expect("a list");
    assert_eq!(listed.len(), 3, "{list}");
    assert!(
        listed.iter().all(|t| t.get("token").is_none()),
        "no values: {list}"
    );
    let bootstraps: Vec<bool> = listed
        .iter()
        .filter(|t| t["kind"] == "bootstrap")
        .map(|t| t["revoked_at"].is_string())
        .collect();
    assert_eq!(
        bootstraps,
        [true, false],
        "the first revoked, the second live: {list}"
    );
    let used = listed
        .iter()
        .find(|t| t["id"] == user_id.as_str())
        .expect("ci");
    assert!(
        used["last_used_at"].is_string(),
        "its use is recorded: {used}"
    );

    // The command line, on the same store while the server runs.
    let printed = tokens_command(data.path(), &["create", "--name", "laptop", "--admin"]).await;
    let admin = printed.trim().to_owned();
    assert!(admin.starts_with("sam_"), "{printed}");
    let (status, body) = call(get(&server, "/v1/tokens", &admin)).await;
    assert_eq!(
        status, 200,
        "the created admin token manages tokens: {body}"
    );
    let listing = tokens_command(data.path(), &["list"]).await;
    assert!(
        listing.contains("laptop") && listing.contains(&user_id),
        "{listing}"
    );
    tokens_command(data.path(), &["revoke", &user_id]).await;
    let (status, body) = call(get(&server, "/v1/tasks", &user)).await;
    assert_eq!(status, 401, "a token revoked on the command line: {body}");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("revoked")),
        "{body}"
    );

    // Revoked over the API.
    let admin_id = listed_id(&http, &server, SECOND, "laptop").await;
    let (status, body) = call(
        http.delete(server.url(&format!("/v1/tokens/{admin_id}")))
            .bearer_auth(SECOND),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body["revoked_at"].is_string(), "{body}");
    let (status, body) = call(get(&server, "/v1/tokens", &admin)).await;
    assert_eq!(status, 401, "a token revoked over the API: {body}");
    let (status, body) = call(
        http.delete(server.url("/v1/tokens/tok-nope"))
            .bearer_auth(SECOND),
    )
    .await;
    assert_eq!(status, 404, "{body}");

    let status = server.terminate().await;
    assert!(status.success(), "a graceful shutdown: {status}");
}

/// The id of the token named `name`, as `GET /v1/tokens` lists it.
async fn listed_id(
    http: &reqwest::Client,
    server: &ServerProcess,
    admin: &str,
    name: &str,
) -> String {
    let (_, list) = call(http.get(server.url("/v1/tokens")).bearer_auth(admin)).await;
    list.as_array()
        .and_then(|l| l.iter().find(|t| t["name"] == name))
        .and_then(|t| t["id"].as_str())
        .unwrap_or_else(|| panic!("{name} is listed: {list}"))
        .to_owned()
}

/// The OpenAPI document lists exactly the routes of `server::routes()` (the table the
/// router is built from), and the running server serves each of them.
#[tokio::test(flavor = "multi_thread")]
async fn the_openapi_document_lists_every_route() {
    use std::collections::BTreeSet;
    let data = tempfile::tempdir().unwrap();
    let _nodes = StopNodes(data.path().to_owned());
    let server = ServerProcess::start(data.path()).await;
    let http = reqwest::Client::new();

    let (status, doc) = call(http.get(server.url("/v1/openapi.json"))).await;
    assert_eq!(status, 200, "{doc}");
    assert!(
        doc["openapi"].as_str().is_some_and(|v| v.starts_with('3')),
        "{doc}"
    );
    let documented: BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .expect("paths")
        .iter()
        .flat_map(|(path, item)| {
            let methods = item.as_object().expect("a path item");
            methods
                .keys()
                .filter(|m| ["get", "post", "put", "patch", "delete"].contains(&m.as_str()))
                .map(|m| (m.to_uppercase(), path.clone()))
                .collect::<Vec<_>>()
        })
        .collect();
    let routes = sam_examples::server::routes();
    let served: BTreeSet<(String, String)> = routes
        .iter()
        .map(|(verb, path)| (verb.as_str().to_owned(), (*path).to_owned()))
        .collect();
    assert_eq!(served.len(), routes.len(), "no route is listed twice");
    assert_eq!(
        documented, served,
        "the document lists every route, no more"
    );
    assert!(
        doc["components"]["schemas"]["TaskView"].is_object(),
        "{}",
        doc["components"]
    );

    // Each listed route is served: it answers, but never with the unknown-route 404
    // or a 405.
    for (verb, path) in &routes {
        let url = server.url(&path.replace("{id}", "t-0000000000000000"));
        let request = match verb {
            sam_examples::server::Verb::Get => http.get(&url),
            sam_examples::server::Verb::Post => http.post(&url).body("{}"),
            sam_examples::server::Verb::Put => http.put(&url).body("{}"),
            sam_examples::server::Verb::Delete => http.delete(&url),
        };
        let response = tokio::time::timeout(Duration::from_secs(30), request.send())
            .await
            .expect("answered within 30 s")
            .expect("reachable");
        let status = response.status().as_u16();
        // Only a JSON body can be the unknown-route error (the agent download is a
        // binary, which may hold any text).
        let json = response
            .headers()
            .get("content-type")
            .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
        let body = String::from_utf8_lossy(&response.bytes().await.expect("a body")).into_owned();
        assert!(
            status != 405 && !(json && body.contains("no route for")),
            "{} {path} is served: HTTP {status} {body}",
            verb.as_str()
        );
    }

    let status = server.terminate().await;
    assert!(status.success(), "a graceful shutdown: {status}");
}

/// Runs `sam-server --check-config` with `args` and `env`; returns success and output.
async fn check_config(args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_sam-server"));
    command.arg("--check-config").args(args).kill_on_drop(true);
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("SAM_")) {
        command.env_remove(key);
    }
    command.envs(env.iter().copied());
    let output = tokio::time::timeout(Duration::from_secs(30), command.output())
        .await
        .expect("sam-server --check-config finished within 30 s")
        .expect("sam-server runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[tokio::test(flavor = "multi_thread")]
async fn configuration_layers_flags_over_env_over_file_and_names_bad_fields() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sam-server.toml");
    std::fs::write(
        &file,
        "listen = \"127.0.0.1:4001\"\ndata_dir = \"/from/file\"\npoll_interval_ms = 111\nagent_command = \"file-agent\"\n",
    )
    .unwrap();
    let file = file.to_str().unwrap();

    // Each field comes from the highest layer that sets it.
    let (ok, out) = check_config(
        &["--config", file, "--listen", "127.0.0.1:4003"],
        &[
            ("SAM_LISTEN", "127.0.0.1:4002"),
            ("SAM_DATA_DIR", "/from/env"),
            ("SAM_API_TOKEN", "an-env-token-1234"),
        ],
    )
    .await;
    assert!(ok, "{out}");
    for want in [
        "listen = \"127.0.0.1:4003\" # from --listen\n",
        "data_dir = \"/from/env\" # from SAM_DATA_DIR\n",
        &format!("poll_interval_ms = 111 # from {file}\n"),
        &format!("agent_command = \"file-agent\" # from {file}\n"),
        "heartbeat_interval_secs = 10 # default\n",
        "provider = \"local\" # default\n",
        "api_token = \"***\" # from SAM_API_TOKEN\n",
        "# credential_key is not set\n",
        "# provider `local`: what it needs is present\n",
    ] {
        assert!(out.contains(want), "{want:?} in {out}");
    }
    assert!(
        !out.contains("an-env-token-1234"),
        "the token is hidden: {out}"
    );

    // Bad values fail, naming the field (and, for unparsable values, the layer).
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a [&'a str]);
    let cases: [Case<'_>; 4] = [
        (&[], &[("SAM_POLL_INTERVAL_MS", "0")], &["poll_interval_ms"]),
        (
            &["--config", file, "--provider", "aws"],
            &[],
            &["provider", "aws"],
        ),
        (&[], &[("SAM_LISTEN", "nowhere")], &["listen", "SAM_LISTEN"]),
        (
            &["--config", "/no/such/file.toml"],
            &[],
            &["/no/such/file.toml"],
        ),
    ];
    for (args, env, wants) in cases {
        let (ok, out) = check_config(args, env).await;
        assert!(!ok, "{args:?} {env:?}: {out}");
        for want in wants {
            assert!(out.contains(want), "{want:?} in {out}");
        }
    }
}

/// `--check-config` prints TOML that parses back to the effective values, with
/// secrets hidden, and checks the selected provider's credentials: without the
/// cloud's token it fails naming the variable, with it it succeeds. No cloud is
/// called.
#[tokio::test(flavor = "multi_thread")]
async fn check_config_prints_toml_and_checks_the_providers_credentials() {
    const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    let cloud = [
        "--provider",
        "hetzner",
        "--public-url",
        "https://sam.example.com/",
        "--lease-secs",
        "90",
    ];
    let run = |env: &'static [(&'static str, &'static str)]| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_sam-server"));
        command.arg("--check-config").args(cloud);
        for (key, _) in
            std::env::vars().filter(|(k, _)| k.starts_with("SAM_") || k.starts_with("HCLOUD_"))
        {
            command.env_remove(key);
        }
        command
            .env("SAM_CREDENTIAL_KEY", KEY)
            .envs(env.iter().copied());
        command.output().expect("sam-server runs")
    };

    let output = run(&[]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("HCLOUD_TOKEN"),
        "the missing variable is named: {stderr}"
    );

    let output = run(&[("HCLOUD_TOKEN", "a-fake-hetzner-token")]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let parsed: toml::Table = stdout.parse().expect("the output is TOML");
    assert_eq!(parsed["provider"].as_str(), Some("hetzner"));
    assert_eq!(
        parsed["public_url"].as_str(),
        Some("https://sam.example.com/")
    );
    assert_eq!(parsed["lease_secs"].as_integer(), Some(90));
    assert_eq!(parsed["agent_ready_secs"].as_integer(), Some(900));
    assert_eq!(parsed["credential_key"].as_str(), Some("***"));
    assert!(!parsed.contains_key("database_url"), "not set, so absent");
    assert!(!stdout.contains(KEY), "the key is hidden: {stdout}");
    assert!(!stdout.contains("a-fake-hetzner-token"), "{stdout}");
    for want in [
        "credential_key = \"***\" # from SAM_CREDENTIAL_KEY\n",
        "lease_secs = 90 # from --lease-secs\n",
        "agent_ready_secs = 900 # default\n",
        "# provider `hetzner`: what it needs is present\n",
    ] {
        assert!(stdout.contains(want), "{want:?} in {stdout}");
    }
}

/// Timeouts come from the file, `SAM_*` and flags like every key; `--check-config`
/// prints each with what it derives; timeouts that contradict each other stop the
/// server at load, naming the values.
#[tokio::test(flavor = "multi_thread")]
async fn timeouts_come_from_every_layer_and_check_config_prints_what_they_derive() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sam-server.toml");
    std::fs::write(
        &file,
        "agent_ready_secs = 1200\nworkspace_ready_secs = 2400\nheartbeat_stale_secs = 240\n",
    )
    .unwrap();
    let file = file.to_str().unwrap();
    let (ok, out) = check_config(
        &["--config", file, "--workspace-ready-secs", "2000"],
        &[
            ("SAM_HEARTBEAT_STALE_SECS", "150"),
            ("SAM_HEARTBEAT_INTERVAL_SECS", "50"),
            ("SAM_LEASE_SECS", "90"),
        ],
    )
    .await;
    assert!(ok, "{out}");
    for want in [
        &format!("agent_ready_secs = 1200 # from {file}\n"),
        "workspace_ready_secs = 2000 # from --workspace-ready-secs\n",
        "timeouts (seconds):\n",
        "  agent_ready_secs = 1200\n",
        "  heartbeat_interval_secs = 50\n",
        "  heartbeat_stale_secs = 150\n",
        "  lease_secs = 90\n",
        "derived (seconds):\n",
        // 300 s capacity wait, 1200 s agent ready, 300 s grace.
        "  stuck_queued = 1800\n",
        "  stuck_delegated = 2060\n",
        "  lease_renewal = 30\n",
        "  lease_after_missed_renewal = 60\n",
        "  heartbeats_before_stale = 3\n",
    ] {
        assert!(out.contains(want), "{want:?} in {out}");
    }

    // Contradictions are refused naming the key and the values.
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a [&'a str]);
    let cases: [Case<'_>; 2] = [
        (
            &["--heartbeat-interval-secs", "600"],
            &[("SAM_HEARTBEAT_STALE_SECS", "180")],
            &[
                "heartbeat_stale_secs",
                "heartbeat_stale (180 s) must cover 3 heartbeats of heartbeat_interval (600 s)",
            ],
        ),
        (
            &[
                "--provider",
                "hetzner",
                "--public-url",
                "https://sam.example.com/",
            ],
            &[("SAM_LEASE_SECS", "30")],
            &[
                "lease_secs",
                "lease (30 s) must cover the longest provider call (30 s)",
            ],
        ),
    ];
    for (args, env, wants) in cases {
        let (ok, out) = check_config(args, env).await;
        assert!(!ok, "{args:?} {env:?}: {out}");
        for want in wants {
            assert!(out.contains(want), "{want:?} in {out}");
        }
    }
}

/// A cloud provider is built from its environment: without its token the server
/// fails at once naming the variable; with one (and the API at a wiremock server)
/// the catalog is the provider's. No real cloud is contacted.
#[tokio::test(flavor = "multi_thread")]
async fn a_cloud_provider_needs_its_credentials_and_serves_its_catalog() {
    let data = tempfile::tempdir().unwrap();
    let cloud = [
        "--provider",
        "hetzner",
        "--public-url",
        "https://sam.example.com/",
    ];

    let output = tokio::time::timeout(
        Duration::from_secs(30),
        server_command(data.path(), free_port(), &cloud, &[])
            .env_remove("HCLOUD_TOKEN")
            .output(),
    )
    .await
    .expect("sam-server gave up within 30 s")
    .expect("sam-server runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("HCLOUD_TOKEN"),
        "the variable is named: {stderr}"
    );

    let api = wiremock::MockServer::start().await;
    wiremock::Mock::given(wiremock::matchers::method("GET"))
        .and(wiremock::matchers::path("/servers"))
        .respond_with(
            wiremock::ResponseTemplate::new(200)
                .set_body_json(json!({"servers": [], "meta": {"pagination": {"next_page": null}}})),
        )
        .mount(&api)
        .await;
    let server = ServerProcess::start_with(
        data.path(),
        &cloud,
        &[
            ("HCLOUD_TOKEN", "a-fake-hetzner-token"),
            ("SAM_HETZNER_BASE_URL", &api.uri()),
        ],
    )
    .await;
    let http = reqwest::Client::new();
    let (status, catalog) = call(http.get(server.url("/v1/catalog")).bearer_auth(TOKEN)).await;
    assert_eq!(status, 200, "{catalog}");
    assert_eq!(catalog["provider"], "hetzner", "{catalog}");
    let types: Vec<&str> = catalog["sizes"]
        .as_array()
        .expect("sizes")
        .iter()
        .filter_map(|s| s["server_type"].as_str())
        .collect();
    assert_eq!(
        types.len(),
        3,
        "every size has a Hetzner server type: {catalog}"
    );
    assert!(types.iter().all(|t| t.starts_with("c")), "{types:?}");
    // The runner lists the provider's servers: at the wiremock server, with the token.
    let asked = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let requests = api.received_requests().await.unwrap_or_default();
            if let Some(request) = requests.into_iter().next() {
                return request;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the provider was asked within 20 s");
    assert_eq!(
        asked.headers["authorization"].to_str().ok(),
        Some("Bearer a-fake-hetzner-token")
    );
    let status = server.terminate().await;
    assert!(status.success(), "a graceful shutdown: {status}");
}

/// The PostgreSQL path: `sam-server --database-url` (a fresh schema) runs a task to
/// completion. Skips with a notice without `SAM_TEST_POSTGRES_URL`; fails in CI.
#[tokio::test(flavor = "multi_thread")]
async fn a_task_runs_with_state_in_postgres() {
    let Some(url) = sam_core::testkit::required_env("SAM_TEST_POSTGRES_URL") else {
        return;
    };
    let schema = fresh_schema("sam_server");
    let repo = repo();
    let data = tempfile::tempdir().unwrap();
    let _nodes = StopNodes(data.path().to_owned());
    // Two servers on one database and one local fleet, sharing a credential key (so
    // the signing and node keys in the database are both's). Nodes call back to the
    // first only, whichever drives the task: the second hears no callback, and
    // serves the same transcript from the store.
    let fleet = tempfile::tempdir().unwrap();
    let _fleet_nodes = StopNodes(fleet.path().to_owned());
    let other_data = tempfile::tempdir().unwrap();
    let (port, other_port) = (free_port(), free_port());
    let public = format!("http://127.0.0.1:{port}");
    let fleet_root = fleet.path().display().to_string();
    let start = |data: &std::path::Path, port: u16| {
        let mut command = server_command(
            data,
            port,
            &["--database-schema", &schema, "--public-url", &public],
            &[
                ("SAM_DATABASE_URL", &url),
                ("SAM_LOCAL_ROOT", &fleet_root),
                (
                    "SAM_CREDENTIAL_KEY",
                    "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=",
                ),
            ],
        );
        command
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        ServerProcess::launch(command, port)
    };
    let server = start(data.path(), port).await;
    let other = start(other_data.path(), other_port).await;
    let http = reqwest::Client::new();

    let id = submit_demo(&server, &http, repo.path()).await;
    let path = format!("/v1/tasks/{id}/events");
    let (here, there) = (server.url(&path), other.url(&path));
    let (events, elsewhere) = tokio::join!(read_events(&http, &here), read_events(&http, &there));
    let (last, end) = events.last().expect("events");
    assert_eq!(last, "status", "{events:?}");
    assert_eq!(end["kind"]["status"], "completed", "{end}");
    assert_eq!(
        elsewhere, events,
        "a client of the other server sees every entry, live"
    );
    assert_eq!(other.terminate().await.code(), Some(0));
    let (_, task) = call(
        http.get(server.url(&format!("/v1/tasks/{id}")))
            .bearer_auth(TOKEN),
    )
    .await;
    assert_eq!(task["status"], "completed", "{task}");
    assert!(
        !data.path().join("sam.db").exists(),
        "state is in PostgreSQL, not in SQLite"
    );
    let status = server.terminate().await;
    assert!(status.success(), "a graceful shutdown: {status}");
}

/// Users, projects, profiles, write-only credentials, setup status, and a task run
/// on a project's profile, then retried, all over the API.
#[tokio::test(flavor = "multi_thread")]
async fn projects_profiles_credentials_and_lineage_over_the_api() {
    const SECRET: &str = "sk-demo-secret-only-for-the-agent";
    let repo = repo();
    let data = tempfile::tempdir().unwrap();
    let _nodes = StopNodes(data.path().to_owned());
    let key = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    let server = ServerProcess::start_with(data.path(), &[], &[("SAM_CREDENTIAL_KEY", key)]).await;
    let http = reqwest::Client::new();
    let send = |method: reqwest::Method, path: &str, body: Option<Value>| {
        let mut request = http.request(method, server.url(path)).bearer_auth(TOKEN);
        if let Some(body) = body {
            request = request.json(&body);
        }
        call(request)
    };
    use reqwest::Method;

    let (status, user) = send(
        Method::POST,
        "/v1/users",
        Some(json!({"name": "Ada", "settings": {"model": "user-model"}})),
    )
    .await;
    assert_eq!(status, 201, "{user}");
    let uid = user["id"].as_str().unwrap().to_owned();

    let project_body = |max: u32| {
        json!({
            "name": "web",
            "repo": repo.path(),
            "owner": uid,
            "settings": {"agent": "demo", "size": "small"},
            "scaling": {"max_workspaces_per_node": max},
        })
    };
    let (status, error) = send(Method::POST, "/v1/projects", Some(project_body(0))).await;
    assert_eq!(status, 400, "{error}");
    assert_eq!(error["field"], "scaling.max_workspaces_per_node");
    let (status, project) = send(Method::POST, "/v1/projects", Some(project_body(2))).await;
    assert_eq!(status, 201, "{project}");
    let pid = project["id"].as_str().unwrap().to_owned();
    let profiles_path = format!("/v1/projects/{pid}/profiles");
    let (_, profiles) = send(Method::GET, &profiles_path, None).await;
    assert_eq!(profiles, json!([]), "a new project has no profiles");

    // The project has an agent but no profile: submitting asks for one.
    let task_body =
        |profile: Option<&str>| json!({"project": pid, "profile": profile, "prompt": "say hello"});
    let (status, error) = send(Method::POST, "/v1/tasks", Some(task_body(None))).await;
    assert_eq!(status, 400, "{error}");
    assert_eq!(error["field"], "profile");
    assert!(
        error["error"].as_str().unwrap().contains("create one"),
        "{error}"
    );
    let (_, profiles) = send(Method::GET, &profiles_path, None).await;
    assert_eq!(
        profiles,
        json!([]),
        "nothing was created behind the user's back"
    );

    let profile = json!({"name": "greeter", "settings": {"agent": "demo", "model": "demo-model"}});
    let (status, created) = send(Method::POST, &profiles_path, Some(profile.clone())).await;
    assert_eq!(status, 201, "{created}");
    let (status, error) = send(Method::POST, &profiles_path, Some(profile)).await;
    assert_eq!(status, 409, "{error}");

    // Credentials are write-only.
    let credentials = format!("/v1/users/{uid}/credentials");
    let (status, view) = send(
        Method::PUT,
        &credentials,
        Some(json!({"target": "agent:demo", "kind": "api_key", "secret": SECRET})),
    )
    .await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["target"], "agent:demo");
    let (_, listed) = send(Method::GET, &credentials, None).await;
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert!(!listed.to_string().contains(SECRET) && !view.to_string().contains(SECRET));
    let (_, setup) = send(Method::GET, &format!("/v1/users/{uid}/setup"), None).await;
    assert_eq!(setup["ai_access"]["configured"], true, "{setup}");
    assert_eq!(setup["cloud_access"]["configured"], false, "{setup}");
    assert_eq!(setup["complete"], false);

    // The user chooses the platform's infrastructure (the local machine); its AI
    // cannot be chosen, since this server has no agent key of its own.
    let setup_path = format!("/v1/users/{uid}/setup");
    let (status, setup) = send(
        Method::PUT,
        &setup_path,
        Some(json!({"platform_infrastructure": true})),
    )
    .await;
    assert_eq!(status, 200, "{setup}");
    assert_eq!(setup["cloud_access"]["configured"], true, "{setup}");
    assert_eq!(
        setup["cloud_access"]["how"],
        json!(["the platform's infrastructure (chosen)"])
    );
    let (status, error) = send(
        Method::PUT,
        &setup_path,
        Some(json!({"platform_ai": true, "platform_infrastructure": true})),
    )
    .await;
    assert_eq!(status, 400, "{error}");
    assert_eq!(error["field"], "platform_ai", "{error}");
    let (status, error) = send(Method::PUT, &setup_path, Some(json!({"platform": true}))).await;
    assert_eq!(status, 400, "{error}");
    let (status, error) = send(
        Method::PUT,
        "/v1/users/u-nobody/setup",
        Some(json!({"platform_infrastructure": true})),
    )
    .await;
    assert_eq!(status, 404, "{error}");
    let (_, setup) = send(Method::GET, &setup_path, None).await;
    assert_eq!(
        setup["cloud_access"]["configured"], true,
        "the refused change left the choice as it was: {setup}"
    );

    // A task on the profile runs with every source recorded.
    let (status, accepted) =
        send(Method::POST, "/v1/tasks", Some(task_body(Some("greeter")))).await;
    assert_eq!(status, 202, "{accepted}");
    let id = accepted["id"].as_str().unwrap().to_owned();
    read_events(&http, &server.url(&format!("/v1/tasks/{id}/events"))).await;
    let (_, task) = send(Method::GET, &format!("/v1/tasks/{id}"), None).await;
    assert_eq!(task["status"], "completed", "{task}");
    assert_eq!(task["project"], pid.as_str());
    assert_eq!(task["agent_options"]["model"], "demo-model");
    assert_eq!(task["provenance"]["repo"], "project");
    assert_eq!(task["provenance"]["agent"], "agent_profile");
    assert_eq!(task["provenance"]["model"], "agent_profile");
    assert_eq!(task["provenance"]["size"], "project");
    assert_eq!(task["provenance"]["agent_credential"], "user");
    assert_eq!(task["reservation"]["sources"]["max_co_tenants"], "project");
    assert!(
        task.get("source").is_none(),
        "an original task has no source"
    );
    assert!(!task.to_string().contains(SECRET));

    // A retry shows where it came from.
    let (status, retried) = send(Method::POST, &format!("/v1/tasks/{id}/retry"), None).await;
    assert_eq!(status, 202, "{retried}");
    let child = retried["id"].as_str().unwrap().to_owned();
    read_events(&http, &server.url(&format!("/v1/tasks/{child}/events"))).await;
    let (_, child_view) = send(Method::GET, &format!("/v1/tasks/{child}"), None).await;
    assert_eq!(child_view["status"], "completed", "{child_view}");
    assert_eq!(child_view["source"]["kind"], "retry");
    assert_eq!(child_view["source"]["parent_task_id"], id.as_str());
    assert_eq!(child_view["source"]["parent_title"], "say hello");
    assert_eq!(child_view["source"]["parent_session_id"], task["workspace"]);
    let (status, error) = send(
        Method::POST,
        &format!("/v1/tasks/{id}/fork"),
        Some(json!({"prompt": " "})),
    )
    .await;
    assert_eq!(status, 400, "{error}");
    assert_eq!(error["field"], "prompt");

    // Deleting every profile leaves none.
    let pfid = created["id"].as_str().unwrap();
    let response = http
        .delete(server.url(&format!("{profiles_path}/{pfid}")))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    let (_, profiles) = send(Method::GET, &profiles_path, None).await;
    assert_eq!(profiles, json!([]));

    let status = server.terminate().await;
    assert!(status.success(), "a graceful shutdown: {status}");
}

/// The server's token signer, from the signing key in its data directory: what a
/// node or a workspace holds a token of.
fn server_signer(data: &std::path::Path) -> sam_core::TokenSigner {
    sam_core::TokenSigner::new(
        sam_core::Secret::new(
            std::fs::read_to_string(data.join("signing-key"))
                .expect("the signing key")
                .trim(),
        ),
        "sam-control-plane",
    )
    .expect("a signer")
}

/// The pid of the local node `node`'s VM agent, from the local provider's state file.
fn local_node_pid(data: &std::path::Path, node: &str) -> u32 {
    let state: Value = serde_json::from_str(
        &std::fs::read_to_string(data.join("local/state.json")).expect("the state file"),
    )
    .expect("the state file is JSON");
    state["vms"]
        .as_object()
        .expect("vms")
        .values()
        .find(|vm| vm["labels"]["sam-node"] == node || vm["name"] == node)
        .and_then(|vm| vm["pid"].as_u64())
        .and_then(|pid| u32::try_from(pid).ok())
        .unwrap_or_else(|| panic!("node {node} is not in {state}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_warm_node_whose_agent_died_hands_the_next_task_to_a_new_node() {
    let repo = repo();
    let data = tempfile::tempdir().unwrap();
    let _nodes = StopNodes(data.path().to_owned());
    let server = ServerProcess::start(data.path()).await;
    let http = reqwest::Client::new();

    let (first, _) = submit_and_follow(&server, &http, repo.path()).await;
    let (_, task) = call(
        http.get(server.url(&format!("/v1/tasks/{first}")))
            .bearer_auth(TOKEN),
    )
    .await;
    assert_eq!(task["status"], "completed", "{task}");
    let warm = task["node"].as_str().expect("a node").to_owned();

    // The warm node's VM agent dies; its heartbeats are not yet overdue, so the
    // node still looks healthy and the next task is placed on it.
    let pid = local_node_pid(data.path(), &warm);
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(killed.success());

    let started = std::time::Instant::now();
    let (second, events) = submit_and_follow(&server, &http, repo.path()).await;
    let took = started.elapsed();
    let (_, task) = call(
        http.get(server.url(&format!("/v1/tasks/{second}")))
            .bearer_auth(TOKEN),
    )
    .await;
    assert_eq!(task["status"], "completed", "{task} {events:?}");
    assert_ne!(task["node"], warm.as_str(), "{task}");
    assert_eq!(task["node_replacements"], 1, "{task}");
    assert!(
        events
            .iter()
            .any(|(name, data)| name == "node_lost" && data["kind"]["node"] == warm.as_str()),
        "the loss was streamed: {events:?}"
    );
    // Without noticing, the task would poll the dead agent until the stuck-task
    // sweep (31 minutes); a new local node boots in seconds.
    assert!(took < Duration::from_secs(120), "took {took:?}");
    let (_, node) = call(
        http.get(server.url(&format!("/v1/nodes/{warm}")))
            .bearer_auth(TOKEN),
    )
    .await;
    assert_eq!(
        node["status"], "deleted",
        "the dead node is destroyed: {node}"
    );

    // The server serves the boot-failed callback with its own, smaller body limit.
    let signer = server_signer(data.path());
    let token = signer.issue(
        sam_core::TokenScope::Node,
        &warm,
        chrono::Utc::now(),
        Duration::from_secs(600),
    );
    let url = server.url(&format!("/v1/nodes/{warm}/boot-failed"));
    let huge = json!({"event": "boot_failed", "phase": "packages", "exit_status": 100,
        "journal": vec!["x".repeat(1024); 300]});
    let (status, body) = call(http.post(&url).bearer_auth(token.expose()).json(&huge)).await;
    assert_eq!(status, 413, "{body}");
    let (status, body) = call(http.post(&url).bearer_auth(TOKEN).json(&huge)).await;
    assert_eq!(
        (status, &body["category"]),
        (401, &json!("auth_error")),
        "{body}"
    );
}

/// `sam-server keys` rotates and lists the signing keys kept in the database, and
/// says why it cannot without a credential key.
#[test]
fn signing_keys_are_rotated_and_listed_from_the_command_line() {
    let data = tempfile::tempdir().unwrap();
    let run = |args: &[&str], key: Option<&str>| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_sam-server"));
        command
            .arg("--data-dir")
            .arg(data.path())
            .arg("keys")
            .args(args);
        for (name, _) in std::env::vars().filter(|(k, _)| k.starts_with("SAM_")) {
            command.env_remove(name);
        }
        if let Some(key) = key {
            command.env("SAM_CREDENTIAL_KEY", key);
        }
        let output = command.output().expect("sam-server runs");
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let key = Some("AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=");
    let (ok, _, err) = run(&["rotate"], None);
    assert!(!ok);
    assert!(err.contains("only with a credential_key"), "{err}");
    for expected in ["signing-1", "signing-2"] {
        let (ok, out, err) = run(&["rotate"], key);
        assert!(ok, "{err}");
        assert!(
            out.starts_with(&format!("added {expected}: servers sign with it from ")),
            "{out}"
        );
    }
    let (ok, out, err) = run(&["list"], key);
    assert!(ok, "{err}");
    let ids: Vec<&str> = out
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(ids, ["signing-1", "signing-2"], "{out}");
    let (ok, _, err) = run(
        &["rotate"],
        Some("AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI="),
    );
    assert!(!ok);
    assert!(
        err.contains("does not open with this credential_key"),
        "{err}"
    );
}

/// A server that cannot start says why once, in its log on stderr, as plain text
/// when stderr is not a terminal (no colour codes in a log file).
#[test]
fn a_fatal_error_is_logged_once_in_plain_text() {
    let data = tempfile::tempdir().unwrap();
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_sam-server"));
    command.arg("--data-dir").arg(data.path()).args([
        "--provider",
        "hetzner",
        "--public-url",
        "https://example.invalid",
    ]);
    for (name, _) in std::env::vars().filter(|(k, _)| k.starts_with("SAM_") || k == "HCLOUD_TOKEN")
    {
        command.env_remove(name);
    }
    let output = command.output().expect("sam-server runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        stderr.matches("HCLOUD_TOKEN is not set").count(),
        1,
        "the error is printed once: {stderr}"
    );
    assert!(stderr.contains("ERROR"), "{stderr}");
    assert!(
        !stderr.contains('\u{1b}'),
        "no colour codes when piped: {stderr:?}"
    );
}

/// Scrapes `/metrics` of `server` with `token` (none when `None`): the status and
/// the body.
async fn scrape(server: &ServerProcess, token: Option<&str>) -> (u16, String) {
    let mut request = reqwest::Client::new().get(server.url("/metrics"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = tokio::time::timeout(Duration::from_secs(30), request.send())
        .await
        .expect("answered within 30 s")
        .expect("reachable");
    let status = response.status().as_u16();
    (status, response.text().await.expect("a body"))
}

/// The value of the sample `name` whose labels include every pair of `labels`
/// (a histogram's value is its `+Inf` bucket: its count).
fn sample(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .find(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match &s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => *v,
            prometheus_parse::Value::Histogram(buckets) => buckets
                .iter()
                .find(|b| b.less_than.is_infinite())
                .map_or(0.0, |b| b.count),
            prometheus_parse::Value::Summary(_) => f64::NAN,
        })
}

/// A demo task runs through a real server; `/metrics` then shows it, parsed as the
/// Prometheus text format: the task ended completed, its steps were timed, the local
/// provider's create was counted, the node is counted by status, nothing is left
/// queued, and the requests were timed by route template. Scrapes need a token.
#[tokio::test(flavor = "multi_thread")]
async fn metrics_are_scraped_and_parsed_after_a_task() {
    let repo = repo();
    let data = tempfile::tempdir().unwrap();
    let _nodes = StopNodes(data.path().to_owned());
    let server = ServerProcess::start(data.path()).await;
    let http = reqwest::Client::new();
    let (id, events) = submit_and_follow(&server, &http, repo.path()).await;
    let (_, end) = events.last().expect("events");
    assert_eq!(end["kind"]["status"], "completed", "{end}");
    let (status, _) = call(
        http.get(server.url(&format!("/v1/tasks/{id}")))
            .bearer_auth(TOKEN),
    )
    .await;
    assert_eq!(status, 200);

    let (status, body) = scrape(&server, None).await;
    assert_eq!(status, 401, "a scrape needs a token: {body}");
    let (status, body) = scrape(&server, Some(TOKEN)).await;
    assert_eq!(status, 200, "{body}");
    let parsed = prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_owned())))
        .expect("the Prometheus text format");
    let value = |name: &str, labels: &[(&str, &str)]| {
        sample(&parsed, name, labels).unwrap_or_else(|| panic!("{name} {labels:?} in {body}"))
    };
    assert_eq!(
        value("sam_tasks_ended_total", &[("status", "completed")]),
        1.0
    );
    for status in ["queued", "delegated", "in_progress"] {
        assert_eq!(value("sam_tasks", &[("status", status)]), 0.0, "{status}");
    }
    assert_eq!(value("sam_task_steps", &[("step", "running")]), 0.0);
    assert!(value("sam_step_duration_seconds", &[("step", "running")]) >= 1.0);
    assert!(
        value("sam_step_duration_seconds_sum", &[("step", "running")]) > 0.0,
        "the agent's turn took time"
    );
    assert_eq!(
        value(
            "sam_provider_calls_total",
            &[
                ("provider", "local"),
                ("operation", "create_vm"),
                ("outcome", "ok")
            ]
        ),
        1.0
    );
    assert_eq!(
        value("sam_nodes", &[("status", "running")]),
        1.0,
        "the node stays warm"
    );
    assert_eq!(value("sam_leases_lost_total", &[]), 0.0);
    assert!(
        value(
            "sam_http_request_duration_seconds_count",
            &[
                ("method", "POST"),
                ("route", "/v1/tasks"),
                ("status", "202")
            ]
        ) >= 1.0
    );
    assert!(
        value(
            "sam_http_request_duration_seconds",
            &[
                ("method", "POST"),
                ("route", "/v1/tasks"),
                ("status", "202")
            ]
        ) >= 1.0,
        "the histogram's +Inf bucket counts the request"
    );
    // prometheus-parse reads a label set only up to its first `}`, so it skips the
    // lines of a route template such as `/v1/tasks/{id}`: those are read as text.
    assert!(
        body.contains(
            "sam_http_request_duration_seconds_count{method=\"GET\",route=\"/v1/tasks/{id}\",status=\"200\"} 1\n"
        ),
        "requests are labelled by their route template, not the id: {body}"
    );
    assert!(!body.contains(&id), "no task id in a label");

    let status = server.terminate().await;
    assert!(status.success(), "a graceful shutdown: {status}");
}

/// `--metrics-public` serves `/metrics` without a token.
#[tokio::test(flavor = "multi_thread")]
async fn public_metrics_need_no_token() {
    let data = tempfile::tempdir().unwrap();
    let _nodes = StopNodes(data.path().to_owned());
    let server = ServerProcess::start_with(data.path(), &["--metrics-public"], &[]).await;
    let (status, body) = scrape(&server, None).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("# TYPE sam_tasks gauge"), "{body}");
    let status = server.terminate().await;
    assert!(status.success(), "a graceful shutdown: {status}");
}
