//! A scriptable in-memory provider for tests of everything above the providers.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sam_core::{
    Catalog, Clock, ErrorCategory, Labels, Location, Provider, ProviderCapabilities, ProviderError,
    ProviderKind, VmId, VmInstance, VmSpec, VmState,
};

const KIND: ProviderKind = ProviderKind::Fake;

/// A call of the [`Provider`] trait, for scripting outcomes per call kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FakeOp {
    /// [`Provider::check_credentials`].
    CheckCredentials,
    /// [`Provider::create_vm`].
    CreateVm,
    /// [`Provider::poll_create`].
    PollCreate,
    /// [`Provider::get_vm`].
    GetVm,
    /// [`Provider::delete_vm`].
    DeleteVm,
    /// [`Provider::list_vms`].
    ListVms,
}

/// What the next call of one [`FakeOp`] does. Unscripted calls succeed.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum FakeOutcome {
    /// The call works.
    Succeed,
    /// The call fails with this category and has no effect.
    Fail(ErrorCategory),
    /// The call takes effect but its response is lost: the caller sees a
    /// `transient` error (a create made the VM, a delete removed it).
    ResponseLost,
    /// A create is accepted, and the next `poll_create` of that VM reports its
    /// action failed with this category (the VM is left in `failed` state).
    FailInAction(ErrorCategory),
    /// Waits (on tokio's clock, so paused-clock tests are exact), then does the
    /// inner outcome.
    Delayed(Duration, Box<FakeOutcome>),
    /// The call fails as `rate_limited` with this `Retry-After`, and has no effect.
    RateLimited(Duration),
}

/// A recorded call with its argument.
#[derive(Debug, Clone, PartialEq)]
pub enum FakeCall {
    /// `check_credentials()`.
    CheckCredentials,
    /// `create_vm(spec)`.
    CreateVm(VmSpec),
    /// `poll_create(vm)` with the VM's id.
    PollCreate(VmId),
    /// `get_vm(id)`.
    GetVm(VmId),
    /// `delete_vm(id)`.
    DeleteVm(VmId),
    /// `list_vms(labels)`.
    ListVms(Labels),
}

#[derive(Debug, Default)]
struct State {
    vms: BTreeMap<VmId, FakeVm>,
    scripts: HashMap<FakeOp, VecDeque<FakeOutcome>>,
    calls: Vec<FakeCall>,
    /// When each call began, by the fake's clock (tokio's when it has none).
    call_times: Vec<DateTime<Utc>>,
    next_id: u64,
    /// Live VMs a (server type, location) can hold; absent means no limit.
    capacity: HashMap<(String, String), usize>,
}

#[derive(Debug)]
struct FakeVm {
    instance: VmInstance,
    action_failure: Option<ErrorCategory>,
}

/// An in-memory provider whose every call can be scripted and is recorded.
///
/// A created VM is `pending` until the first `poll_create`, then `running`.
/// It never touches the network, so it is what the runner's and the reliability
/// tests drive.
#[derive(Debug)]
pub struct FakeProvider {
    state: Mutex<State>,
    catalog: Catalog,
    clock: Option<Arc<dyn Clock>>,
}

impl Default for FakeProvider {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeProvider {
    /// An empty fake with the nominal local catalog (one location, `local`).
    pub fn new() -> Self {
        Self {
            state: Mutex::default(),
            catalog: crate::catalog(KIND, &[]),
            clock: None,
        }
    }

    /// An empty fake offering `catalog` (several sizes and locations, for fallback tests).
    pub fn with_catalog(catalog: Catalog) -> Self {
        Self {
            state: Mutex::default(),
            catalog: Catalog {
                provider: KIND,
                ..catalog
            },
            clock: None,
        }
    }

    /// Stamps created VMs with `clock` instead of the system time, so VM ages agree
    /// with a control plane on a paused or manual clock.
    #[must_use]
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Appends outcomes for the next calls of `op`, in order.
    pub fn script(&self, op: FakeOp, outcomes: impl IntoIterator<Item = FakeOutcome>) {
        self.lock().scripts.entry(op).or_default().extend(outcomes);
    }

    /// Drops every outcome still scripted: from now on every call succeeds.
    pub fn clear_scripts(&self) {
        self.lock().scripts.clear();
    }

    /// Limits a server type in a location to `live_vms` VMs at once: a create beyond
    /// it fails with `transient_capacity`, as a sold-out size does.
    pub fn limit_capacity(&self, server_type: &str, location: &Location, live_vms: usize) {
        self.lock().capacity.insert(
            (server_type.to_owned(), location.as_str().to_owned()),
            live_vms,
        );
    }

    /// Puts VM `id` in the `failed` state from now on, as a provider reports a VM
    /// whose host failed; `false` when there is no such VM.
    pub fn fail_vm(&self, id: &VmId) -> bool {
        match self.lock().vms.get_mut(id) {
            Some(fake) => {
                fake.instance.state = VmState::Failed;
                true
            }
            None => false,
        }
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<FakeCall> {
        self.lock().calls.clone()
    }

    /// Every call so far with the time it began, in order: a call that waits (a
    /// [`FakeOutcome::Delayed`]) is timed when it was made, not when it returned.
    pub fn timed_calls(&self) -> Vec<(DateTime<Utc>, FakeCall)> {
        let state = self.lock();
        state
            .call_times
            .iter()
            .copied()
            .zip(state.calls.iter().cloned())
            .collect()
    }

    /// The VMs that exist now.
    pub fn vms(&self) -> Vec<VmInstance> {
        self.lock()
            .vms
            .values()
            .map(|v| v.instance.clone())
            .collect()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data; keep using it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records the call and takes the next scripted outcome, waiting out any delay;
    /// an outcome that fails the call is returned as its error.
    async fn begin(&self, op: FakeOp, call: FakeCall) -> Result<FakeOutcome, ProviderError> {
        let mut outcome = {
            let mut state = self.lock();
            state.calls.push(call);
            let now = self.clock.as_ref().map_or_else(Utc::now, |c| c.now());
            state.call_times.push(now);
            state
                .scripts
                .get_mut(&op)
                .and_then(VecDeque::pop_front)
                .unwrap_or(FakeOutcome::Succeed)
        };
        while let FakeOutcome::Delayed(wait, inner) = outcome {
            tokio::time::sleep(wait).await;
            outcome = *inner;
        }
        match scripted_error(&outcome) {
            Some(error) => Err(error),
            None => Ok(outcome),
        }
    }
}

fn failure(category: ErrorCategory) -> ProviderError {
    ProviderError::new(KIND, category, format!("scripted {category} failure"))
        .with_code(category.as_str())
}

/// The error a scripted outcome fails with, if it fails.
fn scripted_error(outcome: &FakeOutcome) -> Option<ProviderError> {
    match outcome {
        FakeOutcome::Fail(c) => Some(failure(*c)),
        FakeOutcome::RateLimited(wait) => {
            Some(failure(ErrorCategory::RateLimited).with_retry_after(*wait))
        }
        _ => None,
    }
}

fn lost() -> ProviderError {
    ProviderError::new(KIND, ErrorCategory::Transient, "the response was lost")
        .with_code("response_lost")
}

/// The error of a call that took effect when its outcome says the response was lost.
fn respond<T>(outcome: &FakeOutcome, value: T) -> Result<T, ProviderError> {
    match outcome {
        FakeOutcome::ResponseLost => Err(lost()),
        _ => Ok(value),
    }
}

#[async_trait]
impl Provider for FakeProvider {
    fn kind(&self) -> ProviderKind {
        KIND
    }

    fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    fn capabilities(&self) -> ProviderCapabilities {
        ProviderCapabilities {
            idempotent_create: false,
            async_create: true,
        }
    }

    async fn check_credentials(&self) -> Result<(), ProviderError> {
        let outcome = self
            .begin(FakeOp::CheckCredentials, FakeCall::CheckCredentials)
            .await?;
        respond(&outcome, ())
    }

    async fn create_vm(&self, spec: &VmSpec) -> Result<VmInstance, ProviderError> {
        let outcome = self
            .begin(FakeOp::CreateVm, FakeCall::CreateVm(spec.clone()))
            .await?;
        let mut state = self.lock();
        let key = (spec.server_type.clone(), spec.location.as_str().to_owned());
        if let Some(limit) = state.capacity.get(&key) {
            let live = state
                .vms
                .values()
                .filter(|v| {
                    v.instance.server_type == spec.server_type
                        && v.instance.location == spec.location
                })
                .count();
            if live >= *limit {
                return Err(failure(ErrorCategory::TransientCapacity));
            }
        }
        state.next_id += 1;
        let instance = VmInstance {
            id: crate::vm_id(KIND, format!("fake-{}", state.next_id))?,
            provider: KIND,
            name: spec.name.clone(),
            server_type: spec.server_type.clone(),
            location: spec.location.clone(),
            state: VmState::Pending,
            labels: spec.labels.clone(),
            address: Some("127.0.0.1".to_owned()),
            created_at: Some(self.clock.as_ref().map_or_else(Utc::now, |c| c.now())),
            failure: None,
        };
        let action_failure = match outcome {
            FakeOutcome::FailInAction(c) => Some(c),
            _ => None,
        };
        state.vms.insert(
            instance.id.clone(),
            FakeVm {
                instance: instance.clone(),
                action_failure,
            },
        );
        respond(&outcome, instance)
    }

    async fn poll_create(&self, vm: &VmInstance) -> Result<VmInstance, ProviderError> {
        let outcome = self
            .begin(FakeOp::PollCreate, FakeCall::PollCreate(vm.id.clone()))
            .await?;
        let mut state = self.lock();
        let Some(fake) = state.vms.get_mut(&vm.id) else {
            return Err(failure(ErrorCategory::NotFound));
        };
        if let Some(category) = fake.action_failure {
            fake.instance.state = VmState::Failed;
            return Err(failure(category).with_code("action_failed"));
        }
        if fake.instance.state == VmState::Pending {
            fake.instance.state = VmState::Running;
        }
        respond(&outcome, fake.instance.clone())
    }

    async fn get_vm(&self, id: &VmId) -> Result<Option<VmInstance>, ProviderError> {
        let outcome = self
            .begin(FakeOp::GetVm, FakeCall::GetVm(id.clone()))
            .await?;
        respond(
            &outcome,
            self.lock().vms.get(id).map(|v| v.instance.clone()),
        )
    }

    async fn delete_vm(&self, id: &VmId) -> Result<(), ProviderError> {
        let outcome = self
            .begin(FakeOp::DeleteVm, FakeCall::DeleteVm(id.clone()))
            .await?;
        self.lock().vms.remove(id);
        respond(&outcome, ())
    }

    async fn list_vms(&self, labels: &Labels) -> Result<Vec<VmInstance>, ProviderError> {
        let outcome = self
            .begin(FakeOp::ListVms, FakeCall::ListVms(labels.clone()))
            .await?;
        let vms = self
            .lock()
            .vms
            .values()
            .filter(|v| v.instance.labels.matches(labels))
            .map(|v| v.instance.clone())
            .collect();
        respond(&outcome, vms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sam_core::{Location, NodeId, VmSize};

    fn spec(node: &str) -> VmSpec {
        let node = NodeId::new(node).expect("valid id");
        VmSpec {
            labels: Labels::for_node(&node),
            node_id: node,
            name: "vm".into(),
            size: VmSize::Small,
            server_type: "local-small".into(),
            location: Location::new("local").expect("valid"),
            image: None,
            user_data: String::new(),
        }
    }

    #[tokio::test]
    async fn lost_create_response_leaves_a_vm_to_find_by_label() {
        let fake = FakeProvider::new();
        fake.script(FakeOp::CreateVm, [FakeOutcome::ResponseLost]);
        let spec = spec("n1");
        let error = fake.create_vm(&spec).await.expect_err("response lost");
        assert_eq!(error.category(), ErrorCategory::Transient);
        let found = fake.list_vms(&spec.labels).await.expect("list");
        assert_eq!(found.len(), 1);
    }

    #[tokio::test]
    async fn failed_action_surfaces_on_poll() {
        let fake = FakeProvider::new();
        fake.script(
            FakeOp::CreateVm,
            [FakeOutcome::FailInAction(ErrorCategory::TransientCapacity)],
        );
        let vm = fake.create_vm(&spec("n1")).await.expect("accepted");
        let error = fake.poll_create(&vm).await.expect_err("action failed");
        assert_eq!(error.category(), ErrorCategory::TransientCapacity);
        let after = fake.get_vm(&vm.id).await.expect("get").expect("exists");
        assert_eq!(after.state, VmState::Failed);
    }

    #[tokio::test(start_paused = true)]
    async fn delays_use_tokio_time_and_calls_are_recorded() {
        let fake = FakeProvider::new();
        let wait = Duration::from_secs(5);
        fake.script(
            FakeOp::CheckCredentials,
            [FakeOutcome::Delayed(
                wait,
                Box::new(FakeOutcome::Fail(ErrorCategory::AuthError)),
            )],
        );
        let start = tokio::time::Instant::now();
        let error = fake.check_credentials().await.expect_err("scripted");
        assert_eq!(error.category(), ErrorCategory::AuthError);
        assert_eq!(start.elapsed(), wait);
        fake.check_credentials()
            .await
            .expect("unscripted calls succeed");
        assert_eq!(
            fake.calls(),
            vec![FakeCall::CheckCredentials, FakeCall::CheckCredentials]
        );
    }

    mod conformance {
        sam_core::provider_conformance!(async { Box::new(crate::FakeProvider::new()) });
    }
}
