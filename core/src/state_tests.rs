//! Exhaustive tests of the task state machine and trigger-rule readiness.

use super::*;

/// The state machine in words, written independently of the `ALLOWED` table.
fn expected_allowed(from: TaskState, to: TaskState) -> bool {
    match (from, to) {
        // any unfinished state may be cancelled
        (f, Cancelled) => !f.is_finished(),
        // a finished task may be cleared for a new attempt
        (f, Pending) => f.is_finished(),
        // or marked success or failed by a person
        (f, Success | Failed) if f.is_finished() => f != to,
        // pending is decided by the trigger rule
        (Pending, Queued | Skipped | UpstreamFailed) => true,
        (Queued, Running) => true,
        // a running try ends one of three ways
        (Running, Success | Failed | UpForRetry) => true,
        // a retry goes back to the queue after its delay
        (UpForRetry, Queued) => true,
        _ => false,
    }
}

#[test]
fn every_state_pair_is_allowed_exactly_when_the_rules_say() {
    let mut allowed = 0;
    for from in TASK_STATES {
        for to in TASK_STATES {
            let result = from.to(to);
            assert_eq!(result.is_ok(), expected_allowed(from, to), "{from} -> {to}");
            if let Ok(t) = result {
                allowed += 1;
                assert_eq!((t.from(), t.to()), (from, to));
                assert_eq!(t.starts_try(), to == Running);
            } else {
                assert_eq!(
                    result.unwrap_err().to_string(),
                    format!("illegal task state transition {from} -> {to}")
                );
            }
        }
    }
    assert_eq!(allowed, ALLOWED.len());
}

#[test]
fn finished_states_only_leave_through_a_clear_or_a_mark() {
    for from in TASK_STATES.into_iter().filter(|s| s.is_finished()) {
        for to in TASK_STATES {
            let mark = matches!(to, Success | Failed) && to != from;
            assert_eq!(from.to(to).is_ok(), to == Pending || mark, "{from} -> {to}");
            if let Ok(t) = from.to(to) {
                assert_eq!(t.clears(), to == Pending);
            }
        }
    }
}

#[test]
fn state_names_round_trip() {
    for state in TASK_STATES {
        assert_eq!(state.as_str().parse::<TaskState>().unwrap(), state);
        assert_eq!(serde_json::to_value(state).unwrap(), state.as_str());
    }
    for state in RUN_STATES {
        assert_eq!(state.as_str().parse::<RunState>().unwrap(), state);
    }
    for (rule, name) in TRIGGER_RULES {
        assert_eq!(name.parse::<TriggerRule>().unwrap(), rule);
        assert_eq!(rule.as_str(), name);
    }
    assert!("all_sucess"
        .parse::<TriggerRule>()
        .unwrap_err()
        .contains("none_failed_min_one_success"));
    assert!("zombie".parse::<TaskState>().is_err());
}

#[test]
fn run_transitions_follow_the_table() {
    for from in RUN_STATES {
        for to in RUN_STATES {
            let expected = match (from, to) {
                (RunState::Queued, RunState::Running) => true,
                // A queued run stopped before it started.
                (RunState::Queued, RunState::Failed) => true,
                (f, RunState::Cancelled) => !f.is_finished(),
                (RunState::Running, RunState::Success | RunState::Failed) => true,
                (f, RunState::Queued) => f.is_finished(),
                (f, RunState::Success | RunState::Failed) if f.is_finished() => f != to,
                _ => false,
            };
            assert_eq!(from.check(to).is_ok(), expected, "{from} -> {to}");
        }
    }
}

/// Trigger rules restated over the list of upstream states, independently of `readiness`:
/// what the rule needs once everything is known, and whether it is already certain.
fn reference(rule: TriggerRule, ups: &[TaskState]) -> Readiness {
    let is_success = |s: &TaskState| *s == Success;
    let is_skip = |s: &TaskState| *s == Skipped;
    let is_fail = |s: &TaskState| matches!(s, Failed | UpstreamFailed | Cancelled);
    let unfinished = ups.iter().any(|s| !s.is_finished());
    if ups.is_empty() {
        return Readiness::Run;
    }
    match rule {
        TriggerRule::Always => Readiness::Run,
        TriggerRule::AllSuccess if ups.iter().any(is_fail) => Readiness::UpstreamFailed,
        TriggerRule::AllSuccess if ups.iter().any(is_skip) => Readiness::Skip,
        TriggerRule::AllSuccess if ups.iter().all(is_success) => Readiness::Run,
        TriggerRule::AllDone if !unfinished => Readiness::Run,
        TriggerRule::AllFailed if ups.iter().any(|s| is_success(s) || is_skip(s)) => {
            Readiness::Skip
        }
        TriggerRule::AllFailed if ups.iter().all(is_fail) => Readiness::Run,
        TriggerRule::OneSuccess if ups.iter().any(is_success) => Readiness::Run,
        TriggerRule::OneSuccess if !unfinished && ups.iter().all(is_skip) => Readiness::Skip,
        TriggerRule::OneSuccess if !unfinished => Readiness::UpstreamFailed,
        TriggerRule::OneFailed if ups.iter().any(is_fail) => Readiness::Run,
        TriggerRule::OneFailed if !unfinished => Readiness::Skip,
        TriggerRule::NoneFailed if ups.iter().any(is_fail) => Readiness::UpstreamFailed,
        TriggerRule::NoneFailed if !unfinished => Readiness::Run,
        TriggerRule::NoneFailedMinOneSuccess if ups.iter().any(is_fail) => {
            Readiness::UpstreamFailed
        }
        TriggerRule::NoneFailedMinOneSuccess if !unfinished && ups.iter().any(is_success) => {
            Readiness::Run
        }
        TriggerRule::NoneFailedMinOneSuccess if !unfinished => Readiness::Skip,
        _ => Readiness::Wait,
    }
}

#[test]
fn every_rule_agrees_with_the_reference_on_every_upstream_mix_up_to_three() {
    let mut mixes: Vec<Vec<TaskState>> = vec![vec![]];
    for len in 1..=3 {
        let mut index = vec![0usize; len];
        loop {
            mixes.push(index.iter().map(|&i| TASK_STATES[i]).collect());
            let mut pos = 0;
            while pos < len {
                index[pos] += 1;
                if index[pos] < TASK_STATES.len() {
                    break;
                }
                index[pos] = 0;
                pos += 1;
            }
            if pos == len {
                break;
            }
        }
    }
    assert_eq!(mixes.len(), 1 + 9 + 81 + 729);
    for (rule, name) in TRIGGER_RULES {
        for mix in &mixes {
            let got = readiness(rule, UpstreamSummary::of(mix.iter().copied()));
            assert_eq!(got, reference(rule, mix), "{name} with upstream {mix:?}");
        }
    }
}

#[test]
fn readiness_examples_a_person_would_check() {
    let s = |states: &[TaskState]| UpstreamSummary::of(states.iter().copied());
    // default rule fails fast on one failure even while others run
    assert_eq!(
        readiness(TriggerRule::AllSuccess, s(&[Failed, Running])),
        Readiness::UpstreamFailed
    );
    assert_eq!(
        readiness(TriggerRule::AllSuccess, s(&[Success, Running])),
        Readiness::Wait
    );
    assert_eq!(
        readiness(TriggerRule::AllSuccess, s(&[Success, Success])),
        Readiness::Run
    );
    // a cleanup task runs whatever happened
    assert_eq!(
        readiness(TriggerRule::AllDone, s(&[Failed, Skipped, Success])),
        Readiness::Run
    );
    assert_eq!(
        readiness(TriggerRule::AllDone, s(&[Failed, UpForRetry])),
        Readiness::Wait
    );
    // an alert task runs on the first failure
    assert_eq!(
        readiness(TriggerRule::OneFailed, s(&[Running, Failed])),
        Readiness::Run
    );
    // a branch join: skips are fine, one success needed
    assert_eq!(
        readiness(TriggerRule::NoneFailedMinOneSuccess, s(&[Skipped, Success])),
        Readiness::Run
    );
    assert_eq!(
        readiness(TriggerRule::NoneFailedMinOneSuccess, s(&[Skipped, Skipped])),
        Readiness::Skip
    );
    // a root task is always ready
    for (rule, _) in TRIGGER_RULES {
        assert_eq!(readiness(rule, s(&[])), Readiness::Run);
    }
}

#[test]
fn run_outcome_fails_on_any_failure() {
    assert_eq!(run_outcome([Success, Skipped]), RunState::Success);
    assert_eq!(run_outcome([Success, UpstreamFailed]), RunState::Failed);
    assert_eq!(run_outcome([Cancelled, Success]), RunState::Cancelled);
    assert_eq!(run_outcome([Cancelled, Failed]), RunState::Failed);
    // an all_done cleanup that succeeded does not hide a failure upstream of it
    assert_eq!(
        run_outcome([Failed, UpstreamFailed, Success]),
        RunState::Failed
    );
}
