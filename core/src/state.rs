//! The task-instance and DAG-run state machines, as data, and trigger-rule readiness.
//!
//! Invariants:
//! - [`ALLOWED`] is the whole task state machine. A [`Transition`] can only be obtained from
//!   [`TaskState::to`], which rejects anything not in the table; the store accepts only a
//!   `Transition`, so no code path can persist an illegal change.
//! - [`readiness`] decides what a pending task should become from its upstream states. It
//!   never writes: the caller turns its answer into a transition.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// State of one task instance (a task within a run).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    /// Waiting for its upstream tasks.
    Pending,
    /// Ready to run, waiting for an executor slot.
    Queued,
    /// A try is executing.
    Running,
    /// Finished successfully.
    Success,
    /// Finished unsuccessfully with no retries left (or a fatal error).
    Failed,
    /// A try failed and another will be queued after the retry delay.
    UpForRetry,
    /// Not run: its trigger rule said so.
    Skipped,
    /// Not run: an upstream task failed.
    UpstreamFailed,
    /// Stopped before finishing: the run was cancelled.
    Cancelled,
}

/// Every task state, for exhaustive tests and listings.
pub const TASK_STATES: [TaskState; 9] = [
    TaskState::Pending,
    TaskState::Queued,
    TaskState::Running,
    TaskState::Success,
    TaskState::Failed,
    TaskState::UpForRetry,
    TaskState::Skipped,
    TaskState::UpstreamFailed,
    TaskState::Cancelled,
];

use TaskState::*;

/// The task state machine: every allowed `(from, to)` pair. Nothing else may happen.
pub const ALLOWED: &[(TaskState, TaskState)] = &[
    (Pending, Queued),
    (Pending, Skipped),
    (Pending, UpstreamFailed),
    (Pending, Cancelled),
    (Queued, Running),
    (Queued, Cancelled),
    (Running, Success),
    (Running, Failed),
    (Running, UpForRetry),
    (Running, Cancelled),
    (UpForRetry, Queued),
    (UpForRetry, Cancelled),
    // A clear: a finished task goes back to pending for a new attempt of its run.
    (Success, Pending),
    (Failed, Pending),
    (Skipped, Pending),
    (UpstreamFailed, Pending),
    (Cancelled, Pending),
    // A mark: a person sets the outcome of a finished task (mark success / mark failed).
    (Failed, Success),
    (Skipped, Success),
    (UpstreamFailed, Success),
    (Cancelled, Success),
    (Success, Failed),
    (Skipped, Failed),
    (UpstreamFailed, Failed),
    (Cancelled, Failed),
];

impl TaskState {
    /// The name used in the store, the API and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            Pending => "pending",
            Queued => "queued",
            Running => "running",
            Success => "success",
            Failed => "failed",
            UpForRetry => "up_for_retry",
            Skipped => "skipped",
            UpstreamFailed => "upstream_failed",
            Cancelled => "cancelled",
        }
    }

    /// True once nothing more will happen to the task in this run.
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            Success | Failed | Skipped | UpstreamFailed | Cancelled
        )
    }

    /// The checked transition from `self` to `to`, or why it is illegal.
    pub fn to(self, to: TaskState) -> Result<Transition, IllegalTransition> {
        if ALLOWED.contains(&(self, to)) {
            Ok(Transition { from: self, to })
        } else {
            Err(IllegalTransition { from: self, to })
        }
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A state name that is not a [`TaskState`] or [`RunState`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown state `{0}`")]
pub struct UnknownState(pub String);

impl FromStr for TaskState {
    type Err = UnknownState;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TASK_STATES
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| UnknownState(s.to_string()))
    }
}

/// A transition that [`ALLOWED`] permits. Only [`TaskState::to`] makes one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    from: TaskState,
    to: TaskState,
}

impl Transition {
    /// The state the instance must be in (compare-and-set).
    pub fn from(&self) -> TaskState {
        self.from
    }

    /// The state it moves to.
    pub fn to(&self) -> TaskState {
        self.to
    }

    /// True when this transition starts a new try (the try number goes up).
    pub fn starts_try(&self) -> bool {
        self.to == Running
    }

    /// True when this transition clears a finished task for a new attempt.
    pub fn clears(&self) -> bool {
        self.to == Pending
    }
}

/// A transition the state machine forbids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("illegal task state transition {from} -> {to}")]
pub struct IllegalTransition {
    /// Current state.
    pub from: TaskState,
    /// Requested state.
    pub to: TaskState,
}

/// State of a DAG run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    /// Created, not started.
    Queued,
    /// Tasks are being decided and executed.
    Running,
    /// Every task succeeded or was skipped.
    Success,
    /// A task failed or could not run (an `all_done` cleanup does not turn it green).
    Failed,
    /// Stopped by a person or a shutdown.
    Cancelled,
}

/// Every run state.
pub const RUN_STATES: [RunState; 5] = [
    RunState::Queued,
    RunState::Running,
    RunState::Success,
    RunState::Failed,
    RunState::Cancelled,
];

/// The run state machine: every allowed `(from, to)` pair.
pub const RUN_ALLOWED: &[(RunState, RunState)] = &[
    (RunState::Queued, RunState::Running),
    (RunState::Queued, RunState::Cancelled),
    // A queued run stopped before it started (Airflow's PATCH of its state to failed).
    (RunState::Queued, RunState::Failed),
    (RunState::Running, RunState::Success),
    (RunState::Running, RunState::Failed),
    (RunState::Running, RunState::Cancelled),
    // A new attempt of a finished run (its tasks are cleared first).
    (RunState::Success, RunState::Queued),
    (RunState::Failed, RunState::Queued),
    (RunState::Cancelled, RunState::Queued),
    // Marks on its tasks change a finished run's outcome.
    (RunState::Success, RunState::Failed),
    (RunState::Failed, RunState::Success),
    (RunState::Cancelled, RunState::Success),
    (RunState::Cancelled, RunState::Failed),
];

impl RunState {
    /// The name used in the store, the API and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Queued => "queued",
            RunState::Running => "running",
            RunState::Success => "success",
            RunState::Failed => "failed",
            RunState::Cancelled => "cancelled",
        }
    }

    /// True once the run is over.
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            RunState::Success | RunState::Failed | RunState::Cancelled
        )
    }

    /// Checks a run transition against [`RUN_ALLOWED`].
    pub fn check(self, to: RunState) -> Result<(), IllegalRunTransition> {
        if RUN_ALLOWED.contains(&(self, to)) {
            Ok(())
        } else {
            Err(IllegalRunTransition { from: self, to })
        }
    }
}

impl fmt::Display for RunState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RunState {
    type Err = UnknownState;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RUN_STATES
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| UnknownState(s.to_string()))
    }
}

/// A run transition the state machine forbids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("illegal run state transition {from} -> {to}")]
pub struct IllegalRunTransition {
    /// Current state.
    pub from: RunState,
    /// Requested state.
    pub to: RunState,
}

/// When a task runs, relative to its upstream tasks (Airflow's trigger rules).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TriggerRule {
    /// Every upstream succeeded (the default).
    #[default]
    AllSuccess,
    /// Every upstream finished, whatever the outcome.
    AllDone,
    /// Every upstream failed.
    AllFailed,
    /// At least one upstream succeeded.
    OneSuccess,
    /// At least one upstream failed.
    OneFailed,
    /// No upstream failed (skips are fine).
    NoneFailed,
    /// No upstream failed and at least one succeeded.
    NoneFailedMinOneSuccess,
    /// Run regardless, as soon as the run starts.
    Always,
}

/// Every trigger rule with its name in DAG files.
pub const TRIGGER_RULES: [(TriggerRule, &str); 8] = [
    (TriggerRule::AllSuccess, "all_success"),
    (TriggerRule::AllDone, "all_done"),
    (TriggerRule::AllFailed, "all_failed"),
    (TriggerRule::OneSuccess, "one_success"),
    (TriggerRule::OneFailed, "one_failed"),
    (TriggerRule::NoneFailed, "none_failed"),
    (
        TriggerRule::NoneFailedMinOneSuccess,
        "none_failed_min_one_success",
    ),
    (TriggerRule::Always, "always"),
];

impl TriggerRule {
    /// The rule's name in DAG files.
    pub fn as_str(self) -> &'static str {
        TRIGGER_RULES
            .iter()
            .find(|(rule, _)| *rule == self)
            .map(|(_, name)| *name)
            .expect("every rule is listed")
    }
}

impl FromStr for TriggerRule {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TRIGGER_RULES
            .iter()
            .find(|(_, name)| *name == s)
            .map(|(rule, _)| *rule)
            .ok_or_else(|| {
                let names: Vec<&str> = TRIGGER_RULES.iter().map(|(_, name)| *name).collect();
                format!(
                    "unknown trigger rule `{s}`; expected one of {}",
                    names.join(", ")
                )
            })
    }
}

/// Counts of a task's direct upstream states: the whole input of [`readiness`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UpstreamSummary {
    /// Number of direct upstream tasks.
    pub total: usize,
    /// Upstream tasks that succeeded.
    pub success: usize,
    /// Upstream tasks that were skipped.
    pub skipped: usize,
    /// Upstream tasks that failed, could not run, or were cancelled.
    pub failed: usize,
}

impl UpstreamSummary {
    /// Summarizes the given upstream states.
    pub fn of(states: impl IntoIterator<Item = TaskState>) -> Self {
        let mut summary = Self::default();
        for state in states {
            summary.total += 1;
            match state {
                Success => summary.success += 1,
                Skipped => summary.skipped += 1,
                Failed | UpstreamFailed | Cancelled => summary.failed += 1,
                Pending | Queued | Running | UpForRetry => {}
            }
        }
        summary
    }

    fn done(&self) -> usize {
        self.success + self.skipped + self.failed
    }

    fn all_done(&self) -> bool {
        self.done() == self.total
    }
}

/// What a pending task should do now, given its upstream tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    /// Not decidable yet: wait for more upstream tasks to finish.
    Wait,
    /// Run it (pending → queued).
    Run,
    /// The rule cannot be met: skip it (pending → skipped).
    Skip,
    /// An upstream failure makes the rule unmeetable (pending → upstream_failed).
    UpstreamFailed,
}

/// Decides a pending task's fate under `rule`. Pure; decides as early as the outcome is
/// certain (a failed upstream fails an `all_success` task at once, as in Airflow).
pub fn readiness(rule: TriggerRule, up: UpstreamSummary) -> Readiness {
    use Readiness as R;
    if up.total == 0 {
        return R::Run;
    }
    match rule {
        TriggerRule::Always => R::Run,
        TriggerRule::AllSuccess => {
            if up.failed > 0 {
                R::UpstreamFailed
            } else if up.skipped > 0 {
                R::Skip
            } else if up.success == up.total {
                R::Run
            } else {
                R::Wait
            }
        }
        TriggerRule::AllDone => {
            if up.all_done() {
                R::Run
            } else {
                R::Wait
            }
        }
        TriggerRule::AllFailed => {
            if up.success > 0 || up.skipped > 0 {
                R::Skip
            } else if up.failed == up.total {
                R::Run
            } else {
                R::Wait
            }
        }
        TriggerRule::OneSuccess => {
            if up.success > 0 {
                R::Run
            } else if !up.all_done() {
                R::Wait
            } else if up.skipped == up.total {
                R::Skip
            } else {
                R::UpstreamFailed
            }
        }
        TriggerRule::OneFailed => {
            if up.failed > 0 {
                R::Run
            } else if up.all_done() {
                R::Skip
            } else {
                R::Wait
            }
        }
        TriggerRule::NoneFailed => {
            if up.failed > 0 {
                R::UpstreamFailed
            } else if up.all_done() {
                R::Run
            } else {
                R::Wait
            }
        }
        TriggerRule::NoneFailedMinOneSuccess => {
            if up.failed > 0 {
                R::UpstreamFailed
            } else if !up.all_done() {
                R::Wait
            } else if up.success > 0 {
                R::Run
            } else {
                R::Skip
            }
        }
    }
}

/// The run's outcome once every task has finished: failed if any task failed or could not
/// run, cancelled if any was cancelled, otherwise success (skips are fine).
///
/// Unlike Airflow, which looks only at leaf tasks, a failure anywhere fails the run: an
/// `all_done` cleanup task at the end must not turn a failed load into a green run.
pub fn run_outcome(states: impl IntoIterator<Item = TaskState>) -> RunState {
    let mut outcome = RunState::Success;
    for state in states {
        match state {
            Failed | UpstreamFailed => return RunState::Failed,
            Cancelled => outcome = RunState::Cancelled,
            _ => {}
        }
    }
    outcome
}

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;
