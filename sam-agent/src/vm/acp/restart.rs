//! The crash-recovery policy: how often a crashed agent is restarted.

use std::collections::VecDeque;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// When a crashed agent is restarted: plain data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CrashPolicy {
    /// Restarts allowed within [`CrashPolicy::decay`].
    pub max_restarts: u32,
    /// How long a restart counts against [`CrashPolicy::max_restarts`].
    pub decay: Duration,
    /// An agent that exits sooner than this after it started is crashing on start:
    /// it is reported as a crash, never restarted.
    pub min_uptime: Duration,
    /// The watchdog on restart, `initialize` and `session/load` together.
    pub recovery_timeout: Duration,
}

impl Default for CrashPolicy {
    /// At most 3 restarts, each counting for 5 min; an exit within 5 s of start is a
    /// crash; recovery must finish within 2 min.
    fn default() -> Self {
        Self {
            max_restarts: 3,
            decay: Duration::from_secs(300),
            min_uptime: Duration::from_secs(5),
            recovery_timeout: Duration::from_secs(120),
        }
    }
}

/// The restarts made within the policy's decay window.
#[derive(Debug, Clone)]
pub(crate) struct RestartBudget {
    policy: CrashPolicy,
    recent: VecDeque<Instant>,
}

impl RestartBudget {
    pub(crate) fn new(policy: CrashPolicy) -> Self {
        Self {
            policy,
            recent: VecDeque::new(),
        }
    }

    /// Takes one restart at `now`, returning how many are now counted, or `None` when
    /// the budget is used up.
    pub(crate) fn take(&mut self, now: Instant) -> Option<u32> {
        while self
            .recent
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= self.policy.decay)
        {
            self.recent.pop_front();
        }
        let used = u32::try_from(self.recent.len()).unwrap_or(u32::MAX);
        if used >= self.policy.max_restarts {
            return None;
        }
        self.recent.push_back(now);
        Some(used + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn three_restarts_then_decay() {
        let mut budget = RestartBudget::new(CrashPolicy::default());
        let start = Instant::now();
        assert_eq!(budget.take(start), Some(1));
        assert_eq!(budget.take(start + Duration::from_secs(60)), Some(2));
        assert_eq!(budget.take(start + Duration::from_secs(120)), Some(3));
        assert_eq!(budget.take(start + Duration::from_secs(180)), None);
        // The first restart ages out 5 min after it happened.
        assert_eq!(budget.take(start + Duration::from_secs(299)), None);
        assert_eq!(budget.take(start + Duration::from_secs(300)), Some(3));
        // Long quiet: everything decays.
        assert_eq!(budget.take(start + Duration::from_secs(3600)), Some(1));
    }
}
