//! The read-model processors by name, and what every command does with any of them: one
//! `match` from a name to its [`Projection`] ([`with_read_model`]), so a new processor is one
//! line there and one name in [`READ_MODELS`].

use std::future::Future;
use std::sync::Arc;

use dietstream_engagement::EngagementProjection;
use dietstream_insights::InsightsProjection;
use dietstream_nutrition::NutritionProjection;
use dietstream_quests::QuestsProjection;
use dietstream_runtime::{generation, Projection};
use scylla::client::session::Session;

use crate::run::{RunError, READ_MODELS};

/// Something to do with one read-model processor, whatever its projection type.
pub trait ReadModelTask: Send {
    /// What it gives back.
    type Output: Send;

    /// Does it with this processor's projection.
    fn run<P: Projection>(self, projection: Arc<P>) -> impl Future<Output = Self::Output> + Send;
}

/// Runs `task` with the projection of the read-model processor called `name`.
pub async fn with_read_model<T: ReadModelTask>(name: &str, task: T) -> Result<T::Output, RunError> {
    Ok(match name {
        "nutrition" => task.run(Arc::new(NutritionProjection::new())).await,
        "engagement" => task.run(Arc::new(EngagementProjection::new())).await,
        "quests" => task.run(Arc::new(QuestsProjection::new())).await,
        "insights" => task.run(Arc::new(InsightsProjection::new())).await,
        other => return Err(RunError::UnknownProcessor(other.to_owned())),
    })
}

/// The names of a processor's tables, as its projection declares them (generation 0).
struct TableNames;

impl ReadModelTask for TableNames {
    type Output = Vec<&'static str>;

    async fn run<P: Projection>(self, projection: Arc<P>) -> Vec<&'static str> {
        projection.tables().iter().map(|t| t.name).collect()
    }
}

/// Creates the active generation's tables of one processor (and the generations table).
struct Migrate<'a> {
    session: &'a Session,
    keyspace: &'a str,
}

impl ReadModelTask for Migrate<'_> {
    type Output = Result<u32, RunError>;

    async fn run<P: Projection>(self, projection: Arc<P>) -> Result<u32, RunError> {
        let active = generation::load(self.session, self.keyspace, projection.name())
            .await?
            .active;
        dietstream_runtime::store::migrate_generation(
            self.session,
            projection.as_ref(),
            self.keyspace,
            active,
        )
        .await?;
        Ok(active)
    }
}

/// Creates the generations table and the tables of the active generation of every read-model
/// processor (state tables included). Idempotent.
pub async fn migrate_all(session: &Session, keyspace: &str) -> Result<(), RunError> {
    generation::migrate(session, keyspace).await?;
    for name in READ_MODELS {
        with_read_model(name, Migrate { session, keyspace }).await??;
    }
    Ok(())
}

/// The name `table` (a table a read-model processor declares) has in the generation of its
/// processor that serves now; `None` when no read-model processor declares it.
pub async fn active_table(
    session: &Session,
    keyspace: &str,
    table: &str,
) -> Result<Option<String>, RunError> {
    for name in READ_MODELS {
        if with_read_model(name, TableNames).await?.contains(&table) {
            let active = generation::load(session, keyspace, name).await?.active;
            return Ok(Some(generation::table_name(table, active)));
        }
    }
    Ok(None)
}

/// The consumer group serving `processor` now: for a read model, its active generation's
/// (`<group>.g<N>` after a rebuild); for any other processor, the topology's `group`.
pub async fn serving_group(
    session: &Session,
    keyspace: &str,
    processor: &str,
    group: &str,
) -> Result<String, RunError> {
    if !READ_MODELS.contains(&processor) {
        return Ok(group.to_owned());
    }
    let active = generation::load(session, keyspace, processor).await?.active;
    Ok(generation::group_id(group, active))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every migration of one generation of a projection, with its declared tables.
    struct Statements(u32);

    impl ReadModelTask for Statements {
        type Output = (Vec<String>, Vec<String>, &'static str);

        async fn run<P: Projection>(self, projection: Arc<P>) -> Self::Output {
            let statements =
                dietstream_runtime::store::generation_migrations(projection.as_ref(), "ks", self.0);
            let tables = generation::tables_of(projection.as_ref(), 0);
            (statements, tables, projection.name())
        }
    }

    /// The table a `CREATE TABLE IF NOT EXISTS ks.<name> (` statement creates.
    fn created(statement: &str) -> Option<&str> {
        let rest = statement.split("CREATE TABLE IF NOT EXISTS ks.").nth(1)?;
        rest.split([' ', '(']).next()
    }

    #[tokio::test]
    async fn every_processor_s_migrations_create_exactly_its_tables_in_every_generation() {
        for name in READ_MODELS {
            for generation in [0, 1, 7] {
                let (statements, tables, processor) = with_read_model(name, Statements(generation))
                    .await
                    .expect("a read model");
                assert_eq!(processor, name);
                let mut made: Vec<&str> = statements.iter().filter_map(|s| created(s)).collect();
                made.sort_unstable();
                let mut wanted: Vec<String> = tables
                    .iter()
                    .map(|t| generation::table_name(t, generation))
                    .collect();
                wanted.sort_unstable();
                assert_eq!(made, wanted, "{name} generation {generation}");
                assert!(
                    statements.iter().all(|s| !s.contains("{keyspace}")),
                    "{statements:?}"
                );
            }
        }
    }

    #[tokio::test]
    async fn an_unknown_processor_is_refused_by_name() {
        let error = with_read_model("insight", TableNames)
            .await
            .expect_err("not a read model");
        assert!(error.to_string().contains("\"insight\""), "{error}");
    }
}
