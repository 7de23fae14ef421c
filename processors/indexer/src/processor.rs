//! The consume loop of the indexer: take a batch, write it to CQL with bounded concurrency,
//! dead-letter what cannot be read, store the offsets of what is done.
//!
//! Offsets are stored only after every CQL write of the record and of the records before it in
//! its batch were acknowledged (or its dead letter was acknowledged by Kafka); auto-commit then
//! commits them. Records of a batch are written concurrently, except that a tombstone waits
//! for everything before it and everything after it waits for the tombstone: an erasure must
//! see the rows it deletes and must not be overtaken by them.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dietstream_schemas::codec::{Codec, CodecError};
use dietstream_schemas::registry::SchemaRegistry;
use dietstream_schemas::types::{AggregateSnapshot, AggregateType, EventHeader};
use dietstream_topology::{Desired, Kind};
use futures::{FutureExt, StreamExt, TryStreamExt};
use rdkafka::consumer::StreamConsumer;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, ClientContext};
use scylla::client::session::Session;
use scylla::value::CqlTimestamp;
use tracing::{debug, info, warn};
use uuid::Uuid;

use crate::tables::{aggregate_type_name, cql_date, cql_timestamp, Statements};
use crate::{IndexerConfig, IndexerError};
use dietstream_runtime::consume::refetch_promptly;
use dietstream_runtime::dead_letter::{dead_letter_headers, Rejection};
use dietstream_schemas::headers::DeadLetter;

/// The processor name in dead-letter headers and logs (topology: `processor = "indexer"`).
pub const PROCESSOR: &str = "indexer";

/// librdkafka's default `max.poll.interval.ms`.
const DEFAULT_MAX_POLL_INTERVAL: Duration = Duration::from_secs(300);

/// What a topic holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    /// Events, key `<aggregate id>/<version>`: indexed into the three event tables.
    Events,
    /// Snapshots, key = aggregate id: indexed into the snapshot table.
    Snapshots,
}

/// One topic the indexer reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// The topic's full name, prefix included.
    pub topic: String,
    /// The aggregate type whose events or snapshots it holds (topology: `aggregate`). A
    /// tombstone carries no value, so this is how its rows are found.
    pub aggregate_type: AggregateType,
    /// Events or snapshots.
    pub kind: SourceKind,
}

/// The indexer's place in the topology (`[[consumers]] processor = "indexer"`), names
/// prefixed as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    /// Its consumer group (`dietstream.indexer`).
    pub group_id: String,
    /// The topics it reads.
    pub sources: Vec<Source>,
    /// Its dead-letter topic (`diet.dlq.indexer`).
    pub dead_letter: String,
}

impl Topics {
    /// The indexer's topics as the resolved topology names them: every topic its consumer
    /// group reads must be an event or snapshot topic with an aggregate type.
    pub fn from_desired(desired: &Desired) -> Result<Topics, IndexerError> {
        let mismatch = |problem: String| IndexerError::Topology { problem };
        let consumer = desired
            .consumers
            .iter()
            .find(|c| c.processor == PROCESSOR)
            .ok_or_else(|| mismatch(format!("no consumer for processor {PROCESSOR:?}")))?;
        let sources = consumer
            .reads
            .iter()
            .map(|name| {
                let topic = desired
                    .topics
                    .iter()
                    .find(|t| &t.name == name)
                    .ok_or_else(|| mismatch(format!("{name} is read but not declared")))?;
                let kind = match topic.kind {
                    Kind::Event => SourceKind::Events,
                    Kind::Snapshot => SourceKind::Snapshots,
                    other => {
                        return Err(mismatch(format!(
                            "{name} is a {} topic; the indexer reads event and snapshot topics",
                            other.name()
                        )))
                    }
                };
                let aggregate_type = match topic.aggregate.as_deref() {
                    Some("user") => AggregateType::User,
                    Some("social") => AggregateType::Social,
                    Some("ai") => AggregateType::Ai,
                    Some("system") => AggregateType::System,
                    other => {
                        return Err(mismatch(format!(
                            "{name} has aggregate {other:?}; expected user, social, ai or system"
                        )))
                    }
                };
                Ok(Source {
                    topic: name.clone(),
                    aggregate_type,
                    kind,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Topics {
            group_id: consumer.group.clone(),
            sources,
            dead_letter: consumer.dead_letter.clone(),
        })
    }
}

/// Runs the indexer until `shutdown` resolves or a record exhausts its retries.
///
/// `kafka` holds the common client properties (brokers, security, client id); the indexer adds
/// its consumer settings (group, `enable.auto.offset.store=false`, `auto.offset.reset=earliest`,
/// `isolation.level=read_committed`, so aborted appends of the command processor are never
/// indexed) and its dead-letter producer's (`acks=all`, idempotence). `session` must reach the
/// tables that [`crate::migrate`] created in `keyspace`. When `shutdown` resolves, the batch in
/// hand is finished, its offsets stored and committed synchronously, and `run` returns `Ok`.
pub async fn run<R: SchemaRegistry>(
    kafka: &ClientConfig,
    topics: &Topics,
    session: Arc<Session>,
    keyspace: &str,
    codec: Arc<Codec<R>>,
    config: &IndexerConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), IndexerError> {
    let max_poll_interval = kafka
        .get("max.poll.interval.ms")
        .and_then(|ms| ms.parse().ok())
        .map(Duration::from_millis)
        .unwrap_or(DEFAULT_MAX_POLL_INTERVAL);
    let mut problems = config.problems(max_poll_interval);
    if topics.sources.is_empty() {
        problems.push("indexer: no topic to read".to_owned());
    }
    if !problems.is_empty() {
        return Err(IndexerError::Config { problems });
    }

    let statements = Statements::prepare(&session, keyspace).await?;
    let consumer: StreamConsumer<RebalanceLog> = refetch_promptly(&mut kafka.clone())
        .set("group.id", &topics.group_id)
        .set("enable.auto.commit", "true")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .create_with_context(RebalanceLog)
        .map_err(|source| IndexerError::Kafka {
            role: "consumer",
            source,
        })?;
    let producer: FutureProducer = kafka
        .clone()
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .create()
        .map_err(|source| IndexerError::Kafka {
            role: "producer",
            source,
        })?;
    let names: Vec<&str> = topics.sources.iter().map(|s| s.topic.as_str()).collect();
    consumer
        .subscribe(&names)
        .map_err(|source| IndexerError::Kafka {
            role: "subscription",
            source,
        })?;
    info!(group = %topics.group_id, topics = ?names, %keyspace, "Indexer started.");

    let indexer = Indexer {
        session,
        statements,
        codec,
        sources: topics
            .sources
            .iter()
            .map(|s| (s.topic.clone(), s.clone()))
            .collect(),
        dead_letter_topic: topics.dead_letter.clone(),
        producer,
        config: config.clone(),
    };

    let mut shutdown = std::pin::pin!(shutdown);
    let outcome = loop {
        let first = tokio::select! {
            biased;
            () = &mut shutdown => break Ok(()),
            message = consumer.recv() => message,
            () = tokio::time::sleep(IDLE_POSITION_STORE) => {
                store_positions(&consumer);
                continue;
            }
        };
        let mut batch = Vec::with_capacity(config.batch_size);
        match first {
            Ok(message) => batch.push(message.detach()),
            Err(error) => {
                // librdkafka reports broker and transport trouble here and recovers by itself.
                warn!(%error, "The consumer reported an error; polling again.");
                continue;
            }
        }
        // Take what has already arrived, without waiting for more.
        while batch.len() < config.batch_size {
            match consumer.recv().now_or_never() {
                Some(Ok(message)) => batch.push(message.detach()),
                Some(Err(error)) => {
                    warn!(%error, "The consumer reported an error; polling again.");
                    break;
                }
                None => break,
            }
        }
        if let Err(error) = indexer.write_batch(&consumer, &batch).await {
            break Err(error);
        }
        store_positions(&consumer);
    };

    match consumer.commit_consumer_state(CommitMode::Sync) {
        Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
        Err(source) => {
            if outcome.is_ok() {
                return Err(IndexerError::Commit { source });
            }
            warn!(error = %source, "Committing the stored offsets failed while stopping.");
        }
    }
    match &outcome {
        Ok(()) => info!(group = %topics.group_id, "Indexer stopped; offsets committed."),
        Err(error) => {
            warn!(%error, "Indexer stopped on an error; offsets of finished records committed.")
        }
    }
    outcome
}

/// How long the consumer waits for records before it stores its positions anyway.
const IDLE_POSITION_STORE: Duration = Duration::from_secs(1);

/// Stores each assigned partition's position as its offset to commit. Called only between
/// batches, when every record delivered so far is indexed: the position is then the last
/// delivered record + 1, or past the transaction markers that follow it, which a
/// `read_committed` consumer skips without delivering. Without this the committed offset
/// stays on the commit marker after the command processor's last transaction, and the group
/// shows a lag of 1 on every idle partition (librdkafka issue #2539).
fn store_positions(consumer: &StreamConsumer<RebalanceLog>) {
    let Ok(positions) = consumer.position() else {
        return;
    };
    for element in positions.elements() {
        if let rdkafka::Offset::Offset(offset) = element.offset() {
            // store_offset stores offset + 1: the position is already the next to read.
            if let Err(error) =
                consumer.store_offset(element.topic(), element.partition(), offset - 1)
            {
                debug!(topic = element.topic(), partition = element.partition(), %error, "Storing a position failed.");
            }
        }
    }
}

/// Logs rebalances and commits the stored offsets before partitions are taken away.
struct RebalanceLog;

impl ClientContext for RebalanceLog {}

impl ConsumerContext for RebalanceLog {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(partitions) = rebalance {
            // Rebalances run inside a poll, and a batch is finished before the next poll, so
            // what is stored here is everything done on these partitions.
            match consumer.commit_consumer_state(CommitMode::Sync) {
                Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
                Err(error) => {
                    warn!(%error, "Committing offsets before a revoke failed; the next owner re-indexes from the last commit.")
                }
            }
            info!(partitions = partitions.count(), "Partitions revoked.");
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(partitions) = rebalance {
            info!(partitions = partitions.count(), "Partitions assigned.");
        }
    }
}

/// Why one attempt at a record failed.
enum Failure {
    /// The record itself is bad: dead-letter it.
    Reject(Rejection),
    /// Something outside the record failed: try again.
    Transient(String),
}

impl Failure {
    fn codec(error: CodecError) -> Failure {
        if error.is_retryable() {
            Failure::Transient(error.to_string())
        } else {
            Failure::Reject(Rejection::from_codec(&error))
        }
    }

    fn cql(error: impl std::fmt::Display) -> Failure {
        // Every CQL failure is retried in place: even a permanent one (a dropped table) is
        // not the record's fault, so the record must not be dead-lettered or skipped.
        Failure::Transient(error.to_string())
    }

    fn reject(class: &'static str, message: String) -> Failure {
        Failure::Reject(Rejection { class, message })
    }
}

struct Indexer<R> {
    session: Arc<Session>,
    statements: Statements,
    codec: Arc<Codec<R>>,
    sources: HashMap<String, Source>,
    dead_letter_topic: String,
    producer: FutureProducer,
    config: IndexerConfig,
}

impl<R: SchemaRegistry> Indexer<R> {
    /// Writes a batch run by run (see the module docs) and stores the offsets of each run once
    /// it is done.
    async fn write_batch(
        &self,
        consumer: &StreamConsumer<RebalanceLog>,
        batch: &[OwnedMessage],
    ) -> Result<(), IndexerError> {
        let mut start = 0;
        while start < batch.len() {
            let end = if batch[start].payload().is_none() {
                start + 1
            } else {
                batch[start..]
                    .iter()
                    .position(|m| m.payload().is_none())
                    .map_or(batch.len(), |p| start + p)
            };
            let run = &batch[start..end];
            // Collected first: a stream that holds the mapping closure would not be `Send`
            // (a higher-ranked lifetime the compiler cannot prove), and callers spawn `run`.
            let writes: Vec<_> = run.iter().map(|message| self.index(message)).collect();
            futures::stream::iter(writes)
                .buffer_unordered(self.config.max_in_flight)
                .try_collect::<()>()
                .await?;
            let mut last: BTreeMap<(&str, i32), i64> = BTreeMap::new();
            for message in run {
                let offset = last
                    .entry((message.topic(), message.partition()))
                    .or_insert(message.offset());
                *offset = (*offset).max(message.offset());
            }
            for ((topic, partition), offset) in last {
                // Stores offset + 1, the next record to read. A partition revoked meanwhile
                // refuses the store; its next owner writes the same rows again.
                if let Err(error) = consumer.store_offset(topic, partition, offset) {
                    debug!(%topic, partition, offset, %error, "Storing an offset failed; the record will be indexed again.");
                }
            }
            start = end;
        }
        Ok(())
    }

    /// Indexes or dead-letters one record, retrying transient failures in place.
    async fn index(&self, message: &OwnedMessage) -> Result<(), IndexerError> {
        let policy = &self.config.retry;
        let mut retries = 0;
        loop {
            let result = match self.attempt(message).await {
                Ok(()) => Ok(()),
                Err(Failure::Reject(rejection)) => {
                    self.dead_letter(message, &rejection, retries).await
                }
                Err(Failure::Transient(error)) => Err(error),
            };
            let error = match result {
                Ok(()) => return Ok(()),
                Err(error) => error,
            };
            if retries >= policy.max_retries {
                return Err(IndexerError::RetriesExhausted {
                    topic: message.topic().to_owned(),
                    partition: message.partition(),
                    offset: message.offset(),
                    retries,
                    last_error: error,
                });
            }
            retries += 1;
            let wait = policy.delay(retries);
            warn!(
                topic = message.topic(),
                partition = message.partition(),
                offset = message.offset(),
                retry = retries,
                ?wait,
                %error,
                "Indexing a record failed with a transient error; retrying it in place."
            );
            tokio::time::sleep(wait).await;
        }
    }

    async fn attempt(&self, message: &OwnedMessage) -> Result<(), Failure> {
        let Some(source) = self.sources.get(message.topic()) else {
            return Err(Failure::reject(
                "unexpected_topic",
                format!("topic {} is not one the indexer reads", message.topic()),
            ));
        };
        let key = match message.key().map(std::str::from_utf8) {
            Some(Ok(key)) => key,
            Some(Err(_)) => {
                return Err(Failure::reject("bad_key", "key is not UTF-8".to_owned()));
            }
            None => return Err(Failure::reject("bad_key", "record has no key".to_owned())),
        };
        match (source.kind, message.payload()) {
            (SourceKind::Events, Some(value)) => {
                self.index_event(source, message, key, value).await
            }
            (SourceKind::Events, None) => self.erase_event(source, key).await,
            (SourceKind::Snapshots, Some(value)) => {
                self.index_snapshot(source, message, key, value).await
            }
            (SourceKind::Snapshots, None) => self.erase_snapshots(source, key).await,
        }
    }

    async fn index_event(
        &self,
        source: &Source,
        message: &OwnedMessage,
        key: &str,
        value: &[u8],
    ) -> Result<(), Failure> {
        let header: EventHeader = self
            .codec
            .decode_event_header(value)
            .await
            .map_err(Failure::codec)?;
        check_event_key(source, key, &header)?;
        let aggregate_type = aggregate_type_name(header.aggregate_type);
        let timestamp = cql_timestamp(header.timestamp);
        let day = cql_date(crate::tables::day_of_micros(header.timestamp));
        let s = &self.statements;
        let by_aggregate = self.session.execute_unpaged(
            &s.insert_by_aggregate,
            (
                aggregate_type,
                header.aggregate_id.as_str(),
                header.version,
                header.event_id,
                header.event_type.as_str(),
                timestamp,
                header.user_id.as_deref(),
                header.correlation_id,
                header.causation_id,
                message.topic(),
                message.partition(),
                message.offset(),
                value,
            ),
        );
        let by_type = self.session.execute_unpaged(
            &s.insert_by_type,
            (
                header.event_type.as_str(),
                day,
                timestamp,
                header.event_id,
                aggregate_type,
                header.aggregate_id.as_str(),
                header.version,
                value,
            ),
        );
        let by_user = async {
            match header.user_id.as_deref() {
                Some(user_id) => self
                    .session
                    .execute_unpaged(
                        &s.insert_by_user,
                        (
                            user_id,
                            day,
                            timestamp,
                            header.event_id,
                            header.event_type.as_str(),
                            aggregate_type,
                            header.aggregate_id.as_str(),
                            header.version,
                            value,
                        ),
                    )
                    .await
                    .map(drop),
                None => Ok(()),
            }
        };
        futures::try_join!(
            by_aggregate.map(|r| r.map(drop).map_err(Failure::cql)),
            by_type.map(|r| r.map(drop).map_err(Failure::cql)),
            by_user.map(|r| r.map_err(Failure::cql)),
        )?;
        Ok(())
    }

    /// Deletes the rows of the event a tombstone erases. The by-aggregate row goes last: it is
    /// what finds the other two, so a retry after a partial erasure finds them again.
    async fn erase_event(&self, source: &Source, key: &str) -> Result<(), Failure> {
        let (aggregate_id, version) = split_event_key(key).ok_or_else(|| {
            Failure::reject(
                "bad_key",
                format!("tombstone key {key:?} is not <aggregate id>/<version>"),
            )
        })?;
        let aggregate_type = aggregate_type_name(source.aggregate_type);
        let s = &self.statements;
        let row = self
            .session
            .execute_unpaged(
                &s.select_for_erasure,
                (aggregate_type, aggregate_id, version),
            )
            .await
            .map_err(Failure::cql)?
            .into_rows_result()
            .map_err(Failure::cql)?
            .maybe_first_row::<(Uuid, String, CqlTimestamp, Option<String>)>()
            .map_err(Failure::cql)?;
        let Some((event_id, event_type, timestamp, user_id)) = row else {
            // Never indexed, or already erased: nothing to do.
            return Ok(());
        };
        let day = cql_date(timestamp.0.div_euclid(86_400_000));
        self.session
            .execute_unpaged(
                &s.delete_by_type,
                (event_type.as_str(), day, timestamp, event_id),
            )
            .await
            .map_err(Failure::cql)?;
        if let Some(user_id) = user_id {
            self.session
                .execute_unpaged(
                    &s.delete_by_user,
                    (user_id.as_str(), day, timestamp, event_id),
                )
                .await
                .map_err(Failure::cql)?;
        }
        self.session
            .execute_unpaged(
                &s.delete_by_aggregate,
                (aggregate_type, aggregate_id, version),
            )
            .await
            .map_err(Failure::cql)?;
        Ok(())
    }

    async fn index_snapshot(
        &self,
        source: &Source,
        message: &OwnedMessage,
        key: &str,
        value: &[u8],
    ) -> Result<(), Failure> {
        let snapshot: AggregateSnapshot = self.codec.decode(value).await.map_err(Failure::codec)?;
        if snapshot.aggregate_id != key || snapshot.aggregate_type != source.aggregate_type {
            return Err(Failure::reject(
                "key_mismatch",
                format!(
                    "snapshot of {:?} {} under key {key:?} on {}, which holds {:?} snapshots",
                    snapshot.aggregate_type,
                    snapshot.aggregate_id,
                    message.topic(),
                    source.aggregate_type
                ),
            ));
        }
        self.session
            .execute_unpaged(
                &self.statements.insert_snapshot,
                (
                    aggregate_type_name(snapshot.aggregate_type),
                    snapshot.aggregate_id.as_str(),
                    snapshot.version,
                    snapshot.last_event_id,
                    cql_timestamp(snapshot.taken_at),
                    snapshot.state_format.as_str(),
                    message.topic(),
                    message.partition(),
                    message.offset(),
                    value,
                ),
            )
            .await
            .map_err(Failure::cql)?;
        Ok(())
    }

    /// A snapshot tombstone erases the aggregate: every snapshot of it goes.
    async fn erase_snapshots(&self, source: &Source, key: &str) -> Result<(), Failure> {
        self.session
            .execute_unpaged(
                &self.statements.delete_snapshots,
                (aggregate_type_name(source.aggregate_type), key),
            )
            .await
            .map_err(Failure::cql)?;
        Ok(())
    }

    /// Copies the record to the dead-letter topic; an error is transient (the broker).
    async fn dead_letter(
        &self,
        message: &OwnedMessage,
        rejection: &Rejection,
        retry_count: u32,
    ) -> Result<(), String> {
        // Headers whose name is not UTF-8 are left out (`headers::read`).
        let original = dietstream_runtime::headers::read(message.headers()).to_owned_pairs();
        let letter = DeadLetter {
            original_topic: message.topic(),
            original_partition: message.partition(),
            original_offset: message.offset(),
            original_timestamp_ms: message.timestamp().to_millis(),
            error_class: rejection.class,
            error_message: &rejection.message,
            processor: PROCESSOR,
            dead_letter_topic: &self.dead_letter_topic,
            retry_count,
            max_retries: self.config.retry.max_retries,
            failed_at_ms: now_millis(),
        };
        let headers = dead_letter_headers(&original, &letter).iter().fold(
            OwnedHeaders::new(),
            |all, (key, value)| {
                all.insert(Header {
                    key,
                    value: value.as_deref(),
                })
            },
        );
        let mut record = FutureRecord::<[u8], [u8]>::to(&self.dead_letter_topic).headers(headers);
        if let Some(key) = message.key() {
            record = record.key(key);
        }
        if let Some(value) = message.payload() {
            record = record.payload(value);
        }
        let (partition, offset) = self
            .producer
            .send(record, Duration::from_secs(5))
            .await
            .map(|delivery| (delivery.partition, delivery.offset))
            .map_err(|(error, _)| error.to_string())?;
        warn!(
            topic = message.topic(),
            partition = message.partition(),
            offset = message.offset(),
            error_class = rejection.class,
            error = %rejection.message,
            dead_letter_topic = %self.dead_letter_topic,
            dead_letter_partition = partition,
            dead_letter_offset = offset,
            "A record could not be indexed and was dead-lettered."
        );
        Ok(())
    }
}

/// Checks that an event sits under its own key and on its aggregate type's topic: a tombstone
/// finds the rows by key and topic, so a mismatch would make the event unerasable.
fn check_event_key(source: &Source, key: &str, header: &EventHeader) -> Result<(), Failure> {
    let expected = format!("{}/{}", header.aggregate_id, header.version);
    if key != expected || header.aggregate_type != source.aggregate_type {
        return Err(Failure::reject(
            "key_mismatch",
            format!(
                "event {} ({:?} {} version {}) under key {key:?} on a topic of {:?} events; \
                 expected key {expected:?}",
                header.event_id,
                header.aggregate_type,
                header.aggregate_id,
                header.version,
                source.aggregate_type
            ),
        ));
    }
    Ok(())
}

/// Aggregate id and version of an event key `<aggregate id>/<version>`. The id may itself
/// contain `/` (system aggregates: `cache/<name>`), so the version is after the last one.
pub(crate) fn split_event_key(key: &str) -> Option<(&str, i64)> {
    let (aggregate_id, version) = key.rsplit_once('/')?;
    Some((aggregate_id, version.parse().ok()?))
}

fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
