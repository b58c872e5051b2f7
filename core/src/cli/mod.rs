//! The command line (clap). The binary's edge: errors here are `anyhow` and become a
//! message and an exit code; everything below returns typed errors.

mod audit;
mod dags;
mod db;
mod operators;
mod runs;
mod serve;
mod table;
mod trigger;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use sluice_operator_api::Registry;

use crate::settings::Settings;

/// sluice: a scheduled ETL orchestrator in one binary.
#[derive(Debug, Parser)]
#[command(name = "sluice", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the scheduler with a local executor: creates runs on schedule, starts queued and
    /// triggered runs, resumes interrupted ones. Stops gracefully on SIGTERM/SIGINT.
    Scheduler(serve::ServeArgs),
    /// Scheduler, local executor and web server (UI + REST API) in one process.
    Standalone {
        /// Scheduler options.
        #[command(flatten)]
        serve: serve::ServeArgs,
        /// Web server options.
        #[command(flatten)]
        web: serve::WebArgs,
    },
    /// The web server alone: UI, REST API, /health and /metrics over the metadata store.
    Webserver(serve::WebArgs),
    /// A worker: claims tries that a scheduler with `--executor workers` queued, runs them,
    /// and records how they ended. Run any number, on any machine sharing the store.
    Worker(serve::WorkerArgs),
    /// List, show, validate, test, trigger, pause and backfill DAGs.
    #[command(subcommand)]
    Dags(dags::DagsCommand),
    /// Inspect DAG runs.
    #[command(subcommand)]
    Runs(runs::RunsCommand),
    /// Read a try's log, see a task's delivery ledger, clear tasks to run them again.
    #[command(subcommand)]
    Tasks(runs::TasksCommand),
    /// List and describe operators.
    #[command(subcommand)]
    Operators(operators::OperatorsCommand),
    /// Who changed what through the API (every mutation, granted or refused), newest first.
    Audit(audit::AuditArgs),
    /// The metadata store's upkeep: `db clean` removes old finished runs and their files.
    #[command(subcommand)]
    Db(db::DbCommand),
}

impl Cli {
    /// True for the long-running commands, which log at `info` by default.
    pub fn is_service(&self) -> bool {
        matches!(
            self.command,
            Command::Scheduler(_)
                | Command::Standalone { .. }
                | Command::Webserver(_)
                | Command::Worker(_)
        )
    }
}

/// The whole `sluice` program over `registry`: parses the command line, installs logging,
/// runs the command and turns an error into a message and exit code 2. The `sluice` binary
/// is this with the built-in operators; a program with operators of its own passes a
/// registry that has them too (see `examples/custom_operator`).
pub async fn main(registry: Registry) -> ExitCode {
    let cli = Cli::parse();
    init_tracing(&cli);
    match run(cli, registry).await {
        Ok(code) => code,
        Err(error) => {
            if json_logs() {
                tracing::error!(error = %format!("{error:#}"), "exiting");
            } else {
                eprintln!("error: {error:#}");
            }
            ExitCode::from(2)
        }
    }
}

/// Whether the terminal log is JSON (`SLUICE_LOG_FORMAT=json`).
pub fn json_logs() -> bool {
    std::env::var("SLUICE_LOG_FORMAT").is_ok_and(|f| f == "json")
}

/// What a long-running command tells its operator (listening address, shutdown): a line on
/// stderr, or, with JSON logs, an event, so that every line parses.
macro_rules! announce {
    ($($arg:tt)*) => {
        if $crate::cli::json_logs() {
            tracing::info!(target: "sluice", "{}", format!($($arg)*));
        } else {
            eprintln!($($arg)*);
        }
    };
}
pub(crate) use announce;

/// Installs the terminal and try-log logging for `cli`'s command: `SLUICE_LOG` takes the
/// usual filter syntax (`info`, `sluice_core=debug`), quiet by default for one-shot commands
/// so their output stays readable; try logs get their events whatever the terminal's level.
pub fn init_tracing(cli: &Cli) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{EnvFilter, Layer};

    let default = if cli.is_service() {
        "info,sqlx=warn"
    } else {
        "warn"
    };
    let filter = EnvFilter::try_from_env("SLUICE_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    // SLUICE_LOG_FORMAT=json: one JSON object per line, with the fields of the run and try
    // spans the event happened in (dag_id, run_id, task_id, try_number) under `spans`.
    let terminal = if json_logs() {
        tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(false)
            .with_span_list(true)
            .flatten_event(true)
            .with_writer(std::io::stderr)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .boxed()
    };
    tracing_subscriber::registry()
        .with(terminal.with_filter(filter))
        .with(crate::trylog::TryLogLayer.with_filter(tracing_subscriber::filter::LevelFilter::INFO))
        .init();
}

/// Runs a parsed command line with settings from the environment. `registry` holds the
/// operators DAG files may use: the program's one registry, carried to the scheduler, the
/// web server and every command that parses DAGs.
pub async fn run(cli: Cli, registry: Registry) -> anyhow::Result<ExitCode> {
    let settings = Settings::from_env();
    crate::executor::slots::parse_pools(&settings.pools)?;
    match cli.command {
        Command::Scheduler(args) => serve::run(args, None, &settings, registry).await,
        Command::Standalone { serve, web } => {
            serve::run(serve, Some(web), &settings, registry).await
        }
        Command::Webserver(web) => serve::webserver(web, &settings, registry).await,
        Command::Worker(args) => serve::worker(args, &settings, registry).await,
        Command::Dags(cmd) => dags::run(cmd, &settings, &registry).await,
        Command::Runs(cmd) => runs::run(cmd, &settings, &registry).await,
        Command::Tasks(cmd) => runs::run_tasks(cmd, &settings, &registry).await,
        Command::Operators(cmd) => operators::run(cmd, &registry),
        Command::Audit(args) => audit::run(args, &settings).await,
        Command::Db(cmd) => db::run(cmd, &settings).await,
    }
}

/// Prints `value` as pretty JSON on stdout.
fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// `2026-11-23T16:00:00Z`-style text for an optional instant.
fn show_time(t: Option<chrono::DateTime<chrono::Utc>>) -> String {
    t.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_else(|| "-".into())
}
