//! Notifications as an on-call engineer gets them, from a real `sluice scheduler`: email
//! through a real SMTP server (aiosmtpd, started by `scripts/services`, read back from its
//! Maildir), webhooks to a real HTTP receiver, a channel that is down, an SLA miss and a
//! run over its `dagrun_timeout`.

#[path = "support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use serde_json::Value;

/// The messages in the test SMTP server's Maildir addressed to `to`.
fn mails_to(to: &str) -> Vec<String> {
    let maildir = std::env::var("SLUICE_TEST_MAILDIR").expect(
        "SLUICE_TEST_MAILDIR is not set: run the suite with scripts/test, or `eval \"$(scripts/services up)\"` first",
    );
    let mut mails = Vec::new();
    for entry in std::fs::read_dir(std::path::Path::new(&maildir).join("new"))
        .unwrap()
        .flatten()
    {
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        if text.contains(&format!("X-RcptTo: {to}")) {
            mails.push(text);
        }
    }
    mails
}

fn unique(name: &str) -> String {
    format!(
        "{name}-{}-{}@example.com",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
    )
}

struct Scheduler {
    dir: tempfile::TempDir,
    _process: support::Process,
}

impl Scheduler {
    fn start(dag: &str, hook: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("dags")).unwrap();
        std::fs::write(dir.path().join("dags/dag.yaml"), dag).unwrap();
        let process = support::Process(
            Self::command(dir.path(), hook)
                .arg("scheduler")
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap(),
        );
        Self {
            dir,
            _process: process,
        }
    }

    fn command(dir: &std::path::Path, hook: &str) -> std::process::Command {
        let mut cmd = support::sluice(dir);
        cmd.env(
            "SLUICE_CONN_SMTP",
            std::env::var("SLUICE_TEST_SMTP_URL").expect("SLUICE_TEST_SMTP_URL is not set"),
        )
        .env("SLUICE_CONN_HOOK", hook)
        // Nothing listens there: every send fails.
        .env("SLUICE_CONN_DOWN", "http://127.0.0.1:9/down");
        cmd
    }

    fn trigger(&self, dag_id: &str) -> String {
        let out = support::sluice(self.dir.path())
            .args(["dags", "trigger", dag_id])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        text.split_whitespace()
            .find(|w| w.starts_with("manual__"))
            .unwrap_or_else(|| panic!("no run id in {text}"))
            .to_string()
    }

    fn show(&self, run_id: &str) -> Value {
        let out = support::sluice(self.dir.path())
            .args(["runs", "show", run_id, "--json"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn finished(&self, run_id: &str, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let show = self.show(run_id);
            let state = show["run"]["state"].as_str().unwrap_or_default();
            if ["success", "failed", "cancelled"].contains(&state) {
                return show;
            }
            assert!(
                Instant::now() < deadline,
                "the run did not finish: {show:#}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

async fn until(within: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_failing_task_sends_one_email_and_one_webhook_and_a_webhook_per_retry() {
    let (hook, received) = support::receiver().await;
    let oncall = unique("oncall");
    let dag = format!(
        "dag_id: flaky\nchannels:\n  mail: {{email: {{conn: smtp, from: sluice@example.com, to: ['{oncall}'], subject: '{{{{ dag_id }}}}.{{{{ task_id }}}} {{{{ event }}}}: {{{{ reason }}}}'}}}}\n  hook: {{webhook: {{conn: hook}}}}\n  down: {{webhook: {{conn: down}}}}\non_failure: [hook]\ntasks:\n  - id: extract\n    operator: shell\n    retries: 2\n    retry_delay: 100ms\n    on_failure: [mail, hook, down]\n    on_retry: [hook]\n    config: {{command: 'echo cannot reach the source >&2; exit 3'}}\n"
    );
    let s = Scheduler::start(&dag, &hook);
    let run_id = s.trigger("flaky");
    let show = s.finished(&run_id, Duration::from_secs(20));
    // A channel that is down changes nothing of the run's outcome.
    assert_eq!(show["run"]["state"], "failed");

    // Two retries, one failure of the task, one failure of the run.
    until(Duration::from_secs(10), "the webhooks", || {
        received.events().len() >= 4
    })
    .await;
    until(Duration::from_secs(10), "the email", || {
        !mails_to(&oncall).is_empty()
    })
    .await;
    // Nothing more comes: each event was sent once.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        received.events(),
        ["run_failed", "task_failed", "task_retry", "task_retry"]
    );
    let keys: std::collections::HashSet<String> = received
        .0
        .lock()
        .unwrap()
        .iter()
        .map(|(_, k)| k.clone())
        .collect();
    assert_eq!(keys.len(), 4, "each POST carries its own idempotency key");
    let retry = received
        .0
        .lock()
        .unwrap()
        .iter()
        .find(|(b, _)| b["event"] == "task_retry")
        .map(|(b, _)| b.clone())
        .unwrap();
    assert!(
        retry["text"]
            .as_str()
            .unwrap()
            .starts_with("flaky.extract failed and is retried"),
        "a Slack-compatible text: {retry}"
    );
    assert_eq!(retry["task_id"], "extract");
    let mails = mails_to(&oncall);
    assert_eq!(mails.len(), 1, "one email per failure: {mails:#?}");
    assert!(
        mails[0].contains("Subject: flaky.extract task_failed: try 3 of 3 failed"),
        "{}",
        mails[0]
    );

    // The dead channel's notice is retried, its error kept, and it never reached anyone.
    let show = s.show(&run_id);
    let down: Vec<&Value> = show["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["channel"] == "down")
        .collect();
    assert_eq!(down.len(), 1, "{show:#}");
    assert!(down[0]["sent_at"].is_null());
    assert!(down[0]["attempts"].as_u64().unwrap() >= 1);
    assert!(
        down[0]["last_error"]
            .as_str()
            .unwrap()
            .contains("POST to connection `down` failed"),
        "{:#}",
        down[0]
    );
    assert!(
        !down[0]["last_error"]
            .as_str()
            .unwrap()
            .contains("127.0.0.1:9"),
        "a webhook's URL is a secret: {:#}",
        down[0]
    );
}

#[tokio::test]
async fn an_sla_miss_notifies_once_and_a_run_over_its_timeout_fails_with_its_tries_stopped() {
    let (hook, received) = support::receiver().await;
    let oncall = unique("sla");
    // Every minute, no catchup: the scheduler starts a run for the minute that just ended.
    // Its SLA (1 s after that minute) has run out while the task sleeps; the run stops at 4 s.
    let dag = format!(
        "dag_id: slow\nschedule: '* * * * *'\nsla: 1s\ndagrun_timeout: 4s\nchannels:\n  mail: {{email: {{conn: smtp, from: sluice@example.com, to: ['{oncall}']}}}}\n  hook: {{webhook: {{conn: hook}}}}\non_sla_miss: [mail]\non_failure: [hook]\ntasks:\n  - {{id: crunch, operator: shell, config: {{command: 'sleep 619'}}}}\n  - {{id: publish, operator: noop, depends_on: crunch}}\n"
    );
    let began = Instant::now();
    let s = Scheduler::start(&dag, &hook);
    let run_id = loop {
        let out = support::sluice(s.dir.path())
            .args(["runs", "list", "--dag", "slow", "--json"])
            .output()
            .unwrap();
        let runs: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if let Some(id) = runs.get(0).and_then(|r| r["run_id"].as_str()) {
            break id.to_string();
        }
        assert!(
            began.elapsed() < Duration::from_secs(10),
            "no scheduled run"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(run_id.starts_with("scheduled__"), "{run_id}");
    let show = s.finished(&run_id, Duration::from_secs(20));
    assert!(
        began.elapsed() < Duration::from_secs(15),
        "{:?}",
        began.elapsed()
    );
    assert_eq!(show["run"]["state"], "failed");
    assert!(
        show["run"]["sla_missed_at"].is_string(),
        "{:#}",
        show["run"]
    );
    let crunch = show["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h["task_id"] == "crunch")
        .filter_map(|h| h["reason"].as_str())
        .collect::<Vec<_>>()
        .join(" | ");
    assert!(
        crunch.contains("run stopped by its dagrun_timeout (4s)"),
        "{crunch}"
    );
    until(Duration::from_secs(10), "the SLA email", || {
        !mails_to(&oncall).is_empty()
    })
    .await;
    until(Duration::from_secs(10), "the run's failure", || {
        received.events().contains(&"run_failed".to_string())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    // The next minute's run may start meanwhile (and miss its own SLA): this run's mails.
    let mails: Vec<String> = mails_to(&oncall)
        .into_iter()
        .filter(|m| m.contains(&run_id))
        .collect();
    assert_eq!(mails.len(), 1, "an SLA miss is told once: {mails:#?}");
    assert!(mails[0].contains("missed its SLA"), "{}", mails[0]);
}
