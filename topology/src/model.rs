//! The topology file (`topology/topology.toml`): its types, the rules it must follow, and its
//! resolution into concrete topics and groups for one profile and name prefix.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

/// The topology shipped with dietstream, compiled into the binary so that what runs is what
/// was reviewed.
pub const EMBEDDED: &str = include_str!("../topology.toml");

/// Kafka's topic config keys the topology manages. Only these are compared with a cluster;
/// other topic-level settings are left alone.
pub mod keys {
    /// `delete`, `compact` or both.
    pub const CLEANUP_POLICY: &str = "cleanup.policy";
    /// How long a record is kept under the delete policy; `-1` is forever.
    pub const RETENTION_MS: &str = "retention.ms";
    /// The codec the broker stores batches with; `producer` keeps the producer's.
    pub const COMPRESSION_TYPE: &str = "compression.type";
    /// The time after which the active segment is rolled.
    pub const SEGMENT_MS: &str = "segment.ms";
    /// The minimum age of a record before compaction may remove it.
    pub const MIN_COMPACTION_LAG_MS: &str = "min.compaction.lag.ms";
    /// The maximum age of a record before compaction must consider it.
    pub const MAX_COMPACTION_LAG_MS: &str = "max.compaction.lag.ms";
    /// The share of uncompacted log that makes the cleaner run.
    pub const MIN_CLEANABLE_DIRTY_RATIO: &str = "min.cleanable.dirty.ratio";
    /// How long a tombstone stays readable after compaction reached it.
    pub const DELETE_RETENTION_MS: &str = "delete.retention.ms";
    /// Whether an out-of-sync replica may become leader (and lose acknowledged records).
    pub const UNCLEAN_LEADER_ELECTION_ENABLE: &str = "unclean.leader.election.enable";
    /// How many replicas must have a write before `acks=all` acknowledges it.
    pub const MIN_INSYNC_REPLICAS: &str = "min.insync.replicas";
}

/// Kafka's limit on topic name length.
const MAX_TOPIC_NAME_LEN: usize = 249;

/// Which cluster the topology is sized for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// One broker (the local stack): replication factor 1, few partitions.
    Local,
    /// Three or more brokers: replication factor 3, min in-sync replicas 2, more partitions.
    Production,
}

impl Profile {
    /// The name used in the topology file and in the configuration.
    pub const fn name(self) -> &'static str {
        match self {
            Profile::Local => "local",
            Profile::Production => "production",
        }
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One value per profile; both must be given.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PerProfile<T> {
    /// The value for the one-node local stack.
    pub local: T,
    /// The value for a production cluster.
    pub production: T,
}

impl<T> PerProfile<T> {
    /// The value for `profile`.
    pub fn get(&self, profile: Profile) -> &T {
        match profile {
            Profile::Local => &self.local,
            Profile::Production => &self.production,
        }
    }

    fn each(&self) -> [(Profile, &T); 2] {
        [
            (Profile::Local, &self.local),
            (Profile::Production, &self.production),
        ]
    }
}

/// Replication of every topic in one profile.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileSpec {
    /// Copies of each partition.
    pub replication_factor: i32,
    /// Copies that must have a write before an `acks=all` producer gets its acknowledgement.
    pub min_insync_replicas: i32,
}

/// What a topic is for. The kind decides its settings and what the planner may change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// Events of one aggregate type: the event store itself (decision 1).
    Event,
    /// Latest state of each aggregate of one type, key = aggregate id.
    Snapshot,
    /// Commands for the command processor, keyed by aggregate id.
    Command,
    /// Replies of the command processor.
    CommandResult,
    /// Records one processor could not process (decision 6).
    DeadLetter,
}

impl Kind {
    /// True for topics partitioned by aggregate id, where per-aggregate order depends on the
    /// partition count: they never get more partitions.
    pub const fn is_ordered(self) -> bool {
        matches!(self, Kind::Event | Kind::Snapshot | Kind::Command)
    }

    /// The name used in the topology file.
    pub const fn name(self) -> &'static str {
        match self {
            Kind::Event => "event",
            Kind::Snapshot => "snapshot",
            Kind::Command => "command",
            Kind::CommandResult => "command-result",
            Kind::DeadLetter => "dead-letter",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Settings of every kind of topic; all kinds must be given.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Kinds {
    /// Event topics.
    pub event: KindSpec,
    /// Snapshot topics.
    pub snapshot: KindSpec,
    /// The command topic.
    pub command: KindSpec,
    /// The command-result topic.
    pub command_result: KindSpec,
    /// Dead-letter topics.
    pub dead_letter: KindSpec,
}

impl Kinds {
    /// The settings of `kind`.
    pub fn get(&self, kind: Kind) -> &KindSpec {
        match kind {
            Kind::Event => &self.event,
            Kind::Snapshot => &self.snapshot,
            Kind::Command => &self.command,
            Kind::CommandResult => &self.command_result,
            Kind::DeadLetter => &self.dead_letter,
        }
    }

    fn each(&self) -> [(Kind, &KindSpec); 5] {
        [
            (Kind::Event, &self.event),
            (Kind::Snapshot, &self.snapshot),
            (Kind::Command, &self.command),
            (Kind::CommandResult, &self.command_result),
            (Kind::DeadLetter, &self.dead_letter),
        ]
    }
}

/// Settings shared by the topics of one kind.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KindSpec {
    /// Partitions of each topic, per profile.
    pub partitions: PerProfile<i32>,
    /// Topic-level Kafka configs, under Kafka's own names.
    pub config: TopicConfig,
}

/// The topic-level Kafka configs the topology sets, under Kafka's names. `min.insync.replicas`
/// comes from the profile.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicConfig {
    /// `cleanup.policy`.
    #[serde(rename = "cleanup.policy")]
    pub cleanup_policy: CleanupPolicy,
    /// `retention.ms`: milliseconds, `-1` for forever.
    #[serde(rename = "retention.ms")]
    pub retention_ms: i64,
    /// `compression.type`.
    #[serde(rename = "compression.type")]
    pub compression_type: Compression,
    /// `segment.ms`: milliseconds.
    #[serde(rename = "segment.ms")]
    pub segment_ms: i64,
    /// `min.compaction.lag.ms`: milliseconds; required exactly when the policy compacts.
    #[serde(rename = "min.compaction.lag.ms", default)]
    pub min_compaction_lag_ms: Option<i64>,
    /// `max.compaction.lag.ms`: milliseconds; required exactly when the policy compacts.
    #[serde(rename = "max.compaction.lag.ms", default)]
    pub max_compaction_lag_ms: Option<i64>,
    /// `min.cleanable.dirty.ratio`: 0 to 1; required exactly when the policy compacts.
    #[serde(rename = "min.cleanable.dirty.ratio", default)]
    pub min_cleanable_dirty_ratio: Option<f64>,
    /// `delete.retention.ms`: milliseconds tombstones stay; required exactly when the policy
    /// compacts.
    #[serde(rename = "delete.retention.ms", default)]
    pub delete_retention_ms: Option<i64>,
    /// `unclean.leader.election.enable`.
    #[serde(rename = "unclean.leader.election.enable")]
    pub unclean_leader_election_enable: bool,
}

impl TopicConfig {
    /// The configs as Kafka key/value strings, the form the admin API takes.
    pub fn entries(&self) -> BTreeMap<String, String> {
        let mut entries = BTreeMap::new();
        let mut put = |key: &str, value: String| {
            entries.insert(key.to_owned(), value);
        };
        put(
            keys::CLEANUP_POLICY,
            self.cleanup_policy.as_str().to_owned(),
        );
        put(keys::RETENTION_MS, self.retention_ms.to_string());
        put(
            keys::COMPRESSION_TYPE,
            self.compression_type.as_str().to_owned(),
        );
        put(keys::SEGMENT_MS, self.segment_ms.to_string());
        if let Some(lag) = self.min_compaction_lag_ms {
            put(keys::MIN_COMPACTION_LAG_MS, lag.to_string());
        }
        if let Some(lag) = self.max_compaction_lag_ms {
            put(keys::MAX_COMPACTION_LAG_MS, lag.to_string());
        }
        if let Some(ratio) = self.min_cleanable_dirty_ratio {
            put(keys::MIN_CLEANABLE_DIRTY_RATIO, ratio.to_string());
        }
        if let Some(retention) = self.delete_retention_ms {
            put(keys::DELETE_RETENTION_MS, retention.to_string());
        }
        put(
            keys::UNCLEAN_LEADER_ELECTION_ENABLE,
            self.unclean_leader_election_enable.to_string(),
        );
        entries
    }

    /// Problems of these values, each prefixed with `context`.
    fn problems(&self, context: &str, problems: &mut Vec<String>) {
        let mut bad = |message: String| problems.push(format!("{context}: {message}"));
        if self.retention_ms < -1 {
            bad(format!(
                "retention.ms is {}; expected -1 (forever) or more",
                self.retention_ms
            ));
        }
        if self.segment_ms < 1 {
            bad(format!(
                "segment.ms is {}; expected at least 1",
                self.segment_ms
            ));
        }
        let compaction = [
            (
                keys::MIN_COMPACTION_LAG_MS,
                self.min_compaction_lag_ms.is_some(),
            ),
            (
                keys::MAX_COMPACTION_LAG_MS,
                self.max_compaction_lag_ms.is_some(),
            ),
            (
                keys::MIN_CLEANABLE_DIRTY_RATIO,
                self.min_cleanable_dirty_ratio.is_some(),
            ),
            (
                keys::DELETE_RETENTION_MS,
                self.delete_retention_ms.is_some(),
            ),
        ];
        for (key, given) in compaction {
            if self.cleanup_policy.compacts() && !given {
                bad(format!(
                    "{key} is missing; a compacted topic states its compaction settings"
                ));
            }
            if !self.cleanup_policy.compacts() && given {
                bad(format!(
                    "{key} is set but cleanup.policy={} never compacts; remove it",
                    self.cleanup_policy.as_str()
                ));
            }
        }
        for (key, value) in [
            (keys::MIN_COMPACTION_LAG_MS, self.min_compaction_lag_ms),
            (keys::MAX_COMPACTION_LAG_MS, self.max_compaction_lag_ms),
            (keys::DELETE_RETENTION_MS, self.delete_retention_ms),
        ] {
            if let Some(value) = value.filter(|v| *v < 0) {
                bad(format!("{key} is {value}; expected 0 or more"));
            }
        }
        if let (Some(min), Some(max)) = (self.min_compaction_lag_ms, self.max_compaction_lag_ms) {
            if max < min {
                bad(format!(
                    "max.compaction.lag.ms ({max}) is below min.compaction.lag.ms ({min})"
                ));
            }
        }
        if let Some(ratio) = self.min_cleanable_dirty_ratio {
            if !(0.0..=1.0).contains(&ratio) {
                bad(format!(
                    "min.cleanable.dirty.ratio is {ratio}; expected 0 to 1"
                ));
            }
        }
    }
}

/// Kafka's `cleanup.policy` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum CleanupPolicy {
    /// Keep the latest record per key.
    #[serde(rename = "compact")]
    Compact,
    /// Delete records older than `retention.ms`.
    #[serde(rename = "delete")]
    Delete,
    /// Both: compact, and delete what is older than `retention.ms`.
    #[serde(rename = "compact,delete")]
    CompactDelete,
}

impl CleanupPolicy {
    /// The value as Kafka spells it.
    pub const fn as_str(self) -> &'static str {
        match self {
            CleanupPolicy::Compact => "compact",
            CleanupPolicy::Delete => "delete",
            CleanupPolicy::CompactDelete => "compact,delete",
        }
    }

    /// True when the cleaner compacts the topic.
    pub const fn compacts(self) -> bool {
        matches!(self, CleanupPolicy::Compact | CleanupPolicy::CompactDelete)
    }
}

/// Kafka's `compression.type` values for a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// Keep whatever codec the producer used.
    Producer,
    /// Store uncompressed.
    Uncompressed,
    /// gzip.
    Gzip,
    /// Snappy.
    Snappy,
    /// LZ4.
    Lz4,
    /// Zstandard.
    Zstd,
}

impl Compression {
    /// The value as Kafka spells it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Compression::Producer => "producer",
            Compression::Uncompressed => "uncompressed",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }
}

/// One topic of the file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicSpec {
    /// The topic name, without prefix.
    pub name: String,
    /// What the topic is for; its settings come from the kind.
    pub kind: Kind,
    /// The aggregate type whose events or snapshots the topic holds; only for event and
    /// snapshot topics.
    #[serde(default)]
    pub aggregate: Option<String>,
}

/// One processor's consumer group and the topics it uses.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsumerSpec {
    /// The processor (`dietstream run <processor>`).
    pub processor: String,
    /// Its consumer group id, without prefix.
    pub group: String,
    /// Topics the group subscribes to.
    pub reads: Vec<String>,
    /// Topics it produces to, besides its dead-letter topic.
    pub writes: Vec<String>,
    /// Its dead-letter topic (decision 6).
    pub dead_letter: String,
}

/// The topology file, parsed and checked.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    /// Replication per profile.
    pub profiles: PerProfile<ProfileSpec>,
    /// Partitions and configs per kind of topic.
    pub kinds: Kinds,
    /// Every topic.
    pub topics: Vec<TopicSpec>,
    /// Every consumer group.
    pub consumers: Vec<ConsumerSpec>,
}

/// Why a topology cannot be used. Always permanent: the file or the prefix has to change.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    /// The file is not TOML or does not fit the format (unknown key, wrong type, missing kind).
    #[error("the topology file does not parse: {0}")]
    Parse(#[from] Box<toml::de::Error>),
    /// The file parses but breaks rules; every broken rule is listed.
    #[error("the topology breaks {} rule(s):\n  {}", .0.len(), .0.join("\n  "))]
    Invalid(Vec<String>),
    /// The configured prefix cannot start a topic name.
    #[error("topology.prefix {prefix:?} cannot prefix topic names: {reason}")]
    Prefix {
        /// The prefix as configured.
        prefix: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl Topology {
    /// The topology shipped in `topology/topology.toml`.
    pub fn embedded() -> Result<Self, TopologyError> {
        Self::parse(EMBEDDED)
    }

    /// Parses a topology file and checks its rules.
    pub fn parse(text: &str) -> Result<Self, TopologyError> {
        let topology: Topology = toml::from_str(text).map_err(Box::new)?;
        let problems = topology.problems();
        if problems.is_empty() {
            Ok(topology)
        } else {
            Err(TopologyError::Invalid(problems))
        }
    }

    /// Every rule the topology breaks.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        self.profile_problems(&mut problems);
        self.kind_problems(&mut problems);
        self.topic_problems(&mut problems);
        self.consumer_problems(&mut problems);
        problems
    }

    fn profile_problems(&self, problems: &mut Vec<String>) {
        for (profile, spec) in self.profiles.each() {
            if spec.replication_factor < 1 {
                problems.push(format!(
                    "profiles.{profile}: replication_factor is {}; expected at least 1",
                    spec.replication_factor
                ));
            }
            if spec.min_insync_replicas < 1 || spec.min_insync_replicas > spec.replication_factor {
                problems.push(format!(
                    "profiles.{profile}: min_insync_replicas is {}; expected 1 to replication_factor ({})",
                    spec.min_insync_replicas, spec.replication_factor
                ));
            }
        }
    }

    fn kind_problems(&self, problems: &mut Vec<String>) {
        for (kind, spec) in self.kinds.each() {
            for (profile, partitions) in spec.partitions.each() {
                if *partitions < 1 {
                    problems.push(format!(
                        "kinds.{kind}.partitions.{profile} is {partitions}; expected at least 1"
                    ));
                }
            }
            spec.config
                .problems(&format!("kinds.{kind}.config"), problems);
        }
        let event = &self.kinds.event.config;
        if event.cleanup_policy != CleanupPolicy::Compact || event.retention_ms != -1 {
            problems.push(format!(
                "kinds.event.config: cleanup.policy={} and retention.ms={}; event topics are the \
                 event store and must be cleanup.policy=compact with retention.ms=-1 (decision 1)",
                event.cleanup_policy.as_str(),
                event.retention_ms
            ));
        }
        if self.kinds.snapshot.config.cleanup_policy != CleanupPolicy::Compact {
            problems.push(format!(
                "kinds.snapshot.config: cleanup.policy={}; snapshot topics keep the latest \
                 snapshot per aggregate forever and must be cleanup.policy=compact",
                self.kinds.snapshot.config.cleanup_policy.as_str()
            ));
        }
        // The command processor owning partition p of the command topic restores its
        // aggregates from partition p of the snapshot and event topics.
        for profile in [Profile::Local, Profile::Production] {
            let counts: BTreeSet<i32> = [Kind::Event, Kind::Snapshot, Kind::Command]
                .iter()
                .map(|kind| *self.kinds.get(*kind).partitions.get(profile))
                .collect();
            if counts.len() > 1 {
                problems.push(format!(
                    "kinds event, snapshot and command have {} partitions in profile {profile}; \
                     they are co-partitioned by aggregate id and need one count",
                    join(counts.iter())
                ));
            }
        }
    }

    fn topic_problems(&self, problems: &mut Vec<String>) {
        let mut names = BTreeSet::new();
        let mut metric_names = BTreeMap::new();
        for topic in &self.topics {
            if let Err(reason) = check_topic_name(&topic.name) {
                problems.push(format!("topic {:?}: {reason}", topic.name));
            }
            if !names.insert(topic.name.as_str()) {
                problems.push(format!("topic {} is listed twice", topic.name));
            }
            // Kafka's metrics replace '.' with '_', so such names would collide there.
            let metric_name = topic.name.replace('.', "_");
            if let Some(other) = metric_names.insert(metric_name, topic.name.as_str()) {
                if other != topic.name {
                    problems.push(format!(
                        "topics {other} and {} differ only in '.' versus '_', which collide in \
                         Kafka's metric names",
                        topic.name
                    ));
                }
            }
            let needs_aggregate = matches!(topic.kind, Kind::Event | Kind::Snapshot);
            match (&topic.aggregate, needs_aggregate) {
                (None, true) => problems.push(format!(
                    "topic {}: a {} topic names its aggregate type (aggregate = \"...\")",
                    topic.name, topic.kind
                )),
                (Some(_), false) => problems.push(format!(
                    "topic {}: only event and snapshot topics have an aggregate type",
                    topic.name
                )),
                _ => {}
            }
        }
        for kind in [Kind::Event, Kind::Snapshot] {
            let mut seen = BTreeSet::new();
            for topic in self.topics.iter().filter(|t| t.kind == kind) {
                if let Some(aggregate) = &topic.aggregate {
                    if !seen.insert(aggregate.as_str()) {
                        problems.push(format!(
                            "aggregate type {aggregate} has more than one {kind} topic; one per \
                             type keeps all its records in one ordered log"
                        ));
                    }
                }
            }
        }
        let aggregates = |kind: Kind| -> BTreeSet<&str> {
            self.topics
                .iter()
                .filter(|t| t.kind == kind)
                .filter_map(|t| t.aggregate.as_deref())
                .collect()
        };
        let (with_events, with_snapshots) = (aggregates(Kind::Event), aggregates(Kind::Snapshot));
        for missing in with_events.symmetric_difference(&with_snapshots) {
            problems.push(format!(
                "aggregate type {missing} needs both an event topic and a snapshot topic"
            ));
        }
        for kind in [Kind::Command, Kind::CommandResult] {
            let count = self.topics.iter().filter(|t| t.kind == kind).count();
            if count != 1 {
                problems.push(format!(
                    "there are {count} {kind} topics; the command processor uses exactly one"
                ));
            }
        }
    }

    fn consumer_problems(&self, problems: &mut Vec<String>) {
        let kinds: BTreeMap<&str, Kind> = self
            .topics
            .iter()
            .map(|t| (t.name.as_str(), t.kind))
            .collect();
        let mut processors = BTreeSet::new();
        let mut groups = BTreeSet::new();
        let mut dead_letters = BTreeMap::new();
        for consumer in &self.consumers {
            let context = format!("consumer {}", consumer.processor);
            if !processors.insert(consumer.processor.as_str()) {
                problems.push(format!("{context} is listed twice"));
            }
            if !groups.insert(consumer.group.as_str()) {
                problems.push(format!(
                    "{context}: group {} is used by another processor",
                    consumer.group
                ));
            }
            if let Err(reason) = check_topic_name(&consumer.group) {
                problems.push(format!("{context}: group {:?}: {reason}", consumer.group));
            }
            if consumer.reads.is_empty() {
                problems.push(format!("{context} reads no topic"));
            }
            for topic in consumer.reads.iter().chain(&consumer.writes) {
                if !kinds.contains_key(topic.as_str()) {
                    problems.push(format!("{context}: topic {topic} is not in the topology"));
                }
            }
            match kinds.get(consumer.dead_letter.as_str()) {
                Some(Kind::DeadLetter) => {}
                Some(kind) => problems.push(format!(
                    "{context}: dead_letter {} is a {kind} topic, not a dead-letter topic",
                    consumer.dead_letter
                )),
                None => problems.push(format!(
                    "{context}: dead_letter {} is not in the topology",
                    consumer.dead_letter
                )),
            }
            if let Some(other) =
                dead_letters.insert(consumer.dead_letter.as_str(), consumer.processor.as_str())
            {
                problems.push(format!(
                    "{context}: dead-letter topic {} already belongs to {other}; each processor \
                     has its own",
                    consumer.dead_letter
                ));
            }
        }
        for topic in self.topics.iter().filter(|t| t.kind == Kind::DeadLetter) {
            if !dead_letters.contains_key(topic.name.as_str()) {
                problems.push(format!(
                    "dead-letter topic {} belongs to no consumer",
                    topic.name
                ));
            }
        }
    }

    /// The concrete topics and groups for `profile`, every name behind `prefix` (see
    /// [`prefixed`]).
    pub fn resolve(&self, profile: Profile, prefix: &str) -> Result<Desired, TopologyError> {
        let bad_prefix = |reason| TopologyError::Prefix {
            prefix: prefix.to_owned(),
            reason,
        };
        check_prefix(prefix).map_err(bad_prefix)?;
        if let Some(name) = self
            .topics
            .iter()
            .map(|t| prefixed(prefix, &t.name))
            .find(|name| name.len() > MAX_TOPIC_NAME_LEN)
        {
            return Err(bad_prefix(format!(
                "{name} would be {} characters long; Kafka allows {MAX_TOPIC_NAME_LEN}",
                name.len()
            )));
        }
        let replication = self.profiles.get(profile);
        let topics = self
            .topics
            .iter()
            .map(|topic| {
                let kind = self.kinds.get(topic.kind);
                let mut configs = kind.config.entries();
                configs.insert(
                    keys::MIN_INSYNC_REPLICAS.to_owned(),
                    replication.min_insync_replicas.to_string(),
                );
                DesiredTopic {
                    name: prefixed(prefix, &topic.name),
                    kind: topic.kind,
                    aggregate: topic.aggregate.clone(),
                    partitions: *kind.partitions.get(profile),
                    replication_factor: replication.replication_factor,
                    configs,
                }
            })
            .collect();
        let names = |topics: &[String]| -> Vec<String> {
            topics.iter().map(|t| prefixed(prefix, t)).collect()
        };
        let consumers = self
            .consumers
            .iter()
            .map(|c| DesiredConsumer {
                processor: c.processor.clone(),
                group: prefixed(prefix, &c.group),
                reads: names(&c.reads),
                writes: names(&c.writes),
                dead_letter: prefixed(prefix, &c.dead_letter),
            })
            .collect();
        Ok(Desired {
            profile,
            prefix: prefix.to_owned(),
            topics,
            consumers,
        })
    }
}

/// The topology for one profile and prefix: what a cluster should have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    /// The profile it was resolved for.
    pub profile: Profile,
    /// The prefix in front of every name; empty for none.
    pub prefix: String,
    /// Every topic, in file order.
    pub topics: Vec<DesiredTopic>,
    /// Every consumer group, in file order.
    pub consumers: Vec<DesiredConsumer>,
}

impl Desired {
    /// The topic named `name` in the file (without prefix).
    pub fn topic(&self, name: &str) -> Option<&DesiredTopic> {
        let full = prefixed(&self.prefix, name);
        self.topics.iter().find(|t| t.name == full)
    }

    /// The topic named `name` in the file (without prefix), to change it.
    pub fn topic_mut(&mut self, name: &str) -> Option<&mut DesiredTopic> {
        let full = prefixed(&self.prefix, name);
        self.topics.iter_mut().find(|t| t.name == full)
    }
}

impl fmt::Display for Desired {
    /// The resolved topology as `dietstream topology list` prints it: one line per topic with
    /// its managed configs, one line per consumer group with its topics.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let prefix = if self.prefix.is_empty() {
            "no prefix".to_owned()
        } else {
            format!("prefix {:?}", self.prefix)
        };
        writeln!(
            f,
            "profile {}, {prefix}: {} topics, {} consumer groups",
            self.profile,
            self.topics.len(),
            self.consumers.len()
        )?;
        writeln!(f, "\ntopics")?;
        for topic in &self.topics {
            let kind = match &topic.aggregate {
                Some(aggregate) => format!("{} of {aggregate}", topic.kind),
                None => topic.kind.to_string(),
            };
            let configs: Vec<String> = topic
                .configs
                .iter()
                .map(|(key, value)| format!("{key}={value}"))
                .collect();
            writeln!(
                f,
                "  {}  [{kind}{}]  partitions={} replication.factor={} {}",
                topic.name,
                if topic.is_ordered() { ", ordered" } else { "" },
                topic.partitions,
                topic.replication_factor,
                configs.join(" ")
            )?;
        }
        writeln!(f, "\nconsumer groups")?;
        for consumer in &self.consumers {
            let writes = if consumer.writes.is_empty() {
                String::new()
            } else {
                format!("  writes {}", consumer.writes.join(", "))
            };
            writeln!(
                f,
                "  {}  [processor {}]  reads {}{writes}  dead letters to {}",
                consumer.group,
                consumer.processor,
                consumer.reads.join(", "),
                consumer.dead_letter
            )?;
        }
        Ok(())
    }
}

/// One topic as a cluster should have it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredTopic {
    /// Full name, prefix included.
    pub name: String,
    /// What the topic is for.
    pub kind: Kind,
    /// The aggregate type of an event or snapshot topic.
    pub aggregate: Option<String>,
    /// Partition count.
    pub partitions: i32,
    /// Copies of each partition.
    pub replication_factor: i32,
    /// The managed topic-level configs, Kafka key to value.
    pub configs: BTreeMap<String, String>,
}

impl DesiredTopic {
    /// True when per-aggregate order depends on the partition count (see [`Kind::is_ordered`]).
    pub const fn is_ordered(&self) -> bool {
        self.kind.is_ordered()
    }
}

/// One consumer group, names prefixed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredConsumer {
    /// The processor.
    pub processor: String,
    /// Its group id.
    pub group: String,
    /// Topics it subscribes to.
    pub reads: Vec<String>,
    /// Topics it produces to, besides its dead-letter topic.
    pub writes: Vec<String>,
    /// Its dead-letter topic.
    pub dead_letter: String,
}

/// `name` behind `prefix`: `<prefix>.<name>`, or `name` alone when the prefix is empty.
pub fn prefixed(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_owned()
    } else {
        format!("{prefix}.{name}")
    }
}

/// Checks that `prefix` can stand in front of topic and group names: empty, or Kafka topic
/// characters (letters, digits, `.`, `_`, `-`) not ending in `.` (the separator is added).
pub fn check_prefix(prefix: &str) -> Result<(), String> {
    if prefix.is_empty() {
        return Ok(());
    }
    if let Some(c) = prefix.chars().find(|c| !is_topic_char(*c)) {
        return Err(format!(
            "{c:?} is not allowed; use letters, digits, '.', '_' and '-'"
        ));
    }
    if prefix.ends_with('.') {
        return Err("must not end with '.': the separator is added".to_owned());
    }
    Ok(())
}

fn check_topic_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name == "." || name == ".." {
        return Err("is not a valid Kafka topic name".to_owned());
    }
    if name.len() > MAX_TOPIC_NAME_LEN {
        return Err(format!(
            "is {} characters long; Kafka allows {MAX_TOPIC_NAME_LEN}",
            name.len()
        ));
    }
    match name.chars().find(|c| !is_topic_char(*c)) {
        Some(c) => Err(format!(
            "{c:?} is not allowed; use letters, digits, '.', '_' and '-'"
        )),
        None => Ok(()),
    }
}

const fn is_topic_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

fn join<T: fmt::Display>(items: impl Iterator<Item = T>) -> String {
    items.map(|i| i.to_string()).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests;
