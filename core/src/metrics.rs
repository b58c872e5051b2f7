//! Prometheus metrics of this process (prometheus-client): cumulative counters and histograms,
//! labelled by DAG and task, counted where the work happens: a task's state change in the
//! process that wrote it (a local driver, or the worker that ran the try), a run's end in its
//! driver, a notification in the scheduler that sent it. Every sluice process serves its own:
//! the web server at `/metrics`, a scheduler or worker at `SLUICE_METRICS_ADDR`; Prometheus
//! sums them. A scrape reads no table: it costs the same whatever the store holds.

use std::sync::OnceLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// A task's labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TaskLabels {
    /// The DAG.
    pub dag_id: String,
    /// The task.
    pub task_id: String,
}

/// A task's end.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TaskEndLabels {
    /// The DAG.
    pub dag_id: String,
    /// The task.
    pub task_id: String,
    /// `success`, `failed`, `up_for_retry`, `skipped`, `upstream_failed` or `cancelled`.
    pub state: String,
}

/// A run's end.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RunLabels {
    /// The DAG.
    pub dag_id: String,
    /// `success`, `failed` or `cancelled`.
    pub state: String,
}

/// A DAG.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DagLabels {
    /// The DAG.
    pub dag_id: String,
}

/// An outcome (a notification's, a delivery's).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// What happened.
    pub outcome: String,
}

/// A store call.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StoreLabels {
    /// Which call (`transitions`, `claim_tries`, …).
    pub op: String,
}

/// An item-by-item delivery's outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeliveryLabels {
    /// The DAG.
    pub dag_id: String,
    /// The task.
    pub task_id: String,
    /// `delivered` or `failed`.
    pub outcome: String,
}

/// A data check's result.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CheckLabels {
    /// The DAG.
    pub dag_id: String,
    /// The check task.
    pub task_id: String,
    /// The check's name.
    pub check: String,
    /// `passed` or `warned`.
    pub outcome: String,
}

/// Writes metrics that live outside the core (an operator's, such as the webhooks' circuit
/// breakers), registered by the program that links them.
pub type Collector = fn(&mut String);

fn collectors() -> &'static std::sync::Mutex<Vec<Collector>> {
    static COLLECTORS: OnceLock<std::sync::Mutex<Vec<Collector>>> = OnceLock::new();
    COLLECTORS.get_or_init(Default::default)
}

/// Adds `collector` to every scrape of this process.
pub fn add_collector(collector: Collector) {
    collectors()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(collector);
}

/// Every metric this process records.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Task state changes to an end (or a retry), by DAG, task and state.
    pub task_ends: Family<TaskEndLabels, Counter>,
    /// How long tries ran, by DAG and task.
    pub try_seconds: Family<TaskLabels, Histogram>,
    /// From queued to running, by DAG.
    pub scheduling_delay_seconds: Family<DagLabels, Histogram>,
    /// Runs that ended, by DAG and state.
    pub run_ends: Family<RunLabels, Counter>,
    /// How long runs ran, by DAG and state.
    pub run_seconds: Family<RunLabels, Histogram>,
    /// Notifications by outcome (`sent`, `failed`, `gave_up`).
    pub notifications: Family<OutcomeLabels, Counter>,
    /// Item-by-item deliveries recorded in the ledger, by DAG, task and outcome.
    pub deliveries: Family<DeliveryLabels, Counter>,
    /// Latency of the metadata store's calls on the hot paths.
    pub store_seconds: Family<StoreLabels, Histogram>,
    /// How long a scheduler pass took (its lag behind the clock).
    pub scheduler_pass_seconds: Histogram,
    /// Runs missing their SLA, by DAG.
    pub sla_misses: Family<DagLabels, Counter>,
    /// Tries running in this process now.
    pub tries_running: Gauge,
    /// Data checks of successful `check` tries, by DAG, task, check and outcome.
    pub checks: Family<CheckLabels, Counter>,
}

/// Every family this module registers (without the `sluice_` prefix) and its type: empty
/// families are not written, so a dashboard or alert can be checked against this list.
pub const FAMILIES: &[(&str, &str)] = &[
    ("task_instance_ends", "counter"),
    ("task_try_duration_seconds", "histogram"),
    ("task_scheduling_delay_seconds", "histogram"),
    ("dag_run_ends", "counter"),
    ("dag_run_duration_seconds", "histogram"),
    ("notifications", "counter"),
    ("deliveries", "counter"),
    ("store_call_duration_seconds", "histogram"),
    ("scheduler_pass_duration_seconds", "histogram"),
    ("sla_misses", "counter"),
    ("tries_running", "gauge"),
    ("check_results", "counter"),
];

/// The sample names of [`FAMILIES`] as a scrape has them (`sluice_x_total`, `sluice_y_bucket`, …).
pub fn sample_names() -> Vec<String> {
    FAMILIES
        .iter()
        .flat_map(|(name, kind)| match *kind {
            "counter" => vec![format!("sluice_{name}_total")],
            "histogram" => ["bucket", "count", "sum"]
                .iter()
                .map(|s| format!("sluice_{name}_{s}"))
                .collect(),
            _ => vec![format!("sluice_{name}")],
        })
        .collect()
}

fn seconds_histogram() -> Histogram {
    // 1 ms to ~9 h.
    Histogram::new(exponential_buckets(0.001, 4.0, 13))
}

fn fast_histogram() -> Histogram {
    // 100 µs to ~1.6 s: store calls and scheduler passes.
    Histogram::new(exponential_buckets(0.0001, 2.5, 12))
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("sluice");
        let task_ends = Family::<TaskEndLabels, Counter>::default();
        registry.register(
            "task_instance_ends",
            "Task instances that reached an end state (or up_for_retry), by DAG, task and state",
            task_ends.clone(),
        );
        let try_seconds =
            Family::<TaskLabels, Histogram>::new_with_constructor(seconds_histogram as fn() -> _);
        registry.register(
            "task_try_duration_seconds",
            "How long tries ran, from start to end",
            try_seconds.clone(),
        );
        let scheduling_delay_seconds =
            Family::<DagLabels, Histogram>::new_with_constructor(seconds_histogram as fn() -> _);
        registry.register(
            "task_scheduling_delay_seconds",
            "How long a ready try waited to start (queued to running)",
            scheduling_delay_seconds.clone(),
        );
        let run_ends = Family::<RunLabels, Counter>::default();
        registry.register(
            "dag_run_ends",
            "Runs that ended, by DAG and state",
            run_ends.clone(),
        );
        let run_seconds =
            Family::<RunLabels, Histogram>::new_with_constructor(seconds_histogram as fn() -> _);
        registry.register(
            "dag_run_duration_seconds",
            "How long runs ran, from start to end",
            run_seconds.clone(),
        );
        let notifications = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "notifications",
            "Notification sends by outcome (sent, failed, gave_up)",
            notifications.clone(),
        );
        let deliveries = Family::<DeliveryLabels, Counter>::default();
        registry.register(
            "deliveries",
            "Items of item-by-item tasks recorded as delivered or failed",
            deliveries.clone(),
        );
        let store_seconds =
            Family::<StoreLabels, Histogram>::new_with_constructor(fast_histogram as fn() -> _);
        registry.register(
            "store_call_duration_seconds",
            "Latency of the metadata store's calls on the hot paths",
            store_seconds.clone(),
        );
        let scheduler_pass_seconds = fast_histogram();
        registry.register(
            "scheduler_pass_duration_seconds",
            "How long a scheduler pass took: how far the scheduler lags behind its clock",
            scheduler_pass_seconds.clone(),
        );
        let sla_misses = Family::<DagLabels, Counter>::default();
        registry.register(
            "sla_misses",
            "Runs found unfinished past their SLA",
            sla_misses.clone(),
        );
        let checks = Family::<CheckLabels, Counter>::default();
        registry.register(
            "check_results",
            "Data checks of successful check tries, by DAG, task, check and outcome (passed, warned)",
            checks.clone(),
        );
        let tries_running = Gauge::default();
        registry.register(
            "tries_running",
            "Tries running in this process",
            tries_running.clone(),
        );
        Self {
            registry,
            task_ends,
            try_seconds,
            scheduling_delay_seconds,
            run_ends,
            run_seconds,
            notifications,
            deliveries,
            store_seconds,
            scheduler_pass_seconds,
            sla_misses,
            tries_running,
            checks,
        }
    }

    /// The results in a successful `check` try's output (`values.checks`), if any.
    pub fn check_results(
        &self,
        dag_id: &str,
        task_id: &str,
        output: Option<&sluice_operator_api::TaskOutput>,
    ) {
        let Some(checks) = output
            .and_then(|o| o.values.get("checks"))
            .and_then(|c| c.as_array())
        else {
            return;
        };
        for check in checks {
            let passed = check["passed"].as_bool().unwrap_or(false);
            self.checks
                .get_or_create(&CheckLabels {
                    dag_id: dag_id.into(),
                    task_id: task_id.into(),
                    check: check["name"].as_str().unwrap_or_default().into(),
                    outcome: if passed { "passed" } else { "warned" }.into(),
                })
                .inc();
        }
    }

    /// The Prometheus text format (0.0.4) of every metric (no end-of-file marker: the caller
    /// may append its own families).
    pub fn encode(&self, out: &mut String) {
        let mut open_metrics = String::new();
        let _ =
            prometheus_client::encoding::text::encode_registry(&mut open_metrics, &self.registry);
        out.push_str(&classic_counters(&open_metrics));
        for collector in collectors()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            collector(out);
        }
    }

    /// A task's change to `state`, which ended a try that started at `started` (if it did).
    pub fn task_changed(
        &self,
        dag_id: &str,
        task_id: &str,
        state: crate::state::TaskState,
        queued: Option<chrono::DateTime<chrono::Utc>>,
        started: Option<chrono::DateTime<chrono::Utc>>,
        at: chrono::DateTime<chrono::Utc>,
    ) {
        use crate::state::TaskState;
        match state {
            TaskState::Running => {
                if let Some(queued) = queued {
                    self.scheduling_delay_seconds
                        .get_or_create(&DagLabels {
                            dag_id: dag_id.into(),
                        })
                        .observe(seconds(at - queued));
                }
            }
            s if s.is_finished() || s == TaskState::UpForRetry => {
                self.task_ends
                    .get_or_create(&TaskEndLabels {
                        dag_id: dag_id.into(),
                        task_id: task_id.into(),
                        state: s.as_str().into(),
                    })
                    .inc();
                if let Some(started) = started {
                    self.try_seconds
                        .get_or_create(&TaskLabels {
                            dag_id: dag_id.into(),
                            task_id: task_id.into(),
                        })
                        .observe(seconds(at - started));
                }
            }
            _ => {}
        }
    }

    /// A run's end.
    pub fn run_ended(&self, run: &crate::store::DagRun) {
        let labels = RunLabels {
            dag_id: run.dag_id.clone(),
            state: run.state.as_str().into(),
        };
        self.run_ends.get_or_create(&labels).inc();
        if let (Some(started), Some(ended)) = (run.started_at, run.ended_at) {
            self.run_seconds
                .get_or_create(&labels)
                .observe(seconds(ended - started));
        }
    }

    /// A store call that took `elapsed`.
    pub fn store_call(&self, op: &str, elapsed: std::time::Duration) {
        self.store_seconds
            .get_or_create(&StoreLabels { op: op.into() })
            .observe(elapsed.as_secs_f64());
    }

    /// A notification send's outcome.
    pub fn notification(&self, outcome: &str) {
        self.notifications
            .get_or_create(&OutcomeLabels {
                outcome: outcome.into(),
            })
            .inc();
    }
}

/// prometheus-client writes OpenMetrics, where a counter family `x` has samples `x_total`;
/// the classic text format that Prometheus scrapes by default (and `promtool check metrics`
/// reads) wants the family itself named `x_total`, or its samples lose their HELP and TYPE.
fn classic_counters(text: &str) -> String {
    let counters: std::collections::HashSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(text.len() + 64);
    for line in text.lines() {
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| Some((p, line.strip_prefix(p)?)));
        match meta {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                if counters.contains(name) {
                    out.push_str(&format!("{prefix}{name}_total {tail}"));
                } else {
                    out.push_str(line);
                }
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// Serves this process's metrics at `http://<addr>/metrics` until `stop` fires (a scheduler
/// or worker without a web server: `SLUICE_METRICS_ADDR`).
pub async fn serve(
    addr: &str,
    stop: tokio_util::sync::CancellationToken,
) -> Result<(), std::io::Error> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(|| async {
            let mut out = String::new();
            metrics().encode(&mut out);
            (
                [(
                    axum::http::header::CONTENT_TYPE,
                    "text/plain; version=0.0.4; charset=utf-8",
                )],
                out,
            )
        }),
    );
    tracing::info!(addr = %listener.local_addr()?, "metrics at /metrics");
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await
}

fn seconds(d: chrono::Duration) -> f64 {
    d.num_microseconds().unwrap_or(i64::MAX).max(0) as f64 / 1e6
}

/// This process's metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::TaskState;

    #[test]
    fn a_tasks_end_is_counted_by_dag_task_and_state_with_its_duration() {
        let m = Metrics::new();
        let t0 = chrono::Utc::now();
        m.task_changed(
            "d",
            "t",
            TaskState::Running,
            Some(t0),
            None,
            t0 + chrono::Duration::milliseconds(20),
        );
        m.task_changed(
            "d",
            "t",
            TaskState::Failed,
            None,
            Some(t0),
            t0 + chrono::Duration::seconds(2),
        );
        m.task_changed(
            "d",
            "t",
            TaskState::Failed,
            None,
            Some(t0),
            t0 + chrono::Duration::seconds(3),
        );
        let mut out = String::new();
        m.encode(&mut out);
        assert!(
            out.contains(
                "sluice_task_instance_ends_total{dag_id=\"d\",task_id=\"t\",state=\"failed\"} 2"
            ),
            "{out}"
        );
        assert!(
            out.contains("sluice_task_try_duration_seconds_count{dag_id=\"d\",task_id=\"t\"} 2"),
            "{out}"
        );
        assert!(
            out.contains("sluice_task_try_duration_seconds_sum{dag_id=\"d\",task_id=\"t\"} 5.0"),
            "{out}"
        );
        assert!(
            out.contains("sluice_task_scheduling_delay_seconds_count{dag_id=\"d\"} 1"),
            "{out}"
        );
    }

    #[test]
    fn every_family_listed_is_registered_under_its_sample_names() {
        let m = Metrics::new();
        let t0 = chrono::Utc::now();
        m.task_changed("d", "t", TaskState::Running, Some(t0), None, t0);
        m.task_changed("d", "t", TaskState::Success, None, Some(t0), t0);
        let run = crate::store::DagRun {
            dag_id: "d".into(),
            run_id: "r".into(),
            logical_date: t0,
            data_interval_start: t0,
            data_interval_end: t0,
            run_type: crate::store::RunType::Manual,
            state: crate::state::RunState::Success,
            conf: serde_json::json!({}),
            dag_hash: "h".into(),
            created_at: t0,
            started_at: Some(t0),
            ended_at: Some(t0),
            backfill_max_active_runs: None,
            attempt: 1,
            sla_missed_at: None,
            note: None,
        };
        m.run_ended(&run);
        m.notification("sent");
        m.deliveries
            .get_or_create(&DeliveryLabels {
                dag_id: "d".into(),
                task_id: "t".into(),
                outcome: "delivered".into(),
            })
            .inc();
        m.store_call("transitions", std::time::Duration::from_millis(1));
        m.scheduler_pass_seconds.observe(0.01);
        m.sla_misses
            .get_or_create(&DagLabels { dag_id: "d".into() })
            .inc();
        m.check_results(
            "d",
            "c",
            Some(&sluice_operator_api::TaskOutput::values(
                serde_json::json!({"checks": [{"name": "rows", "passed": true}]})
                    .as_object()
                    .unwrap()
                    .clone(),
            )),
        );
        let mut out = String::new();
        m.encode(&mut out);
        for name in sample_names() {
            assert!(
                out.lines()
                    .any(|l| l.starts_with(&name) && l[name.len()..].starts_with(['{', ' '])),
                "{name} not in\n{out}"
            );
        }
        let registered = out.lines().filter(|l| l.starts_with("# TYPE ")).count();
        assert_eq!(registered, FAMILIES.len(), "{out}");
    }
}
