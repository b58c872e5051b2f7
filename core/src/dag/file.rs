//! The DAG file format: typed YAML structs, and the only place YAML is parsed (serde_norway).
//!
//! Parsing is split so one mistake does not hide the others: the YAML is read once, the
//! header (everything but `tasks`) and each task are deserialized separately, and every
//! problem is collected with the task and field it concerns.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserializer};
use serde::Deserialize;
pub use sluice_operator_api::HumanDuration;

use crate::state::TriggerRule;

/// A problem found while reading the file, before any semantic check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileProblem {
    /// The task it concerns (its id, or `tasks[i]` when the id is unreadable).
    pub task: Option<String>,
    /// What is wrong, starting with the field path where there is one.
    pub message: String,
}

/// `depends_on` as one id or a list of ids.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskIds(pub Vec<String>);

impl<'de> Deserialize<'de> for TaskIds {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum OneOrMany {
            One(String),
            Many(Vec<String>),
        }
        match OneOrMany::deserialize(deserializer) {
            Ok(OneOrMany::One(id)) => Ok(TaskIds(vec![id])),
            Ok(OneOrMany::Many(ids)) => Ok(TaskIds(ids)),
            Err(_) => Err(de::Error::custom(
                "expected a task id or a list of task ids",
            )),
        }
    }
}

/// Retry and timeout settings, at DAG level (`default_args`) or on one task.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetrySpec {
    /// How many times a failed try is retried (0 = one try only).
    pub retries: Option<u32>,
    /// Wait before the first retry.
    pub retry_delay: Option<HumanDuration>,
    /// Double the delay after each failed try.
    pub retry_exponential_backoff: Option<bool>,
    /// Upper bound of the delay with backoff.
    pub max_retry_delay: Option<HumanDuration>,
    /// A try running longer than this is stopped and counts as failed.
    pub execution_timeout: Option<HumanDuration>,
    /// The worker queue tries wait in when the scheduler dispatches to workers (default
    /// `default`).
    pub queue: Option<String>,
    /// Channels told when a task fails for good (every task's, unless it names its own).
    pub on_failure: Option<Vec<String>>,
    /// Channels told when a task's try fails and is retried.
    pub on_retry: Option<Vec<String>>,
    /// Channels told when a task succeeds.
    pub on_success: Option<Vec<String>>,
    /// Channels told when a task succeeds with warnings (a `check`'s failed `warn` checks).
    pub on_warning: Option<Vec<String>>,
}

/// Everything of a DAG file but its tasks.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DagHeader {
    /// Unique DAG id.
    pub dag_id: String,
    /// What the DAG is for.
    #[serde(default)]
    pub description: Option<String>,
    /// 5-field cron, a preset (`@hourly`, `@daily`, …, `@once`) or absent for manual runs only.
    #[serde(default)]
    pub schedule: Option<String>,
    /// IANA timezone the schedule is read in (default UTC).
    #[serde(default)]
    pub timezone: Option<String>,
    /// First logical date the scheduler considers (RFC 3339 or `YYYY-MM-DD`).
    #[serde(default)]
    pub start_date: Option<String>,
    /// Last logical date the scheduler considers.
    #[serde(default)]
    pub end_date: Option<String>,
    /// Create runs for every missed interval (true) or only the latest (false, default).
    #[serde(default)]
    pub catchup: Option<bool>,
    /// Most runs of this DAG active at once (default 16).
    #[serde(default)]
    pub max_active_runs: Option<u32>,
    /// Most task instances of this DAG running at once, across its runs (default 16).
    #[serde(default)]
    pub max_active_tasks: Option<u32>,
    /// Retry, timeout, queue and notification defaults for every task.
    #[serde(default)]
    pub default_args: RetrySpec,
    /// Notification channels by name (`email:` or `webhook:`).
    #[serde(default)]
    pub channels: BTreeMap<String, crate::notify::ChannelFile>,
    /// Channels told when a run fails.
    #[serde(default)]
    pub on_failure: Vec<String>,
    /// Channels told when a run succeeds.
    #[serde(default)]
    pub on_success: Vec<String>,
    /// Channels told (once) when a run misses its SLA.
    #[serde(default)]
    pub on_sla_miss: Vec<String>,
    /// A run not finished this long after its data interval ended has missed its SLA.
    #[serde(default)]
    pub sla: Option<HumanDuration>,
    /// A run running longer than this is stopped: its tries are stopped and it fails.
    #[serde(default)]
    pub dagrun_timeout: Option<HumanDuration>,
    /// Parameters with defaults, visible to templates as `params`; a run's conf overrides them.
    #[serde(default)]
    pub params: BTreeMap<String, serde_json::Value>,
    /// Free-form labels.
    #[serde(default)]
    pub tags: Vec<String>,
    /// The tasks, read one by one (see [`TaskSpec`]).
    pub tasks: Vec<serde_norway::Value>,
}

/// One task as written in the file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskSpec {
    /// Task id, unique within the DAG.
    pub id: String,
    /// Operator name from the registry.
    pub operator: String,
    /// Ids of the tasks this one runs after.
    #[serde(default)]
    pub depends_on: TaskIds,
    /// When the task runs relative to its upstream tasks (default `all_success`).
    #[serde(default)]
    pub trigger_rule: TriggerRule,
    /// What the task is for.
    #[serde(default)]
    pub doc: Option<String>,
    /// Named slot pool (from `SLUICE_POOLS`) the task's tries take a slot of.
    #[serde(default)]
    pub pool: Option<String>,
    /// Overrides `default_args.queue`: the worker queue its tries wait in.
    #[serde(default)]
    pub queue: Option<String>,
    /// Overrides `default_args.retries`.
    #[serde(default)]
    pub retries: Option<u32>,
    /// Overrides `default_args.retry_delay`.
    #[serde(default)]
    pub retry_delay: Option<HumanDuration>,
    /// Overrides `default_args.retry_exponential_backoff`.
    #[serde(default)]
    pub retry_exponential_backoff: Option<bool>,
    /// Overrides `default_args.max_retry_delay`.
    #[serde(default)]
    pub max_retry_delay: Option<HumanDuration>,
    /// Overrides `default_args.execution_timeout`.
    #[serde(default)]
    pub execution_timeout: Option<HumanDuration>,
    /// Channels told when the task fails for good (overrides `default_args.on_failure`).
    #[serde(default)]
    pub on_failure: Option<Vec<String>>,
    /// Channels told when a try fails and is retried (overrides `default_args.on_retry`).
    #[serde(default)]
    pub on_retry: Option<Vec<String>>,
    /// Channels told when the task succeeds (overrides `default_args.on_success`).
    #[serde(default)]
    pub on_success: Option<Vec<String>>,
    /// Channels told when the task succeeds with warnings (overrides `default_args.on_warning`).
    #[serde(default)]
    pub on_warning: Option<Vec<String>>,
    /// Operator settings, checked by the operator's config struct.
    #[serde(default)]
    pub config: Option<serde_json::Value>,
}

impl TaskSpec {
    /// The task's own retry settings (serde's `flatten` cannot be combined with
    /// `deny_unknown_fields`, so they are fields of the task and gathered here).
    pub fn retry_spec(&self) -> RetrySpec {
        RetrySpec {
            retries: self.retries,
            retry_delay: self.retry_delay,
            retry_exponential_backoff: self.retry_exponential_backoff,
            max_retry_delay: self.max_retry_delay,
            execution_timeout: self.execution_timeout,
            queue: self.queue.clone(),
            on_failure: self.on_failure.clone(),
            on_retry: self.on_retry.clone(),
            on_success: self.on_success.clone(),
            on_warning: self.on_warning.clone(),
        }
    }
}

/// The file read as far as it could be.
#[derive(Debug, Default)]
pub struct ParsedFile {
    /// The header, when it deserialized.
    pub header: Option<DagHeader>,
    /// The tasks that deserialized, in file order, with their index in `tasks:`.
    pub tasks: Vec<(usize, TaskSpec)>,
    /// Everything that went wrong.
    pub problems: Vec<FileProblem>,
}

fn path_error<E: fmt::Display>(e: serde_path_to_error::Error<E>) -> String {
    let path = e.path().to_string();
    let inner = e.into_inner().to_string();
    // serde_norway (like serde_yaml) appends " at line N column M" to messages even when reading a Value, where the position is meaningless.
    if path == "." {
        inner
    } else {
        format!("{path}: {inner}")
    }
}

/// Reads a DAG file's text, collecting every problem instead of stopping at the first.
pub fn parse(text: &str) -> ParsedFile {
    let mut parsed = ParsedFile::default();
    let root: serde_norway::Value = match serde_norway::from_str(text) {
        Ok(value) => value,
        Err(e) => {
            let at = e
                .location()
                .map(|l| format!(" at line {} column {}", l.line(), l.column()))
                .unwrap_or_default();
            let reason = e.to_string();
            let reason = reason
                .split(" at line ")
                .next()
                .unwrap_or(&reason)
                .to_string();
            parsed.problems.push(FileProblem {
                task: None,
                message: format!("YAML syntax error{at}: {reason}"),
            });
            return parsed;
        }
    };
    if root.is_null() {
        parsed.problems.push(FileProblem {
            task: None,
            message: "the file is empty".into(),
        });
        return parsed;
    }
    if !root.is_mapping() {
        parsed.problems.push(FileProblem {
            task: None,
            message: "a DAG file must be a mapping with `dag_id` and `tasks`".into(),
        });
        return parsed;
    }
    // Tasks are read even when the header is broken, so their problems are reported too.
    let raw_tasks: Vec<serde_norway::Value> = match root.get("tasks") {
        Some(serde_norway::Value::Sequence(seq)) => seq.clone(),
        _ => Vec::new(),
    };
    match serde_path_to_error::deserialize::<_, DagHeader>(root) {
        Ok(header) => parsed.header = Some(header),
        Err(e) => parsed.problems.push(FileProblem {
            task: None,
            message: path_error(e),
        }),
    }
    for (index, raw) in raw_tasks.into_iter().enumerate() {
        // Name the task as its author would, even when its id is not a string.
        let label = match raw.get("id") {
            Some(serde_norway::Value::String(id)) if !id.is_empty() => id.clone(),
            Some(serde_norway::Value::Number(n)) => n.to_string(),
            Some(serde_norway::Value::Bool(b)) => b.to_string(),
            _ => format!("tasks[{index}]"),
        };
        match serde_path_to_error::deserialize::<_, TaskSpec>(raw) {
            Ok(task) => parsed.tasks.push((index, task)),
            Err(e) => parsed.problems.push(FileProblem {
                task: Some(label),
                message: path_error(e),
            }),
        }
    }
    parsed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syntax_errors_carry_the_line() {
        let parsed = parse("dag_id: x\ntasks:\n  - id: a\n   operator: noop\n");
        assert_eq!(parsed.problems.len(), 1);
        assert!(
            parsed.problems[0].message.contains("line 4"),
            "{:?}",
            parsed.problems
        );
    }

    #[test]
    fn header_and_task_problems_are_all_collected() {
        let parsed = parse(
            "dag_id: x\nshedule: '@daily'\ntasks:\n  - id: a\n    operator: noop\n    retries: many\n  - operator: noop\n  - id: c\n    operator: noop\n",
        );
        let messages: Vec<String> = parsed
            .problems
            .iter()
            .map(|p| format!("{:?}: {}", p.task, p.message))
            .collect();
        assert_eq!(messages.len(), 3, "{messages:#?}");
        assert!(
            messages[0].contains("unknown field `shedule`"),
            "{messages:#?}"
        );
        assert!(
            messages[1].starts_with("Some(\"a\")") && messages[1].contains("retries"),
            "{messages:#?}"
        );
        assert!(
            messages[2].contains("tasks[1]") && messages[2].contains("missing field `id`"),
            "{messages:#?}"
        );
        assert_eq!(parsed.tasks.len(), 1);
    }

    #[test]
    fn durations_accept_text_and_seconds() {
        let spec: RetrySpec = serde_json::from_value(
            serde_json::json!({"retry_delay": "1m 30s", "execution_timeout": 5}),
        )
        .unwrap();
        assert_eq!(
            spec.retry_delay,
            Some(HumanDuration(std::time::Duration::from_secs(90)))
        );
        assert_eq!(
            spec.execution_timeout,
            Some(HumanDuration(std::time::Duration::from_secs(5)))
        );
        let err =
            serde_json::from_value::<RetrySpec>(serde_json::json!({"retry_delay": "5 parsecs"}))
                .unwrap_err();
        assert!(
            err.to_string().contains("`5 parsecs` is not a duration"),
            "{err}"
        );
    }
}
