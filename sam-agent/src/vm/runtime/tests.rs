use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use sam_core::Secret;

use super::*;

fn git(dir: &Path, args: &[&str]) {
    let status = Command::new("git")
        .args([
            "-c",
            "user.name=sam",
            "-c",
            "user.email=sam@example.invalid",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&status.stderr)
    );
}

/// A repository with `files` committed on `main`, and `feature.txt` on branch `feature`.
fn repo(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    git(dir.path(), &["init", "--quiet"]);
    std::fs::write(dir.path().join("README.md"), "hello\n").unwrap();
    for (path, text) in files {
        let path = dir.path().join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    git(dir.path(), &["add", "-A"]);
    git(dir.path(), &["commit", "--quiet", "-m", "init"]);
    git(dir.path(), &["checkout", "--quiet", "-b", "feature"]);
    std::fs::write(dir.path().join("feature.txt"), "on a branch\n").unwrap();
    git(dir.path(), &["add", "-A"]);
    git(dir.path(), &["commit", "--quiet", "-m", "feature"]);
    git(dir.path(), &["checkout", "--quiet", "main"]);
    dir
}

/// Fake `docker` and `devcontainer` executables that append their arguments to a log.
struct FakeTools {
    dir: tempfile::TempDir,
}

impl FakeTools {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("calls.log");
        let script = |name: &str, body: &str| {
            let path = dir.path().join(name);
            let text = format!(
                "#!/bin/sh\necho \"{name} $*\" >> '{}'\n{body}\n",
                log.display()
            );
            std::fs::write(&path, text).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        };
        script("docker", "echo c0ffee");
        script(
            "devcontainer",
            r#"echo '[1 ms] Start: Run: docker build'
echo '{"outcome":"success","containerId":"dc1234","remoteUser":"vscode","remoteWorkspaceFolder":"/workspaces/repo"}'"#,
        );
        Self { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    fn calls(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join("calls.log"))
            .unwrap_or_default()
            .lines()
            .map(ToOwned::to_owned)
            .collect()
    }
}

fn request(repo: &Path, profile: ProfileRequest, devcontainer: Option<&str>) -> WorkspaceRequest {
    WorkspaceRequest {
        id: WorkspaceId::new("ws1").unwrap(),
        repo: repo.display().to_string(),
        branch: None,
        profile,
        devcontainer: devcontainer.map(ToOwned::to_owned),
        output_branch: None,
        credentials: None,
    }
}

const IMAGE_CONFIG: &str = r#"{ "image": "mcr.microsoft.com/devcontainers/base", // JSONC
}"#;

#[tokio::test]
async fn host_runtime_clones_and_runs_on_the_host() {
    let source = repo(&[]);
    let root = tempfile::tempdir().unwrap();
    let runtime = HostRuntime::new(root.path());
    let mut req = request(source.path(), ProfileRequest::Auto, None);
    req.branch = Some("feature".to_owned());
    let ws = runtime.prepare(&req).await.unwrap();
    assert_eq!(ws.dir, root.path().join("ws1"));
    assert!(
        ws.dir.join("feature.txt").is_file(),
        "the branch is checked out"
    );
    assert_eq!(ws.report.profile, EffectiveProfile::Host);
    assert_eq!(ws.report.status, ReadyStatus::Running);
    assert_eq!(ws.report.message, None);
    let agent = runtime.agent_command(&ws, &AgentCommand::new("claude-agent-acp"));
    assert_eq!(agent.program(), "claude-agent-acp");

    // The same workspace twice is refused, not overwritten.
    assert!(matches!(
        runtime.prepare(&req).await,
        Err(Error::InvalidRequest(_))
    ));
}

/// A local repository is cloned through git's transport, not by copying its object
/// files: a push landing in the source meanwhile (its quarantine directory, here one
/// whose entry cannot be copied) does not break the clone.
#[tokio::test]
async fn a_local_clone_does_not_copy_the_sources_object_files() {
    let source = repo(&[]);
    let quarantine = source
        .path()
        .join(".git/objects/tmp_objdir-incoming-test/62");
    std::fs::create_dir_all(&quarantine).unwrap();
    std::os::unix::fs::symlink("/nonexistent", quarantine.join("de20")).unwrap();
    let root = tempfile::tempdir().unwrap();
    let runtime = HostRuntime::new(root.path());
    let ws = runtime
        .prepare(&request(source.path(), ProfileRequest::Auto, None))
        .await
        .unwrap();
    assert!(ws.dir.join("README.md").is_file());
    assert!(
        !ws.dir
            .join(".git/objects/tmp_objdir-incoming-test")
            .exists(),
        "the source's quarantine is not copied"
    );
}

/// The embedded default: a local path is cloned, the output branch created, the
/// agent's change committed and the branch pushed back into the source repository.
#[tokio::test]
async fn a_local_clone_works_on_its_output_branch_and_pushes_it() {
    let source = repo(&[]);
    let root = tempfile::tempdir().unwrap();
    let runtime = HostRuntime::new(root.path());
    let mut req = request(source.path(), ProfileRequest::Auto, None);
    req.output_branch = Some("sam/fix-the-readme-abc123".to_owned());
    let ws = runtime.prepare(&req).await.unwrap();
    assert_eq!(ws.base_branch.as_deref(), Some("main"));
    let git = runtime.git();
    assert_eq!(
        git.current_branch(&ws.dir).await.unwrap().as_deref(),
        Some("sam/fix-the-readme-abc123")
    );
    assert!(
        !git.commit_all(&ws.dir, "SAM: nothing").await.unwrap(),
        "nothing changed yet"
    );
    std::fs::write(ws.dir.join("README.md"), "fixed\n").unwrap();
    std::fs::write(ws.dir.join("NEW.md"), "new\n").unwrap();
    assert!(
        git.commit_all(&ws.dir, "SAM: fix the readme")
            .await
            .unwrap()
    );
    let head = git.head(&ws.dir).await.unwrap();
    git.push(&ws.dir, "sam/fix-the-readme-abc123", None)
        .await
        .unwrap();
    let pushed = std::process::Command::new("git")
        .args(["rev-parse", "refs/heads/sam/fix-the-readme-abc123"])
        .current_dir(source.path())
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&pushed.stdout).trim(), head);
    let shown = std::process::Command::new("git")
        .args(["show", "sam/fix-the-readme-abc123:NEW.md"])
        .current_dir(source.path())
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&shown.stdout), "new\n");
    assert!(
        git.create_branch(&ws.dir, "sam/fix-the-readme-abc123")
            .await
            .is_err(),
        "an existing branch is not silently reused"
    );
}

#[tokio::test]
async fn host_runtime_says_a_devcontainer_is_not_used() {
    let source = repo(&[(".devcontainer/devcontainer.json", IMAGE_CONFIG)]);
    let root = tempfile::tempdir().unwrap();
    let runtime = HostRuntime::new(root.path());
    let ws = runtime
        .prepare(&request(source.path(), ProfileRequest::Devcontainer, None))
        .await
        .unwrap();
    assert_eq!(ws.report.status, ReadyStatus::Recovery);
    assert!(
        ws.report
            .message
            .unwrap()
            .contains(".devcontainer/devcontainer.json is not used")
    );
}

#[tokio::test]
async fn bad_requests_fail_before_anything_runs() {
    let root = tempfile::tempdir().unwrap();
    let runtime = HostRuntime::new(root.path());
    let mut req = request(Path::new("--upload-pack=evil"), ProfileRequest::Auto, None);
    assert!(matches!(
        runtime.prepare(&req).await,
        Err(Error::InvalidRequest(_))
    ));
    req.repo = "/nonexistent/repo".to_owned();
    let err = runtime.prepare(&req).await.unwrap_err();
    assert!(
        matches!(err, Error::Command { ref program, .. } if program == "git clone"),
        "{err}"
    );
}

/// Docker runtime: (repo files, profile, devcontainer name) → (status, profile, calls).
async fn check_docker(
    files: &[(&str, &str)],
    profile: ProfileRequest,
    name: Option<&str>,
    status: ReadyStatus,
    expected: EffectiveProfile,
    calls: &[&str],
) -> (Workspace, DockerRuntime) {
    let source = repo(files);
    let root = tempfile::tempdir().unwrap();
    let tools = FakeTools::new();
    let runtime = DockerRuntime::new(HostRuntime::new(root.path()), "sam/lightweight:1")
        .with_programs(tools.path("docker"), tools.path("devcontainer"));
    let ws = runtime
        .prepare(&request(source.path(), profile, name))
        .await
        .unwrap();
    assert_eq!(ws.report.status, status);
    assert_eq!(ws.report.profile, expected);
    let dir = ws.dir.display().to_string();
    let got = tools.calls();
    let want: Vec<String> = calls
        .iter()
        .map(|c| {
            c.replace("{dir}", &dir)
                .replace("{tools}", &tools.dir.path().display().to_string())
        })
        .collect();
    assert_eq!(got, want);
    (ws, runtime)
}

const RUN: &str = "docker run --detach --init --name sam-ws-ws1 --label sam-workspace=ws1 --volume {dir}:/workspaces/ws1 --workdir /workspaces/ws1 sam/lightweight:1 sleep infinity";

fn lightweight() -> EffectiveProfile {
    EffectiveProfile::Lightweight {
        image: "sam/lightweight:1".to_owned(),
    }
}

#[tokio::test]
async fn docker_runtime_without_a_config_runs_the_lightweight_image() {
    let (ws, runtime) = check_docker(
        &[],
        ProfileRequest::Auto,
        None,
        ReadyStatus::Running,
        lightweight(),
        &[RUN],
    )
    .await;
    let agent = AgentCommand::known("claude")
        .unwrap()
        .with_env("ANTHROPIC_API_KEY", Secret::new("sk-ant-secret-value"));
    let exec = runtime.agent_command(&ws, &agent);
    assert!(exec.program().ends_with("docker"));
    assert_eq!(
        exec.args(),
        [
            "exec",
            "-i",
            "-w",
            "/workspaces/ws1",
            "-e",
            "ANTHROPIC_API_KEY",
            // The process-tree marker reaches the container's processes too.
            "-e",
            "SAM_AGENT_TREE",
            "c0ffee",
            "claude-agent-acp"
        ]
    );
    assert!(!format!("{exec:?}").contains("sk-ant-secret-value"));
}

#[tokio::test]
async fn docker_runtime_reports_a_fallback() {
    // No configuration at all; only a named one, which (as for `@devcontainers/cli`)
    // is never used without a request.
    let named: &[(&str, &str)] = &[(".devcontainer/gpu/devcontainer.json", IMAGE_CONFIG)];
    for files in [&[][..], named] {
        let (ws, _) = check_docker(
            files,
            ProfileRequest::Devcontainer,
            None,
            ReadyStatus::Recovery,
            lightweight(),
            &[RUN],
        )
        .await;
        let message = ws.report.message.unwrap();
        assert!(
            message.contains("no devcontainer configuration"),
            "{message}"
        );
        assert!(
            message.contains("a named one is used only when requested"),
            "{message}"
        );
    }
}

#[tokio::test]
async fn docker_runtime_brings_up_the_default_devcontainer() {
    let up = "devcontainer up --workspace-folder {dir} --config {dir}/.devcontainer/devcontainer.json --docker-path {tools}/docker";
    let (ws, runtime) = check_docker(
        &[
            (".devcontainer/devcontainer.json", IMAGE_CONFIG),
            (".devcontainer/gpu/devcontainer.json", IMAGE_CONFIG),
        ],
        ProfileRequest::Auto,
        None,
        ReadyStatus::Running,
        EffectiveProfile::Devcontainer {
            name: None,
            path: PathBuf::from(".devcontainer/devcontainer.json"),
            kind: DevcontainerKind::Image,
        },
        &[up],
    )
    .await;
    let exec = runtime.agent_command(&ws, &AgentCommand::known("gemini").unwrap());
    assert_eq!(
        exec.args(),
        [
            "exec",
            "-i",
            "-w",
            "/workspaces/repo",
            "-u",
            "vscode",
            "-e",
            "SAM_AGENT_TREE",
            "dc1234",
            "gemini",
            "--acp"
        ]
    );
}

#[tokio::test]
async fn docker_runtime_brings_up_a_named_devcontainer() {
    let up = "devcontainer up --workspace-folder {dir} --config {dir}/.devcontainer/gpu/devcontainer.json --docker-path {tools}/docker";
    check_docker(
        &[
            (".devcontainer/devcontainer.json", IMAGE_CONFIG),
            (
                ".devcontainer/gpu/devcontainer.json",
                r#"{ "dockerFile": "Dockerfile" }"#,
            ),
        ],
        ProfileRequest::Auto,
        Some("gpu"),
        ReadyStatus::Running,
        EffectiveProfile::Devcontainer {
            name: Some("gpu".to_owned()),
            path: PathBuf::from(".devcontainer/gpu/devcontainer.json"),
            kind: DevcontainerKind::Dockerfile,
        },
        &[up],
    )
    .await;
}

#[tokio::test]
async fn docker_runtime_honours_an_explicit_lightweight_request() {
    check_docker(
        &[(".devcontainer.json", IMAGE_CONFIG)],
        ProfileRequest::Lightweight,
        None,
        ReadyStatus::Running,
        lightweight(),
        &[RUN],
    )
    .await;
}

#[tokio::test]
async fn a_missing_named_devcontainer_is_an_error() {
    let source = repo(&[(".devcontainer.json", IMAGE_CONFIG)]);
    let root = tempfile::tempdir().unwrap();
    let tools = FakeTools::new();
    let runtime = DockerRuntime::new(HostRuntime::new(root.path()), "img")
        .with_programs(tools.path("docker"), tools.path("devcontainer"));
    let err = runtime
        .prepare(&request(source.path(), ProfileRequest::Auto, Some("gpu")))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Devcontainer(devcontainer::DevcontainerError::NotFound { .. })
        ),
        "{err}"
    );
    assert!(tools.calls().is_empty(), "no container is started");
}

#[tokio::test]
async fn remove_deletes_the_container_and_the_clone_and_is_idempotent() {
    let source = repo(&[]);
    let root = tempfile::tempdir().unwrap();
    let tools = FakeTools::new();
    let runtime = DockerRuntime::new(HostRuntime::new(root.path()), "sam/lightweight:1")
        .with_programs(tools.path("docker"), tools.path("devcontainer"));
    let ws = runtime
        .prepare(&request(source.path(), ProfileRequest::Lightweight, None))
        .await
        .unwrap();
    assert!(ws.dir.is_dir());
    runtime.remove(&ws).await.unwrap();
    assert!(!ws.dir.exists());
    assert_eq!(tools.calls().last().unwrap(), "docker rm --force c0ffee");
    runtime.remove(&ws).await.unwrap();

    let host = HostRuntime::new(root.path());
    let ws = host
        .prepare(&request(source.path(), ProfileRequest::Auto, None))
        .await
        .unwrap();
    host.remove(&ws).await.unwrap();
    assert!(!ws.dir.exists());
    host.remove(&ws).await.unwrap();
}

/// A `devcontainer.json` that does not parse.
const BROKEN_CONFIG: &str = r#"{ "image": 'single-quoted' }"#;

#[tokio::test]
async fn host_runtime_does_not_read_the_devcontainer_it_does_not_use() {
    let source = repo(&[(".devcontainer/devcontainer.json", BROKEN_CONFIG)]);
    let root = tempfile::tempdir().unwrap();
    let runtime = HostRuntime::new(root.path());
    let ws = runtime
        .prepare(&request(source.path(), ProfileRequest::Auto, None))
        .await
        .unwrap();
    assert_eq!(ws.report.status, ReadyStatus::Running);
    assert!(
        ws.report
            .message
            .unwrap()
            .contains(".devcontainer/devcontainer.json is not used")
    );
}

#[tokio::test]
async fn docker_runtime_ignores_broken_configs_it_does_not_use() {
    // A broken named configuration next to the default one that is used.
    let up = "devcontainer up --workspace-folder {dir} --config {dir}/.devcontainer/devcontainer.json --docker-path {tools}/docker";
    check_docker(
        &[
            (".devcontainer/devcontainer.json", IMAGE_CONFIG),
            (".devcontainer/gpu/devcontainer.json", BROKEN_CONFIG),
        ],
        ProfileRequest::Auto,
        None,
        ReadyStatus::Running,
        EffectiveProfile::Devcontainer {
            name: None,
            path: PathBuf::from(".devcontainer/devcontainer.json"),
            kind: DevcontainerKind::Image,
        },
        &[up],
    )
    .await;
    // A broken default configuration and the lightweight profile.
    check_docker(
        &[(".devcontainer/devcontainer.json", BROKEN_CONFIG)],
        ProfileRequest::Lightweight,
        None,
        ReadyStatus::Running,
        lightweight(),
        &[RUN],
    )
    .await;
}

#[tokio::test]
async fn docker_runtime_fails_on_the_broken_config_it_would_use() {
    let source = repo(&[
        (".devcontainer/devcontainer.json", BROKEN_CONFIG),
        (".devcontainer.json", IMAGE_CONFIG),
    ]);
    let root = tempfile::tempdir().unwrap();
    let tools = FakeTools::new();
    let runtime = DockerRuntime::new(HostRuntime::new(root.path()), "img")
        .with_programs(tools.path("docker"), tools.path("devcontainer"));
    let err = runtime
        .prepare(&request(source.path(), ProfileRequest::Auto, None))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Devcontainer(devcontainer::DevcontainerError::Parse { .. })
        ),
        "{err}"
    );
    assert!(tools.calls().is_empty(), "no container is started");
}
