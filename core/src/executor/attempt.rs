//! One try of one task: runs the operator under its timeout and cancellation, catches
//! panics, and reports a classified outcome. Knows nothing of the store.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use sluice_operator_api::{FailureKind, Masker, Operator, OperatorError, TaskContext, TaskOutput};

/// How long an operator gets to stop by itself after its timeout or a cancellation,
/// before its future is dropped (which kills child processes).
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// How a try ended.
#[derive(Debug)]
pub enum TryOutcome {
    /// The operator succeeded; its output is within the size limit.
    Success {
        /// What it returned.
        output: TaskOutput,
    },
    /// The operator failed, timed out or panicked.
    Failure {
        /// Whether another try could help.
        kind: FailureKind,
        /// What happened.
        message: String,
    },
    /// The run was cancelled while the try ran.
    Cancelled,
}

impl TryOutcome {
    /// The outcome with secrets masked in its output values and error message.
    pub fn masked(self, masker: &Masker) -> Self {
        if masker.is_empty() {
            return self;
        }
        match self {
            TryOutcome::Success { mut output } => {
                let mut values = serde_json::Value::Object(std::mem::take(&mut output.values));
                masker.mask_json(&mut values);
                if let serde_json::Value::Object(values) = values {
                    output.values = values;
                }
                TryOutcome::Success { output }
            }
            TryOutcome::Failure { kind, message } => TryOutcome::Failure {
                kind,
                message: masker.mask(&message),
            },
            TryOutcome::Cancelled => TryOutcome::Cancelled,
        }
    }
}

/// The `tries_running` gauge, up while a try runs (down when dropped, however it ends).
struct Running(prometheus_client::metrics::gauge::Gauge);

impl Running {
    fn start() -> Self {
        let gauge = crate::metrics::metrics().tries_running.clone();
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Runs `operator` once with `ctx`, stopping it after `timeout`.
pub async fn run_try(
    operator: Arc<dyn Operator>,
    ctx: TaskContext,
    timeout: Option<Duration>,
) -> TryOutcome {
    let started = Instant::now();
    let cancel = ctx.cancel.clone();
    // Counted while the try runs, whichever way it ends.
    let _running = Running::start();
    let log = ctx.log.clone();
    let execution = AssertUnwindSafe(async move { operator.execute(&ctx).await }).catch_unwind();
    tokio::pin!(execution);
    let deadline = async {
        match timeout {
            Some(limit) => tokio::time::sleep(limit).await,
            None => std::future::pending().await,
        }
    };
    let result = tokio::select! {
        result = &mut execution => Some(result),
        _ = deadline => None,
        _ = cancel.cancelled() => {
            // Operators that check the token stop by themselves; the others are dropped after
            // the grace period (which also kills the processes they started).
            match tokio::time::timeout(STOP_GRACE, &mut execution).await {
                Ok(Ok(Ok(output))) => Some(Ok(Ok(output))),
                _ => {
                    log.warn("stopped: cancelled");
                    return TryOutcome::Cancelled;
                }
            }
        }
    };
    let outcome = match result {
        Some(Ok(Ok(output))) => success(output),
        Some(Ok(Err(error))) if cancel.is_cancelled() => {
            log.warn(&format!("stopped after cancellation: {}", error.message));
            TryOutcome::Cancelled
        }
        Some(Ok(Err(error))) => TryOutcome::Failure {
            kind: error.kind,
            message: error.message,
        },
        Some(Err(panic)) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            TryOutcome::Failure {
                kind: FailureKind::Fatal,
                message: format!("operator panicked: {what}"),
            }
        }
        None => {
            let limit = timeout.unwrap_or_default();
            cancel.cancel();
            // Give the operator a moment to clean up; dropping its future afterwards kills what is left.
            let _ = tokio::time::timeout(STOP_GRACE, &mut execution).await;
            TryOutcome::Failure {
                kind: FailureKind::Retryable,
                message: format!(
                    "timed out after {} (execution_timeout)",
                    humantime::format_duration(limit)
                ),
            }
        }
    };
    let took =
        humantime::format_duration(Duration::from_millis(started.elapsed().as_millis() as u64));
    match &outcome {
        TryOutcome::Success { .. } => log.info_if_written(&format!("try succeeded in {took}")),
        TryOutcome::Failure { kind, message } => {
            log.warn(&format!("try failed ({kind:?}) after {took}: {message}"))
        }
        TryOutcome::Cancelled => log.warn(&format!("try cancelled after {took}")),
    }
    outcome
}

fn success(output: TaskOutput) -> TryOutcome {
    match output.to_json() {
        Ok(_) => TryOutcome::Success { output },
        Err(OperatorError { kind, message }) => TryOutcome::Failure { kind, message },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_and_errors_leave_a_try_masked() {
        let masker = Masker::new(["hunter2-pass".to_string()]);
        let mut values = serde_json::Map::new();
        values.insert(
            "last_line".into(),
            "dsn postgres://u:hunter2-pass@h/db".into(),
        );
        values.insert("api_token".into(), "anything".into());
        values.insert("rows".into(), 3.into());
        let TryOutcome::Success { output } = (TryOutcome::Success {
            output: TaskOutput::values(values),
        })
        .masked(&masker) else {
            panic!("still a success")
        };
        assert_eq!(
            serde_json::Value::Object(output.values),
            serde_json::json!({"last_line": "dsn postgres://u:***@h/db", "api_token": "***", "rows": 3})
        );
        let failure = TryOutcome::Failure {
            kind: FailureKind::Fatal,
            message: "cannot log in with hunter2-pass".into(),
        }
        .masked(&masker);
        assert!(
            matches!(failure, TryOutcome::Failure { ref message, .. } if message == "cannot log in with ***"),
            "{failure:?}"
        );
    }
}
