//! `sluice dags …`: list, show, validate and test DAGs.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::anyhow;
use chrono::Utc;
use clap::Subcommand;
use serde_json::json;
use sluice_operator_api::{Connections, Registry};
use tokio_util::sync::CancellationToken;

use super::table::Table;
use super::{print_json, show_time};
use crate::dag::{Dag, DagBag};
use crate::executor::{Executor, Progress};
use crate::runs::{start_run, Start};
use crate::settings::Settings;
use crate::state::RunState;
use crate::store::{self, RunType, TaskKey};
use crate::trylog::try_log_path;

/// `sluice dags` subcommands.
#[derive(Debug, Subcommand)]
pub enum DagsCommand {
    /// List the valid DAGs of the DAG folder.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one DAG: schedule, settings and tasks with their dependencies.
    Show {
        /// The DAG id.
        dag_id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Check every DAG file of the folder; print each error as `<file>: <task or ->: <message>`.
    Validate,
    /// Record a manual run for the scheduler to start (a new attempt if the logical date already ran).
    Trigger {
        /// The DAG id.
        dag_id: String,
        /// Logical date (default: the latest complete interval).
        #[arg(short, long)]
        logical_date: Option<String>,
        /// Run configuration as a JSON object (overrides params).
        #[arg(short, long)]
        conf: Option<String>,
        /// The run's id (default `manual__<logical date>`): letters, digits and `_ . ~ : + -`.
        /// A finished run with this id gets a new attempt; a date that has a run under another id
        /// refuses it.
        #[arg(short, long)]
        run_id: Option<String>,
        /// Follow the run until it finishes; exit 0 iff it succeeded.
        #[arg(long)]
        wait: bool,
    },
    /// Stop creating scheduled runs of a DAG; runs already going finish.
    Pause {
        /// The DAG id.
        dag_id: String,
    },
    /// Resume creating scheduled runs of a DAG.
    Unpause {
        /// The DAG id.
        dag_id: String,
    },
    /// Queue a run for every schedule interval starting between two dates (inclusive).
    Backfill(super::trigger::BackfillArgs),
    /// List a DAG's runs, newest logical date first.
    ListRuns(super::trigger::ListRunsArgs),
    /// The next times a DAG's schedule fires (each ends an interval and starts its run),
    /// in the DAG's timezone and UTC.
    NextExecution {
        /// The DAG id.
        dag_id: String,
        /// How many fire times.
        #[arg(short, long = "num-executions", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=10_000))]
        num_executions: u32,
        /// Fire times after this instant (RFC 3339 or YYYY-MM-DD in the DAG's timezone; default: now).
        #[arg(long)]
        after: Option<String>,
        /// How to print.
        #[arg(short, long, value_enum, default_value_t)]
        output: super::Output,
    },
    /// Run one DAG run in this process and exit 0 iff it succeeds.
    Test {
        /// The DAG id.
        dag_id: String,
        /// Run the interval that starts at the latest fire time ≤ this instant (default: the latest complete interval).
        #[arg(long)]
        logical_date: Option<String>,
        /// Run configuration as a JSON object (overrides params).
        #[arg(long)]
        conf: Option<String>,
    },
}

/// Runs a `dags` subcommand.
pub async fn run(
    cmd: DagsCommand,
    settings: &Settings,
    registry: &Registry,
) -> anyhow::Result<ExitCode> {
    let bag = DagBag::load(&settings.dags_folder, registry);
    match cmd {
        DagsCommand::List { json } => list(&bag, json),
        DagsCommand::Show { dag_id, json } => show(
            find(&bag, &dag_id)?,
            json,
            &crate::retention::Places::local(settings),
        ),
        DagsCommand::Validate => Ok(validate(&bag)),
        DagsCommand::Trigger {
            dag_id,
            logical_date,
            conf,
            run_id,
            wait,
        } => {
            super::trigger::trigger(
                find(&bag, &dag_id)?.clone(),
                logical_date.as_deref(),
                conf.as_deref(),
                run_id.as_deref(),
                wait,
                settings,
            )
            .await
        }
        DagsCommand::Pause { dag_id } => {
            super::trigger::set_paused(find(&bag, &dag_id)?, true, settings).await
        }
        DagsCommand::Unpause { dag_id } => {
            super::trigger::set_paused(find(&bag, &dag_id)?, false, settings).await
        }
        DagsCommand::Backfill(args) => {
            super::trigger::backfill(find(&bag, &args.dag_id)?.clone(), &args, settings).await
        }
        DagsCommand::ListRuns(args) => super::trigger::list_runs(&args, settings).await,
        DagsCommand::NextExecution {
            dag_id,
            num_executions,
            after,
            output,
        } => super::trigger::next_execution(
            find(&bag, &dag_id)?,
            num_executions,
            after.as_deref(),
            output,
        ),
        DagsCommand::Test {
            dag_id,
            logical_date,
            conf,
        } => {
            test(
                find(&bag, &dag_id)?.clone(),
                logical_date.as_deref(),
                conf.as_deref(),
                settings,
            )
            .await
        }
    }
}

fn warn_broken(bag: &DagBag) {
    let broken = bag.broken_files();
    if !broken.is_empty() {
        eprintln!(
            "warning: {} DAG file(s) have errors and are not loaded: {} (run `sluice dags validate`)",
            broken.len(),
            broken.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
        );
    }
}

fn find<'b>(bag: &'b DagBag, dag_id: &str) -> anyhow::Result<&'b Arc<Dag>> {
    if let Some(dag) = bag.get(dag_id) {
        return Ok(dag);
    }
    warn_broken(bag);
    let known: Vec<&str> = bag.dags.keys().map(String::as_str).collect();
    Err(anyhow!(
        "DAG `{dag_id}` not found in {}; known DAGs: {}",
        bag.folder.display(),
        if known.is_empty() {
            "none".to_string()
        } else {
            known.join(", ")
        }
    ))
}

fn list(bag: &DagBag, as_json: bool) -> anyhow::Result<ExitCode> {
    if as_json {
        let items: Vec<_> = bag
            .dags
            .values()
            .map(|d| {
                json!({
                    "dag_id": d.dag_id,
                    "schedule": d.schedule.to_string(),
                    "timezone": d.timezone.name(),
                    "tasks": d.tasks.len(),
                    "file": d.file.display().to_string(),
                    "description": d.description,
                    "tags": d.tags,
                })
            })
            .collect();
        print_json(&items)?;
    } else {
        let mut table = Table::new(&["dag_id", "schedule", "tasks", "file"]);
        for d in bag.dags.values() {
            table.row(vec![
                d.dag_id.clone(),
                d.schedule.to_string(),
                d.tasks.len().to_string(),
                d.file.display().to_string(),
            ]);
        }
        if table.is_empty() {
            println!("no valid DAGs in {}", bag.folder.display());
        } else {
            print!("{}", table.render());
        }
    }
    warn_broken(bag);
    Ok(ExitCode::SUCCESS)
}

fn show(dag: &Dag, as_json: bool, places: &crate::retention::Places) -> anyhow::Result<ExitCode> {
    let disk = crate::retention::disk_usage(places, &dag.dag_id);
    let params = sluice_operator_api::secrets::with_keys_masked(&serde_json::Value::Object(
        dag.params.clone(),
    ));
    let upstream_ids = |t: &crate::dag::Task| {
        t.upstream
            .iter()
            .map(|&u| dag.tasks[u].id.clone())
            .collect::<Vec<_>>()
    };
    if as_json {
        let tasks: Vec<_> = dag
            .tasks
            .iter()
            .map(|t| {
                json!({
                    "task_id": t.id,
                    "operator": t.operator_name,
                    "depends_on": upstream_ids(t),
                    "trigger_rule": t.trigger_rule.as_str(),
                    "retries": t.retry.retries,
                    "retry_delay_secs": t.retry.delay.as_secs_f64(),
                    "retry_exponential_backoff": t.retry.exponential_backoff,
                    "max_retry_delay_secs": t.retry.max_delay.as_secs_f64(),
                    "execution_timeout_secs": t.execution_timeout.map(|d| d.as_secs_f64()),
                    "config": t.config,
                })
            })
            .collect();
        print_json(&json!({
            "dag_id": dag.dag_id,
            "file": dag.file.display().to_string(),
            "hash": dag.hash,
            "description": dag.description,
            "schedule": dag.schedule.to_string(),
            "timezone": dag.timezone.name(),
            "start_date": dag.start_date,
            "end_date": dag.end_date,
            "catchup": dag.catchup,
            "max_active_runs": dag.max_active_runs,
            "max_active_tasks": dag.max_active_tasks,
            "params": params,
            "tags": dag.tags,
            "tasks": tasks,
            "disk_usage": disk,
        }))?;
        return Ok(ExitCode::SUCCESS);
    }
    println!("{}  ({})", dag.dag_id, dag.file.display());
    if let Some(description) = &dag.description {
        println!("  {description}");
    }
    println!(
        "  schedule: {} ({}), catchup: {}",
        dag.schedule, dag.timezone, dag.catchup
    );
    println!(
        "  max_active_runs: {}, max_active_tasks: {}",
        dag.max_active_runs, dag.max_active_tasks
    );
    if !dag.params.is_empty() {
        println!("  params: {params}");
    }
    println!(
        "  disk: {} of try logs, {} of artifacts",
        human_bytes(disk.log_bytes),
        human_bytes(disk.artifact_bytes)
    );
    println!();
    let mut table = Table::new(&[
        "task",
        "operator",
        "trigger_rule",
        "retries",
        "timeout",
        "depends_on",
    ]);
    for t in &dag.tasks {
        table.row(vec![
            t.id.clone(),
            t.operator_name.clone(),
            t.trigger_rule.as_str().into(),
            t.retry.retries.to_string(),
            t.execution_timeout
                .map(|d| humantime::format_duration(d).to_string())
                .unwrap_or_else(|| "-".into()),
            upstream_ids(t).join(", "),
        ]);
    }
    print!("{}", table.render());
    Ok(ExitCode::SUCCESS)
}

fn validate(bag: &DagBag) -> ExitCode {
    for error in &bag.errors {
        println!("{error}");
    }
    let broken = bag.broken_files().len();
    if bag.errors.is_empty() {
        eprintln!(
            "{} DAG file(s), {} DAG(s): all valid",
            bag.files,
            bag.dags.len()
        );
        ExitCode::SUCCESS
    } else {
        eprintln!(
            "{} error(s) in {broken} of {} DAG file(s)",
            bag.errors.len(),
            bag.files
        );
        ExitCode::FAILURE
    }
}

fn print_progress(p: &Progress, started: Instant) {
    let elapsed = started.elapsed().as_secs_f64();
    let reason = p
        .reason
        .as_deref()
        .map(|r| format!("  ({r})"))
        .unwrap_or_default();
    println!(
        "[{elapsed:>7.3}s] {:<24} try {:<2} {:>15} -> {}{reason}",
        p.task_id,
        p.try_number,
        p.from.as_str(),
        p.to.as_str()
    );
}

async fn test(
    dag: Arc<Dag>,
    logical_date: Option<&str>,
    conf: Option<&str>,
    settings: &Settings,
) -> anyhow::Result<ExitCode> {
    let conf = super::trigger::parse_conf(conf)?;
    let interval = super::trigger::interval_for(&dag, logical_date)?;
    let now = Utc::now();
    let store = store::open(&settings.database_url).await?;
    let (run, start) = start_run(&store, &dag, interval, RunType::Manual, conf, now).await?;
    let run_id = run.run_id.clone();
    if start == Start::NewAttempt {
        println!(
            "run {run_id} already ran: starting attempt {} (tries continue, retries start afresh)",
            run.attempt
        );
    }
    println!("run {run_id} of {}: data interval {interval}", dag.dag_id);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let executor =
        Executor::new(store.clone(), settings, Arc::new(Connections::from_env())).with_observer(tx);
    let started = Instant::now();
    let printer = tokio::spawn(async move {
        while let Some(progress) = rx.recv().await {
            print_progress(&progress, started);
        }
    });
    let cancel = CancellationToken::new();
    let on_signal = cancel.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!(
                "interrupted: cancelling the run (running tries get {} to stop)",
                humantime::format_duration(crate::executor::STOP_GRACE)
            );
            on_signal.cancel();
        }
    });
    let result = executor.run(dag.clone(), &run_id, cancel).await;
    drop(executor);
    let _ = printer.await;
    let run = result?;
    let tis = store.task_instances(&dag.dag_id, &run_id).await?;
    println!();
    let mut table = Table::new(&["task", "state", "tries", "started", "ended", "log"]);
    for task in &dag.tasks {
        let Some(ti) = tis.iter().find(|ti| ti.task_id == task.id) else {
            continue;
        };
        let key = TaskKey {
            dag_id: dag.dag_id.clone(),
            run_id: run_id.clone(),
            task_id: task.id.clone(),
        };
        let log = if ti.try_number > 0 {
            try_log_path(&settings.logs_dir(), &key, ti.try_number)
                .display()
                .to_string()
        } else {
            "-".into()
        };
        table.row(vec![
            task.id.clone(),
            ti.state.to_string(),
            ti.try_number.to_string(),
            show_time(ti.started_at),
            show_time(ti.ended_at),
            log,
        ]);
    }
    print!("{}", table.render());
    println!(
        "\nrun {run_id}: {} in {:.2}s",
        run.state,
        started.elapsed().as_secs_f64()
    );
    for ti in tis.iter().filter(|ti| ti.error.is_some()) {
        println!(
            "  {}: {}",
            ti.task_id,
            ti.error.as_deref().unwrap_or_default()
        );
    }
    // The run's notifications are sent now (once each: a failed send is left in the outbox
    // for a scheduler to try again), as a scheduler would.
    let queued = store.notifications(&dag.dag_id, &run_id).await?;
    if !queued.is_empty() {
        let notifier =
            crate::notify::send::Notifier::new(store.clone(), Arc::new(Connections::from_env()));
        notifier.send_due_of(&dag.dag_id, &run_id).await?;
        for n in store.notifications(&dag.dag_id, &run_id).await? {
            let outcome = match (&n.sent_at, &n.last_error) {
                (Some(_), _) => "sent".to_string(),
                (None, Some(error)) => format!("not sent: {error}"),
                (None, None) => "queued".to_string(),
            };
            println!("  notification {} to {}: {outcome}", n.event, n.channel);
        }
    }
    Ok(if run.state == RunState::Success {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `12.3 MiB`-style sizes.
pub(crate) fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}
