//! The steps after placement: waiting for the node's agent, creating the workspace,
//! starting the agent session and probing it, and what happens when a node is lost.

use super::provision::plan_entry;
use super::{Next, after};
use crate::control::{ControlPlane, TaskEventKind};
use crate::error::{Classify, ErrorCategory};
use crate::failure::Error;
use crate::github::output_branch;
use crate::model::{ExecutionStep, NodeHealth, TaskStatus, VmState, WorkspaceId};
use crate::node_agent::{SessionReport, SessionRequest, WorkspaceReport, WorkspaceRequest};
use crate::replacement::{LossDecision, LostNode, NodeLoss, after_node_loss};
use crate::store::{
    LeasedWrite, NodeBeat, NodeRecord, SlotOutcome, TaskRecord, TaskUpdate, WorkspaceRecord,
    WorkspaceStatus,
};
use crate::timeout::elapsed;
use crate::timeout::human;

/// The loss a node's recorded boot failure means, if it has one.
pub(in crate::control) fn boot_loss(node: &NodeRecord) -> Option<NodeLoss> {
    node.boot.failure.as_ref().map(|f| NodeLoss::BootFailed {
        phase: f.phase.clone(),
        exit_status: f.exit_status,
    })
}

impl ControlPlane {
    /// The node is gone: place the task again (only possible before it was delegated).
    pub(in crate::control) async fn node_lost(&self, task: &TaskRecord) -> Result<Next, Error> {
        if task.status == TaskStatus::Queued {
            return Ok(Next::Step {
                step: ExecutionStep::NodeSelection,
                update: Box::new(TaskUpdate {
                    provisioned_node_id: Some(None),
                    ..TaskUpdate::default()
                }),
                at: self.clock.now(),
            });
        }
        self.fail(task, ErrorCategory::Transient, "The task's server is gone.")
            .await
    }

    pub(in crate::control) async fn await_agent_ready(
        &self,
        task: &TaskRecord,
    ) -> Result<Next, Error> {
        // A node whose boot failed is read even once its VM is deleted: the task
        // moves on because of it.
        if let Some(node) = self.recorded_node(task).await?
            && let Some(loss) = boot_loss(&node)
        {
            return self.lose_node(task, &node, loss).await;
        }
        let Some(mut node) = self.task_node(task).await? else {
            return self.node_lost(task).await;
        };
        let now = self.clock.now();
        if node.ready_at.is_none() {
            match self.node_agent.health(&node).await {
                Ok(Some(health)) => {
                    let beat = NodeBeat {
                        at: now,
                        ready_version: Some(health.version),
                        boot_timeline: Vec::new(),
                    };
                    self.store.record_node_beat(&node.id, &beat).await?;
                    node.ready_at = Some(now);
                }
                Ok(None) => {}
                Err(e) => tracing::debug!(node = %node.id, error = %e, "agent not reachable yet"),
            }
        }
        if node.ready_at.is_some() {
            return Ok(self.step_to(ExecutionStep::WorkspaceCreation));
        }
        // A VM that vanished or failed while its agent was awaited will never
        // answer: the task moves on now rather than at the agent-ready timeout.
        if let Some(loss) = self.vm_loss(&node).await {
            return self.lose_node(task, &node, loss).await;
        }
        let started = task.provisioning_started_at.unwrap_or(node.created_at);
        if elapsed(started, now) > self.config.timeouts.agent_ready {
            // A VM that hung while it booted (seen with QEMU under emulation): another
            // node may boot, while the replacement budget lasts.
            if task.node_replacements < self.config.node_replacements {
                let waited = self.config.timeouts.agent_ready;
                return self
                    .lose_node(task, &node, NodeLoss::NeverReady { waited })
                    .await;
            }
            let message = format!(
                "The server's agent did not report ready within {} (agent ready timeout).",
                human(self.config.timeouts.agent_ready)
            );
            return self.fail(task, ErrorCategory::Transient, &message).await;
        }
        Ok(self.poll())
    }

    /// The node the task names, whatever its status (`None` when it names none or
    /// the row is gone).
    pub(in crate::control) async fn recorded_node(
        &self,
        task: &TaskRecord,
    ) -> Result<Option<NodeRecord>, Error> {
        match &task.provisioned_node_id {
            Some(id) => Ok(self.store.get_node(id).await?),
            None => Ok(None),
        }
    }

    /// Whether the provider says `node`'s VM vanished or failed. A provider that
    /// cannot be asked says nothing: the agent-ready timeout still holds.
    pub(in crate::control) async fn vm_loss(&self, node: &NodeRecord) -> Option<NodeLoss> {
        let vm = node.vm_id.as_ref()?;
        let provider = self.node_provider(node).await.ok()?;
        match provider.get_vm(vm).await {
            Ok(None) => Some(NodeLoss::VmVanished),
            Ok(Some(vm)) if vm.state == VmState::Failed => {
                Some(NodeLoss::VmFailed { reason: vm.failure })
            }
            Ok(Some(_)) => None,
            Err(e) => {
                tracing::debug!(node = %node.id, error = %e, "could not look the node's VM up");
                None
            }
        }
    }

    /// The task lost `node` before running on it: the node is deleted (one made
    /// for the task, or one nobody else uses) or marked stale, the task's slot on
    /// it is freed, and the task moves to another node while its replacement
    /// budget lasts ([`crate::replacement::after_node_loss`]), or fails. A node
    /// made for the task is replaced only once its VM is deleted.
    pub(in crate::control) async fn lose_node(
        &self,
        task: &TaskRecord,
        node: &NodeRecord,
        loss: NodeLoss,
    ) -> Result<Next, Error> {
        let provisioned = node.created_for.as_ref() == Some(&task.id);
        if provisioned || !self.used_by_others(&node.id, &task.id).await {
            // A failure is logged and the node kept, `destroying`, for the node sweep.
            if self.destroy_node(node).await.is_err() && provisioned {
                // The task's VM may still run: no replacement is made before it is
                // gone, so a task never has two VMs. The next visit tries again.
                return Ok(self.poll());
            }
        } else {
            // Others still run there: nothing more is placed on it, and the node
            // sweep handles it as any silent node. The write is conditional, so a
            // heartbeat (a sign the agent is back) is never undone, and heals it.
            let now = self.clock.now();
            self.store.mark_node_stale(&node.id, now, now).await?;
        }
        tracing::warn!(task = %task.id, node = %node.id, %loss, "the task lost its node");
        self.emit_logged(
            &task.id,
            TaskEventKind::NodeLost {
                node: node.id.clone(),
                reason: loss.to_string(),
            },
        )
        .await;
        let ws = Self::workspace_id(task)?;
        if let Some(record) = self.store.get_workspace(&ws).await?
            && record.node_id == node.id
            && record.status.holds_slot()
        {
            self.store
                .update_workspace(&ws, WorkspaceStatus::Error, None, self.clock.now())
                .await?;
            self.scheduler.released(&task.id, &ws);
        }
        let provider = self.task_provider(task).await?;
        let plan = self.plan(task, provider.as_ref())?;
        let lost = if provisioned {
            LostNode::Provisioned {
                plan_entry: plan_entry(&plan, node),
            }
        } else {
            LostNode::Placed
        };
        let decision = after_node_loss(
            &loss,
            lost,
            task.node_replacements,
            self.config.node_replacements,
            plan.attempts().len(),
        );
        let moved = TaskUpdate {
            provisioned_node_id: Some(None),
            provisioned_size: Some(None),
            provisioned_location: Some(None),
            provisioning_started_at: Some(None),
            workspace_id: Some(None),
            node_replacements: Some(task.node_replacements + 1),
            ..TaskUpdate::default()
        };
        match decision {
            LossDecision::Fail { category, message } => self.fail(task, category, &message).await,
            LossDecision::PlaceAgain => Ok(Next::Step {
                step: ExecutionStep::NodeSelection,
                update: Box::new(moved),
                at: self.clock.now(),
            }),
            LossDecision::Provision { from_entry } => {
                self.update(task, moved).await?;
                let mut moved_task = task.clone();
                moved_task.node_replacements += 1;
                self.set_step(&moved_task, ExecutionStep::NodeProvisioning)
                    .await?;
                self.walk_plan(&moved_task, &plan, from_entry, provider.as_ref())
                    .await
            }
        }
    }

    /// The task's workspace: one per node it reaches, so a task that moved off a
    /// lost node gets a fresh one (`w-<id>-<n>` after `n` replacements).
    pub(in crate::control) fn workspace_id(task: &TaskRecord) -> Result<WorkspaceId, Error> {
        let suffix = task.id.as_str().trim_start_matches("t-");
        Ok(WorkspaceId::new(match task.node_replacements {
            0 => format!("w-{suffix}"),
            n => format!("w-{suffix}-{n}"),
        })?)
    }

    pub(in crate::control) async fn create_workspace(
        &self,
        task: &TaskRecord,
    ) -> Result<Next, Error> {
        let Some(node) = self.task_node(task).await? else {
            return self.node_lost(task).await;
        };
        // A node whose heartbeats stopped gets no new work: the task moves on.
        if node.health == NodeHealth::Stale {
            return self.lose_node(task, &node, NodeLoss::HealthStale).await;
        }
        let ws = Self::workspace_id(task)?;
        let now = self.clock.now();
        if self.store.get_workspace(&ws).await?.is_none() {
            let record = WorkspaceRecord {
                id: ws.clone(),
                node_id: node.id.clone(),
                task_id: task.id.clone(),
                status: WorkspaceStatus::Creating,
                effective_profile: None,
                reservation: task.reservation,
                created_at: now,
                updated_at: now,
            };
            if let SlotOutcome::Rejected(reason) =
                self.store.reserve_workspace_slot(&record).await?
            {
                // A node provisioned for this task that could not hold it even empty
                // would be provisioned again and again: fail. When others took its
                // slots meanwhile (several tasks in flight), place the task again.
                if node.created_for.as_ref() == Some(&task.id)
                    && crate::reservation::check_slot(&node.capacity, &[], &task.reservation)
                        .is_err()
                {
                    return self
                        .fail(
                            task,
                            ErrorCategory::InvalidConfig,
                            &format!("The new server cannot hold the task: {reason}."),
                        )
                        .await;
                }
                tracing::info!(task = %task.id, node = %node.id, %reason, "slot taken meanwhile; placing again");
                return self.node_lost(task).await;
            }
            crate::crash::point(crate::crash::SLOT_RESERVED);
        }
        let named = LeasedWrite::Update(TaskUpdate {
            workspace_id: Some(Some(ws.clone())),
            ..TaskUpdate::default()
        });
        if task.status == TaskStatus::Queued {
            let reason = format!("workspace {ws} on node {}", node.id);
            self.move_status(task, TaskStatus::Delegated, reason, vec![named])
                .await?;
        } else {
            self.write(task, vec![named]).await?;
        }
        let request = WorkspaceRequest {
            workspace_id: ws.clone(),
            task_id: task.id.clone(),
            repo: task.spec.repo.clone(),
            repo_served: !node.provider.runs_on_this_machine()
                && crate::repository::parse_repository(&task.spec.repo).is_ok_and(|r| r.is_local()),
            branch: task.spec.branch.clone(),
            profile: task.spec.workspace_profile.clone(),
            devcontainer: task.spec.devcontainer.clone(),
            token: self.issue_workspace_token(&ws),
            output_branch: Some(output_branch(&task.spec.prompt, &task.id)),
            github: task.spec.github.as_ref().map(|g| g.pull_request),
        };
        match self.node_agent.create_workspace(&node, &request).await {
            Ok(()) => Ok(self.step_to(ExecutionStep::WorkspaceReady)),
            Err(e) if e.category.is_retryable() => {
                // A refused or timed-out request and a health probe the agent does not
                // answer either: the agent is gone, and polling it would hold the task
                // until the stuck-task sweep. Anything else is tried again.
                if let Ok(None) = self.node_agent.health(&node).await {
                    tracing::info!(task = %task.id, node = %node.id, error = %e, "the node's agent does not answer; moving the task");
                    return self
                        .lose_node(task, &node, NodeLoss::AgentUnreachable)
                        .await;
                }
                Ok(self.poll())
            }
            Err(e) => self.fail(task, e.category, &e.message).await,
        }
    }

    pub(in crate::control) async fn await_workspace(
        &self,
        task: &TaskRecord,
    ) -> Result<Next, Error> {
        let Some(node) = self.task_node(task).await? else {
            return self.node_lost(task).await;
        };
        let ws = Self::workspace_id(task)?;
        let ready = |w: &WorkspaceRecord| {
            matches!(
                w.status,
                WorkspaceStatus::Running | WorkspaceStatus::Recovery
            )
        };
        let record = self.store.get_workspace(&ws).await?;
        let mut is_ready = record.as_ref().is_some_and(ready);
        if let Some(record) = record.as_ref().filter(|_| !is_ready) {
            match self.node_agent.workspace_status(&node, &ws).await {
                Ok(Some(WorkspaceReport::Preparing)) | Ok(None) => {}
                Ok(Some(report)) => {
                    is_ready = self.apply_workspace_report(record, &report).await?;
                }
                Err(e) => tracing::debug!(task = %task.id, error = %e, "workspace status unknown"),
            }
        }
        let current = self.require_task(&task.id).await?;
        if current.status.is_terminal() {
            return Ok(Next::Done);
        }
        if is_ready {
            return Ok(self.step_to(ExecutionStep::AgentSession));
        }
        let now = self.clock.now();
        if elapsed(current.step_started_at, now) > self.config.timeouts.workspace_ready {
            let message = format!(
                "The workspace was not ready within {} (workspace ready timeout).",
                human(self.config.timeouts.workspace_ready)
            );
            return self.fail(task, ErrorCategory::Transient, &message).await;
        }
        Ok(self.poll())
    }

    pub(in crate::control) async fn start_session(&self, task: &TaskRecord) -> Result<Next, Error> {
        let Some(node) = self.task_node(task).await? else {
            return self.node_lost(task).await;
        };
        let ws = Self::workspace_id(task)?;
        let env = match self.agent_env(task).await {
            Ok(env) => env,
            Err(e) if e.is_retryable() => return Ok(self.poll()),
            Err(e) => return self.fail(task, e.category(), &e.to_string()).await,
        };
        let request = SessionRequest {
            workspace_id: ws,
            agent: task.spec.agent.clone(),
            prompt: task.spec.prompt.clone(),
            options: task.spec.agent_options.clone(),
            env,
            idle_timeout: Some(self.config.timeouts.agent_idle),
        };
        match self.node_agent.start_session(&node, &request).await {
            Ok(()) => {}
            Err(e) if e.category.is_retryable() => return Ok(self.poll()),
            Err(e) => return self.fail(task, e.category, &e.message).await,
        }
        crate::crash::point(crate::crash::PROMPT_SENT);
        if task.status == TaskStatus::Delegated {
            let reason = "agent session started".to_owned();
            self.move_status(task, TaskStatus::InProgress, reason, Vec::new())
                .await?;
        }
        Ok(Next::Step {
            step: ExecutionStep::Running,
            update: Box::default(),
            at: after(self.clock.now(), self.config.poll_interval),
        })
    }

    pub(in crate::control) async fn probe_session(&self, task: &TaskRecord) -> Result<Next, Error> {
        let Some(node) = self.task_node(task).await? else {
            return self.node_lost(task).await;
        };
        let ws = Self::workspace_id(task)?;
        match self.node_agent.session_status(&node, &ws).await {
            Ok(Some(SessionReport::Running)) => Ok(self.poll()),
            Ok(Some(report)) => {
                self.apply_session_report(task, &report).await?;
                Ok(Next::Done)
            }
            Ok(None) => {
                self.fail(
                    task,
                    ErrorCategory::Unknown,
                    "The VM agent no longer knows the task's session.",
                )
                .await
            }
            Err(e) => {
                tracing::debug!(task = %task.id, error = %e, "session status unknown");
                Ok(self.poll())
            }
        }
    }
}
