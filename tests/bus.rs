//! The command bus and the simulator against the real local Kafka and registry, with a tiny
//! responder standing in for the command processor: it reads the test's commands topic and
//! answers each command on the results topic as the contract says (key = aggregate id,
//! partition = partition_for(aggregate id), `event_type` = `command.result`).

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::Stack;
use dietstream::bus::{
    BusCodec, BusError, BusOptions, CommandBus, CommandOutcome, ROUTING_KEY_HEADER, SOURCE_HEADER,
};
use dietstream::config::Config;
use dietstream::kafka::ensure_topic;
use dietstream::simulate::{self, GeneratorConfig, SimulateOptions};
use dietstream_schemas::catalog::Catalog;
use dietstream_schemas::codec::{Codec, Record, RECORD_TYPE_HEADER};
use dietstream_schemas::types::{
    Accepted, AggregateType, CommandHeader, CommandResult, LogWater, LogWaterPayload, Rejected,
    RejectionReason, UnionAcceptedRejected,
};
use dietstream_schemas::Command;
use dietstream_topology::partition_for;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use uuid::Uuid;

const TIMEOUT: Duration = Duration::from_secs(30);
const PARTITIONS: i32 = 3;

/// What the responder saw of one command on the wire.
#[derive(Debug, Clone)]
struct Seen {
    key: String,
    partition: i32,
    headers: HashMap<String, String>,
}

/// The stack, a config whose topology prefix is the test's own, and both topics created.
async fn setup() -> (Stack, Config) {
    let stack = Stack::get().await;
    let mut config = stack.config.clone();
    config.topology.prefix = stack.prefix.clone();
    let options = BusOptions::from_config(&config, "test").expect("options");
    for topic in [&options.commands_topic, &options.results_topic] {
        ensure_topic(&stack.admin(), topic, PARTITIONS, &[], TIMEOUT)
            .await
            .expect("create topic");
    }
    (stack, config)
}

fn codec(config: &Config) -> Arc<BusCodec> {
    Arc::new(
        Codec::new(
            config.schema_registry.registry().expect("registry"),
            &Catalog::embedded().expect("catalog"),
        )
        .expect("codec"),
    )
}

/// Answers every command like a command processor that checks expected versions and rejects
/// meals with negative energy or no items; event ids echo the command id, so a test can tell
/// whose result it got.
fn spawn_responder(stack: &Stack, config: &Config) -> Arc<Mutex<Vec<Seen>>> {
    let options = BusOptions::from_config(config, "responder").expect("options");
    let consumer: StreamConsumer = stack
        .consumer_config()
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("consumer");
    consumer
        .subscribe(&[&options.commands_topic])
        .expect("subscribe");
    let producer: FutureProducer = stack.producer();
    let codec = codec(config);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    tokio::spawn(async move {
        let mut versions: HashMap<(AggregateType, String), i64> = HashMap::new();
        loop {
            let message = consumer.recv().await.expect("consume command");
            let headers = message
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| {
                            let value = String::from_utf8_lossy(h.value.unwrap_or_default());
                            (h.key.to_owned(), value.into_owned())
                        })
                        .collect()
                })
                .unwrap_or_default();
            log.lock().expect("log").push(Seen {
                key: String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned(),
                partition: message.partition(),
                headers,
            });
            let command = codec
                .decode_command(message.payload().unwrap_or_default())
                .await
                .expect("decode command");
            let header = command.header().clone();
            let key = (header.aggregate_type, header.aggregate_id.clone());
            let current = versions.get(&key).copied().unwrap_or(0);
            let invalid = match &command {
                Command::LogMeal(m) => {
                    m.payload.items.is_empty()
                        || m.payload.items.iter().any(|i| i.energy_kcal < 0.0)
                }
                _ => false,
            };
            let reject = |reason, current_version| {
                UnionAcceptedRejected::Rejected(Rejected {
                    reason,
                    message: "rejected by the test responder".to_owned(),
                    field: None,
                    expected_version: header.expected_version,
                    current_version,
                })
            };
            let outcome = if header.expected_version.is_some_and(|v| v != current) {
                reject(RejectionReason::ConcurrencyConflict, Some(current))
            } else if invalid {
                reject(RejectionReason::ValidationError, None)
            } else {
                versions.insert(key, current + 1);
                UnionAcceptedRejected::Accepted(Accepted {
                    new_version: current + 1,
                    event_ids: vec![header.command_id],
                })
            };
            let result = CommandResult {
                command_id: header.command_id,
                command_type: header.command_type.clone(),
                aggregate_id: header.aggregate_id.clone(),
                correlation_id: header.correlation_id,
                processed_at: header.issued_at,
                outcome,
            };
            let payload = codec
                .encode(&options.results_topic, &result)
                .await
                .expect("encode result");
            producer
                .send(
                    FutureRecord::to(&options.results_topic)
                        .key(&header.aggregate_id)
                        .partition(partition_for(&header.aggregate_id, PARTITIONS))
                        .payload(&payload)
                        .headers(OwnedHeaders::new().insert(Header {
                            key: RECORD_TYPE_HEADER,
                            value: Some(CommandResult::RECORD_TYPE),
                        })),
                    TIMEOUT,
                )
                .await
                .map_err(|(e, _)| e)
                .expect("send result");
        }
    });
    seen
}

fn log_water(user: &str, expected_version: Option<i64>) -> Command {
    Command::LogWater(LogWater {
        header: CommandHeader {
            command_id: Uuid::new_v4(),
            command_type: LogWater::RECORD_TYPE.to_owned(),
            aggregate_id: user.to_owned(),
            aggregate_type: AggregateType::User,
            expected_version,
            issued_at: 1_700_000_000_000_000,
            user_id: Some(user.to_owned()),
            session_id: None,
            correlation_id: None,
            causation_id: None,
            metadata: HashMap::new(),
        },
        payload: LogWaterPayload {
            intake_id: Uuid::new_v4(),
            millilitres: 250,
            drunk_at: 1_700_000_000_000_000,
        },
    })
}

#[tokio::test]
async fn concurrent_executes_each_get_their_own_result() {
    let (stack, config) = setup().await;
    let seen = spawn_responder(&stack, &config);
    let bus = CommandBus::from_config(&config, "game-api")
        .await
        .expect("bus");

    let commands: Vec<Command> = (0..12)
        .map(|i| log_water(&format!("{}-user-{i}", stack.prefix), None))
        .collect();
    let outcomes =
        futures::future::join_all(commands.iter().map(|c| bus.execute(c.clone(), TIMEOUT))).await;
    for (command, outcome) in commands.iter().zip(outcomes) {
        let id = command.header().command_id;
        assert_eq!(
            outcome.expect("result"),
            CommandOutcome::Accepted {
                new_version: 1,
                event_ids: vec![id]
            }
        );
    }

    // A stale expected version comes back as the responder's rejection, with both versions.
    let user = format!("{}-user-0", stack.prefix);
    let stale = bus
        .execute(log_water(&user, Some(0)), TIMEOUT)
        .await
        .expect("result");
    assert_eq!(
        stale.rejection_reason(),
        Some(RejectionReason::ConcurrencyConflict)
    );
    assert!(matches!(
        stale,
        CommandOutcome::Rejected {
            expected_version: Some(0),
            current_version: Some(1),
            ..
        }
    ));
    let next = bus
        .execute(log_water(&user, Some(1)), TIMEOUT)
        .await
        .expect("result");
    assert_eq!(next.new_version(), Some(2));
    assert_eq!(bus.pending(), 0);

    // Key, partition and headers as the contract says.
    let seen = seen.lock().expect("seen").clone();
    assert_eq!(seen.len(), 14);
    for record in &seen {
        assert_eq!(record.partition, partition_for(&record.key, PARTITIONS));
        assert_eq!(record.headers[RECORD_TYPE_HEADER], "nutrition.water.log");
        assert_eq!(record.headers[SOURCE_HEADER], "game-api");
        assert_eq!(record.headers[ROUTING_KEY_HEADER], record.key);
    }
}

#[tokio::test]
async fn execute_times_out_when_nobody_answers() {
    let (_stack, config) = setup().await;
    let bus = CommandBus::from_config(&config, "game-api")
        .await
        .expect("bus");
    let command = log_water("nobody-listens", Some(0));
    let id = command.header().command_id;
    let timeout = Duration::from_secs(2);
    let error = bus
        .execute(command.clone(), timeout)
        .await
        .expect_err("no responder");
    let BusError::Timeout {
        command_id,
        timeout: waited,
    } = error
    else {
        panic!("expected a timeout, got {error:?}");
    };
    assert_eq!((command_id, waited), (id, timeout));
    assert!(error.is_retryable());
    assert_eq!(bus.pending(), 0, "the waiter is removed after a timeout");
}

#[tokio::test]
async fn bus_refuses_a_missing_topic() {
    let stack = Stack::get().await;
    let mut config = stack.config.clone();
    config.topology.prefix = stack.prefix.clone();
    let error = CommandBus::from_config(&config, "game-api")
        .await
        .expect_err("topics do not exist");
    assert!(matches!(error, BusError::MissingTopic { .. }), "{error:?}");
}

#[tokio::test]
async fn simulator_runs_end_to_end_against_a_responder() {
    let (stack, config) = setup().await;
    spawn_responder(&stack, &config);
    let bus = Arc::new(
        CommandBus::from_config(&config, "simulator")
            .await
            .expect("bus"),
    );
    let record = std::env::temp_dir().join(format!("{}.jsonl", stack.prefix));
    let mut generator = GeneratorConfig::new(99, 4);
    generator.user_prefix = format!("{}-sim", stack.prefix);
    generator.invalid_rate = 0.1;
    let options = SimulateOptions {
        generator,
        rate: 200.0,
        duration: Some(Duration::from_secs(60)),
        max_commands: Some(80),
        timeout: TIMEOUT,
        record: Some(record.clone()),
        progress: false,
    };
    let summary = simulate::run(bus, options, std::future::pending())
        .await
        .expect("run");
    assert_eq!(summary.sent, 80, "{summary}");
    assert_eq!(summary.accepted + summary.rejected_total(), 80, "{summary}");
    assert_eq!(summary.timeouts + summary.errors, 0, "{summary}");
    // Versions sent are exact: only deliberately invalid commands are rejected.
    assert_eq!(summary.unexpected_rejections, 0, "{summary}");

    let text = std::fs::read_to_string(&record).expect("record file");
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    assert_eq!(lines.len(), 80);
    for line in &lines {
        assert!(line["command_id"].is_string());
        assert_eq!(
            line["command"]["header"]["command_type"], line["command_type"],
            "{line}"
        );
        assert!(
            ["accepted", "rejected"].contains(&line["result"]["outcome"].as_str().unwrap_or("")),
            "{line}"
        );
    }
    let _ = std::fs::remove_file(record);
}
