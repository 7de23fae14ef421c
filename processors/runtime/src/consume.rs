//! The consume loop every read-model processor runs.
//!
//! Per iteration: take the records that have arrived (up to `batch_size`), handle the
//! rebalances they came with (state of newly assigned partitions is loaded from the state table
//! before any of their records is applied), then per source partition: skip records whose
//! `event_type` header the projection does not want (undecoded), decode the rest, apply them
//! to the entities they name (skipping entities that already saw the offset), and collect the
//! rows (coalesced per table and key), dead letters and commands, and add the entities'
//! [partial](crate::projection#partial-rows) deltas to the partition's partial rows. Each
//! partition's work is then written by its own task: dead letters and commands (acknowledged
//! by Kafka), the touched partial rows and then their sums, rows (CQL, bounded concurrency),
//! then the changed entities' state; only then is the partition's offset stored for
//! librdkafka's auto-commit.
//!
//! A transient failure (CQL, the broker, the registry) pauses only the affected partition:
//! its task retries under the [`RetryPolicy`] while the loop goes on with the others; when it
//! succeeds the partition is rewound to its first unapplied record and resumed. When the
//! retries run out the loop stops with [`RuntimeError::RetriesExhausted`], the partition's
//! offset unstored, so a restart resumes at the failed work. On a revoke the stored offsets are
//! committed before the partitions go, and a partition's retrying task is aborted (the next
//! owner redoes its work, which writes the same rows). On shutdown the batch in hand is
//! finished, offsets are committed synchronously and `run` returns.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dietstream_schemas::codec::{Codec, RECORD_TYPE_HEADER};
use dietstream_schemas::headers::{DeadLetter, DLQ_GENERATION, ROUTING_KEY, SOURCE};
use dietstream_schemas::registry::SchemaRegistry;
use dietstream_schemas::Command;
use dietstream_topology::{partition_for, Desired, Kind};
use futures::FutureExt;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};
use tokio::task::{AbortHandle, JoinHandle};
use tracing::{debug, info, warn};

use crate::dead_letter::{dead_letter_headers, Rejection};
use crate::metrics::{ProcessorMetrics, Rebalance as RebalanceKind};
use crate::partials::{self, PartialSums, Partials};
use crate::projection::{Effects, Origin, Projection, Row};
use crate::store::{StateEncoding, Store, StoreError, Stored};
use crate::RetryPolicy;

/// A processor's place in the topology, names prefixed as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessorTopics {
    /// The processor's name (`processor = "…"`).
    pub processor: String,
    /// Its consumer group.
    pub group_id: String,
    /// The event topics it reads.
    pub reads: Vec<String>,
    /// Its dead-letter topic.
    pub dead_letter: String,
    /// The commands topic and its partition count, when it sends commands.
    pub commands: Option<(String, i32)>,
}

impl ProcessorTopics {
    /// The processor's topics as the resolved topology names them.
    pub fn from_desired(desired: &Desired, processor: &str) -> Result<ProcessorTopics, String> {
        let consumer = desired
            .consumers
            .iter()
            .find(|c| c.processor == processor)
            .ok_or_else(|| format!("the topology has no consumer for processor {processor:?}"))?;
        for name in &consumer.reads {
            match desired.topics.iter().find(|t| &t.name == name) {
                Some(t) if t.kind == Kind::Event => {}
                Some(t) => {
                    return Err(format!(
                        "processor {processor} reads {name}, a {} topic; it reads event topics",
                        t.kind.name()
                    ))
                }
                None => return Err(format!("{name} is read but not declared")),
            }
        }
        let commands = consumer
            .writes
            .iter()
            .filter_map(|name| desired.topics.iter().find(|t| &t.name == name))
            .find(|t| t.kind == Kind::Command)
            .map(|t| (t.name.clone(), t.partitions));
        Ok(ProcessorTopics {
            processor: processor.to_owned(),
            group_id: consumer.group.clone(),
            reads: consumer.reads.clone(),
            dead_letter: consumer.dead_letter.clone(),
            commands,
        })
    }
}

/// Settings of the loop (the `[processors]` config section).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoopConfig {
    /// Most records taken in one batch. Records that have arrived are taken at once, and the
    /// loop waits up to `flush_interval` after the batch's first record for more, so batches
    /// are small at low load and grow under load.
    pub batch_size: usize,
    /// How long a batch may wait for more records after its first one before it is written
    /// (0: write what has arrived at once). Each batch costs a few sequential CQL round trips
    /// and one request per CQL partition key, so at a moderate, steady rate a short wait
    /// turns many batches of a few records into one that costs about as much as one of them:
    /// the freshness of every record rises by at most this much, and the load on Cassandra
    /// falls. At most 10 s.
    #[serde(with = "humantime_serde")]
    pub flush_interval: Duration,
    /// Most CQL writes in flight per partition task.
    pub max_in_flight: usize,
    /// About the most bytes of values (as Cassandra sizes a batch) in one unlogged batch. The
    /// loop batches writes that share a CQL partition key: the states of a source partition,
    /// and rows whose partition keys have the same values (one user's rows in several
    /// tables). Cassandra warns about batches over `batch_size_warn_threshold` (5 KiB by
    /// default) and refuses them over `batch_size_fail_threshold` (50 KiB); ScyllaDB's are
    /// 128 KiB and 1 MiB. A write larger than this goes alone; 1 sends every write alone.
    pub batch_bytes: usize,
    /// Retries of transient failures.
    pub retry: RetryPolicy,
    /// How long the loop waits for a record before it stores the positions of idle partitions
    /// (past transaction markers) and looks at retrying partitions.
    #[serde(with = "humantime_serde")]
    pub idle_interval: Duration,
    /// How often a running read-model processor looks at the generations table for a
    /// rebuild that became active (`dietstream replay`); it then switches to the new tables.
    #[serde(with = "humantime_serde")]
    pub generation_check_interval: Duration,
    /// How states are saved: `compact` (the default) or `json`, for the first step of a
    /// rolling upgrade from a version that reads only JSON ([`StateEncoding`]).
    pub state_encoding: StateEncoding,
}

impl LoopConfig {
    /// Every invalid setting as (setting, reason), settings named as in the config file.
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        if self.batch_size == 0 {
            problems.push(("batch_size".to_owned(), "must be at least 1".to_owned()));
        }
        if self.max_in_flight == 0 {
            problems.push(("max_in_flight".to_owned(), "must be at least 1".to_owned()));
        }
        if self.batch_bytes == 0 {
            problems.push(("batch_bytes".to_owned(), "must be at least 1".to_owned()));
        }
        if self.flush_interval > MAX_FLUSH_INTERVAL {
            problems.push((
                "flush_interval".to_owned(),
                format!("must be at most {MAX_FLUSH_INTERVAL:?}"),
            ));
        }
        if self.idle_interval.is_zero() {
            problems.push(("idle_interval".to_owned(), "must be above zero".to_owned()));
        }
        if self.generation_check_interval.is_zero() {
            problems.push((
                "generation_check_interval".to_owned(),
                "must be above zero".to_owned(),
            ));
        }
        for (setting, reason) in self.retry.problems() {
            problems.push((format!("retry.{setting}"), reason));
        }
        problems
    }
}

/// The longest `flush_interval` accepted.
const MAX_FLUSH_INTERVAL: Duration = Duration::from_secs(10);

impl Default for LoopConfig {
    fn default() -> Self {
        LoopConfig {
            batch_size: 1_000,
            flush_interval: Duration::ZERO,
            max_in_flight: 64,
            // Under Cassandra's 5 KiB warning threshold: no warning per batch in its log.
            batch_bytes: 4 * 1024,
            // Only the failing partition waits, so a processor can afford to retry for long:
            // 0.1 s doubling to 10 s, 10 retries, about 40 s in all.
            retry: RetryPolicy {
                retry_delay: Duration::from_millis(100),
                backoff_multiplier: 2.0,
                max_retry_delay: Duration::from_secs(10),
                max_retries: 10,
            },
            idle_interval: Duration::from_millis(200),
            // One small CQL read per processor; a switch-over within seconds is soon enough.
            generation_check_interval: Duration::from_secs(5),
            state_encoding: StateEncoding::Compact,
        }
    }
}

/// Why the loop could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// A Kafka client could not be created or subscribe.
    #[error("cannot set up the {role}: {source}")]
    Kafka {
        /// `consumer`, `producer` or `subscription`.
        role: &'static str,
        /// What librdkafka said.
        source: KafkaError,
    },
    /// Transient failures outlasted the retry policy. The partition's offset was not stored.
    #[error(
        "{topic} partition {partition}: {retries} retries failed, the last with: {last_error}"
    )]
    RetriesExhausted {
        /// The topic.
        topic: String,
        /// The partition.
        partition: i32,
        /// Retries made.
        retries: u32,
        /// The last error.
        last_error: String,
    },
    /// A row does not fit its table, or a stored state does not parse: needs a human.
    #[error(transparent)]
    Store(StoreError),
    /// Committing offsets on the way out failed.
    #[error("committing offsets: {0}")]
    Commit(KafkaError),
}

/// What a run did, for logs and tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LoopSummary {
    /// Records read.
    pub records: u64,
    /// Records skipped undecoded (not wanted).
    pub skipped: u64,
    /// Events applied to at least one entity.
    pub applied: u64,
    /// Records dead-lettered.
    pub dead_lettered: u64,
    /// Rows written (after coalescing).
    pub rows: u64,
    /// Commands sent.
    pub commands: u64,
    /// Retries of transient failures.
    pub retries: u64,
}

type PartitionKey = (String, i32);

/// What the rebalance callbacks tell the loop.
#[derive(Debug)]
enum RebalanceEvent {
    Assigned(Vec<PartitionKey>),
    Revoked(Vec<PartitionKey>),
}

struct LoopContext {
    metrics: ProcessorMetrics,
    /// Partitions assigned now, to keep lag series of revoked ones away.
    assigned: Mutex<HashSet<PartitionKey>>,
    events: Mutex<Vec<RebalanceEvent>>,
    /// Retrying tasks, aborted when their partition is revoked.
    retrying: Mutex<HashMap<PartitionKey, AbortHandle>>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn partitions_of(list: &TopicPartitionList) -> Vec<PartitionKey> {
    list.elements()
        .iter()
        .map(|e| (e.topic().to_owned(), e.partition()))
        .collect()
}

/// One assigned partition.
struct Slot<S> {
    source: String,
    entities: HashMap<String, Stored<S>>,
    /// The partition's partial rows.
    partials: Partials,
    /// First record not applied yet; records below it are skipped (redelivered after a rewind).
    next_offset: Option<i64>,
    /// Paused while its work is retried; records delivered meanwhile are dropped.
    paused: bool,
    /// Transient decode failures in a row at `next_offset`.
    decode_retries: u32,
}

/// A record to copy to the dead-letter topic.
struct Letter {
    message: OwnedMessage,
    rejection: Rejection,
}

/// One partition's share of a batch, to be written.
struct Work<S> {
    key: PartitionKey,
    source: String,
    rows: Vec<Row>,
    states: Vec<(String, Stored<S>)>,
    /// Touched partial rows, written before `rows`, and their sums, saved before `states`.
    partial_rows: Vec<Row>,
    /// A partial row the projection got wrong ([`partials::row`]): the task writes nothing
    /// and stops the loop with it.
    bad_partial: Option<StoreError>,
    partials: Vec<(String, Stored<PartialSums>)>,
    letters: Vec<Letter>,
    commands: Vec<Command>,
    /// Timestamp (µs) and type of every event applied, for freshness and counts.
    applied: Vec<(i64, String)>,
    /// Last offset consumed (applied, skipped or dead-lettered); `None` when nothing was.
    last_offset: Option<i64>,
    /// A transient decode failure at this offset: the partition is rewound to it.
    rewind_to: Option<i64>,
    decode_retries: u32,
}

/// What a finished task reports.
struct Done {
    key: PartitionKey,
    last_offset: Option<i64>,
    rewind_to: Option<i64>,
    retries: u32,
}

/// Everything the write tasks share.
struct Shared<P: Projection, R> {
    metrics: ProcessorMetrics,
    projection: Arc<P>,
    codec: Arc<Codec<R>>,
    store: Store,
    producer: FutureProducer,
    topics: ProcessorTopics,
    config: LoopConfig,
}

/// What one processor is made of.
pub struct Parts<P, R> {
    /// Its pure part.
    pub projection: Arc<P>,
    /// Its topics.
    pub topics: ProcessorTopics,
    /// Its tables, prepared ([`Store::prepare`]).
    pub store: Store,
    /// The codec of its events and commands.
    pub codec: Arc<Codec<R>>,
    /// The loop's settings.
    pub config: LoopConfig,
    /// Where it reports.
    pub metrics: ProcessorMetrics,
}

/// How long librdkafka postpones a partition's next fetch once its local queue is full, unless
/// the configuration chooses: see [`refetch_promptly`].
pub const FETCH_QUEUE_BACKOFF_MS: &str = "100";

/// Sets `fetch.queue.backoff.ms` to [`FETCH_QUEUE_BACKOFF_MS`] unless `config` sets it.
///
/// When a consumer's prefetched records exceed `queued.max.messages.kbytes` (64 MiB by
/// default, about 200 000 event records) or `queued.min.messages`, librdkafka postpones the
/// partitions' next fetch by `fetch.queue.backoff.ms`, whose default is one second. A consumer
/// that drains the full queue in less than that then sits idle until the fetch is due: in the
/// processors benchmark, a backlog read with decoding stalled for 0.6-0.8 s after every ~180 000
/// records, which halved its rate. 100 ms is far shorter than draining a full queue takes.
/// Every consumer that reads a backlog (the loop, the indexer, the command processor's
/// restore) uses this.
pub fn refetch_promptly(config: &mut ClientConfig) -> &mut ClientConfig {
    if config.get("fetch.queue.backoff.ms").is_none() {
        config.set("fetch.queue.backoff.ms", FETCH_QUEUE_BACKOFF_MS);
    }
    config
}

/// The loop's consumer settings: `kafka` plus the group, `enable.auto.offset.store=false`,
/// `auto.offset.reset=earliest`, `isolation.level=read_committed`, the cooperative-sticky
/// assignor unless `kafka` chooses a `group.protocol` or assignor, statistics every 5 s
/// (the lag gauge) and a prompt refetch ([`refetch_promptly`]). Public so that a benchmark
/// consumes exactly as the loop does.
pub fn consumer_config(kafka: &ClientConfig, group_id: &str) -> ClientConfig {
    let mut consumer_config = kafka.clone();
    refetch_promptly(&mut consumer_config);
    if consumer_config.get("group.protocol").is_none()
        && consumer_config
            .get("partition.assignment.strategy")
            .is_none()
    {
        // Incremental rebalances: partitions that stay keep their state and their work.
        consumer_config.set("partition.assignment.strategy", "cooperative-sticky");
    }
    if consumer_config.get("statistics.interval.ms").is_none() {
        // librdkafka's statistics carry each partition's consumer lag: the lag gauge.
        consumer_config.set("statistics.interval.ms", "5000");
    }
    consumer_config
        .set("group.id", group_id)
        .set("enable.auto.commit", "true")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed");
    consumer_config
}

/// Runs a processor until `shutdown` resolves or a failure outlasts the retries.
///
/// Progress goes to `metrics` (see [`crate::metrics`] for what each metric means).
/// `kafka` holds the common client properties; the loop adds its consumer's (its group,
/// `enable.auto.offset.store=false`, `auto.offset.reset=earliest`,
/// `isolation.level=read_committed`, the cooperative-sticky assignor unless `kafka` chooses a
/// `group.protocol` or assignor) and its producer's (`acks=all`, idempotence). `store` must be
/// prepared for the projection's tables.
pub async fn run<P: Projection, R: SchemaRegistry + 'static>(
    parts: Parts<P, R>,
    kafka: &ClientConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<LoopSummary, RuntimeError> {
    let Parts {
        projection,
        topics,
        store,
        codec,
        config,
        metrics,
    } = parts;
    let (topics, config) = (&topics, &config);
    let context = Arc::new(LoopContext {
        metrics: metrics.clone(),
        assigned: Mutex::new(HashSet::new()),
        events: Mutex::new(Vec::new()),
        retrying: Mutex::new(HashMap::new()),
    });
    let consumer: StreamConsumer<ContextRef> = consumer_config(kafka, &topics.group_id)
        .create_with_context(ContextRef(Arc::clone(&context)))
        .map_err(|source| RuntimeError::Kafka {
            role: "consumer",
            source,
        })?;
    let producer: FutureProducer = kafka
        .clone()
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .map_err(|source| RuntimeError::Kafka {
            role: "producer",
            source,
        })?;
    let names: Vec<&str> = topics.reads.iter().map(String::as_str).collect();
    consumer
        .subscribe(&names)
        .map_err(|source| RuntimeError::Kafka {
            role: "subscription",
            source,
        })?;
    info!(processor = %topics.processor, group = %topics.group_id, topics = ?names, "Processor started.");

    let shared = Arc::new(Shared {
        projection,
        codec,
        store,
        producer,
        topics: topics.clone(),
        config: config.clone(),
        metrics,
    });
    let mut state = LoopState::<P, R> {
        shared,
        slots: HashMap::new(),
        retrying: HashMap::new(),
        summary: LoopSummary::default(),
        context,
    };
    let mut shutdown = std::pin::pin!(shutdown);
    let outcome = loop {
        let first = tokio::select! {
            biased;
            () = &mut shutdown => break Ok(()),
            message = consumer.recv() => Some(message),
            () = tokio::time::sleep(config.idle_interval) => None,
        };
        let mut batch = Vec::with_capacity(config.batch_size);
        match first {
            Some(Ok(message)) => batch.push(message.detach()),
            Some(Err(error)) => {
                // librdkafka reports broker and transport trouble here and recovers by itself.
                warn!(%error, "The consumer reported an error; polling again.");
            }
            None => {}
        }
        let flush_at = tokio::time::Instant::now() + config.flush_interval;
        while !batch.is_empty() && batch.len() < config.batch_size {
            let next = match consumer.recv().now_or_never() {
                Some(next) => next,
                // Nothing more has arrived: wait for it until the flush is due. Receiving is
                // cancel-safe, so giving up at the deadline loses no record.
                None => match tokio::time::timeout_at(flush_at, consumer.recv()).await {
                    Ok(next) => next,
                    Err(_) => break,
                },
            };
            match next {
                Ok(message) => batch.push(message.detach()),
                Err(error) => {
                    warn!(%error, "The consumer reported an error; polling again.");
                    break;
                }
            }
        }
        if let Err(error) = state.rebalanced().await {
            break Err(error);
        }
        if let Err(error) = state.harvest(&consumer) {
            break Err(error);
        }
        if batch.is_empty() {
            state.store_idle_positions(&consumer);
            continue;
        }
        let (started, records) = (Instant::now(), batch.len());
        if let Err(error) = state.process(&consumer, batch).await {
            break Err(error);
        }
        state
            .shared
            .metrics
            .observe_batch(started.elapsed(), records);
    };

    for (_, handle) in state.retrying.drain() {
        handle.abort();
    }
    match consumer.commit_consumer_state(CommitMode::Sync) {
        Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
        Err(source) => {
            if outcome.is_ok() {
                return Err(RuntimeError::Commit(source));
            }
            warn!(error = %source, "Committing the stored offsets failed while stopping.");
        }
    }
    match &outcome {
        Ok(()) => info!(processor = %topics.processor, "Processor stopped; offsets committed."),
        Err(error) => {
            warn!(%error, "Processor stopped on an error; offsets of finished work committed.")
        }
    }
    outcome.map(|()| state.summary)
}

/// The consumer's context: the loop keeps a second reference to read what it recorded.
struct ContextRef(Arc<LoopContext>);

impl ClientContext for ContextRef {
    fn stats(&self, statistics: rdkafka::Statistics) {
        let assigned = lock(&self.0.assigned);
        for (topic, partitions) in &statistics.topics {
            for (partition, stats) in &partitions.partitions {
                let key = (topic.clone(), *partition);
                // -1 until the consumer has a position; internal partitions (-1) are skipped.
                if stats.consumer_lag >= 0 && assigned.contains(&key) {
                    self.0
                        .metrics
                        .set_consumer_lag(topic, *partition, stats.consumer_lag);
                }
            }
        }
    }
}

impl ConsumerContext for ContextRef {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        // The callbacks only need the consumer to commit; a BaseConsumer<ContextRef> commits
        // the same way.
        if let Rebalance::Revoke(_) = rebalance {
            match consumer.commit_consumer_state(CommitMode::Sync) {
                Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
                Err(error) => {
                    warn!(%error, "Committing offsets before a revoke failed; the next owner redoes the work since the last commit.")
                }
            }
        }
        self.0.record_pre(rebalance);
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        self.0.record_post(rebalance);
    }
}

impl LoopContext {
    fn record_pre(&self, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(list) = rebalance {
            let revoked = partitions_of(list);
            let mut retrying = lock(&self.retrying);
            for key in &revoked {
                if let Some(task) = retrying.remove(key) {
                    task.abort();
                }
            }
            info!(partitions = revoked.len(), "Partitions revoked.");
            let mut assigned = lock(&self.assigned);
            for (topic, partition) in &revoked {
                assigned.remove(&(topic.clone(), *partition));
                self.metrics.forget_partition(topic, *partition);
            }
            self.metrics.set_assigned_partitions(assigned.len());
            self.metrics.record_rebalance(RebalanceKind::Revoked);
            lock(&self.events).push(RebalanceEvent::Revoked(revoked));
        }
    }

    fn record_post(&self, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(list) = rebalance {
            let assigned = partitions_of(list);
            info!(partitions = assigned.len(), "Partitions assigned.");
            let mut now = lock(&self.assigned);
            now.extend(assigned.iter().cloned());
            self.metrics.set_assigned_partitions(now.len());
            self.metrics.record_rebalance(RebalanceKind::Assigned);
            lock(&self.events).push(RebalanceEvent::Assigned(assigned));
        }
    }
}

struct LoopState<P: Projection, R> {
    shared: Arc<Shared<P, R>>,
    slots: HashMap<PartitionKey, Slot<P::State>>,
    /// Paused partitions whose work is being retried.
    retrying: HashMap<PartitionKey, JoinHandle<Result<Done, RuntimeError>>>,
    summary: LoopSummary,
    context: Arc<LoopContext>,
}

impl<P: Projection, R: SchemaRegistry + 'static> LoopState<P, R> {
    /// Applies the rebalances recorded since the last look: drops revoked partitions, loads
    /// the state of assigned ones.
    async fn rebalanced(&mut self) -> Result<(), RuntimeError> {
        let events: Vec<RebalanceEvent> = std::mem::take(&mut *lock(&self.context.events));
        for event in events {
            match event {
                RebalanceEvent::Revoked(keys) => {
                    for key in keys {
                        self.slots.remove(&key);
                        if let Some(handle) = self.retrying.remove(&key) {
                            handle.abort();
                        }
                    }
                }
                RebalanceEvent::Assigned(keys) => {
                    for key in keys {
                        let source = format!("{}/{}", key.0, key.1);
                        let (entities, partials) = self.load(&source).await?;
                        debug!(%source, entities = entities.len(), partials = partials.len(), "Partition state loaded.");
                        self.slots.insert(
                            key,
                            Slot {
                                source,
                                entities,
                                partials,
                                next_offset: None,
                                paused: false,
                                decode_retries: 0,
                            },
                        );
                    }
                }
            }
        }
        Ok(())
    }

    async fn load(
        &mut self,
        source: &str,
    ) -> Result<(HashMap<String, Stored<P::State>>, Partials), RuntimeError> {
        let policy = &self.shared.config.retry;
        let mut retries = 0;
        loop {
            match self.shared.store.load_partition(source).await {
                Ok(entities) => return Ok(entities),
                Err(error @ StoreError::BadState { .. }) => return Err(RuntimeError::Store(error)),
                Err(error) if retries >= policy.max_retries => {
                    let (topic, partition) = source.rsplit_once('/').unwrap_or((source, "0"));
                    return Err(RuntimeError::RetriesExhausted {
                        topic: topic.to_owned(),
                        partition: partition.parse().unwrap_or_default(),
                        retries,
                        last_error: error.to_string(),
                    });
                }
                Err(error) => {
                    retries += 1;
                    self.summary.retries += 1;
                    let wait = policy.delay(retries);
                    warn!(%source, %error, retry = retries, ?wait, "Loading partition state failed; retrying.");
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    /// Finishes retrying tasks that are done: stores their offsets, rewinds and resumes.
    fn harvest(&mut self, consumer: &StreamConsumer<ContextRef>) -> Result<(), RuntimeError> {
        let finished: Vec<PartitionKey> = self
            .retrying
            .iter()
            .filter(|(_, handle)| handle.is_finished())
            .map(|(key, _)| key.clone())
            .collect();
        for key in finished {
            let Some(handle) = self.retrying.remove(&key) else {
                continue;
            };
            lock(&self.context.retrying).remove(&key);
            match handle.now_or_never() {
                Some(Ok(Ok(done))) => self.finish(consumer, done)?,
                Some(Ok(Err(error))) => return Err(error),
                // Aborted (revoked) or panicked: a panic in a write task is a bug; the
                // partition's offset stays unstored.
                Some(Err(error)) if error.is_cancelled() => {}
                Some(Err(error)) => std::panic::resume_unwind(error.into_panic()),
                None => {}
            }
        }
        Ok(())
    }

    /// Stores a finished task's offset; rewinds and resumes its partition if it was paused.
    fn finish(
        &mut self,
        consumer: &StreamConsumer<ContextRef>,
        done: Done,
    ) -> Result<(), RuntimeError> {
        self.summary.retries += u64::from(done.retries);
        let (topic, partition) = (&done.key.0, done.key.1);
        let Some(slot) = self.slots.get_mut(&done.key) else {
            return Ok(());
        };
        if let Some(last) = done.last_offset {
            // Stores last + 1, the next record to read. A revoked partition refuses it.
            if let Err(error) = consumer.store_offset(topic, partition, last) {
                debug!(%topic, partition, last, %error, "Storing an offset failed; the work is redone by the next owner.");
            }
        }
        if let Some(offset) = done.rewind_to {
            slot.next_offset = Some(offset);
        }
        if slot.paused {
            let next = slot.next_offset;
            slot.paused = false;
            let mut list = TopicPartitionList::new();
            list.add_partition(topic, partition);
            if let Some(next) = next {
                if let Err(error) = consumer.seek(
                    topic,
                    partition,
                    Offset::Offset(next),
                    Duration::from_secs(10),
                ) {
                    warn!(%topic, partition, next, %error, "Rewinding a partition failed; resuming where it stands.");
                }
            }
            if let Err(error) = consumer.resume(&list) {
                warn!(%topic, partition, %error, "Resuming a partition failed.");
            }
            info!(%topic, partition, ?next, "Partition resumed after retrying.");
        }
        Ok(())
    }

    /// Stores the position of every idle partition (no work, not paused) as its offset, so the
    /// committed offset passes the transaction markers a `read_committed` consumer skips.
    fn store_idle_positions(&self, consumer: &StreamConsumer<ContextRef>) {
        let Ok(positions) = consumer.position() else {
            return;
        };
        for element in positions.elements() {
            let key = (element.topic().to_owned(), element.partition());
            let idle = self.slots.get(&key).is_some_and(|s| !s.paused);
            if let (true, Offset::Offset(offset)) = (idle, element.offset()) {
                if let Err(error) =
                    consumer.store_offset(element.topic(), element.partition(), offset - 1)
                {
                    debug!(topic = element.topic(), partition = element.partition(), %error, "Storing a position failed.");
                }
            }
        }
    }

    /// Applies a batch per partition, then writes each partition's work.
    async fn process(
        &mut self,
        consumer: &StreamConsumer<ContextRef>,
        batch: Vec<OwnedMessage>,
    ) -> Result<(), RuntimeError> {
        let mut by_partition: BTreeMap<PartitionKey, Vec<OwnedMessage>> = BTreeMap::new();
        for message in batch {
            by_partition
                .entry((message.topic().to_owned(), message.partition()))
                .or_default()
                .push(message);
        }
        let mut works = Vec::new();
        for (key, messages) in by_partition {
            self.summary.records += messages.len() as u64;
            self.shared
                .metrics
                .record_consumed(&key.0, messages.len() as u64);
            if let Some(work) = self.apply(&key, messages).await {
                works.push(work);
            }
        }
        let mut running = Vec::new();
        for work in works {
            let key = work.key.clone();
            let (noticed, retrying) = tokio::sync::oneshot::channel();
            let handle = tokio::spawn(write(Arc::clone(&self.shared), work, noticed));
            running.push((key, handle, retrying));
        }
        for (key, mut handle, retrying) in running {
            tokio::select! {
                done = &mut handle => match done {
                    Ok(Ok(done)) => self.finish(consumer, done)?,
                    Ok(Err(error)) => return Err(error),
                    Err(error) => std::panic::resume_unwind(error.into_panic()),
                },
                Ok(()) = retrying => {
                    // The task retries on its own; the partition waits, the others go on.
                    let mut list = TopicPartitionList::new();
                    list.add_partition(&key.0, key.1);
                    if let Err(error) = consumer.pause(&list) {
                        warn!(topic = %key.0, partition = key.1, %error, "Pausing a partition failed.");
                    }
                    if let Some(slot) = self.slots.get_mut(&key) {
                        slot.paused = true;
                    }
                    lock(&self.context.retrying).insert(key.clone(), handle.abort_handle());
                    self.retrying.insert(key, handle);
                }
            }
        }
        Ok(())
    }

    /// The pure part for one partition's records: skip, decode, apply, collect.
    async fn apply(
        &mut self,
        key: &PartitionKey,
        messages: Vec<OwnedMessage>,
    ) -> Option<Work<P::State>> {
        let shared = Arc::clone(&self.shared);
        let projection = &shared.projection;
        let slot = self.slots.get_mut(key)?;
        if slot.paused {
            // Delivered before the pause took effect; the rewind brings them back.
            return None;
        }
        let mut work = Work {
            key: key.clone(),
            source: slot.source.clone(),
            rows: Vec::new(),
            states: Vec::new(),
            partial_rows: Vec::new(),
            bad_partial: None,
            partials: Vec::new(),
            letters: Vec::new(),
            commands: Vec::new(),
            applied: Vec::new(),
            last_offset: None,
            rewind_to: None,
            decode_retries: slot.decode_retries,
        };
        let mut rows: HashMap<String, usize> = HashMap::new();
        let mut dirty: HashSet<String> = HashSet::new();
        // Touched partial rows: their table and key.
        let mut touched: BTreeMap<String, (&'static str, Vec<scylla::value::CqlValue>)> =
            BTreeMap::new();
        for message in messages {
            let offset = message.offset();
            if slot.next_offset.is_some_and(|next| offset < next) {
                continue;
            }
            let wanted = event_type(&message).is_none_or(|t| projection.wants(t));
            if !wanted || message.payload().is_none() {
                // Not needed, or an erasure tombstone (the read models keep no raw events).
                self.summary.skipped += 1;
                shared.metrics.record_skipped(&key.0, 1);
                slot.next_offset = Some(offset + 1);
                work.last_offset = Some(offset);
                continue;
            }
            let payload = message.payload().unwrap_or_default();
            let event = match shared.codec.decode_event(payload).await {
                Ok(event) => event,
                Err(error) if error.is_retryable() => {
                    shared.metrics.record_error("registry");
                    warn!(topic = %key.0, partition = key.1, offset, %error, "Decoding failed with a transient error; the partition is rewound and retried.");
                    work.rewind_to = Some(offset);
                    work.decode_retries = slot.decode_retries + 1;
                    slot.decode_retries += 1;
                    slot.next_offset = Some(offset);
                    break;
                }
                Err(error) => {
                    let rejection = Rejection::from_codec(&error);
                    shared.metrics.record_error(rejection.class);
                    work.letters.push(Letter { message, rejection });
                    slot.next_offset = Some(offset + 1);
                    work.last_offset = Some(offset);
                    continue;
                }
            };
            slot.decode_retries = 0;
            let origin = Origin {
                topic: &key.0,
                partition: key.1,
                offset,
            };
            let mut applied = false;
            let mut broken = None;
            for entity in projection.entities(&event, &origin) {
                let stored = slot
                    .entities
                    .entry(entity.clone())
                    .or_insert_with(|| Stored {
                        state: P::State::default(),
                        applied_offset: -1,
                    });
                if stored.applied_offset >= offset {
                    continue;
                }
                match projection.apply(&entity, &mut stored.state, &event, &origin) {
                    Ok(Effects {
                        rows: new_rows,
                        commands,
                        partials: new_partials,
                    }) => {
                        stored.applied_offset = offset;
                        applied = true;
                        dirty.insert(entity);
                        for row in new_rows {
                            let identity = format!("{}|{:?}", row.table(), row.key());
                            match rows.get(&identity) {
                                Some(index) => work.rows[*index] = row,
                                None => {
                                    rows.insert(identity, work.rows.len());
                                    work.rows.push(row);
                                }
                            }
                        }
                        work.commands.extend(commands);
                        for partial in new_partials {
                            if let Some(name) = slot.partials.add(&partial, offset) {
                                touched.insert(name, (partial.table, partial.key));
                            }
                        }
                    }
                    Err(error) => broken = Some(error),
                }
            }
            if let Some(error) = broken {
                shared.metrics.record_error("rule_violation");
                work.letters.push(Letter {
                    message,
                    rejection: Rejection {
                        class: "rule_violation",
                        message: error.to_string(),
                    },
                });
            } else if applied {
                self.summary.applied += 1;
                let header = event.header();
                work.applied
                    .push((header.timestamp, header.event_type.clone()));
            }
            slot.next_offset = Some(offset + 1);
            work.last_offset = Some(offset);
        }
        work.states = dirty
            .into_iter()
            .filter_map(|entity| {
                let stored = slot.entities.get(&entity)?.clone();
                Some((entity, stored))
            })
            .collect();
        for (name, (table, key)) in touched {
            if let Some(stored) = slot.partials.get(&name) {
                let sums = &stored.state.sums;
                match partials::row(projection.partials(), table, &key, work.key.1, sums) {
                    Ok(row) => work.partial_rows.push(row),
                    Err(error) => work.bad_partial = Some(error),
                }
                work.partials.push((name, stored.clone()));
            }
        }
        self.summary.rows += (work.rows.len() + work.partial_rows.len()) as u64;
        self.summary.commands += work.commands.len() as u64;
        self.summary.dead_lettered += work.letters.len() as u64;
        Some(work)
    }
}

fn event_type(message: &OwnedMessage) -> Option<&str> {
    crate::headers::find(message.headers(), RECORD_TYPE_HEADER)
        .and_then(|v| std::str::from_utf8(v).ok())
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Writes one partition's work, retrying transient failures under the policy; tells
/// `retrying` at the first failure so the loop can pause the partition.
async fn write<P: Projection, R: SchemaRegistry + 'static>(
    shared: Arc<Shared<P, R>>,
    work: Work<P::State>,
    retrying: tokio::sync::oneshot::Sender<()>,
) -> Result<Done, RuntimeError> {
    let policy = &shared.config.retry;
    let mut retrying = Some(retrying);
    let mut retries = 0;
    // Steps done survive a retry: a dead letter or command is not sent twice by this task.
    let mut letters_sent = 0;
    let mut commands_sent = 0;
    if let Some(error) = work.bad_partial {
        return Err(RuntimeError::Store(error));
    }
    loop {
        let attempt = async {
            while letters_sent < work.letters.len() {
                send_letter(&shared, &work.letters[letters_sent], retries).await?;
                letters_sent += 1;
            }
            if commands_sent < work.commands.len() {
                // Encoded in order first (a registry lookup may wait), then all enqueued in
                // order and awaited together: the idempotent producer keeps their order within
                // a partition, and the batch costs one round trip instead of one per command
                // (the quest processor sends thousands in a catch-up). After a failure the
                // retry resends from the first command not acknowledged (a later one that was
                // delivered anyway is then sent twice; commands carry ids derived from their
                // cause for that).
                let mut encoded = Vec::with_capacity(work.commands.len() - commands_sent);
                for command in &work.commands[commands_sent..] {
                    encoded.push(encode_command(&shared, command).await?);
                }
                send_commands(&shared, &encoded, &mut commands_sent).await?;
            }
            let started = Instant::now();
            let (store, metrics, config) = (&shared.store, &shared.metrics, &shared.config);
            let observe_row = |table, took| metrics.observe_cql_write(table, took);
            let observe_state = |took| metrics.observe_cql_write(store.state_table(), took);
            // Three steps, each acknowledged before the next: the partial rows; then their sums
            // together with the entities' rows; then the entities' states. See
            // `crate::projection` (partial rows) for why this order keeps the sums exact.
            let (in_flight, batch_bytes) = (config.max_in_flight, config.batch_bytes);
            store
                .write_all(&work.partial_rows, in_flight, batch_bytes, observe_row)
                .await
                .map_err(Failure::Store)?;
            // Both run to the end even when one fails, so that a failed row leaves the sums
            // saved or not saved, never half of the requests in flight cancelled.
            let (sums, rows) = tokio::join!(
                store.save_all(
                    &work.source,
                    &work.partials,
                    config.state_encoding,
                    (in_flight, batch_bytes),
                    observe_state
                ),
                store.write_all(&work.rows, in_flight, batch_bytes, observe_row),
            );
            rows.and(sums).map_err(Failure::Store)?;
            // The states share one CQL partition (the source partition): batched.
            store
                .save_all(
                    &work.source,
                    &work.states,
                    config.state_encoding,
                    (in_flight, batch_bytes),
                    observe_state,
                )
                .await
                .map_err(Failure::Store)?;
            debug!(source = %work.source, rows = work.rows.len(), states = work.states.len(), took = ?started.elapsed(), "Partition work written.");
            Ok::<(), Failure>(())
        };
        let error = match attempt.await {
            Ok(()) => break,
            Err(Failure::Store(error @ StoreError::BadRow { .. })) => {
                return Err(RuntimeError::Store(error))
            }
            Err(error) => error,
        };
        let code = error.code();
        shared.metrics.record_error(code);
        let error = error.to_string();
        if retries >= policy.max_retries {
            return Err(RuntimeError::RetriesExhausted {
                topic: work.key.0.clone(),
                partition: work.key.1,
                retries,
                last_error: error,
            });
        }
        if let Some(noticed) = retrying.take() {
            let _ = noticed.send(());
        }
        retries += 1;
        shared.metrics.record_retry(code);
        let wait = policy.delay(retries);
        warn!(source = %work.source, retry = retries, ?wait, %error, "Writing failed with a transient error; the partition waits and retries.");
        tokio::time::sleep(wait).await;
    }
    let now = now_ms();
    for (timestamp_micros, event_type) in &work.applied {
        let age_ms = now
            .saturating_sub(timestamp_micros.div_euclid(1_000))
            .max(0);
        shared
            .metrics
            .observe_freshness(Duration::from_millis(age_ms.unsigned_abs()));
        shared.metrics.record_event_processed(event_type);
    }
    for letter in &work.letters {
        shared.metrics.record_dead_letter(letter.rejection.class);
    }
    for command in &work.commands {
        shared.metrics.record_command_sent(command.record_type());
    }
    if work.rewind_to.is_some() {
        // A transient decode failure: wait as a retry would before the partition is re-read.
        if work.decode_retries > policy.max_retries {
            return Err(RuntimeError::RetriesExhausted {
                topic: work.key.0.clone(),
                partition: work.key.1,
                retries: work.decode_retries,
                last_error: "decoding kept failing with transient errors".to_owned(),
            });
        }
        if let Some(noticed) = retrying.take() {
            let _ = noticed.send(());
        }
        tokio::time::sleep(policy.delay(work.decode_retries)).await;
    }
    Ok(Done {
        key: work.key,
        last_offset: work.last_offset,
        rewind_to: work.rewind_to,
        retries,
    })
}

/// A failed write step.
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error(transparent)]
    Store(StoreError),
    #[error("Kafka: {0}")]
    Kafka(KafkaError),
    #[error("encoding a command: {0}")]
    Encode(String),
}

impl Failure {
    /// The `error_code` label.
    fn code(&self) -> &'static str {
        match self {
            Failure::Store(_) => "cql",
            Failure::Kafka(_) => "kafka",
            Failure::Encode(_) => "encode",
        }
    }
}

async fn send_letter<P: Projection, R>(
    shared: &Shared<P, R>,
    letter: &Letter,
    retries: u32,
) -> Result<(), Failure> {
    let message = &letter.message;
    let headers = crate::headers::read(message.headers());
    if let Some(problem) = headers.problem() {
        warn!(topic = message.topic(), partition = message.partition(), offset = message.offset(), %problem, "Dead-lettering a record with unreadable headers.");
    }
    let original = headers.to_owned_pairs();
    let topic = &shared.topics.dead_letter;
    let context = DeadLetter {
        original_topic: message.topic(),
        original_partition: message.partition(),
        original_offset: message.offset(),
        original_timestamp_ms: message.timestamp().to_millis(),
        error_class: letter.rejection.class,
        error_message: &letter.rejection.message,
        processor: &shared.topics.processor,
        dead_letter_topic: topic,
        retry_count: retries,
        max_retries: shared.config.retry.max_retries,
        failed_at_ms: now_ms(),
    };
    let mut all = dead_letter_headers(&original, &context);
    // A dead letter failed again by a rebuild says which generation failed it last.
    all.retain(|(name, _)| name != DLQ_GENERATION);
    all.push((
        DLQ_GENERATION.to_owned(),
        Some(shared.store.generation().to_string().into_bytes()),
    ));
    let mut headers = OwnedHeaders::new();
    for (key, value) in all {
        headers = headers.insert(Header {
            key: &key,
            value: value.as_deref(),
        });
    }
    let mut record = FutureRecord::<[u8], [u8]>::to(topic).headers(headers);
    if let Some(key) = message.key() {
        record = record.key(key);
    }
    if let Some(payload) = message.payload() {
        record = record.payload(payload);
    }
    shared
        .producer
        .send(record, Duration::from_secs(30))
        .await
        .map(drop)
        .map_err(|(error, _)| Failure::Kafka(error))?;
    warn!(topic = message.topic(), partition = message.partition(), offset = message.offset(), class = letter.rejection.class, error = %letter.rejection.message, "Record dead-lettered.");
    Ok(())
}

/// A command ready to send: its topic, partition, key and encoded value.
struct EncodedCommand<'a> {
    topic: &'a str,
    partition: i32,
    aggregate_id: &'a str,
    record_type: &'static str,
    payload: Vec<u8>,
}

async fn encode_command<'a, P: Projection, R: SchemaRegistry>(
    shared: &'a Shared<P, R>,
    command: &'a Command,
) -> Result<EncodedCommand<'a>, Failure> {
    let Some((topic, partitions)) = &shared.topics.commands else {
        return Err(Failure::Encode(format!(
            "processor {} sends commands but the topology gives it no command topic to write",
            shared.topics.processor
        )));
    };
    let aggregate_id = command.header().aggregate_id.as_str();
    let payload = command
        .encode(&shared.codec, topic)
        .await
        .map_err(|e| Failure::Encode(e.to_string()))?;
    Ok(EncodedCommand {
        topic,
        partition: partition_for(aggregate_id, *partitions),
        aggregate_id,
        record_type: command.record_type(),
        payload,
    })
}

/// Enqueues `commands` in order and waits for their acknowledgements, adding to `acknowledged`
/// the leading ones acknowledged (also when one fails). A full producer queue is waited out by
/// awaiting what is in flight, so the enqueue order (the order within a partition) holds.
async fn send_commands<P: Projection, R: SchemaRegistry>(
    shared: &Shared<P, R>,
    commands: &[EncodedCommand<'_>],
    acknowledged: &mut usize,
) -> Result<(), Failure> {
    let mut in_flight = Vec::new();
    for command in commands {
        loop {
            let headers = OwnedHeaders::new()
                .insert(Header {
                    key: RECORD_TYPE_HEADER,
                    value: Some(command.record_type),
                })
                .insert(Header {
                    key: SOURCE,
                    value: Some(shared.topics.processor.as_str()),
                })
                .insert(Header {
                    key: ROUTING_KEY,
                    value: Some(command.aggregate_id),
                });
            let record = FutureRecord::to(command.topic)
                .key(command.aggregate_id)
                .payload(&command.payload)
                .partition(command.partition)
                .headers(headers);
            match shared.producer.send_result(record) {
                Ok(delivery) => {
                    in_flight.push(delivery);
                    break;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _))
                    if !in_flight.is_empty() =>
                {
                    acknowledge(std::mem::take(&mut in_flight), acknowledged).await?;
                }
                Err((error, _)) => return Err(Failure::Kafka(error)),
            }
        }
    }
    acknowledge(in_flight, acknowledged).await
}

/// Awaits deliveries in order, counting them in `acknowledged` up to the first failure.
async fn acknowledge(
    deliveries: Vec<DeliveryFuture>,
    acknowledged: &mut usize,
) -> Result<(), Failure> {
    for delivery in deliveries {
        match delivery.await {
            Ok(Ok(_)) => *acknowledged += 1,
            Ok(Err((error, _))) => return Err(Failure::Kafka(error)),
            Err(_canceled) => return Err(Failure::Kafka(KafkaError::Canceled)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_loop_refetches_promptly_unless_configured_otherwise() {
        let config = consumer_config(&ClientConfig::new(), "g");
        assert_eq!(
            config.get("fetch.queue.backoff.ms"),
            Some(FETCH_QUEUE_BACKOFF_MS)
        );
        let mut kafka = ClientConfig::new();
        kafka.set("fetch.queue.backoff.ms", "1000");
        let config = consumer_config(&kafka, "g");
        assert_eq!(config.get("fetch.queue.backoff.ms"), Some("1000"));
        assert_eq!(config.get("group.id"), Some("g"));
    }
}
