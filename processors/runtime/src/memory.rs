//! The consume loop's effect on the tables, in memory and without I/O, for property tests of
//! projections: the same entity guard (skip a record at or below an entity's applied offset),
//! the same row coalescing, the same order (partial rows, their sums, rows, states), the same
//! [partial rows](crate::projection#partial-rows) and their offset guard, and crashes that
//! lose the states of a batch whose rows were written ([`MemoryRun::crash`]), or only the
//! entities' states once the partial sums were saved ([`MemoryRun::crash_after_partials`]).
//!
//! ```
//! # use dietstream_runtime::memory::MemoryRun;
//! # fn check<P: dietstream_runtime::Projection>(projection: &P, events: &[(String, i32, i64, dietstream_schemas::Event)]) {
//! let mut once = MemoryRun::new();
//! for (topic, partition, offset, event) in events {
//!     once.deliver(projection, topic, *partition, *offset, event);
//! }
//! once.commit();
//! // ... deliver again with duplicates and replayed prefixes into another run, then:
//! // assert_eq!(once.tables(), other.tables());
//! # }
//! ```

use std::collections::{BTreeMap, BTreeSet, HashMap};

use dietstream_schemas::{Command, Event};
use scylla::value::CqlValue;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::partials::{self, Partials};
use crate::projection::{Origin, Projection, Row, Table};
use crate::store::{decode_state, encode_state, Stored};

/// One table row as the model keeps it: its columns' values.
pub type Values = Vec<Option<CqlValue>>;

/// The model's tables: table name, then the row key (rendered), then the row's values.
pub type Tables = BTreeMap<&'static str, BTreeMap<String, Values>>;

/// An in-memory run of one projection.
#[derive(Debug)]
pub struct MemoryRun<S> {
    /// Entity state as the loop holds it (topic, partition, entity).
    live: HashMap<(String, i32, String), Stored<S>>,
    /// Entity state as the state table holds it.
    saved: HashMap<(String, i32, String), Stored<S>>,
    /// Entities changed since the last commit.
    dirty: Vec<(String, i32, String)>,
    /// Partial rows per source partition as the loop holds them.
    partials_live: HashMap<(String, i32), Partials>,
    /// Partial rows as the state table holds them.
    partials_saved: HashMap<(String, i32), Partials>,
    tables: Tables,
    /// (table, row key, column) whose last upsert gave null in a set-once column that held a
    /// value ([`Table::set_once`]): the table keeps the old value.
    cleared: BTreeSet<(&'static str, String, &'static str)>,
    commands: Vec<Command>,
    rejected: Vec<(i64, String)>,
}

impl<S: Clone + Default> Default for MemoryRun<S> {
    fn default() -> Self {
        MemoryRun {
            live: HashMap::new(),
            saved: HashMap::new(),
            dirty: Vec::new(),
            partials_live: HashMap::new(),
            partials_saved: HashMap::new(),
            tables: Tables::new(),
            cleared: BTreeSet::new(),
            commands: Vec::new(),
            rejected: Vec::new(),
        }
    }
}

fn row_key(key: &[CqlValue]) -> String {
    format!("{key:?}")
}

impl<S: Clone + Default> MemoryRun<S> {
    /// An empty run: no tables, no state.
    pub fn new() -> Self {
        Self::default()
    }

    /// Delivers one record as the loop would: its rows are written at once, the changed
    /// entities' states at the next [`MemoryRun::commit`].
    ///
    /// # Panics
    ///
    /// On a partial row of a table the projection does not declare partial, which stops the
    /// loop ([`partials::row`]).
    pub fn deliver<P: Projection<State = S>>(
        &mut self,
        projection: &P,
        topic: &str,
        partition: i32,
        offset: i64,
        event: &Event,
    ) {
        if !projection.wants(&event.header().event_type) {
            return;
        }
        let origin = Origin {
            topic,
            partition,
            offset,
        };
        for entity in projection.entities(event, &origin) {
            let key = (topic.to_owned(), partition, entity.clone());
            let stored = self.live.entry(key.clone()).or_insert_with(|| Stored {
                state: S::default(),
                applied_offset: -1,
            });
            if stored.applied_offset >= offset {
                continue;
            }
            match projection.apply(&entity, &mut stored.state, event, &origin) {
                Ok(effects) => {
                    stored.applied_offset = offset;
                    for row in effects.rows {
                        self.write(projection.tables(), row);
                    }
                    self.commands.extend(effects.commands);
                    self.dirty.push(key);
                    let sums = self
                        .partials_live
                        .entry((topic.to_owned(), partition))
                        .or_default();
                    let mut rows = Vec::new();
                    for partial in &effects.partials {
                        if let Some(stored) = sums.add(partial, offset).and_then(|n| sums.get(&n)) {
                            let row = partials::row(
                                projection.partials(),
                                partial.table,
                                &partial.key,
                                partition,
                                &stored.state.sums,
                            );
                            rows.push(row.unwrap_or_else(|e| panic!("{e}")));
                        }
                    }
                    for row in rows {
                        self.write(projection.tables(), row);
                    }
                }
                Err(error) => self.rejected.push((offset, error.to_string())),
            }
        }
    }

    /// The end of a batch: the partial rows' sums are saved, then the changed entities' state
    /// (after their rows, which [`MemoryRun::deliver`] wrote at once). A state is saved as the
    /// store saves it, so a later [`MemoryRun::crash`] reloads what its bytes say.
    ///
    /// # Panics
    ///
    /// If a state does not come back from its bytes ([`encode_state`]): a state type that
    /// breaks the encoding's rules, which the property tests of its projection then show.
    pub fn commit(&mut self)
    where
        S: Serialize + DeserializeOwned,
    {
        self.partials_saved = self.partials_live.clone();
        for key in std::mem::take(&mut self.dirty) {
            if let Some(stored) = self.live.get(&key) {
                let bytes = encode_state(&stored.state)
                    .unwrap_or_else(|e| panic!("state of {key:?} does not encode: {e}"));
                let state = decode_state(&bytes)
                    .unwrap_or_else(|e| panic!("state of {key:?} does not decode: {e}"));
                let saved = Stored {
                    state,
                    applied_offset: stored.applied_offset,
                };
                self.saved.insert(key, saved);
            }
        }
    }

    /// A crash before [`MemoryRun::commit`]: the rows of the batch are in the tables, its
    /// states are not saved, and the restarted loop reloads the saved states. The records of
    /// the batch are then delivered again.
    pub fn crash(&mut self) {
        self.dirty.clear();
        self.live = self.saved.clone();
        self.partials_live = self
            .partials_saved
            .iter()
            .map(|(key, rows)| (key.clone(), rows.reloaded()))
            .collect();
    }

    /// A crash between the two halves of a batch's writes: the partial rows and their sums
    /// are saved, the entities' states are not. The records of the batch are then delivered
    /// again, and the partial rows must skip the deltas they took.
    pub fn crash_after_partials(&mut self) {
        self.partials_saved = self.partials_live.clone();
        self.crash();
    }

    /// Writes `row` as the store does: a null in a set-once column of `declared` is unset, so
    /// the value the row had stays.
    fn write(&mut self, declared: &[Table], row: Row) {
        match row {
            Row::Upsert {
                table,
                key,
                mut values,
            } => {
                let key = row_key(&key);
                let rows = self.tables.entry(table).or_default();
                if let Some(declared) = declared.iter().find(|t| t.name == table) {
                    let before = rows.get(&key);
                    for (index, column) in declared.values.iter().enumerate() {
                        if !declared.set_once.contains(column) {
                            continue;
                        }
                        let cleared = (table, key.clone(), *column);
                        match (&values[index], before.and_then(|b| b[index].as_ref())) {
                            (None, Some(kept)) => {
                                values[index] = Some(kept.clone());
                                self.cleared.insert(cleared);
                            }
                            _ => {
                                self.cleared.remove(&cleared);
                            }
                        }
                    }
                }
                rows.insert(key, values);
            }
            Row::Delete { table, key } => {
                let key = row_key(&key);
                if let Some(rows) = self.tables.get_mut(table) {
                    rows.remove(&key);
                }
                self.cleared.retain(|(t, k, _)| !(*t == table && *k == key));
            }
        }
    }

    /// The tables as written so far.
    ///
    /// # Panics
    ///
    /// When a row's last upsert gave null in a set-once column that held a value
    /// ([`Table::set_once`]): the table keeps the old value, which the projection meant to
    /// clear, so the column must not be declared set once.
    pub fn tables(&self) -> &Tables {
        if let Some((table, key, column)) = self.cleared.first() {
            panic!(
                "{table} {key}: column {column} is declared set once, but the row's last \
                 upsert made it null after it held a value"
            );
        }
        &self.tables
    }

    /// Every command the projection produced, in order (repeats included).
    pub fn commands(&self) -> &[Command] {
        &self.commands
    }

    /// Records the projection refused (offset, reason).
    pub fn rejected(&self) -> &[(i64, String)] {
        &self.rejected
    }

    /// An entity's live state, if it has one.
    pub fn state(&self, topic: &str, partition: i32, entity: &str) -> Option<&S> {
        self.live
            .get(&(topic.to_owned(), partition, entity.to_owned()))
            .map(|stored| &stored.state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::projection::{Effects, RuleError};
    use dietstream_schemas::types::{
        AggregateType, EventHeader, WaterIntakeLogged, WaterIntakeLoggedPayload,
    };

    const MARKS: Table = Table {
        name: "marks",
        key: &["user_id"],
        values: &["drinks", "second_at"],
        set_once: &["second_at"],
    };

    /// Counts a user's drinks; `second_at` is the time of the second one. With `clears`, it
    /// is given only while the count is exactly two: a projection that clears a column it
    /// declared set once.
    struct Marks {
        clears: bool,
    }

    impl Projection for Marks {
        type State = (u32, Option<i64>);

        fn name(&self) -> &'static str {
            "marks"
        }

        fn tables(&self) -> &'static [Table] {
            &[MARKS]
        }

        fn migrations(&self) -> Vec<String> {
            Vec::new()
        }

        fn wants(&self, event_type: &str) -> bool {
            event_type == "nutrition.water.logged"
        }

        fn entities(&self, event: &Event, _: &Origin<'_>) -> Vec<String> {
            vec![event.header().aggregate_id.clone()]
        }

        fn apply(
            &self,
            entity: &str,
            (drinks, second_at): &mut Self::State,
            event: &Event,
            _: &Origin<'_>,
        ) -> Result<Effects, RuleError> {
            *drinks += 1;
            if *drinks == 2 {
                *second_at = Some(event.header().timestamp);
            }
            let shown = second_at.filter(|_| !self.clears || *drinks == 2);
            Ok(Effects {
                rows: vec![Row::upsert(
                    MARKS.name,
                    vec![CqlValue::Text(entity.to_owned())],
                    vec![
                        Some(CqlValue::Int(i32::try_from(*drinks).unwrap_or(i32::MAX))),
                        shown.map(CqlValue::BigInt),
                    ],
                )],
                ..Effects::default()
            })
        }
    }

    fn drink(timestamp: i64) -> Event {
        Event::WaterIntakeLogged(WaterIntakeLogged {
            header: EventHeader {
                event_id: uuid::Uuid::from_u128(timestamp as u128),
                event_type: "nutrition.water.logged".to_owned(),
                aggregate_id: "ann".to_owned(),
                aggregate_type: AggregateType::User,
                version: timestamp,
                timestamp,
                user_id: Some("ann".to_owned()),
                session_id: None,
                correlation_id: None,
                causation_id: None,
                metadata: Default::default(),
            },
            payload: WaterIntakeLoggedPayload {
                intake_id: uuid::Uuid::from_u128(timestamp as u128),
                millilitres: 250,
                drunk_at: timestamp,
            },
        })
    }

    fn row(run: &MemoryRun<(u32, Option<i64>)>) -> Values {
        run.tables()["marks"][&row_key(&[CqlValue::Text("ann".to_owned())])].clone()
    }

    #[test]
    fn a_set_once_column_keeps_its_value_through_a_replay_of_older_records() {
        let (projection, mut run) = (Marks { clears: false }, MemoryRun::new());
        for offset in 0..2 {
            run.deliver(&projection, "t", 0, offset, &drink(offset + 10));
        }
        assert_eq!(
            row(&run),
            vec![Some(CqlValue::Int(2)), Some(CqlValue::BigInt(11))]
        );
        // A crash before the states were saved: the first record is written again, from the
        // old state, with `second_at` null; the table keeps 11 until the second comes again.
        run.crash();
        run.deliver(&projection, "t", 0, 0, &drink(10));
        run.deliver(&projection, "t", 0, 1, &drink(11));
        assert_eq!(
            row(&run),
            vec![Some(CqlValue::Int(2)), Some(CqlValue::BigInt(11))]
        );
    }

    #[test]
    #[should_panic(expected = "column second_at is declared set once")]
    fn a_projection_that_clears_a_set_once_column_is_shown() {
        let (projection, mut run) = (Marks { clears: true }, MemoryRun::new());
        for offset in 0..3 {
            run.deliver(&projection, "t", 0, offset, &drink(offset + 10));
        }
        let _ = run.tables();
    }
}
