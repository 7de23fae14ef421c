//! The indexer: keeps the CQL index tables of the event store from the event and snapshot
//! topics (the seed's `getEventsByAggregate`, `getEventsByType`, `getEventsByUser`).
//!
//! It reads every event topic (and, optionally, every snapshot topic) in its own consumer
//! group and upserts each record into the tables of [`tables`]: events by aggregate and
//! version, by type and UTC day, by user and UTC day, and snapshots by aggregate and version.
//! Each row keeps the Kafka value byte for byte, so readers decode it with the codec
//! (`dietstream::store::EventStore` does).
//!
//! **Guarantee** (DESIGN decision 4): at-least-once delivery, exactly-once effect. Offsets are
//! stored (`enable.auto.offset.store=false`) only after CQL acknowledged every write of the
//! record and of every record before it in the batch; librdkafka commits the stored offsets
//! (auto-commit, on revoke and on shutdown). Every write is an upsert or delete keyed by the
//! identity of the event or snapshot, so replaying any prefix of the log, any number of times,
//! leaves the same rows. Condition: one record per key with a given value, which the single
//! writer guarantees (DESIGN decision 3); a tombstone (erasure) deletes the rows of its key.
//!
//! **Errors** (DESIGN decision 6): a record that cannot be read (bad magic byte, unknown schema
//! id, not an event, a key that does not match its header) is copied to the dead-letter topic
//! with the headers of [`dead_letter`] (shared with the other processors) and the indexer moves on. Transient errors (CQL, the
//! registry, the broker) are retried in place under [`RetryPolicy`]; the batch waits, nothing
//! is skipped, and when the retries run out [`run`] returns [`IndexerError::RetriesExhausted`]
//! without storing the record's offset, so a restart resumes at that record.

mod config;
mod processor;
pub mod tables;

#[cfg(test)]
mod tests;

pub use config::{IndexerConfig, RetryPolicy};
pub use dietstream_runtime::dead_letter;
pub use processor::{run, Source, SourceKind, Topics, PROCESSOR};
pub use tables::migrate;

use rdkafka::error::KafkaError;

/// Why the indexer could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum IndexerError {
    /// A setting is invalid; every problem is listed. Permanent: the settings must change.
    #[error("invalid indexer configuration: {}", problems.join("; "))]
    Config {
        /// One line per invalid setting, naming it.
        problems: Vec<String>,
    },
    /// The topology lacks what the indexer needs. Permanent: the topology file must change.
    #[error("the topology does not fit the indexer: {problem}")]
    Topology {
        /// What is missing or wrong.
        problem: String,
    },
    /// A Kafka client could not be created or could not subscribe. Permanent: the Kafka
    /// settings must change.
    #[error("cannot set up the indexer's Kafka {role}: {source}")]
    Kafka {
        /// `consumer`, `producer` or `subscription`.
        role: &'static str,
        /// What librdkafka said.
        source: KafkaError,
    },
    /// A migration statement failed. Retryable when the cluster was unreachable.
    #[error("migration statement failed: {statement}: {source}")]
    Migration {
        /// The CQL statement.
        statement: String,
        /// What the driver said.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A statement could not be prepared at start (the tables are missing: run [`migrate`]
    /// first, or the cluster is unreachable).
    #[error("cannot prepare {statement}: {source}")]
    Prepare {
        /// The CQL statement.
        statement: String,
        /// What the driver said.
        source: Box<scylla::errors::PrepareError>,
    },
    /// A record failed with transient errors more often than the retry policy allows. Its
    /// offset was not stored: a restart resumes at it. Retryable.
    #[error(
        "gave up on {topic}[{partition}]@{offset} after {retries} retries; it will be read \
         again on restart: {last_error}"
    )]
    RetriesExhausted {
        /// Topic of the record.
        topic: String,
        /// Its partition.
        partition: i32,
        /// Its offset.
        offset: i64,
        /// Retries made.
        retries: u32,
        /// The last transient error.
        last_error: String,
    },
    /// The final commit of stored offsets failed. Retryable: the records after the last
    /// commit are read again, and writing them again changes nothing.
    #[error("cannot commit the stored offsets: {source}")]
    Commit {
        /// What librdkafka said.
        source: KafkaError,
    },
}

impl IndexerError {
    /// True when starting the indexer again later, with the same settings, may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            IndexerError::Migration { .. }
                | IndexerError::Prepare { .. }
                | IndexerError::RetriesExhausted { .. }
                | IndexerError::Commit { .. }
        )
    }
}
