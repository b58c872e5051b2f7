//! Tables in memory (Polars) and on disk (Arrow IPC artifacts): the conversions operators share.

use std::fs::File;
use std::io::BufWriter;
use std::path::Path;

use polars::prelude::*;

use crate::postgres_extract::pg_binary::ColumnData;
use sluice_operator_api::OperatorError;

fn polars_error(what: &str) -> impl Fn(PolarsError) -> OperatorError + '_ {
    move |e| OperatorError::fatal(format!("{what}: {e}"))
}

fn to_column(name: String, data: ColumnData) -> PolarsResult<Column> {
    let name = PlSmallStr::from(name);
    Ok(match data {
        ColumnData::Int32(v) => Column::new(name, v),
        ColumnData::Int64(v) => Column::new(name, v),
        ColumnData::Float32(v) => Column::new(name, v),
        ColumnData::Float64(v) => Column::new(name, v),
        ColumnData::Bool(v) => Column::new(name, v),
        ColumnData::Text(v) => Column::new(name, v),
        ColumnData::TimestampMicros(v) => {
            Column::new(name, v).cast(&DataType::Datetime(TimeUnit::Microseconds, None))?
        }
        ColumnData::Date(v) => Column::new(name, v).cast(&DataType::Date)?,
    })
}

/// Writes decoded columns as an Arrow IPC file. Instants are UTC without a zone attached.
pub fn write_columns(
    columns: Vec<(String, ColumnData)>,
    path: &Path,
) -> Result<usize, OperatorError> {
    let columns: Vec<Column> = columns
        .into_iter()
        .map(|(name, data)| to_column(name, data))
        .collect::<PolarsResult<_>>()
        .map_err(polars_error("building the table"))?;
    let mut frame =
        DataFrame::new_infer_height(columns).map_err(polars_error("building the table"))?;
    write_ipc(&mut frame, path)?;
    Ok(frame.height())
}

/// Writes a frame as an Arrow IPC file.
pub fn write_ipc(frame: &mut DataFrame, path: &Path) -> Result<(), OperatorError> {
    let file = File::create(path)
        .map_err(|e| OperatorError::fatal(format!("creating {}: {e}", path.display())))?;
    IpcWriter::new(BufWriter::new(file))
        .finish(frame)
        .map_err(polars_error("writing the table"))
}

/// Reads an Arrow IPC file.
pub fn read_ipc(path: &Path) -> Result<DataFrame, OperatorError> {
    let file = File::open(path)
        .map_err(|e| OperatorError::fatal(format!("opening {}: {e}", path.display())))?;
    IpcReader::new(file)
        .finish()
        .map_err(polars_error("reading the table"))
}

/// A column by name, or an error listing the columns there are.
pub fn column<'f>(
    frame: &'f DataFrame,
    name: &str,
    table: &str,
) -> Result<&'f Column, OperatorError> {
    frame.column(name).map_err(|_| {
        let names: Vec<String> = frame
            .get_column_names()
            .iter()
            .map(|n| n.to_string())
            .collect();
        OperatorError::fatal(format!(
            "table of `{table}` has no column `{name}`; its columns: {}",
            names.join(", ")
        ))
    })
}

/// The distinct non-null values of a column (integers or text), in first-seen order.
pub fn distinct_values(
    path: &Path,
    name: &str,
) -> Result<Vec<sluice_operator_api::template::Value>, OperatorError> {
    let frame = read_ipc(path)?;
    let column = column(&frame, name, &path.display().to_string())?;
    let series = column.as_materialized_series();
    let unique = series
        .unique_stable()
        .map_err(polars_error("distinct values"))?;
    let values: Vec<sluice_operator_api::template::Value> = match unique.dtype() {
        DataType::UInt64 => unique
            .u64()
            .map_err(polars_error(name))?
            .iter()
            .flatten()
            .map(sluice_operator_api::template::Value::from)
            .collect(),
        DataType::UInt32 => unique
            .u32()
            .map_err(polars_error(name))?
            .iter()
            .flatten()
            .map(sluice_operator_api::template::Value::from)
            .collect(),
        DataType::Int64 => unique
            .i64()
            .map_err(polars_error(name))?
            .iter()
            .flatten()
            .map(sluice_operator_api::template::Value::from)
            .collect(),
        DataType::Int32 => unique
            .i32()
            .map_err(polars_error(name))?
            .iter()
            .flatten()
            .map(sluice_operator_api::template::Value::from)
            .collect(),
        DataType::String => unique
            .str()
            .map_err(polars_error(name))?
            .iter()
            .flatten()
            .map(sluice_operator_api::template::Value::from)
            .collect(),
        other => {
            return Err(OperatorError::fatal(format!(
                "column `{name}` has type {other}; iterate over integers or text"
            )))
        }
    };
    Ok(values)
}
