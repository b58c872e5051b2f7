//! Decoding PostgreSQL's binary COPY format straight into column vectors.
//!
//! `COPY (query) TO STDOUT (FORMAT binary)` is the fastest way out of PostgreSQL: no text
//! parsing, one message per row. Rows are never materialized: each field is appended to
//! its column as it is read. Layout: an 11-byte signature, flags and an extension area,
//! then per tuple an i16 field count and per field an i32 length (-1 = NULL) and the
//! big-endian value; a field count of -1 ends the data.

/// Microseconds between the Unix epoch and PostgreSQL's epoch (2000-01-01).
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;
/// Days between the Unix epoch and PostgreSQL's epoch.
const PG_EPOCH_DAYS: i32 = 10_957;
const SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";

/// How a PostgreSQL type is decoded, and the column it becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PgKind {
    /// `int2`, widened to 32 bits.
    Int2,
    /// `int4`.
    Int4,
    /// `int8`.
    Int8,
    /// `float4`.
    Float4,
    /// `float8`.
    Float8,
    /// `numeric`, as a 64-bit float (NaN for `NaN`).
    Numeric,
    /// `bool`.
    Bool,
    /// `text`, `varchar`, `bpchar`, `name`.
    Text,
    /// `timestamptz` and `timestamp`: microseconds since the Unix epoch, UTC.
    Timestamp,
    /// `date`: days since the Unix epoch.
    Date,
}

impl PgKind {
    /// The decoder for a PostgreSQL type name as sqlx reports it (`INT8`, `TIMESTAMPTZ`, …).
    pub fn for_type(name: &str) -> Option<Self> {
        Some(match name.to_ascii_uppercase().as_str() {
            "INT2" | "SMALLINT" => PgKind::Int2,
            "INT4" | "INT" | "INTEGER" => PgKind::Int4,
            "INT8" | "BIGINT" => PgKind::Int8,
            "FLOAT4" | "REAL" => PgKind::Float4,
            "FLOAT8" | "DOUBLE PRECISION" => PgKind::Float8,
            "NUMERIC" | "DECIMAL" => PgKind::Numeric,
            "BOOL" | "BOOLEAN" => PgKind::Bool,
            "TEXT" | "VARCHAR" | "BPCHAR" | "CHAR" | "NAME" | "CITEXT" => PgKind::Text,
            "TIMESTAMPTZ" | "TIMESTAMP" => PgKind::Timestamp,
            "DATE" => PgKind::Date,
            _ => return None,
        })
    }
}

/// One decoded column.
#[derive(Debug, Clone, PartialEq)]
pub enum ColumnData {
    /// 32-bit integers (`int2`, `int4`).
    Int32(Vec<Option<i32>>),
    /// 64-bit integers.
    Int64(Vec<Option<i64>>),
    /// 32-bit floats.
    Float32(Vec<Option<f32>>),
    /// 64-bit floats (`float8`, `numeric`).
    Float64(Vec<Option<f64>>),
    /// Booleans.
    Bool(Vec<Option<bool>>),
    /// UTF-8 text.
    Text(Vec<Option<String>>),
    /// Microseconds since the Unix epoch, UTC.
    TimestampMicros(Vec<Option<i64>>),
    /// Days since the Unix epoch.
    Date(Vec<Option<i32>>),
}

impl ColumnData {
    fn new(kind: PgKind) -> Self {
        match kind {
            PgKind::Int2 | PgKind::Int4 => ColumnData::Int32(Vec::new()),
            PgKind::Int8 => ColumnData::Int64(Vec::new()),
            PgKind::Float4 => ColumnData::Float32(Vec::new()),
            PgKind::Float8 | PgKind::Numeric => ColumnData::Float64(Vec::new()),
            PgKind::Bool => ColumnData::Bool(Vec::new()),
            PgKind::Text => ColumnData::Text(Vec::new()),
            PgKind::Timestamp => ColumnData::TimestampMicros(Vec::new()),
            PgKind::Date => ColumnData::Date(Vec::new()),
        }
    }

    /// Number of values.
    pub fn len(&self) -> usize {
        match self {
            ColumnData::Int32(v) | ColumnData::Date(v) => v.len(),
            ColumnData::Int64(v) | ColumnData::TimestampMicros(v) => v.len(),
            ColumnData::Float32(v) => v.len(),
            ColumnData::Float64(v) => v.len(),
            ColumnData::Bool(v) => v.len(),
            ColumnData::Text(v) => v.len(),
        }
    }

    /// True when there are no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A malformed stream or a value that does not fit its column.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("binary COPY data: {0}")]
pub struct DecodeError(pub String);

/// Incremental decoder: feed it the bytes of the COPY stream in any chunking.
#[derive(Debug)]
pub struct CopyDecoder {
    kinds: Vec<PgKind>,
    names: Vec<String>,
    columns: Vec<ColumnData>,
    pending: Vec<u8>,
    header_done: bool,
    finished: bool,
    rows: usize,
}

fn be_i16(b: &[u8]) -> i16 {
    i16::from_be_bytes([b[0], b[1]])
}

fn be_i32(b: &[u8]) -> i32 {
    i32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

fn be_i64(b: &[u8]) -> i64 {
    i64::from_be_bytes(b[..8].try_into().expect("8 bytes"))
}

fn numeric_to_f64(b: &[u8]) -> Result<f64, DecodeError> {
    if b.len() < 8 {
        return Err(DecodeError("numeric value too short".into()));
    }
    // A negative digit count is a corrupt value, not a huge one.
    let ndigits = usize::try_from(be_i16(&b[0..]))
        .map_err(|_| DecodeError("numeric value has a negative digit count".into()))?;
    let weight = be_i16(&b[2..]) as i32;
    let sign = u16::from_be_bytes([b[4], b[5]]);
    if sign == 0xC000 {
        return Ok(f64::NAN);
    }
    if b.len() < 8 + ndigits * 2 {
        return Err(DecodeError("numeric value truncated".into()));
    }
    // Base-10000 digits; summing in f64 is exact up to 2^53 and rounds beyond, like a cast to float8.
    let mut value = 0.0f64;
    for i in 0..ndigits {
        let digit = be_i16(&b[8 + i * 2..]) as f64;
        value += digit * 10000f64.powi(weight - i as i32);
    }
    Ok(if sign == 0x4000 { -value } else { value })
}

impl CopyDecoder {
    /// A decoder for columns of these names and kinds, in query order.
    pub fn new(columns: Vec<(String, PgKind)>) -> Self {
        let (names, kinds): (Vec<String>, Vec<PgKind>) = columns.into_iter().unzip();
        Self {
            columns: kinds.iter().map(|k| ColumnData::new(*k)).collect(),
            kinds,
            names,
            pending: Vec::new(),
            header_done: false,
            finished: false,
            rows: 0,
        }
    }

    /// Rows decoded so far.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Decodes as much of `chunk` (plus what was left over) as forms whole tuples.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<(), DecodeError> {
        if self.pending.is_empty() {
            let used = self.parse(chunk)?;
            self.pending.extend_from_slice(&chunk[used..]);
        } else {
            let mut buffer = std::mem::take(&mut self.pending);
            buffer.extend_from_slice(chunk);
            let used = self.parse(&buffer)?;
            buffer.drain(..used);
            self.pending = buffer;
        }
        Ok(())
    }

    /// Parses whole units from `data`; returns how many bytes it consumed.
    fn parse(&mut self, data: &[u8]) -> Result<usize, DecodeError> {
        let mut at = 0;
        if !self.header_done {
            if data.len() < SIGNATURE.len() + 8 {
                return Ok(0);
            }
            if &data[..SIGNATURE.len()] != SIGNATURE {
                return Err(DecodeError("missing PGCOPY signature".into()));
            }
            let ext = be_i32(&data[SIGNATURE.len() + 4..]) as usize;
            let header = SIGNATURE.len() + 8 + ext;
            if data.len() < header {
                return Ok(0);
            }
            self.header_done = true;
            at = header;
        }
        while !self.finished {
            let Some(used) = self.tuple(&data[at..])? else {
                break;
            };
            at += used;
        }
        Ok(at)
    }

    /// Decodes one tuple if it is complete; returns its length.
    fn tuple(&mut self, data: &[u8]) -> Result<Option<usize>, DecodeError> {
        if data.len() < 2 {
            return Ok(None);
        }
        let count = be_i16(data);
        if count == -1 {
            self.finished = true;
            return Ok(Some(2));
        }
        if count as usize != self.kinds.len() {
            return Err(DecodeError(format!(
                "a row has {count} fields, the query {}",
                self.kinds.len()
            )));
        }
        // Find the tuple's end first, so a partial tuple is never half-appended.
        let mut at = 2;
        for _ in 0..count {
            if data.len() < at + 4 {
                return Ok(None);
            }
            let len = be_i32(&data[at..]);
            at += 4 + len.max(0) as usize;
            if data.len() < at {
                return Ok(None);
            }
        }
        let mut pos = 2;
        for column in 0..count as usize {
            let len = be_i32(&data[pos..]);
            pos += 4;
            let value = if len < 0 {
                None
            } else {
                Some(&data[pos..pos + len as usize])
            };
            pos += len.max(0) as usize;
            self.push(column, value)?;
        }
        self.rows += 1;
        Ok(Some(at))
    }

    fn push(&mut self, column: usize, value: Option<&[u8]>) -> Result<(), DecodeError> {
        let kind = self.kinds[column];
        let check = |b: &[u8], want: usize| {
            if b.len() == want {
                Ok(())
            } else {
                Err(DecodeError(format!(
                    "column `{}`: {} bytes for a {kind:?}",
                    self.names[column],
                    b.len()
                )))
            }
        };
        match (&mut self.columns[column], value) {
            (ColumnData::Int32(v), Some(b)) if kind == PgKind::Int2 => {
                check(b, 2)?;
                v.push(Some(be_i16(b) as i32))
            }
            (ColumnData::Int32(v), Some(b)) => {
                check(b, 4)?;
                v.push(Some(be_i32(b)))
            }
            (ColumnData::Int32(v) | ColumnData::Date(v), None) => v.push(None),
            (ColumnData::Int64(v) | ColumnData::TimestampMicros(v), None) => v.push(None),
            (ColumnData::Int64(v), Some(b)) => {
                check(b, 8)?;
                v.push(Some(be_i64(b)))
            }
            (ColumnData::TimestampMicros(v), Some(b)) => {
                check(b, 8)?;
                // ±infinity are i64::MAX/MIN: keep them saturated rather than wrapping.
                v.push(Some(be_i64(b).saturating_add(PG_EPOCH_MICROS)))
            }
            (ColumnData::Date(v), Some(b)) => {
                check(b, 4)?;
                v.push(Some(be_i32(b).saturating_add(PG_EPOCH_DAYS)))
            }
            (ColumnData::Float32(v), Some(b)) => {
                check(b, 4)?;
                v.push(Some(f32::from_be_bytes(b.try_into().expect("4 bytes"))))
            }
            (ColumnData::Float32(v), None) => v.push(None),
            (ColumnData::Float64(v), Some(b)) if kind == PgKind::Numeric => {
                v.push(Some(numeric_to_f64(b)?))
            }
            (ColumnData::Float64(v), Some(b)) => {
                check(b, 8)?;
                v.push(Some(f64::from_be_bytes(b.try_into().expect("8 bytes"))))
            }
            (ColumnData::Float64(v), None) => v.push(None),
            (ColumnData::Bool(v), Some(b)) => {
                check(b, 1)?;
                v.push(Some(b[0] != 0))
            }
            (ColumnData::Bool(v), None) => v.push(None),
            (ColumnData::Text(v), Some(b)) => {
                let text = std::str::from_utf8(b).map_err(|_| {
                    DecodeError(format!(
                        "column `{}`: text is not UTF-8",
                        self.names[column]
                    ))
                })?;
                v.push(Some(text.to_string()))
            }
            (ColumnData::Text(v), None) => v.push(None),
        }
        Ok(())
    }

    /// Rows decoded and not yet taken by [`CopyDecoder::take_batch`].
    pub fn buffered_rows(&self) -> usize {
        self.columns.first().map_or(0, ColumnData::len)
    }

    /// Takes the rows decoded so far as a batch of named columns, leaving the decoder empty
    /// (the extract writes a batch while the next one is decoded: memory holds one batch).
    pub fn take_batch(&mut self) -> Vec<(String, ColumnData)> {
        let fresh = self.kinds.iter().map(|k| ColumnData::new(*k)).collect();
        let taken = std::mem::replace(&mut self.columns, fresh);
        self.names.iter().cloned().zip(taken).collect()
    }

    /// The decoded columns with their names; an error if the stream ended early.
    pub fn finish(self) -> Result<Vec<(String, ColumnData)>, DecodeError> {
        if !self.finished || !self.pending.is_empty() {
            return Err(DecodeError("the stream ended before its trailer".into()));
        }
        Ok(self.names.into_iter().zip(self.columns).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(out: &mut Vec<u8>, value: Option<&[u8]>) {
        match value {
            Some(b) => {
                out.extend_from_slice(&(b.len() as i32).to_be_bytes());
                out.extend_from_slice(b);
            }
            None => out.extend_from_slice(&(-1i32).to_be_bytes()),
        }
    }

    fn stream() -> Vec<u8> {
        let mut out = SIGNATURE.to_vec();
        out.extend_from_slice(&0i32.to_be_bytes());
        out.extend_from_slice(&0i32.to_be_bytes());
        // row 1: 2^53 + 1, 'chip-é', ts = 2000-01-01 00:00:01, 1.5 (float4), true, 12345.678 numeric
        out.extend_from_slice(&6i16.to_be_bytes());
        field(&mut out, Some(&(9_007_199_254_740_993i64).to_be_bytes()));
        field(&mut out, Some("chip-é".as_bytes()));
        field(&mut out, Some(&1_000_000i64.to_be_bytes()));
        field(&mut out, Some(&1.5f32.to_be_bytes()));
        field(&mut out, Some(&[1]));
        // numeric 12345.678 = digits [1, 2345, 6780], weight 1, dscale 3
        let mut numeric = Vec::new();
        for v in [3i16, 1, 0, 3, 1, 2345, 6780] {
            numeric.extend_from_slice(&v.to_be_bytes());
        }
        field(&mut out, Some(&numeric));
        // row 2: all NULL
        out.extend_from_slice(&6i16.to_be_bytes());
        for _ in 0..6 {
            field(&mut out, None);
        }
        out.extend_from_slice(&(-1i16).to_be_bytes());
        out
    }

    fn decoder() -> CopyDecoder {
        CopyDecoder::new(vec![
            ("id".into(), PgKind::Int8),
            ("chip".into(), PgKind::Text),
            ("ts".into(), PgKind::Timestamp),
            ("battery".into(), PgKind::Float4),
            ("active".into(), PgKind::Bool),
            ("amount".into(), PgKind::Numeric),
        ])
    }

    #[test]
    fn decodes_in_any_chunking() {
        let bytes = stream();
        for chunk_size in [1, 3, 7, 64, bytes.len()] {
            let mut d = decoder();
            for chunk in bytes.chunks(chunk_size) {
                d.feed(chunk).unwrap();
            }
            assert_eq!(d.rows(), 2);
            let cols = d.finish().unwrap();
            assert_eq!(
                cols[0].1,
                ColumnData::Int64(vec![Some(9_007_199_254_740_993), None])
            );
            assert_eq!(
                cols[1].1,
                ColumnData::Text(vec![Some("chip-é".into()), None])
            );
            assert_eq!(
                cols[2].1,
                ColumnData::TimestampMicros(vec![Some(946_684_801_000_000), None])
            );
            assert_eq!(cols[3].1, ColumnData::Float32(vec![Some(1.5), None]));
            assert_eq!(cols[4].1, ColumnData::Bool(vec![Some(true), None]));
            match &cols[5].1 {
                ColumnData::Float64(v) => {
                    assert!((v[0].unwrap() - 12345.678).abs() < 1e-9 && v[1].is_none())
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn a_truncated_stream_is_an_error() {
        let bytes = stream();
        let mut d = decoder();
        d.feed(&bytes[..bytes.len() - 2]).unwrap();
        assert!(d.finish().unwrap_err().0.contains("before its trailer"));
        let mut wrong = CopyDecoder::new(vec![("id".into(), PgKind::Int8)]);
        assert!(wrong.feed(&bytes).unwrap_err().0.contains("6 fields"));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 512, ..Default::default() })]

        /// A server that sends garbage (or a stream cut anywhere) gets an error, never a panic.
        #[test]
        fn arbitrary_bytes_never_panic(
            noise in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256),
            keep in 0usize..400,
            flip in proptest::prelude::any::<(usize, u8)>(),
        ) {
            let mut d = decoder();
            let _ = d.feed(&noise);
            let _ = d.finish();
            // A valid stream, cut short or with one byte changed.
            let mut bytes = stream();
            let i = flip.0 % bytes.len();
            bytes[i] ^= flip.1;
            bytes.truncate(keep.min(bytes.len()));
            let mut d = decoder();
            if d.feed(&bytes).is_ok() {
                let _ = d.finish();
            }
        }
    }
}
