//! Orchestration benchmarks through the library, on a durable store (SQLite file or
//! PostgreSQL): scripts/bench runs this and turns its JSON lines into the table.
//!
//! ```sh
//! cargo run --release --example bench -- --store sqlite --repeat 5
//! ```
//! Scenarios (noop tasks, so only orchestration is measured):
//! - `chain50`: a chain of 50 tasks; wall time of the run and task-to-task latency (a task's
//!   `running` after its upstream's `success`, from the store's timestamps);
//! - `fanout200`: 1 → 200 → 1;
//! - `diamonds`: 10 runs of a 10-task diamond started together;
//! - `throughput`: N runs × 100 tasks through the scheduler (task instances per second, peak RSS).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};
use clap::Parser;
use serde_json::json;
use sluice_core::dag::{parse_dag, Dag};
use sluice_core::executor::Executor;
use sluice_core::runs::start_run;
use sluice_core::scheduler::{Scheduler, SchedulerOptions, SystemClock};
use sluice_core::settings::Settings;
use sluice_core::state::{RunState, TaskState};
use sluice_core::store::{self, RunFilter, RunType, Store};
use sluice_operator_api::Connections;
use sqlx::Connection;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
struct Args {
    /// `sqlite` (a file under a temp dir) or `postgres` (a fresh database on SLUICE_TEST_PG_URL's server).
    #[arg(long, default_value = "sqlite")]
    store: String,
    /// Samples per scenario.
    #[arg(long, default_value_t = 5)]
    repeat: usize,
    /// Runs of 100 tasks per throughput sample (`--repeat` samples, into one growing store).
    #[arg(long, default_value_t = 1000)]
    throughput_runs: usize,
    /// Only these scenarios (comma-separated: chain50, fanout200, diamonds10x10, throughput).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
}

impl Args {
    fn wants(&self, scenario: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|s| s == scenario)
    }
}

fn dag(text: &str) -> Arc<Dag> {
    Arc::new(
        parse_dag(Path::new("bench.yaml"), text, &sluice_operators::registry())
            .expect("bench DAGs are valid"),
    )
}

fn chain(n: usize) -> Arc<Dag> {
    let mut text =
        String::from("dag_id: chain\nmax_active_tasks: 64\ntasks:\n  - {id: t0, operator: noop}\n");
    for i in 1..n {
        text.push_str(&format!(
            "  - {{id: t{i}, operator: noop, depends_on: t{}}}\n",
            i - 1
        ));
    }
    dag(&text)
}

fn fanout(n: usize) -> Arc<Dag> {
    let mut text = String::from(
        "dag_id: fanout\nmax_active_tasks: 1000\ntasks:\n  - {id: start, operator: noop}\n",
    );
    let mut mids = Vec::new();
    for i in 0..n {
        text.push_str(&format!(
            "  - {{id: m{i}, operator: noop, depends_on: start}}\n"
        ));
        mids.push(format!("m{i}"));
    }
    text.push_str(&format!(
        "  - {{id: end, operator: noop, depends_on: [{}]}}\n",
        mids.join(", ")
    ));
    dag(&text)
}

fn diamond() -> Arc<Dag> {
    let mut text = String::from(
        "dag_id: diamond\nmax_active_tasks: 1000\ntasks:\n  - {id: a, operator: noop}\n",
    );
    for i in 0..8 {
        text.push_str(&format!(
            "  - {{id: m{i}, operator: noop, depends_on: a}}\n"
        ));
    }
    text.push_str("  - {id: z, operator: noop, depends_on: [m0, m1, m2, m3, m4, m5, m6, m7]}\n");
    dag(&text)
}

fn layered(tasks: usize, width: usize) -> String {
    let mut text =
        String::from("dag_id: wide\nmax_active_runs: 64\nmax_active_tasks: 10000\ntasks:\n");
    for i in 0..tasks {
        if i < width {
            text.push_str(&format!("  - {{id: t{i}, operator: noop}}\n"));
        } else {
            text.push_str(&format!(
                "  - {{id: t{i}, operator: noop, depends_on: t{}}}\n",
                i - width
            ));
        }
    }
    text
}

async fn open_store(kind: &str, dir: &Path) -> Arc<dyn Store> {
    match kind {
        "postgres" => {
            let admin = std::env::var("SLUICE_TEST_PG_URL")
                .expect("SLUICE_TEST_PG_URL for --store postgres");
            let name = format!(
                "sluice_bench_{}_{}",
                std::process::id(),
                Utc::now().timestamp_micros()
            );
            let mut conn = sqlx::PgConnection::connect(&admin)
                .await
                .expect("PostgreSQL");
            sqlx::query(&format!("CREATE DATABASE {name}"))
                .execute(&mut conn)
                .await
                .expect("create database");
            let mut url = url::Url::parse(&admin).unwrap();
            url.set_path(&format!("/{name}"));
            store::open(url.as_str()).await.expect("open store")
        }
        _ => store::open(&format!("sqlite://{}", dir.join("sluice.db").display()))
            .await
            .expect("open store"),
    }
}

/// Runs one run of `dag` to its end; returns wall milliseconds and the run id.
async fn one_run(
    store: &Arc<dyn Store>,
    executor: &Executor,
    dag: &Arc<Dag>,
    day: i64,
) -> (f64, String) {
    let t = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap() + chrono::Duration::days(day);
    let (run, _) = start_run(
        store,
        dag,
        dag.interval_for(t),
        RunType::Manual,
        json!({}),
        Utc::now(),
    )
    .await
    .unwrap();
    let started = Instant::now();
    let done = executor
        .run(dag.clone(), &run.run_id, CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(done.state, RunState::Success);
    (started.elapsed().as_secs_f64() * 1000.0, run.run_id)
}

/// Upstream success → downstream running, in milliseconds, for every edge of a run.
async fn edge_latencies(store: &Arc<dyn Store>, dag: &Dag, run_id: &str) -> Vec<f64> {
    let history = store.history(&dag.dag_id, run_id).await.unwrap();
    let at = |task: &str, to: TaskState| {
        history
            .iter()
            .find(|h| h.task_id == task && h.to == to)
            .map(|h| h.at)
    };
    let mut out = Vec::new();
    for task in &dag.tasks {
        for &u in &task.upstream {
            if let (Some(done), Some(start)) = (
                at(&dag.tasks[u].id, TaskState::Success),
                at(&task.id, TaskState::Running),
            ) {
                out.push((start - done).num_microseconds().unwrap_or(0) as f64 / 1000.0);
            }
        }
    }
    out
}

fn peak_rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn emit(scenario: &str, store: &str, metric: &str, samples: &[f64]) {
    println!(
        "{}",
        json!({"scenario": scenario, "store": store, "metric": metric, "samples": samples})
    );
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(&args.store, dir.path()).await;
    let settings = Settings {
        parallelism: 64,
        ..Settings::local(dir.path(), dir.path())
    };
    let executor = Executor::new(store.clone(), &settings, Arc::new(Connections::default()));

    if args.wants("chain50") {
        chain50(&args, &store, &executor).await;
    }
    if args.wants("fanout200") {
        fanout200(&args, &store, &executor).await;
    }
    if args.wants("diamonds10x10") {
        diamonds(&args, &store, &executor).await;
    }
    if args.wants("throughput") {
        throughput(&args, &store, &executor).await;
    }
}

async fn chain50(args: &Args, store: &Arc<dyn Store>, executor: &Executor) {
    let s = args.store.as_str();
    let (store, executor) = (store.clone(), executor.clone());
    let chain = chain(50);
    let mut walls = Vec::new();
    let mut latencies = Vec::new();
    for i in 0..args.repeat + 1 {
        let (ms, run_id) = one_run(&store, &executor, &chain, i as i64).await;
        if i > 0 {
            // the first run warms the store's connections and caches
            walls.push(ms);
            latencies.extend(edge_latencies(&store, &chain, &run_id).await);
        }
    }
    emit("chain50", s, "wall_ms", &walls);
    emit("chain50", s, "edge_latency_ms", &latencies);
}

async fn fanout200(args: &Args, store: &Arc<dyn Store>, executor: &Executor) {
    let s = args.store.as_str();
    let (store, executor) = (store.clone(), executor.clone());

    let fan = fanout(200);
    let mut walls = Vec::new();
    for i in 0..args.repeat + 1 {
        let (ms, _) = one_run(&store, &executor, &fan, 100 + i as i64).await;
        if i > 0 {
            walls.push(ms);
        }
    }
    emit("fanout200", s, "wall_ms", &walls);
}

async fn diamonds(args: &Args, store: &Arc<dyn Store>, executor: &Executor) {
    let s = args.store.as_str();

    let diamond = diamond();
    let mut walls = Vec::new();
    for rep in 0..args.repeat {
        let started = Instant::now();
        let runs = (0..10).map(|k| {
            let (store, executor, diamond) = (store.clone(), executor.clone(), diamond.clone());
            async move { one_run(&store, &executor, &diamond, 1000 + (rep * 10 + k) as i64).await }
        });
        futures::future::join_all(runs).await;
        walls.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    emit("diamonds10x10", s, "wall_ms", &walls);
}

async fn throughput(args: &Args, store: &Arc<dyn Store>, executor: &Executor) {
    let s = args.store.as_str();
    let (store, executor) = (store.clone(), executor.clone());

    // Throughput: queued runs of 100 tasks drained by the scheduler.
    let dags = tempfile::tempdir().unwrap();
    let text = layered(100, 10);
    std::fs::write(dags.path().join("wide.yaml"), &text).unwrap();
    let wide = dag(&text);
    let base = Utc.with_ymd_and_hms(2030, 1, 1, 0, 0, 0).unwrap();
    // Each sample drains its own batch of runs into the same (growing) store.
    let mut rates = Vec::new();
    for sample in 0..args.repeat {
        for i in 0..args.throughput_runs {
            let t = base + chrono::Duration::minutes((sample * args.throughput_runs + i) as i64);
            start_run(
                &store,
                &wide,
                wide.interval_for(t),
                RunType::Manual,
                json!({}),
                Utc::now(),
            )
            .await
            .unwrap();
        }
        let shutdown = CancellationToken::new();
        let scheduler = Scheduler::new(
            store.clone(),
            executor.clone(),
            Arc::new(SystemClock),
            dags.path().to_path_buf(),
            sluice_operators::registry(),
            SchedulerOptions::default(),
        );
        let started = Instant::now();
        let stop = shutdown.clone();
        let handle = tokio::spawn(async move { scheduler.run(stop).await });
        loop {
            let active = |state| {
                let store = store.clone();
                async move {
                    store
                        .count_runs(&RunFilter {
                            dag_id: Some("wide".into()),
                            state: Some(state),
                            ..Default::default()
                        })
                        .await
                        .unwrap()
                }
            };
            if active(RunState::Queued).await + active(RunState::Running).await == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let secs = started.elapsed().as_secs_f64();
        shutdown.cancel();
        let _ = handle.await;
        rates.push((args.throughput_runs * 100) as f64 / secs);
    }
    emit("throughput", s, "task_instances_per_s", &rates);
    emit(
        "throughput",
        s,
        "peak_rss_mb",
        &[peak_rss_kb() as f64 / 1024.0],
    );
}
