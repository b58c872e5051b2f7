//! `/metrics` as Prometheus scrapes it from a running `sluice standalone`: the text passes
//! `promtool check metrics` (Debian's prometheus package, via `scripts/services`), task and
//! run counters are labelled by DAG, task and state and only grow from one run to the next,
//! and a scheduler without a web server serves its own at `SLUICE_METRICS_ADDR`.

#[path = "support/mod.rs"]
mod support;

use std::io::Write;
use std::time::{Duration, Instant};

const DAG: &str = "dag_id: measured\ntasks:\n  - {id: extract, operator: shell, config: {command: 'echo rows'}}\n  - {id: load, operator: noop, depends_on: extract}\n  - {id: flaky, operator: shell, retries: 1, retry_delay: 10ms, config: {command: 'exit 1'}}\n";

async fn scrape(url: &str) -> String {
    reqwest::get(url).await.unwrap().text().await.unwrap()
}

/// The value of the sample `name{labels}` (labels as written), if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
}

fn promtool_check(text: &str) {
    let promtool = std::env::var("SLUICE_TEST_PROMTOOL").expect(
        "SLUICE_TEST_PROMTOOL is not set: run the suite with scripts/test, or `eval \"$(scripts/services up)\"` first",
    );
    let mut child = std::process::Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics:\n{}{}\n--- scraped:\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn run_to_the_end(dir: &std::path::Path, date: &str) {
    let out = support::sluice(dir)
        .args(["dags", "trigger", "measured", "--logical-date", date])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run_id = format!("manual__{date}").replace('Z', "+00:00");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let show = support::sluice(dir)
            .args(["runs", "show", &run_id, "--json"])
            .output()
            .unwrap();
        let show: serde_json::Value = serde_json::from_slice(&show.stdout).unwrap_or_default();
        if show["run"]["state"] == "failed" {
            return;
        }
        assert!(Instant::now() < deadline, "{show:#}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test]
async fn metrics_pass_promtool_and_counters_only_grow_across_runs() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("dags")).unwrap();
    std::fs::write(dir.path().join("dags/measured.yaml"), DAG).unwrap();
    let mut cmd = support::sluice(dir.path());
    cmd.args(["standalone", "--port", "0"])
        .stdout(std::process::Stdio::null());
    let (_server, base) = support::start_webserver(&mut cmd);
    let url = format!("{base}/metrics");

    run_to_the_end(dir.path(), "2026-05-01T00:00:00Z");
    let first = scrape(&url).await;
    promtool_check(&first);
    run_to_the_end(dir.path(), "2026-05-02T00:00:00Z");
    let second = scrape(&url).await;
    promtool_check(&second);

    let series = [
        "sluice_task_instance_ends_total{dag_id=\"measured\",task_id=\"extract\",state=\"success\"}",
        "sluice_task_instance_ends_total{dag_id=\"measured\",task_id=\"flaky\",state=\"up_for_retry\"}",
        "sluice_task_instance_ends_total{dag_id=\"measured\",task_id=\"flaky\",state=\"failed\"}",
        "sluice_dag_run_ends_total{dag_id=\"measured\",state=\"failed\"}",
        "sluice_task_try_duration_seconds_count{dag_id=\"measured\",task_id=\"extract\"}",
        "sluice_dag_run_duration_seconds_count{dag_id=\"measured\",state=\"failed\"}",
    ];
    for series in series {
        let before = sample(&first, series).unwrap_or_else(|| panic!("no {series} in\n{first}"));
        let after = sample(&second, series).unwrap_or_else(|| panic!("no {series} in\n{second}"));
        assert_eq!((before, after), (1.0, 2.0), "{series}");
    }
    assert!(sample(
        &second,
        "sluice_task_scheduling_delay_seconds_count{dag_id=\"measured\"}"
    )
    .is_some_and(|n| n >= 6.0));
    assert!(sample(
        &second,
        "sluice_store_call_duration_seconds_count{op=\"transitions\"}"
    )
    .is_some_and(|n| n > 0.0));
    assert_eq!(sample(&second, "sluice_tries_running"), Some(0.0));
    assert_eq!(sample(&second, "sluice_metadatabase_up"), Some(1.0));
    examples_use_only_metrics_that_exist(&second);
}

fn promtool(args: &[&str]) {
    let promtool = std::env::var("SLUICE_TEST_PROMTOOL").expect("SLUICE_TEST_PROMTOOL is not set");
    let out = std::process::Command::new(promtool)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool {args:?}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The alert rules and the Grafana dashboard in `examples/monitoring/` parse (promtool), and
/// every sluice metric they name is one a real scrape has: an example that silently watches
/// nothing is caught here.
fn examples_use_only_metrics_that_exist(scraped: &str) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/monitoring");
    promtool(&["check", "rules", dir.join("alerts.yml").to_str().unwrap()]);
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("grafana-dashboard.json")).unwrap())
            .unwrap();
    let exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().clone())
        .map(|t| t["expr"].as_str().unwrap().replace("$dag", ".*"))
        .collect();
    // The dashboard's queries, checked as recording rules.
    let rules: String = exprs
        .iter()
        .enumerate()
        .map(|(i, e)| {
            format!(
                "      - record: dashboard:q{i}\n        expr: {}\n",
                serde_json::to_string(e).unwrap()
            )
        })
        .collect();
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        file.path(),
        format!("groups:\n  - name: dashboard\n    rules:\n{rules}"),
    )
    .unwrap();
    promtool(&["check", "rules", file.path().to_str().unwrap()]);
    let alerts = std::fs::read_to_string(dir.join("alerts.yml")).unwrap();
    let text = format!("{alerts}\n{}", exprs.join("\n"));
    let mut names: Vec<&str> = text
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("sluice_"))
        .collect();
    names.sort();
    names.dedup();
    assert!(names.len() >= 10, "{names:?}");
    // A family without samples yet is not written: those of this process count as present.
    let families = sluice_core::metrics::sample_names();
    for name in names {
        let present = families.iter().any(|f| f == name)
            || scraped.lines().any(|l| {
                let l = l.strip_prefix("# TYPE ").unwrap_or(l);
                l.starts_with(name) && l[name.len()..].starts_with(['{', ' '])
            });
        assert!(
            present,
            "{name} is named in examples/monitoring but no scrape has it"
        );
    }
}

#[tokio::test]
async fn a_scheduler_serves_its_own_metrics_at_sluice_metrics_addr() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("dags")).unwrap();
    std::fs::write(dir.path().join("dags/measured.yaml"), DAG).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let _scheduler = support::Process(
        support::sluice(dir.path())
            .arg("scheduler")
            .env("SLUICE_METRICS_ADDR", format!("127.0.0.1:{port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    run_to_the_end(dir.path(), "2026-05-03T00:00:00Z");
    let text = scrape(&format!("http://127.0.0.1:{port}/metrics")).await;
    promtool_check(&text);
    assert_eq!(
        sample(
            &text,
            "sluice_dag_run_ends_total{dag_id=\"measured\",state=\"failed\"}"
        ),
        Some(1.0),
        "{text}"
    );
}
