//! Deterministic data for the reference pipeline's two source databases (docs/pipeline.md).
//!
//! ```sh
//! cargo run --example seed_data -- --customers 100000 --events 1000000
//! ```
//! Creates the tables if missing, replaces their content, and writes telemetry for one
//! 15-minute window (by default the latest complete one, the window `sluice dags test
//! prosthesis_stats` runs). The same flags give the same rows. Loads with `COPY FROM STDIN`.

use std::time::Instant;

use chrono::{DateTime, Duration, DurationRound, SecondsFormat, Utc};
use clap::Parser;
use sqlx::postgres::PgConnection;
use sqlx::Connection;

const SCHEMA: &str = include_str!("schema.sql");
const REGIONS: &[&str] = &[
    "eu-west", "eu-north", "us-east", "us-west", "apac", "latam", "mena", "africa",
];
const KINDS: &[&str] = &["hand", "forearm", "knee", "ankle", "hip", "elbow"];
const EVENTS: &[&str] = &["step", "grip", "flex", "calibrate", "sync"];
const ERRORS: &[&str] = &["E_MOTOR", "E_SENSOR", "E_BATT", "E_COMMS"];

/// Seed the CRM and telemetry databases.
#[derive(Debug, Parser)]
struct Args {
    /// CRM database URL (default: SLUICE_CONN_CRM).
    #[arg(long, env = "SLUICE_CONN_CRM")]
    crm: String,
    /// Telemetry database URL (default: SLUICE_CONN_TELEMETRY).
    #[arg(long, env = "SLUICE_CONN_TELEMETRY")]
    telemetry: String,
    /// Number of customers (each has one prosthesis; every 50th has two).
    #[arg(long, default_value_t = 1000)]
    customers: u64,
    /// Number of prosthesis models.
    #[arg(long, default_value_t = 12)]
    models: u32,
    /// Telemetry events inside the window (plus 2% just outside it).
    #[arg(long, default_value_t = 20000)]
    events: u64,
    /// Window start (RFC 3339); default: the latest complete 15-minute window.
    #[arg(long)]
    window_start: Option<DateTime<Utc>>,
    /// Window length in minutes.
    #[arg(long, default_value_t = 15)]
    window_minutes: i64,
    /// Random seed.
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

/// splitmix64: small, fast and deterministic.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// COPY text format: escape backslash, tab, newline and carriage return.
fn text(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('\t', "\\t")
        .replace('\n', "\\n")
        .replace('\r', "\\r")
}

fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

async fn load(
    conn: &mut PgConnection,
    table: &str,
    columns: &str,
    data: String,
) -> anyhow::Result<u64> {
    let mut copy = conn
        .copy_in_raw(&format!("COPY {table} ({columns}) FROM STDIN"))
        .await?;
    copy.send(data.into_bytes()).await?;
    Ok(copy.finish().await?)
}

fn schema_part(tag: &str) -> String {
    let start = SCHEMA.find(tag).expect("schema sections are tagged");
    let rest = &SCHEMA[start + tag.len()..];
    rest.split("-- @").next().unwrap_or(rest).to_string()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let window = Duration::minutes(args.window_minutes);
    let start = match args.window_start {
        Some(start) => start,
        None => Utc::now().duration_trunc(window)? - window,
    };
    let end = start + window;
    let mut rng = Rng(args.seed);
    let began = Instant::now();

    let mut crm = PgConnection::connect(&args.crm).await?;
    sqlx::raw_sql(&schema_part("@crm"))
        .execute(&mut crm)
        .await?;
    sqlx::raw_sql("TRUNCATE prostheses, customers, prosthesis_models")
        .execute(&mut crm)
        .await?;
    let updated = ts(start - Duration::days(1));
    let mut models = String::new();
    for id in 1..=args.models {
        let kind = KINDS[(id as usize) % KINDS.len()];
        let rated = 500 + rng.below(20) * 250;
        models.push_str(&format!(
            "{id}\t{}\t{kind}\t{rated}\t{updated}\n",
            text(&format!("Model {kind} Mk{id}"))
        ));
    }
    load(
        &mut crm,
        "prosthesis_models",
        "id, name, kind, rated_cycles_per_day, updated_at",
        models,
    )
    .await?;
    let mut customers = String::new();
    let mut prostheses = String::new();
    let mut chips: Vec<String> = Vec::new();
    let mut prosthesis_id = 0u64;
    for id in 1..=args.customers {
        // user ids beyond 2^53 catch any float on the way to ClickHouse
        let user_id = 9_007_199_254_740_993u64 + id * 7919;
        let region = REGIONS[rng.below(REGIONS.len() as u64) as usize];
        customers.push_str(&format!(
            "{id}\t{user_id}\t{}\t{region}\t{updated}\n",
            text(&format!("Customer {id} O'Brien-Müller"))
        ));
        let count = if id % 50 == 0 { 2 } else { 1 };
        for _ in 0..count {
            prosthesis_id += 1;
            let chip = format!("CHIP-{prosthesis_id:08}");
            let model = 1 + rng.below(args.models as u64);
            let active = rng.below(100) >= 3;
            let fitted = ts(start - Duration::days(30 + rng.below(900) as i64));
            prostheses.push_str(&format!(
                "{prosthesis_id}\t{chip}\t{id}\t{model}\t{fitted}\t{active}\t{updated}\n"
            ));
            chips.push(chip);
        }
    }
    load(
        &mut crm,
        "customers",
        "id, user_id, full_name, region, updated_at",
        customers,
    )
    .await?;
    load(
        &mut crm,
        "prostheses",
        "id, chip_id, customer_id, model_id, fitted_at, active, updated_at",
        prostheses,
    )
    .await?;
    sqlx::raw_sql("ANALYZE").execute(&mut crm).await?;

    let mut telemetry = PgConnection::connect(&args.telemetry).await?;
    sqlx::raw_sql(&schema_part("@telemetry"))
        .execute(&mut telemetry)
        .await?;
    sqlx::raw_sql("TRUNCATE telemetry_events")
        .execute(&mut telemetry)
        .await?;
    let span_us = window
        .num_microseconds()
        .expect("a window fits in i64 microseconds");
    let outside = args.events / 50;
    let mut batch = String::with_capacity(8 << 20);
    let mut written = 0u64;
    for i in 0..args.events + outside {
        // 1 event in 100 comes from a chip the CRM does not know
        let chip = if rng.below(100) == 0 {
            format!("UNKNOWN-{:05}", rng.below(500))
        } else {
            chips[rng.below(chips.len() as u64) as usize].clone()
        };
        let at = if i < args.events {
            start + Duration::microseconds(rng.below(span_us as u64) as i64)
        } else if i % 2 == 0 {
            end + Duration::microseconds(rng.below(span_us as u64) as i64)
        } else {
            start - Duration::microseconds(1 + rng.below(span_us as u64) as i64)
        };
        let is_error = rng.below(1000) < 30;
        let code = if is_error {
            ERRORS[rng.below(ERRORS.len() as u64) as usize]
        } else {
            "\\N"
        };
        let battery = if rng.below(20) == 0 {
            "\\N".to_string()
        } else {
            format!("{:.1}", 5.0 + rng.unit() * 95.0)
        };
        let latency = if rng.below(25) == 0 {
            "\\N".to_string()
        } else {
            format!("{:.2}", 2.0 + rng.unit() * 250.0)
        };
        let event = EVENTS[rng.below(EVENTS.len() as u64) as usize];
        batch.push_str(&format!(
            "{chip}\t{}\t{event}\t{is_error}\t{code}\t{}\t{battery}\t{latency}\n",
            ts(at),
            rng.below(40)
        ));
        if batch.len() > (8 << 20) - 512 {
            written += load(
                &mut telemetry,
                "telemetry_events",
                "chip_id, ts, event_type, is_error, error_code, cycles, battery_pct, latency_ms",
                std::mem::take(&mut batch),
            )
            .await?;
        }
    }
    written += load(
        &mut telemetry,
        "telemetry_events",
        "chip_id, ts, event_type, is_error, error_code, cycles, battery_pct, latency_ms",
        batch,
    )
    .await?;
    sqlx::raw_sql("ANALYZE telemetry_events")
        .execute(&mut telemetry)
        .await?;
    println!(
        "seeded {} customers, {} prostheses, {} models, {written} telemetry events ({} in the window [{}, {})) in {:.1}s",
        args.customers,
        chips.len(),
        args.models,
        args.events,
        start.to_rfc3339(),
        end.to_rfc3339(),
        began.elapsed().as_secs_f64()
    );
    Ok(())
}
