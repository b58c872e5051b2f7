//! `sluice scheduler` and `sluice standalone`: the long-running processes.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use sluice_operator_api::{Connections, HumanDuration, Registry};
use tokio_util::sync::CancellationToken;

use crate::executor::{Executor, Placement, Worker, WorkerOptions};
use crate::scheduler::{Scheduler, SchedulerOptions, SystemClock};
use crate::settings::Settings;
use crate::store::{self, Store};

/// Options of the long-running commands.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// On SIGTERM/SIGINT, how long running tries may take to finish before they are stopped and marked for retry.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
    /// Where tries run: `local` (in this process) or `workers` (queued for `sluice worker`
    /// processes, on this machine or others sharing a PostgreSQL store).
    #[arg(long, default_value = "local", value_parser = ["local", "workers"])]
    pub executor: String,
    /// With `--executor workers`: how long a worker may go without a heartbeat before its
    /// running tries are taken back and retried elsewhere.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub worker_timeout: Duration,
}

/// Options of `sluice worker`.
#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// The worker's name, unique among workers (default: host and process id).
    #[arg(long)]
    pub name: Option<String>,
    /// The queues it claims tries from, comma-separated.
    #[arg(long, default_value = "default", value_delimiter = ',')]
    pub queues: Vec<String>,
    /// Most tries it runs at once.
    #[arg(long, default_value_t = 16)]
    pub concurrency: u32,
    /// How often it heartbeats its running tries (keep it well under the scheduler's
    /// `--worker-timeout`).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub heartbeat: Duration,
    /// On SIGTERM/SIGINT, how long running tries may take to finish before they are stopped
    /// and queued again (without using up a retry).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
}

/// Where the web server listens.
#[derive(Debug, Args)]
pub struct WebArgs {
    /// Address to listen on. Without SLUICE_API_TOKEN only loopback addresses are allowed.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on.
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
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
        super::announce!(
            "shutting down: no new tries; running tries get {} to finish (signal again to exit now)",
            humantime::format_duration(grace)
        );
        shutdown.cancel();
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        super::announce!("second signal: exiting now; interrupted tries are retried when a scheduler resumes their runs");
        std::process::exit(130);
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        shutdown.cancel();
    }
}

/// Serves this process's metrics at `SLUICE_METRICS_ADDR`, when set.
fn spawn_metrics(settings: &Settings, shutdown: &CancellationToken) {
    if let Some(addr) = settings.metrics_addr.clone() {
        let stop = shutdown.clone();
        tokio::spawn(async move {
            if let Err(error) = crate::metrics::serve(&addr, stop).await {
                tracing::error!(%addr, %error, "cannot serve metrics");
            }
        });
    }
}

/// Binds the web server, refusing a non-loopback address without a token.
async fn bind_web(
    web: &WebArgs,
    settings: &Settings,
    store: Arc<dyn Store>,
    registry: Registry,
) -> anyhow::Result<(tokio::net::TcpListener, crate::web::AppState)> {
    let tokens = crate::web::auth::Tokens::from_env()?;
    let loopback = web.host == "localhost"
        || web
            .host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if tokens.is_empty() && !loopback {
        anyhow::bail!("refusing to listen on {} without an API token: set SLUICE_API_TOKEN (or SLUICE_API_TOKENS_FILE) or use --host 127.0.0.1", web.host);
    }
    let listener = tokio::net::TcpListener::bind((web.host.as_str(), web.port))
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}:{}: {e}", web.host, web.port))?;
    super::announce!("web server on http://{}", listener.local_addr()?);
    if tokens.is_empty() {
        super::announce!("no SLUICE_API_TOKEN: the API is open to anyone on this machine, so the server listens on loopback only");
    }
    let state = crate::web::AppState {
        store: store.clone(),
        dags: Arc::new(crate::web::DagCatalog::new(
            settings.dags_folder.clone(),
            registry,
        )),
        tokens: Arc::new(tokens),
        guards: Arc::new(crate::web::hardening::Guards {
            allowed_hosts: crate::web::hardening::AllowedHosts::from_env(&web.host),
            ..Default::default()
        }),
        places: crate::retention::Places::of(settings)?,
        cache: Default::default(),
        changes: crate::web::watch_changes(store.clone(), Duration::from_millis(500)),
    };
    Ok((listener, state))
}

/// `sluice webserver`: the REST API and UI over the metadata store.
pub async fn webserver(
    web: WebArgs,
    settings: &Settings,
    registry: Registry,
) -> anyhow::Result<ExitCode> {
    let store = store::open(&settings.database_url).await?;
    let (listener, state) = bind_web(&web, settings, store, registry).await?;
    let shutdown = CancellationToken::new();
    tokio::spawn(signals(shutdown.clone(), Duration::ZERO));
    crate::web::serve(listener, crate::web::router(state), shutdown).await?;
    Ok(ExitCode::SUCCESS)
}

/// Runs the scheduler with a local executor (and, for `standalone`, the web server) until a
/// signal stops it.
pub async fn run(
    args: ServeArgs,
    web: Option<WebArgs>,
    settings: &Settings,
    registry: Registry,
) -> anyhow::Result<ExitCode> {
    let store = store::open(&settings.database_url).await?;
    let shutdown = CancellationToken::new();
    let web_server = match web {
        Some(web) => {
            let (listener, state) =
                bind_web(&web, settings, store.clone(), registry.clone()).await?;
            let stop = shutdown.clone();
            Some(tokio::spawn(async move {
                crate::web::serve(listener, crate::web::router(state), stop).await
            }))
        }
        None => None,
    };
    if args.executor == "workers" {
        // Workers' claims keep each pool within these sizes.
        let pools: Vec<(String, u32)> = crate::executor::slots::parse_pools(&settings.pools)?
            .into_iter()
            .map(|(name, size)| (name, size as u32))
            .collect();
        store.set_pools(&pools).await?;
    }
    let placement = match args.executor.as_str() {
        "workers" => Placement::Workers {
            heartbeat_timeout: args.worker_timeout,
            poll: Duration::from_millis(50),
        },
        _ => Placement::Local,
    };
    let places = crate::retention::Places::of(settings)?;
    let executor = Executor::new(store.clone(), settings, Arc::new(Connections::from_env()))
        .with_shutdown(shutdown.clone(), args.shutdown_grace)
        .with_placement(placement)
        .with_run_limits()
        .with_shared_storage(places.shared.clone());
    let scheduler = Scheduler::new(
        store.clone(),
        executor,
        Arc::new(SystemClock),
        settings.dags_folder.clone(),
        registry,
        SchedulerOptions {
            retention: Some(crate::retention::Policy {
                places,
                runs: settings.retention,
                artifacts: settings.artifact_retention,
            }),
            ..SchedulerOptions::default()
        },
    );
    super::announce!(
        "sluice scheduler: DAGs from {}, metadata in {}, {}",
        settings.dags_folder.display(),
        store::redact_url(&settings.database_url),
        if args.executor == "workers" {
            "tries run on workers".to_string()
        } else {
            format!("parallelism {}", settings.parallelism)
        }
    );
    tokio::spawn(signals(shutdown.clone(), args.shutdown_grace));
    spawn_metrics(settings, &shutdown);
    // Notifications are sent by every scheduler; a claim in the store keeps each to one.
    let notifier =
        crate::notify::send::Notifier::new(store.clone(), Arc::new(Connections::from_env()));
    let notifier = tokio::spawn(notifier.run(shutdown.clone()));
    scheduler.run(shutdown).await?;
    let _ = notifier.await;
    if let Some(web) = web_server {
        let _ = web.await;
    }
    super::announce!("scheduler stopped");
    Ok(ExitCode::SUCCESS)
}

/// `sluice worker`: claims queued tries from the store and runs them until a signal stops it.
pub async fn worker(
    args: WorkerArgs,
    settings: &Settings,
    registry: Registry,
) -> anyhow::Result<ExitCode> {
    for queue in &args.queues {
        crate::dag::build::check_id(queue)
            .map_err(|e| anyhow::anyhow!("--queues: `{queue}`: {e}"))?;
    }
    if args.concurrency == 0 {
        anyhow::bail!("--concurrency must be at least 1");
    }
    let store = store::open(&settings.database_url).await?;
    let shutdown = CancellationToken::new();
    let name = args
        .name
        .clone()
        .unwrap_or_else(|| format!("{}-{}", crate::executor::hostname(), std::process::id()));
    let places = crate::retention::Places::of(settings)?;
    let executor = Executor::new(store.clone(), settings, Arc::new(Connections::from_env()))
        .with_shutdown(shutdown.clone(), args.shutdown_grace)
        .with_shared_storage(places.shared.clone());
    super::announce!(
        "sluice worker {name}: queues {}, concurrency {}, metadata in {}, artifacts and logs {}",
        args.queues.join(","),
        args.concurrency,
        store::redact_url(&settings.database_url),
        places.shared.as_ref().map_or_else(
            || "on this machine".to_string(),
            |s| format!("in {}", s.url())
        )
    );
    let worker = Worker::new(
        executor,
        registry,
        WorkerOptions {
            name,
            queues: args.queues,
            concurrency: args.concurrency,
            heartbeat: args.heartbeat,
            poll: Duration::from_millis(50),
        },
    );
    tokio::spawn(signals(shutdown.clone(), args.shutdown_grace));
    spawn_metrics(settings, &shutdown);
    // No scheduler cleans this machine's folders: the worker keeps them within retention.
    tokio::spawn(
        crate::retention::LocalSweep {
            places,
            artifacts: settings.artifact_retention,
            logs: settings.retention,
        }
        .run(shutdown.clone()),
    );
    worker.run(shutdown).await?;
    super::announce!("worker stopped");
    Ok(ExitCode::SUCCESS)
}
