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

/// A clock that moves only when told to, for tests that drive the control plane step
/// by step against real stores in real time.
#[derive(Debug)]
pub struct ManualClock {
    now: std::sync::Mutex<DateTime<Utc>>,
}

impl ManualClock {
    /// A clock that reads `start` until it is advanced.
    pub fn starting_at(start: DateTime<Utc>) -> Self {
        Self {
            now: std::sync::Mutex::new(start),
        }
    }

    /// Moves the clock forward by `by` (saturating at the latest representable time).
    pub fn advance(&self, by: std::time::Duration) {
        let mut now = self.now.lock().unwrap_or_else(|e| e.into_inner());
        let step = chrono::Duration::from_std(by).unwrap_or(chrono::Duration::MAX);
        *now = now
            .checked_add_signed(step)
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.now.lock().unwrap_or_else(|e| e.into_inner())
    }
}
