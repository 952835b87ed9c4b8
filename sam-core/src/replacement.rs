//! What happens to a task whose node is lost before the task runs on it: a boot that
//! failed, a VM that vanished or failed, an agent that does not answer, a node that
//! never reported ready.
//!
//! None of these is the task's fault, and none is `transient_capacity`: the task
//! moves to another node while its replacement budget lasts
//! ([`crate::ControlPlaneConfig::node_replacements`]), and fails with a message
//! naming what was lost once it is spent. [`after_node_loss`] is the whole decision.

use std::fmt;
use std::time::Duration;

use crate::error::ErrorCategory;

/// How long after its create a VM the provider does not know counts as vanished
/// rather than not visible yet: some clouds list a new VM only once its create
/// has progressed.
pub const VANISHED_GRACE: Duration = Duration::from_secs(60);

/// How a task's node was lost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeLoss {
    /// The node reported that its boot failed.
    BootFailed {
        /// The phase that failed.
        phase: String,
        /// Its exit status.
        exit_status: i32,
    },
    /// The provider no longer knows the node's VM.
    VmVanished,
    /// The provider reports the node's VM as failed.
    VmFailed {
        /// Why, when the provider says ([`crate::VmInstance::failure`]).
        reason: Option<String>,
    },
    /// The node's VM agent does not answer (connection refused, timeout).
    AgentUnreachable,
    /// The node's heartbeats stopped (its health is `stale`).
    HealthStale,
    /// The node's agent did not report ready within the agent-ready limit
    /// ([`crate::TimeoutPolicy::agent_ready`]): a VM that hung while it booted.
    NeverReady {
        /// The limit that passed.
        waited: Duration,
    },
}

impl fmt::Display for NodeLoss {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BootFailed { phase, exit_status } => write!(
                f,
                "the server's boot failed in phase {phase} (exit status {exit_status})"
            ),
            Self::VmVanished => f.write_str("the server's VM disappeared"),
            Self::VmFailed { reason: None } => {
                f.write_str("the provider reports the server's VM as failed")
            }
            Self::VmFailed {
                reason: Some(reason),
            } => write!(
                f,
                "the provider reports the server's VM as failed ({reason})"
            ),
            Self::AgentUnreachable => f.write_str("the server's agent does not answer"),
            Self::HealthStale => f.write_str("the server's heartbeats stopped"),
            Self::NeverReady { waited } => write!(
                f,
                "the server's agent did not report ready within {} (agent ready timeout)",
                crate::timeout::human(*waited)
            ),
        }
    }
}

/// What the task had from the lost node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LostNode {
    /// The node was provisioned for this task.
    Provisioned {
        /// Its entry in the task's fallback plan, when it is one.
        plan_entry: Option<usize>,
    },
    /// The task was placed on a node that already existed.
    Placed,
}

/// The decision after a node loss.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LossDecision {
    /// Provision a new node, from this entry of the fallback plan.
    Provision {
        /// The entry to start from.
        from_entry: usize,
    },
    /// Place the task again, as on submission: another node may take it.
    PlaceAgain,
    /// Fail the task.
    Fail {
        /// The task error's category.
        category: ErrorCategory,
        /// One sentence for the user.
        message: String,
    },
}

/// What to do after `loss` of the task's node `lost`, when the task has already
/// been moved `replacements_used` times of its `budget`, and its fallback plan has
/// `plan_len` entries.
///
/// A node provisioned for the task is replaced from the plan's next entry (from the
/// first again after the last), so a size or location that just failed is not the
/// first retried; a node the task was placed on is left, and the task placed
/// again. A spent budget fails the task, naming the loss.
pub fn after_node_loss(
    loss: &NodeLoss,
    lost: LostNode,
    replacements_used: u32,
    budget: u32,
    plan_len: usize,
) -> LossDecision {
    if replacements_used >= budget {
        let category = match loss {
            NodeLoss::BootFailed { .. } => ErrorCategory::Unknown,
            _ => ErrorCategory::Transient,
        };
        let spent = match budget {
            0 => "no replacement server is allowed".to_owned(),
            1 => "its one replacement server was already used".to_owned(),
            n => format!("its {n} replacement servers were already used"),
        };
        return LossDecision::Fail {
            category,
            message: format!("The task lost its server: {loss}, and {spent}."),
        };
    }
    match lost {
        LostNode::Provisioned { plan_entry } => LossDecision::Provision {
            from_entry: match (plan_entry, plan_len) {
                (_, 0) | (None, _) => 0,
                (Some(i), n) => (i + 1) % n,
            },
        },
        LostNode::Placed => LossDecision::PlaceAgain,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn boot() -> NodeLoss {
        NodeLoss::BootFailed {
            phase: "packages".to_owned(),
            exit_status: 100,
        }
    }

    fn check(
        loss: &NodeLoss,
        lost: LostNode,
        used: u32,
        budget: u32,
        plan_len: usize,
        expected: &LossDecision,
    ) {
        assert_eq!(
            &after_node_loss(loss, lost, used, budget, plan_len),
            expected,
            "{loss:?} {lost:?} used {used} of {budget}, plan of {plan_len}"
        );
    }

    #[test]
    fn a_provisioned_node_is_replaced_from_the_next_plan_entry() {
        let lost = |i| LostNode::Provisioned {
            plan_entry: Some(i),
        };
        check(
            &boot(),
            lost(0),
            0,
            1,
            3,
            &LossDecision::Provision { from_entry: 1 },
        );
        check(
            &boot(),
            lost(2),
            0,
            1,
            3,
            &LossDecision::Provision { from_entry: 0 },
        );
        check(
            &NodeLoss::VmVanished,
            LostNode::Provisioned { plan_entry: None },
            0,
            1,
            3,
            &LossDecision::Provision { from_entry: 0 },
        );
    }

    #[test]
    fn a_node_the_task_was_placed_on_places_it_again() {
        for loss in [NodeLoss::AgentUnreachable, NodeLoss::HealthStale] {
            check(&loss, LostNode::Placed, 0, 1, 3, &LossDecision::PlaceAgain);
        }
    }

    #[test]
    fn a_spent_budget_fails_naming_the_phase_and_exit_status() {
        let decision = after_node_loss(&boot(), LostNode::Placed, 1, 1, 3);
        let LossDecision::Fail { category, message } = decision else {
            panic!("{decision:?}");
        };
        assert_eq!(category, ErrorCategory::Unknown);
        assert!(message.contains("phase packages"), "{message}");
        assert!(message.contains("exit status 100"), "{message}");
        assert!(message.contains("one replacement server"), "{message}");
        let decision = after_node_loss(
            &NodeLoss::VmFailed { reason: None },
            LostNode::Placed,
            0,
            0,
            3,
        );
        assert!(
            matches!(&decision, LossDecision::Fail { category: ErrorCategory::Transient, message } if message.contains("no replacement")),
            "{decision:?}"
        );
        // A failed VM's reason, when the provider gives one, is in the message.
        let loss = NodeLoss::VmFailed {
            reason: Some("its process exited: qemu: could not load kernel".to_owned()),
        };
        let LossDecision::Fail { message, .. } = after_node_loss(&loss, LostNode::Placed, 0, 0, 3)
        else {
            panic!("no budget: the task fails");
        };
        assert!(message.contains("could not load kernel"), "{message}");
        let hung = NodeLoss::NeverReady {
            waited: Duration::from_secs(900),
        };
        assert_eq!(
            hung.to_string(),
            "the server's agent did not report ready within 15 minutes (agent ready timeout)"
        );
    }

    proptest! {
        #[test]
        fn never_replaces_past_the_budget_and_never_leaves_the_plan(
            used in 0u32..10, budget in 0u32..10, entry in proptest::option::of(0usize..20), len in 0usize..20,
        ) {
            let decision = after_node_loss(&NodeLoss::VmFailed { reason: None }, LostNode::Provisioned { plan_entry: entry }, used, budget, len);
            match decision {
                LossDecision::Fail { .. } => prop_assert!(used >= budget),
                LossDecision::Provision { from_entry } => {
                    prop_assert!(used < budget);
                    prop_assert!(from_entry < len.max(1));
                }
                LossDecision::PlaceAgain => prop_assert!(false, "a provisioned node is replaced"),
            }
        }
    }
}
