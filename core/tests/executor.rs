//! The local executor on a real (SQLite) store: parallel tries, retries, timeouts, trigger
//! rules, cancellation and resuming a run left behind by a dead process. Overlap and order
//! are checked from the store's history, never by wall-clock assertions.

mod common;

use std::path::Path;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use sluice_core::dag::{parse_dag, Dag};
use sluice_core::executor::Executor;
use sluice_core::operator_api::Connections;
use sluice_core::settings::Settings;
use sluice_core::state::{RunState, TaskState};
use sluice_core::store::{DagRun, RunType, StateChange, Store, TaskChange, TaskInstance, TaskKey};
use tokio_util::sync::CancellationToken;

struct Harness {
    dir: tempfile::TempDir,
    store: Arc<dyn Store>,
    settings: Settings,
}

struct Finished {
    run: DagRun,
    tis: Vec<TaskInstance>,
    history: Vec<StateChange>,
}

impl Finished {
    fn state(&self, task: &str) -> TaskState {
        self.ti(task).state
    }

    fn ti(&self, task: &str) -> &TaskInstance {
        self.tis
            .iter()
            .find(|t| t.task_id == task)
            .unwrap_or_else(|| panic!("no task {task}"))
    }

    /// `(start, end)` of each try of `task`, from the history.
    fn tries(&self, task: &str) -> Vec<(DateTime<Utc>, DateTime<Utc>)> {
        let mut out = Vec::new();
        let mut start = None;
        for h in self.history.iter().filter(|h| h.task_id == task) {
            if h.to == TaskState::Running {
                start = Some(h.at);
            } else if h.from == TaskState::Running {
                out.push((start.take().expect("a try ends after it starts"), h.at));
            }
        }
        out
    }

    fn transitions(&self, task: &str) -> Vec<(u32, TaskState)> {
        self.history
            .iter()
            .filter(|h| h.task_id == task)
            .map(|h| (h.try_number, h.to))
            .collect()
    }
}

impl Harness {
    async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("dags")).unwrap();
        let store = common::sqlite_store(dir.path()).await;
        let settings = Settings::local(dir.path(), &dir.path().join("dags"));
        Self {
            dir,
            store,
            settings,
        }
    }

    fn dag(&self, yaml: &str) -> Arc<Dag> {
        let path = self.dir.path().join("dags").join("dag.yaml");
        std::fs::write(&path, yaml).unwrap();
        Arc::new(
            parse_dag(&path, yaml, &sluice_operators::basic()).unwrap_or_else(|e| panic!("{e:#?}")),
        )
    }

    async fn create(&self, dag: &Dag) -> String {
        let now = Utc::now();
        let interval = dag.default_interval(now);
        let run =
            sluice_core::runs::new_run(dag, interval, RunType::Manual, serde_json::json!({}), now);
        self.store.create_run(&run).await.unwrap().run_id
    }

    fn executor(&self) -> Executor {
        Executor::new(
            self.store.clone(),
            &self.settings,
            Arc::new(Connections::default()),
        )
    }

    async fn finish(&self, dag: &Dag, run_id: &str, run: DagRun) -> Finished {
        let tis = self
            .store
            .task_instances(&dag.dag_id, run_id)
            .await
            .unwrap();
        let history = self.store.history(&dag.dag_id, run_id).await.unwrap();
        Finished { run, tis, history }
    }

    async fn run(&self, yaml: &str) -> Finished {
        let dag = self.dag(yaml);
        let run_id = self.create(&dag).await;
        let run = self
            .executor()
            .run(dag.clone(), &run_id, CancellationToken::new())
            .await
            .unwrap();
        self.finish(&dag, &run_id, run).await
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }
}

#[tokio::test]
async fn three_sleeps_fan_into_a_join_and_overlap() {
    let h = Harness::new().await;
    let done = h
        .run(
            "dag_id: fan\ntasks:\n  - {id: a, operator: sleep, config: {duration: 400ms}}\n  - {id: b, operator: sleep, config: {duration: 400ms}}\n  - {id: c, operator: sleep, config: {duration: 400ms}}\n  - {id: join, operator: noop, depends_on: [a, b, c]}\n",
        )
        .await;
    assert_eq!(done.run.state, RunState::Success);
    let tries: Vec<_> = ["a", "b", "c"].iter().map(|t| done.tries(t)).collect();
    assert!(tries.iter().all(|t| t.len() == 1), "{tries:?}");
    let latest_start = tries.iter().map(|t| t[0].0).max().unwrap();
    let earliest_end = tries.iter().map(|t| t[0].1).min().unwrap();
    assert!(
        latest_start < earliest_end,
        "the three tries did not overlap: {tries:?}"
    );
    let join = done.tries("join");
    assert!(
        join[0].0 >= tries.iter().map(|t| t[0].1).max().unwrap(),
        "join started before its upstream ended"
    );
    assert_eq!(done.state("join"), TaskState::Success);
}

#[tokio::test]
async fn parallelism_one_runs_tries_one_at_a_time() {
    let mut h = Harness::new().await;
    h.settings.parallelism = 1;
    let done = h
        .run("dag_id: serial\ntasks:\n  - {id: a, operator: sleep, config: {duration: 100ms}}\n  - {id: b, operator: sleep, config: {duration: 100ms}}\n  - {id: c, operator: sleep, config: {duration: 100ms}}\n")
        .await;
    let mut tries: Vec<_> = ["a", "b", "c"].iter().map(|t| done.tries(t)[0]).collect();
    tries.sort();
    assert!(
        tries.windows(2).all(|w| w[0].1 <= w[1].0),
        "tries overlapped with parallelism 1: {tries:?}"
    );
}

fn flaky(counter: &str, succeed_on: u32, retries: u32) -> String {
    format!(
        "dag_id: flaky\ntasks:\n  - id: flaky\n    operator: shell\n    retries: {retries}\n    retry_delay: 50ms\n    config:\n      command: 'n=$(cat {counter} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {counter}; echo try $n; [ $n -ge {succeed_on} ]'\n  - {{id: after, operator: noop, depends_on: flaky}}\n  - {{id: cleanup, operator: noop, depends_on: after, trigger_rule: all_done}}\n"
    )
}

#[tokio::test]
async fn a_task_failing_twice_succeeds_on_its_third_try_with_two_retries() {
    let h = Harness::new().await;
    let done = h.run(&flaky(&h.path("count"), 3, 2)).await;
    assert_eq!(done.run.state, RunState::Success);
    let ti = done.ti("flaky");
    assert_eq!((ti.state, ti.try_number), (TaskState::Success, 3));
    use TaskState::*;
    assert_eq!(
        done.transitions("flaky"),
        [
            (0, Queued),
            (1, Running),
            (1, UpForRetry),
            (1, Queued),
            (2, Running),
            (2, UpForRetry),
            (2, Queued),
            (3, Running),
            (3, Success)
        ]
    );
    let reasons: Vec<&str> = done
        .history
        .iter()
        .filter(|h| h.to == UpForRetry)
        .filter_map(|h| h.reason.as_deref())
        .collect();
    assert!(
        reasons.iter().all(|r| r.contains("exited with code 1")),
        "{reasons:?}"
    );
    assert_eq!(done.state("after"), Success);
    // every try has its own log with the command's output
    for n in 1..=3 {
        let key = TaskKey {
            dag_id: "flaky".into(),
            run_id: done.run.run_id.clone(),
            task_id: "flaky".into(),
        };
        let log = std::fs::read_to_string(sluice_core::trylog::try_log_path(
            &h.settings.logs_dir(),
            &key,
            n,
        ))
        .unwrap();
        assert!(
            log.contains(&format!("OUT   try {n}")),
            "try {n} log: {log}"
        );
    }
}

#[tokio::test]
async fn with_one_retry_the_run_fails_and_downstream_is_upstream_failed() {
    let h = Harness::new().await;
    let done = h.run(&flaky(&h.path("count"), 3, 1)).await;
    assert_eq!(done.run.state, RunState::Failed);
    let ti = done.ti("flaky");
    assert_eq!((ti.state, ti.try_number), (TaskState::Failed, 2));
    assert!(
        ti.error.as_deref().unwrap().contains("no retries left"),
        "{:?}",
        ti.error
    );
    assert_eq!(done.state("after"), TaskState::UpstreamFailed);
    assert_eq!(
        done.state("cleanup"),
        TaskState::Success,
        "all_done runs whatever happened upstream"
    );
    assert_eq!(
        std::fs::read_to_string(h.path("count")).unwrap().trim(),
        "2"
    );
}

#[tokio::test]
async fn a_try_over_its_execution_timeout_is_stopped_and_failed() {
    let h = Harness::new().await;
    let marker = h.path("survived");
    let yaml = format!(
        "dag_id: slow\ntasks:\n  - id: slow\n    operator: shell\n    execution_timeout: 300ms\n    config: {{command: 'sleep 3; touch {marker}'}}\n"
    );
    let done = h.run(&yaml).await;
    assert_eq!(done.run.state, RunState::Failed);
    let ti = done.ti("slow");
    assert_eq!(ti.state, TaskState::Failed);
    assert!(
        ti.error
            .as_deref()
            .unwrap()
            .contains("timed out after 300ms"),
        "{:?}",
        ti.error
    );
    let (start, end) = done.tries("slow")[0];
    assert!(
        (end - start).num_milliseconds() < 2500,
        "the try was not stopped at its timeout: {start} .. {end}"
    );
    tokio::time::sleep(std::time::Duration::from_millis(3500)).await;
    assert!(
        !Path::new(&marker).exists(),
        "the command kept running after the timeout"
    );
}

#[tokio::test]
async fn a_timed_out_try_is_retried_when_retries_remain() {
    let h = Harness::new().await;
    let counter = h.path("count");
    let yaml = format!(
        "dag_id: slow_once\ntasks:\n  - id: t\n    operator: shell\n    retries: 1\n    retry_delay: 10ms\n    execution_timeout: 500ms\n    config:\n      command: 'n=$(cat {counter} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {counter}; [ $n -ge 2 ] || sleep 5'\n"
    );
    let done = h.run(&yaml).await;
    assert_eq!(done.run.state, RunState::Success);
    let retry = done
        .history
        .iter()
        .find(|h| h.to == TaskState::UpForRetry)
        .unwrap();
    assert!(
        retry.reason.as_deref().unwrap().contains("timed out"),
        "{retry:?}"
    );
    assert_eq!(done.ti("t").try_number, 2);
}

#[tokio::test]
async fn trigger_rules_route_failures() {
    let h = Harness::new().await;
    let done = h
        .run(
            "dag_id: rules\ntasks:\n  - {id: ok, operator: noop}\n  - {id: bad, operator: shell, config: {command: 'exit 2'}}\n  - {id: needs_all, operator: noop, depends_on: [ok, bad]}\n  - {id: alert, operator: noop, depends_on: [ok, bad], trigger_rule: one_failed}\n  - {id: any_ok, operator: noop, depends_on: [ok, bad], trigger_rule: one_success}\n  - {id: all_failed, operator: noop, depends_on: [bad], trigger_rule: all_failed}\n  - {id: no_failures, operator: noop, depends_on: [ok], trigger_rule: none_failed}\n  - {id: after_skip, operator: noop, depends_on: [no_alert]}\n  - {id: no_alert, operator: noop, depends_on: [ok], trigger_rule: one_failed}\n",
        )
        .await;
    use TaskState::*;
    let states: Vec<(&str, TaskState)> = [
        "ok",
        "bad",
        "needs_all",
        "alert",
        "any_ok",
        "all_failed",
        "no_failures",
        "no_alert",
        "after_skip",
    ]
    .iter()
    .map(|t| (*t, done.state(t)))
    .collect();
    assert_eq!(
        states,
        [
            ("ok", Success),
            ("bad", Failed),
            ("needs_all", UpstreamFailed),
            ("alert", Success),
            ("any_ok", Success),
            ("all_failed", Success),
            ("no_failures", Success),
            ("no_alert", Skipped),
            ("after_skip", Skipped)
        ]
    );
    assert_eq!(done.run.state, RunState::Failed, "a task failed");
    assert_eq!(
        done.ti("needs_all").try_number,
        0,
        "an upstream_failed task never starts a try"
    );
}

#[tokio::test]
async fn cancelling_a_run_stops_running_tries_and_cancels_the_rest() {
    let h = Harness::new().await;
    let dag = h.dag("dag_id: long\ntasks:\n  - {id: slow, operator: shell, config: {command: 'sleep 30'}}\n  - {id: nap, operator: sleep, config: {duration: 30s}}\n  - {id: after, operator: noop, depends_on: [slow, nap]}\n");
    let run_id = h.create(&dag).await;
    let cancel = CancellationToken::new();
    let trigger = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        trigger.cancel();
    });
    let run = h
        .executor()
        .run(dag.clone(), &run_id, cancel)
        .await
        .unwrap();
    let done = h.finish(&dag, &run_id, run).await;
    assert_eq!(done.run.state, RunState::Cancelled);
    for task in ["slow", "nap", "after"] {
        assert_eq!(done.state(task), TaskState::Cancelled, "{task}");
    }
    assert_eq!(done.ti("slow").try_number, 1);
}

#[tokio::test]
async fn a_run_left_by_a_dead_process_resumes_and_retries_the_interrupted_try() {
    let h = Harness::new().await;
    let dag = h.dag("dag_id: resume\ndefault_args: {retries: 1, retry_delay: 10ms}\ntasks:\n  - {id: first, operator: noop}\n  - {id: second, operator: noop, depends_on: first}\n  - {id: third, operator: noop, depends_on: second}\n");
    let run_id = h.create(&dag).await;
    // What a process killed mid-try leaves in the store: `first` done, `second` running, the run running.
    let at = Utc::now();
    let key = |t: &str| TaskKey {
        dag_id: "resume".into(),
        run_id: run_id.clone(),
        task_id: t.into(),
    };
    let s = h.store.as_ref();
    s.set_run_state("resume", &run_id, RunState::Queued, RunState::Running, at)
        .await
        .unwrap();
    for (task, path) in [
        (
            "first",
            &[
                TaskState::Pending,
                TaskState::Queued,
                TaskState::Running,
                TaskState::Success,
            ][..],
        ),
        (
            "second",
            &[TaskState::Pending, TaskState::Queued, TaskState::Running][..],
        ),
    ] {
        for w in path.windows(2) {
            s.transition(&TaskChange::new(key(task), w[0].to(w[1]).unwrap(), at))
                .await
                .unwrap();
        }
    }
    let run = h
        .executor()
        .run(dag.clone(), &run_id, CancellationToken::new())
        .await
        .unwrap();
    let done = h.finish(&dag, &run_id, run).await;
    assert_eq!(done.run.state, RunState::Success);
    use TaskState::*;
    assert_eq!(
        done.transitions("first"),
        [(0, Queued), (1, Running), (1, Success)],
        "a finished task is not re-run"
    );
    assert_eq!(
        done.transitions("second"),
        [
            (0, Queued),
            (1, Running),
            (1, UpForRetry),
            (1, Queued),
            (2, Running),
            (2, Success)
        ],
        "the interrupted try is retried exactly once"
    );
    let died = done
        .history
        .iter()
        .find(|h| h.task_id == "second" && h.to == UpForRetry)
        .unwrap();
    assert!(
        died.reason
            .as_deref()
            .unwrap()
            .contains("process running this try died"),
        "{died:?}"
    );
}

#[tokio::test]
async fn a_task_removed_from_the_dag_mid_run_is_cancelled_not_left_running() {
    let h = Harness::new().await;
    let before = h.dag(
        "dag_id: shrink\ntasks:\n  - {id: keep, operator: noop}\n  - {id: gone, operator: noop}\n",
    );
    let run_id = h.create(&before).await;
    // A process died while `gone` ran; then `gone` was deleted from the file.
    let at = Utc::now();
    let s = h.store.as_ref();
    s.set_run_state("shrink", &run_id, RunState::Queued, RunState::Running, at)
        .await
        .unwrap();
    let gone = TaskKey {
        dag_id: "shrink".into(),
        run_id: run_id.clone(),
        task_id: "gone".into(),
    };
    for w in [TaskState::Pending, TaskState::Queued, TaskState::Running].windows(2) {
        s.transition(&TaskChange::new(gone.clone(), w[0].to(w[1]).unwrap(), at))
            .await
            .unwrap();
    }
    let after = h.dag("dag_id: shrink\ntasks:\n  - {id: keep, operator: noop}\n");
    let run = h
        .executor()
        .run(after.clone(), &run_id, CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(
        run.state,
        RunState::Success,
        "the run is judged on the tasks it has"
    );
    let tis = h.store.task_instances("shrink", &run_id).await.unwrap();
    let gone_ti = tis.iter().find(|t| t.task_id == "gone").unwrap();
    assert_eq!(gone_ti.state, TaskState::Cancelled);
    let history = h.store.history("shrink", &run_id).await.unwrap();
    assert!(history.iter().any(|c| c.task_id == "gone"
        && c.to == TaskState::Cancelled
        && c.reason.as_deref() == Some("the task is no longer in the DAG file")));
}

#[tokio::test]
async fn templates_render_per_try_and_outputs_reach_the_store() {
    let h = Harness::new().await;
    let done = h
        .run("dag_id: tmpl\nparams: {region: eu}\ntasks:\n  - {id: say, operator: shell, config: {command: 'echo {{ dag_id }} {{ params.region }} {{ ds }} try={{ try_number }}'}}\n")
        .await;
    let output = done.ti("say").output.clone().unwrap();
    let expected = format!("tmpl eu {} try=1", done.run.logical_date.format("%Y-%m-%d"));
    assert_eq!(output.values["last_line"], expected.as_str());
    assert_eq!(output.values["exit_code"], 0);
}

/// Every try of every task in these runs, as (start, end).
async fn all_tries(h: &Harness, runs: &[(&str, &str)]) -> Vec<(DateTime<Utc>, DateTime<Utc>)> {
    let mut tries = Vec::new();
    for (dag, run) in runs {
        let history = h.store.history(dag, run).await.unwrap();
        let finished = Finished {
            run: h.store.run(dag, run).await.unwrap().unwrap(),
            tis: vec![],
            history: history.clone(),
        };
        let tasks: std::collections::BTreeSet<&str> =
            history.iter().map(|c| c.task_id.as_str()).collect();
        for task in tasks {
            tries.extend(finished.tries(task));
        }
    }
    tries.sort();
    tries
}

#[tokio::test]
async fn max_active_tasks_and_pools_hold_across_runs_and_dags() {
    let mut h = Harness::new().await;
    h.settings.pools = "db=1".into();
    let a = h.dag("dag_id: a\nmax_active_tasks: 1\ntasks:\n  - {id: x, operator: sleep, config: {duration: 80ms}}\n  - {id: y, operator: sleep, config: {duration: 80ms}}\n");
    let first = h.create(&a).await;
    // a second run of the same DAG, for another interval
    let interval = sluice_core::schedule::DataInterval {
        start: Utc::now() - chrono::Duration::days(1),
        end: Utc::now() - chrono::Duration::days(1),
    };
    let (second, _) = sluice_core::runs::start_run(
        &h.store,
        &a,
        interval,
        RunType::Manual,
        serde_json::json!({}),
        Utc::now(),
    )
    .await
    .unwrap();
    let executor = h.executor();
    let (r1, r2) = tokio::join!(
        executor.run(a.clone(), &first, CancellationToken::new()),
        executor.run(a.clone(), &second.run_id, CancellationToken::new())
    );
    assert_eq!(
        (r1.unwrap().state, r2.unwrap().state),
        (RunState::Success, RunState::Success)
    );
    let tries = all_tries(&h, &[("a", &first), ("a", &second.run_id)]).await;
    assert_eq!(tries.len(), 4);
    assert!(
        tries.windows(2).all(|w| w[0].1 <= w[1].0),
        "max_active_tasks 1 across both runs: {tries:?}"
    );

    // Two DAGs sharing a pool of one slot never overlap; an undefined pool fails its task clearly.
    let b = h.dag("dag_id: b\ntasks:\n  - {id: p, operator: sleep, pool: db, config: {duration: 80ms}}\n  - {id: q, operator: sleep, pool: db, config: {duration: 80ms}}\n");
    let b_run = h.create(&b).await;
    let c = h.dag("dag_id: c\ntasks:\n  - {id: r, operator: sleep, pool: db, config: {duration: 80ms}}\n  - {id: lost, operator: noop, pool: nowhere}\n");
    let c_run = h.create(&c).await;
    let executor = h.executor();
    let (rb, rc) = tokio::join!(
        executor.run(b.clone(), &b_run, CancellationToken::new()),
        executor.run(c.clone(), &c_run, CancellationToken::new())
    );
    assert_eq!(rb.unwrap().state, RunState::Success);
    assert_eq!(rc.unwrap().state, RunState::Failed);
    let lost = h
        .store
        .task_instances("c", &c_run)
        .await
        .unwrap()
        .into_iter()
        .find(|t| t.task_id == "lost")
        .unwrap();
    assert!(lost
        .error
        .unwrap()
        .contains("pool `nowhere` is not defined"));
    let mut pooled = all_tries(&h, &[("b", &b_run)]).await;
    let c_finished = Finished {
        run: h.store.run("c", &c_run).await.unwrap().unwrap(),
        tis: vec![],
        history: h.store.history("c", &c_run).await.unwrap(),
    };
    pooled.extend(c_finished.tries("r"));
    pooled.sort();
    assert_eq!(pooled.len(), 3);
    assert!(
        pooled.windows(2).all(|w| w[0].1 <= w[1].0),
        "the db pool has one slot: {pooled:?}"
    );
}

#[tokio::test]
async fn a_run_driven_by_one_executor_is_refused_to_another() {
    let h = Harness::new().await;
    let dag =
        h.dag("dag_id: busy\ntasks:\n  - {id: nap, operator: sleep, config: {duration: 600ms}}\n");
    let run_id = h.create(&dag).await;
    let first = h.executor();
    let second = h.executor();
    let driving = {
        let (dag, run_id) = (dag.clone(), run_id.clone());
        tokio::spawn(async move { first.run(dag, &run_id, CancellationToken::new()).await })
    };
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let refused = second
        .run(dag.clone(), &run_id, CancellationToken::new())
        .await;
    assert!(
        matches!(
            refused,
            Err(sluice_core::executor::ExecutorError::DrivenElsewhere { .. })
        ),
        "{refused:?}"
    );
    assert_eq!(driving.await.unwrap().unwrap().state, RunState::Success);
    let history = h.store.history("busy", &run_id).await.unwrap();
    assert_eq!(
        history
            .iter()
            .filter(|c| c.to == TaskState::Running)
            .count(),
        1,
        "the try ran once"
    );
}
