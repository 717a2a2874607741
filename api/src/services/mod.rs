//! The API's services: plain functions over plain types, no actix, so
//! tests, CLIs and other front ends run the same logic as the handlers.

pub mod executions;

use std::future::Future;
use std::time::Duration;

use crate::error::ApiError;

/// Bounds a piece of request work: a database that stops answering turns
/// into a 503 the client can retry, never a hung request.
pub async fn within<T>(
    limit: Duration,
    work: impl Future<Output = Result<T, ApiError>>,
) -> Result<T, ApiError> {
    tokio::time::timeout(limit, work).await.unwrap_or_else(|_| {
        Err(ApiError::Unavailable(
            "the database did not answer in time; retry later".into(),
        ))
    })
}
