//! The dead letters of a topic as the tests read them: `dietstream dlq`'s own reader
//! ([`dietstream::dlq::read`]), off the async runtime.

use std::time::Duration;

use dietstream::dlq::{self, Contents};
use rdkafka::ClientConfig;

/// How long reading a dead-letter topic may take.
const TIMEOUT: Duration = Duration::from_secs(60);

/// Every letter of the dead-letter `topic` with its context headers, from the start to the
/// ends it has now; letters below the committed offsets of `redrive_group` are marked
/// re-driven. Joins no group and commits nothing.
pub async fn read(kafka: &ClientConfig, topic: &str, redrive_group: &str) -> Contents {
    let (kafka, topic, group) = (kafka.clone(), topic.to_owned(), redrive_group.to_owned());
    tokio::task::spawn_blocking(move || dlq::read(&kafka, &topic, &group, TIMEOUT))
        .await
        .expect("dead-letter read task")
        .expect("dead letters read")
}
