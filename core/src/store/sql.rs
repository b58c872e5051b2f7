//! The SQL implementation of [`Store`], for SQLite and PostgreSQL.
//!
//! Both backends take the same statements through sqlx's `Any` driver: `$n` placeholders
//! (SQLite accepts them too), BIGINT microseconds for instants and TEXT for states and
//! JSON, so almost every query is written once. What differs branches on [`Backend`]:
//! connection setup (SQLite's pragmas), migrations, and the batched transition statement
//! (see `transitions.rs`). Migrations live in
//! `migrations/sqlite` and `migrations/postgres` with the same version numbers.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::migrate::Migrator;
use sqlx::{AnyPool, Executor, Row};

use super::transitions;
use super::*;

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/postgres");

const RUN_COLUMNS: &str = "dag_id, run_id, logical_date, data_interval_start, data_interval_end, run_type, state, conf, dag_hash, created_at, started_at, ended_at, backfill_max_active_runs, attempt, sla_missed_at, note";
/// The columns a new run is inserted with (`attempt` starts at its default, 1).
const NEW_RUN_COLUMNS: &str = "dag_id, run_id, logical_date, data_interval_start, data_interval_end, run_type, state, conf, dag_hash, created_at, started_at, ended_at, backfill_max_active_runs, note";
const TI_COLUMNS: &str = "dag_id, run_id, task_id, operator, state, try_number, max_tries, queued_at, started_at, ended_at, next_retry_at, output, error, updated_at, queue, worker, hostname, heartbeat_at, pool";
/// Rows per multi-row INSERT: well under both backends' bind-parameter limits.
const INSERT_CHUNK: usize = 500;

/// The metadata store on SQLite or PostgreSQL.
#[derive(Debug, Clone)]
pub struct SqlStore {
    pool: AnyPool,
    backend: Backend,
    /// SQLite allows one writer at a time; queueing writers here instead of in SQLite's busy
    /// handler (which sleeps and backs off) keeps writes from stalling under concurrency.
    writer: Arc<tokio::sync::Mutex<()>>,
    /// Task-instance transitions, group-committed across callers.
    transitions: transitions::GroupCommit,
    /// The database URL, for PostgreSQL's listening connections (never shown).
    url: String,
}

/// A PostgreSQL URL's `sslrootcert` file must be readable: sqlx would report a missing one
/// as a bare "No such file or directory" from the middle of the handshake.
fn check_root_cert(url: &str) -> Result<(), sqlx::Error> {
    let Ok(parsed) = url::Url::parse(url) else {
        return Ok(()); // sqlx reports an unparseable URL itself
    };
    for (key, path) in parsed.query_pairs() {
        if matches!(&*key, "sslrootcert" | "ssl-root-cert" | "ssl-ca") {
            std::fs::metadata(&*path).map_err(|e| {
                sqlx::Error::Configuration(format!("sslrootcert {path}: {e}").into())
            })?;
        }
    }
    Ok(())
}

/// sqlx reports a refused server certificate as an I/O error ("error communicating with
/// database: invalid peer certificate: UnknownIssuer"); this says that it is TLS, which host
/// and what was trusted. Other errors pass unchanged. The URL's password is never used.
fn plain_tls_error(url: &str, error: sqlx::Error) -> sqlx::Error {
    // The innermost match is rustls' own words, without sqlx's prefix.
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(&error);
    let mut detail = None;
    while let Some(e) = current {
        let text = e.to_string();
        if text.contains("invalid peer certificate") || text.starts_with("received fatal alert") {
            detail = Some(text);
        }
        current = e.source();
    }
    let (Some(detail), Ok(parsed)) = (detail, url::Url::parse(url)) else {
        return error;
    };
    let host = format!(
        "{}:{}",
        parsed.host_str().unwrap_or("localhost"),
        parsed.port().unwrap_or(5432)
    );
    let trusted = match parsed.query_pairs().find(|(k, _)| k == "sslrootcert") {
        Some((_, path)) => format!("the CA in sslrootcert {path} and the public web roots"),
        None => {
            "the public web roots only; name a private CA with ?sslrootcert=/path/ca.pem".into()
        }
    };
    let what = if detail.contains("UnknownIssuer") {
        "its certificate is not signed by a trusted CA"
    } else if detail.contains("not valid for name") || detail.contains("NotValidForName") {
        "its certificate is not for this host name"
    } else if detail.contains("Expired") {
        "its certificate has expired"
    } else {
        "its certificate was refused"
    };
    sqlx::Error::Tls(
        format!("TLS handshake with {host} failed: {what} ({detail}); trusted: {trusted}").into(),
    )
}

fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

fn instant(what: &'static str, micros: i64) -> Result<DateTime<Utc>, StoreError> {
    DateTime::from_timestamp_micros(micros).ok_or(StoreError::Corrupt {
        what,
        message: format!("{micros} is not an instant"),
    })
}

fn opt_instant(
    what: &'static str,
    micros: Option<i64>,
) -> Result<Option<DateTime<Utc>>, StoreError> {
    micros.map(|m| instant(what, m)).transpose()
}

fn query_error(what: &'static str) -> impl Fn(sqlx::Error) -> StoreError {
    move |source| StoreError::Query { what, source }
}

fn get<'r, T>(row: &'r AnyRow, column: &'static str) -> Result<T, StoreError>
where
    T: sqlx::Decode<'r, sqlx::Any> + sqlx::Type<sqlx::Any>,
{
    row.try_get(column).map_err(|e| StoreError::Corrupt {
        what: column,
        message: e.to_string(),
    })
}

fn parse<T: std::str::FromStr>(what: &'static str, text: String) -> Result<T, StoreError>
where
    T::Err: std::fmt::Display,
{
    text.parse().map_err(|e: T::Err| StoreError::Corrupt {
        what,
        message: e.to_string(),
    })
}

/// A column holding JSON of a type: a row that does not parse is reported, never dropped.
fn json<T: serde::de::DeserializeOwned>(
    what: &'static str,
    text: Option<String>,
) -> Result<Option<T>, StoreError> {
    text.map(|t| {
        serde_json::from_str(&t).map_err(|e| StoreError::Corrupt {
            what,
            message: e.to_string(),
        })
    })
    .transpose()
}

/// The `WHERE` clause of a run listing and the values it binds (`$1`…): only the filters
/// given, so the planner uses the `(dag_id, logical_date)` index for one DAG's runs instead
/// of scanning every run (`$1 = '' OR dag_id = $1` defeats the index on SQLite).
fn run_filter_sql(filter: &RunFilter) -> (String, Vec<String>) {
    let mut conditions = Vec::new();
    let mut values = Vec::new();
    for (column, value) in [
        ("dag_id", filter.dag_id.clone()),
        ("run_id", filter.run_id.clone()),
        ("state", filter.state.map(|s| s.as_str().to_string())),
    ] {
        if let Some(value) = value.filter(|v| !v.is_empty()) {
            values.push(value);
            conditions.push(format!("{column} = ${}", values.len()));
        }
    }
    if !filter.states.is_empty() {
        let first = values.len() + 1;
        values.extend(filter.states.iter().map(|s| s.as_str().to_string()));
        let placeholders: Vec<String> = (first..=values.len()).map(|i| format!("${i}")).collect();
        conditions.push(format!("state IN ({})", placeholders.join(", ")));
    }
    if conditions.is_empty() {
        (String::new(), values)
    } else {
        (format!(" WHERE {}", conditions.join(" AND ")), values)
    }
}

fn run_from_row(row: &AnyRow) -> Result<DagRun, StoreError> {
    Ok(DagRun {
        dag_id: get(row, "dag_id")?,
        run_id: get(row, "run_id")?,
        logical_date: instant("logical_date", get(row, "logical_date")?)?,
        data_interval_start: instant("data_interval_start", get(row, "data_interval_start")?)?,
        data_interval_end: instant("data_interval_end", get(row, "data_interval_end")?)?,
        run_type: parse("run_type", get::<String>(row, "run_type")?)?,
        state: parse("state", get::<String>(row, "state")?)?,
        conf: json("conf", Some(get(row, "conf")?))?.unwrap_or_default(),
        dag_hash: get(row, "dag_hash")?,
        created_at: instant("created_at", get(row, "created_at")?)?,
        started_at: opt_instant("started_at", get(row, "started_at")?)?,
        ended_at: opt_instant("ended_at", get(row, "ended_at")?)?,
        backfill_max_active_runs: get::<Option<i64>>(row, "backfill_max_active_runs")?
            .map(|n| n as u32),
        attempt: get::<i64>(row, "attempt")? as u32,
        sla_missed_at: opt_instant("sla_missed_at", get(row, "sla_missed_at")?)?,
        note: get(row, "note")?,
    })
}

fn attempt_from_row(row: &AnyRow) -> Result<RunAttempt, StoreError> {
    Ok(RunAttempt {
        attempt: get::<i64>(row, "attempt")? as u32,
        conf: json("attempt conf", Some(get(row, "conf")?))?.unwrap_or_default(),
        state: parse("attempt state", get::<String>(row, "state")?)?,
        queued_at: instant("queued_at", get(row, "queued_at")?)?,
        started_at: opt_instant("started_at", get(row, "started_at")?)?,
        ended_at: opt_instant("ended_at", get(row, "ended_at")?)?,
        dag_hash: get(row, "dag_hash")?,
    })
}

/// Stores a DAG version unless it is stored already (versions are immutable by their hash).
async fn insert_version(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    version: &DagVersion,
    at: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        // Touching a stored version (its row lock, its time) keeps a concurrent clean from
        // removing it while a run that uses it is being created.
        "INSERT INTO dag_version (dag_id, version, file, source, created_at) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (dag_id, version) DO UPDATE SET created_at = excluded.created_at",
    )
    .bind(&version.dag_id)
    .bind(&version.hash)
    .bind(&version.file)
    .bind(version.source.to_string())
    .bind(at)
    .execute(&mut **tx)
    .await
    .map_err(query_error("store the DAG version"))?;
    Ok(())
}

fn ti_from_row(row: &AnyRow) -> Result<TaskInstance, StoreError> {
    Ok(TaskInstance {
        dag_id: get(row, "dag_id")?,
        run_id: get(row, "run_id")?,
        task_id: get(row, "task_id")?,
        operator: get(row, "operator")?,
        state: parse("state", get::<String>(row, "state")?)?,
        try_number: get::<i64>(row, "try_number")? as u32,
        max_tries: get::<i64>(row, "max_tries")? as u32,
        queued_at: opt_instant("queued_at", get(row, "queued_at")?)?,
        started_at: opt_instant("started_at", get(row, "started_at")?)?,
        ended_at: opt_instant("ended_at", get(row, "ended_at")?)?,
        next_retry_at: opt_instant("next_retry_at", get(row, "next_retry_at")?)?,
        output: json("output", get(row, "output")?)?,
        error: get(row, "error")?,
        updated_at: instant("updated_at", get(row, "updated_at")?)?,
        queue: get(row, "queue")?,
        worker: get(row, "worker")?,
        hostname: get(row, "hostname")?,
        heartbeat_at: opt_instant("heartbeat_at", get(row, "heartbeat_at")?)?,
        pool: get(row, "pool")?,
    })
}

/// An exclusive advisory lock on a file, held until dropped (the file closes).
async fn lock_file(path: std::path::PathBuf) -> std::io::Result<std::fs::File> {
    tokio::task::spawn_blocking(move || {
        use std::os::fd::AsRawFd;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)?;
        // SAFETY: flock(2) on a descriptor we own; the lock is released when the file is closed.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(file)
    })
    .await
    .map_err(std::io::Error::other)?
}

/// Inserts pending task instances for `tasks` in chunks.
async fn insert_task_instances(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    dag_id: &str,
    run_id: &str,
    tasks: &[NewTaskInstance],
    at: i64,
) -> Result<(), StoreError> {
    for chunk in tasks.chunks(INSERT_CHUNK) {
        let mut sql = String::from(
            "INSERT INTO task_instance (dag_id, run_id, task_id, operator, max_tries, pool, state, try_number, updated_at) VALUES ",
        );
        for i in 0..chunk.len() {
            let p = i * 4 + 4;
            sql.push_str(&format!(
                "{}($1, $2, ${p}, ${}, ${}, ${}, 'pending', 0, $3)",
                if i > 0 { ", " } else { "" },
                p + 1,
                p + 2,
                p + 3
            ));
        }
        let mut query = sqlx::query(&sql).bind(dag_id).bind(run_id).bind(at);
        for task in chunk {
            query = query
                .bind(&task.task_id)
                .bind(&task.operator)
                .bind(i64::from(task.max_tries))
                .bind(task.pool.as_deref());
        }
        query
            .execute(&mut **tx)
            .await
            .map_err(query_error("create task instances"))?;
    }
    Ok(())
}

impl SqlStore {
    /// Why a compare-and-set on a run's state `from` matched no row: the run is in another
    /// state, or does not exist.
    async fn run_not_in(&self, dag_id: &str, run_id: &str, from: RunState) -> StoreError {
        match self.run(dag_id, run_id).await {
            Ok(Some(current)) => StoreError::Conflict {
                what: format!("run {dag_id}/{run_id}"),
                expected: from.to_string(),
                found: current.state.to_string(),
            },
            Ok(None) => StoreError::NotFound(format!("run {dag_id}/{run_id}")),
            Err(e) => e,
        }
    }

    /// Serializes writers on SQLite; PostgreSQL handles concurrent writers itself.
    async fn write_turn(&self) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        match self.backend {
            Backend::Sqlite => Some(self.writer.lock().await),
            Backend::Postgres => None,
        }
    }

    /// Connects to `url` (`sqlite://path` or `postgres://…`) and applies pending migrations.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let shown = redact_url(url);
        let mut migration_lock = None;
        let (backend, url) = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            check_root_cert(url).map_err(|source| StoreError::Open {
                url: shown.clone(),
                cause: source,
            })?;
            (Backend::Postgres, url.to_string())
        } else if let Some(path) = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
        {
            let file = path.split('?').next().unwrap_or(path);
            migration_lock = Some(std::path::PathBuf::from(format!("{file}.migrate-lock")));
            if let Some(dir) = std::path::Path::new(file)
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
            {
                std::fs::create_dir_all(dir).map_err(|e| StoreError::Open {
                    url: shown.clone(),
                    cause: sqlx::Error::Io(e),
                })?;
            }
            let url = if path.contains('?') {
                format!("sqlite://{path}")
            } else {
                format!("sqlite://{path}?mode=rwc")
            };
            (Backend::Sqlite, url)
        } else {
            return Err(StoreError::Open {
                url: shown,
                cause: sqlx::Error::Configuration("expected a sqlite:// or postgres:// URL".into()),
            });
        };
        let pool = AnyPoolOptions::new()
            .max_connections(if backend == Backend::Sqlite { 4 } else { 8 })
            // A CLI command against a server that is down should say so promptly, and a run
            // driver should learn of an outage soon enough to apply its own deadline.
            .acquire_timeout(std::time::Duration::from_secs(3))
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        // WAL lets readers (UI, CLI) proceed while the scheduler writes; NORMAL sync is
                        // durable across process crashes in WAL mode. Pages are read through a
                        // memory map and the batched updates' temporary tables stay in memory:
                        // without both, a busy scheduler spends its time in pread and pwrite.
                        // A longer WAL between checkpoints (40 MB) writes each hot page back
                        // once per many batches instead of every few.
                        conn.execute("PRAGMA busy_timeout = 10000; PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON; PRAGMA temp_store = MEMORY; PRAGMA mmap_size = 268435456; PRAGMA cache_size = -16384; PRAGMA wal_autocheckpoint = 10000;").await?;
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await
            .map_err(|source| StoreError::Open { url: shown.clone(), cause: plain_tls_error(&url, source) })?;
        match backend {
            Backend::Sqlite => {
                // sqlx takes no lock for SQLite migrations: two processes opening a new store at
                // once (a scheduler and a `dags trigger`) would both create the tables.
                let lock = migration_lock.expect("set for SQLite");
                let _guard = lock_file(lock).await.map_err(|e| StoreError::Open {
                    url: shown.clone(),
                    cause: sqlx::Error::Io(e),
                })?;
                SQLITE_MIGRATIONS.run(&pool).await?
            }
            Backend::Postgres => POSTGRES_MIGRATIONS.run(&pool).await?,
        }
        let writer: Arc<tokio::sync::Mutex<()>> = Arc::default();
        let transitions = transitions::GroupCommit::start(transitions::Writer {
            pool: pool.clone(),
            backend,
            turn: (backend == Backend::Sqlite).then(|| writer.clone()),
        });
        Ok(Self {
            pool,
            backend,
            writer,
            transitions,
            url,
        })
    }

    /// The error for a batch where some instances were not in their expected state.
    async fn conflict(&self, changes: &[TaskChange], moved: &[bool]) -> StoreError {
        let mut lost = changes
            .iter()
            .zip(moved)
            .filter(|(_, m)| !**m)
            .map(|(c, _)| c);
        let Some(stale) = lost.next() else {
            return StoreError::NotFound("a conflicting task instance".into());
        };
        let others = lost.count();
        if let Some(fence) = &stale.fence {
            match self.driver_of(&stale.key.dag_id, &stale.key.run_id).await {
                Ok(holder) if holder.as_deref() != Some(fence.driver.as_str()) => {
                    return StoreError::Fenced {
                        run: format!("{}/{}", stale.key.dag_id, stale.key.run_id),
                        holder: holder.unwrap_or_else(|| "nobody".into()),
                    }
                }
                Ok(_) => {}
                Err(error) => return error,
            }
        }
        let what = if others == 0 {
            stale.key.to_string()
        } else {
            format!("{} (and {others} more)", stale.key)
        };
        match self.current_state(&stale.key).await {
            Ok(Some(found)) => StoreError::Conflict {
                what,
                expected: stale.transition.from().to_string(),
                found,
            },
            Ok(None) => StoreError::NotFound(format!("task instance {}", stale.key)),
            Err(error) => error,
        }
    }

    /// Moves a run's state (compare-and-set), fenced by `fence` (a run driver) when given.
    async fn run_state(
        &self,
        fence: Option<&str>,
        dag_id: &str,
        run_id: &str,
        from: RunState,
        to: RunState,
        at: DateTime<Utc>,
    ) -> Result<DagRun, StoreError> {
        self.run_state_within(fence, dag_id, run_id, from, to, at, None)
            .await
            .map(|run| run.expect("no limit, so the change is made or refused"))
    }

    /// [`SqlStore::run_state`], and with `max_active_runs` only while the DAG has room (see
    /// `RunStore::start_run`); `None` when it has none.
    #[allow(clippy::too_many_arguments)]
    async fn run_state_within(
        &self,
        fence: Option<&str>,
        dag_id: &str,
        run_id: &str,
        from: RunState,
        to: RunState,
        at: DateTime<Utc>,
        max_active_runs: Option<u32>,
    ) -> Result<Option<DagRun>, StoreError> {
        let _turn = self.write_turn().await;
        from.check(to)?;
        let started = (to == RunState::Running).then_some(micros(at));
        let ended = to.is_finished().then_some(micros(at));
        let mut tx = self.pool.begin().await.map_err(query_error("begin"))?;
        if let Some(max) = max_active_runs {
            // The DAG's row orders the starts of its runs across schedulers.
            sqlx::query(
                "INSERT INTO dag (dag_id, is_paused, updated_at) VALUES ($1, 0, $2)
                 ON CONFLICT (dag_id) DO NOTHING",
            )
            .bind(dag_id)
            .bind(micros(at))
            .execute(&mut *tx)
            .await
            .map_err(query_error("record the DAG"))?;
            if self.backend == Backend::Postgres {
                sqlx::query("SELECT dag_id FROM dag WHERE dag_id = $1 FOR UPDATE")
                    .bind(dag_id)
                    .execute(&mut *tx)
                    .await
                    .map_err(query_error("lock the DAG"))?;
            }
            let counts = sqlx::query(
                "SELECT count(*) AS running,
                        COALESCE(sum(CASE WHEN run_type = 'backfill' THEN 1 ELSE 0 END), 0) AS backfills
                 FROM dag_run WHERE dag_id = $1 AND state = 'running'",
            )
            .bind(dag_id)
            .fetch_one(&mut *tx)
            .await
            .map_err(query_error("count the DAG's running runs"))?;
            let running: i64 = get(&counts, "running")?;
            let backfills: i64 = get(&counts, "backfills")?;
            let this = sqlx::query(
                "SELECT run_type, backfill_max_active_runs FROM dag_run WHERE dag_id = $1 AND run_id = $2",
            )
            .bind(dag_id)
            .bind(run_id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(query_error("read the run"))?;
            let backfill_cap = match &this {
                Some(row) if get::<String>(row, "run_type")? == "backfill" => {
                    get::<Option<i64>>(row, "backfill_max_active_runs")?
                }
                _ => None,
            };
            if running >= i64::from(max) || backfill_cap.is_some_and(|cap| backfills >= cap) {
                return Ok(None);
            }
        }
        // A start counted under the lock happens now: never before the end that made room.
        let started = match max_active_runs {
            Some(_) => started.map(|at| at.max(micros(Utc::now()))),
            None => started,
        };
        let row = sqlx::query(&format!(
            "UPDATE dag_run SET state = $1, started_at = COALESCE($2, started_at),
                 ended_at = CASE WHEN $1 = 'queued' THEN NULL ELSE COALESCE($3, ended_at) END
             WHERE dag_id = $4 AND run_id = $5 AND state = $6 AND ($7 = '' OR driver = $7)
             RETURNING {RUN_COLUMNS}"
        ))
        .bind(to.as_str())
        .bind(started)
        .bind(ended)
        .bind(dag_id)
        .bind(run_id)
        .bind(from.as_str())
        .bind(fence.unwrap_or_default())
        .fetch_optional(&mut *tx)
        .await
        .map_err(query_error("set run state"))?;
        let Some(row) = row else {
            drop(tx);
            if let Some(fence) = fence {
                match self.driver_of(dag_id, run_id).await {
                    Ok(holder) if holder.as_deref() != Some(fence) => {
                        return Err(StoreError::Fenced {
                            run: format!("{dag_id}/{run_id}"),
                            holder: holder.unwrap_or_else(|| "nobody".into()),
                        })
                    }
                    Ok(_) => {}
                    Err(error) => return Err(error),
                }
            }
            return Err(self.run_not_in(dag_id, run_id, from).await);
        };
        let run = run_from_row(&row)?;
        sqlx::query(
            "UPDATE dag_run_attempt SET state = $1, started_at = $2, ended_at = $3
             WHERE dag_id = $4 AND run_id = $5 AND attempt = $6",
        )
        .bind(run.state.as_str())
        .bind(run.started_at.map(micros))
        .bind(run.ended_at.map(micros))
        .bind(dag_id)
        .bind(run_id)
        .bind(i64::from(run.attempt))
        .execute(&mut *tx)
        .await
        .map_err(query_error("record the attempt's state"))?;
        tx.commit().await.map_err(query_error("commit run state"))?;
        Ok(Some(run))
    }

    /// The driver holding a run, if any.
    async fn driver_of(&self, dag_id: &str, run_id: &str) -> Result<Option<String>, StoreError> {
        let row = sqlx::query("SELECT driver FROM dag_run WHERE dag_id = $1 AND run_id = $2")
            .bind(dag_id)
            .bind(run_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(query_error("read the run's driver"))?;
        Ok(row.and_then(|r| get::<Option<String>>(&r, "driver").ok().flatten()))
    }

    async fn current_state(&self, key: &TaskKey) -> Result<Option<String>, StoreError> {
        let row = sqlx::query(
            "SELECT state FROM task_instance WHERE dag_id = $1 AND run_id = $2 AND task_id = $3",
        )
        .bind(&key.dag_id)
        .bind(&key.run_id)
        .bind(&key.task_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(query_error("read task state"))?;
        row.map(|r| get::<String>(&r, "state")).transpose()
    }
}

#[async_trait]
impl RunStore for SqlStore {
    fn backend(&self) -> Backend {
        self.backend
    }

    async fn create_run(&self, run: &NewRun) -> Result<DagRun, StoreError> {
        let _turn = self.write_turn().await;
        let mut tx = self.pool.begin().await.map_err(query_error("begin"))?;
        let at = micros(run.at);
        let inserted = sqlx::query(&format!(
            "INSERT INTO dag_run ({NEW_RUN_COLUMNS}) VALUES ($1, $2, $3, $3, $4, $5, 'queued', $6, $7, $8, NULL, NULL, $9, $10) RETURNING {RUN_COLUMNS}"
        ))
        .bind(&run.dag_id)
        .bind(&run.run_id)
        .bind(micros(run.interval.start))
        .bind(micros(run.interval.end))
        .bind(run.run_type.as_str())
        .bind(run.conf.to_string())
        .bind(&run.version.hash)
        .bind(at)
        .bind(run.backfill_max_active_runs.map(i64::from))
        .bind(run.note.as_deref())
        .fetch_one(&mut *tx)
        .await;
        let row = match inserted {
            Ok(row) => row,
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                return Err(StoreError::RunExists {
                    dag_id: run.dag_id.clone(),
                    run_id: run.run_id.clone(),
                    logical_date: run.interval.start,
                })
            }
            Err(e) => return Err(query_error("create run")(e)),
        };
        insert_task_instances(&mut tx, &run.dag_id, &run.run_id, &run.tasks, at).await?;
        insert_version(&mut tx, &run.version, at).await?;
        sqlx::query(
            "INSERT INTO dag_run_attempt (dag_id, run_id, attempt, conf, state, queued_at, dag_hash) VALUES ($1, $2, 1, $3, 'queued', $4, $5)",
        )
        .bind(&run.dag_id)
        .bind(&run.run_id)
        .bind(run.conf.to_string())
        .bind(at)
        .bind(&run.version.hash)
        .execute(&mut *tx)
        .await
        .map_err(query_error("record the run's first attempt"))?;
        tx.commit().await.map_err(query_error("commit run"))?;
        run_from_row(&row)
    }

    async fn run(&self, dag_id: &str, run_id: &str) -> Result<Option<DagRun>, StoreError> {
        sqlx::query(&format!(
            "SELECT {RUN_COLUMNS} FROM dag_run WHERE dag_id = $1 AND run_id = $2"
        ))
        .bind(dag_id)
        .bind(run_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(query_error("read run"))?
        .as_ref()
        .map(run_from_row)
        .transpose()
    }

    async fn run_for_date(
        &self,
        dag_id: &str,
        logical_date: DateTime<Utc>,
    ) -> Result<Option<DagRun>, StoreError> {
        sqlx::query(&format!(
            "SELECT {RUN_COLUMNS} FROM dag_run WHERE dag_id = $1 AND logical_date = $2"
        ))
        .bind(dag_id)
        .bind(micros(logical_date))
        .fetch_optional(&self.pool)
        .await
        .map_err(query_error("read run by date"))?
        .as_ref()
        .map(run_from_row)
        .transpose()
    }

    async fn queued_runs_marker(&self) -> Result<QueuedMarker, StoreError> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS n, COALESCE(MAX(created_at), 0) AS latest FROM dag_run WHERE state = 'queued'",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(query_error("read queued runs"))?;
        Ok(QueuedMarker {
            count: get::<i64>(&row, "n")? as u64,
            newest_created_us: get::<i64>(&row, "latest")?,
        })
    }

    async fn set_run_state(
        &self,
        dag_id: &str,
        run_id: &str,
        from: RunState,
        to: RunState,
        at: DateTime<Utc>,
    ) -> Result<DagRun, StoreError> {
        self.run_state(None, dag_id, run_id, from, to, at).await
    }

    async fn set_run_state_as(
        &self,
        driver: &str,
        dag_id: &str,
        run_id: &str,
        from: RunState,
        to: RunState,
        at: DateTime<Utc>,
    ) -> Result<DagRun, StoreError> {
        self.run_state(Some(driver), dag_id, run_id, from, to, at)
            .await
    }

    async fn start_run(
        &self,
        driver: &str,
        dag_id: &str,
        run_id: &str,
        max_active_runs: u32,
        at: DateTime<Utc>,
    ) -> Result<Option<DagRun>, StoreError> {
        self.run_state_within(
            Some(driver),
            dag_id,
            run_id,
            RunState::Queued,
            RunState::Running,
            at,
            Some(max_active_runs),
        )
        .await
    }

    async fn new_attempt(
        &self,
        dag_id: &str,
        run_id: &str,
        from: RunState,
        conf: Option<&serde_json::Value>,
        version: Option<&DagVersion>,
        at: DateTime<Utc>,
    ) -> Result<DagRun, StoreError> {
        let _turn = self.write_turn().await;
        from.check(RunState::Queued)?;
        let mut tx = self.pool.begin().await.map_err(query_error("begin"))?;
        if let Some(version) = version {
            insert_version(&mut tx, version, micros(at)).await?;
        }
        let row = sqlx::query(&format!(
            "UPDATE dag_run SET state = 'queued', attempt = attempt + 1, started_at = NULL,
                 ended_at = NULL, conf = COALESCE($1, conf), dag_hash = COALESCE($5, dag_hash)
             WHERE dag_id = $2 AND run_id = $3 AND state = $4 RETURNING {RUN_COLUMNS}"
        ))
        .bind(conf.map(|c| c.to_string()))
        .bind(dag_id)
        .bind(run_id)
        .bind(from.as_str())
        .bind(version.map(|v| v.hash.clone()))
        .fetch_optional(&mut *tx)
        .await
        .map_err(query_error("start a new attempt"))?;
        let Some(row) = row else {
            drop(tx);
            return Err(self.run_not_in(dag_id, run_id, from).await);
        };
        let run = run_from_row(&row)?;
        // A stop asked of the earlier attempt (too late to act on) never stops this one.
        sqlx::query("DELETE FROM stop_request WHERE dag_id = $1 AND run_id = $2")
            .bind(dag_id)
            .bind(run_id)
            .execute(&mut *tx)
            .await
            .map_err(query_error("forget the earlier attempt's stop requests"))?;
        sqlx::query(
            "INSERT INTO dag_run_attempt (dag_id, run_id, attempt, conf, state, queued_at, dag_hash) VALUES ($1, $2, $3, $4, 'queued', $5, $6)",
        )
        .bind(dag_id)
        .bind(run_id)
        .bind(i64::from(run.attempt))
        .bind(run.conf.to_string())
        .bind(micros(at))
        .bind(&run.dag_hash)
        .execute(&mut *tx)
        .await
        .map_err(query_error("record the new attempt"))?;
        tx.commit()
            .await
            .map_err(query_error("commit new attempt"))?;
        Ok(run)
    }

    async fn dag_version(
        &self,
        dag_id: &str,
        hash: &str,
    ) -> Result<Option<DagVersion>, StoreError> {
        let row = sqlx::query(
            "SELECT dag_id, version, file, source FROM dag_version WHERE dag_id = $1 AND version = $2",
        )
        .bind(dag_id)
        .bind(hash)
        .fetch_optional(&self.pool)
        .await
        .map_err(query_error("read a DAG version"))?;
        row.map(|row| {
            Ok(DagVersion {
                dag_id: get(&row, "dag_id")?,
                hash: get(&row, "version")?,
                file: get(&row, "file")?,
                source: json("DAG version source", Some(get(&row, "source")?))?.unwrap_or_default(),
            })
        })
        .transpose()
    }

    async fn delivered_items(
        &self,
        key: &TaskKey,
        attempt: u32,
    ) -> Result<std::collections::HashSet<String>, StoreError> {
        let rows = sqlx::query(
            "SELECT item FROM delivery
             WHERE dag_id = $1 AND run_id = $2 AND attempt = $3 AND task_id = $4 AND state = 'delivered'",
        )
        .bind(&key.dag_id)
        .bind(&key.run_id)
        .bind(i64::from(attempt))
        .bind(&key.task_id)
        .fetch_all(&self.pool)
        .await
        .map_err(query_error("read delivered items"))?;
        rows.iter().map(|row| get::<String>(row, "item")).collect()
    }

    async fn record_deliveries(
        &self,
        key: &TaskKey,
        attempt: u32,
        outcomes: &[sluice_operator_api::DeliveryOutcome],
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let _turn = self.write_turn().await;
        let mut tx = self.pool.begin().await.map_err(query_error("begin"))?;
        for chunk in outcomes.chunks(INSERT_CHUNK / 2) {
            let mut sql = String::from(
                "INSERT INTO delivery (dag_id, run_id, attempt, task_id, updated_at, item, state, attempts, detail) VALUES ",
            );
            for i in 0..chunk.len() {
                let p = i * 4 + 6;
                sql.push_str(&format!(
                    "{}($1, $2, $3, $4, $5, ${p}, ${}, ${}, ${})",
                    if i > 0 { ", " } else { "" },
                    p + 1,
                    p + 2,
                    p + 3
                ));
            }
            sql.push_str(
                " ON CONFLICT (dag_id, run_id, attempt, task_id, item) DO UPDATE SET
                   state = excluded.state, attempts = delivery.attempts + excluded.attempts,
                   detail = excluded.detail, updated_at = excluded.updated_at",
            );
            let mut query = sqlx::query(&sql)
                .bind(&key.dag_id)
                .bind(&key.run_id)
                .bind(i64::from(attempt))
                .bind(&key.task_id)
                .bind(micros(at));
            for outcome in chunk {
                query = query
                    .bind(&outcome.item)
                    .bind(if outcome.delivered {
                        "delivered"
                    } else {
                        "failed"
                    })
                    .bind(i64::from(outcome.attempts))
                    .bind(&outcome.detail);
            }
            query
                .execute(&mut *tx)
                .await
                .map_err(query_error("record deliveries"))?;
        }
        tx.commit()
            .await
            .map_err(query_error("commit deliveries"))?;
        Ok(())
    }

    async fn task_instances(
        &self,
        dag_id: &str,
        run_id: &str,
    ) -> Result<Vec<TaskInstance>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {TI_COLUMNS} FROM task_instance WHERE dag_id = $1 AND run_id = $2 ORDER BY task_id"
        ))
        .bind(dag_id)
        .bind(run_id)
        .fetch_all(&self.pool)
        .await
        .map_err(query_error("read task instances"))?;
        rows.iter().map(ti_from_row).collect()
    }

    async fn transition(&self, change: &TaskChange) -> Result<TaskInstance, StoreError> {
        self.transitions(std::slice::from_ref(change)).await?;
        let row = sqlx::query(&format!(
            "SELECT {TI_COLUMNS} FROM task_instance WHERE dag_id = $1 AND run_id = $2 AND task_id = $3"
        ))
        .bind(&change.key.dag_id)
        .bind(&change.key.run_id)
        .bind(&change.key.task_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(query_error("read task instance"))?;
        match row {
            Some(row) => ti_from_row(&row),
            None => Err(StoreError::NotFound(format!(
                "task instance {}",
                change.key
            ))),
        }
    }

    async fn transitions(&self, changes: &[TaskChange]) -> Result<(), StoreError> {
        if changes.is_empty() {
            return Ok(());
        }
        let moved = self.transitions.write(changes.to_vec()).await?;
        if moved.iter().all(|&m| m) {
            return Ok(());
        }
        Err(self.conflict(changes, &moved).await)
    }

    async fn latest_run(
        &self,
        dag_id: &str,
        run_type: Option<RunType>,
    ) -> Result<Option<DagRun>, StoreError> {
        sqlx::query(&format!(
            "SELECT {RUN_COLUMNS} FROM dag_run WHERE dag_id = $1 AND ($2 = '' OR run_type = $2) ORDER BY logical_date DESC LIMIT 1"
        ))
        .bind(dag_id)
        .bind(run_type.map(|t| t.as_str()).unwrap_or_default())
        .fetch_optional(&self.pool)
        .await
        .map_err(query_error("read latest run"))?
        .as_ref()
        .map(run_from_row)
        .transpose()
    }

    async fn active_runs(&self) -> Result<Vec<DagRun>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {RUN_COLUMNS} FROM dag_run WHERE state IN ('queued', 'running') ORDER BY logical_date, dag_id, run_id"
        ))
        .fetch_all(&self.pool)
        .await
        .map_err(query_error("read active runs"))?;
        rows.iter().map(run_from_row).collect()
    }

    async fn set_paused(
        &self,
        dag_id: &str,
        paused: bool,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let _turn = self.write_turn().await;
        sqlx::query(
            "INSERT INTO dag (dag_id, is_paused, updated_at) VALUES ($1, $2, $3)
             ON CONFLICT (dag_id) DO UPDATE SET is_paused = excluded.is_paused, updated_at = excluded.updated_at",
        )
        .bind(dag_id)
        .bind(i64::from(paused))
        .bind(micros(at))
        .execute(&self.pool)
        .await
        .map_err(query_error("pause DAG"))?;
        Ok(())
    }

    async fn set_run_note(
        &self,
        dag_id: &str,
        run_id: &str,
        note: Option<&str>,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let _turn = self.write_turn().await;
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(query_error("set a run's note"))?;
        let set = sqlx::query("UPDATE dag_run SET note = $1 WHERE dag_id = $2 AND run_id = $3")
            .bind(note)
            .bind(dag_id)
            .bind(run_id)
            .execute(&mut *tx)
            .await
            .map_err(query_error("set a run's note"))?;
        // The change marker moves with the DAG row's updated_at, so cached reads see the note.
        sqlx::query(
            "INSERT INTO dag (dag_id, is_paused, updated_at) VALUES ($1, 0, $2)
             ON CONFLICT (dag_id) DO UPDATE SET updated_at =
                 CASE WHEN dag.updated_at >= excluded.updated_at THEN dag.updated_at + 1
                      ELSE excluded.updated_at END",
        )
        .bind(dag_id)
        .bind(micros(at))
        .execute(&mut *tx)
        .await
        .map_err(query_error("set a run's note"))?;
        tx.commit().await.map_err(query_error("set a run's note"))?;
        Ok(set.rows_affected() == 1)
    }

    async fn paused_dags(&self) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query("SELECT dag_id FROM dag WHERE is_paused = 1 ORDER BY dag_id")
            .fetch_all(&self.pool)
            .await
            .map_err(query_error("read paused DAGs"))?;
        rows.iter().map(|r| get::<String>(r, "dag_id")).collect()
    }

    async fn add_task_instances(
        &self,
        dag_id: &str,
        run_id: &str,
        tasks: &[NewTaskInstance],
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let _turn = self.write_turn().await;
        let mut tx = self.pool.begin().await.map_err(query_error("begin"))?;
        insert_task_instances(&mut tx, dag_id, run_id, tasks, micros(at)).await?;
        tx.commit()
            .await
            .map_err(query_error("commit task instances"))
    }

    async fn claim_run(
        &self,
        dag_id: &str,
        run_id: &str,
        driver: &str,
        until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let _turn = self.write_turn().await;
        let claimed = sqlx::query(
            "UPDATE dag_run SET driver = $1, driver_lease_until = $2
             WHERE dag_id = $3 AND run_id = $4 AND state IN ('queued', 'running')
               AND (driver IS NULL OR driver = $1 OR driver_lease_until < $5)",
        )
        .bind(driver)
        .bind(micros(until))
        .bind(dag_id)
        .bind(run_id)
        .bind(micros(now))
        .execute(&self.pool)
        .await
        .map_err(query_error("claim run"))?;
        Ok(claimed.rows_affected() == 1)
    }

    async fn release_run(
        &self,
        dag_id: &str,
        run_id: &str,
        driver: &str,
    ) -> Result<(), StoreError> {
        let _turn = self.write_turn().await;
        sqlx::query("UPDATE dag_run SET driver = NULL, driver_lease_until = NULL WHERE dag_id = $1 AND run_id = $2 AND driver = $3")
            .bind(dag_id)
            .bind(run_id)
            .bind(driver)
            .execute(&self.pool)
            .await
            .map_err(query_error("release run"))?;
        Ok(())
    }
}

#[async_trait]
impl ReadModel for SqlStore {
    async fn list_runs(&self, filter: &RunFilter) -> Result<Vec<DagRun>, StoreError> {
        let (conditions, values) = run_filter_sql(filter);
        let n = values.len();
        let sql = format!(
            "SELECT {RUN_COLUMNS} FROM dag_run{conditions}
             ORDER BY logical_date DESC, dag_id, run_id LIMIT ${} OFFSET ${}",
            n + 1,
            n + 2
        );
        let mut query = sqlx::query(&sql);
        for value in values {
            query = query.bind(value);
        }
        let rows = query
            .bind(i64::from(if filter.limit == 0 {
                100
            } else {
                filter.limit
            }))
            .bind(i64::from(filter.offset))
            .fetch_all(&self.pool)
            .await
            .map_err(query_error("list runs"))?;
        rows.iter().map(run_from_row).collect()
    }

    async fn count_runs(&self, filter: &RunFilter) -> Result<u64, StoreError> {
        let (conditions, values) = run_filter_sql(filter);
        let sql = format!("SELECT COUNT(*) AS n FROM dag_run{conditions}");
        let mut query = sqlx::query(&sql);
        for value in values {
            query = query.bind(value);
        }
        let row = query
            .fetch_one(&self.pool)
            .await
            .map_err(query_error("count runs"))?;
        Ok(get::<i64>(&row, "n")? as u64)
    }

    async fn change_marker(&self) -> Result<i64, StoreError> {
        // Every task change bumps updated_at; run changes set created/started/ended; the
        // history id grows with every transition. Their sum moves whenever anything does.
        let row = sqlx::query(
            "SELECT (SELECT COALESCE(MAX(id), 0) FROM task_state_history)
                  + (SELECT COALESCE(MAX(created_at), 0) + COALESCE(MAX(ended_at), 0) + COALESCE(MAX(started_at), 0) FROM dag_run)
                  + (SELECT COALESCE(MAX(updated_at), 0) FROM dag) AS marker",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(query_error("read change marker"))?;
        get::<i64>(&row, "marker")
    }

    async fn deliveries(&self, key: &TaskKey, attempt: u32) -> Result<Vec<Delivery>, StoreError> {
        let rows = sqlx::query(
            "SELECT item, state, attempts, detail, updated_at FROM delivery
             WHERE dag_id = $1 AND run_id = $2 AND attempt = $3 AND task_id = $4
             ORDER BY CASE WHEN state = 'delivered' THEN 1 ELSE 0 END, item",
        )
        .bind(&key.dag_id)
        .bind(&key.run_id)
        .bind(i64::from(attempt))
        .bind(&key.task_id)
        .fetch_all(&self.pool)
        .await
        .map_err(query_error("read deliveries"))?;
        rows.iter()
            .map(|row| {
                Ok(Delivery {
                    item: get(row, "item")?,
                    delivered: get::<String>(row, "state")? == "delivered",
                    attempts: get::<i64>(row, "attempts")? as u32,
                    detail: get(row, "detail")?,
                    updated_at: instant("updated_at", get(row, "updated_at")?)?,
                })
            })
            .collect()
    }

    async fn attempts(&self, dag_id: &str, run_id: &str) -> Result<Vec<RunAttempt>, StoreError> {
        let rows = sqlx::query(
            "SELECT attempt, conf, state, queued_at, started_at, ended_at, dag_hash
             FROM dag_run_attempt WHERE dag_id = $1 AND run_id = $2 ORDER BY attempt",
        )
        .bind(dag_id)
        .bind(run_id)
        .fetch_all(&self.pool)
        .await
        .map_err(query_error("read attempts"))?;
        rows.iter().map(attempt_from_row).collect()
    }

    async fn history(&self, dag_id: &str, run_id: &str) -> Result<Vec<StateChange>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, dag_id, run_id, task_id, try_number, from_state, to_state, at, reason
             FROM task_state_history WHERE dag_id = $1 AND run_id = $2 ORDER BY id",
        )
        .bind(dag_id)
        .bind(run_id)
        .fetch_all(&self.pool)
        .await
        .map_err(query_error("read history"))?;
        rows.iter()
            .map(|row| {
                Ok(StateChange {
                    id: get(row, "id")?,
                    dag_id: get(row, "dag_id")?,
                    run_id: get(row, "run_id")?,
                    task_id: get(row, "task_id")?,
                    try_number: get::<i64>(row, "try_number")? as u32,
                    from: parse("from_state", get::<String>(row, "from_state")?)?,
                    to: parse("to_state", get::<String>(row, "to_state")?)?,
                    at: instant("at", get(row, "at")?)?,
                    reason: get(row, "reason")?,
                })
            })
            .collect()
    }

    async fn recent_runs(&self, per_dag: u32) -> Result<Vec<DagRun>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {RUN_COLUMNS} FROM (
                 SELECT *, ROW_NUMBER() OVER (PARTITION BY dag_id ORDER BY logical_date DESC) AS position FROM dag_run
             ) ranked WHERE position <= $1 ORDER BY dag_id, logical_date DESC"
        ))
        .bind(i64::from(per_dag))
        .fetch_all(&self.pool)
        .await
        .map_err(query_error("read recent runs"))?;
        rows.iter().map(run_from_row).collect()
    }

    async fn task_instances_of_runs(
        &self,
        dag_id: &str,
        run_ids: &[String],
    ) -> Result<Vec<TaskInstance>, StoreError> {
        if run_ids.is_empty() {
            return Ok(Vec::new());
        }
        let placeholders: Vec<String> = (0..run_ids.len()).map(|i| format!("${}", i + 2)).collect();
        let sql = format!(
            "SELECT {TI_COLUMNS} FROM task_instance WHERE dag_id = $1 AND run_id IN ({}) ORDER BY run_id, task_id",
            placeholders.join(", ")
        );
        let mut query = sqlx::query(&sql).bind(dag_id);
        for run_id in run_ids {
            query = query.bind(run_id);
        }
        let rows = query
            .fetch_all(&self.pool)
            .await
            .map_err(query_error("read task instances of runs"))?;
        rows.iter().map(ti_from_row).collect()
    }
}

#[async_trait]
impl Metrics for SqlStore {
    async fn active_counts(&self) -> Result<ActiveCounts, StoreError> {
        let mut counts = ActiveCounts::default();
        let rows = sqlx::query(
            "SELECT dag_id, state, COUNT(*) AS n FROM dag_run
             WHERE state IN ('queued', 'running') GROUP BY dag_id, state ORDER BY dag_id, state",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(query_error("count active runs"))?;
        for row in &rows {
            counts.runs.push((
                get(row, "dag_id")?,
                get(row, "state")?,
                get::<i64>(row, "n")? as u64,
            ));
        }
        // Unfinished task instances only exist in unfinished runs: found through the runs'
        // state index and the instances' key, never a scan of the history (task_instance
        // has no state index: every transition would have to maintain it).
        let rows = sqlx::query(
            "SELECT ti.state AS state, COUNT(*) AS n
             FROM dag_run r JOIN task_instance ti ON ti.dag_id = r.dag_id AND ti.run_id = r.run_id
             WHERE r.state IN ('queued', 'running')
               AND ti.state IN ('pending', 'queued', 'running', 'up_for_retry')
             GROUP BY ti.state ORDER BY ti.state",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(query_error("count active task instances"))?;
        for row in &rows {
            counts
                .task_instances
                .push((get(row, "state")?, get::<i64>(row, "n")? as u64));
        }
        Ok(counts)
    }
}

#[async_trait]
impl Processes for SqlStore {
    async fn record_process(&self, process: &TaskProcess) -> Result<(), StoreError> {
        let _turn = self.write_turn().await;
        sqlx::query(
            "INSERT INTO task_process (dag_id, run_id, task_id, try_number, host, pgid, start_ticks, started_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT (dag_id, run_id, task_id, host, pgid) DO UPDATE
             SET try_number = excluded.try_number, start_ticks = excluded.start_ticks, started_at = excluded.started_at",
        )
        .bind(&process.key.dag_id)
        .bind(&process.key.run_id)
        .bind(&process.key.task_id)
        .bind(i64::from(process.try_number))
        .bind(&process.host)
        .bind(i64::from(process.pgid))
        .bind(process.start_ticks as i64)
        .bind(micros(process.started_at))
        .execute(&self.pool)
        .await
        .map_err(query_error("record a process"))?;
        Ok(())
    }

    async fn forget_process(&self, key: &TaskKey, host: &str, pgid: i32) -> Result<(), StoreError> {
        let _turn = self.write_turn().await;
        sqlx::query(
            "DELETE FROM task_process WHERE dag_id = $1 AND run_id = $2 AND task_id = $3 AND host = $4 AND pgid = $5",
        )
        .bind(&key.dag_id)
        .bind(&key.run_id)
        .bind(&key.task_id)
        .bind(host)
        .bind(i64::from(pgid))
        .execute(&self.pool)
        .await
        .map_err(query_error("forget a process"))?;
        Ok(())
    }

    async fn processes(&self, dag_id: &str, run_id: &str) -> Result<Vec<TaskProcess>, StoreError> {
        let rows = sqlx::query(
            "SELECT task_id, try_number, host, pgid, start_ticks, started_at FROM task_process
             WHERE dag_id = $1 AND run_id = $2 ORDER BY task_id, pgid",
        )
        .bind(dag_id)
        .bind(run_id)
        .fetch_all(&self.pool)
        .await
        .map_err(query_error("read processes"))?;
        rows.iter()
            .map(|row| {
                Ok(TaskProcess {
                    key: TaskKey {
                        dag_id: dag_id.to_string(),
                        run_id: run_id.to_string(),
                        task_id: get(row, "task_id")?,
                    },
                    try_number: get::<i64>(row, "try_number")? as u32,
                    host: get(row, "host")?,
                    pgid: get::<i64>(row, "pgid")? as i32,
                    start_ticks: get::<i64>(row, "start_ticks")? as u64,
                    started_at: instant("started_at", get(row, "started_at")?)?,
                })
            })
            .collect()
    }
}

const NOTIFICATION_COLUMNS: &str = "id, dag_id, run_id, channel, event, message, created_at, attempts, next_at, sent_at, gave_up_at, last_error";

fn notification_row(row: &AnyRow) -> Result<crate::notify::Notification, StoreError> {
    let message: String = get(row, "message")?;
    Ok(crate::notify::Notification {
        id: get(row, "id")?,
        dag_id: get(row, "dag_id")?,
        run_id: get(row, "run_id")?,
        channel: get(row, "channel")?,
        event: get(row, "event")?,
        message: serde_json::from_str(&message).map_err(|e| StoreError::Corrupt {
            what: "message",
            message: e.to_string(),
        })?,
        created_at: instant("created_at", get(row, "created_at")?)?,
        attempts: get::<i64>(row, "attempts")? as u32,
        next_at: instant("next_at", get(row, "next_at")?)?,
        sent_at: opt_instant("sent_at", get(row, "sent_at")?)?,
        gave_up_at: opt_instant("gave_up_at", get(row, "gave_up_at")?)?,
        last_error: get(row, "last_error")?,
    })
}

#[async_trait]
impl Outbox for SqlStore {
    async fn enqueue_notifications(
        &self,
        notifications: &[crate::notify::Notification],
    ) -> Result<(), StoreError> {
        if notifications.is_empty() {
            return Ok(());
        }
        let _turn = self.write_turn().await;
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(query_error("queue notifications"))?;
        for n in notifications {
            let message = serde_json::to_string(&n.message).map_err(|e| StoreError::Corrupt {
                what: "message",
                message: e.to_string(),
            })?;
            sqlx::query(
                "INSERT INTO notification (id, dag_id, run_id, channel, event, message, created_at, attempts, next_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, 0, $8)
                 ON CONFLICT (id) DO NOTHING",
            )
            .bind(&n.id)
            .bind(&n.dag_id)
            .bind(&n.run_id)
            .bind(&n.channel)
            .bind(&n.event)
            .bind(message)
            .bind(micros(n.created_at))
            .bind(micros(n.next_at))
            .execute(&mut *tx)
            .await
            .map_err(query_error("queue a notification"))?;
        }
        tx.commit()
            .await
            .map_err(query_error("queue notifications"))?;
        Ok(())
    }

    async fn due_notifications(
        &self,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<crate::notify::Notification>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {NOTIFICATION_COLUMNS} FROM notification
             WHERE sent_at IS NULL AND gave_up_at IS NULL AND next_at <= $1
             ORDER BY next_at LIMIT $2"
        ))
        .bind(micros(now))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(query_error("read due notifications"))?;
        rows.iter().map(notification_row).collect()
    }

    async fn claim_notification(
        &self,
        notification: &crate::notify::Notification,
        lease: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let _turn = self.write_turn().await;
        let claimed = sqlx::query(
            "UPDATE notification SET attempts = attempts + 1, next_at = $1
             WHERE id = $2 AND attempts = $3 AND sent_at IS NULL AND gave_up_at IS NULL",
        )
        .bind(micros(lease))
        .bind(&notification.id)
        .bind(i64::from(notification.attempts))
        .execute(&self.pool)
        .await
        .map_err(query_error("claim a notification"))?;
        Ok(claimed.rows_affected() == 1)
    }

    async fn notification_sent(&self, id: &str, at: DateTime<Utc>) -> Result<(), StoreError> {
        let _turn = self.write_turn().await;
        sqlx::query("UPDATE notification SET sent_at = $1, last_error = NULL WHERE id = $2")
            .bind(micros(at))
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(query_error("record a sent notification"))?;
        Ok(())
    }

    async fn notification_failed(
        &self,
        id: &str,
        error: &str,
        next_at: Option<DateTime<Utc>>,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let _turn = self.write_turn().await;
        let query = match next_at {
            Some(next) => {
                sqlx::query("UPDATE notification SET last_error = $1, next_at = $2 WHERE id = $3")
                    .bind(error)
                    .bind(micros(next))
                    .bind(id)
            }
            None => sqlx::query(
                "UPDATE notification SET last_error = $1, gave_up_at = $2 WHERE id = $3",
            )
            .bind(error)
            .bind(micros(at))
            .bind(id),
        };
        query
            .execute(&self.pool)
            .await
            .map_err(query_error("record a failed notification"))?;
        Ok(())
    }

    async fn notifications(
        &self,
        dag_id: &str,
        run_id: &str,
    ) -> Result<Vec<crate::notify::Notification>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {NOTIFICATION_COLUMNS} FROM notification
             WHERE dag_id = $1 AND run_id = $2 ORDER BY created_at, id"
        ))
        .bind(dag_id)
        .bind(run_id)
        .fetch_all(&self.pool)
        .await
        .map_err(query_error("read notifications"))?;
        rows.iter().map(notification_row).collect()
    }
}

#[async_trait]
impl Slas for SqlStore {
    async fn mark_sla_missed(
        &self,
        dag_id: &str,
        run_id: &str,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let _turn = self.write_turn().await;
        let marked = sqlx::query(
            "UPDATE dag_run SET sla_missed_at = $1
             WHERE dag_id = $2 AND run_id = $3 AND sla_missed_at IS NULL",
        )
        .bind(micros(at))
        .bind(dag_id)
        .bind(run_id)
        .execute(&self.pool)
        .await
        .map_err(query_error("record a missed SLA"))?;
        Ok(marked.rows_affected() == 1)
    }
}

#[async_trait]
impl Stops for SqlStore {
    async fn request_stop(&self, request: &StopRequest) -> Result<(), StoreError> {
        let _turn = self.write_turn().await;
        sqlx::query(
            "INSERT INTO stop_request (dag_id, run_id, task_id, requested_by, requested_at, run_ends)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (dag_id, run_id, task_id) DO UPDATE
             SET requested_by = excluded.requested_by, requested_at = excluded.requested_at,
                 run_ends = excluded.run_ends",
        )
        .bind(&request.dag_id)
        .bind(&request.run_id)
        .bind(request.task_id.as_deref().unwrap_or(""))
        .bind(&request.requested_by)
        .bind(micros(request.requested_at))
        .bind(request.run_ends.as_str())
        .execute(&self.pool)
        .await
        .map_err(query_error("record a stop request"))?;
        Ok(())
    }

    async fn stop_requests(
        &self,
        dag_id: &str,
        run_id: &str,
    ) -> Result<Vec<StopRequest>, StoreError> {
        let rows = sqlx::query(
            "SELECT task_id, requested_by, requested_at, run_ends FROM stop_request
             WHERE dag_id = $1 AND run_id = $2 ORDER BY requested_at, task_id",
        )
        .bind(dag_id)
        .bind(run_id)
        .fetch_all(&self.pool)
        .await
        .map_err(query_error("read stop requests"))?;
        rows.iter()
            .map(|row| {
                let task_id: String = get(row, "task_id")?;
                Ok(StopRequest {
                    dag_id: dag_id.to_string(),
                    run_id: run_id.to_string(),
                    task_id: (!task_id.is_empty()).then_some(task_id),
                    requested_by: get(row, "requested_by")?,
                    requested_at: instant("requested_at", get(row, "requested_at")?)?,
                    run_ends: parse("run_ends", get(row, "run_ends")?)?,
                })
            })
            .collect()
    }

    async fn forget_stop(&self, request: &StopRequest) -> Result<(), StoreError> {
        let _turn = self.write_turn().await;
        sqlx::query(
            "DELETE FROM stop_request WHERE dag_id = $1 AND run_id = $2 AND task_id = $3 AND requested_at = $4",
        )
        .bind(&request.dag_id)
        .bind(&request.run_id)
        .bind(request.task_id.as_deref().unwrap_or(""))
        .bind(micros(request.requested_at))
        .execute(&self.pool)
        .await
        .map_err(query_error("forget a stop request"))?;
        Ok(())
    }
}

#[async_trait]
impl Retention for SqlStore {
    async fn runs_ended_before(
        &self,
        cutoff: DateTime<Utc>,
        dag_id: Option<&str>,
    ) -> Result<Vec<DagRun>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {RUN_COLUMNS} FROM dag_run
             WHERE state IN ('success', 'failed', 'cancelled') AND ended_at IS NOT NULL AND ended_at < $1
               AND ($2 = '' OR dag_id = $2)
             ORDER BY ended_at, dag_id, run_id"
        ))
        .bind(micros(cutoff))
        .bind(dag_id.unwrap_or_default())
        .fetch_all(&self.pool)
        .await
        .map_err(query_error("list runs to clean"))?;
        rows.iter().map(run_from_row).collect()
    }

    async fn delete_runs(&self, runs: &[RunRef]) -> Result<Vec<RunRef>, StoreError> {
        let _turn = self.write_turn().await;
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(query_error("begin a clean"))?;
        let mut deleted = Vec::new();
        for run in runs {
            // The run first (task instances, attempts and deliveries go with it, ON DELETE
            // CASCADE), and only if it is still finished: a run re-triggered meanwhile stays.
            let done = sqlx::query(
                "DELETE FROM dag_run WHERE dag_id = $1 AND run_id = $2
                   AND state IN ('success', 'failed', 'cancelled')",
            )
            .bind(&run.dag_id)
            .bind(&run.run_id)
            .execute(&mut *tx)
            .await
            .map_err(query_error("clean a run"))?;
            if done.rows_affected() == 0 {
                continue;
            }
            // The history has no foreign key: it goes once the run did.
            sqlx::query("DELETE FROM task_state_history WHERE dag_id = $1 AND run_id = $2")
                .bind(&run.dag_id)
                .bind(&run.run_id)
                .execute(&mut *tx)
                .await
                .map_err(query_error("clean history"))?;
            deleted.push(run.clone());
        }
        if !deleted.is_empty() {
            // Versions no run or attempt uses any more (the current one is stored again by
            // its next run).
            sqlx::query(
                "DELETE FROM dag_version WHERE created_at < $1 AND NOT EXISTS (
                     SELECT 1 FROM dag_run r
                     WHERE r.dag_id = dag_version.dag_id AND r.dag_hash = dag_version.version
                 ) AND NOT EXISTS (
                     SELECT 1 FROM dag_run_attempt a
                     WHERE a.dag_id = dag_version.dag_id AND a.dag_hash = dag_version.version
                 )",
            )
            // Not a version stored or used in the last hour: a run being created may use it.
            .bind(micros(Utc::now() - chrono::Duration::hours(1)))
            .execute(&mut *tx)
            .await
            .map_err(query_error("clean DAG versions"))?;
        }
        tx.commit().await.map_err(query_error("commit a clean"))?;
        Ok(deleted)
    }
}

#[async_trait]
impl AuditLog for SqlStore {
    async fn record_audit(&self, entry: &AuditEntry) -> Result<(), StoreError> {
        let _turn = self.write_turn().await;
        sqlx::query(
            "INSERT INTO audit_log (at, actor, role, method, path, status, remote) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(micros(entry.at))
        .bind(&entry.actor)
        .bind(&entry.role)
        .bind(&entry.method)
        .bind(&entry.path)
        .bind(i64::from(entry.status))
        .bind(&entry.remote)
        .execute(&self.pool)
        .await
        .map_err(query_error("record an audit entry"))?;
        Ok(())
    }

    async fn audit_entries(&self, limit: u32, offset: u32) -> Result<Vec<AuditEntry>, StoreError> {
        let rows = sqlx::query(
            "SELECT at, actor, role, method, path, status, remote FROM audit_log
             ORDER BY id DESC LIMIT $1 OFFSET $2",
        )
        .bind(i64::from(limit))
        .bind(i64::from(offset))
        .fetch_all(&self.pool)
        .await
        .map_err(query_error("read the audit log"))?;
        rows.iter()
            .map(|row| {
                Ok(AuditEntry {
                    at: instant("at", get(row, "at")?)?,
                    actor: get(row, "actor")?,
                    role: get(row, "role")?,
                    method: get(row, "method")?,
                    path: get(row, "path")?,
                    status: get::<i64>(row, "status")? as u16,
                    remote: get(row, "remote")?,
                })
            })
            .collect()
    }
}

#[async_trait]
impl Heartbeats for SqlStore {
    async fn scheduler_heartbeat(&self, beat: &SchedulerBeat) -> Result<(), StoreError> {
        let _turn = self.write_turn().await;
        sqlx::query(
            "INSERT INTO scheduler_heartbeat (scheduler_id, hostname, pid, started_at, heartbeat_at) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (scheduler_id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at",
        )
        .bind(&beat.scheduler_id)
        .bind(&beat.hostname)
        .bind(i64::from(beat.pid))
        .bind(micros(beat.started_at))
        .bind(micros(beat.heartbeat_at))
        .execute(&self.pool)
        .await
        .map_err(query_error("scheduler heartbeat"))?;
        Ok(())
    }

    async fn last_scheduler_heartbeat(&self) -> Result<Option<SchedulerBeat>, StoreError> {
        let row = sqlx::query(
            "SELECT scheduler_id, hostname, pid, started_at, heartbeat_at FROM scheduler_heartbeat ORDER BY heartbeat_at DESC LIMIT 1",
        )
        .fetch_optional(&self.pool)
        .await
        .map_err(query_error("read scheduler heartbeat"))?;
        row.map(|r| {
            Ok(SchedulerBeat {
                scheduler_id: get(&r, "scheduler_id")?,
                hostname: get(&r, "hostname")?,
                pid: get::<i64>(&r, "pid")? as u32,
                started_at: instant("started_at", get(&r, "started_at")?)?,
                heartbeat_at: instant("heartbeat_at", get(&r, "heartbeat_at")?)?,
            })
        })
        .transpose()
    }
}

#[async_trait]
impl Workers for SqlStore {
    async fn claim_tries(
        &self,
        worker: &WorkerBeat,
        queues: &[String],
        limit: u32,
        now: DateTime<Utc>,
    ) -> Result<Vec<TaskInstance>, StoreError> {
        // Queue names are identifiers (checked when the DAG is read): `,a,b,` holds them.
        let listed = format!(",{},", queues.join(","));
        let reason = format!("claimed by worker {} on {}", worker.name, worker.hostname);
        let in_list = match self.backend {
            Backend::Postgres => "strpos($1, ',' || queue || ',') > 0",
            Backend::Sqlite => "instr($1, ',' || queue || ',') > 0",
        };
        // SKIP LOCKED: a row another worker's claim holds is passed over, not waited on.
        // (SQLite has one writer at a time: the transaction alone keeps claims apart.)
        let lock = match self.backend {
            Backend::Postgres => "FOR UPDATE SKIP LOCKED",
            Backend::Sqlite => "",
        };
        let _turn = self.write_turn().await;
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(query_error("begin a claim"))?;
        if self.backend == Backend::Postgres {
            // A worker stalled inside its claim must not hold the others' claims (and with
            // them their heartbeats) for long: theirs give up and try again.
            sqlx::query("SET LOCAL lock_timeout = '2s'")
                .execute(&mut *tx)
                .await
                .map_err(query_error("begin a claim"))?;
        }
        // More candidates than room: a try of a full pool or DAG at the head of the queue
        // does not keep the others waiting behind it.
        let wanted = limit;
        let limit = limit.saturating_mul(4).saturating_add(16);
        let candidates = sqlx::query(&format!(
            "SELECT dag_id, run_id, task_id, pool FROM task_instance
             WHERE state = 'queued' AND queue IS NOT NULL AND {in_list}
             ORDER BY queued_at LIMIT $2 {lock}"
        ))
        .bind(&listed)
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await
        .map_err(query_error("find queued tries"))?;
        let for_update = if self.backend == Backend::Postgres {
            "FOR UPDATE"
        } else {
            ""
        };
        struct Candidate {
            key: (String, String, String),
            pool: Option<String>,
        }
        let mut found = Vec::with_capacity(candidates.len());
        for row in &candidates {
            found.push(Candidate {
                key: (
                    get(row, "dag_id")?,
                    get(row, "run_id")?,
                    get(row, "task_id")?,
                ),
                pool: get(row, "pool")?,
            });
        }
        // Room per DAG (its max_active_tasks) and per pool, each counted under its row's
        // lock: claims of one DAG or pool are ordered across workers. DAGs first, then
        // pools, each sorted: every claim takes the locks in one order (no deadlock).
        let mut dag_room: std::collections::BTreeMap<String, i64> = Default::default();
        let dags: std::collections::BTreeSet<&String> = found.iter().map(|c| &c.key.0).collect();
        for dag_id in dags {
            let limit = sqlx::query(&format!(
                "SELECT max_active_tasks FROM dag WHERE dag_id = $1 {for_update}"
            ))
            .bind(dag_id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(query_error("read a DAG's limit"))?
            .map(|row| get::<Option<i64>>(&row, "max_active_tasks"))
            .transpose()?
            .flatten();
            let Some(limit) = limit else { continue };
            let busy: i64 = sqlx::query(
                "SELECT count(*) AS n FROM task_instance WHERE dag_id = $1 AND state = 'running'",
            )
            .bind(dag_id)
            .fetch_one(&mut *tx)
            .await
            .map_err(query_error("count a DAG's tries"))
            .and_then(|row| get::<i64>(&row, "n"))?;
            dag_room.insert(dag_id.clone(), limit - busy);
        }
        let mut pool_room: std::collections::BTreeMap<String, i64> = Default::default();
        let pools: std::collections::BTreeSet<&String> =
            found.iter().filter_map(|c| c.pool.as_ref()).collect();
        for pool in pools {
            let slots = sqlx::query(&format!(
                "SELECT slots FROM pool WHERE name = $1 {for_update}"
            ))
            .bind(pool)
            .fetch_optional(&mut *tx)
            .await
            .map_err(query_error("read a pool"))?
            .map(|row| get::<i64>(&row, "slots"))
            .transpose()?
            .unwrap_or(0);
            let busy: i64 = sqlx::query(
                "SELECT count(*) AS n FROM task_instance WHERE pool = $1 AND state = 'running'",
            )
            .bind(pool)
            .fetch_one(&mut *tx)
            .await
            .map_err(query_error("count a pool's tries"))
            .and_then(|row| get::<i64>(&row, "n"))?;
            pool_room.insert(pool.clone(), slots - busy);
        }
        let mut chosen: Vec<(String, String, String)> = Vec::new();
        for candidate in found {
            let dag_free = dag_room.get(&candidate.key.0).is_none_or(|n| *n > 0);
            let pool_free = candidate
                .pool
                .as_ref()
                .is_none_or(|p| pool_room.get(p).is_some_and(|n| *n > 0));
            if dag_free && pool_free && chosen.len() < wanted as usize {
                if let Some(n) = dag_room.get_mut(&candidate.key.0) {
                    *n -= 1;
                }
                if let Some(n) = candidate.pool.as_ref().and_then(|p| pool_room.get_mut(p)) {
                    *n -= 1;
                }
                chosen.push(candidate.key);
            }
        }
        // The tries start now, after any wait for a pool's lock: the history's start times
        // must not run ahead of the claims that freed their slots.
        let now = now.max(Utc::now());
        let mut claimed = Vec::with_capacity(chosen.len());
        for (dag_id, run_id, task_id) in chosen {
            let row = sqlx::query(&format!(
                "UPDATE task_instance SET state = 'running', try_number = try_number + 1,
                     started_at = $4, ended_at = NULL, next_retry_at = NULL, error = NULL,
                     updated_at = $4, worker = $5, hostname = $6, heartbeat_at = $4,
                     last_reason = $7, last_write = NULL
                 WHERE dag_id = $1 AND run_id = $2 AND task_id = $3 AND state = 'queued'
                 RETURNING {TI_COLUMNS}"
            ))
            .bind(&dag_id)
            .bind(&run_id)
            .bind(&task_id)
            .bind(micros(now))
            .bind(&worker.name)
            .bind(&worker.hostname)
            .bind(&reason)
            .fetch_optional(&mut *tx)
            .await
            .map_err(query_error("claim a try"))?;
            let Some(row) = row else { continue };
            let ti = ti_from_row(&row)?;
            if self.backend == Backend::Postgres {
                // PostgreSQL has no history trigger (the batched statement writes history).
                sqlx::query(
                    "INSERT INTO task_state_history (dag_id, run_id, task_id, try_number, from_state, to_state, at, reason)
                     VALUES ($1, $2, $3, $4, 'queued', 'running', $5, $6)",
                )
                .bind(&ti.dag_id)
                .bind(&ti.run_id)
                .bind(&ti.task_id)
                .bind(i64::from(ti.try_number))
                .bind(micros(now))
                .bind(&reason)
                .execute(&mut *tx)
                .await
                .map_err(query_error("record a claim"))?;
            }
            claimed.push(ti);
        }
        tx.commit().await.map_err(query_error("commit a claim"))?;
        Ok(claimed)
    }

    async fn worker_heartbeat(
        &self,
        worker: &WorkerBeat,
        holds: &[(TaskKey, u32)],
        now: DateTime<Utc>,
    ) -> Result<Vec<(TaskKey, u32)>, StoreError> {
        let _turn = self.write_turn().await;
        sqlx::query(
            "INSERT INTO worker (name, hostname, pid, queues, concurrency, started_at, heartbeat_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (name) DO UPDATE SET hostname = excluded.hostname, pid = excluded.pid,
                 queues = excluded.queues, concurrency = excluded.concurrency,
                 started_at = excluded.started_at, heartbeat_at = excluded.heartbeat_at",
        )
        .bind(&worker.name)
        .bind(&worker.hostname)
        .bind(i64::from(worker.pid))
        .bind(worker.queues.join(","))
        .bind(i64::from(worker.concurrency))
        .bind(micros(worker.started_at))
        .bind(micros(now))
        .execute(&self.pool)
        .await
        .map_err(query_error("record the worker's heartbeat"))?;
        let mut alive = Vec::with_capacity(holds.len());
        for (key, try_number) in holds {
            let touched = sqlx::query(
                "UPDATE task_instance SET heartbeat_at = $1
                 WHERE dag_id = $2 AND run_id = $3 AND task_id = $4 AND try_number = $5
                   AND worker = $6 AND state = 'running'",
            )
            .bind(micros(now))
            .bind(&key.dag_id)
            .bind(&key.run_id)
            .bind(&key.task_id)
            .bind(i64::from(*try_number))
            .bind(&worker.name)
            .execute(&self.pool)
            .await
            .map_err(query_error("heartbeat the worker's tries"))?;
            if touched.rows_affected() == 1 {
                alive.push((key.clone(), *try_number));
            }
        }
        Ok(alive)
    }

    async fn set_pools(&self, pools: &[(String, u32)]) -> Result<(), StoreError> {
        let _turn = self.write_turn().await;
        for (name, slots) in pools {
            sqlx::query(
                "INSERT INTO pool (name, slots) VALUES ($1, $2)
                 ON CONFLICT (name) DO UPDATE SET slots = excluded.slots",
            )
            .bind(name)
            .bind(i64::from(*slots))
            .execute(&self.pool)
            .await
            .map_err(query_error("record a pool"))?;
        }
        Ok(())
    }

    async fn notify(&self, wake: Wake, payload: &str) -> Result<(), StoreError> {
        if self.backend != Backend::Postgres {
            return Ok(());
        }
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(wake.channel())
            .bind(payload)
            .execute(&self.pool)
            .await
            .map_err(query_error("notify"))?;
        Ok(())
    }

    async fn listen(
        &self,
        wake: Wake,
    ) -> Result<Option<tokio::sync::mpsc::UnboundedReceiver<String>>, StoreError> {
        if self.backend != Backend::Postgres {
            return Ok(None);
        }
        let mut listener = sqlx::postgres::PgListener::connect(&self.url)
            .await
            .map_err(|source| StoreError::Open {
                url: redact_url(&self.url),
                cause: plain_tls_error(&self.url, source),
            })?;
        listener
            .listen(wake.channel())
            .await
            .map_err(query_error("listen"))?;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                match listener.recv().await {
                    Ok(notification) => {
                        if tx.send(notification.payload().to_string()).is_err() {
                            return; // nobody listens any more
                        }
                    }
                    Err(error) => {
                        // It reconnects by itself; notifications sent meanwhile are lost,
                        // which the listeners' polling covers.
                        tracing::debug!(%error, "store notifications interrupted");
                        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                    }
                }
            }
        });
        Ok(Some(rx))
    }

    async fn set_max_active_tasks(
        &self,
        dag_id: &str,
        max_active_tasks: u32,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let _turn = self.write_turn().await;
        sqlx::query(
            "INSERT INTO dag (dag_id, is_paused, updated_at, max_active_tasks) VALUES ($1, 0, $2, $3)
             ON CONFLICT (dag_id) DO UPDATE SET max_active_tasks = excluded.max_active_tasks",
        )
        .bind(dag_id)
        .bind(micros(at))
        .bind(i64::from(max_active_tasks))
        .execute(&self.pool)
        .await
        .map_err(query_error("record a DAG's max_active_tasks"))?;
        Ok(())
    }

    async fn workers(&self) -> Result<Vec<WorkerBeat>, StoreError> {
        let rows = sqlx::query(
            "SELECT name, hostname, pid, queues, concurrency, started_at, heartbeat_at
             FROM worker ORDER BY heartbeat_at DESC",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(query_error("read workers"))?;
        rows.iter()
            .map(|row| {
                Ok(WorkerBeat {
                    name: get(row, "name")?,
                    hostname: get(row, "hostname")?,
                    pid: get::<i64>(row, "pid")? as u32,
                    queues: get::<String>(row, "queues")?
                        .split(',')
                        .filter(|q| !q.is_empty())
                        .map(str::to_string)
                        .collect(),
                    concurrency: get::<i64>(row, "concurrency")? as u32,
                    started_at: instant("started_at", get(row, "started_at")?)?,
                    heartbeat_at: instant("heartbeat_at", get(row, "heartbeat_at")?)?,
                })
            })
            .collect()
    }
}
