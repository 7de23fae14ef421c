//! The one layered configuration of dietstream: built-in defaults for the local stack, then a
//! TOML file, then `DIETSTREAM_*` environment variables (`__` separates nested keys, so
//! `DIETSTREAM_KAFKA__BOOTSTRAP_SERVERS` sets `kafka.bootstrap_servers`).
//!
//! Unknown keys and invalid values stop the start with the setting's name; every invalid value
//! is reported at once, not one per attempt.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use dietstream_topology::Profile;
use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

/// Prefix of the environment variables that override the file.
pub const ENV_PREFIX: &str = "DIETSTREAM_";

/// The environment variable naming the config file; it is not itself a setting.
pub const CONFIG_FILE_ENV: &str = "DIETSTREAM_CONFIG";

/// Shown instead of a secret when the configuration is printed.
const REDACTED: &str = "<redacted>";

/// Everything dietstream can be told, one section per external system.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The Kafka cluster that holds the event store.
    pub kafka: KafkaConfig,
    /// The schema registry (Confluent REST API) that holds the Avro schemas.
    pub schema_registry: SchemaRegistryConfig,
    /// The CQL cluster (ScyllaDB, or Cassandra locally) that holds the read models.
    pub cql: CqlConfig,
    /// Which variant of the topics and consumer groups (`topology/topology.toml`) to use.
    pub topology: TopologyConfig,
    /// The command processor: transactions, snapshots, retries.
    pub commands: dietstream_commands::CommandsConfig,
    /// The indexer of the event store's CQL tables: batches, write concurrency, retries.
    pub indexer: dietstream_indexer::IndexerConfig,
    /// The read-model processors' consume loop: batches, write concurrency, retries.
    pub processors: dietstream_runtime::LoopConfig,
    /// Where processors serve `/metrics` and `/health/*`.
    pub metrics: dietstream_runtime::MetricsConfig,
}

/// Connection to Kafka.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Comma-separated `host:port` list of brokers to bootstrap from.
    pub bootstrap_servers: String,
    /// Client id reported to the brokers; shows up in broker logs and quotas.
    pub client_id: String,
    /// Upper bound for one request to the cluster (metadata, admin calls, a produce
    /// acknowledgement).
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Raw librdkafka properties, applied last: security (`security.protocol`,
    /// `sasl.mechanism`, `sasl.username`, `ssl.ca.location`, ...) and tuning pass through here.
    pub librdkafka_options: BTreeMap<String, String>,
}

/// Connection to the schema registry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchemaRegistryConfig {
    /// Base URL of the Confluent-compatible API (for Apicurio: `.../apis/ccompat/v7`).
    pub url: String,
    /// User for HTTP basic authentication; needs `password`.
    pub username: Option<String>,
    /// Password for HTTP basic authentication.
    pub password: Option<String>,
    /// Bearer token, as an alternative to basic authentication.
    pub token: Option<String>,
    /// Upper bound for one registry request.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

/// Connection to the CQL cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CqlConfig {
    /// `host:port` of one or more nodes to discover the cluster from: a list in the file, a
    /// comma-separated string in the environment.
    #[serde(deserialize_with = "list_or_comma_separated")]
    pub contact_points: Vec<String>,
    /// Keyspace that holds dietstream's tables.
    pub keyspace: String,
    /// Replication factor used when dietstream creates its keyspace.
    pub replication_factor: u8,
    /// Datacenter to prefer and to replicate into (NetworkTopologyStrategy); without it the
    /// keyspace uses SimpleStrategy, which only suits one datacenter.
    pub local_datacenter: Option<String>,
    /// User for password authentication; needs `password`.
    pub username: Option<String>,
    /// Password for password authentication.
    pub password: Option<String>,
    /// TLS towards the nodes; plain TCP when absent.
    pub tls: Option<CqlTlsConfig>,
    /// Upper bound for opening a connection to one node.
    #[serde(with = "humantime_serde")]
    pub connection_timeout: Duration,
    /// Upper bound for one request, retries included.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
}

/// TLS towards the CQL nodes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CqlTlsConfig {
    /// PEM file with the certificate authority that signed the nodes' certificates.
    pub ca_file: PathBuf,
    /// PEM client certificate, when the nodes require client authentication.
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file`.
    pub key_file: Option<PathBuf>,
    /// Check that the node's certificate names the host dialled.
    #[serde(default = "default_verify_hostname")]
    pub verify_hostname: bool,
}

/// Which variant of the topology (`topology/topology.toml`) the commands use.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TopologyConfig {
    /// Sizing profile: `local` (one broker: replication factor 1, few partitions) or
    /// `production` (three or more brokers: replication factor 3, min in-sync replicas 2,
    /// more partitions).
    pub profile: Profile,
    /// Put, with a `.`, in front of every topic name and consumer group id; empty for none.
    /// Lets tests and environments share one cluster without seeing each other's data.
    pub prefix: String,
}

/// Kafka listener of the local stack (`infra/local`, `STACK_KAFKA_PORT`).
const fn default_kafka_port() -> u16 {
    9092
}

/// Native-protocol port of the local stack's CQL node (`STACK_CQL_PORT`).
const fn default_cql_port() -> u16 {
    9042
}

/// HTTP port of the local stack's schema registry (`STACK_REGISTRY_PORT`).
const fn default_registry_port() -> u16 {
    8081
}

/// librdkafka's own `socket.timeout.ms` default.
const fn default_kafka_request_timeout() -> Duration {
    Duration::from_secs(60)
}

/// The Java Confluent client's default registry request timeout is 30 s; a local registry
/// answers in milliseconds, so 10 s fails faster on a dead one.
const fn default_registry_timeout() -> Duration {
    Duration::from_secs(10)
}

/// The scylla driver's default connection timeout.
const fn default_cql_connection_timeout() -> Duration {
    Duration::from_secs(5)
}

/// Above Cassandra's and ScyllaDB's server-side write timeout (2 s) with room for retries.
const fn default_cql_request_timeout() -> Duration {
    Duration::from_secs(12)
}

/// One copy per row: the local stack has a single node.
const fn default_replication_factor() -> u8 {
    1
}

/// The built-in defaults point at the local stack, which has a single broker.
const fn default_topology_profile() -> Profile {
    Profile::Local
}

/// Hostname verification is what TLS users expect unless they turn it off.
const fn default_verify_hostname() -> bool {
    true
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            bootstrap_servers: format!("127.0.0.1:{}", default_kafka_port()),
            client_id: "dietstream".to_owned(),
            request_timeout: default_kafka_request_timeout(),
            librdkafka_options: BTreeMap::new(),
        }
    }
}

impl Default for SchemaRegistryConfig {
    fn default() -> Self {
        Self {
            url: format!(
                "http://127.0.0.1:{}/apis/ccompat/v7",
                default_registry_port()
            ),
            username: None,
            password: None,
            token: None,
            timeout: default_registry_timeout(),
        }
    }
}

impl Default for CqlConfig {
    fn default() -> Self {
        Self {
            contact_points: vec![format!("127.0.0.1:{}", default_cql_port())],
            keyspace: "dietstream".to_owned(),
            replication_factor: default_replication_factor(),
            local_datacenter: None,
            username: None,
            password: None,
            tls: None,
            connection_timeout: default_cql_connection_timeout(),
            request_timeout: default_cql_request_timeout(),
        }
    }
}

impl Default for TopologyConfig {
    fn default() -> Self {
        Self {
            profile: default_topology_profile(),
            prefix: String::new(),
        }
    }
}

/// Why the configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file named with `--config` / `DIETSTREAM_CONFIG` does not exist.
    #[error("config file {} does not exist", .0.display())]
    FileMissing(PathBuf),
    /// A layer could not be read or did not fit the settings: an unknown key, a wrong type,
    /// a file that is not TOML. The message names the setting and the layer it came from.
    #[error("{}", format_figment_error(.0))]
    Load(Box<figment::Error>),
    /// Values that parse but cannot work, all of them.
    #[error("{}", format_invalid(.0))]
    Invalid(Vec<InvalidSetting>),
}

/// One setting whose value cannot work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidSetting {
    /// Dotted name of the setting, e.g. `cql.contact_points`.
    pub setting: String,
    /// What is wrong and what would be right.
    pub reason: String,
}

impl fmt::Display for InvalidSetting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.setting, self.reason)
    }
}

fn format_figment_error(error: &figment::Error) -> String {
    let lines: Vec<String> = error.clone().into_iter().map(describe_load_error).collect();
    lines.join("\n")
}

/// One load error as `setting: problem (from layer)`, naming the exact environment variable
/// when the value came from the environment.
fn describe_load_error(error: figment::Error) -> String {
    let path = &error.path;
    let setting = if path.is_empty() {
        "<top level>".to_owned()
    } else {
        path.join(".").to_lowercase()
    };
    let source = match &error.metadata {
        Some(meta) if meta.name.contains("environment") => format!(
            "environment variable {ENV_PREFIX}{}",
            setting.to_uppercase().replace('.', "__")
        ),
        Some(meta) => match &meta.source {
            Some(source) => format!("{} {source}", meta.name),
            None => meta.name.to_string(),
        },
        None => "defaults".to_owned(),
    };
    format!(
        "invalid configuration: {setting}: {} (from {source})",
        error.kind
    )
}

fn format_invalid(invalid: &[InvalidSetting]) -> String {
    let lines: Vec<String> = invalid
        .iter()
        .map(|i| format!("invalid configuration: {i}"))
        .collect();
    lines.join("\n")
}

impl Config {
    /// Builds the configuration from defaults, the optional file and the process environment.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::from_figment(Self::figment(file)?)
    }

    /// The layers, in order of precedence (last wins). Public so tests can add a layer.
    pub fn figment(file: Option<&Path>) -> Result<Figment, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.is_file() {
                return Err(ConfigError::FileMissing(path.to_path_buf()));
            }
            figment = figment.merge(Toml::file(path));
        }
        let env = Env::prefixed(ENV_PREFIX)
            .ignore(&[CONFIG_FILE_ENV.trim_start_matches(ENV_PREFIX)])
            .split("__");
        Ok(figment.merge(env))
    }

    /// Extracts and validates the configuration from prepared layers.
    pub fn from_figment(figment: Figment) -> Result<Self, ConfigError> {
        let config: Config = figment
            .extract()
            .map_err(|e| ConfigError::Load(Box::new(e)))?;
        let invalid = config.validate();
        if invalid.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid(invalid))
        }
    }

    /// Cross-field and value checks that serde cannot express. Returns every problem found.
    pub fn validate(&self) -> Vec<InvalidSetting> {
        let mut invalid = Vec::new();
        let mut bad = |setting: &str, reason: String| {
            invalid.push(InvalidSetting {
                setting: setting.to_owned(),
                reason,
            })
        };

        let brokers: Vec<&str> = self
            .kafka
            .bootstrap_servers
            .split(',')
            .map(str::trim)
            .collect();
        if brokers.iter().any(|b| b.is_empty()) {
            bad(
                "kafka.bootstrap_servers",
                format!(
                    "{:?} has an empty entry; expected host:port[,host:port...]",
                    self.kafka.bootstrap_servers
                ),
            );
        }
        for broker in brokers.iter().filter(|b| !b.is_empty()) {
            if let Err(reason) = check_host_port(broker) {
                bad("kafka.bootstrap_servers", reason);
            }
        }
        if self.kafka.client_id.trim().is_empty() {
            bad("kafka.client_id", "must not be empty".to_owned());
        }
        if self.kafka.request_timeout.is_zero() {
            bad("kafka.request_timeout", "must be above zero".to_owned());
        }
        for key in self.kafka.librdkafka_options.keys() {
            if let Some(setting) = owned_librdkafka_key(key) {
                bad(
                    &format!("kafka.librdkafka_options.{key}"),
                    format!("is set through {setting}; remove it from librdkafka_options"),
                );
            }
        }

        match url::Url::parse(&self.schema_registry.url) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.has_host() => {}
            Ok(url) => bad(
                "schema_registry.url",
                format!(
                    "{url} is not an http(s) URL with a host; expected for example http://127.0.0.1:8081/apis/ccompat/v7"
                ),
            ),
            Err(e) => bad(
                "schema_registry.url",
                format!("{:?} is not a URL: {e}", self.schema_registry.url),
            ),
        }
        check_credentials(
            "schema_registry",
            self.schema_registry.username.as_deref(),
            self.schema_registry.password.as_deref(),
            &mut bad,
        );
        if self.schema_registry.token.is_some() && self.schema_registry.username.is_some() {
            bad(
                "schema_registry.token",
                "set either token or username/password, not both".to_owned(),
            );
        }
        if self.schema_registry.timeout.is_zero() {
            bad("schema_registry.timeout", "must be above zero".to_owned());
        }

        if self.cql.contact_points.is_empty() {
            bad(
                "cql.contact_points",
                "needs at least one host:port".to_owned(),
            );
        }
        for point in &self.cql.contact_points {
            if let Err(reason) = check_host_port(point) {
                bad("cql.contact_points", reason);
            }
        }
        if !is_cql_identifier(&self.cql.keyspace) {
            bad(
                "cql.keyspace",
                format!(
                    "{:?} is not a CQL keyspace name: 1 to 48 letters, digits or underscores, starting with a letter",
                    self.cql.keyspace
                ),
            );
        }
        if self.cql.replication_factor == 0 {
            bad("cql.replication_factor", "must be at least 1".to_owned());
        }
        check_credentials(
            "cql",
            self.cql.username.as_deref(),
            self.cql.password.as_deref(),
            &mut bad,
        );
        if let Some(tls) = &self.cql.tls {
            for (setting, path) in [
                ("cql.tls.ca_file", Some(&tls.ca_file)),
                ("cql.tls.cert_file", tls.cert_file.as_ref()),
                ("cql.tls.key_file", tls.key_file.as_ref()),
            ] {
                if let Some(path) = path {
                    if !path.is_file() {
                        bad(
                            setting,
                            format!("{} is not a readable file", path.display()),
                        );
                    }
                }
            }
            if tls.cert_file.is_some() != tls.key_file.is_some() {
                bad(
                    "cql.tls.key_file",
                    "cert_file and key_file go together: set both or neither".to_owned(),
                );
            }
        }
        if self.cql.connection_timeout.is_zero() {
            bad("cql.connection_timeout", "must be above zero".to_owned());
        }
        if self.cql.request_timeout.is_zero() {
            bad("cql.request_timeout", "must be above zero".to_owned());
        }

        if let Err(reason) = dietstream_topology::check_prefix(&self.topology.prefix) {
            bad(
                "topology.prefix",
                format!("{:?}: {reason}", self.topology.prefix),
            );
        }
        if self.commands.transaction_timeout + Duration::from_millis(100)
            < self.kafka.request_timeout
        {
            bad(
                "commands.transaction_timeout",
                format!(
                    "{:?} must be at least kafka.request_timeout ({:?}) minus 100 ms (librdkafka's rule for transactional producers)",
                    self.commands.transaction_timeout, self.kafka.request_timeout
                ),
            );
        }
        for (setting, reason) in self.commands.problems() {
            bad(&format!("commands.{setting}"), reason);
        }
        let max_poll_interval = self
            .kafka
            .client_config()
            .get("max.poll.interval.ms")
            .and_then(|ms| ms.parse().ok())
            .map_or(Duration::from_secs(300), Duration::from_millis);
        for (setting, reason) in self.processors.problems() {
            bad(&format!("processors.{setting}"), reason);
        }
        for problem in self.indexer.problems(max_poll_interval) {
            // Each problem reads "indexer.<setting>: <reason>".
            match problem.split_once(": ") {
                Some((setting, reason)) => bad(setting, reason.to_owned()),
                None => bad("indexer", problem),
            }
        }
        invalid
    }

    /// A copy safe to print: passwords, tokens and secret librdkafka options replaced.
    pub fn redacted(&self) -> Self {
        let mut copy = self.clone();
        let hide = |value: &mut Option<String>| {
            if value.is_some() {
                *value = Some(REDACTED.to_owned());
            }
        };
        hide(&mut copy.schema_registry.password);
        hide(&mut copy.schema_registry.token);
        hide(&mut copy.cql.password);
        for (key, value) in copy.kafka.librdkafka_options.iter_mut() {
            if is_secret_librdkafka_key(key) {
                *value = REDACTED.to_owned();
            }
        }
        copy
    }

    /// The configuration as TOML, the file format, secrets redacted.
    pub fn to_redacted_toml(&self) -> Result<String, toml::ser::Error> {
        toml::to_string_pretty(&self.redacted())
    }
}

/// A list, or one string with comma-separated items (the form environment variables take).
fn list_or_comma_separated<'de, D>(deserializer: D) -> Result<Vec<String>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum ListOrString {
        List(Vec<String>),
        String(String),
    }
    Ok(match ListOrString::deserialize(deserializer)? {
        ListOrString::List(items) => items,
        ListOrString::String(joined) => joined
            .split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .map(str::to_owned)
            .collect(),
    })
}

/// librdkafka keys dietstream sets from its own settings: two places for one value would
/// make the effective one depend on ordering.
fn owned_librdkafka_key(key: &str) -> Option<&'static str> {
    match key {
        "bootstrap.servers" | "metadata.broker.list" => Some("kafka.bootstrap_servers"),
        "client.id" => Some("kafka.client_id"),
        _ => None,
    }
}

fn is_secret_librdkafka_key(key: &str) -> bool {
    key.contains("password") || key.contains("secret") || key.ends_with(".key.pem")
}

fn check_credentials(
    section: &str,
    username: Option<&str>,
    password: Option<&str>,
    bad: &mut impl FnMut(&str, String),
) {
    match (username, password) {
        (Some(_), None) => bad(
            &format!("{section}.password"),
            format!("{section}.username is set, so the password is needed too"),
        ),
        (None, Some(_)) => bad(
            &format!("{section}.username"),
            format!("{section}.password is set, so the username is needed too"),
        ),
        _ => {}
    }
}

fn check_host_port(value: &str) -> Result<(), String> {
    let Some((host, port)) = value.rsplit_once(':') else {
        return Err(format!("{value:?} has no port; expected host:port"));
    };
    if host.trim_matches(|c| c == '[' || c == ']').is_empty() {
        return Err(format!("{value:?} has no host; expected host:port"));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err(format!(
            "{value:?} has port {port:?}; expected a number from 1 to 65535"
        )),
    }
}

fn is_cql_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 48
}

#[cfg(test)]
mod tests;
