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

/// An Arrow IPC file written batch by batch: memory holds one batch, never the table. The
/// file is created with the first batch (whose schema it takes); I/O errors are retryable and
/// name the file, and the caller removes what was written.
pub struct BatchWriter {
    path: std::path::PathBuf,
    /// Unbuffered: the IPC writer writes whole buffers, and a `BufWriter` inside it could
    /// not be flushed with its error seen (the batched writer does not give it back).
    out: Option<polars::io::ipc::BatchedWriter<File>>,
    /// The same file, to flush to disk at the end.
    file: Option<File>,
    rows: u64,
}

impl BatchWriter {
    /// A writer of `path` (nothing is created until the first batch).
    pub fn new(path: &Path) -> Self {
        Self {
            path: path.to_path_buf(),
            out: None,
            file: None,
            rows: 0,
        }
    }

    /// Appends a batch of decoded columns (the same columns every time). Instants are UTC
    /// without a zone attached.
    pub fn write(&mut self, columns: Vec<(String, ColumnData)>) -> Result<(), OperatorError> {
        let columns: Vec<Column> = columns
            .into_iter()
            .map(|(name, data)| to_column(name, data))
            .collect::<PolarsResult<_>>()
            .map_err(polars_error("building the table"))?;
        let frame =
            DataFrame::new_infer_height(columns).map_err(polars_error("building the table"))?;
        let path = self.path.clone();
        let io = |e: PolarsError| match e {
            PolarsError::IO { .. } => disk_error(&path, e),
            other => OperatorError::fatal(format!("writing the table: {other}")),
        };
        let out = match &mut self.out {
            Some(out) => out,
            None => {
                let file = File::create(&self.path).map_err(|e| disk_error(&self.path, e))?;
                self.file = Some(file.try_clone().map_err(|e| disk_error(&self.path, e))?);
                let arrow = frame.schema().to_arrow(CompatLevel::newest());
                let fields = polars_arrow::io::ipc::write::default_ipc_fields(arrow.iter_values());
                let writer = IpcWriter::new(file)
                    .batched(frame.schema(), fields)
                    .map_err(io)?;
                self.out.insert(writer)
            }
        };
        out.write_batch(&frame).map_err(io)?;
        self.rows += frame.height() as u64;
        Ok(())
    }

    /// Ends the file, flushed to disk; returns the rows written.
    pub fn finish(mut self) -> Result<u64, OperatorError> {
        let Some(mut out) = self.out.take() else {
            return Err(OperatorError::fatal(
                "a table needs at least one batch (its schema)",
            ));
        };
        let path = self.path.clone();
        out.finish().map_err(|e| disk_error(&path, e))?;
        if let Some(file) = &self.file {
            // On disk before the commit: a full disk shows here, not after the rename.
            file.sync_data().map_err(|e| disk_error(&path, e))?;
        }
        Ok(self.rows)
    }
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
    read_ipc_columns(path, None)
}

/// Reads an Arrow IPC file, only `columns` if given. The file is memory-mapped: its pages
/// are the page cache's (the kernel drops and re-reads them under pressure), not the
/// process's, so a large table does not grow the resident heap.
pub fn read_ipc_columns(
    path: &Path,
    columns: Option<Vec<String>>,
) -> Result<DataFrame, OperatorError> {
    let file = File::open(path)
        .map_err(|e| OperatorError::fatal(format!("opening {}: {e}", path.display())))?;
    // SAFETY: a mapped file must not change while mapped. Artifacts never do once committed:
    // each try writes its own file under a new name and renames it in; removing one (an
    // earlier try's, retention) unlinks it and leaves the mapping intact.
    let reader = unsafe { IpcReader::new(file).memory_mapped(Some(path.to_path_buf())) };
    reader
        .with_columns(columns)
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
    // Only the column the items come from is read.
    let has = {
        let file = File::open(path)
            .map_err(|e| OperatorError::fatal(format!("opening {}: {e}", path.display())))?;
        IpcReader::new(file)
            .schema()
            .map_err(polars_error("reading the table's schema"))?
            .contains(name)
    };
    let frame = read_ipc_columns(path, has.then(|| vec![name.to_string()]))?;
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
    fn a_table_written_in_batches_reads_back_whole_and_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.arrow");
        let mut writer = BatchWriter::new(&path);
        let mut want_ids = Vec::new();
        for batch in 0..3i64 {
            let ids: Vec<Option<i64>> = (0..1000).map(|i| Some(batch * 1000 + i)).collect();
            let names: Vec<Option<String>> = (0..1000)
                .map(|i| (i % 7 != 0).then(|| format!("n{batch}-{i}")))
                .collect();
            want_ids.extend(ids.iter().map(|v| v.unwrap()));
            writer
                .write(vec![
                    ("id".into(), ColumnData::Int64(ids)),
                    ("name".into(), ColumnData::Text(names)),
                ])
                .unwrap();
        }
        assert_eq!(writer.finish().unwrap(), 3000);
        let frame = read_ipc(&path).unwrap();
        let ids: Vec<i64> = frame
            .column("id")
            .unwrap()
            .i64()
            .unwrap()
            .into_no_null_iter()
            .collect();
        assert_eq!(ids, want_ids);
        assert_eq!(frame.column("name").unwrap().null_count(), 3 * 143);
        // Only the asked column is read.
        let one = read_ipc_columns(&path, Some(vec!["name".into()])).unwrap();
        assert_eq!(one.get_column_names(), ["name"]);
    }

    #[test]
    fn a_full_disk_mid_batches_is_a_retryable_error_that_names_the_file() {
        let mut writer = BatchWriter::new(Path::new("/dev/full"));
        let ids = || ColumnData::Int64((0..100_000).map(Some).collect());
        let e = writer
            .write(vec![("id".into(), ids())])
            .and_then(|_| writer.write(vec![("id".into(), ids())]))
            .and_then(|_| writer.finish().map(|_| ()))
            .unwrap_err();
        assert_eq!(e.kind, sluice_operator_api::FailureKind::Retryable, "{e:?}");
        assert!(e.message.contains("/dev/full"), "{}", e.message);
    }

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
