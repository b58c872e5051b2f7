//! The settings of `clickhouse_load` and how they build the operator (pure: no I/O).

use std::collections::BTreeMap;
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
    /// Connection id of the server (`SLUICE_CONN_<ID>=clickhouse://[user[:pw]@]host:http_port/database`; HTTPS: `?secure=true`, with `&sslrootcert=/path/ca.pem` for a private CA).
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
    /// The slice of the table one load owns, as column → value (templates allowed), e.g.
    /// `window_start: "{{ data_interval_start }}"`. After the load, every key that slice held
    /// at an earlier version and this load no longer has gets a tombstone: a copy of its row
    /// at the new version with the deleted column set to 1. The output table then carries the
    /// loaded rows and the slice's tombstones, marked by the deleted column. Needs
    /// `version_column` and `deleted_column`.
    #[serde(default)]
    pub replace_scope: BTreeMap<String, String>,
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
        for column in self.replace_scope.keys() {
            if !is_identifier(column) {
                return Err(ConfigError::field(
                    "replace_scope",
                    format!("`{column}` is not a column name"),
                ));
            }
            if Some(column) == self.version_column.as_ref()
                || Some(column) == self.deleted_column.as_ref()
            {
                return Err(ConfigError::field(
                    "replace_scope",
                    format!("`{column}` is the version or deleted column, not part of a slice"),
                ));
            }
        }
        if !self.replace_scope.is_empty()
            && (self.version_column.is_none() || self.deleted_column.is_none())
        {
            return Err(ConfigError::field(
                "replace_scope",
                "tombstones need `version_column` and `deleted_column` (a ReplacingMergeTree's version and a UInt8 deleted flag)",
            ));
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn build(config: serde_json::Value) -> Result<Arc<dyn Operator>, ConfigError> {
        serde_json::from_value::<ClickhouseLoadConfig>(config)
            .unwrap()
            .build()
    }

    #[test]
    fn a_replace_scope_needs_the_version_and_deleted_columns() {
        let scope = json!({"window_start": "{{ data_interval_start }}"});
        let e = build(json!({"conn": "ch", "table": "t", "replace_scope": scope})).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("replace_scope"), "{e:?}");
        assert!(e.message.contains("version_column"), "{e:?}");
        let flags = |scope: serde_json::Value| {
            json!({"conn": "ch", "table": "t", "version_column": "_version",
                   "deleted_column": "_deleted", "replace_scope": scope})
        };
        assert!(build(flags(scope)).is_ok());
        let e = build(flags(json!({"w; DROP TABLE t": "x"}))).unwrap_err();
        assert!(e.message.contains("not a column name"), "{e:?}");
        let e = build(flags(json!({"_version": "1"}))).unwrap_err();
        assert!(e.message.contains("version or deleted column"), "{e:?}");
    }
}
