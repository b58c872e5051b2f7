//! Try logs on shared storage: shipped while a try runs and at its end, read from this
//! machine's folder when the try ran here and from shared storage otherwise.
//!
//! Effects: a log object is the whole file as it was when shipped, replaced by each later
//! shipment (a log only grows), so a retried or repeated upload is harmless. The last shipment
//! happens before the try's end is recorded: a finished try's log is complete in shared
//! storage. A failed shipment loses nothing: the file stays on the machine that ran the try
//! and the next shipment sends it whole.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use object_store::ObjectStoreExt;
use tokio_util::sync::CancellationToken;

use super::{Places, Storage, StorageError};
use crate::store::TaskKey;
use crate::trylog::{self, LogChunk};

/// The area of the shared storage that holds try logs.
pub const AREA: &str = "logs";

/// How often a running try's log is shipped (when it grew).
pub const SHIP_EVERY: Duration = Duration::from_secs(10);

fn relative(key: &TaskKey, try_number: u32) -> String {
    format!(
        "{}/{}/{}/{try_number}.log",
        key.dag_id, key.run_id, key.task_id
    )
}

impl Storage {
    /// Uploads the try's log file as it is now (nothing when the try wrote no log).
    pub async fn ship_log(
        &self,
        logs_dir: &std::path::Path,
        key: &TaskKey,
        try_number: u32,
    ) -> Result<(), StorageError> {
        let local = trylog::try_log_path(logs_dir, key, try_number);
        if tokio::fs::metadata(&local).await.is_err() {
            return Ok(());
        }
        let Some(object) = self.object(AREA, &relative(key, try_number)) else {
            return Ok(());
        };
        self.upload(&local, &object).await.map(|_| ())
    }

    /// At most `limit` bytes of the shipped log (see [`trylog::read_try_log_range`]), or
    /// `None` when no log of the try was shipped.
    async fn read_log_range(
        &self,
        key: &TaskKey,
        try_number: u32,
        offset: Option<u64>,
        limit: u64,
    ) -> Result<Option<LogChunk>, StorageError> {
        let Some(object) = self.object(AREA, &relative(key, try_number)) else {
            return Ok(None);
        };
        let meta = match self.store.head(&object).await {
            Ok(meta) => meta,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(self.failed(&object, e)),
        };
        let window = trylog::log_window(meta.size, offset, limit);
        let bytes = if window.is_empty() {
            Default::default()
        } else {
            self.store
                .get_range(&object, window.clone())
                .await
                .map_err(|e| self.failed(&object, e))?
        };
        Ok(Some(trylog::log_chunk(
            &bytes,
            window.start,
            meta.size,
            offset,
        )))
    }
}

/// Runs `work` (a try) while shipping its log every [`SHIP_EVERY`] when it grew, then ships it
/// once more after `work` ends, before returning `work`'s output. Without shared storage, just
/// runs `work`.
pub async fn shipping<F: Future>(
    shared: Option<Arc<Storage>>,
    logs_dir: PathBuf,
    key: TaskKey,
    try_number: u32,
    work: F,
) -> F::Output {
    let Some(storage) = shared else {
        return work.await;
    };
    let stop = CancellationToken::new();
    let periodic = {
        let (storage, logs_dir, key, stop) =
            (storage.clone(), logs_dir.clone(), key.clone(), stop.clone());
        tokio::spawn(async move {
            let path = trylog::try_log_path(&logs_dir, &key, try_number);
            let mut shipped = 0;
            let mut every = tokio::time::interval(SHIP_EVERY);
            every.tick().await;
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = every.tick() => {}
                }
                let size = tokio::fs::metadata(&path).await.map_or(0, |m| m.len());
                if size == shipped {
                    continue;
                }
                // Not interrupted by `stop`: the final shipment waits for this one, so an
                // older copy never lands after it.
                match storage.ship_log(&logs_dir, &key, try_number).await {
                    Ok(()) => shipped = size,
                    Err(error) => {
                        tracing::warn!(task = %key, try_number, %error, "could not ship the try's log; it stays on this machine")
                    }
                }
            }
        })
    };
    let output = work.await;
    stop.cancel();
    let _ = periodic.await;
    if let Err(error) = storage.ship_log(&logs_dir, &key, try_number).await {
        tracing::warn!(task = %key, try_number, %error, "could not ship the try's log; it stays on this machine");
    }
    output
}

/// At most `limit` bytes of a try's log, whole lines only (see
/// [`trylog::read_try_log_range`]): from this machine's folder when the try ran here, else
/// from shared storage.
pub async fn read_range(
    places: &Places,
    key: &TaskKey,
    try_number: u32,
    offset: Option<u64>,
    limit: u64,
) -> Result<LogChunk, StorageError> {
    let local = trylog::try_log_path(&places.logs, key, try_number);
    let here = tokio::fs::metadata(&local).await.is_ok();
    if let (false, Some(shared)) = (here, &places.shared) {
        if let Some(chunk) = shared
            .read_log_range(key, try_number, offset, limit)
            .await?
        {
            return Ok(chunk);
        }
    }
    let (logs, key2) = (places.logs.clone(), key.clone());
    tokio::task::spawn_blocking(move || {
        trylog::read_try_log_range(&logs, &key2, try_number, offset, limit)
    })
    .await
    .map_err(|e| StorageError::local(&local, std::io::Error::other(e)))?
    .map_err(|e| StorageError::local(&local, e))
}
