//! The settings of `http_webhook` and how they build the operator (pure: no I/O).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use sluice_operator_api::{ConfigError, HumanDuration, Operator, OperatorConfig};

use super::HttpWebhook;

/// Which values to iterate over.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ForEach {
    /// A direct upstream task whose output has a table (its own, or the table it loaded).
    pub task: String,
    /// The column whose distinct non-null values are sent, one request each, as `{{ item }}`.
    pub column: String,
}

fn default_method() -> String {
    "POST".into()
}
fn default_concurrency() -> usize {
    16
}
fn default_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(10))
}
fn default_attempts() -> u32 {
    5
}
fn default_backoff() -> HumanDuration {
    HumanDuration(Duration::from_millis(200))
}
fn default_breaker_failures() -> u32 {
    5
}
fn default_breaker_cooldown() -> HumanDuration {
    HumanDuration(Duration::from_secs(5))
}

/// Settings of `http_webhook`.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpWebhookConfig {
    /// Connection id of the receiving service (`http(s)://host:port[/base]`; `?sslrootcert=/path/ca.pem` trusts a private CA).
    pub conn: String,
    /// HTTP method (default POST).
    #[serde(default = "default_method")]
    pub method: String,
    /// Path appended to the connection's URL, e.g. `/invalidate`; may use templates.
    pub path: String,
    /// Send one request per distinct value of an upstream table's column; without it, one request.
    #[serde(default)]
    pub for_each: Option<ForEach>,
    /// JSON body. Strings are templates; a string that is exactly `{{ expression }}` keeps the value's type.
    #[serde(default)]
    #[schemars(with = "Option<serde_json::Value>")]
    pub json: Option<serde_json::Value>,
    /// Request headers; values may use templates (e.g. `Idempotency-Key: "{{ run_id }}:{{ item }}"`).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Most requests in flight at once (default 16).
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Timeout of one request (default 10s).
    #[serde(default = "default_timeout")]
    #[schemars(with = "String")]
    pub timeout: HumanDuration,
    /// Attempts per value, the first included (default 5).
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
    /// Delay before the first retry of a value; doubles per attempt up to 30s (default 200ms).
    #[serde(default = "default_backoff")]
    #[schemars(with = "String")]
    pub backoff: HumanDuration,
    /// Consecutive transient failures (refused, timed out, 5xx, 408, 429) against the
    /// connection after which its circuit breaker opens and the remaining requests fail fast
    /// (default 5; 0 never opens it).
    #[serde(default = "default_breaker_failures")]
    pub breaker_failures: u32,
    /// How long an open breaker waits before one request probes the receiver again (default 5s).
    #[serde(default = "default_breaker_cooldown")]
    #[schemars(with = "String")]
    pub breaker_cooldown: HumanDuration,
    /// Records each item's delivery in the metadata store (default true), so a retry sends
    /// only what this attempt has not delivered. `false` re-sends every item on a retry: for
    /// receivers where a repeat costs nothing.
    #[serde(default = "default_ledger")]
    pub ledger: bool,
}

fn default_ledger() -> bool {
    true
}

impl OperatorConfig for HttpWebhookConfig {
    const NAME: &'static str = "http_webhook";
    const SUMMARY: &'static str =
        "Calls an HTTP endpoint once or per distinct value of an upstream column, with retries and bounded concurrency.";

    fn build(self) -> Result<Arc<dyn Operator>, ConfigError> {
        let method = reqwest::Method::from_bytes(self.method.to_ascii_uppercase().as_bytes())
            .map_err(|_| {
                ConfigError::field("method", format!("`{}` is not an HTTP method", self.method))
            })?;
        if self.concurrency == 0 {
            return Err(ConfigError::field("concurrency", "must be at least 1"));
        }
        if self.max_attempts == 0 {
            return Err(ConfigError::field("max_attempts", "must be at least 1"));
        }
        if self.timeout.0.is_zero() {
            return Err(ConfigError::field("timeout", "must be longer than 0s"));
        }
        for name in self.headers.keys() {
            reqwest::header::HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                ConfigError::field(format!("headers.{name}"), "is not a valid header name")
            })?;
        }
        Ok(Arc::new(HttpWebhook {
            method,
            config: self,
        }))
    }
}
