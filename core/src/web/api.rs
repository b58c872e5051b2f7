//! `/api/v1`: DAGs, runs, task instances and logs. Paths and field names follow Airflow's
//! stable REST API where Airflow has the operation, so its clients work unchanged.

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{ApiError, AppState};
use crate::dag::Dag;
use crate::runs::{start_run_with_id, StartError};
use crate::schedule::{parse_instant, Schedule};
use crate::state::{RunState, TaskState};
use crate::store::{DagRun, RunFilter, RunType, TaskInstance, TaskKey};

/// The API routes (mounted under `/api/v1`).
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/dags", get(list_dags))
        .route("/dags/{dag_id}", get(get_dag).patch(patch_dag))
        .route("/dags/{dag_id}/tasks", get(list_tasks))
        .route("/dags/{dag_id}/grid", get(grid))
        .route("/dags/{dag_id}/dagRuns", get(list_runs).post(trigger_run))
        .route(
            "/dags/{dag_id}/dagRuns/{dag_run_id}",
            get(get_run).patch(patch_run),
        )
        .route(
            "/dags/{dag_id}/dagRuns/{dag_run_id}/taskInstances",
            get(list_task_instances),
        )
        .route(
            "/dags/{dag_id}/dagRuns/{dag_run_id}/attempts",
            get(list_attempts),
        )
        .route(
            "/dags/{dag_id}/dagRuns/{dag_run_id}/taskInstances/{task_id}/deliveries",
            get(task_deliveries),
        )
        .route(
            "/dags/{dag_id}/dagRuns/{dag_run_id}/taskInstances/{task_id}/logs/{try_number}",
            get(task_log),
        )
        .route(
            "/dags/{dag_id}/dagRuns/{dag_run_id}/taskInstances/{task_id}",
            get(get_task_instance).patch(mark_task_instance),
        )
        .route(
            "/dags/{dag_id}/clearTaskInstances",
            axum::routing::post(clear_task_instances),
        )
        .route(
            "/dags/{dag_id}/backfills",
            axum::routing::post(create_backfill),
        )
        .route("/dags/{dag_id}/dagVersions/{version}", get(get_dag_version))
        .route("/auditLog", get(audit_log))
        .route("/workers", get(list_workers))
        .route("/openapi.json", get(super::openapi::openapi))
        .route("/importErrors", get(import_errors))
        .route("/operators", get(operators))
}

/// `?limit=&offset=` with bounds.
#[derive(Debug, Deserialize)]
struct Paging {
    limit: Option<i64>,
    offset: Option<i64>,
    state: Option<String>,
}

impl Paging {
    fn bounds(&self) -> Result<(u32, u32), ApiError> {
        page_bounds(self.limit, self.offset, 100)
    }
}

/// `limit` (1 to 10,000; `default` when absent) and `offset` (not negative) of a list page,
/// or a 400 naming the one that is wrong.
pub(super) fn page_bounds(
    limit: Option<i64>,
    offset: Option<i64>,
    default: i64,
) -> Result<(u32, u32), ApiError> {
    let limit = limit.unwrap_or(default);
    let offset = offset.unwrap_or(0);
    if !(1..=10_000).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit must be between 1 and 10000, not {limit}"
        )));
    }
    if offset < 0 {
        return Err(ApiError::bad_request(format!(
            "offset must not be negative, not {offset}"
        )));
    }
    Ok((limit as u32, offset.min(u32::MAX as i64) as u32))
}

/// The request body as `T`, or a 400 saying what to send.
pub(super) fn json_body<T: serde::de::DeserializeOwned>(
    body: Option<Json<Value>>,
    hint: &str,
) -> Result<T, ApiError> {
    let Some(Json(body)) = body else {
        return Err(ApiError::bad_request(format!(
            "send a JSON body such as {hint}"
        )));
    };
    serde_path_to_error::deserialize(body).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." {
            String::new()
        } else {
            format!(".{path}")
        };
        ApiError::bad_request(format!("body{field}: {}", e.into_inner()))
    })
}

fn time(t: Option<DateTime<Utc>>) -> Value {
    t.map(|t| json!(t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)))
        .unwrap_or(Value::Null)
}

pub(super) fn find_dag(state: &AppState, dag_id: &str) -> Result<std::sync::Arc<Dag>, ApiError> {
    state
        .dags
        .get()
        .get(dag_id)
        .cloned()
        .ok_or_else(|| ApiError::not_found(format!("DAG `{dag_id}` not found")))
}

/// An instant as the API writes it: RFC 3339, UTC, microseconds.
fn instant(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// A DAG run (Airflow's `DAGRun`).
#[derive(Debug, Serialize, JsonSchema)]
pub(super) struct DagRunJson {
    /// The run's id: its type and logical date.
    dag_run_id: String,
    /// The DAG.
    dag_id: String,
    /// The start of the data interval (RFC 3339).
    logical_date: String,
    /// Airflow 2's name for `logical_date`.
    execution_date: String,
    /// Start of the data interval, inclusive.
    data_interval_start: String,
    /// End of the data interval, exclusive.
    data_interval_end: String,
    /// When the run started running.
    start_date: Option<String>,
    /// When it finished.
    end_date: Option<String>,
    /// `queued`, `running`, `success`, `failed` or `cancelled`.
    state: RunState,
    /// `scheduled`, `manual` or `backfill`.
    run_type: String,
    /// Whether anything but the schedule created it.
    external_trigger: bool,
    /// The run's config (overrides the DAG's params).
    conf: Value,
    /// The version (content hash) of the DAG file the run was created with.
    dag_hash: String,
    /// Which attempt of the run this is, from 1: a re-run of a finished run is a new attempt.
    attempt: u32,
    /// When the run was found unfinished past its SLA (absent if it never was).
    #[serde(skip_serializing_if = "Option::is_none")]
    sla_missed_at: Option<String>,
    /// The note given when the run was triggered (or its tasks cleared) through the API.
    note: Option<String>,
}

impl From<&DagRun> for DagRunJson {
    fn from(run: &DagRun) -> Self {
        Self {
            dag_run_id: run.run_id.clone(),
            dag_id: run.dag_id.clone(),
            logical_date: instant(run.logical_date),
            execution_date: instant(run.logical_date),
            data_interval_start: instant(run.data_interval_start),
            data_interval_end: instant(run.data_interval_end),
            start_date: run.started_at.map(instant),
            end_date: run.ended_at.map(instant),
            state: run.state,
            run_type: run.run_type.as_str().into(),
            external_trigger: run.run_type != RunType::Scheduled,
            conf: sluice_operator_api::secrets::with_keys_masked(&run.conf),
            dag_hash: run.dag_hash.clone(),
            attempt: run.attempt,
            sla_missed_at: run.sla_missed_at.map(instant),
            note: run.note.clone(),
        }
    }
}

/// One attempt of a run.
#[derive(Debug, Serialize, JsonSchema)]
pub(super) struct RunAttemptJson {
    /// From 1.
    attempt: u32,
    /// Its state.
    state: RunState,
    /// The conf it ran with.
    conf: Value,
    /// When it was queued.
    queued_at: String,
    /// When it started running.
    start_date: Option<String>,
    /// When it finished.
    end_date: Option<String>,
    /// The DAG version it ran (see `dagVersions`); null for attempts recorded before versions were kept.
    dag_hash: Option<String>,
}

/// Every attempt of a run, first to last.
#[derive(Debug, Serialize, JsonSchema)]
pub(super) struct RunAttemptCollection {
    /// First to last.
    attempts: Vec<RunAttemptJson>,
    /// How many.
    total_entries: u64,
}

/// `GET /dags/{dag_id}/dagRuns/{dag_run_id}/attempts`.
async fn list_attempts(
    State(state): State<AppState>,
    Path((dag_id, run_id)): Path<(String, String)>,
) -> Result<Json<RunAttemptCollection>, ApiError> {
    let attempts = state.store.attempts(&dag_id, &run_id).await?;
    if attempts.is_empty() {
        return Err(ApiError::not_found(format!(
            "run `{run_id}` of DAG `{dag_id}` not found"
        )));
    }
    Ok(Json(RunAttemptCollection {
        total_entries: attempts.len() as u64,
        attempts: attempts
            .into_iter()
            .map(|a| RunAttemptJson {
                attempt: a.attempt,
                state: a.state,
                conf: sluice_operator_api::secrets::with_keys_masked(&a.conf),
                queued_at: instant(a.queued_at),
                start_date: a.started_at.map(instant),
                end_date: a.ended_at.map(instant),
                dag_hash: a.dag_hash,
            })
            .collect(),
    }))
}

/// A stored DAG version: what runs of that version execute, and how it differs from the DAG
/// file loaded now.
#[derive(Debug, Serialize, JsonSchema)]
pub(super) struct DagVersionJson {
    /// The DAG.
    dag_id: String,
    /// The version's content hash (a run's `dag_hash`).
    version: String,
    /// The DAG file's path when the version was read.
    file: String,
    /// The DAG file's text.
    dag_source: String,
    /// Each file the tasks' config names (SQL, DDL), by path as written.
    files: std::collections::BTreeMap<String, String>,
    /// The version of the DAG file loaded now (null when the DAG is not loaded).
    current_version: Option<String>,
    /// Whether this is the version loaded now.
    is_current: bool,
    /// A unified diff from this version to the one loaded now (empty when it is current).
    diff_from_current: String,
}

async fn get_dag_version(
    State(state): State<AppState>,
    Path((dag_id, version)): Path<(String, String)>,
) -> Result<Json<DagVersionJson>, ApiError> {
    let stored = state
        .store
        .dag_version(&dag_id, &version)
        .await?
        .ok_or_else(|| {
            ApiError::not_found(format!("DAG `{dag_id}` has no stored version `{version}`"))
        })?;
    let source: crate::dag::DagSource = serde_json::from_value(stored.source)
        .map_err(|e| ApiError::internal(format!("stored version {version} does not read: {e}")))?;
    // Shown masked, like everything else the API serves.
    let source = source.masked();
    let current = state.dags.get().get(&dag_id).cloned();
    let diff = current
        .as_ref()
        .map(|dag| source.diff(&dag.source.masked(), &stored.file))
        .unwrap_or_default();
    Ok(Json(DagVersionJson {
        dag_id,
        is_current: current.as_ref().is_some_and(|d| d.hash == stored.hash),
        current_version: current.map(|d| d.hash.clone()),
        version: stored.hash,
        file: stored.file,
        dag_source: source.dag,
        files: source.files,
        diff_from_current: diff,
    }))
}

/// One item of the delivery ledger.
#[derive(Debug, Serialize, JsonSchema)]
pub(super) struct DeliveryJson {
    /// The item (its value as text).
    item: String,
    /// Whether the receiver took it.
    delivered: bool,
    /// Requests made for it over the attempt's tries.
    requests: u32,
    /// The last status or error of a failed item.
    detail: Option<String>,
    /// When its last outcome was recorded.
    updated_at: String,
}

/// The delivery ledger of a task in one attempt of its run.
#[derive(Debug, Serialize, JsonSchema)]
pub(super) struct DeliveryLedgerJson {
    /// Which attempt of the run.
    attempt: u32,
    /// Items delivered.
    delivered: u64,
    /// Items that failed.
    failed: u64,
    /// The failed items (with their last error), then the delivered ones; `limit` items at most.
    items: Vec<DeliveryJson>,
}

/// `?attempt=&limit=` of the ledger.
#[derive(Debug, Deserialize)]
struct LedgerQuery {
    attempt: Option<u32>,
    limit: Option<usize>,
}

/// The audit log, newest first (admins only).
#[derive(Debug, Serialize, JsonSchema)]
pub struct AuditLogJson {
    /// The entries of this page.
    pub entries: Vec<crate::store::AuditEntry>,
}

/// A worker process as the store last heard from it.
#[derive(Debug, Serialize, JsonSchema)]
pub(super) struct WorkerJson {
    /// Its unique name (tries record it).
    name: String,
    /// Its machine.
    hostname: String,
    /// Its process id.
    pid: u32,
    /// The queues it claims from.
    queues: Vec<String>,
    /// Most tries it runs at once.
    concurrency: u32,
    /// When it started (RFC 3339).
    started_at: String,
    /// Its last heartbeat (RFC 3339).
    latest_heartbeat: String,
    /// Whether it heartbeated in the last 30 seconds.
    alive: bool,
}

/// The workers.
#[derive(Debug, Serialize, JsonSchema)]
pub(super) struct WorkerCollection {
    /// Most recently heard from first.
    workers: Vec<WorkerJson>,
    /// How many.
    total_entries: u64,
}

/// `GET /workers`.
async fn list_workers(
    State(state): State<AppState>,
    Query(paging): Query<Paging>,
) -> Result<Json<WorkerCollection>, ApiError> {
    let (limit, offset) = paging.bounds()?;
    let alive_since = Utc::now() - chrono::Duration::seconds(30);
    let workers: Vec<WorkerJson> = state
        .store
        .workers()
        .await?
        .into_iter()
        .map(|w| WorkerJson {
            alive: w.heartbeat_at > alive_since,
            name: w.name,
            hostname: w.hostname,
            pid: w.pid,
            queues: w.queues,
            concurrency: w.concurrency,
            started_at: instant(w.started_at),
            latest_heartbeat: instant(w.heartbeat_at),
        })
        .collect();
    Ok(Json(WorkerCollection {
        total_entries: workers.len() as u64,
        workers: workers
            .into_iter()
            .skip(offset as usize)
            .take(limit as usize)
            .collect(),
    }))
}

/// `GET /auditLog?limit&offset`.
async fn audit_log(
    State(state): State<AppState>,
    Query(paging): Query<Paging>,
) -> Result<Json<AuditLogJson>, ApiError> {
    let (limit, offset) = paging.bounds()?;
    Ok(Json(AuditLogJson {
        entries: state.store.audit_entries(limit, offset).await?,
    }))
}

/// `GET …/taskInstances/{task_id}/deliveries`.
async fn task_deliveries(
    State(state): State<AppState>,
    Path((dag_id, run_id, task_id)): Path<(String, String, String)>,
    Query(query): Query<LedgerQuery>,
) -> Result<Json<DeliveryLedgerJson>, ApiError> {
    let run = state.store.run(&dag_id, &run_id).await?.ok_or_else(|| {
        ApiError::not_found(format!("run `{run_id}` of DAG `{dag_id}` not found"))
    })?;
    let attempt = query.attempt.unwrap_or(run.attempt);
    let key = TaskKey {
        dag_id,
        run_id,
        task_id,
    };
    let all = state.store.deliveries(&key, attempt).await?;
    let delivered = all.iter().filter(|d| d.delivered).count() as u64;
    Ok(Json(DeliveryLedgerJson {
        attempt,
        delivered,
        failed: all.len() as u64 - delivered,
        items: all
            .into_iter()
            .take(query.limit.unwrap_or(100).min(10_000))
            .map(|d| DeliveryJson {
                item: d.item,
                delivered: d.delivered,
                requests: d.attempts,
                detail: d.detail,
                updated_at: instant(d.updated_at),
            })
            .collect(),
    }))
}

/// A page of a DAG's runs.
#[derive(Debug, Serialize, JsonSchema)]
pub(super) struct DagRunCollection {
    /// Newest logical date first.
    dag_runs: Vec<DagRunJson>,
    /// How many runs match, over all pages.
    total_entries: u64,
}

/// A task instance (Airflow's `TaskInstance`).
#[derive(Debug, Serialize, JsonSchema)]
pub(super) struct TaskInstanceJson {
    /// The task.
    task_id: String,
    /// The DAG.
    dag_id: String,
    /// The run.
    dag_run_id: String,
    /// Its state.
    state: TaskState,
    /// Tries started so far.
    try_number: u32,
    /// Most tries allowed.
    max_tries: u32,
    /// The operator's name.
    operator: String,
    /// When it was last queued.
    queued_when: Option<String>,
    /// When the current or last try started.
    start_date: Option<String>,
    /// When the last try ended.
    end_date: Option<String>,
    /// Seconds the last try took.
    duration: Option<f64>,
    /// When an `up_for_retry` instance may run again.
    next_retry_at: Option<String>,
    /// The last failed try's error.
    error: Option<String>,
    /// What the successful try returned: a table by reference, small values by value.
    output: Option<sluice_operator_api::TaskOutput>,
    /// The machine of the latest try (Airflow's `hostname`; absent before the first try, as
    /// Airflow 2's clients take no null here).
    #[serde(skip_serializing_if = "Option::is_none")]
    hostname: Option<String>,
    /// The worker that ran the latest try (null when the scheduler's process ran it).
    worker: Option<String>,
    /// The worker queue it waits in or was claimed from (null: it runs in the scheduler).
    queue: Option<String>,
    /// The pool whose slots its tries take (`default_pool` when the task names none, as
    /// Airflow calls the pool every task is in).
    pool: String,
}

impl From<&TaskInstance> for TaskInstanceJson {
    fn from(ti: &TaskInstance) -> Self {
        let duration = match (ti.started_at, ti.ended_at) {
            (Some(s), Some(e)) if e >= s => {
                Some((e - s).num_microseconds().unwrap_or(0) as f64 / 1e6)
            }
            _ => None,
        };
        Self {
            task_id: ti.task_id.clone(),
            dag_id: ti.dag_id.clone(),
            dag_run_id: ti.run_id.clone(),
            state: ti.state,
            try_number: ti.try_number,
            max_tries: ti.max_tries,
            operator: ti.operator.clone(),
            queued_when: ti.queued_at.map(instant),
            start_date: ti.started_at.map(instant),
            end_date: ti.ended_at.map(instant),
            duration,
            next_retry_at: ti.next_retry_at.map(instant),
            error: ti.error.clone(),
            output: ti.output.clone(),
            hostname: ti.hostname.clone(),
            worker: ti.worker.clone(),
            queue: ti.queue.clone(),
            pool: ti.pool.clone().unwrap_or_else(|| "default_pool".into()),
        }
    }
}

/// A run's task instances.
#[derive(Debug, Serialize, JsonSchema)]
pub(super) struct TaskInstanceCollection {
    /// In the DAG's task order.
    task_instances: Vec<TaskInstanceJson>,
    /// How many.
    total_entries: u64,
}

/// An error answer (RFC 9457 problem details).
#[derive(Debug, Serialize, JsonSchema)]
pub(super) struct ProblemJson {
    /// Always `about:blank`.
    #[serde(rename = "type")]
    kind: String,
    /// The status's reason phrase.
    title: String,
    /// The HTTP status.
    status: u16,
    /// What was wrong with the request, safe to show; never internals.
    detail: String,
}

/// The answer for an error.
pub(super) fn problem(title: &str, status: axum::http::StatusCode, detail: &str) -> ProblemJson {
    ProblemJson {
        kind: "about:blank".into(),
        title: title.into(),
        status: status.as_u16(),
        detail: detail.into(),
    }
}

fn run_json(run: &DagRun) -> Value {
    serde_json::to_value(DagRunJson::from(run)).expect("a run serializes")
}

fn task_instance_json(ti: &TaskInstance) -> Value {
    serde_json::to_value(TaskInstanceJson::from(ti)).expect("a task instance serializes")
}

/// The interval of a cron DAG's next scheduled run: it ends at the next fire time.
pub(super) fn next_interval(dag: &Dag) -> Option<crate::schedule::DataInterval> {
    match &dag.schedule {
        Schedule::Cron { .. } => dag
            .schedule
            .fire_after(dag.timezone, Utc::now())
            .map(|end| crate::schedule::DataInterval {
                start: dag
                    .schedule
                    .fire_at_or_before(dag.timezone, end - chrono::Duration::seconds(1))
                    .unwrap_or(end),
                end,
            }),
        _ => None,
    }
}

fn dag_json(dag: &Dag, paused: bool, recent: &[DagRun]) -> Value {
    let schedule = match &dag.schedule {
        Schedule::Manual => Value::Null,
        other => json!({"__type": "CronExpression", "value": other.to_string()}),
    };
    let next = next_interval(dag).map(|n| (n.start, n.end));
    json!({
        "dag_id": dag.dag_id,
        "description": dag.description,
        "fileloc": dag.file.display().to_string(),
        "file_hash": dag.hash,
        "is_paused": paused,
        "is_active": true,
        "tags": dag.tags.iter().map(|t| json!({"name": t})).collect::<Vec<_>>(),
        "schedule_interval": schedule,
        "timezone": dag.timezone.name(),
        "catchup": dag.catchup,
        "max_active_runs": dag.max_active_runs,
        "max_active_tasks": dag.max_active_tasks,
        "next_dagrun": time(next.map(|n| n.0)),
        "next_dagrun_data_interval_start": time(next.map(|n| n.0)),
        "next_dagrun_data_interval_end": time(next.map(|n| n.1)),
        "last_run": recent.first().map(run_json),
        "recent_runs": recent.iter().map(|r| json!({"dag_run_id": r.run_id, "state": r.state.as_str(), "logical_date": time(Some(r.logical_date))})).collect::<Vec<_>>(),
    })
}

/// Runs shown with a DAG.
const RECENT_RUNS: u32 = 10;

async fn recent_of(state: &AppState, dag_id: &str) -> Result<Vec<DagRun>, ApiError> {
    Ok(state
        .store
        .list_runs(&RunFilter {
            dag_id: Some(dag_id.to_string()),
            limit: RECENT_RUNS,
            ..Default::default()
        })
        .await?)
}

pub(super) async fn paused_set(
    state: &AppState,
) -> Result<std::collections::HashSet<String>, ApiError> {
    Ok(state.store.paused_dags().await?.into_iter().collect())
}

async fn list_dags(
    State(state): State<AppState>,
    Query(paging): Query<Paging>,
) -> Result<Json<Value>, ApiError> {
    let (limit, offset) = paging.bounds()?;
    let bag = state.dags.get();
    let paused = paused_set(&state).await?;
    // One query for every DAG's recent runs, whatever the number of DAGs.
    let mut recent: std::collections::HashMap<String, Vec<DagRun>> =
        std::collections::HashMap::new();
    for run in state.store.recent_runs(RECENT_RUNS).await? {
        recent.entry(run.dag_id.clone()).or_default().push(run);
    }
    let dags: Vec<Value> = bag
        .dags
        .values()
        .skip(offset as usize)
        .take(limit as usize)
        .map(|dag| {
            dag_json(
                dag,
                paused.contains(&dag.dag_id),
                recent
                    .get(&dag.dag_id)
                    .map(Vec::as_slice)
                    .unwrap_or_default(),
            )
        })
        .collect();
    Ok(Json(json!({"dags": dags, "total_entries": bag.dags.len()})))
}

async fn get_dag(
    State(state): State<AppState>,
    Path(dag_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let dag = find_dag(&state, &dag_id)?;
    let paused = paused_set(&state).await?.contains(&dag_id);
    let mut value = dag_json(&dag, paused, &recent_of(&state, &dag_id).await?);
    value["tasks"] = tasks_json(&dag);
    let places = state.places.clone();
    let disk = tokio::task::spawn_blocking(move || crate::retention::disk_usage(&places, &dag_id))
        .await
        .map_err(|e| ApiError::internal(format!("measuring disk use: {e}")))?;
    value["disk_usage"] = json!(disk);
    Ok(Json(value))
}

fn tasks_json(dag: &Dag) -> Value {
    Value::Array(
        dag.tasks
            .iter()
            .map(|t| {
                json!({
                    "task_id": t.id,
                    "operator_name": t.operator_name,
                    "downstream_task_ids": t.downstream.iter().map(|&d| dag.tasks[d].id.clone()).collect::<Vec<_>>(),
                    "upstream_task_ids": t.upstream.iter().map(|&u| dag.tasks[u].id.clone()).collect::<Vec<_>>(),
                    "trigger_rule": t.trigger_rule.as_str(),
                    "retries": t.retry.retries,
                    "execution_timeout": t.execution_timeout.map(|d| d.as_secs_f64()),
                    "doc_md": t.doc,
                })
            })
            .collect(),
    )
}

/// A page (`limit`, `offset`) of a list held in memory, as the collection's items.
fn page_of(items: Vec<Value>, paging: &Paging) -> Result<Vec<Value>, ApiError> {
    let (limit, offset) = paging.bounds()?;
    Ok(items
        .into_iter()
        .skip(offset as usize)
        .take(limit as usize)
        .collect())
}

async fn list_tasks(
    State(state): State<AppState>,
    Path(dag_id): Path<String>,
    Query(paging): Query<Paging>,
) -> Result<Json<Value>, ApiError> {
    let dag = find_dag(&state, &dag_id)?;
    let Value::Array(tasks) = tasks_json(&dag) else {
        unreachable!("tasks_json gives an array")
    };
    Ok(Json(
        json!({"tasks": page_of(tasks, &paging)?, "total_entries": dag.tasks.len()}),
    ))
}

/// `GET /dags/{dag_id}/grid?limit=25`: the latest runs and all their task instances in two
/// queries (sluice's own endpoint behind the UI grid).
async fn grid(
    State(state): State<AppState>,
    Path(dag_id): Path<String>,
    Query(paging): Query<Paging>,
) -> Result<Json<GridJson>, ApiError> {
    let dag = find_dag(&state, &dag_id)?;
    let (limit, _) = paging.bounds()?;
    let runs = state
        .store
        .list_runs(&RunFilter {
            dag_id: Some(dag_id.clone()),
            limit: limit.min(100),
            ..Default::default()
        })
        .await?;
    let run_ids: Vec<String> = runs.iter().map(|r| r.run_id.clone()).collect();
    let tis = state
        .store
        .task_instances_of_runs(&dag_id, &run_ids)
        .await?;
    Ok(Json(GridJson {
        dag_id: dag.dag_id.clone(),
        tasks: tasks_json(&dag),
        dag_runs: runs.iter().map(DagRunJson::from).collect(),
        task_instances: tis.iter().map(TaskInstanceJson::from).collect(),
    }))
}

/// The grid's answer, serialized straight from the records (no intermediate JSON tree: a
/// grid is the page a cache miss computes most).
#[derive(Debug, Serialize)]
struct GridJson {
    dag_id: String,
    tasks: Value,
    dag_runs: Vec<DagRunJson>,
    task_instances: Vec<TaskInstanceJson>,
}

/// `PATCH /dags/{dag_id}`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct DagPatch {
    /// A paused DAG gets no new scheduled runs; runs already going finish.
    is_paused: bool,
}

async fn patch_dag(
    State(state): State<AppState>,
    Path(dag_id): Path<String>,
    body: Option<Json<Value>>,
) -> Result<Json<Value>, ApiError> {
    let dag = find_dag(&state, &dag_id)?;
    let patch: DagPatch = json_body(body, "{\"is_paused\": true}")?;
    state
        .store
        .set_paused(&dag_id, patch.is_paused, Utc::now())
        .await?;
    Ok(Json(dag_json(
        &dag,
        patch.is_paused,
        &recent_of(&state, &dag_id).await?,
    )))
}

async fn list_runs(
    State(state): State<AppState>,
    Path(dag_id): Path<String>,
    Query(paging): Query<Paging>,
) -> Result<Json<DagRunCollection>, ApiError> {
    let (limit, offset) = paging.bounds()?;
    let run_state = paging
        .state
        .as_deref()
        .map(|s| {
            s.parse::<RunState>()
                .map_err(|e| ApiError::bad_request(format!("state: {e}")))
        })
        .transpose()?;
    let filter = RunFilter {
        dag_id: Some(dag_id),
        state: run_state,
        limit,
        offset,
        ..Default::default()
    };
    let runs = state.store.list_runs(&filter).await?;
    let total = state.store.count_runs(&filter).await?;
    Ok(Json(DagRunCollection {
        dag_runs: runs.iter().map(DagRunJson::from).collect(),
        total_entries: total,
    }))
}

/// `POST /dags/{dag_id}/dagRuns`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct TriggerBody {
    /// The run covers the schedule interval starting at the latest fire time at or before
    /// this (RFC 3339 or YYYY-MM-DD in the DAG's timezone); default: the latest complete one.
    logical_date: Option<String>,
    /// Airflow 2's name for `logical_date`.
    execution_date: Option<String>,
    /// The run's config: a JSON object that overrides the DAG's params.
    #[serde(default)]
    #[schemars(with = "Option<serde_json::Map<String, Value>>")]
    conf: Option<Value>,
    /// The run's id (letters, digits and `_ . ~ : + -`); default `manual__<logical date>`.
    dag_run_id: Option<String>,
    /// A note kept with the run (at most 1,000 characters).
    note: Option<String>,
}

async fn trigger_run(
    State(state): State<AppState>,
    Path(dag_id): Path<String>,
    body: Option<Json<Value>>,
) -> Result<Json<Value>, ApiError> {
    let dag = find_dag(&state, &dag_id)?;
    let body: TriggerBody = match body {
        Some(Json(value)) => serde_json::from_value(value)
            .map_err(|e| ApiError::bad_request(format!("body: {e}")))?,
        None => TriggerBody {
            logical_date: None,
            execution_date: None,
            conf: None,
            dag_run_id: None,
            note: None,
        },
    };
    if let Some(id) = &body.dag_run_id {
        crate::runs::check_run_id(id)
            .map_err(|e| ApiError::bad_request(format!("dag_run_id: {e}")))?;
    }
    super::v2::check_note(body.note.as_deref())?;
    let conf = body.conf.unwrap_or_else(|| json!({}));
    crate::runs::check_conf(&conf).map_err(ApiError::bad_request)?;
    let interval = match body.logical_date.or(body.execution_date) {
        Some(text) => dag.interval_for(
            parse_instant(&text, dag.timezone)
                .map_err(|e| ApiError::bad_request(format!("logical_date: {e}")))?,
        ),
        None => dag.default_interval(Utc::now()),
    };
    match start_run_with_id(
        &state.store,
        &dag,
        interval,
        RunType::Manual,
        conf,
        crate::runs::Chosen {
            run_id: body.dag_run_id.as_deref(),
            note: body.note.as_deref(),
        },
        Utc::now(),
    )
    .await
    {
        Ok((run, _)) => Ok(Json(run_json(&run))),
        Err(e @ StartError::Conflict { .. }) => Err(ApiError::conflict(e.to_string())),
        Err(StartError::Unfinished {
            run_id,
            state: run_state,
            ..
        }) => Err(ApiError::conflict(format!(
            "run `{run_id}` for this logical date is still {run_state}"
        ))),
        Err(StartError::Store(e)) => Err(e.into()),
    }
}

async fn get_run(
    State(state): State<AppState>,
    Path((dag_id, run_id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let run = state.store.run(&dag_id, &run_id).await?.ok_or_else(|| {
        ApiError::not_found(format!("run `{run_id}` of DAG `{dag_id}` not found"))
    })?;
    Ok(Json(run_json(&run)))
}

async fn list_task_instances(
    State(state): State<AppState>,
    Path((dag_id, run_id)): Path<(String, String)>,
    Query(paging): Query<Paging>,
) -> Result<Json<TaskInstanceCollection>, ApiError> {
    let (limit, offset) = paging.bounds()?;
    let task_state = paging
        .state
        .as_deref()
        .map(|s| {
            s.parse::<TaskState>()
                .map_err(|e| ApiError::bad_request(format!("state: {e}")))
        })
        .transpose()?;
    if state.store.run(&dag_id, &run_id).await?.is_none() {
        return Err(ApiError::not_found(format!(
            "run `{run_id}` of DAG `{dag_id}` not found"
        )));
    }
    let tis: Vec<TaskInstance> = state
        .store
        .task_instances(&dag_id, &run_id)
        .await?
        .into_iter()
        .filter(|ti| task_state.is_none_or(|s| ti.state == s))
        .collect();
    Ok(Json(TaskInstanceCollection {
        task_instances: tis
            .iter()
            .skip(offset as usize)
            .take(limit as usize)
            .map(TaskInstanceJson::from)
            .collect(),
        total_entries: tis.len() as u64,
    }))
}

async fn get_task_instance(
    State(state): State<AppState>,
    Path((dag_id, run_id, task_id)): Path<(String, String, String)>,
) -> Result<Json<TaskInstanceJson>, ApiError> {
    let tis = state.store.task_instances(&dag_id, &run_id).await?;
    let ti = tis.iter().find(|t| t.task_id == task_id).ok_or_else(|| {
        ApiError::not_found(format!(
            "task `{task_id}` of run `{run_id}` of DAG `{dag_id}` not found"
        ))
    })?;
    Ok(Json(TaskInstanceJson::from(ti)))
}

/// `?offset=N` (or Airflow's `token=N`, the `continuation_token` of the previous answer) and
/// `limit` (bytes, default 1 MiB, at most 8 MiB) of a log read; without an offset, the tail.
#[derive(Debug, Deserialize)]
struct LogQuery {
    offset: Option<u64>,
    token: Option<String>,
    limit: Option<u64>,
}

/// Default and largest piece of a log one answer carries.
const LOG_CHUNK: u64 = 1 << 20;
const LOG_CHUNK_MAX: u64 = 8 << 20;

/// The task instance and try a log read names, or the 400/404 that says which part is wrong.
pub(super) async fn find_try(
    state: &AppState,
    key: TaskKey,
    try_number: &str,
) -> Result<(TaskInstance, TaskKey, u32), ApiError> {
    let TaskKey {
        dag_id,
        run_id,
        task_id,
    } = &key;
    let number: u32 = try_number
        .parse()
        .map_err(|_| ApiError::bad_request(format!("try_number `{try_number}` is not a number")))?;
    let ti = state
        .store
        .task_instances(dag_id, run_id)
        .await?
        .into_iter()
        .find(|t| t.task_id == *task_id)
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "task `{task_id}` of run `{run_id}` of DAG `{dag_id}` not found"
            ))
        })?;
    if number == 0 || number > ti.try_number {
        return Err(ApiError::not_found(format!(
            "task `{task_id}` has tries 1 to {}; there is no try {number}",
            ti.try_number
        )));
    }
    Ok((ti, key, number))
}

async fn task_log(
    State(state): State<AppState>,
    Path((dag_id, run_id, task_id, try_number)): Path<(String, String, String, String)>,
    Query(query): Query<LogQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let offset = match (&query.offset, &query.token) {
        (Some(offset), _) => Some(*offset),
        (None, Some(token)) => Some(token.parse::<u64>().map_err(|_| {
            ApiError::bad_request(format!(
                "token `{token}` is not a continuation token of this API"
            ))
        })?),
        (None, None) => None,
    };
    let limit = query.limit.unwrap_or(LOG_CHUNK).clamp(1, LOG_CHUNK_MAX);
    let (ti, key, try_number) = find_try(
        &state,
        TaskKey {
            dag_id,
            run_id,
            task_id,
        },
        &try_number,
    )
    .await?;
    // From this machine's folder when the try ran here, else from shared storage.
    let chunk = crate::storage::logs::read_range(&state.places, &key, try_number, offset, limit)
        .await
        .map_err(|e| ApiError::internal(format!("reading a log: {e}")))?;
    let wants_text = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/plain"));
    if wants_text {
        let next = chunk.next_offset.to_string();
        return Ok((
            [
                (
                    header::CONTENT_TYPE,
                    "text/plain; charset=utf-8".to_string(),
                ),
                (
                    header::HeaderName::from_static("x-sluice-next-offset"),
                    next,
                ),
            ],
            chunk.content,
        )
            .into_response());
    }
    Ok(Json(json!({
        "content": chunk.content,
        "continuation_token": chunk.next_offset.to_string(),
        "offset": chunk.offset,
        "next_offset": chunk.next_offset,
        "size": chunk.size,
        "running": ti.state == crate::state::TaskState::Running && ti.try_number == try_number,
    }))
    .into_response())
}

async fn import_errors(
    State(state): State<AppState>,
    Query(paging): Query<Paging>,
) -> Result<Json<Value>, ApiError> {
    let bag = state.dags.get();
    let errors: Vec<Value> = bag
        .errors
        .iter()
        .map(|e| json!({"filename": e.file.display().to_string(), "task_id": e.task, "stack_trace": e.message}))
        .collect();
    Ok(Json(
        json!({"import_errors": page_of(errors, &paging)?, "total_entries": bag.errors.len()}),
    ))
}

async fn operators(
    State(state): State<AppState>,
    Query(paging): Query<Paging>,
) -> Result<Json<Value>, ApiError> {
    let items: Vec<Value> = state
        .dags
        .registry()
        .kinds()
        .map(|k| json!({"name": k.name, "summary": k.summary, "config_schema": k.schema()}))
        .collect();
    let total = items.len();
    Ok(Json(
        json!({"operators": page_of(items, &paging)?, "total_entries": total}),
    ))
}

/// `PATCH …/taskInstances/{task_id}`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct MarkBody {
    /// `success` or `failed`.
    new_state: String,
    /// Answer with what would change, change nothing.
    #[serde(default)]
    dry_run: bool,
}

/// `PATCH …/dagRuns/{dag_run_id}`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RunPatch {
    /// `failed` (Airflow's way to stop a run) or `cancelled`: a running run's tries are
    /// stopped, what has not started is cancelled, and the run ends in this state.
    state: String,
    /// Answer with the run as it is, change nothing.
    #[serde(default)]
    dry_run: bool,
}

/// Who a request came from, for the history (`api:<token name>`).
pub(super) fn caller_name(caller: Option<axum::Extension<super::auth::Caller>>) -> String {
    format!(
        "api:{}",
        caller.map_or_else(|| "anonymous".to_string(), |c| c.0.name)
    )
}

fn stop_error(e: crate::runs::StopError) -> ApiError {
    match e {
        crate::runs::StopError::Store(e) => e.into(),
        crate::runs::StopError::NoSuchTask { .. } => ApiError::not_found(e.to_string()),
        other => ApiError::conflict(other.to_string()),
    }
}

/// `PATCH …/dagRuns/{dag_run_id}` with `{"state": "failed"}`: stops a running or queued run.
async fn patch_run(
    State(state): State<AppState>,
    Path((dag_id, run_id)): Path<(String, String)>,
    caller: Option<axum::Extension<super::auth::Caller>>,
    body: Option<Json<Value>>,
) -> Result<Json<Value>, ApiError> {
    let body: RunPatch = json_body(body, "{\"state\": \"failed\"}")?;
    let ends = match body.state.as_str() {
        "failed" => crate::state::RunState::Failed,
        "cancelled" => crate::state::RunState::Cancelled,
        other => {
            return Err(ApiError::bad_request(format!(
                "state must be failed or cancelled (a run stops and ends in it), not `{other}`"
            )))
        }
    };
    let run = state.store.run(&dag_id, &run_id).await?.ok_or_else(|| {
        ApiError::not_found(format!("run `{run_id}` of DAG `{dag_id}` not found"))
    })?;
    if body.dry_run {
        return Ok(Json(run_json(&run)));
    }
    let stop = crate::runs::stop_run(&state.store, &run, ends, &caller_name(caller), Utc::now())
        .await
        .map_err(stop_error)?;
    let run = match stop {
        crate::runs::Stop::Done(run) => *run,
        // Its driver stops it within a second or so; the answer shows it still running.
        crate::runs::Stop::Requested => run,
    };
    Ok(Json(run_json(&run)))
}

/// `PATCH …/taskInstances/{task_id}` with `{"new_state": "success" | "failed"}` (Airflow's
/// shape): marks a task of a finished run, or, with `failed` on a running run, stops the task.
async fn mark_task_instance(
    State(state): State<AppState>,
    Path((dag_id, run_id, task_id)): Path<(String, String, String)>,
    caller: Option<axum::Extension<super::auth::Caller>>,
    body: Option<Json<Value>>,
) -> Result<Json<Value>, ApiError> {
    let body: MarkBody = json_body(
        body,
        "{\"new_state\": \"success\"} or {\"new_state\": \"failed\"}",
    )?;
    let to = match body.new_state.as_str() {
        "success" => crate::state::TaskState::Success,
        "failed" => crate::state::TaskState::Failed,
        other => {
            return Err(ApiError::bad_request(format!(
                "new_state must be success or failed, not `{other}`"
            )))
        }
    };
    let run = state.store.run(&dag_id, &run_id).await?.ok_or_else(|| {
        ApiError::not_found(format!("run `{run_id}` of DAG `{dag_id}` not found"))
    })?;
    if body.dry_run {
        return Ok(Json(
            json!({"task_id": task_id, "dag_run_id": run_id, "new_state": body.new_state, "dry_run": true}),
        ));
    }
    if !run.state.is_finished() && to == crate::state::TaskState::Failed {
        crate::runs::stop_task(
            &state.store,
            &run,
            &task_id,
            &caller_name(caller),
            Utc::now(),
        )
        .await
        .map_err(stop_error)?;
        let tis = state.store.task_instances(&dag_id, &run_id).await?;
        let ti = tis
            .iter()
            .find(|t| t.task_id == task_id)
            .ok_or_else(|| ApiError::not_found(format!("task `{task_id}` not found")))?;
        // Its run's driver stops it within a second or so.
        return Ok(Json(
            json!({"task_instance": task_instance_json(ti), "dag_run": run_json(&run), "stop_requested": true}),
        ));
    }
    match crate::runs::mark_task(&state.store, &run, &task_id, to, Utc::now()).await {
        Ok((ti, run)) => Ok(Json(
            json!({"task_instance": task_instance_json(&ti), "dag_run": run_json(&run)}),
        )),
        Err(crate::runs::MarkError::NoSuchTask { .. }) => Err(ApiError::not_found(format!(
            "task `{task_id}` of run `{run_id}` not found"
        ))),
        Err(crate::runs::MarkError::Store(e)) => Err(e.into()),
        Err(e) => Err(ApiError::conflict(e.to_string())),
    }
}

/// `POST /dags/{dag_id}/clearTaskInstances`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct ClearBody {
    /// The finished run whose tasks run again.
    dag_run_id: String,
    /// The tasks to clear.
    task_ids: Vec<String>,
    /// Clear what depends on them too.
    #[serde(default)]
    include_downstream: bool,
    /// Answer with what would be cleared, change nothing.
    #[serde(default)]
    dry_run: bool,
    /// Clear what they depend on too.
    #[serde(default)]
    include_upstream: bool,
    /// Only those that failed or whose upstream failed (default false: every task named;
    /// Airflow 2 clients send it explicitly).
    #[serde(default)]
    only_failed: bool,
    /// Airflow 2 fields sluice does not act on: accepted when false, refused when true
    /// (sluice clears tasks of one finished run).
    #[serde(default)]
    only_running: bool,
    /// See `only_running`.
    #[serde(default)]
    include_future: bool,
    /// See `only_running`.
    #[serde(default)]
    include_past: bool,
    /// See `only_running`.
    #[serde(default)]
    include_subdags: bool,
    /// See `only_running`.
    #[serde(default)]
    include_parentdag: bool,
    /// Accepted: a clear always queues the run's next attempt.
    #[serde(default)]
    reset_dag_runs: Option<bool>,
}

/// `POST /dags/{dag_id}/clearTaskInstances`: clears tasks of a finished run (and what depends
/// on them) so the scheduler runs them again as new tries.
async fn clear_task_instances(
    State(state): State<AppState>,
    Path(dag_id): Path<String>,
    body: Option<Json<Value>>,
) -> Result<Json<Value>, ApiError> {
    let dag = find_dag(&state, &dag_id)?;
    let body: ClearBody = json_body(body, "{\"dag_run_id\": …, \"task_ids\": […]}")?;
    for (field, set) in [
        ("only_running", body.only_running),
        ("include_future", body.include_future),
        ("include_past", body.include_past),
        ("include_subdags", body.include_subdags),
        ("include_parentdag", body.include_parentdag),
    ] {
        if set {
            return Err(ApiError::bad_request(format!(
                "{field}: sluice clears tasks of one finished run; leave it false"
            )));
        }
    }
    let _ = body.reset_dag_runs;
    let mut ids = dag
        .tasks_to_clear(&body.task_ids, body.include_downstream)
        .map_err(|id| {
            ApiError::bad_request(format!("task_ids: DAG `{dag_id}` has no task `{id}`"))
        })?;
    if body.include_upstream {
        ids = dag.with_upstream(&ids);
    }
    if body.only_failed {
        let tis = state
            .store
            .task_instances(&dag_id, &body.dag_run_id)
            .await?;
        ids.retain(|id| {
            tis.iter().any(|t| {
                t.task_id == *id && matches!(t.state, TaskState::Failed | TaskState::UpstreamFailed)
            })
        });
    }
    let run = state
        .store
        .run(&dag_id, &body.dag_run_id)
        .await?
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "run `{}` of DAG `{dag_id}` not found",
                body.dag_run_id
            ))
        })?;
    if body.dry_run {
        let would: Vec<Value> = ids
            .iter()
            .map(|t| json!({"task_id": t, "dag_run_id": run.run_id}))
            .collect();
        return Ok(Json(json!({"task_instances": would, "dry_run": true})));
    }
    if ids.is_empty() {
        // Nothing to clear (only_failed on a run without failures): the run stays as it is.
        return Ok(Json(
            json!({"task_instances": [], "dag_run": run_json(&run)}),
        ));
    }
    match crate::runs::clear_tasks(&state.store, &dag, &run, &ids, None, Utc::now()).await {
        Ok((run, cleared)) => Ok(Json(json!({
            "task_instances": cleared.iter().map(|c| json!({"task_id": c.task_id, "dag_run_id": run.run_id, "previous_state": c.previous_state.as_str()})).collect::<Vec<_>>(),
            "dag_run": run_json(&run),
        }))),
        Err(StartError::Unfinished {
            run_id, state: s, ..
        }) => Err(ApiError::conflict(format!(
            "run `{run_id}` is still {s}: clear its tasks once it has finished"
        ))),
        Err(StartError::Store(e)) => Err(e.into()),
        Err(e @ StartError::Conflict { .. }) => Err(ApiError::conflict(e.to_string())),
    }
}

/// `POST /dags/{dag_id}/backfills` (Airflow 3's backfill fields).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct BackfillBody {
    /// First logical date (RFC 3339 or YYYY-MM-DD in the DAG's timezone).
    from_date: String,
    /// Last logical date: intervals starting at or before it are included.
    to_date: String,
    /// `none` (default) skips every interval that has a run; `failed` re-runs those whose
    /// run failed or was cancelled.
    #[serde(default)]
    reprocess_behavior: Reprocess,
    /// Most runs of this DAG's backfills active at once (the DAG's max_active_runs still applies).
    max_active_runs: Option<u32>,
    /// Answer with the plan, queue nothing.
    #[serde(default)]
    dry_run: bool,
}

/// Which intervals that already have a run a backfill runs again.
#[derive(Debug, Default, Clone, Copy, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub(super) enum Reprocess {
    /// None: every existing run is skipped.
    #[default]
    None,
    /// Runs that failed or were cancelled get a new attempt.
    Failed,
}

fn backfill_error(error: crate::backfill::BackfillError) -> ApiError {
    use crate::backfill::BackfillError;
    match error {
        BackfillError::Store(e) => e.into(),
        BackfillError::Start(StartError::Store(e)) => e.into(),
        BackfillError::Start(e @ StartError::Unfinished { .. }) => {
            ApiError::conflict(e.to_string())
        }
        e => ApiError::bad_request(e.to_string()),
    }
}

/// One interval of a backfill's plan and what the backfill does with it.
#[derive(Debug, Serialize)]
struct BackfillIntervalJson {
    logical_date: String,
    data_interval_start: String,
    data_interval_end: String,
    /// The run that covers the interval already, if any.
    dag_run_id: Option<String>,
    /// `action`: create, rerun or skip (with the existing run's `state`).
    #[serde(flatten)]
    action: crate::backfill::Action,
}

/// `POST /dags/{dag_id}/backfills`: plans a run per schedule interval starting in
/// `[from_date, to_date]` and queues it (or, with `dry_run`, only answers with the plan).
async fn create_backfill(
    State(state): State<AppState>,
    Path(dag_id): Path<String>,
    body: Option<Json<Value>>,
) -> Result<Json<Value>, ApiError> {
    use crate::backfill::{self, BackfillRequest};
    let dag = find_dag(&state, &dag_id)?;
    let body: BackfillBody = json_body(
        body,
        r#"{"from_date": "2026-11-01", "to_date": "2026-11-02", "dry_run": true}"#,
    )?;
    let parse_date = |field: &str, text: &str| {
        parse_instant(text, dag.timezone)
            .map_err(|e| ApiError::bad_request(format!("{field}: {e}")))
    };
    let request = BackfillRequest {
        from: parse_date("from_date", &body.from_date)?,
        to: parse_date("to_date", &body.to_date)?,
        rerun_failed: matches!(body.reprocess_behavior, Reprocess::Failed),
        max_active_runs: body.max_active_runs,
    };
    let plan = backfill::plan(state.store.as_ref(), &dag, request)
        .await
        .map_err(backfill_error)?;
    let intervals: Vec<BackfillIntervalJson> = plan
        .runs
        .iter()
        .map(|p| BackfillIntervalJson {
            logical_date: instant(p.interval.start),
            data_interval_start: instant(p.interval.start),
            data_interval_end: instant(p.interval.end),
            dag_run_id: p.existing_run_id.clone(),
            action: p.action,
        })
        .collect();
    let queued = if body.dry_run {
        Vec::new()
    } else {
        backfill::queue(&state.store, &dag, &plan, Utc::now())
            .await
            .map_err(backfill_error)?
    };
    Ok(Json(json!({
        "dag_id": dag.dag_id,
        "from_date": time(Some(plan.request.from)),
        "to_date": time(Some(plan.request.to)),
        "max_active_runs": plan.request.max_active_runs,
        "dry_run": body.dry_run,
        "intervals": intervals,
        "total_entries": intervals.len(),
        "queued": queued.iter().map(|q| json!({
            "dag_run_id": q.run_id,
            "logical_date": time(Some(q.logical_date)),
        })).collect::<Vec<_>>(),
    })))
}
