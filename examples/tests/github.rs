//! GitHub App installations over `sam-server`'s API, end to end: a real server
//! process whose GitHub App talks to a `wiremock` GitHub, users linking an
//! installation over HTTP, and a task against a bare repository served by
//! `git http-backend` (accepting only the token the mocked GitHub minted) that a
//! real local node clones and pushes through the git credential helper.

use std::path::Path;

use serde_json::{Value, json};

mod common;
use common::StopNodes;
use common::server::{ServerProcess, TOKEN, call, read_events};

#[path = "../../sam-agent/tests/support/github_peers.rs"]
mod github_peers;
use github_peers::{GitHttp, git, mock_github};

const INSTALLATION: u64 = 4242;
const MINTED: &str = "ghs_minted_by_the_mock_github_for_the_server";
const PROMPT: &str = "say hello";

/// Sends `method path` with `body` to `server` with the test token.
async fn send(
    server: &ServerProcess,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let method_is_delete = method == reqwest::Method::DELETE;
    let mut request = reqwest::Client::new()
        .request(method, server.url(path))
        .bearer_auth(TOKEN);
    if let Some(body) = body {
        request = request.json(&body);
    }
    if method_is_delete {
        // A delete answers 204 without a body, or an error with one.
        let response = request.send().await.expect("reachable");
        let status = response.status().as_u16();
        let text = response.text().await.expect("a body");
        return (status, serde_json::from_str(&text).unwrap_or(Value::Null));
    }
    call(request).await
}

async fn create_user(server: &ServerProcess, name: &str) -> String {
    let (status, user) = send(
        server,
        reqwest::Method::POST,
        "/v1/users",
        Some(json!({ "name": name })),
    )
    .await;
    assert_eq!(status, 201, "{user}");
    user["id"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn users_link_an_installation_over_the_api_and_a_task_pushes_through_it() {
    use reqwest::Method;
    let github = mock_github(INSTALLATION, MINTED).await;
    let repository = GitHttp::start(MINTED).await;
    let key = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../sam-providers/tests/data/test-github-app.pem")
        .display()
        .to_string();
    let data = tempfile::tempdir().unwrap();
    let _nodes = StopNodes(data.path().to_owned());
    let server = ServerProcess::start_with(
        data.path(),
        &[],
        &[
            ("GITHUB_APP_ID", "7"),
            ("GITHUB_APP_PRIVATE_KEY_FILE", &key),
            ("GITHUB_API_URL", &github.uri()),
        ],
    )
    .await;
    let alice = create_user(&server, "Alice").await;
    let bob = create_user(&server, "Bob").await;
    let links = |user: &str| format!("/v1/users/{user}/github/installations");

    // Alice links the installation; GitHub confirmed it, the answer names it by
    // GitHub's id only.
    let (status, link) = send(
        &server,
        Method::POST,
        &links(&alice),
        Some(json!({ "installation": INSTALLATION })),
    )
    .await;
    assert_eq!(status, 201, "{link}");
    assert_eq!(link["installation"], INSTALLATION);
    assert_eq!(link["account"], "acme");
    assert!(
        !link.to_string().contains(&format!("{alice}:")),
        "no storage key in the answer: {link}"
    );

    // Bob, of the same organisation, has not linked it: his task cannot use
    // Alice's link.
    let task = |user: &str| {
        json!({
            "repo": repository.repo_url,
            "prompt": PROMPT,
            "agent": "demo",
            "user": user,
            "github": { "installation": INSTALLATION },
        })
    };
    let (status, error) = send(&server, Method::POST, "/v1/tasks", Some(task(&bob))).await;
    assert_eq!(status, 404, "{error}");
    assert_eq!(error["category"], "not_found");
    assert!(
        error["error"]
            .as_str()
            .unwrap()
            .contains(&format!("installation {INSTALLATION}")),
        "{error}"
    );
    let (status, error) = send(
        &server,
        Method::POST,
        "/v1/tasks",
        Some(json!({ "repo": repository.repo_url, "prompt": PROMPT, "github": { "installation": INSTALLATION } })),
    )
    .await;
    assert_eq!(status, 400, "{error}");
    assert_eq!(error["field"], "user");

    // Bob links it too: both list it.
    let (status, _) = send(
        &server,
        Method::POST,
        &links(&bob),
        Some(json!({ "installation": INSTALLATION })),
    )
    .await;
    assert_eq!(status, 201);
    for user in [&alice, &bob] {
        let (status, listed) = send(&server, Method::GET, &links(user), None).await;
        assert_eq!(status, 200, "{listed}");
        let ids: Vec<&Value> = listed
            .as_array()
            .unwrap()
            .iter()
            .map(|l| &l["installation"])
            .collect();
        assert_eq!(ids, [&json!(INSTALLATION)], "{user}: {listed}");
    }
    let (_, setup) = send(
        &server,
        Method::GET,
        &format!("/v1/users/{bob}/setup"),
        None,
    )
    .await;
    assert_eq!(setup["repository_access"]["configured"], true, "{setup}");
    assert_eq!(
        setup["repository_access"]["how"],
        json!([format!("GitHub App installation {INSTALLATION}")])
    );

    // An installation the App does not have is a typed not-found, and links nothing.
    let (status, error) = send(
        &server,
        Method::POST,
        &links(&alice),
        Some(json!({ "installation": 999 })),
    )
    .await;
    assert_eq!(status, 404, "{error}");
    assert_eq!(error["category"], "not_found");
    assert!(error["error"].as_str().unwrap().contains("999"), "{error}");
    for body in [
        json!({ "installation": 0 }),
        json!({ "installation": "x" }),
        json!({}),
    ] {
        let (status, error) = send(&server, Method::POST, &links(&alice), Some(body)).await;
        assert_eq!(status, 400, "{error}");
        assert_eq!(error["category"], "invalid_config", "{error}");
        assert!(
            error["field"] == "installation"
                || error["error"]
                    .as_str()
                    .unwrap()
                    .contains("missing field `installation`"),
            "{error}"
        );
    }
    let (status, _) = send(
        &server,
        Method::POST,
        &links("u-nobody"),
        Some(json!({ "installation": INSTALLATION })),
    )
    .await;
    assert_eq!(status, 404);

    // Alice's task clones and pushes its branch with the minted token.
    let (status, accepted) = send(&server, Method::POST, "/v1/tasks", Some(task(&alice))).await;
    assert_eq!(status, 202, "{accepted}");
    let id = accepted["id"].as_str().unwrap().to_owned();
    read_events(
        &reqwest::Client::new(),
        &server.url(&format!("/v1/tasks/{id}/events")),
    )
    .await;
    let (_, view) = send(&server, Method::GET, &format!("/v1/tasks/{id}"), None).await;
    assert_eq!(view["status"], "completed", "{view}");
    let branch = sam_core::output_branch(PROMPT, &sam_core::TaskId::new(&id).unwrap());
    let pushed = git(
        &repository.bare(),
        &["rev-parse", &format!("refs/heads/{branch}")],
    );
    assert_eq!(pushed.len(), 40, "the output branch was pushed: {pushed}");
    let seen = repository.seen.lock().unwrap().clone();
    assert!(
        !seen.is_empty() && seen.iter().all(|p| p == MINTED),
        "git authenticated with the minted token only: {seen:?}"
    );

    // Bob unlinks: his list is empty, Alice's link stays.
    let (status, _) = send(
        &server,
        Method::DELETE,
        &format!("{}/{INSTALLATION}", links(&bob)),
        None,
    )
    .await;
    assert_eq!(status, 204);
    let (_, listed) = send(&server, Method::GET, &links(&bob), None).await;
    assert_eq!(listed, json!([]));
    let (_, listed) = send(&server, Method::GET, &links(&alice), None).await;
    assert_eq!(listed.as_array().unwrap().len(), 1);
    let (status, error) = send(
        &server,
        Method::DELETE,
        &format!("{}/not-a-number", links(&bob)),
        None,
    )
    .await;
    assert_eq!(status, 400, "{error}");
    assert_eq!(error["field"], "installation");
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_github_app_linking_is_refused_clearly() {
    let data = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(data.path()).await;
    let alice = create_user(&server, "Alice").await;
    let (status, error) = send(
        &server,
        reqwest::Method::POST,
        &format!("/v1/users/{alice}/github/installations"),
        Some(json!({ "installation": INSTALLATION })),
    )
    .await;
    assert_eq!(status, 400, "{error}");
    assert_eq!(error["category"], "invalid_config");
    assert!(
        error["error"].as_str().unwrap().contains("no GitHub App"),
        "{error}"
    );
}
