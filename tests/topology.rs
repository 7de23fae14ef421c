//! `topology apply` and `diff` against the local Kafka: creation and idempotence, drift shown
//! and fixed, unsafe changes refused with nothing changed, partition growth where ordering
//! allows it, the aggregate partitioner on real partitions, and the CLI's exit codes.
//!
//! Each test applies the whole topology under its own prefix. What the tests check is read
//! with the raw admin client, not through the code under test.

mod common;

use std::collections::BTreeMap;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::Stack;
use dietstream_topology::{
    keys, partition_for, ApplyOutcome, Change, Cluster, Desired, DesiredTopic, Profile, Topology,
    UnsafeChange,
};
use rdkafka::admin::{AdminOptions, AlterConfig, ConfigSource, ResourceSpecifier};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

const TIMEOUT: Duration = Duration::from_secs(30);

fn desired(stack: &Stack) -> Desired {
    desired_for(stack, Profile::Local)
}

fn desired_for(stack: &Stack, profile: Profile) -> Desired {
    Topology::embedded()
        .and_then(|t| t.resolve(profile, &stack.prefix))
        .unwrap_or_else(|e| panic!("{e}"))
}

fn cluster(stack: &Stack) -> Cluster {
    Cluster::new(stack.admin(), TIMEOUT)
}

fn full_name(stack: &Stack, name: &str) -> String {
    format!("{}.{name}", stack.prefix)
}

/// Changes the desired topic `name` (without prefix), as an edited topology file would.
fn change(desired: &mut Desired, name: &str, edit: impl FnOnce(&mut DesiredTopic)) {
    edit(
        desired
            .topic_mut(name)
            .unwrap_or_else(|| panic!("no topic {name}")),
    );
}

async fn apply(stack: &Stack, desired: &Desired) -> ApplyOutcome {
    cluster(stack)
        .apply(desired)
        .await
        .unwrap_or_else(|e| panic!("apply failed: {e}"))
}

async fn apply_all(stack: &Stack) -> Desired {
    let desired = desired(stack);
    let outcome = apply(stack, &desired).await;
    assert!(
        matches!(outcome, ApplyOutcome::Applied(_)),
        "first apply: {outcome:?}"
    );
    desired
}

/// Polls `probe` until it returns a value or the deadline passes: Kafka applies admin
/// requests at the controller and brokers learn of them a little later.
async fn eventually<T>(what: &str, mut probe: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Partitions and replication factor of every topic under the test's prefix, from metadata.
async fn layout(stack: &Stack) -> BTreeMap<String, (usize, usize)> {
    let admin = stack.admin();
    let prefix = format!("{}.", stack.prefix);
    tokio::task::spawn_blocking(move || {
        let metadata = admin
            .inner()
            .fetch_metadata(None, TIMEOUT)
            .expect("metadata");
        metadata
            .topics()
            .iter()
            .filter(|t| t.name().starts_with(&prefix))
            .map(|t| {
                let replicas = t.partitions().first().map_or(0, |p| p.replicas().len());
                (t.name().to_owned(), (t.partitions().len(), replicas))
            })
            .collect()
    })
    .await
    .expect("metadata task")
}

async fn broker_count(stack: &Stack) -> usize {
    let admin = stack.admin();
    tokio::task::spawn_blocking(move || {
        admin
            .inner()
            .fetch_metadata(None, TIMEOUT)
            .expect("metadata")
            .brokers()
            .len()
    })
    .await
    .expect("metadata task")
}

/// The configs set on the topic itself (its overrides), as Kafka describes them.
async fn overrides(stack: &Stack, topic: &str) -> BTreeMap<String, String> {
    let described = stack
        .admin()
        .describe_configs(&[ResourceSpecifier::Topic(topic)], &AdminOptions::new())
        .await
        .expect("describe configs");
    let resource = described
        .into_iter()
        .next()
        .expect("one resource")
        .expect("described");
    resource
        .entries
        .into_iter()
        .filter(|e| e.source == ConfigSource::DynamicTopic)
        .map(|e| (e.name, e.value.unwrap_or_default()))
        .collect()
}

/// Everything `apply` could change, for every topic under the prefix.
async fn state(stack: &Stack) -> BTreeMap<String, ((usize, usize), BTreeMap<String, String>)> {
    let mut state = BTreeMap::new();
    for (topic, layout) in layout(stack).await {
        let configs = overrides(stack, &topic).await;
        state.insert(topic, (layout, configs));
    }
    state
}

/// Replaces the topic's overrides with `set`, as an operator with kafka-configs would, and
/// waits until the broker shows it.
async fn alter_behind_the_back(stack: &Stack, topic: &str, set: &BTreeMap<String, String>) {
    let request = set.iter().fold(
        AlterConfig::new(ResourceSpecifier::Topic(topic)),
        |request, (key, value)| request.set(key, value),
    );
    let results = stack
        .admin()
        .alter_configs(&[request], &AdminOptions::new())
        .await
        .expect("alter configs");
    for result in results {
        result.unwrap_or_else(|e| panic!("alter configs of {topic}: {e:?}"));
    }
    eventually("the altered configs", async || {
        (overrides(stack, topic).await == *set).then_some(())
    })
    .await;
}

#[tokio::test]
async fn apply_creates_every_topic_and_a_second_apply_changes_nothing() {
    let stack = Stack::get().await;
    let desired = desired(&stack);
    let cluster = cluster(&stack);

    let before = cluster.diff(&desired).await.expect("diff");
    assert_eq!(before.changes.len(), desired.topics.len(), "{before}");
    assert!(before
        .changes
        .iter()
        .all(|c| matches!(c, Change::CreateTopic(_))));

    let ApplyOutcome::Applied(plan) = cluster.apply(&desired).await.expect("apply") else {
        panic!("first apply did not apply");
    };
    assert_eq!(plan, before);

    let layout = layout(&stack).await;
    assert_eq!(layout.len(), desired.topics.len(), "{layout:?}");
    for topic in &desired.topics {
        let expected = (
            usize::try_from(topic.partitions).expect("positive"),
            usize::try_from(topic.replication_factor).expect("positive"),
        );
        assert_eq!(layout.get(&topic.name), Some(&expected), "{}", topic.name);
        // Every managed config is set on the topic itself, with the topology's value.
        assert_eq!(
            overrides(&stack, &topic.name).await,
            topic.configs,
            "{}",
            topic.name
        );
    }
    let events = &overrides(&stack, &full_name(&stack, "diet.events.user")).await;
    assert_eq!(events[keys::CLEANUP_POLICY], "compact");
    assert_eq!(events[keys::RETENTION_MS], "-1");

    assert_eq!(
        cluster.apply(&desired).await.expect("second apply"),
        ApplyOutcome::InSync
    );
    let after = cluster.diff(&desired).await.expect("diff after apply");
    assert!(after.is_empty(), "{after}");
}

#[tokio::test]
async fn drift_is_shown_by_diff_and_fixed_by_apply() {
    let stack = Stack::get().await;
    let desired = apply_all(&stack).await;
    let topic = full_name(&stack, "diet.dlq.nutrition");

    // An operator shortens the retention, drops the unclean-election override (the topic now
    // inherits Kafka's default, equal today) and adds a setting the topology does not manage.
    let mut drifted = overrides(&stack, &topic).await;
    drifted.insert(keys::RETENTION_MS.to_owned(), "3600000".to_owned());
    drifted.remove(keys::UNCLEAN_LEADER_ELECTION_ENABLE);
    drifted.insert("retention.bytes".to_owned(), "1073741824".to_owned());
    alter_behind_the_back(&stack, &topic, &drifted).await;

    let cluster = cluster(&stack);
    let plan = cluster.diff(&desired).await.expect("diff");
    let changes: Vec<(&str, Option<&str>, &str)> = plan
        .changes
        .iter()
        .map(|change| match change {
            Change::AlterConfig {
                topic: t,
                key,
                from,
                to,
            } => {
                assert_eq!(t, &topic);
                (
                    key.as_str(),
                    from.as_ref().and_then(|f| f.value.as_deref()),
                    to.as_str(),
                )
            }
            other => panic!("unexpected change {other}"),
        })
        .collect();
    assert_eq!(
        changes,
        [
            (keys::RETENTION_MS, Some("3600000"), "2592000000"),
            (keys::UNCLEAN_LEADER_ELECTION_ENABLE, Some("false"), "false"),
        ],
        "{plan}"
    );
    assert!(plan.is_safe() && plan.warnings.is_empty(), "{plan}");
    assert!(
        plan.to_string().contains("on the topic (now false from"),
        "{plan}"
    );

    assert_eq!(
        cluster.apply(&desired).await.expect("apply"),
        ApplyOutcome::Applied(plan)
    );
    let fixed = overrides(&stack, &topic).await;
    assert_eq!(fixed[keys::RETENTION_MS], "2592000000");
    assert_eq!(fixed[keys::UNCLEAN_LEADER_ELECTION_ENABLE], "false");
    assert_eq!(
        fixed.get("retention.bytes").map(String::as_str),
        Some("1073741824"),
        "an unmanaged override was lost: {fixed:?}"
    );
    let after = cluster.diff(&desired).await.expect("diff after apply");
    assert!(after.is_empty(), "{after}");
}

#[tokio::test]
async fn unsafe_changes_are_refused_and_nothing_is_changed() {
    let stack = Stack::get().await;
    let mut desired = apply_all(&stack).await;
    let before = state(&stack).await;

    change(&mut desired, "diet.command-results", |t| t.partitions = 2);
    change(&mut desired, "diet.events.user", |t| {
        t.configs
            .insert(keys::CLEANUP_POLICY.to_owned(), "compact,delete".to_owned());
    });
    change(&mut desired, "diet.dlq.quests", |t| {
        t.replication_factor = 2
    });
    // A safe change in the same plan is not applied either.
    change(&mut desired, "diet.dlq.indexer", |t| {
        t.configs
            .insert(keys::RETENTION_MS.to_owned(), "86400000".to_owned());
    });

    let ApplyOutcome::Refused(plan) = apply(&stack, &desired).await else {
        panic!("an unsafe plan was not refused");
    };
    let refused: Vec<(String, &UnsafeChange)> = plan
        .refusals
        .iter()
        .map(|r| (r.topic.clone(), &r.unsafe_change))
        .collect();
    assert_eq!(
        refused,
        [
            (
                full_name(&stack, "diet.events.user"),
                &UnsafeChange::EventTopicCleanupPolicy {
                    actual: "compact".to_owned(),
                    desired: "compact,delete".to_owned()
                }
            ),
            (
                full_name(&stack, "diet.command-results"),
                &UnsafeChange::FewerPartitions {
                    actual: 3,
                    desired: 2
                }
            ),
            (
                full_name(&stack, "diet.dlq.quests"),
                &UnsafeChange::ReplicationFactor {
                    actual: 1,
                    desired: 2
                }
            ),
        ],
        "{plan}"
    );
    assert_eq!(plan.changes.len(), 1, "{plan}");
    let printed = plan.to_string();
    for advice in [
        "create a new topic with 2 partitions and migrate",
        "never changes the cleanup policy of the event store",
        "kafka-reassign-partitions",
    ] {
        assert!(printed.contains(advice), "{advice:?} missing:\n{printed}");
    }

    assert_eq!(
        state(&stack).await,
        before,
        "a refused apply changed the cluster"
    );
}

#[tokio::test]
async fn dead_letter_topics_grow_with_a_warning_and_event_topics_are_refused() {
    let stack = Stack::get().await;
    let mut desired = apply_all(&stack).await;
    let dlq = full_name(&stack, "diet.dlq.engagement");
    let events = full_name(&stack, "diet.events.social");

    change(&mut desired, "diet.dlq.engagement", |t| t.partitions = 3);
    let ApplyOutcome::Applied(plan) = apply(&stack, &desired).await else {
        panic!("growing a dead-letter topic was not applied");
    };
    assert_eq!(
        plan.changes,
        [Change::AddPartitions {
            topic: dlq.clone(),
            from: 1,
            to: 3
        }]
    );
    assert_eq!(plan.warnings.len(), 1, "{plan}");
    assert_eq!(plan.warnings[0].topic, dlq);
    assert_eq!(layout(&stack).await.get(&dlq), Some(&(3, 1)));

    change(&mut desired, "diet.events.social", |t| t.partitions = 4);
    let ApplyOutcome::Refused(plan) = apply(&stack, &desired).await else {
        panic!("growing an event topic was not refused");
    };
    assert_eq!(plan.refusals.len(), 1, "{plan}");
    assert_eq!(plan.refusals[0].topic, events);
    assert_eq!(
        plan.refusals[0].unsafe_change,
        UnsafeChange::MorePartitionsOnOrderedTopic {
            actual: 3,
            desired: 4
        }
    );
    assert_eq!(layout(&stack).await.get(&events), Some(&(3, 1)));
}

#[tokio::test]
async fn a_profile_needing_more_brokers_than_the_cluster_has_is_refused() {
    let stack = Stack::get().await;
    let brokers = broker_count(&stack).await;
    assert!(
        brokers < 3,
        "this test expects the single-broker local stack, found {brokers} brokers"
    );
    let desired = desired_for(&stack, Profile::Production);
    let ApplyOutcome::Refused(plan) = apply(&stack, &desired).await else {
        panic!("the production profile was applied to {brokers} broker(s)");
    };
    assert_eq!(plan.refusals.len(), desired.topics.len(), "{plan}");
    assert!(plan.refusals.iter().all(|r| r.unsafe_change
        == UnsafeChange::NotEnoughBrokers {
            brokers,
            replication_factor: 3
        }));
    assert!(layout(&stack).await.is_empty(), "topics were created");
}

/// Aggregate ids of several shapes: UUIDs, short ids, multi-byte UTF-8.
fn aggregate_ids() -> Vec<String> {
    let mut ids: Vec<String> = (0..24).map(|_| uuid::Uuid::new_v4().to_string()).collect();
    ids.extend(["", "a", "user-42", "Grüße", "日本語", "🍎🥦"].map(str::to_owned));
    ids
}

#[tokio::test]
async fn records_sent_to_partition_for_land_there_where_librdkafka_also_puts_the_id() {
    let stack = Stack::get().await;
    let desired = apply_all(&stack).await;
    let events = desired.topic("diet.events.user").expect("event topic");
    let partitions = events.partitions;
    let ids = aggregate_ids();
    let expected: BTreeMap<String, i32> = ids
        .iter()
        .map(|id| (format!("{id}/1"), partition_for(id, partitions)))
        .collect();
    let used: std::collections::BTreeSet<i32> = expected.values().copied().collect();
    assert!(used.len() > 1, "the ids should spread over partitions");

    // The event store's way: key `<aggregate id>/<version>`, partition from partition_for.
    let producer = stack.producer();
    for id in &ids {
        let key = format!("{id}/1");
        let partition = expected[&key];
        let delivered = producer
            .send(
                FutureRecord::to(&events.name)
                    .key(&key)
                    .payload("event")
                    .partition(partition),
                TIMEOUT,
            )
            .await
            .unwrap_or_else(|(e, _)| panic!("produce {key}: {e}"));
        assert_eq!(delivered.partition, partition, "{key}");
    }

    // Read back from the broker: each record sits in its aggregate's partition.
    let consumer: StreamConsumer = stack.consumer_config().create().expect("consumer");
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions {
        assignment
            .add_partition_offset(&events.name, partition, Offset::Beginning)
            .expect("assign");
    }
    consumer.assign(&assignment).expect("assign");
    let mut stored = BTreeMap::new();
    while stored.len() < expected.len() {
        let message = tokio::time::timeout(TIMEOUT, consumer.recv())
            .await
            .expect("records arrive")
            .expect("consume");
        let key = String::from_utf8(message.key().expect("key").to_vec()).expect("UTF-8 key");
        stored.insert(key, message.partition());
    }
    assert_eq!(stored, expected);

    // A third client agrees: librdkafka's Java-compatible partitioner with the id as key.
    let java_compatible: FutureProducer = stack
        .config
        .kafka
        .client_config()
        .set("partitioner", "murmur2_random")
        .create()
        .expect("producer");
    for id in ids.iter().filter(|id| !id.is_empty()) {
        let delivered = java_compatible
            .send(
                FutureRecord::to(&events.name).key(id).payload("probe"),
                TIMEOUT,
            )
            .await
            .unwrap_or_else(|(e, _)| panic!("produce {id}: {e}"));
        assert_eq!(delivered.partition, partition_for(id, partitions), "{id}");
    }
}

fn dietstream(stack: &Stack, args: &[&str]) -> Output {
    let output = Command::new(env!("CARGO_BIN_EXE_dietstream"))
        .args(args)
        .env(
            "DIETSTREAM_KAFKA__BOOTSTRAP_SERVERS",
            &stack.config.kafka.bootstrap_servers,
        )
        .env("DIETSTREAM_TOPOLOGY__PREFIX", &stack.prefix)
        .env_remove("DIETSTREAM_TOPOLOGY__PROFILE")
        .output()
        .expect("run dietstream");
    eprintln!(
        "--- dietstream {}: {}\n{}{}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test]
async fn the_cli_reports_drift_applies_and_refuses_with_its_exit_codes() {
    let stack = Stack::get().await;
    let events = full_name(&stack, "diet.events.ai");

    let list = dietstream(&stack, &["topology", "list"]);
    assert!(list.status.success());
    assert!(stdout(&list).contains(&format!("  {events}  [event of ai, ordered]")));

    let diff = dietstream(&stack, &["topology", "diff"]);
    assert_eq!(diff.status.code(), Some(3));
    assert!(stdout(&diff).contains(&format!("+ create {events} (event topic): 3 partitions")));

    let applied = dietstream(&stack, &["topology", "apply"]);
    assert_eq!(applied.status.code(), Some(0));
    assert!(stdout(&applied).contains("applied 16 change(s)"));

    let diff = dietstream(&stack, &["topology", "diff"]);
    assert_eq!(diff.status.code(), Some(0));
    assert!(stdout(&diff).starts_with("in sync: 16 topics of profile local"));

    let again = dietstream(&stack, &["topology", "apply"]);
    assert_eq!(again.status.code(), Some(0));
    assert!(stdout(&again).starts_with("in sync, nothing to do"));

    // Someone lets the event topic expire events: diff shows it, apply refuses to touch it.
    let mut drifted = overrides(&stack, &events).await;
    drifted.insert(keys::CLEANUP_POLICY.to_owned(), "compact,delete".to_owned());
    alter_behind_the_back(&stack, &events, &drifted).await;

    let diff = dietstream(&stack, &["topology", "diff"]);
    assert_eq!(diff.status.code(), Some(3));
    assert!(stdout(&diff).contains(&format!("x {events}: is an event topic")));

    let refused = dietstream(&stack, &["topology", "apply"]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("nothing was changed"));
    assert_eq!(overrides(&stack, &events).await, drifted);
}
