//! What the binary's process-level tests share: `sluice` commands over a test folder, with
//! a short run lease so a killed scheduler's runs are taken over within a second.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Child, Command, Stdio};

/// `sluice` with its home, DAGs and SQLite store under `home`, and a 1 s run lease.
pub fn sluice(home: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
    cmd.env("SLUICE_HOME", home.join("home"))
        .env("SLUICE_DAGS_FOLDER", home.join("dags"))
        .env_remove("SLUICE_DATABASE_URL")
        .env_remove("SLUICE_LOG")
        // A killed scheduler's runs are taken over once their lease lapses.
        .env("SLUICE_RUN_LEASE", "1s");
    cmd
}

/// `sluice scheduler` in the background, quiet.
pub fn start_scheduler(home: &Path) -> Child {
    sluice(home)
        .arg("scheduler")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}
