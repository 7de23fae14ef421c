//! Rebuilds the aggregates of one partition when the processor is given it: the latest
//! snapshot of every aggregate, then the events after each snapshot's version.
//!
//! Events are read from the start of the partition, but only the Kafka key
//! (`<aggregate id>/<version>`) of an event already covered by a snapshot is looked at, so
//! restoring costs a raw read of the partition plus the decoding of at most `snapshot_every`
//! events per aggregate.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use dietstream_runtime::consume::refetch_promptly;
use dietstream_schemas::codec::Codec;
use dietstream_schemas::registry::SchemaRegistry;
use dietstream_schemas::types::AggregateSnapshot;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};
use tracing::{debug, info, warn};

use crate::domain::{apply, Aggregate, AggregateKind, STATE_FORMAT};
use crate::processor::ProcessorError;
use crate::topics::Topics;

/// An aggregate of one partition: its kind and id.
pub(crate) type AggregateKey = (AggregateKind, String);

/// What restoring one partition found.
#[derive(Debug, Default)]
pub(crate) struct Restored {
    /// Every aggregate of the partition.
    pub(crate) aggregates: HashMap<AggregateKey, Aggregate>,
    /// Snapshots used.
    pub(crate) snapshots: usize,
    /// Events decoded and applied on top of the snapshots.
    pub(crate) events_applied: usize,
    /// Events skipped because a snapshot covered them.
    pub(crate) events_skipped: usize,
}

/// Restores every aggregate of `partitions` (of the command topic; the same partitions of the
/// snapshot and event topics), reading all of them together.
pub(crate) fn restore_partitions<R: SchemaRegistry>(
    kafka: &ClientConfig,
    topics: &Topics,
    partitions: &[i32],
    codec: &Codec<R>,
    runtime: &tokio::runtime::Handle,
    stall_timeout: Duration,
) -> Result<HashMap<i32, Restored>, ProcessorError> {
    let started = Instant::now();
    let mut restored: HashMap<i32, Restored> = partitions
        .iter()
        .map(|p| (*p, Restored::default()))
        .collect();
    let kind_of = |topic: &str, map: &HashMap<AggregateKind, String>| {
        map.iter()
            .find(|(_, name)| name.as_str() == topic)
            .map(|(kind, _)| *kind)
    };
    let snapshot_topics: Vec<&str> = AggregateKind::ALL
        .iter()
        .map(|kind| topics.snapshots_of(*kind))
        .collect();
    read_to_end(
        kafka,
        &topics.group,
        &snapshot_topics,
        partitions,
        stall_timeout,
        |message| {
            let (Some(kind), Some(restored)) = (
                kind_of(message.topic(), &topics.snapshots),
                restored.get_mut(&message.partition()),
            ) else {
                return Ok(());
            };
            let Some(key) = message.key().and_then(|k| std::str::from_utf8(k).ok()) else {
                return Ok(());
            };
            let key = (kind, key.to_owned());
            let Some(value) = message.payload() else {
                // A tombstone: the aggregate was erased.
                restored.aggregates.remove(&key);
                return Ok(());
            };
            let context = || {
                format!(
                    "{} partition {} offset {}",
                    message.topic(),
                    message.partition(),
                    message.offset()
                )
            };
            match runtime.block_on(codec.decode::<AggregateSnapshot>(value)) {
                Ok(snapshot) if snapshot.state_format == STATE_FORMAT => {
                    match serde_json::from_slice::<Aggregate>(&snapshot.state) {
                        Ok(aggregate) => {
                            restored.aggregates.insert(key, aggregate);
                        }
                        Err(e) => {
                            warn!(at = %context(), error = %e, "Snapshot state does not parse; the aggregate is rebuilt from its events.");
                            restored.aggregates.remove(&key);
                        }
                    }
                }
                Ok(snapshot) => {
                    debug!(format = %snapshot.state_format, "Snapshot in another state format; the aggregate is rebuilt from its events.");
                    restored.aggregates.remove(&key);
                }
                Err(e) if e.is_retryable() => return Err(ProcessorError::Codec(e)),
                Err(e) => {
                    warn!(at = %context(), error = %e, "Snapshot does not decode; the aggregate is rebuilt from its events.");
                    restored.aggregates.remove(&key);
                }
            }
            Ok(())
        },
    )?;
    for restored in restored.values_mut() {
        restored.snapshots = restored.aggregates.len();
    }
    let event_topics: Vec<&str> = AggregateKind::ALL
        .iter()
        .map(|kind| topics.events_of(*kind))
        .collect();
    read_to_end(
        kafka,
        &topics.group,
        &event_topics,
        partitions,
        stall_timeout,
        |message| {
            let (Some(kind), Some(restored)) = (
                kind_of(message.topic(), &topics.events),
                restored.get_mut(&message.partition()),
            ) else {
                return Ok(());
            };
            let at = || {
                format!(
                    "{} partition {} offset {}",
                    message.topic(),
                    message.partition(),
                    message.offset()
                )
            };
            let Some((id, version)) = message
                .key()
                .and_then(|k| std::str::from_utf8(k).ok())
                .and_then(|k| k.rsplit_once('/'))
                .and_then(|(id, v)| Some((id, v.parse::<i64>().ok()?)))
            else {
                return Err(ProcessorError::CorruptLog(format!(
                    "{}: key is not <aggregate id>/<version>",
                    at()
                )));
            };
            let key = (kind, id.to_owned());
            let Some(value) = message.payload() else {
                // An erased event: its aggregate cannot be rebuilt past it, and it is no longer
                // written to (erasure removes the whole aggregate).
                restored.aggregates.remove(&key);
                return Ok(());
            };
            let current = restored.aggregates.get(&key).map_or(0, |a| a.version);
            if version <= current {
                restored.events_skipped += 1;
                return Ok(());
            }
            let event = runtime.block_on(codec.decode_event(value)).map_err(|e| {
                match e.is_retryable() {
                    true => ProcessorError::Codec(e),
                    false => ProcessorError::CorruptLog(format!("{}: {e}", at())),
                }
            })?;
            let aggregate = restored.aggregates.entry(key).or_default();
            apply(aggregate, &event)
                .map_err(|e| ProcessorError::CorruptLog(format!("{}: {e}", at())))?;
            restored.events_applied += 1;
            Ok(())
        },
    )?;
    for (partition, restored) in &restored {
        info!(
            partition,
            aggregates = restored.aggregates.len(),
            snapshots = restored.snapshots,
            events_applied = restored.events_applied,
            events_skipped = restored.events_skipped,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "Partition restored."
        );
    }
    Ok(restored)
}

/// Client context of the restore readers: end-of-partition is how they know they are done,
/// not an error worth logging.
struct RestoreContext;

impl ClientContext for RestoreContext {
    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() != Some(rdkafka::error::RDKafkaErrorCode::PartitionEOF) {
            warn!(error = %error, reason, "Restore consumer error.");
        }
    }
}

impl ConsumerContext for RestoreContext {}

/// Calls `each` for every committed record of `partitions` of every topic of `topics`, from
/// the beginning to the end as of now (read_committed: aborted records are never seen). One
/// reader per topic, so that an end-of-partition notice (which names only the partition) is
/// unambiguous; the readers fetch side by side.
fn read_to_end(
    kafka: &ClientConfig,
    group: &str,
    topics: &[&str],
    partitions: &[i32],
    stall_timeout: Duration,
    mut each: impl FnMut(&BorrowedMessage<'_>) -> Result<(), ProcessorError>,
) -> Result<(), ProcessorError> {
    let mut readers = Vec::new();
    for topic in topics {
        let consumer: BaseConsumer<RestoreContext> = refetch_promptly(&mut kafka.clone())
            // librdkafka needs a group to assign partitions; this one never commits anything.
            .set("group.id", format!("{group}.restore"))
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true")
            .set("isolation.level", "read_committed")
            .set("auto.offset.reset", "earliest")
            .create_with_context(RestoreContext)?;
        let mut assignment = TopicPartitionList::new();
        for partition in partitions {
            assignment.add_partition_offset(topic, *partition, Offset::Beginning)?;
        }
        consumer.assign(&assignment)?;
        let open: HashSet<i32> = partitions.iter().copied().collect();
        readers.push((*topic, consumer, open));
    }
    let mut last_progress = Instant::now();
    while readers.iter().any(|(_, _, open)| !open.is_empty()) {
        for (topic, consumer, open) in &mut readers {
            if open.is_empty() {
                continue;
            }
            match consumer.poll(Duration::from_millis(20)) {
                Some(Ok(message)) => {
                    each(&message)?;
                    last_progress = Instant::now();
                }
                Some(Err(KafkaError::PartitionEOF(partition))) => {
                    open.remove(&partition);
                    last_progress = Instant::now();
                }
                Some(Err(e)) => {
                    warn!(topic = *topic, error = %e, "Restore consumer error; still reading.")
                }
                None => {}
            }
        }
        if last_progress.elapsed() > stall_timeout {
            let (topic, _, open) = readers
                .iter()
                .find(|(_, _, open)| !open.is_empty())
                .expect("the loop runs while one reader is open");
            return Err(ProcessorError::RestoreStalled {
                topic: (*topic).to_owned(),
                partition: open.iter().next().copied().unwrap_or_default(),
                waited: stall_timeout,
            });
        }
    }
    Ok(())
}
