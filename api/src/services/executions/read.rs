//! Reading and cancelling executions of one tenant: another tenant's
//! execution is "not found", never "forbidden".

use std::sync::Arc;
use std::time::Duration;

use llmq_shared::db::{executions as db, steps as db_steps, DbError, Pool};
use llmq_shared::events::{ExecutionEvent, Subscriber};
use llmq_shared::execution::{Execution, ExecutionId, ExecutionStatus};
use llmq_shared::ids::TenantId;
use llmq_shared::queue::Publisher;
use llmq_shared::step::Step;

use super::not_found;
use crate::services::error::{Result, ServiceError};
use crate::services::within;

/// An execution of `tenant`, or not found.
pub async fn get_execution(pool: &Pool, tenant: &TenantId, id: ExecutionId) -> Result<Execution> {
    let client = pool.get().await.map_err(DbError::from)?;
    db::get_execution(&client, tenant.as_str(), id)
        .await?
        .ok_or_else(|| not_found(id))
}

/// Reads the execution, waiting up to `wait` for it to become terminal.
/// Watches its events before reading, so a finish between the read and
/// the wait is not missed; re-reads every second regardless. Each read
/// is bounded by `read_deadline`.
pub async fn wait_for_execution(
    pool: &Pool,
    events: &Arc<Subscriber>,
    tenant: &TenantId,
    id: ExecutionId,
    wait: Duration,
    read_deadline: Duration,
) -> Result<Execution> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut events = events.watch(id);
    loop {
        let execution = within(read_deadline, get_execution(pool, tenant, id)).await?;
        let now = tokio::time::Instant::now();
        if execution.status.is_terminal() || now >= deadline {
            return Ok(execution);
        }
        let recheck = (deadline - now).min(Duration::from_secs(1));
        tokio::select! {
            _ = events.next() => {}
            _ = tokio::time::sleep(recheck) => {}
        }
    }
}

/// The step trace of an execution of `tenant`.
pub async fn list_steps(pool: &Pool, tenant: &TenantId, id: ExecutionId) -> Result<Vec<Step>> {
    let client = pool.get().await.map_err(DbError::from)?;
    let steps = db_steps::list_steps(&client, tenant.as_str(), id).await?;
    if steps.is_empty() {
        // Distinguish "no steps yet" from "no such execution".
        db::get_execution(&client, tenant.as_str(), id)
            .await?
            .ok_or_else(|| not_found(id))?;
    }
    Ok(steps)
}

/// Cancels a queued execution now, or asks the worker running it to stop
/// at the next step boundary (its in-flight model call is aborted).
#[tracing::instrument(skip_all, fields(execution.id = %id))]
pub async fn cancel_execution(
    pool: &Pool,
    publisher: &Publisher,
    tenant: &TenantId,
    id: ExecutionId,
) -> Result<Execution> {
    let client = pool.get().await.map_err(DbError::from)?;
    match db::request_cancel(&client, tenant.as_str(), id).await? {
        Some((execution, events)) => {
            if execution.status == ExecutionStatus::Cancelled {
                let terminal = ExecutionEvent {
                    id,
                    status: ExecutionStatus::Cancelled,
                };
                publisher.publish_events(&[terminal], events).await;
                metrics::counter!(llmq_shared::metrics::EXECUTIONS_FINISHED, "status" => "cancelled").increment(1);
            }
            Ok(execution)
        }
        None => {
            let existing = db::get_execution(&client, tenant.as_str(), id)
                .await?
                .ok_or_else(|| not_found(id))?;
            Err(ServiceError::Conflict(format!(
                "execution is already {}",
                existing.status
            )))
        }
    }
}
