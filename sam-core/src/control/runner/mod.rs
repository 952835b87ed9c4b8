//! The task runner: one step handler per [`ExecutionStep`], driven by leases.
//!
//! This module is the driver (claiming, leases, renewals, status moves); `provision`
//! places a task and creates its node; `steps` waits for the node, then creates the
//! workspace and starts and probes the agent session; `pipeline` is the driver's pure
//! bookkeeping.

mod pipeline;
mod provision;
mod steps;

use pipeline::{Claim, Pipeline};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use tokio::time::Instant;

use crate::control::{ControlPlane, TaskEventKind};
use crate::error::{Classify, ErrorCategory, StoreErrorKind};
use crate::failure::Error;
use crate::model::{ExecutionStep, TaskId, TaskStatus};
use crate::store::{
    Lease, LeaseRelease, LeaseReleased, LeaseRequest, LeasedOutcome, LeasedWrite, TaskError,
    TaskRecord, TaskUpdate, Transition,
};

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
pub(in crate::control) enum Work {
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
pub(in crate::control) fn is_lease_lost(e: &Error) -> bool {
    matches!(e, Error::Store(s) if s.kind() == StoreErrorKind::LeaseLost)
}

/// Sleeps until `at`; `None` never comes (the `select!` branch is disabled then).
pub(in crate::control) async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

pub(in crate::control) fn after(now: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    now + chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
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

    pub(in crate::control) async fn drive(&self, task: TaskRecord) {
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
                self.leases_lost
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
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
                    self.emit_step(&id, step).await;
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
    pub(in crate::control) fn lease(&self, task: &TaskRecord) -> Option<Lease> {
        Lease::held_by(task, &self.config.driver_id)
    }

    /// Runs `step` while renewing `lease` every [`renewal`] of the lease, so a step
    /// that outlives one lease period (a slow provider call) keeps its task. A
    /// renewal that finds the lease lost stops renewing: the step's own writes are
    /// fenced and fail, so it stops without side effects.
    pub(in crate::control) async fn holding<T>(
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
            let outcome = self.store.write_leased(&lease, now, &writes).await?;
            self.announce_written(&task.id, now, &writes, outcome.last_event);
            return Ok(outcome);
        }
        let mut outcome = LeasedOutcome::default();
        for write in &writes {
            match write {
                LeasedWrite::Renew { .. } => {}
                LeasedWrite::Step(step) => {
                    outcome.step_changed |=
                        self.store.set_execution_step(&task.id, *step, now).await?;
                }
                LeasedWrite::Update(update) => {
                    self.store.update_task(&task.id, update, now).await?
                }
                LeasedWrite::Transition(change) => {
                    outcome.transitioned |= self.store.transition_task(&task.id, change).await?;
                }
                LeasedWrite::PutNode(node) => self.store.put_node(node).await?,
                LeasedWrite::DeleteNode(id) => self.store.delete_node(id).await?,
                // Unfenced, each entry is numbered (and announced) on its own.
                LeasedWrite::Event(kind) => {
                    outcome.last_event = Some(self.emit(&task.id, kind.clone()).await?);
                }
            }
        }
        Ok(outcome)
    }

    /// Moves a task's status as a step does (fenced by its lease), and tells
    /// listeners when it moved.
    pub(in crate::control) async fn move_status(
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
            )
            .await?;
        }
        Ok(())
    }

    /// Writes a step entry; the step itself is already written, so a failure is
    /// logged.
    pub(in crate::control) async fn emit_step(&self, id: &TaskId, step: ExecutionStep) {
        self.emit_logged(
            id,
            TaskEventKind::Step {
                step,
                label: step.label().to_owned(),
            },
        )
        .await;
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
            self.emit_step(&task.id, step).await;
        }
        Ok(())
    }

    pub(in crate::control) async fn update(
        &self,
        task: &TaskRecord,
        update: TaskUpdate,
    ) -> Result<(), Error> {
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

    pub(in crate::control) fn poll(&self) -> Next {
        Next::At(after(self.clock.now(), self.config.poll_interval))
    }

    /// Move to `step` and look again at once.
    pub(in crate::control) fn step_to(&self, step: ExecutionStep) -> Next {
        Next::Step {
            step,
            update: Box::default(),
            at: self.clock.now(),
        }
    }
}
