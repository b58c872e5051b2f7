//! `shell`: runs a command with `sh -c` (Airflow's BashOperator). Its stdout and stderr go
//! to the try's log line by line; a non-zero exit fails the try.
//!
//! Template values never become shell code: each `{{ … }}` reaches the command as an
//! environment variable (`template::render_shell`). The command starts with a scrubbed
//! environment: the locale and paths it needs, its run context, its own `env:` and the
//! connections it names (`connections:`), never sluice's secrets.
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

/// The longest line kept from a command's output; the rest of a longer line is counted, not
/// kept, so a command that writes without newlines cannot fill memory. Room is left for the
/// note that says so within the log's own line limit.
const MAX_LINE: usize = sluice_operator_api::context::MAX_LINE_BYTES - 128;

fn emit_line(log: &TaskLog, stream: LogStream, line: &[u8], dropped: usize) -> String {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    // Bytes that are not UTF-8 are kept lossily: never a reason to stop reading.
    let mut text = String::from_utf8_lossy(line).into_owned();
    if dropped > 0 {
        text.push_str(&format!(" … [{dropped} more bytes of this line not kept]"));
    }
    log.line(stream, &text);
    text
}

async fn pump(reader: impl AsyncRead + Unpin, log: TaskLog, stream: LogStream) -> Option<String> {
    let mut reader = BufReader::with_capacity(64 * 1024, reader);
    let mut line: Vec<u8> = Vec::new();
    let mut dropped = 0usize;
    let mut last = None;
    loop {
        let buf = match reader.fill_buf().await {
            Ok(buf) if !buf.is_empty() => buf,
            _ => break,
        };
        let end = buf.iter().position(|&b| b == b'\n');
        let chunk = &buf[..end.unwrap_or(buf.len())];
        let keep = chunk.len().min(MAX_LINE - line.len());
        line.extend_from_slice(&chunk[..keep]);
        dropped += chunk.len() - keep;
        let consumed = chunk.len() + usize::from(end.is_some());
        reader.consume(consumed);
        if end.is_some() {
            let text = emit_line(&log, stream, &line, dropped);
            if stream == LogStream::Stdout && !text.trim().is_empty() {
                last = Some(text);
            }
            line.clear();
            dropped = 0;
        }
    }
    if !line.is_empty() || dropped > 0 {
        let text = emit_line(&log, stream, &line, dropped);
        if stream == LogStream::Stdout && !text.trim().is_empty() {
            last = Some(text);
        }
    }
    last
}

/// How long a cancelled command gets after SIGTERM before its group gets SIGKILL (within the
/// executor's stop grace, after which the try is abandoned).
const TERM_GRACE: std::time::Duration = std::time::Duration::from_secs(4);

/// Variables a command inherits from sluice's own environment; everything else (the API
/// token, the metadata store's URL, connections the task does not name) stays out.
const INHERITED: &[&str] = &[
    "PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "USER", "LOGNAME",
];

#[async_trait]
impl Operator for Shell {
    async fn execute(&self, ctx: &TaskContext) -> Result<TaskOutput, OperatorError> {
        let command = template::render_shell(&self.config.command, &ctx.vars)
            .map_err(|e| OperatorError::fatal(format!("command: {}", e.message)))?;
        let cwd = match &self.config.cwd {
            Some(dir) => ctx.resolve_path(&ctx.render(dir)?),
            None => ctx.dag_dir.clone(),
        };
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(&command.script)
            .env_clear()
            .current_dir(&cwd)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        // The shell dies with the thread that started it (sluice's), instead of running on
        // unsupervised; what it started is stopped by the resume (see `ctx.processes`).
        // SAFETY: prctl(2) is async-signal-safe and touches no memory of the parent.
        let parent = std::process::id() as libc::pid_t;
        unsafe {
            cmd.pre_exec(move || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                // The parent died between fork and prctl: the signal will never come.
                if libc::getppid() != parent {
                    libc::_exit(137);
                }
                Ok(())
            });
        }
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
        cmd.env("SLUICE_ATTEMPT", vars.attempt.to_string());
        for name in INHERITED {
            if let Some(value) = std::env::var_os(name) {
                cmd.env(name, value);
            }
        }
        for id in &self.config.connections {
            let conn = ctx.connection(id)?;
            cmd.env(
                format!(
                    "{}{}",
                    sluice_operator_api::connection::ENV_PREFIX,
                    id.to_uppercase()
                ),
                conn.uri().as_str(),
            );
        }
        cmd.envs(command.args.iter().map(|(k, v)| (k, v)));
        for (name, value) in &self.config.env {
            let value = if template::is_template(value) {
                ctx.render(value)?
            } else {
                value.clone()
            };
            cmd.env(name, value);
        }

        let passed = match command.args.len() {
            0 => String::new(),
            n => format!(" ({n} template value(s) passed as $SLUICE_ARG_1…)"),
        };
        ctx.log.info(&format!(
            "running in {}: {}{passed}",
            cwd.display(),
            command.script
        ));
        let mut child = cmd.spawn().map_err(|e| {
            OperatorError::fatal(format!("could not start sh in {}: {e}", cwd.display()))
        })?;
        let group = ProcessGroup {
            pgid: child.id().map(|id| id as i32),
        };
        // Recorded, so a resume after sluice dies stops the group before the retry starts.
        if let Some(pgid) = group.pgid {
            ctx.processes.started(pgid).await;
        }
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
                // A grace period to clean up; then dropping the group sends SIGKILL.
                let stopped = tokio::time::timeout(TERM_GRACE, child.wait()).await.is_ok();
                if !stopped {
                    ctx.log.warn("the command did not stop within its grace period after SIGTERM: killing its process group");
                }
                if let Some(pgid) = group.pgid {
                    ctx.processes.ended(pgid).await;
                }
                return Err(OperatorError::retryable("cancelled"));
            }
        };
        let last_line = stdout.await.ok().flatten();
        let _ = stderr.await;
        if let Some(pgid) = group.pgid {
            ctx.processes.ended(pgid).await;
        }

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
