//! The scheduler: decides which runs exist and when they start; the executor runs them.
//!
//! It never runs operator code. Each pass it (1) reloads DAG files that changed, (2) creates
//! the scheduled runs that are due (idempotent: a run is unique per DAG and logical date, so
//! two schedulers or a restart never duplicate one), (3) starts queued runs under each DAG's
//! `max_active_runs`, oldest logical date first, and resumes `running` runs nobody drives
//! (after a crash). A finished run wakes it at once; otherwise it sleeps until the next
//! interval ends or the short poll that picks up manual triggers from other processes.

pub mod clock;
pub mod plan;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sluice_operator_api::Registry;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::dag::{Dag, DagBag};
use crate::executor::Executor;
use crate::state::RunState;
use crate::store::{DagRun, RunType, SchedulerBeat, Store, StoreError};
pub use clock::{Clock, ManualClock, SystemClock};

/// How often the scheduler does things that have no event to wake it.
#[derive(Debug, Clone)]
pub struct SchedulerOptions {
    /// Longest sleep between passes: bounds how long a manual trigger from another process waits.
    pub poll: Duration,
    /// How often the DAG folder is checked for changes.
    pub dag_refresh: Duration,
    /// How often the scheduler records that it is alive.
    pub heartbeat: Duration,
    /// What old runs and artifacts the scheduler removes (hourly), if anything.
    pub retention: Option<crate::retention::Policy>,
}

impl Default for SchedulerOptions {
    fn default() -> Self {
        Self {
            poll: Duration::from_millis(50),
            dag_refresh: Duration::from_secs(2),
            heartbeat: Duration::from_secs(5),
            retention: None,
        }
    }
}

/// Why the scheduler stopped.
#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    /// The metadata store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

type RunKey = (String, String);

/// Decides and starts runs; see the module documentation.
pub struct Scheduler {
    store: Arc<dyn Store>,
    executor: Executor,
    clock: Arc<dyn Clock>,
    registry: Registry,
    dags_folder: PathBuf,
    options: SchedulerOptions,
    bag: DagBag,
    fingerprint: crate::dag::folder::Fingerprint,
    next_check: HashMap<String, DateTime<Utc>>,
    driving: HashMap<RunKey, JoinHandle<()>>,
    missing_warned: HashSet<String>,
    /// Runs another process drives, and when to try claiming them again.
    elsewhere: HashMap<RunKey, tokio::time::Instant>,
}

impl Scheduler {
    /// A scheduler over `store`, starting runs on `executor`, reading DAGs from `dags_folder`.
    pub fn new(
        store: Arc<dyn Store>,
        executor: Executor,
        clock: Arc<dyn Clock>,
        dags_folder: PathBuf,
        registry: Registry,
        options: SchedulerOptions,
    ) -> Self {
        Self {
            store,
            executor,
            clock,
            registry,
            dags_folder,
            options,
            bag: DagBag::default(),
            fingerprint: Vec::new(),
            next_check: HashMap::new(),
            driving: HashMap::new(),
            missing_warned: HashSet::new(),
            elsewhere: HashMap::new(),
        }
    }

    fn refresh_dags(&mut self) {
        let current = DagBag::fingerprint(&self.dags_folder);
        if current == self.fingerprint && !self.fingerprint.is_empty() {
            return;
        }
        self.fingerprint = current;
        let bag = DagBag::load(&self.dags_folder, &self.registry);
        for error in &bag.errors {
            tracing::warn!(%error, "DAG file error; the file is skipped until fixed");
        }
        for (id, dag) in &bag.dags {
            match self.bag.get(id) {
                None => tracing::info!(dag_id = %id, file = %dag.file.display(), "DAG loaded"),
                Some(old) if old.hash != dag.hash => {
                    tracing::info!(dag_id = %id, hash = %dag.hash, "DAG changed; new runs use the new version");
                    self.next_check.remove(id);
                }
                _ => {}
            }
        }
        for id in self
            .bag
            .dags
            .keys()
            .filter(|id| !bag.dags.contains_key(*id))
        {
            tracing::info!(dag_id = %id, "DAG removed; it gets no new runs");
        }
        self.bag = bag;
    }

    /// Creates the scheduled runs that are due for `dag`.
    async fn create_due_runs(
        &mut self,
        dag: &Dag,
        now: DateTime<Utc>,
    ) -> Result<(), SchedulerError> {
        if self.next_check.get(&dag.dag_id).is_some_and(|at| *at > now) {
            return Ok(());
        }
        let latest = self
            .store
            // Manual and backfill runs do not move the schedule: only scheduled runs do.
            .latest_run(&dag.dag_id, Some(RunType::Scheduled))
            .await?
            .map(|r| r.logical_date);
        let due = plan::due_intervals(dag, latest, now);
        let created_all = due.len() < plan::MAX_RUNS_PER_PASS;
        for interval in due {
            let run = crate::runs::new_run(
                dag,
                interval,
                RunType::Scheduled,
                serde_json::json!({}),
                now,
            );
            match self.store.create_run(&run).await {
                Ok(created) => {
                    tracing::info!(dag_id = %dag.dag_id, run_id = %created.run_id, interval = %interval, "run created")
                }
                // Another scheduler (or a manual run) got there first: nothing to do.
                Err(StoreError::RunExists { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        // A catchup cut at MAX_RUNS_PER_PASS continues next pass, not at the next fire time.
        let next = if created_all {
            plan::next_check(dag, now).unwrap_or(DateTime::<Utc>::MAX_UTC)
        } else {
            now
        };
        self.next_check.insert(dag.dag_id.clone(), next);
        Ok(())
    }

    fn drive(&mut self, dag: Arc<Dag>, run: &DagRun, done: &mpsc::UnboundedSender<(RunKey, bool)>) {
        let key = (run.dag_id.clone(), run.run_id.clone());
        if self.driving.contains_key(&key) {
            return;
        }
        if self
            .elsewhere
            .get(&key)
            .is_some_and(|until| *until > tokio::time::Instant::now())
        {
            return;
        }
        self.elsewhere.remove(&key);
        if run.state == RunState::Running {
            tracing::info!(dag_id = %run.dag_id, run_id = %run.run_id, "resuming a run nobody drives (the process that ran it stopped)");
        }
        let executor = self.executor.clone();
        let done = done.clone();
        let (dag_id, run_id) = key.clone();
        let registry = self.registry.clone();
        let run = run.clone();
        let handle = tokio::spawn(async move {
            // A run executes its own DAG version, whatever the folder holds now.
            let dag = match crate::runs::dag_of_run(executor.store().as_ref(), &registry, dag, &run)
                .await
            {
                Ok(dag) => dag,
                Err(error) => {
                    tracing::error!(%dag_id, %run_id, %error, "could not read the run's DAG version; it is retried next pass");
                    let _ = done.send(((dag_id, run_id), false));
                    return;
                }
            };
            match executor.run(dag, &run_id, CancellationToken::new()).await {
                Ok(run) if run.state.is_finished() => {
                    tracing::info!(%dag_id, %run_id, state = %run.state, "run finished")
                }
                Ok(run) if run.state == RunState::Queued => {
                    // Looked at again in a while, not on every pass.
                    tracing::debug!(%dag_id, %run_id, "the DAG is at max_active_runs: the run waits");
                    let _ = done.send(((dag_id, run_id), true));
                    return;
                }
                Ok(_) => {
                    tracing::info!(%dag_id, %run_id, "run left running for the next scheduler (shutdown)")
                }
                Err(crate::executor::ExecutorError::DrivenElsewhere { .. }) => {
                    tracing::debug!(%dag_id, %run_id, "another process drives this run");
                    let _ = done.send(((dag_id, run_id), true));
                    return;
                }
                Err(
                    error @ (crate::executor::ExecutorError::Store(StoreError::Fenced { .. })
                    | crate::executor::ExecutorError::LeaseLost { .. }),
                ) => {
                    // This process stalled past its lease; the run is another's now, and
                    // nothing this driver would still write is applied (fencing).
                    tracing::warn!(%dag_id, %run_id, %error, "this process lost the run's lease while it stalled; another process drives the run");
                    let _ = done.send(((dag_id, run_id), true));
                    return;
                }
                Err(error) => {
                    tracing::error!(%dag_id, %run_id, %error, "run could not be driven; it is retried next pass")
                }
            }
            let _ = done.send(((dag_id, run_id), false));
        });
        self.driving.insert(key, handle);
    }

    async fn start_runs(
        &mut self,
        paused: &HashSet<String>,
        done: &mpsc::UnboundedSender<(RunKey, bool)>,
    ) -> Result<(), SchedulerError> {
        let mut by_dag: HashMap<String, Vec<DagRun>> = HashMap::new();
        for mut run in self.store.active_runs().await? {
            // A run this process already drives counts as running even before the executor marks it.
            if self
                .driving
                .contains_key(&(run.dag_id.clone(), run.run_id.clone()))
            {
                run.state = RunState::Running;
            }
            by_dag.entry(run.dag_id.clone()).or_default().push(run);
        }
        for (dag_id, runs) in by_dag {
            let Some(dag) = self.bag.get(&dag_id).cloned() else {
                if self.missing_warned.insert(dag_id.clone()) {
                    tracing::warn!(%dag_id, "active runs of a DAG that is not loaded wait until its file is valid again");
                }
                continue;
            };
            for run in runs.iter().filter(|r| r.state == RunState::Running) {
                self.drive(dag.clone(), run, done);
            }
            self.notice_sla_misses(&dag, &runs).await;
            if paused.contains(&dag_id) {
                continue;
            }
            let starting: Vec<DagRun> = plan::runs_to_start(&runs, dag.max_active_runs)
                .into_iter()
                .cloned()
                .collect();
            for run in &starting {
                self.drive(dag.clone(), run, done);
            }
        }
        Ok(())
    }

    /// Records the runs of `dag` found unfinished past their SLA and queues the DAG's
    /// `on_sla_miss` notices, once per run whichever scheduler sees it first.
    async fn notice_sla_misses(&self, dag: &Dag, runs: &[DagRun]) {
        let now = self.clock.now();
        for run in plan::sla_misses(dag, runs, now) {
            match self
                .store
                .mark_sla_missed(&run.dag_id, &run.run_id, now)
                .await
            {
                Ok(true) => {
                    tracing::warn!(dag_id = %run.dag_id, run_id = %run.run_id, "the run missed its SLA");
                    crate::metrics::metrics()
                        .sla_misses
                        .get_or_create(&crate::metrics::DagLabels {
                            dag_id: run.dag_id.clone(),
                        })
                        .inc();
                    let notices = crate::notify::for_run(
                        &dag.notify,
                        run,
                        crate::notify::Event::SlaMissed,
                        now,
                    );
                    if let Err(error) = self.store.enqueue_notifications(&notices).await {
                        tracing::warn!(%error, "could not queue the SLA miss's notifications");
                    }
                }
                Ok(false) => {}
                Err(error) => tracing::warn!(%error, "could not record a missed SLA"),
            }
        }
    }

    /// Runs until `shutdown` fires, then waits for the runs it drives to stop (the executor's
    /// own shutdown token lets running tries finish within its grace period).
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<(), SchedulerError> {
        let started = Utc::now();
        let beat = SchedulerBeat {
            scheduler_id: format!(
                "{}-{}-{}",
                hostname(),
                std::process::id(),
                started.timestamp_millis()
            ),
            hostname: hostname(),
            pid: std::process::id(),
            started_at: started,
            heartbeat_at: started,
        };
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<(RunKey, bool)>();
        let mut last_refresh: Option<tokio::time::Instant> = None;
        // Listing every active run is the pass's cost (quadratic over a busy store if done on
        // every poll): it is done when a run ended, a deadline came, the queued runs changed,
        // or a while has passed (runs whose driver died are taken over).
        let mut list_runs = true;
        let mut last_listed: Option<(tokio::time::Instant, crate::store::QueuedMarker)> = None;
        let mut last_beat: Option<tokio::time::Instant> = None;
        let mut last_retention: Option<tokio::time::Instant> = None;
        tracing::info!(folder = %self.dags_folder.display(), backend = ?self.store.backend(), "scheduler started");
        let outcome = loop {
            if shutdown.is_cancelled() {
                break Ok(());
            }
            if last_refresh.is_none_or(|t| t.elapsed() >= self.options.dag_refresh) {
                self.refresh_dags();
                last_refresh = Some(tokio::time::Instant::now());
                list_runs = true;
            }
            if last_beat.is_none_or(|t| t.elapsed() >= self.options.heartbeat) {
                let mut beat = beat.clone();
                beat.heartbeat_at = Utc::now();
                if let Err(error) = self.store.scheduler_heartbeat(&beat).await {
                    tracing::warn!(%error, "could not record the scheduler heartbeat");
                }
                last_beat = Some(tokio::time::Instant::now());
            }
            if let Some(policy) = &self.options.retention {
                if last_retention.is_none_or(|t: tokio::time::Instant| {
                    t.elapsed() >= crate::retention::Policy::EVERY
                }) {
                    // In the background: a large clean never delays a scheduling pass.
                    let (policy, store, now) =
                        (policy.clone(), self.store.clone(), self.clock.now());
                    tokio::spawn(async move { policy.apply(store.as_ref(), now).await });
                    last_retention = Some(tokio::time::Instant::now());
                }
            }
            // A driver that ended without reporting (a panic) frees its run for the next pass.
            self.driving.retain(|key, handle| {
                if handle.is_finished() {
                    tracing::debug!(dag_id = %key.0, run_id = %key.1, "a run driver ended");
                }
                !handle.is_finished()
            });
            let pass = async {
                let paused: HashSet<String> = self.store.paused_dags().await?.into_iter().collect();
                let now = self.clock.now();
                let dags: Vec<Arc<Dag>> = self
                    .bag
                    .dags
                    .values()
                    .filter(|d| !paused.contains(&d.dag_id))
                    .cloned()
                    .collect();
                for dag in dags {
                    self.create_due_runs(&dag, now).await?;
                }
                let queued = self.store.queued_runs_marker().await?;
                let stale = last_listed.is_none_or(|(at, marker)| {
                    marker != queued || at.elapsed() >= Duration::from_secs(2)
                });
                if list_runs || stale {
                    self.start_runs(&paused, &done_tx).await?;
                    last_listed = Some((tokio::time::Instant::now(), queued));
                    list_runs = false;
                }
                Ok::<_, SchedulerError>(now)
            };
            let pass_began = tokio::time::Instant::now();
            let passed = pass.await;
            crate::metrics::metrics()
                .scheduler_pass_seconds
                .observe(pass_began.elapsed().as_secs_f64());
            let now = match passed {
                Ok(now) => now,
                Err(error) => {
                    // A store hiccup should not kill the scheduler: log, wait, try again.
                    tracing::error!(%error, "scheduler pass failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            // The next cron deadline comes from the (possibly controlled) clock; the poll that
            // notices manual triggers from other processes runs in real time.
            debug_assert!(now <= self.clock.now());
            let next_due = self
                .next_check
                .values()
                .copied()
                .min()
                .filter(|at| *at < DateTime::<Utc>::MAX_UTC);
            tokio::select! {
                Some(first) = done_rx.recv() => {
                    // Runs that ended meanwhile share the next pass: a pass lists every active
                    // run, so one pass per ended run costs quadratic time with many runs.
                    let mut ended = vec![first];
                    while let Ok(next) = done_rx.try_recv() {
                        ended.push(next);
                    }
                    list_runs = true;
                    for (key, elsewhere) in ended {
                        self.driving.remove(&key);
                        if elsewhere {
                            // Look again when that driver's lease could have ended, not every poll.
                            self.elsewhere.insert(key, tokio::time::Instant::now() + Duration::from_secs(2));
                        }
                    }
                }
                _ = tokio::time::sleep(self.options.poll) => {}
                _ = self.clock.sleep_until(next_due.unwrap_or(DateTime::<Utc>::MAX_UTC)), if next_due.is_some() => {
                    list_runs = true;
                }
                _ = shutdown.cancelled() => {}
            }
        };
        tracing::info!(
            runs = self.driving.len(),
            "scheduler stopping; waiting for the runs it drives"
        );
        for (_, handle) in self.driving.drain() {
            let _ = handle.await;
        }
        outcome
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "localhost".into())
}
