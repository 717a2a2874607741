//! `/v1/executions` handlers.

use std::time::Duration;

use actix_web::http::header;
use actix_web::{get, post, web, HttpRequest, HttpResponse};
use llmq_shared::execution::ExecutionId;
use serde::Deserialize;

use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody};
use crate::resources::{ExecutionResource, StepList, StepResource, SubmitExecution};
use crate::services::executions::{self as service, Submitted};
use crate::services::within;
use crate::state::AppState;

fn parse_id(raw: &str) -> Result<ExecutionId, ApiError> {
    // Not a UUID cannot name an execution: 404, like any unknown id.
    raw.parse()
        .map_err(|_| ApiError::NotFound(format!("no execution {raw}")))
}

/// Submit an execution.
#[utoipa::path(
    post, path = "/v1/executions", tag = "executions",
    request_body = SubmitExecution,
    params(("Idempotency-Key" = Option<String>, Header, description = "Same key and body return the same execution")),
    responses(
        (status = 202, description = "Accepted and durable", body = ExecutionResource),
        (status = 200, description = "Same Idempotency-Key and body as an earlier request: that execution", body = ExecutionResource),
        (status = 409, description = "Idempotency-Key reused with a different body", body = ErrorBody),
        (status = 400, description = "Malformed body", body = ErrorBody),
        (status = 401, description = "Missing or unknown API key", body = ErrorBody),
        (status = 404, description = "Unknown prompt, version or label", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 422, description = "Input fails the schema or the template", body = ErrorBody),
        (status = 503, description = "Database unavailable; retry after Retry-After", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[post("/v1/executions")]
pub async fn submit(
    state: web::Data<AppState>,
    caller: Caller,
    req: HttpRequest,
    body: web::Json<SubmitExecution>,
) -> Result<HttpResponse, ApiError> {
    let key = match req.headers().get("idempotency-key") {
        Some(v) => Some(
            v.to_str()
                .map_err(|_| ApiError::BadRequest("Idempotency-Key must be ASCII".into()))?,
        ),
        None => None,
    };
    let work = service::submit_execution(&state, &caller, body.into_inner(), key);
    let (mut response, execution) = match within(state.deadline(), work).await? {
        Submitted::Created(e) => (HttpResponse::Accepted(), e),
        Submitted::Existing(e) => (HttpResponse::Ok(), e),
    };
    let resource = ExecutionResource::from(&execution);
    Ok(response
        .insert_header((header::LOCATION, resource.links.self_.clone()))
        .json(resource))
}

/// Cancel a queued or running execution.
#[utoipa::path(
    post, path = "/v1/executions/{id}/cancel", tag = "executions",
    params(("id" = String, Path, description = "Execution id")),
    responses(
        (status = 200, description = "Cancelled, or cancellation requested for a running execution", body = ExecutionResource),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "Already terminal", body = ErrorBody),
        (status = 503, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[post("/v1/executions/{id}/cancel")]
pub async fn cancel(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&id)?;
    let execution = within(
        state.deadline(),
        service::cancel_execution(&state, &caller, id),
    )
    .await?;
    Ok(HttpResponse::Ok().json(ExecutionResource::from(&execution)))
}

#[derive(Deserialize, utoipa::IntoParams)]
pub struct WaitQuery {
    /// Seconds to hold the request until the execution is terminal.
    pub wait: Option<u64>,
}

/// Read an execution, optionally long-polling until it finishes.
#[utoipa::path(
    get, path = "/v1/executions/{id}", tag = "executions",
    params(("id" = String, Path, description = "Execution id"), WaitQuery),
    responses(
        (status = 200, body = ExecutionResource),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 503, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[get("/v1/executions/{id}")]
pub async fn get(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<String>,
    query: web::Query<WaitQuery>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&id)?;
    let wait = query
        .wait
        .unwrap_or(0)
        .min(state.settings.api.max_wait_secs);
    let execution = if wait == 0 {
        within(
            state.deadline(),
            service::get_execution(&state, &caller, id),
        )
        .await?
    } else {
        service::wait_for_execution(&state, &caller, id, Duration::from_secs(wait)).await?
    };
    Ok(HttpResponse::Ok().json(ExecutionResource::from(&execution)))
}

/// The recorded trace: one entry per step attempt.
#[utoipa::path(
    get, path = "/v1/executions/{id}/steps", tag = "executions",
    params(("id" = String, Path, description = "Execution id")),
    responses((status = 200, body = StepList), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = []))
)]
#[get("/v1/executions/{id}/steps")]
pub async fn steps(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&id)?;
    let steps = within(state.deadline(), service::list_steps(&state, &caller, id)).await?;
    Ok(HttpResponse::Ok().json(StepList {
        execution_id: id.to_string(),
        steps: steps.iter().map(StepResource::from).collect(),
    }))
}
