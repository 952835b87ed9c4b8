//! Starting an agent: the [`AgentLauncher`] trait, [`AgentCommand`] (a child process,
//! with the registry of known agents) and the pipes an [`AgentIo`] carries.

use std::fmt;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use sam_core::{AgentError, AgentFailure, ErrorCategory, Secret, redact};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, BufReader};
use tokio::process::Child;

/// The most stderr output kept for a crash report.
const STDERR_TAIL_BYTES: usize = 4096;

/// Starts one agent process (or an in-process stand-in) and hands over its pipes.
///
/// # Contract
/// - Every call starts a fresh agent; crash recovery calls it again.
/// - Credentials reach only the agent, never this process's environment or logs.
#[async_trait]
pub trait AgentLauncher: Send + Sync + fmt::Debug {
    /// Starts the agent.
    ///
    /// # Errors
    /// An [`AgentFailure::Spawn`] error when it cannot be started.
    async fn launch(&self) -> Result<AgentIo, AgentError>;
}

/// A running agent's stdio, and the process behind it when there is one.
pub struct AgentIo {
    pub(crate) stdin: Box<dyn AsyncWrite + Send + Unpin>,
    pub(crate) stdout: Box<dyn AsyncRead + Send + Unpin>,
    pub(crate) child: Option<Child>,
    pub(crate) stderr_tail: Arc<Mutex<String>>,
    /// Ends when the agent's stderr has been drained.
    pub(crate) stderr_done: Option<tokio::task::JoinHandle<()>>,
    /// The marker of the agent's process tree ([`super::tree::TREE_VAR`]).
    pub(crate) marker: Option<String>,
    /// The agent's own cgroup, where one could be made.
    pub(crate) cgroup: Option<super::tree::Cgroup>,
}

impl fmt::Debug for AgentIo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentIo")
            .field("pid", &self.child.as_ref().and_then(Child::id))
            .finish_non_exhaustive()
    }
}

impl AgentIo {
    /// An agent reached through a pair of streams (an in-process agent, a socket).
    /// The agent has ended when `stdout` reaches its end.
    pub fn from_streams(
        stdin: impl AsyncWrite + Send + Unpin + 'static,
        stdout: impl AsyncRead + Send + Unpin + 'static,
    ) -> Self {
        Self {
            stdin: Box::new(stdin),
            stdout: Box::new(stdout),
            child: None,
            stderr_tail: Arc::default(),
            stderr_done: None,
            marker: None,
            cgroup: None,
        }
    }

    /// An agent running as `child`, spawned with piped stdin, stdout and stderr. Its
    /// stderr is drained in the background and the end of it kept for crash reports.
    ///
    /// # Errors
    /// When the child's stdin or stdout was not piped.
    pub fn from_child(mut child: Child) -> Result<Self, AgentError> {
        let missing = || spawn_error("the agent's stdin and stdout must be piped".to_owned());
        let stdin = child.stdin.take().ok_or_else(missing)?;
        let stdout = child.stdout.take().ok_or_else(missing)?;
        let stderr_tail = Arc::new(Mutex::new(String::new()));
        let mut stderr_done = None;
        if let Some(stderr) = child.stderr.take() {
            let tail = Arc::clone(&stderr_tail);
            let pid = child.id();
            stderr_done = Some(tokio::spawn(async move {
                let mut lines = BufReader::new(stderr).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let line = redact(&line).into_owned();
                    tracing::debug!(pid, stderr = %line, "agent stderr");
                    let mut tail = tail.lock().unwrap_or_else(|e| e.into_inner());
                    tail.push_str(&line);
                    tail.push('\n');
                    if tail.len() > STDERR_TAIL_BYTES {
                        let mut cut = tail.len() - STDERR_TAIL_BYTES;
                        while !tail.is_char_boundary(cut) {
                            cut += 1;
                        }
                        tail.drain(..cut);
                    }
                }
            }));
        }
        Ok(Self {
            stdin: Box::new(stdin),
            stdout: Box::new(stdout),
            child: Some(child),
            stderr_tail,
            stderr_done,
            marker: None,
            cgroup: None,
        })
    }
}

fn spawn_error(message: String) -> AgentError {
    super::agent_error(AgentFailure::Spawn, ErrorCategory::InvalidConfig, &message)
}

/// A command that starts an ACP agent on stdio.
///
/// Known agents are named with [`AgentCommand::known`]; any other command works with
/// [`AgentCommand::new`]. The agent runs in its own process group, with a marker in
/// its environment ([`super::tree::TREE_VAR`]); when the session drops it, its whole
/// process tree is killed, tools started with `setsid` included.
///
/// The agent never inherits this process's environment: it starts from an empty one
/// with the allow-list of [`sam_core::environment`] (`PATH`, `HOME`, `USER`, `LANG`,
/// `LC_*`, `TERM`, `TMPDIR`), plus the variables given with
/// [`AgentCommand::with_env`] (its credential, `SAM_AGENT_MODEL`, `SAM_AGENT_EFFORT`)
/// and its tree marker.
#[derive(Clone)]
pub struct AgentCommand {
    program: String,
    args: Vec<String>,
    env: Vec<(String, Secret)>,
    cwd: Option<PathBuf>,
    /// Variables of this process the command keeps besides the allow-list (the
    /// Docker client's own settings for `docker exec`); never passed into a container.
    passthrough: &'static [&'static str],
    /// The unprivileged account the process runs as; `None` keeps this process's.
    user: Option<crate::vm::user::AgentUser>,
}

/// The Docker client's own settings: where the daemon is and how to reach it. They
/// reach the `docker exec` client only, not the agent in the container.
const DOCKER_CLIENT_ENV: &[&str] = &[
    "DOCKER_HOST",
    "DOCKER_CONTEXT",
    "DOCKER_CONFIG",
    "DOCKER_CERT_PATH",
    "DOCKER_TLS_VERIFY",
    "XDG_RUNTIME_DIR",
];

impl fmt::Debug for AgentCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Values of the environment are credentials: print their names only.
        let env: Vec<&str> = self.env.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("AgentCommand")
            .field("program", &self.program)
            .field("args", &self.args)
            .field("env", &env)
            .field("cwd", &self.cwd)
            .field(
                "user",
                &self.user.as_ref().map(crate::vm::user::AgentUser::name),
            )
            .finish()
    }
}

/// The agents the registry knows, with the command that starts each one in ACP mode.
pub const KNOWN_AGENTS: &[(&str, &str, &[&str])] = &[
    ("claude", "claude-agent-acp", &[]),
    ("codex", "codex-acp", &[]),
    ("gemini", "gemini", &["--acp"]),
    ("opencode", "opencode", &["acp"]),
];

/// The npm package that installs each known agent's ACP command.
pub const KNOWN_AGENT_PACKAGES: &[(&str, &str)] = &[
    ("claude", "@zed-industries/claude-agent-acp"),
    ("codex", "@zed-industries/codex-acp"),
    ("gemini", "@google/gemini-cli"),
    ("opencode", "opencode-ai"),
];

/// The npm package of a known agent (`claude`, `codex`, `gemini`, `opencode`).
pub fn agent_package(agent: &str) -> Option<&'static str> {
    KNOWN_AGENT_PACKAGES
        .iter()
        .find(|(name, _)| *name == agent)
        .map(|(_, package)| *package)
}

impl AgentCommand {
    /// Any command speaking ACP on stdio.
    pub fn new(program: impl Into<String>) -> Self {
        Self {
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
            cwd: None,
            passthrough: &[],
            user: None,
        }
    }

    /// The registry's command for a known agent (`claude`, `codex`, `gemini`,
    /// `opencode`), or `None` for an unknown name.
    pub fn known(agent: &str) -> Option<Self> {
        KNOWN_AGENTS
            .iter()
            .find(|(name, _, _)| *name == agent)
            .map(|(_, program, args)| Self::new(*program).with_args(args.iter().copied()))
    }

    /// Appends arguments.
    #[must_use]
    pub fn with_args(mut self, args: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Sets an environment variable for the agent only (an API key, say). The value is
    /// never printed.
    #[must_use]
    pub fn with_env(mut self, name: impl Into<String>, value: Secret) -> Self {
        self.env.push((name.into(), value));
        self
    }

    /// Runs the agent in `dir` (by default, this process's working directory).
    #[must_use]
    pub fn with_cwd(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cwd = Some(dir.into());
        self
    }

    /// Runs the agent as `user` ([`crate::vm::user`]): its uid and primary gid, with
    /// `HOME`, `USER` and `LOGNAME` naming it.
    #[must_use]
    pub fn with_user(mut self, user: crate::vm::user::AgentUser) -> Self {
        self.user = Some(user);
        self
    }

    /// The program.
    pub fn program(&self) -> &str {
        &self.program
    }

    /// The arguments.
    pub fn args(&self) -> &[String] {
        &self.args
    }

    /// This command run inside a container with `docker exec -i`: the environment
    /// variables are named on `docker exec`'s command line and their values reach it
    /// through its own environment, so they never appear in a process listing. The
    /// `docker` client keeps the allow-list and its own `DOCKER_*` settings; inside
    /// the container the agent sees the image's environment and the named variables
    /// only.
    /// `user` is the container's user to run as, and `home` its `HOME` there (a
    /// path, not a secret, so it is given on the command line: the `docker` client
    /// reads its own `HOME`).
    pub(crate) fn in_container(
        &self,
        docker: &str,
        container: &str,
        user: Option<&str>,
        home: Option<&str>,
        workdir: &str,
    ) -> Self {
        let mut args = vec![
            "exec".to_owned(),
            "-i".to_owned(),
            "-w".to_owned(),
            workdir.to_owned(),
        ];
        if let Some(user) = user {
            args.extend(["-u".to_owned(), user.to_owned()]);
        }
        if let Some(home) = home {
            args.extend(["-e".to_owned(), format!("HOME={home}")]);
        }
        for (name, _) in &self.env {
            args.extend(["-e".to_owned(), name.clone()]);
        }
        // The tree marker, set by `spawn`, marks the processes in the container too.
        args.extend(["-e".to_owned(), super::tree::TREE_VAR.to_owned()]);
        args.push(container.to_owned());
        args.push(self.program.clone());
        args.extend(self.args.iter().cloned());
        Self {
            program: docker.to_owned(),
            args,
            env: self.env.clone(),
            cwd: None,
            passthrough: DOCKER_CLIENT_ENV,
            // The Docker client needs the daemon's socket; the container's user is
            // the one `--user` names.
            user: None,
        }
    }

    /// The environment the process starts with: the allow-list and the passthrough
    /// names from `parent`, then the given variables (which win).
    fn environment(
        &self,
        parent: impl IntoIterator<Item = (std::ffi::OsString, std::ffi::OsString)>,
    ) -> Vec<(std::ffi::OsString, std::ffi::OsString)> {
        let parent: Vec<_> = parent.into_iter().collect();
        let mut env = sam_core::environment::inherited(
            parent.iter().cloned(),
            sam_core::environment::Inherit::Base,
        );
        env.extend(
            parent
                .into_iter()
                .filter(|(name, _)| name.to_str().is_some_and(|n| self.passthrough.contains(&n))),
        );
        env.extend(self.env.iter().map(|(k, v)| (k.into(), v.expose().into())));
        env
    }

    /// Starts the command as a child process.
    ///
    /// # Errors
    /// An [`AgentFailure::Spawn`] error naming the program when it cannot be started.
    pub fn spawn(&self) -> Result<AgentIo, AgentError> {
        let marker = super::tree::new_marker();
        let mut command = tokio::process::Command::new(&self.program);
        command
            .args(&self.args)
            .env_clear()
            .envs(self.environment(std::env::vars_os()))
            .env(super::tree::TREE_VAR, &marker)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .process_group(0);
        if let Some(dir) = &self.cwd {
            command.current_dir(dir);
        }
        if let Some(user) = &self.user {
            user.apply(&mut command);
        }
        let child = command
            .spawn()
            .map_err(|e| spawn_error(format!("cannot start agent {:?}: {e}", self.program)))?;
        let cgroup = child
            .id()
            .and_then(|pid| super::tree::Cgroup::adopt(&marker, pid));
        let mut io = AgentIo::from_child(child)?;
        io.marker = Some(marker);
        io.cgroup = cgroup;
        Ok(io)
    }
}

#[async_trait]
impl AgentLauncher for AgentCommand {
    async fn launch(&self) -> Result<AgentIo, AgentError> {
        self.spawn()
    }
}

/// Kills an agent's whole process tree when dropped: its cgroup where it has one,
/// then [`super::tree::kill_tree`] (the child itself is also killed by tokio's
/// `kill_on_drop`).
#[derive(Debug)]
pub(crate) struct TreeGuard {
    pub(crate) pid: Option<u32>,
    pub(crate) marker: Option<String>,
    pub(crate) cgroup: Option<super::tree::Cgroup>,
}

impl Drop for TreeGuard {
    fn drop(&mut self) {
        if let Some(cgroup) = self.cgroup.take() {
            cgroup.kill();
            cgroup.remove();
        }
        if let Some(pid) = self.pid {
            let killed = super::tree::kill_tree(pid, self.marker.as_deref());
            tracing::debug!(pid, killed, "stopped the agent's process tree");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry() {
        let check = |name: &str, program: &str, args: &[&str]| {
            let command = AgentCommand::known(name).unwrap();
            assert_eq!(command.program(), program);
            assert_eq!(command.args(), args);
        };
        check("claude", "claude-agent-acp", &[]);
        check("codex", "codex-acp", &[]);
        check("gemini", "gemini", &["--acp"]);
        check("opencode", "opencode", &["acp"]);
        assert!(AgentCommand::known("vim").is_none());
    }

    #[test]
    fn debug_hides_env_values() {
        let command =
            AgentCommand::new("agent").with_env("ANTHROPIC_API_KEY", Secret::new("sk-ant-123"));
        let text = format!("{command:?}");
        assert!(text.contains("ANTHROPIC_API_KEY"));
        assert!(!text.contains("sk-ant-123"));
    }

    fn os(pairs: &[(&str, &str)]) -> Vec<(std::ffi::OsString, std::ffi::OsString)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect()
    }

    #[test]
    fn the_environment_is_the_allow_list_and_the_given_variables() {
        let parent = os(&[
            ("PATH", "/usr/bin"),
            ("HOME", "/home/sam"),
            ("SAM_API_TOKEN", "canary-api-token"),
            ("SAM_CREDENTIAL_KEY", "canary-credential-key"),
            ("SAM_USER_DATA", "/var/lib/sam/user-data"),
            ("HCLOUD_TOKEN", "canary-hcloud"),
            ("DOCKER_HOST", "unix:///run/docker.sock"),
            ("ANTHROPIC_API_KEY", "canary-parent-key"),
        ]);
        let command = AgentCommand::new("agent")
            .with_env("ANTHROPIC_API_KEY", Secret::new("sk-ant-agent-own"))
            .with_env("SAM_AGENT_MODEL", Secret::new("opus"));
        let expected = os(&[
            ("PATH", "/usr/bin"),
            ("HOME", "/home/sam"),
            ("ANTHROPIC_API_KEY", "sk-ant-agent-own"),
            ("SAM_AGENT_MODEL", "opus"),
        ]);
        assert_eq!(command.environment(parent.clone()), expected);
        // The docker client keeps its own settings, and nothing more.
        let docker = command.in_container("docker", "c-1", None, None, "/workspace");
        let mut expected = expected;
        expected.insert(2, ("DOCKER_HOST".into(), "unix:///run/docker.sock".into()));
        assert_eq!(docker.environment(parent), expected);
    }

    /// A real process: it sees none of this process's variables but the allow-list.
    /// Cargo gives every test process its `CARGO_*` variables, which stand in for the
    /// secrets of a node here.
    #[tokio::test]
    async fn a_real_agent_process_sees_only_its_environment() {
        use tokio::io::AsyncReadExt as _;
        assert!(
            std::env::var_os("CARGO_MANIFEST_DIR").is_some(),
            "the test runs under cargo, which sets CARGO_MANIFEST_DIR"
        );
        let mut io = AgentCommand::new("/bin/sh")
            .with_args(["-c", "env"])
            .with_env("ANTHROPIC_API_KEY", Secret::new("sk-ant-agent-own"))
            .spawn()
            .unwrap();
        let mut out = String::new();
        io.stdout.read_to_string(&mut out).await.unwrap();
        let names: Vec<&str> = out
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, _)| k)
            .collect();
        assert!(
            out.lines()
                .any(|l| l == "ANTHROPIC_API_KEY=sk-ant-agent-own"),
            "{out}"
        );
        for name in names {
            assert!(
                sam_core::environment::is_inherited(name, sam_core::environment::Inherit::Base)
                    || [
                        "ANTHROPIC_API_KEY",
                        super::super::tree::TREE_VAR,
                        "PWD",
                        "OLDPWD",
                        "SHLVL",
                        "_",
                    ]
                    .contains(&name),
                "{name} reached the agent:\n{out}"
            );
        }
    }

    #[tokio::test]
    async fn missing_program_is_a_spawn_error() {
        let err = AgentCommand::new("/nonexistent/agent").spawn().unwrap_err();
        assert_eq!(err.failure, AgentFailure::Spawn);
        assert!(err.message.contains("/nonexistent/agent"));
    }
}
