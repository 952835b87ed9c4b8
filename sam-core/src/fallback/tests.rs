use super::*;
use crate::model::ServerType;
use crate::reservation::{RequirementLayers, ResourceRequirements, resolve_reservation};
use proptest::prelude::*;

fn loc(s: &str) -> Location {
    Location::new(s).unwrap()
}

/// A catalog whose sizes are offered in different location sets, as on Scaleway.
fn catalog() -> Catalog {
    let t = |name: &str, vcpu, memory_gb, locs: &[&str]| ServerType {
        name: name.into(),
        vcpu,
        memory_gb,
        disk_gb: Some(80),
        price: None,
        locations: locs.iter().map(|l| loc(l)).collect(),
    };
    Catalog {
        provider: ProviderKind::Scaleway,
        server_types: vec![
            t("DEV1-M", 3, 4, &["fr-par-1", "fr-par-2", "nl-ams-1"]),
            t("DEV1-XL", 4, 12, &["fr-par-1", "nl-ams-1", "pl-waw-1"]),
            t("GP1-S", 8, 32, &["fr-par-2", "nl-ams-1"]),
        ],
        sizes: [
            (VmSize::Small, "DEV1-M"),
            (VmSize::Medium, "DEV1-XL"),
            (VmSize::Large, "GP1-S"),
        ]
        .into_iter()
        .map(|(s, n)| (s, n.to_owned()))
        .collect(),
        default_location: Some(loc("fr-par-1")),
    }
}

fn reservation(vcpu: f64, memory_gb: f64) -> Reservation {
    let layers = RequirementLayers {
        task: ResourceRequirements {
            min_vcpu: Some(vcpu),
            min_memory_gb: Some(memory_gb),
            min_disk_gb: Some(20.0),
            ..Default::default()
        },
        ..Default::default()
    };
    resolve_reservation(&layers).unwrap()
}

fn plan(
    size: VmSize,
    source: Layer,
    location: Option<&str>,
    location_source: Layer,
    r: &Reservation,
) -> Result<FallbackPlan, PlanError> {
    let catalog = catalog();
    FallbackPlan::new(&PlanRequest {
        catalog: &catalog,
        size,
        size_source: source,
        location: location.map(loc),
        location_source,
        reservation: r,
        descent: SizeDescent::Allowed,
    })
}

fn pairs(plan: &FallbackPlan) -> Vec<(VmSize, String)> {
    plan.attempts()
        .iter()
        .map(|a| (a.size, a.location.to_string()))
        .collect()
}

#[test]
fn project_default_large_descends_through_every_size() {
    let p = plan(
        VmSize::Large,
        Layer::Project,
        None,
        Layer::Platform,
        &reservation(2.0, 4.0),
    )
    .unwrap();
    assert_eq!(
        p.sizes(),
        vec![VmSize::Large, VmSize::Medium, VmSize::Small]
    );
    // The default location first where a size offers it, then the others in catalog order.
    assert_eq!(
        pairs(&p),
        vec![
            (VmSize::Large, "fr-par-2".into()),
            (VmSize::Large, "nl-ams-1".into()),
            (VmSize::Medium, "fr-par-1".into()),
            (VmSize::Medium, "nl-ams-1".into()),
            (VmSize::Medium, "pl-waw-1".into()),
            (VmSize::Small, "fr-par-1".into()),
            (VmSize::Small, "fr-par-2".into()),
            (VmSize::Small, "nl-ams-1".into()),
        ]
    );
    assert_eq!(
        p.exhausted_message(),
        "No capacity for any available VM size (tried large, medium, small)."
    );
}

#[test]
fn explicit_sizes_never_descend() {
    for layer in [
        Layer::Task,
        Layer::Trigger,
        Layer::Skill,
        Layer::AgentProfile,
    ] {
        let p = plan(
            VmSize::Large,
            layer,
            Some("nl-ams-1"),
            Layer::Task,
            &reservation(2.0, 4.0),
        )
        .unwrap();
        assert_eq!(
            pairs(&p),
            vec![(VmSize::Large, "nl-ams-1".into())],
            "{layer}"
        );
        assert_eq!(
            p.exhausted_message(),
            "There were no large machines available."
        );
        assert_eq!(
            p.after_failure(0, ErrorCategory::TransientCapacity),
            PlanStep::EndOfPass
        );
    }
}

#[test]
fn explicit_size_too_small_is_an_error() {
    let err = plan(
        VmSize::Small,
        Layer::Task,
        None,
        Layer::Platform,
        &reservation(4.0, 4.0),
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            PlanError::ExplicitSizeTooSmall {
                size: VmSize::Small,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn default_size_below_the_reservation_starts_at_what_fits() {
    let p = plan(
        VmSize::Small,
        Layer::Platform,
        None,
        Layer::Platform,
        &reservation(4.0, 8.0),
    )
    .unwrap();
    assert_eq!(p.sizes(), vec![VmSize::Medium]);
}

#[test]
fn explicit_location_never_moves_and_must_be_offered() {
    let p = plan(
        VmSize::Large,
        Layer::Project,
        Some("nl-ams-1"),
        Layer::Project,
        &reservation(2.0, 4.0),
    )
    .unwrap();
    assert!(
        p.attempts()
            .iter()
            .all(|a| a.location.as_str() == "nl-ams-1")
    );
    assert_eq!(
        p.sizes(),
        vec![VmSize::Large, VmSize::Medium, VmSize::Small]
    );
    // A smaller size not offered there is skipped, not moved elsewhere.
    let p = plan(
        VmSize::Large,
        Layer::Project,
        Some("fr-par-2"),
        Layer::Task,
        &reservation(2.0, 4.0),
    )
    .unwrap();
    assert_eq!(
        pairs(&p),
        vec![
            (VmSize::Large, "fr-par-2".into()),
            (VmSize::Small, "fr-par-2".into())
        ]
    );
    let err = plan(
        VmSize::Large,
        Layer::Task,
        Some("pl-waw-1"),
        Layer::Task,
        &reservation(2.0, 4.0),
    )
    .unwrap_err();
    assert!(
        matches!(err, PlanError::LocationNotOffered { .. }),
        "{err:?}"
    );
}

#[test]
fn kill_switch_disables_descent() {
    let catalog = catalog();
    let r = reservation(2.0, 4.0);
    let p = FallbackPlan::new(&PlanRequest {
        catalog: &catalog,
        size: VmSize::Large,
        size_source: Layer::Platform,
        location: None,
        location_source: Layer::Platform,
        reservation: &r,
        descent: SizeDescent::Disabled,
    })
    .unwrap();
    assert_eq!(p.sizes(), vec![VmSize::Large]);
}

#[test]
fn nothing_fits_is_an_error() {
    let err = plan(
        VmSize::Large,
        Layer::Platform,
        None,
        Layer::Platform,
        &reservation(64.0, 4.0),
    )
    .unwrap_err();
    assert!(matches!(err, PlanError::NoSizeFits(_)), "{err:?}");
}

fn layer() -> impl Strategy<Value = Layer> {
    proptest::sample::select(Layer::ALL.to_vec())
}

fn category() -> impl Strategy<Value = ErrorCategory> {
    proptest::sample::select(ErrorCategory::ALL.to_vec())
}

proptest! {
    #[test]
    fn plan_properties(
        size in proptest::sample::select(VmSize::ALL.to_vec()),
        size_source in layer(),
        location in proptest::option::of(proptest::sample::select(vec!["fr-par-1", "fr-par-2", "nl-ams-1", "pl-waw-1"])),
        location_source in layer(),
        vcpu in 0.0f64..10.0,
        memory in 0.0f64..40.0,
    ) {
        let r = reservation(vcpu, memory);
        let Ok(p) = plan(size, size_source, location, location_source, &r) else {
            return Ok(());
        };
        let catalog = catalog();
        let attempts = p.attempts();
        prop_assert!(!attempts.is_empty());
        // No entry twice.
        for (i, a) in attempts.iter().enumerate() {
            prop_assert!(!attempts[i + 1..].contains(a), "{:?} repeats", a);
        }
        // Sizes never increase along the plan, and never exceed the request unless the
        // request was a default below what the reservation needs.
        prop_assert!(attempts.windows(2).all(|w| w[0].size >= w[1].size));
        let (smallest, _) = crate::reservation::smallest_size(&catalog, &r).unwrap();
        prop_assert!(attempts.iter().all(|a| a.size <= size.max(smallest)));
        // Never below what the reservation needs.
        for a in attempts {
            let t = catalog.server_type_named(&a.server_type).unwrap();
            prop_assert!(Capacity::of(t).covers(&r));
            prop_assert!(t.locations.contains(&a.location));
        }
        // Explicit sizes never descend.
        if size_source.is_explicit() {
            prop_assert!(attempts.iter().all(|a| a.size == size));
        }
        // Explicit locations never move.
        if let Some(l) = location.filter(|_| location_source != Layer::Platform) {
            prop_assert!(attempts.iter().all(|a| a.location.as_str() == l));
        }
    }

    /// Walking the plan with a sequence of outcomes tries each entry at most once per
    /// pass, in order, and stops on the first non-capacity error.
    #[test]
    fn walking_the_plan(outcomes in proptest::collection::vec(category(), 1..30)) {
        let r = reservation(1.0, 2.0);
        let p = plan(VmSize::Large, Layer::Platform, None, Layer::Platform, &r).unwrap();
        let mut tried = Vec::new();
        let mut index = 0;
        for category in outcomes {
            tried.push(index);
            match p.after_failure(index, category) {
                PlanStep::Next(next) => {
                    prop_assert_eq!(category, ErrorCategory::TransientCapacity);
                    prop_assert_eq!(next, index + 1);
                    index = next;
                }
                PlanStep::EndOfPass => {
                    prop_assert_eq!(category, ErrorCategory::TransientCapacity);
                    prop_assert_eq!(index, p.attempts().len() - 1);
                    prop_assert_eq!(&tried, &(0..p.attempts().len()).collect::<Vec<_>>());
                    tried.clear();
                    index = 0;
                }
                PlanStep::Stop => {
                    prop_assert_ne!(category, ErrorCategory::TransientCapacity);
                    break;
                }
            }
        }
    }
}
