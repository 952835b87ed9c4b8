//! The VM agent's HTTP API over loopback: a real server on 127.0.0.1, the host
//! runtime on a temporary git repository, the fake ACP agent as a process, and a
//! wiremock control plane receiving the callbacks.

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use sam_agent::plane::{NodeEndpoint, StaticNodeDirectory};
use sam_agent::vm::fake::FakeAgentScript;
use sam_agent::vm::{SqliteStorage, Storage};
use sam_agent::wire::{MANAGEMENT_AUDIENCE, SessionView, WorkspaceView, management_signer};
use sam_agent::{
    AcpOptions, AgentCommand, HostRuntime, HttpNodeAgent, HttpNodeAgentConfig, VmAgent,
    VmAgentConfig,
};
use sam_core::{
    Capacity, ErrorCategory, Labels, Location, NodeAgent, NodeHealth, NodeId, NodeLifecycle,
    NodeRecord, NodeStatus, ProviderKind, RetryOn, RetryPolicy, Secret, SessionReport,
    SessionRequest, StopReason, TaskId, TokenClaims, TokenScope, TokenSigner, VmSize, WorkspaceId,
    WorkspaceReport, WorkspaceRequest,
};
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::sync::oneshot;
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

const NODE: &str = "node-1";

/// A repository with one commit on `main`.
fn repo() -> TempDir {
    let dir = tempfile::tempdir().unwrap();
    let git = |args: &[&str]| {
        let out = Command::new("git")
            .args([
                "-c",
                "user.name=sam",
                "-c",
                "user.email=sam@example.invalid",
                "-c",
                "init.defaultBranch=main",
            ])
            .args(args)
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "git {args:?}");
    };
    git(&["init", "--quiet"]);
    std::fs::write(dir.path().join("README.md"), "hello\n").unwrap();
    git(&["add", "-A"]);
    git(&["commit", "--quiet", "-m", "init"]);
    dir
}

fn fake_agent(script: &FakeAgentScript) -> AgentCommand {
    script.to_env().into_iter().fold(
        AgentCommand::new(env!("CARGO_BIN_EXE_fake-acp-agent")),
        |c, (k, v)| c.with_env(k, Secret::new(v)),
    )
}

/// A running agent, its control plane, and what a client needs.
struct Harness {
    base: String,
    node_token: Secret,
    control_plane: MockServer,
    root: TempDir,
    repo: TempDir,
    http: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    served: tokio::task::JoinHandle<sam_agent::Result<()>>,
}

impl Harness {
    async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// An agent whose configuration `configure` adjusted.
    async fn start_with(configure: impl FnOnce(&mut VmAgentConfig)) -> Self {
        let control_plane = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({})))
            .mount(&control_plane)
            .await;
        // The control plane's own signer issued the node token the node booted with.
        let cp = TokenSigner::new(Secret::new("c".repeat(32)), "sam-control-plane").unwrap();
        let node_token = cp.issue(
            TokenScope::Node,
            NODE,
            Utc::now(),
            Duration::from_secs(3600),
        );
        let mut config = VmAgentConfig::new(
            NodeId::new(NODE).unwrap(),
            node_token.clone(),
            control_plane.uri().parse().unwrap(),
        );
        config.boot_log = None;
        config.heartbeat_interval = Duration::from_millis(200);
        config.callback_retry = RetryPolicy {
            initial_delay: Duration::from_millis(5),
            max_delay: Duration::from_millis(20),
            max_attempts: 3,
            budget: Duration::from_secs(5),
            jitter: 0.0,
            per_attempt_timeout: Some(Duration::from_secs(5)),
            retry_on: RetryOn::Retryable,
        };
        config.agents.insert(
            "fake".to_owned(),
            fake_agent(&FakeAgentScript {
                stop_reason: "end_turn".to_owned(),
                ..FakeAgentScript::default()
            }),
        );
        config.agents.insert(
            "slow".to_owned(),
            fake_agent(&FakeAgentScript {
                slow: Duration::from_secs(30),
                ..FakeAgentScript::default()
            }),
        );
        config.acp = AcpOptions {
            request_timeout: Duration::from_secs(20),
            ..AcpOptions::default()
        };
        configure(&mut config);
        let root = tempfile::tempdir().unwrap();
        let agent = VmAgent::new(config, Arc::new(HostRuntime::new(root.path())))
            .await
            .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let served = tokio::spawn(async move {
            agent
                .serve(listener, async {
                    let _ = stopped.await;
                })
                .await
        });
        Self {
            base,
            node_token,
            control_plane,
            root,
            repo: repo(),
            http: reqwest::Client::new(),
            stop: Some(stop),
            served,
        }
    }

    fn management_token(&self) -> Secret {
        management_signer(&self.node_token).unwrap().issue(
            TokenScope::Node,
            NODE,
            Utc::now(),
            Duration::from_secs(300),
        )
    }

    /// A request with a valid management token.
    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(self.management_token().expose())
    }

    async fn json(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = self.request(method, path);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    fn create_body(&self, id: &str) -> Value {
        json!({
            "id": id,
            "repo": self.repo.path().display().to_string(),
            "token": format!("token-of-{id}"),
        })
    }

    /// Polls until `check` accepts the answer to `GET path`.
    async fn until<T>(&self, path: &str, check: impl Fn(u16, &Value) -> Option<T>) -> T {
        for _ in 0..400 {
            let (status, body) = self.json(reqwest::Method::GET, path, None).await;
            if let Some(value) = check(status, &body) {
                return value;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("{path} never reached the expected state");
    }

    async fn ready_workspace(&self, id: &str) -> WorkspaceView {
        let (status, _) = self
            .json(
                reqwest::Method::POST,
                "/v1/workspaces",
                Some(self.create_body(id)),
            )
            .await;
        assert_eq!(status, 202);
        self.until(&format!("/v1/workspaces/{id}"), |_, body| {
            let view: WorkspaceView = serde_json::from_value(body.clone()).ok()?;
            (view.report != WorkspaceReport::Preparing).then_some(view)
        })
        .await
    }

    async fn session_done(&self, id: &str) -> SessionView {
        self.until(&format!("/v1/workspaces/{id}/sessions"), |_, body| {
            let view: SessionView = serde_json::from_value(body.clone()).ok()?;
            (view.report != SessionReport::Running).then_some(view)
        })
        .await
    }

    /// The callbacks the control plane received on `path`, with their bearer tokens.
    async fn callbacks(&self, path: &str) -> Vec<(String, Value)> {
        self.control_plane
            .received_requests()
            .await
            .unwrap_or_default()
            .into_iter()
            .filter(|r| r.url.path() == path)
            .map(|r| {
                let auth = r
                    .headers
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                (auth, serde_json::from_slice(&r.body).unwrap_or(Value::Null))
            })
            .collect()
    }

    /// Polls until the control plane received at least one callback on `path`.
    async fn first_callbacks(&self, path: &str) -> Vec<(String, Value)> {
        for _ in 0..400 {
            let received = self.callbacks(path).await;
            if !received.is_empty() {
                return received;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("no callback on {path}");
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        (&mut self.served).await.unwrap().unwrap();
    }
}

#[tokio::test]
async fn health_answers_at_once_without_a_token() {
    let h = Harness::start().await;
    let response = h
        .http
        .get(format!("{}/health", h.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body, json!({ "version": env!("CARGO_PKG_VERSION") }));
    h.stop().await;
}

#[tokio::test]
async fn management_tokens_are_checked() {
    let h = Harness::start().await;
    let signer = management_signer(&h.node_token).unwrap();
    let now = Utc::now();
    let hour = Duration::from_secs(3600);
    const YEAR: i64 = 365 * 24 * 3600;
    let claims = |scope, sub: &str, exp_offset: i64| TokenClaims {
        aud: MANAGEMENT_AUDIENCE.to_owned(),
        scope,
        sub: sub.to_owned(),
        iat: now.timestamp() - 7200,
        exp: now.timestamp() + exp_offset,
        kid: None,
    };
    let other_key = TokenSigner::new(Secret::new("x".repeat(40)), MANAGEMENT_AUDIENCE).unwrap();
    let other_audience = TokenSigner::new(h.node_token.clone(), "sam-control-plane").unwrap();
    let rejected = [
        ("no token", None),
        (
            "expired",
            Some(signer.sign(&claims(Some(TokenScope::Node), NODE, -1))),
        ),
        ("scopeless", Some(signer.sign(&claims(None, NODE, 3600)))),
        (
            "wrong scope",
            Some(signer.issue(TokenScope::Workspace, NODE, now, hour)),
        ),
        (
            "wrong subject",
            Some(signer.issue(TokenScope::Node, "node-2", now, hour)),
        ),
        (
            "other key",
            Some(other_key.issue(TokenScope::Node, NODE, now, hour)),
        ),
        (
            "other audience",
            Some(other_audience.issue(TokenScope::Node, NODE, now, hour)),
        ),
        ("the node token itself", Some(h.node_token.clone())),
        ("garbage", Some(Secret::new("not-a-token"))),
        (
            "issued three years ahead, expiring in 31 years",
            Some(signer.sign(&TokenClaims {
                iat: now.timestamp() + 3 * YEAR,
                exp: now.timestamp() + 31 * YEAR,
                ..claims(Some(TokenScope::Node), NODE, 0)
            })),
        ),
        (
            "valid for 31 years",
            Some(signer.sign(&claims(Some(TokenScope::Node), NODE, 31 * YEAR))),
        ),
    ];
    for (why, token) in rejected {
        let mut request = h.http.get(format!("{}/v1/events", h.base));
        if let Some(token) = &token {
            request = request.bearer_auth(token.expose());
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 401, "{why}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["category"], "auth_error", "{why}");
    }
    let (status, _) = h.json(reqwest::Method::GET, "/v1/events", None).await;
    assert_eq!(status, 200);
    h.stop().await;
}

#[tokio::test]
async fn malformed_requests_are_refused_naming_the_field() {
    let h = Harness::start().await;
    let post = |path: &'static str, body: &'static str| {
        h.request(reqwest::Method::POST, path)
            .header("content-type", "application/json")
            .body(body)
    };
    let cases: [(&str, &str, u16, Option<&str>); 7] = [
        ("/v1/workspaces", "{not json", 400, None),
        (
            "/v1/workspaces",
            r#"{"id":"ws-1","token":"t"}"#,
            400,
            Some("repo"),
        ),
        (
            "/v1/workspaces",
            r#"{"id":"ws-1","repo":"r","token":"t","branch":5}"#,
            400,
            Some("branch"),
        ),
        (
            "/v1/workspaces",
            r#"{"id":"ws 1","repo":"r","token":"t"}"#,
            400,
            Some("id"),
        ),
        (
            "/v1/workspaces",
            r#"{"id":"ws-1","repo":"r","token":"t","profile":"huge"}"#,
            400,
            Some("profile"),
        ),
        (
            "/v1/workspaces",
            r#"{"id":"ws-1","repo":"r","token":"t","colour":"red"}"#,
            400,
            Some("colour"),
        ),
        (
            "/v1/workspaces/ws-x/sessions",
            r#"{"agent":"fake"}"#,
            400,
            Some("prompt"),
        ),
    ];
    for (path, body, status, field) in cases {
        let response = post(path, body).send().await.unwrap();
        assert_eq!(response.status().as_u16(), status, "{body}");
        let answer: Value = response.json().await.unwrap();
        assert_eq!(answer["category"], "invalid_config", "{body}");
        assert_eq!(answer["field"].as_str(), field, "{body}: {answer}");
    }
    let (status, body) = h
        .json(reqwest::Method::GET, "/v1/events?limit=lots", None)
        .await;
    assert_eq!((status, body["field"].as_str()), (400, Some("limit")));

    // Unknown routes and workspaces.
    let (status, _) = h.json(reqwest::Method::GET, "/v1/nothing", None).await;
    assert_eq!(status, 404);
    let response = h
        .http
        .get(format!("{}/nothing", h.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let (status, body) = h
        .json(reqwest::Method::GET, "/v1/workspaces/ws-x", None)
        .await;
    assert_eq!(
        (status, body["category"].as_str()),
        (404, Some("not_found"))
    );
    h.stop().await;
}

/// `GET path` with `headers` (whole lines) written by hand on a socket to `base`
/// (`http://host:port`), as HTTP clients refuse very long URLs; the status, the
/// content type and the body.
async fn raw_get(base: &str, path: &str, headers: &str) -> (u16, String, String) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let address = base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let request =
        format!("GET {path} HTTP/1.1\r\nhost: {address}\r\n{headers}connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    // The agent may close before it read the whole request; what it answered is
    // read either way.
    let _ = stream.read_to_end(&mut answer).await;
    let text = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("a response head");
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let content_type = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-type: ")
                .map(str::to_owned)
        })
        .unwrap_or_default();
    (status, content_type, body.to_owned())
}

/// Every failure of the agent's API is an `ErrorBody`, also the ones axum and hyper
/// answer by themselves: a body over the limit, a path segment that does not decode,
/// a 100 KB path; a prompt holding NUL or over the limit, and a repository git would
/// read as a command or an option, are refused naming them.
#[tokio::test]
async fn every_failure_is_json_and_prompts_are_bounded() {
    let h = Harness::start().await;
    let session = |prompt: String| {
        h.request(reqwest::Method::POST, "/v1/workspaces/ws-x/sessions")
            .json(&json!({"agent": "fake", "prompt": prompt}))
    };
    let cases: Vec<(&str, reqwest::RequestBuilder, u16, Option<&str>)> = vec![
        (
            "a body over the limit",
            h.request(reqwest::Method::POST, "/v1/workspaces")
                .header("content-type", "application/json")
                .body(vec![b' '; 3 * 1024 * 1024]),
            413,
            None,
        ),
        (
            "an id that does not decode",
            h.request(reqwest::Method::GET, "/v1/workspaces/%FF"),
            400,
            None,
        ),
        (
            "a query that does not decode",
            h.request(reqwest::Method::GET, "/v1/events?limit=%FF"),
            400,
            Some("limit"),
        ),
        (
            "a prompt holding NUL",
            session("a\u{0}b".to_owned()),
            400,
            Some("prompt"),
        ),
        (
            "a git remote helper as the repository",
            h.request(reqwest::Method::POST, "/v1/workspaces")
                .json(&json!({"id": "ws-1", "repo": "ext::sh -c touch% /tmp/x", "token": "t"})),
            400,
            Some("repo"),
        ),
        (
            "an option as the repository",
            h.request(reqwest::Method::POST, "/v1/workspaces")
                .json(&json!({"id": "ws-1", "repo": "--upload-pack=touch /tmp/x", "token": "t"})),
            400,
            Some("repo"),
        ),
        (
            "a prompt over the limit",
            session("x".repeat(sam_core::MAX_PROMPT_BYTES + 1)),
            413,
            Some("prompt"),
        ),
    ];
    for (what, request, status, field) in cases {
        let response = request.send().await.unwrap();
        assert_eq!(response.status().as_u16(), status, "{what}");
        let text = response.text().await.unwrap();
        let answer: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{what}: the body is JSON ({e}): {text:?}"));
        assert_eq!(answer["category"], "invalid_config", "{what}: {answer}");
        assert!(answer["error"].is_string(), "{what}: {answer}");
        assert_eq!(answer["field"].as_str(), field, "{what}: {answer}");
    }
    let huge_path = format!("/v1/workspaces/{}", "a".repeat(100 * 1024));
    let huge_header = format!("x-padding: {}\r\n", "a".repeat(600 * 1024));
    for (what, path, headers, want) in [
        ("a 100 KB path", huge_path.as_str(), "", 414),
        ("600 KB of headers", "/health", huge_header.as_str(), 431),
    ] {
        let (status, content_type, body) = raw_get(&h.base, path, headers).await;
        assert_eq!(status, want, "{what}: {body}");
        assert_eq!(content_type, "application/json", "{what}");
        let answer: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(answer["category"], "invalid_config", "{what}: {answer}");
    }
    h.stop().await;
}

#[tokio::test]
async fn a_workspace_and_a_session_end_to_end() {
    let h = Harness::start().await;
    let view = h.ready_workspace("ws-1").await;
    assert_eq!(
        view.report,
        WorkspaceReport::Ready {
            effective_profile: "host".to_owned(),
            recovery: false
        }
    );
    assert!(h.root.path().join("ws-1/README.md").is_file());
    // Creating it again changes nothing.
    let (status, body) = h
        .json(
            reqwest::Method::POST,
            "/v1/workspaces",
            Some(h.create_body("ws-1")),
        )
        .await;
    assert_eq!((status, &body["report"]["state"]), (200, &json!("ready")));

    // An unknown agent is refused; the fake one runs a turn.
    let (status, body) = h
        .json(
            reqwest::Method::POST,
            "/v1/workspaces/ws-1/sessions",
            Some(json!({ "agent": "nobody", "prompt": "hi" })),
        )
        .await;
    assert_eq!((status, body["field"].as_str()), (400, Some("agent")));
    let (status, _) = h
        .json(
            reqwest::Method::POST,
            "/v1/workspaces/ws-1/sessions",
            Some(json!({ "agent": "fake", "prompt": "fix the flaky test" })),
        )
        .await;
    assert_eq!(status, 202);
    let done = h.session_done("ws-1").await;
    let SessionReport::Stopped {
        reason,
        last_message,
    } = &done.report
    else {
        panic!("the turn failed: {:?}", done.report);
    };
    assert_eq!(*reason, StopReason::EndTurn);
    assert!(last_message.is_some(), "the fake agent says something");
    // Starting again answers the existing session.
    let (status, body) = h
        .json(
            reqwest::Method::POST,
            "/v1/workspaces/ws-1/sessions",
            Some(json!({ "agent": "fake", "prompt": "again" })),
        )
        .await;
    assert_eq!((status, &body["report"]["state"]), (200, &json!("stopped")));

    // The control plane heard about it all, each with the right token.
    let ready = h.callbacks("/v1/workspaces/ws-1/ready").await;
    assert_eq!(
        ready,
        [(
            "Bearer token-of-ws-1".to_owned(),
            json!({ "state": "ready", "effective_profile": "host", "recovery": false })
        )]
    );
    let mut events = Vec::new();
    for _ in 0..200 {
        events = h.callbacks("/v1/workspaces/ws-1/events").await;
        if events.iter().any(|(_, b)| b["kind"] == "report") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(
        events
            .iter()
            .all(|(auth, _)| auth == "Bearer token-of-ws-1")
    );
    let kinds: Vec<String> = events
        .iter()
        .map(|(_, b)| {
            format!(
                "{}:{}",
                b["kind"].as_str().unwrap(),
                b["type"].as_str().or(b["state"].as_str()).unwrap()
            )
        })
        .collect();
    assert_eq!(
        kinds.first().map(String::as_str),
        Some("event:update"),
        "{kinds:?}"
    );
    assert_eq!(
        kinds.last().map(String::as_str),
        Some("report:stopped"),
        "{kinds:?}"
    );
    assert_eq!(
        kinds[kinds.len() - 2],
        "event:stopped",
        "the report comes after every event: {kinds:?}"
    );
    assert_eq!(events.last().unwrap().1["reason"], "end_turn");
    let ready = h.callbacks(&format!("/v1/nodes/{NODE}/ready")).await;
    assert_eq!(ready.len(), 1);
    assert_eq!(ready[0].1["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(ready[0].0, format!("Bearer {}", h.node_token.expose()));
    let heartbeats = h
        .first_callbacks(&format!("/v1/nodes/{NODE}/heartbeat"))
        .await;
    let metrics = &heartbeats[0].1["metrics"];
    assert!(
        metrics["memory_percent"].as_f64().unwrap() > 0.0,
        "{metrics}"
    );

    // The event log, newest first.
    let (_, log) = h
        .json(reqwest::Method::GET, "/v1/events?limit=1000", None)
        .await;
    let log = log.as_array().unwrap();
    let ids: Vec<u64> = log.iter().map(|e| e["id"].as_u64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "newest first: {ids:?}");
    let types: Vec<&str> = log.iter().map(|e| e["type"].as_str().unwrap()).collect();
    for kind in [
        "workspace.created",
        "workspace.ready",
        "agent_session.started",
        "agent_session.update",
        "agent_session.report",
        "node.ready",
    ] {
        assert!(types.contains(&kind), "{kind} in {types:?}");
    }
    let (_, two) = h
        .json(reqwest::Method::GET, "/v1/events?limit=2", None)
        .await;
    assert_eq!(two.as_array().unwrap().len(), 2);

    // Removal is idempotent and takes the clone away.
    for _ in 0..2 {
        let response = h
            .request(reqwest::Method::DELETE, "/v1/workspaces/ws-1")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 204);
    }
    assert!(!h.root.path().join("ws-1").exists());
    let (status, _) = h
        .json(reqwest::Method::GET, "/v1/workspaces/ws-1", None)
        .await;
    assert_eq!(status, 404);
    h.stop().await;
}

#[tokio::test]
async fn a_failed_workspace_reports_why() {
    let h = Harness::start().await;
    let (status, _) = h
        .json(
            reqwest::Method::POST,
            "/v1/workspaces",
            Some(json!({
                "id": "ws-bad",
                "repo": h.repo.path().display().to_string(),
                "devcontainer": "missing",
                "token": "t",
            })),
        )
        .await;
    assert_eq!(status, 202);
    let view = h
        .until("/v1/workspaces/ws-bad", |_, body| {
            let view: WorkspaceView = serde_json::from_value(body.clone()).ok()?;
            (view.report != WorkspaceReport::Preparing).then_some(view)
        })
        .await;
    let WorkspaceReport::Failed { error } = view.report else {
        panic!("{view:?}");
    };
    assert_eq!(error.category, ErrorCategory::NotFound, "{}", error.message);
    assert!(error.message.contains("missing"), "{}", error.message);
    let (status, body) = h
        .json(
            reqwest::Method::POST,
            "/v1/workspaces/ws-bad/sessions",
            Some(json!({ "agent": "fake", "prompt": "hi" })),
        )
        .await;
    assert_eq!(
        (status, body["category"].as_str()),
        (400, Some("invalid_config"))
    );
    h.stop().await;
}

#[tokio::test]
async fn cancel_stops_a_running_turn() {
    let h = Harness::start().await;
    h.ready_workspace("ws-1").await;
    let (status, _) = h
        .json(
            reqwest::Method::POST,
            "/v1/workspaces/ws-1/sessions",
            Some(json!({ "agent": "slow", "prompt": "take your time" })),
        )
        .await;
    assert_eq!(status, 202);
    // Wait until the turn has begun (its user message is in the log).
    h.until("/v1/events", |_, body| {
        body.as_array()?
            .iter()
            .any(|e| e["type"] == "agent_session.update")
            .then_some(())
    })
    .await;
    let response = h
        .request(reqwest::Method::POST, "/v1/workspaces/ws-1/cancel")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    let done = h.session_done("ws-1").await;
    assert!(
        matches!(
            done.report,
            SessionReport::Stopped {
                reason: StopReason::Cancelled,
                ..
            }
        ),
        "{:?}",
        done.report
    );
    h.stop().await;
}

fn node(id: &str) -> NodeRecord {
    let now = Utc::now();
    NodeRecord {
        id: NodeId::new(id).unwrap(),
        provider: ProviderKind::Fake,
        vm_id: None,
        size: VmSize::Small,
        server_type: "fake".to_owned(),
        location: Location::new("local").unwrap(),
        capacity: Capacity {
            cpu_millis: 2000,
            memory_mb: 4096,
            disk_mb: None,
        },
        labels: Labels::default(),
        status: NodeStatus::Running,
        lifecycle: NodeLifecycle::Active,
        warm_since: None,
        health: NodeHealth::Healthy,
        last_heartbeat_at: None,
        agent_version: None,
        ready_at: None,
        created_for: None,
        credential_owner: None,
        address: None,
        boot: sam_core::NodeBootRecord::default(),
        created_at: now,
        updated_at: now,
    }
}

#[tokio::test]
async fn http_node_agent_drives_the_real_server() {
    let h = Harness::start().await;
    let directory = Arc::new(StaticNodeDirectory::new());
    directory.insert(
        NodeId::new(NODE).unwrap(),
        NodeEndpoint {
            base_url: h.base.parse().unwrap(),
            management_key: h.node_token.clone(),
        },
    );
    // A node whose port is closed, and one with the wrong key.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_url = format!("http://{}/", closed.local_addr().unwrap());
    drop(closed);
    directory.insert(
        NodeId::new("node-down").unwrap(),
        NodeEndpoint {
            base_url: closed_url.parse().unwrap(),
            management_key: h.node_token.clone(),
        },
    );
    let agent = HttpNodeAgent::new(directory.clone(), HttpNodeAgentConfig::default()).unwrap();
    let n = node(NODE);

    let health = agent.health(&n).await.unwrap().unwrap();
    assert_eq!(health.version, env!("CARGO_PKG_VERSION"));
    assert_eq!(agent.health(&node("node-unknown")).await.unwrap(), None);
    assert_eq!(agent.health(&node("node-down")).await.unwrap(), None);
    let down = agent
        .workspace_status(&node("node-down"), &WorkspaceId::new("ws-1").unwrap())
        .await
        .unwrap_err();
    assert_eq!(down.category, ErrorCategory::Transient);

    let ws = WorkspaceId::new("ws-1").unwrap();
    assert_eq!(agent.workspace_status(&n, &ws).await.unwrap(), None);
    assert_eq!(agent.session_status(&n, &ws).await.unwrap(), None);
    let request = WorkspaceRequest {
        workspace_id: ws.clone(),
        task_id: TaskId::new("t-1").unwrap(),
        repo: h.repo.path().display().to_string(),
        repo_served: false,
        branch: None,
        profile: Some("full".to_owned()),
        devcontainer: None,
        token: Secret::new("workspace-token"),
        output_branch: None,
        github: None,
    };
    agent.create_workspace(&n, &request).await.unwrap();
    agent.create_workspace(&n, &request).await.unwrap();
    let bad_profile = WorkspaceRequest {
        profile: Some("huge".to_owned()),
        ..request.clone()
    };
    assert_eq!(
        agent
            .create_workspace(&n, &bad_profile)
            .await
            .unwrap_err()
            .category,
        ErrorCategory::InvalidConfig
    );
    let session = SessionRequest {
        workspace_id: ws.clone(),
        agent: "fake".to_owned(),
        prompt: "fix it".to_owned(),
        options: sam_core::AgentOptions::default(),
        env: Vec::new(),
        idle_timeout: None,
    };
    // Until the workspace is ready a session start is a conflict, which the runner retries.
    let mut started = false;
    for _ in 0..400 {
        match agent.start_session(&n, &session).await {
            Ok(()) => {
                started = true;
                break;
            }
            Err(e) => {
                assert_eq!(e.category, ErrorCategory::Conflict, "{e}");
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        }
    }
    assert!(started);
    assert!(matches!(
        agent.workspace_status(&n, &ws).await.unwrap(),
        Some(WorkspaceReport::Ready { .. })
    ));
    agent.start_session(&n, &session).await.unwrap();
    let mut report = SessionReport::Running;
    for _ in 0..400 {
        report = agent.session_status(&n, &ws).await.unwrap().unwrap();
        if report != SessionReport::Running {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(
        matches!(
            report,
            SessionReport::Stopped {
                reason: StopReason::EndTurn,
                ..
            }
        ),
        "{report:?}"
    );
    let unknown_agent = SessionRequest {
        workspace_id: WorkspaceId::new("ws-none").unwrap(),
        ..session.clone()
    };
    assert_eq!(
        agent
            .start_session(&n, &unknown_agent)
            .await
            .unwrap_err()
            .category,
        ErrorCategory::NotFound
    );
    agent.cancel_session(&n, &ws).await.unwrap();
    agent
        .cancel_session(&n, &WorkspaceId::new("ws-none").unwrap())
        .await
        .unwrap();
    agent.stop_workspace(&n, &ws).await.unwrap();
    agent.stop_workspace(&n, &ws).await.unwrap();
    assert_eq!(agent.workspace_status(&n, &ws).await.unwrap(), None);

    // The wrong key is an auth error, not a retry.
    directory.insert(
        NodeId::new(NODE).unwrap(),
        NodeEndpoint {
            base_url: h.base.parse().unwrap(),
            management_key: Secret::new("k".repeat(64)),
        },
    );
    let error = agent.workspace_status(&n, &ws).await.unwrap_err();
    assert_eq!(error.category, ErrorCategory::AuthError);
    assert!(!error.category.is_retryable());
    h.stop().await;
}

/// Polls `GET /v1/events?limit=1000` until `check` accepts the events.
async fn until_events<T: Send>(h: &Harness, check: impl Fn(&[Value]) -> Option<T> + Sync) -> T {
    h.until("/v1/events?limit=1000", |_, body| check(body.as_array()?))
        .await
}

/// Downloads an export into `dir`, checking its headers; returns the file.
async fn download(h: &Harness, path: &str, dir: &std::path::Path) -> std::path::PathBuf {
    let response = h.request(reqwest::Method::GET, path).send().await.unwrap();
    assert_eq!(response.status(), 200, "{path}");
    assert_eq!(
        response.headers()["content-type"],
        sam_agent::vm::http::SQLITE_MEDIA_TYPE
    );
    let length: u64 = response.headers()["content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let bytes = response.bytes().await.unwrap();
    assert_eq!(bytes.len() as u64, length);
    let file = dir.join(path.trim_start_matches('/').replace('/', "-"));
    std::fs::write(&file, &bytes).unwrap();
    file
}

/// Opens a downloaded database alone (no WAL beside it), checking its integrity.
async fn open_export(path: &std::path::Path) -> sqlx::SqliteConnection {
    use sqlx::ConnectOptions;
    let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(path)
        .immutable(true)
        .connect()
        .await
        .unwrap();
    let check: String = sqlx::query_scalar("PRAGMA integrity_check")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(check, "ok", "{}", path.display());
    conn
}

#[tokio::test]
async fn exports_are_sqlite_databases_holding_every_committed_row() {
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().to_owned();
    let h = Harness::start_with(|config| {
        config.storage = Storage::Sqlite(SqliteStorage::new(data_dir));
        config.metrics_interval = Duration::from_millis(20);
    })
    .await;
    // Events from the node (ready) and from a workspace.
    h.ready_workspace("ws-1").await;
    let listed = until_events(&h, |events| {
        let has = |kind: &str| events.iter().any(|e| e["type"] == kind);
        (has("node.ready") && has("workspace.ready")).then(|| events.to_vec())
    })
    .await;
    let listed_ids: Vec<i64> = listed.iter().map(|e| e["id"].as_i64().unwrap()).collect();

    let downloads = tempfile::tempdir().unwrap();
    let file = download(&h, "/v1/events/export", downloads.path()).await;
    let mut db = open_export(&file).await;
    let rows: Vec<(i64, String, Option<String>, String)> =
        sqlx::query_as("SELECT id, type, node_id, level FROM events ORDER BY id DESC")
            .fetch_all(&mut db)
            .await
            .unwrap();
    let exported: Vec<i64> = rows.iter().map(|r| r.0).collect();
    for id in &listed_ids {
        assert!(exported.contains(id), "event {id} is in {exported:?}");
    }
    assert!(
        rows.iter().all(|r| r.2.as_deref() == Some(NODE)),
        "{rows:?}"
    );
    let ready = rows.iter().find(|r| r.1 == "workspace.ready").unwrap();
    assert_eq!(ready.3, "info");

    // Snapshots are written every interval, under their minute.
    let mut snapshots = 0;
    for _ in 0..200 {
        let file = download(&h, "/v1/metrics/export", downloads.path()).await;
        let mut db = open_export(&file).await;
        snapshots = sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM snapshots WHERE memory_percent > 0 AND disk_percent >= 0",
        )
        .fetch_one(&mut db)
        .await
        .unwrap();
        if snapshots > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(snapshots > 0, "no snapshot was exported");

    // The exports are token-checked like every /v1 route, and leave nothing behind.
    for path in ["/v1/events/export", "/v1/metrics/export"] {
        let response = h
            .http
            .get(format!("{}{path}", h.base))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401, "{path}");
    }
    let staged = std::fs::read_dir(data.path().join("exports"))
        .unwrap()
        .count();
    assert_eq!(staged, 0, "exports are unlinked once open");
    assert!(data.path().join("events.db").exists());
    assert!(data.path().join("metrics.db").exists());
    h.stop().await;
}

#[tokio::test]
async fn in_memory_storage_has_nothing_to_export() {
    let h = Harness::start().await;
    for path in ["/v1/events/export", "/v1/metrics/export"] {
        let (status, body) = h.json(reqwest::Method::GET, path, None).await;
        assert_eq!(status, 404, "{path}");
        assert_eq!(body["category"], "not_found", "{path}");
    }
    h.stop().await;
}

#[tokio::test]
async fn retention_is_enforced_while_running() {
    let data = tempfile::tempdir().unwrap();
    let mut storage = SqliteStorage::new(data.path());
    storage.retention = Duration::from_millis(300);
    let h = Harness::start_with(|config| {
        config.storage = Storage::Sqlite(storage);
        config.metrics_interval = Duration::from_millis(20);
    })
    .await;
    let has_ready = |events: &[Value]| events.iter().any(|e| e["type"] == "node.ready");
    until_events(&h, |events| has_ready(events).then_some(())).await;
    // Nothing writes events now; the sampler prunes them anyway.
    until_events(&h, |events| (!has_ready(events)).then_some(())).await;
    h.stop().await;
}

#[tokio::test]
async fn the_boot_timeline_goes_to_events_and_the_ready_callback() {
    let logs = tempfile::tempdir().unwrap();
    let boot_log = logs.path().join("cloud-init-output.log");
    std::fs::write(
        &boot_log,
        "\
Cloud-init v. 22.4.2 running 'modules:final'. Up 12.5 seconds.
2026-11-21T18:00:00+00:00 sam-node-1 sam-boot[812]: PHASE START: swap
2026-11-21T18:00:09+00:00 sam-node-1 sam-boot[815]: PHASE END: swap
2026-11-21T18:00:10+00:00 sam-node-1 sam-boot[816]: PHASE START: docker
",
    )
    .unwrap();
    let h = Harness::start_with(|config| config.boot_log = Some(boot_log)).await;
    let phases = until_events(&h, |events| {
        let phases: Vec<Value> = events
            .iter()
            .filter(|e| e["type"] == "node.boot_phase")
            .cloned()
            .collect();
        (phases.len() == 2).then_some(phases)
    })
    .await;
    // Newest first: docker never ended, swap took 9 s.
    assert_eq!(phases[0]["level"], "warn");
    assert_eq!(phases[0]["detail"]["phase"], "docker");
    assert_eq!(phases[0]["detail"]["ended_at"], Value::Null);
    assert_eq!(phases[1]["detail"]["phase"], "swap");
    assert_eq!(phases[1]["detail"]["started_at"], "2026-11-21T18:00:00Z");
    assert_eq!(phases[1]["detail"]["ended_at"], "2026-11-21T18:00:09Z");
    assert_eq!(phases[1]["detail"]["duration_ms"], 9000);

    let ready = h.first_callbacks(&format!("/v1/nodes/{NODE}/ready")).await;
    let boot = &ready[0].1["boot"];
    let names: Vec<&str> = boot["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["swap", "docker"]);
    assert_eq!(boot["phases"][0]["duration"]["secs"], 9);
    assert_eq!(boot["complete"], false);
    h.stop().await;
}

/// The agent credential of a session reaches the agent process's environment, and
/// neither the VM agent's event log nor its callbacks to the control plane.
#[tokio::test]
async fn agent_credentials_reach_only_the_agent_process() {
    const KEY: &str = "sk-ant-api03-only-for-the-agent-process";
    let env_dir = tempfile::tempdir().unwrap();
    let env_file = env_dir.path().join("agent-env");
    let dump = env_file.clone();
    let h = Harness::start_with(move |config| {
        // A real process: a shell records its environment, then becomes the fake agent.
        let fake = fake_agent(&FakeAgentScript {
            stop_reason: "end_turn".to_owned(),
            ..FakeAgentScript::default()
        });
        let command = FakeAgentScript {
            stop_reason: "end_turn".to_owned(),
            ..FakeAgentScript::default()
        }
        .to_env()
        .into_iter()
        .fold(
            AgentCommand::new("sh")
                .with_args([
                    "-c".to_owned(),
                    "env > \"$SAM_TEST_ENV_FILE\"; exec \"$0\"".to_owned(),
                    fake.program().to_owned(),
                ])
                .with_env("SAM_TEST_ENV_FILE", Secret::new(dump.display().to_string())),
            |c, (k, v)| c.with_env(k, Secret::new(v)),
        );
        config.agents.insert("claude".to_owned(), command);
    })
    .await;
    let directory = StaticNodeDirectory::default();
    directory.insert(
        NodeId::new(NODE).unwrap(),
        NodeEndpoint {
            base_url: h.base.parse().unwrap(),
            management_key: h.node_token.clone(),
        },
    );
    let agent = HttpNodeAgent::new(Arc::new(directory), HttpNodeAgentConfig::default()).unwrap();
    let n = node(NODE);
    let workspace = |id: &str| WorkspaceRequest {
        workspace_id: WorkspaceId::new(id).unwrap(),
        task_id: TaskId::new(format!("t-{id}")).unwrap(),
        repo: h.repo.path().display().to_string(),
        repo_served: false,
        branch: None,
        profile: None,
        devcontainer: None,
        token: Secret::new("workspace-token"),
        output_branch: None,
        github: None,
    };
    let ws = WorkspaceId::new("ws-env").unwrap();
    agent
        .create_workspace(&n, &workspace("ws-env"))
        .await
        .unwrap();
    let session = SessionRequest {
        workspace_id: ws.clone(),
        agent: "claude".to_owned(),
        prompt: "fix it".to_owned(),
        options: sam_core::AgentOptions {
            model: Some("claude-opus-4-1".to_owned()),
            effort: Some(sam_core::Effort::High),
            permission_mode: Some(sam_core::PermissionMode::ReadOnly),
            system_prompt: Some("Review only.".to_owned()),
        },
        env: vec![("ANTHROPIC_API_KEY".to_owned(), Secret::new(KEY))],
        idle_timeout: None,
    };
    let mut started = false;
    for _ in 0..400 {
        if agent.start_session(&n, &session).await.is_ok() {
            started = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(started);
    for _ in 0..400 {
        if agent.session_status(&n, &ws).await.unwrap() != Some(SessionReport::Running) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let env = std::fs::read_to_string(&env_file).unwrap();
    let lines: Vec<&str> = env.lines().collect();
    assert!(
        lines.contains(&format!("ANTHROPIC_API_KEY={KEY}").as_str()),
        "{env}"
    );
    assert!(lines.contains(&"SAM_AGENT_MODEL=claude-opus-4-1"), "{env}");
    assert!(lines.contains(&"ANTHROPIC_MODEL=claude-opus-4-1"), "{env}");
    assert!(lines.contains(&"SAM_AGENT_EFFORT=high"), "{env}");

    let (status, events) = h
        .json(reqwest::Method::GET, "/v1/events?limit=500", None)
        .await;
    assert_eq!(status, 200);
    assert!(
        !events.to_string().contains(KEY),
        "the event log holds the key"
    );
    let callbacks = h.control_plane.received_requests().await.unwrap();
    assert!(!callbacks.is_empty());
    for request in callbacks {
        assert!(
            !String::from_utf8_lossy(&request.body).contains(KEY),
            "a callback carried the key"
        );
    }

    // A name that would change how the agent process runs is refused.
    let bad = SessionRequest {
        workspace_id: WorkspaceId::new("ws-env").unwrap(),
        env: vec![("LD_PRELOAD".to_owned(), Secret::new("/tmp/x.so"))],
        idle_timeout: None,
        ..session.clone()
    };
    let other = WorkspaceId::new("ws-env-2").unwrap();
    agent
        .create_workspace(&n, &workspace("ws-env-2"))
        .await
        .unwrap();
    let bad = SessionRequest {
        workspace_id: other,
        ..bad
    };
    let mut refused = None;
    for _ in 0..400 {
        match agent.start_session(&n, &bad).await {
            Err(e) if e.category == ErrorCategory::Conflict => {
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            other => {
                refused = Some(other);
                break;
            }
        }
    }
    let err = refused.unwrap().unwrap_err();
    assert_eq!(err.category, ErrorCategory::InvalidConfig, "{err}");
    h.stop().await;
}

/// A task's model reaches an agent that lists models over ACP (`session/set_model`),
/// and a model it does not offer fails the session with a typed error the control
/// plane records on the task.
#[tokio::test]
async fn the_model_is_selected_over_acp_and_an_unoffered_one_fails_the_session() {
    let transcript_dir = tempfile::tempdir().unwrap();
    let transcript = transcript_dir.path().join("transcript.jsonl");
    let path = transcript.clone();
    let h = Harness::start_with(move |config| {
        config.agents.insert(
            "listing".to_owned(),
            fake_agent(&FakeAgentScript {
                models: vec!["default".to_owned(), "haiku".to_owned()],
                transcript: Some(path),
                ..FakeAgentScript::default()
            }),
        );
    })
    .await;
    let session = |model: &str| {
        json!({
            "agent": "listing",
            "prompt": "fix it",
            "options": { "model": model, "system_prompt": "Review only." },
        })
    };
    for (ws, model) in [("ws-haiku", "haiku"), ("ws-opus", "opus")] {
        h.ready_workspace(ws).await;
        let (status, body) = h
            .json(
                reqwest::Method::POST,
                &format!("/v1/workspaces/{ws}/sessions"),
                Some(session(model)),
            )
            .await;
        assert_eq!(status, 202, "{body}");
        h.session_done(ws).await;
    }
    let (_, haiku) = h
        .json(
            reqwest::Method::GET,
            "/v1/workspaces/ws-haiku/sessions",
            None,
        )
        .await;
    assert_eq!(haiku["report"]["state"], "stopped", "{haiku}");
    let (_, opus) = h
        .json(
            reqwest::Method::GET,
            "/v1/workspaces/ws-opus/sessions",
            None,
        )
        .await;
    assert_eq!(opus["report"]["state"], "failed", "{opus}");
    assert_eq!(opus["report"]["error"]["category"], "invalid_config");
    let message = opus["report"]["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("\"opus\"") && message.contains("default, haiku"),
        "{message}"
    );

    // What the agent received: haiku selected, the addition in the first prompt.
    let received: Vec<Value> = std::fs::read_to_string(&transcript)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let set_model: Vec<&Value> = received
        .iter()
        .filter(|m| m["method"] == "session/set_model")
        .collect();
    assert_eq!(set_model.len(), 1, "only the offered model is selected");
    assert_eq!(set_model[0]["params"]["modelId"], "haiku");
    let prompts: Vec<&Value> = received
        .iter()
        .filter(|m| m["method"] == "session/prompt")
        .collect();
    assert_eq!(prompts.len(), 1, "the failed session sent no prompt");
    assert_eq!(
        prompts[0]["params"]["prompt"][0]["text"],
        "Review only.\n\nfix it"
    );
    // The session's failure is what the control plane heard.
    let mut failed = false;
    for _ in 0..400 {
        failed = h
            .callbacks("/v1/workspaces/ws-opus/events")
            .await
            .into_iter()
            .any(|(_, body)| body.to_string().contains("does not offer model"));
        if failed {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(failed, "the failure reached the control plane");
    h.stop().await;
}

/// A node is reached at the address recorded when its VM ran, without asking a
/// provider; only a platform node without one is looked up through the platform's
/// provider (a node of a user's account lives where that provider cannot see).
#[tokio::test]
async fn a_node_is_reached_at_its_recorded_address() {
    use sam_agent::plane::{FileNodeKeys, NodeDirectory, ProviderNodeDirectory};
    use sam_providers::FakeProvider;

    let dir = TempDir::new().unwrap();
    let keys = FileNodeKeys::new(dir.path().join("keys")).unwrap();
    let platform = Arc::new(FakeProvider::new());
    let directory = ProviderNodeDirectory::new(
        [Arc::clone(&platform) as Arc<dyn sam_core::Provider>],
        Arc::new(keys.clone()),
        7000,
    );
    let mut owned = node("n-user");
    owned.vm_id = Some(sam_core::VmId::new("vm-elsewhere").unwrap());
    owned.credential_owner = Some(sam_core::CredentialOwner::User(
        sam_core::UserId::new("u-1").unwrap(),
    ));
    owned.address = Some("192.0.2.7".to_owned());
    keys.put(&owned.id, &Secret::new("management-key")).unwrap();
    let endpoint = directory
        .endpoint(&owned)
        .await
        .unwrap()
        .expect("reached at its recorded address");
    assert_eq!(endpoint.base_url.as_str(), "http://192.0.2.7:7000/");
    assert!(
        platform.calls().is_empty(),
        "the platform's account is not asked"
    );
    // A platform node with a recorded address is reached there too.
    let platform_node = NodeRecord {
        credential_owner: None,
        ..owned.clone()
    };
    let endpoint = directory.endpoint(&platform_node).await.unwrap();
    assert_eq!(
        endpoint.expect("reached").base_url.as_str(),
        "http://192.0.2.7:7000/"
    );
    assert!(platform.calls().is_empty(), "no provider call per lookup");
    // Without a recorded address, a platform node is looked up through the
    // platform's provider (which does not know this VM); a user's node cannot be.
    let unrecorded = NodeRecord {
        address: None,
        ..platform_node
    };
    assert!(directory.endpoint(&unrecorded).await.unwrap().is_none());
    assert_eq!(platform.calls().len(), 1);
    let unrecorded_owned = NodeRecord {
        address: None,
        ..owned
    };
    assert!(
        directory
            .endpoint(&unrecorded_owned)
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        platform.calls().len(),
        1,
        "a user's node is never looked up there"
    );
}

/// A node's key is made once: a create made again for the same node boots with the
/// key recorded the first time, which a VM of the first create may already hold.
#[test]
fn a_node_keeps_its_first_key_when_created_again() {
    use sam_agent::plane::{FileNodeKeys, KeyedBoot};
    use sam_core::BootRenderer;

    /// Puts the token into the user data, as the real renderers do.
    #[derive(Debug)]
    struct TokenBoot;
    impl BootRenderer for TokenBoot {
        fn user_data(&self, _: &NodeRecord, token: &Secret) -> Result<String, sam_core::Error> {
            Ok(format!("token: {}", token.expose()))
        }
    }

    let dir = TempDir::new().unwrap();
    let keys = FileNodeKeys::new(dir.path().join("keys")).unwrap();
    let boot = KeyedBoot::new(Arc::new(TokenBoot), keys.clone());
    let n = node("n-again");
    let first = boot.user_data(&n, &Secret::new("first-key")).unwrap();
    let again = boot.user_data(&n, &Secret::new("second-key")).unwrap();
    assert_eq!(first, "token: first-key");
    assert_eq!(again, first, "the second create boots with the first key");
    assert_eq!(keys.get(&n.id).unwrap().unwrap().expose(), "first-key");
    let other = boot
        .user_data(&node("n-other"), &Secret::new("own-key"))
        .unwrap();
    assert_eq!(other, "token: own-key", "another node gets its own key");
}

/// Node keys in the store: a key the control plane kept opens with the credential
/// key; a node booted before (its key only in a file) is found in the files; another
/// credential key is refused, naming the setting.
#[tokio::test]
async fn node_keys_are_read_from_the_store_then_the_files() {
    use sam_agent::plane::{FileNodeKeys, NodeKeys, StoreNodeKeys};
    use sam_core::{CredentialCipher, KeyPurpose, KeyRecord, Store};

    let store: Arc<dyn Store> = Arc::new(sam_store::MemoryStore::new());
    let key = Secret::new("AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=");
    let cipher = CredentialCipher::new(&key).unwrap();
    let context = KeyRecord::context(KeyPurpose::Node, "n-new");
    store
        .put_key_if_absent(&KeyRecord {
            id: "n-new".into(),
            purpose: KeyPurpose::Node,
            sealed: cipher.seal(&Secret::new("boot-token"), &context).unwrap(),
            created_at: chrono::Utc::now(),
        })
        .await
        .unwrap();
    let dir = TempDir::new().unwrap();
    let files = FileNodeKeys::new(dir.path().join("keys")).unwrap();
    files
        .put(&node("n-old").id, &Secret::new("old-token"))
        .unwrap();
    let keys = StoreNodeKeys::new(Arc::clone(&store), cipher, Some(files));
    let read = |id: &'static str| {
        let keys = keys.clone();
        async move { keys.node_key(&node(id).id).await }
    };
    assert_eq!(read("n-new").await.unwrap().unwrap().expose(), "boot-token");
    assert_eq!(read("n-old").await.unwrap().unwrap().expose(), "old-token");
    assert!(read("n-none").await.unwrap().is_none());
    let other = CredentialCipher::new(&Secret::new("AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI="))
        .unwrap();
    let wrong = StoreNodeKeys::new(store, other, None);
    let err = wrong.node_key(&node("n-new").id).await.unwrap_err();
    assert!(err.to_string().contains("the same credential_key"), "{err}");
}
