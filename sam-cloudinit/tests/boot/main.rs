//! Tests of rendered node boot user-data: snapshots, boot order, injection,
//! YAML 1.1 round trips, `cloud-init schema`, and the boot script run under `sh`.
//!
//! One test binary with modules, so the support code builds once.

mod injection;
mod order;
mod render;
mod run;
mod schema;
mod support;
mod yaml11;
