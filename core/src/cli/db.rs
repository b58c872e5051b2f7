//! `sluice db migrate|check|clean`: applies the store's migrations, checks the store answers,
//! and removes finished runs older than a cutoff with everything recorded of them (Airflow's
//! `airflow db migrate`, `db check` and `db clean`).

use std::process::ExitCode;

use chrono::Utc;

use super::dags::human_bytes;
use super::print_json;
use crate::retention::{self, Places};
use crate::settings::Settings;
use crate::store::{self, migrations};

/// `sluice db …`.
#[derive(Debug, clap::Subcommand)]
pub enum DbCommand {
    /// Apply the metadata store's pending migrations and say which were applied.
    ///
    /// Creates a SQLite store if missing. Every sluice command does this on start; this
    /// does only that.
    Migrate,
    /// Check that the metadata store answers: exit 0 if it does, 1 with the reason if not.
    ///
    /// Names the migrations it has not applied yet, if any.
    Check,
    /// Remove finished runs that ended more than --older-than ago: their task instances,
    /// attempts, history, delivery ledgers, try logs and artifacts. Queued and running runs
    /// are never touched. --dry-run prints exactly what would go.
    Clean {
        /// Age of the runs to remove, e.g. `30d`, `12h`.
        #[arg(long, value_parser = humantime::parse_duration)]
        older_than: std::time::Duration,
        /// Only this DAG's runs.
        #[arg(long)]
        dag: Option<String>,
        /// Print the plan, remove nothing.
        #[arg(long)]
        dry_run: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Runs a `db` subcommand.
pub async fn run(cmd: DbCommand, settings: &Settings) -> anyhow::Result<ExitCode> {
    let (older_than, dag, dry_run, json) = match cmd {
        DbCommand::Migrate => return migrate(settings).await,
        DbCommand::Check => return Ok(check(settings).await),
        DbCommand::Clean {
            older_than,
            dag,
            dry_run,
            json,
        } => (older_than, dag, dry_run, json),
    };
    let store = store::open(&settings.database_url).await?;
    let places = Places::of(settings)?;
    let cutoff = chrono::Duration::from_std(older_than)
        .ok()
        .and_then(|age| Utc::now().checked_sub_signed(age))
        .unwrap_or(chrono::DateTime::<Utc>::MIN_UTC);
    let plan = retention::plan(store.as_ref(), &places, cutoff, dag.as_deref()).await?;
    if dry_run {
        if json {
            print_json(&plan)?;
        } else {
            for run in &plan.runs {
                println!(
                    "would remove {} / {} (ended {}, {} of files)",
                    run.dag_id,
                    run.run_id,
                    run.ended_at
                        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    human_bytes(run.log_bytes + run.artifact_bytes)
                );
            }
            println!(
                "dry run: {} run(s) that ended before {} and {} of logs and artifacts would be removed",
                plan.runs.len(),
                cutoff.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                human_bytes(plan.bytes())
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    let report = retention::clean(store.as_ref(), &places, &plan).await?;
    if json {
        print_json(&report)?;
    } else {
        for run in &report.runs {
            println!("removed {} / {}", run.dag_id, run.run_id);
        }
        println!(
            "removed {} run(s) and {} of logs and artifacts{}",
            report.runs.len(),
            human_bytes(report.bytes),
            if report.kept > 0 {
                format!(
                    "; {} run(s) were re-triggered meanwhile and kept",
                    report.kept
                )
            } else {
                String::new()
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `db migrate`: the store's migrations before, applying them as every command does, and
/// the difference.
async fn migrate(settings: &Settings) -> anyhow::Result<ExitCode> {
    let before = migrations::status(&settings.database_url).await?;
    store::open(&settings.database_url).await?;
    let after = migrations::status(&settings.database_url).await?;
    let applied: Vec<String> = after
        .applied
        .iter()
        .filter(|m| !before.applied.contains(m))
        .map(ToString::to_string)
        .collect();
    if applied.is_empty() {
        println!(
            "{}: up to date ({} migrations applied)",
            after.store,
            after.applied.len()
        );
    } else {
        if !before.exists {
            println!("{}: created", after.store);
        }
        println!("{}: applied {} migration(s):", after.store, applied.len());
        for m in &applied {
            println!("  {m}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `db check`: exit 0 when the store answers, 1 with the reason when not.
async fn check(settings: &Settings) -> ExitCode {
    match migrations::status(&settings.database_url).await {
        Err(error) => {
            eprintln!("error: the metadata store does not answer: {error}");
            ExitCode::FAILURE
        }
        Ok(status) if !status.exists => {
            eprintln!(
                "error: the metadata store {} does not exist yet (`sluice db migrate` or any command creates it)",
                status.store
            );
            ExitCode::FAILURE
        }
        Ok(status) => {
            println!(
                "{} ({}) answers: {} migrations applied",
                status.store,
                status.backend,
                status.applied.len()
            );
            if !status.pending.is_empty() {
                println!(
                    "{} migration(s) pending (`sluice db migrate` applies them, as any sluice command does on start):",
                    status.pending.len()
                );
                for m in &status.pending {
                    println!("  {m}");
                }
            }
            if !status.unknown.is_empty() {
                println!(
                    "the store has migrations this sluice does not know ({}): a newer sluice migrated it",
                    status
                        .unknown
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            ExitCode::SUCCESS
        }
    }
}
