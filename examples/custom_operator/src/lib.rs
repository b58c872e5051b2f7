//! An operator of your own: `file_sensor` waits until a file appears (Airflow's
//! `FileSensor`), then succeeds with the file's path and size as its output.
//!
//! Everything an operator needs comes from `sluice-operator-api`:
//! - a config struct (serde, unknown keys rejected, a doc comment per field: `sluice
//!   operators describe file_sensor` and the API's `/api/v1/operators` show them);
//! - [`OperatorConfig::build`], pure, run when the DAG is parsed, so `dags validate` catches
//!   a bad config before any run;
//! - [`Operator::execute`], run once per try with the [`TaskContext`]: rendered template
//!   values, the try's log, its cancellation signal.
//!
//! `src/main.rs` registers it next to the built-in operators and hands the registry to the
//! core; the scheduler, the executor, the web server and the CLI then know it like any other.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use sluice_operator_api::{
    ConfigError, HumanDuration, Operator, OperatorConfig, OperatorError, Registry, TaskContext,
    TaskOutput,
};

fn default_poke_interval() -> HumanDuration {
    HumanDuration(Duration::from_secs(30))
}

/// Settings of `file_sensor`.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileSensorConfig {
    /// The file to wait for; a template (`drops/{{ ds }}.csv`), relative to the DAG file's
    /// folder unless absolute.
    pub path: String,
    /// How often to look (default 30s).
    #[serde(default = "default_poke_interval")]
    #[schemars(with = "String")]
    pub poke_interval: HumanDuration,
}

/// The built `file_sensor` operator.
#[derive(Debug)]
pub struct FileSensor {
    config: FileSensorConfig,
}

impl OperatorConfig for FileSensorConfig {
    const NAME: &'static str = "file_sensor";
    const SUMMARY: &'static str = "Waits until a file exists, then outputs its path and size.";

    fn build(self) -> Result<Arc<dyn Operator>, ConfigError> {
        if self.path.trim().is_empty() {
            return Err(ConfigError::field("path", "must name a file"));
        }
        if self.poke_interval.0.is_zero() {
            return Err(ConfigError::field(
                "poke_interval",
                "must be longer than 0s",
            ));
        }
        Ok(Arc::new(FileSensor { config: self }))
    }
}

#[async_trait]
impl Operator for FileSensor {
    async fn execute(&self, ctx: &TaskContext) -> Result<TaskOutput, OperatorError> {
        let path = ctx.resolve_path(&ctx.render(&self.config.path)?);
        ctx.log.info(&format!("waiting for {}", path.display()));
        loop {
            match tokio::fs::metadata(&path).await {
                Ok(meta) if meta.is_file() => {
                    ctx.log.info(&format!(
                        "{} is there ({} bytes)",
                        path.display(),
                        meta.len()
                    ));
                    let mut values = serde_json::Map::new();
                    values.insert("path".into(), path.display().to_string().into());
                    values.insert("bytes".into(), meta.len().into());
                    return Ok(TaskOutput::values(values));
                }
                Ok(_) => {
                    return Err(OperatorError::fatal(format!(
                        "{} exists but is not a file",
                        path.display()
                    )))
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(OperatorError::retryable(format!(
                        "cannot look at {}: {e}",
                        path.display()
                    )))
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(self.config.poke_interval.0) => {}
                _ = ctx.cancel.cancelled() => {
                    return Err(OperatorError::retryable("cancelled while waiting for the file"));
                }
            }
        }
    }
}

/// The built-in operators plus `file_sensor`: the one registry the program hands to the core.
pub fn registry() -> Registry {
    sluice_operators::registry().with::<FileSensorConfig>()
}
