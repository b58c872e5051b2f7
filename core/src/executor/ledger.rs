//! The delivery ledger of one try, kept in the metadata store: the operator API's
//! [`DeliveryLedger`] over [`RunStore`], for one (run, attempt, task).

use std::collections::HashSet;
use std::sync::Arc;

use async_trait::async_trait;
use sluice_operator_api::{DeliveryLedger, DeliveryOutcome, OperatorError};

use crate::store::outage::ride_out;
use crate::store::{Store, TaskKey};

/// The ledger of one task in one attempt of a run.
#[derive(Debug)]
pub(super) struct StoreLedger {
    pub store: Arc<dyn Store>,
    pub key: TaskKey,
    pub attempt: u32,
    /// How long a store that does not answer is waited out before the try fails (retryably).
    pub outage_deadline: std::time::Duration,
}

/// A store that did not answer within the outage deadline fails the try; a retry may find it back.
fn unavailable(what: &str, e: crate::store::StoreError) -> OperatorError {
    OperatorError::retryable(format!("delivery ledger: cannot {what}: {e}"))
}

#[async_trait]
impl DeliveryLedger for StoreLedger {
    async fn delivered(&self) -> Result<HashSet<String>, OperatorError> {
        ride_out(self.outage_deadline, "read the delivery ledger", || {
            self.store.delivered_items(&self.key, self.attempt)
        })
        .await
        .map_err(|e| unavailable("read what was delivered", e))
    }

    async fn record(&self, outcomes: &[DeliveryOutcome]) -> Result<(), OperatorError> {
        if outcomes.is_empty() {
            return Ok(());
        }
        let at = chrono::Utc::now();
        // Recording the same outcomes twice (a write that landed before its connection broke)
        // is an upsert of the same rows.
        ride_out(self.outage_deadline, "record deliveries", || {
            self.store
                .record_deliveries(&self.key, self.attempt, outcomes, at)
        })
        .await
        .map_err(|e| unavailable("record deliveries", e))?;
        for outcome in outcomes {
            crate::metrics::metrics()
                .deliveries
                .get_or_create(&crate::metrics::DeliveryLabels {
                    dag_id: self.key.dag_id.clone(),
                    task_id: self.key.task_id.clone(),
                    outcome: if outcome.delivered {
                        "delivered"
                    } else {
                        "failed"
                    }
                    .into(),
                })
                .inc();
        }
        Ok(())
    }
}
