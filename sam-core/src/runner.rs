//! The task runner: one step handler per [`ExecutionStep`], driven by leases.

use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use tokio::time::Instant;

use crate::control::{ControlPlane, TaskEventKind};
use crate::error::StoreErrorKind;
use crate::error::{Classify, Error, ErrorCategory, ProviderError};
use crate::fallback::{FallbackPlan, PlanRequest};
use crate::github::output_branch;
use crate::model::{
    ExecutionStep, Labels, Location, NodeHealth, NodeId, NodeLifecycle, NodeStatus, TaskId,
    TaskStatus, VmSize, VmSpec, VmState, WorkspaceId,
};
use crate::node_agent::{SessionReport, SessionRequest, WorkspaceReport, WorkspaceRequest};
use crate::provider::Provider;
use crate::replacement::{LossDecision, LostNode, NodeLoss, VANISHED_GRACE, after_node_loss};
use crate::reservation::Capacity;
use crate::scheduler::{Placement, PlacementRequest};
use crate::secret::Secret;
use crate::store::{
    KeyPurpose, KeyRecord, Lease, LeaseRelease, LeaseReleased, LeaseRequest, LeasedOutcome,
    LeasedWrite, NodeBeat, NodeRecord, SlotOutcome, TaskError, TaskNotice, TaskRecord, TaskUpdate,
    Transition, WorkspaceRecord, WorkspaceStatus,
};

mod pipeline;

use pipeline::{Claim, Pipeline};

/// When a handler wants the task looked at again.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Next {
    /// At this time.
    At(DateTime<Utc>),
    /// Move to `step`, with the step's data in `update`, and look again at `at`.
    /// The driver writes all of it with the lease release, in one transaction: a
    /// handler whose last write is its step change returns this instead of writing.
    Step {
        /// The step to move to.
        step: ExecutionStep,
        /// The fields the step sets (boxed: it is large next to the other variants).
        update: Box<TaskUpdate>,
        /// When to look again.
        at: DateTime<Utc>,
    },
    /// Never: the task is finished (its terminal transition freed the lease).
    Done,
}

/// What one piece of [`ControlPlane::run`]'s concurrent work ended with.
enum Work {
    /// A step of this task was driven and its lease released.
    Drove(TaskId),
    /// A lease on due tasks returned.
    Claimed(Result<Vec<TaskRecord>, Error>),
    /// A sweep finished (its failure already logged).
    Swept,
}

/// How often a step renews its task's lease: [`crate::timeout::LEASE_RENEWALS`]
/// times a lease period, so a missed renewal or two still leaves time.
pub(crate) fn renewal(lease: Duration) -> Duration {
    lease / crate::timeout::LEASE_RENEWALS
}

/// Whether `e` says the step's lease was lost.
fn is_lease_lost(e: &Error) -> bool {
    matches!(e, Error::Store(s) if s.kind() == StoreErrorKind::LeaseLost)
}

/// Why a create did not happen: the provider refused, or the control plane could
/// not go on (its lease was lost, its store failed).
#[derive(Debug)]
enum CreateError {
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

/// Sleeps until `at`; `None` never comes (the `select!` branch is disabled then).
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn after(now: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    now + chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

/// The loss a node's recorded boot failure means, if it has one.
fn boot_loss(node: &NodeRecord) -> Option<NodeLoss> {
    node.boot.failure.as_ref().map(|f| NodeLoss::BootFailed {
        phase: f.phase.clone(),
        exit_status: f.exit_status,
    })
}

fn elapsed(since: DateTime<Utc>, now: DateTime<Utc>) -> Duration {
    (now - since).to_std().unwrap_or_default()
}

/// The entry of `plan` that `node` was provisioned from, if it is one.
fn plan_entry(plan: &FallbackPlan, node: &NodeRecord) -> Option<usize> {
    plan.attempts()
        .iter()
        .position(|a| a.size == node.size && a.location == node.location)
}

/// Minutes, for messages ("within 15 minutes").
pub(crate) fn human(d: Duration) -> String {
    let secs = d.as_secs();
    if secs >= 120 && secs.is_multiple_of(60) {
        format!("{} minutes", secs / 60)
    } else {
        format!("{secs} seconds")
    }
}

impl ControlPlane {
    /// Leases the tasks that are due and advances each by one step, at most
    /// `max_concurrent` at once, and returns when all of them have taken theirs.
    /// Returns how many tasks it advanced. [`ControlPlane::run`] does the same work
    /// without waiting for the slowest step of a batch before leasing more.
    ///
    /// # Errors
    /// Store failures while leasing; failures inside a task are handled per task.
    pub async fn tick(&self) -> Result<usize, Error> {
        let tasks = self
            .claim(Claim {
                limit: self.config.max_concurrent,
                except: Vec::new(),
            })
            .await?;
        let count = tasks.len();
        futures::stream::iter(tasks)
            .for_each_concurrent(self.config.max_concurrent, |task| self.drive(task))
            .await;
        Ok(count)
    }

    /// Leases due tasks for this driver, as `claim` asks.
    async fn claim(&self, claim: Claim) -> Result<Vec<TaskRecord>, Error> {
        Ok(self
            .store
            .claim_due_tasks(&LeaseRequest {
                owner: self.config.driver_id.clone(),
                now: self.clock.now(),
                lease: self.config.lease,
                limit: claim.limit,
                except: claim.except,
            })
            .await?)
    }

    /// Drives tasks and runs sweeps until `shutdown` resolves, then lets the steps
    /// under way finish (leasing nothing more) and returns.
    ///
    /// Up to `max_concurrent` steps run at once, and a step that ends makes room at
    /// once: the driver leases again as soon as a step ends or a lease found work,
    /// and otherwise every `poll_interval`. A slow step (a provider call on a starved
    /// host) therefore holds back only its own task, and tasks whose lease another
    /// process left behind are taken over one `poll_interval` after it expires. A
    /// sweep runs every 15 polls, beside the steps. Leases left behind at a crash
    /// expire, so another process resumes the tasks.
    pub async fn run(&self, shutdown: impl std::future::Future<Output = ()>) {
        let poll = self.config.poll_interval;
        tokio::pin!(shutdown);
        let mut work: FuturesUnordered<BoxFuture<'_, Work>> = FuturesUnordered::new();
        let mut pipeline = Pipeline::new(self.config.max_concurrent, poll, Instant::now());
        let (mut sweeping, mut stopping) = (false, false);
        let mut sweep_at = Instant::now();
        loop {
            if stopping {
                if work.is_empty() {
                    return;
                }
            } else {
                let now = Instant::now();
                if !sweeping && now >= sweep_at {
                    sweeping = true;
                    sweep_at = now + poll * 15;
                    work.push(Box::pin(async {
                        if let Err(e) = self.sweep().await {
                            tracing::warn!(error = %e, "sweep failed; it runs again later");
                        }
                        Work::Swept
                    }));
                }
                if let Some(claim) = pipeline.start_claim(now) {
                    work.push(Box::pin(
                        async move { Work::Claimed(self.claim(claim).await) },
                    ));
                }
            }
            // The next timer that can start something: a claim, a sweep.
            let wake = if stopping {
                None
            } else {
                let sweep = (!sweeping).then_some(sweep_at);
                pipeline.next_claim().into_iter().chain(sweep).min()
            };
            tokio::select! {
                () = &mut shutdown, if !stopping => stopping = true,
                Some(done) = work.next() => match done {
                    Work::Drove(id) => pipeline.drove(&id, Instant::now()),
                    Work::Claimed(Ok(tasks)) => {
                        for task in pipeline.claimed(tasks, |t| &t.id, Instant::now()) {
                            work.push(Box::pin(async move {
                                let id = task.id.clone();
                                self.drive(task).await;
                                Work::Drove(id)
                            }));
                        }
                    }
                    Work::Claimed(Err(e)) => {
                        pipeline.claim_failed(Instant::now());
                        tracing::warn!(error = %e, "could not lease tasks");
                    }
                    Work::Swept => sweeping = false,
                },
                () = sleep_until(wake) => {}
            }
        }
    }

    async fn drive(&self, task: TaskRecord) {
        let id = task.id.clone();
        let lease = self.lease(&task);
        let step = self.advance(&task);
        let outcome = match &lease {
            Some(lease) => self.holding(lease, step).await,
            None => step.await,
        };
        let next = match outcome {
            Ok(next) => next,
            Err(e) if is_lease_lost(&e) => {
                // Another driver holds the task now: it decides what comes next, and
                // this one writes nothing more.
                tracing::warn!(task = %id, error = %e, "the step lost its lease; it stops here");
                return;
            }
            Err(e) if e.category().is_retryable() || matches!(e, Error::Store(_)) => {
                tracing::warn!(task = %id, error = %e, "step failed; retrying later");
                Next::At(after(self.clock.now(), self.config.poll_interval))
            }
            Err(e) => {
                let message = e.to_string();
                match self.fail(&task, e.category(), &message).await {
                    Ok(next) => next,
                    Err(e) => {
                        tracing::warn!(task = %id, error = %e, "could not record the failure");
                        Next::At(after(self.clock.now(), self.config.poll_interval))
                    }
                }
            }
        };
        // The step, its data, the next wake-up and the lease release are one write.
        let (step, mut update, wake) = match next {
            Next::At(at) => (None, TaskUpdate::default(), at),
            Next::Step { step, update, at } => (Some(step), *update, at),
            Next::Done => return,
        };
        update.next_wake_at = Some(Some(wake));
        let release = LeaseRelease {
            owner: self.config.driver_id.clone(),
            epoch: lease.map(|l| l.epoch),
            step,
            update,
            at: self.clock.now(),
        };
        match self.store.release_lease(&id, &release).await {
            Ok(LeaseReleased::Released { step_changed: true }) => {
                if let Some(step) = step {
                    self.emit_step(&id, step);
                }
            }
            Ok(LeaseReleased::Released { .. }) => {}
            Ok(LeaseReleased::NotHeld) => {
                // The task ended meanwhile (a cancel, a callback), or the lease expired
                // and another driver took it: that one decides what comes next.
                tracing::debug!(task = %id, "the lease is no longer this driver's; nothing written");
            }
            Err(e) => {
                tracing::warn!(task = %id, error = %e, "could not write the step and release the lease; it will expire and the step runs again");
            }
        }
    }

    /// The lease this driver holds on `task`, as the record it drives says.
    fn lease(&self, task: &TaskRecord) -> Option<Lease> {
        Lease::held_by(task, &self.config.driver_id)
    }

    /// Runs `step` while renewing `lease` every [`renewal`] of the lease, so a step
    /// that outlives one lease period (a slow provider call) keeps its task. A
    /// renewal that finds the lease lost stops renewing: the step's own writes are
    /// fenced and fail, so it stops without side effects.
    async fn holding<T>(
        &self,
        lease: &Lease,
        step: impl std::future::Future<Output = Result<T, Error>>,
    ) -> Result<T, Error> {
        // The renewals run beside the step, polled with it, never in place of it: a
        // step paused in the middle of a transaction would hold the store's only
        // writer (SQLite) that the renewal waits for.
        let renewals = async {
            let every = renewal(self.config.lease);
            loop {
                tokio::time::sleep(every).await;
                let now = self.clock.now();
                let until = after(now, self.config.lease);
                let renew = [LeasedWrite::Renew { until }];
                match self.store.write_leased(lease, now, &renew).await {
                    Ok(_) => tracing::debug!(task = %lease.task, "lease renewed"),
                    Err(e) if e.kind() == StoreErrorKind::LeaseLost => {
                        tracing::warn!(task = %lease.task, error = %e, "lease lost while its step runs");
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(task = %lease.task, error = %e, "could not renew the lease; trying again");
                    }
                }
            }
        };
        tokio::pin!(step, renewals);
        let mut renewing = true;
        loop {
            tokio::select! {
                // In order, so a seeded run replays: the step first.
                biased;
                done = &mut step => return done,
                () = &mut renewals, if renewing => renewing = false,
            }
        }
    }

    /// Writes what a step changes, in one transaction: fenced by the task's lease
    /// when this driver holds it (a driver that lost it writes nothing and gets
    /// `LeaseLost`), directly otherwise (a record this driver did not lease).
    pub(crate) async fn write(
        &self,
        task: &TaskRecord,
        writes: Vec<LeasedWrite>,
    ) -> Result<LeasedOutcome, Error> {
        let now = self.clock.now();
        if let Some(lease) = self.lease(task) {
            return Ok(self.store.write_leased(&lease, now, &writes).await?);
        }
        let mut outcome = LeasedOutcome::default();
        for write in writes {
            match write {
                LeasedWrite::Renew { .. } => {}
                LeasedWrite::Step(step) => {
                    outcome.step_changed |=
                        self.store.set_execution_step(&task.id, step, now).await?;
                }
                LeasedWrite::Update(update) => {
                    self.store.update_task(&task.id, &update, now).await?
                }
                LeasedWrite::Transition(change) => {
                    outcome.transitioned |= self.store.transition_task(&task.id, &change).await?;
                }
                LeasedWrite::PutNode(node) => self.store.put_node(&node).await?,
                LeasedWrite::DeleteNode(id) => self.store.delete_node(&id).await?,
                LeasedWrite::Notice(notice) => {
                    self.store.add_task_notice(&task.id, now, &notice).await?;
                }
            }
        }
        Ok(outcome)
    }

    /// Moves a task's status as a step does (fenced by its lease), and tells
    /// listeners when it moved.
    async fn move_status(
        &self,
        task: &TaskRecord,
        to: TaskStatus,
        reason: String,
        also: Vec<LeasedWrite>,
    ) -> Result<(), Error> {
        let mut writes = vec![LeasedWrite::Transition(Transition {
            from: task.status,
            to,
            actor: self.config.driver_id.clone(),
            reason: Some(reason),
            error: None,
            at: self.clock.now(),
        })];
        writes.extend(also);
        if self.write(task, writes).await?.transitioned {
            self.emit(
                &task.id,
                TaskEventKind::Status {
                    status: to,
                    error: None,
                },
            );
        }
        Ok(())
    }

    fn emit_step(&self, id: &TaskId, step: ExecutionStep) {
        self.emit(
            id,
            TaskEventKind::Step {
                step,
                label: step.label().to_owned(),
            },
        );
    }

    /// One step handler for the task's current state.
    pub(crate) async fn advance(&self, task: &TaskRecord) -> Result<Next, Error> {
        if task.status.is_terminal() {
            return Ok(Next::Done);
        }
        match task.execution_step {
            ExecutionStep::NodeSelection => self.select_node(task).await,
            ExecutionStep::NodeProvisioning | ExecutionStep::WaitingForCapacity => {
                self.provision(task).await
            }
            ExecutionStep::NodeAgentReady => self.await_agent_ready(task).await,
            ExecutionStep::WorkspaceCreation => self.create_workspace(task).await,
            ExecutionStep::WorkspaceReady => self.await_workspace(task).await,
            ExecutionStep::AgentSession => self.start_session(task).await,
            ExecutionStep::Running => self.probe_session(task).await,
        }
    }

    pub(crate) async fn set_step(
        &self,
        task: &TaskRecord,
        step: ExecutionStep,
    ) -> Result<(), Error> {
        if self
            .write(task, vec![LeasedWrite::Step(step)])
            .await?
            .step_changed
        {
            self.emit_step(&task.id, step);
        }
        Ok(())
    }

    async fn update(&self, task: &TaskRecord, update: TaskUpdate) -> Result<(), Error> {
        self.write(task, vec![LeasedWrite::Update(update)])
            .await
            .map(drop)
    }

    /// Fails a task with a category and a message, releasing what it held.
    pub(crate) async fn fail(
        &self,
        task: &TaskRecord,
        category: ErrorCategory,
        message: &str,
    ) -> Result<Next, Error> {
        let error = TaskError {
            category,
            message: crate::secret::redact(message).into_owned(),
        };
        let lease = self.lease(task);
        self.end(
            task,
            TaskStatus::Failed,
            Some(error),
            &self.config.driver_id,
            message,
            lease.as_ref(),
        )
        .await?;
        Ok(Next::Done)
    }

    fn poll(&self) -> Next {
        Next::At(after(self.clock.now(), self.config.poll_interval))
    }

    async fn select_node(&self, task: &TaskRecord) -> Result<Next, Error> {
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

    fn plan(&self, task: &TaskRecord, provider: &dyn Provider) -> Result<FallbackPlan, Error> {
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

    async fn provision(&self, task: &TaskRecord) -> Result<Next, Error> {
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
    async fn walk_plan(
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
                    self.tell_capacity(task, attempt.size, &attempt.location);
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
                let notice = TaskNotice::WaitingForCapacity { passes, until };
                self.write(task, vec![LeasedWrite::Notice(notice)]).await?;
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
    async fn create_vm(
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
    async fn node_key(&self, node: &NodeRecord) -> Result<Secret, Error> {
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
    async fn show_downgrade(&self, task: &TaskRecord, size: VmSize) -> Result<(), Error> {
        if size < task.requested_size {
            let notice = TaskNotice::Downgraded {
                requested: task.requested_size,
                provisioned: size,
            };
            self.write(task, vec![LeasedWrite::Notice(notice)]).await?;
            self.emit(
                &task.id,
                TaskEventKind::Downgraded {
                    requested: task.requested_size,
                    provisioned: size,
                },
            );
        }
        Ok(())
    }

    /// What a capacity failure of `size` in `location` writes, besides its own
    /// changes: the notice that keeps it. Live listeners hear of it once the
    /// writes are made ([`Self::tell_capacity`]).
    fn capacity_notice(size: VmSize, location: &Location) -> LeasedWrite {
        LeasedWrite::Notice(TaskNotice::CapacityUnavailable {
            size,
            location: location.clone(),
        })
    }

    /// Tells live listeners of a capacity failure already written.
    fn tell_capacity(&self, task: &TaskRecord, size: VmSize, location: &Location) {
        self.emit(
            &task.id,
            TaskEventKind::CapacityUnavailable {
                size,
                location: location.clone(),
            },
        );
    }

    /// A create (or poll) failed with something other than capacity.
    async fn create_failed(
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
    async fn continue_node(
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
                    self.tell_capacity(task, node.size, &node.location);
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
                self.tell_capacity(task, node.size, &node.location);
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

    async fn task_node(&self, task: &TaskRecord) -> Result<Option<NodeRecord>, Error> {
        match &task.provisioned_node_id {
            Some(id) => Ok(self
                .store
                .get_node(id)
                .await?
                .filter(|n| n.status != NodeStatus::Deleted)),
            None => Ok(None),
        }
    }

    /// Move to `step` and look again at once.
    fn step_to(&self, step: ExecutionStep) -> Next {
        Next::Step {
            step,
            update: Box::default(),
            at: self.clock.now(),
        }
    }

    /// The node is gone: place the task again (only possible before it was delegated).
    async fn node_lost(&self, task: &TaskRecord) -> Result<Next, Error> {
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

    async fn await_agent_ready(&self, task: &TaskRecord) -> Result<Next, Error> {
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
    async fn recorded_node(&self, task: &TaskRecord) -> Result<Option<NodeRecord>, Error> {
        match &task.provisioned_node_id {
            Some(id) => Ok(self.store.get_node(id).await?),
            None => Ok(None),
        }
    }

    /// Whether the provider says `node`'s VM vanished or failed. A provider that
    /// cannot be asked says nothing: the agent-ready timeout still holds.
    async fn vm_loss(&self, node: &NodeRecord) -> Option<NodeLoss> {
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
    async fn lose_node(
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
        self.emit(
            &task.id,
            TaskEventKind::NodeLost {
                node: node.id.clone(),
                reason: loss.to_string(),
            },
        );
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
    fn workspace_id(task: &TaskRecord) -> Result<WorkspaceId, Error> {
        let suffix = task.id.as_str().trim_start_matches("t-");
        Ok(WorkspaceId::new(match task.node_replacements {
            0 => format!("w-{suffix}"),
            n => format!("w-{suffix}-{n}"),
        })?)
    }

    async fn create_workspace(&self, task: &TaskRecord) -> Result<Next, Error> {
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

    async fn await_workspace(&self, task: &TaskRecord) -> Result<Next, Error> {
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

    async fn start_session(&self, task: &TaskRecord) -> Result<Next, Error> {
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

    async fn probe_session(&self, task: &TaskRecord) -> Result<Next, Error> {
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
