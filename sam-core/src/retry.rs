//! Retry with exponential backoff inside a wall-clock budget.
//!
//! [`RetryPolicy::next_delay`] is the whole decision, as a pure function.
//! [`retry`] (and [`retry_notify`], which reports each retry) is the one async loop
//! on top of it, and the only place in the SDK that applies per-attempt timeouts.
//! Elapsed time is measured with [`tokio::time::Instant`], so tests on a paused
//! clock are exact.

use std::collections::hash_map::RandomState;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::error::{Classify, ErrorCategory, PolicyError};

/// How to retry: plain data, checked by [`RetryPolicy::validate`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RetryPolicy {
    /// Delay before the first retry; also the smallest delay.
    pub initial_delay: Duration,
    /// The largest delay between attempts (a provider's `Retry-After` may exceed it).
    pub max_delay: Duration,
    /// Attempts in all, the first one included.
    pub max_attempts: u32,
    /// Wall-clock budget for all attempts and waits together.
    pub budget: Duration,
    /// How much of each delay may be shaved off at random, in [0, 1].
    pub jitter: f64,
    /// The longest one attempt may take; `None` bounds it by the remaining budget only.
    pub per_attempt_timeout: Option<Duration>,
    /// Which failures are retried.
    #[serde(default)]
    pub retry_on: RetryOn,
}

/// Which error categories a retry loop retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RetryOn {
    /// Categories where the same request may succeed later
    /// ([`ErrorCategory::is_retryable`]).
    #[default]
    Retryable,
    /// Those, plus `transient_capacity`: for a model provider's overload, where there
    /// is no other size or location to fall back to and waiting is the only remedy.
    RetryableAndCapacity,
}

impl RetryOn {
    /// Whether a failure of `category` is retried.
    pub const fn retries(self, category: ErrorCategory) -> bool {
        match self {
            Self::Retryable => category.is_retryable(),
            Self::RetryableAndCapacity => {
                category.is_retryable() || matches!(category, ErrorCategory::TransientCapacity)
            }
        }
    }
}

impl Default for RetryPolicy {
    /// At most 5 attempts, 250 ms initial delay, 30 s maximum delay, 3 min budget,
    /// 20 % jitter, 30 s per attempt.
    fn default() -> Self {
        Self {
            initial_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(30),
            max_attempts: 5,
            budget: Duration::from_secs(180),
            jitter: 0.2,
            per_attempt_timeout: Some(Duration::from_secs(30)),
            retry_on: RetryOn::Retryable,
        }
    }
}

impl RetryPolicy {
    /// Provider capacity (SAM's defaults): 15 s initial, 120 s max, 10 attempts,
    /// 5 min budget. Used between full passes of the fallback plan.
    pub fn capacity() -> Self {
        Self {
            initial_delay: Duration::from_secs(15),
            max_delay: Duration::from_secs(120),
            max_attempts: 10,
            budget: Duration::from_secs(300),
            jitter: 0.2,
            per_attempt_timeout: None,
            retry_on: RetryOn::Retryable,
        }
    }

    /// Prompt retry in the VM agent (SAM's defaults): 2 retries after the first
    /// attempt, 15 s initial, 2 min max, within a 10 min budget. Model overloads
    /// (`transient_capacity`) are retried too.
    pub fn prompt() -> Self {
        Self {
            initial_delay: Duration::from_secs(15),
            max_delay: Duration::from_secs(120),
            max_attempts: 3,
            budget: Duration::from_secs(600),
            jitter: 0.2,
            per_attempt_timeout: None,
            retry_on: RetryOn::RetryableAndCapacity,
        }
    }

    /// Checks the values can work together.
    ///
    /// # Errors
    /// [`PolicyError`] naming the first field that cannot: a zero initial delay or
    /// budget, a maximum below the initial delay, zero attempts, jitter outside
    /// [0, 1] or NaN, a zero per-attempt timeout.
    pub fn validate(&self) -> Result<(), PolicyError> {
        let bad = |field, reason: &str| {
            Err(PolicyError {
                policy: "retry",
                field,
                reason: reason.to_owned(),
            })
        };
        if self.initial_delay.is_zero() {
            return bad("initial_delay", "must be greater than zero");
        }
        if self.max_delay < self.initial_delay {
            return bad("max_delay", "must not be below initial_delay");
        }
        if self.max_attempts == 0 {
            return bad("max_attempts", "must be at least 1");
        }
        if self.budget.is_zero() {
            return bad("budget", "must be greater than zero");
        }
        if !(0.0..=1.0).contains(&self.jitter) {
            return bad("jitter", "must be a number between 0 and 1");
        }
        if self.per_attempt_timeout.is_some_and(|t| t.is_zero()) {
            return bad("per_attempt_timeout", "must be greater than zero");
        }
        Ok(())
    }

    /// The backoff before the next attempt, or `None` to give up.
    ///
    /// `attempt` counts the attempts made so far (1 after the first failure);
    /// `elapsed` is the wall-clock time since the first attempt started; `hint` is the
    /// provider's `Retry-After`; `jitter` is a sample in [0, 1) supplied by the caller.
    ///
    /// Without a hint the delay is `initial · 2^(attempt-1)`, capped at `max_delay`,
    /// less up to `jitter` of itself, and never below `initial_delay`. A hint replaces
    /// that delay. Either way the answer is `None` when the attempts are used up or
    /// when waiting would reach the end of the budget.
    pub fn next_delay(
        &self,
        attempt: u32,
        elapsed: Duration,
        hint: Option<Duration>,
        jitter: f64,
    ) -> Option<Duration> {
        if attempt >= self.max_attempts {
            return None;
        }
        let delay = match hint {
            Some(hint) => hint,
            None => {
                let exponent = attempt.saturating_sub(1).min(32);
                let base = self
                    .initial_delay
                    .saturating_mul(1u32 << exponent.min(31))
                    .min(self.max_delay);
                let sample = if jitter.is_finite() {
                    jitter.clamp(0.0, 1.0)
                } else {
                    0.0
                };
                let shaved = base.mul_f64(1.0 - self.jitter.clamp(0.0, 1.0) * sample);
                shaved.clamp(self.initial_delay, self.max_delay)
            }
        };
        let remaining = self.budget.checked_sub(elapsed)?;
        (delay < remaining).then_some(delay)
    }
}

/// Why [`retry`] gave up.
#[derive(Debug, thiserror::Error)]
pub enum RetryError<E> {
    /// The last attempt failed with this error and no retry was allowed.
    #[error(transparent)]
    Failed(E),
    /// The last attempt did not finish within its timeout.
    #[error("gave up after {attempts} attempt(s): the last one did not finish within {timeout:?}")]
    TimedOut {
        /// Attempts made.
        attempts: u32,
        /// The timeout the last attempt had.
        timeout: Duration,
    },
}

impl<E> RetryError<E> {
    /// The error of the last attempt, if it returned one.
    pub fn into_inner(self) -> Option<E> {
        match self {
            Self::Failed(e) => Some(e),
            Self::TimedOut { .. } => None,
        }
    }
}

impl<E: Classify> Classify for RetryError<E> {
    fn category(&self) -> ErrorCategory {
        match self {
            Self::Failed(e) => e.category(),
            Self::TimedOut { .. } => ErrorCategory::Transient,
        }
    }
    fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Failed(e) => e.retry_after(),
            Self::TimedOut { .. } => None,
        }
    }
}

/// One retry about to happen, for [`retry_notify`]'s observer.
#[derive(Debug)]
pub struct RetryEvent<'a, E> {
    /// Attempts made so far.
    pub attempt: u32,
    /// How long the loop will wait before the next attempt.
    pub delay: Duration,
    /// The failure being retried; `None` when the attempt timed out.
    pub error: Option<&'a E>,
}

/// A jitter sample in [0, 1) from the standard library's per-process random keys,
/// for [`RetryPolicy::next_delay`] in a loop of the caller's own.
pub fn jitter_sample() -> f64 {
    let bits = RandomState::new().build_hasher().finish() >> 11;
    bits as f64 / (1u64 << 53) as f64
}

/// Runs `op` until it succeeds, fails with an error the policy does not retry
/// ([`RetryPolicy::retry_on`]), or the policy gives up.
///
/// # Errors
/// [`RetryError::Failed`] with the last error, or [`RetryError::TimedOut`] when the
/// last attempt ran out of time.
pub async fn retry<T, E, F, Fut>(policy: &RetryPolicy, op: F) -> Result<T, RetryError<E>>
where
    E: Classify,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    retry_notify(policy, op, |_| {}).await
}

/// [`retry`], calling `notify` before each wait (to log or emit a retry event).
///
/// # Errors
/// As [`retry`].
pub async fn retry_notify<T, E, F, Fut, N>(
    policy: &RetryPolicy,
    mut op: F,
    mut notify: N,
) -> Result<T, RetryError<E>>
where
    E: Classify,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    N: FnMut(&RetryEvent<'_, E>),
{
    let start = Instant::now();
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let remaining = policy.budget.saturating_sub(start.elapsed());
        let timeout = policy
            .per_attempt_timeout
            .map_or(remaining, |t| t.min(remaining));
        let outcome = tokio::time::timeout(timeout, op()).await;
        let (error, hint, retryable) = match outcome {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(e)) => {
                let hint = e.retry_after();
                let retryable = policy.retry_on.retries(e.category());
                (Some(e), hint, retryable)
            }
            Err(_elapsed) => (None, None, true),
        };
        let delay = if retryable {
            policy.next_delay(attempt, start.elapsed(), hint, jitter_sample())
        } else {
            None
        };
        let Some(delay) = delay else {
            return Err(match error {
                Some(e) => RetryError::Failed(e),
                None => RetryError::TimedOut {
                    attempts: attempt,
                    timeout,
                },
            });
        };
        notify(&RetryEvent {
            attempt,
            delay,
            error: error.as_ref(),
        });
        tracing::debug!(attempt, ?delay, "retrying after a retryable failure");
        tokio::time::sleep(delay).await;
    }
}

#[cfg(test)]
mod tests;
