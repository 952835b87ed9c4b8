//! A task against a repository behind a (mocked) GitHub App, end to end: the control
//! plane's git routes over a real `ControlPlane`, the GitHub App client against a
//! `wiremock` GitHub, a bare repository served over HTTP by `git http-backend` that
//! accepts only the token the mocked GitHub minted, and a real `VmAgent` whose git
//! asks for credentials through the `sam-git-credential` helper.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use chrono::Utc;
use sam_agent::api::management_signer;
use sam_agent::fake::FakeAgentScript;
use sam_agent::git::GitConfig;
use sam_agent::{AgentCommand, HostRuntime, VmAgent, VmAgentConfig, callback_router, git_router};
use sam_core::testkit::fixtures::{github_installation, node, reservation, workspace};
use sam_core::testkit::node_agent::{FakeNodeAgent, PlainBoot};
use sam_core::{
    ControlPlane, ControlPlaneConfig, ControlPlaneParts, DefaultScheduler, GithubAccess, NodeId,
    Provider, ProviderKind, PullRequestMode, RetryOn, RetryPolicy, Secret, Store, SubmitRequest,
    TaskRecord, TaskStatus, TokenScope, TokenSigner, TokioClock, WorkspaceId, output_branch,
};
use sam_providers::{FakeProvider, GithubApp, GithubAppConfig};
use sam_store::MemoryStore;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use wiremock::matchers::{body_partial_json, header as has_header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const INSTALLATION: u64 = 4242;
const MINTED: &str = "ghs_minted_by_the_mock_github";
const NODE: &str = "node-1";
const PROMPT: &str = "Add agent notes to the repository";

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args([
            "-c",
            "user.name=test",
            "-c",
            "user.email=test@example.invalid",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// What the git server saw and allows.
#[derive(Clone)]
struct GitServer {
    root: PathBuf,
    /// Every password a request carried.
    seen: Arc<Mutex<Vec<String>>>,
}

/// `git http-backend` behind basic auth: only `x-access-token` with the token the
/// mocked GitHub minted gets in; anything else is asked to authenticate.
async fn git_cgi(
    State(server): State<GitServer>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let credentials = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|v| base64::engine::general_purpose::STANDARD.decode(v).ok())
        .map(|v| String::from_utf8_lossy(&v).into_owned());
    if let Some(pair) = &credentials {
        let password = pair.split_once(':').map_or("", |(_, p)| p).to_owned();
        server.seen.lock().unwrap().push(password);
    }
    if credentials.as_deref() != Some(&format!("x-access-token:{MINTED}")) {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Basic realm=\"git\"")],
        )
            .into_response();
    }
    let mut command = tokio::process::Command::new("git");
    command
        .arg("http-backend")
        .env("GIT_PROJECT_ROOT", &server.root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("PATH_INFO", uri.path())
        .env("QUERY_STRING", uri.query().unwrap_or(""))
        .env("REQUEST_METHOD", method.as_str())
        .env("REMOTE_USER", "x-access-token")
        .env("REMOTE_ADDR", "127.0.0.1")
        .env("CONTENT_LENGTH", body.len().to_string())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    for (name, var) in [
        (header::CONTENT_TYPE.as_str(), "CONTENT_TYPE"),
        ("content-encoding", "HTTP_CONTENT_ENCODING"),
        ("git-protocol", "GIT_PROTOCOL"),
    ] {
        if let Some(value) = headers.get(name).and_then(|v| v.to_str().ok()) {
            command.env(var, value);
        }
    }
    let mut child = command.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(&body).await.unwrap();
    drop(stdin);
    let output = child.wait_with_output().await.unwrap();
    let raw = output.stdout;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, 4))
        .or_else(|| raw.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2)))
        .expect("CGI headers end with a blank line");
    let head = String::from_utf8_lossy(&raw[..split.0]).into_owned();
    let mut response = Response::builder();
    for line in head.lines() {
        let (name, value) = line.split_once(':').unwrap();
        let value = value.trim();
        if name.eq_ignore_ascii_case("status") {
            response = response.status(value[..3].parse::<u16>().unwrap());
        } else {
            response = response.header(name, value);
        }
    }
    response
        .body(axum::body::Body::from(raw[split.0 + split.1..].to_vec()))
        .unwrap()
}

async fn serve(router: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    url
}

struct World {
    store: Arc<dyn Store>,
    cp: ControlPlane,
    control_plane_url: String,
    github: MockServer,
    git_root: tempfile::TempDir,
    git_seen: Arc<Mutex<Vec<String>>>,
    repo_url: String,
}

/// A bare `acme/widgets.git` served over HTTP, a mocked GitHub, and a control plane
/// with the git routes.
async fn world() -> World {
    let git_root = tempfile::tempdir().unwrap();
    let bare = git_root.path().join("acme/widgets.git");
    std::fs::create_dir_all(&bare).unwrap();
    git(&bare, &["init", "--quiet", "--bare"]);
    let seed = tempfile::tempdir().unwrap();
    git(seed.path(), &["init", "--quiet"]);
    std::fs::write(seed.path().join("README.md"), "widgets\n").unwrap();
    git(seed.path(), &["add", "-A"]);
    git(seed.path(), &["commit", "--quiet", "-m", "init"]);
    git(
        seed.path(),
        &["push", "--quiet", bare.to_str().unwrap(), "main"],
    );
    let git_seen = Arc::new(Mutex::new(Vec::new()));
    let git_url = serve(axum::Router::new().fallback(git_cgi).with_state(GitServer {
        root: git_root.path().to_owned(),
        seen: Arc::clone(&git_seen),
    }))
    .await;

    let github = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(format!(
            "/app/installations/{INSTALLATION}/access_tokens"
        )))
        .and(body_partial_json(json!({ "repositories": ["widgets"] })))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({
            "token": MINTED,
            "expires_at": (Utc::now() + chrono::Duration::hours(1)).to_rfc3339(),
        })))
        .mount(&github)
        .await;
    let key = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../sam-providers/tests/data/test-github-app.pem"),
    )
    .unwrap();
    let mut app = GithubAppConfig::new(7, Secret::new(key));
    app.api_url = github.uri();
    let app = GithubApp::new(app).unwrap();

    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let provider: Arc<dyn Provider> = Arc::new(FakeProvider::new());
    let cp = ControlPlane::new(
        ControlPlaneParts {
            store: Arc::clone(&store),
            providers: vec![provider],
            scheduler: Arc::new(DefaultScheduler::new(Arc::clone(&store))),
            node_agent: Arc::new(FakeNodeAgent::new(
                sam_core::testkit::node_agent::FakeAgentScript::default(),
            )),
            boot: Arc::new(PlainBoot),
            signer: TokenSigner::new(Secret::new("s".repeat(32)), "sam-control-plane").unwrap(),
            clock: Arc::new(TokioClock::new()),
        },
        ControlPlaneConfig::new("test", ProviderKind::Fake),
    )
    .unwrap();
    let router = callback_router(cp.clone()).merge(git_router(cp.clone(), Arc::new(app)));
    let control_plane_url = serve(router).await;
    World {
        store,
        cp,
        control_plane_url,
        github,
        git_root,
        git_seen,
        repo_url: format!("{git_url}/acme/widgets.git"),
    }
}

impl World {
    /// Links the installation for `user`, submits a task against the repository
    /// and records its workspace `ws` on a node.
    async fn task(&self, user: &str, ws: &str, pull_request: PullRequestMode) -> TaskRecord {
        let link = github_installation(user, INSTALLATION, 0);
        self.store.put_github_installation(&link).await.unwrap();
        let id = self
            .cp
            .submit(&SubmitRequest {
                repo: self.repo_url.clone(),
                prompt: PROMPT.to_owned(),
                github: Some(GithubAccess {
                    installation: link.key(),
                    pull_request,
                }),
                ..SubmitRequest::default()
            })
            .await
            .unwrap();
        if self
            .store
            .get_node(&NodeId::new(NODE).unwrap())
            .await
            .unwrap()
            .is_none()
        {
            self.store.put_node(&node(NODE, 0)).await.unwrap();
        }
        let mut record = workspace(ws, NODE, reservation(100, 100, false, 8), 0);
        record.task_id = id.clone();
        self.store.reserve_workspace_slot(&record).await.unwrap();
        self.store.get_task(&id).await.unwrap().unwrap()
    }

    async fn credential(&self, ws: &str, token: &str, body: Value) -> (u16, Value) {
        let response = reqwest::Client::new()
            .post(format!(
                "{}/v1/workspaces/{ws}/git-credential",
                self.control_plane_url
            ))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }
}

fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        initial_delay: Duration::from_millis(5),
        max_delay: Duration::from_millis(20),
        max_attempts: 3,
        budget: Duration::from_secs(10),
        jitter: 0.0,
        per_attempt_timeout: Some(Duration::from_secs(10)),
        retry_on: RetryOn::Retryable,
    }
}

/// Every file under `dir` (the clone and its `.git`), as bytes.
fn files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let kind = entry.file_type().unwrap();
        if kind.is_dir() {
            out.extend(files(&entry.path()));
        } else if kind.is_file() {
            out.push((entry.path(), std::fs::read(entry.path()).unwrap()));
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_behind_a_github_app_clones_and_pushes_without_a_token_on_the_node() {
    let world = world().await;
    Mock::given(method("POST"))
        .and(path("/repos/acme/widgets/pulls"))
        .and(has_header(
            "authorization",
            format!("Bearer {MINTED}").as_str(),
        ))
        .and(body_partial_json(json!({ "base": "main" })))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({
            "number": 1,
            "html_url": "https://github.com/acme/widgets/pull/1",
        })))
        .expect(1)
        .mount(&world.github)
        .await;
    let task = world.task("alice", "ws-1", PullRequestMode::Open).await;
    let ws = WorkspaceId::new("ws-1").unwrap();
    let workspace_token = world.cp.issue_workspace_token(&ws);

    // The node: a real VM agent whose git asks the helper binary for credentials.
    let node_token = TokenSigner::new(Secret::new("s".repeat(32)), "sam-control-plane")
        .unwrap()
        .issue(
            TokenScope::Node,
            NODE,
            Utc::now(),
            Duration::from_secs(3600),
        );
    let mut config = VmAgentConfig::new(
        NodeId::new(NODE).unwrap(),
        node_token.clone(),
        format!("{}/", world.control_plane_url).parse().unwrap(),
    );
    config.boot_log = None;
    config.callback_retry = fast_retry();
    let script = FakeAgentScript {
        write_path: Some("AGENT_NOTES.md".to_owned()),
        ..FakeAgentScript::default()
    };
    config.agents.insert(
        "fake".to_owned(),
        script.to_env().into_iter().fold(
            AgentCommand::new(env!("CARGO_BIN_EXE_fake-acp-agent")),
            |c, (k, v)| c.with_env(k, Secret::new(v)),
        ),
    );
    let workspaces = tempfile::tempdir().unwrap();
    let runtime = HostRuntime::new(workspaces.path()).with_git_config(
        GitConfig::default()
            .with_credential_helper(env!("CARGO_BIN_EXE_sam-git-credential"), vec![]),
    );
    let agent = VmAgent::new(config, Arc::new(runtime)).await.unwrap();
    let agent_url = serve(agent.router()).await;
    let management = management_signer(&node_token).unwrap().issue(
        TokenScope::Node,
        NODE,
        Utc::now(),
        Duration::from_secs(600),
    );
    let http = reqwest::Client::new();
    let call = |method: reqwest::Method, path: &str, body: Option<Value>| {
        let mut request = http
            .request(method, format!("{agent_url}{path}"))
            .bearer_auth(management.expose());
        if let Some(body) = body {
            request = request.json(&body);
        }
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            (
                status,
                response.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    let branch = output_branch(PROMPT, &task.id);
    let (status, _) = call(
        reqwest::Method::POST,
        "/v1/workspaces",
        Some(json!({
            "id": "ws-1",
            "repo": world.repo_url,
            "token": workspace_token.expose(),
            "output_branch": branch,
            "github": "open",
        })),
    )
    .await;
    assert_eq!(status, 202);
    let mut ready = false;
    for _ in 0..400 {
        let (_, view) = call(reqwest::Method::GET, "/v1/workspaces/ws-1", None).await;
        match view["report"]["state"].as_str() {
            Some("ready") => {
                ready = true;
                break;
            }
            Some("failed") => panic!("the workspace failed: {view}"),
            _ => tokio::time::sleep(Duration::from_millis(25)).await,
        }
    }
    assert!(ready, "the workspace became ready");
    let clone = workspaces.path().join("ws-1");
    assert_eq!(
        git(&clone, &["rev-parse", "--abbrev-ref", "HEAD"]),
        branch,
        "the clone works on the output branch"
    );
    let (status, view) = call(
        reqwest::Method::POST,
        "/v1/workspaces/ws-1/sessions",
        Some(json!({ "agent": "fake", "prompt": PROMPT })),
    )
    .await;
    assert_eq!(status, 202, "{view}");

    // The turn ends; the VM agent commits, pushes and reports the output.
    let mut finished = None;
    for _ in 0..800 {
        let record = world.store.get_task(&task.id).await.unwrap().unwrap();
        if record.status.is_terminal() {
            finished = Some(record);
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let finished = finished.expect("the task finished");
    assert_eq!(
        finished.status,
        TaskStatus::Completed,
        "{:?}",
        finished.error
    );
    let output = finished.output.expect("the output is recorded on the task");
    assert_eq!(output.branch, branch);
    assert_eq!(
        output.pull_request_url.as_deref(),
        Some("https://github.com/acme/widgets/pull/1")
    );

    // The pushed branch is in the bare repository, with the agent's file.
    let bare = world.git_root.path().join("acme/widgets.git");
    let pushed = git(&bare, &["rev-parse", &format!("refs/heads/{branch}")]);
    assert_eq!(Some(pushed), output.commit);
    assert_eq!(
        git(&bare, &["show", &format!("{branch}:AGENT_NOTES.md")]),
        "written by the fake agent"
    );
    assert_eq!(
        git(&bare, &["log", "-1", "--format=%s", &branch]),
        format!("SAM: {PROMPT}")
    );

    // Git authenticated with the minted token only, and nothing kept it.
    let seen = world.git_seen.lock().unwrap().clone();
    assert!(
        !seen.is_empty() && seen.iter().all(|p| p == MINTED),
        "{seen:?}"
    );
    for (file, bytes) in files(&clone) {
        assert!(
            !contains(&bytes, MINTED),
            "{} holds the GitHub token",
            file.display()
        );
        assert!(
            !contains(&bytes, workspace_token.expose()),
            "{} holds the workspace token",
            file.display()
        );
    }
    assert_eq!(
        git(&clone, &["remote", "get-url", "origin"]),
        world.repo_url
    );
    let helpers = Command::new("git")
        .args(["config", "--get-all", "credential.helper"])
        .current_dir(&clone)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&helpers.stdout).trim().is_empty(),
        "no credential helper is configured in the clone"
    );
}

#[tokio::test]
async fn credentials_are_scoped_to_the_workspace_and_its_repository() {
    let world = world().await;
    let alice = world
        .task("alice", "ws-a", PullRequestMode::BranchOnly)
        .await;
    let bob = world.task("bob", "ws-b", PullRequestMode::BranchOnly).await;
    let token_a = world
        .cp
        .issue_workspace_token(&WorkspaceId::new("ws-a").unwrap());
    let host = world
        .repo_url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    let asked = |path: &str| json!({ "protocol": "http", "host": host, "path": path });

    let (status, body) = world
        .credential("ws-a", token_a.expose(), asked("acme/widgets.git"))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["username"], "x-access-token");
    assert_eq!(body["password"], MINTED);

    // Two users of one organisation each have their own link to the installation,
    // and both tasks reach GitHub with its external id.
    let found_a = world
        .cp
        .workspace_github(token_a.expose(), &WorkspaceId::new("ws-a").unwrap())
        .await
        .unwrap();
    let token_b = world
        .cp
        .issue_workspace_token(&WorkspaceId::new("ws-b").unwrap());
    let found_b = world
        .cp
        .workspace_github(token_b.expose(), &WorkspaceId::new("ws-b").unwrap())
        .await
        .unwrap();
    assert_ne!(found_a.installation.key(), found_b.installation.key());
    assert_eq!(found_a.installation.external_id.get(), INSTALLATION);
    assert_eq!(found_b.installation.external_id.get(), INSTALLATION);
    assert_eq!(
        (found_a.task.id, found_b.task.id),
        (alice.id.clone(), bob.id)
    );

    let cases = [
        ("ws-a", token_a.expose(), asked("acme/other.git"), 401),
        (
            "ws-a",
            token_a.expose(),
            json!({ "protocol": "http", "host": "github.com" }),
            401,
        ),
        (
            "ws-a",
            token_a.expose(),
            json!({ "protocol": "https", "host": host }),
            401,
        ),
        ("ws-a", token_b.expose(), asked("acme/widgets.git"), 401),
        ("ws-a", "garbage", asked("acme/widgets.git"), 401),
        ("ws-a", token_a.expose(), json!({ "host": host }), 400),
    ];
    for (ws, token, body, expected) in cases {
        let (status, answer) = world.credential(ws, token, body.clone()).await;
        assert_eq!(status, expected, "{body} → {answer}");
        assert!(!answer.to_string().contains(MINTED));
    }

    // A pull request only for a task that asked for one.
    let response = reqwest::Client::new()
        .post(format!(
            "{}/v1/workspaces/ws-a/pull-request",
            world.control_plane_url
        ))
        .bearer_auth(token_a.expose())
        .json(&json!({
            "title": "t",
            "head": output_branch(PROMPT, &alice.id),
            "base": "main",
            "body": "",
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);

    // A finished task gets no more credentials.
    world.cp.cancel(&alice.id, "user").await.unwrap();
    let (status, _) = world
        .credential("ws-a", token_a.expose(), asked("acme/widgets.git"))
        .await;
    assert_eq!(status, 400);
}
