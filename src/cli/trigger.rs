//! `sluice dags trigger|pause|unpause|backfill`: talking to a running scheduler through the
//! metadata store. These commands only record intent (a queued run, a paused flag); the
//! scheduler acts on it, and `--wait` follows the result.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use chrono::Utc;

use super::table::Table;
use crate::dag::Dag;
use crate::runs::{clear_run, start_run, Start};
use crate::schedule::{parse_instant, DataInterval};
use crate::settings::Settings;
use crate::state::{RunState, TaskState};
use crate::store::{self, DagRun, RunType, Store};

/// A scheduler that has not written a heartbeat for this long is presumed gone.
const HEARTBEAT_STALE: chrono::Duration = chrono::Duration::seconds(15);

/// Parses `--conf` as a JSON object.
pub fn parse_conf(conf: Option<&str>) -> anyhow::Result<serde_json::Value> {
    let conf: serde_json::Value = match conf {
        Some(text) => serde_json::from_str(text).context("--conf is not valid JSON")?,
        None => serde_json::json!({}),
    };
    if !conf.is_object() {
        bail!("--conf must be a JSON object, like '{{\"key\": \"value\"}}'");
    }
    Ok(conf)
}

/// The interval for `--logical-date`, or the latest complete one.
pub fn interval_for(dag: &Dag, logical_date: Option<&str>) -> anyhow::Result<DataInterval> {
    Ok(match logical_date {
        Some(text) => dag.interval_for(
            parse_instant(text, dag.timezone).map_err(|e| anyhow!("--logical-date: {e}"))?,
        ),
        None => dag.default_interval(Utc::now()),
    })
}

/// Whether a scheduler has written a heartbeat recently.
async fn scheduler_alive(store: &dyn Store) -> anyhow::Result<bool> {
    Ok(store
        .last_scheduler_heartbeat()
        .await?
        .is_some_and(|beat| beat.heartbeat_at > Utc::now() - HEARTBEAT_STALE))
}

const NO_SCHEDULER: &str = "no scheduler is running (no heartbeat in the metadata store for 15s): the run stays queued until \
`sluice scheduler` or `sluice standalone` starts; `sluice dags test` runs a DAG in this process instead";

/// Follows runs until they finish, with a one-line progress display; true if all succeeded.
async fn wait_for(store: &dyn Store, runs: &[(String, String)]) -> anyhow::Result<bool> {
    let started = Instant::now();
    let tty = std::io::stderr().is_terminal();
    let mut last = String::new();
    loop {
        let mut finished = Vec::new();
        let mut counts: BTreeMap<&'static str, usize> = BTreeMap::new();
        for (dag_id, run_id) in runs {
            let run = store
                .run(dag_id, run_id)
                .await?
                .ok_or_else(|| anyhow!("run {run_id} disappeared"))?;
            for ti in store.task_instances(dag_id, run_id).await? {
                let bucket = match ti.state {
                    TaskState::Success | TaskState::Skipped => "done",
                    TaskState::Failed | TaskState::UpstreamFailed | TaskState::Cancelled => {
                        "failed"
                    }
                    TaskState::Running => "running",
                    TaskState::UpForRetry => "retrying",
                    TaskState::Queued | TaskState::Pending => "waiting",
                };
                *counts.entry(bucket).or_default() += 1;
            }
            if run.state.is_finished() {
                finished.push(run);
            }
        }
        let tasks: Vec<String> = counts.iter().map(|(k, v)| format!("{v} {k}")).collect();
        let line = format!(
            "[{:>6.1}s] runs {}/{} finished; tasks: {}",
            started.elapsed().as_secs_f64(),
            finished.len(),
            runs.len(),
            tasks.join(", ")
        );
        if tty {
            eprint!("\r{line}\x1b[K");
            let _ = std::io::stderr().flush();
        } else if line.split(']').nth(1) != last.split(']').nth(1) {
            eprintln!("{line}");
        }
        last = line;
        if finished.len() == runs.len() {
            if tty {
                eprintln!();
            }
            for run in &finished {
                println!("{} / {}: {}", run.dag_id, run.run_id, run.state);
            }
            return Ok(finished.iter().all(|r| r.state == RunState::Success));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `dags trigger`.
pub async fn trigger(
    dag: Arc<Dag>,
    logical_date: Option<&str>,
    conf: Option<&str>,
    wait: bool,
    settings: &Settings,
) -> anyhow::Result<ExitCode> {
    let conf = parse_conf(conf)?;
    let interval = interval_for(&dag, logical_date)?;
    let store = store::open(&settings.database_url).await?;
    let alive = scheduler_alive(store.as_ref()).await?;
    if wait && !alive {
        bail!("{NO_SCHEDULER}");
    }
    let (run, start) = start_run(&store, &dag, interval, RunType::Manual, conf, Utc::now()).await?;
    match start {
        Start::Created => println!(
            "queued run {} of {} for data interval {interval}",
            run.run_id, dag.dag_id
        ),
        Start::NewAttempt => println!(
            "queued a new attempt of run {} of {} (data interval {interval})",
            run.run_id, dag.dag_id
        ),
    }
    if !alive {
        eprintln!("warning: {NO_SCHEDULER}");
    }
    if !wait {
        return Ok(ExitCode::SUCCESS);
    }
    let ok = wait_for(store.as_ref(), &[(dag.dag_id.clone(), run.run_id.clone())]).await?;
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `dags pause` / `dags unpause`.
pub async fn set_paused(dag: &Dag, paused: bool, settings: &Settings) -> anyhow::Result<ExitCode> {
    let store = store::open(&settings.database_url).await?;
    store.set_paused(&dag.dag_id, paused, Utc::now()).await?;
    if paused {
        println!(
            "{} paused: no new scheduled runs; runs already going finish",
            dag.dag_id
        );
    } else {
        println!("{} unpaused", dag.dag_id);
    }
    Ok(ExitCode::SUCCESS)
}

/// `dags backfill` arguments.
#[derive(Debug, clap::Args)]
pub struct BackfillArgs {
    /// The DAG id.
    pub dag_id: String,
    /// First logical date (RFC 3339 or YYYY-MM-DD in the DAG's timezone).
    #[arg(long)]
    pub start: String,
    /// Last logical date.
    #[arg(long)]
    pub end: String,
    /// Show the plan without queueing anything.
    #[arg(long)]
    pub dry_run: bool,
    /// Re-run intervals whose run failed or was cancelled (default: skip every existing run).
    #[arg(long)]
    pub rerun_failed: bool,
    /// Most runs of this backfill active at once (the DAG's max_active_runs still applies).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_active_runs: Option<u32>,
    /// Follow the runs until they all finish; exit 0 iff all succeeded.
    #[arg(long)]
    pub wait: bool,
}

/// Most intervals one backfill may plan.
const MAX_BACKFILL_RUNS: usize = 10_000;

/// `dags backfill`.
pub async fn backfill(
    dag: Arc<Dag>,
    args: &BackfillArgs,
    settings: &Settings,
) -> anyhow::Result<ExitCode> {
    let (start, end, dry_run, rerun_failed, max_active_runs, wait) = (
        &args.start,
        &args.end,
        args.dry_run,
        args.rerun_failed,
        args.max_active_runs,
        args.wait,
    );
    let from = parse_instant(start, dag.timezone).map_err(|e| anyhow!("--start: {e}"))?;
    let to = parse_instant(end, dag.timezone).map_err(|e| anyhow!("--end: {e}"))?;
    if to < from {
        bail!("--end is before --start");
    }
    if !matches!(dag.schedule, crate::schedule::Schedule::Cron { .. }) {
        bail!("DAG `{}` has no cron schedule ({}): backfill needs schedule intervals; use `dags trigger --logical-date`", dag.dag_id, dag.schedule);
    }
    let mut intervals = Vec::new();
    let mut next = Some(dag.interval_for(from))
        .filter(|i| i.start >= from)
        .or_else(|| {
            let start = dag.schedule.fire_after(dag.timezone, from)?;
            Some(DataInterval {
                start,
                end: dag.schedule.fire_after(dag.timezone, start)?,
            })
        });
    while let Some(interval) = next {
        if interval.start > to || intervals.len() >= MAX_BACKFILL_RUNS {
            break;
        }
        intervals.push(interval);
        next = dag
            .schedule
            .fire_after(dag.timezone, interval.end)
            .map(|end| DataInterval {
                start: interval.end,
                end,
            });
    }
    let store = store::open(&settings.database_url).await?;
    let mut plan: Vec<(DataInterval, Option<DagRun>)> = Vec::new();
    for interval in intervals {
        plan.push((
            interval,
            store.run_for_date(&dag.dag_id, interval.start).await?,
        ));
    }
    let action = |existing: &Option<DagRun>| match existing {
        None => "create".to_string(),
        Some(run)
            if rerun_failed && matches!(run.state, RunState::Failed | RunState::Cancelled) =>
        {
            format!("re-run ({})", run.state)
        }
        Some(run) => format!("skip (already {})", run.state),
    };
    let mut table = Table::new(&["logical_date", "data_interval_end", "action"]);
    for (interval, existing) in &plan {
        table.row(vec![
            interval.start.to_rfc3339(),
            interval.end.to_rfc3339(),
            action(existing),
        ]);
    }
    print!("{}", table.render());
    println!(
        "{} interval(s) from {} to {}",
        plan.len(),
        from.to_rfc3339(),
        to.to_rfc3339()
    );
    if dry_run {
        return Ok(ExitCode::SUCCESS);
    }
    let alive = scheduler_alive(store.as_ref()).await?;
    if wait && !alive {
        bail!("{NO_SCHEDULER}");
    }
    let now = Utc::now();
    let mut queued = Vec::new();
    for (interval, existing) in plan {
        match existing {
            None => {
                let mut run = crate::runs::new_run(
                    &dag,
                    interval,
                    RunType::Backfill,
                    serde_json::json!({}),
                    now,
                );
                run.backfill_max_active_runs = max_active_runs;
                match store.create_run(&run).await {
                    Ok(run) => queued.push((run.dag_id, run.run_id)),
                    // The scheduler created it meanwhile: it runs anyway.
                    Err(store::StoreError::RunExists { .. }) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            Some(run)
                if rerun_failed && matches!(run.state, RunState::Failed | RunState::Cancelled) =>
            {
                let run = clear_run(&store, &dag, &run, now).await?;
                queued.push((run.dag_id, run.run_id));
            }
            Some(_) => {}
        }
    }
    println!(
        "queued {} run(s); the scheduler runs them under max_active_runs = {}",
        queued.len(),
        dag.max_active_runs
    );
    if !alive {
        eprintln!("warning: {NO_SCHEDULER}");
    }
    if !wait || queued.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    let ok = wait_for(store.as_ref(), &queued).await?;
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
