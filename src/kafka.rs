//! Small Kafka helpers shared by the commands and the integration tests.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

/// Broker-side default replication factor (`default.replication.factor`), per KIP-464: the
/// same request then fits a one-node local stack and a three-broker cluster.
pub const BROKER_DEFAULT_REPLICATION: i32 = -1;

/// Creates `topic` with `partitions` partitions and the broker's default replication unless it
/// exists. Returns true when this call created it.
pub async fn ensure_topic(
    admin: &AdminClient<DefaultClientContext>,
    topic: &str,
    partitions: i32,
    configs: &[(&str, &str)],
    timeout: Duration,
) -> Result<bool, KafkaError> {
    let mut new_topic = NewTopic::new(
        topic,
        partitions,
        TopicReplication::Fixed(BROKER_DEFAULT_REPLICATION),
    );
    for (key, value) in configs {
        new_topic = new_topic.set(key, value);
    }
    let options = AdminOptions::new().operation_timeout(Some(timeout));
    let results = admin.create_topics([&new_topic], &options).await?;
    match results.into_iter().next() {
        Some(Ok(_)) => Ok(true),
        Some(Err((_, RDKafkaErrorCode::TopicAlreadyExists))) => Ok(false),
        Some(Err((_, code))) => Err(KafkaError::AdminOp(code)),
        None => Err(KafkaError::AdminOpCreation(format!(
            "no result for topic {topic}"
        ))),
    }
}

/// How far one consumer group is behind the end of the topics it reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupLag {
    /// The group id.
    pub group: String,
    /// Per partition: topic, partition, committed offset (`None`: nothing committed yet),
    /// end offset (high watermark).
    pub partitions: Vec<(String, i32, Option<i64>, i64)>,
}

impl GroupLag {
    /// Records between the committed offsets and the ends, summed (a partition without a
    /// committed offset counts from 0; with `auto.offset.reset=earliest` that overstates the
    /// lag of a topic whose start was deleted, never understates it).
    pub fn total(&self) -> i64 {
        self.partitions
            .iter()
            .map(|(_, _, committed, end)| (end - committed.unwrap_or(0)).max(0))
            .sum()
    }

    /// Committed offsets summed over the partitions (none committed counts as 0): how many
    /// records the group has processed since the topics began, up to deleted starts.
    pub fn committed_total(&self) -> i64 {
        self.partitions
            .iter()
            .map(|(_, _, committed, _)| committed.unwrap_or(0))
            .sum()
    }
}

/// The lag of `group` on `topics`, read from the brokers without joining the group: its
/// committed offsets against the partitions' high watermarks. Blocking; at most a few
/// `timeout`s.
pub fn group_lag(
    client: &rdkafka::ClientConfig,
    group: &str,
    topics: &[String],
    timeout: Duration,
) -> Result<GroupLag, KafkaError> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::{Offset, TopicPartitionList};

    let consumer: BaseConsumer = client
        .clone()
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()?;
    let mut wanted = TopicPartitionList::new();
    for topic in topics {
        let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
        for t in metadata.topics() {
            for p in t.partitions() {
                wanted.add_partition(topic, p.id());
            }
        }
    }
    let committed = consumer.committed_offsets(wanted, timeout)?;
    let mut partitions = Vec::new();
    for element in committed.elements() {
        let (_, end) = consumer.fetch_watermarks(element.topic(), element.partition(), timeout)?;
        let offset = match element.offset() {
            Offset::Offset(o) => Some(o),
            _ => None,
        };
        partitions.push((element.topic().to_owned(), element.partition(), offset, end));
    }
    Ok(GroupLag {
        group: group.to_owned(),
        partitions,
    })
}
