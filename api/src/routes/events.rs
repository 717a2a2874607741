//! Event stream handlers (Server-Sent Events).

use actix_web::http::header;
use actix_web::{get, web, HttpRequest, HttpResponse};
use futures::StreamExt;
use serde::Deserialize;

use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody};
use crate::resources::ExecutionResource;
use crate::routes::executions::parse_id;
use crate::services::events::{self as service, execution::StreamDeps, sse::Frame, tenant};
use crate::state::AppState;

#[derive(Deserialize, utoipa::IntoParams)]
pub struct CursorQuery {
    /// Resume after this event id (like `Last-Event-ID`, which wins).
    #[param(value_type = Option<u32>, minimum = 0)]
    pub starting_after: Option<String>,
}

fn sse(frames: impl futures::Stream<Item = Frame> + 'static) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(frames.map(|f| Ok::<_, std::convert::Infallible>(f.encode())))
}

/// Stream one execution's events.
#[utoipa::path(
    tag = "events",
    params(
        ("id" = String, Path, description = "Execution id"),
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this event id"),
        CursorQuery,
    ),
    responses(
        (status = 403, description = "The key lacks the route's scope (missing_scope)", body = ErrorBody),
        (status = 200, description = "Server-Sent Events: `snapshot`, then `status`, `step`, `delta` and `done` events (`id:` the sequence number); ends after `done`", content_type = "text/event-stream", body = String),
        (status = 400, description = "The cursor is not an event id, or is past the last event", body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 503, body = ErrorBody),
    ),
    security(("bearer" = ["executions:read"]))
)]
#[get("/v1/executions/{id}/events")]
pub async fn execution_events(
    state: web::Data<AppState>,
    caller: Caller,
    req: HttpRequest,
    id: web::Path<String>,
    query: web::Query<CursorQuery>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&id)?;
    let header = req
        .headers()
        .get("last-event-id")
        .map(|v| v.to_str().unwrap_or("?"));
    let cursor = service::parse_cursor(header, query.starting_after.as_deref())?;
    let deps = StreamDeps {
        pool: state.pool.clone(),
        subscriber: state.events.clone(),
        keepalive: state.keepalive(),
        read_deadline: state.deadline(),
        render: |e| serde_json::to_value(ExecutionResource::from(e)).unwrap_or_default(),
    };
    let frames = service::execution::execution_stream(deps, caller.tenant, id, cursor).await?;
    Ok(sse(frames))
}

#[derive(Deserialize, utoipa::IntoParams)]
pub struct TenantQuery {
    /// Only executions of this prompt.
    pub prompt: Option<String>,
    /// Only `status` and `done` events with this status.
    #[param(value_type = Option<String>)]
    pub status: Option<String>,
}

/// Stream the live lifecycle events of every execution of the tenant.
#[utoipa::path(
    tag = "events",
    params(TenantQuery),
    responses(
        (status = 403, description = "The key lacks the route's scope (missing_scope)", body = ErrorBody),
        (status = 200, description = "Server-Sent Events: live `status`, `step` and `done` events, each with `execution_id` and `seq` in its data; no replay", content_type = "text/event-stream", body = String),
        (status = 400, description = "Unknown status or bad prompt name", body = ErrorBody),
        (status = 401, body = ErrorBody),
    ),
    security(("bearer" = ["executions:read"]))
)]
#[get("/v1/events")]
pub async fn tenant_events(
    state: web::Data<AppState>,
    caller: Caller,
    query: web::Query<TenantQuery>,
) -> Result<HttpResponse, ApiError> {
    let query = query.into_inner();
    let prompt = query
        .prompt
        .map(|p| llmq_shared::ids::PromptName::parse(&p))
        .transpose()
        .map_err(|e| ApiError::BadRequest(format!("prompt: {e}")))?;
    let status = query
        .status
        .map(|s| s.parse())
        .transpose()
        .map_err(|e| ApiError::BadRequest(format!("status: {e}")))?;
    let filter = tenant::Filter { prompt, status };
    let frames = tenant::tenant_stream(
        state.events.log_events(),
        caller.tenant,
        filter,
        state.keepalive(),
    );
    Ok(sse(frames))
}
