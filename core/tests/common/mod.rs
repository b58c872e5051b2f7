//! Helpers shared by the integration tests: fresh metadata stores on real servers.
#![allow(dead_code)]

use std::sync::Arc;

use sluice_core::store::{self, Store};
use sqlx::Connection;

/// The PostgreSQL server for tests (`scripts/services up` prints it; `scripts/test` sets it).
pub fn pg_admin_url() -> String {
    std::env::var("SLUICE_TEST_PG_URL").expect(
        "SLUICE_TEST_PG_URL is not set: run the suite with scripts/test, or `eval \"$(scripts/services up)\"` first",
    )
}

/// True when the test process that named a `sluice_t_<pid>_…` database or bucket is gone.
fn left_by_a_finished_process(name: &str) -> bool {
    let pid = name
        .trim_start_matches("sluice_t_")
        .split('_')
        .next()
        .and_then(|p| p.parse::<u32>().ok());
    pid.is_some_and(|pid| {
        pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists()
    })
}

/// Whether this process already removed what finished test processes left (once per process).
fn first_in_process(flag: &std::sync::atomic::AtomicBool) -> bool {
    !flag.swap(true, std::sync::atomic::Ordering::SeqCst)
}

/// A new, empty PostgreSQL database on the test server; returns its URL. The first call of a
/// test process also drops the databases of test processes that have ended: tests do not
/// drop their own (a failed one's is kept to look at), and a dev server would fill its disk.
pub async fn fresh_pg_database() -> String {
    static SWEPT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    let admin = pg_admin_url();
    let name = format!("sluice_t_{}_{}", std::process::id(), rand_suffix());
    let mut conn = sqlx::PgConnection::connect(&admin)
        .await
        .expect("connect to the test PostgreSQL");
    if first_in_process(&SWEPT) {
        let left: Vec<String> =
            sqlx::query_scalar("SELECT datname FROM pg_database WHERE datname LIKE 'sluice_t_%'")
                .fetch_all(&mut conn)
                .await
                .unwrap_or_default();
        for old in left.iter().filter(|n| left_by_a_finished_process(n)) {
            // Another process may sweep the same one at once: whoever loses gets an error.
            let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {old} WITH (FORCE)"))
                .execute(&mut conn)
                .await;
        }
    }
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .expect("create test database");
    let mut url = url::Url::parse(&admin).unwrap();
    url.set_path(&format!("/{name}"));
    url.to_string()
}

fn rand_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{nanos}_{}", N.fetch_add(1, Ordering::Relaxed))
}

/// A fresh SQLite store in `dir`.
pub async fn sqlite_store(dir: &std::path::Path) -> Arc<dyn Store> {
    store::open(&format!("sqlite://{}", dir.join("sluice.db").display()))
        .await
        .expect("open SQLite store")
}

/// A fresh PostgreSQL store in its own database.
pub async fn postgres_store() -> Arc<dyn Store> {
    store::open(&fresh_pg_database().await)
        .await
        .expect("open PostgreSQL store")
}

/// The ClickHouse HTTP endpoint for tests (`http://host:port`) from `SLUICE_TEST_CLICKHOUSE_URL`.
pub fn clickhouse_http() -> String {
    let url = std::env::var("SLUICE_TEST_CLICKHOUSE_URL").expect(
        "SLUICE_TEST_CLICKHOUSE_URL is not set: run the suite with scripts/test, or `eval \"$(scripts/services up)\"` first",
    );
    let parsed = url::Url::parse(&url).expect("SLUICE_TEST_CLICKHOUSE_URL is a URL");
    format!(
        "http://{}:{}",
        parsed.host_str().unwrap(),
        parsed.port().unwrap_or(8123)
    )
}

/// Runs a ClickHouse statement over HTTP and returns the answer (panics on an error status).
pub async fn clickhouse(sql: &str) -> String {
    let response = reqwest::Client::new()
        .post(clickhouse_http())
        .body(sql.to_string())
        .send()
        .await
        .expect("ClickHouse answers");
    let status = response.status();
    let text = response.text().await.unwrap();
    assert!(status.is_success(), "ClickHouse: {sql}: {status}: {text}");
    text
}

/// A new, empty ClickHouse database; returns its name. The first call of a test process
/// also drops the databases of test processes that have ended (as [`fresh_pg_database`]).
pub async fn fresh_clickhouse_database() -> String {
    static SWEPT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if first_in_process(&SWEPT) {
        let left =
            clickhouse("SELECT name FROM system.databases WHERE name LIKE 'sluice\\_t\\_%'").await;
        for old in left.lines().filter(|n| left_by_a_finished_process(n)) {
            let _ = reqwest::Client::new()
                .post(clickhouse_http())
                .body(format!("DROP DATABASE IF EXISTS {old}"))
                .send()
                .await;
        }
    }
    let name = format!("sluice_t_{}_{}", std::process::id(), rand_suffix());
    clickhouse(&format!("CREATE DATABASE {name}")).await;
    name
}

/// A new, empty bucket on the test's S3-compatible server (moto, started by
/// `scripts/services`), with the settings a sluice process needs to use it.
pub struct Bucket {
    /// The bucket's name.
    pub name: String,
    /// The server (`http://127.0.0.1:port`).
    pub endpoint: String,
}

impl Bucket {
    /// Creates a bucket of its own.
    pub async fn fresh() -> Self {
        let endpoint = std::env::var("SLUICE_TEST_S3_ENDPOINT").expect(
            "SLUICE_TEST_S3_ENDPOINT is not set: run the suite with scripts/test, or `eval \"$(scripts/services up)\"` first",
        );
        let name = format!("sluice-t-{}-{}", std::process::id(), rand_suffix()).replace('_', "-");
        let response = reqwest::Client::new()
            .put(format!("{endpoint}/{name}"))
            .send()
            .await
            .expect("the S3 server answers");
        assert!(
            response.status().is_success(),
            "create bucket {name}: {}",
            response.status()
        );
        Self { name, endpoint }
    }

    /// `SLUICE_STORAGE_URL` for a prefix of this bucket.
    pub fn url(&self, prefix: &str) -> String {
        format!("s3://{}/{prefix}", self.name)
    }

    /// The `AWS_*` variables that point the S3 client at the test server.
    pub fn aws_env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT_URL", self.endpoint.as_str()),
            ("AWS_ALLOW_HTTP", "true"),
            ("AWS_ACCESS_KEY_ID", "sluice-test"),
            ("AWS_SECRET_ACCESS_KEY", "sluice-test-secret"),
            ("AWS_REGION", "us-east-1"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    /// The bucket's object keys under `prefix`, sorted (S3's ListObjectsV2 over HTTP).
    pub async fn keys(&self, prefix: &str) -> Vec<String> {
        let text = reqwest::Client::new()
            .get(format!(
                "{}/{}?list-type=2&prefix={prefix}",
                self.endpoint, self.name
            ))
            .send()
            .await
            .expect("the S3 server answers")
            .text()
            .await
            .unwrap();
        let mut keys: Vec<String> = text
            .split("<Key>")
            .skip(1)
            .filter_map(|rest| rest.split("</Key>").next())
            .map(str::to_string)
            .collect();
        keys.sort();
        keys
    }
}

/// The web server over `store` and the DAGs in `dags` on an ephemeral loopback port, as
/// `sluice webserver` builds it; returns its base URL and the token that stops it.
pub async fn serve_web(
    dags: &std::path::Path,
    logs: &std::path::Path,
    store: Arc<dyn Store>,
    registry: sluice_operator_api::Registry,
    tokens: sluice_core::web::auth::Tokens,
) -> (String, tokio_util::sync::CancellationToken) {
    use sluice_core::web::{router, serve, AppState, DagCatalog};
    let state = AppState {
        cache: Default::default(),
        changes: sluice_core::web::watch_changes(
            store.clone(),
            std::time::Duration::from_millis(50),
        ),
        store,
        dags: Arc::new(DagCatalog::new(dags.to_path_buf(), registry)),
        tokens: Arc::new(tokens),
        places: sluice_core::retention::Places {
            logs: logs.to_path_buf(),
            artifacts: logs.with_file_name("artifacts"),
            shared: None,
        },
        guards: Default::default(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(serve(listener, router(state), stop.clone()));
    (base, stop)
}
