//! From DAG file text to a validated [`Dag`], collecting every error.
//!
//! Pure: no file, network or credential I/O (the caller reads the file). Each error names
//! the file, the task (or `-`) and the field, so `sluice dags validate` output can be
//! acted on without opening the file.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use petgraph::algo::tarjan_scc;
use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::Direction;
use sluice_operator_api::{template, Registry};

use super::file::{self, RetrySpec, TaskSpec};
use super::{Dag, RetryPolicy, Task};
use crate::schedule::{parse_instant, parse_timezone, Schedule};

/// One problem in one DAG file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DagError {
    /// The file.
    pub file: PathBuf,
    /// The task concerned, if any.
    pub task: Option<String>,
    /// What is wrong, starting with the field path where there is one.
    pub message: String,
}

impl fmt::Display for DagError {
    /// `<file>: <task or ->: <message>`, the line `dags validate` prints.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {}: {}",
            self.file.display(),
            self.task.as_deref().unwrap_or("-"),
            self.message
        )
    }
}

impl std::error::Error for DagError {}

const DEFAULT_RETRY_DELAY: Duration = Duration::from_secs(300);
const DEFAULT_MAX_RETRY_DELAY: Duration = Duration::from_secs(3600);
const DEFAULT_MAX_ACTIVE: u32 = 16;
const MAX_ID_LEN: usize = 200;

/// Ids end up in paths (logs, artifacts) and URLs: keep them to a safe alphabet.
pub fn check_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("must not be empty".into());
    }
    if id.len() > MAX_ID_LEN {
        return Err(format!("is longer than {MAX_ID_LEN} characters"));
    }
    if id.starts_with('.')
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        return Err(format!(
            "`{id}` may use only letters, digits, `_`, `-` and `.` (and not start with `.`)"
        ));
    }
    Ok(())
}

struct Collector<'a> {
    file: &'a Path,
    errors: Vec<DagError>,
}

impl Collector<'_> {
    fn push(&mut self, task: Option<&str>, message: impl Into<String>) {
        self.errors.push(DagError {
            file: self.file.to_path_buf(),
            task: task.map(str::to_string),
            message: message.into(),
        });
    }
}

/// Every string in a config block with its path (`command`, `env.HOME`, `args[2]`).
fn strings_in<'v>(value: &'v serde_json::Value, path: String, out: &mut Vec<(String, &'v str)>) {
    match value {
        serde_json::Value::String(s) => out.push((path, s)),
        serde_json::Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                strings_in(item, format!("{path}[{i}]"), out);
            }
        }
        serde_json::Value::Object(map) => {
            for (key, item) in map {
                let sub = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                strings_in(item, sub, out);
            }
        }
        _ => {}
    }
}

fn retry_policy(defaults: &RetrySpec, task: &RetrySpec) -> RetryPolicy {
    RetryPolicy {
        retries: task.retries.or(defaults.retries).unwrap_or(0),
        delay: task
            .retry_delay
            .or(defaults.retry_delay)
            .map(|d| d.0)
            .unwrap_or(DEFAULT_RETRY_DELAY),
        exponential_backoff: task
            .retry_exponential_backoff
            .or(defaults.retry_exponential_backoff)
            .unwrap_or(false),
        max_delay: task
            .max_retry_delay
            .or(defaults.max_retry_delay)
            .map(|d| d.0)
            .unwrap_or(DEFAULT_MAX_RETRY_DELAY),
    }
}

/// The tasks of one cycle in order, from a strongly connected component.
fn cycle_path(graph: &DiGraph<String, ()>, component: &[NodeIndex]) -> Vec<String> {
    let members: HashSet<NodeIndex> = component.iter().copied().collect();
    let start = *component
        .iter()
        .min_by_key(|n| &graph[**n])
        .expect("components are non-empty");
    let mut path = vec![start];
    let mut seen = HashSet::from([start]);
    let mut current = start;
    // Within a strongly connected component every node reaches `start`; walk until it closes.
    loop {
        let mut next: Vec<NodeIndex> = graph
            .neighbors(current)
            .filter(|n| members.contains(n))
            .collect();
        next.sort_by_key(|n| &graph[*n]);
        let step = next
            .iter()
            .find(|n| **n == start)
            .or_else(|| next.iter().find(|n| !seen.contains(*n)))
            .or(next.first());
        match step {
            Some(&n) if n == start => break,
            Some(&n) if seen.contains(&n) => break,
            Some(&n) => {
                seen.insert(n);
                path.push(n);
                current = n;
            }
            None => break,
        }
    }
    let mut names: Vec<String> = path.iter().map(|n| graph[*n].clone()).collect();
    names.push(graph[start].clone());
    names
}

/// Kahn's algorithm preferring file order among ready tasks, so listings read like the file.
/// Only called on acyclic graphs.
fn file_order_toposort(graph: &DiGraph<String, ()>) -> Vec<NodeIndex> {
    let mut indegree: Vec<usize> = graph
        .node_indices()
        .map(|n| graph.neighbors_directed(n, Direction::Incoming).count())
        .collect();
    let mut ready: BinaryHeap<Reverse<NodeIndex>> = graph
        .node_indices()
        .filter(|n| indegree[n.index()] == 0)
        .map(Reverse)
        .collect();
    let mut order = Vec::with_capacity(graph.node_count());
    while let Some(Reverse(node)) = ready.pop() {
        order.push(node);
        for next in graph.neighbors_directed(node, Direction::Outgoing) {
            indegree[next.index()] -= 1;
            if indegree[next.index()] == 0 {
                ready.push(Reverse(next));
            }
        }
    }
    debug_assert_eq!(
        order.len(),
        graph.node_count(),
        "cycles are reported before ordering"
    );
    order
}

/// The worker queue of tasks that name none.
pub const DEFAULT_QUEUE: &str = "default";

/// Parses and validates one DAG file. Returns the DAG, or every error found in it.
///
/// The steps, each collecting its errors rather than stopping at the first: read the file
/// ([`file::parse`]), check the DAG's own settings ([`check_header`]), build each task
/// ([`build_task`]), draw the dependency graph ([`build_graph`]) and look for cycles
/// ([`report_cycles`]); only a DAG without errors is put in order ([`wire`]).
pub fn parse_dag(path: &Path, text: &str, registry: &Registry) -> Result<Dag, Vec<DagError>> {
    let mut errors = Collector {
        file: path,
        errors: Vec::new(),
    };
    let parsed = file::parse(text);
    for problem in &parsed.problems {
        errors.push(problem.task.as_deref(), problem.message.clone());
    }
    let unreadable: HashSet<&str> = parsed
        .problems
        .iter()
        .filter_map(|p| p.task.as_deref())
        .collect();
    let header = parsed.header.as_ref();
    let settings = header
        .map(|h| check_header(h, &mut errors))
        .unwrap_or_default();
    let defaults = header.map(|h| h.default_args.clone()).unwrap_or_default();

    let mut built: Vec<(Task, &TaskSpec)> = Vec::new();
    let mut first_index: HashMap<&str, usize> = HashMap::new();
    for (index, spec) in &parsed.tasks {
        let id = spec.id.as_str();
        if let Some(first) = first_index.get(id) {
            if let Err(e) = check_id(id) {
                errors.push(Some(&task_label(id, *index)), format!("id: {e}"));
            }
            errors.push(
                Some(id),
                format!("id: duplicate task id `{id}` (tasks[{first}] and tasks[{index}])"),
            );
            continue;
        }
        first_index.insert(id, *index);
        if let Some(header) = header {
            check_channel_names(
                &header.channels,
                Some(id),
                "",
                &spec.retry_spec(),
                &mut errors,
            );
        }
        if let Some(task) = build_task(*index, spec, &defaults, registry, &mut errors) {
            built.push((task, spec));
        }
    }
    let graph = build_graph(&parsed.tasks, &first_index, &unreadable, &mut errors);
    report_cycles(&graph, &mut errors);

    let Some(header) = header else {
        return Err(errors.errors);
    };
    if !errors.errors.is_empty() {
        return Err(errors.errors);
    }
    let source = super::DagSource {
        dag: text.to_string(),
        files: Default::default(),
    };
    Ok(Dag {
        dag_id: header.dag_id.clone(),
        file: path.to_path_buf(),
        hash: source.hash(),
        source: std::sync::Arc::new(source),
        description: header.description.clone(),
        schedule: settings.schedule,
        timezone: settings.timezone,
        start_date: settings.start_date,
        end_date: settings.end_date,
        catchup: header.catchup.unwrap_or(false),
        max_active_runs: header.max_active_runs.unwrap_or(DEFAULT_MAX_ACTIVE),
        max_active_tasks: header.max_active_tasks.unwrap_or(DEFAULT_MAX_ACTIVE),
        params: header
            .params
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        tags: header.tags.clone(),
        notify: std::sync::Arc::new(crate::notify::DagNotify {
            // Checked by check_notifications: every channel has exactly one kind.
            channels: header
                .channels
                .iter()
                .filter_map(|(name, file)| Some((name.clone(), file.channel().ok()?)))
                .collect(),
            on_failure: header.on_failure.clone(),
            on_success: header.on_success.clone(),
            on_sla_miss: header.on_sla_miss.clone(),
        }),
        sla: header.sla.map(|d| d.0),
        dagrun_timeout: header.dagrun_timeout.map(|d| d.0),
        tasks: wire(built, &graph),
    })
}

/// The DAG-level settings that need parsing, checked.
struct HeaderSettings {
    schedule: Schedule,
    timezone: chrono_tz::Tz,
    start_date: Option<chrono::DateTime<chrono::Utc>>,
    end_date: Option<chrono::DateTime<chrono::Utc>>,
}

impl Default for HeaderSettings {
    fn default() -> Self {
        Self {
            schedule: Schedule::Manual,
            timezone: chrono_tz::UTC,
            start_date: None,
            end_date: None,
        }
    }
}

/// Checks the DAG's own settings (id, timezone, schedule, dates, limits, default_args).
fn check_header(h: &file::DagHeader, errors: &mut Collector<'_>) -> HeaderSettings {
    check_notifications(h, errors);
    let HeaderSettings {
        mut schedule,
        mut timezone,
        mut start_date,
        mut end_date,
    } = HeaderSettings::default();
    if let Err(e) = check_id(&h.dag_id) {
        errors.push(None, format!("dag_id: {e}"));
    }
    if let Some(tz) = &h.timezone {
        match parse_timezone(tz) {
            Ok(tz) => timezone = tz,
            Err(e) => errors.push(None, format!("timezone: {e}")),
        }
    }
    if let Some(s) = &h.schedule {
        match s.parse::<Schedule>() {
            Ok(s) => schedule = s,
            Err(e) => errors.push(None, format!("schedule: {e}")),
        }
    }
    for (field, value, slot) in [
        ("start_date", &h.start_date, &mut start_date),
        ("end_date", &h.end_date, &mut end_date),
    ] {
        if let Some(text) = value {
            match parse_instant(text, timezone) {
                Ok(t) => *slot = Some(t),
                Err(e) => errors.push(None, format!("{field}: {e}")),
            }
        }
    }
    if let (Some(start), Some(end)) = (start_date, end_date) {
        if end < start {
            errors.push(
                None,
                format!(
                    "end_date: {} is before start_date {}",
                    end.to_rfc3339(),
                    start.to_rfc3339()
                ),
            );
        }
    }
    if let Schedule::Cron { .. } = &schedule {
        // An expression like `0 0 31 2 *` parses but never fires.
        if schedule
            .fire_after(timezone, start_date.unwrap_or_else(chrono::Utc::now))
            .is_none()
        {
            errors.push(None, format!("schedule: `{schedule}` never fires"));
        }
    }
    if matches!(schedule, Schedule::Once) && start_date.is_none() {
        errors.push(None, "start_date: a `@once` schedule needs a start_date");
    }
    for (field, value) in [
        ("max_active_runs", h.max_active_runs),
        ("max_active_tasks", h.max_active_tasks),
    ] {
        if value == Some(0) {
            errors.push(None, format!("{field}: must be at least 1"));
        }
    }
    if h.default_args
        .execution_timeout
        .is_some_and(|d| d.0.is_zero())
    {
        errors.push(
            None,
            "default_args.execution_timeout: must be longer than 0s",
        );
    }
    if let Some(queue) = &h.default_args.queue {
        if let Err(e) = check_id(queue) {
            errors.push(None, format!("default_args.queue: {e}"));
        }
    }
    if let (Some(delay), Some(max)) = (h.default_args.retry_delay, h.default_args.max_retry_delay) {
        if max.0 < delay.0 {
            errors.push(
                None,
                format!("default_args.max_retry_delay: {max} is shorter than retry_delay {delay}"),
            );
        }
    }
    if h.tasks.is_empty() {
        errors.push(None, "tasks: a DAG needs at least one task");
    }
    HeaderSettings {
        schedule,
        timezone,
        start_date,
        end_date,
    }
}

/// Checks that the `on_failure`/`on_retry`/`on_success` lists of a task (or of
/// `default_args`, with `prefix` `default_args.`) name channels of the DAG.
fn check_channel_names(
    channels: &std::collections::BTreeMap<String, crate::notify::ChannelFile>,
    task: Option<&str>,
    prefix: &str,
    spec: &RetrySpec,
    errors: &mut Collector<'_>,
) {
    for (field, names) in [
        ("on_failure", &spec.on_failure),
        ("on_retry", &spec.on_retry),
        ("on_success", &spec.on_success),
        ("on_warning", &spec.on_warning),
    ] {
        for name in names.iter().flatten() {
            if !channels.contains_key(name) {
                errors.push(
                    task,
                    unknown_channel(&format!("{prefix}{field}"), name, channels),
                );
            }
        }
    }
}

fn unknown_channel(
    field: &str,
    name: &str,
    channels: &std::collections::BTreeMap<String, crate::notify::ChannelFile>,
) -> String {
    let known: Vec<&str> = channels.keys().map(String::as_str).collect();
    format!(
        "{field}: unknown channel `{name}`; channels of this DAG: {}",
        if known.is_empty() {
            "none (define them under `channels:`)".to_string()
        } else {
            known.join(", ")
        }
    )
}

/// Checks the DAG's channels (connection ids, addresses, templates) and the run-level
/// `on_*` lists.
fn check_notifications(h: &file::DagHeader, errors: &mut Collector<'_>) {
    use crate::notify::{check_address, check_template, ChannelSpec};
    for (name, channel) in &h.channels {
        let at = format!("channels.{name}");
        if let Err(e) = check_id(name) {
            errors.push(None, format!("{at}: {e}"));
        }
        let channel = match channel.channel() {
            Ok(channel) => channel,
            Err(e) => {
                errors.push(None, format!("{at}: {e}"));
                continue;
            }
        };
        match &channel {
            ChannelSpec::Email(email) => {
                if let Err(e) = check_id(&email.conn) {
                    errors.push(None, format!("{at}.email.conn: {e}"));
                }
                if let Err(e) = check_address(&email.from) {
                    errors.push(None, format!("{at}.email.from: {e}"));
                }
                if email.to.is_empty() {
                    errors.push(None, format!("{at}.email.to: at least one recipient"));
                }
                for (i, to) in email.to.iter().enumerate() {
                    if let Err(e) = check_address(to) {
                        errors.push(None, format!("{at}.email.to[{i}]: {e}"));
                    }
                }
                for (field, template) in [("subject", &email.subject), ("body", &email.body)] {
                    if let Some(Err(e)) = template.as_deref().map(check_template) {
                        errors.push(None, format!("{at}.email.{field}: {e}"));
                    }
                }
            }
            ChannelSpec::Webhook(hook) => {
                if let Err(e) = check_id(&hook.conn) {
                    errors.push(None, format!("{at}.webhook.conn: {e}"));
                }
                if let Some(Err(e)) = hook.text.as_deref().map(check_template) {
                    errors.push(None, format!("{at}.webhook.text: {e}"));
                }
            }
        }
    }
    for (field, names) in [
        ("on_failure", &h.on_failure),
        ("on_success", &h.on_success),
        ("on_sla_miss", &h.on_sla_miss),
    ] {
        for name in names {
            if !h.channels.contains_key(name) {
                errors.push(None, unknown_channel(field, name, &h.channels));
            }
        }
    }
    check_channel_names(&h.channels, None, "default_args.", &h.default_args, errors);
    for (field, value) in [("sla", h.sla), ("dagrun_timeout", h.dagrun_timeout)] {
        if value.is_some_and(|d| d.0.is_zero()) {
            errors.push(None, format!("{field}: must be longer than 0s"));
        }
    }
}

/// How an error names a task whose id may be empty: its id, or its place in the file.
fn task_label(id: &str, index: usize) -> String {
    if id.is_empty() {
        format!("tasks[{index}]")
    } else {
        id.to_string()
    }
}

/// Checks one task (id, templates, pool, timeouts, retries) and builds its operator from its
/// config. `None` when the operator is unknown or its config does not build.
fn build_task(
    index: usize,
    spec: &TaskSpec,
    defaults: &RetrySpec,
    registry: &Registry,
    errors: &mut Collector<'_>,
) -> Option<Task> {
    let id = spec.id.as_str();
    if let Err(e) = check_id(id) {
        errors.push(Some(&task_label(id, index)), format!("id: {e}"));
    }
    let config = spec.config.clone().unwrap_or_else(|| serde_json::json!({}));
    let mut strings = Vec::new();
    strings_in(&config, String::new(), &mut strings);
    for (field, text) in strings {
        if let Err(e) = template::check(text) {
            errors.push(Some(id), format!("config.{field}: {}", e.message));
        }
        for task in template::upstream_references(text) {
            if !spec.depends_on.0.contains(&task) {
                errors.push(
                    Some(id),
                    format!(
                        "config.{field}: `upstream.{task}`: `{task}` is not a direct upstream task of `{id}` (depends_on: {})",
                        if spec.depends_on.0.is_empty() { "none".to_string() } else { spec.depends_on.0.join(", ") }
                    ),
                );
            }
        }
    }
    if let Some(pool) = &spec.pool {
        if let Err(e) = check_id(pool) {
            errors.push(Some(id), format!("pool: {e}"));
        }
    }
    if let Some(queue) = &spec.queue {
        if let Err(e) = check_id(queue) {
            errors.push(Some(id), format!("queue: {e}"));
        }
    }
    let own = spec.retry_spec();
    if own.execution_timeout.is_some_and(|d| d.0.is_zero()) {
        errors.push(Some(id), "execution_timeout: must be longer than 0s");
    }
    let policy = retry_policy(defaults, &own);
    if (own.retry_delay.is_some() || own.max_retry_delay.is_some())
        && policy.max_delay < policy.delay
    {
        errors.push(
            Some(id),
            format!(
                "max_retry_delay: {} is shorter than retry_delay {}",
                humantime::format_duration(policy.max_delay),
                humantime::format_duration(policy.delay)
            ),
        );
    }
    let built = match registry.get(&spec.operator) {
        None => {
            errors.push(
                Some(id),
                format!(
                    "operator: unknown operator `{}`; known: {}",
                    spec.operator,
                    registry.names().join(", ")
                ),
            );
            return None;
        }
        Some(kind) => match kind.build(config.clone()) {
            Ok(built) => built,
            Err(e) => {
                errors.push(Some(id), e.to_string());
                return None;
            }
        },
    };
    Some(Task {
        id: spec.id.clone(),
        operator_name: spec.operator.clone(),
        config,
        operator: built.operator,
        files: built.files,
        upstream: Vec::new(),
        downstream: Vec::new(),
        trigger_rule: spec.trigger_rule,
        retry: policy,
        execution_timeout: own
            .execution_timeout
            .or(defaults.execution_timeout)
            .map(|d| d.0),
        doc: spec.doc.clone(),
        pool: spec.pool.clone(),
        queue: spec
            .queue
            .clone()
            .or_else(|| defaults.queue.clone())
            .unwrap_or_else(|| DEFAULT_QUEUE.to_string()),
        notify: crate::notify::TaskNotify {
            on_failure: own
                .on_failure
                .clone()
                .or_else(|| defaults.on_failure.clone())
                .unwrap_or_default(),
            on_retry: own
                .on_retry
                .clone()
                .or_else(|| defaults.on_retry.clone())
                .unwrap_or_default(),
            on_success: own
                .on_success
                .clone()
                .or_else(|| defaults.on_success.clone())
                .unwrap_or_default(),
            on_warning: own
                .on_warning
                .clone()
                .or_else(|| defaults.on_warning.clone())
                .unwrap_or_default(),
        },
    })
}

/// The dependency graph over every task with a readable id (even those whose config failed,
/// so a cycle through them is still reported), with errors for unknown and repeated
/// dependencies.
fn build_graph(
    tasks: &[(usize, TaskSpec)],
    first_index: &HashMap<&str, usize>,
    unreadable: &HashSet<&str>,
    errors: &mut Collector<'_>,
) -> DiGraph<String, ()> {
    let mut graph: DiGraph<String, ()> = DiGraph::new();
    let mut node_of: BTreeMap<&str, NodeIndex> = BTreeMap::new();
    for (_, spec) in tasks {
        node_of
            .entry(spec.id.as_str())
            .or_insert_with(|| graph.add_node(spec.id.clone()));
    }
    let mut seen_edges = HashSet::new();
    let unreadable_note = if unreadable.is_empty() {
        String::new()
    } else {
        let mut labels: Vec<&str> = unreadable.iter().copied().collect();
        labels.sort();
        format!(" ({} could not be read)", labels.join(", "))
    };
    for (index, spec) in tasks {
        // A duplicated task's edges would only repeat errors about the first one.
        if first_index.get(spec.id.as_str()) != Some(index) {
            continue;
        }
        let to = node_of[spec.id.as_str()];
        for dep in &spec.depends_on.0 {
            match node_of.get(dep.as_str()) {
                Some(&from) => {
                    if seen_edges.insert((spec.id.as_str(), dep.as_str())) {
                        graph.add_edge(from, to, ());
                    } else {
                        errors.push(
                            Some(&spec.id),
                            format!("depends_on: `{dep}` is listed twice"),
                        );
                    }
                }
                None if unreadable.contains(dep.as_str()) => {}
                None => {
                    let mut known: Vec<&str> = node_of.keys().copied().collect();
                    known.retain(|k| *k != spec.id);
                    let known = if known.is_empty() {
                        "(none)".to_string()
                    } else {
                        known.join(", ")
                    };
                    errors.push(Some(&spec.id), format!("depends_on: unknown task `{dep}`; tasks in this DAG: {known}{unreadable_note}"));
                }
            }
        }
    }
    graph
}

/// One error per cycle (a self-dependency included), naming its path.
fn report_cycles(graph: &DiGraph<String, ()>, errors: &mut Collector<'_>) {
    for component in tarjan_scc(graph) {
        let self_loop = component.len() == 1 && graph.contains_edge(component[0], component[0]);
        if component.len() > 1 || self_loop {
            let path = cycle_path(graph, &component);
            errors.push(
                Some(&path[0]),
                format!("depends_on: cycle {}", path.join(" -> ")),
            );
        }
    }
}

/// The built tasks of a valid DAG in topological order (file order among equals), each with
/// the indexes of its upstream and downstream tasks.
fn wire(built: Vec<(Task, &TaskSpec)>, graph: &DiGraph<String, ()>) -> Vec<Task> {
    let order = file_order_toposort(graph);
    let position: HashMap<&str, usize> = order
        .iter()
        .enumerate()
        .map(|(i, n)| (graph[*n].as_str(), i))
        .collect();
    let mut ordered: Vec<Option<Task>> = (0..built.len()).map(|_| None).collect();
    let mut specs = Vec::with_capacity(built.len());
    for (task, spec) in built {
        ordered[position[spec.id.as_str()]] = Some(task);
        specs.push(spec);
    }
    let mut tasks: Vec<Task> = ordered
        .into_iter()
        .map(|t| t.expect("every task has a position"))
        .collect();
    for spec in specs {
        let me = position[spec.id.as_str()];
        for dep in &spec.depends_on.0 {
            let up = position[dep.as_str()];
            tasks[me].upstream.push(up);
            tasks[up].downstream.push(me);
        }
    }
    tasks
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(text: &str) -> Vec<String> {
        match parse_dag(Path::new("d.yaml"), text, &sluice_operators::basic()) {
            Ok(_) => vec![],
            Err(errors) => errors.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn a_valid_dag_is_ordered_and_wired() {
        let text = "dag_id: demo\nschedule: '*/15 * * * *'\ndefault_args: {retries: 2, retry_delay: 10s}\ntasks:\n  - {id: load, operator: noop, depends_on: [a, b]}\n  - {id: a, operator: noop}\n  - {id: b, operator: sleep, config: {duration: 1ms}, retries: 0}\n";
        let dag = parse_dag(Path::new("d.yaml"), text, &sluice_operators::basic()).unwrap();
        let ids: Vec<&str> = dag.tasks.iter().map(|t| t.id.as_str()).collect();
        assert_eq!(
            ids,
            ["a", "b", "load"],
            "file order where dependencies allow"
        );
        let load = dag.task("load").unwrap();
        assert_eq!(load.upstream.len(), 2);
        assert_eq!(load.retry.retries, 2);
        assert_eq!(dag.task("b").unwrap().retry.retries, 0);
        assert_eq!(dag.task("a").unwrap().retry.delay, Duration::from_secs(10));
        assert_eq!(
            dag.leaves().map(|t| t.id.as_str()).collect::<Vec<_>>(),
            ["load"]
        );
        assert_eq!(dag.hash.len(), 16);
    }

    #[test]
    fn every_error_is_reported_with_file_and_task() {
        let text = "dag_id: demo\nschedule: '* * *'\ntasks:\n  - {id: a, operator: nope}\n  - {id: b, operator: shell, config: {cmd: ls}}\n  - {id: c, operator: noop, depends_on: [ghost]}\n  - {id: c, operator: noop}\n";
        let all = errors(text);
        assert_eq!(all.len(), 5, "{all:#?}");
        assert!(
            all.iter().any(|e| e.starts_with("d.yaml: -: schedule:")),
            "{all:#?}"
        );
        assert!(
            all.contains(
                &"d.yaml: a: operator: unknown operator `nope`; known: noop, shell, sleep".into()
            ),
            "{all:#?}"
        );
        assert!(
            all.iter()
                .any(|e| e.starts_with("d.yaml: b: config.cmd: unknown field `cmd`")),
            "{all:#?}"
        );
        assert!(all
            .iter()
            .any(|e| e.starts_with("d.yaml: c: depends_on: unknown task `ghost`")));
        assert!(all
            .iter()
            .any(|e| e.starts_with("d.yaml: c: id: duplicate task id `c`")));
    }

    #[test]
    fn cycles_name_their_tasks_in_order() {
        let text = "dag_id: demo\ntasks:\n  - {id: a, operator: noop, depends_on: [c]}\n  - {id: b, operator: noop, depends_on: [a]}\n  - {id: c, operator: noop, depends_on: [b]}\n  - {id: d, operator: noop, depends_on: [d]}\n";
        let all = errors(text);
        assert!(
            all.contains(&"d.yaml: a: depends_on: cycle a -> b -> c -> a".to_string()),
            "{all:#?}"
        );
        assert!(
            all.contains(&"d.yaml: d: depends_on: cycle d -> d".to_string()),
            "{all:#?}"
        );
    }
}
