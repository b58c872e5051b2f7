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

/// An I/O error writing `path`: retryable (a full disk, a quota, a flaky mount may be fixed
/// by the next try), and it names the path.
fn disk_error(path: &Path, e: impl std::fmt::Display) -> OperatorError {
    OperatorError::retryable(format!("writing {}: {e}", path.display()))
}

/// Writes a frame as an Arrow IPC file. I/O errors (a full disk) are retryable and name the
/// file; the caller removes what was written.
pub fn write_ipc(frame: &mut DataFrame, path: &Path) -> Result<(), OperatorError> {
    let file = File::create(path).map_err(|e| disk_error(path, e))?;
    let mut out = BufWriter::new(file);
    IpcWriter::new(&mut out)
        .finish(frame)
        .map_err(|e| match e {
            PolarsError::IO { .. } => disk_error(path, e),
            other => OperatorError::fatal(format!("writing the table: {other}")),
        })?;
    // The last buffered bytes: an error here (ENOSPC) must not be lost in a drop.
    out.into_inner()
        .map_err(|e| disk_error(path, e.error()))?
        .sync_data()
        .map_err(|e| disk_error(path, e))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_is_a_retryable_error_that_names_the_file() {
        // /dev/full answers every write with ENOSPC, as a full disk does.
        let mut frame = df!("id" => (0..100_000i64).collect::<Vec<_>>()).unwrap();
        let e = write_ipc(&mut frame, Path::new("/dev/full")).unwrap_err();
        assert_eq!(e.kind, sluice_operator_api::FailureKind::Retryable, "{e:?}");
        assert!(e.message.contains("/dev/full"), "{}", e.message);
        assert!(
            e.message.contains("No space left on device"),
            "{}",
            e.message
        );
    }
}
