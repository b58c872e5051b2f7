//! The scheduler against a real store and executor, with a controlled clock: catchup,
//! max_active_runs, pause, manual triggers and graceful shutdown.

mod common;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sluice_core::executor::Executor;
use sluice_core::operator_api::Connections;
use sluice_core::runs::start_run;
use sluice_core::scheduler::{ManualClock, Scheduler, SchedulerOptions};
use sluice_core::settings::Settings;
use sluice_core::state::{RunState, TaskState};
use sluice_core::store::{DagRun, RunFilter, RunType, Store};
use tokio_util::sync::CancellationToken;

fn utc(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .unwrap()
        .with_timezone(&Utc)
}

struct Running {
    dir: tempfile::TempDir,
    store: Arc<dyn Store>,
    clock: Arc<ManualClock>,
    stop: CancellationToken,
    shutdown: CancellationToken,
    handle: Option<tokio::task::JoinHandle<()>>,
}

impl Running {
    async fn start(dag_yaml: &str, now: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("dags")).unwrap();
        std::fs::write(dir.path().join("dags/dag.yaml"), dag_yaml).unwrap();
        let store = common::sqlite_store(dir.path()).await;
        let clock = Arc::new(ManualClock::new(utc(now)));
        let mut running = Self {
            dir,
            store,
            clock,
            stop: CancellationToken::new(),
            shutdown: CancellationToken::new(),
            handle: None,
        };
        running.spawn(Duration::from_secs(30));
        running
    }

    fn spawn(&mut self, grace: Duration) {
        let settings = Settings::local(self.dir.path(), &self.dir.path().join("dags"));
        self.stop = CancellationToken::new();
        self.shutdown = CancellationToken::new();
        let executor = Executor::new(
            self.store.clone(),
            &settings,
            Arc::new(Connections::default()),
        )
        .with_shutdown(self.shutdown.clone(), grace);
        let options = SchedulerOptions {
            poll: Duration::from_millis(20),
            dag_refresh: Duration::from_millis(100),
            heartbeat: Duration::from_secs(1),
            retention: None,
        };
        let scheduler = Scheduler::new(
            self.store.clone(),
            executor,
            self.clock.clone(),
            settings.dags_folder.clone(),
            sluice_operators::basic(),
            options,
        );
        let stop = self.stop.clone();
        self.handle = Some(tokio::spawn(
            async move { scheduler.run(stop).await.unwrap() },
        ));
    }

    async fn stop(&mut self) {
        self.shutdown.cancel();
        self.stop.cancel();
        self.handle.take().unwrap().await.unwrap();
    }

    async fn runs(&self) -> Vec<DagRun> {
        let mut runs = self
            .store
            .list_runs(&RunFilter {
                limit: 1000,
                ..Default::default()
            })
            .await
            .unwrap();
        runs.sort_by_key(|r| r.logical_date);
        runs
    }

    /// Waits (real time) until `pred` holds for the runs.
    async fn until(&self, what: &str, pred: impl Fn(&[DagRun]) -> bool) -> Vec<DagRun> {
        for _ in 0..600 {
            let runs = self.runs().await;
            if pred(&runs) {
                return runs;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "timed out waiting for {what}: {:#?}",
            self.runs()
                .await
                .iter()
                .map(|r| (&r.run_id, r.state))
                .collect::<Vec<_>>()
        );
    }
}

fn all_done(n: usize) -> impl Fn(&[DagRun]) -> bool {
    move |runs| runs.len() == n && runs.iter().all(|r| r.state.is_finished())
}

/// Most runs whose [started, ended] overlap at any instant.
fn max_concurrent(runs: &[DagRun]) -> usize {
    let mut events: Vec<(DateTime<Utc>, i32)> = Vec::new();
    for r in runs {
        events.push((r.started_at.unwrap(), 1));
        events.push((r.ended_at.unwrap(), -1));
    }
    events.sort();
    let (mut now, mut max) = (0, 0);
    for (_, delta) in events {
        now += delta;
        max = max.max(now);
    }
    max as usize
}

const QUARTER: &str = "dag_id: quarter\nschedule: '*/15 * * * *'\ncatchup: true\nstart_date: '2026-11-23T10:00:00Z'\nmax_active_runs: 2\ntasks:\n  - {id: a, operator: sleep, config: {duration: 50ms}}\n  - {id: b, operator: noop, depends_on: a}\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catchup_creates_every_missed_interval_under_max_active_runs_and_pause_stops_new_runs() {
    let mut s = Running::start(QUARTER, "2026-11-23T12:07:00Z").await;
    let runs = s.until("8 catchup runs", all_done(8)).await;
    let starts: Vec<String> = runs
        .iter()
        .map(|r| r.logical_date.format("%H:%M").to_string())
        .collect();
    assert_eq!(
        starts,
        ["10:00", "10:15", "10:30", "10:45", "11:00", "11:15", "11:30", "11:45"]
    );
    assert!(runs
        .iter()
        .all(|r| r.state == RunState::Success && r.run_type == RunType::Scheduled));
    assert!(runs
        .iter()
        .all(|r| r.data_interval_end - r.data_interval_start == chrono::Duration::minutes(15)));
    assert!(
        max_concurrent(&runs) <= 2,
        "more than max_active_runs at once: {}",
        max_concurrent(&runs)
    );
    assert_eq!(
        max_concurrent(&runs),
        2,
        "catchup uses the allowed concurrency"
    );

    // The next interval ends: one more run.
    s.clock.set(utc("2026-11-23T12:15:00Z"));
    s.until("the 12:00 run", all_done(9)).await;

    // Paused: time passes, no runs. Unpaused: the missed intervals are caught up.
    s.store
        .set_paused("quarter", true, Utc::now())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    s.clock.set(utc("2026-11-23T12:45:00Z"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(s.runs().await.len(), 9, "a paused DAG gets no runs");
    s.store
        .set_paused("quarter", false, Utc::now())
        .await
        .unwrap();
    let runs = s.until("the two missed runs", all_done(11)).await;
    assert_eq!(
        runs.last().unwrap().logical_date,
        utc("2026-11-23T12:30:00Z")
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clock_that_jumps_forward_and_back_neither_duplicates_nor_misses_a_run() {
    let mut s = Running::start(QUARTER, "2026-11-23T12:07:00Z").await;
    s.until("8 catchup runs", all_done(8)).await;
    // An hour forward (a suspended VM resumes, NTP corrects a slow clock): the four
    // intervals that ended meanwhile run.
    s.clock.set(utc("2026-11-23T13:07:00Z"));
    s.until("12 runs", all_done(12)).await;
    // Back by 47 minutes (NTP steps a fast clock back): intervals that ran are not run again.
    s.clock.set(utc("2026-11-23T12:20:00Z"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(s.runs().await.len(), 12, "no run is created twice");
    // Time moves on past the jump: the next interval runs once.
    s.clock.set(utc("2026-11-23T13:20:00Z"));
    let runs = s.until("13 runs", all_done(13)).await;
    let starts: Vec<DateTime<Utc>> = runs.iter().map(|r| r.logical_date).collect();
    let expected: Vec<DateTime<Utc>> = (0..13)
        .map(|i| utc("2026-11-23T10:00:00Z") + chrono::Duration::minutes(15 * i))
        .collect();
    assert_eq!(starts, expected, "every interval once, none missed");
    assert!(runs.iter().all(|r| r.state == RunState::Success));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_catchup_only_the_latest_interval_runs() {
    let dag = QUARTER.replace("catchup: true", "catchup: false");
    let mut s = Running::start(&dag, "2026-11-23T12:07:00Z").await;
    let runs = s.until("one run", all_done(1)).await;
    assert_eq!(runs[0].logical_date, utc("2026-11-23T11:45:00Z"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(s.runs().await.len(), 1, "no catchup");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manual_run_is_picked_up_by_an_idle_scheduler() {
    let dag = "dag_id: manual\ntasks:\n  - {id: a, operator: noop}\n";
    let mut s = Running::start(dag, "2026-11-23T12:07:00Z").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        s.runs().await.is_empty(),
        "a DAG without a schedule gets no runs by itself"
    );
    let bag =
        sluice_core::dag::DagBag::load(&s.dir.path().join("dags"), &sluice_operators::basic());
    let dag = bag.get("manual").unwrap();
    let interval = dag.interval_for(utc("2026-11-23T09:00:00Z"));
    let (run, _) = start_run(
        &s.store,
        dag,
        interval,
        RunType::Manual,
        serde_json::json!({"k": 1}),
        Utc::now(),
    )
    .await
    .unwrap();
    let runs = s.until("the manual run", all_done(1)).await;
    assert_eq!(
        (runs[0].run_id.as_str(), runs[0].state),
        (run.run_id.as_str(), RunState::Success)
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_shutdown_leaves_the_run_to_resume_and_does_not_use_up_a_retry() {
    let dag = "dag_id: slow\ndefault_args: {retries: 0}\ntasks:\n  - {id: long, operator: sleep, config: {duration: 3s}}\n  - {id: after, operator: noop, depends_on: long}\n";
    let mut s = Running::start(dag, "2026-11-23T12:07:00Z").await;
    s.stop().await;
    s.spawn(Duration::from_millis(100));
    let bag =
        sluice_core::dag::DagBag::load(&s.dir.path().join("dags"), &sluice_operators::basic());
    let dag = bag.get("slow").unwrap();
    let (run, _) = start_run(
        &s.store,
        dag,
        dag.interval_for(utc("2026-11-23T09:00:00Z")),
        RunType::Manual,
        serde_json::json!({}),
        Utc::now(),
    )
    .await
    .unwrap();
    // Wait until the long try runs, then shut down with a 100 ms grace.
    for _ in 0..200 {
        let tis = s.store.task_instances("slow", &run.run_id).await.unwrap();
        if tis
            .iter()
            .any(|t| t.task_id == "long" && t.state == TaskState::Running)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    s.stop().await;
    let after_stop = s.store.run("slow", &run.run_id).await.unwrap().unwrap();
    assert_eq!(
        after_stop.state,
        RunState::Running,
        "the run is left for the next scheduler"
    );
    let tis = s.store.task_instances("slow", &run.run_id).await.unwrap();
    let long = tis.iter().find(|t| t.task_id == "long").unwrap();
    assert_eq!(
        (long.state, long.try_number, long.max_tries),
        (TaskState::UpForRetry, 1, 2),
        "interrupted, not failed, even with retries: 0"
    );
    assert!(long
        .error
        .as_deref()
        .unwrap()
        .contains("interrupted by shutdown"));
    // A new scheduler resumes it to success.
    s.spawn(Duration::from_secs(30));
    let runs = s.until("the resumed run", all_done(1)).await;
    assert_eq!(runs[0].state, RunState::Success);
    let history = s.store.history("slow", &run.run_id).await.unwrap();
    let long_tries: Vec<u32> = history
        .iter()
        .filter(|h| h.task_id == "long" && h.to == TaskState::Running)
        .map(|h| h.try_number)
        .collect();
    assert_eq!(long_tries, [1, 2]);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dag_files_added_changed_and_deleted_are_picked_up_without_a_restart() {
    let dag = QUARTER.replace("catchup: true", "catchup: false");
    let mut s = Running::start(&dag, "2026-11-23T12:07:00Z").await;
    let first = s.until("the first run", all_done(1)).await;

    // A new file: its DAG gets runs.
    let other = dag.replace("dag_id: quarter", "dag_id: other");
    std::fs::write(s.dir.path().join("dags/other.yaml"), &other).unwrap();
    let runs = s
        .until("a run of the new DAG", |runs| {
            runs.iter()
                .any(|r| r.dag_id == "other" && r.state.is_finished())
        })
        .await;
    assert_eq!(runs.len(), 2);

    // A changed file: the next run records the new version.
    std::fs::write(
        s.dir.path().join("dags/dag.yaml"),
        dag.replace("duration: 50ms", "duration: 60ms"),
    )
    .unwrap();
    std::fs::remove_file(s.dir.path().join("dags/other.yaml")).unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    s.clock.set(utc("2026-11-23T12:15:00Z"));
    let runs = s
        .until("the next quarter run", |runs| {
            runs.iter()
                .filter(|r| r.dag_id == "quarter" && r.state.is_finished())
                .count()
                == 2
        })
        .await;
    let newest = runs
        .iter()
        .filter(|r| r.dag_id == "quarter")
        .max_by_key(|r| r.logical_date)
        .unwrap();
    assert_ne!(
        newest.dag_hash, first[0].dag_hash,
        "the new run records the changed DAG version"
    );
    // The deleted DAG got no run for the new interval.
    assert_eq!(runs.iter().filter(|r| r.dag_id == "other").count(), 1);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_runs_every_interval_under_its_own_cap_and_reruns_only_failures() {
    use sluice_core::backfill::{self, Action, BackfillRequest};
    // Without catchup the scheduler adds only the latest interval (2026-11-23 11:00), outside
    // the backfilled range.
    let dag_yaml = "dag_id: fill\nschedule: '@hourly'\nmax_active_runs: 3\ntasks:\n  - {id: a, operator: sleep, config: {duration: 100ms}}\n  - {id: b, operator: shell, depends_on: a, config: {command: 'echo {{ ts }}'}}\n";
    let mut s = Running::start(dag_yaml, "2026-11-23T12:07:00Z").await;
    let bag =
        sluice_core::dag::DagBag::load(&s.dir.path().join("dags"), &sluice_operators::basic());
    assert!(bag.errors.is_empty(), "{:?}", bag.errors);
    let dag = bag.get("fill").unwrap().clone();
    let request = BackfillRequest {
        from: utc("2026-11-20T00:00:00Z"),
        to: utc("2026-11-20T05:00:00Z"),
        rerun_failed: true,
        max_active_runs: Some(2),
    };
    let plan = backfill::plan(s.store.as_ref(), &dag, request.clone())
        .await
        .unwrap();
    assert_eq!(plan.runs.len(), 6);
    assert!(plan.runs.iter().all(|r| r.action == Action::Create));
    let queued = backfill::queue(&s.store, &dag, &plan, Utc::now())
        .await
        .unwrap();
    assert_eq!(queued.len(), 6);
    let is_fill = |r: &&DagRun| r.run_type == RunType::Backfill;
    let runs = s
        .until("6 backfill runs", |runs| {
            runs.iter().filter(is_fill).count() == 6
                && runs.iter().filter(is_fill).all(|r| r.state.is_finished())
        })
        .await;
    let fills: Vec<DagRun> = runs.iter().filter(is_fill).cloned().collect();
    assert!(fills.iter().all(|r| r.state == RunState::Success));
    assert_eq!(
        max_concurrent(&fills),
        2,
        "the backfill's cap (2) binds before the DAG's (3)"
    );

    // One run failed since (marked by hand): planning again re-runs it and skips the rest.
    let failed = &fills[2];
    sluice_core::runs::mark_task(&s.store, failed, "b", TaskState::Failed, Utc::now())
        .await
        .unwrap();
    let plan = backfill::plan(s.store.as_ref(), &dag, request)
        .await
        .unwrap();
    let actions: Vec<String> = plan.runs.iter().map(|r| r.action.to_string()).collect();
    assert_eq!(
        actions,
        [
            "skip (already success)",
            "skip (already success)",
            "re-run (failed)",
            "skip (already success)",
            "skip (already success)",
            "skip (already success)"
        ]
    );
    let queued = backfill::queue(&s.store, &dag, &plan, Utc::now())
        .await
        .unwrap();
    assert_eq!(queued.len(), 1);
    assert_eq!(queued[0].run_id, failed.run_id);
    s.until("the re-run", |runs| {
        runs.iter()
            .any(|r| r.run_id == failed.run_id && r.state == RunState::Success)
    })
    .await;
    s.stop().await;
}
