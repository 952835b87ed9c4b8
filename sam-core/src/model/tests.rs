use super::*;
use proptest::prelude::*;

#[test]
fn provider_kind_parses_and_prints() {
    for kind in ProviderKind::ALL {
        assert_eq!(kind.to_string().parse::<ProviderKind>().unwrap(), kind);
        assert_eq!(serde_json::to_value(kind).unwrap(), kind.as_str());
    }
    assert_eq!(
        "HETZNER".parse::<ProviderKind>().unwrap(),
        ProviderKind::Hetzner
    );
    let err = "aws".parse::<ProviderKind>().unwrap_err();
    assert_eq!(
        err.to_string(),
        r#"invalid provider "aws": expected one of hetzner, scaleway, gcp, local, fake, qemu"#
    );
}

#[test]
fn enums_serialize_as_their_display_names() {
    fn check<T>(values: &[T])
    where
        T: Serialize + fmt::Display + FromStr + PartialEq + fmt::Debug,
        <T as FromStr>::Err: fmt::Debug,
    {
        for v in values {
            assert_eq!(serde_json::to_value(v).unwrap(), v.to_string());
            assert_eq!(&v.to_string().parse::<T>().unwrap(), v);
        }
    }
    check(&ExecutionStep::ALL);
    check(&VmSize::ALL);
    check(&TaskStatus::ALL);
    check(&[
        NodeStatus::Creating,
        NodeStatus::Running,
        NodeStatus::Recovery,
        NodeStatus::Deleted,
    ]);
    check(&[
        NodeLifecycle::Active,
        NodeLifecycle::Warm,
        NodeLifecycle::Destroying,
    ]);
    check(&[
        NodeHealth::Healthy,
        NodeHealth::Stale,
        NodeHealth::Unhealthy,
    ]);
}

#[test]
fn execution_steps_have_labels() {
    assert_eq!(ExecutionStep::NodeSelection.label(), "Finding a server…");
    assert_eq!(
        ExecutionStep::WaitingForCapacity.label(),
        "Waiting for server capacity…"
    );
    assert_eq!(ExecutionStep::Running.label(), "Agent is working…");
    assert_eq!(ExecutionStep::ALL.len(), 8);
}

#[test]
fn task_status_transitions() {
    use TaskStatus::*;
    assert!(Queued.can_transition_to(Delegated));
    assert!(Delegated.can_transition_to(InProgress));
    assert!(InProgress.can_transition_to(Completed));
    assert!(Queued.can_transition_to(Cancelled));
    assert!(!InProgress.can_transition_to(Queued));
    for terminal in [Completed, Failed, Cancelled] {
        assert!(terminal.is_terminal());
        assert!(!terminal.can_transition_to(Failed));
    }
}

#[test]
fn sizes_step_down() {
    assert_eq!(VmSize::Large.smaller(), Some(VmSize::Medium));
    assert_eq!(VmSize::Small.smaller(), None);
    assert!(VmSize::Small < VmSize::Large);
}

#[test]
fn ids_reject_unsafe_characters() {
    assert!(TaskId::new("task-01H:abc_1.2").is_ok());
    for bad in ["", "a b", "a;b", "$(x)", "a\nb", "../x", "`x`", "a'b"] {
        assert!(TaskId::new(bad).is_err(), "{bad:?} accepted");
    }
    assert!(NodeId::new("x".repeat(MAX_ID_LEN + 1)).is_err());
    let id: NodeId = serde_json::from_str(r#""node-1""#).unwrap();
    assert_eq!(format!("{id:?}"), r#"node id("node-1")"#);
    assert!(serde_json::from_str::<NodeId>(r#""no way""#).is_err());
}

#[test]
fn labels_follow_the_strictest_provider_rules() {
    let node = NodeId::new("Node.42").unwrap();
    let labels = Labels::for_node(&node);
    assert_eq!(labels.get(NODE_LABEL), Some("node-42"));
    assert_eq!(labels.get(MANAGED_LABEL), Some("true"));
    let mut l = Labels::new();
    assert!(l.insert("Upper", "x").is_err());
    assert!(l.insert("1abc", "x").is_err());
    assert!(l.insert("ok", "with space").is_err());
    assert!(l.insert("ok", "").is_ok());
    let selector: Labels = serde_json::from_str(r#"{"sam-managed":"true"}"#).unwrap();
    assert!(labels.matches(&selector));
    assert!(labels.matches(&Labels::new()));
    assert!(!Labels::new().matches(&selector));
    assert!(serde_json::from_str::<Labels>(r#"{"BAD":"x"}"#).is_err());
}

#[test]
fn locations_are_validated() {
    assert!(Location::new("fr-par-1").is_ok());
    assert!(Location::new("FSN1").is_err());
    assert!(serde_json::from_str::<Location>(r#""eu west""#).is_err());
}

proptest! {
    #[test]
    fn label_safe_values_are_valid_labels(s in ".{0,100}") {
        let mut l = Labels::new();
        prop_assert!(l.insert("k", &label_safe(&s)).is_ok());
    }

    #[test]
    fn parsing_never_panics(s in ".{0,40}") {
        let _ = s.parse::<ProviderKind>();
        let _ = s.parse::<VmSize>();
        let _ = TaskId::new(s.clone());
        let _ = Location::new(s);
    }
}
