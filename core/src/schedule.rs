//! Schedules and data intervals.
//!
//! A schedule is a 5-field cron expression or a preset, read in the DAG's timezone. A run
//! covers the data interval between two consecutive fire times; its logical date is the
//! interval's start. Everything here is pure and works on UTC instants, with
//! the timezone applied only when asking the cron expression for fire times, so DST
//! changes shift instants the way a wall clock in that zone would.
//!
//! # The cron dialect
//!
//! Cron as Vixie cron, POSIX and Airflow (croniter) read it, checked fire time by fire time
//! against croniter by `core/tests/cron_croniter.rs`:
//!
//! - five fields, `minute hour day-of-month month day-of-week`; `*`, lists, ranges, steps
//!   (`*/15`, `10-40/5`, and croniter's `10/5` = `10-59/5`); month and day names (`JAN`,
//!   `mon-fri`, any case); day of week 0-7 with 0 and 7 both Sunday; presets `@hourly`,
//!   `@daily`/`@midnight`, `@weekly`, `@monthly`, `@yearly`/`@annually`;
//! - **day-of-month OR day-of-week**: when both are restricted a day matches if either
//!   does (`0 0 1 * 1` = every 1st and every Monday); when one is `*` (or `?`) the other
//!   alone decides;
//! - `L` (last day of the month) and `nW` (the weekday nearest the nth, within the month) in
//!   day-of-month; `d#n` (the nth weekday d of the month) and `Ld` or `d#L` (the last one)
//!   in day-of-week;
//! - ranges that wrap as croniter's do: `22-2` hours are 22, 23, 0, 1, 2; `FRI-MON` days;
//! - no seconds or years field (croniter's sixth field is seconds *last*, croner's first:
//!   six fields would mean different things to different tools, so they are refused).
//!
//! # Daylight saving time
//!
//! Fire times are wall-clock times in the DAG's timezone. Where the clock jumps:
//!
//! - **Skipped hour** (spring forward, e.g. 02:00→03:00 in Europe/Berlin): a fire time in
//!   the gap fires once at the first instant after it (`30 2 * * *` fires at 03:00 that day;
//!   `0,30 2 * * *` fires once at 03:00). When the hour field is every hour (`*`, `*/1`,
//!   `0-23`) the skipped times are simply skipped: the next regular fire time follows
//!   within the hour. This is croniter's rule (and Airflow's, whose timetables move a
//!   nonexistent time forward).
//! - **Repeated hour** (fall back, e.g. 03:00→02:00): with an every-hour hour field the
//!   expression follows real time and fires in both passes (`*/15 * * * *` keeps firing
//!   every 15 minutes; `0 * * * *` fires at 02:00 CEST and 02:00 CET), as croniter and
//!   Airflow do. Otherwise each wall-clock time fires **once**, at its first occurrence
//!   (`30 2 * * *` runs once, at 02:30 CEST), as Vixie cron and Airflow's cron timetables do:
//!   a daily DAG gets one run that day, not a second one an hour later. croniter fires such
//!   a time in both passes; that is a listed, deliberate difference
//!   (`core/tests/fixtures/cron/differences.txt`).

use std::fmt;
use std::str::FromStr;

use chrono::{
    DateTime, Duration as ChronoDuration, LocalResult, NaiveDate, NaiveDateTime, Offset, TimeZone,
    Utc,
};
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
        cron: Box<CronExpression>,
    },
}

/// A parsed 5-field cron expression (see the module documentation for the dialect).
#[derive(Debug, Clone)]
pub struct CronExpression {
    /// The expression read on a naive wall clock; DST is applied by [`Schedule`] itself.
    cron: croner::Cron,
    /// Whether the hour field matches all 24 hours: such an expression follows real time
    /// through DST changes (skipped times are skipped, repeated ones fire twice).
    every_hour: bool,
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
const FIELDS: [&str; 5] = ["minute", "hour", "day-of-month", "month", "day-of-week"];

/// What each field accepts, said after an error in it.
const ALLOWED: [&str; 5] = [
    "0-59",
    "0-23",
    "1-31, L, LW or nW",
    "1-12 or JAN-DEC",
    "0-7 (0 and 7 are Sunday), SUN-SAT, d#n, Ld or d#L",
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
    let text = text.trim_end_matches('.');
    // "Number out of bounds" reads as part of a sentence here.
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => "invalid".into(),
    }
}

const MONTHS: [&str; 12] = [
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
];
const WEEKDAYS: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

/// Rewrites croniter spellings croner reads otherwise (or not at all) into croner's, so an
/// expression means to sluice what it means to Airflow: names become numbers (so a range of
/// names can be checked for wrapping), a range that runs backwards wraps around (`22-2`),
/// `Ld` in day-of-week is croner's `d#L`, and `d/n` in day-of-week stops at Saturday (6) as
/// croniter's does (croner would go on to 7, Sunday again). Anything else is left for croner
/// to accept or refuse.
fn croniter_spelling(index: usize, field: &str) -> String {
    let names: &[&str] = match index {
        3 => &MONTHS,
        4 => &WEEKDAYS,
        _ => &[],
    };
    let (min, max) = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 6)][index];
    let items: Vec<String> = field
        .split(',')
        .map(|item| {
            let mut item = item.to_ascii_uppercase();
            for (number, name) in names.iter().enumerate() {
                let number = number as u32 + if index == 3 { 1 } else { 0 };
                item = item.replace(name, &number.to_string());
            }
            if index == 4 {
                if let Some(day) = item.strip_prefix('L').filter(|d| d.parse::<u8>().is_ok()) {
                    return format!("{day}#L");
                }
            }
            let (range, step) = match item.split_once('/') {
                Some((range, step)) => (range.to_string(), step.parse::<u32>().ok()),
                None => (item.clone(), Some(1)),
            };
            let Some(step) = step.filter(|s| *s > 0) else {
                return item;
            };
            let bounds = range
                .split_once('-')
                .and_then(|(a, b)| Some((a.parse::<u32>().ok()?, b.parse::<u32>().ok()?)));
            match bounds {
                // croniter wraps a backwards range and keeps stepping across the wrap:
                // hours `22-2/2` are 22, 0, 2. (Day of week 7 is Sunday, i.e. 0.)
                Some((from, to)) if from > to && from <= max + 1 && to >= min => {
                    let period = max - min + 1;
                    let length = (to + period - from) % period;
                    (0..=length)
                        .step_by(step as usize)
                        .map(|k| (min + (from - min + k) % period).to_string())
                        .collect::<Vec<_>>()
                        .join(",")
                }
                None if index == 4 && item.contains('/') && range.parse::<u32>().is_ok() => {
                    format!("{range}-{max}/{step}")
                }
                _ => item,
            }
        })
        .collect();
    items.join(",")
}

/// Parses a 5-field expression; an error names the field that is wrong.
fn parse_cron(written: &str, expression: &str) -> Result<CronExpression, String> {
    let fields: Vec<&str> = expression.split_whitespace().collect();
    if fields.len() != 5 {
        return Err(format!(
            "`{written}` has {} fields; a cron schedule has 5 (minute hour day-of-month month day-of-week)",
            fields.len()
        ));
    }
    // croner skips an empty list item (`1,,2`); croniter refuses it, and so does sluice.
    if let Some(index) = fields.iter().position(|f| f.split(',').any(str::is_empty)) {
        return Err(format!(
            "`{written}` is not a valid cron expression: {} field `{}`: an empty item in a list",
            FIELDS[index], fields[index]
        ));
    }
    let spelled: Vec<String> = fields
        .iter()
        .enumerate()
        .map(|(index, field)| croniter_spelling(index, field))
        .collect();
    let parser = parser();
    let cron = parser.parse(&spelled.join(" ")).map_err(|whole| {
        // croner's messages do not say which field failed: parse each field alone (the
        // others `*`) and blame the first that fails by itself.
        for (index, field) in fields.iter().enumerate() {
            let mut alone = ["*"; 5];
            alone[index] = &spelled[index];
            if let Err(e) = parser.parse(&alone.join(" ")) {
                return format!(
                    "`{written}` is not a valid cron expression: {} field `{field}`: {}; it takes {}",
                    FIELDS[index],
                    reason(&e),
                    ALLOWED[index]
                );
            }
        }
        format!(
            "`{written}` is not a valid cron expression: {}",
            reason(&whole)
        )
    })?;
    // Every hour matches if the hour field alone, on any day, matches all 24 hours.
    let hours = parser
        .parse(&format!("0 {} * * *", spelled[1]))
        .map_err(|e| format!("`{written}`: {}", reason(&e)))?;
    let day = NaiveDate::from_ymd_opt(2000, 1, 1).expect("a valid date");
    let every_hour = (0..24).all(|hour| {
        day.and_hms_opt(hour, 0, 0)
            .is_some_and(|t| hours.is_time_matching(&t).unwrap_or(false))
    });
    Ok(CronExpression { cron, every_hour })
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

/// Farther than any DST shift (at most 2 hours anywhere): a wall-clock time maps to an instant
/// within this of its naive reading, so searching this far around a time finds every fire
/// time a clock change could have moved across it.
const DST_MARGIN: ChronoDuration = ChronoDuration::hours(3);

impl CronExpression {
    // croner's own DST handling is not used: it skips a skipped hour's fire times for any
    // expression but a single fixed time (croniter and Airflow move them after the gap) and
    // classifies jobs by other rules than croniter's `*` hour. Fire times are found on the
    // naive wall clock and turned into instants here, by the rules in the module docs.

    /// The instants a wall-clock fire time stands for: one; none or the first instant after
    /// the gap when the clock skips it; one or both passes when the clock repeats it.
    fn instants(&self, tz: Tz, local: NaiveDateTime) -> Vec<DateTime<Utc>> {
        match tz.from_local_datetime(&local) {
            LocalResult::Single(t) => vec![t.with_timezone(&Utc)],
            LocalResult::Ambiguous(first, second) if self.every_hour => {
                vec![first.with_timezone(&Utc), second.with_timezone(&Utc)]
            }
            LocalResult::Ambiguous(first, _) => vec![first.with_timezone(&Utc)],
            LocalResult::None if self.every_hour => Vec::new(),
            // As croniter: the first whole minute after the time that exists.
            LocalResult::None => (1..=DST_MARGIN.num_minutes())
                .find_map(|m| {
                    tz.from_local_datetime(&(local + ChronoDuration::minutes(m)))
                        .earliest()
                })
                .map(|t| vec![t.with_timezone(&Utc)])
                .unwrap_or_default(),
        }
    }

    /// Whether the zone's offset is the same all around `t`: then wall clock and instants map
    /// one to one near `t`, and the next naive fire time is the next fire time.
    fn steady_around(tz: Tz, t: DateTime<Utc>) -> bool {
        let offset = |t: DateTime<Utc>| tz.offset_from_utc_datetime(&t.naive_utc()).fix();
        offset(t - DST_MARGIN) == offset(t) && offset(t) == offset(t + DST_MARGIN)
    }

    fn naive_after(&self, local: NaiveDateTime, inclusive: bool) -> Option<NaiveDateTime> {
        self.cron.find_next_occurrence(&local, inclusive).ok()
    }

    fn naive_before(&self, local: NaiveDateTime, inclusive: bool) -> Option<NaiveDateTime> {
        self.cron.find_previous_occurrence(&local, inclusive).ok()
    }

    fn fire_after(&self, tz: Tz, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = |t: DateTime<Utc>| t.with_timezone(&tz).naive_local();
        let steady = Self::steady_around(tz, t);
        // Near a clock change, fire times from a little before `t` on the wall clock may
        // land after it (moved past a gap, or a repeated hour's second pass).
        let mut naive = if steady {
            self.naive_after(local(t), false)?
        } else {
            self.naive_after(local(t - DST_MARGIN), true)?
        };
        let mut best: Option<DateTime<Utc>> = None;
        loop {
            if let Some(found) = best {
                if steady || naive > local(found) + DST_MARGIN {
                    return Some(found);
                }
            }
            for instant in self.instants(tz, naive) {
                if instant > t && best.is_none_or(|b| instant < b) {
                    best = Some(instant);
                }
            }
            naive = match self.naive_after(naive, false) {
                Some(next) => next,
                None => return best,
            };
        }
    }

    fn fire_at_or_before(&self, tz: Tz, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = |t: DateTime<Utc>| t.with_timezone(&tz).naive_local();
        let steady = Self::steady_around(tz, t);
        let mut naive = if steady {
            self.naive_before(local(t), true)?
        } else {
            self.naive_before(local(t + DST_MARGIN), true)?
        };
        let mut best: Option<DateTime<Utc>> = None;
        loop {
            if let Some(found) = best {
                if steady || naive < local(found) - DST_MARGIN {
                    return Some(found);
                }
            }
            for instant in self.instants(tz, naive) {
                if instant <= t && best.is_none_or(|b| instant > b) {
                    best = Some(instant);
                }
            }
            naive = match self.naive_before(naive, false) {
                Some(previous) => previous,
                None => return best,
            };
        }
    }
}

impl Schedule {
    /// The latest fire time at or before `t`.
    pub fn fire_at_or_before(&self, tz: Tz, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Schedule::Cron { cron, .. } => cron.fire_at_or_before(tz, t),
            _ => None,
        }
    }

    /// The first fire time strictly after `t`.
    pub fn fire_after(&self, tz: Tz, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Schedule::Cron { cron, .. } => cron.fire_after(tz, t),
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
            out_of_range
                .starts_with("`61 * * * *` is not a valid cron expression: minute field `61`"),
            "{out_of_range}"
        );
        assert!(!out_of_range.contains('\n'), "{out_of_range}");
        assert!("@fortnightly"
            .parse::<Schedule>()
            .unwrap_err()
            .contains("unknown preset"));
        let weekday = "0 0 * * 9".parse::<Schedule>().unwrap_err();
        assert!(weekday.contains("day-of-week field `9`"), "{weekday}");
        let six = "0 0 0 * * *".parse::<Schedule>().unwrap_err();
        assert!(six.contains("has 6 fields"), "{six}");
        let empty = "1,,2 * * * *".parse::<Schedule>().unwrap_err();
        assert!(empty.contains("minute field `1,,2`"), "{empty}");
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

    fn fires(expr: &str, tz: Tz, after: &str, n: usize) -> Vec<String> {
        let schedule: Schedule = expr.parse().unwrap();
        schedule
            .next_fire_times(tz, utc(after), n)
            .iter()
            .map(|t| {
                t.with_timezone(&tz)
                    .format("%a %Y-%m-%d %H:%M %Z")
                    .to_string()
            })
            .collect()
    }

    #[test]
    fn day_of_month_or_day_of_week_when_both_are_restricted() {
        // Every 1st AND every Monday, as Vixie cron, POSIX and croniter read it.
        assert_eq!(
            fires("0 0 1 * 1", Tz::UTC, "2026-05-20T00:00:00Z", 5),
            [
                "Mon 2026-05-25 00:00 UTC",
                "Mon 2026-06-01 00:00 UTC",
                "Mon 2026-06-08 00:00 UTC",
                "Mon 2026-06-15 00:00 UTC",
                "Mon 2026-06-22 00:00 UTC",
            ]
        );
        assert_eq!(
            fires("0 0 1 * 1", Tz::UTC, "2026-06-22T00:00:00Z", 3),
            [
                "Mon 2026-06-29 00:00 UTC",
                "Wed 2026-07-01 00:00 UTC",
                "Mon 2026-07-06 00:00 UTC",
            ]
        );
        // Friday the 13th is a Friday OR a 13th.
        assert_eq!(
            fires("0 9 13 * FRI", Tz::UTC, "2026-02-01T00:00:00Z", 4),
            [
                "Fri 2026-02-06 09:00 UTC",
                "Fri 2026-02-13 09:00 UTC",
                "Fri 2026-02-20 09:00 UTC",
                "Fri 2026-02-27 09:00 UTC",
            ]
        );
        // A `*` in one day field leaves the other alone in charge (no OR with "every day").
        assert_eq!(
            fires("0 0 * * 1", Tz::UTC, "2026-06-01T00:00:00Z", 2),
            ["Mon 2026-06-08 00:00 UTC", "Mon 2026-06-15 00:00 UTC"]
        );
        assert_eq!(
            fires("0 0 15 * ?", Tz::UTC, "2026-06-01T00:00:00Z", 2),
            ["Mon 2026-06-15 00:00 UTC", "Wed 2026-07-15 00:00 UTC"]
        );
        // croner's `+` asks for the old AND reading explicitly: a Monday that is the 1st.
        assert_eq!(
            fires("0 0 1 * +1", Tz::UTC, "2026-01-01T00:00:00Z", 2),
            ["Mon 2026-06-01 00:00 UTC", "Mon 2027-02-01 00:00 UTC"]
        );
    }

    #[test]
    fn croniter_spellings_mean_what_they_mean_to_airflow() {
        // Last Friday, croniter's `L5`; nth weekday; nearest weekday; last day.
        assert_eq!(
            fires("0 0 * * L5", Tz::UTC, "2026-01-01T00:00:00Z", 2),
            ["Fri 2026-01-30 00:00 UTC", "Fri 2026-02-27 00:00 UTC"]
        );
        assert_eq!(
            fires("0 0 * * 2#2", Tz::UTC, "2026-01-01T00:00:00Z", 2),
            ["Tue 2026-01-13 00:00 UTC", "Tue 2026-02-10 00:00 UTC"]
        );
        // 2026-02-15 is a Sunday: the nearest weekday is Monday the 16th.
        assert_eq!(
            fires("0 0 15W 2 *", Tz::UTC, "2026-01-01T00:00:00Z", 1),
            ["Mon 2026-02-16 00:00 UTC"]
        );
        assert_eq!(
            fires("0 0 L 2 *", Tz::UTC, "2027-06-01T00:00:00Z", 2),
            ["Tue 2028-02-29 00:00 UTC", "Wed 2029-02-28 00:00 UTC"]
        );
        // Backwards ranges wrap; `d/n` days stop at Saturday.
        assert_eq!(
            fires("0 22-1 * * *", Tz::UTC, "2026-01-01T12:00:00Z", 5),
            [
                "Thu 2026-01-01 22:00 UTC",
                "Thu 2026-01-01 23:00 UTC",
                "Fri 2026-01-02 00:00 UTC",
                "Fri 2026-01-02 01:00 UTC",
                "Fri 2026-01-02 22:00 UTC",
            ]
        );
        assert_eq!(
            fires("0 0 * * FRI-MON", Tz::UTC, "2026-01-01T12:00:00Z", 5),
            [
                "Fri 2026-01-02 00:00 UTC",
                "Sat 2026-01-03 00:00 UTC",
                "Sun 2026-01-04 00:00 UTC",
                "Mon 2026-01-05 00:00 UTC",
                "Fri 2026-01-09 00:00 UTC",
            ]
        );
        assert_eq!(
            fires("0 0 * * 6/1", Tz::UTC, "2026-01-01T12:00:00Z", 2),
            ["Sat 2026-01-03 00:00 UTC", "Sat 2026-01-10 00:00 UTC"]
        );
    }

    #[test]
    fn next_fire_times_lists_the_next_n_strictly_after() {
        let s: Schedule = "*/15 * * * *".parse().unwrap();
        let times = s.next_fire_times(Tz::UTC, utc("2026-03-01T10:15:00Z"), 3);
        assert_eq!(
            times,
            [
                utc("2026-03-01T10:30:00Z"),
                utc("2026-03-01T10:45:00Z"),
                utc("2026-03-01T11:00:00Z")
            ]
        );
        assert!(s
            .next_fire_times(Tz::UTC, utc("2026-03-01T10:15:00Z"), 0)
            .is_empty());
        assert!(Schedule::Manual
            .next_fire_times(Tz::UTC, utc("2026-03-01T10:15:00Z"), 3)
            .is_empty());
        assert!(Schedule::Once
            .next_fire_times(Tz::UTC, utc("2026-03-01T10:15:00Z"), 3)
            .is_empty());
        // An expression that never fires gives no times rather than searching forever.
        let never: Schedule = "0 0 30 2 *".parse().unwrap();
        assert!(never
            .next_fire_times(Tz::UTC, utc("2026-03-01T10:15:00Z"), 3)
            .is_empty());
    }

    #[test]
    fn a_skipped_hour_fires_once_after_the_gap_unless_every_hour_fires() {
        let berlin = chrono_tz::Europe::Berlin;
        // 2026-03-29: 02:00 CET becomes 03:00 CEST.
        assert_eq!(
            fires("30 2 * * *", berlin, "2026-03-28T12:00:00Z", 2),
            ["Sun 2026-03-29 03:00 CEST", "Mon 2026-03-30 02:30 CEST"]
        );
        // Both skipped times fire once, at 03:00.
        assert_eq!(
            fires("0,30 2 * * *", berlin, "2026-03-28T12:00:00Z", 3),
            [
                "Sun 2026-03-29 03:00 CEST",
                "Mon 2026-03-30 02:00 CEST",
                "Mon 2026-03-30 02:30 CEST",
            ]
        );
        assert_eq!(
            fires("15 * * * *", berlin, "2026-03-28T23:30:00Z", 3),
            [
                "Sun 2026-03-29 01:15 CET",
                "Sun 2026-03-29 03:15 CEST",
                "Sun 2026-03-29 04:15 CEST",
            ]
        );
    }

    #[test]
    fn a_repeated_hour_fires_fixed_times_once_and_every_hour_in_both_passes() {
        let berlin = chrono_tz::Europe::Berlin;
        // 2026-10-25: 03:00 CEST becomes 02:00 CET; 02:30 happens twice.
        assert_eq!(
            fires("30 2 * * *", berlin, "2026-10-24T12:00:00Z", 2),
            ["Sun 2026-10-25 02:30 CEST", "Mon 2026-10-26 02:30 CET"]
        );
        assert_eq!(
            fires("30 * * * *", berlin, "2026-10-24T23:00:00Z", 3),
            [
                "Sun 2026-10-25 01:30 CEST",
                "Sun 2026-10-25 02:30 CEST",
                "Sun 2026-10-25 02:30 CET",
            ]
        );
        // The data intervals of a daily DAG that day: one run, 25 hours long.
        let daily: Schedule = "30 2 * * *".parse().unwrap();
        let hours: Vec<i64> = daily
            .intervals_from(berlin, utc("2026-10-24T00:00:00Z"))
            .take(3)
            .map(|i| (i.end - i.start).num_hours())
            .collect();
        assert_eq!(hours, [24, 25, 24]);
        // Stepping back agrees with stepping forward, in both passes.
        let hourly: Schedule = "30 * * * *".parse().unwrap();
        assert_eq!(
            hourly.fire_at_or_before(berlin, utc("2026-10-25T01:29:00Z")),
            Some(utc("2026-10-25T00:30:00Z"))
        );
        assert_eq!(
            hourly.fire_at_or_before(berlin, utc("2026-10-25T01:45:00Z")),
            Some(utc("2026-10-25T01:30:00Z"))
        );
        assert_eq!(
            daily.fire_at_or_before(berlin, utc("2026-10-25T01:45:00Z")),
            Some(utc("2026-10-25T00:30:00Z"))
        );
    }
}
