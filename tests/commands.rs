//! The command processor against the real local Kafka and registry: expected versions under a
//! race, replies to bad input, snapshots and restore, and exactly-once effect across a
//! `kill -9` (events contiguous per aggregate, every command answered once, aborted
//! transactions invisible to `read_committed` readers).

mod common;

use std::collections::{BTreeMap, HashMap};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::commands::{log_water, register};
use common::Stack;
use dietstream::bus::{CommandBus, CommandOutcome};
use dietstream::config::Config;
use dietstream_commands::{CommandsConfig, RunSummary, Topics};
use dietstream_schemas::catalog::Catalog;
use dietstream_schemas::codec::Codec;
use dietstream_schemas::headers;
use dietstream_schemas::types::{AggregateType, CommandResult, RejectionReason};
use dietstream_schemas::Command;
use dietstream_topology::Topology;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::oneshot;
use uuid::Uuid;

const TIMEOUT: Duration = Duration::from_secs(60);

fn topics(config: &Config) -> Topics {
    let desired = Topology::embedded()
        .and_then(|t| t.resolve(config.topology.profile, &config.topology.prefix))
        .expect("topology");
    Topics::from_desired(&desired).expect("topics")
}

/// Starts the command processor in this process; the returned sender stops it. Its log goes
/// to the test output (`RUST_LOG=dietstream_commands=debug` for detail).
fn start(
    config: &Config,
    commands: CommandsConfig,
) -> (
    oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<RunSummary, dietstream_commands::ProcessorError>>,
) {
    common::init_tracing();
    let (stop, stopped) = oneshot::channel::<()>();
    let codec = std::sync::Arc::new(
        Codec::new(
            config.schema_registry.registry().expect("registry"),
            &Catalog::embedded().expect("catalog"),
        )
        .expect("codec"),
    );
    let handle = tokio::spawn(dietstream_commands::run(
        config.kafka.client_config(),
        topics(config),
        codec,
        commands,
        async move {
            let _ = stopped.await;
        },
    ));
    (stop, handle)
}

async fn execute(bus: &CommandBus, command: Command) -> CommandOutcome {
    bus.execute(command, TIMEOUT).await.expect("a result")
}

#[tokio::test]
async fn two_writers_with_the_same_expected_version_one_wins() {
    let stack = Stack::get().await;
    let config = stack.with_topology().await;
    let (stop, processor) = start(&config, CommandsConfig::default());
    let bus = CommandBus::from_config(&config, "test").await.expect("bus");
    let user = format!("{}-racer", stack.prefix);
    assert_eq!(execute(&bus, register(&user)).await.new_version(), Some(1));

    let (first, second) = tokio::join!(
        execute(&bus, log_water(&user, Some(1), 250)),
        execute(&bus, log_water(&user, Some(1), 300)),
    );
    let (winner, loser) = if first.is_accepted() {
        (first, second)
    } else {
        (second, first)
    };
    assert_eq!(winner.new_version(), Some(2), "{winner:?}");
    match loser {
        CommandOutcome::Rejected {
            reason: RejectionReason::ConcurrencyConflict,
            expected_version: Some(1),
            current_version: Some(2),
            ..
        } => {}
        other => panic!("the second writer must get a concurrency conflict, got {other:?}"),
    }

    // Correlation and causation ids flow from the command to its events and its result.
    let correlation = Uuid::new_v4();
    let mut command = log_water(&user, None, 100);
    command.header_mut().correlation_id = Some(correlation);
    let command_id = command.header().command_id;
    let result = bus.execute_raw(command, TIMEOUT).await.expect("a result");
    assert_eq!(
        (result.command_id, result.correlation_id),
        (command_id, Some(correlation))
    );
    let codec = Codec::new(
        config.schema_registry.registry().expect("registry"),
        &Catalog::embedded().expect("catalog"),
    )
    .expect("codec");
    let user_events = topics(&config)
        .events_of(dietstream_commands::domain::AggregateKind::User)
        .to_owned();
    let mut caused = 0;
    for record in read_all(&stack, &user_events, true) {
        let event = codec
            .decode_event(record.value.as_deref().expect("value"))
            .await
            .expect("an event");
        let header = event.header();
        if header.causation_id == Some(command_id) {
            caused += 1;
            assert_eq!(header.correlation_id, Some(correlation));
        } else {
            assert_eq!(
                header.correlation_id, header.causation_id,
                "no correlation given"
            );
        }
    }
    assert!(caused >= 1, "the command's events name it as their cause");

    stop.send(()).expect("processor running");
    let summary = processor.await.expect("joined").expect("clean stop");
    assert_eq!((summary.accepted, summary.rejected), (3, 1));
}

#[tokio::test]
async fn bad_input_is_answered_or_dead_lettered_and_the_processor_goes_on() {
    let stack = Stack::get().await;
    let config = stack.with_topology().await;
    let topics = topics(&config);
    let (stop, processor) = start(&config, CommandsConfig::default());
    let bus = CommandBus::from_config(&config, "test").await.expect("bus");

    // Bytes that are no Avro record at all, on the partition of their key, with a header
    // whose name is not UTF-8 (written by hand: no client library writes one, and
    // rust-rdkafka panics when it reads one). The commands topic keeps a batch as the
    // producer wrote it (`compression.type=producer`).
    let key = format!("{}-garbage", stack.prefix);
    common::raw_produce::produce(
        &config.kafka.bootstrap_servers,
        &topics.commands,
        dietstream_topology::partition_for(&key, topics.partitions),
        &common::raw_produce::RawRecord {
            key: key.as_bytes(),
            value: b"\x07not avro",
            headers: &[(b"trace", b"abc"), (b"\xffnot utf-8", b"x")],
            timestamp_ms: common::raw_produce::now_ms(),
            zstd: false,
        },
    )
    .expect("garbage sent");

    // A command addressed to an aggregate type the processor does not own.
    let user = format!("{}-system", stack.prefix);
    let mut command = log_water(&user, None, 200);
    command.header_mut().aggregate_type = AggregateType::System;
    match execute(&bus, command).await {
        CommandOutcome::Rejected {
            reason: RejectionReason::UnknownAggregate,
            ..
        } => {}
        other => panic!("expected UNKNOWN_AGGREGATE, got {other:?}"),
    }
    // A command for a user that was never registered.
    let ghost = format!("{}-ghost", stack.prefix);
    assert_eq!(
        execute(&bus, log_water(&ghost, None, 200))
            .await
            .rejection_reason(),
        Some(RejectionReason::UnknownAggregate)
    );
    // Invalid values are a validation error naming the field.
    let user = format!("{}-valid", stack.prefix);
    assert!(execute(&bus, register(&user)).await.is_accepted());
    match execute(&bus, log_water(&user, None, -5)).await {
        CommandOutcome::Rejected {
            reason: RejectionReason::ValidationError,
            field,
            ..
        } => {
            assert_eq!(field.as_deref(), Some("payload.millilitres"));
        }
        other => panic!("expected VALIDATION_ERROR, got {other:?}"),
    }
    assert_eq!(
        execute(&bus, log_water(&user, None, 500))
            .await
            .new_version(),
        Some(2)
    );

    let letters = read_all(&stack, &topics.dead_letter, true);
    assert_eq!(letters.len(), 1, "one dead letter");
    let letter = &letters[0];
    assert_eq!(
        letter.value.as_deref(),
        Some(b"\x07not avro".as_slice()),
        "value kept byte for byte"
    );
    assert_eq!(letter.key.as_deref(), Some(key.as_str()));
    assert_eq!(letter.header(headers::DLQ_ERROR_CLASS), Some("bad_magic"));
    assert_eq!(
        letter.header(headers::DLQ_ORIGINAL_TOPIC),
        Some(topics.commands.as_str())
    );
    assert_eq!(letter.header(headers::DLQ_PROCESSOR), Some("commands"));
    assert!(letter
        .header(headers::DLQ_ERROR_MESSAGE)
        .is_some_and(|m| m.contains("not the Confluent wire format")));
    assert_eq!(
        letter.header("trace"),
        Some("abc"),
        "the readable original header is kept"
    );

    stop.send(()).expect("processor running");
    let summary = processor.await.expect("joined").expect("clean stop");
    assert_eq!(summary.dead_lettered, 1);
}

#[tokio::test]
async fn a_restarted_processor_restores_its_aggregates_from_snapshots_and_events() {
    let stack = Stack::get().await;
    let config = stack.with_topology().await;
    let topics = topics(&config);
    let settings = CommandsConfig {
        snapshot_every: 3,
        ..CommandsConfig::default()
    };
    let (stop, processor) = start(&config, settings.clone());
    let bus = CommandBus::from_config(&config, "test").await.expect("bus");
    let user = format!("{}-restored", stack.prefix);
    assert!(execute(&bus, register(&user)).await.is_accepted());
    for version in 1..5 {
        let outcome = execute(&bus, log_water(&user, Some(version), 100)).await;
        assert_eq!(outcome.new_version(), Some(version + 1), "{outcome:?}");
    }
    stop.send(()).expect("processor running");
    let first = processor.await.expect("joined").expect("clean stop");
    assert_eq!(first.snapshots, 1, "one snapshot, at version 3");
    let snapshots = read_all(
        &stack,
        topics.snapshots_of(dietstream_commands::domain::AggregateKind::User),
        true,
    );
    assert_eq!(snapshots.len(), 1);
    assert_eq!(snapshots[0].key.as_deref(), Some(user.as_str()));

    // A new run knows version 5 only if it restored the snapshot (3) and the events after it.
    let (stop, processor) = start(&config, settings);
    match execute(&bus, log_water(&user, Some(4), 100)).await {
        CommandOutcome::Rejected {
            reason: RejectionReason::ConcurrencyConflict,
            current_version: Some(5),
            ..
        } => {}
        other => panic!("expected a conflict naming version 5, got {other:?}"),
    }
    assert_eq!(
        execute(&bus, log_water(&user, Some(5), 100))
            .await
            .new_version(),
        Some(6)
    );
    stop.send(()).expect("processor running");
    processor.await.expect("joined").expect("clean stop");
}

/// One record as read back.
#[derive(Debug, Clone)]
struct Read {
    partition: i32,
    key: Option<String>,
    value: Option<Vec<u8>>,
    headers: Vec<(String, String)>,
}

impl Read {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Every record of every partition of `topic` up to its current end.
fn read_all(stack: &Stack, topic: &str, committed: bool) -> Vec<Read> {
    let consumer: BaseConsumer = stack
        .consumer_config()
        .set("enable.partition.eof", "true")
        .set(
            "isolation.level",
            if committed {
                "read_committed"
            } else {
                "read_uncommitted"
            },
        )
        .create()
        .expect("consumer");
    let metadata = consumer
        .fetch_metadata(Some(topic), TIMEOUT)
        .expect("metadata");
    let partitions: Vec<i32> = metadata.topics()[0]
        .partitions()
        .iter()
        .map(|p| p.id())
        .collect();
    let mut assignment = TopicPartitionList::new();
    for partition in &partitions {
        assignment
            .add_partition_offset(topic, *partition, Offset::Beginning)
            .expect("partition");
    }
    consumer.assign(&assignment).expect("assign");
    let mut at_end = 0;
    let mut records = Vec::new();
    let deadline = Instant::now() + TIMEOUT;
    while at_end < partitions.len() {
        assert!(
            Instant::now() < deadline,
            "{topic} not read to its end in time"
        );
        match consumer.poll(Duration::from_millis(500)) {
            Some(Ok(message)) => records.push(Read {
                partition: message.partition(),
                key: message
                    .key()
                    .map(|k| String::from_utf8_lossy(k).into_owned()),
                value: message.payload().map(<[u8]>::to_vec),
                headers: message
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| {
                                (
                                    h.key.to_owned(),
                                    String::from_utf8_lossy(h.value.unwrap_or_default())
                                        .into_owned(),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
            }),
            Some(Err(KafkaError::PartitionEOF(_))) => at_end += 1,
            Some(Err(e)) => panic!("reading {topic}: {e}"),
            None => {}
        }
    }
    records
}

/// `dietstream run commands` as a child process, configured through the environment.
fn spawn_processor(config: &Config) -> Child {
    common::dietstream_command(config)
        .args(["run", "commands"])
        // Long transactions, so that the kill below finds one open with records in it.
        .env("DIETSTREAM_COMMANDS__COMMIT_INTERVAL", "2s")
        .env(
            "DIETSTREAM_COMMANDS__MAX_COMMANDS_PER_TRANSACTION",
            "100000",
        )
        .env("DIETSTREAM_COMMANDS__SNAPSHOT_EVERY", "7")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()
        .expect("dietstream binary starts")
}

/// High watermarks of `topic` as a reader with the given isolation level sees them (for
/// `read_committed` that is the last stable offset).
fn ends(stack: &Stack, topic: &str, committed: bool, partitions: i32) -> Vec<i64> {
    let consumer: BaseConsumer = stack
        .consumer_config()
        .set(
            "isolation.level",
            if committed {
                "read_committed"
            } else {
                "read_uncommitted"
            },
        )
        .create()
        .expect("consumer");
    (0..partitions)
        .map(|p| {
            consumer
                .fetch_watermarks(topic, p, TIMEOUT)
                .expect("watermarks")
                .1
        })
        .collect()
}

#[tokio::test]
async fn kill_9_mid_run_loses_duplicates_and_reorders_nothing() {
    const USERS: usize = 20;
    const LOGS_PER_USER: usize = 60;
    let stack = Stack::get().await;
    let config = stack.with_topology().await;
    let topics = topics(&config);
    let user_events = topics
        .events_of(dietstream_commands::domain::AggregateKind::User)
        .to_owned();
    let bus = CommandBus::from_config(&config, "test").await.expect("bus");
    let users: Vec<String> = (0..USERS)
        .map(|i| format!("{}-u{i}", stack.prefix))
        .collect();
    let mut sent: Vec<Uuid> = Vec::new();
    let mut child = spawn_processor(&config);

    // Registrations first (each user's commands share a partition, so order holds), then the
    // water logs, sent without waiting for their results.
    for user in &users {
        let command = register(user);
        sent.push(command.header().command_id);
        bus.send(&command).await.expect("sent");
    }
    let mut killed = false;
    for round in 0..LOGS_PER_USER {
        for user in &users {
            let command = log_water(user, None, 100 + round as i32);
            sent.push(command.header().command_id);
            bus.send(&command).await.expect("sent");
        }
        // Kill once a transaction is open with events in it: the uncommitted end of the event
        // topic is ahead of what read_committed readers may see.
        if !killed && round >= LOGS_PER_USER / 3 {
            let open = ends(&stack, &user_events, false, topics.partitions)
                .iter()
                .zip(ends(&stack, &user_events, true, topics.partitions))
                .any(|(uncommitted, committed)| *uncommitted > committed);
            if open {
                child.kill().expect("kill -9");
                child.wait().expect("reaped");
                child = spawn_processor(&config);
                killed = true;
            }
        }
    }
    assert!(
        killed,
        "never saw an open transaction to kill the processor in"
    );

    // Every command answered exactly once.
    let deadline = Instant::now() + Duration::from_secs(120);
    let codec = Codec::new(
        config.schema_registry.registry().expect("registry"),
        &Catalog::embedded().expect("catalog"),
    )
    .expect("codec");
    let results = loop {
        let records = read_all(&stack, &topics.results, true);
        if records.len() >= sent.len() || Instant::now() > deadline {
            break records;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let mut answered: HashMap<Uuid, usize> = HashMap::new();
    for record in &results {
        let result: CommandResult = codec
            .decode(record.value.as_deref().expect("value"))
            .await
            .expect("a command result");
        *answered.entry(result.command_id).or_default() += 1;
    }
    for id in &sent {
        assert_eq!(
            answered.get(id),
            Some(&1),
            "command {id} answered {:?} times",
            answered.get(id)
        );
    }
    assert_eq!(
        results.len(),
        sent.len(),
        "no result for a command that was not sent"
    );

    // Events: versions 1..=n per aggregate, in log order, nothing twice, nothing missing.
    let events = read_all(&stack, &user_events, true);
    let mut versions: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for record in &events {
        let key = record.key.as_deref().expect("event key");
        let (aggregate, version) = key.rsplit_once('/').expect("<id>/<version>");
        assert_eq!(
            record.partition,
            dietstream_topology::partition_for(aggregate, topics.partitions)
        );
        versions
            .entry(aggregate.to_owned())
            .or_default()
            .push(version.parse().expect("numeric version"));
    }
    assert_eq!(versions.len(), USERS);
    for (aggregate, versions) in &versions {
        let expected: Vec<i64> = (1..=(1 + LOGS_PER_USER as i64)).collect();
        assert_eq!(versions, &expected, "versions of {aggregate}");
    }
    // The transaction open at the kill was aborted: its records are in the log, and only a
    // read_uncommitted reader returns them.
    let all = read_all(&stack, &user_events, false);
    assert!(
        all.len() > events.len(),
        "the aborted transaction's events are in the log ({} records) but not visible ({} committed)",
        all.len(),
        events.len()
    );

    child.kill().expect("stop the processor");
    child.wait().expect("reaped");
}

/// Versions per aggregate on `topic` (committed records only), in log order.
fn versions_by_aggregate(
    stack: &Stack,
    topic: &str,
    partitions: i32,
) -> BTreeMap<String, Vec<i64>> {
    let mut versions: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for record in read_all(stack, topic, true) {
        let key = record.key.as_deref().expect("event key");
        let (aggregate, version) = key.rsplit_once('/').expect("<id>/<version>");
        assert_eq!(
            record.partition,
            dietstream_topology::partition_for(aggregate, partitions),
            "{key} on the partition of its aggregate"
        );
        versions
            .entry(aggregate.to_owned())
            .or_default()
            .push(version.parse().expect("numeric version"));
    }
    versions
}

#[tokio::test]
async fn a_simulator_run_answers_every_command_and_leaves_contiguous_versions() {
    use dietstream::simulate::{GeneratorConfig, SimulateOptions};
    use dietstream_commands::domain::AggregateKind;

    let stack = Stack::get().await;
    let config = stack.with_topology().await;
    let topics = topics(&config);
    let (stop, processor) = start(&config, CommandsConfig::default());
    let bus = std::sync::Arc::new(
        CommandBus::from_config(&config, "simulator")
            .await
            .expect("bus"),
    );
    let mut generator = GeneratorConfig::new(11, 40);
    generator.user_prefix = format!("{}-sim", stack.prefix);
    generator.invalid_rate = 0.05;
    let record = std::env::temp_dir().join(format!("{}-simulation.jsonl", stack.prefix));
    let summary = dietstream::simulate::run(
        bus,
        SimulateOptions {
            generator,
            rate: 400.0,
            duration: None,
            max_commands: Some(1_500),
            timeout: TIMEOUT,
            record: Some(record.clone()),
            progress: false,
        },
        std::future::pending(),
    )
    .await
    .expect("simulation runs");

    // Every command answered, each as the simulator expected.
    assert_eq!((summary.timeouts, summary.errors), (0, 0), "{summary:?}");
    assert_eq!(
        summary.sent,
        summary.accepted + summary.rejected_total(),
        "{summary:?}"
    );
    assert!(
        summary.deliberate > 0,
        "some invalid commands on purpose: {summary:?}"
    );
    assert_eq!(summary.deliberate_accepted, 0, "{summary:?}");
    assert_eq!(summary.unexpected_rejections, 0, "{summary:?}");
    assert!(
        summary
            .rejected
            .get("CONCURRENCY_CONFLICT")
            .copied()
            .unwrap_or(0)
            > 0,
        "stale versions among the invalid commands: {summary:?}"
    );

    // The record file: one line per command sent; the highest accepted version of each
    // aggregate is how many events it has.
    let text = std::fs::read_to_string(&record).expect("record file");
    let _ = std::fs::remove_file(&record);
    // Aggregate ids are unique per kind only (a player's AI coaching shares the user id).
    let mut newest: BTreeMap<(AggregateKind, String), i64> = BTreeMap::new();
    let mut lines = 0;
    for line in text.lines() {
        lines += 1;
        let line: serde_json::Value = serde_json::from_str(line).expect("JSON line");
        if let Some(version) = line["result"]["new_version"].as_i64().filter(|v| *v > 0) {
            let aggregate = line["aggregate_id"]
                .as_str()
                .expect("aggregate_id")
                .to_owned();
            let command_type = line["command_type"].as_str().expect("command_type");
            let kind = match command_type.split('.').next() {
                Some("social") => AggregateKind::Social,
                Some("ai") => AggregateKind::Ai,
                _ => AggregateKind::User,
            };
            let entry = newest.entry((kind, aggregate)).or_default();
            *entry = (*entry).max(version);
        }
    }
    assert_eq!(lines, summary.sent);

    // The event topics: versions 1..=n per aggregate, in log order, nothing twice or missing,
    // and n is the last version a result announced.
    let mut seen: BTreeMap<(AggregateKind, String), i64> = BTreeMap::new();
    for kind in [
        AggregateKind::User,
        AggregateKind::Social,
        AggregateKind::Ai,
    ] {
        let versions = versions_by_aggregate(&stack, topics.events_of(kind), topics.partitions);
        for (aggregate, versions) in versions {
            let expected: Vec<i64> = (1..=versions.len() as i64).collect();
            assert_eq!(versions, expected, "versions of {kind:?} {aggregate}");
            seen.insert((kind, aggregate), expected.len() as i64);
        }
    }
    assert_eq!(seen, newest, "events per aggregate against the results");

    stop.send(()).expect("processor running");
    let run = processor
        .await
        .expect("task")
        .expect("processor stopped cleanly");
    assert_eq!(run.accepted, summary.accepted);
}
