//! Sweeps: stuck tasks, the warm pool, node lifetimes, stale heartbeats and orphans.
//!
//! Every threshold is derived from the [`crate::TimeoutPolicy`], so a sweep never
//! fires before the wait it guards can finish.

use std::collections::{BTreeSet, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::control::ControlPlane;
use crate::credential::CredentialOwner;
use crate::error::ErrorCategory;
use crate::failure::Error;
use crate::model::{
    Labels, MANAGED_LABEL, NODE_LABEL, NodeHealth, NodeId, NodeLifecycle, NodeStatus, ProviderKind,
    TaskId, TaskStatus,
};
use crate::node_agent::SessionReport;
use crate::store::{NodeFilter, NodeRecord, TaskFilter, TaskRecord, WorkspaceRecord};
use crate::timeout::elapsed;

/// What one sweep did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SweepReport {
    /// Tasks failed for being stuck past a threshold.
    pub stuck_failed: usize,
    /// In-progress tasks probed and found alive.
    pub probed_alive: usize,
    /// Warm or expired nodes destroyed.
    pub nodes_destroyed: usize,
    /// Idle active nodes that no task uses, returned to the warm pool.
    pub nodes_warmed: usize,
    /// Workspace slots still held by tasks that had ended, freed.
    pub slots_freed: usize,
    /// Nodes marked stale for missing heartbeats.
    pub nodes_stale: usize,
    /// Provider VMs deleted as orphans.
    pub orphans_deleted: usize,
    /// Node rows marked deleted because their VM is gone.
    pub rows_marked_deleted: usize,
    /// Nodes that could not be destroyed this time, and why; each stays recorded
    /// (marked `destroying`) and the next sweep tries again.
    pub nodes_kept: Vec<KeptNode>,
    /// Transcript entries of tasks ended longer ago than the retention, deleted.
    pub transcript_entries_pruned: u64,
}

impl SweepReport {
    /// Counts a destroyed node, or records why it was kept.
    pub(super) fn destroyed(&mut self, node: &NodeId, result: Result<(), Error>) {
        match result {
            Ok(()) => self.nodes_destroyed += 1,
            Err(e) => self.nodes_kept.push(KeptNode {
                node: node.clone(),
                category: crate::error::Classify::category(&e),
                reason: crate::secret::redact(&e.to_string()).into_owned(),
            }),
        }
    }
}

/// A node the sweep could not destroy, kept recorded for the next sweep.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeptNode {
    /// The node.
    pub node: NodeId,
    /// The category of the failure (`auth_error` when its owner's credential is gone).
    pub category: ErrorCategory,
    /// Why, as a sentence.
    pub reason: String,
}

/// The time `d` before `now` (the earliest time when that is out of range).
pub(super) fn silent_since(now: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(d)
        .ok()
        .and_then(|d| now.checked_sub_signed(d))
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

pub(super) fn minutes(d: Duration) -> String {
    format!("{} minutes", d.as_secs().div_ceil(60))
}

impl ControlPlane {
    /// Runs every sweep once.
    ///
    /// # Errors
    /// Store failures while listing; a failure on one item is logged and the sweep
    /// goes on with the rest.
    pub async fn sweep(&self) -> Result<SweepReport, Error> {
        let mut report = SweepReport::default();
        self.sweep_tasks(&mut report).await?;
        self.sweep_nodes(&mut report).await?;
        self.sweep_orphans(&mut report).await?;
        self.sweep_transcripts(&mut report).await?;
        Ok(report)
    }

    /// Deletes the transcripts of tasks that ended longer ago than
    /// [`ControlPlaneConfig::transcript_retention`](crate::ControlPlaneConfig::transcript_retention).
    async fn sweep_transcripts(&self, report: &mut SweepReport) -> Result<(), Error> {
        // A retention too long to subtract keeps everything.
        let cutoff = self.config.transcript_retention.and_then(|retention| {
            let retention = chrono::Duration::from_std(retention).ok()?;
            self.clock.now().checked_sub_signed(retention)
        });
        if let Some(cutoff) = cutoff {
            report.transcript_entries_pruned += self.store.prune_task_events(cutoff).await?;
        }
        Ok(())
    }

    /// Why a live task is stuck, or `None`.
    pub(super) fn stuck_reason(&self, task: &TaskRecord, now: DateTime<Utc>) -> Option<String> {
        let t = &self.config.timeouts;
        let age = elapsed(task.created_at, now);
        if age > t.task_absolute {
            return Some(format!(
                "The task ran longer than the absolute limit of {} hours.",
                t.task_absolute.as_secs() / 3600
            ));
        }
        let stuck_queued = t.stuck_queued_after(task.node_replacements);
        match task.status {
            TaskStatus::Queued if age > stuck_queued => Some(format!(
                "The task was stuck in {} (\"{}\") for over {}: waiting for capacity, the server and its agent took longer than their limits allow.",
                task.execution_step,
                task.execution_step.label(),
                minutes(stuck_queued)
            )),
            TaskStatus::Delegated if elapsed(task.step_started_at, now) > t.stuck_delegated() => {
                Some(format!(
                    "The task was stuck in {} (\"{}\") for over {}: the workspace did not become ready.",
                    task.execution_step,
                    task.execution_step.label(),
                    minutes(t.stuck_delegated())
                ))
            }
            _ => None,
        }
    }

    pub(super) async fn sweep_tasks(&self, report: &mut SweepReport) -> Result<(), Error> {
        let now = self.clock.now();
        let live = self.store.list_tasks(&TaskFilter::live()).await?;
        for task in live {
            if let Some(reason) = self.stuck_reason(&task, now) {
                match self.fail(&task, ErrorCategory::Transient, &reason).await {
                    Ok(_) => {
                        report.stuck_failed += 1;
                        crate::crash::point(crate::crash::SWEEP_TASKS);
                    }
                    Err(e) => {
                        tracing::warn!(task = %task.id, error = %e, "could not fail a stuck task")
                    }
                }
                continue;
            }
            if task.status != TaskStatus::InProgress {
                continue;
            }
            // In progress: probe past the soft limit; fail past the hard limit only
            // when the probe cannot show the session alive.
            let t = &self.config.timeouts;
            let running_for = elapsed(task.step_started_at, now);
            if running_for <= t.in_progress_soft {
                continue;
            }
            let probe = match (&task.provisioned_node_id, &task.workspace_id) {
                (Some(node), Some(ws)) => match self.store.get_node(node).await? {
                    Some(node) => self
                        .node_agent
                        .session_status(&node, ws)
                        .await
                        .ok()
                        .flatten(),
                    None => None,
                },
                _ => None,
            };
            match probe {
                Some(SessionReport::Running) => report.probed_alive += 1,
                Some(other) => {
                    if let Err(e) = self.apply_session_report(&task, &other).await {
                        tracing::warn!(task = %task.id, error = %e, "could not apply the probed session state");
                    }
                }
                None if running_for > t.in_progress_hard => {
                    let reason = format!(
                        "The agent has been working for over {} hours and its session cannot be reached.",
                        t.in_progress_hard.as_secs() / 3600
                    );
                    if self
                        .fail(&task, ErrorCategory::Transient, &reason)
                        .await
                        .is_ok()
                    {
                        report.stuck_failed += 1;
                    }
                }
                None => {}
            }
        }
        Ok(())
    }

    /// How long `node` may stay warm: the warm timeout of the project whose task the
    /// node was provisioned for, when that project overrides it, else the policy's.
    pub(super) async fn warm_timeout(&self, node: &NodeRecord) -> Result<Duration, Error> {
        let default = self.config.timeouts.warm_node;
        let Some(creator) = &node.created_for else {
            return Ok(default);
        };
        let Some(project) = self
            .store
            .get_task(creator)
            .await?
            .and_then(|task| task.spec.project)
        else {
            return Ok(default);
        };
        Ok(self
            .store
            .get_project(&project)
            .await?
            .and_then(|p| p.scaling.warm_timeout_secs)
            .map_or(default, Duration::from_secs))
    }

    pub(super) async fn sweep_nodes(&self, report: &mut SweepReport) -> Result<(), Error> {
        let now = self.clock.now();
        let t = &self.config.timeouts;
        // Nodes whose destruction failed earlier: try again.
        let doomed = self
            .store
            .list_nodes(&NodeFilter {
                lifecycles: vec![NodeLifecycle::Destroying],
                ..NodeFilter::default()
            })
            .await?;
        for node in doomed.iter().filter(|n| n.status.is_live()) {
            let result = self.destroy_node(node).await;
            report.destroyed(&node.id, result);
        }
        let nodes = self
            .store
            .list_nodes(&NodeFilter {
                statuses: vec![NodeStatus::Running, NodeStatus::Recovery],
                ..NodeFilter::default()
            })
            .await?;
        let live = self.store.list_tasks(&TaskFilter::live()).await?;
        let used: HashSet<&NodeId> = live
            .iter()
            .filter_map(|task| task.provisioned_node_id.as_ref())
            .collect();
        let live: HashSet<&TaskId> = live.iter().map(|task| &task.id).collect();
        for node in nodes {
            let warm_expired = node.lifecycle == NodeLifecycle::Warm
                && match node.warm_since {
                    Some(since) => elapsed(since, now) > self.warm_timeout(&node).await?,
                    None => false,
                };
            let too_old = elapsed(node.created_at, now) > t.node_max_lifetime;
            // Active with no task on it or headed for it, for longer than a lease: its
            // task ended elsewhere, or a driver claimed it and died before a task
            // recorded it. Nothing else would ever warm or destroy it.
            let idle = node.lifecycle == NodeLifecycle::Active
                && !used.contains(&node.id)
                && elapsed(node.updated_at, now) > self.config.lease;
            let held: Vec<WorkspaceRecord> = self
                .store
                .list_workspaces(&node.id)
                .await?
                .into_iter()
                .filter(|w| w.status.holds_slot())
                .collect();
            // A slot held for a task that ended: its driver died between ending the
            // task and releasing what it held. Release it now; the node follows.
            let mut freed = false;
            for ws in held.iter().filter(|w| !live.contains(&w.task_id)) {
                if let Some(mut task) = self.store.get_task(&ws.task_id).await?
                    && task.status.is_terminal()
                {
                    tracing::info!(task = %task.id, workspace = %ws.id, "releasing what an ended task still held");
                    task.provisioned_node_id = Some(node.id.clone());
                    task.workspace_id = Some(ws.id.clone());
                    self.release(&task).await;
                    report.slots_freed += 1;
                    freed = true;
                }
            }
            if freed {
                continue;
            }
            if warm_expired || too_old || idle {
                let busy = !held.is_empty();
                let healthy = node.ready_at.is_some() && node.health == NodeHealth::Healthy;
                if !busy && idle && !too_old && healthy {
                    tracing::info!(node = %node.id, "returning an idle node to the warm pool");
                    if self.store.release_node_to_warm(&node.id, now).await? {
                        report.nodes_warmed += 1;
                    }
                    continue;
                }
                if !busy {
                    tracing::info!(node = %node.id, warm_expired, too_old, "destroying node");
                    let result = self.destroy_node(&node).await;
                    report.destroyed(&node.id, result);
                    crate::crash::point(crate::crash::SWEEP_NODES);
                    continue;
                }
            }
            let stale = node
                .last_heartbeat_at
                .is_some_and(|beat| elapsed(beat, now) > t.heartbeat_stale);
            // Conditional in the store, not a write-back of the row read above: a warm
            // claim or release, or a beat, may have landed since.
            if stale
                && node.health == NodeHealth::Healthy
                && self
                    .store
                    .mark_node_stale(&node.id, silent_since(now, t.heartbeat_stale), now)
                    .await?
            {
                report.nodes_stale += 1;
            }
        }
        Ok(())
    }

    pub(super) async fn sweep_orphans(&self, report: &mut SweepReport) -> Result<(), Error> {
        let now = self.clock.now();
        let rows = self.store.list_nodes(&NodeFilter::default()).await?;
        let live: HashSet<String> = rows
            .iter()
            .filter(|n| n.status.is_live())
            .map(|n| crate::model::label_safe(n.id.as_str()))
            .collect();
        let mut managed = Labels::new();
        managed.insert(MANAGED_LABEL, "true")?;
        // Every account VMs are made in: the platform's providers, and the provider
        // of each credential owner that has nodes recorded.
        let mut accounts: BTreeSet<(ProviderKind, Option<CredentialOwner>)> = self
            .providers
            .platform_kinds()
            .map(|kind| (kind, None))
            .collect();
        accounts.extend(
            rows.iter()
                .filter_map(|n| n.credential_owner.clone().map(|o| (n.provider, Some(o)))),
        );
        for (kind, owner) in accounts {
            let provider = match self.provider_for(kind, owner.as_ref()).await {
                Ok(provider) => provider,
                Err(e) => {
                    tracing::warn!(provider = %kind, owner = ?owner.as_ref().map(ToString::to_string), error = %e, "cannot reach the account for orphan reconciliation");
                    continue;
                }
            };
            let vms = match provider.list_vms(&managed).await {
                Ok(vms) => vms,
                Err(e) => {
                    tracing::warn!(provider = %provider.kind(), error = %e, "could not list VMs for orphan reconciliation");
                    continue;
                }
            };
            let existing: HashSet<&str> = vms.iter().map(|v| v.id.as_str()).collect();
            for vm in &vms {
                let owned = vm.labels.get(NODE_LABEL).is_some_and(|n| live.contains(n));
                let old_enough = vm
                    .created_at
                    .is_none_or(|at| elapsed(at, now) >= self.config.orphan_min_age);
                if !owned && old_enough {
                    match provider.delete_vm(&vm.id).await {
                        Ok(()) => {
                            tracing::info!(vm = %vm.id, provider = %provider.kind(), "deleted orphan VM");
                            report.orphans_deleted += 1;
                            crate::crash::point(crate::crash::SWEEP_ORPHANS);
                        }
                        Err(e) => {
                            tracing::warn!(vm = %vm.id, error = %e, "could not delete orphan VM")
                        }
                    }
                }
            }
            // Rows whose VM is gone are marked deleted (rows still being created have
            // no VM id yet and belong to their task's provisioning step).
            for node in rows.iter().filter(|n| {
                n.provider == kind
                    && n.credential_owner == owner
                    && n.status.is_live()
                    && n.status != NodeStatus::Creating
            }) {
                if let Some(vm) = &node.vm_id
                    && !existing.contains(vm.as_str())
                    && matches!(provider.get_vm(vm).await, Ok(None))
                {
                    let mut gone = node.clone();
                    gone.status = NodeStatus::Deleted;
                    gone.updated_at = now;
                    self.store.put_node(&gone).await?;
                    report.rows_marked_deleted += 1;
                }
            }
        }
        Ok(())
    }
}
