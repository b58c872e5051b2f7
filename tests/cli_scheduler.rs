//! The scheduler-facing commands as a user runs them: trigger (with and without a running
//! scheduler), pause/unpause, backfill, tasks clear.

use std::path::Path;
use std::process::{Command, Output, Stdio};

fn sluice(home: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(args)
        .env("SLUICE_HOME", home.join("home"))
        .env("SLUICE_DAGS_FOLDER", home.join("dags"))
        .env_remove("SLUICE_DATABASE_URL")
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

const DAG: &str = "dag_id: hourly\nschedule: '@hourly'\ntasks:\n  - {id: a, operator: shell, config: {command: 'echo run {{ ds }}'}}\n  - {id: b, operator: noop, depends_on: a}\n";

fn home() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("dags")).unwrap();
    std::fs::write(dir.path().join("dags/hourly.yaml"), DAG).unwrap();
    dir
}

#[test]
fn trigger_without_a_scheduler_says_so_and_wait_refuses() {
    let dir = home();
    let out = sluice(
        dir.path(),
        &[
            "dags",
            "trigger",
            "hourly",
            "--logical-date",
            "2026-01-01T05:30:00Z",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("queued run manual__2026-01-01T05:00:00+00:00"),
        "{}",
        text(&out)
    );
    assert!(
        text(&out).contains("no scheduler is running"),
        "{}",
        text(&out)
    );
    let out = sluice(dir.path(), &["dags", "trigger", "hourly", "--wait"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out).contains("no scheduler is running"),
        "{}",
        text(&out)
    );
}

#[test]
fn trigger_wait_follows_the_run_a_scheduler_starts_and_clear_reruns_a_task() {
    let dir = home();
    let out = sluice(dir.path(), &["dags", "pause", "hourly"]);
    assert!(text(&out).contains("hourly paused"), "{}", text(&out));
    let mut scheduler = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("scheduler")
        .env("SLUICE_HOME", dir.path().join("home"))
        .env("SLUICE_DAGS_FOLDER", dir.path().join("dags"))
        .env_remove("SLUICE_DATABASE_URL")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait for its first heartbeat.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let out = sluice(dir.path(), &["dags", "unpause", "hourly"]);
    assert!(text(&out).contains("hourly unpaused"), "{}", text(&out));
    let out = sluice(
        dir.path(),
        &[
            "dags",
            "trigger",
            "hourly",
            "--logical-date",
            "2026-01-01T05:30:00Z",
            "--wait",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains("hourly / manual__2026-01-01T05:00:00+00:00: success"),
        "{}",
        text(&out)
    );

    let run = "manual__2026-01-01T05:00:00+00:00";
    let out = sluice(
        dir.path(),
        &["tasks", "clear", "hourly", run, "a", "--downstream"],
    );
    assert!(
        text(&out).contains("cleared a (was success), b (was success)"),
        "{}",
        text(&out)
    );
    let mut state = String::new();
    for _ in 0..100 {
        let out = sluice(dir.path(), &["runs", "show", run, "--json"]);
        let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        state = shown["run"]["state"].as_str().unwrap().to_string();
        let a = shown["task_instances"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["task_id"] == "a")
            .unwrap()
            .clone();
        if state == "success" && a["try_number"] == 2 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(state, "success");
    let out = sluice(
        dir.path(),
        &["tasks", "logs", "hourly", run, "a", "--try", "2"],
    );
    assert!(
        text(&out).contains("OUT   run 2026-01-01"),
        "{}",
        text(&out)
    );
    scheduler.kill().unwrap();
    scheduler.wait().unwrap();
}

#[test]
fn backfill_dry_run_shows_the_plan_and_skips_existing_runs() {
    let dir = home();
    sluice(
        dir.path(),
        &[
            "dags",
            "trigger",
            "hourly",
            "--logical-date",
            "2026-01-01T01:00:00Z",
        ],
    );
    let out = sluice(
        dir.path(),
        &[
            "dags",
            "backfill",
            "hourly",
            "--start",
            "2026-01-01T00:00:00Z",
            "--end",
            "2026-01-01T03:00:00Z",
            "--dry-run",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let t = text(&out);
    assert!(t.contains("4 interval(s)"), "{t}");
    assert!(
        t.lines()
            .any(|l| l.starts_with("2026-01-01T01:00:00+00:00")
                && l.contains("skip (already queued)")),
        "{t}"
    );
    assert_eq!(
        t.lines().filter(|l| l.ends_with("create")).count(),
        3,
        "{t}"
    );
    let out = sluice(dir.path(), &["runs", "list", "--json"]);
    let runs: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(runs.len(), 1, "a dry run queues nothing");
    let out = sluice(
        dir.path(),
        &[
            "dags",
            "backfill",
            "hourly",
            "--start",
            "2026-01-01T00:00:00Z",
            "--end",
            "2026-01-01T03:00:00Z",
            "--max-active-runs",
            "2",
        ],
    );
    assert!(text(&out).contains("queued 3 run(s)"), "{}", text(&out));
    let out = sluice(dir.path(), &["runs", "list", "--json"]);
    let runs: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        runs.iter()
            .filter(|r| r["run_type"] == "backfill" && r["backfill_max_active_runs"] == 2)
            .count(),
        3
    );
}

#[test]
fn json_logs_parse_line_by_line_and_name_the_run_task_and_try() {
    let dir = home();
    let scheduler = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("scheduler")
        .env("SLUICE_HOME", dir.path().join("home"))
        .env("SLUICE_DAGS_FOLDER", dir.path().join("dags"))
        .env_remove("SLUICE_DATABASE_URL")
        .env_remove("SLUICE_LOG")
        .env("SLUICE_LOG_FORMAT", "json")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A failed assertion below must not leave the scheduler running (once it is waited for,
    // its pid is no longer ours: only a panic before that kills).
    struct KillOnDrop(i32);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            if std::thread::panicking() {
                unsafe { libc::kill(self.0, libc::SIGKILL) };
            }
        }
    }
    let _guard = KillOnDrop(scheduler.id() as i32);
    let out = sluice(
        dir.path(),
        &[
            "dags",
            "trigger",
            "hourly",
            "--logical-date",
            "2026-01-01T05:30:00Z",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let show = sluice(
            dir.path(),
            &[
                "runs",
                "show",
                "manual__2026-01-01T05:00:00+00:00",
                "--json",
            ],
        );
        let show: serde_json::Value = serde_json::from_slice(&show.stdout).unwrap();
        if show["run"]["state"] == "success" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{show:#}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    unsafe { libc::kill(scheduler.id() as i32, libc::SIGTERM) };
    let log = scheduler.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&log.stderr);
    let events: Vec<serde_json::Value> = stderr
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .collect();
    assert!(events.iter().any(|e| e["message"] == "scheduler stopped"));
    let ended = events
        .iter()
        // The hourly schedule adds a run of its own: the triggered run's event.
        .find(|e| {
            e["message"] == "task state"
                && e["task_id"] == "a"
                && e["to"] == "success"
                && e["spans"][0]["run_id"] == "manual__2026-01-01T05:00:00+00:00"
        })
        .unwrap_or_else(|| panic!("no end of task a in {stderr}"));
    assert_eq!(ended["try_number"], 1);
    assert_eq!(ended["level"], "INFO");
    let run = &ended["spans"][0];
    assert_eq!(run["name"], "run");
    assert_eq!(run["dag_id"], "hourly");
    assert_eq!(run["run_id"], "manual__2026-01-01T05:00:00+00:00");
}
