//! Artifacts and try logs on shared storage, against a real S3-compatible server (moto's,
//! started by `scripts/services`): what one machine writes, another reads.

mod common;

use std::sync::Arc;

use common::Bucket;
use sluice_core::dag::parse_dag;
use sluice_core::executor::Executor;
use sluice_core::operator_api::Connections;
use sluice_core::retention::{self, Places};
use sluice_core::settings::Settings;
use sluice_core::state::RunState;
use sluice_core::storage::{logs, SharedArtifactStore, Storage};
use sluice_core::store::{RunType, TaskKey};
use sluice_operator_api::{ArtifactKey, ArtifactRef, ArtifactStore};
use tokio_util::sync::CancellationToken;

const MIB: usize = 1024 * 1024;

async fn storage(bucket: &Bucket) -> Arc<Storage> {
    Arc::new(
        Storage::from_url_with(&bucket.url("sluice"), bucket.aws_env())
            .unwrap()
            // The smallest part S3 takes, so a test file of a few MiB goes in several parts.
            .with_part_size(5 * MIB),
    )
}

fn key(try_number: u32) -> ArtifactKey {
    ArtifactKey {
        dag_id: "stats".into(),
        run_id: "manual__2026-12-01T00:00:00+00:00".into(),
        task_id: "extract".into(),
        try_number,
        extension: "arrow".into(),
    }
}

/// Writes `bytes` as try `try_number`'s artifact through `store`, as an operator does.
async fn commit(store: &SharedArtifactStore, try_number: u32, bytes: &[u8]) -> ArtifactRef {
    let staged = store.staging_path(&key(try_number)).await.unwrap();
    tokio::fs::write(&staged, bytes).await.unwrap();
    store
        .commit(&key(try_number), &staged, Some(1))
        .await
        .unwrap()
}

fn table(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

#[tokio::test]
async fn a_table_written_on_one_machine_is_read_on_another() {
    let bucket = Bucket::fresh().await;
    let storage = storage(&bucket).await;
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let machine_a = SharedArtifactStore::new(storage.clone(), a.path());
    let machine_b = SharedArtifactStore::new(storage.clone(), b.path());

    // 12 MiB: a multipart upload of three parts.
    let first = table(1, 12 * MIB);
    let committed = commit(&machine_a, 1, &first).await;
    assert_eq!(
        bucket.keys("sluice/artifacts/").await,
        ["sluice/artifacts/stats/manual__2026-12-01T00:00:00+00:00/extract.try1.arrow"]
    );
    let path = machine_b.local_path(&committed).await.unwrap();
    assert!(path.starts_with(b.path()), "read from B's own cache");
    assert!(std::fs::read(&path).unwrap() == first, "B reads A's bytes");

    // Try 2 replaces try 1: its object goes, and B reads the new table.
    let second = table(2, 3 * MIB);
    let newer = commit(&machine_a, 2, &second).await;
    assert_eq!(
        bucket.keys("sluice/artifacts/").await,
        ["sluice/artifacts/stats/manual__2026-12-01T00:00:00+00:00/extract.try2.arrow"]
    );
    assert!(std::fs::read(machine_b.local_path(&newer).await.unwrap()).unwrap() == second);
    // The removed object is not served from B's cache.
    let gone = machine_b
        .local_path(&committed)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        gone.contains("s3://") && gone.contains("extract.try1.arrow"),
        "the error names the object: {gone}"
    );

    // An object written again under the same name (a run deleted and created anew) is
    // downloaded again: B's cached copy follows the object, never outlives it.
    let rewritten = table(3, 3 * MIB);
    commit(&machine_a, 2, &rewritten).await;
    assert!(std::fs::read(machine_b.local_path(&newer).await.unwrap()).unwrap() == rewritten);
    // No download leaves a partial file behind.
    let left: Vec<_> = walk(b.path())
        .into_iter()
        .filter(|p| p.ends_with(".partial"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test]
async fn an_upload_that_fails_fails_the_commit_and_leaves_no_object() {
    let bucket = Bucket::fresh().await;
    let dir = tempfile::tempdir().unwrap();
    // A bucket that does not exist: every write is refused.
    let missing = Bucket {
        name: format!("{}-missing", bucket.name),
        endpoint: bucket.endpoint.clone(),
    };
    let store = SharedArtifactStore::new(storage(&missing).await, dir.path());
    let staged = store.staging_path(&key(1)).await.unwrap();
    tokio::fs::write(&staged, table(1, 1024)).await.unwrap();
    let error = store
        .commit(&key(1), &staged, Some(1))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains(&format!(
            "s3://{}-missing/sluice/artifacts/stats/",
            bucket.name
        )),
        "{error}"
    );
    assert!(!error.contains("sluice-test-secret"), "{error}");
    assert!(
        !dir.path()
            .join("stats/manual__2026-12-01T00:00:00+00:00/extract.try1.arrow")
            .exists(),
        "nothing is committed, not even locally"
    );
}

#[tokio::test]
async fn a_try_s_log_is_served_on_another_machine_and_cleaned_with_its_run() {
    let bucket = Bucket::fresh().await;
    let storage = storage(&bucket).await;
    // Machine A runs the try; machine B (a web server) has none of A's files.
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let store = common::sqlite_store(a.path()).await;
    let dags = a.path().join("dags");
    std::fs::create_dir_all(&dags).unwrap();
    let yaml = "dag_id: stats\ntasks:\n  - id: extract\n    operator: shell\n    config:\n      command: 'for i in $(seq 1 2000); do echo \"line $i of the try\"; done'\n";
    let path = dags.join("stats.yaml");
    std::fs::write(&path, yaml).unwrap();
    let dag = Arc::new(parse_dag(&path, yaml, &sluice_operators::basic()).unwrap());
    let now = chrono::Utc::now();
    let new = sluice_core::runs::new_run(
        &dag,
        dag.default_interval(now),
        RunType::Manual,
        serde_json::json!({}),
        now,
    );
    let run_id = store.create_run(&new).await.unwrap().run_id;
    let settings_a = Settings::local(a.path(), &dags);
    let executor = Executor::new(store.clone(), &settings_a, Arc::new(Connections::default()))
        .with_shared_storage(Some(storage.clone()));
    let run = executor
        .run(dag.clone(), &run_id, CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(run.state, RunState::Success);

    let key = TaskKey {
        dag_id: "stats".into(),
        run_id: run_id.clone(),
        task_id: "extract".into(),
    };
    let here = Places {
        shared: Some(storage.clone()),
        ..Places::local(&settings_a)
    };
    let elsewhere = Places {
        logs: b.path().join("logs"),
        artifacts: b.path().join("artifacts"),
        shared: Some(storage.clone()),
    };
    // The same chunks on the machine that ran the try and on another: the tail, and pages
    // from an offset.
    for (offset, limit) in [(None, 1000), (Some(0), 4096), (Some(5000), 700)] {
        let local = logs::read_range(&here, &key, 1, offset, limit)
            .await
            .unwrap();
        let remote = logs::read_range(&elsewhere, &key, 1, offset, limit)
            .await
            .unwrap();
        assert_eq!(local, remote, "offset {offset:?}, limit {limit}");
        assert!(remote.content.ends_with('\n'), "whole lines: {remote:?}");
    }
    let tail = logs::read_range(&elsewhere, &key, 1, None, 1000)
        .await
        .unwrap();
    assert!(tail.content.contains("line 2000 of the try\n"), "{tail:?}");
    assert!(
        tail.content.contains("try succeeded"),
        "the try's last line: {tail:?}"
    );
    let size = std::fs::metadata(sluice_core::trylog::try_log_path(&here.logs, &key, 1))
        .unwrap()
        .len();
    assert_eq!(
        tail.size, size,
        "the whole log was shipped at the try's end"
    );
    assert!(
        !b.path().join("logs").exists(),
        "nothing was copied to B's disk"
    );
    // A try that shipped no log reads as the note, as on the machine that ran it.
    let none = logs::read_range(&elsewhere, &key, 2, None, 1000)
        .await
        .unwrap();
    assert!(none.content.contains("wrote no log lines"), "{none:?}");

    // Cleaning the run from B removes its objects along with its rows.
    let cutoff = chrono::Utc::now() + chrono::Duration::seconds(1);
    let plan = retention::plan(store.as_ref(), &elsewhere, cutoff, None)
        .await
        .unwrap();
    assert_eq!(plan.runs.len(), 1);
    assert_eq!(plan.runs[0].log_bytes, size, "the shipped log");
    let report = retention::clean(store.as_ref(), &elsewhere, &plan)
        .await
        .unwrap();
    assert_eq!(report.runs.len(), 1);
    assert!(bucket.keys("sluice/").await.is_empty());
}

fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path.display().to_string());
        }
    }
    out
}
