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

/// Renders a string with every `{{ … }}` value passed through `escape` (for the place the
/// text goes, e.g. a URL path segment), so a value cannot change the text's structure.
/// `escape` refuses a value with an error message.
pub fn render_escaped(
    source: &str,
    vars: &TemplateVars,
    item: Option<&minijinja::Value>,
    escape: impl Fn(&str) -> Result<String, String> + Send + Sync + 'static,
) -> Result<String, TemplateError> {
    if !is_template(source) {
        return Ok(source.to_string());
    }
    let mut env = environment();
    env.set_formatter(move |out, _state, value| {
        let text = match value.as_str() {
            Some(s) => s.to_string(),
            None => value.to_string(),
        };
        let escaped = escape(&text)
            .map_err(|e| minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, e))?;
        out.write_str(&escaped).map_err(minijinja::Error::from)
    });
    env.render_str(source, context(vars, item))
        .map_err(|e| TemplateError {
            message: format!("template failed to render: {}", describe(&e)),
        })
}

/// Escapes a value for one URL path segment: everything but unreserved characters is
/// percent-encoded (`/`, `?`, `#`, `%` included), and `.` or `..` alone, which would move
/// through the path, are refused.
pub fn url_path_segment(value: &str) -> Result<String, String> {
    const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~');
    if value == "." || value == ".." {
        return Err(format!("`{value}` cannot be a URL path segment"));
    }
    Ok(percent_encoding::utf8_percent_encode(value, SEGMENT).to_string())
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

/// A shell command rendered from a template: the script refers to each value through an
/// environment variable, and the values travel as data (see [`render_shell`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShellCommand {
    /// The script for `sh -c`, with `${SLUICE_ARG_<n>}` where the template had `{{ … }}`.
    pub script: String,
    /// `(SLUICE_ARG_<n>, value)` for the command's environment, in order.
    pub args: Vec<(String, String)>,
}

/// Where a position of a shell script is, for quoting what is put there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Quoting {
    /// Outside quotes (also inside `$( … )` and backticks).
    Bare,
    /// Inside `"…"`.
    Double,
    /// Inside `'…'`.
    Single,
    /// Inside `$(( … ))`, with the depth of parentheses opened in it.
    Arith(u32),
    /// A `#` comment, to the end of the line.
    Comment,
}

fn refuse(message: &str) -> TemplateError {
    TemplateError {
        message: format!(
            "{message}; put the value in `env:` (e.g. `env: {{REGION: \"{{{{ params.region }}}}\"}}`) and read \"$REGION\" where the program needs it"
        ),
    }
}

/// Checks a shell command template without rendering it (for validation): every place a
/// `{{ … }}` stands is one where [`render_shell`] can pass a value as data. Control-flow
/// blocks are read as if every branch were taken.
pub fn check_shell(source: &str) -> Result<(), TemplateError> {
    if source.contains(ARG_MARK) {
        return Err(TemplateError {
            message: "the command contains a NUL byte".into(),
        });
    }
    let mut marked = String::with_capacity(source.len());
    let mut rest = source;
    let mut n = 0;
    while let Some(start) = rest.find("{{") {
        let Some(len) = rest[start..].find("}}") else {
            break; // `check` reports the syntax error
        };
        n += 1;
        marked.push_str(&rest[..start]);
        marked.push_str(&format!("{ARG_MARK}{n}{ARG_MARK}"));
        rest = &rest[start + len + 2..];
    }
    marked.push_str(rest);
    quote_values(&marked).map(|_| ())
}

/// Replaces each value marker of a rendered command by a reference to its variable, quoted
/// for where it stands. Places where a value would be read as code by the shell or by the
/// program the text is for are refused: inside single quotes (the quoted text is usually a
/// program: `sh -c '…'`, `awk '…'`), inside `$(( … ))` (bash evaluates array subscripts
/// there), and right after a backslash.
fn quote_values(marked: &str) -> Result<String, TemplateError> {
    let mut script = String::with_capacity(marked.len());
    let mut quoting = Vec::<Quoting>::new(); // innermost last; empty = bare
    let mut chars = marked.chars().peekable();
    let mut previous = '\n';
    while let Some(c) = chars.next() {
        let here = quoting.last().copied().unwrap_or(Quoting::Bare);
        if c == ARG_MARK {
            let n: String = chars.by_ref().take_while(|&d| d != ARG_MARK).collect();
            let var = format!("${{SLUICE_ARG_{n}}}");
            match here {
                Quoting::Bare => script.push_str(&format!("\"{var}\"")),
                Quoting::Double | Quoting::Comment => script.push_str(&var),
                Quoting::Single => {
                    return Err(refuse(
                        "command: a template value inside single quotes would become part of the quoted text, which is often a program of its own (sh -c '…', awk '…')",
                    ))
                }
                Quoting::Arith(_) => {
                    return Err(refuse(
                        "command: a template value inside $(( … )) would be evaluated as arithmetic (code, in bash)",
                    ))
                }
            }
            previous = 'x';
            continue;
        }
        script.push(c);
        match (here, c) {
            (Quoting::Comment, '\n') => {
                quoting.pop();
            }
            (Quoting::Comment, _) => {}
            (Quoting::Single, '\'') => {
                quoting.pop();
            }
            (Quoting::Single, _) => {}
            (_, '\\') => {
                // An escaped character is literal text, whatever it is; a value is not.
                if chars.peek() == Some(&ARG_MARK) {
                    return Err(refuse(
                        "command: a backslash right before a template value would change how it is quoted",
                    ));
                }
                if let Some(next) = chars.next() {
                    script.push(next);
                }
            }
            (Quoting::Arith(depth), '(') => {
                quoting.pop();
                quoting.push(Quoting::Arith(depth + 1));
            }
            (Quoting::Arith(0), ')') => {
                if chars.peek() == Some(&')') {
                    script.push(chars.next().expect("peeked"));
                }
                quoting.pop();
            }
            (Quoting::Arith(depth), ')') => {
                quoting.pop();
                quoting.push(Quoting::Arith(depth - 1));
            }
            (Quoting::Arith(_), _) => {}
            (Quoting::Bare, '#') if previous.is_whitespace() || ";&|()".contains(previous) => {
                quoting.push(Quoting::Comment)
            }
            (Quoting::Bare, '\'') => quoting.push(Quoting::Single),
            (Quoting::Bare, '"') => quoting.push(Quoting::Double),
            (Quoting::Double, '"') => {
                quoting.pop();
            }
            (_, '$') if chars.peek() == Some(&'(') => {
                script.push(chars.next().expect("peeked"));
                if chars.peek() == Some(&'(') {
                    script.push(chars.next().expect("peeked"));
                    quoting.push(Quoting::Arith(0));
                } else {
                    quoting.push(Quoting::Bare);
                }
            }
            (Quoting::Bare, ')') if !quoting.is_empty() => {
                quoting.pop();
            }
            _ => {}
        }
        previous = c;
    }
    Ok(script)
}

/// Marks a value's place during rendering; NUL cannot occur in a template's own text.
const ARG_MARK: char = '\u{0}';

/// Renders a shell command template so that no value ever becomes shell code: every
/// `{{ expression }}` becomes a reference to an environment variable that holds the value,
/// quoted for where it stands (`"${SLUICE_ARG_1}"` outside quotes, `${SLUICE_ARG_1}` inside
/// double quotes, `'"${SLUICE_ARG_1}"'` inside single quotes), so quotes, `$( )`, backticks,
/// newlines and globs in a value arrive intact as one word. Control flow (`{% if %}`)
/// renders normally. A value with a NUL byte cannot be an environment variable: an error.
pub fn render_shell(source: &str, vars: &TemplateVars) -> Result<ShellCommand, TemplateError> {
    use std::sync::{Arc, Mutex};
    if source.contains(ARG_MARK) {
        return Err(TemplateError {
            message: "the command contains a NUL byte".into(),
        });
    }
    if !is_template(source) {
        return Ok(ShellCommand {
            script: source.to_string(),
            args: Vec::new(),
        });
    }
    let values: Arc<Mutex<Vec<String>>> = Arc::default();
    let collected = values.clone();
    let mut env = environment();
    env.set_formatter(move |out, _state, value| {
        let text = match value.as_str() {
            Some(s) => s.to_string(),
            None => value.to_string(),
        };
        if text.contains('\0') {
            return Err(minijinja::Error::new(
                minijinja::ErrorKind::InvalidOperation,
                "a value with a NUL byte cannot be passed to a command",
            ));
        }
        let mut values = collected.lock().unwrap_or_else(|p| p.into_inner());
        values.push(text);
        out.write_str(&format!("{ARG_MARK}{}{ARG_MARK}", values.len()))
            .map_err(minijinja::Error::from)
    });
    let marked = env.render_str(source, vars).map_err(|e| TemplateError {
        message: format!("template failed to render: {}", describe(&e)),
    })?;
    drop(env);
    let values = std::mem::take(&mut *values.lock().unwrap_or_else(|p| p.into_inner()));
    let script = quote_values(&marked)?;
    let args = values
        .into_iter()
        .enumerate()
        .map(|(i, v)| (format!("SLUICE_ARG_{}", i + 1), v))
        .collect();
    Ok(ShellCommand { script, args })
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

    fn run_shell(command: &ShellCommand) -> String {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(&command.script)
            .env_clear()
            .envs(command.args.iter().map(|(k, v)| (k, v)))
            .output()
            .unwrap();
        assert!(out.status.success(), "{command:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    }

    #[test]
    fn shell_values_arrive_intact_and_never_run() {
        let marker = std::env::temp_dir().join(format!("sluice-injected-{}", std::process::id()));
        let hostile = [
            format!("$(touch {})", marker.display()),
            format!("`touch {}`", marker.display()),
            format!("x; touch {} #", marker.display()),
            "it's \"quoted\" \\ back\\slash".to_string(),
            "two\nlines\ttab".to_string(),
            "* ? [a-z] ~ $HOME ${PATH} $1 !! %s".to_string(),
            "Zoë 北京 🚀".to_string(),
            "   ".to_string(),
            String::new(),
        ];
        for value in hostile {
            let mut v = vars();
            v.conf = serde_json::json!({ "v": value });
            // Outside quotes, in double quotes, inside $( ) in double quotes, after a comment.
            let command = render_shell(
                "printf '%s|' {{ conf.v }} \"<{{ conf.v }}>\" \"[$(printf '%s' {{ conf.v }})]\" # it's\nprintf '%s|' {{ conf.v }}{% if conf.v %} ok{% endif %}",
                &v,
            )
            .unwrap();
            if value.len() > 3 {
                assert!(!command.script.contains(&value), "{command:?}");
            }
            let printed = run_shell(&command);
            let tail = if value.is_empty() { "" } else { "ok|" };
            assert_eq!(
                printed,
                format!("{value}|<{value}>|[{value}]|{value}|{tail}"),
                "{command:?}"
            );
            assert!(!marker.exists(), "a value ran as code: {value}");
        }
    }

    #[test]
    fn shell_templates_keep_their_own_syntax() {
        let command = render_shell(
            r#"echo "{{ ds }}" 'lit' {{ params.region }} \" "$(( 1 + 2 ))" {{ try_number }}"#,
            &vars(),
        )
        .unwrap();
        assert_eq!(
            command.script,
            r#"echo "${SLUICE_ARG_1}" 'lit' "${SLUICE_ARG_2}" \" "$(( 1 + 2 ))" "${SLUICE_ARG_3}""#
        );
        assert_eq!(
            command.args,
            [
                ("SLUICE_ARG_1".to_string(), "2026-11-23".to_string()),
                ("SLUICE_ARG_2".to_string(), "eu".to_string()),
                ("SLUICE_ARG_3".to_string(), "2".to_string()),
            ]
        );
        let plain = render_shell("echo hi", &vars()).unwrap();
        assert_eq!(plain.script, "echo hi");
        assert!(plain.args.is_empty());
        let mut v = vars();
        v.conf = serde_json::json!({"v": "a\u{0}b"});
        assert!(render_shell("echo {{ conf.v }}", &v).is_err());
        // Where the value would be read as code by the shell or by the quoted program.
        for (source, why) in [
            ("sh -c 'echo {{ ds }}'", "single quotes"),
            ("awk 'BEGIN{print \"{{ ds }}\"}'", "single quotes"),
            ("echo $(( {{ try_number }} + 1 ))", "$(( … ))"),
            ("echo \\{{ ds }}", "backslash"),
        ] {
            let e = render_shell(source, &vars()).unwrap_err().message;
            assert!(e.contains(why) && e.contains("env:"), "{source}: {e}");
        }
    }

    #[test]
    fn escaped_values_cannot_change_the_text_around_them() {
        let mut v = vars();
        v.conf = serde_json::json!({"v": "a/../b?c=1 é"});
        assert_eq!(
            render_escaped(
                "/x/{{ conf.v }}/{{ try_number }}",
                &v,
                None,
                url_path_segment
            )
            .unwrap(),
            "/x/a%2F..%2Fb%3Fc%3D1%20%C3%A9/2"
        );
        v.conf = serde_json::json!({"v": ".."});
        let e = render_escaped("/x/{{ conf.v }}", &v, None, url_path_segment).unwrap_err();
        assert!(e.message.contains("path segment"), "{}", e.message);
    }
}
