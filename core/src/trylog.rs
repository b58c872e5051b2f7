//! Try log files: where a try's log lives, how it reads, and the routing of `tracing`
//! events emitted inside a try to that try's file.
//!
//! The executor registers the try's [`TaskLog`] under a numeric id ([`route`]) and runs the
//! try inside a span carrying `try_log = <id>`. [`TryLogLayer`], installed by `cli::init_tracing`,
//! finds that span for each event and appends the event to the file. Without the layer
//! (library use, tests) operator output still reaches the file directly through the log.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use sluice_operator_api::{LogStream, TaskLog};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

use crate::store::TaskKey;

/// The log file of one try: `<logs>/<dag>/<run>/<task>/<try>.log`.
pub fn try_log_path(logs_dir: &Path, key: &TaskKey, try_number: u32) -> PathBuf {
    logs_dir
        .join(&key.dag_id)
        .join(&key.run_id)
        .join(&key.task_id)
        .join(format!("{try_number}.log"))
}

/// The log text of one try. A try that wrote nothing and succeeded has no file (see
/// [`TaskLog`]): it reads as a one-line note instead of an error.
pub fn read_try_log(logs_dir: &Path, key: &TaskKey, try_number: u32) -> std::io::Result<String> {
    match std::fs::read_to_string(try_log_path(logs_dir, key, try_number)) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Ok(no_log_chunk(key, try_number).content)
        }
        other => other,
    }
}

/// A piece of a try's log, in whole lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogChunk {
    /// The text (bytes that are not UTF-8 are replaced).
    pub content: String,
    /// Byte offset of `content` in the file.
    pub offset: u64,
    /// Where the next read continues (the file's size when this chunk reaches its end).
    pub next_offset: u64,
    /// The file's size when it was read.
    pub size: u64,
}

/// At most `limit` bytes of a try's log, whole lines only: from `offset` on, or, without one,
/// the tail of the file. Memory stays bounded by `limit` whatever the log's size; a line
/// longer than `limit` comes in pieces.
pub fn read_try_log_range(
    logs_dir: &Path,
    key: &TaskKey,
    try_number: u32,
    offset: Option<u64>,
    limit: u64,
) -> std::io::Result<LogChunk> {
    use std::io::{Read, Seek, SeekFrom};
    let path = try_log_path(logs_dir, key, try_number);
    let mut file = match std::fs::File::open(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(no_log_chunk(key, try_number));
        }
        other => other?,
    };
    let size = file.metadata()?.len();
    let window = log_window(size, offset, limit);
    file.seek(SeekFrom::Start(window.start))?;
    let mut bytes = Vec::with_capacity((window.end - window.start) as usize);
    file.take(window.end - window.start)
        .read_to_end(&mut bytes)?;
    Ok(log_chunk(&bytes, window.start, size, offset))
}

/// The chunk of a try that wrote no log: a one-line note.
pub fn no_log_chunk(key: &TaskKey, try_number: u32) -> LogChunk {
    LogChunk {
        content: format!(
            "(try {try_number} of {key} wrote no log lines; its start and end are in the state history)\n"
        ),
        offset: 0,
        next_offset: 0,
        size: 0,
    }
}

/// The bytes of a log of `size` bytes to read for a chunk of at most `limit` bytes from
/// `offset` on (or the tail, without one).
pub fn log_window(size: u64, offset: Option<u64>, limit: u64) -> std::ops::Range<u64> {
    let limit = limit.max(1);
    let start = match offset {
        Some(offset) => offset.min(size),
        None => size.saturating_sub(limit),
    };
    start..(start + limit).min(size)
}

/// The chunk made of `bytes`, read from `start` of a log of `size` bytes: trimmed to whole
/// lines (unless a single line fills it).
pub fn log_chunk(bytes: &[u8], start: u64, size: u64, offset: Option<u64>) -> LogChunk {
    let mut begin = 0;
    if offset.is_none() && start > 0 {
        // The tail starts mid-line: skip to the next whole line.
        begin = bytes.iter().position(|&b| b == b'\n').map_or(0, |i| i + 1);
    }
    let mut end = bytes.len();
    if start + (bytes.len() as u64) < size {
        // More follows: stop after the last whole line (unless a single line fills the chunk).
        if let Some(i) = bytes[begin..].iter().rposition(|&b| b == b'\n') {
            end = begin + i + 1;
        }
    }
    LogChunk {
        content: String::from_utf8_lossy(&bytes[begin..end]).into_owned(),
        offset: start + begin as u64,
        next_offset: start + end as u64,
        size,
    }
}

fn routes() -> &'static Mutex<HashMap<u64, TaskLog>> {
    static ROUTES: OnceLock<Mutex<HashMap<u64, TaskLog>>> = OnceLock::new();
    ROUTES.get_or_init(Default::default)
}

/// A registered try log; unregistered when dropped.
#[derive(Debug)]
pub struct Route {
    id: u64,
}

impl Route {
    /// The id to put in the try span's `try_log` field.
    pub fn id(&self) -> u64 {
        self.id
    }
}

impl Drop for Route {
    fn drop(&mut self) {
        routes()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
    }
}

/// Registers `log` so events in a span with `try_log = route.id()` reach it.
pub fn route(log: TaskLog) -> Route {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let id = NEXT.fetch_add(1, Ordering::Relaxed);
    routes()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(id, log);
    Route { id }
}

/// The layer that appends events inside try spans to the try's log file.
#[derive(Debug, Default)]
pub struct TryLogLayer;

struct RouteId(u64);

impl Visit for RouteId {
    fn record_u64(&mut self, field: &Field, value: u64) {
        if field.name() == "try_log" {
            self.0 = value;
        }
    }
    fn record_debug(&mut self, _: &Field, _: &dyn std::fmt::Debug) {}
}

struct Line(String);

impl Visit for Line {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.0, "{value:?} ");
        } else {
            let _ = write!(self.0, "{}={value:?} ", field.name());
        }
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            let _ = write!(self.0, "{value} ");
        } else {
            let _ = write!(self.0, "{}={value:?} ", field.name());
        }
    }
}

impl<S> Layer<S> for TryLogLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut route = RouteId(0);
        attrs.record(&mut route);
        if route.0 == 0 {
            return;
        }
        let log = routes()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&route.0)
            .cloned();
        if let (Some(log), Some(span)) = (log, ctx.span(id)) {
            span.extensions_mut().insert(log);
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let Some(scope) = ctx.event_scope(event) else {
            return;
        };
        for span in scope {
            if let Some(log) = span.extensions().get::<TaskLog>() {
                let mut line = Line(String::new());
                event.record(&mut line);
                let stream = if *event.metadata().level() <= Level::WARN {
                    LogStream::Warn
                } else {
                    LogStream::Info
                };
                log.line(stream, line.0.trim_end());
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt;

    #[test]
    fn events_inside_a_try_span_reach_its_log_and_others_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("1.log");
        let route = route(TaskLog::to_file(&path));
        let subscriber = tracing_subscriber::registry().with(TryLogLayer);
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!("outside any try");
            let span = tracing::info_span!("try", task_id = "extract", try_log = route.id());
            span.in_scope(|| {
                tracing::info!(rows = 42_u64, table = "crm", "extracted");
                let inner = tracing::debug_span!("query");
                inner.in_scope(|| tracing::warn!("slow query"));
            });
        });
        drop(route);
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(
            lines[0].ends_with("INFO  extracted rows=42 table=\"crm\""),
            "{text}"
        );
        assert!(lines[1].ends_with("WARN  slow query"), "{text}");
        assert!(
            routes().lock().unwrap().is_empty(),
            "dropping the route unregisters it"
        );
    }
}
