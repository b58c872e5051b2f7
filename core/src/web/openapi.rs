//! The OpenAPI document of `/api/v1`, generated from the operation table: request and answer
//! schemas come from the types the handlers read and write (schemars), so the document and
//! the code cannot drift apart; a test calls every operation and checks each answer against
//! its documented schema.

use axum::Json;
use schemars::JsonSchema;
use serde_json::{json, Value};

use super::api::{
    AuditLogJson, BackfillBody, ClearBody, DagPatch, DagRunCollection, DagRunJson, DagVersionJson,
    DeliveryLedgerJson, MarkBody, ProblemJson, RunAttemptCollection, RunPatch,
    TaskInstanceCollection, TaskInstanceJson, TriggerBody, WorkerCollection,
};
use super::v2;

/// One operation of the API, for the OpenAPI document.
pub struct Operation {
    /// HTTP method, lower case.
    pub method: &'static str,
    /// Path under `/api/v1`, with `{parameters}`.
    pub path: &'static str,
    /// What it does.
    pub summary: &'static str,
    /// The request body's JSON schema, derived from the type the handler reads it into.
    pub body: Option<fn() -> Value>,
    /// The answer's JSON schema, derived from the type the handler answers with (where the
    /// answer has one).
    pub answer: Option<fn() -> Value>,
}

/// The OpenAPI 3.0 schema of a request or answer type, from its serde shape and doc comments.
fn schema<T: JsonSchema>() -> Value {
    let mut schema = schemars::generate::SchemaSettings::openapi3()
        .into_generator()
        .into_root_schema_for::<T>()
        .to_value();
    if let Some(object) = schema.as_object_mut() {
        object.remove("$schema");
    }
    as_openapi3(&mut schema);
    schema
}

/// Rewrites JSON Schema that OpenAPI 3.0 does not take into what it does: `"type": [T,
/// "null"]` and `anyOf: [X, {"type": "null"}]` become `nullable: true`, `const` becomes a
/// one-value `enum`, and a `$ref` with siblings moves into `allOf`. schemars' OpenAPI settings
/// rewrite the root schema but not every subschema, so this walks them all.
fn as_openapi3(schema: &mut Value) {
    match schema {
        Value::Object(object) => {
            // JSON Schema's `true` (anything) is not an OpenAPI 3.0 schema: `{}` is.
            if object.get("items") == Some(&Value::Bool(true)) {
                object.insert("items".into(), json!({}));
            }
            if let Some(Value::Object(properties)) = object.get_mut("properties") {
                for property in properties.values_mut() {
                    if *property == Value::Bool(true) {
                        *property = json!({});
                    }
                }
            }
            if let Some(value) = object.remove("const") {
                object.insert("enum".into(), Value::Array(vec![value]));
            }
            if let Some(Value::Array(types)) = object.get("type") {
                let named: Vec<Value> = types.iter().filter(|t| *t != "null").cloned().collect();
                if named.len() == 1 && named.len() < types.len() {
                    object.insert("type".into(), named[0].clone());
                    object.insert("nullable".into(), Value::Bool(true));
                }
            }
            if let Some(Value::Array(options)) = object.get("anyOf") {
                let null = json!({"type": "null"});
                if options.len() == 2 && options.contains(&null) {
                    let other: Vec<Value> =
                        options.iter().filter(|o| **o != null).cloned().collect();
                    object.remove("anyOf");
                    object.insert("allOf".into(), Value::Array(other));
                    object.insert("nullable".into(), Value::Bool(true));
                }
            }
            if object.len() > 1 {
                if let Some(reference) = object.remove("$ref") {
                    object.insert("allOf".into(), json!([{ "$ref": reference }]));
                }
            }
            object.values_mut().for_each(as_openapi3);
        }
        Value::Array(items) => items.iter_mut().for_each(as_openapi3),
        _ => {}
    }
}

const fn op(
    method: &'static str,
    path: &'static str,
    summary: &'static str,
    body: Option<fn() -> Value>,
) -> Operation {
    Operation {
        method,
        path,
        summary,
        body,
        answer: None,
    }
}

impl Operation {
    /// The same operation, documenting its answer as `T`.
    const fn answers(self, answer: fn() -> Value) -> Self {
        Self {
            answer: Some(answer),
            ..self
        }
    }
}

/// Every operation of the API (a test calls each one).
pub const OPERATIONS: &[Operation] = &[
    op(
        "get",
        "/dags",
        "List DAGs with schedule, paused flag, last and next run and recent run states",
        None,
    ),
    op("get", "/dags/{dag_id}", "A DAG with its tasks", None),
    op(
        "patch",
        "/dags/{dag_id}",
        "Pause or unpause a DAG",
        Some(schema::<DagPatch>),
    ),
    op(
        "get",
        "/dags/{dag_id}/tasks",
        "A DAG's tasks with dependencies and trigger rules",
        None,
    ),
    op(
        "get",
        "/dags/{dag_id}/grid",
        "The latest runs of a DAG with all their task instances (the UI grid)",
        None,
    ),
    op(
        "get",
        "/dags/{dag_id}/dagRuns",
        "A DAG's runs, newest first (limit, offset, state)",
        None,
    )
    .answers(schema::<DagRunCollection>),
    op(
        "post",
        "/dags/{dag_id}/dagRuns",
        "Trigger a run (a new attempt if the logical date already ran)",
        Some(schema::<TriggerBody>),
    )
    .answers(schema::<DagRunJson>),
    op(
        "get",
        "/dags/{dag_id}/dagRuns/{dag_run_id}",
        "One run",
        None,
    )
    .answers(schema::<DagRunJson>),
    op(
        "patch",
        "/dags/{dag_id}/dagRuns/{dag_run_id}",
        "Stop a running or queued run: its tries are stopped with their grace period, what has not started is cancelled, and the run ends in the state given (failed or cancelled)",
        Some(schema::<RunPatch>),
    )
    .answers(schema::<DagRunJson>),
    op(
        "get",
        "/dags/{dag_id}/dagRuns/{dag_run_id}/taskInstances",
        "A run's task instances",
        None,
    )
    .answers(schema::<TaskInstanceCollection>),
    op(
        "get",
        "/dags/{dag_id}/dagRuns/{dag_run_id}/attempts",
        "A run's attempts: the first and each re-run, with conf, state and times",
        None,
    )
    .answers(schema::<RunAttemptCollection>),
    op(
        "get",
        "/dags/{dag_id}/dagVersions/{version}",
        "A stored DAG version (a run's dag_hash): its DAG file and SQL files, and a unified diff to the version loaded now",
        None,
    )
    .answers(schema::<DagVersionJson>),
    op(
        "get",
        "/dags/{dag_id}/dagRuns/{dag_run_id}/taskInstances/{task_id}/deliveries",
        "The delivery ledger of an item-by-item task: delivered and failed counts, failed items with their last error (attempt, limit)",
        None,
    )
    .answers(schema::<DeliveryLedgerJson>),
    op(
        "get",
        "/workers",
        "The worker processes (sluice worker): queues, concurrency, last heartbeat, alive",
        None,
    )
    .answers(schema::<WorkerCollection>),
    op(
        "get",
        "/auditLog",
        "Who changed what, when and from where: every mutating request with its outcome, newest first (admin; limit, offset)",
        None,
    )
    .answers(schema::<AuditLogJson>),
    op(
        "get",
        "/dags/{dag_id}/dagRuns/{dag_run_id}/taskInstances/{task_id}",
        "One task instance",
        None,
    )
    .answers(schema::<TaskInstanceJson>),
    op(
        "patch",
        "/dags/{dag_id}/dagRuns/{dag_run_id}/taskInstances/{task_id}",
        "Mark a task of a finished run success or failed; `failed` on a running run stops the task (its try ends failed without a retry)",
        Some(schema::<MarkBody>),
    ),
    op(
        "get",
        "/dags/{dag_id}/dagRuns/{dag_run_id}/taskInstances/{task_id}/logs/{try_number}",
        "A try's log (JSON, or text with Accept: text/plain)",
        None,
    ),
    op(
        "post",
        "/dags/{dag_id}/clearTaskInstances",
        "Clear tasks of a finished run so they run again",
        Some(schema::<ClearBody>),
    ),
    op(
        "post",
        "/dags/{dag_id}/backfills",
        "Queue a run per schedule interval in a date range (or only plan it, with dry_run)",
        Some(schema::<BackfillBody>),
    ),
    op("get", "/importErrors", "Errors in DAG files", None),
    op(
        "get",
        "/operators",
        "Operators with their config schemas",
        None,
    ),
    op(
        "get",
        "/events",
        "Server-sent events: `change` whenever runs or tasks change",
        None,
    ),
    op("get", "/openapi.json", "This document", None),
];

/// `GET /api/v1/openapi.json`, generated from [`OPERATIONS`].
pub(super) async fn openapi() -> Json<Value> {
    Json(document(
        "sluice REST API (Airflow 2's /api/v1)",
        "/api/v1",
        OPERATIONS,
    ))
}

/// Every operation of `/api/v2` (Airflow 3's shapes; a test calls each one with the official
/// Airflow 3 client).
pub const V2_OPERATIONS: &[Operation] = &[
    op("get", "/dags", "List DAGs (limit, offset, paused, dag_id_pattern)", None)
        .answers(schema::<v2::DagCollection>),
    op("get", "/dags/{dag_id}", "One DAG", None).answers(schema::<v2::DagJson>),
    op(
        "patch",
        "/dags/{dag_id}",
        "Pause or unpause a DAG",
        Some(schema::<v2::DagPatchBody>),
    )
    .answers(schema::<v2::DagJson>),
    op(
        "get",
        "/dags/{dag_id}/dagRuns",
        "A DAG's runs, newest first (limit, offset, state)",
        None,
    )
    .answers(schema::<v2::DagRunCollection>),
    op(
        "post",
        "/dags/{dag_id}/dagRuns",
        "Trigger a run, optionally with its own dag_run_id and a note",
        Some(schema::<v2::TriggerBody>),
    )
    .answers(schema::<v2::DagRunJson>),
    op("get", "/dags/{dag_id}/dagRuns/{dag_run_id}", "One run", None)
        .answers(schema::<v2::DagRunJson>),
    op(
        "get",
        "/dags/{dag_id}/dagRuns/{dag_run_id}/taskInstances",
        "A run's task instances (limit, offset, state)",
        None,
    )
    .answers(schema::<v2::TaskInstanceCollection>),
    op(
        "get",
        "/dags/{dag_id}/dagRuns/{dag_run_id}/taskInstances/{task_id}",
        "One task instance",
        None,
    )
    .answers(schema::<v2::TaskInstanceJson>),
    op(
        "get",
        "/dags/{dag_id}/dagRuns/{dag_run_id}/taskInstances/{task_id}/logs/{try_number}",
        "A try's log from its start, in pieces (token: the previous piece's continuation_token)",
        None,
    )
    .answers(schema::<v2::LogJson>),
    op(
        "post",
        "/dags/{dag_id}/clearTaskInstances",
        "Clear tasks of a finished run so they run again (Airflow's defaults: dry_run and only_failed are true)",
        Some(schema::<v2::ClearBody>),
    )
    .answers(schema::<v2::TaskInstanceCollection>),
    op("get", "/version", "sluice's version (no token needed)", None)
        .answers(schema::<v2::VersionJson>),
    op(
        "get",
        "/monitor/health",
        "The metadata store's and the schedulers' health (no token needed)",
        None,
    ),
    op("get", "/openapi.json", "This document", None),
];

/// `GET /api/v2/openapi.json`, generated from [`V2_OPERATIONS`].
pub(super) async fn openapi_v2() -> Json<Value> {
    Json(document(
        "sluice REST API (Airflow 3's /api/v2)",
        "/api/v2",
        V2_OPERATIONS,
    ))
}

/// The OpenAPI document of `operations` served under `server`: request and answer schemas
/// come from the types the handlers read and write; types they share sit under
/// `components/schemas`.
fn document(title: &str, server: &str, operations: &[Operation]) -> Value {
    let mut components = serde_json::Map::new();
    // A schema's own subschemas move to the document's components (their `$ref`s point there).
    let mut hoist = |mut schema: Value| {
        if let Some(defs) = schema
            .pointer_mut("/components/schemas")
            .map(Value::take)
            .and_then(|d| d.as_object().cloned())
        {
            components.extend(defs);
        }
        if let Some(object) = schema.as_object_mut() {
            object.remove("components");
        }
        schema
    };
    let problem = hoist(schema::<ProblemJson>());
    let mut paths = serde_json::Map::new();
    for operation in operations {
        let params: Vec<Value> = operation
            .path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        let mut ok = json!({"description": "OK"});
        if let Some(answer) = operation.answer {
            ok["content"] = json!({"application/json": {"schema": hoist(answer())}});
        }
        let mut op = json!({
            "summary": operation.summary,
            "parameters": params,
            "responses": {
                "200": ok,
                "4XX": {"description": "A problem with the request", "content": {"application/json": {"schema": problem}}},
            },
        });
        if let Some(body) = operation.body {
            op["requestBody"] = json!({"required": true, "content": {"application/json": {"schema": hoist(body())}}});
            op["security"] = json!([{"bearer": []}, {"basic": []}]);
        }
        paths
            .entry(operation.path.to_string())
            .or_insert_with(|| json!({}))[operation.method] = op;
    }
    json!({
        "openapi": "3.0.3",
        "info": {"title": title, "version": env!("CARGO_PKG_VERSION")},
        "servers": [{"url": server}],
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "basic": {"type": "http", "scheme": "basic", "description": "Airflow 2 clients: any user name, the token as the password"},
            },
            "schemas": components,
        },
        "paths": paths,
    })
}
