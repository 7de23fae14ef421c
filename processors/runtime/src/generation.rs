//! Generations of a read model: a rebuild (`dietstream replay`) writes a new set of tables
//! from the start of the log while the running processor keeps serving the old set, then
//! switches the processor over.
//!
//! Generation 0 is the plain table names and the topology's consumer group; generation N ≥ 1
//! is `<table>_g<N>` (the state table too) and `<group>.g<N>`. The table
//! `read_model_generations` in the keyspace records, per processor, the generation that serves
//! (`active`) and the one being built (`building`); a processor without a row serves
//! generation 0.
//!
//! One rebuild of a processor at a time: [`begin`] and [`activate`] are lightweight
//! transactions on `building`, so of two rebuilds that begin at once only one does, and a
//! rebuild that another has taken over is not made active. `started_at` is set when a rebuild
//! begins and emptied by [`stopped`] when one ends without switching, so `building` with a
//! `started_at` is a rebuild still running, or one whose process was killed.

use std::sync::Arc;

use dietstream_schemas::Event;
use scylla::client::session::Session;
use scylla::value::CqlTimestamp;

use crate::projection::{Effects, Origin, PartialTable, Projection, RuleError, Table};
use crate::store::StoreError;

/// The name of the table that records every processor's generations.
pub const GENERATIONS_TABLE: &str = "read_model_generations";

/// `table` as generation `generation` names it.
pub fn table_name(table: &str, generation: u32) -> String {
    if generation == 0 {
        table.to_owned()
    } else {
        format!("{table}_g{generation}")
    }
}

/// The consumer group of generation `generation`, from the topology's group.
pub fn group_id(group: &str, generation: u32) -> String {
    if generation == 0 {
        group.to_owned()
    } else {
        format!("{group}.g{generation}")
    }
}

/// A migration statement with every `{keyspace}.<table>` of `tables` renamed for
/// `generation`. Only whole names are renamed: `{keyspace}.quests` does not touch
/// `{keyspace}.quests_by_user`.
pub fn map_statement(statement: &str, tables: &[&str], generation: u32) -> String {
    if generation == 0 {
        return statement.to_owned();
    }
    const MARK: &str = "{keyspace}.";
    let mut mapped = String::with_capacity(statement.len() + 8);
    let mut rest = statement;
    while let Some(at) = rest.find(MARK) {
        let (before, after) = rest.split_at(at + MARK.len());
        mapped.push_str(before);
        let end = after
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(after.len());
        let (name, tail) = after.split_at(end);
        if tables.contains(&name) {
            mapped.push_str(&table_name(name, generation));
        } else {
            mapped.push_str(name);
        }
        rest = tail;
    }
    mapped.push_str(rest);
    mapped
}

/// What the generations table says about one processor.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Generations {
    /// The generation that serves.
    pub active: u32,
    /// The generation a rebuild is writing, when one started and has not switched yet (or
    /// was abandoned).
    pub building: Option<u32>,
    /// When the rebuild of `building` began (ms since the epoch), while it runs: `None` once
    /// it stopped without switching. A killed rebuild keeps it.
    pub running_since: Option<i64>,
}

impl Generations {
    /// The generation a new rebuild writes: above every generation used so far, so an
    /// abandoned rebuild's tables and offsets are never reused.
    pub fn next(&self) -> u32 {
        self.active.max(self.building.unwrap_or(0)) + 1
    }
}

fn failed(operation: &'static str, error: impl std::fmt::Display) -> StoreError {
    StoreError::Execute {
        operation,
        table: GENERATIONS_TABLE.to_owned(),
        message: error.to_string(),
    }
}

/// Creates the generations table unless it exists.
pub async fn migrate(session: &Session, keyspace: &str) -> Result<(), StoreError> {
    let statement = format!(
        "CREATE TABLE IF NOT EXISTS {keyspace}.{GENERATIONS_TABLE} (\
         processor text PRIMARY KEY, active int, building int, started_at timestamp, \
         switched_at timestamp, tables list<text>)"
    );
    crate::store::execute_migrations(session, vec![statement]).await
}

/// The generations of `processor` (active 0, nothing building, when it has no row).
pub async fn load(
    session: &Session,
    keyspace: &str,
    processor: &str,
) -> Result<Generations, StoreError> {
    let rows = session
        .query_unpaged(
            format!(
                "SELECT active, building, started_at FROM {keyspace}.{GENERATIONS_TABLE} \
                 WHERE processor = ?"
            ),
            (processor,),
        )
        .await
        .map_err(|e| failed("load", e))?
        .into_rows_result()
        .map_err(|e| failed("load", e))?;
    let row = rows
        .maybe_first_row::<(Option<i32>, Option<i32>, Option<CqlTimestamp>)>()
        .map_err(|e| failed("load", e))?;
    let generation = |value: Option<i32>| value.and_then(|v| u32::try_from(v).ok());
    Ok(match row {
        Some((active, building, started_at)) => Generations {
            active: generation(active).unwrap_or(0),
            building: generation(building),
            running_since: started_at.filter(|_| building.is_some()).map(|at| at.0),
        },
        None => Generations::default(),
    })
}

fn cql_generation(generation: u32) -> Result<i32, StoreError> {
    i32::try_from(generation).map_err(|e| failed("save", e))
}

/// Records that `generation` of `processor` is being built, from `now_ms`, if the generation
/// recorded as building is still `replaces` (`None`: none), as the caller read it. A
/// lightweight transaction: when another rebuild began since that read, nothing changes and
/// the answer is false.
pub async fn begin(
    session: &Session,
    keyspace: &str,
    processor: &str,
    generation: u32,
    replaces: Option<u32>,
    now_ms: i64,
) -> Result<bool, StoreError> {
    let replaces = replaces.map(cql_generation).transpose()?;
    conditional(
        session,
        format!(
            "UPDATE {keyspace}.{GENERATIONS_TABLE} SET building = ?, started_at = ? \
             WHERE processor = ? IF building = ?"
        ),
        (
            cql_generation(generation)?,
            CqlTimestamp(now_ms),
            processor,
            replaces,
        ),
    )
    .await
}

/// Records that the rebuild of `generation` stopped without switching: `started_at` is
/// emptied, and `building` kept, so the next rebuild still writes a generation above it.
/// False (nothing changed) when another rebuild has taken over since.
pub async fn stopped(
    session: &Session,
    keyspace: &str,
    processor: &str,
    generation: u32,
) -> Result<bool, StoreError> {
    conditional(
        session,
        format!(
            "UPDATE {keyspace}.{GENERATIONS_TABLE} SET started_at = null WHERE processor = ? \
             IF building = ?"
        ),
        (processor, cql_generation(generation)?),
    )
    .await
}

/// Runs a lightweight transaction; whether it applied.
async fn conditional(
    session: &Session,
    statement: String,
    values: impl scylla::serialize::row::SerializeRow,
) -> Result<bool, StoreError> {
    let rows = session
        .query_unpaged(statement, values)
        .await
        .map_err(|e| failed("save", e))?
        .into_rows_result()
        .map_err(|e| failed("save", e))?;
    // `[applied]` first, then (when not applied) the values the condition saw.
    let row = rows
        .first_row::<scylla::value::Row>()
        .map_err(|e| failed("save", e))?;
    Ok(matches!(
        row.columns.first(),
        Some(Some(scylla::value::CqlValue::Boolean(true)))
    ))
}

/// Records that `generation` of `processor`, with these tables, serves from `now_ms` on; a
/// running processor switches to it at its next look. A lightweight transaction: when
/// `generation` is no longer the one being built (another rebuild began since), nothing
/// changes and the answer is false.
pub async fn activate(
    session: &Session,
    keyspace: &str,
    processor: &str,
    generation: u32,
    tables: &[String],
    now_ms: i64,
) -> Result<bool, StoreError> {
    conditional(
        session,
        format!(
            "UPDATE {keyspace}.{GENERATIONS_TABLE} SET active = ?, building = null, \
             switched_at = ?, tables = ? WHERE processor = ? IF building = ?"
        ),
        (
            cql_generation(generation)?,
            CqlTimestamp(now_ms),
            tables.to_vec(),
            processor,
            cql_generation(generation)?,
        ),
    )
    .await
}

/// The tables of `projection` in `generation`, its state table last.
pub fn tables_of<P: Projection>(projection: &P, generation: u32) -> Vec<String> {
    projection
        .tables()
        .iter()
        .map(|t| t.name.to_owned())
        .chain(std::iter::once(crate::store::state_table(
            projection.name(),
        )))
        .map(|name| table_name(&name, generation))
        .collect()
}

/// Resolves when the active generation of `processor` is no longer `serving`, looking every
/// `interval`. A failed look is logged and tried again at the next one.
pub async fn changed(
    session: &Session,
    keyspace: &str,
    processor: &str,
    serving: u32,
    interval: std::time::Duration,
) -> u32 {
    loop {
        tokio::time::sleep(interval).await;
        match load(session, keyspace, processor).await {
            Ok(generations) if generations.active != serving => return generations.active,
            Ok(_) => {}
            Err(error) => {
                tracing::warn!(%processor, %error, "Reading the active generation failed; trying again.")
            }
        }
    }
}

/// A projection as a rebuild runs it: the same rows and state, but no commands. The commands
/// were sent by the generation that served when the events first arrived; the command
/// processor would reject most repeats, but a rebuild must not depend on that (a quest started
/// again, XP awarded twice).
pub struct Rebuild<P>(pub Arc<P>);

impl<P: Projection> Projection for Rebuild<P> {
    type State = P::State;

    fn name(&self) -> &'static str {
        self.0.name()
    }

    fn tables(&self) -> &'static [Table] {
        self.0.tables()
    }

    fn partials(&self) -> &'static [PartialTable] {
        self.0.partials()
    }

    fn migrations(&self) -> Vec<String> {
        self.0.migrations()
    }

    fn wants(&self, event_type: &str) -> bool {
        self.0.wants(event_type)
    }

    fn entities(&self, event: &Event, origin: &Origin<'_>) -> Vec<String> {
        self.0.entities(event, origin)
    }

    fn apply(
        &self,
        entity: &str,
        state: &mut Self::State,
        event: &Event,
        origin: &Origin<'_>,
    ) -> Result<Effects, RuleError> {
        let mut effects = self.0.apply(entity, state, event, origin)?;
        effects.commands.clear();
        Ok(effects)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_zero_keeps_the_names_of_today() {
        assert_eq!(table_name("quests_by_user", 0), "quests_by_user");
        assert_eq!(group_id("dietstream.quests", 0), "dietstream.quests");
        let statement = "CREATE TABLE IF NOT EXISTS {keyspace}.quests_by_user (x int)";
        assert_eq!(map_statement(statement, &["quests_by_user"], 0), statement);
    }

    #[test]
    fn later_generations_suffix_tables_and_groups() {
        assert_eq!(table_name("quests_by_user", 3), "quests_by_user_g3");
        assert_eq!(
            group_id("it.dietstream.quests", 12),
            "it.dietstream.quests.g12"
        );
    }

    #[test]
    fn only_whole_declared_names_after_the_keyspace_are_renamed() {
        let statement = "CREATE TABLE IF NOT EXISTS {keyspace}.quests_by_user (quests_by_user \
                         text, x int); SELECT * FROM {keyspace}.quests; {keyspace}.other";
        assert_eq!(
            map_statement(statement, &["quests", "quests_by_user"], 2),
            "CREATE TABLE IF NOT EXISTS {keyspace}.quests_by_user_g2 (quests_by_user text, x \
             int); SELECT * FROM {keyspace}.quests_g2; {keyspace}.other"
        );
        assert_eq!(
            map_statement("{keyspace}.quests", &["quests"], 1),
            "{keyspace}.quests_g1"
        );
    }

    #[test]
    fn the_next_generation_passes_every_one_used() {
        assert_eq!(Generations::default().next(), 1);
        let abandoned = Generations {
            active: 1,
            building: Some(4),
            running_since: None,
        };
        assert_eq!(abandoned.next(), 5);
        let settled = Generations {
            active: 3,
            building: None,
            running_since: None,
        };
        assert_eq!(settled.next(), 4);
    }
}
