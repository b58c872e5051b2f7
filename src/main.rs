//! The `sluice` binary: the core (`sluice-core`) with the built-in operators
//! (`sluice-operators`, the ETL ones included with the default `etl` feature) in its one
//! operator registry. A program of your own can add operators of its own to the registry:
//! see `examples/custom_operator`.

use std::process::ExitCode;

fn main() -> ExitCode {
    #[cfg(feature = "etl")]
    sluice_core::metrics::add_collector(sluice_operators::http_webhook::breaker::encode_metrics);
    sluice_core::cli::main(sluice_operators::registry())
}
