//! The reports service's cache-invalidation endpoint: the receiving end of the reference
//! pipeline's last task. Shared by the `reports_service` example and the tests.
//!
//! `POST /invalidate` drops a user's cached report. Requests carrying an `Idempotency-Key`
//! already seen are acknowledged without a second invalidation. `GET /stats` gives counts,
//! `GET /invalidations` every accepted request. For demos and tests it can answer 503 to
//! the first N requests, or 400 for chosen users.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

/// Failure modes to show retries and permanent failures.
#[derive(Debug, Clone, Default)]
pub struct Behaviour {
    /// Answer 503 to this many requests first.
    pub fail_first: u64,
    /// Answer 400 for these user ids.
    pub reject_users: HashSet<u64>,
    /// Answer 503 to this many requests for a user before taking one.
    pub flaky_users: BTreeMap<u64, u64>,
    /// Take this long to answer each request (a slow receiver).
    pub delay: std::time::Duration,
}

#[derive(Debug, Default)]
struct Inner {
    requests: u64,
    unavailable: u64,
    rejected: u64,
    duplicates: u64,
    keys: HashSet<String>,
    invalidations: Vec<Value>,
    per_user: BTreeMap<String, u64>,
    /// Every request per user, refused ones included.
    requests_per_user: BTreeMap<String, u64>,
    cached_reports: HashSet<u64>,
}

/// Shared state of the service.
#[derive(Debug, Clone, Default)]
pub struct Reports {
    behaviour: Behaviour,
    inner: Arc<Mutex<Inner>>,
}

impl Reports {
    /// A service with every user's report cached, behaving as told.
    pub fn new(behaviour: Behaviour) -> Self {
        Self {
            behaviour,
            inner: Arc::default(),
        }
    }

    /// The routes.
    pub fn router(self) -> Router {
        Router::new()
            .route("/invalidate", post(invalidate))
            .route("/stats", get(stats))
            .route("/invalidations", get(invalidations))
            .with_state(self)
    }
}

async fn invalidate(
    State(reports): State<Reports>,
    headers: HeaderMap,
    body: Json<Value>,
) -> (StatusCode, Json<Value>) {
    if !reports.behaviour.delay.is_zero() {
        tokio::time::sleep(reports.behaviour.delay).await;
    }
    let mut inner = reports.inner.lock().unwrap();
    inner.requests += 1;
    if inner.requests <= reports.behaviour.fail_first {
        inner.unavailable += 1;
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"error": "warming up, try again"})),
        );
    }
    let Some(user_id) = body.get("user_id").and_then(Value::as_u64) else {
        inner.rejected += 1;
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "user_id must be an unsigned integer"})),
        );
    };
    let requests = {
        let n = inner
            .requests_per_user
            .entry(user_id.to_string())
            .or_default();
        *n += 1;
        *n
    };
    if reports
        .behaviour
        .flaky_users
        .get(&user_id)
        .is_some_and(|fails| requests <= *fails)
    {
        inner.unavailable += 1;
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"error": format!("user {user_id}: try again")})),
        );
    }
    if reports.behaviour.reject_users.contains(&user_id) {
        inner.rejected += 1;
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": format!("unknown user {user_id}")})),
        );
    }
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    if let Some(key) = &key {
        if !inner.keys.insert(key.clone()) {
            inner.duplicates += 1;
            return (
                StatusCode::OK,
                Json(json!({"status": "duplicate", "user_id": user_id})),
            );
        }
    }
    inner.cached_reports.remove(&user_id);
    *inner.per_user.entry(user_id.to_string()).or_default() += 1;
    let mut record = body.0.clone();
    record["idempotency_key"] = json!(key);
    inner.invalidations.push(record);
    (
        StatusCode::OK,
        Json(json!({"status": "invalidated", "user_id": user_id})),
    )
}

async fn stats(State(reports): State<Reports>) -> Json<Value> {
    let inner = reports.inner.lock().unwrap();
    Json(json!({
        "requests": inner.requests,
        "invalidations": inner.invalidations.len(),
        "users": inner.per_user.len(),
        "duplicates": inner.duplicates,
        "unavailable": inner.unavailable,
        "rejected": inner.rejected,
        "per_user": inner.per_user,
        "requests_per_user": inner.requests_per_user,
    }))
}

async fn invalidations(State(reports): State<Reports>) -> Json<Value> {
    Json(Value::Array(
        reports.inner.lock().unwrap().invalidations.clone(),
    ))
}
