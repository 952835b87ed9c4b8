use super::*;
use proptest::prelude::*;
use std::cell::Cell;

fn policy() -> impl Strategy<Value = RetryPolicy> {
    (
        1u64..5_000,
        1u64..100,
        1u32..20,
        1u64..3_600_000,
        0.0f64..=1.0,
    )
        .prop_map(
            |(initial_ms, factor, attempts, budget_ms, jitter)| RetryPolicy {
                initial_delay: Duration::from_millis(initial_ms),
                max_delay: Duration::from_millis(initial_ms * factor),
                max_attempts: attempts,
                budget: Duration::from_millis(budget_ms),
                jitter,
                per_attempt_timeout: None,
                retry_on: RetryOn::Retryable,
            },
        )
}

proptest! {
    #[test]
    fn delays_within_bounds_and_waiting_within_budget(
        p in policy(),
        samples in proptest::collection::vec(0.0f64..1.0, 20),
        attempt_ms in proptest::collection::vec(0u64..10_000, 20),
    ) {
        prop_assert!(p.validate().is_ok());
        let mut elapsed = Duration::ZERO;
        let mut waited = Duration::ZERO;
        let mut attempt = 0;
        for (sample, work) in samples.iter().zip(&attempt_ms) {
            attempt += 1;
            elapsed += Duration::from_millis(*work);
            let Some(delay) = p.next_delay(attempt, elapsed, None, *sample) else { break };
            prop_assert!(delay >= p.initial_delay && delay <= p.max_delay, "{:?} outside bounds", delay);
            elapsed += delay;
            waited += delay;
            prop_assert!(elapsed < p.budget, "waiting past the budget");
        }
        prop_assert!(waited < p.budget);
        prop_assert!(attempt <= p.max_attempts);
    }

    #[test]
    fn a_hint_is_used_only_when_it_fits(p in policy(), hint_ms in 0u64..7_200_000, elapsed_ms in 0u64..3_600_000) {
        let hint = Duration::from_millis(hint_ms);
        let elapsed = Duration::from_millis(elapsed_ms);
        let got = p.next_delay(1, elapsed, Some(hint), 0.5);
        if p.max_attempts > 1 && elapsed + hint < p.budget {
            prop_assert_eq!(got, Some(hint));
        } else {
            prop_assert_eq!(got, None);
        }
    }

    #[test]
    fn odd_jitter_samples_never_escape_bounds(p in policy(), sample in prop_oneof![Just(f64::NAN), Just(-3.0), Just(7.0), Just(f64::INFINITY)]) {
        if let Some(d) = p.next_delay(1, Duration::ZERO, None, sample) {
            prop_assert!(d >= p.initial_delay && d <= p.max_delay);
        }
    }
}

#[test]
fn validate_names_the_bad_field() {
    let check = |f: fn(&mut RetryPolicy), field: &str| {
        let mut p = RetryPolicy::default();
        f(&mut p);
        assert_eq!(p.validate().unwrap_err().field, field);
    };
    check(|p| p.initial_delay = Duration::ZERO, "initial_delay");
    check(|p| p.max_delay = Duration::from_millis(1), "max_delay");
    check(|p| p.max_attempts = 0, "max_attempts");
    check(|p| p.budget = Duration::ZERO, "budget");
    check(|p| p.jitter = f64::NAN, "jitter");
    check(|p| p.jitter = 1.5, "jitter");
    check(
        |p| p.per_attempt_timeout = Some(Duration::ZERO),
        "per_attempt_timeout",
    );
    for p in [
        RetryPolicy::default(),
        RetryPolicy::capacity(),
        RetryPolicy::prompt(),
    ] {
        p.validate().unwrap();
    }
}

#[test]
fn defaults_are_sams() {
    let c = RetryPolicy::capacity();
    assert_eq!(
        (c.initial_delay, c.max_delay, c.max_attempts, c.budget),
        (
            Duration::from_secs(15),
            Duration::from_secs(120),
            10,
            Duration::from_secs(300)
        )
    );
    let p = RetryPolicy::prompt();
    assert_eq!(
        (p.initial_delay, p.max_delay, p.max_attempts),
        (Duration::from_secs(15), Duration::from_secs(120), 3)
    );
    assert!(p.retry_on.retries(ErrorCategory::TransientCapacity));
    assert!(!c.retry_on.retries(ErrorCategory::TransientCapacity));
}

fn quick(attempts: u32) -> RetryPolicy {
    RetryPolicy {
        initial_delay: Duration::from_secs(1),
        max_delay: Duration::from_secs(8),
        max_attempts: attempts,
        budget: Duration::from_secs(60),
        jitter: 0.0,
        per_attempt_timeout: Some(Duration::from_secs(5)),
        retry_on: RetryOn::Retryable,
    }
}

/// A scripted error for the loop tests.
#[derive(Debug, PartialEq)]
struct Failure(ErrorCategory, Option<Duration>);

impl Classify for Failure {
    fn category(&self) -> ErrorCategory {
        self.0
    }
    fn retry_after(&self) -> Option<Duration> {
        self.1
    }
}

#[tokio::test(start_paused = true)]
async fn retries_retryable_errors_with_backoff_then_succeeds() {
    let calls = Cell::new(0u32);
    let start = Instant::now();
    let mut delays = Vec::new();
    let out = retry_notify(
        &quick(5),
        || {
            calls.set(calls.get() + 1);
            let n = calls.get();
            async move {
                if n < 4 {
                    Err(Failure(ErrorCategory::Transient, None))
                } else {
                    Ok(n)
                }
            }
        },
        |e| delays.push(e.delay),
    )
    .await;
    assert_eq!(out.unwrap(), 4);
    assert_eq!(delays, [1, 2, 4].map(Duration::from_secs));
    assert_eq!(start.elapsed(), Duration::from_secs(7));
}

#[tokio::test(start_paused = true)]
async fn fails_fast_on_errors_that_are_not_retryable() {
    for category in [
        ErrorCategory::QuotaExceeded,
        ErrorCategory::AuthError,
        ErrorCategory::InvalidConfig,
        ErrorCategory::TransientCapacity,
    ] {
        let calls = Cell::new(0u32);
        let start = Instant::now();
        let out: Result<(), _> = retry(&quick(5), || {
            calls.set(calls.get() + 1);
            async move { Err(Failure(category, None)) }
        })
        .await;
        assert_eq!(out.unwrap_err().into_inner(), Some(Failure(category, None)));
        assert_eq!(calls.get(), 1, "{category}");
        assert_eq!(start.elapsed(), Duration::ZERO);
    }
}

#[tokio::test(start_paused = true)]
async fn honours_retry_after_that_fits_and_gives_up_on_one_that_does_not() {
    let calls = Cell::new(0u32);
    let start = Instant::now();
    let out = retry(&quick(5), || {
        calls.set(calls.get() + 1);
        let n = calls.get();
        async move {
            if n == 1 {
                Err(Failure(
                    ErrorCategory::RateLimited,
                    Some(Duration::from_secs(30)),
                ))
            } else {
                Ok(())
            }
        }
    })
    .await;
    assert!(out.is_ok());
    assert_eq!(start.elapsed(), Duration::from_secs(30));

    let calls = Cell::new(0u32);
    let out: Result<(), _> = retry(&quick(5), || {
        calls.set(calls.get() + 1);
        async move {
            Err(Failure(
                ErrorCategory::RateLimited,
                Some(Duration::from_secs(600)),
            ))
        }
    })
    .await;
    assert!(matches!(out, Err(RetryError::Failed(_))));
    assert_eq!(
        calls.get(),
        1,
        "a Retry-After past the budget gives up at once"
    );
}

#[tokio::test(start_paused = true)]
async fn attempts_time_out_and_the_budget_is_wall_clock() {
    let calls = Cell::new(0u32);
    let start = Instant::now();
    let out: Result<(), RetryError<Failure>> = retry(&quick(10), || {
        calls.set(calls.get() + 1);
        async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok(())
        }
    })
    .await;
    assert!(matches!(out, Err(RetryError::TimedOut { .. })), "{out:?}");
    assert_eq!(out.unwrap_err().category(), ErrorCategory::Transient);
    // 5 s per attempt plus 1, 2, 4, 8, 8 … s of waiting; the 60 s budget ends it.
    assert!(
        start.elapsed() <= Duration::from_secs(60),
        "{:?}",
        start.elapsed()
    );
    assert!(
        calls.get() >= 4 && calls.get() < 10,
        "{} calls",
        calls.get()
    );
}

#[tokio::test(start_paused = true)]
async fn stops_after_max_attempts() {
    let calls = Cell::new(0u32);
    let out: Result<(), _> = retry(&quick(3), || {
        calls.set(calls.get() + 1);
        async { Err(Failure(ErrorCategory::Conflict, None)) }
    })
    .await;
    assert!(out.is_err());
    assert_eq!(calls.get(), 3);
}
