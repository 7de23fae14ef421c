//! What an operator sets for the command processor (the `[commands]` section of the
//! dietstream config).

use std::time::Duration;

use dietstream_runtime::RetryPolicy;
use serde::{Deserialize, Serialize};

/// Settings of the command processor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CommandsConfig {
    /// Names this instance: its Kafka `transactional.id` is `<consumer group>.<instance_id>`.
    /// Every running instance needs its own; a restarted instance must reuse its old one, so
    /// that starting it aborts the transaction the previous run left open.
    pub instance_id: String,
    /// Most commands processed in one Kafka transaction before it is committed.
    pub max_commands_per_transaction: usize,
    /// Longest time a transaction stays open before it is committed, however few commands it
    /// holds: the floor of the command-to-reply latency under light load.
    #[serde(with = "humantime_serde")]
    pub commit_interval: Duration,
    /// An aggregate's snapshot is written each time its version passes a multiple of this.
    pub snapshot_every: u32,
    /// Kafka `transaction.timeout.ms`: an open transaction of a crashed instance is aborted by
    /// the broker after this long (a restarted instance aborts it at once).
    #[serde(with = "humantime_serde")]
    pub transaction_timeout: Duration,
    /// Timeout of one transactional call (init, send offsets, commit, abort).
    #[serde(with = "humantime_serde")]
    pub kafka_call_timeout: Duration,
    /// Restoring a partition fails when no record arrives for this long before its end.
    #[serde(with = "humantime_serde")]
    pub restore_stall_timeout: Duration,
    /// Retries of a transient error (schema registry unreachable) before the processor stops.
    #[serde(default = "default_retry_policy")]
    pub retry: RetryPolicy,
}

/// The seed's values: 1 s, doubling, capped at 30 s; 5 retries (about a minute) ride out a
/// registry restart.
fn default_retry_policy() -> RetryPolicy {
    RetryPolicy {
        retry_delay: Duration::from_secs(1),
        backoff_multiplier: 2.0,
        max_retry_delay: Duration::from_secs(30),
        max_retries: 5,
    }
}

/// 100 ms: a reply within about a tenth of a second at light load, while a busy processor
/// still puts hundreds of commands in each transaction.
const fn default_commit_interval() -> Duration {
    Duration::from_millis(100)
}

/// Kafka's default `transaction.timeout.ms`. librdkafka requires it to be at least
/// `socket.timeout.ms` (`kafka.request_timeout`, 60 s by default) minus 100 ms. A restarted
/// instance aborts its predecessor's open transaction at once; only a crashed instance that
/// never comes back leaves one open this long.
const fn default_transaction_timeout() -> Duration {
    Duration::from_secs(60)
}

impl Default for CommandsConfig {
    fn default() -> Self {
        CommandsConfig {
            instance_id: "0".to_owned(),
            max_commands_per_transaction: 1000,
            commit_interval: default_commit_interval(),
            snapshot_every: 50,
            transaction_timeout: default_transaction_timeout(),
            kafka_call_timeout: Duration::from_secs(30),
            restore_stall_timeout: Duration::from_secs(60),
            retry: default_retry_policy(),
        }
    }
}

impl CommandsConfig {
    /// Every invalid setting, as (dotted name below `commands.`, problem).
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut problems = Vec::new();
        if self.instance_id.is_empty()
            || !self
                .instance_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        {
            problems.push((
                "instance_id",
                format!(
                    "{:?} must be non-empty ASCII letters, digits, '.', '_' or '-'",
                    self.instance_id
                ),
            ));
        }
        if self.max_commands_per_transaction == 0 {
            problems.push((
                "max_commands_per_transaction",
                "must be at least 1".to_owned(),
            ));
        }
        if self.commit_interval.is_zero() {
            problems.push(("commit_interval", "must be more than 0".to_owned()));
        }
        if self.snapshot_every == 0 {
            problems.push(("snapshot_every", "must be at least 1".to_owned()));
        }
        if self.commit_interval >= self.transaction_timeout {
            problems.push((
                "commit_interval",
                format!(
                    "{:?} must be shorter than transaction_timeout ({:?}), or the broker aborts every transaction",
                    self.commit_interval, self.transaction_timeout
                ),
            ));
        }
        for (field, problem) in self.retry.problems() {
            let setting = match field {
                "backoff_multiplier" => "retry.backoff_multiplier",
                _ => "retry.max_retry_delay",
            };
            problems.push((setting, problem));
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_retry_delays_grow_to_the_cap() {
        let config = CommandsConfig::default();
        assert!(config.problems().is_empty(), "{:?}", config.problems());
        let retry = &config.retry;
        assert_eq!(retry.delay(1), Duration::from_secs(1));
        assert_eq!(retry.delay(3), Duration::from_secs(4));
        assert_eq!(retry.delay(10), Duration::from_secs(30));
    }

    #[test]
    fn invalid_settings_are_all_named() {
        let config = CommandsConfig {
            instance_id: "a b".to_owned(),
            max_commands_per_transaction: 0,
            snapshot_every: 0,
            commit_interval: Duration::from_secs(60),
            ..CommandsConfig::default()
        };
        let names: Vec<&str> = config.problems().iter().map(|(n, _)| *n).collect();
        assert_eq!(
            names,
            [
                "instance_id",
                "max_commands_per_transaction",
                "snapshot_every",
                "commit_interval"
            ]
        );
    }
}
