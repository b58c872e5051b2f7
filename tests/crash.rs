//! `kill -9` of a running `sluice scheduler`, then a restart: every run still ends in
//! success, each interrupted try is retried exactly once, and nothing runs twice at once.

#[path = "../core/tests/common/mod.rs"]
mod common;
#[path = "support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use sluice_core::state::{RunState, TaskState};
use sluice_core::store::RunFilter;

const DAG: &str = "dag_id: crashy
default_args: {retries: 2, retry_delay: 100ms}
tasks:
  - {id: first, operator: shell, config: {command: 'sleep 0.3; echo first'}}
  - {id: left, operator: sleep, depends_on: first, config: {duration: 400ms}}
  - {id: right, operator: shell, depends_on: first, config: {command: 'sleep 0.4'}}
  - {id: last, operator: shell, depends_on: [left, right], config: {command: 'sleep 0.2; echo done'}}
";

use support::{sluice, start_scheduler};

/// Returns how many interrupted tries the restart found.
async fn story(kill_after: Duration) -> usize {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("dags")).unwrap();
    std::fs::write(dir.path().join("dags/crashy.yaml"), DAG).unwrap();
    let mut scheduler = start_scheduler(dir.path());
    for day in 1..=3 {
        let out = sluice(dir.path())
            .args([
                "dags",
                "trigger",
                "crashy",
                "--logical-date",
                &format!("2026-01-0{day}T00:00:00Z"),
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    std::thread::sleep(kill_after);
    scheduler.kill().unwrap(); // SIGKILL: no chance to clean up
    scheduler.wait().unwrap();

    let store = common::sqlite_store(&dir.path().join("home")).await;
    let mut restarted = start_scheduler(dir.path());
    let deadline = Instant::now() + Duration::from_secs(60);
    let runs = loop {
        let runs = store.list_runs(&RunFilter::default()).await.unwrap();
        if runs.len() == 3 && runs.iter().all(|r| r.state.is_finished()) {
            break runs;
        }
        assert!(
            Instant::now() < deadline,
            "runs did not finish after the restart: {:?}",
            runs.iter().map(|r| r.state).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    restarted.kill().unwrap();
    restarted.wait().unwrap();

    assert_eq!(runs.len(), 3, "no run was created twice");
    let mut interrupted = 0;
    for run in &runs {
        assert_eq!(
            run.state,
            RunState::Success,
            "{} after a kill at {kill_after:?}",
            run.run_id
        );
        let history = store.history(&run.dag_id, &run.run_id).await.unwrap();
        let mut by_task: HashMap<&str, Vec<&sluice_core::store::StateChange>> = HashMap::new();
        for h in &history {
            by_task.entry(h.task_id.as_str()).or_default().push(h);
        }
        for (task, changes) in by_task {
            let died = changes
                .iter()
                .filter(|h| {
                    h.reason
                        .as_deref()
                        .is_some_and(|r| r.contains("process running this try died"))
                })
                .count();
            let tries = changes
                .iter()
                .filter(|h| h.to == TaskState::Running)
                .count();
            assert!(died <= 1, "{task} was found dead {died} times");
            interrupted += died;
            assert_eq!(
                tries,
                1 + died,
                "{task}: every interrupted try is retried exactly once, nothing else: {changes:#?}"
            );
            // Tries never overlap: each try ends before the next starts.
            let mut open = false;
            for h in &changes {
                if h.to == TaskState::Running {
                    assert!(!open, "{task}: two tries running at once");
                    open = true;
                } else if h.from == TaskState::Running {
                    open = false;
                }
            }
        }
    }
    interrupted
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_scheduler_resumes_every_run_at_several_kill_points() {
    let mut interrupted = 0;
    for ms in [150, 450, 900, 1400] {
        interrupted += story(Duration::from_millis(ms)).await;
    }
    assert!(
        interrupted > 0,
        "no kill point caught a try running: the test proved nothing"
    );
}
