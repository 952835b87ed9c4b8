//! Users, projects, agent profiles, credentials and GitHub installation links: the
//! records a task's layers and credentials come from.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::control::{ControlPlane, LayerSettings, invalid, missing};
use crate::credential::{
    CredentialKind, CredentialOwner, CredentialRecord, CredentialTarget, CredentialView,
    SetupChoices, SetupStatus, agent_env_var, check_credential, setup_status,
};
use crate::error::{Classify, ErrorCategory};
use crate::failure::Error;
use crate::github::{
    ExternalInstallationId, GithubError, GithubInstallation, InstallationKey, RepositoryHost,
};
use crate::model::{ProfileId, ProjectId, UserId};
use crate::project::{AgentProfileRecord, ProjectRecord, ScalingOverrides, UserRecord};
use crate::secret::Secret;

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

impl ControlPlane {
    /// Users, projects, agent profiles, credentials and GitHub links.
    pub fn accounts(&self) -> Accounts<'_> {
        Accounts { cp: self }
    }
}

/// Users, projects, agent profiles, credentials and GitHub installation links, as
/// [`ControlPlane::accounts`] returns them: every change is checked (owners exist,
/// agents are known, secrets fit their target) before it is written.
#[derive(Debug, Clone, Copy)]
pub struct Accounts<'a> {
    cp: &'a ControlPlane,
}

impl Accounts<'_> {
    /// Creates a user.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming the field; store failures.
    pub async fn create_user(&self, input: &UserInput) -> Result<UserRecord, Error> {
        let now = self.cp.clock.now();
        let user = UserRecord {
            id: self.cp.new_id("u")?,
            name: input.name.clone(),
            settings: input.settings.clone(),
            created_at: now,
            updated_at: now,
        };
        user.validate()?;
        self.cp.check_agent(&user.settings)?;
        self.cp.store.put_user(&user).await?;
        Ok(user)
    }

    /// Replaces a user's name and settings.
    ///
    /// # Errors
    /// `not_found` for an unknown user; as [`Accounts::create_user`].
    pub async fn update_user(&self, id: &UserId, input: &UserInput) -> Result<UserRecord, Error> {
        let mut user = self
            .cp
            .store
            .get_user(id)
            .await?
            .ok_or_else(|| missing(format_args!("user {id}")))?;
        user.name.clone_from(&input.name);
        user.settings = input.settings.clone();
        user.updated_at = self.cp.clock.now();
        user.validate()?;
        self.cp.check_agent(&user.settings)?;
        self.cp.store.put_user(&user).await?;
        Ok(user)
    }

    /// Reads a user.
    ///
    /// # Errors
    /// Store failures.
    pub async fn get_user(&self, id: &UserId) -> Result<Option<UserRecord>, Error> {
        Ok(self.cp.store.get_user(id).await?)
    }

    pub(super) fn project_from(
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
            updated_at: self.cp.clock.now(),
        };
        project.validate()?;
        self.cp.check_agent(&project.settings)?;
        Ok(project)
    }

    pub(super) async fn check_owner(&self, owner: Option<&UserId>) -> Result<(), Error> {
        if let Some(owner) = owner
            && self.cp.store.get_user(owner).await?.is_none()
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
        let project = self.project_from(self.cp.new_id("p")?, input, self.cp.clock.now())?;
        self.check_owner(project.owner.as_ref()).await?;
        self.cp.store.put_project(&project).await?;
        Ok(project)
    }

    /// Replaces a project's fields.
    ///
    /// # Errors
    /// `not_found` for an unknown project; as [`Accounts::create_project`].
    pub async fn update_project(
        &self,
        id: &ProjectId,
        input: &ProjectInput,
    ) -> Result<ProjectRecord, Error> {
        let current = self.cp.require_project(id).await?;
        let project = self.project_from(id.clone(), input, current.created_at)?;
        self.check_owner(project.owner.as_ref()).await?;
        self.cp.store.put_project(&project).await?;
        Ok(project)
    }

    /// Reads a project.
    ///
    /// # Errors
    /// Store failures.
    pub async fn get_project(&self, id: &ProjectId) -> Result<Option<ProjectRecord>, Error> {
        Ok(self.cp.store.get_project(id).await?)
    }

    /// Lists every project, oldest first.
    ///
    /// # Errors
    /// Store failures.
    pub async fn list_projects(&self) -> Result<Vec<ProjectRecord>, Error> {
        Ok(self.cp.store.list_projects().await?)
    }

    /// Deletes a project with its profiles and credentials; its tasks keep their
    /// record.
    ///
    /// # Errors
    /// Store failures.
    pub async fn delete_project(&self, id: &ProjectId) -> Result<(), Error> {
        Ok(self.cp.store.delete_project(id).await?)
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
        self.cp.require_project(project).await?;
        let now = self.cp.clock.now();
        let profile = AgentProfileRecord {
            id: self.cp.new_id("pf")?,
            project_id: project.clone(),
            name: input.name.clone(),
            settings: input.settings.clone(),
            created_at: now,
            updated_at: now,
        };
        profile.validate()?;
        self.cp.check_agent(&profile.settings)?;
        self.cp.store.put_profile(&profile).await?;
        Ok(profile)
    }

    /// Replaces an agent profile's name and settings.
    ///
    /// # Errors
    /// `not_found` for a profile that is not the project's; as
    /// [`Accounts::create_profile`].
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
        profile.updated_at = self.cp.clock.now();
        profile.validate()?;
        self.cp.check_agent(&profile.settings)?;
        self.cp.store.put_profile(&profile).await?;
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
            .cp
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
        self.cp.require_project(project).await?;
        Ok(self.cp.store.list_profiles(project).await?)
    }

    /// Deletes a project's agent profile; deleting the last one leaves none.
    ///
    /// # Errors
    /// Store failures.
    pub async fn delete_profile(&self, project: &ProjectId, id: &ProfileId) -> Result<(), Error> {
        if self.get_profile(project, id).await?.is_some() {
            self.cp.store.delete_profile(id).await?;
        }
        Ok(())
    }

    pub(super) async fn check_credential_owner(
        &self,
        owner: &CredentialOwner,
    ) -> Result<(), Error> {
        match owner {
            CredentialOwner::User(id) => self.check_owner(Some(id)).await,
            CredentialOwner::Project(id) => self.cp.require_project(id).await.map(drop),
        }
    }

    /// Seals and stores a credential for a user or project, replacing the owner's
    /// credential for the same target. Returns what can be shown of it.
    ///
    /// # Errors
    /// [`CredentialError::NoKey`](crate::CredentialError::NoKey) without a configured key; [`CredentialError::Invalid`](crate::CredentialError::Invalid)
    /// for a kind that does not fit the target or a missing detail; `not_found` for an
    /// unknown owner; store failures.
    pub async fn set_credential(
        &self,
        owner: &CredentialOwner,
        input: &CredentialInput,
    ) -> Result<CredentialView, Error> {
        let cipher = self.cp.cipher()?;
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
        let now = self.cp.clock.now();
        let created_at = self
            .cp
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
        self.cp.store.put_credential(&record).await?;
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
            .cp
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
        Ok(self.cp.store.delete_credential(owner, target).await?)
    }

    /// Which parts of setup `user` configured: computed from the credentials of the
    /// user and of their projects (only `project`'s, when given), the user's GitHub
    /// installation links and the platform resources the user chose
    /// ([`Accounts::set_setup_choices`]) while the platform still offers them; never
    /// from what the platform offers alone.
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
                self.cp.require_project(id).await?;
                owners.push(CredentialOwner::Project(id.clone()));
            }
            None => owners.extend(
                self.cp
                    .store
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
            credentials.extend(self.cp.store.list_credentials(owner).await?);
        }
        let installations = self.cp.store.list_github_installations(user).await?;
        let chose = self
            .cp
            .store
            .setup_choices(user)
            .await?
            .ok_or_else(|| missing(format_args!("user {user}")))?;
        Ok(setup_status(
            &credentials,
            &installations,
            chose,
            self.platform_offers(),
        ))
    }

    /// What the platform offers a user in place of their own: its AI when it has
    /// an agent credential of its own ([`crate::ControlPlaneConfig::agent_credentials`]),
    /// its infrastructure when it has a provider of its own.
    pub fn platform_offers(&self) -> SetupChoices {
        SetupChoices {
            platform_ai: !self.cp.config.agent_credentials.is_empty(),
            platform_infrastructure: self.cp.providers.platform_kinds().next().is_some(),
        }
    }

    /// Records the platform resources `user` chose for their setup, replacing their
    /// earlier choices; returns them. A choice of something the platform does not
    /// offer ([`Accounts::platform_offers`]) is refused, so a user cannot count as
    /// set up on a platform AI or infrastructure that does not exist.
    ///
    /// # Errors
    /// `not_found` for an unknown user; [`Error::InvalidInput`] naming
    /// `platform_ai` or `platform_infrastructure` when the platform does not offer
    /// it; store failures.
    pub async fn set_setup_choices(
        &self,
        user: &UserId,
        choices: SetupChoices,
    ) -> Result<SetupChoices, Error> {
        self.check_owner(Some(user)).await?;
        let offers = self.platform_offers();
        if choices.platform_ai && !offers.platform_ai {
            return Err(invalid(
                "platform_ai",
                "this platform has no AI of its own to use (no agent credential is configured); \
                 set an agent credential of your own instead",
            ));
        }
        if choices.platform_infrastructure && !offers.platform_infrastructure {
            return Err(invalid(
                "platform_infrastructure",
                "this platform has no infrastructure of its own to use (no provider is \
                 configured); set a provider credential of your own instead",
            ));
        }
        self.cp.store.set_setup_choices(user, choices).await?;
        Ok(choices)
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
            .cp
            .store
            .get_github_installation(&key)
            .await?
            .map_or_else(|| self.cp.clock.now(), |link| link.created_at);
        let link = GithubInstallation {
            user_id: user.clone(),
            external_id: external,
            account,
            created_at,
        };
        self.cp.store.put_github_installation(&link).await?;
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
        Ok(self.cp.store.list_github_installations(user).await?)
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
        Ok(self.cp.store.delete_github_installation(&key).await?)
    }
}
