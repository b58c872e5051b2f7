//! The settings of `polars_sql` and how they build the operator (pure: no I/O).

use std::sync::Arc;

use serde::Deserialize;
use sluice_operator_api::{template, ConfigError, ConfigFile, Operator, OperatorConfig};

use super::PolarsSql;

/// Settings of `polars_sql`.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PolarsSqlConfig {
    /// The query: inline SQL or a path ending in `.sql` relative to the DAG file. Upstream
    /// tables are named by task id (`FROM extract_crm`). No templates: pass values as columns.
    pub sql: String,
}

impl OperatorConfig for PolarsSqlConfig {
    const NAME: &'static str = "polars_sql";
    const SUMMARY: &'static str = "Runs SQL (Polars) over upstream tables, named by task id, and writes the result as a table.";

    fn build(self) -> Result<Arc<dyn Operator>, ConfigError> {
        if self.sql.trim().is_empty() {
            return Err(ConfigError::field("sql", "must not be empty"));
        }
        if template::is_template(&self.sql) {
            return Err(ConfigError::field(
                "sql",
                "polars_sql takes no template values (Polars SQL has no bind parameters); select them as columns upstream",
            ));
        }
        Ok(Arc::new(PolarsSql { config: self }))
    }

    fn files(&self) -> Vec<ConfigFile> {
        ConfigFile::sql_path("sql", &self.sql).into_iter().collect()
    }
}
