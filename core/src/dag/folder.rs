//! A folder of DAG files, loaded together: one broken file never hides the others.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sluice_operator_api::{template, Registry};

use super::{parse_dag, Dag, DagError};

/// The DAGs of a folder, and the errors of the files that did not validate.
#[derive(Debug, Default, Clone)]
pub struct DagBag {
    /// The folder.
    pub folder: PathBuf,
    /// Valid DAGs by id.
    pub dags: BTreeMap<String, Arc<Dag>>,
    /// Every error of every invalid file, in file order.
    pub errors: Vec<DagError>,
    /// Number of DAG files read.
    pub files: usize,
}

/// Every `.yaml`/`.yml` file under `dir`, sorted, skipping hidden entries.
fn dag_files(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name();
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            dag_files(&path, out)?;
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        ) {
            out.push(path);
        }
    }
    Ok(())
}

/// Checks the files a DAG's tasks name (each operator says which of its fields do, see
/// `OperatorConfig::files`): they exist next to the DAG file and their templates compile, so
/// `dags validate` catches what a run would.
///
/// Their text becomes part of the DAG's version: a run executes the SQL it was created with.
fn check_files(mut dag: Dag, file: &Path) -> Result<Dag, Vec<DagError>> {
    let dir = file.parent().unwrap_or(Path::new("."));
    let mut errors = Vec::new();
    let mut named = BTreeMap::new();
    for task in &dag.tasks {
        for named_file in &task.files {
            let path = dir.join(&named_file.path);
            let error = |message: String| DagError {
                file: file.to_path_buf(),
                task: Some(task.id.clone()),
                message: format!("config.{}: {message}", named_file.field),
            };
            match read_bounded(&path) {
                Ok(text) => {
                    if let Err(e) = template::check(&text) {
                        errors.push(error(format!("{}: {}", path.display(), e.message)));
                    }
                    named.insert(named_file.path.clone(), text);
                }
                Err(e) => errors.push(error(format!("cannot read {}: {e}", path.display()))),
            }
        }
    }
    if errors.is_empty() {
        if !named.is_empty() {
            let mut source = dag.source.as_ref().clone();
            source.files = named;
            dag.hash = source.hash();
            dag.source = Arc::new(source);
        }
        Ok(dag)
    } else {
        Err(errors)
    }
}

/// What a folder's file looked like when it was read.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct FileStamp {
    /// The file.
    pub path: PathBuf,
    /// Its modification time, where the file system keeps one.
    pub modified: Option<std::time::SystemTime>,
    /// Its size in bytes.
    pub len: u64,
}

/// Names, sizes and modification times of a folder's files: a cheap change detector.
pub type Fingerprint = Vec<FileStamp>;

impl DagBag {
    /// The folder's current [`Fingerprint`]; a DAG bag loaded under another one is stale.
    pub fn fingerprint(folder: &Path) -> Fingerprint {
        fn walk(dir: &Path, out: &mut Fingerprint) {
            let Ok(entries) = std::fs::read_dir(dir) else {
                return;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                let Ok(meta) = entry.metadata() else { continue };
                if meta.is_dir() {
                    walk(&path, out);
                } else {
                    out.push(FileStamp {
                        path,
                        modified: meta.modified().ok(),
                        len: meta.len(),
                    });
                }
            }
        }
        let mut out = Vec::new();
        walk(folder, &mut out);
        out.sort();
        out
    }

    /// Reads and validates every DAG file under `folder`.
    pub fn load(folder: &Path, registry: &Registry) -> Self {
        let mut bag = DagBag {
            folder: folder.to_path_buf(),
            ..Default::default()
        };
        let mut files = Vec::new();
        if let Err(e) = dag_files(folder, &mut files) {
            bag.errors.push(DagError {
                file: folder.to_path_buf(),
                task: None,
                message: format!("cannot read the DAG folder: {e}"),
            });
            return bag;
        }
        let mut defined_in: BTreeMap<String, PathBuf> = BTreeMap::new();
        for file in files {
            bag.files += 1;
            let text = match read_bounded(&file) {
                Ok(text) => text,
                Err(e) => {
                    bag.errors.push(DagError {
                        file,
                        task: None,
                        message: format!("cannot read the file: {e}"),
                    });
                    continue;
                }
            };
            match parse_dag(&file, &text, registry).and_then(|dag| check_files(dag, &file)) {
                Ok(dag) => {
                    if let Some(first) = defined_in.get(&dag.dag_id) {
                        bag.errors.push(DagError {
                            file: file.clone(),
                            task: None,
                            message: format!(
                                "dag_id: `{}` is already defined in {}",
                                dag.dag_id,
                                first.display()
                            ),
                        });
                        continue;
                    }
                    defined_in.insert(dag.dag_id.clone(), file);
                    bag.dags.insert(dag.dag_id.clone(), Arc::new(dag));
                }
                Err(errors) => bag.errors.extend(errors),
            }
        }
        bag
    }

    /// The DAG with this id.
    pub fn get(&self, dag_id: &str) -> Option<&Arc<Dag>> {
        self.dags.get(dag_id)
    }

    /// Files with errors, each once.
    pub fn broken_files(&self) -> Vec<&Path> {
        let mut files: Vec<&Path> = self.errors.iter().map(|e| e.file.as_path()).collect();
        files.dedup();
        files
    }
}

/// The largest DAG file or SQL file read (a DAG is a page of YAML; a 100 MB file is a mistake
/// or an attack, and is reported instead of parsed).
pub const MAX_FILE_BYTES: u64 = 1 << 20;

/// Reads a text file of at most [`MAX_FILE_BYTES`].
fn read_bounded(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(path)?
        .take(MAX_FILE_BYTES + 1)
        .read_to_string(&mut text)?;
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(std::io::Error::other(format!(
            "the file is larger than {} KiB",
            MAX_FILE_BYTES / 1024
        )));
    }
    Ok(text)
}
