//! One try of one task outside the run's bookkeeping (`sluice tasks test`, Airflow's
//! `tasks test`): nothing is recorded in the store and nothing a run owns is touched. The try
//! sees what a real try would (templates, connections, the upstream tasks' outputs of the run
//! for that logical date when there is one), but writes its log and artifacts to a scratch
//! folder, sends every item of an item-by-item task (no delivery ledger) and registers no
//! process groups.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use chrono::Utc;
use sluice_operator_api::artifact::ArtifactError;
use sluice_operator_api::secrets::sensitive_values;
use sluice_operator_api::{
    ArtifactKey, ArtifactRef, ArtifactStore, LocalArtifactStore, NoLedger, NoProcesses, TaskLog,
};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{run_try, Executor, TryOutcome};
use crate::dag::Dag;
use crate::schedule::DataInterval;
use crate::state::{RunState, TaskState};
use crate::store::{DagRun, RunType, StoreError, TaskInstance};

/// What [`Executor::test_task`] ran and how it ended.
#[derive(Debug)]
pub struct TaskTest {
    /// The run id the try saw (`{{ run_id }}`): the existing run's for that logical date, else
    /// the id a manual run for it would get.
    pub run_id: String,
    /// The try number it saw (the next one of the existing run's task, else 1).
    pub try_number: u32,
    /// The run whose upstream outputs the try saw, when one exists for the logical date.
    pub upstream_run: Option<String>,
    /// Its data interval.
    pub interval: DataInterval,
    /// Where its log was written.
    pub log: PathBuf,
    /// How it ended (secrets masked).
    pub outcome: TryOutcome,
}

/// Where a tested task's log goes before it runs (for following it while it runs).
pub fn task_test_log(scratch: &Path, dag_id: &str, task_id: &str) -> PathBuf {
    let stamp = Utc::now().format("%Y%m%dT%H%M%S%.3fZ");
    scratch
        .join("logs")
        .join(dag_id)
        .join(task_id)
        .join(format!("{stamp}.log"))
}

/// Writes under a scratch folder, reads what real tries wrote.
#[derive(Debug)]
struct ScratchArtifacts {
    scratch: LocalArtifactStore,
    real: Arc<dyn ArtifactStore>,
}

#[async_trait]
impl ArtifactStore for ScratchArtifacts {
    async fn staging_path(&self, key: &ArtifactKey) -> Result<PathBuf, ArtifactError> {
        self.scratch.staging_path(key).await
    }

    async fn commit(
        &self,
        key: &ArtifactKey,
        staged: &Path,
        rows: Option<u64>,
    ) -> Result<ArtifactRef, ArtifactError> {
        self.scratch.commit(key, staged, rows).await
    }

    async fn local_path(&self, artifact: &ArtifactRef) -> Result<PathBuf, ArtifactError> {
        self.real.local_path(artifact).await
    }
}

/// A task instance that has not run, for a task of a run that does not exist.
fn unstarted(dag: &Dag, run_id: &str, task: &crate::dag::Task) -> TaskInstance {
    TaskInstance {
        dag_id: dag.dag_id.clone(),
        run_id: run_id.to_string(),
        task_id: task.id.clone(),
        operator: task.operator_name.clone(),
        state: TaskState::Pending,
        try_number: 0,
        max_tries: task.retry.retries + 1,
        queued_at: None,
        started_at: None,
        ended_at: None,
        next_retry_at: None,
        output: None,
        error: None,
        updated_at: Utc::now(),
        queue: None,
        worker: None,
        hostname: None,
        heartbeat_at: None,
        pool: None,
    }
}

impl Executor {
    /// Runs task `task_id` of `dag` once for `interval`, recording nothing: see the module's
    /// documentation. `conf` (when given) replaces the existing run's conf; `log` is where the
    /// try's log goes (see [`task_test_log`]) and `scratch` the folder its artifacts go to.
    #[allow(clippy::too_many_arguments)]
    pub async fn test_task(
        &self,
        dag: &Dag,
        task_id: &str,
        interval: DataInterval,
        conf: Option<serde_json::Value>,
        log: &Path,
        scratch: &Path,
        cancel: CancellationToken,
    ) -> Result<TaskTest, StoreError> {
        let task = dag.task_index(task_id).ok_or_else(|| {
            StoreError::NotFound(format!("task `{task_id}` of DAG `{}`", dag.dag_id))
        })?;
        let existing = self.store.run_for_date(&dag.dag_id, interval.start).await?;
        let upstream_run = existing.as_ref().map(|r| r.run_id.clone());
        let (mut run, instances) = match existing {
            Some(run) => {
                let found = self.store.task_instances(&dag.dag_id, &run.run_id).await?;
                let instances = dag
                    .tasks
                    .iter()
                    .map(|t| {
                        found
                            .iter()
                            .find(|ti| ti.task_id == t.id)
                            .cloned()
                            .unwrap_or_else(|| unstarted(dag, &run.run_id, t))
                    })
                    .collect();
                (run, instances)
            }
            None => {
                let now = Utc::now();
                let run_id = RunType::Manual.run_id(interval.start);
                let instances = dag
                    .tasks
                    .iter()
                    .map(|t| unstarted(dag, &run_id, t))
                    .collect();
                let run = DagRun {
                    dag_id: dag.dag_id.clone(),
                    run_id,
                    logical_date: interval.start,
                    data_interval_start: interval.start,
                    data_interval_end: interval.end,
                    run_type: RunType::Manual,
                    state: RunState::Running,
                    conf: serde_json::json!({}),
                    dag_hash: dag.hash.clone(),
                    created_at: now,
                    started_at: Some(now),
                    ended_at: None,
                    backfill_max_active_runs: None,
                    attempt: 1,
                    sla_missed_at: None,
                    note: None,
                };
                (run, instances)
            }
        };
        if let Some(conf) = conf {
            run.conf = conf;
        }
        let instances: Vec<TaskInstance> = instances;
        let try_number = instances[task].try_number + 1;
        let masker = self.masker.with(
            sensitive_values(&run.conf)
                .into_iter()
                .chain(sensitive_values(&dag.params_with(&run.conf))),
        );
        let spec = &dag.tasks[task];
        let task_log = TaskLog::to_file(log).masked(masker.clone());
        task_log.preamble(&format!(
            "tasks test: try {try_number} of {task_id} (operator {}) for run {}, not recorded",
            spec.operator_name, run.run_id
        ));
        let mut ctx = self.try_context(
            dag,
            &run,
            &instances,
            task,
            try_number,
            task_log.clone(),
            cancel,
        );
        ctx.artifacts = Arc::new(ScratchArtifacts {
            scratch: LocalArtifactStore::new(scratch.join("artifacts")),
            real: self.artifacts.clone(),
        });
        ctx.deliveries = Arc::new(NoLedger);
        ctx.processes = Arc::new(NoProcesses);
        // The operator's tracing events reach the try's log, as in a real try.
        let route = crate::trylog::route(task_log);
        let span = tracing::info_span!("try", dag_id = %dag.dag_id, run_id = %run.run_id, task_id = %task_id, try_number, try_log = route.id());
        let outcome = run_try(spec.operator.clone(), ctx, spec.execution_timeout)
            .instrument(span)
            .await
            .masked(&masker);
        drop(route);
        Ok(TaskTest {
            run_id: run.run_id,
            try_number,
            upstream_run,
            interval,
            log: log.to_path_buf(),
            outcome,
        })
    }
}
