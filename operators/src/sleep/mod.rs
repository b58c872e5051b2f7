//! `sleep`: waits for a duration, then succeeds. For tests, demos and benchmarks.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;

use sluice_operator_api::OperatorConfig;
use sluice_operator_api::{
    ConfigError, HumanDuration, Operator, OperatorError, TaskContext, TaskOutput,
};

/// Settings of `sleep`.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SleepConfig {
    /// How long to wait, e.g. `500ms`, `2s`, `1m`, or a number of seconds.
    #[schemars(with = "String")]
    pub duration: HumanDuration,
}

/// The built `sleep` operator.
#[derive(Debug)]
pub struct Sleep {
    duration: Duration,
}

impl OperatorConfig for SleepConfig {
    const NAME: &'static str = "sleep";
    const SUMMARY: &'static str =
        "Waits for a duration, then succeeds; stops early when cancelled.";

    fn build(self) -> Result<Arc<dyn Operator>, ConfigError> {
        Ok(Arc::new(Sleep {
            duration: self.duration.0,
        }))
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
