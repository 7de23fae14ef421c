//! The command bus: how game services (and the simulator) send commands to the command
//! processor and wait for its reply.
//!
//! A command goes to `diet.commands` with key = aggregate id, the partition set explicitly to
//! `partition_for(aggregate id)` (the same murmur2 the Java clients use, so every client agrees
//! on the partition), and the headers of the contract (`event_type`, `dietstream.source`,
//! `dietstream.routing_key`). The processor answers each command with one `CommandResult` on
//! `diet.command-results`; one background task reads that topic and hands each result to the
//! caller waiting for its command id.
//!
//! The reply listener is *assigned* every partition of the results topic rather than joining a
//! consumer group: every bus instance must see every reply (a reply lands on the partition of
//! the aggregate, not of the sender), and a group would split the partitions between instances.
//! It starts at the end offsets taken when the bus is built, so it never reads old replies, and
//! reads `read_committed`, because results are written in the processor's transaction and an
//! aborted transaction's result must not be reported.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use dietstream_schemas::catalog::{Catalog, CatalogError};
use dietstream_schemas::codec::{Codec, CodecError, Record, RECORD_TYPE_HEADER};
use dietstream_schemas::registry::{ConfluentRegistry, RegistryError};
use dietstream_schemas::types::{CommandResult, RejectionReason, UnionAcceptedRejected};
use dietstream_schemas::Command;
use dietstream_topology::{partition_for, Kind, Topology, TopologyError};
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::config::{Config, KafkaConfig};

/// Kafka header naming the service that produced a record.
pub use dietstream_schemas::headers::SOURCE as SOURCE_HEADER;

/// Kafka header carrying the aggregate id, the partitioner input; on `diet.commands` it equals
/// the key.
pub use dietstream_schemas::headers::ROUTING_KEY as ROUTING_KEY_HEADER;

/// The codec the bus encodes commands and decodes results with.
pub type BusCodec = Codec<ConfluentRegistry>;

/// Where the bus sends and listens, and how it names itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BusOptions {
    /// Value of the `dietstream.source` header, e.g. `game-api` or `simulator`.
    pub source: String,
    /// The commands topic (`diet.commands`, prefixed).
    pub commands_topic: String,
    /// The command results topic (`diet.command-results`, prefixed).
    pub results_topic: String,
    /// Upper bound for the start-up calls (metadata, end offsets) and for one produce.
    pub request_timeout: Duration,
}

impl BusOptions {
    /// The topics of the configured topology (`topology.profile`, `topology.prefix`) and the
    /// configured Kafka request timeout.
    pub fn from_config(config: &Config, source: impl Into<String>) -> Result<BusOptions, BusError> {
        let desired =
            Topology::embedded()?.resolve(config.topology.profile, &config.topology.prefix)?;
        let topic_of = |kind: Kind| {
            desired
                .topics
                .iter()
                .find(|t| t.kind == kind)
                .map(|t| t.name.clone())
                .ok_or(BusError::NoTopicInTopology { kind: kind.name() })
        };
        Ok(BusOptions {
            source: source.into(),
            commands_topic: topic_of(Kind::Command)?,
            results_topic: topic_of(Kind::CommandResult)?,
            request_timeout: config.kafka.request_timeout,
        })
    }
}

/// What the command processor decided about one command.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum CommandOutcome {
    /// The command was applied; its events are on the event topic.
    Accepted {
        /// Version of the aggregate after the command's events.
        new_version: i64,
        /// Ids of the events appended, in order (empty when nothing changed).
        event_ids: Vec<Uuid>,
    },
    /// The command was not applied; nothing was appended.
    Rejected {
        /// Why.
        reason: RejectionReason,
        /// Human-readable explanation; not for parsing.
        message: String,
        /// Dotted path of the invalid field, for validation errors.
        field: Option<String>,
        /// The command's expected version, for concurrency conflicts.
        expected_version: Option<i64>,
        /// The aggregate's current version, for concurrency conflicts and unknown aggregates.
        current_version: Option<i64>,
    },
}

impl CommandOutcome {
    /// True when the command was applied.
    pub fn is_accepted(&self) -> bool {
        matches!(self, CommandOutcome::Accepted { .. })
    }

    /// The aggregate's version after an accepted command.
    pub fn new_version(&self) -> Option<i64> {
        match self {
            CommandOutcome::Accepted { new_version, .. } => Some(*new_version),
            CommandOutcome::Rejected { .. } => None,
        }
    }

    /// The rejection reason, for a rejected command.
    pub fn rejection_reason(&self) -> Option<RejectionReason> {
        match self {
            CommandOutcome::Accepted { .. } => None,
            CommandOutcome::Rejected { reason, .. } => Some(*reason),
        }
    }
}

impl From<CommandResult> for CommandOutcome {
    fn from(result: CommandResult) -> Self {
        match result.outcome {
            UnionAcceptedRejected::Accepted(a) => CommandOutcome::Accepted {
                new_version: a.new_version,
                event_ids: a.event_ids,
            },
            UnionAcceptedRejected::Rejected(r) => CommandOutcome::Rejected {
                reason: r.reason,
                message: r.message,
                field: r.field,
                expected_version: r.expected_version,
                current_version: r.current_version,
            },
        }
    }
}

/// Why the bus could not be built, or a command not sent or answered.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The embedded topology is invalid or the prefix does not fit. Permanent.
    #[error("topology: {0}")]
    Topology(#[from] TopologyError),
    /// The topology has no topic of a kind the bus needs. Permanent.
    #[error("the topology has no {kind} topic")]
    NoTopicInTopology {
        /// The kind looked for.
        kind: &'static str,
    },
    /// The embedded schema catalog is invalid. Permanent.
    #[error("schema catalog: {0}")]
    Catalog(#[from] CatalogError),
    /// The schema registry client could not be built. Retryable when the registry did not
    /// answer.
    #[error("schema registry: {0}")]
    Registry(#[from] RegistryError),
    /// A Kafka client could not be created (invalid property). Permanent.
    #[error("cannot create the Kafka {role}: {source}")]
    Client {
        /// `producer` or `reply listener`.
        role: &'static str,
        /// What librdkafka said.
        source: KafkaError,
    },
    /// A topic the bus needs does not exist (run `dietstream topology apply`). Permanent until
    /// someone creates it.
    #[error("topic {topic} does not exist; run `dietstream topology apply`")]
    MissingTopic {
        /// The topic.
        topic: String,
    },
    /// A start-up request to the cluster failed (metadata, end offsets, assignment).
    /// Retryable: the cluster may be starting.
    #[error("Kafka {operation} on {topic} failed: {source}")]
    Cluster {
        /// What was asked.
        operation: &'static str,
        /// The topic concerned.
        topic: String,
        /// What librdkafka said.
        source: KafkaError,
    },
    /// The command could not be encoded (registry unreachable, or a value that does not fit
    /// the schema). Retryable only when the registry did not answer.
    #[error("cannot encode command {command_id}: {source}")]
    Encode {
        /// The command.
        command_id: Uuid,
        /// What the codec said.
        source: CodecError,
    },
    /// Kafka did not acknowledge the command. Retryable unless the broker refused the record
    /// itself (too large, not authorised); resend it with the same command id.
    #[error("cannot send command {command_id} to {topic}: {source}")]
    Produce {
        /// The command.
        command_id: Uuid,
        /// The commands topic.
        topic: String,
        /// What librdkafka said.
        source: KafkaError,
    },
    /// No result arrived within the timeout. Retryable: the command may or may not have been
    /// applied, so resend it with the same command id and the same expected version (a
    /// duplicate is then rejected as a concurrency conflict, never applied twice).
    #[error("no result for command {command_id} within {timeout:?}")]
    Timeout {
        /// The command.
        command_id: Uuid,
        /// How long the caller waited.
        timeout: Duration,
    },
    /// A command with this id is already waiting for its result on this bus: command ids must
    /// be unique. Permanent (a bug in the caller).
    #[error("command {command_id} is already waiting for its result")]
    DuplicateCommandId {
        /// The command.
        command_id: Uuid,
    },
    /// The reply listener stopped, so no result can arrive. Permanent for this bus: build a
    /// new one.
    #[error("the reply listener stopped; command {command_id} gets no result")]
    ListenerStopped {
        /// The command that was waiting.
        command_id: Uuid,
    },
}

impl BusError {
    /// True when the same call may succeed later without changing code or settings.
    pub fn is_retryable(&self) -> bool {
        match self {
            BusError::Registry(e) => e.is_retryable(),
            BusError::Encode { source, .. } => source.is_retryable(),
            BusError::Produce { source, .. } => !matches!(
                source.rdkafka_error_code(),
                Some(
                    RDKafkaErrorCode::MessageSizeTooLarge
                        | RDKafkaErrorCode::InvalidMessageSize
                        | RDKafkaErrorCode::TopicAuthorizationFailed
                        | RDKafkaErrorCode::ClusterAuthorizationFailed
                        | RDKafkaErrorCode::UnknownPartition
                        | RDKafkaErrorCode::UnknownTopic
                        | RDKafkaErrorCode::InvalidRecord
                )
            ),
            BusError::Cluster { .. } | BusError::Timeout { .. } => true,
            BusError::Topology(_)
            | BusError::NoTopicInTopology { .. }
            | BusError::Catalog(_)
            | BusError::Client { .. }
            | BusError::MissingTopic { .. }
            | BusError::DuplicateCommandId { .. }
            | BusError::ListenerStopped { .. } => false,
        }
    }
}

/// Callers waiting for a result, by command id.
type Pending = Arc<Mutex<HashMap<Uuid, oneshot::Sender<CommandResult>>>>;

/// The client side of the command processor: sends commands and matches their results.
///
/// Cheap to share behind an `Arc`; every method takes `&self`. Dropping the bus stops its
/// reply listener.
pub struct CommandBus {
    producer: FutureProducer,
    codec: Arc<BusCodec>,
    options: BusOptions,
    command_partitions: i32,
    pending: Pending,
    listener: JoinHandle<()>,
}

impl std::fmt::Debug for CommandBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommandBus")
            .field("options", &self.options)
            .field("command_partitions", &self.command_partitions)
            .finish_non_exhaustive()
    }
}

impl Drop for CommandBus {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

impl CommandBus {
    /// A bus for the configured cluster, registry and topology, naming itself `source`.
    pub async fn from_config(config: &Config, source: &str) -> Result<CommandBus, BusError> {
        let options = BusOptions::from_config(config, source)?;
        let codec = Codec::new(config.schema_registry.registry()?, &Catalog::embedded()?)?;
        CommandBus::new(&config.kafka, Arc::new(codec), options).await
    }

    /// Builds the producer and starts the reply listener: reads the partition counts of both
    /// topics and the end offsets of the results topic, so that every result of a command sent
    /// through this bus is seen. Must run inside a tokio runtime.
    pub async fn new(
        kafka: &KafkaConfig,
        codec: Arc<BusCodec>,
        options: BusOptions,
    ) -> Result<CommandBus, BusError> {
        let producer: FutureProducer = command_producer_config(kafka, options.request_timeout)
            .create()
            .map_err(|source| BusError::Client {
                role: "producer",
                source,
            })?;

        let (command_partitions, ends) = cluster_layout(kafka, &options).await?;

        let consumer: StreamConsumer =
            listener_config(kafka)
                .create()
                .map_err(|source| BusError::Client {
                    role: "reply listener",
                    source,
                })?;
        let mut assignment = TopicPartitionList::new();
        for (partition, end) in ends.iter().enumerate() {
            let partition = i32::try_from(partition).unwrap_or(i32::MAX);
            assignment
                .add_partition_offset(&options.results_topic, partition, Offset::Offset(*end))
                .map_err(|source| BusError::Cluster {
                    operation: "assignment",
                    topic: options.results_topic.clone(),
                    source,
                })?;
        }
        consumer
            .assign(&assignment)
            .map_err(|source| BusError::Cluster {
                operation: "assign",
                topic: options.results_topic.clone(),
                source,
            })?;

        let pending: Pending = Arc::default();
        let listener = tokio::spawn(listen(consumer, Arc::clone(&codec), Arc::clone(&pending)));
        Ok(CommandBus {
            producer,
            codec,
            options,
            command_partitions,
            pending,
            listener,
        })
    }

    /// Where this bus sends and listens.
    pub fn options(&self) -> &BusOptions {
        &self.options
    }

    /// Partition count of the commands topic, the `partitions` input of `partition_for`.
    pub fn command_partitions(&self) -> i32 {
        self.command_partitions
    }

    /// Sends `command` without waiting for its result: key and `dietstream.routing_key` = the
    /// aggregate id, partition = `partition_for(aggregate id)`, `event_type` = the command
    /// type, `dietstream.source` = the configured source. Returns once Kafka acknowledged it.
    pub async fn send(&self, command: &Command) -> Result<(), BusError> {
        let header = command.header();
        let command_id = header.command_id;
        let aggregate_id = header.aggregate_id.as_str();
        let topic = &self.options.commands_topic;
        let payload = command
            .encode(&self.codec, topic)
            .await
            .map_err(|source| BusError::Encode { command_id, source })?;
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: RECORD_TYPE_HEADER,
                value: Some(command.record_type()),
            })
            .insert(Header {
                key: SOURCE_HEADER,
                value: Some(self.options.source.as_str()),
            })
            .insert(Header {
                key: ROUTING_KEY_HEADER,
                value: Some(aggregate_id),
            });
        let record = FutureRecord::to(topic)
            .key(aggregate_id)
            .payload(&payload)
            .partition(partition_for(aggregate_id, self.command_partitions))
            .headers(headers);
        self.producer
            .send(record, self.options.request_timeout)
            .await
            .map(|_| ())
            .map_err(|(source, _)| BusError::Produce {
                command_id,
                topic: topic.clone(),
                source,
            })
    }

    /// Sends `command` and waits up to `timeout` (sending included) for its result.
    pub async fn execute(
        &self,
        command: Command,
        timeout: Duration,
    ) -> Result<CommandOutcome, BusError> {
        self.execute_raw(command, timeout)
            .await
            .map(CommandOutcome::from)
    }

    /// As [`CommandBus::execute`], returning the processor's record as it came.
    pub async fn execute_raw(
        &self,
        command: Command,
        timeout: Duration,
    ) -> Result<CommandResult, BusError> {
        let command_id = command.header().command_id;
        // The waiter is registered before the send: the result can arrive before `send`
        // returns.
        let receiver = {
            let mut pending = lock(&self.pending);
            if pending.contains_key(&command_id) {
                return Err(BusError::DuplicateCommandId { command_id });
            }
            let (sender, receiver) = oneshot::channel();
            pending.insert(command_id, sender);
            receiver
        };
        let waited = tokio::time::timeout(timeout, async {
            self.send(&command).await?;
            receiver
                .await
                .map_err(|_| BusError::ListenerStopped { command_id })
        })
        .await;
        match waited {
            Ok(Ok(result)) => Ok(result),
            Ok(Err(e)) => {
                lock(&self.pending).remove(&command_id);
                Err(e)
            }
            Err(_) => {
                lock(&self.pending).remove(&command_id);
                Err(BusError::Timeout {
                    command_id,
                    timeout,
                })
            }
        }
    }

    /// Number of commands waiting for their result.
    pub fn pending(&self) -> usize {
        lock(&self.pending).len()
    }
}

/// The consumer settings of the reply listener: assigned, never committing, only committed
/// transactions.
fn listener_config(kafka: &KafkaConfig) -> ClientConfig {
    let mut config = kafka.client_config();
    config
        // librdkafka refuses `assign` without a group id. The group is never joined (no
        // subscribe) and nothing is committed, so a unique name leaves no trace on the broker.
        .set(
            "group.id",
            format!("{}.command-replies.{}", kafka.client_id, Uuid::new_v4()),
        )
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("isolation.level", "read_committed")
        // Replies are small and awaited: fetch as soon as anything is there.
        .set("fetch.wait.max.ms", "10");
    config
}

/// Producer settings for commands, shared by the bus and anything else that sends commands in
/// bulk (the benchmark).
pub fn command_producer_config(kafka: &KafkaConfig, request_timeout: Duration) -> ClientConfig {
    let mut config = kafka.client_config();
    config
        // A command is a user action: it must not be lost or duplicated by a retry inside
        // the client.
        .set("acks", "all")
        .set("enable.idempotence", "true")
        // Commands are on the latency path: small linger, cheap compression.
        .set("linger.ms", "2")
        .set("compression.type", "lz4")
        .set(
            "message.timeout.ms",
            crate::connect::millis(request_timeout),
        );
    config
}

/// Partition count of the commands topic and end offset of every results partition.
async fn cluster_layout(
    kafka: &KafkaConfig,
    options: &BusOptions,
) -> Result<(i32, Vec<i64>), BusError> {
    let probe: BaseConsumer =
        listener_config(kafka)
            .create()
            .map_err(|source| BusError::Client {
                role: "reply listener",
                source,
            })?;
    let options = options.clone();
    // librdkafka's metadata and watermark calls block; keep them off the async workers.
    tokio::task::spawn_blocking(move || {
        let timeout = options.request_timeout;
        let partitions = |topic: &str| -> Result<i32, BusError> {
            let metadata = probe
                .fetch_metadata(Some(topic), timeout)
                .map_err(|source| BusError::Cluster {
                    operation: "metadata request",
                    topic: topic.to_owned(),
                    source,
                })?;
            match metadata.topics().first() {
                Some(t) if t.error().is_none() && !t.partitions().is_empty() => {
                    Ok(i32::try_from(t.partitions().len()).unwrap_or(i32::MAX))
                }
                _ => Err(BusError::MissingTopic {
                    topic: topic.to_owned(),
                }),
            }
        };
        let command_partitions = partitions(&options.commands_topic)?;
        let result_partitions = partitions(&options.results_topic)?;
        let mut ends = Vec::new();
        for partition in 0..result_partitions {
            // A freshly created topic's leaders may not be known to every broker yet:
            // transient errors are retried until the request timeout has passed.
            let deadline = std::time::Instant::now() + timeout;
            let high = loop {
                match probe.fetch_watermarks(&options.results_topic, partition, timeout) {
                    Ok((_, high)) => break high,
                    Err(source)
                        if dietstream_topology::is_retryable_error(&source)
                            && std::time::Instant::now() < deadline =>
                    {
                        tracing::debug!(partition, error = %source, "end offsets request retried");
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    Err(source) => {
                        return Err(BusError::Cluster {
                            operation: "end offsets request",
                            topic: options.results_topic.clone(),
                            source,
                        })
                    }
                }
            };
            ends.push(high);
        }
        Ok((command_partitions, ends))
    })
    .await
    .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

/// The reply listener: completes the waiter of every result it reads; results of commands
/// nobody here waits for (other bus instances' commands, timed-out ones) are dropped.
async fn listen(consumer: StreamConsumer, codec: Arc<BusCodec>, pending: Pending) {
    loop {
        let message = match consumer.recv().await {
            Ok(message) => message,
            Err(e) => {
                // librdkafka reconnects by itself; a consume error is reported, not fatal.
                tracing::warn!(error = %e, "command result listener: consume error");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let is_result = dietstream_runtime::headers::read(message.headers())
            .readable
            .iter()
            .all(|(name, value)| {
                *name != RECORD_TYPE_HEADER || *value == Some(CommandResult::RECORD_TYPE.as_bytes())
            });
        let Some(payload) = message.payload().filter(|_| is_result).map(<[u8]>::to_vec) else {
            continue;
        };
        let (partition, offset) = (message.partition(), message.offset());
        drop(message);
        match codec.decode::<CommandResult>(&payload).await {
            Ok(result) => {
                let waiter = lock(&pending).remove(&result.command_id);
                if let Some(waiter) = waiter {
                    // The caller may have given up in the meantime; nothing to do then.
                    let _ = waiter.send(result);
                }
            }
            Err(e) => {
                tracing::warn!(partition, offset, error = %e, "undecodable command result skipped");
            }
        }
    }
}

/// The pending map stays consistent even if a holder panicked (inserts and removes are
/// single operations), so a poisoned lock is still usable.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use dietstream_schemas::types::{Accepted, Rejected};

    fn result(outcome: UnionAcceptedRejected) -> CommandResult {
        CommandResult {
            command_id: Uuid::nil(),
            command_type: "nutrition.meal.log".to_owned(),
            aggregate_id: "u1".to_owned(),
            correlation_id: None,
            processed_at: 0,
            outcome,
        }
    }

    #[test]
    fn outcome_follows_the_result_union() {
        let accepted = CommandOutcome::from(result(UnionAcceptedRejected::Accepted(Accepted {
            new_version: 3,
            event_ids: vec![Uuid::nil()],
        })));
        assert!(accepted.is_accepted());
        assert_eq!(accepted.new_version(), Some(3));
        let rejected = CommandOutcome::from(result(UnionAcceptedRejected::Rejected(Rejected {
            reason: RejectionReason::ConcurrencyConflict,
            message: "stale".to_owned(),
            field: None,
            expected_version: Some(1),
            current_version: Some(2),
        })));
        assert_eq!(
            rejected.rejection_reason(),
            Some(RejectionReason::ConcurrencyConflict)
        );
        assert_eq!(rejected.new_version(), None);
    }

    #[test]
    fn timeouts_are_retryable_and_duplicates_are_not() {
        let id = Uuid::nil();
        assert!(BusError::Timeout {
            command_id: id,
            timeout: Duration::from_secs(1)
        }
        .is_retryable());
        assert!(!BusError::DuplicateCommandId { command_id: id }.is_retryable());
        assert!(!BusError::ListenerStopped { command_id: id }.is_retryable());
    }

    #[test]
    fn options_come_from_the_topology() {
        let mut config = Config::default();
        config.topology.prefix = "t1".to_owned();
        let options = BusOptions::from_config(&config, "game-api").expect("options");
        assert_eq!(options.commands_topic, "t1.diet.commands");
        assert_eq!(options.results_topic, "t1.diet.command-results");
        assert_eq!(options.source, "game-api");
    }
}
