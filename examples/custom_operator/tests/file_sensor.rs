//! The custom operator end to end, through a program built like a user would build theirs:
//! the example's binary describes `file_sensor`, its scheduler (`standalone`) runs a DAG that
//! uses it, and its web server lists it with the built-in operators.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_sluice-with-file-sensor");

fn sluice(home: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("SLUICE_HOME", home.join("home"))
        .env(
            "SLUICE_DAGS_FOLDER",
            Path::new(env!("CARGO_MANIFEST_DIR")).join("dags"),
        );
    cmd
}

fn run(home: &Path, args: &[&str]) -> Output {
    let out = sluice(home, args).output().unwrap();
    assert!(
        out.status.success(),
        "sluice {args:?}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `standalone` on an ephemeral port; returns the process and its base URL.
fn standalone(home: &Path) -> (Child, String) {
    let mut child = sluice(home, &["standalone", "--port", "0"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let url = loop {
        let line = lines
            .next()
            .expect("standalone exited before serving")
            .unwrap();
        if let Some(url) = line.strip_prefix("web server on ") {
            break url.trim().to_string();
        }
    };
    // Keep draining stderr so the child never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    (child, url)
}

#[test]
fn describe_shows_the_documented_fields() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(dir.path(), &["operators", "describe", "file_sensor"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("poke_interval"), "{text}");
    assert!(text.contains("How often to look"), "{text}");
    let list = run(dir.path(), &["operators", "list"]);
    let list = String::from_utf8_lossy(&list.stdout);
    assert!(
        list.contains("file_sensor") && list.contains("shell"),
        "{list}"
    );
    let validate = run(dir.path(), &["dags", "validate"]);
    assert!(validate.status.success());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_scheduler_runs_a_dag_that_uses_it() {
    let dir = tempfile::tempdir().unwrap();
    let drops = dir.path().join("drops");
    std::fs::create_dir_all(&drops).unwrap();
    let (mut server, url) = standalone(dir.path());

    let operators: serde_json::Value = reqwest::get(format!("{url}/api/v1/operators"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let sensor = operators["operators"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["name"] == "file_sensor")
        .unwrap_or_else(|| panic!("file_sensor not listed: {operators}"));
    assert_eq!(
        sensor["summary"],
        "Waits until a file exists, then outputs its path and size."
    );

    // A run waits for its day's file: trigger it, drop the file while it waits.
    let conf = serde_json::json!({ "drop_dir": drops }).to_string();
    let mut trigger = sluice(
        dir.path(),
        &[
            "dags",
            "trigger",
            "file_drop",
            "--logical-date",
            "2026-11-20",
            "--conf",
            &conf,
            "--wait",
        ],
    );
    let trigger = tokio::task::spawn_blocking(move || trigger.output());
    tokio::time::sleep(Duration::from_millis(700)).await;
    std::fs::write(drops.join("2026-11-20.csv"), "a\nb\nc\n").unwrap();
    let out = trigger.await.unwrap().unwrap();
    let _ = server.kill();
    let _ = server.wait();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let runs = run(
        dir.path(),
        &["runs", "list", "--dag", "file_drop", "--json"],
    );
    let runs: serde_json::Value = serde_json::from_slice(&runs.stdout).unwrap();
    // The scheduler also started the latest daily interval (2026-11-30), still waiting for
    // its own file when the server stopped: the triggered run is the one for 2026-11-20.
    let triggered = runs
        .as_array()
        .unwrap()
        .iter()
        .find(|r| {
            r["data_interval_start"]
                .as_str()
                .unwrap()
                .starts_with("2026-11-20")
        })
        .unwrap_or_else(|| panic!("no run for 2026-11-20: {runs}"));
    let run_id = triggered["run_id"].as_str().unwrap().to_string();
    assert_eq!(triggered["state"], "success", "{runs}");
    let sensor_log = run(
        dir.path(),
        &["tasks", "logs", "file_drop", &run_id, "wait_for_drop"],
    );
    let sensor_log = String::from_utf8_lossy(&sensor_log.stdout);
    assert!(
        sensor_log.contains("2026-11-20.csv is there (6 bytes)"),
        "{sensor_log}"
    );
    let count_log = run(
        dir.path(),
        &["tasks", "logs", "file_drop", &run_id, "count_lines"],
    );
    let count_log = String::from_utf8_lossy(&count_log.stdout);
    assert!(count_log.contains("OUT   3 "), "{count_log}");
}
