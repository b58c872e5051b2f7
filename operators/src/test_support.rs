//! What the operators' unit tests share: a try's context over a temporary folder.

use std::sync::Arc;

use chrono::{TimeZone, Utc};
use sluice_operator_api::template::TemplateVars;
use sluice_operator_api::{Connections, LocalArtifactStore, TaskContext, TaskLog};

/// The context of try 1 of `dag`/`run`/`task` with `conf`, logging to `dir/try.log`.
pub fn context(dir: &std::path::Path, conf: serde_json::Value) -> TaskContext {
    let t = Utc.with_ymd_and_hms(2026, 1, 2, 3, 0, 0).unwrap();
    TaskContext {
        vars: TemplateVars::new(
            "dag",
            "run",
            "task",
            1,
            t,
            (t, t),
            serde_json::json!({}),
            conf,
        ),
        dag_dir: dir.to_path_buf(),
        config_files: Default::default(),
        upstream: Default::default(),
        connections: Arc::new(Connections::default()),
        artifacts: Arc::new(LocalArtifactStore::new(dir.join("artifacts"))),
        log: TaskLog::to_file(&dir.join("try.log")),
        deliveries: Arc::new(sluice_operator_api::NoLedger),
        processes: Arc::new(sluice_operator_api::NoProcesses),
        cancel: Default::default(),
    }
}
