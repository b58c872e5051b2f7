//! Starting runs: a new run for a logical date, or a new attempt of the run that already
//! covers it. Every change goes through the state machine and the store (compare-and-set).

use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::dag::Dag;
use crate::schedule::DataInterval;
use crate::state::{RunState, TaskState};
use crate::store::{
    DagRun, NewRun, NewTaskInstance, RunType, Store, StoreError, TaskChange, TaskKey,
};

/// Why a run could not be started.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The run id asked for is taken by another logical date, or the logical date already
    /// has a run under another id (one run per logical date).
    #[error("DAG `{dag_id}` cannot start run `{requested}`: {reason}")]
    Conflict {
        /// The DAG.
        dag_id: String,
        /// The run id asked for.
        requested: String,
        /// What is in the way.
        reason: String,
    },
    /// The run for this logical date has not finished: it cannot get a new attempt yet.
    #[error("run `{run_id}` of DAG `{dag_id}` for this logical date is still {state}")]
    Unfinished {
        /// The DAG.
        dag_id: String,
        /// The existing run.
        run_id: String,
        /// Its state.
        state: RunState,
    },
}

/// The largest conf a run takes, serialized: a conf is parameters, not data.
pub const MAX_CONF_BYTES: usize = 64 * 1024;
/// The deepest nesting of objects and arrays a conf may have.
pub const MAX_CONF_DEPTH: usize = 32;

/// Checks a run's conf: a JSON object within [`MAX_CONF_BYTES`] and [`MAX_CONF_DEPTH`].
/// The message says what is wrong, for the CLI and the API alike.
pub fn check_conf(conf: &serde_json::Value) -> Result<(), String> {
    fn depth(value: &serde_json::Value) -> usize {
        match value {
            serde_json::Value::Object(map) => 1 + map.values().map(depth).max().unwrap_or(0),
            serde_json::Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
            _ => 0,
        }
    }
    if !conf.is_object() {
        return Err("conf must be a JSON object, like {\"key\": \"value\"}".into());
    }
    let size = serde_json::to_string(conf)
        .map(|s| s.len())
        .unwrap_or(usize::MAX);
    if size > MAX_CONF_BYTES {
        return Err(format!(
            "conf is {size} bytes; at most {MAX_CONF_BYTES} (pass data through tasks, not conf)"
        ));
    }
    let nesting = depth(conf);
    if nesting > MAX_CONF_DEPTH {
        return Err(format!(
            "conf nests {nesting} levels deep; at most {MAX_CONF_DEPTH}"
        ));
    }
    Ok(())
}

/// How the ids of the runs sluice makes begin (see [`RunType::run_id`]).
const GENERATED_PREFIXES: [&str; 3] = ["scheduled__", "manual__", "backfill__"];

/// The longest run id a caller may choose.
pub const MAX_RUN_ID_LEN: usize = 250;

/// Checks a run id a caller chose (`--run-id`, the API's `dag_run_id`): 1 to
/// [`MAX_RUN_ID_LEN`] characters from Airflow's set `A-Z a-z 0-9 _ . ~ : + -`, not starting
/// with a dot nor with `scheduled__`, `manual__` or `backfill__` (sluice's own names). Run ids name folders and object keys (logs, artifacts), so nothing else gets in.
pub fn check_run_id(run_id: &str) -> Result<(), String> {
    if run_id.is_empty() || run_id.len() > MAX_RUN_ID_LEN {
        return Err(format!(
            "a run id has 1 to {MAX_RUN_ID_LEN} characters; this one has {}",
            run_id.len()
        ));
    }
    if let Some(bad) = run_id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "_.~:+-".contains(*c)))
    {
        return Err(format!(
            "run id `{}` contains {bad:?}; allowed are letters, digits and `_ . ~ : + -`",
            run_id.escape_default()
        ));
    }
    if run_id.starts_with('.') {
        return Err(format!("run id `{run_id}` starts with a dot"));
    }
    // sluice names the runs it makes `<type>__<logical date>`: a chosen id of that form would
    // take the name of a run the scheduler (or a trigger without an id) makes later.
    if let Some(prefix) = GENERATED_PREFIXES.iter().find(|p| run_id.starts_with(**p)) {
        return Err(format!(
            "run id `{run_id}` starts with `{prefix}`: ids starting with {} name the runs sluice makes; choose another",
            GENERATED_PREFIXES.map(|p| format!("`{p}`")).join(", ")
        ));
    }
    Ok(())
}

/// Whether the run is new or a new attempt of an existing one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// A run was created.
    Created,
    /// A finished run was cleared for a new attempt.
    NewAttempt,
}

/// The run of `dag` for `interval`, with one pending instance per task.
pub fn new_run(
    dag: &Dag,
    interval: DataInterval,
    run_type: RunType,
    conf: serde_json::Value,
    now: DateTime<Utc>,
) -> NewRun {
    NewRun {
        dag_id: dag.dag_id.clone(),
        run_id: run_type.run_id(interval.start),
        interval,
        run_type,
        conf,
        version: dag.version(),
        tasks: dag.tasks.iter().map(new_task_instance).collect(),
        at: now,
        backfill_max_active_runs: None,
        note: None,
    }
}

/// The DAG a run executes: `loaded` when it is the run's version, else the run's version
/// rebuilt from the store (its DAG file and SQL files as they were when the run was created
/// or its attempt started). A run whose version the store lacks (created before versions were
/// kept) or that no longer builds with today's operators executes `loaded`, with a warning.
pub async fn dag_of_run(
    store: &dyn Store,
    registry: &sluice_operator_api::Registry,
    loaded: Arc<Dag>,
    run: &DagRun,
) -> Result<Arc<Dag>, StoreError> {
    if run.dag_hash == loaded.hash {
        return Ok(loaded);
    }
    let Some(stored) = store.dag_version(&run.dag_id, &run.dag_hash).await? else {
        tracing::warn!(dag_id = %run.dag_id, run_id = %run.run_id, version = %run.dag_hash, current = %loaded.hash, "the run's DAG version is not stored; it runs the DAG file as loaded now");
        return Ok(loaded);
    };
    match Dag::from_version(&stored, registry) {
        Ok(dag) => {
            tracing::info!(dag_id = %run.dag_id, run_id = %run.run_id, version = %run.dag_hash, current = %loaded.hash, "the DAG changed since the run started; it runs its own version");
            Ok(Arc::new(dag))
        }
        Err(errors) => {
            let errors: Vec<String> = errors.iter().map(ToString::to_string).collect();
            tracing::warn!(dag_id = %run.dag_id, run_id = %run.run_id, version = %run.dag_hash, errors = %errors.join("; "), "the run's DAG version no longer builds; it runs the DAG file as loaded now");
            Ok(loaded)
        }
    }
}

/// The pending instance a run starts with for `task`.
pub fn new_task_instance(task: &crate::dag::Task) -> NewTaskInstance {
    NewTaskInstance {
        task_id: task.id.clone(),
        operator: task.operator_name.clone(),
        max_tries: task.retry.retries + 1,
        pool: task.pool.clone(),
    }
}

/// Creates the run of `dag` for `interval`, or clears the finished run that covers it.
pub async fn start_run(
    store: &Arc<dyn Store>,
    dag: &Dag,
    interval: DataInterval,
    run_type: RunType,
    conf: serde_json::Value,
    now: DateTime<Utc>,
) -> Result<(DagRun, Start), StartError> {
    start_run_with_id(store, dag, interval, run_type, conf, Chosen::default(), now).await
}

/// What a caller may choose for a run it triggers (the API's `dag_run_id` and `note`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Chosen<'a> {
    /// The run's id (checked with [`check_run_id`]); default `<type>__<logical date>`.
    pub run_id: Option<&'a str>,
    /// A note kept with the run.
    pub note: Option<&'a str>,
}

/// [`start_run`] under the run id a caller chose (checked with [`check_run_id`] first), or
/// the usual `<type>__<logical date>` when `run_id` is `None`. A chosen id creates a run or
/// is refused (it exists, or its logical date has a run already: one run per date); only a
/// trigger without one re-runs a finished run.
pub async fn start_run_with_id(
    store: &Arc<dyn Store>,
    dag: &Dag,
    interval: DataInterval,
    run_type: RunType,
    conf: serde_json::Value,
    chosen: Chosen<'_>,
    now: DateTime<Utc>,
) -> Result<(DagRun, Start), StartError> {
    let run_id = chosen.run_id;
    let mut new_run = new_run(dag, interval, run_type, conf, now);
    new_run.note = chosen.note.map(str::to_string);
    if let Some(id) = run_id {
        let refuse = |reason: String| StartError::Conflict {
            dag_id: dag.dag_id.clone(),
            requested: id.to_string(),
            reason,
        };
        check_run_id(id).map_err(refuse)?;
        new_run.run_id = id.to_string();
    }
    match store.create_run(&new_run).await {
        Ok(run) => Ok((run, Start::Created)),
        Err(StoreError::RunExists { .. }) => {
            let conflict = |reason: String| StartError::Conflict {
                dag_id: dag.dag_id.clone(),
                requested: new_run.run_id.clone(),
                reason,
            };
            let existing = store
                .run_for_date(&dag.dag_id, interval.start)
                .await?
                .ok_or_else(|| {
                    // The id exists under another logical date.
                    conflict("the run id is taken by a run of another logical date".into())
                })?;
            // A chosen id names one run: posting it again (a client's retry) must not run
            // it again. Without one, a trigger for a date that ran is a re-run.
            if run_id.is_some() {
                return Err(conflict(if existing.run_id == new_run.run_id {
                    format!(
                        "the run exists ({}); clear its tasks to run them again",
                        existing.state
                    )
                } else {
                    format!(
                        "logical date {} already has run `{}`",
                        interval.start.to_rfc3339(),
                        existing.run_id
                    )
                }));
            }
            // The new attempt runs with the conf it was started with, not the last one's.
            let mut run = clear_run(store, dag, &existing, Some(&new_run.conf), now).await?;
            if let Some(note) = new_run.note {
                store
                    .set_run_note(&run.dag_id, &run.run_id, Some(&note), now)
                    .await?;
                run.note = Some(note);
            }
            Ok((run, Start::NewAttempt))
        }
        Err(e) => Err(e.into()),
    }
}

/// Clears every finished task of a finished run back to pending (each keeps its try count and
/// gets its retries again) and queues the run's next attempt, with `conf` if one is given.
pub async fn clear_run(
    store: &Arc<dyn Store>,
    dag: &Dag,
    run: &DagRun,
    conf: Option<&serde_json::Value>,
    now: DateTime<Utc>,
) -> Result<DagRun, StartError> {
    let all: Vec<String> = dag.tasks.iter().map(|t| t.id.clone()).collect();
    clear_tasks(store, dag, run, &all, conf, now)
        .await
        .map(|(run, _)| run)
}

/// A task a clear sent back to pending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClearedTask {
    /// The task.
    pub task_id: String,
    /// Its state before.
    pub previous_state: TaskState,
}

/// Clears the named tasks of a finished run (those that have finished) and queues the run's
/// next attempt (with `conf` if one is given, else the last attempt's); returns the run and
/// the tasks cleared with the state they had.
pub async fn clear_tasks(
    store: &Arc<dyn Store>,
    dag: &Dag,
    run: &DagRun,
    task_ids: &[String],
    conf: Option<&serde_json::Value>,
    now: DateTime<Utc>,
) -> Result<(DagRun, Vec<ClearedTask>), StartError> {
    if !run.state.is_finished() {
        return Err(StartError::Unfinished {
            dag_id: run.dag_id.clone(),
            run_id: run.run_id.clone(),
            state: run.state,
        });
    }
    let mut cleared = Vec::new();
    for ti in store.task_instances(&run.dag_id, &run.run_id).await? {
        if !task_ids.contains(&ti.task_id) {
            continue;
        }
        let Ok(transition) = ti.state.to(TaskState::Pending) else {
            continue;
        };
        let retries = dag.task(&ti.task_id).map(|t| t.retry.retries).unwrap_or(0);
        let key = TaskKey {
            dag_id: ti.dag_id.clone(),
            run_id: ti.run_id.clone(),
            task_id: ti.task_id.clone(),
        };
        let mut change = TaskChange::new(key, transition, now);
        change.reason = Some(format!(
            "cleared for attempt {} of the run",
            run.attempt + 1
        ));
        change.max_tries = Some(ti.try_number + retries + 1);
        store.transition(&change).await?;
        cleared.push(ClearedTask {
            task_id: ti.task_id.clone(),
            previous_state: ti.state,
        });
    }
    let run = store
        .new_attempt(
            &run.dag_id,
            &run.run_id,
            run.state,
            conf,
            Some(&dag.version()),
            now,
        )
        .await?;
    Ok((run, cleared))
}

/// Why a task could not be marked.
#[derive(Debug, thiserror::Error)]
pub enum MarkError {
    /// The store failed or the task moved meanwhile.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The run is still going: its driver owns its tasks' states.
    #[error("run `{0}` has not finished; mark its tasks once it has")]
    Unfinished(String),
    /// The task is not in the run.
    #[error("run `{run_id}` has no task `{task_id}`")]
    NoSuchTask {
        /// The run.
        run_id: String,
        /// The task.
        task_id: String,
    },
    /// The mark would not change anything the state machine allows.
    #[error(transparent)]
    Illegal(#[from] crate::state::IllegalTransition),
}

/// Sets a finished task's outcome by hand (mark success / mark failed) and brings the run's
/// outcome in line with its tasks.
pub async fn mark_task(
    store: &Arc<dyn Store>,
    run: &DagRun,
    task_id: &str,
    to: TaskState,
    now: DateTime<Utc>,
) -> Result<(crate::store::TaskInstance, DagRun), MarkError> {
    if !run.state.is_finished() {
        return Err(MarkError::Unfinished(run.run_id.clone()));
    }
    let tis = store.task_instances(&run.dag_id, &run.run_id).await?;
    let ti = tis
        .iter()
        .find(|t| t.task_id == task_id)
        .ok_or_else(|| MarkError::NoSuchTask {
            run_id: run.run_id.clone(),
            task_id: task_id.to_string(),
        })?;
    let transition = ti.state.to(to)?;
    let key = TaskKey {
        dag_id: run.dag_id.clone(),
        run_id: run.run_id.clone(),
        task_id: task_id.to_string(),
    };
    let mut change = TaskChange::new(key, transition, now);
    change.reason = Some(format!("marked {to} by hand"));
    let marked = store.transition(&change).await?;
    let outcome =
        crate::state::run_outcome(
            tis.iter()
                .map(|t| if t.task_id == task_id { to } else { t.state }),
        );
    let run = if outcome != run.state {
        store
            .set_run_state(&run.dag_id, &run.run_id, run.state, outcome, now)
            .await?
    } else {
        run.clone()
    };
    Ok((marked, run))
}

/// Why a run or a task instance could not be stopped.
#[derive(Debug, thiserror::Error)]
pub enum StopError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The run is over: nothing runs to stop.
    #[error("run `{run_id}` has already finished ({state})")]
    Finished {
        /// The run.
        run_id: String,
        /// How it ended.
        state: RunState,
    },
    /// The run has not started: none of its tasks runs yet (stop the run instead).
    #[error("run `{0}` has not started; stop the run instead of one of its tasks")]
    NotStarted(String),
    /// The task is not in the run.
    #[error("run `{run_id}` has no task `{task_id}`")]
    NoSuchTask {
        /// The run.
        run_id: String,
        /// The task.
        task_id: String,
    },
    /// The task is over.
    #[error("task `{task_id}` has already finished ({state})")]
    TaskFinished {
        /// The task.
        task_id: String,
        /// How it ended.
        state: TaskState,
    },
}

/// What a stop did.
#[derive(Debug, Clone, PartialEq)]
pub enum Stop {
    /// The run's driver was asked: it stops the running tries (with their grace period) and
    /// records who stopped them, within a second or so.
    Requested,
    /// The run had not started: it ended at once, its tasks cancelled.
    Done(Box<DagRun>),
}

/// Stops a run: a running run's driver stops its tries (process groups get their grace
/// period) and cancels what has not started; the run ends `ends` (`failed` or `cancelled`).
/// The history names `by`.
pub async fn stop_run(
    store: &Arc<dyn Store>,
    run: &DagRun,
    ends: RunState,
    by: &str,
    now: DateTime<Utc>,
) -> Result<Stop, StopError> {
    debug_assert!(matches!(ends, RunState::Failed | RunState::Cancelled));
    if run.state == RunState::Queued {
        // Nobody drives a queued run: it ends here, unless a scheduler started it meanwhile.
        match store
            .set_run_state(&run.dag_id, &run.run_id, RunState::Queued, ends, now)
            .await
        {
            Ok(stopped) => {
                let tis = store.task_instances(&run.dag_id, &run.run_id).await?;
                let changes: Vec<TaskChange> = tis
                    .iter()
                    .filter_map(|ti| {
                        let transition = ti.state.to(TaskState::Cancelled).ok()?;
                        let key = TaskKey {
                            dag_id: run.dag_id.clone(),
                            run_id: run.run_id.clone(),
                            task_id: ti.task_id.clone(),
                        };
                        let mut change = TaskChange::new(key, transition, now);
                        change.reason = Some(format!("run stopped by {by}"));
                        Some(change)
                    })
                    .collect();
                store.transitions(&changes).await?;
                return Ok(Stop::Done(Box::new(stopped)));
            }
            Err(StoreError::Conflict { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    } else if run.state.is_finished() {
        return Err(StopError::Finished {
            run_id: run.run_id.clone(),
            state: run.state,
        });
    }
    store
        .request_stop(&crate::store::StopRequest {
            dag_id: run.dag_id.clone(),
            run_id: run.run_id.clone(),
            task_id: None,
            requested_by: by.to_string(),
            requested_at: now,
            run_ends: ends,
        })
        .await?;
    Ok(Stop::Requested)
}

/// Stops one task instance of a running run: its running try is stopped (its process group
/// gets its grace period) and ends `failed` without a retry; a task that has not started
/// is cancelled. The run goes on as its trigger rules say. The history names `by`.
pub async fn stop_task(
    store: &Arc<dyn Store>,
    run: &DagRun,
    task_id: &str,
    by: &str,
    now: DateTime<Utc>,
) -> Result<Stop, StopError> {
    match run.state {
        RunState::Running => {}
        RunState::Queued => return Err(StopError::NotStarted(run.run_id.clone())),
        state => {
            return Err(StopError::Finished {
                run_id: run.run_id.clone(),
                state,
            })
        }
    }
    let tis = store.task_instances(&run.dag_id, &run.run_id).await?;
    let ti = tis
        .iter()
        .find(|t| t.task_id == task_id)
        .ok_or_else(|| StopError::NoSuchTask {
            run_id: run.run_id.clone(),
            task_id: task_id.to_string(),
        })?;
    if ti.state.is_finished() {
        return Err(StopError::TaskFinished {
            task_id: task_id.to_string(),
            state: ti.state,
        });
    }
    store
        .request_stop(&crate::store::StopRequest {
            dag_id: run.dag_id.clone(),
            run_id: run.run_id.clone(),
            task_id: Some(task_id.to_string()),
            requested_by: by.to_string(),
            requested_at: now,
            run_ends: RunState::Failed,
        })
        .await?;
    Ok(Stop::Requested)
}

#[cfg(test)]
mod conf_tests {
    use super::*;

    #[test]
    fn a_conf_is_a_small_shallow_object() {
        assert!(check_conf(&serde_json::json!({"region": "eu", "n": [1, {"x": 2}]})).is_ok());
        assert!(check_conf(&serde_json::json!([1]))
            .unwrap_err()
            .contains("JSON object"));
        let big = serde_json::json!({"blob": "x".repeat(MAX_CONF_BYTES)});
        assert!(check_conf(&big).unwrap_err().contains("at most 65536"));
        let mut deep = serde_json::json!(1);
        for _ in 0..40 {
            deep = serde_json::json!({ "a": deep });
        }
        assert!(check_conf(&deep).unwrap_err().contains("40 levels deep"));
    }
}
