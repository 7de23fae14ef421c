//! End-to-end benchmark of the command processor (issue 4, "Performance"), in one run against
//! the local stack under a fresh topology prefix:
//!
//! 1. raw produce rate: a plain idempotent producer (`acks=all`, no transactions) sends real
//!    encoded events to a fresh topic with the partition count of the event topics;
//! 2. processor throughput: `diet.commands` is filled with the simulator's mix for 100 000
//!    players, then `dietstream run commands` starts as a child process and is timed until every
//!    command's result is committed; its resident memory is sampled from `/proc`;
//! 3. latency: with the processor still running, fresh players send commands at a moderate rate
//!    through the command bus (the simulator), timed from send to result.
//!
//! The simulator is closed-loop: each player's next command depends on the result of the last.
//! The bench answers it with the processor's own pure domain (`decide`/`apply`), so the expected
//! versions are exact, and later checks that the processor gave every command that same answer.
//!
//! `cargo bench --bench commands` (`make bench`) runs the full benchmark. Without `--bench`, as
//! `cargo test --all-targets` runs it, it is a smoke run of well under a minute that checks the
//! same things on a small workload. Figures are printed and written to
//! `<target dir>/bench/commands.json` (`commands-smoke.json`), next to the processor's log.
//! Nothing asserts a timing. `BENCH_USERS`, `BENCH_COMMANDS_PER_USER`, `BENCH_RAW_RECORDS`,
//! `BENCH_LATENCY_RATE` and `BENCH_LATENCY_SECONDS` override the sizes of the full run;
//! `RUST_LOG` sets the processor's log filter.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command as Process, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use dietstream::bus::{
    command_producer_config, BusCodec, CommandBus, CommandOutcome, ROUTING_KEY_HEADER,
    SOURCE_HEADER,
};
use dietstream::config::Config;
use dietstream::simulate::{self, GeneratorConfig, SimulateOptions, UserSim};
use dietstream_commands::domain::{apply, decide, Aggregate, AggregateKind};
use dietstream_commands::Topics;
use dietstream_schemas::codec::RECORD_TYPE_HEADER;
use dietstream_schemas::types::{CommandResult, UnionAcceptedRejected};
use dietstream_topology::partition_for;
use rdkafka::admin::AdminClient;
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::json;
use tokio::runtime::Runtime;
use uuid::Uuid;

use common::{
    broker_pid, cpu_ticks, drain, enqueue, env_or, is_full_run, machine_facts, machine_ticks,
    now_micros, percentile, run_suffix, text_header, Acks, Fresh, TICKS_PER_SECOND, TIMEOUT,
};

/// Seed of the throughput players; the latency players use the next one.
const SEED: u64 = 4;
/// How often the processor's progress, memory and CPU are read.
const SAMPLE_EVERY: Duration = Duration::from_millis(200);
/// Encoded events kept as the raw producer's records (and for the typical event size).
const EVENT_SAMPLES: u64 = 20_000;
/// `dietstream.source` of the commands the bench sends itself.
const SOURCE: &str = "bench";
/// The processor's log filter unless `RUST_LOG` says otherwise: its per-transaction line
/// (`Transaction committed. commands=… events=…`) is at debug.
const PROCESSOR_LOG: &str = "info,dietstream_commands::processor=debug";

/// Sizes of one run.
#[derive(Debug, Clone)]
struct Plan {
    full: bool,
    users: u32,
    commands_per_user: u32,
    raw_records: usize,
    latency_users: u32,
    latency_rate: f64,
    latency_duration: Duration,
}

impl Plan {
    fn new(full: bool) -> Plan {
        let defaults = if full {
            Plan {
                full,
                users: 100_000,
                commands_per_user: 5,
                raw_records: 500_000,
                latency_users: 200,
                latency_rate: 200.0,
                latency_duration: Duration::from_secs(20),
            }
        } else {
            Plan {
                full,
                users: 200,
                commands_per_user: 5,
                raw_records: 5_000,
                latency_users: 20,
                latency_rate: 50.0,
                latency_duration: Duration::from_secs(3),
            }
        };
        if !full {
            // A smoke run stays small whatever the environment says.
            return defaults;
        }
        let plan = defaults;
        Plan {
            users: env_or("BENCH_USERS", plan.users),
            commands_per_user: env_or("BENCH_COMMANDS_PER_USER", plan.commands_per_user),
            raw_records: env_or("BENCH_RAW_RECORDS", plan.raw_records),
            latency_rate: env_or("BENCH_LATENCY_RATE", plan.latency_rate),
            latency_duration: Duration::from_secs_f64(env_or(
                "BENCH_LATENCY_SECONDS",
                plan.latency_duration.as_secs_f64(),
            )),
            ..plan
        }
    }

    fn suffix(&self) -> &'static str {
        run_suffix(self.full)
    }
}

fn main() {
    let full = is_full_run();
    let plan = Plan::new(full);
    let started = Instant::now();
    let rt = Runtime::new().expect("tokio runtime");
    let machine = machine_facts();
    let setup = rt.block_on(Setup::new());
    eprintln!(
        "bench: {} run under prefix {}: {} players x {} commands, {} raw records; figures go to {}",
        if full { "full" } else { "smoke" },
        setup.config.topology.prefix,
        plan.users,
        plan.commands_per_user,
        plan.raw_records,
        setup.out_dir.display()
    );

    eprintln!(
        "bench: generating the commands and filling {}",
        setup.topics.commands
    );
    let workload = rt.block_on(prefill(&setup, &plan));
    eprintln!(
        "bench: {} commands sent in {:.1} s; raw produce of {} records",
        workload.commands,
        workload.elapsed.as_secs_f64(),
        plan.raw_records
    );
    let raw = raw_produce(&setup, &rt, &workload.samples, plan.raw_records);

    eprintln!("bench: starting the command processor");
    let mut processor = ProcessorChild::spawn(&setup, &plan);
    let sampler = Sampler::start(processor.pid(), processor.started);
    let throughput = watch_throughput(&setup, &mut processor, &workload);
    eprintln!(
        "bench: every command answered {:.1} s after the processor started; checking results and events",
        throughput.window.as_secs_f64()
    );
    let checked = check_output(&setup, &rt, &workload);

    eprintln!(
        "bench: latency at {}/s for {:.0} s",
        plan.latency_rate,
        plan.latency_duration.as_secs_f64()
    );
    let latency = measure_latency(&setup, &rt, &plan);
    let memory_before_stop = read_status(processor.pid());
    let stopped = processor.stop();
    let samples = sampler.finish();
    let log = ProcessorLog::read(&processor.log, throughput.log_len);

    let report = Report {
        plan: &plan,
        machine,
        setup: &setup,
        workload: &workload,
        raw: &raw,
        throughput: &throughput,
        checked: &checked,
        latency: &latency,
        memory: Memory::from_samples(&samples, memory_before_stop, &throughput),
        stopped: &stopped,
        log: &log,
        total: started.elapsed(),
    };
    report.print();
    let json = report.json();
    std::fs::write(
        setup
            .out_dir
            .join(format!("commands{}.json", plan.suffix())),
        serde_json::to_string_pretty(&json).expect("report serialises") + "\n",
    )
    .expect("report written");

    // The bench is also a test (`cargo test --all-targets`): the processor must have answered
    // every command, as the domain says, and stopped cleanly. No timing is asserted.
    assert!(
        stopped.status.success(),
        "the processor exited with {}",
        stopped.status
    );
    assert_eq!(
        latency.summary.timeouts, 0,
        "latency phase: commands timed out"
    );
    assert_eq!(latency.summary.errors, 0, "latency phase: commands failed");
    assert_eq!(
        latency.summary.accepted + latency.summary.rejected_total(),
        latency.summary.sent,
        "latency phase: every command answered"
    );
    let summary = stopped
        .summary
        .as_ref()
        .expect("the processor printed its summary when it stopped");
    assert_eq!(
        summary.accepted + summary.rejected,
        workload.commands + latency.summary.sent,
        "processor summary: every command answered once"
    );
}

/// The stack, a fresh prefix with the whole topology and the registered contract.
struct Setup {
    config: Config,
    topics: Topics,
    codec: Arc<BusCodec>,
    out_dir: PathBuf,
}

impl Setup {
    async fn new() -> Setup {
        let Fresh {
            config,
            desired,
            codec,
            out_dir,
        } = Fresh::new().await;
        let topics = Topics::from_desired(&desired).expect("command processor topics");
        Setup {
            config,
            topics,
            codec,
            out_dir,
        }
    }
}

/// One encoded event as the processor writes it.
struct EventRecord {
    aggregate_id: String,
    key: String,
    record_type: &'static str,
    payload: Vec<u8>,
}

/// The commands in `diet.commands` and what the domain says about them.
struct Workload {
    commands: u64,
    /// Command id → the new version when the domain accepts it, `None` when it rejects it.
    expected: HashMap<Uuid, Option<i64>>,
    accepted: u64,
    rejected: u64,
    deliberate: u64,
    events: u64,
    mix: BTreeMap<&'static str, u64>,
    command_bytes: u64,
    samples: Vec<EventRecord>,
    elapsed: Duration,
}

/// Plays every player for `commands_per_user` rounds, answering each command with the domain,
/// and sends the commands to `diet.commands` exactly as `CommandBus::send` lays them out.
async fn prefill(setup: &Setup, plan: &Plan) -> Workload {
    let started = Instant::now();
    let topics = &setup.topics;
    // The bus's producer settings, with a delivery counter instead of a future per record.
    let producer: ThreadedProducer<Acks> =
        command_producer_config(&setup.config.kafka, setup.config.kafka.request_timeout)
            .create_with_context(Acks::default())
            .expect("command producer");
    let generator = GeneratorConfig {
        user_prefix: "bench".to_owned(),
        ..GeneratorConfig::new(SEED, plan.users)
    };
    let mut players: Vec<UserSim> = (0..plan.users)
        .map(|i| UserSim::new(&generator, i))
        .collect();
    let mut aggregates: HashMap<(AggregateKind, String), Aggregate> = HashMap::new();
    let total = u64::from(plan.users) * u64::from(plan.commands_per_user);
    let sample_every = (total / EVENT_SAMPLES).max(1);
    let now = now_micros();
    let mut workload = Workload {
        commands: 0,
        expected: HashMap::with_capacity(usize::try_from(total).unwrap_or(0)),
        accepted: 0,
        rejected: 0,
        deliberate: 0,
        events: 0,
        mix: BTreeMap::new(),
        command_bytes: 0,
        samples: Vec::new(),
        elapsed: Duration::ZERO,
    };
    // Round by round: every player's n-th command before anyone's (n+1)-th, so each
    // aggregate's commands are in order within its partition and far apart.
    for _round in 0..plan.commands_per_user {
        for player in &mut players {
            let Some(planned) = player.next_command() else {
                continue;
            };
            let command = planned.command;
            let header = command.header();
            let kind = AggregateKind::of_command(&command)
                .expect("the simulator only sends commands of the processor's aggregates");
            let aggregate = aggregates
                .entry((kind, header.aggregate_id.clone()))
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
                Err(rejection) => {
                    let outcome = CommandOutcome::Rejected {
                        reason: rejection.reason,
                        message: rejection.message,
                        field: rejection.field,
                        expected_version: rejection.expected_version,
                        current_version: rejection.current_version,
                    };
                    (outcome, Vec::new())
                }
            };
            player.observe(&outcome);
            workload
                .expected
                .insert(header.command_id, outcome.new_version());
            if outcome.is_accepted() {
                workload.accepted += 1;
            } else {
                workload.rejected += 1;
            }
            workload.deliberate += u64::from(planned.deliberate.is_some());
            workload.events += events.len() as u64;
            *workload.mix.entry(command.record_type()).or_default() += 1;

            if workload.commands.is_multiple_of(sample_every) {
                for event in &events {
                    let header = event.header();
                    let payload = event
                        .encode(&setup.codec, topics.events_of(kind))
                        .await
                        .expect("event encodes");
                    workload.samples.push(EventRecord {
                        aggregate_id: header.aggregate_id.clone(),
                        key: format!("{}/{}", header.aggregate_id, header.version),
                        record_type: event.record_type(),
                        payload,
                    });
                }
            }

            let aggregate_id = header.aggregate_id.as_str();
            let payload = command
                .encode(&setup.codec, &topics.commands)
                .await
                .expect("command encodes");
            workload.command_bytes += payload.len() as u64;
            let headers = OwnedHeaders::new()
                .insert(text_header(RECORD_TYPE_HEADER, command.record_type()))
                .insert(text_header(SOURCE_HEADER, SOURCE))
                .insert(text_header(ROUTING_KEY_HEADER, aggregate_id));
            enqueue(
                &producer,
                BaseRecord::to(&topics.commands)
                    .key(aggregate_id)
                    .payload(payload.as_slice())
                    .partition(partition_for(aggregate_id, topics.partitions))
                    .headers(headers),
            );
            workload.commands += 1;
            if plan.full && workload.commands.is_multiple_of(100_000) {
                eprintln!("bench: {} commands queued", workload.commands);
            }
        }
    }
    drain(&producer, workload.commands, "filling diet.commands");
    let in_topic: i64 = end_offsets(&setup.config, &topics.commands, topics.partitions)
        .iter()
        .sum();
    assert_eq!(
        u64::try_from(in_topic).unwrap_or(0),
        workload.commands,
        "{} holds exactly the commands sent",
        topics.commands
    );
    assert!(!workload.samples.is_empty(), "no event sampled");
    workload.elapsed = started.elapsed();
    workload
}

/// High watermarks of every partition of `topic`.
fn end_offsets(config: &Config, topic: &str, partitions: i32) -> Vec<i64> {
    let consumer: BaseConsumer = config
        .kafka
        .client_config()
        .create()
        .expect("watermark client");
    (0..partitions)
        .map(|p| {
            consumer
                .fetch_watermarks(topic, p, TIMEOUT)
                .unwrap_or_else(|e| panic!("end offsets of {topic}[{p}]: {e}"))
                .1
        })
        .collect()
}

/// What the raw producer did.
struct RawFigures {
    topic: String,
    records: u64,
    payload_bytes: u64,
    key_bytes: u64,
    elapsed: Duration,
    distinct_payloads: usize,
    mean_event_bytes: f64,
    median_event_bytes: usize,
}

impl RawFigures {
    fn records_per_second(&self) -> f64 {
        self.records as f64 / self.elapsed.as_secs_f64()
    }

    fn megabytes_per_second(&self) -> f64 {
        self.payload_bytes as f64 / 1e6 / self.elapsed.as_secs_f64()
    }
}

/// Sends `records` copies of the sampled events (key, headers and value as the processor
/// writes them) with a plain idempotent producer, timed from the first send to the last
/// acknowledgement.
fn raw_produce(setup: &Setup, rt: &Runtime, samples: &[EventRecord], records: usize) -> RawFigures {
    let topic = format!("{}.bench.raw-produce", setup.config.topology.prefix);
    let partitions = setup.topics.partitions;
    let admin: AdminClient<DefaultClientContext> = setup
        .config
        .kafka
        .client_config()
        .create()
        .expect("admin client");
    rt.block_on(dietstream::kafka::ensure_topic(
        &admin,
        &topic,
        partitions,
        &[],
        TIMEOUT,
    ))
    .expect("raw produce topic");
    let producer: ThreadedProducer<Acks> = setup
        .config
        .kafka
        .client_config()
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .create_with_context(Acks::default())
        .expect("raw producer");
    let send = |sample: &EventRecord| {
        let headers = OwnedHeaders::new()
            .insert(text_header(RECORD_TYPE_HEADER, sample.record_type))
            .insert(text_header(
                SOURCE_HEADER,
                dietstream_commands::topics::PROCESSOR,
            ))
            .insert(text_header(ROUTING_KEY_HEADER, &sample.aggregate_id));
        enqueue(
            &producer,
            BaseRecord::to(&topic)
                .key(sample.key.as_str())
                .payload(sample.payload.as_slice())
                .partition(partition_for(&sample.aggregate_id, partitions))
                .headers(headers),
        );
    };
    // Connection, metadata and producer id before the clock starts.
    send(&samples[0]);
    drain(&producer, 1, "raw produce warm-up");

    let mut payload_bytes = 0;
    let mut key_bytes = 0;
    let started = Instant::now();
    for sample in samples.iter().cycle().take(records) {
        send(sample);
        payload_bytes += sample.payload.len() as u64;
        key_bytes += sample.key.len() as u64;
    }
    drain(&producer, 1 + records as u64, "raw produce");
    let elapsed = started.elapsed();

    let mut sizes: Vec<usize> = samples.iter().map(|s| s.payload.len()).collect();
    sizes.sort_unstable();
    RawFigures {
        topic,
        records: records as u64,
        payload_bytes,
        key_bytes,
        elapsed,
        distinct_payloads: samples.len(),
        mean_event_bytes: sizes.iter().sum::<usize>() as f64 / sizes.len() as f64,
        median_event_bytes: sizes[sizes.len() / 2],
    }
}

/// `dietstream run commands` as a child process; killed if the bench ends without stopping it.
struct ProcessorChild {
    child: Child,
    log: PathBuf,
    started: Instant,
}

impl ProcessorChild {
    fn spawn(setup: &Setup, plan: &Plan) -> ProcessorChild {
        let log = setup
            .out_dir
            .join(format!("commands-processor{}.log", plan.suffix()));
        let file = File::create(&log).expect("processor log");
        let config = &setup.config;
        let started = Instant::now();
        // The binary of the bench's own profile: release under `cargo bench`.
        let child = Process::new(env!("CARGO_BIN_EXE_dietstream"))
            .args(["run", "commands"])
            .env(
                "DIETSTREAM_KAFKA__BOOTSTRAP_SERVERS",
                &config.kafka.bootstrap_servers,
            )
            .env(
                "DIETSTREAM_SCHEMA_REGISTRY__URL",
                &config.schema_registry.url,
            )
            .env("DIETSTREAM_TOPOLOGY__PREFIX", &config.topology.prefix)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| PROCESSOR_LOG.to_owned()),
            )
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("processor log"))
            .stderr(file)
            .spawn()
            .expect("dietstream binary starts");
        ProcessorChild {
            child,
            log,
            started,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Panics with the end of the processor's log if it exited.
    fn check_running(&mut self) {
        if let Some(status) = self.child.try_wait().expect("child status") {
            panic!(
                "the command processor exited with {status}; end of {}:\n{}",
                self.log.display(),
                log_tail(&self.log)
            );
        }
    }

    /// SIGTERM, then waits for the clean stop (it commits its transaction and prints its
    /// summary).
    fn stop(&mut self) -> Stopped {
        let asked = Instant::now();
        let signalled = Process::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("kill -TERM");
        assert!(signalled.success(), "kill -TERM {} failed", self.pid());
        loop {
            if let Some(status) = self.child.try_wait().expect("child status") {
                let text = std::fs::read_to_string(&self.log).unwrap_or_default();
                let line = text
                    .lines()
                    .find(|l| l.starts_with("command processor stopped:"))
                    .map(str::to_owned);
                return Stopped {
                    status,
                    took: asked.elapsed(),
                    summary: line.as_deref().map(StopSummary::parse),
                    line,
                };
            }
            assert!(
                asked.elapsed() < TIMEOUT,
                "the processor did not stop within {TIMEOUT:?} of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for ProcessorChild {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// How the processor stopped.
struct Stopped {
    status: ExitStatus,
    took: Duration,
    line: Option<String>,
    summary: Option<StopSummary>,
}

/// The counters of the processor's last line
/// (`command processor stopped: N accepted, N rejected, …`).
#[derive(Default)]
struct StopSummary {
    accepted: u64,
    rejected: u64,
    dead_lettered: u64,
    events: u64,
    snapshots: u64,
    transactions: u64,
    aborted: u64,
}

impl StopSummary {
    fn parse(line: &str) -> StopSummary {
        let words: Vec<&str> = line
            .split(|c: char| c.is_whitespace() || c == ',' || c == '(' || c == ')')
            .filter(|w| !w.is_empty())
            .collect();
        let before = |label: &str| {
            words
                .windows(2)
                .find(|w| w[1] == label)
                .and_then(|w| w[0].parse().ok())
                .unwrap_or(0)
        };
        StopSummary {
            accepted: before("accepted"),
            rejected: before("rejected"),
            dead_lettered: before("dead-lettered"),
            events: before("events"),
            snapshots: before("snapshots"),
            transactions: before("transactions"),
            aborted: before("aborted"),
        }
    }
}

/// One reading of the processor's `/proc` files.
#[derive(Debug, Clone, Copy, Default)]
struct Status {
    rss_kib: u64,
    hwm_kib: u64,
}

fn read_status(pid: u32) -> Status {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Status {
        rss_kib: field("VmRSS:"),
        hwm_kib: field("VmHWM:"),
    }
}

/// CPU counters at one moment.
#[derive(Debug, Clone, Copy)]
struct CpuAt {
    at: Instant,
    processor: u64,
    broker: Option<u64>,
    bench: u64,
    machine_busy: u64,
    machine_total: u64,
}

fn cpu_at(pid: u32, broker: Option<u32>) -> CpuAt {
    let (machine_busy, machine_total) = machine_ticks();
    CpuAt {
        at: Instant::now(),
        processor: cpu_ticks(&format!("/proc/{pid}/stat")).unwrap_or(0),
        broker: broker.and_then(|b| cpu_ticks(&format!("/proc/{b}/stat"))),
        bench: cpu_ticks("/proc/self/stat").unwrap_or(0),
        machine_busy,
        machine_total,
    }
}

/// Per-thread CPU seconds of the processor, busiest first.
fn thread_cpu(pid: u32) -> Vec<(String, u32, f64)> {
    let mut threads: Vec<(String, u32, f64)> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|dir| {
            dir.filter_map(Result::ok)
                .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
                .filter_map(|tid| {
                    let name = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm"))
                        .ok()?
                        .trim()
                        .to_owned();
                    let ticks = cpu_ticks(&format!("/proc/{pid}/task/{tid}/stat"))?;
                    Some((name, tid, ticks as f64 / TICKS_PER_SECOND))
                })
                .collect()
        })
        .unwrap_or_default();
    threads.sort_by(|a, b| b.2.total_cmp(&a.2));
    threads
}

/// Reads the processor's memory every [`SAMPLE_EVERY`] until finished.
struct Sampler {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Vec<(f64, Status)>>,
}

impl Sampler {
    fn start(pid: u32, since: Instant) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut samples = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                let status = read_status(pid);
                if status.rss_kib > 0 {
                    samples.push((since.elapsed().as_secs_f64(), status));
                }
                std::thread::sleep(SAMPLE_EVERY);
            }
            samples
        });
        Sampler { stop, thread }
    }

    fn finish(self) -> Vec<(f64, Status)> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("sampler thread")
    }
}

/// The throughput phase as seen from outside the processor.
struct Throughput {
    /// From spawning the processor until its committed offsets reached the end of
    /// `diet.commands`.
    window: Duration,
    /// From spawning until the first committed offset was seen.
    first_commit: Duration,
    /// Commands committed when the first commit was seen.
    first_committed: u64,
    /// (seconds since spawn, commands committed), about once a second.
    timeline: Vec<(f64, u64)>,
    start_cpu: CpuAt,
    end_cpu: CpuAt,
    threads: Vec<(String, u32, f64)>,
    status_at_end: Status,
    /// Length of the processor's log when the phase ended.
    log_len: u64,
}

impl Throughput {
    fn steady(&self) -> Duration {
        self.window.saturating_sub(self.first_commit)
    }
}

/// Watches the processor's committed offsets (they commit with its results, KIP-447) until they
/// reach the end of `diet.commands`.
fn watch_throughput(
    setup: &Setup,
    processor: &mut ProcessorChild,
    workload: &Workload,
) -> Throughput {
    let topics = &setup.topics;
    let broker = broker_pid();
    let start_cpu = cpu_at(processor.pid(), broker);
    // Reads the group's committed offsets only: it never subscribes, so never joins the group.
    let watcher: BaseConsumer = setup
        .config
        .kafka
        .client_config()
        .set("group.id", &topics.group)
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()
        .expect("offset watcher");
    let mut partitions = TopicPartitionList::new();
    for p in 0..topics.partitions {
        partitions.add_partition(&topics.commands, p);
    }
    let mut first: Option<(Duration, u64)> = None;
    let mut timeline = Vec::new();
    let mut last_progress = (Instant::now(), 0);
    loop {
        processor.check_running();
        let committed: u64 = watcher
            .committed_offsets(partitions.clone(), TIMEOUT)
            .expect("committed offsets")
            .elements()
            .iter()
            .map(|e| match e.offset() {
                Offset::Offset(o) => u64::try_from(o).unwrap_or(0),
                _ => 0,
            })
            .sum();
        let now = processor.started.elapsed();
        if committed > 0 && first.is_none() {
            first = Some((now, committed));
        }
        let done = committed >= workload.commands;
        if done
            || timeline
                .last()
                .is_none_or(|(t, _): &(f64, u64)| now.as_secs_f64() - t >= 1.0)
        {
            timeline.push((now.as_secs_f64(), committed));
        }
        if done {
            let end_cpu = cpu_at(processor.pid(), broker);
            let (first_commit, first_committed) = first.unwrap_or((now, committed));
            return Throughput {
                window: now,
                first_commit,
                first_committed,
                timeline,
                start_cpu,
                end_cpu,
                threads: thread_cpu(processor.pid()),
                status_at_end: read_status(processor.pid()),
                log_len: std::fs::metadata(&processor.log).map_or(0, |m| m.len()),
            };
        }
        if committed > last_progress.1 {
            last_progress = (Instant::now(), committed);
        }
        assert!(
            last_progress.0.elapsed() < TIMEOUT,
            "no command committed for {TIMEOUT:?} ({committed} of {}); end of {}:\n{}",
            workload.commands,
            processor.log.display(),
            log_tail(&processor.log)
        );
        std::thread::sleep(SAMPLE_EVERY);
    }
}

/// Every committed record of `topic`, read from the beginning to its end.
fn read_topic(config: &Config, topic: &str, mut each: impl FnMut(&BorrowedMessage<'_>)) -> u64 {
    let consumer: BaseConsumer = config
        .kafka
        .client_config()
        .set("group.id", format!("bench-reader-{}", Uuid::new_v4()))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("isolation.level", "read_committed")
        .create()
        .expect("reader");
    let metadata = consumer
        .fetch_metadata(Some(topic), TIMEOUT)
        .unwrap_or_else(|e| panic!("metadata of {topic}: {e}"));
    let partitions: Vec<i32> = metadata
        .topics()
        .first()
        .map(|t| t.partitions().iter().map(|p| p.id()).collect())
        .unwrap_or_default();
    let mut assignment = TopicPartitionList::new();
    for p in &partitions {
        assignment
            .add_partition_offset(topic, *p, Offset::Beginning)
            .expect("partition");
    }
    consumer.assign(&assignment).expect("assign");
    let mut at_end = HashSet::new();
    let mut count = 0;
    let mut last = Instant::now();
    while at_end.len() < partitions.len() {
        match consumer.poll(Duration::from_millis(500)) {
            Some(Ok(message)) => {
                count += 1;
                each(&message);
                last = Instant::now();
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                at_end.insert(p);
            }
            Some(Err(e)) => panic!("reading {topic}: {e}"),
            None => assert!(last.elapsed() < TIMEOUT, "{topic} not read to its end"),
        }
    }
    count
}

/// What the processor wrote in the throughput phase, checked against the domain.
struct Checked {
    results: u64,
    accepted: u64,
    rejected: u64,
    events: BTreeMap<String, u64>,
    event_bytes: u64,
    snapshots: u64,
    dead_letters: u64,
}

impl Checked {
    fn events_total(&self) -> u64 {
        self.events.values().sum()
    }
}

fn check_output(setup: &Setup, rt: &Runtime, workload: &Workload) -> Checked {
    let config = &setup.config;
    let topics = &setup.topics;
    let mut payloads = Vec::new();
    read_topic(config, &topics.results, |m| {
        payloads.push(m.payload().map(<[u8]>::to_vec).unwrap_or_default());
    });
    let results: Vec<CommandResult> = rt.block_on(async {
        let mut results = Vec::with_capacity(payloads.len());
        for payload in &payloads {
            results.push(
                setup
                    .codec
                    .decode::<CommandResult>(payload)
                    .await
                    .expect("a command result"),
            );
        }
        results
    });
    drop(payloads);
    let mut answered: HashSet<Uuid> = HashSet::with_capacity(results.len());
    let (mut accepted, mut rejected) = (0, 0);
    let mut disagreements = Vec::new();
    for result in &results {
        assert!(
            answered.insert(result.command_id),
            "command {} answered twice",
            result.command_id
        );
        let got = match &result.outcome {
            UnionAcceptedRejected::Accepted(a) => {
                accepted += 1;
                Some(a.new_version)
            }
            UnionAcceptedRejected::Rejected(_) => {
                rejected += 1;
                None
            }
        };
        match workload.expected.get(&result.command_id) {
            Some(expected) if *expected == got => {}
            Some(expected) => disagreements.push(format!(
                "{} {} on {}: domain says {expected:?}, processor {:?}",
                result.command_type, result.command_id, result.aggregate_id, result.outcome
            )),
            None => panic!("a result for command {} nobody sent", result.command_id),
        }
    }
    let missing = workload.commands - answered.len() as u64;
    assert_eq!(missing, 0, "{missing} commands without a result");
    assert!(
        disagreements.is_empty(),
        "{} results differ from the domain's answer, e.g.:\n{}",
        disagreements.len(),
        disagreements[..disagreements.len().min(5)].join("\n")
    );

    let mut events = BTreeMap::new();
    let mut event_bytes = 0;
    let mut snapshots = 0;
    for kind in AggregateKind::ALL {
        let topic = topics.events_of(kind);
        let count = read_topic(config, topic, |m| {
            event_bytes += m.payload().map_or(0, <[u8]>::len) as u64;
        });
        events.insert(topic.to_owned(), count);
        snapshots += read_topic(config, topics.snapshots_of(kind), |_| {});
    }
    let dead_letters = read_topic(config, &topics.dead_letter, |_| {});
    let checked = Checked {
        results: results.len() as u64,
        accepted,
        rejected,
        events,
        event_bytes,
        snapshots,
        dead_letters,
    };
    assert_eq!(
        checked.events_total(),
        workload.events,
        "events appended = events the domain decided"
    );
    assert_eq!(checked.dead_letters, 0, "no command dead-lettered");
    checked
}

/// The latency phase.
struct Latency {
    summary: simulate::Summary,
    record: PathBuf,
    /// Milliseconds from send to result of every answered command, sorted.
    millis: Vec<f64>,
}

impl Latency {
    fn percentile(&self, q: f64) -> Option<f64> {
        percentile(&self.millis, q)
    }
}

/// Fresh players send commands through the command bus at `latency_rate` (the simulator's
/// closed loop), each command timed from send to result; the record file keeps every latency.
fn measure_latency(setup: &Setup, rt: &Runtime, plan: &Plan) -> Latency {
    let bus = Arc::new(
        rt.block_on(CommandBus::from_config(&setup.config, SOURCE))
            .expect("command bus"),
    );
    let record = setup
        .out_dir
        .join(format!("commands-latency{}.jsonl", plan.suffix()));
    let options = SimulateOptions {
        generator: GeneratorConfig {
            user_prefix: "latency".to_owned(),
            ..GeneratorConfig::new(SEED + 1, plan.latency_users)
        },
        rate: plan.latency_rate,
        duration: Some(plan.latency_duration),
        max_commands: None,
        timeout: Duration::from_secs(30),
        record: Some(record.clone()),
        progress: false,
    };
    let summary = rt
        .block_on(simulate::run(bus, options, std::future::pending()))
        .expect("simulation");
    let text = std::fs::read_to_string(&record).expect("latency record");
    let mut millis: Vec<f64> = text
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|v| {
            matches!(
                v["result"]["outcome"].as_str(),
                Some("accepted" | "rejected")
            )
        })
        .filter_map(|v| v["latency_ms"].as_f64())
        .collect();
    millis.sort_by(f64::total_cmp);
    Latency {
        summary,
        record,
        millis,
    }
}

/// The processor's resident memory.
struct Memory {
    peak_hwm_kib: u64,
    peak_sampled_rss_kib: u64,
    rss_after_throughput_kib: u64,
    rss_before_stop_kib: u64,
    samples: usize,
}

impl Memory {
    fn from_samples(
        samples: &[(f64, Status)],
        before_stop: Status,
        throughput: &Throughput,
    ) -> Memory {
        Memory {
            peak_hwm_kib: before_stop
                .hwm_kib
                .max(samples.iter().map(|s| s.1.hwm_kib).max().unwrap_or(0)),
            peak_sampled_rss_kib: samples.iter().map(|s| s.1.rss_kib).max().unwrap_or(0),
            rss_after_throughput_kib: throughput.status_at_end.rss_kib,
            rss_before_stop_kib: before_stop.rss_kib,
            samples: samples.len(),
        }
    }
}

/// Per-transaction figures from the processor's debug lines of the throughput phase.
struct ProcessorLog {
    path: PathBuf,
    /// (commands, events) of each committed transaction.
    transactions: Vec<(u64, u64)>,
    /// Milliseconds between consecutive commits: what one transaction takes end to end.
    commit_intervals: Vec<f64>,
    /// Milliseconds each commit call took (`commit=` of the debug line), sorted.
    commit_calls: Vec<f64>,
    warnings: Vec<String>,
}

impl ProcessorLog {
    fn read(path: &Path, throughput_len: u64) -> ProcessorLog {
        let text = std::fs::read(path).unwrap_or_default();
        let cut = usize::try_from(throughput_len)
            .unwrap_or(usize::MAX)
            .min(text.len());
        let field = |line: &str, name: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(name))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        let throughput = String::from_utf8_lossy(&text[..cut]);
        let committed: Vec<&str> = throughput
            .lines()
            .filter(|l| l.contains("Transaction committed."))
            .collect();
        let transactions = committed
            .iter()
            .map(|l| (field(l, "commands="), field(l, "events=")))
            .collect();
        let times: Vec<chrono::DateTime<chrono::FixedOffset>> = committed
            .iter()
            .filter_map(|l| l.split_whitespace().next())
            .filter_map(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .collect();
        let mut commit_intervals: Vec<f64> = times
            .windows(2)
            .filter_map(|w| (w[1] - w[0]).num_microseconds())
            .map(|us| us as f64 / 1000.0)
            .collect();
        commit_intervals.sort_by(f64::total_cmp);
        let mut commit_calls: Vec<f64> = committed
            .iter()
            .filter_map(|l| l.split_whitespace().find_map(|w| w.strip_prefix("commit=")))
            .filter_map(debug_duration_millis)
            .collect();
        commit_calls.sort_by(f64::total_cmp);
        let warnings = String::from_utf8_lossy(&text)
            .lines()
            .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
            .map(str::to_owned)
            .collect();
        ProcessorLog {
            path: path.to_path_buf(),
            transactions,
            commit_intervals,
            commit_calls,
            warnings,
        }
    }
}

/// Milliseconds of a `Duration` as its `Debug` form prints it (`4.2ms`, `950.1µs`, `1.5s`).
fn debug_duration_millis(text: &str) -> Option<f64> {
    let units = [("ns", 1e-6), ("µs", 1e-3), ("ms", 1.0), ("s", 1e3)];
    units.iter().find_map(|(unit, millis)| {
        text.strip_suffix(unit)
            .and_then(|n| n.parse::<f64>().ok())
            .map(|n| n * millis)
    })
}

/// Everything measured, printed as a table and written as JSON.
struct Report<'a> {
    plan: &'a Plan,
    machine: serde_json::Value,
    setup: &'a Setup,
    workload: &'a Workload,
    raw: &'a RawFigures,
    throughput: &'a Throughput,
    checked: &'a Checked,
    latency: &'a Latency,
    memory: Memory,
    stopped: &'a Stopped,
    log: &'a ProcessorLog,
    total: Duration,
}

fn per_second(count: u64, over: Duration) -> f64 {
    count as f64 / over.as_secs_f64().max(1e-9)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

impl Report<'_> {
    fn commands_per_second(&self) -> f64 {
        per_second(self.workload.commands, self.throughput.window)
    }

    fn steady_commands_per_second(&self) -> f64 {
        per_second(
            self.workload.commands - self.throughput.first_committed,
            self.throughput.steady(),
        )
    }

    fn events_per_second(&self) -> f64 {
        per_second(self.checked.events_total(), self.throughput.window)
    }

    fn ratio(&self) -> f64 {
        self.events_per_second() / self.raw.records_per_second()
    }

    /// CPU use over the throughput window, in cores (1.0 = one core busy all the time).
    fn cores(&self, ticks: impl Fn(&CpuAt) -> Option<u64>) -> Option<f64> {
        let seconds = self
            .throughput
            .end_cpu
            .at
            .duration_since(self.throughput.start_cpu.at)
            .as_secs_f64();
        let used =
            ticks(&self.throughput.end_cpu)?.saturating_sub(ticks(&self.throughput.start_cpu)?);
        Some(used as f64 / TICKS_PER_SECOND / seconds.max(1e-9))
    }

    fn machine_busy(&self) -> f64 {
        let (start, end) = (&self.throughput.start_cpu, &self.throughput.end_cpu);
        let busy = end.machine_busy.saturating_sub(start.machine_busy) as f64;
        let total = end.machine_total.saturating_sub(start.machine_total) as f64;
        busy / total.max(1.0)
    }

    fn transactions(&self) -> (usize, f64, u64) {
        let tx = &self.log.transactions;
        let commands: u64 = tx.iter().map(|t| t.0).sum();
        let mean = commands as f64 / (tx.len().max(1)) as f64;
        (tx.len(), mean, tx.iter().map(|t| t.0).max().unwrap_or(0))
    }

    fn print(&self) {
        let (w, r, t, c, l) = (
            self.workload,
            self.raw,
            self.throughput,
            self.checked,
            self.latency,
        );
        let ms = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.1} ms"));
        let cores = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.2}"));
        let (transactions, mean_tx, max_tx) = self.transactions();
        println!();
        println!(
            "command processor benchmark ({} run) — {} CPUs, {}, prefix {}",
            if self.plan.full { "full" } else { "smoke" },
            self.machine["nproc"],
            self.machine["date_utc"].as_str().unwrap_or("?"),
            self.setup.config.topology.prefix
        );
        println!(
            "workload: {} players, {} commands ({} accepted, {} rejected by the domain, {} invalid on purpose), {} events; commands {:.0} B avg",
            self.plan.users,
            w.commands,
            w.accepted,
            w.rejected,
            w.deliberate,
            w.events,
            w.command_bytes as f64 / w.commands as f64
        );
        let mix: Vec<String> = {
            let mut mix: Vec<(&&str, &u64)> = w.mix.iter().collect();
            mix.sort_by(|a, b| b.1.cmp(a.1));
            mix.iter()
                .map(|(t, n)| format!("{t} {:.1}%", **n as f64 * 100.0 / w.commands as f64))
                .collect()
        };
        println!("mix: {}", mix.join(", "));
        println!();
        println!("{:<34} {:>22}", "figure", "value");
        let row = |name: &str, value: String| println!("{name:<34} {value:>22}");
        row(
            "raw produce: records",
            format!("{} x {:.0} B", r.records, r.mean_event_bytes),
        );
        row(
            "raw produce: time",
            format!("{:.2} s", r.elapsed.as_secs_f64()),
        );
        row(
            "raw produce: records/s",
            format!("{:.0}", r.records_per_second()),
        );
        row(
            "raw produce: MB/s (values)",
            format!("{:.1}", r.megabytes_per_second()),
        );
        row("processor: commands", format!("{}", w.commands));
        row(
            "processor: start to all answered",
            format!("{:.2} s", t.window.as_secs_f64()),
        );
        row(
            "processor: start to first commit",
            format!("{:.2} s", t.first_commit.as_secs_f64()),
        );
        row(
            "processor: commands/s",
            format!("{:.0}", self.commands_per_second()),
        );
        row(
            "processor: commands/s after start",
            format!("{:.0}", self.steady_commands_per_second()),
        );
        row("processor: events", format!("{}", c.events_total()));
        row(
            "processor: events/s",
            format!("{:.0}", self.events_per_second()),
        );
        row(
            "processor: event MB/s (values)",
            format!("{:.2}", c.event_bytes as f64 / 1e6 / t.window.as_secs_f64()),
        );
        row(
            "events/s ÷ raw records/s",
            format!("{:.3} (goal ≥ 0.333)", self.ratio()),
        );
        row(
            "transactions (mean/max commands)",
            format!("{transactions} ({mean_tx:.0}/{max_tx})"),
        );
        let intervals = &self.log.commit_intervals;
        row(
            "time per transaction p50/p90",
            format!(
                "{} / {}",
                ms(percentile(intervals, 0.5)),
                ms(percentile(intervals, 0.9))
            ),
        );
        let calls = &self.log.commit_calls;
        row(
            "commit call p50/p90",
            format!(
                "{} / {}",
                ms(percentile(calls, 0.5)),
                ms(percentile(calls, 0.9))
            ),
        );
        row(
            "CPU cores: processor",
            cores(self.cores(|c| Some(c.processor))),
        );
        row("CPU cores: Kafka broker", cores(self.cores(|c| c.broker)));
        row(
            "CPU cores: bench (watching)",
            cores(self.cores(|c| Some(c.bench))),
        );
        row(
            "CPU: machine busy",
            format!(
                "{:.0}% of {}",
                self.machine_busy() * 100.0,
                self.machine["nproc"]
            ),
        );
        row(
            "latency: commands",
            format!("{} at {:.0}/s", l.summary.sent, l.summary.rate()),
        );
        row("latency: p50", ms(l.percentile(0.50)));
        row("latency: p90", ms(l.percentile(0.90)));
        row("latency: p99", ms(l.percentile(0.99)));
        row("latency: max", ms(l.millis.last().copied()));
        row(
            "memory: peak RSS (VmHWM)",
            format!("{:.1} MiB", mib(self.memory.peak_hwm_kib)),
        );
        row(
            "memory: RSS after throughput",
            format!("{:.1} MiB", mib(self.memory.rss_after_throughput_kib)),
        );
        row(
            "memory: RSS before stop",
            format!("{:.1} MiB", mib(self.memory.rss_before_stop_kib)),
        );
        row(
            "processor stop (SIGTERM)",
            format!("{:.2} s", self.stopped.took.as_secs_f64()),
        );
        row("bench total", format!("{:.1} s", self.total.as_secs_f64()));
        println!();
        let busiest: Vec<String> = t
            .threads
            .iter()
            .take(6)
            .map(|(name, tid, secs)| format!("{name}[{tid}] {secs:.1} s"))
            .collect();
        println!("processor threads by CPU: {}", busiest.join(", "));
        if let Some(line) = &self.stopped.line {
            println!("{line}");
        }
        println!(
            "processor log: {} ({} warnings/errors)",
            self.log.path.display(),
            self.log.warnings.len()
        );
        for warning in self.log.warnings.iter().take(5) {
            println!("  {warning}");
        }
    }

    fn json(&self) -> serde_json::Value {
        let (w, r, t, c, l) = (
            self.workload,
            self.raw,
            self.throughput,
            self.checked,
            self.latency,
        );
        let (transactions, mean_tx, max_tx) = self.transactions();
        let commands = self.setup.config.commands.clone();
        let summary = self.stopped.summary.as_ref();
        json!({
            "run": if self.plan.full { "full" } else { "smoke" },
            "machine": self.machine,
            "prefix": self.setup.config.topology.prefix,
            "total_seconds": self.total.as_secs_f64(),
            "workload": {
                "users": self.plan.users,
                "commands_per_user": self.plan.commands_per_user,
                "commands": w.commands,
                "accepted_by_domain": w.accepted,
                "rejected_by_domain": w.rejected,
                "invalid_on_purpose": w.deliberate,
                "events_by_domain": w.events,
                "command_bytes_mean": w.command_bytes as f64 / w.commands as f64,
                "mix": w.mix,
                "fill_seconds": w.elapsed.as_secs_f64(),
                "partitions": self.setup.topics.partitions,
            },
            "raw_produce": {
                "topic": r.topic,
                "producer": "idempotent, acks=all, no transactions, librdkafka defaults otherwise (no compression)",
                "records": r.records,
                "distinct_event_payloads": r.distinct_payloads,
                "event_bytes_mean": r.mean_event_bytes,
                "event_bytes_median": r.median_event_bytes,
                "value_bytes": r.payload_bytes,
                "key_bytes": r.key_bytes,
                "seconds": r.elapsed.as_secs_f64(),
                "records_per_second": r.records_per_second(),
                "megabytes_per_second": r.megabytes_per_second(),
            },
            "processor": {
                "binary": env!("CARGO_BIN_EXE_dietstream"),
                "config": {
                    "max_commands_per_transaction": commands.max_commands_per_transaction,
                    "commit_interval_ms": commands.commit_interval.as_millis() as u64,
                    "snapshot_every": commands.snapshot_every,
                },
                "commands": w.commands,
                "seconds_start_to_all_answered": t.window.as_secs_f64(),
                "seconds_start_to_first_commit": t.first_commit.as_secs_f64(),
                "commands_at_first_commit": t.first_committed,
                "commands_per_second": self.commands_per_second(),
                "commands_per_second_after_first_commit": self.steady_commands_per_second(),
                "results": c.results,
                "accepted": c.accepted,
                "rejected": c.rejected,
                "events": c.events,
                "events_total": c.events_total(),
                "event_value_bytes": c.event_bytes,
                "events_per_second": self.events_per_second(),
                "event_megabytes_per_second": c.event_bytes as f64 / 1e6 / t.window.as_secs_f64(),
                "snapshots": c.snapshots,
                "dead_letters": c.dead_letters,
                "events_per_second_over_raw_records_per_second": self.ratio(),
                "goal_ratio": 1.0 / 3.0,
                "transactions": transactions,
                "commands_per_transaction_mean": mean_tx,
                "commands_per_transaction_max": max_tx,
                "ms_between_commits_p50": percentile(&self.log.commit_intervals, 0.5),
                "ms_between_commits_p90": percentile(&self.log.commit_intervals, 0.9),
                "ms_commit_call_p50": percentile(&self.log.commit_calls, 0.5),
                "ms_commit_call_p90": percentile(&self.log.commit_calls, 0.9),
                "cpu_cores": {
                    "processor": self.cores(|c| Some(c.processor)),
                    "kafka_broker": self.cores(|c| c.broker),
                    "bench": self.cores(|c| Some(c.bench)),
                    "machine_busy_fraction": self.machine_busy(),
                },
                "threads_cpu_seconds": t.threads.iter().take(12).map(|(name, tid, secs)| json!({"name": name, "tid": tid, "seconds": secs})).collect::<Vec<_>>(),
                "timeline_seconds_committed": t.timeline,
            },
            "latency": {
                "users": self.plan.latency_users,
                "target_rate": self.plan.latency_rate,
                "seconds": l.summary.elapsed.as_secs_f64(),
                "sent": l.summary.sent,
                "accepted": l.summary.accepted,
                "rejected": l.summary.rejected,
                "timeouts": l.summary.timeouts,
                "errors": l.summary.errors,
                "rate": l.summary.rate(),
                "p50_ms": l.percentile(0.50),
                "p90_ms": l.percentile(0.90),
                "p99_ms": l.percentile(0.99),
                "max_ms": l.millis.last(),
                "record": l.record,
            },
            "memory": {
                "peak_rss_mib_vmhwm": mib(self.memory.peak_hwm_kib),
                "peak_sampled_rss_mib": mib(self.memory.peak_sampled_rss_kib),
                "rss_after_throughput_mib": mib(self.memory.rss_after_throughput_kib),
                "rss_before_stop_mib": mib(self.memory.rss_before_stop_kib),
                "samples": self.memory.samples,
                "sample_every_ms": SAMPLE_EVERY.as_millis() as u64,
            },
            "stop": {
                "status": self.stopped.status.to_string(),
                "seconds": self.stopped.took.as_secs_f64(),
                "line": self.stopped.line,
                "accepted": summary.map(|s| s.accepted),
                "rejected": summary.map(|s| s.rejected),
                "dead_lettered": summary.map(|s| s.dead_lettered),
                "events": summary.map(|s| s.events),
                "snapshots": summary.map(|s| s.snapshots),
                "transactions": summary.map(|s| s.transactions),
                "aborted": summary.map(|s| s.aborted),
            },
            "processor_log": {
                "path": self.log.path,
                "warnings_and_errors": self.log.warnings.len(),
                "first_warnings": self.log.warnings.iter().take(10).collect::<Vec<_>>(),
            },
        })
    }
}
