//! Whose intent a task carries: the project, agent profile and user whose settings
//! feed its layers, the credentials it runs with, and the task it was retried or
//! forked from.
//!
//! Nothing is guessed or defaulted silently: a project with profiles needs one named,
//! a project with agents configured but no profile is refused with a message that
//! says to create one, and no profile is ever created implicitly.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::control::{ControlPlane, LayerSettings, SubmitRequest, invalid, missing};
use crate::credential::{
    CredentialError, CredentialKind, CredentialOwner, CredentialRecord, CredentialTarget,
    CredentialView, SetupStatus, agent_env_var, check_credential, resolve_credential, setup_status,
};
use crate::error::{Classify, Error, ErrorCategory};
use crate::github::{
    ExternalInstallationId, GithubError, GithubInstallation, InstallationKey, RepositoryHost,
};
use crate::model::{ProfileId, ProjectId, TaskId, UserId, WorkspaceId};
use crate::project::{AgentProfileRecord, ProjectRecord, ScalingOverrides, UserRecord};
use crate::reservation::Layer;
use crate::secret::Secret;
use crate::store::{Lineage, LineageKind, TaskRecord};

/// How many ancestors a retried or forked task may have.
pub const MAX_LINEAGE_DEPTH: u32 = 10;
/// Longest parent title shown in a task's source block, in characters.
const TITLE_CHARS: usize = 80;

/// A project to create, or the new state of one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectInput {
    /// A display name.
    pub name: String,
    /// Repository URL or local path.
    pub repo: String,
    /// The owning user, if any.
    #[serde(default)]
    pub owner: Option<UserId>,
    /// The project's defaults.
    #[serde(default)]
    pub settings: LayerSettings,
    /// Scaling overrides.
    #[serde(default)]
    pub scaling: ScalingOverrides,
}

/// An agent profile to create, or the new state of one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileInput {
    /// Its name, unique within the project.
    pub name: String,
    /// Its settings; `agent` is required.
    pub settings: LayerSettings,
}

/// A user to create, or the new state of one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserInput {
    /// A display name.
    pub name: String,
    /// The user's defaults.
    #[serde(default)]
    pub settings: LayerSettings,
}

/// A credential to store (write-only: it is never returned).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialInput {
    /// What it is for.
    pub target: CredentialTarget,
    /// What kind of secret it is.
    pub kind: CredentialKind,
    /// The secret.
    pub secret: Secret,
    /// Non-secret details (Scaleway's `project_id`).
    #[serde(default)]
    pub details: BTreeMap<String, String>,
}

/// Where a retried or forked task came from: shown only for tasks that have a parent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskSource {
    /// Retry or fork.
    pub kind: LineageKind,
    /// The parent's title: the first line of its prompt, shortened; `None` when the
    /// parent is gone.
    pub parent_title: Option<String>,
    /// The parent task.
    pub parent_task_id: TaskId,
    /// The parent's agent session, named by its workspace.
    pub parent_session_id: Option<WorkspaceId>,
}

/// The settings and credentials a submission resolved from its project, profile and user.
#[derive(Debug)]
pub(crate) struct Intent {
    pub(crate) layers: BTreeMap<Layer, LayerSettings>,
    pub(crate) project: Option<ProjectRecord>,
    pub(crate) profile: Option<AgentProfileRecord>,
    pub(crate) user: Option<UserId>,
    project_credentials: Vec<CredentialRecord>,
    user_credentials: Vec<CredentialRecord>,
}

impl Intent {
    /// The credential for `target`: the project's, else the user's.
    pub(crate) fn credential(&self, target: &CredentialTarget) -> Option<&CredentialRecord> {
        resolve_credential(target, &self.project_credentials, &self.user_credentials)
    }
}

fn title(prompt: &str) -> String {
    let line = prompt.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    let mut title: String = line.trim().chars().take(TITLE_CHARS).collect();
    if line.trim().chars().count() > TITLE_CHARS {
        title.push('…');
    }
    title
}

impl ControlPlane {
    /// Loads the project, profile and user a request names and turns them into layers.
    pub(crate) async fn intent(&self, request: &SubmitRequest) -> Result<Intent, Error> {
        let project = match &request.project {
            Some(id) => Some(self.require_project(id).await?),
            None => None,
        };
        let profile = match (&project, &request.profile) {
            (None, Some(_)) => {
                return Err(invalid("profile", "an agent profile needs its project"));
            }
            (Some(project), Some(name)) => Some(self.find_profile(&project.id, name).await?),
            (Some(project), None) => {
                self.check_no_profile_needed(project).await?;
                None
            }
            (None, None) => None,
        };
        let user = request
            .user
            .clone()
            .or_else(|| project.as_ref().and_then(|p| p.owner.clone()));
        let user_record = match &user {
            Some(id) => Some(
                self.store
                    .get_user(id)
                    .await?
                    .ok_or_else(|| missing(format_args!("user {id}")))?,
            ),
            None => None,
        };
        let mut layers = request.layers.clone();
        for (layer, settings) in [
            (
                Layer::AgentProfile,
                profile.as_ref().map(|p| p.settings.clone()),
            ),
            (Layer::Project, project.as_ref().map(ProjectRecord::layer)),
            (Layer::User, user_record.map(|u| u.settings)),
        ] {
            if let Some(settings) = settings
                && layers.insert(layer, settings).is_some()
            {
                return Err(invalid(
                    "layers",
                    format!(
                        "the {layer} layer comes from the named {layer}; do not send it as well"
                    ),
                ));
            }
        }
        let project_credentials = match &project {
            Some(p) => {
                self.store
                    .list_credentials(&CredentialOwner::Project(p.id.clone()))
                    .await?
            }
            None => Vec::new(),
        };
        let user_credentials = match &user {
            Some(u) => {
                self.store
                    .list_credentials(&CredentialOwner::User(u.clone()))
                    .await?
            }
            None => Vec::new(),
        };
        Ok(Intent {
            layers,
            project,
            profile,
            user,
            project_credentials,
            user_credentials,
        })
    }

    /// Refuses a submission to a project without a named profile when the project
    /// has profiles (which one is the user's choice) or has agents configured but no
    /// profile (the user must create one; none is created for them).
    async fn check_no_profile_needed(&self, project: &ProjectRecord) -> Result<(), Error> {
        let profiles = self.store.list_profiles(&project.id).await?;
        if !profiles.is_empty() {
            let names: Vec<&str> = profiles.iter().map(|p| p.name.as_str()).collect();
            return Err(invalid(
                "profile",
                format!(
                    "project {} has agent profiles ({}); name the one to run with",
                    project.id,
                    names.join(", ")
                ),
            ));
        }
        let agent_credentials = self
            .store
            .list_credentials(&CredentialOwner::Project(project.id.clone()))
            .await?
            .iter()
            .any(|c| matches!(c.target, CredentialTarget::Agent(_)));
        if project.settings.agent.is_some() || agent_credentials {
            return Err(invalid(
                "profile",
                format!(
                    "project {id} has agents configured but no agent profile; create one first (POST /v1/projects/{id}/profiles)",
                    id = project.id
                ),
            ));
        }
        Ok(())
    }

    async fn find_profile(
        &self,
        project: &ProjectId,
        name_or_id: &str,
    ) -> Result<AgentProfileRecord, Error> {
        let profiles = self.store.list_profiles(project).await?;
        profiles
            .into_iter()
            .find(|p| p.id.as_str() == name_or_id || p.name == name_or_id)
            .ok_or_else(|| {
                missing(format_args!(
                    "agent profile {name_or_id:?} of project {project}"
                ))
            })
    }

    async fn require_project(&self, id: &ProjectId) -> Result<ProjectRecord, Error> {
        self.store
            .get_project(id)
            .await?
            .ok_or_else(|| missing(format_args!("project {id}")))
    }

    fn cipher(&self) -> Result<&crate::credential::CredentialCipher, Error> {
        self.cipher
            .as_ref()
            .ok_or(Error::Credential(CredentialError::NoKey))
    }

    pub(crate) fn open(&self, credential: &CredentialRecord) -> Result<Secret, Error> {
        let context = CredentialRecord::context(&credential.owner, &credential.target);
        Ok(self.cipher()?.open(&credential.sealed, &context)?)
    }

    /// The agent credential a submission resolves to, as its environment variable and
    /// secret, and the layer it came from; `None` when no layer has one.
    fn agent_credential(
        &self,
        intent: &Intent,
        agent: &str,
    ) -> Result<Option<(&'static str, Secret, Layer)>, Error> {
        let (kind, secret, layer) =
            match intent.credential(&CredentialTarget::Agent(agent.to_owned())) {
                Some(c) => (c.kind, self.open(c)?, c.owner.layer()),
                None => match self.config.agent_credentials.get(agent) {
                    Some(p) => (p.kind, p.secret.clone(), Layer::Platform),
                    None => return Ok(None),
                },
            };
        let var = agent_env_var(agent, kind).ok_or_else(|| {
            invalid(
                "agent_credential",
                format!("agent {agent:?} takes no {} (from {layer})", kind.as_str()),
            )
        })?;
        Ok(Some((var, secret, layer)))
    }

    /// The layer a submission's agent credential comes from. The credential is
    /// opened, so a wrong key fails the submission rather than the run.
    pub(crate) fn agent_credential_source(
        &self,
        intent: &Intent,
        agent: &str,
    ) -> Result<Option<Layer>, Error> {
        Ok(self
            .agent_credential(intent, agent)?
            .map(|(_, _, layer)| layer))
    }

    /// The environment the task's agent process gets: its credential, resolved
    /// project → user → platform, in the variable the agent reads. It is built at
    /// dispatch and never persisted.
    pub(crate) async fn agent_env(
        &self,
        task: &TaskRecord,
    ) -> Result<Vec<(String, Secret)>, Error> {
        let request = SubmitRequest {
            project: task.spec.project.clone(),
            user: task.spec.user.clone(),
            ..SubmitRequest::default()
        };
        let intent = Intent {
            layers: BTreeMap::new(),
            project: None,
            profile: None,
            user: request.user.clone(),
            project_credentials: match &request.project {
                Some(p) => {
                    self.store
                        .list_credentials(&CredentialOwner::Project(p.clone()))
                        .await?
                }
                None => Vec::new(),
            },
            user_credentials: match &request.user {
                Some(u) => {
                    self.store
                        .list_credentials(&CredentialOwner::User(u.clone()))
                        .await?
                }
                None => Vec::new(),
            },
        };
        Ok(self
            .agent_credential(&intent, &task.spec.agent)?
            .map(|(var, secret, _)| vec![(var.to_owned(), secret)])
            .unwrap_or_default())
    }

    fn check_agent(&self, settings: &LayerSettings) -> Result<(), Error> {
        settings.validate()?;
        if let Some(agent) = &settings.agent
            && !self.config.agents.contains(agent)
        {
            return Err(invalid(
                "agent",
                format!(
                    "unknown agent {agent:?}; expected one of {}",
                    self.config.agents.join(", ")
                ),
            ));
        }
        if let Some(provider) = settings.provider {
            self.provider(provider)?;
        }
        Ok(())
    }

    /// Creates a user.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming the field; store failures.
    pub async fn create_user(&self, input: &UserInput) -> Result<UserRecord, Error> {
        let now = self.clock.now();
        let user = UserRecord {
            id: self.new_id("u")?,
            name: input.name.clone(),
            settings: input.settings.clone(),
            created_at: now,
            updated_at: now,
        };
        user.validate()?;
        self.check_agent(&user.settings)?;
        self.store.put_user(&user).await?;
        Ok(user)
    }

    /// Replaces a user's name and settings.
    ///
    /// # Errors
    /// `not_found` for an unknown user; as [`ControlPlane::create_user`].
    pub async fn update_user(&self, id: &UserId, input: &UserInput) -> Result<UserRecord, Error> {
        let mut user = self
            .store
            .get_user(id)
            .await?
            .ok_or_else(|| missing(format_args!("user {id}")))?;
        user.name.clone_from(&input.name);
        user.settings = input.settings.clone();
        user.updated_at = self.clock.now();
        user.validate()?;
        self.check_agent(&user.settings)?;
        self.store.put_user(&user).await?;
        Ok(user)
    }

    /// Reads a user.
    ///
    /// # Errors
    /// Store failures.
    pub async fn get_user(&self, id: &UserId) -> Result<Option<UserRecord>, Error> {
        Ok(self.store.get_user(id).await?)
    }

    fn project_from(
        &self,
        id: ProjectId,
        input: &ProjectInput,
        created_at: chrono::DateTime<chrono::Utc>,
    ) -> Result<ProjectRecord, Error> {
        let project = ProjectRecord {
            id,
            name: input.name.clone(),
            repo: input.repo.clone(),
            owner: input.owner.clone(),
            settings: input.settings.clone(),
            scaling: input.scaling,
            created_at,
            updated_at: self.clock.now(),
        };
        project.validate()?;
        self.check_agent(&project.settings)?;
        Ok(project)
    }

    async fn check_owner(&self, owner: Option<&UserId>) -> Result<(), Error> {
        if let Some(owner) = owner
            && self.store.get_user(owner).await?.is_none()
        {
            return Err(missing(format_args!("user {owner}")));
        }
        Ok(())
    }

    /// Creates a project. It starts with no agent profiles.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming the field (an out-of-range scaling override, an
    /// unknown agent or provider); `not_found` for an unknown owner; store failures.
    pub async fn create_project(&self, input: &ProjectInput) -> Result<ProjectRecord, Error> {
        let project = self.project_from(self.new_id("p")?, input, self.clock.now())?;
        self.check_owner(project.owner.as_ref()).await?;
        self.store.put_project(&project).await?;
        Ok(project)
    }

    /// Replaces a project's fields.
    ///
    /// # Errors
    /// `not_found` for an unknown project; as [`ControlPlane::create_project`].
    pub async fn update_project(
        &self,
        id: &ProjectId,
        input: &ProjectInput,
    ) -> Result<ProjectRecord, Error> {
        let current = self.require_project(id).await?;
        let project = self.project_from(id.clone(), input, current.created_at)?;
        self.check_owner(project.owner.as_ref()).await?;
        self.store.put_project(&project).await?;
        Ok(project)
    }

    /// Reads a project.
    ///
    /// # Errors
    /// Store failures.
    pub async fn get_project(&self, id: &ProjectId) -> Result<Option<ProjectRecord>, Error> {
        Ok(self.store.get_project(id).await?)
    }

    /// Lists every project, oldest first.
    ///
    /// # Errors
    /// Store failures.
    pub async fn list_projects(&self) -> Result<Vec<ProjectRecord>, Error> {
        Ok(self.store.list_projects().await?)
    }

    /// Deletes a project with its profiles and credentials; its tasks keep their
    /// record.
    ///
    /// # Errors
    /// Store failures.
    pub async fn delete_project(&self, id: &ProjectId) -> Result<(), Error> {
        Ok(self.store.delete_project(id).await?)
    }

    /// Creates an agent profile in a project.
    ///
    /// # Errors
    /// `not_found` for an unknown project; `already_exists` (conflict) for a name the
    /// project already uses; [`Error::InvalidInput`] naming the field.
    pub async fn create_profile(
        &self,
        project: &ProjectId,
        input: &ProfileInput,
    ) -> Result<AgentProfileRecord, Error> {
        self.require_project(project).await?;
        let now = self.clock.now();
        let profile = AgentProfileRecord {
            id: self.new_id("pf")?,
            project_id: project.clone(),
            name: input.name.clone(),
            settings: input.settings.clone(),
            created_at: now,
            updated_at: now,
        };
        profile.validate()?;
        self.check_agent(&profile.settings)?;
        self.store.put_profile(&profile).await?;
        Ok(profile)
    }

    /// Replaces an agent profile's name and settings.
    ///
    /// # Errors
    /// `not_found` for a profile that is not the project's; as
    /// [`ControlPlane::create_profile`].
    pub async fn update_profile(
        &self,
        project: &ProjectId,
        id: &ProfileId,
        input: &ProfileInput,
    ) -> Result<AgentProfileRecord, Error> {
        let mut profile = self
            .get_profile(project, id)
            .await?
            .ok_or_else(|| missing(format_args!("agent profile {id} of project {project}")))?;
        profile.name.clone_from(&input.name);
        profile.settings = input.settings.clone();
        profile.updated_at = self.clock.now();
        profile.validate()?;
        self.check_agent(&profile.settings)?;
        self.store.put_profile(&profile).await?;
        Ok(profile)
    }

    /// Reads a project's agent profile; `None` when it is not that project's.
    ///
    /// # Errors
    /// Store failures.
    pub async fn get_profile(
        &self,
        project: &ProjectId,
        id: &ProfileId,
    ) -> Result<Option<AgentProfileRecord>, Error> {
        Ok(self
            .store
            .get_profile(id)
            .await?
            .filter(|p| &p.project_id == project))
    }

    /// Lists a project's agent profiles, oldest first.
    ///
    /// # Errors
    /// `not_found` for an unknown project; store failures.
    pub async fn list_profiles(
        &self,
        project: &ProjectId,
    ) -> Result<Vec<AgentProfileRecord>, Error> {
        self.require_project(project).await?;
        Ok(self.store.list_profiles(project).await?)
    }

    /// Deletes a project's agent profile; deleting the last one leaves none.
    ///
    /// # Errors
    /// Store failures.
    pub async fn delete_profile(&self, project: &ProjectId, id: &ProfileId) -> Result<(), Error> {
        if self.get_profile(project, id).await?.is_some() {
            self.store.delete_profile(id).await?;
        }
        Ok(())
    }

    async fn check_credential_owner(&self, owner: &CredentialOwner) -> Result<(), Error> {
        match owner {
            CredentialOwner::User(id) => self.check_owner(Some(id)).await,
            CredentialOwner::Project(id) => self.require_project(id).await.map(drop),
        }
    }

    /// Seals and stores a credential for a user or project, replacing the owner's
    /// credential for the same target. Returns what can be shown of it.
    ///
    /// # Errors
    /// [`CredentialError::NoKey`] without a configured key; [`CredentialError::Invalid`]
    /// for a kind that does not fit the target or a missing detail; `not_found` for an
    /// unknown owner; store failures.
    pub async fn set_credential(
        &self,
        owner: &CredentialOwner,
        input: &CredentialInput,
    ) -> Result<CredentialView, Error> {
        let cipher = self.cipher()?;
        check_credential(&input.target, input.kind, &input.details)?;
        if let CredentialTarget::Agent(agent) = &input.target
            && agent_env_var(agent, input.kind).is_none()
        {
            return Err(invalid(
                "kind",
                format!("agent {agent:?} takes no {}", input.kind.as_str()),
            ));
        }
        self.check_credential_owner(owner).await?;
        let now = self.clock.now();
        let created_at = self
            .store
            .list_credentials(owner)
            .await?
            .into_iter()
            .find(|c| c.target == input.target)
            .map_or(now, |c| c.created_at);
        let record = CredentialRecord {
            owner: owner.clone(),
            target: input.target.clone(),
            kind: input.kind,
            sealed: cipher.seal(
                &input.secret,
                &CredentialRecord::context(owner, &input.target),
            )?,
            details: input.details.clone(),
            created_at,
            updated_at: now,
        };
        self.store.put_credential(&record).await?;
        Ok(record.view())
    }

    /// What an owner's credentials are: kind and target, never the secret.
    ///
    /// # Errors
    /// Store failures.
    pub async fn list_credentials(
        &self,
        owner: &CredentialOwner,
    ) -> Result<Vec<CredentialView>, Error> {
        Ok(self
            .store
            .list_credentials(owner)
            .await?
            .iter()
            .map(CredentialRecord::view)
            .collect())
    }

    /// Deletes an owner's credential for a target; succeeds when it is gone.
    ///
    /// # Errors
    /// Store failures.
    pub async fn delete_credential(
        &self,
        owner: &CredentialOwner,
        target: &CredentialTarget,
    ) -> Result<(), Error> {
        Ok(self.store.delete_credential(owner, target).await?)
    }

    /// Which of AI, cloud and repository access a user has configured, and how:
    /// from the user's credentials and those of the projects they own (or only
    /// `project`, when given) and the user's GitHub installation links, never from
    /// what the platform offers.
    ///
    /// # Errors
    /// `not_found` for an unknown user or project; store failures.
    pub async fn setup_status(
        &self,
        user: &UserId,
        project: Option<&ProjectId>,
    ) -> Result<SetupStatus, Error> {
        self.check_owner(Some(user)).await?;
        let mut owners = vec![CredentialOwner::User(user.clone())];
        match project {
            Some(id) => {
                self.require_project(id).await?;
                owners.push(CredentialOwner::Project(id.clone()));
            }
            None => owners.extend(
                self.store
                    .list_projects()
                    .await?
                    .into_iter()
                    .filter(|p| p.owner.as_ref() == Some(user))
                    .map(|p| CredentialOwner::Project(p.id))
                    .collect::<BTreeSet<_>>(),
            ),
        }
        let mut credentials = Vec::new();
        for owner in &owners {
            credentials.extend(self.store.list_credentials(owner).await?);
        }
        let installations = self.store.list_github_installations(user).await?;
        Ok(setup_status(&credentials, &installations))
    }

    /// Links `user` to the GitHub App installation `external`, after asking GitHub
    /// (`github`) that the App has it; returns the link. Linking again refreshes the
    /// account name and keeps when the link was first made. Two users of one
    /// organisation each link the installation for themselves: their links have
    /// different storage keys and the same external id.
    ///
    /// # Errors
    /// `not_found` for an unknown user, or (a [`GithubError`]) for an installation
    /// GitHub does not know; GitHub's other failures as classified (`invalid_config`
    /// when no App is configured); store failures.
    pub async fn link_github_installation(
        &self,
        github: &dyn RepositoryHost,
        user: &UserId,
        external: ExternalInstallationId,
    ) -> Result<GithubInstallation, Error> {
        self.check_owner(Some(user)).await?;
        let account =
            github
                .installation_account(external)
                .await
                .map_err(|e| match e.category() {
                    ErrorCategory::NotFound => Error::Github(GithubError::new(
                        ErrorCategory::NotFound,
                        format!(
                            "the GitHub App has no installation {external}: {}",
                            e.message()
                        ),
                    )),
                    _ => Error::Github(e),
                })?;
        let key = InstallationKey::new(user.clone(), external);
        let created_at = self
            .store
            .get_github_installation(&key)
            .await?
            .map_or_else(|| self.clock.now(), |link| link.created_at);
        let link = GithubInstallation {
            user_id: user.clone(),
            external_id: external,
            account,
            created_at,
        };
        self.store.put_github_installation(&link).await?;
        Ok(link)
    }

    /// The user's GitHub installation links, oldest first.
    ///
    /// # Errors
    /// `not_found` for an unknown user; store failures.
    pub async fn list_github_installations(
        &self,
        user: &UserId,
    ) -> Result<Vec<GithubInstallation>, Error> {
        self.check_owner(Some(user)).await?;
        Ok(self.store.list_github_installations(user).await?)
    }

    /// Removes the user's link to the installation `external`; other users' links to
    /// it stay. Succeeds when it is gone.
    ///
    /// # Errors
    /// Store failures.
    pub async fn unlink_github_installation(
        &self,
        user: &UserId,
        external: ExternalInstallationId,
    ) -> Result<(), Error> {
        let key = InstallationKey::new(user.clone(), external);
        Ok(self.store.delete_github_installation(&key).await?)
    }

    /// Runs a task's prompt again as a new task that records its parent.
    ///
    /// # Errors
    /// `not_found` for an unknown task; [`Error::InvalidInput`] for a task still
    /// running or past the lineage depth limit ([`MAX_LINEAGE_DEPTH`]); as
    /// [`ControlPlane::submit`].
    pub async fn retry(&self, id: &TaskId) -> Result<TaskId, Error> {
        let parent = self.require_task(id).await?;
        if !parent.status.is_terminal() {
            return Err(invalid(
                "task",
                format!(
                    "task {id} is still {}; only a finished task can be retried",
                    parent.status
                ),
            ));
        }
        let prompt = parent.spec.prompt.clone();
        self.derive(&parent, LineageKind::Retry, prompt).await
    }

    /// Continues from a task with a new prompt, as a new task that records its parent.
    ///
    /// # Errors
    /// `not_found` for an unknown task; [`Error::InvalidInput`] for an empty prompt or
    /// past the lineage depth limit ([`MAX_LINEAGE_DEPTH`]); as [`ControlPlane::submit`].
    pub async fn fork(&self, id: &TaskId, prompt: &str) -> Result<TaskId, Error> {
        let parent = self.require_task(id).await?;
        self.derive(&parent, LineageKind::Fork, prompt.to_owned())
            .await
    }

    async fn derive(
        &self,
        parent: &TaskRecord,
        kind: LineageKind,
        prompt: String,
    ) -> Result<TaskId, Error> {
        let depth = parent.spec.lineage.as_ref().map_or(0, |l| l.depth) + 1;
        if depth > MAX_LINEAGE_DEPTH {
            return Err(invalid(
                "task",
                format!(
                    "task {} already has {} ancestors; a task may have at most {MAX_LINEAGE_DEPTH}, so start a new task instead",
                    parent.id,
                    depth - 1
                ),
            ));
        }
        let request = SubmitRequest {
            repo: parent.spec.repo.clone(),
            branch: parent.spec.branch.clone(),
            prompt,
            layers: parent.spec.submitted.clone(),
            preferred_node: None,
            project: parent.spec.project.clone(),
            profile: parent.spec.profile.as_ref().map(|p| p.as_str().to_owned()),
            user: parent.spec.user.clone(),
            github: parent.spec.github.clone(),
        };
        let lineage = Lineage {
            kind,
            parent_task: parent.id.clone(),
            parent_session: parent.workspace_id.clone(),
            depth,
        };
        self.submit_with(&request, Some(lineage)).await
    }

    /// The source block of a retried or forked task; `None` for an original task.
    ///
    /// # Errors
    /// Store failures.
    pub async fn source(&self, task: &TaskRecord) -> Result<Option<TaskSource>, Error> {
        let Some(lineage) = &task.spec.lineage else {
            return Ok(None);
        };
        let parent = self.store.get_task(&lineage.parent_task).await?;
        Ok(Some(TaskSource {
            kind: lineage.kind,
            parent_title: parent.map(|p| title(&p.spec.prompt)),
            parent_task_id: lineage.parent_task.clone(),
            parent_session_id: lineage.parent_session.clone(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::title;

    #[test]
    fn titles_are_the_first_line_shortened() {
        assert_eq!(title("\n  Fix the build  \nmore"), "Fix the build");
        let long = "x".repeat(100);
        assert_eq!(title(&long).chars().count(), 81);
        assert_eq!(title(""), "");
    }
}
