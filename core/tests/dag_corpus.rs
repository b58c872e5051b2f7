//! The DAG fixture corpus: every invalid file produces the errors it declares, every valid
//! file validates (the shipped `dags/` are checked by the binary's `tests/shipped_dags.rs`).
//!
//! Each invalid file starts with one or more `# expect: <substring>` lines; each substring
//! must appear in one reported error line (`<file>: <task or ->: <message>`), and the file
//! must report no other errors than those expected, so an unrelated mistake in a fixture
//! cannot hide behind the one it is about.

use std::path::{Path, PathBuf};

use sluice_core::dag::{parse_dag, DagBag};

fn files(dir: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_invalid_fixture_reports_exactly_its_expected_errors() {
    let registry = sluice_operators::basic();
    let invalid = files("tests/fixtures/dags/invalid");
    assert!(
        invalid.len() >= 20,
        "the corpus has {} invalid files",
        invalid.len()
    );
    let mut failures = Vec::new();
    for path in invalid {
        let text = std::fs::read_to_string(&path).unwrap();
        let expected: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# expect:"))
            .map(str::trim)
            .collect();
        assert!(
            !expected.is_empty(),
            "{} has no `# expect:` line",
            path.display()
        );
        let errors: Vec<String> = match parse_dag(&path, &text, &registry) {
            Ok(_) => {
                failures.push(format!(
                    "{}: validated, expected errors {expected:?}",
                    path.display()
                ));
                continue;
            }
            Err(errors) => errors.iter().map(ToString::to_string).collect(),
        };
        for e in &errors {
            assert!(
                e.starts_with(&format!("{}: ", path.display())),
                "error does not name the file: {e}"
            );
        }
        for want in &expected {
            if !errors.iter().any(|e| e.contains(want)) {
                failures.push(format!(
                    "{}: no error contains {want:?}; got {errors:#?}",
                    path.display()
                ));
            }
        }
        if errors.len() != expected.len() {
            failures.push(format!(
                "{}: expected {} error(s), got {errors:#?}",
                path.display(),
                expected.len()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The shipped DAGs (which use the ETL operators) are checked by the binary's tests.
#[test]
fn every_valid_fixture_validates() {
    let registry = sluice_operators::basic();
    let dir = "tests/fixtures/dags/valid";
    let folder = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let bag = DagBag::load(&folder, &registry);
    let errors: Vec<String> = bag.errors.iter().map(ToString::to_string).collect();
    assert!(errors.is_empty(), "{dir}: {errors:#?}");
    assert!(!bag.dags.is_empty(), "{dir} has no DAGs");
    assert_eq!(bag.dags.len(), bag.files, "{dir}: every file is one DAG");
}
