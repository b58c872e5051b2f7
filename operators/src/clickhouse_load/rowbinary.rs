//! ClickHouse column types and RowBinary encoding of Polars columns.
//!
//! Every check that can fail (unknown type, incompatible type, NULL into a non-Nullable
//! column, a value out of the target's range) happens in [`prepare`], before a single byte
//! is sent, so a load either starts with data that fits or does not start.

use polars::prelude::*;

/// A ClickHouse column type the loader can write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChType {
    /// `UInt8` … `UInt64` (bits).
    UInt(u8),
    /// `Int8` … `Int64` (bits).
    Int(u8),
    /// `Float32`.
    Float32,
    /// `Float64`.
    Float64,
    /// `String` (and `LowCardinality(String)`).
    String,
    /// `DateTime` (seconds, any zone suffix).
    DateTime,
    /// `Date` (days).
    Date,
    /// `Nullable(T)`.
    Nullable(Box<ChType>),
}

impl ChType {
    /// Parses a type as `system.columns` reports it.
    pub fn parse(ty: &str) -> Option<Self> {
        let ty = ty.trim();
        if let Some(inner) = ty
            .strip_prefix("LowCardinality(")
            .and_then(|r| r.strip_suffix(')'))
        {
            return Self::parse(inner);
        }
        if let Some(inner) = ty
            .strip_prefix("Nullable(")
            .and_then(|r| r.strip_suffix(')'))
        {
            return Some(ChType::Nullable(Box::new(Self::parse(inner)?)));
        }
        Some(match ty {
            "UInt8" => ChType::UInt(8),
            "UInt16" => ChType::UInt(16),
            "UInt32" => ChType::UInt(32),
            "UInt64" => ChType::UInt(64),
            "Int8" => ChType::Int(8),
            "Int16" => ChType::Int(16),
            "Int32" => ChType::Int(32),
            "Int64" => ChType::Int(64),
            "Float32" => ChType::Float32,
            "Float64" => ChType::Float64,
            "String" => ChType::String,
            "Date" => ChType::Date,
            t if t == "DateTime" || t.starts_with("DateTime(") => ChType::DateTime,
            _ => return None,
        })
    }

    fn base(&self) -> (&ChType, bool) {
        match self {
            ChType::Nullable(inner) => (inner, true),
            other => (other, false),
        }
    }
}

/// Values of one column, ready to encode.
#[derive(Debug)]
pub enum Prepared {
    /// Unsigned integer of `bytes` width.
    UInt {
        values: UInt64Chunked,
        bytes: usize,
        nullable: bool,
    },
    /// Signed integer of `bytes` width.
    Int {
        values: Int64Chunked,
        bytes: usize,
        nullable: bool,
    },
    /// Float32.
    Float32 {
        values: Float64Chunked,
        nullable: bool,
    },
    /// Float64.
    Float64 {
        values: Float64Chunked,
        nullable: bool,
    },
    /// String.
    Text {
        values: StringChunked,
        nullable: bool,
    },
    /// DateTime as seconds since the epoch.
    DateTime {
        seconds: Int64Chunked,
        nullable: bool,
    },
    /// Date as days since the epoch.
    Date { days: Int64Chunked, nullable: bool },
    /// The same value on every row (version, deleted flag) as a UInt of `bytes` width.
    Constant { value: u64, bytes: usize },
}

fn err(column: &str, message: impl std::fmt::Display) -> String {
    format!("column `{column}`: {message}")
}

fn check_range(
    column: &str,
    target: &str,
    min: Option<i128>,
    max: Option<i128>,
    lo: i128,
    hi: i128,
) -> Result<(), String> {
    if let (Some(min), Some(max)) = (min, max) {
        if min < lo || max > hi {
            return Err(err(column, format!("values from {min} to {max} do not fit the table's {target} (range {lo} to {hi})")));
        }
    }
    Ok(())
}

/// Checks that `source` fits the table column type `ty` and converts it for encoding.
pub fn prepare(column: &str, source: &Column, ty: &str) -> Result<Prepared, String> {
    let target = ChType::parse(ty).ok_or_else(|| {
        err(
            column,
            format!("the table's type {ty} is not supported by the loader"),
        )
    })?;
    let (base, nullable) = target.base();
    let nulls = source.null_count();
    if nulls > 0 && !nullable {
        return Err(err(
            column,
            format!("{nulls} NULL value(s), but the table's column is {ty} (not Nullable)"),
        ));
    }
    let dtype = source.dtype().clone();
    let incompatible = || {
        err(
            column,
            format!("the table's {ty} cannot take values of type {dtype}"),
        )
    };
    let is_int = dtype.is_integer() || dtype == DataType::Boolean;
    let cast = |to: &DataType| source.strict_cast(to).map_err(|e| err(column, e));
    Ok(match base {
        ChType::UInt(bits) if is_int || dtype == DataType::Null => {
            let values = cast(&DataType::UInt64)
                .map_err(|e| format!("{e} (negative values cannot go into {ty})"))?;
            let values = values.u64().map_err(|e| err(column, e))?.clone();
            let hi = if *bits == 64 {
                u64::MAX as i128
            } else {
                (1i128 << bits) - 1
            };
            check_range(
                column,
                ty,
                values.min().map(i128::from),
                values.max().map(i128::from),
                0,
                hi,
            )?;
            Prepared::UInt {
                values,
                bytes: *bits as usize / 8,
                nullable,
            }
        }
        ChType::Int(bits) if is_int || dtype == DataType::Null => {
            let values = cast(&DataType::Int64)?
                .i64()
                .map_err(|e| err(column, e))?
                .clone();
            let (lo, hi) = (-(1i128 << (bits - 1)), (1i128 << (bits - 1)) - 1);
            check_range(
                column,
                ty,
                values.min().map(i128::from),
                values.max().map(i128::from),
                lo,
                hi,
            )?;
            Prepared::Int {
                values,
                bytes: *bits as usize / 8,
                nullable,
            }
        }
        ChType::Float32 | ChType::Float64
            if dtype.is_primitive_numeric() || dtype == DataType::Null =>
        {
            let values = cast(&DataType::Float64)?
                .f64()
                .map_err(|e| err(column, e))?
                .clone();
            if *base == ChType::Float32 {
                Prepared::Float32 { values, nullable }
            } else {
                Prepared::Float64 { values, nullable }
            }
        }
        ChType::String if dtype == DataType::String || dtype == DataType::Null => {
            let values = cast(&DataType::String)?
                .str()
                .map_err(|e| err(column, e))?
                .clone();
            Prepared::Text { values, nullable }
        }
        ChType::DateTime | ChType::Date => {
            // Everything in whole seconds or days since the epoch, UTC.
            let (units_per_second, from_days) = match &dtype {
                DataType::Datetime(TimeUnit::Microseconds, _) => (1_000_000i64, false),
                DataType::Datetime(TimeUnit::Milliseconds, _) => (1_000, false),
                DataType::Datetime(TimeUnit::Nanoseconds, _) => (1_000_000_000, false),
                DataType::Date => (1, true),
                DataType::Null => (1, true),
                _ => return Err(incompatible()),
            };
            let physical = source
                .to_physical_repr()
                .strict_cast(&DataType::Int64)
                .map_err(|e| err(column, e))?;
            let physical = physical.i64().map_err(|e| err(column, e))?;
            let per_day = 86_400 * units_per_second;
            if *base == ChType::DateTime {
                let seconds: Int64Chunked = if from_days {
                    physical.apply_values(|d| d * 86_400)
                } else {
                    physical.apply_values(|v| v.div_euclid(units_per_second))
                };
                check_range(
                    column,
                    ty,
                    seconds.min().map(i128::from),
                    seconds.max().map(i128::from),
                    0,
                    u32::MAX as i128,
                )?;
                Prepared::DateTime { seconds, nullable }
            } else {
                let days: Int64Chunked = if from_days {
                    physical.clone()
                } else {
                    physical.apply_values(|v| v.div_euclid(per_day))
                };
                check_range(
                    column,
                    ty,
                    days.min().map(i128::from),
                    days.max().map(i128::from),
                    0,
                    u16::MAX as i128,
                )?;
                Prepared::Date { days, nullable }
            }
        }
        _ => return Err(incompatible()),
    })
}

fn leb128(out: &mut Vec<u8>, mut n: u64) {
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// Appends a Nullable marker when the column is nullable; false when the value is NULL.
fn marker<T>(out: &mut Vec<u8>, nullable: bool, value: &Option<T>) -> bool {
    if nullable {
        out.push(u8::from(value.is_none()));
    }
    value.is_some()
}

impl Prepared {
    /// Appends row `i`'s value in RowBinary.
    pub fn encode(&self, i: usize, out: &mut Vec<u8>) {
        match self {
            Prepared::UInt {
                values,
                bytes,
                nullable,
            } => {
                let v = values.get(i);
                if marker(out, *nullable, &v) {
                    out.extend_from_slice(&v.unwrap_or_default().to_le_bytes()[..*bytes]);
                }
            }
            Prepared::Int {
                values,
                bytes,
                nullable,
            } => {
                let v = values.get(i);
                if marker(out, *nullable, &v) {
                    out.extend_from_slice(&v.unwrap_or_default().to_le_bytes()[..*bytes]);
                }
            }
            Prepared::Float32 { values, nullable } => {
                let v = values.get(i);
                if marker(out, *nullable, &v) {
                    out.extend_from_slice(&(v.unwrap_or_default() as f32).to_le_bytes());
                }
            }
            Prepared::Float64 { values, nullable } => {
                let v = values.get(i);
                if marker(out, *nullable, &v) {
                    out.extend_from_slice(&v.unwrap_or_default().to_le_bytes());
                }
            }
            Prepared::Text { values, nullable } => {
                let v = values.get(i);
                if marker(out, *nullable, &v) {
                    let s = v.unwrap_or_default();
                    leb128(out, s.len() as u64);
                    out.extend_from_slice(s.as_bytes());
                }
            }
            Prepared::DateTime { seconds, nullable } => {
                let v = seconds.get(i);
                if marker(out, *nullable, &v) {
                    out.extend_from_slice(&(v.unwrap_or_default() as u32).to_le_bytes());
                }
            }
            Prepared::Date { days, nullable } => {
                let v = days.get(i);
                if marker(out, *nullable, &v) {
                    out.extend_from_slice(&(v.unwrap_or_default() as u16).to_le_bytes());
                }
            }
            Prepared::Constant { value, bytes } => {
                out.extend_from_slice(&value.to_le_bytes()[..*bytes])
            }
        }
    }
}

/// One column's values read back from RowBinary (see [`decode`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Cells {
    /// `UInt*`.
    UInt(Vec<Option<u64>>),
    /// `Int*`.
    Int(Vec<Option<i64>>),
    /// `Float32`, `Float64`.
    Float(Vec<Option<f64>>),
    /// `String`.
    Text(Vec<Option<String>>),
    /// `DateTime`: seconds since the epoch.
    Seconds(Vec<Option<i64>>),
    /// `Date`: days since the epoch.
    Days(Vec<Option<i32>>),
}

impl Cells {
    fn for_type(ty: &ChType) -> Self {
        match ty.base().0 {
            ChType::UInt(_) => Cells::UInt(Vec::new()),
            ChType::Int(_) => Cells::Int(Vec::new()),
            ChType::Float32 | ChType::Float64 => Cells::Float(Vec::new()),
            ChType::String => Cells::Text(Vec::new()),
            ChType::DateTime => Cells::Seconds(Vec::new()),
            ChType::Date => Cells::Days(Vec::new()),
            ChType::Nullable(_) => unreachable!("base() strips Nullable"),
        }
    }

    /// A Polars column named `name` of type `dtype` (the type the loaded table had), so the
    /// rows read back stack under the loaded ones.
    pub fn into_column(self, name: &str, dtype: &DataType) -> Result<Column, String> {
        let name = PlSmallStr::from(name);
        let per_second = |unit: &TimeUnit| match unit {
            TimeUnit::Nanoseconds => 1_000_000_000i64,
            TimeUnit::Microseconds => 1_000_000,
            TimeUnit::Milliseconds => 1_000,
        };
        // Dates and times go through their physical value in the target's own unit.
        let seconds_to = |seconds: Vec<Option<i64>>| -> Series {
            match dtype {
                DataType::Datetime(unit, _) => {
                    let k = per_second(unit);
                    Series::new(
                        name.clone(),
                        seconds.iter().map(|s| s.map(|s| s * k)).collect::<Vec<_>>(),
                    )
                }
                DataType::Date => Series::new(
                    name.clone(),
                    seconds
                        .iter()
                        .map(|s| s.map(|s| s.div_euclid(86_400) as i32))
                        .collect::<Vec<_>>(),
                ),
                _ => Series::new(
                    name.clone(),
                    seconds
                        .iter()
                        .map(|s| s.map(|s| s * 1_000))
                        .collect::<Vec<_>>(),
                )
                .cast(&DataType::Datetime(TimeUnit::Milliseconds, None))
                .unwrap_or_else(|_| Series::new_null(name.clone(), seconds.len())),
            }
        };
        let series = match self {
            Cells::UInt(v) => Series::new(name, v),
            Cells::Int(v) => Series::new(name, v),
            Cells::Float(v) => Series::new(name, v),
            Cells::Text(v) => Series::new(name, v),
            Cells::Seconds(v) => seconds_to(v),
            Cells::Days(v) => seconds_to(
                v.into_iter()
                    .map(|d| d.map(|d| i64::from(d) * 86_400))
                    .collect(),
            ),
        };
        series
            .strict_cast(dtype)
            .map(Column::from)
            .map_err(|e| format!("column `{}`: {e}", series.name()))
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or_else(|| {
                format!(
                    "RowBinary answer ends after {} bytes inside a value",
                    self.bytes.len()
                )
            })?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn le(&mut self, n: usize) -> Result<u64, String> {
        let mut buf = [0u8; 8];
        buf[..n].copy_from_slice(self.take(n)?);
        Ok(u64::from_le_bytes(buf))
    }

    fn leb128(&mut self) -> Result<u64, String> {
        let mut n = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = self.take(1)?[0];
            n |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(n);
            }
        }
        Err("RowBinary string length is not a valid LEB128".into())
    }

    fn value(&mut self, ty: &ChType, cells: &mut Cells) -> Result<(), String> {
        let (base, nullable) = ty.base();
        let null = nullable && self.take(1)?[0] != 0;
        match (base, cells) {
            (ChType::UInt(bits), Cells::UInt(v)) => {
                let x = if null {
                    None
                } else {
                    Some(self.le(*bits as usize / 8)?)
                };
                v.push(x)
            }
            (ChType::Int(bits), Cells::Int(v)) => {
                let x = if null {
                    None
                } else {
                    let n = *bits as usize / 8;
                    let raw = self.le(n)?;
                    let shift = 64 - 8 * n as u32;
                    Some(((raw << shift) as i64) >> shift) // sign-extend
                };
                v.push(x)
            }
            (ChType::Float32, Cells::Float(v)) => {
                let x = if null {
                    None
                } else {
                    Some(f64::from(f32::from_bits(self.le(4)? as u32)))
                };
                v.push(x)
            }
            (ChType::Float64, Cells::Float(v)) => {
                let x = if null {
                    None
                } else {
                    Some(f64::from_bits(self.le(8)?))
                };
                v.push(x)
            }
            (ChType::String, Cells::Text(v)) => {
                let x = if null {
                    None
                } else {
                    let len = self.leb128()? as usize;
                    Some(String::from_utf8_lossy(self.take(len)?).into_owned())
                };
                v.push(x)
            }
            (ChType::DateTime, Cells::Seconds(v)) => {
                let x = if null { None } else { Some(self.le(4)? as i64) };
                v.push(x)
            }
            (ChType::Date, Cells::Days(v)) => {
                let x = if null { None } else { Some(self.le(2)? as i32) };
                v.push(x)
            }
            (ty, _) => return Err(format!("no RowBinary reader for {ty:?}")),
        }
        Ok(())
    }
}

/// Reads RowBinary rows of columns with the given types (row-major, as ClickHouse answers
/// `FORMAT RowBinary`) into one [`Cells`] per column.
pub fn decode(types: &[ChType], bytes: &[u8]) -> Result<Vec<Cells>, String> {
    let mut columns: Vec<Cells> = types.iter().map(Cells::for_type).collect();
    let mut reader = Reader { bytes, at: 0 };
    while reader.at < bytes.len() {
        for (ty, cells) in types.iter().zip(columns.iter_mut()) {
            reader.value(ty, cells)?;
        }
    }
    Ok(columns)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_parse_like_system_columns_reports_them() {
        assert_eq!(
            ChType::parse("Nullable(Float64)"),
            Some(ChType::Nullable(Box::new(ChType::Float64)))
        );
        assert_eq!(
            ChType::parse("LowCardinality(String)"),
            Some(ChType::String)
        );
        assert_eq!(ChType::parse("DateTime('UTC')"), Some(ChType::DateTime));
        assert_eq!(ChType::parse("Decimal(18, 2)"), None);
    }

    #[test]
    fn values_encode_as_row_binary() {
        let big = Column::new("id".into(), [Some(9_007_199_254_740_993i64)]);
        let p = prepare("id", &big, "UInt64").unwrap();
        let mut out = Vec::new();
        p.encode(0, &mut out);
        assert_eq!(out, 9_007_199_254_740_993u64.to_le_bytes());

        let text = Column::new("s".into(), [Some("é"), None]);
        let p = prepare("s", &text, "Nullable(String)").unwrap();
        let mut out = Vec::new();
        p.encode(0, &mut out);
        p.encode(1, &mut out);
        assert_eq!(out, [0, 2, 0xc3, 0xa9, 1]);

        let ts = Column::new("t".into(), [Some(1_700_000_000_999_999i64)])
            .cast(&DataType::Datetime(TimeUnit::Microseconds, None))
            .unwrap();
        let p = prepare("t", &ts, "DateTime").unwrap();
        let mut out = Vec::new();
        p.encode(0, &mut out);
        assert_eq!(
            out,
            1_700_000_000u32.to_le_bytes(),
            "truncated to whole seconds"
        );
    }

    #[test]
    fn mismatches_are_caught_before_encoding() {
        let negative = Column::new("user_id".into(), [Some(-1i64)]);
        assert!(prepare("user_id", &negative, "UInt64")
            .unwrap_err()
            .contains("negative"));
        let nulls = Column::new("events".into(), [Some(1i64), None]);
        assert!(prepare("events", &nulls, "UInt64")
            .unwrap_err()
            .contains("1 NULL value(s)"));
        let wide = Column::new("flag".into(), [Some(300i64)]);
        assert!(prepare("flag", &wide, "UInt8")
            .unwrap_err()
            .contains("do not fit"));
        let text = Column::new("n".into(), [Some("x")]);
        let e = prepare("n", &text, "Float64").unwrap_err();
        assert!(e.contains("cannot take values of type str"), "{e}");
    }

    #[test]
    fn rows_read_back_are_the_rows_written() {
        let ids = Column::new("id".into(), [Some(u64::MAX), Some(7)]);
        let delta = Column::new("d".into(), [Some(-3i64), None]);
        let name = Column::new("s".into(), [Some("O'Brien \"Zoë\" 🚀"), Some("")]);
        let at = Column::new("t".into(), [Some(1_700_000_000_000i64), Some(0)])
            .cast(&DataType::Datetime(TimeUnit::Milliseconds, None))
            .unwrap();
        let ratio = Column::new("r".into(), [Some(0.25f64), None]);
        let types = [
            "UInt64",
            "Nullable(Int16)",
            "String",
            "DateTime",
            "Nullable(Float64)",
        ];
        let sources = [&ids, &delta, &name, &at, &ratio];
        let prepared: Vec<Prepared> = sources
            .iter()
            .zip(types)
            .map(|(c, ty)| prepare(c.name(), c, ty).unwrap())
            .collect();
        let mut bytes = Vec::new();
        for row in 0..2 {
            for p in &prepared {
                p.encode(row, &mut bytes);
            }
        }
        let parsed: Vec<ChType> = types.iter().map(|t| ChType::parse(t).unwrap()).collect();
        let cells = decode(&parsed, &bytes).unwrap();
        for (cells, source) in cells.into_iter().zip(sources) {
            let back = cells.into_column(source.name(), source.dtype()).unwrap();
            assert_eq!(&back, source, "{}", source.name());
        }
        let truncated = decode(&parsed, &bytes[..bytes.len() - 1]).unwrap_err();
        assert!(truncated.contains("ends"), "{truncated}");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 512, ..Default::default() })]

        /// An answer that is not what the types say gets an error, never a panic.
        #[test]
        fn arbitrary_answers_never_panic(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256),
            pick in proptest::collection::vec(0usize..8, 1..6),
        ) {
            let all = ["UInt8", "Int64", "Float32", "String", "DateTime", "Date", "Nullable(UInt64)", "Nullable(String)"];
            let types: Vec<ChType> = pick.iter().map(|&i| ChType::parse(all[i]).unwrap()).collect();
            if let Ok(cells) = decode(&types, &bytes) {
                for (i, cells) in cells.into_iter().enumerate() {
                    let _ = cells.into_column(&format!("c{i}"), &DataType::Int64);
                }
            }
        }

        /// Whatever the values, what is encoded reads back the same.
        #[test]
        fn values_read_back_as_written(
            ids in proptest::collection::vec(proptest::prelude::any::<Option<u64>>(), 1..20),
            words in proptest::collection::vec(proptest::prelude::any::<String>(), 1..20),
        ) {
            let n = ids.len().min(words.len());
            let ids = Column::new("id".into(), ids[..n].to_vec());
            let words = Column::new("w".into(), words[..n].to_vec());
            let prepared = [
                prepare("id", &ids, "Nullable(UInt64)").unwrap(),
                prepare("w", &words, "String").unwrap(),
            ];
            let mut bytes = Vec::new();
            for row in 0..n {
                for p in &prepared {
                    p.encode(row, &mut bytes);
                }
            }
            let types = [ChType::parse("Nullable(UInt64)").unwrap(), ChType::String];
            let mut cells = decode(&types, &bytes).unwrap().into_iter();
            proptest::prop_assert_eq!(cells.next().unwrap().into_column("id", ids.dtype()).unwrap(), ids);
            proptest::prop_assert_eq!(cells.next().unwrap().into_column("w", words.dtype()).unwrap(), words);
        }
    }
}
