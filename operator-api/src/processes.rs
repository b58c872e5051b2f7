//! Processes a try starts: an operator that runs a command registers its process group, so
//! that when the sluice process dies (kill -9, a crash, a lost machine's lease), whoever
//! resumes the run can stop what the dead try left running before its retry starts: a retry
//! never runs next to the original.

use async_trait::async_trait;

/// Where a try's process groups are recorded.
#[async_trait]
pub trait ProcessRegistry: Send + Sync + std::fmt::Debug {
    /// A process group (its leader's pid) started for this try.
    async fn started(&self, pgid: i32);
    /// The process group ended (its leader exited and was reaped).
    async fn ended(&self, pgid: i32);
}

/// Records nothing (unit tests of operators).
#[derive(Debug, Default)]
pub struct NoProcesses;

#[async_trait]
impl ProcessRegistry for NoProcesses {
    async fn started(&self, _pgid: i32) {}
    async fn ended(&self, _pgid: i32) {}
}

/// The start time of a process in clock ticks since boot (`/proc/<pid>/stat`, field 22), which
/// tells a process from a later one that reuses its pid. `None` when there is no such process.
pub fn start_ticks(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count from the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_live_process_has_a_start_time_and_a_gone_one_has_none() {
        let me = std::process::id() as i32;
        let first = start_ticks(me).expect("this process exists");
        assert_eq!(start_ticks(me), Some(first), "stable for one process");
        assert_eq!(start_ticks(i32::MAX), None);
    }
}
