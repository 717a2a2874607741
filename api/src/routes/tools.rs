//! Tool handlers: `/v1/tools`, the tenant's registered tools.

use actix_web::{delete, get, put, web, HttpResponse};
use serde_json::Value;

use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody};
use crate::services::tools as service;
use crate::services::within;
use crate::state::AppState;
use crate::tool_resources::{ToolList, ToolResource};

/// Create or replace a tool of the caller's tenant. Its prompts' versions
/// may then list it in `tools`.
#[utoipa::path(
    tag = "tools",
    params(("name" = String, Path, description = "Tool name (a-z, 0-9, -, _, .)")),
    request_body(content = Object, description = "The definition: the fields of a tools/<name>.toml file, as JSON; a credential names a `secret` (tools.tenant_secrets.<tenant>.<secret>), never `env`"),
    responses(
        (status = 403, description = "The key lacks the route's scope (missing_scope)", body = ErrorBody),
        (status = 201, description = "Created", body = ToolResource),
        (status = 200, description = "Replaced", body = ToolResource),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 415, body = ErrorBody),
        (status = 422, description = "invalid_definition (a field, named by its path) or tool_url_refused (scheme, or a non-public address)", body = ErrorBody),
        (status = 503, body = ErrorBody),
    ),
    security(("bearer" = ["prompts:write"]))
)]
#[put("/v1/tools/{name}")]
pub async fn put_tool(
    state: web::Data<AppState>,
    caller: Caller,
    name: web::Path<String>,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    let work = service::put_tool(
        &state.pool,
        &state.settings.tools,
        &caller.tenant,
        &name,
        body.into_inner(),
    );
    let (tool, created) = within(state.deadline(), work).await?;
    let mut response = if created {
        HttpResponse::Created()
    } else {
        HttpResponse::Ok()
    };
    Ok(response.json(ToolResource::from(&tool)))
}

/// The tenant's tools.
#[utoipa::path(
    tag = "tools",
    responses((status = 200, body = ToolList), (status = 401, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = []))
)]
#[get("/v1/tools")]
pub async fn list_tools(
    state: web::Data<AppState>,
    caller: Caller,
) -> Result<HttpResponse, ApiError> {
    let tools = within(
        state.deadline(),
        service::list_tools(&state.pool, &caller.tenant),
    )
    .await?;
    Ok(HttpResponse::Ok().json(ToolList {
        data: tools.iter().map(ToolResource::from).collect(),
    }))
}

/// One tool.
#[utoipa::path(
    tag = "tools",
    params(("name" = String, Path)),
    responses((status = 200, body = ToolResource), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = []))
)]
#[get("/v1/tools/{name}")]
pub async fn get_tool(
    state: web::Data<AppState>,
    caller: Caller,
    name: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let work = service::get_tool(&state.pool, &caller.tenant, &name);
    let tool = within(state.deadline(), work).await?;
    Ok(HttpResponse::Ok().json(ToolResource::from(&tool)))
}

/// Remove a tool; executions that name it afterwards fail `tool_undefined`
/// (unless a tool file of that name exists).
#[utoipa::path(
    tag = "tools",
    params(("name" = String, Path)),
    responses((status = 204, description = "Deleted"),
        (status = 403, description = "The key lacks the route's scope (missing_scope)", body = ErrorBody), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = ["prompts:write"]))
)]
#[delete("/v1/tools/{name}")]
pub async fn delete_tool(
    state: web::Data<AppState>,
    caller: Caller,
    name: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let work = service::delete_tool(&state.pool, &caller.tenant, &name);
    within(state.deadline(), work).await?;
    Ok(HttpResponse::NoContent().finish())
}
