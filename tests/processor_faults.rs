//! Faults of the read-model processors on the real stack: a fixed-seed simulated history goes
//! through the command processor, then each processor of [`CASES`] runs as the `dietstream`
//! binary and is killed with SIGKILL at points a seeded RNG picks (after N records read since
//! its start, N a random share of its lag, read from its `/metrics`), restarted each time, and
//! left to finish. Its tables must then equal a clean single run of the same processor over
//! the same log, row for row, and the oracle computed from the events (tests/common/oracle.rs). The quests processor
//! sends commands: after a crash it sends some again, which the aggregate refuses or ignores.
//! Last, bad records (garbage bytes, an unknown schema id, a broken rule) reach the nutrition
//! processor: they end in its dead-letter topic with their context while the stream goes on.

mod common;

use std::net::TcpListener;
use std::process::{Child, Command as Process, Stdio};
use std::time::{Duration, Instant};

use common::oracle;
use common::Stack;
use dietstream::config::Config;
use dietstream_runtime::Projection;
use dietstream_schemas::catalog::Catalog;
use dietstream_schemas::codec::{Codec, RECORD_TYPE_HEADER};
use dietstream_schemas::headers::{
    DLQ_ERROR_CLASS, DLQ_ORIGINAL_OFFSET, DLQ_ORIGINAL_TOPIC, DLQ_PROCESSOR,
};
use dietstream_schemas::types::{EventHeader, WaterIntakeLogged, WaterIntakeLoggedPayload};
use dietstream_schemas::Event;
use dietstream_topology::{partition_for, prefixed, Topology};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::admin::AdminOptions;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use rdkafka::{Offset, TopicPartitionList};
use scylla::client::session::Session;

const TIMEOUT: Duration = Duration::from_secs(120);
/// SIGKILLs per processor before the run that is left to finish.
const KILLS: usize = 3;

/// One processor under test: its name as `dietstream run` takes it and its read-model tables.
struct Case {
    processor: &'static str,
    tables: fn() -> Vec<&'static str>,
}

fn names<P: Projection>(projection: &P) -> Vec<&'static str> {
    projection.tables().iter().map(|t| t.name).collect()
}

/// The processors under test. Quests first: the commands it sends add events the others read.
/// A new processor is one entry here and one arm in [`check_oracle`].
const CASES: &[Case] = &[
    Case {
        processor: "quests",
        tables: || names(&dietstream_quests::QuestsProjection::new()),
    },
    Case {
        processor: "nutrition",
        tables: || names(&dietstream_nutrition::NutritionProjection::new()),
    },
    Case {
        processor: "engagement",
        tables: || names(&dietstream_engagement::EngagementProjection::new()),
    },
];

/// The tables of `processor` in `ks` against the oracle of `events`.
async fn check_oracle(processor: &str, session: &Session, ks: &str, events: &[Event]) {
    match processor {
        "nutrition" => oracle::check_nutrition(session, ks, events).await,
        "engagement" => oracle::check_engagement(session, ks, events).await,
        "quests" => {
            let completed = oracle::check_quests(session, ks, events).await;
            eprintln!("quests: {completed} completed catalogue quests checked");
            assert!(
                completed > 0,
                "no catalogue quest completed, so none was checked"
            );
        }
        other => panic!("no oracle for {other}"),
    }
}

/// A port nothing listens on now, for a child's `/metrics`.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Settings every child gets through a config file (removed when dropped): a static group
/// member id, so that a restarted process takes the killed one's place at once (and short
/// sessions for when it does not), frequent offset commits so that restarts resume mid-log.
struct SettingsFile(std::path::PathBuf);

impl SettingsFile {
    fn write() -> SettingsFile {
        let path = std::env::temp_dir().join(format!("{}.toml", common::unique_name("faults")));
        std::fs::write(
            &path,
            "[kafka.librdkafka_options]\n\
             \"session.timeout.ms\" = \"6000\"\n\
             \"heartbeat.interval.ms\" = \"1000\"\n\
             \"auto.commit.interval.ms\" = \"200\"\n\
         \"group.instance.id\" = \"faults\"\n",
        )
        .expect("config file written");
        SettingsFile(path)
    }
}

impl Drop for SettingsFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A running `dietstream run <processor>` and the address of its metrics.
struct Running {
    child: Child,
    metrics: String,
}

impl Running {
    fn start(
        config: &Config,
        settings: &std::path::Path,
        processor: &str,
        keyspace: &str,
    ) -> Running {
        let port = free_port();
        let child = Process::new(env!("CARGO_BIN_EXE_dietstream"))
            .args(["run", processor])
            .env("DIETSTREAM_CONFIG", settings)
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
            .env("DIETSTREAM_CQL__KEYSPACE", keyspace)
            .env("DIETSTREAM_TOPOLOGY__PREFIX", &config.topology.prefix)
            .env("DIETSTREAM_METRICS__LISTEN", format!("127.0.0.1:{port}"))
            // Small batches and few writes in flight: the run lasts long enough to be hit.
            .env("DIETSTREAM_PROCESSORS__BATCH_SIZE", "16")
            .env("DIETSTREAM_PROCESSORS__MAX_IN_FLIGHT", "2")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .expect("dietstream binary starts");
        Running {
            child,
            metrics: format!("http://127.0.0.1:{port}/metrics"),
        }
    }

    /// Records read since this process started (`dietstream_records_consumed_total`), or
    /// `None` while its endpoint is not up yet.
    async fn consumed(&mut self, http: &reqwest::Client) -> Option<i64> {
        if let Some(status) = self.child.try_wait().expect("child status") {
            panic!("the processor exited by itself: {status}");
        }
        let text = http
            .get(&self.metrics)
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        Some(
            text.lines()
                .filter(|l| l.starts_with("dietstream_records_consumed_total{"))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>() as i64,
        )
    }

    fn kill_9(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("killed child reaped");
    }

    /// SIGTERM: the processor finishes its batch, commits, leaves its group and exits 0.
    fn terminate(mut self) {
        let status = Process::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().expect("child status") {
                assert!(status.success(), "the processor stopped with {status}");
                return;
            }
            assert!(Instant::now() < deadline, "the processor ignores SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The group and topics of `processor` in the test's topology.
fn group_of(config: &Config, processor: &str) -> (String, Vec<String>) {
    let desired = Topology::embedded()
        .and_then(|t| t.resolve(config.topology.profile, &config.topology.prefix))
        .expect("topology");
    let consumer = desired
        .consumers
        .iter()
        .find(|c| c.processor == processor)
        .expect("consumer");
    (consumer.group.clone(), consumer.reads.clone())
}

async fn lag(config: &Config, processor: &str) -> i64 {
    let kafka = config.kafka.client_config();
    let (group, reads) = group_of(config, processor);
    tokio::task::spawn_blocking(move || {
        dietstream::kafka::group_lag(&kafka, &group, &reads, TIMEOUT)
    })
    .await
    .expect("lag task")
    .expect("lag")
    .total()
}

/// Waits until `processor` and the command processor both have lag 0 twice in a row (the
/// quests processor's commands may add events after it caught up once).
async fn settle(config: &Config, processor: &str, running: &mut Running, http: &reqwest::Client) {
    let deadline = Instant::now() + TIMEOUT;
    let mut quiet = 0;
    while quiet < 2 {
        assert!(Instant::now() < deadline, "{processor} does not catch up");
        // Also fails the test when the child died.
        running.consumed(http).await;
        if lag(config, processor).await == 0 && lag(config, "commands").await == 0 {
            quiet += 1;
        } else {
            quiet = 0;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Removes the group's committed offsets, so that the next run reads the log from its start.
async fn forget_group(stack: &Stack, config: &Config, processor: &str) {
    let (group, _) = group_of(config, processor);
    let admin = stack.admin();
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let result = admin
            .delete_groups(&[group.as_str()], &AdminOptions::new())
            .await
            .expect("delete groups");
        if result.iter().all(Result::is_ok) {
            return;
        }
        assert!(Instant::now() < deadline, "{group} not deleted: {result:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_random_points_leaves_the_tables_equal_to_the_oracle_and_a_clean_run() {
    common::init_tracing();
    let stack = Stack::get().await;
    let mut config = stack.with_topology().await;
    config.cql.keyspace = common::unique_name("faults");
    let session = dietstream::run::migrate(&config).await.expect("migrate");
    let settings = SettingsFile::write();
    let http = reqwest::Client::new();

    let (stop_commands, commands_stopped) = tokio::sync::oneshot::channel::<()>();
    let commands = tokio::spawn({
        let config = config.clone();
        async move {
            dietstream::run::commands(&config, async move {
                let _ = commands_stopped.await;
            })
            .await
        }
    });
    let summary =
        common::simulate(&config, format!("{}-f", stack.prefix), 77, 24, 1200, 2000.0).await;
    assert!(summary.accepted > 1000, "{summary}");

    let mut rng = StdRng::seed_from_u64(0x5EED_FA17);
    let mut faulted = Vec::new();
    for case in CASES {
        let tables = (case.tables)();
        let clean_ks = common::unique_name("clean");
        let fault_ks = common::unique_name("fault");

        let mut clean = Running::start(&config, &settings.0, case.processor, &clean_ks);
        settle(&config, case.processor, &mut clean, &http).await;
        clean.terminate();
        forget_group(&stack, &config, case.processor).await;

        let mut kills = Vec::new();
        for _ in 0..KILLS {
            // The kill point: a random share of what is left to read (records, transaction
            // markers included, so the point is reached before the end in most runs).
            let remaining = lag(&config, case.processor).await;
            let target = rng.random_range(1..=(remaining / 2).max(1));
            let mut running = Running::start(&config, &settings.0, case.processor, &fault_ks);
            let deadline = Instant::now() + TIMEOUT;
            let mut polls = 0_u32;
            let consumed = loop {
                assert!(
                    Instant::now() < deadline,
                    "{} reads nothing",
                    case.processor
                );
                polls += 1;
                match running.consumed(&http).await {
                    Some(n) if n >= target => break n,
                    // Caught up before the point: the kill then hits an idle processor whose
                    // last offsets may not be committed yet.
                    Some(n)
                        if polls.is_multiple_of(50) && lag(&config, case.processor).await == 0 =>
                    {
                        break n
                    }
                    _ => tokio::time::sleep(Duration::from_millis(5)).await,
                }
            };
            running.kill_9();
            kills.push((consumed, remaining));
        }
        let mut last = Running::start(&config, &settings.0, case.processor, &fault_ks);
        settle(&config, case.processor, &mut last, &http).await;
        last.terminate();
        eprintln!(
            "{}: killed after (records read since the start, records left at the start): {kills:?}",
            case.processor
        );

        assert_eq!(
            oracle::dump(&session, &fault_ks, &tables).await,
            oracle::dump(&session, &clean_ks, &tables).await,
            "{}: the tables after {KILLS} kills differ from a clean run",
            case.processor
        );
        faulted.push((case.processor, fault_ks));
    }

    let user_topic = prefixed(&config.topology.prefix, "diet.events.user");
    let events = oracle::events_of(&stack, &config, &user_topic).await;
    for (processor, ks) in &faulted {
        check_oracle(processor, &session, ks, &events).await;
    }

    // Bad records on the user topic: dead-lettered with their context, the rest processed.
    let nutrition_ks = &faulted
        .iter()
        .find(|(p, _)| *p == "nutrition")
        .expect("nutrition ran")
        .1;
    let good_user = format!("{}-dlq", stack.prefix);
    let sent = bad_records_then_water(&stack, &config, &user_topic, &good_user).await;
    let mut running = Running::start(&config, &settings.0, "nutrition", nutrition_ks);
    settle(&config, "nutrition", &mut running, &http).await;
    running.terminate();
    let letters = dead_letters(
        &stack,
        &prefixed(&config.topology.prefix, "diet.dlq.nutrition"),
    );
    let mut classes: Vec<&str> = letters.iter().map(|l| l.class.as_str()).collect();
    classes.sort_unstable();
    assert_eq!(
        classes,
        ["bad_magic", "rule_violation", "unknown_schema_id"]
    );
    for letter in &letters {
        assert_eq!(letter.processor, "nutrition");
        assert_eq!(letter.topic, user_topic);
        assert!(
            sent.contains(&letter.offset),
            "{letter:?} not one of {sent:?}"
        );
    }
    let rows = session
        .query_unpaged(
            format!("SELECT water_ml FROM {nutrition_ks}.nutrition_user_daily WHERE user_id = ?"),
            (&good_user,),
        )
        .await
        .expect("select")
        .into_rows_result()
        .expect("rows");
    let water: Vec<Option<i64>> = rows
        .rows::<(Option<i64>,)>()
        .expect("typed")
        .map(|r| r.expect("row").0)
        .collect();
    assert_eq!(water, [Some(250)], "the record after the bad ones");

    stop_commands.send(()).expect("command processor running");
    if let Err(e) = commands.await.expect("command processor task") {
        panic!("the command processor stopped with an error: {e}");
    }
}

/// A water intake of `user` (version `version`) as the command processor would write it.
fn water(user: &str, version: i64, millilitres: i32) -> Event {
    let at = dietstream::simulate::parse_day("2026-01-15").map_or(0, i64::from) * 86_400_000_000;
    Event::WaterIntakeLogged(WaterIntakeLogged {
        header: EventHeader {
            event_id: uuid::Uuid::new_v4(),
            event_type: "nutrition.water.logged".to_owned(),
            aggregate_id: user.to_owned(),
            aggregate_type: dietstream_schemas::types::AggregateType::User,
            version,
            timestamp: at,
            user_id: Some(user.to_owned()),
            session_id: None,
            correlation_id: None,
            causation_id: None,
            metadata: Default::default(),
        },
        payload: WaterIntakeLoggedPayload {
            intake_id: uuid::Uuid::new_v4(),
            millilitres,
            drunk_at: at,
        },
    })
}

/// Appends garbage bytes, a record with an unknown schema id, a water intake of -5 ml (a
/// broken rule) and then a valid intake of 250 ml, all for `user`; returns the offsets of the
/// three bad ones.
async fn bad_records_then_water(
    stack: &Stack,
    config: &Config,
    topic: &str,
    user: &str,
) -> Vec<String> {
    let codec = Codec::new(
        config.schema_registry.registry().expect("registry"),
        &Catalog::embedded().expect("catalog"),
    )
    .expect("codec");
    let partitions = 3;
    let producer = stack.producer();
    let mut offsets = Vec::new();
    let broken = water(user, 1, -5)
        .encode(&codec, topic)
        .await
        .expect("encode");
    let good = water(user, 2, 250)
        .encode(&codec, topic)
        .await
        .expect("encode");
    let records: [(&[u8], i64); 4] = [
        (b"not avro at all", 90),
        (&[0, 0x7f, 0xff, 0xff, 0xf0, 1, 2, 3], 91),
        (&broken, 1),
        (&good, 2),
    ];
    for (index, (value, version)) in records.into_iter().enumerate() {
        let key = format!("{user}/{version}");
        let record = FutureRecord::<str, [u8]>::to(topic)
            .key(&key)
            .partition(partition_for(user, partitions))
            .headers(OwnedHeaders::new().insert(Header {
                key: RECORD_TYPE_HEADER,
                value: Some("nutrition.water.logged"),
            }))
            .payload(value);
        let delivery = producer
            .send(record, TIMEOUT)
            .await
            .map_err(|(e, _)| e)
            .expect("produce");
        if index < 3 {
            offsets.push(delivery.offset.to_string());
        }
    }
    offsets
}

#[derive(Debug)]
struct Letter {
    class: String,
    topic: String,
    offset: String,
    processor: String,
}

/// Every record of the one-partition dead-letter `topic`, with its context headers.
fn dead_letters(stack: &Stack, topic: &str) -> Vec<Letter> {
    let consumer: BaseConsumer = stack.consumer_config().create().expect("consumer");
    let metadata = consumer
        .fetch_metadata(Some(topic), TIMEOUT)
        .expect("metadata");
    let mut list = TopicPartitionList::new();
    let mut total = 0;
    for partition in metadata.topics()[0].partitions() {
        list.add_partition_offset(topic, partition.id(), Offset::Beginning)
            .expect("partition");
        let (low, high) = consumer
            .fetch_watermarks(topic, partition.id(), TIMEOUT)
            .expect("watermarks");
        total += high - low;
    }
    consumer.assign(&list).expect("assign");
    let mut letters = Vec::new();
    let deadline = Instant::now() + TIMEOUT;
    while (letters.len() as i64) < total {
        assert!(Instant::now() < deadline, "dead letters not read in time");
        let Some(message) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let message = message.expect("dead letter");
        let header = |name: &str| {
            message
                .headers()
                .and_then(|h| h.iter().find(|h| h.key == name))
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default()
        };
        letters.push(Letter {
            class: header(DLQ_ERROR_CLASS),
            topic: header(DLQ_ORIGINAL_TOPIC),
            offset: header(DLQ_ORIGINAL_OFFSET),
            processor: header(DLQ_PROCESSOR),
        });
    }
    letters
}
