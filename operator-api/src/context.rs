//! What a try sees: its identity, rendered template values, upstream outputs, connections,
//! the artifact store, its log and its cancellation signal. And what a try returns.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::artifact::{ArtifactRef, ArtifactStore};
use crate::connection::{Connection, Connections};
use crate::error::OperatorError;
use crate::template::{self, TemplateVars};

/// Largest serialized [`TaskOutput`] accepted: the metadata store is not a data bus.
pub const MAX_OUTPUT_BYTES: usize = 64 * 1024;

/// What a successful try returns: a table by reference and small values by value.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct TaskOutput {
    /// The task's table output, if it produces one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<ArtifactRef>,
    /// Small JSON values: counts, ids, status.
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub values: serde_json::Map<String, serde_json::Value>,
}

impl TaskOutput {
    /// An output carrying only small values.
    pub fn values(values: serde_json::Map<String, serde_json::Value>) -> Self {
        Self {
            table: None,
            values,
        }
    }

    /// Serializes the output, refusing anything over [`MAX_OUTPUT_BYTES`].
    pub fn to_json(&self) -> Result<String, OperatorError> {
        let json = serde_json::to_string(self)
            .map_err(|e| OperatorError::fatal(format!("output is not JSON: {e}")))?;
        if json.len() > MAX_OUTPUT_BYTES {
            return Err(OperatorError::fatal(format!(
                "output is {} bytes, over the {MAX_OUTPUT_BYTES}-byte limit: write large data as an artifact",
                json.len()
            )));
        }
        Ok(json)
    }
}

/// Longest log line kept; longer lines are cut (a binary blob on stdout must not fill the disk line by line).
pub const MAX_LINE_BYTES: usize = 64 * 1024;

/// Which stream a log line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogStream {
    /// A line the operator or framework wrote.
    Info,
    /// A warning from the operator or framework.
    Warn,
    /// A line the task's process wrote to stdout.
    Stdout,
    /// A line the task's process wrote to stderr.
    Stderr,
}

impl LogStream {
    fn label(self) -> &'static str {
        match self {
            LogStream::Info => "INFO ",
            LogStream::Warn => "WARN ",
            LogStream::Stdout => "OUT  ",
            LogStream::Stderr => "ERR  ",
        }
    }
}

/// The log of one try: timestamped lines appended to a file, each written whole so that a
/// reader following the file never sees half a line.
///
/// The file is created on the first line that is not a [`TaskLog::preamble`]: a try whose
/// operator says nothing and succeeds leaves no file (its start and end are in the state
/// history), which spares the two inode allocations per try that otherwise bound how many
/// short tries per second a scheduler can run.
#[derive(Debug, Clone)]
pub struct TaskLog {
    sink: Option<Arc<Mutex<Sink>>>,
    /// Secrets are masked in every line before it is written.
    masker: crate::Masker,
}

#[derive(Debug)]
struct Sink {
    path: PathBuf,
    /// Open once the first line was written; `Err` after opening failed (reported once).
    file: Option<std::io::Result<File>>,
    /// Lines waiting for the first real line.
    preamble: String,
    /// Writes that failed (a full disk) since the last one that succeeded.
    dropped: u64,
}

impl Sink {
    /// Writes `text` (after the preamble); returns the error of opening the file the first
    /// time it fails, for the caller to report once the lock is released (a report inside a
    /// try's span is routed back to this log).
    fn write(&mut self, text: &str) -> Option<String> {
        let mut failed = None;
        let path = &self.path;
        let file = self.file.get_or_insert_with(|| {
            let opened = (|| {
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                OpenOptions::new().create(true).append(true).open(path)
            })();
            if let Err(error) = &opened {
                failed = Some(format!("{}: {error}", path.display()));
            }
            opened
        });
        if let Ok(file) = file {
            let mut chunk = std::mem::take(&mut self.preamble);
            if self.dropped > 0 {
                chunk.push_str(&format_lines(
                    &crate::Masker::default(),
                    LogStream::Warn,
                    &format!(
                        "{} log writes were lost: the log file could not be written",
                        self.dropped
                    ),
                ));
            }
            chunk.push_str(text);
            // One write per call: a reader following the file never sees half a line. A
            // failed write (a full disk) does not fail the try: it is reported once, counted,
            // and the count is written with the next line that fits.
            match file.write_all(chunk.as_bytes()) {
                Ok(()) => self.dropped = 0,
                Err(error) => {
                    if self.dropped == 0 {
                        failed = Some(format!("{}: {error}", path.display()));
                    }
                    self.dropped += 1;
                }
            }
        }
        failed
    }
}

fn report_unwritable(failed: Option<String>) {
    if let Some(error) = failed {
        tracing::warn!(%error, "cannot write the try log; its lines are dropped until it can");
    }
}

fn format_lines(masker: &crate::Masker, stream: LogStream, text: &str) -> String {
    let masked;
    let text = if masker.is_empty() {
        text
    } else {
        masked = masker.mask(text);
        masked.as_str()
    };
    let now = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.3fZ");
    let mut out = String::new();
    for line in text.trim_end_matches(['\n', '\r']).split('\n') {
        let mut line = line.trim_end_matches('\r');
        let truncated = line.len() > MAX_LINE_BYTES;
        if truncated {
            line = &line[..line.floor_char_boundary(MAX_LINE_BYTES)];
        }
        let cut = if truncated {
            " …[line truncated]"
        } else {
            ""
        };
        out.push_str(&format!("{now} {} {line}{cut}\n", stream.label()));
    }
    out
}

impl TaskLog {
    /// A log appended to `path`; the file and its folders are created with the first line.
    pub fn to_file(path: &Path) -> Self {
        Self {
            sink: Some(Arc::new(Mutex::new(Sink {
                path: path.to_path_buf(),
                file: None,
                preamble: String::new(),
                dropped: 0,
            }))),
            masker: crate::Masker::default(),
        }
    }

    /// The same log, masking these secrets in every line.
    pub fn masked(mut self, masker: crate::Masker) -> Self {
        self.masker = masker;
        self
    }

    /// A log that drops every line (for unit tests of operators).
    pub fn discard() -> Self {
        Self {
            sink: None,
            masker: crate::Masker::default(),
        }
    }

    fn sink(&self) -> Option<std::sync::MutexGuard<'_, Sink>> {
        self.sink
            .as_ref()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Appends `text`; each of its lines gets the timestamp and stream label.
    pub fn line(&self, stream: LogStream, text: &str) {
        let failed = self
            .sink()
            .and_then(|mut sink| sink.write(&format_lines(&self.masker, stream, text)));
        report_unwritable(failed);
    }

    /// An informational line written only if the try writes anything else (the framework's
    /// header of a try).
    pub fn preamble(&self, text: &str) {
        let failed = self.sink().and_then(|mut sink| {
            let lines = format_lines(&self.masker, LogStream::Info, text);
            match &sink.file {
                Some(_) => sink.write(&lines),
                None => {
                    sink.preamble.push_str(&lines);
                    None
                }
            }
        });
        report_unwritable(failed);
    }

    /// Appends an informational line only if the file exists already (the framework's
    /// closing line of a silent successful try is not worth a file).
    pub fn info_if_written(&self, text: &str) {
        let failed = self.sink().and_then(|mut sink| {
            sink.file
                .is_some()
                .then(|| sink.write(&format_lines(&self.masker, LogStream::Info, text)))
                .flatten()
        });
        report_unwritable(failed);
    }

    /// Appends an informational line.
    pub fn info(&self, text: &str) {
        self.line(LogStream::Info, text);
    }

    /// Appends a warning line.
    pub fn warn(&self, text: &str) {
        self.line(LogStream::Warn, text);
    }
}

/// A staged artifact file, removed when dropped unless it was committed (taken out).
struct StagedFile(Option<PathBuf>);

impl Drop for StagedFile {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            // No half-written file stays behind.
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Everything one try of one task can see.
#[derive(Debug, Clone)]
pub struct TaskContext {
    /// The values templates render with (ids, data interval, params, conf).
    pub vars: TemplateVars,
    /// Folder of the DAG file: relative paths in config (SQL files) resolve against it.
    pub dag_dir: PathBuf,
    /// The files the task's config names (SQL, DDL) as the run's DAG version has them, by the
    /// path as written: a run executes the SQL it was created with (see
    /// [`TaskContext::config_file`]). Empty where no version was recorded.
    pub config_files: Arc<std::collections::BTreeMap<String, String>>,
    /// Outputs of the task's direct upstream tasks that succeeded, by task id.
    pub upstream: BTreeMap<String, TaskOutput>,
    /// Named connections.
    pub connections: Arc<Connections>,
    /// Where table outputs are written and read.
    pub artifacts: Arc<dyn ArtifactStore>,
    /// This try's log.
    pub log: TaskLog,
    /// Where item-by-item deliveries are recorded (see [`crate::ledger`]).
    pub deliveries: Arc<dyn crate::DeliveryLedger>,
    /// Where process groups the try starts are recorded (see [`crate::processes`]).
    pub processes: Arc<dyn crate::ProcessRegistry>,
    /// Cancelled when the try must stop (timeout, run cancelled, shutdown).
    pub cancel: CancellationToken,
}

impl TaskContext {
    /// Renders a config string with this try's values; a failure is fatal (retrying renders the same).
    pub fn render(&self, source: &str) -> Result<String, OperatorError> {
        template::render(source, &self.vars).map_err(|e| OperatorError::fatal(e.message))
    }

    /// Looks up a connection; a missing one is fatal.
    pub fn connection(&self, id: &str) -> Result<&Connection, OperatorError> {
        self.connections
            .get(id)
            .map_err(|e| OperatorError::fatal(e.to_string()))
    }

    /// Where this try's table output goes, in the given format (`arrow`, `parquet`).
    pub fn artifact_key(&self, extension: &str) -> crate::ArtifactKey {
        crate::ArtifactKey {
            dag_id: self.vars.dag_id.clone(),
            run_id: self.vars.run_id.clone(),
            task_id: self.vars.task_id.clone(),
            try_number: self.vars.try_number,
            extension: extension.into(),
        }
    }

    /// Writes this try's table output: `write` runs on a blocking thread (table work is CPU
    /// work) and fills the staging path it is given, returning the row count; the file is
    /// committed only if it succeeds, so a failed try leaves no half-written artifact.
    pub async fn write_table<F>(
        &self,
        extension: &str,
        write: F,
    ) -> Result<(crate::ArtifactRef, u64), OperatorError>
    where
        F: FnOnce(&Path) -> Result<u64, OperatorError> + Send + 'static,
    {
        let key = self.artifact_key(extension);
        // Disk errors (a full disk, a quota) are retryable: the next try may find space.
        let staged = self
            .artifacts
            .staging_path(&key)
            .await
            .map_err(|e| OperatorError::retryable(e.to_string()))?;
        // A try stopped mid-write (a timeout, a cancel) drops this future: the guard still
        // removes the half-written file.
        let mut guard = StagedFile(Some(staged.clone()));
        let path = staged.clone();
        let written = tokio::task::spawn_blocking(move || write(&path))
            .await
            .map_err(|e| OperatorError::fatal(format!("writing the table panicked: {e}")))
            .and_then(|rows| rows);
        let committed = match written {
            Ok(rows) => self
                .artifacts
                .commit(&key, &staged, Some(rows))
                .await
                .map(|table| (table, rows))
                .map_err(|e| OperatorError::retryable(e.to_string())),
            Err(e) => Err(e),
        };
        if committed.is_ok() {
            guard.0 = None;
        }
        committed
    }

    /// The text of a file the config names (`field` says which, for errors): the run's DAG
    /// version's copy, or the file on disk when the version has none. The path in the error
    /// is the one on disk; an unreadable file is fatal (a retry reads the same).
    pub async fn config_file(&self, field: &str, path: &str) -> Result<String, OperatorError> {
        let path = path.trim();
        if let Some(text) = self.config_files.get(path) {
            return Ok(text.clone());
        }
        let on_disk = self.resolve_path(path);
        tokio::fs::read_to_string(&on_disk).await.map_err(|e| {
            OperatorError::fatal(format!("{field}: cannot read {}: {e}", on_disk.display()))
        })
    }

    /// Resolves a path from config against the DAG file's folder.
    pub fn resolve_path(&self, path: &str) -> PathBuf {
        let path = Path::new(path);
        if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.dag_dir.join(path)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_line_gets_a_prefix_and_long_lines_are_cut() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/try.log");
        let log = TaskLog::to_file(&path);
        log.preamble("header");
        log.info_if_written("not written: nothing else was");
        assert!(!path.exists(), "a silent log creates no file");
        log.info("first\nsecond\r\n");
        log.line(LogStream::Stdout, &"é".repeat(MAX_LINE_BYTES));
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        log.info_if_written("closing");
        assert_eq!(lines.len(), 4, "{text}");
        assert!(lines[0].ends_with("INFO  header"), "{text}");
        assert!(
            lines[1].ends_with("INFO  first") && lines[2].ends_with("INFO  second"),
            "{text}"
        );
        assert!(lines[3].contains("OUT   é") && lines[3].ends_with("…[line truncated]"));
        assert!(lines[3].len() < MAX_LINE_BYTES + 100);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.lines().last().unwrap().ends_with("INFO  closing"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn a_table_that_fails_to_write_leaves_no_file_and_can_be_retried() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = test_context(dir.path());
        // Half a table, then the disk is full.
        let failed = ctx
            .write_table("arrow", |path| {
                std::fs::write(path, b"half a table").unwrap();
                Err(OperatorError::retryable(format!(
                    "writing {}: No space left on device",
                    path.display()
                )))
            })
            .await
            .unwrap_err();
        assert_eq!(failed.kind, crate::FailureKind::Retryable);
        let left: Vec<_> = walk(&dir.path().join("artifacts"));
        assert!(left.is_empty(), "no partial file stays: {left:?}");
        // The next try writes the table.
        let (table, rows) = ctx
            .write_table("arrow", |path| {
                std::fs::write(path, b"a table").unwrap();
                Ok(1)
            })
            .await
            .unwrap();
        assert_eq!(rows, 1);
        assert_eq!(walk(&dir.path().join("artifacts")).len(), 1);
        assert_eq!(table.location, "d/r/t.try1.arrow");
    }

    /// A try's context with its artifacts under `dir/artifacts`.
    fn test_context(dir: &Path) -> TaskContext {
        use chrono::TimeZone;
        let t = chrono::Utc.with_ymd_and_hms(2026, 1, 2, 3, 0, 0).unwrap();
        TaskContext {
            vars: TemplateVars::new(
                "d",
                "r",
                "t",
                1,
                t,
                (t, t),
                serde_json::json!({}),
                serde_json::json!({}),
            ),
            dag_dir: dir.to_path_buf(),
            config_files: Default::default(),
            upstream: Default::default(),
            connections: Arc::new(Connections::default()),
            artifacts: Arc::new(crate::LocalArtifactStore::new(dir.join("artifacts"))),
            log: TaskLog::discard(),
            deliveries: Arc::new(crate::NoLedger),
            processes: Arc::new(crate::NoProcesses),
            cancel: Default::default(),
        }
    }

    #[tokio::test]
    async fn a_try_stopped_mid_write_leaves_no_partial_file() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = test_context(dir.path());
        // The try's timeout drops the write while the table is half written.
        let write = ctx.write_table("arrow", |path| {
            std::fs::write(path, b"half a table").unwrap();
            std::thread::sleep(std::time::Duration::from_millis(300));
            Ok(1)
        });
        let stopped = tokio::time::timeout(std::time::Duration::from_millis(100), write).await;
        assert!(stopped.is_err());
        tokio::time::sleep(std::time::Duration::from_millis(400)).await;
        let left = walk(&dir.path().join("artifacts"));
        assert!(left.is_empty(), "no partial file stays: {left:?}");
    }

    fn walk(dir: &Path) -> Vec<PathBuf> {
        let mut files = Vec::new();
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                files.extend(walk(&path));
            } else {
                files.push(path);
            }
        }
        files
    }
}
