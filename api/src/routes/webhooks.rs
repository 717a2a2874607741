//! Webhook handlers: `/v1/webhook-endpoints`, `/v1/webhook-secret`, the
//! delivery log (`/v1/executions/{id}/deliveries`,
//! `/v1/webhook-endpoints/{id}/deliveries`) and replays.

use actix_web::{delete, get, patch, post, web, HttpResponse};
use serde::Deserialize;
use uuid::Uuid;

use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody};
use crate::services::webhooks::deliveries as delivery_service;
use crate::services::webhooks::endpoints::{self as service, EndpointChanges, EndpointRequest};
use crate::services::within;
use crate::state::AppState;
use crate::webhook_resources::{
    CreateEndpoint, DeliveryList, DeliveryResource, EndpointList, EndpointResource,
    EndpointWithSecret, RecoverRequest, RecoverResult, UpdateEndpoint, WebhookSecret,
};

fn parse_id(raw: &str, what: &str) -> Result<Uuid, ApiError> {
    raw.parse()
        .map_err(|_| ApiError::NotFound(format!("no {what} {raw}")))
}

/// Register an endpoint; its signing secret is in this answer only.
#[utoipa::path(
    tag = "webhooks",
    request_body = CreateEndpoint,
    responses(
        (status = 403, description = "The key lacks the route's scope (missing_scope)", body = ErrorBody),
        (status = 201, body = EndpointWithSecret),
        (status = 400, description = "Malformed body, unknown event type", body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 422, description = "The URL is refused (scheme, or a non-public address)", body = ErrorBody),
        (status = 503, body = ErrorBody),
    ),
    security(("bearer" = ["webhooks:manage"]))
)]
#[post("/v1/webhook-endpoints")]
pub async fn create_endpoint(
    state: web::Data<AppState>,
    caller: Caller,
    body: web::Json<CreateEndpoint>,
) -> Result<HttpResponse, ApiError> {
    let b = body.into_inner();
    let request = EndpointRequest {
        url: b.url,
        event_types: b.event_types,
        enabled: b.enabled.unwrap_or(true),
        description: b.description.unwrap_or_default(),
    };
    let deps = state.webhook_deps();
    let work = service::create_endpoint(&deps, &caller.tenant, request);
    let (endpoint, secret) = within(state.deadline(), work).await?;
    Ok(HttpResponse::Created().json(EndpointWithSecret {
        endpoint: EndpointResource::from(&endpoint),
        secret: secret.expose(),
    }))
}

/// The tenant's endpoints.
#[utoipa::path(
    tag = "webhooks",
    responses(
        (status = 403, description = "The key lacks the route's scope (missing_scope)", body = ErrorBody),(status = 200, body = EndpointList), (status = 401, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = ["webhooks:manage"]))
)]
#[get("/v1/webhook-endpoints")]
pub async fn list_endpoints(
    state: web::Data<AppState>,
    caller: Caller,
) -> Result<HttpResponse, ApiError> {
    let deps = state.webhook_deps();
    let work = service::list_endpoints(&deps, &caller.tenant);
    let endpoints = within(state.deadline(), work).await?;
    Ok(HttpResponse::Ok().json(EndpointList {
        data: endpoints.iter().map(EndpointResource::from).collect(),
    }))
}

/// One endpoint.
#[utoipa::path(
    tag = "webhooks",
    params(("id" = String, Path, description = "Endpoint id")),
    responses(
        (status = 403, description = "The key lacks the route's scope (missing_scope)", body = ErrorBody),(status = 200, body = EndpointResource), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = ["webhooks:manage"]))
)]
#[get("/v1/webhook-endpoints/{id}")]
pub async fn get_endpoint(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&id, "webhook endpoint")?;
    let deps = state.webhook_deps();
    let work = service::get_endpoint(&deps, &caller.tenant, id);
    let endpoint = within(state.deadline(), work).await?;
    Ok(HttpResponse::Ok().json(EndpointResource::from(&endpoint)))
}

/// Change an endpoint's URL, event types, state or description.
#[utoipa::path(
    tag = "webhooks",
    params(("id" = String, Path, description = "Endpoint id")),
    request_body = UpdateEndpoint,
    responses(
        (status = 403, description = "The key lacks the route's scope (missing_scope)", body = ErrorBody),
        (status = 200, body = EndpointResource),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 422, description = "The URL is refused", body = ErrorBody),
        (status = 503, body = ErrorBody),
    ),
    security(("bearer" = ["webhooks:manage"]))
)]
#[patch("/v1/webhook-endpoints/{id}")]
pub async fn update_endpoint(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<String>,
    body: web::Json<UpdateEndpoint>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&id, "webhook endpoint")?;
    let b = body.into_inner();
    let changes = EndpointChanges {
        url: b.url,
        event_types: b.event_types,
        enabled: b.enabled,
        description: b.description,
    };
    let deps = state.webhook_deps();
    let work = service::update_endpoint(&deps, &caller.tenant, id, changes);
    let endpoint = within(state.deadline(), work).await?;
    Ok(HttpResponse::Ok().json(EndpointResource::from(&endpoint)))
}

/// Remove an endpoint; its pending deliveries fail when they come due.
#[utoipa::path(
    tag = "webhooks",
    params(("id" = String, Path, description = "Endpoint id")),
    responses(
        (status = 403, description = "The key lacks the route's scope (missing_scope)", body = ErrorBody),(status = 204, description = "Deleted"), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = ["webhooks:manage"]))
)]
#[delete("/v1/webhook-endpoints/{id}")]
pub async fn delete_endpoint(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&id, "webhook endpoint")?;
    let deps = state.webhook_deps();
    let work = service::delete_endpoint(&deps, &caller.tenant, id);
    within(state.deadline(), work).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// A new signing secret, shown once; the old one keeps signing for
/// `webhooks.rotation_overlap_secs` (two signatures are sent).
#[utoipa::path(
    tag = "webhooks",
    params(("id" = String, Path, description = "Endpoint id")),
    responses(
        (status = 403, description = "The key lacks the route's scope (missing_scope)", body = ErrorBody),(status = 200, body = EndpointWithSecret), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = ["webhooks:manage"]))
)]
#[post("/v1/webhook-endpoints/{id}/rotate-secret")]
pub async fn rotate_secret(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&id, "webhook endpoint")?;
    let deps = state.webhook_deps();
    let work = service::rotate_endpoint_secret(&deps, &caller.tenant, id);
    let (endpoint, secret) = within(state.deadline(), work).await?;
    Ok(HttpResponse::Ok().json(EndpointWithSecret {
        endpoint: EndpointResource::from(&endpoint),
        secret: secret.expose(),
    }))
}

/// Create (201) or rotate (200) the tenant's secret that signs the
/// deliveries to per-execution `webhook.url`s; shown once.
#[utoipa::path(
    tag = "webhooks",
    responses(
        (status = 403, description = "The key lacks the route's scope (missing_scope)", body = ErrorBody),
        (status = 201, description = "Created", body = WebhookSecret),
        (status = 200, description = "Rotated; the old secret overlaps", body = WebhookSecret),
        (status = 401, body = ErrorBody),
        (status = 503, body = ErrorBody),
    ),
    security(("bearer" = ["webhooks:manage"]))
)]
#[post("/v1/webhook-secret")]
pub async fn put_tenant_secret(
    state: web::Data<AppState>,
    caller: Caller,
) -> Result<HttpResponse, ApiError> {
    let deps = state.webhook_deps();
    let work = service::put_tenant_secret(&deps, &caller.tenant);
    let (secret, created) = within(state.deadline(), work).await?;
    let mut response = if created {
        HttpResponse::Created()
    } else {
        HttpResponse::Ok()
    };
    Ok(response.json(WebhookSecret {
        secret: secret.expose(),
        created,
    }))
}

/// An execution's deliveries, each with its attempts.
#[utoipa::path(
    tag = "webhooks",
    params(("id" = String, Path, description = "Execution id")),
    responses(
        (status = 403, description = "The key lacks the route's scope (missing_scope)", body = ErrorBody),(status = 200, body = DeliveryList), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = ["webhooks:manage"]))
)]
#[get("/v1/executions/{id}/deliveries")]
pub async fn execution_deliveries(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = id
        .parse()
        .map_err(|_| ApiError::NotFound(format!("no execution {id}")))?;
    let deps = state.webhook_deps();
    let work = delivery_service::execution_deliveries(&deps, &caller.tenant, id);
    let deliveries = within(state.deadline(), work).await?;
    Ok(HttpResponse::Ok().json(DeliveryList::of(&deliveries)))
}

#[derive(Deserialize, utoipa::IntoParams)]
pub struct DeliveryQuery {
    /// `pending`, `succeeded` or `failed`.
    pub status: Option<String>,
}

/// An endpoint's deliveries, newest first (at most 500).
#[utoipa::path(
    tag = "webhooks",
    params(("id" = String, Path, description = "Endpoint id"), DeliveryQuery),
    responses(
        (status = 403, description = "The key lacks the route's scope (missing_scope)", body = ErrorBody),(status = 200, body = DeliveryList), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = ["webhooks:manage"]))
)]
#[get("/v1/webhook-endpoints/{id}/deliveries")]
pub async fn endpoint_deliveries(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<String>,
    query: web::Query<DeliveryQuery>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&id, "webhook endpoint")?;
    let deps = state.webhook_deps();
    let work =
        delivery_service::endpoint_deliveries(&deps, &caller.tenant, id, query.status.as_deref());
    let deliveries = within(state.deadline(), work).await?;
    Ok(HttpResponse::Ok().json(DeliveryList::of(&deliveries)))
}

/// Send a delivery again (same `webhook-id`, a fresh retry schedule).
#[utoipa::path(
    tag = "webhooks",
    params(("id" = String, Path, description = "Delivery id (its webhook-id)")),
    responses(
        (status = 403, description = "The key lacks the route's scope (missing_scope)", body = ErrorBody),
        (status = 202, body = DeliveryResource),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "Still pending", body = ErrorBody),
        (status = 503, body = ErrorBody),
    ),
    security(("bearer" = ["webhooks:manage"]))
)]
#[post("/v1/deliveries/{id}/retry")]
pub async fn retry_delivery(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&id, "delivery")?;
    let deps = state.webhook_deps();
    let work = delivery_service::retry_delivery(&deps, &caller.tenant, id);
    let delivery = within(state.deadline(), work).await?;
    Ok(HttpResponse::Accepted().json(DeliveryResource::from(&delivery)))
}

/// Send again every failed delivery of the endpoint created since `since`.
#[utoipa::path(
    tag = "webhooks",
    params(("id" = String, Path, description = "Endpoint id")),
    request_body = RecoverRequest,
    responses(
        (status = 403, description = "The key lacks the route's scope (missing_scope)", body = ErrorBody),
        (status = 202, body = RecoverResult),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "The endpoint is disabled", body = ErrorBody),
        (status = 503, body = ErrorBody),
    ),
    security(("bearer" = ["webhooks:manage"]))
)]
#[post("/v1/webhook-endpoints/{id}/recover")]
pub async fn recover(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<String>,
    body: web::Json<RecoverRequest>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&id, "webhook endpoint")?;
    let deps = state.webhook_deps();
    let work = delivery_service::recover_endpoint(&deps, &caller.tenant, id, body.since);
    let requeued = within(state.deadline(), work).await?;
    Ok(HttpResponse::Accepted().json(RecoverResult { requeued }))
}
