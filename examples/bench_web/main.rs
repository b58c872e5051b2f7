//! The web server under load: 500 DAGs × 25 runs (× 5 tasks) in a SQLite store, served by
//! `router()` on a local port to 100 concurrent clients that load what the UI loads: the
//! DAG list (`/api/v1/dags?limit=1000`) and a DAG's grid (`/api/v1/dags/{id}/grid?limit=25`),
//! first all on one DAG, then spread over every DAG (mostly cache misses). Each page is
//! measured twice: with plain clients (no compression, no revalidation: the previous
//! figures), and with clients that behave like the browsers running the status page
//! (`Accept-Encoding: gzip`, and `If-None-Match` with the ETag of the answer they hold).
//!
//! ```sh
//! cargo run --release --example bench_web -- --requests 2000
//! ```
//! Prints JSON lines (p50/p95/p99 per page, requests/s, peak RSS) for scripts/bench.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};
use clap::Parser;
use serde_json::json;
use sluice_core::runs::new_run;
use sluice_core::store::{self, RunType};
use sluice_core::web::{router, serve, watch_changes, AppState, DagCatalog};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
struct Args {
    /// DAG files.
    #[arg(long, default_value_t = 500)]
    dags: usize,
    /// Runs per DAG.
    #[arg(long, default_value_t = 25)]
    runs: usize,
    /// Concurrent clients.
    #[arg(long, default_value_t = 100)]
    clients: usize,
    /// Requests per page kind in total.
    #[arg(long, default_value_t = 2000)]
    requests: usize,
}

/// The path a client asks for on its i-th request.
type PathOf = Box<dyn Fn(usize) -> String + Send + Sync>;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .unwrap_or(0.0)
        / 1024.0
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let dir = tempfile::tempdir().unwrap();
    let dags_dir = dir.path().join("dags");
    std::fs::create_dir_all(&dags_dir).unwrap();
    let store = store::open(&format!(
        "sqlite://{}",
        dir.path().join("sluice.db").display()
    ))
    .await
    .unwrap();
    let registry = sluice_operators::registry();
    let started = Instant::now();
    for d in 0..args.dags {
        let text = format!(
            "dag_id: dag_{d:04}\nschedule: '*/15 * * * *'\ntasks:\n  - {{id: extract, operator: noop}}\n  - {{id: a, operator: noop, depends_on: extract}}\n  - {{id: b, operator: noop, depends_on: extract}}\n  - {{id: c, operator: noop, depends_on: extract}}\n  - {{id: load, operator: noop, depends_on: [a, b, c]}}\n"
        );
        let path = dags_dir.join(format!("dag_{d:04}.yaml"));
        std::fs::write(&path, &text).unwrap();
        let dag = sluice_core::dag::parse_dag(&path, &text, &registry).unwrap();
        for r in 0..args.runs {
            let t = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()
                + chrono::Duration::minutes(15 * r as i64);
            store
                .create_run(&new_run(
                    &dag,
                    dag.interval_for(t),
                    RunType::Scheduled,
                    json!({}),
                    Utc::now(),
                ))
                .await
                .unwrap();
        }
    }
    eprintln!(
        "seeded {} DAGs × {} runs in {:.1}s",
        args.dags,
        args.runs,
        started.elapsed().as_secs_f64()
    );
    let cache: Arc<sluice_core::web::ReadCache> = Default::default();
    let state = AppState {
        cache: cache.clone(),
        guards: Default::default(),
        changes: watch_changes(store.clone(), Duration::from_millis(500)),
        store,
        dags: Arc::new(DagCatalog::new(dags_dir, registry)),
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
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.clients)
        .build()
        .unwrap();
    // warm up: the DAG catalog parses the folder on first use
    let list = client
        .get(format!("{base}/api/v1/dags?limit=1000"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let grid = client
        .get(format!("{base}/api/v1/dags/dag_0000/grid?limit=25"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    println!(
        "{}",
        json!({"dag_list_kb": list.len() as f64 / 1024.0, "grid_kb": grid.len() as f64 / 1024.0})
    );

    let pages = [
        (
            "dag_list",
            Box::new(|_: usize| "/api/v1/dags?limit=1000".to_string()) as PathOf,
        ),
        // everyone watching one DAG (the usual case), then every DAG's grid once per few requests (the worst)
        (
            "dag_grid_one_dag",
            Box::new(|_: usize| "/api/v1/dags/dag_0000/grid?limit=25".to_string()),
        ),
        (
            "dag_grid_all_dags",
            Box::new(|i: usize| format!("/api/v1/dags/dag_{:04}/grid?limit=25", i % 500)),
        ),
    ];
    let pages: Vec<(&str, Arc<PathOf>)> = pages
        .into_iter()
        .map(|(page, path_of)| (page, Arc::new(path_of)))
        .collect();
    for (browser, (page, path_of)) in [false, true]
        .into_iter()
        .flat_map(|b| pages.iter().map(move |p| (b, p)))
    {
        let page = if browser {
            format!("{page}_browser")
        } else {
            page.to_string()
        };
        // Every phase starts as the first did: nothing cached but the DAG list, which the
        // warm-up loaded (a browser phase must not find what the plain phase computed).
        cache.clear();
        client
            .get(format!("{base}/api/v1/dags?limit=1000"))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        let per_client = args.requests / args.clients;
        let began = Instant::now();
        let workers = (0..args.clients).map(|c| {
            let (client, base, path_of) = (client.clone(), base.clone(), path_of.clone());
            tokio::spawn(async move {
                let mut times = Vec::with_capacity(per_client);
                // What this "browser" holds: the ETag of each page it has loaded.
                let mut held: std::collections::HashMap<String, String> = Default::default();
                for i in 0..per_client {
                    let path = path_of(c * per_client + i);
                    let t = Instant::now();
                    let mut request = client.get(format!("{base}{path}"));
                    if browser {
                        request = request.header("accept-encoding", "gzip, deflate, br");
                        if let Some(etag) = held.get(&path) {
                            request = request.header("if-none-match", etag);
                        }
                    }
                    let response = request.send().await.unwrap();
                    assert!(
                        response.status().is_success() || response.status() == 304,
                        "{}",
                        response.status()
                    );
                    if let Some(etag) = response.headers().get("etag") {
                        held.insert(path, etag.to_str().unwrap().to_string());
                    }
                    response.bytes().await.unwrap();
                    times.push(t.elapsed().as_secs_f64() * 1000.0);
                }
                times
            })
        });
        let mut times: Vec<f64> = Vec::new();
        for w in futures::future::join_all(workers).await {
            times.extend(w.unwrap());
        }
        let secs = began.elapsed().as_secs_f64();
        times.sort_by(|a, b| a.partial_cmp(b).unwrap());
        println!(
            "{}",
            json!({"page": page, "requests": times.len(), "clients": args.clients, "p50_ms": percentile(&times, 0.5), "p95_ms": percentile(&times, 0.95), "p99_ms": percentile(&times, 0.99), "requests_per_s": times.len() as f64 / secs})
        );
    }
    println!(
        "{}",
        json!({"peak_rss_mb_server_and_clients": peak_rss_mb()})
    );
    stop.cancel();
}
