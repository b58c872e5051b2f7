//! Process settings from the environment (the stable variables of docs/concepts.md): where sluice keeps its state, where
//! DAG files live and which metadata store to use.

use std::path::{Path, PathBuf};

/// How long artifacts of finished runs are kept unless `SLUICE_ARTIFACT_RETENTION` says.
pub const DEFAULT_ARTIFACT_RETENTION: std::time::Duration =
    std::time::Duration::from_secs(7 * 86_400);

/// Settings shared by every command.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `SLUICE_HOME` (default `./.sluice`): the SQLite store, logs and artifacts.
    pub home: PathBuf,
    /// `SLUICE_DAGS_FOLDER` (default `./dags`).
    pub dags_folder: PathBuf,
    /// `SLUICE_DATABASE_URL` (default SQLite at `$SLUICE_HOME/sluice.db`).
    pub database_url: String,
    /// `SLUICE_PARALLELISM` (default 32): most tries running at once in this process.
    pub parallelism: usize,
    /// `SLUICE_POOLS` (`name=size,…`): named slot limits tasks opt into with `pool:`.
    pub pools: String,
    /// `SLUICE_RUN_LEASE` (default 15s): how long a run stays claimed by a driver that stopped
    /// renewing (a process that died); another process resumes it after that.
    pub run_lease: std::time::Duration,
    /// `SLUICE_RETENTION` (e.g. `30d`; default: forever): the scheduler removes finished runs
    /// older than this with their history, logs, artifacts and ledgers.
    pub retention: Option<std::time::Duration>,
    /// `SLUICE_ARTIFACT_RETENTION` (default `7d`; `never` keeps them): the scheduler removes
    /// the artifacts of finished runs older than this.
    pub artifact_retention: Option<std::time::Duration>,
    /// `SLUICE_STORE_OUTAGE_DEADLINE` (default `5m`): how long a run driver waits out a
    /// metadata store that does not answer (running tries go on) before it stops the run's
    /// tries and leaves the run to be resumed.
    pub store_outage_deadline: std::time::Duration,
    /// `SLUICE_STORAGE_URL` (`s3://bucket/prefix` or `file:///folder`; default: none): shared
    /// storage for artifacts and try logs, so tries on several machines read each other's
    /// artifacts and a web server on any machine serves every log.
    pub storage_url: Option<String>,
    /// `SLUICE_METRICS_ADDR` (e.g. `0.0.0.0:9102`; default: none): where a scheduler or worker
    /// serves its Prometheus metrics (a web server serves them at `/metrics` anyway).
    pub metrics_addr: Option<String>,
}

/// How long a store outage is waited out unless `SLUICE_STORE_OUTAGE_DEADLINE` says.
pub const DEFAULT_STORE_OUTAGE_DEADLINE: std::time::Duration = std::time::Duration::from_secs(300);

impl Settings {
    /// Reads the process environment.
    pub fn from_env() -> Self {
        Self::from_lookup(|name| std::env::var(name).ok().filter(|v| !v.is_empty()))
    }

    /// Reads settings through `lookup` (for tests).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Self {
        let home = PathBuf::from(lookup("SLUICE_HOME").unwrap_or_else(|| "./.sluice".into()));
        let dags_folder =
            PathBuf::from(lookup("SLUICE_DAGS_FOLDER").unwrap_or_else(|| "./dags".into()));
        let database_url = lookup("SLUICE_DATABASE_URL")
            .unwrap_or_else(|| format!("sqlite://{}", home.join("sluice.db").display()));
        let parallelism = lookup("SLUICE_PARALLELISM")
            .and_then(|v| v.parse().ok())
            .filter(|&n| n > 0)
            .unwrap_or(32);
        let pools = lookup("SLUICE_POOLS").unwrap_or_default();
        let run_lease = lookup("SLUICE_RUN_LEASE")
            .and_then(|v| humantime::parse_duration(&v).ok())
            .filter(|d| !d.is_zero())
            .unwrap_or(std::time::Duration::from_secs(15));
        let duration = |name: &str| {
            lookup(name)
                .filter(|v| v != "never")
                .and_then(|v| humantime::parse_duration(&v).ok())
                .filter(|d| !d.is_zero())
        };
        let retention = duration("SLUICE_RETENTION");
        let artifact_retention = match lookup("SLUICE_ARTIFACT_RETENTION").as_deref() {
            Some("never") => None,
            Some(_) => duration("SLUICE_ARTIFACT_RETENTION"),
            None => Some(DEFAULT_ARTIFACT_RETENTION),
        };
        let store_outage_deadline = lookup("SLUICE_STORE_OUTAGE_DEADLINE")
            .and_then(|v| humantime::parse_duration(&v).ok())
            .unwrap_or(DEFAULT_STORE_OUTAGE_DEADLINE);
        Self {
            home,
            dags_folder,
            database_url,
            parallelism,
            pools,
            run_lease,
            retention,
            artifact_retention,
            store_outage_deadline,
            storage_url: lookup("SLUICE_STORAGE_URL"),
            metrics_addr: lookup("SLUICE_METRICS_ADDR"),
        }
    }

    /// Settings rooted at `home` with an explicit DAG folder and SQLite store (for tests).
    pub fn local(home: &Path, dags_folder: &Path) -> Self {
        Self {
            home: home.to_path_buf(),
            dags_folder: dags_folder.to_path_buf(),
            database_url: format!("sqlite://{}", home.join("sluice.db").display()),
            parallelism: 32,
            pools: String::new(),
            run_lease: std::time::Duration::from_secs(15),
            retention: None,
            artifact_retention: Some(DEFAULT_ARTIFACT_RETENTION),
            store_outage_deadline: DEFAULT_STORE_OUTAGE_DEADLINE,
            storage_url: None,
            metrics_addr: None,
        }
    }

    /// Folder of try logs: `$SLUICE_HOME/logs`.
    pub fn logs_dir(&self) -> PathBuf {
        self.home.join("logs")
    }

    /// Folder of artifacts: `$SLUICE_HOME/artifacts`.
    pub fn artifacts_dir(&self) -> PathBuf {
        self.home.join("artifacts")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_design() {
        let s = Settings::from_lookup(|_| None);
        assert_eq!(s.home, PathBuf::from("./.sluice"));
        assert_eq!(s.dags_folder, PathBuf::from("./dags"));
        assert_eq!(s.database_url, "sqlite://./.sluice/sluice.db");
        let s = Settings::from_lookup(|n| (n == "SLUICE_HOME").then(|| "/var/sluice".to_string()));
        assert_eq!(s.database_url, "sqlite:///var/sluice/sluice.db");
        assert_eq!(s.logs_dir(), PathBuf::from("/var/sluice/logs"));
    }
}
