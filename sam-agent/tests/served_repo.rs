//! A repository served by the control plane, end to end with real git on both
//! sides: the control plane's `…/v1/workspaces/{id}/repo` route runs git's own
//! `git http-backend` over a user's working copy, and a real `VmAgent` (told the
//! repository is served, as a QEMU node is) clones it through that route, lets a
//! scripted agent write a file, and pushes the output branch back. Git's client is
//! the real `git` too, so what is proved is what git itself accepts, not what the
//! test's own peer expects.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use sam_agent::{HostRuntime, callback_router, git_router};
use sam_core::testkit::fixtures::{node, reservation, task, workspace};
use sam_core::{
    ControlPlane, NodeId, ProviderKind, Secret, Store, TaskRecord, WorkspaceId, output_branch,
};
use serde_json::{Value, json};

#[path = "support/github_peers.rs"]
mod github_peers;
use github_peers::{git, serve};
#[path = "support/vm_node.rs"]
mod vm_node;
use vm_node::{VmNode, completed, control_plane};

const NODE: &str = "node-1";
const PROMPT: &str = "Add agent notes to the repository";

struct World {
    store: Arc<dyn Store>,
    cp: ControlPlane,
    url: String,
    /// The user's working copy, `main` checked out.
    repo: tempfile::TempDir,
}

/// A user's working copy with one commit on `main`, and a control plane serving
/// its git routes.
async fn world() -> World {
    let repo = tempfile::tempdir().unwrap();
    git(repo.path(), &["init", "--quiet"]);
    std::fs::write(repo.path().join("README.md"), "hello\n").unwrap();
    git(repo.path(), &["add", "README.md"]);
    git(repo.path(), &["commit", "--quiet", "-m", "first"]);
    let (store, cp) = control_plane();
    // A GitHub App no request reaches: these tasks are not behind one.
    let key = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../sam-providers/tests/data/test-github-app.pem"),
    )
    .unwrap();
    let github: Arc<dyn sam_core::RepositoryHost> = Arc::new(
        sam_providers::GithubApp::new(sam_providers::GithubAppConfig::new(7, Secret::new(key)))
            .unwrap(),
    );
    let router = callback_router(cp.clone()).merge(git_router(cp.clone(), github));
    let url = serve(router).await;
    World {
        store,
        cp,
        url,
        repo,
    }
}

impl World {
    /// A live task on `repo` with its workspace `ws` on the node.
    async fn task(&self, id: &str, ws: &str, repo: &str) -> TaskRecord {
        let mut record = task(id, 0);
        record.spec.repo = repo.to_owned();
        record.spec.prompt = PROMPT.to_owned();
        record.provider = ProviderKind::Qemu;
        self.store.create_task(&record).await.unwrap();
        let node_id = NodeId::new(NODE).unwrap();
        if self.store.get_node(&node_id).await.unwrap().is_none() {
            self.store.put_node(&node(NODE, 0)).await.unwrap();
        }
        let mut slot = workspace(ws, NODE, reservation(100, 100, false, 8), 0);
        slot.task_id = record.id.clone();
        self.store.reserve_workspace_slot(&slot).await.unwrap();
        record
    }

    fn repo_path(&self) -> String {
        self.repo.path().display().to_string()
    }

    fn route(&self, ws: &str) -> String {
        format!("{}/v1/workspaces/{ws}/repo", self.url)
    }

    /// `git <args>` in `dir` against the route with `token` as its bearer header
    /// (from the environment, as the VM agent sends it); the exit status and stderr.
    fn git_with_token(&self, dir: &Path, token: &str, args: &[&str]) -> (bool, String) {
        let out = Command::new("git")
            .args(["-c", "user.name=t", "-c", "user.email=t@example.invalid"])
            .args(args)
            .current_dir(dir)
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_CONFIG_COUNT", "1")
            .env("GIT_CONFIG_KEY_0", "http.extraHeader")
            .env(
                "GIT_CONFIG_VALUE_0",
                format!("Authorization: Bearer {token}"),
            )
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

/// Whether any file under `dir` holds `needle`.
fn any_file_holds(dir: &Path, needle: &str) -> Option<std::path::PathBuf> {
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let kind = entry.file_type().unwrap();
        if kind.is_dir() {
            if let Some(found) = any_file_holds(&entry.path(), needle) {
                return Some(found);
            }
        } else if kind.is_file() {
            let bytes = std::fs::read(entry.path()).unwrap();
            if bytes.windows(needle.len()).any(|w| w == needle.as_bytes()) {
                return Some(entry.path());
            }
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vm_agent_clones_a_served_repository_and_pushes_its_branch_back() {
    let world = world().await;
    let task = world.task("t-1", "ws-1", &world.repo_path()).await;
    let ws = WorkspaceId::new("ws-1").unwrap();
    let workspace_token = world.cp.issue_workspace_token(&ws);

    let workspaces = tempfile::tempdir().unwrap();
    let node = VmNode::start(NODE, &world.url, HostRuntime::new(workspaces.path())).await;
    let branch = output_branch(PROMPT, &task.id);
    node.create_workspace(json!({
        "id": "ws-1",
        "repo": world.repo_path(),
        "repo_served": true,
        "token": workspace_token.expose(),
        "output_branch": branch,
    }))
    .await;
    let clone = workspaces.path().join("ws-1");
    assert_eq!(
        git(&clone, &["remote", "get-url", "origin"]),
        world.route("ws-1"),
        "the clone's remote is the control plane's route, not the path it cannot read"
    );
    assert_eq!(git(&clone, &["show", "HEAD:README.md"]), "hello");
    node.start_session("ws-1", PROMPT).await;

    let finished = completed(world.store.as_ref(), &task.id).await;
    let output = finished.output.expect("the output is recorded on the task");

    // The branch landed in the user's working copy, which is otherwise untouched.
    let repo = world.repo.path();
    let pushed = git(repo, &["rev-parse", &format!("refs/heads/{branch}")]);
    assert_eq!(Some(pushed), output.commit);
    assert_eq!(
        git(repo, &["show", &format!("{branch}:AGENT_NOTES.md")]),
        "written by the fake agent"
    );
    assert_eq!(git(repo, &["rev-parse", "--abbrev-ref", "HEAD"]), "main");
    assert_eq!(git(repo, &["status", "--porcelain"]), "");
    assert!(!repo.join("AGENT_NOTES.md").exists());
    // The token went in a header, from git's environment: nothing on disk holds it.
    assert_eq!(
        any_file_holds(&clone, workspace_token.expose()),
        None,
        "a file of the clone holds the workspace token"
    );

    // Once the task has ended, its repository is no longer served.
    let scratch = tempfile::tempdir().unwrap();
    let (ok, stderr) = world.git_with_token(
        scratch.path(),
        workspace_token.expose(),
        &["ls-remote", &world.route("ws-1")],
    );
    assert!(!ok, "a finished task's repository is still served");
    assert!(stderr.contains("400"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_served_repository_answers_its_own_workspace_only_and_loses_no_commit() {
    let world = world().await;
    let task = world.task("t-1", "ws-1", &world.repo_path()).await;
    let branch = output_branch(PROMPT, &task.id);
    world
        .task("t-2", "ws-2", "https://example.invalid/acme/widgets.git")
        .await;
    let token = world
        .cp
        .issue_workspace_token(&WorkspaceId::new("ws-1").unwrap());
    let other = world
        .cp
        .issue_workspace_token(&WorkspaceId::new("ws-2").unwrap());
    let http = reqwest::Client::new();
    let get = |url: String, token: Option<&Secret>| {
        let mut request = http.get(url);
        if let Some(token) = token {
            request = request.bearer_auth(token.expose());
        }
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let kind = response
                .headers()
                .get("content-type")
                .map(|v| v.to_str().unwrap().to_owned());
            (status, kind, response.text().await.unwrap())
        }
    };
    let refs = |ws: &str| format!("{}/info/refs?service=git-upload-pack", world.route(ws));

    // Refusals are JSON, with the category a client acts on.
    for (url, token, status, category) in [
        (refs("ws-1"), None, 401, "auth_error"),
        (refs("ws-1"), Some(&other), 401, "auth_error"),
        (refs("ws-2"), Some(&other), 400, "invalid_config"),
        (
            format!("{}/objects/info/packs", world.route("ws-1")),
            Some(&token),
            404,
            "not_found",
        ),
        (
            format!("{}/info/refs", world.route("ws-1")),
            Some(&token),
            404,
            "not_found",
        ),
    ] {
        let (got, kind, body) = get(url.clone(), token).await;
        assert_eq!(got, status, "{url}: {body}");
        assert_eq!(kind.as_deref(), Some("application/json"), "{url}");
        let body: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["category"], category, "{url}: {body}");
    }
    let (status, kind, body) = get(refs("ws-1"), Some(&token)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        kind.as_deref(),
        Some("application/x-git-upload-pack-advertisement")
    );

    // Real git: a clone and a new branch pushed work; deleting or rewriting a branch
    // of the user's does not.
    let scratch = tempfile::tempdir().unwrap();
    let (ok, stderr) = world.git_with_token(
        scratch.path(),
        token.expose(),
        &["clone", "--quiet", &world.route("ws-1"), "clone"],
    );
    assert!(ok, "{stderr}");
    let clone = scratch.path().join("clone");
    let main = git(world.repo.path(), &["rev-parse", "main"]);
    git(&clone, &["checkout", "--quiet", "-b", &branch]);
    std::fs::write(clone.join("new.txt"), "new\n").unwrap();
    git(&clone, &["add", "new.txt"]);
    git(&clone, &["commit", "--quiet", "-m", "new"]);
    let (ok, stderr) = world.git_with_token(
        &clone,
        token.expose(),
        &["push", "--quiet", "origin", &branch],
    );
    assert!(ok, "{stderr}");
    let pushed = git(&clone, &["rev-parse", "HEAD"]);
    assert_eq!(git(world.repo.path(), &["rev-parse", &branch]), pushed);
    // Only the task's output branch: another one is refused before git runs.
    let (ok, stderr) = world.git_with_token(
        &clone,
        token.expose(),
        &["push", "--quiet", "origin", "HEAD:refs/heads/elsewhere"],
    );
    assert!(!ok, "a branch other than the output branch was pushed");
    assert!(stderr.contains("403"), "{stderr}");
    assert_eq!(
        git(world.repo.path(), &["branch", "--list", "elsewhere"]),
        "",
        "nothing landed"
    );
    let (ok, stderr) = world.git_with_token(
        &clone,
        token.expose(),
        &["push", "--quiet", "origin", &format!(":{branch}")],
    );
    assert!(!ok, "a branch was deleted through the route");
    assert!(stderr.contains("deletion prohibited"), "{stderr}");
    git(&clone, &["checkout", "--quiet", "--orphan", "rewrite"]);
    git(&clone, &["commit", "--quiet", "-m", "unrelated"]);
    let (ok, stderr) = world.git_with_token(
        &clone,
        token.expose(),
        &[
            "push",
            "--quiet",
            "--force",
            "origin",
            &format!("rewrite:{branch}"),
        ],
    );
    assert!(!ok, "a branch was rewritten through the route");
    assert!(stderr.contains("non-fast-forward"), "{stderr}");
    assert_eq!(git(world.repo.path(), &["rev-parse", "main"]), main);
    assert_eq!(
        git(world.repo.path(), &["rev-parse", &branch]),
        pushed,
        "the pushed branch is as it was pushed"
    );
}
