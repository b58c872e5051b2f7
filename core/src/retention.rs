//! Retention: what `sluice db clean` and the scheduler's retention settings remove, and the
//! disk a DAG uses (Airflow's `db clean`).
//!
//! Only finished runs are ever touched. A clean is planned first (what a dry run prints) and
//! then carried out run by run: the run's rows go in one transaction (task instances,
//! attempts, history, deliveries), and only then its try logs and artifacts, so a run that
//! was re-triggered between the plan and the clean keeps everything.

use std::path::Path;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::store::{RunRef, Store, StoreError};

use crate::storage::artifacts::AREA as ARTIFACTS;
use crate::storage::logs::AREA as LOGS;
pub use crate::storage::Places;

/// What the scheduler removes by itself, and how often it looks.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Where files are.
    pub places: Places,
    /// Finished runs older than this are removed with their rows, logs and artifacts
    /// (`SLUICE_RETENTION`; none: kept forever).
    pub runs: Option<std::time::Duration>,
    /// Artifacts of finished runs older than this are removed (`SLUICE_ARTIFACT_RETENTION`,
    /// default 7 days; `never` keeps them).
    pub artifacts: Option<std::time::Duration>,
}

impl Policy {
    /// How often the scheduler applies the policy.
    pub const EVERY: std::time::Duration = std::time::Duration::from_secs(3600);

    /// Applies the policy once at `now`; errors are logged, never fatal.
    pub async fn apply(&self, store: &dyn Store, now: DateTime<Utc>) {
        let before = |keep: std::time::Duration| {
            chrono::Duration::from_std(keep)
                .ok()
                .and_then(|keep| now.checked_sub_signed(keep))
                .unwrap_or(DateTime::<Utc>::MIN_UTC)
        };
        if let Some(keep) = self.runs {
            let cutoff = before(keep);
            let outcome = match plan(store, &self.places, cutoff, None).await {
                Ok(plan) if plan.runs.is_empty() => Ok(None),
                Ok(plan) => clean(store, &self.places, &plan).await.map(Some),
                Err(e) => Err(e),
            };
            match outcome {
                Ok(Some(report)) => {
                    tracing::info!(runs = report.runs.len(), bytes = report.bytes, %cutoff, "retention: removed finished runs")
                }
                Ok(None) => {}
                Err(error) => tracing::warn!(%error, "retention: could not remove old runs"),
            }
        }
        if let Some(keep) = self.artifacts {
            match expire_artifacts(store, &self.places, before(keep)).await {
                Ok(0) => {}
                Ok(bytes) => tracing::info!(bytes, "retention: removed artifacts of finished runs"),
                Err(error) => tracing::warn!(%error, "retention: could not expire artifacts"),
            }
        }
    }
}

/// One run a clean removes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PlannedRun {
    /// The DAG.
    pub dag_id: String,
    /// The run.
    pub run_id: String,
    /// When it ended.
    pub ended_at: DateTime<Utc>,
    /// Bytes of its try logs.
    pub log_bytes: u64,
    /// Bytes of its artifacts.
    pub artifact_bytes: u64,
}

/// What a clean removes (a dry run prints this and stops).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CleanPlan {
    /// Runs that ended before this are removed.
    pub cutoff: DateTime<Utc>,
    /// The runs, oldest first.
    pub runs: Vec<PlannedRun>,
}

impl CleanPlan {
    /// Bytes of logs and artifacts the clean frees.
    pub fn bytes(&self) -> u64 {
        self.runs
            .iter()
            .map(|r| r.log_bytes + r.artifact_bytes)
            .sum()
    }
}

/// What a clean did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CleanReport {
    /// Runs removed with their rows and files.
    pub runs: Vec<RunRef>,
    /// Bytes of files removed.
    pub bytes: u64,
    /// Planned runs that were not finished any more (re-triggered meanwhile): kept.
    pub kept: u64,
}

/// Bytes under `path` (0 when it does not exist).
pub fn bytes_under(path: &Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    if !meta.is_dir() {
        return meta.len();
    }
    std::fs::read_dir(path)
        .map(|entries| entries.flatten().map(|e| bytes_under(&e.path())).sum())
        .unwrap_or(0)
}

/// The finished runs (of `dag_id`, or all) that ended before `cutoff`, with their files' sizes.
pub async fn plan(
    store: &dyn Store,
    places: &Places,
    cutoff: DateTime<Utc>,
    dag_id: Option<&str>,
) -> Result<CleanPlan, StoreError> {
    let runs = store.runs_ended_before(cutoff, dag_id).await?;
    let mut planned = Vec::with_capacity(runs.len());
    for run in runs {
        let at = RunRef {
            dag_id: run.dag_id.clone(),
            run_id: run.run_id.clone(),
        };
        planned.push(PlannedRun {
            log_bytes: places.run_logs(&at).map_or(0, |p| bytes_under(&p))
                + shared_bytes(places, LOGS, &at).await,
            artifact_bytes: places.run_artifacts(&at).map_or(0, |p| bytes_under(&p))
                + shared_bytes(places, ARTIFACTS, &at).await,
            dag_id: run.dag_id,
            run_id: run.run_id,
            ended_at: run.ended_at.unwrap_or(cutoff),
        });
    }
    Ok(CleanPlan {
        cutoff,
        runs: planned,
    })
}

/// Carries out `plan`: the runs still finished lose their rows, then their logs and
/// artifacts. A file that cannot be removed is logged and the clean goes on.
pub async fn clean(
    store: &dyn Store,
    places: &Places,
    plan: &CleanPlan,
) -> Result<CleanReport, StoreError> {
    let wanted: Vec<RunRef> = plan
        .runs
        .iter()
        .map(|r| RunRef {
            dag_id: r.dag_id.clone(),
            run_id: r.run_id.clone(),
        })
        .collect();
    let mut report = CleanReport {
        runs: Vec::new(),
        bytes: 0,
        kept: 0,
    };
    // In chunks, so one transaction never holds the store for long.
    for chunk in wanted.chunks(200) {
        let deleted = store.delete_runs(chunk).await?;
        report.kept += (chunk.len() - deleted.len()) as u64;
        for run in deleted {
            for dir in [places.run_logs(&run), places.run_artifacts(&run)]
                .into_iter()
                .flatten()
            {
                report.bytes += remove_dir(&dir);
            }
            report.bytes += remove_shared(places, LOGS, &run).await;
            report.bytes += remove_shared(places, ARTIFACTS, &run).await;
            report.runs.push(run);
        }
    }
    Ok(report)
}

/// Removes the artifacts of finished runs that ended before `cutoff`, keeping the runs'
/// rows and logs (artifacts are the bulk: a table per task and run). Returns the bytes freed.
pub async fn expire_artifacts(
    store: &dyn Store,
    places: &Places,
    cutoff: DateTime<Utc>,
) -> Result<u64, StoreError> {
    let mut freed = 0;
    for run in store.runs_ended_before(cutoff, None).await? {
        let at = RunRef {
            dag_id: run.dag_id,
            run_id: run.run_id,
        };
        if let Some(dir) = places.run_artifacts(&at) {
            freed += remove_dir(&dir);
        }
        freed += remove_shared(places, ARTIFACTS, &at).await;
    }
    Ok(freed)
}

/// Bytes of the run's objects in `area` of the shared storage (0 without one).
async fn shared_bytes(places: &Places, area: &str, run: &RunRef) -> u64 {
    let Some(shared) = &places.shared else {
        return 0;
    };
    shared.run_bytes(area, run).await.unwrap_or_else(|error| {
        tracing::warn!(%error, "could not list a run's files in shared storage");
        0
    })
}

/// Removes the run's objects in `area` of the shared storage; returns the bytes removed.
async fn remove_shared(places: &Places, area: &str, run: &RunRef) -> u64 {
    let Some(shared) = &places.shared else {
        return 0;
    };
    shared.remove_run(area, run).await.unwrap_or_else(|error| {
        tracing::warn!(%error, "could not remove a cleaned run's files from shared storage");
        0
    })
}

fn remove_dir(dir: &Path) -> u64 {
    let bytes = bytes_under(dir);
    match std::fs::remove_dir_all(dir) {
        Ok(()) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(error) => {
            tracing::warn!(path = %dir.display(), %error, "could not remove files of a cleaned run");
            0
        }
    }
}

/// What a machine that only runs tries (a worker) keeps of finished runs: its folders are
/// caches of shared storage or copies of shipped logs, and no scheduler cleans them.
#[derive(Debug, Clone)]
pub struct LocalSweep {
    /// The folders.
    pub places: Places,
    /// Run folders of artifacts untouched for this long are removed (`SLUICE_ARTIFACT_RETENTION`).
    pub artifacts: Option<std::time::Duration>,
    /// Run folders of logs untouched for this long are removed (`SLUICE_RETENTION`).
    pub logs: Option<std::time::Duration>,
}

impl LocalSweep {
    /// Sweeps now and then every [`Policy::EVERY`] until `stop` fires.
    pub async fn run(self, stop: tokio_util::sync::CancellationToken) {
        loop {
            let now = std::time::SystemTime::now();
            let freed = self.sweep(now);
            if freed > 0 {
                tracing::info!(
                    bytes = freed,
                    "retention: removed old run folders from this machine"
                );
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(Policy::EVERY) => {}
            }
        }
    }

    /// Removes the run folders (`<root>/<dag>/<run>`) not modified within their keep time as
    /// of `now`; returns the bytes freed.
    pub fn sweep(&self, now: std::time::SystemTime) -> u64 {
        let mut freed = 0;
        for (root, keep) in [
            (&self.places.artifacts, self.artifacts),
            (&self.places.logs, self.logs),
        ] {
            let Some(keep) = keep else { continue };
            let Some(cutoff) = now.checked_sub(keep) else {
                continue;
            };
            for dag in std::fs::read_dir(root).into_iter().flatten().flatten() {
                for run in std::fs::read_dir(dag.path())
                    .into_iter()
                    .flatten()
                    .flatten()
                {
                    if newest_change(&run.path()) < cutoff {
                        freed += remove_dir(&run.path());
                    }
                }
            }
        }
        freed
    }
}

/// When a file under `path` last changed (a folder without files: when it did).
fn newest_change(path: &Path) -> std::time::SystemTime {
    let modified = |p: &Path| {
        std::fs::symlink_metadata(p)
            .and_then(|m| m.modified())
            .unwrap_or(std::time::SystemTime::UNIX_EPOCH)
    };
    if !path.is_dir() {
        return modified(path);
    }
    std::fs::read_dir(path)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| newest_change(&e.path()))
        .max()
        .unwrap_or_else(|| modified(path))
}

/// Disk a DAG uses now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct DiskUsage {
    /// Bytes of try logs.
    pub log_bytes: u64,
    /// Bytes of artifacts.
    pub artifact_bytes: u64,
}

/// The disk `dag_id`'s runs use.
pub fn disk_usage(places: &Places, dag_id: &str) -> DiskUsage {
    DiskUsage {
        log_bytes: bytes_under(&places.logs.join(dag_id)),
        artifact_bytes: bytes_under(&places.artifacts.join(dag_id)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    #[test]
    fn a_workers_sweep_removes_only_run_folders_untouched_for_their_keep_time() {
        let dir = tempfile::tempdir().unwrap();
        let places = Places {
            logs: dir.path().join("logs"),
            artifacts: dir.path().join("artifacts"),
            shared: None,
        };
        let day = Duration::from_secs(86_400);
        let file = |path: &str, age: Duration| {
            let path = dir.path().join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, b"12345").unwrap();
            let f = std::fs::File::options().write(true).open(&path).unwrap();
            f.set_modified(SystemTime::now() - age).unwrap();
        };
        file("artifacts/d/old/t.try1.arrow", 10 * day);
        // One file written lately keeps its whole run folder.
        file("artifacts/d/mixed/a.try1.arrow", 10 * day);
        file("artifacts/d/mixed/b.try1.arrow", day);
        file("logs/d/old/t/1.log", 10 * day);
        let sweep = LocalSweep {
            places,
            artifacts: Some(7 * day),
            logs: None,
        };
        let freed = sweep.sweep(SystemTime::now());
        let exists = |p: &str| dir.path().join(p).exists();
        assert!(!exists("artifacts/d/old"), "untouched for 10 days");
        assert_eq!(freed, 5);
        assert!(
            exists("artifacts/d/mixed/a.try1.arrow") && exists("artifacts/d/mixed/b.try1.arrow")
        );
        assert!(
            exists("logs/d/old/t/1.log"),
            "logs are kept without a log retention"
        );
        assert_eq!(sweep.sweep(SystemTime::now() + 7 * day), 10);
        assert!(!exists("artifacts/d/mixed"));
    }
}
