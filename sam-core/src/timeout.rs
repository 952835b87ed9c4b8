//! Every wait's timeout, from one policy.
//!
//! SAM's incident: cloud-init took 8–12 minutes, the agent-ready timeout was 10 minutes,
//! and an independently configured stuck-queued sweep was also 10 minutes, so the
//! sweep killed tasks before the agent could report ready. Here the sweep thresholds
//! are *derived* from the waits they guard, and [`TimeoutPolicy::validate`] rejects any
//! policy where a sweep would fire before its wait can finish.
//!
//! [`TimeoutPolicy::validate_with_lease`] also checks the policy with the lease on
//! tasks and the longest provider call: a server's configuration is checked this way
//! when it loads, and the values it derives ([`DerivedTimeouts`]) are what it prints.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::PolicyError;

const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);

/// How many times a lease is renewed within its own length: the driver renews the
/// lease of every step under way each `lease / LEASE_RENEWALS`.
///
/// With 3, a lease survives one missed renewal with a third of it to spare.
/// [`TimeoutPolicy::validate_with_lease`] uses it to check that the lease left after a
/// missed renewal still covers one whole provider call.
pub const LEASE_RENEWALS: u32 = 3;

/// How many heartbeat intervals [`TimeoutPolicy::heartbeat_stale`] must cover at least,
/// so one late or lost heartbeat never makes a node stale.
pub const STALE_HEARTBEATS: u32 = 3;

/// The base timeouts; the sweep thresholds are derived from them.
///
/// The provisioning and agent-ready clocks both start when the node's creation starts
/// (`provisioning_started_at`): they overlap rather than add up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimeoutPolicy {
    /// How long a task may wait for capacity (every size and location sold out),
    /// from submission; also the budget of the capacity retry policy.
    pub capacity_wait: Duration,
    /// From the create call until the provider reports the VM running.
    pub node_provisioning: Duration,
    /// From the create call until the VM agent reports ready (covers cloud-init).
    pub agent_ready: Duration,
    /// From the workspace request until the agent reports it ready.
    pub workspace_ready: Duration,
    /// Added to the longer of the node waits to get the stuck-queued threshold.
    pub queued_grace: Duration,
    /// Added to `workspace_ready` to get the stuck-delegated threshold.
    pub delegated_grace: Duration,
    /// An in-progress task older than this is probed.
    pub in_progress_soft: Duration,
    /// An in-progress task older than this fails unless the probe shows it alive.
    pub in_progress_hard: Duration,
    /// No task lives longer than this, whatever its state.
    pub task_absolute: Duration,
    /// A node with no workspace stays warm this long before it is destroyed.
    pub warm_node: Duration,
    /// No node lives longer than this.
    pub node_max_lifetime: Duration,
    /// How often the VM agent sends a heartbeat.
    pub heartbeat_interval: Duration,
    /// A node whose last heartbeat is older than this is stale.
    pub heartbeat_stale: Duration,
    /// The longest a prompt attempt may go without a word from the agent; a silent
    /// attempt is ended as `transient` and retried by the prompt policy. Policies
    /// written before this field existed read the default.
    #[serde(default = "default_agent_idle")]
    pub agent_idle: Duration,
    /// The longest one git command on a node may run (a clone, a push) before it is
    /// killed: a repository that never answers (or a transport that waits for ever)
    /// fails its task instead of holding the workspace until a sweep. Within
    /// `workspace_ready`, which the clone is part of.
    #[serde(default = "default_git_command")]
    pub git_command: Duration,
}

fn default_agent_idle() -> Duration {
    5 * MINUTE
}

/// [`TimeoutPolicy::git_command`] when a stored policy predates it.
fn default_git_command() -> Duration {
    10 * MINUTE
}

impl Default for TimeoutPolicy {
    /// SAM's current values: capacity wait 5 min, provisioning 15 min, agent ready 15 min, workspace ready
    /// 30 min, queued grace 5 min, delegated grace 1 min, in-progress 4 h / 8 h,
    /// absolute 24 h, warm 30 min, node lifetime 24 h, heartbeat every 60 s, stale at 180 s,
    /// an agent silent for 5 min ends its prompt attempt, and one git command 10 min.
    fn default() -> Self {
        Self {
            capacity_wait: 5 * MINUTE,
            node_provisioning: 15 * MINUTE,
            agent_ready: 15 * MINUTE,
            workspace_ready: 30 * MINUTE,
            queued_grace: 5 * MINUTE,
            delegated_grace: MINUTE,
            in_progress_soft: 4 * HOUR,
            in_progress_hard: 8 * HOUR,
            task_absolute: 24 * HOUR,
            warm_node: 30 * MINUTE,
            node_max_lifetime: 24 * HOUR,
            heartbeat_interval: MINUTE,
            heartbeat_stale: 3 * MINUTE,
            agent_idle: default_agent_idle(),
            git_command: default_git_command(),
        }
    }
}

impl TimeoutPolicy {
    /// When the sweep fails a task still queued (waiting for its node), measured from
    /// submission: the capacity wait, then the longer of `node_provisioning` and
    /// `agent_ready` (their clocks run together from the create call), plus `queued_grace`.
    ///
    /// The base is "agent ready + 5 min"; the capacity wait is added because a
    /// task that waited out its capacity budget and then got a VM must still have its
    /// whole boot time before the sweep may fire.
    pub fn stuck_queued(&self) -> Duration {
        self.capacity_wait
            .saturating_add(self.node_provisioning.max(self.agent_ready))
            .saturating_add(self.queued_grace)
    }

    /// [`TimeoutPolicy::stuck_queued`] for a task that moved off `replacements`
    /// lost nodes: each replacement node gets its whole boot time again (the
    /// longer of `node_provisioning` and `agent_ready`), since the task may have
    /// lost its node at the end of the previous one's.
    pub fn stuck_queued_after(&self, replacements: u32) -> Duration {
        self.node_provisioning
            .max(self.agent_ready)
            .saturating_mul(replacements)
            .saturating_add(self.stuck_queued())
    }

    /// When the sweep fails a task still delegated (waiting for its workspace):
    /// `workspace_ready` plus `delegated_grace`.
    pub fn stuck_delegated(&self) -> Duration {
        self.workspace_ready.saturating_add(self.delegated_grace)
    }

    /// The longest a task can legitimately take through every wait:
    /// stuck-queued, then stuck-delegated, then the hard in-progress limit.
    pub fn longest_legitimate_task(&self) -> Duration {
        self.stuck_queued()
            .saturating_add(self.stuck_delegated())
            .saturating_add(self.in_progress_hard)
    }

    /// Checks that every sweep fires strictly after the wait it guards, and that the
    /// ordered limits are ordered.
    ///
    /// # Errors
    /// [`PolicyError`] naming the first field at fault.
    pub fn validate(&self) -> Result<(), PolicyError> {
        let bad = |field, reason: String| {
            Err(PolicyError {
                policy: "timeout",
                field,
                reason,
            })
        };
        let positive = [
            ("capacity_wait", self.capacity_wait),
            ("node_provisioning", self.node_provisioning),
            ("agent_ready", self.agent_ready),
            ("workspace_ready", self.workspace_ready),
            ("in_progress_soft", self.in_progress_soft),
            ("warm_node", self.warm_node),
            ("heartbeat_interval", self.heartbeat_interval),
            ("agent_idle", self.agent_idle),
            ("git_command", self.git_command),
        ];
        for (field, value) in positive {
            if value.is_zero() {
                return bad(field, "must be greater than zero".to_owned());
            }
        }
        // The sweeps must never fire before the wait they guard can finish.
        for (wait, value) in [
            ("node_provisioning", self.node_provisioning),
            ("agent_ready", self.agent_ready),
        ] {
            if self.stuck_queued() <= self.capacity_wait.saturating_add(value) {
                return bad(
                    "queued_grace",
                    format!("makes the stuck-queued sweep fire before {wait} can finish"),
                );
            }
        }
        if self.stuck_delegated() <= self.workspace_ready {
            return bad(
                "delegated_grace",
                "makes the stuck-delegated sweep fire before workspace_ready can finish".to_owned(),
            );
        }
        if self.in_progress_hard < self.in_progress_soft {
            return bad(
                "in_progress_hard",
                "must not be below in_progress_soft".to_owned(),
            );
        }
        if self.task_absolute < self.longest_legitimate_task() {
            return bad(
                "task_absolute",
                format!(
                    "({:?}) would end tasks still within every other limit ({:?})",
                    self.task_absolute,
                    self.longest_legitimate_task()
                ),
            );
        }
        if self.node_max_lifetime < self.warm_node {
            return bad(
                "node_max_lifetime",
                "must not be below warm_node".to_owned(),
            );
        }
        if self.git_command > self.workspace_ready {
            return bad(
                "git_command",
                "must not be above workspace_ready: the clone is part of preparing a workspace"
                    .to_owned(),
            );
        }
        // A silent attempt must be noticed (and retried) while the task is still within
        // its in-progress probe and its workspace wait: otherwise the sweep, not the
        // idle limit, ends a task whose agent merely hung.
        if self.agent_idle >= self.in_progress_soft {
            return bad(
                "agent_idle",
                format!(
                    "({:?}) must be shorter than in_progress_soft ({:?})",
                    self.agent_idle, self.in_progress_soft
                ),
            );
        }
        if self.agent_idle > self.workspace_ready {
            return bad(
                "agent_idle",
                format!(
                    "({:?}) must not exceed workspace_ready ({:?})",
                    self.agent_idle, self.workspace_ready
                ),
            );
        }
        if self.heartbeat_stale <= self.heartbeat_interval {
            return bad(
                "heartbeat_stale",
                format!(
                    "({}) must be longer than heartbeat_interval ({}), or every node looks stale between beats",
                    seconds(self.heartbeat_stale),
                    seconds(self.heartbeat_interval)
                ),
            );
        }
        Ok(())
    }
}

/// The values a [`TimeoutPolicy`] and a lease derive, once checked together by
/// [`TimeoutPolicy::validate_with_lease`]: what a configuration check prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct DerivedTimeouts {
    /// [`TimeoutPolicy::stuck_queued`].
    pub stuck_queued: Duration,
    /// [`TimeoutPolicy::stuck_delegated`].
    pub stuck_delegated: Duration,
    /// [`TimeoutPolicy::longest_legitimate_task`].
    pub longest_legitimate_task: Duration,
    /// How long a lease on a task lasts.
    pub lease: Duration,
    /// How often the lease of a step under way is renewed: `lease / LEASE_RENEWALS`.
    pub lease_renewal: Duration,
    /// What is left of a lease when one renewal was missed: `lease - lease_renewal`.
    /// At least `provider_call`.
    pub lease_after_missed_renewal: Duration,
    /// The longest a single provider call may take.
    pub provider_call: Duration,
    /// How many heartbeats fit in `heartbeat_stale`: at least [`STALE_HEARTBEATS`].
    pub heartbeats_before_stale: u32,
}

impl TimeoutPolicy {
    /// Checks the policy together with the lease on tasks and the longest single
    /// provider call, and returns the values they derive.
    ///
    /// On top of [`TimeoutPolicy::validate`]:
    /// - `heartbeat_stale` covers at least [`STALE_HEARTBEATS`] heartbeat intervals, so one
    ///   late or lost heartbeat never marks a node stale;
    /// - the lease is renewed [`LEASE_RENEWALS`] times within its length, and the lease
    ///   left after one missed renewal still covers a whole provider call:
    ///   `lease - lease / LEASE_RENEWALS >= provider_call`. A call started just before a
    ///   renewal that never came then ends before another server may take the task over.
    ///
    /// `provider_call` is zero for providers with no network call and no timeout of
    /// their own; only the renewal rule applies then.
    ///
    /// # Errors
    /// [`PolicyError`] naming the first field at fault and the values in conflict.
    pub fn validate_with_lease(
        &self,
        lease: Duration,
        provider_call: Duration,
    ) -> Result<DerivedTimeouts, PolicyError> {
        let bad = |field, reason: String| {
            Err(PolicyError {
                policy: "timeout",
                field,
                reason,
            })
        };
        // Before `validate`, whose heartbeat rule is weaker: a contradiction is
        // reported by the rule that names how far apart the values are.
        if self.heartbeat_stale < self.heartbeat_interval.saturating_mul(STALE_HEARTBEATS) {
            return bad(
                "heartbeat_stale",
                format!(
                    "({}) must cover {STALE_HEARTBEATS} heartbeats of heartbeat_interval ({}), at least {}",
                    seconds(self.heartbeat_stale),
                    seconds(self.heartbeat_interval),
                    seconds(self.heartbeat_interval.saturating_mul(STALE_HEARTBEATS)),
                ),
            );
        }
        self.validate()?;
        let lease_renewal = lease / LEASE_RENEWALS;
        if lease_renewal.is_zero() {
            return bad(
                "lease",
                format!(
                    "({}) is too short to be renewed {LEASE_RENEWALS} times",
                    seconds(lease)
                ),
            );
        }
        let lease_after_missed_renewal = lease - lease_renewal;
        if lease_after_missed_renewal < provider_call {
            return bad(
                "lease",
                format!(
                    "({}) must cover the longest provider call ({}) plus one renewal interval (lease / {LEASE_RENEWALS} = {}): \
                     after a missed renewal only {} of it is left",
                    seconds(lease),
                    seconds(provider_call),
                    seconds(lease_renewal),
                    seconds(lease_after_missed_renewal),
                ),
            );
        }
        let heartbeats_before_stale = u32::try_from(
            self.heartbeat_stale.as_nanos() / self.heartbeat_interval.as_nanos().max(1),
        )
        .unwrap_or(u32::MAX);
        Ok(DerivedTimeouts {
            stuck_queued: self.stuck_queued(),
            stuck_delegated: self.stuck_delegated(),
            longest_legitimate_task: self.longest_legitimate_task(),
            lease,
            lease_renewal,
            lease_after_missed_renewal,
            provider_call,
            heartbeats_before_stale,
        })
    }
}

/// A duration as seconds for an error message: `180 s`, or `0.25 s` below a whole second.
fn seconds(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{} s", d.as_secs_f64())
    }
}

/// Minutes, for messages ("within 15 minutes").
/// The time from `since` to `now`; zero when `now` is earlier (a clock that moved
/// back, a record from another machine).
pub(crate) fn elapsed(
    since: chrono::DateTime<chrono::Utc>,
    now: chrono::DateTime<chrono::Utc>,
) -> Duration {
    (now - since).to_std().unwrap_or_default()
}

pub(crate) fn human(d: Duration) -> String {
    let secs = d.as_secs();
    if secs >= 120 && secs.is_multiple_of(60) {
        format!("{} minutes", secs / 60)
    } else {
        format!("{secs} seconds")
    }
}

#[cfg(test)]
mod tests;
