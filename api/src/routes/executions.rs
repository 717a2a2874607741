//! `/v1/executions` handlers.

use std::time::Duration;

use actix_web::http::header;
use actix_web::{get, post, web, HttpRequest, HttpResponse};
use llmq_shared::execution::ExecutionId;
use llmq_shared::ids::IdempotencyKey;
use serde::Deserialize;

use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody};
use crate::resources::prompts::ExecutionList;
use crate::resources::{ExecutionResource, StepList, StepResource, SubmitExecution};
use crate::services::executions::{self as service, list as listing, Submitted};
use crate::services::limits::LimitKey;
use crate::services::within;
use crate::state::AppState;

pub(crate) fn parse_id(raw: &str) -> Result<ExecutionId, ApiError> {
    // Not a UUID cannot name an execution: 404, like any unknown id.
    raw.parse()
        .map_err(|_| ApiError::NotFound(format!("no execution {raw}")))
}

fn idempotency_key(req: &HttpRequest) -> Result<Option<IdempotencyKey>, ApiError> {
    req.headers()
        .get("idempotency-key")
        .map(|v| {
            let raw = v.to_str().map_err(|_| {
                ApiError::BadRequest("Idempotency-Key must be visible ASCII".into())
            })?;
            IdempotencyKey::parse(raw).map_err(|e| ApiError::BadRequest(e.to_string()))
        })
        .transpose()
}

/// Submit an execution.
#[utoipa::path(
    tag = "executions",
    request_body = SubmitExecution,
    params(("Idempotency-Key" = Option<String>, Header, description = "Same key and body return the same execution; 1 to 255 visible ASCII characters")),
    responses(
        (status = 202, description = "Accepted and durable; RateLimit-Policy and RateLimit headers while a request rate limit applies", body = ExecutionResource,
            headers(
                ("RateLimit-Policy" = String, description = "Every request rate limit that applies (IETF httpapi ratelimit-headers draft)"),
                ("RateLimit" = String, description = "The limit closest to refusing: remaining requests and seconds to a full quota"),
            )),
        (status = 200, description = "Same Idempotency-Key and body as an earlier request: that execution", body = ExecutionResource),
        (status = 400, description = "Malformed body, a bad name, a NUL character in a string", body = ErrorBody),
        (status = 401, description = "Missing or unknown API key", body = ErrorBody),
        (status = 404, description = "Unknown prompt, version or label", body = ErrorBody),
        (status = 403, description = "The key lacks executions:write (missing_scope), or is bound to another end user than `user`", body = ErrorBody),
        (status = 408, description = "The body did not arrive within api.body_timeout_secs", body = ErrorBody),
        (status = 409, description = "Idempotency-Key reused with a different body", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Content-Type is not JSON", body = ErrorBody),
        (status = 422, description = "Input fails the schema or the template; model not allowed; webhook.url refused (invalid_webhook_url)", body = ErrorBody),
        (status = 429, description = "A limit refuses for now: rate_limited (a request rate limit), token_budget_exceeded (tokens per minute or day), budget_exhausted (a spend cap); Retry-After says when, details.frees_at too. RateLimit-Policy and RateLimit headers on every answer while a request rate limit applies", body = ErrorBody,
            headers(
                ("Retry-After" = u64, description = "Seconds until the limit frees up"),
                ("RateLimit-Policy" = String, description = "Every request rate limit that applies (IETF httpapi ratelimit-headers draft), e.g. \"org\";q=600;w=60"),
                ("RateLimit" = String, description = "The limit closest to refusing: remaining requests and seconds to a full quota, e.g. \"org\";r=0;t=12"),
            )),
        (status = 503, description = "Not accepted: database unavailable (unavailable), or Redis down while a limit that denies then applies (limits_unavailable); retry after Retry-After", body = ErrorBody),
    ),
    security(("bearer" = ["executions:write"]))
)]
#[post("/v1/executions")]
pub async fn submit(
    state: web::Data<AppState>,
    caller: Caller,
    req: HttpRequest,
    body: web::Json<SubmitExecution>,
) -> Result<HttpResponse, ApiError> {
    let key = idempotency_key(&req)?;
    let request = body.into_inner().into_request()?;
    let deadline = tokio::time::Instant::now() + state.deadline();
    let deps = state.submit_deps();
    let who = LimitKey {
        key_id: &caller.key_id,
        user: caller.user.as_deref(),
    };
    let (submitted, rate_headers) =
        service::submit_execution(&deps, &caller.tenant, &who, request, key, deadline).await?;
    let (mut response, execution) = match submitted {
        Submitted::Created(e) => (HttpResponse::Accepted(), e),
        Submitted::Existing(e) => (HttpResponse::Ok(), e),
    };
    if let Some((policy, now)) = rate_headers {
        response.insert_header(("RateLimit-Policy", policy));
        response.insert_header(("RateLimit", now));
    }
    let resource = ExecutionResource::from(&execution);
    Ok(response
        .insert_header((header::LOCATION, resource.links.self_.clone()))
        .json(resource))
}

#[derive(Deserialize, utoipa::IntoParams)]
pub struct ListQuery {
    /// Only this prompt's executions.
    pub prompt: Option<String>,
    /// Only this version's (of `prompt`).
    pub version: Option<i32>,
    /// queued, running, succeeded, failed or cancelled.
    pub status: Option<String>,
    /// Only this end user's.
    pub user: Option<String>,
    /// Page size, 1..=100 (default 20).
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// List executions, newest first, a page at a time.
#[utoipa::path(
    tag = "executions",
    params(ListQuery),
    responses(
        (status = 403, description = "The key lacks the route's scope (missing_scope)", body = ErrorBody),
        (status = 200, body = ExecutionList),
        (status = 400, description = "A bad limit, status or cursor", body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 503, body = ErrorBody),
    ),
    security(("bearer" = ["executions:read"]))
)]
#[get("/v1/executions")]
pub async fn list(
    state: web::Data<AppState>,
    caller: Caller,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let q = query.into_inner();
    let query = listing::ListQuery {
        prompt: q.prompt,
        version: q.version,
        status: q.status,
        user: q.user,
        limit: q.limit,
        cursor: q.cursor,
    };
    let page = within(
        state.deadline(),
        listing::list_executions(&state.pool, &caller.tenant, &query),
    )
    .await?;
    Ok(HttpResponse::Ok().json(ExecutionList {
        executions: page.items.iter().map(ExecutionResource::from).collect(),
        next_cursor: page.next_cursor,
    }))
}

/// Cancel a queued or running execution.
#[utoipa::path(
    tag = "executions",
    params(("id" = String, Path, description = "Execution id")),
    responses(
        (status = 403, description = "The key lacks the route's scope (missing_scope)", body = ErrorBody),
        (status = 200, description = "Cancelled, or cancellation requested for a running execution", body = ExecutionResource),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "Already terminal", body = ErrorBody),
        (status = 503, body = ErrorBody),
    ),
    security(("bearer" = ["executions:write"]))
)]
#[post("/v1/executions/{id}/cancel")]
pub async fn cancel(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&id)?;
    let work = service::cancel_execution(&state.pool, &state.publisher, &caller.tenant, id);
    let execution = within(state.deadline(), work).await?;
    if execution.status == llmq_shared::ExecutionStatus::Cancelled {
        // Cancelled before it ran: nothing was spent, its reservation goes back.
        crate::services::limits::release(state.limiter.clone(), id);
    }
    Ok(HttpResponse::Ok().json(ExecutionResource::from(&execution)))
}

#[derive(Deserialize, utoipa::IntoParams)]
pub struct WaitQuery {
    /// Seconds (a whole number from 0) to hold the request until the
    /// execution is terminal; capped at `api.max_wait_secs`. Anything else
    /// (negative, fractional, past 64 bits) is a 400.
    #[param(value_type = Option<u64>, minimum = 0)]
    pub wait: Option<String>,
}

impl WaitQuery {
    fn seconds(&self, max: u64) -> Result<u64, ApiError> {
        let Some(raw) = &self.wait else {
            return Ok(0);
        };
        let secs: u64 = raw
            .parse()
            .ok()
            .filter(|_| raw.bytes().all(|b| b.is_ascii_digit()))
            .ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "wait must be a whole number of seconds from 0 (at most {max} are waited)"
                ))
            })?;
        Ok(secs.min(max))
    }
}

/// Read an execution, optionally long-polling until it finishes.
#[utoipa::path(
    tag = "executions",
    params(("id" = String, Path, description = "Execution id"), WaitQuery),
    responses(
        (status = 403, description = "The key lacks the route's scope (missing_scope)", body = ErrorBody),
        (status = 200, body = ExecutionResource),
        (status = 400, description = "wait is not a whole number of seconds", body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 503, body = ErrorBody),
    ),
    security(("bearer" = ["executions:read"]))
)]
#[get("/v1/executions/{id}")]
pub async fn get(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<String>,
    query: web::Query<WaitQuery>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&id)?;
    let wait = query.seconds(state.settings.api.max_wait_secs)?;
    let execution = if wait == 0 {
        let work = service::get_execution(&state.pool, &caller.tenant, id);
        within(state.deadline(), work).await?
    } else {
        let wait = Duration::from_secs(wait);
        service::wait_for_execution(
            &state.pool,
            &state.events,
            &caller.tenant,
            id,
            wait,
            state.deadline(),
        )
        .await?
    };
    Ok(HttpResponse::Ok().json(ExecutionResource::from(&execution)))
}

/// The recorded trace: one entry per step attempt.
#[utoipa::path(
    tag = "executions",
    params(("id" = String, Path, description = "Execution id")),
    responses(
        (status = 403, description = "The key lacks the route's scope (missing_scope)", body = ErrorBody),
        (status = 200, body = StepList),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 503, body = ErrorBody),
    ),
    security(("bearer" = ["executions:read"]))
)]
#[get("/v1/executions/{id}/steps")]
pub async fn steps(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&id)?;
    let work = service::list_steps(&state.pool, &caller.tenant, id);
    let steps = within(state.deadline(), work).await?;
    Ok(HttpResponse::Ok().json(StepList {
        execution_id: id.to_string(),
        steps: steps.iter().map(StepResource::from).collect(),
    }))
}
