//! The official Airflow API clients from PyPI against `sluice standalone` with a token: the
//! Airflow 3 client on `/api/v2` (bearer token) and the Airflow 2 client on `/api/v1` (Basic
//! auth, the token as the password), each with its own response validation on, list and read
//! DAGs page by page, pause and unpause, trigger a run with its own id, conf and note, follow
//! it to success, page its task instances, read a log and clear a task. And both OpenAPI
//! documents pass `openapi-spec-validator`.
//!
//! The clients run in virtualenvs of their own made by `scripts/py-venv` (pinned versions,
//! never the system Python); `tests/airflow_clients/*.py` drive them and print what they saw.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;
use support::{sluice, start_webserver};

const AIRFLOW3: &[&str] = &[
    "apache-airflow-client==3.3.2",
    "openapi-spec-validator==0.9.0",
];
const AIRFLOW2: &[&str] = &["apache-airflow-client==2.10.0"];
const TOKEN: &str = "airflow-clients-test-token-0123456789";

const ETL: &str = "dag_id: etl\nschedule: none\ntags: [core]\ntasks:\n  - {id: extract, operator: shell, config: {command: \"echo extracted for the client\"}}\n  - {id: load, operator: noop, depends_on: extract}\n";
const OTHER: &str = "dag_id: other\nschedule: '@daily'\ntasks:\n  - {id: only, operator: noop}\n";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

/// The virtualenv `name` with `requirements`, made (once) by `scripts/py-venv`.
fn venv(name: &str, requirements: &[&str]) -> PathBuf {
    let out = Command::new(root().join("scripts/py-venv"))
        .arg(name)
        .args(requirements)
        .stderr(Stdio::inherit())
        .output()
        .expect("scripts/py-venv runs");
    assert!(out.status.success(), "scripts/py-venv {name} failed");
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// A folder with two DAGs and `sluice standalone` over it, with an admin token.
fn standalone() -> (tempfile::TempDir, support::Process, String) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("dags")).unwrap();
    std::fs::write(dir.path().join("dags/etl.yaml"), ETL).unwrap();
    std::fs::write(dir.path().join("dags/other.yaml"), OTHER).unwrap();
    let (process, base) = start_webserver(
        sluice(dir.path())
            .args(["standalone", "--port", "0"])
            .env("SLUICE_API_TOKEN", TOKEN),
    );
    (dir, process, base)
}

/// Runs a client script and returns the report it printed; fails with its output if it fails.
fn run_client(venv: &Path, script: &str, base: &str, run_id: &str) -> Value {
    let out = Command::new(venv.join("bin/python"))
        .arg(root().join("tests/airflow_clients").join(script))
        .args([base, TOKEN, "etl", run_id])
        .output()
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{script} failed:\n{stderr}\n{stdout}");
    assert!(!stderr.contains(TOKEN) && !stdout.contains(TOKEN));
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{script} printed {stdout}: {e}"))
}

#[test]
fn the_airflow_3_client_drives_api_v2() {
    let venv = venv("airflow3", AIRFLOW3);
    let (_dir, _sluice, base) = standalone();
    let r = run_client(&venv, "airflow3_client.py", &base, "from-airflow-3");

    assert_eq!(r["wrong_token_status"], 401);
    assert_eq!(r["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(r["health"]["metadatabase"], "healthy");
    assert_eq!(r["health"]["scheduler"], "healthy");
    // Two DAGs, one per page, in id order.
    assert_eq!(r["dags_total"], 2);
    assert_eq!(r["dag_pages"], serde_json::json!([["etl"], ["other"]]));
    assert_eq!(
        r["dag"]["timetable_summary"],
        Value::Null,
        "a manual DAG has no timetable"
    );
    assert_eq!(r["dag"]["tags"], serde_json::json!(["core"]));
    assert_eq!(r["paused_after_pause"], true);
    assert_eq!(r["paused_in_list"], serde_json::json!(["etl"]));
    assert_eq!(r["paused_after_unpause"], false);

    assert_eq!(r["triggered"]["dag_run_id"], "from-airflow-3");
    assert_eq!(r["triggered"]["conf"]["who"], "airflow3");
    assert_eq!(r["triggered"]["note"], "from the Airflow 3 client");
    assert_eq!(r["triggered"]["run_type"], "manual");
    assert_eq!(r["final_state"], "success");
    assert_eq!(r["runs_page"]["total"], 1);
    assert_eq!(r["runs_page"]["ids"], serde_json::json!(["from-airflow-3"]));

    // Two task instances, one per page; the third page is empty.
    assert_eq!(r["tis_total"], 2);
    assert_eq!(
        r["ti_pages"],
        serde_json::json!([[["extract", "success", 1]], [["load", "success", 1]], []])
    );
    // Filters take Airflow's state names, repeated as the client sends them.
    assert_eq!(
        r["tis_by_state"],
        serde_json::json!({"success": 2, "failed": 0, "skipped": 0, "none": 0})
    );
    assert_eq!(
        r["runs_by_state"],
        serde_json::json!({"success": 1, "failed": 0})
    );
    let lines: Vec<&str> = r["log"]["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    assert!(
        lines.iter().any(|l| l.contains("extracted for the client")),
        "{lines:?}"
    );
    assert_eq!(r["log"]["rest_lines"], 0, "the token reads on from the end");

    assert_eq!(r["dry_run_cleared"], serde_json::json!(["load"]));
    assert_eq!(r["cleared"], serde_json::json!(["load"]));
    assert_eq!(r["state_after_clear"], "success");
    assert_eq!(
        r["load_after_clear"], 2,
        "the cleared task ran a second try"
    );
}

#[test]
fn the_airflow_2_client_drives_api_v1_with_basic_auth() {
    let venv = venv("airflow2", AIRFLOW2);
    let (_dir, _sluice, base) = standalone();
    let r = run_client(&venv, "airflow2_client.py", &base, "from-airflow-2");

    assert_eq!(r["wrong_password_status"], 401);
    assert_eq!(r["dags_total"], 2);
    assert_eq!(r["dag_pages"], serde_json::json!([["etl"], ["other"]]));
    assert_eq!(r["paused_after_pause"], true);
    assert_eq!(r["paused_after_unpause"], false);
    assert_eq!(r["triggered"]["dag_run_id"], "from-airflow-2");
    assert_eq!(r["triggered"]["conf"]["who"], "airflow2");
    assert_eq!(r["triggered"]["note"], "from the Airflow 2 client");
    assert_eq!(r["final_state"], "success");
    assert_eq!(r["runs_page"]["ids"], serde_json::json!(["from-airflow-2"]));
    assert_eq!(r["tis_total"], 2);
    assert_eq!(
        r["ti_pages"],
        serde_json::json!([[["extract", "success", 1]], [["load", "success", 1]], []])
    );
    assert!(r["log"]["content"]
        .as_str()
        .unwrap()
        .contains("extracted for the client"));
    assert!(r["log"]["continuation_token"].is_string());
    assert_eq!(r["cleared"], serde_json::json!(["load"]));
    assert_eq!(r["state_after_clear"], "success");
    assert_eq!(r["load_after_clear"], 2);
}

#[tokio::test]
async fn both_openapi_documents_pass_openapi_spec_validator() {
    let venv = venv("airflow3", AIRFLOW3);
    let (dir, _sluice, base) = standalone();
    for version in ["v1", "v2"] {
        let document = reqwest::Client::new()
            .get(format!("{base}/api/{version}/openapi.json"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
            .error_for_status()
            .unwrap()
            .text()
            .await
            .unwrap();
        let file = dir.path().join(format!("openapi-{version}.json"));
        std::fs::write(&file, &document).unwrap();
        let out = Command::new(venv.join("bin/openapi-spec-validator"))
            .arg(&file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "/api/{version}/openapi.json is not valid OpenAPI:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
