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

use std::collections::{BTreeMap, HashMap};

use dietstream_schemas::{Command, Event};
use scylla::value::CqlValue;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::partials::{self, Partials};
use crate::projection::{Origin, Projection, Row};
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
                        self.write(row);
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
                        self.write(row);
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

    fn write(&mut self, row: Row) {
        match row {
            Row::Upsert { table, key, values } => {
                self.tables
                    .entry(table)
                    .or_default()
                    .insert(row_key(&key), values);
            }
            Row::Delete { table, key } => {
                if let Some(rows) = self.tables.get_mut(table) {
                    rows.remove(&row_key(&key));
                }
            }
        }
    }

    /// The tables as written so far.
    pub fn tables(&self) -> &Tables {
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
