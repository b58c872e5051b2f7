//! Cron means what it means to Airflow: the next 20 fire times of every expression in
//! `fixtures/cron/corpus.txt`, in every timezone and from every start the corpus gives it, are
//! the instants croniter (the library Airflow's cron timetables use) computes. The few
//! deliberate differences are listed in `fixtures/cron/differences.txt`, each with its reason,
//! and checked to be exactly what is written there. Expressions both refuse are in
//! `fixtures/cron/errors.txt` with what sluice's error must say.
//!
//! croniter comes from PyPI, pinned, into its own virtualenv (`.dev/croniter-venv`, made by
//! `scripts/py-venv`, never the system Python); `fixtures/cron/croniter_times.py` prints its
//! times as JSON.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use serde_json::{json, Value};
use sluice_core::schedule::{parse_timezone, Schedule};

/// The croniter release compared against, and its one dependency, pinned.
const CRONITER: &[&str] = &["croniter==7.0.0", "python-dateutil==4.0.0"];
/// Fire times compared per expression and context.
const N: usize = 20;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/cron")
}

/// One expression checked in one timezone from one start.
#[derive(Debug, Clone)]
struct Case {
    line: usize,
    expr: String,
    /// A documented difference that applies (`EXPRESSION | RULE`).
    rule: Option<String>,
    tz: String,
    start: DateTime<Utc>,
}

impl Case {
    fn label(&self) -> String {
        format!(
            "corpus.txt:{} `{}` in {} after {}",
            self.line,
            self.expr,
            self.tz,
            self.start.to_rfc3339()
        )
    }
}

fn parse_start(text: &str, line: usize) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .unwrap_or_else(|e| panic!("line {line}: start `{text}`: {e}"))
        .with_timezone(&Utc)
}

/// The corpus: `> ZONE START` lines make the contexts of the expressions below them.
fn corpus() -> Vec<Case> {
    let text = std::fs::read_to_string(fixtures().join("corpus.txt")).unwrap();
    let mut cases = Vec::new();
    let mut contexts: Vec<(String, DateTime<Utc>)> = Vec::new();
    let mut in_context_run = false;
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        let raw = raw.trim();
        if raw.is_empty() || raw.starts_with('#') {
            continue;
        }
        if let Some(context) = raw.strip_prefix('>') {
            if !in_context_run {
                contexts.clear();
            }
            in_context_run = true;
            let (tz, start) = context
                .trim()
                .split_once(char::is_whitespace)
                .unwrap_or_else(|| panic!("corpus.txt:{line}: `> ZONE START`"));
            parse_timezone(tz).unwrap_or_else(|e| panic!("corpus.txt:{line}: {e}"));
            contexts.push((tz.to_string(), parse_start(start.trim(), line)));
            continue;
        }
        in_context_run = false;
        assert!(
            !contexts.is_empty(),
            "corpus.txt:{line}: an expression before any `>` context"
        );
        let (expr, rule) = match raw.split_once('|') {
            Some((expr, rule)) => (expr.trim(), Some(rule.trim().to_string())),
            None => (raw, None),
        };
        for (tz, start) in &contexts {
            cases.push(Case {
                line,
                expr: expr.to_string(),
                rule: rule.clone(),
                tz: tz.clone(),
                start: *start,
            });
        }
    }
    cases
}

/// croniter's answer for one case: its fire times, or why it refused.
#[derive(Debug, Clone, PartialEq)]
enum Answer {
    Times(Vec<String>),
    Error(String),
}

/// Runs croniter once for all cases (one Python process: croniter is quick, startup is not).
fn croniter(cases: &[(String, String, DateTime<Utc>)]) -> Vec<Answer> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let venv = Command::new(root.join("scripts/py-venv"))
        .arg("croniter")
        .args(CRONITER)
        .stderr(Stdio::inherit())
        .output()
        .expect("scripts/py-venv runs");
    assert!(
        venv.status.success(),
        "scripts/py-venv could not make the croniter virtualenv"
    );
    let venv = PathBuf::from(String::from_utf8(venv.stdout).unwrap().trim());
    let input: Vec<Value> = cases
        .iter()
        .map(|(expr, tz, start)| {
            json!({"expr": expr, "tz": tz, "start": start.to_rfc3339(), "n": N})
        })
        .collect();
    let mut child = Command::new(venv.join("bin/python"))
        .arg(fixtures().join("croniter_times.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the croniter virtualenv's python starts");
    // Written from a thread: the output is read while the input is still going in.
    let mut stdin = child.stdin.take().unwrap();
    let input = serde_json::to_vec(&input).unwrap();
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        stdin.write_all(&input).unwrap();
    });
    let output = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(output.status.success(), "croniter_times.py failed");
    let answer: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        answer["croniter"],
        CRONITER[0].trim_start_matches("croniter=="),
        "the virtualenv holds another croniter"
    );
    answer["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|result| match result.get("times") {
            Some(times) => Answer::Times(
                times
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|t| t.as_str().unwrap().to_string())
                    .collect(),
            ),
            None => Answer::Error(result["error"].as_str().unwrap().to_string()),
        })
        .collect()
}

/// sluice's answer for one case, in croniter's terms.
fn sluice(expr: &str, tz: &str, start: DateTime<Utc>) -> Answer {
    let tz: Tz = parse_timezone(tz).unwrap();
    match expr.parse::<Schedule>() {
        Ok(schedule) => {
            let times = schedule.next_fire_times(tz, start, N);
            if times.is_empty() {
                return Answer::Error("no fire time".into());
            }
            Answer::Times(
                times
                    .iter()
                    .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
                    .collect(),
            )
        }
        Err(e) => Answer::Error(e),
    }
}

fn show(answer: &Answer) -> String {
    match answer {
        Answer::Times(times) => times.join(" "),
        Answer::Error(e) => format!("error: {e}"),
    }
}

/// A deliberate difference, as `differences.txt` writes it.
#[derive(Debug)]
struct Difference {
    line: usize,
    expr: String,
    tz: String,
    start: DateTime<Utc>,
    reason: String,
    sluice: Answer,
    croniter: Answer,
}

/// `differences.txt`: `rule NAME: REASON` lines, and blocks of `expr:`, `zone:`, `start:`,
/// `reason:`, `sluice:` and `croniter:` lines; a times line lists the first fire times or
/// `error <part of the message>`. Returns the rules (name to reason) and the blocks.
fn differences() -> (BTreeMap<String, String>, Vec<Difference>) {
    let text = std::fs::read_to_string(fixtures().join("differences.txt")).unwrap();
    let mut rules = BTreeMap::new();
    let mut out = Vec::new();
    let mut fields: BTreeMap<&str, (usize, String)> = BTreeMap::new();
    let mut flush = |fields: &mut BTreeMap<&str, (usize, String)>| {
        if fields.is_empty() {
            return;
        }
        let get = |key: &str| {
            fields
                .get(key)
                .cloned()
                .unwrap_or_else(|| panic!("differences.txt: a block without `{key}:`"))
        };
        let answer = |(line, text): (usize, String)| match text.strip_prefix("error ") {
            Some(fragment) => Answer::Error(fragment.trim().to_string()),
            None => {
                assert!(!text.is_empty(), "differences.txt:{line}: no times");
                Answer::Times(text.split_whitespace().map(str::to_string).collect())
            }
        };
        let (line, expr) = get("expr");
        let (start_line, start) = get("start");
        out.push(Difference {
            line,
            expr,
            tz: get("zone").1,
            start: parse_start(&start, start_line),
            reason: get("reason").1,
            sluice: answer(get("sluice")),
            croniter: answer(get("croniter")),
        });
        fields.clear();
    };
    for (index, raw) in text.lines().enumerate() {
        let raw = raw.trim();
        if raw.starts_with('#') {
            continue;
        }
        if raw.is_empty() {
            flush(&mut fields);
            continue;
        }
        if let Some(rule) = raw.strip_prefix("rule ") {
            let (name, reason) = rule
                .split_once(':')
                .unwrap_or_else(|| panic!("differences.txt:{}: `rule NAME: REASON`", index + 1));
            rules.insert(name.trim().to_string(), reason.trim().to_string());
            continue;
        }
        let (key, value) = raw
            .split_once(':')
            .unwrap_or_else(|| panic!("differences.txt:{}: `key: value`", index + 1));
        let key = match key.trim() {
            k @ ("expr" | "zone" | "start" | "reason" | "sluice" | "croniter") => k,
            other => panic!("differences.txt:{}: unknown key `{other}`", index + 1),
        };
        fields.insert(key, (index + 1, value.trim().to_string()));
    }
    flush(&mut fields);
    (rules, out)
}

/// Whether `actual` is what a difference block says: the listed first fire times, or an
/// error containing the fragment.
fn matches_documented(actual: &Answer, documented: &Answer) -> bool {
    match (actual, documented) {
        (Answer::Error(e), Answer::Error(fragment)) => e.contains(fragment.as_str()),
        (Answer::Times(times), Answer::Times(listed)) => times.starts_with(listed),
        _ => false,
    }
}

/// The rule `once-in-repeated-hour` applied to croniter's times: a time whose wall-clock
/// reading in `tz` repeats an earlier one of the list is dropped.
fn once_per_wall_clock(times: &[String], tz: &str) -> Vec<String> {
    let tz: Tz = parse_timezone(tz).unwrap();
    let mut seen = std::collections::BTreeSet::new();
    times
        .iter()
        .filter(|t| {
            let instant = DateTime::parse_from_rfc3339(t).unwrap().with_timezone(&tz);
            seen.insert(instant.naive_local())
        })
        .cloned()
        .collect()
}

/// Whether sluice's answer is croniter's with `rule` applied; `None` for an unknown rule.
fn follows_rule(rule: &str, ours: &Answer, theirs: &Answer, tz: &str) -> Option<bool> {
    match rule {
        "once-in-repeated-hour" => Some(match (ours, theirs) {
            (Answer::Times(ours), Answer::Times(theirs)) => {
                // Dropping times shortens croniter's list: compare as far as it goes.
                ours.starts_with(&once_per_wall_clock(theirs, tz))
            }
            _ => false,
        }),
        _ => None,
    }
}

#[test]
fn next_fire_times_match_croniter_for_every_corpus_expression() {
    let cases = corpus();
    let expressions: std::collections::BTreeSet<&str> =
        cases.iter().map(|c| c.expr.as_str()).collect();
    assert!(
        expressions.len() >= 200,
        "the corpus has only {} distinct expressions",
        expressions.len()
    );
    let (rules, documented) = differences();
    let mut all: Vec<(String, String, DateTime<Utc>)> = cases
        .iter()
        .map(|c| (c.expr.clone(), c.tz.clone(), c.start))
        .collect();
    all.extend(
        documented
            .iter()
            .map(|d| (d.expr.clone(), d.tz.clone(), d.start)),
    );
    let answers = croniter(&all);
    let (corpus_answers, difference_answers) = answers.split_at(cases.len());

    let mut failures = Vec::new();
    // Lines whose rule made a difference somewhere: a rule that never matters is stale.
    let mut rule_mattered = std::collections::BTreeSet::new();
    for (case, theirs) in cases.iter().zip(corpus_answers) {
        let ours = sluice(&case.expr, &case.tz, case.start);
        let fine = match &case.rule {
            None => &ours == theirs,
            Some(rule) => {
                assert!(
                    rules.contains_key(rule),
                    "corpus.txt:{}: rule `{rule}` is not in differences.txt",
                    case.line
                );
                if &ours != theirs {
                    rule_mattered.insert(case.line);
                }
                follows_rule(rule, &ours, theirs, &case.tz)
                    .unwrap_or_else(|| panic!("the test does not know rule `{rule}`"))
            }
        };
        if !fine {
            failures.push(format!(
                "{}{}\n    sluice:   {}\n    croniter: {}",
                case.label(),
                case.rule
                    .as_ref()
                    .map(|r| format!(" (with rule {r})"))
                    .unwrap_or_default(),
                show(&ours),
                show(theirs)
            ));
        }
    }
    for case in cases.iter().filter(|c| c.rule.is_some()) {
        if !rule_mattered.contains(&case.line) {
            failures.push(format!(
                "corpus.txt:{} `{}`: rule {} never made a difference (remove the mark)",
                case.line,
                case.expr,
                case.rule.as_deref().unwrap_or_default()
            ));
            rule_mattered.insert(case.line);
        }
    }
    for (difference, theirs) in documented.iter().zip(difference_answers) {
        let ours = sluice(&difference.expr, &difference.tz, difference.start);
        let label = format!(
            "differences.txt:{} `{}` in {} after {} ({})",
            difference.line,
            difference.expr,
            difference.tz,
            difference.start.to_rfc3339(),
            difference.reason
        );
        if ours == *theirs {
            failures.push(format!(
                "{label}\n    no longer differs: both give {}",
                show(&ours)
            ));
        } else if !matches_documented(&ours, &difference.sluice)
            || !matches_documented(theirs, &difference.croniter)
        {
            failures.push(format!(
                "{label}\n    differs otherwise than documented:\n    sluice:   {}\n    croniter: {}",
                show(&ours),
                show(theirs)
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ from croniter {}:\n{}",
        failures.len(),
        all.len(),
        CRONITER[0],
        failures.join("\n")
    );
    eprintln!(
        "{} distinct expressions, {} cases of {N} fire times each: as croniter's, {} under a documented rule; {} documented differences hold",
        expressions.len(),
        cases.len(),
        cases.iter().filter(|c| c.rule.is_some()).count(),
        documented.len()
    );
}

#[test]
fn expressions_croniter_refuses_are_refused_with_the_field_named() {
    let text = std::fs::read_to_string(fixtures().join("errors.txt")).unwrap();
    let bad: Vec<(usize, &str, &str)> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .map(|(index, l)| {
            let (expr, fragment) = l
                .rsplit_once(" | ")
                .unwrap_or_else(|| panic!("errors.txt:{}: `EXPRESSION | PART`", index + 1));
            (index + 1, expr.trim(), fragment.trim())
        })
        .collect();
    assert!(bad.len() >= 20, "errors.txt has {} expressions", bad.len());
    let start = parse_start("2026-01-15T10:17:30Z", 0);
    let theirs = croniter(
        &bad.iter()
            .map(|(_, expr, _)| (expr.to_string(), "UTC".to_string(), start))
            .collect::<Vec<_>>(),
    );
    let mut failures = Vec::new();
    for ((line, expr, fragment), theirs) in bad.iter().zip(&theirs) {
        match expr.parse::<Schedule>() {
            Ok(_) => failures.push(format!("errors.txt:{line}: sluice accepts `{expr}`")),
            Err(e) => {
                // The message quotes the expression, says what is wrong, and is one line.
                if !e.contains(fragment) || !e.contains(&format!("`{expr}`")) || e.contains('\n') {
                    failures.push(format!(
                        "errors.txt:{line}: `{expr}`: the error does not say `{fragment}`: {e}"
                    ));
                }
            }
        }
        if let Answer::Times(times) = theirs {
            failures.push(format!(
                "errors.txt:{line}: croniter accepts `{expr}` ({}...): a difference for differences.txt",
                times[0]
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
