//! Clients built from the configuration: one place that turns settings into a librdkafka
//! config, schema-registry settings and a CQL session, so every command connects alike.

use std::sync::Arc;
use std::time::Duration;

use dietstream_schemas::registry::{ConfluentRegistry, RegistryAuth, RegistryError};
use openssl::ssl::{SslContextBuilder, SslFiletype, SslMethod, SslVerifyMode};
use rdkafka::ClientConfig;
use schema_registry_converter::async_impl::schema_registry::SrSettings;
use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::policies::load_balancing::DefaultPolicy;
use scylla::policies::timestamp_generator::MonotonicTimestampGenerator;

use crate::config::{CqlConfig, CqlTlsConfig, KafkaConfig, SchemaRegistryConfig};

/// Why a client could not be built or could not reach its server.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The schema-registry HTTP client could not be built (TLS backend, bad header value).
    /// Permanent: the settings have to change.
    #[error("cannot build the schema registry client for {url}: {source}")]
    Registry {
        /// The configured registry URL.
        url: String,
        /// What the client library said.
        source: schema_registry_converter::error::SRCError,
    },
    /// A TLS file could not be loaded. Permanent: the file has to be fixed.
    #[error("cannot load {setting} for CQL TLS: {source}")]
    CqlTls {
        /// The setting naming the file, e.g. `cql.tls.ca_file`.
        setting: &'static str,
        /// What OpenSSL said.
        source: openssl::error::ErrorStack,
    },
    /// No CQL node answered, or the handshake failed. Retryable: the cluster may be starting.
    #[error("cannot open a CQL session to {contact_points}: {source}")]
    Cql {
        /// The configured contact points.
        contact_points: String,
        /// What the driver said.
        source: Box<scylla::errors::NewSessionError>,
    },
}

impl ConnectError {
    /// True when trying again later may succeed without changing the settings.
    pub fn is_retryable(&self) -> bool {
        matches!(self, ConnectError::Cql { .. })
    }
}

impl KafkaConfig {
    /// The librdkafka properties common to every client: brokers, client id, timeouts, then the
    /// pass-through options. Callers add what their role needs (group id, transactional id).
    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.bootstrap_servers)
            .set("client.id", &self.client_id)
            .set("socket.timeout.ms", millis(self.request_timeout));
        for (key, value) in &self.librdkafka_options {
            config.set(key, value);
        }
        config
    }
}

impl SchemaRegistryConfig {
    /// Settings for `schema_registry_converter`'s encoders and decoders.
    pub fn sr_settings(&self) -> Result<SrSettings, ConnectError> {
        let mut builder = SrSettings::new_builder(self.url.clone());
        builder.set_timeout(self.timeout);
        if let Some(username) = &self.username {
            builder.set_basic_authorization(username, self.password.as_deref());
        }
        if let Some(token) = &self.token {
            builder.set_token_authorization(token);
        }
        builder.build().map_err(|source| ConnectError::Registry {
            url: self.url.clone(),
            source,
        })
    }
}

impl SchemaRegistryConfig {
    /// The registry client of the codec and of `dietstream schemas`.
    pub fn registry(&self) -> Result<ConfluentRegistry, RegistryError> {
        let auth = match (&self.username, &self.password, &self.token) {
            (Some(username), Some(password), _) => Some(RegistryAuth::Basic {
                username: username.clone(),
                password: password.clone(),
            }),
            (_, _, Some(token)) => Some(RegistryAuth::Bearer(token.clone())),
            _ => None,
        };
        ConfluentRegistry::new(&self.url, auth, self.timeout)
    }
}

impl CqlConfig {
    /// Opens a session to the cluster (without selecting the keyspace: it may not exist yet),
    /// built by [`CqlConfig::session_builder`].
    pub async fn session(&self) -> Result<Session, ConnectError> {
        self.session_builder()?
            .build()
            .await
            .map_err(|source| ConnectError::Cql {
                contact_points: self.contact_points.join(","),
                source: Box::new(source),
            })
    }

    /// The settings every session opens with: contact points, timeouts, token-aware load
    /// balancing, credentials and TLS, and **client-side write timestamps**.
    ///
    /// Each request carries a timestamp taken from this process's clock when it is sent,
    /// strictly increasing per session (the scylla driver's `MonotonicTimestampGenerator`, the
    /// Java driver's default). Without one, the node stamps a write when it applies it, so a
    /// write that reaches the node late would override every newer write of the same cells:
    /// a request that timed out on the client but was still queued on the node (the loop has
    /// since retried it and gone on), or the last write of an instance whose partitions were
    /// revoked. With the timestamp of its sending it loses to them, as it should. This relies
    /// on the clocks of the instances that hand a partition over to each other being closer
    /// than the handover takes (NTP keeps them within milliseconds; a rebalance takes longer).
    pub fn session_builder(&self) -> Result<SessionBuilder, ConnectError> {
        let mut policy = DefaultPolicy::builder().token_aware(true);
        if let Some(dc) = &self.local_datacenter {
            policy = policy.prefer_datacenter(dc.clone());
        }
        let profile = ExecutionProfile::builder()
            .request_timeout(Some(self.request_timeout))
            .load_balancing_policy(policy.build())
            .build();
        let mut builder = SessionBuilder::new()
            .known_nodes(&self.contact_points)
            .connection_timeout(self.connection_timeout)
            .default_execution_profile_handle(profile.into_handle());
        if let (Some(user), Some(password)) = (&self.username, &self.password) {
            builder = builder.user(user, password);
        }
        if let Some(tls) = &self.tls {
            builder = builder.tls_context(Some(ssl_context(tls)?));
        }
        Ok(builder.timestamp_generator(Arc::new(MonotonicTimestampGenerator::new())))
    }

    /// Creates the configured keyspace with [`CqlConfig::replication`] unless it exists.
    pub async fn create_keyspace(
        &self,
        session: &Session,
    ) -> Result<(), scylla::errors::ExecutionError> {
        session
            .query_unpaged(
                format!(
                    "CREATE KEYSPACE IF NOT EXISTS {} WITH replication = {}",
                    self.keyspace,
                    self.replication()
                ),
                (),
            )
            .await
            .map(|_| ())
    }

    /// The replication clause for `CREATE KEYSPACE`: NetworkTopologyStrategy in the local
    /// datacenter when one is named, SimpleStrategy otherwise.
    pub fn replication(&self) -> String {
        match &self.local_datacenter {
            Some(dc) => format!(
                "{{'class': 'NetworkTopologyStrategy', '{dc}': {}}}",
                self.replication_factor
            ),
            None => format!(
                "{{'class': 'SimpleStrategy', 'replication_factor': {}}}",
                self.replication_factor
            ),
        }
    }
}

fn ssl_context(tls: &CqlTlsConfig) -> Result<openssl::ssl::SslContext, ConnectError> {
    let err = |setting| move |source| ConnectError::CqlTls { setting, source };
    let mut builder = SslContextBuilder::new(SslMethod::tls()).map_err(err("cql.tls"))?;
    builder
        .set_ca_file(&tls.ca_file)
        .map_err(err("cql.tls.ca_file"))?;
    if let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) {
        builder
            .set_certificate_chain_file(cert)
            .map_err(err("cql.tls.cert_file"))?;
        builder
            .set_private_key_file(key, SslFiletype::PEM)
            .map_err(err("cql.tls.key_file"))?;
    }
    builder.set_verify(if tls.verify_hostname {
        SslVerifyMode::PEER
    } else {
        SslVerifyMode::NONE
    });
    Ok(builder.build())
}

/// A duration as the whole milliseconds librdkafka properties expect.
pub fn millis(duration: Duration) -> String {
    duration.as_millis().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pass_through_options_reach_librdkafka() {
        let mut kafka = KafkaConfig::default();
        kafka
            .librdkafka_options
            .insert("security.protocol".into(), "SASL_SSL".into());
        let config = kafka.client_config();
        assert_eq!(config.get("security.protocol"), Some("SASL_SSL"));
        assert_eq!(config.get("bootstrap.servers"), Some("127.0.0.1:9092"));
        assert_eq!(config.get("socket.timeout.ms"), Some("60000"));
    }

    #[test]
    fn replication_follows_the_datacenter_setting() {
        let mut cql = CqlConfig::default();
        assert_eq!(
            cql.replication(),
            "{'class': 'SimpleStrategy', 'replication_factor': 1}"
        );
        cql.local_datacenter = Some("eu1".into());
        cql.replication_factor = 3;
        assert_eq!(
            cql.replication(),
            "{'class': 'NetworkTopologyStrategy', 'eu1': 3}"
        );
    }
}
