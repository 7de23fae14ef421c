//! `dietstream replay <processor>`: rebuilds a read model from the start of the log in a new
//! generation (`<table>_g<N>`, group `<group>.g<N>`, see
//! [`dietstream_runtime::generation`]) while the running processor keeps serving the old one,
//! shows progress, and once the new group has caught up with the ends of the topics it reads,
//! records the new generation as active: running processors switch to it.
//!
//! A rebuild sends no commands (quests' StartQuest and the like): the generation that served
//! when the events arrived sent them already, and their outcomes are events in the log that
//! the rebuild reads like any other.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dietstream_runtime::consume::{self, LoopSummary, Parts, ProcessorTopics};
use dietstream_runtime::generation::{self, Rebuild};
use dietstream_runtime::{ProcessorMetrics, Projection, Store};
use dietstream_schemas::catalog::Catalog;
use dietstream_schemas::codec::Codec;
use dietstream_topology::Topology;
use futures::future::{BoxFuture, Shared};
use futures::FutureExt;
use rdkafka::error::KafkaError;

use crate::config::Config;
use crate::kafka::GroupLag;
use crate::read_model::{with_read_model, ReadModelTask};
use crate::run::{ReadModelEnv, RunError};

/// How often the new group's committed offsets are compared with the ends of the topics.
const CHECK_EVERY: Duration = Duration::from_millis(500);

/// Why a rebuild failed. The generation being built stays recorded as `building`; its tables
/// and group are left, and the next rebuild starts a generation above it.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// Setting up, or the consume loop, failed.
    #[error(transparent)]
    Run(#[from] RunError),
    /// The committed offsets or the ends of the topics could not be read. Retryable.
    #[error("reading the offsets of group {group}: {source}")]
    Offsets {
        /// The group.
        group: String,
        /// What librdkafka said.
        source: KafkaError,
    },
    /// The rebuild had not caught up when `--wait-timeout` ran out.
    #[error(
        "generation {generation} of {processor} had not caught up after {waited:?}; the \
         previous generation still serves. Its tables are left; run replay again (it builds a \
         new generation)"
    )]
    Timeout {
        /// The processor.
        processor: String,
        /// The generation being built.
        generation: u32,
        /// How long it ran.
        waited: Duration,
    },
    /// Another rebuild of the processor began while this one ran: this one is not made
    /// active (the later one will be, when it catches up).
    #[error(
        "generation {generation} of {processor} caught up, but another rebuild began since; it \
         is not made active. Run one rebuild of a processor at a time"
    )]
    Superseded {
        /// The processor.
        processor: String,
        /// The generation this rebuild built.
        generation: u32,
    },
    /// The consume loop stopped before it caught up, without an error.
    #[error("the rebuild of {0} stopped before it caught up")]
    Stopped(String),
    /// The rebuild was interrupted ([`ReplayOptions::interrupt`]) before it caught up.
    #[error(
        "the rebuild of generation {generation} of {processor} was interrupted before it caught \
         up; the previous generation still serves. Its tables are left; run replay again (it \
         builds a new generation)"
    )]
    Interrupted {
        /// The processor.
        processor: String,
        /// The generation being built.
        generation: u32,
    },
    /// A rebuild of the processor is recorded as running: another `replay` or `dlq replay`,
    /// or one whose process was killed. Nothing was started or changed.
    #[error(
        "generation {generation} of {processor} is being rebuilt (since {since}): another \
         `replay` or `dlq replay` of {processor} runs, or one was killed before it ended. Wait \
         for it; if none runs, start again with --take-over (generation {generation} is then \
         left, and not made active)"
    )]
    InProgress {
        /// The processor.
        processor: String,
        /// The generation recorded as building.
        generation: u32,
        /// When that rebuild began, as RFC 3339 (UTC), or "an unknown time".
        since: String,
    },
}

impl From<dietstream_runtime::StoreError> for ReplayError {
    fn from(error: dietstream_runtime::StoreError) -> Self {
        ReplayError::Run(RunError::Store(error))
    }
}

/// Resolves when a rebuild is to stop before it caught up (SIGTERM or Ctrl-C on the command
/// line). Shared, so that it can be looked at more than once.
pub type Interrupt = Shared<BoxFuture<'static, ()>>;

/// How a rebuild runs.
#[derive(Clone)]
pub struct ReplayOptions {
    /// Time between two progress lines.
    pub progress_interval: Duration,
    /// Give up when it has not caught up after this long; `None` waits as long as it takes.
    pub wait_timeout: Option<Duration>,
    /// Timeout of each Kafka metadata and offset request.
    pub request_timeout: Duration,
    /// Start even when the generations table records a rebuild of the processor as running
    /// (one whose process was killed): that generation is left and never made active.
    pub take_over: bool,
    /// When it resolves, the rebuild stops its loop, records that it stopped and fails with
    /// [`ReplayError::Interrupted`]; `None` runs until caught up or timed out.
    pub interrupt: Option<Interrupt>,
}

impl std::fmt::Debug for ReplayOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplayOptions")
            .field("progress_interval", &self.progress_interval)
            .field("wait_timeout", &self.wait_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("take_over", &self.take_over)
            .field("interrupt", &self.interrupt.is_some())
            .finish()
    }
}

/// The command-line options of `replay` and `dlq replay`.
#[derive(Debug, Clone, clap::Args)]
pub struct ReplayArgs {
    /// Give up (exit 1, the old generation keeps serving) when the rebuild has not caught up
    /// after this long, e.g. 30m; without it, wait as long as it takes.
    #[arg(long, value_parser = positive_duration)]
    pub wait_timeout: Option<Duration>,
    /// Time between two progress lines.
    #[arg(long, default_value = "5s", value_parser = positive_duration)]
    pub progress_interval: Duration,
    /// Start even though a rebuild of the processor is recorded as running, when none runs
    /// any more (its process was killed); that rebuild's generation is never made active.
    #[arg(long)]
    pub take_over: bool,
}

impl ReplayArgs {
    /// The options, with Kafka requests timing out after `request_timeout` (no interrupt).
    pub fn options(&self, request_timeout: Duration) -> ReplayOptions {
        ReplayOptions {
            progress_interval: self.progress_interval,
            wait_timeout: self.wait_timeout,
            request_timeout,
            take_over: self.take_over,
            interrupt: None,
        }
    }
}

/// A duration above zero, as humantime writes it (`500ms`, `5s`, `30m`).
pub fn positive_duration(text: &str) -> Result<Duration, String> {
    let duration = humantime_serde::re::humantime::parse_duration(text)
        .map_err(|e| format!("{text:?}: {e}"))?;
    if duration.is_zero() {
        return Err(format!("{text:?}: must be above zero"));
    }
    Ok(duration)
}

/// One source topic's progress: committed offsets against the ends, summed over partitions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicProgress {
    /// The topic.
    pub topic: String,
    /// Offsets done (committed), summed.
    pub done: i64,
    /// End offsets, summed.
    pub end: i64,
}

impl TopicProgress {
    /// Per topic, in the order they first appear in `lag`.
    pub fn of(lag: &GroupLag) -> Vec<TopicProgress> {
        let mut topics: Vec<TopicProgress> = Vec::new();
        for (topic, _, committed, end) in &lag.partitions {
            let done = committed.unwrap_or(0).clamp(0, *end);
            match topics.iter_mut().find(|t| &t.topic == topic) {
                Some(t) => {
                    t.done += done;
                    t.end += end;
                }
                None => topics.push(TopicProgress {
                    topic: topic.clone(),
                    done,
                    end: *end,
                }),
            }
        }
        topics
    }
}

/// Time left at `rate` records per second for `remaining` records; `None` when nothing moves.
pub fn eta(remaining: i64, rate: f64) -> Option<Duration> {
    if remaining <= 0 {
        return Some(Duration::ZERO);
    }
    if !(rate.is_finite() && rate > 0.0) {
        return None;
    }
    Some(Duration::from_secs_f64(remaining as f64 / rate))
}

/// A duration as an operator reads it: `45s`, `3m05s`, `2h07m`.
pub fn short_duration(duration: Duration) -> String {
    let seconds = duration.as_secs();
    match seconds {
        0..60 => format!("{seconds}s"),
        60..3600 => format!("{}m{:02}s", seconds / 60, seconds % 60),
        _ => format!("{}h{:02}m", seconds / 3600, (seconds % 3600) / 60),
    }
}

/// One progress line: per topic records done against its end, the rate since the rebuild
/// started (`done_since_start` records in `elapsed`), and the time left at that rate.
pub fn progress_line(topics: &[TopicProgress], done_since_start: i64, elapsed: Duration) -> String {
    let parts: Vec<String> = topics
        .iter()
        .map(|t| {
            let percent = if t.end == 0 {
                100.0
            } else {
                100.0 * t.done as f64 / t.end as f64
            };
            format!("{} {}/{} ({percent:.1}%)", t.topic, t.done, t.end)
        })
        .collect();
    let seconds = elapsed.as_secs_f64();
    let rate = if seconds > 0.0 {
        done_since_start as f64 / seconds
    } else {
        0.0
    };
    let remaining: i64 = topics.iter().map(|t| t.end - t.done).sum();
    let eta = eta(remaining, rate).map_or_else(|| "unknown".to_owned(), short_duration);
    format!(
        "{}  {rate:.0} records/s  ETA {eta}",
        if parts.is_empty() {
            "no partitions".to_owned()
        } else {
            parts.join(", ")
        }
    )
}

/// What a finished rebuild did.
#[derive(Debug, Clone)]
pub struct ReplaySummary {
    /// The processor.
    pub processor: String,
    /// The generation built, now active.
    pub generation: u32,
    /// The generation that served before.
    pub previous: u32,
    /// The keyspace of the tables.
    pub keyspace: String,
    /// The consumer group of the new generation.
    pub group: String,
    /// Per source topic, where it ended.
    pub topics: Vec<TopicProgress>,
    /// How long it took.
    pub elapsed: Duration,
    /// What the consume loop did.
    pub run: LoopSummary,
    /// The new generation's tables.
    pub tables: Vec<String>,
    /// The previous generation's tables, left in place.
    pub previous_tables: Vec<String>,
    /// The progress lines shown.
    pub progress_lines: usize,
}

impl std::fmt::Display for ReplaySummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let seconds = self.elapsed.as_secs_f64().max(f64::EPSILON);
        writeln!(
            f,
            "generation {} of {} is active (was {}): {} records read in {:.1}s ({:.0}/s), {} \
             events applied, {} rows written, {} dead-lettered, group {}",
            self.generation,
            self.processor,
            self.previous,
            self.run.records,
            self.elapsed.as_secs_f64(),
            self.run.records as f64 / seconds,
            self.run.applied,
            self.run.rows,
            self.run.dead_lettered,
            self.group
        )?;
        writeln!(
            f,
            "running `dietstream run {}` processes switch to its tables at their next look \
             (processors.generation_check_interval)",
            self.processor
        )?;
        writeln!(
            f,
            "the tables of generation {} are left in place; drop them once nothing reads them:",
            self.previous
        )?;
        for table in &self.previous_tables {
            writeln!(f, "  DROP TABLE IF EXISTS {}.{table};", self.keyspace)?;
        }
        Ok(())
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The committed offsets of `group` against the ends of `topics`.
async fn offsets(
    env: &ReadModelEnv,
    group: &str,
    topics: &[String],
    timeout: Duration,
) -> Result<GroupLag, ReplayError> {
    let (kafka, owned_group, topics) = (env.kafka.clone(), group.to_owned(), topics.to_vec());
    tokio::task::spawn_blocking(move || {
        crate::kafka::group_lag(&kafka, &owned_group, &topics, timeout)
    })
    .await
    .unwrap_or_else(|error| std::panic::resume_unwind(error.into_panic()))
    .map_err(|source| ReplayError::Offsets {
        group: group.to_owned(),
        source,
    })
}

/// Rebuilds `projection`'s read model in a new generation, reporting progress lines to
/// `progress`, and makes it the active one once caught up. See the module docs.
pub async fn rebuild<P: Projection>(
    env: &ReadModelEnv,
    projection: Arc<P>,
    topics: &ProcessorTopics,
    options: &ReplayOptions,
    progress: &mut (dyn FnMut(String) + Send),
) -> Result<ReplaySummary, ReplayError> {
    let (session, keyspace) = (&env.session, env.keyspace.as_str());
    let name = projection.name();
    if let Some(interrupt) = &options.interrupt {
        // Polled once before anything is recorded, so that a signal handler behind it is in
        // place from here on; a signal is then seen by the loop below.
        let _ = interrupt.clone().now_or_never();
    }
    generation::migrate(session, keyspace).await?;
    let in_progress = |generations: &generation::Generations| {
        let generation = generations.building?;
        let since = generations.running_since?;
        Some(ReplayError::InProgress {
            processor: name.to_owned(),
            generation,
            since: chrono::DateTime::from_timestamp_millis(since).map_or_else(
                || "an unknown time".to_owned(),
                |at| at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            ),
        })
    };
    // Read, check, and begin only if `building` is still what was read; when another rebuild
    // changed it in between, read again (with `--take-over`, what it took over is a rebuild
    // that was already running, so it is refused like one).
    let mut take_over = options.take_over;
    let (before, target) = loop {
        let before = generation::load(session, keyspace, name).await?;
        if !take_over {
            if let Some(refused) = in_progress(&before) {
                return Err(refused);
            }
        }
        let target = before.next();
        if generation::begin(session, keyspace, name, target, before.building, now_ms()).await? {
            break (before, target);
        }
        take_over = false;
    };
    let built = build(env, projection, topics, options, progress, before, target).await;
    if built.is_err() {
        // Recorded as stopped, so that the next rebuild need not take over; its generation
        // stays recorded as building, so the next one writes above it.
        if let Err(error) = generation::stopped(session, keyspace, name, target).await {
            tracing::warn!(processor = %name, generation = target, %error, "Recording the stopped rebuild failed; the next replay needs --take-over.");
        }
    }
    built
}

/// The rebuild itself, once `target` is recorded as building.
async fn build<P: Projection>(
    env: &ReadModelEnv,
    projection: Arc<P>,
    topics: &ProcessorTopics,
    options: &ReplayOptions,
    progress: &mut (dyn FnMut(String) + Send),
    before: generation::Generations,
    target: u32,
) -> Result<ReplaySummary, ReplayError> {
    let (session, keyspace) = (&env.session, env.keyspace.as_str());
    let name = projection.name();
    dietstream_runtime::store::migrate_generation(session, projection.as_ref(), keyspace, target)
        .await?;
    let store =
        Store::prepare_generation(Arc::clone(session), projection.as_ref(), keyspace, target)
            .await?;
    let tables = generation::tables_of(projection.as_ref(), target);
    let group = generation::group_id(&topics.group_id, target);
    progress(format!(
        "rebuilding {name} as generation {target} (group {group}, tables {}) from the start \
         of {}; generation {} keeps serving",
        tables.join(", "),
        topics.reads.join(", "),
        before.active
    ));
    let registry = prometheus::Registry::new();
    let metrics = ProcessorMetrics::new(name, &registry)
        .map_err(|e| ReplayError::Run(RunError::Metrics(e.to_string())))?;
    let parts = Parts {
        projection: Arc::new(Rebuild(Arc::clone(&projection))),
        topics: ProcessorTopics {
            group_id: group.clone(),
            ..topics.clone()
        },
        store,
        codec: Arc::clone(&env.codec),
        config: env.config.clone(),
        metrics,
    };
    let kafka = env.kafka.clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let mut running = tokio::spawn(async move {
        consume::run(parts, &kafka, async {
            let _ = stopped.await;
        })
        .await
    });

    let started = Instant::now();
    let mut first_done = None;
    let mut last_line: Option<Instant> = None;
    let mut lines = 0;
    loop {
        let lag = match offsets(env, &group, &topics.reads, options.request_timeout).await {
            Ok(lag) => lag,
            Err(error) => {
                let _ = stop.send(());
                let _ = running.await;
                return Err(error);
            }
        };
        let progressed = TopicProgress::of(&lag);
        let done: i64 = progressed.iter().map(|t| t.done).sum();
        let first = *first_done.get_or_insert(done);
        let caught_up = lag.total() == 0;
        if caught_up || last_line.is_none_or(|at| at.elapsed() >= options.progress_interval) {
            progress(progress_line(&progressed, done - first, started.elapsed()));
            lines += 1;
            last_line = Some(Instant::now());
        }
        if caught_up {
            break;
        }
        if let Some(limit) = options.wait_timeout {
            if started.elapsed() >= limit {
                let _ = stop.send(());
                let _ = running.await;
                return Err(ReplayError::Timeout {
                    processor: name.to_owned(),
                    generation: target,
                    waited: started.elapsed(),
                });
            }
        }
        let interrupted = async {
            match &options.interrupt {
                Some(interrupt) => interrupt.clone().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = interrupted => {
                let _ = stop.send(());
                let _ = running.await;
                return Err(ReplayError::Interrupted {
                    processor: name.to_owned(),
                    generation: target,
                });
            }
            finished = &mut running => {
                return match finished {
                    Ok(Ok(_)) => Err(ReplayError::Stopped(name.to_owned())),
                    Ok(Err(error)) => Err(RunError::from(error).into()),
                    Err(error) => std::panic::resume_unwind(error.into_panic()),
                };
            }
            () = tokio::time::sleep(CHECK_EVERY) => {}
        }
    }
    let _ = stop.send(());
    let run = match running.await {
        Ok(result) => result.map_err(RunError::from)?,
        Err(error) => std::panic::resume_unwind(error.into_panic()),
    };
    // The loop committed synchronously on the way out and left the group: a running
    // processor that switches now joins it alone, at those offsets.
    let ended = offsets(env, &group, &topics.reads, options.request_timeout).await?;
    if !generation::activate(session, keyspace, name, target, &tables, now_ms()).await? {
        return Err(ReplayError::Superseded {
            processor: name.to_owned(),
            generation: target,
        });
    }
    Ok(ReplaySummary {
        processor: name.to_owned(),
        generation: target,
        previous: before.active,
        keyspace: keyspace.to_owned(),
        group,
        topics: TopicProgress::of(&ended),
        elapsed: started.elapsed(),
        run,
        tables,
        previous_tables: generation::tables_of(projection.as_ref(), before.active),
        progress_lines: lines,
    })
}

/// The environment of the read-model processors of `config`: its CQL session (tables
/// migrated), codec, Kafka and loop settings.
pub async fn environment(config: &Config) -> Result<ReadModelEnv, RunError> {
    let codec = Arc::new(Codec::new(
        config.schema_registry.registry()?,
        &Catalog::embedded()?,
    )?);
    let session = Arc::new(crate::run::migrate(config).await?);
    Ok(ReadModelEnv {
        kafka: config.kafka.client_config(),
        session,
        keyspace: config.cql.keyspace.clone(),
        codec,
        config: config.processors.clone(),
    })
}

/// The topics of read-model processor `processor` in the configured topology.
pub fn processor_topics(config: &Config, processor: &str) -> Result<ProcessorTopics, RunError> {
    let desired =
        Topology::embedded()?.resolve(config.topology.profile, &config.topology.prefix)?;
    ProcessorTopics::from_desired(&desired, processor)
        .map_err(|problem| RunError::ReadModelTopology { problem })
}

/// [`rebuild`] for the read-model processor called `processor`.
struct RebuildTask<'a> {
    env: &'a ReadModelEnv,
    topics: &'a ProcessorTopics,
    options: &'a ReplayOptions,
    progress: &'a mut (dyn FnMut(String) + Send),
}

impl ReadModelTask for RebuildTask<'_> {
    type Output = Result<ReplaySummary, ReplayError>;

    async fn run<P: Projection>(self, projection: Arc<P>) -> Self::Output {
        rebuild(
            self.env,
            projection,
            self.topics,
            self.options,
            self.progress,
        )
        .await
    }
}

/// `dietstream replay <processor>` of the configured stack.
pub async fn replay(
    config: &Config,
    processor: &str,
    options: &ReplayOptions,
    progress: &mut (dyn FnMut(String) + Send),
) -> Result<ReplaySummary, ReplayError> {
    let topics = processor_topics(config, processor)?;
    let env = environment(config).await?;
    let task = RebuildTask {
        env: &env,
        topics: &topics,
        options,
        progress,
    };
    with_read_model(processor, task).await?
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Wrapper {
        #[command(flatten)]
        args: ReplayArgs,
    }

    #[test]
    fn topics_sum_their_partitions_and_nothing_committed_counts_as_nothing_done() {
        let lag = GroupLag {
            group: "g".to_owned(),
            partitions: vec![
                ("a".to_owned(), 0, Some(40), 100),
                ("b".to_owned(), 0, None, 7),
                ("a".to_owned(), 1, Some(100), 100),
            ],
        };
        assert_eq!(
            TopicProgress::of(&lag),
            vec![
                TopicProgress {
                    topic: "a".to_owned(),
                    done: 140,
                    end: 200
                },
                TopicProgress {
                    topic: "b".to_owned(),
                    done: 0,
                    end: 7
                },
            ]
        );
    }

    #[test]
    fn eta_is_the_remaining_records_at_the_rate_and_unknown_when_nothing_moves() {
        assert_eq!(eta(1_000, 100.0), Some(Duration::from_secs(10)));
        assert_eq!(eta(0, 0.0), Some(Duration::ZERO));
        assert_eq!(eta(5, 0.0), None);
        assert_eq!(eta(5, f64::NAN), None);
        assert_eq!(short_duration(Duration::from_secs(45)), "45s");
        assert_eq!(short_duration(Duration::from_secs(185)), "3m05s");
        assert_eq!(short_duration(Duration::from_secs(7_620)), "2h07m");
    }

    #[test]
    fn a_progress_line_shows_each_topic_the_rate_and_the_time_left() {
        let topics = [
            TopicProgress {
                topic: "diet.events.user".to_owned(),
                done: 500,
                end: 2_000,
            },
            TopicProgress {
                topic: "diet.events.social".to_owned(),
                done: 0,
                end: 0,
            },
        ];
        assert_eq!(
            progress_line(&topics, 500, Duration::from_secs(5)),
            "diet.events.user 500/2000 (25.0%), diet.events.social 0/0 (100.0%)  100 \
             records/s  ETA 15s"
        );
        assert!(progress_line(&topics, 0, Duration::ZERO).ends_with("0 records/s  ETA unknown"));
    }

    #[test]
    fn durations_must_be_above_zero_and_well_formed() {
        let parsed = Wrapper::try_parse_from(["x", "--wait-timeout", "30m"]).expect("parses");
        assert_eq!(parsed.args.wait_timeout, Some(Duration::from_secs(1_800)));
        assert_eq!(parsed.args.progress_interval, Duration::from_secs(5));
        for bad in [
            vec!["x", "--progress-interval", "0s"],
            vec!["x", "--wait-timeout", "soon"],
        ] {
            let error = Wrapper::try_parse_from(bad.clone()).expect_err("refused");
            assert!(error.to_string().contains(bad[1]), "{error}");
        }
    }

    #[test]
    fn taking_over_is_asked_for_and_never_the_default() {
        let timeout = Duration::from_secs(30);
        let plain = Wrapper::try_parse_from(["x"]).expect("parses");
        assert!(!plain.args.options(timeout).take_over);
        let taking = Wrapper::try_parse_from(["x", "--take-over"]).expect("parses");
        let options = taking.args.options(timeout);
        assert!(options.take_over);
        assert!(options.interrupt.is_none());
    }
}
