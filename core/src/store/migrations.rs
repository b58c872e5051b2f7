//! The metadata store's migrations as they stand, read without applying any: which this
//! binary has, which the store has applied, which are pending (`sluice db check`,
//! `sluice db migrate`). [`super::open`] is what applies them.

use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::{Connection, Row};

use super::{redact_url, StoreError};

/// The same migrations the store applies (`migrations/<backend>`), embedded again here to
/// compare with what a store has applied.
static SQLITE: Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES: Migrator = sqlx::migrate!("./migrations/postgres");

/// How long reaching the store may take before it counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// One migration of this binary.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Migration {
    /// Its version (the file's number).
    pub version: i64,
    /// What it does (the file's name after the number).
    pub description: String,
}

impl std::fmt::Display for Migration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:04} {}", self.version, self.description)
    }
}

/// A store's migrations against this binary's.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MigrationStatus {
    /// The store's URL, password masked.
    pub store: String,
    /// `sqlite` or `postgres`.
    pub backend: &'static str,
    /// False for a SQLite file that does not exist yet (every migration is pending).
    pub exists: bool,
    /// Migrations of this binary the store has applied.
    pub applied: Vec<Migration>,
    /// Migrations of this binary the store has not applied yet.
    pub pending: Vec<Migration>,
    /// Versions the store has applied that this binary does not know (a newer sluice
    /// migrated it).
    pub unknown: Vec<i64>,
}

/// Reads the migrations `url`'s store has applied, creating nothing (a SQLite file that does
/// not exist is reported as such). Fails when the store cannot be reached.
pub async fn status(url: &str) -> Result<MigrationStatus, StoreError> {
    sqlx::any::install_default_drivers();
    let shown = redact_url(url);
    let open_error = |source: sqlx::Error| StoreError::Open {
        url: shown.clone(),
        cause: source,
    };
    let (backend, migrator, connect_url) =
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            ("postgres", &POSTGRES, url.to_string())
        } else if let Some(path) = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
        {
            let file = path.split('?').next().unwrap_or(path);
            if !std::path::Path::new(file).exists() {
                return Ok(MigrationStatus {
                    store: shown,
                    backend: "sqlite",
                    exists: false,
                    applied: Vec::new(),
                    pending: migrations(&SQLITE),
                    unknown: Vec::new(),
                });
            }
            ("sqlite", &SQLITE, format!("sqlite://{file}?mode=ro"))
        } else {
            return Err(open_error(sqlx::Error::Configuration(
                "expected a sqlite:// or postgres:// URL".into(),
            )));
        };
    let mut conn =
        tokio::time::timeout(CONNECT_TIMEOUT, sqlx::AnyConnection::connect(&connect_url))
            .await
            .map_err(|_| open_error(sqlx::Error::PoolTimedOut))?
            .map_err(open_error)?;
    let has_table: i64 = sqlx::query(if backend == "sqlite" {
        "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'"
    } else {
        "SELECT COUNT(*) FROM information_schema.tables WHERE table_name = '_sqlx_migrations' AND table_schema = current_schema()"
    })
    .fetch_one(&mut conn)
    .await
    .and_then(|row| row.try_get(0))
    .map_err(open_error)?;
    let done: Vec<i64> = if has_table > 0 {
        sqlx::query("SELECT version FROM _sqlx_migrations WHERE success ORDER BY version")
            .fetch_all(&mut conn)
            .await
            .map_err(open_error)?
            .iter()
            .map(|row| row.try_get::<i64, _>(0))
            .collect::<Result<_, _>>()
            .map_err(open_error)?
    } else {
        Vec::new()
    };
    let _ = conn.close().await;
    let (applied, pending) = migrations(migrator)
        .into_iter()
        .partition(|m| done.contains(&m.version));
    let known: Vec<i64> = migrator.iter().map(|m| m.version).collect();
    Ok(MigrationStatus {
        store: shown,
        backend,
        exists: true,
        applied,
        pending,
        unknown: done.into_iter().filter(|v| !known.contains(v)).collect(),
    })
}

fn migrations(migrator: &Migrator) -> Vec<Migration> {
    migrator
        .iter()
        .filter(|m| !m.migration_type.is_down_migration())
        .map(|m| Migration {
            version: m.version,
            description: m.description.to_string(),
        })
        .collect()
}
