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

use std::path::{Path, PathBuf};

use sam_core::{ErrorCategory, Secret};
use serde::{Deserialize, Serialize};
use url::Url;

use crate::callbacks::{callback_policy, decode_answer, post_with_retry};
use crate::error::{Error, Result};
use crate::runtime::output_of;

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

/// The body of `POST /v1/workspaces/{id}/git-credential`: what git asked about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GitCredentialRequest {
    /// `https` (or `http` to a loopback host).
    pub protocol: String,
    /// The host, with its port when git names one.
    pub host: String,
    /// The repository path, when git sends it (`credential.useHttpPath`).
    #[serde(default)]
    pub path: Option<String>,
}

/// The answer of the credential route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GitCredentialResponse {
    /// The user name git sends.
    pub username: String,
    /// The short-lived token.
    pub password: String,
    /// When it expires (RFC 3339).
    pub expires_at: chrono::DateTime<chrono::Utc>,
}

/// The answer of `POST /v1/workspaces/{id}/pull-request`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullRequestCreated {
    /// The pull request's web URL.
    pub url: String,
}

/// The message of the commit that records what the agent did for `prompt`: its
/// first line, at most 72 characters, after `SAM: `.
pub fn commit_message(prompt: &str) -> String {
    let first = prompt
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("agent changes");
    let mut subject: String = first.chars().take(66).collect();
    if subject.len() < first.len() {
        subject.push('…');
    }
    format!("SAM: {subject}\n\n{}", prompt.trim())
}

/// How the VM agent runs git.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GitConfig {
    program: String,
    helper: Option<(PathBuf, Vec<String>)>,
}

impl Default for GitConfig {
    fn default() -> Self {
        Self {
            program: "git".to_owned(),
            helper: None,
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

    /// A git command, in `dir` when given, using `credentials` when given.
    fn command(
        &self,
        dir: Option<&Path>,
        credentials: Option<&CredentialSource>,
    ) -> Result<tokio::process::Command> {
        let mut command = tokio::process::Command::new(&self.program);
        command.kill_on_drop(true);
        // Never prompt on a terminal, and never read credentials a user configured.
        command.env("GIT_TERMINAL_PROMPT", "0");
        command.env_remove(CREDENTIAL_URL_ENV);
        command.env_remove(CREDENTIAL_TOKEN_ENV);
        if let Some(dir) = dir {
            command.current_dir(dir);
        }
        if let Some(source) = credentials {
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

    /// Runs git with `args` and returns its standard output.
    async fn run(
        &self,
        dir: Option<&Path>,
        credentials: Option<&CredentialSource>,
        args: &[&str],
    ) -> Result<String> {
        let mut command = self.command(dir, credentials)?;
        command.args(args);
        let name = format!("git {}", args.first().copied().unwrap_or_default());
        Ok(output_of(command, &name).await?.trim().to_owned())
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
        credentials: Option<&CredentialSource>,
    ) -> Result<()> {
        if repo.starts_with('-') || branch.is_some_and(|b| b.starts_with('-')) {
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
        self.run(None, credentials, &args).await.map(drop)
    }

    /// The branch checked out in `dir`; `None` on a detached head.
    ///
    /// # Errors
    /// When git cannot run in `dir`.
    pub async fn current_branch(&self, dir: &Path) -> Result<Option<String>> {
        let name = self
            .run(Some(dir), None, &["rev-parse", "--abbrev-ref", "HEAD"])
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
        self.run(Some(dir), None, &["checkout", "--quiet", "-b", branch])
            .await
            .map(drop)
    }

    /// Commits everything that changed in `dir` (new, changed and deleted files)
    /// with `message`; `false` when nothing changed.
    ///
    /// # Errors
    /// When git fails.
    pub async fn commit_all(&self, dir: &Path, message: &str) -> Result<bool> {
        self.run(Some(dir), None, &["add", "--all"]).await?;
        let staged = self
            .run(Some(dir), None, &["diff", "--cached", "--name-only"])
            .await?;
        if staged.is_empty() {
            return Ok(false);
        }
        let name = format!("user.name={AUTHOR_NAME}");
        let email = format!("user.email={AUTHOR_EMAIL}");
        self.run(
            Some(dir),
            None,
            &[
                "-c",
                &name,
                "-c",
                &email,
                "commit",
                "--quiet",
                "--no-verify",
                "-m",
                message,
            ],
        )
        .await?;
        Ok(true)
    }

    /// The commit `HEAD` points at.
    ///
    /// # Errors
    /// When git fails (an empty repository has no `HEAD`).
    pub async fn head(&self, dir: &Path) -> Result<String> {
        self.run(Some(dir), None, &["rev-parse", "HEAD"]).await
    }

    /// Pushes `branch` to `origin`.
    ///
    /// # Errors
    /// When the push is refused or the remote cannot be reached.
    pub async fn push(
        &self,
        dir: &Path,
        branch: &str,
        credentials: Option<&CredentialSource>,
    ) -> Result<()> {
        let refspec = format!("refs/heads/{branch}:refs/heads/{branch}");
        self.run(
            Some(dir),
            credentials,
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
    fn helper_commands_are_shell_quoted() {
        assert_eq!(shell_quote("/opt/sam agent/bin"), "'/opt/sam agent/bin'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }
}
