//! Pure scheduling decisions: which intervals need a run now, and which queued runs may
//! start. Nothing here reads a clock or a store; the scheduler passes both in.

use chrono::{DateTime, Duration, Utc};

use crate::dag::Dag;
use crate::schedule::{DataInterval, Schedule};
use crate::state::RunState;
use crate::store::{DagRun, RunType};

/// Most runs created for one DAG in one pass, so a long-missed catchup arrives in steps.
pub const MAX_RUNS_PER_PASS: usize = 1000;

fn within_dates(dag: &Dag, interval: &DataInterval) -> bool {
    dag.start_date.is_none_or(|s| interval.start >= s)
        && dag.end_date.is_none_or(|e| interval.start <= e)
}

/// The intervals that need a scheduled run at `now`, oldest first, given the logical date
/// of the DAG's latest scheduled run. With `catchup`, every complete interval since the
/// latest run (or the start date); without it, only the latest complete interval.
pub fn due_intervals(
    dag: &Dag,
    latest: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Vec<DataInterval> {
    match &dag.schedule {
        Schedule::Manual => Vec::new(),
        Schedule::Once => match (latest, dag.start_date) {
            (None, Some(start)) if start <= now => vec![DataInterval { start, end: start }],
            _ => Vec::new(),
        },
        Schedule::Cron { .. } => {
            let Some(newest) = dag.schedule.latest_complete_interval(dag.timezone, now) else {
                return Vec::new();
            };
            let after_latest = |i: &DataInterval| latest.is_none_or(|l| i.start > l);
            if !dag.catchup {
                return [newest]
                    .into_iter()
                    .filter(|i| after_latest(i) && within_dates(dag, i))
                    .collect();
            }
            let first = match (latest, dag.start_date) {
                (Some(l), _) => l + Duration::seconds(1),
                (None, Some(start)) => start,
                (None, None) => newest.start,
            };
            dag.schedule
                .intervals_from(dag.timezone, first)
                .take_while(|i| i.end <= now && dag.end_date.is_none_or(|e| i.start <= e))
                .filter(|i| within_dates(dag, i) && after_latest(i))
                .take(MAX_RUNS_PER_PASS)
                .collect()
        }
    }
}

/// When the scheduler should look at this DAG again: when its next interval ends.
pub fn next_check(dag: &Dag, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    match &dag.schedule {
        Schedule::Cron { .. } => dag.schedule.fire_after(dag.timezone, now),
        Schedule::Once => dag.start_date.filter(|s| *s > now),
        Schedule::Manual => None,
    }
}

/// Which of a DAG's queued runs may start now under `max_active_runs`: scheduled and manual
/// runs before backfill runs (a long backfill never starves the live schedule), each oldest
/// logical date first. `runs` are the DAG's active (queued or running) runs.
pub fn runs_to_start(runs: &[DagRun], max_active_runs: u32) -> Vec<&DagRun> {
    let is_backfill = |r: &DagRun| r.run_type == RunType::Backfill;
    let mut running = runs.iter().filter(|r| r.state == RunState::Running).count();
    let mut backfills_running = runs
        .iter()
        .filter(|r| r.state == RunState::Running && is_backfill(r))
        .count();
    let mut queued: Vec<&DagRun> = runs
        .iter()
        .filter(|r| r.state == RunState::Queued)
        .collect();
    queued.sort_by_key(|r| (is_backfill(r), r.logical_date, r.run_id.clone()));
    let mut start = Vec::new();
    for run in queued {
        if running >= max_active_runs as usize {
            break;
        }
        if is_backfill(run) {
            // a backfill's own cap (`--max-active-runs`) counts the DAG's running backfill runs
            if run
                .backfill_max_active_runs
                .is_some_and(|cap| backfills_running >= cap as usize)
            {
                continue;
            }
            backfills_running += 1;
        }
        running += 1;
        start.push(run);
    }
    start
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;

/// When `run` misses the DAG's SLA: its data interval's end plus `sla` (none without one).
/// Only scheduled runs have one, as in Airflow: a manual run or a backfill of an old window
/// is not late.
pub fn sla_deadline(dag: &Dag, run: &DagRun) -> Option<DateTime<Utc>> {
    if run.run_type != RunType::Scheduled {
        return None;
    }
    let sla = Duration::from_std(dag.sla?).ok()?;
    run.data_interval_end.checked_add_signed(sla)
}

/// The runs of `runs` (a DAG's) that are still unfinished past their SLA at `now` and were
/// not found so before.
pub fn sla_misses<'a>(dag: &Dag, runs: &'a [DagRun], now: DateTime<Utc>) -> Vec<&'a DagRun> {
    runs.iter()
        .filter(|r| !r.state.is_finished() && r.sla_missed_at.is_none())
        .filter(|r| sla_deadline(dag, r).is_some_and(|deadline| now >= deadline))
        .collect()
}
