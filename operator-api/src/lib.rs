//! The sluice operator API: what an operator is and what it sees. This crate holds the
//! [`Operator`] trait, the [`OperatorConfig`] an operator is built from, the [`TaskContext`] a
//! try runs with, the typed [`TaskOutput`] it returns, artifacts, connections, templating,
//! durations and the [`Registry`] of operator kinds.
//!
//! It knows nothing of schedulers, executors, the metadata store or any particular
//! operator: the built-in operators live in `sluice-operators`, the scheduler in
//! `sluice-core`, and a program registers the operators it wants (built-in or its own) in
//! one [`Registry`] that it hands to the core.

pub mod artifact;
pub mod connection;
pub mod context;
pub mod duration;
pub mod error;
pub mod ledger;
pub mod processes;
pub mod registry;
pub mod secrets;
pub mod template;

use async_trait::async_trait;

pub use artifact::{is_earlier_try, ArtifactKey, ArtifactRef, ArtifactStore, LocalArtifactStore};
pub use connection::{Connection, Connections};
pub use context::{LogStream, TaskContext, TaskLog, TaskOutput};
pub use duration::HumanDuration;
pub use error::{ConfigError, FailureKind, OperatorError};
pub use ledger::{DeliveryLedger, DeliveryOutcome, NoLedger};
pub use processes::{NoProcesses, ProcessRegistry};
pub use registry::{Built, ConfigFile, OperatorConfig, OperatorKind, Registry};
pub use secrets::Masker;
pub use template::TemplateVars;

/// A built, checked task action. Built once per DAG parse; `execute` runs once per try.
#[async_trait]
pub trait Operator: Send + Sync + std::fmt::Debug {
    /// Runs one try. Must return promptly after `ctx.cancel` fires; CPU-heavy work belongs on
    /// a blocking thread, not the async workers.
    async fn execute(&self, ctx: &TaskContext) -> Result<TaskOutput, OperatorError>;
}
