//! The local stack behaves as the rest of dietstream assumes: Avro in the Confluent wire format
//! through the registry and Kafka, rows through the CQL driver, Kafka transactions with
//! `read_committed` isolation, and the `roundtrip` job end to end.

mod common;

use std::time::Duration;

use apache_avro::types::Value;
use common::Stack;
use dietstream::kafka::ensure_topic;
use dietstream::roundtrip::{self, wire_schema_id, RoundTripOptions};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;
use schema_registry_converter::async_impl::avro::{AvroDecoder, AvroEncoder};
use schema_registry_converter::schema_registry_common::{
    SchemaType, SubjectNameStrategy, SuppliedSchema,
};

const TIMEOUT: Duration = Duration::from_secs(30);

const WATER_SCHEMA: &str = r#"{
  "type": "record", "name": "WaterProbe", "namespace": "dietstream.test",
  "fields": [
    {"name": "user_id", "type": "string"},
    {"name": "millilitres", "type": "int"},
    {"name": "note", "type": ["null", "string"], "default": null}
  ]
}"#;

async fn create_topic(stack: &Stack, topic: &str, partitions: i32) {
    let created = ensure_topic(&stack.admin(), topic, partitions, &[], TIMEOUT)
        .await
        .expect("create topic");
    assert!(
        created,
        "topic {topic} already existed: names are not unique"
    );
}

/// Reads from the start of `topic` until `expected` records arrived or `idle` passed without
/// one, and returns the payloads in order.
async fn read_all(consumer: &StreamConsumer, expected: usize, idle: Duration) -> Vec<Vec<u8>> {
    let mut payloads = Vec::new();
    while payloads.len() < expected {
        match tokio::time::timeout(idle, consumer.recv()).await {
            Ok(Ok(message)) => payloads.push(message.payload().unwrap_or_default().to_vec()),
            Ok(Err(e)) => panic!("consume failed: {e}"),
            Err(_) => break,
        }
    }
    payloads
}

fn consumer(stack: &Stack, topic: &str, isolation: &str) -> StreamConsumer {
    let consumer: StreamConsumer = stack
        .consumer_config()
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("isolation.level", isolation)
        .create()
        .expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    consumer
}

#[tokio::test]
async fn avro_record_in_confluent_wire_format_round_trips_through_registry_and_kafka() {
    let stack = Stack::get().await;
    let topic = stack.topic("water");
    create_topic(&stack, &topic, 3).await;

    let settings = stack
        .config
        .schema_registry
        .sr_settings()
        .expect("settings");
    let encoder = AvroEncoder::new(settings.clone());
    let strategy = SubjectNameStrategy::TopicRecordNameStrategyWithSchema(
        topic.clone(),
        SuppliedSchema::new(
            Some("dietstream.test.WaterProbe".to_owned()),
            SchemaType::Avro,
            WATER_SCHEMA.to_owned(),
        ),
    );
    let fields = vec![
        ("user_id", Value::String("user-42".to_owned())),
        ("millilitres", Value::Int(250)),
        (
            "note",
            Value::Union(1, Box::new(Value::String("after run".to_owned()))),
        ),
    ];
    let payload = encoder
        .encode(fields.clone(), strategy)
        .await
        .expect("encode through the registry");
    let schema_id = wire_schema_id(&payload).expect("magic byte 0 and a schema id");

    // The registry holds the schema under the TopicRecordNameStrategy subject and serves it
    // by the id written into the record, as any Confluent client would look it up.
    let http = reqwest::Client::new();
    let base = &stack.config.schema_registry.url;
    let by_id: serde_json::Value = http
        .get(format!("{base}/schemas/ids/{schema_id}"))
        .send()
        .await
        .expect("GET schema by id")
        .json()
        .await
        .expect("schema JSON");
    let served = apache_avro::Schema::parse_str(by_id["schema"].as_str().expect("schema text"))
        .expect("served schema parses");
    assert_eq!(
        served,
        apache_avro::Schema::parse_str(WATER_SCHEMA).expect("schema")
    );
    // Asked by name: the full subject list is capped by the registry (Apicurio serves at most
    // 1000), and a long-lived local stack holds more from earlier test prefixes.
    let subject = format!("{topic}-dietstream.test.WaterProbe");
    let versions: Vec<i64> = http
        .get(format!("{base}/subjects/{subject}/versions"))
        .send()
        .await
        .expect("GET subject versions")
        .error_for_status()
        .unwrap_or_else(|e| panic!("subject {subject} is not registered: {e}"))
        .json()
        .await
        .expect("versions JSON");
    assert_eq!(versions, vec![1], "versions of {subject}");

    let producer = stack.producer();
    let (partition, offset) = producer
        .send(
            FutureRecord::to(&topic).key("user-42").payload(&payload),
            TIMEOUT,
        )
        .await
        .map(|d| (d.partition, d.offset))
        .expect("produce");

    let consumer = consumer(&stack, &topic, "read_committed");
    let message = tokio::time::timeout(TIMEOUT, consumer.recv())
        .await
        .expect("record came back in time")
        .expect("consume");
    assert_eq!((message.partition(), message.offset()), (partition, offset));
    assert_eq!(message.payload(), Some(payload.as_slice()));

    // A fresh decoder has no cache: it must fetch the writer schema by id.
    let decoded = AvroDecoder::new(settings)
        .decode(message.payload())
        .await
        .expect("decode");
    let expected = Value::Record(
        fields
            .into_iter()
            .map(|(name, value)| (name.to_owned(), value))
            .collect(),
    );
    assert_eq!(decoded.value, expected);
}

#[tokio::test]
async fn cql_row_is_written_and_read_back() {
    let stack = Stack::get().await;
    let (session, keyspace) = stack.keyspace().await;
    session
        .query_unpaged(
            format!(
                "CREATE TABLE {keyspace}.water_by_user (user_id text, day date, \
                 millilitres int, PRIMARY KEY (user_id, day))"
            ),
            (),
        )
        .await
        .expect("create table");
    let insert = session
        .prepare(format!(
            "INSERT INTO {keyspace}.water_by_user (user_id, day, millilitres) VALUES (?, ?, ?)"
        ))
        .await
        .expect("prepare insert");
    let day = scylla::value::CqlDate((1u32 << 31) + 20_000);
    for (user, ml) in [("user-1", 1_500), ("user-2", 750), ("user-1", 1_750)] {
        session
            .execute_unpaged(&insert, (user, day, ml))
            .await
            .expect("insert");
    }
    let rows: Vec<(String, i32)> = session
        .query_unpaged(
            format!("SELECT user_id, millilitres FROM {keyspace}.water_by_user"),
            (),
        )
        .await
        .expect("select")
        .into_rows_result()
        .expect("rows")
        .rows::<(String, i32)>()
        .expect("typed rows")
        .collect::<Result<_, _>>()
        .expect("deserialize");
    let mut rows = rows;
    rows.sort();
    // The second write to (user-1, day) is an upsert: one row, last value wins.
    assert_eq!(
        rows,
        vec![("user-1".to_owned(), 1_750), ("user-2".to_owned(), 750)]
    );
}

#[tokio::test]
async fn read_committed_consumer_sees_only_the_committed_transaction() {
    let stack = Stack::get().await;
    let topic = stack.topic("tx");
    create_topic(&stack, &topic, 1).await;

    let producer: FutureProducer = stack
        .config
        .kafka
        .client_config()
        .set("transactional.id", common::unique_name("txid"))
        .create()
        .expect("transactional producer");
    producer
        .init_transactions(Timeout::After(TIMEOUT))
        .expect("init transactions");

    let send = |payload: &'static str| {
        let producer = &producer;
        let topic = &topic;
        async move {
            producer
                .send(FutureRecord::to(topic).key("k").payload(payload), TIMEOUT)
                .await
                .map_err(|(e, _)| e)
                .expect("send in transaction");
        }
    };

    producer.begin_transaction().expect("begin 1");
    send("committed-1").await;
    send("committed-2").await;
    producer
        .commit_transaction(Timeout::After(TIMEOUT))
        .expect("commit");

    producer.begin_transaction().expect("begin 2");
    send("aborted-1").await;
    producer
        .abort_transaction(Timeout::After(TIMEOUT))
        .expect("abort");

    // A marker after the aborted transaction, so the committed reader knows when it has
    // read past it instead of waiting for records that must never come.
    producer.begin_transaction().expect("begin 3");
    send("committed-3").await;
    producer
        .commit_transaction(Timeout::After(TIMEOUT))
        .expect("commit 3");

    let committed = consumer(&stack, &topic, "read_committed");
    let seen = read_all(&committed, 3, TIMEOUT).await;
    assert_eq!(
        seen,
        vec![
            b"committed-1".to_vec(),
            b"committed-2".to_vec(),
            b"committed-3".to_vec()
        ]
    );

    // The aborted record did reach the log: an uncommitted reader sees it, so the test above
    // proves filtering, not a failed send.
    let uncommitted = consumer(&stack, &topic, "read_uncommitted");
    let all = read_all(&uncommitted, 4, TIMEOUT).await;
    assert!(
        all.contains(&b"aborted-1".to_vec()),
        "aborted record not in log: {all:?}"
    );
    assert_eq!(all.len(), 4);
}

#[tokio::test]
async fn roundtrip_job_checks_every_step() {
    let stack = Stack::get().await;
    let mut config = stack.config.clone();
    config.cql.keyspace = common::unique_name("ks");
    let options = RoundTripOptions {
        topic: stack.topic("roundtrip"),
        ..RoundTripOptions::default()
    };
    let mut seen = Vec::new();
    let report = roundtrip::run(&config, &options, |step| seen.push(step.name))
        .await
        .expect("round trip");
    assert_eq!(
        seen,
        vec!["topic", "encode", "produce", "consume", "decode", "cql"]
    );
    assert_eq!(report.steps.len(), seen.len());
    assert_eq!(report.offset, 0, "first record of a fresh topic");

    // A second trip to the same topic and table reuses both and lands one offset later.
    let again = roundtrip::run(&config, &options, |_| {})
        .await
        .expect("second round trip");
    assert_eq!(again.offset, 1);
    assert!(again.steps[0].detail.contains("exists"));
    assert_eq!(again.schema_id, report.schema_id, "same schema, same id");
}
