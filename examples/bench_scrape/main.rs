//! How long a Prometheus scrape of `/metrics` takes on a PostgreSQL store holding
//! `--task-instances` finished task instances (1M by default) and a few active runs, next to
//! the baseline of the same run: counting every task instance by state, as `/metrics` did
//! before it read only the active ones through the state indexes.
//!
//! SLUICE_TEST_PG_URL=postgres://… cargo run --release --example bench_scrape
//! Prints JSON lines: {"what": "scrape"|"full_count", "p50_ms", "p95_ms", "task_instances"}.

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use sluice_core::web::{router, serve, watch_changes, AppState, DagCatalog};
use sqlx::Connection;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
struct Args {
    /// Finished task instances in the store (10 per run).
    #[arg(long, default_value_t = 1_000_000)]
    task_instances: u64,
    /// Scrapes (and baseline counts) timed.
    #[arg(long, default_value_t = 200)]
    scrapes: usize,
}

fn percentile(samples: &mut [f64], q: f64) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1]
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let admin = std::env::var("SLUICE_TEST_PG_URL").expect("SLUICE_TEST_PG_URL");
    let name = format!("sluice_bench_scrape_{}", std::process::id());
    let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap();
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .unwrap();
    let mut url = url::Url::parse(&admin).unwrap();
    url.set_path(&format!("/{name}"));
    let store = sluice_core::store::open(url.as_str()).await.unwrap();
    let mut db = sqlx::PgConnection::connect(url.as_str()).await.unwrap();
    let runs = args.task_instances / 10;
    let started = Instant::now();
    // Finished history: runs of 10 tasks each, all succeeded; then 5 active runs.
    sqlx::query(
        "INSERT INTO dag_run (dag_id, run_id, logical_date, data_interval_start, data_interval_end, run_type, state, dag_hash, created_at, started_at, ended_at)
         SELECT 'bench', 'r' || g, g * 900000000, g * 900000000, (g + 1) * 900000000, 'scheduled', 'success', 'h', 0, 0, 1
         FROM generate_series(1, $1::bigint) g",
    )
    .bind(runs as i64)
    .execute(&mut db)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO task_instance (dag_id, run_id, task_id, operator, state, try_number, max_tries, started_at, ended_at, updated_at)
         SELECT 'bench', 'r' || g, 't' || t, 'noop', 'success', 1, 1, 0, 1000, 0
         FROM generate_series(1, $1::bigint) g, generate_series(1, 10) t",
    )
    .bind(runs as i64)
    .execute(&mut db)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO dag_run (dag_id, run_id, logical_date, data_interval_start, data_interval_end, run_type, state, dag_hash, created_at, started_at)
         SELECT 'live', 'a' || g, g, g, g + 1, 'manual', 'running', 'h', 0, 0 FROM generate_series(1, 5) g",
    )
    .execute(&mut db)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO task_instance (dag_id, run_id, task_id, operator, state, try_number, max_tries, updated_at)
         SELECT 'live', 'a' || g, 't' || t, 'noop', CASE WHEN t < 3 THEN 'running' ELSE 'pending' END, 0, 1, 0
         FROM generate_series(1, 5) g, generate_series(1, 10) t",
    )
    .execute(&mut db)
    .await
    .unwrap();
    sqlx::query("ANALYZE").execute(&mut db).await.unwrap();
    eprintln!(
        "seeded {} task instances in {:.1}s",
        runs * 10 + 50,
        started.elapsed().as_secs_f64()
    );

    let dir = tempfile::tempdir().unwrap();
    let state = AppState {
        cache: Default::default(),
        guards: Default::default(),
        changes: watch_changes(store.clone(), Duration::from_millis(500)),
        store,
        dags: Arc::new(DagCatalog::new(
            dir.path().to_path_buf(),
            sluice_operators::registry(),
        )),
        tokens: Default::default(),
        places: sluice_core::retention::Places {
            logs: dir.path().join("logs"),
            artifacts: dir.path().join("artifacts"),
            shared: None,
        },
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let stop = CancellationToken::new();
    tokio::spawn(serve(listener, router(state), stop.clone()));
    let client = reqwest::Client::new();
    let mut scrape = Vec::with_capacity(args.scrapes);
    for _ in 0..args.scrapes + 5 {
        let t = Instant::now();
        let text = client
            .get(format!("{base}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            text.contains("sluice_task_instances_active{state=\"running\"} 10"),
            "{text}"
        );
        scrape.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    scrape.drain(..5); // warm-up
    let mut full = Vec::with_capacity(args.scrapes);
    for _ in 0..args.scrapes.min(50) {
        let t = Instant::now();
        sqlx::query("SELECT state, COUNT(*) FROM task_instance GROUP BY state")
            .fetch_all(&mut db)
            .await
            .unwrap();
        full.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let total = runs * 10 + 50;
    for (what, samples) in [("scrape", &mut scrape), ("full_count", &mut full)] {
        println!(
            "{}",
            serde_json::json!({
                "what": what,
                "p50_ms": percentile(samples, 0.5),
                "p95_ms": percentile(samples, 0.95),
                "task_instances": total,
            })
        );
    }
    stop.cancel();
    drop(db);
    if std::env::var("BENCH_KEEP_DB").is_ok() {
        eprintln!("kept database {name}");
        return;
    }
    let _ = sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .execute(&mut conn)
        .await;
}
