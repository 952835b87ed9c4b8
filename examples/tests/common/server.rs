//! A `sam-server` process for the end-to-end tests: started on a free loopback port,
//! waited for, called over HTTP, stopped with SIGTERM or killed with SIGKILL.

// Each test binary that includes `common` uses a part of this harness.
#![allow(dead_code, unreachable_pub)]

use std::net::{Ipv4Addr, TcpListener};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};

/// The API token every test server is started with.
pub(crate) const TOKEN: &str = "a-test-token-for-sam-server";

/// A `sam-server` process; killed when dropped (after a failed assertion).
pub(crate) struct ServerProcess {
    pub(crate) child: tokio::process::Child,
    pub(crate) base: String,
}

impl ServerProcess {
    pub(crate) async fn start(data_dir: &Path) -> Self {
        Self::start_with(data_dir, &[], &[]).await
    }

    /// `sam-server` on a free loopback port with `args` and `env` added (and no
    /// other `SAM_*` variables).
    pub(crate) async fn start_with(data_dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Self {
        let port = free_port();
        let mut command = server_command(data_dir, port, args, env);
        command.stdout(Stdio::null()).stderr(Stdio::null());
        Self::launch(command, port).await
    }

    /// Spawns `command` (a [`server_command`] for `port`) and waits until it answers
    /// `/v1/health`.
    pub(crate) async fn launch(mut command: tokio::process::Command, port: u16) -> Self {
        let child = command.spawn().expect("sam-server starts");
        let server = Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
        };
        let http = reqwest::Client::new();
        let ready = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                if let Ok(r) = http.get(server.url("/v1/health")).send().await
                    && r.status().is_success()
                {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await;
        assert!(ready.is_ok(), "sam-server answered /v1/health within 30 s");
        server
    }

    /// The server's process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id().expect("running")
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// SIGTERM, then the exit status: a graceful shutdown exits 0.
    pub(crate) async fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.pid().to_string();
        let status = std::process::Command::new("kill")
            .args(["-s", "TERM", "--", &pid])
            .status()
            .expect("kill runs");
        assert!(status.success());
        tokio::time::timeout(Duration::from_secs(20), self.child.wait())
            .await
            .expect("sam-server stopped within 20 s of SIGTERM")
            .expect("wait")
    }
}

/// A free port: bind one, let it go, hand it to the server.
pub(crate) fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// The `sam-server` command: loopback `port`, `data_dir`, JSON logs, the test token,
/// then `args` and `env` (the only `SAM_*` variables it sees besides the token).
pub(crate) fn server_command(
    data_dir: &Path,
    port: u16,
    args: &[&str],
    env: &[(&str, &str)],
) -> tokio::process::Command {
    server_command_of(
        Path::new(env!("CARGO_BIN_EXE_sam-server")),
        data_dir,
        port,
        args,
        env,
    )
}

/// As [`server_command`], for the `sam-server` executable at `program`.
pub(crate) fn server_command_of(
    program: &Path,
    data_dir: &Path,
    port: u16,
    args: &[&str],
    env: &[(&str, &str)],
) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(program);
    command
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--log-format")
        .arg("json")
        .args(args)
        .kill_on_drop(true);
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("SAM_")) {
        command.env_remove(key);
    }
    // No agent key of the machine running the tests becomes the server's own: a
    // test that wants the platform to have one passes it in `env`.
    for agent in ["claude", "codex", "gemini", "opencode", "demo", "custom"] {
        for kind in [
            sam_core::CredentialKind::ApiKey,
            sam_core::CredentialKind::OauthToken,
        ] {
            if let Some(var) = sam_core::agent_env_var(agent, kind) {
                command.env_remove(var);
            }
        }
    }
    command
        .env("SAM_API_TOKEN", TOKEN)
        .envs(env.iter().copied());
    command
}

pub(crate) async fn call(request: reqwest::RequestBuilder) -> (u16, Value) {
    let response = tokio::time::timeout(Duration::from_secs(30), request.send())
        .await
        .expect("answered within 30 s")
        .expect("reachable");
    let status = response.status().as_u16();
    let text = response.text().await.expect("a body");
    let body = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("HTTP {status}: the body is JSON ({e}): {text:?}"));
    (status, body)
}

/// Reads a task's event stream (`Accept: text/event-stream`) to its end; returns
/// each event's name and data.
pub(crate) async fn read_events(http: &reqwest::Client, url: &str) -> Vec<(String, Value)> {
    read_events_after(http, url, None).await
}

/// Reads a task's event stream to its end, resuming after `last_event_id`.
pub(crate) async fn read_events_after(
    http: &reqwest::Client,
    url: &str,
    last_event_id: Option<u64>,
) -> Vec<(String, Value)> {
    let read = async {
        let mut request = http
            .get(url)
            .bearer_auth(TOKEN)
            .header("accept", "text/event-stream");
        if let Some(last) = last_event_id {
            request = request.header("last-event-id", last.to_string());
        }
        let mut response = request.send().await.expect("reachable");
        assert_eq!(response.status(), 200);
        let content_type = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(
            content_type.starts_with("text/event-stream"),
            "{content_type}"
        );
        // Bytes first, text once: a character may be split across chunks.
        let mut bytes = Vec::new();
        while let Some(chunk) = response.chunk().await.expect("the stream") {
            bytes.extend_from_slice(&chunk);
        }
        String::from_utf8(bytes).expect("the stream is UTF-8")
    };
    let text = tokio::time::timeout(Duration::from_secs(60), read)
        .await
        .expect("the event stream ended within a minute, with the task");
    parse_frames(&text)
}

/// The events of server-sent event text: each frame's name and data.
pub(crate) fn parse_frames(text: &str) -> Vec<(String, Value)> {
    text.replace("\r\n", "\n")
        .split("\n\n")
        .filter_map(|frame| {
            let name = frame.lines().find_map(|l| l.strip_prefix("event:"))?;
            let data = frame.lines().find_map(|l| l.strip_prefix("data:"))?;
            Some((
                name.trim().to_owned(),
                serde_json::from_str(data.trim()).unwrap(),
            ))
        })
        .collect()
}

/// A task's whole transcript, read page by page (`limit` entries each) as JSON.
pub(crate) async fn read_transcript(
    http: &reqwest::Client,
    server: &ServerProcess,
    id: &str,
    limit: usize,
) -> Vec<Value> {
    let mut events = Vec::new();
    let mut after = 0;
    loop {
        let (status, page) = call(
            http.get(server.url(&format!(
                "/v1/tasks/{id}/events?after={after}&limit={limit}"
            )))
            .bearer_auth(TOKEN),
        )
        .await;
        assert_eq!(status, 200, "{page}");
        let entries = page["events"].as_array().expect("events").clone();
        events.extend(entries);
        match page["next_after"].as_u64() {
            Some(next) => after = next,
            None => return events,
        }
    }
}

/// Submits a demo task on `repo` (checking the 202) and reads its event stream to
/// the end; returns the task id and the events.
pub(crate) async fn submit_and_follow(
    server: &ServerProcess,
    http: &reqwest::Client,
    repo: &Path,
) -> (String, Vec<(String, Value)>) {
    let id = submit_demo(server, http, repo).await;
    let events = read_events(http, &server.url(&format!("/v1/tasks/{id}/events"))).await;
    (id, events)
}

/// Submits a demo task on `repo` (checking the 202); returns the task id.
pub(crate) async fn submit_demo(
    server: &ServerProcess,
    http: &reqwest::Client,
    repo: &Path,
) -> String {
    let (status, accepted) = call(
        http.post(server.url("/v1/tasks"))
            .bearer_auth(TOKEN)
            .json(&json!({"repo": repo, "prompt": "say hello", "agent": "demo"})),
    )
    .await;
    assert_eq!(status, 202, "{accepted}");
    assert_eq!(accepted["status"], "queued");
    accepted["id"].as_str().expect("an id").to_owned()
}

/// A PostgreSQL schema name no other test run uses: `prefix`, the process id and the
/// time.
pub(crate) fn fresh_schema(prefix: &str) -> String {
    format!(
        "{prefix}_{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_nanos()
    )
}
