//! `dietstream dlq list | replay <processor>`: a read-model processor's dead letters.
//!
//! `list` reads the dead-letter topic from its start to the ends read when it starts, without
//! joining or committing for any group. `replay` re-drives the letters not re-driven yet: it
//! checks each against the current registry and code and prints the outcome, then rebuilds the
//! read model in a new generation exactly as `dietstream replay` does, so the records that can
//! now be applied are applied at their place in the log (re-publishing them to the event topic
//! would duplicate events for every other consumer, and applying them out of order would break
//! the offset-guarded state). Records that still fail are dead-lettered again by the rebuild,
//! with the `dietstream.dlq.generation` header. Finally the group `<group>.dlq-redrive`
//! commits the ends read at the start on the dead-letter topic: what lies below them is
//! re-driven, and `list` hides it unless asked (`--all`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dietstream_runtime::consume::ProcessorTopics;
use dietstream_runtime::dead_letter::Rejection;
use dietstream_runtime::Projection;
use dietstream_schemas::codec::RECORD_TYPE_HEADER;
use dietstream_schemas::headers::{
    DLQ_ERROR_CLASS, DLQ_ERROR_MESSAGE, DLQ_FAILED_AT, DLQ_GENERATION, DLQ_ORIGINAL_OFFSET,
    DLQ_ORIGINAL_PARTITION, DLQ_ORIGINAL_TIMESTAMP, DLQ_ORIGINAL_TOPIC, DLQ_PROCESSOR,
};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde::Serialize;

use crate::config::Config;
use crate::read_model::{with_read_model, ReadModelTask};
use crate::replay::{
    environment, processor_topics, rebuild, ReplayError, ReplayOptions, ReplaySummary,
};
use crate::run::ReadModelEnv;

/// The group whose committed offsets on the dead-letter topic mark how far it was re-driven.
pub fn redrive_group(group: &str) -> String {
    format!("{group}.dlq-redrive")
}

/// One dead letter as its headers describe it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeadLetter {
    /// Partition of the dead-letter topic.
    pub dlq_partition: i32,
    /// Offset in it.
    pub dlq_offset: i64,
    /// Topic the record was consumed from.
    pub original_topic: Option<String>,
    /// Its partition.
    pub original_partition: Option<i32>,
    /// Its offset.
    pub original_offset: Option<i64>,
    /// Its Kafka timestamp, epoch ms.
    pub original_timestamp_ms: Option<i64>,
    /// Its `event_type` header.
    pub event_type: Option<String>,
    /// Bounded error code.
    pub error_class: String,
    /// What went wrong.
    pub error_message: String,
    /// The processor that failed it.
    pub processor: Option<String>,
    /// When, epoch ms.
    pub failed_at_ms: Option<i64>,
    /// The read-model generation that failed it (absent on letters written before
    /// generations existed).
    pub generation: Option<u32>,
    /// Below the re-drive group's committed offset: re-driven already.
    pub redriven: bool,
    /// The record's bytes.
    #[serde(skip)]
    pub payload: Option<Vec<u8>>,
}

impl DeadLetter {
    fn from_message(message: &BorrowedMessage<'_>, redriven_below: Option<i64>) -> DeadLetter {
        let mut headers: HashMap<&str, String> = HashMap::new();
        for (name, value) in dietstream_runtime::headers::read(message.headers()).readable {
            if let Some(value) = value {
                headers.insert(name, String::from_utf8_lossy(value).into_owned());
            }
        }
        let text = |name: &str| headers.get(name).cloned();
        let number = |name: &str| headers.get(name).and_then(|v| v.parse::<i64>().ok());
        DeadLetter {
            dlq_partition: message.partition(),
            dlq_offset: message.offset(),
            original_topic: text(DLQ_ORIGINAL_TOPIC),
            original_partition: number(DLQ_ORIGINAL_PARTITION).and_then(|p| i32::try_from(p).ok()),
            original_offset: number(DLQ_ORIGINAL_OFFSET),
            original_timestamp_ms: number(DLQ_ORIGINAL_TIMESTAMP),
            event_type: text(RECORD_TYPE_HEADER),
            error_class: text(DLQ_ERROR_CLASS).unwrap_or_else(|| "unknown".to_owned()),
            error_message: text(DLQ_ERROR_MESSAGE).unwrap_or_default(),
            processor: text(DLQ_PROCESSOR),
            failed_at_ms: number(DLQ_FAILED_AT),
            generation: number(DLQ_GENERATION).and_then(|g| u32::try_from(g).ok()),
            redriven: redriven_below.is_some_and(|below| message.offset() < below),
            payload: message.payload().map(<[u8]>::to_vec),
        }
    }

    /// One line for a terminal: where it is, where it came from, when, why.
    pub fn line(&self) -> String {
        let unknown = || "?".to_owned();
        let when = self
            .original_timestamp_ms
            .and_then(chrono::DateTime::from_timestamp_millis)
            .map_or_else(unknown, |t| {
                t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
            });
        format!(
            "dlq {}@{}  {}[{}]@{}  {}  {}  {}{}{}",
            self.dlq_partition,
            self.dlq_offset,
            self.original_topic.clone().unwrap_or_else(unknown),
            self.original_partition
                .map_or_else(unknown, |p| p.to_string()),
            self.original_offset.map_or_else(unknown, |o| o.to_string()),
            when,
            self.error_class,
            self.error_message,
            self.generation
                .map(|g| format!("  (generation {g})"))
                .unwrap_or_default(),
            if self.redriven { "  [redriven]" } else { "" }
        )
    }
}

/// A dead-letter topic as read: its letters and the ends it was read to.
#[derive(Debug, Clone, Default)]
pub struct Contents {
    /// Every letter, by partition then offset.
    pub letters: Vec<DeadLetter>,
    /// Per partition, the end offset read to.
    pub ends: Vec<(i32, i64)>,
}

/// Reads `topic` from its start to the ends it has now; letters below the committed offsets
/// of `redrive_group` are marked re-driven. Joins no group and commits nothing. Blocking.
pub fn read(
    kafka: &ClientConfig,
    topic: &str,
    redrive_group: &str,
    timeout: Duration,
) -> Result<Contents, KafkaError> {
    let consumer: BaseConsumer = kafka
        .clone()
        .set("group.id", redrive_group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .create()?;
    let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
    let mut wanted = TopicPartitionList::new();
    let mut ends = Vec::new();
    for t in metadata.topics() {
        if let Some(error) = t.error() {
            return Err(KafkaError::MetadataFetch(error.into()));
        }
        for p in t.partitions() {
            let (_, end) = consumer.fetch_watermarks(topic, p.id(), timeout)?;
            wanted.add_partition(topic, p.id());
            ends.push((p.id(), end));
        }
    }
    let committed = consumer.committed_offsets(wanted.clone(), timeout)?;
    let redriven_below: HashMap<i32, i64> = committed
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) => Some((e.partition(), o)),
            _ => None,
        })
        .collect();
    let mut start = TopicPartitionList::new();
    for (partition, _) in &ends {
        start.add_partition_offset(topic, *partition, Offset::Beginning)?;
    }
    consumer.assign(&start)?;
    let mut letters = Vec::new();
    let mut deadline = Instant::now() + timeout;
    loop {
        let positions = consumer.position()?;
        let done = ends.iter().all(|(partition, end)| {
            *end == 0
                || positions
                    .find_partition(topic, *partition)
                    .is_some_and(|e| matches!(e.offset(), Offset::Offset(at) if at >= *end))
        });
        if done {
            break;
        }
        if Instant::now() >= deadline {
            return Err(KafkaError::MessageConsumption(
                rdkafka::types::RDKafkaErrorCode::RequestTimedOut,
            ));
        }
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(message)) => {
                deadline = Instant::now() + timeout;
                let end = ends
                    .iter()
                    .find(|(p, _)| *p == message.partition())
                    .map_or(0, |(_, end)| *end);
                if message.offset() < end {
                    let below = redriven_below.get(&message.partition()).copied();
                    letters.push(DeadLetter::from_message(&message, below));
                }
            }
            Some(Err(error)) => return Err(error),
            None => {}
        }
    }
    letters.sort_by_key(|l| (l.dlq_partition, l.dlq_offset));
    Ok(Contents { letters, ends })
}

/// Which letters `list` shows.
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
pub struct Filter {
    /// Only letters of this error class (e.g. unknown_schema_id, rule_violation).
    #[arg(long)]
    pub class: Option<String>,
    /// Also letters already re-driven.
    #[arg(long)]
    pub all: bool,
    /// At most this many letters.
    #[arg(long)]
    pub limit: Option<usize>,
}

impl Filter {
    /// The letters it keeps, in order.
    pub fn select<'a>(&self, letters: &'a [DeadLetter]) -> Vec<&'a DeadLetter> {
        letters
            .iter()
            .filter(|l| self.all || !l.redriven)
            .filter(|l| self.class.as_ref().is_none_or(|c| &l.error_class == c))
            .take(self.limit.unwrap_or(usize::MAX))
            .collect()
    }
}

/// `dietstream dlq list <processor>` of the configured stack: every letter, re-driven ones
/// marked ([`Filter`] chooses what to show).
pub async fn list(config: &Config, processor: &str) -> Result<Contents, ReplayError> {
    let topics = processor_topics(config, processor)?;
    let (kafka, timeout) = (config.kafka.client_config(), config.kafka.request_timeout);
    read_blocking(kafka, &topics, timeout).await
}

async fn read_blocking(
    kafka: ClientConfig,
    topics: &ProcessorTopics,
    timeout: Duration,
) -> Result<Contents, ReplayError> {
    let (topic, group) = (topics.dead_letter.clone(), redrive_group(&topics.group_id));
    let reading = group.clone();
    tokio::task::spawn_blocking(move || read(&kafka, &topic, &reading, timeout))
        .await
        .unwrap_or_else(|error| std::panic::resume_unwind(error.into_panic()))
        .map_err(|source| ReplayError::Offsets { group, source })
}

/// What a dead letter would meet today, before any state is involved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recheck {
    /// It decodes now; the rebuild applies it (a broken rule is judged again there).
    Decodes {
        /// Its record type.
        event_type: String,
        /// False when the processor does not read this type: the rebuild skips it.
        wanted: bool,
    },
    /// It still fails to decode.
    Fails {
        /// The class it would get.
        class: &'static str,
        /// Why.
        message: String,
    },
    /// The registry could not be asked (transient); the rebuild decides.
    Unknown(String),
    /// A tombstone: nothing to apply.
    Empty,
}

impl std::fmt::Display for Recheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Recheck::Decodes {
                event_type,
                wanted: true,
            } => write!(f, "decodes now as {event_type}: the rebuild applies it"),
            Recheck::Decodes {
                event_type,
                wanted: false,
            } => write!(f, "decodes now as {event_type}, which this processor skips"),
            Recheck::Fails { class, message } => write!(f, "still fails: {class}: {message}"),
            Recheck::Unknown(message) => {
                write!(f, "cannot tell now ({message}); the rebuild decides")
            }
            Recheck::Empty => write!(f, "no payload: nothing to apply"),
        }
    }
}

/// Checks one letter against the current registry and code.
pub async fn recheck<P: Projection>(
    env: &ReadModelEnv,
    projection: &P,
    letter: &DeadLetter,
) -> Recheck {
    let Some(payload) = &letter.payload else {
        return Recheck::Empty;
    };
    match env.codec.decode_event(payload).await {
        Ok(event) => {
            let event_type = event.header().event_type.clone();
            Recheck::Decodes {
                wanted: projection.wants(&event_type),
                event_type,
            }
        }
        Err(error) if error.is_retryable() => Recheck::Unknown(error.to_string()),
        Err(error) => {
            let rejection = Rejection::from_codec(&error);
            Recheck::Fails {
                class: rejection.class,
                message: rejection.message,
            }
        }
    }
}

/// What a re-drive did.
#[derive(Debug, Clone)]
pub struct RedriveSummary {
    /// Letters that were waiting, each with what it meets today.
    pub checked: Vec<(DeadLetter, Recheck)>,
    /// The rebuild, when there was something to re-drive.
    pub rebuild: Option<ReplaySummary>,
}

/// Re-drives the dead letters of `projection` not re-driven yet: see the module docs.
pub async fn redrive<P: Projection>(
    env: &ReadModelEnv,
    projection: Arc<P>,
    topics: &ProcessorTopics,
    options: &ReplayOptions,
    report: &mut (dyn FnMut(String) + Send),
) -> Result<RedriveSummary, ReplayError> {
    let contents = read_blocking(env.kafka.clone(), topics, options.request_timeout).await?;
    let mut checked = Vec::new();
    for letter in contents.letters.into_iter().filter(|l| !l.redriven) {
        let outcome = recheck(env, projection.as_ref(), &letter).await;
        report(format!("{}\n    now: {outcome}", letter.line()));
        checked.push((letter, outcome));
    }
    if checked.is_empty() {
        report(format!(
            "no dead letters of {} wait in {}",
            projection.name(),
            topics.dead_letter
        ));
        return Ok(RedriveSummary {
            checked,
            rebuild: None,
        });
    }
    let rebuilt = rebuild(env, projection, topics, options, report).await?;
    let (kafka, topic, group, timeout) = (
        env.kafka.clone(),
        topics.dead_letter.clone(),
        redrive_group(&topics.group_id),
        options.request_timeout,
    );
    let committing = group.clone();
    let ends = contents.ends;
    tokio::task::spawn_blocking(move || mark_redriven(&kafka, &topic, &committing, &ends, timeout))
        .await
        .unwrap_or_else(|error| std::panic::resume_unwind(error.into_panic()))
        .map_err(|source| ReplayError::Offsets { group, source })?;
    Ok(RedriveSummary {
        checked,
        rebuild: Some(rebuilt),
    })
}

/// Commits `ends` on `topic` for `group`: the letters below are re-driven.
fn mark_redriven(
    kafka: &ClientConfig,
    topic: &str,
    group: &str,
    ends: &[(i32, i64)],
    timeout: Duration,
) -> Result<(), KafkaError> {
    let consumer: BaseConsumer = kafka
        .clone()
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()?;
    let mut offsets = TopicPartitionList::new();
    for (partition, end) in ends {
        offsets.add_partition_offset(topic, *partition, Offset::Offset(*end))?;
    }
    consumer.commit(&offsets, CommitMode::Sync)?;
    // Committed offsets are read back so a failure to store them is not silent.
    let committed = consumer.committed_offsets(offsets.clone(), timeout)?;
    for (partition, end) in ends {
        let stored = committed
            .find_partition(topic, *partition)
            .map(|e| e.offset());
        if stored != Some(Offset::Offset(*end)) {
            return Err(KafkaError::ConsumerCommit(
                rdkafka::types::RDKafkaErrorCode::InvalidCommitOffsetSize,
            ));
        }
    }
    Ok(())
}

/// [`redrive`] for the read-model processor called `processor`.
struct RedriveTask<'a> {
    env: &'a ReadModelEnv,
    topics: &'a ProcessorTopics,
    options: &'a ReplayOptions,
    report: &'a mut (dyn FnMut(String) + Send),
}

impl ReadModelTask for RedriveTask<'_> {
    type Output = Result<RedriveSummary, ReplayError>;

    async fn run<P: Projection>(self, projection: Arc<P>) -> Self::Output {
        redrive(self.env, projection, self.topics, self.options, self.report).await
    }
}

/// `dietstream dlq replay <processor>` of the configured stack.
pub async fn replay(
    config: &Config,
    processor: &str,
    options: &ReplayOptions,
    report: &mut (dyn FnMut(String) + Send),
) -> Result<RedriveSummary, ReplayError> {
    let topics = processor_topics(config, processor)?;
    let env = environment(config).await?;
    let task = RedriveTask {
        env: &env,
        topics: &topics,
        options,
        report,
    };
    with_read_model(processor, task).await?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letter(offset: i64, class: &str, redriven: bool) -> DeadLetter {
        DeadLetter {
            dlq_partition: 0,
            dlq_offset: offset,
            original_topic: Some("diet.events.user".to_owned()),
            original_partition: Some(2),
            original_offset: Some(17),
            original_timestamp_ms: Some(1_764_201_600_000),
            event_type: Some("nutrition.water.logged".to_owned()),
            error_class: class.to_owned(),
            error_message: "schema id 42 is not registered".to_owned(),
            processor: Some("nutrition".to_owned()),
            failed_at_ms: Some(1_764_201_601_000),
            generation: Some(1),
            redriven,
            payload: None,
        }
    }

    #[test]
    fn a_line_says_where_from_when_and_why() {
        assert_eq!(
            letter(5, "unknown_schema_id", false).line(),
            "dlq 0@5  diet.events.user[2]@17  2025-11-27T00:00:00.000Z  unknown_schema_id  \
             schema id 42 is not registered  (generation 1)"
        );
        let mut bare = letter(6, "bad_magic", true);
        (
            bare.original_topic,
            bare.original_timestamp_ms,
            bare.generation,
        ) = (None, None, None);
        assert_eq!(
            bare.line(),
            "dlq 0@6  ?[2]@17  ?  bad_magic  schema id 42 is not registered  [redriven]"
        );
    }

    #[test]
    fn json_carries_the_headers_but_not_the_bytes() {
        let mut with_bytes = letter(5, "bad_magic", false);
        with_bytes.payload = Some(b"garbage".to_vec());
        let json = serde_json::to_value(&with_bytes).expect("serialises");
        assert_eq!(json["original_offset"], 17);
        assert_eq!(json["error_class"], "bad_magic");
        assert_eq!(json["generation"], 1);
        assert!(json.get("payload").is_none(), "{json}");
    }

    #[test]
    fn the_filter_hides_redriven_letters_keeps_a_class_and_stops_at_the_limit() {
        let letters = [
            letter(0, "bad_magic", true),
            letter(1, "bad_magic", false),
            letter(2, "unknown_schema_id", false),
            letter(3, "bad_magic", false),
        ];
        let offsets = |filter: Filter| -> Vec<i64> {
            filter
                .select(&letters)
                .iter()
                .map(|l| l.dlq_offset)
                .collect()
        };
        assert_eq!(offsets(Filter::default()), [1, 2, 3]);
        let all = Filter {
            all: true,
            ..Filter::default()
        };
        assert_eq!(offsets(all), [0, 1, 2, 3]);
        let class = Filter {
            class: Some("bad_magic".to_owned()),
            limit: Some(1),
            ..Filter::default()
        };
        assert_eq!(offsets(class), [1]);
    }

    #[test]
    fn the_redrive_group_is_the_processor_s_group_with_a_suffix() {
        assert_eq!(
            redrive_group("dietstream.nutrition"),
            "dietstream.nutrition.dlq-redrive"
        );
    }
}
