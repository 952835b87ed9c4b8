//! Helpers of the tests that run agents as a user of their own.

#![allow(dead_code)]

use std::path::Path;
use std::process::Command;

use std::sync::Arc;
use std::time::Duration;

use sam_agent::vm::fake::FakeAgentScript;
use sam_agent::vm::runtime::Workspace;
use sam_agent::{AcpOptions, AcpSession, AgentCommand};
use sam_core::{AgentSession, Secret, StopReason};

/// A user made for one test, deleted when dropped.
pub(crate) struct TestUser {
    /// The user name.
    pub(crate) name: String,
}

impl TestUser {
    /// `None` (with a printed notice naming `test`) when this process cannot make
    /// users; in CI, which runs as root, that is a failure.
    pub(crate) fn create(home: &Path, test: &str) -> Option<Self> {
        if !rustix::process::geteuid().is_root() {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI runs as root and must run {test}"
            );
            eprintln!("notice: not root, cannot create a user; skipping {test}");
            return None;
        }
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("sam-it-{}-{n}", std::process::id());
        // A user left by an earlier run that crashed.
        let _ = Command::new("userdel").arg(&name).output();
        let out = Command::new("useradd")
            .args(["--no-create-home", "--user-group", "--shell", "/bin/sh"])
            .arg("--home-dir")
            .arg(home)
            .arg(&name)
            .output()
            .expect("useradd runs");
        assert!(
            out.status.success(),
            "useradd {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Some(Self { name })
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        let _ = Command::new("userdel").arg(&self.name).output();
    }
}

/// Runs git in `dir` as this process, and returns its output.
pub(crate) fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args([
            "-c",
            "user.name=sam",
            "-c",
            "user.email=sam@example.invalid",
            "-c",
            "init.defaultBranch=main",
            "-c",
            "safe.directory=*",
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

/// Gives `path` and everything under it to `uid` and `gid`.
pub(crate) fn chown_tree(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).unwrap();
    if path.is_dir() && !path.is_symlink() {
        for entry in std::fs::read_dir(path).unwrap() {
            chown_tree(&entry.unwrap().path(), uid, gid);
        }
    }
}

/// The trimmed text of `path`.
pub(crate) fn read(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .to_owned()
}

/// The fake ACP agent (`program`, playing `script`) behind `/bin/sh`, which first
/// records in its working directory who it runs as (`whoami.uid`, `whoami.groups`,
/// `whoami.home`, and `whoami.home-writable`: `yes` or `no`) and whether it could read `secret` (`secret.outcome`: `read` or
/// `refused`; the error in `secret.err`).
pub(crate) fn probing_agent(
    program: &str,
    script: &FakeAgentScript,
    secret: &Path,
) -> AgentCommand {
    let probe = format!(
        "id -u > whoami.uid; id -G > whoami.groups; printf '%s' \"$HOME\" > whoami.home; \
         if touch \"$HOME/.sam-probe\"; then echo yes; else echo no; fi > whoami.home-writable; \
         if cat '{}' > /dev/null 2> secret.err; then echo read; else echo refused; fi \
         > secret.outcome; exec \"$0\"",
        secret.display()
    );
    script.to_env().into_iter().fold(
        AgentCommand::new("/bin/sh").with_args(["-c".to_owned(), probe, program.to_owned()]),
        |command, (k, v)| command.with_env(k, Secret::new(v)),
    )
}

/// Runs one prompt turn of the agent `command` starts in `workspace`, set up as the
/// VM agent sets up its sessions, and checks that it ends its turn.
pub(crate) async fn one_turn(command: AgentCommand, workspace: &Workspace, prompt: &str) {
    let options = AcpOptions {
        request_timeout: Duration::from_secs(30),
        ..AcpOptions::default()
    };
    let mut session = AcpSession::new(Arc::new(command), options);
    if let Some(dir) = workspace.agent_dir() {
        session = session.with_agent_root(dir);
    }
    session.initialize().await.unwrap();
    let id = session.new_session(&workspace.dir).await.unwrap();
    assert_eq!(
        session.prompt(&id, prompt).await.unwrap(),
        StopReason::EndTurn
    );
}
