//! The codec against the real schema registry and Kafka: wire format, subjects by
//! TopicRecordNameStrategy, writer schemas fetched by id, evolution, and error classification.

mod common;

use std::time::Duration;

use common::Stack;
use dietstream::kafka::ensure_topic;
use dietstream_schemas::catalog::Catalog;
use dietstream_schemas::codec::{Codec, CodecError, Record, MAGIC_BYTE};
use dietstream_schemas::registry::{ConfluentRegistry, SchemaRegistry};
use dietstream_schemas::types::{MealLogged, WaterIntakeLogged};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::FutureRecord;
use serde_json::json;

const TIMEOUT: Duration = Duration::from_secs(30);

fn header(event_type: &str, version: i64) -> serde_json::Value {
    json!({
        "event_id": uuid::Uuid::new_v4().to_string(),
        "event_type": event_type,
        "aggregate_id": "user-42",
        "aggregate_type": "USER",
        "version": version,
        "timestamp": 1_764_160_000_000_000_i64,
        "user_id": "user-42",
        "session_id": "s-1",
        "correlation_id": uuid::Uuid::new_v4().to_string(),
        "causation_id": null,
        "metadata": {"client": "android"}
    })
}

fn meal_logged() -> MealLogged {
    serde_json::from_value(json!({
        "header": header("nutrition.meal.logged", 3),
        "payload": {
            "meal_id": uuid::Uuid::new_v4().to_string(),
            "meal_type": "LUNCH",
            "eaten_at": 1_764_158_400_000_000_i64,
            "items": [
                {"food_id": "f-rice", "food_name": "Rice, boiled", "grams": 180.0,
                 "energy_kcal": 234.0, "protein_g": 4.3, "carbohydrate_g": 50.8, "fat_g": 0.5,
                 "fibre_g": 0.7, "sugar_g": null, "sodium_mg": 2.0},
                {"food_id": "f-chicken", "food_name": "Chicken breast", "grams": 120.0,
                 "energy_kcal": 198.0, "protein_g": 37.2, "carbohydrate_g": 0.0, "fat_g": 4.3,
                 "fibre_g": null, "sugar_g": null, "sodium_mg": 89.0}
            ],
            "note": "after training",
            "source": "BARCODE"
        }
    }))
    .expect("sample fits the generated type")
}

fn water_logged() -> WaterIntakeLogged {
    serde_json::from_value(json!({
        "header": header("nutrition.water.logged", 4),
        "payload": {
            "intake_id": uuid::Uuid::new_v4().to_string(),
            "millilitres": 330,
            "drunk_at": 1_764_159_000_000_000_i64
        }
    }))
    .expect("sample fits the generated type")
}

fn codec(stack: &Stack) -> Codec<ConfluentRegistry> {
    let registry = stack.config.schema_registry.registry().expect("registry");
    Codec::new(registry, &Catalog::embedded().expect("catalog")).expect("codec")
}

#[tokio::test]
async fn event_round_trips_through_registry_and_kafka_in_wire_format() {
    let stack = Stack::get().await;
    let topic = stack.topic("events.user");
    ensure_topic(&stack.admin(), &topic, 3, &[], TIMEOUT)
        .await
        .expect("topic");
    let event = meal_logged();
    let bytes = codec(&stack).encode(&topic, &event).await.expect("encode");
    assert_eq!(bytes[0], MAGIC_BYTE);
    let id = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);

    // Registered under the TopicRecordNameStrategy subject, with that id.
    let registry = stack.config.schema_registry.registry().expect("registry");
    let subject = format!("{topic}-{}", MealLogged::FULL_NAME);
    assert_eq!(
        registry.versions(&subject).await.expect("versions"),
        vec![1]
    );
    assert_eq!(
        registry
            .register(
                &subject,
                &Catalog::embedded()
                    .expect("catalog")
                    .expanded(MealLogged::FULL_NAME)
                    .expect("schema")
            )
            .await
            .expect("register again"),
        id,
        "re-registering the same schema keeps its id"
    );

    let producer = stack.producer();
    producer
        .send(
            FutureRecord::to(&topic).key("user-42/3").payload(&bytes),
            TIMEOUT,
        )
        .await
        .map_err(|(e, _)| e)
        .expect("produce");
    let consumer: StreamConsumer = stack
        .consumer_config()
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("consumer");
    consumer.subscribe(&[&topic]).expect("subscribe");
    let message = tokio::time::timeout(TIMEOUT, consumer.recv())
        .await
        .expect("record in time")
        .expect("consume");

    // A fresh codec has no cache: it fetches the writer schema by id.
    let fresh = codec(&stack);
    let payload = message.payload().expect("payload");
    assert_eq!(
        fresh.record_name(payload).await.expect("name"),
        MealLogged::FULL_NAME
    );
    let decoded: MealLogged = fresh.decode(payload).await.expect("decode");
    assert_eq!(decoded, event);
}

#[tokio::test]
async fn undecodable_records_are_permanent_errors_and_an_absent_registry_is_retryable() {
    let stack = Stack::get().await;
    let topic = stack.topic("events.user");
    let codec = codec(&stack);
    let water = codec
        .encode(&topic, &water_logged())
        .await
        .expect("encode water");

    let bad_magic = codec.decode::<MealLogged>(&[1, 0, 0, 0, 1, 2]).await;
    assert!(matches!(bad_magic, Err(CodecError::BadMagic { found: 1 })));

    let unknown = codec
        .decode::<MealLogged>(&[0, 0x7f, 0xff, 0xff, 0xf0, 2])
        .await;
    assert!(
        matches!(
            unknown,
            Err(CodecError::UnknownSchemaId { id: 0x7fff_fff0 })
        ),
        "{unknown:?}"
    );

    let wrong_type = codec.decode::<MealLogged>(&water).await;
    assert!(
        matches!(&wrong_type, Err(CodecError::UnexpectedType { found, .. }) if found == WaterIntakeLogged::FULL_NAME),
        "{wrong_type:?}"
    );

    let mut truncated = water.clone();
    truncated.truncate(12);
    let bad_body = codec.decode::<WaterIntakeLogged>(&truncated).await;
    assert!(
        matches!(bad_body, Err(CodecError::BadBody { .. })),
        "{bad_body:?}"
    );

    for permanent in [
        bad_magic.map(drop),
        unknown.map(drop),
        wrong_type.map(drop),
        bad_body.map(drop),
    ] {
        assert!(!permanent.expect_err("error").is_retryable());
    }

    // A registry nobody listens on: retryable, so the record is retried, not dead-lettered.
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let absent = ConfluentRegistry::new(
        &format!("http://127.0.0.1:{closed_port}/apis/ccompat/v7"),
        None,
        Duration::from_secs(2),
    )
    .expect("client");
    let offline = Codec::new(absent, &Catalog::embedded().expect("catalog")).expect("codec");
    let err = offline
        .decode::<WaterIntakeLogged>(&water)
        .await
        .expect_err("no registry");
    assert!(err.is_retryable(), "{err}");
}

#[tokio::test]
async fn records_of_an_older_and_a_newer_writer_decode_into_todays_type() {
    let stack = Stack::get().await;
    let topic = stack.topic("events.user");
    let registry = stack.config.schema_registry.registry().expect("registry");
    let catalog = Catalog::embedded().expect("catalog");
    let subject = format!("{topic}-{}", WaterIntakeLogged::FULL_NAME);
    let current = catalog
        .expanded(WaterIntakeLogged::FULL_NAME)
        .expect("schema");
    let current_json: serde_json::Value = serde_json::from_str(&current).expect("JSON");

    // An older writer did not have the header's `metadata` (today's type defaults it to {}).
    let mut older = current_json.clone();
    older["fields"][0]["type"]["fields"]
        .as_array_mut()
        .expect("header fields")
        .retain(|f| f["name"] != "metadata");
    // A newer writer added an optional `container` to the payload.
    let mut newer = current_json;
    newer["fields"][1]["type"]["fields"]
        .as_array_mut()
        .expect("payload fields")
        .push(json!({"name": "container", "type": ["null", "string"], "default": null}));

    // The registry enforces BACKWARD_TRANSITIVE on the subject and accepts all three in order.
    registry
        .set_compatibility(&subject, "BACKWARD_TRANSITIVE")
        .await
        .expect("set compatibility");
    let older_id = registry
        .register(&subject, &older.to_string())
        .await
        .expect("v1");
    registry.register(&subject, &current).await.expect("v2");
    let newer_id = registry
        .register(&subject, &newer.to_string())
        .await
        .expect("v3");

    let codec = codec(&stack);
    let mut event = water_logged();
    let today = codec.encode(&topic, &event).await.expect("encode");
    let current_schema = apache_avro::Schema::parse_str(&current).expect("current");

    // What the newer writer sends: today's record plus the new field, set.
    let newer_bytes = rewrite(&current_schema, &today, &newer, newer_id, |fields| {
        set_field(fields, "payload", "container", "glass")
    });
    let decoded: WaterIntakeLogged = codec.decode(&newer_bytes).await.expect("decode newer");
    assert_eq!(decoded, event, "the unknown field is skipped");

    // What the older writer sent: no metadata at all.
    let older_bytes = rewrite(&current_schema, &today, &older, older_id, |_| {});
    let decoded: WaterIntakeLogged = codec.decode(&older_bytes).await.expect("decode older");
    event.header.metadata.clear();
    assert_eq!(decoded, event, "the missing field takes its default");
}

/// Re-encodes a wire-format record written with `current` as a writer of `target` would write
/// it (schema resolution fills new fields with defaults, drops removed ones), after `change`.
fn rewrite(
    current: &apache_avro::Schema,
    record: &[u8],
    target: &serde_json::Value,
    target_id: u32,
    change: impl FnOnce(&mut Vec<(String, apache_avro::types::Value)>),
) -> Vec<u8> {
    let target = apache_avro::Schema::parse_str(&target.to_string()).expect("target schema");
    let mut value = apache_avro::reader::datum::GenericDatumReader::builder(current)
        .reader_schema(&target)
        .build()
        .expect("reader")
        .read_value(&mut &record[5..])
        .expect("resolve to the target schema");
    let apache_avro::types::Value::Record(fields) = &mut value else {
        panic!("not a record");
    };
    change(fields);
    let mut bytes = vec![MAGIC_BYTE];
    bytes.extend_from_slice(&target_id.to_be_bytes());
    bytes.extend(
        apache_avro::writer::datum::GenericDatumWriter::builder(&target)
            .build()
            .expect("writer")
            .write_value_to_vec(value)
            .expect("encode"),
    );
    bytes
}

fn set_field(
    fields: &mut [(String, apache_avro::types::Value)],
    record: &str,
    field: &str,
    text: &str,
) {
    use apache_avro::types::Value;
    for (name, value) in fields.iter_mut() {
        if name == record {
            let Value::Record(inner) = value else {
                panic!("{record} is not a record");
            };
            for (inner_name, inner_value) in inner.iter_mut() {
                if inner_name == field {
                    *inner_value = Value::Union(1, Box::new(Value::String(text.to_owned())));
                }
            }
        }
    }
}
