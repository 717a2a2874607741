//! Registering, changing and removing endpoints, rotating their secrets,
//! and the tenant's secret for per-execution URLs. A new secret is
//! answered once and stored sealed; nothing reads it back for a client.

use llmq_shared::db::webhooks::{self as db, EndpointPatch, NewEndpoint};
use llmq_shared::db::DbError;
use llmq_shared::ids::TenantId;
use llmq_shared::webhook::signing::Secret;
use llmq_shared::webhook::{Endpoint, EVENT_TYPES};
use uuid::Uuid;

use super::{check_destination, WebhookDeps};
use crate::services::error::{Result, ServiceError};

/// An endpoint as asked for, before checks.
pub struct EndpointRequest {
    pub url: String,
    pub event_types: Vec<String>,
    pub enabled: bool,
    pub description: String,
}

/// Changes asked for; `None` keeps the field.
#[derive(Default)]
pub struct EndpointChanges {
    pub url: Option<String>,
    pub event_types: Option<Vec<String>>,
    pub enabled: Option<bool>,
    pub description: Option<String>,
}

fn not_found(id: Uuid) -> ServiceError {
    ServiceError::NotFound(format!("no webhook endpoint {id}"))
}

/// Known, deduplicated, at least one.
fn check_event_types(types: &[String]) -> Result<Vec<String>> {
    if types.is_empty() {
        return Err(ServiceError::InvalidRequest(format!(
            "event_types must name at least one of {}",
            EVENT_TYPES.join(", ")
        )));
    }
    let mut out: Vec<String> = Vec::new();
    for t in types {
        if !EVENT_TYPES.contains(&t.as_str()) {
            return Err(ServiceError::InvalidRequest(format!(
                "event_types: unknown event type {t:?}; known are {}",
                EVENT_TYPES.join(", ")
            )));
        }
        if !out.contains(t) {
            out.push(t.clone());
        }
    }
    Ok(out)
}

fn check_description(d: &str) -> Result<()> {
    if d.len() > 1000 || d.contains('\0') {
        return Err(ServiceError::InvalidRequest(
            "description must be at most 1000 characters, without NUL".into(),
        ));
    }
    Ok(())
}

#[tracing::instrument(skip_all, err)]
pub async fn create_endpoint(
    deps: &WebhookDeps<'_>,
    tenant: &TenantId,
    request: EndpointRequest,
) -> Result<(Endpoint, Secret)> {
    let event_types = check_event_types(&request.event_types)?;
    check_description(&request.description)?;
    check_destination(deps.policy, "url", &request.url).await?;
    let secret = Secret::generate();
    let sealed = deps.sealer.seal(&secret);
    let client = deps.pool.get().await.map_err(DbError::from)?;
    let endpoint = db::insert_endpoint(
        &client,
        &NewEndpoint {
            tenant: tenant.as_str(),
            url: &request.url,
            event_types: &event_types,
            enabled: request.enabled,
            description: &request.description,
            sealed_secret: &sealed,
        },
    )
    .await?;
    Ok((endpoint, secret))
}

pub async fn list_endpoints(deps: &WebhookDeps<'_>, tenant: &TenantId) -> Result<Vec<Endpoint>> {
    let client = deps.pool.get().await.map_err(DbError::from)?;
    Ok(db::list_endpoints(&client, tenant.as_str()).await?)
}

pub async fn get_endpoint(deps: &WebhookDeps<'_>, tenant: &TenantId, id: Uuid) -> Result<Endpoint> {
    let client = deps.pool.get().await.map_err(DbError::from)?;
    db::get_endpoint(&client, tenant.as_str(), id)
        .await?
        .ok_or_else(|| not_found(id))
}

#[tracing::instrument(skip_all, fields(endpoint.id = %id), err)]
pub async fn update_endpoint(
    deps: &WebhookDeps<'_>,
    tenant: &TenantId,
    id: Uuid,
    changes: EndpointChanges,
) -> Result<Endpoint> {
    let event_types = changes
        .event_types
        .as_deref()
        .map(check_event_types)
        .transpose()?;
    if let Some(d) = &changes.description {
        check_description(d)?;
    }
    if let Some(url) = &changes.url {
        check_destination(deps.policy, "url", url).await?;
    }
    let client = deps.pool.get().await.map_err(DbError::from)?;
    let patch = EndpointPatch {
        url: changes.url.as_deref(),
        event_types: event_types.as_deref(),
        enabled: changes.enabled,
        description: changes.description.as_deref(),
    };
    db::update_endpoint(&client, tenant.as_str(), id, &patch)
        .await?
        .ok_or_else(|| not_found(id))
}

pub async fn delete_endpoint(deps: &WebhookDeps<'_>, tenant: &TenantId, id: Uuid) -> Result<()> {
    let client = deps.pool.get().await.map_err(DbError::from)?;
    if db::delete_endpoint(&client, tenant.as_str(), id).await? {
        Ok(())
    } else {
        Err(not_found(id))
    }
}

/// A new secret for the endpoint; the old one keeps signing (a second
/// signature) for the configured overlap.
#[tracing::instrument(skip_all, fields(endpoint.id = %id), err)]
pub async fn rotate_endpoint_secret(
    deps: &WebhookDeps<'_>,
    tenant: &TenantId,
    id: Uuid,
) -> Result<(Endpoint, Secret)> {
    let secret = Secret::generate();
    let sealed = deps.sealer.seal(&secret);
    let client = deps.pool.get().await.map_err(DbError::from)?;
    let endpoint =
        db::rotate_endpoint_secret(&client, tenant.as_str(), id, &sealed, deps.rotation_overlap)
            .await?
            .ok_or_else(|| not_found(id))?;
    Ok((endpoint, secret))
}

/// Creates the tenant's secret for per-execution URLs, or rotates it
/// (the old one overlapping). True when it was created.
#[tracing::instrument(skip_all, err)]
pub async fn put_tenant_secret(
    deps: &WebhookDeps<'_>,
    tenant: &TenantId,
) -> Result<(Secret, bool)> {
    let secret = Secret::generate();
    let sealed = deps.sealer.seal(&secret);
    let client = deps.pool.get().await.map_err(DbError::from)?;
    let created =
        db::put_tenant_secret(&client, tenant.as_str(), &sealed, deps.rotation_overlap).await?;
    Ok((secret, created))
}
