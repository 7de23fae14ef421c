//! End-to-end benchmark of the read-model processors (issue 5, "Performance"), in one run
//! against the local stack on one prefilled topic:
//!
//! 1. prefill: the simulator's players (100 000 in the full run) play round by round, each
//!    command answered by the command processor's pure domain, and the user events it decides
//!    are written to `diet.events.user` as the command processor writes them (key, headers,
//!    partition, timestamp);
//! 2. **R_raw**: a consumer with the loop's settings ([`consume::consumer_config`]) reads the
//!    topic as the loop does (batches of arrived records, each detached), without decoding;
//! 3. **R_dec**: the same, plus the decoding of every record by the real codec and registry;
//! 4. **S_db**: the CQL store's raw upsert rate: one prepared statement for a table a
//!    processor writes, rows shaped by that processor, every row a different key, at most
//!    `max_in_flight` (the loop's setting) in flight;
//! 5. **R_pipe** of each processor: the runtime's loop ([`consume::run`]) into a fresh
//!    keyspace, timed until it has processed every record (lag 0), with the CPU seconds per
//!    million records of this process (which only runs the loop then), of Cassandra and of
//!    the Kafka broker, and the CQL writes per second it achieved (events of 100 000 users
//!    taken round by round: nearly every event of a batch hits a different key);
//! 6. **freshness**: with the last processor (nutrition) still running, its maximum on the
//!    fresh events' mix is measured first (a backlog of the players' next events, mostly meals
//!    and water, sent at once and timed until processed: the prefill's mix of registrations
//!    and goals is lighter, so R_pipe overstates it); then fresh events are produced in steps
//!    at fractions of that maximum (0.1, 0.25 and the goal's 0.5 by default), each for a
//!    while; the loop's freshness histogram (event timestamp to write acknowledged) gives p50
//!    and p99 per step. The players' events of a step are decided before it starts and
//!    stamped when sent, so that the domain's work does not compete with the loop.
//!
//! `cargo bench --bench processors` (`make bench`) runs the full benchmark. Without `--bench`,
//! as `cargo test --all-targets` runs it, it is a smoke run on a small workload that checks
//! the same things. Figures are printed and written to `<target dir>/bench/processors.json`
//! (`processors-smoke.json`). Nothing asserts a timing. `BENCH_USERS`,
//! `BENCH_COMMANDS_PER_USER`, `BENCH_SDB_WRITES` and `BENCH_FRESHNESS_SECONDS` override the
//! sizes of the full run (`BENCH_FRESHNESS_SECONDS` per step), `BENCH_FRESHNESS_FRACTIONS` the
//! steps; `BENCH_PROCESSORS` (comma-separated, default
//! `engagement,quests,insights,nutrition`) chooses the processors whose R_pipe is measured, in
//! order, the last one also running the freshness phase; `BENCH_CONSUME_ROUNDS` (default 3)
//! how many times R_raw and R_dec are measured, alternating (the median round is reported,
//! every round is in the JSON, with the CPU of this process per record and the time spent
//! awaiting a batch's first record).

mod common;

/// The allocator of the `dietstream` binary (src/main.rs): the loop is measured with what it
/// runs with.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dietstream::bus::{CommandOutcome, ROUTING_KEY_HEADER, SOURCE_HEADER};
use dietstream::config::Config;
use dietstream::simulate::{GeneratorConfig, UserSim};
use dietstream_commands::domain::{apply, decide, Aggregate, AggregateKind};
use dietstream_engagement::EngagementProjection;
use dietstream_insights::InsightsProjection;
use dietstream_nutrition::NutritionProjection;
use dietstream_quests::QuestsProjection;
use dietstream_runtime::consume::{self, Parts, ProcessorTopics};
use dietstream_runtime::{Origin, ProcessorMetrics, Projection, Row, Store};
use dietstream_schemas::codec::RECORD_TYPE_HEADER;
use dietstream_schemas::Event;
use dietstream_topology::{partition_for, prefixed};
use futures::{FutureExt, StreamExt};
use prometheus::proto::MetricFamily;
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use scylla::client::session::Session;
use scylla::value::CqlValue;
use serde_json::json;
use tokio::runtime::Runtime;

use common::{
    broker_pid, cassandra_pid, cpu_ticks, drain, enqueue, env_or, is_full_run, load_average,
    machine_facts, now_micros, run_suffix, text_header, Acks, Fresh, TICKS_PER_SECOND, TIMEOUT,
};

/// Seed of the players.
const SEED: u64 = 5;
/// User events kept decoded for the row shapes of S_db.
const SAMPLES: usize = 20_000;
/// How often a running phase looks at its progress.
const POLL: Duration = Duration::from_millis(20);
/// The table whose row shape S_db writes, and the processor that writes it.
const SDB_TABLE: &str = "nutrition_user_daily";
/// The processor whose CQL writes per second are compared with S_db: every event it applies
/// writes rows of its user (daily, weekly, monthly), and the players take turns, so nearly
/// every row of a batch has a key of its own.
const DISTINCT_KEY_PROCESSOR: &str = "nutrition";

/// Sizes of one run.
#[derive(Debug, Clone)]
struct Plan {
    full: bool,
    users: u32,
    commands_per_user: u32,
    sdb_writes: usize,
    /// How long each step of the freshness phase produces.
    freshness: Duration,
    /// The steps of the freshness phase: fractions of the processor's maximum on the fresh
    /// events' mix, in order.
    freshness_fractions: Vec<f64>,
    /// Cap of the freshness phase's rate (a smoke run's R_pipe is not a steady figure).
    freshness_rate_cap: f64,
    /// The processors whose R_pipe is measured, in order; the last runs the freshness phase.
    processors: Vec<String>,
    /// Rounds of R_raw and R_dec, alternating.
    consume_rounds: u32,
}

/// Every processor the bench knows, in the default order.
const PROCESSORS: [&str; 4] = ["engagement", "quests", "insights", "nutrition"];

impl Plan {
    fn new(full: bool) -> Plan {
        if !full {
            return Plan {
                full,
                users: 300,
                commands_per_user: 4,
                sdb_writes: 2_000,
                freshness: Duration::from_secs(3),
                freshness_fractions: vec![GOAL_LOAD],
                freshness_rate_cap: 200.0,
                processors: PROCESSORS.map(str::to_owned).to_vec(),
                consume_rounds: 1,
            };
        }
        Plan {
            full,
            users: env_or("BENCH_USERS", 100_000),
            commands_per_user: env_or("BENCH_COMMANDS_PER_USER", 5),
            sdb_writes: env_or("BENCH_SDB_WRITES", 100_000),
            freshness: Duration::from_secs_f64(env_or("BENCH_FRESHNESS_SECONDS", 20.0)),
            freshness_fractions: fractions(&env_or(
                "BENCH_FRESHNESS_FRACTIONS",
                "0.1,0.25,0.5".to_owned(),
            )),
            freshness_rate_cap: f64::INFINITY,
            processors: env_or("BENCH_PROCESSORS", PROCESSORS.join(","))
                .split(',')
                .map(|p| p.trim().to_owned())
                .filter(|p| !p.is_empty())
                .inspect(|p| {
                    assert!(
                        PROCESSORS.contains(&p.as_str()),
                        "BENCH_PROCESSORS: {p:?} is not one of {PROCESSORS:?}"
                    )
                })
                .collect(),
            consume_rounds: env_or("BENCH_CONSUME_ROUNDS", 3).max(1),
        }
    }

    fn suffix(&self) -> &'static str {
        run_suffix(self.full)
    }
}

/// The load the freshness goal is judged at: half of the maximum (the processor's rate on
/// the fresh events' mix).
const GOAL_LOAD: f64 = 0.5;

/// `BENCH_FRESHNESS_FRACTIONS`: comma-separated fractions of the maximum in (0, 1], which must
/// include the goal's half load.
fn fractions(list: &str) -> Vec<f64> {
    let fractions: Vec<f64> = list
        .split(',')
        .map(str::trim)
        .filter(|f| !f.is_empty())
        .map(|f| {
            f.parse::<f64>()
                .ok()
                .filter(|v| *v > 0.0 && *v <= 1.0)
                .unwrap_or_else(|| {
                    panic!("BENCH_FRESHNESS_FRACTIONS: {f:?} is not a fraction in (0, 1]")
                })
        })
        .collect();
    assert!(
        fractions.contains(&GOAL_LOAD),
        "BENCH_FRESHNESS_FRACTIONS must include {GOAL_LOAD} (the goal's half load): {list:?}"
    );
    fractions
}

fn main() {
    let full = is_full_run();
    let plan = Plan::new(full);
    let started = Instant::now();
    let rt = Runtime::new().expect("tokio runtime");
    let machine = machine_facts();
    let fresh = rt.block_on(Fresh::new());
    let topic = prefixed(&fresh.config.topology.prefix, "diet.events.user");
    let partitions = fresh
        .desired
        .topics
        .iter()
        .find(|t| t.name == topic)
        .map(|t| t.partitions)
        .expect("the topology declares the user events topic");
    eprintln!(
        "bench: {} run under prefix {}: {} players x {} commands into {topic}",
        if full { "full" } else { "smoke" },
        fresh.config.topology.prefix,
        plan.users,
        plan.commands_per_user,
    );
    let session = Arc::new(
        rt.block_on(fresh.config.cql.session())
            .expect("CQL session"),
    );
    let mut players = Players::new(&plan);
    let producer = event_producer(&fresh.config);
    let filled = rt.block_on(prefill(
        &fresh,
        &producer,
        &topic,
        partitions,
        &mut players,
        &plan,
    ));
    eprintln!(
        "bench: {} user events written in {:.1} s ({:.0} B each on average)",
        filled.records,
        filled.elapsed.as_secs_f64(),
        filled.bytes as f64 / filled.records as f64
    );

    // Raw and decoding rounds alternate, so that a change of the machine's load during the
    // run weighs on both alike; each figure is the median round.
    let (mut raws, mut decs) = (Vec::new(), Vec::new());
    for round in 0..plan.consume_rounds {
        let raw = rt.block_on(consume_only(&fresh, &topic, filled.records, false, round));
        let dec = rt.block_on(consume_only(&fresh, &topic, filled.records, true, round));
        eprintln!(
            "bench: round {round}: R_raw {:.0} records/s ({:.2} µs CPU each, {} batches, {:.2} s awaiting records, longest wait {:.1} ms), R_dec {:.0} records/s ({:.2} µs CPU each, {} batches, {:.2} s awaiting records, longest wait {:.1} ms)",
            raw.rate(),
            raw.cpu_micros_per_record(),
            raw.batches,
            raw.waited.as_secs_f64(),
            raw.longest_wait.as_secs_f64() * 1e3,
            dec.rate(),
            dec.cpu_micros_per_record(),
            dec.batches,
            dec.waited.as_secs_f64(),
            dec.longest_wait.as_secs_f64() * 1e3,
        );
        raws.push(raw);
        decs.push(dec);
    }
    let (raw, dec) = (median_round(&raws), median_round(&decs));
    let sdb = rt.block_on(store_rate(
        &fresh,
        &session,
        &filled.samples,
        plan.sdb_writes,
    ));
    eprintln!("bench: S_db {:.0} upserts/s", sdb.rate());

    let env = PipeEnv {
        fresh: &fresh,
        session: &session,
        records: filled.records,
    };
    let mut freshness = FreshnessRun {
        players: &mut players,
        producer: &producer,
        topic: &topic,
        partitions,
        duration: plan.freshness,
        fractions: plan.freshness_fractions.clone(),
        rate_cap: plan.freshness_rate_cap,
        steady: None,
        figures: Vec::new(),
    };
    assert!(!plan.processors.is_empty(), "BENCH_PROCESSORS names none");
    // One line per processor. The last also runs the freshness phase, whose fresh events
    // then follow the prefilled ones in the topic; the nutrition processor's rows are the
    // distinct-key write figure.
    let mut pipes = Vec::new();
    for (index, name) in plan.processors.iter().enumerate() {
        let last = (index + 1 == plan.processors.len()).then_some(&mut freshness);
        pipes.push(match name.as_str() {
            "engagement" => rt.block_on(pipe(&env, EngagementProjection::new(), last)),
            "quests" => rt.block_on(pipe(&env, QuestsProjection::new(), last)),
            "insights" => rt.block_on(pipe(&env, InsightsProjection::new(), last)),
            _ => rt.block_on(pipe(&env, NutritionProjection::new(), last)),
        });
    }
    let FreshnessRun {
        figures: freshness,
        steady,
        ..
    } = freshness;
    assert!(!freshness.is_empty(), "the freshness phase ran");
    rt.block_on(delete_topic(&fresh.config, &topic));

    let report = Report {
        plan: &plan,
        machine,
        load_at_end: load_average(),
        prefix: &fresh.config.topology.prefix,
        loop_config: &fresh.config.processors,
        filled: &filled,
        partitions,
        raw,
        dec,
        raws: &raws,
        decs: &decs,
        sdb: &sdb,
        pipes: &pipes,
        steady: steady.as_ref(),
        freshness: &freshness,
        total: started.elapsed(),
    };
    report.print();
    std::fs::write(
        fresh
            .out_dir
            .join(format!("processors{}.json", plan.suffix())),
        serde_json::to_string_pretty(&report.json()).expect("report serialises") + "\n",
    )
    .expect("report written");

    // The bench is also a test (`cargo test --all-targets`): every phase saw every record and
    // the processors stopped cleanly without dead letters. No timing is asserted.
    for (raw, dec) in raws.iter().zip(&decs) {
        assert_eq!(raw.records, filled.records, "R_raw read every record");
        assert_eq!(dec.records, filled.records, "R_dec decoded every record");
        assert_eq!(dec.decode_errors, 0, "R_dec: every record decodes");
    }
    for pipe in &pipes {
        assert_eq!(
            pipe.summary.records,
            pipe.records_expected + pipe.fresh_events,
            "{}: every record",
            pipe.name
        );
        assert_eq!(
            pipe.summary.dead_lettered, 0,
            "{}: no dead letter",
            pipe.name
        );
        assert!(pipe.summary.applied > 0, "{}: events applied", pipe.name);
        assert!(pipe.writes > 0, "{}: rows written", pipe.name);
    }
    for step in &freshness {
        assert!(
            step.observations > 0,
            "freshness observed at {:.0}/s",
            step.rate
        );
    }
}

/// The players and the aggregates the domain keeps for them.
struct Players {
    sims: Vec<UserSim>,
    aggregates: HashMap<(AggregateKind, String), Aggregate>,
    next: usize,
}

impl Players {
    fn new(plan: &Plan) -> Players {
        let generator = GeneratorConfig {
            user_prefix: "pbench".to_owned(),
            ..GeneratorConfig::new(SEED, plan.users)
        };
        Players {
            sims: (0..plan.users)
                .map(|i| UserSim::new(&generator, i))
                .collect(),
            aggregates: HashMap::new(),
            next: 0,
        }
    }

    /// The next `count` user events of the players, decided now (their timestamps are set
    /// again when they are sent).
    fn decide(&mut self, count: usize) -> Vec<Event> {
        let mut events = Vec::with_capacity(count);
        let mut plays = 0usize;
        while events.len() < count {
            events.extend(self.play(now_micros()));
            plays += 1;
            assert!(
                plays <= count.saturating_mul(100).max(1_000),
                "the players stopped producing user events"
            );
        }
        events.truncate(count);
        events
    }

    /// The next player's next command, decided by the domain at `now`: its user events.
    fn play(&mut self, now: i64) -> Vec<Event> {
        for _ in 0..self.sims.len() {
            let index = self.next;
            self.next = (self.next + 1) % self.sims.len();
            let player = &mut self.sims[index];
            let Some(planned) = player.next_command() else {
                continue;
            };
            let command = planned.command;
            let kind = AggregateKind::of_command(&command)
                .expect("the simulator only sends commands of the processor's aggregates");
            let aggregate = self
                .aggregates
                .entry((kind, command.header().aggregate_id.clone()))
                .or_default();
            let (outcome, events) = match decide(aggregate, &command, now) {
                Ok(events) => {
                    for event in &events {
                        apply(aggregate, event).expect("decided events apply");
                    }
                    let outcome = CommandOutcome::Accepted {
                        new_version: aggregate.version,
                        event_ids: events.iter().map(|e| e.header().event_id).collect(),
                    };
                    (outcome, events)
                }
                Err(rejection) => (
                    CommandOutcome::Rejected {
                        reason: rejection.reason,
                        message: rejection.message,
                        field: rejection.field,
                        expected_version: rejection.expected_version,
                        current_version: rejection.current_version,
                    },
                    Vec::new(),
                ),
            };
            player.observe(&outcome);
            return if kind == AggregateKind::User {
                events
            } else {
                Vec::new()
            };
        }
        Vec::new()
    }
}

/// The producer of the user events: idempotent, `acks=all`, and `linger.ms` 5 as the command
/// processor's producer (the freshness phase times from the event's timestamp, so the linger
/// counts in it).
fn event_producer(config: &Config) -> ThreadedProducer<Acks> {
    config
        .kafka
        .client_config()
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create_with_context(Acks::default())
        .expect("event producer")
}

/// Writes one event as the command processor does: key `<aggregate>/<version>`, type, source
/// and routing headers, the aggregate's partition, the event's timestamp. Returns its size.
async fn send_event(
    fresh: &Fresh,
    producer: &ThreadedProducer<Acks>,
    topic: &str,
    partitions: i32,
    event: &Event,
) -> usize {
    let header = event.header();
    let payload = event
        .encode(&fresh.codec, topic)
        .await
        .expect("event encodes");
    let key = format!("{}/{}", header.aggregate_id, header.version);
    let headers = OwnedHeaders::new()
        .insert(text_header(RECORD_TYPE_HEADER, event.record_type()))
        .insert(text_header(
            SOURCE_HEADER,
            dietstream_commands::topics::PROCESSOR,
        ))
        .insert(text_header(ROUTING_KEY_HEADER, &header.aggregate_id));
    enqueue(
        producer,
        BaseRecord::to(topic)
            .key(key.as_str())
            .payload(payload.as_slice())
            .partition(partition_for(&header.aggregate_id, partitions))
            .timestamp(header.timestamp / 1000)
            .headers(headers),
    );
    payload.len()
}

/// What the prefill wrote.
struct Filled {
    records: u64,
    bytes: u64,
    mix: BTreeMap<String, u64>,
    samples: Vec<Event>,
    elapsed: Duration,
}

async fn prefill(
    fresh: &Fresh,
    producer: &ThreadedProducer<Acks>,
    topic: &str,
    partitions: i32,
    players: &mut Players,
    plan: &Plan,
) -> Filled {
    let started = Instant::now();
    let mut filled = Filled {
        records: 0,
        bytes: 0,
        mix: BTreeMap::new(),
        samples: Vec::new(),
        elapsed: Duration::ZERO,
    };
    let commands = u64::from(plan.users) * u64::from(plan.commands_per_user);
    let sample_every = (commands / SAMPLES as u64).max(1);
    for n in 0..commands {
        for event in players.play(now_micros()) {
            filled.bytes += send_event(fresh, producer, topic, partitions, &event).await as u64;
            filled.records += 1;
            *filled
                .mix
                .entry(event.header().event_type.clone())
                .or_default() += 1;
            // Spread over the whole run: the first rounds are registrations and goals.
            if n % sample_every == 0 && filled.samples.len() < SAMPLES {
                filled.samples.push(event);
            }
        }
        if plan.full && n % 200_000 == 0 && n > 0 {
            eprintln!("bench: {n} commands played, {} user events", filled.records);
        }
    }
    drain(producer, filled.records, "filling the user events");
    filled.elapsed = started.elapsed();
    filled
}

/// One consume-only phase.
struct ConsumeFigures {
    records: u64,
    /// From subscribing to the last record.
    from_subscribe: Duration,
    /// From the first record to the last.
    from_first: Duration,
    decode_errors: u64,
    cpu_seconds: f64,
    /// Time spent awaiting a batch's first record (none had arrived), and how many batches.
    waited: Duration,
    batches: u64,
    /// The longest of those waits.
    longest_wait: Duration,
}

impl ConsumeFigures {
    fn rate(&self) -> f64 {
        self.records as f64 / self.from_first.as_secs_f64().max(1e-9)
    }

    /// CPU of this process (the consumer's threads included) per record.
    fn cpu_micros_per_record(&self) -> f64 {
        self.cpu_seconds * 1e6 / self.records.max(1) as f64
    }
}

/// The round with the median rate (the lower middle one of an even count).
fn median_round(rounds: &[ConsumeFigures]) -> &ConsumeFigures {
    let mut sorted: Vec<&ConsumeFigures> = rounds.iter().collect();
    sorted.sort_by(|a, b| a.rate().total_cmp(&b.rate()));
    sorted[(sorted.len() - 1) / 2]
}

/// Reads `records` records of `topic` in a fresh group with the loop's consumer settings and
/// its way of taking batches; with `decode`, every record is decoded as the loop decodes.
async fn consume_only(
    fresh: &Fresh,
    topic: &str,
    records: u64,
    decode: bool,
    round: u32,
) -> ConsumeFigures {
    let group = format!(
        "{}.bench.{}.{round}",
        fresh.config.topology.prefix,
        if decode { "decode" } else { "raw" }
    );
    let consumer: StreamConsumer =
        consume::consumer_config(&fresh.config.kafka.client_config(), &group)
            .create()
            .expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let batch_size = fresh.config.processors.batch_size;
    let cpu_start = cpu_ticks("/proc/self/stat").unwrap_or(0);
    let subscribed = Instant::now();
    let mut first = None;
    let mut seen = 0;
    let mut decode_errors = 0;
    let (mut waited, mut batches, mut longest_wait) = (Duration::ZERO, 0, Duration::ZERO);
    while seen < records {
        let awaited = Instant::now();
        let message = tokio::time::timeout(TIMEOUT, consumer.recv())
            .await
            .unwrap_or_else(|_| panic!("{topic}: no record for {TIMEOUT:?} ({seen} read)"))
            .expect("record");
        if first.is_some() {
            let wait = awaited.elapsed();
            waited += wait;
            longest_wait = longest_wait.max(wait);
        }
        batches += 1;
        first.get_or_insert_with(Instant::now);
        let mut batch = vec![message.detach()];
        while batch.len() < batch_size {
            match consumer.recv().now_or_never() {
                Some(Ok(message)) => batch.push(message.detach()),
                _ => break,
            }
        }
        seen += batch.len() as u64;
        if decode {
            for message in &batch {
                // The loop's own scan for the type header.
                let typed =
                    dietstream_runtime::headers::find(message.headers(), RECORD_TYPE_HEADER)
                        .is_some();
                let decoded = match message.payload() {
                    Some(payload) if typed => fresh.codec.decode_event(payload).await.is_ok(),
                    _ => false,
                };
                decode_errors += u64::from(!decoded);
            }
        }
    }
    let end = Instant::now();
    ConsumeFigures {
        records: seen,
        from_subscribe: end - subscribed,
        from_first: end - first.unwrap_or(subscribed),
        decode_errors,
        waited,
        batches,
        longest_wait,
        cpu_seconds: cpu_ticks("/proc/self/stat")
            .unwrap_or(0)
            .saturating_sub(cpu_start) as f64
            / TICKS_PER_SECOND,
    }
}

/// A fresh keyspace named after `what`.
async fn keyspace(fresh: &Fresh, session: &Session, what: &str) -> String {
    let mut cql = fresh.config.cql.clone();
    cql.keyspace = format!("pbench_{what}_{:08x}", rand::random::<u32>());
    cql.create_keyspace(session)
        .await
        .unwrap_or_else(|e| panic!("keyspace {}: {e}", cql.keyspace));
    cql.keyspace
}

/// Drops a keyspace, trying again while the node is too busy to answer in the driver's
/// timeout (a schema change right after heavy writes, on a loaded machine); a keyspace
/// still there after [`TIMEOUT`] is reported and left: it is cleanup, not a measurement.
async fn drop_keyspace(session: &Session, keyspace: &str) {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        match session
            .query_unpaged(format!("DROP KEYSPACE IF EXISTS {keyspace}"), ())
            .await
        {
            Ok(_) => return,
            Err(e) if Instant::now() < deadline => {
                eprintln!("bench: dropping {keyspace}: {e}; trying again");
            }
            Err(e) => {
                eprintln!("bench: {keyspace} left behind: {e}");
                return;
            }
        }
    }
}

/// The raw upsert phase.
struct StoreFigures {
    table: &'static str,
    columns: usize,
    writes: usize,
    in_flight: usize,
    elapsed: Duration,
    cassandra_cpu_seconds: Option<f64>,
}

impl StoreFigures {
    fn rate(&self) -> f64 {
        self.writes as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Upserts `writes` rows of [`SDB_TABLE`], shaped as the nutrition projection writes them for
/// the sampled events, each under a key of its own, through one prepared statement with the
/// loop's `max_in_flight`.
async fn store_rate(
    fresh: &Fresh,
    session: &Session,
    samples: &[Event],
    writes: usize,
) -> StoreFigures {
    let projection = NutritionProjection::new();
    let keyspace = keyspace(fresh, session, "sdb").await;
    dietstream_runtime::store::migrate(session, &projection, &keyspace)
        .await
        .expect("nutrition tables");
    let table = projection
        .tables()
        .iter()
        .find(|t| t.name == SDB_TABLE)
        .expect("the nutrition processor writes the S_db table");
    let origin = Origin {
        topic: "pbench",
        partition: 0,
        offset: 0,
    };
    let shapes: Vec<Vec<Option<CqlValue>>> = samples
        .iter()
        .flat_map(|event| {
            projection
                .entities(event, &origin)
                .into_iter()
                .filter_map(|entity| {
                    let mut state = Default::default();
                    projection.apply(&entity, &mut state, event, &origin).ok()
                })
                .collect::<Vec<_>>()
        })
        .flat_map(|effects| effects.rows)
        .filter_map(|row| match row {
            Row::Upsert { table, key, values } if table == SDB_TABLE => Some(
                key.into_iter()
                    .map(Some)
                    .chain(values)
                    .collect::<Vec<Option<CqlValue>>>(),
            ),
            _ => None,
        })
        .collect();
    assert!(!shapes.is_empty(), "the samples give {SDB_TABLE} rows");
    let columns: Vec<&str> = table.key.iter().chain(table.values).copied().collect();
    let statement = session
        .prepare(format!(
            "INSERT INTO {keyspace}.{SDB_TABLE} ({}) VALUES ({})",
            columns.join(", "),
            vec!["?"; columns.len()].join(", ")
        ))
        .await
        .expect("prepared upsert");
    // Key column 0 is the user: a fresh one per row makes every key distinct.
    let rows: Vec<Vec<Option<CqlValue>>> = (0..writes)
        .map(|i| {
            let mut row = shapes[i % shapes.len()].clone();
            row[0] = Some(CqlValue::Text(format!("sdb-{i}")));
            row
        })
        .collect();
    let in_flight = fresh.config.processors.max_in_flight;
    let cassandra = cassandra_pid();
    let cpu = || cassandra.and_then(|pid| cpu_ticks(&format!("/proc/{pid}/stat")));
    let cpu_start = cpu();
    let started = Instant::now();
    let results: Vec<_> = futures::stream::iter(rows.iter())
        .map(|row| session.execute_unpaged(&statement, row))
        .buffer_unordered(in_flight)
        .collect()
        .await;
    let elapsed = started.elapsed();
    let cpu_end = cpu();
    for result in results {
        result.expect("upsert");
    }
    drop_keyspace(session, &keyspace).await;
    StoreFigures {
        table: SDB_TABLE,
        columns: columns.len(),
        writes,
        in_flight,
        elapsed,
        cassandra_cpu_seconds: cpu_start
            .zip(cpu_end)
            .map(|(a, b)| b.saturating_sub(a) as f64 / TICKS_PER_SECOND),
    }
}

/// What every pipe phase shares.
struct PipeEnv<'a> {
    fresh: &'a Fresh,
    session: &'a Arc<Session>,
    records: u64,
}

/// The freshness phase's inputs, and its figures once it ran.
struct FreshnessRun<'a> {
    players: &'a mut Players,
    producer: &'a ThreadedProducer<Acks>,
    topic: &'a str,
    partitions: i32,
    duration: Duration,
    fractions: Vec<f64>,
    rate_cap: f64,
    /// The processor's maximum rate on the fresh events' mix, which the steps are fractions of.
    steady: Option<SteadyFigures>,
    figures: Vec<FreshnessFigures>,
}

/// The processor's maximum on the mix the freshness steps produce: a backlog of such events
/// sent at once, timed from the first send until the last is processed. The prefill is mostly
/// registrations, profiles and goals; the players then log meals and water, which cost a
/// processor about twice the writes per event, so R_pipe overstates the maximum of that mix.
struct SteadyFigures {
    events: u64,
    seconds: f64,
    writes: u64,
    batches: u64,
}

impl SteadyFigures {
    fn rate(&self) -> f64 {
        self.events as f64 / self.seconds.max(1e-9)
    }
}

/// One step of the freshness phase.
struct FreshnessFigures {
    processor: &'static str,
    /// The step's load as a fraction of the processor's maximum on the fresh events' mix.
    fraction: f64,
    target_rate: f64,
    rate: f64,
    events: u64,
    seconds: f64,
    observations: u64,
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
    /// Upper bound of the histogram bucket that holds the p99.
    p99_bucket_ms: Option<f64>,
    buckets: Vec<(f64, u64)>,
    /// Batches the loop finished from the step's start until its events were processed.
    batches: u64,
    /// Fresh events produced but not yet processed when the step stopped producing: near 0
    /// when the processor kept up.
    behind_at_end: u64,
    /// Mean time of the loop's batches in the step.
    batch_mean_ms: f64,
    /// CQL writes (rows and states) the loop made in the step.
    writes: u64,
    /// Seconds waited before the step for Cassandra to settle (below a fifth of a core).
    settled_after: f64,
    /// CPU seconds over the step (producing included): this process, Cassandra, the broker.
    cpu: (f64, Option<f64>, Option<f64>),
}

/// CPU ticks of this process, Cassandra and the broker at one moment.
#[derive(Clone, Copy)]
struct Cpu {
    process: u64,
    cassandra: Option<u64>,
    broker: Option<u64>,
}

fn cpu_now(cassandra: Option<u32>, broker: Option<u32>) -> Cpu {
    let of = |pid: Option<u32>| pid.and_then(|p| cpu_ticks(&format!("/proc/{p}/stat")));
    Cpu {
        process: cpu_ticks("/proc/self/stat").unwrap_or(0),
        cassandra: of(cassandra),
        broker: of(broker),
    }
}

/// One processor's pipe phase.
struct PipeFigures {
    name: &'static str,
    records_expected: u64,
    from_start: Duration,
    from_first: Duration,
    /// CPU seconds over the phase: this process, Cassandra, the broker.
    cpu: (f64, Option<f64>, Option<f64>),
    /// CQL writes acknowledged (rows and states), by table.
    writes_by_table: BTreeMap<String, u64>,
    writes: u64,
    /// The loop's summary: it covers the freshness phase's records too.
    summary: dietstream_runtime::LoopSummary,
    /// Records produced in the freshness phase while this processor ran.
    fresh_events: u64,
    batches: u64,
}

impl PipeFigures {
    fn rate(&self) -> f64 {
        self.records_expected as f64 / self.from_first.as_secs_f64().max(1e-9)
    }

    fn writes_per_second(&self) -> f64 {
        self.writes as f64 / self.from_first.as_secs_f64().max(1e-9)
    }

    fn per_million(&self, seconds: f64) -> f64 {
        seconds * 1e6 / self.records_expected as f64
    }
}

/// The metric families of `name` for `processor`.
fn families<'a>(
    gathered: &'a [MetricFamily],
    name: &str,
    processor: &str,
) -> Vec<&'a prometheus::proto::Metric> {
    gathered
        .iter()
        .filter(|f| f.name() == name)
        .flat_map(|f| f.get_metric())
        .filter(|m| {
            m.get_label()
                .iter()
                .any(|l| l.name() == "processor" && l.value() == processor)
        })
        .collect()
}

fn counter_sum(gathered: &[MetricFamily], name: &str, processor: &str) -> f64 {
    families(gathered, name, processor)
        .iter()
        .map(|m| m.get_counter().get_value())
        .sum()
}

/// Batches of the processor whose writes are acknowledged and offsets stored.
fn batch_count(gathered: &[MetricFamily], processor: &str) -> u64 {
    families(gathered, "dietstream_batch_records", processor)
        .iter()
        .map(|m| m.get_histogram().get_sample_count())
        .sum()
}

/// Seconds the processor's finished batches took, in all.
fn batch_seconds(gathered: &[MetricFamily], processor: &str) -> f64 {
    families(gathered, "dietstream_batch_duration_seconds", processor)
        .iter()
        .map(|m| m.get_histogram().get_sample_sum())
        .sum()
}

/// CPU seconds between two readings: this process, Cassandra, the broker.
fn cpu_between(start: &Cpu, end: &Cpu) -> (f64, Option<f64>, Option<f64>) {
    let seconds = |a: Option<u64>, b: Option<u64>| {
        a.zip(b)
            .map(|(a, b)| b.saturating_sub(a) as f64 / TICKS_PER_SECOND)
    };
    (
        end.process.saturating_sub(start.process) as f64 / TICKS_PER_SECOND,
        seconds(start.cassandra, end.cassandra),
        seconds(start.broker, end.broker),
    )
}

/// Records of the processor's batches whose writes are acknowledged and offsets stored.
fn batch_records(gathered: &[MetricFamily], processor: &str) -> f64 {
    families(gathered, "dietstream_batch_records", processor)
        .iter()
        .map(|m| m.get_histogram().get_sample_sum())
        .sum()
}

/// Cumulative (upper bound, count) of the processor's freshness histogram.
fn freshness_buckets(gathered: &[MetricFamily], processor: &str) -> Vec<(f64, u64)> {
    families(gathered, "dietstream_freshness_seconds", processor)
        .first()
        .map(|m| {
            m.get_histogram()
                .get_bucket()
                .iter()
                .map(|b| (b.upper_bound(), b.cumulative_count()))
                .collect()
        })
        .unwrap_or_default()
}

/// Runs `projection` through the loop into a fresh keyspace until every record is processed;
/// then the freshness phase when asked.
async fn pipe<P: Projection>(
    env: &PipeEnv<'_>,
    projection: P,
    freshness: Option<&mut FreshnessRun<'_>>,
) -> PipeFigures {
    let fresh = env.fresh;
    let name = projection.name();
    let keyspace = keyspace(fresh, env.session, name).await;
    dietstream_runtime::store::migrate(env.session, &projection, &keyspace)
        .await
        .expect("tables");
    let store = Store::prepare(Arc::clone(env.session), &projection, &keyspace)
        .await
        .expect("statements");
    let registry = prometheus::Registry::new();
    let metrics = ProcessorMetrics::new(name, &registry).expect("metrics");
    let parts = Parts {
        projection: Arc::new(projection),
        topics: ProcessorTopics::from_desired(&fresh.desired, name).expect("processor topics"),
        store,
        codec: Arc::clone(&fresh.codec),
        config: fresh.config.processors.clone(),
        metrics,
    };
    let (cassandra, broker) = (cassandra_pid(), broker_pid());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let kafka = fresh.config.kafka.client_config();
    eprintln!("bench: R_pipe of {name}");
    let cpu_start = cpu_now(cassandra, broker);
    let started = Instant::now();
    let running = tokio::spawn(async move {
        consume::run(parts, &kafka, async {
            let _ = stopped.await;
        })
        .await
    });
    let mut first = None;
    let mut last_progress = (Instant::now(), 0.0);
    let end = loop {
        assert!(!running.is_finished(), "{name}: the loop stopped early");
        let gathered = registry.gather();
        let consumed = counter_sum(&gathered, "dietstream_records_consumed_total", name);
        if consumed > 0.0 {
            first.get_or_insert_with(Instant::now);
        }
        // A batch is observed once its writes are acknowledged and its offsets stored.
        let processed = batch_records(&gathered, name);
        if processed >= env.records as f64 {
            break Instant::now();
        }
        if processed > last_progress.1 {
            last_progress = (Instant::now(), processed);
        }
        assert!(
            last_progress.0.elapsed() < TIMEOUT,
            "{name}: no progress for {TIMEOUT:?} ({processed} of {} records)",
            env.records
        );
        tokio::time::sleep(POLL).await;
    };
    let cpu_end = cpu_now(cassandra, broker);
    let gathered = registry.gather();
    let mut writes_by_table = BTreeMap::new();
    for family in gathered
        .iter()
        .filter(|f| f.name() == "dietstream_cql_write_duration_seconds")
    {
        for metric in family.get_metric() {
            let table = metric
                .get_label()
                .iter()
                .find(|l| l.name() == "table")
                .map(|l| l.value().to_owned())
                .unwrap_or_default();
            *writes_by_table.entry(table).or_default() += metric.get_histogram().get_sample_count();
        }
    }
    let batches = batch_count(&gathered, name);
    let figures = PipeFigures {
        name,
        records_expected: env.records,
        from_start: end - started,
        from_first: end - first.unwrap_or(started),
        cpu: cpu_between(&cpu_start, &cpu_end),
        writes: writes_by_table.values().sum(),
        writes_by_table,
        summary: Default::default(),
        fresh_events: 0,
        batches,
    };
    eprintln!(
        "bench: {name}: {:.0} records/s, {:.0} CQL writes/s",
        figures.rate(),
        figures.writes_per_second()
    );
    let mut fresh_events = 0;
    if let Some(run) = freshness {
        let backlog = (figures.rate().min(run.rate_cap) * run.duration.as_secs_f64()).ceil();
        let steady =
            measure_steady(fresh, &registry, name, run, backlog as usize, env.records).await;
        eprintln!(
            "bench: {name}: {:.0} records/s on the fresh events' mix ({} events, {:.2} writes each)",
            steady.rate(),
            steady.events,
            steady.writes as f64 / steady.events.max(1) as f64
        );
        fresh_events += steady.events;
        let maximum = steady.rate();
        run.steady = Some(steady);
        for fraction in run.fractions.clone() {
            let processed = env.records + fresh_events;
            let step = FreshnessStep {
                processor: name,
                fraction,
                rate: (maximum * fraction).min(run.rate_cap),
                processed_before: processed,
            };
            let measured = measure_freshness(fresh, &registry, &step, run).await;
            fresh_events += measured.events;
            run.figures.push(measured);
        }
    }
    let _ = stop.send(());
    let summary = running
        .await
        .expect("loop task")
        .unwrap_or_else(|e| panic!("{name}: the loop failed: {e}"));
    drop_keyspace(env.session, &keyspace).await;
    PipeFigures {
        summary,
        fresh_events,
        ..figures
    }
}

/// One step of the freshness phase.
struct FreshnessStep {
    processor: &'static str,
    fraction: f64,
    rate: f64,
    /// Records the loop had processed (in finished batches) before the step.
    processed_before: u64,
}

/// Produces fresh events at the step's rate for the run's duration while the processor runs,
/// and reads the change of its freshness histogram.
///
/// The players' next events are decided before the step starts, so that the domain's work
/// does not take CPU from the processor it measures; each is stamped with the time it is
/// sent (the event header's timestamp, which freshness is measured from) and encoded then.
async fn measure_freshness(
    fresh: &Fresh,
    registry: &prometheus::Registry,
    step: &FreshnessStep,
    run: &mut FreshnessRun<'_>,
) -> FreshnessFigures {
    let processor = step.processor;
    let settled_after = settle_cassandra().await;
    let pending = run
        .players
        .decide((step.rate * run.duration.as_secs_f64()).ceil() as usize);
    eprintln!(
        "bench: freshness of {processor} at {:.0} events/s ({} of the maximum) for {:.0} s",
        step.rate,
        step.fraction,
        run.duration.as_secs_f64()
    );
    let gathered = registry.gather();
    let before = freshness_buckets(&gathered, processor);
    let batches_before = batch_count(&gathered, processor);
    let batch_seconds_before = batch_seconds(&gathered, processor);
    let writes_before = cql_writes(&gathered);
    let (cassandra, broker) = (cassandra_pid(), broker_pid());
    let cpu_start = cpu_now(cassandra, broker);
    let delivered_before = run
        .producer
        .context()
        .delivered
        .load(std::sync::atomic::Ordering::Relaxed);
    let started = Instant::now();
    let mut events = 0u64;
    for mut event in pending {
        loop {
            let due = (started.elapsed().as_secs_f64() * step.rate) as u64;
            if events < due {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        event.header_mut().timestamp = now_micros();
        send_event(fresh, run.producer, run.topic, run.partitions, &event).await;
        events += 1;
    }
    let seconds = started.elapsed().as_secs_f64();
    let processed_at_end = batch_records(&registry.gather(), processor) as u64;
    drain(run.producer, delivered_before + events, "fresh events");
    let done = step.processed_before + events;
    let after = processed(registry, processor, done).await;
    let cpu_end = cpu_now(cassandra, broker);
    let buckets: Vec<(f64, u64)> = freshness_buckets(&after, processor)
        .iter()
        .map(|(bound, count)| {
            let was = before.iter().find(|b| b.0 == *bound).map_or(0, |b| b.1);
            (*bound, count - was)
        })
        .collect();
    let observations = buckets.last().map_or(0, |b| b.1);
    FreshnessFigures {
        processor,
        fraction: step.fraction,
        target_rate: step.rate,
        rate: events as f64 / seconds,
        events,
        seconds,
        observations,
        p50_ms: histogram_quantile(&buckets, 0.5).map(|(v, _)| v * 1e3),
        p99_ms: histogram_quantile(&buckets, 0.99).map(|(v, _)| v * 1e3),
        p99_bucket_ms: histogram_quantile(&buckets, 0.99).map(|(_, b)| b * 1e3),
        buckets,
        batches: batch_count(&after, processor) - batches_before,
        behind_at_end: done.saturating_sub(processed_at_end),
        batch_mean_ms: (batch_seconds(&after, processor) - batch_seconds_before) * 1e3
            / (batch_count(&after, processor) - batches_before).max(1) as f64,
        cpu: cpu_between(&cpu_start, &cpu_end),
        writes: cql_writes(&after) - writes_before,
        settled_after,
    }
}

/// Waits until the loop has processed `done` records in all (a batch is observed once its
/// writes are acknowledged and its offsets stored); returns the metrics then.
async fn processed(
    registry: &prometheus::Registry,
    processor: &str,
    done: u64,
) -> Vec<MetricFamily> {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let gathered = registry.gather();
        if batch_records(&gathered, processor) >= done as f64 {
            return gathered;
        }
        assert!(
            Instant::now() < deadline,
            "{processor}: fresh events not processed"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Sends `count` fresh events at once (decided first, each stamped when sent) while the
/// processor runs, and times it until they are all processed: the processor's maximum on the
/// mix of the freshness steps.
async fn measure_steady(
    fresh: &Fresh,
    registry: &prometheus::Registry,
    processor: &'static str,
    run: &mut FreshnessRun<'_>,
    count: usize,
    processed_before: u64,
) -> SteadyFigures {
    settle_cassandra().await;
    let pending = run.players.decide(count.max(1));
    let gathered = registry.gather();
    let (batches_before, writes_before) =
        (batch_count(&gathered, processor), cql_writes(&gathered));
    let started = Instant::now();
    let events = pending.len() as u64;
    for mut event in pending {
        event.header_mut().timestamp = now_micros();
        send_event(fresh, run.producer, run.topic, run.partitions, &event).await;
    }
    let after = processed(registry, processor, processed_before + events).await;
    SteadyFigures {
        events,
        seconds: started.elapsed().as_secs_f64(),
        writes: cql_writes(&after) - writes_before,
        batches: batch_count(&after, processor) - batches_before,
    }
}

/// Waits until Cassandra uses less than a fifth of a core over a second (its flushes and
/// compactions after the previous phase are done), at most a minute; returns the seconds
/// waited.
async fn settle_cassandra() -> f64 {
    let started = Instant::now();
    let Some(pid) = cassandra_pid() else {
        return 0.0;
    };
    let path = format!("/proc/{pid}/stat");
    while started.elapsed() < Duration::from_secs(60) {
        let before = cpu_ticks(&path).unwrap_or(0);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let used = cpu_ticks(&path).unwrap_or(0).saturating_sub(before) as f64 / TICKS_PER_SECOND;
        if used < 0.2 {
            break;
        }
    }
    started.elapsed().as_secs_f64()
}

/// CQL writes acknowledged so far (rows and states, every table).
fn cql_writes(gathered: &[MetricFamily]) -> u64 {
    gathered
        .iter()
        .filter(|f| f.name() == "dietstream_cql_write_duration_seconds")
        .flat_map(|f| f.get_metric())
        .map(|m| m.get_histogram().get_sample_count())
        .sum()
}

/// The `q` quantile of cumulative buckets, interpolated linearly within its bucket as
/// Prometheus' `histogram_quantile` does, with the bucket's upper bound.
fn histogram_quantile(buckets: &[(f64, u64)], q: f64) -> Option<(f64, f64)> {
    let total = buckets.last()?.1;
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut lower = (0.0, 0);
    for &(bound, count) in buckets {
        if count as f64 >= rank {
            let within = (rank - lower.1 as f64) / (count - lower.1).max(1) as f64;
            return Some((lower.0 + (bound - lower.0) * within, bound));
        }
        lower = (bound, count);
    }
    None
}

async fn delete_topic(config: &Config, topic: &str) {
    let admin: AdminClient<DefaultClientContext> =
        config.kafka.client_config().create().expect("admin client");
    let _ = admin
        .delete_topics(
            &[topic],
            &AdminOptions::new().operation_timeout(Some(TIMEOUT)),
        )
        .await;
}

/// Everything measured, printed as a table and written as JSON.
struct Report<'a> {
    plan: &'a Plan,
    machine: serde_json::Value,
    load_at_end: String,
    prefix: &'a str,
    loop_config: &'a dietstream_runtime::LoopConfig,
    filled: &'a Filled,
    partitions: i32,
    raw: &'a ConsumeFigures,
    dec: &'a ConsumeFigures,
    raws: &'a [ConsumeFigures],
    decs: &'a [ConsumeFigures],
    sdb: &'a StoreFigures,
    pipes: &'a [PipeFigures],
    steady: Option<&'a SteadyFigures>,
    freshness: &'a [FreshnessFigures],
    total: Duration,
}

/// Goals of issue 5.
const GOAL_DEC: f64 = 0.8;
const GOAL_PIPE: f64 = 0.5;
const GOAL_WRITES: f64 = 0.7;
const GOAL_FRESHNESS_SLACK_MS: f64 = 20.0;

fn met(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "NOT met"
    }
}

impl Report<'_> {
    /// The loop's `processors.flush_interval`, in ms (0: each batch is written when taken).
    fn flush_interval_ms(&self) -> f64 {
        self.loop_config.flush_interval.as_secs_f64() * 1e3
    }

    fn freshness_goal_ms(&self) -> f64 {
        self.flush_interval_ms() + GOAL_FRESHNESS_SLACK_MS
    }

    /// The pipe of the processor whose writes are the distinct-key figure.
    /// The freshness step at the goal's half load.
    fn goal_step(&self) -> &FreshnessFigures {
        self.freshness
            .iter()
            .find(|f| f.fraction == GOAL_LOAD)
            .unwrap_or(&self.freshness[self.freshness.len() - 1])
    }

    fn distinct_pipe(&self) -> &PipeFigures {
        self.pipes
            .iter()
            .find(|p| p.name == DISTINCT_KEY_PROCESSOR)
            .unwrap_or(&self.pipes[0])
    }

    /// CQL writes per second of the nutrition pipe over S_db.
    fn distinct_write_ratio(&self) -> f64 {
        self.distinct_pipe().writes_per_second() / self.sdb.rate()
    }

    fn print(&self) {
        let (raw, dec, sdb, f) = (self.raw, self.dec, self.sdb, self.goal_step());
        println!();
        println!(
            "read-model processors benchmark ({} run) — {} CPUs, {}, prefix {}",
            if self.plan.full { "full" } else { "smoke" },
            self.machine["nproc"],
            self.machine["date_utc"].as_str().unwrap_or("?"),
            self.prefix
        );
        println!(
            "topic: {} user events of {} players ({} partitions, {:.0} B avg), load average {} at start, {} at end",
            self.filled.records,
            self.plan.users,
            self.partitions,
            self.filled.bytes as f64 / self.filled.records as f64,
            self.machine["load_average_at_start"].as_str().unwrap_or("?"),
            self.load_at_end
        );
        println!();
        let row = |name: &str, value: String| println!("{name:<44} {value:>34}");
        row(
            "R_raw: records/s (consume only)",
            format!("{:.0}", raw.rate()),
        );
        row(
            "R_dec: records/s (consume + decode)",
            format!("{:.0}", dec.rate()),
        );
        row(
            "  CPU µs per record: raw / dec (median rounds)",
            format!(
                "{:.2} / {:.2}",
                raw.cpu_micros_per_record(),
                dec.cpu_micros_per_record()
            ),
        );
        row(
            "S_db: upserts/s (distinct keys)",
            format!(
                "{:.0} ({} cols, {} in flight)",
                sdb.rate(),
                sdb.columns,
                sdb.in_flight
            ),
        );
        for p in self.pipes {
            row(
                &format!("R_pipe {}: records/s", p.name),
                format!("{:.0} ({:.1} s)", p.rate(), p.from_first.as_secs_f64()),
            );
            row(
                &format!("  {}: CPU s per M records (self/cql/kafka)", p.name),
                format!(
                    "{:.1} / {} / {}",
                    p.per_million(p.cpu.0),
                    p.cpu
                        .1
                        .map_or("-".to_owned(), |s| format!("{:.1}", p.per_million(s))),
                    p.cpu
                        .2
                        .map_or("-".to_owned(), |s| format!("{:.1}", p.per_million(s)))
                ),
            );
            row(
                &format!("  {}: CQL writes/s (rows+states)", p.name),
                format!("{:.0} ({} writes)", p.writes_per_second(), p.writes),
            );
        }
        let ratio_dec = dec.rate() / raw.rate();
        row(
            "R_dec / R_raw (goal ≥ 0.8)",
            format!("{ratio_dec:.3} {}", met(ratio_dec >= GOAL_DEC)),
        );
        for p in self.pipes {
            let r = p.rate() / raw.rate();
            row(
                &format!("R_pipe {} / R_raw (goal ≥ 0.5)", p.name),
                format!("{r:.3} {}", met(r >= GOAL_PIPE)),
            );
        }
        let w = self.distinct_write_ratio();
        row(
            "distinct-key writes/s / S_db (goal ≥ 0.7)",
            format!("{w:.3} {}", met(w >= GOAL_WRITES)),
        );
        if let Some(steady) = self.steady {
            row(
                &format!("{} max on the fresh events' mix", f.processor),
                format!(
                    "{:.0}/s ({} events, {:.2} writes each, {} batches)",
                    steady.rate(),
                    steady.events,
                    steady.writes as f64 / steady.events.max(1) as f64,
                    steady.batches
                ),
            );
        }
        let ms = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.1}"));
        for step in self.freshness {
            row(
                &format!(
                    "freshness {} at {:.0}/s ({} of max): p50 / p99",
                    step.processor, step.rate, step.fraction
                ),
                format!(
                    "{} / {} ms ({} batches of {:.1} ms, {:.2} writes per event, {} behind at the end; CPU s self/cql/kafka {:.1}/{}/{}; settled {:.0} s)",
                    ms(step.p50_ms),
                    ms(step.p99_ms),
                    step.batches,
                    step.batch_mean_ms,
                    step.writes as f64 / step.events.max(1) as f64,
                    step.behind_at_end,
                    step.cpu.0,
                    step.cpu.1.map_or("-".to_owned(), |v| format!("{v:.1}")),
                    step.cpu.2.map_or("-".to_owned(), |v| format!("{v:.1}")),
                    step.settled_after,
                ),
            );
        }
        let goal = self.freshness_goal_ms();
        row(
            &format!(
                "p99 freshness at {} of max vs flush interval + 20 ms",
                f.fraction
            ),
            format!(
                "{} ≤ {goal:.0} ms {}",
                f.p99_ms.map_or("-".to_owned(), |v| format!("{v:.1}")),
                met(f.p99_ms.is_some_and(|v| v <= goal))
            ),
        );
        row("bench total", format!("{:.1} s", self.total.as_secs_f64()));
    }

    fn json(&self) -> serde_json::Value {
        let (raw, dec, sdb, f) = (self.raw, self.dec, self.sdb, self.goal_step());
        let consume = |c: &ConsumeFigures| {
            json!({
                "records": c.records,
                "records_per_second": c.rate(),
                "seconds_from_first_record": c.from_first.as_secs_f64(),
                "seconds_from_subscribe": c.from_subscribe.as_secs_f64(),
                "records_per_second_from_subscribe": c.records as f64 / c.from_subscribe.as_secs_f64().max(1e-9),
                "decode_errors": c.decode_errors,
                "batches": c.batches,
                "seconds_awaiting_a_first_record": c.waited.as_secs_f64(),
                "longest_wait_seconds": c.longest_wait.as_secs_f64(),
                "process_cpu_seconds": c.cpu_seconds,
                "process_cpu_microseconds_per_record": c.cpu_micros_per_record(),
            })
        };
        let pipes: Vec<serde_json::Value> = self
            .pipes
            .iter()
            .map(|p| {
                json!({
                    "processor": p.name,
                    "records": p.records_expected,
                    "records_per_second": p.rate(),
                    "seconds_from_first_record": p.from_first.as_secs_f64(),
                    "seconds_from_start": p.from_start.as_secs_f64(),
                    "over_r_raw": p.rate() / raw.rate(),
                    "goal_over_r_raw": GOAL_PIPE,
                    "cpu_seconds": {"process": p.cpu.0, "cassandra": p.cpu.1, "kafka_broker": p.cpu.2},
                    "cpu_seconds_per_million_records": {
                        "process": p.per_million(p.cpu.0),
                        "cassandra": p.cpu.1.map(|s| p.per_million(s)),
                        "kafka_broker": p.cpu.2.map(|s| p.per_million(s)),
                    },
                    "cql_writes": p.writes,
                    "cql_writes_by_table": p.writes_by_table,
                    "cql_writes_per_second": p.writes_per_second(),
                    "batches": p.batches,
                    "loop_summary": {
                        "records": p.summary.records,
                        "skipped": p.summary.skipped,
                        "applied": p.summary.applied,
                        "dead_lettered": p.summary.dead_lettered,
                        "rows": p.summary.rows,
                        "commands": p.summary.commands,
                        "retries": p.summary.retries,
                    },
                })
            })
            .collect();
        json!({
            "run": if self.plan.full { "full" } else { "smoke" },
            "machine": self.machine,
            "load_average_at_end": self.load_at_end,
            "prefix": self.prefix,
            "total_seconds": self.total.as_secs_f64(),
            "loop_config": {
                "batch_size": self.loop_config.batch_size,
                "max_in_flight": self.loop_config.max_in_flight,
                "idle_interval_ms": self.loop_config.idle_interval.as_millis() as u64,
                "flush_interval_ms": self.flush_interval_ms(),
            },
            "topic": {
                "users": self.plan.users,
                "commands_per_user": self.plan.commands_per_user,
                "records": self.filled.records,
                "partitions": self.partitions,
                "value_bytes": self.filled.bytes,
                "value_bytes_mean": self.filled.bytes as f64 / self.filled.records as f64,
                "event_mix": self.filled.mix,
                "fill_seconds": self.filled.elapsed.as_secs_f64(),
            },
            "r_raw": consume(raw),
            "r_dec": consume(dec),
            "consume_rounds": {
                "note": "R_raw and R_dec alternate round by round; r_raw and r_dec are the median rounds",
                "r_raw": self.raws.iter().map(consume).collect::<Vec<_>>(),
                "r_dec": self.decs.iter().map(consume).collect::<Vec<_>>(),
            },
            "s_db": {
                "table": sdb.table,
                "columns": sdb.columns,
                "writes": sdb.writes,
                "in_flight": sdb.in_flight,
                "seconds": sdb.elapsed.as_secs_f64(),
                "upserts_per_second": sdb.rate(),
                "cassandra_cpu_seconds": sdb.cassandra_cpu_seconds,
            },
            "r_pipe": pipes,
            "freshness": self.freshness.iter().map(|f| json!({
                "processor": f.processor,
                "fraction_of_maximum": f.fraction,
                "target_rate": f.target_rate,
                "rate": f.rate,
                "events": f.events,
                "seconds": f.seconds,
                "observations": f.observations,
                "batches": f.batches,
                "behind_at_end": f.behind_at_end,
                "batch_mean_ms": f.batch_mean_ms,
                "cql_writes": f.writes,
                "settled_after_seconds": f.settled_after,
                "cpu_seconds": {"process": f.cpu.0, "cassandra": f.cpu.1, "broker": f.cpu.2},
                "p50_ms": f.p50_ms,
                "p99_ms": f.p99_ms,
                "p99_bucket_upper_bound_ms": f.p99_bucket_ms,
                "buckets_seconds_cumulative": f.buckets,
            })).collect::<Vec<_>>(),
            "freshness_goal_ms": self.freshness_goal_ms(),
            "steady_maximum": self.steady.map(|m| json!({
                "note": "the freshness steps' maximum: a backlog of the players' next events sent at once, timed until processed",
                "events": m.events,
                "seconds": m.seconds,
                "records_per_second": m.rate(),
                "cql_writes": m.writes,
                "batches": m.batches,
            })),
            "ratios": {
                "r_dec_over_r_raw": dec.rate() / raw.rate(),
                "r_dec_goal": GOAL_DEC,
                "r_pipe_over_r_raw": self.pipes.iter().map(|p| (p.name, p.rate() / raw.rate())).collect::<BTreeMap<_, _>>(),
                "r_pipe_goal": GOAL_PIPE,
                "distinct_key_writes_over_s_db": self.distinct_write_ratio(),
                "distinct_key_writes_processor": self.distinct_pipe().name,
                "distinct_key_writes_goal": GOAL_WRITES,
                "freshness_p99_ms": f.p99_ms,
                "freshness_goal_ms": self.freshness_goal_ms(),
            },
        })
    }
}
