//! Backfill: one run per schedule interval of a date range, like Airflow's backfill job.
//!
//! Three steps, each usable alone: [`intervals`] lists the schedule intervals starting in
//! the range (pure), [`plan`] looks up each interval's existing run and decides what to do
//! with it ([`decide`] is the pure rule), and [`queue`] writes the plan to the store. The
//! scheduler then starts the queued runs under the DAG's `max_active_runs` and the
//! backfill's own cap, after scheduled and manual runs. The CLI (`dags backfill`) and the
//! API (`POST /api/v1/dags/{dag_id}/backfills`) only translate to and from these calls.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::dag::Dag;
use crate::runs::{clear_run, new_run, StartError};
use crate::schedule::{DataInterval, Schedule};
use crate::state::RunState;
use crate::store::{DagRun, RunType, Store, StoreError};

/// Most intervals one backfill may plan.
pub const MAX_BACKFILL_RUNS: usize = 10_000;

/// What a backfill covers and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackfillRequest {
    /// First logical date: intervals starting at or after it are included.
    pub from: DateTime<Utc>,
    /// Last logical date: intervals starting at or before it are included.
    pub to: DateTime<Utc>,
    /// Re-run intervals whose run failed or was cancelled (otherwise every existing run is skipped).
    pub rerun_failed: bool,
    /// Most runs of the DAG's backfills active at once (the DAG's `max_active_runs` still applies).
    pub max_active_runs: Option<u32>,
}

/// Why a backfill cannot be planned or queued.
#[derive(Debug, thiserror::Error)]
pub enum BackfillError {
    /// The DAG has no cron schedule, so it has no intervals to fill.
    #[error("DAG `{dag_id}` has no cron schedule ({schedule}): backfill needs schedule intervals; trigger runs with a logical date instead")]
    NoSchedule {
        /// The DAG.
        dag_id: String,
        /// Its schedule as written.
        schedule: String,
    },
    /// The range is empty the wrong way round.
    #[error("the backfill's end ({to}) is before its start ({from})")]
    EndBeforeStart {
        /// First logical date.
        from: DateTime<Utc>,
        /// Last logical date.
        to: DateTime<Utc>,
    },
    /// The range holds more intervals than one backfill may queue.
    #[error(
        "the range holds more than {MAX_BACKFILL_RUNS} intervals; split it into several backfills"
    )]
    TooManyIntervals,
    /// A backfill cap of 0 would never start anything.
    #[error("max_active_runs must be at least 1")]
    ZeroMaxActiveRuns,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A failed run could not be cleared for a new attempt.
    #[error(transparent)]
    Start(#[from] StartError),
}

/// What a backfill does with one interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// No run covers the interval: create one.
    Create,
    /// The interval's run failed or was cancelled and `rerun_failed` is set: a new attempt.
    Rerun {
        /// The run's state before.
        state: RunState,
    },
    /// The interval has a run that stays as it is.
    Skip {
        /// The run's state.
        state: RunState,
    },
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Action::Create => f.write_str("create"),
            Action::Rerun { state } => write!(f, "re-run ({state})"),
            Action::Skip { state } => write!(f, "skip (already {state})"),
        }
    }
}

/// One interval of a backfill and what happens to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlannedRun {
    /// The interval; its start is the run's logical date.
    pub interval: DataInterval,
    /// The run that covers it already, if any.
    pub existing_run_id: Option<String>,
    /// What the backfill does.
    #[serde(flatten)]
    pub action: Action,
}

/// A backfill's plan: every interval of the range with its action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackfillPlan {
    /// The DAG.
    pub dag_id: String,
    /// What was asked.
    pub request: BackfillRequest,
    /// Every interval, oldest first.
    pub runs: Vec<PlannedRun>,
}

impl BackfillPlan {
    /// How many runs the plan creates or re-runs.
    pub fn to_queue(&self) -> usize {
        self.runs
            .iter()
            .filter(|r| !matches!(r.action, Action::Skip { .. }))
            .count()
    }
}

/// A run a backfill queued.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QueuedRun {
    /// The DAG.
    pub dag_id: String,
    /// The run.
    pub run_id: String,
    /// Its logical date.
    pub logical_date: DateTime<Utc>,
}

/// The schedule intervals of `dag` that start in `[from, to]`, oldest first. Pure.
pub fn intervals(
    dag: &Dag,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Vec<DataInterval>, BackfillError> {
    if !matches!(dag.schedule, Schedule::Cron { .. }) {
        return Err(BackfillError::NoSchedule {
            dag_id: dag.dag_id.clone(),
            schedule: dag.schedule.to_string(),
        });
    }
    if to < from {
        return Err(BackfillError::EndBeforeStart { from, to });
    }
    let found: Vec<DataInterval> = dag
        .schedule
        .intervals_from(dag.timezone, from)
        .take_while(|i| i.start <= to)
        .take(MAX_BACKFILL_RUNS + 1)
        .collect();
    if found.len() > MAX_BACKFILL_RUNS {
        return Err(BackfillError::TooManyIntervals);
    }
    Ok(found)
}

/// What a backfill does with an interval whose run is `existing`. Pure.
pub fn decide(existing: Option<&DagRun>, rerun_failed: bool) -> Action {
    match existing {
        None => Action::Create,
        Some(run)
            if rerun_failed && matches!(run.state, RunState::Failed | RunState::Cancelled) =>
        {
            Action::Rerun { state: run.state }
        }
        Some(run) => Action::Skip { state: run.state },
    }
}

/// Plans a backfill of `dag`: its intervals in the range, each with the action for the run
/// that covers it now. Reads the store, writes nothing.
pub async fn plan(
    store: &dyn Store,
    dag: &Dag,
    request: BackfillRequest,
) -> Result<BackfillPlan, BackfillError> {
    if request.max_active_runs == Some(0) {
        return Err(BackfillError::ZeroMaxActiveRuns);
    }
    let mut runs = Vec::new();
    for interval in intervals(dag, request.from, request.to)? {
        let existing = store.run_for_date(&dag.dag_id, interval.start).await?;
        runs.push(PlannedRun {
            interval,
            action: decide(existing.as_ref(), request.rerun_failed),
            existing_run_id: existing.map(|r| r.run_id),
        });
    }
    Ok(BackfillPlan {
        dag_id: dag.dag_id.clone(),
        request,
        runs,
    })
}

/// Writes a plan: creates the missing runs as queued backfill runs (with the backfill's cap)
/// and clears the failed ones it re-runs. A run the scheduler created meanwhile for the same
/// interval is left to run; one that finished differently since the plan is re-decided.
/// Returns the runs queued.
pub async fn queue(
    store: &Arc<dyn Store>,
    dag: &Dag,
    plan: &BackfillPlan,
    now: DateTime<Utc>,
) -> Result<Vec<QueuedRun>, BackfillError> {
    let mut queued = Vec::new();
    for planned in &plan.runs {
        let run = match planned.action {
            Action::Skip { .. } => continue,
            Action::Create => {
                let mut run = new_run(
                    dag,
                    planned.interval,
                    RunType::Backfill,
                    serde_json::json!({}),
                    now,
                );
                run.backfill_max_active_runs = plan.request.max_active_runs;
                match store.create_run(&run).await {
                    Ok(run) => run,
                    // Created meanwhile (by the scheduler): it runs anyway.
                    Err(StoreError::RunExists { .. }) => continue,
                    Err(e) => return Err(e.into()),
                }
            }
            Action::Rerun { .. } => {
                // Re-decided on the run as it is now: it may have been re-run meanwhile.
                match store
                    .run_for_date(&dag.dag_id, planned.interval.start)
                    .await?
                {
                    Some(current)
                        if matches!(decide(Some(&current), true), Action::Rerun { .. }) =>
                    {
                        clear_run(store, dag, &current, None, now).await?
                    }
                    _ => continue,
                }
            }
        };
        queued.push(QueuedRun {
            dag_id: run.dag_id,
            run_id: run.run_id,
            logical_date: run.logical_date,
        });
    }
    Ok(queued)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::dag::parse_dag;

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    fn dag(schedule: &str) -> Dag {
        let text =
            format!("dag_id: d\nschedule: '{schedule}'\ntasks:\n  - {{id: a, operator: noop}}\n");
        parse_dag(Path::new("d.yaml"), &text, &sluice_operators::basic()).unwrap()
    }

    #[test]
    fn intervals_are_those_starting_in_the_closed_range() {
        let hourly = dag("@hourly");
        let starts: Vec<String> = intervals(
            &hourly,
            utc("2026-11-01T09:30:00Z"),
            utc("2026-11-01T12:00:00Z"),
        )
        .unwrap()
        .iter()
        .map(|i| i.start.format("%H:%M").to_string())
        .collect();
        assert_eq!(starts, ["10:00", "11:00", "12:00"]);
        let one = intervals(
            &hourly,
            utc("2026-11-01T10:00:00Z"),
            utc("2026-11-01T10:00:00Z"),
        )
        .unwrap();
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].end, utc("2026-11-01T11:00:00Z"));
    }

    #[test]
    fn bad_ranges_and_schedules_are_refused() {
        let hourly = dag("@hourly");
        assert!(matches!(
            intervals(
                &hourly,
                utc("2026-11-02T00:00:00Z"),
                utc("2026-11-01T00:00:00Z")
            ),
            Err(BackfillError::EndBeforeStart { .. })
        ));
        assert!(matches!(
            intervals(
                &dag("* * * * *"),
                utc("2000-01-01T00:00:00Z"),
                utc("2026-01-01T00:00:00Z")
            ),
            Err(BackfillError::TooManyIntervals)
        ));
        let manual = dag("none");
        let error = intervals(
            &manual,
            utc("2026-11-01T00:00:00Z"),
            utc("2026-11-02T00:00:00Z"),
        )
        .unwrap_err();
        assert!(
            error.to_string().contains("has no cron schedule"),
            "{error}"
        );
    }
}
