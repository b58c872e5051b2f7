//! What the binary's process-level tests share: `sluice` commands over a test folder, with
//! a short run lease so a killed scheduler's runs are taken over within a second.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Child, Command, Stdio};

/// `sluice` with its home, DAGs and SQLite store under `home`, and a 1 s run lease.
pub fn sluice(home: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
    cmd.env("SLUICE_HOME", home.join("home"))
        .env("SLUICE_DAGS_FOLDER", home.join("dags"))
        .env_remove("SLUICE_DATABASE_URL")
        .env_remove("SLUICE_LOG")
        // A killed scheduler's runs are taken over once their lease lapses.
        .env("SLUICE_RUN_LEASE", "1s");
    cmd
}

/// A child process that is killed when dropped: a test that fails half-way leaves no
/// scheduler or worker running behind it.
pub struct Process(pub Child);

impl std::ops::Deref for Process {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Process {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `sluice scheduler` in the background, quiet.
pub fn start_scheduler(home: &Path) -> Process {
    Process(
        sluice(home)
            .arg("scheduler")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

/// Starts `sluice webserver --port 0` from `cmd` and returns it with its base URL (read
/// from what it prints); the rest of its output is drained.
pub fn start_webserver(cmd: &mut Command) -> (Process, String) {
    use std::io::BufRead;
    let mut child = Process(cmd.stderr(Stdio::piped()).spawn().unwrap());
    let mut lines = std::io::BufReader::new(child.0.stderr.take().unwrap()).lines();
    let base = loop {
        let line = lines
            .next()
            .expect("the web server printed its address")
            .unwrap();
        if let Some(address) = line.strip_prefix("web server on ") {
            break address.trim().to_string();
        }
    };
    std::thread::spawn(move || lines.for_each(drop));
    (child, base)
}

/// A PostgreSQL server of the test's own (not the shared one of `scripts/services`), so the
/// test may kill its connections and restart it: `initdb` in a temporary folder, on a free
/// loopback port, stopped when dropped.
pub struct OwnPostgres {
    dir: tempfile::TempDir,
    port: u16,
}

fn pg_bin(tool: &str) -> std::path::PathBuf {
    let dir =
        std::env::var("SLUICE_DEV_PG_BIN").unwrap_or_else(|_| "/usr/lib/postgresql/15/bin".into());
    Path::new(&dir).join(tool)
}

/// `tool args…` as the `postgres` user when running as root (initdb and pg_ctl refuse root).
fn as_postgres(tool: &str, args: &[&str]) -> std::process::Output {
    let root = unsafe { libc::geteuid() } == 0;
    let mut cmd = if root {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"]).arg(pg_bin(tool));
        cmd
    } else {
        Command::new(pg_bin(tool))
    };
    cmd.args(args).current_dir("/").output().unwrap()
}

impl OwnPostgres {
    /// Creates and starts the server.
    pub fn start() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("sluice-own-pg")
            .tempdir()
            .unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        if unsafe { libc::geteuid() } == 0 {
            let chown = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(chown.success());
        }
        let init = as_postgres(
            "initdb",
            &[
                "-D",
                data.to_str().unwrap(),
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
            ],
        );
        assert!(
            init.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&init.stderr)
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let server = Self { dir, port };
        server.pg_ctl("start");
        server
    }

    fn pg_ctl(&self, action: &str) {
        let data = self.dir.path().join("data");
        let log = self.dir.path().join("postgres.log");
        let options = format!(
            "-c listen_addresses=127.0.0.1 -p {} -c unix_socket_directories='{}' -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        let out = as_postgres(
            "pg_ctl",
            &[
                "-D",
                data.to_str().unwrap(),
                "-l",
                log.to_str().unwrap(),
                "-m",
                "fast",
                "-w",
                "-t",
                "30",
                "-o",
                &options,
                action,
            ],
        );
        assert!(
            out.status.success(),
            "pg_ctl {action}: {}{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    /// Stops the server (fast shutdown: every connection is closed).
    pub fn stop(&self) {
        self.pg_ctl("stop");
    }

    /// Starts the stopped server again on the same port.
    pub fn start_again(&self) {
        self.pg_ctl("start");
    }

    /// Its `postgres` database.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        let _ = as_postgres(
            "pg_ctl",
            &["-D", data.to_str().unwrap(), "-m", "immediate", "stop"],
        );
    }
}

/// A TCP link to a real server that breaks once, as a network or a server restart does: the
/// first time a client sends bytes containing `cut_on` (a query's text, a value in a body),
/// the bytes before it get through, then every live connection is cut and new ones are refused for
/// `down_for`; after that the link forwards again. (A fault injector in the manner of
/// toxiproxy; the server behind it is real.)
pub struct FaultyLink {
    /// `host:port` to connect to instead of the server.
    pub addr: String,
    state: std::sync::Arc<LinkState>,
}

struct LinkState {
    target: String,
    cut_on: Vec<u8>,
    down_for: std::time::Duration,
    /// When the link forwards again, once cut.
    down_until: std::sync::Mutex<Option<std::time::Instant>>,
    cut: std::sync::atomic::AtomicBool,
    live: std::sync::Mutex<Vec<tokio::task::AbortHandle>>,
}

impl FaultyLink {
    /// A link to `target` (`host:port`) on a free loopback port.
    pub async fn start(target: &str, cut_on: &str, down_for: std::time::Duration) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let state = std::sync::Arc::new(LinkState {
            target: target.to_string(),
            cut_on: cut_on.as_bytes().to_vec(),
            down_for,
            down_until: std::sync::Mutex::new(None),
            cut: std::sync::atomic::AtomicBool::new(false),
            live: std::sync::Mutex::new(Vec::new()),
        });
        let shared = state.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let down = shared
                    .down_until
                    .lock()
                    .unwrap()
                    .is_some_and(|until| std::time::Instant::now() < until);
                if down {
                    drop(client); // refused: the server is "down"
                    continue;
                }
                let state = shared.clone();
                let task = tokio::spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect(&state.target).await else {
                        return;
                    };
                    forward(client, server, state).await;
                });
                shared.live.lock().unwrap().push(task.abort_handle());
            }
        });
        Self { addr, state }
    }

    /// Whether the link was cut.
    pub fn was_cut(&self) -> bool {
        self.state.cut.load(std::sync::atomic::Ordering::SeqCst)
    }
}

async fn forward(
    client: tokio::net::TcpStream,
    server: tokio::net::TcpStream,
    state: std::sync::Arc<LinkState>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let pump = |mut from: tokio::net::tcp::OwnedReadHalf,
                mut to: tokio::net::tcp::OwnedWriteHalf,
                watched: bool,
                state: std::sync::Arc<LinkState>| async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let hit = if watched {
                buf[..n]
                    .windows(state.cut_on.len())
                    .position(|w| w == state.cut_on.as_slice())
            } else {
                None
            };
            if let Some(at) =
                hit.filter(|_| !state.cut.swap(true, std::sync::atomic::Ordering::SeqCst))
            {
                // What came before the match gets through: the request breaks off mid-way.
                let _ = to.write_all(&buf[..at]).await;
                let _ = to.flush().await;
                *state.down_until.lock().unwrap() =
                    Some(std::time::Instant::now() + state.down_for);
                for task in state.live.lock().unwrap().drain(..) {
                    task.abort();
                }
                return;
            }
            if to.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = to.shutdown().await;
    };
    let up = pump(client_read, server_write, true, state.clone());
    let down = pump(server_read, client_write, false, state);
    tokio::join!(up, down);
}

/// What the webhook receiver got: each POST's JSON and its Idempotency-Key.
#[derive(Clone, Default)]
pub struct Received(pub std::sync::Arc<std::sync::Mutex<Vec<(serde_json::Value, String)>>>);

impl Received {
    /// The `event` of each POST, sorted.
    pub fn events(&self) -> Vec<String> {
        let mut events: Vec<String> = self
            .0
            .lock()
            .unwrap()
            .iter()
            .map(|(body, _)| body["event"].as_str().unwrap_or_default().to_string())
            .collect();
        events.sort();
        events
    }
}

/// An HTTP receiver on a free loopback port; returns its URL.
pub async fn receiver() -> (String, Received) {
    let received = Received::default();
    let app = axum::Router::new()
        .route(
            "/hook",
            axum::routing::post(
                |axum::extract::State(r): axum::extract::State<Received>,
                 headers: axum::http::HeaderMap,
                 axum::Json(body): axum::Json<serde_json::Value>| async move {
                    let key = headers
                        .get("idempotency-key")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_string();
                    r.0.lock().unwrap().push((body, key));
                    "ok"
                },
            ),
        )
        .with_state(received.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, received)
}
