//! `sluice runs …` and `sluice tasks …`: what happened, from the metadata store.

use std::process::ExitCode;

use anyhow::{anyhow, bail};
use clap::Subcommand;
use serde_json::json;

use super::table::Table;
use super::{print_json, show_time};
use sluice_operator_api::Registry;

use crate::settings::Settings;
use crate::state::RunState;
use crate::store::{self, DagRun, RunFilter, Store, TaskKey};
use crate::trylog::try_log_path;

/// `sluice runs` subcommands.
#[derive(Debug, Subcommand)]
pub enum RunsCommand {
    /// List runs, newest logical date first.
    List {
        /// Only runs of this DAG.
        #[arg(long)]
        dag: Option<String>,
        /// Only runs in this state (queued, running, success, failed, cancelled).
        #[arg(long)]
        state: Option<RunState>,
        /// Most runs to list.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one run with its task instances and state history.
    Show {
        /// The run id.
        run_id: String,
        /// The DAG (needed when several DAGs have a run with this id).
        #[arg(long)]
        dag: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Stop a run: its running tries are stopped (each process group gets its grace period),
    /// what has not started is cancelled, and the run ends cancelled (or failed with
    /// `--failed`). The history names who stopped it.
    Stop {
        /// The run id.
        run_id: String,
        /// The DAG (needed when several DAGs have a run with this id).
        #[arg(long)]
        dag: Option<String>,
        /// End the run `failed` rather than `cancelled`.
        #[arg(long)]
        failed: bool,
        /// Return at once rather than waiting until the run has ended.
        #[arg(long)]
        no_wait: bool,
    },
    /// Show how the DAG version a run executes differs from the DAG file (and its SQL files)
    /// in the folder now, as a unified diff; nothing when they are the same.
    Diff {
        /// The run id.
        run_id: String,
        /// The DAG (needed when several DAGs have a run with this id).
        #[arg(long)]
        dag: Option<String>,
    },
}

/// `sluice tasks` subcommands.
#[derive(Debug, Subcommand)]
pub enum TasksCommand {
    /// List a DAG's tasks (in the DAG's order), or as a tree with --tree.
    List(super::tasks::ListArgs),
    /// Run one task once in this process, its log on stdout, recording nothing; exit 0 iff it succeeded.
    ///
    /// No state, no delivery ledger: its log and artifacts go to `$SLUICE_HOME/tasks-test`.
    /// It sees the upstream outputs of the run for that logical date, if there is one.
    Test(super::tasks::TestArgs),
    /// Each task instance of a run with its state, try and times.
    StatesForDagRun(super::tasks::StatesArgs),
    /// Clear a task of a finished run (and optionally its downstream tasks) so the scheduler
    /// runs it again as a new try; the run is queued again.
    Clear {
        /// The DAG id.
        dag_id: String,
        /// The run id.
        run_id: String,
        /// The task id.
        task_id: String,
        /// Also clear every task downstream of it.
        #[arg(long)]
        downstream: bool,
    },
    /// Stop one task instance of a running run: its running try is stopped (its process group
    /// gets its grace period) and fails without a retry; a task that has not started is
    /// cancelled. The run goes on as its trigger rules say.
    Stop {
        /// The DAG id.
        dag_id: String,
        /// The run id.
        run_id: String,
        /// The task id.
        task_id: String,
        /// Return at once rather than waiting until the task has ended.
        #[arg(long)]
        no_wait: bool,
    },
    /// Print the log of one try of a task (the latest try by default).
    Logs {
        /// The DAG id.
        dag_id: String,
        /// The run id.
        run_id: String,
        /// The task id.
        task_id: String,
        /// Which try (from 1).
        #[arg(long = "try")]
        try_number: Option<u32>,
    },
    /// Show the delivery ledger of an item-by-item task (http_webhook's for_each): how many
    /// items were delivered and which failed, with their last error.
    Deliveries {
        /// The DAG id.
        dag_id: String,
        /// The run id.
        run_id: String,
        /// The task id.
        task_id: String,
        /// Which attempt of the run (default: the current one).
        #[arg(long)]
        attempt: Option<u32>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Runs a `runs` subcommand.
pub async fn run(
    cmd: RunsCommand,
    settings: &Settings,
    registry: &Registry,
) -> anyhow::Result<ExitCode> {
    let store = store::open(&settings.database_url).await?;
    match cmd {
        RunsCommand::List {
            dag,
            state,
            limit,
            json,
        } => {
            let runs = store
                .list_runs(&RunFilter {
                    dag_id: dag,
                    run_id: None,
                    state,
                    limit,
                    offset: 0,
                    ..Default::default()
                })
                .await?;
            let runs: Vec<_> = runs
                .into_iter()
                .map(|mut run| {
                    run.conf = sluice_operator_api::secrets::with_keys_masked(&run.conf);
                    run
                })
                .collect();
            if json {
                print_json(&runs)?;
            } else if runs.is_empty() {
                println!("no runs");
            } else {
                let mut table = Table::new(&[
                    "dag_id",
                    "run_id",
                    "state",
                    "type",
                    "data_interval",
                    "started",
                    "ended",
                ]);
                for r in &runs {
                    table.row(vec![
                        r.dag_id.clone(),
                        r.run_id.clone(),
                        r.state.to_string(),
                        r.run_type.as_str().into(),
                        r.interval().to_string(),
                        show_time(r.started_at),
                        show_time(r.ended_at),
                    ]);
                }
                print!("{}", table.render());
            }
            Ok(ExitCode::SUCCESS)
        }
        RunsCommand::Show { run_id, dag, json } => show(store.as_ref(), &run_id, dag, json).await,
        RunsCommand::Diff { run_id, dag } => {
            diff(store.as_ref(), settings, registry, &run_id, dag).await
        }
        RunsCommand::Stop {
            run_id,
            dag,
            failed,
            no_wait,
        } => {
            let run = find_run(store.as_ref(), &run_id, dag).await?;
            let ends = if failed {
                RunState::Failed
            } else {
                RunState::Cancelled
            };
            let stop =
                crate::runs::stop_run(&store, &run, ends, &cli_user(), chrono::Utc::now()).await?;
            if let crate::runs::Stop::Done(run) = stop {
                println!("run {} had not started: {}", run.run_id, run.state);
                return Ok(ExitCode::SUCCESS);
            }
            eprintln!("asked the run's scheduler to stop run {}", run.run_id);
            if no_wait {
                return Ok(ExitCode::SUCCESS);
            }
            let ended = wait_until(|| async {
                let now = store.run(&run.dag_id, &run.run_id).await?;
                Ok(now
                    .filter(|r| r.state.is_finished())
                    .map(|r| r.state.to_string()))
            })
            .await?;
            println!("run {} {ended}", run.run_id);
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Who runs this command, for the history of what it changes: `cli:<user>@<host>`.
fn cli_user() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into());
    format!("cli:{user}@{}", crate::executor::hostname())
}

/// Polls `ended` until it answers, printing a note while it takes long: the driver acts within
/// a second and a stopped try has its grace period (a few seconds) to end.
async fn wait_until<F, Fut>(ended: F) -> anyhow::Result<String>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<String>>>,
{
    let began = std::time::Instant::now();
    let mut noted = false;
    loop {
        if let Some(state) = ended().await? {
            return Ok(state);
        }
        if !noted && began.elapsed() > std::time::Duration::from_secs(15) {
            eprintln!("still waiting: is a scheduler driving the run? (Ctrl-C leaves the request in place)");
            noted = true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

async fn diff(
    store: &dyn Store,
    settings: &Settings,
    registry: &Registry,
    run_id: &str,
    dag: Option<String>,
) -> anyhow::Result<ExitCode> {
    let run = find_run(store, run_id, dag).await?;
    let stored = store
        .dag_version(&run.dag_id, &run.dag_hash)
        .await?
        .ok_or_else(|| {
            anyhow!(
                "the run's DAG version {} is not stored (the run predates DAG versions)",
                run.dag_hash
            )
        })?;
    let source: crate::dag::DagSource = serde_json::from_value(stored.source)?;
    let bag = crate::dag::DagBag::load(&settings.dags_folder, registry);
    let Some(current) = bag.get(&run.dag_id) else {
        bail!(
            "DAG `{}` is not loaded from {} now: nothing to compare the run's version {} with",
            run.dag_id,
            settings.dags_folder.display(),
            run.dag_hash
        );
    };
    if current.hash == stored.hash {
        eprintln!(
            "the run executes the DAG version in the folder now ({})",
            current.hash
        );
    } else {
        eprintln!(
            "the run executes version {}; the folder now holds version {}",
            stored.hash, current.hash
        );
        print!(
            "{}",
            source.masked().diff(&current.source.masked(), &stored.file)
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn find_run(store: &dyn Store, run_id: &str, dag: Option<String>) -> anyhow::Result<DagRun> {
    let mut runs = store
        .list_runs(&RunFilter {
            dag_id: dag.clone(),
            run_id: Some(run_id.to_string()),
            state: None,
            limit: 10,
            offset: 0,
            ..Default::default()
        })
        .await?;
    match runs.len() {
        0 => Err(anyhow!(
            "no run `{run_id}`{}",
            dag.map(|d| format!(" for DAG `{d}`")).unwrap_or_default()
        )),
        1 => Ok(runs.remove(0)),
        _ => {
            let dags: Vec<String> = runs.iter().map(|r| r.dag_id.clone()).collect();
            bail!(
                "several DAGs have a run `{run_id}` ({}); pass --dag",
                dags.join(", ")
            )
        }
    }
}

async fn show(
    store: &dyn Store,
    run_id: &str,
    dag: Option<String>,
    as_json: bool,
) -> anyhow::Result<ExitCode> {
    let run = find_run(store, run_id, dag).await?;
    let tis = store.task_instances(&run.dag_id, &run.run_id).await?;
    let history = store.history(&run.dag_id, &run.run_id).await?;
    let mut run = run;
    run.conf = sluice_operator_api::secrets::with_keys_masked(&run.conf);
    let mut attempts = store.attempts(&run.dag_id, &run.run_id).await?;
    for attempt in &mut attempts {
        attempt.conf = sluice_operator_api::secrets::with_keys_masked(&attempt.conf);
    }
    let notifications: Vec<serde_json::Value> = store
        .notifications(&run.dag_id, &run.run_id)
        .await?
        .iter()
        .map(notification_json)
        .collect();
    if as_json {
        print_json(
            &json!({ "run": run, "attempts": attempts, "task_instances": tis, "history": history, "notifications": notifications }),
        )?;
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{} / {}: {} ({}, attempt {})",
        run.dag_id,
        run.run_id,
        run.state,
        run.run_type.as_str(),
        run.attempt
    );
    println!("  data interval {}", run.interval());
    println!(
        "  started {}, ended {}, DAG version {}",
        show_time(run.started_at),
        show_time(run.ended_at),
        run.dag_hash
    );
    if run.conf.as_object().is_some_and(|c| !c.is_empty()) {
        println!("  conf {}", run.conf);
    }
    println!();
    let mut table = Table::new(&["task", "state", "tries", "started", "ended", "error"]);
    for ti in &tis {
        table.row(vec![
            ti.task_id.clone(),
            ti.state.to_string(),
            format!("{}/{}", ti.try_number, ti.max_tries),
            show_time(ti.started_at),
            show_time(ti.ended_at),
            ti.error.clone().unwrap_or_default(),
        ]);
    }
    print!("{}", table.render());
    if attempts.len() > 1 {
        println!("\nattempts:");
        let mut table = Table::new(&["attempt", "state", "queued", "started", "ended", "conf"]);
        for a in &attempts {
            table.row(vec![
                a.attempt.to_string(),
                a.state.to_string(),
                show_time(Some(a.queued_at)),
                show_time(a.started_at),
                show_time(a.ended_at),
                a.conf.to_string(),
            ]);
        }
        print!("{}", table.render());
    }
    if !notifications.is_empty() {
        println!("\nnotifications:");
        let mut table = Table::new(&["event", "channel", "attempts", "sent", "last error"]);
        for n in &notifications {
            table.row(vec![
                n["event"].as_str().unwrap_or_default().to_string(),
                n["channel"].as_str().unwrap_or_default().to_string(),
                n["attempts"].to_string(),
                n["sent_at"].as_str().unwrap_or("-").to_string(),
                n["last_error"].as_str().unwrap_or_default().to_string(),
            ]);
        }
        print!("{}", table.render());
    }
    println!("\nhistory:");
    for change in &history {
        let reason = change
            .reason
            .as_deref()
            .map(|r| format!("  ({r})"))
            .unwrap_or_default();
        println!(
            "  {}  {:<24} try {:<2} {:>15} -> {}{reason}",
            change
                .at
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            change.task_id,
            change.try_number,
            change.from.as_str(),
            change.to.as_str()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// A notification as `runs show` and the API show it: what, where, and how sending went.
pub fn notification_json(n: &crate::notify::Notification) -> serde_json::Value {
    json!({
        "id": n.id,
        "event": n.event,
        "channel": n.channel,
        "attempts": n.attempts,
        "created_at": n.created_at,
        "sent_at": n.sent_at,
        "gave_up_at": n.gave_up_at,
        "next_at": (n.sent_at.is_none() && n.gave_up_at.is_none()).then_some(n.next_at),
        "last_error": n.last_error,
    })
}

/// Runs a `tasks` subcommand.
pub async fn run_tasks(
    cmd: TasksCommand,
    settings: &Settings,
    registry: &Registry,
) -> anyhow::Result<ExitCode> {
    let (dag_id, run_id, task_id, try_number) = match cmd {
        TasksCommand::List(args) => return super::tasks::list(&args, settings, registry),
        TasksCommand::Test(args) => return super::tasks::test(&args, settings, registry).await,
        TasksCommand::StatesForDagRun(args) => return super::tasks::states(&args, settings).await,
        TasksCommand::Clear {
            dag_id,
            run_id,
            task_id,
            downstream,
        } => return clear(settings, registry, &dag_id, &run_id, &task_id, downstream).await,
        TasksCommand::Deliveries {
            dag_id,
            run_id,
            task_id,
            attempt,
            json,
        } => {
            let store = store::open(&settings.database_url).await?;
            let key = TaskKey {
                dag_id,
                run_id,
                task_id,
            };
            return deliveries(store.as_ref(), &key, attempt, json).await;
        }
        TasksCommand::Logs {
            dag_id,
            run_id,
            task_id,
            try_number,
        } => (dag_id, run_id, task_id, try_number),
        TasksCommand::Stop {
            dag_id,
            run_id,
            task_id,
            no_wait,
        } => {
            let store = store::open(&settings.database_url).await?;
            let run = store
                .run(&dag_id, &run_id)
                .await?
                .ok_or_else(|| anyhow!("no run `{run_id}` for DAG `{dag_id}`"))?;
            crate::runs::stop_task(&store, &run, &task_id, &cli_user(), chrono::Utc::now()).await?;
            eprintln!("asked the run's scheduler to stop task {task_id} of run {run_id}");
            if no_wait {
                return Ok(ExitCode::SUCCESS);
            }
            let ended = wait_until(|| async {
                let tis = store.task_instances(&dag_id, &run_id).await?;
                Ok(tis
                    .into_iter()
                    .find(|ti| ti.task_id == task_id)
                    .filter(|ti| ti.state.is_finished())
                    .map(|ti| ti.state.to_string()))
            })
            .await?;
            println!("task {task_id} {ended}");
            return Ok(ExitCode::SUCCESS);
        }
    };
    let store = store::open(&settings.database_url).await?;
    let tis = store.task_instances(&dag_id, &run_id).await?;
    if tis.is_empty() {
        bail!("no run `{run_id}` for DAG `{dag_id}`");
    }
    let Some(ti) = tis.iter().find(|ti| ti.task_id == task_id) else {
        let ids: Vec<&str> = tis.iter().map(|ti| ti.task_id.as_str()).collect();
        bail!(
            "run `{run_id}` has no task `{task_id}`; its tasks: {}",
            ids.join(", ")
        );
    };
    if ti.try_number == 0 {
        bail!("task `{task_id}` has not run yet (state {})", ti.state);
    }
    let number = try_number.unwrap_or(ti.try_number);
    if number == 0 || number > ti.try_number {
        bail!(
            "task `{task_id}` has tries 1 to {}; there is no try {number}",
            ti.try_number
        );
    }
    let key = TaskKey {
        dag_id,
        run_id,
        task_id,
    };
    let path = try_log_path(&settings.logs_dir(), &key, number);
    // Streamed to stdout: a log of any size takes a buffer's worth of memory.
    match std::fs::File::open(&path) {
        Ok(mut file) => {
            std::io::copy(&mut file, &mut std::io::stdout().lock())
                .map_err(|e| anyhow!("cannot read {}: {e}", path.display()))?;
        }
        Err(_) => {
            // Not run on this machine: from shared storage (in chunks), or the note of a try
            // that wrote no log.
            let places = crate::retention::Places::of(settings)?;
            let mut offset = 0;
            loop {
                let chunk =
                    crate::storage::logs::read_range(&places, &key, number, Some(offset), 1 << 20)
                        .await?;
                print!("{}", chunk.content);
                if chunk.next_offset >= chunk.size {
                    break;
                }
                offset = chunk.next_offset;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `tasks deliveries`.
async fn deliveries(
    store: &dyn Store,
    key: &TaskKey,
    attempt: Option<u32>,
    as_json: bool,
) -> anyhow::Result<ExitCode> {
    let run = store
        .run(&key.dag_id, &key.run_id)
        .await?
        .ok_or_else(|| anyhow!("no run `{}` for DAG `{}`", key.run_id, key.dag_id))?;
    let attempt = attempt.unwrap_or(run.attempt);
    let items = store.deliveries(key, attempt).await?;
    let delivered = items.iter().filter(|d| d.delivered).count();
    let failed: Vec<_> = items.iter().filter(|d| !d.delivered).collect();
    if as_json {
        print_json(&json!({
            "attempt": attempt,
            "delivered": delivered,
            "failed": failed.len(),
            "failed_items": failed,
        }))?;
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{key}, attempt {attempt}: {delivered} delivered, {} failed",
        failed.len()
    );
    if !failed.is_empty() {
        let mut table = Table::new(&["item", "requests", "last error", "at"]);
        for d in failed {
            table.row(vec![
                d.item.clone(),
                d.attempts.to_string(),
                d.detail.clone().unwrap_or_default(),
                show_time(Some(d.updated_at)),
            ]);
        }
        print!("{}", table.render());
    }
    Ok(ExitCode::SUCCESS)
}

async fn clear(
    settings: &Settings,
    registry: &Registry,
    dag_id: &str,
    run_id: &str,
    task_id: &str,
    downstream: bool,
) -> anyhow::Result<ExitCode> {
    let bag = crate::dag::DagBag::load(&settings.dags_folder, registry);
    let dag = bag
        .get(dag_id)
        .ok_or_else(|| {
            anyhow!(
                "DAG `{dag_id}` not found in {}",
                settings.dags_folder.display()
            )
        })?
        .clone();
    let ids = dag
        .tasks_to_clear(&[task_id.to_string()], downstream)
        .map_err(|id| anyhow!("DAG `{dag_id}` has no task `{id}`"))?;
    let store = store::open(&settings.database_url).await?;
    let run = store
        .run(dag_id, run_id)
        .await?
        .ok_or_else(|| anyhow!("no run `{run_id}` for DAG `{dag_id}`"))?;
    let (_, cleared) =
        crate::runs::clear_tasks(&store, &dag, &run, &ids, None, chrono::Utc::now()).await?;
    let cleared: Vec<String> = cleared
        .iter()
        .map(|c| format!("{} (was {})", c.task_id, c.previous_state))
        .collect();
    println!(
        "cleared {}; run {run_id} is queued for the scheduler",
        cleared.join(", ")
    );
    Ok(ExitCode::SUCCESS)
}
