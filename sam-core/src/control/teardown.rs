//! How a task ends: the one terminal transition, then its workspace is stopped and
//! its node returned to the warm pool or destroyed. The runner, the sweeps, the
//! callbacks and cancellation all end tasks here.

use crate::control::{ControlPlane, TaskEventKind};
use crate::error::{Classify, ErrorCategory};
use crate::failure::Error;
use crate::model::{NodeHealth, NodeId, NodeStatus, TaskId, TaskStatus};
use crate::secret::redact;
use crate::store::{NodeRecord, TaskError, TaskFilter, TaskRecord, Transition, WorkspaceStatus};

impl ControlPlane {
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
        self.emit_logged(&task.id, TaskEventKind::Status { status: to, error })
            .await;
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
    pub(super) async fn mark_destroying(&self, node: &NodeRecord) {
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
}
