//! Scenario `memory`: how much resident memory the control plane holds per task that
//! is in flight but parked in a wait step.
//!
//! Every task waits for capacity: the provider answers every create with
//! `transient_capacity`, so each task walks its fallback plan once and parks in
//! `waiting_for_capacity` until its backoff (15 s at first) is over. The store is the
//! real [`MemoryStore`], so what a task costs in it counts; the provider keeps nothing
//! per call, so nothing but the control plane's own state grows.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;

use async_trait::async_trait;
use sam_core::testkit::node_agent::{FakeAgentScript, FakeNodeAgent, PlainBoot};
use sam_core::{
    Catalog, ControlPlane, ControlPlaneConfig, ControlPlaneParts, DefaultScheduler, ErrorCategory,
    ExecutionStep, Labels, Provider, ProviderCapabilities, ProviderError, ProviderKind, Secret,
    Store, TaskEventKind, TokenSigner, TokioClock, VmId, VmInstance, VmSpec,
};
use sam_providers::FakeProvider;
use sam_store::MemoryStore;

use crate::lifecycle::{Driver, submit_request};

/// A provider that is always sold out and remembers nothing.
#[derive(Debug)]
struct SoldOut {
    catalog: Catalog,
}

impl SoldOut {
    fn error(&self) -> ProviderError {
        ProviderError::new(
            ProviderKind::Fake,
            ErrorCategory::TransientCapacity,
            "sold out",
        )
    }
}

#[async_trait]
impl Provider for SoldOut {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Fake
    }
    fn catalog(&self) -> &Catalog {
        &self.catalog
    }
    fn capabilities(&self) -> ProviderCapabilities {
        ProviderCapabilities::default()
    }
    async fn check_credentials(&self) -> Result<(), ProviderError> {
        Ok(())
    }
    async fn create_vm(&self, _spec: &VmSpec) -> Result<VmInstance, ProviderError> {
        Err(self.error())
    }
    async fn poll_create(&self, _vm: &VmInstance) -> Result<VmInstance, ProviderError> {
        Err(self.error())
    }
    async fn get_vm(&self, _id: &VmId) -> Result<Option<VmInstance>, ProviderError> {
        Ok(None)
    }
    async fn delete_vm(&self, _id: &VmId) -> Result<(), ProviderError> {
        Ok(())
    }
    async fn list_vms(&self, _labels: &Labels) -> Result<Vec<VmInstance>, ProviderError> {
        Ok(Vec::new())
    }
}

/// The resident set size of this process, in bytes (`VmRSS` of `/proc/self/status`).
///
/// # Errors
/// When the file cannot be read or holds no `VmRSS` line.
pub fn resident_bytes() -> anyhow::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .ok_or_else(|| anyhow::anyhow!("/proc/self/status has no VmRSS line"))?
        .trim()
        .parse::<u64>()?;
    Ok(kib * 1024)
}

/// The figures of the memory scenario.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MemoryFigures {
    /// Resident growth per parked task, in bytes.
    pub bytes_per_inflight_task: f64,
}

/// Submits and parks `count` tasks; returns once every one waits for capacity.
async fn park(cp: &ControlPlane, count: u64, first: u64) -> anyhow::Result<()> {
    for n in 0..count {
        cp.submit(&submit_request(first + n)).await?;
    }
    // Subscribed after the submissions, whose events would overflow the channel.
    let mut driver = Driver::new(cp);
    let mut parked = 0;
    while parked < count {
        driver
            .step(cp, |event| {
                if let TaskEventKind::Step {
                    step: ExecutionStep::WaitingForCapacity,
                    ..
                } = event.kind
                {
                    parked += 1;
                }
                Ok(())
            })
            .await
            .with_context(|| format!("{parked} of {count} tasks parked"))?;
    }
    Ok(())
}

/// Parks a warm-up batch, reads the resident size, parks `count` more tasks and
/// reads it again.
///
/// # Errors
/// Control-plane failures, a stall, `/proc` unreadable.
pub async fn run(count: u64) -> anyhow::Result<MemoryFigures> {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let mut config = ControlPlaneConfig::new("bench-memory", ProviderKind::Fake);
    config.poll_interval = Duration::from_millis(1);
    config.max_concurrent = 64;
    let cp = ControlPlane::new(
        ControlPlaneParts {
            scheduler: Arc::new(DefaultScheduler::new(Arc::clone(&store))),
            store,
            providers: vec![Arc::new(SoldOut {
                catalog: FakeProvider::new().catalog().clone(),
            }) as Arc<dyn Provider>],
            node_agent: Arc::new(FakeNodeAgent::new(FakeAgentScript::default())),
            boot: Arc::new(PlainBoot),
            signer: TokenSigner::new(Secret::new("m".repeat(32)), "sam-bench")?,
            clock: Arc::new(TokioClock::new()),
        },
        config,
    )?;
    // Warm up the allocator, the runtime and the store's maps first.
    park(&cp, 500, 0).await?;
    let before = resident_bytes()?;
    park(&cp, count, 500).await?;
    let after = resident_bytes()?;
    Ok(MemoryFigures {
        bytes_per_inflight_task: after.saturating_sub(before) as f64 / count as f64,
    })
}
