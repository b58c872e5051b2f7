//! `kill -9` of a scheduler in the middle of a webhook's deliveries, then a restart: every
//! user is delivered at least once, a user sent twice carries the same idempotency key both
//! times (the receiver takes it once), and the restarted try does not send again what the
//! delivery ledger says was delivered.

#[path = "../core/tests/common/mod.rs"]
mod common;

#[path = "../examples/reports_service/service.rs"]
mod reports;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use sluice_core::store::RunFilter;

const USERS: u64 = 200;

fn sluice(home: &Path, db: &str, reports: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
    cmd.env("SLUICE_HOME", home.join("home"))
        .env("SLUICE_DAGS_FOLDER", home.join("dags"))
        .env_remove("SLUICE_DATABASE_URL")
        .env_remove("SLUICE_LOG")
        .env("SLUICE_CONN_SOURCE", db)
        .env("SLUICE_CONN_REPORTS", reports)
        // A killed scheduler's runs are taken over once their lease lapses.
        .env("SLUICE_RUN_LEASE", "1s");
    cmd
}

fn start_scheduler(home: &Path, db: &str, reports: &str) -> Child {
    sluice(home, db, reports)
        .arg("scheduler")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

async fn stats(reports: &str) -> Value {
    reqwest::get(format!("{reports}/stats"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduler_killed_mid_delivery_loses_no_user_and_doubles_none() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("dags")).unwrap();
    std::fs::write(
        dir.path().join("dags/notify.yaml"),
        format!(
            "dag_id: notify
default_args: {{retries: 2, retry_delay: 100ms}}
tasks:
  - {{id: users, operator: postgres_extract, config: {{conn: source, sql: 'SELECT generate_series(1, {USERS})::bigint AS user_id'}}}}
  - id: invalidate
    operator: http_webhook
    depends_on: users
    config:
      conn: reports
      path: /invalidate
      for_each: {{task: users, column: user_id}}
      json: {{user_id: '{{{{ item }}}}'}}
      headers: {{Idempotency-Key: '{{{{ run_id }}}}:{{{{ attempt }}}}:{{{{ item }}}}'}}
      concurrency: 4
"
        ),
    )
    .unwrap();
    let db = common::fresh_pg_database().await;
    // A slow receiver: 200 users at 4 in flight take about 2.5 s.
    let service = reports::Reports::new(reports::Behaviour {
        delay: Duration::from_millis(50),
        ..Default::default()
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let router = service.clone().router();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });

    let mut scheduler = start_scheduler(dir.path(), &db, &url);
    let out = sluice(dir.path(), &db, &url)
        .args(["dags", "trigger", "notify", "--logical-date", "2026-01-01"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Kill it once a good part of the users was delivered.
    let deadline = Instant::now() + Duration::from_secs(60);
    while stats(&url).await["invalidations"].as_u64().unwrap() < USERS / 3 {
        assert!(Instant::now() < deadline, "deliveries never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    scheduler.kill().unwrap(); // SIGKILL: in-flight requests and unwritten outcomes are lost
    scheduler.wait().unwrap();
    let at_kill = stats(&url).await["requests"].as_u64().unwrap();
    assert!(at_kill < USERS, "killed before the end: {at_kill}");

    let mut restarted = start_scheduler(dir.path(), &db, &url);
    let store = common::sqlite_store(&dir.path().join("home")).await;
    let run = loop {
        let runs = store.list_runs(&RunFilter::default()).await.unwrap();
        if let Some(run) = runs.into_iter().find(|r| r.state.is_finished()) {
            break run;
        }
        assert!(
            Instant::now() < deadline,
            "the run never finished after the restart"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    restarted.kill().unwrap();
    restarted.wait().unwrap();
    assert_eq!(run.state.as_str(), "success");

    let stats = stats(&url).await;
    let per_user = stats["per_user"].as_object().unwrap();
    assert_eq!(
        per_user.len() as u64,
        USERS,
        "every user delivered: {stats}"
    );
    assert!(
        per_user.values().all(|n| n == 1),
        "a user sent again carried the same key, so the receiver took it once: {stats}"
    );
    let requests = stats["requests"].as_u64().unwrap();
    assert!(
        requests < USERS + USERS / 3,
        "the restarted try sent only what the ledger did not have: {requests} requests for {USERS} users ({at_kill} before the kill): {stats}"
    );
    let ledger = sluice(dir.path(), &db, &url)
        .args([
            "tasks",
            "deliveries",
            "notify",
            &run.run_id,
            "invalidate",
            "--json",
        ])
        .output()
        .unwrap();
    let ledger: Value = serde_json::from_slice(&ledger.stdout).unwrap();
    assert_eq!(ledger["delivered"], USERS, "{ledger}");
}
