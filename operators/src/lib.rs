//! What a sluice task does. This crate holds the [`Operator`] trait, the [`TaskContext`] a
//! try runs with, [`TaskOutput`] and artifacts, connections, templating, the explicit
//! [`Registry`] of operator kinds and the built-in operators.
//!
//! It knows nothing of schedulers, executors or the metadata store: those live in the
//! `sluice` crate and call in through [`Registry`] and [`Operator::execute`].

pub mod artifact;
pub mod connection;
pub mod context;
pub mod duration;
pub mod error;
pub mod registry;
pub mod template;

pub mod noop;
pub mod shell;
pub mod sleep;

#[cfg(feature = "etl")]
pub mod clickhouse_http;
#[cfg(feature = "etl")]
pub mod clickhouse_load;
#[cfg(feature = "etl")]
pub mod frame;
#[cfg(feature = "etl")]
pub mod http_webhook;
#[cfg(feature = "etl")]
pub mod pg_binary;
#[cfg(feature = "etl")]
pub mod polars_sql;
#[cfg(feature = "etl")]
pub mod postgres_extract;
#[cfg(feature = "etl")]
pub mod rowbinary;

use async_trait::async_trait;

pub use artifact::{ArtifactKey, ArtifactRef, ArtifactStore, LocalArtifactStore};
pub use connection::{Connection, Connections};
pub use context::{LogStream, TaskContext, TaskLog, TaskOutput};
pub use duration::HumanDuration;
pub use error::{ConfigError, FailureKind, OperatorError};
pub use registry::{OperatorConfig, OperatorKind, Registry};
pub use template::TemplateVars;

/// A built, checked task action. Built once per DAG parse; `execute` runs once per try.
#[async_trait]
pub trait Operator: Send + Sync + std::fmt::Debug {
    /// Runs one try. Must return promptly after `ctx.cancel` fires; CPU-heavy work belongs on
    /// a blocking thread, not the async workers.
    async fn execute(&self, ctx: &TaskContext) -> Result<TaskOutput, OperatorError>;
}
