//! # sam-core
//!
//! The domain model, traits and pure policies of the SAM SDK, an SDK for running AI
//! coding agents on cloud VMs.
//!
//! - **Model** ([`model`]): ids ([`TaskId`], [`NodeId`], [`WorkspaceId`], [`VmId`]),
//!   [`TaskStatus`], [`ExecutionStep`] with its label, [`NodeStatus`], [`VmSize`],
//!   [`ProviderKind`], [`Location`], [`Labels`], [`VmSpec`], [`VmInstance`], and the
//!   catalog types [`Catalog`] and [`ServerType`].
//! - **Reservations** ([`reservation`]): [`ResourceRequirements`] in seven layers,
//!   resolved by [`resolve_reservation`] into a [`Reservation`] that records the
//!   source of every field; [`check_slot`] enforces it on a node; [`smallest_size`].
//! - **Fallback** ([`fallback`]): the ordered `(size, location)` attempts of a
//!   [`FallbackPlan`]; explicit sizes never descend.
//! - **Errors** ([`error`], the base every module may import): one [`ErrorCategory`]
//!   for the whole SDK, the [`Classify`] trait, [`ProviderError`], [`StoreError`],
//!   [`InvalidInput`]; sam-core's one [`Error`] ([`failure`]) holds every module's
//!   error and sits at the top; [`signal`] finds the
//!   native codes, reasons, types and statuses in an error however a client rendered
//!   it, [`classify::decide`] is the one order every classifier decides in, and
//!   [`classify_agent_error`] and [`is_agent_crash`] read what coding agents report.
//! - **Retry and timeouts** ([`retry`](mod@retry), [`timeout`]): [`RetryPolicy`] with a pure
//!   `next_delay` and one async [`retry()`] loop; [`TimeoutPolicy`] with derived sweep
//!   thresholds, checked with the lease by [`TimeoutPolicy::validate_with_lease`].
//! - **Secrets** ([`secret`]): [`Secret`] never prints; [`redact`] scrubs text and
//!   masks every registered secret ([`secret::register`]); the processes started for
//!   a task inherit only an allow-list of their parent's environment ([`environment`]).
//! - **Tokens** ([`token`]): scoped, signed, expiring tokens between the control
//!   plane and VM agents ([`TokenSigner`]); user API tokens as records
//!   ([`api_token`]: [`ApiTokenRecord`], hashed, named, expiring, revocable).
//! - **Records** ([`record`]): what the store keeps ([`TaskRecord`], [`NodeRecord`],
//!   [`WorkspaceRecord`], [`KeyRecord`], …), plain data below every trait.
//! - **Traits**: [`Provider`], [`Store`] (joining [`TaskStore`], [`FleetStore`] and
//!   [`AccountStore`]), [`Scheduler`], [`AgentSession`] and [`NodeAgent`], each with a
//!   `# Contract`; [`delegate_store!`] forwards a store wrapper's methods.
//! - **Control plane** ([`control`]): [`ControlPlane`], one type with one room per
//!   job — submission as a pure resolution of the layers, with the source of every
//!   setting; the durable task runner ([`ControlPlane::tick`], [`ControlPlane::run`]);
//!   callbacks with scoped tokens; the sweeps ([`ControlPlane::sweep`]); users,
//!   projects and credentials behind [`ControlPlane::accounts`]. [`DefaultScheduler`]
//!   places tasks. The [`control`] module docs show the whole
//!   control plane running over the in-memory store and the fake provider.
//!
//! sam-core performs no network, file or SQL IO of its own.
//!
//! ## Features
//! - `testkit`: conformance suites for [`Store`] and [`Provider`] backends
//!   ([`store_conformance!`], [`provider_conformance!`]).
//! - `mock`: `mockall` mocks of the traits (`MockProvider`, `MockStore`, …).
//!
//! ## Example
//! Resolve a reservation, then plan which machines to try for it:
//! ```
//! use sam_core::{
//!     Catalog, FallbackPlan, Layer, Location, PlanRequest, ProviderKind, RequirementLayers,
//!     ResourceRequirements, ServerType, SizeDescent, VmSize, classify_agent_error,
//!     resolve_reservation, ErrorCategory,
//! };
//!
//! // The project asks for 6 GB of memory; everything else is the platform default.
//! let mut layers = RequirementLayers::default();
//! layers.project = ResourceRequirements { min_memory_gb: Some(6.0), ..Default::default() };
//! let reservation = resolve_reservation(&layers).unwrap();
//! assert_eq!(reservation.memory_mb, 6 * 1024);
//! assert_eq!(reservation.sources.memory, Layer::Project);
//! assert_eq!(reservation.sources.vcpu, Layer::Platform);
//!
//! let loc = |s: &str| Location::new(s).unwrap();
//! let server = |name: &str, vcpu, memory_gb, disk_gb| ServerType {
//!     name: name.into(), vcpu, memory_gb, disk_gb: Some(disk_gb), price: None,
//!     locations: vec![loc("fsn1"), loc("nbg1")],
//! };
//! let catalog = Catalog {
//!     provider: ProviderKind::Hetzner,
//!     server_types: vec![server("cx23", 2, 4, 40), server("cx33", 4, 8, 80), server("cx43", 8, 16, 160)],
//!     sizes: [(VmSize::Small, "cx23"), (VmSize::Medium, "cx33"), (VmSize::Large, "cx43")]
//!         .into_iter().map(|(s, n)| (s, n.to_string())).collect(),
//!     default_location: Some(loc("fsn1")),
//! };
//!
//! // A platform-default "large" may step down, but never below what 6 GB needs.
//! let plan = FallbackPlan::new(&PlanRequest {
//!     catalog: &catalog,
//!     size: VmSize::Large,
//!     size_source: Layer::Platform,
//!     location: None,
//!     location_source: Layer::Platform,
//!     reservation: &reservation,
//!     descent: SizeDescent::Allowed,
//! }).unwrap();
//! assert_eq!(plan.sizes(), vec![VmSize::Large, VmSize::Medium]);
//! assert_eq!(plan.attempts()[0].location.as_str(), "fsn1");
//!
//! // What an agent reports when its model provider is overloaded.
//! let text = r#"Internal error: API Error: 529 {"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
//! assert_eq!(classify_agent_error(text), ErrorCategory::TransientCapacity);
//! ```

pub mod api_token;
pub mod boot;
pub mod classify;
pub mod clock;
pub mod control;
pub mod crash;
pub mod credential;
pub mod environment;
pub mod error;
pub mod failure;
pub mod fallback;
pub mod github;
pub mod model;
pub mod node_agent;
pub mod placement;
pub mod project;
pub mod provider;
pub mod record;
pub mod replacement;
pub mod repository;
pub mod reservation;
pub mod retry;
pub mod scheduler;
pub mod secret;
pub mod session;
pub mod signal;
pub mod store;
pub mod timeout;
pub mod token;

#[cfg(feature = "testkit")]
pub mod testkit;

pub use api_token::{
    ApiTokenKind, ApiTokenRefusal, LAST_USE_GRANULARITY, MAX_API_TOKEN_NAME, check_api_token_name,
    hash_api_token,
};
pub use boot::{
    BootFailure, BootFailureReport, BootPhaseRecord, MAX_BOOT_PHASES, MAX_JOURNAL_LINE_CHARS,
    MAX_JOURNAL_LINES, MAX_PHASE_NAME_CHARS, NodeBootRecord,
};
pub use classify::{classify_agent_error, is_agent_crash};
pub use clock::{Clock, ManualClock, TokioClock};
pub use control::PROVIDER_CACHE_CAPACITY;
pub use control::{
    BootRenderer, ControlPlane, ControlPlaneConfig, ControlPlaneParts, HeartbeatReply,
    LayerSettings, MAX_TRANSCRIPT_PAGE, NodeMetrics, PlatformCredential, ServedRepository,
    SessionCallback, SubmitRequest, WorkspaceGithub, WorkspaceProfile,
};
pub use control::{
    CredentialInput, MAX_LINEAGE_DEPTH, ProfileInput, ProjectInput, TaskSource, UserInput,
};
pub use control::{KeptNode, SweepReport};
pub use credential::{
    CUSTOM_AGENT, CredentialCipher, CredentialError, CredentialKind, CredentialOwner,
    CredentialRecord, CredentialTarget, CredentialView, Sealed, SetupChoices, SetupItem,
    SetupStatus, agent_env_var, check_credential, resolve_credential, setup_status,
};
pub use error::{
    BoxError, Classify, ErrorCategory, InvalidInput, MAX_BODY_BYTES, PolicyError, ProviderError,
    StoreError, StoreErrorKind, truncate_body,
};
pub use failure::{Error, Result};
pub use fallback::{Attempt, FallbackPlan, PlanError, PlanRequest, PlanStep, SizeDescent};
pub use github::{
    ExternalInstallationId, GitCredential, GithubAccess, GithubError, GithubInstallation,
    InstallationKey, PullRequestMode, PullRequestRequest, RepoRef, RepositoryHost, TaskOutput,
    output_branch, token_is_fresh,
};
pub use model::{
    Catalog, DEFAULT_LIGHTWEIGHT_IMAGE, ExecutionStep, Id, Labels, Location, MANAGED_LABEL,
    NODE_LABEL, NodeHealth, NodeId, NodeLifecycle, NodeRole, NodeStatus, ParseError, Price,
    ProfileId, ProjectId, ProviderKind, ServerType, TaskId, TaskStatus, UserId, VmId, VmInstance,
    VmSize, VmSpec, VmState, WorkspaceId,
};
pub use node_agent::{
    AgentHealth, NodeAgent, NodeAgentError, SessionReport, SessionRequest, WorkspaceReport,
    WorkspaceRequest,
};
pub use placement::{
    Candidate, DEFAULT_MAX_STALENESS, DefaultScheduler, FleetIndex, best_fit, fits, leftover,
};
pub use project::{
    AgentOptions, AgentProfileRecord, Effort, ProjectRecord, ScalingOverrides, UserRecord,
};
pub use provider::{
    Provider, ProviderCapabilities, ProviderCredential, ProviderFactory, QEMU_CONTROL_PLANE_ADDRESS,
};
pub use record::{
    KeyPurpose, KeyRecord, Lease, LeaseRelease, LeaseReleased, LeaseRequest, LeasedOutcome,
    LeasedWrite, Lineage, LineageKind, NodeBeat, NodeFilter, NodeRecord, PlacementCandidate,
    SlotOutcome, StatusEvent, TaskError, TaskEvent, TaskEventKind, TaskFilter, TaskRecord,
    TaskSpec, TaskUpdate, TranscriptQuery, Transition, WarmClaim, WorkspaceRecord, WorkspaceStatus,
};
pub use replacement::{LossDecision, LostNode, NodeLoss, VANISHED_GRACE, after_node_loss};
pub use repository::{
    MAX_PROMPT_BYTES, MAX_REPOSITORY_BYTES, PromptRefusal, Refusal, Repository, check_prompt,
    check_repository, parse_repository,
};
pub use reservation::{
    Capacity, Layer, NoSizeFits, RequirementLayers, Reservation, ReservationSources,
    ResourceRequirements, SlotRejection, check_slot, resolve_reservation, smallest_size,
};
pub use retry::{RetryError, RetryEvent, RetryOn, RetryPolicy, jitter_sample, retry, retry_notify};
pub use scheduler::{
    NodeChoice, Placement, PlacementDecision, PlacementExplanation, PlacementRequest, Rejected,
    Scheduler,
};
pub use secret::{REDACTED, Secret, redact};
pub use session::{
    AgentError, AgentFailure, AgentInfo, AgentSession, MAX_COALESCED_TEXT, PermissionMode,
    SessionEvent, SessionId, StopReason, TimedEvent, coalesce_chunks,
};
pub use signal::{Signal, SignalKind, SignalOrigin, Signals};
pub use store::{AccountStore, ApiTokenRecord, FleetStore, Store, StoreAccess, TaskStore};
pub use timeout::{DerivedTimeouts, LEASE_RENEWALS, STALE_HEARTBEATS, TimeoutPolicy};
pub use token::{MAX_TOKEN_TTL, TokenClaims, TokenError, TokenScope, TokenSigner, active_key};

#[cfg(feature = "mock")]
pub use node_agent::MockNodeAgent;
#[cfg(feature = "mock")]
pub use provider::MockProvider;
#[cfg(feature = "mock")]
pub use scheduler::MockScheduler;
#[cfg(feature = "mock")]
pub use session::MockAgentSession;
#[cfg(feature = "mock")]
pub use store::MockStore;
