//! The control plane: submission, callbacks, the durable task runner and its sweeps.
//!
//! [`ControlPlane`] is generic over the traits ([`Store`], [`Provider`], [`Scheduler`],
//! [`NodeAgent`]) and performs no IO of its own. Each task is a state machine
//! persisted in the store; [`ControlPlane::tick`] leases due tasks and advances each
//! by one step handler, which reads persisted state, acts idempotently, persists,
//! and sets the task's next wake-up. Several control planes can share one database:
//! the lease guarantees a task is never run by two of them at once.
//!
//! # Example
//! The whole control plane over the in-memory store, the fake provider and a fake
//! node agent:
//! ```
//! use std::sync::Arc;
//! use sam_core::testkit::node_agent::{FakeAgentScript, FakeNodeAgent, PlainBoot};
//! use sam_core::{
//!     ControlPlane, ControlPlaneConfig, ControlPlaneParts, DefaultScheduler, ProviderKind,
//!     Secret, Store, SubmitRequest, TaskStatus, TokioClock, TokenSigner,
//! };
//! use sam_providers::FakeProvider;
//! use sam_store::MemoryStore;
//!
//! # tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap().block_on(async {
//! let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
//! let cp = ControlPlane::new(
//!     ControlPlaneParts {
//!         store: store.clone(),
//!         providers: vec![Arc::new(FakeProvider::new())],
//!         scheduler: Arc::new(DefaultScheduler::new(store.clone())),
//!         node_agent: Arc::new(FakeNodeAgent::new(FakeAgentScript::default())),
//!         boot: Arc::new(PlainBoot),
//!         signer: TokenSigner::new(Secret::new("a-key-of-at-least-32-bytes-long!"), "sam").unwrap(),
//!         clock: Arc::new(TokioClock::new()),
//!     },
//!     ControlPlaneConfig::new("driver-1", ProviderKind::Fake),
//! )
//! .unwrap();
//!
//! let id = cp
//!     .submit(&SubmitRequest {
//!         repo: "https://example.invalid/repo.git".into(),
//!         prompt: "fix the flaky test".into(),
//!         ..SubmitRequest::default()
//!     })
//!     .await
//!     .unwrap();
//! // Drive it: each tick advances every due task by one step.
//! while !cp.get(&id).await.unwrap().unwrap().status.is_terminal() {
//!     cp.tick().await.unwrap();
//!     tokio::time::advance(cp.config().poll_interval).await;
//! }
//! assert_eq!(cp.get(&id).await.unwrap().unwrap().status, TaskStatus::Completed);
//! # });
//! ```

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::account::ProviderCache;
use crate::boot::{BootFailure, BootFailureReport, BootPhaseRecord, NodeBootRecord};
use crate::clock::Clock;
use crate::credential::{CredentialCipher, CredentialKind, CredentialOwner, CredentialTarget};
use crate::error::{Classify, Error, ErrorCategory};
use crate::fallback::SizeDescent;
use crate::github::{GithubAccess, GithubInstallation, RepoRef, TaskOutput, output_branch};
use crate::model::{
    ExecutionStep, Location, NodeHealth, NodeId, NodeStatus, ProjectId, ProviderKind, TaskId,
    TaskStatus, UserId, VmSize, WorkspaceId,
};
use crate::node_agent::{NodeAgent, SessionReport, WorkspaceReport};
use crate::project::AgentOptions;
use crate::provider::{Provider, ProviderFactory};
use crate::reservation::{Layer, RequirementLayers, resolve_reservation};
use crate::retry::RetryPolicy;
use crate::scheduler::Scheduler;
use crate::secret::{Secret, redact};
use crate::session::{SessionEvent, StopReason};
use crate::store::{
    Lineage, NodeBeat, NodeRecord, Store, TaskError, TaskFilter, TaskRecord, TaskSpec, TaskUpdate,
    Transition, WorkspaceStatus,
};
use crate::timeout::TimeoutPolicy;

// Plain data of every layer, kept with the project records that hold it.
pub use crate::project::{LayerSettings, WorkspaceProfile};
use crate::token::{TokenError, TokenScope, TokenSigner};

/// A task to submit.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SubmitRequest {
    /// Repository URL or local path.
    pub repo: String,
    /// Branch, if any.
    pub branch: Option<String>,
    /// The prompt.
    pub prompt: String,
    /// Settings by layer; the platform layer comes from [`ControlPlaneConfig::platform`]
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

/// How the control plane behaves; plain data, checked by [`ControlPlane::new`].
#[derive(Debug, Clone)]
pub struct ControlPlaneConfig {
    /// This process's name in leases and status events; unique per process.
    pub driver_id: String,
    /// The platform layer: defaults for every setting.
    pub platform: LayerSettings,
    /// Every wait's timeout.
    pub timeouts: TimeoutPolicy,
    /// Backoff between capacity passes; its budget is `timeouts.capacity_wait`.
    pub capacity_retry: RetryPolicy,
    /// Whether default-derived sizes may step down.
    pub descent: SizeDescent,
    /// How long a lease on a task lasts.
    pub lease: Duration,
    /// How soon to look again at a task waiting on something outside (a booting VM).
    pub poll_interval: Duration,
    /// Tasks advanced at once by one [`ControlPlane::tick`].
    pub max_concurrent: usize,
    /// Lifetime of issued node and workspace tokens.
    pub token_ttl: Duration,
    /// Agents a task may name.
    pub agents: Vec<String>,
    /// Provider VMs with the managed label and no live node are deleted once older than this.
    pub orphan_min_age: Duration,
    /// How many times one task may move off a node it lost (a failed boot, a VM
    /// that vanished or failed, an agent that does not answer, a node that never reported
    /// ready) before it fails.
    pub node_replacements: u32,
    /// Seeds the task and node ids and the backoff jitter, so a simulation replays
    /// exactly; `None` (the default) draws them from the process's random keys.
    /// Two control planes sharing a database must not share a seed.
    pub random_seed: Option<u64>,
    /// The key credentials are sealed with: 32 bytes as base64. Never stored; without
    /// it credentials can be neither stored nor used.
    pub credential_key: Option<Secret>,
    /// The platform's own agent credentials, by agent: the last layer of agent
    /// credential resolution (project → user → platform).
    pub agent_credentials: BTreeMap<String, PlatformCredential>,
}

/// A credential the platform itself provides, from configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct PlatformCredential {
    /// What kind of secret it is.
    pub kind: CredentialKind,
    /// The secret.
    pub secret: Secret,
}

impl ControlPlaneConfig {
    /// Defaults around a driver id and the platform's provider: medium size, the
    /// lightweight profile unless a devcontainer is named, the `demo` agent, SAM's
    /// timeouts, leases of 60 s, polls every 2 s, 16 tasks at once, tokens for 8 h,
    /// one replacement node per task.
    pub fn new(driver_id: impl Into<String>, provider: ProviderKind) -> Self {
        Self {
            driver_id: driver_id.into(),
            platform: LayerSettings {
                size: Some(VmSize::Medium),
                provider: Some(provider),
                agent: Some("demo".to_owned()),
                workspace_profile: Some(WorkspaceProfile::Full),
                ..LayerSettings::default()
            },
            timeouts: TimeoutPolicy::default(),
            capacity_retry: RetryPolicy::capacity(),
            descent: SizeDescent::Allowed,
            lease: Duration::from_secs(60),
            poll_interval: Duration::from_secs(2),
            max_concurrent: 16,
            token_ttl: Duration::from_secs(8 * 3600),
            agents: ["demo", "claude", "codex", "gemini", "opencode"]
                .map(str::to_owned)
                .to_vec(),
            orphan_min_age: Duration::from_secs(600),
            node_replacements: 1,
            random_seed: None,
            credential_key: None,
            agent_credentials: BTreeMap::new(),
        }
    }

    /// The capacity retry policy with its budget taken from the timeout policy, so
    /// the sweep and the backoff can never disagree.
    pub(crate) fn capacity_policy(&self) -> RetryPolicy {
        RetryPolicy {
            budget: self.timeouts.capacity_wait,
            ..self.capacity_retry
        }
    }
}

/// Renders a node's boot script (cloud-init user data) from its record and token.
///
/// `sam-core` does no templating; `sam-cloudinit` provides the real renderer.
pub trait BootRenderer: Send + Sync + fmt::Debug {
    /// The user data for `node`, which will hold only `token`.
    ///
    /// # Errors
    /// `invalid_config` when the node cannot be booted with this configuration.
    fn user_data(&self, node: &NodeRecord, token: &Secret) -> Result<String, Error>;
}

/// The trait objects a control plane drives.
#[derive(Debug, Clone)]
pub struct ControlPlaneParts {
    /// Durable state.
    pub store: Arc<dyn Store>,
    /// Providers by kind.
    pub providers: Vec<Arc<dyn Provider>>,
    /// Placement.
    pub scheduler: Arc<dyn Scheduler>,
    /// The client for VM agents.
    pub node_agent: Arc<dyn NodeAgent>,
    /// Boot scripts.
    pub boot: Arc<dyn BootRenderer>,
    /// Token signing.
    pub signer: TokenSigner,
    /// The time.
    pub clock: Arc<dyn Clock>,
}

/// What happened to a task, for live displays (the CLI's progress, server-sent events).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskEvent {
    /// The task.
    pub task_id: TaskId,
    /// When.
    pub at: DateTime<Utc>,
    /// What.
    pub kind: TaskEventKind,
}

/// The kinds of [`TaskEvent`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum TaskEventKind {
    /// The task entered a step.
    Step {
        /// The step.
        step: ExecutionStep,
        /// Its label.
        label: String,
    },
    /// The task's status changed.
    Status {
        /// The new status.
        status: TaskStatus,
        /// The error, for `failed`.
        error: Option<TaskError>,
    },
    /// A smaller size than requested was provisioned.
    Downgraded {
        /// Requested.
        requested: VmSize,
        /// Provisioned.
        provisioned: VmSize,
    },
    /// A provisioning attempt failed for capacity.
    CapacityUnavailable {
        /// The size tried.
        size: VmSize,
        /// The location tried.
        location: Location,
    },
    /// An event from the agent session.
    Session {
        /// The event.
        event: SessionEvent,
    },
    /// The agent's last message when its turn ended.
    LastMessage {
        /// The message, redacted.
        text: String,
    },
    /// The task's node was lost before the task ran on it (a failed boot, a VM
    /// that vanished or failed, an agent that does not answer, a node that never reported
    /// ready); the task moves on
    /// while its replacement budget lasts.
    NodeLost {
        /// The node.
        node: NodeId,
        /// What happened to it, as one sentence.
        reason: String,
    },
    /// A callback that would have changed the task came after it ended, and was
    /// refused.
    Refused {
        /// What was refused (`output`, `session report`, …).
        callback: String,
        /// Why, as one sentence.
        reason: String,
    },
}

/// The reply to a heartbeat.
#[derive(Debug, Clone, PartialEq)]
pub struct HeartbeatReply {
    /// A fresh node token when the current one is past half its life.
    pub refreshed_token: Option<Secret>,
}

/// Resource metrics a heartbeat carries.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct NodeMetrics {
    /// One-minute load average.
    pub cpu_load_avg1: f64,
    /// Memory used, percent.
    pub memory_percent: f64,
    /// Root disk used, percent.
    pub disk_percent: f64,
}

/// The control plane.
#[derive(Debug, Clone)]
pub struct ControlPlane {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) providers: HashMap<ProviderKind, Arc<dyn Provider>>,
    pub(crate) scheduler: Arc<dyn Scheduler>,
    pub(crate) node_agent: Arc<dyn NodeAgent>,
    pub(crate) boot: Arc<dyn BootRenderer>,
    /// Shared by clones, and replaced when the signing keys change
    /// ([`ControlPlane::replace_signer`]).
    pub(crate) signer: Arc<std::sync::RwLock<TokenSigner>>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) config: ControlPlaneConfig,
    pub(crate) events: broadcast::Sender<TaskEvent>,
    /// The state of the seeded sequence, shared by clones; `None` when unseeded.
    pub(crate) seeded: Option<Arc<std::sync::Mutex<u64>>>,
    pub(crate) cipher: Option<CredentialCipher>,
    /// Builds providers from users' and projects' own credentials; without it only
    /// the platform's providers are used.
    pub(crate) provider_factory: Option<Arc<dyn ProviderFactory>>,
    /// The providers built by `provider_factory`, per owner.
    pub(crate) provider_cache: ProviderCache,
}

/// A random 64-bit value from the standard library's per-process random keys.
fn os_random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::UNIX_EPOCH
            .elapsed()
            .map_or(0, |d| d.as_nanos()),
    );
    hasher.finish()
}

/// The `not_found` error for a record that must exist (`"task t-1"`).
pub(crate) fn missing(what: impl std::fmt::Display) -> Error {
    Error::Store(crate::error::StoreError::new(
        crate::error::StoreErrorKind::NotFound,
        format!("{what} does not exist"),
    ))
}

pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> Error {
    Error::InvalidInput {
        field,
        reason: reason.into(),
    }
}

/// The value of one setting and the layer it came from.
fn pick<T: Clone>(
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
    /// Builds a control plane from its parts and configuration.
    ///
    /// # Errors
    /// [`Error::Policy`] for contradictory timeouts or retry values; [`Error::InvalidInput`]
    /// when the platform provider is not among the parts or a value is out of range.
    pub fn new(parts: ControlPlaneParts, config: ControlPlaneConfig) -> Result<Self, Error> {
        config.timeouts.validate()?;
        config.capacity_policy().validate()?;
        if config.max_concurrent == 0 {
            return Err(invalid("max_concurrent", "must be at least 1"));
        }
        if config.lease.is_zero() || config.poll_interval.is_zero() {
            return Err(invalid(
                "lease",
                "lease and poll interval must be greater than zero",
            ));
        }
        if config.driver_id.is_empty() {
            return Err(invalid("driver_id", "must not be empty"));
        }
        let providers: HashMap<ProviderKind, Arc<dyn Provider>> =
            parts.providers.into_iter().map(|p| (p.kind(), p)).collect();
        if let Some(p) = config.platform.provider
            && !providers.contains_key(&p)
        {
            return Err(invalid(
                "platform.provider",
                format!("{p} is the default provider but is not configured"),
            ));
        }
        let cipher = config
            .credential_key
            .as_ref()
            .map(CredentialCipher::new)
            .transpose()?;
        let (events, _) = broadcast::channel(1024);
        Ok(Self {
            cipher,
            store: parts.store,
            providers,
            scheduler: parts.scheduler,
            node_agent: parts.node_agent,
            boot: parts.boot,
            signer: Arc::new(std::sync::RwLock::new(parts.signer)),
            clock: parts.clock,
            seeded: config
                .random_seed
                .map(|seed| Arc::new(std::sync::Mutex::new(seed))),
            config,
            events,
            provider_factory: None,
            provider_cache: ProviderCache::default(),
        })
    }

    /// A fresh id: `prefix`, a dash and 16 hex digits of [`Self::random_u64`], so
    /// seeded simulations replay the same ids.
    pub(crate) fn new_id<K: crate::model::id_kind::IdKind>(
        &self,
        prefix: &str,
    ) -> Result<crate::model::Id<K>, Error> {
        Ok(crate::model::Id::new(format!(
            "{prefix}-{:016x}",
            self.random_u64()
        ))?)
    }

    /// The same control plane, building providers from users' and projects' own
    /// provider credentials with `factory`: their tasks' VMs are created, polled and
    /// deleted with their credential, in their account. Without a factory, a task
    /// whose project or user has a provider credential is refused at submission
    /// ([`crate::CredentialError::NoFactory`]) rather than run on the platform's.
    pub fn with_provider_factory(mut self, factory: Arc<dyn ProviderFactory>) -> Self {
        self.provider_factory = Some(factory);
        self.provider_cache = ProviderCache::default();
        self
    }

    /// A random 64-bit value: the next of the seeded sequence (SplitMix64) when the
    /// configuration sets [`ControlPlaneConfig::random_seed`], else from the
    /// process's random keys.
    pub(crate) fn random_u64(&self) -> u64 {
        let Some(state) = &self.seeded else {
            return os_random_u64();
        };
        let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
        *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = *state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// The configuration.
    pub fn config(&self) -> &ControlPlaneConfig {
        &self.config
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Subscribes to task events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<TaskEvent> {
        self.events.subscribe()
    }

    pub(crate) fn emit(&self, task_id: &TaskId, kind: TaskEventKind) {
        // Nobody listening is fine: events are for live displays, the store is the record.
        let _ = self.events.send(TaskEvent {
            task_id: task_id.clone(),
            at: self.clock.now(),
            kind,
        });
    }

    pub(crate) fn provider(&self, kind: ProviderKind) -> Result<&Arc<dyn Provider>, Error> {
        self.providers
            .get(&kind)
            .ok_or_else(|| invalid("provider", format!("{kind} is not configured")))
    }

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
        let layers = &intent.layers;
        let (provider, provider_source) = pick(layers, platform, |l| l.provider)
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
        let (size, size_source) =
            pick(layers, platform, |l| l.size).unwrap_or((VmSize::Medium, Layer::Platform));
        let location = pick(layers, platform, |l| l.location.clone());
        let (agent, agent_source) = pick(layers, platform, |l| l.agent.clone())
            .ok_or_else(|| invalid("agent", "no layer names an agent"))?;
        if !self.config.agents.iter().any(|a| a == &agent) {
            return Err(invalid(
                "agent",
                format!(
                    "unknown agent {agent:?}; expected one of {}",
                    self.config.agents.join(", ")
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
                Some(platform)
            } else {
                layers.get(&layer)
            };
            if let Some(s) = settings {
                *requirements.layer_mut(layer) = s.requirements.clone();
            }
        }
        let reservation = resolve_reservation(&requirements)?;
        let catalog = provider_impl.catalog();
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
            descent: self.config.descent,
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
        if let Some(source) = self.agent_credential_source(&intent, &agent)? {
            provenance.insert("agent_credential".to_owned(), source);
        }

        let now = self.clock.now();
        let id: TaskId = self.new_id("t")?;
        let task = TaskRecord {
            id: id.clone(),
            status: TaskStatus::Queued,
            execution_step: ExecutionStep::NodeSelection,
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
                project: intent.project.map(|p| p.id),
                profile: intent.profile.map(|p| p.id),
                user: intent.user,
                submitted: request.layers.clone(),
                lineage,
                provider_credential_owner: provider_owner,
            },
            provider,
            requested_size: size,
            size_source,
            requested_location: location,
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
        };
        self.store.create_task(&task).await?;
        self.emit(
            &id,
            TaskEventKind::Status {
                status: TaskStatus::Queued,
                error: None,
            },
        );
        Ok(id)
    }

    /// Reads a task.
    ///
    /// # Errors
    /// Store failures.
    pub async fn get(&self, id: &TaskId) -> Result<Option<TaskRecord>, Error> {
        Ok(self.store.get_task(id).await?)
    }

    /// Lists tasks.
    ///
    /// # Errors
    /// Store failures.
    pub async fn list(&self, filter: &TaskFilter) -> Result<Vec<TaskRecord>, Error> {
        Ok(self.store.list_tasks(filter).await?)
    }

    /// Cancels a task and releases everything it claimed. Cancelling a finished task
    /// changes nothing and returns `false`.
    ///
    /// # Errors
    /// `not_found` for an unknown task; store failures.
    pub async fn cancel(&self, id: &TaskId, actor: &str) -> Result<bool, Error> {
        let task = self.require_task(id).await?;
        if task.status.is_terminal() {
            return Ok(false);
        }
        if let (Some(node_id), Some(ws)) = (&task.provisioned_node_id, &task.workspace_id)
            && task.status == TaskStatus::InProgress
            && let Some(node) = self.store.get_node(node_id).await?
            && let Err(e) = self.node_agent.cancel_session(&node, ws).await
        {
            tracing::warn!(task = %id, error = %e, "could not cancel the agent session");
        }
        let done = self
            .finish(
                &task,
                TaskStatus::Cancelled,
                None,
                actor,
                "cancelled by the user",
            )
            .await?;
        Ok(done)
    }

    pub(crate) async fn require_task(&self, id: &TaskId) -> Result<TaskRecord, Error> {
        self.store
            .get_task(id)
            .await?
            .ok_or_else(|| missing(format_args!("task {id}")))
    }

    /// Moves a live task to a terminal status and releases what it claimed.
    /// Returns `false` when another actor finished it first.
    pub(crate) async fn finish(
        &self,
        task: &TaskRecord,
        to: TaskStatus,
        error: Option<TaskError>,
        actor: &str,
        reason: &str,
    ) -> Result<bool, Error> {
        self.end(task, to, error, actor, reason, None).await
    }

    /// [`ControlPlane::finish`], with the terminal transition fenced by `lease` when
    /// given: a driver that lost its lease cannot end the task (`LeaseLost`).
    pub(crate) async fn end(
        &self,
        task: &TaskRecord,
        to: TaskStatus,
        error: Option<TaskError>,
        actor: &str,
        reason: &str,
        lease: Option<&crate::store::Lease>,
    ) -> Result<bool, Error> {
        let mut current = task.clone();
        loop {
            if current.status.is_terminal() {
                return Ok(false);
            }
            let change = Transition {
                from: current.status,
                to,
                actor: actor.to_owned(),
                reason: Some(redact(reason).into_owned()),
                error: error.clone(),
                at: self.clock.now(),
            };
            let applied = match lease {
                Some(lease) => {
                    let writes = [crate::store::LeasedWrite::Transition(change)];
                    let at = self.clock.now();
                    self.store
                        .write_leased(lease, at, &writes)
                        .await?
                        .transitioned
                }
                None => self.store.transition_task(&current.id, &change).await?,
            };
            if applied {
                break;
            }
            current = self.require_task(&task.id).await?;
        }
        // The terminal transition cleared the task's wake-up and lease with it.
        self.emit(&task.id, TaskEventKind::Status { status: to, error });
        crate::crash::point(crate::crash::TASK_ENDED);
        self.release(&current).await;
        Ok(true)
    }

    /// Releases what a finished task held: stops its workspace, returns a healthy node
    /// to the warm pool, and destroys a node that is not healthy (it never became
    /// ready, or its heartbeats stopped) when it created it or no other live task
    /// uses it, so no unhealthy node idles until its lifetime ends.
    /// Failures are logged; the sweeps finish what this could not.
    pub(crate) async fn release(&self, task: &TaskRecord) {
        let Some(node_id) = &task.provisioned_node_id else {
            return;
        };
        let node = match self.store.get_node(node_id).await {
            Ok(Some(node)) => node,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(task = %task.id, error = %e, "could not read the task's node");
                return;
            }
        };
        let now = self.clock.now();
        if let Some(ws) = &task.workspace_id {
            if let Err(e) = self.node_agent.stop_workspace(&node, ws).await {
                tracing::warn!(task = %task.id, error = %e, "could not stop the workspace");
            }
            match self
                .store
                .update_workspace(ws, WorkspaceStatus::Stopped, None, now)
                .await
            {
                // The scheduler may count the room again before it next reads.
                Ok(()) => self.scheduler.released(&task.id, ws),
                Err(e) if e.category() == ErrorCategory::NotFound => {}
                Err(e) => {
                    tracing::warn!(task = %task.id, error = %e, "could not free the workspace slot");
                }
            }
        }
        let ever_ready = node.ready_at.is_some() && node.health == NodeHealth::Healthy;
        if ever_ready {
            if let Err(e) = self.store.release_node_to_warm(node_id, now).await {
                tracing::warn!(node = %node_id, error = %e, "could not return the node to the warm pool");
            }
        } else if node.created_for.as_ref() == Some(&task.id)
            || !self.used_by_others(node_id, &task.id).await
        {
            // A failure is logged and the node kept for the node sweep.
            let _ = self.destroy_node(&node).await;
        }
    }

    /// Whether a live task other than `task` runs on (or is headed for) `node`; `true`
    /// when the store cannot tell, so a node is never destroyed on a guess.
    pub(crate) async fn used_by_others(&self, node: &NodeId, task: &TaskId) -> bool {
        let users = self
            .store
            .list_tasks(&TaskFilter {
                node: Some(node.clone()),
                ..TaskFilter::live()
            })
            .await;
        match users {
            Ok(users) => users.iter().any(|t| &t.id != task),
            Err(e) => {
                tracing::warn!(node = %node, error = %e, "could not tell who uses the node; keeping it");
                true
            }
        }
    }

    /// Deletes a node's VM (idempotent at the provider) and marks the row deleted.
    ///
    /// The VM is deleted through the account that created it: the provider of the
    /// node's credential owner. A row without a VM id may still have a VM whose
    /// create response was lost, so the provider is asked by the node's label first;
    /// a row that truly never got a VM is deleted outright, so nothing dead lingers.
    /// When the provider cannot be reached, or the owner's credential is gone or does
    /// not open, the row stays, marked `destroying` so that nothing is placed on it,
    /// and the node sweep tries again (the orphan sweep cannot: the row is live, so
    /// it owns the VM): nothing paid for is forgotten.
    ///
    /// # Errors
    /// Why the node is kept: the provider's classified failure, or the credential's
    /// ([`crate::CredentialError::Missing`] when its owner deleted it).
    pub(crate) async fn destroy_node(&self, node: &NodeRecord) -> Result<(), Error> {
        let provider = match self.node_provider(node).await {
            Ok(provider) => provider,
            Err(e) => {
                tracing::warn!(node = %node.id, error = %e, "no provider for the node's account; it is kept and the node sweep will retry");
                self.mark_destroying(node).await;
                return Err(e);
            }
        };
        let vm = match &node.vm_id {
            Some(vm) => Some(vm.clone()),
            None => match provider
                .list_vms(&crate::model::Labels::for_node(&node.id))
                .await
            {
                Ok(vms) => vms.into_iter().next().map(|v| v.id),
                Err(e) => {
                    tracing::warn!(node = %node.id, error = %e, "could not look the node's VM up; the node sweep will retry");
                    self.mark_destroying(node).await;
                    return Err(e.into());
                }
            },
        };
        if let Some(vm) = &vm
            && let Err(e) = provider.delete_vm(vm).await
        {
            tracing::warn!(node = %node.id, error = %e, "could not delete the VM; the node sweep will retry");
            self.mark_destroying(node).await;
            return Err(e.into());
        }
        crate::crash::point(crate::crash::VM_DELETED);
        let result = if node.vm_id.is_none() && vm.is_none() {
            self.store.delete_node(&node.id).await
        } else {
            let mut gone = node.clone();
            gone.vm_id = vm;
            gone.status = NodeStatus::Deleted;
            gone.lifecycle = crate::model::NodeLifecycle::Destroying;
            gone.updated_at = self.clock.now();
            self.store.put_node(&gone).await
        };
        if let Err(e) = result {
            tracing::warn!(node = %node.id, error = %e, "could not record the node's deletion");
        }
        Ok(())
    }

    /// Marks a node whose VM could not be deleted as `destroying`: no placement takes
    /// it, and the node sweep destroys it again.
    async fn mark_destroying(&self, node: &NodeRecord) {
        if node.lifecycle == crate::model::NodeLifecycle::Destroying {
            return;
        }
        let mut doomed = node.clone();
        doomed.lifecycle = crate::model::NodeLifecycle::Destroying;
        doomed.updated_at = self.clock.now();
        if let Err(e) = self.store.put_node(&doomed).await {
            tracing::warn!(node = %node.id, error = %e, "could not mark the node for destruction");
        }
    }

    /// The token signer in use.
    fn signer(&self) -> std::sync::RwLockReadGuard<'_, TokenSigner> {
        // A panic while replacing it leaves a whole signer: keep using it.
        self.signer.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Replaces the token signer, for every clone of this control plane: a server
    /// that read new signing keys (a rotation) signs and verifies with them from now.
    pub fn replace_signer(&self, signer: TokenSigner) {
        *self.signer.write().unwrap_or_else(|e| e.into_inner()) = signer;
    }

    /// The ids of the keys the signer verifies with, and of the one that signs.
    pub fn signer_keys(&self) -> (Vec<Option<String>>, Option<String>) {
        let signer = self.signer();
        let ids = signer
            .key_ids()
            .into_iter()
            .map(|id| id.map(str::to_owned))
            .collect();
        (ids, signer.signing_key_id().map(str::to_owned))
    }

    fn verify(&self, token: &str, scope: TokenScope, subject: &str) -> Result<(), Error> {
        self.signer()
            .verify(token, scope, subject, self.clock.now())
            .map(|_| ())
            .map_err(|e: TokenError| Error::Unauthorized(e))
    }

    /// Checks a node's callback token without acting on it: the callback routes
    /// check it before they read the body.
    ///
    /// # Errors
    /// [`Error::Unauthorized`] for a token that is not this node's.
    pub fn verify_node_token(&self, token: &str, node: &NodeId) -> Result<(), Error> {
        self.verify(token, TokenScope::Node, node.as_str())
    }

    /// Checks a workspace's callback token without acting on it, as
    /// [`ControlPlane::verify_node_token`].
    ///
    /// # Errors
    /// [`Error::Unauthorized`] for a token that is not this workspace's.
    pub fn verify_workspace_token(
        &self,
        token: &str,
        workspace: &WorkspaceId,
    ) -> Result<(), Error> {
        self.verify(token, TokenScope::Workspace, workspace.as_str())
    }

    /// Refuses a callback that would change `task`, which has ended: the refusal
    /// is an event of the task and the error to answer.
    fn refuse_ended(&self, task: &TaskRecord, callback: &'static str) -> Error {
        let error = Error::TaskEnded {
            task: task.id.clone(),
            status: task.status,
            callback,
        };
        tracing::info!(task = %task.id, callback, "refused a callback for an ended task");
        self.emit(
            &task.id,
            TaskEventKind::Refused {
                callback: callback.to_owned(),
                reason: error.to_string(),
            },
        );
        error
    }

    /// Issues the node-scoped token a node boots with.
    pub fn issue_node_token(&self, node: &NodeId) -> Secret {
        self.signer().issue(
            TokenScope::Node,
            node.as_str(),
            self.clock.now(),
            self.config.token_ttl,
        )
    }

    /// Issues a workspace-scoped token.
    pub fn issue_workspace_token(&self, workspace: &WorkspaceId) -> Secret {
        self.signer().issue(
            TokenScope::Workspace,
            workspace.as_str(),
            self.clock.now(),
            self.config.token_ttl,
        )
    }

    async fn wake_tasks_on(&self, node: &NodeId) -> Result<(), Error> {
        let tasks = self
            .store
            .list_tasks(&TaskFilter {
                node: Some(node.clone()),
                ..TaskFilter::live()
            })
            .await?;
        for task in tasks {
            self.wake(&task.id).await?;
        }
        Ok(())
    }

    /// Makes a task due now, so a runner waiting a poll interval looks at it at once.
    async fn wake(&self, task: &TaskId) -> Result<(), Error> {
        let now = self.clock.now();
        let update = TaskUpdate {
            next_wake_at: Some(Some(now)),
            ..TaskUpdate::default()
        };
        Ok(self.store.update_task(task, &update, now).await?)
    }

    /// Callback: the VM agent on `node` is up; `boot` is the timeline of the node's
    /// boot phases, kept on the node (bounded, [`NodeBootRecord::bounded`]).
    ///
    /// # Errors
    /// [`Error::Unauthorized`] for a token that is not this node's; `not_found` for an
    /// unknown node; store failures.
    pub async fn node_ready(
        &self,
        token: &str,
        node: &NodeId,
        version: &str,
        boot: &[BootPhaseRecord],
    ) -> Result<(), Error> {
        self.verify(token, TokenScope::Node, node.as_str())?;
        self.require_node(node).await?;
        // Only the liveness fields, in one statement: writing back the whole row read
        // above would undo a warm claim or release that landed in between.
        let beat = NodeBeat {
            at: self.clock.now(),
            ready_version: Some(version.chars().take(64).collect()),
            boot_timeline: NodeBootRecord {
                timeline: boot.to_vec(),
                failure: None,
            }
            .bounded()
            .timeline,
        };
        self.store.record_node_beat(node, &beat).await?;
        self.wake_tasks_on(node).await
    }

    /// Callback: the boot of `node` failed. The failure (phase, exit status, journal
    /// tail, timeline; bounded) is recorded on the node, the node is marked failed
    /// and its VM deleted (a VM whose delete fails stays recorded, `destroying`, for
    /// the node sweep), and the tasks headed for it are woken: each moves to a
    /// replacement node while its budget lasts
    /// ([`ControlPlaneConfig::node_replacements`]).
    ///
    /// # Errors
    /// [`Error::Unauthorized`] for a token that is not this node's; `not_found` for an
    /// unknown node; [`Error::InvalidInput`] for a phase that is not a phase name;
    /// store failures.
    pub async fn node_boot_failed(
        &self,
        token: &str,
        node: &NodeId,
        report: &BootFailureReport,
    ) -> Result<(), Error> {
        self.verify(token, TokenScope::Node, node.as_str())?;
        report.check()?;
        let record = self.require_node(node).await?;
        let now = self.clock.now();
        let mut failed = record.clone();
        failed.boot = NodeBootRecord {
            timeline: report.timeline.clone(),
            failure: Some(BootFailure {
                phase: report.phase.clone(),
                exit_status: report.exit_status,
                journal: report.journal.clone(),
                reported_at: now,
            }),
        }
        .bounded();
        failed.status = NodeStatus::Error;
        failed.health = NodeHealth::Unhealthy;
        failed.updated_at = now;
        self.store.put_node(&failed).await?;
        tracing::warn!(node = %node, phase = %report.phase, exit_status = report.exit_status, "a node's boot failed; deleting its VM");
        // A failed delete keeps the node, `destroying`, for the node sweep.
        let _ = self.destroy_node(&failed).await;
        self.wake_tasks_on(node).await
    }

    async fn require_workspace(
        &self,
        workspace: &WorkspaceId,
    ) -> Result<crate::store::WorkspaceRecord, Error> {
        self.store
            .get_workspace(workspace)
            .await?
            .ok_or_else(|| missing(format_args!("workspace {workspace}")))
    }

    async fn require_node(&self, node: &NodeId) -> Result<NodeRecord, Error> {
        self.store
            .get_node(node)
            .await?
            .ok_or_else(|| missing(format_args!("node {node}")))
    }

    /// Callback: a heartbeat with metrics. Returns a fresh token past half-life.
    ///
    /// # Errors
    /// As [`ControlPlane::node_ready`].
    pub async fn heartbeat(
        &self,
        token: &str,
        node: &NodeId,
        metrics: &NodeMetrics,
    ) -> Result<HeartbeatReply, Error> {
        let claims = self
            .signer()
            .verify(token, TokenScope::Node, node.as_str(), self.clock.now())
            .map_err(Error::Unauthorized)?;
        self.require_node(node).await?;
        let now = self.clock.now();
        // As in `node_ready`: a heartbeat races warm claims and releases, so it
        // writes its own fields only.
        let beat = NodeBeat {
            at: now,
            ready_version: None,
            boot_timeline: Vec::new(),
        };
        self.store.record_node_beat(node, &beat).await?;
        tracing::debug!(node = %node, load = metrics.cpu_load_avg1, memory = metrics.memory_percent, disk = metrics.disk_percent, "heartbeat");
        Ok(HeartbeatReply {
            refreshed_token: claims
                .needs_refresh(now)
                .then(|| self.issue_node_token(node)),
        })
    }

    /// Callback: a workspace is ready (or failed).
    ///
    /// # Errors
    /// [`Error::Unauthorized`] for a token that is not this workspace's; `not_found`;
    /// [`Error::TaskEnded`] for a failure reported once the task has ended; store
    /// failures.
    pub async fn workspace_ready(
        &self,
        token: &str,
        workspace: &WorkspaceId,
        report: &WorkspaceReport,
    ) -> Result<(), Error> {
        self.verify(token, TokenScope::Workspace, workspace.as_str())?;
        let record = self.require_workspace(workspace).await?;
        if let WorkspaceReport::Failed { .. } = report {
            let task = self.require_task(&record.task_id).await?;
            if task.status.is_terminal() {
                return Err(self.refuse_ended(&task, "workspace failure"));
            }
        }
        if self.apply_workspace_report(&record, report).await? {
            self.wake(&record.task_id).await?;
        }
        Ok(())
    }

    /// Applies a report on workspace `current` (as the caller just read it); returns
    /// whether it made the workspace ready. The runner, which applies what it polled,
    /// moves on by itself; a callback wakes the task.
    pub(crate) async fn apply_workspace_report(
        &self,
        current: &crate::store::WorkspaceRecord,
        report: &WorkspaceReport,
    ) -> Result<bool, Error> {
        let now = self.clock.now();
        let (task_id, workspace) = (&current.task_id, &current.id);
        match report {
            WorkspaceReport::Preparing => Ok(false),
            WorkspaceReport::Ready {
                effective_profile,
                recovery,
            } => {
                // A report can arrive late (the runner may have polled the same news and
                // the task finished since): it must not bring a stopped workspace back,
                // or its slot would be held for good and its node never go warm. The
                // store refuses that atomically (a check here alone would race the
                // release); the caller's read spares the task a needless wake-up.
                if current.status == WorkspaceStatus::Stopped {
                    return Ok(false);
                }
                let status = if *recovery {
                    WorkspaceStatus::Recovery
                } else {
                    WorkspaceStatus::Running
                };
                self.store
                    .update_workspace(workspace, status, Some(effective_profile.clone()), now)
                    .await?;
                Ok(true)
            }
            WorkspaceReport::Failed { error } => {
                let task = self.require_task(task_id).await?;
                self.finish(
                    &task,
                    TaskStatus::Failed,
                    Some(error.clone()),
                    "node-agent",
                    "the workspace failed",
                )
                .await?;
                Ok(false)
            }
        }
    }

    /// Callback: something happened in a workspace's agent session.
    ///
    /// # Errors
    /// As [`ControlPlane::workspace_ready`]; [`Error::TaskEnded`] (`conflict`, with a
    /// [`TaskEventKind::Refused`] event) once the workspace's task has ended.
    pub async fn session_event(
        &self,
        token: &str,
        workspace: &WorkspaceId,
        report: &SessionCallback,
    ) -> Result<(), Error> {
        self.verify(token, TokenScope::Workspace, workspace.as_str())?;
        let record = self.require_workspace(workspace).await?;
        // A task that has ended is closed: nothing its agent says afterwards
        // changes it (a late output would replace its branch, commit and pull
        // request).
        let task = self.require_task(&record.task_id).await?;
        if task.status.is_terminal() {
            let callback = match report {
                SessionCallback::Event(_) => "session event",
                SessionCallback::Report(_) => "session report",
                SessionCallback::Output(_) => "output",
            };
            return Err(self.refuse_ended(&task, callback));
        }
        match report {
            SessionCallback::Event(event) => {
                self.emit(
                    &record.task_id,
                    TaskEventKind::Session {
                        event: event.clone(),
                    },
                );
                Ok(())
            }
            SessionCallback::Report(report) => self.apply_session_report(&task, report).await,
            SessionCallback::Output(output) => {
                self.store
                    .update_task(
                        &record.task_id,
                        &TaskUpdate {
                            output: Some(Some(output.clone())),
                            ..TaskUpdate::default()
                        },
                        self.clock.now(),
                    )
                    .await?;
                Ok(())
            }
        }
    }

    /// The GitHub access of the live task a workspace serves: what a VM agent's git
    /// credential or pull request request may be answered with.
    ///
    /// # Errors
    /// [`Error::Unauthorized`] for a token that is not this workspace's; `not_found`
    /// for a missing workspace, task or installation link; `invalid_config` when the
    /// task has finished or its repository is not behind a GitHub installation.
    pub async fn workspace_github(
        &self,
        token: &str,
        workspace: &WorkspaceId,
    ) -> Result<WorkspaceGithub, Error> {
        let task = self
            .live_workspace_task(token, workspace, "it gets no more credentials")
            .await?;
        let access = task.spec.github.clone().ok_or_else(|| {
            invalid(
                "workspace",
                format!(
                    "the repository of task {} is not behind a GitHub installation",
                    task.id
                ),
            )
        })?;
        let repo = RepoRef::parse_https(&task.spec.repo)?;
        let installation = self
            .store
            .get_github_installation(&access.installation)
            .await?
            .ok_or_else(|| {
                missing(format_args!(
                    "GitHub installation link {}",
                    access.installation
                ))
            })?;
        Ok(WorkspaceGithub {
            task,
            repo,
            installation,
        })
    }

    /// The repository a live task's workspace may fetch from and push to through
    /// the control plane's git route: the task's repository, when it is a path on
    /// this machine ([`crate::Repository::Local`]), and the one branch it may push.
    ///
    /// # Errors
    /// [`Error::Unauthorized`] for a token that is not this workspace's; `not_found`
    /// for a missing workspace or task; `invalid_config` when the task has finished
    /// or its repository is not a local path.
    pub async fn workspace_repository(
        &self,
        token: &str,
        workspace: &WorkspaceId,
    ) -> Result<ServedRepository, Error> {
        let task = self
            .live_workspace_task(token, workspace, "its repository is no longer served")
            .await?;
        match crate::repository::parse_repository(&task.spec.repo) {
            Ok(crate::Repository::Local { path }) => Ok(ServedRepository {
                path: path.into(),
                output_branch: output_branch(&task.spec.prompt, &task.id),
            }),
            _ => Err(invalid(
                "workspace",
                format!(
                    "the repository of task {} is not a path on this machine; the control plane serves no other",
                    task.id
                ),
            )),
        }
    }

    /// The task a workspace serves, for that workspace's `token`, while it is live;
    /// `invalid_config` saying `refusal` once it has ended.
    async fn live_workspace_task(
        &self,
        token: &str,
        workspace: &WorkspaceId,
        refusal: &str,
    ) -> Result<TaskRecord, Error> {
        self.verify(token, TokenScope::Workspace, workspace.as_str())?;
        let record = self.require_workspace(workspace).await?;
        let task = self.require_task(&record.task_id).await?;
        if task.status.is_terminal() {
            return Err(invalid(
                "workspace",
                format!("task {} has finished; {refusal}", task.id),
            ));
        }
        Ok(task)
    }

    pub(crate) async fn apply_session_report(
        &self,
        task: &TaskRecord,
        report: &SessionReport,
    ) -> Result<(), Error> {
        match report {
            SessionReport::Running => Ok(()),
            SessionReport::Stopped {
                reason,
                last_message,
            } => {
                if let Some(text) = last_message {
                    self.emit(
                        &task.id,
                        TaskEventKind::LastMessage {
                            text: redact(text).into_owned(),
                        },
                    );
                }
                let to = reason.outcome();
                let error = (to == TaskStatus::Failed).then(|| TaskError {
                    category: ErrorCategory::InvalidConfig,
                    message: stop_message(*reason),
                });
                self.finish(
                    task,
                    to,
                    error,
                    "node-agent",
                    &format!("the agent stopped: {reason:?}"),
                )
                .await?;
                Ok(())
            }
            SessionReport::Failed { error } => {
                self.finish(
                    task,
                    TaskStatus::Failed,
                    Some(error.clone()),
                    "node-agent",
                    "the agent session failed",
                )
                .await?;
                Ok(())
            }
        }
    }
}

fn stop_message(reason: StopReason) -> String {
    match reason {
        StopReason::MaxTokens => "The agent ran out of output tokens before finishing.".to_owned(),
        StopReason::MaxTurnRequests => {
            "The agent hit its limit of model requests in one turn.".to_owned()
        }
        StopReason::Refusal => "The model refused to continue.".to_owned(),
        StopReason::EndTurn | StopReason::Cancelled => String::new(),
    }
}

/// A repository the control plane serves to a workspace, from
/// [`ControlPlane::workspace_repository`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServedRepository {
    /// The repository's path on this machine.
    pub path: std::path::PathBuf,
    /// The only branch the workspace may push (the task's output branch).
    pub output_branch: String,
}

/// The GitHub side of a workspace's task, from [`ControlPlane::workspace_github`].
#[derive(Debug, Clone, PartialEq)]
pub struct WorkspaceGithub {
    /// The task.
    pub task: TaskRecord,
    /// Its repository.
    pub repo: RepoRef,
    /// The installation link the task names; API calls use its external id.
    pub installation: GithubInstallation,
}

/// What a VM agent reports about a session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SessionCallback {
    /// Progress, retries, crashes: shown, not acted on.
    Event(SessionEvent),
    /// A state change that may end the task.
    Report(SessionReport),
    /// What the task left in its repository (sent before the final report).
    Output(TaskOutput),
}
