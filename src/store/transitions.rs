//! Task-instance transitions as one statement for many changes.
//!
//! A scheduling pass starts or ends many tries at once (a fan-out becomes ready together,
//! tries of concurrent runs finish together). Writing them one by one costs a round trip
//! and, on PostgreSQL, a WAL flush each; this writes a batch as one `UPDATE … FROM` over a
//! `VALUES` list, where every row is still its own compare-and-set on the expected state
//! and (by the trigger of migration 0003) writes its own history row.

use sqlx::any::AnyRow;
use sqlx::AnyPool;

use super::{TaskChange, TaskKey};
use crate::state::TaskState;

/// Changes per statement: 16 bind parameters each, far under both backends' limits.
pub(super) const CHUNK: usize = 256;

/// The columns of the `VALUES` list, in bind order, with their SQL types. The casts make
/// PostgreSQL type the otherwise untyped parameters; SQLite accepts them as affinities.
const VALUE_COLUMNS: [(&str, &str); 16] = [
    ("v_dag", "TEXT"),
    ("v_run", "TEXT"),
    ("v_task", "TEXT"),
    ("v_from", "TEXT"),
    ("v_to", "TEXT"),
    ("v_at", "BIGINT"),
    ("v_starts", "BIGINT"),
    ("v_queued_at", "BIGINT"),
    ("v_started_at", "BIGINT"),
    ("v_ended_at", "BIGINT"),
    ("v_next_retry_at", "BIGINT"),
    ("v_output", "TEXT"),
    ("v_set_error", "BIGINT"),
    ("v_error", "TEXT"),
    ("v_max_tries", "BIGINT"),
    ("v_reason", "TEXT"),
];

/// The statement for `rows` changes; `returning` lists the task-instance columns to return.
pub(super) fn statement(rows: usize, returning: &str) -> String {
    let names: Vec<&str> = VALUE_COLUMNS.iter().map(|(name, _)| *name).collect();
    let values: Vec<String> = (0..rows)
        .map(|row| {
            let cells: Vec<String> = VALUE_COLUMNS
                .iter()
                .enumerate()
                .map(|(col, (_, ty))| {
                    format!("CAST(${} AS {ty})", row * VALUE_COLUMNS.len() + col + 1)
                })
                .collect();
            format!("({})", cells.join(", "))
        })
        .collect();
    format!(
        "WITH v({}) AS (VALUES {})
         UPDATE task_instance SET
            state = v_to,
            updated_at = v_at,
            try_number = task_instance.try_number + v_starts,
            queued_at = COALESCE(v_queued_at, task_instance.queued_at),
            started_at = COALESCE(v_started_at, task_instance.started_at),
            ended_at = v_ended_at,
            next_retry_at = v_next_retry_at,
            output = CASE WHEN v_to = 'pending' THEN NULL ELSE COALESCE(v_output, task_instance.output) END,
            error = CASE WHEN v_set_error = 1 THEN v_error ELSE task_instance.error END,
            max_tries = COALESCE(v_max_tries, task_instance.max_tries),
            last_reason = v_reason
         FROM v
         WHERE task_instance.dag_id = v_dag AND task_instance.run_id = v_run
           AND task_instance.task_id = v_task AND task_instance.state = v_from
         RETURNING {returning}",
        names.join(", "),
        values.join(", ")
    )
}

/// Binds one change's row, in [`VALUE_COLUMNS`] order.
fn bind<'q>(
    query: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    change: &'q TaskChange,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    let t = change.transition;
    let to = t.to();
    let at = change.at.timestamp_micros();
    let starts = t.starts_try();
    let ends = to.is_finished() || to == TaskState::UpForRetry;
    // A new try or a clear drops the last error; a failure records its own.
    let set_error = starts || t.clears() || matches!(to, TaskState::Failed | TaskState::UpForRetry);
    query
        .bind(&change.key.dag_id)
        .bind(&change.key.run_id)
        .bind(&change.key.task_id)
        .bind(t.from().as_str())
        .bind(to.as_str())
        .bind(at)
        .bind(i64::from(starts))
        .bind((to == TaskState::Queued).then_some(at))
        .bind(starts.then_some(at))
        .bind(ends.then_some(at))
        .bind(change.next_retry_at.map(|t| t.timestamp_micros()))
        .bind(change.output.as_deref())
        .bind(i64::from(set_error))
        .bind(if starts || t.clears() {
            None
        } else {
            change.reason.as_deref()
        })
        .bind(change.max_tries.map(i64::from))
        .bind(change.reason.as_deref())
}

/// Splits `changes` into statements: at most [`CHUNK`] each, and a task instance at most
/// once per statement (a second change of the same instance must see the first applied).
pub(super) fn chunks(changes: &[TaskChange]) -> Vec<&[TaskChange]> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut seen: std::collections::HashSet<&TaskKey> = std::collections::HashSet::new();
    for (i, change) in changes.iter().enumerate() {
        if i - start == CHUNK || !seen.insert(&change.key) {
            out.push(&changes[start..i]);
            start = i;
            seen.clear();
            seen.insert(&change.key);
        }
    }
    if start < changes.len() {
        out.push(&changes[start..]);
    }
    out
}

/// Runs one chunk; returns the rows of the instances that moved.
pub(super) async fn apply_chunk(
    pool: &AnyPool,
    chunk: &[TaskChange],
    returning: &str,
) -> Result<Vec<AnyRow>, sqlx::Error> {
    let sql = statement(chunk.len(), returning);
    let mut query = sqlx::query(&sql);
    for change in chunk {
        query = bind(query, change);
    }
    query.fetch_all(pool).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::TaskState::*;
    use chrono::Utc;

    fn change(task: &str, from: TaskState, to: TaskState) -> TaskChange {
        let key = TaskKey {
            dag_id: "d".into(),
            run_id: "r".into(),
            task_id: task.into(),
        };
        TaskChange::new(key, from.to(to).unwrap(), Utc::now())
    }

    #[test]
    fn the_statement_numbers_every_parameter_once() {
        let sql = statement(3, "dag_id");
        assert!(sql.contains("CAST($1 AS TEXT)"));
        assert!(sql.contains("CAST($48 AS TEXT)"));
        assert!(!sql.contains("$49"));
    }

    #[test]
    fn a_repeated_instance_starts_a_new_statement() {
        let changes = vec![
            change("a", Queued, Running),
            change("b", Queued, Running),
            change("a", Running, Success),
            change("c", Queued, Running),
        ];
        let sizes: Vec<usize> = chunks(&changes).iter().map(|c| c.len()).collect();
        assert_eq!(sizes, vec![2, 2]);
    }

    #[test]
    fn large_batches_are_cut_at_the_chunk_size() {
        let changes: Vec<TaskChange> = (0..CHUNK * 2 + 1)
            .map(|i| change(&format!("t{i}"), Pending, Queued))
            .collect();
        let sizes: Vec<usize> = chunks(&changes).iter().map(|c| c.len()).collect();
        assert_eq!(sizes, vec![CHUNK, CHUNK, 1]);
        assert!(chunks(&[]).is_empty());
    }
}
