//! The indexer against the real stack: events produced in the wire format are indexed by
//! aggregate, type and user, read back through the EventStore in order; undecodable records go
//! to the dead-letter topic with their headers while the records after them are indexed; a
//! tombstone erases its event; a replay from the start leaves the same rows.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Stack;
use dietstream::kafka::ensure_topic;
use dietstream::store::EventStore;
use dietstream_indexer::{IndexerConfig, Source, SourceKind, Topics};
use dietstream_schemas::catalog::Catalog;
use dietstream_schemas::codec::{Codec, Record, RECORD_TYPE_HEADER};
use dietstream_schemas::registry::ConfluentRegistry;
use dietstream_schemas::types::{
    AggregateSnapshot, AggregateType, CacheInvalidated, MealLogged, WaterIntakeLogged,
};
use dietstream_schemas::Event;
use dietstream_topology::partition_for;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use scylla::client::session::Session;
use serde_json::json;

const TIMEOUT: Duration = Duration::from_secs(60);
const PARTITIONS: i32 = 3;
/// 2025-11-26T00:00:00Z in microseconds: day 20418.
const DAY_START: i64 = 1_764_115_200_000_000;
const HOUR: i64 = 3_600_000_000;

fn header(
    event_type: &str,
    aggregate_type: &str,
    aggregate_id: &str,
    user_id: Option<&str>,
    version: i64,
    timestamp: i64,
) -> serde_json::Value {
    json!({
        "event_id": uuid::Uuid::new_v4().to_string(),
        "event_type": event_type,
        "aggregate_id": aggregate_id,
        "aggregate_type": aggregate_type,
        "version": version,
        "timestamp": timestamp,
        "user_id": user_id,
        "session_id": null,
        "correlation_id": uuid::Uuid::new_v4().to_string(),
        "causation_id": uuid::Uuid::new_v4().to_string(),
        "metadata": {}
    })
}

fn meal(user: &str, version: i64, timestamp: i64) -> Event {
    Event::MealLogged(
        serde_json::from_value::<MealLogged>(json!({
            "header": header("nutrition.meal.logged", "USER", user, Some(user), version, timestamp),
            "payload": {
                "meal_id": uuid::Uuid::new_v4().to_string(),
                "meal_type": "LUNCH",
                "eaten_at": timestamp,
                "items": [
                    {"food_id": "f-rice", "food_name": "Rice, boiled", "grams": 180.0,
                     "energy_kcal": 234.0, "protein_g": 4.3, "carbohydrate_g": 50.8, "fat_g": 0.5,
                     "fibre_g": 0.7, "sugar_g": null, "sodium_mg": 2.0}
                ],
                "note": null,
                "source": "BARCODE"
            }
        }))
        .expect("meal fits the generated type"),
    )
}

fn water(user: &str, version: i64, timestamp: i64) -> Event {
    Event::WaterIntakeLogged(
        serde_json::from_value::<WaterIntakeLogged>(json!({
            "header": header("nutrition.water.logged", "USER", user, Some(user), version, timestamp),
            "payload": {
                "intake_id": uuid::Uuid::new_v4().to_string(),
                "millilitres": 330,
                "drunk_at": timestamp
            }
        }))
        .expect("water fits the generated type"),
    )
}

fn cache_invalidated(timestamp: i64) -> Event {
    Event::CacheInvalidated(
        serde_json::from_value::<CacheInvalidated>(json!({
            "header": header("system.cache.invalidated", "SYSTEM", "cache/foods", None, 1, timestamp),
            "payload": {"cache_name": "foods", "keys_count": 42, "reason": "catalogue update"}
        }))
        .expect("cache event fits the generated type"),
    )
}

fn snapshot(user: &str, version: i64) -> AggregateSnapshot {
    AggregateSnapshot {
        aggregate_id: user.to_owned(),
        aggregate_type: AggregateType::User,
        version,
        last_event_id: uuid::Uuid::new_v4(),
        taken_at: DAY_START + version * HOUR,
        state_format: "json/user/1".to_owned(),
        state: format!("{{\"version\":{version}}}").into_bytes(),
    }
}

/// Everything one test needs: topics, keyspace, codec, indexer wiring.
struct Fixture {
    stack: Stack,
    session: Arc<Session>,
    keyspace: String,
    codec: Arc<Codec<ConfluentRegistry>>,
    events_user: String,
    events_system: String,
    snapshots_user: String,
    dead_letter: String,
    producer: FutureProducer,
}

impl Fixture {
    async fn new() -> Fixture {
        let stack = Stack::get().await;
        let events_user = stack.topic("diet.events.user");
        let events_system = stack.topic("diet.events.system");
        let snapshots_user = stack.topic("diet.snapshots.user");
        let dead_letter = stack.topic("diet.dlq.indexer");
        let admin = stack.admin();
        for (topic, partitions) in [
            (&events_user, PARTITIONS),
            (&events_system, PARTITIONS),
            (&snapshots_user, PARTITIONS),
            (&dead_letter, 1),
        ] {
            ensure_topic(&admin, topic, partitions, &[], TIMEOUT)
                .await
                .expect("topic");
        }
        let (session, keyspace) = stack.keyspace().await;
        // Migrations are idempotent: running them twice is what a redeploy does.
        for _ in 0..2 {
            dietstream_indexer::migrate(&session, &keyspace)
                .await
                .expect("migrate");
        }
        let registry = stack.config.schema_registry.registry().expect("registry");
        let codec = Codec::new(registry, &Catalog::embedded().expect("catalog")).expect("codec");
        let producer = stack.producer();
        Fixture {
            stack,
            session: Arc::new(session),
            keyspace,
            codec: Arc::new(codec),
            events_user,
            events_system,
            snapshots_user,
            dead_letter,
            producer,
        }
    }

    fn topics(&self, group_id: String) -> Topics {
        let source = |topic: &String, aggregate_type, kind| Source {
            topic: topic.clone(),
            aggregate_type,
            kind,
        };
        Topics {
            group_id,
            sources: vec![
                source(&self.events_user, AggregateType::User, SourceKind::Events),
                source(
                    &self.events_system,
                    AggregateType::System,
                    SourceKind::Events,
                ),
                source(
                    &self.snapshots_user,
                    AggregateType::User,
                    SourceKind::Snapshots,
                ),
            ],
            dead_letter: self.dead_letter.clone(),
        }
    }

    /// Produces raw bytes (or a tombstone) to the partition of `aggregate_id`, with the
    /// `event_type` header; returns (partition, offset).
    async fn produce(
        &self,
        topic: &str,
        aggregate_id: &str,
        key: &str,
        event_type: &str,
        value: Option<&[u8]>,
    ) -> (i32, i64) {
        let headers = OwnedHeaders::new().insert(Header {
            key: RECORD_TYPE_HEADER,
            value: Some(event_type),
        });
        let mut record = FutureRecord::<str, [u8]>::to(topic)
            .key(key)
            .partition(partition_for(aggregate_id, PARTITIONS))
            .headers(headers);
        if let Some(value) = value {
            record = record.payload(value);
        }
        let delivery = self
            .producer
            .send(record, TIMEOUT)
            .await
            .map_err(|(e, _)| e)
            .expect("produce");
        (delivery.partition, delivery.offset)
    }

    async fn produce_event(&self, topic: &str, event: &Event) {
        let bytes = event.encode(&self.codec, topic).await.expect("encode");
        let h = event.header();
        let key = format!("{}/{}", h.aggregate_id, h.version);
        self.produce(
            topic,
            &h.aggregate_id,
            &key,
            event.record_type(),
            Some(&bytes),
        )
        .await;
    }

    /// Runs the indexer in `group_id` until its committed offsets reach the end of every
    /// partition it reads, then stops it and checks it stopped cleanly.
    async fn index_until_caught_up(&self, group_id: String) {
        let mut kafka = self.stack.config.kafka.client_config();
        kafka.set("auto.commit.interval.ms", "100");
        let topics = self.topics(group_id.clone());
        let config = IndexerConfig {
            batch_size: 4,
            max_in_flight: 3,
            ..IndexerConfig::default()
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let indexer = tokio::spawn({
            let (kafka, topics) = (kafka.clone(), topics.clone());
            let (session, codec, keyspace) = (
                Arc::clone(&self.session),
                Arc::clone(&self.codec),
                self.keyspace.clone(),
            );
            async move {
                dietstream_indexer::run(
                    &kafka,
                    &topics,
                    session,
                    &keyspace,
                    codec,
                    &config,
                    async {
                        let _ = stopped.await;
                    },
                )
                .await
            }
        });

        let names: Vec<String> = topics.sources.iter().map(|s| s.topic.clone()).collect();
        let watcher: BaseConsumer = kafka
            .clone()
            .set("group.id", &group_id)
            .create()
            .expect("offset watcher");
        let deadline = Instant::now() + TIMEOUT;
        loop {
            assert!(
                !indexer.is_finished(),
                "the indexer stopped early: {:?}",
                indexer.await
            );
            let (w, n) = (&watcher, &names);
            let caught_up = tokio::task::block_in_place(move || caught_up(w, n));
            if caught_up {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the indexer did not catch up within {TIMEOUT:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        stop.send(()).expect("indexer still running");
        indexer
            .await
            .expect("indexer task")
            .expect("indexer stopped cleanly");
    }

    /// Every row of every index table, as JSON text, sorted: the tables' whole content.
    async fn dump(&self) -> BTreeMap<&'static str, Vec<String>> {
        let mut tables = BTreeMap::new();
        for table in [
            dietstream_indexer::tables::EVENTS_BY_AGGREGATE,
            dietstream_indexer::tables::EVENTS_BY_TYPE,
            dietstream_indexer::tables::EVENTS_BY_USER,
            dietstream_indexer::tables::SNAPSHOTS,
        ] {
            let mut rows: Vec<String> = self
                .session
                .query_unpaged(format!("SELECT JSON * FROM {}.{table}", self.keyspace), ())
                .await
                .expect("select")
                .into_rows_result()
                .expect("rows")
                .rows::<(String,)>()
                .expect("typed rows")
                .map(|row| row.expect("row").0)
                .collect();
            rows.sort();
            tables.insert(table, rows);
        }
        tables
    }
}

/// True when the group's committed offset equals the high watermark of every partition.
fn caught_up(watcher: &BaseConsumer, topics: &[String]) -> bool {
    let mut list = TopicPartitionList::new();
    let mut ends = BTreeMap::new();
    for topic in topics {
        for partition in 0..PARTITIONS {
            let (_, high) = watcher
                .fetch_watermarks(topic, partition, TIMEOUT)
                .expect("watermarks");
            list.add_partition(topic, partition);
            ends.insert((topic.clone(), partition), high);
        }
    }
    let committed = watcher
        .committed_offsets(list, TIMEOUT)
        .expect("committed offsets");
    committed.elements().iter().all(|e| {
        let end = ends[&(e.topic().to_owned(), e.partition())];
        match e.offset() {
            Offset::Offset(offset) => offset >= end,
            _ => end == 0,
        }
    })
}

fn dead_letters(stack: &Stack, topic: &str) -> StreamConsumer {
    let consumer: StreamConsumer = stack
        .consumer_config()
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    consumer
}

fn header_text(message: &rdkafka::message::BorrowedMessage<'_>, name: &str) -> Option<String> {
    message.headers().and_then(|headers| {
        headers
            .iter()
            .find(|h| h.key == name)
            .and_then(|h| h.value)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn indexes_events_dead_letters_bad_records_erases_tombstones_and_replays_identically() {
    let f = Fixture::new().await;
    let (a, b) = ("user-a", "user-b");
    // Two UTC days; a3 and a4 share an instant (one command appending two events).
    let a1 = meal(a, 1, DAY_START - 2 * HOUR);
    let a2 = water(a, 2, DAY_START - HOUR);
    let a3 = meal(a, 3, DAY_START + HOUR);
    let a4 = water(a, 4, DAY_START + HOUR);
    let b1 = water(b, 1, DAY_START - 90 * 60_000_000);
    let b2 = meal(b, 2, DAY_START + 2 * HOUR);
    let system = cache_invalidated(DAY_START + 3 * HOUR);

    for event in [&a1, &a2, &b1] {
        f.produce_event(&f.events_user, event).await;
    }
    // Bad records in the middle of user-a's partition: the events after them must be indexed.
    let garbage = b"not the wire format".to_vec();
    let unknown_id = vec![0, 0x7f, 0xff, 0xff, 0xf0, 2, 4, 6];
    let garbage_at = f
        .produce(
            &f.events_user,
            a,
            "user-a/90",
            "nutrition.meal.logged",
            Some(&garbage),
        )
        .await;
    let unknown_at = f
        .produce(
            &f.events_user,
            a,
            "user-a/91",
            "nutrition.meal.logged",
            Some(&unknown_id),
        )
        .await;
    for event in [&a3, &a4, &b2] {
        f.produce_event(&f.events_user, event).await;
    }
    f.produce_event(&f.events_system, &system).await;
    let (s1, s3) = (snapshot(a, 1), snapshot(a, 3));
    for s in [&s1, &s3] {
        let bytes = f.codec.encode(&f.snapshots_user, s).await.expect("encode");
        f.produce(
            &f.snapshots_user,
            a,
            a,
            AggregateSnapshot::RECORD_TYPE,
            Some(&bytes),
        )
        .await;
    }
    // Erasure of a2: a tombstone under its key.
    f.produce(
        &f.events_user,
        a,
        "user-a/2",
        "nutrition.water.logged",
        None,
    )
    .await;

    f.index_until_caught_up(common::unique_name("indexer"))
        .await;

    let store = EventStore::new(Arc::clone(&f.session), &f.keyspace, Arc::clone(&f.codec))
        .await
        .expect("event store");
    assert_eq!(
        store
            .events(AggregateType::User, a, 1, 100)
            .await
            .expect("read"),
        vec![a1.clone(), a3.clone(), a4.clone()],
        "user-a's events by version, a2 erased"
    );
    assert_eq!(
        store
            .events(AggregateType::User, a, 3, 3)
            .await
            .expect("read"),
        vec![a3.clone()]
    );
    assert_eq!(
        store
            .events(AggregateType::User, b, 1, 100)
            .await
            .expect("read"),
        vec![b1.clone(), b2.clone()]
    );
    assert_eq!(
        store
            .events(AggregateType::System, "cache/foods", 1, 100)
            .await
            .expect("read"),
        vec![system.clone()]
    );
    let (from, to) = (DAY_START - 24 * HOUR, DAY_START + 24 * HOUR);
    assert_eq!(
        store.events_by_user(a, from, to).await.expect("read"),
        vec![a1.clone(), a3.clone(), a4.clone()],
        "across two days, by time then version"
    );
    assert_eq!(
        store
            .events_by_type("nutrition.meal.logged", from, to)
            .await
            .expect("read"),
        vec![a1.clone(), a3.clone(), b2.clone()]
    );
    // Half-open ranges with exact microsecond bounds.
    assert_eq!(
        store
            .events_by_type(
                "nutrition.water.logged",
                DAY_START - 90 * 60_000_000,
                DAY_START + HOUR
            )
            .await
            .expect("read"),
        vec![b1.clone()]
    );
    assert_eq!(
        store
            .events_by_type("system.cache.invalidated", DAY_START, to)
            .await
            .expect("read"),
        vec![system.clone()]
    );
    assert_eq!(
        store
            .snapshot(AggregateType::User, a, 2)
            .await
            .expect("read"),
        Some(s1.clone())
    );
    assert_eq!(
        store
            .snapshot(AggregateType::User, a, 100)
            .await
            .expect("read"),
        Some(s3.clone())
    );
    assert_eq!(
        store
            .snapshot(AggregateType::User, a, 0)
            .await
            .expect("read"),
        None
    );

    // The two bad records, byte for byte, with the dead-letter headers.
    let dlq = dead_letters(&f.stack, &f.dead_letter);
    let mut seen = Vec::new();
    for _ in 0..2 {
        let message = tokio::time::timeout(TIMEOUT, dlq.recv())
            .await
            .expect("dead letter in time")
            .expect("consume");
        let get = |name| header_text(&message, name);
        let origin = (
            get("dietstream.dlq.original_partition").expect("partition"),
            get("dietstream.dlq.original_offset").expect("offset"),
        );
        assert_eq!(
            get("dietstream.dlq.original_topic"),
            Some(f.events_user.clone())
        );
        assert_eq!(get("dietstream.dlq.processor").as_deref(), Some("indexer"));
        assert_eq!(
            get("dietstream.dead_letter_topic"),
            Some(f.dead_letter.clone())
        );
        assert_eq!(get("dietstream.retry_count").as_deref(), Some("0"));
        assert!(get("dietstream.dlq.failed_at").is_some());
        assert!(get("dietstream.dlq.original_timestamp").is_some());
        assert!(!get("dietstream.dlq.error_message")
            .unwrap_or_default()
            .is_empty());
        assert_eq!(
            get("event_type").as_deref(),
            Some("nutrition.meal.logged"),
            "original header kept"
        );
        seen.push((
            message.key().map(<[u8]>::to_vec),
            message.payload().map(<[u8]>::to_vec),
            get("dietstream.dlq.error_class"),
            origin,
        ));
    }
    seen.sort();
    let at = |(p, o): (i32, i64)| (p.to_string(), o.to_string());
    assert_eq!(
        seen,
        vec![
            (
                Some(b"user-a/90".to_vec()),
                Some(garbage.clone()),
                Some("bad_magic".to_owned()),
                at(garbage_at)
            ),
            (
                Some(b"user-a/91".to_vec()),
                Some(unknown_id.clone()),
                Some("unknown_schema_id".to_owned()),
                at(unknown_at)
            ),
        ]
    );

    // A replay from the start (a new group) writes every row again: nothing changes.
    let before = f.dump().await;
    assert_eq!(before["events_by_aggregate"].len(), 6, "{before:#?}");
    assert_eq!(before["events_by_type"].len(), 6);
    assert_eq!(
        before["events_by_user"].len(),
        5,
        "the system event has no user"
    );
    assert_eq!(before["snapshots"].len(), 2);
    f.index_until_caught_up(common::unique_name("indexer-replay"))
        .await;
    assert_eq!(f.dump().await, before);
}
