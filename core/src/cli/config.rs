//! `sluice config list|get-value` (Airflow's names) and `sluice completions <shell>`.

use std::process::ExitCode;

use anyhow::anyhow;
use clap::{CommandFactory, Subcommand};

use super::table::Table;
use super::{print_json, Output};
use crate::settings::{self, Config};

/// `sluice config` subcommands.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Every setting with its value and where it came from (env, the config file, default);
    /// passwords in URLs and tokens are shown as `***`.
    List {
        /// How to print.
        #[arg(short, long, value_enum, default_value_t)]
        output: Output,
    },
    /// Print one setting's value (secrets masked); exit 1 when it is not set and has no default.
    GetValue {
        /// The setting: its config file key (`database_url`, `connections.crm`) or its
        /// variable (`SLUICE_DATABASE_URL`).
        key: String,
    },
}

/// Runs a `config` subcommand.
pub fn run(cmd: &ConfigCommand, config: &Config) -> anyhow::Result<ExitCode> {
    match cmd {
        ConfigCommand::List { output } => list(config, *output),
        ConfigCommand::GetValue { key } => get_value(config, key),
    }
}

fn list(config: &Config, output: Output) -> anyhow::Result<ExitCode> {
    let entries = config.entries();
    match output {
        Output::Json => print_json(&entries)?,
        Output::Plain => {
            for e in &entries {
                println!(
                    "{}\t{}\t{}",
                    e.var,
                    e.value.as_deref().unwrap_or(""),
                    e.source
                );
            }
        }
        Output::Table => {
            match config.file() {
                Some(path) => println!("config file: {}", path.display()),
                None => println!(
                    "config file: none (--config, {} or ./{})",
                    settings::CONFIG_VAR,
                    settings::CONFIG_FILE_NAME
                ),
            }
            let mut table = Table::new(&["variable", "key", "value", "source"]);
            for e in &entries {
                table.row(vec![
                    e.var.clone(),
                    e.key.clone(),
                    e.value.clone().unwrap_or_else(|| "-".into()),
                    e.source.to_string(),
                ]);
            }
            print!("{}", table.render());
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn get_value(config: &Config, key: &str) -> anyhow::Result<ExitCode> {
    let var = settings::var_of(key).ok_or_else(|| {
        let known: Vec<String> = settings::KNOWN
            .iter()
            .map(|k| settings::key_of(k.var))
            .collect();
        anyhow!(
            "unknown setting `{key}`; known: {}, connections.<id>",
            known.join(", ")
        )
    })?;
    let entry = config.entries().into_iter().find(|e| e.var == var);
    match entry.and_then(|e| e.value) {
        Some(value) => {
            println!("{value}");
            Ok(ExitCode::SUCCESS)
        }
        None => {
            eprintln!("{var} is not set (no default)");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// `sluice completions <shell>`: the completion script for `sluice`'s whole command line.
pub fn completions(shell: clap_complete::Shell) -> ExitCode {
    let mut command = super::Cli::command();
    clap_complete::generate(shell, &mut command, "sluice", &mut std::io::stdout());
    ExitCode::SUCCESS
}
