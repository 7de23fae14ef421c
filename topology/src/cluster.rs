//! The cluster side of the reconciler: reads what a Kafka cluster has with the admin client
//! (metadata for partitions and replicas, `describe_configs` for configs), and applies a safe
//! plan. `diff` and `apply` are idempotent: they compare first and change only what differs.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::admin::{
    AdminClient, AdminOptions, AlterConfig, ConfigSource, NewPartitions, NewTopic,
    OwnedResourceSpecifier, ResourceSpecifier, TopicReplication,
};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use tracing::debug;

use crate::model::{Desired, DesiredTopic};
use crate::plan::{plan, Actual, ActualTopic, ActualValue, Change, Plan, ValueSource};

/// Why reading or changing the cluster failed.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The metadata request (topics, partitions, replicas, brokers) failed. Retryable when
    /// the broker was unreachable or timed out.
    #[error("cannot read the cluster's metadata: {0}")]
    Metadata(#[source] KafkaError),
    /// An admin request could not be sent or answered as a whole. Retryable when the broker
    /// was unreachable or timed out.
    #[error("the {operation} request failed: {source}")]
    Request {
        /// `describe configs`, `create topics`, `alter configs` or `create partitions`.
        operation: &'static str,
        /// What the client said.
        source: KafkaError,
    },
    /// Kafka refused to create a topic. Retryable only for transient codes (timeouts, no
    /// controller); an invalid config or a policy violation is permanent.
    #[error("cannot create topic {topic}: {code}")]
    CreateTopic {
        /// Full topic name.
        topic: String,
        /// Kafka's error.
        code: RDKafkaErrorCode,
    },
    /// Kafka refused to change a topic's configs. Retryable only for transient codes.
    #[error("cannot change the configs of topic {topic}: {code}")]
    AlterConfigs {
        /// Full topic name.
        topic: String,
        /// Kafka's error.
        code: RDKafkaErrorCode,
    },
    /// Kafka refused to add partitions. Retryable only for transient codes.
    #[error("cannot add partitions to topic {topic}: {code}")]
    CreatePartitions {
        /// Full topic name.
        topic: String,
        /// Kafka's error.
        code: RDKafkaErrorCode,
    },
    /// A topic-level override whose value Kafka hides (a sensitive config): changing the
    /// topic's configs replaces all its overrides and would lose it. Permanent: change that
    /// topic by hand.
    #[error(
        "topic {topic} has a hidden override of {key}; changing its configs would drop it, so \
         change that topic by hand with kafka-configs --alter"
    )]
    HiddenOverride {
        /// Full topic name.
        topic: String,
        /// The hidden key.
        key: String,
    },
    /// The changes were made but the cluster did not show all of them before the deadline.
    /// Retryable: run `apply` again, it only does what is still missing.
    #[error(
        "applied, but after {timeout:?} the cluster still differs from the topology:\n{remaining}"
    )]
    NotConverged {
        /// How long the changes were awaited.
        timeout: Duration,
        /// The plan that was still left.
        remaining: Plan,
    },
    /// A blocking client call could not run to its end (a panic in the client). Permanent:
    /// a bug.
    #[error("a Kafka client call did not finish: {0}")]
    Task(#[from] tokio::task::JoinError),
}

impl ClusterError {
    /// True when trying again later may succeed without changing the topology or the cluster.
    pub fn is_retryable(&self) -> bool {
        match self {
            ClusterError::Metadata(error) | ClusterError::Request { source: error, .. } => {
                is_retryable_error(error)
            }
            ClusterError::CreateTopic { code, .. }
            | ClusterError::AlterConfigs { code, .. }
            | ClusterError::CreatePartitions { code, .. } => is_retryable_code(*code),
            ClusterError::NotConverged { .. } => true,
            ClusterError::HiddenOverride { .. } | ClusterError::Task(_) => false,
        }
    }
}

/// True when a Kafka client error is transient: a broker or controller unreachable, busy or
/// moving, or a fresh partition whose leader is not yet known. Trying again later may succeed.
pub fn is_retryable_error(error: &KafkaError) -> bool {
    match error {
        KafkaError::AdminOp(code) | KafkaError::MetadataFetch(code) => is_retryable_code(*code),
        other => other.rdkafka_error_code().is_some_and(is_retryable_code),
    }
}

/// Transient conditions: a broker or controller unreachable, busy or moving.
fn is_retryable_code(code: RDKafkaErrorCode) -> bool {
    use RDKafkaErrorCode::*;
    matches!(
        code,
        OperationTimedOut
            | RequestTimedOut
            | TimedOutQueue
            | BrokerTransportFailure
            | AllBrokersDown
            | Resolve
            | NetworkException
            | BrokerNotAvailable
            | LeaderNotAvailable
            | NotLeaderForPartition
            | NotController
            | ReplicaNotAvailable
            | KafkaStorageError
            | ThrottlingQuotaExceeded
            | ReassignmentInProgress
            | RebootstrapRequired
    )
}

/// What `apply` did.
#[derive(Debug, Clone, PartialEq)]
pub enum ApplyOutcome {
    /// The cluster already matched: nothing was changed.
    InSync,
    /// Every change of the plan was made, and the cluster now shows the topology.
    Applied(Plan),
    /// The plan has unsafe changes: nothing was changed.
    Refused(Plan),
}

/// A Kafka cluster seen through the admin client.
pub struct Cluster {
    admin: Arc<AdminClient<DefaultClientContext>>,
    timeout: Duration,
}

impl Cluster {
    /// Wraps an admin client; `timeout` bounds each request and the wait until applied
    /// changes are visible.
    pub fn new(admin: AdminClient<DefaultClientContext>, timeout: Duration) -> Self {
        Self {
            admin: Arc::new(admin),
            timeout,
        }
    }

    /// What the cluster has for the topics of `desired`.
    pub async fn actual(&self, desired: &Desired) -> Result<Actual, ClusterError> {
        let wanted: BTreeSet<&str> = desired.topics.iter().map(|t| t.name.as_str()).collect();
        let admin = Arc::clone(&self.admin);
        let timeout = self.timeout;
        // Metadata of all topics: asking for a missing topic by name is an error, and in
        // some broker setups creates it.
        let metadata =
            tokio::task::spawn_blocking(move || admin.inner().fetch_metadata(None, timeout))
                .await?
                .map_err(ClusterError::Metadata)?;

        let mut topics = BTreeMap::new();
        for topic in metadata.topics() {
            if !wanted.contains(topic.name()) {
                continue;
            }
            if let Some(error) = topic.error() {
                // A topic being created or deleted: not there yet, or not any more.
                debug!(topic = topic.name(), error = ?RDKafkaErrorCode::from(error), "Topic not usable in metadata.");
                continue;
            }
            let replication_factor = topic
                .partitions()
                .iter()
                .map(|p| p.replicas().len())
                .min()
                .unwrap_or(0);
            topics.insert(
                topic.name().to_owned(),
                ActualTopic {
                    partitions: i32::try_from(topic.partitions().len()).unwrap_or(i32::MAX),
                    replication_factor: i32::try_from(replication_factor).unwrap_or(i32::MAX),
                    configs: BTreeMap::new(),
                },
            );
        }

        if !topics.is_empty() {
            let names: Vec<String> = topics.keys().cloned().collect();
            let resources: Vec<ResourceSpecifier<'_>> = names
                .iter()
                .map(|name| ResourceSpecifier::Topic(name))
                .collect();
            let described = self
                .admin
                .describe_configs(&resources, &self.options())
                .await
                .map_err(|source| ClusterError::Request {
                    operation: "describe configs",
                    source,
                })?;
            for resource in described {
                let resource = resource.map_err(|code| ClusterError::Request {
                    operation: "describe configs",
                    source: KafkaError::AdminOp(code),
                })?;
                let OwnedResourceSpecifier::Topic(name) = &resource.specifier else {
                    continue;
                };
                if let Some(topic) = topics.get_mut(name) {
                    topic.configs = resource
                        .entries
                        .iter()
                        .map(|entry| {
                            let value = ActualValue {
                                value: entry.value.clone(),
                                source: value_source(&entry.source),
                            };
                            (entry.name.clone(), value)
                        })
                        .collect();
                }
            }
            // A topic in the metadata whose configs the broker does not describe yet has just
            // been created or is being deleted: treat it as missing for now.
            topics.retain(|name, topic| {
                let described = !topic.configs.is_empty();
                if !described {
                    debug!(topic = %name, "Topic has no described configs yet.");
                }
                described
            });
        }

        Ok(Actual {
            brokers: metadata.brokers().len(),
            topics,
        })
    }

    /// The plan that would make the cluster match `desired`; changes nothing.
    pub async fn diff(&self, desired: &Desired) -> Result<Plan, ClusterError> {
        Ok(plan(desired, &self.actual(desired).await?))
    }

    /// Makes the cluster match `desired` when every difference is safe, then waits until the
    /// cluster shows it. With any unsafe difference nothing is changed.
    ///
    /// Kafka applies admin requests per topic, not atomically: when a request fails halfway,
    /// part of the plan may be applied. Running `apply` again finishes it.
    pub async fn apply(&self, desired: &Desired) -> Result<ApplyOutcome, ClusterError> {
        let actual = self.actual(desired).await?;
        let plan = plan(desired, &actual);
        if !plan.is_safe() {
            return Ok(ApplyOutcome::Refused(plan));
        }
        if plan.is_empty() {
            return Ok(ApplyOutcome::InSync);
        }
        self.create_topics(&plan).await?;
        self.alter_configs(desired, &actual, &plan).await?;
        self.create_partitions(&plan).await?;
        self.wait_until_in_sync(desired).await?;
        Ok(ApplyOutcome::Applied(plan))
    }

    fn options(&self) -> AdminOptions {
        AdminOptions::new()
            .request_timeout(Some(self.timeout))
            .operation_timeout(Some(self.timeout))
    }

    async fn create_topics(&self, plan: &Plan) -> Result<(), ClusterError> {
        let wanted: Vec<&DesiredTopic> = plan
            .changes
            .iter()
            .filter_map(|change| match change {
                Change::CreateTopic(topic) => Some(topic),
                _ => None,
            })
            .collect();
        if wanted.is_empty() {
            return Ok(());
        }
        let new_topics: Vec<NewTopic<'_>> = wanted
            .iter()
            .map(|topic| {
                topic.configs.iter().fold(
                    NewTopic::new(
                        &topic.name,
                        topic.partitions,
                        TopicReplication::Fixed(topic.replication_factor),
                    ),
                    |new_topic, (key, value)| new_topic.set(key, value),
                )
            })
            .collect();
        let results = self
            .admin
            .create_topics(&new_topics, &self.options())
            .await
            .map_err(|source| ClusterError::Request {
                operation: "create topics",
                source,
            })?;
        for result in results {
            match result {
                Ok(_) => {}
                // Created by someone else meanwhile: the wait below compares it like any other.
                Err((topic, RDKafkaErrorCode::TopicAlreadyExists)) => {
                    debug!(%topic, "Topic was created concurrently.");
                }
                Err((topic, code)) => return Err(ClusterError::CreateTopic { topic, code }),
            }
        }
        Ok(())
    }

    /// Sets the managed configs of every topic with an `AlterConfig` change.
    ///
    /// rdkafka 0.39 offers only the legacy AlterConfigs request, which replaces all of a
    /// topic's overrides with the set sent (librdkafka's IncrementalAlterConfigs is not
    /// wrapped, and calling it through FFI would need `unsafe`, which the workspace forbids).
    /// So the set sent is the topic's current overrides, as just described, with every
    /// managed key set to its desired value: unmanaged overrides survive, and the managed
    /// ones are pinned on the topic. A change made by someone else between the describe and
    /// the alter would be overwritten; `diff` afterwards shows it.
    async fn alter_configs(
        &self,
        desired: &Desired,
        actual: &Actual,
        plan: &Plan,
    ) -> Result<(), ClusterError> {
        let topics: BTreeSet<&str> = plan
            .changes
            .iter()
            .filter(|change| matches!(change, Change::AlterConfig { .. }))
            .map(Change::topic)
            .collect();
        let mut full_sets: Vec<(&str, BTreeMap<&str, &str>)> = Vec::new();
        for name in topics {
            let (Some(topic), Some(existing)) = (
                desired.topics.iter().find(|t| t.name == name),
                actual.topics.get(name),
            ) else {
                continue;
            };
            let mut set = BTreeMap::new();
            for (key, value) in &existing.configs {
                if value.source != ValueSource::Topic {
                    continue;
                }
                let Some(value) = value.value.as_deref() else {
                    return Err(ClusterError::HiddenOverride {
                        topic: name.to_owned(),
                        key: key.clone(),
                    });
                };
                set.insert(key.as_str(), value);
            }
            for (key, value) in &topic.configs {
                set.insert(key.as_str(), value.as_str());
            }
            full_sets.push((name, set));
        }
        if full_sets.is_empty() {
            return Ok(());
        }
        let requests: Vec<AlterConfig<'_>> = full_sets
            .iter()
            .map(|(name, set)| {
                set.iter().fold(
                    AlterConfig::new(ResourceSpecifier::Topic(name)),
                    |request, (key, value)| request.set(key, value),
                )
            })
            .collect();
        let results = self
            .admin
            .alter_configs(&requests, &self.options())
            .await
            .map_err(|source| ClusterError::Request {
                operation: "alter configs",
                source,
            })?;
        for result in results {
            if let Err((specifier, code)) = result {
                let topic = match specifier {
                    OwnedResourceSpecifier::Topic(name) => name,
                    other => format!("{other:?}"),
                };
                return Err(ClusterError::AlterConfigs { topic, code });
            }
        }
        Ok(())
    }

    async fn create_partitions(&self, plan: &Plan) -> Result<(), ClusterError> {
        let wanted: Vec<NewPartitions<'_>> = plan
            .changes
            .iter()
            .filter_map(|change| match change {
                Change::AddPartitions { topic, to, .. } => {
                    Some(NewPartitions::new(topic, usize::try_from(*to).unwrap_or(0)))
                }
                _ => None,
            })
            .collect();
        if wanted.is_empty() {
            return Ok(());
        }
        let results = self
            .admin
            .create_partitions(&wanted, &self.options())
            .await
            .map_err(|source| ClusterError::Request {
                operation: "create partitions",
                source,
            })?;
        for result in results {
            if let Err((topic, code)) = result {
                return Err(ClusterError::CreatePartitions { topic, code });
            }
        }
        Ok(())
    }

    /// Polls the cluster until the plan for `desired` is empty. Kafka acknowledges admin
    /// requests at the controller; brokers learn about them a little later.
    async fn wait_until_in_sync(&self, desired: &Desired) -> Result<(), ClusterError> {
        let deadline = Instant::now() + self.timeout;
        let mut pause = Duration::from_millis(20);
        loop {
            let remaining = self.diff(desired).await?;
            if remaining.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(ClusterError::NotConverged {
                    timeout: self.timeout,
                    remaining,
                });
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(500));
        }
    }
}

fn value_source(source: &ConfigSource) -> ValueSource {
    match source {
        ConfigSource::DynamicTopic => ValueSource::Topic,
        ConfigSource::DynamicBroker
        | ConfigSource::DynamicDefaultBroker
        | ConfigSource::StaticBroker => ValueSource::Broker,
        ConfigSource::Default => ValueSource::Default,
        ConfigSource::Unknown => ValueSource::Unknown,
    }
}
