//! The settings of `shell` and how they build the operator (pure: no I/O).

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Deserialize;
use sluice_operator_api::{ConfigError, Operator, OperatorConfig};

use super::Shell;

/// Settings of `shell`.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ShellConfig {
    /// The command, run with `sh -c`; may use templates such as `{{ ds }}`. Each value reaches
    /// the command as data (an environment variable `$SLUICE_ARG_<n>`), never as shell code.
    pub command: String,
    /// Extra environment variables for the command; values may use templates.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Connections the command may use, by id: each arrives as `SLUICE_CONN_<ID>` (its URI).
    /// No other connection, and none of sluice's own settings, reach the command.
    #[serde(default)]
    pub connections: Vec<String>,
    /// Working directory; a relative path resolves against the DAG file's folder (the default).
    #[serde(default)]
    pub cwd: Option<String>,
    /// Exit codes that mean "failed, do not retry"; other non-zero codes are retried while retries remain.
    #[serde(default)]
    pub fatal_exit_codes: Vec<i32>,
}

impl OperatorConfig for ShellConfig {
    const NAME: &'static str = "shell";
    const SUMMARY: &'static str =
        "Runs a command with sh -c; output goes to the task log, a non-zero exit fails the try.";

    fn build(self) -> Result<Arc<dyn Operator>, ConfigError> {
        if self.command.trim().is_empty() {
            return Err(ConfigError::field("command", "must not be empty"));
        }
        // Where a value would be read as code is refused now, not when the task runs.
        sluice_operator_api::template::check_shell(&self.command).map_err(|e| {
            ConfigError::field("command", e.message.trim_start_matches("command: "))
        })?;
        for name in self.env.keys() {
            if name.is_empty() || name.contains('=') || name.contains('\0') {
                return Err(ConfigError::field(
                    format!("env.{name}"),
                    "is not a valid environment variable name",
                ));
            }
        }
        for id in &self.connections {
            if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(ConfigError::field(
                    "connections",
                    format!("`{id}` is not a connection id (letters, digits, _)"),
                ));
            }
        }
        Ok(Arc::new(Shell { config: self }))
    }
}
