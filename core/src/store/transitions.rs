//! Task-instance transitions as one statement for many changes.
//!
//! A scheduling pass starts or ends many tries at once (a fan-out becomes ready together,
//! tries of concurrent runs finish together). Writing them one by one costs a round trip
//! and, on PostgreSQL, a WAL flush each; this writes a batch as one statement where every row
//! is still its own compare-and-set on the expected state with its own history row: on
//! SQLite an `UPDATE … FROM` over a `VALUES` list (history by the trigger of migration
//! 0003), on PostgreSQL an update over `json_to_recordset` whose data-modifying CTE inserts
//! the history rows in the same statement (migration 0006 dropped the per-row trigger).
//!
//! Across callers, changes go through one [`GroupCommit`] writer per store: while one batch
//! is being written, the changes of every run driver that arrive meanwhile queue up and are
//! written together next (group commit), so concurrent runs share round trips too.

use std::sync::Arc;

use sluice_operator_api::TaskOutput;
use sqlx::pool::PoolConnection;
use sqlx::{AnyConnection, AnyPool};
use tokio::sync::{mpsc, oneshot, Mutex};

use super::{Backend, StoreError, TaskChange, TaskKey};
use crate::state::TaskState;

/// Requests merged into one batch at most (bounds one batch's latency).
const MAX_REQUESTS: usize = 512;

/// Per change of a request: whether it was applied (`false`: its compare-and-set lost).
pub(super) type Moved = Vec<bool>;

struct Request {
    changes: Vec<TaskChange>,
    reply: oneshot::Sender<Result<Moved, StoreError>>,
}

/// The store's transition writer: a task that merges the requests waiting for it.
#[derive(Debug, Clone)]
pub(super) struct GroupCommit {
    requests: mpsc::UnboundedSender<Request>,
}

/// What the writer needs of the store.
pub(super) struct Writer {
    /// The pool to write through.
    pub pool: AnyPool,
    /// Which database (placeholder style).
    pub backend: Backend,
    /// Held while writing, on backends with one writer at a time.
    pub turn: Option<Arc<Mutex<()>>>,
}

impl GroupCommit {
    /// Starts the writer task on the current runtime; it ends when the last handle is dropped.
    pub fn start(writer: Writer) -> Self {
        let (requests, queue) = mpsc::unbounded_channel();
        tokio::spawn(writer.run(queue));
        Self { requests }
    }

    /// Writes `changes` (with those of other callers waiting at the same time). A change
    /// is applied even if the caller stops waiting; the answer then goes nowhere.
    pub async fn write(&self, changes: Vec<TaskChange>) -> Result<Moved, StoreError> {
        let (reply, answer) = oneshot::channel();
        // The writer task ended (its runtime is shutting down): not an outage to wait out.
        let gone = || StoreError::Query {
            what: "transition tasks",
            source: sqlx::Error::Protocol("the store's transition writer has stopped".into()),
        };
        self.requests
            .send(Request { changes, reply })
            .map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }
}

impl Writer {
    async fn run(self, mut queue: mpsc::UnboundedReceiver<Request>) {
        // One connection for all batches: on SQLite a connection's page cache is dropped
        // whenever another connection wrote, so rotating through the pool would re-read the
        // tables' pages on every batch.
        let mut conn: Option<PoolConnection<sqlx::Any>> = None;
        while let Some(first) = queue.recv().await {
            let mut batch = vec![first];
            while batch.len() < MAX_REQUESTS {
                match queue.try_recv() {
                    Ok(request) => batch.push(request),
                    Err(_) => break,
                }
            }
            self.write_batch(&mut conn, batch).await;
        }
    }

    /// The writer's connection. On PostgreSQL its statement may only look each change up by
    /// the primary key (a nested loop): a plan cached while `task_instance` was small (the
    /// first runs of a new store) otherwise joined every later batch against the whole table,
    /// 3 to 8 times slower once it had grown.
    async fn connect(&self) -> Result<PoolConnection<sqlx::Any>, sqlx::Error> {
        let mut conn = self.pool.acquire().await?;
        if self.backend == Backend::Postgres {
            sqlx::Executor::execute(
                &mut *conn,
                "SET enable_seqscan = off; SET enable_hashjoin = off; SET enable_mergejoin = off",
            )
            .await?;
        }
        Ok(conn)
    }

    async fn write_batch(
        &self,
        conn: &mut Option<PoolConnection<sqlx::Any>>,
        mut batch: Vec<Request>,
    ) {
        let sizes: Vec<usize> = batch.iter().map(|r| r.changes.len()).collect();
        let changes: Vec<TaskChange> = batch
            .iter_mut()
            .flat_map(|r| std::mem::take(&mut r.changes))
            .collect();
        let mut moved: Vec<bool> = vec![false; changes.len()];
        // The first change not written because a statement failed, with the error.
        let mut failed: Option<(usize, StoreError)> = None;
        {
            let _turn = match &self.turn {
                Some(turn) => Some(turn.lock().await),
                None => None,
            };
            let mut offset = 0;
            for chunk in chunks(&changes) {
                let written = match conn {
                    Some(conn) => self.write_chunk(conn, chunk).await,
                    None => match self.connect().await {
                        Ok(acquired) => self.write_chunk(conn.insert(acquired), chunk).await,
                        Err(source) => Err(StoreError::Query {
                            what: "transition tasks",
                            source,
                        }),
                    },
                };
                if written.is_err() {
                    // The connection may be broken: take a fresh one next time.
                    *conn = None;
                }
                match written {
                    Ok(applied) => moved[offset..offset + chunk.len()].copy_from_slice(&applied),
                    Err(error) => {
                        failed = Some((offset, error));
                        break;
                    }
                }
                offset += chunk.len();
            }
        }
        let mut start = 0;
        let mut moved = moved.into_iter();
        for (request, size) in batch.into_iter().zip(sizes) {
            let mine: Moved = moved.by_ref().take(size).collect();
            let answer = match &mut failed {
                Some((at, error)) if *at < start + size => {
                    // The first caller gets the driver's error; the others its message,
                    // transient if it was.
                    let message = format!("written in a batch whose statement failed: {error}");
                    let next = if error.is_transient() {
                        StoreError::Unavailable {
                            what: "transition tasks",
                            message,
                        }
                    } else {
                        StoreError::Query {
                            what: "transition tasks",
                            source: sqlx::Error::Protocol(message),
                        }
                    };
                    let error = std::mem::replace(error, next);
                    Err(error)
                }
                _ => Ok(mine),
            };
            let _ = request.reply.send(answer);
            start += size;
        }
    }

    /// Writes one chunk; returns which of its changes were applied.
    async fn write_chunk(
        &self,
        conn: &mut AnyConnection,
        chunk: &[TaskChange],
    ) -> Result<Vec<bool>, StoreError> {
        let query_error = |source| StoreError::Query {
            what: "transition tasks",
            source,
        };
        let marker = batch_marker();
        let applied = apply_chunk(&mut *conn, chunk, self.backend, marker)
            .await
            .map_err(query_error)?;
        if applied as usize == chunk.len() {
            return Ok(vec![true; chunk.len()]);
        }
        // Some instance was not in its expected state (another process or a user moved it):
        // those this statement changed carry its marker.
        let mut out = Vec::with_capacity(chunk.len());
        for change in chunk {
            let row = sqlx::query(
                "SELECT last_write FROM task_instance
                 WHERE dag_id = $1 AND run_id = $2 AND task_id = $3",
            )
            .bind(&change.key.dag_id)
            .bind(&change.key.run_id)
            .bind(&change.key.task_id)
            .fetch_optional(&mut *conn)
            .await
            .map_err(query_error)?;
            let moved = row.is_some_and(|row| {
                sqlx::Row::try_get::<Option<i64>, _>(&row, "last_write")
                    .is_ok_and(|m| m == Some(marker))
            });
            out.push(moved);
        }
        Ok(out)
    }
}

/// A marker no other statement (of any process, on any machine) uses: random bits from the
/// standard library's per-process random keys, over a counter.
fn batch_marker() -> i64 {
    use std::hash::BuildHasher;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    static KEYS: OnceLock<std::collections::hash_map::RandomState> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    KEYS.get_or_init(Default::default)
        .hash_one((n, std::process::id())) as i64
}

/// Changes per statement: 16 bind parameters each, far under both backends' limits.
pub(super) const CHUNK: usize = 256;

/// The columns of the `VALUES` list, in bind order, with their SQL types. The casts make
/// PostgreSQL type the otherwise untyped parameters; SQLite accepts them as affinities.
const VALUE_COLUMNS: [(&str, &str); 19] = [
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
    ("v_fence_try", "BIGINT"),
    ("v_queue", "TEXT"),
    ("v_hostname", "TEXT"),
];

/// What the statement does with each change row `v` and the batch marker.
fn update_clause(marker: &str) -> String {
    format!(
        "UPDATE task_instance SET
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
            last_reason = v_reason,
            queue = CASE WHEN v_to = 'queued' THEN v_queue ELSE task_instance.queue END,
            hostname = CASE WHEN v_starts = 1 THEN v_hostname ELSE task_instance.hostname END,
            worker = CASE WHEN v_starts = 1 THEN NULL ELSE task_instance.worker END,
            heartbeat_at = CASE WHEN v_starts = 1 THEN NULL ELSE task_instance.heartbeat_at END,
            last_write = {marker}"
    )
}

/// A change applies to its instance in its expected state and, when fenced, at the try the
/// writer saw (a column of the row already looked up: fencing costs no extra lookup).
const MATCH_CLAUSE: &str = "WHERE task_instance.dag_id = v_dag AND task_instance.run_id = v_run
           AND task_instance.task_id = v_task AND task_instance.state = v_from
           AND (v_fence_try IS NULL OR task_instance.try_number = v_fence_try)";

/// The statement for `rows` changes. It returns nothing: rows sent back cost more than the
/// update itself, and the caller knows what each change did (`TaskInstance::apply`).
///
/// PostgreSQL gets the changes as one JSON parameter (`json_to_recordset`): one statement
/// text, planned once, whatever the batch size; a `VALUES` list of thousands of parameters
/// was re-planned on every batch. SQLite gets a `VALUES` list with anonymous `?`
/// parameters (it looks a numbered parameter's name up by a linear scan).
pub(super) fn statement(rows: usize, backend: Backend) -> String {
    let columns = VALUE_COLUMNS
        .iter()
        .map(|(name, ty)| format!("{name} {ty}"))
        .collect::<Vec<_>>()
        .join(", ");
    match backend {
        // The history rows come from the updated rows in the same statement (SQLite writes
        // them by trigger; it has no data-modifying CTEs). The count is the INSERT's.
        Backend::Postgres => format!(
            "WITH moved AS (
                {} FROM json_to_recordset($1::json) AS v({columns}) {MATCH_CLAUSE}
                RETURNING task_instance.dag_id, task_instance.run_id, task_instance.task_id,
                          task_instance.try_number, v_from, v_to, v_at, v_reason
             )
             INSERT INTO task_state_history (dag_id, run_id, task_id, try_number, from_state, to_state, at, reason)
             SELECT dag_id, run_id, task_id, try_number, v_from, v_to, v_at, v_reason FROM moved",
            update_clause("$2")
        ),
        Backend::Sqlite => {
            let names: Vec<&str> = VALUE_COLUMNS.iter().map(|(name, _)| *name).collect();
            let row = VALUE_COLUMNS
                .iter()
                .map(|(_, ty)| format!("CAST(? AS {ty})"))
                .collect::<Vec<_>>()
                .join(", ");
            let values = vec![format!("({row})"); rows].join(", ");
            // The marker's `?` comes after every row's in the text, so it is bound last.
            format!(
                "WITH v({}) AS (VALUES {values}) {} FROM v {MATCH_CLAUSE}",
                names.join(", "),
                update_clause("?")
            )
        }
    }
}

/// The values one change writes, named as in [`VALUE_COLUMNS`].
#[derive(Debug, serde::Serialize)]
struct ChangeRow<'a> {
    v_dag: &'a str,
    v_run: &'a str,
    v_task: &'a str,
    v_from: &'static str,
    v_to: &'static str,
    v_at: i64,
    v_starts: i64,
    v_queued_at: Option<i64>,
    v_started_at: Option<i64>,
    v_ended_at: Option<i64>,
    v_next_retry_at: Option<i64>,
    v_output: Option<String>,
    v_set_error: i64,
    v_error: Option<&'a str>,
    v_max_tries: Option<i64>,
    v_reason: Option<&'a str>,
    v_fence_try: Option<i64>,
    v_queue: Option<&'a str>,
    v_hostname: Option<&'a str>,
}

/// A task output as the store keeps it (the JSON of [`TaskOutput`]).
pub(super) fn output_json(output: &TaskOutput) -> String {
    // A map of JSON values and plain strings and numbers: serializing cannot fail.
    serde_json::to_string(output).expect("a TaskOutput serializes")
}

impl<'a> ChangeRow<'a> {
    fn of(change: &'a TaskChange) -> Self {
        let t = change.transition;
        let to = t.to();
        let at = change.at.timestamp_micros();
        let starts = t.starts_try();
        let ends = to.is_finished() || to == TaskState::UpForRetry;
        // A new try or a clear drops the last error; a failure records its own.
        let set_error =
            starts || t.clears() || matches!(to, TaskState::Failed | TaskState::UpForRetry);
        Self {
            v_dag: &change.key.dag_id,
            v_run: &change.key.run_id,
            v_task: &change.key.task_id,
            v_from: t.from().as_str(),
            v_to: to.as_str(),
            v_at: at,
            v_starts: i64::from(starts),
            v_queued_at: (to == TaskState::Queued).then_some(at),
            v_started_at: starts.then_some(at),
            v_ended_at: ends.then_some(at),
            v_next_retry_at: change.next_retry_at.map(|t| t.timestamp_micros()),
            v_output: change.output.as_ref().map(output_json),
            v_set_error: i64::from(set_error),
            v_error: if starts || t.clears() {
                None
            } else {
                change.reason.as_deref()
            },
            v_max_tries: change.max_tries.map(i64::from),
            v_reason: change.reason.as_deref(),
            v_fence_try: change.fence.as_ref().map(|f| i64::from(f.try_number)),
            v_queue: change.queue.as_deref(),
            v_hostname: change.hostname.as_deref(),
        }
    }

    /// Binds the row, in [`VALUE_COLUMNS`] order.
    fn bind<'q>(
        self,
        query: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    ) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>
    where
        'a: 'q,
    {
        query
            .bind(self.v_dag)
            .bind(self.v_run)
            .bind(self.v_task)
            .bind(self.v_from)
            .bind(self.v_to)
            .bind(self.v_at)
            .bind(self.v_starts)
            .bind(self.v_queued_at)
            .bind(self.v_started_at)
            .bind(self.v_ended_at)
            .bind(self.v_next_retry_at)
            .bind(self.v_output)
            .bind(self.v_set_error)
            .bind(self.v_error)
            .bind(self.v_max_tries)
            .bind(self.v_reason)
            .bind(self.v_fence_try)
            .bind(self.v_queue)
            .bind(self.v_hostname)
    }
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

/// Rows a SQLite statement for `n` changes has: the next power of two, so that a handful
/// of statement texts serve every batch size and stay in the prepared-statement cache.
fn padded_rows(n: usize) -> usize {
    n.next_power_of_two().min(CHUNK.max(n))
}

/// Runs one chunk; returns how many instances moved. SQLite's padding rows have NULL keys,
/// which match no instance.
async fn apply_chunk(
    conn: &mut AnyConnection,
    chunk: &[TaskChange],
    backend: Backend,
    marker: i64,
) -> Result<u64, sqlx::Error> {
    let rows = match backend {
        Backend::Postgres => 0,
        Backend::Sqlite => padded_rows(chunk.len()),
    };
    let sql = statement(rows, backend);
    let mut query = sqlx::query(&sql);
    match backend {
        Backend::Postgres => {
            let rows: Vec<ChangeRow> = chunk.iter().map(ChangeRow::of).collect();
            let json = serde_json::to_string(&rows).map_err(|e| sqlx::Error::Encode(e.into()))?;
            query = query.bind(json);
        }
        Backend::Sqlite => {
            for change in chunk {
                query = ChangeRow::of(change).bind(query);
            }
            for _ in chunk.len()..rows {
                query = bind_padding(query);
            }
        }
    }
    Ok(query.bind(marker).execute(conn).await?.rows_affected())
}

/// Binds a row that matches nothing, typed like a real one.
fn bind_padding<'q>(
    query: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    let mut query = query;
    for (_, ty) in VALUE_COLUMNS {
        query = if ty == "BIGINT" {
            query.bind(None::<i64>)
        } else {
            query.bind(None::<String>)
        };
    }
    query
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
    fn every_parameter_has_one_placeholder() {
        let sql = statement(0, Backend::Postgres);
        assert!(sql.contains("json_to_recordset($1::json)"));
        assert!(sql.contains("last_write = $2"));
        assert!(!sql.contains("$3"));
        let sql = statement(3, Backend::Sqlite);
        assert_eq!(sql.matches('?').count(), 3 * VALUE_COLUMNS.len() + 1);
        assert!(!sql.contains('$'));
    }

    #[test]
    fn a_change_row_names_every_column_in_order() {
        let c = change("a", Running, Success);
        let json = serde_json::to_value(ChangeRow::of(&c)).unwrap();
        let keys: Vec<&str> = json
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let mut expected: Vec<&str> = VALUE_COLUMNS.iter().map(|(name, _)| *name).collect();
        expected.sort_unstable();
        let mut keys = keys;
        keys.sort_unstable();
        assert_eq!(keys, expected);
        assert_eq!(json["v_from"], "running");
        assert_eq!(json["v_ended_at"], json["v_at"]);
    }

    #[test]
    fn batches_are_padded_to_a_few_statement_sizes() {
        let sizes: Vec<usize> = [1, 2, 3, 5, 100, 200, CHUNK]
            .iter()
            .map(|&n| padded_rows(n))
            .collect();
        assert_eq!(sizes, vec![1, 2, 4, 8, 128, 256, 256]);
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
