//! The seed's `RetryPolicy` (`retryDelay`, `backoffMultiplier`, `maxRetryDelay`,
//! `maxRetries`) for transient errors, which are retried in place and never skipped (DESIGN
//! decision 6). Each processor chooses its own defaults.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How a transient error is retried: wait `retry_delay`, then that times `backoff_multiplier`
/// after each retry, never more than `max_retry_delay`, for at most `max_retries` retries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// Wait before the first retry (the seed's `retryDelay`).
    #[serde(with = "humantime_serde")]
    pub retry_delay: Duration,
    /// Factor applied to the wait after each retry (`backoffMultiplier`); at least 1.
    pub backoff_multiplier: f64,
    /// Longest wait between two attempts (`maxRetryDelay`).
    #[serde(with = "humantime_serde")]
    pub max_retry_delay: Duration,
    /// Retries after the first attempt before giving up (`maxRetries`).
    pub max_retries: u32,
}

impl RetryPolicy {
    /// The wait before retry number `retry` (1-based): the seed's
    /// `min(retryDelay * backoffMultiplier^(retry - 1), maxRetryDelay)`.
    pub fn delay(&self, retry: u32) -> Duration {
        let exponent = i32::try_from(retry.saturating_sub(1).min(64)).unwrap_or(64);
        let seconds = self.retry_delay.as_secs_f64() * self.backoff_multiplier.powi(exponent);
        Duration::from_secs_f64(seconds.min(self.max_retry_delay.as_secs_f64()).max(0.0))
    }

    /// The sum of all waits when every retry is used: how long one record can hold up its
    /// partition, besides the attempts themselves.
    pub fn total_wait(&self) -> Duration {
        (1..=self.max_retries).map(|retry| self.delay(retry)).sum()
    }

    /// Every invalid field, as (field name, problem).
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut problems = Vec::new();
        if !(self.backoff_multiplier.is_finite() && self.backoff_multiplier >= 1.0) {
            problems.push((
                "backoff_multiplier",
                format!(
                    "{} must be a finite number of at least 1",
                    self.backoff_multiplier
                ),
            ));
        }
        if self.max_retry_delay < self.retry_delay {
            problems.push((
                "max_retry_delay",
                format!(
                    "{:?} must not be shorter than retry_delay ({:?})",
                    self.max_retry_delay, self.retry_delay
                ),
            ));
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            retry_delay: Duration::from_millis(100),
            backoff_multiplier: 2.0,
            max_retry_delay: Duration::from_millis(500),
            max_retries: 5,
        }
    }

    #[test]
    fn delays_grow_by_the_multiplier_up_to_the_cap() {
        let waits: Vec<u128> = (1..=5).map(|r| policy().delay(r).as_millis()).collect();
        assert_eq!(waits, [100, 200, 400, 500, 500]);
        assert_eq!(policy().total_wait(), Duration::from_millis(1700));
        assert_eq!(policy().delay(u32::MAX), Duration::from_millis(500));
    }

    #[test]
    fn invalid_fields_are_named() {
        let bad = RetryPolicy {
            backoff_multiplier: 0.5,
            max_retry_delay: Duration::from_millis(10),
            ..policy()
        };
        let names: Vec<&str> = bad.problems().iter().map(|(n, _)| *n).collect();
        assert_eq!(names, ["backoff_multiplier", "max_retry_delay"]);
        assert!(policy().problems().is_empty());
    }

    #[test]
    fn reads_the_seed_names_with_human_durations() {
        let policy: RetryPolicy = serde_json::from_str(
            r#"{"retry_delay": "1s", "backoff_multiplier": 2.0, "max_retry_delay": "30s", "max_retries": 3}"#,
        )
        .expect("parses");
        assert_eq!(policy.delay(2), Duration::from_secs(2));
        assert!(serde_json::from_str::<RetryPolicy>(r#"{"delay": "1s"}"#).is_err());
    }
}
