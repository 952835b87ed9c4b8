//! Placing a task: on a node that has room, or on a new node created by walking the
//! fallback plan, with the lease renewed around every create.

use super::steps::boot_loss;
use super::{Next, after};
use crate::control::{ControlPlane, TaskEventKind};
use crate::error::{Classify, ErrorCategory, ProviderError};
use crate::failure::Error;
use crate::fallback::{FallbackPlan, PlanRequest};
use crate::model::{
    ExecutionStep, Labels, Location, NodeHealth, NodeId, NodeLifecycle, NodeStatus, VmSize, VmSpec,
    VmState,
};
use crate::provider::Provider;
use crate::replacement::{NodeLoss, VANISHED_GRACE};
use crate::reservation::Capacity;
use crate::scheduler::{Placement, PlacementRequest};
use crate::secret::Secret;
use crate::store::{KeyPurpose, KeyRecord, LeasedWrite, NodeRecord, TaskRecord, TaskUpdate};
use crate::timeout::elapsed;
use crate::timeout::human;

/// Why a create did not happen: the provider refused, or the control plane could
/// not go on (its lease was lost, its store failed).
#[derive(Debug)]
pub(in crate::control) enum CreateError {
    /// The provider's answer.
    Provider(ProviderError),
    /// The control plane's own failure.
    Control(Error),
}

impl From<ProviderError> for CreateError {
    fn from(e: ProviderError) -> Self {
        Self::Provider(e)
    }
}

impl From<Error> for CreateError {
    fn from(e: Error) -> Self {
        Self::Control(e)
    }
}

/// The entry of `plan` that `node` was provisioned from, if it is one.
pub(in crate::control) fn plan_entry(plan: &FallbackPlan, node: &NodeRecord) -> Option<usize> {
    plan.attempts()
        .iter()
        .position(|a| a.size == node.size && a.location == node.location)
}

impl ControlPlane {
    pub(in crate::control) async fn select_node(&self, task: &TaskRecord) -> Result<Next, Error> {
        let decision = self
            .scheduler
            .place(&PlacementRequest {
                task_id: task.id.clone(),
                provider: task.provider,
                size: task.requested_size,
                size_source: task.size_source,
                location: task.requested_location.clone(),
                location_source: task.location_source,
                reservation: task.reservation,
                preferred_node: task.spec.preferred_node.clone(),
                credential_owner: task.spec.provider_credential_owner.clone(),
                now: self.clock.now(),
            })
            .await;
        let decision = match decision {
            Ok(d) => d,
            Err(e) if e.category() == ErrorCategory::InvalidConfig => {
                return self.fail(task, e.category(), &e.to_string()).await;
            }
            Err(e) => return Err(e),
        };
        let mut update = TaskUpdate {
            placement: Some(Some(decision.explanation)),
            ..TaskUpdate::default()
        };
        let step = match &decision.placement {
            Placement::Node { node_id, .. } => {
                // The size and location the task actually runs on, recorded as for a
                // provisioned node, so a task on a smaller warm node shows that too.
                // They do not change, so the scheduler's copy of the node will do.
                let node = match decision.node.filter(|n| &n.id == node_id) {
                    Some(node) => Some(*node),
                    None => self.store.get_node(node_id).await?,
                };
                if let Some(node) = &node {
                    self.show_downgrade(task, node.size).await?;
                }
                update.provisioned_node_id = Some(Some(node_id.clone()));
                update.provisioned_size = Some(node.as_ref().map(|n| n.size));
                update.provisioned_location = Some(node.map(|n| n.location));
                ExecutionStep::WorkspaceCreation
            }
            Placement::Provision { .. } => ExecutionStep::NodeProvisioning,
        };
        Ok(Next::Step {
            step,
            update: Box::new(update),
            at: self.clock.now(),
        })
    }

    pub(in crate::control) fn plan(
        &self,
        task: &TaskRecord,
        provider: &dyn Provider,
    ) -> Result<FallbackPlan, Error> {
        Ok(FallbackPlan::new(&PlanRequest {
            catalog: provider.catalog(),
            size: task.requested_size,
            size_source: task.size_source,
            location: task.requested_location.clone(),
            location_source: task.location_source,
            reservation: &task.reservation,
            descent: self.config.descent,
        })?)
    }

    pub(in crate::control) async fn provision(&self, task: &TaskRecord) -> Result<Next, Error> {
        // Adopt the node recorded for this task, through the account that made it; a
        // row deleted after a capacity failure is gone, so it is never adopted.
        if let Some(node) = self.recorded_node(task).await? {
            // A node whose boot failed (its VM perhaps deleted already) is lost, not
            // silently replaced: the move counts against the task's budget.
            if let Some(loss) = boot_loss(&node) {
                return self.lose_node(task, &node, loss).await;
            }
            if node.status != NodeStatus::Deleted {
                let provider = self.node_provider(&node).await?;
                return self.continue_node(task, node, provider.as_ref()).await;
            }
        }
        let provider = self.task_provider(task).await?;
        let plan = self.plan(task, provider.as_ref())?;
        self.set_step(task, ExecutionStep::NodeProvisioning).await?;
        self.walk_plan(task, &plan, 0, provider.as_ref()).await
    }

    /// Tries the plan's attempts from `start`, each recorded before its provider call.
    pub(in crate::control) async fn walk_plan(
        &self,
        task: &TaskRecord,
        plan: &FallbackPlan,
        start: usize,
        provider: &dyn Provider,
    ) -> Result<Next, Error> {
        for index in start..plan.attempts().len() {
            let attempt = &plan.attempts()[index];
            let server_type = provider
                .catalog()
                .server_type_named(&attempt.server_type)
                .ok_or_else(|| Error::InvalidInput {
                    field: "server_type",
                    reason: format!("{} is not in the catalog", attempt.server_type),
                })?;
            let now = self.clock.now();
            let id = NodeId::new(format!("n-{:012x}", self.random_u64() >> 16))?;
            let node = NodeRecord {
                labels: Labels::for_node(&id),
                id,
                provider: provider.kind(),
                vm_id: None,
                size: attempt.size,
                server_type: attempt.server_type.clone(),
                location: attempt.location.clone(),
                capacity: Capacity::of(server_type),
                status: NodeStatus::Creating,
                lifecycle: NodeLifecycle::Active,
                warm_since: None,
                health: NodeHealth::Unhealthy,
                last_heartbeat_at: None,
                agent_version: None,
                ready_at: None,
                created_for: Some(task.id.clone()),
                credential_owner: task.spec.provider_credential_owner.clone(),
                address: None,
                boot: crate::boot::NodeBootRecord::default(),
                created_at: now,
                updated_at: now,
            };
            // Record the truth before the paid call: a runner that dies after the
            // create finds the task's node row and adopts the VM by its label. The
            // task names the node first, so a runner that dies between the two
            // writes leaves a task pointing at no row (it plans again), never a row
            // that no task points at (which nothing would ever clean up).
            self.update(
                task,
                TaskUpdate {
                    provisioned_node_id: Some(Some(node.id.clone())),
                    provisioned_size: Some(Some(attempt.size)),
                    provisioned_location: Some(Some(attempt.location.clone())),
                    provisioning_started_at: Some(Some(now)),
                    next_wake_at: Some(Some(after(now, self.config.lease))),
                    ..TaskUpdate::default()
                },
            )
            .await?;
            crate::crash::point(crate::crash::NODE_NAMED);
            self.write(task, vec![LeasedWrite::PutNode(Box::new(node.clone()))])
                .await?;
            crate::crash::point(crate::crash::NODE_ROW_WRITTEN);
            match self.create_vm(task, &node, provider, false).await {
                Ok(next) => return Ok(next),
                Err(CreateError::Provider(e))
                    if e.category() == ErrorCategory::TransientCapacity =>
                {
                    tracing::info!(task = %task.id, size = %attempt.size, location = %attempt.location, "no capacity; trying the next entry");
                    let forget = TaskUpdate {
                        provisioned_node_id: Some(None),
                        provisioned_size: Some(None),
                        provisioned_location: Some(None),
                        ..TaskUpdate::default()
                    };
                    self.write(
                        task,
                        vec![
                            LeasedWrite::DeleteNode(node.id.clone()),
                            LeasedWrite::Update(forget),
                            Self::capacity_notice(attempt.size, &attempt.location),
                        ],
                    )
                    .await?;
                }
                Err(CreateError::Provider(e)) => return self.create_failed(task, &node, e).await,
                Err(CreateError::Control(e)) => return Err(e),
            }
        }
        // A full pass without capacity: back off within the capacity budget.
        let passes = task.capacity_passes + 1;
        let now = self.clock.now();
        let delay = self.config.capacity_policy().next_delay(
            passes,
            elapsed(task.created_at, now),
            None,
            (self.random_u64() >> 11) as f64 / (1u64 << 53) as f64,
        );
        match delay {
            Some(delay) => {
                let until = after(now, delay);
                let waiting = TaskEventKind::WaitingForCapacity { passes, until };
                self.write(task, vec![LeasedWrite::Event(waiting)]).await?;
                Ok(Next::Step {
                    step: ExecutionStep::WaitingForCapacity,
                    update: Box::new(TaskUpdate {
                        capacity_passes: Some(passes),
                        ..TaskUpdate::default()
                    }),
                    at: until,
                })
            }
            None => {
                self.fail(
                    task,
                    ErrorCategory::TransientCapacity,
                    &plan.exhausted_message(),
                )
                .await
            }
        }
    }

    /// Calls the provider for a recorded node. Capacity errors go back to the caller
    /// (the plan moves on); everything else is handled here.
    ///
    /// The paid call is fenced: right before it, the lease is renewed for a full
    /// period under its epoch, so a driver that lost the task never creates, and
    /// the call (shorter than the lease, as the configuration checks) ends before
    /// another driver can take the task over. With `look_first` (a node whose row
    /// existed before this step), the VM is looked up by the node's label under
    /// that lease first, and adopted when an earlier create went through.
    pub(in crate::control) async fn create_vm(
        &self,
        task: &TaskRecord,
        node: &NodeRecord,
        provider: &dyn Provider,
        look_first: bool,
    ) -> Result<Next, CreateError> {
        let now = self.clock.now();
        let renew = LeasedWrite::Renew {
            until: after(now, self.config.lease),
        };
        self.write(task, vec![renew]).await?;
        if look_first {
            let found = provider.list_vms(&Labels::for_node(&node.id)).await?;
            if let Some(vm) = found.into_iter().next() {
                tracing::info!(node = %node.id, vm = %vm.id, "the node's VM exists already; adopting it");
                let mut adopted = node.clone();
                adopted.vm_id = Some(vm.id);
                adopted.updated_at = self.clock.now();
                self.write(task, vec![LeasedWrite::PutNode(Box::new(adopted))])
                    .await?;
                return Ok(Next::At(self.clock.now()));
            }
        }
        let token = self.node_key(node).await?;
        let user_data = self
            .boot
            .user_data(node, &token)
            .map_err(|e| ProviderError::new(provider.kind(), e.category(), e.to_string()))?;
        let spec = VmSpec {
            node_id: node.id.clone(),
            name: node.id.to_string(),
            size: node.size,
            server_type: node.server_type.clone(),
            location: node.location.clone(),
            image: None,
            user_data,
            labels: node.labels.clone(),
        };
        let vm = provider.create_vm(&spec).await?;
        crate::crash::point(crate::crash::CREATE_ACCEPTED);
        let mut created = node.clone();
        created.vm_id = Some(vm.id.clone());
        created.updated_at = self.clock.now();
        let record = vec![LeasedWrite::PutNode(Box::new(created))];
        if let Err(e) = self.write(task, record).await {
            // The VM carries the node label: the next visit adopts it by label.
            tracing::warn!(node = %node.id, error = %e, "could not record the VM id");
        }
        Ok(Next::At(self.clock.now()))
    }

    /// The token `node` boots with, which its VM agent keys its management tokens
    /// with. With a credential key it is kept in the store, sealed, and made once:
    /// a create made again for the node boots with the key a VM of the first may
    /// already hold, and every control plane on the database reads it back.
    /// Without one, a new token is issued (the caller's boot renderer keeps it).
    pub(in crate::control) async fn node_key(&self, node: &NodeRecord) -> Result<Secret, Error> {
        let token = self.issue_node_token(&node.id);
        let Some(cipher) = &self.cipher else {
            return Ok(token);
        };
        let record = KeyRecord::seal(
            KeyPurpose::Node,
            node.id.as_str(),
            &token,
            cipher,
            self.clock.now(),
        )?;
        let stored = self.store.put_key_if_absent(&record).await?;
        Ok(stored.open(cipher)?)
    }

    /// Shows the user that the task runs on a smaller size than it asked for. Called
    /// once the task's node is settled (running, or placed), so a VM adopted by its
    /// label after a lost create response is shown too.
    pub(in crate::control) async fn show_downgrade(
        &self,
        task: &TaskRecord,
        size: VmSize,
    ) -> Result<(), Error> {
        if size < task.requested_size {
            let downgraded = TaskEventKind::Downgraded {
                requested: task.requested_size,
                provisioned: size,
            };
            self.write(task, vec![LeasedWrite::Event(downgraded)])
                .await?;
        }
        Ok(())
    }

    /// What a capacity failure of `size` in `location` writes, besides its own
    /// changes: the transcript entry that keeps it (announced once written).
    pub(in crate::control) fn capacity_notice(size: VmSize, location: &Location) -> LeasedWrite {
        LeasedWrite::Event(TaskEventKind::CapacityUnavailable {
            size,
            location: location.clone(),
        })
    }

    /// A create (or poll) failed with something other than capacity.
    pub(in crate::control) async fn create_failed(
        &self,
        task: &TaskRecord,
        node: &NodeRecord,
        error: ProviderError,
    ) -> Result<Next, Error> {
        if error.category().is_retryable() {
            // The create may have gone through with its response lost; the next visit
            // looks the VM up by its label before creating again.
            let wait = error
                .retry_after()
                .unwrap_or(self.config.poll_interval)
                .max(self.config.poll_interval);
            tracing::info!(task = %task.id, error = %error, "provider call failed; checking again later");
            return Ok(Next::At(after(self.clock.now(), wait)));
        }
        // A failure is logged and the node kept for the node sweep.
        let _ = self.destroy_node(node).await;
        let category = error.category();
        self.fail(task, category, &error.to_string()).await
    }

    /// Continues with a node recorded for this task: find its VM, poll it, or create
    /// it again when the earlier create never reached the provider.
    pub(in crate::control) async fn continue_node(
        &self,
        task: &TaskRecord,
        mut node: NodeRecord,
        provider: &dyn Provider,
    ) -> Result<Next, Error> {
        let now = self.clock.now();
        let started = task.provisioning_started_at.unwrap_or(node.created_at);
        if elapsed(started, now) > self.config.timeouts.node_provisioning {
            let _ = self.destroy_node(&node).await;
            let message = format!(
                "The server was not running within {} (node provisioning timeout).",
                human(self.config.timeouts.node_provisioning)
            );
            return self.fail(task, ErrorCategory::Transient, &message).await;
        }
        let vm = match &node.vm_id {
            Some(id) => provider.get_vm(id).await,
            None => provider
                .list_vms(&Labels::for_node(&node.id))
                .await
                .map(|vms| vms.into_iter().next()),
        };
        let vm = match vm {
            Ok(vm) => vm,
            Err(e) => return self.create_failed(task, &node, e).await,
        };
        let Some(vm) = vm else {
            if node.vm_id.is_some() {
                // The VM vanished while being created: the node is lost, once the
                // VM has had time to become visible.
                if elapsed(started, now) < VANISHED_GRACE {
                    return Ok(self.poll());
                }
                return self.lose_node(task, &node, NodeLoss::VmVanished).await;
            }
            // No VM carries the label: the earlier create never happened. Create now
            // (looking once more under the renewed lease).
            return match self.create_vm(task, &node, provider, true).await {
                Ok(next) => Ok(next),
                Err(CreateError::Provider(e))
                    if e.category() == ErrorCategory::TransientCapacity =>
                {
                    let writes = vec![
                        LeasedWrite::DeleteNode(node.id.clone()),
                        Self::capacity_notice(node.size, &node.location),
                    ];
                    self.write(task, writes).await?;
                    let plan = self.plan(task, provider)?;
                    let index = plan_entry(&plan, &node).map_or(0, |i| i + 1);
                    self.walk_plan(task, &plan, index, provider).await
                }
                Err(CreateError::Provider(e)) => self.create_failed(task, &node, e).await,
                Err(CreateError::Control(e)) => Err(e),
            };
        };
        if node.vm_id.as_ref() != Some(&vm.id) {
            node.vm_id = Some(vm.id.clone());
            node.updated_at = now;
            self.write(task, vec![LeasedWrite::PutNode(Box::new(node.clone()))])
                .await?;
        }
        let polled = match provider.poll_create(&vm).await {
            Ok(polled) => {
                crate::crash::point(crate::crash::POLLING);
                polled
            }
            Err(e) if e.category() == ErrorCategory::TransientCapacity => {
                // Accepted, then failed for capacity in its action/operation.
                let _ = self.destroy_node(&node).await;
                let plan = self.plan(task, provider)?;
                let index = plan_entry(&plan, &node).map_or(0, |i| i + 1);
                let forget = TaskUpdate {
                    provisioned_node_id: Some(None),
                    ..TaskUpdate::default()
                };
                self.write(
                    task,
                    vec![
                        LeasedWrite::DeleteNode(node.id.clone()),
                        LeasedWrite::Update(forget),
                        Self::capacity_notice(node.size, &node.location),
                    ],
                )
                .await?;
                return self.walk_plan(task, &plan, index, provider).await;
            }
            Err(e) => return self.create_failed(task, &node, e).await,
        };
        match polled.state {
            VmState::Running => {
                node.status = NodeStatus::Running;
                if polled.address.is_some() {
                    node.address.clone_from(&polled.address);
                }
                node.updated_at = self.clock.now();
                self.write(task, vec![LeasedWrite::PutNode(Box::new(node.clone()))])
                    .await?;
                self.show_downgrade(task, node.size).await?;
                Ok(self.step_to(ExecutionStep::NodeAgentReady))
            }
            VmState::Failed => {
                let reason = polled.failure.clone();
                self.lose_node(task, &node, NodeLoss::VmFailed { reason })
                    .await
            }
            _ => Ok(self.poll()),
        }
    }

    pub(in crate::control) async fn task_node(
        &self,
        task: &TaskRecord,
    ) -> Result<Option<NodeRecord>, Error> {
        match &task.provisioned_node_id {
            Some(id) => Ok(self
                .store
                .get_node(id)
                .await?
                .filter(|n| n.status != NodeStatus::Deleted)),
            None => Ok(None),
        }
    }
}
