//! `sluice audit`: who changed what through the API, when and from where.

use std::process::ExitCode;

use super::table::Table;
use super::{print_json, show_time};
use crate::settings::Settings;
use crate::store;

/// Options of `sluice audit`.
#[derive(Debug, clap::Args)]
pub struct AuditArgs {
    /// Most entries to show, newest first.
    #[arg(long, default_value_t = 50)]
    limit: u32,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Prints the newest entries of the audit log.
pub async fn run(args: AuditArgs, settings: &Settings) -> anyhow::Result<ExitCode> {
    let store = store::open(&settings.database_url).await?;
    let entries = store.audit_entries(args.limit.clamp(1, 10_000), 0).await?;
    if args.json {
        print_json(&entries)?;
    } else if entries.is_empty() {
        println!("no API mutations recorded");
    } else {
        let mut table = Table::new(&["at", "actor", "role", "request", "status", "from"]);
        for e in entries {
            table.row(vec![
                show_time(Some(e.at)),
                e.actor,
                e.role,
                format!("{} {}", e.method, e.path),
                e.status.to_string(),
                e.remote.unwrap_or_else(|| "-".into()),
            ]);
        }
        print!("{}", table.render());
    }
    Ok(ExitCode::SUCCESS)
}
