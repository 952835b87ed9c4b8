//! `DockerRuntime` against a real Docker daemon (Debian's `docker.io`; `.ci/run`
//! installs and starts one, reached through `DOCKER_HOST`).
//!
//! No registry is reachable, so the image is made here: a root filesystem of
//! BusyBox, the fake ACP agent's binary and the libraries they load, imported with
//! `docker import`. Agents run in the containers as a user the test makes, as they
//! run as the agent user on a node; `devcontainer up` is the reference CLI
//! (`@devcontainers/cli`, installed by `.ci/run` beside the other npm tools).
//!
//! Without a daemon (or BusyBox, root or the CLI) a test prints a notice and
//! passes; in CI (`CI=true`) that is a failure.

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use sam_agent::vm::AgentUser;
use sam_agent::vm::devcontainer::DevcontainerError;
use sam_agent::vm::fake::FakeAgentScript;
use sam_agent::vm::runtime::{CONTAINER_HOME, EffectiveProfile, ReadyStatus, WorkspaceRequest};
use sam_agent::wire::ProfileRequest;
use sam_agent::{DockerRuntime, Error, HostRuntime, WorkspaceRuntime};
use sam_core::WorkspaceId;
use tempfile::TempDir;

#[path = "support/agent_user.rs"]
mod support;
use support::{TestUser, chown_tree, git, one_turn, probing_agent, read};

/// The label of the images the tests import.
const IMAGE_LABEL: &str = "sam-test=agent-rootfs";

/// Where the fake agent lives in the image.
const AGENT_IN_IMAGE: &str = "/usr/local/bin/fake-acp-agent";

fn in_ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

/// Prints why the test cannot run here, or fails in CI.
fn skip(test: &str, why: &str) {
    assert!(!in_ci(), "CI must run {test}: {why} (see .ci/run)");
    eprintln!("notice: skipping {test}: {why}");
}

fn docker(args: &[&str]) -> std::process::Output {
    Command::new("docker")
        .args(args)
        .output()
        .expect("the docker client runs")
}

fn docker_ok(args: &[&str]) -> String {
    let out = docker(args);
    assert!(
        out.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Whether a daemon answers; why not otherwise.
fn daemon() -> Result<(), String> {
    match Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .output()
    {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(format!(
            "no Docker daemon answers: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => Err(format!("no docker client: {e}")),
    }
}

/// The shared libraries `binary` loads, as `ldd` lists them.
fn libraries(binary: &Path) -> Vec<PathBuf> {
    let out = Command::new("ldd").arg(binary).output().expect("ldd runs");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter(|word| word.starts_with('/'))
        .map(PathBuf::from)
        .collect()
}

fn copy_into(root: &Path, from: &Path, to: &Path) {
    let target = root.join(to.strip_prefix("/").unwrap());
    std::fs::create_dir_all(target.parent().unwrap()).unwrap();
    std::fs::copy(from, &target).unwrap_or_else(|e| panic!("{}: {e}", from.display()));
}

/// An image imported from a root filesystem made here; removed when dropped.
struct TestImage {
    tag: String,
}

impl TestImage {
    /// BusyBox (`/bin/sh`, `id`, `sleep`, `cat`) and the fake ACP agent.
    fn import() -> Result<Self, String> {
        let busybox = ["/bin/busybox", "/usr/bin/busybox"]
            .into_iter()
            .map(Path::new)
            .find(|p| p.is_file())
            .ok_or("BusyBox is not installed (Debian's busybox-static)")?;
        let rootfs = tempfile::tempdir().unwrap();
        let root = rootfs.path();
        let agent = Path::new(env!("CARGO_BIN_EXE_fake-acp-agent"));
        copy_into(root, busybox, Path::new("/bin/busybox"));
        copy_into(root, agent, Path::new(AGENT_IN_IMAGE));
        for binary in [busybox, agent] {
            for library in libraries(binary) {
                copy_into(root, &library, &library);
            }
        }
        for applet in ["sh", "id", "sleep", "cat", "printf", "echo", "ls", "rm"] {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
        }
        for dir in ["etc", "tmp", "usr/lib"] {
            std::fs::create_dir_all(root.join(dir)).unwrap();
        }
        std::fs::set_permissions(root.join("tmp"), std::fs::Permissions::from_mode(0o1777))
            .unwrap();
        std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
        std::fs::write(root.join("etc/group"), "root:x:0:\n").unwrap();
        std::fs::write(
            root.join("usr/lib/os-release"),
            "ID=sam-test\nNAME=\"SAM test rootfs\"\n",
        )
        .unwrap();
        // One image per test: each removes its own when it ends.
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tag = format!("sam-test/agent-rootfs:{}-{n}", std::process::id());
        let started = Instant::now();
        let out = Command::new("sh")
            .arg("-c")
            .arg(r#"tar -C "$1" -c . | docker import --change "LABEL $3" - "$2""#)
            .args(["sh", &root.display().to_string(), &tag, IMAGE_LABEL])
            .output()
            .unwrap();
        if !out.status.success() {
            return Err(format!(
                "docker import failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        eprintln!("imported {tag} in {:?}", started.elapsed());
        Ok(Self { tag })
    }
}

impl Drop for TestImage {
    fn drop(&mut self) {
        // Containers a failed test left behind.
        let ancestor = format!("ancestor={}", self.tag);
        let left = docker(&["ps", "--all", "--quiet", "--filter", &ancestor]);
        for id in String::from_utf8_lossy(&left.stdout).split_whitespace() {
            let _ = docker(&["rm", "--force", id]);
        }
        let _ = docker(&["rmi", "--force", &self.tag]);
        // The tests import the same files, so their tags may name one image, which
        // stays while another test's container uses it: the last one out removes it.
        let _ = docker(&[
            "image",
            "prune",
            "--force",
            "--filter",
            &format!("label={IMAGE_LABEL}"),
        ]);
    }
}

/// What every test needs: a daemon, an image, a user, a repository the user owns.
struct Setup {
    image: TestImage,
    user: AgentUser,
    base: TempDir,
    origin: PathBuf,
    _test_user: TestUser,
}

impl Setup {
    fn new(test: &str) -> Option<Self> {
        if let Err(why) = daemon() {
            skip(test, &why);
            return None;
        }
        let base = tempfile::tempdir().unwrap();
        std::fs::set_permissions(base.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let home = base.path().join("home");
        let test_user = TestUser::create(&home, test)?;
        let user = AgentUser::lookup(&test_user.name).unwrap();
        let image = match TestImage::import() {
            Ok(image) => image,
            Err(why) => {
                skip(test, &why);
                return None;
            }
        };
        let origin = base.path().join("origin");
        std::fs::create_dir(&origin).unwrap();
        git(&origin, &["init", "--quiet"]);
        std::fs::write(origin.join("README.md"), "hello\n").unwrap();
        git(&origin, &["add", "-A"]);
        git(&origin, &["commit", "--quiet", "-m", "init"]);
        chown_tree(&origin, user.uid(), user.gid());
        Some(Self {
            image,
            user,
            base,
            origin,
            _test_user: test_user,
        })
    }

    fn runtime(&self) -> DockerRuntime {
        DockerRuntime::new(
            HostRuntime::new(self.base.path().join("workspaces")).with_user(self.user.clone()),
            &self.image.tag,
        )
    }

    /// A request for the workspace `id`, made unique to this process so that runs
    /// side by side do not share container names.
    fn request(&self, id: &str) -> WorkspaceRequest {
        WorkspaceRequest {
            id: WorkspaceId::new(format!("{id}-{}", std::process::id())).unwrap(),
            repo: self.origin.display().to_string(),
            branch: None,
            profile: ProfileRequest::Auto,
            devcontainer: None,
            output_branch: None,
            credentials: None,
        }
    }

    /// Adds `.devcontainer/devcontainer.json` with `config` to the repository.
    fn add_devcontainer(&self, config: &str) {
        let dir = self.origin.join(".devcontainer");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("devcontainer.json"), config).unwrap();
        git(&self.origin, &["add", "-A"]);
        git(&self.origin, &["commit", "--quiet", "-m", "devcontainer"]);
        chown_tree(&self.origin, self.user.uid(), self.user.gid());
    }

    /// Runs one turn of the fake agent in `workspace`, behind the probe, and checks
    /// that it ran as the user.
    async fn agent_runs_as_the_user(
        &self,
        runtime: &DockerRuntime,
        workspace: &sam_agent::vm::runtime::Workspace,
    ) {
        // The agent sees the clone at the container's folder: its session's `cwd`,
        // and the paths of its file requests, are there.
        let folder = workspace
            .container
            .as_ref()
            .expect("a container")
            .folder
            .clone();
        let script = FakeAgentScript {
            stop_reason: "end_turn".to_owned(),
            write_path: Some(format!("{folder}/notes/agent.md")),
            transcript: Some(PathBuf::from(format!("{folder}/transcript.jsonl"))),
            ..FakeAgentScript::default()
        };
        let agent = probing_agent(AGENT_IN_IMAGE, &script, Path::new("/etc/shadow"));
        let command = runtime.agent_command(workspace, &agent);
        assert!(command.program().ends_with("docker"), "{command:?}");
        one_turn(command, workspace, "hello").await;
        // The probe wrote through the container's mount of the clone.
        let dir = &workspace.dir;
        assert_eq!(read(&dir.join("whoami.uid")), self.user.uid().to_string());
        assert_eq!(
            read(&dir.join("whoami.groups")),
            self.user.gid().to_string()
        );
        // A home of its own, which it can write.
        assert_eq!(read(&dir.join("whoami.home")), CONTAINER_HOME);
        assert_eq!(read(&dir.join("whoami.home-writable")), "yes");
        let meta = std::fs::metadata(dir.join("whoami.uid")).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (self.user.uid(), self.user.gid()));
        let transcript = read(&dir.join("transcript.jsonl"));
        let new_session = transcript
            .lines()
            .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
            .find(|message| message["method"] == "session/new")
            .expect("the agent got session/new");
        assert_eq!(new_session["params"]["cwd"], folder.as_str());
        // The host wrote the file the agent named by its container path, in the
        // clone, and gave it to the user.
        let written = std::fs::metadata(dir.join("notes/agent.md")).unwrap();
        assert_eq!(written.uid(), self.user.uid());
    }
}

fn container_running(id: &str) -> bool {
    docker(&["inspect", "--format", "{{.State.Running}}", id])
        .stdout
        .starts_with(b"true")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lightweight_image_runs_agents_as_the_agent_user() {
    let Some(setup) = Setup::new("the Docker lightweight-image test") else {
        return;
    };
    let runtime = setup.runtime();
    let started = Instant::now();
    let request = setup.request("ws-light");
    let workspace = runtime.prepare(&request).await.unwrap();
    eprintln!("lightweight workspace ready in {:?}", started.elapsed());
    assert_eq!(workspace.report.status, ReadyStatus::Running);
    assert_eq!(
        workspace.report.profile,
        EffectiveProfile::Lightweight {
            image: setup.image.tag.clone()
        }
    );
    let container = workspace.container.clone().expect("a container");
    assert!(container_running(&container.id));
    assert_eq!(
        docker_ok(&[
            "inspect",
            "--format",
            "{{index .Config.Labels \"sam-workspace\"}}",
            &container.id
        ]),
        request.id.as_str()
    );
    setup.agent_runs_as_the_user(&runtime, &workspace).await;

    let homes: Vec<_> = std::fs::read_dir(workspace.dir.parent().unwrap())
        .unwrap()
        .map(|entry| entry.unwrap().file_name())
        .collect();
    assert_eq!(homes.len(), 2, "the clone and the agent's home: {homes:?}");
    runtime.remove(&workspace).await.unwrap();
    assert!(!docker(&["inspect", &container.id]).status.success());
    assert!(!workspace.dir.exists());
    let left = std::fs::read_dir(workspace.dir.parent().unwrap())
        .unwrap()
        .count();
    assert_eq!(left, 0, "the agent's home goes with the workspace");
    // Removing again is fine: the container and the clone are gone already.
    runtime.remove(&workspace).await.unwrap();
}

/// The reference CLI's path (installed by `.ci/run`).
fn devcontainer_cli() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("SAM_DEVCONTAINER_CLI") {
        return Some(PathBuf::from(path));
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let path = target.join("devcontainer-cli/node_modules/.bin/devcontainer");
    path.is_file().then_some(path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devcontainer_up_starts_the_repositorys_container() {
    let test = "the Docker devcontainer test";
    let Some(cli) = devcontainer_cli() else {
        skip(test, "@devcontainers/cli is not installed");
        return;
    };
    let Some(setup) = Setup::new(test) else {
        return;
    };
    setup.add_devcontainer(&format!(
        "{{ // JSONC, as the specification allows\n  \"image\": \"{}\",\n}}\n",
        setup.image.tag
    ));
    let runtime = setup
        .runtime()
        .with_programs("docker", cli.display().to_string());
    let started = Instant::now();
    let request = setup.request("ws-dc");
    let workspace = runtime.prepare(&request).await.unwrap();
    eprintln!("devcontainer workspace ready in {:?}", started.elapsed());
    assert_eq!(workspace.report.status, ReadyStatus::Running);
    let EffectiveProfile::Devcontainer { name, path, .. } = &workspace.report.profile else {
        panic!("expected the devcontainer: {:?}", workspace.report);
    };
    assert_eq!(
        (name, path.as_path()),
        (&None, Path::new(".devcontainer/devcontainer.json"))
    );
    let container = workspace.container.clone().expect("a container");
    assert!(container_running(&container.id));
    // The CLI labels the container with the clone it mounts.
    assert_eq!(
        docker_ok(&[
            "inspect",
            "--format",
            "{{index .Config.Labels \"devcontainer.local_folder\"}}",
            &container.id
        ]),
        workspace.dir.display().to_string()
    );
    assert_eq!(container.folder, format!("/workspaces/{}", request.id));
    setup.agent_runs_as_the_user(&runtime, &workspace).await;

    runtime.remove(&workspace).await.unwrap();
    assert!(!docker(&["inspect", &container.id]).status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_named_devcontainer_that_is_missing_starts_no_container() {
    let Some(setup) = Setup::new("the Docker missing-devcontainer test") else {
        return;
    };
    let runtime = setup.runtime();
    let mut request = setup.request("ws-missing");
    request.devcontainer = Some("gpu".to_owned());
    match runtime.prepare(&request).await {
        Err(Error::Devcontainer(DevcontainerError::NotFound { .. })) => {}
        other => panic!("expected a missing devcontainer, got {other:?}"),
    }
    let containers = docker_ok(&[
        "ps",
        "--all",
        "--quiet",
        "--filter",
        &format!("label=sam-workspace={}", request.id),
    ]);
    assert_eq!(containers, "", "no container for a workspace that failed");
}
