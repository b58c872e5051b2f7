//! The web server: the REST API under `/api/v1` (Airflow's stable API paths and shapes where
//! Airflow has the operation), `/health`, `/metrics` and the status UI.
//!
//! `router(state)` builds everything and `serve(listener, router, shutdown)` runs it, so tests
//! use an ephemeral port. Errors are JSON with a message for the client and logged once in
//! middleware; internals never reach the client. Mutations need `Authorization: Bearer
//! <SLUICE_API_TOKEN>` when a token is configured; without one the server only listens on
//! loopback.

mod api;
pub mod auth;
mod catalog;
mod events;
pub mod hardening;
mod health;
mod openapi;
mod ui;
mod v2;

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde_json::json;

use crate::store::{Store, StoreError};
pub use catalog::DagCatalog;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    /// The metadata store.
    pub store: Arc<dyn Store>,
    /// The DAGs of the folder, re-read when files change.
    pub dags: Arc<DagCatalog>,
    /// The API's tokens and their roles (none: the API is open, on loopback only).
    pub tokens: Arc<auth::Tokens>,
    /// Where try logs and artifacts are (`$SLUICE_HOME/logs`, `$SLUICE_HOME/artifacts`).
    pub places: crate::retention::Places,
    /// Moves whenever runs or task instances change (see [`watch_changes`]).
    pub changes: tokio::sync::watch::Receiver<i64>,
    /// Answers to reads, valid while nothing changed (see [`cache_reads`]).
    pub cache: Arc<ReadCache>,
    /// Host allow-list and event stream permits (see [`hardening`]).
    pub guards: Arc<hardening::Guards>,
}

/// Serialized answers to API reads, keyed by URI and tagged with the change marker and DAG
/// catalog they were computed from: a hundred browsers watching a busy scheduler cost one
/// computation per change, not one per request. Each answer is kept with its gzip form
/// (compressed once, served to every client that accepts it) and an ETag, so a browser
/// revalidating an unchanged page gets a 304 without a body. Bounded in bytes, not entries.
#[derive(Debug, Default)]
pub struct ReadCache {
    entries: std::sync::Mutex<CacheEntries>,
    /// The URLs being computed, each with a lock its computing request holds: a hundred
    /// browsers asking for a page the moment it changed wait for one answer instead of
    /// computing a hundred.
    computing: std::sync::Mutex<std::collections::HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// What a request that missed the cache does about the answer's computation.
enum Turn {
    /// It computes the answer; the gate opens when this is dropped, on every path (an
    /// error, a timeout, a client gone).
    Compute(Gate),
    /// Another request is computing it: wait for that one to end.
    Wait(Arc<tokio::sync::Mutex<()>>),
}

/// The computing request's hold on its URL's gate.
struct Gate {
    cache: Arc<ReadCache>,
    key: String,
    _held: tokio::sync::OwnedMutexGuard<()>,
}

impl Drop for Gate {
    fn drop(&mut self) {
        // Out of the map first, so nobody waits on a gate after it opened.
        self.cache
            .computing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.key);
    }
}

#[derive(Debug, Default)]
struct CacheEntries {
    by_uri: std::collections::HashMap<String, Cached>,
    bytes: usize,
}

/// One cached answer.
#[derive(Debug, Clone)]
struct Cached {
    version: CacheVersion,
    body: axum::body::Bytes,
    /// The body gzipped, when that is smaller.
    gzip: Option<axum::body::Bytes>,
    /// A strong ETag: a hash of the body, so an answer recomputed unchanged keeps its tag.
    etag: header::HeaderValue,
    /// The gzip form's own strong ETag (another representation, another tag).
    gzip_etag: header::HeaderValue,
}

impl Cached {
    fn new(version: CacheVersion, body: axum::body::Bytes) -> Self {
        use sha2::{Digest, Sha256};
        let digest = Sha256::digest(&body);
        let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
        let tag = |suffix: &str| {
            header::HeaderValue::from_str(&format!("\"{hex}{suffix}\""))
                .expect("hex is a valid header value")
        };
        Self {
            version,
            gzip: gzipped(&body),
            body,
            etag: tag(""),
            gzip_etag: tag("-gzip"),
        }
    }

    fn size(&self) -> usize {
        self.body.len() + self.gzip.as_ref().map_or(0, |g| g.len())
    }

    /// The answer for a request with these headers: 304 when the client holds this
    /// version, else the body, gzipped when the client takes it.
    fn respond(&self, request: &axum::http::HeaderMap) -> Response {
        let gzip = self.gzip.as_ref().filter(|_| accepts_gzip(request));
        let etag = if gzip.is_some() {
            &self.gzip_etag
        } else {
            &self.etag
        };
        let mut response = if if_none_match(request, etag) {
            StatusCode::NOT_MODIFIED.into_response()
        } else {
            match gzip {
                Some(gzip) => (
                    [
                        (header::CONTENT_TYPE, "application/json"),
                        (header::CONTENT_ENCODING, "gzip"),
                    ],
                    gzip.clone(),
                )
                    .into_response(),
                None => (
                    [(header::CONTENT_TYPE, "application/json")],
                    self.body.clone(),
                )
                    .into_response(),
            }
        };
        let headers = response.headers_mut();
        headers.insert(header::ETAG, etag.clone());
        // Browsers keep the answer but ask again each time (with If-None-Match).
        headers.insert(
            header::CACHE_CONTROL,
            header::HeaderValue::from_static("private, no-cache"),
        );
        headers.insert(
            header::VARY,
            header::HeaderValue::from_static("Accept-Encoding, Authorization"),
        );
        response
    }
}

/// Answers smaller than this go uncompressed: gzip would not pay for its header.
const GZIP_FROM: usize = 1024;

/// `body` gzipped at the fastest level (once per change, for every client), when that is
/// smaller.
fn gzipped(body: &[u8]) -> Option<axum::body::Bytes> {
    use std::io::Write as _;
    if body.len() < GZIP_FROM {
        return None;
    }
    let mut encoder = flate2::write::GzEncoder::new(
        Vec::with_capacity(body.len() / 4),
        flate2::Compression::fast(),
    );
    encoder.write_all(body).ok()?;
    let out = encoder.finish().ok()?;
    (out.len() < body.len()).then(|| out.into())
}

/// Whether `Accept-Encoding` takes gzip: named with a q above 0, or, when gzip is not
/// named at all, through `*` with a q above 0 (RFC 9110 §12.5.3).
fn accepts_gzip(headers: &axum::http::HeaderMap) -> bool {
    let mut named = None;
    let mut any = None;
    for coding in headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
    {
        let mut parts = coding.split(';');
        let name = parts.next().unwrap_or("").trim();
        let weight = parts
            .filter_map(|p| {
                let (k, v) = p.split_once('=')?;
                k.trim()
                    .eq_ignore_ascii_case("q")
                    .then(|| v.trim().parse::<f32>().ok())?
            })
            .next()
            .unwrap_or(1.0);
        if name.eq_ignore_ascii_case("gzip") || name.eq_ignore_ascii_case("x-gzip") {
            named = Some(weight > 0.0);
        } else if name == "*" {
            any = Some(weight > 0.0);
        }
    }
    named.or(any).unwrap_or(false)
}

fn if_none_match(headers: &axum::http::HeaderMap, etag: &header::HeaderValue) -> bool {
    let ours = etag.as_bytes();
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|tag| tag == "*" || tag.trim_start_matches("W/").as_bytes() == ours)
}

/// What a cached answer was computed from: the store's change marker and the DAG catalog.
type CacheVersion = (i64, usize);

/// Most bytes of answers (and URIs) the cache holds; it is cleared when full.
const CACHE_BYTES: usize = 64 << 20;
/// Answers larger than this are not cached (the DAG list of a thousand DAGs is ~2 MiB).
const CACHE_LARGEST: usize = 8 << 20;

impl ReadCache {
    fn get(&self, key: &str, version: CacheVersion) -> Option<Cached> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries
            .by_uri
            .get(key)
            .filter(|c| c.version == version)
            .cloned()
    }

    fn put(&self, key: String, cached: Cached) {
        let size = key.len() + cached.size();
        if size > CACHE_LARGEST {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.bytes + size > CACHE_BYTES {
            *entries = CacheEntries::default();
        }
        if let Some(old) = entries.by_uri.insert(key.clone(), cached) {
            entries.bytes -= key.len() + old.size();
        }
        entries.bytes += size;
    }

    /// Whether the request for `key` computes its answer or waits for the one computing it.
    fn turn(self: &Arc<Self>, key: &str) -> Turn {
        let mut computing = self.computing.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(gate) = computing.get(key) {
            return Turn::Wait(gate.clone());
        }
        let gate = Arc::new(tokio::sync::Mutex::new(()));
        let held = gate.clone().try_lock_owned().expect("a new lock is free");
        computing.insert(key.to_string(), gate);
        Turn::Compute(Gate {
            cache: self.clone(),
            key: key.to_string(),
            _held: held,
        })
    }

    /// URLs being computed now.
    pub fn computing(&self) -> usize {
        self.computing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// Forgets everything (after a mutation through this server).
    pub fn clear(&self) {
        *self.entries.lock().unwrap_or_else(|p| p.into_inner()) = CacheEntries::default();
    }

    /// Bytes held now.
    pub fn bytes(&self) -> usize {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).bytes
    }
}

/// Serves repeated API reads from the cache while the store's change marker and the DAG
/// catalog are unchanged (304 to a client that holds the answer already). Changes made
/// elsewhere show within the marker's poll interval; changes made through this server clear
/// the cache at once.
async fn cache_reads(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let path = request.uri().path();
    // Logs and the delivery ledger grow while a try runs, without a state change to mark it.
    let cacheable = request.method() == Method::GET
        && !path.ends_with("/events")
        && !path.contains("/logs/")
        && !path.ends_with("/deliveries");
    if !cacheable {
        let mutating = request.method() != Method::GET && request.method() != Method::HEAD;
        let response = next.run(request).await;
        if mutating {
            state.cache.clear();
        }
        return response;
    }
    // The full path: the same route under /api/v1 and /api/v2 answers in different shapes.
    let key = request
        .extensions()
        .get::<axum::extract::OriginalUri>()
        .map_or_else(|| request.uri().to_string(), |o| o.0.to_string());
    let version = (
        *state.changes.borrow(),
        Arc::as_ptr(&state.dags.get()) as usize,
    );
    if let Some(cached) = state.cache.get(&key, version) {
        return cached.respond(request.headers());
    }
    let _gate = match state.cache.turn(&key) {
        Turn::Compute(gate) => Some(gate),
        Turn::Wait(gate) => {
            drop(gate.lock().await);
            // Computed by the request that held the gate; if it was not (an error, an answer
            // too large to keep), this one computes its own, alongside the other waiters.
            if let Some(cached) = state.cache.get(&key, version) {
                return cached.respond(request.headers());
            }
            None
        }
    };
    let headers = request.headers().clone();
    let response = next.run(request).await;
    if response.status() != StatusCode::OK {
        return response;
    }
    let (_, body) = response.into_parts();
    match axum::body::to_bytes(body, 64 << 20).await {
        Ok(bytes) => {
            // Compressing and hashing a large answer is CPU work: off the async threads.
            let cached = tokio::task::spawn_blocking(move || Cached::new(version, bytes))
                .await
                .expect("caching an answer does not panic");
            let response = cached.respond(&headers);
            state.cache.put(key, cached);
            response
        }
        Err(_) => ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            detail: "answer too large to buffer".into(),
        }
        .into_response(),
    }
}

pub use events::watch_changes;

/// An error answer: a status, a short title and a detail safe to show.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    detail: String,
}

impl ApiError {
    /// 400: the request is malformed.
    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            detail: detail.into(),
        }
    }

    /// 404: no such thing.
    pub fn not_found(detail: impl Into<String>) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            detail: detail.into(),
        }
    }

    /// 500: the server failed; `detail` is logged, not sent.
    pub fn internal(detail: impl Into<String>) -> Self {
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            detail: detail.into(),
        }
    }

    /// 503: the server is at a limit; try later.
    pub fn unavailable(detail: impl Into<String>) -> Self {
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            detail: detail.into(),
        }
    }

    /// 409: the request conflicts with the current state.
    pub fn conflict(detail: impl Into<String>) -> Self {
        Self {
            status: StatusCode::CONFLICT,
            detail: detail.into(),
        }
    }
}

/// The server-side cause of a 500, kept out of the response and logged by the middleware.
#[derive(Debug, Clone)]
struct InternalCause(Arc<String>);

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(what) => ApiError::not_found(format!("{what} not found")),
            StoreError::Conflict { .. }
            | StoreError::RunExists { .. }
            | StoreError::IllegalRunTransition(_) => ApiError::conflict(e.to_string()),
            other => ApiError {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                detail: other.to_string(),
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let title = self.status.canonical_reason().unwrap_or("Error");
        if self.status == StatusCode::INTERNAL_SERVER_ERROR {
            let cause = InternalCause(Arc::new(self.detail));
            let body = api::problem(
                title,
                self.status,
                "internal error; the server log has the cause",
            );
            let mut response = (self.status, Json(body)).into_response();
            response.extensions_mut().insert(cause);
            return response;
        }
        (
            self.status,
            Json(api::problem(title, self.status, &self.detail)),
        )
            .into_response()
    }
}

/// Logs server errors once, with their cause, and client errors briefly.
async fn log_errors(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let response = next.run(request).await;
    let status = response.status();
    if let Some(cause) = response.extensions().get::<InternalCause>() {
        tracing::error!(%method, %path, status = status.as_u16(), cause = %cause.0, "request failed");
    } else if status.is_client_error() {
        tracing::debug!(%method, %path, status = status.as_u16(), "request refused");
    }
    response
}

/// Mutations need a JSON body type: a page on another site cannot send `application/json`
/// across origins without a preflight this server never grants, so it cannot trigger runs
/// through a user's browser.
async fn require_json(request: Request, next: Next) -> Response {
    let mutating = !matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    );
    let json = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("application/json"));
    if mutating && !json {
        return (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Json(json!({"type": "about:blank", "title": "Unsupported Media Type", "status": 415, "detail": "send the request body as JSON (Content-Type: application/json)"})),
        )
            .into_response();
    }
    next.run(request).await
}

/// The whole application.
pub fn router(state: AppState) -> Router {
    let app = Router::new()
        .nest("/api/v1", guarded(&state, api::routes(), events::routes()))
        .nest(
            "/api/v2",
            guarded(&state, v2::routes(), Router::new()).merge(v2::public_routes()),
        )
        .merge(health::routes())
        .merge(ui::routes())
        .fallback(|| async { ApiError::not_found("no such page or endpoint") })
        .layer(middleware::from_fn_with_state(
            state.clone(),
            hardening::check_host,
        ))
        .layer(middleware::from_fn(log_errors))
        .with_state(state);
    hardening::security_headers(app)
}

/// An API's routes behind the read cache, the JSON and size checks, the request timeout and
/// the token check; `streams` (long-lived event streams) stay outside the request timeout,
/// inside the token check.
fn guarded(
    state: &AppState,
    routes: Router<AppState>,
    streams: Router<AppState>,
) -> Router<AppState> {
    routes
        .layer(middleware::from_fn_with_state(state.clone(), cache_reads))
        .layer(middleware::from_fn(require_json))
        .layer(axum::extract::DefaultBodyLimit::max(
            hardening::MAX_BODY_BYTES,
        ))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            hardening::REQUEST_TIMEOUT,
        ))
        .merge(streams)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            auth::authorize,
        ))
}

pub use hardening::serve;

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_request_computes_a_url_and_its_gate_opens_on_every_path() {
        let cache = Arc::new(ReadCache::default());
        let Turn::Compute(first) = cache.turn("/api/v1/dags") else {
            panic!("the first request computes")
        };
        let Turn::Wait(gate) = cache.turn("/api/v1/dags") else {
            panic!("the second waits")
        };
        assert!(matches!(cache.turn("/api/v1/other"), Turn::Compute(_)));
        let waiter = tokio::spawn(async move {
            drop(gate.lock().await);
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "the waiter waits while it computes");
        // The computing request ends however it ends (an error, a timeout): dropped.
        drop(first);
        waiter.await.unwrap();
        assert_eq!(cache.computing(), 0, "no gate is left behind");
        assert!(matches!(cache.turn("/api/v1/dags"), Turn::Compute(_)));
    }

    #[test]
    fn gzip_is_taken_by_name_or_wildcard_and_refused_with_q_zero() {
        let takes = |value: &str| {
            let mut headers = axum::http::HeaderMap::new();
            headers.insert(header::ACCEPT_ENCODING, value.parse().unwrap());
            accepts_gzip(&headers)
        };
        assert!(takes("gzip, deflate, br"));
        assert!(takes("br;q=1.0, gzip;q=0.8"));
        assert!(takes("*"));
        assert!(!takes("gzip;q=0"));
        assert!(!takes("GZIP;Q=0.000"));
        assert!(!takes("gzip;q=0, *"));
        assert!(!takes("identity"));
        assert!(!takes("*;q=0"));
        assert!(!accepts_gzip(&axum::http::HeaderMap::new()));
    }
}
