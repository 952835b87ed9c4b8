//! The peers of an end-to-end GitHub test, shared by sam-agent's and sam-examples':
//! a `wiremock` GitHub that knows one App installation and mints one token
//! ([`mock_github`]), and a bare `acme/widgets.git` served over HTTP by
//! `git http-backend` behind basic auth that accepts only `x-access-token` with that
//! token ([`GitHttp`]).

// Each test binary that includes this module uses a part of it.
#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde_json::json;
use tokio::io::AsyncWriteExt;
use wiremock::matchers::{body_partial_json, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

/// A mocked GitHub API: installation `installation` (of `acme`) exists and mints
/// `token` for `widgets` (valid for an hour); every other `GET` is GitHub's 404.
pub async fn mock_github(installation: u64, token: &str) -> MockServer {
    let github = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(format!("/app/installations/{installation}")))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "id": installation,
            "account": { "login": "acme", "type": "Organization" },
        })))
        .mount(&github)
        .await;
    Mock::given(method("POST"))
        .and(path(format!(
            "/app/installations/{installation}/access_tokens"
        )))
        .and(body_partial_json(json!({ "repositories": ["widgets"] })))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({
            "token": token,
            "expires_at": (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339(),
        })))
        .mount(&github)
        .await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(404).set_body_json(json!({
            "message": "Not Found",
            "documentation_url": "https://docs.github.com/rest/apps/apps#get-an-installation-for-the-authenticated-app",
            "status": "404",
        })))
        .mount(&github)
        .await;
    github
}

/// Runs git in `dir` with a fixed identity; panics with its stderr on failure.
pub fn git(dir: &Path, args: &[&str]) -> String {
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
    /// The only password let in.
    token: String,
    /// Every password a request carried.
    seen: Arc<Mutex<Vec<String>>>,
}

/// `git http-backend` behind basic auth: only `x-access-token` with the server's
/// token gets in; anything else is asked to authenticate.
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
    if credentials.as_deref() != Some(&format!("x-access-token:{}", server.token)) {
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

/// Serves `router` on a loopback port; returns its base URL.
pub async fn serve(router: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    url
}

/// A served bare `acme/widgets.git` with one commit on `main`.
pub struct GitHttp {
    /// The directory holding `acme/widgets.git`.
    pub root: tempfile::TempDir,
    /// Every password a request carried.
    pub seen: Arc<Mutex<Vec<String>>>,
    /// The repository's URL.
    pub repo_url: String,
}

impl GitHttp {
    /// Creates the repository and serves it, letting in only `token`.
    pub async fn start(token: &str) -> Self {
        let root = tempfile::tempdir().unwrap();
        let bare = root.path().join("acme/widgets.git");
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
        let seen = Arc::new(Mutex::new(Vec::new()));
        let url = serve(axum::Router::new().fallback(git_cgi).with_state(GitServer {
            root: root.path().to_owned(),
            token: token.to_owned(),
            seen: Arc::clone(&seen),
        }))
        .await;
        Self {
            root,
            seen,
            repo_url: format!("{url}/acme/widgets.git"),
        }
    }

    /// The bare repository.
    pub fn bare(&self) -> PathBuf {
        self.root.path().join("acme/widgets.git")
    }
}
