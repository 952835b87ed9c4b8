//! Agents and git run as the node's unprivileged agent user, for real.
//!
//! The test makes a user of its own with `useradd` (as cloud-init makes `sam` on a
//! node), then drives the host runtime as the VM agent does on a `host` node: git
//! clones, commits and pushes as the user, and a real ACP agent (the fake agent's
//! binary, behind a shell that first records who it runs as) runs a turn as the
//! user. A 0600 root file stands in for the node's callback token.
//!
//! Creating users needs root. Elsewhere the test prints a notice and passes; in CI
//! (`CI=true`), where it runs as root, not being root is a failure.

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::Path;

use sam_agent::vm::AgentUser;
use sam_agent::vm::fake::FakeAgentScript;
use sam_agent::vm::runtime::WorkspaceRequest;
use sam_agent::{HostRuntime, WorkspaceRuntime};
use sam_core::WorkspaceId;

#[path = "support/agent_user.rs"]
mod support;
use support::{TestUser, chown_tree, git, one_turn, probing_agent, read};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn git_and_the_agent_run_as_the_agent_user() {
    let base = tempfile::tempdir().unwrap();
    // The user must reach what the test lays out: the temporary directory is 0700.
    std::fs::set_permissions(base.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let home = base.path().join("home");
    let Some(test_user) = TestUser::create(&home, "the agent-user test") else {
        return;
    };
    let user = AgentUser::lookup(&test_user.name).unwrap();
    assert_ne!(user.uid(), 0);
    std::fs::create_dir(&home).unwrap();
    chown_tree(&home, user.uid(), user.gid());

    // The node's secret: a 0600 file of root's.
    let token = base.path().join("callback-token");
    std::fs::write(&token, "node-token-canary\n").unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();

    // The repository tasks clone and push to; the user may write to it, as a remote
    // grants the node's credential.
    let origin = base.path().join("origin");
    std::fs::create_dir(&origin).unwrap();
    git(&origin, &["init", "--quiet"]);
    std::fs::write(origin.join("README.md"), "hello\n").unwrap();
    git(&origin, &["add", "-A"]);
    git(&origin, &["commit", "--quiet", "-m", "init"]);
    chown_tree(&origin, user.uid(), user.gid());

    // The agent's program, where the user can run it whatever the target
    // directory's permissions.
    let bin = base.path().join("fake-acp-agent");
    std::fs::copy(env!("CARGO_BIN_EXE_fake-acp-agent"), &bin).unwrap();

    let runtime = HostRuntime::new(base.path().join("workspaces")).with_user(user.clone());
    let request = WorkspaceRequest {
        id: WorkspaceId::new("ws-user").unwrap(),
        repo: origin.display().to_string(),
        branch: None,
        profile: Default::default(),
        devcontainer: None,
        output_branch: Some("sam/agent-user".to_owned()),
        credentials: None,
    };
    // A clone that fails leaves no directory behind, as git leaves none it made.
    let missing = WorkspaceRequest {
        repo: base.path().join("no-such-repo").display().to_string(),
        ..request.clone()
    };
    assert!(runtime.prepare(&missing).await.is_err());
    assert!(!base.path().join("workspaces/ws-user").exists());
    let workspace = runtime.prepare(&request).await.unwrap();

    // Git cloned as the user: the clone and everything in it are the user's.
    for path in [
        workspace.dir.clone(),
        workspace.dir.join("README.md"),
        workspace.dir.join(".git/HEAD"),
    ] {
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert_eq!(
            (meta.uid(), meta.gid()),
            (user.uid(), user.gid()),
            "{}",
            path.display()
        );
    }

    // A real ACP agent, behind a shell that records who it is and tries the token.
    let script = FakeAgentScript {
        stop_reason: "end_turn".to_owned(),
        write_path: Some("notes/agent.md".to_owned()),
        ..FakeAgentScript::default()
    };
    let agent = probing_agent(&bin.display().to_string(), &script, &token);
    let command = runtime.agent_command(&workspace, &agent);
    one_turn(command, &workspace, "write the notes").await;

    let dir = &workspace.dir;
    assert_eq!(read(&dir.join("whoami.uid")), user.uid().to_string());
    // Only the user's own group: root's groups are dropped, and no other is added.
    assert_eq!(read(&dir.join("whoami.groups")), user.gid().to_string());
    assert_eq!(Path::new(&read(&dir.join("whoami.home"))), user.home());
    assert_eq!(read(&dir.join("whoami.home-writable")), "yes");
    assert_eq!(
        read(&dir.join("secret.outcome")),
        "refused",
        "the agent read the node's token"
    );
    assert!(
        read(&dir.join("secret.err")).contains("Permission denied"),
        "{}",
        read(&dir.join("secret.err"))
    );
    // What the agent asked the host to write is the user's too, directory included.
    for path in [dir.join("notes"), dir.join("notes/agent.md")] {
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert_eq!(meta.uid(), user.uid(), "{}", path.display());
    }

    // The final commit and push run as the user, into the user's remote.
    let git_config = runtime.git();
    assert!(git_config.commit_all(dir, "SAM: notes\n").await.unwrap());
    let head = git_config.head(dir).await.unwrap();
    git_config.push(dir, "sam/agent-user", None).await.unwrap();
    assert_eq!(
        git(&origin, &["rev-parse", "refs/heads/sam/agent-user"]),
        head
    );
    let objects = std::fs::symlink_metadata(dir.join(".git/index")).unwrap();
    assert_eq!(
        objects.uid(),
        user.uid(),
        "the index git wrote is the user's"
    );

    runtime.remove(&workspace).await.unwrap();
    assert!(!workspace.dir.exists());
    drop(test_user);
}
