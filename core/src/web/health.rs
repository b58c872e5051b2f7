//! `/health` (Airflow's shape: metadatabase and scheduler status) and `/metrics` (Prometheus).

use std::fmt::Write as _;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use chrono::Utc;
use serde_json::json;

use super::AppState;

/// A scheduler without a heartbeat for this long is reported unhealthy.
const SCHEDULER_STALE: chrono::Duration = chrono::Duration::seconds(30);

/// `/health` and `/metrics`.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
}

/// What `/health` and Airflow 3's `/api/v2/monitor/health` report.
pub(super) struct Report {
    database_ok: bool,
    scheduler_ok: bool,
    latest_beat: Option<chrono::DateTime<Utc>>,
}

impl Report {
    pub(super) fn database_status(&self) -> &'static str {
        if self.database_ok {
            "healthy"
        } else {
            "unhealthy"
        }
    }

    pub(super) fn scheduler_status(&self) -> &'static str {
        if self.scheduler_ok {
            "healthy"
        } else {
            "unhealthy"
        }
    }

    pub(super) fn latest_scheduler_heartbeat(&self) -> Option<String> {
        self.latest_beat.map(|t| t.to_rfc3339())
    }

    /// The web server answers for itself: only an unreachable store makes it unhealthy.
    pub(super) fn http_status(&self) -> StatusCode {
        if self.database_ok {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        }
    }
}

/// The store's and the schedulers' health, as of now.
pub(super) async fn report(state: &AppState) -> Report {
    let beat = state.store.last_scheduler_heartbeat().await;
    let database_ok = beat.is_ok();
    let latest_beat = beat.ok().flatten().map(|b| b.heartbeat_at);
    Report {
        database_ok,
        scheduler_ok: latest_beat.is_some_and(|t| t > Utc::now() - SCHEDULER_STALE),
        latest_beat,
    }
}

async fn health(State(state): State<AppState>) -> impl IntoResponse {
    let report = report(&state).await;
    let body = json!({
        "status": if report.database_ok { "ok" } else { "error" },
        "metadatabase": {"status": report.database_status()},
        "scheduler": {
            "status": report.scheduler_status(),
            "latest_scheduler_heartbeat": report.latest_scheduler_heartbeat(),
        },
    });
    (report.http_status(), Json(body))
}

fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// `/metrics`: this process's counters and histograms (see [`crate::metrics`]), what is
/// active in the store (read through its state indexes: the cost follows the active runs,
/// never the history), and the DAG folder's and the scheduler's health.
async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let mut out = String::new();
    crate::metrics::metrics().encode(&mut out);
    let bag = state.dags.get();
    let _ = writeln!(out, "# HELP sluice_dags Valid DAGs loaded from the DAG folder.\n# TYPE sluice_dags gauge\nsluice_dags {}", bag.dags.len());
    let _ = writeln!(out, "# HELP sluice_dag_import_errors Errors in DAG files.\n# TYPE sluice_dag_import_errors gauge\nsluice_dag_import_errors {}", bag.errors.len());
    let up = match state.store.active_counts().await {
        Ok(counts) => {
            let _ = writeln!(
                out,
                "# HELP sluice_dag_runs_active Queued and running runs, by DAG and state.\n# TYPE sluice_dag_runs_active gauge"
            );
            for (dag_id, s, n) in &counts.runs {
                let _ = writeln!(
                    out,
                    "sluice_dag_runs_active{{dag_id=\"{}\",state=\"{}\"}} {n}",
                    escape_label(dag_id),
                    escape_label(s)
                );
            }
            let _ = writeln!(out, "# HELP sluice_task_instances_active Unfinished task instances, by state.\n# TYPE sluice_task_instances_active gauge");
            for (s, n) in &counts.task_instances {
                let _ = writeln!(
                    out,
                    "sluice_task_instances_active{{state=\"{}\"}} {n}",
                    escape_label(s)
                );
            }
            let queued: u64 = counts
                .task_instances
                .iter()
                .filter(|(s, _)| s == "queued")
                .map(|(_, n)| n)
                .sum();
            let _ = writeln!(out, "# HELP sluice_queue_depth Task instances waiting for a slot or a worker.\n# TYPE sluice_queue_depth gauge\nsluice_queue_depth {queued}");
            1
        }
        Err(error) => {
            tracing::error!(%error, "metrics: the metadata store did not answer");
            0
        }
    };
    let _ = writeln!(out, "# HELP sluice_metadatabase_up 1 if the metadata store answers.\n# TYPE sluice_metadatabase_up gauge\nsluice_metadatabase_up {up}");
    if let Ok(Some(beat)) = state.store.last_scheduler_heartbeat().await {
        let age = (Utc::now() - beat.heartbeat_at).num_milliseconds() as f64 / 1000.0;
        let _ = writeln!(out, "# HELP sluice_scheduler_heartbeat_age_seconds Seconds since the last scheduler heartbeat.\n# TYPE sluice_scheduler_heartbeat_age_seconds gauge\nsluice_scheduler_heartbeat_age_seconds {age}");
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
}
