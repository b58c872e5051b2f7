//! `postgres_extract`: runs a query on PostgreSQL and writes the result as a table artifact
//! (Arrow IPC), with PostgreSQL types mapped faithfully.
//!
//! Speed: the result leaves the server as binary COPY and is decoded straight into column
//! vectors (no row objects, no text parsing). Safety: COPY cannot take bind parameters, so
//! each template value is passed with `set_config` (a bound parameter) and the query reads it
//! back with `current_setting(…)`, cast to the value's type: values never enter the SQL text.

use std::str::FromStr;
use std::time::Instant;

use async_trait::async_trait;
use futures::StreamExt;
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{Column, ConnectOptions, Connection, Executor, Statement, TypeInfo};

pub(crate) mod pg_binary;

use crate::frame;
use pg_binary::{CopyDecoder, PgKind};
use sluice_operator_api::template::{self, BindValue};
use sluice_operator_api::{Operator, OperatorError, TaskContext, TaskOutput};

mod config;
pub use config::PostgresExtractConfig;

/// The built `postgres_extract` operator.
#[derive(Debug)]
pub struct PostgresExtract {
    config: PostgresExtractConfig,
}

/// The SQL a bound value is read back with: the setting, cast to the value's type.
fn placeholder(n: usize, value: &BindValue) -> String {
    let cast = match value {
        BindValue::Null => return "NULL".into(),
        BindValue::Bool(_) => "::boolean",
        BindValue::Int(_) => "::bigint",
        BindValue::Float(_) => "::double precision",
        BindValue::Text(_) => "",
        BindValue::Timestamp(_) => "::timestamptz",
    };
    format!("(current_setting('sluice.p{n}'){cast})")
}

fn setting_text(value: &BindValue) -> String {
    match value {
        BindValue::Null => String::new(),
        BindValue::Bool(b) => b.to_string(),
        BindValue::Int(i) => i.to_string(),
        BindValue::Float(f) => format!("{f:?}"),
        BindValue::Text(t) => t.clone(),
        BindValue::Timestamp(t) => t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
    }
}

/// A database error: connection trouble is worth another try, a bad query is not.
fn classify(what: &str, e: sqlx::Error) -> OperatorError {
    match &e {
        sqlx::Error::Database(db) => {
            // Class 08 (connection), 40 (transaction rollback: serialization, deadlock), 53 (resources), 57P (shutdown).
            let code = db.code().map(|c| c.to_string()).unwrap_or_default();
            let message = format!("{what}: {} (SQLSTATE {code})", db.message());
            if ["08", "40", "53", "57P"]
                .iter()
                .any(|p| code.starts_with(p))
            {
                OperatorError::retryable(message)
            } else {
                OperatorError::fatal(message)
            }
        }
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_) => OperatorError::retryable(format!("{what}: {e}")),
        _ => OperatorError::fatal(format!("{what}: {e}")),
    }
}

/// Rows per batch written to the artifact.
const BATCH_ROWS: usize = 65_536;

/// What the reading side sends the writer.
enum Piece {
    /// Decoded rows.
    Batch(Vec<(String, crate::postgres_extract::pg_binary::ColumnData)>),
    /// The last batch was sent: the table may be committed.
    Done,
}

#[async_trait]
impl Operator for PostgresExtract {
    async fn execute(&self, ctx: &TaskContext) -> Result<TaskOutput, OperatorError> {
        let started = Instant::now();
        let source = if sluice_operator_api::registry::is_sql_path(&self.config.sql) {
            ctx.config_file("sql", &self.config.sql).await?
        } else {
            self.config.sql.clone()
        };
        let bound = template::render_sql(&source, &ctx.vars, placeholder)
            .map_err(|e| OperatorError::fatal(e.message))?;
        let query = bound
            .sql
            .trim()
            .trim_end_matches(';')
            .trim_end()
            .to_string();

        let conn = ctx.connection(&self.config.conn)?;
        let shown = conn.to_string();
        // sqlx reads sslmode, sslrootcert, sslcert and sslkey from the URI, as libpq does.
        let options = PgConnectOptions::from_str(conn.uri().as_str())
            .map_err(|e| OperatorError::fatal(format!("connection {shown}: {e}")))?
            .application_name("sluice")
            .disable_statement_logging();
        let (root_cert, _) = crate::tls::split_root_cert(conn.uri());
        let root_cert = root_cert.as_deref();
        if let Some(path) = root_cert {
            // sqlx would report a missing file as a bare "No such file or directory".
            std::fs::metadata(path).map_err(|e| {
                OperatorError::fatal(format!("connection {shown}: sslrootcert {path}: {e}"))
            })?;
        }
        let mut db = PgConnection::connect_with(&options).await.map_err(|e| {
            // An untrusted certificate stays untrusted on the next try: a setting to fix.
            match crate::tls::tls_failure(&e) {
                Some(detail) => OperatorError::fatal(format!(
                    "connecting to {shown}: {}",
                    crate::tls::explain_tls_failure(
                        &format!("{}:{}", options.get_host(), options.get_port()),
                        &detail,
                        root_cert
                    )
                )),
                None => classify(&format!("connecting to {shown}"), e),
            }
        })?;
        let mut tx = db.begin().await.map_err(|e| classify("BEGIN", e))?;
        for (i, value) in bound.params.iter().enumerate() {
            if *value == BindValue::Null {
                continue;
            }
            sqlx::query("SELECT set_config($1, $2, true)")
                .bind(format!("sluice.p{}", i + 1))
                .bind(setting_text(value))
                .execute(&mut *tx)
                .await
                .map_err(|e| classify("binding a template value", e))?;
        }
        let described = (&mut *tx)
            .prepare(&query)
            .await
            .map_err(|e| classify("preparing the query", e))?;
        let mut columns = Vec::new();
        for column in described.columns() {
            let type_name = column.type_info().name().to_string();
            let kind = PgKind::for_type(&type_name).ok_or_else(|| {
                OperatorError::fatal(format!(
                    "column `{}` has type {type_name}, which postgres_extract cannot map; cast it in the query (e.g. `{}::text`)",
                    column.name(),
                    column.name()
                ))
            })?;
            columns.push((column.name().to_string(), kind));
        }
        // Rows stream from the COPY into the artifact in batches: decoding the next batch
        // overlaps writing the last one, and memory holds a few batches, never the table.
        let (batches, mut to_write) = tokio::sync::mpsc::channel::<Piece>(2);
        let write = ctx.write_table("arrow", move |path| {
            let mut writer = frame::BatchWriter::new(path);
            while let Some(piece) = to_write.blocking_recv() {
                match piece {
                    Piece::Batch(batch) => writer.write(batch)?,
                    Piece::Done => return writer.finish(),
                }
            }
            // The reading side stopped early: its error is the one reported, and no table
            // is committed.
            Err(OperatorError::retryable(
                "the extract ended before its last row",
            ))
        });
        let read = async move {
            let mut decoder = CopyDecoder::new(columns);
            let mut sent = false;
            let writer_gone = || OperatorError::retryable("the table writer stopped");
            {
                let mut stream = tx
                    .copy_out_raw(&format!("COPY (\n{query}\n) TO STDOUT (FORMAT binary)"))
                    .await
                    .map_err(|e| classify("running the query", e))?;
                while let Some(chunk) = stream.next().await {
                    let chunk = chunk.map_err(|e| classify("reading the result", e))?;
                    decoder
                        .feed(&chunk)
                        .map_err(|e| OperatorError::fatal(e.to_string()))?;
                    if decoder.buffered_rows() >= BATCH_ROWS {
                        batches
                            .send(Piece::Batch(decoder.take_batch()))
                            .await
                            .map_err(|_| writer_gone())?;
                        sent = true;
                    }
                }
            }
            tx.commit().await.map_err(|e| classify("COMMIT", e))?;
            let rows = decoder.rows();
            let fetched = started.elapsed();
            let rest = decoder
                .finish()
                .map_err(|e| OperatorError::fatal(e.to_string()))?;
            // The last rows; an empty batch still gives an empty result its schema.
            if !sent || rest.first().is_some_and(|(_, c)| !c.is_empty()) {
                batches
                    .send(Piece::Batch(rest))
                    .await
                    .map_err(|_| writer_gone())?;
            }
            batches.send(Piece::Done).await.map_err(|_| writer_gone())?;
            Ok::<_, OperatorError>((rows, fetched))
        };
        let (read, written) = tokio::join!(read, write);
        let _ = db.close().await;
        // A failed read explains a writer that stopped, and the other way round.
        let (rows, fetched, table) = match (read, written) {
            (Ok((rows, fetched)), Ok((table, _))) => (rows, fetched, table),
            (Err(e), _) if !e.message.starts_with("the table writer stopped") => return Err(e),
            (_, Err(e)) | (Err(e), Ok(_)) => return Err(e),
        };
        let secs = started.elapsed().as_secs_f64();
        ctx.log.info(&format!(
            "extracted {rows} rows from {shown} in {:.3}s (query and transfer {:.3}s, {:.0} rows/s)",
            secs,
            fetched.as_secs_f64(),
            rows as f64 / secs.max(1e-9)
        ));
        let mut values = serde_json::Map::new();
        values.insert("rows".into(), (rows as u64).into());
        Ok(TaskOutput {
            table: Some(table),
            values,
        })
    }
}
