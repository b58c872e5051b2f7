//! Criterion micro-benchmarks of sluice's hot paths, to catch regressions that the end-to-end
//! `examples/bench` scenarios are too noisy to show.
//!
//! - `dag_parse/prosthesis_stats`, `dag_parse/layered_100`: [`parse_dag`] of the reference DAG
//!   and of a generated 10 × 10-chain DAG of noop tasks (the DAG folder is re-parsed on change).
//! - `readiness/decide_fanout200`: [`decide`] on a 1 → 200 → 1 DAG whose start task succeeded,
//!   so 200 tasks become ready in one pass (the executor's per-wakeup cost).
//! - `readiness/all_success`: [`readiness`] for one trigger rule over a 200-upstream summary.
//! - `store_transition/sqlite`, `store_transition/postgres`: one [`Store::transitions`] round
//!   trip of a single change (what the executor writes, through the store's group-commit writer), averaged over the legal cycle pending → queued → running → success → pending, spread
//!   over the 202 task instances of one run. PostgreSQL only when `SLUICE_TEST_PG_URL` is set
//!   (a fresh database is created on that server and dropped afterwards).
//!
//! ```sh
//! cargo bench --bench hot_paths
//! eval "$(scripts/services env)" && cargo bench --bench hot_paths   # with the PostgreSQL group
//! ```

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion};
use serde_json::json;
use sluice_core::dag::{parse_dag, Dag};
use sluice_core::executor::decide::{decide, TaskView};
use sluice_core::runs::start_run;
use sluice_core::state::{readiness, Readiness, TaskState, TriggerRule, UpstreamSummary};
use sluice_core::store::{self, RunType, Store, TaskChange, TaskKey};
use sqlx::Connection;
use std::hint::black_box;
use tokio::runtime::Runtime;

fn parse(name: &str, text: &str) -> Dag {
    parse_dag(Path::new(name), text, &sluice_operators::registry()).expect("bench DAGs are valid")
}

/// `chains` independent chains of `length` noop tasks (the shape of `examples/bench`'s `layered`).
fn layered(chains: usize, length: usize) -> String {
    let mut text = String::from("dag_id: layered\nmax_active_tasks: 10000\ntasks:\n");
    for i in 0..chains * length {
        if i < chains {
            text.push_str(&format!("  - {{id: t{i}, operator: noop}}\n"));
        } else {
            let up = i - chains;
            text.push_str(&format!(
                "  - {{id: t{i}, operator: noop, depends_on: t{up}}}\n"
            ));
        }
    }
    text
}

/// 1 → `width` → 1.
fn fanout(width: usize) -> Dag {
    let mut text = String::from("dag_id: fanout\ntasks:\n  - {id: start, operator: noop}\n");
    let mids: Vec<String> = (0..width).map(|i| format!("m{i}")).collect();
    for mid in &mids {
        text.push_str(&format!(
            "  - {{id: {mid}, operator: noop, depends_on: start}}\n"
        ));
    }
    text.push_str(&format!(
        "  - {{id: end, operator: noop, depends_on: [{}]}}\n",
        mids.join(", ")
    ));
    parse("fanout.yaml", &text)
}

fn dag_parse(c: &mut Criterion) {
    // The real path, so the DAG's `sql/…` references sit where they do in production.
    let reference = Path::new(env!("CARGO_MANIFEST_DIR")).join("dags/prosthesis_stats.yaml");
    let reference_text = std::fs::read_to_string(&reference).expect("reference DAG");
    let layered_text = layered(10, 10);
    let registry = sluice_operators::registry();

    let mut group = c.benchmark_group("dag_parse");
    group.bench_function("prosthesis_stats", |b| {
        b.iter(|| parse_dag(black_box(&reference), black_box(&reference_text), &registry))
    });
    let layered_path = Path::new("layered.yaml");
    group.bench_function("layered_100", |b| {
        b.iter(|| parse_dag(layered_path, black_box(&layered_text), &registry))
    });
    group.finish();
}

fn readiness_eval(c: &mut Criterion) {
    let dag = fanout(200);
    let mut views = vec![
        TaskView {
            state: TaskState::Pending,
            next_retry_at: None,
        };
        dag.tasks.len()
    ];
    views[dag.task_index("start").expect("start task")].state = TaskState::Success;
    let now = Utc::now();
    // Guard against benchmarking a pass that decides nothing.
    assert_eq!(decide(&dag, &views, now).len(), 200);

    let mut group = c.benchmark_group("readiness");
    group.bench_function("decide_fanout200", |b| {
        b.iter(|| decide(&dag, black_box(&views), now))
    });
    let summary = UpstreamSummary::of(std::iter::repeat_n(TaskState::Success, 200));
    assert_eq!(readiness(TriggerRule::AllSuccess, summary), Readiness::Run);
    group.bench_function("all_success", |b| {
        b.iter(|| readiness(black_box(TriggerRule::AllSuccess), black_box(summary)))
    });
    group.finish();
}

fn store_transition(c: &mut Criterion) {
    // The executor's flavour of runtime, so the round trip includes the same wakeups.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    // Stores are dropped outside `block_on`; the pool may spawn its cleanup then.
    let _context = rt.enter();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut group = c.benchmark_group("store_transition");

    let url = format!("sqlite://{}", dir.path().join("sluice.db").display());
    let sqlite = rt.block_on(store::open(&url)).expect("open SQLite store");
    transition_cycle(&mut group, &rt, "sqlite", &sqlite);

    match std::env::var("SLUICE_TEST_PG_URL") {
        Ok(admin) => {
            let (postgres, name) = rt.block_on(fresh_postgres(&admin));
            transition_cycle(&mut group, &rt, "postgres", &postgres);
            drop(postgres);
            rt.block_on(drop_database(&admin, &name));
        }
        Err(_) => println!(
            "store_transition/postgres skipped: set SLUICE_TEST_PG_URL (eval \"$(scripts/services env)\")"
        ),
    }
    group.finish();
}

/// Benchmarks `store.transition` on a new run's task instances. Iteration `k` moves task
/// `k % n` one step along pending → queued → running → success → pending, so every task
/// advances in lockstep and each change is legal whatever number of iterations criterion asks
/// for.
fn transition_cycle(
    group: &mut BenchmarkGroup<'_, WallTime>,
    rt: &Runtime,
    name: &str,
    store: &Arc<dyn Store>,
) {
    use TaskState::*;
    let dag = fanout(200);
    let now = Utc::now();
    let (run, _) = rt
        .block_on(start_run(
            store,
            &dag,
            dag.interval_for(now),
            RunType::Manual,
            json!({}),
            now,
        ))
        .expect("start run");
    let changes: Vec<Vec<TaskChange>> = [Pending, Queued, Running, Success, Pending]
        .windows(2)
        .map(|step| {
            let transition = step[0].to(step[1]).expect("the cycle is legal");
            let changes = dag.tasks.iter().map(|task| {
                let key = TaskKey {
                    dag_id: run.dag_id.clone(),
                    run_id: run.run_id.clone(),
                    task_id: task.id.clone(),
                };
                TaskChange::new(key, transition, now)
            });
            changes.collect()
        })
        .collect();
    let (changes, store, n) = (&changes, store.as_ref(), dag.tasks.len());
    // Outside the routine: criterion calls it once per sample and the cycle must carry on.
    let mut k = 0usize;
    group.bench_function(name, move |b| {
        b.to_async(rt).iter(|| {
            let change = &changes[(k / n) % changes.len()][k % n];
            k += 1;
            async move {
                store
                    .transitions(std::slice::from_ref(change))
                    .await
                    .expect("legal step")
            }
        })
    });
}

/// A new, empty database on `admin`'s server, opened (and migrated) as a store.
async fn fresh_postgres(admin: &str) -> (Arc<dyn Store>, String) {
    let name = format!(
        "sluice_hot_paths_{}_{}",
        std::process::id(),
        Utc::now().timestamp_micros()
    );
    let mut conn = sqlx::PgConnection::connect(admin)
        .await
        .expect("connect to SLUICE_TEST_PG_URL");
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .expect("create database");
    let mut url = url::Url::parse(admin).expect("SLUICE_TEST_PG_URL is a URL");
    url.set_path(&format!("/{name}"));
    let store = store::open(url.as_str())
        .await
        .expect("open PostgreSQL store");
    (store, name)
}

/// Drops the bench database; `FORCE` because the store's pool may still hold connections.
async fn drop_database(admin: &str, name: &str) {
    let dropped = async {
        let mut conn = sqlx::PgConnection::connect(admin).await?;
        sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .execute(&mut conn)
            .await
    };
    if let Err(e) = dropped.await {
        eprintln!("could not drop bench database {name}: {e}");
    }
}

criterion_group! {
    name = benches;
    // Short runs: the whole file should finish well under a minute on a 2-core machine.
    config = Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = dag_parse, readiness_eval, store_transition
}
criterion_main!(benches);
