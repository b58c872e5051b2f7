//! The `sluice` binary: parses the command line, sets up logging, runs the command.

use std::process::ExitCode;

use clap::Parser;
use sluice::cli::{self, Cli};
use sluice::executor::trylog::TryLogLayer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

fn init_tracing(default: &str) {
    // SLUICE_LOG takes the usual filter syntax (`info`, `sluice=debug`); quiet by default so
    // command output stays readable. Try logs get their events regardless of the filter level
    // of the terminal output.
    let filter = EnvFilter::try_from_env("SLUICE_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_filter(filter),
        )
        .with(TryLogLayer.with_filter(tracing_subscriber::filter::LevelFilter::INFO))
        .init();
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(if cli.is_service() {
        "info,sqlx=warn"
    } else {
        "warn"
    });
    match cli::run(cli).await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(2)
        }
    }
}
