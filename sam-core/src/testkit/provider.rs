//! The [`Provider`] conformance suite: one `pub async fn` per clause of the trait's
//! `# Contract`, run by [`crate::provider_conformance!`].
//!
//! Each case creates what it needs with [`spec`] and deletes it again, so a backend
//! with real side effects (the local provider's processes) is left clean.

use std::time::Duration;

use crate::model::{Labels, NodeId, VmInstance, VmSize, VmSpec, VmState};
use crate::provider::Provider;

/// How often [`wait_running`] polls before it gives up.
pub const POLL_ATTEMPTS: u32 = 100;
/// The pause between two polls of [`wait_running`].
pub const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// A spec for the provider's small size in its default location, carrying the node
/// labels of `node` plus `team=conformance`.
///
/// # Panics
/// When the catalog maps no small size or has no location: see
/// [`catalog_maps_every_size`].
pub fn spec(provider: &dyn Provider, node: &str) -> VmSpec {
    let catalog = provider.catalog();
    let server_type = catalog
        .server_type(VmSize::Small)
        .expect("the catalog maps the small size");
    let location = catalog
        .default_location
        .clone()
        .or_else(|| server_type.locations.first().cloned())
        .expect("the catalog has a location");
    let node_id = NodeId::new(node).expect("conformance node ids are valid");
    let mut labels = Labels::for_node(&node_id);
    labels.insert("team", "conformance").expect("valid label");
    VmSpec {
        node_id,
        name: format!("sam-{node}"),
        size: VmSize::Small,
        server_type: server_type.name.clone(),
        location,
        image: None,
        user_data: "#cloud-config\n".to_owned(),
        labels,
    }
}

/// Polls `poll_create` until the VM runs, with a short real-time pause between
/// polls (the backend itself makes one check per call).
///
/// # Panics
/// When a poll fails or the VM is not running after [`POLL_ATTEMPTS`] polls.
pub async fn wait_running(provider: &dyn Provider, vm: &VmInstance) -> VmInstance {
    let mut current = vm.clone();
    for _ in 0..POLL_ATTEMPTS {
        current = provider
            .poll_create(&current)
            .await
            .unwrap_or_else(|e| panic!("poll_create of {} failed: {e}", vm.id));
        if current.state == VmState::Running {
            return current;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    panic!(
        "{} is still {:?} after {POLL_ATTEMPTS} polls",
        vm.id, current.state
    )
}

async fn create(provider: &dyn Provider, spec: &VmSpec) -> VmInstance {
    provider
        .create_vm(spec)
        .await
        .unwrap_or_else(|e| panic!("create_vm({}) failed: {e}", spec.name))
}

async fn delete(provider: &dyn Provider, vm: &VmInstance) {
    provider
        .delete_vm(&vm.id)
        .await
        .unwrap_or_else(|e| panic!("delete_vm({}) failed: {e}", vm.id));
}

/// `check_credentials` accepts the credentials the backend was built with.
pub async fn credentials_are_accepted(provider: &dyn Provider) {
    provider
        .check_credentials()
        .await
        .unwrap_or_else(|e| panic!("check_credentials failed: {e}"));
}

/// The catalog belongs to this provider, maps every size to a server type it lists,
/// and every server type has a location.
pub async fn catalog_maps_every_size(provider: &dyn Provider) {
    let catalog = provider.catalog();
    assert_eq!(
        catalog.provider,
        provider.kind(),
        "catalog of another provider"
    );
    for size in VmSize::ALL {
        let t = catalog
            .server_type(size)
            .unwrap_or_else(|| panic!("size {size} maps to no listed server type"));
        assert!(!t.locations.is_empty(), "{} has no location", t.name);
    }
}

/// A created VM carries the spec's name, type, location and labels, and reaches
/// `running` through `poll_create`.
pub async fn create_then_poll_reaches_running(provider: &dyn Provider) {
    let spec = spec(provider, "conf-create");
    let vm = create(provider, &spec).await;
    assert_eq!(vm.provider, provider.kind());
    assert_eq!(vm.name, spec.name);
    assert_eq!(vm.server_type, spec.server_type);
    assert_eq!(vm.location, spec.location);
    assert_eq!(
        vm.labels, spec.labels,
        "create_vm must return the spec's labels"
    );
    let running = wait_running(provider, &vm).await;
    assert_eq!(running.id, vm.id);
    delete(provider, &vm).await;
}

/// Labels round-trip: `get_vm` and `list_vms` return the labels of the spec unchanged.
pub async fn labels_round_trip(provider: &dyn Provider) {
    let spec = spec(provider, "conf-labels");
    let vm = create(provider, &spec).await;
    let got = provider
        .get_vm(&vm.id)
        .await
        .unwrap_or_else(|e| panic!("get_vm failed: {e}"))
        .expect("a created VM is found");
    assert_eq!(got.labels, spec.labels, "get_vm changed the labels");
    let listed = provider
        .list_vms(&spec.labels)
        .await
        .unwrap_or_else(|e| panic!("list_vms failed: {e}"));
    assert_eq!(
        listed.len(),
        1,
        "list by the spec's labels finds the VM once"
    );
    assert_eq!(listed[0].id, vm.id);
    assert_eq!(listed[0].labels, spec.labels, "list_vms changed the labels");
    delete(provider, &vm).await;
}

/// `get_vm` of a VM that no longer exists is `Ok(None)`.
pub async fn get_of_missing_vm_is_none(provider: &dyn Provider) {
    let vm = create(provider, &spec(provider, "conf-missing")).await;
    delete(provider, &vm).await;
    let got = provider
        .get_vm(&vm.id)
        .await
        .unwrap_or_else(|e| panic!("get_vm of a deleted VM must be Ok(None), got {e}"));
    assert!(got.is_none(), "a deleted VM is still found: {got:?}");
}

/// Deleting twice succeeds both times.
pub async fn delete_is_idempotent(provider: &dyn Provider) {
    let vm = create(provider, &spec(provider, "conf-delete")).await;
    delete(provider, &vm).await;
    provider
        .delete_vm(&vm.id)
        .await
        .unwrap_or_else(|e| panic!("deleting a deleted VM must succeed, got {e}"));
}

/// `list_vms` returns exactly the VMs carrying every label of the selector.
pub async fn list_selects_by_labels(provider: &dyn Provider) {
    let a = spec(provider, "conf-list-a");
    let b = spec(provider, "conf-list-b");
    let vm_a = create(provider, &a).await;
    let vm_b = create(provider, &b).await;
    let ids = |vms: Vec<VmInstance>| {
        let mut ids: Vec<String> = vms.into_iter().map(|v| v.id.into_string()).collect();
        ids.sort();
        ids
    };
    let list = |labels: Labels| async move {
        provider
            .list_vms(&labels)
            .await
            .unwrap_or_else(|e| panic!("list_vms failed: {e}"))
    };
    assert_eq!(ids(list(a.labels.clone()).await), vec![vm_a.id.to_string()]);
    assert_eq!(ids(list(b.labels.clone()).await), vec![vm_b.id.to_string()]);
    let mut shared = Labels::new();
    shared.insert("team", "conformance").expect("valid label");
    let mut both = vec![vm_a.id.to_string(), vm_b.id.to_string()];
    both.sort();
    assert_eq!(ids(list(shared).await), both);
    let mut nobody = Labels::new();
    nobody.insert("team", "nobody").expect("valid label");
    assert!(
        list(nobody).await.is_empty(),
        "an unmatched selector lists nothing"
    );
    delete(provider, &vm_a).await;
    delete(provider, &vm_b).await;
    assert!(
        list(a.labels.clone()).await.is_empty(),
        "a deleted VM is still listed"
    );
}

/// Expands to one `#[tokio::test]` per provider conformance case.
///
/// `$make` is an expression whose `.await` yields a pointer to the backend: a
/// `Box`/`Arc` of it, or a fixture that derefs to it and keeps a mock server alive.
/// It is evaluated once per case, so every case gets a fresh backend.
///
/// ```text
/// mod conformance {
///     sam_core::provider_conformance!(async { Box::new(FakeProvider::new()) });
/// }
/// ```
#[macro_export]
macro_rules! provider_conformance {
    ($make:expr) => {
        $crate::provider_conformance!(@cases $make;
            credentials_are_accepted,
            catalog_maps_every_size,
            create_then_poll_reaches_running,
            labels_round_trip,
            get_of_missing_vm_is_none,
            delete_is_idempotent,
            list_selects_by_labels
        );
    };
    (@cases $make:expr; $($case:ident),*) => {$(
        #[tokio::test]
        async fn $case() {
            let fixture = $make.await;
            $crate::testkit::provider::$case(&*fixture).await;
        }
    )*};
}
