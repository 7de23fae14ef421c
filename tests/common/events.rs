//! Events the read-model tests produce straight to an event topic (not through the command
//! processor), encoded with the registry as the command processor would, and read-model tables
//! dumped for comparison.

use std::time::Duration;

use dietstream_schemas::codec::{Codec, RECORD_TYPE_HEADER};
use dietstream_schemas::registry::ConfluentRegistry;
use dietstream_schemas::types::WaterIntakeLogged;
use dietstream_schemas::Event;
use dietstream_topology::partition_for;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use scylla::client::session::Session;
use serde_json::json;

/// 2025-11-26T00:00:00Z in microseconds.
pub const DAY_START: i64 = 1_764_115_200_000_000;
/// An hour in microseconds.
pub const HOUR: i64 = 3_600_000_000;

/// The JSON of an event header of `user` (also its aggregate) at `version` and `timestamp`.
pub fn event_header(
    event_type: &str,
    user: &str,
    version: i64,
    timestamp: i64,
) -> serde_json::Value {
    json!({
        "event_id": uuid::Uuid::new_v4().to_string(),
        "event_type": event_type,
        "aggregate_id": user,
        "aggregate_type": "USER",
        "version": version,
        "timestamp": timestamp,
        "user_id": user,
        "session_id": null,
        "correlation_id": null,
        "causation_id": null,
        "metadata": {}
    })
}

/// A `nutrition.water.logged` event of `user` at `version`, drunk at `timestamp` (µs).
pub fn water(user: &str, version: i64, timestamp: i64, millilitres: i32) -> Event {
    Event::WaterIntakeLogged(
        serde_json::from_value::<WaterIntakeLogged>(json!({
            "header": event_header("nutrition.water.logged", user, version, timestamp),
            "payload": {
                "intake_id": uuid::Uuid::new_v4().to_string(),
                "millilitres": millilitres,
                "drunk_at": timestamp
            }
        }))
        .expect("water fits the generated type"),
    )
}

/// Produces `value` to `topic` in the partition of `user`, with an `event_type` header;
/// returns its (partition, offset).
pub async fn produce(
    producer: &FutureProducer,
    topic: &str,
    partitions: i32,
    user: &str,
    event_type: &str,
    value: &[u8],
) -> (i32, i64) {
    let headers = OwnedHeaders::new().insert(Header {
        key: RECORD_TYPE_HEADER,
        value: Some(event_type),
    });
    let record = FutureRecord::<str, [u8]>::to(topic)
        .key(user)
        .partition(partition_for(user, partitions))
        .headers(headers)
        .payload(value);
    let delivered = producer
        .send(record, Duration::from_secs(30))
        .await
        .map_err(|(e, _)| e)
        .expect("produce");
    (delivered.partition, delivered.offset)
}

/// Encodes `event` for `topic` and produces it, keyed `<aggregate id>/<version>` like the
/// command processor's events; returns its (partition, offset).
pub async fn produce_event(
    producer: &FutureProducer,
    codec: &Codec<ConfluentRegistry>,
    topic: &str,
    partitions: i32,
    event: &Event,
) -> (i32, i64) {
    let bytes = event.encode(codec, topic).await.expect("encode");
    let user = event.header().aggregate_id.clone();
    produce(
        producer,
        topic,
        partitions,
        &user,
        event.record_type(),
        &bytes,
    )
    .await
}

/// Every row of `keyspace.table` as JSON text, sorted.
pub async fn table_rows(session: &Session, keyspace: &str, table: &str) -> Vec<String> {
    let rows = session
        .query_unpaged(format!("SELECT JSON * FROM {keyspace}.{table}"), ())
        .await
        .unwrap_or_else(|e| panic!("select from {table}: {e}"))
        .into_rows_result()
        .expect("rows");
    let mut rows: Vec<String> = rows
        .rows::<(String,)>()
        .expect("typed rows")
        .map(|row| row.expect("row").0)
        .collect();
    rows.sort();
    rows
}

/// The (active, building, tables) row of `processor` in the generations table.
pub async fn generations_row(
    session: &Session,
    keyspace: &str,
    processor: &str,
) -> (Option<i32>, Option<i32>, Option<Vec<String>>) {
    session
        .query_unpaged(
            format!(
                "SELECT active, building, tables FROM {keyspace}.read_model_generations \
                 WHERE processor = ?"
            ),
            (processor,),
        )
        .await
        .expect("select generations")
        .into_rows_result()
        .expect("rows")
        .single_row::<(Option<i32>, Option<i32>, Option<Vec<String>>)>()
        .expect("one row per processor")
}
