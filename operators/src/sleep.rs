//! `sleep`: waits for a duration, then succeeds. For tests, demos and benchmarks.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;

use crate::registry::OperatorConfig;
use crate::{ConfigError, Operator, OperatorError, TaskContext, TaskOutput};

/// Settings of `sleep`.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SleepConfig {
    /// How long to wait, e.g. `500ms`, `2s`, `1m`.
    pub duration: String,
}

/// The built `sleep` operator.
#[derive(Debug)]
pub struct Sleep {
    duration: Duration,
}

impl OperatorConfig for SleepConfig {
    const NAME: &'static str = "sleep";
    const SUMMARY: &'static str = "Waits for a duration, then succeeds; stops early when cancelled.";

    fn build(self) -> Result<Arc<dyn Operator>, ConfigError> {
        let duration = humantime::parse_duration(&self.duration)
            .map_err(|e| ConfigError::field("duration", format!("`{}` is not a duration: {e}", self.duration)))?;
        Ok(Arc::new(Sleep { duration }))
    }
}

#[async_trait]
impl Operator for Sleep {
    async fn execute(&self, ctx: &TaskContext) -> Result<TaskOutput, OperatorError> {
        tokio::select! {
            _ = tokio::time::sleep(self.duration) => Ok(TaskOutput::default()),
            _ = ctx.cancel.cancelled() => Err(OperatorError::retryable("cancelled while sleeping")),
        }
    }
}
