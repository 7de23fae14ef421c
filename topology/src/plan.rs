//! The pure planner: what must change so a cluster matches the desired topology, and which
//! differences it refuses to touch because changing them would lose events or break the order
//! of an aggregate. No I/O: the cluster's state comes in as [`Actual`].

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::model::{keys, Desired, DesiredTopic, Kind};

/// What a cluster has, for the topics of a desired topology (others are not looked at).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Actual {
    /// Brokers in the cluster: a topic cannot have more replicas than that.
    pub brokers: usize,
    /// The existing topics, by full name.
    pub topics: BTreeMap<String, ActualTopic>,
}

/// One existing topic.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ActualTopic {
    /// Partition count.
    pub partitions: i32,
    /// Replicas of the partition with the fewest (they normally all have the same).
    pub replication_factor: i32,
    /// Every config Kafka describes for the topic, by key, with where its value comes from.
    pub configs: BTreeMap<String, ActualValue>,
}

/// A topic config's effective value and its origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActualValue {
    /// The value; Kafka hides sensitive ones.
    pub value: Option<String>,
    /// Where the value comes from.
    pub source: ValueSource,
}

/// Where a topic's effective config value comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueSource {
    /// Set on the topic itself: an override that moves with the topic.
    Topic,
    /// Inherited from the broker's configuration (static `server.properties` or a dynamic
    /// broker or cluster-wide default); may differ between brokers and clusters.
    Broker,
    /// Kafka's built-in default, which may change with the Kafka version.
    Default,
    /// The broker did not say (brokers before Kafka 1.1).
    Unknown,
}

impl fmt::Display for ActualValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let value = self.value.as_deref().unwrap_or("<hidden>");
        match self.source {
            ValueSource::Topic => write!(f, "{value}"),
            ValueSource::Broker => write!(f, "{value} inherited from the broker config"),
            ValueSource::Default => write!(f, "{value} from Kafka's default"),
            ValueSource::Unknown => write!(f, "{value} from an unknown source"),
        }
    }
}

/// The difference between the desired topology and a cluster.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// Safe changes, in topology order.
    pub changes: Vec<Change>,
    /// Things to know about safe changes before making them.
    pub warnings: Vec<Warning>,
    /// Differences that must not be changed by this tool, each with what to do instead. Any
    /// refusal makes the whole plan unsafe: nothing of it is applied.
    pub refusals: Vec<Refusal>,
}

impl Plan {
    /// True when the cluster matches the topology.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty() && self.refusals.is_empty()
    }

    /// True when every difference may be changed by this tool.
    pub fn is_safe(&self) -> bool {
        self.refusals.is_empty()
    }
}

impl fmt::Display for Plan {
    /// One line per change (`+` create, `~` alter, `>` grow), warning (`!`) and refusal (`x`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for change in &self.changes {
            let sign = match change {
                Change::CreateTopic(_) => '+',
                Change::AlterConfig { .. } => '~',
                Change::AddPartitions { .. } => '>',
            };
            writeln!(f, "{sign} {change}")?;
        }
        for warning in &self.warnings {
            writeln!(f, "! {warning}")?;
        }
        for refusal in &self.refusals {
            writeln!(f, "x {refusal}")?;
        }
        Ok(())
    }
}

/// One safe change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Create a missing topic with its partitions, replication and every managed config.
    CreateTopic(DesiredTopic),
    /// Set one managed config on the topic.
    AlterConfig {
        /// Full topic name.
        topic: String,
        /// Kafka config key.
        key: String,
        /// What the topic has now (`None` when Kafka does not describe the key).
        from: Option<ActualValue>,
        /// What the topology wants, set on the topic.
        to: String,
    },
    /// Add partitions to a topic that is not ordered by aggregate.
    AddPartitions {
        /// Full topic name.
        topic: String,
        /// The partition count now.
        from: i32,
        /// The partition count wanted.
        to: i32,
    },
}

impl Change {
    /// The topic the change is about.
    pub fn topic(&self) -> &str {
        match self {
            Change::CreateTopic(topic) => &topic.name,
            Change::AlterConfig { topic, .. } | Change::AddPartitions { topic, .. } => topic,
        }
    }
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::CreateTopic(topic) => {
                let configs: Vec<String> = topic
                    .configs
                    .iter()
                    .map(|(key, value)| format!("{key}={value}"))
                    .collect();
                write!(
                    f,
                    "create {} ({} topic): {} partitions, replication factor {}, {}",
                    topic.name,
                    topic.kind,
                    topic.partitions,
                    topic.replication_factor,
                    configs.join(" ")
                )
            }
            Change::AlterConfig {
                topic,
                key,
                from,
                to,
            } => match from {
                Some(from) if from.source == ValueSource::Topic => {
                    write!(f, "set {topic} {key}={to} (now {from})")
                }
                Some(from) => write!(f, "set {topic} {key}={to} on the topic (now {from})"),
                None => write!(f, "set {topic} {key}={to} (not described by the broker)"),
            },
            Change::AddPartitions { topic, from, to } => {
                write!(f, "add partitions to {topic}: {from} -> {to}")
            }
        }
    }
}

/// Something to know about a safe change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    /// Full topic name.
    pub topic: String,
    /// What to know.
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.topic, self.message)
    }
}

/// A difference this tool will not change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Full topic name.
    pub topic: String,
    /// What differs.
    pub unsafe_change: UnsafeChange,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} Instead: {}",
            self.topic,
            self.unsafe_change,
            self.unsafe_change.instead()
        )
    }
}

/// The kinds of difference that are refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnsafeChange {
    /// The topology wants fewer partitions than the topic has: Kafka cannot remove any.
    FewerPartitions {
        /// The partition count now.
        actual: i32,
        /// The partition count wanted.
        desired: i32,
    },
    /// The topology wants more partitions on a topic partitioned by aggregate id.
    MorePartitionsOnOrderedTopic {
        /// The partition count now.
        actual: i32,
        /// The partition count wanted.
        desired: i32,
    },
    /// The topology wants another `cleanup.policy` on an event topic.
    EventTopicCleanupPolicy {
        /// The policy now (as Kafka reports it).
        actual: String,
        /// The policy wanted.
        desired: String,
    },
    /// The topology wants another replication factor.
    ReplicationFactor {
        /// The replication factor now.
        actual: i32,
        /// The replication factor wanted.
        desired: i32,
    },
    /// A missing topic needs more replicas than the cluster has brokers.
    NotEnoughBrokers {
        /// Brokers in the cluster.
        brokers: usize,
        /// The replication factor wanted.
        replication_factor: i32,
    },
}

impl UnsafeChange {
    /// What to do instead.
    pub fn instead(&self) -> String {
        match self {
            UnsafeChange::FewerPartitions { actual, desired } => format!(
                "create a new topic with {desired} partitions and migrate to it, or keep \
                 {actual} in the topology."
            ),
            UnsafeChange::MorePartitionsOnOrderedTopic { desired, .. } => format!(
                "create new co-partitioned topics with {desired} partitions, replay the events \
                 into them in order, and switch the processors over; or keep the count."
            ),
            UnsafeChange::EventTopicCleanupPolicy { .. } => "inspect the topic by hand. If its \
                 events are intact, set cleanup.policy=compact with kafka-configs --alter; \
                 otherwise create a new event topic and migrate the events that remain. This \
                 tool never changes the cleanup policy of the event store."
                .to_owned(),
            UnsafeChange::ReplicationFactor { desired, .. } => format!(
                "reassign the partitions to {desired} replicas each with \
                 kafka-reassign-partitions (--generate, then --execute and --verify); this tool \
                 does not move replicas."
            ),
            UnsafeChange::NotEnoughBrokers { .. } => "use the profile that fits the cluster \
                 (topology.profile = \"local\" for a single broker) or add brokers."
                .to_owned(),
        }
    }
}

impl fmt::Display for UnsafeChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UnsafeChange::FewerPartitions { actual, desired } => write!(
                f,
                "has {actual} partitions, the topology wants {desired}; Kafka cannot remove \
                 partitions."
            ),
            UnsafeChange::MorePartitionsOnOrderedTopic { actual, desired } => write!(
                f,
                "has {actual} partitions, the topology wants {desired}; the topic is partitioned \
                 by aggregate id (murmur2(id) % partitions), so more partitions would move \
                 aggregates to other partitions and break their order and the single writer."
            ),
            UnsafeChange::EventTopicCleanupPolicy { actual, desired } => write!(
                f,
                "is an event topic with cleanup.policy={actual}, the topology wants {desired}; \
                 changing it could delete events or break the event store (decision 1)."
            ),
            UnsafeChange::ReplicationFactor { actual, desired } => write!(
                f,
                "has replication factor {actual}, the topology wants {desired}; that needs a \
                 partition reassignment."
            ),
            UnsafeChange::NotEnoughBrokers {
                brokers,
                replication_factor,
            } => write!(
                f,
                "is missing and needs replication factor {replication_factor}, but the cluster \
                 has {brokers} broker(s)."
            ),
        }
    }
}

/// What must change so `actual` matches `desired`, and what will not be changed.
///
/// A managed config is in sync only when it is set on the topic itself with the desired
/// value. A value inherited from the broker or from Kafka's defaults is reported even when it
/// is equal today: brokers and Kafka versions change their defaults, the topology should not.
/// Topics that `desired` does not name are ignored; nothing is ever deleted.
pub fn plan(desired: &Desired, actual: &Actual) -> Plan {
    let mut plan = Plan::default();
    for topic in &desired.topics {
        match actual.topics.get(&topic.name) {
            None => plan_missing(topic, actual.brokers, &mut plan),
            Some(existing) => plan_existing(topic, existing, &mut plan),
        }
    }
    plan
}

fn plan_missing(topic: &DesiredTopic, brokers: usize, plan: &mut Plan) {
    let replicas = usize::try_from(topic.replication_factor).unwrap_or(0);
    if replicas > brokers {
        plan.refusals.push(Refusal {
            topic: topic.name.clone(),
            unsafe_change: UnsafeChange::NotEnoughBrokers {
                brokers,
                replication_factor: topic.replication_factor,
            },
        });
    } else {
        plan.changes.push(Change::CreateTopic(topic.clone()));
    }
}

fn plan_existing(topic: &DesiredTopic, existing: &ActualTopic, plan: &mut Plan) {
    let refuse = |plan: &mut Plan, unsafe_change| {
        plan.refusals.push(Refusal {
            topic: topic.name.clone(),
            unsafe_change,
        })
    };
    let (actual, desired) = (existing.partitions, topic.partitions);
    if desired < actual {
        refuse(plan, UnsafeChange::FewerPartitions { actual, desired });
    } else if desired > actual && topic.is_ordered() {
        refuse(
            plan,
            UnsafeChange::MorePartitionsOnOrderedTopic { actual, desired },
        );
    } else if desired > actual {
        plan.changes.push(Change::AddPartitions {
            topic: topic.name.clone(),
            from: actual,
            to: desired,
        });
        plan.warnings.push(Warning {
            topic: topic.name.clone(),
            message: format!(
                "{} records are not ordered by key, so adding partitions is allowed; records \
                 with a given key may land in another partition from now on, and running \
                 consumers see the new partitions at their next metadata refresh.",
                topic.kind
            ),
        });
    }
    if existing.replication_factor != topic.replication_factor {
        refuse(
            plan,
            UnsafeChange::ReplicationFactor {
                actual: existing.replication_factor,
                desired: topic.replication_factor,
            },
        );
    }
    for (key, want) in &topic.configs {
        let have = existing.configs.get(key);
        let equal = have
            .and_then(|h| h.value.as_deref())
            .is_some_and(|value| same_value(key, value, want));
        if equal && have.is_some_and(|h| h.source == ValueSource::Topic) {
            continue;
        }
        if key == keys::CLEANUP_POLICY && topic.kind == Kind::Event && !equal {
            refuse(
                plan,
                UnsafeChange::EventTopicCleanupPolicy {
                    actual: have
                        .map(ToString::to_string)
                        .unwrap_or_else(|| "<not described>".to_owned()),
                    desired: want.clone(),
                },
            );
            continue;
        }
        plan.changes.push(Change::AlterConfig {
            topic: topic.name.clone(),
            key: key.clone(),
            from: have.cloned(),
            to: want.clone(),
        });
    }
}

/// Whether a described value means the same as the desired one: numbers by value (`0.50` is
/// `0.5`), `cleanup.policy` as a set (`delete,compact` is `compact,delete`), the rest as
/// written, ignoring case and surrounding space.
fn same_value(key: &str, have: &str, want: &str) -> bool {
    let (have, want) = (have.trim(), want.trim());
    if key == keys::CLEANUP_POLICY {
        let set = |v: &str| -> BTreeSet<String> {
            v.split(',')
                .map(|p| p.trim().to_ascii_lowercase())
                .collect()
        };
        return set(have) == set(want);
    }
    if let (Ok(a), Ok(b)) = (have.parse::<i64>(), want.parse::<i64>()) {
        return a == b;
    }
    if let (Ok(a), Ok(b)) = (have.parse::<f64>(), want.parse::<f64>()) {
        return a == b;
    }
    have.eq_ignore_ascii_case(want)
}

#[cfg(test)]
mod tests;
