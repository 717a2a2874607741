//! `/v1/orgs/{id}/limits`: an organisation's request rate limits, token
//! budgets and spend caps (admin only). A change applies on every replica
//! without a restart.

use actix_web::{get, put, web, HttpResponse};
use chrono::{DateTime, Utc};
use llmq_shared::config::OrgLimits;
use llmq_shared::ids::TenantId;
use serde::Serialize;
use serde_json::Value;

use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody};
use crate::services::limits::{self as service, OrgLimitsView};
use crate::services::within;
use crate::state::AppState;

/// An organisation's limits: what it overrides, and what applies.
#[derive(Serialize, utoipa::ToSchema)]
pub struct OrgLimitsResource {
    pub org: String,
    /// The fields set for this organisation (the others take the
    /// configured defaults, `[limits.defaults]`).
    #[schema(value_type = Object)]
    pub overrides: Value,
    /// Every limit as it applies now; 0 means none of that kind.
    pub effective: OrgLimits,
    pub updated_at: Option<DateTime<Utc>>,
    pub updated_by: Option<String>,
}

impl From<OrgLimitsView> for OrgLimitsResource {
    fn from(v: OrgLimitsView) -> Self {
        Self {
            org: v.tenant,
            overrides: v.overrides,
            effective: v.effective,
            updated_at: v.updated_at,
            updated_by: v.updated_by,
        }
    }
}

fn org(raw: &str) -> Result<TenantId, ApiError> {
    TenantId::parse(raw).map_err(|e| ApiError::BadRequest(format!("org: {e}")))
}

/// An organisation's limits.
#[utoipa::path(
    tag = "limits",
    params(("id" = String, Path, description = "The organisation (tenant) id")),
    responses(
        (status = 200, body = OrgLimitsResource),
        (status = 400, description = "A bad organisation id", body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, description = "The key lacks the admin scope (missing_scope)", body = ErrorBody),
        (status = 404, description = "Another organisation's", body = ErrorBody),
        (status = 503, body = ErrorBody),
    ),
    security(("bearer" = ["admin"]))
)]
#[get("/v1/orgs/{id}/limits")]
pub async fn get_org_limits(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let org = org(&path)?;
    let (deps, manager) = (state.limit_deps(), caller.manager());
    let work = service::read_org_limits(&deps, &manager, &org);
    let view = within(state.deadline(), work).await?;
    Ok(HttpResponse::Ok().json(OrgLimitsResource::from(view)))
}

/// Replaces an organisation's limits: the fields in the body override the
/// configured defaults, the others take them. Applies on every replica at
/// once (announced over the broker; at the latest after
/// `limits.settings_cache_ms`).
#[utoipa::path(
    tag = "limits",
    params(("id" = String, Path, description = "The organisation (tenant) id")),
    request_body = OrgLimits,
    responses(
        (status = 200, body = OrgLimitsResource),
        (status = 400, description = "An unknown field, a value of the wrong type or out of range", body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, description = "The key lacks the admin scope (missing_scope), or is not the operator's (forbidden)", body = ErrorBody),
        (status = 404, description = "Another organisation's", body = ErrorBody),
        (status = 503, body = ErrorBody),
    ),
    security(("bearer" = ["admin"]))
)]
#[put("/v1/orgs/{id}/limits")]
pub async fn put_org_limits(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<String>,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    let org = org(&path)?;
    let (deps, manager, actor) = (state.limit_deps(), caller.manager(), caller.actor());
    let work = service::write_org_limits(
        &deps,
        &state.publisher,
        &manager,
        &org,
        body.into_inner(),
        &actor,
    );
    let view = within(state.deadline(), work).await?;
    Ok(HttpResponse::Ok().json(OrgLimitsResource::from(view)))
}
