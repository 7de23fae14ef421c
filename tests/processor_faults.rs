//! Faults of the read-model processors on the real stack. One fixed-seed simulated history
//! (everyday players, and a few veterans who play enough game days for insights) goes through
//! the command processor; then every processor of [`CASES`] is faulted side by side with the
//! others, each with its own consumer group, `/metrics` port and random points: it runs as the
//! `dietstream` binary and is killed with SIGKILL after N records read since its start (N a
//! random share of its lag, read from its `/metrics`), restarted each time, and left to finish.
//! Then all of them run again, cleanly and side by side, into a second keyspace; the tables of
//! each must equal those of its clean run row for row, and the oracle computed from the events
//! (tests/common/oracle.rs). The quests, nutrition and insights processors send commands:
//! after a crash they send some again, which the aggregates refuse or ignore, every insight
//! drawn has exactly one `ai.insight.created` in the log, and every minimum target a user's
//! day reached exactly one `nutrition.goal.met`. Last, bad records (garbage bytes, an
//! unknown schema id, a broken rule) reach the nutrition processor: they end in its
//! dead-letter topic with their context while the stream goes on.

mod common;

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command as Process, Stdio};
use std::time::{Duration, Instant};

use common::{dead_letters, group_lag, group_of, lag, oracle, Stack};
use dietstream::config::Config;
use dietstream_runtime::Projection;
use dietstream_schemas::catalog::Catalog;
use dietstream_schemas::codec::{Codec, RECORD_TYPE_HEADER};
use dietstream_schemas::types::{EventHeader, WaterIntakeLogged, WaterIntakeLoggedPayload};
use dietstream_schemas::Event;
use dietstream_topology::{partition_for, prefixed};
use futures::future::join_all;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::admin::AdminOptions;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use scylla::client::session::Session;

const TIMEOUT: Duration = Duration::from_secs(120);
/// SIGKILLs per processor before the run that is left to finish.
const KILLS: usize = 3;
/// The pause between two looks at a condition the test waits for.
const POLL: Duration = Duration::from_millis(200);

/// One processor under test: its name as `dietstream run` takes it and its read-model tables.
struct Case {
    processor: &'static str,
    tables: fn() -> Vec<&'static str>,
}

fn names<P: Projection>(projection: &P) -> Vec<&'static str> {
    projection.tables().iter().map(|t| t.name).collect()
}

/// The processors under test. A new processor is one entry here and one arm in
/// [`check_oracle`].
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
    Case {
        processor: "insights",
        tables: || names(&dietstream_insights::InsightsProjection::new()),
    },
];

/// The tables of `processor` in `ks` against the oracle of `user` (the user topic's events
/// with their partitions, in log order per partition) and `ai_events` (the AI topic).
async fn check_oracle(
    processor: &str,
    session: &Session,
    ks: &str,
    user: &[(i32, Event)],
    ai_events: &[Event],
) {
    let events: Vec<Event> = user.iter().map(|(_, e)| e.clone()).collect();
    let events = events.as_slice();
    match processor {
        "nutrition" => {
            oracle::check_nutrition(session, ks, events).await;
            let met = oracle::check_goals_met(events);
            eprintln!("nutrition: {met} goals met checked");
            assert!(met > 0, "no goal met, so none was checked");
        }
        "engagement" => oracle::check_engagement(session, ks, user).await,
        "quests" => {
            let completed = oracle::check_quests(session, ks, events).await;
            eprintln!("quests: {completed} completed catalogue quests checked");
            assert!(
                completed > 0,
                "no catalogue quest completed, so none was checked"
            );
        }
        "insights" => {
            let checked = oracle::check_insights(session, ks, events, ai_events).await;
            eprintln!("insights: {checked:?}");
            assert!(
                checked.insights > 0 && checked.rederived > 0,
                "no insight drawn, so none was checked: {checked:?}"
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

/// How a child runs its batches.
#[derive(Clone, Copy)]
enum Batches {
    /// Small batches and few writes in flight: the run lasts long enough to be hit.
    Small,
    /// The defaults (up to 1000 records, 64 writes in flight): the clean runs, which so also
    /// check that the tables do not depend on how the log was cut into batches.
    Default,
}

/// A running `dietstream run <processor>` and the address of its metrics; killed when dropped
/// (a failing test leaves no process behind).
struct Running {
    processor: &'static str,
    child: Child,
    metrics: String,
}

impl Running {
    fn start(
        config: &Config,
        settings: &Path,
        processor: &'static str,
        keyspace: &str,
        batches: Batches,
    ) -> Running {
        let port = free_port();
        let mut process = common::dietstream_command(config);
        if let Batches::Small = batches {
            process
                .env("DIETSTREAM_PROCESSORS__BATCH_SIZE", "16")
                .env("DIETSTREAM_PROCESSORS__MAX_IN_FLIGHT", "2");
        }
        let child = process
            .args(["run", processor])
            .env("DIETSTREAM_CONFIG", settings)
            .env("DIETSTREAM_CQL__KEYSPACE", keyspace)
            .env("DIETSTREAM_METRICS__LISTEN", format!("127.0.0.1:{port}"))
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .expect("dietstream binary starts");
        Running {
            processor,
            child,
            metrics: format!("http://127.0.0.1:{port}/metrics"),
        }
    }

    /// Fails the test when the process has exited by itself.
    fn alive(&mut self) {
        if let Some(status) = self.child.try_wait().expect("child status") {
            panic!("{} exited by itself: {status}", self.processor);
        }
    }

    /// Records read since this process started (`dietstream_records_consumed_total`), or
    /// `None` while its endpoint is not up yet.
    async fn consumed(&mut self, http: &reqwest::Client) -> Option<i64> {
        self.alive();
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

    /// SIGTERM: the processor finishes its batch, commits and exits 0.
    async fn terminate(mut self) {
        let status = Process::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().expect("child status") {
                assert!(status.success(), "{} stopped with {status}", self.processor);
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} ignores SIGTERM",
                self.processor
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // Reaped already after kill_9 and terminate; otherwise the test is failing.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Waits until the log has stopped growing and every processor of `running` has read all of
/// it. The processors send commands whose events they read in turn, so one look at the lags
/// is not enough: it takes two rounds in a row in which the command processor, then each
/// processor, has lag 0, with no command sent between the two. Every command sent before the
/// first round was then applied by its end, the processors had read every event and sent
/// what it caused, and nothing was sent since.
async fn settle(config: &Config, running: &mut [Running]) {
    let deadline = Instant::now() + TIMEOUT;
    // Commands ever sent, when the last round was quiet.
    let mut quiet_at: Option<i64> = None;
    loop {
        assert!(Instant::now() < deadline, "the processors do not catch up");
        for process in running.iter_mut() {
            process.alive();
        }
        let commands = group_lag(config, "commands").await;
        let sent: i64 = commands.partitions.iter().map(|p| p.3).sum();
        let mut quiet = commands.total() == 0;
        if quiet {
            let lags = join_all(running.iter().map(|p| lag(config, p.processor))).await;
            quiet = lags.iter().all(|lag| *lag == 0);
        }
        if quiet && quiet_at == Some(sent) {
            return;
        }
        quiet_at = quiet.then_some(sent);
        tokio::time::sleep(POLL).await;
    }
}

/// Stops every process of `running` with SIGTERM, side by side.
async fn terminate_all(running: Vec<Running>) {
    join_all(running.into_iter().map(Running::terminate)).await;
}

/// Runs `processor` on `keyspace`, killing it with SIGKILL [`KILLS`] times at points an RNG of
/// `seed` picks and restarting it each time; returns the run that is left to finish.
async fn kill_repeatedly(
    config: &Config,
    settings: &Path,
    processor: &'static str,
    keyspace: &str,
    seed: u64,
    http: &reqwest::Client,
) -> Running {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut kills = Vec::new();
    for _ in 0..KILLS {
        // The kill point: a random share of what is left to read (records, transaction
        // markers included, so the point is reached before the end in most runs).
        let remaining = lag(config, processor).await;
        let target = rng.random_range(1..=(remaining / 2).max(1));
        let mut running = Running::start(config, settings, processor, keyspace, Batches::Small);
        let deadline = Instant::now() + TIMEOUT;
        let mut looked = Instant::now();
        let consumed = loop {
            assert!(Instant::now() < deadline, "{processor} reads nothing");
            match running.consumed(http).await {
                Some(n) if n >= target => break n,
                // Caught up before the point: the kill then hits an idle processor whose
                // last offsets may not be committed yet.
                Some(n) if looked.elapsed() > POLL => {
                    if lag(config, processor).await == 0 {
                        break n;
                    }
                    looked = Instant::now();
                }
                _ => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        };
        running.kill_9();
        kills.push((consumed, remaining));
    }
    eprintln!(
        "{processor}: killed after (records read since the start, records left at the start): {kills:?}"
    );
    Running::start(config, settings, processor, keyspace, Batches::Small)
}

/// Removes the group's committed offsets, so that the next run reads the log from its start.
/// A killed static member stays in its group until its session times out; till then the
/// group cannot be deleted.
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
        tokio::time::sleep(POLL).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_each_processor_at_random_points_leaves_its_tables_equal_to_a_clean_run_and_the_oracle(
) {
    common::init_tracing();
    let stack = Stack::get().await;
    let config = stack.with_topology().await;
    let (fault_ks, clean_ks) = (common::unique_name("fault"), common::unique_name("clean"));
    let settings = SettingsFile::write();
    let http = reqwest::Client::new();
    // How long each step took, for the output of a failing run (or --nocapture).
    let started = Instant::now();
    let step = |name: &str| eprintln!("{name}: done at {:.1} s", started.elapsed().as_secs_f64());

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
    // The input all processors share, played while the keyspace of the faulted runs is
    // created (before the processors start, so that they do not create it side by side):
    // everyday players, a few game days each, and veterans who play a week and more each,
    // which insights need (4 days with meals in a 7-day window). Each player waits for the
    // answer to a command before the next, so more players with fewer commands each are done
    // sooner.
    let migrate = |keyspace: &str| {
        let mut config = config.clone();
        config.cql.keyspace = keyspace.to_owned();
        async move {
            let session = dietstream::run::migrate(&config).await.expect("migrate");
            step(&format!("keyspace {} created", config.cql.keyspace));
            session
        }
    };
    let (session, everyday, veterans) = tokio::join!(
        migrate(&fault_ks),
        common::simulate(&config, format!("{}-f", stack.prefix), 77, 24, 1200, 2000.0),
        common::simulate(&config, format!("{}-v", stack.prefix), 78, 8, 800, 2000.0),
    );
    assert!(everyday.accepted > 1000, "{everyday}");
    assert!(veterans.accepted > 600, "{veterans}");
    step(&format!(
        "input simulated: {everyday}; veterans: {veterans}"
    ));

    // The faulted runs first, all processors side by side, each with its own seed: the
    // commands the killed quests, nutrition and insights processors send are the ones that
    // make the events of quests, goals met and insights. A command lost to a kill would be
    // sent by the clean run instead, whose tables would then hold its effects and the
    // faulted ones not; otherwise the clean runs send only repeats, which are refused or
    // ignored. The keyspace of the clean runs is created meanwhile.
    let faulted = join_all(CASES.iter().enumerate().map(|(index, case)| {
        kill_repeatedly(
            &config,
            &settings.0,
            case.processor,
            &fault_ks,
            0x5EED_FA17 + index as u64,
            &http,
        )
    }));
    let (mut last, _) = tokio::join!(faulted, migrate(&clean_ks));
    settle(&config, &mut last).await;
    terminate_all(last).await;
    step("faulted runs");

    // Then the clean runs, side by side, over the same log from its start.
    join_all(
        CASES
            .iter()
            .map(|case| forget_group(&stack, &config, case.processor)),
    )
    .await;
    let mut clean: Vec<Running> = CASES
        .iter()
        .map(|case| {
            Running::start(
                &config,
                &settings.0,
                case.processor,
                &clean_ks,
                Batches::Default,
            )
        })
        .collect();
    settle(&config, &mut clean).await;
    terminate_all(clean).await;
    step("clean runs");

    // Row for row. Both runs read one log, so what they read is the same; what may differ
    // between them is outside the tables compared: for insights, the faulted run sent the
    // CreateInsight commands that made the ai.insight.created events (a repeat after a
    // restart, and every one of the clean run, is refused), so where those events landed in
    // diet.events.ai, their event ids and times, depend on when the kills came and on the
    // other processors' commands in between; the tables hold none of that, only the
    // insight's id, kind and the counts per kind. The runtime's state tables (with offsets)
    // are not compared.
    for case in CASES {
        let tables = (case.tables)();
        assert_eq!(
            oracle::dump(&session, &fault_ks, &tables).await,
            oracle::dump(&session, &clean_ks, &tables).await,
            "{}: the tables after {KILLS} kills differ from a clean run",
            case.processor
        );
    }
    let user_topic = prefixed(&config.topology.prefix, "diet.events.user");
    // Every event of the user topic with its partition; the garbage records are left out.
    let user: Vec<(i32, Event)> = common::records_of(&stack, &config, &user_topic)
        .await
        .into_iter()
        .filter_map(|(partition, event)| event.ok().map(|e| (partition, e)))
        .collect();
    let ai_events = oracle::events_of(
        &stack,
        &config,
        &prefixed(&config.topology.prefix, "diet.events.ai"),
    )
    .await;
    for case in CASES {
        check_oracle(case.processor, &session, &fault_ks, &user, &ai_events).await;
    }
    step("tables compared");

    // Bad records on the user topic: dead-lettered with their context, the rest processed.
    // The nutrition group's offsets are the clean run's now, so it goes on in that keyspace.
    let good_user = format!("{}-dlq", stack.prefix);
    let sent = bad_records_then_water(&stack, &config, &user_topic, &good_user).await;
    let mut running = vec![Running::start(
        &config,
        &settings.0,
        "nutrition",
        &clean_ks,
        Batches::Default,
    )];
    settle(&config, &mut running).await;
    terminate_all(running).await;
    let (group, _) = group_of(&config, "nutrition");
    let letters = dead_letters::read(
        &config.kafka.client_config(),
        &prefixed(&config.topology.prefix, "diet.dlq.nutrition"),
        &dietstream::dlq::redrive_group(&group),
    )
    .await
    .letters;
    let mut classes: Vec<&str> = letters.iter().map(|l| l.error_class.as_str()).collect();
    classes.sort_unstable();
    assert_eq!(
        classes,
        [
            "bad_magic",
            "bad_magic",
            "rule_violation",
            "unknown_schema_id"
        ]
    );
    for letter in &letters {
        assert_eq!(letter.processor.as_deref(), Some("nutrition"));
        assert_eq!(letter.original_topic.as_deref(), Some(user_topic.as_str()));
        assert!(
            letter.original_offset.is_some_and(|o| sent.contains(&o)),
            "{letter:?} not one of {sent:?}"
        );
    }
    let rows = session
        .query_unpaged(
            format!("SELECT water_ml FROM {clean_ks}.nutrition_user_daily WHERE user_id = ?"),
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
    assert_eq!(
        water,
        [Some(350)],
        "the intake with an odd header and the one after the bad records"
    );
    step("dead letters");

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
/// broken rule), garbage bytes with a header name that is not UTF-8, a valid intake of 100 ml
/// with such a header before its type header, and then a valid intake of 250 ml, all for
/// `user`; returns the offsets of the four bad ones. (rust-rdkafka panics when it reads such
/// a header name, and no client library writes one: the last two but one are written by hand.)
async fn bad_records_then_water(
    stack: &Stack,
    config: &Config,
    topic: &str,
    user: &str,
) -> Vec<i64> {
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
    let odd_header = water(user, 2, 100)
        .encode(&codec, topic)
        .await
        .expect("encode");
    let good = water(user, 3, 250)
        .encode(&codec, topic)
        .await
        .expect("encode");
    let partition = partition_for(user, partitions);
    let send = |value: &[u8], version: i64| {
        let key = format!("{user}/{version}");
        let record = FutureRecord::<str, [u8]>::to(topic)
            .key(&key)
            .partition(partition)
            .headers(OwnedHeaders::new().insert(Header {
                key: RECORD_TYPE_HEADER,
                value: Some("nutrition.water.logged"),
            }))
            .payload(value);
        producer
            .send_result(record)
            .map_err(|(e, _)| e)
            .expect("enqueued")
    };
    let records: [(&[u8], i64); 3] = [
        (b"not avro at all", 90),
        (&[0, 0x7f, 0xff, 0xff, 0xf0, 1, 2, 3], 91),
        (&broken, 1),
    ];
    for (value, version) in records {
        let delivery = send(value, version)
            .await
            .expect("delivered")
            .map_err(|(e, _)| e)
            .expect("produce");
        offsets.push(delivery.offset);
    }
    let odd_name: &[u8] = b"\xffnot utf-8\xfe";
    let type_header = (
        RECORD_TYPE_HEADER.as_bytes(),
        &b"nutrition.water.logged"[..],
    );
    for (value, version, headers) in [
        (
            &b"garbage behind an odd header"[..],
            92,
            [type_header, (odd_name, &b"x"[..])],
        ),
        (&odd_header[..], 2, [(odd_name, &b"y"[..]), type_header]),
    ] {
        let key = format!("{user}/{version}");
        let record = common::raw_produce::RawRecord {
            key: key.as_bytes(),
            value,
            headers: &headers,
            timestamp_ms: common::raw_produce::now_ms(),
            // The event topics are zstd: an uncompressed batch would be rewritten.
            zstd: true,
        };
        let offset = common::raw_produce::produce(
            &config.kafka.bootstrap_servers,
            topic,
            partition,
            &record,
        )
        .expect("a hand-made record is written");
        if version == 92 {
            offsets.push(offset);
        }
    }
    send(&good, 3)
        .await
        .expect("delivered")
        .map_err(|(e, _)| e)
        .expect("produce");
    offsets
}
