//! Benchmarks and the load harness of the SAM SDK.
//!
//! The criterion benchmarks (`cargo bench -p sam-benches`) time the hot pure paths
//! one by one; the load harness `sam-bench` runs each end-to-end scenario once in one
//! process and prints a table, or with `--json` one JSON object of figures, so runs can
//! be compared (see `BENCHMARKS.md` for the method and the latest figures).
//!
//! This library holds what both share: the synthetic fleet and its workload
//! ([`fleet`]), the field material from `../shared/cases` ([`cases`]), and one module
//! per harness scenario.

pub mod acp;
pub mod baseline;
pub mod cases;
pub mod events;
pub mod fleet;
pub mod lifecycle;
pub mod memory;
pub mod placement;
pub mod warm;
