//! Where a run's files live: try logs and artifacts on this machine's disk
//! (`$SLUICE_HOME/logs`, `$SLUICE_HOME/artifacts`) and, when `SLUICE_STORAGE_URL` names one,
//! on shared storage that every machine reads (S3-compatible object storage, or a folder
//! such as a network mount), through the `object_store` crate.
//!
//! With shared storage, the local folders become a cache: a try writes its artifact and log
//! locally, the artifact is uploaded when it is committed and the log while the try runs and
//! at its end; a try on another machine downloads an artifact it reads into its own cache
//! (checked against the object's ETag, so a cached file never outlives its object), and a web
//! server on any machine serves every try's log.
//!
//! Object layout under the URL's prefix (the same as the local folders):
//! `artifacts/<dag>/<run>/<task>.try<N>.<ext>` and `logs/<dag>/<run>/<task>/<try>.log`.

pub mod artifacts;
pub mod logs;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};
use tokio::io::AsyncWriteExt;

use crate::store::RunRef;

pub use artifacts::SharedArtifactStore;

/// Uploads at least this large go in parts (S3's multipart upload); smaller ones in one PUT.
pub const DEFAULT_PART_SIZE: usize = 16 * 1024 * 1024;

/// Shared storage that could not be set up, written or read.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// `SLUICE_STORAGE_URL` does not name storage sluice can use.
    #[error("SLUICE_STORAGE_URL `{url}`: {reason}")]
    Config {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An object could not be written, read, listed or removed.
    #[error("shared storage {location}: {source}")]
    Object {
        /// The object (its URL).
        location: String,
        /// What failed.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A local file could not be written or read.
    #[error("{path}: {source}")]
    Local {
        /// The file.
        path: String,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
}

impl StorageError {
    /// Whether the object does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::Object { source, .. }
            if source.downcast_ref::<object_store::Error>().is_some_and(|e| matches!(e, object_store::Error::NotFound { .. })))
    }

    fn local(path: &Path, source: std::io::Error) -> Self {
        Self::Local {
            path: path.display().to_string(),
            source,
        }
    }
}

/// Shared storage for artifacts and logs (`SLUICE_STORAGE_URL`).
#[derive(Debug, Clone)]
pub struct Storage {
    store: Arc<dyn ObjectStore>,
    /// The URL without credentials, to name objects in messages.
    url: String,
    prefix: ObjectPath,
    part_size: usize,
}

impl Storage {
    /// Storage at `url`:
    /// - `s3://bucket[/prefix]`: S3 or an S3-compatible server, configured by the standard
    ///   AWS variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`,
    ///   `AWS_ENDPOINT_URL` for another server, `AWS_ALLOW_HTTP=true` for plain HTTP);
    /// - `file:///absolute/folder`: a folder, e.g. a network file system every machine mounts.
    pub fn from_url(url: &str) -> Result<Self, StorageError> {
        Self::from_url_with(url, std::env::vars())
    }

    /// Storage at `url`, with the S3 settings taken from `vars` (`AWS_*` names, as in the
    /// environment) rather than from the process environment.
    pub fn from_url_with(
        url: &str,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, StorageError> {
        // A URL with credentials in it is refused, and never shown with them.
        let shown_url = sluice_operator_api::connection::redact_url(url);
        let config = |reason: String| StorageError::Config {
            url: shown_url.clone(),
            reason,
        };
        let parsed = url::Url::parse(url).map_err(|e| config(e.to_string()))?;
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(config(
                "credentials do not belong in the URL: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY".into(),
            ));
        }
        let (store, prefix): (Arc<dyn ObjectStore>, &str) = match parsed.scheme() {
            "s3" => {
                let bucket = parsed
                    .host_str()
                    .filter(|b| !b.is_empty())
                    .ok_or_else(|| config("no bucket: write s3://bucket/prefix".into()))?;
                // What AmazonS3Builder::from_env does, over `vars`.
                let mut builder = object_store::aws::AmazonS3Builder::new();
                for (name, value) in vars {
                    if let Some(key) = name
                        .starts_with("AWS_")
                        .then(|| name.to_ascii_lowercase().parse().ok())
                        .flatten()
                    {
                        builder = builder.with_config(key, value);
                    }
                }
                let store = builder
                    .with_bucket_name(bucket)
                    .build()
                    .map_err(|e| config(e.to_string()))?;
                (Arc::new(store), parsed.path())
            }
            "file" => {
                let folder = parsed
                    .to_file_path()
                    .map_err(|()| config("not an absolute local path".into()))?;
                std::fs::create_dir_all(&folder).map_err(|e| config(e.to_string()))?;
                let store = object_store::local::LocalFileSystem::new_with_prefix(&folder)
                    .map_err(|e| config(e.to_string()))?;
                (Arc::new(store), "")
            }
            other => {
                return Err(config(format!(
                    "unknown scheme `{other}`: use s3://bucket/prefix or file:///folder"
                )))
            }
        };
        let prefix = ObjectPath::parse(prefix.trim_matches('/'))
            .map_err(|e| config(format!("the prefix: {e}")))?;
        let mut shown = parsed.clone();
        shown.set_query(None);
        shown.set_fragment(None);
        Ok(Self {
            store,
            url: shown.to_string().trim_end_matches('/').to_string(),
            prefix,
            part_size: DEFAULT_PART_SIZE,
        })
    }

    /// The same storage, uploading in parts of `bytes` from that size on (S3 needs at
    /// least 5 MiB per part).
    pub fn with_part_size(mut self, bytes: usize) -> Self {
        self.part_size = bytes;
        self
    }

    /// The URL (without credentials or options), for messages.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The object at `area/<relative>` under the prefix; `None` for a relative path that is
    /// not plain names (`..`, empty parts), which is never followed.
    fn object(&self, area: &str, relative: &str) -> Option<ObjectPath> {
        let mut parts: Vec<object_store::path::PathPart<'static>> = self
            .prefix
            .parts()
            .map(|p| p.as_ref().to_string().into())
            .collect();
        parts.push(area.to_string().into());
        for part in relative.split('/') {
            if part.is_empty() || part == "." || part == ".." || part.contains('\\') {
                return None;
            }
            parts.push(part.to_string().into());
        }
        Some(ObjectPath::from_iter(parts))
    }

    fn shown(&self, object: &ObjectPath) -> String {
        let relative = object
            .prefix_match(&self.prefix)
            .map(|parts| {
                parts
                    .map(|p| p.as_ref().to_string())
                    .collect::<Vec<_>>()
                    .join("/")
            })
            .unwrap_or_else(|| object.to_string());
        format!("{}/{relative}", self.url)
    }

    fn failed(
        &self,
        object: &ObjectPath,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> StorageError {
        StorageError::Object {
            location: self.shown(object),
            source: source.into(),
        }
    }

    /// Uploads the file at `local` as `object`, whole or not at all: a single PUT, or a
    /// multipart upload that is only completed once every part is in (and aborted on an
    /// error), so readers never see part of a file. Returns the object's ETag.
    async fn upload(
        &self,
        local: &Path,
        object: &ObjectPath,
    ) -> Result<Option<String>, StorageError> {
        let mut file = tokio::fs::File::open(local)
            .await
            .map_err(|e| StorageError::local(local, e))?;
        let mut writer = object_store::buffered::BufWriter::with_capacity(
            self.store.clone(),
            object.clone(),
            self.part_size,
        );
        if let Err(error) = tokio::io::copy(&mut file, &mut writer).await {
            // Parts already sent are discarded; the object is never created.
            let _ = writer.abort().await;
            return Err(self.failed(object, error));
        }
        // Completes the upload: a single PUT, or the multipart upload's completion, either of
        // which makes the whole object visible at once or not at all.
        writer
            .shutdown()
            .await
            .map_err(|error| self.failed(object, error))?;
        let meta = self
            .store
            .head(object)
            .await
            .map_err(|e| self.failed(object, e))?;
        Ok(meta.e_tag)
    }

    /// Downloads `object` to `local` (through a file of its own, renamed into place, so a
    /// reader of `local` never sees part of it). Returns the object's ETag.
    async fn download(
        &self,
        object: &ObjectPath,
        local: &Path,
    ) -> Result<Option<String>, StorageError> {
        let got = self
            .store
            .get(object)
            .await
            .map_err(|e| self.failed(object, e))?;
        let e_tag = got.meta.e_tag.clone();
        let dir = local.parent().expect("local files have a parent");
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|e| StorageError::local(dir, e))?;
        let mut partial = Partial {
            path: unique_partial(local),
            placed: false,
        };
        let mut file = tokio::fs::File::create(&partial.path)
            .await
            .map_err(|e| StorageError::local(&partial.path, e))?;
        let mut stream = got.into_stream();
        while let Some(bytes) = stream.next().await {
            let bytes = bytes.map_err(|e| self.failed(object, e))?;
            file.write_all(&bytes)
                .await
                .map_err(|e| StorageError::local(&partial.path, e))?;
        }
        file.flush()
            .await
            .map_err(|e| StorageError::local(&partial.path, e))?;
        drop(file);
        tokio::fs::rename(&partial.path, local)
            .await
            .map_err(|e| StorageError::local(local, e))?;
        partial.placed = true;
        Ok(e_tag)
    }

    /// The objects under `area/<relative>/`, with their sizes.
    async fn list(
        &self,
        area: &str,
        relative: &str,
    ) -> Result<Vec<object_store::ObjectMeta>, StorageError> {
        let Some(prefix) = self.object(area, relative) else {
            return Ok(Vec::new());
        };
        self.store
            .list(Some(&prefix))
            .try_collect()
            .await
            .map_err(|e| self.failed(&prefix, e))
    }

    /// Bytes stored under `area/<dag>/<run>/`.
    pub async fn run_bytes(&self, area: &str, run: &RunRef) -> Result<u64, StorageError> {
        let listed = self
            .list(area, &format!("{}/{}", run.dag_id, run.run_id))
            .await?;
        Ok(listed.iter().map(|m| m.size).sum())
    }

    /// Removes everything under `area/<dag>/<run>/`; returns the bytes removed.
    pub async fn remove_run(&self, area: &str, run: &RunRef) -> Result<u64, StorageError> {
        let listed = self
            .list(area, &format!("{}/{}", run.dag_id, run.run_id))
            .await?;
        let mut bytes = 0;
        for meta in listed {
            match self.store.delete(&meta.location).await {
                Ok(()) => bytes += meta.size,
                Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(self.failed(&meta.location, e)),
            }
        }
        Ok(bytes)
    }
}

/// A file being downloaded: removed when dropped (a failed or abandoned download) unless it
/// was renamed into place.
struct Partial {
    path: PathBuf,
    placed: bool,
}

impl Drop for Partial {
    fn drop(&mut self) {
        if !self.placed {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// A name next to `path` no other download uses (two tries on one machine may fetch the same
/// artifact at once).
fn unique_partial(path: &Path) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{}.{n}.partial", std::process::id()));
    path.with_file_name(name)
}

/// Where a run's files live: this machine's folders and, when configured, shared storage.
#[derive(Debug, Clone)]
pub struct Places {
    /// `$SLUICE_HOME/logs`: `<dag>/<run>/<task>/<try>.log`.
    pub logs: PathBuf,
    /// `$SLUICE_HOME/artifacts`: `<dag>/<run>/<task>.try<N>.<ext>` (with shared storage, a
    /// cache of it).
    pub artifacts: PathBuf,
    /// Shared storage (`SLUICE_STORAGE_URL`), when set.
    pub shared: Option<Arc<Storage>>,
}

impl Places {
    /// The places under `settings.home`, and the shared storage the settings name.
    pub fn of(settings: &crate::settings::Settings) -> Result<Self, StorageError> {
        Ok(Self {
            logs: settings.logs_dir(),
            artifacts: settings.artifacts_dir(),
            shared: settings
                .storage_url
                .as_deref()
                .map(Storage::from_url)
                .transpose()?
                .map(Arc::new),
        })
    }

    /// The places under `settings.home`, without shared storage (for tests).
    pub fn local(settings: &crate::settings::Settings) -> Self {
        Self {
            logs: settings.logs_dir(),
            artifacts: settings.artifacts_dir(),
            shared: None,
        }
    }

    fn run_dir(root: &Path, run: &RunRef) -> Option<PathBuf> {
        // Ids become path components: one that is not a plain name is never followed.
        let plain = |s: &str| !s.is_empty() && s != "." && s != ".." && !s.contains(['/', '\\']);
        (plain(&run.dag_id) && plain(&run.run_id)).then(|| root.join(&run.dag_id).join(&run.run_id))
    }

    /// The folder of the run's try logs on this machine.
    pub fn run_logs(&self, run: &RunRef) -> Option<PathBuf> {
        Self::run_dir(&self.logs, run)
    }

    /// The folder of the run's artifacts on this machine.
    pub fn run_artifacts(&self, run: &RunRef) -> Option<PathBuf> {
        Self::run_dir(&self.artifacts, run)
    }
}
