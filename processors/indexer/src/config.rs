//! What an operator sets for the indexer: batching, write concurrency and the retry policy for
//! transient errors (the seed's `RetryPolicy`).

use std::time::Duration;

pub use dietstream_runtime::RetryPolicy;
use serde::{Deserialize, Serialize};

/// Settings of the indexer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IndexerConfig {
    /// Most records taken from the consumer in one batch. A batch is written, then its offsets
    /// are stored; larger batches mean fewer offset stores and more work redone after a crash.
    pub batch_size: usize,
    /// Most records whose CQL writes are in flight at once (each record is up to three
    /// writes, one per index table).
    pub max_in_flight: usize,
    /// How transient errors (CQL timeouts, an unreachable registry, a slow broker) are retried
    /// in place. A record is never skipped for a transient error.
    #[serde(default = "default_retry_policy")]
    pub retry: RetryPolicy,
}

/// A few hundred records per poll keep a batch well within one CQL request timeout at the
/// default concurrency, and a redo after a crash small.
const fn default_batch_size() -> usize {
    500
}

/// The scylla driver's `examples/parallel.rs` keeps a few hundred requests in flight per
/// session; 64 records (up to 192 writes) leave room for the other processors on a node.
const fn default_max_in_flight() -> usize {
    64
}

/// The seed's `RetryPolicy` default `retryDelay` (1 s) is for message queues; a CQL timeout or
/// a registry hiccup usually clears within a few hundred milliseconds.
const fn default_retry_delay() -> Duration {
    Duration::from_millis(200)
}

/// The seed's `backoffMultiplier`.
const fn default_retry_multiplier() -> f64 {
    2.0
}

/// The seed's `maxRetryDelay` is 30 s; 10 s keeps the worst case (below) under librdkafka's
/// `max.poll.interval.ms` default of 5 minutes, so the consumer keeps its partitions.
const fn default_retry_max_delay() -> Duration {
    Duration::from_secs(10)
}

/// The seed's `maxRetries` is 3 for message handlers; a database restart takes longer, so
/// the indexer keeps trying for about a minute (`RetryPolicy::total_wait`) before it stops.
const fn default_retry_max_retries() -> u32 {
    10
}

impl Default for IndexerConfig {
    fn default() -> Self {
        IndexerConfig {
            batch_size: default_batch_size(),
            max_in_flight: default_max_in_flight(),
            retry: default_retry_policy(),
        }
    }
}

/// The indexer's retry policy: the seed's shape, with shorter waits (see the constants above).
fn default_retry_policy() -> RetryPolicy {
    RetryPolicy {
        retry_delay: default_retry_delay(),
        backoff_multiplier: default_retry_multiplier(),
        max_retry_delay: default_retry_max_delay(),
        max_retries: default_retry_max_retries(),
    }
}

impl IndexerConfig {
    /// Every invalid setting, named; empty when the configuration can be used.
    /// `max_poll_interval` is the consumer's `max.poll.interval.ms`: while a batch retries the
    /// consumer does not poll, and must not be dropped from its group meanwhile.
    pub fn problems(&self, max_poll_interval: Duration) -> Vec<String> {
        let mut problems = Vec::new();
        if self.batch_size == 0 {
            problems.push("indexer.batch_size: must be at least 1".to_owned());
        }
        if self.max_in_flight == 0 {
            problems.push("indexer.max_in_flight: must be at least 1".to_owned());
        }
        let retry_problems = self.retry.problems();
        for (field, problem) in &retry_problems {
            problems.push(format!("indexer.retry.{field}: {problem}"));
        }
        if retry_problems.is_empty() && self.retry.total_wait() >= max_poll_interval {
            problems.push(format!(
                "indexer.retry: the retries of one record wait {:?} in total, not less than the \
                 consumer's max.poll.interval.ms ({:?}); the consumer would leave its group \
                 while retrying. Lower max_retries or max_retry_delay",
                self.retry.total_wait(),
                max_poll_interval
            ));
        }
        problems
    }
}
