//! The CQL side of a processor: its migrations, its state table, and the prepared statements
//! that write its rows.
//!
//! Every processor has a state table `<processor>_state`, one CQL partition per source
//! partition (`source` = `<topic>/<partition>`), one row per entity: the entity's state
//! ([`encode_state`]) and the offset of the last record applied to it, and one row per partial
//! row of the partition ([`crate::partials`]). Loading a partition's state when it is assigned
//! is one paged query.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use scylla::client::session::Session;
use scylla::errors::{BadQuery, ExecutionError, PagerExecutionError, PrepareError};
use scylla::serialize::row::SerializeRow;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use scylla::value::{CqlValue, MaybeUnset};

use crate::generation::{map_statement, table_name};
use crate::partials::{is_partial_entity, PartialSums, Partials};
use crate::projection::{Projection, Row, Table};

/// Why a CQL step failed. Every CQL failure but [`StoreError::BadRow`] is treated as transient
/// by the loop: even a permanent one (a dropped table) is not the record's fault, so nothing is
/// skipped. A bad row is the projection's fault, and stops the loop at once.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A migration statement failed.
    #[error("migration statement failed: {statement}: {source}")]
    Migration {
        /// The statement.
        statement: String,
        /// What the driver said.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A statement could not be prepared (tables missing: run the migrations first).
    #[error("cannot prepare {statement}: {source}")]
    Prepare {
        /// The statement.
        statement: String,
        /// What the driver said.
        source: Box<PrepareError>,
    },
    /// A write or read failed.
    #[error("CQL {operation} on {table}: {message}")]
    Execute {
        /// `upsert`, `delete`, `load` or `save state`.
        operation: &'static str,
        /// The table.
        table: String,
        /// What the driver said.
        message: String,
    },
    /// A row names a table the projection does not declare, has the wrong column count, holds
    /// a value of another type than its column's, or is a partial row of a table not declared
    /// partial: a bug in the projection. The loop stops on it at once, without retries.
    #[error("row for table {table} does not match its declaration: {problem}")]
    BadRow {
        /// The table named.
        table: String,
        /// What is wrong.
        problem: String,
    },
    /// A projection's partial tables are declared wrongly (see
    /// [`crate::partials::declaration_problems`]): a bug in the projection.
    #[error("partial table {table} is declared wrongly: {problem}")]
    BadPartials {
        /// The table.
        table: String,
        /// What is wrong.
        problem: String,
    },
    /// A stored state does not parse as the projection's state: the state table was written
    /// by an incompatible version. Rebuild with `dietstream replay`.
    #[error("state of {entity} in {source_partition} does not parse: {message}")]
    BadState {
        /// `<topic>/<partition>`.
        source_partition: String,
        /// The entity.
        entity: String,
        /// What serde said.
        message: String,
    },
}

/// The first byte of a state saved in the compact form. JSON never starts with it (a JSON text
/// starts with whitespace, `{`, `[`, `"`, a digit, `-`, `t`, `f` or `n`), so states saved as
/// JSON before the compact form existed still load, and are saved compact at their next change.
pub const COMPACT_STATE: u8 = 0x01;

/// Why a state could not be turned into bytes or back.
#[derive(Debug, thiserror::Error)]
pub enum StateCodecError {
    /// The state does not serialise (a bug in its type).
    #[error("state does not encode: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
    /// Compact bytes that are not a state of this type.
    #[error("compact state does not decode: {0}")]
    Compact(#[from] rmp_serde::decode::Error),
    /// Compact bytes with bytes left over after the state.
    #[error("compact state has {0} bytes after its end")]
    Trailing(u64),
    /// JSON bytes (a state saved before the compact form) that are not a state of this type.
    #[error("JSON state does not decode: {0}")]
    Json(#[from] serde_json::Error),
    /// The state does not serialise as JSON (a bug in its type).
    #[error("state does not encode as JSON: {0}")]
    JsonEncode(serde_json::Error),
}

/// How the loop saves states (`processors.state_encoding`): compact ([`encode_state`], the
/// default) or as JSON, which versions before the compact form (2026-12-07) read too. JSON is
/// for the first step of a rolling upgrade from such a version: run the new version with
/// `json` until no instance of the old one is left, then switch to `compact`. Both are read
/// whatever the setting ([`decode_state`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StateEncoding {
    /// [`encode_state`].
    #[default]
    Compact,
    /// JSON, as states were saved before the compact form.
    Json,
}

impl StateEncoding {
    /// The bytes `state` is saved as in this encoding.
    pub fn encode<S: serde::Serialize>(self, state: &S) -> Result<Vec<u8>, StateCodecError> {
        match self {
            StateEncoding::Compact => encode_state(state),
            StateEncoding::Json => serde_json::to_vec(state).map_err(StateCodecError::JsonEncode),
        }
    }
}

/// The bytes a state is saved as in the state table's `state` column: [`COMPACT_STATE`], then
/// the state as MessagePack with structs as arrays of their fields in declaration order (no
/// field names) and UUIDs as 16 bytes. `benches/states.rs` measures what this costs against
/// JSON for a player with months of history.
///
/// Because fields are known by their position, a state type may change only in ways that keep
/// the old bytes meaning the same: a field is added last, with `#[serde(default)]` (older bytes
/// end before it, and it takes its default); fields are never removed, reordered or skipped
/// when serialised (`skip_serializing_if` would shift the fields after it). Enum variants are
/// saved by name. Any other change needs a rebuild (`dietstream replay`).
pub fn encode_state<S: serde::Serialize>(state: &S) -> Result<Vec<u8>, StateCodecError> {
    let mut bytes = vec![COMPACT_STATE];
    state.serialize(&mut rmp_serde::Serializer::new(&mut bytes))?;
    Ok(bytes)
}

/// A state from the bytes [`encode_state`] made, or from the JSON states were saved as before.
pub fn decode_state<S: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<S, StateCodecError> {
    match bytes.split_first() {
        Some((&COMPACT_STATE, compact)) => {
            let mut decoder = rmp_serde::Deserializer::new(std::io::Cursor::new(compact));
            let state = S::deserialize(&mut decoder)?;
            let left = compact.len() as u64 - decoder.position();
            if left > 0 {
                return Err(StateCodecError::Trailing(left));
            }
            Ok(state)
        }
        _ => Ok(serde_json::from_slice(bytes)?),
    }
}

/// The name of a processor's state table.
pub fn state_table(processor: &str) -> String {
    format!("{processor}_state")
}

/// Every statement that creates a projection's tables, its state table included.
pub fn migrations<P: Projection>(projection: &P, keyspace: &str) -> Vec<String> {
    generation_migrations(projection, keyspace, 0)
}

/// Every statement that creates the tables of one generation of a projection (see
/// [`crate::generation`]), its state table included.
pub fn generation_migrations<P: Projection>(
    projection: &P,
    keyspace: &str,
    generation: u32,
) -> Vec<String> {
    let names: Vec<&str> = projection.tables().iter().map(|t| t.name).collect();
    let mut statements: Vec<String> = projection
        .migrations()
        .into_iter()
        .map(|s| map_statement(&s, &names, generation).replace("{keyspace}", keyspace))
        .collect();
    statements.push(format!(
        "CREATE TABLE IF NOT EXISTS {keyspace}.{} (\
         source text, entity text, state blob, applied_offset bigint, \
         PRIMARY KEY ((source), entity))",
        table_name(&state_table(projection.name()), generation)
    ));
    statements
}

/// Creates the projection's tables unless they exist; safe to run any number of times.
pub async fn migrate<P: Projection>(
    session: &Session,
    projection: &P,
    keyspace: &str,
) -> Result<(), StoreError> {
    migrate_generation(session, projection, keyspace, 0).await
}

/// Creates the tables of one generation of the projection unless they exist.
pub async fn migrate_generation<P: Projection>(
    session: &Session,
    projection: &P,
    keyspace: &str,
    generation: u32,
) -> Result<(), StoreError> {
    execute_migrations(
        session,
        generation_migrations(projection, keyspace, generation),
    )
    .await
}

/// Runs migration statements in order, then waits for the cluster to agree on the schema.
pub(crate) async fn execute_migrations(
    session: &Session,
    statements: Vec<String>,
) -> Result<(), StoreError> {
    for statement in statements {
        session
            .query_unpaged(statement.as_str(), ())
            .await
            .map_err(|source| StoreError::Migration {
                statement,
                source: Box::new(source),
            })?;
    }
    session
        .await_schema_agreement()
        .await
        .map_err(|source| StoreError::Migration {
            statement: "(schema agreement)".to_owned(),
            source: Box::new(source),
        })?;
    Ok(())
}

/// One entity's stored state.
#[derive(Debug, Clone)]
pub struct Stored<S> {
    /// The state.
    pub state: S,
    /// Offset of the last record applied to it.
    pub applied_offset: i64,
}

struct TableStatements {
    table: Table,
    upsert: PreparedStatement,
    delete: PreparedStatement,
    /// Per column of `table.values`: written as unset when null ([`Table::set_once`]).
    unset_when_null: Vec<bool>,
}

/// The prepared statements of one processor.
#[derive(Clone)]
pub struct Store {
    session: Arc<Session>,
    tables: Arc<HashMap<&'static str, TableStatements>>,
    load: PreparedStatement,
    save: PreparedStatement,
    state_table: String,
    generation: u32,
}

impl Store {
    /// Prepares the upsert and delete of every table of `projection` and the state
    /// statements. The tables must exist ([`migrate`]).
    pub async fn prepare<P: Projection>(
        session: Arc<Session>,
        projection: &P,
        keyspace: &str,
    ) -> Result<Store, StoreError> {
        Store::prepare_generation(session, projection, keyspace, 0).await
    }

    /// [`Store::prepare`] for the tables of one generation (see [`crate::generation`]): rows
    /// keep naming the projection's tables, the statements write `<table>_g<N>`.
    pub async fn prepare_generation<P: Projection>(
        session: Arc<Session>,
        projection: &P,
        keyspace: &str,
        generation: u32,
    ) -> Result<Store, StoreError> {
        if let Some((table, problem)) =
            crate::partials::declaration_problems(projection.tables(), projection.partials())
                .into_iter()
                .next()
        {
            return Err(StoreError::BadPartials { table, problem });
        }
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
        let mut tables = HashMap::new();
        for table in projection.tables() {
            if let Some(unknown) = table.set_once.iter().find(|c| !table.values.contains(c)) {
                return Err(StoreError::BadRow {
                    table: table.name.to_owned(),
                    problem: format!("set-once column {unknown} is not one of its values"),
                });
            }
            let columns: Vec<&str> = table.key.iter().chain(table.values).copied().collect();
            let marks = vec!["?"; columns.len()].join(", ");
            let upsert = prepare(format!(
                "INSERT INTO {keyspace}.{} ({}) VALUES ({marks})",
                table_name(table.name, generation),
                columns.join(", ")
            ))
            .await?;
            let condition = table
                .key
                .iter()
                .map(|c| format!("{c} = ?"))
                .collect::<Vec<_>>()
                .join(" AND ");
            let delete = prepare(format!(
                "DELETE FROM {keyspace}.{} WHERE {condition}",
                table_name(table.name, generation)
            ))
            .await?;
            tables.insert(
                table.name,
                TableStatements {
                    table: *table,
                    upsert,
                    delete,
                    unset_when_null: table
                        .values
                        .iter()
                        .map(|c| table.set_once.contains(c))
                        .collect(),
                },
            );
        }
        let state_table = table_name(&state_table(projection.name()), generation);
        let mut load = prepare(format!(
            "SELECT entity, state, applied_offset FROM {keyspace}.{state_table} WHERE source = ?"
        ))
        .await?;
        load.set_page_size(5_000);
        let save = prepare(format!(
            "INSERT INTO {keyspace}.{state_table} (source, entity, state, applied_offset) \
             VALUES (?, ?, ?, ?)"
        ))
        .await?;
        Ok(Store {
            session,
            tables: Arc::new(tables),
            load,
            save,
            state_table,
            generation,
        })
    }

    /// Every entity stored for one source partition (the [partial rows](crate::partials) left
    /// out).
    pub async fn load<S: serde::de::DeserializeOwned>(
        &self,
        source: &str,
    ) -> Result<HashMap<String, Stored<S>>, StoreError> {
        self.load_partition(source)
            .await
            .map(|(entities, _)| entities)
    }

    /// Every entity stored for one source partition, and its partial rows' sums apart.
    pub async fn load_partition<S: serde::de::DeserializeOwned>(
        &self,
        source: &str,
    ) -> Result<(HashMap<String, Stored<S>>, Partials), StoreError> {
        let failed = |message: String| StoreError::Execute {
            operation: "load",
            table: self.state_table.clone(),
            message,
        };
        let rows = self
            .session
            .execute_iter(self.load.clone(), (source,))
            .await
            .map_err(|e: PagerExecutionError| failed(e.to_string()))?
            .rows_stream::<(String, Vec<u8>, i64)>()
            .map_err(|e| failed(e.to_string()))?;
        let rows: Vec<(String, Vec<u8>, i64)> = rows
            .try_collect()
            .await
            .map_err(|e| failed(e.to_string()))?;
        let mut entities = HashMap::with_capacity(rows.len());
        let mut partials = HashMap::new();
        for (entity, state, applied_offset) in rows {
            let bad = |e: StateCodecError| StoreError::BadState {
                source_partition: source.to_owned(),
                entity: entity.clone(),
                message: e.to_string(),
            };
            if is_partial_entity(&entity) {
                let sums: PartialSums = decode_state(&state).map_err(bad)?;
                let stored = Stored {
                    state: sums,
                    applied_offset,
                };
                partials.insert(entity, stored);
                continue;
            }
            let state = decode_state(&state).map_err(bad)?;
            entities.insert(
                entity,
                Stored {
                    state,
                    applied_offset,
                },
            );
        }
        Ok((entities, Partials::new(partials)))
    }

    /// Saves the states of several entities of one source partition, with their offsets, in
    /// as few requests as `max_batch_bytes` allows: they share the state table's CQL partition
    /// (`source`), so each request is one unlogged single-partition batch, which the replicas
    /// apply as one mutation. A batch holds states whose bytes add up to at most
    /// `max_batch_bytes` (a larger state goes alone), at most `max_in_flight` requests at a
    /// time (the states are of distinct entities, so their order does not matter), each in
    /// `encoding`. `observe` is called once per state with the time its request took, failed
    /// or not.
    pub async fn save_all<S: serde::Serialize>(
        &self,
        source: &str,
        states: &[(String, Stored<S>)],
        encoding: StateEncoding,
        (max_in_flight, max_batch_bytes): (usize, usize),
        observe: impl Fn(Duration),
    ) -> Result<(), StoreError> {
        let failed = |message: String| StoreError::Execute {
            operation: "save state",
            table: self.state_table.clone(),
            message,
        };
        let mut encoded = Vec::with_capacity(states.len());
        for (entity, stored) in states {
            let state = encoding
                .encode(&stored.state)
                .map_err(|e| failed(e.to_string()))?;
            encoded.push((
                &self.save,
                (source, entity.as_str(), state, stored.applied_offset),
            ));
        }
        let sizes: Vec<usize> = encoded
            .iter()
            .map(|(_, (_, entity, state, _))| entity.len() + state.len() + 2 * CELL_OVERHEAD)
            .collect();
        let (encoded, observe, failed) = (&encoded, &observe, &failed);
        // Collected first, as in `write_all`: the loop spawns its writes, so they must be `Send`.
        let saves: Vec<_> = chunks(&sizes, max_batch_bytes)
            .into_iter()
            .map(|chunk| async move {
                let chunk = &encoded[chunk];
                let started = Instant::now();
                let result = self.send_together(chunk).await;
                let took = started.elapsed();
                chunk.iter().for_each(|_| observe(took));
                result.map_err(|e| failed(e.to_string()))
            })
            .collect();
        all_done(saves, max_in_flight).await
    }

    /// Sends writes to one CQL partition as one request: alone, or as one unlogged batch,
    /// which has one token, so its replicas apply it as one mutation.
    async fn send_together<V: SerializeRow>(
        &self,
        writes: &[(&PreparedStatement, V)],
    ) -> Result<(), ExecutionError> {
        if let [(statement, values)] = writes {
            return self
                .session
                .execute_unpaged(statement, values)
                .await
                .map(drop);
        }
        let mut batch = Batch::new(BatchType::Unlogged);
        for (statement, _) in writes {
            batch.append_statement(PreparedStatement::clone(statement));
        }
        let values: Vec<&V> = writes.iter().map(|(_, values)| values).collect();
        self.session.batch(&batch, values).await.map(drop)
    }

    /// Writes `rows` (each checked with [`Store::check`] first), at most `max_in_flight`
    /// requests at a time. Rows whose partition keys have the same values (a partition of one
    /// table, or one user's rows in several tables keyed by the user) go in one unlogged
    /// batch, up to about `max_batch_bytes` of values: it has one token, so its replicas apply
    /// it as one mutation. Each row must name a different (table, key), as the loop's
    /// coalescing leaves them, so the order of the writes does not matter. `observe` is
    /// called once per row with its table and the time its request took, failed or not.
    pub async fn write_all(
        &self,
        rows: &[Row],
        max_in_flight: usize,
        max_batch_bytes: usize,
        observe: impl Fn(&'static str, Duration),
    ) -> Result<(), StoreError> {
        // Statement and bound values of every row, grouped by partition key, first seen first.
        let mut groups: Vec<Vec<usize>> = Vec::new();
        let mut by_key: HashMap<Bytes, usize> = HashMap::new();
        let mut bound = Vec::with_capacity(rows.len());
        for (index, row) in rows.iter().enumerate() {
            self.check(row)?;
            let statements = &self.tables[row.table()];
            let (statement, values): (&PreparedStatement, Vec<MaybeUnset<Option<&CqlValue>>>) =
                match row {
                    Row::Upsert { key, values, .. } => (
                        &statements.upsert,
                        key.iter()
                            .map(set_value)
                            .chain(values.iter().zip(&statements.unset_when_null).map(
                                |(value, unset_when_null)| match value {
                                    None if *unset_when_null => MaybeUnset::Unset,
                                    value => MaybeUnset::Set(value.as_ref()),
                                },
                            ))
                            .collect(),
                    ),
                    Row::Delete { key, .. } => {
                        (&statements.delete, key.iter().map(set_value).collect())
                    }
                };
            // A key that cannot be computed (not expected for checked rows) goes alone.
            match statement.compute_partition_key(&values) {
                Ok(key) => match by_key.get(&key) {
                    Some(group) => groups[*group].push(index),
                    None => {
                        by_key.insert(key, groups.len());
                        groups.push(vec![index]);
                    }
                },
                Err(_) => groups.push(vec![index]),
            }
            bound.push((statement, values));
        }
        let mut requests = Vec::new();
        for group in &groups {
            let sizes: Vec<usize> = group
                .iter()
                .map(|i| {
                    bound[*i]
                        .1
                        .iter()
                        .filter_map(|v| match v {
                            MaybeUnset::Set(Some(v)) => Some(value_bytes(v)),
                            _ => None,
                        })
                        .sum()
                })
                .collect();
            for chunk in chunks(&sizes, max_batch_bytes) {
                requests.push(&group[chunk]);
            }
        }
        let (bound, observe) = (&bound, &observe);
        // Collected first: a stream holding the mapping closure would not be `Send` (a
        // higher-ranked lifetime the compiler cannot prove), and the loop spawns its writes.
        let writes: Vec<_> = requests
            .into_iter()
            .map(|request| async move {
                let writes: Vec<_> = request
                    .iter()
                    .map(|index| (bound[*index].0, &bound[*index].1))
                    .collect();
                let started = Instant::now();
                let result = self.send_together(&writes).await;
                let took = started.elapsed();
                for index in request {
                    observe(rows[*index].table(), took);
                }
                let table = || rows[request[0]].table().to_owned();
                result.map_err(|e| match e {
                    // The driver could not bind a value to its column: a bug in the
                    // projection, which no retry mends (in a batch, the first row's table is
                    // named; the driver's message names the column's type).
                    ExecutionError::BadQuery(BadQuery::SerializationError(e)) => {
                        StoreError::BadRow {
                            table: table(),
                            problem: format!("a value does not fit its column: {e}"),
                        }
                    }
                    e => StoreError::Execute {
                        operation: match request {
                            [index] if matches!(rows[*index], Row::Delete { .. }) => "delete",
                            [_] => "upsert",
                            _ => "batch",
                        },
                        table: table(),
                        message: e.to_string(),
                    },
                })
            })
            .collect();
        all_done(writes, max_in_flight).await
    }

    /// Checks a row against its table's declaration.
    pub fn check(&self, row: &Row) -> Result<(), StoreError> {
        let bad = |problem: String| StoreError::BadRow {
            table: row.table().to_owned(),
            problem,
        };
        let statements = self
            .tables
            .get(row.table())
            .ok_or_else(|| bad("no such table in the projection".to_owned()))?;
        let table = statements.table;
        if row.key().len() != table.key.len() {
            return Err(bad(format!(
                "{} key values for {} key columns",
                row.key().len(),
                table.key.len()
            )));
        }
        if let Row::Upsert { values, .. } = row {
            if values.len() != table.values.len() {
                return Err(bad(format!(
                    "{} values for {} columns",
                    values.len(),
                    table.values.len()
                )));
            }
        }
        Ok(())
    }

    /// Writes one row (checked with [`Store::check`] first): [`Store::write_all`] of one.
    pub async fn write(&self, row: &Row) -> Result<(), StoreError> {
        self.write_all(std::slice::from_ref(row), 1, usize::MAX, |_, _| {})
            .await
    }

    /// The name of the state table (of this store's generation).
    pub fn state_table(&self) -> &str {
        &self.state_table
    }

    /// The generation whose tables this store writes.
    pub fn generation(&self) -> u32 {
        self.generation
    }

    /// The session, for readers.
    pub fn session(&self) -> &Arc<Session> {
        &self.session
    }
}

/// Runs `requests` with at most `max_in_flight` in flight; the first error, once all have
/// ended.
async fn all_done<F>(requests: Vec<F>, max_in_flight: usize) -> Result<(), StoreError>
where
    F: std::future::Future<Output = Result<(), StoreError>>,
{
    let results: Vec<Result<(), StoreError>> = futures::stream::iter(requests)
        .buffer_unordered(max_in_flight.max(1))
        .collect()
        .await;
    results.into_iter().collect()
}

/// Splits items of these sizes, in order, into runs whose sizes add up to at most `budget`
/// (an item larger than the budget forms a run of its own).
fn chunks(sizes: &[usize], budget: usize) -> Vec<std::ops::Range<usize>> {
    let mut runs = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (index, size) in sizes.iter().enumerate() {
        if index > start && bytes + size > budget {
            runs.push(start..index);
            (start, bytes) = (index, 0);
        }
        bytes += size;
    }
    if start < sizes.len() {
        runs.push(start..sizes.len());
    }
    runs
}

/// What Cassandra counts for a cell besides its value when it sizes a batch (timestamp, TTL
/// and deletion time).
const CELL_OVERHEAD: usize = 16;

/// A value bound as given (never unset).
fn set_value(value: &CqlValue) -> MaybeUnset<Option<&CqlValue>> {
    MaybeUnset::Set(Some(value))
}

/// About how many bytes a value adds to a batch as Cassandra sizes it.
fn value_bytes(value: &CqlValue) -> usize {
    CELL_OVERHEAD + value_len(value)
}

fn value_len(value: &CqlValue) -> usize {
    match value {
        CqlValue::Text(text) | CqlValue::Ascii(text) => text.len(),
        CqlValue::Blob(bytes) => bytes.len(),
        CqlValue::List(items) | CqlValue::Set(items) => items.iter().map(value_len).sum(),
        CqlValue::Map(entries) => entries
            .iter()
            .map(|(k, v)| value_len(k) + value_len(v))
            .sum(),
        _ => 8,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_keep_order_and_budget() {
        assert_eq!(chunks(&[], 10), Vec::<std::ops::Range<usize>>::new());
        assert_eq!(chunks(&[4, 4, 4], 10), vec![0..2, 2..3]);
        assert_eq!(chunks(&[4, 6, 1], 10), vec![0..2, 2..3]);
        // Too large for the budget: alone, and the runs around it go on.
        assert_eq!(chunks(&[3, 30, 3, 3], 10), vec![0..1, 1..2, 2..4]);
        assert_eq!(chunks(&[30], 10), vec![0..1]);
    }

    /// A state shaped like the processors' own: optional fields, a unit enum, maps keyed by
    /// UUIDs and by days, and sums of one-decimal figures that are not short decimals.
    #[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Before {
        newest_day: Option<i32>,
        meals: std::collections::BTreeMap<uuid::Uuid, (Kind, f64)>,
        water: std::collections::BTreeMap<i32, i64>,
        note: Option<String>,
    }

    #[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
    enum Kind {
        Breakfast,
        Lunch,
    }

    /// `Before` with a field added the one way [`encode_state`] allows.
    #[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
    struct After {
        newest_day: Option<i32>,
        meals: std::collections::BTreeMap<uuid::Uuid, (Kind, f64)>,
        water: std::collections::BTreeMap<i32, i64>,
        note: Option<String>,
        #[serde(default)]
        goals_sent: Vec<i32>,
    }

    fn before() -> Before {
        Before {
            newest_day: Some(20_400),
            meals: [
                (uuid::Uuid::from_u128(7), (Kind::Lunch, 17.0 + 30.3 + 20.9)),
                (uuid::Uuid::from_u128(9), (Kind::Breakfast, 0.1 + 0.2)),
            ]
            .into(),
            water: [(20_399, 250), (20_400, -1)].into(),
            note: None,
        }
    }

    #[test]
    fn a_state_comes_back_exactly_from_its_compact_bytes() {
        let state = before();
        let bytes = encode_state(&state).expect("encodes");
        assert_eq!(bytes[0], COMPACT_STATE);
        let back: Before = decode_state(&bytes).expect("decodes");
        assert_eq!(back, state);
        let bits = |s: &Before| s.meals.values().map(|m| m.1.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&back), bits(&state));
        // No field names, UUIDs as 16 bytes: well under the JSON.
        let json = serde_json::to_vec(&state).expect("serialises");
        assert!(
            bytes.len() * 2 < json.len(),
            "{} against {}",
            bytes.len(),
            json.len()
        );
    }

    #[test]
    fn a_state_saved_as_json_still_loads() {
        let json = serde_json::to_vec(&before()).expect("serialises");
        assert_eq!(decode_state::<Before>(&json).expect("decodes"), before());
        let err = decode_state::<Before>(b"{\"newest_day\": \"x\"}").expect_err("not a state");
        assert!(matches!(err, StateCodecError::Json(_)), "{err}");
    }

    #[test]
    fn a_field_added_last_with_a_default_reads_older_bytes() {
        let bytes = encode_state(&before()).expect("encodes");
        let after: After = decode_state(&bytes).expect("decodes");
        assert_eq!(after.meals, before().meals);
        assert_eq!(after.goals_sent, Vec::<i32>::new());
        // And older JSON, as before.
        let json = serde_json::to_vec(&before()).expect("serialises");
        assert_eq!(decode_state::<After>(&json).expect("decodes"), after);
    }

    #[test]
    fn bytes_that_are_not_a_state_are_an_error() {
        let bytes = encode_state(&before()).expect("encodes");
        let cut = decode_state::<Before>(&bytes[..bytes.len() - 3]).expect_err("cut short");
        assert!(matches!(cut, StateCodecError::Compact(_)), "{cut}");
        let mut longer = bytes.clone();
        longer.extend([0xc0, 0xc0]);
        let trailing = decode_state::<Before>(&longer).expect_err("bytes after the state");
        assert!(
            matches!(trailing, StateCodecError::Trailing(2)),
            "{trailing}"
        );
        let other = encode_state(&(1, "two")).expect("encodes");
        assert!(decode_state::<Before>(&other).is_err());
        assert!(decode_state::<Before>(&[]).is_err());
        assert!(decode_state::<Before>(&[COMPACT_STATE]).is_err());
    }
}
