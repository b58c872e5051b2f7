//! A worker: claims queued tries from the metadata store, runs them, and records how each
//! ended, through the same state machine and fencing as a run's driver.
//!
//! The process driving a run (a scheduler with `--executor workers`) queues each ready try
//! in its task's queue; any number of workers, on any machine, claim them (on PostgreSQL
//! with `FOR UPDATE SKIP LOCKED`), heartbeat them while they run, and write their ends. A
//! worker that stops heartbeating has its tries taken back by the run's driver after the
//! heartbeat timeout; if it comes back, its late writes carry a stale try number and are
//! refused. A try the store no longer shows running under this worker (taken back, the run
//! cancelled) is stopped at the next heartbeat.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use sluice_operator_api::{FailureKind, Registry};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::plan::{try_ending, Ending};
use super::{run_try, Executor, TryOutcome};
use crate::dag::Dag;
use crate::state::TaskState;
use crate::store::{DagRun, Fence, StoreError, TaskChange, TaskInstance, TaskKey, WorkerBeat};

/// What a worker serves and how.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// Its unique name (tries record it).
    pub name: String,
    /// The queues it claims from.
    pub queues: Vec<String>,
    /// Most tries it runs at once.
    pub concurrency: u32,
    /// How often it heartbeats (the scheduler's heartbeat timeout must be several of these).
    pub heartbeat: Duration,
    /// How often it looks for queued tries when it has room.
    pub poll: Duration,
}

/// A worker process's loop (see the module documentation).
pub struct Worker {
    executor: Executor,
    registry: Registry,
    options: WorkerOptions,
    /// DAG versions read from the store, by DAG and hash.
    versions: Mutex<HashMap<(String, String), Arc<Dag>>>,
}

/// A try this worker runs: its task and try number (a task's newer try, claimed after the
/// older was taken back, is another entry).
type Held = (TaskKey, u32);

impl Worker {
    /// A worker running tries with `executor`'s store, connections, logs and artifacts.
    pub fn new(executor: Executor, registry: Registry, options: WorkerOptions) -> Self {
        Self {
            executor,
            registry,
            options,
            versions: Mutex::new(HashMap::new()),
        }
    }

    /// Claims and runs tries until `shutdown` fires; then claims nothing more, gives running
    /// tries the executor's shutdown grace, stops the rest (they end as interrupted and run
    /// again without using up a retry) and returns.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), StoreError> {
        let this = Arc::new(self);
        let started = Utc::now();
        let mut me = WorkerBeat {
            name: this.options.name.clone(),
            hostname: this.executor.host.clone(),
            pid: std::process::id(),
            queues: this.options.queues.clone(),
            concurrency: this.options.concurrency,
            started_at: started,
            heartbeat_at: started,
        };
        let store = this.executor.store.clone();
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Held>();
        let mut running: HashMap<Held, CancellationToken> = HashMap::new();
        // Queued tries wake the worker at once (PostgreSQL LISTEN); polling covers a lost
        // notification, and is all there is on SQLite.
        let mut queued = match store.listen(crate::store::Wake::Queued).await {
            Ok(queued) => queued,
            Err(error) => {
                tracing::warn!(%error, "cannot listen for queued tries; polling only");
                None
            }
        };
        let poll = if queued.is_some() {
            this.options.poll.max(Duration::from_millis(500))
        } else {
            this.options.poll
        };
        let mut wake_now = true;
        let mut beat = tokio::time::interval(this.options.heartbeat);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tracing::info!(worker = %me.name, queues = %me.queues.join(","), concurrency = me.concurrency, "worker started");
        let grace_over = loop {
            let room = (this.options.concurrency as usize).saturating_sub(running.len());
            tokio::select! {
                _ = shutdown.cancelled() => {
                    break tokio::time::Instant::now() + this.executor.shutdown_grace;
                }
                _ = beat.tick() => heartbeat(store.as_ref(), &mut me, &running).await,
                Some(held) = done_rx.recv() => {
                    running.remove(&held);
                    // A freed slot may take a try that waits.
                    wake_now = true;
                }
                Some(_) = async { queued.as_mut()?.recv().await }, if queued.is_some() => {
                    wake_now = true;
                }
                _ = tokio::time::sleep(if wake_now { Duration::ZERO } else { poll }), if room > 0 => {
                    wake_now = false;
                    let claimed = match store.claim_tries(&me, &me.queues, room as u32, Utc::now()).await {
                        Ok(claimed) => claimed,
                        Err(error) => {
                            tracing::warn!(%error, "could not claim tries; trying again");
                            tokio::time::sleep(Duration::from_millis(500)).await;
                            continue;
                        }
                    };
                    for ti in claimed {
                        let key = TaskKey {
                            dag_id: ti.dag_id.clone(),
                            run_id: ti.run_id.clone(),
                            task_id: ti.task_id.clone(),
                        };
                        let stop = CancellationToken::new();
                        let held = (key.clone(), ti.try_number);
                        running.insert(held.clone(), stop.clone());
                        let worker = this.clone();
                        let done = done_tx.clone();
                        let stopping = shutdown.clone();
                        let span = tracing::info_span!("try", dag_id = %key.dag_id, run_id = %key.run_id, task_id = %key.task_id, try_number = ti.try_number);
                        tokio::spawn(async move {
                            worker.run_claimed(ti, stop, stopping).await;
                            let _ = done.send(held);
                        }.instrument(span));
                    }
                }
            }
        };
        tracing::info!(
            tries = running.len(),
            "worker stopping; running tries get the shutdown grace"
        );
        // The tries finishing in the grace period are still heartbeated: not taken back.
        let mut stopped = false;
        while !running.is_empty() {
            tokio::select! {
                Some(held) = done_rx.recv() => { running.remove(&held); }
                _ = beat.tick() => heartbeat(store.as_ref(), &mut me, &running).await,
                _ = tokio::time::sleep_until(grace_over), if !stopped => {
                    // Their ends (interrupted) are written as they stop.
                    for stop in running.values() {
                        stop.cancel();
                    }
                    stopped = true;
                }
            }
        }
        Ok(())
    }

    /// The DAG version a run executes, from the store (a worker needs no DAG folder).
    async fn dag_of(&self, run: &DagRun) -> Result<Arc<Dag>, String> {
        let key = (run.dag_id.clone(), run.dag_hash.clone());
        if let Some(dag) = self
            .versions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return Ok(dag.clone());
        }
        let stored = self
            .executor
            .store
            .dag_version(&run.dag_id, &run.dag_hash)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("the run's DAG version {} is not stored", run.dag_hash))?;
        let dag = Dag::from_version(&stored, &self.registry).map_err(|errors| {
            let errors: Vec<String> = errors.iter().map(ToString::to_string).collect();
            format!(
                "the run's DAG version {} does not build here: {}",
                run.dag_hash,
                errors.join("; ")
            )
        })?;
        let dag = Arc::new(dag);
        self.versions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, dag.clone());
        Ok(dag)
    }

    /// Runs one claimed try and records its end (fenced by its try number).
    async fn run_claimed(
        &self,
        ti: TaskInstance,
        stop: CancellationToken,
        shutdown: CancellationToken,
    ) {
        let key = TaskKey {
            dag_id: ti.dag_id.clone(),
            run_id: ti.run_id.clone(),
            task_id: ti.task_id.clone(),
        };
        // Stopping for a shutdown is an interruption, not the try's failure.
        let interrupted = CancellationToken::new();
        let watcher = {
            let (stop, interrupted) = (stop.clone(), interrupted.clone());
            let grace = self.executor.shutdown_grace;
            tokio::spawn(async move {
                shutdown.cancelled().await;
                tokio::time::sleep(grace).await;
                interrupted.cancel();
                stop.cancel();
            })
        };
        let (planned_to, planned, notify) = match self.execute(&ti, stop).await {
            Ok((dag, task, run, outcome)) => {
                let ending = if interrupted.is_cancelled() {
                    Ending::Interrupted
                } else {
                    Ending::Normal
                };
                let planned = try_ending(
                    task,
                    &ti,
                    &dag.tasks[task].retry,
                    outcome,
                    ending,
                    Utc::now(),
                );
                (planned.to, planned, Some((dag, task, run)))
            }
            Err(message) => {
                // The try could not start here (the store did not answer, its DAG version
                // does not build with this worker's operators): another try, perhaps on
                // another worker, may.
                tracing::error!(task = %key, %message, "the try could not run");
                let outcome = TryOutcome::Failure {
                    kind: FailureKind::Retryable,
                    message,
                };
                let planned = try_ending(
                    0,
                    &ti,
                    &Default::default(),
                    outcome,
                    Ending::Normal,
                    Utc::now(),
                );
                (planned.to, planned, None)
            }
        };
        watcher.abort();
        let Ok(transition) = TaskState::Running.to(planned_to) else {
            return;
        };
        let max_tries = planned.max_tries.unwrap_or(ti.max_tries);
        let change = TaskChange {
            key: key.clone(),
            transition,
            at: planned.at.unwrap_or_else(Utc::now),
            reason: planned.reason,
            output: planned.output,
            next_retry_at: planned.next_retry_at,
            max_tries: planned.max_tries,
            // The try this worker ran: a try taken back and claimed again has a newer number.
            fence: Some(Fence {
                driver: self.options.name.clone(),
                try_number: ti.try_number,
            }),
            queue: None,
            hostname: None,
        };
        let store = &self.executor.store;
        let written = crate::store::outage::ride_out(
            self.executor.outage_deadline,
            "record the try's end",
            || store.transitions(std::slice::from_ref(&change)),
        )
        .await;
        // An interruption (the worker's shutdown) is no retry of the task's own.
        let interrupted = planned_to == TaskState::UpForRetry && planned.max_tries.is_some();
        match written {
            Ok(()) if interrupted => {
                let _ = store
                    .notify(
                        crate::store::Wake::Ended,
                        &format!("{}/{}", key.dag_id, key.run_id),
                    )
                    .await;
            }
            Ok(()) => {
                if planned_to == TaskState::Success {
                    crate::metrics::metrics().check_results(
                        &key.dag_id,
                        &key.task_id,
                        change.output.as_ref(),
                    );
                }
                crate::metrics::metrics().task_changed(
                    &key.dag_id,
                    &key.task_id,
                    planned_to,
                    None,
                    ti.started_at,
                    change.at,
                );
                if let Some((dag, task, run)) = &notify {
                    let notices = crate::notify::for_task(
                        &dag.notify,
                        &dag.tasks[*task].notify,
                        run,
                        &key.task_id,
                        ti.try_number,
                        max_tries,
                        planned_to,
                        change.reason.as_deref(),
                        change.output.as_ref(),
                        change.at,
                    );
                    self.executor.enqueue(&notices).await;
                }
                // The run's driver decides what comes next at once.
                let _ = store
                    .notify(
                        crate::store::Wake::Ended,
                        &format!("{}/{}", key.dag_id, key.run_id),
                    )
                    .await;
            }
            Err(StoreError::Conflict { .. } | StoreError::Fenced { .. }) => {
                tracing::warn!(task = %key, try_number = ti.try_number, "the try's end was refused: the try was taken back or cancelled meanwhile")
            }
            Err(error) => {
                tracing::error!(task = %key, %error, "could not record the try's end; its run's driver takes it back after the heartbeat timeout")
            }
        }
    }

    /// Reads what the try needs from the store and runs it; `Err` if it cannot run here.
    async fn execute(
        &self,
        ti: &TaskInstance,
        stop: CancellationToken,
    ) -> Result<(Arc<Dag>, usize, DagRun, TryOutcome), String> {
        let store = &self.executor.store;
        let run = store
            .run(&ti.dag_id, &ti.run_id)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("run {} of DAG {} is gone", ti.run_id, ti.dag_id))?;
        let dag = self.dag_of(&run).await?;
        let task = dag.task_index(&ti.task_id).ok_or_else(|| {
            format!(
                "task {} is not in the run's DAG version {}",
                ti.task_id, run.dag_hash
            )
        })?;
        let by_id: HashMap<String, TaskInstance> = store
            .task_instances(&ti.dag_id, &ti.run_id)
            .await
            .map_err(|e| e.to_string())?
            .into_iter()
            .map(|t| (t.task_id.clone(), t))
            .collect();
        let instances: Vec<TaskInstance> =
            dag.tasks
                .iter()
                .map(|t| {
                    by_id.get(&t.id).cloned().ok_or_else(|| {
                        format!("run {} has no instance of task {}", run.run_id, t.id)
                    })
                })
                .collect::<Result<_, _>>()?;
        let (log, masker) = self.executor.try_log(&dag, &run, task, ti);
        log.info(&format!(
            "worker {} on {} runs this try",
            self.options.name, self.executor.host
        ));
        let ctx = self.executor.try_context(
            &dag,
            &run,
            &instances,
            task,
            ti.try_number,
            log.clone(),
            stop,
        );
        let spec = &dag.tasks[task];
        let key = TaskKey {
            dag_id: ti.dag_id.clone(),
            run_id: ti.run_id.clone(),
            task_id: ti.task_id.clone(),
        };
        // Events the operator traces inside the try reach its log, as in a local try.
        let route = crate::trylog::route(log);
        let span = tracing::info_span!("execute", try_log = route.id());
        let outcome = self
            .executor
            .shipping_log(
                &key,
                ti.try_number,
                run_try(spec.operator.clone(), ctx, spec.execution_timeout),
            )
            .instrument(span)
            .await
            .masked(&masker);
        drop(route);
        Ok((dag.clone(), task, run, outcome))
    }
}

/// Records that the worker is alive, heartbeats the tries it holds, and stops those the store
/// no longer has running under it (taken back after a stall, or cancelled).
async fn heartbeat(
    store: &dyn crate::store::Store,
    me: &mut WorkerBeat,
    running: &HashMap<Held, CancellationToken>,
) {
    me.heartbeat_at = Utc::now();
    let holds: Vec<Held> = running.keys().cloned().collect();
    match store.worker_heartbeat(me, &holds, me.heartbeat_at).await {
        Ok(alive) => {
            for (held, stop) in running {
                if !alive.contains(held) && !stop.is_cancelled() {
                    tracing::warn!(task = %held.0, try_number = held.1, "the store no longer has this try running here (taken back or cancelled): stopping it");
                    stop.cancel();
                }
            }
        }
        Err(error) => tracing::warn!(%error, "could not heartbeat; the tries go on"),
    }
}
