//! What a pass of the run loop plans before writing it: each change of one of the run's
//! tasks (a try's end, a decision, a start), and the view of the run once they are written.
//! Pure (the caller passes `now`); the executor has the state machine approve each change and
//! writes them in one call.

use chrono::{DateTime, Utc};
use sluice_operator_api::{FailureKind, TaskOutput};

use super::decide::{Decision, TaskView};
use super::TryOutcome;
use crate::dag::RetryPolicy;
use crate::state::TaskState;
use crate::store::TaskInstance;

/// How a try's end is recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ending {
    /// As it happened: success, retry or failure.
    Normal,
    /// The run is being cancelled: the try is cancelled.
    Cancelling,
    /// The process is shutting down and stopped the try: it runs again later, without using up a retry.
    Interrupted,
    /// Someone stopped this task (CLI, API, UI): the try fails without a retry.
    Stopped,
}

/// A change this driver wants for one of its tasks, before the state machine approves it.
#[derive(Debug)]
pub(super) struct Planned {
    /// Index into `Dag::tasks`.
    pub task: usize,
    /// The new state.
    pub to: TaskState,
    /// Why, for the history.
    pub reason: Option<String>,
    /// Output of a successful try.
    pub output: Option<TaskOutput>,
    /// When an `up_for_retry` task may be queued again.
    pub next_retry_at: Option<DateTime<Utc>>,
    /// A new most tries allowed (an interrupted try does not use one up).
    pub max_tries: Option<u32>,
    /// When it happened, if not when it is written (a try's end).
    pub at: Option<DateTime<Utc>>,
}

impl Planned {
    /// A change to `to` with nothing else set.
    pub fn to(task: usize, to: TaskState) -> Self {
        Self {
            task,
            to,
            reason: None,
            output: None,
            next_retry_at: None,
            max_tries: None,
            at: None,
        }
    }
}

/// `views` as they will be once `plan` is written.
pub(super) fn overlay(views: &mut [TaskView], plan: &[Planned]) {
    for p in plan {
        views[p.task] = TaskView {
            state: p.to,
            next_retry_at: p.next_retry_at,
        };
    }
}

impl From<Decision> for Planned {
    fn from(d: Decision) -> Self {
        Self {
            reason: d.reason,
            ..Self::to(d.task, d.to)
        }
    }
}

/// The change that records how a try of `task` (instance `ti`, retried by `retry`) ended at
/// `now`: success, a retry, a failure, or a cancellation.
pub(super) fn try_ending(
    task: usize,
    ti: &TaskInstance,
    retry: &RetryPolicy,
    outcome: TryOutcome,
    ending: Ending,
    now: DateTime<Utc>,
) -> Planned {
    match outcome {
        TryOutcome::Success { output } => Planned {
            output: Some(output),
            ..Planned::to(task, TaskState::Success)
        },
        TryOutcome::Failure { .. } | TryOutcome::Cancelled if ending == Ending::Interrupted => {
            // Stopped by a shutdown, not by its own doing: run it again without using up a retry.
            Planned {
                reason: Some(format!(
                    "try {} interrupted by shutdown; it runs again when the run resumes",
                    ti.try_number
                )),
                next_retry_at: Some(now),
                max_tries: Some(ti.max_tries + 1),
                ..Planned::to(task, TaskState::UpForRetry)
            }
        }
        TryOutcome::Failure { .. } | TryOutcome::Cancelled if ending == Ending::Stopped => {
            Planned {
                reason: Some(format!("try {} stopped", ti.try_number)),
                ..Planned::to(task, TaskState::Failed)
            }
        }
        TryOutcome::Cancelled => Planned {
            reason: Some("run cancelled".into()),
            ..Planned::to(task, TaskState::Cancelled)
        },
        TryOutcome::Failure { message, .. } if ending == Ending::Cancelling => Planned {
            reason: Some(format!("run cancelled: {message}")),
            ..Planned::to(task, TaskState::Cancelled)
        },
        TryOutcome::Failure { kind, message } => {
            let tries_left = ti.try_number < ti.max_tries;
            if kind == FailureKind::Retryable && tries_left {
                let delay = retry.delay_after(ti.try_number);
                // A delay beyond the calendar waits forever rather than overflowing.
                let at = chrono::Duration::from_std(delay)
                    .ok()
                    .and_then(|d| now.checked_add_signed(d))
                    .unwrap_or(DateTime::<Utc>::MAX_UTC);
                Planned {
                    reason: Some(format!(
                        "try {} of {} failed: {message}; retry in {}",
                        ti.try_number,
                        ti.max_tries,
                        humantime::format_duration(delay)
                    )),
                    next_retry_at: Some(at),
                    ..Planned::to(task, TaskState::UpForRetry)
                }
            } else {
                let why = if kind == FailureKind::Fatal {
                    "not retryable"
                } else {
                    "no retries left"
                };
                Planned {
                    reason: Some(format!(
                        "try {} of {} failed ({why}): {message}",
                        ti.try_number, ti.max_tries
                    )),
                    ..Planned::to(task, TaskState::Failed)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn instance(try_number: u32, max_tries: u32) -> TaskInstance {
        super::super::test_instance("t", TaskState::Running, try_number, max_tries)
    }

    const RETRY: RetryPolicy = RetryPolicy {
        retries: 2,
        delay: Duration::from_secs(30),
        exponential_backoff: false,
        max_delay: Duration::from_secs(3600),
    };

    fn failure(kind: FailureKind) -> TryOutcome {
        TryOutcome::Failure {
            kind,
            message: "boom".into(),
        }
    }

    #[test]
    fn a_retryable_failure_with_tries_left_waits_for_its_delay() {
        let before = Utc::now();
        let p = try_ending(
            0,
            &instance(1, 3),
            &RETRY,
            failure(FailureKind::Retryable),
            Ending::Normal,
            before,
        );
        assert_eq!(p.to, TaskState::UpForRetry);
        assert_eq!(
            p.next_retry_at,
            Some(before + chrono::Duration::seconds(30))
        );
        assert!(p
            .reason
            .unwrap()
            .contains("try 1 of 3 failed: boom; retry in 30s"));
    }

    #[test]
    fn the_last_try_or_a_fatal_error_fails_the_task() {
        let before = Utc::now();
        let last = try_ending(
            0,
            &instance(3, 3),
            &RETRY,
            failure(FailureKind::Retryable),
            Ending::Normal,
            before,
        );
        assert_eq!(
            (last.to, last.reason.as_deref()),
            (
                TaskState::Failed,
                Some("try 3 of 3 failed (no retries left): boom")
            )
        );
        let fatal = try_ending(
            0,
            &instance(1, 3),
            &RETRY,
            failure(FailureKind::Fatal),
            Ending::Normal,
            before,
        );
        assert_eq!(fatal.to, TaskState::Failed);
        assert!(fatal.reason.unwrap().contains("not retryable"));
    }

    #[test]
    fn an_interrupted_try_runs_again_without_using_up_a_retry() {
        let before = Utc::now();
        let p = try_ending(
            0,
            &instance(3, 3),
            &RETRY,
            TryOutcome::Cancelled,
            Ending::Interrupted,
            before,
        );
        assert_eq!((p.to, p.max_tries), (TaskState::UpForRetry, Some(4)));
        assert_eq!(p.next_retry_at, Some(before), "at once");
        let cancelled = try_ending(
            0,
            &instance(1, 3),
            &RETRY,
            failure(FailureKind::Retryable),
            Ending::Cancelling,
            before,
        );
        assert_eq!(cancelled.to, TaskState::Cancelled);
    }

    #[test]
    fn a_delay_beyond_the_calendar_does_not_overflow() {
        let now = Utc::now();
        let forever = RetryPolicy {
            delay: Duration::from_secs(u64::MAX / 4),
            max_delay: Duration::MAX,
            ..RETRY
        };
        let p = try_ending(
            0,
            &instance(1, 3),
            &forever,
            failure(FailureKind::Retryable),
            Ending::Normal,
            now,
        );
        assert_eq!(p.next_retry_at, Some(DateTime::<Utc>::MAX_UTC));
    }
}
