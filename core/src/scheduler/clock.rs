//! The scheduler's clock, behind an interface so tests move time instead of sleeping.

use std::sync::Mutex;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::sync::watch;

/// Where the scheduler reads the time and waits for it.
#[async_trait]
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// The current instant.
    fn now(&self) -> DateTime<Utc>;
    /// Returns once `now() >= deadline`.
    async fn sleep_until(&self, deadline: DateTime<Utc>);
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

#[async_trait]
impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }

    async fn sleep_until(&self, deadline: DateTime<Utc>) {
        if let Ok(wait) = (deadline - Utc::now()).to_std() {
            tokio::time::sleep(wait).await;
        }
    }
}

/// A clock that only moves when told to (tests).
#[derive(Debug)]
pub struct ManualClock {
    now: Mutex<DateTime<Utc>>,
    changed: watch::Sender<DateTime<Utc>>,
}

impl ManualClock {
    /// A clock stopped at `start`.
    pub fn new(start: DateTime<Utc>) -> Self {
        let (changed, _) = watch::channel(start);
        Self {
            now: Mutex::new(start),
            changed,
        }
    }

    /// Moves the clock to `t` (never backwards) and wakes sleepers whose deadline passed.
    pub fn set(&self, t: DateTime<Utc>) {
        let mut now = self.now.lock().unwrap_or_else(|p| p.into_inner());
        if t > *now {
            *now = t;
            self.changed.send_replace(t);
        }
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: chrono::Duration) {
        let next = self.now() + by;
        self.set(next);
    }
}

#[async_trait]
impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.now.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn sleep_until(&self, deadline: DateTime<Utc>) {
        let mut changes = self.changed.subscribe();
        while self.now() < deadline {
            if changes.changed().await.is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use std::sync::Arc;

    #[tokio::test]
    async fn a_manual_clock_wakes_sleepers_only_when_moved_past_their_deadline() {
        let start = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let clock = Arc::new(ManualClock::new(start));
        let sleeper = {
            let clock = clock.clone();
            tokio::spawn(async move {
                clock
                    .sleep_until(start + chrono::Duration::minutes(15))
                    .await
            })
        };
        tokio::task::yield_now().await;
        clock.advance(chrono::Duration::minutes(10));
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!sleeper.is_finished());
        clock.advance(chrono::Duration::minutes(5));
        tokio::time::timeout(std::time::Duration::from_secs(1), sleeper)
            .await
            .unwrap()
            .unwrap();
    }
}
