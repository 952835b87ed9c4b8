//! Submission: a request's layers resolved into a task record, with the source of
//! every setting and the reservation.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use crate::control::intent::Intent;
use crate::control::{
    ControlPlane, LayerSettings, TaskEventKind, WorkspaceProfile, invalid, missing,
};
use crate::credential::{CredentialOwner, CredentialTarget};
use crate::failure::Error;
use crate::fallback::SizeDescent;
use crate::github::{GithubAccess, RepoRef};
use crate::model::{Catalog, Location, ProviderKind};
use crate::model::{ExecutionStep, NodeId, ProjectId, TaskId, TaskStatus, UserId, VmSize};
use crate::project::AgentOptions;
use crate::reservation::Reservation;
use crate::reservation::{Layer, RequirementLayers, resolve_reservation};
use crate::store::{Lineage, TaskRecord, TaskSpec};

/// A task to submit.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SubmitRequest {
    /// Repository URL or local path.
    pub repo: String,
    /// Branch, if any.
    pub branch: Option<String>,
    /// The prompt.
    pub prompt: String,
    /// Settings by layer; the platform layer comes from [`ControlPlaneConfig::platform`](crate::ControlPlaneConfig::platform)
    /// and is ignored here.
    pub layers: BTreeMap<Layer, LayerSettings>,
    /// A node to run on, if the caller wants one.
    pub preferred_node: Option<NodeId>,
    /// The GitHub installation the repository is behind; the repository must then
    /// be its HTTPS URL, and the link must be the submitting user's (`user`, or the
    /// project's owner): a link is never shared between users.
    pub github: Option<GithubAccess>,
    /// The project the task belongs to: its settings are the `project` layer, and its
    /// repository is used when `repo` is empty.
    pub project: Option<ProjectId>,
    /// The project's agent profile to run with, by id or name: its settings are the
    /// `agent_profile` layer. Requires `project`.
    pub profile: Option<String>,
    /// The user submitting: their settings are the `user` layer (the project's owner
    /// when not given).
    pub user: Option<UserId>,
}

/// The value of one setting and the layer it came from.
pub(super) fn pick<T: Clone>(
    layers: &BTreeMap<Layer, LayerSettings>,
    platform: &LayerSettings,
    field: impl Fn(&LayerSettings) -> Option<T>,
) -> Option<(T, Layer)> {
    Layer::ALL
        .iter()
        .filter(|l| **l != Layer::Platform)
        .find_map(|l| layers.get(l).and_then(&field).map(|v| (v, *l)))
        .or_else(|| field(platform).map(|v| (v, Layer::Platform)))
}

impl ControlPlane {
    /// Validates and persists a task; returns its id. Every setting is resolved
    /// through the layers and its source recorded; so is the reservation.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] (and other `invalid_config` errors) for a request that
    /// can never run: a repository that is not `https://…`, `ssh://…`,
    /// `user@host:path` or (with a provider on this machine) an absolute path
    /// ([`crate::repository::check_repository`]), an empty prompt or one holding NUL;
    /// [`Error::TooLarge`] for a prompt over [`crate::MAX_PROMPT_BYTES`]; an
    /// unknown provider or agent, a named
    /// devcontainer with the lightweight profile, requirements no size can meet, an
    /// explicit size too small for them, a GitHub installation link of another user
    /// (field `github`). `not_found` for a GitHub installation link the submitting
    /// user has not made. Store failures as classified.
    pub async fn submit(&self, request: &SubmitRequest) -> Result<TaskId, Error> {
        self.submit_with(request, None).await
    }

    /// Submits a task, recording where it came from.
    pub(crate) async fn submit_with(
        &self,
        request: &SubmitRequest,
        lineage: Option<Lineage>,
    ) -> Result<TaskId, Error> {
        // The prompt first: a prompt that can never run is refused before anything
        // is read or touched.
        crate::repository::check_prompt(&request.prompt).map_err(|e| match e {
            crate::repository::PromptRefusal::TooLarge { size, limit } => Error::TooLarge {
                field: "prompt",
                size,
                limit,
            },
            crate::repository::PromptRefusal::Invalid(reason) => invalid("prompt", reason.0),
        })?;
        let intent = self.intent(request).await?;
        // The task's own repository wins; a project's is the default.
        let (repo, repo_source) = match &intent.project {
            Some(p) if request.repo.trim().is_empty() => (p.repo.clone(), Layer::Project),
            _ => (request.repo.clone(), Layer::Task),
        };
        if repo.trim().is_empty() {
            return Err(invalid("repo", "must not be empty"));
        }
        if let Some(access) = &request.github {
            RepoRef::parse_https(&repo)?;
            // A link is one user's: only that user's tasks may use it.
            let owner = access.installation.user();
            if intent.user.as_ref() != Some(owner) {
                return Err(invalid(
                    "github",
                    format!(
                        "GitHub installation {} is linked per user: only a task submitted by the user who linked it may use the link (submitting user: {})",
                        access.installation.external_id(),
                        intent
                            .user
                            .as_ref()
                            .map_or_else(|| "none".to_owned(), ToString::to_string)
                    ),
                ));
            }
            if self
                .store
                .get_github_installation(&access.installation)
                .await?
                .is_none()
            {
                return Err(missing(format_args!(
                    "user {owner}'s link to GitHub installation {}",
                    access.installation.external_id()
                )));
            }
        }
        let platform = &self.config.platform;
        let (provider, provider_source) = pick(&intent.layers, platform, |l| l.provider)
            .ok_or_else(|| invalid("provider", "no layer names a provider"))?;
        // Git reads many strings as commands or options: only the shapes a task may
        // name get past here, and a local path only where the nodes can reach it.
        crate::repository::check_repository(&repo, provider).map_err(|e| invalid("repo", e.0))?;
        // The provider's calls use the project's or user's own credential when one is
        // set; building it here opens the credential, so a wrong key or a credential
        // that does not fit fails the submission rather than the run.
        let provider_owner = intent
            .credential(&CredentialTarget::Provider(provider))
            .map(|c| c.owner.clone());
        let provider_impl = self.provider_for(provider, provider_owner.as_ref()).await?;
        let catalog = provider_impl.catalog();
        let resolved = resolve(
            &Resolution {
                request,
                intent,
                platform,
                agents: &self.config.agents,
                descent: self.config.descent,
                repo: (repo, repo_source),
                provider: (provider, provider_source),
                provider_owner,
                catalog,
            },
            |intent, agent| self.agent_credential_source(intent, agent),
        )?;
        let now = self.clock.now();
        let id: TaskId = self.new_id("t")?;
        let task = resolved.into_record(id.clone(), lineage, now);
        self.store.create_task(&task).await?;
        // The task is written: a failed transcript entry must not make the caller
        // submit it again.
        self.emit_logged(
            &id,
            TaskEventKind::Status {
                status: TaskStatus::Queued,
                error: None,
            },
        )
        .await;
        Ok(id)
    }
}

/// What a submission is resolved from: the request, the layers its project,
/// profile and user supplied, the platform's settings, and the choices the async
/// wrapper made before it (the repository and provider, each with its layer, and
/// the provider's catalog).
#[derive(Debug)]
pub(super) struct Resolution<'a> {
    pub(super) request: &'a SubmitRequest,
    pub(super) intent: Intent,
    pub(super) platform: &'a LayerSettings,
    pub(super) agents: &'a [String],
    pub(super) descent: SizeDescent,
    pub(super) repo: (String, Layer),
    pub(super) provider: (ProviderKind, Layer),
    pub(super) provider_owner: Option<CredentialOwner>,
    pub(super) catalog: &'a Catalog,
}

/// A resolved submission: everything of its task record but the id, the lineage
/// and the times.
#[derive(Debug)]
pub(super) struct Resolved {
    spec: TaskSpec,
    provider: ProviderKind,
    requested_size: VmSize,
    size_source: Layer,
    requested_location: Option<Location>,
    location_source: Layer,
    requirements: RequirementLayers,
    reservation: Reservation,
}

/// Resolves every setting of a submission through the layers, recording the
/// source of each, and checks the request can run: a known agent, no devcontainer
/// with the lightweight profile, requirements some size meets, a fallback plan
/// that exists. `agent_credential` tells the layer of the agent's credential (it
/// opens it, so a wrong key fails here). Pure: reads and writes nothing.
pub(super) fn resolve(
    input: &Resolution<'_>,
    agent_credential: impl Fn(&Intent, &str) -> Result<Option<Layer>, Error>,
) -> Result<Resolved, Error> {
    let Resolution {
        request,
        intent,
        platform,
        agents,
        descent,
        repo: (repo, repo_source),
        provider: (provider, provider_source),
        provider_owner,
        catalog,
    } = input;
    let (repo, repo_source, provider, provider_source) =
        (repo.clone(), *repo_source, *provider, *provider_source);
    let layers = &intent.layers;
    let (size, size_source) =
        pick(layers, platform, |l| l.size).unwrap_or((VmSize::Medium, Layer::Platform));
    let location = pick(layers, platform, |l| l.location.clone());
    let (agent, agent_source) = pick(layers, platform, |l| l.agent.clone())
        .ok_or_else(|| invalid("agent", "no layer names an agent"))?;
    if !agents.iter().any(|a| a == &agent) {
        return Err(invalid(
            "agent",
            format!(
                "unknown agent {agent:?}; expected one of {}",
                agents.join(", ")
            ),
        ));
    }
    let devcontainer = pick(layers, platform, |l| l.devcontainer.clone());
    let profile = pick(layers, platform, |l| l.workspace_profile);
    let model = pick(layers, platform, |l| l.model.clone());
    let effort = pick(layers, platform, |l| l.effort);
    let permission_mode = pick(layers, platform, |l| l.permission_mode);
    let system_prompt = pick(layers, platform, |l| l.system_prompt.clone());
    if let (Some((name, _)), Some((WorkspaceProfile::Lightweight, source))) =
        (&devcontainer, &profile)
    {
        return Err(invalid(
            "devcontainer",
            format!(
                "devcontainer {name:?} is named but the workspace profile (from {source}) is lightweight, which uses no devcontainer"
            ),
        ));
    }

    let mut requirements = RequirementLayers::default();
    for layer in Layer::ALL {
        let settings = if layer == Layer::Platform {
            Some(*platform)
        } else {
            layers.get(&layer)
        };
        if let Some(s) = settings {
            *requirements.layer_mut(layer) = s.requirements.clone();
        }
    }
    let reservation = resolve_reservation(&requirements)?;
    crate::reservation::smallest_size(catalog, &reservation)?;
    let (location, location_source) = match location {
        Some((l, s)) => (Some(l), s),
        None => (catalog.default_location.clone(), Layer::Platform),
    };
    // Build the plan once now, so an impossible request fails at submission.
    crate::fallback::FallbackPlan::new(&crate::fallback::PlanRequest {
        catalog,
        size,
        size_source,
        location: location.clone(),
        location_source,
        reservation: &reservation,
        descent: *descent,
    })?;

    let mut provenance = BTreeMap::new();
    provenance.insert("repo".to_owned(), repo_source);
    provenance.insert("provider".to_owned(), provider_source);
    provenance.insert("size".to_owned(), size_source);
    provenance.insert("location".to_owned(), location_source);
    provenance.insert("agent".to_owned(), agent_source);
    if let Some((_, s)) = &devcontainer {
        provenance.insert("devcontainer".to_owned(), *s);
    }
    for (name, source) in [
        ("workspace_profile", profile.as_ref().map(|(_, s)| *s)),
        ("model", model.as_ref().map(|(_, s)| *s)),
        ("effort", effort.as_ref().map(|(_, s)| *s)),
        ("permission_mode", permission_mode.as_ref().map(|(_, s)| *s)),
        ("system_prompt", system_prompt.as_ref().map(|(_, s)| *s)),
    ] {
        if let Some(source) = source {
            provenance.insert(name.to_owned(), source);
        }
    }
    provenance.insert(
        "provider_credential".to_owned(),
        provider_owner
            .as_ref()
            .map_or(Layer::Platform, CredentialOwner::layer),
    );
    if let Some(source) = agent_credential(intent, &agent)? {
        provenance.insert("agent_credential".to_owned(), source);
    }

    Ok(Resolved {
        spec: TaskSpec {
            repo,
            branch: request.branch.clone(),
            prompt: request.prompt.clone(),
            agent,
            workspace_profile: profile.map(|(p, _)| p.as_str().to_owned()),
            devcontainer: devcontainer.map(|(d, _)| d),
            preferred_node: request.preferred_node.clone(),
            provenance,
            github: request.github.clone(),
            agent_options: AgentOptions {
                model: model.map(|(m, _)| m),
                effort: effort.map(|(e, _)| e),
                permission_mode: permission_mode.map(|(p, _)| p),
                system_prompt: system_prompt.map(|(p, _)| p),
            },
            project: intent.project.as_ref().map(|p| p.id.clone()),
            profile: intent.profile.as_ref().map(|p| p.id.clone()),
            user: intent.user.clone(),
            submitted: request.layers.clone(),
            lineage: None,
            provider_credential_owner: provider_owner.clone(),
        },
        provider,
        requested_size: size,
        size_source,
        requested_location: location,
        location_source,
        requirements,
        reservation,
    })
}

impl Resolved {
    /// The queued task record, due now.
    pub(super) fn into_record(
        self,
        id: TaskId,
        lineage: Option<Lineage>,
        now: DateTime<Utc>,
    ) -> TaskRecord {
        let Self {
            mut spec,
            provider,
            requested_size,
            size_source,
            requested_location,
            location_source,
            requirements,
            reservation,
        } = self;
        spec.lineage = lineage;
        TaskRecord {
            id,
            status: TaskStatus::Queued,
            execution_step: ExecutionStep::NodeSelection,
            spec,
            provider,
            requested_size,
            size_source,
            requested_location,
            location_source,
            requirements,
            reservation,
            placement: None,
            provisioned_node_id: None,
            provisioned_size: None,
            provisioned_location: None,
            workspace_id: None,
            next_wake_at: Some(now),
            lease_owner: None,
            lease_expires_at: None,
            lease_epoch: 0,
            provisioning_started_at: None,
            capacity_passes: 0,
            node_replacements: 0,
            step_started_at: now,
            error: None,
            output: None,
            created_at: now,
            updated_at: now,
        }
    }
}
