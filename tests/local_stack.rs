//! The local stack itself (`infra/local/stack`): `up` on a running stack changes nothing,
//! `down` twice is fine, a taken port stops `up` with its name and setting, and schemas,
//! records and rows survive `down` + `up`.
//!
//! It stops and starts the shared local stack, so it lives alone in this test binary: cargo
//! runs test binaries one after another, never beside the other integration tests. It needs
//! the harness to point at the local stack, not at another cluster.

#![cfg(not(feature = "containers"))]

mod common;

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use common::Stack;
use dietstream::roundtrip::{self, RoundTripOptions};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use uuid::Uuid;

fn stack_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("infra/local/stack")
}

fn run_stack(arg: &str) -> Output {
    let output = Command::new(stack_script())
        .arg(arg)
        .output()
        .unwrap_or_else(|e| panic!("cannot run infra/local/stack {arg}: {e}"));
    eprintln!(
        "--- stack {arg}: {}\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn stack_ok(arg: &str) -> Output {
    let output = run_stack(arg);
    assert!(output.status.success(), "stack {arg} failed");
    output
}

/// The pids `stack status` reports, in its order (kafka, cassandra, registry).
fn pids(status: &Output) -> Vec<String> {
    String::from_utf8_lossy(&status.stdout)
        .lines()
        .filter_map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            let at = words.iter().position(|w| *w == "pid")?;
            words.get(at + 1).map(|pid| (*pid).to_owned())
        })
        .collect()
}

fn kafka_port(stack: &Stack) -> u16 {
    stack
        .config
        .kafka
        .bootstrap_servers
        .rsplit_once(':')
        .and_then(|(_, port)| port.parse().ok())
        .expect("bootstrap_servers is host:port")
}

#[tokio::test]
async fn local_stack_is_idempotent_reports_taken_ports_and_keeps_data_across_restarts() {
    let stack = Stack::get().await;
    let env = String::from_utf8_lossy(&stack_ok("env").stdout).into_owned();
    assert!(
        env.contains(&stack.config.kafka.bootstrap_servers)
            && env.contains(&stack.config.schema_registry.url),
        "this test restarts the local stack, but the harness points elsewhere:\n{env}"
    );

    // Data in all three servers: a registered schema, a record, a row.
    let mut config = stack.config.clone();
    config.cql.keyspace = common::unique_name("ks");
    let options = RoundTripOptions {
        topic: stack.topic("restart"),
        ..RoundTripOptions::default()
    };
    let before = roundtrip::run(&config, &options, |_| {})
        .await
        .expect("round trip before the restart");

    // `up` on a running stack leaves every server as it is.
    let pids_before = pids(&stack_ok("status"));
    assert_eq!(pids_before.len(), 3, "three servers running");
    stack_ok("up");
    assert_eq!(
        pids(&stack_ok("status")),
        pids_before,
        "up restarted a server"
    );

    // `down` twice is fine; then nothing runs.
    stack_ok("down");
    stack_ok("down");
    let status = run_stack("status");
    assert!(
        !status.status.success(),
        "status succeeded on a stopped stack"
    );
    assert_eq!(
        String::from_utf8_lossy(&status.stdout)
            .matches("stopped")
            .count(),
        3
    );

    // A port held by someone else stops `up` before anything starts, naming port and setting.
    let port = kafka_port(&stack);
    let squatter = TcpListener::bind(("127.0.0.1", port)).expect("bind the Kafka port");
    let refused = run_stack("up");
    assert!(!refused.status.success(), "up succeeded on a taken port");
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(
        message.contains(&format!("port {port}")) && message.contains("STACK_KAFKA_PORT"),
        "{message}"
    );
    drop(squatter);
    let status = run_stack("status");
    assert_eq!(
        String::from_utf8_lossy(&status.stdout)
            .matches("stopped")
            .count(),
        3,
        "a refused up started something"
    );

    stack_ok("up");
    let pids_after = pids(&stack_ok("status"));
    assert_eq!(pids_after.len(), 3);
    assert!(
        pids_after.iter().all(|pid| !pids_before.contains(pid)),
        "servers were not restarted"
    );

    // The registry still serves the schema by the id stored in the record.
    let schema: serde_json::Value = reqwest::get(format!(
        "{}/schemas/ids/{}",
        config.schema_registry.url, before.schema_id
    ))
    .await
    .expect("GET schema by id")
    .json()
    .await
    .expect("schema JSON");
    assert_eq!(
        apache_avro::Schema::parse_str(schema["schema"].as_str().expect("schema text"))
            .expect("schema parses"),
        apache_avro::Schema::parse_str(roundtrip::SCHEMA).expect("probe schema")
    );

    // Kafka still holds the record at its offset.
    let consumer: BaseConsumer = stack.consumer_config().create().expect("consumer");
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(
            &options.topic,
            before.partition,
            Offset::Offset(before.offset),
        )
        .expect("partition");
    consumer.assign(&assignment).expect("assign");
    let key = tokio::task::spawn_blocking(move || {
        consumer
            .poll(Duration::from_secs(30))
            .map(|m| m.map(|m| m.key().map(<[u8]>::to_vec)))
    })
    .await
    .expect("poll task")
    .expect("a record after the restart")
    .expect("consume");
    assert_eq!(key, Some(before.id.to_string().into_bytes()));

    // CQL still holds the row.
    let session = config.cql.session().await.expect("CQL session");
    let (id,): (Uuid,) = session
        .query_unpaged(
            format!(
                "SELECT id FROM {}.{} WHERE id = ?",
                config.cql.keyspace, options.table
            ),
            (before.id,),
        )
        .await
        .expect("select")
        .into_rows_result()
        .expect("rows")
        .single_row()
        .expect("the row survived");
    assert_eq!(id, before.id);

    // And the whole path works again.
    let after = roundtrip::run(&config, &options, |_| {})
        .await
        .expect("round trip after the restart");
    assert_eq!(after.schema_id, before.schema_id);
    assert_eq!(after.offset, before.offset + 1);
}
