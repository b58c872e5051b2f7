//! The `sluice` binary as a user runs it: a DAG folder, the metadata store, exit codes.

#[path = "../core/tests/common/mod.rs"]
mod common;

use std::path::PathBuf;
use std::process::{Command, Output};

struct Home {
    dir: tempfile::TempDir,
    database_url: Option<String>,
}

impl Home {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("dags")).unwrap();
        Self {
            dir,
            database_url: None,
        }
    }

    fn dags(&self) -> PathBuf {
        self.dir.path().join("dags")
    }

    fn write(&self, name: &str, yaml: &str) {
        std::fs::write(self.dags().join(name), yaml).unwrap();
    }

    fn sluice(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
        cmd.args(args)
            .current_dir(self.dir.path())
            .env("SLUICE_HOME", self.dir.path().join("home"))
            .env("SLUICE_DAGS_FOLDER", self.dags())
            .env_remove("SLUICE_LOG");
        match &self.database_url {
            Some(url) => cmd.env("SLUICE_DATABASE_URL", url),
            None => cmd.env_remove("SLUICE_DATABASE_URL"),
        };
        cmd.output().unwrap()
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

const ETL: &str = "dag_id: etl\nschedule: '*/15 * * * *'\nparams: {region: eu}\ndefault_args: {retries: 1, retry_delay: 10ms}\ntasks:\n  - {id: extract, operator: shell, config: {command: 'echo extracting {{ params.region }} from {{ data_interval_start }} in attempt {{ attempt }}'}}\n  - {id: transform, operator: sleep, depends_on: extract, config: {duration: 10ms}}\n  - {id: load, operator: noop, depends_on: transform}\n";
const REPORT: &str = "dag_id: report\nschedule: '@daily'\ntasks:\n  - {id: fail, operator: shell, config: {command: 'echo about to fail >&2; exit 4'}}\n  - {id: after, operator: noop, depends_on: fail}\n";
const BROKEN: &str = "dag_id: broken\nschedule: '99 * * * *'\ntasks:\n  - {id: a, operator: sleeep}\n  - {id: b, operator: shell, depends_on: [a, ghost], config: {command: 'echo {{ oops }}'}}\n  - {id: c, operator: shell, config: {comand: ls}}\n";

fn folder_with_two_valid_and_one_broken() -> Home {
    let home = Home::new();
    home.write("etl.yaml", ETL);
    home.write("report.yml", REPORT);
    home.write("broken.yaml", BROKEN);
    home
}

#[test]
fn list_shows_the_valid_dags_and_warns_about_the_broken_file() {
    let home = folder_with_two_valid_and_one_broken();
    let out = home.sluice(&["dags", "list"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("etl") && text.contains("report") && text.contains("*/15 * * * *"),
        "{text}"
    );
    assert!(!text.contains("broken"), "{text}");
    assert!(stderr(&out).contains("broken.yaml"), "{}", stderr(&out));

    let out = home.sluice(&["dags", "list", "--json"]);
    let items: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let ids: Vec<&str> = items
        .iter()
        .map(|d| d["dag_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["etl", "report"]);
}

#[test]
fn validate_prints_every_error_of_the_broken_file_and_exits_1() {
    let home = folder_with_two_valid_and_one_broken();
    let out = home.sluice(&["dags", "validate"]);
    assert_eq!(out.status.code(), Some(1));
    let file = home.dags().join("broken.yaml").display().to_string();
    let lines: Vec<String> = stdout(&out).lines().map(str::to_string).collect();
    let expected = [
        format!("{file}: -: schedule: `99 * * * *` is not a valid cron expression"),
        format!("{file}: a: operator: unknown operator `sleeep`; known: check, clickhouse_load, http_webhook, noop, polars_sql, postgres_extract, shell, sleep"),
        format!("{file}: b: config.command: template uses unknown variable(s) oops"),
        format!("{file}: b: depends_on: unknown task `ghost`"),
        format!("{file}: c: config.comand: unknown field `comand`"),
    ];
    assert_eq!(lines.len(), expected.len(), "{lines:#?}");
    for want in &expected {
        assert!(
            lines.iter().any(|l| l.starts_with(want.as_str())),
            "missing {want}\n{lines:#?}"
        );
    }
    // only the broken file is reported
    assert!(lines.iter().all(|l| l.starts_with(&file)), "{lines:#?}");

    std::fs::remove_file(home.dags().join("broken.yaml")).unwrap();
    let out = home.sluice(&["dags", "validate"]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
}

fn run_id_of(home: &Home, dag: &str) -> String {
    let out = home.sluice(&["runs", "list", "--dag", dag, "--json"]);
    let runs: Vec<serde_json::Value> =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", stdout(&out)));
    runs[0]["run_id"].as_str().unwrap().to_string()
}

fn dags_test_story(home: &Home) {
    let out = home.sluice(&[
        "dags",
        "test",
        "etl",
        "--logical-date",
        "2026-11-23T10:07:00Z",
        "--conf",
        r#"{"region": "us"}"#,
    ]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}\n{}", stderr(&out));
    assert!(
        text.contains("data interval [2026-11-23T10:00:00+00:00, 2026-11-23T10:15:00+00:00)"),
        "{text}"
    );
    for line in ["extract", "transform", "load"] {
        assert!(
            text.lines()
                .any(|l| l.contains(line) && l.contains("queued -> running")),
            "no transition for {line}: {text}"
        );
    }
    assert!(text.contains("success"), "{text}");

    let run_id = run_id_of(home, "etl");
    assert_eq!(run_id, "manual__2026-11-23T10:00:00+00:00");
    let out = home.sluice(&["runs", "show", &run_id, "--json"]);
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shown["run"]["state"], "success");
    assert_eq!(shown["run"]["conf"]["region"], "us");
    assert_eq!(shown["task_instances"].as_array().unwrap().len(), 3);
    assert_eq!(
        shown["history"].as_array().unwrap().len(),
        9,
        "three transitions per task"
    );

    let out = home.sluice(&["tasks", "logs", "etl", &run_id, "extract"]);
    assert!(
        stdout(&out).contains("OUT   extracting us from 2026-11-23T10:00:00Z"),
        "{}",
        stdout(&out)
    );
    let out = home.sluice(&["tasks", "logs", "etl", &run_id, "extract", "--try", "2"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("there is no try 2"),
        "{}",
        stderr(&out)
    );

    // A failing DAG exits 1 and says which task failed and why.
    let out = home.sluice(&["dags", "test", "report"]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let text = stdout(&out);
    assert!(
        text.contains("fail: try 1 of 1 failed") && text.contains("exited with code 4"),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.contains("after") && l.contains("upstream_failed")),
        "{text}"
    );
    let report_run = run_id_of(home, "report");
    let out = home.sluice(&["tasks", "logs", "report", &report_run, "fail"]);
    assert!(
        stdout(&out).contains("ERR   about to fail"),
        "{}",
        stdout(&out)
    );

    // The same logical date again is a new attempt of the same run, not a duplicate run,
    // and it runs with its own conf.
    let out = home.sluice(&[
        "dags",
        "test",
        "etl",
        "--logical-date",
        "2026-11-23T10:14:59Z",
        "--conf",
        r#"{"region": "ap"}"#,
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("starting attempt 2"),
        "{}",
        stdout(&out)
    );
    let out = home.sluice(&["runs", "list", "--dag", "etl", "--json"]);
    let runs: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(runs.len(), 1, "still one run for the logical date");
    let out = home.sluice(&["runs", "show", &run_id, "--json"]);
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let extract = shown["task_instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["task_id"] == "extract")
        .unwrap()
        .clone();
    assert_eq!(
        (
            extract["state"].as_str(),
            extract["try_number"].as_u64(),
            extract["max_tries"].as_u64()
        ),
        (Some("success"), Some(2), Some(3))
    );
    assert_eq!(
        shown["history"].as_array().unwrap().len(),
        9 + 3 + 9,
        "three clears between the two attempts"
    );
    let out = home.sluice(&["tasks", "logs", "etl", &run_id, "extract", "--try", "1"]);
    assert!(
        stdout(&out).contains("extracting us") && stdout(&out).contains("in attempt 1"),
        "the first attempt's log is kept: {}",
        stdout(&out)
    );
    let out = home.sluice(&["tasks", "logs", "etl", &run_id, "extract"]);
    assert!(
        stdout(&out).contains("extracting ap") && stdout(&out).contains("in attempt 2"),
        "the second attempt ran with its own conf: {}",
        stdout(&out)
    );
    assert_eq!(shown["run"]["attempt"], 2);
    assert_eq!(shown["run"]["conf"], serde_json::json!({"region": "ap"}));
    let attempts: Vec<(u64, String, String)> = shown["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["attempt"].as_u64().unwrap(),
                a["state"].as_str().unwrap().to_string(),
                a["conf"]["region"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        attempts,
        [
            (1, "success".to_string(), "us".to_string()),
            (2, "success".to_string(), "ap".to_string())
        ]
    );
    let out = home.sluice(&["runs", "show", &run_id]);
    assert!(
        stdout(&out).contains("attempt 2") && stdout(&out).contains("attempts:"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn dags_test_runs_records_and_logs_on_sqlite() {
    let home = folder_with_two_valid_and_one_broken();
    dags_test_story(&home);
    assert!(
        home.dir.path().join("home/sluice.db").exists(),
        "the default store is SQLite under SLUICE_HOME"
    );
}

#[tokio::test]
async fn dags_test_runs_records_and_logs_on_postgres() {
    let mut home = folder_with_two_valid_and_one_broken();
    home.database_url = Some(common::fresh_pg_database().await);
    tokio::task::spawn_blocking(move || dags_test_story(&home))
        .await
        .unwrap();
}

#[test]
fn bad_arguments_get_clear_errors() {
    let home = folder_with_two_valid_and_one_broken();
    let out = home.sluice(&["dags", "test", "nope"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("DAG `nope` not found")
            && stderr(&out).contains("known DAGs: etl, report"),
        "{}",
        stderr(&out)
    );
    let out = home.sluice(&["dags", "test", "etl", "--conf", "{not json"]);
    assert!(
        stderr(&out).contains("--conf is not valid JSON"),
        "{}",
        stderr(&out)
    );
    let out = home.sluice(&["dags", "test", "etl", "--conf", "[1]"]);
    assert!(
        stderr(&out).contains("must be a JSON object"),
        "{}",
        stderr(&out)
    );
    let out = home.sluice(&["dags", "test", "etl", "--logical-date", "last tuesday"]);
    assert!(stderr(&out).contains("--logical-date"), "{}", stderr(&out));
    let out = home.sluice(&["runs", "show", "manual__nothing"]);
    assert!(
        stderr(&out).contains("no run `manual__nothing`"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn operators_are_listed_and_described() {
    let home = Home::new();
    let out = home.sluice(&["operators", "list"]);
    let text = stdout(&out);
    for name in ["noop", "shell", "sleep"] {
        assert!(text.lines().any(|l| l.starts_with(name)), "{text}");
    }
    let out = home.sluice(&["operators", "describe", "shell"]);
    let text = stdout(&out);
    assert!(
        text.lines()
            .any(|l| l.starts_with("command") && l.contains("yes") && l.contains("sh -c")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("env") && l.contains("no")),
        "{text}"
    );
    let out = home.sluice(&["operators", "describe", "shel"]);
    assert!(
        stderr(&out).contains("unknown operator `shel`; known: check, clickhouse_load, http_webhook, noop, polars_sql, postgres_extract, shell, sleep"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn show_prints_tasks_in_dependency_order() {
    let home = folder_with_two_valid_and_one_broken();
    let out = home.sluice(&["dags", "show", "etl"]);
    let text = stdout(&out);
    let order: Vec<&str> = text
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|w| ["extract", "transform", "load"].contains(w))
        .collect();
    assert_eq!(order, ["extract", "transform", "load"], "{text}");
}

#[test]
fn validate_checks_the_sql_files_a_dag_points_at() {
    let home = Home::new();
    std::fs::create_dir_all(home.dags().join("sql")).unwrap();
    std::fs::write(
        home.dags().join("sql/bad.sql"),
        "SELECT * FROM t WHERE ts >= {{ data_interval_begin }}",
    )
    .unwrap();
    home.write(
        "files.yaml",
        "dag_id: files\ntasks:\n  - {id: a, operator: postgres_extract, config: {conn: crm, sql: sql/missing.sql}}\n  - {id: b, operator: postgres_extract, config: {conn: crm, sql: sql/bad.sql}}\n",
    );
    let out = home.sluice(&["dags", "validate"]);
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    assert!(
        text.lines()
            .any(|l| l.contains(": a: config.sql: cannot read") && l.contains("sql/missing.sql")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.contains(": b: config.sql:") && l.contains("data_interval_begin")),
        "{text}"
    );
}
