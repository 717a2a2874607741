//! The delivery log and its replays: an execution's deliveries, an
//! endpoint's (optionally by status), sending one delivery again, and
//! sending again every failed delivery of an endpoint since a time.

use chrono::{DateTime, Utc};
use llmq_shared::db::webhooks as db;
use llmq_shared::db::{executions, DbError};
use llmq_shared::execution::ExecutionId;
use llmq_shared::ids::TenantId;
use llmq_shared::webhook::Delivery;
use uuid::Uuid;

use super::{not_supported_status, wake_delivery, WebhookDeps};
use crate::services::error::{Result, ServiceError};

/// How many deliveries an endpoint listing answers at most.
pub const ENDPOINT_LISTING_LIMIT: i64 = 500;

pub async fn execution_deliveries(
    deps: &WebhookDeps<'_>,
    tenant: &TenantId,
    id: ExecutionId,
) -> Result<Vec<Delivery>> {
    let client = deps.pool.get().await.map_err(DbError::from)?;
    let deliveries = db::execution_deliveries(&client, tenant.as_str(), id.0).await?;
    if deliveries.is_empty() {
        executions::get_execution(&client, tenant.as_str(), id)
            .await?
            .ok_or_else(|| ServiceError::NotFound(format!("no execution {id}")))?;
    }
    Ok(deliveries)
}

pub async fn endpoint_deliveries(
    deps: &WebhookDeps<'_>,
    tenant: &TenantId,
    endpoint: Uuid,
    status: Option<&str>,
) -> Result<Vec<Delivery>> {
    if let Some(s) = status {
        if !["pending", "succeeded", "failed"].contains(&s) {
            return Err(not_supported_status(s));
        }
    }
    let client = deps.pool.get().await.map_err(DbError::from)?;
    db::get_endpoint(&client, tenant.as_str(), endpoint)
        .await?
        .ok_or_else(|| ServiceError::NotFound(format!("no webhook endpoint {endpoint}")))?;
    Ok(db::endpoint_deliveries(
        &client,
        tenant.as_str(),
        endpoint,
        status,
        ENDPOINT_LISTING_LIMIT,
    )
    .await?)
}

/// Sends a finished delivery again (same `webhook-id`, a fresh schedule).
#[tracing::instrument(skip_all, fields(delivery.id = %id), err)]
pub async fn retry_delivery(
    deps: &WebhookDeps<'_>,
    tenant: &TenantId,
    id: Uuid,
) -> Result<Delivery> {
    let client = deps.pool.get().await.map_err(DbError::from)?;
    if !db::retry_delivery(&client, tenant.as_str(), id).await? {
        return match db::get_delivery(&client, tenant.as_str(), id).await? {
            Some(_) => Err(ServiceError::Conflict(
                "the delivery is still pending: its next attempt is already scheduled".into(),
            )),
            None => Err(ServiceError::NotFound(format!("no delivery {id}"))),
        };
    }
    wake_delivery(deps.publisher).await;
    db::get_delivery(&client, tenant.as_str(), id)
        .await?
        .ok_or_else(|| ServiceError::NotFound(format!("no delivery {id}")))
}

/// Queues again every failed delivery of the endpoint created since
/// `since`; answers how many. A disabled endpoint must be enabled first
/// (its deliveries would fail at once).
#[tracing::instrument(skip_all, fields(endpoint.id = %endpoint), err)]
pub async fn recover_endpoint(
    deps: &WebhookDeps<'_>,
    tenant: &TenantId,
    endpoint: Uuid,
    since: DateTime<Utc>,
) -> Result<u64> {
    let client = deps.pool.get().await.map_err(DbError::from)?;
    let found = db::get_endpoint(&client, tenant.as_str(), endpoint)
        .await?
        .ok_or_else(|| ServiceError::NotFound(format!("no webhook endpoint {endpoint}")))?;
    if !found.enabled {
        return Err(ServiceError::Conflict(
            "the endpoint is disabled: enable it (PATCH enabled: true) before recovering".into(),
        ));
    }
    let n = db::recover_endpoint(&client, tenant.as_str(), endpoint, since).await?;
    if n > 0 {
        wake_delivery(deps.publisher).await;
    }
    Ok(n)
}
