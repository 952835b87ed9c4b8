//! Scenario `placement`: decisions per second over a 10,000-node fleet, by the
//! scheduler in service, straight through its index, and by a naive scan, on the
//! same fleet and the same request stream.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use sam_core::{
    DefaultScheduler, FleetStore, Placement, Scheduler, SlotOutcome, Store, WorkspaceRecord,
    WorkspaceStatus,
};
use sam_store::MemoryStore;

use crate::fleet::{NaiveFleet, Workload, index, nodes};

/// The figures of the placement scenario.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PlacementFigures {
    /// Decisions per second of the scheduler in service, by its own time: the time
    /// spent in [`DefaultScheduler::place`] (its warm claims, its fleet view and the
    /// read-back check of the chosen node in the store) and in
    /// [`Scheduler::released`] for the slots freed, over a [`MemoryStore`]; the
    /// store's slot reservations and stops between the decisions run untimed.
    pub ops_per_sec: f64,
    /// Decisions per second of the whole in-service loop: the scheduler's calls, the
    /// store's slot reservation and stop of the oldest workspace, and the harness's
    /// own request stream.
    pub loop_ops_per_sec: f64,
    /// Decisions per second of the linear scan ([`NaiveFleet`]).
    pub naive_ops_per_sec: f64,
    /// Decisions per second straight through a [`sam_core::FleetIndex`] with no
    /// store: what the scheduler's lookup alone allows.
    pub index_ops_per_sec: f64,
    /// Decisions of the scheduler that found a node, of all its decisions.
    pub placed_share: f64,
}

/// How big a placement run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlacementRun {
    /// Nodes in the fleet.
    pub fleet: usize,
    /// Decisions the naive scan is timed over (it is slow by design).
    pub naive_decisions: u64,
    /// Decisions the index is timed over; at least `naive_decisions`.
    pub index_decisions: u64,
    /// Decisions the scheduler is timed over.
    pub scheduler_decisions: u64,
    /// The seed of the fleet and the request stream.
    pub seed: u64,
}

/// Runs the scenario over a fleet of `run.fleet` nodes. Every placer first runs a
/// warm-up of `run.fleet` decisions, so the fleet holds about one workspace per node;
/// then each is timed on the same stream, one decision being choose + take a slot +
/// give back the oldest slot.
///
/// For the scheduler the fleet lives in a [`MemoryStore`]: choose is
/// [`DefaultScheduler::place`] (its warm-node claims, its fleet view and the check of
/// the chosen node against the store), take is the store's `reserve_workspace_slot`,
/// and give back marks the oldest workspace stopped and tells the scheduler
/// ([`Scheduler::released`]), as the control plane's release of a finished task does.
/// Its decisions per second are counted over the time spent in the scheduler's own
/// calls (`place` and `released`), and over the whole loop as well.
///
/// # Errors
/// When the index and the scan disagree on any of the decisions both made, or the
/// store refuses a slot the scheduler chose (nothing else writes, so it never may).
pub async fn run(run: PlacementRun) -> anyhow::Result<PlacementFigures> {
    let PlacementRun {
        fleet: size,
        naive_decisions,
        index_decisions,
        scheduler_decisions,
        seed,
    } = run;
    anyhow::ensure!(
        naive_decisions <= index_decisions,
        "the index must be timed over at least the naive scan's decisions"
    );
    let fleet = nodes(size, seed);
    let mut naive = NaiveFleet::new(fleet.clone());
    let mut indexed = index(fleet.clone());
    let mut naive_load = Workload::new(seed, size);
    let mut index_load = Workload::new(seed, size);
    naive_load.run(&mut naive, size as u64);
    index_load.run(&mut indexed, size as u64);

    let start = Instant::now();
    naive_load.run(&mut naive, naive_decisions);
    let naive_secs = start.elapsed().as_secs_f64();

    let start = Instant::now();
    index_load.run(&mut indexed, naive_decisions);
    anyhow::ensure!(
        index_load.digest == naive_load.digest,
        "the fleet index and the linear scan chose different nodes"
    );
    index_load.run(&mut indexed, index_decisions - naive_decisions);
    let index_secs = start.elapsed().as_secs_f64();

    let store = Arc::new(MemoryStore::new());
    for node in fleet {
        store.put_node(&node).await?;
    }
    let scheduler = DefaultScheduler::new(Arc::clone(&store) as Arc<dyn Store>);
    let mut load = Workload::new(seed, size);
    in_service(&scheduler, store.as_ref(), &mut load, size as u64).await?;
    let placed_before = load.placed;
    let start = Instant::now();
    let scheduler_time =
        in_service(&scheduler, store.as_ref(), &mut load, scheduler_decisions).await?;
    let loop_secs = start.elapsed().as_secs_f64();

    Ok(PlacementFigures {
        ops_per_sec: scheduler_decisions as f64 / scheduler_time.as_secs_f64(),
        loop_ops_per_sec: scheduler_decisions as f64 / loop_secs,
        naive_ops_per_sec: naive_decisions as f64 / naive_secs,
        index_ops_per_sec: index_decisions as f64 / index_secs,
        placed_share: (load.placed - placed_before) as f64 / scheduler_decisions.max(1) as f64,
    })
}

/// Runs `n` steps of `load` through the scheduler and the store, as the runner would:
/// place (at the wall clock's `now`, so the view ages as in service), reserve the slot
/// of an existing-node decision, and stop the oldest workspaces beyond the target,
/// telling the scheduler of each as the control plane does. Returns the time spent
/// in the scheduler's calls (`place` and `released`).
///
/// # Errors
/// A store failure, or the store refusing a slot the scheduler chose.
pub async fn in_service(
    scheduler: &DefaultScheduler,
    store: &MemoryStore,
    load: &mut Workload,
    n: u64,
) -> anyhow::Result<Duration> {
    let mut in_scheduler = Duration::ZERO;
    for _ in 0..n {
        let mut request = load.next_request();
        request.now = Utc::now();
        let start = Instant::now();
        let decision = scheduler.place(&request).await?;
        in_scheduler += start.elapsed();
        let workspace = load.workspace();
        let chosen = match decision.placement {
            Placement::Node { node_id, .. } => Some(node_id),
            Placement::Provision { .. } => None,
        };
        let mut taken = None;
        if let Some(node) = &chosen {
            let record = WorkspaceRecord {
                id: workspace.clone(),
                node_id: node.clone(),
                task_id: request.task_id.clone(),
                status: WorkspaceStatus::Creating,
                effective_profile: None,
                reservation: request.reservation,
                created_at: request.now,
                updated_at: request.now,
            };
            match store.reserve_workspace_slot(&record).await? {
                SlotOutcome::Reserved => taken = Some((request.task_id.clone(), workspace)),
                SlotOutcome::Rejected(reason) => anyhow::bail!(
                    "the store refused the slot the scheduler chose on node {node}: {reason}"
                ),
            }
        }
        for (task, oldest) in load.decided(chosen.as_ref(), taken) {
            store
                .update_workspace(&oldest, WorkspaceStatus::Stopped, None, request.now)
                .await?;
            let start = Instant::now();
            scheduler.released(&task, &oldest);
            in_scheduler += start.elapsed();
        }
    }
    Ok(in_scheduler)
}
