//! The commands Airflow users reach for, as they run them: `tasks list|test|states-for-dag-run`,
//! `dags list-runs|next-execution`, `db migrate|check`, `completions`, `config list|get-value`
//! with a `sluice.toml` under the environment, and the README's command list against
//! `sluice --help`.

#[path = "support/mod.rs"]
mod support;

use std::path::Path;
use std::process::{Command, Output};

use support::sluice;

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A folder with `dags/` holding `files`, as a user's project.
fn project(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("dags")).unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join("dags").join(name), text).unwrap();
    }
    dir
}

/// `sluice args…` over the project at `dir`, run from it (no config file unless it has one).
fn run(dir: &Path, args: &[&str]) -> Output {
    sluice(dir)
        .args(args)
        .current_dir(dir)
        .env_remove("SLUICE_CONFIG")
        .output()
        .unwrap()
}

fn ok(dir: &Path, args: &[&str]) -> String {
    let out = run(dir, args);
    assert!(
        out.status.success(),
        "sluice {args:?} failed: {}\n{}",
        stdout(&out),
        stderr(&out)
    );
    stdout(&out)
}

const ETL: &str = "dag_id: etl\nschedule: '0 * * * *'\ntasks:\n  - {id: extract, operator: shell, config: {command: 'echo extracting {{ ds }} for {{ run_id }}'}}\n  - {id: transform, operator: sleep, depends_on: extract, config: {duration: 10ms}}\n  - {id: load, operator: noop, depends_on: transform}\n  - {id: report, operator: noop, depends_on: extract}\n";

const BERLIN: &str = "dag_id: berlin\nschedule: '30 9 * * 1-5'\ntimezone: Europe/Berlin\ntasks:\n  - {id: a, operator: noop}\n";

const MANUAL: &str = "dag_id: by_hand\ntasks:\n  - {id: a, operator: noop}\n";

const FAILING: &str = "dag_id: failing\nschedule: '@daily'\ntasks:\n  - {id: boom, operator: shell, config: {command: 'echo about to fail >&2; exit 3'}}\n";

#[test]
fn next_execution_prints_fire_times_in_the_dags_timezone_and_utc() {
    let dir = project(&[("berlin.yaml", BERLIN), ("manual.yaml", MANUAL)]);
    // Friday 2026-03-27 13:00 in Berlin; summer time starts on Sunday the 29th.
    let text = ok(
        dir.path(),
        &[
            "dags",
            "next-execution",
            "berlin",
            "-n",
            "3",
            "--after",
            "2026-03-27T12:00:00Z",
        ],
    );
    assert_eq!(
        text,
        "2026-03-30T09:30:00+02:00  (2026-03-30T07:30:00Z UTC)\n\
         2026-03-31T09:30:00+02:00  (2026-03-31T07:30:00Z UTC)\n\
         2026-04-01T09:30:00+02:00  (2026-04-01T07:30:00Z UTC)\n"
    );
    let json: serde_json::Value = serde_json::from_str(&ok(
        dir.path(),
        &[
            "dags",
            "next-execution",
            "berlin",
            "--num-executions",
            "1",
            "--after",
            "2026-03-27T12:00:00Z",
            "-o",
            "json",
        ],
    ))
    .unwrap();
    assert_eq!(
        json,
        serde_json::json!([{"fire_time": "2026-03-30T09:30:00+02:00", "fire_time_utc": "2026-03-30T07:30:00Z", "timezone": "Europe/Berlin"}])
    );
    // Without --after: the next fire time is in the future, one line by default.
    let text = ok(dir.path(), &["dags", "next-execution", "berlin"]);
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(text.contains("T09:30:00+0"), "{text}");
    let text = ok(dir.path(), &["dags", "next-execution", "by_hand"]);
    assert!(
        text.contains("no schedule") && text.contains("no next execution"),
        "{text}"
    );
    // A DAG starting later: its first fire ends its first interval, not before.
    std::fs::write(
        dir.path().join("dags/later.yaml"),
        "dag_id: later\nschedule: '@daily'\nstart_date: 2031-06-10T12:00:00Z\ntasks:\n  - {id: a, operator: noop}\n",
    )
    .unwrap();
    let text = ok(
        dir.path(),
        &["dags", "next-execution", "later", "-n", "2", "-o", "plain"],
    );
    let firsts: Vec<&str> = text
        .lines()
        .map(|l| l.split('\t').next_back().unwrap())
        .collect();
    assert_eq!(
        firsts,
        ["2031-06-12T00:00:00Z", "2031-06-13T00:00:00Z"],
        "the first interval starts 2031-06-11: {text}"
    );
    let out = run(dir.path(), &["dags", "next-execution", "nope"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("DAG `nope` not found"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn tasks_list_shows_the_dags_tasks_and_their_tree() {
    let dir = project(&[("etl.yaml", ETL)]);
    assert_eq!(
        ok(dir.path(), &["tasks", "list", "etl"]),
        "extract\ntransform\nload\nreport\n"
    );
    assert_eq!(
        ok(dir.path(), &["tasks", "list", "etl", "--tree"]),
        "extract (shell)\n    transform (sleep)\n        load (noop)\n    report (noop)\n"
    );
}

#[test]
fn states_for_dag_run_and_list_runs_after_runs_of_a_dag() {
    let dir = project(&[("etl.yaml", ETL)]);
    ok(
        dir.path(),
        &[
            "dags",
            "test",
            "etl",
            "--logical-date",
            "2026-01-01T00:00:00Z",
        ],
    );
    ok(
        dir.path(),
        &[
            "dags",
            "test",
            "etl",
            "--logical-date",
            "2026-01-02T05:00:00Z",
        ],
    );
    // A trigger without a scheduler stays queued.
    ok(
        dir.path(),
        &[
            "dags",
            "trigger",
            "etl",
            "--logical-date",
            "2026-01-03T00:00:00Z",
        ],
    );

    let runs: serde_json::Value =
        serde_json::from_str(&ok(dir.path(), &["dags", "list-runs", "etl", "-o", "json"])).unwrap();
    let ids: Vec<&str> = runs
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["run_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [
            "manual__2026-01-03T00:00:00+00:00",
            "manual__2026-01-02T05:00:00+00:00",
            "manual__2026-01-01T00:00:00+00:00"
        ]
    );
    assert_eq!(runs[0]["state"], "queued");
    assert_eq!(runs[1]["state"], "success");
    assert_eq!(runs[1]["logical_date"], "2026-01-02T05:00:00Z");

    let count = |args: &[&str]| -> usize {
        let mut all = vec!["dags", "list-runs", "etl", "-o", "json"];
        all.extend_from_slice(args);
        serde_json::from_str::<serde_json::Value>(&ok(dir.path(), &all))
            .unwrap()
            .as_array()
            .unwrap()
            .len()
    };
    assert_eq!(count(&["--state", "success"]), 2);
    assert_eq!(count(&["--state", "queued"]), 1);
    assert_eq!(count(&["--state", "failed"]), 0);
    assert_eq!(count(&["--start-date", "2026-01-02"]), 2);
    assert_eq!(count(&["--end-date", "2026-01-01T12:00:00Z"]), 1);
    assert_eq!(
        count(&[
            "--start-date",
            "2026-01-02",
            "--end-date",
            "2026-01-02T23:00:00Z"
        ]),
        1
    );
    let table = ok(dir.path(), &["dags", "list-runs", "etl"]);
    assert!(
        table.starts_with("run_id") && table.contains("manual__2026-01-02T05:00:00+00:00  success"),
        "{table}"
    );

    let run_id = "manual__2026-01-02T05:00:00+00:00";
    let states: serde_json::Value = serde_json::from_str(&ok(
        dir.path(),
        &["tasks", "states-for-dag-run", "etl", run_id, "-o", "json"],
    ))
    .unwrap();
    let states: Vec<(String, String, u64)> = states
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["task_id"].as_str().unwrap().to_string(),
                s["state"].as_str().unwrap().to_string(),
                s["try_number"].as_u64().unwrap(),
            )
        })
        .collect();
    let mut names: Vec<&str> = states.iter().map(|s| s.0.as_str()).collect();
    names.sort();
    assert_eq!(names, ["extract", "load", "report", "transform"]);
    assert!(
        states.iter().all(|s| s.1 == "success" && s.2 == 1),
        "{states:?}"
    );
    let table = ok(dir.path(), &["tasks", "states-for-dag-run", "etl", run_id]);
    assert!(
        table.starts_with("task_id") && table.contains("success"),
        "{table}"
    );
    let out = run(
        dir.path(),
        &["tasks", "states-for-dag-run", "etl", "manual__nope"],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("no run `manual__nope`"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn tasks_test_runs_one_task_and_records_nothing() {
    let dir = project(&[("etl.yaml", ETL), ("failing.yaml", FAILING)]);
    let out = run(
        dir.path(),
        &["tasks", "test", "etl", "extract", "2026-02-01T00:00:00Z"],
    );
    let text = stdout(&out);
    assert!(out.status.success(), "{text}\n{}", stderr(&out));
    // The log on stdout, rendered as a run for that date would render it.
    assert!(
        text.contains("extracting 2026-02-01 for manual__2026-02-01T00:00:00+00:00"),
        "{text}"
    );
    assert!(text.contains("extract: success (not recorded)"), "{text}");
    assert!(
        stderr(&out).contains("no run for this logical date"),
        "{}",
        stderr(&out)
    );
    // Nothing in the store.
    assert_eq!(
        ok(dir.path(), &["dags", "list-runs", "etl", "-o", "json"]).trim(),
        "[]"
    );

    // A task that fails: its stderr in the log, exit 1, still nothing recorded.
    let out = run(
        dir.path(),
        &["tasks", "test", "failing", "boom", "2026-02-01"],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(stdout(&out).contains("about to fail"), "{}", stdout(&out));
    assert!(stdout(&out).contains("boom: failed"), "{}", stdout(&out));
    assert_eq!(
        ok(dir.path(), &["dags", "list-runs", "failing", "-o", "json"]).trim(),
        "[]"
    );

    // With a run for that date, the try sees the run's id and its next try number, and the
    // run's task instances are left as they were.
    ok(
        dir.path(),
        &[
            "dags",
            "test",
            "etl",
            "--logical-date",
            "2026-02-01T00:00:00Z",
        ],
    );
    let out = run(
        dir.path(),
        &["tasks", "test", "etl", "extract", "2026-02-01T00:00:00Z"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("try number 2"), "{}", stderr(&out));
    let states = ok(
        dir.path(),
        &[
            "tasks",
            "states-for-dag-run",
            "etl",
            "manual__2026-02-01T00:00:00+00:00",
            "-o",
            "plain",
        ],
    );
    assert!(states.contains("extract\tsuccess\t1"), "{states}");

    let out = run(dir.path(), &["tasks", "test", "etl", "ghost"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("has no task `ghost`"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn db_migrate_and_check_report_the_store() {
    let dir = project(&[]);
    // A new home: no store yet.
    let out = run(dir.path(), &["db", "check"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("does not exist yet"),
        "{}",
        stderr(&out)
    );
    let text = ok(dir.path(), &["db", "migrate"]);
    assert!(
        text.contains("created") && text.contains("applied"),
        "{text}"
    );
    assert!(text.contains("0001 core"), "{text}");
    let text = ok(dir.path(), &["db", "migrate"]);
    assert!(text.contains("up to date"), "{text}");
    let text = ok(dir.path(), &["db", "check"]);
    assert!(
        text.contains("(sqlite) answers") && !text.contains("pending"),
        "{text}"
    );

    // A store that does not answer: exit 1, the reason, and never its password.
    let out = sluice(dir.path())
        .args(["db", "check"])
        .current_dir(dir.path())
        .env(
            "SLUICE_DATABASE_URL",
            "postgres://sluice:hunter2-secret@127.0.0.1:1/sluice",
        )
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let err = stderr(&out);
    assert!(
        err.contains("does not answer") && err.contains("127.0.0.1:1"),
        "{err}"
    );
    assert!(
        !err.contains("hunter2-secret") && !stdout(&out).contains("hunter2-secret"),
        "{err}"
    );
}

#[test]
fn completions_name_the_commands() {
    let dir = project(&[]);
    for shell in ["bash", "zsh", "fish"] {
        let text = ok(dir.path(), &["completions", shell]);
        for word in [
            "next-execution",
            "states-for-dag-run",
            "list-runs",
            "get-value",
            "migrate",
        ] {
            assert!(text.contains(word), "{shell} completions lack {word}");
        }
    }
    let out = run(dir.path(), &["completions", "tcsh"]);
    assert_eq!(out.status.code(), Some(2));
}

/// `sluice` run from `dir` with only these variables set (none of the test's own).
fn clean(dir: &Path, vars: &[(&str, &str)], args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .current_dir(dir)
        .args(args);
    for (k, v) in vars {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

const CONFIG: &str = r#"# sluice's settings for this project
dags_folder = "pipelines"
database_url = "postgres://sluice:file-pw-1234@db.example:5432/sluice"
parallelism = 4
api_token = "tok-abcdefghijklmnop"

[connections]
crm = "postgres://crm:conn-pw-5678@crm.example/crm"
"#;

#[test]
fn config_list_shows_each_value_with_its_source_and_masks_secrets() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("sluice.toml"), CONFIG).unwrap();
    let file = dir.path().join("sluice.toml").display().to_string();
    let env = [
        ("SLUICE_PARALLELISM", "8"),
        (
            "SLUICE_CONN_REPORTS",
            "https://reports:env-pw-9012@reports.example/",
        ),
        // A webhook's secret is its path (and sometimes a user name or a parameter).
        (
            "SLUICE_CONN_SLACK",
            "https://hook-user-77@hooks.example/services/T0/B0/path-secret-3456?sig=sig-secret-42",
        ),
    ];
    let out = clean(dir.path(), &env, &["config", "list"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    for secret in [
        "file-pw-1234",
        "tok-abcdefghijklmnop",
        "conn-pw-5678",
        "env-pw-9012",
        "path-secret-3456",
        "hook-user-77",
        "sig-secret-42",
    ] {
        assert!(!text.contains(secret), "{secret} printed:\n{text}");
    }
    let row = |var: &str| -> Vec<String> {
        text.lines()
            .find(|l| l.starts_with(&format!("{var} ")))
            .unwrap_or_else(|| panic!("no {var} in\n{text}"))
            .split_whitespace()
            .map(str::to_string)
            .collect()
    };
    assert_eq!(row("SLUICE_PARALLELISM")[2..], ["8", "env"]);
    assert_eq!(
        row("SLUICE_DATABASE_URL")[2..],
        [
            "postgres://sluice:***@db.example:5432/sluice",
            file.as_str()
        ]
    );
    assert_eq!(row("SLUICE_API_TOKEN")[2..], ["***", file.as_str()]);
    assert_eq!(row("SLUICE_RUN_LEASE")[2..], ["15s", "default"]);
    assert_eq!(
        row("SLUICE_CONN_CRM")[1..],
        [
            "connections.crm",
            "postgres://crm:***@crm.example/crm",
            file.as_str()
        ]
    );
    assert_eq!(row("SLUICE_CONN_REPORTS")[3], "env");
    assert_eq!(
        row("SLUICE_CONN_SLACK")[2],
        "https://***@hooks.example/***?sig=***",
        "where the webhook goes stays readable"
    );
    assert!(text.starts_with(&format!("config file: {file}")), "{text}");

    let out = clean(dir.path(), &env, &["config", "list", "-o", "json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let home = json
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["var"] == "SLUICE_DAGS_FOLDER")
        .unwrap();
    assert_eq!(home["key"], "dags_folder");
    assert_eq!(
        home["value"],
        dir.path().join("pipelines").display().to_string()
    );
    assert_eq!(home["source"], file);
    assert!(!String::from_utf8_lossy(&out.stdout).contains("pw-"));

    let out = clean(dir.path(), &env, &["config", "get-value", "database_url"]);
    assert_eq!(
        stdout(&out),
        "postgres://sluice:***@db.example:5432/sluice\n"
    );
    let out = clean(
        dir.path(),
        &env,
        &["config", "get-value", "SLUICE_PARALLELISM"],
    );
    assert_eq!(stdout(&out), "8\n");
    let out = clean(dir.path(), &env, &["config", "get-value", "metrics_addr"]);
    assert_eq!(out.status.code(), Some(1));
    let out = clean(dir.path(), &env, &["config", "get-value", "nonsense"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("unknown setting `nonsense`"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn the_config_file_is_used_by_commands_and_the_environment_wins() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("pipelines")).unwrap();
    std::fs::write(dir.path().join("pipelines/etl.yaml"), ETL).unwrap();
    std::fs::create_dir_all(dir.path().join("conf")).unwrap();
    // Named with --config / SLUICE_CONFIG; paths in it are relative to it.
    std::fs::write(
        dir.path().join("conf/sluice.toml"),
        "dags_folder = \"../pipelines\"\nhome = \"../state\"\n",
    )
    .unwrap();
    let out = clean(
        dir.path(),
        &[],
        &["--config", "conf/sluice.toml", "tasks", "list", "etl"],
    );
    assert_eq!(
        stdout(&out),
        "extract\ntransform\nload\nreport\n",
        "{}",
        stderr(&out)
    );
    let out = clean(
        dir.path(),
        &[("SLUICE_CONFIG", "conf/sluice.toml")],
        &["db", "migrate"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(dir.path().join("state/sluice.db").exists());
    // The environment wins over the file.
    let out = clean(
        dir.path(),
        &[
            ("SLUICE_CONFIG", "conf/sluice.toml"),
            ("SLUICE_DAGS_FOLDER", "elsewhere"),
        ],
        &["tasks", "list", "etl"],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("elsewhere"), "{}", stderr(&out));
    // A file named explicitly must exist.
    let out = clean(
        dir.path(),
        &[],
        &["--config", "missing.toml", "dags", "list"],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("missing.toml"), "{}", stderr(&out));
}

#[test]
fn an_unknown_key_in_the_config_file_names_the_file_the_line_and_the_key() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("sluice.toml"),
        "# settings\nhome = \"state\"\nparalelism = 4\n",
    )
    .unwrap();
    let out = clean(dir.path(), &[], &["dags", "list"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("sluice.toml") && err.contains("line 3") && err.contains("`paralelism`"),
        "{err}"
    );
    // A value of the wrong type too.
    std::fs::write(
        dir.path().join("sluice.toml"),
        "[connections]\ncrm = [1, 2]\n",
    )
    .unwrap();
    let err = stderr(&clean(dir.path(), &[], &["dags", "list"]));
    assert!(
        err.contains("sluice.toml") && err.contains("connections.crm"),
        "{err}"
    );
}

/// The lines of the README's "## Command line" section's first code block.
fn readme_commands() -> String {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = readme
        .split("\n## Command line\n")
        .nth(1)
        .expect("README has a Command line section");
    let block = section
        .split("```text\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("the section starts with a text block");
    block.to_string()
}

#[test]
fn the_readme_command_line_section_matches_sluice_help() {
    let dir = project(&[]);
    let help = ok(dir.path(), &["--help"]);
    let commands: String = help
        .split("Commands:\n")
        .nth(1)
        .unwrap()
        .split("\n\n")
        .next()
        .unwrap()
        .lines()
        .map(|l| format!("{}\n", l.trim_end()))
        .collect();
    assert_eq!(
        readme_commands(),
        commands,
        "the README's command list differs from `sluice --help`"
    );
    // Every subcommand of every group appears in the README's usage lines.
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let usage = readme.split("\n## Command line\n").nth(1).unwrap();
    let usage = usage.split("\n## ").next().unwrap();
    for group in ["dags", "runs", "tasks", "operators", "db", "config"] {
        let help = ok(dir.path(), &[group, "--help"]);
        let subcommands = help.split("Commands:\n").nth(1).unwrap();
        for line in subcommands.lines().take_while(|l| !l.is_empty()) {
            let name = line.split_whitespace().next().unwrap();
            if name == "help" {
                continue;
            }
            let mentioned = usage.contains(&format!("sluice {group} {name}"))
                || usage.lines().any(|l| {
                    l.contains(&format!("sluice {group} "))
                        && l.split(['|', ' ']).any(|word| word == name)
                });
            assert!(
                mentioned,
                "the README does not show `sluice {group} {name}`"
            );
        }
    }
}

#[test]
fn trigger_takes_a_run_id() {
    let dir = project(&[("etl.yaml", ETL)]);
    let text = ok(
        dir.path(),
        &[
            "dags",
            "trigger",
            "etl",
            "-l",
            "2026-01-05T00:00:00Z",
            "--run-id",
            "nightly-reload.1",
            "-c",
            "{\"full\": true}",
        ],
    );
    assert!(
        text.contains("queued run nightly-reload.1 of etl"),
        "{text}"
    );
    let runs: serde_json::Value =
        serde_json::from_str(&ok(dir.path(), &["dags", "list-runs", "etl", "-o", "json"])).unwrap();
    assert_eq!(runs[0]["run_id"], "nightly-reload.1");
    assert_eq!(runs[0]["logical_date"], "2026-01-05T00:00:00Z");
    assert_eq!(runs[0]["conf"], serde_json::json!({"full": true}));
    // The run's tasks are there under its id.
    let states = ok(
        dir.path(),
        &[
            "tasks",
            "states-for-dag-run",
            "etl",
            "nightly-reload.1",
            "-o",
            "plain",
        ],
    );
    assert!(
        states.contains("extract\tqueued\t0") || states.contains("extract\tpending\t0"),
        "{states}"
    );

    // The logical date holds one run: another id for it is refused, naming the one it has.
    let out = run(
        dir.path(),
        &[
            "dags",
            "trigger",
            "etl",
            "-l",
            "2026-01-05T00:00:00Z",
            "-r",
            "other",
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("nightly-reload.1"),
        "{}",
        stderr(&out)
    );
    // The same id again (a retry of the same request) is refused, not run again.
    let out = run(
        dir.path(),
        &[
            "dags",
            "trigger",
            "etl",
            "-l",
            "2026-01-05T00:00:00Z",
            "-r",
            "nightly-reload.1",
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("exists"), "{}", stderr(&out));
    // An id of the form sluice gives its own runs would take a later run's name.
    let out = run(
        dir.path(),
        &[
            "dags",
            "trigger",
            "etl",
            "-l",
            "2026-01-06T00:00:00Z",
            "-r",
            "scheduled__2030-01-01T00:00:00+00:00",
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("scheduled__"), "{}", stderr(&out));
    // An id that could not name a folder is refused before anything is queued.
    let out = run(
        dir.path(),
        &[
            "dags",
            "trigger",
            "etl",
            "-l",
            "2026-01-06T00:00:00Z",
            "-r",
            "../escape",
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--run-id"), "{}", stderr(&out));
    let runs = ok(dir.path(), &["dags", "list-runs", "etl", "-o", "plain"]);
    assert_eq!(runs.lines().count(), 1, "{runs}");
}
