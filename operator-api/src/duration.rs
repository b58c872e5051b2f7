//! Durations as people write them in DAG files: `30s`, `10m`, `1h 30m`, or a number of seconds.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

/// A duration written as `30s`, `10m`, `1h 30m`, or a number of seconds; at most
/// [`HumanDuration::MAX`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    /// The longest duration a DAG file may give (366 days): longer ones are mistakes, and
    /// keeping every timeout and delay this short keeps date arithmetic far from overflow.
    pub const MAX: Duration = Duration::from_secs(366 * 86_400);

    fn bounded<E: de::Error>(d: Duration, written: &dyn fmt::Display) -> Result<Self, E> {
        if d > Self::MAX {
            return Err(E::custom(format!(
                "`{written}` is longer than the longest allowed duration, 366 days"
            )));
        }
        Ok(HumanDuration(d))
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = HumanDuration;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration such as `30s`, `10m` or a number of seconds")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<HumanDuration, E> {
                HumanDuration::bounded(Duration::from_secs(v), &v)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<HumanDuration, E> {
                let secs = u64::try_from(v)
                    .map_err(|_| E::custom(format!("a duration cannot be negative ({v})")))?;
                HumanDuration::bounded(Duration::from_secs(secs), &v)
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<HumanDuration, E> {
                if v.is_nan() || v < 0.0 {
                    return Err(E::custom(format!("a duration cannot be negative ({v})")));
                }
                let d = Duration::try_from_secs_f64(v).unwrap_or(Duration::MAX);
                HumanDuration::bounded(d, &v)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<HumanDuration, E> {
                if let Ok(secs) = v.trim().parse::<u64>() {
                    return HumanDuration::bounded(Duration::from_secs(secs), &v);
                }
                let d = humantime::parse_duration(v).map_err(|e| {
                    E::custom(format!(
                        "`{v}` is not a duration ({e}); write e.g. `30s`, `10m`, `1h`"
                    ))
                })?;
                HumanDuration::bounded(d, &v)
            }
        }
        deserializer.deserialize_any(V)
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_and_numbers_parse() {
        let parse = |v: serde_json::Value| serde_json::from_value::<HumanDuration>(v).map(|d| d.0);
        assert_eq!(
            parse(serde_json::json!("1m 30s")).unwrap(),
            Duration::from_secs(90)
        );
        assert_eq!(parse(serde_json::json!(5)).unwrap(), Duration::from_secs(5));
        assert_eq!(
            parse(serde_json::json!("5")).unwrap(),
            Duration::from_secs(5)
        );
        assert_eq!(
            parse(serde_json::json!(0.25)).unwrap(),
            Duration::from_millis(250)
        );
        for huge in [
            serde_json::json!("99999999999999h"),
            serde_json::json!("367days"),
            serde_json::json!(1e300),
            serde_json::json!(u64::MAX),
        ] {
            let e = parse(huge.clone()).unwrap_err().to_string();
            assert!(e.contains("longest allowed duration"), "{huge}: {e}");
        }
        assert_eq!(
            parse(serde_json::json!("366days")).unwrap(),
            HumanDuration::MAX
        );
        assert!(parse(serde_json::json!(-3))
            .unwrap_err()
            .to_string()
            .contains("cannot be negative"));
        assert!(parse(serde_json::json!("5 parsecs"))
            .unwrap_err()
            .to_string()
            .contains("`5 parsecs` is not a duration"));
    }
}
