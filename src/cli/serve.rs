//! `sluice scheduler` and `sluice standalone`: the long-running processes.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use sluice_operators::{Connections, HumanDuration, Registry};
use tokio_util::sync::CancellationToken;

use crate::executor::Executor;
use crate::scheduler::{Scheduler, SchedulerOptions, SystemClock};
use crate::settings::Settings;
use crate::store;

/// Options of the long-running commands.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// On SIGTERM/SIGINT, how long running tries may take to finish before they are stopped and marked for retry.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    serde_json::from_value::<HumanDuration>(serde_json::Value::String(text.to_string()))
        .map(|d| d.0)
        .map_err(|e| e.to_string())
}

/// Waits for SIGTERM or SIGINT; a second signal exits at once.
async fn signals(shutdown: CancellationToken, grace: Duration) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            return;
        };
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        eprintln!(
            "shutting down: no new tries; running tries get {} to finish (signal again to exit now)",
            humantime::format_duration(grace)
        );
        shutdown.cancel();
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        eprintln!("second signal: exiting now; interrupted tries are retried when a scheduler resumes their runs");
        std::process::exit(130);
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        shutdown.cancel();
    }
}

/// Runs the scheduler with a local executor until a signal stops it.
pub async fn run(args: ServeArgs, settings: &Settings) -> anyhow::Result<ExitCode> {
    let store = store::open(&settings.database_url).await?;
    let shutdown = CancellationToken::new();
    let executor = Executor::new(store.clone(), settings, Arc::new(Connections::from_env()))
        .with_shutdown(shutdown.clone(), args.shutdown_grace);
    let scheduler = Scheduler::new(
        store,
        executor,
        Arc::new(SystemClock),
        settings.dags_folder.clone(),
        Registry::builtin(),
        SchedulerOptions::default(),
    );
    eprintln!(
        "sluice scheduler: DAGs from {}, metadata in {}, parallelism {}",
        settings.dags_folder.display(),
        store::redact_url(&settings.database_url),
        settings.parallelism
    );
    tokio::spawn(signals(shutdown.clone(), args.shutdown_grace));
    scheduler.run(shutdown).await?;
    eprintln!("scheduler stopped");
    Ok(ExitCode::SUCCESS)
}
