//! The insights the players are shown: the `ai.insight.created` events of the run's players,
//! read from `diet.events.ai` while the simulation runs, as a game client would show them, so
//! that the players can rate them (the feedback the insight processor turns into acceptance).
//!
//! Which insights a player sees, and when, depends on the processors' timing: a run that rates
//! insights is not a pure function of its seed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dietstream_schemas::catalog::Catalog;
use dietstream_schemas::codec::{Codec, Record, RECORD_TYPE_HEADER};
use dietstream_schemas::types::AiInsightCreated;
use dietstream_schemas::Event;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use uuid::Uuid;

use super::{lock, SimulateError};
use crate::bus::BusCodec;
use crate::config::Config;

/// Insights shown to the players of one run and not yet handed to them.
pub struct InsightFeed {
    shown: Arc<Mutex<HashMap<String, Vec<Uuid>>>>,
    reader: tokio::task::JoinHandle<()>,
}

impl InsightFeed {
    /// Starts reading `diet.events.ai` of the configured topology from the beginning, keeping
    /// the insights of the players whose ids start with `<user_prefix>-`.
    pub async fn start(config: &Config, user_prefix: &str) -> Result<InsightFeed, SimulateError> {
        let failed = |reason: String| SimulateError::InsightFeed { reason };
        let topic = dietstream_topology::prefixed(&config.topology.prefix, "diet.events.ai");
        let registry = config
            .schema_registry
            .registry()
            .map_err(|e| failed(format!("schema registry: {e}")))?;
        let catalog = Catalog::embedded().map_err(|e| failed(format!("catalog: {e}")))?;
        let codec = Codec::new(registry, &catalog).map_err(|e| failed(format!("codec: {e}")))?;
        let consumer: StreamConsumer = config
            .kafka
            .client_config()
            .set("group.id", format!("simulator-insights-{}", Uuid::new_v4()))
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            .create()
            .map_err(|e| failed(format!("Kafka consumer: {e}")))?;
        let metadata = consumer
            .fetch_metadata(Some(&topic), config.kafka.request_timeout)
            .map_err(|e| failed(format!("metadata of {topic}: {e}")))?;
        let mut partitions = TopicPartitionList::new();
        for topic_metadata in metadata.topics() {
            for partition in topic_metadata.partitions() {
                partitions
                    .add_partition_offset(&topic, partition.id(), Offset::Beginning)
                    .map_err(|e| failed(format!("partition of {topic}: {e}")))?;
            }
        }
        if partitions.count() == 0 {
            return Err(failed(format!("{topic} has no partitions")));
        }
        consumer
            .assign(&partitions)
            .map_err(|e| failed(format!("assign {topic}: {e}")))?;

        let shown = Arc::new(Mutex::new(HashMap::new()));
        let players = format!("{user_prefix}-");
        let reader = tokio::spawn({
            let shown = Arc::clone(&shown);
            async move { read(consumer, codec, &players, &shown).await }
        });
        Ok(InsightFeed { shown, reader })
    }

    /// The insights shown to `user` since the last call.
    pub fn take(&self, user: &str) -> Vec<Uuid> {
        lock(&self.shown).remove(user).unwrap_or_default()
    }
}

impl Drop for InsightFeed {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

async fn read(
    consumer: StreamConsumer,
    codec: BusCodec,
    players: &str,
    shown: &Mutex<HashMap<String, Vec<Uuid>>>,
) {
    loop {
        let message = match consumer.recv().await {
            Ok(message) => message,
            Err(e) => {
                // The feed only adds realism; a broker hiccup costs some ratings, not the run.
                tracing::debug!(error = %e, "Insight feed read failed.");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        let is_insight = dietstream_runtime::headers::read(message.headers())
            .readable
            .iter()
            .any(|(name, value)| {
                *name == RECORD_TYPE_HEADER
                    && *value == Some(AiInsightCreated::RECORD_TYPE.as_bytes())
            });
        let for_player = message
            .key()
            .and_then(|key| std::str::from_utf8(key).ok())
            .is_some_and(|key| key.starts_with(players));
        if !(is_insight && for_player) {
            continue;
        }
        let Some(payload) = message.payload() else {
            continue;
        };
        match codec.decode_event(payload).await {
            Ok(Event::AiInsightCreated(e)) => {
                lock(shown)
                    .entry(e.header.aggregate_id.clone())
                    .or_default()
                    .push(e.payload.insight_id);
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "Insight feed skipped a record."),
        }
    }
}
