//! What the end-to-end benchmarks share: a fresh topology prefix on the local stack, producer
//! delivery counting, `/proc` readings and machine facts.

// Each bench uses its own part of this module.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command as Process;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dietstream::bus::BusCodec;
use dietstream::config::Config;
use dietstream::contract;
use dietstream_schemas::catalog::Catalog;
use dietstream_schemas::codec::Codec;
use dietstream_topology::{ApplyOutcome, Cluster, Desired, Topology};
use rdkafka::admin::AdminClient;
use rdkafka::client::DefaultClientContext;
use rdkafka::error::KafkaError;
use rdkafka::message::{DeliveryResult, Header};
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientContext;
use serde_json::json;

/// Upper bound for one Kafka call, and for a phase to make no progress.
pub(crate) const TIMEOUT: Duration = Duration::from_secs(120);
/// Linux reports `/proc` CPU times in USER_HZ, 100 on every architecture it runs on here.
pub(crate) const TICKS_PER_SECOND: f64 = 100.0;

/// `name` parsed from the environment, `default` when unset; panics naming a bad value.
pub(crate) fn env_or<T: FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(text) => text
            .parse()
            .unwrap_or_else(|_| panic!("{name}={text:?} is not a valid value")),
        Err(_) => default,
    }
}

/// True under `cargo bench` (`--bench`); a smoke run under `cargo test`.
pub(crate) fn is_full_run() -> bool {
    std::env::args().any(|a| a == "--bench")
}

/// What the report's file name carries after the bench's name.
pub(crate) fn run_suffix(full: bool) -> &'static str {
    if full {
        ""
    } else {
        "-smoke"
    }
}

/// The local stack's configuration under a fresh topology prefix, with the whole topology
/// applied and the contract registered.
pub(crate) struct Fresh {
    pub(crate) config: Config,
    pub(crate) desired: Desired,
    pub(crate) codec: Arc<BusCodec>,
    /// `<target dir>/bench`.
    pub(crate) out_dir: PathBuf,
}

impl Fresh {
    pub(crate) async fn new() -> Fresh {
        let mut config = Config::load(None).unwrap_or_else(|e| panic!("{e}"));
        config.topology.prefix = format!(
            "bench_{:x}_{:08x}",
            std::process::id(),
            rand::random::<u32>()
        );
        let desired = Topology::embedded()
            .and_then(|t| t.resolve(config.topology.profile, &config.topology.prefix))
            .expect("topology resolves");
        let admin: AdminClient<DefaultClientContext> =
            config.kafka.client_config().create().expect("admin client");
        let applied = Cluster::new(admin, Duration::from_secs(30))
            .apply(&desired)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "cannot create the topics on {}: {e}\nStart the local stack with `make up`.",
                    config.kafka.bootstrap_servers
                )
            });
        if let ApplyOutcome::Refused(plan) = applied {
            panic!("topology refused under a fresh prefix:\n{plan}");
        }
        let catalog = Catalog::embedded().expect("catalog");
        let subjects = contract::subjects(&catalog, &desired).expect("subjects");
        let registry = config.schema_registry.registry().expect("registry client");
        contract::register(&registry, &catalog, &subjects, contract::DEFAULT_LEVEL)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "cannot register the schemas at {}: {e}\nStart the local stack with `make up`.",
                    config.schema_registry.url
                )
            });
        let codec = Arc::new(Codec::new(registry, &catalog).expect("codec"));
        let out_dir = out_dir();
        Fresh {
            config,
            desired,
            codec,
            out_dir,
        }
    }
}

/// Counts delivery reports.
#[derive(Default)]
pub(crate) struct Acks {
    pub(crate) delivered: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) first_error: Mutex<Option<String>>,
}

impl ClientContext for Acks {}

impl ProducerContext for Acks {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => {
                self.delivered.fetch_add(1, Ordering::Relaxed);
            }
            Err((e, _)) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                self.first_error
                    .lock()
                    .expect("lock")
                    .get_or_insert_with(|| e.to_string());
            }
        }
    }
}

/// Queues `record`, waiting while the producer's queue is full.
pub(crate) fn enqueue(producer: &ThreadedProducer<Acks>, mut record: BaseRecord<'_, str, [u8]>) {
    loop {
        match producer.send(record) {
            Ok(()) => return,
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                record = back;
                std::thread::sleep(Duration::from_millis(1));
            }
            Err((e, _)) => panic!("produce: {e}"),
        }
    }
}

/// Waits until every queued record is acknowledged; panics on any failed delivery.
pub(crate) fn drain(producer: &ThreadedProducer<Acks>, expected: u64, what: &str) {
    producer
        .flush(TIMEOUT)
        .unwrap_or_else(|e| panic!("{what}: flush: {e}"));
    let acks = producer.context();
    let failed = acks.failed.load(Ordering::Relaxed);
    assert_eq!(
        failed,
        0,
        "{what}: {failed} records not delivered, first error: {:?}",
        acks.first_error.lock().expect("lock")
    );
    assert_eq!(acks.delivered.load(Ordering::Relaxed), expected, "{what}");
}

pub(crate) fn text_header<'a>(key: &'a str, value: &'a str) -> Header<'a, &'a [u8]> {
    Header {
        key,
        value: Some(value.as_bytes()),
    }
}

/// User plus system CPU ticks of a process or thread (`/proc/.../stat`).
pub(crate) fn cpu_ticks(stat_path: &str) -> Option<u64> {
    let text = std::fs::read_to_string(stat_path).ok()?;
    // The command name (field 2) may hold spaces; the fields after it are plain.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Busy and total ticks of the whole machine (`/proc/stat`).
pub(crate) fn machine_ticks() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let values: Vec<u64> = text
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let total: u64 = values.iter().take(8).sum();
    let idle = values.get(3).copied().unwrap_or(0) + values.get(4).copied().unwrap_or(0);
    (total.saturating_sub(idle), total)
}

/// A process of the local stack, found by an argument of its command line (the Java main
/// class: `kafka.Kafka`, `org.apache.cassandra.service.CassandraDaemon`). With `STACK_DIR` set
/// (a second stack beside the default one), only a process with an argument under that
/// directory counts.
pub(crate) fn pid_with_arg(arg: &str) -> Option<u32> {
    let stack_dir = std::env::var("STACK_DIR").ok().filter(|d| !d.is_empty());
    std::fs::read_dir("/proc")
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
        .find(|pid| {
            let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                return false;
            };
            let args: Vec<String> = cmdline
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            args.iter().any(|a| a == arg)
                && stack_dir
                    .as_deref()
                    .is_none_or(|dir| args.iter().any(|a| a.contains(dir)))
        })
}

/// The Kafka broker of the local stack.
pub(crate) fn broker_pid() -> Option<u32> {
    pid_with_arg("kafka.Kafka")
}

/// The Cassandra server of the local stack.
pub(crate) fn cassandra_pid() -> Option<u32> {
    pid_with_arg("org.apache.cassandra.service.CassandraDaemon")
}

/// `<target dir>/bench`, where the benches write their reports (created).
pub(crate) fn out_dir() -> PathBuf {
    let out_dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .map_or_else(|| PathBuf::from("target"), Path::to_path_buf)
        .join("bench");
    std::fs::create_dir_all(&out_dir).expect("bench output folder");
    out_dir
}

/// Nearest-rank percentile of sorted values.
pub(crate) fn percentile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

/// The load average as `/proc/loadavg` gives it.
pub(crate) fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .trim()
        .to_owned()
}

/// Facts about the machine the figures come from.
pub(crate) fn machine_facts() -> serde_json::Value {
    let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let meminfo = read("/proc/meminfo");
    let git = Process::new("git")
        .args(["describe", "--always", "--dirty"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    json!({
        "date_utc": utc_now(),
        "nproc": std::thread::available_parallelism().map_or(0, std::num::NonZero::get),
        "cpu_model": cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split(':').nth(1))
            .map(str::trim),
        "memory_total": meminfo.lines().find(|l| l.starts_with("MemTotal")).and_then(|l| l.split(':').nth(1)).map(str::trim),
        "kernel": read("/proc/sys/kernel/osrelease").trim(),
        "load_average_at_start": load_average(),
        "git": git,
    })
}

pub(crate) fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// The current UTC time as `YYYY-MM-DDTHH:MM:SSZ`.
pub(crate) fn utc_now() -> String {
    chrono::DateTime::from_timestamp(now_micros() / 1_000_000, 0)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_default()
}
