//! TLS against the real servers of `scripts/services`, which serve a certificate for
//! `localhost` and `127.0.0.1` signed by a dev CA (`SLUICE_TEST_TLS_CA`): the metadata store
//! and `postgres_extract` with `sslmode=verify-full`, ClickHouse over HTTPS and webhooks (the
//! operator's and a notification's) to an HTTPS receiver, each trusting the CA through
//! `sslrootcert`; and each refusing a server whose certificate an unrelated CA
//! (`SLUICE_TEST_TLS_WRONG_CA`) does not vouch for, with an error a user can act on.

#[path = "../core/tests/common/mod.rs"]
mod common;

use std::io::BufRead;
use std::process::{Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::Connection;

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the suite with scripts/test, or `eval \"$(scripts/services up)\"` first")
    })
}

fn ca() -> String {
    env("SLUICE_TEST_TLS_CA")
}

fn wrong_ca() -> String {
    env("SLUICE_TEST_TLS_WRONG_CA")
}

/// `url` (a database on the test PostgreSQL) addressed by the name its certificate carries,
/// with a password (the server trusts local users, so any password works) and `query`.
fn pg_url(url: &str, password: &str, query: &str) -> String {
    let mut url = url::Url::parse(url).unwrap();
    url.set_host(Some("localhost")).unwrap();
    url.set_password(Some(password)).unwrap();
    url.set_query(Some(query));
    url.to_string()
}

fn text(o: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Whether every session the server has open to `database` is TLS, and how many there are,
/// as the server sees them (`pg_stat_ssl`), asked over a connection of the test's own.
async fn sessions_of(database: &str) -> (i64, bool) {
    let mut admin = sqlx::PgConnection::connect(&common::pg_admin_url())
        .await
        .unwrap();
    sqlx::query_as::<_, (i64, Option<bool>)>(
        "SELECT count(*), bool_and(s.ssl) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) WHERE a.datname = $1",
    )
    .bind(database)
    .fetch_one(&mut admin)
    .await
    .map(|(n, all)| (n, all.unwrap_or(false)))
    .unwrap()
}

fn database_of(url: &str) -> String {
    url::Url::parse(url)
        .unwrap()
        .path()
        .trim_matches('/')
        .to_string()
}

#[tokio::test]
async fn the_metadata_store_opens_over_verify_full_and_every_session_is_tls() {
    let db = common::fresh_pg_database().await;
    let url = pg_url(
        &db,
        "s3cretpw",
        &format!("sslmode=verify-full&sslrootcert={}", ca()),
    );
    // The binary migrates the new database and writes a pause over TLS.
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("dags")).unwrap();
    std::fs::write(
        dir.path().join("dags/tls_dag.yaml"),
        "dag_id: tls_dag\ntasks:\n  - {id: a, operator: noop}\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["dags", "pause", "tls_dag"])
        .env("SLUICE_HOME", dir.path().join("home"))
        .env("SLUICE_DAGS_FOLDER", dir.path().join("dags"))
        .env("SLUICE_DATABASE_URL", &url)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));

    // In process: the store reads it back and writes, and the server sees only TLS sessions.
    let store = sluice_core::store::open(&url).await.unwrap();
    assert_eq!(store.paused_dags().await.unwrap(), ["tls_dag"]);
    store
        .set_paused("tls_dag", false, chrono::Utc::now())
        .await
        .unwrap();
    assert!(store.paused_dags().await.unwrap().is_empty());
    let (sessions, all_tls) = sessions_of(&database_of(&db)).await;
    assert!(
        sessions >= 1 && all_tls,
        "{sessions} session(s), all TLS: {all_tls}"
    );
}

#[tokio::test]
async fn a_server_the_ca_does_not_vouch_for_is_refused_with_a_clear_error() {
    let db = common::fresh_pg_database().await;
    let url = pg_url(
        &db,
        "s3cretpw",
        &format!("sslmode=verify-full&sslrootcert={}", wrong_ca()),
    );
    let started = Instant::now();
    let error = sluice_core::store::open(&url)
        .await
        .err()
        .unwrap()
        .to_string();
    // Refused at once, not after the pool's connect retries.
    assert!(started.elapsed() < Duration::from_secs(3), "{error}");
    for part in [
        "cannot open the metadata store",
        "TLS",
        "TLS handshake with localhost:55432 failed: its certificate is not signed by a trusted CA",
        "UnknownIssuer",
        &format!("sslrootcert {}", wrong_ca()),
    ] {
        assert!(error.contains(part), "`{part}` missing from: {error}");
    }
    assert!(!error.contains("s3cretpw"), "the password leaked: {error}");

    // What a user sees from the binary.
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("dags")).unwrap();
    std::fs::write(
        dir.path().join("dags/tls_dag.yaml"),
        "dag_id: tls_dag\ntasks:\n  - {id: a, operator: noop}\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["dags", "pause", "tls_dag"])
        .env("SLUICE_HOME", dir.path().join("home"))
        .env("SLUICE_DAGS_FOLDER", dir.path().join("dags"))
        .env("SLUICE_DATABASE_URL", &url)
        .output()
        .unwrap();
    let shown = text(&out);
    assert!(!out.status.success(), "{shown}");
    assert!(
        shown.contains("TLS")
            && shown.contains("TLS handshake with localhost:55432 failed")
            && !shown.contains("s3cretpw"),
        "{shown}"
    );

    // A CA file that is not there is named, not reported as a bare missing file.
    let missing = pg_url(
        &db,
        "s3cretpw",
        "sslmode=verify-full&sslrootcert=/nonexistent/ca.pem",
    );
    let error = sluice_core::store::open(&missing)
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(
        error.contains("sslrootcert /nonexistent/ca.pem: No such file"),
        "{error}"
    );
}

#[tokio::test]
async fn sslmode_require_encrypts_without_a_ca_and_disable_does_not() {
    for (mode, tls) in [("require", true), ("disable", false)] {
        let db = common::fresh_pg_database().await;
        // 127.0.0.1 and no CA: `require` encrypts but, like libpq, checks no certificate.
        let mut url = url::Url::parse(&db).unwrap();
        url.set_query(Some(&format!("sslmode={mode}")));
        let store = sluice_core::store::open(url.as_str()).await.unwrap();
        assert!(store.paused_dags().await.unwrap().is_empty());
        let (sessions, all_tls) = sessions_of(&database_of(&db)).await;
        assert!(sessions >= 1, "sslmode={mode}");
        assert_eq!(all_tls, tls, "sslmode={mode}");
    }
}

/// An HTTPS server (Python's `http.server` in the system python3, with the dev certificate)
/// that answers 200 to every POST and keeps each request's path and body.
struct HttpsReceiver {
    child: std::process::Child,
    port: u16,
    got: Arc<Mutex<Vec<(String, String)>>>,
}

const RECEIVER: &str = r#"
import http.server, json, ssl, sys
class Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get('content-length') or 0)).decode()
        print(json.dumps([self.path, body]), flush=True)
        self.send_response(200)
        self.send_header('content-length', '2')
        self.end_headers()
        self.wfile.write(b'ok')
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(sys.argv[1], sys.argv[2])
server.socket = context.wrap_socket(server.socket, server_side=True)
print(server.server_address[1], flush=True)
server.serve_forever()
"#;

impl HttpsReceiver {
    fn start() -> Self {
        let mut child = std::process::Command::new("python3")
            .args([
                "-c",
                RECEIVER,
                &env("SLUICE_TEST_TLS_CERT"),
                &env("SLUICE_TEST_TLS_KEY"),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 runs");
        let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let port = lines
            .next()
            .expect("the receiver printed its port")
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let sink = got.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                let (path, body): (String, String) = serde_json::from_str(&line).unwrap();
                sink.lock().unwrap().push((path, body));
            }
        });
        Self { child, port, got }
    }

    fn requests(&self) -> Vec<(String, String)> {
        self.got.lock().unwrap().clone()
    }
}

impl Drop for HttpsReceiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A DAG that reads over TLS from PostgreSQL whether its session is TLS, loads that into
/// ClickHouse over HTTPS, calls a webhook over HTTPS, and notifies the same receiver when the
/// run succeeds.
const CHAIN: &str = r#"
dag_id: tls_chain
default_args: { retries: 0 }
channels:
  done: { webhook: { conn: hook } }
on_success: [done]
tasks:
  - id: extract
    operator: postgres_extract
    config:
      conn: source
      sql: SELECT ssl::int AS ssl, version AS tls_version FROM pg_stat_ssl WHERE pid = pg_backend_pid()
  - id: load
    operator: clickhouse_load
    depends_on: [extract]
    config: { conn: warehouse, table: tls_probe }
  - id: call
    operator: http_webhook
    depends_on: [load]
    config: { conn: hook, path: /loaded, json: { run: "{{ run_id }}" } }
"#;

struct Chain {
    dir: tempfile::TempDir,
    source: String,
    ch_db: String,
    receiver: HttpsReceiver,
}

impl Chain {
    async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("dags")).unwrap();
        std::fs::write(dir.path().join("dags/tls_chain.yaml"), CHAIN).unwrap();
        let ch_db = common::fresh_clickhouse_database().await;
        common::clickhouse(&format!(
            "CREATE TABLE {ch_db}.tls_probe (ssl Int32, tls_version String) ENGINE = Log"
        ))
        .await;
        Self {
            dir,
            source: common::fresh_pg_database().await,
            ch_db,
            receiver: HttpsReceiver::start(),
        }
    }

    /// `sluice dags test tls_chain` with the connections trusting `pg_ca`, `ch_ca`, `hook_ca`.
    fn run(&self, pg_ca: &str, ch_ca: &str, hook_ca: &str) -> Output {
        let warehouse = format!(
            "{}/{}?secure=true&sslrootcert={ch_ca}",
            env("SLUICE_TEST_CLICKHOUSE_HTTPS_URL")
                .split("/sluice_test")
                .next()
                .unwrap(),
            self.ch_db
        );
        std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["dags", "test", "tls_chain"])
            .env("SLUICE_HOME", self.dir.path().join("home"))
            .env("SLUICE_DAGS_FOLDER", self.dir.path().join("dags"))
            .env_remove("SLUICE_DATABASE_URL")
            .env(
                "SLUICE_CONN_SOURCE",
                pg_url(
                    &self.source,
                    "s3cretpw",
                    &format!("sslmode=verify-full&sslrootcert={pg_ca}"),
                ),
            )
            .env("SLUICE_CONN_WAREHOUSE", warehouse)
            .env(
                "SLUICE_CONN_HOOK",
                format!(
                    "https://hookuser:h00ksecret@localhost:{}/?sslrootcert={hook_ca}",
                    self.receiver.port
                ),
            )
            .output()
            .unwrap()
    }

    async fn loaded(&self) -> String {
        common::clickhouse(&format!(
            "SELECT ssl, tls_version FROM {}.tls_probe FORMAT TSV",
            self.ch_db
        ))
        .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extract_load_and_webhooks_run_over_tls_trusting_the_connections_ca() {
    let chain = Chain::new().await;
    let out = chain.run(&ca(), &ca(), &ca());
    assert!(out.status.success(), "{}", text(&out));
    // PostgreSQL saw the extract's session as TLS; ClickHouse got that row over HTTPS.
    let loaded = chain.loaded().await;
    assert!(loaded.starts_with("1\tTLSv1."), "{loaded}");
    // The operator's call and the run's success notice, both over HTTPS; the CA parameter
    // is sluice's and never reaches the receiver.
    let deadline = Instant::now() + Duration::from_secs(10);
    while chain.receiver.requests().len() < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let requests = chain.receiver.requests();
    let paths: Vec<&str> = requests.iter().map(|(p, _)| p.as_str()).collect();
    assert!(paths.contains(&"/loaded"), "{requests:?}");
    assert!(paths.contains(&"/"), "the notification: {requests:?}");
    assert!(
        requests.iter().all(|(p, _)| !p.contains("sslrootcert")),
        "{requests:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_connection_refuses_a_server_its_ca_does_not_vouch_for() {
    let chain = Chain::new().await;
    let wrong = wrong_ca();
    for (case, out, task, host) in [
        (
            "postgres",
            chain.run(&wrong, &ca(), &ca()),
            "extract",
            "localhost:55432",
        ),
        (
            "clickhouse",
            chain.run(&ca(), &wrong, &ca()),
            "load",
            "localhost:58443",
        ),
        (
            "webhook",
            chain.run(&ca(), &ca(), &wrong),
            "call",
            &format!("localhost:{}", chain.receiver.port),
        ),
    ] {
        let shown = text(&out);
        assert_eq!(out.status.code(), Some(1), "{case}: {shown}");
        let refused = format!(
            "TLS handshake with {host} failed: its certificate is not signed by a trusted CA"
        );
        assert!(
            shown
                .lines()
                .any(|l| l.contains(task) && l.contains(&refused)),
            "{case}: no line of task {task} says `{refused}`: {shown}"
        );
        assert!(
            shown.contains("UnknownIssuer") && shown.contains(&format!("sslrootcert {wrong}")),
            "{case}: {shown}"
        );
        for secret in ["s3cretpw", "h00ksecret"] {
            assert!(!shown.contains(secret), "{case}: {secret} leaked: {shown}");
        }
    }
    // Only the webhook case's run got as far as loading (over trusted connections), and the
    // receiver heard nothing: no call or notice went to a server that was not trusted.
    assert_eq!(chain.loaded().await.lines().count(), 1);
    assert!(
        chain.receiver.requests().is_empty(),
        "{:?}",
        chain.receiver.requests()
    );
}
