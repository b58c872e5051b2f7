//! `shell` against real processes: output to the log, exit codes, environment, cancellation.

use std::sync::Arc;

use super::*;
use sluice_operator_api::FailureKind;
use sluice_operator_api::OperatorConfig;

fn context(dir: &std::path::Path) -> TaskContext {
    crate::test_support::context(dir, serde_json::json!({}))
}

fn shell(json: serde_json::Value) -> Arc<dyn Operator> {
    serde_json::from_value::<ShellConfig>(json)
        .unwrap()
        .build()
        .unwrap()
}

#[tokio::test]
async fn output_goes_to_the_log_and_templates_render() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = context(dir.path());
    let op = shell(
        serde_json::json!({"command": "echo day={{ ds }} $GREETING; echo oops >&2", "env": {"GREETING": "hi {{ dag_id }}"}}),
    );
    let out = op.execute(&ctx).await.unwrap();
    assert_eq!(out.values["last_line"], "day=2026-01-02 hi dag");
    let log = std::fs::read_to_string(dir.path().join("try.log")).unwrap();
    assert!(log.contains("OUT   day=2026-01-02 hi dag"), "{log}");
    assert!(log.contains("ERR   oops"), "{log}");
}

#[tokio::test]
async fn exit_codes_classify_failures() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = context(dir.path());
    let err = shell(serde_json::json!({"command": "exit 3"}))
        .execute(&ctx)
        .await
        .unwrap_err();
    assert_eq!(err.kind, FailureKind::Retryable);
    assert!(err.message.contains("code 3"));
    let err = shell(serde_json::json!({"command": "exit 3", "fatal_exit_codes": [3]}))
        .execute(&ctx)
        .await
        .unwrap_err();
    assert_eq!(err.kind, FailureKind::Fatal);
}

#[tokio::test]
async fn dropping_the_try_kills_the_process_tree() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = context(dir.path());
    let marker = dir.path().join("survived");
    let op = shell(
        serde_json::json!({"command": format!("(sleep 1; touch {}) & wait", marker.display())}),
    );
    let timed_out =
        tokio::time::timeout(std::time::Duration::from_millis(200), op.execute(&ctx)).await;
    assert!(timed_out.is_err());
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert!(!marker.exists(), "a grandchild outlived the try");
}
