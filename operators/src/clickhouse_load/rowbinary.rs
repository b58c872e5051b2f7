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
}
