//! The operators that ship with sluice, one folder each (config, execution, tests), built on
//! the operator API of `sluice-operator-api` and nothing else of sluice.
//!
//! `noop`, `sleep` and `shell` are always here; the ETL operators (`postgres_extract`,
//! `polars_sql`, `clickhouse_load`, `http_webhook`) come with the `etl` feature, which the
//! `sluice` binary turns on and the core never does (Polars takes minutes to compile).
//!
//! A new built-in operator is one folder plus one line in [`registry`].

pub mod noop;
pub mod shell;
pub mod sleep;

#[cfg(feature = "etl")]
pub mod check;
#[cfg(feature = "etl")]
pub mod clickhouse_load;
#[cfg(feature = "etl")]
pub mod frame;
#[cfg(feature = "etl")]
pub mod http_webhook;
#[cfg(feature = "etl")]
pub mod polars_sql;
#[cfg(feature = "etl")]
pub mod postgres_extract;
#[cfg(feature = "etl")]
pub(crate) mod tls;

#[cfg(test)]
mod test_support;

use sluice_operator_api::Registry;

/// The built-ins every build has, whatever its features: `noop`, `sleep` and `shell`. The
/// core's tests use this registry, so their results never depend on which features another
/// crate of the workspace turned on.
pub fn basic() -> Registry {
    Registry::default()
        .with::<noop::NoopConfig>()
        .with::<sleep::SleepConfig>()
        .with::<shell::ShellConfig>()
}

/// A registry with every built-in operator of this build.
pub fn registry() -> Registry {
    let registry = basic();
    #[cfg(feature = "etl")]
    let registry = registry
        .with::<postgres_extract::PostgresExtractConfig>()
        .with::<polars_sql::PolarsSqlConfig>()
        .with::<clickhouse_load::ClickhouseLoadConfig>()
        .with::<http_webhook::HttpWebhookConfig>()
        .with::<check::CheckConfig>();
    registry
}

#[cfg(test)]
mod tests {
    #[test]
    fn builtins_are_registered_with_documented_fields() {
        let registry = super::registry();
        for name in ["noop", "shell", "sleep"] {
            assert!(registry.get(name).is_some(), "{name}");
        }
        #[cfg(feature = "etl")]
        assert_eq!(
            registry.names(),
            [
                "check",
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
}
