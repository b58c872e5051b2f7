//! `shell`: runs a command with `sh -c` (Airflow's BashOperator). Its stdout and stderr go
//! to the try's log line by line; a non-zero exit fails the try.
//!
//! The command runs in its own process group, so a timeout or cancellation stops the whole
//! tree it started (pipelines, subshells), not only `sh`.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::Arc;

use async_trait::async_trait;
use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Command;

use sluice_operator_api::LogStream;
use sluice_operator_api::OperatorConfig;
use sluice_operator_api::{
    template, ConfigError, Operator, OperatorError, TaskContext, TaskLog, TaskOutput,
};

/// Settings of `shell`.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ShellConfig {
    /// The command, run with `sh -c`; may use templates such as `{{ ds }}`.
    pub command: String,
    /// Extra environment variables for the command; values may use templates.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory; a relative path resolves against the DAG file's folder (the default).
    #[serde(default)]
    pub cwd: Option<String>,
    /// Exit codes that mean "failed, do not retry"; other non-zero codes are retried while retries remain.
    #[serde(default)]
    pub fatal_exit_codes: Vec<i32>,
}

/// The built `shell` operator.
#[derive(Debug)]
pub struct Shell {
    config: ShellConfig,
}

impl OperatorConfig for ShellConfig {
    const NAME: &'static str = "shell";
    const SUMMARY: &'static str =
        "Runs a command with sh -c; output goes to the task log, a non-zero exit fails the try.";

    fn build(self) -> Result<Arc<dyn Operator>, ConfigError> {
        if self.command.trim().is_empty() {
            return Err(ConfigError::field("command", "must not be empty"));
        }
        for name in self.env.keys() {
            if name.is_empty() || name.contains('=') || name.contains('\0') {
                return Err(ConfigError::field(
                    format!("env.{name}"),
                    "is not a valid environment variable name",
                ));
            }
        }
        Ok(Arc::new(Shell { config: self }))
    }
}

/// Kills the command's process group if the try is dropped (timeout) before it exits.
struct ProcessGroup {
    pgid: Option<i32>,
}

impl ProcessGroup {
    fn signal(&self, signal: i32) {
        if let Some(pgid) = self.pgid {
            // SAFETY: kill(2) with a negative pid signals a process group; no memory is touched.
            unsafe {
                libc::kill(-pgid, signal);
            }
        }
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        self.signal(libc::SIGKILL);
    }
}

async fn pump(reader: impl AsyncRead + Unpin, log: TaskLog, stream: LogStream) -> Option<String> {
    let mut lines = BufReader::new(reader).lines();
    let mut last = None;
    while let Ok(Some(line)) = lines.next_line().await {
        log.line(stream, &line);
        if stream == LogStream::Stdout && !line.trim().is_empty() {
            last = Some(line);
        }
    }
    last
}

#[async_trait]
impl Operator for Shell {
    async fn execute(&self, ctx: &TaskContext) -> Result<TaskOutput, OperatorError> {
        let command = ctx.render(&self.config.command)?;
        let cwd = match &self.config.cwd {
            Some(dir) => ctx.resolve_path(&ctx.render(dir)?),
            None => ctx.dag_dir.clone(),
        };
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(&command)
            .current_dir(&cwd)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let vars = &ctx.vars;
        for (name, value) in [
            ("SLUICE_DAG_ID", &vars.dag_id),
            ("SLUICE_RUN_ID", &vars.run_id),
            ("SLUICE_TASK_ID", &vars.task_id),
            ("SLUICE_LOGICAL_DATE", &vars.logical_date),
            ("SLUICE_DATA_INTERVAL_START", &vars.data_interval_start),
            ("SLUICE_DATA_INTERVAL_END", &vars.data_interval_end),
        ] {
            cmd.env(name, value);
        }
        cmd.env("SLUICE_TRY_NUMBER", vars.try_number.to_string());
        for (name, value) in &self.config.env {
            let value = if template::is_template(value) {
                ctx.render(value)?
            } else {
                value.clone()
            };
            cmd.env(name, value);
        }

        ctx.log
            .info(&format!("running in {}: {command}", cwd.display()));
        let mut child = cmd.spawn().map_err(|e| {
            OperatorError::fatal(format!("could not start sh in {}: {e}", cwd.display()))
        })?;
        let group = ProcessGroup {
            pgid: child.id().map(|id| id as i32),
        };
        let stdout = tokio::spawn(pump(
            child.stdout.take().expect("piped"),
            ctx.log.clone(),
            LogStream::Stdout,
        ));
        let stderr = tokio::spawn(pump(
            child.stderr.take().expect("piped"),
            ctx.log.clone(),
            LogStream::Stderr,
        ));

        let status = tokio::select! {
            status = child.wait() => status.map_err(|e| OperatorError::retryable(format!("waiting for the command: {e}")))?,
            _ = ctx.cancel.cancelled() => {
                group.signal(libc::SIGTERM);
                ctx.log.warn("cancelled: sent SIGTERM to the command's process group");
                return Err(OperatorError::retryable("cancelled"));
            }
        };
        let last_line = stdout.await.ok().flatten();
        let _ = stderr.await;

        match status.code() {
            Some(0) => {
                let mut values = serde_json::Map::new();
                values.insert("exit_code".into(), 0.into());
                if let Some(mut line) = last_line {
                    line.truncate(line.floor_char_boundary(1024));
                    values.insert("last_line".into(), line.into());
                }
                Ok(TaskOutput::values(values))
            }
            Some(code) if self.config.fatal_exit_codes.contains(&code) => {
                Err(OperatorError::fatal(format!(
                    "command exited with code {code} (listed in fatal_exit_codes)"
                )))
            }
            Some(code) => Err(OperatorError::retryable(format!(
                "command exited with code {code}"
            ))),
            None => Err(OperatorError::retryable(format!(
                "command was killed by a signal ({status})"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};
    use sluice_operator_api::template::TemplateVars;
    use sluice_operator_api::Connections;
    use sluice_operator_api::FailureKind;
    use sluice_operator_api::LocalArtifactStore;

    fn context(dir: &std::path::Path) -> TaskContext {
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
                serde_json::json!({}),
            ),
            dag_dir: dir.to_path_buf(),
            upstream: Default::default(),
            connections: Arc::new(Connections::default()),
            artifacts: Arc::new(LocalArtifactStore::new(dir.join("artifacts"))),
            log: TaskLog::to_file(&dir.join("try.log")),
            cancel: Default::default(),
        }
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
}
