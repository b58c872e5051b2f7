//! The explicit registry of operator kinds: a name, a one-line summary, the config's JSON
//! schema (from its doc comments) and a pure `build` from config to operator.
//!
//! The registry is built once by the program (the `sluice` binary registers the built-in
//! operators of `sluice-operators`; a library user adds their own) and handed to the core,
//! which parses DAGs, runs tries and describes operators through it.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::de::DeserializeOwned;

use crate::error::ConfigError;
use crate::Operator;

/// A config struct that builds an operator. `build` must be pure: no file, network or
/// credential I/O, so a DAG validates anywhere.
pub trait OperatorConfig: DeserializeOwned + schemars::JsonSchema {
    /// The name DAG files use in `operator:`.
    const NAME: &'static str;
    /// One line saying what the operator does.
    const SUMMARY: &'static str;
    /// Checks the config and returns the runnable operator.
    fn build(self) -> Result<Arc<dyn Operator>, ConfigError>;

    /// The files this config names (a query in `sql: sql/x.sql`, a DDL file), relative to
    /// the DAG file's folder. Validation checks that each exists and that its templates
    /// compile, so `dags validate` catches what a try would. Pure, like `build`.
    fn files(&self) -> Vec<ConfigFile> {
        Vec::new()
    }
}

/// A file named by an operator's config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigFile {
    /// The config field that names it (`sql`, `ddl`).
    pub field: String,
    /// The path as written, relative to the DAG file's folder unless absolute.
    pub path: String,
}

impl ConfigFile {
    /// The file `field` names.
    pub fn new(field: impl Into<String>, path: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            path: path.into().trim().to_string(),
        }
    }

    /// For fields holding either inline SQL or a path: a file when the value ends in `.sql`.
    pub fn sql_path(field: &str, value: &str) -> Option<Self> {
        is_sql_path(value).then(|| Self::new(field, value))
    }
}

/// Whether a field that takes inline SQL or a path holds a path (it ends in `.sql`).
pub fn is_sql_path(value: &str) -> bool {
    value.trim_end().ends_with(".sql")
}

/// A task's operator, built from its config, with the files the config names.
#[derive(Debug, Clone)]
pub struct Built {
    /// The runnable operator.
    pub operator: Arc<dyn Operator>,
    /// The files its config names (see [`OperatorConfig::files`]).
    pub files: Vec<ConfigFile>,
}

/// One registered operator kind.
#[derive(Clone)]
pub struct OperatorKind {
    /// The name used in DAG files.
    pub name: &'static str,
    /// One line saying what it does.
    pub summary: &'static str,
    build: fn(serde_json::Value) -> Result<Built, ConfigError>,
    schema: fn() -> serde_json::Value,
}

impl std::fmt::Debug for OperatorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OperatorKind")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

fn build_from<C: OperatorConfig>(config: serde_json::Value) -> Result<Built, ConfigError> {
    let parsed: C = serde_path_to_error::deserialize(config).map_err(|e| {
        let path = e.path().to_string();
        let message = e.into_inner().to_string();
        // serde reports a missing field at its parent; name the field itself.
        let missing = message
            .strip_prefix("missing field `")
            .and_then(|rest| rest.split('`').next())
            .map(str::to_string);
        match (path.as_str(), missing) {
            (".", Some(field)) => ConfigError::field(field, message),
            (".", None) => ConfigError::whole(message),
            (_, Some(field)) => ConfigError::field(format!("{path}.{field}"), message),
            (_, None) => ConfigError::field(path, message),
        }
    })?;
    let files = parsed.files();
    Ok(Built {
        operator: parsed.build()?,
        files,
    })
}

fn schema_of<C: OperatorConfig>() -> serde_json::Value {
    schemars::schema_for!(C).to_value()
}

impl OperatorKind {
    /// The kind for config type `C`.
    pub fn of<C: OperatorConfig>() -> Self {
        Self {
            name: C::NAME,
            summary: C::SUMMARY,
            build: build_from::<C>,
            schema: schema_of::<C>,
        }
    }

    /// Deserializes and checks a task's `config:` block. Pure.
    pub fn build(&self, config: serde_json::Value) -> Result<Built, ConfigError> {
        (self.build)(config)
    }

    /// The config's JSON schema, with each field's doc comment as its description.
    pub fn schema(&self) -> serde_json::Value {
        (self.schema)()
    }
}

/// Operator kinds by name.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    kinds: BTreeMap<&'static str, OperatorKind>,
}

impl Registry {
    /// Adds (or replaces) a kind: the hook for custom operators.
    pub fn register(&mut self, kind: OperatorKind) {
        self.kinds.insert(kind.name, kind);
    }

    /// Adds the operator built from config type `C` (builder style).
    pub fn with<C: OperatorConfig>(mut self) -> Self {
        self.register(OperatorKind::of::<C>());
        self
    }

    /// The kind with this name.
    pub fn get(&self, name: &str) -> Option<&OperatorKind> {
        self.kinds.get(name)
    }

    /// Every kind, by name.
    pub fn kinds(&self) -> impl Iterator<Item = &OperatorKind> {
        self.kinds.values()
    }

    /// Every registered name, sorted.
    pub fn names(&self) -> Vec<&'static str> {
        self.kinds.keys().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{OperatorError, TaskContext, TaskOutput};
    use serde::Deserialize;
    use serde_json::json;

    /// Copies a file somewhere (a stand-in operator for the registry's own tests).
    #[derive(Debug, Deserialize, schemars::JsonSchema)]
    #[serde(deny_unknown_fields)]
    struct CopyConfig {
        /// The file to copy, relative to the DAG file.
        from: String,
        /// Inline SQL or a `.sql` file.
        #[serde(default)]
        query: Option<String>,
        /// Extra settings (only deserialized: the tests check their error paths).
        #[serde(default)]
        #[allow(dead_code)]
        options: std::collections::BTreeMap<String, Vec<u32>>,
    }

    #[derive(Debug)]
    struct Copy;

    #[async_trait::async_trait]
    impl Operator for Copy {
        async fn execute(&self, _ctx: &TaskContext) -> Result<TaskOutput, OperatorError> {
            Ok(TaskOutput::default())
        }
    }

    impl OperatorConfig for CopyConfig {
        const NAME: &'static str = "copy";
        const SUMMARY: &'static str = "Copies a file.";
        fn build(self) -> Result<Arc<dyn Operator>, ConfigError> {
            Ok(Arc::new(Copy))
        }
        fn files(&self) -> Vec<ConfigFile> {
            let mut files = vec![ConfigFile::new("from", &self.from)];
            files.extend(
                self.query
                    .as_deref()
                    .and_then(|q| ConfigFile::sql_path("query", q)),
            );
            files
        }
    }

    #[test]
    fn kinds_carry_their_documented_schema() {
        let registry = Registry::default().with::<CopyConfig>();
        assert_eq!(registry.names(), ["copy"]);
        let schema = registry.get("copy").unwrap().schema();
        assert_eq!(
            schema["properties"]["from"]["description"],
            "The file to copy, relative to the DAG file."
        );
    }

    #[test]
    fn config_errors_name_the_field() {
        let copy = OperatorKind::of::<CopyConfig>();
        let unknown = copy.build(json!({"from": "a", "fro": "x"})).unwrap_err();
        assert!(unknown.message.contains("unknown field `fro`"), "{unknown}");
        let missing = copy.build(json!({})).unwrap_err();
        assert_eq!(missing.to_string(), "config.from: missing field `from`");
        let wrong_type = copy
            .build(json!({"from": "a", "options": {"A": ["x"]}}))
            .unwrap_err();
        assert_eq!(
            wrong_type.field.as_deref(),
            Some("options.A[0]"),
            "{wrong_type}"
        );
    }

    #[test]
    fn a_config_names_its_files() {
        let copy = OperatorKind::of::<CopyConfig>();
        let built = copy
            .build(json!({"from": " data/in.csv ", "query": "sql/q.sql"}))
            .unwrap();
        assert_eq!(
            built.files,
            [
                ConfigFile::new("from", "data/in.csv"),
                ConfigFile::new("query", "sql/q.sql")
            ]
        );
        let inline = copy
            .build(json!({"from": "x", "query": "SELECT 'a.sql'"}))
            .unwrap();
        assert_eq!(inline.files, [ConfigFile::new("from", "x")]);
    }
}
