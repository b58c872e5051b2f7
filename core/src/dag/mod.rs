//! DAGs: the validated, immutable model a scheduler and executor work from.
//!
//! A [`Dag`] is only ever made by [`build::parse_dag`], which checks the whole file first;
//! holding one means every task's operator config built, every dependency exists and the
//! graph is acyclic. Runs never mutate it: templates render into each try's context.

pub mod build;
pub mod file;
pub mod folder;
pub mod version;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use sluice_operator_api::{ConfigFile, Operator};

use crate::schedule::{DataInterval, Schedule};
use crate::state::TriggerRule;

pub use build::{parse_dag, DagError};
pub use folder::DagBag;
pub use version::DagSource;

/// How a failed try is retried (by default: not at all).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RetryPolicy {
    /// Retries after the first try (total tries = retries + 1).
    pub retries: u32,
    /// Delay before the first retry.
    pub delay: Duration,
    /// Double the delay after each failed try.
    pub exponential_backoff: bool,
    /// Upper bound of the delay.
    pub max_delay: Duration,
}

impl RetryPolicy {
    /// The wait after failed try number `failed_try` (from 1) before the next one.
    pub fn delay_after(&self, failed_try: u32) -> Duration {
        if !self.exponential_backoff {
            return self.delay.min(self.max_delay);
        }
        let factor = 2u32.saturating_pow(failed_try.saturating_sub(1).min(30));
        self.delay.saturating_mul(factor).min(self.max_delay)
    }
}

/// One task of a DAG.
#[derive(Debug, Clone)]
pub struct Task {
    /// Task id, unique in the DAG.
    pub id: String,
    /// Operator name.
    pub operator_name: String,
    /// The `config:` block as written (for display).
    pub config: serde_json::Value,
    /// The built operator.
    pub operator: Arc<dyn Operator>,
    /// Files its config names, relative to the DAG file's folder (checked at load).
    pub files: Vec<ConfigFile>,
    /// Indexes (into [`Dag::tasks`]) of direct upstream tasks.
    pub upstream: Vec<usize>,
    /// Indexes of direct downstream tasks.
    pub downstream: Vec<usize>,
    /// When the task runs relative to its upstream tasks.
    pub trigger_rule: TriggerRule,
    /// Retry policy.
    pub retry: RetryPolicy,
    /// Longest a try may run.
    pub execution_timeout: Option<Duration>,
    /// What the task is for.
    pub doc: Option<String>,
    /// Pool whose slots its tries take.
    pub pool: Option<String>,
    /// The worker queue its tries wait in when the scheduler dispatches to workers.
    pub queue: String,
    /// Who hears about its failures, retries and successes.
    pub notify: crate::notify::TaskNotify,
}

/// A validated DAG.
#[derive(Debug, Clone)]
pub struct Dag {
    /// DAG id.
    pub dag_id: String,
    /// The file it came from.
    pub file: PathBuf,
    /// Content hash of the file and the files its tasks name (see [`DagSource::hash`]):
    /// the version a run records and executes.
    pub hash: String,
    /// The text the version is made of.
    pub source: Arc<DagSource>,
    /// What the DAG is for.
    pub description: Option<String>,
    /// When it runs by itself.
    pub schedule: Schedule,
    /// Timezone the schedule is read in.
    pub timezone: Tz,
    /// First logical date considered by the scheduler.
    pub start_date: Option<DateTime<Utc>>,
    /// Last logical date considered.
    pub end_date: Option<DateTime<Utc>>,
    /// Whether missed intervals are all run.
    pub catchup: bool,
    /// Most active runs at once.
    pub max_active_runs: u32,
    /// Most running task instances at once across runs.
    pub max_active_tasks: u32,
    /// Parameter defaults.
    pub params: serde_json::Map<String, serde_json::Value>,
    /// Labels.
    pub tags: Vec<String>,
    /// Its notification channels and who hears about its runs.
    pub notify: Arc<crate::notify::DagNotify>,
    /// A run not finished this long after its data interval ended has missed its SLA.
    pub sla: Option<Duration>,
    /// A run running longer than this is stopped and fails.
    pub dagrun_timeout: Option<Duration>,
    /// Tasks in topological order (every task after its upstream tasks).
    pub tasks: Vec<Task>,
}

impl Dag {
    /// The task with this id.
    pub fn task(&self, id: &str) -> Option<&Task> {
        self.tasks.iter().find(|t| t.id == id)
    }

    /// Index of the task with this id.
    pub fn task_index(&self, id: &str) -> Option<usize> {
        self.tasks.iter().position(|t| t.id == id)
    }

    /// The given tasks and, when `downstream`, every task that depends on them, as ids in
    /// discovery order; `Err` names the first id the DAG does not have.
    pub fn tasks_to_clear<'a>(
        &self,
        ids: &'a [String],
        downstream: bool,
    ) -> Result<Vec<String>, &'a str> {
        let mut chosen: Vec<usize> = Vec::new();
        for id in ids {
            chosen.push(self.task_index(id).ok_or(id.as_str())?);
        }
        let mut i = 0;
        while downstream && i < chosen.len() {
            for &next in &self.tasks[chosen[i]].downstream {
                if !chosen.contains(&next) {
                    chosen.push(next);
                }
            }
            i += 1;
        }
        Ok(chosen
            .into_iter()
            .map(|i| self.tasks[i].id.clone())
            .collect())
    }

    /// `ids` (task ids of this DAG) and every task they depend on, directly or not, in
    /// discovery order; ids the DAG does not have are kept as they are.
    pub fn with_upstream(&self, ids: &[String]) -> Vec<String> {
        let mut chosen: Vec<String> = ids.to_vec();
        let mut i = 0;
        while i < chosen.len() {
            if let Some(task) = self.task(&chosen[i]) {
                for &up in &task.upstream {
                    let id = &self.tasks[up].id;
                    if !chosen.contains(id) {
                        chosen.push(id.clone());
                    }
                }
            }
            i += 1;
        }
        chosen
    }

    /// Tasks without downstream tasks.
    pub fn leaves(&self) -> impl Iterator<Item = &Task> {
        self.tasks.iter().filter(|t| t.downstream.is_empty())
    }

    /// The data interval for a run whose logical date is near `t`: the schedule interval starting at the latest fire time ≤ `t`.
    pub fn interval_for(&self, t: DateTime<Utc>) -> DataInterval {
        self.schedule.interval_containing(self.timezone, t)
    }

    /// The interval a run without an explicit logical date covers at `now`: the latest that has
    /// fully ended, or `[now, now]` for DAGs without a cron schedule.
    pub fn default_interval(&self, now: DateTime<Utc>) -> DataInterval {
        self.schedule
            .latest_complete_interval(self.timezone, now)
            .unwrap_or(DataInterval {
                start: now,
                end: now,
            })
    }

    /// Params merged with a run's conf (conf wins), as templates see them.
    pub fn params_with(&self, conf: &serde_json::Value) -> serde_json::Value {
        let mut merged = self.params.clone();
        if let Some(conf) = conf.as_object() {
            for (key, value) in conf {
                merged.insert(key.clone(), value.clone());
            }
        }
        serde_json::Value::Object(merged)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let policy = RetryPolicy {
            retries: 5,
            delay: Duration::from_secs(10),
            exponential_backoff: true,
            max_delay: Duration::from_secs(60),
        };
        let delays: Vec<u64> = (1..=5).map(|t| policy.delay_after(t).as_secs()).collect();
        assert_eq!(delays, [10, 20, 40, 60, 60]);
        let flat = RetryPolicy {
            exponential_backoff: false,
            ..policy
        };
        assert_eq!(flat.delay_after(4).as_secs(), 10);
    }
}
