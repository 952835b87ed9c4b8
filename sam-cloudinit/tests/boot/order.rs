//! The boot order invariant, checked on the rendered output: the script stops at
//! the first failure, phases run in the order of `Phase::ALL`, every command runs
//! through the phase script under its own phase's name, a background phase is
//! waited for before the agent starts, the agent starts last, nothing after the
//! Docker phase restarts Docker, and apt runs only through the script that
//! installs missing packages (needrestart suspended).

use proptest::prelude::*;
use sam_cloudinit::{ALL_PHASES_COMPLETE, BACKGROUND_SCRIPT, BOOT_LOG_TAG, PHASE_SCRIPT, Phase};

use crate::render::Rendered;
use crate::support::{fixtures, valid_boot};

/// A `logger -t sam-boot <message>` command's message.
fn boot_log(argv: &[String]) -> Option<&str> {
    match argv {
        [logger, flag, tag, message]
            if logger == "logger" && flag == "-t" && tag == BOOT_LOG_TAG =>
        {
            Some(message)
        }
        _ => None,
    }
}

/// Checks the invariant on one rendered document; returns the phases it ran.
fn check_order(text: &str) -> Vec<Phase> {
    let rendered = Rendered::parse(text);
    let (first, runcmd) = rendered.runcmd.split_first().expect("runcmd is empty");
    assert_eq!(
        first,
        &["set", "-e"],
        "the boot must stop at the first failure"
    );
    let mut phases = Vec::new();
    let mut open: Option<Phase> = None;
    let mut background: Vec<Phase> = Vec::new();
    let mut agent_start_at = None;
    let mut docker_at = None;
    let mut in_docker_phase = Vec::new();
    for (i, argv) in runcmd.iter().enumerate() {
        let Some(message) = boot_log(argv) else {
            let Some(phase) = open else {
                // Outside a phase only the wait for a running background phase.
                let waited = background
                    .iter()
                    .position(|p| {
                        argv.len() == 5
                            && argv[0] == PHASE_SCRIPT
                            && argv[1] == p.as_str()
                            && argv[2] == BACKGROUND_SCRIPT
                            && argv[3] == "wait"
                            && argv[4] == p.as_str()
                    })
                    .unwrap_or_else(|| panic!("command {argv:?} runs outside any phase"));
                background.remove(waited);
                continue;
            };
            if phase == Phase::Docker {
                in_docker_phase.push(i);
            }
            if phase.is_background() {
                assert!(
                    argv.len() > 4 && argv[2] == BACKGROUND_SCRIPT && argv[3] == "start",
                    "background phase {phase:?} runs {argv:?} in the foreground"
                );
            }
            assert!(
                argv.len() > 2 && argv[0] == PHASE_SCRIPT && argv[1] == phase.as_str(),
                "command {argv:?} does not run through the phase script as {phase:?}"
            );
            continue;
        };
        if let Some(name) = message.strip_prefix("PHASE START: ") {
            // A background phase is left running (it logs its own end).
            if let Some(running) = open.filter(|p| p.is_background()) {
                background.push(running);
                open = None;
            }
            assert_eq!(open, None, "{name} starts inside another phase");
            let phase = *Phase::ALL
                .iter()
                .find(|p| p.as_str() == name)
                .unwrap_or_else(|| panic!("unknown phase {name}"));
            open = Some(phase);
            phases.push(phase);
            if phase == Phase::AgentStart {
                assert!(
                    background.is_empty(),
                    "the agent starts before {background:?} ended"
                );
                agent_start_at = Some(i);
            }
            if phase == Phase::Docker {
                docker_at = Some(i);
            }
        } else if let Some(name) = message.strip_prefix("PHASE END: ") {
            assert_eq!(
                open.map(Phase::as_str),
                Some(name),
                "unbalanced end of {name}"
            );
            open = None;
        } else {
            assert_eq!(message, ALL_PHASES_COMPLETE);
            assert_eq!(
                i,
                runcmd.len() - 1,
                "{ALL_PHASES_COMPLETE} is not the last command"
            );
        }
    }
    assert_eq!(open, None, "a phase never ends");

    // Phases come in Phase::ALL's order, each at most once.
    let positions: Vec<usize> = phases
        .iter()
        .map(|p| Phase::ALL.iter().position(|q| q == p).unwrap())
        .collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "out of order: {phases:?}"
    );

    // The agent is downloaded, then started, and its start is the last phase.
    assert_eq!(phases.last(), Some(&Phase::AgentStart), "{phases:?}");
    assert!(phases.contains(&Phase::AgentDownload));
    // The VM agent waits for the boot's end once it sees this phase.
    assert_eq!(
        Phase::AgentDownload.as_str(),
        sam_agent::wire::boot_timeline::AGENT_DOWNLOAD_PHASE
    );
    for required in [
        Phase::AptTimers,
        Phase::Packages,
        Phase::Journald,
        Phase::MetadataBlock,
    ] {
        assert!(phases.contains(&required), "{required:?} missing");
    }

    // Nothing after the agent's start touches Docker or apt (which can restart it).
    let start = agent_start_at.expect("agent start is logged");
    for argv in &runcmd[start..] {
        for arg in argv {
            assert!(
                !arg.contains("docker") && !arg.contains("apt"),
                "{argv:?} runs after the agent started"
            );
        }
    }

    // Docker restarts only in its own phase; no apt install may restart it.
    for (i, argv) in runcmd.iter().enumerate() {
        let restarts =
            argv.iter().any(|a| a == "restart") && argv.iter().any(|a| a.contains("docker"));
        assert!(
            !restarts || in_docker_phase.contains(&i),
            "{argv:?} restarts Docker outside its phase"
        );
        assert!(
            !argv.iter().any(|a| a == "apt-get"),
            "{argv:?} runs apt directly, not through install-packages.sh"
        );
    }
    if let Some(at) = docker_at {
        let pull = phases.iter().position(|p| *p == Phase::ImagePull);
        let node = phases.iter().position(|p| *p == Phase::Node);
        assert!(
            pull.is_some() && pull < node,
            "the image pull runs beside Node's install"
        );
        assert!(at < agent_start_at.unwrap_or(usize::MAX));
    }
    phases
}

#[test]
fn fixtures_boot_in_order() {
    for (name, boot) in fixtures() {
        let phases = check_order(boot.render().unwrap().expose());
        assert_eq!(phases.contains(&Phase::Swap), boot.swap_mb > 0, "{name}");
        let docker = boot.role == sam_cloudinit::NodeRole::Docker;
        assert_eq!(phases.contains(&Phase::Docker), docker, "{name}");
        assert_eq!(phases.contains(&Phase::ImagePull), docker, "{name}");
        let extra_ca = boot.extra_ca_pem.is_some();
        assert_eq!(phases.contains(&Phase::Tls), extra_ca, "{name}");
        let node = docker || !boot.agents.is_empty();
        assert_eq!(phases.contains(&Phase::Node), node, "{name}");
        assert_eq!(phases.contains(&Phase::Agents), node, "{name}");
    }
}

/// The checker itself catches a Docker restart after the agent's start.
#[test]
#[should_panic(expected = "runs after the agent started")]
fn checker_rejects_a_late_docker_restart() {
    let text = crate::support::default_boot()
        .render()
        .unwrap()
        .into_string();
    let end = format!("- - logger\n  - -t\n  - {BOOT_LOG_TAG}\n  - \"PHASE END: agent-start\"");
    let late = text.replace(
        &end,
        &format!(
            "- - {PHASE_SCRIPT}\n  - agent-start\n  - systemctl\n  - restart\n  - docker\n{end}"
        ),
    );
    assert_ne!(late, text, "the replacement must apply");
    check_order(&late);
}

proptest! {
    #[test]
    fn every_valid_input_boots_in_order(boot in valid_boot()) {
        check_order(boot.render().unwrap().expose());
    }
}
