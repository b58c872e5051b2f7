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
use crate::backfill::{self, BackfillRequest};
use crate::dag::Dag;
use crate::runs::{start_run_with_id, Start};
use crate::schedule::{parse_instant, DataInterval};
use crate::settings::Settings;
use crate::state::{RunState, TaskState};
use crate::store::{self, RunType, Store};

/// A scheduler that has not written a heartbeat for this long is presumed gone.
const HEARTBEAT_STALE: chrono::Duration = chrono::Duration::seconds(15);

/// Parses `--conf` as a JSON object.
pub fn parse_conf(conf: Option<&str>) -> anyhow::Result<serde_json::Value> {
    let conf: serde_json::Value = match conf {
        Some(text) => serde_json::from_str(text).context("--conf is not valid JSON")?,
        None => serde_json::json!({}),
    };
    crate::runs::check_conf(&conf).map_err(|e| anyhow::anyhow!("--conf: {e}"))?;
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

/// A run to follow.
struct RunRef {
    dag_id: String,
    run_id: String,
}

/// Follows runs until they finish, with a one-line progress display; true if all succeeded.
async fn wait_for(store: &dyn Store, runs: &[RunRef]) -> anyhow::Result<bool> {
    let started = Instant::now();
    let tty = std::io::stderr().is_terminal();
    let mut last = String::new();
    loop {
        let mut finished = Vec::new();
        let mut counts: BTreeMap<&'static str, usize> = BTreeMap::new();
        for RunRef { dag_id, run_id } in runs {
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
    run_id: Option<&str>,
    wait: bool,
    settings: &Settings,
) -> anyhow::Result<ExitCode> {
    if let Some(id) = run_id {
        crate::runs::check_run_id(id).map_err(|e| anyhow!("--run-id: {e}"))?;
    }
    let conf = parse_conf(conf)?;
    let interval = interval_for(&dag, logical_date)?;
    let store = store::open(&settings.database_url).await?;
    let alive = scheduler_alive(store.as_ref()).await?;
    if wait && !alive {
        bail!("{NO_SCHEDULER}");
    }
    let (run, start) = start_run_with_id(
        &store,
        &dag,
        interval,
        RunType::Manual,
        conf,
        crate::runs::Chosen { run_id, note: None },
        Utc::now(),
    )
    .await?;
    match start {
        Start::Created => println!(
            "queued run {} of {} for data interval {interval}",
            run.run_id, dag.dag_id
        ),
        Start::NewAttempt => println!(
            "queued attempt {} of run {} of {} (data interval {interval})",
            run.attempt, run.run_id, dag.dag_id
        ),
    }
    if !alive {
        eprintln!("warning: {NO_SCHEDULER}");
    }
    if !wait {
        return Ok(ExitCode::SUCCESS);
    }
    let target = RunRef {
        dag_id: dag.dag_id.clone(),
        run_id: run.run_id.clone(),
    };
    let ok = wait_for(store.as_ref(), &[target]).await?;
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

/// `dags backfill`: plans with [`backfill::plan`], prints the plan, queues it with
/// [`backfill::queue`] unless `--dry-run`, and follows the runs with `--wait`.
pub async fn backfill(
    dag: Arc<Dag>,
    args: &BackfillArgs,
    settings: &Settings,
) -> anyhow::Result<ExitCode> {
    let request = BackfillRequest {
        from: parse_instant(&args.start, dag.timezone).map_err(|e| anyhow!("--start: {e}"))?,
        to: parse_instant(&args.end, dag.timezone).map_err(|e| anyhow!("--end: {e}"))?,
        rerun_failed: args.rerun_failed,
        max_active_runs: args.max_active_runs,
    };
    let store = store::open(&settings.database_url).await?;
    let plan = backfill::plan(store.as_ref(), &dag, request).await?;
    let mut table = Table::new(&["logical_date", "data_interval_end", "action"]);
    for planned in &plan.runs {
        table.row(vec![
            planned.interval.start.to_rfc3339(),
            planned.interval.end.to_rfc3339(),
            planned.action.to_string(),
        ]);
    }
    print!("{}", table.render());
    println!(
        "{} interval(s) from {} to {}",
        plan.runs.len(),
        plan.request.from.to_rfc3339(),
        plan.request.to.to_rfc3339()
    );
    if args.dry_run {
        return Ok(ExitCode::SUCCESS);
    }
    let alive = scheduler_alive(store.as_ref()).await?;
    if args.wait && !alive {
        bail!("{NO_SCHEDULER}");
    }
    let queued = backfill::queue(&store, &dag, &plan, Utc::now()).await?;
    println!(
        "queued {} run(s); the scheduler runs them under max_active_runs = {}",
        queued.len(),
        dag.max_active_runs
    );
    if !alive {
        eprintln!("warning: {NO_SCHEDULER}");
    }
    if !args.wait || queued.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    let runs: Vec<RunRef> = queued
        .into_iter()
        .map(|q| RunRef {
            dag_id: q.dag_id,
            run_id: q.run_id,
        })
        .collect();
    let ok = wait_for(store.as_ref(), &runs).await?;
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `dags list-runs` arguments (Airflow's names).
#[derive(Debug, clap::Args)]
pub struct ListRunsArgs {
    /// The DAG id.
    pub dag_id: String,
    /// Only runs in this state (queued, running, success, failed, cancelled).
    #[arg(long)]
    pub state: Option<RunState>,
    /// Only runs whose logical date is at or after this (RFC 3339 or YYYY-MM-DD, UTC).
    #[arg(long)]
    pub start_date: Option<String>,
    /// Only runs whose logical date is at or before this.
    #[arg(long)]
    pub end_date: Option<String>,
    /// Leave backfill runs out.
    #[arg(long)]
    pub no_backfill: bool,
    /// How to print.
    #[arg(short, long, value_enum, default_value_t)]
    pub output: super::Output,
}

/// `dags list-runs`: the DAG's runs, newest logical date first, within the dates given.
pub async fn list_runs(args: &ListRunsArgs, settings: &Settings) -> anyhow::Result<ExitCode> {
    let bound =
        |text: &Option<String>, flag: &str| -> anyhow::Result<Option<chrono::DateTime<Utc>>> {
            text.as_deref()
                .map(|t| parse_instant(t, chrono_tz::UTC).map_err(|e| anyhow!("{flag}: {e}")))
                .transpose()
        };
    let from = bound(&args.start_date, "--start-date")?;
    let to = bound(&args.end_date, "--end-date")?;
    let store = store::open(&settings.database_url).await?;
    let mut runs = Vec::new();
    // Pages of the store's listing (newest logical date first) until past --start-date.
    const PAGE: u32 = 500;
    let mut offset = 0;
    'pages: loop {
        let page = store
            .list_runs(&store::RunFilter {
                dag_id: Some(args.dag_id.clone()),
                run_id: None,
                state: args.state,
                limit: PAGE,
                offset,
                ..Default::default()
            })
            .await?;
        let last = page.len() < PAGE as usize;
        for run in page {
            if from.is_some_and(|from| run.logical_date < from) {
                break 'pages;
            }
            let in_range = to.is_none_or(|to| run.logical_date <= to);
            if in_range && !(args.no_backfill && run.run_type == RunType::Backfill) {
                runs.push(run);
            }
        }
        if last {
            break;
        }
        offset += PAGE;
    }
    for run in &mut runs {
        run.conf = sluice_operator_api::secrets::with_keys_masked(&run.conf);
    }
    let time = |t: Option<chrono::DateTime<Utc>>| super::show_time(t);
    match args.output {
        super::Output::Json => {
            let items: Vec<_> = runs
                .iter()
                .map(|r| {
                    serde_json::json!({
                        "dag_id": r.dag_id,
                        "run_id": r.run_id,
                        "state": r.state.as_str(),
                        "run_type": r.run_type.as_str(),
                        "logical_date": r.logical_date,
                        "data_interval_start": r.data_interval_start,
                        "data_interval_end": r.data_interval_end,
                        "start_date": r.started_at,
                        "end_date": r.ended_at,
                        "attempt": r.attempt,
                        "conf": r.conf,
                    })
                })
                .collect();
            super::print_json(&items)?;
        }
        super::Output::Plain => {
            for r in &runs {
                println!(
                    "{}\t{}\t{}\t{}",
                    r.run_id,
                    r.state,
                    time(Some(r.logical_date)),
                    r.run_type.as_str()
                );
            }
        }
        super::Output::Table => {
            if runs.is_empty() {
                println!("no runs of {}", args.dag_id);
                return Ok(ExitCode::SUCCESS);
            }
            let mut table = Table::new(&[
                "run_id",
                "state",
                "logical_date",
                "type",
                "start_date",
                "end_date",
            ]);
            for r in &runs {
                table.row(vec![
                    r.run_id.clone(),
                    r.state.to_string(),
                    time(Some(r.logical_date)),
                    r.run_type.as_str().into(),
                    time(r.started_at),
                    time(r.ended_at),
                ]);
            }
            print!("{}", table.render());
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `dags next-execution`: the schedule's next `n` fire times after `after` (default now),
/// none before the end of the first interval from the DAG's start date, none past its end date.
pub fn next_execution(
    dag: &Dag,
    n: u32,
    after: Option<&str>,
    output: super::Output,
) -> anyhow::Result<ExitCode> {
    let after = match after {
        Some(text) => parse_instant(text, dag.timezone).map_err(|e| anyhow!("--after: {e}"))?,
        None => Utc::now(),
    };
    let fires: Vec<chrono::DateTime<Utc>> = match &dag.schedule {
        crate::schedule::Schedule::Manual => {
            println!(
                "{} has no schedule (manual runs only): no next execution",
                dag.dag_id
            );
            return Ok(ExitCode::SUCCESS);
        }
        crate::schedule::Schedule::Once => {
            // Its one run is for its start date.
            dag.start_date
                .filter(|&start| start > after)
                .into_iter()
                .collect()
        }
        schedule => {
            // The scheduler runs the intervals that start at or after the DAG's start date:
            // the first fire that counts ends the first such interval.
            let first_start = dag.start_date.and_then(|start| {
                if schedule.fire_at_or_before(dag.timezone, start) == Some(start) {
                    Some(start)
                } else {
                    schedule.fire_after(dag.timezone, start)
                }
            });
            let after = first_start.map_or(after, |first| first.max(after));
            schedule
                .next_fire_times(dag.timezone, after, n as usize)
                .into_iter()
                .take_while(|&fire| dag.end_date.is_none_or(|end| fire <= end))
                .collect()
        }
    };
    let local = |t: &chrono::DateTime<Utc>| {
        t.with_timezone(&dag.timezone)
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    };
    let utc = |t: &chrono::DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    match output {
        super::Output::Json => {
            let items: Vec<_> = fires
                .iter()
                .map(|t| serde_json::json!({"fire_time": local(t), "fire_time_utc": utc(t), "timezone": dag.timezone.name()}))
                .collect();
            super::print_json(&items)?;
        }
        super::Output::Plain | super::Output::Table => {
            if fires.is_empty() {
                println!(
                    "{} ({}) fires no more{}",
                    dag.dag_id,
                    dag.schedule,
                    dag.end_date
                        .map(|end| format!(" (end date {})", utc(&end)))
                        .unwrap_or_default()
                );
            }
            for t in &fires {
                if output == super::Output::Plain {
                    println!("{}", local(t));
                } else {
                    println!("{}  ({} UTC)", local(t), utc(t));
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
