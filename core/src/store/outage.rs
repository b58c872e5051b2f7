//! Store outages are waited out: a PostgreSQL restart, a connection killed by an
//! administrator or a failover, or a long SQLite lock must not fail running tries or count
//! as their crash. Writes that meet a transient error are retried with backoff until the
//! outage deadline (`SLUICE_STORE_OUTAGE_DEADLINE`); only past it does the caller give up.

use std::future::Future;
use std::time::Duration;

use super::StoreError;

/// The first wait after a failed attempt; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
/// The longest wait between attempts: a store that is back is noticed within this.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

impl StoreError {
    /// Whether the error says the store is unreachable or busy for now (the same request may
    /// succeed later), not that the request is wrong or lost a compare-and-set.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Unavailable { .. } => true,
            StoreError::Query { source, .. } | StoreError::Open { cause: source, .. } => {
                transient_driver_error(source)
            }
            _ => false,
        }
    }
}

fn transient_driver_error(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::PoolTimedOut => true,
        // A connection that ended mid-answer reads as a protocol error.
        sqlx::Error::Protocol(message) => {
            let message = message.to_ascii_lowercase();
            message.contains("unexpected eof") || message.contains("connection")
        }
        sqlx::Error::Database(db) => match db.code() {
            Some(code) => transient_code(&code),
            None => {
                let message = db.message().to_ascii_lowercase();
                message.contains("database is locked") || message.contains("terminating connection")
            }
        },
        _ => false,
    }
}

/// PostgreSQL SQLSTATEs and SQLite result codes that mean "not now".
fn transient_code(code: &str) -> bool {
    // PostgreSQL: connection exceptions (08…), shutdown and restart (57P01 admin_shutdown,
    // 57P02 crash_shutdown, 57P03 cannot_connect_now), too many connections, serialization
    // failures and deadlocks (a retry wins).
    // (08P01 is a protocol violation: a bug, not an outage.)
    (code.starts_with("08") && code != "08P01")
        || matches!(code, "57P01" | "57P02" | "57P03" | "53300" | "40001" | "40P01")
        // SQLite: BUSY (5) and its extended codes, LOCKED (6), IOERR (10), FULL (13).
        || matches!(code, "5" | "6" | "10" | "13" | "261" | "517" | "773")
}

/// Runs `op` until it succeeds, fails with an error that is not transient, or the store has
/// not answered for `deadline`; `what` names the operation in the log. The first failure is
/// logged as a warning, the recovery as information.
pub async fn ride_out<T, F, Fut>(deadline: Duration, what: &str, mut op: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, StoreError>>,
{
    let started = tokio::time::Instant::now();
    let mut backoff = FIRST_BACKOFF;
    let mut failures = 0u32;
    loop {
        match op().await {
            Ok(value) => {
                if failures > 0 {
                    tracing::info!(
                        what,
                        waited_ms = started.elapsed().as_millis() as u64,
                        failures,
                        "the metadata store answers again"
                    );
                }
                return Ok(value);
            }
            Err(error) if error.is_transient() && started.elapsed() < deadline => {
                if failures == 0 {
                    tracing::warn!(what, %error, deadline_s = deadline.as_secs(), "the metadata store does not answer; waiting it out (running tries go on)");
                }
                failures += 1;
                let left = deadline.saturating_sub(started.elapsed());
                tokio::time::sleep(backoff.min(left)).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            Err(error) => {
                if error.is_transient() {
                    tracing::error!(what, %error, waited_s = started.elapsed().as_secs(), "the metadata store did not come back within the outage deadline");
                }
                return Err(error);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(source: sqlx::Error) -> StoreError {
        StoreError::Query { what: "t", source }
    }

    #[test]
    fn unreachable_and_busy_are_transient_wrong_requests_are_not() {
        assert!(query(sqlx::Error::Io(std::io::Error::from(
            std::io::ErrorKind::ConnectionReset
        )))
        .is_transient());
        assert!(query(sqlx::Error::PoolTimedOut).is_transient());
        assert!(StoreError::Unavailable {
            what: "t",
            message: "m".into()
        }
        .is_transient());
        assert!(!query(sqlx::Error::RowNotFound).is_transient());
        assert!(!StoreError::NotFound("x".into()).is_transient());
        assert!(!StoreError::Conflict {
            what: "x".into(),
            expected: "a".into(),
            found: "b".into()
        }
        .is_transient());
        for code in ["08006", "57P01", "57P03", "40001", "5", "517"] {
            assert!(transient_code(code), "{code}");
        }
        for code in ["23505", "42P01", "08P01", "19", "1"] {
            assert!(!transient_code(code), "{code}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_transient_error_is_retried_until_the_deadline_then_returned() {
        let mut calls = 0;
        let recovered = ride_out(Duration::from_secs(60), "t", || {
            calls += 1;
            let n = calls;
            async move {
                if n < 4 {
                    Err(query(sqlx::Error::PoolTimedOut))
                } else {
                    Ok(n)
                }
            }
        })
        .await;
        assert_eq!(recovered.unwrap(), 4);

        let started = tokio::time::Instant::now();
        let gave_up: Result<(), _> = ride_out(Duration::from_secs(10), "t", || async {
            Err(query(sqlx::Error::PoolTimedOut))
        })
        .await;
        assert!(gave_up.unwrap_err().is_transient());
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_secs(10) && waited < Duration::from_secs(13),
            "{waited:?}"
        );

        let mut calls = 0;
        let wrong: Result<(), _> = ride_out(Duration::from_secs(10), "t", || {
            calls += 1;
            async { Err(StoreError::NotFound("x".into())) }
        })
        .await;
        assert!(wrong.is_err());
        assert_eq!(calls, 1, "an error that is not transient is not retried");
    }
}
