//! Attacks on sluice as an API caller or a DAG's task would try them; each must fail.
//! (Tests of the web server's own defences are in the second half.)

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

struct Home {
    dir: tempfile::TempDir,
}

/// Secrets the process is started with; none may show anywhere a user can read.
const API_TOKEN: &str = "tok-sekret-4f9a1c";
const CRM_PASSWORD: &str = "crm-pa$$-7b2e";
const OTHER_PASSWORD: &str = "other-pass-93d1";
const AWS_SECRET: &str = "aws-secret-55e0";
const CONF_PASSWORD: &str = "conf-pass-c3a8";

impl Home {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("dags")).unwrap();
        Self { dir }
    }

    fn dags(&self) -> PathBuf {
        self.dir.path().join("dags")
    }

    fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    fn write(&self, name: &str, yaml: &str) {
        std::fs::write(self.dags().join(name), yaml).unwrap();
    }

    fn sluice(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(args)
            .current_dir(self.dir.path())
            .env_remove("SLUICE_LOG")
            .envs(self.env())
            .output()
            .unwrap()
    }

    /// The environment sluice runs with here: its home and DAGs, and every secret.
    fn env(&self) -> Vec<(String, String)> {
        let path = |p: PathBuf| p.display().to_string();
        vec![
            ("SLUICE_HOME".into(), path(self.home())),
            ("SLUICE_DAGS_FOLDER".into(), path(self.dags())),
            ("SLUICE_DATABASE_URL".into(), String::new()),
            ("SLUICE_API_TOKEN".into(), API_TOKEN.into()),
            (
                "SLUICE_CONN_CRM".into(),
                format!(
                    "postgres://etl:{}@127.0.0.1:1/crm",
                    CRM_PASSWORD.replace('$', "%24")
                ),
            ),
            (
                "SLUICE_CONN_OTHER".into(),
                format!("postgres://etl:{OTHER_PASSWORD}@127.0.0.1:1/other"),
            ),
            ("AWS_SECRET_ACCESS_KEY".into(), AWS_SECRET.into()),
        ]
    }

    fn logs(&self, dag: &str, run_id: &str, task: &str) -> String {
        let out = self.sluice(&["tasks", "logs", dag, run_id, task]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Every file under `dir` (try logs, artifacts) as text.
fn all_text_under(dir: &Path) -> String {
    let mut out = String::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.push_str(&all_text_under(&path));
        } else if path.extension().is_some_and(|e| e == "log") {
            out.push_str(&String::from_utf8_lossy(&std::fs::read(&path).unwrap()));
        }
    }
    out
}

fn assert_no_secret(what: &str, haystack: &str) {
    for secret in [
        API_TOKEN,
        CRM_PASSWORD,
        OTHER_PASSWORD,
        AWS_SECRET,
        CONF_PASSWORD,
    ] {
        assert!(
            !haystack.contains(secret),
            "{what} shows the secret {secret}:\n{haystack}"
        );
    }
    assert!(
        !haystack.contains(&CRM_PASSWORD.replace('$', "%24")),
        "{what} shows the encoded password"
    );
}

#[test]
fn a_runs_conf_reaches_a_shell_command_as_data_never_as_code() {
    let home = Home::new();
    // The pattern dags/example_fan_in.yaml ships with, and a value outside quotes.
    home.write(
        "echo.yaml",
        "dag_id: echo\ntasks:\n  - {id: say, operator: shell, config: {command: 'echo \"region {{ params.region }}\" && echo {{ params.region }}'}}\n",
    );
    let marker = home.dir.path().join("pwned");
    let hostile = format!(
        "$(touch {m}) `touch {m}`; touch {m} ' \" \\ \n ok",
        m = marker.display()
    );
    let conf = serde_json::json!({ "region": hostile }).to_string();
    let out = home.sluice(&[
        "dags",
        "test",
        "echo",
        "--logical-date",
        "2026-11-23T10:00:00Z",
        "--conf",
        &conf,
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!marker.exists(), "the conf ran as shell code");
    let log = home.logs("echo", "manual__2026-11-23T10:00:00+00:00", "say");
    let first_line = hostile.lines().next().unwrap();
    assert!(
        log.contains(&format!("region {first_line}")),
        "the value arrives intact: {log}"
    );
    assert!(
        log.matches(first_line).count() >= 2,
        "both uses print it: {log}"
    );
}

#[test]
fn a_task_sees_only_its_context_and_what_it_names_and_secrets_are_masked() {
    let home = Home::new();
    home.write(
        "spy.yaml",
        "dag_id: spy\ntasks:\n  - id: env\n    operator: shell\n    config:\n      command: env; echo \"conf says {{ conf.db_password }}\"; echo \"$SLUICE_CONN_CRM\"\n      env: {MINE: declared}\n      connections: [crm]\n",
    );
    let conf = serde_json::json!({ "db_password": CONF_PASSWORD, "region": "eu" }).to_string();
    let out = home.sluice(&[
        "dags",
        "test",
        "spy",
        "--logical-date",
        "2026-11-23T10:00:00Z",
        "--conf",
        &conf,
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert_no_secret("the CLI's output", &text(&out));
    let run_id = "manual__2026-11-23T10:00:00+00:00";
    let log = home.logs("spy", run_id, "env");
    for wanted in [
        "SLUICE_DAG_ID=spy",
        "SLUICE_RUN_ID=manual__2026-11-23T10:00:00+00:00",
        "SLUICE_TASK_ID=env",
        "SLUICE_TRY_NUMBER=1",
        "SLUICE_ATTEMPT=1",
        "MINE=declared",
        "PATH=",
        "SLUICE_CONN_CRM=postgres://etl:***@127.0.0.1:1/crm",
        "conf says ***",
    ] {
        assert!(log.contains(wanted), "missing {wanted}:\n{log}");
    }
    for absent in [
        "SLUICE_API_TOKEN",
        "SLUICE_CONN_OTHER",
        "AWS_SECRET_ACCESS_KEY",
        "SLUICE_HOME",
        "SLUICE_DAGS_FOLDER",
    ] {
        assert!(!log.contains(absent), "{absent} reached the task:\n{log}");
    }
    assert_no_secret("the try log", &log);
    assert_no_secret("the logs folder", &all_text_under(&home.home()));

    // The run as the CLI shows it: conf masked under its sensitive key, outputs masked.
    let shown = home.sluice(&["runs", "show", run_id, "--json"]);
    assert!(shown.status.success(), "{}", text(&shown));
    let shown_text = text(&shown);
    assert_no_secret("runs show", &shown_text);
    let run: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(run["run"]["conf"]["db_password"], "***", "{run}");
    assert_eq!(run["run"]["conf"]["region"], "eu");
}

#[test]
fn a_command_that_writes_100_mb_without_a_newline_keeps_the_log_small() {
    let home = Home::new();
    home.write(
        "flood.yaml",
        "dag_id: flood\ntasks:\n  - id: flood\n    operator: shell\n    config:\n      command: |\n        head -c 100000000 /dev/zero | tr '\\0' a\n        printf '\\n\\377 not utf-8\\n'\n        echo done\n",
    );
    let out = home.sluice(&[
        "dags",
        "test",
        "flood",
        "--logical-date",
        "2026-11-23T10:00:00Z",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let log_file = home
        .home()
        .join("logs/flood/manual__2026-11-23T10:00:00+00:00/flood/1.log");
    let size = std::fs::metadata(&log_file).unwrap().len();
    assert!(size < 200_000, "the try log holds {size} bytes");
    let log = String::from_utf8_lossy(&std::fs::read(&log_file).unwrap()).into_owned();
    assert!(
        log.contains("more bytes of this line not kept"),
        "{}",
        &log[log.len().saturating_sub(500)..]
    );
    assert!(
        log.contains("\u{fffd} not utf-8"),
        "bytes that are not UTF-8 are kept lossily"
    );
    assert!(log.contains("done"), "the command ran to its end");
}

// ---- The web server, as an API caller on this machine or a web page in a browser sees it.

#[path = "../core/tests/common/mod.rs"]
mod common;

use sluice_core::web::auth::{Role, Tokens};

const VIEWER: &str = "viewer-token-0a1b2c3d4e";
const OPERATOR: &str = "operator-token-5f6a7b8c";
const ADMIN: &str = "admin-token-9d0e1f2a3b4c";

struct Web {
    dir: tempfile::TempDir,
    base: String,
    stop: tokio_util::sync::CancellationToken,
    client: reqwest::Client,
}

impl Drop for Web {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn web() -> Web {
    let dir = tempfile::tempdir().unwrap();
    let dags = dir.path().join("dags");
    std::fs::create_dir_all(&dags).unwrap();
    std::fs::write(
        dags.join("etl.yaml"),
        "dag_id: etl\ntasks:\n  - {id: a, operator: noop}\n",
    )
    .unwrap();
    let store = common::sqlite_store(dir.path()).await;
    let tokens = Tokens::default()
        .with(Role::Viewer, "grafana", VIEWER)
        .with(Role::Operator, "oncall", OPERATOR)
        .with(Role::Admin, "root", ADMIN);
    let (base, stop) = common::serve_web(
        &dags,
        &dir.path().join("logs"),
        store,
        sluice_operators::basic(),
        tokens,
    )
    .await;
    Web {
        dir,
        base,
        stop,
        client: reqwest::Client::new(),
    }
}

impl Web {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<serde_json::Value>,
    ) -> reqwest::Response {
        let mut request = self.client.request(method, format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        request.send().await.unwrap()
    }

    async fn status(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<serde_json::Value>,
    ) -> u16 {
        self.call(method, path, token, body).await.status().as_u16()
    }
}

#[tokio::test]
async fn each_role_does_what_it_may_and_every_mutation_is_audited() {
    use reqwest::Method;
    let w = web().await;
    let pause = || Some(serde_json::json!({"is_paused": true}));

    // Nothing without a token, except /health.
    assert_eq!(w.status(Method::GET, "/api/v1/dags", None, None).await, 401);
    assert_eq!(
        w.status(Method::GET, "/api/v1/dags/etl/dagRuns", None, None)
            .await,
        401
    );
    assert_eq!(
        w.status(Method::GET, "/api/v1/events", None, None).await,
        401
    );
    assert_eq!(w.status(Method::GET, "/health", None, None).await, 200);
    assert_eq!(
        w.status(Method::PATCH, "/api/v1/dags/etl", None, pause())
            .await,
        401
    );

    // A viewer reads, and is refused every change.
    assert_eq!(
        w.status(Method::GET, "/api/v1/dags", Some(VIEWER), None)
            .await,
        200
    );
    let refused = w
        .call(Method::PATCH, "/api/v1/dags/etl", Some(VIEWER), pause())
        .await;
    assert_eq!(refused.status().as_u16(), 403);
    let detail: serde_json::Value = refused.json().await.unwrap();
    assert!(
        detail["detail"]
            .as_str()
            .unwrap()
            .contains("needs operator"),
        "{detail}"
    );
    let trigger = || Some(serde_json::json!({"conf": {}}));
    assert_eq!(
        w.status(
            Method::POST,
            "/api/v1/dags/etl/dagRuns",
            Some(VIEWER),
            trigger()
        )
        .await,
        403
    );
    assert_eq!(
        w.status(Method::GET, "/api/v1/auditLog", Some(VIEWER), None)
            .await,
        403
    );

    // An operator changes things, but does not read the audit log.
    assert_eq!(
        w.status(Method::PATCH, "/api/v1/dags/etl", Some(OPERATOR), pause())
            .await,
        200
    );
    assert_eq!(
        w.status(
            Method::POST,
            "/api/v1/dags/etl/dagRuns",
            Some(OPERATOR),
            trigger()
        )
        .await,
        200
    );
    assert_eq!(
        w.status(Method::GET, "/api/v1/auditLog", Some(OPERATOR), None)
            .await,
        403
    );

    // The admin reads who did what, from where, newest first; never a token.
    let answer = w
        .call(Method::GET, "/api/v1/auditLog", Some(ADMIN), None)
        .await;
    assert_eq!(answer.status().as_u16(), 200);
    let body = answer.text().await.unwrap();
    for token in [VIEWER, OPERATOR, ADMIN] {
        assert!(!body.contains(token), "the audit log shows a token: {body}");
    }
    let log: serde_json::Value = serde_json::from_str(&body).unwrap();
    let seen: Vec<(String, String, String, u64)> = log["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            assert!(
                e["remote"].as_str().unwrap().starts_with("127.0.0.1:"),
                "{e}"
            );
            (
                e["actor"].as_str().unwrap().to_string(),
                e["method"].as_str().unwrap().to_string(),
                e["path"].as_str().unwrap().to_string(),
                e["status"].as_u64().unwrap(),
            )
        })
        .collect();
    let entry = |actor: &str, method: &str, path: &str, status: u64| {
        (
            actor.to_string(),
            method.to_string(),
            path.to_string(),
            status,
        )
    };
    assert_eq!(
        seen,
        [
            entry("oncall", "POST", "/api/v1/dags/etl/dagRuns", 200),
            entry("oncall", "PATCH", "/api/v1/dags/etl", 200),
            entry("grafana", "POST", "/api/v1/dags/etl/dagRuns", 403),
            entry("grafana", "PATCH", "/api/v1/dags/etl", 403),
        ],
        "every mutation by a known token, granted or refused; not the unauthenticated ones"
    );

    // The same log from the command line.
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["audit", "--json", "--limit", "2"])
        .env("SLUICE_HOME", w.dir.path())
        .env_remove("SLUICE_DATABASE_URL")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let cli: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(cli.as_array().unwrap().len(), 2);
    assert_eq!(cli[0]["actor"], "oncall");
    assert_eq!(cli[0]["path"], "/api/v1/dags/etl/dagRuns");
    assert_eq!(cli[1]["method"], "PATCH");
}

#[tokio::test]
async fn a_foreign_host_is_refused_and_answers_carry_security_headers() {
    let w = web().await;
    // DNS rebinding: a page on evil.example whose name now points at 127.0.0.1.
    for path in ["/", "/api/v1/dags", "/static/app.js"] {
        let r = w
            .client
            .get(format!("{}{path}", w.base))
            .header("Host", "evil.example:8080")
            .bearer_auth(VIEWER)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 421, "{path}");
    }
    let health = w
        .client
        .get(format!("{}/health", w.base))
        .header("Host", "10.0.0.7:8080")
        .send()
        .await
        .unwrap();
    assert_eq!(
        health.status().as_u16(),
        200,
        "probes call /health by address"
    );

    for path in ["/", "/api/v1/dags", "/api/v1/nothing"] {
        let r = w.call(reqwest::Method::GET, path, Some(VIEWER), None).await;
        let h = r.headers();
        let csp = h["content-security-policy"].to_str().unwrap();
        assert!(
            csp.contains("default-src 'self'") && csp.contains("frame-ancestors 'none'"),
            "{path}: {csp}"
        );
        assert_eq!(h["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(h["x-frame-options"], "DENY", "{path}");
        assert_eq!(h["referrer-policy"], "no-referrer", "{path}");
    }
}

#[tokio::test]
async fn oversized_bodies_and_slow_headers_are_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let w = web().await;
    let huge = "x".repeat(2 << 20);
    let status = w
        .status(
            reqwest::Method::POST,
            "/api/v1/dags/etl/dagRuns",
            Some(OPERATOR),
            Some(serde_json::json!({"conf": {"blob": huge}})),
        )
        .await;
    assert_eq!(status, 413);

    // A client that never finishes its headers is disconnected (slowloris).
    let addr = w.base.trim_start_matches("http://").to_string();
    let mut slow = tokio::net::TcpStream::connect(&addr).await.unwrap();
    slow.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(
        sluice_core::web::hardening::HEADER_TIMEOUT + std::time::Duration::from_secs(5),
        slow.read_to_end(&mut buf),
    )
    .await;
    assert!(
        read.is_ok(),
        "the connection stayed open past the header timeout"
    );
    assert!(
        started.elapsed()
            >= sluice_core::web::hardening::HEADER_TIMEOUT - std::time::Duration::from_secs(1)
    );
}

#[test]
fn a_bad_file_is_reported_and_never_stops_the_good_ones() {
    let home = Home::new();
    home.write(
        "good.yaml",
        "dag_id: good\ntasks:\n  - {id: a, operator: noop}\n",
    );
    // Nested aliases: a few hundred bytes that expand to a billion strings.
    let mut bomb = String::from("dag_id: lol\na0: &a0 [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n");
    for i in 1..10 {
        let refs = vec![format!("*a{}", i - 1); 9].join(",");
        bomb.push_str(&format!("a{i}: &a{i} [{refs}]\n"));
    }
    bomb.push_str("tasks:\n  - {id: x, operator: noop}\n");
    home.write("bomb.yaml", &bomb);
    // 5 MB of YAML.
    home.write(
        "huge.yaml",
        &format!(
            "dag_id: huge\ndescription: \"{}\"\ntasks:\n  - {{id: x, operator: noop}}\n",
            "x".repeat(5 << 20)
        ),
    );
    home.write(
        "forever.yaml",
        "dag_id: forever\ndefault_args: {retries: 1, retry_delay: 99999999999999h}\ntasks:\n  - {id: x, operator: noop}\n",
    );
    let started = std::time::Instant::now();
    let out = home.sluice(&["dags", "list", "--json"]);
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    assert!(out.status.success(), "{}", text(&out));
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ids: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["dag_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["good"]);
    let out = home.sluice(&["dags", "validate"]);
    let report = text(&out);
    for (file, problem) in [
        ("bomb.yaml", "repetition limit exceeded"),
        ("huge.yaml", "larger than 1024 KiB"),
        ("forever.yaml", "longer than the longest allowed duration"),
    ] {
        assert!(
            report
                .lines()
                .any(|l| l.contains(file) && l.contains(problem)),
            "{file}: {problem}\n{report}"
        );
    }
}

#[test]
fn a_conf_that_is_too_big_or_too_deep_is_refused() {
    let home = Home::new();
    home.write("c.yaml", "dag_id: c\ntasks:\n  - {id: a, operator: noop}\n");
    let deep = format!("{}1{}", "{\"a\":".repeat(100), "}".repeat(100));
    let big = format!("{{\"blob\": \"{}\"}}", "x".repeat(100_000));
    for (conf, problem) in [(deep, "levels deep"), (big, "bytes; at most")] {
        let out = home.sluice(&[
            "dags",
            "test",
            "c",
            "--logical-date",
            "2026-11-23T10:00:00Z",
            "--conf",
            &conf,
        ]);
        assert_eq!(out.status.code(), Some(2), "{}", text(&out));
        assert!(text(&out).contains(problem), "{}", text(&out));
    }
}

#[tokio::test]
async fn a_conf_posted_to_the_api_reaches_the_shell_as_data() {
    let home = Home::new();
    home.write(
        "echo.yaml",
        "dag_id: echo\nschedule: null\ntasks:\n  - {id: say, operator: shell, config: {command: 'echo \"region {{ params.region }}\"'}}\n  - {id: env, operator: shell, config: {command: 'env; echo {{ conf.db_password }}', connections: [crm]}}\n",
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut server = tokio::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["standalone", "--port", &port.to_string()])
        .envs(home.env())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    for _ in 0..100 {
        if client.get(format!("{base}/health")).send().await.is_ok() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let marker = home.dir.path().join("pwned-by-api");
    let hostile = format!("$(touch {m}); `touch {m}`", m = marker.display());
    let answer: serde_json::Value = client
        .post(format!("{base}/api/v1/dags/echo/dagRuns"))
        .bearer_auth(API_TOKEN)
        .json(&serde_json::json!({"conf": {"region": hostile, "db_password": CONF_PASSWORD}, "logical_date": "2026-11-23T10:00:00Z"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let run_id = answer["dag_run_id"].as_str().unwrap().to_string();
    let mut state = String::new();
    for _ in 0..200 {
        let run: serde_json::Value = client
            .get(format!("{base}/api/v1/dags/echo/dagRuns/{run_id}"))
            .bearer_auth(API_TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        state = run["state"].as_str().unwrap_or_default().to_string();
        if state == "success" || state == "failed" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(state, "success");
    assert!(!marker.exists(), "the API's conf ran as shell code");
    let log = home.logs("echo", &run_id, "say");
    assert!(log.contains(&format!("region {hostile}")), "{log}");

    // Everything the API shows of this run, the environment-printing task included.
    let run_path = format!(
        "/api/v1/dags/echo/dagRuns/{}",
        run_id.replace('+', "%2B").replace(':', "%3A")
    );
    let mut shown = String::new();
    for path in [
        run_path.clone(),
        format!("{run_path}/taskInstances"),
        format!("{run_path}/attempts"),
        format!("{run_path}/taskInstances/env/logs/1"),
        format!("{run_path}/taskInstances/say/logs/1"),
        "/api/v1/dags/echo/grid".to_string(),
        "/api/v1/dags/echo/dagRuns".to_string(),
    ] {
        let answer = client
            .get(format!("{base}{path}"))
            .bearer_auth(API_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status().as_u16(), 200, "{path}");
        shown.push_str(&answer.text().await.unwrap());
    }
    assert!(
        shown.contains("SLUICE_CONN_CRM=postgres://etl:***@"),
        "the env task ran: {shown}"
    );
    assert_no_secret("the API's answers", &shown);
    assert_no_secret("the logs folder", &all_text_under(&home.home()));
    let _ = server.kill().await;
}
