//! `http_webhook`: calls an HTTP endpoint once, or once per distinct value of a column of an
//! upstream task's table (docs/pipeline.md: one cache invalidation per user loaded).
//!
//! Bounded concurrency over one connection pool; per-request timeout; 5xx, 408, 429,
//! timeouts and connection errors are retried with exponential backoff and jitter
//! (honouring `Retry-After`); any other 4xx fails that value for good. A circuit breaker per
//! connection ([`breaker`]) makes the remaining values fail fast while the receiver is down.
//! The try log shows progress every few seconds. The task reports delivered and failed
//! counts, and fails if any value could not be delivered.

use std::time::Duration;

use async_trait::async_trait;
use futures::stream::{self, StreamExt};

use crate::frame;
use sluice_operator_api::{
    template, DeliveryOutcome, Operator, OperatorError, TaskContext, TaskOutput,
};

pub mod breaker;
mod config;
pub use config::{ForEach, HttpWebhookConfig};

use breaker::Breaker;

/// How often the try log shows delivery progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// Most outcomes written to the delivery ledger at once.
const LEDGER_BATCH: usize = 512;

/// An item's key in the delivery ledger: its value as text (`-` for a single request).
fn item_key(item: &Option<sluice_operator_api::template::Value>) -> String {
    item.as_ref()
        .map(|v| v.to_string())
        .unwrap_or_else(|| "-".into())
}

/// The built `http_webhook` operator.
#[derive(Debug)]
pub struct HttpWebhook {
    config: HttpWebhookConfig,
    method: reqwest::Method,
}

/// How one value's delivery ended.
#[derive(Debug)]
enum Delivery {
    Delivered {
        attempts: u32,
    },
    Failed {
        attempts: u32,
        permanent: bool,
        reason: String,
    },
}

impl Delivery {
    /// What the ledger records of it.
    fn outcome(&self, item: String) -> DeliveryOutcome {
        match self {
            Delivery::Delivered { attempts } => DeliveryOutcome {
                item,
                delivered: true,
                attempts: *attempts,
                detail: None,
            },
            Delivery::Failed {
                attempts, reason, ..
            } => DeliveryOutcome {
                item,
                delivered: false,
                attempts: *attempts,
                detail: Some(reason.clone()),
            },
        }
    }
}

fn retryable_status(status: reqwest::StatusCode) -> bool {
    status.is_server_error()
        || status == reqwest::StatusCode::REQUEST_TIMEOUT
        || status == reqwest::StatusCode::TOO_MANY_REQUESTS
}

/// Cheap jitter in [0.5, 1.5) without a random-number dependency.
fn jitter(seed: u64) -> f64 {
    let mut x = seed ^ 0x9E37_79B9_7F4A_7C15;
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    0.5 + (x % 1000) as f64 / 1000.0
}

fn describe_error(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".into()
    } else if e.is_connect() {
        "cannot connect".into()
    } else {
        let mut text = "request failed".to_string();
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            text = format!("request failed: {s}");
            source = s.source();
        }
        text
    }
}

/// Where requests go: the client (trusting the connection's CA, if it names one), the
/// connection's URL without sluice's parameters, and the CA file for messages.
#[derive(Clone, Copy)]
struct Receiver<'a> {
    client: &'a reqwest::Client,
    base: &'a url::Url,
    root_cert: Option<&'a str>,
}

/// One value's request, rendered.
struct PreparedRequest {
    url: url::Url,
    body: Option<Vec<u8>>,
    headers: Vec<(String, String)>,
}

impl HttpWebhook {
    /// Renders the path, body and headers for one value; a failure here is permanent.
    fn prepare(
        &self,
        base: &url::Url,
        ctx: &TaskContext,
        item: Option<&sluice_operator_api::template::Value>,
    ) -> Result<PreparedRequest, String> {
        // Values are path segments, percent-encoded: `../admin` or `x?y=1` stay one segment.
        let path = template::render_escaped(
            &self.config.path,
            &ctx.vars,
            item,
            template::url_path_segment,
        )
        .map_err(|e| format!("path: {}", e.message))?;
        // Values side by side (`{{ a }}{{ b }}`) could still spell `..` together.
        if path
            .split('/')
            .any(|segment| segment == "." || segment == "..")
        {
            return Err(format!(
                "path: `{path}` has a `.` or `..` segment (refused)"
            ));
        }
        let mut url = base.clone();
        let joined = format!(
            "{}/{}",
            url.path().trim_end_matches('/'),
            path.trim_start_matches('/')
        );
        url.set_path(&joined);
        let body = match &self.config.json {
            Some(json) => {
                let value = template::render_json(json, &ctx.vars, item).map_err(|e| e.message)?;
                Some(serde_json::to_vec(&value).map_err(|e| e.to_string())?)
            }
            None => None,
        };
        let mut headers = Vec::new();
        for (name, value) in &self.config.headers {
            let value = template::render_with_item(value, &ctx.vars, item)
                .map_err(|e| format!("header {name}: {}", e.message))?;
            if value.contains(['\r', '\n', '\0']) {
                // A line break would end the header and start another one of the value's choosing.
                return Err(format!(
                    "header {name}: the rendered value contains a line break or NUL (refused)"
                ));
            }
            headers.push((name.clone(), value));
        }
        Ok(PreparedRequest { url, body, headers })
    }

    async fn deliver(
        &self,
        receiver: &Receiver<'_>,
        breaker: &std::sync::Mutex<Breaker>,
        ctx: &TaskContext,
        item: Option<sluice_operator_api::template::Value>,
        seed: u64,
    ) -> Delivery {
        let lock = || breaker.lock().unwrap_or_else(|p| p.into_inner());
        let Receiver {
            client,
            base,
            root_cert,
        } = *receiver;
        let (url, body, headers) = match self.prepare(base, ctx, item.as_ref()) {
            Ok(request) => (request.url, request.body, request.headers),
            Err(reason) => {
                return Delivery::Failed {
                    attempts: 0,
                    permanent: true,
                    reason,
                }
            }
        };
        let mut attempt = 0;
        loop {
            // While one request probes a receiver that was down, the others wait for its
            // answer; while the breaker is open, they fail fast.
            let refused = loop {
                match lock().admit(std::time::Instant::now()) {
                    Ok(()) => break None,
                    Err(refused) if refused.retry_in.is_zero() => {}
                    Err(refused) => break Some(refused),
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                    _ = ctx.cancel.cancelled() => {
                        return Delivery::Failed { attempts: attempt, permanent: false, reason: "cancelled".into() };
                    }
                }
            };
            if let Some(refused) = refused {
                return Delivery::Failed {
                    attempts: attempt,
                    permanent: false,
                    reason: format!(
                        "not sent: the circuit breaker of connection `{}` is open after {} consecutive failures (last: {}); it probes again in {}",
                        self.config.conn,
                        refused.failures,
                        refused.last_error,
                        humantime::format_duration(Duration::from_secs(refused.retry_in.as_secs().max(1)))
                    ),
                };
            }
            attempt += 1;
            let mut request = client
                .request(self.method.clone(), url.clone())
                .timeout(self.config.timeout.0);
            for (name, value) in &headers {
                request = request.header(name, value);
            }
            if let Some(body) = &body {
                request = request
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(body.clone());
            }
            let (reason, retry_after) = match request.send().await {
                Ok(response) if response.status().is_success() => {
                    lock().succeeded();
                    return Delivery::Delivered { attempts: attempt };
                }
                Ok(response) => {
                    let status = response.status();
                    let retry_after = response
                        .headers()
                        .get(reqwest::header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .map(Duration::from_secs);
                    let text = response.text().await.unwrap_or_default();
                    let snippet: String = text.chars().take(200).collect();
                    let reason = format!(
                        "HTTP {status}{}",
                        if snippet.is_empty() {
                            String::new()
                        } else {
                            format!(": {snippet}")
                        }
                    );
                    if !retryable_status(status) {
                        // The receiver is there and answered: not a reason to stop sending.
                        lock().succeeded();
                        return Delivery::Failed {
                            attempts: attempt,
                            permanent: true,
                            reason,
                        };
                    }
                    (reason, retry_after)
                }
                Err(e) => {
                    // An untrusted certificate stays untrusted: no retry, no breaker count.
                    if let Some(detail) = crate::tls::tls_failure(&e) {
                        let host = format!(
                            "{}:{}",
                            url.host_str().unwrap_or_default(),
                            url.port_or_known_default().unwrap_or_default()
                        );
                        return Delivery::Failed {
                            attempts: attempt,
                            permanent: true,
                            reason: crate::tls::explain_tls_failure(&host, &detail, root_cert),
                        };
                    }
                    (describe_error(&e), None)
                }
            };
            if lock().failed(std::time::Instant::now(), &reason) {
                ctx.log.warn(&format!(
                    "connection `{}`: circuit breaker open after {} consecutive failures (last: {reason}); the remaining requests fail fast",
                    self.config.conn, self.config.breaker_failures
                ));
            }
            if attempt >= self.config.max_attempts {
                return Delivery::Failed {
                    attempts: attempt,
                    permanent: false,
                    reason: format!("{reason} (after {attempt} attempts)"),
                };
            }
            let backoff = self
                .config
                .backoff
                .0
                .saturating_mul(1 << (attempt - 1).min(16))
                .min(Duration::from_secs(30));
            // A server's Retry-After is honoured up to the same 30 s cap as our own backoff.
            let wait = retry_after
                .map(|after| after.min(Duration::from_secs(30)))
                .unwrap_or_else(|| backoff.mul_f64(jitter(seed.wrapping_add(attempt as u64))));
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = ctx.cancel.cancelled() => {
                    return Delivery::Failed { attempts: attempt, permanent: false, reason: "cancelled".into() };
                }
            }
        }
    }
}

#[async_trait]
impl Operator for HttpWebhook {
    async fn execute(&self, ctx: &TaskContext) -> Result<TaskOutput, OperatorError> {
        let conn = ctx.connection(&self.config.conn)?;
        if !matches!(conn.scheme(), "http" | "https") {
            return Err(OperatorError::fatal(format!(
                "connection {conn}: expected an http(s):// URI"
            )));
        }
        // `sslrootcert` is for sluice (a CA to trust), never sent to the receiver.
        let (root_cert, base) = crate::tls::split_root_cert(conn.uri());
        if root_cert.is_some() && base.scheme() != "https" {
            return Err(OperatorError::fatal(format!(
                "connection {conn}: sslrootcert is set but the URI is http://; use https://"
            )));
        }
        let items: Vec<Option<sluice_operator_api::template::Value>> = match &self.config.for_each {
            None => vec![None],
            Some(each) => {
                let upstream = ctx.upstream.get(&each.task).ok_or_else(|| {
                    OperatorError::fatal(format!(
                        "for_each.task: `{}` is not a direct upstream task of this task",
                        each.task
                    ))
                })?;
                let table = upstream.table.as_ref().ok_or_else(|| {
                    OperatorError::fatal(format!(
                        "for_each.task: task `{}` produced no table",
                        each.task
                    ))
                })?;
                let path = ctx
                    .artifacts
                    .local_path(table)
                    .await
                    .map_err(|e| OperatorError::fatal(e.to_string()))?;
                let column = each.column.clone();
                let values =
                    tokio::task::spawn_blocking(move || frame::distinct_values(&path, &column))
                        .await
                        .map_err(|e| OperatorError::fatal(format!("reading values: {e}")))??;
                values.into_iter().map(Some).collect()
            }
        };
        // What earlier tries of this attempt delivered is not sent again.
        let ledger: std::sync::Arc<dyn sluice_operator_api::DeliveryLedger> = if self.config.ledger
        {
            ctx.deliveries.clone()
        } else {
            std::sync::Arc::new(sluice_operator_api::NoLedger)
        };
        let already = ledger.delivered().await?;
        let before = items.len();
        let items: Vec<_> = items
            .into_iter()
            .filter(|item| !already.contains(&item_key(item)))
            .collect();
        let skipped = before - items.len();
        if skipped > 0 {
            ctx.log.info(&format!(
                "{skipped} of {before} item(s) were delivered by an earlier try of this attempt: not sent again"
            ));
        }
        let builder = reqwest::Client::builder()
            .pool_max_idle_per_host(self.config.concurrency)
            .connect_timeout(self.config.timeout.0);
        let client = crate::tls::trust_root_cert(conn, root_cert.as_deref(), builder)?
            .build()
            .map_err(|e| OperatorError::fatal(format!("connection {conn}: HTTP client: {e}")))?;
        ctx.log.info(&format!(
            "sending {} request(s) to {conn} with up to {} in flight",
            items.len(),
            self.config.concurrency
        ));
        let started = std::time::Instant::now();
        let breaker = breaker::for_connection(
            &format!("{}={}", self.config.conn, base),
            self.config.breaker_failures,
            self.config.breaker_cooldown.0,
        );
        let total = items.len();
        let done_ok = std::sync::atomic::AtomicUsize::new(0);
        let done_failed = std::sync::atomic::AtomicUsize::new(0);
        let deliveries = stream::iter(items.into_iter().enumerate())
            .map(|(i, item)| {
                let receiver = Receiver {
                    client: &client,
                    base: &base,
                    root_cert: root_cert.as_deref(),
                };
                let breaker = &breaker;
                let (done_ok, done_failed) = (&done_ok, &done_failed);
                async move {
                    let delivery = self
                        .deliver(&receiver, breaker, ctx, item.clone(), i as u64)
                        .await;
                    let counter = match delivery {
                        Delivery::Delivered { .. } => done_ok,
                        Delivery::Failed { .. } => done_failed,
                    };
                    counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    (item, delivery)
                }
            })
            .buffer_unordered(self.config.concurrency)
            .ready_chunks(LEDGER_BATCH);
        tokio::pin!(deliveries);
        // Outcomes go to the ledger from a writer of its own, so requests keep flowing while
        // a batch is written; the writer merges what piled up meanwhile into one write.
        let (to_ledger, mut batches) = tokio::sync::mpsc::channel::<Vec<DeliveryOutcome>>(8);
        let writer = tokio::spawn(async move {
            while let Some(mut batch) = batches.recv().await {
                while batch.len() < LEDGER_BATCH {
                    match batches.try_recv() {
                        Ok(more) => batch.extend(more),
                        Err(_) => break,
                    }
                }
                ledger.record(&batch).await?;
            }
            Ok::<(), OperatorError>(())
        });
        // Progress every few seconds, so a slow or failing receiver shows in the log.
        let mut progress = tokio::time::interval(PROGRESS_EVERY);
        progress.tick().await;
        let mut results: Vec<(Option<sluice_operator_api::template::Value>, Delivery)> =
            Vec::with_capacity(total);
        loop {
            tokio::select! {
                chunk = deliveries.next() => {
                    let Some(chunk) = chunk else { break };
                    let outcomes: Vec<DeliveryOutcome> = chunk
                        .iter()
                        .map(|(item, delivery)| delivery.outcome(item_key(item)))
                        .collect();
                    results.extend(chunk);
                    if to_ledger.send(outcomes).await.is_err() {
                        // The writer stopped on an error: it is reported below.
                        break;
                    }
                }
                _ = progress.tick() => {
                    let ok = done_ok.load(std::sync::atomic::Ordering::Relaxed);
                    let failed = done_failed.load(std::sync::atomic::Ordering::Relaxed);
                    ctx.log.info(&format!(
                        "progress after {:.0}s: delivered {ok}, failed {failed}, remaining {}",
                        started.elapsed().as_secs_f64(),
                        total - ok - failed
                    ));
                }
            }
        }
        drop(to_ledger);
        writer
            .await
            .map_err(|e| OperatorError::retryable(format!("delivery ledger writer: {e}")))??;
        let mut delivered = 0u64;
        let mut failed = 0u64;
        let mut attempts = 0u64;
        let mut transient = false;
        let mut examples = Vec::new();
        for (item, delivery) in &results {
            let shown = item
                .as_ref()
                .map(|v| v.to_string())
                .unwrap_or_else(|| "-".into());
            match delivery {
                Delivery::Delivered { attempts: a } => {
                    delivered += 1;
                    attempts += u64::from(*a);
                }
                Delivery::Failed {
                    attempts: a,
                    permanent,
                    reason,
                } => {
                    failed += 1;
                    attempts += u64::from(*a);
                    transient |= !permanent;
                    ctx.log
                        .warn(&format!("item {shown}: not delivered: {reason}"));
                    if examples.len() < 3 {
                        examples.push(format!("{shown}: {reason}"));
                    }
                }
            }
        }
        ctx.log.info(&format!(
            "delivered {delivered}, failed {failed}, {attempts} request(s) in {:.2}s",
            started.elapsed().as_secs_f64()
        ));
        if failed > 0 {
            let message = format!(
                "{failed} of {} deliveries failed (delivered {delivered}): {}",
                results.len(),
                examples.join("; ")
            );
            return Err(if transient {
                OperatorError::retryable(message)
            } else {
                OperatorError::fatal(message)
            });
        }
        let mut values = serde_json::Map::new();
        values.insert("delivered".into(), delivered.into());
        values.insert("failed".into(), failed.into());
        values.insert("requests".into(), attempts.into());
        values.insert("skipped".into(), (skipped as u64).into());
        Ok(TaskOutput::values(values))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_operator_api::OperatorConfig;

    fn webhook(config: serde_json::Value) -> HttpWebhook {
        let config: HttpWebhookConfig = serde_json::from_value(config).unwrap();
        let method = reqwest::Method::from_bytes(config.method.as_bytes()).unwrap();
        assert!(config.clone().build().is_ok());
        HttpWebhook { config, method }
    }

    #[test]
    fn values_stay_inside_their_path_segment_and_header() {
        let dir = tempfile::tempdir().unwrap();
        let hook = webhook(serde_json::json!({
            "conn": "reports", "path": "/users/{{ conf.user }}/invalidate",
            "headers": {"X-User": "{{ conf.user }}"}
        }));
        let base = url::Url::parse("http://127.0.0.1:1/api/").unwrap();
        let prepare = |user: &str| {
            let ctx = crate::test_support::context(dir.path(), serde_json::json!({"user": user}));
            hook.prepare(&base, &ctx, None)
        };
        let ok = prepare("../../admin?drop=1#x %2F").unwrap();
        assert_eq!(
            ok.url.as_str(),
            "http://127.0.0.1:1/api/users/..%2F..%2Fadmin%3Fdrop%3D1%23x%20%252F/invalidate"
        );
        assert_eq!(ok.url.query(), None);
        let e = prepare("..").err().unwrap();
        assert!(e.starts_with("path: ") && e.contains("path segment"), "{e}");
        // Text and values together can still spell a dot segment.
        let pair = webhook(
            serde_json::json!({"conn": "reports", "path": "/a/.{{ conf.x }}{{ conf.y }}/b"}),
        );
        let ctx = crate::test_support::context(dir.path(), serde_json::json!({"x": "", "y": ""}));
        let e = pair.prepare(&base, &ctx, None).err().unwrap();
        assert!(e.contains("`..` segment"), "{e}");
        let e = prepare("x\r\nX-Admin: yes").err().unwrap();
        assert!(
            e.contains("header X-User") && e.contains("line break"),
            "{e}"
        );
    }
}
