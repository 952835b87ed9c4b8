//! Whose intent a task carries: the project, agent profile and user whose settings
//! feed its layers, and the credentials it runs with.
//!
//! Nothing is guessed or defaulted silently: a project with profiles needs one named,
//! a project with agents configured but no profile is refused with a message that
//! says to create one, and no profile is ever created implicitly.

use std::collections::BTreeMap;

use crate::control::{ControlPlane, LayerSettings, SubmitRequest, invalid, missing};
use crate::credential::{
    CredentialError, CredentialOwner, CredentialRecord, CredentialTarget, agent_env_var,
    resolve_credential,
};
use crate::failure::Error;
use crate::model::{ProjectId, UserId};
use crate::project::{AgentProfileRecord, ProjectRecord};
use crate::reservation::Layer;
use crate::secret::Secret;
use crate::store::TaskRecord;

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
    pub(super) async fn check_no_profile_needed(
        &self,
        project: &ProjectRecord,
    ) -> Result<(), Error> {
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

    pub(super) async fn find_profile(
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

    pub(super) async fn require_project(&self, id: &ProjectId) -> Result<ProjectRecord, Error> {
        self.store
            .get_project(id)
            .await?
            .ok_or_else(|| missing(format_args!("project {id}")))
    }

    pub(super) fn cipher(&self) -> Result<&crate::credential::CredentialCipher, Error> {
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
    pub(super) fn agent_credential(
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

    pub(super) fn check_agent(&self, settings: &LayerSettings) -> Result<(), Error> {
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
}
