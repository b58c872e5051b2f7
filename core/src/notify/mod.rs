//! Notifications: who hears about a task's failure, retry or success, a run's failure or
//! success, and a missed SLA, through named channels (email over SMTP, a JSON webhook with a
//! Slack-compatible `text`).
//!
//! A DAG file names its channels and says which events go where:
//!
//! ```yaml
//! channels:
//!   oncall: {email: {conn: smtp, from: sluice@example.com, to: [oncall@example.com]}}
//!   chat:   {webhook: {conn: chat_hook}}
//! on_failure: [oncall, chat]      # the run failed
//! on_sla_miss: [oncall]
//! default_args: {on_retry: [chat]}
//! tasks:
//!   - {id: load, operator: noop, on_failure: [oncall]}
//! ```
//!
//! Effects: a notification is rendered when its event is recorded and put in the store's
//! outbox under an id made of the event (run, task, try, event, channel), so recording it
//! again (a driver that resumes, the sweep at the run's end) never queues it twice. A
//! scheduler sends it ([`send::Notifier`]), retrying with backoff; a channel that is down
//! never changes the run's outcome. Delivery is at least once: a process that dies after
//! sending and before recording it sends it again; webhooks carry the id as
//! `Idempotency-Key` for receivers that care.

pub mod send;

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::state::TaskState;
use crate::store::DagRun;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    /// A task failed for good (no retries left, or not retryable, or stopped).
    TaskFailed,
    /// A task's try failed and another is coming.
    TaskRetry,
    /// A task succeeded.
    TaskSucceeded,
    /// A task succeeded with warnings (a `check` whose `warn` checks failed).
    TaskWarned,
    /// The run failed.
    RunFailed,
    /// The run succeeded.
    RunSucceeded,
    /// The run had not finished when its SLA ran out.
    SlaMissed,
}

impl Event {
    /// The name in notifications and the store.
    pub fn as_str(self) -> &'static str {
        match self {
            Event::TaskFailed => "task_failed",
            Event::TaskRetry => "task_retry",
            Event::TaskSucceeded => "task_succeeded",
            Event::TaskWarned => "task_warned",
            Event::RunFailed => "run_failed",
            Event::RunSucceeded => "run_succeeded",
            Event::SlaMissed => "sla_missed",
        }
    }
}

/// A channel as written in a DAG file's `channels:`: `email:` or `webhook:`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelFile {
    /// An email over SMTP.
    #[serde(default)]
    pub email: Option<EmailSpec>,
    /// A JSON POST.
    #[serde(default)]
    pub webhook: Option<WebhookSpec>,
}

impl ChannelFile {
    /// The channel, when exactly one kind is given.
    pub fn channel(&self) -> Result<ChannelSpec, String> {
        match (&self.email, &self.webhook) {
            (Some(email), None) => Ok(ChannelSpec::Email(email.clone())),
            (None, Some(hook)) => Ok(ChannelSpec::Webhook(hook.clone())),
            _ => Err("give exactly one of `email:` or `webhook:`".into()),
        }
    }
}

/// A notification channel.
#[derive(Debug, Clone, PartialEq)]
pub enum ChannelSpec {
    /// An email over SMTP.
    Email(EmailSpec),
    /// A JSON POST.
    Webhook(WebhookSpec),
}

/// `email:` — sent through the SMTP server of a connection.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailSpec {
    /// Connection id of the SMTP server: `SLUICE_CONN_<ID>=smtps://user:password@host:465`,
    /// or `smtp://host:587?tls=required` (STARTTLS), or `smtp://host:25` (plain).
    pub conn: String,
    /// The sender address.
    pub from: String,
    /// The recipients.
    pub to: Vec<String>,
    /// Subject template (default: `[sluice] {{ title }}`).
    #[serde(default)]
    pub subject: Option<String>,
    /// Body template (default: what happened, where, and why).
    #[serde(default)]
    pub body: Option<String>,
}

/// `webhook:` — a JSON POST to the URL of a connection.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSpec {
    /// Connection id of the URL: `SLUICE_CONN_<ID>=https://hooks.slack.com/services/…` (the
    /// URL is a secret: it is never shown).
    pub conn: String,
    /// Template of the payload's `text` field (default: one line saying what happened).
    #[serde(default)]
    pub text: Option<String>,
}

/// The event names of `on_failure:`-style fields, and the channels they go to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskNotify {
    /// Channels told when the task fails for good.
    pub on_failure: Vec<String>,
    /// Channels told when a try fails and is retried.
    pub on_retry: Vec<String>,
    /// Channels told when the task succeeds.
    pub on_success: Vec<String>,
    /// Channels told when the task succeeds with warnings (failed `warn` checks).
    pub on_warning: Vec<String>,
}

/// A DAG's channels and who hears about its runs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DagNotify {
    /// The channels by name.
    pub channels: BTreeMap<String, ChannelSpec>,
    /// Channels told when a run fails.
    pub on_failure: Vec<String>,
    /// Channels told when a run succeeds.
    pub on_success: Vec<String>,
    /// Channels told when a run misses its SLA.
    pub on_sla_miss: Vec<String>,
}

const DEFAULT_SUBJECT: &str = "[sluice] {{ title }}";
const DEFAULT_BODY: &str = "{{ title }}\n\nDAG:           {{ dag_id }}\nRun:           {{ run_id }}\nData interval: {{ data_interval_start }} to {{ data_interval_end }}\n{% if task_id %}Task:          {{ task_id }} (try {{ try_number }} of {{ max_tries }})\n{% endif %}{% if reason %}Why:           {{ reason }}\n{% endif %}\nSent by sluice at {{ at }}.\n";
const DEFAULT_TEXT: &str = "{{ title }}{% if reason %}: {{ reason }}{% endif %}";

fn environment() -> minijinja::Environment<'static> {
    let mut env = minijinja::Environment::new();
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    env
}

/// Checks a notification template (at DAG load).
pub fn check_template(source: &str) -> Result<(), String> {
    environment()
        .template_from_str(source)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Checks an email address (at DAG load).
pub fn check_address(address: &str) -> Result<(), String> {
    address
        .parse::<lettre::message::Mailbox>()
        .map(|_| ())
        .map_err(|e| format!("`{address}` is not an email address: {e}"))
}

/// What a notification says: the values its templates see.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Notice {
    /// The event's name (`task_failed`, …).
    pub event: &'static str,
    /// One line: what happened to what.
    pub title: String,
    /// The DAG.
    pub dag_id: String,
    /// The run.
    pub run_id: String,
    /// The task, for task events.
    pub task_id: Option<String>,
    /// The try, for task events.
    pub try_number: Option<u32>,
    /// The most tries, for task events.
    pub max_tries: Option<u32>,
    /// Why (the failure's message, masked like every output).
    pub reason: Option<String>,
    /// The run's logical date (RFC 3339).
    pub logical_date: String,
    /// Its data interval.
    pub data_interval_start: String,
    /// Its data interval's end.
    pub data_interval_end: String,
    /// When it happened.
    pub at: String,
}

impl Notice {
    /// A task event of `run`.
    pub fn task(
        event: Event,
        run: &DagRun,
        task_id: &str,
        try_number: u32,
        max_tries: u32,
        reason: Option<&str>,
        at: DateTime<Utc>,
    ) -> Self {
        let what = match event {
            Event::TaskFailed => "failed",
            Event::TaskRetry => "failed and is retried",
            Event::TaskWarned => "succeeded with warnings",
            _ => "succeeded",
        };
        Self {
            title: format!(
                "{}.{task_id} {what} (try {try_number} of {max_tries}, run {})",
                run.dag_id, run.run_id
            ),
            task_id: Some(task_id.to_string()),
            try_number: Some(try_number),
            max_tries: Some(max_tries),
            reason: reason.map(str::to_string),
            ..Self::run(event, run, at)
        }
    }

    /// A run event of `run`.
    pub fn run(event: Event, run: &DagRun, at: DateTime<Utc>) -> Self {
        let what = match event {
            Event::RunFailed => "failed",
            Event::RunSucceeded => "succeeded",
            Event::SlaMissed => "missed its SLA",
            _ => "changed",
        };
        let time = |t: DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let interval = run.interval();
        Self {
            event: event.as_str(),
            title: format!("{} run {} {what}", run.dag_id, run.run_id),
            dag_id: run.dag_id.clone(),
            run_id: run.run_id.clone(),
            task_id: None,
            try_number: None,
            max_tries: None,
            reason: None,
            logical_date: time(run.logical_date),
            data_interval_start: time(interval.start),
            data_interval_end: time(interval.end),
            at: time(at),
        }
    }
}

/// What the outbox holds for one notification: rendered, addressed by connection id (the
/// connection's secrets are read when it is sent, never stored).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Message {
    /// An email.
    Email {
        /// SMTP connection id.
        conn: String,
        /// Sender.
        from: String,
        /// Recipients.
        to: Vec<String>,
        /// Subject (one line).
        subject: String,
        /// Plain-text body.
        body: String,
    },
    /// A JSON POST.
    Webhook {
        /// Connection id of the URL.
        conn: String,
        /// The JSON body.
        payload: serde_json::Value,
    },
}

/// Renders `template` over `notice`; a template that fails (a typo in a field name) falls
/// back to `fallback`, with the error noted: a notification is never lost to its template.
fn render(template: Option<&str>, fallback: &str, notice: &Notice) -> String {
    let env = environment();
    let source = template.unwrap_or(fallback);
    let rendered = env.template_from_str(source).and_then(|t| t.render(notice));
    match rendered {
        Ok(text) => text,
        Err(error) => {
            let plain = env
                .template_from_str(fallback)
                .and_then(|t| t.render(notice))
                .unwrap_or_else(|_| notice.title.clone());
            format!("{plain}\n(the channel's template failed: {error})")
        }
    }
}

impl ChannelSpec {
    /// The message this channel sends for `notice`.
    pub fn message(&self, notice: &Notice) -> Message {
        match self {
            ChannelSpec::Email(email) => Message::Email {
                conn: email.conn.clone(),
                from: email.from.clone(),
                to: email.to.clone(),
                // A subject is one header line: a value never starts another header.
                subject: render(email.subject.as_deref(), DEFAULT_SUBJECT, notice)
                    .replace(['\r', '\n'], " "),
                body: render(email.body.as_deref(), DEFAULT_BODY, notice),
            },
            ChannelSpec::Webhook(hook) => {
                let mut payload = serde_json::to_value(notice).unwrap_or_default();
                payload["text"] = render(hook.text.as_deref(), DEFAULT_TEXT, notice).into();
                Message::Webhook {
                    conn: hook.conn.clone(),
                    payload,
                }
            }
        }
    }
}

/// One notification in the outbox.
#[derive(Debug, Clone, PartialEq)]
pub struct Notification {
    /// Unique per event and channel: queuing it again changes nothing.
    pub id: String,
    /// The DAG.
    pub dag_id: String,
    /// The run.
    pub run_id: String,
    /// The channel's name.
    pub channel: String,
    /// The event.
    pub event: String,
    /// What is sent.
    pub message: Message,
    /// When it was queued.
    pub created_at: DateTime<Utc>,
    /// Sends tried so far.
    pub attempts: u32,
    /// When the next send may happen.
    pub next_at: DateTime<Utc>,
    /// When it was sent.
    pub sent_at: Option<DateTime<Utc>>,
    /// When sending was given up (after [`send::MAX_ATTEMPTS`]).
    pub gave_up_at: Option<DateTime<Utc>>,
    /// The last send's error.
    pub last_error: Option<String>,
}

/// The notifications of `notice` to `channels` of `notify`, with ids made of `key` (the
/// event's identity) and each channel.
pub fn notifications(
    notify: &DagNotify,
    channels: &[String],
    notice: &Notice,
    key: &str,
    at: DateTime<Utc>,
) -> Vec<Notification> {
    channels
        .iter()
        .filter_map(|name| {
            let channel = notify.channels.get(name)?;
            Some(Notification {
                id: format!("{key}/{name}"),
                dag_id: notice.dag_id.clone(),
                run_id: notice.run_id.clone(),
                channel: name.clone(),
                event: notice.event.to_string(),
                message: channel.message(notice),
                created_at: at,
                attempts: 0,
                next_at: at,
                sent_at: None,
                gave_up_at: None,
                last_error: None,
            })
        })
        .collect()
}

/// The notifications a task's change to `to` raises, if any.
#[allow(clippy::too_many_arguments)]
pub fn for_task(
    notify: &DagNotify,
    task: &TaskNotify,
    run: &DagRun,
    task_id: &str,
    try_number: u32,
    max_tries: u32,
    to: TaskState,
    reason: Option<&str>,
    output: Option<&sluice_operator_api::TaskOutput>,
    at: DateTime<Utc>,
) -> Vec<Notification> {
    // A success with warnings (a check's `warn` checks that failed) is also a warning.
    let warnings: Vec<String> = output
        .and_then(|o| o.values.get("warnings"))
        .and_then(|w| w.as_array())
        .map(|w| {
            w.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let mut out = Vec::new();
    if to == TaskState::Success && !warnings.is_empty() && !task.on_warning.is_empty() {
        let reason = warnings.join("; ");
        let notice = Notice::task(
            Event::TaskWarned,
            run,
            task_id,
            try_number,
            max_tries,
            Some(&reason),
            at,
        );
        let key = format!(
            "{}/{}/{task_id}/{try_number}/{}",
            run.dag_id,
            run.run_id,
            Event::TaskWarned.as_str()
        );
        out.extend(notifications(notify, &task.on_warning, &notice, &key, at));
    }
    let (event, channels) = match to {
        TaskState::Failed => (Event::TaskFailed, &task.on_failure),
        TaskState::UpForRetry => (Event::TaskRetry, &task.on_retry),
        TaskState::Success => (Event::TaskSucceeded, &task.on_success),
        _ => return out,
    };
    if channels.is_empty() {
        return out;
    }
    let notice = Notice::task(event, run, task_id, try_number, max_tries, reason, at);
    let key = format!(
        "{}/{}/{task_id}/{try_number}/{}",
        run.dag_id,
        run.run_id,
        event.as_str()
    );
    out.extend(notifications(notify, channels, &notice, &key, at));
    out
}

/// The notifications a run's end (or missed SLA) raises, if any.
pub fn for_run(
    notify: &DagNotify,
    run: &DagRun,
    event: Event,
    at: DateTime<Utc>,
) -> Vec<Notification> {
    let channels = match event {
        Event::RunFailed => &notify.on_failure,
        Event::RunSucceeded => &notify.on_success,
        Event::SlaMissed => &notify.on_sla_miss,
        _ => return Vec::new(),
    };
    if channels.is_empty() {
        return Vec::new();
    }
    let notice = Notice::run(event, run, at);
    // A run's end is per attempt (a cleared run ends again); an SLA is missed once per run.
    let key = match event {
        Event::SlaMissed => format!("{}/{}/{}", run.dag_id, run.run_id, event.as_str()),
        _ => format!(
            "{}/{}/attempt{}/{}",
            run.dag_id,
            run.run_id,
            run.attempt,
            event.as_str()
        ),
    };
    notifications(notify, channels, &notice, &key, at)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run() -> DagRun {
        let at = DateTime::parse_from_rfc3339("2026-11-23T10:15:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let start = at - chrono::Duration::minutes(15);
        DagRun {
            dag_id: "stats".into(),
            run_id: "scheduled__2026-11-23T10:00:00+00:00".into(),
            logical_date: start,
            data_interval_start: start,
            data_interval_end: at,
            run_type: crate::store::RunType::Scheduled,
            state: crate::state::RunState::Running,
            conf: serde_json::json!({}),
            dag_hash: "h".into(),
            created_at: at,
            started_at: Some(at),
            ended_at: None,
            backfill_max_active_runs: None,
            attempt: 1,
            sla_missed_at: None,
            note: None,
        }
    }

    fn notify() -> DagNotify {
        let mut channels = BTreeMap::new();
        channels.insert(
            "mail".to_string(),
            ChannelSpec::Email(EmailSpec {
                conn: "smtp".into(),
                from: "sluice@example.com".into(),
                to: vec!["oncall@example.com".into()],
                subject: Some("{{ dag_id }}: {{ reason }}".into()),
                body: None,
            }),
        );
        channels.insert(
            "chat".to_string(),
            ChannelSpec::Webhook(WebhookSpec {
                conn: "hook".into(),
                text: Some("{{ no_such_field }}".into()),
            }),
        );
        DagNotify {
            channels,
            on_failure: vec!["mail".into()],
            ..Default::default()
        }
    }

    #[test]
    fn a_failed_task_is_told_to_its_channels_with_what_where_and_why() {
        let task = TaskNotify {
            on_failure: vec!["mail".into(), "chat".into()],
            ..Default::default()
        };
        let at = Utc::now();
        let out = for_task(
            &notify(),
            &task,
            &run(),
            "load",
            2,
            2,
            TaskState::Failed,
            Some("line one\r\nBcc: attacker@example.com"),
            None,
            at,
        );
        assert_eq!(out.len(), 2);
        let Message::Email { subject, body, .. } = &out[0].message else {
            panic!("{out:?}")
        };
        assert_eq!(
            out[0].id,
            "stats/scheduled__2026-11-23T10:00:00+00:00/load/2/task_failed/mail"
        );
        // A value never becomes a header of its own.
        assert!(
            !subject.contains('\n') && !subject.contains('\r'),
            "{subject:?}"
        );
        assert!(body.contains("Task:          load (try 2 of 2)"), "{body}");
        assert!(
            body.contains("Data interval: 2026-11-23T10:00:00Z to 2026-11-23T10:15:00Z"),
            "{body}"
        );
        // A template that names an unknown field still sends what happened.
        let Message::Webhook { payload, .. } = &out[1].message else {
            panic!("{out:?}")
        };
        let text = payload["text"].as_str().unwrap();
        assert!(text.starts_with("stats.load failed (try 2 of 2"), "{text}");
        assert!(text.contains("the channel's template failed"), "{text}");
        assert_eq!(payload["event"], "task_failed");
        // A success nobody listens to raises nothing.
        assert!(for_task(
            &notify(),
            &task,
            &run(),
            "load",
            2,
            2,
            TaskState::Success,
            None,
            None,
            at
        )
        .is_empty());
        // A success with warnings is told to the task's on_warning channels.
        let warned = TaskNotify {
            on_warning: vec!["chat".into()],
            ..Default::default()
        };
        let output = sluice_operator_api::TaskOutput::values(
            serde_json::json!({"warnings": ["quarantined_share: measured 0.33, expected ≤ 0.1"]})
                .as_object()
                .unwrap()
                .clone(),
        );
        let out = for_task(
            &notify(),
            &warned,
            &run(),
            "check",
            1,
            1,
            TaskState::Success,
            None,
            Some(&output),
            at,
        );
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].event, "task_warned");
        let Message::Webhook { payload, .. } = &out[0].message else {
            panic!("{out:?}")
        };
        assert_eq!(
            payload["reason"],
            "quarantined_share: measured 0.33, expected ≤ 0.1"
        );
    }

    #[test]
    fn a_runs_end_is_told_once_per_attempt_and_an_sla_miss_once_per_run() {
        let mut n = notify();
        n.on_sla_miss = vec!["chat".into()];
        let at = Utc::now();
        let mut r = run();
        let first = for_run(&n, &r, Event::RunFailed, at);
        r.attempt = 2;
        let second = for_run(&n, &r, Event::RunFailed, at);
        assert_ne!(first[0].id, second[0].id);
        let sla = for_run(&n, &r, Event::SlaMissed, at);
        r.attempt = 3;
        assert_eq!(sla[0].id, for_run(&n, &r, Event::SlaMissed, at)[0].id);
        assert!(for_run(&n, &r, Event::RunSucceeded, at).is_empty());
    }
}
