//! `dietstream roundtrip`: one Avro record through every part of the stack, each step checked.
//!
//! The record is encoded in the Confluent wire format (schema registered under
//! TopicRecordNameStrategy), produced, consumed back from its exact partition and offset,
//! decoded and compared, then written to and read back from a CQL table. Any difference or
//! failure stops the trip and names the step.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use apache_avro::types::Value;
use rdkafka::admin::AdminClient;
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use schema_registry_converter::async_impl::avro::{AvroDecoder, AvroEncoder};
use schema_registry_converter::error::SRCError;
use schema_registry_converter::schema_registry_common::{
    SchemaType, SubjectNameStrategy, SuppliedSchema,
};
use scylla::value::CqlTimestamp;
use uuid::Uuid;

use crate::config::Config;
use crate::connect::{millis, ConnectError};
use crate::kafka::ensure_topic;
use dietstream_schemas::codec::RECORD_TYPE_HEADER;

/// The probe's Avro schema, as registered.
pub const SCHEMA: &str = include_str!("../schemas/avro/dietstream.diagnostics.RoundTrip.avsc");
/// Full name of the probe record: the record part of its subject.
pub const RECORD_NAME: &str = "dietstream.diagnostics.RoundTrip";

/// Where the probe goes.
#[derive(Debug, Clone)]
pub struct RoundTripOptions {
    /// Topic the probe is produced to; created with one partition when missing.
    pub topic: String,
    /// Table (in the configured keyspace) the probe is written to; created when missing.
    pub table: String,
    /// How long to wait for the produced record to come back.
    pub consume_timeout: Duration,
    /// Text carried in the probe's `note` field.
    pub note: String,
}

impl Default for RoundTripOptions {
    fn default() -> Self {
        Self {
            topic: "dietstream.diagnostics.roundtrip".to_owned(),
            table: "roundtrip".to_owned(),
            consume_timeout: Duration::from_secs(30),
            note: "hello from dietstream".to_owned(),
        }
    }
}

/// One finished step: what it did and how long it took.
#[derive(Debug, Clone)]
pub struct Step {
    /// Short name of the step.
    pub name: &'static str,
    /// What the step did, with the identifiers a person would look up.
    pub detail: String,
    /// Wall time of the step.
    pub elapsed: Duration,
}

/// What a successful trip established.
#[derive(Debug, Clone)]
pub struct RoundTripReport {
    /// The probe's id (Kafka key, CQL primary key).
    pub id: Uuid,
    /// Registry subject the schema is registered under.
    pub subject: String,
    /// Schema id written into the wire format.
    pub schema_id: u32,
    /// Partition the record landed in.
    pub partition: i32,
    /// Offset of the record.
    pub offset: i64,
    /// The steps in order.
    pub steps: Vec<Step>,
}

/// Why the trip stopped.
#[derive(Debug, thiserror::Error)]
pub enum RoundTripError {
    /// A client could not be built or could not connect.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// Kafka refused or failed an operation.
    #[error("{step}: {source}")]
    Kafka {
        /// The step that failed.
        step: &'static str,
        /// What the client said.
        source: KafkaError,
    },
    /// The schema registry refused or failed an operation.
    #[error("{step}: {source}")]
    Registry {
        /// The step that failed.
        step: &'static str,
        /// What the registry client said.
        source: SRCError,
    },
    /// A CQL statement failed.
    #[error("{step}: {message}")]
    Cql {
        /// The step that failed.
        step: &'static str,
        /// What the driver said.
        message: String,
    },
    /// What came back differs from what was sent.
    #[error("{step}: {detail}")]
    Mismatch {
        /// The step that compared.
        step: &'static str,
        /// What differed.
        detail: String,
    },
}

/// Sends one probe through registry, Kafka and CQL; `on_step` sees each step as it ends.
pub async fn run(
    config: &Config,
    options: &RoundTripOptions,
    mut on_step: impl FnMut(&Step),
) -> Result<RoundTripReport, RoundTripError> {
    let mut steps = Vec::new();
    let mut record = |name, detail: String, started: Instant| {
        let step = Step {
            name,
            detail,
            elapsed: started.elapsed(),
        };
        on_step(&step);
        steps.push(step);
    };

    let started = Instant::now();
    let admin: AdminClient<DefaultClientContext> =
        config
            .kafka
            .client_config()
            .create()
            .map_err(|source| RoundTripError::Kafka {
                step: "topic",
                source,
            })?;
    let created = ensure_topic(&admin, &options.topic, 1, &[], config.kafka.request_timeout)
        .await
        .map_err(|source| RoundTripError::Kafka {
            step: "topic",
            source,
        })?;
    record(
        "topic",
        format!(
            "{} {} on {}",
            options.topic,
            if created { "created" } else { "exists" },
            config.kafka.bootstrap_servers
        ),
        started,
    );

    let started = Instant::now();
    let id = Uuid::new_v4();
    let sent_at = now_millis();
    let origin = std::env::var("HOSTNAME").unwrap_or_else(|_| "unknown".to_owned());
    let fields = vec![
        ("id", Value::Uuid(id)),
        ("sent_at", Value::TimestampMillis(sent_at)),
        ("origin", Value::String(origin)),
        ("note", Value::String(options.note.clone())),
    ];
    let sr_settings = config.schema_registry.sr_settings()?;
    let encoder = AvroEncoder::new(sr_settings.clone());
    let strategy = SubjectNameStrategy::TopicRecordNameStrategyWithSchema(
        options.topic.clone(),
        SuppliedSchema::new(
            Some(RECORD_NAME.to_owned()),
            SchemaType::Avro,
            SCHEMA.to_owned(),
        ),
    );
    let subject = format!("{}-{}", options.topic, RECORD_NAME);
    let payload = encoder
        .encode(fields.clone(), strategy)
        .await
        .map_err(|source| RoundTripError::Registry {
            step: "encode",
            source,
        })?;
    let schema_id = wire_schema_id(&payload).ok_or_else(|| RoundTripError::Mismatch {
        step: "encode",
        detail: "encoder output is not in the Confluent wire format".to_owned(),
    })?;
    record(
        "encode",
        format!(
            "{} bytes, Confluent wire format, schema id {schema_id}, subject {subject} at {}",
            payload.len(),
            config.schema_registry.url
        ),
        started,
    );

    let started = Instant::now();
    let producer: FutureProducer = config
        .kafka
        .client_config()
        .set("enable.idempotence", "true")
        .set("message.timeout.ms", millis(config.kafka.request_timeout))
        .create()
        .map_err(|source| RoundTripError::Kafka {
            step: "produce",
            source,
        })?;
    let key = id.to_string();
    let headers = OwnedHeaders::new().insert(Header {
        key: RECORD_TYPE_HEADER,
        value: Some("diagnostics.roundtrip"),
    });
    let delivery = producer
        .send(
            FutureRecord::to(&options.topic)
                .key(&key)
                .payload(&payload)
                .headers(headers),
            config.kafka.request_timeout,
        )
        .await
        .map_err(|(source, _)| RoundTripError::Kafka {
            step: "produce",
            source,
        })?;
    let (partition, offset) = (delivery.partition, delivery.offset);
    record(
        "produce",
        format!(
            "key {key} -> {}[{partition}] offset {offset}",
            options.topic
        ),
        started,
    );

    let started = Instant::now();
    let consumer: StreamConsumer = config
        .kafka
        .client_config()
        .set("group.id", "dietstream-roundtrip")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()
        .map_err(|source| RoundTripError::Kafka {
            step: "consume",
            source,
        })?;
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(&options.topic, partition, Offset::Offset(offset))
        .map_err(|source| RoundTripError::Kafka {
            step: "consume",
            source,
        })?;
    consumer
        .assign(&assignment)
        .map_err(|source| RoundTripError::Kafka {
            step: "consume",
            source,
        })?;
    let message = tokio::time::timeout(options.consume_timeout, consumer.recv())
        .await
        .map_err(|_| RoundTripError::Mismatch {
            step: "consume",
            detail: format!(
                "record at {}[{partition}] offset {offset} did not come back within {:?}",
                options.topic, options.consume_timeout
            ),
        })?
        .map_err(|source| RoundTripError::Kafka {
            step: "consume",
            source,
        })?;
    if message.offset() != offset || message.key() != Some(key.as_bytes()) {
        return Err(RoundTripError::Mismatch {
            step: "consume",
            detail: format!(
                "expected key {key} at offset {offset}, got {:?} at offset {}",
                message.key().map(String::from_utf8_lossy),
                message.offset()
            ),
        });
    }
    let event_type = dietstream_runtime::headers::find(message.headers(), RECORD_TYPE_HEADER)
        .map(String::from_utf8_lossy);
    record(
        "consume",
        format!(
            "read back offset {offset}, header {RECORD_TYPE_HEADER}={}",
            event_type.as_deref().unwrap_or("<missing>")
        ),
        started,
    );

    let started = Instant::now();
    let decoder = AvroDecoder::new(sr_settings);
    let decoded =
        decoder
            .decode(message.payload())
            .await
            .map_err(|source| RoundTripError::Registry {
                step: "decode",
                source,
            })?;
    let expected = Value::Record(
        fields
            .into_iter()
            .map(|(name, value)| (name.to_owned(), value))
            .collect(),
    );
    if decoded.value != expected {
        return Err(RoundTripError::Mismatch {
            step: "decode",
            detail: format!("sent {expected:?}, decoded {:?}", decoded.value),
        });
    }
    record(
        "decode",
        format!(
            "writer schema {schema_id} fetched by id; {} equals what was sent",
            decoded
                .name
                .map(|n| n.fullname(None))
                .unwrap_or_else(|| RECORD_NAME.to_owned())
        ),
        started,
    );

    let started = Instant::now();
    let session = config.cql.session().await?;
    let keyspace = &config.cql.keyspace;
    let table = format!("{keyspace}.{}", options.table);
    let cql = |message: String| RoundTripError::Cql {
        step: "cql",
        message,
    };
    config
        .cql
        .create_keyspace(&session)
        .await
        .map_err(|e| cql(e.to_string()))?;
    session
        .query_unpaged(
            format!(
                "CREATE TABLE IF NOT EXISTS {table} (id uuid PRIMARY KEY, topic text, \
                 partition int, offset bigint, schema_id int, sent_at timestamp)"
            ),
            (),
        )
        .await
        .map_err(|e| cql(e.to_string()))?;
    let insert = session
        .prepare(format!(
            "INSERT INTO {table} (id, topic, partition, offset, schema_id, sent_at) \
             VALUES (?, ?, ?, ?, ?, ?)"
        ))
        .await
        .map_err(|e| cql(e.to_string()))?;
    let schema_id_cql = i32::try_from(schema_id).map_err(|_| RoundTripError::Mismatch {
        step: "cql",
        detail: format!("schema id {schema_id} does not fit a CQL int"),
    })?;
    session
        .execute_unpaged(
            &insert,
            (
                id,
                &options.topic,
                partition,
                offset,
                schema_id_cql,
                CqlTimestamp(sent_at),
            ),
        )
        .await
        .map_err(|e| cql(e.to_string()))?;
    let select = session
        .prepare(format!(
            "SELECT topic, partition, offset, schema_id, sent_at FROM {table} WHERE id = ?"
        ))
        .await
        .map_err(|e| cql(e.to_string()))?;
    let row: (String, i32, i64, i32, CqlTimestamp) = session
        .execute_unpaged(&select, (id,))
        .await
        .map_err(|e| cql(e.to_string()))?
        .into_rows_result()
        .map_err(|e| cql(e.to_string()))?
        .single_row()
        .map_err(|e| cql(e.to_string()))?;
    let wanted = (
        options.topic.clone(),
        partition,
        offset,
        schema_id_cql,
        CqlTimestamp(sent_at),
    );
    if row != wanted {
        return Err(RoundTripError::Mismatch {
            step: "cql",
            detail: format!("wrote {wanted:?}, read {row:?}"),
        });
    }
    record(
        "cql",
        format!(
            "row {id} written to and read back from {table} on {}",
            config.cql.contact_points.join(",")
        ),
        started,
    );

    Ok(RoundTripReport {
        id,
        subject,
        schema_id,
        partition,
        offset,
        steps,
    })
}

/// The schema id of a Confluent wire-format payload: magic byte 0, then 4 bytes big-endian.
pub fn wire_schema_id(payload: &[u8]) -> Option<u32> {
    match payload {
        [0, a, b, c, d, ..] => Some(u32::from_be_bytes([*a, *b, *c, *d])),
        _ => None,
    }
}

fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_schema_id_reads_the_confluent_header() {
        assert_eq!(wire_schema_id(&[0, 0, 0, 1, 2, 42]), Some(258));
        assert_eq!(wire_schema_id(&[0, 0, 0, 0, 7]), Some(7));
        assert_eq!(wire_schema_id(&[1, 0, 0, 0, 7]), None, "bad magic byte");
        assert_eq!(wire_schema_id(&[0, 0, 0]), None, "too short");
    }

    #[test]
    fn probe_schema_parses_and_names_the_record() {
        let schema = apache_avro::Schema::parse_str(SCHEMA).expect("valid schema");
        let name = match &schema {
            apache_avro::Schema::Record(record) => record.name.fullname(None),
            other => panic!("not a record: {other:?}"),
        };
        assert_eq!(name, RECORD_NAME);
    }
}
