//! `check`: data checks with thresholds over the upstream tasks' tables (Polars). Each check
//! measures one number (rows, a share of nulls, duplicated keys, values out of range, the age
//! of the newest timestamp, a SQL measure, or a measure of a ClickHouse table) and compares
//! it with its bounds. Every result is
//! logged and recorded in the task's output with its measured value; a failed `fail` check
//! fails the task (not retryable: the data does not change on a retry), a failed `warn` check
//! is a warning the task's `on_warning` channels hear of.
//!
//! Effects: none outside the try (it only reads artifacts).

use async_trait::async_trait;
use polars::prelude::*;
use polars::sql::SQLContext;
use serde_json::json;

use crate::frame;
use sluice_operator_api::{Operator, OperatorError, TaskContext, TaskOutput};

mod config;
pub use config::{CheckConfig, CheckSpec, Severity};

/// The built `check` operator.
#[derive(Debug)]
pub struct Check {
    config: CheckConfig,
}

/// One check's outcome.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// The check's name.
    pub name: String,
    /// Its kind.
    pub kind: &'static str,
    /// What it measured.
    pub measured: f64,
    /// What passes, as text (`≤ 0.1`, `1 ≤ … ≤ 1000`).
    pub expected: String,
    /// Whether it passed.
    pub passed: bool,
    /// What a failure does.
    pub severity: Severity,
}

fn within(value: f64, min: Option<f64>, max: Option<f64>) -> bool {
    min.is_none_or(|lo| value >= lo) && max.is_none_or(|hi| value <= hi)
}

fn expected(min: Option<f64>, max: Option<f64>) -> String {
    match (min, max) {
        (Some(lo), Some(hi)) => format!("{lo} ≤ … ≤ {hi}"),
        (Some(lo), None) => format!("≥ {lo}"),
        (None, Some(hi)) => format!("≤ {hi}"),
        (None, None) => "anything".into(),
    }
}

fn polars_error(check: &str) -> impl Fn(PolarsError) -> OperatorError + '_ {
    move |e| OperatorError::fatal(format!("check `{check}`: {e}"))
}

/// A column identifier for SQL, quoted (a name from the config is an identifier, never code).
fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Measures `check` over the tables (`tables[task] = frame`) at the end of the data interval
/// `interval_end_us` (µs since the epoch). Pure: no I/O.
pub fn measure(
    check: &CheckSpec,
    tables: &std::collections::BTreeMap<String, DataFrame>,
    interval_end_us: i64,
) -> Result<Outcome, OperatorError> {
    let err = polars_error(&check.name);
    let table = || -> Result<&DataFrame, OperatorError> {
        let name = check.table.as_deref().unwrap_or_default();
        tables.get(name).ok_or_else(|| {
            OperatorError::fatal(format!(
                "check `{}`: `{name}` is not an upstream task with a table (upstream tables: {})",
                check.name,
                tables.keys().cloned().collect::<Vec<_>>().join(", ")
            ))
        })
    };
    let column = |df: &DataFrame, name: &str| -> Result<Series, OperatorError> {
        df.column(name)
            .map(|c| c.as_materialized_series().clone())
            .map_err(|_| {
                OperatorError::fatal(format!(
                    "check `{}`: table `{}` has no column `{name}` (columns: {})",
                    check.name,
                    check.table.as_deref().unwrap_or_default(),
                    df.get_column_names()
                        .iter()
                        .map(|c| c.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })
    };
    let outcome = |kind, measured: f64, min: Option<f64>, max: Option<f64>| Outcome {
        name: check.name.clone(),
        kind,
        measured,
        expected: expected(min, max),
        passed: within(measured, min, max),
        severity: check.severity,
    };
    if let Some(bounds) = &check.row_count {
        let rows = table()?.height() as f64;
        return Ok(outcome("row_count", rows, bounds.min, bounds.max));
    }
    if let Some(nulls) = &check.null_fraction {
        let df = table()?;
        let series = column(df, &nulls.column)?;
        let share = if df.height() == 0 {
            0.0
        } else {
            series.null_count() as f64 / df.height() as f64
        };
        return Ok(outcome("null_fraction", share, None, Some(nulls.max)));
    }
    if let Some(unique) = &check.unique {
        let df = table()?;
        for c in &unique.columns {
            let _ = column(df, c)?;
        }
        let keys = unique
            .columns
            .iter()
            .map(|c| ident(c))
            .collect::<Vec<_>>()
            .join(", ");
        let mut context = SQLContext::new();
        context.register("t", df.clone().lazy());
        let repeated = context
            .execute(&format!(
                "SELECT COUNT(*) AS n FROM (SELECT {keys}, COUNT(*) AS c FROM t GROUP BY {keys}) g WHERE c > 1"
            ))
            .and_then(|lazy| lazy.collect())
            .map_err(&err)?;
        let n = first_number(&repeated).map_err(&err)?;
        return Ok(outcome("unique", n, None, Some(0.0)));
    }
    if let Some(range) = &check.range {
        let df = table()?;
        let values = column(df, &range.column)?
            .strict_cast(&DataType::Float64)
            .map_err(&err)?;
        let outside = values
            .f64()
            .map_err(&err)?
            .iter()
            .flatten()
            .filter(|v| !within(*v, range.min, range.max))
            .count() as f64;
        let mut out = outcome("range", outside, None, Some(0.0));
        out.expected = format!("no value outside {}", expected(range.min, range.max));
        return Ok(out);
    }
    if let Some(fresh) = &check.freshness {
        let df = table()?;
        let newest = column(df, &fresh.column)?
            .cast(&DataType::Datetime(TimeUnit::Microseconds, None))
            .map_err(&err)?
            .cast(&DataType::Int64)
            .map_err(&err)?
            .i64()
            .map_err(&err)?
            .max();
        // An empty table has no fresh value: as old as can be.
        let age = newest.map_or(f64::INFINITY, |n| (interval_end_us - n) as f64 / 1e6);
        let max_age = fresh.max_age.0.as_secs_f64();
        let mut out = outcome("freshness", age, None, Some(max_age));
        out.expected = format!("≤ {max_age} s old at the interval's end");
        return Ok(out);
    }
    if let Some(sql) = &check.sql {
        let mut context = SQLContext::new();
        for (name, df) in tables {
            context.register(name, df.clone().lazy());
        }
        let result = context
            .execute(sql.query.trim().trim_end_matches(';'))
            .and_then(|lazy| lazy.collect())
            .map_err(&err)?;
        let value = first_number(&result).map_err(&err)?;
        return Ok(outcome("sql", value, sql.min, sql.max));
    }
    Err(OperatorError::fatal(format!(
        "check `{}` has no kind",
        check.name
    )))
}

/// The query of a ClickHouse check with the run's values in place, each a quoted string
/// literal (data, never SQL).
pub fn clickhouse_query(query: &str, vars: &sluice_operator_api::TemplateVars) -> String {
    use crate::clickhouse_load::clickhouse_http::quote;
    let mut sql = query.trim().trim_end_matches(';').to_string();
    for (name, value) in [
        ("data_interval_start", &vars.data_interval_start),
        ("data_interval_end", &vars.data_interval_end),
        ("logical_date", &vars.logical_date),
        ("run_id", &vars.run_id),
        ("dag_id", &vars.dag_id),
    ] {
        sql = sql.replace(&format!("{{{name}}}"), &quote(value));
    }
    sql
}

async fn measure_clickhouse(
    check: &CheckSpec,
    ch: &config::ClickhouseCheck,
    ctx: &TaskContext,
) -> Result<Outcome, OperatorError> {
    let server = crate::clickhouse_load::clickhouse_http::ClickHouse::new(
        ctx.connection(&ch.conn)?,
        std::time::Duration::from_secs(60),
    )?;
    let sql = clickhouse_query(&ch.query, &ctx.vars);
    let answer = server.execute(&format!("{sql} FORMAT TSV")).await?;
    let first = answer
        .lines()
        .next()
        .and_then(|l| l.split('\t').next())
        .unwrap_or_default();
    let measured: f64 = first.trim().parse().map_err(|_| {
        OperatorError::fatal(format!(
            "check `{}`: the ClickHouse query's first value `{first}` is not a number",
            check.name
        ))
    })?;
    Ok(Outcome {
        name: check.name.clone(),
        kind: "clickhouse",
        measured,
        expected: expected(ch.min, ch.max),
        passed: within(measured, ch.min, ch.max),
        severity: check.severity,
    })
}

/// The first value of the first column, as a number.
fn first_number(df: &DataFrame) -> Result<f64, PolarsError> {
    let first = df
        .columns()
        .first()
        .ok_or_else(|| PolarsError::NoData("the query returned no column".into()))?;
    if first.is_empty() {
        return Err(PolarsError::NoData("the query returned no row".into()));
    }
    // NULL is no measure (MIN over nulls only): the check errs rather than pass.
    first
        .strict_cast(&DataType::Float64)?
        .f64()?
        .get(0)
        .ok_or_else(|| PolarsError::NoData("the measure is NULL".into()))
}

#[async_trait]
impl Operator for Check {
    async fn execute(&self, ctx: &TaskContext) -> Result<TaskOutput, OperatorError> {
        let mut paths = Vec::new();
        for (task, output) in &ctx.upstream {
            if let Some(table) = &output.table {
                let path = ctx
                    .artifacts
                    .local_path(table)
                    .await
                    .map_err(|e| OperatorError::fatal(e.to_string()))?;
                paths.push((task.clone(), path));
            }
        }
        let end = chrono::DateTime::parse_from_rfc3339(&ctx.vars.data_interval_end)
            .map(|t| t.timestamp_micros())
            .map_err(|e| OperatorError::fatal(format!("data interval end: {e}")))?;
        let checks: Vec<CheckSpec> = self
            .config
            .checks
            .iter()
            .filter(|c| c.clickhouse.is_none())
            .cloned()
            .collect();
        // Reading and measuring tables are CPU work: off the async threads.
        let mut outcomes = if checks.is_empty() {
            Vec::new()
        } else {
            tokio::task::spawn_blocking(move || {
                let mut tables = std::collections::BTreeMap::new();
                for (task, path) in &paths {
                    tables.insert(task.clone(), frame::read_ipc(path)?);
                }
                checks
                    .iter()
                    .map(|check| measure(check, &tables, end))
                    .collect::<Result<Vec<Outcome>, OperatorError>>()
            })
            .await
            .map_err(|e| OperatorError::fatal(format!("checks panicked: {e}")))??
        };
        for check in &self.config.checks {
            if let Some(ch) = &check.clickhouse {
                outcomes.push(measure_clickhouse(check, ch, ctx).await?);
            }
        }
        // In the order the config lists them.
        let order = |name: &str| self.config.checks.iter().position(|c| c.name == name);
        outcomes.sort_by_key(|o| order(&o.name));
        let mut failed = Vec::new();
        let mut warnings = Vec::new();
        for o in &outcomes {
            let verdict = match (o.passed, o.severity) {
                (true, _) => "passed",
                (false, Severity::Warn) => "WARNED",
                (false, Severity::Fail) => "FAILED",
            };
            let line = format!(
                "check {} ({}) {verdict}: measured {}, expected {}",
                o.name, o.kind, o.measured, o.expected
            );
            match verdict {
                "passed" => ctx.log.info(&line),
                _ => ctx.log.warn(&line),
            }
            let summary = format!(
                "{}: measured {}, expected {}",
                o.name, o.measured, o.expected
            );
            match (o.passed, o.severity) {
                (false, Severity::Fail) => failed.push(summary),
                (false, Severity::Warn) => warnings.push(summary),
                _ => {}
            }
        }
        if !failed.is_empty() {
            // The data does not change on a retry: not retryable.
            return Err(OperatorError::fatal(format!(
                "{} of {} checks failed: {}",
                failed.len(),
                outcomes.len(),
                failed.join("; ")
            )));
        }
        let mut values = serde_json::Map::new();
        values.insert(
            "checks".into(),
            outcomes
                .iter()
                .map(|o| {
                    json!({
                        "name": o.name,
                        "kind": o.kind,
                        // JSON has no infinity: an empty table's age is null.
                        "measured": if o.measured.is_finite() { json!(o.measured) } else { json!(null) },
                        "expected": o.expected,
                        "passed": o.passed,
                        "severity": match o.severity { Severity::Fail => "fail", Severity::Warn => "warn" },
                    })
                })
                .collect::<Vec<_>>()
                .into(),
        );
        values.insert(
            "passed".into(),
            outcomes.iter().filter(|o| o.passed).count().into(),
        );
        values.insert("warned".into(), warnings.len().into());
        values.insert("warnings".into(), warnings.into());
        Ok(TaskOutput::values(values))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> CheckSpec {
        serde_norway::from_str(yaml).unwrap()
    }

    fn tables() -> std::collections::BTreeMap<String, DataFrame> {
        let stats = df!(
            "user_id" => [Some(1i64), Some(2), None, Some(4)],
            "chip_id" => ["a", "b", "b", "d"],
            "battery" => [10.0, 55.0, 101.0, 90.0],
            "last_event_at" => [1_000_000i64, 2_000_000, 3_000_000, 4_000_000],
        )
        .unwrap();
        let stats = stats
            .lazy()
            .with_column(
                col("last_event_at").cast(DataType::Datetime(TimeUnit::Microseconds, None)),
            )
            .collect()
            .unwrap();
        let quarantine = df!("chip_id" => ["x", "y"]).unwrap();
        [
            ("stats".to_string(), stats),
            ("quarantine".to_string(), quarantine),
        ]
        .into_iter()
        .collect()
    }

    #[test]
    fn each_kind_measures_what_it_says() {
        let t = tables();
        let m = |yaml: &str| measure(&spec(yaml), &t, 10_000_000).unwrap();
        let rows = m("{name: rows, table: stats, row_count: {min: 1, max: 3}}");
        assert_eq!((rows.measured, rows.passed), (4.0, false));
        let nulls = m("{name: users, table: stats, null_fraction: {column: user_id}}");
        assert_eq!((nulls.measured, nulls.passed), (0.25, false));
        let unique = m("{name: chips, table: stats, unique: {columns: [chip_id]}}");
        assert_eq!(
            (unique.measured, unique.passed),
            (1.0, false),
            "chip b twice"
        );
        let range = m("{name: battery, table: stats, range: {column: battery, min: 0, max: 100}}");
        assert_eq!((range.measured, range.passed), (1.0, false));
        let fresh =
            m("{name: fresh, table: stats, freshness: {column: last_event_at, max_age: 10s}}");
        assert_eq!(
            (fresh.measured, fresh.passed),
            (6.0, true),
            "4 s at 10 s: 6 s old"
        );
        let share = m("{name: share, severity: warn, sql: {query: 'SELECT AVG(q) FROM (SELECT 1.0 AS q FROM quarantine UNION ALL SELECT 0.0 AS q FROM stats)', max: 0.2}}");
        assert!((share.measured - 2.0 / 6.0).abs() < 1e-9, "{share:?}");
        assert!(!share.passed);
        assert_eq!(share.severity, Severity::Warn);
        let missing = measure(
            &spec("{name: c, table: stats, null_fraction: {column: nope}}"),
            &t,
            0,
        )
        .unwrap_err()
        .to_string();
        assert!(
            missing.contains("has no column `nope`") && missing.contains("user_id"),
            "{missing}"
        );
        // A NULL measure is no pass: MAX over no rows.
        let null = measure(
            &spec("{name: n, sql: {query: 'SELECT MAX(battery) FROM stats WHERE battery > 1000', min: 0}}"),
            &t,
            0,
        )
        .unwrap_err()
        .to_string();
        assert!(null.contains("the measure is NULL"), "{null}");
    }

    #[test]
    fn a_config_is_checked_whole() {
        use sluice_operator_api::OperatorConfig;
        let build = |yaml: &str| {
            serde_norway::from_str::<CheckConfig>(yaml)
                .unwrap()
                .build()
                .err()
                .map(|e| e.to_string())
        };
        assert!(build("checks: [{name: a, table: t, row_count: {min: 1}}]").is_none());
        assert!(build(
            "checks: [{name: a, table: t, row_count: {min: 1}, unique: {columns: [x]}}]"
        )
        .unwrap()
        .contains("exactly one of"));
        assert!(build("checks: [{name: a, row_count: {min: 1}}]")
            .unwrap()
            .contains("needs the upstream task"));
        assert!(build("checks: [{name: a, table: t, row_count: {}}]")
            .unwrap()
            .contains("min, max or both"));
        assert!(
            build("checks: [{name: a, sql: {query: 'SELECT {{ ds }}', max: 1}}]")
                .unwrap()
                .contains("without templates")
        );
        assert!(build("checks: [{name: a, table: t, row_count: {min: 1}}, {name: a, table: t, row_count: {min: 1}}]").unwrap().contains("used twice"));
    }

    #[test]
    fn a_clickhouse_query_gets_the_runs_values_as_quoted_literals() {
        use chrono::TimeZone;
        let t = chrono::Utc
            .with_ymd_and_hms(2026, 11, 23, 10, 0, 0)
            .unwrap();
        let vars = sluice_operator_api::TemplateVars::new(
            "d",
            "manual__x' OR 1=1 --",
            "t",
            1,
            t,
            (t, t + chrono::Duration::minutes(15)),
            serde_json::json!({}),
            serde_json::json!({}),
        );
        let sql = clickhouse_query(
            "SELECT count() FROM t WHERE run_id = {run_id} AND w = parseDateTimeBestEffort({data_interval_start});",
            &vars,
        );
        assert_eq!(
            sql,
            "SELECT count() FROM t WHERE run_id = 'manual__x\\' OR 1=1 --' AND w = parseDateTimeBestEffort('2026-11-23T10:00:00Z')"
        );
    }
}
