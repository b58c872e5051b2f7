//! Task-instance transitions as one statement for many changes.
//!
//! A scheduling pass starts or ends many tries at once (a fan-out becomes ready together,
//! tries of concurrent runs finish together). Writing them one by one costs a round trip
//! and, on PostgreSQL, a WAL flush each; this writes a batch as one `UPDATE … FROM` over a
//! `VALUES` list, where every row is still its own compare-and-set on the expected state
//! and (by the trigger of migration 0003) writes its own history row.
//!
//! Across callers, changes go through one [`GroupCommit`] writer per store: while one batch
//! is being written, the changes of every run driver that arrive meanwhile queue up and are
//! written together next (group commit), so concurrent runs share round trips too.

use std::sync::Arc;

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
        let gone = || StoreError::Query {
            what: "transition tasks",
            source: sqlx::Error::WorkerCrashed,
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
                    None => match self.pool.acquire().await {
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
                    // The first caller gets the driver's error; the others its message.
                    let error = std::mem::replace(
                        error,
                        StoreError::Query {
                            what: "transition tasks",
                            source: sqlx::Error::Protocol(format!(
                                "written in a batch whose statement failed: {error}"
                            )),
                        },
                    );
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

/// The statement for `rows` changes. It returns nothing: rows sent back cost more than the
/// update itself, and the caller knows what each change did (`TaskInstance::apply`).
/// PostgreSQL takes numbered parameters; SQLite gets anonymous `?` ones, because it looks a
/// numbered parameter's name up by a linear scan (quadratic in a statement of thousands).
pub(super) fn statement(rows: usize, backend: Backend) -> String {
    // The batch marker is bound after every row (its placeholder comes last in the text).
    let marker = match backend {
        Backend::Postgres => format!("${}", rows * VALUE_COLUMNS.len() + 1),
        Backend::Sqlite => "?".into(),
    };
    let names: Vec<&str> = VALUE_COLUMNS.iter().map(|(name, _)| *name).collect();
    let values: Vec<String> = (0..rows)
        .map(|row| {
            let cells: Vec<String> = VALUE_COLUMNS
                .iter()
                .enumerate()
                .map(|(col, (_, ty))| match backend {
                    Backend::Postgres => {
                        format!("CAST(${} AS {ty})", row * VALUE_COLUMNS.len() + col + 1)
                    }
                    Backend::Sqlite => format!("CAST(? AS {ty})"),
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
            last_reason = v_reason,
            last_write = {marker}
         FROM v
         WHERE task_instance.dag_id = v_dag AND task_instance.run_id = v_run
           AND task_instance.task_id = v_task AND task_instance.state = v_from",
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

/// Rows a statement for `n` changes has: the next power of two, so that a handful of
/// statement texts serve every batch size and stay in the driver's prepared-statement cache.
fn padded_rows(n: usize) -> usize {
    n.next_power_of_two().min(CHUNK.max(n))
}

/// Runs one chunk; returns how many instances moved. Padding rows have NULL keys, which
/// match no instance.
async fn apply_chunk(
    conn: &mut AnyConnection,
    chunk: &[TaskChange],
    backend: Backend,
    marker: i64,
) -> Result<u64, sqlx::Error> {
    let rows = padded_rows(chunk.len());
    let sql = statement(rows, backend);
    let mut query = sqlx::query(&sql);
    for change in chunk {
        query = bind(query, change);
    }
    for _ in chunk.len()..rows {
        query = bind_padding(query);
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
    fn the_statement_numbers_every_parameter_once() {
        let sql = statement(3, Backend::Postgres);
        assert!(sql.contains("CAST($1 AS TEXT)"));
        assert!(sql.contains("CAST($48 AS TEXT)"));
        assert!(sql.contains("last_write = $49"));
        assert!(!sql.contains("$50"));
        let sql = statement(3, Backend::Sqlite);
        assert_eq!(sql.matches('?').count(), 49);
        assert!(!sql.contains('$'));
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
