//! The control plane: submission, callbacks, the durable task runner and its sweeps.
//!
//! [`ControlPlane`] is one type, with one room per job. This module holds its public
//! face (`new`, `get`, `list`, `subscribe`) and the state every room shares, which
//! only this module and its rooms can reach:
//!
//! - `config`: [`ControlPlaneConfig`] and the settings one layer may set ([`LayerSettings`]).
//! - `submit`: [`ControlPlane::submit`], a thin async wrapper around the pure
//!   resolution of a request's layers into a task record.
//! - `intent`: the project, profile, user and credentials a submission carries.
//! - `lineage`: retried and forked tasks ([`ControlPlane::retry`], [`ControlPlane::fork`]).
//! - `accounts`: users, projects, agent profiles, credentials and GitHub links,
//!   behind the [`Accounts`] handle ([`ControlPlane::accounts`]).
//! - `providers`: the provider registry: the platform's providers and those built
//!   from users' and projects' own credentials.
//! - `teardown`: the one way a task ends and its node is released or destroyed
//!   ([`ControlPlane::cancel`]); the runner, the sweeps and the callbacks all end tasks
//!   through it.
//! - `tokens`: issuing and verifying the scoped tokens of nodes and workspaces.
//! - `callbacks`: what VM agents report (ready, heartbeats, workspace and session
//!   reports) and what they fetch (GitHub tokens, repositories).
//! - `events`: each task's transcript ([`TaskEvent`]): written, announced, read back.
//! - `runner`: the durable task runner: the driver ([`ControlPlane::tick`],
//!   [`ControlPlane::run`]), its pure pipeline, and one handler per step.
//! - `sweep`: stuck tasks, the warm pool, node lifetimes, stale heartbeats, orphans.
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

mod accounts;
mod callbacks;
mod config;
mod events;
mod intent;
mod lineage;
mod providers;
pub(crate) mod runner;
mod submit;
mod sweep;
mod teardown;
mod tokens;

pub use crate::project::{LayerSettings, WorkspaceProfile};
pub use accounts::{Accounts, CredentialInput, ProfileInput, ProjectInput, UserInput};
pub use callbacks::{
    HeartbeatReply, NodeMetrics, ServedRepository, SessionCallback, WorkspaceGithub,
};
pub use config::{ControlPlaneConfig, PlatformCredential};
pub use events::{MAX_TRANSCRIPT_PAGE, TaskEvent, TaskEventKind};
pub use lineage::{MAX_LINEAGE_DEPTH, TaskSource};
pub use providers::PROVIDER_CACHE_CAPACITY;
use providers::ProviderRegistry;
pub use submit::SubmitRequest;
pub use sweep::{KeptNode, SweepReport};

use std::fmt;
use std::sync::Arc;

use tokio::sync::broadcast;

use crate::clock::Clock;
use crate::credential::CredentialCipher;
use crate::failure::Error;
use crate::model::TaskId;
use crate::node_agent::NodeAgent;
use crate::provider::{Provider, ProviderFactory};
use crate::scheduler::Scheduler;
use crate::secret::Secret;
use crate::store::{NodeRecord, Store, TaskFilter, TaskRecord};
use crate::token::TokenSigner;

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

/// The control plane.
#[derive(Debug, Clone)]
pub struct ControlPlane {
    store: Arc<dyn Store>,
    /// The platform's providers, and those built from owners' credentials.
    providers: ProviderRegistry,
    scheduler: Arc<dyn Scheduler>,
    node_agent: Arc<dyn NodeAgent>,
    boot: Arc<dyn BootRenderer>,
    /// Shared by clones, and replaced when the signing keys change
    /// ([`ControlPlane::replace_signer`]).
    signer: Arc<std::sync::RwLock<TokenSigner>>,
    clock: Arc<dyn Clock>,
    config: ControlPlaneConfig,
    events: broadcast::Sender<TaskEvent>,
    /// The state of the seeded sequence, shared by clones; `None` when unseeded.
    seeded: Option<Arc<std::sync::Mutex<u64>>>,
    cipher: Option<CredentialCipher>,
    /// Steps of this process stopped because their task's lease was taken over,
    /// shared by clones ([`ControlPlane::leases_lost`]).
    leases_lost: Arc<std::sync::atomic::AtomicU64>,
}

/// A random 64-bit value from the standard library's per-process random keys.
pub(super) fn os_random_u64() -> u64 {
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
        let providers = ProviderRegistry::new(parts.providers);
        if let Some(p) = config.platform.provider
            && !providers.has_platform(p)
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
            leases_lost: Arc::default(),
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
        self.providers = self.providers.with_factory(factory);
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

    /// How many steps this control plane (and its clones) stopped because their
    /// task's lease expired and another driver took the task over, since it was
    /// built. A driver that died counts nothing: the count is kept by the driver
    /// that lost the lease, for its metrics.
    pub fn leases_lost(&self) -> u64 {
        self.leases_lost.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Subscribes to transcript entries as they are written by this process, from now
    /// on. A receiver that lags misses entries: read them back with
    /// [`ControlPlane::transcript`].
    pub fn subscribe(&self) -> broadcast::Receiver<TaskEvent> {
        self.events.subscribe()
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

    pub(crate) async fn require_task(&self, id: &TaskId) -> Result<TaskRecord, Error> {
        self.store
            .get_task(id)
            .await?
            .ok_or_else(|| missing(format_args!("task {id}")))
    }
}
