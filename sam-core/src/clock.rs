//! Where the control plane gets the time.

use std::fmt::Debug;

use chrono::{DateTime, Utc};

/// A source of the current time.
///
/// The runner never reads the system clock directly, so tests drive it on tokio's
/// paused clock ([`TokioClock`]) and simulations on a clock of their own.
pub trait Clock: Send + Sync + Debug {
    /// The current time.
    fn now(&self) -> DateTime<Utc>;
}

/// Wall-clock time anchored at construction and advanced by tokio's clock, so a
/// paused tokio runtime (`start_paused = true`) moves it exactly.
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    anchor: DateTime<Utc>,
    started: tokio::time::Instant,
}

impl TokioClock {
    /// A clock that starts at `anchor` now.
    pub fn starting_at(anchor: DateTime<Utc>) -> Self {
        Self {
            anchor,
            started: tokio::time::Instant::now(),
        }
    }

    /// A clock that starts at the system's current time.
    pub fn new() -> Self {
        Self::starting_at(Utc::now())
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for TokioClock {
    fn now(&self) -> DateTime<Utc> {
        let elapsed = chrono::Duration::from_std(self.started.elapsed()).unwrap_or_default();
        self.anchor + elapsed
    }
}
