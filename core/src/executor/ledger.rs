//! The delivery ledger of one try, kept in the metadata store: the operator API's
//! [`DeliveryLedger`] over [`RunStore`], for one (run, attempt, task).

use std::collections::HashSet;
use std::sync::Arc;

use async_trait::async_trait;
use sluice_operator_api::{DeliveryLedger, DeliveryOutcome, OperatorError};

use crate::store::{Store, TaskKey};

/// The ledger of one task in one attempt of a run.
#[derive(Debug)]
pub(super) struct StoreLedger {
    pub store: Arc<dyn Store>,
    pub key: TaskKey,
    pub attempt: u32,
}

/// A store that does not answer fails the try; a retry may find it back.
fn unavailable(what: &str, e: crate::store::StoreError) -> OperatorError {
    OperatorError::retryable(format!("delivery ledger: cannot {what}: {e}"))
}

#[async_trait]
impl DeliveryLedger for StoreLedger {
    async fn delivered(&self) -> Result<HashSet<String>, OperatorError> {
        self.store
            .delivered_items(&self.key, self.attempt)
            .await
            .map_err(|e| unavailable("read what was delivered", e))
    }

    async fn record(&self, outcomes: &[DeliveryOutcome]) -> Result<(), OperatorError> {
        if outcomes.is_empty() {
            return Ok(());
        }
        self.store
            .record_deliveries(&self.key, self.attempt, outcomes, chrono::Utc::now())
            .await
            .map_err(|e| unavailable("record deliveries", e))
    }
}
