//! Stopping a running run or task instance, as a user does it: `sluice runs stop`,
//! `sluice tasks stop` and the API's PATCH, against `sluice standalone` (scheduler and web
//! server in one process). A stopped `sleep` is gone within its grace period, the run goes on
//! or ends as the stop says, and the history names who stopped it.

#[path = "support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use serde_json::Value;

/// A `sleep` long enough never to end by itself; its argument is unique to this test file.
const SLEEP: &str = "sleep 617";

const DAG: &str = "dag_id: long\ntasks:\n  - {id: wait, operator: shell, config: {command: 'sleep 617'}}\n  - {id: other, operator: shell, config: {command: 'sleep 617'}}\n  - {id: after, operator: noop, depends_on: wait}\n  - {id: cleanup, operator: noop, depends_on: [wait, other], trigger_rule: all_done}\n";

struct Standalone {
    dir: tempfile::TempDir,
    base: String,
    _server: support::Process,
}

impl Standalone {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("dags")).unwrap();
        std::fs::write(dir.path().join("dags/long.yaml"), DAG).unwrap();
        let mut cmd = support::sluice(dir.path());
        cmd.args(["standalone", "--port", "0"])
            .stdout(std::process::Stdio::null());
        let (server, base) = support::start_webserver(&mut cmd);
        Self {
            dir,
            base,
            _server: server,
        }
    }

    fn sluice(&self, args: &[&str]) -> std::process::Output {
        support::sluice(self.dir.path())
            .args(args)
            .output()
            .unwrap()
    }

    fn json(&self, args: &[&str]) -> Value {
        let out = self.sluice(args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Triggers a run and waits until both sleeps run; returns the run id.
    fn run_with_sleeps_running(&self, date: &str) -> String {
        let out = self.sluice(&["dags", "trigger", "long", "--logical-date", date]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let run_id = format!("manual__{date}").replace('Z', "+00:00");
        self.wait(&run_id, Duration::from_secs(15), |show| {
            ["wait", "other"]
                .iter()
                .all(|task| state(show, task) == "running")
        });
        run_id
    }

    fn show(&self, run_id: &str) -> Value {
        self.json(&["runs", "show", run_id, "--json"])
    }

    /// Waits until `done` holds for `runs show`; returns it.
    fn wait(&self, run_id: &str, within: Duration, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let show = self.show(run_id);
            if done(&show) {
                return show;
            }
            assert!(Instant::now() < deadline, "gave up waiting: {show:#}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn state(show: &Value, task: &str) -> String {
    show["task_instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|ti| ti["task_id"] == task)
        .map(|ti| ti["state"].as_str().unwrap().to_string())
        .unwrap()
}

fn reasons(show: &Value, task: &str) -> Vec<String> {
    show["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h["task_id"] == task)
        .filter_map(|h| h["reason"].as_str().map(str::to_string))
        .collect()
}

/// How many of the run's `sleep 617` processes are alive (a try's environment names its run).
fn sleeps_running(run_id: &str) -> usize {
    let mut n = 0;
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let environ = std::fs::read(entry.path().join("environ")).unwrap_or_default();
        let mine = String::from_utf8_lossy(&environ).contains(&format!("SLUICE_RUN_ID={run_id}\0"));
        if cmdline.trim() == SLEEP && mine {
            n += 1;
        }
    }
    n
}

fn try_number(show: &Value, task: &str) -> u64 {
    show["task_instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|ti| ti["task_id"] == task)
        .and_then(|ti| ti["try_number"].as_u64())
        .unwrap()
}

fn api_url(base: &str, run_id: &str, rest: &str) -> String {
    format!(
        "{base}/api/v1/dags/long/dagRuns/{}{rest}",
        url::form_urlencoded::byte_serialize(run_id.as_bytes()).collect::<String>()
    )
}

#[tokio::test]
async fn a_stopped_task_ends_failed_within_its_grace_and_the_run_goes_on_by_its_trigger_rules() {
    let s = Standalone::start();
    let run_id = s.run_with_sleeps_running("2026-03-01T00:00:00Z");
    let began = Instant::now();
    let out = s.sluice(&["tasks", "stop", "long", &run_id, "wait"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("task wait failed"));
    // Within the poll (1 s) and the grace period of the process group (5 s).
    assert!(
        began.elapsed() < Duration::from_secs(8),
        "{:?}",
        began.elapsed()
    );
    let show = s.show(&run_id);
    assert_eq!(state(&show, "wait"), "failed");
    assert_eq!(state(&show, "after"), "upstream_failed");
    assert_eq!(
        state(&show, "other"),
        "running",
        "the rest of the run goes on"
    );
    let why = reasons(&show, "wait");
    assert!(
        why.iter().any(|r| r.starts_with("stopped by cli:")),
        "the history names who stopped it: {why:?}"
    );
    assert_eq!(try_number(&show, "wait"), 1, "no retry");
    // A finished task cannot be stopped again, and says why.
    let again = s.sluice(&["tasks", "stop", "long", &run_id, "wait"]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already finished (failed)"));

    // The API stops the other one: PATCH with Airflow's new_state.
    let client = reqwest::Client::new();
    let answer = client
        .patch(api_url(&s.base, &run_id, "/taskInstances/other"))
        .json(&serde_json::json!({"new_state": "failed"}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200, "{}", answer.text().await.unwrap());
    let show = s.wait(&run_id, Duration::from_secs(10), |show| {
        show["run"]["state"] != "running"
    });
    assert_eq!(show["run"]["state"], "failed");
    assert_eq!(
        state(&show, "cleanup"),
        "success",
        "all_done ran after both"
    );
    assert!(reasons(&show, "other")
        .iter()
        .any(|r| r == "stopped by api:anonymous"));
    assert_eq!(sleeps_running(&run_id), 0, "no sleep is left running");
}

#[tokio::test]
async fn a_stopped_run_stops_its_tries_and_cancels_the_rest() {
    let s = Standalone::start();
    let run_id = s.run_with_sleeps_running("2026-03-02T00:00:00Z");
    assert_eq!(sleeps_running(&run_id), 2);
    let out = s.sluice(&["runs", "stop", &run_id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("cancelled"));
    let show = s.show(&run_id);
    assert_eq!(show["run"]["state"], "cancelled");
    for task in ["wait", "other", "after", "cleanup"] {
        assert_eq!(state(&show, task), "cancelled", "{task}");
        assert!(
            reasons(&show, task)
                .iter()
                .any(|r| r.starts_with("run stopped by cli:")),
            "{task}: {:?}",
            reasons(&show, task)
        );
    }
    assert_eq!(sleeps_running(&run_id), 0);

    // Through the API, Airflow's way: the run's state to failed.
    let run_id = s.run_with_sleeps_running("2026-03-03T00:00:00Z");
    let client = reqwest::Client::new();
    let url = api_url(&s.base, &run_id, "");
    let answer = client
        .patch(&url)
        .json(&serde_json::json!({"state": "failed"}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let show = s.wait(&run_id, Duration::from_secs(10), |show| {
        show["run"]["state"] != "running"
    });
    assert_eq!(show["run"]["state"], "failed");
    assert_eq!(sleeps_running(&run_id), 0);
    // A finished run cannot be stopped: 409 with the reason.
    let answer = client
        .patch(&url)
        .json(&serde_json::json!({"state": "failed"}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 409);
    assert!(answer.text().await.unwrap().contains("already finished"));
}
