//! `sluice db clean`: removes finished runs older than a cutoff with everything recorded of
//! them (Airflow's `airflow db clean`).

use std::process::ExitCode;

use chrono::Utc;

use super::dags::human_bytes;
use super::print_json;
use crate::retention::{self, Places};
use crate::settings::Settings;
use crate::store;

/// `sluice db …`.
#[derive(Debug, clap::Subcommand)]
pub enum DbCommand {
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
    let DbCommand::Clean {
        older_than,
        dag,
        dry_run,
        json,
    } = cmd;
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
