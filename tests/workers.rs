//! Workers on one PostgreSQL store: a scheduler with `--executor workers` queues tries, any
//! number of `sluice worker` processes claim and run them; a killed worker's try runs again
//! elsewhere after the heartbeat timeout, and a stalled worker's late end is refused.

#[path = "../core/tests/common/mod.rs"]
mod common;
#[path = "support/mod.rs"]
mod support;

use std::collections::{BTreeSet, HashSet};
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use sluice_core::state::{RunState, TaskState};
use sluice_core::store::{RunFilter, Store};

use support::sluice;

/// A cluster on one fresh PostgreSQL database: schedulers and workers as processes.
struct Cluster {
    dir: tempfile::TempDir,
    database: String,
    children: Vec<(String, Child)>,
}

impl Cluster {
    async fn new(dag: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("dags")).unwrap();
        std::fs::write(dir.path().join("dags/d.yaml"), dag).unwrap();
        Self {
            dir,
            database: common::fresh_pg_database().await,
            children: Vec::new(),
        }
    }

    fn command(&self) -> std::process::Command {
        let mut cmd = sluice(self.dir.path());
        cmd.env("SLUICE_DATABASE_URL", &self.database)
            .env("SLUICE_LOG", "info")
            .env("SLUICE_POOLS", "p2=2");
        cmd
    }

    fn spawn(&mut self, name: &str, args: &[&str]) {
        let log = std::fs::File::create(self.dir.path().join(format!("{name}.log"))).unwrap();
        let child = self
            .command()
            .args(args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.children.push((name.to_string(), child));
    }

    fn kill(&mut self, name: &str) {
        let (_, child) = self.children.iter_mut().find(|(n, _)| n == name).unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }

    fn scheduler(&mut self, name: &str, worker_timeout: &str) {
        self.spawn(
            name,
            &[
                "scheduler",
                "--executor",
                "workers",
                "--worker-timeout",
                worker_timeout,
            ],
        );
    }

    fn worker(&mut self, name: &str, concurrency: u32) {
        let concurrency = concurrency.to_string();
        self.spawn(
            name,
            &[
                "worker",
                "--name",
                name,
                "--concurrency",
                &concurrency,
                "--heartbeat",
                "300ms",
            ],
        );
    }

    fn pid(&self, name: &str) -> i32 {
        // The latest process of that name (a worker may be restarted under its name).
        self.children
            .iter()
            .rfind(|(n, _)| n == name)
            .map(|(_, c)| c.id() as i32)
            .unwrap()
    }

    fn trigger(&self, date: &str) {
        let out = self
            .command()
            .args(["dags", "trigger", "d", "--logical-date", date])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    async fn store(&self) -> std::sync::Arc<dyn Store> {
        sluice_core::store::open(&self.database).await.unwrap()
    }

    fn logs(&self) -> String {
        self.children
            .iter()
            .map(|(name, _)| {
                let text = std::fs::read_to_string(self.dir.path().join(format!("{name}.log")))
                    .unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(15).collect();
                format!(
                    "--- {name}\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Waits until `runs` runs exist and all have finished.
    async fn finished(&self, runs: usize, within: Duration) -> Vec<sluice_core::store::DagRun> {
        let store = self.store().await;
        let deadline = Instant::now() + within;
        loop {
            let all = store.list_runs(&RunFilter::default()).await.unwrap();
            if all.len() == runs && all.iter().all(|r| r.state.is_finished()) {
                return all;
            }
            assert!(
                Instant::now() < deadline,
                "runs did not finish: {all:?}\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .map(|t| t.lines().map(str::to_string).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_run_every_try_exactly_once() {
    // 30 tasks in three layers of ten; each appends its id once per try.
    let out = tempfile::tempdir().unwrap();
    let tasks: String = (0..30)
        .map(|i| {
            let deps = if i >= 10 {
                format!(", depends_on: [t{:02}]", i - 10)
            } else {
                String::new()
            };
            format!(
                "  - {{id: t{i:02}, operator: shell{deps}, config: {{command: 'echo \"$SLUICE_RUN_ID $SLUICE_TASK_ID\" >> {}/ran; sleep 0.2'}}}}\n",
                out.path().display()
            )
        })
        .collect();
    let mut c = Cluster::new(&format!("dag_id: d\ntasks:\n{tasks}")).await;
    c.scheduler("scheduler", "10s");
    for name in ["w1", "w2", "w3"] {
        c.worker(name, 4);
    }
    for day in 1..=3 {
        c.trigger(&format!("2026-01-0{day}T00:00:00Z"));
    }
    let runs = c.finished(3, Duration::from_secs(90)).await;
    assert!(
        runs.iter().all(|r| r.state == RunState::Success),
        "{runs:?}\n{}",
        c.logs()
    );
    let ran = lines(&out.path().join("ran"));
    let distinct: HashSet<&String> = ran.iter().collect();
    assert_eq!(
        (ran.len(), distinct.len()),
        (90, 90),
        "every task ran exactly once per run"
    );
    let store = c.store().await;
    let mut workers = BTreeSet::new();
    for run in &runs {
        for ti in store.task_instances("d", &run.run_id).await.unwrap() {
            assert_eq!((ti.state, ti.try_number), (TaskState::Success, 1), "{ti:?}");
            assert_eq!(ti.queue.as_deref(), Some("default"));
            assert!(ti.hostname.is_some(), "{ti:?}");
            workers.insert(ti.worker.clone().expect("a worker ran it"));
        }
    }
    assert!(
        workers.len() >= 2,
        "the tries spread over the workers: {workers:?}"
    );
    let listed = store.workers().await.unwrap();
    assert_eq!(listed.len(), 3, "{listed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_workers_try_runs_elsewhere_and_a_stalled_workers_late_end_is_refused() {
    let out = tempfile::tempdir().unwrap();
    let dag = format!(
        "dag_id: d\ndefault_args: {{retries: 2, retry_delay: 0s}}\ntasks:\n  - {{id: slow, operator: shell, config: {{command: 'sleep 3; echo \"$SLUICE_RUN_ID $SLUICE_TRY_NUMBER\" >> {}/slow'}}}}\n",
        out.path().display()
    );
    let mut c = Cluster::new(&dag).await;
    c.scheduler("scheduler", "2s");
    c.worker("w1", 1);
    c.worker("w2", 1);
    let store = c.store().await;
    let running_on = |run: &str| {
        let store = store.clone();
        let run = run.to_string();
        async move {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let runs = store.list_runs(&RunFilter::default()).await.unwrap();
                if let Some(r) = runs
                    .iter()
                    .find(|r| r.logical_date.to_rfc3339().starts_with(&run))
                {
                    let tis = store.task_instances("d", &r.run_id).await.unwrap();
                    if let Some(w) = tis
                        .iter()
                        .find(|t| t.state == TaskState::Running)
                        .and_then(|t| t.worker.clone())
                    {
                        return (r.run_id.clone(), w);
                    }
                }
                assert!(Instant::now() < deadline, "the try never ran");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };

    // kill -9 the worker running the try: the try runs again.
    c.trigger("2026-01-01T00:00:00Z");
    let (run_a, first) = running_on("2026-01-01").await;
    unsafe { libc::kill(c.pid(&first), libc::SIGKILL) };
    // Restarted at once under the same name (as systemd does): its heartbeats must not keep
    // the dead process's try alive.
    c.worker(&first, 1);
    let runs = c.finished(1, Duration::from_secs(30)).await;
    let ti = &store.task_instances("d", &run_a).await.unwrap()[0];
    assert_eq!(runs[0].state, RunState::Success, "{}", c.logs());
    assert_eq!(ti.try_number, 2, "{ti:?}");
    let history = store.history("d", &run_a).await.unwrap();
    assert!(
        history.iter().any(|h| h
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("stopped heartbeating"))),
        "{history:?}"
    );
    assert_eq!(
        lines(&out.path().join("slow")),
        [format!("{run_a} 2")],
        "the killed worker's command died with it"
    );

    // A worker stalls (SIGSTOP) past the timeout while its try runs; the try is taken back and
    // runs on the other worker; the stalled one wakes up (SIGCONT) and its end is refused.
    c.trigger("2026-01-02T00:00:00Z");
    let (run_b, stalled) = running_on("2026-01-02").await;
    unsafe { libc::kill(c.pid(&stalled), libc::SIGSTOP) };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ti = &store.task_instances("d", &run_b).await.unwrap()[0];
        if ti.state == TaskState::Success {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the run did not finish while {stalled} stalled: {ti:?}\n{}",
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    unsafe { libc::kill(c.pid(&stalled), libc::SIGCONT) };
    // Time for the woken worker to try its late write.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ti = &store.task_instances("d", &run_b).await.unwrap()[0];
    assert_eq!((ti.state, ti.try_number), (TaskState::Success, 2), "{ti:?}");
    assert_ne!(ti.worker.as_deref(), Some(stalled.as_str()));
    let history = store.history("d", &run_b).await.unwrap();
    let successes: Vec<u32> = history
        .iter()
        .filter(|h| h.to == TaskState::Success)
        .map(|h| h.try_number)
        .collect();
    assert_eq!(
        successes,
        [2],
        "only the newer try's end was recorded: {history:?}"
    );
    let stalled_log =
        std::fs::read_to_string(c.dir.path().join(format!("{stalled}.log"))).unwrap_or_default();
    assert!(
        stalled_log.contains("refused") || stalled_log.contains("no longer has this try running"),
        "the stalled worker's late end was refused:\n{stalled_log}"
    );
}

/// The most tries of `pool_tasks` running at once, from the history's starts and ends.
fn most_at_once(
    history: &[sluice_core::store::StateChange],
    pool_tasks: &HashSet<String>,
) -> usize {
    let mut edges: Vec<(chrono::DateTime<chrono::Utc>, i32)> = history
        .iter()
        .filter(|h| pool_tasks.contains(&h.task_id))
        .filter_map(|h| match (h.from, h.to) {
            (_, TaskState::Running) => Some((h.at, 1)),
            (TaskState::Running, _) => Some((h.at, -1)),
            _ => None,
        })
        .collect();
    // An end and a start at the same instant: the end first.
    edges.sort();
    let (mut now, mut most) = (0i32, 0i32);
    for (_, step) in edges {
        now += step;
        most = most.max(now);
    }
    most as usize
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_schedulers_and_three_workers_run_twenty_runs_once_each_within_the_limits() {
    // 30 tasks: a root, 29 after it; every third one takes a slot of pool p2 (size 2).
    let mut tasks = String::from("  - {id: t00, operator: sleep, config: {duration: 50ms}}\n");
    for i in 1..30 {
        let pool = if i % 3 == 0 { ", pool: p2" } else { "" };
        tasks.push_str(&format!(
            "  - {{id: t{i:02}, operator: sleep, depends_on: t00{pool}, config: {{duration: 100ms}}}}\n"
        ));
    }
    let mut c = Cluster::new(&format!(
        "dag_id: d\nmax_active_runs: 3\nmax_active_tasks: 5\ntasks:\n{tasks}"
    ))
    .await;
    c.scheduler("s1", "10s");
    c.scheduler("s2", "10s");
    for name in ["w1", "w2", "w3"] {
        c.worker(name, 4);
    }
    for day in 1..=20 {
        c.trigger(&format!("2026-01-{day:02}T00:00:00Z"));
    }
    // One scheduler dies mid-way: the other drives its runs to the end.
    let store = c.store().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let runs = store.list_runs(&RunFilter::default()).await.unwrap();
        if runs.iter().filter(|r| r.state.is_finished()).count() >= 3 {
            break;
        }
        assert!(Instant::now() < deadline, "no run finished\n{}", c.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    c.kill("s1");
    let runs = c.finished(20, Duration::from_secs(120)).await;
    assert!(
        runs.iter().all(|r| r.state == RunState::Success),
        "{runs:?}\n{}",
        c.logs()
    );
    let dates: HashSet<_> = runs.iter().map(|r| r.logical_date).collect();
    assert_eq!(dates.len(), 20, "no run is duplicated");
    let pool_tasks: HashSet<String> = (1..30)
        .filter(|i| i % 3 == 0)
        .map(|i| format!("t{i:02}"))
        .collect();
    let mut workers = BTreeSet::new();
    let mut history = Vec::new();
    for run in &runs {
        for ti in store.task_instances("d", &run.run_id).await.unwrap() {
            assert_eq!((ti.state, ti.try_number), (TaskState::Success, 1), "{ti:?}");
            workers.insert(ti.worker.clone().expect("a worker ran it"));
        }
        let changes = store.history("d", &run.run_id).await.unwrap();
        let starts = changes
            .iter()
            .filter(|h| h.to == TaskState::Running)
            .count();
        assert_eq!(
            starts, 30,
            "every task started exactly once in {}",
            run.run_id
        );
        history.extend(changes);
    }
    assert!(workers.len() >= 2, "{workers:?}");
    let most = most_at_once(&history, &pool_tasks);
    assert!(most <= 2, "pool p2 (2 slots) had {most} tries at once");
    assert_eq!(most, 2, "the pool was used to its size");
    // max_active_runs (3) holds across the two schedulers: from the runs' start and end.
    let mut edges: Vec<(chrono::DateTime<chrono::Utc>, i32)> = runs
        .iter()
        .flat_map(|r| [(r.started_at.unwrap(), 1), (r.ended_at.unwrap(), -1)])
        .collect();
    edges.sort_by_key(|(at, step)| (*at, *step));
    let (mut now, mut most_runs) = (0, 0);
    for (_, step) in edges {
        now += step;
        most_runs = most_runs.max(now);
    }
    assert_eq!(
        most_runs, 3,
        "max_active_runs 3: {most_runs} runs at once at most"
    );
    // The DAG's max_active_tasks (5) holds across its runs, schedulers and workers.
    let all: HashSet<String> = (0..30).map(|i| format!("t{i:02}")).collect();
    let most = most_at_once(&history, &all);
    assert_eq!(
        most, 5,
        "max_active_tasks 5: {most} tries of the DAG ran at once at most"
    );
}
