//! The control plane's configuration.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::credential::CredentialKind;
use crate::fallback::SizeDescent;
use crate::model::{ProviderKind, VmSize};
use crate::project::{LayerSettings, WorkspaceProfile};
use crate::retry::RetryPolicy;
use crate::secret::Secret;
use crate::timeout::TimeoutPolicy;

/// How the control plane behaves; plain data, checked by [`ControlPlane::new`](crate::ControlPlane::new).
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
    /// Tasks advanced at once by one [`ControlPlane::tick`](crate::ControlPlane::tick).
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
    /// How long a task's transcript is kept after the task ended; `None` keeps it
    /// for good. The sweep deletes older ones.
    pub transcript_retention: Option<Duration>,
}

impl ControlPlaneConfig {
    /// Defaults around a driver id and the platform's provider: medium size, the
    /// lightweight profile unless a devcontainer is named, the `demo` agent, SAM's
    /// timeouts, leases of 60 s, polls every 2 s, 16 tasks at once, tokens for 8 h,
    /// one replacement node per task, transcripts kept 30 days after their task ended.
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
            transcript_retention: Some(Duration::from_secs(30 * 24 * 3600)),
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

/// A credential the platform itself provides, from configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct PlatformCredential {
    /// What kind of secret it is.
    pub kind: CredentialKind,
    /// The secret.
    pub secret: Secret,
}
