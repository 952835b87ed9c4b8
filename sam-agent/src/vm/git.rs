//! Git in workspaces: the clone, the output branch, the final commit and push, and
//! the credential helper that keeps tokens off the node.
//!
//! A repository behind a GitHub installation is cloned and pushed with git's
//! credential-helper protocol: git runs the helper ([`GitConfig::with_credential_helper`],
//! e.g. `sam-vm-agent git-credential`), which asks the control plane's
//! `POST /v1/workspaces/{id}/git-credential` route with the workspace's token
//! ([`credential_helper`]). The control plane answers with a short-lived installation
//! token for exactly that repository. The route and the workspace token reach the
//! helper through the environment of the one git process ([`CREDENTIAL_URL_ENV`],
//! [`CREDENTIAL_TOKEN_ENV`]), so nothing is written to disk: no token in
//! `.git/config`, and the remote URL stays the plain repository URL.
//!
//! A repository the control plane serves (a path on its machine, for a VM on that
//! machine: [`GitAccess::ControlPlane`]) is cloned from and pushed to the control
//! plane's `…/v1/workspaces/{id}/repo` route; git sends the workspace token as a
//! bearer header that it reads from its environment (`GIT_CONFIG_*`), never from its
//! command line or a file.

use std::path::{Path, PathBuf};
use std::time::Duration;

use sam_core::{ErrorCategory, Secret, TimeoutPolicy, WorkspaceId};
use url::Url;

use crate::error::{Error, Result};
use crate::vm::callbacks::{callback_policy, decode_answer, post_with_retry};
use crate::vm::runtime::checked_output;
use crate::vm::user::AgentUser;
use crate::wire::{GitCredentialRequest, GitCredentialResponse};

/// The variable that tells the credential helper which route to ask.
pub const CREDENTIAL_URL_ENV: &str = "SAM_GIT_CREDENTIAL_URL";
/// The variable that hands the credential helper the workspace token.
pub const CREDENTIAL_TOKEN_ENV: &str = "SAM_GIT_CREDENTIAL_TOKEN";

/// The author of the commit that records what an agent changed.
const AUTHOR_NAME: &str = "SAM agent";
const AUTHOR_EMAIL: &str = "sam-agent@users.noreply.github.com";

/// Where git asks for credentials: the control plane's credential route for one
/// workspace, and the workspace's token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialSource {
    /// `…/v1/workspaces/{id}/git-credential` on the control plane.
    pub url: Url,
    /// The workspace-scoped token.
    pub token: Secret,
}

/// How git reaches a repository that needs more than the transport itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GitAccess {
    /// A repository behind a GitHub installation: git's credential helper asks the
    /// control plane for a short-lived token.
    Helper(CredentialSource),
    /// A repository the control plane serves at its git route: the URL is built
    /// from the node's own control-plane URL, and git sends this workspace token.
    ControlPlane(Secret),
}

/// The most characters of the prompt's first line in a commit subject, so the
/// subject (`SAM: ` and an ellipsis included) stays within git's customary 72.
const SUBJECT_CHARS: usize = 66;

/// The message of the commit that records what the agent did for `prompt` in
/// `workspace`: the prompt's first non-blank line (control characters removed, at
/// most 66 characters) after `SAM: `, then a `SAM-Workspace:` trailer. Its size is
/// bounded whatever the prompt: a prompt of megabytes, or one holding NUL, still
/// commits.
pub fn commit_message(prompt: &str, workspace: &WorkspaceId) -> String {
    let first = prompt
        .lines()
        .map(|l| l.chars().filter(|c| !c.is_control()).collect::<String>())
        .map(|l| l.trim().to_owned())
        .find(|l| !l.is_empty())
        .unwrap_or_else(|| "agent changes".to_owned());
    let mut subject: String = first.chars().take(SUBJECT_CHARS).collect();
    if subject.len() < first.len() {
        subject.push('…');
    }
    format!("SAM: {subject}\n\nSAM-Workspace: {workspace}\n")
}

/// The transports git may use for a repository: `https`, `ssh` (URLs and
/// `user@host:path`), `file` for an absolute local path, and `http` to a loopback
/// host only (a test server on this machine). Git gets exactly this list in
/// `GIT_ALLOW_PROTOCOL`, so `ext::`, `fd::` and any other transport helper never run.
///
/// # Errors
/// [`Error::InvalidRequest`] for anything else: another transport, a relative path,
/// a leading `-`, control characters.
pub fn allowed_protocols(repo: &str) -> Result<&'static str> {
    let refuse = |why: &str| Err(Error::InvalidRequest(format!("repository {repo:?} {why}")));
    if repo.starts_with('-') {
        return refuse("must not start with '-'");
    }
    if repo.chars().any(char::is_control) {
        return refuse("must not hold control characters");
    }
    if repo.starts_with('/') {
        return Ok(FILE);
    }
    if let Some((scheme, _)) = repo.split_once("://") {
        return match scheme.to_ascii_lowercase().as_str() {
            "https" => Ok(HTTPS),
            "ssh" => Ok(SSH),
            "http" => match Url::parse(repo)
                .ok()
                .and_then(|u| u.host().map(|h| h.to_owned()))
            {
                Some(url::Host::Ipv4(ip)) if ip.is_loopback() => Ok(HTTP),
                Some(url::Host::Ipv6(ip)) if ip.is_loopback() => Ok(HTTP),
                Some(url::Host::Domain(d)) if d == "localhost" => Ok(HTTP),
                _ => refuse("uses plain http to a remote host: use https"),
            },
            _ => refuse("uses a transport other than https, ssh or a local path"),
        };
    }
    if repo.contains("::") {
        return refuse("names a transport helper (`<helper>::<address>`)");
    }
    // The scp-like form `user@host:path`: a host before the first ':', no '/' in it.
    match repo.split_once(':') {
        Some((host, path))
            if !host.is_empty()
                && !path.is_empty()
                && !host.contains('/')
                && host.contains('@') =>
        {
            Ok(SSH)
        }
        _ => refuse("is not an https or ssh URL, user@host:path, nor an absolute path"),
    }
}

/// The transports for `repo` reached with `access`: the control plane's own route
/// uses its URL's scheme (plain `http` too, to a QEMU VM's forwarded control plane),
/// anything else what [`allowed_protocols`] allows.
fn protocols_for(repo: &str, access: Option<&GitAccess>) -> Result<&'static str> {
    match access {
        Some(GitAccess::ControlPlane(_)) => match Url::parse(repo).as_ref().map(Url::scheme) {
            Ok("https") => Ok(HTTPS),
            Ok("http") => Ok(HTTP),
            _ => Err(Error::InvalidRequest(format!(
                "the control plane's git route {repo:?} is not an http(s) URL"
            ))),
        },
        _ => allowed_protocols(repo),
    }
}

const HTTPS: &str = "https";
const HTTP: &str = "http";
const SSH: &str = "ssh";
const FILE: &str = "file";
/// For git commands that reach no remote: no transport at all.
const NO_TRANSPORT: &str = "";

/// How the VM agent runs git.
///
/// Every git command starts from an empty environment with the allow-list of
/// [`sam_core::environment`] (and `SSH_AUTH_SOCK`), `GIT_TERMINAL_PROMPT=0`, and
/// `GIT_ALLOW_PROTOCOL` set to the transports the repository needs
/// ([`allowed_protocols`]; none for commands that reach no remote); it is killed,
/// with every process it started, after the timeout
/// ([`sam_core::TimeoutPolicy::git_command`] by default). With an agent user
/// ([`GitConfig::with_user`]) it runs as that user, so the clone belongs to the
/// user the agent runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GitConfig {
    program: String,
    helper: Option<(PathBuf, Vec<String>)>,
    timeout: Duration,
    user: Option<AgentUser>,
}

impl Default for GitConfig {
    fn default() -> Self {
        Self {
            program: "git".to_owned(),
            helper: None,
            timeout: TimeoutPolicy::default().git_command,
            user: None,
        }
    }
}

/// Quotes `value` for the POSIX shell git runs a `!` helper with.
fn shell_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

impl GitConfig {
    /// Uses another `git` executable.
    #[must_use]
    pub fn with_program(mut self, program: impl Into<String>) -> Self {
        self.program = program.into();
        self
    }

    /// Kills a git command (and what it started) that runs longer than `timeout`.
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Runs git (and the credential helper it starts) as `user`.
    #[must_use]
    pub fn with_user(mut self, user: AgentUser) -> Self {
        self.user = Some(user);
        self
    }

    /// The user git runs as; `None` for this process's.
    pub fn user(&self) -> Option<&AgentUser> {
        self.user.as_ref()
    }

    /// The credential helper git runs for repositories behind an installation:
    /// `program` with `args`, to which git appends the operation (`get`, …).
    #[must_use]
    pub fn with_credential_helper(
        mut self,
        program: impl Into<PathBuf>,
        args: Vec<String>,
    ) -> Self {
        self.helper = Some((program.into(), args));
        self
    }

    /// A git command, in `dir` when given, using `credentials` when given, allowed the
    /// transports `protocols`.
    fn command(
        &self,
        dir: Option<&Path>,
        credentials: Option<&GitAccess>,
        protocols: &str,
    ) -> Result<tokio::process::Command> {
        let mut command = tokio::process::Command::new(&self.program);
        command.kill_on_drop(true).process_group(0);
        // Nothing of this process's environment but the allow-list; never prompt on
        // a terminal; only the transports the repository needs.
        command.env_clear();
        command.envs(sam_core::environment::inherited(
            std::env::vars_os(),
            sam_core::environment::Inherit::WithSshAgent,
        ));
        command.env("GIT_TERMINAL_PROMPT", "0");
        command.env("GIT_ALLOW_PROTOCOL", protocols);
        if let Some(user) = &self.user {
            user.apply(&mut command);
        }
        if let Some(dir) = dir {
            command.current_dir(dir);
        }
        if let Some(GitAccess::ControlPlane(token)) = credentials {
            // Configuration from the environment (git 2.31+): the header is neither on
            // the command line (`ps` shows it) nor in `.git/config`. No helper runs.
            command.env("GIT_CONFIG_COUNT", "2");
            command.env("GIT_CONFIG_KEY_0", "credential.helper");
            command.env("GIT_CONFIG_VALUE_0", "");
            command.env("GIT_CONFIG_KEY_1", "http.extraHeader");
            command.env(
                "GIT_CONFIG_VALUE_1",
                format!("Authorization: Bearer {}", token.expose()),
            );
        }
        if let Some(GitAccess::Helper(source)) = credentials {
            let (program, args) = self.helper.as_ref().ok_or_else(|| {
                Error::InvalidRequest(
                    "the repository needs the git credential helper, and none is configured"
                        .to_owned(),
                )
            })?;
            let mut helper = format!("!{}", shell_quote(&program.display().to_string()));
            for arg in args {
                helper.push(' ');
                helper.push_str(&shell_quote(arg));
            }
            // The empty value clears helpers from system and user configuration, so
            // only ours answers (and nothing stores the token).
            command.args(["-c", "credential.helper="]);
            command.args(["-c", &format!("credential.helper={helper}")]);
            command.args(["-c", "credential.useHttpPath=true"]);
            command.env(CREDENTIAL_URL_ENV, source.url.as_str());
            command.env(CREDENTIAL_TOKEN_ENV, source.token.expose());
        }
        Ok(command)
    }

    /// Runs git with `args` (allowed the transports `protocols`) and returns its
    /// standard output.
    async fn run(
        &self,
        dir: Option<&Path>,
        credentials: Option<&GitAccess>,
        protocols: &str,
        args: &[&str],
    ) -> Result<String> {
        self.run_with_input(dir, credentials, protocols, args, None)
            .await
    }

    /// Runs git with `args`, `input` on its standard input, and returns its standard
    /// output. Past the timeout, git and every process it started are killed.
    async fn run_with_input(
        &self,
        dir: Option<&Path>,
        credentials: Option<&GitAccess>,
        protocols: &str,
        args: &[&str],
        input: Option<&[u8]>,
    ) -> Result<String> {
        use tokio::io::AsyncWriteExt as _;
        let mut command = self.command(dir, credentials, protocols)?;
        command
            .args(args)
            .stdin(if input.is_some() {
                std::process::Stdio::piped()
            } else {
                std::process::Stdio::null()
            })
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let name = format!("git {}", args.first().copied().unwrap_or_default());
        let cannot_run = |e| Error::io(format!("cannot run {name}"), e);
        let mut child = command.spawn().map_err(cannot_run)?;
        let group = child
            .id()
            .and_then(|pid| i32::try_from(pid).ok())
            .and_then(rustix::process::Pid::from_raw);
        let stdin = child.stdin.take();
        let finished = async move {
            if let (Some(mut stdin), Some(input)) = (stdin, input) {
                stdin.write_all(input).await?;
            }
            child.wait_with_output().await
        };
        match tokio::time::timeout(self.timeout, finished).await {
            Ok(output) => {
                let output = output.map_err(cannot_run)?;
                Ok(checked_output(output, &name)?.trim().to_owned())
            }
            Err(_) => {
                // Git itself is killed as its handle drops; the helpers it started
                // (`git remote-fd`, ssh, …) are in its process group.
                if let Some(group) = group {
                    let _ =
                        rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
                }
                Err(Error::Command {
                    program: name,
                    status: format!("timed out after {:?}", self.timeout),
                    stderr: String::new(),
                })
            }
        }
    }

    /// Clones `repo` (a URL or a local path) into `dir`, on `branch` or the default,
    /// fetching that branch's history only.
    ///
    /// # Errors
    /// A repository or branch that looks like an option, or a failed clone.
    pub async fn clone(
        &self,
        repo: &str,
        branch: Option<&str>,
        dir: &Path,
        credentials: Option<&GitAccess>,
    ) -> Result<()> {
        let protocols = protocols_for(repo, credentials)?;
        if branch.is_some_and(|b| b.starts_with('-')) {
            return Err(Error::InvalidRequest(
                "repository and branch must not start with '-'".to_owned(),
            ));
        }
        let dir = dir.display().to_string();
        // `--no-local`: a local path is cloned through git's transport, as a URL is,
        // not by copying the source's `objects` directory file by file. That copy
        // races with pushes into the source (tasks push their output branches into
        // the repository others clone from): it walks a push's quarantine directory,
        // which vanishes when the push lands, and the clone fails ("failed to copy
        // file to …/tmp_objdir-incoming-…"). No effect on URLs.
        // `--single-branch`: only the history of the branch the task works on, so a
        // repository that collects many branches (every task pushes one) does not
        // make each clone slower; another branch is one `git fetch origin <branch>`
        // away.
        let mut args = vec!["clone", "--quiet", "--no-local", "--single-branch"];
        if let Some(branch) = branch {
            args.extend(["--branch", branch]);
        }
        args.extend(["--", repo, &dir]);
        self.run(None, credentials, protocols, &args)
            .await
            .map(drop)
    }

    /// The branch checked out in `dir`; `None` on a detached head.
    ///
    /// # Errors
    /// When git cannot run in `dir`.
    pub async fn current_branch(&self, dir: &Path) -> Result<Option<String>> {
        let name = self
            .run(
                Some(dir),
                None,
                NO_TRANSPORT,
                &["rev-parse", "--abbrev-ref", "HEAD"],
            )
            .await?;
        Ok((name != "HEAD" && !name.is_empty()).then_some(name))
    }

    /// Creates `branch` at the current commit and checks it out.
    ///
    /// # Errors
    /// A name git refuses, or a branch that exists already.
    pub async fn create_branch(&self, dir: &Path, branch: &str) -> Result<()> {
        if branch.starts_with('-') {
            return Err(Error::InvalidRequest(
                "a branch must not start with '-'".to_owned(),
            ));
        }
        self.run(
            Some(dir),
            None,
            NO_TRANSPORT,
            &["checkout", "--quiet", "-b", branch],
        )
        .await
        .map(drop)
    }

    /// Commits everything that changed in `dir` (new, changed and deleted files)
    /// with `message`; `false` when nothing changed. The message reaches git on its
    /// standard input (`commit -F -`), never on its command line.
    ///
    /// # Errors
    /// When git fails.
    pub async fn commit_all(&self, dir: &Path, message: &str) -> Result<bool> {
        self.run(Some(dir), None, NO_TRANSPORT, &["add", "--all"])
            .await?;
        let staged = self
            .run(
                Some(dir),
                None,
                NO_TRANSPORT,
                &["diff", "--cached", "--name-only"],
            )
            .await?;
        if staged.is_empty() {
            return Ok(false);
        }
        let name = format!("user.name={AUTHOR_NAME}");
        let email = format!("user.email={AUTHOR_EMAIL}");
        self.run_with_input(
            Some(dir),
            None,
            NO_TRANSPORT,
            &[
                "-c",
                &name,
                "-c",
                &email,
                "commit",
                "--quiet",
                "--no-verify",
                "-F",
                "-",
            ],
            Some(message.as_bytes()),
        )
        .await?;
        Ok(true)
    }

    /// The commit `HEAD` points at.
    ///
    /// # Errors
    /// When git fails (an empty repository has no `HEAD`).
    pub async fn head(&self, dir: &Path) -> Result<String> {
        self.run(Some(dir), None, NO_TRANSPORT, &["rev-parse", "HEAD"])
            .await
    }

    /// Pushes `branch` to `origin`.
    ///
    /// # Errors
    /// When the push is refused or the remote cannot be reached.
    pub async fn push(
        &self,
        dir: &Path,
        branch: &str,
        credentials: Option<&GitAccess>,
    ) -> Result<()> {
        let refspec = format!("refs/heads/{branch}:refs/heads/{branch}");
        // The remote is the repository the workspace was cloned from: the same
        // transports apply to it.
        let origin = self
            .run(
                Some(dir),
                None,
                NO_TRANSPORT,
                &["config", "--get", "remote.origin.url"],
            )
            .await?;
        let protocols = protocols_for(&origin, credentials)?;
        self.run(
            Some(dir),
            credentials,
            protocols,
            &["push", "--quiet", "--porcelain", "origin", &refspec],
        )
        .await
        .map(drop)
    }
}

/// Parses git's credential-helper input: `key=value` lines up to an empty line.
fn parse_credential_input(input: &str) -> Result<GitCredentialRequest> {
    let mut protocol = None;
    let mut host = None;
    let mut path = None;
    for line in input.lines() {
        if line.is_empty() {
            break;
        }
        match line.split_once('=') {
            Some(("protocol", v)) => protocol = Some(v.to_owned()),
            Some(("host", v)) => host = Some(v.to_owned()),
            Some(("path", v)) => path = Some(v.to_owned()),
            // Other attributes (`username`, `wwwauth[]`, `capability[]`) are not needed.
            _ => {}
        }
    }
    match (protocol, host) {
        (Some(protocol), Some(host)) => Ok(GitCredentialRequest {
            protocol,
            host,
            path,
        }),
        _ => Err(Error::InvalidRequest(
            "git sent no protocol and host to the credential helper".to_owned(),
        )),
    }
}

/// The git credential helper: answers git's `operation` for `input` (what git wrote
/// on the helper's standard input) and returns what to write on its standard output.
///
/// `get` asks the control plane at `source` (with the retries of the callbacks) and
/// answers `username=` and `password=`; `store` and `erase` answer nothing, so git
/// never keeps the token.
///
/// # Errors
/// Input without protocol and host; the control plane's refusal, classified.
pub async fn credential_helper(
    operation: &str,
    input: &str,
    source: &CredentialSource,
) -> Result<String> {
    if operation != "get" {
        return Ok(String::new());
    }
    let request = parse_credential_input(input)?;
    let text = post_with_retry(
        &reqwest::Client::new(),
        &callback_policy(),
        &source.url,
        || source.token.clone(),
        &request,
    )
    .await?;
    let answer: GitCredentialResponse = decode_answer("the credential answer", &text)?;
    if answer.username.contains('\n') || answer.password.contains('\n') {
        return Err(Error::Callback {
            category: ErrorCategory::InvalidConfig,
            status: None,
            message: "the credential answer contains a line break".to_owned(),
        });
    }
    Ok(format!(
        "username={}\npassword={}\n",
        answer.username, answer.password
    ))
}

/// The credential source from the environment git gives the helper.
///
/// # Errors
/// [`Error::InvalidRequest`] when [`CREDENTIAL_URL_ENV`] or [`CREDENTIAL_TOKEN_ENV`]
/// is missing or the URL is malformed.
pub fn credential_source_from_env() -> Result<CredentialSource> {
    let var = |name: &str| {
        std::env::var(name)
            .ok()
            .filter(|v| !v.is_empty())
            .ok_or_else(|| Error::InvalidRequest(format!("{name} is not set")))
    };
    let url = Url::parse(&var(CREDENTIAL_URL_ENV)?)
        .map_err(|e| Error::InvalidRequest(format!("{CREDENTIAL_URL_ENV}: {e}")))?;
    Ok(CredentialSource {
        url,
        token: Secret::new(var(CREDENTIAL_TOKEN_ENV)?),
    })
}

/// Runs the credential helper as a process: reads standard input, writes standard
/// output. This is what `sam-vm-agent git-credential <operation>` runs.
///
/// # Errors
/// As [`credential_helper`] and [`credential_source_from_env`]; failures to read
/// standard input or write standard output.
pub async fn run_credential_helper(operation: &str) -> Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut input = String::new();
    tokio::io::stdin()
        .read_to_string(&mut input)
        .await
        .map_err(|e| Error::io("reading the credential request", e))?;
    if operation != "get" {
        return Ok(());
    }
    let source = credential_source_from_env()?;
    let output = credential_helper(operation, &input, &source).await?;
    let mut stdout = tokio::io::stdout();
    stdout
        .write_all(output.as_bytes())
        .await
        .map_err(|e| Error::io("writing the credential", e))?;
    stdout
        .flush()
        .await
        .map_err(|e| Error::io("writing the credential", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credential_input_is_parsed_up_to_the_blank_line() {
        let parsed = parse_credential_input(
            "protocol=https\nhost=github.com\npath=a/b.git\nusername=x\n\nhost=evil\n",
        )
        .unwrap();
        assert_eq!(
            parsed,
            GitCredentialRequest {
                protocol: "https".into(),
                host: "github.com".into(),
                path: Some("a/b.git".into()),
            }
        );
        assert!(parse_credential_input("protocol=https\n").is_err());
        assert!(parse_credential_input("").is_err());
    }

    #[test]
    fn only_https_ssh_and_local_paths_are_cloned() {
        let check = |repo: &str, expected: Option<&str>| {
            assert_eq!(allowed_protocols(repo).ok(), expected, "{repo:?}");
        };
        check("https://github.com/o/r.git", Some("https"));
        check("HTTPS://github.com/o/r", Some("https"));
        check("ssh://git@github.com/o/r.git", Some("ssh"));
        check("git@github.com:o/r.git", Some("ssh"));
        check("/srv/repos/r", Some("file"));
        check("http://127.0.0.1:8080/r.git", Some("http"));
        check("http://localhost/r.git", Some("http"));
        check("http://[::1]:9/r.git", Some("http"));
        for hostile in [
            "fd::17",
            "ext::sh -c touch% /tmp/pwned",
            "--upload-pack=touch /tmp/pwned",
            "-u",
            "http://example.com/r.git",
            "file:///etc",
            "ftp://example.com/r",
            "git://example.com/r",
            "relative/path",
            "r",
            "",
            "github.com:o/r",
            "git@host::evil",
            "git@host:",
            "/srv/r\n--upload-pack=x",
            "https://github.com/o/r\0",
        ] {
            check(hostile, None);
        }
    }

    fn workspace() -> WorkspaceId {
        WorkspaceId::new("w-123").unwrap()
    }

    #[test]
    fn commit_messages_are_bounded() {
        let check = |prompt: &str, expected: &str| {
            assert_eq!(commit_message(prompt, &workspace()), expected, "{prompt:?}");
        };
        check(
            "Fix the readme\n\nAnd more details.",
            "SAM: Fix the readme\n\nSAM-Workspace: w-123\n",
        );
        check(
            "\n  \n  indented first  \nsecond",
            "SAM: indented first\n\nSAM-Workspace: w-123\n",
        );
        check(
            "nul\0 inside\0",
            "SAM: nul inside\n\nSAM-Workspace: w-123\n",
        );
        check("", "SAM: agent changes\n\nSAM-Workspace: w-123\n");
        check("\0\0\n\t", "SAM: agent changes\n\nSAM-Workspace: w-123\n");
        let huge = "é".repeat(1_500_000);
        let message = commit_message(&huge, &workspace());
        let subject = message.lines().next().unwrap();
        assert_eq!(subject.chars().count(), "SAM: ".len() + SUBJECT_CHARS + 1);
        assert!(subject.ends_with('…'));
        assert!(message.len() < 300);
    }

    /// A stand-in `git` that records its environment and arguments in `dir`, then
    /// runs `then` (a shell command).
    fn recording_git(dir: &Path, then: &str) -> GitConfig {
        use std::os::unix::fs::PermissionsExt as _;
        let script = dir.join("git");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\nenv > '{env}'\nprintf '%s\\n' \"$@\" > '{args}'\ncat > '{stdin}'\n{then}\n",
                env = dir.join("env").display(),
                args = dir.join("args").display(),
                stdin = dir.join("stdin").display(),
            ),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        GitConfig::default().with_program(script.display().to_string())
    }

    fn recorded_env(dir: &Path) -> Vec<(String, String)> {
        std::fs::read_to_string(dir.join("env"))
            .unwrap()
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    /// Git starts from an empty environment with the allow-list, never prompts, and
    /// may use only the transports the repository needs: `file` for a local path,
    /// none for commands that reach no remote. Cargo's `CARGO_*` variables stand in
    /// for the node's secrets.
    #[tokio::test]
    async fn git_gets_a_clean_environment_and_only_the_transports_it_needs() {
        assert!(
            std::env::var_os("CARGO_MANIFEST_DIR").is_some(),
            "run under cargo"
        );
        let dir = tempfile::tempdir().unwrap();
        let git = recording_git(dir.path(), "echo 0123abcd");
        let check = |expected_protocols: &str| {
            let env = recorded_env(dir.path());
            let get = |name: &str| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
            assert_eq!(
                get("GIT_ALLOW_PROTOCOL"),
                Some(expected_protocols),
                "{env:?}"
            );
            assert_eq!(get("GIT_TERMINAL_PROMPT"), Some("0"));
            for (name, _) in &env {
                assert!(
                    sam_core::environment::is_inherited(
                        name,
                        sam_core::environment::Inherit::WithSshAgent
                    ) || name.starts_with("GIT_")
                        || ["PWD", "OLDPWD", "SHLVL", "_"].contains(&name.as_str()),
                    "{name} reached git"
                );
            }
        };
        assert_eq!(git.head(dir.path()).await.unwrap(), "0123abcd");
        check("");
        git.clone("/srv/repo", None, &dir.path().join("clone"), None)
            .await
            .unwrap();
        check("file");
        git.clone(
            "https://example.com/r.git",
            None,
            &dir.path().join("c"),
            None,
        )
        .await
        .unwrap();
        check("https");
        let refused = git.clone("fd::17", None, &dir.path().join("c"), None).await;
        assert!(
            matches!(refused, Err(Error::InvalidRequest(_))),
            "{refused:?}"
        );
    }

    /// The message goes through standard input, whatever its size: a command line
    /// holds about 2 MB at most, and NUL not at all.
    #[tokio::test]
    async fn the_commit_message_never_goes_on_the_command_line() {
        let dir = tempfile::tempdir().unwrap();
        // `diff --cached` must list something for the commit to run.
        let git = recording_git(dir.path(), "echo changed.txt");
        let message = commit_message(&"x".repeat(1_500_000), &workspace());
        assert!(git.commit_all(dir.path(), &message).await.unwrap());
        let args = std::fs::read_to_string(dir.path().join("args")).unwrap();
        assert!(
            args.ends_with("commit\n--quiet\n--no-verify\n-F\n-\n"),
            "{args}"
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join("stdin")).unwrap(),
            message
        );
    }

    /// A git command that hangs (a transport waiting for ever) is killed at the
    /// timeout, with the processes it started.
    #[tokio::test]
    async fn a_hanging_git_command_is_killed_with_its_children() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("child.pid");
        let git = recording_git(
            dir.path(),
            &format!("sleep 60 & echo $! > '{}'; wait", pid_file.display()),
        )
        .with_timeout(Duration::from_millis(300));
        let started = tokio::time::Instant::now();
        let err = git.head(dir.path()).await.unwrap_err();
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
        assert!(err.to_string().contains("timed out"), "{err}");
        let pid = std::fs::read_to_string(&pid_file).unwrap();
        let proc = PathBuf::from(format!("/proc/{}", pid.trim()));
        let mut gone = false;
        for _ in 0..200 {
            // A killed child not yet reaped by its (killed) parent is a zombie.
            let state = std::fs::read_to_string(proc.join("stat")).unwrap_or_default();
            let state = state
                .rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .chars()
                .next();
            if matches!(state, None | Some('Z' | 'X')) {
                gone = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(gone, "the grandchild {pid} was killed");
    }

    #[test]
    fn helper_commands_are_shell_quoted() {
        assert_eq!(shell_quote("/opt/sam agent/bin"), "'/opt/sam agent/bin'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }
}
