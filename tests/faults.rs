//! Faults of the machine sluice runs on: a `kill -9` of the scheduler while shell tasks run
//! must not leave their commands running next to their retries.

#[path = "../core/tests/common/mod.rs"]
mod common;
#[path = "support/mod.rs"]
mod support;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use sluice_core::state::TaskState;
use sluice_core::store::RunFilter;

use support::{sluice, start_scheduler};

fn lines(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_schedulers_commands_do_not_outlive_it_next_to_their_retries() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("dags")).unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    // Each task appends one line when its sleep ends: a command that outlived the kill would
    // append a second one next to its retry's. A subshell in the background is the hard
    // case: it is not the shell sluice started, only in its process group.
    let dag = format!(
        "dag_id: slow\ndefault_args: {{retries: 2, retry_delay: 100ms}}\ntasks:\n{}",
        ["a", "b", "c"]
            .iter()
            .map(|t| {
                // The first try sleeps long enough to be killed by the resume even on a
                // loaded machine; the retry is quick.
                let nap = r#"if [ "$SLUICE_TRY_NUMBER" = 1 ]; then sleep 8; else sleep 1; fi"#;
                let command = if *t == "c" {
                    format!("({nap}; date >> {}/c) & wait", out.display())
                } else {
                    format!("{nap}; date >> {}/{t}", out.display())
                };
                format!("  - {{id: {t}, operator: shell, config: {{command: '{command}'}}}}\n")
            })
            .collect::<String>()
    );
    std::fs::write(dir.path().join("dags/slow.yaml"), dag).unwrap();
    let mut scheduler = start_scheduler(dir.path());
    let trigger = sluice(dir.path())
        .args([
            "dags",
            "trigger",
            "slow",
            "--logical-date",
            "2026-01-01T00:00:00Z",
        ])
        .output()
        .unwrap();
    assert!(
        trigger.status.success(),
        "{}",
        String::from_utf8_lossy(&trigger.stderr)
    );

    // Kill -9 once every task is running.
    let store = common::sqlite_store(&dir.path().join("home")).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let runs = store.list_runs(&RunFilter::default()).await.unwrap();
        if let Some(run) = runs.first() {
            let tis = store
                .task_instances(&run.dag_id, &run.run_id)
                .await
                .unwrap();
            if tis.len() == 3 && tis.iter().all(|t| t.state == TaskState::Running) {
                break;
            }
        }
        assert!(Instant::now() < deadline, "the tasks never ran");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    scheduler.kill().unwrap();
    scheduler.wait().unwrap();
    let killed_at = Instant::now();

    let mut restarted = start_scheduler(dir.path());
    let deadline = Instant::now() + Duration::from_secs(30);
    let run = loop {
        let runs = store.list_runs(&RunFilter::default()).await.unwrap();
        if runs.len() == 1 && runs[0].state.is_finished() {
            break runs[0].clone();
        }
        assert!(
            Instant::now() < deadline,
            "the run did not finish after the restart"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Long enough for any command of the killed scheduler to have ended too.
    tokio::time::sleep(Duration::from_secs(9).saturating_sub(killed_at.elapsed())).await;
    restarted.kill().unwrap();
    restarted.wait().unwrap();

    assert!(run.state.is_finished());
    for task in ["a", "b", "c"] {
        assert_eq!(
            lines(&out.join(task)),
            1,
            "task {task}: one line per task, from its retry only"
        );
    }
    let history = store.history(&run.dag_id, &run.run_id).await.unwrap();
    let retried = history
        .iter()
        .filter(|h| {
            h.reason
                .as_deref()
                .is_some_and(|r| r.contains("process running this try died"))
        })
        .count();
    assert_eq!(retried, 3, "each task was found dead once and retried");
    assert!(
        store
            .processes(&run.dag_id, &run.run_id)
            .await
            .unwrap()
            .is_empty(),
        "no process group is left recorded"
    );
}

/// A scheduler that stalls (SIGSTOP) past its run lease loses the run to another; when it
/// wakes up (SIGCONT) its writes are refused: the run ends once, driven by the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_scheduler_that_wakes_up_after_its_lease_cannot_write() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("dags")).unwrap();
    std::fs::write(
        dir.path().join("dags/stall.yaml"),
        "dag_id: stall\ndefault_args: {retries: 2, retry_delay: 100ms}\ntasks:\n  - {id: a, operator: shell, config: {command: 'sleep 2'}}\n  - {id: b, operator: noop, depends_on: a}\n",
    )
    .unwrap();
    let log = dir.path().join("first.log");
    let mut first = sluice(dir.path())
        .arg("scheduler")
        .env("SLUICE_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .map(support::Process)
        .unwrap();
    let trigger = sluice(dir.path())
        .args([
            "dags",
            "trigger",
            "stall",
            "--logical-date",
            "2026-01-01T00:00:00Z",
        ])
        .output()
        .unwrap();
    assert!(
        trigger.status.success(),
        "{}",
        String::from_utf8_lossy(&trigger.stderr)
    );
    let store = common::sqlite_store(&dir.path().join("home")).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let run_id = loop {
        let runs = store.list_runs(&RunFilter::default()).await.unwrap();
        if let Some(run) = runs.first() {
            let tis = store
                .task_instances(&run.dag_id, &run.run_id)
                .await
                .unwrap();
            if tis
                .iter()
                .any(|t| t.task_id == "a" && t.state == TaskState::Running)
            {
                break run.run_id.clone();
            }
        }
        assert!(Instant::now() < deadline, "a never ran");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let pid = first.id() as i32;
    // SAFETY: signals to a child process of this test.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let mut second = start_scheduler(dir.path());
    let deadline = Instant::now() + Duration::from_secs(30);
    let run = loop {
        let run = store.run("stall", &run_id).await.unwrap().unwrap();
        if run.state.is_finished() {
            break run;
        }
        assert!(
            Instant::now() < deadline,
            "the second scheduler did not finish the run"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let history_before = store.history("stall", &run_id).await.unwrap();
    unsafe { libc::kill(pid, libc::SIGCONT) };
    // The woken scheduler tries to report its try and is refused.
    tokio::time::sleep(Duration::from_secs(3)).await;
    second.kill().unwrap();
    second.wait().unwrap();
    first.kill().unwrap();
    first.wait().unwrap();

    assert_eq!(run.state, sluice_core::state::RunState::Success);
    let after = store.run("stall", &run_id).await.unwrap().unwrap();
    assert_eq!(
        after.state,
        sluice_core::state::RunState::Success,
        "still the second's outcome"
    );
    let history = store.history("stall", &run_id).await.unwrap();
    assert_eq!(
        history.len(),
        history_before.len(),
        "the woken scheduler wrote nothing: {history:#?}"
    );
    let a_tries = history
        .iter()
        .filter(|h| h.task_id == "a" && h.to == TaskState::Running)
        .count();
    assert_eq!(
        a_tries, 2,
        "the stalled try and the second scheduler's retry"
    );
    let first_log = std::fs::read_to_string(&log).unwrap();
    assert!(
        first_log.contains("lost the run's lease"),
        "the woken scheduler says why it stopped: {first_log}"
    );
}

/// The versioned DAG of the pinning test: `wait` then `extract_id`, whose SQL file selects
/// `rows` rows.
fn versioned_dag(dir: &Path, extract_id: &str, rows: u32) {
    std::fs::create_dir_all(dir.join("dags/sql")).unwrap();
    std::fs::write(
        dir.join("dags/versioned.yaml"),
        format!(
            "dag_id: versioned\ndefault_args: {{retries: 1, retry_delay: 100ms}}\ntasks:\n  \
             - {{id: wait, operator: shell, config: {{command: 'sleep 2'}}}}\n  \
             - {{id: {extract_id}, operator: postgres_extract, depends_on: [wait], config: {{conn: src, sql: sql/q.sql}}}}\n"
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("dags/sql/q.sql"),
        format!("SELECT generate_series(1, {rows}) AS n\n"),
    )
    .unwrap();
}

/// Task ids of a run with the rows each extracted (`None` for tasks without a count).
async fn extracted(
    store: &dyn sluice_core::store::Store,
    run_id: &str,
) -> Vec<(String, Option<u64>)> {
    store
        .task_instances("versioned", run_id)
        .await
        .unwrap()
        .into_iter()
        .map(|ti| {
            let rows = ti
                .output
                .as_ref()
                .and_then(|o| o.values.get("rows"))
                .and_then(|r| r.as_u64());
            (ti.task_id, rows)
        })
        .collect()
}

async fn finished_run(store: &dyn sluice_core::store::Store, run_id: &str) {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let run = store.run("versioned", run_id).await.unwrap();
        if run.as_ref().is_some_and(|r| r.state.is_finished()) {
            return;
        }
        assert!(Instant::now() < deadline, "run {run_id} did not finish");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A run executes the DAG version it was created with, whatever the folder holds when it
/// starts or resumes: a queued run after the file changed, and a run whose file (a task
/// renamed, its SQL file changed) changed mid-run and whose scheduler was killed and restarted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_finishes_on_its_own_dag_version_when_the_files_change() {
    let dir = tempfile::tempdir().unwrap();
    let sluice = || {
        let mut cmd = sluice(dir.path());
        cmd.env("SLUICE_CONN_SRC", common::pg_admin_url());
        cmd
    };
    let trigger = |date: &str| {
        let out = sluice()
            .args(["dags", "trigger", "versioned", "--logical-date", date])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let start = || {
        sluice()
            .arg("scheduler")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map(support::Process)
            .unwrap()
    };
    versioned_dag(dir.path(), "extract", 2);
    // Run A is queued on version 1; the files change before any scheduler starts it.
    trigger("2026-01-01T00:00:00Z");
    versioned_dag(dir.path(), "extract_v2", 5);
    let store = common::sqlite_store(&dir.path().join("home")).await;
    let run_a = store.list_runs(&RunFilter::default()).await.unwrap()[0].clone();
    let mut scheduler = start();
    finished_run(store.as_ref(), &run_a.run_id).await;
    assert_eq!(
        extracted(store.as_ref(), &run_a.run_id).await,
        [("extract".to_string(), Some(2)), ("wait".to_string(), None)],
        "the queued run ran version 1: its task and its SQL"
    );

    // Run B starts on version 2; mid-run the files change again and the scheduler is killed.
    trigger("2026-01-02T00:00:00Z");
    let run_b = store.list_runs(&RunFilter::default()).await.unwrap()[0].clone();
    assert_ne!(run_b.dag_hash, run_a.dag_hash);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !store
        .task_instances("versioned", &run_b.run_id)
        .await
        .unwrap()
        .iter()
        .any(|t| t.task_id == "wait" && t.state == TaskState::Running)
    {
        assert!(Instant::now() < deadline, "run B never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    versioned_dag(dir.path(), "extract_v3", 7);
    scheduler.kill().unwrap();
    scheduler.wait().unwrap();
    let mut restarted = start();
    finished_run(store.as_ref(), &run_b.run_id).await;
    // A run created now gets version 3.
    trigger("2026-01-03T00:00:00Z");
    let run_c = store.list_runs(&RunFilter::default()).await.unwrap()[0].clone();
    finished_run(store.as_ref(), &run_c.run_id).await;
    restarted.kill().unwrap();
    restarted.wait().unwrap();
    assert_eq!(
        extracted(store.as_ref(), &run_b.run_id).await,
        [
            ("extract_v2".to_string(), Some(5)),
            ("wait".to_string(), None)
        ],
        "the resumed run finished on version 2"
    );
    assert_eq!(
        extracted(store.as_ref(), &run_c.run_id).await,
        [
            ("extract_v3".to_string(), Some(7)),
            ("wait".to_string(), None)
        ],
        "a new run runs the folder's version"
    );
    for run in [&run_a, &run_b, &run_c] {
        let run = store.run("versioned", &run.run_id).await.unwrap().unwrap();
        assert_eq!(run.state, sluice_core::state::RunState::Success, "{run:?}");
    }

    // What changed since run A, as the CLI shows it.
    let diff = sluice()
        .args(["runs", "diff", &run_a.run_id])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&diff.stdout);
    assert!(
        diff.status.success(),
        "{}",
        String::from_utf8_lossy(&diff.stderr)
    );
    for expected in [
        "{id: extract, operator",
        "+  - {id: extract_v3, operator",
        "--- a/sql/q.sql",
        "-SELECT generate_series(1, 2) AS n",
        "+SELECT generate_series(1, 7) AS n",
    ] {
        assert!(
            text.contains(expected),
            "`{expected}` missing from:\n{text}"
        );
    }
}

/// A scheduler on a PostgreSQL server of the test's own (which the test may stop and start),
/// with one DAG, and a run of it triggered.
struct OutageRig {
    pg: support::OwnPostgres,
    dir: tempfile::TempDir,
    dag_id: String,
    run_id: String,
    scheduler: support::Process,
}

impl OutageRig {
    /// `dag` gets the folder where its tasks write; `env` is the scheduler's settings.
    async fn start(dag_id: &str, dag: impl Fn(&Path) -> String, env: &[(&str, &str)]) -> Self {
        let pg = support::OwnPostgres::start();
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("dags")).unwrap();
        let out = dir.path().join("out");
        std::fs::create_dir_all(&out).unwrap();
        std::fs::write(dir.path().join(format!("dags/{dag_id}.yaml")), dag(&out)).unwrap();
        let mut cmd = sluice(dir.path());
        cmd.env("SLUICE_DATABASE_URL", pg.url())
            .env("SLUICE_LOG", "info")
            .arg("scheduler")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("scheduler.log")).unwrap());
        for (name, value) in env {
            cmd.env(name, value);
        }
        let scheduler = support::Process(cmd.spawn().unwrap());
        let trigger = sluice(dir.path())
            .env("SLUICE_DATABASE_URL", pg.url())
            .args([
                "dags",
                "trigger",
                dag_id,
                "--logical-date",
                "2026-01-01T00:00:00Z",
            ])
            .output()
            .unwrap();
        assert!(
            trigger.status.success(),
            "{}",
            String::from_utf8_lossy(&trigger.stderr)
        );
        let store = sluice_core::store::open(&pg.url()).await.unwrap();
        let run_id = store.list_runs(&RunFilter::default()).await.unwrap()[0]
            .run_id
            .clone();
        Self {
            pg,
            dir,
            dag_id: dag_id.to_string(),
            run_id,
            scheduler,
        }
    }

    fn out(&self) -> std::path::PathBuf {
        self.dir.path().join("out")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("scheduler.log")).unwrap_or_default()
    }

    /// Waits until `n` tries of the run are running.
    async fn running(&self, n: usize) {
        let store = sluice_core::store::open(&self.pg.url()).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let tis = store
                .task_instances(&self.dag_id, &self.run_id)
                .await
                .unwrap();
            if tis.iter().filter(|t| t.state == TaskState::Running).count() == n {
                return;
            }
            assert!(Instant::now() < deadline, "the tries never ran: {tis:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the run has finished, stops the scheduler, and returns the run's task
    /// instances, checking that it succeeded.
    async fn succeeded(&mut self) -> Vec<sluice_core::store::TaskInstance> {
        let store = sluice_core::store::open(&self.pg.url()).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(40);
        let run = loop {
            let run = store
                .run(&self.dag_id, &self.run_id)
                .await
                .unwrap()
                .unwrap();
            if run.state.is_finished() {
                break run;
            }
            assert!(
                Instant::now() < deadline,
                "the run did not finish after the outage: {}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        self.scheduler.kill().unwrap();
        self.scheduler.wait().unwrap();
        assert_eq!(
            run.state,
            sluice_core::state::RunState::Success,
            "{}",
            self.log()
        );
        store
            .task_instances(&self.dag_id, &self.run_id)
            .await
            .unwrap()
    }
}

/// The PostgreSQL store goes away during a run of long tries: every connection is killed
/// (`pg_terminate_backend`), then the server is restarted, with a try ending while it is
/// down. The run waits it out: it succeeds, every task ran once, and no retry was used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_rides_out_a_killed_connection_and_a_postgres_restart() {
    // No retries: a try counted as crashed would fail the run.
    let dag = |out: &Path| {
        let task = |id: &str, seconds: u32| {
            format!(
                "  - {{id: {id}, operator: shell, config: {{command: 'sleep {seconds}; echo x >> {}/{id}'}}}}\n",
                out.display()
            )
        };
        format!(
            "dag_id: outage\ndefault_args: {{retries: 0}}\ntasks:\n{}{}{}  - {{id: after, operator: shell, depends_on: [long_a, long_b, quick], config: {{command: 'echo x >> {}/after'}}}}\n",
            task("long_a", 9),
            task("long_b", 9),
            // Ends while the server is down: its end is written once it is back.
            task("quick", 4),
            out.display()
        )
    };
    // A lease shorter than the outage: it lapses while the store is down and is claimed
    // again before the driver's next write.
    let mut rig = OutageRig::start("outage", dag, &[("SLUICE_RUN_LEASE", "2s")]).await;
    rig.running(3).await;

    // Every connection of the scheduler is killed by an administrator…
    let mut admin = <sqlx::PgConnection as sqlx::Connection>::connect(&rig.pg.url())
        .await
        .unwrap();
    let killed: Vec<(bool,)> = sqlx::query_as(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
         WHERE pid <> pg_backend_pid() AND backend_type = 'client backend'",
    )
    .fetch_all(&mut admin)
    .await
    .unwrap();
    assert!(!killed.is_empty(), "the scheduler had connections to kill");
    drop(admin);
    tokio::time::sleep(Duration::from_millis(500)).await;
    // …then the server restarts, staying down while `quick` ends.
    rig.pg.stop();
    tokio::time::sleep(Duration::from_secs(4)).await;
    rig.pg.start_again();

    let tis = rig.succeeded().await;
    let log = rig.log();
    for ti in &tis {
        assert_eq!(
            (ti.state, ti.try_number),
            (TaskState::Success, 1),
            "{}: one try, no retry used\n{log}",
            ti.task_id
        );
        assert_eq!(
            lines(&rig.out().join(&ti.task_id)),
            1,
            "{} ran once",
            ti.task_id
        );
    }
    assert!(
        log.contains("does not answer; waiting it out"),
        "the outage was noticed and waited out:\n{log}"
    );
}

/// A tmpfs mounted for the test's `SLUICE_HOME`, unmounted when dropped.
struct SmallDisk {
    path: std::path::PathBuf,
}

impl SmallDisk {
    fn mount(path: &Path, size: &str) -> Self {
        std::fs::create_dir_all(path).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "this test mounts a small tmpfs (it needs root, as scripts/test has on this machine): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self {
            path: path.to_path_buf(),
        }
    }

    fn grow(&self, size: &str) {
        let out = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .status();
    }
}

fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// `SLUICE_HOME` on a small file system that fills up mid-extract: the try fails retryably
/// naming the file, leaves no partial file, and the retry succeeds once there is space.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_the_extract_retryably_and_the_run_succeeds_once_there_is_space() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("dags")).unwrap();
    let home = dir.path().join("home");
    let disk = SmallDisk::mount(&home, "2m");
    // About 12 MB as Arrow: the 2 MB disk fills up while it is written.
    std::fs::write(
        dir.path().join("dags/big.yaml"),
        "dag_id: big\ndefault_args: {retries: 2, retry_delay: 3s}\ntasks:\n  \
         - {id: extract, operator: postgres_extract, config: {conn: src, sql: \"SELECT g AS n, repeat('x', 100) AS pad FROM generate_series(1, 100000) g\"}}\n",
    )
    .unwrap();
    // The store is PostgreSQL: the full disk is the artifacts' and logs' problem here.
    let database = common::fresh_pg_database().await;
    let mut run = sluice(dir.path())
        .env("SLUICE_DATABASE_URL", &database)
        .env("SLUICE_CONN_SRC", common::pg_admin_url())
        .args([
            "dags",
            "test",
            "big",
            "--logical-date",
            "2026-01-01T00:00:00Z",
        ])
        .stdout(std::fs::File::create(dir.path().join("test.out")).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .map(support::Process)
        .unwrap();
    let store = sluice_core::store::open(&database).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let failed = loop {
        let runs = store.list_runs(&RunFilter::default()).await.unwrap();
        if let Some(r) = runs.first() {
            let tis = store.task_instances("big", &r.run_id).await.unwrap();
            if tis[0].state == TaskState::UpForRetry {
                break tis[0].clone();
            }
            assert!(!tis[0].state.is_finished(), "{tis:?}");
        }
        assert!(Instant::now() < deadline, "the first try never failed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let error = failed.error.clone().unwrap_or_default();
    assert!(
        error.contains("No space left on device")
            && error.contains(&home.join("artifacts").display().to_string()),
        "the error names the cause and the file: {error}"
    );
    let partial: Vec<_> = files_under(&home.join("artifacts"))
        .into_iter()
        .filter(|p| p.to_string_lossy().ends_with(".partial"))
        .collect();
    assert!(partial.is_empty(), "no partial file is left: {partial:?}");
    // Space is made before the retry.
    disk.grow("64m");
    let status = run.wait().unwrap();
    let output = std::fs::read_to_string(dir.path().join("test.out")).unwrap_or_default();
    assert!(
        status.success(),
        "the run succeeds once there is space:\n{output}"
    );
    let runs = store.list_runs(&RunFilter::default()).await.unwrap();
    let tis = store.task_instances("big", &runs[0].run_id).await.unwrap();
    assert_eq!(
        (tis[0].state, tis[0].try_number),
        (TaskState::Success, 2),
        "{tis:?}"
    );
    let rows = tis[0].output.as_ref().unwrap().values["rows"].as_u64();
    assert_eq!(rows, Some(100_000));
    let files: Vec<String> = files_under(&home.join("artifacts"))
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(files, ["extract.try2.arrow"], "only the committed table");
}

/// A table larger than a load's batch goes through extract and load slice by slice (memory
/// holds one slice): every row arrives once, with its values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_of_many_batches_is_extracted_and_loaded_whole() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("dags/sql")).unwrap();
    let ch_db = common::fresh_clickhouse_database().await;
    std::fs::write(
        dir.path().join("dags/sql/wide.ch.sql"),
        "CREATE TABLE wide (n Int64, label String, at DateTime) ENGINE = MergeTree ORDER BY n\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("dags/wide.yaml"),
        "dag_id: wide\ntasks:\n  \
         - {id: extract, operator: postgres_extract, config: {conn: src, sql: \"SELECT g::bigint AS n, 'row ' || g AS label, timestamp '2026-01-01' + g * interval '1 second' AS at FROM generate_series(1, 150000) g\"}}\n  \
         - {id: load, operator: clickhouse_load, depends_on: extract, config: {conn: ch, table: wide, ddl: sql/wide.ch.sql, batch_rows: 40000}}\n",
    )
    .unwrap();
    let out = sluice(dir.path())
        .env("SLUICE_CONN_SRC", common::pg_admin_url())
        .env(
            "SLUICE_CONN_CH",
            format!(
                "clickhouse://{}/{ch_db}",
                common::clickhouse_http().trim_start_matches("http://")
            ),
        )
        .args([
            "dags",
            "test",
            "wide",
            "--logical-date",
            "2026-01-01T00:00:00Z",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = common::clickhouse(&format!(
        "SELECT count(), uniqExact(n), sum(n), countIf(label = concat('row ', toString(n))), max(at) FROM {ch_db}.wide FORMAT TSV"
    ))
    .await;
    assert_eq!(
        summary.trim(),
        "150000\t150000\t11250075000\t150000\t2026-01-02 17:40:00"
    );
}

/// Past `SLUICE_STORE_OUTAGE_DEADLINE` the run's tries are stopped; once the store answers
/// they are recorded as interrupted and run again without using up a retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_outage_deadline_tries_are_stopped_and_run_again_without_using_a_retry() {
    let dag = |out: &Path| {
        format!(
            "dag_id: deadline\ndefault_args: {{retries: 0}}\ntasks:\n  \
             - {{id: quick, operator: sleep, config: {{duration: 1s}}}}\n  \
             - {{id: long, operator: shell, config: {{command: 'sleep 6; echo $SLUICE_TRY_NUMBER >> {out}/long'}}}}\n",
            out = out.display()
        )
    };
    let mut rig = OutageRig::start(
        "deadline",
        dag,
        &[
            ("SLUICE_STORE_OUTAGE_DEADLINE", "1s"),
            ("SLUICE_RUN_LEASE", "30s"),
        ],
    )
    .await;
    rig.running(2).await;
    // Down for 4 s: `quick` ends meanwhile (its write fails: the outage starts), and the
    // deadline of 1 s passes while `long` still runs.
    rig.pg.stop();
    tokio::time::sleep(Duration::from_secs(4)).await;
    rig.pg.start_again();
    let tis = rig.succeeded().await;
    let long = tis.iter().find(|t| t.task_id == "long").unwrap();
    assert_eq!(
        (long.state, long.try_number, long.max_tries),
        (TaskState::Success, 2, 2),
        "stopped at the deadline, run again, the stop not counted: {long:?}\n{}",
        rig.log()
    );
    assert_eq!(
        std::fs::read_to_string(rig.out().join("long")).unwrap(),
        "2\n",
        "the stopped try never finished"
    );
    assert!(
        rig.log().contains("outlasted its deadline"),
        "{}",
        rig.log()
    );
}
