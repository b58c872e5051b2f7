//! The command line (clap). The binary's edge: errors here are `anyhow` and become a
//! message and an exit code; everything below returns typed errors.

mod dags;
mod operators;
mod runs;
mod serve;
mod table;
mod trigger;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

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
    /// List, show, validate, test, trigger, pause and backfill DAGs.
    #[command(subcommand)]
    Dags(dags::DagsCommand),
    /// Inspect DAG runs.
    #[command(subcommand)]
    Runs(runs::RunsCommand),
    /// Read a try's log; clear tasks to run them again.
    #[command(subcommand)]
    Tasks(runs::TasksCommand),
    /// List and describe operators.
    #[command(subcommand)]
    Operators(operators::OperatorsCommand),
}

impl Cli {
    /// True for the long-running commands, which log at `info` by default.
    pub fn is_service(&self) -> bool {
        matches!(
            self.command,
            Command::Scheduler(_) | Command::Standalone { .. } | Command::Webserver(_)
        )
    }
}

/// Runs a parsed command line with settings from the environment.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let settings = Settings::from_env();
    crate::executor::slots::parse_pools(&settings.pools)?;
    match cli.command {
        Command::Scheduler(args) => serve::run(args, None, &settings).await,
        Command::Standalone { serve, web } => serve::run(serve, Some(web), &settings).await,
        Command::Webserver(web) => serve::webserver(web, &settings).await,
        Command::Dags(cmd) => dags::run(cmd, &settings).await,
        Command::Runs(cmd) => runs::run(cmd, &settings).await,
        Command::Tasks(cmd) => runs::run_tasks(cmd, &settings).await,
        Command::Operators(cmd) => operators::run(cmd),
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
