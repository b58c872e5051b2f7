//! The settings of `clickhouse_load` and how they build the operator (pure: no I/O).

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use sluice_operator_api::{ConfigError, ConfigFile, HumanDuration, Operator, OperatorConfig};

use super::ClickhouseLoad;

fn default_batch_rows() -> usize {
    65_536
}
fn default_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(600))
}

/// Settings of `clickhouse_load`.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClickhouseLoadConfig {
    /// Connection id of the server (`SLUICE_CONN_<ID>=clickhouse://[user[:pw]@]host:http_port/database`).
    pub conn: String,
    /// Target table, in the connection's database.
    pub table: String,
    /// ClickHouse DDL file (relative to the DAG file) run when the table does not exist yet.
    #[serde(default)]
    pub ddl: Option<String>,
    /// The upstream task whose table is loaded (default: the only upstream task with a table).
    #[serde(default)]
    pub from: Option<String>,
    /// Table column set to the load's version: milliseconds since the epoch when the load started.
    #[serde(default)]
    pub version_column: Option<String>,
    /// Table column set to 0 (not deleted) on every row, the CDC convention.
    #[serde(default)]
    pub deleted_column: Option<String>,
    /// Rows per streamed batch (default 65536).
    #[serde(default = "default_batch_rows")]
    pub batch_rows: usize,
    /// Longest the whole insert may take (default 10m).
    #[serde(default = "default_timeout")]
    #[schemars(with = "String")]
    pub timeout: HumanDuration,
}

fn is_identifier(name: &str) -> bool {
    !name.is_empty()
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with(|c: char| c.is_ascii_digit())
}

impl OperatorConfig for ClickhouseLoadConfig {
    const NAME: &'static str = "clickhouse_load";
    const SUMMARY: &'static str = "Loads an upstream table into ClickHouse (checked against the table first, streamed as RowBinary).";

    fn build(self) -> Result<Arc<dyn Operator>, ConfigError> {
        if !is_identifier(&self.table) {
            return Err(ConfigError::field(
                "table",
                format!("`{}` is not a table name (letters, digits, _)", self.table),
            ));
        }
        for (field, value) in [
            ("version_column", &self.version_column),
            ("deleted_column", &self.deleted_column),
        ] {
            if let Some(name) = value {
                if !is_identifier(name) {
                    return Err(ConfigError::field(
                        field,
                        format!("`{name}` is not a column name"),
                    ));
                }
            }
        }
        if self.batch_rows == 0 {
            return Err(ConfigError::field("batch_rows", "must be at least 1"));
        }
        Ok(Arc::new(ClickhouseLoad { config: self }))
    }

    fn files(&self) -> Vec<ConfigFile> {
        self.ddl
            .iter()
            .map(|ddl| ConfigFile::new("ddl", ddl))
            .collect()
    }
}
