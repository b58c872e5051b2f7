//! Errors at the operator boundary: a config that does not build, and a try that fails.
//!
//! A failed try says whether retrying could help (`Retryable`: a timeout, a dropped
//! connection, a 503) or not (`Fatal`: bad SQL, a 400, a missing column). The executor
//! retries only the former, and only while the task has retries left.

use std::fmt;

/// Why an operator config was rejected at parse time. `field` is the path inside the
/// task's `config:` block (`env.PATH`, `command`), when the error is about one field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// Path of the offending field inside `config:`, when known.
    pub field: Option<String>,
    /// What is wrong, for a person.
    pub message: String,
}

impl ConfigError {
    /// An error about one named field.
    pub fn field(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: Some(field.into()),
            message: message.into(),
        }
    }

    /// An error about the config as a whole.
    pub fn whole(message: impl Into<String>) -> Self {
        Self {
            field: None,
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.field {
            Some(field) => write!(f, "config.{field}: {}", self.message),
            None => write!(f, "config: {}", self.message),
        }
    }
}

/// Whether a failed try may succeed if tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// Transient: worth another try if retries remain.
    Retryable,
    /// Permanent: retrying the same input gives the same failure.
    Fatal,
}

/// A failed try, classified where it happened.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct OperatorError {
    /// Retryable or fatal.
    pub kind: FailureKind,
    /// What failed and where, without secrets.
    pub message: String,
}

impl OperatorError {
    /// A failure that another try may not repeat.
    pub fn retryable(message: impl Into<String>) -> Self {
        Self {
            kind: FailureKind::Retryable,
            message: message.into(),
        }
    }

    /// A failure that another try would repeat.
    pub fn fatal(message: impl Into<String>) -> Self {
        Self {
            kind: FailureKind::Fatal,
            message: message.into(),
        }
    }
}
