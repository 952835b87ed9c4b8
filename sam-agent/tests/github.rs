//! A task against a repository behind a (mocked) GitHub App, end to end: the control
//! plane's git routes over a real `ControlPlane`, the GitHub App client against a
//! `wiremock` GitHub, a bare repository served over HTTP by `git http-backend` that
//! accepts only the token the mocked GitHub minted, and a real `VmAgent` whose git
//! asks for credentials through the `sam-git-credential` helper.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use sam_agent::vm::git::GitConfig;
use sam_agent::{HostRuntime, callback_router, git_router};
use sam_core::testkit::fixtures::{node, reservation, user, workspace};
use sam_core::{
    Classify, ControlPlane, ErrorCategory, ExternalInstallationId, GithubAccess,
    GithubInstallation, InstallationKey, NodeId, PullRequestMode, RepositoryHost, Secret, Store,
    SubmitRequest, TaskRecord, UserId, WorkspaceId, output_branch,
};
use sam_providers::{GithubApp, GithubAppConfig};
use serde_json::{Value, json};
use wiremock::matchers::{body_partial_json, header as has_header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

#[path = "support/github_peers.rs"]
mod github_peers;
use github_peers::{GitHttp, git, mock_github, serve};
#[path = "support/vm_node.rs"]
mod vm_node;
use vm_node::{VmNode, completed, control_plane};

const INSTALLATION: u64 = 4242;
const MINTED: &str = "ghs_minted_by_the_mock_github";
const NODE: &str = "node-1";
const PROMPT: &str = "Add agent notes to the repository";

struct World {
    store: Arc<dyn Store>,
    cp: ControlPlane,
    app: Arc<GithubApp>,
    control_plane_url: String,
    github: MockServer,
    git: GitHttp,
    repo_url: String,
}

/// A bare `acme/widgets.git` served over HTTP, a mocked GitHub, and a control plane
/// with the git routes.
async fn world() -> World {
    let git = GitHttp::start(MINTED).await;
    let github = mock_github(INSTALLATION, MINTED).await;
    let key = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../sam-providers/tests/data/test-github-app.pem"),
    )
    .unwrap();
    let mut app = GithubAppConfig::new(7, Secret::new(key));
    app.api_url = github.uri();
    let app = Arc::new(GithubApp::new(app).unwrap());

    let (store, cp) = control_plane();
    let router = callback_router(cp.clone()).merge(git_router(
        cp.clone(),
        Arc::clone(&app) as Arc<dyn RepositoryHost>,
    ));
    let control_plane_url = serve(router).await;
    World {
        store,
        cp,
        app,
        control_plane_url,
        github,
        repo_url: git.repo_url.clone(),
        git,
    }
}

impl World {
    /// Links the installation for `user` (through the GitHub App), submits a task
    /// as `user` against the repository and records its workspace `ws` on a node.
    async fn task(&self, user: &str, ws: &str, pull_request: PullRequestMode) -> TaskRecord {
        let link = self.link(user).await.unwrap();
        let id = self
            .cp
            .submit(&self.request(user, link.key(), pull_request))
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

    /// Creates `user` if needed and links them to the installation.
    async fn link(&self, name: &str) -> Result<GithubInstallation, sam_core::Error> {
        let id = UserId::new(name).unwrap();
        if self.store.get_user(&id).await.unwrap().is_none() {
            self.store.put_user(&user(name, 0)).await.unwrap();
        }
        self.cp
            .accounts()
            .link_github_installation(
                self.app.as_ref(),
                &id,
                ExternalInstallationId::new(INSTALLATION).unwrap(),
            )
            .await
    }

    /// A task submitted by `user` that uses the link `key`.
    fn request(
        &self,
        user: &str,
        key: InstallationKey,
        pull_request: PullRequestMode,
    ) -> SubmitRequest {
        SubmitRequest {
            repo: self.repo_url.clone(),
            prompt: PROMPT.to_owned(),
            github: Some(GithubAccess {
                installation: key,
                pull_request,
            }),
            user: Some(UserId::new(user).unwrap()),
            ..SubmitRequest::default()
        }
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
    let workspaces = tempfile::tempdir().unwrap();
    let runtime = HostRuntime::new(workspaces.path()).with_git_config(
        GitConfig::default()
            .with_credential_helper(env!("CARGO_BIN_EXE_sam-git-credential"), vec![]),
    );
    let node = VmNode::start(NODE, &world.control_plane_url, runtime).await;
    let branch = output_branch(PROMPT, &task.id);
    node.create_workspace(json!({
        "id": "ws-1",
        "repo": world.repo_url,
        "token": workspace_token.expose(),
        "output_branch": branch,
        "github": "open",
    }))
    .await;
    let clone = workspaces.path().join("ws-1");
    assert_eq!(
        git(&clone, &["rev-parse", "--abbrev-ref", "HEAD"]),
        branch,
        "the clone works on the output branch"
    );
    node.start_session("ws-1", PROMPT).await;

    // The turn ends; the VM agent commits, pushes and reports the output.
    let finished = completed(world.store.as_ref(), &task.id).await;
    let output = finished.output.expect("the output is recorded on the task");
    assert_eq!(output.branch, branch);
    assert_eq!(
        output.pull_request_url.as_deref(),
        Some("https://github.com/acme/widgets/pull/1")
    );

    // The pushed branch is in the bare repository, with the agent's file.
    let bare = world.git.bare();
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
    let seen = world.git.seen.lock().unwrap().clone();
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

#[tokio::test]
async fn links_are_checked_with_github_and_never_shared_between_users() {
    let world = world().await;
    // Two users of one organisation each link the installation.
    let alice = world.link("alice").await.unwrap();
    let bob = world.link("bob").await.unwrap();
    assert_eq!(
        (alice.account.as_str(), bob.account.as_str()),
        ("acme", "acme")
    );
    assert_ne!(alice.key(), bob.key());
    for who in ["alice", "bob"] {
        let links = world
            .cp
            .accounts()
            .list_github_installations(&UserId::new(who).unwrap())
            .await
            .unwrap();
        assert_eq!(
            links
                .iter()
                .map(|l| l.external_id.get())
                .collect::<Vec<_>>(),
            [INSTALLATION],
            "{who} sees the installation"
        );
    }
    let status = world
        .cp
        .accounts()
        .setup_status(&UserId::new("alice").unwrap(), None)
        .await
        .unwrap();
    assert_eq!(
        status.repository_access.how,
        [format!("GitHub App installation {INSTALLATION}")]
    );

    // Linking again keeps when the link was made.
    let again = world.link("alice").await.unwrap();
    assert_eq!(again.created_at, alice.created_at);

    // Bob cannot submit a task that uses Alice's link, nor does a task without a
    // user get one.
    let mut anonymous = world.request("alice", alice.key(), PullRequestMode::BranchOnly);
    anonymous.user = None;
    for request in [
        world.request("bob", alice.key(), PullRequestMode::BranchOnly),
        anonymous,
    ] {
        let error = world.cp.submit(&request).await.unwrap_err();
        assert_eq!(error.category(), ErrorCategory::InvalidConfig, "{error}");
        assert!(
            matches!(
                error,
                sam_core::Error::InvalidInput {
                    field: "github",
                    ..
                }
            ),
            "{error}"
        );
    }

    // Once Bob unlinks, his tasks cannot use the installation; Alice's link stays.
    world
        .cp
        .accounts()
        .unlink_github_installation(&bob.user_id, bob.external_id)
        .await
        .unwrap();
    let error = world
        .cp
        .submit(&world.request("bob", bob.key(), PullRequestMode::BranchOnly))
        .await
        .unwrap_err();
    assert_eq!(error.category(), ErrorCategory::NotFound, "{error}");
    world
        .cp
        .submit(&world.request("alice", alice.key(), PullRequestMode::BranchOnly))
        .await
        .unwrap();

    // An installation the App does not have is a typed not-found, and no link is made.
    let error = world
        .cp
        .accounts()
        .link_github_installation(
            world.app.as_ref(),
            &alice.user_id,
            ExternalInstallationId::new(999).unwrap(),
        )
        .await
        .unwrap_err();
    assert_eq!(error.category(), ErrorCategory::NotFound, "{error}");
    assert!(matches!(error, sam_core::Error::Github(_)), "{error}");
    assert!(error.to_string().contains("no installation 999"), "{error}");
    let links = world
        .cp
        .accounts()
        .list_github_installations(&alice.user_id)
        .await
        .unwrap();
    assert_eq!(links.len(), 1);
    // An unknown user cannot link anything.
    let error = world
        .cp
        .accounts()
        .link_github_installation(
            world.app.as_ref(),
            &UserId::new("nobody").unwrap(),
            ExternalInstallationId::new(INSTALLATION).unwrap(),
        )
        .await
        .unwrap_err();
    assert_eq!(error.category(), ErrorCategory::NotFound, "{error}");
}
