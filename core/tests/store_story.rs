//! One story of the metadata store, told against both backends: SQLite (embedded default)
//! and PostgreSQL (from `scripts/services`).

mod common;

use std::sync::Arc;

use chrono::{DateTime, Duration, TimeZone, Utc};
use sha2::{Digest, Sha256};
use sluice_core::operator_api::DeliveryOutcome;
use sluice_core::schedule::DataInterval;
use sluice_core::state::{RunState, TaskState};
use sluice_core::store::{
    Backend, DagVersion, Fence, NewRun, NewTaskInstance, RunFilter, RunRef, RunType, Store,
    StoreError, TaskChange, TaskKey,
};

fn at(minute: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 23, 16, minute, 0).unwrap()
}

fn new_run(dag: &str, start: DateTime<Utc>, tasks: &[&str]) -> NewRun {
    NewRun {
        dag_id: dag.into(),
        run_id: RunType::Manual.run_id(start),
        interval: DataInterval {
            start,
            end: start + Duration::minutes(15),
        },
        run_type: RunType::Manual,
        conf: serde_json::json!({"region": "eu", "quote": "it's \"ok\""}),
        version: version(dag, "SELECT 1"),
        tasks: tasks
            .iter()
            .map(|t| NewTaskInstance {
                task_id: t.to_string(),
                operator: "noop".into(),
                max_tries: 3,
                pool: None,
            })
            .collect(),
        at: start,
        backfill_max_active_runs: Some(4),
        note: Some("loaded after the CRM fix".into()),
    }
}

/// A DAG version whose one SQL file holds `sql`.
fn version(dag: &str, sql: &str) -> DagVersion {
    let source = serde_json::json!({"dag": format!("dag_id: {dag}\n"), "files": {"q.sql": sql}});
    DagVersion {
        dag_id: dag.into(),
        hash: format!("{:x}", Sha256::digest(source.to_string()))[..16].to_string(),
        file: format!("dags/{dag}.yaml"),
        source,
    }
}

fn key(dag: &str, run: &str, task: &str) -> TaskKey {
    TaskKey {
        dag_id: dag.into(),
        run_id: run.into(),
        task_id: task.into(),
    }
}

async fn step(
    store: &dyn Store,
    key: &TaskKey,
    from: TaskState,
    to: TaskState,
    when: DateTime<Utc>,
) -> sluice_core::store::TaskInstance {
    checked(
        store,
        &TaskChange::new(key.clone(), from.to(to).unwrap(), when),
    )
    .await
}

/// Applies `change` through the store and checks that `TaskInstance::apply` (what the
/// executor uses to keep its view without reading rows back) predicts the stored row.
async fn checked(store: &dyn Store, change: &TaskChange) -> sluice_core::store::TaskInstance {
    let key = &change.key;
    let instance = |tis: Vec<sluice_core::store::TaskInstance>| {
        tis.into_iter()
            .find(|ti| ti.task_id == key.task_id)
            .unwrap()
    };
    let mut predicted = instance(
        store
            .task_instances(&key.dag_id, &key.run_id)
            .await
            .unwrap(),
    );
    predicted.apply(change);
    let stored = store.transition(change).await.unwrap();
    assert_eq!(
        stored, predicted,
        "TaskInstance::apply disagrees with the store"
    );
    stored
}

async fn story(store: Arc<dyn Store>) {
    let store = store.as_ref();
    // A run is created with all its task instances pending.
    let created = store
        .create_run(&new_run("etl", at(0), &["extract", "load"]))
        .await
        .unwrap();
    let run_id = created.run_id.clone();
    assert_eq!(created.state, RunState::Queued);
    assert_eq!(created.backfill_max_active_runs, Some(4));
    assert_eq!(created.logical_date, at(0));
    assert_eq!(created.data_interval_end, at(15));
    assert_eq!(created.conf["quote"], "it's \"ok\"");
    assert_eq!(created.note.as_deref(), Some("loaded after the CRM fix"));
    let tis = store.task_instances("etl", &run_id).await.unwrap();
    assert_eq!(
        tis.iter()
            .map(|t| (t.task_id.as_str(), t.state, t.try_number, t.max_tries))
            .collect::<Vec<_>>(),
        [
            ("extract", TaskState::Pending, 0, 3),
            ("load", TaskState::Pending, 0, 3)
        ]
    );

    // The same logical date cannot get a second run, whatever its id.
    let mut again = new_run("etl", at(0), &["extract"]);
    again.run_id = "other_id".into();
    assert!(matches!(
        store.create_run(&again).await,
        Err(StoreError::RunExists { .. })
    ));
    // Another DAG may use the same date.
    store
        .create_run(&new_run("other", at(0), &["t"]))
        .await
        .unwrap();

    // A try: queued, running (try 1), up for retry with its error, queued, running (try 2), success.
    let k = key("etl", &run_id, "extract");
    step(store, &k, TaskState::Pending, TaskState::Queued, at(1)).await;
    let running = step(store, &k, TaskState::Queued, TaskState::Running, at(2)).await;
    assert_eq!((running.try_number, running.started_at), (1, Some(at(2))));
    let mut fail = TaskChange::new(
        k.clone(),
        TaskState::Running.to(TaskState::UpForRetry).unwrap(),
        at(3),
    );
    fail.reason = Some("connection refused".into());
    fail.next_retry_at = Some(at(4));
    let retry = checked(store, &fail).await;
    assert_eq!(retry.error.as_deref(), Some("connection refused"));
    assert_eq!(
        (retry.next_retry_at, retry.ended_at),
        (Some(at(4)), Some(at(3)))
    );
    step(store, &k, TaskState::UpForRetry, TaskState::Queued, at(4)).await;
    let second = step(store, &k, TaskState::Queued, TaskState::Running, at(5)).await;
    assert_eq!(
        (second.try_number, second.error.clone(), second.ended_at),
        (2, None, None)
    );
    let mut ok = TaskChange::new(
        k.clone(),
        TaskState::Running.to(TaskState::Success).unwrap(),
        at(6),
    );
    ok.output = Some(serde_json::from_str(r#"{"values":{"rows":42}}"#).unwrap());
    let done = checked(store, &ok).await;
    assert_eq!(done.state, TaskState::Success);
    assert_eq!(done.output.unwrap().values["rows"], 42);

    // Compare-and-set: a change from a state the row is not in is refused and changes nothing.
    let stale = TaskChange::new(
        k.clone(),
        TaskState::Queued.to(TaskState::Running).unwrap(),
        at(7),
    );
    match store.transition(&stale).await {
        Err(StoreError::Conflict {
            expected, found, ..
        }) => assert_eq!((expected.as_str(), found.as_str()), ("queued", "success")),
        other => panic!("expected a conflict, got {other:?}"),
    }
    let missing = TaskChange::new(
        key("etl", &run_id, "ghost"),
        TaskState::Pending.to(TaskState::Queued).unwrap(),
        at(7),
    );
    assert!(matches!(
        store.transition(&missing).await,
        Err(StoreError::NotFound(_))
    ));

    // The history has every change, in order, with try numbers and reasons.
    let history = store.history("etl", &run_id).await.unwrap();
    let seen: Vec<(u32, TaskState, TaskState)> = history
        .iter()
        .map(|h| (h.try_number, h.from, h.to))
        .collect();
    assert_eq!(
        seen,
        [
            (0, TaskState::Pending, TaskState::Queued),
            (1, TaskState::Queued, TaskState::Running),
            (1, TaskState::Running, TaskState::UpForRetry),
            (1, TaskState::UpForRetry, TaskState::Queued),
            (2, TaskState::Queued, TaskState::Running),
            (2, TaskState::Running, TaskState::Success),
        ]
    );
    assert_eq!(history[2].reason.as_deref(), Some("connection refused"));
    assert_eq!(history[5].at, at(6));

    // Only one of many concurrent claims of the same try wins.
    let l = key("etl", &run_id, "load");
    step(store, &l, TaskState::Pending, TaskState::Queued, at(8)).await;
    let claims = (0..8).map(|_| {
        let change = TaskChange::new(
            l.clone(),
            TaskState::Queued.to(TaskState::Running).unwrap(),
            at(9),
        );
        async move { store.transition(&change).await }
    });
    let results = futures::future::join_all(claims).await;
    assert_eq!(
        results.iter().filter(|r| r.is_ok()).count(),
        1,
        "{results:?}"
    );
    assert!(results
        .iter()
        .filter(|r| r.is_err())
        .all(|r| matches!(r, Err(StoreError::Conflict { .. }))));

    // Runs move through their own state machine, compare-and-set as well.
    let started = store
        .set_run_state("etl", &run_id, RunState::Queued, RunState::Running, at(1))
        .await
        .unwrap();
    assert_eq!(started.started_at, Some(at(1)));
    assert!(matches!(
        store
            .set_run_state("etl", &run_id, RunState::Queued, RunState::Running, at(1))
            .await,
        Err(StoreError::Conflict { .. })
    ));
    assert!(matches!(
        store
            .set_run_state("etl", &run_id, RunState::Success, RunState::Running, at(1))
            .await,
        Err(StoreError::IllegalRunTransition(_))
    ));
    let finished = store
        .set_run_state("etl", &run_id, RunState::Running, RunState::Success, at(10))
        .await
        .unwrap();
    assert_eq!(
        (finished.state, finished.ended_at),
        (RunState::Success, Some(at(10)))
    );

    // A new attempt: a finished task is cleared (output dropped, more tries allowed), the run re-queued.
    let mut clear = TaskChange::new(
        k.clone(),
        TaskState::Success.to(TaskState::Pending).unwrap(),
        at(11),
    );
    clear.max_tries = Some(5);
    let cleared = checked(store, &clear).await;
    assert_eq!(
        (cleared.state, cleared.try_number, cleared.max_tries),
        (TaskState::Pending, 2, 5)
    );
    assert_eq!(
        (
            cleared.output.clone(),
            cleared.error.clone(),
            cleared.ended_at
        ),
        (None, None, None)
    );
    let conf = serde_json::json!({"region": "us"});
    // The run's version is stored with it; the new attempt runs a newer one.
    let first = version("etl", "SELECT 1");
    assert_eq!(created.dag_hash, first.hash);
    assert_eq!(
        store.dag_version("etl", &first.hash).await.unwrap(),
        Some(first.clone())
    );
    let second = version("etl", "SELECT 22");
    assert!(store
        .dag_version("etl", &second.hash)
        .await
        .unwrap()
        .is_none());
    let requeued = store
        .new_attempt(
            "etl",
            &run_id,
            RunState::Success,
            Some(&conf),
            Some(&second),
            at(11),
        )
        .await
        .unwrap();
    assert_eq!(requeued.dag_hash, second.hash, "the new attempt's version");
    assert_eq!(
        store.dag_version("etl", &second.hash).await.unwrap(),
        Some(second.clone())
    );
    assert_eq!(
        (
            requeued.state,
            requeued.attempt,
            requeued.ended_at,
            requeued.started_at,
            &requeued.conf
        ),
        (RunState::Queued, 2, None, None, &conf),
        "a new attempt: queued, numbered, its own conf and times"
    );
    let conflict = store
        .new_attempt("etl", &run_id, RunState::Success, None, None, at(11))
        .await
        .unwrap_err();
    assert!(
        matches!(conflict, StoreError::Conflict { .. }),
        "{conflict}"
    );
    assert_eq!(
        store
            .run_for_date("etl", at(0))
            .await
            .unwrap()
            .unwrap()
            .run_id,
        run_id
    );
    assert!(store.run_for_date("etl", at(59)).await.unwrap().is_none());
    let finished = store
        .set_run_state("etl", &run_id, RunState::Queued, RunState::Running, at(12))
        .await
        .unwrap();
    let finished = store
        .set_run_state(
            "etl",
            &finished.run_id,
            RunState::Running,
            RunState::Success,
            at(13),
        )
        .await
        .unwrap();
    assert_eq!(finished.ended_at, Some(at(13)));
    let attempts = store.attempts("etl", &run_id).await.unwrap();
    let summary: Vec<_> = attempts
        .iter()
        .map(|a| {
            (
                a.attempt,
                a.state,
                a.started_at,
                a.ended_at,
                a.conf["region"].clone(),
                a.dag_hash.clone().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (
                1,
                RunState::Success,
                Some(at(1)),
                attempts[0].ended_at,
                serde_json::json!("eu"),
                first.hash.clone(),
            ),
            (
                2,
                RunState::Success,
                Some(at(12)),
                Some(at(13)),
                serde_json::json!("us"),
                second.hash.clone(),
            ),
        ],
        "each attempt keeps its own record"
    );
    assert_eq!(attempts[1].queued_at, at(11));

    // The delivery ledger: outcomes per attempt; a later outcome replaces the state and adds
    // to the request count; each attempt has its own.
    let outcome = |item: &str, delivered: bool, attempts: u32| DeliveryOutcome {
        item: item.into(),
        delivered,
        attempts,
        detail: (!delivered).then(|| "HTTP 503".to_string()),
    };
    store
        .record_deliveries(
            &k,
            2,
            &[
                outcome("7", true, 1),
                outcome("42", false, 6),
                outcome("9223372036854775807", true, 2),
            ],
            at(12),
        )
        .await
        .unwrap();
    store
        .record_deliveries(&k, 2, &[outcome("42", true, 3)], at(13))
        .await
        .unwrap();
    let delivered = store.delivered_items(&k, 2).await.unwrap();
    assert_eq!(delivered.len(), 3);
    assert!(
        store.delivered_items(&k, 1).await.unwrap().is_empty(),
        "per attempt"
    );
    let ledger = store.deliveries(&k, 2).await.unwrap();
    let user_42 = ledger.iter().find(|d| d.item == "42").unwrap();
    assert_eq!(
        (
            user_42.delivered,
            user_42.attempts,
            user_42.detail.clone(),
            user_42.updated_at
        ),
        (true, 9, None, at(13))
    );

    // Listing: newest logical date first, filtered by DAG and state, limited.
    for minute in [15, 30, 45] {
        store
            .create_run(&new_run("etl", at(minute), &["extract"]))
            .await
            .unwrap();
    }
    let all = store
        .list_runs(&RunFilter {
            dag_id: Some("etl".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        all.iter().map(|r| r.logical_date).collect::<Vec<_>>(),
        [at(45), at(30), at(15), at(0)]
    );
    let two = store
        .list_runs(&RunFilter {
            dag_id: Some("etl".into()),
            limit: 2,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(two.len(), 2);
    let succeeded = store
        .list_runs(&RunFilter {
            state: Some(RunState::Success),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        succeeded
            .iter()
            .map(|r| r.run_id.as_str())
            .collect::<Vec<_>>(),
        [run_id.as_str()]
    );
    let by_id = store
        .list_runs(&RunFilter {
            run_id: Some(run_id.clone()),
            ..Default::default()
        })
        .await
        .unwrap();
    // run ids are unique per DAG only: the same id under two DAGs lists both
    assert_eq!(
        by_id.iter().map(|r| r.dag_id.as_str()).collect::<Vec<_>>(),
        ["etl", "other"]
    );
    assert!(store.run("etl", "nope").await.unwrap().is_none());

    // A run of many tasks is created in one go.
    let many: Vec<String> = (0..1200).map(|i| format!("t{i:04}")).collect();
    let refs: Vec<&str> = many.iter().map(String::as_str).collect();
    let big = store
        .create_run(&new_run("wide", at(0), &refs))
        .await
        .unwrap();
    assert_eq!(
        store
            .task_instances("wide", &big.run_id)
            .await
            .unwrap()
            .len(),
        1200
    );

    // Retention: only finished runs are listed and deleted, with everything recorded of them.
    let far = at(0) + Duration::days(3650);
    let finished = store.runs_ended_before(far, Some("etl")).await.unwrap();
    assert_eq!(
        finished
            .iter()
            .map(|r| r.run_id.as_str())
            .collect::<Vec<_>>(),
        [run_id.as_str()]
    );
    assert!(store
        .runs_ended_before(at(0), Some("etl"))
        .await
        .unwrap()
        .is_empty());
    let etl = RunRef {
        dag_id: "etl".into(),
        run_id: run_id.clone(),
    };
    let unfinished = RunRef {
        dag_id: "wide".into(),
        run_id: big.run_id.clone(),
    };
    let deleted = store.delete_runs(&[etl.clone(), unfinished]).await.unwrap();
    assert_eq!(deleted, [etl], "the queued run stays");
    assert!(store.run("etl", &run_id).await.unwrap().is_none());
    assert!(store
        .task_instances("etl", &run_id)
        .await
        .unwrap()
        .is_empty());
    assert!(store.history("etl", &run_id).await.unwrap().is_empty());
    assert!(store.attempts("etl", &run_id).await.unwrap().is_empty());
    assert!(store.deliveries(&k, 2).await.unwrap().is_empty());
    // The version only the deleted run used goes with it; one other runs use stays.
    let hash = version("etl", "SELECT 22").hash;
    assert!(store.dag_version("etl", &hash).await.unwrap().is_none());
    assert!(store
        .dag_version("wide", &version("wide", "SELECT 1").hash)
        .await
        .unwrap()
        .is_some());
    assert_eq!(
        store
            .task_instances("wide", &big.run_id)
            .await
            .unwrap()
            .len(),
        1200
    );
}

/// Fencing: a driver whose lease lapsed and whose run another driver took over has every
/// write refused, task and run alike; the new holder's writes apply.
async fn fencing(store: Arc<dyn Store>) {
    let run = store
        .create_run(&new_run("fenced", at(0), &["t"]))
        .await
        .unwrap();
    let k = key("fenced", &run.run_id, "t");
    let fenced = |from: TaskState, to: TaskState, driver: &str, try_number: u32| {
        let mut change = TaskChange::new(k.clone(), from.to(to).unwrap(), at(2));
        change.fence = Some(Fence {
            driver: driver.into(),
            try_number,
        });
        change
    };
    assert!(store
        .claim_run("fenced", &run.run_id, "A", at(1), at(0))
        .await
        .unwrap());
    store
        .set_run_state_as(
            "A",
            "fenced",
            &run.run_id,
            RunState::Queued,
            RunState::Running,
            at(0),
        )
        .await
        .unwrap();
    store
        .transitions(&[fenced(TaskState::Pending, TaskState::Queued, "A", 0)])
        .await
        .unwrap();
    store
        .transitions(&[fenced(TaskState::Queued, TaskState::Running, "A", 0)])
        .await
        .unwrap();
    // A stalls; its lease (until minute 1) lapses and B takes the run over, then retries t.
    assert!(
        !store
            .claim_run("fenced", &run.run_id, "B", at(5), at(0))
            .await
            .unwrap(),
        "a live lease is never taken"
    );
    assert!(store
        .claim_run("fenced", &run.run_id, "B", at(5), at(2))
        .await
        .unwrap());
    store
        .transitions(&[fenced(TaskState::Running, TaskState::UpForRetry, "B", 1)])
        .await
        .unwrap();
    store
        .transitions(&[fenced(TaskState::UpForRetry, TaskState::Queued, "B", 1)])
        .await
        .unwrap();
    store
        .transitions(&[fenced(TaskState::Queued, TaskState::Running, "B", 1)])
        .await
        .unwrap();
    // A wakes up and reports its (old) try's success: t is `running` again, but B's try.
    let refused = store
        .transitions(&[fenced(TaskState::Running, TaskState::Success, "A", 1)])
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, StoreError::Fenced { holder, .. } if holder == "B"),
        "{refused}"
    );
    let ti = store
        .task_instances("fenced", &run.run_id)
        .await
        .unwrap()
        .remove(0);
    assert_eq!(
        (ti.state, ti.try_number),
        (TaskState::Running, 2),
        "B's try is untouched"
    );
    let refused = store
        .set_run_state_as(
            "A",
            "fenced",
            &run.run_id,
            RunState::Running,
            RunState::Success,
            at(3),
        )
        .await
        .unwrap_err();
    assert!(matches!(refused, StoreError::Fenced { .. }), "{refused}");
    // B finishes the run.
    store
        .transitions(&[fenced(TaskState::Running, TaskState::Success, "B", 2)])
        .await
        .unwrap();
    let done = store
        .set_run_state_as(
            "B",
            "fenced",
            &run.run_id,
            RunState::Running,
            RunState::Success,
            at(4),
        )
        .await
        .unwrap();
    assert_eq!(done.state, RunState::Success);
}

/// Two schedulers start two queued runs of a DAG with `max_active_runs: 1` at the same
/// moment, through two connections, again and again: each time exactly one starts and the
/// other stays queued until the first has ended.
async fn max_active_runs_across_drivers(store: Arc<dyn Store>, other: Arc<dyn Store>) {
    // The DAG is known already (as once it was paused or unpaused).
    store.set_paused("limited", false, at(0)).await.unwrap();
    let until = at(59) + Duration::hours(1);
    for round in 0..30i64 {
        let start = at(0) + Duration::days(round);
        let a = store
            .create_run(&new_run("limited", start, &["t"]))
            .await
            .unwrap();
        let b = store
            .create_run(&new_run("limited", start + Duration::hours(1), &["t"]))
            .await
            .unwrap();
        for (s, run, driver) in [(&store, &a, "s1"), (&other, &b, "s2")] {
            assert!(s
                .claim_run("limited", &run.run_id, driver, until, at(1))
                .await
                .unwrap());
        }
        let (first, second) = tokio::join!(
            store.start_run("s1", "limited", &a.run_id, 1, at(2)),
            other.start_run("s2", "limited", &b.run_id, 1, at(2)),
        );
        let (first, second) = (first.unwrap(), second.unwrap());
        assert_eq!(
            first.is_some() as u8 + second.is_some() as u8,
            1,
            "round {round}: exactly one run starts"
        );
        let (winner, waiting) = if first.is_some() {
            (("s1", &a.run_id), ("s2", &b.run_id, &other))
        } else {
            (("s2", &b.run_id), ("s1", &a.run_id, &store))
        };
        store
            .set_run_state_as(
                winner.0,
                "limited",
                winner.1,
                RunState::Running,
                RunState::Success,
                at(3),
            )
            .await
            .unwrap();
        let started = waiting
            .2
            .start_run(waiting.0, "limited", waiting.1, 1, at(4))
            .await
            .unwrap();
        assert_eq!(started.map(|r| r.state), Some(RunState::Running));
        store
            .set_run_state_as(
                waiting.0,
                "limited",
                waiting.1,
                RunState::Running,
                RunState::Success,
                at(5),
            )
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn max_active_runs_holds_across_drivers_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let store = common::sqlite_store(dir.path()).await;
    let other = common::sqlite_store(dir.path()).await;
    max_active_runs_across_drivers(store, other).await;
}

#[tokio::test]
async fn max_active_runs_holds_across_drivers_on_postgres() {
    let url = common::fresh_pg_database().await;
    let store = sluice_core::store::open(&url).await.unwrap();
    let other = sluice_core::store::open(&url).await.unwrap();
    max_active_runs_across_drivers(store, other).await;
}

#[tokio::test]
async fn stale_drivers_are_fenced_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    fencing(common::sqlite_store(dir.path()).await).await;
}

#[tokio::test]
async fn stale_drivers_are_fenced_on_postgres() {
    fencing(common::postgres_store().await).await;
}

#[tokio::test]
async fn store_story_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let store = common::sqlite_store(dir.path()).await;
    assert_eq!(store.backend(), Backend::Sqlite);
    story(store).await;
    // Durable: a new process (a new store on the same file) sees everything.
    let reopened = common::sqlite_store(dir.path()).await;
    let runs = reopened
        .list_runs(&RunFilter {
            dag_id: Some("etl".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(runs.len(), 3, "four runs, one removed by retention");
    assert!(
        dir.path().join("sluice.db-wal").exists(),
        "SQLite runs in WAL mode"
    );
}

#[tokio::test]
async fn store_story_on_postgres() {
    let store = common::postgres_store().await;
    assert_eq!(store.backend(), Backend::Postgres);
    story(store).await;
}

#[tokio::test]
async fn store_errors_never_show_passwords() {
    let err = sluice_core::store::open("postgres://etl:hunter2@127.0.0.1:1/nowhere")
        .await
        .unwrap_err();
    let shown = format!("{err} {err:?}");
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(shown.contains("127.0.0.1:1"), "{shown}");
}

#[tokio::test]
async fn a_malformed_task_output_is_reported_not_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let store = common::sqlite_store(dir.path()).await;
    let start = Utc.with_ymd_and_hms(2026, 11, 1, 0, 0, 0).unwrap();
    let run = store
        .create_run(&new_run("d", start, &["a"]))
        .await
        .unwrap();
    let pool = sqlx::SqlitePool::connect(&format!(
        "sqlite://{}",
        dir.path().join("sluice.db").display()
    ))
    .await
    .unwrap();
    sqlx::query("UPDATE task_instance SET output = '{\"values\": [1, 2]}'")
        .execute(&pool)
        .await
        .unwrap();
    let error = store
        .task_instances("d", &run.run_id)
        .await
        .expect_err("an output that is not a TaskOutput");
    assert!(
        matches!(error, StoreError::Corrupt { what: "output", .. }),
        "{error}"
    );
    assert!(error.to_string().contains("(output)"), "{error}");
}
