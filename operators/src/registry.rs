//! The explicit registry of operator kinds: a name, a one-line summary, the config's JSON
//! schema (from its doc comments) and a pure `build` from config to operator.
//!
//! A new operator is one file plus one line in [`Registry::builtin`].

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
}

/// One registered operator kind.
#[derive(Clone)]
pub struct OperatorKind {
    /// The name used in DAG files.
    pub name: &'static str,
    /// One line saying what it does.
    pub summary: &'static str,
    build: fn(serde_json::Value) -> Result<Arc<dyn Operator>, ConfigError>,
    schema: fn() -> serde_json::Value,
}

impl std::fmt::Debug for OperatorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OperatorKind")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

fn build_from<C: OperatorConfig>(
    config: serde_json::Value,
) -> Result<Arc<dyn Operator>, ConfigError> {
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
    parsed.build()
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
    pub fn build(&self, config: serde_json::Value) -> Result<Arc<dyn Operator>, ConfigError> {
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
    /// The operators that ship with sluice.
    pub fn builtin() -> Self {
        let mut registry = Self::default();
        registry.register(OperatorKind::of::<crate::noop::NoopConfig>());
        registry.register(OperatorKind::of::<crate::sleep::SleepConfig>());
        registry.register(OperatorKind::of::<crate::shell::ShellConfig>());
        #[cfg(feature = "etl")]
        {
            registry.register(OperatorKind::of::<
                crate::postgres_extract::PostgresExtractConfig,
            >());
            registry.register(OperatorKind::of::<crate::polars_sql::PolarsSqlConfig>());
            registry.register(OperatorKind::of::<
                crate::clickhouse_load::ClickhouseLoadConfig,
            >());
            registry.register(OperatorKind::of::<crate::http_webhook::HttpWebhookConfig>());
        }
        registry
    }

    /// Adds (or replaces) a kind: the hook for custom operators.
    pub fn register(&mut self, kind: OperatorKind) {
        self.kinds.insert(kind.name, kind);
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
    use serde_json::json;

    #[test]
    fn builtins_are_registered_with_documented_fields() {
        let registry = Registry::builtin();
        for name in ["noop", "shell", "sleep"] {
            assert!(registry.get(name).is_some(), "{name}");
        }
        #[cfg(feature = "etl")]
        assert_eq!(
            registry.names(),
            [
                "clickhouse_load",
                "http_webhook",
                "noop",
                "polars_sql",
                "postgres_extract",
                "shell",
                "sleep"
            ]
        );
        let schema = registry.get("shell").unwrap().schema();
        let command = &schema["properties"]["command"];
        assert!(
            command["description"].as_str().unwrap().contains("sh -c"),
            "{schema}"
        );
    }

    #[test]
    fn config_errors_name_the_field() {
        let shell = Registry::builtin().get("shell").cloned().unwrap();
        let unknown = shell
            .build(json!({"command": "true", "comand": "x"}))
            .unwrap_err();
        assert!(
            unknown.message.contains("unknown field `comand`"),
            "{unknown}"
        );
        let missing = shell.build(json!({})).unwrap_err();
        assert_eq!(
            missing.to_string(),
            "config.command: missing field `command`"
        );
        let wrong_type = shell
            .build(json!({"command": "true", "env": {"A": [1]}}))
            .unwrap_err();
        assert_eq!(wrong_type.field.as_deref(), Some("env.A"), "{wrong_type}");
    }
}
