//! `polars_sql`: runs SQL over the upstream tasks' tables with Polars and writes the result
//! as a table artifact. Each upstream table is registered under its task id.
//!
//! Polars SQL has no bind parameters, so this operator takes no template values: values a
//! query needs (the data interval, the run id) come in as columns from upstream tasks.

use std::time::Instant;

use async_trait::async_trait;
use polars::prelude::*;
use polars::sql::SQLContext;

use crate::frame;
use sluice_operator_api::{template, Operator, OperatorError, TaskContext, TaskOutput};

mod config;
pub use config::PolarsSqlConfig;

/// The built `polars_sql` operator.
#[derive(Debug)]
pub struct PolarsSql {
    config: PolarsSqlConfig,
}

#[async_trait]
impl Operator for PolarsSql {
    async fn execute(&self, ctx: &TaskContext) -> Result<TaskOutput, OperatorError> {
        let started = Instant::now();
        let sql = if sluice_operator_api::registry::is_sql_path(&self.config.sql) {
            let text = ctx.config_file("sql", &self.config.sql).await?;
            if template::is_template(&text) {
                return Err(OperatorError::fatal(format!(
                    "sql: {} uses templates; polars_sql takes none (select values as columns upstream)",
                    self.config.sql.trim()
                )));
            }
            text
        } else {
            self.config.sql.clone()
        };
        let mut inputs = Vec::new();
        for (task, output) in &ctx.upstream {
            if let Some(table) = &output.table {
                let path = ctx
                    .artifacts
                    .local_path(table)
                    .await
                    .map_err(|e| OperatorError::fatal(e.to_string()))?;
                inputs.push((task.clone(), path));
            }
        }
        if inputs.is_empty() {
            return Err(OperatorError::fatal(
                "no upstream task produced a table to query",
            ));
        }
        let names: Vec<String> = inputs.iter().map(|(t, _)| t.clone()).collect();
        // Reading, the query and writing are CPU work: write_table runs them off the async threads.
        let (table, rows) = ctx
            .write_table("arrow", move |out| {
                let mut context = SQLContext::new();
                for (task, path) in &inputs {
                    context.register(task, frame::read_ipc(path)?.lazy());
                }
                let mut result = context
                    .execute(sql.trim().trim_end_matches(';'))
                    .and_then(|lazy| lazy.collect())
                    .map_err(|e| {
                        OperatorError::fatal(format!("SQL over tables {}: {e}", names.join(", ")))
                    })?;
                frame::write_ipc(&mut result, out)?;
                Ok(result.height() as u64)
            })
            .await?;
        ctx.log.info(&format!(
            "query produced {rows} rows in {:.3}s",
            started.elapsed().as_secs_f64()
        ));
        let mut values = serde_json::Map::new();
        values.insert("rows".into(), rows.into());
        Ok(TaskOutput {
            table: Some(table),
            values,
        })
    }
}
