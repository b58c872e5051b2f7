//! `sluice operators …`: what the registry offers and how to configure it.

use std::process::ExitCode;

use anyhow::anyhow;
use clap::Subcommand;
use sluice_operator_api::Registry;

use super::print_json;
use super::table::Table;

/// `sluice operators` subcommands.
#[derive(Debug, Subcommand)]
pub enum OperatorsCommand {
    /// List every operator with a one-line summary.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show an operator's config fields (from its config struct's documentation).
    Describe {
        /// The operator name.
        name: String,
        /// Print the config's JSON schema.
        #[arg(long)]
        json: bool,
    },
}

/// Runs an `operators` subcommand.
pub fn run(cmd: OperatorsCommand, registry: &Registry) -> anyhow::Result<ExitCode> {
    match cmd {
        OperatorsCommand::List { json } => {
            if json {
                let items: Vec<_> = registry
                    .kinds()
                    .map(|k| serde_json::json!({"name": k.name, "summary": k.summary}))
                    .collect();
                print_json(&items)?;
            } else {
                let mut table = Table::new(&["operator", "summary"]);
                for kind in registry.kinds() {
                    table.row(vec![kind.name.into(), kind.summary.into()]);
                }
                print!("{}", table.render());
            }
        }
        OperatorsCommand::Describe { name, json } => {
            let kind = registry.get(&name).ok_or_else(|| {
                anyhow!(
                    "unknown operator `{name}`; known: {}",
                    registry.names().join(", ")
                )
            })?;
            let schema = kind.schema();
            if json {
                print_json(&schema)?;
                return Ok(ExitCode::SUCCESS);
            }
            println!("{}: {}\n", kind.name, kind.summary);
            let required: Vec<&str> = schema["required"]
                .as_array()
                .map(|r| r.iter().filter_map(|v| v.as_str()).collect())
                .unwrap_or_default();
            let mut table = Table::new(&["field", "type", "required", "description"]);
            if let Some(properties) = schema["properties"].as_object() {
                for (field, spec) in properties {
                    let ty = match &spec["type"] {
                        serde_json::Value::String(t) => t.clone(),
                        serde_json::Value::Array(types) => types
                            .iter()
                            .filter_map(|t| t.as_str())
                            .collect::<Vec<_>>()
                            .join(" | "),
                        _ => "-".into(),
                    };
                    table.row(vec![
                        field.clone(),
                        ty,
                        if required.contains(&field.as_str()) {
                            "yes"
                        } else {
                            "no"
                        }
                        .into(),
                        spec["description"]
                            .as_str()
                            .unwrap_or("")
                            .replace('\n', " "),
                    ]);
                }
            }
            if table.is_empty() {
                println!("(no settings)");
            } else {
                print!("{}", table.render());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
