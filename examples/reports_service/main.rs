//! A small reports service that receives sluice's cache invalidations.
//!
//! ```sh
//! cargo run --example reports_service -- --port 58080 [--fail-first 5] [--reject-user 42]
//! curl localhost:58080/stats
//! ```

mod service;

use clap::Parser;

/// Run the reports service.
#[derive(Debug, Parser)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on.
    #[arg(long, default_value_t = 58080)]
    port: u16,
    /// Answer 503 to this many requests first (to watch retries).
    #[arg(long, default_value_t = 0)]
    fail_first: u64,
    /// Answer 400 for this user id (repeatable).
    #[arg(long)]
    reject_user: Vec<u64>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let behaviour = service::Behaviour {
        fail_first: args.fail_first,
        reject_users: args.reject_user.into_iter().collect(),
        ..Default::default()
    };
    let listener = tokio::net::TcpListener::bind((args.host.as_str(), args.port)).await?;
    println!(
        "reports service listening on http://{}",
        listener.local_addr()?
    );
    axum::serve(listener, service::Reports::new(behaviour).router()).await?;
    Ok(())
}
