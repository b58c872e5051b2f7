//! The DAGs that ship in `dags/` validate with the binary's operators, and each names the
//! files its operators read.

use std::path::Path;

use sluice_core::dag::DagBag;

#[test]
fn every_shipped_dag_validates() {
    let folder = Path::new(env!("CARGO_MANIFEST_DIR")).join("dags");
    let bag = DagBag::load(&folder, &sluice_operators::registry());
    let errors: Vec<String> = bag.errors.iter().map(ToString::to_string).collect();
    assert!(errors.is_empty(), "{errors:#?}");
    assert_eq!(bag.dags.len(), bag.files, "every file is one DAG");
    let stats = bag.get("prosthesis_stats").expect("the reference DAG");
    let mut files: Vec<String> = stats
        .tasks
        .iter()
        .flat_map(|t| {
            t.files
                .iter()
                .map(move |f| format!("{}.{}={}", t.id, f.field, f.path))
        })
        .collect();
    files.sort();
    assert_eq!(
        files,
        [
            "compute_metrics.sql=sql/compute_metrics.sql",
            "extract_crm.sql=sql/crm_prostheses.sql",
            "extract_telemetry.sql=sql/telemetry_by_chip.sql",
            "load_quarantine.ddl=sql/etl_quarantine.ch.sql",
            "load_stats.ddl=sql/user_prosthesis_stats.ch.sql",
            "quarantine.sql=sql/quarantine.sql",
        ]
    );
}

#[test]
fn a_missing_sql_file_is_named_with_its_task_and_field() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("d.yaml"),
        "dag_id: d\ntasks:\n  - id: q\n    operator: polars_sql\n    config: { sql: sql/missing.sql }\n  - id: inline\n    operator: polars_sql\n    config: { sql: \"SELECT 'x.sql' AS f\" }\n",
    )
    .unwrap();
    let bag = DagBag::load(dir.path(), &sluice_operators::registry());
    let errors: Vec<String> = bag.errors.iter().map(ToString::to_string).collect();
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(
        errors[0].contains("d.yaml: q: config.sql: cannot read ")
            && errors[0].contains("sql/missing.sql"),
        "{errors:#?}"
    );
}
