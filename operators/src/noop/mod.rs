//! `noop`: does nothing and succeeds. For structure (join points) and benchmarks.

use std::sync::Arc;

use async_trait::async_trait;
use serde::Deserialize;

use sluice_operator_api::OperatorConfig;
use sluice_operator_api::{ConfigError, Operator, OperatorError, TaskContext, TaskOutput};

/// `noop` takes no settings.
#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NoopConfig {}

/// The built `noop` operator.
#[derive(Debug)]
pub struct Noop;

impl OperatorConfig for NoopConfig {
    const NAME: &'static str = "noop";
    const SUMMARY: &'static str = "Does nothing and succeeds (join points, benchmarks).";

    fn build(self) -> Result<Arc<dyn Operator>, ConfigError> {
        Ok(Arc::new(Noop))
    }
}

#[async_trait]
impl Operator for Noop {
    async fn execute(&self, _ctx: &TaskContext) -> Result<TaskOutput, OperatorError> {
        Ok(TaskOutput::default())
    }
}
