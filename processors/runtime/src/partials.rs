//! The running sums of [partial rows](crate::projection#partial-rows) in one source partition,
//! shared by the consume loop and its in-memory model ([`crate::memory`]).
//!
//! Each partial row is stored in the processor's state table like an entity, under a name
//! that starts with [`ENTITY_PREFIX`] (a NUL, so no projection entity, a user or aggregate
//! id, is taken for one), with its sums as the state ([`PartialSums`]) and the offset of the
//! last record whose delta it took.

use std::collections::HashMap;

use scylla::value::{CqlDate, CqlTimestamp, CqlValue};
use serde::{Deserialize, Serialize};

use crate::projection::{Partial, PartialTable, Row, Sum, Table};
use crate::store::{StoreError, Stored};

/// How the state-table entity of a partial row starts.
pub const ENTITY_PREFIX: &str = "\u{0}partial\u{0}";

/// The sums of one partial row, in its table's value order, in each column's [`Sum`] unit.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartialSums {
    /// The running sums.
    pub sums: Vec<i64>,
}

/// True when a state-table entity is a partial row's.
pub fn is_partial_entity(entity: &str) -> bool {
    entity.starts_with(ENTITY_PREFIX)
}

/// A key value as the state table names it: stable across driver versions for the types a
/// key usually has (text, integers, dates, times, uuids, booleans).
fn render(value: &CqlValue) -> String {
    match value {
        CqlValue::Text(s) | CqlValue::Ascii(s) => s.clone(),
        CqlValue::Int(v) => v.to_string(),
        CqlValue::BigInt(v) => v.to_string(),
        CqlValue::SmallInt(v) => v.to_string(),
        CqlValue::TinyInt(v) => v.to_string(),
        CqlValue::Boolean(v) => v.to_string(),
        CqlValue::Date(CqlDate(v)) => v.to_string(),
        CqlValue::Timestamp(CqlTimestamp(v)) => v.to_string(),
        CqlValue::Uuid(v) => v.to_string(),
        other => format!("{other:?}"),
    }
}

/// The state-table entity of the partial row a [`Partial`] changes.
pub fn entity(partial: &Partial) -> String {
    let mut name = format!("{ENTITY_PREFIX}{}", partial.table);
    for value in &partial.key {
        name.push('\u{0}');
        name.push_str(&render(value));
    }
    name
}

/// The partial rows of one source partition: their sums and the offsets they took.
///
/// A record may bring several deltas for one row (from two entities it changes): all of them
/// count when the row takes the record in this run, none when the row had taken it before it
/// was loaded (the entities then apply the record again after a crash).
#[derive(Debug, Clone, Default)]
pub struct Partials {
    rows: HashMap<String, Stored<PartialSums>>,
    /// Per row, the offset it took since it was loaded, if any.
    taking: HashMap<String, i64>,
}

impl Partials {
    /// The partial rows as loaded from the state table.
    pub fn new(rows: HashMap<String, Stored<PartialSums>>) -> Partials {
        Partials {
            rows,
            taking: HashMap::new(),
        }
    }

    /// The rows as a restarted loop loads them again from these.
    pub fn reloaded(&self) -> Partials {
        Partials::new(self.rows.clone())
    }

    /// Adds the deltas of the record at `offset` to their row, unless the row had taken
    /// that record before it was loaded. The row's entity when it changed.
    pub fn add(&mut self, partial: &Partial, offset: i64) -> Option<String> {
        let name = entity(partial);
        let stored = self.rows.entry(name.clone()).or_insert_with(|| Stored {
            state: PartialSums::default(),
            applied_offset: -1,
        });
        let taking = self.taking.get(&name) == Some(&offset);
        if stored.applied_offset > offset || (stored.applied_offset == offset && !taking) {
            return None;
        }
        stored.applied_offset = offset;
        self.taking.insert(name.clone(), offset);
        let sums = &mut stored.state.sums;
        if sums.len() < partial.deltas.len() {
            sums.resize(partial.deltas.len(), 0);
        }
        // Wrapping: the sum of the deltas telescopes to the sum of the contributions, exact
        // whenever that fits in an i64, whatever the order and the intermediate sums.
        for (sum, delta) in sums.iter_mut().zip(&partial.deltas) {
            *sum = sum.wrapping_add(*delta);
        }
        Some(name)
    }

    /// A row's sums and offset.
    pub fn get(&self, entity: &str) -> Option<&Stored<PartialSums>> {
        self.rows.get(entity)
    }

    /// Every row held (for tests).
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// True when no row is held.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

/// The column that ends the key of every partial table.
pub const SOURCE_PARTITION: &str = "source_partition";

/// What is wrong with a projection's partial tables, as (table, problem): each must be one of
/// `tables`, with [`SOURCE_PARTITION`] as its last key column and one [`Sum`] per value
/// column. [`crate::store::Store::prepare`] refuses a projection with any. (A table keyed by
/// the source partition need not be partial: an entity may be one per source partition.)
pub fn declaration_problems(tables: &[Table], partials: &[PartialTable]) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    for partial in partials {
        match tables.iter().find(|t| t.name == partial.name) {
            None => problems.push((
                partial.name.to_owned(),
                "declared as partial but not one of the projection's tables".to_owned(),
            )),
            Some(table) => {
                if table.key.last() != Some(&SOURCE_PARTITION) {
                    problems.push((
                        table.name.to_owned(),
                        format!("a partial table's last key column must be {SOURCE_PARTITION}"),
                    ));
                }
                if partial.sums.len() != table.values.len() {
                    problems.push((
                        table.name.to_owned(),
                        format!(
                            "{} sums declared for {} value columns",
                            partial.sums.len(),
                            table.values.len()
                        ),
                    ));
                }
            }
        }
    }
    problems
}

/// The row to write for a partial row's sums: its key with `partition` appended, its sums in
/// their columns' CQL types; a delete when every sum is zero (no contribution left).
///
/// A partial row of a table that `declared` does not list is a bug in the projection: its
/// sums' column types are unknown, so it is refused ([`StoreError::BadRow`], which stops the
/// loop) rather than written as `bigint`.
pub fn row(
    declared: &[PartialTable],
    table: &'static str,
    key: &[CqlValue],
    partition: i32,
    sums: &[i64],
) -> Result<Row, StoreError> {
    let kinds = declared
        .iter()
        .find(|t| t.name == table)
        .ok_or_else(|| StoreError::BadRow {
            table: table.to_owned(),
            problem: "a partial row of a table Projection::partials() does not declare".to_owned(),
        })?
        .sums;
    let mut key = key.to_vec();
    key.push(CqlValue::Int(partition));
    if sums.iter().all(|s| *s == 0) {
        return Ok(Row::Delete { table, key });
    }
    let values = sums
        .iter()
        .enumerate()
        .map(|(i, sum)| {
            Some(match kinds.get(i).copied().unwrap_or(Sum::BigInt) {
                Sum::Int => CqlValue::Int(i32::try_from(*sum).unwrap_or(if *sum < 0 {
                    i32::MIN
                } else {
                    i32::MAX
                })),
                Sum::BigInt => CqlValue::BigInt(*sum),
                Sum::Millionths => CqlValue::Double(*sum as f64 / 1e6),
            })
        })
        .collect();
    Ok(Row::upsert(table, key, values))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAYS: Table = Table {
        name: "days",
        key: &["day", SOURCE_PARTITION],
        values: &["millilitres", "users"],
        set_once: &[],
    };
    const USERS: Table = Table {
        name: "users",
        key: &["user_id"],
        values: &["millilitres"],
        set_once: &[],
    };

    #[test]
    fn partial_tables_must_be_known_keyed_and_summed_column_by_column() {
        let right = [PartialTable {
            name: "days",
            sums: &[Sum::BigInt, Sum::Int],
        }];
        assert_eq!(declaration_problems(&[DAYS, USERS], &right), vec![]);
        assert_eq!(declaration_problems(&[DAYS, USERS], &[]), vec![]);
        let short = [PartialTable {
            name: "days",
            sums: &[Sum::BigInt],
        }];
        let problems = declaration_problems(&[DAYS], &short);
        assert!(
            problems[0].1.contains("1 sums declared for 2"),
            "{problems:?}"
        );
        let unkeyed = [PartialTable {
            name: "users",
            sums: &[Sum::BigInt],
        }];
        let problems = declaration_problems(&[USERS], &unkeyed);
        assert!(problems[0].1.contains("last key column"), "{problems:?}");
        let unknown = [PartialTable {
            name: "weeks",
            sums: &[],
        }];
        let problems = declaration_problems(&[], &unknown);
        assert!(problems[0].1.contains("not one of"), "{problems:?}");
    }

    fn partial(day: i32, deltas: Vec<i64>) -> Partial {
        Partial {
            table: "t",
            key: vec![CqlValue::Int(day)],
            deltas,
        }
    }

    #[test]
    fn a_row_takes_a_record_once() {
        let mut partials = Partials::default();
        assert!(partials.add(&partial(1, vec![2, 3]), 10).is_some());
        // An older record is not taken (the entities' guard keeps a run from replaying one).
        assert!(partials.add(&partial(1, vec![2, 3]), 9).is_none());
        let name = partials.add(&partial(1, vec![-2, 1]), 11).expect("newer");
        let stored = partials.get(&name).expect("row");
        assert_eq!(stored.state.sums, vec![0, 4]);
        assert_eq!(stored.applied_offset, 11);
        // A second delta of record 11 (another entity's) counts too...
        assert!(partials.add(&partial(1, vec![1, 1]), 11).is_some());
        // ...but not once the rows are loaded again after having taken record 11.
        let mut reloaded = partials.reloaded();
        assert!(reloaded.add(&partial(1, vec![2, 3]), 11).is_none());
        assert_eq!(reloaded.get(&name).expect("row").state.sums, vec![1, 5]);
        // Another key is another row.
        assert!(partials.add(&partial(2, vec![1]), 11).is_some());
        assert_eq!(partials.len(), 2);
    }

    #[test]
    fn sums_wrap_back_to_the_exact_total() {
        let mut partials = Partials::default();
        partials.add(&partial(1, vec![i64::MAX]), 1);
        partials.add(&partial(1, vec![5]), 2);
        let name = partials.add(&partial(1, vec![-i64::MAX]), 3).expect("row");
        assert_eq!(partials.get(&name).expect("row").state.sums, vec![5]);
    }

    #[test]
    fn entities_of_partial_rows_are_told_apart_from_others() {
        let name = entity(&partial(3, vec![]));
        assert!(is_partial_entity(&name));
        assert!(!is_partial_entity("user-1"));
        assert_ne!(name, entity(&partial(4, vec![])));
    }

    #[test]
    fn rows_carry_the_partition_and_typed_sums_and_vanish_at_zero() {
        const SUMS: &[PartialTable] = &[PartialTable {
            name: "t",
            sums: &[Sum::Int, Sum::BigInt, Sum::Millionths],
        }];
        let key = [CqlValue::Int(7)];
        assert_eq!(
            row(SUMS, "t", &key, 2, &[1, 2, 1_500_000]).expect("declared"),
            Row::upsert(
                "t",
                vec![CqlValue::Int(7), CqlValue::Int(2)],
                vec![
                    Some(CqlValue::Int(1)),
                    Some(CqlValue::BigInt(2)),
                    Some(CqlValue::Double(1.5))
                ],
            )
        );
        assert_eq!(
            row(SUMS, "t", &key, 2, &[0, 0, 0]).expect("declared"),
            Row::Delete {
                table: "t",
                key: vec![CqlValue::Int(7), CqlValue::Int(2)]
            }
        );
        assert_eq!(
            row(SUMS, "t", &key, 0, &[i64::MAX, 0, 0]).expect("declared"),
            Row::upsert(
                "t",
                vec![CqlValue::Int(7), CqlValue::Int(0)],
                vec![
                    Some(CqlValue::Int(i32::MAX)),
                    Some(CqlValue::BigInt(0)),
                    Some(CqlValue::Double(0.0))
                ],
            )
        );
        assert_eq!(Sum::millionths(1.25), 1_250_000);
        assert_eq!(Sum::millionths(f64::NAN), 0);
    }

    #[test]
    fn a_partial_row_of_an_undeclared_table_is_refused_not_guessed() {
        let declared = [PartialTable {
            name: "days",
            sums: &[Sum::Int],
        }];
        let refused = row(&declared, "users", &[CqlValue::Int(7)], 0, &[5]);
        assert!(
            matches!(&refused, Err(StoreError::BadRow { table, .. }) if table == "users"),
            "{refused:?}"
        );
        // Even one whose sums are all zero: the table is wrong whatever its sums.
        assert!(row(&declared, "users", &[CqlValue::Int(7)], 0, &[0]).is_err());
    }
}
