//! `/v1/orgs` handlers: organisations and their API keys. Every route
//! needs the `admin` scope; which organisations an admin key sees is the
//! service's rule (`crate::services::tenancy`).

use actix_web::{get, post, web, HttpResponse};
use llmq_shared::ids::TenantId;
use llmq_shared::keys::Scopes;

use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody};
use crate::resources::tenancy::{
    CreateKey, CreateOrg, KeyList, KeyResource, KeyWithSecret, OrgList, OrgResource,
};
use crate::services::tenancy::{self as service, KeyRequest};
use crate::services::within;
use crate::state::AppState;

fn key_id(raw: &str, org: &str) -> Result<uuid::Uuid, ApiError> {
    raw.parse()
        .map_err(|_| ApiError::NotFound(format!("no key {raw} in organisation {org:?}")))
}

/// Create an organisation (an admin key of the default organisation only).
#[utoipa::path(
    tag = "tenancy",
    request_body = CreateOrg,
    responses(
        (status = 201, body = OrgResource),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, description = "The key lacks admin, or is not the default organisation's", body = ErrorBody),
        (status = 409, description = "The id is taken", body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 415, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = ["admin"]))
)]
#[post("/v1/orgs")]
pub async fn create_org(
    state: web::Data<AppState>,
    caller: Caller,
    body: web::Json<CreateOrg>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let id = TenantId::parse(&body.id).map_err(|e| ApiError::BadRequest(format!("id: {e}")))?;
    let manager = caller.manager();
    let work = service::create_org(&state.pool, &manager, &id, body.name);
    let org = within(state.deadline(), work).await?;
    Ok(HttpResponse::Created().json(OrgResource::from(org)))
}

/// The organisations this key sees: its own, or every one for the
/// default organisation's admin keys.
#[utoipa::path(
    tag = "tenancy",
    responses(
        (status = 200, body = OrgList),
        (status = 401, body = ErrorBody),
        (status = 403, description = "The key lacks admin (missing_scope)", body = ErrorBody),
        (status = 503, body = ErrorBody)),
    security(("bearer" = ["admin"]))
)]
#[get("/v1/orgs")]
pub async fn list_orgs(
    state: web::Data<AppState>,
    caller: Caller,
) -> Result<HttpResponse, ApiError> {
    let manager = caller.manager();
    let work = service::list_orgs(&state.pool, &manager);
    let orgs = within(state.deadline(), work).await?;
    Ok(HttpResponse::Ok().json(OrgList {
        organisations: orgs.into_iter().map(Into::into).collect(),
    }))
}

/// One organisation.
#[utoipa::path(
    tag = "tenancy",
    params(("id" = String, Path, description = "Organisation id")),
    responses(
        (status = 200, body = OrgResource),
        (status = 401, body = ErrorBody),
        (status = 403, description = "The key lacks admin (missing_scope)", body = ErrorBody),
        (status = 404, description = "No such organisation, or not this key's", body = ErrorBody),
        (status = 503, body = ErrorBody)),
    security(("bearer" = ["admin"]))
)]
#[get("/v1/orgs/{id}")]
pub async fn get_org(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let manager = caller.manager();
    let work = service::get_org(&state.pool, &manager, &id);
    let org = within(state.deadline(), work).await?;
    Ok(HttpResponse::Ok().json(OrgResource::from(org)))
}

/// Create a key of the organisation. The answer holds the key's secret,
/// shown this once.
#[utoipa::path(
    tag = "tenancy",
    params(("id" = String, Path, description = "Organisation id")),
    request_body = CreateKey,
    responses(
        (status = 201, body = KeyWithSecret),
        (status = 400, description = "An unknown or missing scope, an expiry in the past", body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, description = "The key lacks admin (missing_scope)", body = ErrorBody),
        (status = 404, description = "No such organisation, or not this key's", body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 415, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = ["admin"]))
)]
#[post("/v1/orgs/{id}/keys")]
pub async fn create_key(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<String>,
    body: web::Json<CreateKey>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let scopes = Scopes::parse_all(&body.scopes)
        .map_err(|e| ApiError::BadRequest(format!("scopes: {e}")))?;
    let request = KeyRequest {
        name: body.name,
        scopes,
        user: body.user,
        expires_at: body.expires_at,
    };
    let manager = caller.manager();
    let work = service::create_key(&state.pool, &manager, &id, request);
    let created = within(state.deadline(), work).await?;
    Ok(HttpResponse::Created().json(KeyWithSecret {
        secret: created.secret,
        key: created.key.into(),
    }))
}

/// The organisation's keys (prefixes only), revoked ones included.
#[utoipa::path(
    tag = "tenancy",
    params(("id" = String, Path, description = "Organisation id")),
    responses(
        (status = 200, body = KeyList),
        (status = 401, body = ErrorBody),
        (status = 403, description = "The key lacks admin (missing_scope)", body = ErrorBody),
        (status = 404, description = "No such organisation, or not this key's", body = ErrorBody),
        (status = 503, body = ErrorBody)),
    security(("bearer" = ["admin"]))
)]
#[get("/v1/orgs/{id}/keys")]
pub async fn list_keys(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let manager = caller.manager();
    let work = service::list_keys(&state.pool, &manager, &id);
    let keys = within(state.deadline(), work).await?;
    Ok(HttpResponse::Ok().json(KeyList {
        keys: keys.into_iter().map(Into::into).collect(),
    }))
}

/// Revoke a key: refused by every API process within a second.
#[utoipa::path(
    tag = "tenancy",
    params(("id" = String, Path, description = "Organisation id"), ("key_id" = String, Path, description = "Key id")),
    responses(
        (status = 200, description = "Revoked (revoking again changes nothing)", body = KeyResource),
        (status = 401, body = ErrorBody),
        (status = 403, description = "The key lacks admin (missing_scope)", body = ErrorBody),
        (status = 404, description = "No such key in this organisation, or not this key's organisation", body = ErrorBody),
        (status = 503, body = ErrorBody)),
    security(("bearer" = ["admin"]))
)]
#[post("/v1/orgs/{id}/keys/{key_id}/revoke")]
pub async fn revoke_key(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (org, raw) = path.into_inner();
    let id = key_id(&raw, &org)?;
    let manager = caller.manager();
    let work = service::revoke_key(
        &state.pool,
        &state.publisher,
        &state.keys,
        &manager,
        &org,
        id,
    );
    let key = within(state.deadline(), work).await?;
    Ok(HttpResponse::Ok().json(KeyResource::from(key)))
}
