use super::*;
use proptest::prelude::*;

fn minutes(range: std::ops::Range<u64>) -> impl Strategy<Value = Duration> {
    range.prop_map(|m| Duration::from_secs(m * 60))
}

/// Policies built the supported way: any base waits, positive graces, and ordered
/// limits derived from them.
fn derived_policy() -> impl Strategy<Value = TimeoutPolicy> {
    (
        (
            minutes(1..120),
            minutes(1..120),
            minutes(1..240),
            minutes(1..30),
            minutes(1..30),
        ),
        (minutes(1..600), minutes(0..600), minutes(0..600)),
        (minutes(1..120), minutes(0..1440), 1u64..600, 1u64..60),
    )
        .prop_map(
            |(
                (prov, ready, ws, qg, dg),
                (soft, hard_extra, abs_extra),
                (warm, life_extra, beat, idle),
            )| {
                let mut p = TimeoutPolicy {
                    capacity_wait: Duration::from_secs(300),
                    node_provisioning: prov,
                    agent_ready: ready,
                    workspace_ready: ws,
                    queued_grace: qg,
                    delegated_grace: dg,
                    in_progress_soft: soft,
                    in_progress_hard: soft + hard_extra,
                    task_absolute: Duration::ZERO,
                    warm_node: warm,
                    node_max_lifetime: warm + life_extra,
                    heartbeat_interval: Duration::from_secs(beat),
                    heartbeat_stale: Duration::from_secs(beat * 3),
                    agent_idle: Duration::from_secs(idle),
                    git_command: ws,
                };
                p.task_absolute = p.longest_legitimate_task() + abs_extra;
                p
            },
        )
}

proptest! {
    #[test]
    fn every_derived_policy_is_valid(p in derived_policy()) {
        prop_assert_eq!(p.validate(), Ok(()));
        // The sweeps fire strictly after the waits they guard.
        prop_assert!(p.stuck_queued() > p.capacity_wait + p.agent_ready);
        prop_assert!(p.stuck_queued() > p.capacity_wait + p.node_provisioning);
        prop_assert!(p.stuck_delegated() > p.workspace_ready);
    }

    #[test]
    fn crafted_bad_policies_are_rejected(p in derived_policy(), flaw in 0usize..9) {
        let mut bad = p;
        let field = match flaw {
            0 => { bad.queued_grace = Duration::ZERO; "queued_grace" }
            1 => { bad.delegated_grace = Duration::ZERO; "delegated_grace" }
            2 => { bad.in_progress_hard = bad.in_progress_soft - Duration::from_secs(1); "in_progress_hard" }
            3 => { bad.task_absolute = bad.longest_legitimate_task() - Duration::from_secs(1); "task_absolute" }
            4 => { bad.heartbeat_stale = bad.heartbeat_interval; "heartbeat_stale" }
            5 => { bad.agent_idle = bad.in_progress_soft; "agent_idle" }
            6 => { bad.git_command = Duration::ZERO; "git_command" }
            7 => { bad.git_command = bad.workspace_ready + Duration::from_secs(1); "git_command" }
            _ => { bad.node_max_lifetime = bad.warm_node - Duration::from_secs(1); "node_max_lifetime" }
        };
        prop_assert_eq!(bad.validate().unwrap_err().field, field);
    }
}

#[test]
fn defaults_are_valid_and_match_sam() {
    let p = TimeoutPolicy::default();
    p.validate().unwrap();
    assert_eq!(p.agent_idle, Duration::from_secs(5 * 60));
    assert_eq!(p.stuck_queued(), Duration::from_secs(25 * 60));
    assert_eq!(p.stuck_queued_after(0), p.stuck_queued());
    assert_eq!(
        p.stuck_queued_after(2),
        p.stuck_queued() + 2 * p.node_provisioning.max(p.agent_ready)
    );
    assert_eq!(p.stuck_delegated(), Duration::from_secs(31 * 60));
}

#[test]
fn sams_incident_is_rejected() {
    // Agent ready 10 min and an independent stuck-queued sweep of 10 min: the sweep
    // fired before the agent could report ready. Expressed here, that is a zero grace.
    let p = TimeoutPolicy {
        node_provisioning: Duration::from_secs(600),
        agent_ready: Duration::from_secs(600),
        queued_grace: Duration::ZERO,
        ..TimeoutPolicy::default()
    };
    let err = p.validate().unwrap_err();
    assert_eq!(err.field, "queued_grace");
    assert!(
        err.to_string()
            .contains("before node_provisioning can finish"),
        "{err}"
    );
}

#[test]
fn an_idle_limit_beyond_the_workspace_wait_is_rejected() {
    let p = TimeoutPolicy {
        workspace_ready: Duration::from_secs(120),
        git_command: Duration::from_secs(60),
        agent_idle: Duration::from_secs(121),
        ..TimeoutPolicy::default()
    };
    let err = p.validate().unwrap_err();
    assert_eq!(err.field, "agent_idle");
    assert!(err.to_string().contains("workspace_ready"), "{err}");
}

#[test]
fn a_policy_written_before_the_idle_limit_reads_the_default() {
    let mut json = serde_json::to_value(TimeoutPolicy::default()).unwrap();
    json.as_object_mut().unwrap().remove("agent_idle");
    let p: TimeoutPolicy = serde_json::from_value(json).unwrap();
    assert_eq!(p, TimeoutPolicy::default());
}

/// `secs` seconds.
fn secs(secs: u64) -> Duration {
    Duration::from_secs(secs)
}

proptest! {
    /// Whatever the heartbeat, stale limit, lease and provider call, a policy that
    /// passes `validate_with_lease` has a stale limit of at least three heartbeats and
    /// a lease that still covers the call after a missed renewal; and its derived
    /// values are the policy's own.
    #[test]
    fn a_policy_valid_with_its_lease_keeps_both_margins(
        p in derived_policy(),
        beat in 1u64..900,
        stale in 1u64..3600,
        lease_ms in 0u64..400_000,
        call_ms in 0u64..120_000,
    ) {
        let p = TimeoutPolicy {
            heartbeat_interval: secs(beat),
            heartbeat_stale: secs(stale),
            ..p
        };
        let lease = Duration::from_millis(lease_ms);
        let call = Duration::from_millis(call_ms);
        match p.validate_with_lease(lease, call) {
            Ok(derived) => {
                prop_assert!(p.heartbeat_stale >= STALE_HEARTBEATS * p.heartbeat_interval);
                prop_assert!(lease - lease / LEASE_RENEWALS >= call);
                prop_assert!(!derived.lease_renewal.is_zero());
                prop_assert_eq!(derived.lease_renewal, lease / LEASE_RENEWALS);
                prop_assert_eq!(derived.lease_after_missed_renewal, lease - lease / LEASE_RENEWALS);
                prop_assert_eq!(derived.stuck_queued, p.stuck_queued());
                prop_assert_eq!(derived.stuck_delegated, p.stuck_delegated());
                prop_assert_eq!(derived.longest_legitimate_task, p.longest_legitimate_task());
                prop_assert!(derived.heartbeats_before_stale >= STALE_HEARTBEATS);
                prop_assert_eq!(p.validate(), Ok(()));
            }
            Err(e) => {
                let margins_hold = stale >= 3 * beat
                    && !(lease / LEASE_RENEWALS).is_zero()
                    && lease - lease / LEASE_RENEWALS >= call;
                // Refused only for a margin, or for what `validate` refuses.
                prop_assert!(!margins_hold || p.validate().is_err(), "{e}");
                let margin = ["heartbeat_stale", "lease"].contains(&e.field);
                prop_assert!(margin || p.validate().is_err(), "{e}");
            }
        }
    }
}

#[test]
fn the_default_policy_is_valid_with_a_minute_lease_and_a_30_s_call() {
    let derived = TimeoutPolicy::default()
        .validate_with_lease(secs(60), secs(30))
        .unwrap();
    assert_eq!(derived.lease_renewal, secs(20));
    assert_eq!(derived.lease_after_missed_renewal, secs(40));
    assert_eq!(derived.provider_call, secs(30));
    assert_eq!(derived.heartbeats_before_stale, 3);
    assert_eq!(derived.stuck_queued, secs(25 * 60));
    assert_eq!(derived.stuck_delegated, secs(31 * 60));
}

/// One policy, lease and call that contradict each other: the error names the field
/// and says `wants` (the values in conflict).
fn check_refused(p: TimeoutPolicy, lease: u64, call: u64, field: &str, wants: &[&str]) {
    let err = p.validate_with_lease(secs(lease), secs(call)).unwrap_err();
    assert_eq!(err.field, field, "{err}");
    for want in wants {
        assert!(err.to_string().contains(want), "{want:?} in {err}");
    }
}

#[test]
fn contradicting_timeouts_are_refused_naming_the_values() {
    let beat_600 = TimeoutPolicy {
        heartbeat_interval: secs(600),
        heartbeat_stale: secs(180),
        ..TimeoutPolicy::default()
    };
    check_refused(
        beat_600,
        60,
        30,
        "heartbeat_stale",
        &[
            "heartbeat_stale (180 s) must cover 3 heartbeats of heartbeat_interval (600 s)",
            "1800 s",
        ],
    );
    // Longer than one beat, yet fewer than three.
    let two_beats = TimeoutPolicy {
        heartbeat_stale: secs(120),
        ..TimeoutPolicy::default()
    };
    check_refused(two_beats, 60, 30, "heartbeat_stale", &["(120 s)", "(60 s)"]);
    // Today's former default: a 30 s lease and a 30 s HTTP timeout.
    check_refused(
        TimeoutPolicy::default(),
        30,
        30,
        "lease",
        &[
            "lease (30 s) must cover the longest provider call (30 s)",
            "lease / 3 = 10 s",
            "only 20 s",
        ],
    );
    // A lease shorter than the call.
    check_refused(
        TimeoutPolicy::default(),
        10,
        30,
        "lease",
        &["(10 s)", "(30 s)"],
    );
    // A lease too short to be renewed.
    let err = TimeoutPolicy::default()
        .validate_with_lease(Duration::from_nanos(2), Duration::ZERO)
        .unwrap_err();
    assert_eq!(err.field, "lease", "{err}");
    // What `validate` refuses is still refused.
    let bad = TimeoutPolicy {
        queued_grace: Duration::ZERO,
        ..TimeoutPolicy::default()
    };
    check_refused(bad, 60, 30, "queued_grace", &[]);
}

#[test]
fn a_provider_without_calls_needs_only_renewals() {
    // A 3 s lease (the scale-out test's) with no provider call to cover.
    let derived = TimeoutPolicy::default()
        .validate_with_lease(secs(3), Duration::ZERO)
        .unwrap();
    assert_eq!(derived.lease_renewal, secs(1));
}
