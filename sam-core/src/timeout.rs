//! Every wait's timeout, from one policy.
//!
//! SAM's incident: cloud-init took 8–12 minutes, the agent-ready timeout was 10 minutes,
//! and an independently configured stuck-queued sweep was also 10 minutes, so the
//! sweep killed tasks before the agent could report ready. Here the sweep thresholds
//! are *derived* from the waits they guard, and [`TimeoutPolicy::validate`] rejects any
//! policy where a sweep would fire before its wait can finish.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::PolicyError;

const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);

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
    /// DESIGN.md starts from "agent ready + 5 min"; the capacity wait is added because a
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
                "must be longer than heartbeat_interval, or every node looks stale between beats"
                    .to_owned(),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
