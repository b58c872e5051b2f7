//! The local executor: drives one DAG run to its end inside this process.
//!
//! Event-driven: a finished try wakes the loop at once through a channel, and its
//! downstream tasks are decided and started in the same turn; timers only serve retry
//! delays, try timeouts and the renewal of the run's lease. Every state change is persisted through the store (compare-and-set + history)
//! *before* it is acted on: a try is `running` in the store before its operator starts.
//! Tries run as tokio tasks under a shared slot limit (`parallelism`) and the DAG's
//! `max_active_tasks`.

mod attempt;
pub mod decide;
mod ledger;
mod plan;
mod processes;
pub mod slots;
mod task_test;
mod worker;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sluice_operator_api::secrets::{secrets_of_env, sensitive_values};
use sluice_operator_api::{
    ArtifactStore, Connections, FailureKind, LocalArtifactStore, Masker, TaskContext, TaskLog,
    TaskOutput, TemplateVars,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::dag::Dag;
use crate::settings::Settings;
use crate::state::{run_outcome, RunState, TaskState};
use crate::store::{
    DagRun, Fence, NewTaskInstance, Store, StoreError, TaskChange, TaskInstance, TaskKey,
};
use crate::trylog::{self, try_log_path};
pub use attempt::{run_try, TryOutcome, STOP_GRACE};

/// How often a run's driver looks for requests to stop the run or one of its tasks.
pub const STOP_POLL: Duration = Duration::from_secs(1);
use decide::{decide, next_wakeup, TaskView};
use plan::{overlay, try_ending, Ending, Planned};
pub(crate) use processes::hostname;
pub use task_test::{task_test_log, TaskTest};
pub use worker::{Worker, WorkerOptions};

/// A state change the executor made, for live progress output.
#[derive(Debug, Clone)]
pub struct Progress {
    /// The task.
    pub task_id: String,
    /// Its try number after the change.
    pub try_number: u32,
    /// Previous state.
    pub from: TaskState,
    /// New state.
    pub to: TaskState,
    /// When.
    pub at: DateTime<Utc>,
    /// Why, when there is a reason.
    pub reason: Option<String>,
}

/// Why a run could not be driven.
#[derive(Debug, thiserror::Error)]
pub enum ExecutorError {
    /// The store failed; the run resumes from the store's state when retried.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The run does not exist.
    #[error("run `{run_id}` of DAG `{dag_id}` not found")]
    RunNotFound {
        /// The DAG.
        dag_id: String,
        /// The run.
        run_id: String,
    },
    /// Another live process drives this run (its lease has not ended).
    #[error("run `{run_id}` of DAG `{dag_id}` is being run by another process; it takes over only if that one stops renewing its claim")]
    DrivenElsewhere {
        /// The DAG.
        dag_id: String,
        /// The run.
        run_id: String,
    },
    /// This driver's lease on the run lapsed (the process stalled) and another took the run
    /// over: it stops without writing anything more.
    #[error("run `{run_id}` of DAG `{dag_id}`: this process lost the run's lease while it stalled; another process drives it now")]
    LeaseLost {
        /// The DAG.
        dag_id: String,
        /// The run.
        run_id: String,
    },
    /// The run's task instances do not match the DAG's tasks.
    #[error("run `{run_id}` has no task instance for task `{task_id}` of DAG `{dag_id}` (the DAG changed since the run was created)")]
    DagMismatch {
        /// The DAG.
        dag_id: String,
        /// The run.
        run_id: String,
        /// The missing task.
        task_id: String,
    },
}

/// Runs DAG runs in this process.
#[derive(Debug, Clone)]
pub struct Executor {
    store: Arc<dyn Store>,
    connections: Arc<Connections>,
    artifacts: Arc<dyn ArtifactStore>,
    /// This machine's artifacts folder (with shared storage, its cache).
    artifacts_root: PathBuf,
    logs_dir: PathBuf,
    /// Shared storage that try logs are shipped to (artifacts go there through `artifacts`).
    shared: Option<Arc<crate::storage::Storage>>,
    slots: Arc<slots::Slots>,
    observer: Option<mpsc::UnboundedSender<Progress>>,
    shutdown: CancellationToken,
    shutdown_grace: Duration,
    /// Who this executor is when it claims runs (host, process, instance).
    driver: String,
    /// How long a claim lasts without renewal.
    lease: Duration,
    /// How long a store that does not answer is waited out while tries run on.
    outage_deadline: Duration,
    /// The process's secrets (connection passwords, tokens, the store's password), masked in
    /// try logs, outputs and errors.
    masker: Masker,
    /// This machine's name, recorded with each try.
    host: String,
    /// Where the runs' tries execute.
    placement: Placement,
    /// Whether a queued run starts only while its DAG is under `max_active_runs` in the store
    /// (schedulers sharing a store); `dags test` runs what it is given.
    limit_runs: bool,
    /// With workers: the store's notifications of tries that ended (`dag_id/run_id`),
    /// shared by the runs this executor drives (one listening connection per process).
    ended: Arc<tokio::sync::OnceCell<Option<tokio::sync::broadcast::Sender<String>>>>,
}

/// Where the tries of the runs an executor drives execute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// In this process, under its slots (`standalone`, `dags test`, a scheduler alone).
    Local,
    /// On `sluice worker` processes: a ready try is queued in its task's queue, a worker
    /// claims, runs and ends it, and the driver follows the run in the store.
    Workers {
        /// A running try whose worker has not heartbeated for this long is taken back and
        /// retried (its worker is presumed dead; if it comes back, its writes are refused).
        heartbeat_timeout: Duration,
        /// How often the driver reads its run back from the store.
        poll: Duration,
    },
}

/// A name unique to this executor: host, process and a per-process counter.
fn driver_id() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "host".into());
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!(
        "{host}:{}:{}:{n}",
        std::process::id(),
        Utc::now().timestamp_millis()
    )
}

/// A try's end as sent back to the run loop, with the slot it held.
/// A try that ended, sent from its task to the run loop.
struct Finished {
    /// Index into `Dag::tasks`.
    task: usize,
    outcome: TryOutcome,
    /// When it ended.
    at: DateTime<Utc>,
    /// Its slot, released once the end is written.
    slot: slots::SlotGuard,
}

struct RunDriver<'a> {
    executor: &'a Executor,
    dag: Arc<Dag>,
    run: DagRun,
    instances: Vec<TaskInstance>,
    /// When this driver's lease on the run ends unless renewed (a monotonic clock, which
    /// keeps counting while the process is stopped): past it, the driver writes nothing.
    lease_ends: tokio::time::Instant,
    /// The tries running now, by task, with the token that stops each.
    running: HashMap<usize, CancellationToken>,
    /// Tries stopped without being their fault (a shutdown's grace or a store outage's
    /// deadline ran out): they end as interrupted and run again without using up a retry.
    interrupted: std::collections::HashSet<usize>,
    /// The request that stops the whole run, once its driver acted on it.
    stop: Option<crate::store::StopRequest>,
    /// Running tries stopped by a request, with the reason their end records.
    stopping: HashMap<usize, String>,
    /// Since when the store has not answered this driver (`None` while it answers).
    outage: Option<tokio::time::Instant>,
}

impl Executor {
    /// An executor over `store`, with logs and artifacts under the settings' home.
    pub fn new(store: Arc<dyn Store>, settings: &Settings, connections: Arc<Connections>) -> Self {
        let connections_for_masker = connections.clone();
        Self {
            store,
            connections,
            artifacts: Arc::new(LocalArtifactStore::new(settings.artifacts_dir())),
            artifacts_root: settings.artifacts_dir(),
            logs_dir: settings.logs_dir(),
            shared: None,
            slots: Arc::new(slots::Slots::new(
                settings.parallelism,
                &slots::parse_pools(&settings.pools).unwrap_or_default(),
            )),
            observer: None,
            shutdown: CancellationToken::new(),
            shutdown_grace: Duration::from_secs(30),
            driver: driver_id(),
            lease: settings.run_lease,
            outage_deadline: settings.store_outage_deadline,
            host: processes::hostname(),
            placement: Placement::Local,
            limit_runs: false,
            ended: Default::default(),
            masker: Masker::new(
                secrets_of_env(std::env::vars())
                    .into_iter()
                    .chain(connections_for_masker.secrets())
                    // The API's tokens file: its tokens are secrets like SLUICE_API_TOKEN.
                    .chain(
                        crate::web::auth::Tokens::from_env()
                            .map(|t| t.secrets())
                            .unwrap_or_default(),
                    ),
            ),
        }
    }

    /// Keeps artifacts and try logs on `shared` storage as well (`SLUICE_STORAGE_URL`), so a
    /// try on another machine reads the artifacts this one's tries write and a web server on
    /// any machine serves their logs; this machine's folders become a cache.
    pub fn with_shared_storage(mut self, shared: Option<Arc<crate::storage::Storage>>) -> Self {
        if let Some(storage) = &shared {
            self.artifacts = Arc::new(crate::storage::SharedArtifactStore::new(
                storage.clone(),
                self.artifacts_root.clone(),
            ));
        }
        self.shared = shared;
        self
    }

    /// Runs `work` (try `try_number` of `key`) with its log shipped to shared storage while
    /// it runs and once more before its end is recorded.
    fn shipping_log<F: std::future::Future>(
        &self,
        key: &TaskKey,
        try_number: u32,
        work: F,
    ) -> impl std::future::Future<Output = F::Output> {
        crate::storage::logs::shipping(
            self.shared.clone(),
            self.logs_dir.clone(),
            key.clone(),
            try_number,
            work,
        )
    }

    /// Queues notifications; a store that fails is logged, never the run's problem (the
    /// sweep at the run's end queues what was missed).
    async fn enqueue(&self, notices: &[crate::notify::Notification]) {
        if notices.is_empty() {
            return;
        }
        if let Err(error) = self.store.enqueue_notifications(notices).await {
            tracing::warn!(%error, count = notices.len(), "could not queue notifications");
        }
    }

    /// Stops every run this executor drives when `shutdown` fires: no new tries start,
    /// running ones get `grace` to finish, then are stopped and marked for retry. The runs
    /// stay `running` in the store and resume when a process drives them again.
    pub fn with_shutdown(mut self, shutdown: CancellationToken, grace: Duration) -> Self {
        self.shutdown = shutdown;
        self.shutdown_grace = grace;
        self
    }

    /// Starts a queued run only while its DAG is under `max_active_runs`, counted in the
    /// store under the DAG's lock, so schedulers sharing a store never exceed it together.
    /// A run over the limit stays queued, and `run` returns it as it is.
    pub fn with_run_limits(mut self) -> Self {
        self.limit_runs = true;
        self
    }

    /// Runs the tries of the runs it drives where `placement` says.
    pub fn with_placement(mut self, placement: Placement) -> Self {
        self.placement = placement;
        self
    }

    /// Sends every state change to `observer` as it happens.
    pub fn with_observer(mut self, observer: mpsc::UnboundedSender<Progress>) -> Self {
        self.observer = Some(observer);
        self
    }

    /// The store this executor writes to.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Notifications of tries that workers ended, where the store has them (PostgreSQL).
    async fn ended_events(&self) -> Option<tokio::sync::broadcast::Receiver<String>> {
        let sender = self
            .ended
            .get_or_init(|| async {
                match self.store.listen(crate::store::Wake::Ended).await {
                    Ok(Some(mut events)) => {
                        let (tx, _) = tokio::sync::broadcast::channel(1024);
                        let forward = tx.clone();
                        tokio::spawn(async move {
                            while let Some(payload) = events.recv().await {
                                let _ = forward.send(payload);
                            }
                        });
                        Some(tx)
                    }
                    Ok(None) => None,
                    Err(error) => {
                        tracing::warn!(%error, "cannot listen for ended tries; polling only");
                        None
                    }
                }
            })
            .await;
        sender.as_ref().map(|tx| tx.subscribe())
    }

    /// Everything try `try_number` of `dag.tasks[task]` in `run` can see; `instances` are the
    /// run's task instances in the DAG's task order (upstream outputs come from them).
    #[allow(clippy::too_many_arguments)]
    fn try_context(
        &self,
        dag: &Dag,
        run: &DagRun,
        instances: &[TaskInstance],
        task: usize,
        try_number: u32,
        log: TaskLog,
        cancel: CancellationToken,
    ) -> TaskContext {
        let upstream: BTreeMap<String, TaskOutput> = dag.tasks[task]
            .upstream
            .iter()
            .filter(|&&u| instances[u].state == TaskState::Success)
            .map(|&u| {
                let output = instances[u].output.clone().unwrap_or_default();
                (dag.tasks[u].id.clone(), output)
            })
            .collect();
        let vars = TemplateVars::new(
            &dag.dag_id,
            &run.run_id,
            &dag.tasks[task].id,
            try_number,
            run.logical_date,
            (run.data_interval_start, run.data_interval_end),
            dag.params_with(&run.conf),
            run.conf.clone(),
        )
        .with_attempt(run.attempt)
        .with_upstream(&upstream);
        let key = TaskKey {
            dag_id: dag.dag_id.clone(),
            run_id: run.run_id.clone(),
            task_id: dag.tasks[task].id.clone(),
        };
        TaskContext {
            vars,
            dag_dir: dag
                .file
                .parent()
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(".")),
            // The files this task names, as the run's version has them.
            config_files: Arc::new(
                dag.tasks[task]
                    .files
                    .iter()
                    .filter_map(|f| {
                        let text = dag.source.files.get(&f.path)?;
                        Some((f.path.clone(), text.clone()))
                    })
                    .collect(),
            ),
            upstream,
            connections: self.connections.clone(),
            artifacts: self.artifacts.clone(),
            log,
            processes: Arc::new(processes::StoreProcesses {
                store: self.store.clone(),
                key: key.clone(),
                try_number,
                host: self.host.clone(),
            }),
            deliveries: Arc::new(ledger::StoreLedger {
                store: self.store.clone(),
                key,
                attempt: run.attempt,
                outage_deadline: self.outage_deadline,
            }),
            cancel,
        }
    }

    /// The log of try `ti.try_number` of `dag.tasks[task]`, with this process's secrets and
    /// the run's sensitive conf values masked, and the masker for the try's outcome.
    fn try_log(
        &self,
        dag: &Dag,
        run: &DagRun,
        task: usize,
        ti: &TaskInstance,
    ) -> (TaskLog, Masker) {
        let key = TaskKey {
            dag_id: dag.dag_id.clone(),
            run_id: run.run_id.clone(),
            task_id: dag.tasks[task].id.clone(),
        };
        let path = try_log_path(&self.logs_dir, &key, ti.try_number);
        let spec = &dag.tasks[task];
        // Values under sensitive keys of the run's conf and the DAG's params are secrets too.
        let masker = self.masker.with(
            sensitive_values(&run.conf)
                .into_iter()
                .chain(sensitive_values(&dag.params_with(&run.conf))),
        );
        let log = TaskLog::to_file(&path).masked(masker.clone());
        log.preamble(&format!(
            "try {} of {} of {} (operator {}) in run {}",
            ti.try_number, ti.max_tries, key.task_id, spec.operator_name, key.run_id
        ));
        (log, masker)
    }

    /// Drives a run until every task has finished (or `cancel` fires) and returns the final run.
    /// A run left mid-way by a dead process resumes: its `running` tries count as failed tries.
    pub async fn run(
        &self,
        dag: Arc<Dag>,
        run_id: &str,
        cancel: CancellationToken,
    ) -> Result<DagRun, ExecutorError> {
        let not_found = || ExecutorError::RunNotFound {
            dag_id: dag.dag_id.clone(),
            run_id: run_id.to_string(),
        };
        let mut run = self
            .store
            .run(&dag.dag_id, run_id)
            .await?
            .ok_or_else(not_found)?;
        if run.state.is_finished() {
            return Ok(run);
        }
        let now = Utc::now();
        let claimed_at = tokio::time::Instant::now();
        let until = now + chrono::Duration::from_std(self.lease).unwrap_or_default();
        if !self
            .store
            .claim_run(&dag.dag_id, run_id, &self.driver, until, now)
            .await?
        {
            return Err(ExecutorError::DrivenElsewhere {
                dag_id: dag.dag_id.clone(),
                run_id: run_id.to_string(),
            });
        }
        let read = || async {
            let by_id: HashMap<String, TaskInstance> = self
                .store
                .task_instances(&dag.dag_id, run_id)
                .await?
                .into_iter()
                .map(|ti| (ti.task_id.clone(), ti))
                .collect();
            Ok::<_, ExecutorError>(by_id)
        };
        let mut by_id = read().await?;
        // The DAG may have gained tasks since the run was created: give them pending instances.
        let missing: Vec<NewTaskInstance> = dag
            .tasks
            .iter()
            .filter(|t| !by_id.contains_key(&t.id))
            .map(crate::runs::new_task_instance)
            .collect();
        if !missing.is_empty() {
            tracing::info!(dag_id = %dag.dag_id, %run_id, tasks = missing.len(), "the DAG gained tasks since the run was created; adding them");
            self.store
                .add_task_instances(&dag.dag_id, run_id, &missing, Utc::now())
                .await?;
            by_id = read().await?;
        }
        // Tasks removed from the DAG file since the run was created: their unfinished
        // instances would stay `running` or `queued` forever; they end as cancelled.
        let removed: Vec<TaskChange> = by_id
            .values()
            .filter(|ti| dag.task(&ti.task_id).is_none() && !ti.state.is_finished())
            .filter_map(|ti| {
                let transition = ti.state.to(TaskState::Cancelled).ok()?;
                let key = TaskKey {
                    dag_id: ti.dag_id.clone(),
                    run_id: ti.run_id.clone(),
                    task_id: ti.task_id.clone(),
                };
                let mut change = TaskChange::new(key, transition, Utc::now());
                change.reason = Some("the task is no longer in the DAG file".into());
                Some(change)
            })
            .collect();
        if !removed.is_empty() {
            tracing::warn!(dag_id = %dag.dag_id, %run_id, tasks = removed.len(), "tasks removed from the DAG file since the run was created: their unfinished instances are cancelled");
            self.store.transitions(&removed).await?;
        }
        let mut instances = Vec::with_capacity(dag.tasks.len());
        for task in &dag.tasks {
            match by_id.get(&task.id) {
                Some(ti) => instances.push(ti.clone()),
                None => {
                    return Err(ExecutorError::DagMismatch {
                        dag_id: dag.dag_id.clone(),
                        run_id: run_id.to_string(),
                        task_id: task.id.clone(),
                    })
                }
            }
        }
        if matches!(self.placement, Placement::Workers { .. }) {
            // Workers' claims keep the DAG's tries within its max_active_tasks.
            self.store
                .set_max_active_tasks(&dag.dag_id, dag.max_active_tasks, Utc::now())
                .await?;
        }
        if run.state == RunState::Queued && self.limit_runs {
            match self
                .store
                .start_run(
                    &self.driver,
                    &dag.dag_id,
                    run_id,
                    dag.max_active_runs,
                    Utc::now(),
                )
                .await?
            {
                Some(started) => run = started,
                None => {
                    // Another scheduler started one of the DAG's runs meanwhile: this one
                    // waits for a free place.
                    self.store
                        .release_run(&dag.dag_id, run_id, &self.driver)
                        .await?;
                    return Ok(run);
                }
            }
        }
        if run.state == RunState::Queued {
            run = self
                .store
                .set_run_state_as(
                    &self.driver,
                    &dag.dag_id,
                    run_id,
                    RunState::Queued,
                    RunState::Running,
                    Utc::now(),
                )
                .await?;
        }
        let driver = RunDriver {
            executor: self,
            dag,
            run,
            instances,
            lease_ends: claimed_at + self.lease,
            running: HashMap::new(),
            interrupted: Default::default(),
            stop: None,
            stopping: HashMap::new(),
            outage: None,
        };
        // Everything the driver logs names its run (JSON logs carry the span's fields).
        let span = tracing::info_span!("run", dag_id = %driver.dag.dag_id, run_id = %run_id);
        driver.drive(cancel).instrument(span).await
    }
}

impl RunDriver<'_> {
    fn key(&self, task: usize) -> TaskKey {
        TaskKey {
            dag_id: self.dag.dag_id.clone(),
            run_id: self.run.run_id.clone(),
            task_id: self.dag.tasks[task].id.clone(),
        }
    }

    /// Persists changes of this run's tasks in one store call (the state machine approves
    /// each first), then updates the local view: a pass's try ends, decisions and starts
    /// cost one round trip, not one per task. A task may change more than once (queued,
    /// then running): each change is checked against the state the previous one leaves.
    async fn apply_all(&mut self, planned: Vec<Planned>) -> Result<(), ExecutorError> {
        if planned.is_empty() {
            return Ok(());
        }
        // A driver that stalled past its lease checks that the run is still its own before
        // writing (another may have taken it over); the try-number fence in the store covers
        // a stall during the write itself.
        if tokio::time::Instant::now() >= self.lease_ends {
            self.renew_lease(true).await?;
        }
        let now = Utc::now();
        let mut states: Vec<TaskState> = self.instances.iter().map(|ti| ti.state).collect();
        // The try each change is made at (a start in the same batch moves it on).
        let mut tries: Vec<u32> = self.instances.iter().map(|ti| ti.try_number).collect();
        let mut changes = Vec::with_capacity(planned.len());
        let mut froms = Vec::with_capacity(planned.len());
        for p in &planned {
            let from = states[p.task];
            let transition = from.to(p.to).map_err(|e| StoreError::Conflict {
                what: self.key(p.task).to_string(),
                expected: e.from.to_string(),
                found: format!("a state from which {} is illegal", e.to),
            })?;
            states[p.task] = p.to;
            froms.push(from);
            changes.push(TaskChange {
                key: self.key(p.task),
                transition,
                at: p.at.unwrap_or(now),
                reason: p.reason.clone(),
                output: p.output.clone(),
                next_retry_at: p.next_retry_at,
                max_tries: p.max_tries,
                fence: Some(Fence {
                    driver: self.executor.driver.clone(),
                    try_number: tries[p.task],
                }),
                queue: (p.to == TaskState::Queued && self.dispatches())
                    .then(|| self.dag.tasks[p.task].queue.clone()),
                hostname: transition.starts_try().then(|| self.executor.host.clone()),
            });
            if transition.starts_try() {
                tries[p.task] += 1;
            }
        }
        match self.write(changes.clone()).await {
            Ok(()) => {
                if self.dispatches() && changes.iter().any(|c| c.queue.is_some()) {
                    // Workers claim at once instead of at their next poll.
                    let _ = self
                        .executor
                        .store
                        .notify(crate::store::Wake::Queued, "")
                        .await;
                }
            }
            Err(ExecutorError::Store(StoreError::Conflict { what, found, .. }))
                if self.dispatches() =>
            {
                // A worker moved an instance meanwhile (claimed a try being cancelled, ended
                // one being taken back): the store is read again and the next pass decides
                // from what is there.
                tracing::debug!(%what, %found, "a worker changed the run meanwhile; reading it again");
                self.follow_workers(None).await?;
                return Ok(());
            }
            Err(error) => return Err(error),
        }
        let mut notices = Vec::new();
        for ((p, from), change) in planned.into_iter().zip(froms).zip(changes) {
            let ti = &mut self.instances[p.task];
            ti.apply(&change);
            tracing::info!(task_id = %ti.task_id, try_number = ti.try_number, from = %from, to = %p.to, reason = p.reason.as_deref().unwrap_or(""), "task state");
            // An interruption (a shutdown, an outage's deadline) is no retry of the task's own.
            let interrupted = p.to == TaskState::UpForRetry && p.max_tries.is_some();
            if !interrupted {
                crate::metrics::metrics().task_changed(
                    &ti.dag_id,
                    &ti.task_id,
                    p.to,
                    ti.queued_at,
                    // A try's duration only for a try that ran (not a clear's leftover start).
                    ti.started_at.filter(|_| from == TaskState::Running),
                    change.at,
                );
            }
            if p.to == TaskState::Success {
                crate::metrics::metrics().check_results(&ti.dag_id, &ti.task_id, p.output.as_ref());
            }
            notices.extend(
                crate::notify::for_task(
                    &self.dag.notify,
                    &self.dag.tasks[p.task].notify,
                    &self.run,
                    &ti.task_id,
                    ti.try_number,
                    ti.max_tries,
                    p.to,
                    p.reason.as_deref(),
                    p.output.as_ref(),
                    change.at,
                )
                .into_iter()
                .filter(|_| !interrupted),
            );
            if let Some(observer) = &self.executor.observer {
                let _ = observer.send(Progress {
                    task_id: ti.task_id.clone(),
                    try_number: ti.try_number,
                    from,
                    to: p.to,
                    at: change.at,
                    reason: p.reason,
                });
            }
        }
        self.executor.enqueue(&notices).await;
        Ok(())
    }

    /// Writes `changes`, waiting out a store outage while the tries run on. A write whose
    /// connection broke may have landed, whole or in part (even after the read that follows
    /// it: a commit in flight): before each retry, and when a retry meets a conflict, the
    /// run's task instances are read back and the changes they already show are dropped, so
    /// none is applied twice or taken for a conflict. A lease that lapsed during the outage is
    /// claimed again before the retry (or the driver stops: another took the run). Past the
    /// outage deadline the running tries are stopped (they end as interrupted, without using
    /// up a retry, once the store answers).
    async fn write(&mut self, changes: Vec<TaskChange>) -> Result<(), ExecutorError> {
        let mut pending = changes;
        let mut retried = false;
        let mut reconciled = 0;
        loop {
            let store = self.executor.store.clone();
            let began = tokio::time::Instant::now();
            match self.answered(began, store.transitions(&pending)).await {
                Ok(()) => {
                    crate::metrics::metrics().store_call("transitions", began.elapsed());
                    self.store_answers();
                    return Ok(());
                }
                // After a broken write, a conflict may be that write's own commit landing late.
                Err(error @ StoreError::Conflict { .. }) if retried && reconciled < 3 => {
                    reconciled += 1;
                    tracing::debug!(%error, "a retried write met a conflict; reading the run back");
                }
                Err(error) if error.is_transient() => self.outage_wait(&error, began).await?,
                Err(error) => return Err(error.into()),
            }
            retried = true;
            if tokio::time::Instant::now() >= self.lease_ends {
                self.renew_lease(true).await?;
            }
            let (dag_id, run_id) = (self.dag.dag_id.clone(), self.run.run_id.clone());
            let current = loop {
                let began = tokio::time::Instant::now();
                match self
                    .answered(began, store.task_instances(&dag_id, &run_id))
                    .await
                {
                    Ok(current) => break current,
                    Err(error) if error.is_transient() => self.outage_wait(&error, began).await?,
                    Err(error) => return Err(error.into()),
                }
            };
            pending = not_landed(pending, &current)?;
            if pending.is_empty() {
                return Ok(());
            }
        }
    }

    /// One wait of a store outage that began at `outage` (set on its first failure): logs its
    /// start, stops the run's tries once it outlasts the deadline (they end as interrupted
    /// when the store answers), and gives up with `error` when the process shuts down (the
    /// run stays `running` for the next driver).
    async fn outage_wait(
        &mut self,
        error: &StoreError,
        began: tokio::time::Instant,
    ) -> Result<(), ExecutorError> {
        let since = self.outage_noticed(error, began);
        if self.executor.shutdown.is_cancelled() {
            return Err(ExecutorError::Store(StoreError::Unavailable {
                what: "write task states",
                message: format!("the process is shutting down during a store outage: {error}"),
            }));
        }
        // Backoff: 50 ms growing to 2 s over the outage.
        let waited = since.elapsed().as_millis() as u64;
        let backoff = Duration::from_millis((50 + waited / 4).min(2000));
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = self.executor.shutdown.cancelled() => {}
        }
        Ok(())
    }

    /// Notes that the store failed with a transient `error` on a call that `began` then (the
    /// outage counts from there: a call may wait for a connection before it fails): logs the
    /// outage's start, and stops the run's tries once it outlasts the deadline (they end as
    /// interrupted when the store answers). Returns when the outage began.
    fn outage_noticed(
        &mut self,
        error: &StoreError,
        began: tokio::time::Instant,
    ) -> tokio::time::Instant {
        let deadline = self.executor.outage_deadline;
        let since = match self.outage {
            Some(since) => since,
            None => {
                tracing::warn!(dag_id = %self.dag.dag_id, run_id = %self.run.run_id, %error, deadline_s = deadline.as_secs(), "the metadata store does not answer; waiting it out while the run's tries go on");
                *self.outage.insert(began)
            }
        };
        if since.elapsed() >= deadline && self.interrupted.len() < self.running.len() {
            tracing::error!(dag_id = %self.dag.dag_id, run_id = %self.run.run_id, tries = self.running.len(), "the metadata store outage outlasted its deadline: the run's tries are stopped and run again once it answers");
            for (task, token) in &self.running {
                self.interrupted.insert(*task);
                token.cancel();
            }
        }
        since
    }

    /// Awaits a store call that `began` then. A call that has not answered by the outage
    /// deadline (counted from the outage's start if one is known) stops the run's tries
    /// meanwhile: a store that hangs is an outage as much as one that refuses.
    async fn answered<T>(
        &mut self,
        began: tokio::time::Instant,
        call: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        tokio::pin!(call);
        let deadline = self.outage.unwrap_or(began) + self.executor.outage_deadline;
        tokio::select! {
            answer = &mut call => return answer,
            _ = tokio::time::sleep_until(deadline) => {}
        }
        let hung = StoreError::Unavailable {
            what: "a store call",
            message: "no answer within the outage deadline".into(),
        };
        self.outage_noticed(&hung, began);
        call.await
    }

    /// The store answered: an outage, if there was one, is over.
    fn store_answers(&mut self) {
        if let Some(since) = self.outage.take() {
            tracing::info!(dag_id = %self.dag.dag_id, run_id = %self.run.run_id, waited_ms = since.elapsed().as_millis() as u64, "the metadata store answers again; the run goes on");
        }
    }

    /// Whether this run's tries go to workers.
    fn dispatches(&self) -> bool {
        matches!(self.executor.placement, Placement::Workers { .. })
    }

    /// Reads the run's task instances back (workers start and end tries) and returns the
    /// ends of tries whose worker stopped heartbeating: retried like a crashed try.
    /// `heartbeat_timeout: None` only reads the instances back.
    async fn follow_workers(
        &mut self,
        heartbeat_timeout: Option<Duration>,
    ) -> Result<Vec<Planned>, ExecutorError> {
        let store = self.executor.store.clone();
        let (dag_id, run_id) = (self.dag.dag_id.clone(), self.run.run_id.clone());
        let current = crate::store::outage::ride_out(
            self.executor.outage_deadline,
            "read the run's task states",
            || store.task_instances(&dag_id, &run_id),
        )
        .await?;
        let now = Utc::now();
        let silent_since = heartbeat_timeout
            .and_then(|t| chrono::Duration::from_std(t).ok())
            .and_then(|t| now.checked_sub_signed(t));
        let mut dead = Vec::new();
        for ti in current {
            let Some(task) = self.dag.task_index(&ti.task_id) else {
                continue;
            };
            let silent = silent_since.is_some_and(|since| {
                ti.state == TaskState::Running
                    && ti.worker.is_some()
                    && ti.heartbeat_at.is_none_or(|at| at < since)
            });
            if silent {
                let outcome = TryOutcome::Failure {
                    kind: FailureKind::Retryable,
                    message: format!(
                        "worker {} on {} stopped heartbeating (last at {})",
                        ti.worker.as_deref().unwrap_or("?"),
                        ti.hostname.as_deref().unwrap_or("?"),
                        ti.heartbeat_at
                            .map(|t| t.to_rfc3339())
                            .unwrap_or_else(|| "never".into())
                    ),
                };
                dead.push(try_ending(
                    task,
                    &ti,
                    &self.dag.tasks[task].retry,
                    outcome,
                    Ending::Normal,
                    now,
                ));
            }
            self.instances[task] = ti;
        }
        Ok(dead)
    }

    /// Extends this driver's lease on the run; `LeaseLost` if another process holds it now.
    /// With `outage`, a store that does not answer is waited for (a write needs the lease);
    /// without, its error is returned (the periodic renewal tries again later).
    async fn renew_lease(&mut self, wait_out: bool) -> Result<(), ExecutorError> {
        let (dag_id, run_id) = (self.dag.dag_id.clone(), self.run.run_id.clone());
        let (store, driver, lease) = (
            self.executor.store.clone(),
            self.executor.driver.clone(),
            self.executor.lease,
        );
        let (claimed, asked) = loop {
            // The lease runs from when this claim was sent, not from when it was answered.
            let asked = tokio::time::Instant::now();
            let now = Utc::now();
            let until = now + chrono::Duration::from_std(lease).unwrap_or_default();
            let claim = store.claim_run(&dag_id, &run_id, &driver, until, now);
            let answer = if wait_out {
                self.answered(asked, claim).await
            } else {
                claim.await
            };
            match answer {
                Ok(claimed) => break (claimed, asked),
                Err(error) if error.is_transient() && wait_out => {
                    self.outage_wait(&error, asked).await?
                }
                Err(error) => return Err(error.into()),
            }
        };
        if !claimed {
            // Another driver took the run during a stall or an outage: its tries are not ours.
            for token in self.running.values() {
                token.cancel();
            }
            return Err(ExecutorError::LeaseLost { dag_id, run_id });
        }
        self.lease_ends = asked + lease;
        self.store_answers();
        Ok(())
    }

    fn views(&self) -> Vec<TaskView> {
        self.instances
            .iter()
            .map(|ti| TaskView {
                state: ti.state,
                next_retry_at: ti.next_retry_at,
            })
            .collect()
    }

    fn context(
        &self,
        task: usize,
        try_number: u32,
        log: TaskLog,
        cancel: CancellationToken,
    ) -> TaskContext {
        self.executor.try_context(
            &self.dag,
            &self.run,
            &self.instances,
            task,
            try_number,
            log,
            cancel,
        )
    }

    /// Starts the try of a task already `running` in the store.
    fn spawn_try(
        &self,
        task: usize,
        permit: slots::SlotGuard,
        done: &mpsc::UnboundedSender<Finished>,
        run_cancel: &CancellationToken,
    ) -> CancellationToken {
        let ti = &self.instances[task];
        let key = self.key(task);
        let spec = &self.dag.tasks[task];
        let (log, masker) = self.executor.try_log(&self.dag, &self.run, task, ti);
        let cancel = run_cancel.child_token();
        let ctx = self.context(task, ti.try_number, log.clone(), cancel.clone());
        let route = trylog::route(log);
        let span = tracing::info_span!("try", dag_id = %key.dag_id, run_id = %key.run_id, task_id = %key.task_id, try_number = ti.try_number, try_log = route.id());
        let operator = spec.operator.clone();
        let timeout = spec.execution_timeout;
        let done = done.clone();
        let work = self
            .executor
            .shipping_log(&key, ti.try_number, run_try(operator, ctx, timeout));
        tokio::spawn(
            async move {
                let outcome = work.await.masked(&masker);
                drop(route);
                // The slot stays taken until the executor has persisted the try's end.
                let _ = done.send(Finished {
                    task,
                    outcome,
                    at: Utc::now(),
                    slot: permit,
                });
            }
            .instrument(span),
        );
        cancel
    }

    /// Drives the run; on an error, stops the tries it started before returning, so nobody
    /// later finds them `running` while they still run. Gives up the run's lease at the end.
    async fn drive(mut self, cancel: CancellationToken) -> Result<DagRun, ExecutorError> {
        // The driver cancels the run itself when someone stops it.
        let cancel = cancel.child_token();
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Finished>();
        let result = self.drive_loop(&cancel, &done_tx, &mut done_rx).await;
        if result.is_err() && !self.running.is_empty() {
            for token in self.running.values() {
                token.cancel();
            }
            let deadline = tokio::time::Instant::now() + STOP_GRACE + Duration::from_secs(1);
            while !self.running.is_empty() {
                match tokio::time::timeout_at(deadline, done_rx.recv()).await {
                    Ok(Some(Finished { task, .. })) => {
                        self.running.remove(&task);
                    }
                    _ => break,
                }
            }
        }
        let (dag_id, run_id) = (&self.dag.dag_id, &self.run.run_id);
        if let Err(error) = self
            .executor
            .store
            .release_run(dag_id, run_id, &self.executor.driver)
            .await
        {
            tracing::warn!(%dag_id, %run_id, %error, "could not release the run; its lease expires by itself");
        }
        result
    }

    /// Kills the process groups that tries of this run left when their process died, and
    /// forgets them.
    async fn stop_leftovers(&self) -> Result<(), ExecutorError> {
        let store = &self.executor.store;
        let leftovers = store.processes(&self.dag.dag_id, &self.run.run_id).await?;
        let host = processes::hostname();
        for process in leftovers {
            // A worker's running try is its own: alive or not, its heartbeat decides.
            let workers = self.instances.iter().any(|ti| {
                ti.task_id == process.key.task_id
                    && ti.state == TaskState::Running
                    && ti.worker.is_some()
            });
            if workers {
                continue;
            }
            let task_id = &process.key.task_id;
            match processes::stop_leftover(&process, &host) {
                processes::Leftover::Killed => {
                    tracing::warn!(%task_id, pgid = process.pgid, try_number = process.try_number, "killed the process group a died try left running")
                }
                processes::Leftover::Gone => {}
                processes::Leftover::Elsewhere => {
                    tracing::warn!(%task_id, pgid = process.pgid, host = %process.host, "a died try's process group may still run on another machine")
                }
            }
            if process.host == host {
                store
                    .forget_process(&process.key, &process.host, process.pgid)
                    .await?;
            }
        }
        Ok(())
    }

    async fn drive_loop(
        &mut self,
        cancel: &CancellationToken,
        done_tx: &mpsc::UnboundedSender<Finished>,
        done_rx: &mut mpsc::UnboundedReceiver<Finished>,
    ) -> Result<DagRun, ExecutorError> {
        // Tries still `running` in the store belong to a process that died: first stop what
        // they left running (a retry never runs next to the original), then count them as
        // failed tries.
        self.stop_leftovers().await?;
        let now = Utc::now();
        // A worker's try is not this process's: its heartbeat says whether it lives.
        let died: Vec<Planned> = (0..self.instances.len())
            .filter(|&task| {
                self.instances[task].state == TaskState::Running
                    && self.instances[task].worker.is_none()
            })
            .map(|task| {
                let outcome = TryOutcome::Failure {
                    kind: FailureKind::Retryable,
                    message: "the process running this try died".into(),
                };
                try_ending(
                    task,
                    &self.instances[task],
                    &self.dag.tasks[task].retry,
                    outcome,
                    Ending::Normal,
                    now,
                )
            })
            .collect();
        self.apply_all(died).await?;
        let mut mode = Mode::Running;
        // The lease is renewed at a third of its length, so a slow store round trip never lets it lapse.
        let mut renew = tokio::time::interval(self.executor.lease / 3);
        renew.tick().await;
        // A global slot taken while waiting in line for it, kept for the next pass.
        let mut spare: Option<tokio::sync::OwnedSemaphorePermit> = None;
        let shutdown = self.executor.shutdown.clone();
        let slots = self.executor.slots.clone();
        let mut released = slots.subscribe();
        // Tries that ended and are not written yet: written with the pass they wake.
        let mut ended: Vec<Planned> = Vec::new();
        // With workers, the run is followed in the store.
        let (follow, heartbeat_timeout) = match self.executor.placement {
            Placement::Workers {
                poll,
                heartbeat_timeout,
            } => (Some(poll), heartbeat_timeout),
            Placement::Local => (None, Duration::MAX),
        };
        // Workers' notifications wake the driver when one of its tries ended; the poll only
        // covers a lost notification then.
        let mut ended_events = match follow {
            Some(_) => self.executor.ended_events().await,
            None => None,
        };
        let follow = follow.map(|poll| {
            if ended_events.is_some() {
                poll.max(Duration::from_secs(1))
            } else {
                poll
            }
        });
        let me = format!("{}/{}", self.dag.dag_id, self.run.run_id);
        let mut follow_tick = tokio::time::interval(follow.unwrap_or(Duration::from_secs(3600)));
        follow_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Stop requests (CLI, API, UI) are looked for every STOP_POLL; a run shorter than
        // that never pays for a look.
        let mut stop_tick = tokio::time::interval(STOP_POLL);
        stop_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        stop_tick.tick().await;
        loop {
            let next = mode.next(cancel, &shutdown, self.executor.shutdown_grace);
            if next == Mode::Cancelling && mode != Mode::Cancelling {
                for token in self.running.values() {
                    token.cancel();
                }
            }
            mode = next;
            let mut short = Shortage::default();
            match mode {
                Mode::Stopping { .. } => {
                    self.apply_all(std::mem::take(&mut ended)).await?;
                    if self.running.is_empty() {
                        // Leave the run `running`: whoever drives it next resumes it.
                        let run = self
                            .executor
                            .store
                            .run(&self.dag.dag_id, &self.run.run_id)
                            .await?;
                        return Ok(run.unwrap_or_else(|| self.run.clone()));
                    }
                }
                Mode::Cancelling => self.cancel_pass(std::mem::take(&mut ended)).await?,
                Mode::Running => {
                    released.mark_unchanged();
                    let plan = std::mem::take(&mut ended);
                    short = self.start_pass(plan, &mut spare, done_tx, cancel).await?;
                }
            }
            let all_finished = self.instances.iter().all(|ti| ti.state.is_finished());
            if all_finished && self.running.is_empty() {
                break;
            }
            if !short.global {
                // A global slot kept while only DAG or pool limits block would sit idle.
                spare = None;
            }
            let wakeup = match mode {
                Mode::Running => next_wakeup(&self.views()),
                Mode::Cancelling | Mode::Stopping { .. } => None,
            };
            let sleep_for = wakeup.map(|at| (at - Utc::now()).to_std().unwrap_or_default());
            let grace_over = match mode {
                Mode::Stopping { grace_over } => Some(grace_over),
                _ => None,
            };
            // A run past its dagrun_timeout (counted from its start) is stopped and fails.
            let timeout_left = self.dag.dagrun_timeout.map(|limit| {
                let started = self.run.started_at.unwrap_or_else(Utc::now);
                let deadline = chrono::Duration::from_std(limit)
                    .ok()
                    .and_then(|l| started.checked_add_signed(l))
                    .unwrap_or(DateTime::<Utc>::MAX_UTC);
                (deadline - Utc::now()).to_std().unwrap_or_default()
            });
            tokio::select! {
                Some(first) = done_rx.recv() => {
                    // Tries that ended meanwhile are recorded together, with the pass they wake.
                    let mut done = vec![first];
                    while let Ok(next) = done_rx.try_recv() {
                        done.push(next);
                    }
                    for Finished { task, outcome, at, slot } in done {
                        self.running.remove(&task);
                        let stopped = self.stopping.remove(&task);
                        let ending = if self.interrupted.remove(&task) {
                            Ending::Interrupted
                        } else if mode == Mode::Cancelling || cancel.is_cancelled() {
                            Ending::Cancelling
                        } else if stopped.is_some() {
                            Ending::Stopped
                        } else {
                            Ending::Normal
                        };
                        let mut planned = Planned { at: Some(at), ..try_ending(task, &self.instances[task], &self.dag.tasks[task].retry, outcome, ending, at) };
                        if let Some(reason) = stopped.or_else(|| self.stop_reason()).filter(|_| planned.to != TaskState::Success) {
                            planned.reason = Some(reason);
                        }
                        ended.push(planned);
                        // The slot is free now: the end is written, with the time it happened,
                        // before (or with) the start of any try that takes the slot in this run.
                        drop(slot);
                    }
                }
                _ = shutdown.cancelled(), if mode == Mode::Running => {}
                _ = tokio::time::sleep_until(grace_over.unwrap_or_else(tokio::time::Instant::now)), if grace_over.is_some() && self.interrupted.len() < self.running.len() => {
                    for (task, token) in self.running.iter() {
                        self.interrupted.insert(*task);
                        token.cancel();
                    }
                }
                permit = slots.global().acquire_owned(), if short.global && spare.is_none() => {
                    spare = permit.ok();
                }
                _ = released.changed(), if short.other => {}
                event = async {
                    match ended_events.as_mut() {
                        Some(events) => events.recv().await,
                        None => std::future::pending().await,
                    }
                } => {
                    use tokio::sync::broadcast::error::RecvError;
                    let mut mine = match event {
                        Ok(run) => run == me,
                        // Notifications were missed: one may have been this run's.
                        Err(RecvError::Lagged(_)) => true,
                        Err(RecvError::Closed) => {
                            ended_events = None;
                            false
                        }
                    };
                    // The ends that arrived meanwhile share one read of the run.
                    while let Some(Ok(run)) = ended_events.as_mut().map(|e| e.try_recv()) {
                        mine |= run == me;
                    }
                    if mine {
                        let dead = self.follow_workers(Some(heartbeat_timeout)).await?;
                        ended.extend(dead);
                    }
                }
                _ = stop_tick.tick(), if mode == Mode::Running => {
                    self.take_stops(cancel).await?;
                }
                _ = tokio::time::sleep(timeout_left.unwrap_or_default()), if mode == Mode::Running && timeout_left.is_some() => {
                    let limit = self.dag.dagrun_timeout.unwrap_or_default();
                    tracing::warn!(dag_id = %self.dag.dag_id, run_id = %self.run.run_id, "the run is over its dagrun_timeout: stopping it");
                    self.stop = Some(crate::store::StopRequest {
                        dag_id: self.dag.dag_id.clone(),
                        run_id: self.run.run_id.clone(),
                        task_id: None,
                        requested_by: format!("its dagrun_timeout ({})", humantime::format_duration(limit)),
                        requested_at: Utc::now(),
                        run_ends: RunState::Failed,
                    });
                    cancel.cancel();
                }
                _ = follow_tick.tick(), if follow.is_some() => {
                    let dead = self.follow_workers(Some(heartbeat_timeout)).await?;
                    ended.extend(dead);
                }
                _ = renew.tick() => {
                    match self.renew_lease(false).await {
                        // A store that does not answer is waited out (the outage's deadline
                        // counts from here too); a lapsed lease is claimed again by the next
                        // write, or found taken.
                        Err(ExecutorError::Store(error)) if error.is_transient() => {
                            // The renewal was sent a moment ago.
                            self.outage_noticed(&error, tokio::time::Instant::now());
                        }
                        other => other?,
                    }
                }
                _ = tokio::time::sleep(sleep_for.unwrap_or_default()), if sleep_for.is_some() => {}
                _ = cancel.cancelled(), if mode != Mode::Cancelling => {}
            }
        }
        let outcome = if mode == Mode::Cancelling {
            self.stop
                .as_ref()
                .map_or(RunState::Cancelled, |s| s.run_ends)
        } else {
            run_outcome(self.instances.iter().map(|ti| ti.state))
        };
        let ended = Utc::now();
        let store = self.executor.store.clone();
        let (driver, dag_id, run_id) = (
            self.executor.driver.clone(),
            self.dag.dag_id.clone(),
            self.run.run_id.clone(),
        );
        // Waited out like any write (no tries run any more); a shutdown leaves the run
        // `running`, and the next driver finds every task finished and ends it.
        let run = loop {
            let began = tokio::time::Instant::now();
            let write = store.set_run_state_as(
                &driver,
                &dag_id,
                &run_id,
                RunState::Running,
                outcome,
                ended,
            );
            match self.answered(began, write).await {
                Err(error) if error.is_transient() => self.outage_wait(&error, began).await?,
                other => break other,
            }
        };
        let (dag_id, run_id) = (&dag_id, &run_id);
        if let Ok(run) = &run {
            crate::metrics::metrics().run_ended(run);
            // Requests that came too late to matter must not stop a later attempt.
            self.forget_stops().await;
            self.notify_end(run).await;
        }
        match run {
            Ok(run) => Ok(run),
            // An earlier try of this write landed before its connection broke.
            Err(StoreError::Conflict { .. }) => match store.run(dag_id, run_id).await? {
                Some(run) if run.state == outcome => Ok(run),
                _ => Err(StoreError::Conflict {
                    what: format!("run {dag_id}/{run_id}"),
                    expected: RunState::Running.to_string(),
                    found: "another state".into(),
                }
                .into()),
            },
            Err(error) => Err(error.into()),
        }
    }

    /// A pass of a cancelled run: the ends that came in, and every task that has not started
    /// cancelled.
    async fn cancel_pass(&mut self, mut plan: Vec<Planned>) -> Result<(), ExecutorError> {
        plan.extend(
            (0..self.instances.len())
                .filter(|&task| {
                    let ti = &self.instances[task];
                    // A worker's running try is cancelled in the store: its worker sees it at
                    // its next heartbeat and stops the try.
                    matches!(
                        ti.state,
                        TaskState::Pending | TaskState::Queued | TaskState::UpForRetry
                    ) || (ti.state == TaskState::Running && ti.worker.is_some())
                })
                .map(|task| Planned {
                    reason: Some(self.stop_reason().unwrap_or_else(|| "run cancelled".into())),
                    ..Planned::to(task, TaskState::Cancelled)
                }),
        );
        self.apply_all(plan).await
    }

    /// Why the run's tries end, when someone stopped the whole run.
    fn stop_reason(&self) -> Option<String> {
        self.stop
            .as_ref()
            .map(|s| format!("run stopped by {}", s.requested_by))
    }

    /// Acts on the run's stop requests: the whole run (its loop cancels it), or one task: a
    /// running try is stopped and ends failed, a task that has not started is cancelled. A
    /// request is removed once its task has ended (the run's, once the run has), so a driver
    /// that resumes the run after this one died acts on it again.
    async fn take_stops(&mut self, cancel: &CancellationToken) -> Result<(), ExecutorError> {
        let store = self.executor.store.clone();
        let began = tokio::time::Instant::now();
        let (dag_id, run_id) = (self.dag.dag_id.clone(), self.run.run_id.clone());
        let asked = store.stop_requests(&dag_id, &run_id);
        let requests = match self.answered(began, asked).await {
            Ok(requests) => requests,
            // An outage like any other (its deadline counts from here); looked for again at
            // the next tick.
            Err(error) if error.is_transient() => {
                self.outage_noticed(&error, began);
                return Ok(());
            }
            Err(error) => return Err(error.into()),
        };
        for request in requests {
            let Some(task_id) = &request.task_id else {
                if self.stop.is_none() {
                    tracing::info!(dag_id = %self.dag.dag_id, run_id = %self.run.run_id, by = %request.requested_by, "stopping the run");
                    self.stop = Some(request);
                    cancel.cancel();
                }
                continue;
            };
            let Some(task) = self.dag.task_index(task_id) else {
                self.forget_stop(&request).await;
                continue;
            };
            if self.stopping.contains_key(&task) {
                continue;
            }
            let reason = format!("stopped by {}", request.requested_by);
            let ti = &self.instances[task];
            let change = match ti.state {
                TaskState::Running => match self.running.get(&task) {
                    Some(token) => {
                        // Its end, when the try has stopped, records the reason.
                        token.cancel();
                        self.stopping.insert(task, reason);
                        continue;
                    }
                    // A worker's try: its worker sees at its next heartbeat that the try is
                    // no longer its own and stops it.
                    None => Some(TaskState::Failed),
                },
                TaskState::Pending | TaskState::Queued | TaskState::UpForRetry => {
                    Some(TaskState::Cancelled)
                }
                _ => None,
            };
            if let Some(to) = change {
                self.apply_all(vec![Planned {
                    reason: Some(reason),
                    ..Planned::to(task, to)
                }])
                .await?;
                // A worker claimed or ended it meanwhile (the write met a conflict and the run
                // was read again): the next look decides from where it stands now.
                if self.instances[task].state != to && !self.instances[task].state.is_finished() {
                    continue;
                }
            }
            self.forget_stop(&request).await;
        }
        Ok(())
    }

    /// Removes a request the driver acted on; a store that does not answer only means the
    /// request is looked at again (acting on it twice changes nothing).
    async fn forget_stop(&self, request: &crate::store::StopRequest) {
        if let Err(error) = self.executor.store.forget_stop(request).await {
            tracing::debug!(%error, "could not remove a stop request; it is looked at again");
        }
    }

    /// Queues the notifications of the run's end and, again, those of its tasks' ends as
    /// the history has them: one lost between a write and its queuing (a crash, a store that
    /// failed) is queued now; those already queued are left as they are (same ids).
    async fn notify_end(&self, run: &DagRun) {
        let notify = &self.dag.notify;
        let event = match run.state {
            RunState::Success => Some(crate::notify::Event::RunSucceeded),
            RunState::Failed => Some(crate::notify::Event::RunFailed),
            _ => None,
        };
        let mut notices = event
            .map(|e| crate::notify::for_run(notify, run, e, Utc::now()))
            .unwrap_or_default();
        // A run that ended past its SLA before a scheduler looked missed it all the same.
        let late = crate::scheduler::plan::sla_deadline(&self.dag, run)
            .zip(run.ended_at)
            .is_some_and(|(deadline, ended)| ended > deadline);
        if late && run.sla_missed_at.is_none() {
            let store = &self.executor.store;
            if let Ok(true) = store
                .mark_sla_missed(&run.dag_id, &run.run_id, Utc::now())
                .await
            {
                crate::metrics::metrics()
                    .sla_misses
                    .get_or_create(&crate::metrics::DagLabels {
                        dag_id: run.dag_id.clone(),
                    })
                    .inc();
                notices.extend(crate::notify::for_run(
                    notify,
                    run,
                    crate::notify::Event::SlaMissed,
                    Utc::now(),
                ));
            }
        }
        let listens = self.dag.tasks.iter().any(|t| {
            !(t.notify.on_failure.is_empty()
                && t.notify.on_retry.is_empty()
                && t.notify.on_success.is_empty())
        });
        if listens {
            if let Ok(history) = self.executor.store.history(&run.dag_id, &run.run_id).await {
                for change in history {
                    let Some(task) = self.dag.task(&change.task_id) else {
                        continue;
                    };
                    // Interruptions are not the task's retries (see apply_all).
                    if change
                        .reason
                        .as_deref()
                        .is_some_and(|r| r.contains("interrupted"))
                    {
                        continue;
                    }
                    let max_tries = self
                        .instances
                        .iter()
                        .find(|ti| ti.task_id == change.task_id)
                        .map_or(change.try_number, |ti| ti.max_tries);
                    notices.extend(crate::notify::for_task(
                        notify,
                        &task.notify,
                        run,
                        &change.task_id,
                        change.try_number,
                        max_tries,
                        change.to,
                        change.reason.as_deref(),
                        None,
                        change.at,
                    ));
                }
            }
        }
        self.executor.enqueue(&notices).await;
    }

    /// Removes the run's stop requests once it has ended (best effort: they go with the run).
    async fn forget_stops(&self) {
        let store = &self.executor.store;
        let Ok(requests) = store
            .stop_requests(&self.dag.dag_id, &self.run.run_id)
            .await
        else {
            return;
        };
        for request in requests {
            let _ = store.forget_stop(&request).await;
        }
    }

    /// A pass of a running run, written as one request: the ends that came in (`plan`), the
    /// decisions they lead to, and the starts of queued tasks in topological order while they
    /// get slots (global, this DAG's max_active_tasks across its runs, their pool). Returns
    /// which slots were short.
    async fn start_pass(
        &mut self,
        mut plan: Vec<Planned>,
        spare: &mut Option<tokio::sync::OwnedSemaphorePermit>,
        done_tx: &mpsc::UnboundedSender<Finished>,
        cancel: &CancellationToken,
    ) -> Result<Shortage, ExecutorError> {
        let slots = self.executor.slots.clone();
        let mut view = self.views();
        overlay(&mut view, &plan);
        let decided: Vec<Planned> = decide(&self.dag, &view, Utc::now())
            .into_iter()
            .map(Planned::from)
            .collect();
        overlay(&mut view, &decided);
        plan.extend(decided);
        let mut short = Shortage::default();
        if self.dispatches() {
            // Queued tries wait in their queue for a worker; the store's claim starts them
            // (and keeps each pool within its size). A pool this scheduler was not given
            // fails the task, as in-process.
            for (task, v) in view.iter().enumerate() {
                let undefined = self.dag.tasks[task]
                    .pool
                    .as_deref()
                    .filter(|p| !slots.has_pool(p));
                if let (TaskState::Queued, Some(name)) = (v.state, undefined) {
                    plan.push(Planned::to(task, TaskState::Running));
                    plan.push(Planned {
                        reason: Some(format!(
                            "pool `{name}` is not defined (SLUICE_POOLS=name=size,…)"
                        )),
                        ..Planned::to(task, TaskState::Failed)
                    });
                }
            }
            self.apply_all(plan).await?;
            return Ok(short);
        }
        let mut starts = Vec::new();
        for (task, v) in view.iter().enumerate() {
            if v.state != TaskState::Queued || self.running.contains_key(&task) {
                continue;
            }
            let pool = self.dag.tasks[task].pool.clone();
            if let Some(name) = pool.as_deref().filter(|p| !slots.has_pool(p)) {
                // It cannot start at all: a try that failed for good, so the run ends
                // instead of waiting forever.
                plan.push(Planned::to(task, TaskState::Running));
                plan.push(Planned {
                    reason: Some(format!(
                        "pool `{name}` is not defined (SLUICE_POOLS=name=size,…)"
                    )),
                    ..Planned::to(task, TaskState::Failed)
                });
                continue;
            }
            let guard = match slots.try_acquire(&self.dag, pool.as_deref(), spare) {
                Ok(guard) => guard,
                Err(slots::Short::Global) => {
                    // Wait in line on the semaphore (one waiter woken per release).
                    short.global = true;
                    break;
                }
                Err(slots::Short::DagOrPool) => {
                    // Wait for any release.
                    short.other = true;
                    continue;
                }
            };
            plan.push(Planned::to(task, TaskState::Running));
            starts.push((task, guard));
        }
        // Written before any of these tries starts.
        self.apply_all(plan).await?;
        for (task, guard) in starts {
            let token = self.spawn_try(task, guard, done_tx, cancel);
            self.running.insert(task, token);
        }
        Ok(short)
    }
}

/// What a run's loop is doing; it only moves forward (running → stopping → cancelling).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Deciding and starting tries.
    Running,
    /// The process is shutting down: nothing new starts; running tries have until
    /// `grace_over` to end, then are interrupted, and the run is left for a later resume.
    Stopping { grace_over: tokio::time::Instant },
    /// The run was cancelled: nothing new starts, running tries are stopped, the rest is
    /// cancelled.
    Cancelling,
}

impl Mode {
    /// The mode after looking at the run's cancel signal and the process's shutdown signal
    /// (a cancel wins over a shutdown).
    fn next(
        self,
        cancel: &CancellationToken,
        shutdown: &CancellationToken,
        grace: std::time::Duration,
    ) -> Self {
        match self {
            Mode::Cancelling => Mode::Cancelling,
            _ if cancel.is_cancelled() => Mode::Cancelling,
            Mode::Stopping { grace_over } => Mode::Stopping { grace_over },
            Mode::Running if shutdown.is_cancelled() => Mode::Stopping {
                grace_over: tokio::time::Instant::now() + grace,
            },
            Mode::Running => Mode::Running,
        }
    }
}

/// Which slots a pass was short of.
#[derive(Debug, Clone, Copy, Default)]
struct Shortage {
    /// A global slot (`SLUICE_PARALLELISM`): wait in line on the semaphore.
    global: bool,
    /// A DAG (`max_active_tasks`) or pool slot: wait for any release.
    other: bool,
}

/// The changes of `pending` that `current` (the run's task instances read back after a write
/// failed on a broken connection) does not show yet. A task's changes form a chain (a start
/// then a fail in one batch); the chain is kept from the change whose starting point (state
/// and try) is where the instance stands. An instance that is neither where a change starts
/// nor where the chain ends was moved by someone else: a conflict.
fn not_landed(
    pending: Vec<TaskChange>,
    current: &[TaskInstance],
) -> Result<Vec<TaskChange>, StoreError> {
    let mut keep = Vec::with_capacity(pending.len());
    let mut by_task: Vec<(TaskKey, Vec<TaskChange>)> = Vec::new();
    for change in pending {
        match by_task.iter_mut().find(|(k, _)| *k == change.key) {
            Some((_, chain)) => chain.push(change),
            None => by_task.push((change.key.clone(), vec![change])),
        }
    }
    for (key, chain) in by_task {
        let Some(ti) = current.iter().find(|ti| ti.task_id == key.task_id) else {
            return Err(StoreError::NotFound(key.to_string()));
        };
        // Driver changes carry the try they are made at (their fence).
        let try_before = |c: &TaskChange| c.fence.as_ref().map_or(ti.try_number, |f| f.try_number);
        let last = chain.last().expect("a chain has a change");
        let try_after = try_before(last) + u32::from(last.transition.starts_try());
        if ti.state == last.transition.to() && ti.try_number == try_after {
            continue;
        }
        match chain
            .iter()
            .position(|c| c.transition.from() == ti.state && try_before(c) == ti.try_number)
        {
            Some(from) => keep.extend(chain.into_iter().skip(from)),
            None => {
                return Err(StoreError::Conflict {
                    what: key.to_string(),
                    expected: chain[0].transition.from().to_string(),
                    found: ti.state.to_string(),
                })
            }
        }
    }
    Ok(keep)
}

/// A task instance of run `d`/`r` for the executor's unit tests.
#[cfg(test)]
fn test_instance(task: &str, state: TaskState, try_number: u32, max_tries: u32) -> TaskInstance {
    TaskInstance {
        dag_id: "d".into(),
        run_id: "r".into(),
        task_id: task.into(),
        operator: "noop".into(),
        state,
        try_number,
        max_tries,
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

#[cfg(test)]
mod write_tests {
    use super::*;

    fn instance(task: &str, state: TaskState, try_number: u32) -> TaskInstance {
        test_instance(task, state, try_number, 3)
    }

    fn change(task: &str, from: TaskState, to: TaskState, try_number: u32) -> TaskChange {
        let key = TaskKey {
            dag_id: "d".into(),
            run_id: "r".into(),
            task_id: task.into(),
        };
        let mut change = TaskChange::new(key, from.to(to).unwrap(), Utc::now());
        change.fence = Some(Fence {
            driver: "me".into(),
            try_number,
        });
        change
    }

    fn tasks(changes: &[TaskChange]) -> Vec<(String, TaskState)> {
        changes
            .iter()
            .map(|c| (c.key.task_id.clone(), c.transition.to()))
            .collect()
    }

    #[test]
    fn a_write_that_landed_before_its_connection_broke_is_not_written_again() {
        use TaskState::*;
        // `a` starts then fails for good (one chain), `b` ends, `c` is queued.
        let pending = vec![
            change("a", Queued, Running, 0),
            change("a", Running, Failed, 1),
            change("b", Running, Success, 1),
            change("c", Pending, Queued, 0),
        ];
        // Nothing landed: everything is written again.
        let nothing = [
            instance("a", Queued, 0),
            instance("b", Running, 1),
            instance("c", Pending, 0),
        ];
        assert_eq!(
            tasks(&not_landed(pending.clone(), &nothing).unwrap()),
            tasks(&pending)
        );
        // Everything landed: nothing is.
        let all = [
            instance("a", Failed, 1),
            instance("b", Success, 1),
            instance("c", Queued, 0),
        ];
        assert!(not_landed(pending.clone(), &all).unwrap().is_empty());
        // Half of `a`'s chain and `c` landed (chunks of one batch): the rest is written.
        let part = [
            instance("a", Running, 1),
            instance("b", Running, 1),
            instance("c", Queued, 0),
        ];
        assert_eq!(
            tasks(&not_landed(pending.clone(), &part).unwrap()),
            [("a".to_string(), Failed), ("b".to_string(), Success)]
        );
        // Someone else moved `b` (a user marked it failed): a conflict, not a silent skip.
        let moved = [
            instance("a", Queued, 0),
            instance("b", Failed, 1),
            instance("c", Pending, 0),
        ];
        assert!(matches!(
            not_landed(pending, &moved),
            Err(StoreError::Conflict { .. })
        ));
    }
}
