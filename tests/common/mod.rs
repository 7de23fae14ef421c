//! Shared harness of the integration tests: the stack's addresses, unique names, readiness.
//!
//! Addresses come from the same layered configuration as the binary (defaults = the local
//! stack of `infra/local`, overridden by `DIETSTREAM_*` variables, e.g. what `make env`
//! prints). Every test gets its own topic prefix and keyspace, so tests run in parallel and
//! again without cleanup. A test that passes removes its topics and keyspaces when its
//! [`Stack`] is dropped, so a long-lived local stack does not pile up thousands of partitions
//! (Kafka then takes minutes to start); a failing test keeps them to look at, and so does
//! every test with `DIETSTREAM_TEST_KEEP=1`. With the `containers` feature the harness starts
//! the official images instead (needs a Docker engine).

#![allow(dead_code, unreachable_pub)]

pub mod commands;
#[cfg(feature = "containers")]
mod containers;
pub mod dead_letters;
pub mod events;
pub mod oracle;
pub mod raw_produce;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use dietstream::config::Config;
use dietstream_schemas::catalog::Catalog;
use dietstream_schemas::codec::{Codec, CodecError};
use dietstream_schemas::{Command, Event};
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, FutureProducer, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use scylla::client::session::Session;

/// A reachable stack and the configuration that reaches it.
pub struct Stack {
    /// Addresses of Kafka, the registry and CQL.
    pub config: Config,
    /// Names unique to this test: topics and keyspaces derive from it.
    pub prefix: String,
    /// Keyspaces [`Stack::keyspace`] created, dropped with the topics when a test passes.
    keyspaces: Mutex<Vec<String>>,
    #[cfg(feature = "containers")]
    _containers: containers::Containers,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A name no other test, and no earlier run, uses: process id, random bits, counter.
pub fn unique_name(kind: &str) -> String {
    format!(
        "it_{kind}_{:x}_{:08x}_{}",
        std::process::id(),
        rand::random::<u32>(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Sends the log of the code under test to the test output, at `warn` unless `RUST_LOG` says
/// otherwise (e.g. `RUST_LOG=dietstream_commands=debug`). Idempotent.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

impl Stack {
    /// Connects to the stack and checks that every server answers; panics with what to do
    /// when one does not.
    pub async fn get() -> Stack {
        #[cfg(feature = "containers")]
        let (config, containers) = containers::Containers::start().await;
        #[cfg(not(feature = "containers"))]
        let config = Config::load(None).unwrap_or_else(|e| panic!("{e}"));

        if let Err(problem) = check_reachable(&config).await {
            panic!(
                "the test stack is not reachable: {problem}\n\
                 Start the local stack with `make up` (see README), or point the \
                 DIETSTREAM_KAFKA__BOOTSTRAP_SERVERS, DIETSTREAM_SCHEMA_REGISTRY__URL and \
                 DIETSTREAM_CQL__CONTACT_POINTS variables at a running one."
            );
        }
        Stack {
            config,
            prefix: unique_name("t"),
            keyspaces: Mutex::default(),
            #[cfg(feature = "containers")]
            _containers: containers,
        }
    }

    /// A topic name owned by this test.
    pub fn topic(&self, name: &str) -> String {
        format!("{}.{name}", self.prefix)
    }

    /// An admin client for the stack's Kafka.
    pub fn admin(&self) -> AdminClient<DefaultClientContext> {
        self.config
            .kafka
            .client_config()
            .create()
            .expect("admin client")
    }

    /// A producer for the stack's Kafka.
    pub fn producer(&self) -> FutureProducer {
        self.config
            .kafka
            .client_config()
            .create()
            .expect("producer")
    }

    /// Consumer settings with a group of its own and no automatic commits; callers add what
    /// their test needs (offset reset, isolation level) and create the consumer.
    pub fn consumer_config(&self) -> ClientConfig {
        let mut config = self.config.kafka.client_config();
        config
            .set("group.id", unique_name("group"))
            .set("enable.auto.commit", "false");
        config
    }

    /// A config whose `topology.prefix` is this test's prefix, with the whole topology
    /// (topics of `topology/topology.toml`) created under it.
    pub async fn with_topology(&self) -> Config {
        let mut config = self.config.clone();
        config.topology.prefix = self.prefix.clone();
        let desired = dietstream_topology::Topology::embedded()
            .and_then(|t| t.resolve(config.topology.profile, &config.topology.prefix))
            .expect("topology resolves");
        dietstream_topology::Cluster::new(self.admin(), Duration::from_secs(30))
            .apply(&desired)
            .await
            .expect("topology applies");
        config
    }

    /// A CQL session and a fresh keyspace created for this test.
    pub async fn keyspace(&self) -> (Session, String) {
        let session = self.config.cql.session().await.expect("CQL session");
        let keyspace = unique_name("ks");
        session
            .query_unpaged(
                format!(
                    "CREATE KEYSPACE {keyspace} WITH replication = {}",
                    self.config.cql.replication()
                ),
                (),
            )
            .await
            .expect("create keyspace");
        self.keyspaces
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(keyspace.clone());
        (session, keyspace)
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if std::thread::panicking() || std::env::var_os("DIETSTREAM_TEST_KEEP").is_some() {
            return;
        }
        let keyspaces = std::mem::take(
            self.keyspaces
                .get_mut()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        let (config, prefix) = (self.config.clone(), self.prefix.clone());
        // Drop may run inside the test's runtime, which cannot be blocked on: a thread of its
        // own with a runtime of its own does the removal, and the test waits for it.
        let removal = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(remove_owned(&config, &prefix, &keyspaces))
        });
        match removal.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("test cleanup of {}: {e}", self.prefix),
            Err(_) => eprintln!("test cleanup of {} panicked", self.prefix),
        }
    }
}

/// Deletes the topics named `<prefix>.…` and drops `keyspaces`.
async fn remove_owned(
    config: &Config,
    prefix: &str,
    keyspaces: &[String],
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let admin: AdminClient<DefaultClientContext> = config.kafka.client_config().create()?;
    let owned = format!("{prefix}.");
    let metadata = admin
        .inner()
        .fetch_metadata(None, Duration::from_secs(10))?;
    let topics: Vec<&str> = metadata
        .topics()
        .iter()
        .map(|t| t.name())
        .filter(|name| name.starts_with(&owned))
        .collect();
    if !topics.is_empty() {
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        for result in admin.delete_topics(&topics, &options).await? {
            if let Err((topic, code)) = result {
                eprintln!("test cleanup: topic {topic} not deleted: {code}");
            }
        }
    }
    if !keyspaces.is_empty() {
        let session = config.cql.session().await?;
        for keyspace in keyspaces {
            session
                .query_unpaged(format!("DROP KEYSPACE IF EXISTS {keyspace}"), ())
                .await?;
        }
    }
    Ok(())
}

async fn check_reachable(config: &Config) -> Result<(), String> {
    let timeout = Duration::from_secs(10);
    let producer: BaseProducer = config
        .kafka
        .client_config()
        .create()
        .map_err(|e| format!("Kafka client: {e}"))?;
    let kafka = config.kafka.bootstrap_servers.clone();
    tokio::task::spawn_blocking(move || {
        producer
            .client()
            .fetch_metadata(None, timeout)
            .map(|_| ())
            .map_err(|e| format!("Kafka at {kafka} did not answer a metadata request: {e}"))
    })
    .await
    .map_err(|e| e.to_string())??;

    let url = format!("{}/subjects", config.schema_registry.url);
    let response = reqwest::Client::new()
        .get(&url)
        .timeout(timeout)
        .send()
        .await
        .map_err(|e| format!("schema registry at {url}: {e}"))?;
    if !response.status().is_success() {
        return Err(format!(
            "schema registry at {url} answered {}",
            response.status()
        ));
    }

    let session = config
        .cql
        .session()
        .await
        .map_err(|e| format!("CQL: {e}"))?;
    session
        .query_unpaged("SELECT release_version FROM system.local", ())
        .await
        .map_err(|e| format!("CQL query on system.local: {e}"))?;
    Ok(())
}

/// The consumer group of `processor` in `config`'s topology, and the topics it reads.
pub fn group_of(config: &Config, processor: &str) -> (String, Vec<String>) {
    let desired = dietstream_topology::Topology::embedded()
        .and_then(|t| t.resolve(config.topology.profile, &config.topology.prefix))
        .expect("topology");
    let consumer = desired
        .consumers
        .iter()
        .find(|c| c.processor == processor)
        .expect("consumer");
    (consumer.group.clone(), consumer.reads.clone())
}

/// How long a look at a group's lag may take.
const LAG_TIMEOUT: Duration = Duration::from_secs(120);

/// The committed offsets and ends of `processor`'s consumer group, as seen from outside it.
pub async fn group_lag(config: &Config, processor: &str) -> dietstream::kafka::GroupLag {
    let kafka = config.kafka.client_config();
    let (group, reads) = group_of(config, processor);
    tokio::task::spawn_blocking(move || {
        dietstream::kafka::group_lag(&kafka, &group, &reads, LAG_TIMEOUT)
    })
    .await
    .expect("lag task")
    .expect("lag")
}

/// Records `processor`'s consumer group has not committed yet, over every topic it reads.
pub async fn lag(config: &Config, processor: &str) -> i64 {
    group_lag(config, processor).await.total()
}

/// Waits until the consumer groups of `processors` have committed the end of everything they
/// read, `rounds` looks in a row (two when a processor's commands become events that another
/// one reads); panics when `running`, the task running them, ends first, or after two minutes.
pub async fn wait_caught_up<T: std::fmt::Debug>(
    config: &Config,
    processors: &[&str],
    rounds: usize,
    running: &mut tokio::task::JoinHandle<T>,
) {
    let deadline = Instant::now() + LAG_TIMEOUT;
    let mut quiet = 0;
    while quiet < rounds {
        let mut total = 0;
        for processor in processors {
            total += lag(config, processor).await;
        }
        quiet = if total == 0 { quiet + 1 } else { 0 };
        assert!(
            !running.is_finished(),
            "the processors stopped: {:?}",
            running.await
        );
        assert!(Instant::now() < deadline, "lag {total}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// How long [`events_of`] may take.
const EVENTS_TIMEOUT: Duration = Duration::from_secs(120);

/// Every event of `topic` (read committed) with its partition, decoded, in log order per
/// partition; every record must decode.
pub async fn events_of(stack: &Stack, config: &Config, topic: &str) -> Vec<(i32, Event)> {
    records_of(stack, config, topic)
        .await
        .into_iter()
        .map(|(partition, event)| (partition, event.expect("event decodes")))
        .collect()
}

/// Every record of `topic` (read committed) with its partition, decoded as an event where it
/// is one, in log order per partition: the one reader of an event log the tests share.
pub async fn records_of(
    stack: &Stack,
    config: &Config,
    topic: &str,
) -> Vec<(i32, Result<Event, CodecError>)> {
    let codec = codec_of(config);
    let mut events = Vec::new();
    for (partition, payload) in payloads_of(stack, topic) {
        events.push((partition, codec.decode_event(&payload).await));
    }
    events
}

/// Every command of `topic` (read committed), decoded, in log order per partition.
pub async fn commands_of(stack: &Stack, config: &Config, topic: &str) -> Vec<Command> {
    let codec = codec_of(config);
    let mut commands = Vec::new();
    for (_, payload) in payloads_of(stack, topic) {
        commands.push(
            codec
                .decode_command(&payload)
                .await
                .expect("command decodes"),
        );
    }
    commands
}

/// A codec of `config`'s schema registry for the embedded catalog.
pub fn codec_of(config: &Config) -> Codec<dietstream_schemas::registry::ConfluentRegistry> {
    Codec::new(
        config.schema_registry.registry().expect("registry"),
        &Catalog::embedded().expect("catalog"),
    )
    .expect("codec")
}

/// The value of every record of `topic` (read committed) with its partition, in log order per
/// partition.
fn payloads_of(stack: &Stack, topic: &str) -> Vec<(i32, Vec<u8>)> {
    let consumer: BaseConsumer = stack
        .consumer_config()
        .set("isolation.level", "read_committed")
        .create()
        .expect("consumer");
    let metadata = consumer
        .fetch_metadata(Some(topic), EVENTS_TIMEOUT)
        .expect("metadata");
    let mut list = TopicPartitionList::new();
    let mut ends = HashMap::new();
    for partition in metadata.topics()[0].partitions() {
        list.add_partition_offset(topic, partition.id(), Offset::Beginning)
            .expect("partition");
        let (_, end) = consumer
            .fetch_watermarks(topic, partition.id(), EVENTS_TIMEOUT)
            .expect("watermarks");
        ends.insert(partition.id(), end);
    }
    consumer.assign(&list).expect("assign");
    let mut records = Vec::new();
    let deadline = Instant::now() + EVENTS_TIMEOUT;
    loop {
        let positions = consumer.position().expect("positions");
        let done = positions.elements().iter().all(|e| match e.offset() {
            Offset::Offset(at) => at >= ends[&e.partition()],
            _ => ends[&e.partition()] == 0,
        });
        if done {
            break;
        }
        assert!(Instant::now() < deadline, "{topic} not read in time");
        if let Some(message) = consumer.poll(Duration::from_millis(200)) {
            let message = message.expect("record");
            if let Some(payload) = message.payload() {
                records.push((message.partition(), payload.to_vec()));
            }
        }
    }
    records
}

/// This build's `dietstream` binary as a child process that reaches `config`'s stack, topology
/// prefix and keyspace through the environment. Callers add the arguments and their own
/// settings (a later `env` of the same variable wins).
pub fn dietstream_command(config: &Config) -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_dietstream"));
    command
        .env(
            "DIETSTREAM_KAFKA__BOOTSTRAP_SERVERS",
            &config.kafka.bootstrap_servers,
        )
        .env(
            "DIETSTREAM_SCHEMA_REGISTRY__URL",
            &config.schema_registry.url,
        )
        .env(
            "DIETSTREAM_CQL__CONTACT_POINTS",
            config.cql.contact_points.join(","),
        )
        .env("DIETSTREAM_CQL__KEYSPACE", &config.cql.keyspace)
        .env("DIETSTREAM_TOPOLOGY__PREFIX", &config.topology.prefix);
    command
}

/// Plays `users` simulated players of `seed` (ids `<prefix>-<index>`) through a command bus
/// of `config` at `rate` commands per second until `commands` were sent; asserts that every
/// command got a result. The command processor must be running.
pub async fn simulate(
    config: &Config,
    prefix: String,
    seed: u64,
    users: u32,
    commands: u64,
    rate: f64,
) -> dietstream::simulate::Summary {
    simulate_with(config, prefix, seed, users, commands, rate, false).await
}

/// [`simulate`]; with `rate_insights` the players are shown the insights made for them and
/// rate some (the insights processor must be running too).
pub async fn simulate_with(
    config: &Config,
    prefix: String,
    seed: u64,
    users: u32,
    commands: u64,
    rate: f64,
    rate_insights: bool,
) -> dietstream::simulate::Summary {
    let bus = std::sync::Arc::new(
        dietstream::bus::CommandBus::from_config(config, "simulator")
            .await
            .expect("bus"),
    );
    let insights = if rate_insights {
        let feed = dietstream::simulate::InsightFeed::start(config, &prefix).await;
        Some(feed.expect("insight feed"))
    } else {
        None
    };
    let mut generator = dietstream::simulate::GeneratorConfig::new(seed, users);
    generator.user_prefix = prefix;
    let summary = dietstream::simulate::run_with_insights(
        bus,
        dietstream::simulate::SimulateOptions {
            generator,
            rate,
            duration: None,
            max_commands: Some(commands),
            timeout: Duration::from_secs(120),
            record: None,
            progress: false,
        },
        insights,
        std::future::pending(),
    )
    .await
    .expect("simulation runs");
    assert_eq!((summary.timeouts, summary.errors), (0, 0), "{summary:?}");
    summary
}

/// Live rows and tombstone cells the node read to answer `query` (summed over its reads, from
/// the query's trace). The trace's events are written after the answer, so it is read until
/// they are there.
pub async fn rows_and_tombstones_read(session: &Session, query: &str) -> (u64, u64) {
    let mut statement = scylla::statement::unprepared::Statement::new(query);
    statement.set_tracing(true);
    let result = session
        .query_unpaged(statement, ())
        .await
        .unwrap_or_else(|e| panic!("{query}: {e}"));
    let id = result
        .tracing_id()
        .expect("a traced query has a tracing id");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let counts: Vec<(u64, u64)> = session
            .get_tracing_info(&id)
            .await
            .map(|info| info.events)
            .unwrap_or_default()
            .iter()
            .filter_map(|event| {
                // "Read 12 live rows and 34 tombstone cells"
                let words: Vec<&str> = event.activity.as_deref()?.split_whitespace().collect();
                match words.as_slice() {
                    ["Read", live, "live", "rows", "and", tombstones, "tombstone", "cells", ..] => {
                        Some((live.parse().ok()?, tombstones.parse().ok()?))
                    }
                    _ => None,
                }
            })
            .collect();
        if !counts.is_empty() {
            return counts
                .iter()
                .fold((0, 0), |(l, t), (live, tomb)| (l + live, t + tomb));
        }
        assert!(
            Instant::now() < deadline,
            "{query}: no read in the trace after 60 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
