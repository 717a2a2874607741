//! `GET /v1/usage`: tokens, executions and cost of the caller's
//! organisation, from the workers' rollup.

use actix_web::{get, web, HttpResponse};
use chrono::{DateTime, Utc};
use llmq_shared::db::usage::UsageRow;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody};
use crate::services::usage::{self as service, UsageQuery};
use crate::services::within;
use crate::state::AppState;

#[derive(Deserialize, utoipa::IntoParams)]
pub struct UsageParams {
    /// Start (RFC 3339), rounded down to its hour; default 24 hours before `to`.
    pub from: Option<String>,
    /// End (RFC 3339, exclusive); default now.
    pub to: Option<String>,
    /// model (default), prompt, version, user, key or day (UTC).
    pub group_by: Option<String>,
}

/// `GET /v1/usage`.
#[derive(Debug, Serialize, ToSchema)]
pub struct UsageReport {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub group_by: String,
    pub groups: Vec<UsageRow>,
    /// The sum of the groups.
    pub total: UsageRow,
}

/// Usage of the caller's organisation: tokens, executions (cached ones
/// too) and cost, per group.
#[utoipa::path(
    tag = "usage",
    params(UsageParams),
    responses(
        (status = 200, body = UsageReport),
        (status = 400, description = "A bad time, range or group_by", body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, description = "The key lacks executions:read (missing_scope)", body = ErrorBody),
        (status = 503, body = ErrorBody),
    ),
    security(("bearer" = ["executions:read"]))
)]
#[get("/v1/usage")]
pub async fn usage(
    state: web::Data<AppState>,
    caller: Caller,
    params: web::Query<UsageParams>,
) -> Result<HttpResponse, ApiError> {
    let p = params.into_inner();
    let query = UsageQuery::parse(p.from.as_deref(), p.to.as_deref(), p.group_by.as_deref())?;
    let groups = within(
        state.deadline(),
        service::usage(&state.pool, &caller.tenant, &query),
    )
    .await?;
    let total = groups.iter().fold(UsageRow::default(), |mut t, g| {
        t.executions += g.executions;
        t.succeeded += g.succeeded;
        t.failed += g.failed;
        t.cancelled += g.cancelled;
        t.cached += g.cached;
        t.prompt_tokens += g.prompt_tokens;
        t.completion_tokens += g.completion_tokens;
        t.total_tokens += g.total_tokens;
        t.cost_usd += g.cost_usd;
        t
    });
    Ok(HttpResponse::Ok().json(UsageReport {
        from: query.from,
        to: query.to,
        group_by: p.group_by.unwrap_or_else(|| "model".into()),
        groups,
        total,
    }))
}
