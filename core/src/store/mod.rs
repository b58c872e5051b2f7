//! The metadata store: every run, task instance and state change, durably.
//!
//! One [`Store`], used as `Arc<dyn Store>`, with SQLite (embedded default) and PostgreSQL
//! (several processes or machines) behind it. It is four traits by who uses them: the write
//! path ([`RunStore`]), the read model of the UI and API ([`ReadModel`]), [`Metrics`] and
//! [`Heartbeats`]. Invariants:
//! - task state only changes through [`RunStore::transition`] or the batched
//!   [`RunStore::transitions`], which take [`Transition`]s (so the state machine has approved
//!   each), compare-and-set on the expected state and write each change's history row in
//!   the same statement or transaction;
//! - a run is unique per (DAG, logical date), so creating one twice is an error, never a
//!   duplicate.

pub mod migrations;
pub mod outage;
mod sql;
mod transitions;

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;

use sluice_operator_api::TaskOutput;

use crate::schedule::DataInterval;
use crate::state::{IllegalRunTransition, RunState, TaskState, Transition};

pub use sql::SqlStore;

/// Why a run exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunType {
    /// Created by the scheduler for a schedule interval.
    Scheduled,
    /// Triggered by a person (CLI, API, UI) or `dags test`.
    Manual,
    /// Created by a backfill.
    Backfill,
}

impl RunType {
    /// The name used in the store and in run ids.
    pub fn as_str(self) -> &'static str {
        match self {
            RunType::Scheduled => "scheduled",
            RunType::Manual => "manual",
            RunType::Backfill => "backfill",
        }
    }

    /// The run id for a logical date, as Airflow spells it: `manual__2026-11-23T16:00:00+00:00`.
    pub fn run_id(self, logical_date: DateTime<Utc>) -> String {
        format!(
            "{}__{}",
            self.as_str(),
            logical_date.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, false)
        )
    }
}

impl std::str::FromStr for RunType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "scheduled" => Ok(RunType::Scheduled),
            "manual" => Ok(RunType::Manual),
            "backfill" => Ok(RunType::Backfill),
            other => Err(format!("unknown run type `{other}`")),
        }
    }
}

/// One execution of a DAG for a data interval.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DagRun {
    /// The DAG.
    pub dag_id: String,
    /// Unique within the DAG.
    pub run_id: String,
    /// The interval's start.
    pub logical_date: DateTime<Utc>,
    /// Start of the data interval.
    pub data_interval_start: DateTime<Utc>,
    /// End of the data interval (exclusive).
    pub data_interval_end: DateTime<Utc>,
    /// Why the run exists.
    pub run_type: RunType,
    /// Current state.
    pub state: RunState,
    /// Configuration given at trigger time.
    pub conf: serde_json::Value,
    /// Hash of the DAG file version the run started with.
    pub dag_hash: String,
    /// When the run was created.
    pub created_at: DateTime<Utc>,
    /// When it started running.
    pub started_at: Option<DateTime<Utc>>,
    /// When it finished.
    pub ended_at: Option<DateTime<Utc>>,
    /// For backfill runs: most runs of the backfill active at once, when capped.
    pub backfill_max_active_runs: Option<u32>,
    /// Which attempt of the run this is, from 1: a re-run of a finished run is a new attempt.
    pub attempt: u32,
    /// When the run was found unfinished past its SLA (its data interval's end plus the
    /// DAG's `sla`).
    pub sla_missed_at: Option<DateTime<Utc>>,
    /// A note for the people reading the run (Airflow's run note), set through the API.
    pub note: Option<String>,
}

/// One item of an item-by-item task, as the delivery ledger has it for one attempt of a run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Delivery {
    /// The item's key (its value as text).
    pub item: String,
    /// Whether the receiver took it.
    pub delivered: bool,
    /// Requests made for it over the attempt's tries.
    pub attempts: u32,
    /// The last status or error of a failed item.
    pub detail: Option<String>,
    /// When its last outcome was recorded.
    pub updated_at: DateTime<Utc>,
}

/// One attempt of a run: the first, and each re-run of it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunAttempt {
    /// From 1.
    pub attempt: u32,
    /// The conf it ran with.
    pub conf: serde_json::Value,
    /// How it stands or ended.
    pub state: RunState,
    /// When it was queued.
    pub queued_at: DateTime<Utc>,
    /// When it started running.
    pub started_at: Option<DateTime<Utc>>,
    /// When it finished.
    pub ended_at: Option<DateTime<Utc>>,
    /// The DAG version it ran (unknown for attempts recorded before versions were kept).
    pub dag_hash: Option<String>,
}

impl DagRun {
    /// The run's data interval.
    pub fn interval(&self) -> DataInterval {
        DataInterval {
            start: self.data_interval_start,
            end: self.data_interval_end,
        }
    }
}

/// A task within a run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskInstance {
    /// The DAG.
    pub dag_id: String,
    /// The run.
    pub run_id: String,
    /// The task.
    pub task_id: String,
    /// Operator name when the run was created.
    pub operator: String,
    /// Current state.
    pub state: TaskState,
    /// Tries started so far (0 before the first).
    pub try_number: u32,
    /// Most tries allowed (retries + 1).
    pub max_tries: u32,
    /// When it was last queued.
    pub queued_at: Option<DateTime<Utc>>,
    /// When the current or last try started.
    pub started_at: Option<DateTime<Utc>>,
    /// When the last try ended.
    pub ended_at: Option<DateTime<Utc>>,
    /// When an `up_for_retry` instance may be queued again.
    pub next_retry_at: Option<DateTime<Utc>>,
    /// Output of the successful try.
    pub output: Option<TaskOutput>,
    /// Error of the last failed try.
    pub error: Option<String>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
    /// The worker queue it waits in or was claimed from (`None`: its tries run in the process
    /// driving the run).
    pub queue: Option<String>,
    /// The worker that runs or ran its latest try (`None` when the driving process ran it).
    pub worker: Option<String>,
    /// The machine of its latest try (Airflow's `hostname`).
    pub hostname: Option<String>,
    /// The worker's last sign of life for the running try.
    pub heartbeat_at: Option<DateTime<Utc>>,
    /// The pool whose slots its tries take.
    pub pool: Option<String>,
}

impl TaskInstance {
    /// What `change` does to this instance once the store applied it: the same columns the
    /// store's statement sets (`store_story` checks the two agree on both backends).
    pub fn apply(&mut self, change: &TaskChange) {
        let t = change.transition;
        let to = t.to();
        let starts = t.starts_try();
        self.state = to;
        self.updated_at = change.at;
        if starts {
            self.try_number += 1;
            self.started_at = Some(change.at);
        }
        if to == TaskState::Queued {
            self.queued_at = Some(change.at);
            self.queue = change.queue.clone();
        }
        if starts {
            self.hostname = change.hostname.clone();
            self.worker = None;
            self.heartbeat_at = None;
        }
        let ends = to.is_finished() || to == TaskState::UpForRetry;
        self.ended_at = ends.then_some(change.at);
        self.next_retry_at = change.next_retry_at;
        if to == TaskState::Pending {
            self.output = None;
        } else if let Some(output) = &change.output {
            self.output = Some(output.clone());
        }
        // A new try or a clear drops the last error; a failure records its own.
        if starts || t.clears() {
            self.error = None;
        } else if matches!(to, TaskState::Failed | TaskState::UpForRetry) {
            self.error = change.reason.clone();
        }
        if let Some(max_tries) = change.max_tries {
            self.max_tries = max_tries;
        }
    }
}

/// One recorded state change of a task instance.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StateChange {
    /// Order of recording.
    pub id: i64,
    /// The DAG.
    pub dag_id: String,
    /// The run.
    pub run_id: String,
    /// The task.
    pub task_id: String,
    /// Try number after the change.
    pub try_number: u32,
    /// Previous state.
    pub from: TaskState,
    /// New state.
    pub to: TaskState,
    /// When it happened.
    pub at: DateTime<Utc>,
    /// Why (error message, retry reason, …).
    pub reason: Option<String>,
}

/// Identifies a task instance.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TaskKey {
    /// The DAG.
    pub dag_id: String,
    /// The run.
    pub run_id: String,
    /// The task.
    pub task_id: String,
}

impl std::fmt::Display for TaskKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}", self.dag_id, self.run_id, self.task_id)
    }
}

/// A task instance a new run (or a run whose DAG gained tasks) starts with, pending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTaskInstance {
    /// The task.
    pub task_id: String,
    /// Its operator's name.
    pub operator: String,
    /// Tries allowed: retries + 1.
    pub max_tries: u32,
    /// The pool whose slots its tries take.
    pub pool: Option<String>,
}

/// A run to create, with its task instances.
#[derive(Debug, Clone)]
pub struct NewRun {
    /// The DAG.
    pub dag_id: String,
    /// The run id.
    pub run_id: String,
    /// The data interval (its start is the logical date).
    pub interval: DataInterval,
    /// Why it exists.
    pub run_type: RunType,
    /// Trigger configuration.
    pub conf: serde_json::Value,
    /// The DAG version the run executes (stored with the run, once per content hash).
    pub version: DagVersion,
    /// A pending instance of every task.
    pub tasks: Vec<NewTaskInstance>,
    /// For backfill runs: most backfill runs of the DAG active at once.
    pub backfill_max_active_runs: Option<u32>,
    /// A note for the people reading the run (the API's `note`), written with the run.
    pub note: Option<String>,
    /// Creation time.
    pub at: DateTime<Utc>,
}

/// One version of a DAG: what a run executes, whatever the DAG folder holds later.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DagVersion {
    /// The DAG.
    pub dag_id: String,
    /// Content hash of the DAG file and the files its config names (`dag_run.dag_hash`).
    pub hash: String,
    /// The DAG file's path when this version was read.
    pub file: String,
    /// The DAG file's text and each named file's (`sluice_core::dag::DagSource` as JSON).
    pub source: serde_json::Value,
}

/// A state change to persist.
#[derive(Debug, Clone)]
pub struct TaskChange {
    /// Which instance.
    pub key: TaskKey,
    /// The approved transition (compare-and-set on its `from`).
    pub transition: Transition,
    /// When.
    pub at: DateTime<Utc>,
    /// Why, recorded in the history (and as the instance's error on failures).
    pub reason: Option<String>,
    /// Output on success.
    pub output: Option<TaskOutput>,
    /// For `up_for_retry`: when the next try may be queued.
    pub next_retry_at: Option<DateTime<Utc>>,
    /// For a clear: the new most tries allowed (tries so far + the task's retries + 1).
    pub max_tries: Option<u32>,
    /// The fencing token of a run driver's change: who writes, and which try of the
    /// instance it believes is the latest. `None` for changes of people (clear, mark), which
    /// only touch finished runs.
    pub fence: Option<Fence>,
    /// For a change to `queued`: the worker queue it waits in (`None`: the driving process
    /// starts it).
    pub queue: Option<String>,
    /// For the start of a try in the driving process: the machine it runs on.
    pub hostname: Option<String>,
}

/// A run driver's fencing token for one change: the change applies only if the instance's
/// try number is still the one the driver saw. A driver whose lease lapsed while another
/// took the run over and started a newer try has its write refused ([`StoreError::Fenced`])
/// instead of overwriting that try's state; it stops at its next lease renewal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    /// The driver (for the error that names who holds the run instead).
    pub driver: String,
    /// The instance's try number as the driver saw it, before this change.
    pub try_number: u32,
}

impl TaskChange {
    /// A change with no reason, output or retry time.
    pub fn new(key: TaskKey, transition: Transition, at: DateTime<Utc>) -> Self {
        Self {
            key,
            transition,
            at,
            reason: None,
            output: None,
            next_retry_at: None,
            max_tries: None,
            fence: None,
            queue: None,
            hostname: None,
        }
    }
}

/// Which runs to list.
#[derive(Debug, Clone, Default)]
pub struct RunFilter {
    /// Only this DAG.
    pub dag_id: Option<String>,
    /// Only this run id.
    pub run_id: Option<String>,
    /// Only runs in this state.
    pub state: Option<RunState>,
    /// Only runs in one of these states (none: any).
    pub states: Vec<RunState>,
    /// Most rows (newest logical dates first); 0 means 100.
    pub limit: u32,
    /// Rows to skip (paging).
    pub offset: u32,
}

/// Store failures, each meaning something to the caller.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be reached or opened (the URL is shown without password).
    #[error("cannot open the metadata store {url}: {cause}")]
    Open {
        /// Redacted URL.
        url: String,
        /// Driver error. Part of the message and not a `source`: its own message already
        /// carries its causes, and an error chain printed in full would repeat them.
        cause: sqlx::Error,
    },
    /// A migration failed.
    #[error("metadata store migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A run for this DAG and logical date (or with this id) already exists.
    #[error("DAG `{dag_id}` already has a run for logical date {logical_date} (or the run id `{run_id}`)")]
    RunExists {
        /// The DAG.
        dag_id: String,
        /// The run id asked for.
        run_id: String,
        /// The logical date asked for.
        logical_date: DateTime<Utc>,
    },
    /// No such run or task instance.
    #[error("{0} not found")]
    NotFound(String),
    /// Compare-and-set lost: the row was not in the expected state (another process moved it).
    #[error("{what}: expected state {expected}, found {found}")]
    Conflict {
        /// Which row.
        what: String,
        /// State the caller expected.
        expected: String,
        /// State found.
        found: String,
    },
    /// A run driver's write was refused: it no longer holds the run's lease (another
    /// process took the run over after the lease lapsed).
    #[error("run {run}: this driver's lease lapsed and {holder} drives the run now: its write was refused")]
    Fenced {
        /// `dag_id/run_id`.
        run: String,
        /// Who holds the run now (`nobody` when it is released).
        holder: String,
    },
    /// The run state machine forbids the change.
    #[error(transparent)]
    IllegalRunTransition(#[from] IllegalRunTransition),
    /// A query failed.
    #[error("metadata store query failed ({what}): {source}")]
    Query {
        /// The operation.
        what: &'static str,
        /// Driver error.
        #[source]
        source: sqlx::Error,
    },
    /// The store did not answer for now (a write batched with one whose statement failed
    /// on a lost connection); the same request may succeed later.
    #[error("metadata store unavailable ({what}): {message}")]
    Unavailable {
        /// The operation.
        what: &'static str,
        /// What happened.
        message: String,
    },
    /// A stored value could not be read back.
    #[error("unreadable value in the metadata store ({what}): {message}")]
    Corrupt {
        /// Which value.
        what: &'static str,
        /// Why.
        message: String,
    },
}

/// Which database holds the metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Embedded SQLite file (default).
    Sqlite,
    /// PostgreSQL server.
    Postgres,
}

/// The write path: what the scheduler, the executor and the domain modules (`runs`,
/// `backfill`) read and change. Every task state change goes through `transition(s)`.
#[async_trait]
pub trait RunStore: Send + Sync + std::fmt::Debug {
    /// Which database this is.
    fn backend(&self) -> Backend;
    /// Creates a run and its task instances (all `pending`) in one transaction.
    async fn create_run(&self, run: &NewRun) -> Result<DagRun, StoreError>;
    /// One run.
    async fn run(&self, dag_id: &str, run_id: &str) -> Result<Option<DagRun>, StoreError>;
    /// Takes (or renews) the right to drive a run until `until`: succeeds if nobody holds it,
    /// `driver` already does, or the holder's lease ended before `now`. False if another
    /// live driver holds it.
    async fn claim_run(
        &self,
        dag_id: &str,
        run_id: &str,
        driver: &str,
        until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError>;
    /// Gives up driving a run (when it finished or this process stops).
    async fn release_run(&self, dag_id: &str, run_id: &str, driver: &str)
        -> Result<(), StoreError>;
    /// Adds pending instances for tasks a run does not have yet (its DAG gained tasks).
    async fn add_task_instances(
        &self,
        dag_id: &str,
        run_id: &str,
        tasks: &[NewTaskInstance],
        at: DateTime<Utc>,
    ) -> Result<(), StoreError>;
    /// The run of a DAG for a logical date, whatever its id.
    async fn run_for_date(
        &self,
        dag_id: &str,
        logical_date: DateTime<Utc>,
    ) -> Result<Option<DagRun>, StoreError>;
    /// How many runs are queued and when the newest was created (microseconds): the
    /// scheduler's cheap check, between full passes, for runs another process queued.
    async fn queued_runs_marker(&self) -> Result<QueuedMarker, StoreError>;
    /// Moves a run from `from` to `to` (compare-and-set, checked against the run state machine).
    async fn set_run_state(
        &self,
        dag_id: &str,
        run_id: &str,
        from: RunState,
        to: RunState,
        at: DateTime<Utc>,
    ) -> Result<DagRun, StoreError>;
    /// [`RunStore::set_run_state`] by a run driver: applied only while `driver` holds the
    /// run's lease ([`StoreError::Fenced`] otherwise).
    async fn set_run_state_as(
        &self,
        driver: &str,
        dag_id: &str,
        run_id: &str,
        from: RunState,
        to: RunState,
        at: DateTime<Utc>,
    ) -> Result<DagRun, StoreError>;
    /// Starts a queued run driven by `driver` (`queued → running`) only while its DAG has
    /// fewer than `max_active_runs` running runs (and, for a backfill run, fewer running
    /// backfill runs than its own cap), counted under the DAG's row lock: schedulers sharing
    /// the store never exceed it together. `None`: the DAG is at its limit; the run stays
    /// queued.
    async fn start_run(
        &self,
        driver: &str,
        dag_id: &str,
        run_id: &str,
        max_active_runs: u32,
        at: DateTime<Utc>,
    ) -> Result<Option<DagRun>, StoreError>;
    /// Starts a new attempt of a finished run (`from` is its state now, compare-and-set): the
    /// run is queued again with the next attempt number, with `conf` if one is given
    /// (otherwise the last attempt's) and on `version` if one is given (otherwise the last
    /// attempt's), and the attempt is recorded.
    async fn new_attempt(
        &self,
        dag_id: &str,
        run_id: &str,
        from: RunState,
        conf: Option<&serde_json::Value>,
        version: Option<&DagVersion>,
        at: DateTime<Utc>,
    ) -> Result<DagRun, StoreError>;

    /// A stored DAG version, by its hash.
    async fn dag_version(&self, dag_id: &str, hash: &str)
        -> Result<Option<DagVersion>, StoreError>;

    /// The items of `attempt` of a task already delivered (the ledger of item-by-item tasks).
    async fn delivered_items(
        &self,
        key: &TaskKey,
        attempt: u32,
    ) -> Result<std::collections::HashSet<String>, StoreError>;

    /// Records item outcomes of `attempt` of a task: a later outcome of an item replaces its
    /// state and detail and adds to its request count.
    async fn record_deliveries(
        &self,
        key: &TaskKey,
        attempt: u32,
        outcomes: &[sluice_operator_api::DeliveryOutcome],
        at: DateTime<Utc>,
    ) -> Result<(), StoreError>;

    /// The task instances of a run, by task id.
    async fn task_instances(
        &self,
        dag_id: &str,
        run_id: &str,
    ) -> Result<Vec<TaskInstance>, StoreError>;
    /// Persists one approved state change with its history row and returns the instance
    /// as it is now, or fails with `Conflict` (or `NotFound`) when the instance is not in
    /// the transition's `from` state.
    async fn transition(&self, change: &TaskChange) -> Result<TaskInstance, StoreError>;
    /// Persists approved changes of any instances, in one statement where it can (one
    /// round trip for a pass's ends, decisions and starts), each a compare-and-set with its
    /// own history row. Callers that hold the instances update them with
    /// [`TaskInstance::apply`]. Fails with `Conflict` naming an instance that was not in its
    /// expected state; the changes of the other instances are applied (each is atomic on its
    /// own, as with [`RunStore::transition`]).
    async fn transitions(&self, changes: &[TaskChange]) -> Result<(), StoreError>;
    /// The run of a DAG with the latest logical date among runs of `run_type` (any type if `None`).
    async fn latest_run(
        &self,
        dag_id: &str,
        run_type: Option<RunType>,
    ) -> Result<Option<DagRun>, StoreError>;
    /// Every queued or running run, oldest logical date first.
    async fn active_runs(&self) -> Result<Vec<DagRun>, StoreError>;
    /// Pauses or unpauses a DAG (a paused DAG gets no new scheduled runs).
    async fn set_paused(
        &self,
        dag_id: &str,
        paused: bool,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError>;
    /// Ids of paused DAGs.
    async fn paused_dags(&self) -> Result<Vec<String>, StoreError>;
    /// Sets (or, with `None`, removes) a run's note; false if there is no such run.
    async fn set_run_note(
        &self,
        dag_id: &str,
        run_id: &str,
        note: Option<&str>,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError>;
}

/// The read model of the UI, the API and the CLI's listings: pages of runs and task
/// instances, history, and the marker that tells when anything changed.
#[async_trait]
pub trait ReadModel: Send + Sync + std::fmt::Debug {
    /// The latest `per_dag` runs of each DAG, newest first, in one query (the DAG list page).
    async fn recent_runs(&self, per_dag: u32) -> Result<Vec<DagRun>, StoreError>;
    /// The task instances of several runs of one DAG in one query (the grid page).
    async fn task_instances_of_runs(
        &self,
        dag_id: &str,
        run_ids: &[String],
    ) -> Result<Vec<TaskInstance>, StoreError>;
    /// How many runs match a filter (ignoring its limit and offset).
    async fn count_runs(&self, filter: &RunFilter) -> Result<u64, StoreError>;
    /// A value that changes whenever a run or task instance changes (live UI updates).
    async fn change_marker(&self) -> Result<i64, StoreError>;
    /// Runs matching a filter, newest logical date first.
    async fn list_runs(&self, filter: &RunFilter) -> Result<Vec<DagRun>, StoreError>;
    /// The delivery ledger of `attempt` of a task: failed items first, then by item.
    async fn deliveries(&self, key: &TaskKey, attempt: u32) -> Result<Vec<Delivery>, StoreError>;

    /// Every attempt of a run, first to last.
    async fn attempts(&self, dag_id: &str, run_id: &str) -> Result<Vec<RunAttempt>, StoreError>;

    /// Every state change of a run, in order.
    async fn history(&self, dag_id: &str, run_id: &str) -> Result<Vec<StateChange>, StoreError>;
}

/// What `/metrics` counts.
#[async_trait]
pub trait Metrics: Send + Sync + std::fmt::Debug {
    /// The unfinished runs (by DAG and state) and task instances (by state), for metrics:
    /// read through the runs' state index, so the cost follows what is active, not the
    /// history.
    async fn active_counts(&self) -> Result<ActiveCounts, StoreError>;
}

/// Signs of life of scheduler processes.
#[async_trait]
pub trait Heartbeats: Send + Sync + std::fmt::Debug {
    /// Records that a scheduler is alive.
    async fn scheduler_heartbeat(&self, beat: &SchedulerBeat) -> Result<(), StoreError>;
    /// The latest heartbeat of any scheduler, if one ever ran.
    async fn last_scheduler_heartbeat(&self) -> Result<Option<SchedulerBeat>, StoreError>;
}

/// Who changed what through the API.
#[async_trait]
pub trait AuditLog: Send + Sync + std::fmt::Debug {
    /// Records one mutating request.
    async fn record_audit(&self, entry: &AuditEntry) -> Result<(), StoreError>;
    /// The newest entries first.
    async fn audit_entries(&self, limit: u32, offset: u32) -> Result<Vec<AuditEntry>, StoreError>;
}

/// What `sluice worker` processes do in the store: claim queued tries, heartbeat them.
#[async_trait]
pub trait Workers: Send + Sync + std::fmt::Debug {
    /// Claims up to `limit` queued tries of `queues` for `worker`, oldest first, each moved
    /// `queued → running` as a new try with the worker, host and a first heartbeat recorded
    /// (on PostgreSQL with `FOR UPDATE SKIP LOCKED`: workers never wait on each other and
    /// never claim the same try). A try of a pool is claimed only while the pool has a free
    /// slot (counted under the pool's row lock, so workers never exceed it together), and
    /// likewise within its DAG's recorded `max_active_tasks`; one of a pool the store does
    /// not know waits. Returns the claimed instances.
    async fn claim_tries(
        &self,
        worker: &WorkerBeat,
        queues: &[String],
        limit: u32,
        now: DateTime<Utc>,
    ) -> Result<Vec<TaskInstance>, StoreError>;
    /// Records that `worker` is alive and heartbeats the tries it `holds` (key and try
    /// number) that are still running under it; returns those: one missing was taken back or
    /// cancelled. Tries recorded under its name that it does not hold (a process of the same
    /// name that died) get no heartbeat, so their run's driver takes them back.
    async fn worker_heartbeat(
        &self,
        worker: &WorkerBeat,
        holds: &[(TaskKey, u32)],
        now: DateTime<Utc>,
    ) -> Result<Vec<(TaskKey, u32)>, StoreError>;
    /// Every worker that ever heartbeated, most recent first.
    async fn workers(&self) -> Result<Vec<WorkerBeat>, StoreError>;
    /// Records the pools' sizes (`SLUICE_POOLS`) that workers' claims enforce.
    async fn set_pools(&self, pools: &[(String, u32)]) -> Result<(), StoreError>;
    /// Records a DAG's `max_active_tasks`, which workers' claims enforce across its runs.
    async fn set_max_active_tasks(
        &self,
        dag_id: &str,
        max_active_tasks: u32,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError>;
    /// Wakes whoever listens on `wake` (PostgreSQL `NOTIFY`; nothing on SQLite, where the
    /// listeners poll).
    async fn notify(&self, wake: Wake, payload: &str) -> Result<(), StoreError>;
    /// The payloads of `wake`'s notifications from now on, or `None` where the store has
    /// none (SQLite): the caller polls instead. The listening connection reconnects by itself.
    async fn listen(
        &self,
        wake: Wake,
    ) -> Result<Option<tokio::sync::mpsc::UnboundedReceiver<String>>, StoreError>;
}

/// What a store notification announces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// Tries were queued for workers.
    Queued,
    /// A worker recorded a try's end (payload: `dag_id/run_id`).
    Ended,
}

impl Wake {
    /// The PostgreSQL channel.
    pub fn channel(self) -> &'static str {
        match self {
            Wake::Queued => "sluice_queued",
            Wake::Ended => "sluice_ended",
        }
    }
}

/// A worker process: who it is and what it serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WorkerBeat {
    /// Unique name (`--name`, default host and process id).
    pub name: String,
    /// Its machine.
    pub hostname: String,
    /// Its process id.
    pub pid: u32,
    /// The queues it claims from.
    pub queues: Vec<String>,
    /// Most tries it runs at once.
    pub concurrency: u32,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// Its last heartbeat.
    pub heartbeat_at: DateTime<Utc>,
}

/// Process groups of running tries (see `sluice_operator_api::processes`).
#[async_trait]
pub trait Processes: Send + Sync + std::fmt::Debug {
    /// Records a process group a try started.
    async fn record_process(&self, process: &TaskProcess) -> Result<(), StoreError>;
    /// Forgets a process group that ended.
    async fn forget_process(&self, key: &TaskKey, host: &str, pgid: i32) -> Result<(), StoreError>;
    /// The process groups recorded for a run's tries.
    async fn processes(&self, dag_id: &str, run_id: &str) -> Result<Vec<TaskProcess>, StoreError>;
}

/// Missed SLAs.
#[async_trait]
pub trait Slas: Send + Sync + std::fmt::Debug {
    /// Records that the run missed its SLA at `at`; true only for the call that recorded it
    /// (the one that then notifies), however many schedulers see it.
    async fn mark_sla_missed(
        &self,
        dag_id: &str,
        run_id: &str,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError>;
}

/// The outbox of notifications (see [`crate::notify`]).
#[async_trait]
pub trait Outbox: Send + Sync + std::fmt::Debug {
    /// Queues notifications; one whose id is already queued (or sent) is left as it is.
    async fn enqueue_notifications(
        &self,
        notifications: &[crate::notify::Notification],
    ) -> Result<(), StoreError>;
    /// Notifications due at `now` (not sent, not given up), oldest first.
    async fn due_notifications(
        &self,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<crate::notify::Notification>, StoreError>;
    /// Takes a due notification for one send: counts the attempt and moves `next_at` to
    /// `lease` (when another may try, should this sender die). False if another sender took
    /// it first.
    async fn claim_notification(
        &self,
        notification: &crate::notify::Notification,
        lease: DateTime<Utc>,
    ) -> Result<bool, StoreError>;
    /// Records that a notification was sent.
    async fn notification_sent(&self, id: &str, at: DateTime<Utc>) -> Result<(), StoreError>;
    /// Records a failed send: tried again at `next_at`, or given up when none.
    async fn notification_failed(
        &self,
        id: &str,
        error: &str,
        next_at: Option<DateTime<Utc>>,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError>;
    /// A run's notifications, oldest first.
    async fn notifications(
        &self,
        dag_id: &str,
        run_id: &str,
    ) -> Result<Vec<crate::notify::Notification>, StoreError>;
}

/// Requests to stop a running run or one of its task instances (see `runs::stop_run`).
#[async_trait]
pub trait Stops: Send + Sync + std::fmt::Debug {
    /// Records a request (a repeated one replaces the earlier).
    async fn request_stop(&self, request: &StopRequest) -> Result<(), StoreError>;
    /// The requests waiting for a run's driver.
    async fn stop_requests(
        &self,
        dag_id: &str,
        run_id: &str,
    ) -> Result<Vec<StopRequest>, StoreError>;
    /// Removes a request its driver acted on.
    async fn forget_stop(&self, request: &StopRequest) -> Result<(), StoreError>;
}

/// A request to stop a running run (`task_id` none) or one task instance of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StopRequest {
    /// The DAG.
    pub dag_id: String,
    /// The run.
    pub run_id: String,
    /// The task to stop; none stops the whole run.
    pub task_id: Option<String>,
    /// Who asked (an API token's name, a CLI user), for the history.
    pub requested_by: String,
    /// When.
    pub requested_at: DateTime<Utc>,
    /// How a stopped run ends: `failed` or `cancelled`.
    pub run_ends: crate::state::RunState,
}

/// A process group a try started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskProcess {
    /// The task.
    pub key: TaskKey,
    /// Its try.
    pub try_number: u32,
    /// The machine it runs on (its hostname).
    pub host: String,
    /// The group's id (its leader's pid).
    pub pgid: i32,
    /// The leader's start time in clock ticks since boot: a later process with the same pid
    /// is never taken for it.
    pub start_ticks: u64,
    /// When it started.
    pub started_at: DateTime<Utc>,
}

/// What retention (`sluice db clean`) reads and removes.
#[async_trait]
pub trait Retention: Send + Sync + std::fmt::Debug {
    /// Finished runs (success, failed, cancelled) that ended before `cutoff`, of one DAG or
    /// all, oldest first.
    async fn runs_ended_before(
        &self,
        cutoff: DateTime<Utc>,
        dag_id: Option<&str>,
    ) -> Result<Vec<DagRun>, StoreError>;
    /// Deletes these runs with everything recorded of them (task instances, attempts,
    /// history, deliveries) in one transaction, each only if it is still finished (a run
    /// re-triggered meanwhile stays), and the DAG versions no run uses any more; returns the
    /// runs deleted.
    async fn delete_runs(&self, runs: &[RunRef]) -> Result<Vec<RunRef>, StoreError>;
}

/// A run by its ids.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct RunRef {
    /// The DAG.
    pub dag_id: String,
    /// The run.
    pub run_id: String,
}

/// One mutating API request, granted or refused.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct AuditEntry {
    /// When it was answered (RFC 3339).
    #[schemars(with = "String")]
    pub at: DateTime<Utc>,
    /// The name of the caller's token (`anonymous` when the server has no tokens).
    pub actor: String,
    /// The caller's role (`viewer`, `operator`, `admin`; `none` for an unknown token).
    pub role: String,
    /// HTTP method.
    pub method: String,
    /// Path (and query) of the request.
    pub path: String,
    /// The answer's HTTP status.
    pub status: u16,
    /// The client's address, when known.
    pub remote: Option<String>,
}

/// The metadata store: all its parts, as one `Arc<dyn Store>` that front ends and the
/// scheduler share. Code that needs one part can take `&dyn RunStore`, `&dyn ReadModel`, ….
pub trait Store:
    RunStore
    + ReadModel
    + Metrics
    + Heartbeats
    + AuditLog
    + Retention
    + Processes
    + Workers
    + Stops
    + Outbox
    + Slas
{
}

impl<T> Store for T where
    T: RunStore
        + ReadModel
        + Metrics
        + Heartbeats
        + AuditLog
        + Retention
        + Processes
        + Workers
        + Stops
        + Outbox
        + Slas
        + ?Sized
{
}

/// The queued runs at a glance: if neither field moved, no run was queued meanwhile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueuedMarker {
    /// How many runs are queued.
    pub count: u64,
    /// When the newest of them was created (microseconds since the epoch; 0 if none).
    pub newest_created_us: i64,
}

/// What is active now, for metrics.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ActiveCounts {
    /// Queued and running runs: (DAG, state, how many).
    pub runs: Vec<(String, String, u64)>,
    /// Pending, queued, running and up-for-retry task instances: (state, how many).
    pub task_instances: Vec<(String, u64)>,
}

/// A scheduler process's sign of life.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SchedulerBeat {
    /// Unique per process start.
    pub scheduler_id: String,
    /// Host it runs on.
    pub hostname: String,
    /// Its process id.
    pub pid: u32,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// Its last heartbeat.
    pub heartbeat_at: DateTime<Utc>,
}

/// Opens (and migrates) the store at `url`: `sqlite://path` or `postgres://…`.
pub async fn open(url: &str) -> Result<Arc<dyn Store>, StoreError> {
    Ok(Arc::new(SqlStore::open(url).await?))
}

/// `url` with any password replaced by `***`.
pub fn redact_url(url: &str) -> String {
    // SQLite paths are not secret and may not be URLs in the strict sense.
    if url.starts_with("sqlite:") {
        return url.to_string();
    }
    sluice_operator_api::connection::redact_url(url)
}
