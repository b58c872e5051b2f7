//! `clickhouse_load`: loads an upstream table into a ClickHouse table.
//!
//! Before a byte is sent it checks the artifact against the table: every table column has a
//! source (an artifact column of the same name, the version or deleted column, or a DEFAULT),
//! every artifact column has a place, and every value fits its column type. Rows then stream
//! as RowBinary in batches, encoded on a blocking thread while the previous batch is on the
//! wire. With `version_column` on a ReplacingMergeTree, a re-run of the same window writes a
//! larger version and converges to one row per key under FINAL, which is also how a load
//! that failed half-way is repaired.

use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;

pub(crate) mod clickhouse_http;
mod rowbinary;
mod tombstones;

use crate::frame;
use clickhouse_http::ClickHouse;
use rowbinary::{prepare, ChType, Prepared};
use sluice_operator_api::{Operator, OperatorError, TaskContext, TaskOutput};

mod config;
pub use config::ClickhouseLoadConfig;

/// The built `clickhouse_load` operator.
#[derive(Debug)]
pub struct ClickhouseLoad {
    config: ClickhouseLoadConfig,
}

/// How each table column gets its values, in table order.
fn plan(
    config: &ClickhouseLoadConfig,
    table_columns: &[clickhouse_http::TableColumn],
    data: &polars::prelude::DataFrame,
    source_task: &str,
    version: u64,
) -> Result<(Vec<String>, Vec<Prepared>), String> {
    let mut names = Vec::new();
    let mut prepared = Vec::new();
    let mut problems = Vec::new();
    let mut used = std::collections::HashSet::new();
    for column in table_columns {
        let name = column.name.as_str();
        let constant = if Some(name) == config.version_column.as_deref() {
            Some(version)
        } else if Some(name) == config.deleted_column.as_deref() {
            Some(0)
        } else {
            None
        };
        if let Some(value) = constant {
            let bytes = match column.ty.as_str() {
                "UInt64" | "Int64" => 8,
                "UInt32" | "Int32" => 4,
                "UInt16" | "Int16" => 2,
                "UInt8" | "Int8" => 1,
                other => {
                    problems.push(format!("column `{name}`: the table's {other} cannot hold a version or deleted flag (use UInt64 / UInt8)"));
                    continue;
                }
            };
            if bytes < 8 && value >= 1 << (bytes * 8) {
                problems.push(format!(
                    "column `{name}`: the version {value} does not fit the table's {}",
                    column.ty
                ));
                continue;
            }
            names.push(name.to_string());
            prepared.push(Prepared::Constant { value, bytes });
            continue;
        }
        match data.column(name) {
            Ok(source) => {
                used.insert(name.to_string());
                match prepare(name, source, &column.ty) {
                    Ok(p) => {
                        names.push(name.to_string());
                        prepared.push(p);
                    }
                    Err(e) => problems.push(e),
                }
            }
            Err(_) if column.has_default => {}
            Err(_) => problems.push(format!(
                "column `{name}` ({}): the table of `{source_task}` has no such column",
                column.ty
            )),
        }
    }
    for name in data.get_column_names() {
        if !used.contains(name.as_str()) {
            problems.push(format!(
                "column `{name}` of `{source_task}`'s table is not in the table"
            ));
        }
    }
    for (field, value) in [
        ("version_column", &config.version_column),
        ("deleted_column", &config.deleted_column),
    ] {
        if let Some(name) = value {
            if !table_columns.iter().any(|c| &c.name == name) {
                problems.push(format!("{field}: the table has no column `{name}`"));
            }
        }
    }
    if problems.is_empty() {
        Ok((names, prepared))
    } else {
        Err(problems.join("; "))
    }
}

/// A load's version: the wall clock in ms, or one above the table's latest version when the
/// clock is not past it (a clock stepped back, or loads within the same millisecond).
fn next_version(now_ms: u64, latest: u64) -> u64 {
    now_ms.max(latest.saturating_add(1))
}

#[async_trait]
impl Operator for ClickhouseLoad {
    async fn execute(&self, ctx: &TaskContext) -> Result<TaskOutput, OperatorError> {
        let started = Instant::now();
        let now_ms = chrono::Utc::now().timestamp_millis() as u64;
        let conn = ctx.connection(&self.config.conn)?;
        let ch = ClickHouse::new(conn, self.config.timeout.0)?;
        let table = &self.config.table;

        // The source table.
        let with_tables: Vec<(&String, &sluice_operator_api::ArtifactRef)> = ctx
            .upstream
            .iter()
            .filter_map(|(task, out)| out.table.as_ref().map(|t| (task, t)))
            .collect();
        let (source_task, artifact) = match &self.config.from {
            Some(task) => {
                let out = ctx.upstream.get(task).ok_or_else(|| {
                    OperatorError::fatal(format!("from: `{task}` is not a direct upstream task"))
                })?;
                let table = out.table.as_ref().ok_or_else(|| {
                    OperatorError::fatal(format!("from: task `{task}` produced no table"))
                })?;
                (task.clone(), table.clone())
            }
            None => match with_tables.as_slice() {
                [(task, table)] => ((*task).clone(), (*table).clone()),
                [] => {
                    return Err(OperatorError::fatal(
                        "no upstream task produced a table to load",
                    ))
                }
                many => {
                    let names: Vec<&str> = many.iter().map(|(t, _)| t.as_str()).collect();
                    return Err(OperatorError::fatal(format!(
                        "several upstream tables ({}); choose one with `from`",
                        names.join(", ")
                    )));
                }
            },
        };
        let path = ctx
            .artifacts
            .local_path(&artifact)
            .await
            .map_err(|e| OperatorError::fatal(e.to_string()))?;

        // The target table, created from the DDL file when missing.
        let mut columns = ch.columns(table).await?;
        if columns.is_none() {
            if let Some(ddl) = &self.config.ddl {
                let ddl_path = ctx.resolve_path(ddl);
                let text = ctx.config_file("ddl", ddl).await?;
                ctx.log.info(&format!(
                    "table {}.{table} does not exist: running {}",
                    ch.database(),
                    ddl_path.display()
                ));
                if sluice_operator_api::template::is_template(&text) {
                    // DDL is code: a value rendered into it would become code too.
                    return Err(OperatorError::fatal(format!(
                        "ddl: {} uses template syntax; DDL files run as written",
                        ddl_path.display()
                    )));
                }
                ch.execute(&text).await?;
                columns = ch.columns(table).await?;
            }
        }
        let columns = columns.ok_or_else(|| {
            OperatorError::fatal(format!(
                "table {}.{table} does not exist (and no `ddl` creates it)",
                ch.database()
            ))
        })?;

        // The load's version: the start time in ms, but always above every version the table
        // holds already, so this load wins under FINAL even if the clock stepped back.
        let version = match &self.config.version_column {
            Some(column) if columns.iter().any(|c| &c.name == column) => {
                let latest = ch.max_u64(table, column).await?;
                let version = next_version(now_ms, latest);
                if version != now_ms {
                    ctx.log.warn(&format!(
                        "the clock ({now_ms} ms) is not past the table's latest {column} ({latest}): this load writes {version}"
                    ));
                }
                version
            }
            _ => now_ms,
        };

        // The slice this load owns, as literals of the columns' types.
        let scope = self.scope(ctx, &columns)?;

        // Check everything before sending anything, then send: both slice by slice over the
        // memory-mapped artifact, so memory holds one slice's converted values, not the table.
        // A table of one slice is converted once.
        let read_from = path.clone();
        let config = self.config.clone();
        let (source, table_name, table_columns) =
            (source_task.clone(), table.clone(), columns.clone());
        let (slices, names, single, schema) = tokio::task::spawn_blocking(move || {
            let slices = Slices {
                data: frame::read_ipc(&read_from)?,
                config,
                table_columns,
                source,
                table: table_name,
                version,
            };
            let mut names = Vec::new();
            let mut single = None;
            for i in 0..slices.count() {
                let (n, prepared, _) = slices.prepare(i)?;
                names = n;
                if slices.count() == 1 {
                    single = Some(prepared);
                }
            }
            let schema = slices.data.schema().as_ref().clone();
            Ok::<_, OperatorError>((slices, names, single, schema))
        })
        .await
        .map_err(|e| OperatorError::fatal(format!("checking the table panicked: {e}")))??;
        let rows = slices.data.height();

        // Encode batches on a blocking thread while earlier ones are on the wire.
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
        // Set once every row was sent: a body whose encoder stopped before (a panic) ends
        // with an error, so ClickHouse commits nothing of it.
        let complete = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let completed = complete.clone();
        let encoder = tokio::task::spawn_blocking(move || {
            let mut single = single;
            for i in 0..slices.count() {
                let (prepared, height) = match single.take() {
                    Some(prepared) => (prepared, rows),
                    None => match slices.prepare(i) {
                        Ok((_, prepared, height)) => (prepared, height),
                        Err(e) => {
                            // The body ends with an error, never cleanly: ClickHouse commits
                            // no part of an INSERT whose body broke off.
                            let _ = tx.blocking_send(Err(std::io::Error::other(e.message)));
                            return;
                        }
                    },
                };
                let mut out = Vec::with_capacity(height * 64);
                for row in 0..height {
                    for column in &prepared {
                        column.encode(row, &mut out);
                    }
                }
                if tx.blocking_send(Ok(Bytes::from(out))).is_err() {
                    return; // the request ended early; its error is reported by the insert
                }
            }
            completed.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        let body = futures::stream::unfold(Some(rx), move |rx| {
            let complete = complete.clone();
            async move {
                let mut rx = rx?;
                match rx.recv().await {
                    Some(item) => Some((item, Some(rx))),
                    None if complete.load(std::sync::atomic::Ordering::SeqCst) => None,
                    None => Some((
                        Err(std::io::Error::other(
                            "the row encoder stopped before the last row",
                        )),
                        None,
                    )),
                }
            }
        });
        let inserted = ch.insert(table, &names, body).await;
        // A panicking encoder drops its sender: the body ended early, and so does this load.
        encoder
            .await
            .map_err(|e| OperatorError::fatal(format!("encoding the rows panicked: {e}")))?;
        inserted?;

        let secs = started.elapsed().as_secs_f64();
        ctx.log.info(&format!(
            "loaded {rows} rows from `{source_task}` into {}.{table} with version {version} in {secs:.3}s ({:.0} rows/s)",
            ch.database(),
            rows as f64 / secs.max(1e-9)
        ));
        let mut values = serde_json::Map::new();
        values.insert("rows".into(), (rows as u64).into());
        values.insert("version".into(), version.into());
        values.insert("table".into(), format!("{}.{table}", ch.database()).into());
        if scope.is_empty() {
            // The loaded table is passed on: downstream tasks (invalidations) see exactly what was loaded.
            return Ok(TaskOutput {
                table: Some(artifact),
                values,
            });
        }
        let (output, tombstones) = self
            .tombstone(ctx, &ch, &columns, &scope, version, path, schema)
            .await?;
        values.insert("tombstones".into(), tombstones.into());
        Ok(TaskOutput {
            table: Some(output),
            values,
        })
    }
}

/// A load's input table, converted for the target table one slice (`batch_rows` rows) at a
/// time: the table stays memory-mapped, and only the slice being checked or sent is copied.
struct Slices {
    data: polars::prelude::DataFrame,
    config: ClickhouseLoadConfig,
    table_columns: Vec<clickhouse_http::TableColumn>,
    source: String,
    table: String,
    version: u64,
}

impl Slices {
    /// How many slices (at least one, so an empty table is checked too).
    fn count(&self) -> usize {
        self.data.height().div_ceil(self.config.batch_rows).max(1)
    }

    /// Slice `i`'s column names, converted values and height.
    fn prepare(&self, i: usize) -> Result<(Vec<String>, Vec<Prepared>, usize), OperatorError> {
        let batch = self.config.batch_rows;
        let mut slice = self.data.slice((i * batch) as i64, batch);
        // Row access by index wants one chunk: a copy of this slice only.
        slice.rechunk_mut();
        let (names, prepared) = plan(
            &self.config,
            &self.table_columns,
            &slice,
            &self.source,
            self.version,
        )
        .map_err(|e| {
            OperatorError::fatal(format!(
                "the table of `{}` does not fit {}: {e}",
                self.source, self.table
            ))
        })?;
        Ok((names, prepared, slice.height()))
    }
}

impl ClickhouseLoad {
    fn flags(&self) -> Option<tombstones::Flags<'_>> {
        Some(tombstones::Flags {
            version: self.config.version_column.as_deref()?,
            deleted: self.config.deleted_column.as_deref()?,
        })
    }

    /// `replace_scope` rendered, each value a literal of its column's type (a mistake is fatal:
    /// a retry renders the same).
    fn scope(
        &self,
        ctx: &TaskContext,
        columns: &[clickhouse_http::TableColumn],
    ) -> Result<Vec<tombstones::ScopeTerm>, OperatorError> {
        let mut terms = Vec::new();
        for (name, value) in &self.config.replace_scope {
            let column = columns.iter().find(|c| &c.name == name).ok_or_else(|| {
                OperatorError::fatal(format!(
                    "replace_scope.{name}: the table {} has no such column",
                    self.config.table
                ))
            })?;
            let rendered = ctx.render(value)?;
            terms.push(
                tombstones::literal(name, &column.ty, &rendered).map_err(OperatorError::fatal)?,
            );
        }
        Ok(terms)
    }

    /// Writes the slice's tombstones at `version` and returns the task's output table: the
    /// loaded rows (deleted = 0) and every tombstone of the slice (deleted = 1), with the
    /// number of keys this load tombstoned.
    #[allow(clippy::too_many_arguments)]
    async fn tombstone(
        &self,
        ctx: &TaskContext,
        ch: &ClickHouse,
        columns: &[clickhouse_http::TableColumn],
        scope: &[tombstones::ScopeTerm],
        version: u64,
        loaded: std::path::PathBuf,
        schema: polars::prelude::Schema,
    ) -> Result<(sluice_operator_api::ArtifactRef, u64), OperatorError> {
        use polars::prelude::*;
        let table = &self.config.table;
        let flags = self
            .flags()
            .expect("build() requires both columns for replace_scope");
        let earlier = ch
            .execute(&tombstones::earlier_rows_sql(
                ch.database(),
                table,
                scope,
                flags,
                version,
            ))
            .await?;
        let first_load = earlier.trim() == "0";
        if !first_load {
            ch.after_final(
                &format!("writing tombstones into {table}"),
                &tombstones::insert_sql(ch.database(), table, columns, scope, flags, version),
            )
            .await?;
        }

        // Read back every tombstone of the slice, in the loaded table's columns and types.
        let names: Vec<String> = schema.iter_names().map(|n| n.to_string()).collect();
        let mut types = Vec::new();
        for name in names.iter().map(String::as_str).chain([flags.version]) {
            let column = columns.iter().find(|c| c.name == name).ok_or_else(|| {
                OperatorError::fatal(format!("column `{name}` is not in the table {table}"))
            })?;
            types.push(ChType::parse(&column.ty).ok_or_else(|| {
                OperatorError::fatal(format!(
                    "column `{name}`: type {} is not supported",
                    column.ty
                ))
            })?);
        }
        let answer = if first_load {
            bytes::Bytes::new()
        } else {
            ch.after_final(
                &format!("reading the tombstones of {table}"),
                &tombstones::read_sql(ch.database(), table, &names, scope, flags),
            )
            .await?
        };
        let deleted_name = flags.deleted.to_string();
        let fail = |e: String| {
            OperatorError::fatal(format!("reading the tombstones of {table} back: {e}"))
        };
        let dead_flag = deleted_name.clone();
        let decoded = tokio::task::spawn_blocking(move || -> Result<_, String> {
            let mut cells = rowbinary::decode(&types, &answer)?;
            let versions: Vec<Option<u64>> = match cells.pop() {
                Some(rowbinary::Cells::UInt(v)) => v,
                Some(rowbinary::Cells::Int(v)) => {
                    v.into_iter().map(|x| x.map(|x| x as u64)).collect()
                }
                other => return Err(format!("the version column read back as {other:?}")),
            };
            let mut dead = Vec::with_capacity(cells.len() + 1);
            for ((name, dtype), cells) in schema.iter().zip(cells) {
                dead.push(cells.into_column(name, dtype)?);
            }
            dead.push(Column::new(
                dead_flag.as_str().into(),
                vec![1u32; versions.len()],
            ));
            let dead = DataFrame::new(versions.len(), dead).map_err(|e| e.to_string())?;
            let written = versions.iter().filter(|v| **v == Some(version)).count() as u64;
            Ok((dead, written))
        })
        .await
        .map_err(|e| fail(format!("panicked: {e}")))?
        .map_err(fail)?;
        let (dead, written) = decoded;
        let total = dead.height();

        let (output, rows) = ctx
            .write_table("arrow", move |out| {
                let mut live = frame::read_ipc(&loaded)?;
                let height = live.height();
                live.with_column(Column::new(
                    deleted_name.as_str().into(),
                    vec![0u32; height],
                ))
                .and_then(|live| live.vstack(&dead))
                .and_then(|mut both| {
                    frame::write_ipc(&mut both, out)
                        .map(|()| both.height() as u64)
                        .map_err(|e| PolarsError::ComputeError(e.to_string().into()))
                })
                .map_err(|e| {
                    OperatorError::fatal(format!("writing the loaded rows and tombstones: {e}"))
                })
            })
            .await?;
        ctx.log.info(&format!(
            "tombstones: {written} key(s) of the slice no longer loaded were marked {deleted}=1 at version {version}; the output has {rows} rows ({total} tombstone(s))",
            deleted = flags.deleted
        ));
        Ok((output, written))
    }
}

#[cfg(test)]
mod tests {
    use super::next_version;

    #[test]
    fn versions_only_go_up() {
        assert_eq!(next_version(1_000, 0), 1_000, "an empty table: the clock");
        assert_eq!(next_version(1_000, 999), 1_000);
        assert_eq!(next_version(1_000, 1_000), 1_001, "same millisecond");
        assert_eq!(next_version(1_000, 5_000), 5_001, "the clock stepped back");
        assert_eq!(next_version(0, u64::MAX), u64::MAX);
    }
}
