//! Templating of task config strings (minijinja).
//!
//! Templates are checked when a DAG is parsed ([`check`]) and rendered when a try runs
//! ([`render`]), into the try's context: the DAG itself is never mutated. Undefined
//! variables are errors, not empty strings, so a typo fails the parse instead of a run.

use chrono::{DateTime, SecondsFormat, Utc};
use minijinja::{Environment, UndefinedBehavior};
use serde::Serialize;

/// Names a template may use; anything else is reported at parse time.
pub const KNOWN_VARIABLES: &[&str] = &[
    "data_interval_start",
    "data_interval_end",
    "logical_date",
    "ds",
    "ds_nodash",
    "ts",
    "run_id",
    "dag_id",
    "task_id",
    "try_number",
    "params",
    "conf",
];

/// A template that does not compile, uses an unknown variable, or fails to render.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct TemplateError {
    /// What went wrong, with minijinja's line and reason.
    pub message: String,
}

/// The values a template sees for one try.
#[derive(Debug, Clone, Serialize)]
pub struct TemplateVars {
    /// Start of the run's data interval (inclusive), RFC 3339 UTC.
    pub data_interval_start: String,
    /// End of the run's data interval (exclusive), RFC 3339 UTC.
    pub data_interval_end: String,
    /// The run's logical date (= data interval start), RFC 3339 UTC.
    pub logical_date: String,
    /// Logical date as `YYYY-MM-DD`.
    pub ds: String,
    /// Logical date as `YYYYMMDD`.
    pub ds_nodash: String,
    /// Logical date as RFC 3339 (Airflow's `ts`).
    pub ts: String,
    /// The run id.
    pub run_id: String,
    /// The DAG id.
    pub dag_id: String,
    /// The task id.
    pub task_id: String,
    /// The try number, from 1.
    pub try_number: u32,
    /// The DAG's params, overridden by the run's conf where both name a key.
    pub params: serde_json::Value,
    /// The run's conf as given at trigger time (`{}` when none).
    pub conf: serde_json::Value,
}

impl TemplateVars {
    /// Values for a try of `task_id` in a run over `[start, end)`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        dag_id: &str,
        run_id: &str,
        task_id: &str,
        try_number: u32,
        logical_date: DateTime<Utc>,
        interval: (DateTime<Utc>, DateTime<Utc>),
        params: serde_json::Value,
        conf: serde_json::Value,
    ) -> Self {
        let rfc = |t: DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::AutoSi, true);
        Self {
            data_interval_start: rfc(interval.0),
            data_interval_end: rfc(interval.1),
            logical_date: rfc(logical_date),
            ds: logical_date.format("%Y-%m-%d").to_string(),
            ds_nodash: logical_date.format("%Y%m%d").to_string(),
            ts: rfc(logical_date),
            run_id: run_id.to_string(),
            dag_id: dag_id.to_string(),
            task_id: task_id.to_string(),
            try_number,
            params,
            conf,
        }
    }
}

fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env
}

/// True when the string holds template syntax at all; plain strings skip the engine.
pub fn is_template(source: &str) -> bool {
    source.contains("{{") || source.contains("{%") || source.contains("{#")
}

/// Checks that `source` compiles and uses only [`KNOWN_VARIABLES`]. Pure: no I/O.
pub fn check(source: &str) -> Result<(), TemplateError> {
    if !is_template(source) {
        return Ok(());
    }
    let env = environment();
    let template = env.template_from_str(source).map_err(|e| TemplateError {
        message: format!("template does not compile: {}", describe(&e)),
    })?;
    let mut unknown: Vec<String> = template
        .undeclared_variables(false)
        .into_iter()
        .filter(|name| !KNOWN_VARIABLES.contains(&name.as_str()))
        .collect();
    if unknown.is_empty() {
        return Ok(());
    }
    unknown.sort();
    Err(TemplateError {
        message: format!(
            "template uses unknown variable(s) {}; known: {}",
            unknown.join(", "),
            KNOWN_VARIABLES.join(", ")
        ),
    })
}

/// Renders `source` with the try's values. Plain strings come back unchanged.
pub fn render(source: &str, vars: &TemplateVars) -> Result<String, TemplateError> {
    if !is_template(source) {
        return Ok(source.to_string());
    }
    environment()
        .render_str(source, vars)
        .map_err(|e| TemplateError {
            message: format!("template failed to render: {}", describe(&e)),
        })
}

fn describe(e: &minijinja::Error) -> String {
    match (e.detail(), e.line()) {
        (Some(detail), Some(line)) => format!("{} (line {line}): {detail}", e.kind()),
        (Some(detail), None) => format!("{}: {detail}", e.kind()),
        (None, Some(line)) => format!("{} (line {line})", e.kind()),
        (None, None) => e.kind().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn vars() -> TemplateVars {
        let s = Utc.with_ymd_and_hms(2026, 11, 23, 16, 0, 0).unwrap();
        let e = Utc.with_ymd_and_hms(2026, 11, 23, 16, 15, 0).unwrap();
        TemplateVars::new(
            "d",
            "r1",
            "t",
            2,
            s,
            (s, e),
            serde_json::json!({"region": "eu"}),
            serde_json::json!({}),
        )
    }

    #[test]
    fn renders_interval_params_and_ds() {
        let out = render(
            "{{ ds }} {{ data_interval_end }} {{ params.region }} #{{ try_number }}",
            &vars(),
        )
        .unwrap();
        assert_eq!(out, "2026-11-23 2026-11-23T16:15:00Z eu #2");
    }

    #[test]
    fn check_rejects_syntax_errors_and_unknown_names() {
        assert!(check("plain text, no template").is_ok());
        assert!(check("{{ ds }} {% if params.x %}y{% endif %}").is_ok());
        let syntax = check("{{ ds ").unwrap_err().message;
        assert!(syntax.contains("does not compile"), "{syntax}");
        let unknown = check("{{ data_interval_begin }}").unwrap_err().message;
        assert!(unknown.contains("data_interval_begin"), "{unknown}");
    }

    #[test]
    fn strict_undefined_fails_render() {
        let err = render("{{ params.missing.deeper }}", &vars()).unwrap_err();
        assert!(err.message.contains("render"), "{}", err.message);
    }
}
