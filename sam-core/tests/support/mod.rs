//! What the integration tests share (the crash matrix, the simulation, the provider
//! credentials): building a control plane over given parts, and the invariants
//! every run must end in.

#![allow(dead_code, unreachable_pub)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use sam_core::testkit::node_agent::{FakeNodeAgent, PlainBoot};
use sam_core::{
    Clock, ControlPlane, ControlPlaneConfig, ControlPlaneParts, DefaultScheduler, NODE_LABEL,
    NodeFilter, NodeStatus, Provider, Scheduler, Secret, Store, TaskFilter, TokenSigner,
};
use sam_providers::{FakeCall, FakeProvider};

/// A control plane over these parts.
pub fn control_plane(
    store: Arc<dyn Store>,
    provider: Arc<FakeProvider>,
    agent: Arc<FakeNodeAgent>,
    clock: Arc<dyn Clock>,
    config: ControlPlaneConfig,
) -> ControlPlane {
    let scheduler = Arc::new(DefaultScheduler::new(Arc::clone(&store)));
    control_plane_with(store, provider, agent, clock, config, scheduler)
}

/// A control plane over these parts, placing with `scheduler`.
pub fn control_plane_with(
    store: Arc<dyn Store>,
    provider: Arc<FakeProvider>,
    agent: Arc<FakeNodeAgent>,
    clock: Arc<dyn Clock>,
    config: ControlPlaneConfig,
    scheduler: Arc<dyn Scheduler>,
) -> ControlPlane {
    ControlPlane::new(
        ControlPlaneParts {
            scheduler,
            store,
            providers: vec![provider as Arc<dyn Provider>],
            node_agent: agent,
            boot: Arc::new(PlainBoot),
            signer: TokenSigner::new(Secret::new("k".repeat(32)), "sam").expect("valid key"),
            clock,
        },
        config,
    )
    .expect("valid configuration")
}

/// Keeps the panics of fail points (the crashes these tests cause on purpose) out of
/// the output; every other panic is printed as usual.
pub fn quiet_fail_point_panics() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !info.to_string().contains("failpoint") {
            default_hook(info);
        }
    }));
}

/// Whether every task has ended.
pub async fn all_ended(store: &dyn Store) -> bool {
    live_tasks(store).await == 0
}

/// How many tasks are still queued, delegated or in progress.
pub async fn live_tasks(store: &dyn Store) -> usize {
    store
        .list_tasks(&TaskFilter::live())
        .await
        .expect("list tasks")
        .len()
}

/// The promises that hold once every task has ended and one reconciliation ran
/// (orphans old enough to delete), each broken one as a sentence.
///
/// - Each task has at most one VM now, and was created at most `max_creates` VMs.
/// - The provider's VMs are exactly the VMs of the nodes the store believes live,
///   and no live node row lacks its VM.
/// - No workspace slot is held by an ended task, and no task is live.
pub async fn violations(
    store: &dyn Store,
    provider: &FakeProvider,
    max_creates: Option<usize>,
) -> Vec<String> {
    let mut broken = Vec::new();
    let rows = store
        .list_nodes(&NodeFilter::default())
        .await
        .expect("list nodes");
    let live_rows: BTreeMap<String, _> = rows
        .iter()
        .filter(|n| n.status.is_live())
        .map(|n| (sam_core::model::label_safe(n.id.as_str()), n))
        .collect();
    let vms = provider.vms();
    let mut vms_per_task: BTreeMap<String, usize> = BTreeMap::new();
    let mut vm_nodes = BTreeSet::new();
    for vm in &vms {
        let Some(node) = vm.labels.get(NODE_LABEL) else {
            broken.push(format!("VM {} has no node label", vm.id));
            continue;
        };
        vm_nodes.insert(node.to_owned());
        match live_rows.get(node) {
            None => broken.push(format!(
                "VM {} (node {node}) has no live node row: an orphan",
                vm.id
            )),
            Some(row) => {
                if row.vm_id.as_ref().is_some_and(|id| id != &vm.id) {
                    broken.push(format!("node {node} records another VM than {}", vm.id));
                }
                if let Some(task) = &row.created_for {
                    *vms_per_task.entry(task.to_string()).or_default() += 1;
                }
            }
        }
    }
    for (task, count) in &vms_per_task {
        if *count > 1 {
            broken.push(format!("task {task} has {count} VMs"));
        }
    }
    for (label, row) in &live_rows {
        if !vm_nodes.contains(label) {
            broken.push(format!(
                "node {} is {:?} in the store but has no VM",
                row.id, row.status
            ));
        }
        if row.status == NodeStatus::Creating {
            broken.push(format!("node {} is still creating", row.id));
        }
    }
    if let Some(max) = max_creates {
        let mut creates: BTreeMap<String, usize> = BTreeMap::new();
        for call in provider.calls() {
            if let FakeCall::CreateVm(spec) = call {
                let owner = match store.get_node(&spec.node_id).await.expect("get node") {
                    Some(row) => row
                        .created_for
                        .map_or_else(|| "(none)".to_owned(), |t| t.to_string()),
                    None => format!("(deleted row {})", spec.node_id),
                };
                *creates.entry(owner).or_default() += 1;
            }
        }
        for (task, count) in creates {
            if count > max {
                broken.push(format!("task {task} was given {count} VM creates"));
            }
        }
    }
    let tasks = store
        .list_tasks(&TaskFilter::default())
        .await
        .expect("list tasks");
    for task in &tasks {
        if !task.status.is_terminal() {
            broken.push(format!(
                "task {} is still {} at {}",
                task.id, task.status, task.execution_step
            ));
        }
    }
    for row in &rows {
        for ws in store.list_workspaces(&row.id).await.expect("workspaces") {
            let task = tasks.iter().find(|t| t.id == ws.task_id);
            if ws.status.holds_slot() && task.is_none_or(|t| t.status.is_terminal()) {
                broken.push(format!(
                    "workspace {} ({:?}, updated {}) holds a slot on {} for an ended task: {task:?}",
                    ws.id, ws.status, ws.updated_at, row.id
                ));
            }
        }
    }
    broken
}
