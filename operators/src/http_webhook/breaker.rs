//! A circuit breaker per connection: after `threshold` consecutive transient failures
//! (refused, timed out, 5xx, 408, 429) it opens, and requests fail fast instead of each using
//! up its own attempts against a receiver that is down. After `cooldown` one request goes
//! through as a probe: its success closes the breaker, its failure opens it again.
//!
//! The state machine is pure (it takes `now`); [`for_connection`] keeps one breaker per
//! connection for the whole process, so a task's retry after its delay probes the receiver
//! once instead of starting a new storm.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Where a breaker stands.
#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Requests go through; `failures` consecutive transient failures so far.
    Closed { failures: u32 },
    /// Requests fail fast until `until`.
    Open { until: Instant },
    /// One probe is in flight; everything else fails fast until it reports.
    Probing,
}

/// Why a request was not sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// Consecutive failures that opened the breaker.
    pub failures: u32,
    /// The last failure seen.
    pub last_error: String,
    /// How long until the next probe (zero while one is in flight).
    pub retry_in: Duration,
}

/// One connection's breaker.
#[derive(Debug)]
pub struct Breaker {
    threshold: u32,
    cooldown: Duration,
    state: State,
    opened_after: u32,
    last_error: String,
}

impl Breaker {
    /// A closed breaker that opens after `threshold` consecutive failures (0: never).
    pub fn new(threshold: u32, cooldown: Duration) -> Self {
        Self {
            threshold,
            cooldown,
            state: State::Closed { failures: 0 },
            opened_after: 0,
            last_error: String::new(),
        }
    }

    /// Whether a request may be sent at `now`.
    pub fn admit(&mut self, now: Instant) -> Result<(), Refused> {
        match self.state {
            State::Closed { .. } => Ok(()),
            State::Open { until } if now >= until => {
                self.state = State::Probing;
                Ok(())
            }
            State::Open { until } => Err(self.refused(until - now)),
            State::Probing => Err(self.refused(Duration::ZERO)),
        }
    }

    fn refused(&self, retry_in: Duration) -> Refused {
        Refused {
            failures: self.opened_after,
            last_error: self.last_error.clone(),
            retry_in,
        }
    }

    /// The receiver answered (any answer that is not a transient failure, a 4xx included).
    pub fn succeeded(&mut self) {
        self.state = State::Closed { failures: 0 };
    }

    /// A transient failure at `now`; true if it opened the breaker.
    pub fn failed(&mut self, now: Instant, error: &str) -> bool {
        self.last_error = error.to_string();
        let failures = match self.state {
            State::Closed { failures } => failures + 1,
            // A failed probe, or a request admitted before the breaker opened: stay open.
            State::Probing | State::Open { .. } => self.threshold.max(1),
        };
        let opens = self.threshold > 0 && failures >= self.threshold;
        let was_open = matches!(self.state, State::Open { .. });
        self.state = if opens {
            State::Open {
                until: now + self.cooldown,
            }
        } else {
            State::Closed { failures }
        };
        if opens && !was_open {
            self.opened_after = failures;
            true
        } else {
            false
        }
    }
}

fn breakers() -> &'static Mutex<HashMap<String, Arc<Mutex<Breaker>>>> {
    static BREAKERS: OnceLock<Mutex<HashMap<String, Arc<Mutex<Breaker>>>>> = OnceLock::new();
    BREAKERS.get_or_init(Default::default)
}

/// The process's breaker for a connection (keyed by its id and URI), created with these
/// settings the first time it is asked for.
pub fn for_connection(key: &str, threshold: u32, cooldown: Duration) -> Arc<Mutex<Breaker>> {
    let mut breakers = breakers().lock().unwrap_or_else(|p| p.into_inner());
    breakers
        .entry(key.to_string())
        .or_insert_with(|| Arc::new(Mutex::new(Breaker::new(threshold, cooldown))))
        .clone()
}

/// The breakers' states as Prometheus text (`sluice_webhook_breaker_open{conn}`: 1 while open
/// or probing), labelled by connection id only: a webhook's URI may hold a secret.
pub fn encode_metrics(out: &mut String) {
    use std::fmt::Write as _;
    let breakers = breakers().lock().unwrap_or_else(|p| p.into_inner());
    if breakers.is_empty() {
        return;
    }
    let mut open: std::collections::BTreeMap<String, u8> = Default::default();
    for (key, breaker) in breakers.iter() {
        let conn = key.split('=').next().unwrap_or_default().to_string();
        let state = breaker
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .state
            .clone();
        let is_open = u8::from(!matches!(state, State::Closed { .. }));
        let entry = open.entry(conn).or_default();
        *entry = (*entry).max(is_open);
    }
    let _ = writeln!(out, "# HELP sluice_webhook_breaker_open 1 while a connection's circuit breaker is open (requests fail fast) or probing.\n# TYPE sluice_webhook_breaker_open gauge");
    for (conn, is_open) in open {
        let conn = conn.replace('\\', "\\\\").replace('"', "\\\"");
        let _ = writeln!(
            out,
            "sluice_webhook_breaker_open{{conn=\"{conn}\"}} {is_open}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_consecutive_failures_and_probes_after_the_cooldown() {
        let t0 = Instant::now();
        let mut b = Breaker::new(3, Duration::from_secs(5));
        assert!(!b.failed(t0, "cannot connect"));
        b.succeeded();
        assert!(!b.failed(t0, "cannot connect"));
        assert!(!b.failed(t0, "cannot connect"));
        assert!(b.admit(t0).is_ok(), "two in a row: still closed");
        assert!(b.failed(t0, "HTTP 503"), "the third opens it");
        let refused = b.admit(t0 + Duration::from_secs(1)).unwrap_err();
        assert_eq!(
            refused,
            Refused {
                failures: 3,
                last_error: "HTTP 503".into(),
                retry_in: Duration::from_secs(4)
            }
        );
        // After the cool-down one probe goes; the rest wait for it.
        let later = t0 + Duration::from_secs(5);
        assert!(b.admit(later).is_ok());
        assert!(b.admit(later).is_err(), "one probe at a time");
        assert!(
            b.failed(later, "cannot connect"),
            "a failed probe opens it again"
        );
        assert!(b.admit(later + Duration::from_secs(1)).is_err());
        let again = later + Duration::from_secs(5);
        assert!(b.admit(again).is_ok());
        b.succeeded();
        assert!(b.admit(again).is_ok() && b.admit(again).is_ok(), "closed");
    }

    #[test]
    fn a_zero_threshold_never_opens() {
        let t0 = Instant::now();
        let mut b = Breaker::new(0, Duration::from_secs(5));
        for _ in 0..100 {
            assert!(!b.failed(t0, "x"));
        }
        assert!(b.admit(t0).is_ok());
    }

    #[test]
    fn an_open_breaker_shows_in_the_metrics_by_connection_id_only() {
        let breaker = for_connection(
            "alerts_hook=https://hooks.example.com/T0/secret-path",
            1,
            Duration::from_secs(60),
        );
        breaker.lock().unwrap().failed(Instant::now(), "503");
        let mut out = String::new();
        encode_metrics(&mut out);
        assert!(
            out.contains("sluice_webhook_breaker_open{conn=\"alerts_hook\"} 1"),
            "{out}"
        );
        assert!(!out.contains("secret-path"), "{out}");
    }
}
