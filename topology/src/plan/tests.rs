//! The planner on hand-made cluster states: what it creates, alters, grows, warns about and
//! refuses, and (property) that applying a safe plan leaves nothing to do.

use proptest::prelude::*;

use super::*;
use crate::model::{Profile, Topology};

fn desired() -> Desired {
    desired_for(Profile::Local)
}

fn desired_for(profile: Profile) -> Desired {
    Topology::embedded()
        .and_then(|t| t.resolve(profile, "p"))
        .unwrap_or_else(|e| panic!("{e}"))
}

fn on_topic(value: &str) -> ActualValue {
    ActualValue {
        value: Some(value.to_owned()),
        source: ValueSource::Topic,
    }
}

/// A cluster that has exactly `desired`, plus configs Kafka describes that the topology does
/// not manage.
fn in_sync(desired: &Desired) -> Actual {
    let topics = desired
        .topics
        .iter()
        .map(|topic| {
            let mut configs: BTreeMap<String, ActualValue> = topic
                .configs
                .iter()
                .map(|(key, value)| (key.clone(), on_topic(value)))
                .collect();
            configs.insert(
                "max.message.bytes".to_owned(),
                ActualValue {
                    value: Some("1048588".to_owned()),
                    source: ValueSource::Default,
                },
            );
            let actual = ActualTopic {
                partitions: topic.partitions,
                replication_factor: topic.replication_factor,
                configs,
            };
            (topic.name.clone(), actual)
        })
        .collect();
    Actual { brokers: 1, topics }
}

fn topic_mut<'a>(actual: &'a mut Actual, name: &str) -> &'a mut ActualTopic {
    actual
        .topics
        .get_mut(&format!("p.{name}"))
        .unwrap_or_else(|| panic!("no topic {name}"))
}

fn refusals(plan: &Plan) -> Vec<(&str, &UnsafeChange)> {
    plan.refusals
        .iter()
        .map(|r| (r.topic.as_str(), &r.unsafe_change))
        .collect()
}

#[test]
fn an_empty_cluster_gets_every_topic_created_in_file_order() {
    let desired = desired();
    let plan = plan(
        &desired,
        &Actual {
            brokers: 1,
            topics: BTreeMap::new(),
        },
    );
    let created: Vec<&DesiredTopic> = plan
        .changes
        .iter()
        .map(|change| match change {
            Change::CreateTopic(topic) => topic,
            other => panic!("unexpected change {other}"),
        })
        .collect();
    assert_eq!(created, desired.topics.iter().collect::<Vec<_>>());
    assert!(plan.warnings.is_empty() && plan.is_safe() && !plan.is_empty());
}

#[test]
fn a_matching_cluster_needs_nothing() {
    let desired = desired();
    let plan = plan(&desired, &in_sync(&desired));
    assert!(plan.is_empty(), "{plan}");
    assert_eq!(plan.to_string(), "");
}

#[test]
fn unmanaged_topics_and_overrides_are_left_alone() {
    let desired = desired();
    let mut actual = in_sync(&desired);
    actual
        .topics
        .insert("p.diet.events.legacy".to_owned(), ActualTopic::default());
    actual
        .topics
        .insert("someone.elses".to_owned(), ActualTopic::default());
    topic_mut(&mut actual, "diet.dlq.nutrition")
        .configs
        .insert("retention.bytes".to_owned(), on_topic("1073741824"));
    assert!(plan(&desired, &actual).is_empty());
}

#[test]
fn a_changed_value_on_the_topic_is_set_back() {
    let desired = desired();
    let mut actual = in_sync(&desired);
    topic_mut(&mut actual, "diet.dlq.quests")
        .configs
        .insert(keys::RETENTION_MS.to_owned(), on_topic("3600000"));
    let plan = plan(&desired, &actual);
    assert_eq!(
        plan.changes,
        [Change::AlterConfig {
            topic: "p.diet.dlq.quests".to_owned(),
            key: keys::RETENTION_MS.to_owned(),
            from: Some(on_topic("3600000")),
            to: "2592000000".to_owned(),
        }]
    );
    assert!(plan.is_safe() && plan.warnings.is_empty());
    assert_eq!(
        plan.to_string(),
        "~ set p.diet.dlq.quests retention.ms=2592000000 (now 3600000)\n"
    );
}

#[test]
fn a_value_inherited_from_the_broker_is_pinned_even_when_equal() {
    let desired = desired();
    let mut actual = in_sync(&desired);
    let inherited = ActualValue {
        value: Some("false".to_owned()),
        source: ValueSource::Broker,
    };
    let kafka_default = ActualValue {
        value: Some("producer".to_owned()),
        source: ValueSource::Default,
    };
    let topic = topic_mut(&mut actual, "diet.commands");
    topic.configs.insert(
        keys::UNCLEAN_LEADER_ELECTION_ENABLE.to_owned(),
        inherited.clone(),
    );
    topic
        .configs
        .insert(keys::COMPRESSION_TYPE.to_owned(), kafka_default.clone());
    let plan = plan(&desired, &actual);
    assert_eq!(
        plan.changes,
        [
            Change::AlterConfig {
                topic: "p.diet.commands".to_owned(),
                key: keys::COMPRESSION_TYPE.to_owned(),
                from: Some(kafka_default),
                to: "producer".to_owned(),
            },
            Change::AlterConfig {
                topic: "p.diet.commands".to_owned(),
                key: keys::UNCLEAN_LEADER_ELECTION_ENABLE.to_owned(),
                from: Some(inherited),
                to: "false".to_owned(),
            },
        ]
    );
    let printed = plan.to_string();
    assert!(
        printed.contains("unclean.leader.election.enable=false on the topic (now false inherited from the broker config)"),
        "{printed}"
    );
    assert!(printed.contains("from Kafka's default"), "{printed}");
}

#[test]
fn a_key_the_broker_does_not_describe_is_set() {
    let desired = desired();
    let mut actual = in_sync(&desired);
    topic_mut(&mut actual, "diet.events.ai")
        .configs
        .remove(keys::MAX_COMPACTION_LAG_MS);
    let plan = plan(&desired, &actual);
    assert!(
        matches!(&plan.changes[..], [Change::AlterConfig { key, from: None, .. }] if key == keys::MAX_COMPACTION_LAG_MS),
        "{plan}"
    );
}

#[test]
fn equal_values_written_differently_are_in_sync() {
    let mut desired = desired();
    desired
        .topic_mut("diet.dlq.indexer")
        .expect("dlq")
        .configs
        .insert(keys::CLEANUP_POLICY.to_owned(), "compact,delete".to_owned());
    let mut actual = in_sync(&desired);
    let snapshot = topic_mut(&mut actual, "diet.snapshots.user");
    snapshot
        .configs
        .insert(keys::MIN_CLEANABLE_DIRTY_RATIO.to_owned(), on_topic("0.10"));
    snapshot
        .configs
        .insert(keys::COMPRESSION_TYPE.to_owned(), on_topic(" ZSTD "));
    topic_mut(&mut actual, "diet.dlq.indexer")
        .configs
        .insert(keys::CLEANUP_POLICY.to_owned(), on_topic("delete, compact"));
    assert!(plan(&desired, &actual).is_empty());
}

#[test]
fn large_numbers_are_compared_exactly() {
    assert!(!same_value(
        keys::MAX_COMPACTION_LAG_MS,
        "9223372036854775807",
        "9223372036854775806"
    ));
    assert!(same_value(keys::RETENTION_MS, "-1", " -1"));
    assert!(!same_value(
        keys::CLEANUP_POLICY,
        "compact",
        "compact,delete"
    ));
}

#[test]
fn fewer_partitions_are_refused_with_what_to_do_instead() {
    let desired = desired();
    let mut actual = in_sync(&desired);
    topic_mut(&mut actual, "diet.dlq.commands").partitions = 4;
    let plan = plan(&desired, &actual);
    assert_eq!(
        refusals(&plan),
        [(
            "p.diet.dlq.commands",
            &UnsafeChange::FewerPartitions {
                actual: 4,
                desired: 1
            }
        )]
    );
    assert!(plan.changes.is_empty() && !plan.is_safe() && !plan.is_empty());
    let printed = plan.to_string();
    assert!(printed.starts_with("x p.diet.dlq.commands: has 4 partitions"));
    assert!(
        printed.contains("Kafka cannot remove partitions"),
        "{printed}"
    );
    assert!(
        printed.contains("create a new topic with 1 partitions and migrate"),
        "{printed}"
    );
}

#[test]
fn ordered_topics_never_get_more_partitions() {
    for name in ["diet.events.user", "diet.snapshots.social", "diet.commands"] {
        let mut desired = desired();
        let actual = in_sync(&desired);
        desired.topic_mut(name).expect(name).partitions = 6;
        let plan = plan(&desired, &actual);
        assert_eq!(
            refusals(&plan),
            [(
                format!("p.{name}").as_str(),
                &UnsafeChange::MorePartitionsOnOrderedTopic {
                    actual: 3,
                    desired: 6
                }
            )],
            "{name}"
        );
        assert!(plan.changes.is_empty(), "{name}: {plan}");
        let printed = plan.to_string();
        assert!(printed.contains("murmur2(id) % partitions"), "{printed}");
        assert!(printed.contains("replay the events"), "{printed}");
    }
}

#[test]
fn unordered_topics_grow_with_a_warning() {
    let mut desired = desired();
    let actual = in_sync(&desired);
    desired
        .topic_mut("diet.dlq.insights")
        .expect("dlq")
        .partitions = 3;
    desired
        .topic_mut("diet.command-results")
        .expect("results")
        .partitions = 5;
    let plan = plan(&desired, &actual);
    assert!(plan.is_safe());
    assert_eq!(
        plan.changes,
        [
            Change::AddPartitions {
                topic: "p.diet.command-results".to_owned(),
                from: 3,
                to: 5
            },
            Change::AddPartitions {
                topic: "p.diet.dlq.insights".to_owned(),
                from: 1,
                to: 3
            },
        ]
    );
    let warned: Vec<&str> = plan.warnings.iter().map(|w| w.topic.as_str()).collect();
    assert_eq!(warned, ["p.diet.command-results", "p.diet.dlq.insights"]);
    assert!(plan.warnings[1]
        .message
        .starts_with("dead-letter records are not ordered by key"));
    let printed = plan.to_string();
    assert!(printed.contains("> add partitions to p.diet.dlq.insights: 1 -> 3"));
    assert!(printed.contains("! p.diet.dlq.insights: dead-letter records"));
}

#[test]
fn the_cleanup_policy_of_an_event_topic_is_never_changed() {
    // Drift on the cluster: someone set delete (events would expire).
    let desired = desired();
    let mut actual = in_sync(&desired);
    topic_mut(&mut actual, "diet.events.social")
        .configs
        .insert(keys::CLEANUP_POLICY.to_owned(), on_topic("delete"));
    let plan1 = plan(&desired, &actual);
    assert_eq!(
        refusals(&plan1),
        [(
            "p.diet.events.social",
            &UnsafeChange::EventTopicCleanupPolicy {
                actual: "delete".to_owned(),
                desired: "compact".to_owned()
            }
        )]
    );
    assert!(plan1.changes.is_empty());
    assert!(plan1.to_string().contains("could delete events"));

    // A topology that asks for another policy.
    let mut desired = desired;
    desired
        .topic_mut("diet.events.system")
        .expect("event topic")
        .configs
        .insert(keys::CLEANUP_POLICY.to_owned(), "compact,delete".to_owned());
    let plan2 = plan(&desired, &in_sync(&self::desired()));
    assert_eq!(
        refusals(&plan2),
        [(
            "p.diet.events.system",
            &UnsafeChange::EventTopicCleanupPolicy {
                actual: "compact".to_owned(),
                desired: "compact,delete".to_owned()
            }
        )]
    );
}

#[test]
fn an_event_topic_that_lost_its_policy_override_is_refused_too() {
    let desired = desired();
    let mut actual = in_sync(&desired);
    topic_mut(&mut actual, "diet.events.user").configs.insert(
        keys::CLEANUP_POLICY.to_owned(),
        ActualValue {
            value: Some("delete".to_owned()),
            source: ValueSource::Broker,
        },
    );
    let plan = plan(&desired, &actual);
    assert!(
        matches!(&refusals(&plan)[..], [(_, UnsafeChange::EventTopicCleanupPolicy { actual, .. })] if actual == "delete inherited from the broker config"),
        "{plan}"
    );
}

#[test]
fn other_topics_may_change_their_cleanup_policy() {
    let mut desired = desired();
    let actual = in_sync(&desired);
    desired
        .topic_mut("diet.command-results")
        .expect("results")
        .configs
        .insert(keys::CLEANUP_POLICY.to_owned(), "compact,delete".to_owned());
    let plan = plan(&desired, &actual);
    assert!(plan.is_safe());
    assert!(
        matches!(&plan.changes[..], [Change::AlterConfig { key, to, .. }] if key == keys::CLEANUP_POLICY && to == "compact,delete"),
        "{plan}"
    );
}

#[test]
fn a_different_replication_factor_needs_a_reassignment() {
    let desired = desired();
    let mut actual = in_sync(&desired);
    actual.brokers = 3;
    topic_mut(&mut actual, "diet.snapshots.system").replication_factor = 3;
    let plan = plan(&desired, &actual);
    assert_eq!(
        refusals(&plan),
        [(
            "p.diet.snapshots.system",
            &UnsafeChange::ReplicationFactor {
                actual: 3,
                desired: 1
            }
        )]
    );
    assert!(plan.to_string().contains("kafka-reassign-partitions"));
}

#[test]
fn the_production_profile_does_not_fit_one_broker() {
    let desired = desired_for(Profile::Production);
    let plan = plan(
        &desired,
        &Actual {
            brokers: 1,
            topics: BTreeMap::new(),
        },
    );
    assert!(plan.changes.is_empty());
    assert_eq!(plan.refusals.len(), desired.topics.len());
    assert!(plan.refusals.iter().all(|r| r.unsafe_change
        == UnsafeChange::NotEnoughBrokers {
            brokers: 1,
            replication_factor: 3
        }));
    assert!(plan.to_string().contains("topology.profile = \"local\""));
}

#[test]
fn a_plan_with_one_refusal_still_lists_every_safe_change() {
    let desired = desired();
    let mut actual = in_sync(&desired);
    actual.topics.remove("p.diet.dlq.engagement");
    topic_mut(&mut actual, "diet.events.user").partitions = 2;
    topic_mut(&mut actual, "diet.snapshots.ai")
        .configs
        .insert(keys::SEGMENT_MS.to_owned(), on_topic("1"));
    let plan = plan(&desired, &actual);
    assert!(!plan.is_safe());
    let kinds: Vec<char> = plan
        .to_string()
        .lines()
        .filter_map(|l| l.chars().next())
        .collect();
    assert_eq!(kinds, ['~', '+', 'x'], "{plan}");
}

/// What `Cluster::apply` does to a cluster, in memory: created topics get every managed config
/// on the topic, altered keys are set on the topic, other overrides stay.
fn simulate(actual: &mut Actual, plan: &Plan) {
    for change in &plan.changes {
        match change {
            Change::CreateTopic(topic) => {
                actual.topics.insert(
                    topic.name.clone(),
                    ActualTopic {
                        partitions: topic.partitions,
                        replication_factor: topic.replication_factor,
                        configs: topic
                            .configs
                            .iter()
                            .map(|(k, v)| (k.clone(), on_topic(v)))
                            .collect(),
                    },
                );
            }
            Change::AlterConfig { topic, key, to, .. } => {
                if let Some(topic) = actual.topics.get_mut(topic) {
                    topic.configs.insert(key.clone(), on_topic(to));
                }
            }
            Change::AddPartitions { topic, to, .. } => {
                if let Some(topic) = actual.topics.get_mut(topic) {
                    topic.partitions = *to;
                }
            }
        }
    }
}

fn any_source() -> impl Strategy<Value = ValueSource> {
    prop_oneof![
        Just(ValueSource::Topic),
        Just(ValueSource::Broker),
        Just(ValueSource::Default),
        Just(ValueSource::Unknown),
    ]
}

/// One random deviation of one topic from the topology.
#[derive(Debug, Clone)]
enum Drift {
    Missing,
    Partitions(i32),
    ReplicationFactor(i32),
    Config {
        key: usize,
        value: Option<&'static str>,
        source: ValueSource,
    },
}

fn any_drift() -> impl Strategy<Value = Drift> {
    prop_oneof![
        Just(Drift::Missing),
        (-2..=2i32).prop_map(Drift::Partitions),
        (1..=3i32).prop_map(Drift::ReplicationFactor),
        (
            0..10usize,
            prop::option::of(prop_oneof![
                Just("delete"),
                Just("compact"),
                Just("0"),
                Just("-1"),
                Just("zstd")
            ]),
            any_source()
        )
            .prop_map(|(key, value, source)| Drift::Config { key, value, source }),
    ]
}

proptest! {
    /// For any drift: the planner refuses exactly the unsafe differences, and when it does not
    /// refuse, applying its plan leaves nothing to do.
    #[test]
    fn a_safe_plan_converges_and_unsafe_drift_is_refused(
        drifts in prop::collection::vec((0..16usize, any_drift()), 0..6)
    ) {
        let desired = desired();
        let mut actual = in_sync(&desired);
        actual.brokers = 3;
        let mut expect_refusal = false;
        for (index, drift) in &drifts {
            let topic = &desired.topics[*index];
            let Some(existing) = actual.topics.get_mut(&topic.name) else {
                continue;
            };
            match drift {
                Drift::Missing => {
                    actual.topics.remove(&topic.name);
                }
                Drift::Partitions(delta) => {
                    existing.partitions = (topic.partitions + delta).max(1);
                }
                Drift::ReplicationFactor(rf) => existing.replication_factor = *rf,
                Drift::Config { key, value, source } => {
                    let key = topic.configs.keys().nth(*key % topic.configs.len()).cloned();
                    if let Some(key) = key {
                        existing.configs.insert(
                            key,
                            ActualValue { value: value.map(str::to_owned), source: *source },
                        );
                    }
                }
            }
        }
        for topic in &desired.topics {
            let Some(existing) = actual.topics.get(&topic.name) else { continue };
            let policy = existing.configs.get(keys::CLEANUP_POLICY).and_then(|v| v.value.as_deref());
            expect_refusal |= existing.partitions > topic.partitions
                || (topic.is_ordered() && existing.partitions != topic.partitions)
                || existing.replication_factor != topic.replication_factor
                || (topic.kind == Kind::Event && policy != Some("compact"));
        }

        let first = plan(&desired, &actual);
        prop_assert_eq!(!first.is_safe(), expect_refusal, "{}", first);
        if first.is_safe() {
            simulate(&mut actual, &first);
            let second = plan(&desired, &actual);
            prop_assert!(second.is_empty(), "after applying:\n{}\nleft:\n{}", first, second);
        }
    }
}
