//! `dietstream simulate`: plays the Diet Planner Game as commands through the
//! [`CommandBus`], at a given rate, for a given time or number of
//! commands.
//!
//! Every simulated player runs as its own closed loop: the pure [`generator`] chooses the next
//! command from the player's state, the runner sends it, waits for the result and feeds it
//! back before the player's next command. A shared token bucket spaces the commands of all
//! players to the requested rate. What each player sends depends on the seed and the results
//! only; which player sends when depends on timing, so with `--commands N` the players' streams
//! are prefixes of their seeded streams. With an [`InsightFeed`] (`--rate-insights`) players
//! also rate the insights they are shown, which arrive when the processors get to them.

pub mod catalog;
pub mod generator;
pub mod insights;
mod stats;

use std::fs::File;
use std::future::Future;
use std::io::{BufWriter, IsTerminal, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use dietstream_schemas::Command;
use tokio::time::Instant;

pub use generator::{Deliberate, GeneratorConfig, Planned, UserSim, MAX_RESENDS};
pub use insights::InsightFeed;
pub use stats::Summary;

use crate::bus::{BusError, CommandBus, CommandOutcome};
use stats::Stats;

/// What to simulate.
#[derive(Debug, Clone, PartialEq)]
pub struct SimulateOptions {
    /// Players, their seed, start day and invalid fraction.
    pub generator: GeneratorConfig,
    /// Commands per second over all players.
    pub rate: f64,
    /// Stop after this wall-clock time; `None` for no limit.
    pub duration: Option<Duration>,
    /// Stop after this many commands; `None` for no limit.
    pub max_commands: Option<u64>,
    /// How long to wait for each command's result.
    pub timeout: Duration,
    /// Write every command and its result as one JSON object per line to this file.
    pub record: Option<PathBuf>,
    /// Report progress on stderr (one updated line on a terminal, periodic lines otherwise).
    pub progress: bool,
}

/// Why a simulation could not run.
#[derive(Debug, thiserror::Error)]
pub enum SimulateError {
    /// An option is out of range. Permanent.
    #[error("invalid option {option}: {reason}")]
    InvalidOption {
        /// The option (`--rate`, ...).
        option: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The insights of the players could not be read (`diet.events.ai`, the registry).
    /// Permanent for this run.
    #[error("cannot read the players' insights: {reason}")]
    InsightFeed {
        /// What failed.
        reason: String,
    },
    /// The record file could not be created or written. Permanent (disk full, permissions).
    #[error("cannot write the record file {path}: {source}")]
    Record {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
}

impl SimulateError {
    /// Always false: nothing in a simulation is retried as a whole.
    pub fn is_retryable(&self) -> bool {
        false
    }
}

/// Spaces events `interval` apart on average, letting no burst through (a token bucket of
/// depth one).
struct RateLimiter {
    interval: Duration,
    next: Mutex<Instant>,
}

impl RateLimiter {
    fn new(rate: f64) -> RateLimiter {
        RateLimiter {
            interval: Duration::from_secs_f64(1.0 / rate),
            next: Mutex::new(Instant::now()),
        }
    }

    /// Waits for the next slot; returns false when it would come after `deadline`.
    async fn acquire(&self, deadline: Option<Instant>) -> bool {
        let slot = {
            let mut next = lock(&self.next);
            let now = Instant::now();
            // Time nobody used is not saved up: after a pause the rate resumes, no burst.
            let slot = (*next).max(now);
            *next = slot + self.interval;
            slot
        };
        if deadline.is_some_and(|d| slot > d) {
            return false;
        }
        tokio::time::sleep_until(slot).await;
        true
    }
}

/// One line of the record file.
#[derive(serde::Serialize)]
struct RecordLine<'a> {
    user_id: &'a str,
    command_type: &'a str,
    aggregate_id: &'a str,
    command_id: String,
    expected_version: Option<i64>,
    deliberate: Option<Deliberate>,
    command: serde_json::Value,
    result: RecordResult<'a>,
    latency_ms: f64,
}

#[derive(serde::Serialize)]
#[serde(untagged)]
enum RecordResult<'a> {
    Outcome(&'a CommandOutcome),
    NoResult {
        outcome: &'static str,
        error: String,
    },
}

/// Everything the player tasks share.
struct Shared {
    bus: Arc<CommandBus>,
    options: SimulateOptions,
    limiter: RateLimiter,
    deadline: Option<Instant>,
    issued: AtomicU64,
    stop: AtomicBool,
    stats: Mutex<Stats>,
    insights: Option<InsightFeed>,
    record: Option<Mutex<BufWriter<File>>>,
    record_error: Mutex<Option<std::io::Error>>,
}

/// Runs the simulation until the duration passed, the commands were sent, every player
/// stopped, or `shutdown` completes (e.g. Ctrl-C); commands in flight then still get their
/// result. Returns the final figures.
pub async fn run(
    bus: Arc<CommandBus>,
    options: SimulateOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<Summary, SimulateError> {
    run_with_insights(bus, options, None, shutdown).await
}

/// [`run`], and the players are shown the insights of `insights` (see [`InsightFeed`]) and
/// rate some of them.
pub async fn run_with_insights(
    bus: Arc<CommandBus>,
    options: SimulateOptions,
    insights: Option<InsightFeed>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<Summary, SimulateError> {
    validate(&options)?;
    let record = match &options.record {
        Some(path) => Some(Mutex::new(BufWriter::new(File::create(path).map_err(
            |source| SimulateError::Record {
                path: path.clone(),
                source,
            },
        )?))),
        None => None,
    };
    let started = Instant::now();
    let shared = Arc::new(Shared {
        bus,
        limiter: RateLimiter::new(options.rate),
        deadline: options.duration.map(|d| started + d),
        issued: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        stats: Mutex::new(Stats::default()),
        insights,
        record,
        record_error: Mutex::new(None),
        options,
    });

    let mut players = tokio::task::JoinSet::new();
    for index in 0..shared.options.generator.users {
        let shared = Arc::clone(&shared);
        players.spawn(async move { play(&shared, index).await });
    }
    let stopper = {
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            shutdown.await;
            shared.stop.store(true, Ordering::Relaxed);
        })
    };
    let reporter = shared.options.progress.then(|| {
        let shared = Arc::clone(&shared);
        tokio::spawn(async move { report(&shared, started).await })
    });
    while players.join_next().await.is_some() {}
    stopper.abort();
    if let Some(reporter) = reporter {
        reporter.abort();
        if std::io::stderr().is_terminal() {
            // Ends the progress line so what follows starts on its own line.
            eprintln!();
        }
    }

    if let Some(record) = &shared.record {
        if let Err(e) = lock(record).flush() {
            lock(&shared.record_error).get_or_insert(e);
        }
    }
    if let Some(source) = lock(&shared.record_error).take() {
        return Err(SimulateError::Record {
            path: shared.options.record.clone().unwrap_or_default(),
            source,
        });
    }
    let summary = lock(&shared.stats).summary(started.elapsed());
    Ok(summary)
}

fn validate(options: &SimulateOptions) -> Result<(), SimulateError> {
    let invalid = |option, reason: &str| {
        Err(SimulateError::InvalidOption {
            option,
            reason: reason.to_owned(),
        })
    };
    if !(options.rate.is_finite() && options.rate > 0.0) {
        return invalid("--rate", "must be a positive number of commands per second");
    }
    if options.generator.users == 0 {
        return invalid("--users", "must be at least 1");
    }
    if !(0.0..=1.0).contains(&options.generator.invalid_rate) {
        return invalid("--invalid-rate", "must be between 0 and 1");
    }
    if options.timeout.is_zero() {
        return invalid("--timeout", "must be positive");
    }
    Ok(())
}

/// One player's closed loop.
async fn play(shared: &Shared, index: u32) {
    let mut user = UserSim::new(&shared.options.generator, index);
    loop {
        if shared.stop.load(Ordering::Relaxed)
            || shared.deadline.is_some_and(|d| Instant::now() >= d)
        {
            return;
        }
        if let Some(max) = shared.options.max_commands {
            if shared.issued.fetch_add(1, Ordering::Relaxed) >= max {
                return;
            }
        }
        if !shared.limiter.acquire(shared.deadline).await || shared.stop.load(Ordering::Relaxed) {
            return;
        }
        if let Some(feed) = &shared.insights {
            for insight in feed.take(user.user_id()) {
                user.insight_shown(insight);
            }
        }
        let Some(planned) = user.next_command() else {
            return;
        };
        lock(&shared.stats).sent(&planned);
        let sent_at = Instant::now();
        let result = shared
            .bus
            .execute(planned.command.clone(), shared.options.timeout)
            .await;
        let latency = sent_at.elapsed();
        match &result {
            Ok(outcome) => {
                lock(&shared.stats).answered(outcome, &planned, latency);
                user.observe(outcome);
            }
            Err(e) => {
                {
                    let mut stats = lock(&shared.stats);
                    if matches!(e, BusError::Timeout { .. }) {
                        stats.timed_out();
                    } else {
                        stats.failed();
                    }
                }
                tracing::debug!(user = user.user_id(), error = %e, "command without result");
                user.lost();
            }
        }
        write_record(shared, user.user_id(), &planned, &result, latency);
        if user.is_stopped() {
            lock(&shared.stats).user_stopped();
            return;
        }
    }
}

fn write_record(
    shared: &Shared,
    user_id: &str,
    planned: &Planned,
    result: &Result<CommandOutcome, BusError>,
    latency: Duration,
) {
    let Some(record) = &shared.record else {
        return;
    };
    let header = planned.command.header();
    let line = RecordLine {
        user_id,
        command_type: planned.command.record_type(),
        aggregate_id: &header.aggregate_id,
        command_id: header.command_id.to_string(),
        expected_version: header.expected_version,
        deliberate: planned.deliberate,
        command: command_json(&planned.command),
        result: match result {
            Ok(outcome) => RecordResult::Outcome(outcome),
            Err(e) => RecordResult::NoResult {
                outcome: if matches!(e, BusError::Timeout { .. }) {
                    "timeout"
                } else {
                    "error"
                },
                error: e.to_string(),
            },
        },
        latency_ms: latency.as_secs_f64() * 1000.0,
    };
    let mut writer = lock(record);
    let written = serde_json::to_writer(&mut *writer, &line)
        .map_err(std::io::Error::from)
        .and_then(|()| writer.write_all(b"\n"));
    if let Err(e) = written {
        lock(&shared.record_error).get_or_insert(e);
        shared.stop.store(true, Ordering::Relaxed);
    }
}

/// The command record (header and payload) as JSON.
pub fn command_json(command: &Command) -> serde_json::Value {
    macro_rules! to_json {
        ($($variant:ident),+) => {
            match command {
                $(Command::$variant(r) => serde_json::to_value(r),)+
            }
        };
    }
    to_json!(
        CreateInsight,
        GiveRecommendation,
        RecordAiQuery,
        RecordAiResponse,
        RecordFeedback,
        DeleteMeal,
        LogMeal,
        LogWater,
        RecordGoalMet,
        SetNutritionGoal,
        UpdateMeal,
        ClaimQuestReward,
        CompleteQuest,
        FailQuest,
        ProgressQuest,
        StartQuest,
        AcceptFriendRequest,
        CommentOnPost,
        CreatePost,
        DeclineFriendRequest,
        LikePost,
        SendFriendRequest,
        AwardXp,
        RegisterUser,
        TakeSnapshot,
        UpdateProfile
    )
    // The generated types serialise plain data (strings, numbers, uuids): this cannot fail,
    // and a record line without the command is still useful.
    .unwrap_or(serde_json::Value::Null)
}

/// Progress on stderr: one line rewritten every second on a terminal, a plain line every
/// ten seconds otherwise (logs, CI).
async fn report(shared: &Shared, started: Instant) {
    let terminal = std::io::stderr().is_terminal();
    let period = if terminal {
        Duration::from_secs(1)
    } else {
        Duration::from_secs(10)
    };
    let mut ticks = tokio::time::interval_at(started + period, period);
    loop {
        ticks.tick().await;
        let summary = lock(&shared.stats).summary(started.elapsed());
        if terminal {
            eprint!("\r\x1b[2K{summary}");
        } else {
            eprintln!("{summary}");
        }
    }
}

/// Counters and the record writer stay usable after a panic elsewhere: each update is a
/// single step.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Parses `YYYY-MM-DD` into days since 1970-01-01 (for `--start`).
pub fn parse_day(text: &str) -> Option<i32> {
    let mut parts = text.split('-');
    let year: i64 = parts.next()?.parse().ok()?;
    let month: i64 = parts.next()?.parse().ok()?;
    let day: i64 = parts.next()?.parse().ok()?;
    if parts.next().is_some() || !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return None;
    }
    // Days from civil (H. Hinnant): exact for the proleptic Gregorian calendar.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    i32::try_from(era * 146_097 + doe - 719_468).ok()
}

#[cfg(test)]
mod tests;
