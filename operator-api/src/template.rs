//! Templating of task config strings (minijinja).
//!
//! Templates are checked when a DAG is parsed ([`check`]) and rendered when a try runs
//! ([`render`]), into the try's context: the DAG itself is never mutated. Undefined
//! variables are errors, not empty strings, so a typo fails the parse instead of a run.

use chrono::{DateTime, SecondsFormat, Utc};
use minijinja::{Environment, UndefinedBehavior};

/// A template value (for `item` in operators that iterate).
pub use minijinja::Value;
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
    "attempt",
    "dag_id",
    "task_id",
    "try_number",
    "params",
    "conf",
    "upstream",
    "item",
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
    /// Which attempt of the run this is, from 1 (a re-run of a finished run is the next one).
    pub attempt: u32,
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
    /// The small values of each direct upstream task that succeeded, by task id
    /// (`{{ upstream.load_stats.version }}`): how an effect names the version of the data it
    /// announces.
    pub upstream: std::collections::BTreeMap<String, serde_json::Map<String, serde_json::Value>>,
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
            attempt: 1,
            dag_id: dag_id.to_string(),
            task_id: task_id.to_string(),
            try_number,
            params,
            conf,
            upstream: Default::default(),
        }
    }

    /// The same values for attempt `attempt` of the run.
    pub fn with_attempt(mut self, attempt: u32) -> Self {
        self.attempt = attempt;
        self
    }

    /// The same values with the outputs of the direct upstream tasks.
    pub fn with_upstream<'a>(
        mut self,
        outputs: impl IntoIterator<Item = (&'a String, &'a crate::TaskOutput)>,
    ) -> Self {
        self.upstream = outputs
            .into_iter()
            .map(|(task, output)| (task.clone(), output.values.clone()))
            .collect();
        self
    }
}

/// The upstream tasks a template reads values of (`upstream.<task>…`), sorted, so a DAG can
/// check at parse time that each is a direct upstream task. Empty for plain strings and
/// templates that do not compile (those fail [`check`]).
pub fn upstream_references(source: &str) -> Vec<String> {
    if !is_template(source) {
        return Vec::new();
    }
    let env = environment();
    let Ok(template) = env.template_from_str(source) else {
        return Vec::new();
    };
    let mut tasks: Vec<String> = template
        .undeclared_variables(true)
        .into_iter()
        .filter_map(|path| {
            let rest = path.strip_prefix("upstream.")?;
            Some(rest.split('.').next().unwrap_or(rest).to_string())
        })
        .collect();
    tasks.sort();
    tasks.dedup();
    tasks
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

fn context(vars: &TemplateVars, item: Option<&minijinja::Value>) -> minijinja::Value {
    let base = minijinja::Value::from_serialize(vars);
    match item {
        Some(item) => minijinja::context! { item => item.clone(), ..base },
        None => base,
    }
}

/// Renders a string with the try's values plus `item` (the current value of an operator
/// that iterates, like `http_webhook`'s `for_each`).
pub fn render_with_item(
    source: &str,
    vars: &TemplateVars,
    item: Option<&minijinja::Value>,
) -> Result<String, TemplateError> {
    if !is_template(source) {
        return Ok(source.to_string());
    }
    environment()
        .render_str(source, context(vars, item))
        .map_err(|e| TemplateError {
            message: format!("template failed to render: {}", describe(&e)),
        })
}

/// Renders every string inside a JSON value. A string that is exactly one `{{ expression }}`
/// keeps the expression's type (`"{{ item }}"` with a 64-bit id stays an exact number).
pub fn render_json(
    value: &serde_json::Value,
    vars: &TemplateVars,
    item: Option<&minijinja::Value>,
) -> Result<serde_json::Value, TemplateError> {
    use serde_json::Value as J;
    Ok(match value {
        J::String(source) => {
            let trimmed = source.trim();
            let single = trimmed
                .strip_prefix("{{")
                .and_then(|r| r.strip_suffix("}}"))
                .filter(|inner| !inner.contains("{{") && !inner.contains("}}"));
            match single {
                Some(expression) => {
                    let env = environment();
                    let compiled =
                        env.compile_expression(expression.trim())
                            .map_err(|e| TemplateError {
                                message: format!("template does not compile: {}", describe(&e)),
                            })?;
                    let result = compiled
                        .eval(context(vars, item))
                        .map_err(|e| TemplateError {
                            message: format!("template failed to render: {}", describe(&e)),
                        })?;
                    if result.is_undefined() {
                        return Err(TemplateError {
                            message: format!("`{trimmed}` is undefined"),
                        });
                    }
                    serde_json::to_value(&result).map_err(|e| TemplateError {
                        message: e.to_string(),
                    })?
                }
                None => J::String(render_with_item(source, vars, item)?),
            }
        }
        J::Array(items) => J::Array(
            items
                .iter()
                .map(|v| render_json(v, vars, item))
                .collect::<Result<_, _>>()?,
        ),
        J::Object(map) => J::Object(
            map.iter()
                .map(|(k, v)| Ok((k.clone(), render_json(v, vars, item)?)))
                .collect::<Result<_, TemplateError>>()?,
        ),
        other => other.clone(),
    })
}

/// A value a template placed in SQL, to be sent as a bind parameter.
#[derive(Debug, Clone, PartialEq)]
pub enum BindValue {
    /// SQL NULL.
    Null,
    /// A boolean.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A floating-point number.
    Float(f64),
    /// Text.
    Text(String),
    /// An instant: strings in RFC 3339 form (the interval bounds, `logical_date`) bind as timestamps.
    Timestamp(DateTime<Utc>),
}

impl BindValue {
    fn from_value(value: &minijinja::Value) -> Result<Self, String> {
        use minijinja::value::ValueKind;
        match value.kind() {
            ValueKind::None | ValueKind::Undefined => Ok(BindValue::Null),
            ValueKind::Bool => Ok(BindValue::Bool(value.is_true())),
            ValueKind::Number => match i64::try_from(value.clone()) {
                Ok(i) => Ok(BindValue::Int(i)),
                Err(_) => f64::try_from(value.clone())
                    .map(BindValue::Float)
                    .map_err(|e| e.to_string()),
            },
            ValueKind::String => {
                let text = value.as_str().unwrap_or_default();
                Ok(match DateTime::parse_from_rfc3339(text) {
                    Ok(t) => BindValue::Timestamp(t.with_timezone(&Utc)),
                    Err(_) => BindValue::Text(text.to_string()),
                })
            }
            other => Err(format!("cannot bind a {other} value as an SQL parameter")),
        }
    }
}

/// SQL rendered from a template with every `{{ … }}` replaced by a placeholder, and the values.
#[derive(Debug, Clone, PartialEq)]
pub struct BoundSql {
    /// The SQL text with placeholders.
    pub sql: String,
    /// The values, in placeholder order (placeholder `n` is `params[n - 1]`).
    pub params: Vec<BindValue>,
}

/// Renders an SQL template so that values never enter the SQL text: each `{{ expression }}`
/// becomes `placeholder(n, &value)` (n from 1) and its value is returned for binding.
/// Control flow (`{% if %}`) renders normally.
pub fn render_sql(
    source: &str,
    vars: &TemplateVars,
    placeholder: impl Fn(usize, &BindValue) -> String + Send + Sync + 'static,
) -> Result<BoundSql, TemplateError> {
    use std::sync::{Arc, Mutex};
    let params: Arc<Mutex<Vec<BindValue>>> = Arc::default();
    let collected = params.clone();
    let mut env = environment();
    env.set_formatter(move |out, _state, value| {
        let bind = BindValue::from_value(value)
            .map_err(|e| minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, e))?;
        let mut params = collected.lock().unwrap_or_else(|p| p.into_inner());
        params.push(bind);
        let text = placeholder(params.len(), params.last().expect("just pushed"));
        out.write_str(&text).map_err(minijinja::Error::from)
    });
    let sql = env.render_str(source, vars).map_err(|e| TemplateError {
        message: format!("SQL template failed to render: {}", describe(&e)),
    })?;
    drop(env);
    let params = std::mem::take(&mut *params.lock().unwrap_or_else(|p| p.into_inner()));
    Ok(BoundSql { sql, params })
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
    fn sql_templates_bind_values_instead_of_pasting_them() {
        let mut v = vars();
        v.params = serde_json::json!({"region": "eu'; DROP TABLE x; --", "limit": 5, "on": true, "ratio": 0.5, "none": null});
        let bound = render_sql(
            "SELECT * FROM t WHERE ts >= {{ data_interval_start }} AND ts < {{ data_interval_end }} AND region = {{ params.region }}{% if params.on %} LIMIT {{ params.limit }}{% endif %} -- {{ params.ratio }} {{ params.none }}",
            &v,
            |n, _| format!("${n}"),
        )
        .unwrap();
        assert_eq!(
            bound.sql,
            "SELECT * FROM t WHERE ts >= $1 AND ts < $2 AND region = $3 LIMIT $4 -- $5 $6"
        );
        let s = Utc.with_ymd_and_hms(2026, 11, 23, 16, 0, 0).unwrap();
        assert_eq!(
            bound.params,
            vec![
                BindValue::Timestamp(s),
                BindValue::Timestamp(s + chrono::Duration::minutes(15)),
                BindValue::Text("eu'; DROP TABLE x; --".into()),
                BindValue::Int(5),
                BindValue::Float(0.5),
                BindValue::Null,
            ]
        );
        let err = render_sql("{{ params }}", &v, |n, _| format!("${n}")).unwrap_err();
        assert!(err.message.contains("cannot bind"), "{}", err.message);
    }

    #[test]
    fn json_bodies_keep_types_and_exact_big_integers() {
        let body = serde_json::json!({
            "user_id": "{{ item }}",
            "dag_id": "{{ dag_id }}",
            "window": ["{{ data_interval_start }}", "{{ data_interval_end }}"],
            "note": "user {{ item }} in {{ params.region }}",
            "fixed": 3
        });
        let item = minijinja::Value::from(18_446_744_073_709_551_557u64);
        let out = render_json(&body, &vars(), Some(&item)).unwrap();
        assert_eq!(
            out.to_string(),
            r#"{"dag_id":"d","fixed":3,"note":"user 18446744073709551557 in eu","user_id":18446744073709551557,"window":["2026-11-23T16:00:00Z","2026-11-23T16:15:00Z"]}"#
        );
        assert!(render_json(&serde_json::json!("{{ nope }}"), &vars(), None).is_err());
    }

    #[test]
    fn strict_undefined_fails_render() {
        let err = render("{{ params.missing.deeper }}", &vars()).unwrap_err();
        assert!(err.message.contains("render"), "{}", err.message);
    }

    #[test]
    fn upstream_values_render_and_references_are_found() {
        let mut output = crate::TaskOutput::default();
        output
            .values
            .insert("version".into(), 1_764_000_000_123u64.into());
        let load = "load_stats".to_string();
        let with = vars().with_upstream([(&load, &output)]);
        assert_eq!(
            render("{{ upstream.load_stats.version }}", &with).unwrap(),
            "1764000000123"
        );
        let missing = render("{{ upstream.extract.rows }}", &with).unwrap_err();
        assert!(missing.message.contains("undefined"), "{}", missing.message);
        assert!(check("{{ upstream.load_stats.version }}").is_ok());
        assert_eq!(
            upstream_references("{{ upstream.b.x }}-{{ upstream.a.y }}{{ upstream.b.z }} {{ ds }}"),
            ["a", "b"]
        );
        assert!(upstream_references("no template").is_empty());
    }
}
