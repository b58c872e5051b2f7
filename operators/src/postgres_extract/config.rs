//! The settings of `postgres_extract` and how they build the operator (pure: no I/O).

use std::sync::Arc;

use serde::Deserialize;
use sluice_operator_api::{ConfigError, ConfigFile, Operator, OperatorConfig};

use super::PostgresExtract;

/// Settings of `postgres_extract`.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PostgresExtractConfig {
    /// Connection id of the source database (`SLUICE_CONN_<ID>=postgres://…`).
    pub conn: String,
    /// The query: inline SQL, or a path ending in `.sql` relative to the DAG file. Template
    /// values (`{{ data_interval_start }}`, `{{ params.x }}`) reach PostgreSQL as bind parameters.
    pub sql: String,
}

impl OperatorConfig for PostgresExtractConfig {
    const NAME: &'static str = "postgres_extract";
    const SUMMARY: &'static str =
        "Runs a query on PostgreSQL (binary COPY) and writes the result as an Arrow IPC table.";

    fn build(self) -> Result<Arc<dyn Operator>, ConfigError> {
        if self.conn.trim().is_empty() {
            return Err(ConfigError::field("conn", "must name a connection"));
        }
        if self.sql.trim().is_empty() {
            return Err(ConfigError::field("sql", "must not be empty"));
        }
        Ok(Arc::new(PostgresExtract { config: self }))
    }

    fn files(&self) -> Vec<ConfigFile> {
        ConfigFile::sql_path("sql", &self.sql).into_iter().collect()
    }
}
