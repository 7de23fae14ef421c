//! What a read-model processor is to the runtime: a pure [`Projection`] (DESIGN decision 5)
//! from events to per-entity state, rows and commands.
//!
//! # The exactly-once contract (DESIGN decision 4)
//!
//! The runtime delivers records at least once; a projection makes the effect exactly once by
//! keeping to these rules, which its property tests check:
//!
//! - **Entities belong to one source partition.** [`Projection::entities`] names the entities
//!   an event changes; the runtime keys each entity's state by the record's topic and
//!   partition. Two partitions never change the same entity, so two consumers never race on
//!   it. A figure across users is a [partial row](#partial-rows) per source partition, summed
//!   when read.
//! - **Each entity remembers the last offset applied to it**, and the runtime skips a record
//!   at or below it, so a replayed record changes nothing.
//! - **Rows are absolute values computed from the state**, never increments: writing a row
//!   twice, or an older and then a newer version of it, ends with the newest. A row belongs to
//!   exactly one entity.
//! - **`apply` is pure and all-or-nothing**: no I/O, no clock, no randomness (time comes from
//!   the event); on `Err` the state is unchanged.
//!
//! The runtime writes a batch's rows first and the entities' state (with their offsets) after,
//! then stores the Kafka offsets. A crash in between replays the records on the old state and
//! writes the same rows again. Commands a projection sends ([`Effects::commands`]) may so be
//! sent more than once; they carry ids derived from the causing event, and the command
//! processor rejects the repeat (a quest completed twice, an insight id reused).
//!
//! # Partial rows
//!
//! A figure across all users (a day's energy over every user, the feedback on a kind of
//! insight) is one row per source partition, `source_partition` the last key column, summed
//! when read: at most as many rows per figure as the topic has partitions. The runtime keeps
//! it, not a projection entity: an entity reports the change of its own contribution as a
//! [`Partial`] (new minus old, per column, in [`Effects::partials`]), which it can compute
//! because its state holds its previous contribution. The runtime adds the deltas to the
//! running sums of that row in the partition ([`crate::partials`]).
//!
//! Every partial row is stored like an entity in the state table, with its sums and the offset
//! of the last record whose delta it took; once loaded, a delta from a record at or below that
//! offset is skipped (the deltas of one record from several entities all count in the run that
//! first applies it). Per partition and batch the runtime writes in three steps, each
//! acknowledged before the next: the touched partial rows; then their sums and offsets,
//! together with the entities' rows; then the entities' states. So:
//!
//! - a crash before the partial sums are saved loses the batch's deltas and the entities'
//!   states alike: the records are applied again, the deltas added again to the old sums, the
//!   same rows written (an entity's rows are computed from its state, so writing them early
//!   or twice changes nothing);
//! - a crash after the partial sums are saved but before the entities' states are: the
//!   entities, on their old state, apply the records again and emit the same deltas, which the
//!   partial rows skip by their offset;
//! - an entity's state is never saved ahead of the partial rows it changed (the sums of a batch
//!   are acknowledged before any state of that batch is written, and a partition's batches are
//!   written one after the other), so no delta is lost.
//!
//! Sums are integers ([`Sum`]): the order and grouping of deltas cannot change them, and a
//! contribution added then withdrawn leaves exactly nothing. Fractional figures are summed in
//! millionths ([`Sum::Millionths`]).

use std::collections::HashMap;

use dietstream_schemas::codec::Record;
use dietstream_schemas::types::{AggregateType, CommandHeader, EventHeader};
use dietstream_schemas::{Command, Event};
use scylla::value::CqlValue;
use serde::de::DeserializeOwned;
use serde::Serialize;
use uuid::Uuid;

/// One read-model table: the runtime prepares an upsert and a delete for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Table {
    /// Table name, without keyspace.
    pub name: &'static str,
    /// Primary key columns, partition key first, in the order of [`Row`] keys.
    pub key: &'static [&'static str],
    /// The other columns, in the order of [`Row::Upsert`] values.
    pub values: &'static [&'static str],
    /// Columns of `values` that the projection, once it has given a row of a key a value in
    /// them, never makes null again (a quest's `completed_at`): while one is null in an
    /// upsert, it is written as unset rather than null, so that it leaves no tombstone for
    /// every write of the row. A projection that does make one null again would leave the old
    /// value in the table: `MemoryRun` panics on that, so the projection's tests show it.
    pub set_once: &'static [&'static str],
}

/// A write to a read-model table, with absolute values.
#[derive(Debug, Clone, PartialEq)]
pub enum Row {
    /// Insert or overwrite the row with this key.
    Upsert {
        /// The table's name (one of [`Projection::tables`]).
        table: &'static str,
        /// Primary key values, in [`Table::key`] order.
        key: Vec<CqlValue>,
        /// Column values, in [`Table::values`] order; `None` writes null, or nothing in a
        /// column of [`Table::set_once`].
        values: Vec<Option<CqlValue>>,
    },
    /// Delete the row with this key.
    Delete {
        /// The table's name.
        table: &'static str,
        /// Primary key values, in [`Table::key`] order.
        key: Vec<CqlValue>,
    },
}

impl Row {
    /// An upsert of `table` with these key and column values.
    pub fn upsert(table: &'static str, key: Vec<CqlValue>, values: Vec<Option<CqlValue>>) -> Row {
        Row::Upsert { table, key, values }
    }

    /// The table written.
    pub fn table(&self) -> &'static str {
        match self {
            Row::Upsert { table, .. } | Row::Delete { table, .. } => table,
        }
    }

    /// The primary key written.
    pub fn key(&self) -> &[CqlValue] {
        match self {
            Row::Upsert { key, .. } | Row::Delete { key, .. } => key,
        }
    }
}

/// A broken rule: the event decodes but cannot be applied (a meal update for an unknown meal
/// on a fresh state is not one: projections must accept what the command processor accepted;
/// this is for contradictions such as a negative amount). The record is dead-lettered with
/// class `rule_violation` and the processing goes on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct RuleError(pub String);

/// What applying one event to one entity produced.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Effects {
    /// Rows to write (coalesced per table and key within a batch: the last one wins).
    pub rows: Vec<Row>,
    /// Commands to send to the command processor, in order.
    pub commands: Vec<Command>,
    /// Changes of the entity's contribution to partial rows across entities (see
    /// [partial rows](self#partial-rows)).
    pub partials: Vec<Partial>,
}

/// How the running sum of one column of a partial table is kept and written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sum {
    /// A CQL `int`: written clamped to its range.
    Int,
    /// A CQL `bigint`.
    BigInt,
    /// A CQL `double` kept as an integer count of millionths: deltas are in millionths
    /// ([`Sum::millionths`]), the sum is written divided by 10^6. A contribution is so
    /// rounded to 10^-6 of the unit, and the sums are exact whatever the order of the deltas.
    Millionths,
}

impl Sum {
    /// `value` in millionths, rounded to the nearest (saturating at the `i64` range; NaN is 0).
    pub fn millionths(value: f64) -> i64 {
        // `as` saturates and maps NaN to 0, which is what is documented.
        (value * crate::amount::PER_UNIT).round() as i64
    }
}

/// A table of partial rows: one row per key and source partition, the running sums of what
/// the entities of that partition contributed. It is also declared in
/// [`Projection::tables`], with `source_partition` (CQL `int`) as its last key column and the
/// columns of `sums` as its values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartialTable {
    /// The table's name (one of [`Projection::tables`]).
    pub name: &'static str,
    /// How each value column is summed, in [`Table::values`] order.
    pub sums: &'static [Sum],
}

/// The change of one entity's contribution to one partial row.
#[derive(Debug, Clone, PartialEq)]
pub struct Partial {
    /// The table (one of [`Projection::partials`]).
    pub table: &'static str,
    /// The row's key without the source partition, in [`Table::key`] order.
    pub key: Vec<CqlValue>,
    /// What to add to each column's sum (new contribution minus old), in [`Table::values`]
    /// order, in the column's [`Sum`] unit. All zero is no change.
    pub deltas: Vec<i64>,
}

impl Partial {
    /// The change of an entity's contribution to the row `key` of `table` from `old` to
    /// `new` (both in [`Table::values`] order and each column's [`Sum`] unit); `None` when
    /// nothing changes. Wrapping: the deltas still sum to the contributions exactly.
    pub fn between(
        table: &'static str,
        key: Vec<CqlValue>,
        old: &[i64],
        new: &[i64],
    ) -> Option<Partial> {
        let deltas: Vec<i64> = new
            .iter()
            .zip(old)
            .map(|(n, o)| n.wrapping_sub(*o))
            .collect();
        let changed = deltas.iter().any(|d| *d != 0);
        changed.then_some(Partial { table, key, deltas })
    }
}

/// The header of a command of type `T` that a projection sends on behalf of `user` because of
/// the event `cause`: issued at the event's time (`apply` has no clock), caused by it, in its
/// correlation. `command_id` must be derived from the causing event (DESIGN decision 3), so a
/// replayed event sends the same id and the command processor can tell the repeat.
pub fn caused_command<T: Record>(
    cause: &EventHeader,
    aggregate_type: AggregateType,
    user: &str,
    command_id: Uuid,
) -> CommandHeader {
    CommandHeader {
        command_id,
        command_type: T::RECORD_TYPE.to_owned(),
        aggregate_id: user.to_owned(),
        aggregate_type,
        expected_version: None,
        issued_at: cause.timestamp,
        user_id: Some(user.to_owned()),
        session_id: None,
        correlation_id: cause.correlation_id,
        causation_id: Some(cause.event_id),
        metadata: HashMap::new(),
    }
}

/// Where the record being applied was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin<'a> {
    /// Its topic (prefix included).
    pub topic: &'a str,
    /// Its partition.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
}

/// A processor's pure part. See the module docs for the contract.
pub trait Projection: Send + Sync + 'static {
    /// One entity's state, kept in memory for the assigned partitions and stored in the
    /// processor's state table ([`crate::store::encode_state`] says how, and which changes to
    /// the type keep stored states readable).
    type State: Serialize + DeserializeOwned + Default + Clone + Send + Sync + 'static;

    /// The processor's name as the topology spells it (`processor = "…"`): consumer group,
    /// dead-letter topic, state table and metrics label come from it.
    fn name(&self) -> &'static str;

    /// The tables it writes, for the runtime's prepared statements.
    fn tables(&self) -> &'static [Table];

    /// Which of its tables hold [partial rows](self#partial-rows), with how their columns are
    /// summed. None by default.
    fn partials(&self) -> &'static [PartialTable] {
        &[]
    }

    /// CQL statements creating its tables (idempotent, `IF NOT EXISTS`), with `{keyspace}`
    /// where the keyspace goes.
    fn migrations(&self) -> Vec<String>;

    /// True when it needs events of this type, told by the `event_type` header before any
    /// decoding. Records it does not want are skipped undecoded.
    fn wants(&self, event_type: &str) -> bool;

    /// The entities this event changes, within its source partition.
    fn entities(&self, event: &Event, origin: &Origin<'_>) -> Vec<String>;

    /// Applies the event to one of its entities.
    fn apply(
        &self,
        entity: &str,
        state: &mut Self::State,
        event: &Event,
        origin: &Origin<'_>,
    ) -> Result<Effects, RuleError>;
}
