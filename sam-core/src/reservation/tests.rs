use super::*;
use crate::model::{Location, ProviderKind};
use proptest::prelude::*;

fn requirements() -> impl Strategy<Value = ResourceRequirements> {
    (
        proptest::option::of(0.0f64..64.0),
        proptest::option::of(0.0f64..256.0),
        proptest::option::of(0.0f64..2048.0),
        proptest::option::of(any::<bool>()),
        proptest::option::of(1u32..16),
    )
        .prop_map(|(v, m, d, e, c)| ResourceRequirements {
            min_vcpu: v,
            min_memory_gb: m,
            min_disk_gb: d,
            exclusive_node: e,
            max_co_tenants: c,
        })
}

fn layers() -> impl Strategy<Value = RequirementLayers> {
    proptest::collection::vec(requirements(), 7).prop_map(|v| {
        let mut layers = RequirementLayers::default();
        for (layer, r) in Layer::ALL.iter().zip(v) {
            *layers.layer_mut(*layer) = r;
        }
        layers
    })
}

/// The expected value and source of one field, computed the slow, obvious way.
fn expected<T: Copy>(
    layers: &RequirementLayers,
    field: impl Fn(&ResourceRequirements) -> Option<T>,
) -> (T, Layer) {
    for layer in Layer::ALL {
        if let Some(v) = field(layers.layer(layer)) {
            return (v, layer);
        }
    }
    (
        field(&ResourceRequirements::platform_defaults()).unwrap(),
        Layer::Platform,
    )
}

proptest! {
    #[test]
    fn each_field_from_the_highest_layer_that_sets_it(layers in layers()) {
        let r = resolve_reservation(&layers).unwrap();
        let (vcpu, vs) = expected(&layers, |r| r.min_vcpu);
        let (mem, ms) = expected(&layers, |r| r.min_memory_gb);
        let (disk, ds) = expected(&layers, |r| r.min_disk_gb);
        let (excl, es) = expected(&layers, |r| r.exclusive_node);
        let (co, cs) = expected(&layers, |r| r.max_co_tenants);
        prop_assert_eq!(r.sources, ReservationSources { vcpu: vs, memory: ms, disk: ds, exclusive: es, max_co_tenants: cs });
        // Units: ceil to whole millicores and megabytes, never below the request.
        prop_assert_eq!(r.cpu_millis, (vcpu * 1000.0).ceil() as u64);
        prop_assert_eq!(r.memory_mb, (mem * 1024.0).ceil() as u64);
        prop_assert_eq!(r.disk_mb, (disk * 1024.0).ceil() as u64);
        prop_assert!(r.cpu_millis as f64 >= vcpu * 1000.0);
        prop_assert_eq!(r.exclusive, excl);
        prop_assert_eq!(r.max_co_tenants, co);
        prop_assert_eq!(r.schema_version, RESERVATION_SCHEMA_VERSION);
    }

    #[test]
    fn out_of_range_values_are_rejected_naming_the_field(
        layer in proptest::sample::select(Layer::ALL.to_vec()),
        bad in prop_oneof![Just(f64::NAN), Just(f64::INFINITY), Just(-1.0), Just(1e12)],
    ) {
        let mut layers = RequirementLayers::default();
        layers.layer_mut(layer).min_memory_gb = Some(bad);
        match resolve_reservation(&layers) {
            Err(InvalidInput { field, .. }) => prop_assert_eq!(field, "min_memory_gb"),
            other => prop_assert!(false, "expected InvalidInput, got {:?}", other),
        }
    }

    /// Placement never over-commits: reservations accepted one by one by
    /// `check_slot` always fit the node together, and the tenancy rules hold.
    #[test]
    fn check_slot_never_over_commits(
        capacity in (1u64..64_000, 1u64..256_000, proptest::option::of(1u64..1_000_000)),
        requests in proptest::collection::vec(
            (0u64..16_000, 0u64..64_000, 0u64..200_000, any::<bool>(), 1u32..6), 1..20),
    ) {
        let capacity = Capacity { cpu_millis: capacity.0, memory_mb: capacity.1, disk_mb: capacity.2 };
        let mut live: Vec<Reservation> = Vec::new();
        for (cpu, mem, disk, exclusive, co) in requests {
            let new = Reservation {
                cpu_millis: cpu, memory_mb: mem, disk_mb: disk, exclusive, max_co_tenants: co,
                ..sample_reservation()
            };
            if check_slot(&capacity, &live, &new).is_ok() {
                live.push(new);
            }
        }
        let sum = |f: fn(&Reservation) -> u64| live.iter().map(f).sum::<u64>();
        prop_assert!(sum(|r| r.cpu_millis) <= capacity.cpu_millis);
        prop_assert!(sum(|r| r.memory_mb) <= capacity.memory_mb);
        if let Some(d) = capacity.disk_mb {
            prop_assert!(sum(|r| r.disk_mb) <= d);
        }
        if live.iter().any(|r| r.exclusive) {
            prop_assert_eq!(live.len(), 1);
        }
        for r in &live {
            prop_assert!(live.len() <= r.max_co_tenants as usize);
        }
    }
}

fn sample_reservation() -> Reservation {
    resolve_reservation(&RequirementLayers::default()).unwrap()
}

fn check(
    capacity: Capacity,
    live: &[Reservation],
    new: &Reservation,
    expected: Result<(), SlotRejection>,
) {
    assert_eq!(check_slot(&capacity, live, new), expected);
}

#[test]
fn slot_rejections_say_why() {
    let cap = Capacity {
        cpu_millis: 4000,
        memory_mb: 8192,
        disk_mb: Some(81920),
    };
    let base = sample_reservation(); // 2 vCPU, 4 GB, 40 GB, 4 co-tenants
    check(cap, &[], &base, Ok(()));
    check(cap, &[base], &base, Ok(()));
    check(
        cap,
        &[base, base],
        &base,
        Err(SlotRejection::Insufficient {
            resource: "cpu_millis".into(),
            needed: 2000,
            free: 0,
            total: 4000,
        }),
    );
    let exclusive = Reservation {
        exclusive: true,
        ..base
    };
    check(
        cap,
        &[exclusive],
        &base,
        Err(SlotRejection::HeldExclusively),
    );
    check(
        cap,
        &[base],
        &exclusive,
        Err(SlotRejection::NotEmpty { live: 1 }),
    );
    let tiny = Reservation {
        cpu_millis: 1,
        memory_mb: 1,
        disk_mb: 1,
        ..base
    };
    let solo = Reservation {
        max_co_tenants: 1,
        ..tiny
    };
    check(
        cap,
        &[solo],
        &tiny,
        Err(SlotRejection::TooManyTenants {
            would_hold: 2,
            limit: 1,
        }),
    );
    // Unknown disk is not enforced.
    let no_disk = Capacity {
        disk_mb: None,
        ..cap
    };
    let big_disk = Reservation {
        disk_mb: u64::MAX,
        ..tiny
    };
    check(no_disk, &[], &big_disk, Ok(()));
}

fn hetzner() -> Catalog {
    let loc = |s: &str| Location::new(s).unwrap();
    let t = |name: &str, vcpu, memory_gb, disk| ServerType {
        name: name.into(),
        vcpu,
        memory_gb,
        disk_gb: Some(disk),
        price: None,
        locations: vec![loc("fsn1"), loc("nbg1"), loc("hel1")],
    };
    Catalog {
        provider: ProviderKind::Hetzner,
        server_types: vec![
            t("cx23", 2, 4, 40),
            t("cx33", 4, 8, 80),
            t("cx43", 8, 16, 160),
        ],
        sizes: [
            (VmSize::Small, "cx23"),
            (VmSize::Medium, "cx33"),
            (VmSize::Large, "cx43"),
        ]
        .into_iter()
        .map(|(s, n)| (s, n.to_owned()))
        .collect(),
        default_location: Some(loc("fsn1")),
    }
}

#[test]
fn smallest_size_that_holds_the_reservation() {
    let catalog = hetzner();
    let with = |f: fn(&mut ResourceRequirements)| {
        let mut layers = RequirementLayers::default();
        f(&mut layers.task);
        resolve_reservation(&layers).unwrap()
    };
    assert_eq!(
        smallest_size(&catalog, &sample_reservation()).unwrap().0,
        VmSize::Small
    );
    assert_eq!(
        smallest_size(&catalog, &with(|r| r.min_vcpu = Some(3.0)))
            .unwrap()
            .0,
        VmSize::Medium
    );
    assert_eq!(
        smallest_size(&catalog, &with(|r| r.min_memory_gb = Some(9.0)))
            .unwrap()
            .0,
        VmSize::Large
    );
    let err = smallest_size(&catalog, &with(|r| r.min_vcpu = Some(16.0))).unwrap_err();
    assert_eq!(
        err.to_string(),
        "no hetzner size can hold 16 vCPU, 4 GB memory and 40 GB disk; the largest is large (cx43: 8 vCPU, 16 GB)"
    );
}

#[test]
fn zero_counts_as_set() {
    let mut layers = RequirementLayers::default();
    layers.task.min_disk_gb = Some(0.0);
    layers.project.min_disk_gb = Some(100.0);
    let r = resolve_reservation(&layers).unwrap();
    assert_eq!((r.disk_mb, r.sources.disk), (0, Layer::Task));
}

#[test]
fn reservation_json_round_trips_with_sources() {
    let r = sample_reservation();
    let json = serde_json::to_value(r).unwrap();
    assert_eq!(json["sources"]["vcpu"], "platform");
    assert_eq!(serde_json::from_value::<Reservation>(json).unwrap(), r);
    let err = serde_json::from_str::<ResourceRequirements>(r#"{"min_cpu": 2}"#).unwrap_err();
    assert!(err.to_string().contains("unknown field `min_cpu`"), "{err}");
}
