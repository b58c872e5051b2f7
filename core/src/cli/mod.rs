//! The command line (clap). The binary's edge: errors here are `anyhow` and become a
//! message and an exit code; everything below returns typed errors.

mod audit;
mod config;
mod dags;
mod db;
mod operators;
mod runs;
mod serve;
mod table;
mod tasks;
mod trigger;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use sluice_operator_api::Registry;

use crate::settings::{Config, Settings};

/// sluice: a scheduled ETL orchestrator in one binary.
#[derive(Debug, Parser)]
#[command(
    name = "sluice",
    version,
    about = "sluice: a scheduled ETL orchestrator in one binary",
    long_about = None
)]
pub struct Cli {
    /// The config file (default: ./sluice.toml when it exists). Environment variables win
    /// over its values.
    #[arg(long, global = true, env = crate::settings::CONFIG_VAR, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// How a listing command prints (Airflow's `-o/--output`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Aligned columns with a header.
    #[default]
    Table,
    /// A JSON array of objects.
    Json,
    /// Tab-separated values, no header (for scripts).
    Plain,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the scheduler: creates runs on schedule, starts queued and triggered runs, resumes interrupted ones.
    ///
    /// Tries run in this process unless `--executor workers`. Stops gracefully on
    /// SIGTERM/SIGINT.
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
    /// A worker: claims the tries a scheduler with `--executor workers` queued, runs them, records their ends.
    ///
    /// Run any number, on any machine sharing the store.
    Worker(serve::WorkerArgs),
    /// List, show, validate, test, trigger, pause and backfill DAGs; list their runs and next fire times.
    #[command(subcommand)]
    Dags(dags::DagsCommand),
    /// Inspect DAG runs.
    #[command(subcommand)]
    Runs(runs::RunsCommand),
    /// List and test tasks, show their states in a run, read a try's log, clear and stop tasks.
    #[command(subcommand)]
    Tasks(runs::TasksCommand),
    /// List and describe operators.
    #[command(subcommand)]
    Operators(operators::OperatorsCommand),
    /// Who changed what through the API (every mutation, granted or refused), newest first.
    Audit(audit::AuditArgs),
    /// The metadata store: apply its migrations, check it answers, remove old finished runs.
    #[command(subcommand)]
    Db(db::DbCommand),
    /// Show the settings in force (environment, config file, defaults), secrets masked.
    #[command(subcommand)]
    Config(config::ConfigCommand),
    /// Print a shell completion script (bash, zsh or fish) on stdout.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
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
///
/// It builds the async runtime itself: the config file's values are set in the process
/// environment first, while the process has one thread (setting a variable while another
/// thread may read the environment is undefined behaviour on glibc).
pub fn main(registry: Registry) -> ExitCode {
    let cli = Cli::parse();
    // Read before logging starts: the file may set SLUICE_LOG and SLUICE_LOG_FORMAT.
    let config = match Config::load(cli.config.as_deref()) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(2);
        }
    };
    config.export_file_values();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::from(2);
        }
    };
    runtime.block_on(main_with(cli, registry, config))
}

async fn main_with(cli: Cli, registry: Registry, config: Config) -> ExitCode {
    init_tracing(&cli);
    match run_with(cli, registry, config).await {
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
    let config = Config::load(cli.config.as_deref())?;
    run_with(cli, registry, config).await
}

/// Runs a parsed command line with the settings of `config` (environment over config file).
async fn run_with(cli: Cli, registry: Registry, config: Config) -> anyhow::Result<ExitCode> {
    let settings = Settings::from_config(&config);
    match &cli.command {
        // These work whatever the settings hold.
        Command::Config(cmd) => return config::run(cmd, &config),
        Command::Completions { shell } => return Ok(config::completions(*shell)),
        _ => {}
    }
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
        Command::Config(_) | Command::Completions { .. } => unreachable!("handled above"),
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
