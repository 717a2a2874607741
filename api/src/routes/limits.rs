//! `/v1/orgs/{id}/limits`: an organisation's request rate limits, token
//! budgets and spend caps (admin only). A change applies on every replica
//! without a restart.

use actix_web::{get, put, web, HttpResponse};
use chrono::{DateTime, Utc};
use llmq_shared::config::OrgLimits;
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

fn admin_only(caller: &Caller) -> Result<(), ApiError> {
    if caller.admin {
        Ok(())
    } else {
        Err(ApiError::Forbidden(
            "managing an organisation's limits needs the admin scope".into(),
        ))
    }
}

fn org(raw: &str) -> Result<String, ApiError> {
    let ok = !raw.is_empty()
        && raw.len() <= 128
        && raw
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(raw.to_string())
    } else {
        Err(ApiError::BadRequest(
            "org: 1 to 128 letters, digits, '-', '_' or '.'".into(),
        ))
    }
}

/// An organisation's limits.
#[utoipa::path(
    tag = "limits",
    params(("id" = String, Path, description = "The organisation (tenant) id")),
    responses(
        (status = 200, body = OrgLimitsResource),
        (status = 400, description = "A bad organisation id", body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, description = "The key lacks the admin scope", body = ErrorBody),
        (status = 503, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[get("/v1/orgs/{id}/limits")]
pub async fn get_org_limits(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    admin_only(&caller)?;
    let org = org(&path)?;
    let work = service::read_org_limits(&state.pool, &state.limiter, &org);
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
        (status = 403, description = "The key lacks the admin scope", body = ErrorBody),
        (status = 503, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[put("/v1/orgs/{id}/limits")]
pub async fn put_org_limits(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<String>,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    admin_only(&caller)?;
    let org = org(&path)?;
    let work = service::write_org_limits(
        &state.pool,
        &state.publisher,
        &state.limiter,
        &state.org_limits,
        &org,
        body.into_inner(),
        caller.actor(),
    );
    let view = within(state.deadline(), work).await?;
    Ok(HttpResponse::Ok().json(OrgLimitsResource::from(view)))
}
