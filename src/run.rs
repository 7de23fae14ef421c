//! `dietstream run <processor>`: builds a processor from the config and runs it until SIGTERM
//! or Ctrl-C, after which it finishes its batch or transaction, commits and returns.

use std::sync::Arc;

use dietstream_schemas::catalog::{Catalog, CatalogError};
use dietstream_schemas::codec::Codec;
use dietstream_schemas::registry::RegistryError;
use dietstream_topology::{Topology, TopologyError};
use scylla::client::session::Session;

use crate::config::Config;
use crate::connect::ConnectError;

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
