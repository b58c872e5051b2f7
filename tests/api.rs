//! The REST API through `router()` on an ephemeral port: every endpoint, the auth rule, and
//! bad input answered with clear 4xx JSON.

#[path = "../core/tests/common/mod.rs"]
mod common;

use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

const ETL: &str = "dag_id: etl\nschedule: '*/15 * * * *'\ntags: [core]\ntasks:\n  - {id: extract, operator: shell, config: {command: \"echo 'hello <b>world</b>'\"}}\n  - {id: load, operator: noop, depends_on: extract}\n";

struct Server {
    dir: tempfile::TempDir,
    base: String,
    /// Sent with every read (reads need a token when one is configured).
    token: Option<String>,
    client: reqwest::Client,
    stop: CancellationToken,
}

async fn server(token: Option<&str>) -> Server {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("dags")).unwrap();
    std::fs::write(dir.path().join("dags/etl.yaml"), ETL).unwrap();
    std::fs::write(
        dir.path().join("dags/broken.yaml"),
        "dag_id: broken\ntasks: []\n",
    )
    .unwrap();
    let store = common::sqlite_store(dir.path()).await;
    let tokens = token
        .map(sluice_core::web::auth::Tokens::admin)
        .unwrap_or_default();
    let (base, stop) = common::serve_web(
        &dir.path().join("dags"),
        &dir.path().join("logs"),
        store,
        sluice_operators::registry(),
        tokens,
    )
    .await;
    Server {
        dir,
        base,
        token: token.map(str::to_string),
        client: reqwest::Client::new(),
        stop,
    }
}

impl Server {
    async fn get(&self, path: &str) -> (u16, Value) {
        self.get_as(path, self.token.as_deref()).await
    }

    async fn get_as(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        let mut request = self.client.get(format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let r = request.send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Value,
        token: Option<&str>,
    ) -> (u16, Value) {
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.base))
            .json(&body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let r = request.send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }
}

#[tokio::test]
async fn dags_runs_and_the_auth_rule() {
    let s = server(Some("s3cret-token")).await;
    let (status, health) = s.get("/health").await;
    assert_eq!(status, 200);
    assert_eq!(health["metadatabase"]["status"], "healthy");
    assert_eq!(
        health["scheduler"]["status"], "unhealthy",
        "no scheduler has run"
    );

    // Reads need the token too; /health does not.
    for path in ["/api/v1/dags", "/api/v1/dags/etl/dagRuns", "/api/v1/events"] {
        let (status, refused) = s.get_as(path, None).await;
        assert_eq!(status, 401, "{path}: {refused}");
        let (status, _) = s.get_as(path, Some("not-the-token")).await;
        assert_eq!(status, 401, "{path}");
    }
    assert_eq!(s.get_as("/health", None).await.0, 200);

    let (status, dags) = s.get("/api/v1/dags").await;
    assert_eq!(status, 200);
    assert_eq!(dags["total_entries"], 1);
    let etl = &dags["dags"][0];
    assert_eq!(
        (etl["dag_id"].as_str(), etl["is_paused"].as_bool()),
        (Some("etl"), Some(false))
    );
    assert_eq!(etl["schedule_interval"]["value"], "*/15 * * * *");
    assert_eq!(etl["tags"][0]["name"], "core");
    let (_, errors) = s.get("/api/v1/importErrors").await;
    assert_eq!(errors["total_entries"], 1);
    assert!(errors["import_errors"][0]["stack_trace"]
        .as_str()
        .unwrap()
        .contains("at least one task"));

    let (status, detail) = s.get("/api/v1/dags/etl").await;
    assert_eq!(status, 200);
    assert_eq!(detail["tasks"][0]["downstream_task_ids"], json!(["load"]));
    let (_, tasks) = s.get("/api/v1/dags/etl/tasks").await;
    assert_eq!(tasks["total_entries"], 2);

    // Mutations need the token.
    let (status, refused) = s
        .send(
            reqwest::Method::PATCH,
            "/api/v1/dags/etl",
            json!({"is_paused": true}),
            None,
        )
        .await;
    assert_eq!(status, 401);
    assert!(refused["detail"].as_str().unwrap().contains("Bearer"));
    let (status, _) = s
        .send(
            reqwest::Method::PATCH,
            "/api/v1/dags/etl",
            json!({"is_paused": true}),
            Some("wrong"),
        )
        .await;
    assert_eq!(status, 401);
    let (status, patched) = s
        .send(
            reqwest::Method::PATCH,
            "/api/v1/dags/etl",
            json!({"is_paused": true}),
            Some("s3cret-token"),
        )
        .await;
    assert_eq!((status, patched["is_paused"].as_bool()), (200, Some(true)));
    let (status, _) = s
        .send(
            reqwest::Method::POST,
            "/api/v1/dags/etl/dagRuns",
            json!({}),
            None,
        )
        .await;
    assert_eq!(status, 401);

    // Trigger with a logical date and conf.
    let body = json!({"logical_date": "2026-11-23T10:07:00Z", "conf": {"region": "eu"}});
    let (status, run) = s
        .send(
            reqwest::Method::POST,
            "/api/v1/dags/etl/dagRuns",
            body.clone(),
            Some("s3cret-token"),
        )
        .await;
    assert_eq!(status, 200, "{run}");
    assert_eq!(run["dag_run_id"], "manual__2026-11-23T10:00:00+00:00");
    assert_eq!(run["state"], "queued");
    assert_eq!(run["conf"]["region"], "eu");
    assert_eq!(run["data_interval_end"], "2026-11-23T10:15:00.000000Z");
    let (status, again) = s
        .send(
            reqwest::Method::POST,
            "/api/v1/dags/etl/dagRuns",
            body,
            Some("s3cret-token"),
        )
        .await;
    assert_eq!(
        status, 409,
        "the run for that date has not finished: {again}"
    );

    let (_, runs) = s.get("/api/v1/dags/etl/dagRuns").await;
    assert_eq!(runs["total_entries"], 1);
    let (status, one) = s
        .get("/api/v1/dags/etl/dagRuns/manual__2026-11-23T10:00:00+00:00")
        .await;
    assert_eq!((status, one["state"].as_str()), (200, Some("queued")));
    let (_, tis) = s
        .get("/api/v1/dags/etl/dagRuns/manual__2026-11-23T10:00:00+00:00/taskInstances")
        .await;
    assert_eq!(tis["total_entries"], 2);
    assert_eq!(tis["task_instances"][0]["state"], "pending");
    let (status, _) = s.get("/api/v1/dags/etl/dagRuns/manual__2026-11-23T10:00:00+00:00/taskInstances/extract/logs/1").await;
    assert_eq!(status, 404, "no try has run");

    let metrics = s
        .client
        .get(format!("{}/metrics", s.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("sluice_dag_runs_active{dag_id=\"etl\",state=\"queued\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("sluice_task_instances_active{state=\"pending\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("sluice_dags 1") && metrics.contains("sluice_dag_import_errors 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("# TYPE sluice_tries_running gauge"),
        "{metrics}"
    );
    s.stop.cancel();
}

#[tokio::test]
async fn bad_input_gets_clear_4xx_answers() {
    let s = server(None).await;
    let cases: Vec<(&str, u16, &str)> = vec![
        ("/api/v1/dags/nope", 404, "DAG `nope` not found"),
        (
            "/api/v1/dags?limit=0",
            400,
            "limit must be between 1 and 10000",
        ),
        ("/api/v1/dags?limit=abc", 400, ""),
        (
            "/api/v1/dags/etl/dagRuns?offset=-1",
            400,
            "offset must not be negative",
        ),
        (
            "/api/v1/dags/etl/dagRuns?state=zombie",
            400,
            "unknown state `zombie`",
        ),
        ("/api/v1/dags/etl/dagRuns/none", 404, "not found"),
        ("/api/v1/nothing", 404, ""),
    ];
    for (path, want, detail) in cases {
        let (status, body) = s.get(path).await;
        assert_eq!(status, want, "{path}: {body}");
        assert!(
            body.is_null() || body["detail"].as_str().unwrap_or("").contains(detail),
            "{path}: {body}"
        );
    }
    // Without a configured token, mutations are allowed (the server only listens on loopback).
    let post = |body: Value| {
        s.send(
            reqwest::Method::POST,
            "/api/v1/dags/etl/dagRuns",
            body,
            None,
        )
    };
    let (status, body) = post(json!({"conf": [1, 2]})).await;
    assert_eq!(
        (status, body["detail"].as_str()),
        (
            400,
            Some("conf must be a JSON object, like {\"key\": \"value\"}")
        )
    );
    let (status, body) = post(json!({"logical_date": "someday"})).await;
    assert_eq!(status, 400);
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .starts_with("logical_date:"),
        "{body}"
    );
    let (status, body) = post(json!({"confx": {}})).await;
    assert_eq!(status, 400);
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("unknown field `confx`"),
        "{body}"
    );
    let (status, _) = s
        .send(
            reqwest::Method::PATCH,
            "/api/v1/dags/etl",
            json!({"paused": true}),
            None,
        )
        .await;
    assert_eq!(status, 400);
    let (status, _) = post(json!({})).await;
    assert_eq!(status, 200, "a trigger with defaults");
    s.stop.cancel();
}

#[tokio::test]
async fn logs_of_a_try_and_the_ui_pages() {
    let s = server(None).await;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args([
            "dags",
            "test",
            "etl",
            "--logical-date",
            "2026-11-23T10:00:00Z",
        ])
        .env("SLUICE_HOME", s.dir.path())
        .env("SLUICE_DAGS_FOLDER", s.dir.path().join("dags"))
        .env_remove("SLUICE_DATABASE_URL")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let run = "manual__2026-11-23T10:00:00+00:00";
    // The DAG's disk use: the try log just written, no artifact.
    let (_, dag) = s.get("/api/v1/dags/etl").await;
    let log_file = s.dir.path().join(format!("logs/etl/{run}/extract/1.log"));
    assert_eq!(
        dag["disk_usage"]["log_bytes"].as_u64(),
        Some(std::fs::metadata(&log_file).unwrap().len()),
        "{dag}"
    );
    assert_eq!(dag["disk_usage"]["artifact_bytes"], 0);
    let (status, log) = s
        .get(&format!(
            "/api/v1/dags/etl/dagRuns/{run}/taskInstances/extract/logs/1"
        ))
        .await;
    assert_eq!(status, 200);
    assert!(
        log["content"]
            .as_str()
            .unwrap()
            .contains("OUT   hello <b>world</b>"),
        "{log}"
    );
    // Read in pieces: the continuation token (Airflow's) is where the next piece starts.
    let size = std::fs::metadata(&log_file).unwrap().len();
    assert_eq!(log["next_offset"], size);
    assert_eq!(log["continuation_token"], size.to_string());
    let logs = format!("/api/v1/dags/etl/dagRuns/{run}/taskInstances/extract/logs/1");
    let (_, rest) = s.get(&format!("{logs}?token={size}")).await;
    assert_eq!(rest["content"], "", "nothing new after the end");
    let (_, first) = s.get(&format!("{logs}?offset=0&limit=150")).await;
    let first_text = first["content"].as_str().unwrap();
    assert!(
        first_text.len() <= 150 && first_text.ends_with('\n'),
        "{first}"
    );
    let (_, second) = s
        .get(&format!("{logs}?offset={}", first["next_offset"]))
        .await;
    assert_eq!(
        format!("{first_text}{}", second["content"].as_str().unwrap()),
        log["content"].as_str().unwrap(),
        "two pieces make the whole log"
    );
    assert_eq!(s.get(&format!("{logs}?token=abc")).await.0, 400);
    let text = s
        .client
        .get(format!(
            "{}/api/v1/dags/etl/dagRuns/{run}/taskInstances/extract/logs/1",
            s.base
        ))
        .header("Accept", "text/plain")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("hello <b>world</b>"));
    for page in ["/", "/dags/etl"] {
        let html = s
            .client
            .get(format!("{}{page}", s.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            html.contains("<script src=\"/static/app.js\"></script>"),
            "{page}"
        );
    }
    let js = s
        .client
        .get(format!("{}/static/app.js", s.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        js.contains("textContent") && !js.contains("innerHTML"),
        "user strings are never parsed as HTML"
    );
    s.stop.cancel();
}

#[test]
fn the_server_refuses_a_public_address_without_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["webserver", "--host", "0.0.0.0", "--port", "0"])
        .env("SLUICE_HOME", dir.path())
        .env("SLUICE_DAGS_FOLDER", dir.path())
        .env_remove("SLUICE_DATABASE_URL")
        .env_remove("SLUICE_API_TOKEN")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("without an API token"));
}

#[tokio::test]
async fn the_event_stream_announces_changes() {
    let s = server(None).await;
    let mut stream = s
        .client
        .get(format!("{}/api/v1/events", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.headers()["content-type"], "text/event-stream");
    let (status, _) = s
        .send(
            reqwest::Method::POST,
            "/api/v1/dags/etl/dagRuns",
            json!({}),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let mut seen = String::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !seen.contains("event: change") {
        assert!(
            std::time::Instant::now() < deadline,
            "no change event: {seen:?}"
        );
        if let Ok(Ok(Some(chunk))) =
            tokio::time::timeout(std::time::Duration::from_millis(500), stream.chunk()).await
        {
            seen.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
    s.stop.cancel();
}

#[tokio::test]
async fn a_mutation_must_be_json_so_other_sites_cannot_trigger_runs() {
    let s = server(None).await;
    let r = s
        .client
        .post(format!("{}/api/v1/dags/etl/dagRuns", s.base))
        .body("")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 415);
    let r = s
        .client
        .post(format!("{}/api/v1/dags/etl/dagRuns", s.base))
        .header("Content-Type", "text/plain")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 415);
    let (_, runs) = s.get("/api/v1/dags/etl/dagRuns").await;
    assert_eq!(runs["total_entries"], 0);
    s.stop.cancel();
}

#[tokio::test]
async fn without_the_token_a_mutation_gets_401_whatever_its_body() {
    let s = server(Some("t0ken")).await;
    let r = s
        .client
        .patch(format!("{}/api/v1/dags/etl", s.base))
        .body("is_paused=true")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    s.stop.cancel();
}

#[tokio::test]
async fn the_grid_has_every_run_and_task_instance_in_one_answer() {
    let s = server(None).await;
    for day in 1..=3 {
        let body = json!({"logical_date": format!("2026-11-0{day}T00:00:00Z")});
        let (status, _) = s
            .send(
                reqwest::Method::POST,
                "/api/v1/dags/etl/dagRuns",
                body,
                None,
            )
            .await;
        assert_eq!(status, 200);
    }
    let (status, grid) = s.get("/api/v1/dags/etl/grid?limit=2").await;
    assert_eq!(status, 200, "{grid}");
    assert_eq!(
        grid["dag_runs"].as_array().unwrap().len(),
        2,
        "newest two runs"
    );
    assert_eq!(
        grid["task_instances"].as_array().unwrap().len(),
        4,
        "two tasks per run"
    );
    assert_eq!(grid["tasks"].as_array().unwrap().len(), 2);
    let (_, dags) = s.get("/api/v1/dags").await;
    assert_eq!(dags["dags"][0]["recent_runs"].as_array().unwrap().len(), 3);
    s.stop.cancel();
}

/// A finished run of `etl` in the server's home, made by the CLI.
fn finished_run(s: &Server) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args([
            "dags",
            "test",
            "etl",
            "--logical-date",
            "2026-11-23T10:00:00Z",
        ])
        .env("SLUICE_HOME", s.dir.path())
        .env("SLUICE_DAGS_FOLDER", s.dir.path().join("dags"))
        .env_remove("SLUICE_DATABASE_URL")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    "manual__2026-11-23T10:00:00+00:00".to_string()
}

#[tokio::test]
async fn tasks_are_marked_and_cleared_through_the_api() {
    let s = server(None).await;
    let run = finished_run(&s);
    let ti_path = format!("/api/v1/dags/etl/dagRuns/{run}/taskInstances/load");
    let (status, marked) = s
        .send(
            reqwest::Method::PATCH,
            &ti_path,
            json!({"new_state": "failed"}),
            None,
        )
        .await;
    assert_eq!(status, 200, "{marked}");
    assert_eq!(
        (
            marked["task_instance"]["state"].as_str(),
            marked["dag_run"]["state"].as_str()
        ),
        (Some("failed"), Some("failed"))
    );
    let (_, marked) = s
        .send(
            reqwest::Method::PATCH,
            &ti_path,
            json!({"new_state": "success"}),
            None,
        )
        .await;
    assert_eq!(
        marked["dag_run"]["state"], "success",
        "the run follows its tasks"
    );
    let (status, _) = s
        .send(
            reqwest::Method::PATCH,
            &ti_path,
            json!({"new_state": "running"}),
            None,
        )
        .await;
    assert_eq!(status, 400);
    let (status, _) = s
        .send(
            reqwest::Method::PATCH,
            &ti_path,
            json!({"new_state": "success"}),
            None,
        )
        .await;
    assert_eq!(
        status, 409,
        "success -> success is not a change the state machine allows"
    );

    let clear = "/api/v1/dags/etl/clearTaskInstances";
    let (status, dry) = s.send(reqwest::Method::POST, clear, json!({"dag_run_id": run, "task_ids": ["extract"], "include_downstream": true, "dry_run": true}), None).await;
    assert_eq!(
        (status, dry["task_instances"].as_array().unwrap().len()),
        (200, 2)
    );
    let (status, cleared) = s
        .send(
            reqwest::Method::POST,
            clear,
            json!({"dag_run_id": run, "task_ids": ["extract"], "include_downstream": true}),
            None,
        )
        .await;
    assert_eq!(status, 200, "{cleared}");
    assert_eq!(cleared["dag_run"]["state"], "queued");
    assert_eq!(cleared["task_instances"][0]["previous_state"], "success");
    let (status, _) = s
        .send(
            reqwest::Method::POST,
            clear,
            json!({"dag_run_id": run, "task_ids": ["extract"]}),
            None,
        )
        .await;
    assert_eq!(status, 409, "the run is queued again: not finished");
    let (status, _) = s
        .send(
            reqwest::Method::PATCH,
            &ti_path,
            json!({"new_state": "failed"}),
            None,
        )
        .await;
    assert_eq!(status, 409, "a run that has not finished cannot be marked");
    let (status, body) = s
        .send(
            reqwest::Method::POST,
            clear,
            json!({"dag_run_id": run, "task_ids": ["nope"]}),
            None,
        )
        .await;
    assert_eq!(status, 400, "{body}");
    s.stop.cancel();
}

#[tokio::test]
async fn every_operation_in_the_openapi_document_answers() {
    let s = server(None).await;
    let run = finished_run(&s);
    let (status, doc) = s.get("/api/v1/openapi.json").await;
    assert_eq!(status, 200);
    assert_eq!(doc["openapi"], "3.0.3");
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 14, "{}", paths.len());
    let (_, run_json) = s.get(&format!("/api/v1/dags/etl/dagRuns/{run}")).await;
    let version = run_json["dag_hash"].as_str().unwrap().to_string();
    for (path, ops) in paths {
        let concrete = path
            .replace("{version}", &version)
            .replace("{dag_id}", "etl")
            .replace("{dag_run_id}", &run)
            .replace("{task_id}", "extract")
            .replace("{try_number}", "1");
        for (method, _) in ops.as_object().unwrap() {
            let url = format!("{}/api/v1{concrete}", s.base);
            let request = match method.as_str() {
                "get" => s.client.get(&url),
                "patch" if path.ends_with("{task_id}") => s
                    .client
                    .patch(&url)
                    .json(&json!({"new_state": "failed", "dry_run": true})),
                "patch" if path.ends_with("{dag_run_id}") => s
                    .client
                    .patch(&url)
                    .json(&json!({"state": "failed", "dry_run": true})),
                "patch" => s.client.patch(&url).json(&json!({"is_paused": false})),
                "post" if path.ends_with("backfills") => s.client.post(&url).json(
                    &json!({"from_date": "2026-11-01", "to_date": "2026-11-02", "dry_run": true}),
                ),
                "post" if path.ends_with("clearTaskInstances") => s
                    .client
                    .post(&url)
                    .json(&json!({"dag_run_id": run, "task_ids": ["extract"], "dry_run": true})),
                "post" => s
                    .client
                    .post(&url)
                    .json(&json!({"logical_date": "2026-12-01T00:00:00Z"})),
                other => panic!("unexpected method {other}"),
            };
            let response = request.send().await.unwrap();
            assert!(
                response.status().is_success(),
                "{method} {path}: {}",
                response.status()
            );
            // Where the document describes the answer, the answer has what it promises.
            let schema = &doc["paths"][path][method]["responses"]["200"]["content"]
                ["application/json"]["schema"];
            if !schema.is_null() {
                let answer: Value = response.json().await.unwrap();
                conforms(&doc, schema, &answer, &format!("{method} {path}"));
            }
        }
    }
    s.stop.cancel();
}

/// Checks `value` against the parts of an OpenAPI schema the API uses: `$ref` (resolved in
/// the document), `allOf`, `nullable`, `type`, `enum`, `required`, `properties` and `items`.
fn conforms(doc: &Value, schema: &Value, value: &Value, at: &str) {
    if let Some(reference) = schema["$ref"].as_str() {
        let name = reference
            .strip_prefix("#/components/schemas/")
            .unwrap_or_else(|| panic!("{at}: $ref {reference} outside components"));
        let target = &doc["components"]["schemas"][name];
        assert!(!target.is_null(), "{at}: $ref {reference} does not resolve");
        return conforms(doc, target, value, at);
    }
    if value.is_null() && schema["nullable"] == true {
        return;
    }
    for part in schema["allOf"].as_array().into_iter().flatten() {
        conforms(doc, part, value, at);
    }
    if let Some(options) = schema["enum"].as_array() {
        assert!(options.contains(value), "{at}: {value} not in {options:?}");
    }
    let kind_ok = match schema["type"].as_str() {
        None => true,
        Some("object") => value.is_object(),
        Some("array") => value.is_array(),
        Some("string") => value.is_string(),
        Some("integer") => value.is_i64() || value.is_u64(),
        Some("number") => value.is_number(),
        Some("boolean") => value.is_boolean(),
        Some(other) => panic!("{at}: type {other} is not OpenAPI 3.0"),
    };
    assert!(kind_ok, "{at}: {value} is not a {}", schema["type"]);
    for field in schema["required"].as_array().into_iter().flatten() {
        let field = field.as_str().unwrap();
        assert!(
            value.get(field).is_some(),
            "{at}: missing `{field}` in {value}"
        );
    }
    if let Some(properties) = schema["properties"].as_object() {
        for (name, property) in properties {
            if let Some(inner) = value.get(name) {
                conforms(doc, property, inner, &format!("{at}.{name}"));
            }
        }
    }
    for item in value.as_array().into_iter().flatten() {
        conforms(doc, &schema["items"], item, &format!("{at}[]"));
    }
}

#[tokio::test]
async fn a_backfill_is_planned_with_dry_run_then_queued_with_its_cap() {
    let s = server(Some("t0ken")).await;
    let post = reqwest::Method::POST;
    let path = "/api/v1/dags/etl/backfills";
    let range = json!({"from_date": "2026-11-01T00:00:00Z", "to_date": "2026-11-01T00:45:00Z"});

    let (status, _) = s.send(post.clone(), path, range.clone(), None).await;
    assert_eq!(status, 401, "a backfill is a mutation");

    let mut dry = range.clone();
    dry["dry_run"] = json!(true);
    let (status, plan) = s.send(post.clone(), path, dry, Some("t0ken")).await;
    assert_eq!(status, 200, "{plan}");
    assert_eq!(plan["total_entries"], 4, "{plan}");
    assert_eq!(
        plan["intervals"][1]["logical_date"],
        "2026-11-01T00:15:00.000000Z"
    );
    assert_eq!(
        plan["intervals"][1]["data_interval_end"],
        "2026-11-01T00:30:00.000000Z"
    );
    assert!(plan["intervals"]
        .as_array()
        .unwrap()
        .iter()
        .all(|i| i["action"] == "create"));
    assert_eq!(plan["queued"], json!([]));
    let (_, runs) = s
        .send(
            reqwest::Method::GET,
            "/api/v1/dags/etl/dagRuns",
            json!(null),
            Some("t0ken"),
        )
        .await;
    assert_eq!(runs["total_entries"], 0, "a dry run queues nothing: {runs}");

    let mut real = range.clone();
    real["max_active_runs"] = json!(2);
    let (status, done) = s
        .send(post.clone(), path, real.clone(), Some("t0ken"))
        .await;
    assert_eq!(status, 200, "{done}");
    assert_eq!(done["queued"].as_array().unwrap().len(), 4, "{done}");
    let store = common::sqlite_store(s.dir.path()).await;
    let queued = store
        .list_runs(&sluice_core::store::RunFilter {
            dag_id: Some("etl".into()),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(queued.len(), 4);
    assert!(queued
        .iter()
        .all(|r| r.run_type == sluice_core::store::RunType::Backfill
            && r.backfill_max_active_runs == Some(2)
            && r.state == sluice_core::state::RunState::Queued));

    // Again: every interval has a run now.
    let (_, again) = s.send(post.clone(), path, real, Some("t0ken")).await;
    assert!(
        again["intervals"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["action"] == "skip"
                && i["state"] == "queued"
                && i["dag_run_id"].is_string()),
        "{again}"
    );
    assert_eq!(again["queued"], json!([]));

    for (body, expect) in [
        (
            json!({"from_date": "2026-11-02", "to_date": "2026-11-01"}),
            "before its start",
        ),
        (
            json!({"from_date": "yesterday", "to_date": "2026-11-01"}),
            "from_date",
        ),
        (
            json!({"from_date": "2026-11-01", "to_date": "2026-11-02", "reprocess_behavior": "completed"}),
            "reprocess_behavior",
        ),
        (
            json!({"from_date": "2026-11-01", "to_date": "2026-11-02", "max_active_runs": 0}),
            "at least 1",
        ),
    ] {
        let (status, error) = s
            .send(post.clone(), path, body.clone(), Some("t0ken"))
            .await;
        assert_eq!(status, 400, "{body}: {error}");
        assert!(
            error["detail"].as_str().unwrap().contains(expect),
            "{body}: {error}"
        );
    }
    let (status, _) = s
        .send(post, "/api/v1/dags/nope/backfills", range, Some("t0ken"))
        .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn a_runs_dag_version_and_its_changes_since_are_served() {
    let s = server(None).await;
    let run = finished_run(&s);
    let (_, run_json) = s.get(&format!("/api/v1/dags/etl/dagRuns/{run}")).await;
    let version = run_json["dag_hash"].as_str().unwrap().to_string();
    let path = format!("/api/v1/dags/etl/dagVersions/{version}");
    let (status, same) = s.get(&path).await;
    assert_eq!(status, 200, "{same}");
    assert_eq!(
        (
            same["is_current"].as_bool(),
            same["diff_from_current"].as_str()
        ),
        (Some(true), Some(""))
    );
    assert_eq!(same["dag_source"].as_str(), Some(ETL));
    // The file changes: the run's version stays what it ran, and the diff shows the change.
    let changed = ETL.replacen("dag_id: etl", "dag_id: etl\ndescription: changed", 1);
    assert_ne!(changed, ETL);
    std::fs::write(s.dir.path().join("dags/etl.yaml"), &changed).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let now = loop {
        let (_, now) = s.get(&path).await;
        if now["is_current"] == json!(false) {
            break now;
        }
        assert!(std::time::Instant::now() < deadline, "{now}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(now["dag_source"].as_str(), Some(ETL));
    let diff = now["diff_from_current"].as_str().unwrap();
    assert!(diff.contains("+description: changed"), "{diff}");
    assert_ne!(now["current_version"].as_str(), Some(version.as_str()));
    let (status, missing) = s.get("/api/v1/dags/etl/dagVersions/0000000000000000").await;
    assert_eq!(status, 404, "{missing}");
    s.stop.cancel();
}

/// What a browser watching the status page costs: an unchanged answer is revalidated with its
/// ETag and answered 304 without a body, a changed one gets a new ETag, and a client that
/// accepts gzip gets the same JSON compressed.
#[tokio::test]
async fn unchanged_reads_are_answered_304_and_gzipped_for_clients_that_take_it() {
    use std::io::Read as _;
    let s = server(Some("s3cret-token")).await;
    let url = format!("{}/api/v1/dags?limit=100", s.base);
    let get = |headers: &[(&str, &str)]| {
        let mut request = s.client.get(&url).bearer_auth("s3cret-token");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.send()
    };

    let first = get(&[]).await.unwrap();
    assert_eq!(first.status(), 200);
    let etag = first.headers()["etag"].to_str().unwrap().to_string();
    assert_eq!(first.headers()["cache-control"], "private, no-cache");
    let plain: Value = first.json().await.unwrap();
    assert_eq!(plain["dags"][0]["dag_id"], "etl");

    let again = get(&[("if-none-match", &etag)]).await.unwrap();
    assert_eq!(again.status(), 304, "nothing changed");
    assert_eq!(again.headers()["etag"].to_str().unwrap(), etag);
    assert!(again.bytes().await.unwrap().is_empty());
    // Another tag, or none: the whole answer.
    assert_eq!(
        get(&[("if-none-match", "\"not-it\"")])
            .await
            .unwrap()
            .status(),
        200
    );

    // A large answer (the OpenAPI document) goes gzipped to a client that takes gzip.
    let document = format!("{}/api/v1/openapi.json", s.base);
    let fetch = |encoding: &str| {
        s.client
            .get(&document)
            .bearer_auth("s3cret-token")
            .header("accept-encoding", encoding)
            .send()
    };
    let whole = fetch("identity").await.unwrap();
    assert!(whole.headers().get("content-encoding").is_none());
    let whole: Value = whole.json().await.unwrap();
    let zipped = fetch("gzip, deflate, br").await.unwrap();
    assert_eq!(zipped.status(), 200);
    assert_eq!(zipped.headers()["content-encoding"], "gzip");
    let bytes = zipped.bytes().await.unwrap();
    let mut text = String::new();
    flate2::read::GzDecoder::new(&bytes[..])
        .read_to_string(&mut text)
        .unwrap();
    assert!(
        bytes.len() * 3 < text.len(),
        "gzip pays: {} of {}",
        bytes.len(),
        text.len()
    );
    assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), whole);
    let refused = fetch("gzip;q=0").await.unwrap();
    assert!(refused.headers().get("content-encoding").is_none());
    let refused = fetch("gzip;Q=0, *").await.unwrap();
    assert!(
        refused.headers().get("content-encoding").is_none(),
        "gzip refused by name beats the wildcard"
    );
    let any = fetch("*").await.unwrap();
    assert_eq!(any.headers()["content-encoding"], "gzip");
    // Two representations, two tags: a 304 never stands for the other form.
    let plain_tag = fetch("identity").await.unwrap().headers()["etag"].clone();
    assert_ne!(any.headers()["etag"], plain_tag);

    // A change: the old tag no longer matches, and the answer says so.
    let (status, _) = s
        .send(
            reqwest::Method::PATCH,
            "/api/v1/dags/etl",
            json!({"is_paused": true}),
            Some("s3cret-token"),
        )
        .await;
    assert_eq!(status, 200);
    let changed = get(&[("if-none-match", &etag)]).await.unwrap();
    assert_eq!(changed.status(), 200);
    assert_ne!(changed.headers()["etag"].to_str().unwrap(), etag);
    let changed: Value = changed.json().await.unwrap();
    assert_eq!(changed["dags"][0]["is_paused"], true);
}

/// Every list pages with `limit` and `offset`, and says how many there are in all.
#[tokio::test]
async fn every_list_pages() {
    let s = server(None).await;
    let (status, tasks) = s.get("/api/v1/dags/etl/tasks?limit=1&offset=1").await;
    assert_eq!(status, 200);
    assert_eq!(tasks["total_entries"], 2);
    let ids: Vec<&str> = tasks["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["task_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["load"]);
    let (_, all) = s.get("/api/v1/operators").await;
    let total = all["total_entries"].as_u64().unwrap();
    assert!(total > 3);
    let (_, page) = s.get("/api/v1/operators?limit=2&offset=1").await;
    assert_eq!(page["total_entries"], total);
    assert_eq!(page["operators"].as_array().unwrap().len(), 2);
    assert_eq!(page["operators"][0]["name"], all["operators"][1]["name"]);
    let (_, errors) = s.get("/api/v1/importErrors?limit=1&offset=1").await;
    assert_eq!(errors["total_entries"], 1);
    assert_eq!(errors["import_errors"], json!([]));
    let (status, _) = s.get("/api/v1/workers?limit=0").await;
    assert_eq!(status, 400, "a limit below 1 is refused");
    let (status, runs) = s
        .get("/api/v1/dags/etl/dagRuns/nope/taskInstances?limit=5")
        .await;
    assert_eq!(status, 404, "{runs}");
}

/// Airflow 2's clients authenticate with Basic auth: the token is the password, the user name
/// is not checked, and the token's role still decides. The challenge stays `Bearer` (a Basic
/// one would make browsers pop their own login dialog over the UI).
#[tokio::test]
async fn basic_auth_takes_the_token_as_the_password_and_keeps_its_role() {
    use sluice_core::web::auth::{Role, Tokens};
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("dags")).unwrap();
    std::fs::write(dir.path().join("dags/etl.yaml"), ETL).unwrap();
    let store = common::sqlite_store(dir.path()).await;
    let tokens = Tokens::admin("admin-token-0123456789").with(
        Role::Viewer,
        "dashboards",
        "viewer-token-0123456789",
    );
    let (base, _stop) = common::serve_web(
        &dir.path().join("dags"),
        &dir.path().join("logs"),
        store,
        sluice_operators::registry(),
        tokens,
    )
    .await;
    let client = reqwest::Client::new();
    let read = |user: &str, password: &str| {
        client
            .get(format!("{base}/api/v1/dags"))
            .basic_auth(user, Some(password))
            .send()
    };
    assert_eq!(
        read("anyone", "viewer-token-0123456789")
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        read("", "admin-token-0123456789").await.unwrap().status(),
        200
    );
    let wrong = read("admin", "not-a-token-at-all").await.unwrap();
    assert_eq!(wrong.status(), 401);
    assert_eq!(wrong.headers()["www-authenticate"], "Bearer");
    let garbled = client
        .get(format!("{base}/api/v1/dags"))
        .header("authorization", "Basic %%%not-base64")
        .send()
        .await
        .unwrap();
    assert_eq!(garbled.status(), 401);
    // The viewer's token reads but may not pause, whichever way it is sent.
    let pause = client
        .patch(format!("{base}/api/v1/dags/etl"))
        .basic_auth("anyone", Some("viewer-token-0123456789"))
        .json(&json!({"is_paused": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(pause.status(), 403);
    let pause = client
        .patch(format!("{base}/api/v2/dags/etl"))
        .basic_auth("anyone", Some("admin-token-0123456789"))
        .json(&json!({"is_paused": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(pause.status(), 200);
    // Airflow 3's version and health need no token.
    for path in ["/api/v2/version", "/api/v2/monitor/health"] {
        let open = client.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(open.status(), 200, "{path}");
    }
    assert_eq!(
        client
            .get(format!("{base}/api/v2/dags"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
}

/// Clearing only the failed tasks of a run without failures changes nothing: the run keeps
/// its state and attempt (it is not queued again).
#[tokio::test]
async fn clearing_only_failed_tasks_of_a_successful_run_changes_nothing() {
    let s = server(None).await;
    let run = finished_run(&s);
    let (status, answer) = s
        .send(
            reqwest::Method::POST,
            "/api/v1/dags/etl/clearTaskInstances",
            json!({"dag_run_id": run, "task_ids": ["extract", "load"], "only_failed": true}),
            None,
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["task_instances"], json!([]));
    let (_, after) = s.get(&format!("/api/v1/dags/etl/dagRuns/{run}")).await;
    assert_eq!(
        (after["state"].as_str(), after["attempt"].as_u64()),
        (Some("success"), Some(1))
    );
    // Airflow 3's defaults (dry_run, only_failed) are as careful.
    let (status, answer) = s
        .send(
            reqwest::Method::POST,
            "/api/v2/dags/etl/clearTaskInstances",
            json!({"dag_run_id": run}),
            None,
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["total_entries"], 0);
    // A chosen run id: created once, refused when posted again; sluice's own forms refused.
    let body = json!({"dag_run_id": "reload-1", "logical_date": "2026-11-20T00:00:00Z"});
    let (status, created) = s
        .send(
            reqwest::Method::POST,
            "/api/v2/dags/etl/dagRuns",
            body.clone(),
            None,
        )
        .await;
    assert_eq!(status, 200, "{created}");
    assert_eq!(created["dag_run_id"], "reload-1");
    let (status, again) = s
        .send(
            reqwest::Method::POST,
            "/api/v2/dags/etl/dagRuns",
            body,
            None,
        )
        .await;
    assert_eq!(status, 409, "{again}");
    let (status, refused) = s
        .send(
            reqwest::Method::POST,
            "/api/v1/dags/etl/dagRuns",
            json!({"dag_run_id": "scheduled__2030-01-01T00:00:00+00:00"}),
            None,
        )
        .await;
    assert_eq!(status, 400, "{refused}");
    assert!(refused["detail"].as_str().unwrap().contains("scheduled__"));
}
