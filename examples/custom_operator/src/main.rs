//! `sluice-with-file-sensor`: the whole `sluice` command line, with `file_sensor` next to
//! the built-in operators. Building your own binary is all it takes:
//!
//! ```sh
//! cargo run -p sluice-example-custom-operator -- operators describe file_sensor
//! SLUICE_DAGS_FOLDER=examples/custom_operator/dags cargo run -p sluice-example-custom-operator -- standalone
//! ```

use std::process::ExitCode;

fn main() -> ExitCode {
    sluice_core::cli::main(sluice_example_custom_operator::registry())
}
