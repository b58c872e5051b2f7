//! DAG versions: what a run executes is the DAG as it was when the run was created (its file
//! and every file its config names), not whatever the folder holds when it starts or resumes.
//!
//! A version is identified by a content hash over all of those files, stored once per hash
//! with the run (`dag_version`), and rebuilt from the store when a run's version is not the
//! one loaded. Operators read the files their config names through the try's context, which
//! serves the version's copy.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sluice_operator_api::Registry;

use super::{parse_dag, Dag, DagError};
use crate::store::DagVersion;

/// The text a DAG version is made of.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DagSource {
    /// The DAG file.
    pub dag: String,
    /// Each file its tasks' config names (SQL, DDL), by the path as written in the config.
    pub files: BTreeMap<String, String>,
}

impl DagSource {
    /// The version's hash: the first 16 hex digits of SHA-256 over the DAG file and each named
    /// file with its path (a DAG without named files hashes as its file alone).
    pub fn hash(&self) -> String {
        let mut digest = Sha256::new();
        digest.update(self.dag.as_bytes());
        for (path, text) in &self.files {
            digest.update(b"\n\0");
            digest.update(path.as_bytes());
            digest.update(b"\0");
            digest.update(text.as_bytes());
        }
        digest
            .finalize()
            .iter()
            .take(8)
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// A unified diff from this version to `other`, file by file (the DAG file first); empty
    /// when they are the same.
    pub fn diff(&self, other: &DagSource, dag_file: &str) -> String {
        let mut out = String::new();
        let mut one = |name: &str, old: &str, new: &str| {
            if old == new {
                return;
            }
            let diff = similar::TextDiff::from_lines(old, new);
            out.push_str(
                &diff
                    .unified_diff()
                    .context_radius(3)
                    .header(&format!("a/{name}"), &format!("b/{name}"))
                    .to_string(),
            );
        };
        // The DAG file by its name: the folder may differ from machine to machine.
        let name = Path::new(dag_file)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| dag_file.to_string());
        one(&name, &self.dag, &other.dag);
        let paths: std::collections::BTreeSet<&String> =
            self.files.keys().chain(other.files.keys()).collect();
        for path in paths {
            one(
                path,
                self.files.get(path).map(String::as_str).unwrap_or(""),
                other.files.get(path).map(String::as_str).unwrap_or(""),
            );
        }
        out
    }
}

impl DagSource {
    /// This version as it may be shown (API, CLI, UI): values under sensitive keys of the
    /// params its DAG file declares and the process's secrets (connection passwords, API
    /// tokens) are masked in every file, as they are in try logs.
    pub fn masked(&self) -> DagSource {
        let mut secrets = sluice_operator_api::secrets::secrets_of_env(std::env::vars());
        secrets.extend(sluice_operator_api::Connections::from_env().secrets());
        if let Some(header) = super::file::parse(&self.dag).header {
            let params = serde_json::Value::Object(header.params.into_iter().collect());
            secrets.extend(sluice_operator_api::secrets::sensitive_values(&params));
        }
        let masker = sluice_operator_api::Masker::new(secrets);
        DagSource {
            dag: masker.mask(&self.dag),
            files: self
                .files
                .iter()
                .map(|(path, text)| (path.clone(), masker.mask(text)))
                .collect(),
        }
    }
}

impl Dag {
    /// This DAG as a version to store with a run.
    pub fn version(&self) -> DagVersion {
        DagVersion {
            dag_id: self.dag_id.clone(),
            hash: self.hash.clone(),
            file: self.file.display().to_string(),
            source: serde_json::to_value(self.source.as_ref()).unwrap_or_default(),
        }
    }

    /// Rebuilds a stored version: its DAG file is parsed again (with today's operators) and
    /// its named files come from the store, not the folder.
    pub fn from_version(version: &DagVersion, registry: &Registry) -> Result<Dag, Vec<DagError>> {
        let file = Path::new(&version.file);
        let source: DagSource = serde_json::from_value(version.source.clone()).map_err(|e| {
            vec![DagError {
                file: file.to_path_buf(),
                task: None,
                message: format!("stored version {} does not read: {e}", version.hash),
            }]
        })?;
        let mut dag = parse_dag(file, &source.dag, registry)?;
        dag.source = Arc::new(source);
        dag.hash = dag.source.hash();
        Ok(dag)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(dag: &str, files: &[(&str, &str)]) -> DagSource {
        DagSource {
            dag: dag.into(),
            files: files
                .iter()
                .map(|(p, t)| (p.to_string(), t.to_string()))
                .collect(),
        }
    }

    #[test]
    fn the_hash_covers_the_dag_file_and_each_named_file_with_its_path() {
        let base = source("dag_id: d\n", &[("q.sql", "SELECT 1")]);
        let hashes = [
            base.hash(),
            source("dag_id: d\n", &[("q.sql", "SELECT 2")]).hash(),
            source("dag_id: d\n", &[("r.sql", "SELECT 1")]).hash(),
            source("dag_id: e\n", &[("q.sql", "SELECT 1")]).hash(),
            source("dag_id: d\n", &[]).hash(),
        ];
        let distinct: std::collections::HashSet<&String> = hashes.iter().collect();
        assert_eq!(distinct.len(), hashes.len(), "{hashes:?}");
        assert_eq!(
            base.hash(),
            base.clone().hash(),
            "the same content, the same hash"
        );
        assert_eq!(hashes[0].len(), 16);
    }

    #[test]
    fn a_shown_version_masks_values_under_sensitive_param_keys() {
        let shown = source(
            "dag_id: d\nparams: {api_key: s3cr3t-value, region: eu}\ntasks: []\n",
            &[("q.sql", "SELECT 's3cr3t-value', 'eu'")],
        )
        .masked();
        assert!(!shown.dag.contains("s3cr3t-value"), "{}", shown.dag);
        assert!(shown.dag.contains("region: eu"), "{}", shown.dag);
        assert!(!shown.files["q.sql"].contains("s3cr3t-value"));
    }

    #[test]
    fn the_diff_names_each_changed_file_and_is_empty_for_the_same_version() {
        let old = source(
            "a: 1\nb: 2\n",
            &[("q.sql", "SELECT 1\n"), ("same.sql", "x\n")],
        );
        let new = source(
            "a: 1\nb: 3\n",
            &[("q.sql", "SELECT 2\n"), ("same.sql", "x\n")],
        );
        let diff = old.diff(&new, "/srv/dags/d.yaml");
        assert!(diff.contains("--- a/d.yaml\n+++ b/d.yaml"), "{diff}");
        assert!(diff.contains("-b: 2\n+b: 3\n"), "{diff}");
        assert!(diff.contains("-SELECT 1\n+SELECT 2\n"), "{diff}");
        assert!(!diff.contains("same.sql"), "{diff}");
        assert_eq!(old.diff(&old, "/srv/dags/d.yaml"), "");
    }
}
