//! The CQL tables the indexer owns, their migrations, and the key computations readers share
//! with it (table names, the day of a timestamp).
//!
//! Every row is keyed by the identity of what it indexes (aggregate and version, or event id
//! and time), so writing a record twice leaves one row with the same content (DESIGN
//! decision 4).

use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;
use scylla::value::{CqlDate, CqlTimestamp};

use crate::IndexerError;

/// Every event of one aggregate, by version: the event store read path.
pub const EVENTS_BY_AGGREGATE: &str = "events_by_aggregate";
/// Every event of one type on one UTC day, by time (the seed's `getEventsByType`).
pub const EVENTS_BY_TYPE: &str = "events_by_type";
/// Every event of one user on one UTC day, by time (the seed's `getEventsByUser`).
pub const EVENTS_BY_USER: &str = "events_by_user";
/// Every snapshot of one aggregate, newest version first.
pub const SNAPSHOTS: &str = "snapshots";

/// Microseconds in one day.
const MICROS_PER_DAY: i64 = 86_400_000_000;

/// The CQL statements that create the indexer's tables in `keyspace`, in order. They are
/// idempotent (`IF NOT EXISTS`).
///
/// Column notes: `value` holds the Kafka record value byte for byte (Confluent wire format),
/// so a reader decodes it with the codec and gets exactly what was appended. `timestamp` is
/// the event's time cut to milliseconds (CQL `timestamp`), readable in cqlsh; the exact
/// microseconds are in the value. `topic`, `partition` and `offset` say where the record is
/// in Kafka, the source of truth.
pub fn migrations(keyspace: &str) -> Vec<String> {
    vec![
        format!(
            "CREATE TABLE IF NOT EXISTS {keyspace}.{EVENTS_BY_AGGREGATE} (
                aggregate_type text,
                aggregate_id text,
                version bigint,
                event_id uuid,
                event_type text,
                timestamp timestamp,
                user_id text,
                correlation_id uuid,
                causation_id uuid,
                topic text,
                partition int,
                offset bigint,
                value blob,
                PRIMARY KEY ((aggregate_type, aggregate_id), version)
            ) WITH CLUSTERING ORDER BY (version ASC)"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {keyspace}.{EVENTS_BY_TYPE} (
                event_type text,
                day date,
                timestamp timestamp,
                event_id uuid,
                aggregate_type text,
                aggregate_id text,
                version bigint,
                value blob,
                PRIMARY KEY ((event_type, day), timestamp, event_id)
            ) WITH CLUSTERING ORDER BY (timestamp ASC, event_id ASC)"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {keyspace}.{EVENTS_BY_USER} (
                user_id text,
                day date,
                timestamp timestamp,
                event_id uuid,
                event_type text,
                aggregate_type text,
                aggregate_id text,
                version bigint,
                value blob,
                PRIMARY KEY ((user_id, day), timestamp, event_id)
            ) WITH CLUSTERING ORDER BY (timestamp ASC, event_id ASC)"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {keyspace}.{SNAPSHOTS} (
                aggregate_type text,
                aggregate_id text,
                version bigint,
                last_event_id uuid,
                taken_at timestamp,
                state_format text,
                topic text,
                partition int,
                offset bigint,
                value blob,
                PRIMARY KEY ((aggregate_type, aggregate_id), version)
            ) WITH CLUSTERING ORDER BY (version DESC)"
        ),
    ]
}

/// Creates the indexer's tables in `keyspace` (which must exist) unless they exist. Safe to
/// run any number of times, also while an indexer runs.
pub async fn migrate(session: &Session, keyspace: &str) -> Result<(), IndexerError> {
    for statement in migrations(keyspace) {
        session
            .query_unpaged(statement.as_str(), ())
            .await
            .map_err(|source| IndexerError::Migration {
                statement,
                source: Box::new(source),
            })?;
    }
    // Schema changes travel between nodes asynchronously; prepared statements on a node that
    // has not seen a table yet would fail.
    session
        .await_schema_agreement()
        .await
        .map_err(|source| IndexerError::Migration {
            statement: "(schema agreement)".to_owned(),
            source: Box::new(source),
        })?;
    Ok(())
}

/// The UTC day of an instant given in microseconds since the Unix epoch, as days since
/// 1970-01-01 (negative before it).
pub fn day_of_micros(micros: i64) -> i64 {
    micros.div_euclid(MICROS_PER_DAY)
}

/// A day number (days since 1970-01-01) as a CQL `date`, which counts from 2^31.
pub fn cql_date(day: i64) -> CqlDate {
    // Days representable in an i64 of microseconds are far inside the u32 range of CQL dates.
    CqlDate((day + (1_i64 << 31)) as u32)
}

/// An instant in microseconds as a CQL `timestamp` (milliseconds, rounded down).
pub fn cql_timestamp(micros: i64) -> CqlTimestamp {
    CqlTimestamp(micros.div_euclid(1_000))
}

/// The indexer's statements, prepared once at start.
pub(crate) struct Statements {
    pub(crate) insert_by_aggregate: PreparedStatement,
    pub(crate) insert_by_type: PreparedStatement,
    pub(crate) insert_by_user: PreparedStatement,
    pub(crate) insert_snapshot: PreparedStatement,
    pub(crate) select_for_erasure: PreparedStatement,
    pub(crate) delete_by_aggregate: PreparedStatement,
    pub(crate) delete_by_type: PreparedStatement,
    pub(crate) delete_by_user: PreparedStatement,
    pub(crate) delete_snapshots: PreparedStatement,
}

impl Statements {
    pub(crate) async fn prepare(session: &Session, ks: &str) -> Result<Self, IndexerError> {
        let prepare = |text: String| async move {
            session
                .prepare(text.as_str())
                .await
                .map_err(|source| IndexerError::Prepare {
                    statement: text,
                    source: Box::new(source),
                })
        };
        Ok(Statements {
            insert_by_aggregate: prepare(format!(
                "INSERT INTO {ks}.{EVENTS_BY_AGGREGATE} (aggregate_type, aggregate_id, version, \
                 event_id, event_type, timestamp, user_id, correlation_id, causation_id, topic, \
                 partition, offset, value) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            ))
            .await?,
            insert_by_type: prepare(format!(
                "INSERT INTO {ks}.{EVENTS_BY_TYPE} (event_type, day, timestamp, event_id, \
                 aggregate_type, aggregate_id, version, value) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
            ))
            .await?,
            insert_by_user: prepare(format!(
                "INSERT INTO {ks}.{EVENTS_BY_USER} (user_id, day, timestamp, event_id, \
                 event_type, aggregate_type, aggregate_id, version, value) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
            ))
            .await?,
            insert_snapshot: prepare(format!(
                "INSERT INTO {ks}.{SNAPSHOTS} (aggregate_type, aggregate_id, version, \
                 last_event_id, taken_at, state_format, topic, partition, offset, value) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            ))
            .await?,
            select_for_erasure: prepare(format!(
                "SELECT event_id, event_type, timestamp, user_id FROM {ks}.{EVENTS_BY_AGGREGATE} \
                 WHERE aggregate_type = ? AND aggregate_id = ? AND version = ?"
            ))
            .await?,
            delete_by_aggregate: prepare(format!(
                "DELETE FROM {ks}.{EVENTS_BY_AGGREGATE} \
                 WHERE aggregate_type = ? AND aggregate_id = ? AND version = ?"
            ))
            .await?,
            delete_by_type: prepare(format!(
                "DELETE FROM {ks}.{EVENTS_BY_TYPE} \
                 WHERE event_type = ? AND day = ? AND timestamp = ? AND event_id = ?"
            ))
            .await?,
            delete_by_user: prepare(format!(
                "DELETE FROM {ks}.{EVENTS_BY_USER} \
                 WHERE user_id = ? AND day = ? AND timestamp = ? AND event_id = ?"
            ))
            .await?,
            delete_snapshots: prepare(format!(
                "DELETE FROM {ks}.{SNAPSHOTS} WHERE aggregate_type = ? AND aggregate_id = ?"
            ))
            .await?,
        })
    }
}

/// The text stored for an aggregate type (its Avro symbol), as in the `aggregate_type` columns.
pub fn aggregate_type_name(
    aggregate_type: dietstream_schemas::types::AggregateType,
) -> &'static str {
    use dietstream_schemas::types::AggregateType;
    match aggregate_type {
        AggregateType::Unknown => "UNKNOWN",
        AggregateType::User => "USER",
        AggregateType::Social => "SOCIAL",
        AggregateType::Ai => "AI",
        AggregateType::System => "SYSTEM",
    }
}
