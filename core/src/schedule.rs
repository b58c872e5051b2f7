//! Schedules and data intervals.
//!
//! A schedule is a 5-field cron expression or a preset, read in the DAG's timezone. A run
//! covers the data interval between two consecutive fire times; its logical date is the
//! interval's start. Everything here is pure and works on UTC instants, with
//! the timezone applied only when asking the cron expression for fire times, so DST
//! changes shift instants the way a wall clock in that zone would.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Duration as ChronoDuration, NaiveDate, TimeZone, Utc};
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds, Year};

/// When a DAG runs by itself.
#[derive(Debug, Clone)]
pub enum Schedule {
    /// Only manual runs.
    Manual,
    /// A single run at the start date.
    Once,
    /// Runs whenever a cron expression fires.
    Cron {
        /// The expression as written (preset or 5 fields).
        written: String,
        /// The parsed expression.
        cron: Box<croner::Cron>,
    },
}

/// The half-open range of data a run processes: `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct DataInterval {
    /// Inclusive start; also the run's logical date.
    pub start: DateTime<Utc>,
    /// Exclusive end.
    pub end: DateTime<Utc>,
}

impl fmt::Display for DataInterval {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "[{}, {})",
            self.start.to_rfc3339(),
            self.end.to_rfc3339()
        )
    }
}

const PRESETS: &[(&str, &str)] = &[
    ("@hourly", "0 * * * *"),
    ("@daily", "0 0 * * *"),
    ("@midnight", "0 0 * * *"),
    ("@weekly", "0 0 * * 0"),
    ("@monthly", "0 0 1 * *"),
    ("@yearly", "0 0 1 1 *"),
    ("@annually", "0 0 1 1 *"),
];

/// The five fields in order, to name the one an error is in.
const FIELDS: [&str; 5] = [
    "minute",
    "hour",
    "day-of-month",
    "month",
    "day-of-week",
];

/// The cron dialect sluice reads: five fields, POSIX/Vixie day rules, as Airflow's croniter.
fn parser() -> CronParser {
    CronParser::builder()
        // Five fields only: croniter's optional sixth field is seconds *last*, croner's is
        // seconds first, so accepting six would mean different things to the two.
        .seconds(Seconds::Disallowed)
        .year(Year::Disallowed)
        // POSIX/Vixie: when both day fields are restricted, a day matches if EITHER does.
        .dom_and_dow(false)
        // Sunday is 0 or 7, Monday 1 (not Quartz's 1 = Sunday).
        .alternative_weekdays(false)
        // croniter (so Airflow) reads `10/5` as `10-59/5`; accept it the same way.
        .sloppy_ranges(true)
        .build()
}

/// A one-line reason from croner's error, without its "Component error:" style prefix.
fn reason(error: &croner::errors::CronError) -> String {
    let text = error.to_string();
    let text = text
        .split_once(": ")
        .map(|(_, rest)| rest.to_string())
        .unwrap_or(text);
    text.trim_end_matches('.').to_string()
}

/// Parses a 5-field expression; an error names the field that is wrong.
fn parse_cron(written: &str, expression: &str) -> Result<croner::Cron, String> {
    let fields: Vec<&str> = expression.split_whitespace().collect();
    if fields.len() != 5 {
        return Err(format!(
            "`{written}` has {} fields; a cron schedule has 5 (minute hour day-of-month month day-of-week)",
            fields.len()
        ));
    }
    let parser = parser();
    parser.parse(expression).map_err(|whole| {
        // croner's messages do not say which field failed: parse each field alone (the
        // others `*`) and blame the first that fails by itself.
        for (index, field) in fields.iter().enumerate() {
            let mut alone = ["*"; 5];
            alone[index] = field;
            if let Err(e) = parser.parse(&alone.join(" ")) {
                return format!(
                    "`{written}` is not a valid cron expression: {} field `{field}`: {}",
                    FIELDS[index],
                    reason(&e)
                );
            }
        }
        format!(
            "`{written}` is not a valid cron expression: {}",
            reason(&whole)
        )
    })
}

impl FromStr for Schedule {
    type Err = String;

    /// Parses a preset, `@once`, `none`, or a standard 5-field cron expression.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let written = text.trim();
        match written {
            "" | "none" | "@none" => return Ok(Schedule::Manual),
            "@once" => return Ok(Schedule::Once),
            _ => {}
        }
        let expression = match PRESETS.iter().find(|(name, _)| *name == written) {
            Some((_, expr)) => *expr,
            None if written.starts_with('@') => {
                let names: Vec<&str> = PRESETS.iter().map(|(n, _)| *n).collect();
                return Err(format!(
                    "unknown preset `{written}`; expected one of {}, @once",
                    names.join(", ")
                ));
            }
            None => written,
        };
        let cron = parse_cron(written, expression)?;
        Ok(Schedule::Cron {
            written: written.to_string(),
            cron: Box::new(cron),
        })
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Schedule::Manual => f.write_str("none"),
            Schedule::Once => f.write_str("@once"),
            Schedule::Cron { written, .. } => f.write_str(written),
        }
    }
}

/// Parses an IANA timezone name.
pub fn parse_timezone(name: &str) -> Result<Tz, String> {
    name.parse::<Tz>().map_err(|_| {
        format!("unknown timezone `{name}`; use an IANA name such as UTC or Europe/Berlin")
    })
}

/// Parses an instant: RFC 3339, `YYYY-MM-DDTHH:MM[:SS]` or `YYYY-MM-DD`, the latter two in `tz`.
pub fn parse_instant(text: &str, tz: Tz) -> Result<DateTime<Utc>, String> {
    let text = text.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&Utc));
    }
    let local = [
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%d %H:%M:%S",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M",
    ]
    .iter()
    .find_map(|format| chrono::NaiveDateTime::parse_from_str(text, format).ok())
    .or_else(|| {
        NaiveDate::parse_from_str(text, "%Y-%m-%d")
            .ok()
            .and_then(|d| d.and_hms_opt(0, 0, 0))
    });
    match local {
        Some(naive) => tz
            .from_local_datetime(&naive)
            .earliest()
            .map(|t| t.with_timezone(&Utc))
            .ok_or_else(|| format!("`{text}` does not exist in {tz} (a DST gap)")),
        None => Err(format!(
            "`{text}` is not a date or time; write RFC 3339 (2026-01-31T12:00:00Z) or YYYY-MM-DD"
        )),
    }
}

impl Schedule {
    /// The latest fire time at or before `t`.
    pub fn fire_at_or_before(&self, tz: Tz, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Schedule::Cron { cron, .. } => cron
                .find_previous_occurrence(&t.with_timezone(&tz), true)
                .ok()
                .map(|f| f.with_timezone(&Utc)),
            _ => None,
        }
    }

    /// The first fire time strictly after `t`.
    pub fn fire_after(&self, tz: Tz, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Schedule::Cron { cron, .. } => cron
                .find_next_occurrence(&t.with_timezone(&tz), false)
                .ok()
                .map(|f| f.with_timezone(&Utc)),
            _ => None,
        }
    }

    /// The next `n` fire times strictly after `after`, oldest first (fewer if the expression
    /// stops firing; none without a cron schedule). What `dags next-execution -n N` prints.
    pub fn next_fire_times(&self, tz: Tz, after: DateTime<Utc>, n: usize) -> Vec<DateTime<Utc>> {
        let mut times = Vec::with_capacity(n.min(1024));
        let mut last = after;
        while times.len() < n {
            match self.fire_after(tz, last) {
                Some(next) => {
                    times.push(next);
                    last = next;
                }
                None => break,
            }
        }
        times
    }

    /// The interval a run with logical date near `t` covers: it starts at the latest fire
    /// time ≤ `t` and ends at the next one. Without a cron schedule it is `[t, t]`.
    pub fn interval_containing(&self, tz: Tz, t: DateTime<Utc>) -> DataInterval {
        match self {
            Schedule::Cron { .. } => {
                let start = self.fire_at_or_before(tz, t).unwrap_or(t);
                let end = self.fire_after(tz, start).unwrap_or(start);
                DataInterval { start, end }
            }
            _ => DataInterval { start: t, end: t },
        }
    }

    /// The latest interval that has fully ended at `now`: it ends at the latest fire ≤ now.
    pub fn latest_complete_interval(&self, tz: Tz, now: DateTime<Utc>) -> Option<DataInterval> {
        let end = self.fire_at_or_before(tz, now)?;
        let start = self.fire_at_or_before(tz, end - ChronoDuration::seconds(1))?;
        Some(DataInterval { start, end })
    }

    /// Consecutive schedule intervals, oldest first, the first starting at the first fire
    /// time at or after `from`. The one way to step through intervals: catchup in the
    /// scheduler and backfill both use it. Empty without a cron schedule; unbounded
    /// otherwise (take what you need).
    pub fn intervals_from(&self, tz: Tz, from: DateTime<Utc>) -> Intervals<'_> {
        let start = self
            .fire_at_or_before(tz, from)
            .filter(|fire| *fire == from)
            .or_else(|| self.fire_after(tz, from));
        let next = start.and_then(|start| {
            let end = self.fire_after(tz, start)?;
            Some(DataInterval { start, end })
        });
        Intervals {
            schedule: self,
            tz,
            next,
        }
    }
}

/// Iterator over consecutive intervals of a schedule (see [`Schedule::intervals_from`]).
#[derive(Debug, Clone)]
pub struct Intervals<'a> {
    schedule: &'a Schedule,
    tz: Tz,
    next: Option<DataInterval>,
}

impl Iterator for Intervals<'_> {
    type Item = DataInterval;

    fn next(&mut self) -> Option<DataInterval> {
        let current = self.next.take()?;
        self.next = self
            .schedule
            .fire_after(self.tz, current.end)
            .map(|end| DataInterval {
                start: current.end,
                end,
            });
        Some(current)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn every_fifteen_minutes_gives_quarter_hour_intervals() {
        let s: Schedule = "*/15 * * * *".parse().unwrap();
        let i = s.interval_containing(Tz::UTC, utc("2026-11-23T16:07:12Z"));
        assert_eq!(
            (i.start, i.end),
            (utc("2026-11-23T16:00:00Z"), utc("2026-11-23T16:15:00Z"))
        );
        // a fire time is the start of its own interval
        let i = s.interval_containing(Tz::UTC, utc("2026-11-23T16:15:00Z"));
        assert_eq!(i.start, utc("2026-11-23T16:15:00Z"));
        let latest = s
            .latest_complete_interval(Tz::UTC, utc("2026-11-23T16:07:12Z"))
            .unwrap();
        assert_eq!(
            (latest.start, latest.end),
            (utc("2026-11-23T15:45:00Z"), utc("2026-11-23T16:00:00Z"))
        );
    }

    #[test]
    fn presets_and_day_of_week_numbers_follow_standard_cron() {
        let weekly: Schedule = "@weekly".parse().unwrap();
        // 2026-11-23 is a Monday; @weekly fires Sundays at midnight
        let i = weekly.interval_containing(Tz::UTC, utc("2026-11-25T10:00:00Z"));
        assert_eq!(
            (i.start, i.end),
            (utc("2026-11-22T00:00:00Z"), utc("2026-11-29T00:00:00Z"))
        );
        let weekdays: Schedule = "30 6 * * 1-5".parse().unwrap();
        let after_friday = weekdays
            .fire_after(Tz::UTC, utc("2026-11-27T07:00:00Z"))
            .unwrap();
        assert_eq!(
            after_friday,
            utc("2026-11-30T06:30:00Z"),
            "Saturday and Sunday skipped"
        );
        let sundays: Schedule = "0 0 * * 7".parse().unwrap();
        assert_eq!(
            sundays
                .fire_after(Tz::UTC, utc("2026-11-23T00:00:00Z"))
                .unwrap(),
            utc("2026-11-29T00:00:00Z")
        );
        let even: Schedule = "0 0 * * */2".parse().unwrap();
        // 0,2,4,6 = Sun, Tue, Thu, Sat
        assert_eq!(
            even.fire_after(Tz::UTC, utc("2026-11-23T00:00:00Z"))
                .unwrap(),
            utc("2026-11-24T00:00:00Z")
        );
    }

    #[test]
    fn bad_expressions_say_why() {
        assert!("* * *"
            .parse::<Schedule>()
            .unwrap_err()
            .contains("has 3 fields"));
        let out_of_range = "61 * * * *".parse::<Schedule>().unwrap_err();
        assert!(
            out_of_range.contains("not a valid cron") && out_of_range.contains("'61'"),
            "{out_of_range}"
        );
        assert!(!out_of_range.contains('\n'), "{out_of_range}");
        assert!("@fortnightly"
            .parse::<Schedule>()
            .unwrap_err()
            .contains("unknown preset"));
        assert!("0 0 * * 9"
            .parse::<Schedule>()
            .unwrap_err()
            .contains("day of week"));
        assert!(matches!(
            "@once".parse::<Schedule>().unwrap(),
            Schedule::Once
        ));
        let never: Schedule = "0 0 31 2 *".parse().unwrap();
        assert_eq!(never.fire_after(Tz::UTC, utc("2026-01-01T00:00:00Z")), None);
        assert!(matches!(
            "none".parse::<Schedule>().unwrap(),
            Schedule::Manual
        ));
    }

    #[test]
    fn daily_in_berlin_moves_with_dst() {
        let tz = parse_timezone("Europe/Berlin").unwrap();
        let s: Schedule = "0 2 * * *".parse().unwrap();
        // summer: 02:00 CEST = 00:00 UTC; winter: 02:00 CET = 01:00 UTC
        assert_eq!(
            s.fire_after(tz, utc("2026-07-01T12:00:00Z")).unwrap(),
            utc("2026-07-02T00:00:00Z")
        );
        assert_eq!(
            s.fire_after(tz, utc("2026-12-01T12:00:00Z")).unwrap(),
            utc("2026-12-02T01:00:00Z")
        );
        assert!(parse_timezone("Mars/Olympus")
            .unwrap_err()
            .contains("unknown timezone"));
    }

    #[test]
    fn instants_parse_in_the_dag_timezone() {
        let tz = parse_timezone("Europe/Berlin").unwrap();
        assert_eq!(
            parse_instant("2026-01-15", tz).unwrap(),
            utc("2026-01-14T23:00:00Z")
        );
        assert_eq!(
            parse_instant("2026-01-15T10:00:00Z", tz).unwrap(),
            utc("2026-01-15T10:00:00Z")
        );
        assert!(parse_instant("yesterday", tz).is_err());
    }

    #[test]
    fn intervals_step_from_the_first_fire_at_or_after_a_time() {
        let hourly: Schedule = "@hourly".parse().unwrap();
        let starts = |from: &str| -> Vec<String> {
            hourly
                .intervals_from(chrono_tz::UTC, utc(from))
                .take(3)
                .map(|i| format!("{}..{}", i.start.format("%H:%M"), i.end.format("%H:%M")))
                .collect()
        };
        assert_eq!(
            starts("2026-03-01T10:00:00Z"),
            ["10:00..11:00", "11:00..12:00", "12:00..13:00"]
        );
        assert_eq!(
            starts("2026-03-01T10:00:01Z"),
            ["11:00..12:00", "12:00..13:00", "13:00..14:00"]
        );
        // Across a DST change the intervals follow the zone's wall clock.
        let daily: Schedule = "0 3 * * *".parse().unwrap();
        let berlin: Vec<i64> = daily
            .intervals_from(chrono_tz::Europe::Berlin, utc("2026-03-28T00:00:00Z"))
            .take(2)
            .map(|i| (i.end - i.start).num_hours())
            .collect();
        assert_eq!(berlin, [23, 24]);
        let manual = Schedule::Manual;
        assert_eq!(
            manual
                .intervals_from(chrono_tz::UTC, utc("2026-03-01T10:00:00Z"))
                .count(),
            0
        );
    }
}
