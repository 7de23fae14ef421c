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
