//! Workspace runtimes: where a workspace lives and how agents run in it.
//!
//! Both runtimes clone the repository into a directory per workspace, then choose the
//! profile ([`choose_profile`]) and report the *effective* one in a [`ReadyReport`]:
//! - [`HostRuntime`] (the embedded default) runs agents as host processes in the
//!   clone; it cannot build containers, so a repository's devcontainer is noted and
//!   not used.
//! - [`DockerRuntime`] starts the lightweight image with `docker run`, or the
//!   devcontainer with `devcontainer up`, and runs agents with `docker exec -i`.
//!
//! With an agent user ([`HostRuntime::with_user`], which the Docker runtime's host
//! part carries) each clone belongs to that user, git runs as it, and agents run as
//! it: as a host process, or with `docker exec --user <uid>:<gid>` and a home of
//! its own per workspace, mounted at [`CONTAINER_HOME`].

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use sam_core::{WorkspaceId, redact};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::vm::acp::AgentCommand;
use crate::vm::devcontainer::{self, DevcontainerConfig, DevcontainerKind};
use crate::vm::git::{GitAccess, GitConfig};
use crate::vm::user::AgentUser;
use crate::wire::{CreateWorkspace, ProfileRequest};

/// A request to create a workspace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkspaceRequest {
    /// The workspace.
    pub id: WorkspaceId,
    /// The repository to clone (a URL or a local path).
    pub repo: String,
    /// The branch to check out; the repository's default branch when `None`.
    #[serde(default)]
    pub branch: Option<String>,
    /// The requested profile.
    #[serde(default)]
    pub profile: ProfileRequest,
    /// A devcontainer configuration by name (`.devcontainer/<name>/devcontainer.json`).
    /// A name that does not exist is an error.
    #[serde(default)]
    pub devcontainer: Option<String>,
    /// The branch to create after the clone; the clone stays on its branch when `None`.
    #[serde(default)]
    pub output_branch: Option<String>,
    /// How git reaches a repository behind a GitHub installation or served by the
    /// control plane. Never serialized: it holds the workspace token.
    #[serde(skip)]
    pub credentials: Option<GitAccess>,
}

impl WorkspaceRequest {
    /// What the runtime prepares for a creation request: the repository cloned from
    /// `repo` (the request's own, or the control plane's git route for a served one)
    /// with `credentials`, how git reaches it.
    pub fn from_create(
        body: &CreateWorkspace,
        repo: String,
        credentials: Option<GitAccess>,
    ) -> Self {
        Self {
            id: body.id.clone(),
            repo,
            branch: body.branch.clone(),
            profile: body.profile,
            devcontainer: body.devcontainer.clone(),
            output_branch: body.output_branch.clone(),
            credentials,
        }
    }
}

/// The profile a workspace actually runs with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "profile", rename_all = "snake_case")]
pub enum EffectiveProfile {
    /// Agents run as host processes in the clone.
    Host,
    /// The lightweight image.
    Lightweight {
        /// The image.
        image: String,
    },
    /// A devcontainer configuration.
    Devcontainer {
        /// `None` for the default configuration.
        name: Option<String>,
        /// The file, relative to the repository.
        path: PathBuf,
        /// How it builds.
        kind: DevcontainerKind,
    },
}

/// Whether the workspace runs as asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReadyStatus {
    /// As asked.
    Running,
    /// With a fallback ([`ReadyReport::message`] says which).
    Recovery,
}

/// What the workspace-ready callback reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadyReport {
    /// The workspace.
    pub workspace_id: WorkspaceId,
    /// Running as asked, or with a fallback.
    pub status: ReadyStatus,
    /// The profile in effect.
    pub profile: EffectiveProfile,
    /// What happened, when it is not obvious (a fallback, an unused devcontainer).
    pub message: Option<String>,
}

/// A prepared workspace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workspace {
    /// The clone on the host.
    pub dir: PathBuf,
    /// What to report.
    pub report: ReadyReport,
    /// The container agents run in, for the Docker runtime.
    pub container: Option<Container>,
    /// The branch the clone started on (the base of a pull request).
    pub base_branch: Option<String>,
}

impl Workspace {
    /// Where the agent sees the workspace when that is not the clone on the host:
    /// the container's folder.
    pub fn agent_dir(&self) -> Option<PathBuf> {
        self.container
            .as_ref()
            .map(|container| PathBuf::from(&container.folder))
    }
}

/// A running workspace container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Container {
    /// The container id.
    pub id: String,
    /// The user agents run as.
    pub user: Option<String>,
    /// The workspace folder inside the container.
    pub folder: String,
}

/// Where workspaces live and how agents run in them.
///
/// # Contract
/// - `prepare` clones the repository and returns the *effective* profile; a
///   devcontainer requested by name that does not exist is an error, never a fallback.
/// - `agent_command` wraps an agent command so it runs inside the workspace, keeping
///   its credentials out of command lines.
/// - `remove` is idempotent: what is already gone counts as removed.
#[async_trait]
pub trait WorkspaceRuntime: Send + Sync + std::fmt::Debug {
    /// Creates the workspace.
    ///
    /// # Errors
    /// Clone or container failures, and devcontainer errors.
    async fn prepare(&self, request: &WorkspaceRequest) -> Result<Workspace>;

    /// The command that runs `agent` in `workspace`.
    fn agent_command(&self, workspace: &Workspace, agent: &AgentCommand) -> AgentCommand;

    /// Removes the workspace: its container, if any, then its directory.
    ///
    /// # Errors
    /// When the container or the directory cannot be removed.
    async fn remove(&self, workspace: &Workspace) -> Result<()>;

    /// How git runs for the clone on the host: the final commit and push use it.
    fn git(&self) -> &GitConfig;
}

/// Removes a workspace directory; a directory that is gone already is fine.
async fn remove_dir(dir: &Path) -> Result<()> {
    match tokio::fs::remove_dir_all(dir).await {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(Error::io(format!("removing {}", dir.display()), e))
        }
        _ => Ok(()),
    }
}

/// The profile decision, before any container exists.
#[derive(Debug, Clone, PartialEq)]
pub enum ProfileChoice {
    /// The lightweight image; `fallback` says why when a devcontainer was asked for.
    Lightweight {
        /// Why a requested devcontainer was not used.
        fallback: Option<String>,
    },
    /// This configuration.
    Devcontainer(Box<DevcontainerConfig>),
}

/// Chooses the profile for `request` in the clone at `repo_root`. Only the chosen
/// configuration is read.
///
/// # Errors
/// A named devcontainer that does not exist, or a configuration that cannot be read.
pub fn choose_profile(repo_root: &Path, request: &WorkspaceRequest) -> Result<ProfileChoice> {
    Ok(match locate_profile(repo_root, request)? {
        Some(location) => ProfileChoice::Devcontainer(Box::new(devcontainer::parse(
            &location.path,
            location.name,
        )?)),
        None => ProfileChoice::Lightweight {
            fallback: no_devcontainer_fallback(request),
        },
    })
}

/// The devcontainer file `request` asks for in the clone at `repo_root`, not read;
/// `None` means the lightweight image.
fn locate_profile(
    repo_root: &Path,
    request: &WorkspaceRequest,
) -> Result<Option<devcontainer::ConfigLocation>> {
    let requested = request.devcontainer.as_deref();
    if requested.is_none() && request.profile == ProfileRequest::Lightweight {
        return Ok(None);
    }
    Ok(devcontainer::locate(repo_root, requested)?)
}

/// Why the lightweight image is used when `request` wanted a devcontainer and the
/// repository has none.
fn no_devcontainer_fallback(request: &WorkspaceRequest) -> Option<String> {
    (request.devcontainer.is_none() && request.profile == ProfileRequest::Devcontainer).then(|| {
        "the repository has no devcontainer configuration at .devcontainer/devcontainer.json or \
         .devcontainer.json (a named one is used only when requested); using the lightweight image"
            .to_owned()
    })
}

/// Runs `program` with `args` and returns its standard output.
async fn run(program: &str, args: &[String], cwd: Option<&Path>) -> Result<String> {
    let mut command = tokio::process::Command::new(program);
    command.args(args).kill_on_drop(true);
    if let Some(cwd) = cwd {
        command.current_dir(cwd);
    }
    output_of(command, program).await
}

/// Runs a prepared `command` (named `program` in errors) and returns its standard
/// output; a failure keeps the end of its error output, redacted.
pub(crate) async fn output_of(
    mut command: tokio::process::Command,
    program: &str,
) -> Result<String> {
    let output = command
        .output()
        .await
        .map_err(|e| Error::io(format!("cannot run {program}"), e))?;
    checked_output(output, program)
}

/// The standard output of a finished process (named `program` in errors); a failure
/// keeps the end of its error output, redacted.
pub(crate) fn checked_output(output: std::process::Output, program: &str) -> Result<String> {
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let tail: String = stderr
            .trim()
            .chars()
            .rev()
            .take(2000)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        return Err(Error::Command {
            program: program.to_owned(),
            status: output.status.to_string(),
            stderr: redact(&tail).into_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The host runtime: a clone per workspace, agents as host processes.
///
/// With an agent user ([`HostRuntime::with_user`]) each workspace directory belongs
/// to that user, and git and the agents run as it.
#[derive(Debug, Clone)]
pub struct HostRuntime {
    root: PathBuf,
    git: GitConfig,
    user: Option<AgentUser>,
}

/// A fresh clone on its output branch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClonedRepo {
    /// The clone.
    pub dir: PathBuf,
    /// The branch the clone started on, before the output branch was created.
    pub base_branch: Option<String>,
}

impl HostRuntime {
    /// Workspaces in `root/<workspace id>`, cloned with `git` from `PATH`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            git: GitConfig::default(),
            user: None,
        }
    }

    /// Uses another `git` executable.
    #[must_use]
    pub fn with_git(mut self, git: impl Into<String>) -> Self {
        self.git = self.git.with_program(git);
        self
    }

    /// Runs git as `git` says (its program and credential helper), as the agent
    /// user when there is one.
    #[must_use]
    pub fn with_git_config(mut self, git: GitConfig) -> Self {
        self.git = match &self.user {
            Some(user) => git.with_user(user.clone()),
            None => git,
        };
        self
    }

    /// Gives each workspace directory to `user` and runs git and the agents as it.
    #[must_use]
    pub fn with_user(mut self, user: AgentUser) -> Self {
        self.git = self.git.with_user(user.clone());
        self.user = Some(user);
        self
    }

    /// The user agents and git run as; `None` for this process's.
    pub fn user(&self) -> Option<&AgentUser> {
        self.user.as_ref()
    }

    /// How this runtime runs git.
    pub fn git(&self) -> &GitConfig {
        &self.git
    }

    /// Clones the repository for `request` (with the access it carries, if any) and
    /// checks out its output branch, if any.
    ///
    /// # Errors
    /// A repository or branch that looks like an option, an existing workspace
    /// directory, a failed clone, or an output branch git refuses.
    pub async fn clone_repo(&self, request: &WorkspaceRequest) -> Result<ClonedRepo> {
        let dir = self.root.join(request.id.as_str());
        if dir.exists() {
            return Err(Error::InvalidRequest(format!(
                "workspace {} exists already",
                request.id
            )));
        }
        tokio::fs::create_dir_all(&self.root)
            .await
            .map_err(|e| Error::io(format!("creating {}", self.root.display()), e))?;
        if let Some(user) = &self.user {
            // Git runs as the user, so it clones into a directory the user owns
            // (cloning into an empty directory is allowed).
            tokio::fs::create_dir(&dir)
                .await
                .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
            user.take_ownership(&dir)?;
        }
        let cloned = self
            .git
            .clone(
                &request.repo,
                request.branch.as_deref(),
                &dir,
                request.credentials.as_ref(),
            )
            .await;
        if let Err(e) = cloned {
            // As git does with a directory it made: a failed clone leaves nothing,
            // so the workspace can be created again.
            if self.user.is_some() {
                remove_dir(&dir).await?;
            }
            return Err(e);
        }
        let base_branch = self.git.current_branch(&dir).await?;
        if let Some(branch) = &request.output_branch {
            self.git.create_branch(&dir, branch).await?;
        }
        Ok(ClonedRepo { dir, base_branch })
    }
}

#[async_trait]
impl WorkspaceRuntime for HostRuntime {
    async fn prepare(&self, request: &WorkspaceRequest) -> Result<Workspace> {
        let ClonedRepo { dir, base_branch } = self.clone_repo(request).await?;
        // The host runtime never uses a devcontainer, so it does not read one: a
        // broken configuration must not fail a task that does not use it.
        let (status, message) = match locate_profile(&dir, request)? {
            None => match no_devcontainer_fallback(request) {
                None => (ReadyStatus::Running, None),
                Some(why) => (ReadyStatus::Recovery, Some(why)),
            },
            Some(location) => {
                let asked = request.devcontainer.is_some()
                    || request.profile == ProfileRequest::Devcontainer;
                let note = format!(
                    "the host runtime runs agents on the host; devcontainer {} is not used",
                    location
                        .path
                        .strip_prefix(&dir)
                        .unwrap_or(&location.path)
                        .display()
                );
                (
                    if asked {
                        ReadyStatus::Recovery
                    } else {
                        ReadyStatus::Running
                    },
                    Some(note),
                )
            }
        };
        Ok(Workspace {
            report: ReadyReport {
                workspace_id: request.id.clone(),
                status,
                profile: EffectiveProfile::Host,
                message,
            },
            dir,
            container: None,
            base_branch,
        })
    }

    fn git(&self) -> &GitConfig {
        &self.git
    }

    fn agent_command(&self, workspace: &Workspace, agent: &AgentCommand) -> AgentCommand {
        let command = agent.clone().with_cwd(&workspace.dir);
        match &self.user {
            Some(user) => command.with_user(user.clone()),
            None => command,
        }
    }

    async fn remove(&self, workspace: &Workspace) -> Result<()> {
        remove_dir(&workspace.dir).await
    }
}

/// Where the agent user's home is mounted in a workspace container.
pub const CONTAINER_HOME: &str = "/home/sam-agent";

/// The Docker runtime: a container per workspace, agents through `docker exec -i`.
#[derive(Debug, Clone)]
pub struct DockerRuntime {
    host: HostRuntime,
    docker: String,
    devcontainer_cli: String,
    image: String,
}

impl DockerRuntime {
    /// Clones like `host`, then runs `image` (the lightweight profile) or the
    /// repository's devcontainer, with `docker` and `devcontainer` from `PATH`.
    pub fn new(host: HostRuntime, image: impl Into<String>) -> Self {
        Self {
            host,
            docker: "docker".to_owned(),
            devcontainer_cli: "devcontainer".to_owned(),
            image: image.into(),
        }
    }

    /// The lightweight profile's image.
    pub fn image(&self) -> &str {
        &self.image
    }

    /// How workspaces are cloned, and whose they are.
    pub fn host(&self) -> &HostRuntime {
        &self.host
    }

    /// Uses other `docker` and `devcontainer` executables.
    #[must_use]
    pub fn with_programs(
        mut self,
        docker: impl Into<String>,
        devcontainer_cli: impl Into<String>,
    ) -> Self {
        self.docker = docker.into();
        self.devcontainer_cli = devcontainer_cli.into();
        self
    }

    /// The agent user's home for workspace `id` on the host, beside the clones
    /// (`@` is in no workspace id, so no clone can take the name).
    fn home_dir(&self, id: &WorkspaceId) -> PathBuf {
        self.host.root.join(format!("{id}@home"))
    }

    /// Makes the agent user's home for `request`, when there is an agent user: a
    /// directory of its own, mounted at [`CONTAINER_HOME`], so agents that keep
    /// state in their home can write it (a numeric user has `/` for a home in a
    /// container, which it cannot write).
    async fn make_home(&self, request: &WorkspaceRequest) -> Result<Option<PathBuf>> {
        let Some(user) = self.host.user() else {
            return Ok(None);
        };
        let home = self.home_dir(&request.id);
        tokio::fs::create_dir_all(&home)
            .await
            .map_err(|e| Error::io(format!("creating {}", home.display()), e))?;
        user.take_ownership(&home)?;
        Ok(Some(home))
    }

    async fn run_lightweight(
        &self,
        request: &WorkspaceRequest,
        dir: &Path,
        home: Option<&Path>,
    ) -> Result<Container> {
        let folder = format!("/workspaces/{}", request.id);
        let mut args: Vec<String> = [
            "run",
            "--detach",
            "--init",
            "--name",
            &format!("sam-ws-{}", request.id),
            "--label",
            &format!("sam-workspace={}", request.id),
            "--volume",
            &format!("{}:{folder}", dir.display()),
            "--workdir",
            &folder,
        ]
        .into_iter()
        .map(ToOwned::to_owned)
        .collect();
        if let Some(home) = home {
            args.extend([
                "--volume".to_owned(),
                format!("{}:{CONTAINER_HOME}", home.display()),
            ]);
        }
        args.extend([
            self.image.clone(),
            "sleep".to_owned(),
            "infinity".to_owned(),
        ]);
        let id = run(&self.docker, &args, None).await?.trim().to_owned();
        if id.is_empty() {
            return Err(Error::Command {
                program: self.docker.clone(),
                status: "success".to_owned(),
                stderr: "docker run printed no container id".to_owned(),
            });
        }
        Ok(Container {
            id,
            user: None,
            folder,
        })
    }

    async fn devcontainer_up(
        &self,
        dir: &Path,
        config: &DevcontainerConfig,
        home: Option<&Path>,
    ) -> Result<Container> {
        let mut args: Vec<String> = vec![
            "up".to_owned(),
            "--workspace-folder".to_owned(),
            dir.display().to_string(),
            "--config".to_owned(),
            config.path.display().to_string(),
            "--docker-path".to_owned(),
            self.docker.clone(),
        ];
        if let Some(home) = home {
            args.extend([
                "--mount".to_owned(),
                format!(
                    "type=bind,source={},target={CONTAINER_HOME}",
                    home.display()
                ),
            ]);
        }
        let out = run(&self.devcontainer_cli, &args, Some(dir)).await?;
        // `devcontainer up` prints logs, then one JSON object with the outcome.
        let outcome = out
            .lines()
            .rev()
            .find_map(|l| serde_json::from_str::<serde_json::Value>(l.trim()).ok())
            .ok_or_else(|| Error::Command {
                program: self.devcontainer_cli.clone(),
                status: "success".to_owned(),
                stderr: "devcontainer up printed no outcome".to_owned(),
            })?;
        let field = |k: &str| {
            outcome
                .get(k)
                .and_then(serde_json::Value::as_str)
                .map(ToOwned::to_owned)
        };
        match (field("outcome").as_deref(), field("containerId")) {
            (Some("success"), Some(id)) => Ok(Container {
                id,
                user: field("remoteUser"),
                folder: field("remoteWorkspaceFolder").unwrap_or_else(|| "/workspaces".to_owned()),
            }),
            _ => Err(Error::Command {
                program: self.devcontainer_cli.clone(),
                status: "failed".to_owned(),
                stderr: redact(&outcome.to_string()).into_owned(),
            }),
        }
    }
}

#[async_trait]
impl WorkspaceRuntime for DockerRuntime {
    async fn prepare(&self, request: &WorkspaceRequest) -> Result<Workspace> {
        let ClonedRepo { dir, base_branch } = self.host.clone_repo(request).await?;
        let choice = choose_profile(&dir, request)?;
        let home = self.make_home(request).await?;
        let (container, profile, status, message) = match choice {
            ProfileChoice::Lightweight { fallback } => {
                let container = self.run_lightweight(request, &dir, home.as_deref()).await?;
                let status = if fallback.is_some() {
                    ReadyStatus::Recovery
                } else {
                    ReadyStatus::Running
                };
                (
                    container,
                    EffectiveProfile::Lightweight {
                        image: self.image.clone(),
                    },
                    status,
                    fallback,
                )
            }
            ProfileChoice::Devcontainer(config) => {
                let container = self.devcontainer_up(&dir, &config, home.as_deref()).await?;
                let profile = EffectiveProfile::Devcontainer {
                    name: config.name.clone(),
                    path: config
                        .path
                        .strip_prefix(&dir)
                        .unwrap_or(&config.path)
                        .to_path_buf(),
                    kind: config.kind,
                };
                (container, profile, ReadyStatus::Running, None)
            }
        };
        Ok(Workspace {
            report: ReadyReport {
                workspace_id: request.id.clone(),
                status,
                profile,
                message,
            },
            dir,
            container: Some(container),
            base_branch,
        })
    }

    fn git(&self) -> &GitConfig {
        &self.host.git
    }

    fn agent_command(&self, workspace: &Workspace, agent: &AgentCommand) -> AgentCommand {
        match &workspace.container {
            Some(c) => {
                // The agent user, by its numeric ids, owns the mounted clone and is
                // never root, and its home is the one mounted for the workspace;
                // without one, the devcontainer's `remoteUser` and its home.
                let (user, home) = match self.host.user() {
                    Some(user) => (Some(user.container_user()), Some(CONTAINER_HOME)),
                    None => (c.user.clone(), None),
                };
                agent.in_container(&self.docker, &c.id, user.as_deref(), home, &c.folder)
            }
            None => self.host.agent_command(workspace, agent),
        }
    }

    async fn remove(&self, workspace: &Workspace) -> Result<()> {
        if let Some(container) = &workspace.container {
            // `docker rm --force` of a container that is gone fails; the directory
            // must go either way, so that failure is only logged.
            let args = ["rm", "--force", container.id.as_str()].map(ToOwned::to_owned);
            if let Err(e) = run(&self.docker, &args, None).await {
                tracing::warn!(container = %container.id, error = %e, "could not remove the workspace container");
            }
        }
        remove_dir(&self.home_dir(&workspace.report.workspace_id)).await?;
        remove_dir(&workspace.dir).await
    }
}

#[cfg(test)]
mod tests;
