//! What a service can answer instead of a result, in domain terms. The API
//! turns these into HTTP answers in one place (`crate::error`); another
//! front end (a CLI, an OpenAI-compatible facade or batches, none built
//! yet) would map them its own way.

use llmq_shared::db::DbError;
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The request is malformed: a field out of range, a bad name.
    #[error("{0}")]
    InvalidRequest(String),
    /// The execution, prompt, version or label does not exist for the caller.
    #[error("{0}")]
    NotFound(String),
    /// The caller may not do this (a protected label without the admin key).
    #[error("{0}")]
    Forbidden(String),
    /// The request conflicts with the state of record (an idempotency key
    /// reused with another body, cancelling a finished execution).
    #[error("{0}")]
    Conflict(String),
    /// The request is well formed but cannot be carried out as asked: the
    /// input fails the schema, the template cannot render, a feature is not
    /// supported. `code` is the stable machine code clients see.
    #[error("{message}")]
    Rejected {
        code: &'static str,
        message: String,
        details: Option<Value>,
    },
    /// The database or broker did not answer: nothing was accepted, and the
    /// same request may be retried.
    #[error("{0}")]
    Unavailable(String),
    /// A bug or an impossible state; the cause is for the log only.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ServiceError {
    /// Whether the same request may succeed if sent again unchanged.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
}

impl From<DbError> for ServiceError {
    fn from(e: DbError) -> Self {
        if e.is_unavailable() {
            tracing::warn!(error = %e, "database unavailable");
            Self::Unavailable("the database is unavailable; retry later".into())
        } else {
            Self::Internal(e.to_string())
        }
    }
}

impl From<llmq_shared::redis::RedisError> for ServiceError {
    /// Redis holds no state of record: its failure is never a 500 by
    /// itself. A caller with a down-policy decides before this applies.
    fn from(e: llmq_shared::redis::RedisError) -> Self {
        tracing::warn!(error = %e, "redis unavailable");
        Self::Unavailable("the rate-limit store is unavailable; retry later".into())
    }
}

pub type Result<T, E = ServiceError> = std::result::Result<T, E>;
