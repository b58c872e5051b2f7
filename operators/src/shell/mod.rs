//! `shell`: runs a command with `sh -c` (Airflow's BashOperator). Its stdout and stderr go
//! to the try's log line by line; a non-zero exit fails the try.
//!
//! The command runs in its own process group, so a timeout or cancellation stops the whole
//! tree it started (pipelines, subshells), not only `sh`.

use std::process::Stdio;

use async_trait::async_trait;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Command;

use sluice_operator_api::LogStream;
use sluice_operator_api::{template, Operator, OperatorError, TaskContext, TaskLog, TaskOutput};

mod config;
pub use config::ShellConfig;

/// The built `shell` operator.
#[derive(Debug)]
pub struct Shell {
    config: ShellConfig,
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
mod tests;
