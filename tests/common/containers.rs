//! Fixtures that start the official images (Kafka, ScyllaDB, Apicurio Registry) for one test,
//! for machines with a Docker engine. They stop when the test's `Stack` is dropped.
//!
//! Compiled in CI (`cargo check --features containers --tests`) but not run there: the
//! project's machines have no Docker engine.

use std::net::TcpListener;
use std::time::{Duration, Instant};

use dietstream::config::Config;
use testcontainers::core::{ContainerPort, WaitFor};
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, GenericImage, ImageExt};

const KAFKA_IMAGE: (&str, &str) = ("apache/kafka", "4.1.1");
const SCYLLA_IMAGE: (&str, &str) = ("scylladb/scylla", "2025.1.0");
const REGISTRY_IMAGE: (&str, &str) = ("apicurio/apicurio-registry", "3.3.3");

/// The running containers; dropping this removes them.
pub struct Containers {
    _kafka: ContainerAsync<GenericImage>,
    _scylla: ContainerAsync<GenericImage>,
    _registry: ContainerAsync<GenericImage>,
}

impl Containers {
    /// Starts the three servers and returns a configuration that reaches them once ready.
    pub async fn start() -> (Config, Containers) {
        // Kafka advertises the address clients must dial, so its host port is chosen before
        // the start and mapped one to one.
        let kafka_port = free_port();
        let kafka = GenericImage::new(KAFKA_IMAGE.0, KAFKA_IMAGE.1)
            .with_wait_for(WaitFor::message_on_stdout("Kafka Server started"))
            .with_mapped_port(kafka_port, ContainerPort::Tcp(kafka_port))
            .with_env_var("KAFKA_NODE_ID", "1")
            .with_env_var("KAFKA_PROCESS_ROLES", "broker,controller")
            .with_env_var(
                "KAFKA_LISTENERS",
                format!("PLAINTEXT://0.0.0.0:{kafka_port},CONTROLLER://0.0.0.0:9093"),
            )
            .with_env_var(
                "KAFKA_ADVERTISED_LISTENERS",
                format!("PLAINTEXT://127.0.0.1:{kafka_port}"),
            )
            .with_env_var("KAFKA_CONTROLLER_LISTENER_NAMES", "CONTROLLER")
            .with_env_var("KAFKA_CONTROLLER_QUORUM_VOTERS", "1@localhost:9093")
            .with_env_var("KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR", "1")
            .with_env_var("KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR", "1")
            .with_env_var("KAFKA_TRANSACTION_STATE_LOG_MIN_ISR", "1")
            .with_env_var(
                "KAFKA_SHARE_COORDINATOR_STATE_TOPIC_REPLICATION_FACTOR",
                "1",
            )
            .with_env_var("KAFKA_SHARE_COORDINATOR_STATE_TOPIC_MIN_ISR", "1")
            .with_env_var("KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS", "0")
            .start()
            .await
            .expect("start the Kafka container");

        let scylla = GenericImage::new(SCYLLA_IMAGE.0, SCYLLA_IMAGE.1)
            .with_exposed_port(ContainerPort::Tcp(9042))
            .with_cmd([
                "--smp",
                "1",
                "--memory",
                "750M",
                "--overprovisioned",
                "1",
                "--developer-mode",
                "1",
            ])
            .start()
            .await
            .expect("start the ScyllaDB container");

        let registry = GenericImage::new(REGISTRY_IMAGE.0, REGISTRY_IMAGE.1)
            .with_exposed_port(ContainerPort::Tcp(8080))
            .start()
            .await
            .expect("start the Apicurio Registry container");

        let mut config = Config::default();
        config.kafka.bootstrap_servers = format!("127.0.0.1:{kafka_port}");
        config.cql.contact_points = vec![format!(
            "127.0.0.1:{}",
            scylla
                .get_host_port_ipv4(ContainerPort::Tcp(9042))
                .await
                .expect("ScyllaDB port")
        )];
        config.schema_registry.url = format!(
            "http://127.0.0.1:{}/apis/ccompat/v7",
            registry
                .get_host_port_ipv4(ContainerPort::Tcp(8080))
                .await
                .expect("registry port")
        );
        wait_until_reachable(&config, Duration::from_secs(180)).await;
        (
            config,
            Containers {
                _kafka: kafka,
                _scylla: scylla,
                _registry: registry,
            },
        )
    }
}

/// Polls the real readiness checks until all pass: ScyllaDB and the registry print nothing
/// stable enough to wait for.
async fn wait_until_reachable(config: &Config, limit: Duration) {
    let started = Instant::now();
    loop {
        match super::check_reachable(config).await {
            Ok(()) => return,
            Err(problem) if started.elapsed() > limit => {
                panic!("containers not ready after {limit:?}: {problem}")
            }
            Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free local port")
}
