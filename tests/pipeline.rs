//! The reference pipeline end to end (docs/pipeline.md): real PostgreSQL sources, real ClickHouse,
//! a real HTTP receiver, and `sluice dags test prosthesis_stats` as a user runs it. The
//! expected rows are computed here from the raw generated rows, not by the pipeline's SQL.

#[path = "../core/tests/common/mod.rs"]
mod common;

#[path = "../examples/reports_service/service.rs"]
mod reports;

#[path = "support/mod.rs"]
mod support;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Output;

use chrono::{DateTime, Duration, TimeZone, Utc};
use serde_json::Value;
use sqlx::{Connection, PgConnection};

const SCHEMA: &str = include_str!("../examples/seed_data/schema.sql");

fn window() -> (DateTime<Utc>, DateTime<Utc>) {
    let s = Utc.with_ymd_and_hms(2026, 11, 23, 10, 0, 0).unwrap();
    (s, s + Duration::minutes(15))
}

struct Customer {
    id: i64,
    user_id: i64,
    name: &'static str,
    region: &'static str,
}

struct Prosthesis {
    chip: &'static str,
    customer: i64,
    model: i32,
    active: bool,
}

#[derive(Clone)]
struct Event {
    chip: String,
    ts: DateTime<Utc>,
    is_error: bool,
    cycles: i32,
    battery: Option<f32>,
    latency: Option<f32>,
}

struct Sources {
    models: Vec<(i32, &'static str, i32)>,
    customers: Vec<Customer>,
    prostheses: Vec<Prosthesis>,
    events: Vec<Event>,
}

/// Data with the edge cases of the contract: interval bounds, NULLs, unknown and inactive
/// chips, a user with two chips, exact health thresholds, ids above 2^53, unicode and quotes.
fn sources() -> Sources {
    let (s, e) = window();
    let models = vec![
        (1, "Grip \"Pro\" Mk1", 1000),
        (2, "Knee Ünïcode 'K2'", 2880),
    ];
    let customers = vec![
        Customer {
            id: 1,
            user_id: 9_007_199_254_740_993,
            name: "O'Brien \"Zoë\" 🚀",
            region: "eu-west",
        },
        Customer {
            id: 2,
            user_id: i64::MAX,
            name: "Max",
            region: "us-east",
        },
        Customer {
            id: 3,
            user_id: 42,
            name: "Zürich 北京",
            region: "Zürich/北京 'quoted'",
        },
        Customer {
            id: 4,
            user_id: 7,
            name: "Inactive",
            region: "apac",
        },
    ];
    let prostheses = vec![
        Prosthesis {
            chip: "A-warn",
            customer: 1,
            model: 1,
            active: true,
        },
        Prosthesis {
            chip: "B-critical",
            customer: 1,
            model: 2,
            active: true,
        },
        Prosthesis {
            chip: "C-ok",
            customer: 2,
            model: 1,
            active: true,
        },
        Prosthesis {
            chip: "D-third",
            customer: 3,
            model: 2,
            active: true,
        },
        Prosthesis {
            chip: "E-inactive",
            customer: 4,
            model: 1,
            active: false,
        },
        Prosthesis {
            chip: "F-quiet",
            customer: 3,
            model: 1,
            active: true,
        },
        Prosthesis {
            chip: "G-just-ok",
            customer: 2,
            model: 2,
            active: true,
        },
        Prosthesis {
            chip: "H-just-warn",
            customer: 3,
            model: 1,
            active: true,
        },
    ];
    let mut events = Vec::new();
    let mut add = |chip: &str,
                   n: usize,
                   errors: usize,
                   first: DateTime<Utc>,
                   step_ms: i64,
                   battery: &dyn Fn(usize) -> Option<f32>,
                   latency: &dyn Fn(usize) -> Option<f32>| {
        for i in 0..n {
            events.push(Event {
                chip: chip.to_string(),
                ts: first + Duration::milliseconds(step_ms * i as i64),
                is_error: i < errors,
                cycles: (i % 7) as i32 + 1,
                battery: battery(i),
                latency: latency(i),
            });
        }
    };
    // exactly 2% errors; the first event is exactly at S; some NULLs
    add(
        "A-warn",
        100,
        2,
        s,
        5_000,
        &|i| {
            if i % 10 == 0 {
                None
            } else {
                Some(40.0 + (i % 8) as f32 * 0.5)
            }
        },
        &|i| {
            if i % 9 == 0 {
                None
            } else {
                Some(10.0 + (i % 13) as f32 * 1.25)
            }
        },
    );
    // exactly 10% errors, every battery and latency NULL
    add(
        "B-critical",
        10,
        1,
        s + Duration::seconds(30),
        60_000,
        &|_| None,
        &|_| None,
    );
    add(
        "C-ok",
        50,
        0,
        s + Duration::seconds(1),
        10_000,
        &|i| Some(99.5 - i as f32 * 0.25),
        &|i| Some(3.0 + i as f32),
    );
    // the last event a microsecond before E: last_event_at truncates to 10:14:59
    add(
        "D-third",
        1,
        1,
        e - Duration::microseconds(1),
        0,
        &|_| Some(12.5),
        &|_| Some(250.0),
    );
    add(
        "D-third",
        2,
        0,
        s + Duration::minutes(3),
        1_000,
        &|_| Some(80.0),
        &|_| Some(5.5),
    );
    add(
        "E-inactive",
        5,
        1,
        s + Duration::minutes(1),
        1_000,
        &|_| Some(50.0),
        &|_| Some(1.0),
    );
    // just under 2% (1/51) and just under 10% (9/91)
    add(
        "G-just-ok",
        51,
        1,
        s + Duration::minutes(2),
        2_000,
        &|_| Some(60.0),
        &|i| Some(i as f32),
    );
    add(
        "H-just-warn",
        91,
        9,
        s + Duration::minutes(4),
        3_000,
        &|i| Some(i as f32),
        &|_| Some(7.0),
    );
    add(
        "GHOST-1",
        4,
        1,
        s + Duration::minutes(5),
        1_000,
        &|_| Some(10.0),
        &|_| None,
    );
    add(
        "GH'OST \"2\"",
        1,
        0,
        s + Duration::minutes(6),
        1_000,
        &|_| None,
        &|_| None,
    );
    // outside the window: exactly at E, and before S; F-quiet only has these
    add("A-warn", 3, 3, e, 1_000, &|_| Some(1.0), &|_| Some(1.0));
    add(
        "F-quiet",
        2,
        0,
        s - Duration::seconds(1),
        0,
        &|_| Some(1.0),
        &|_| Some(1.0),
    );
    add(
        "F-quiet",
        1,
        0,
        e + Duration::minutes(1),
        0,
        &|_| Some(1.0),
        &|_| Some(1.0),
    );
    Sources {
        models,
        customers,
        prostheses,
        events,
    }
}

/// The contract's metrics, computed from raw rows.
#[derive(Debug, Clone, PartialEq)]
struct Expected {
    user_id: u64,
    chip_id: String,
    model_name: String,
    region: String,
    events: u64,
    errors: u64,
    cycles: u64,
    error_rate: f64,
    utilization: f64,
    avg_battery_pct: Option<f64>,
    p95_latency_ms: Option<f64>,
    last_event_at: i64,
    health: &'static str,
}

fn percentile_cont(mut values: Vec<f64>, p: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let pos = p * (values.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    Some(values[lo] + (pos - lo as f64) * (values[hi] - values[lo]))
}

fn expected(src: &Sources) -> (Vec<Expected>, BTreeMap<String, &'static str>) {
    let (s, e) = window();
    let mut by_chip: BTreeMap<String, Vec<&Event>> = BTreeMap::new();
    for ev in src.events.iter().filter(|ev| ev.ts >= s && ev.ts < e) {
        by_chip.entry(ev.chip.clone()).or_default().push(ev);
    }
    let mut rows = Vec::new();
    let mut quarantined = BTreeMap::new();
    for (chip, evs) in &by_chip {
        let Some(p) = src.prostheses.iter().find(|p| p.chip == chip) else {
            quarantined.insert(chip.clone(), "unknown_chip");
            continue;
        };
        if !p.active {
            quarantined.insert(chip.clone(), "inactive_chip");
            continue;
        }
        let c = src.customers.iter().find(|c| c.id == p.customer).unwrap();
        let m = src.models.iter().find(|m| m.0 == p.model).unwrap();
        let events = evs.len() as u64;
        let errors = evs.iter().filter(|e| e.is_error).count() as u64;
        let cycles: u64 = evs.iter().map(|e| e.cycles as u64).sum();
        let batteries: Vec<f64> = evs
            .iter()
            .filter_map(|e| e.battery.map(f64::from))
            .collect();
        let latencies: Vec<f64> = evs
            .iter()
            .filter_map(|e| e.latency.map(f64::from))
            .collect();
        let error_rate = errors as f64 / events as f64;
        rows.push(Expected {
            user_id: c.user_id as u64,
            chip_id: chip.clone(),
            model_name: m.1.to_string(),
            region: c.region.to_string(),
            events,
            errors,
            cycles,
            error_rate,
            utilization: cycles as f64 / (m.2 as f64 * (e - s).num_seconds() as f64 / 86400.0),
            avg_battery_pct: (!batteries.is_empty())
                .then(|| batteries.iter().sum::<f64>() / batteries.len() as f64),
            p95_latency_ms: percentile_cont(latencies, 0.95),
            last_event_at: evs.iter().map(|e| e.ts).max().unwrap().timestamp(),
            health: if error_rate >= 0.10 {
                "critical"
            } else if error_rate >= 0.02 {
                "warn"
            } else {
                "ok"
            },
        });
    }
    (rows, quarantined)
}

fn schema_part(tag: &str) -> String {
    let start = SCHEMA.find(tag).unwrap();
    let rest = &SCHEMA[start + tag.len()..];
    rest.split("-- @").next().unwrap().to_string()
}

async fn seed(crm_url: &str, telemetry_url: &str, src: &Sources) {
    let mut crm = PgConnection::connect(crm_url).await.unwrap();
    sqlx::raw_sql(&schema_part("@crm"))
        .execute(&mut crm)
        .await
        .unwrap();
    let at = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
    for (id, name, rated) in &src.models {
        sqlx::query("INSERT INTO prosthesis_models VALUES ($1, $2, 'arm', $3, $4)")
            .bind(id)
            .bind(name)
            .bind(rated)
            .bind(at)
            .execute(&mut crm)
            .await
            .unwrap();
    }
    for c in &src.customers {
        sqlx::query("INSERT INTO customers VALUES ($1, $2, $3, $4, $5)")
            .bind(c.id)
            .bind(c.user_id)
            .bind(c.name)
            .bind(c.region)
            .bind(at)
            .execute(&mut crm)
            .await
            .unwrap();
    }
    for (i, p) in src.prostheses.iter().enumerate() {
        sqlx::query("INSERT INTO prostheses VALUES ($1, $2, $3, $4, $5, $6, $7)")
            .bind(i as i64 + 1)
            .bind(p.chip)
            .bind(p.customer)
            .bind(p.model)
            .bind(at)
            .bind(p.active)
            .bind(at)
            .execute(&mut crm)
            .await
            .unwrap();
    }
    let mut tel = PgConnection::connect(telemetry_url).await.unwrap();
    sqlx::raw_sql(&schema_part("@telemetry"))
        .execute(&mut tel)
        .await
        .unwrap();
    for ev in &src.events {
        sqlx::query("INSERT INTO telemetry_events VALUES ($1, $2, 'step', $3, $4, $5, $6, $7)")
            .bind(&ev.chip)
            .bind(ev.ts)
            .bind(ev.is_error)
            .bind(ev.is_error.then_some("E_MOTOR"))
            .bind(ev.cycles)
            .bind(ev.battery)
            .bind(ev.latency)
            .execute(&mut tel)
            .await
            .unwrap();
    }
}

struct Pipeline {
    home: tempfile::TempDir,
    dags: PathBuf,
    crm: String,
    telemetry: String,
    ch_db: String,
    reports: String,
    receiver: reports::Reports,
}

/// Copies `dags/` so a test can adjust the DAG (e.g. no retry delays) without touching the repo.
fn copy_dags(to: &Path, patch: impl Fn(String) -> String) {
    let from = Path::new(env!("CARGO_MANIFEST_DIR")).join("dags");
    std::fs::create_dir_all(to.join("sql")).unwrap();
    for entry in std::fs::read_dir(from.join("sql")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join("sql").join(entry.file_name())).unwrap();
    }
    let dag = std::fs::read_to_string(from.join("prosthesis_stats.yaml")).unwrap();
    std::fs::write(to.join("prosthesis_stats.yaml"), patch(dag)).unwrap();
}

fn fast_retries(dag: String) -> String {
    dag.replace("retries: 3", "retries: 1")
        .replace("retry_delay: 30s", "retry_delay: 100ms")
}

async fn start_receiver(behaviour: reports::Behaviour) -> (String, reports::Reports) {
    let service = reports::Reports::new(behaviour);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let router = service.clone().router();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    (url, service)
}

impl Pipeline {
    async fn new(behaviour: reports::Behaviour, patch: impl Fn(String) -> String) -> Self {
        let home = tempfile::tempdir().unwrap();
        let dags = home.path().join("dags");
        copy_dags(&dags, patch);
        let (reports, receiver) = start_receiver(behaviour).await;
        Self {
            crm: common::fresh_pg_database().await,
            telemetry: common::fresh_pg_database().await,
            ch_db: common::fresh_clickhouse_database().await,
            dags,
            home,
            reports,
            receiver,
        }
    }

    async fn sluice(&self, home: &str, args: &[&str], env: &[(&str, String)]) -> Output {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_sluice"));
        cmd.args(args)
            .env("SLUICE_HOME", self.home.path().join(home))
            .env("SLUICE_DAGS_FOLDER", &self.dags)
            .env_remove("SLUICE_DATABASE_URL")
            .env("SLUICE_CONN_CRM", &self.crm)
            .env("SLUICE_CONN_TELEMETRY", &self.telemetry)
            .env(
                "SLUICE_CONN_CLICKHOUSE",
                format!(
                    "clickhouse://{}/{}",
                    common::clickhouse_http().trim_start_matches("http://"),
                    self.ch_db
                ),
            )
            .env("SLUICE_CONN_REPORTS", &self.reports);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().await.unwrap()
    }

    async fn run(&self, home: &str, env: &[(&str, String)]) -> Output {
        self.sluice(
            home,
            &[
                "dags",
                "test",
                "prosthesis_stats",
                "--logical-date",
                "2026-11-23T10:07:00Z",
            ],
            env,
        )
        .await
    }

    /// The reports service's counters.
    async fn stats(&self) -> Value {
        reqwest::get(format!("{}/stats", self.reports))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    async fn rows(&self, table: &str, final_: bool) -> Vec<Value> {
        self.select(table, if final_ { "FINAL" } else { "" }).await
    }

    /// Rows of `table` with a clause after its name (`FINAL WHERE …`), by chip.
    async fn select(&self, table: &str, clause: &str) -> Vec<Value> {
        let text = common::clickhouse(&format!(
            "SELECT * FROM {}.{table} {clause} ORDER BY chip_id FORMAT JSONEachRow",
            self.ch_db,
        ))
        .await;
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    async fn invalidations(&self) -> Vec<Value> {
        reqwest::get(format!("{}/invalidations", self.reports))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

fn text(o: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn as_u64(v: &Value) -> u64 {
    match v {
        Value::String(s) => s.parse().unwrap(),
        other => other.as_u64().unwrap(),
    }
}

fn as_f64(v: &Value) -> Option<f64> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(s.parse().unwrap()),
        other => Some(other.as_f64().unwrap()),
    }
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

fn seconds(v: &Value) -> i64 {
    chrono::NaiveDateTime::parse_from_str(v.as_str().unwrap(), "%Y-%m-%d %H:%M:%S")
        .unwrap()
        .and_utc()
        .timestamp()
}

fn check_stats(rows: &[Value], expected: &[Expected]) -> u64 {
    let (s, e) = window();
    assert_eq!(rows.len(), expected.len(), "rows: {rows:#?}");
    let mut version = None;
    for (row, want) in rows.iter().zip(expected) {
        let ctx = format!("chip {}: {row}", want.chip_id);
        assert_eq!(as_u64(&row["user_id"]), want.user_id, "{ctx}");
        assert_eq!(row["chip_id"], want.chip_id.as_str(), "{ctx}");
        assert_eq!(row["model_name"], want.model_name.as_str(), "{ctx}");
        assert_eq!(row["region"], want.region.as_str(), "{ctx}");
        assert_eq!(seconds(&row["window_start"]), s.timestamp(), "{ctx}");
        assert_eq!(seconds(&row["window_end"]), e.timestamp(), "{ctx}");
        assert_eq!(as_u64(&row["events"]), want.events, "{ctx}");
        assert_eq!(as_u64(&row["errors"]), want.errors, "{ctx}");
        assert_eq!(as_u64(&row["cycles"]), want.cycles, "{ctx}");
        assert!(
            close(as_f64(&row["error_rate"]).unwrap(), want.error_rate),
            "{ctx}"
        );
        assert!(
            close(as_f64(&row["utilization"]).unwrap(), want.utilization),
            "{ctx}: want {}",
            want.utilization
        );
        match (as_f64(&row["avg_battery_pct"]), want.avg_battery_pct) {
            (Some(a), Some(b)) => assert!(close(a, b), "{ctx}: avg battery want {b}"),
            (a, b) => assert_eq!(a, b, "{ctx}"),
        }
        match (as_f64(&row["p95_latency_ms"]), want.p95_latency_ms) {
            (Some(a), Some(b)) => assert!(close(a, b), "{ctx}: p95 want {b}"),
            (a, b) => assert_eq!(a, b, "{ctx}"),
        }
        assert_eq!(seconds(&row["last_event_at"]), want.last_event_at, "{ctx}");
        assert_eq!(row["health"], want.health, "{ctx}");
        assert_eq!(as_u64(&row["_deleted"]), 0, "{ctx}");
        let v = as_u64(&row["_version"]);
        assert_eq!(*version.get_or_insert(v), v, "one load, one version");
    }
    version.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reference_pipeline_loads_exactly_the_contract() {
    let p = Pipeline::new(reports::Behaviour::default(), |d| d).await;
    let src = sources();
    seed(&p.crm, &p.telemetry, &src).await;
    let (mut want, quarantined) = expected(&src);
    want.sort_by(|a, b| a.chip_id.cmp(&b.chip_id));
    assert_eq!(want.len(), 6, "the data covers six attributable chips");
    assert_eq!(
        want.iter().map(|w| w.health).collect::<HashSet<_>>().len(),
        3
    );

    let out = p.run("first", &[]).await;
    assert!(out.status.success(), "{}", text(&out));
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let version = check_stats(&p.rows("user_prosthesis_stats", true).await, &want);
    assert!(
        version <= before && version > before - 600_000,
        "_version is the load's start in ms: {version}"
    );

    // Quarantine: every dropped aggregate, with its reason and the aggregate as JSON.
    let q = p.rows("etl_quarantine", true).await;
    let got: BTreeMap<String, String> = q
        .iter()
        .map(|r| {
            (
                r["chip_id"].as_str().unwrap().to_string(),
                r["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let wanted: BTreeMap<String, String> = quarantined
        .iter()
        .map(|(k, v)| (k.clone(), v.to_string()))
        .collect();
    assert_eq!(got, wanted);
    for row in &q {
        assert_eq!(row["dag_id"], "prosthesis_stats");
        assert_eq!(row["run_id"], "manual__2026-11-23T10:00:00+00:00");
        assert_eq!(seconds(&row["window_start"]), window().0.timestamp());
        let record: Value = serde_json::from_str(row["record"].as_str().unwrap()).unwrap();
        let chip = row["chip_id"].as_str().unwrap();
        assert_eq!(record["chip_id"], chip);
        let events = src
            .events
            .iter()
            .filter(|e| e.chip == chip && e.ts >= window().0 && e.ts < window().1)
            .count();
        assert_eq!(record["events"], events as u64, "{record}");
    }

    // One successful invalidation per distinct user, with exact ids and idempotency keys.
    let sent: Vec<Value> = reqwest::get(format!("{}/invalidations", p.reports))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let users: HashSet<u64> = want.iter().map(|w| w.user_id).collect();
    assert_eq!(sent.len(), users.len(), "{sent:#?}");
    for body in &sent {
        let user = body["user_id"].as_u64().unwrap();
        assert!(users.contains(&user), "{body}");
        assert_eq!(body["dag_id"], "prosthesis_stats");
        assert_eq!(body["run_id"], "manual__2026-11-23T10:00:00+00:00");
        assert_eq!(body["window_start"], "2026-11-23T10:00:00Z");
        assert_eq!(body["window_end"], "2026-11-23T10:15:00Z");
        assert_eq!(
            body["idempotency_key"],
            format!("manual__2026-11-23T10:00:00+00:00:{version}:{user}"),
            "the key names the load's version"
        );
    }
    assert!(users.contains(&(i64::MAX as u64)) && users.contains(&9_007_199_254_740_993));

    // A row written with a version far ahead of the clock (a host whose clock ran ahead, or
    // a clock stepped back since): the next load must still win under FINAL.
    let ahead = version + 1_000_000_000;
    common::clickhouse(&format!(
        "INSERT INTO {db}.user_prosthesis_stats SELECT user_id, chip_id, model_name, region, \
         window_start, window_end, toUInt64(999999), errors, cycles, error_rate, utilization, \
         avg_battery_pct, p95_latency_ms, last_event_at, health, toUInt64({ahead}), _deleted \
         FROM {db}.user_prosthesis_stats FINAL ORDER BY chip_id LIMIT 1",
        db = p.ch_db
    ))
    .await;

    // The same window again (a new attempt of the run): same rows under FINAL, a larger
    // version, and an invalidation per user with a key the first load did not use.
    let again = p.run("first", &[]).await;
    assert!(again.status.success(), "{}", text(&again));
    let second_version = check_stats(&p.rows("user_prosthesis_stats", true).await, &want);
    assert_eq!(
        second_version,
        ahead + 1,
        "the load writes above every version it found"
    );
    let log = p
        .sluice(
            "first",
            &[
                "tasks",
                "logs",
                "prosthesis_stats",
                "manual__2026-11-23T10:00:00+00:00",
                "load_stats",
            ],
            &[],
        )
        .await;
    assert!(
        text(&log).contains("is not past the table's latest _version"),
        "the try log says why the version is not the clock: {}",
        text(&log)
    );
    assert_eq!(
        p.rows("user_prosthesis_stats", false).await.len(),
        want.len() * 2 + 1,
        "every load is stored, FINAL keeps the latest"
    );
    let stats: Value = p.stats().await;
    assert_eq!(
        stats["duplicates"], 0,
        "a re-load is never taken for a retry: {stats}"
    );
    let sent: Vec<Value> = reqwest::get(format!("{}/invalidations", p.reports))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(sent.len(), users.len() * 2, "{sent:#?}");
    for user in &users {
        let key = format!("manual__2026-11-23T10:00:00+00:00:{second_version}:{user}");
        assert!(
            sent.iter().any(|b| b["idempotency_key"] == key.as_str()),
            "{key} missing"
        );
    }
    assert_eq!(
        p.rows("etl_quarantine", true).await.len(),
        quarantined.len()
    );
    let _ = &p.receiver;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rerun_tombstones_what_the_window_no_longer_has_and_invalidates_its_users() {
    let p = Pipeline::new(reports::Behaviour::default(), |d| d).await;
    let mut src = sources();
    seed(&p.crm, &p.telemetry, &src).await;
    let (mut first, _) = expected(&src);
    first.sort_by(|a, b| a.chip_id.cmp(&b.chip_id));
    let out = p.run("first", &[]).await;
    assert!(out.status.success(), "{}", text(&out));
    let first_version = check_stats(
        &p.select("user_prosthesis_stats", "FINAL WHERE _deleted = 0")
            .await,
        &first,
    );
    let first_keys: HashSet<String> = p
        .invalidations()
        .await
        .iter()
        .map(|b| b["idempotency_key"].as_str().unwrap().to_string())
        .collect();

    // Since then: both chips of user i64::MAX were deactivated, and D-third reported errors.
    let gone = ["C-ok", "G-just-ok"];
    let mut crm = PgConnection::connect(&p.crm).await.unwrap();
    for chip in gone {
        sqlx::query("UPDATE prostheses SET active = false WHERE chip_id = $1")
            .bind(chip)
            .execute(&mut crm)
            .await
            .unwrap();
        src.prostheses
            .iter_mut()
            .find(|x| x.chip == chip)
            .unwrap()
            .active = false;
    }
    let mut tel = PgConnection::connect(&p.telemetry).await.unwrap();
    for i in 0..5 {
        let ev = Event {
            chip: "D-third".into(),
            ts: window().0 + Duration::seconds(600 + i),
            is_error: true,
            cycles: 3,
            battery: None,
            latency: Some(120.0),
        };
        sqlx::query(
            "INSERT INTO telemetry_events VALUES ($1, $2, 'step', $3, 'E_MOTOR', $4, $5, $6)",
        )
        .bind(&ev.chip)
        .bind(ev.ts)
        .bind(ev.is_error)
        .bind(ev.cycles)
        .bind(ev.battery)
        .bind(ev.latency)
        .execute(&mut tel)
        .await
        .unwrap();
        src.events.push(ev);
    }
    let (mut second, quarantined) = expected(&src);
    second.sort_by(|a, b| a.chip_id.cmp(&b.chip_id));
    let d_before = first.iter().find(|w| w.chip_id == "D-third").unwrap();
    let d_after = second.iter().find(|w| w.chip_id == "D-third").unwrap();
    assert_eq!(
        d_after.errors,
        d_before.errors + 5,
        "the new errors are in the window"
    );
    assert_eq!(second.len(), first.len() - 2);

    // The same window again: the live rows are the window's current truth.
    let again = p.run("first", &[]).await;
    assert!(again.status.success(), "{}", text(&again));
    let live = p
        .select("user_prosthesis_stats", "FINAL WHERE _deleted = 0")
        .await;
    let second_version = check_stats(&live, &second);
    assert!(second_version > first_version);

    // The deactivated chips' keys have a tombstone at the new version, with their last values.
    let dead = p
        .select("user_prosthesis_stats", "FINAL WHERE _deleted = 1")
        .await;
    let dead_chips: Vec<&str> = dead
        .iter()
        .map(|r| r["chip_id"].as_str().unwrap())
        .collect();
    assert_eq!(dead_chips, gone, "{dead:#?}");
    for row in &dead {
        let was = first.iter().find(|w| w.chip_id == row["chip_id"]).unwrap();
        assert_eq!(as_u64(&row["_version"]), second_version, "{row}");
        assert_eq!(as_u64(&row["user_id"]), was.user_id, "{row}");
        assert_eq!(
            as_u64(&row["events"]),
            was.events,
            "the tombstone keeps the row it ends: {row}"
        );
        assert_eq!(seconds(&row["window_start"]), window().0.timestamp());
    }
    // ... and they are quarantined as inactive in the same window.
    let q = p.select("etl_quarantine", "FINAL").await;
    for chip in gone {
        assert_eq!(quarantined.get(chip), Some(&"inactive_chip"));
        assert!(
            q.iter()
                .any(|r| r["chip_id"] == chip && r["reason"] == "inactive_chip"),
            "{chip} not quarantined: {q:#?}"
        );
    }

    // Every user with a row or a tombstone got an invalidation with a key the first run did not use.
    let sent = p.invalidations().await;
    let users: HashSet<u64> = first.iter().map(|w| w.user_id).collect();
    assert!(users.contains(&(i64::MAX as u64)));
    assert!(
        !second.iter().any(|w| w.user_id == i64::MAX as u64),
        "only tombstones left for this user"
    );
    for user in &users {
        let key = format!("manual__2026-11-23T10:00:00+00:00:{second_version}:{user}");
        assert!(!first_keys.contains(&key));
        assert!(
            sent.iter().any(|b| b["idempotency_key"] == key.as_str()),
            "{key} missing from {sent:#?}"
        );
    }
    assert_eq!(sent.len(), users.len() * 2, "{sent:#?}");

    // Once more without a change: no new tombstone, the old ones stay, and their user is still told.
    let third = p.run("first", &[]).await;
    assert!(third.status.success(), "{}", text(&third));
    let third_version = check_stats(
        &p.select("user_prosthesis_stats", "FINAL WHERE _deleted = 0")
            .await,
        &second,
    );
    let all_dead = p
        .select("user_prosthesis_stats", "WHERE _deleted = 1")
        .await;
    assert_eq!(
        all_dead.len(),
        2,
        "a tombstone is written once: {all_dead:#?}"
    );
    let sent = p.invalidations().await;
    let key = format!(
        "manual__2026-11-23T10:00:00+00:00:{third_version}:{}",
        i64::MAX
    );
    assert!(
        sent.iter().any(|b| b["idempotency_key"] == key.as_str()),
        "{key}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_is_unavailable_at_first_still_gets_every_user() {
    let p = Pipeline::new(
        reports::Behaviour {
            fail_first: 3,
            ..Default::default()
        },
        fast_retries,
    )
    .await;
    let src = sources();
    seed(&p.crm, &p.telemetry, &src).await;
    let out = p.run("home", &[]).await;
    assert!(out.status.success(), "{}", text(&out));
    let stats: Value = p.stats().await;
    assert_eq!(stats["unavailable"], 3);
    assert_eq!(stats["users"], 3, "{stats}");
    assert_eq!(stats["invalidations"], 3, "each user exactly once: {stats}");
    assert!(
        stats["per_user"]
            .as_object()
            .unwrap()
            .values()
            .all(|n| n == 1),
        "{stats}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_is_down_fails_fast_and_a_retry_delivers_once_it_is_back() {
    let p = Pipeline::new(reports::Behaviour::default(), |d| {
        d.replace("retry_delay: 30s", "retry_delay: 1s").replace(
            "backoff: 200ms",
            "backoff: 200ms\n      breaker_cooldown: 1s",
        )
    })
    .await;
    let src = sources();
    seed(&p.crm, &p.telemetry, &src).await;
    // A port nobody listens on yet.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let down = [("SLUICE_CONN_REPORTS", format!("http://127.0.0.1:{port}"))];
    let first_try = p.home.path().join(
        "home/logs/prosthesis_stats/manual__2026-11-23T10:00:00+00:00/invalidate_reports/1.log",
    );
    let receiver = async {
        // Once the first try has failed, the receiver comes back on that port.
        let waited = std::time::Instant::now();
        while !std::fs::read_to_string(&first_try)
            .unwrap_or_default()
            .contains("deliveries failed")
        {
            assert!(
                waited.elapsed() < std::time::Duration::from_secs(60),
                "the first try never ended"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let service = reports::Reports::new(reports::Behaviour::default());
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        let router = service.clone().router();
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        service
    };
    let (out, service) = tokio::join!(p.run("home", &down), receiver);
    assert!(out.status.success(), "{}", text(&out));

    // The first try: failed within seconds, naming the connection, without using every attempt.
    let log = std::fs::read_to_string(&first_try).unwrap();
    assert!(
        log.contains("connection `reports`: circuit breaker open after 5 consecutive failures"),
        "{log}"
    );
    assert!(
        log.contains("the circuit breaker of connection `reports` is open"),
        "{log}"
    );
    let stamp =
        |line: &str| chrono::DateTime::parse_from_rfc3339(line.split(' ').next().unwrap()).unwrap();
    let lines: Vec<&str> = log.lines().collect();
    let took = stamp(lines.last().unwrap()) - stamp(lines[0]);
    assert!(
        took < chrono::Duration::seconds(10),
        "the first try took {took}: {log}"
    );

    // A later try delivered every user exactly once.
    let _ = service;
    let stats: Value = reqwest::get(format!("http://127.0.0.1:{port}/stats"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let users: HashSet<u64> = expected(&src).0.iter().map(|w| w.user_id).collect();
    assert_eq!(stats["invalidations"], users.len(), "{stats}");
    assert_eq!(stats["duplicates"], 0, "{stats}");
    assert_eq!(
        stats["requests"],
        users.len(),
        "one request per user once it was back: {stats}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_sends_only_the_users_this_attempt_has_not_delivered() {
    // User 42 is refused (503) 8 times: more than one try's 6 attempts per user.
    let behaviour = reports::Behaviour {
        flaky_users: [(42u64, 8u64)].into_iter().collect(),
        ..Default::default()
    };
    let p = Pipeline::new(behaviour, |d| {
        fast_retries(d).replace("backoff: 200ms", "backoff: 10ms\n      breaker_failures: 0")
    })
    .await;
    let src = sources();
    seed(&p.crm, &p.telemetry, &src).await;
    let out = p.run("home", &[]).await;
    assert!(out.status.success(), "{}", text(&out));
    let stats: Value = p.stats().await;
    let per_user = &stats["requests_per_user"];
    assert_eq!(
        per_user["42"], 9,
        "6 refused in try 1, 2 refused and 1 taken in try 2: {stats}"
    );
    let others: Vec<u64> = per_user
        .as_object()
        .unwrap()
        .iter()
        .filter(|(user, _)| *user != "42")
        .map(|(_, n)| n.as_u64().unwrap())
        .collect();
    assert_eq!(
        others,
        [1, 1],
        "the retry did not send the delivered users again: {stats}"
    );
    assert_eq!(stats["duplicates"], 0, "{stats}");

    // The ledger says what happened, from the CLI and the API's shape alike.
    let run = "manual__2026-11-23T10:00:00+00:00";
    let ledger = p
        .sluice(
            "home",
            &[
                "tasks",
                "deliveries",
                "prosthesis_stats",
                run,
                "invalidate_reports",
                "--json",
            ],
            &[],
        )
        .await;
    let ledger: Value = serde_json::from_slice(&ledger.stdout).unwrap();
    assert_eq!(
        (&ledger["attempt"], &ledger["delivered"], &ledger["failed"]),
        (&Value::from(1), &Value::from(3), &Value::from(0)),
        "{ledger}"
    );
    let log = p
        .sluice(
            "home",
            &[
                "tasks",
                "logs",
                "prosthesis_stats",
                run,
                "invalidate_reports",
            ],
            &[],
        )
        .await;
    assert!(
        text(&log).contains("2 of 3 item(s) were delivered by an earlier try of this attempt"),
        "{}",
        text(&log)
    );

    // A new attempt of the run sends to everyone again (with new keys: a new load).
    let again = p.run("home", &[]).await;
    assert!(again.status.success(), "{}", text(&again));
    let stats: Value = p.stats().await;
    assert_eq!(stats["invalidations"], 6, "{stats}");
    assert_eq!(stats["duplicates"], 0, "{stats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_rejects_a_user_fails_the_task_with_the_counts() {
    let behaviour = reports::Behaviour {
        reject_users: [42u64].into_iter().collect(),
        ..Default::default()
    };
    let p = Pipeline::new(behaviour, fast_retries).await;
    let src = sources();
    seed(&p.crm, &p.telemetry, &src).await;
    let out = p.run("home", &[]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let log = text(&out);
    assert!(
        log.contains("1 of 3 deliveries failed (delivered 2)") && log.contains("42: HTTP 400"),
        "{log}"
    );
    assert!(log.contains("not retryable"), "a 400 is not retried: {log}");
    let stats: Value = p.stats().await;
    assert_eq!(
        stats["rejected"], 1,
        "the rejected user was tried once: {stats}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_that_is_down_fails_cleanly_and_loads_nothing() {
    let p = Pipeline::new(reports::Behaviour::default(), |d| {
        d.replace("retries: 3", "retries: 0")
    })
    .await;
    seed(&p.crm, &p.telemetry, &sources()).await;
    let out = p
        .run(
            "home",
            &[(
                "SLUICE_CONN_CRM",
                "postgres://etl:s3cret@127.0.0.1:9/crm".into(),
            )],
        )
        .await;
    assert_eq!(out.status.code(), Some(1));
    let log = text(&out);
    assert!(
        log.contains("extract_crm") && log.contains("connecting to crm"),
        "{log}"
    );
    assert!(!log.contains("s3cret"), "the password leaked: {log}");
    assert!(
        log.lines()
            .any(|l| l.contains("load_stats") && l.contains("upstream_failed")),
        "{log}"
    );
    let tables = common::clickhouse(&format!(
        "SELECT count() FROM system.tables WHERE database = '{}'",
        p.ch_db
    ))
    .await;
    assert_eq!(tables.trim(), "0", "nothing was created or loaded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clickhouse_down_fails_the_load_and_a_rerun_repairs_it() {
    let p = Pipeline::new(reports::Behaviour::default(), |d| {
        d.replace("retries: 3", "retries: 0")
    })
    .await;
    let src = sources();
    seed(&p.crm, &p.telemetry, &src).await;
    let down = [(
        "SLUICE_CONN_CLICKHOUSE",
        "clickhouse://127.0.0.1:9/default".to_string(),
    )];
    let out = p.run("first", &down).await;
    assert_eq!(out.status.code(), Some(1));
    let log = text(&out);
    assert!(
        log.contains("load_stats") && log.contains("cannot connect"),
        "{log}"
    );
    assert_eq!(
        p.receiver_count().await,
        0,
        "no invalidation for data that was not loaded"
    );
    let out = p.run("first", &[]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("starting attempt 2"), "{}", text(&out));
    let (mut want, _) = expected(&src);
    want.sort_by(|a, b| a.chip_id.cmp(&b.chip_id));
    check_stats(&p.rows("user_prosthesis_stats", true).await, &want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_table_that_does_not_match_is_refused_before_writing() {
    let p = Pipeline::new(reports::Behaviour::default(), |d| {
        d.replace("retries: 3", "retries: 0")
    })
    .await;
    seed(&p.crm, &p.telemetry, &sources()).await;
    common::clickhouse(&format!(
        "CREATE TABLE {}.user_prosthesis_stats (user_id UInt64, chip_id String, region UInt32, window_start DateTime, _version UInt64) ENGINE = ReplacingMergeTree(_version) ORDER BY (user_id, chip_id, window_start)",
        p.ch_db
    ))
    .await;
    let out = p.run("home", &[]).await;
    assert_eq!(out.status.code(), Some(1));
    let log = text(&out);
    assert!(
        log.contains("column `region`: the table's UInt32 cannot take values of type str"),
        "{log}"
    );
    assert!(
        log.contains("column `model_name` of `compute_metrics`'s table is not in the table"),
        "{log}"
    );
    assert_eq!(
        common::clickhouse(&format!(
            "SELECT count() FROM {}.user_prosthesis_stats",
            p.ch_db
        ))
        .await
        .trim(),
        "0"
    );
}

impl Pipeline {
    async fn receiver_count(&self) -> u64 {
        let stats: Value = reqwest::get(format!("{}/stats", self.reports))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        stats["requests"].as_u64().unwrap()
    }
}

/// Retries that come quickly: the links below are down for a second.
fn quick_retries(dag: String) -> String {
    dag.replace("retries: 3", "retries: 2")
        .replace("retry_delay: 30s", "retry_delay: 2s")
}

/// Each task's tries in a pipeline run, from its store.
async fn tries(p: &Pipeline, home: &str) -> BTreeMap<String, u32> {
    let store = common::sqlite_store(&p.home.path().join(home)).await;
    let runs = store
        .list_runs(&sluice_core::store::RunFilter::default())
        .await
        .unwrap();
    store
        .task_instances("prosthesis_stats", &runs[0].run_id)
        .await
        .unwrap()
        .into_iter()
        .map(|ti| {
            assert_eq!(ti.state, sluice_core::state::TaskState::Success, "{ti:?}");
            (ti.task_id, ti.try_number)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clickhouse_going_down_mid_load_is_retried_and_the_rows_equal_a_clean_run() {
    let p = Pipeline::new(reports::Behaviour::default(), quick_retries).await;
    let src = sources();
    seed(&p.crm, &p.telemetry, &src).await;
    // ClickHouse goes away in the middle of the load's INSERT body (at the row of chip
    // C-ok: the rows before it were sent), for a second.
    let ch = common::clickhouse_http();
    let link = support::FaultyLink::start(
        ch.trim_start_matches("http://"),
        "C-ok",
        std::time::Duration::from_secs(1),
    )
    .await;
    let via_link = [(
        "SLUICE_CONN_CLICKHOUSE",
        format!("clickhouse://{}/{}", link.addr, p.ch_db),
    )];
    let out = p.run("home", &via_link).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(link.was_cut(), "the load's rows went through the link");
    let tries = tries(&p, "home").await;
    assert_eq!(
        tries["load_stats"], 2,
        "the load was retried once: {tries:?}"
    );
    assert_eq!(tries["extract_telemetry"], 1, "{tries:?}");
    let (mut want, _) = expected(&src);
    want.sort_by(|a, b| a.chip_id.cmp(&b.chip_id));
    check_stats(&p.rows("user_prosthesis_stats", true).await, &want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_going_down_mid_extract_is_retried_and_the_rows_equal_a_clean_run() {
    let p = Pipeline::new(reports::Behaviour::default(), quick_retries).await;
    let src = sources();
    seed(&p.crm, &p.telemetry, &src).await;
    // The telemetry server goes away as the extract's COPY is sent, for a second.
    let url = url::Url::parse(&p.telemetry).unwrap();
    let server = format!("{}:{}", url.host_str().unwrap(), url.port().unwrap());
    let link =
        support::FaultyLink::start(&server, "COPY (", std::time::Duration::from_secs(1)).await;
    let mut via = url.clone();
    let (host, port) = link.addr.split_once(':').unwrap();
    via.set_host(Some(host)).unwrap();
    via.set_port(Some(port.parse().unwrap())).unwrap();
    // The link finds the query in the bytes it forwards: not over TLS, which the test
    // server offers and sslmode's default (`prefer`) would take.
    via.set_query(Some("sslmode=disable"));
    let out = p
        .run("home", &[("SLUICE_CONN_TELEMETRY", via.to_string())])
        .await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(link.was_cut(), "the extract's COPY went through the link");
    let tries = tries(&p, "home").await;
    assert_eq!(
        tries["extract_telemetry"], 2,
        "the extract was retried once: {tries:?}"
    );
    assert_eq!(tries["load_stats"], 1, "{tries:?}");
    let (mut want, _) = expected(&src);
    want.sort_by(|a, b| a.chip_id.cmp(&b.chip_id));
    check_stats(&p.rows("user_prosthesis_stats", true).await, &want);
}

/// Each task of the reference DAG in a queue of its own.
fn queue_per_task(dag: String) -> String {
    dag.lines()
        .map(|line| match line.strip_prefix("  - id: ") {
            Some(id) => format!("{line}\n    queue: {id}"),
            None => line.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reference_pipeline_runs_with_each_task_on_its_own_worker() {
    let p = Pipeline::new(reports::Behaviour::default(), queue_per_task).await;
    let src = sources();
    seed(&p.crm, &p.telemetry, &src).await;
    let database = common::fresh_pg_database().await;
    // Every process has its own home, as on machines of their own: artifacts and logs meet
    // only in the shared storage (a bucket on the S3 server).
    let bucket = common::Bucket::fresh().await;
    let home = |name: &str| p.home.path().join(name);
    let command = |home_name: &str, args: &[&str]| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"));
        cmd.args(args)
            .env("SLUICE_HOME", home(home_name))
            .env("SLUICE_DAGS_FOLDER", &p.dags)
            .env("SLUICE_DATABASE_URL", &database)
            .env("SLUICE_STORAGE_URL", bucket.url("sluice"))
            .envs(bucket.aws_env())
            .env("SLUICE_CONN_CRM", &p.crm)
            .env("SLUICE_CONN_TELEMETRY", &p.telemetry)
            .env(
                "SLUICE_CONN_CLICKHOUSE",
                format!(
                    "clickhouse://{}/{}",
                    common::clickhouse_http().trim_start_matches("http://"),
                    p.ch_db
                ),
            )
            .env("SLUICE_CONN_REPORTS", &p.reports)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        cmd
    };
    let tasks = [
        "extract_crm",
        "extract_telemetry",
        "compute_metrics",
        "quarantine",
        "load_stats",
        "load_quarantine",
        "invalidate_reports",
        "check_window",
    ];
    // Killed when dropped, whatever happens to the test.
    let mut children = vec![support::Process(
        command("scheduler", &["scheduler", "--executor", "workers"])
            .spawn()
            .unwrap(),
    )];
    for task in tasks {
        children.push(support::Process(
            command(
                &format!("w-{task}"),
                &["worker", "--name", &format!("w-{task}"), "--queues", task],
            )
            .spawn()
            .unwrap(),
        ));
    }
    let trigger = command(
        "scheduler",
        &[
            "dags",
            "trigger",
            "prosthesis_stats",
            "--logical-date",
            "2026-11-23T10:07:00Z",
        ],
    )
    .status()
    .unwrap();
    assert!(trigger.success());
    let store = sluice_core::store::open(&database).await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let run = loop {
        let runs = store
            .list_runs(&sluice_core::store::RunFilter::default())
            .await
            .unwrap();
        // The triggered run (the schedule adds one of its own for the latest interval).
        if let Some(run) = runs
            .into_iter()
            .find(|r| r.run_type == sluice_core::store::RunType::Manual && r.state.is_finished())
        {
            break run;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the run did not finish"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    drop(children);
    assert_eq!(run.state, sluice_core::state::RunState::Success);
    for ti in store
        .task_instances("prosthesis_stats", &run.run_id)
        .await
        .unwrap()
    {
        assert_eq!(
            ti.worker.as_deref(),
            Some(format!("w-{}", ti.task_id).as_str()),
            "each task ran on its own worker: {ti:?}"
        );
    }
    // The same rows as the in-process run's contract: the independent computation.
    let (mut want, _) = expected(&src);
    want.sort_by(|a, b| a.chip_id.cmp(&b.chip_id));
    check_stats(&p.rows("user_prosthesis_stats", true).await, &want);
    assert!(p.receiver_count().await > 0, "the invalidations were sent");

    // compute_metrics read the extracts through the bucket: its worker downloaded them into
    // its own cache, and the other extract's worker never saw extract_crm's table.
    let run_dir = |worker: &str| {
        home(worker)
            .join("artifacts/prosthesis_stats")
            .join(&run.run_id)
    };
    assert!(run_dir("w-compute_metrics")
        .join("extract_crm.try1.arrow")
        .exists());
    assert!(!run_dir("w-extract_telemetry")
        .join("extract_crm.try1.arrow")
        .exists());
    let objects = bucket.keys("sluice/artifacts/prosthesis_stats/").await;
    assert!(
        objects
            .iter()
            .any(|k| k.ends_with("/extract_crm.try1.arrow")),
        "{objects:?}"
    );

    // A web server with a home of its own serves every try's log from the bucket.
    let mut web = command("web", &["webserver", "--port", "0"]);
    let (_web, base) = support::start_webserver(&mut web);
    let client = reqwest::Client::new();
    for task in tasks {
        let log = client
            .get(format!(
                "{base}/api/v1/dags/prosthesis_stats/dagRuns/{}/taskInstances/{task}/logs/1",
                url::form_urlencoded::byte_serialize(run.run_id.as_bytes()).collect::<String>()
            ))
            .header("accept", "text/plain")
            .send()
            .await
            .unwrap();
        assert_eq!(log.status(), 200, "{task}");
        let text = log.text().await.unwrap();
        assert!(
            text.contains(&format!("worker w-{task} on")) && text.contains("try succeeded"),
            "{task}'s log, served by the web server: {text}"
        );
    }
    assert!(
        !home("web").join("logs").exists(),
        "no log was on the web server's disk"
    );
}

/// Clean sources: `chips` known, active chips with a few errors each (all `ok`), and
/// `unknown` more chips the CRM has never heard of.
fn generated(chips: usize, unknown: usize) -> Sources {
    let (s, _) = window();
    let leak = |text: String| -> &'static str { Box::leak(text.into_boxed_str()) };
    let customers = (0..chips)
        .map(|i| Customer {
            id: i as i64 + 1,
            user_id: 1000 + i as i64,
            name: leak(format!("customer {i}")),
            region: "eu-west",
        })
        .collect();
    let prostheses = (0..chips)
        .map(|i| Prosthesis {
            chip: leak(format!("K-{i:03}")),
            customer: i as i64 + 1,
            model: 1,
            active: true,
        })
        .collect();
    let mut events = Vec::new();
    let names: Vec<String> = (0..chips)
        .map(|i| format!("K-{i:03}"))
        .chain((0..unknown).map(|i| format!("U-{i:03}")))
        .collect();
    for chip in names {
        for n in 0..100 {
            events.push(Event {
                chip: chip.clone(),
                ts: s + Duration::seconds(n * 5),
                is_error: n == 0,
                cycles: 2,
                battery: Some(60.0),
                latency: Some(12.0),
            });
        }
    }
    Sources {
        models: vec![(1, "Grip", 1000)],
        customers,
        prostheses,
        events,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_windows_checks_pass_on_clean_data_and_alert_when_a_third_of_the_chips_are_unknown() {
    let (alerts, received) = support::receiver().await;
    // Clean: 30 known chips, nothing quarantined, nothing critical. A check of the loaded
    // table in ClickHouse counts the window's rows (the run's values bound as literals).
    let with_loaded_check = |dag: String| {
        dag + "\n  - id: check_loaded\n    operator: check\n    depends_on: load_stats\n    config:\n      checks:\n        - name: rows_loaded_for_the_window\n          clickhouse:\n            conn: clickhouse\n            query: SELECT count() FROM user_prosthesis_stats FINAL WHERE window_start = parseDateTimeBestEffort({data_interval_start}) AND _deleted = 0\n            min: 1\n"
    };
    let clean = Pipeline::new(reports::Behaviour::default(), with_loaded_check).await;
    seed(&clean.crm, &clean.telemetry, &generated(30, 0)).await;
    let out = clean
        .run("clean", &[("SLUICE_CONN_ALERTS", alerts.clone())])
        .await;
    assert!(out.status.success(), "{}", text(&out));
    let show = clean
        .sluice(
            "clean",
            &[
                "runs",
                "show",
                "manual__2026-11-23T10:00:00+00:00",
                "--json",
            ],
            &[],
        )
        .await;
    let show: Value = serde_json::from_slice(&show.stdout).unwrap();
    let check = show["task_instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["task_id"] == "check_window")
        .unwrap()
        .clone();
    assert_eq!(check["state"], "success", "{check:#}");
    let results = check["output"]["values"]["checks"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(results.len(), 3);
    for result in &results {
        assert_eq!(result["passed"], true, "{result:#}");
    }
    let measured = |name: &str| {
        results.iter().find(|r| r["name"] == name).unwrap()["measured"]
            .as_f64()
            .unwrap()
    };
    assert_eq!(measured("quarantined_share"), 0.0);
    assert_eq!(measured("every_row_has_a_user"), 0.0);
    let loaded = show["task_instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["task_id"] == "check_loaded")
        .unwrap()["output"]["values"]["checks"][0]
        .clone();
    assert_eq!(loaded["kind"], "clickhouse");
    assert_eq!(loaded["measured"], 30.0, "{loaded:#}");
    assert_eq!(loaded["passed"], true);
    assert!(
        received.events().is_empty(),
        "no alert on clean data: {:?}",
        received.0.lock().unwrap()
    );

    // A third of the chips unknown: the share of quarantined aggregates is a third, over the
    // quarter it may be; the check warns, the alerts channel hears it, the loads go on.
    let dirty = Pipeline::new(reports::Behaviour::default(), |d| d).await;
    seed(&dirty.crm, &dirty.telemetry, &generated(30, 15)).await;
    let out = dirty
        .run("dirty", &[("SLUICE_CONN_ALERTS", alerts.clone())])
        .await;
    assert!(
        out.status.success(),
        "a warning does not fail the run: {}",
        text(&out)
    );
    assert!(
        text(&out).contains("notification task_warned to alerts: sent"),
        "{}",
        text(&out)
    );
    assert_eq!(received.events(), ["task_warned"]);
    let (alert, _) = received.0.lock().unwrap()[0].clone();
    assert_eq!(alert["task_id"], "check_window");
    let reason = alert["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("quarantined_share: measured 0.333")
            && reason.contains("expected ≤ 0.25"),
        "{alert:#}"
    );
    assert!(alert["text"]
        .as_str()
        .unwrap()
        .contains("succeeded with warnings"));
    assert_eq!(
        dirty.rows("user_prosthesis_stats", true).await.len(),
        30,
        "loaded all the same"
    );
}
