//! Pure scheduling decisions for one run: which pending tasks to queue, skip or fail, and
//! which retries are due. Never writes; the executor persists what this returns.

use chrono::{DateTime, Utc};

use crate::dag::Dag;
use crate::state::{readiness, Readiness, TaskState, UpstreamSummary};

/// What a task should become, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Index into `Dag::tasks`.
    pub task: usize,
    /// The new state.
    pub to: TaskState,
    /// Why, for the history.
    pub reason: Option<String>,
}

/// The view of one task instance that decisions need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskView {
    /// Current state.
    pub state: TaskState,
    /// When an `up_for_retry` instance may run again.
    pub next_retry_at: Option<DateTime<Utc>>,
}

/// Decides every change due now. `tasks[i]` is the instance of `dag.tasks[i]`. Decisions
/// cascade within one call: a skip or failure reaches every downstream task at once,
/// because tasks are visited in topological order.
pub fn decide(dag: &Dag, tasks: &[TaskView], now: DateTime<Utc>) -> Vec<Decision> {
    let mut states: Vec<TaskState> = tasks.iter().map(|t| t.state).collect();
    let mut decisions = Vec::new();
    for (i, task) in dag.tasks.iter().enumerate() {
        match states[i] {
            TaskState::Pending => {
                let upstream = UpstreamSummary::of(task.upstream.iter().map(|&u| states[u]));
                let (to, reason) = match readiness(task.trigger_rule, upstream) {
                    Readiness::Wait => continue,
                    Readiness::Run => (TaskState::Queued, None),
                    Readiness::Skip => (
                        TaskState::Skipped,
                        Some(format!(
                            "trigger rule {} cannot be met",
                            task.trigger_rule.as_str()
                        )),
                    ),
                    Readiness::UpstreamFailed => (
                        TaskState::UpstreamFailed,
                        Some(format!(
                            "upstream failed (trigger rule {})",
                            task.trigger_rule.as_str()
                        )),
                    ),
                };
                states[i] = to;
                decisions.push(Decision {
                    task: i,
                    to,
                    reason,
                });
            }
            TaskState::UpForRetry if tasks[i].next_retry_at.is_none_or(|at| at <= now) => {
                states[i] = TaskState::Queued;
                decisions.push(Decision {
                    task: i,
                    to: TaskState::Queued,
                    reason: Some("retry delay over".into()),
                });
            }
            _ => {}
        }
    }
    decisions
}

/// The earliest pending retry time, to wake up for.
pub fn next_wakeup(tasks: &[TaskView]) -> Option<DateTime<Utc>> {
    tasks
        .iter()
        .filter(|t| t.state == TaskState::UpForRetry)
        .filter_map(|t| t.next_retry_at)
        .min()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dag::parse_dag;
    use std::path::Path;
    use TaskState::*;

    fn dag() -> Dag {
        let text = "dag_id: d\ntasks:\n  - {id: a, operator: noop}\n  - {id: b, operator: noop, depends_on: a}\n  - {id: c, operator: noop, depends_on: b}\n  - {id: cleanup, operator: noop, depends_on: c, trigger_rule: all_done}\n";
        parse_dag(Path::new("d.yaml"), text, &sluice_operators::basic()).unwrap()
    }

    fn views(states: &[TaskState]) -> Vec<TaskView> {
        states
            .iter()
            .map(|&state| TaskView {
                state,
                next_retry_at: None,
            })
            .collect()
    }

    #[test]
    fn roots_are_queued_and_downstream_waits() {
        let d = dag();
        let decided = decide(
            &d,
            &views(&[Pending, Pending, Pending, Pending]),
            Utc::now(),
        );
        assert_eq!(
            decided,
            vec![Decision {
                task: 0,
                to: Queued,
                reason: None
            }]
        );
    }

    #[test]
    fn a_failure_cascades_in_one_pass_and_all_done_still_runs() {
        let d = dag();
        let decided = decide(&d, &views(&[Failed, Pending, Pending, Pending]), Utc::now());
        let got: Vec<(usize, TaskState)> = decided.iter().map(|d| (d.task, d.to)).collect();
        assert_eq!(
            got,
            vec![(1, UpstreamFailed), (2, UpstreamFailed), (3, Queued)]
        );
    }

    #[test]
    fn retries_wait_for_their_time() {
        let d = dag();
        let now = Utc::now();
        let mut tasks = views(&[UpForRetry, Pending, Pending, Pending]);
        tasks[0].next_retry_at = Some(now + chrono::Duration::seconds(5));
        assert!(decide(&d, &tasks, now).is_empty());
        assert_eq!(next_wakeup(&tasks), tasks[0].next_retry_at);
        let later = decide(&d, &tasks, now + chrono::Duration::seconds(5));
        assert_eq!(later.len(), 1);
        assert_eq!(later[0].to, Queued);
    }
}
