//! The event store (the seed's `EventStore`): appends through the command processor, reads of
//! the events of an aggregate, of a type or of a user over a time range, and of the latest
//! snapshot of an aggregate from the index tables the indexer (`dietstream-indexer`) keeps in
//! CQL, decoded through the codec.
//!
//! **Appends are commands.** The command processor is the single writer of the event topics
//! (DESIGN decision 3): it decides the events from the aggregate's state, so a caller appends by
//! sending the command that yields them, with the version it expects the aggregate to be at
//! ([`EventStore::append`]). The reply comes back over Kafka within a timeout and names the new
//! version, or for a stale expected version both the expected and the actual one.
//! [`EventStore::save_snapshot`] likewise asks the processor to snapshot an aggregate now
//! (`aggregate.snapshot.take`), inside its transaction, so a snapshot always matches the log.
//!
//! **Kafka is the source of truth.** The tables are an index of the event and snapshot topics:
//! every row holds the Kafka record value byte for byte (decoded here exactly as a consumer
//! would) and its topic, partition and offset. Appends go to Kafka only (through the command
//! processor); nothing writes these tables but the indexer, and they can be rebuilt at any time
//! by replaying the topics into a fresh keyspace.
//!
//! **How far behind Kafka the index may be.** A record is visible here once the indexer has
//! read it and CQL acknowledged its writes: the indexer's consumer lag (group
//! `dietstream.indexer`) bounds how stale a read is. In normal operation that is one poll and
//! one batch of writes (milliseconds to about a second); it grows when the indexer is down,
//! restarting, rebalancing, or retrying a transient CQL or registry error in place (bounded by
//! its retry policy, after which it stops and must be restarted), and it is as large as the
//! whole log while a new keyspace is being rebuilt. A reader that needs to know checks the lag
//! of the group: committed offsets against the end offsets of the partitions
//! (`kafka-consumer-groups --describe --group dietstream.indexer`, or the lag metrics measured
//! from outside the consumers), or compares the version it expects with the highest version
//! [`EventStore::events`] returns. A reader that must see its own append (read-your-writes)
//! waits until the aggregate's version reaches the `new_version` of its accepted command, or
//! reads the partition from Kafka. Committed offsets trail the stored ones by the auto-commit
//! interval, so they overstate the lag slightly, never understate it.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dietstream_indexer::tables::{
    aggregate_type_name, cql_date, day_of_micros, EVENTS_BY_AGGREGATE, EVENTS_BY_TYPE,
    EVENTS_BY_USER, SNAPSHOTS,
};
use dietstream_schemas::codec::{Codec, CodecError};
use dietstream_schemas::registry::SchemaRegistry;
use dietstream_schemas::types::{
    AggregateSnapshot, AggregateType, CommandHeader, RejectionReason, TakeSnapshot,
    TakeSnapshotPayload,
};
use dietstream_schemas::{codec::Record, Command, Event};
use futures::TryStreamExt;
use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;
use scylla::value::CqlTimestamp;
use uuid::Uuid;

use crate::bus::{BusError, CommandBus, CommandOutcome};

/// Why a read failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A statement could not be prepared: the tables do not exist (run the indexer's
    /// migrations) or the cluster is unreachable.
    #[error("cannot prepare {statement}: {source}")]
    Prepare {
        /// The CQL statement.
        statement: String,
        /// What the driver said.
        source: Box<scylla::errors::PrepareError>,
    },
    /// A query failed. Retryable.
    #[error("reading {table} failed: {source}")]
    Query {
        /// The table read.
        table: &'static str,
        /// What the driver said.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A stored value could not be decoded. Retryable when the registry did not answer;
    /// otherwise the index holds a record the indexer would have dead-lettered (a bug).
    #[error("the record at {table} {row} cannot be decoded: {source}")]
    Decode {
        /// The table read.
        table: &'static str,
        /// Which row.
        row: String,
        /// What the codec said.
        source: CodecError,
    },
}

impl StoreError {
    /// True when the same read may succeed later.
    pub fn is_retryable(&self) -> bool {
        match self {
            StoreError::Prepare { .. } | StoreError::Query { .. } => true,
            StoreError::Decode { source, .. } => source.is_retryable(),
        }
    }
}

/// Why an append (or a snapshot request) did not happen.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// The aggregate is not at the expected version: nothing was appended. Read it again,
    /// decide again, retry with `actual` as the expected version.
    #[error(
        "concurrency conflict on {aggregate_id}: expected version {expected}, actual {actual}"
    )]
    Concurrency {
        /// The aggregate.
        aggregate_id: String,
        /// The version the caller expected.
        expected: i64,
        /// The aggregate's version when the command was decided.
        actual: i64,
    },
    /// The command processor refused the command for another reason: nothing was appended.
    #[error("rejected ({reason:?}){}: {message}", field.as_deref().map(|f| format!(" at {f}")).unwrap_or_default())]
    Rejected {
        /// The reason class.
        reason: RejectionReason,
        /// Human-readable explanation.
        message: String,
        /// The invalid field, for validation errors.
        field: Option<String>,
    },
    /// The command could not be sent or its result did not arrive in time (see
    /// [`BusError::is_retryable`]). After a timeout the command may still be applied: retry
    /// it with the same command id, and the processor's reply for that id tells.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// This store was built for reads only ([`EventStore::new`] without
    /// [`EventStore::appending_through`]).
    #[error("this event store has no command bus: build it with EventStore::appending_through")]
    ReadOnly,
}

/// What an accepted append wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    /// The aggregate's version after the appended events.
    pub new_version: i64,
    /// Ids of the appended events, in order; empty when the command changed nothing (and
    /// for a snapshot request).
    pub event_ids: Vec<Uuid>,
}

/// The event store. Cheap to share: hold it in an `Arc`.
pub struct EventStore<R> {
    session: Arc<Session>,
    codec: Arc<Codec<R>>,
    by_aggregate: PreparedStatement,
    by_type: PreparedStatement,
    by_user: PreparedStatement,
    snapshot: PreparedStatement,
    bus: Option<(Arc<CommandBus>, Duration)>,
}

impl<R: SchemaRegistry> EventStore<R> {
    /// Prepares the reads of the tables in `keyspace`.
    pub async fn new(
        session: Arc<Session>,
        keyspace: &str,
        codec: Arc<Codec<R>>,
    ) -> Result<Self, StoreError> {
        let prepare = |text: String| {
            let session = Arc::clone(&session);
            async move {
                session
                    .prepare(text.as_str())
                    .await
                    .map_err(|source| StoreError::Prepare {
                        statement: text,
                        source: Box::new(source),
                    })
            }
        };
        let by_aggregate = prepare(format!(
            "SELECT version, value FROM {keyspace}.{EVENTS_BY_AGGREGATE} \
             WHERE aggregate_type = ? AND aggregate_id = ? AND version >= ? AND version <= ?"
        ))
        .await?;
        let by_type = prepare(format!(
            "SELECT event_id, value FROM {keyspace}.{EVENTS_BY_TYPE} \
             WHERE event_type = ? AND day = ? AND timestamp >= ? AND timestamp < ?"
        ))
        .await?;
        let by_user = prepare(format!(
            "SELECT event_id, value FROM {keyspace}.{EVENTS_BY_USER} \
             WHERE user_id = ? AND day = ? AND timestamp >= ? AND timestamp < ?"
        ))
        .await?;
        let snapshot = prepare(format!(
            "SELECT version, value FROM {keyspace}.{SNAPSHOTS} \
             WHERE aggregate_type = ? AND aggregate_id = ? AND version <= ? LIMIT 1"
        ))
        .await?;
        Ok(EventStore {
            session,
            codec,
            by_aggregate,
            by_type,
            by_user,
            snapshot,
            bus: None,
        })
    }

    /// Lets this store append: commands go through `bus`, and each waits up to `timeout` for
    /// the processor's reply.
    pub fn appending_through(mut self, bus: Arc<CommandBus>, timeout: Duration) -> Self {
        self.bus = Some((bus, timeout));
        self
    }

    /// Appends the events `command` yields to the aggregate `aggregate_id`, if the aggregate is
    /// at `expected_version` (`None`: at any version; `Some(0)`: it must not exist yet).
    /// `aggregate_id` and `expected_version` replace the command header's own. Returns the
    /// new version, or [`AppendError::Concurrency`] naming the expected and actual versions.
    pub async fn append(
        &self,
        aggregate_id: &str,
        mut command: Command,
        expected_version: Option<i64>,
    ) -> Result<Appended, AppendError> {
        let (bus, timeout) = self.bus.as_ref().ok_or(AppendError::ReadOnly)?;
        {
            let header = command.header_mut();
            header.aggregate_id = aggregate_id.to_owned();
            header.expected_version = expected_version;
        }
        match bus.execute(command, *timeout).await? {
            CommandOutcome::Accepted {
                new_version,
                event_ids,
            } => Ok(Appended {
                new_version,
                event_ids,
            }),
            CommandOutcome::Rejected {
                reason: RejectionReason::ConcurrencyConflict,
                expected_version: expected,
                current_version: actual,
                ..
            } => Err(AppendError::Concurrency {
                aggregate_id: aggregate_id.to_owned(),
                expected: expected.or(expected_version).unwrap_or_default(),
                actual: actual.unwrap_or_default(),
            }),
            CommandOutcome::Rejected {
                reason,
                message,
                field,
                ..
            } => Err(AppendError::Rejected {
                reason,
                message,
                field,
            }),
        }
    }

    /// Asks the command processor to write a snapshot of the aggregate at its current version
    /// now (the seed's `saveSnapshot`); returns that version. `reason` is logged by the
    /// processor. The snapshot is readable through [`EventStore::snapshot`] once the indexer
    /// has read it.
    pub async fn save_snapshot(
        &self,
        aggregate_type: AggregateType,
        aggregate_id: &str,
        reason: &str,
    ) -> Result<i64, AppendError> {
        let issued_at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX));
        let command = Command::TakeSnapshot(TakeSnapshot {
            header: CommandHeader {
                command_id: Uuid::new_v4(),
                command_type: TakeSnapshot::RECORD_TYPE.to_owned(),
                aggregate_id: aggregate_id.to_owned(),
                aggregate_type,
                expected_version: None,
                issued_at,
                user_id: None,
                session_id: None,
                correlation_id: None,
                causation_id: None,
                metadata: Default::default(),
            },
            payload: TakeSnapshotPayload {
                reason: reason.to_owned(),
            },
        });
        self.append(aggregate_id, command, None)
            .await
            .map(|appended| appended.new_version)
    }

    /// The events of one aggregate with `from_version <= version <= to_version`, ordered by
    /// version. Erased events (tombstoned) are absent, so versions may have gaps.
    pub async fn events(
        &self,
        aggregate_type: AggregateType,
        aggregate_id: &str,
        from_version: i64,
        to_version: i64,
    ) -> Result<Vec<Event>, StoreError> {
        let table = EVENTS_BY_AGGREGATE;
        let query_error =
            |e: Box<dyn std::error::Error + Send + Sync>| StoreError::Query { table, source: e };
        let mut rows = self
            .session
            .execute_iter(
                self.by_aggregate.clone(),
                (
                    aggregate_type_name(aggregate_type),
                    aggregate_id,
                    from_version,
                    to_version,
                ),
            )
            .await
            .map_err(|e| query_error(Box::new(e)))?
            .rows_stream::<(i64, Vec<u8>)>()
            .map_err(|e| query_error(Box::new(e)))?;
        let mut events = Vec::new();
        while let Some((version, value)) = rows
            .try_next()
            .await
            .map_err(|e| query_error(Box::new(e)))?
        {
            let event =
                self.codec
                    .decode_event(&value)
                    .await
                    .map_err(|source| StoreError::Decode {
                        table,
                        row: format!("{aggregate_type:?} {aggregate_id} version {version}"),
                        source,
                    })?;
            events.push(event);
        }
        Ok(events)
    }

    /// The events of one type with `from_micros <= timestamp < to_micros` (microseconds since
    /// the Unix epoch), ordered by timestamp, then aggregate and version. Reads one partition
    /// per UTC day of the range, so keep ranges to days or weeks.
    pub async fn events_by_type(
        &self,
        event_type: &str,
        from_micros: i64,
        to_micros: i64,
    ) -> Result<Vec<Event>, StoreError> {
        self.events_by_day(
            &self.by_type,
            EVENTS_BY_TYPE,
            event_type,
            from_micros,
            to_micros,
        )
        .await
    }

    /// The events of one user (events whose header names them as `user_id`) with
    /// `from_micros <= timestamp < to_micros`, ordered by timestamp, then aggregate and
    /// version. Reads one partition per UTC day of the range.
    pub async fn events_by_user(
        &self,
        user_id: &str,
        from_micros: i64,
        to_micros: i64,
    ) -> Result<Vec<Event>, StoreError> {
        self.events_by_day(
            &self.by_user,
            EVENTS_BY_USER,
            user_id,
            from_micros,
            to_micros,
        )
        .await
    }

    /// The latest snapshot of an aggregate at or below `at_version`, if the indexer has one.
    pub async fn snapshot(
        &self,
        aggregate_type: AggregateType,
        aggregate_id: &str,
        at_version: i64,
    ) -> Result<Option<AggregateSnapshot>, StoreError> {
        let table = SNAPSHOTS;
        let row = self
            .session
            .execute_unpaged(
                &self.snapshot,
                (
                    aggregate_type_name(aggregate_type),
                    aggregate_id,
                    at_version,
                ),
            )
            .await
            .map_err(|e| StoreError::Query {
                table,
                source: Box::new(e),
            })?
            .into_rows_result()
            .map_err(|e| StoreError::Query {
                table,
                source: Box::new(e),
            })?
            .maybe_first_row::<(i64, Vec<u8>)>()
            .map_err(|e| StoreError::Query {
                table,
                source: Box::new(e),
            })?;
        let Some((version, value)) = row else {
            return Ok(None);
        };
        self.codec
            .decode::<AggregateSnapshot>(&value)
            .await
            .map(Some)
            .map_err(|source| StoreError::Decode {
                table,
                row: format!("{aggregate_type:?} {aggregate_id} version {version}"),
                source,
            })
    }

    /// Walks the UTC days of `[from_micros, to_micros)` through a by-day table keyed by
    /// (`key`, day). CQL timestamps are milliseconds, so the query range is widened to whole
    /// milliseconds and the exact bounds are applied to the decoded headers.
    async fn events_by_day(
        &self,
        statement: &PreparedStatement,
        table: &'static str,
        key: &str,
        from_micros: i64,
        to_micros: i64,
    ) -> Result<Vec<Event>, StoreError> {
        let mut events = Vec::new();
        if from_micros >= to_micros {
            return Ok(events);
        }
        let from_ms = CqlTimestamp(from_micros.div_euclid(1_000));
        let to_ms = CqlTimestamp(to_micros.div_euclid(1_000) + 1);
        let query_error =
            |e: Box<dyn std::error::Error + Send + Sync>| StoreError::Query { table, source: e };
        for day in day_of_micros(from_micros)..=day_of_micros(to_micros - 1) {
            let mut rows = self
                .session
                .execute_iter(statement.clone(), (key, cql_date(day), from_ms, to_ms))
                .await
                .map_err(|e| query_error(Box::new(e)))?
                .rows_stream::<(uuid::Uuid, Vec<u8>)>()
                .map_err(|e| query_error(Box::new(e)))?;
            while let Some((event_id, value)) = rows
                .try_next()
                .await
                .map_err(|e| query_error(Box::new(e)))?
            {
                let event =
                    self.codec
                        .decode_event(&value)
                        .await
                        .map_err(|source| StoreError::Decode {
                            table,
                            row: format!("{key} event {event_id}"),
                            source,
                        })?;
                let timestamp = event.header().timestamp;
                if (from_micros..to_micros).contains(&timestamp) {
                    events.push(event);
                }
            }
        }
        // The table orders by millisecond and then by event id; the exact order is by the
        // microsecond timestamp, and within one aggregate by version (one command may append
        // several events at the same instant).
        events.sort_by(|a, b| {
            let (a, b) = (a.header(), b.header());
            (a.timestamp, &a.aggregate_id, a.version).cmp(&(
                b.timestamp,
                &b.aggregate_id,
                b.version,
            ))
        });
        Ok(events)
    }
}
