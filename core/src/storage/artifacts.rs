//! Artifacts on shared storage: staged and cached in this machine's artifacts folder,
//! uploaded when committed, downloaded when another machine reads them.
//!
//! Effects: an artifact is one object per try (`<task>.try<N>.<ext>`), uploaded whole or not
//! at all before the try's output names it. A retry of the upload rewrites the same bytes under
//! the same name; a re-run's tries have new numbers and so new objects; a try that dies
//! mid-upload leaves no object (an unfinished multipart upload is aborted, or, after a crash,
//! left for the bucket's lifecycle rule to expire). A zombie try's late commit writes its own
//! object, never the one a newer try's output names, and a commit removes the objects of the
//! task's earlier tries.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use object_store::ObjectStoreExt;
use sluice_operator_api::artifact::ArtifactError;
use sluice_operator_api::{
    is_earlier_try, ArtifactKey, ArtifactRef, ArtifactStore, LocalArtifactStore,
};

use super::{Storage, StorageError};

/// The area of the shared storage that holds artifacts.
pub const AREA: &str = "artifacts";

/// Artifacts on [`Storage`], with this machine's artifacts folder as staging area and cache.
#[derive(Debug, Clone)]
pub struct SharedArtifactStore {
    storage: Arc<Storage>,
    cache_root: PathBuf,
    cache: LocalArtifactStore,
}

impl SharedArtifactStore {
    /// Artifacts on `storage`, staged and cached under `cache_root`.
    pub fn new(storage: Arc<Storage>, cache_root: impl Into<PathBuf>) -> Self {
        let cache_root = cache_root.into();
        Self {
            storage,
            cache: LocalArtifactStore::new(&cache_root),
            cache_root,
        }
    }

    /// The ETag of the object a cached file was downloaded or uploaded as.
    fn tag_path(cached: &Path) -> PathBuf {
        let mut name = cached.file_name().unwrap_or_default().to_os_string();
        name.push(".etag");
        cached.with_file_name(name)
    }

    async fn remember_tag(cached: &Path, e_tag: Option<&str>) {
        let tag_file = Self::tag_path(cached);
        match e_tag {
            Some(tag) => {
                let _ = tokio::fs::write(&tag_file, tag).await;
            }
            None => {
                let _ = tokio::fs::remove_file(&tag_file).await;
            }
        }
    }

    /// Removes the objects of the task's earlier tries (best effort, like the local store).
    async fn remove_earlier_tries(&self, key: &ArtifactKey) {
        let run = format!("{}/{}", key.dag_id, key.run_id);
        let listed = match self.storage.list(AREA, &run).await {
            Ok(listed) => listed,
            Err(error) => {
                tracing::warn!(%error, "could not list the run's artifacts to remove earlier tries'");
                return;
            }
        };
        for meta in listed {
            let earlier = meta
                .location
                .filename()
                .is_some_and(|name| is_earlier_try(name, key));
            if earlier {
                if let Err(error) = self.storage.store.delete(&meta.location).await {
                    tracing::warn!(%error, object = %meta.location, "could not remove an earlier try's artifact");
                }
            }
        }
    }
}

fn artifact_error(location: &str, error: StorageError) -> ArtifactError {
    ArtifactError {
        location: location.to_string(),
        source: std::io::Error::other(error),
    }
}

#[async_trait]
impl ArtifactStore for SharedArtifactStore {
    async fn staging_path(&self, key: &ArtifactKey) -> Result<PathBuf, ArtifactError> {
        self.cache.staging_path(key).await
    }

    async fn commit(
        &self,
        key: &ArtifactKey,
        staged: &Path,
        rows: Option<u64>,
    ) -> Result<ArtifactRef, ArtifactError> {
        let relative = LocalArtifactStore::relative_path(key).display().to_string();
        let object = self.storage.object(AREA, &relative).ok_or_else(|| {
            artifact_error(
                &relative,
                StorageError::Config {
                    url: self.storage.url.clone(),
                    reason: "an id is not a plain name".into(),
                },
            )
        })?;
        // Uploaded before the output names it: a try whose upload fails fails, and retries.
        let e_tag = self
            .storage
            .upload(staged, &object)
            .await
            .map_err(|e| artifact_error(&self.storage.shown(&object), e))?;
        // The local copy becomes the cache of what was uploaded.
        let committed = self.cache.commit(key, staged, rows).await?;
        Self::remember_tag(&self.cache_root.join(&committed.location), e_tag.as_deref()).await;
        self.remove_earlier_tries(key).await;
        Ok(committed)
    }

    async fn local_path(&self, artifact: &ArtifactRef) -> Result<PathBuf, ArtifactError> {
        let object = self
            .storage
            .object(AREA, &artifact.location)
            .ok_or_else(|| {
                artifact_error(
                    &artifact.location,
                    StorageError::Config {
                        url: self.storage.url.clone(),
                        reason: "not a location of this store".into(),
                    },
                )
            })?;
        let shown = self.storage.shown(&object);
        let cached = self.cache_root.join(&artifact.location);
        // The object decides: a cached copy is used only while it is the object's version.
        let meta = self
            .storage
            .store
            .head(&object)
            .await
            .map_err(|e| artifact_error(&shown, self.storage.failed(&object, e)))?;
        let cached_tag = tokio::fs::read_to_string(Self::tag_path(&cached))
            .await
            .ok();
        let fresh = match (&meta.e_tag, cached_tag) {
            (Some(tag), Some(cached_tag)) => *tag == cached_tag,
            _ => false,
        };
        if fresh && tokio::fs::metadata(&cached).await.is_ok() {
            return Ok(cached);
        }
        let e_tag = self
            .storage
            .download(&object, &cached)
            .await
            .map_err(|e| artifact_error(&shown, e))?;
        Self::remember_tag(&cached, e_tag.as_deref()).await;
        Ok(cached)
    }
}
