//! The command processor's loop: consume `diet.commands`, decide each command against its
//! aggregate, and write the events, snapshots, reply and consumer offsets in one Kafka
//! transaction (DESIGN decision 3).
//!
//! Guarantee: every command is answered exactly once and its events are appended exactly once,
//! because the events, the reply and the consumed offset commit or abort together; offsets are
//! committed through the producer with the consumer's group metadata (KIP-447), so an instance
//! that lost its partitions in a rebalance cannot commit them any more. Condition: every instance
//! has its own stable `instance_id` (its transactional id), and consumers of the event and reply
//! topics read with `isolation.level=read_committed`.
//!
//! State changes made by the commands of an open transaction are kept apart (`pending`) and only
//! become the committed state when the transaction commits; an aborted transaction drops them
//! and rewinds the consumer to its first command, so the state never runs ahead of the log.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dietstream_schemas::codec::{Codec, CodecError, RECORD_TYPE_HEADER};
use dietstream_schemas::headers::{self, DeadLetter};
use dietstream_schemas::registry::SchemaRegistry;
use dietstream_schemas::types::{
    Accepted, AggregateSnapshot, CommandHeader, CommandResult, RejectionReason,
    UnionAcceptedRejected,
};
use dietstream_schemas::{codec::Record, Command, Event};
use dietstream_topology::partition_for;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};
use tracing::{debug, error, info, warn};

use crate::config::CommandsConfig;
use crate::domain::{apply, decide, Aggregate, AggregateKind, Rejection, STATE_FORMAT};
use crate::restore::{restore_partitions, AggregateKey, Restored};
use crate::topics::{Topics, PROCESSOR};

/// How often a wait on the producer (queue room, outstanding deliveries) looks again.
const DELIVERY_CHECK: Duration = Duration::from_micros(500);

/// Why the command processor stopped.
#[derive(Debug, thiserror::Error)]
pub enum ProcessorError {
    /// A Kafka client call failed in a way the loop cannot recover from (fenced by a newer
    /// instance with the same transactional id, broker unreachable past the timeouts).
    #[error("Kafka: {0}")]
    Kafka(#[from] KafkaError),
    /// The schema registry stayed unreachable through every retry.
    #[error("schema registry: {0}")]
    Codec(#[from] CodecError),
    /// The event log contradicts itself (a version gap, an undecodable event). Needs a human.
    #[error("event log is inconsistent: {0}")]
    CorruptLog(String),
    /// Restoring a partition made no progress.
    #[error("restoring {topic} partition {partition}: no record for {waited:?} before its end")]
    RestoreStalled {
        /// The topic being read.
        topic: String,
        /// Its partition.
        partition: i32,
        /// How long nothing came.
        waited: Duration,
    },
    /// The blocking loop panicked or was cancelled.
    #[error("processor thread ended abnormally: {0}")]
    Thread(String),
}

impl ProcessorError {
    /// True when restarting the processor may help (everything but a corrupt log).
    pub fn is_retryable(&self) -> bool {
        !matches!(self, ProcessorError::CorruptLog(_))
    }
}

/// Counters of one run, returned when it stops.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RunSummary {
    /// Commands answered with Accepted.
    pub accepted: u64,
    /// Commands answered with Rejected.
    pub rejected: u64,
    /// Records sent to the dead-letter topic.
    pub dead_lettered: u64,
    /// Events appended.
    pub events: u64,
    /// Snapshots written.
    pub snapshots: u64,
    /// Transactions committed.
    pub transactions: u64,
    /// Transactions aborted (their commands are processed again).
    pub aborted: u64,
}

/// Runs the command processor until `shutdown` resolves, then finishes the open transaction
/// and leaves the group. `kafka` holds the connection settings only (bootstrap servers,
/// security); the processor adds the consumer, producer and transaction settings.
pub async fn run<R: SchemaRegistry + Send + Sync + 'static>(
    kafka: ClientConfig,
    topics: Topics,
    codec: Arc<Codec<R>>,
    config: CommandsConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<RunSummary, ProcessorError> {
    let stop = Arc::new(AtomicBool::new(false));
    // Dropping this future (a cancelled task, a runtime shutting down) also stops the loop,
    // which would otherwise run on in its thread with nobody to answer to.
    let _stop_on_drop = StopOnDrop(Arc::clone(&stop));
    let runtime = tokio::runtime::Handle::current();
    let thread_stop = Arc::clone(&stop);
    let mut worker = tokio::task::spawn_blocking(move || {
        run_blocking(kafka, topics, codec, config, runtime, &thread_stop)
    });
    tokio::select! {
        joined = &mut worker => return joined.map_err(|e| ProcessorError::Thread(e.to_string()))?,
        () = shutdown => stop.store(true, Ordering::SeqCst),
    }
    worker
        .await
        .map_err(|e| ProcessorError::Thread(e.to_string()))?
}

/// Sets the stop flag when dropped.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

fn run_blocking<R: SchemaRegistry>(
    kafka: ClientConfig,
    topics: Topics,
    codec: Arc<Codec<R>>,
    config: CommandsConfig,
    runtime: tokio::runtime::Handle,
    stop: &AtomicBool,
) -> Result<RunSummary, ProcessorError> {
    let transactional_id = format!("{}.{}", topics.group, config.instance_id);
    let mut producer_config = kafka.clone();
    if producer_config.get("retry.backoff.ms").is_none() {
        // Right after a commit the coordinator is still writing the transaction markers and
        // answers the next transaction's first request with CONCURRENT_TRANSACTIONS; at
        // librdkafka's default backoff (100 ms) every such retry adds 100 ms to a commit.
        // Measured locally: commits of 7-19 ms, or 108 ms when they hit this retry.
        producer_config.set("retry.backoff.ms", "10");
    }
    let producer: ThreadedProducer<DefaultProducerContext> = producer_config
        .set("transactional.id", &transactional_id)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("compression.type", "zstd")
        .set("linger.ms", "5")
        .set(
            "transaction.timeout.ms",
            config.transaction_timeout.as_millis().to_string(),
        )
        .create()?;
    // Aborts whatever the previous run with this transactional id left open, and fences it.
    producer.init_transactions(config.kafka_call_timeout)?;
    info!(%transactional_id, "Transactions initialised.");

    let state = Mutex::new(State {
        producer,
        codec,
        runtime,
        restore_config: kafka.clone(),
        topics: topics.clone(),
        config: config.clone(),
        partitions: HashMap::new(),
        tx: None,
        fatal: None,
        summary: RunSummary::default(),
    });
    let consumer: BaseConsumer<Context<R>> = kafka
        .clone()
        .set("group.id", &topics.group)
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("auto.offset.reset", "earliest")
        .set("partition.assignment.strategy", "cooperative-sticky")
        .create_with_context(Context { state })?;
    consumer.subscribe(&[&topics.commands])?;
    info!(topic = %topics.commands, group = %topics.group, "Command processor started.");

    loop {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let wait = lock(&consumer.context().state).time_to_commit();
        let polled = consumer.poll(wait);
        let mut state = lock(&consumer.context().state);
        match polled {
            Some(Ok(message)) => state.process(&message, &consumer),
            Some(Err(e)) => warn!(error = %e, "Consumer error; going on."),
            None => {}
        }
        if state.fatal.is_none() && state.commit_due() {
            state.commit(&consumer);
        }
        if let Some(fatal) = state.fatal.take() {
            error!(error = %fatal, "Command processor stops.");
            state.abort(&consumer);
            return Err(fatal);
        }
    }
    let mut state = lock(&consumer.context().state);
    state.commit(&consumer);
    let summary = state.summary.clone();
    if let Some(fatal) = state.fatal.take() {
        return Err(fatal);
    }
    drop(state);
    consumer.unsubscribe();
    info!(?summary, "Command processor stopped.");
    Ok(summary)
}

/// Runs a codec call (`$call`, an expression using `$state.codec`), retrying while the registry
/// does not answer, under the RetryPolicy. Evaluates to the codec's own answer; returns
/// `ProcessorError::Codec` from the enclosing function when the retries run out.
macro_rules! retrying {
    ($state:ident, $call:expr) => {{
        let mut attempt = 0;
        loop {
            match $state.runtime.block_on($call) {
                Err(e) if e.is_retryable() => {
                    attempt += 1;
                    if attempt > $state.config.retry.max_retries {
                        return Err(ProcessorError::Codec(e));
                    }
                    let delay = $state.config.retry.delay(attempt);
                    warn!(attempt, ?delay, error = %e, "Schema registry unavailable; retrying.");
                    std::thread::sleep(delay);
                }
                other => break other,
            }
        }
    }};
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The consumer's context: rebalance callbacks run inside `poll`, on the loop's thread, and
/// reach the processor state through it.
struct Context<R> {
    state: Mutex<State<R>>,
}

impl<R: SchemaRegistry> ClientContext for Context<R> {}

impl<R: SchemaRegistry> ConsumerContext for Context<R> {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(revoked) = rebalance {
            let mut state = lock(&self.state);
            // The open transaction may hold commands of the revoked partitions: finish it
            // before they go, so the next owner starts exactly after them.
            state.commit(consumer);
            for element in revoked.elements() {
                state.partitions.remove(&element.partition());
                info!(partition = element.partition(), "Partition revoked.");
            }
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(assigned) = rebalance {
            let mut state = lock(&self.state);
            let new: Vec<i32> = assigned
                .elements()
                .iter()
                .map(|e| e.partition())
                .filter(|p| !state.partitions.contains_key(p))
                .collect();
            if state.fatal.is_some() || new.is_empty() {
                return;
            }
            match state.restore(&new) {
                Ok(restored) => {
                    for (partition, restored) in restored {
                        state.partitions.insert(partition, restored.aggregates);
                    }
                }
                Err(e) => state.fatal = Some(e),
            }
        }
    }
}

/// The open transaction.
struct Transaction {
    started: Instant,
    commands: usize,
    /// First offset processed per partition: where to rewind to if the transaction aborts.
    first_offsets: BTreeMap<i32, i64>,
    /// Next offset to consume per partition: what the transaction commits.
    next_offsets: BTreeMap<i32, i64>,
    /// Aggregates changed by this transaction's commands, per partition.
    pending: HashMap<i32, HashMap<AggregateKey, Aggregate>>,
    accepted: u64,
    rejected: u64,
    dead_lettered: u64,
    events: u64,
    snapshots: u64,
}

struct State<R> {
    producer: ThreadedProducer<DefaultProducerContext>,
    codec: Arc<Codec<R>>,
    runtime: tokio::runtime::Handle,
    restore_config: ClientConfig,
    topics: Topics,
    config: CommandsConfig,
    /// Committed state of the aggregates of each owned partition.
    partitions: HashMap<i32, HashMap<AggregateKey, Aggregate>>,
    tx: Option<Transaction>,
    fatal: Option<ProcessorError>,
    summary: RunSummary,
}

/// A record to produce inside the transaction.
struct Outgoing<'a> {
    topic: &'a str,
    partition: i32,
    key: &'a str,
    value: Option<&'a [u8]>,
    headers: OwnedHeaders,
    timestamp_ms: Option<i64>,
}

impl<R: SchemaRegistry> State<R> {
    fn restore(&self, partitions: &[i32]) -> Result<HashMap<i32, Restored>, ProcessorError> {
        restore_partitions(
            &self.restore_config,
            &self.topics,
            partitions,
            &self.codec,
            &self.runtime,
            self.config.restore_stall_timeout,
        )
    }

    fn time_to_commit(&self) -> Duration {
        match &self.tx {
            Some(tx) => self
                .config
                .commit_interval
                .saturating_sub(tx.started.elapsed()),
            None => self.config.commit_interval,
        }
    }

    fn commit_due(&self) -> bool {
        self.tx.as_ref().is_some_and(|tx| {
            tx.commands >= self.config.max_commands_per_transaction
                || tx.started.elapsed() >= self.config.commit_interval
        })
    }

    fn process(&mut self, message: &BorrowedMessage<'_>, consumer: &BaseConsumer<Context<R>>) {
        let partition = message.partition();
        if !self.partitions.contains_key(&partition) {
            // Not restored (a restore failed and the loop is about to stop): never decide a
            // command without its aggregate's state.
            return;
        }
        if self.tx.is_none() {
            if let Err(e) = self.producer.begin_transaction() {
                self.fatal = Some(e.into());
                return;
            }
            self.tx = Some(Transaction {
                started: Instant::now(),
                commands: 0,
                first_offsets: BTreeMap::new(),
                next_offsets: BTreeMap::new(),
                pending: HashMap::new(),
                accepted: 0,
                rejected: 0,
                dead_lettered: 0,
                events: 0,
                snapshots: 0,
            });
        }
        if let Err(e) = self.handle(message) {
            self.fatal = Some(e);
            return;
        }
        if let Some(tx) = self.tx.as_mut() {
            tx.commands += 1;
            tx.first_offsets
                .entry(partition)
                .or_insert(message.offset());
            tx.next_offsets.insert(partition, message.offset() + 1);
        }
        if self.commit_due() {
            self.commit(consumer);
        }
    }

    /// Decodes, decides and produces everything one command leads to.
    fn handle(&mut self, message: &BorrowedMessage<'_>) -> Result<(), ProcessorError> {
        let Some(value) = message.payload() else {
            return self.dead_letter(message, "empty_value", "the record has no value");
        };
        let decoded = retrying!(self, self.codec.decode_command(value));
        match decoded {
            Ok(command) => self.execute(message.partition(), &command),
            Err(CodecError::UnexpectedType { found, .. }) => {
                // A record type this build does not know as a command: answer it if it has a
                // command header, so its sender is not left waiting.
                match retrying!(self, self.codec.decode_command_header(value)) {
                    Ok(header) => self.reply(
                        &header,
                        Err(Rejection {
                            reason: RejectionReason::UnknownCommand,
                            message: format!("{found} is not a command this processor knows"),
                            field: None,
                            expected_version: None,
                            current_version: None,
                        }),
                    ),
                    Err(e) => self.dead_letter(message, error_class(&e), &e.to_string()),
                }
            }
            Err(e) => self.dead_letter(message, error_class(&e), &e.to_string()),
        }
    }

    fn execute(&mut self, partition: i32, command: &Command) -> Result<(), ProcessorError> {
        let header = command.header();
        let id = header.aggregate_id.clone();
        let owner = partition_for(&id, self.topics.partitions);
        if owner != partition {
            return self.reply(
                header,
                Err(Rejection {
                    reason: RejectionReason::ValidationError,
                    message: format!(
                        "aggregate {id:?} belongs to partition {owner} of {} but the command arrived on partition {partition}; send commands partitioned by aggregate id (murmur2)",
                        self.topics.commands
                    ),
                    field: Some("header.aggregate_id".to_owned()),
                    expected_version: None,
                    current_version: None,
                }),
            );
        }
        let Some(kind) = AggregateKind::of_command(command) else {
            return self.reply(
                header,
                Err(Rejection::unknown_aggregate(
                    format!(
                        "{} names aggregate type {:?}, which the command processor does not own",
                        command.record_type(),
                        header.aggregate_type
                    ),
                    0,
                )),
            );
        };
        let key = (kind, id);
        // The aggregate is only borrowed to decide; it is cloned once, for an accepted
        // command, to apply the events to.
        let empty = Aggregate::default();
        let current = self.aggregate(partition, &key).unwrap_or(&empty);
        let decision = decide(current, command, now_micros());
        let events = match decision {
            Ok(events) => events,
            Err(rejection) => return self.reply(header, Err(rejection)),
        };
        let mut next = current.clone();
        let current_version = current.version;
        for event in &events {
            if let Err(e) = apply(&mut next, event) {
                // decide and apply disagree: a bug. Refuse the command rather than append
                // events the aggregate cannot replay.
                error!(error = %e, command = command.record_type(), "Decided events do not apply.");
                return self.reply(
                    header,
                    Err(Rejection {
                        reason: RejectionReason::RuleViolation,
                        message: format!("internal error, the command was not applied: {e}"),
                        field: None,
                        expected_version: None,
                        current_version: Some(current_version),
                    }),
                );
            }
        }
        let event_topic = self.topics.events_of(kind).to_owned();
        for event in &events {
            self.append_event(&event_topic, partition, event)?;
        }
        let every = i64::from(self.config.snapshot_every);
        let asked = match command {
            Command::TakeSnapshot(c) => {
                info!(aggregate = %key.1, version = next.version, reason = %c.payload.reason, "Snapshot asked for.");
                true
            }
            _ => false,
        };
        if asked || (!events.is_empty() && next.version / every != current_version / every) {
            self.write_snapshot(kind, partition, &key.1, &next)?;
        }
        let event_ids = events.iter().map(|e| e.header().event_id).collect();
        let new_version = next.version;
        if let Some(tx) = self.tx.as_mut() {
            tx.events += events.len() as u64;
            tx.pending.entry(partition).or_default().insert(key, next);
        }
        self.reply(
            command.header(),
            Ok(Accepted {
                new_version,
                event_ids,
            }),
        )
    }

    /// The aggregate as the open transaction sees it; `None` if it does not exist yet.
    fn aggregate(&self, partition: i32, key: &AggregateKey) -> Option<&Aggregate> {
        let pending = self
            .tx
            .as_ref()
            .and_then(|tx| tx.pending.get(&partition))
            .and_then(|aggregates| aggregates.get(key));
        pending.or_else(|| {
            self.partitions
                .get(&partition)
                .and_then(|aggregates| aggregates.get(key))
        })
    }

    fn append_event(
        &mut self,
        topic: &str,
        partition: i32,
        event: &Event,
    ) -> Result<(), ProcessorError> {
        let header = event.header();
        let value = retrying!(self, event.encode(&self.codec, topic))?;
        let key = format!("{}/{}", header.aggregate_id, header.version);
        let headers = OwnedHeaders::new()
            .insert(text_header(RECORD_TYPE_HEADER, event.record_type()))
            .insert(text_header(headers::SOURCE, PROCESSOR))
            .insert(text_header(headers::ROUTING_KEY, &header.aggregate_id));
        self.send(Outgoing {
            topic,
            partition,
            key: &key,
            value: Some(&value),
            headers,
            timestamp_ms: Some(header.timestamp / 1000),
        })
    }

    fn write_snapshot(
        &mut self,
        kind: AggregateKind,
        partition: i32,
        id: &str,
        aggregate: &Aggregate,
    ) -> Result<(), ProcessorError> {
        let Some(last_event_id) = aggregate.last_event_id else {
            return Ok(());
        };
        let state = serde_json::to_vec(aggregate).map_err(|e| {
            ProcessorError::CorruptLog(format!("aggregate state does not serialise: {e}"))
        })?;
        let snapshot = AggregateSnapshot {
            aggregate_id: id.to_owned(),
            aggregate_type: kind.aggregate_type(),
            version: aggregate.version,
            last_event_id,
            taken_at: now_micros(),
            state_format: STATE_FORMAT.to_owned(),
            state,
        };
        let topic = self.topics.snapshots_of(kind).to_owned();
        let value = retrying!(self, self.codec.encode(&topic, &snapshot))?;
        let headers = OwnedHeaders::new()
            .insert(text_header(
                RECORD_TYPE_HEADER,
                AggregateSnapshot::RECORD_TYPE,
            ))
            .insert(text_header(headers::SOURCE, PROCESSOR));
        self.send(Outgoing {
            topic: &topic,
            partition,
            key: id,
            value: Some(&value),
            headers,
            timestamp_ms: None,
        })?;
        if let Some(tx) = self.tx.as_mut() {
            tx.snapshots += 1;
        }
        Ok(())
    }

    fn reply(
        &mut self,
        header: &CommandHeader,
        outcome: Result<Accepted, Rejection>,
    ) -> Result<(), ProcessorError> {
        let accepted = outcome.is_ok();
        let outcome = match outcome {
            Ok(accepted) => UnionAcceptedRejected::Accepted(accepted),
            Err(rejection) => {
                debug!(command = %header.command_type, reason = ?rejection.reason, message = %rejection.message, "Command rejected.");
                UnionAcceptedRejected::Rejected(rejection.into_record())
            }
        };
        let result = CommandResult {
            command_id: header.command_id,
            command_type: header.command_type.clone(),
            aggregate_id: header.aggregate_id.clone(),
            correlation_id: header.correlation_id.or(Some(header.command_id)),
            processed_at: now_micros(),
            outcome,
        };
        let topic = self.topics.results.clone();
        let value = retrying!(self, self.codec.encode(&topic, &result))?;
        let headers = OwnedHeaders::new()
            .insert(text_header(RECORD_TYPE_HEADER, CommandResult::RECORD_TYPE))
            .insert(text_header(headers::SOURCE, PROCESSOR))
            .insert(text_header(headers::ROUTING_KEY, &header.aggregate_id));
        let partition = partition_for(&header.aggregate_id, self.topics.result_partitions);
        self.send(Outgoing {
            topic: &topic,
            partition,
            key: &header.aggregate_id,
            value: Some(&value),
            headers,
            timestamp_ms: None,
        })?;
        if let Some(tx) = self.tx.as_mut() {
            if accepted {
                tx.accepted += 1;
            } else {
                tx.rejected += 1;
            }
        }
        Ok(())
    }

    /// Copies the record byte for byte to the dead-letter topic with the context headers, in
    /// the transaction: it leaves `diet.commands` exactly when its copy is committed.
    fn dead_letter(
        &mut self,
        message: &BorrowedMessage<'_>,
        error_class: &str,
        error_message: &str,
    ) -> Result<(), ProcessorError> {
        warn!(
            topic = message.topic(),
            partition = message.partition(),
            offset = message.offset(),
            error_class,
            error = error_message,
            "Command dead-lettered."
        );
        let mut headers = OwnedHeaders::new();
        // Headers whose name is not UTF-8 are left out (`headers::read`).
        for (key, value) in dietstream_runtime::headers::read(message.headers()).readable {
            headers = headers.insert(Header { key, value });
        }
        let letter = DeadLetter {
            original_topic: message.topic(),
            original_partition: message.partition(),
            original_offset: message.offset(),
            original_timestamp_ms: message.timestamp().to_millis(),
            error_class,
            error_message,
            processor: PROCESSOR,
            dead_letter_topic: &self.topics.dead_letter,
            retry_count: 0,
            max_retries: self.config.retry.max_retries,
            failed_at_ms: now_micros() / 1000,
        };
        for (name, value) in letter.headers() {
            headers = headers.insert(text_header(name, &value));
        }
        let key = message
            .key()
            .map(|k| String::from_utf8_lossy(k).into_owned());
        let topic = self.topics.dead_letter.clone();
        let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(&topic).headers(headers);
        if let Some(key) = message.key() {
            record = record.key(key);
        }
        if let Some(value) = message.payload() {
            record = record.payload(value);
        }
        debug!(key = ?key, "Dead letter queued.");
        self.send_record(record)?;
        if let Some(tx) = self.tx.as_mut() {
            tx.dead_lettered += 1;
        }
        Ok(())
    }

    fn send(&mut self, outgoing: Outgoing<'_>) -> Result<(), ProcessorError> {
        let mut record: BaseRecord<'_, str, [u8]> = BaseRecord::to(outgoing.topic)
            .partition(outgoing.partition)
            .key(outgoing.key)
            .headers(outgoing.headers);
        if let Some(value) = outgoing.value {
            record = record.payload(value);
        }
        if let Some(timestamp) = outgoing.timestamp_ms {
            record = record.timestamp(timestamp);
        }
        self.send_record(record)
    }

    fn send_record<K: rdkafka::message::ToBytes + ?Sized>(
        &mut self,
        mut record: BaseRecord<'_, K, [u8]>,
    ) -> Result<(), ProcessorError> {
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    // The producer's queue drains in its own thread; wait for room.
                    record = back;
                    std::thread::sleep(DELIVERY_CHECK);
                }
                Err((e, _)) => return Err(e.into()),
            }
        }
    }

    /// Commits the open transaction (a no-op without one). On an abortable error the
    /// transaction is aborted and its commands are consumed again.
    fn commit(&mut self, consumer: &BaseConsumer<Context<R>>) {
        let Some(tx) = self.tx.take() else {
            return;
        };
        let commit_started = Instant::now();
        let committed = self.try_commit(&tx, consumer);
        match committed {
            Ok(()) => {
                for (partition, changed) in tx.pending {
                    if let Some(aggregates) = self.partitions.get_mut(&partition) {
                        aggregates.extend(changed);
                    }
                }
                let summary = &mut self.summary;
                summary.transactions += 1;
                summary.accepted += tx.accepted;
                summary.rejected += tx.rejected;
                summary.dead_lettered += tx.dead_lettered;
                summary.events += tx.events;
                summary.snapshots += tx.snapshots;
                debug!(
                    commands = tx.commands,
                    events = tx.events,
                    open = ?tx.started.elapsed(),
                    commit = ?commit_started.elapsed(),
                    "Transaction committed."
                );
            }
            Err(KafkaError::Transaction(e)) if e.txn_requires_abort() => {
                warn!(error = %e, commands = tx.commands, "Transaction failed; aborting it and processing its commands again.");
                self.abort_and_rewind(&tx, consumer);
            }
            Err(e) => {
                self.fatal = Some(e.into());
            }
        }
    }

    fn try_commit(
        &self,
        tx: &Transaction,
        consumer: &BaseConsumer<Context<R>>,
    ) -> Result<(), KafkaError> {
        let mut offsets = TopicPartitionList::new();
        for (partition, next) in &tx.next_offsets {
            offsets.add_partition_offset(
                &self.topics.commands,
                *partition,
                Offset::Offset(*next),
            )?;
        }
        let metadata = consumer.group_metadata().ok_or_else(|| {
            KafkaError::Subscription("the consumer has no group metadata to commit with".to_owned())
        })?;
        self.producer.send_offsets_to_transaction(
            &offsets,
            &metadata,
            self.config.kafka_call_timeout,
        )?;
        self.await_deliveries()?;
        self.producer
            .commit_transaction(self.config.kafka_call_timeout)
    }

    /// Waits until every record sent so far is acknowledged and its delivery report served.
    ///
    /// `commit_transaction` flushes first, and rust-rdkafka's flush polls in slices of
    /// 100 ms that always run to their end: with a single record still in flight (there is
    /// nearly always one, `linger.ms` holds it back) each commit cost at least 100 ms. The
    /// producer's own thread serves the delivery reports, so watching the count is enough, and
    /// the flush inside the commit then finds nothing to wait for.
    fn await_deliveries(&self) -> Result<(), KafkaError> {
        let deadline = Instant::now() + self.config.kafka_call_timeout;
        while self.producer.in_flight_count() > 0 {
            if Instant::now() >= deadline {
                return Err(KafkaError::Flush(RDKafkaErrorCode::OperationTimedOut));
            }
            std::thread::sleep(DELIVERY_CHECK);
        }
        Ok(())
    }

    fn abort_and_rewind(&mut self, tx: &Transaction, consumer: &BaseConsumer<Context<R>>) {
        if let Err(e) = self
            .producer
            .abort_transaction(self.config.kafka_call_timeout)
        {
            self.fatal = Some(e.into());
            return;
        }
        self.summary.aborted += 1;
        for (partition, first) in &tx.first_offsets {
            if !self.partitions.contains_key(partition) {
                continue;
            }
            if let Err(e) = consumer.seek(
                &self.topics.commands,
                *partition,
                Offset::Offset(*first),
                self.config.kafka_call_timeout,
            ) {
                self.fatal = Some(e.into());
                return;
            }
        }
    }

    /// Aborts the open transaction on the way out after a fatal error.
    fn abort(&mut self, consumer: &BaseConsumer<Context<R>>) {
        if let Some(tx) = self.tx.take() {
            self.abort_and_rewind(&tx, consumer);
        }
    }
}

fn text_header<'a>(key: &'a str, value: &'a str) -> Header<'a, &'a [u8]> {
    Header {
        key,
        value: Some(value.as_bytes()),
    }
}

/// The bounded error code of a codec failure (the DLQ `error_class` header and metric label).
fn error_class(error: &CodecError) -> &'static str {
    match error {
        CodecError::BadMagic { .. } => "bad_magic",
        CodecError::TooShort { .. } => "truncated",
        CodecError::UnknownSchemaId { .. } => "unknown_schema_id",
        CodecError::UnexpectedType { .. } => "unexpected_type",
        CodecError::BadBody { .. } => "invalid_payload",
        CodecError::Encode { .. } => "encode_failed",
        CodecError::Registry(_) => "registry_unavailable",
    }
}

fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}
