//! Migrations are history: a store created by the oldest schema (with data in it) migrates
//! to the newest on both backends and reads back through the store, and a landed
//! migration's text never changes (sqlx refuses a store whose applied migration differs).

mod common;

use std::path::Path;

use sha2::{Digest, Sha256};
use sluice_core::state::{RunState, TaskState};
use sluice_core::store::{self, RunFilter};
use sqlx::migrate::Migrator;

/// The first 16 hex digits of each landed migration's SHA-256. A change to a landed
/// migration is a new migration, never an edit: add a line here for each new file.
const LANDED: &[(&str, &str)] = &[
    ("postgres/0001_core.sql", "cc99a59920216909"),
    ("postgres/0002_scheduler.sql", "b5ec939731a48592"),
    ("postgres/0003_history_trigger.sql", "801863b8471dfdee"),
    ("postgres/0004_backfill_limit.sql", "af7530e5a9958309"),
    ("postgres/0005_run_driver.sql", "2ffba3b96f4c1975"),
    ("postgres/0006_batch_write_marker.sql", "a61e20afb3e9425e"),
    ("postgres/0007_run_attempts.sql", "ef049a28b9aed2eb"),
    ("postgres/0008_deliveries.sql", "bbe4f0f0456399fd"),
    ("postgres/0009_audit_log.sql", "c7f1d61aee806c6f"),
    ("postgres/0010_task_processes.sql", "a0232c6adfc08db0"),
    ("postgres/0011_dag_versions.sql", "f80a3182415cc656"),
    ("postgres/0012_workers.sql", "bc739a72239de4ba"),
    ("postgres/0013_stop_requests.sql", "225b445d08fa87be"),
    ("postgres/0014_notifications.sql", "e96bc5ba5e5bec8a"),
    ("sqlite/0001_core.sql", "9ca712b191ce86b1"),
    ("sqlite/0002_scheduler.sql", "b5ec939731a48592"),
    ("sqlite/0003_history_trigger.sql", "7168ac0d5082f7f9"),
    ("sqlite/0004_backfill_limit.sql", "af7530e5a9958309"),
    ("sqlite/0005_run_driver.sql", "2ffba3b96f4c1975"),
    ("sqlite/0006_batch_write_marker.sql", "f9dfb3bec71b0598"),
    ("sqlite/0007_run_attempts.sql", "ef049a28b9aed2eb"),
    ("sqlite/0008_deliveries.sql", "bbe4f0f0456399fd"),
    ("sqlite/0009_audit_log.sql", "4782f23de3f9f168"),
    ("sqlite/0010_task_processes.sql", "a0232c6adfc08db0"),
    ("sqlite/0011_dag_versions.sql", "f80a3182415cc656"),
    ("sqlite/0012_workers.sql", "bc739a72239de4ba"),
    ("sqlite/0013_stop_requests.sql", "225b445d08fa87be"),
    ("sqlite/0014_notifications.sql", "e96bc5ba5e5bec8a"),
];

fn migrations_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations")
}

#[test]
fn landed_migrations_never_change() {
    for (file, digest) in LANDED {
        let text = std::fs::read(migrations_dir().join(file)).unwrap();
        let actual = format!("{:x}", Sha256::digest(&text));
        assert_eq!(
            &actual[..16],
            *digest,
            "{file} changed after it landed: put the change in a new migration"
        );
    }
    for backend in ["sqlite", "postgres"] {
        let mut files: Vec<String> = std::fs::read_dir(migrations_dir().join(backend))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        files.sort();
        let numbers: Vec<&str> = files.iter().map(|f| &f[..4]).collect();
        let other = if backend == "sqlite" {
            "postgres"
        } else {
            "sqlite"
        };
        let mut theirs: Vec<String> = std::fs::read_dir(migrations_dir().join(other))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy()[..4].to_string())
            .collect();
        theirs.sort();
        assert_eq!(numbers, theirs, "both backends have the same versions");
    }
}

/// A folder holding only the oldest migration of `backend`.
fn oldest_only(backend: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        migrations_dir().join(backend).join("0001_core.sql"),
        dir.path().join("0001_core.sql"),
    )
    .unwrap();
    dir
}

/// Rows as the oldest schema had them: a failed run with two task instances and history.
const OLD_ROWS: &[&str] = &[
    "INSERT INTO dag_run (dag_id, run_id, logical_date, data_interval_start, data_interval_end, run_type, state, conf, dag_hash, created_at, started_at, ended_at) VALUES ('old', 'scheduled__2026-01-01T00:00:00+00:00', 1767225600000000, 1767225600000000, 1767229200000000, 'scheduled', 'failed', '{\"k\": 1}', 'abc', 1767229200000000, 1767229201000000, 1767229205000000)",
    "INSERT INTO task_instance (dag_id, run_id, task_id, operator, state, try_number, max_tries, started_at, ended_at, output, error, updated_at) VALUES ('old', 'scheduled__2026-01-01T00:00:00+00:00', 'extract', 'shell', 'success', 1, 2, 1767229201000000, 1767229202000000, '{\"values\": {\"rows\": 3}}', NULL, 1767229202000000)",
    "INSERT INTO task_instance (dag_id, run_id, task_id, operator, state, try_number, max_tries, started_at, ended_at, output, error, updated_at) VALUES ('old', 'scheduled__2026-01-01T00:00:00+00:00', 'load', 'shell', 'failed', 2, 2, 1767229203000000, 1767229205000000, NULL, 'exit status 1', 1767229205000000)",
    "INSERT INTO task_state_history (dag_id, run_id, task_id, try_number, from_state, to_state, at, reason) VALUES ('old', 'scheduled__2026-01-01T00:00:00+00:00', 'load', 2, 'running', 'failed', 1767229205000000, 'exit status 1')",
];

async fn assert_migrated(url: &str) {
    let store = store::open(url).await.expect("the old store migrates");
    let runs = store
        .list_runs(&RunFilter {
            dag_id: Some("old".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(runs.len(), 1);
    let run = &runs[0];
    assert_eq!(run.state, RunState::Failed);
    assert_eq!(run.conf, serde_json::json!({"k": 1}));
    assert_eq!(run.backfill_max_active_runs, None);
    assert_eq!(
        run.attempt, 1,
        "a run from before attempts is its first attempt"
    );
    let attempts = store.attempts("old", &run.run_id).await.unwrap();
    assert_eq!(attempts.len(), 1);
    assert_eq!(
        (attempts[0].attempt, attempts[0].state, &attempts[0].conf),
        (1, RunState::Failed, &serde_json::json!({"k": 1}))
    );
    assert_eq!(attempts[0].ended_at, run.ended_at);
    let tis = store.task_instances("old", &run.run_id).await.unwrap();
    let states: Vec<(String, TaskState, u32)> = tis
        .iter()
        .map(|t| (t.task_id.clone(), t.state, t.try_number))
        .collect();
    assert_eq!(
        states,
        [
            ("extract".to_string(), TaskState::Success, 1),
            ("load".to_string(), TaskState::Failed, 2)
        ]
    );
    assert_eq!(tis[1].error.as_deref(), Some("exit status 1"));
    let history = store.history("old", &run.run_id).await.unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].to, TaskState::Failed);
}

/// A store at `url` with only the oldest migration of `backend` applied, holding [`OLD_ROWS`].
async fn oldest_store(backend: &str, url: &str) {
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(url).await.unwrap();
    let oldest = oldest_only(backend);
    Migrator::new(oldest.path())
        .await
        .unwrap()
        .run(&pool)
        .await
        .unwrap();
    for row in OLD_ROWS {
        sqlx::query(row).execute(&pool).await.unwrap();
    }
    pool.close().await;
}

#[tokio::test]
async fn a_sqlite_store_of_the_oldest_schema_migrates_to_the_newest() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("old.db").display());
    oldest_store("sqlite", &format!("{url}?mode=rwc")).await;
    assert_migrated(&url).await;
}

#[tokio::test]
async fn a_postgres_store_of_the_oldest_schema_migrates_to_the_newest() {
    let url = common::fresh_pg_database().await;
    oldest_store("postgres", &url).await;
    assert_migrated(&url).await;
}
