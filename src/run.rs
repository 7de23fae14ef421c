//! `dietstream run <processor>`: builds a processor from the config and runs it until SIGTERM
//! or Ctrl-C, after which it finishes its batch or transaction, commits and returns.

use std::sync::Arc;

use dietstream_schemas::catalog::{Catalog, CatalogError};
use dietstream_schemas::codec::Codec;
use dietstream_schemas::registry::RegistryError;
use dietstream_topology::{Topology, TopologyError};
use scylla::client::session::Session;

use dietstream_runtime::consume::{self, Parts, ProcessorTopics};
use dietstream_runtime::{generation, Health, ProcessorMetrics, Projection, Store};
use dietstream_schemas::registry::ConfluentRegistry;

use crate::config::Config;
use crate::connect::ConnectError;
use crate::read_model::{with_read_model, ReadModelTask};

/// Why a processor could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The topology file does not resolve for the configured profile and prefix. Permanent.
    #[error(transparent)]
    Topology(#[from] TopologyError),
    /// The topology lacks what the processor needs. Permanent.
    #[error(transparent)]
    Topics(#[from] dietstream_commands::topics::TopologyMismatch),
    /// The embedded schemas are broken. Permanent.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// The registry client could not be built. Permanent.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The command processor stopped with an error.
    #[error(transparent)]
    Commands(#[from] dietstream_commands::ProcessorError),
    /// The CQL cluster could not be reached. Retryable.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The keyspace could not be created. Retryable when the cluster was unreachable.
    #[error("cannot create keyspace {keyspace}: {source}")]
    Keyspace {
        /// The keyspace.
        keyspace: String,
        /// What the driver said.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The indexer could not start or stopped with an error.
    #[error(transparent)]
    Indexer(#[from] dietstream_indexer::IndexerError),
    /// The topology lacks what a read-model processor needs. Permanent.
    #[error("the topology does not fit: {problem}")]
    ReadModelTopology {
        /// What is missing.
        problem: String,
    },
    /// No read-model processor has this name.
    #[error("no read-model processor is called {0:?}")]
    UnknownProcessor(String),
    /// `query rows` was asked for a table that is not a per-user read-model table.
    #[error("{0} is not one of the per-user read-model tables")]
    UnknownTable(String),
    /// A read-model query failed.
    #[error("query failed: {0}")]
    Query(String),
    /// The metrics could not be registered (a processor named twice).
    #[error("metrics: {0}")]
    Metrics(String),
    /// The metrics endpoint could not start or failed.
    #[error(transparent)]
    Http(#[from] dietstream_runtime::HttpError),
    /// A read-model processor's tables could not be created or prepared.
    #[error(transparent)]
    Store(#[from] dietstream_runtime::StoreError),
    /// A read-model processor stopped with an error.
    #[error(transparent)]
    ReadModel(#[from] dietstream_runtime::RuntimeError),
}

/// Resolves once SIGTERM or Ctrl-C arrives.
pub async fn termination() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Runs the command processor of `config` until `shutdown` resolves.
pub async fn commands(
    config: &Config,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<dietstream_commands::RunSummary, RunError> {
    let desired =
        Topology::embedded()?.resolve(config.topology.profile, &config.topology.prefix)?;
    let topics = dietstream_commands::Topics::from_desired(&desired)?;
    let codec = Arc::new(Codec::new(
        config.schema_registry.registry()?,
        &Catalog::embedded()?,
    )?);
    let summary = dietstream_commands::run(
        config.kafka.client_config(),
        topics,
        codec,
        config.commands.clone(),
        shutdown,
    )
    .await?;
    Ok(summary)
}

/// Creates the configured keyspace (when missing) and every table dietstream owns in it.
/// Idempotent: each statement is `CREATE ... IF NOT EXISTS`. Returns the open session.
pub async fn migrate(config: &Config) -> Result<Session, RunError> {
    let session = config.cql.session().await?;
    let keyspace = &config.cql.keyspace;
    config
        .cql
        .create_keyspace(&session)
        .await
        .map_err(|source| RunError::Keyspace {
            keyspace: keyspace.clone(),
            source: Box::new(source),
        })?;
    dietstream_indexer::migrate(&session, keyspace).await?;
    migrate_read_models(&session, keyspace).await?;
    Ok(session)
}

/// Runs the indexer of `config` until `shutdown` resolves; its tables are created first when
/// missing (see [`migrate`]).
pub async fn indexer(
    config: &Config,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), RunError> {
    let desired =
        Topology::embedded()?.resolve(config.topology.profile, &config.topology.prefix)?;
    let topics = dietstream_indexer::Topics::from_desired(&desired)?;
    let codec = Arc::new(Codec::new(
        config.schema_registry.registry()?,
        &Catalog::embedded()?,
    )?);
    let session = Arc::new(migrate(config).await?);
    dietstream_indexer::run(
        &config.kafka.client_config(),
        &topics,
        session,
        &config.cql.keyspace,
        codec,
        &config.indexer,
        shutdown,
    )
    .await?;
    Ok(())
}

/// The read-model processors `dietstream run` can start, by name.
pub const READ_MODELS: [&str; 4] = ["nutrition", "engagement", "quests", "insights"];

/// Creates the tables of every read-model processor (and their state tables), in the
/// generation of each that serves now, and the generations table. Idempotent.
pub async fn migrate_read_models(session: &Session, keyspace: &str) -> Result<(), RunError> {
    crate::read_model::migrate_all(session, keyspace).await
}

/// Runs the read-model processors named in `names` (each its own consumer group and tables) in
/// this process, with one `/metrics` and health endpoint for all, until `shutdown` resolves or
/// one of them fails, which stops the others.
pub async fn read_models(
    config: &Config,
    names: &[&str],
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), RunError> {
    let desired =
        Topology::embedded()?.resolve(config.topology.profile, &config.topology.prefix)?;
    let codec = Arc::new(Codec::new(
        config.schema_registry.registry()?,
        &Catalog::embedded()?,
    )?);
    let session = Arc::new(migrate(config).await?);
    let registry = prometheus::Registry::new();
    let health = Health::new("dietstream");
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let until_stopped = |mut stopped: tokio::sync::watch::Receiver<bool>| async move {
        let _ = stopped.wait_for(|stop| *stop).await;
    };
    let server = dietstream_runtime::serve(
        config.metrics.listen,
        registry.clone(),
        health.clone(),
        until_stopped(stopped.clone()),
    )
    .await?;
    tracing::info!(
        "Metrics at http://{0}/metrics, health at http://{0}/health/ready.",
        server.local_addr()
    );
    let env = ReadModelEnv {
        kafka: config.kafka.client_config(),
        session,
        keyspace: config.cql.keyspace.clone(),
        codec,
        config: config.processors.clone(),
    };
    let mut tasks = tokio::task::JoinSet::new();
    for name in names {
        let topics = ProcessorTopics::from_desired(&desired, name)
            .map_err(|problem| RunError::ReadModelTopology { problem })?;
        let metrics =
            ProcessorMetrics::new(name, &registry).map_err(|e| RunError::Metrics(e.to_string()))?;
        let part = health.part(name);
        let shutdown = until_stopped(stopped.clone());
        let task = Serve {
            env: env.clone(),
            topics,
            metrics,
            health: part,
            shutdown,
        };
        let name = (*name).to_owned();
        tasks.spawn(async move { with_read_model(&name, task).await? });
    }
    let mut shutdown = std::pin::pin!(shutdown);
    let mut outcome = Ok(());
    loop {
        tokio::select! {
            () = &mut shutdown => {
                let _ = stop.send(true);
                break;
            }
            finished = tasks.join_next() => match finished {
                None => break,
                Some(Ok(Ok(()))) => {}
                Some(Ok(Err(error))) => {
                    outcome = Err(error);
                    let _ = stop.send(true);
                    break;
                }
                Some(Err(error)) => std::panic::resume_unwind(error.into_panic()),
            }
        }
    }
    while let Some(finished) = tasks.join_next().await {
        match finished {
            Ok(Ok(())) => {}
            Ok(Err(error)) if outcome.is_ok() => outcome = Err(error),
            Ok(Err(error)) => tracing::warn!(%error, "Another processor failed while stopping."),
            Err(error) => std::panic::resume_unwind(error.into_panic()),
        }
    }
    let _ = stop.send(true);
    server.wait().await?;
    outcome
}

/// What every read-model processor of one process shares.
#[derive(Clone)]
pub struct ReadModelEnv {
    /// Common Kafka client properties.
    pub kafka: rdkafka::ClientConfig,
    /// The CQL session.
    pub session: Arc<Session>,
    /// The keyspace of the tables.
    pub keyspace: String,
    /// The codec of events and commands.
    pub codec: Arc<Codec<ConfluentRegistry>>,
    /// The consume loop's settings.
    pub config: dietstream_runtime::LoopConfig,
}

/// `dietstream run` of one read-model processor.
struct Serve<F> {
    env: ReadModelEnv,
    topics: ProcessorTopics,
    metrics: ProcessorMetrics,
    health: Health,
    shutdown: F,
}

impl<F: std::future::Future<Output = ()> + Send> ReadModelTask for Serve<F> {
    type Output = Result<(), RunError>;

    async fn run<P: Projection>(self, projection: Arc<P>) -> Result<(), RunError> {
        read_model(
            projection,
            self.env,
            self.topics,
            self.metrics,
            self.health,
            self.shutdown,
        )
        .await
    }
}

/// One read-model processor: runs the loop on the tables and consumer group of the generation
/// that serves, and when a rebuild activates another one (`dietstream replay`), finishes its
/// batch, commits and goes on with the new generation's tables and group, whose offsets the
/// rebuild committed.
async fn read_model<P: Projection>(
    projection: Arc<P>,
    env: ReadModelEnv,
    topics: ProcessorTopics,
    metrics: ProcessorMetrics,
    health: Health,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), RunError> {
    let ReadModelEnv {
        kafka,
        session,
        keyspace,
        codec,
        config,
    } = env;
    let name = projection.name();
    let mut shutdown = std::pin::pin!(shutdown);
    let mut serving = generation::load(&session, &keyspace, name).await?.active;
    loop {
        let store = Store::prepare_generation(
            Arc::clone(&session),
            projection.as_ref(),
            &keyspace,
            serving,
        )
        .await?;
        health.set_ready();
        let parts = Parts {
            projection: Arc::clone(&projection),
            topics: ProcessorTopics {
                group_id: generation::group_id(&topics.group_id, serving),
                ..topics.clone()
            },
            store,
            codec: Arc::clone(&codec),
            config: config.clone(),
            metrics: metrics.clone(),
        };
        let mut switch_to = None;
        let stop = async {
            tokio::select! {
                () = &mut shutdown => {}
                next = generation::changed(&session, &keyspace, name, serving, config.generation_check_interval) => {
                    switch_to = Some(next);
                }
            }
        };
        match consume::run(parts, &kafka, stop).await {
            Ok(summary) => {
                tracing::info!(
                    processor = name,
                    generation = serving,
                    ?summary,
                    "Processor stopped."
                );
            }
            Err(error) => {
                health.set_failed(error.to_string());
                return Err(error.into());
            }
        }
        let Some(next) = switch_to else {
            return Ok(());
        };
        tracing::info!(
            processor = name,
            from = serving,
            to = next,
            "Switching to the rebuilt generation."
        );
        serving = next;
    }
}

/// The read-model tables keyed by `user_id` first, which `dietstream query rows` shows.
pub const PER_USER_TABLES: [&str; 10] = [
    "nutrition_user_daily",
    "nutrition_user_weekly",
    "nutrition_user_monthly",
    "engagement_users",
    "engagement_user_sessions",
    "engagement_user_social",
    "quests_by_user",
    "quests_user_totals",
    "insights_by_user",
    "insight_acceptance_by_user",
];

/// A user's rows of one of [`PER_USER_TABLES`], each as a JSON object (CQL `SELECT JSON`).
pub async fn user_rows(
    session: &Session,
    keyspace: &str,
    table: &str,
    user: &str,
    limit: i32,
) -> Result<Vec<String>, RunError> {
    if !PER_USER_TABLES.contains(&table) {
        return Err(RunError::UnknownTable(table.to_owned()));
    }
    let failed = |e: &dyn std::fmt::Display| RunError::Query(format!("{table}: {e}"));
    // The generation that serves: after a rebuild, `<table>_g<N>`.
    let serving = crate::read_model::active_table(session, keyspace, table)
        .await?
        .ok_or_else(|| RunError::UnknownTable(table.to_owned()))?;
    let rows = session
        .query_unpaged(
            format!("SELECT JSON * FROM {keyspace}.{serving} WHERE user_id = ? LIMIT ?"),
            (user, limit),
        )
        .await
        .map_err(|e| failed(&e))?
        .into_rows_result()
        .map_err(|e| failed(&e))?;
    let rows = rows
        .rows::<(String,)>()
        .map_err(|e| failed(&e))?
        .map(|row| row.map(|(json,)| json).map_err(|e| failed(&e)))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}
