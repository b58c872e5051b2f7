//! `sluice db clean` and disk usage, through the binary: what the dry run lists is exactly
//! what the clean removes, and nothing that is queued, running or recent.

use std::path::PathBuf;
use std::process::{Command, Output};

struct Home {
    dir: tempfile::TempDir,
}

impl Home {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("dags")).unwrap();
        Self { dir }
    }

    fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    fn sluice(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(args)
            .env("SLUICE_HOME", self.home())
            .env("SLUICE_DAGS_FOLDER", self.dir.path().join("dags"))
            .env_remove("SLUICE_DATABASE_URL")
            .env_remove("SLUICE_LOG")
            .output()
            .unwrap()
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.sluice(args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn test_run(&self, dag: &str, date: &str) {
        let out = self.sluice(&["dags", "test", dag, "--logical-date", date]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn run_ids(runs: &serde_json::Value) -> Vec<String> {
    let mut ids: Vec<String> = runs
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            format!(
                "{}/{}",
                r["dag_id"].as_str().unwrap(),
                r["run_id"].as_str().unwrap()
            )
        })
        .collect();
    ids.sort();
    ids
}

#[test]
fn db_clean_removes_exactly_what_its_dry_run_lists() {
    let h = Home::new();
    for dag in ["etl", "other"] {
        std::fs::write(
            h.dir.path().join(format!("dags/{dag}.yaml")),
            format!("dag_id: {dag}\ntasks:\n  - {{id: say, operator: shell, config: {{command: 'echo a line from {dag}'}}}}\n"),
        )
        .unwrap();
    }
    h.test_run("etl", "2026-11-01T00:00:00Z");
    h.test_run("etl", "2026-11-02T00:00:00Z");
    h.test_run("other", "2026-11-01T00:00:00Z");
    // An artifact of an old run, as an extract leaves one.
    let artifact = h
        .home()
        .join("artifacts/etl/manual__2026-11-01T00:00:00+00:00/extract.try1.arrow");
    std::fs::create_dir_all(artifact.parent().unwrap()).unwrap();
    std::fs::write(&artifact, vec![7u8; 4096]).unwrap();
    let shown = h.json(&["dags", "show", "etl", "--json"]);
    assert_eq!(shown["disk_usage"]["artifact_bytes"], 4096);
    assert!(shown["disk_usage"]["log_bytes"].as_u64().unwrap() > 0);

    std::thread::sleep(std::time::Duration::from_millis(2500));
    // Recent: a finished run, and a queued one (no scheduler runs here).
    h.test_run("etl", "2026-11-03T00:00:00Z");
    let out = h.sluice(&[
        "dags",
        "trigger",
        "etl",
        "--logical-date",
        "2026-11-04T00:00:00Z",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let plan = h.json(&["db", "clean", "--older-than", "2s", "--dry-run", "--json"]);
    let planned = run_ids(&plan["runs"]);
    assert_eq!(
        planned,
        [
            "etl/manual__2026-11-01T00:00:00+00:00",
            "etl/manual__2026-11-02T00:00:00+00:00",
            "other/manual__2026-11-01T00:00:00+00:00",
        ]
    );
    let planned_bytes: u64 = plan["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["log_bytes"].as_u64().unwrap() + r["artifact_bytes"].as_u64().unwrap())
        .sum();
    // The dry run removed nothing.
    assert_eq!(run_ids(&h.json(&["runs", "list", "--json"])).len(), 5);
    assert!(artifact.exists());

    // --dag narrows the plan.
    let only_other = h.json(&[
        "db",
        "clean",
        "--older-than",
        "2s",
        "--dry-run",
        "--json",
        "--dag",
        "other",
    ]);
    assert_eq!(
        run_ids(&only_other["runs"]),
        ["other/manual__2026-11-01T00:00:00+00:00"]
    );

    let report = h.json(&["db", "clean", "--older-than", "2s", "--json"]);
    assert_eq!(
        run_ids(&report["runs"]),
        planned,
        "the clean removed what the dry run listed"
    );
    assert_eq!(report["bytes"], planned_bytes);
    assert_eq!(report["kept"], 0);
    assert_eq!(
        run_ids(&h.json(&["runs", "list", "--json"])),
        [
            "etl/manual__2026-11-03T00:00:00+00:00",
            "etl/manual__2026-11-04T00:00:00+00:00",
        ]
    );
    assert!(!artifact.exists());
    assert!(!h
        .home()
        .join("logs/etl/manual__2026-11-01T00:00:00+00:00")
        .exists());
    assert!(!h
        .home()
        .join("logs/other")
        .join("manual__2026-11-01T00:00:00+00:00")
        .exists());
    assert!(h
        .home()
        .join("logs/etl/manual__2026-11-03T00:00:00+00:00")
        .exists());
    let gone = h.sluice(&[
        "runs",
        "show",
        "manual__2026-11-01T00:00:00+00:00",
        "--dag",
        "etl",
    ]);
    assert!(!gone.status.success(), "its rows and history are gone");
    // Nothing left to clean.
    let again = h.json(&["db", "clean", "--older-than", "2s", "--dry-run", "--json"]);
    assert_eq!(again["runs"].as_array().unwrap().len(), 0);
}
