//! Interoperability with Confluent's own serializers, through an independent client: Confluent's
//! Python client (`confluent-kafka`, bundling librdkafka, with `AvroSerializer` and
//! `AvroDeserializer` on fastavro), driven by `tests/interop/confluent_client.py`.
//!
//! - Records that client writes with the registered (expanded) schemas decode with [`Codec`]
//!   into exactly the values it was given, under the schema id [`Codec`] itself uses.
//! - Records [`Codec`] writes decode in that client into exactly what `serde_json` prints for
//!   the Rust value.
//!
//! Representation: the JSON on both sides is the Avro value as the binary encoding carries it.
//! The Python client applies the logical types when it reads (uuid -> `uuid.UUID`,
//! timestamp-micros -> `datetime`); the script turns them back into canonical uuid text and
//! integer microseconds, which is exact. Nothing else differs for these types, so the
//! comparisons are plain equality with no normalisation. Map entries may come in any order in
//! the binary encoding (the spec leaves it free), so bodies are compared by length, values by
//! equality. Doubles in the samples are short decimals: serde_json (built without
//! `float_roundtrip`) parses those exactly.
//!
//! The client runs from the venv of `make interop-env`, named by `INTEROP_PYTHON` (`make test`
//! sets both up). Without it these tests fail and say so; they are never skipped.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use common::{unique_name, Stack};
use dietstream::kafka::ensure_topic;
use dietstream_schemas::catalog::Catalog;
use dietstream_schemas::codec::{split_header, Codec, Record};
use dietstream_schemas::registry::{ConfluentRegistry, SchemaRegistry};
use dietstream_schemas::types::{MealLogged, WaterIntakeLogged};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::FutureRecord;
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{json, Value};

const TIMEOUT: Duration = Duration::from_secs(30);
const SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/interop/confluent_client.py"
);
const SETUP: &str = "run `make interop-env` and point INTEROP_PYTHON at the venv's python \
     (default ~/.cache/dietstream/interop-venv/bin/python; `make test` does both)";

/// The interpreter of the interop venv, checked once: it must import Confluent's Avro serdes.
fn python() -> &'static str {
    static PYTHON: OnceLock<String> = OnceLock::new();
    PYTHON.get_or_init(|| {
        let python = std::env::var("INTEROP_PYTHON")
            .unwrap_or_else(|_| panic!("INTEROP_PYTHON is not set: {SETUP}"));
        let check = Command::new(&python)
            .args([
                "-c",
                "import confluent_kafka.schema_registry.avro, fastavro",
            ])
            .output()
            .unwrap_or_else(|e| panic!("INTEROP_PYTHON={python} cannot be run ({e}): {SETUP}"));
        assert!(
            check.status.success(),
            "INTEROP_PYTHON={python} lacks confluent-kafka with its Avro serdes ({}): {SETUP}",
            String::from_utf8_lossy(&check.stderr).trim()
        );
        python
    })
}

/// Runs the Python client against the stack's registry and Kafka; returns the JSON it prints.
async fn confluent_client(stack: &Stack, args: &[&str]) -> Value {
    let mut command = Command::new(python());
    command
        .arg(SCRIPT)
        .args(args)
        .env(
            "DIETSTREAM_SCHEMA_REGISTRY__URL",
            &stack.config.schema_registry.url,
        )
        .env(
            "DIETSTREAM_KAFKA__BOOTSTRAP_SERVERS",
            &stack.config.kafka.bootstrap_servers,
        );
    let registry = &stack.config.schema_registry;
    for (name, value) in [
        ("DIETSTREAM_SCHEMA_REGISTRY__USERNAME", &registry.username),
        ("DIETSTREAM_SCHEMA_REGISTRY__PASSWORD", &registry.password),
    ] {
        if let Some(value) = value {
            command.env(name, value);
        }
    }
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("join")
        .unwrap_or_else(|e| panic!("cannot run {SCRIPT}: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "confluent_client.py {} failed ({}):\n{}{stdout}",
        args.first().copied().unwrap_or_default(),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("confluent_client.py printed no JSON ({e}): {stdout}"))
}

fn header(event_type: &str, version: i64) -> Value {
    json!({
        "event_id": uuid::Uuid::new_v4().to_string(),
        "event_type": event_type,
        "aggregate_id": "user-42",
        "aggregate_type": "USER",
        "version": version,
        "timestamp": 1_764_160_000_123_456_i64,
        "user_id": "user-42",
        "session_id": null,
        "correlation_id": uuid::Uuid::new_v4().to_string(),
        "causation_id": null,
        "metadata": {"client": "android", "client_version": "3.1.4", "trace": "{\"span\":\"ab12\"}"}
    })
}

/// A MealLogged with several items, null and non-null optionals (strings, uuids, doubles), a
/// metadata map, an empty string, non-ASCII text, zeros and a tiny double.
fn meal_logged_json() -> Value {
    json!({
        "header": header("nutrition.meal.logged", 7),
        "payload": {
            "meal_id": uuid::Uuid::new_v4().to_string(),
            "meal_type": "DINNER",
            "eaten_at": 1_764_158_400_000_001_i64,
            "items": [
                {"food_id": "f-rice", "food_name": "Rice, boiled", "grams": 180.0,
                 "energy_kcal": 234.0, "protein_g": 4.3, "carbohydrate_g": 50.8, "fat_g": 0.5,
                 "fibre_g": 0.7, "sugar_g": null, "sodium_mg": 2.0},
                {"food_id": "custom:9f1c0d2e-4b7a-4c3e-8d5f-0a1b2c3d4e5f",
                 "food_name": "Crème fraîche, 30 % — homemade 🥣", "grams": 12.5,
                 "energy_kcal": 36.9, "protein_g": 0.3, "carbohydrate_g": 0.4, "fat_g": 3.8,
                 "fibre_g": null, "sugar_g": 0.4, "sodium_mg": null},
                {"food_id": "f-salt", "food_name": "", "grams": 0.0,
                 "energy_kcal": 0.0, "protein_g": 0.0, "carbohydrate_g": 0.0, "fat_g": 0.0,
                 "fibre_g": 0.0, "sugar_g": 0.0, "sodium_mg": 1e-300}
            ],
            "note": "after training",
            "source": "BARCODE"
        }
    })
}

/// A WaterIntakeLogged at the edges: the largest int, an instant just before the epoch.
fn water_logged_json() -> Value {
    json!({
        "header": header("nutrition.water.logged", 8),
        "payload": {
            "intake_id": uuid::Uuid::new_v4().to_string(),
            "millilitres": 2_147_483_647,
            "drunk_at": -1_i64
        }
    })
}

fn codec(stack: &Stack) -> Codec<ConfluentRegistry> {
    let registry = stack.config.schema_registry.registry().expect("registry");
    Codec::new(registry, &Catalog::embedded().expect("catalog")).expect("codec")
}

/// A topic of this test with one partition.
async fn topic(stack: &Stack) -> String {
    let topic = stack.topic("events.user");
    ensure_topic(&stack.admin(), &topic, 1, &[], TIMEOUT)
        .await
        .expect("topic");
    topic
}

/// The key and value of the record at `topic[partition]@offset`.
async fn read_at(stack: &Stack, topic: &str, partition: i32, offset: i64) -> (Vec<u8>, Vec<u8>) {
    let consumer: StreamConsumer = stack.consumer_config().create().expect("consumer");
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(topic, partition, Offset::Offset(offset))
        .expect("offset");
    consumer.assign(&assignment).expect("assign");
    let message = tokio::time::timeout(TIMEOUT, consumer.recv())
        .await
        .unwrap_or_else(|_| panic!("no record at {topic}[{partition}]@{offset} in time"))
        .expect("consume");
    assert_eq!(message.offset(), offset);
    (
        message.key().expect("key").to_vec(),
        message.payload().expect("value").to_vec(),
    )
}

/// Python serializes `value` as a `T` to a topic; Rust reads it back and decodes it.
async fn python_writes_rust_reads<T: Record + PartialEq + std::fmt::Debug>(value: Value) {
    let stack = Stack::get().await;
    let topic = topic(&stack).await;
    let schema = Catalog::embedded()
        .expect("catalog")
        .expanded(T::FULL_NAME)
        .expect("schema");
    let schema_file = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "{}-{}.avsc",
        unique_name("schema"),
        T::FULL_NAME
    ));
    std::fs::write(&schema_file, &schema).expect("write schema file");
    let key = "user-42/7";

    let produced = confluent_client(
        &stack,
        &[
            "produce",
            "--topic",
            &topic,
            "--schema-file",
            schema_file.to_str().expect("UTF-8 path"),
            "--value-json",
            &value.to_string(),
            "--key",
            key,
        ],
    )
    .await;
    std::fs::remove_file(&schema_file).expect("remove schema file");
    let python_id = produced["schema_id"].as_u64().expect("schema_id");
    let partition = produced["partition"].as_i64().expect("partition");
    let offset = produced["offset"].as_i64().expect("offset");

    let (read_key, bytes) = read_at(
        &stack,
        &topic,
        i32::try_from(partition).expect("partition"),
        offset,
    )
    .await;
    assert_eq!(read_key, key.as_bytes());
    let (id, python_body) = split_header(&bytes).expect("Confluent wire format");
    assert_eq!(u64::from(id), python_id, "the id in the record");
    // Registered under the TopicRecordNameStrategy subject (ids alone would not show it: the
    // registry shares one id among all subjects of the same schema).
    let registry = stack.config.schema_registry.registry().expect("registry");
    let subject = Codec::<ConfluentRegistry>::subject::<T>(&topic);
    assert_eq!(
        registry.versions(&subject).await.expect("versions"),
        vec![1]
    );

    // A fresh codec: the writer schema is fetched by the id the Python client wrote.
    let codec = codec(&stack);
    assert_eq!(codec.record_name(&bytes).await.expect("name"), T::FULL_NAME);
    let decoded: T = codec.decode(&bytes).await.expect("decode");
    let expected: T = serde_json::from_value(value).expect("sample fits the generated type");
    assert_eq!(decoded, expected);

    // The registry dedupes: the codec registers the same text under the same subject and
    // gets the same id.
    let ours = codec.encode(&topic, &expected).await.expect("encode");
    let (our_id, our_body) = split_header(&ours).expect("wire format");
    assert_eq!(
        our_id,
        id,
        "the codec's schema id for {} on {topic}",
        T::FULL_NAME
    );
    assert_eq!(
        our_body.len(),
        python_body.len(),
        "the same value has the same encoded size"
    );
    assert_eq!(
        registry.versions(&subject).await.expect("versions"),
        vec![1],
        "no new version"
    );
}

/// Rust encodes and produces `record`; Python reads it by partition and offset.
async fn rust_writes_python_reads<T: Record + PartialEq + std::fmt::Debug>(record: T) {
    let stack = Stack::get().await;
    let topic = topic(&stack).await;
    let bytes = codec(&stack).encode(&topic, &record).await.expect("encode");
    let delivery = stack
        .producer()
        .send(
            FutureRecord::to(&topic).key("user-42/8").payload(&bytes),
            TIMEOUT,
        )
        .await
        .map_err(|(e, _)| e)
        .expect("produce");

    let read = confluent_client(
        &stack,
        &[
            "consume",
            "--topic",
            &topic,
            "--partition",
            &delivery.partition.to_string(),
            "--offset",
            &delivery.offset.to_string(),
        ],
    )
    .await;
    let expected = serde_json::to_value(&record).expect("JSON");
    assert_eq!(read, expected, "what the Python client read");
    let typed: T = serde_json::from_value(read).expect("fits the generated type");
    assert_eq!(typed, record);
}

#[tokio::test]
async fn meal_logged_written_by_confluent_python_client_decodes_in_rust() {
    python_writes_rust_reads::<MealLogged>(meal_logged_json()).await;
}

#[tokio::test]
async fn water_intake_logged_written_by_confluent_python_client_decodes_in_rust() {
    python_writes_rust_reads::<WaterIntakeLogged>(water_logged_json()).await;
}

#[tokio::test]
async fn meal_logged_written_by_rust_decodes_in_confluent_python_client() {
    let record: MealLogged = serde_json::from_value(meal_logged_json()).expect("sample");
    rust_writes_python_reads(record).await;
}

#[tokio::test]
async fn water_intake_logged_written_by_rust_decodes_in_confluent_python_client() {
    let record: WaterIntakeLogged = serde_json::from_value(water_logged_json()).expect("sample");
    rust_writes_python_reads(record).await;
}
