//! Scheduling decisions with controlled instants.

use super::*;
use crate::dag::parse_dag;
use std::path::Path;

fn dag(header: &str) -> Dag {
    let text = format!("dag_id: d\n{header}\ntasks:\n  - {{id: t, operator: noop}}\n");
    parse_dag(Path::new("d.yaml"), &text, &sluice_operators::basic()).unwrap()
}

fn utc(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .unwrap()
        .with_timezone(&Utc)
}

#[test]
fn catchup_over_two_hours_gives_eight_quarter_hours_oldest_first() {
    let d = dag("schedule: '*/15 * * * *'\ncatchup: true\nstart_date: '2026-11-23T10:00:00Z'");
    let due = due_intervals(&d, None, utc("2026-11-23T12:07:00Z"));
    assert_eq!(due.len(), 8);
    assert_eq!(
        due[0],
        DataInterval {
            start: utc("2026-11-23T10:00:00Z"),
            end: utc("2026-11-23T10:15:00Z")
        }
    );
    assert_eq!(
        due[7],
        DataInterval {
            start: utc("2026-11-23T11:45:00Z"),
            end: utc("2026-11-23T12:00:00Z")
        }
    );
    assert!(due.windows(2).all(|w| w[0].end == w[1].start), "contiguous");
    // after the first four ran, only the rest are due
    let rest = due_intervals(
        &d,
        Some(utc("2026-11-23T10:45:00Z")),
        utc("2026-11-23T12:07:00Z"),
    );
    assert_eq!(rest.first().unwrap().start, utc("2026-11-23T11:00:00Z"));
    assert_eq!(rest.len(), 4);
}

#[test]
fn without_catchup_only_the_latest_complete_interval() {
    let d = dag("schedule: '*/15 * * * *'\nstart_date: '2026-11-23T10:00:00Z'");
    let due = due_intervals(&d, None, utc("2026-11-23T12:07:00Z"));
    assert_eq!(
        due,
        vec![DataInterval {
            start: utc("2026-11-23T11:45:00Z"),
            end: utc("2026-11-23T12:00:00Z")
        }]
    );
    assert!(
        due_intervals(
            &d,
            Some(utc("2026-11-23T11:45:00Z")),
            utc("2026-11-23T12:07:00Z")
        )
        .is_empty(),
        "already has it"
    );
}

#[test]
fn start_and_end_dates_bound_the_runs() {
    let d = dag("schedule: '@hourly'\ncatchup: true\nstart_date: '2026-11-23T10:30:00Z'\nend_date: '2026-11-23T12:00:00Z'");
    let due = due_intervals(&d, None, utc("2026-11-23T20:00:00Z"));
    let starts: Vec<String> = due
        .iter()
        .map(|i| i.start.format("%H:%M").to_string())
        .collect();
    assert_eq!(starts, ["11:00", "12:00"]);
    assert!(
        due_intervals(&d, None, utc("2026-11-23T10:59:00Z")).is_empty(),
        "nothing complete yet"
    );
}

#[test]
fn daily_at_two_in_berlin_across_both_dst_changes() {
    let d = dag(
        "schedule: '0 2 * * *'\ntimezone: Europe/Berlin\ncatchup: true\nstart_date: '2026-03-27'",
    );
    let due = due_intervals(&d, None, utc("2026-03-31T12:00:00Z"));
    let starts: Vec<DateTime<Utc>> = due.iter().map(|i| i.start).collect();
    // 02:00 CET = 01:00 UTC; on 29 March 02:00 does not exist (clocks jump to 03:00): the run
    // fires at 03:00 CEST = 01:00 UTC, as croniter and Airflow do; then 02:00 CEST = 00:00 UTC
    assert_eq!(
        starts,
        [
            utc("2026-03-27T01:00:00Z"),
            utc("2026-03-28T01:00:00Z"),
            utc("2026-03-29T01:00:00Z"),
            utc("2026-03-30T00:00:00Z")
        ]
    );
    assert_eq!(
        due[2].end,
        utc("2026-03-30T00:00:00Z"),
        "the interval after the gap is 23 hours"
    );
    let autumn = dag(
        "schedule: '0 2 * * *'\ntimezone: Europe/Berlin\ncatchup: true\nstart_date: '2026-10-24'",
    );
    let due = due_intervals(&autumn, None, utc("2026-10-27T12:00:00Z"));
    let starts: Vec<DateTime<Utc>> = due.iter().map(|i| i.start).collect();
    // 25 October: 02:00 happens twice (CEST then CET); the run fires once
    assert_eq!(starts[0], utc("2026-10-24T00:00:00Z"));
    assert_eq!(starts.last().copied(), Some(utc("2026-10-26T01:00:00Z")));
    assert_eq!(starts.len(), 3, "{starts:?}");
}

#[test]
fn once_and_manual_schedules() {
    let once = dag("schedule: '@once'\nstart_date: '2026-11-23T10:00:00Z'");
    assert!(due_intervals(&once, None, utc("2026-11-23T09:00:00Z")).is_empty());
    assert_eq!(
        due_intervals(&once, None, utc("2026-11-23T10:00:00Z")).len(),
        1
    );
    assert!(due_intervals(
        &once,
        Some(utc("2026-11-23T10:00:00Z")),
        utc("2026-11-24T10:00:00Z")
    )
    .is_empty());
    let manual = dag("description: manual only");
    assert!(due_intervals(&manual, None, utc("2026-11-23T10:00:00Z")).is_empty());
    assert_eq!(next_check(&manual, utc("2026-11-23T10:00:00Z")), None);
}

fn run(logical: &str, state: RunState) -> DagRun {
    let t = utc(logical);
    DagRun {
        dag_id: "d".into(),
        run_id: format!("r{logical}"),
        logical_date: t,
        data_interval_start: t,
        data_interval_end: t,
        run_type: crate::store::RunType::Scheduled,
        state,
        conf: serde_json::json!({}),
        dag_hash: String::new(),
        created_at: t,
        started_at: None,
        ended_at: None,
        backfill_max_active_runs: None,
        attempt: 1,
        sla_missed_at: None,
        note: None,
    }
}

#[test]
fn max_active_runs_limits_starts_oldest_first() {
    let runs = vec![
        run("2026-11-23T10:30:00Z", RunState::Queued),
        run("2026-11-23T10:00:00Z", RunState::Running),
        run("2026-11-23T10:15:00Z", RunState::Queued),
        run("2026-11-23T10:45:00Z", RunState::Queued),
    ];
    let start: Vec<&str> = runs_to_start(&runs, 2)
        .iter()
        .map(|r| r.run_id.as_str())
        .collect();
    assert_eq!(start, ["r2026-11-23T10:15:00Z"]);
    assert!(runs_to_start(&runs, 1).is_empty());
    assert_eq!(runs_to_start(&runs, 16).len(), 3);
    // a backfill of old dates does not go before the live schedule
    let mut old = run("2026-01-01T00:00:00Z", RunState::Queued);
    old.run_type = crate::store::RunType::Backfill;
    let mut with_backfill = runs.clone();
    with_backfill.push(old);
    let start: Vec<&str> = runs_to_start(&with_backfill, 3)
        .iter()
        .map(|r| r.run_id.as_str())
        .collect();
    assert_eq!(start, ["r2026-11-23T10:15:00Z", "r2026-11-23T10:30:00Z"]);
    // a backfill capped at 1 active run starts one at a time, whatever the DAG allows
    let backfill: Vec<DagRun> = [
        "2026-01-01T00:00:00Z",
        "2026-01-02T00:00:00Z",
        "2026-01-03T00:00:00Z",
    ]
    .iter()
    .map(|d| DagRun {
        run_type: crate::store::RunType::Backfill,
        backfill_max_active_runs: Some(1),
        ..run(d, RunState::Queued)
    })
    .collect();
    assert_eq!(runs_to_start(&backfill, 16).len(), 1);
    let mut one_running = backfill.clone();
    one_running[0].state = RunState::Running;
    assert!(runs_to_start(&one_running, 16).is_empty());
}
