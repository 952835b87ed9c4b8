//! The crash windows of the runner and the sweeps, as named fail points.
//!
//! Each constant names a place where a process that dies leaves durable state half
//! written: a node row without its VM, a VM without its id, a claimed warm node or
//! a reserved slot that no task records yet.
//! The crash-matrix tests (`sam-core/tests/crash.rs`) crash a control plane at each
//! one and check that a fresh control plane on the same store recovers.
//!
//! With the `failpoints` feature each point is a [`fail`](https://docs.rs/fail) fail
//! point, configured by name (`fail::cfg(crash::SLOT_RESERVED, "panic")`); without
//! it the points compile to nothing.

/// After the task names the node of a provisioning attempt, before its row is written.
pub const NODE_NAMED: &str = "runner::node-named";
/// After the node row is written, before the provider is asked for the VM.
pub const NODE_ROW_WRITTEN: &str = "runner::node-row-written";
/// After the provider accepted a create, before the VM's id is recorded.
pub const CREATE_ACCEPTED: &str = "runner::create-accepted";
/// After the VM is known, while its create is being polled.
pub const POLLING: &str = "runner::polling";
/// After a warm node was claimed, before the task records its placement.
pub const WARM_CLAIMED: &str = "scheduler::warm-claimed";
/// After a workspace slot was reserved, before the workspace is dispatched.
pub const SLOT_RESERVED: &str = "runner::slot-reserved";
/// After the prompt was sent, before `running` is recorded.
pub const PROMPT_SENT: &str = "runner::prompt-sent";
/// After a task ended, before what it held (its workspace slot, its node) is released.
pub const TASK_ENDED: &str = "control::task-ended";
/// After a VM was deleted, before its node row is marked deleted.
pub const VM_DELETED: &str = "control::vm-deleted";
/// In the stuck-task sweep, after it failed one task.
pub const SWEEP_TASKS: &str = "sweep::tasks";
/// In the node sweep, after it destroyed one node.
pub const SWEEP_NODES: &str = "sweep::nodes";
/// In the orphan sweep, after it deleted one orphan VM.
pub const SWEEP_ORPHANS: &str = "sweep::orphans";

/// Every crash window, for tests that must cover them all.
pub const ALL: &[&str] = &[
    NODE_NAMED,
    NODE_ROW_WRITTEN,
    CREATE_ACCEPTED,
    POLLING,
    WARM_CLAIMED,
    SLOT_RESERVED,
    PROMPT_SENT,
    TASK_ENDED,
    VM_DELETED,
    SWEEP_TASKS,
    SWEEP_NODES,
    SWEEP_ORPHANS,
];

/// Evaluates the fail point `name` (with the `failpoints` feature; a no-op without).
#[inline]
pub(crate) fn point(name: &str) {
    #[cfg(feature = "failpoints")]
    fail::fail_point!(name);
    #[cfg(not(feature = "failpoints"))]
    let _ = name;
}
