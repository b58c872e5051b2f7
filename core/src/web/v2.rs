//! `/api/v2`: Airflow 3's REST API for the operations sluice has, in Airflow 3's shapes, so
//! the official `apache-airflow-client` 3.x (and anything built on it) works unchanged, with
//! its own response validation on.
//!
//! Airflow's models are richer than sluice's records: fields sluice has no notion of carry
//! Airflow's neutral value (`map_index: -1`, `pool_slots: 1`, empty `dag_versions`) rather
//! than being left out, because the client requires them. Where a value has to be translated
//! (states, `max_tries`), the translation is documented on the field and in docs/api.md.

use axum::extract::{Path, Query, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::api::{find_dag, json_body, next_interval, paused_set};
use super::{ApiError, AppState};
use crate::dag::Dag;
use crate::runs::{start_run_with_id, StartError};
use crate::schedule::Schedule;
use crate::state::{RunState, TaskState};
use crate::store::{DagRun, RunFilter, RunType, TaskInstance, TaskKey};

/// The API routes that need a token (mounted under `/api/v2`).
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/dags", get(list_dags))
        .route("/dags/{dag_id}", get(get_dag).patch(patch_dag))
        .route("/dags/{dag_id}/dagRuns", get(list_runs).post(trigger_run))
        .route("/dags/{dag_id}/dagRuns/{dag_run_id}", get(get_run))
        .route(
            "/dags/{dag_id}/dagRuns/{dag_run_id}/taskInstances",
            get(list_task_instances),
        )
        .route(
            "/dags/{dag_id}/dagRuns/{dag_run_id}/taskInstances/{task_id}",
            get(get_task_instance),
        )
        .route(
            "/dags/{dag_id}/dagRuns/{dag_run_id}/taskInstances/{task_id}/logs/{try_number}",
            get(task_log),
        )
        .route(
            "/dags/{dag_id}/clearTaskInstances",
            post(clear_task_instances),
        )
        .route("/openapi.json", get(super::openapi::openapi_v2))
}

/// The routes Airflow 3 serves without a token: a load balancer's health check and the
/// version a client negotiates with.
pub fn public_routes() -> Router<AppState> {
    Router::new()
        .route("/version", get(version))
        .route("/monitor/health", get(health))
}

/// An instant as Airflow 3 writes it (RFC 3339, UTC, microseconds).
fn instant(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// Seconds from `start` to `end` when both are known.
fn seconds(start: Option<DateTime<Utc>>, end: Option<DateTime<Utc>>) -> Option<f64> {
    match (start, end) {
        (Some(s), Some(e)) if e >= s => Some((e - s).num_microseconds().unwrap_or(0) as f64 / 1e6),
        _ => None,
    }
}

/// `?limit=&offset=` (Airflow 3's defaults: 50, at most 10,000) and the filters sluice
/// supports. Other Airflow filters are refused by name rather than ignored: a list that
/// silently ignores a filter answers with the wrong rows.
#[derive(Debug, Default)]
struct ListQuery {
    limit: Option<i64>,
    offset: Option<i64>,
    /// Airflow 3's `order_by`: only each list's own order is accepted.
    order_by: Vec<String>,
    /// DAG list: `true` or `false`.
    paused: Option<bool>,
    /// DAG list: a case-insensitive substring of the id (`%` wildcards at the ends allowed).
    dag_id_pattern: Option<String>,
    /// Run and task-instance lists: the states wanted (the parameter repeated).
    state: Vec<String>,
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for ListQuery {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, ApiError> {
        let mut query = ListQuery::default();
        let raw = parts.uri.query().unwrap_or("");
        for (key, value) in form_urlencoded::parse(raw.as_bytes()) {
            let number = |v: &str| {
                v.parse::<i64>()
                    .map_err(|_| ApiError::bad_request(format!("{key}: `{v}` is not a number")))
            };
            match key.as_ref() {
                "limit" => query.limit = Some(number(&value)?),
                "offset" => query.offset = Some(number(&value)?),
                "order_by" => query.order_by.push(value.into_owned()),
                "state" => query.state.push(value.into_owned()),
                "dag_id_pattern" => query.dag_id_pattern = Some(value.into_owned()),
                "paused" => {
                    query.paused = Some(value.parse().map_err(|_| {
                        ApiError::bad_request(format!("paused: `{value}` is not true or false"))
                    })?)
                }
                // Keyset paging's first page: the same as no cursor.
                "cursor" if value.is_empty() => {}
                other => {
                    return Err(ApiError::bad_request(format!(
                        "query parameter `{other}` is not supported by sluice's /api/v2"
                    )))
                }
            }
        }
        Ok(query)
    }
}

impl ListQuery {
    fn bounds(&self) -> Result<(u32, u32), ApiError> {
        // Airflow 3's default page is 50.
        super::api::page_bounds(self.limit, self.offset, 50)
    }

    /// Refuses an `order_by` other than the list's own order.
    fn check_order(&self, allowed: &[&str]) -> Result<(), ApiError> {
        match self
            .order_by
            .iter()
            .find(|o| !allowed.contains(&o.as_str()))
        {
            Some(o) => Err(ApiError::bad_request(format!(
                "order_by `{o}` is not supported; this list is ordered by {}",
                allowed.join(" / ")
            ))),
            None => Ok(()),
        }
    }
}

// ------------------------------------------------------------------------------------ DAGs

/// A DAG's tag (Airflow 3's `DagTagResponse`).
#[derive(Debug, Serialize, JsonSchema)]
pub(super) struct DagTagJson {
    name: String,
    dag_id: String,
    dag_display_name: String,
}

/// A DAG (Airflow 3's `DAGResponse`).
#[derive(Debug, Serialize, JsonSchema)]
pub(super) struct DagJson {
    dag_id: String,
    /// sluice DAGs have no separate display name: the id.
    dag_display_name: String,
    is_paused: bool,
    /// A DAG whose file is gone is not listed at all, so never stale.
    is_stale: bool,
    last_parsed_time: Option<String>,
    last_expired: Option<String>,
    /// `dags-folder`: sluice reads one folder.
    bundle_name: Option<String>,
    bundle_version: Option<String>,
    /// The DAG file, relative to the DAGs folder.
    relative_fileloc: Option<String>,
    fileloc: String,
    /// The DAG's version (content hash): Airflow's opaque file token.
    file_token: String,
    description: Option<String>,
    /// The cron expression or preset as written (null for a manual DAG).
    timetable_summary: Option<String>,
    timetable_description: Option<String>,
    timetable_periodic: bool,
    timetable_partitioned: bool,
    is_backfillable: bool,
    tags: Vec<DagTagJson>,
    max_active_tasks: u32,
    max_active_runs: Option<u32>,
    max_consecutive_failed_dag_runs: u32,
    has_task_concurrency_limits: bool,
    has_import_errors: bool,
    next_dagrun_logical_date: Option<String>,
    next_dagrun_data_interval_start: Option<String>,
    next_dagrun_data_interval_end: Option<String>,
    next_dagrun_run_after: Option<String>,
    owners: Vec<String>,
    /// sluice: the DAG's timezone (IANA name).
    timezone: String,
}

fn dag_json(dag: &Dag, folder: &std::path::Path, paused: bool) -> DagJson {
    let next = next_interval(dag);
    let cron = matches!(dag.schedule, Schedule::Cron { .. });
    DagJson {
        dag_id: dag.dag_id.clone(),
        dag_display_name: dag.dag_id.clone(),
        is_paused: paused,
        is_stale: false,
        last_parsed_time: None,
        last_expired: None,
        bundle_name: Some("dags-folder".into()),
        bundle_version: None,
        relative_fileloc: dag
            .file
            .strip_prefix(folder)
            .ok()
            .map(|p| p.display().to_string()),
        fileloc: dag.file.display().to_string(),
        file_token: dag.hash.clone(),
        description: dag.description.clone(),
        timetable_summary: match dag.schedule {
            Schedule::Manual => None,
            ref other => Some(other.to_string()),
        },
        timetable_description: None,
        timetable_periodic: cron,
        timetable_partitioned: false,
        is_backfillable: cron,
        tags: dag
            .tags
            .iter()
            .map(|t| DagTagJson {
                name: t.clone(),
                dag_id: dag.dag_id.clone(),
                dag_display_name: dag.dag_id.clone(),
            })
            .collect(),
        max_active_tasks: dag.max_active_tasks,
        max_active_runs: Some(dag.max_active_runs),
        max_consecutive_failed_dag_runs: 0,
        has_task_concurrency_limits: false,
        has_import_errors: false,
        next_dagrun_logical_date: next.map(|n| instant(n.start)),
        next_dagrun_data_interval_start: next.map(|n| instant(n.start)),
        next_dagrun_data_interval_end: next.map(|n| instant(n.end)),
        next_dagrun_run_after: next.map(|n| instant(n.end)),
        owners: Vec::new(),
        timezone: dag.timezone.name().to_string(),
    }
}

/// A page of DAGs (Airflow 3's `DAGCollectionResponse`).
#[derive(Debug, Serialize, JsonSchema)]
pub(super) struct DagCollection {
    /// By id.
    dags: Vec<DagJson>,
    /// How many DAGs match, over all pages.
    total_entries: u64,
}

async fn list_dags(
    State(state): State<AppState>,
    query: ListQuery,
) -> Result<Json<DagCollection>, ApiError> {
    let (limit, offset) = query.bounds()?;
    query.check_order(&["dag_id"])?;
    let bag = state.dags.get();
    let paused = paused_set(&state).await?;
    let matching: Vec<&std::sync::Arc<Dag>> = bag
        .dags
        .values()
        .filter(|d| query.paused.is_none_or(|p| p == paused.contains(&d.dag_id)))
        .filter(|d| {
            query.dag_id_pattern.as_deref().is_none_or(|p| {
                d.dag_id
                    .to_lowercase()
                    .contains(&p.trim_matches('%').to_lowercase())
            })
        })
        .collect();
    Ok(Json(DagCollection {
        total_entries: matching.len() as u64,
        dags: matching
            .into_iter()
            .skip(offset as usize)
            .take(limit as usize)
            .map(|d| dag_json(d, &bag.folder, paused.contains(&d.dag_id)))
            .collect(),
    }))
}

async fn get_dag(
    State(state): State<AppState>,
    Path(dag_id): Path<String>,
) -> Result<Json<DagJson>, ApiError> {
    let dag = find_dag(&state, &dag_id)?;
    let paused = paused_set(&state).await?.contains(&dag_id);
    Ok(Json(dag_json(&dag, &state.dags.get().folder, paused)))
}

/// `PATCH /dags/{dag_id}` (Airflow 3's `DAGPatchBody`).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct DagPatchBody {
    /// A paused DAG gets no new scheduled runs; runs already going finish.
    is_paused: bool,
}

/// `?update_mask=is_paused` (the only field a DAG patch changes).
#[derive(Debug, Deserialize)]
struct UpdateMask {
    update_mask: Option<String>,
}

async fn patch_dag(
    State(state): State<AppState>,
    Path(dag_id): Path<String>,
    Query(mask): Query<UpdateMask>,
    body: Option<Json<Value>>,
) -> Result<Json<DagJson>, ApiError> {
    let dag = find_dag(&state, &dag_id)?;
    if let Some(field) = mask.update_mask.filter(|m| m != "is_paused") {
        return Err(ApiError::bad_request(format!(
            "update_mask: only is_paused can be changed, not `{field}`"
        )));
    }
    let patch: DagPatchBody = json_body(body, "{\"is_paused\": true}")?;
    state
        .store
        .set_paused(&dag_id, patch.is_paused, Utc::now())
        .await?;
    Ok(Json(dag_json(
        &dag,
        &state.dags.get().folder,
        patch.is_paused,
    )))
}

// ------------------------------------------------------------------------------------ runs

/// A DAG run (Airflow 3's `DAGRunResponse`).
#[derive(Debug, Serialize, JsonSchema)]
pub(super) struct DagRunJson {
    dag_run_id: String,
    dag_id: String,
    dag_display_name: String,
    logical_date: Option<String>,
    /// When the run was created (queued).
    queued_at: Option<String>,
    start_date: Option<String>,
    end_date: Option<String>,
    /// Seconds from start to end.
    duration: Option<f64>,
    data_interval_start: Option<String>,
    data_interval_end: Option<String>,
    /// A scheduled run's interval end; a triggered run's trigger time.
    run_after: String,
    last_scheduling_decision: Option<String>,
    /// `scheduled`, `manual` or `backfill`.
    run_type: String,
    /// `queued`, `running`, `success` or `failed` (Airflow has no `cancelled`: a cancelled
    /// run is `failed` here, and `sluice_state` says `cancelled`).
    state: String,
    /// `timetable` for scheduled runs, `backfill` for backfills, `rest_api` otherwise.
    triggered_by: Option<String>,
    /// The run's config, secrets masked.
    conf: Value,
    note: Option<String>,
    dag_versions: Vec<Value>,
    bundle_version: Option<String>,
    /// sluice: the run's own state, including `cancelled`.
    sluice_state: RunState,
    /// sluice: which attempt of the run this is, from 1.
    attempt: u32,
    /// sluice: the DAG version (content hash) the run executes.
    dag_hash: String,
}

impl From<&DagRun> for DagRunJson {
    fn from(run: &DagRun) -> Self {
        Self {
            dag_run_id: run.run_id.clone(),
            dag_id: run.dag_id.clone(),
            dag_display_name: run.dag_id.clone(),
            logical_date: Some(instant(run.logical_date)),
            queued_at: Some(instant(run.created_at)),
            start_date: run.started_at.map(instant),
            end_date: run.ended_at.map(instant),
            duration: seconds(run.started_at, run.ended_at),
            data_interval_start: Some(instant(run.data_interval_start)),
            data_interval_end: Some(instant(run.data_interval_end)),
            run_after: instant(match run.run_type {
                RunType::Scheduled => run.data_interval_end,
                _ => run.created_at,
            }),
            last_scheduling_decision: None,
            run_type: run.run_type.as_str().into(),
            state: airflow_run_state(run.state).into(),
            triggered_by: Some(
                match run.run_type {
                    RunType::Scheduled => "timetable",
                    RunType::Backfill => "backfill",
                    RunType::Manual => "rest_api",
                }
                .into(),
            ),
            conf: sluice_operator_api::secrets::with_keys_masked(&run.conf),
            note: run.note.clone(),
            dag_versions: Vec::new(),
            bundle_version: None,
            sluice_state: run.state,
            attempt: run.attempt,
            dag_hash: run.dag_hash.clone(),
        }
    }
}

/// Airflow 3's run states have no `cancelled`.
fn airflow_run_state(state: RunState) -> &'static str {
    match state {
        RunState::Cancelled => "failed",
        other => other.as_str(),
    }
}

/// A page of runs (Airflow 3's `DAGRunCollectionResponse`).
#[derive(Debug, Serialize, JsonSchema)]
pub(super) struct DagRunCollection {
    /// Newest logical date first.
    dag_runs: Vec<DagRunJson>,
    /// How many runs match, over all pages.
    total_entries: u64,
}

async fn list_runs(
    State(state): State<AppState>,
    Path(dag_id): Path<String>,
    query: ListQuery,
) -> Result<Json<DagRunCollection>, ApiError> {
    let (limit, offset) = query.bounds()?;
    query.check_order(&["-logical_date", "-run_after"])?;
    find_dag(&state, &dag_id)?;
    // Airflow's names, as the answers show states: `failed` includes cancelled runs.
    let mut states = Vec::new();
    for name in &query.state {
        match name.as_str() {
            "failed" => states.extend([RunState::Failed, RunState::Cancelled]),
            other => states.push(
                other
                    .parse::<RunState>()
                    .map_err(|e| ApiError::bad_request(format!("state: {e}")))?,
            ),
        }
    }
    let filter = RunFilter {
        dag_id: Some(dag_id),
        states,
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

async fn find_run(state: &AppState, dag_id: &str, run_id: &str) -> Result<DagRun, ApiError> {
    state
        .store
        .run(dag_id, run_id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("run `{run_id}` of DAG `{dag_id}` not found")))
}

async fn get_run(
    State(state): State<AppState>,
    Path((dag_id, run_id)): Path<(String, String)>,
) -> Result<Json<DagRunJson>, ApiError> {
    Ok(Json(DagRunJson::from(
        &find_run(&state, &dag_id, &run_id).await?,
    )))
}

/// `POST /dags/{dag_id}/dagRuns` (Airflow 3's `TriggerDAGRunPostBody`).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct TriggerBody {
    /// The run's id (letters, digits and `_ . ~ : + -`); default `manual__<logical date>`.
    dag_run_id: Option<String>,
    /// The run covers the schedule interval starting at the latest fire time at or before
    /// this (RFC 3339); null or absent: the latest complete interval.
    logical_date: Option<DateTime<Utc>>,
    /// If given, must be the start of the interval the logical date selects.
    data_interval_start: Option<DateTime<Utc>>,
    /// If given, must be the end of the interval the logical date selects.
    data_interval_end: Option<DateTime<Utc>>,
    /// A triggered run starts now; a `run_after` in the future is refused.
    run_after: Option<DateTime<Utc>>,
    /// The run's config: a JSON object that overrides the DAG's params.
    #[schemars(with = "Option<serde_json::Map<String, Value>>")]
    conf: Option<Value>,
    /// A note kept with the run (at most 1,000 characters).
    note: Option<String>,
    /// Refused unless null: sluice has no partitioned schedules.
    partition_key: Option<String>,
}

/// The longest note a run keeps (Airflow's limit).
const MAX_NOTE_CHARS: usize = 1000;

/// Refuses a note longer than [`MAX_NOTE_CHARS`].
pub(super) fn check_note(note: Option<&str>) -> Result<(), ApiError> {
    match note {
        Some(n) if n.chars().count() > MAX_NOTE_CHARS => Err(ApiError::bad_request(format!(
            "note: at most {MAX_NOTE_CHARS} characters"
        ))),
        _ => Ok(()),
    }
}

/// `run` with `note` stored on it (unchanged when there is none).
pub(super) async fn with_note(
    state: &AppState,
    run: DagRun,
    note: Option<String>,
) -> Result<DagRun, ApiError> {
    let Some(note) = note else { return Ok(run) };
    state
        .store
        .set_run_note(&run.dag_id, &run.run_id, Some(&note), Utc::now())
        .await?;
    Ok(DagRun {
        note: Some(note),
        ..run
    })
}

async fn trigger_run(
    State(state): State<AppState>,
    Path(dag_id): Path<String>,
    body: Option<Json<Value>>,
) -> Result<Json<DagRunJson>, ApiError> {
    let dag = find_dag(&state, &dag_id)?;
    let body: TriggerBody = json_body(body, "{\"logical_date\": null, \"conf\": {}}")?;
    let now = Utc::now();
    if body.partition_key.is_some() {
        return Err(ApiError::bad_request(
            "partition_key: sluice has no partitioned schedules; leave it out",
        ));
    }
    // A minute's grace: a client whose clock runs ahead may send its "now".
    if body
        .run_after
        .is_some_and(|t| t > now + chrono::Duration::seconds(60))
    {
        return Err(ApiError::bad_request(
            "run_after: a triggered run starts now; a later start is not supported",
        ));
    }
    check_note(body.note.as_deref())?;
    if let Some(id) = &body.dag_run_id {
        crate::runs::check_run_id(id)
            .map_err(|e| ApiError::bad_request(format!("dag_run_id: {e}")))?;
    }
    let conf = body.conf.unwrap_or_else(|| json!({}));
    crate::runs::check_conf(&conf).map_err(|e| ApiError::bad_request(format!("conf: {e}")))?;
    let interval = match body.logical_date {
        Some(t) => dag.interval_for(t),
        None => dag.default_interval(now),
    };
    for (field, given, actual) in [
        (
            "data_interval_start",
            body.data_interval_start,
            interval.start,
        ),
        ("data_interval_end", body.data_interval_end, interval.end),
    ] {
        if let Some(given) = given.filter(|g| *g != actual) {
            return Err(ApiError::bad_request(format!(
                "{field}: the schedule's interval for this logical date has {field} {}, not {}",
                instant(actual),
                instant(given)
            )));
        }
    }
    let started = start_run_with_id(
        &state.store,
        &dag,
        interval,
        RunType::Manual,
        conf,
        crate::runs::Chosen {
            run_id: body.dag_run_id.as_deref(),
            note: body.note.as_deref(),
        },
        now,
    )
    .await;
    let run = match started {
        Ok((run, _)) => run,
        Err(StartError::Store(e)) => return Err(e.into()),
        // The id is taken, or the logical date's run has not finished.
        Err(e) => return Err(ApiError::conflict(e.to_string())),
    };
    Ok(Json(DagRunJson::from(&run)))
}

// -------------------------------------------------------------------------- task instances

/// A task instance (Airflow 3's `TaskInstanceResponse`).
#[derive(Debug, Serialize, JsonSchema)]
pub(super) struct TaskInstanceJson {
    /// Stable for the task of the run: a UUID derived from DAG, run and task ids.
    id: String,
    task_id: String,
    dag_id: String,
    dag_run_id: String,
    /// sluice tasks are not mapped: always -1.
    map_index: i64,
    logical_date: Option<String>,
    run_after: String,
    start_date: Option<String>,
    end_date: Option<String>,
    duration: Option<f64>,
    /// Airflow's state: null for `pending` (not yet scheduled), `skipped` for `cancelled`
    /// (`sluice_state` keeps the distinction).
    state: Option<String>,
    /// Tries started so far.
    try_number: u32,
    /// Airflow's `max_tries` counts retries: the task's retries, not its tries.
    max_tries: u32,
    task_display_name: String,
    dag_display_name: String,
    hostname: Option<String>,
    unixname: Option<String>,
    /// The pool whose slots its tries take (`default_pool` when it names none).
    pool: String,
    pool_slots: u32,
    queue: Option<String>,
    priority_weight: Option<i64>,
    operator: Option<String>,
    operator_name: Option<String>,
    queued_when: Option<String>,
    scheduled_when: Option<String>,
    pid: Option<i64>,
    executor: Option<String>,
    executor_config: String,
    note: Option<String>,
    rendered_map_index: Option<String>,
    rendered_fields: Value,
    trigger: Option<Value>,
    triggerer_job: Option<Value>,
    dag_version: Option<Value>,
    /// sluice: the task instance's own state.
    sluice_state: TaskState,
    /// sluice: the last failed try's error.
    error: Option<String>,
    /// sluice: the worker that ran the latest try (null when the scheduler's process ran it).
    worker: Option<String>,
}

/// A UUID (version 8, RFC 9562's custom layout) from SHA-256 of the instance's key: Airflow
/// clients want an id, and sluice's key is (DAG, run, task).
fn instance_uuid(ti: &TaskInstance) -> String {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    for part in [&ti.dag_id, &ti.run_id, &ti.task_id] {
        hash.update((part.len() as u64).to_le_bytes());
        hash.update(part.as_bytes());
    }
    let mut b: [u8; 16] = hash.finalize()[..16].try_into().expect("16 bytes");
    b[6] = (b[6] & 0x0f) | 0x80;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Airflow's task states: no `pending` (null: not yet scheduled) and no `cancelled` (a task
/// a stopped run never ran is `skipped` in Airflow).
fn airflow_task_state(state: TaskState) -> Option<&'static str> {
    match state {
        TaskState::Pending => None,
        TaskState::Cancelled => Some("skipped"),
        other => Some(other.as_str()),
    }
}

fn task_instance_json(ti: &TaskInstance, run: &DagRun) -> TaskInstanceJson {
    TaskInstanceJson {
        id: instance_uuid(ti),
        task_id: ti.task_id.clone(),
        dag_id: ti.dag_id.clone(),
        dag_run_id: ti.run_id.clone(),
        map_index: -1,
        logical_date: Some(instant(run.logical_date)),
        run_after: DagRunJson::from(run).run_after,
        start_date: ti.started_at.map(instant),
        end_date: ti.ended_at.map(instant),
        duration: seconds(ti.started_at, ti.ended_at),
        state: airflow_task_state(ti.state).map(str::to_string),
        try_number: ti.try_number,
        max_tries: ti.max_tries.saturating_sub(1),
        task_display_name: ti.task_id.clone(),
        dag_display_name: ti.dag_id.clone(),
        hostname: ti.hostname.clone(),
        unixname: None,
        pool: ti.pool.clone().unwrap_or_else(|| "default_pool".into()),
        pool_slots: 1,
        queue: ti.queue.clone(),
        priority_weight: None,
        operator: Some(ti.operator.clone()),
        operator_name: Some(ti.operator.clone()),
        queued_when: ti.queued_at.map(instant),
        scheduled_when: None,
        pid: None,
        executor: None,
        executor_config: "{}".into(),
        note: None,
        rendered_map_index: None,
        rendered_fields: json!({}),
        trigger: None,
        triggerer_job: None,
        dag_version: None,
        sluice_state: ti.state,
        error: ti.error.clone(),
        worker: ti.worker.clone(),
    }
}

/// A page of task instances (Airflow 3's `TaskInstanceCollectionResponse`).
#[derive(Debug, Serialize, JsonSchema)]
pub(super) struct TaskInstanceCollection {
    /// By task id.
    task_instances: Vec<TaskInstanceJson>,
    /// How many match, over all pages.
    total_entries: u64,
}

async fn list_task_instances(
    State(state): State<AppState>,
    Path((dag_id, run_id)): Path<(String, String)>,
    query: ListQuery,
) -> Result<Json<TaskInstanceCollection>, ApiError> {
    let (limit, offset) = query.bounds()?;
    query.check_order(&["map_index"])?;
    let run = find_run(&state, &dag_id, &run_id).await?;
    // Airflow's names, as the answers show states: `skipped` includes cancelled tasks, and
    // `none` (Airflow's "no status") is a pending one.
    let mut states: Vec<TaskState> = Vec::new();
    for name in &query.state {
        match name.as_str() {
            "skipped" => states.extend([TaskState::Skipped, TaskState::Cancelled]),
            "none" | "no_status" => states.push(TaskState::Pending),
            other => states.push(
                other
                    .parse::<TaskState>()
                    .map_err(|e| ApiError::bad_request(format!("state: {e}")))?,
            ),
        }
    }
    let matching: Vec<TaskInstance> = state
        .store
        .task_instances(&dag_id, &run_id)
        .await?
        .into_iter()
        .filter(|ti| states.is_empty() || states.contains(&ti.state))
        .collect();
    Ok(Json(TaskInstanceCollection {
        total_entries: matching.len() as u64,
        task_instances: matching
            .iter()
            .skip(offset as usize)
            .take(limit as usize)
            .map(|ti| task_instance_json(ti, &run))
            .collect(),
    }))
}

async fn get_task_instance(
    State(state): State<AppState>,
    Path((dag_id, run_id, task_id)): Path<(String, String, String)>,
) -> Result<Json<TaskInstanceJson>, ApiError> {
    let run = find_run(&state, &dag_id, &run_id).await?;
    let tis = state.store.task_instances(&dag_id, &run_id).await?;
    let ti = tis.iter().find(|t| t.task_id == task_id).ok_or_else(|| {
        ApiError::not_found(format!(
            "task `{task_id}` of run `{run_id}` of DAG `{dag_id}` not found"
        ))
    })?;
    Ok(Json(task_instance_json(ti, &run)))
}

/// `?token=` (the previous answer's `continuation_token`), `full_content`, `map_index`.
#[derive(Debug, Deserialize)]
struct LogQuery {
    token: Option<String>,
    full_content: Option<bool>,
    map_index: Option<i64>,
}

/// A piece of a try's log (Airflow 3's `TaskInstancesLogResponse`).
#[derive(Debug, Serialize, JsonSchema)]
pub(super) struct LogJson {
    /// The piece's lines.
    content: Vec<String>,
    /// Pass as `token` to read on from where this piece ends.
    continuation_token: String,
}

/// Largest piece of a log one answer carries (`full_content` too: a log is read in pieces).
const LOG_CHUNK: u64 = 8 << 20;

async fn task_log(
    State(state): State<AppState>,
    Path((dag_id, run_id, task_id, try_number)): Path<(String, String, String, String)>,
    Query(query): Query<LogQuery>,
) -> Result<Json<LogJson>, ApiError> {
    if query.map_index.is_some_and(|m| m != -1) {
        return Err(ApiError::not_found(
            "sluice tasks are not mapped: map_index is -1",
        ));
    }
    // Airflow 3 reads a log from its start; the token is where the previous piece ended.
    let offset = match (&query.token, query.full_content) {
        (_, Some(true)) | (None, _) => 0,
        (Some(token), _) => token.parse::<u64>().map_err(|_| {
            ApiError::bad_request(format!(
                "token `{token}` is not a continuation token of this API"
            ))
        })?,
    };
    let (_, key, try_number) = super::api::find_try(
        &state,
        TaskKey {
            dag_id,
            run_id,
            task_id,
        },
        &try_number,
    )
    .await?;
    let chunk =
        crate::storage::logs::read_range(&state.places, &key, try_number, Some(offset), LOG_CHUNK)
            .await
            .map_err(|e| ApiError::internal(format!("reading a log: {e}")))?;
    Ok(Json(LogJson {
        content: chunk.content.lines().map(str::to_string).collect(),
        continuation_token: chunk.next_offset.to_string(),
    }))
}

/// `POST /dags/{dag_id}/clearTaskInstances` (Airflow 3's `ClearTaskInstancesBody`, with its
/// defaults: a dry run of the failed tasks unless told otherwise).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct ClearBody {
    /// The finished run whose tasks run again (sluice clears within one run).
    dag_run_id: Option<String>,
    /// The tasks to consider (`task_id` or `[task_id, map_index]`); default: all.
    task_ids: Option<Vec<Value>>,
    /// Answer with what would be cleared, change nothing (default true, as in Airflow).
    dry_run: Option<bool>,
    /// Only tasks that failed or whose upstream failed (default true, as in Airflow).
    only_failed: Option<bool>,
    /// Refused if true: only a finished run's tasks are cleared.
    only_running: Option<bool>,
    /// Clear what depends on them too.
    include_downstream: Option<bool>,
    /// Clear what they depend on too.
    include_upstream: Option<bool>,
    /// Refused if true: sluice clears within one run.
    include_future: Option<bool>,
    /// Refused if true: sluice clears within one run.
    include_past: Option<bool>,
    /// Accepted: a clear always queues the run's next attempt.
    reset_dag_runs: Option<bool>,
    /// Refused: give `dag_run_id`.
    start_date: Option<DateTime<Utc>>,
    /// Refused: give `dag_run_id`.
    end_date: Option<DateTime<Utc>>,
    /// Kept as the run's note.
    note: Option<String>,
    /// Accepted: the new attempt runs the DAG as loaded now when it changed.
    run_on_latest_version: Option<bool>,
    /// Accepted: running tasks are never cleared.
    prevent_running_task: Option<bool>,
}

async fn clear_task_instances(
    State(state): State<AppState>,
    Path(dag_id): Path<String>,
    body: Option<Json<Value>>,
) -> Result<Json<TaskInstanceCollection>, ApiError> {
    let dag = find_dag(&state, &dag_id)?;
    let body: ClearBody = json_body(
        body,
        "{\"dag_run_id\": …, \"task_ids\": […], \"dry_run\": false}",
    )?;
    for (field, set) in [
        ("only_running", body.only_running == Some(true)),
        ("include_future", body.include_future == Some(true)),
        ("include_past", body.include_past == Some(true)),
        ("start_date", body.start_date.is_some()),
        ("end_date", body.end_date.is_some()),
    ] {
        if set {
            return Err(ApiError::bad_request(format!(
                "{field}: sluice clears tasks of one finished run; give dag_run_id and task_ids"
            )));
        }
    }
    let _ = (
        body.reset_dag_runs,
        body.run_on_latest_version,
        body.prevent_running_task,
    );
    check_note(body.note.as_deref())?;
    let run_id = body.dag_run_id.ok_or_else(|| {
        ApiError::bad_request("dag_run_id: required (sluice clears within one run)")
    })?;
    let run = find_run(&state, &dag_id, &run_id).await?;
    let asked: Vec<String> = match &body.task_ids {
        None => dag.tasks.iter().map(|t| t.id.clone()).collect(),
        Some(ids) => ids
            .iter()
            .map(|v| match v {
                Value::String(s) => Ok(s.clone()),
                Value::Array(pair) => match pair.as_slice() {
                    [Value::String(s), m] if m.as_i64() == Some(-1) => Ok(s.clone()),
                    _ => Err(ApiError::bad_request(
                        "task_ids: sluice tasks are not mapped; give ids or [id, -1]",
                    )),
                },
                _ => Err(ApiError::bad_request("task_ids: give task ids")),
            })
            .collect::<Result<_, _>>()?,
    };
    let mut ids = dag
        .tasks_to_clear(&asked, body.include_downstream.unwrap_or(false))
        .map_err(|id| {
            ApiError::bad_request(format!("task_ids: DAG `{dag_id}` has no task `{id}`"))
        })?;
    if body.include_upstream == Some(true) {
        ids = dag.with_upstream(&ids);
    }
    let tis = state.store.task_instances(&dag_id, &run_id).await?;
    let only_failed = body.only_failed.unwrap_or(true);
    let chosen: Vec<&TaskInstance> = tis
        .iter()
        .filter(|ti| ids.contains(&ti.task_id))
        .filter(|ti| {
            !only_failed || matches!(ti.state, TaskState::Failed | TaskState::UpstreamFailed)
        })
        .collect();
    if body.dry_run.unwrap_or(true) || chosen.is_empty() {
        return Ok(Json(TaskInstanceCollection {
            total_entries: chosen.len() as u64,
            task_instances: chosen
                .iter()
                .map(|ti| task_instance_json(ti, &run))
                .collect(),
        }));
    }
    let chosen_ids: Vec<String> = chosen.iter().map(|ti| ti.task_id.clone()).collect();
    let (run, cleared) =
        match crate::runs::clear_tasks(&state.store, &dag, &run, &chosen_ids, None, Utc::now())
            .await
        {
            Ok(done) => done,
            Err(StartError::Store(e)) => return Err(e.into()),
            Err(e) => return Err(ApiError::conflict(e.to_string())),
        };
    let run = with_note(&state, run, body.note).await?;
    let after = state.store.task_instances(&dag_id, &run_id).await?;
    let cleared: Vec<TaskInstanceJson> = after
        .iter()
        .filter(|ti| cleared.iter().any(|c| c.task_id == ti.task_id))
        .map(|ti| task_instance_json(ti, &run))
        .collect();
    Ok(Json(TaskInstanceCollection {
        total_entries: cleared.len() as u64,
        task_instances: cleared,
    }))
}

// ------------------------------------------------------------------------- version, health

/// `GET /version` (Airflow 3's `VersionInfo`).
#[derive(Debug, Serialize, JsonSchema)]
pub(super) struct VersionJson {
    /// sluice's version.
    version: String,
    git_version: Option<String>,
}

async fn version() -> Json<VersionJson> {
    Json(VersionJson {
        version: env!("CARGO_PKG_VERSION").into(),
        git_version: None,
    })
}

/// `GET /monitor/health` (Airflow 3's `HealthInfoResponse`): 200 while the store answers.
async fn health(State(state): State<AppState>) -> impl axum::response::IntoResponse {
    let report = super::health::report(&state).await;
    let body = json!({
        "metadatabase": {"status": report.database_status()},
        "scheduler": {
            "status": report.scheduler_status(),
            "latest_scheduler_heartbeat": report.latest_scheduler_heartbeat(),
        },
        "triggerer": {"status": null, "latest_triggerer_heartbeat": null},
        "dag_processor": null,
    });
    (report.http_status(), Json(body))
}
