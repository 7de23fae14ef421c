//! The `dietstream` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::bail;
use clap::{Parser, Subcommand};
use dietstream::config::{Config, CONFIG_FILE_ENV};
use dietstream::contract::{self, Verdict};
use dietstream::roundtrip::{self, RoundTripOptions};
use dietstream_schemas::catalog::Catalog;
use dietstream_schemas::codec::Codec;
use dietstream_schemas::types::AggregateType;
use dietstream_topology::{ApplyOutcome, Cluster, Topology};
use rdkafka::admin::AdminClient;
use rdkafka::client::DefaultClientContext;
use tracing_subscriber::EnvFilter;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit code of `topology diff` when the cluster differs from the topology, and of `schemas
/// check` when a schema cannot be registered (1 is an error, 2 an invalid configuration).
const EXIT_DRIFT: u8 = 3;

/// Event store and stream processing of the Diet Planner Game.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// TOML config file; settings in it override the built-in defaults for the local stack,
    /// and DIETSTREAM_* environment variables override it (DIETSTREAM_KAFKA__BOOTSTRAP_SERVERS
    /// sets kafka.bootstrap_servers).
    #[arg(long, global = true, env = CONFIG_FILE_ENV, value_name = "FILE")]
    config: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the effective configuration as TOML, secrets redacted.
    Config,
    /// Send one Avro record through the schema registry, Kafka and CQL, check it at every
    /// step and print what was done.
    Roundtrip {
        /// Topic the probe record is produced to (created with one partition if missing).
        #[arg(long, default_value_t = RoundTripOptions::default().topic)]
        topic: String,
        /// Table in the configured keyspace the probe row is written to.
        #[arg(long, default_value_t = RoundTripOptions::default().table)]
        table: String,
    },
    /// Kafka topics and consumer groups as code (topology/topology.toml), for the configured
    /// topology.profile and topology.prefix.
    Topology {
        #[command(subcommand)]
        command: TopologyCommand,
    },
    /// Run a processor until SIGTERM or Ctrl-C; it then finishes its transaction or batch,
    /// commits and exits 0.
    Run {
        /// Which processor.
        #[arg(value_enum)]
        processor: Processor,
    },
    /// Create the CQL keyspace (when missing) and every table dietstream owns (read models: in
    /// the generation that serves); idempotent.
    Migrate,
    /// Rebuild a read model from the start of the log into new tables (`<table>_g<N>`) while
    /// running processors keep serving the old ones; once caught up, make the new generation
    /// the active one (running processors switch to it) and exit 0. Sends no commands.
    Replay {
        /// The read-model processor.
        #[arg(value_parser = clap::builder::PossibleValuesParser::new(dietstream::run::READ_MODELS))]
        processor: String,
        #[command(flatten)]
        args: dietstream::replay::ReplayArgs,
    },
    /// A read-model processor's dead letters.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// Consumer lag of each processor's group (records between its committed offsets and the
    /// ends of the topics it reads).
    Lag {
        /// Only these processors (as named in topology/topology.toml, e.g. `indexer`;
        /// repeat the option for more than one).
        #[arg(long)]
        processor: Vec<String>,
        /// Wait until every listed group has lag 0, at most this long (e.g. 60s); exit 1 if
        /// it does not get there.
        #[arg(long, value_parser = humantime_serde::re::humantime::parse_duration)]
        wait: Option<std::time::Duration>,
        /// Print a progress table (committed records, records/s, lag, ETA per processor) at
        /// this interval (e.g. 2s): until every group has lag 0 with --wait, else until
        /// stopped.
        #[arg(long, value_parser = humantime_serde::re::humantime::parse_duration)]
        watch: Option<std::time::Duration>,
    },
    /// Ask the event store: a player's progress or nutrition, an aggregate's events. Reads the
    /// indexer's tables, so what the indexer has not read yet is missing.
    Query {
        #[command(subcommand)]
        command: QueryCommand,
    },
    /// The Avro contract (schemas/avro) in the schema registry: one subject per record and
    /// topic of the configured topology (TopicRecordNameStrategy).
    Schemas {
        #[command(subcommand)]
        command: SchemasCommand,
    },
    /// Play the game: simulated players send realistic commands (and a few invalid ones on
    /// purpose) through the command bus, each waiting for its result before the next one.
    /// Progress on stderr, a summary on stdout at the end.
    Simulate {
        /// Number of simulated players.
        #[arg(long, default_value_t = 10)]
        users: u32,
        /// Commands per second over all players.
        #[arg(long, default_value_t = 20.0)]
        rate: f64,
        /// Stop after this time (e.g. 30s, 5m); without it and without --commands: 1m.
        #[arg(long, value_parser = humantime_serde::re::humantime::parse_duration)]
        duration: Option<std::time::Duration>,
        /// Stop after this many commands.
        #[arg(long)]
        commands: Option<u64>,
        /// Seed of the players' behaviour: the same seed gives the same command streams.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Fraction of commands sent invalid on purpose (stale versions, invalid values).
        #[arg(long, default_value_t = 0.02)]
        invalid_rate: f64,
        /// First simulated day, YYYY-MM-DD; default: 2024-01-01 plus (seed mod 366) days.
        #[arg(long, value_name = "DATE")]
        start: Option<String>,
        /// Player ids are <prefix>-<n>; default sim-<seed>. A second run with the same seed
        /// against the same cluster needs another prefix (the ids are taken).
        #[arg(long)]
        user_prefix: Option<String>,
        /// How long to wait for each command's result.
        #[arg(long, default_value = "10s", value_parser = humantime_serde::re::humantime::parse_duration)]
        timeout: std::time::Duration,
        /// Write every command and its result as JSON lines to this file.
        #[arg(long, value_name = "FILE")]
        record: Option<PathBuf>,
        /// Value of the dietstream.source header.
        #[arg(long, default_value = "simulator")]
        source: String,
        /// Show the players the insights the AI coach made for them (read from
        /// diet.events.ai, as the game would show them) so that they rate some; the insights
        /// processor must be running.
        #[arg(long)]
        rate_insights: bool,
    },
}

#[derive(Debug, Subcommand)]
enum DlqCommand {
    /// One line per dead letter not re-driven yet (DLQ partition@offset, original
    /// topic[partition]@offset, timestamp, error class, message), read-only.
    List {
        /// The read-model processor.
        #[arg(value_parser = clap::builder::PossibleValuesParser::new(dietstream::run::READ_MODELS))]
        processor: String,
        /// One JSON object per line instead.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        filter: dietstream::dlq::Filter,
    },
    /// Check every dead letter not re-driven yet against today's registry and code, then
    /// rebuild the read model (as `replay` does) so the records that now apply are applied in
    /// their place; mark the letters re-driven. Records that still fail are dead-lettered again.
    Replay {
        /// The read-model processor.
        #[arg(value_parser = clap::builder::PossibleValuesParser::new(dietstream::run::READ_MODELS))]
        processor: String,
        #[command(flatten)]
        args: dietstream::replay::ReplayArgs,
    },
}

#[derive(Debug, Subcommand)]
enum QueryCommand {
    /// XP, level, streak and achievements of a player.
    Progress {
        /// The user id.
        user: String,
    },
    /// A player's daily nutrition between two dates (both included), against their goals.
    Nutrition {
        /// The user id.
        user: String,
        /// First day, YYYY-MM-DD.
        #[arg(long)]
        from: chrono::NaiveDate,
        /// Last day, YYYY-MM-DD.
        #[arg(long)]
        to: chrono::NaiveDate,
    },
    /// A player's rows in a read-model table (one JSON object per row): nutrition_user_daily,
    /// nutrition_user_weekly, nutrition_user_monthly, engagement_users,
    /// engagement_user_sessions, engagement_user_social, quests_by_user, quests_user_totals,
    /// insights_by_user or insight_acceptance_by_user. The tables are documented in
    /// processors/<processor>/README.md.
    Rows {
        /// The table.
        #[arg(value_parser = clap::builder::PossibleValuesParser::new(dietstream::run::PER_USER_TABLES))]
        table: String,
        /// The user id.
        user: String,
        /// Most rows shown.
        #[arg(long, default_value_t = 10)]
        limit: i32,
    },
    /// The events of one aggregate, one line each, in version order.
    Events {
        /// USER, SOCIAL or AI.
        #[arg(long = "type", default_value = "user", value_parser = parse_aggregate_type)]
        aggregate_type: AggregateType,
        /// The aggregate id.
        id: String,
        /// First version.
        #[arg(long, default_value_t = 1)]
        from_version: i64,
        /// Last version.
        #[arg(long, default_value_t = i64::MAX)]
        to_version: i64,
    },
}

fn parse_aggregate_type(text: &str) -> Result<AggregateType, String> {
    match text.to_ascii_lowercase().as_str() {
        "user" => Ok(AggregateType::User),
        "social" => Ok(AggregateType::Social),
        "ai" => Ok(AggregateType::Ai),
        "system" => Ok(AggregateType::System),
        _ => Err(format!("{text:?}: expected user, social, ai or system")),
    }
}

/// The processors `dietstream run` can start.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Processor {
    /// The command processor: the single writer of the event topics.
    Commands,
    /// The indexer: the event store's CQL tables (events by aggregate, type and user;
    /// snapshots) from the event and snapshot topics.
    Indexer,
    /// Nutrition analytics: per user and day, week and month against the goal; per day
    /// across users.
    Nutrition,
    /// User engagement: active users, streaks, sessions, XP and level, cohorts.
    Engagement,
    /// Quest progression: starts, progresses and completes the catalogue's quests by
    /// sending commands, and tracks every quest per user.
    Quests,
    /// AI insight: draws insights from rolling windows of each user's meals and water, sends
    /// them as commands, and keeps per-kind acceptance figures from the feedback.
    Insights,
    /// Every read-model processor in this process, with one metrics endpoint.
    All,
}

#[derive(Debug, Subcommand)]
enum SchemasCommand {
    /// Print every subject with the record and topic it stands for.
    List,
    /// Tell, changing nothing, whether every local schema can be registered: compatible with
    /// every registered version (checked by the registry and again locally) under a
    /// transitive compatibility level. Exit code 0 when all can, 3 when one cannot.
    Check,
    /// Set the compatibility level on every subject, then register every schema. Idempotent:
    /// an unchanged schema keeps its id.
    Register {
        /// BACKWARD_TRANSITIVE or FULL_TRANSITIVE.
        #[arg(long, default_value = contract::DEFAULT_LEVEL)]
        compatibility: String,
    },
}

#[derive(Debug, Subcommand)]
enum TopologyCommand {
    /// Print the topics, with their settings, and the consumer groups.
    List,
    /// Show how the cluster differs from the topology, changing nothing. Exit code 0 when in
    /// sync, 3 when it differs.
    Diff,
    /// Create missing topics and apply safe changes, then wait until the cluster shows them.
    /// With any unsafe difference nothing is changed and the exit code is 1.
    Apply,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A running processor tells what it does (start, assignments, where its metrics are); the
    // one-shot commands print their own result and log only trouble. RUST_LOG overrides both.
    let default_log = match cli.command {
        Command::Run { .. } => "info",
        _ => "warn",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_log)),
        )
        .with_writer(std::io::stderr)
        .init();

    let config = match Config::load(cli.config.as_deref()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    match run(cli.command, config) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command, config: Config) -> anyhow::Result<ExitCode> {
    match command {
        Command::Config => {
            print!("{}", config.to_redacted_toml()?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Roundtrip { topic, table } => {
            let options = RoundTripOptions {
                topic,
                table,
                ..RoundTripOptions::default()
            };
            let runtime = tokio::runtime::Runtime::new()?;
            let report = runtime.block_on(roundtrip::run(&config, &options, |step| {
                println!(
                    "{:>8}  {:>7.1} ms  {}",
                    step.name,
                    step.elapsed.as_secs_f64() * 1000.0,
                    step.detail
                );
            }))?;
            let total: f64 = report.steps.iter().map(|s| s.elapsed.as_secs_f64()).sum();
            println!(
                "round trip ok: record {} (schema id {}, {}[{}]@{}) in {:.1} ms",
                report.id,
                report.schema_id,
                options.topic,
                report.partition,
                report.offset,
                total * 1000.0
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Topology { command } => topology(command, &config),
        Command::Schemas { command } => schemas(command, &config),
        Command::Simulate {
            users,
            rate,
            duration,
            commands,
            seed,
            invalid_rate,
            start,
            user_prefix,
            timeout,
            record,
            source,
            rate_insights,
        } => {
            let mut generator = dietstream::simulate::GeneratorConfig::new(seed, users);
            generator.invalid_rate = invalid_rate;
            if let Some(start) = start {
                generator.start_day = dietstream::simulate::parse_day(&start)
                    .ok_or_else(|| anyhow::anyhow!("--start {start}: expected YYYY-MM-DD"))?;
            }
            if let Some(prefix) = user_prefix {
                generator.user_prefix = prefix;
            }
            let options = dietstream::simulate::SimulateOptions {
                generator,
                rate,
                duration: duration
                    .or((commands.is_none()).then_some(std::time::Duration::from_secs(60))),
                max_commands: commands,
                timeout,
                record,
                progress: true,
            };
            simulate(&config, &source, options, rate_insights)
        }
        Command::Run { processor } => run_processor(processor, &config),
        Command::Replay { processor, args } => {
            let options = interruptible(args.options(config.kafka.request_timeout));
            let runtime = tokio::runtime::Runtime::new()?;
            let summary = runtime.block_on(dietstream::replay::replay(
                &config,
                &processor,
                &options,
                &mut |line| eprintln!("{line}"),
            ))?;
            print!("{summary}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Dlq { command } => dlq(command, &config),
        Command::Query { command } => query(command, &config),
        Command::Lag {
            processor,
            wait,
            watch,
        } => lag(&config, &processor, wait, watch),
        Command::Migrate => {
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(dietstream::run::migrate(&config))?;
            println!(
                "keyspace {} and its tables are in place",
                config.cql.keyspace
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn dlq(command: DlqCommand, config: &Config) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Runtime::new()?;
    match command {
        DlqCommand::List {
            processor,
            json,
            filter,
        } => {
            let contents = runtime.block_on(dietstream::dlq::list(config, &processor))?;
            let shown = filter.select(&contents.letters);
            for letter in &shown {
                if json {
                    println!("{}", serde_json::to_string(letter)?);
                } else {
                    println!("{}", letter.line());
                }
            }
            let pending = contents.letters.iter().filter(|l| !l.redriven).count();
            eprintln!(
                "{} shown; {} dead letter(s) of {processor}, {pending} not re-driven",
                shown.len(),
                contents.letters.len()
            );
        }
        DlqCommand::Replay { processor, args } => {
            let options = interruptible(args.options(config.kafka.request_timeout));
            let summary = runtime.block_on(dietstream::dlq::replay(
                config,
                &processor,
                &options,
                &mut |line| eprintln!("{line}"),
            ))?;
            if let Some(rebuild) = &summary.rebuild {
                print!("{rebuild}");
                println!(
                    "{} dead letter(s) re-driven; those that still fail are dead-lettered again \
                     with generation {} (`dietstream dlq list {processor}`)",
                    summary.checked.len(),
                    rebuild.generation
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `options` interrupted by SIGTERM or Ctrl-C: the rebuild then records that it stopped, so
/// that the next `replay` need not take over, and exits 1.
fn interruptible(
    mut options: dietstream::replay::ReplayOptions,
) -> dietstream::replay::ReplayOptions {
    use futures::FutureExt;
    options.interrupt = Some(dietstream::run::termination().boxed().shared());
    options
}

fn run_processor(processor: Processor, config: &Config) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Runtime::new()?;
    match processor {
        Processor::Commands => {
            let summary = runtime.block_on(dietstream::run::commands(
                config,
                dietstream::run::termination(),
            ))?;
            eprintln!(
                "command processor stopped: {} accepted, {} rejected, {} dead-lettered, {} events, {} snapshots in {} transactions ({} aborted)",
                summary.accepted,
                summary.rejected,
                summary.dead_lettered,
                summary.events,
                summary.snapshots,
                summary.transactions,
                summary.aborted
            );
        }
        Processor::Indexer => {
            runtime.block_on(dietstream::run::indexer(
                config,
                dietstream::run::termination(),
            ))?;
            eprintln!("indexer stopped: offsets committed");
        }
        Processor::Nutrition
        | Processor::Engagement
        | Processor::Quests
        | Processor::Insights
        | Processor::All => {
            let names: Vec<&str> = match processor {
                Processor::Nutrition => vec!["nutrition"],
                Processor::Engagement => vec!["engagement"],
                Processor::Quests => vec!["quests"],
                Processor::Insights => vec!["insights"],
                _ => dietstream::run::READ_MODELS.to_vec(),
            };
            runtime.block_on(dietstream::run::read_models(
                config,
                &names,
                dietstream::run::termination(),
            ))?;
            eprintln!("{} stopped: offsets committed", names.join(", "));
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn schemas(command: SchemasCommand, config: &Config) -> anyhow::Result<ExitCode> {
    let desired =
        Topology::embedded()?.resolve(config.topology.profile, &config.topology.prefix)?;
    let catalog = Catalog::embedded()?;
    let subjects = contract::subjects(&catalog, &desired)?;
    let registry = config.schema_registry.registry()?;
    let runtime = tokio::runtime::Runtime::new()?;
    match command {
        SchemasCommand::List => {
            for subject in &subjects {
                println!(
                    "{}  ({} on {})",
                    subject.name, subject.record, subject.topic
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        SchemasCommand::Check => {
            let verdicts = runtime.block_on(contract::check(&registry, &catalog, &subjects))?;
            let mut failed = 0;
            for (subject, verdict) in &verdicts {
                let line = match verdict {
                    Verdict::New => "new: register would create it".to_owned(),
                    Verdict::Unchanged => "unchanged".to_owned(),
                    Verdict::Compatible => "compatible: register would add a version".to_owned(),
                    Verdict::Incompatible(reasons) => format!("INCOMPATIBLE: {}", reasons.join("; ")),
                    Verdict::WeakLevel(level) => format!(
                        "compatibility level {} is not one of {:?}: run `dietstream schemas register`",
                        level.as_deref().unwrap_or("(unset)"),
                        contract::ACCEPTED_LEVELS
                    ),
                };
                if !verdict.is_ok() {
                    failed += 1;
                }
                println!("{}: {line}", subject.name);
            }
            println!(
                "{} subject(s) checked against {}: {} cannot be registered",
                verdicts.len(),
                config.schema_registry.url,
                failed
            );
            Ok(if failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(EXIT_DRIFT)
            })
        }
        SchemasCommand::Register { compatibility } => {
            let done = runtime.block_on(contract::register(
                &registry,
                &catalog,
                &subjects,
                &compatibility,
            ))?;
            for registered in &done {
                println!(
                    "{}: id {}{}",
                    registered.subject,
                    registered.id,
                    if registered.new_version {
                        " (new version)"
                    } else {
                        ""
                    }
                );
            }
            println!(
                "{} subject(s) registered with {compatibility} at {}; {} new version(s)",
                done.len(),
                config.schema_registry.url,
                done.iter().filter(|r| r.new_version).count()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn topology(command: TopologyCommand, config: &Config) -> anyhow::Result<ExitCode> {
    let desired =
        Topology::embedded()?.resolve(config.topology.profile, &config.topology.prefix)?;
    let scope = format!(
        "{} topics of profile {} on {}",
        desired.topics.len(),
        desired.profile,
        config.kafka.bootstrap_servers
    );
    match command {
        TopologyCommand::List => {
            print!("{desired}");
            Ok(ExitCode::SUCCESS)
        }
        TopologyCommand::Diff => {
            let (cluster, runtime) = cluster(config)?;
            let plan = runtime.block_on(cluster.diff(&desired))?;
            if plan.is_empty() {
                println!("in sync: {scope}");
                return Ok(ExitCode::SUCCESS);
            }
            print!("{plan}");
            println!(
                "differs: {} change(s) to apply, {} refused, for {scope}",
                plan.changes.len(),
                plan.refusals.len()
            );
            Ok(ExitCode::from(EXIT_DRIFT))
        }
        TopologyCommand::Apply => {
            let (cluster, runtime) = cluster(config)?;
            match runtime.block_on(cluster.apply(&desired))? {
                ApplyOutcome::InSync => println!("in sync, nothing to do: {scope}"),
                ApplyOutcome::Applied(plan) => {
                    print!("{plan}");
                    println!("applied {} change(s): {scope}", plan.changes.len());
                }
                ApplyOutcome::Refused(plan) => {
                    print!("{plan}");
                    bail!(
                        "refused: {} unsafe difference(s) (lines starting with x); nothing was \
                         changed",
                        plan.refusals.len()
                    )
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The admin side of the configured Kafka cluster, and a runtime to drive it.
fn cluster(config: &Config) -> anyhow::Result<(Cluster, tokio::runtime::Runtime)> {
    let admin: AdminClient<DefaultClientContext> = config.kafka.client_config().create()?;
    Ok((
        Cluster::new(admin, config.kafka.request_timeout),
        tokio::runtime::Runtime::new()?,
    ))
}

/// `dietstream simulate`: builds the command bus (and the insight feed with
/// `--rate-insights`) and runs the simulator until done or Ctrl-C.
fn simulate(
    config: &Config,
    source: &str,
    options: dietstream::simulate::SimulateOptions,
    rate_insights: bool,
) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Runtime::new()?;
    let summary = runtime.block_on(async {
        let bus =
            std::sync::Arc::new(dietstream::bus::CommandBus::from_config(config, source).await?);
        let insights = if rate_insights {
            let prefix = &options.generator.user_prefix;
            Some(dietstream::simulate::InsightFeed::start(config, prefix).await?)
        } else {
            None
        };
        let ctrl_c = async {
            // Without a signal handler the run simply ends at its limits.
            let _ = tokio::signal::ctrl_c().await;
        };
        anyhow::Ok(dietstream::simulate::run_with_insights(bus, options, insights, ctrl_c).await?)
    })?;
    println!("{summary}");
    if summary.deliberate > 0 || summary.unexpected_rejections > 0 || summary.users_stopped > 0 {
        println!(
            "deliberately invalid {} (accepted anyway {}), valid but rejected {}, players stopped {}",
            summary.deliberate,
            summary.deliberate_accepted,
            summary.unexpected_rejections,
            summary.users_stopped
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn query(command: QueryCommand, config: &Config) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let session = std::sync::Arc::new(config.cql.session().await?);
        let codec = std::sync::Arc::new(Codec::new(
            config.schema_registry.registry()?,
            &Catalog::embedded()?,
        )?);
        let store = std::sync::Arc::new(
            dietstream::store::EventStore::new(
                std::sync::Arc::clone(&session),
                &config.cql.keyspace,
                codec,
            )
            .await?,
        );
        match command {
            QueryCommand::Rows { table, user, limit } => {
                let rows = dietstream::run::user_rows(
                    &session,
                    &config.cql.keyspace,
                    &table,
                    &user,
                    limit,
                )
                .await?;
                for row in &rows {
                    println!("{row}");
                }
                println!("{} row(s) of {table} for {user}", rows.len());
            }
            QueryCommand::Progress { user } => {
                let queries = dietstream::query::QueryBus::new(store);
                let Some(p) = queries.user_progress(&user).await? else {
                    println!("no user {user:?} in the event store");
                    return Ok(ExitCode::FAILURE);
                };
                println!(
                    "{} ({}) at version {}: level {}, {} XP (next level at {}), streak {} days, \
                     {} meals logged, {} goals met, {} quests completed, achievements: {}",
                    p.user_id,
                    p.display_name,
                    p.version,
                    p.level,
                    p.total_xp,
                    p.next_level_xp,
                    p.streak_days,
                    p.meals_logged,
                    p.goals_met,
                    p.quests_completed,
                    if p.achievements.is_empty() {
                        "none".to_owned()
                    } else {
                        p.achievements.join(", ")
                    }
                );
            }
            QueryCommand::Nutrition { user, from, to } => {
                let queries = dietstream::query::QueryBus::new(store);
                let n = queries.nutrition_analytics(&user, from, to).await?;
                println!(
                    "{:<10}  {:>5}  {:>8}  {:>9}  {:>7}  {:>6}  {:>7}  {:>6}  goals met",
                    "day", "meals", "kcal", "protein g", "carbs g", "fat g", "fibre g", "water"
                );
                for d in &n.days {
                    let met: Vec<String> = d.goals_met.iter().map(|k| format!("{k:?}")).collect();
                    println!(
                        "{:<10}  {:>5}  {:>8.0}  {:>9.1}  {:>7.1}  {:>6.1}  {:>7.1}  {:>6}  {}",
                        d.date,
                        d.meals,
                        d.nutrients.energy_kcal,
                        d.nutrients.protein_g,
                        d.nutrients.carbohydrate_g,
                        d.nutrients.fat_g,
                        d.nutrients.fibre_g,
                        d.water_ml,
                        met.join(",")
                    );
                }
                println!(
                    "{} days with data, mean {:.0} kcal, as of version {}",
                    n.days.len(),
                    n.mean_energy_kcal(),
                    n.version
                );
            }
            QueryCommand::Events {
                aggregate_type,
                id,
                from_version,
                to_version,
            } => {
                let events = store
                    .events(aggregate_type, &id, from_version, to_version)
                    .await?;
                for e in &events {
                    let h = e.header();
                    println!(
                        "{:>6}  {:<32}  {}  {}",
                        h.version, h.event_type, h.event_id, h.timestamp
                    );
                }
                println!("{} events", events.len());
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// The group serving each consumer: a read model's active generation (`<group>.g<N>` after a
/// rebuild), the topology's group otherwise. [`ServingGroups::look`] reads the generations
/// again, so that `lag --wait` or `--watch` across a rebuild's switch follows the processor
/// to its new group instead of waiting on the one it left.
struct ServingGroups<'a> {
    consumers: &'a [&'a dietstream_topology::DesiredConsumer],
    /// A runtime and a session, when a consumer is a read model and the session opened.
    cql: Option<(tokio::runtime::Runtime, scylla::client::session::Session)>,
    keyspace: String,
    /// The groups of the last look: the topology's until the generations have been read.
    groups: Vec<String>,
    /// Whether a failed look has been reported (once, until one succeeds again).
    warned: bool,
}

impl<'a> ServingGroups<'a> {
    fn new(
        config: &Config,
        consumers: &'a [&'a dietstream_topology::DesiredConsumer],
    ) -> ServingGroups<'a> {
        let read_model = consumers
            .iter()
            .any(|c| dietstream::run::READ_MODELS.contains(&c.processor.as_str()));
        let cql = read_model
            .then(|| {
                let runtime = tokio::runtime::Runtime::new()?;
                let session = runtime.block_on(config.cql.session())?;
                anyhow::Ok((runtime, session))
            })
            .transpose()
            .unwrap_or_else(|error| {
                eprintln!(
                    "warning: read-model generations not read ({error:#}); showing generation 0"
                );
                None
            });
        ServingGroups {
            consumers,
            cql,
            keyspace: config.cql.keyspace.clone(),
            groups: consumers.iter().map(|c| c.group.clone()).collect(),
            warned: false,
        }
    }

    /// The groups serving now. When the generations cannot be read this time, the groups of
    /// the last look, with a warning.
    fn look(&mut self) -> &[String] {
        if let Some((runtime, session)) = &self.cql {
            let read = runtime.block_on(async {
                let mut groups = Vec::with_capacity(self.consumers.len());
                for c in self.consumers {
                    groups.push(
                        dietstream::read_model::serving_group(
                            session,
                            &self.keyspace,
                            &c.processor,
                            &c.group,
                        )
                        .await?,
                    );
                }
                anyhow::Ok(groups)
            });
            match read {
                Ok(groups) => (self.groups, self.warned) = (groups, false),
                Err(error) if !self.warned => {
                    eprintln!("warning: read-model generations not read ({error:#}); showing the groups read before");
                    self.warned = true;
                }
                Err(_) => {}
            }
        }
        &self.groups
    }
}

fn lag(
    config: &Config,
    processors: &[String],
    wait: Option<std::time::Duration>,
    watch: Option<std::time::Duration>,
) -> anyhow::Result<ExitCode> {
    use dietstream::progress;
    use std::time::{Duration, Instant};

    if watch.is_some_and(|w| w.is_zero()) {
        bail!("--watch must be longer than 0s");
    }
    let desired =
        Topology::embedded()?.resolve(config.topology.profile, &config.topology.prefix)?;
    let consumers: Vec<_> = desired
        .consumers
        .iter()
        .filter(|c| processors.is_empty() || processors.contains(&c.processor))
        .collect();
    if let Some(unknown) = processors
        .iter()
        .find(|p| !consumers.iter().any(|c| &c.processor == *p))
    {
        bail!("no processor {unknown:?} in the topology");
    }
    let mut serving = ServingGroups::new(config, &consumers);
    let client = config.kafka.client_config();
    let started = Instant::now();
    let deadline = wait.map(|w| started + w);
    let mut previous: (Instant, Vec<progress::Sample>) = (Instant::now(), Vec::new());
    let mut next_table = Instant::now();
    loop {
        let mut lines = Vec::new();
        let mut samples = Vec::new();
        for (c, group) in consumers.iter().zip(serving.look()) {
            let lag = dietstream::kafka::group_lag(
                &client,
                group,
                &c.reads,
                config.kafka.request_timeout,
            )?;
            lines.push(format!(
                "{:<12} {:<40} lag {:>8} over {} partitions",
                c.processor,
                group,
                lag.total(),
                lag.partitions.len()
            ));
            samples.push(progress::Sample {
                processor: c.processor.clone(),
                committed: lag.committed_total(),
                lag: lag.total(),
            });
        }
        let total: i64 = samples.iter().map(|s| s.lag).sum();
        let now = Instant::now();
        let caught_up = (total == 0 && wait.is_some()) || (wait.is_none() && watch.is_none());
        let finished = caught_up || deadline.is_some_and(|d| now >= d);
        // The last table is printed whenever the watch ends, so it shows the final state.
        if let Some(interval) = watch.filter(|_| now >= next_table || finished) {
            println!("{}", progress::header(now - started));
            let rows = progress::rows(&previous.1, &samples, now - previous.0);
            rows.iter().for_each(|r| println!("{r}"));
            previous = (now, samples);
            next_table = now + interval;
        }
        if finished {
            if watch.is_none() {
                lines.iter().for_each(|l| println!("{l}"));
            }
            if caught_up {
                return Ok(ExitCode::SUCCESS);
            }
            eprintln!("lag still {total} after {:?}", wait.unwrap_or_default());
            return Ok(ExitCode::FAILURE);
        }
        // Polling the brokers: committed offsets move by auto-commit or transaction commit.
        let pause = Duration::from_millis(500);
        std::thread::sleep(match watch {
            Some(_) => pause.min(next_table.saturating_duration_since(Instant::now())),
            None => pause,
        });
    }
}
