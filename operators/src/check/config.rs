//! The settings of `check` and how they build the operator (pure: no I/O).

use std::sync::Arc;

use serde::Deserialize;
use sluice_operator_api::{template, ConfigError, HumanDuration, Operator, OperatorConfig};

use super::Check;

/// Settings of `check`.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckConfig {
    /// The checks, each measuring one number and comparing it with its bounds.
    pub checks: Vec<CheckSpec>,
}

/// What a failed check does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// The task fails (and its `on_failure` channels hear of it).
    #[default]
    Fail,
    /// The task succeeds with a warning (its `on_warning` channels hear of it).
    Warn,
}

/// One check: a name, the upstream table it reads (every kind but `sql`), a severity, and
/// exactly one kind.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckSpec {
    /// Unique among the task's checks.
    pub name: String,
    /// The upstream task whose table is checked.
    #[serde(default)]
    pub table: Option<String>,
    /// `fail` (default) or `warn`.
    #[serde(default)]
    pub severity: Severity,
    /// Rows in the table, within `min` and `max`.
    #[serde(default)]
    pub row_count: Option<Bounds>,
    /// Share of nulls in a column, at most `max` (default 0).
    #[serde(default)]
    pub null_fraction: Option<NullFraction>,
    /// Rows whose columns repeat another row's: none.
    #[serde(default)]
    pub unique: Option<Unique>,
    /// Rows whose value is outside `min`..`max`: none (nulls are not counted).
    #[serde(default)]
    pub range: Option<Range>,
    /// Age of the newest value of a timestamp column at the end of the run's data interval,
    /// at most `max_age`.
    #[serde(default)]
    pub freshness: Option<Freshness>,
    /// A query over the upstream tables (named by task id) whose first value is the measure,
    /// within `min` and `max`.
    #[serde(default)]
    pub sql: Option<SqlCheck>,
    /// A query on a ClickHouse table (a load's result) whose first value is the measure,
    /// within `min` and `max`.
    #[serde(default)]
    pub clickhouse: Option<ClickhouseCheck>,
}

/// `clickhouse:`.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClickhouseCheck {
    /// Connection id of the server (`SLUICE_CONN_<ID>=clickhouse://host:http_port/database`; HTTPS: `?secure=true`).
    pub conn: String,
    /// The query; `{data_interval_start}`, `{data_interval_end}`, `{logical_date}`, `{run_id}`
    /// and `{dag_id}` stand for the run's values as quoted string literals (data, never SQL:
    /// `parseDateTimeBestEffort({data_interval_start})`). No templates.
    pub query: String,
    /// Lowest value that passes.
    #[serde(default)]
    pub min: Option<f64>,
    /// Highest value that passes.
    #[serde(default)]
    pub max: Option<f64>,
}

/// Inclusive bounds; either may be absent.
#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Bounds {
    /// Lowest value that passes.
    #[serde(default)]
    pub min: Option<f64>,
    /// Highest value that passes.
    #[serde(default)]
    pub max: Option<f64>,
}

/// `null_fraction:`.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NullFraction {
    /// The column.
    pub column: String,
    /// Highest share of nulls that passes (default 0).
    #[serde(default)]
    pub max: f64,
}

/// `unique:`.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Unique {
    /// The columns that together identify a row.
    pub columns: Vec<String>,
}

/// `range:`.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Range {
    /// The column (numeric).
    pub column: String,
    /// Lowest allowed value.
    #[serde(default)]
    pub min: Option<f64>,
    /// Highest allowed value.
    #[serde(default)]
    pub max: Option<f64>,
}

/// `freshness:`.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Freshness {
    /// The timestamp column.
    pub column: String,
    /// Oldest the newest value may be at the end of the data interval.
    #[schemars(with = "String")]
    pub max_age: HumanDuration,
}

/// `sql:`.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SqlCheck {
    /// The query (Polars SQL, no templates): its first row's first value is the measure.
    pub query: String,
    /// Lowest value that passes.
    #[serde(default)]
    pub min: Option<f64>,
    /// Highest value that passes.
    #[serde(default)]
    pub max: Option<f64>,
}

impl CheckSpec {
    /// The kinds given (exactly one is valid).
    pub fn kinds(&self) -> Vec<&'static str> {
        [
            ("row_count", self.row_count.is_some()),
            ("null_fraction", self.null_fraction.is_some()),
            ("unique", self.unique.is_some()),
            ("range", self.range.is_some()),
            ("freshness", self.freshness.is_some()),
            ("sql", self.sql.is_some()),
            ("clickhouse", self.clickhouse.is_some()),
        ]
        .into_iter()
        .filter(|(_, given)| *given)
        .map(|(kind, _)| kind)
        .collect()
    }
}

impl OperatorConfig for CheckConfig {
    const NAME: &'static str = "check";
    const SUMMARY: &'static str = "Data checks with thresholds over upstream tables: row counts, null shares, uniqueness, value ranges, freshness and SQL measures; `fail` fails the task, `warn` notifies and goes on.";

    fn build(self) -> Result<Arc<dyn Operator>, ConfigError> {
        if self.checks.is_empty() {
            return Err(ConfigError::field("checks", "give at least one check"));
        }
        let mut names = std::collections::HashSet::new();
        for (i, check) in self.checks.iter().enumerate() {
            let at = |field: &str| format!("checks[{i}].{field}");
            if check.name.trim().is_empty() {
                return Err(ConfigError::field(at("name"), "must not be empty"));
            }
            if !names.insert(check.name.clone()) {
                return Err(ConfigError::field(
                    at("name"),
                    format!("`{}` is used twice", check.name),
                ));
            }
            let kinds = check.kinds();
            if kinds.len() != 1 {
                return Err(ConfigError::field(
                    format!("checks[{i}]"),
                    format!(
                        "`{}` needs exactly one of row_count, null_fraction, unique, range, freshness, sql, clickhouse (found {})",
                        check.name,
                        if kinds.is_empty() { "none".to_string() } else { kinds.join(", ") }
                    ),
                ));
            }
            if let Some(ch) = &check.clickhouse {
                if ch.conn.trim().is_empty() {
                    return Err(ConfigError::field(
                        at("clickhouse.conn"),
                        "must not be empty",
                    ));
                }
                if ch.query.trim().is_empty() || template::is_template(&ch.query) {
                    return Err(ConfigError::field(
                        at("clickhouse.query"),
                        "a query without templates: {data_interval_start}, {run_id}, … stand for the run's values",
                    ));
                }
            }
            match (&check.sql, &check.table) {
                _ if check.clickhouse.is_some() => {}
                (Some(sql), _) => {
                    if sql.query.trim().is_empty() || template::is_template(&sql.query) {
                        return Err(ConfigError::field(
                            at("sql.query"),
                            "a query without templates (select values as columns upstream)",
                        ));
                    }
                }
                (None, None) => {
                    return Err(ConfigError::field(
                        at("table"),
                        format!(
                            "`{}` needs the upstream task whose table it checks",
                            check.name
                        ),
                    ))
                }
                (None, Some(_)) => {}
            }
            if let Some(unique) = &check.unique {
                if unique.columns.is_empty() {
                    return Err(ConfigError::field(
                        at("unique.columns"),
                        "at least one column",
                    ));
                }
            }
            let bounds = match (
                &check.row_count,
                &check.range,
                &check.sql,
                &check.clickhouse,
            ) {
                (Some(b), _, _, _) => Some((b.min, b.max)),
                (_, Some(r), _, _) => Some((r.min, r.max)),
                (_, _, Some(s), _) => Some((s.min, s.max)),
                (_, _, _, Some(c)) => Some((c.min, c.max)),
                _ => None,
            };
            if let Some((min, max)) = bounds {
                if min.is_none() && max.is_none() {
                    return Err(ConfigError::field(
                        format!("checks[{i}].{}", kinds[0]),
                        "give min, max or both",
                    ));
                }
                if let (Some(lo), Some(hi)) = (min, max) {
                    if lo > hi {
                        return Err(ConfigError::field(
                            format!("checks[{i}].{}", kinds[0]),
                            format!("min {lo} is above max {hi}"),
                        ));
                    }
                }
            }
        }
        Ok(Arc::new(Check { config: self }))
    }
}
