//! The shipped topology follows the design, resolves per profile and prefix, and broken
//! topologies are rejected with every problem named.

use super::*;

fn embedded() -> Topology {
    Topology::embedded().unwrap_or_else(|e| panic!("{e}"))
}

fn names(kind: Kind) -> Vec<String> {
    embedded()
        .topics
        .iter()
        .filter(|t| t.kind == kind)
        .map(|t| t.name.clone())
        .collect()
}

#[test]
fn shipped_topology_has_the_topics_the_design_names() {
    assert_eq!(
        names(Kind::Event),
        [
            "diet.events.user",
            "diet.events.social",
            "diet.events.ai",
            "diet.events.system"
        ]
    );
    assert_eq!(
        names(Kind::Snapshot),
        [
            "diet.snapshots.user",
            "diet.snapshots.social",
            "diet.snapshots.ai",
            "diet.snapshots.system"
        ]
    );
    assert_eq!(names(Kind::Command), ["diet.commands"]);
    assert_eq!(names(Kind::CommandResult), ["diet.command-results"]);
    assert_eq!(
        names(Kind::DeadLetter),
        [
            "diet.dlq.commands",
            "diet.dlq.nutrition",
            "diet.dlq.engagement",
            "diet.dlq.quests",
            "diet.dlq.insights",
            "diet.dlq.indexer"
        ]
    );
}

#[test]
fn every_processor_has_a_group_and_its_own_dead_letter_topic() {
    let topology = embedded();
    let processors: Vec<&str> = topology
        .consumers
        .iter()
        .map(|c| c.processor.as_str())
        .collect();
    assert_eq!(
        processors,
        [
            "commands",
            "nutrition",
            "engagement",
            "quests",
            "insights",
            "indexer"
        ]
    );
    for consumer in &topology.consumers {
        assert_eq!(
            consumer.dead_letter,
            format!("diet.dlq.{}", consumer.processor)
        );
        assert_eq!(consumer.group, format!("dietstream.{}", consumer.processor));
    }
    let commands = &topology.consumers[0];
    assert_eq!(commands.reads, ["diet.commands"]);
    assert!(commands.writes.iter().any(|t| t == "diet.command-results"));
}

#[test]
fn event_topics_are_the_compacted_store_of_decision_1() {
    let config = embedded().kinds.event.config.entries();
    assert_eq!(config[keys::CLEANUP_POLICY], "compact");
    assert_eq!(config[keys::RETENTION_MS], "-1");
    assert_eq!(config[keys::UNCLEAN_LEADER_ELECTION_ENABLE], "false");
    for key in [
        keys::MIN_COMPACTION_LAG_MS,
        keys::MAX_COMPACTION_LAG_MS,
        keys::MIN_CLEANABLE_DIRTY_RATIO,
        keys::DELETE_RETENTION_MS,
        keys::SEGMENT_MS,
    ] {
        assert!(config.contains_key(key), "{key} missing");
    }
    assert_eq!(
        embedded().kinds.snapshot.config.cleanup_policy,
        CleanupPolicy::Compact
    );
}

#[test]
fn ordered_kinds_are_the_ones_keyed_by_aggregate() {
    let ordered: Vec<Kind> = [
        Kind::Event,
        Kind::Snapshot,
        Kind::Command,
        Kind::CommandResult,
        Kind::DeadLetter,
    ]
    .into_iter()
    .filter(|k| k.is_ordered())
    .collect();
    assert_eq!(ordered, [Kind::Event, Kind::Snapshot, Kind::Command]);
}

#[test]
fn every_topic_in_the_file_says_why_in_a_comment() {
    let lines: Vec<&str> = EMBEDDED.lines().collect();
    let mut topics = 0;
    for (i, line) in lines.iter().enumerate() {
        if line.trim() == "[[topics]]" {
            topics += 1;
            let next = lines.get(i + 1).map(|l| l.trim_start()).unwrap_or("");
            assert!(next.starts_with('#'), "no comment after line {}", i + 1);
        }
    }
    assert_eq!(topics, embedded().topics.len());
}

#[test]
fn config_entries_use_the_keys_written_in_the_file() {
    let raw: toml::Table = toml::from_str(EMBEDDED).expect("TOML");
    let kinds = raw["kinds"].as_table().expect("kinds table");
    let topology = embedded();
    for (kind, spec) in topology.kinds.each() {
        let written: BTreeSet<String> = kinds[kind.name()]["config"]
            .as_table()
            .expect("config table")
            .keys()
            .cloned()
            .collect();
        let entries: BTreeSet<String> = spec.config.entries().into_keys().collect();
        assert_eq!(entries, written, "kind {kind}");
    }
}

#[test]
fn local_profile_fits_one_broker() {
    let desired = embedded().resolve(Profile::Local, "").expect("resolves");
    assert_eq!(desired.topics.len(), 16);
    for topic in &desired.topics {
        assert_eq!(topic.replication_factor, 1, "{}", topic.name);
        assert_eq!(topic.configs[keys::MIN_INSYNC_REPLICAS], "1");
    }
    let events = desired.topic("diet.events.user").expect("event topic");
    assert_eq!(events.partitions, 3);
    assert_eq!(events.aggregate.as_deref(), Some("user"));
    assert_eq!(desired.topic("diet.dlq.quests").expect("dlq").partitions, 1);
}

#[test]
fn production_profile_replicates_three_times_with_two_in_sync() {
    let desired = embedded()
        .resolve(Profile::Production, "")
        .expect("resolves");
    for topic in &desired.topics {
        assert_eq!(topic.replication_factor, 3, "{}", topic.name);
        assert_eq!(topic.configs[keys::MIN_INSYNC_REPLICAS], "2");
    }
    let partitions = |name| desired.topic(name).expect(name).partitions;
    assert_eq!(partitions("diet.events.user"), 24);
    assert_eq!(partitions("diet.snapshots.ai"), 24);
    assert_eq!(partitions("diet.commands"), 24);
    assert_eq!(partitions("diet.dlq.indexer"), 3);
}

#[test]
fn prefix_goes_in_front_of_every_topic_and_group() {
    let desired = embedded()
        .resolve(Profile::Local, "it_t_1")
        .expect("resolves");
    assert!(desired
        .topics
        .iter()
        .all(|t| t.name.starts_with("it_t_1.diet.")));
    let quests = &desired.consumers[3];
    assert_eq!(quests.group, "it_t_1.dietstream.quests");
    assert_eq!(quests.reads, ["it_t_1.diet.events.user"]);
    assert_eq!(quests.writes, ["it_t_1.diet.commands"]);
    assert_eq!(quests.dead_letter, "it_t_1.diet.dlq.quests");
    assert!(desired.topic("diet.commands").is_some());
    assert_eq!(prefixed("", "diet.commands"), "diet.commands");
}

#[test]
fn bad_prefixes_are_rejected_with_the_reason() {
    let topology = embedded();
    for (prefix, reason) in [
        ("staging.", "must not end with '.'"),
        ("a/b", "'/' is not allowed"),
        ("ümlaut", "'ü' is not allowed"),
        (&"p".repeat(240), "Kafka allows 249"),
    ] {
        let err = topology
            .resolve(Profile::Local, prefix)
            .expect_err("bad prefix accepted");
        assert!(
            matches!(err, TopologyError::Prefix { .. }),
            "{prefix}: {err}"
        );
        assert!(err.to_string().contains(reason), "{prefix}: {err}");
    }
    assert!(check_prefix("team-a.staging_2").is_ok());
}

#[test]
fn unknown_key_in_the_file_is_named() {
    let text = EMBEDDED.replace("\"retention.ms\" = -1", "\"retention.msx\" = -1");
    let err = Topology::parse(&text).expect_err("unknown key accepted");
    assert!(matches!(err, TopologyError::Parse(_)));
    assert!(err.to_string().contains("retention.msx"), "{err}");
}

#[test]
fn every_broken_rule_is_reported_at_once() {
    let mut topology = embedded();
    topology.profiles.production.min_insync_replicas = 4;
    topology.kinds.event.config.cleanup_policy = CleanupPolicy::CompactDelete;
    topology.kinds.snapshot.partitions.production = 12;
    topology.kinds.dead_letter.config.min_compaction_lag_ms = Some(0);
    topology.kinds.snapshot.config.min_cleanable_dirty_ratio = Some(1.5);
    topology.topics.retain(|t| t.name != "diet.snapshots.ai");
    topology.topics.push(TopicSpec {
        name: "diet.events.user".to_owned(),
        kind: Kind::Event,
        aggregate: Some("user".to_owned()),
    });
    topology.topics.push(TopicSpec {
        name: "diet.dlq.orphan".to_owned(),
        kind: Kind::DeadLetter,
        aggregate: None,
    });
    topology.topics.push(TopicSpec {
        name: "diet_dlq.orphan".to_owned(),
        kind: Kind::DeadLetter,
        aggregate: None,
    });
    topology.consumers[1]
        .reads
        .push("diet.events.food".to_owned());
    topology.consumers[2].dead_letter = "diet.commands".to_owned();

    let problems = topology.problems();
    let expected = [
        "profiles.production: min_insync_replicas is 4",
        "kinds.dead-letter.config: min.compaction.lag.ms is set but cleanup.policy=delete",
        "kinds.snapshot.config: min.cleanable.dirty.ratio is 1.5",
        "kinds.event.config: cleanup.policy=compact,delete and retention.ms=-1",
        "kinds event, snapshot and command have 12, 24 partitions in profile production",
        "topic diet.events.user is listed twice",
        "aggregate type user has more than one event topic",
        "differ only in '.' versus '_'",
        "aggregate type ai needs both an event topic and a snapshot topic",
        "consumer commands: topic diet.snapshots.ai is not in the topology",
        "consumer indexer: topic diet.snapshots.ai is not in the topology",
        "consumer nutrition: topic diet.events.food is not in the topology",
        "consumer engagement: dead_letter diet.commands is a command topic",
        "dead-letter topic diet.dlq.engagement belongs to no consumer",
        "dead-letter topic diet.dlq.orphan belongs to no consumer",
        "dead-letter topic diet_dlq.orphan belongs to no consumer",
    ];
    for fragment in expected {
        assert!(
            problems.iter().any(|p| p.contains(fragment)),
            "no problem mentions {fragment:?}:\n{}",
            problems.join("\n")
        );
    }
    assert_eq!(problems.len(), expected.len(), "{}", problems.join("\n"));
}

#[test]
fn compacted_kinds_must_state_their_compaction_settings() {
    let mut topology = embedded();
    topology.kinds.snapshot.config.delete_retention_ms = None;
    topology.kinds.event.config.max_compaction_lag_ms = Some(-5);
    let problems = topology.problems();
    assert!(
        problems
            .iter()
            .any(|p| p.contains("kinds.snapshot.config: delete.retention.ms is missing")),
        "{problems:?}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p.contains("max.compaction.lag.ms is -5")),
        "{problems:?}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p.contains("is below min.compaction.lag.ms")),
        "{problems:?}"
    );
}

#[test]
fn invalid_topology_error_lists_every_problem() {
    let text = EMBEDDED.replace("min_insync_replicas = 2", "min_insync_replicas = 0");
    let err = Topology::parse(&text).expect_err("invalid topology accepted");
    let TopologyError::Invalid(problems) = &err else {
        panic!("expected rule violations, got {err}");
    };
    assert_eq!(problems.len(), 1, "{err}");
    assert!(
        err.to_string().contains("min_insync_replicas is 0"),
        "{err}"
    );
}

#[test]
fn listing_shows_every_topic_and_group_with_its_settings() {
    let desired = embedded()
        .resolve(Profile::Local, "demo")
        .expect("resolves");
    let listing = desired.to_string();
    assert!(
        listing.starts_with("profile local, prefix \"demo\": 16 topics, 6 consumer groups\n"),
        "{listing}"
    );
    assert!(
        listing.contains(
            "  demo.diet.events.user  [event of user, ordered]  partitions=3 replication.factor=1 cleanup.policy=compact"
        ),
        "{listing}"
    );
    assert!(listing.contains("retention.ms=-1"), "{listing}");
    assert!(
        listing.contains(
            "  demo.dietstream.quests  [processor quests]  reads demo.diet.events.user  writes demo.diet.commands  dead letters to demo.diet.dlq.quests"
        ),
        "{listing}"
    );
    for topic in &desired.topics {
        assert!(listing.contains(&topic.name), "{} not listed", topic.name);
    }
}
