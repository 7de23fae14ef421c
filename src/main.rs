//! The `dietstream` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use dietstream::config::{Config, CONFIG_FILE_ENV};
use dietstream::roundtrip::{self, RoundTripOptions};
use tracing_subscriber::EnvFilter;

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
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();

    let cli = Cli::parse();
    let config = match Config::load(cli.config.as_deref()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    match run(cli.command, config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command, config: Config) -> anyhow::Result<()> {
    match command {
        Command::Config => {
            print!("{}", config.to_redacted_toml()?);
            Ok(())
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
            Ok(())
        }
    }
}
