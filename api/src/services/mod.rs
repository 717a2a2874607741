//! The API's services: plain functions over domain types, no actix, so
//! tests, CLIs and other front ends run the same logic as the handlers.
//! They answer `ServiceError`; `crate::error` maps it to HTTP once.

pub mod collections;
pub mod error;
pub mod events;
pub mod executions;
pub mod limits;
pub mod prompts;
pub mod tenancy;
pub mod tools;
pub mod usage;
pub mod webhooks;

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use error::ServiceError;

/// Bounds a piece of request work: a database that stops answering turns
/// into `Unavailable` (a 503 the client can retry), never a hung request.
/// Only for work whose effects are rolled back when it is dropped.
pub async fn within<T>(
    limit: Duration,
    work: impl Future<Output = Result<T, ServiceError>>,
) -> Result<T, ServiceError> {
    within_until(Instant::now() + limit, work).await
}

/// `within`, with the deadline as an instant.
pub async fn within_until<T>(
    deadline: Instant,
    work: impl Future<Output = Result<T, ServiceError>>,
) -> Result<T, ServiceError> {
    tokio::time::timeout_at(deadline, work)
        .await
        .unwrap_or_else(|_| {
            Err(ServiceError::Unavailable(
                "the database did not answer in time; retry later".into(),
            ))
        })
}
