//! Scenario `placement`: decisions per second over a 10,000-node fleet, indexed and
//! naive, on the same fleet and the same request stream.

use std::time::Instant;

use crate::fleet::{NaiveFleet, Workload, index, nodes};

/// The figures of the placement scenario.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PlacementFigures {
    /// Decisions per second through [`sam_core::FleetIndex`].
    pub ops_per_sec: f64,
    /// Decisions per second of the linear scan ([`NaiveFleet`]).
    pub naive_ops_per_sec: f64,
    /// Decisions that found a node, of all the indexed decisions.
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
    /// The seed of the fleet and the request stream.
    pub seed: u64,
}

/// Runs the scenario over a fleet of `run.fleet` nodes. Both placers first run a warm-up
/// of `run.fleet` decisions, so the fleet holds about one workspace per node; then each is
/// timed on the same stream, one decision being choose + take a slot + give back the
/// oldest slot.
///
/// # Errors
/// When the index and the scan disagree on any of the decisions both made.
pub fn run(run: PlacementRun) -> anyhow::Result<PlacementFigures> {
    let PlacementRun {
        fleet: size,
        naive_decisions,
        index_decisions,
        seed,
    } = run;
    anyhow::ensure!(
        naive_decisions <= index_decisions,
        "the index must be timed over at least the naive scan's decisions"
    );
    let fleet = nodes(size, seed);
    let mut naive = NaiveFleet::new(fleet.clone());
    let mut indexed = index(fleet);
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

    let total = size as u64 + index_decisions;
    Ok(PlacementFigures {
        ops_per_sec: index_decisions as f64 / index_secs,
        naive_ops_per_sec: naive_decisions as f64 / naive_secs,
        placed_share: index_load.placed as f64 / total as f64,
    })
}
