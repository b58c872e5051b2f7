//! Artifacts: a task's table output, stored as a file and passed downstream by reference.
//!
//! Large data moves by reference, small data by value: an [`ArtifactRef`] is a few bytes in
//! the metadata store, the table itself lives in an [`ArtifactStore`]. Writes are atomic:
//! an operator writes to [`ArtifactStore::staging_path`] and [`ArtifactStore::commit`]s,
//! so a failed try never leaves a half-written artifact under the final name.

use std::fmt;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

/// Identifies where one task's artifact belongs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArtifactKey {
    /// The DAG id.
    pub dag_id: String,
    /// The run id.
    pub run_id: String,
    /// The task id.
    pub task_id: String,
    /// The try writing it: each try commits its own file, so a try that outlived its
    /// driver (a zombie the fence refuses) never replaces what a newer try committed.
    pub try_number: u32,
    /// File extension naming the format (`arrow`, `parquet`).
    pub extension: String,
}

/// A reference to a committed artifact, stored in the task's output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ArtifactRef {
    /// Store-specific location (a path relative to the store's root for the local store).
    pub location: String,
    /// Format of the file (`arrow`, `parquet`).
    pub format: String,
    /// Number of rows, when the writer knows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<u64>,
}

/// An artifact that could not be written or read.
#[derive(Debug, thiserror::Error)]
#[error("artifact {location}: {source}")]
pub struct ArtifactError {
    /// Which artifact.
    pub location: String,
    /// The underlying I/O error.
    #[source]
    pub source: std::io::Error,
}

/// Where artifacts live: [`LocalArtifactStore`] (a folder), or shared storage when tries run
/// on several machines (the core's `SharedArtifactStore`, over object storage).
#[async_trait]
pub trait ArtifactStore: Send + Sync + fmt::Debug {
    /// A local path the operator may write the artifact to before committing it.
    async fn staging_path(&self, key: &ArtifactKey) -> Result<PathBuf, ArtifactError>;
    /// Makes the staged file visible under its final name and returns its reference.
    async fn commit(
        &self,
        key: &ArtifactKey,
        staged: &Path,
        rows: Option<u64>,
    ) -> Result<ArtifactRef, ArtifactError>;
    /// A local path from which the artifact can be read.
    async fn local_path(&self, artifact: &ArtifactRef) -> Result<PathBuf, ArtifactError>;
}

/// Artifacts as files under one folder: `<root>/<dag>/<run>/<task>.try<N>.<ext>`.
#[derive(Debug, Clone)]
pub struct LocalArtifactStore {
    root: PathBuf,
}

impl LocalArtifactStore {
    /// A store rooted at `root` (created on first write).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    fn relative(key: &ArtifactKey) -> PathBuf {
        PathBuf::from(&key.dag_id).join(&key.run_id).join(format!(
            "{}.try{}.{}",
            key.task_id, key.try_number, key.extension
        ))
    }

    /// Removes the committed files of the task's earlier tries (a failed try's table, a
    /// cleared attempt's): the task's output only ever names the newest one.
    async fn remove_earlier_tries(&self, key: &ArtifactKey) {
        let dir = self.root.join(&key.dag_id).join(&key.run_id);
        let Ok(mut entries) = tokio::fs::read_dir(&dir).await else {
            return;
        };
        while let Ok(Some(entry)) = entries.next_entry().await {
            if is_earlier_try(&entry.file_name().to_string_lossy(), key) {
                let _ = tokio::fs::remove_file(entry.path()).await;
            }
        }
    }

    /// Where `key`'s artifact goes, relative to a store's root: `<dag>/<run>/<task>.try<N>.<ext>`.
    pub fn relative_path(key: &ArtifactKey) -> PathBuf {
        Self::relative(key)
    }
}

/// Whether `file_name` (in the folder of `key`'s run) is the artifact of an earlier try of
/// `key`'s task, in `key`'s format.
pub fn is_earlier_try(file_name: &str, key: &ArtifactKey) -> bool {
    file_name
        .strip_prefix(&format!("{}.try", key.task_id))
        .and_then(|rest| rest.strip_suffix(&format!(".{}", key.extension)))
        .and_then(|n| n.parse::<u32>().ok())
        .is_some_and(|n| n < key.try_number)
}

fn io_error(location: &Path, source: std::io::Error) -> ArtifactError {
    ArtifactError {
        location: location.display().to_string(),
        source,
    }
}

#[async_trait]
impl ArtifactStore for LocalArtifactStore {
    async fn staging_path(&self, key: &ArtifactKey) -> Result<PathBuf, ArtifactError> {
        let final_path = self.root.join(Self::relative(key));
        let dir = final_path.parent().expect("artifact paths have a parent");
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|e| io_error(dir, e))?;
        Ok(final_path.with_extension(format!("{}.partial", key.extension)))
    }

    async fn commit(
        &self,
        key: &ArtifactKey,
        staged: &Path,
        rows: Option<u64>,
    ) -> Result<ArtifactRef, ArtifactError> {
        let relative = Self::relative(key);
        let final_path = self.root.join(&relative);
        // rename is atomic within one file system: readers see the old file or the new one.
        tokio::fs::rename(staged, &final_path)
            .await
            .map_err(|e| io_error(&final_path, e))?;
        self.remove_earlier_tries(key).await;
        Ok(ArtifactRef {
            location: relative.display().to_string(),
            format: key.extension.clone(),
            rows,
        })
    }

    async fn local_path(&self, artifact: &ArtifactRef) -> Result<PathBuf, ArtifactError> {
        let path = self.root.join(&artifact.location);
        match tokio::fs::metadata(&path).await {
            Ok(_) => Ok(path),
            Err(e) => Err(io_error(&path, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn staged_file_is_invisible_until_committed() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalArtifactStore::new(dir.path());
        let key = ArtifactKey {
            dag_id: "d".into(),
            run_id: "manual__2026-01-01T00:00:00+00:00".into(),
            task_id: "t".into(),
            try_number: 2,
            extension: "arrow".into(),
        };
        let staged = store.staging_path(&key).await.unwrap();
        tokio::fs::write(&staged, b"table").await.unwrap();
        let would_be = ArtifactRef {
            location: LocalArtifactStore::relative(&key).display().to_string(),
            format: "arrow".into(),
            rows: None,
        };
        assert!(
            store.local_path(&would_be).await.is_err(),
            "visible before commit"
        );
        let committed = store.commit(&key, &staged, Some(1)).await.unwrap();
        let path = store.local_path(&committed).await.unwrap();
        assert_eq!(std::fs::read(path).unwrap(), b"table");
        assert_eq!(committed.rows, Some(1));
        assert!(!staged.exists());
    }

    #[tokio::test]
    async fn a_late_commit_of_an_earlier_try_never_replaces_a_newer_tries_table() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalArtifactStore::new(dir.path());
        let key = |try_number| ArtifactKey {
            dag_id: "d".into(),
            run_id: "r".into(),
            task_id: "t".into(),
            try_number,
            extension: "arrow".into(),
        };
        // Try 1 stalls (its driver lost the run) while try 2 commits its table.
        let zombie = store.staging_path(&key(1)).await.unwrap();
        tokio::fs::write(&zombie, b"stale").await.unwrap();
        let newer = store.staging_path(&key(2)).await.unwrap();
        tokio::fs::write(&newer, b"fresh").await.unwrap();
        let committed = store.commit(&key(2), &newer, Some(1)).await.unwrap();
        // The zombie wakes up and commits: its own file, not the one try 2's output names.
        store.commit(&key(1), &zombie, Some(1)).await.unwrap();
        let path = store.local_path(&committed).await.unwrap();
        assert_eq!(std::fs::read(path).unwrap(), b"fresh");
        // A later try's commit removes the earlier tries' files.
        let third = store.staging_path(&key(3)).await.unwrap();
        tokio::fs::write(&third, b"third").await.unwrap();
        store.commit(&key(3), &third, Some(1)).await.unwrap();
        let mut left: Vec<String> = std::fs::read_dir(dir.path().join("d/r"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["t.try3.arrow"]);
    }
}
