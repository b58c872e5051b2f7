//! Tombstones for keys a slice of the table no longer has (`replace_scope`).
//!
//! After a load at version V, every row of the slice that is live under FINAL with a version
//! below V belongs to a key this load did not write: it is copied back at version V with the
//! deleted flag set, by one `INSERT … SELECT` on the server (no keys travel). The slice's
//! tombstones are then read back so the task's output names them, and downstream tasks
//! (invalidations) reach their users too.
//!
//! On a retry or a crash: a retry loads at a larger version and repeats both steps; keys
//! already tombstoned stay so (they are not live), and the read-back returns every tombstone
//! of the slice, so the output is the same whichever try wrote them.
//!
//! ClickHouse 18.16 has no query parameters, so scope values become literals here: each is
//! parsed as the column's type first (a timestamp, a number) and only a String column takes
//! text, quoted by [`quote`]. No template text reaches the SQL unparsed.

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};

use super::clickhouse_http::{quote, quote_ident, TableColumn};
use super::rowbinary::ChType;

/// One column of the slice with its value as a literal of the column's type.
#[derive(Debug, Clone, PartialEq)]
pub struct ScopeTerm {
    /// Column name.
    pub column: String,
    /// A ClickHouse literal (or constant expression) of the column's type.
    pub literal: String,
}

fn parse_time(text: &str) -> Option<DateTime<Utc>> {
    let text = text.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Some(t.with_timezone(&Utc));
    }
    if let Ok(t) = NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S") {
        return Some(t.and_utc());
    }
    NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .map(|d| d.and_hms_opt(0, 0, 0).expect("midnight").and_utc())
}

/// The literal for `value` (already rendered) in a column of ClickHouse type `ty`.
pub fn literal(column: &str, ty: &str, value: &str) -> Result<ScopeTerm, String> {
    let bad = |what: &str| {
        format!("replace_scope.{column}: `{value}` is not {what} (the table's column is {ty})")
    };
    let parsed = ChType::parse(ty).ok_or_else(|| {
        format!("replace_scope.{column}: the table's type {ty} cannot scope a slice")
    })?;
    let literal = match parsed {
        ChType::UInt(_) => value.trim().parse::<u64>().map_err(|_| bad("an unsigned integer"))?.to_string(),
        ChType::Int(_) => value.trim().parse::<i64>().map_err(|_| bad("an integer"))?.to_string(),
        ChType::String => quote(value),
        ChType::DateTime => {
            let t = parse_time(value).ok_or_else(|| bad("a time (RFC 3339, or YYYY-MM-DD HH:MM:SS in UTC)"))?;
            let seconds = u32::try_from(t.timestamp()).map_err(|_| bad("a time a DateTime can hold"))?;
            format!("toDateTime({seconds})")
        }
        ChType::Date => {
            let t = parse_time(value).ok_or_else(|| bad("a date (YYYY-MM-DD)"))?;
            // chrono's own formatting of a parsed date: only digits and dashes.
            format!("toDate('{}')", t.format("%Y-%m-%d"))
        }
        ChType::Float32 | ChType::Float64 | ChType::Nullable(_) => {
            return Err(format!(
                "replace_scope.{column}: a {ty} column cannot scope a slice (use a key column: integer, String, Date or DateTime)"
            ))
        }
    };
    Ok(ScopeTerm {
        column: column.to_string(),
        literal,
    })
}

/// `col = literal AND …` for the slice.
fn filter(scope: &[ScopeTerm]) -> String {
    scope
        .iter()
        .map(|t| format!("{} = {}", quote_ident(&t.column), t.literal))
        .collect::<Vec<_>>()
        .join(" AND ")
}

/// Names of the version and deleted columns.
#[derive(Debug, Clone, Copy)]
pub struct Flags<'a> {
    /// The ReplacingMergeTree's version column.
    pub version: &'a str,
    /// The UInt8 deleted flag.
    pub deleted: &'a str,
}

/// `INSERT … SELECT` that tombstones the slice's live keys older than `version`.
pub fn insert_sql(
    database: &str,
    table: &str,
    columns: &[TableColumn],
    scope: &[ScopeTerm],
    flags: Flags<'_>,
    version: u64,
) -> String {
    let insertable: Vec<&TableColumn> = columns.iter().filter(|c| c.insertable).collect();
    let names: Vec<String> = insertable.iter().map(|c| quote_ident(&c.name)).collect();
    let values: Vec<String> = insertable
        .iter()
        .map(|c| {
            if c.name == flags.version {
                format!("CAST({version} AS {})", c.ty)
            } else if c.name == flags.deleted {
                format!("CAST(1 AS {})", c.ty)
            } else {
                quote_ident(&c.name)
            }
        })
        .collect();
    format!(
        "INSERT INTO {db}.{t} ({names}) SELECT {values} FROM {db}.{t} FINAL WHERE {scope} AND {v} < {version} AND {d} = 0",
        db = quote_ident(database),
        t = quote_ident(table),
        names = names.join(", "),
        values = values.join(", "),
        scope = filter(scope),
        v = quote_ident(flags.version),
        d = quote_ident(flags.deleted),
    )
}

/// `SELECT count()` of the slice's rows older than this load, without FINAL (cheap): when
/// there are none, this is the slice's first load and there is nothing to tombstone or read.
pub fn earlier_rows_sql(
    database: &str,
    table: &str,
    scope: &[ScopeTerm],
    flags: Flags<'_>,
    version: u64,
) -> String {
    format!(
        "SELECT count() FROM {db}.{t} WHERE {scope} AND {v} < {version} FORMAT TabSeparated",
        db = quote_ident(database),
        t = quote_ident(table),
        scope = filter(scope),
        v = quote_ident(flags.version),
    )
}

/// `SELECT <columns>, <version> … FORMAT RowBinary` of the slice's tombstones under FINAL.
pub fn read_sql(
    database: &str,
    table: &str,
    columns: &[String],
    scope: &[ScopeTerm],
    flags: Flags<'_>,
) -> String {
    let mut names: Vec<String> = columns.iter().map(|c| quote_ident(c)).collect();
    names.push(quote_ident(flags.version));
    format!(
        "SELECT {names} FROM {db}.{t} FINAL WHERE {scope} AND {d} = 1 FORMAT RowBinary",
        names = names.join(", "),
        db = quote_ident(database),
        t = quote_ident(table),
        scope = filter(scope),
        d = quote_ident(flags.deleted),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn column(name: &str, ty: &str) -> TableColumn {
        TableColumn {
            name: name.into(),
            ty: ty.into(),
            has_default: false,
            insertable: true,
        }
    }

    #[test]
    fn scope_values_become_literals_of_the_column_type() {
        let at = |v: &str| literal("window_start", "DateTime", v).map(|t| t.literal);
        assert_eq!(
            at("2026-11-23T10:00:00Z").unwrap(),
            "toDateTime(1795428000)"
        );
        assert_eq!(
            at("2026-11-23T11:00:00+01:00").unwrap(),
            "toDateTime(1795428000)"
        );
        assert_eq!(at("2026-11-23 10:00:00").unwrap(), "toDateTime(1795428000)");
        assert_eq!(
            literal("d", "Date", "2026-11-23T10:00:00Z")
                .unwrap()
                .literal,
            "toDate('2026-11-23')"
        );
        assert_eq!(
            literal("n", "UInt64", "18446744073709551615")
                .unwrap()
                .literal,
            "18446744073709551615"
        );
        assert_eq!(literal("n", "Int32", "-7").unwrap().literal, "-7");
        assert_eq!(
            literal("s", "String", "it's $(x)\n").unwrap().literal,
            "'it\\'s $(x)\\n'"
        );
    }

    #[test]
    fn a_value_that_is_not_of_the_column_type_is_refused_not_spliced() {
        for (ty, value) in [
            ("DateTime", "0) OR 1=1 --"),
            ("DateTime", "1900-01-01T00:00:00Z"),
            ("UInt64", "1 OR 1"),
            ("Int64", "-"),
            ("Date", "yesterday"),
        ] {
            let e = literal("w", ty, value).unwrap_err();
            assert!(e.starts_with("replace_scope.w: "), "{e}");
            assert!(e.contains(ty), "{e}");
        }
        let e = literal("w", "Float64", "1.5").unwrap_err();
        assert!(e.contains("cannot scope"), "{e}");
    }

    #[test]
    fn tombstones_copy_live_rows_older_than_the_load() {
        let columns = [
            column("user_id", "UInt64"),
            column("window_start", "DateTime"),
            TableColumn {
                insertable: false,
                ..column("shown", "String")
            },
            column("_version", "UInt64"),
            column("_deleted", "UInt8"),
        ];
        let scope = [literal("window_start", "DateTime", "2026-11-23T10:00:00Z").unwrap()];
        let flags = Flags {
            version: "_version",
            deleted: "_deleted",
        };
        assert_eq!(
            insert_sql("db", "t", &columns, &scope, flags, 42),
            "INSERT INTO `db`.`t` (`user_id`, `window_start`, `_version`, `_deleted`) \
             SELECT `user_id`, `window_start`, CAST(42 AS UInt64), CAST(1 AS UInt8) FROM `db`.`t` FINAL \
             WHERE `window_start` = toDateTime(1795428000) AND `_version` < 42 AND `_deleted` = 0"
        );
        assert_eq!(
            earlier_rows_sql("db", "t", &scope, flags, 42),
            "SELECT count() FROM `db`.`t` WHERE `window_start` = toDateTime(1795428000) AND `_version` < 42 FORMAT TabSeparated"
        );
        assert_eq!(
            read_sql("db", "t", &["user_id".into()], &scope, flags),
            "SELECT `user_id`, `_version` FROM `db`.`t` FINAL \
             WHERE `window_start` = toDateTime(1795428000) AND `_deleted` = 1 FORMAT RowBinary"
        );
    }
}
