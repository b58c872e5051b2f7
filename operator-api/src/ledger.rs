//! The delivery ledger: where an operator that delivers items one by one (a webhook per user)
//! records each item's outcome, so that a retry of the task sends only what this attempt of
//! the run has not delivered yet, while a new attempt of the run sends everything again.
//!
//! The core keeps the ledger in the metadata store, per (run, attempt, task, item). Outcomes
//! are recorded after the fact: an item in flight when the process dies is sent again by the
//! next try (at least once, never silently lost), with the same idempotency key.

use std::collections::HashSet;

use async_trait::async_trait;

use crate::OperatorError;

/// How one item's delivery ended in a try.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryOutcome {
    /// The item's key (its value as text, `-` for a single request).
    pub item: String,
    /// Whether the receiver took it.
    pub delivered: bool,
    /// Requests this try made for it.
    pub attempts: u32,
    /// The last status or error, for a failed item.
    pub detail: Option<String>,
}

/// Where a try's deliveries are recorded.
#[async_trait]
pub trait DeliveryLedger: Send + Sync + std::fmt::Debug {
    /// The items this attempt of the task has delivered already, in earlier tries.
    async fn delivered(&self) -> Result<HashSet<String>, OperatorError>;
    /// Records outcomes (a later outcome of the same item replaces an earlier one).
    async fn record(&self, outcomes: &[DeliveryOutcome]) -> Result<(), OperatorError>;
}

/// A ledger that remembers nothing: every try delivers everything (unit tests, one-off use).
#[derive(Debug, Default)]
pub struct NoLedger;

#[async_trait]
impl DeliveryLedger for NoLedger {
    async fn delivered(&self) -> Result<HashSet<String>, OperatorError> {
        Ok(HashSet::new())
    }

    async fn record(&self, _outcomes: &[DeliveryOutcome]) -> Result<(), OperatorError> {
        Ok(())
    }
}
