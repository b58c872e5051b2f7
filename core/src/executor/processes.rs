//! Process groups of tries in the metadata store: the operator API's [`ProcessRegistry`] over
//! [`Store`], and the clean-up a resume does before a died try's retry starts.

use std::sync::Arc;

use async_trait::async_trait;
use sluice_operator_api::processes::start_ticks;
use sluice_operator_api::ProcessRegistry;

use crate::store::{Store, TaskKey, TaskProcess};

/// This machine's name, as process rows record it.
pub(crate) fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "host".into())
}

/// The registry of one try.
#[derive(Debug)]
pub(super) struct StoreProcesses {
    pub store: Arc<dyn Store>,
    pub key: TaskKey,
    pub try_number: u32,
    pub host: String,
}

#[async_trait]
impl ProcessRegistry for StoreProcesses {
    async fn started(&self, pgid: i32) {
        let Some(ticks) = start_ticks(pgid) else {
            return; // it ended already
        };
        let process = TaskProcess {
            key: self.key.clone(),
            try_number: self.try_number,
            host: self.host.clone(),
            pgid,
            start_ticks: ticks,
            started_at: chrono::Utc::now(),
        };
        if let Err(error) = self.store.record_process(&process).await {
            // The try still runs; only a crash during it could leave the group behind.
            tracing::warn!(%error, pgid, task_id = %self.key.task_id, "could not record a try's process group");
        }
    }

    async fn ended(&self, pgid: i32) {
        if let Err(error) = self.store.forget_process(&self.key, &self.host, pgid).await {
            tracing::warn!(%error, pgid, task_id = %self.key.task_id, "could not forget a try's process group");
        }
    }
}

/// What happened to a process group a died try left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Leftover {
    /// It was still running here: killed.
    Killed,
    /// It had ended (or its pid now belongs to another process).
    Gone,
    /// It runs on another machine: cannot be reached from here.
    Elsewhere,
}

/// Stops a process group left by a try whose process died: SIGKILL to the whole group, unless
/// its id now belongs to another process (a live leader with another start time). A group
/// whose leader died (the shell gets SIGKILL when sluice dies) while its children run on is
/// still ours: Linux does not hand out a pid that a live process group still uses.
pub(super) fn stop_leftover(process: &TaskProcess, host: &str) -> Leftover {
    if process.host != host {
        return Leftover::Elsewhere;
    }
    match start_ticks(process.pgid) {
        Some(ticks) if ticks != process.start_ticks => return Leftover::Gone,
        _ => {}
    }
    // SAFETY: kill(2) with a negative pid signals a process group; no memory is touched.
    let sent = unsafe { libc::kill(-process.pgid, libc::SIGKILL) };
    if sent == 0 {
        Leftover::Killed
    } else {
        Leftover::Gone
    }
}
